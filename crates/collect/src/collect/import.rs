//! `krakenbook import`: load a journal recorded without a database into TimescaleDB.
//!
//! The same pipeline as the collector's, run over a closed journal from the database's
//! checkpoint to the journal's end: running it twice changes nothing, and an interrupted import
//! resumes where it stopped.
//!
//! What must hold: every segment is synced to disk before it is read (a collector killed without
//! its final sync leaves its last writes in the page cache only, and the database must never hold
//! a record a power cut could take from the journal); records missing from the journal (a missing,
//! truncated or damaged segment) never stop it: every intact record is stored, the missing ranges
//! are stored as `journal_damage` events and returned in the report, and the import ends;
//! an environment error (authentication, permission, another process writing this collector, a
//! journal that is not the database's) ends it with that error, while an unreachable database is
//! waited for; records that fall in a range moved to the cold tier (`krakenbook archive`, the
//! `krakenbook_archive` catalog) are refused before anything is written: the archive holds what
//! the database had there, verified, and rows written beside it would be a second, unverified
//! record of the range. "Fall in" is judged on receive times, widened by
//! [`ARCHIVE_SLACK_MINUTES`] (a message's Kraken timestamp, which the ranges are on, may lie that
//! far from its receipt before the writer keeps its frame whole).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pipeline::{DbPipeline, PipelineConfig, PipelineError, sync_closed_journal};
use crate::journal::{self, Damage, JournalError};
use crate::metrics::Metrics;
use crate::store::BatchConfig;

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The journal's collector identity.
    pub collector: String,
    /// The database's checkpoint before the import.
    pub from_seq: u64,
    /// The journal's last `seq` (the checkpoint after the import).
    pub to_seq: u64,
    /// Message rows written.
    pub messages: u64,
    /// Level rows written.
    pub entries: u64,
    /// Feed-event rows written.
    pub events: u64,
    /// Records the database refused in structured form, stored raw.
    pub stored_raw: u64,
    /// Records the database refused even raw (a `not_stored` event stands for each).
    pub not_stored: u64,
    /// Seqs missing from the journal.
    pub damaged_seqs: u64,
    /// The missing ranges (the first [`super::pipeline::DAMAGE_KEPT`]), in seq order.
    pub damage: Vec<Damage>,
}

/// How far (minutes) a record's receive time may lie from its Kraken timestamp: the archived
/// ranges an import is checked against are widened by this much.
pub const ARCHIVE_SLACK_MINUTES: i32 = 35;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The database failed (checking the archived ranges).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The records to import fall in an archived range.
    #[error(
        "refusing to import: journal records of collector {collector} received {first} .. {last} fall in {range_start} .. {range_end}, which `krakenbook archive` moved to {location} (nothing was imported; the archive holds that range as the database had it: import this journal into a database where the range is not archived)"
    )]
    Archived {
        /// The journal's collector.
        collector: String,
        /// First record to import (receive time).
        first: crate::time::Timestamp,
        /// Last record to import.
        last: crate::time::Timestamp,
        /// The archived range's start.
        range_start: crate::time::Timestamp,
        /// Its end.
        range_end: crate::time::Timestamp,
        /// Where it was archived.
        location: String,
    },
    /// The directory holds no journal.
    #[error(
        "{0} holds no journal segments: give the directory `krakenbook collect --journal-dir` wrote"
    )]
    Empty(String),
}

