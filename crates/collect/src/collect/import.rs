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
//! waited for.

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

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
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
