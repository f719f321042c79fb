//! `krakenbook import`: load a journal recorded without a database into TimescaleDB.
//!
//! The same pipeline as the collector's, run over a closed journal from the database's
//! checkpoint to the journal's end: running it twice changes nothing, and an interrupted import
//! resumes where it stopped.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::pipeline::{DbPipeline, PipelineConfig, PipelineError};
use crate::journal::{self, JournalError};
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
    let last = journal::last_seq(dir)?;
    let (_flushed_tx, flushed) = watch::channel(last);
    let (_done_tx, done) = watch::channel(Some(last));
    let metrics = Arc::new(Metrics::default());
    let pipeline = DbPipeline::new(
        PipelineConfig {
            journal_dir: dir.to_path_buf(),
            collector: collector.clone(),
            database_url: url.to_owned(),
            batch,
            chunk_interval: None,
        },
        flushed,
        Arc::clone(&metrics),
    );
    let state = pipeline.progress();
    let work = pipeline.attempt(done);
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
    Ok(ImportReport {
        collector,
        from_seq: from,
        to_seq: last,
        messages: state.messages.load(Ordering::Relaxed),
        entries: state.entries.load(Ordering::Relaxed),
        events: state.events.load(Ordering::Relaxed),
    })
}