/// Imports the journal in `dir` into the database at `url`. `progress(done, total)` is called as
/// records are committed (counting from the database's checkpoint).
pub async fn import(
    dir: &Path,
    url: &str,
    batch: BatchConfig,
    mut progress: impl FnMut(u64, u64),
) -> Result<ImportReport, ImportError> {
    if journal::list_segments(dir)?.is_empty() {
        return Err(ImportError::Empty(dir.display().to_string()));
    }
    let collector = journal::identity(dir, None)?;
    let instance = match journal::instance(dir) {
        Ok(i) => Some(i),
        Err(e) => {
            // A read-only copy of a journal recorded before instance ids: import it unchecked.
            tracing::warn!(error = %e, "the journal has no instance id and none can be given to it; its instance is not checked against the database");
            None
        }
    };
    sync_closed_journal(dir)?;
    let last = journal::last_seq(dir)?;
    refuse_archived_range(dir, url, &collector, last).await?;
    let (_flushed_tx, flushed) = watch::channel(last);
    let (_done_tx, done) = watch::channel(Some(last));
    let metrics = Arc::new(Metrics::default());
    let pipeline = DbPipeline::new(
        PipelineConfig {
            batch,
            journal_instance: instance,
            ..PipelineConfig::new(dir, collector.clone(), url)
        },
        flushed,
        None,
        Arc::clone(&metrics),
    );
    let state = pipeline.progress();
    let cancel = CancellationToken::new();
    let work = pipeline.run_to_end(&cancel, done);
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = tick.tick() => {
                if state.up.load(Ordering::Acquire) == 1 {
                    let from = state.started_seq.load(Ordering::Relaxed);
                    let at = state.checkpoint_seq.load(Ordering::Relaxed);
                    progress(at.saturating_sub(from), last.saturating_sub(from));
                }
            }
        }
    };
    result?;
    let from = state.started_seq.load(Ordering::Relaxed);
    progress(last.saturating_sub(from), last.saturating_sub(from));
    let damage = pipeline
        .damage()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(ImportReport {
        collector,
        from_seq: from,
        to_seq: last,
        messages: state.messages.load(Ordering::Relaxed),
        entries: state.entries.load(Ordering::Relaxed),
        events: state.events.load(Ordering::Relaxed),
        stored_raw: state.stored_raw.load(Ordering::Relaxed),
        not_stored: state.not_stored.load(Ordering::Relaxed),
        damaged_seqs: state.damaged_seqs.load(Ordering::Relaxed),
        damage,
    })
}

/// A connection for the archive check, waiting out an unreachable database as the import does.
async fn connect_waiting(url: &str) -> Result<tokio_postgres::Client, ImportError> {
    let mut delay = Duration::from_millis(500);
    loop {
        match crate::store::connect(url, "krakenbook import").await {
            Ok(c) => return Ok(c),
            Err(e) if e.is_retriable() => {
                tracing::warn!(error = %e, "waiting for the database");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The receive time of the first intact record after `after_seq`.
fn first_received_after(
    dir: &Path,
    after_seq: u64,
) -> Result<Option<crate::time::Timestamp>, ImportError> {
    let mut reader = journal::JournalReader::open(dir, after_seq)?;
    while let Some(item) = reader.next_item()? {
        if let journal::ReadItem::Record(view) = item {
            return Ok(Some(view.received_at));
        }
    }
    Ok(None)
}

/// Refuses an import whose records (after the database's checkpoint) fall in an archived range.
async fn refuse_archived_range(
    dir: &Path,
    url: &str,
    collector: &str,
    last: u64,
) -> Result<(), ImportError> {
    let client = connect_waiting(url).await?;
    let db = |what: &'static str| move |e| crate::store::StoreError::db(what)(e);
    // A database not migrated yet (or before schema 7) has no archive.
    let catalog: bool = client
        .query_one("SELECT to_regclass('krakenbook_archive') IS NOT NULL", &[])
        .await
        .map_err(db("checking for archived ranges"))?
        .get(0);
    if !catalog {
        return Ok(());
    }
    let checkpoint: Option<i64> = client
        .query_opt(
            "SELECT seq FROM krakenbook_checkpoints WHERE collector = $1",
            &[&collector],
        )
        .await
        .map_err(db("checking for archived ranges"))?
        .and_then(|r| r.get(0));
    let checkpoint = checkpoint.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
    if checkpoint >= last {
        return Ok(());
    }
    let (Some(first), Some(end)) = (
        first_received_after(dir, checkpoint)?,
        first_received_after(dir, last.saturating_sub(1))?,
    ) else {
        return Ok(());
    };
    let hit = client
        .query_opt(
            "SELECT range_start, range_end, location FROM krakenbook_archive
              WHERE state = 'archived'
                AND range_start <= $2::timestamptz + make_interval(mins => $3)
                AND range_end > $1::timestamptz - make_interval(mins => $3)
              ORDER BY range_start LIMIT 1",
            &[&first, &end, &ARCHIVE_SLACK_MINUTES],
        )
        .await
        .map_err(db("checking for archived ranges"))?;
    match hit {
        Some(r) => Err(ImportError::Archived {
            collector: crate::text::printable(collector).into_owned(),
            first,
            last: end,
            range_start: r.get(0),
            range_end: r.get(1),
            location: r.get(2),
        }),
        None => Ok(()),
    }
}
