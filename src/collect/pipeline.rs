//! The database pipeline: follows the journal from the database's checkpoint and writes every
//! record to TimescaleDB exactly once.
//!
//! ```text
//! journal files ──► reader thread ──(bounded channel)──► batcher ──► store::Writer ──► TimescaleDB
//! ```
//!
//! What must hold:
//! - the database is a pure function of the journal: records are read in `seq` order from the
//!   checkpoint the database itself holds, and the writer commits each batch together with its new
//!   checkpoint, so restarts and outages never skip or repeat a record;
//! - the feed never waits for the database: while the database is unreachable the writer retries
//!   with backoff, the reader blocks on its bounded channel, and the journal grows on disk (the lag
//!   metrics show how far behind the database is); when it returns, the pipeline catches up;
//! - a failure that retrying cannot fix is logged, marks the collector unhealthy, and the pipeline
//!   starts over from the checkpoint after a pause, without touching the feed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::journal::{JournalError, JournalReader, encoded_len};
use crate::metrics::{HealthSource, Metrics, StoreProgress};
use crate::record::Record;
use crate::store::{
    BatchConfig, Batcher, MigrateOptions, StoreError, Writer, WriterConfig, migrate,
};
use crate::time::Timestamp;

/// Where the pipeline reads and writes.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The journal directory.
    pub journal_dir: PathBuf,
    /// The journal's collector identity (the database key of its records and checkpoint).
    pub collector: String,
    /// The database URL.
    pub database_url: String,
    /// Batching by count and delay.
    pub batch: BatchConfig,
    /// Chunk interval for new hypertables (`None`: the default).
    pub chunk_interval: Option<String>,
}

/// Why the pipeline stopped (only ever returned when stopping was asked for or when the journal
/// itself cannot be read).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The journal could not be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The database failed in a way retrying did not fix.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The journal-to-database pipeline.
#[derive(Debug)]
pub struct DbPipeline {
    config: PipelineConfig,
    flushed: watch::Receiver<u64>,
    progress: Arc<StoreProgress>,
    metrics: Arc<Metrics>,
    checkpoints: Option<watch::Sender<u64>>,
}

impl DbPipeline {
    /// A pipeline following the journal whose flushed `seq` is published on `flushed`.
    pub fn new(
        config: PipelineConfig,
        flushed: watch::Receiver<u64>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let progress = Arc::new(StoreProgress::default());
        metrics.attach_store(Arc::clone(&progress));
        DbPipeline {
            config,
            flushed,
            progress,
            metrics,
            checkpoints: None,
        }
    }

    /// Publishes every new checkpoint on `sender` too (the journal's retention waits for it).
    pub fn publish_checkpoints(mut self, sender: watch::Sender<u64>) -> Self {
        self.checkpoints = Some(sender);
        self
    }

    /// The pipeline's progress counters.
    pub fn progress(&self) -> Arc<StoreProgress> {
        Arc::clone(&self.progress)
    }

    /// Runs until `cancel`; when `done` says the journal closed at a `seq`, returns as soon as
    /// that `seq` is committed.
    pub async fn run(self, cancel: CancellationToken, done: watch::Receiver<Option<u64>>) {
        let mut attempt = 0u32;
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = self.attempt(done.clone()) => outcome,
            };
            match outcome {
                Ok(()) => return,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let pause = Duration::from_secs(u64::from(attempt.min(6)) * 5);
                    self.progress.up.store(0, Ordering::Relaxed);
                    self.metrics.set_problem(
                        HealthSource::Database,
                        Some(format!("database pipeline: {e}")),
                    );
                    tracing::error!(error = %e, retry_in = ?pause, "database pipeline failed; the journal keeps every frame, starting over from the checkpoint");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// One pass: connect, migrate, read the checkpoint, then follow the journal.
    pub(crate) async fn attempt(
        &self,
        mut done: watch::Receiver<Option<u64>>,
    ) -> Result<(), PipelineError> {
        let mut writer = self.connect().await?;
        let checkpoint = writer.checkpoint().await?.unwrap_or(0);
        self.progress
            .checkpoint_seq
            .store(checkpoint, Ordering::Relaxed);
        self.progress
            .started_seq
            .store(checkpoint, Ordering::Relaxed);
        self.progress.up.store(1, Ordering::Release);
        if let Some(tx) = &self.checkpoints {
            tx.send_replace(checkpoint);
        }
        self.metrics.set_problem(HealthSource::Database, None);
        tracing::info!(collector = %self.config.collector, checkpoint, "database: following the journal");

        let (tx, mut rx) = mpsc::channel::<Result<Vec<Record>, JournalError>>(4);
        let stop = CancellationToken::new();
        let _stop_reader = stop.clone().drop_guard();
        spawn_reader(
            self.config.journal_dir.clone(),
            checkpoint,
            self.flushed.clone(),
            tx,
            stop.clone(),
        )?;

        let mut batcher = Batcher::new(self.config.batch);
        let mut committed = checkpoint;
        loop {
            if let Some(last) = *done.borrow()
                && committed >= last
                && batcher.is_empty()
            {
                return Ok(());
            }
            let flush = tokio::select! {
                biased;
                records = rx.recv() => match records {
                    Some(Ok(records)) => {
                        for record in records {
                            if batcher.push(record) {
                                self.flush(&mut writer, &mut batcher, &mut committed).await?;
                            }
                        }
                        batcher.is_full()
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => true,
                },
                _ = batcher.due(Timestamp::now()) => true,
                changed = done.changed() => {
                    if changed.is_err() {
                        // The collector is gone: write what is waiting and stop.
                        return self.flush(&mut writer, &mut batcher, &mut committed).await;
                    }
                    // Flush at once so that shutdown does not wait for the batch delay.
                    !batcher.is_empty()
                }
            };
            if flush {
                self.flush(&mut writer, &mut batcher, &mut committed)
                    .await?;
            }
        }
    }

    async fn connect(&self) -> Result<Writer, PipelineError> {
        let client = crate::store::connect(&self.config.database_url, "krakenbook-migrate").await?;
        let options = MigrateOptions {
            chunk_interval: self.config.chunk_interval.clone(),
        };
        migrate(&client, &options).await?;
        drop(client);
        Ok(Writer::connect(
            &self.config.database_url,
            WriterConfig::new(self.config.collector.clone()),
        )
        .await?)
    }

    async fn flush(
        &self,
        writer: &mut Writer,
        batcher: &mut Batcher,
        committed: &mut u64,
    ) -> Result<(), PipelineError> {
        let Some(last) = batcher.records().last() else {
            return Ok(());
        };
        let last_received = last.received_at;
        let received: Vec<Timestamp> = batcher.records().iter().map(|r| r.received_at).collect();
        // Journal bytes now in the database, counted like the journal counts its own: only the
        // records it appended since it was opened (the lag in bytes is the difference). Records
        // come in seq order, so those from before the open (a backlog, at start) lead the batch.
        let opened = self.metrics.journal_opened_seq();
        let backlog_bytes: u64 = batcher
            .records()
            .iter()
            .take_while(|r| r.seq <= opened)
            .map(encoded_len)
            .sum();
        let appended_bytes = batcher.bytes() - backlog_bytes;
        let started = Timestamp::now();
        let Some(report) = batcher.flush(writer).await? else {
            return Ok(());
        };
        let p = &self.progress;
        let committed_at = Timestamp::now();
        p.batch_duration
            .observe_ns(committed_at.nanos_since(started));
        for at in received {
            p.commit_latency.observe_ns(committed_at.nanos_since(at));
        }
        p.messages
            .fetch_add(report.rows.messages, Ordering::Relaxed);
        p.entries.fetch_add(report.rows.entries, Ordering::Relaxed);
        p.events.fetch_add(report.rows.events, Ordering::Relaxed);
        p.retries.fetch_add(
            u64::from(report.attempts.saturating_sub(1)),
            Ordering::Relaxed,
        );
        p.bytes.fetch_add(appended_bytes, Ordering::Relaxed);
        p.checkpoint_received_ns
            .store(last_received.unix_nanos(), Ordering::Relaxed);
        p.checkpoint_seq.store(report.last_seq, Ordering::Release);
        p.up.store(1, Ordering::Relaxed);
        if let Some(tx) = &self.checkpoints {
            tx.send_replace(report.last_seq);
        }
        *committed = report.last_seq;
        Ok(())
    }
}

/// Records per message from the reader thread to the writer (at most).
const READ_CHUNK: usize = 512;
/// Journal bytes per message from the reader thread to the writer (at most).
const READ_CHUNK_BYTES: u64 = 256 << 10;

/// Reads the journal after `after` on a thread of its own (file reads block), sending records
/// until `stop`; waits for `flushed` to move when it has read everything written.
fn spawn_reader(
    dir: PathBuf,
    after: u64,
    mut flushed: watch::Receiver<u64>,
    tx: mpsc::Sender<Result<Vec<Record>, JournalError>>,
    stop: CancellationToken,
) -> Result<(), JournalError> {
    let mut reader = JournalReader::open(&dir, after)?;
    let handle = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("journal-reader".into())
        .spawn(move || {
            // Records travel in chunks: one channel message (and one wake-up of the writer) per
            // read of the journal rather than per record.
            let mut chunk = Vec::with_capacity(READ_CHUNK);
            let mut chunk_bytes = 0u64;
            loop {
                if stop.is_cancelled() {
                    return;
                }
                let next = reader.next_record();
                if !matches!(next, Ok(Some(_))) && !chunk.is_empty() {
                    chunk_bytes = 0;
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(READ_CHUNK));
                    if tx.blocking_send(Ok(full)).is_err() {
                        return;
                    }
                }
                match next {
                    Ok(Some(record)) => {
                        chunk_bytes += encoded_len(&record);
                        chunk.push(record);
                        if chunk.len() >= READ_CHUNK || chunk_bytes >= READ_CHUNK_BYTES {
                            chunk_bytes = 0;
                            let full =
                                std::mem::replace(&mut chunk, Vec::with_capacity(READ_CHUNK));
                            if tx.blocking_send(Ok(full)).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {
                        flushed.mark_unchanged();
                        let seen = reader.position();
                        if *flushed.borrow() > seen {
                            // Written after our read returned: read again, without spinning hot.
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        handle.block_on(async {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                changed = flushed.changed() => {
                                    if changed.is_err() {
                                        // The journal has closed: nothing more will come; wait
                                        // to be stopped rather than poll the files in a loop.
                                        stop.cancelled().await;
                                    }
                                }
                                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                            }
                        });
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        })
        .map_err(|e| JournalError::Thread(e.to_string()))?;
    Ok(())
}
