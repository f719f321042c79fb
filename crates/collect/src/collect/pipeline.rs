//! The database pipeline: follows the journal from the database's checkpoint and writes every
//! record to TimescaleDB exactly once.
//!
//! ```text
//! journal files ──► reader ──► batcher ──► store::Writer ──► TimescaleDB
//!       (records and damage, in seq order)  (commits after the journal's sync)
//! ```
//!
//! The reader ([`Follower`]) reads the journal's files in the pipeline's own task, a bounded
//! chunk at a time; in the collector the pipeline runs on a thread of its own
//! ([`DbPipeline::spawn`]), so a read that waits for the disk holds up nothing else. It reads when
//! the journal has flushed something new while no batch is open, and when the open batch is due:
//! a batch costs the pipeline about one wake-up of its own besides the database's round trips,
//! however many times the journal flushed meanwhile (at high rates a batch fills before it is
//! due, and reading goes on as fast as the writer takes the batches). A steady slow feed (a
//! batch closed by its delay, the reader caught up) is read next when its next batch would be
//! due, not at the journal's next flush, and every sleep is on one kernel timer
//! ([`crate::alarm`]): at a few hundred messages a second the thread wakes about five times a
//! batch (that timer, the journal's sync, three round trips), not twelve.
//!
//! What must hold:
//! - the database is a pure function of the journal: items are read in `seq` order from the
//!   checkpoint the database itself holds, and the writer commits each batch together with its new
//!   checkpoint, so restarts and outages never skip or repeat a record;
//! - the database never holds a record the journal could lose: the reader follows the journal's
//!   *flushed* position (to encode early), but no batch commits before [`Syncer::sync_through`]
//!   its last record (a power cut after the commit finds every committed record on disk, so the
//!   journal never renumbers a seq the database holds). A closed journal (`import`) has every
//!   segment fsynced before it is read;
//! - damage never stops or hides: records the journal reader finds missing (corrupt bytes, a
//!   missing or truncated segment) come as [`Item::Damage`], are logged once, counted
//!   (`damaged_seqs`), stored as a `journal_damage` event row in seq order, and the checkpoint
//!   moves past them; a torn tail or expired segments are logged at info and only moved past.
//!   Where the reader returns an error or stalls in front of a hole instead (a missing segment
//!   found by seq continuity, corruption in a closed segment), the pipeline turns it into damage
//!   itself and goes on from the next segment;
//! - no record can stop the pipeline: the writer splits a batch the server refuses because of a
//!   record, and stores that record raw (see `store::writer`);
//! - environment errors (authentication, permission, a missing column, a timeout, another writer
//!   of this collector, a journal that is not the database's) are never split and never spin:
//!   the pipeline pauses with a backoff growing to `retry_max`, `/health` says why at once, and
//!   the log says so once per episode (see `store::health`). An unreachable database sets
//!   `db_up` 0 at once and `/health` 503 once it has been down for `unhealthy_after`;
//! - the feed never waits for the database: while it is down the reader stops reading and the
//!   journal grows on disk; when it returns, the pipeline catches up.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::journal::{
    Damage, DamageKind, Item, JournalError, JournalReader, Syncer, encoded_len, list_segments,
};
use crate::metrics::{HealthSource, Metrics, StoreProgress};
use crate::store::health::{DbHealth, HealthPolicy, LogLine};
use crate::store::{
    BatchConfig, BatchReport, Batcher, ErrorClass, JournalBinding, MigrateOptions, RetryPolicy,
    StoreError, Writer, WriterConfig, instant_at, migrate,
};
use crate::text::printable;
use crate::time::Timestamp;

/// Where the pipeline reads and writes, and how it reacts to failures.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The journal directory.
    pub journal_dir: PathBuf,
    /// The journal's collector identity (the database key of its records and checkpoint).
    pub collector: String,
    /// The journal's instance id (`journal::instance`), checked against the one recorded beside
    /// the database's checkpoint (`None`: not checked).
    pub journal_instance: Option<String>,
    /// The database URL.
    pub database_url: String,
    /// Batching by count and delay.
    pub batch: BatchConfig,
    /// Chunk interval for new hypertables (`None`: the default).
    pub chunk_interval: Option<String>,
    /// How long the database may be unreachable before `/health` says so (default 30 s).
    pub unhealthy_after: Duration,
    /// The pause after the first failure of an outage (default 500 ms), doubling per failure.
    pub retry_initial: Duration,
    /// The longest pause between attempts (default 60 s; 5 s while merely unreachable).
    pub retry_max: Duration,
    /// While an outage lasts, log it at most once per this long (default 5 minutes).
    pub log_every: Duration,
}

impl PipelineConfig {
    /// A configuration with the defaults: batches of [`BatchConfig::default`], `/health` 503
    /// after 30 s unreachable, pauses from 500 ms to 60 s, a reminder every 5 minutes.
    pub fn new(
        journal_dir: impl Into<PathBuf>,
        collector: impl Into<String>,
        database_url: impl Into<String>,
    ) -> PipelineConfig {
        let policy = HealthPolicy::default();
        PipelineConfig {
            journal_dir: journal_dir.into(),
            collector: collector.into(),
            journal_instance: None,
            database_url: database_url.into(),
            batch: BatchConfig::default(),
            chunk_interval: None,
            unhealthy_after: policy.unhealthy_after,
            retry_initial: policy.retry_initial,
            retry_max: policy.retry_max,
            log_every: policy.log_every,
        }
    }

    fn health_policy(&self) -> HealthPolicy {
        HealthPolicy {
            unhealthy_after: self.unhealthy_after,
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
            log_every: self.log_every,
        }
    }

    fn writer_config(&self, journal_last_seq: u64) -> WriterConfig {
        WriterConfig {
            retry: RetryPolicy::once(),
            journal: self
                .journal_instance
                .as_ref()
                .map(|instance| JournalBinding {
                    instance: instance.clone(),
                    dir: self.journal_dir.display().to_string(),
                    last_seq: journal_last_seq,
                }),
            ..WriterConfig::new(self.collector.clone())
        }
    }
}

/// Why the pipeline stopped, or why it cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The journal could not be read.
    #[error("cannot read the journal: {0}")]
    Journal(#[from] JournalError),
    /// The database failed in a way retrying did not fix.
    #[error("{source}{}", fix_suffix(source))]
    Store {
        /// The store's error.
        #[from]
        source: StoreError,
    },
    /// The pipeline's thread or runtime could not start.
    #[error("{0}")]
    Thread(String),
}

fn fix_suffix(e: &StoreError) -> String {
    e.fix().map(|f| format!("; {f}")).unwrap_or_default()
}

impl PipelineError {
    /// What the error calls for: database errors by their class; journal errors are the
    /// environment's (nothing in the database changes them).
    pub fn class(&self) -> ErrorClass {
        match self {
            PipelineError::Store { source } => source.class(),
            PipelineError::Journal(_) | PipelineError::Thread(_) => ErrorClass::Environment,
        }
    }
}

/// What the start-up check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Preflight {
    /// Connected, migrated, this collector's lock free and the journal the database's: the
    /// database's checkpoint (`None`: nothing stored yet).
    Ready {
        /// The seq of the last record the database holds for the collector.
        checkpoint: Option<u64>,
    },
    /// The database did not answer within the time allowed (or refused connections for a
    /// reason that can pass): the journal goes on alone and the pipeline keeps trying.
    Unreachable {
        /// Why, password redacted.
        reason: String,
    },
}

/// The start-up check the collector runs before it starts the feed: connects (waiting at most
/// `timeout`), migrates, takes and releases the collector's writer lock, and checks the journal
/// (`config.journal_instance`, `journal_last_seq`) against the database's checkpoint.
///
/// An environment error (authentication, a missing database, permission, another process writing
/// this collector, a journal that is not the database's) is `Err`, with a one-line message
/// saying how to fix it: the collector should exit non-zero. A database that does not answer is
/// `Ok(Preflight::Unreachable)`.
pub async fn preflight(
    config: &PipelineConfig,
    journal_last_seq: u64,
    timeout: Duration,
) -> Result<Preflight, PipelineError> {
    let check = async {
        let client = crate::store::connect(&config.database_url, "krakenbook-migrate").await?;
        migrate(
            &client,
            &MigrateOptions {
                chunk_interval: config.chunk_interval.clone(),
            },
        )
        .await?;
        drop(client);
        let mut writer =
            Writer::connect(&config.database_url, config.writer_config(journal_last_seq)).await?;
        let checkpoint = writer.checkpoint().await?;
        writer.disconnect();
        Ok::<_, StoreError>(checkpoint)
    };
    match tokio::time::timeout(timeout, check).await {
        Err(_) => Ok(Preflight::Unreachable {
            reason: format!(
                "{} did not answer within {timeout:?}",
                crate::store::redact(&config.database_url)
            ),
        }),
        Ok(Ok(checkpoint)) => Ok(Preflight::Ready { checkpoint }),
        Ok(Err(e)) if e.class() == ErrorClass::Transient => Ok(Preflight::Unreachable {
            reason: printable(&e.to_string()).into_owned(),
        }),
        Ok(Err(e)) => Err(PipelineError::from(e)),
    }
}

/// Damage found by a pipeline, kept for its report (the first [`DAMAGE_KEPT`] ranges).
pub type DamageLog = Arc<Mutex<Vec<Damage>>>;

/// How many damage ranges a pipeline keeps for its report (all are logged and stored).
pub const DAMAGE_KEPT: usize = 1000;

/// The journal-to-database pipeline.
#[derive(Debug)]
pub struct DbPipeline {
    config: PipelineConfig,
    flushed: watch::Receiver<u64>,
    syncer: Option<Syncer>,
    progress: Arc<StoreProgress>,
    metrics: Arc<Metrics>,
    checkpoints: Option<watch::Sender<u64>>,
    damage: DamageLog,
    /// When records stored raw were last logged, and how many since.
    raw_logged: Mutex<(Option<Instant>, u64)>,
}

/// Records stored raw are logged at most this often (a peer can send such frames on purpose).
const RAW_LOG_EVERY: Duration = Duration::from_secs(60);

impl DbPipeline {
    /// A pipeline following the journal whose flushed `seq` is published on `flushed`, committing
    /// only what `syncer` has synced to disk (`None`: a closed journal whose segments were synced
    /// before it is read, as `import` does).
    pub fn new(
        config: PipelineConfig,
        flushed: watch::Receiver<u64>,
        syncer: Option<Syncer>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let progress = Arc::new(StoreProgress::default());
        metrics.attach_store(Arc::clone(&progress));
        DbPipeline {
            config,
            flushed,
            syncer,
            progress,
            metrics,
            checkpoints: None,
            damage: Arc::default(),
            raw_logged: Mutex::new((None, 0)),
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

    /// The records found missing from the journal so far (lost ones only).
    pub fn damage(&self) -> DamageLog {
        Arc::clone(&self.damage)
    }

    /// Runs until `cancel`; when `done` says the journal closed at a `seq`, returns as soon as
    /// that `seq` is committed. Never gives up: every failure pauses and is tried again.
    pub async fn run(self, cancel: CancellationToken, done: watch::Receiver<Option<u64>>) {
        if let Err(e) = self.drive(&cancel, done, true).await {
            // Only a bug gets here (the persistent mode returns no error): say so and stop.
            tracing::error!(error = %e, "database pipeline stopped");
        }
    }

    /// [`DbPipeline::run`] on a thread of its own (named `db`) with a current-thread runtime:
    /// the database's round trips and the journal's reads wake that thread only, never the
    /// feed's nor the caller's runtime. The returned handle completes when the pipeline returns.
    pub fn spawn(
        self,
        cancel: CancellationToken,
        done: watch::Receiver<Option<u64>>,
    ) -> Result<PipelineThread, PipelineError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("db-blocking")
            .build()
            .map_err(|e| {
                PipelineError::Thread(format!("cannot start the database's runtime: {e}"))
            })?;
        let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
        // The thread logs where its caller logs (a scoped subscriber too, as tests install).
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let thread = std::thread::Builder::new()
            .name("db".into())
            .spawn(move || {
                let _logs = tracing::dispatcher::set_default(&dispatch);
                runtime.block_on(self.run(cancel, done));
                // Connections and their tasks are gone before the end is announced.
                drop(runtime);
                drop(ended_tx);
            })
            .map_err(|e| {
                PipelineError::Thread(format!("cannot start the database's thread: {e}"))
            })?;
        Ok(PipelineThread {
            ended,
            thread: Some(thread),
        })
    }

    /// Runs until `done`'s seq is committed, for a closed journal: transient failures are tried
    /// again, any other failure is returned.
    pub(crate) async fn run_to_end(
        &self,
        cancel: &CancellationToken,
        done: watch::Receiver<Option<u64>>,
    ) -> Result<(), PipelineError> {
        self.drive(cancel, done, false).await
    }

    async fn drive(
        &self,
        cancel: &CancellationToken,
        mut done: watch::Receiver<Option<u64>>,
        persistent: bool,
    ) -> Result<(), PipelineError> {
        let mut health = DbHealth::new(self.config.health_policy());
        let journal_end = *self.flushed.borrow();
        let mut writer = match Writer::new(
            &self.config.database_url,
            self.config.writer_config(journal_end),
        ) {
            Ok(w) => w,
            Err(e) => {
                // A URL that cannot be used never becomes usable: say so and wait to be stopped.
                let e = PipelineError::from(e);
                if !persistent {
                    return Err(e);
                }
                self.failed(&mut health, &e);
                cancel.cancelled().await;
                return Ok(());
            }
        };
        let mut syncer = self.syncer.clone();
        let closed_end = (!persistent).then_some(journal_end);
        let mut reader: Option<Follower> = None;
        let mut next_read = NextRead::Now;
        let mut batcher = Batcher::new(self.config.batch);
        // The frames' buffers go back to the reader after each batch (an allocation and a free
        // a record less).
        batcher.recycle_frames();
        let mut pending: VecDeque<Item> = VecDeque::new();
        // What one read found (kept between reads: it grew to a read's size once).
        let mut items: Vec<Item> = Vec::new();
        let mut committed: Option<u64> = None;
        let mut migrated = false;
        let mut damage_noted = 0u64;
        let mut alarm = crate::alarm::Alarm::new();
        let mut last_read_at = Instant::now();
        // The latest receive time among the records read so far.
        let mut newest_read: Option<Timestamp> = None;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            // Connected, and the reader following the journal from the database's checkpoint.
            if !writer.is_connected() || reader.is_none() {
                let journal_end = *self.flushed.borrow();
                writer.set_journal_end(journal_end);
                let connected = guarded(
                    &health,
                    &self.metrics,
                    cancel,
                    self.connect(&mut writer, &mut migrated),
                )
                .await;
                let checkpoint = match connected {
                    None => return Ok(()),
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        if self.pause_after(&mut health, e, persistent, cancel).await? {
                            return Ok(());
                        }
                        continue;
                    }
                };
                if committed != Some(checkpoint) || reader.is_none() {
                    // First start, or the database is not where we left it (a commit whose
                    // outcome was unknown went through, or the database was reset): follow the
                    // journal from what the database holds.
                    reader = None;
                    batcher.clear();
                    pending.clear();
                    let opened = Follower::open(
                        self.config.journal_dir.clone(),
                        checkpoint,
                        self.flushed.clone(),
                        closed_end,
                    );
                    match opened {
                        Ok(r) => {
                            reader = Some(r);
                            next_read = NextRead::Now;
                        }
                        Err(e) => {
                            if self
                                .pause_after(&mut health, e.into(), persistent, cancel)
                                .await?
                            {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                    committed = Some(checkpoint);
                    self.progress
                        .checkpoint_seq
                        .store(checkpoint, Ordering::Relaxed);
                    self.progress
                        .started_seq
                        .store(checkpoint, Ordering::Relaxed);
                    if let Some(tx) = &self.checkpoints {
                        tx.send_replace(checkpoint);
                    }
                    tracing::info!(collector = %self.config.collector, checkpoint, "database: following the journal");
                }
                // Not healthy yet: only a commit says the database takes our rows (a missing
                // column, for one, shows only when rows are sent).
            }
            let Some(rd) = reader.as_mut() else {
                continue;
            };

            let done_at = *done.borrow();
            if let Some(last) = done_at
                && committed.is_some_and(|c| c >= last)
                && batcher.is_empty()
                && pending.is_empty()
            {
                return Ok(());
            }
            let closing = done_at.is_some();
            let now = Instant::now();
            let mut due = batcher.is_due(Timestamp::now());
            // A batch is open: more records are read when it is due (or full), not on every
            // flush of the journal; none is: as soon as the journal has something new. Closing,
            // everything left is read at once.
            let batch_open = !batcher.is_empty() && !closing;
            let read_now = pending.is_empty()
                && !batcher.is_full()
                && match next_read {
                    NextRead::Now => true,
                    NextRead::OnChange { or_at } => {
                        if batch_open {
                            due
                        } else {
                            rd.has_new() || now >= or_at
                        }
                    }
                    NextRead::At(at) => now >= at,
                    NextRead::Paced(at) => closing || now >= at,
                    NextRead::Never => false,
                };
            if read_now {
                // A paced read is the batch's: what it finds goes out now (the first of it a
                // little before its own deadline), not at a second wake-up when that comes.
                due |= matches!(next_read, NextRead::Paced(_));
                last_read_at = Instant::now();
                // Empty (what a read that failed found is not used: the reader starts over).
                items.clear();
                self.progress.journal_reads.fetch_add(1, Ordering::Relaxed);
                next_read = match rd.fill(&mut items, READ_CHUNK, READ_CHUNK_BYTES) {
                    Fill::More => NextRead::Now,
                    Fill::CaughtUp => NextRead::OnChange {
                        or_at: now + CAUGHT_UP_POLL,
                    },
                    Fill::Wait(d) => NextRead::At(now + d),
                    Fill::End => NextRead::Never,
                    Fill::Failed(e) => {
                        reader = None;
                        if self
                            .pause_after(&mut health, e.into(), persistent, cancel)
                            .await?
                        {
                            return Ok(());
                        }
                        continue;
                    }
                };
                for item in &items {
                    self.note(item, &mut damage_noted);
                    if let Item::Record(r) = item {
                        newest_read = newest_read.max(Some(r.received_at));
                    }
                }
                pending.extend(items.drain(..));
            }
            while !batcher.is_full()
                && let Some(item) = pending.pop_front()
            {
                batcher.push(item);
            }
            let flush_now = batcher.is_full() || (!batcher.is_empty() && (due || closing));
            if !flush_now {
                if matches!(next_read, NextRead::Now) && pending.is_empty() {
                    // More to read at once (a backlog): give the runtime a turn first.
                    tokio::task::yield_now().await;
                    continue;
                }
                let wake_at = match next_read {
                    NextRead::OnChange { or_at } if !batch_open => Some(or_at),
                    NextRead::At(at) | NextRead::Paced(at) => Some(at),
                    _ => None,
                };
                let watch_journal = matches!(next_read, NextRead::OnChange { .. }) && !batch_open;
                // One kernel timer for the earlier of the two (see `crate::alarm`).
                let alarm_at = wake_at
                    .into_iter()
                    .chain(batcher.due_at(Timestamp::now()))
                    .min();
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    // Something new, or the journal closed (read what is left, then stop).
                    _ = rd.changed(), if watch_journal => next_read = NextRead::Now,
                    _ = alarm_until(&mut alarm, alarm_at) => {}
                    changed = done.changed() => {
                        if changed.is_err() {
                            // The collector is gone: write what is waiting, then stop.
                            if let Err(e) = self.flush(&mut writer, &mut batcher, syncer.as_mut()).await {
                                tracing::warn!(error = %printable(&e.to_string()), "database: the last batch was not written; the journal keeps it for the next start");
                            }
                            return Ok(());
                        }
                    }
                }
                continue;
            }
            if batcher.is_empty() {
                continue;
            }
            // A batch closed by its delay while the reader is caught up: the feed is steady and
            // slow. The next batch is read when it would be due rather than opened at the
            // journal's next flush: one wake-up of this thread a batch instead of one per flush.
            let steady =
                !batcher.is_full() && !closing && matches!(next_read, NextRead::OnChange { .. });
            let flushed = guarded(
                &health,
                &self.metrics,
                cancel,
                self.flush(&mut writer, &mut batcher, syncer.as_mut()),
            )
            .await;
            match flushed {
                None => return Ok(()),
                Some(Ok(Some(report))) => {
                    committed = Some(report.last_seq);
                    if let Some(rd) = reader.as_mut() {
                        rd.reader.recycle(batcher.spent_frames());
                    }
                    self.healthy(&mut health);
                    if steady && pending.is_empty() {
                        // Every record not read yet was received after the newest one read
                        // (the feed hands them to the journal in order, some a hand-off
                        // later), so none is due before `delay` after that one's receipt: the
                        // next read is then (at once when a commit took longer than that),
                        // and never later than `delay` after the last read (a wall clock set
                        // back would otherwise put it off).
                        let delay = batcher.delay();
                        let latest = last_read_at + delay;
                        let at = newest_read.map_or(latest, |received| {
                            let nanos = i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX);
                            instant_at(received.add_nanos(nanos), Timestamp::now())
                        });
                        next_read = NextRead::Paced(at.min(latest));
                    }
                }
                Some(Ok(None)) => {}
                Some(Err(e)) => {
                    // The batch stays; the writer dropped its connection and reconnects.
                    if self.pause_after(&mut health, e, persistent, cancel).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Connects (migrating first, once), checks the lock and the journal, and reads the
    /// checkpoint.
    async fn connect(
        &self,
        writer: &mut Writer,
        migrated: &mut bool,
    ) -> Result<u64, PipelineError> {
        if !*migrated {
            let client =
                crate::store::connect(&self.config.database_url, "krakenbook-migrate").await?;
            let options = MigrateOptions {
                chunk_interval: self.config.chunk_interval.clone(),
            };
            migrate(&client, &options).await?;
            *migrated = true;
        }
        writer.ensure_connected().await?;
        Ok(writer.checkpoint().await?.unwrap_or(0))
    }

    /// Logs damage once (the reader may deliver it again after a restart).
    fn note(&self, item: &Item, noted: &mut u64) {
        let Item::Damage(d) = item else {
            return;
        };
        if d.last_seq <= *noted {
            return;
        }
        *noted = d.last_seq;
        let what = printable(&d.to_string()).into_owned();
        if d.kind.is_loss() {
            tracing::warn!(
                collector = %self.config.collector,
                first_seq = d.first_seq,
                last_seq = d.last_seq,
                "journal damage: {what}; recorded as a journal_damage event, going on with the next intact record"
            );
            let mut log = self.damage.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() < DAMAGE_KEPT {
                log.push(d.clone());
            }
        } else {
            tracing::info!(
                collector = %self.config.collector,
                "journal: {what} (nothing that was written is lost); moving past it"
            );
        }
    }

    /// Records a failure: `db_up` 0 at once, `/health` and the log as the outage policy says.
    /// Returns the pause to wait.
    fn failed(&self, health: &mut DbHealth, e: &PipelineError) -> Duration {
        self.progress.up.store(0, Ordering::Relaxed);
        self.progress.retries.fetch_add(1, Ordering::Relaxed);
        let class = e.class();
        let text = printable(&e.to_string()).into_owned();
        let v = health.failed(Instant::now(), class, &text);
        self.metrics
            .set_problem(HealthSource::Database, v.problem.clone());
        let database = crate::store::redact(&self.config.database_url);
        match (v.log, class) {
            (None, _) => {}
            (Some(LogLine::Still), _) => tracing::warn!(
                %database,
                failures = v.failures,
                down_for = ?v.down_for,
                "database: still failing: {text}; the journal keeps every frame"
            ),
            (Some(_), ErrorClass::Transient) => tracing::warn!(
                %database,
                retry_in = ?v.pause,
                "database unreachable: {text}; the journal keeps every frame, retrying with backoff"
            ),
            (Some(_), _) => tracing::error!(
                %database,
                class = class.as_str(),
                retry_in = ?v.pause,
                "database refuses the pipeline: {text}; the journal keeps every frame, retrying with backoff up to {:?}",
                self.config.retry_max
            ),
        }
        v.pause
    }

    /// After a failure: records it and waits the pause (or returns the error, for a closed
    /// journal, unless it is transient). `Ok(true)`: cancelled while waiting.
    async fn pause_after(
        &self,
        health: &mut DbHealth,
        e: PipelineError,
        persistent: bool,
        cancel: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        if !persistent && e.class() != ErrorClass::Transient {
            self.progress.up.store(0, Ordering::Relaxed);
            return Err(e);
        }
        let pause = self.failed(health, &e);
        Ok(
            guarded(health, &self.metrics, cancel, tokio::time::sleep(pause))
                .await
                .is_none(),
        )
    }

    /// A success: the outage, if any, is over.
    fn healthy(&self, health: &mut DbHealth) {
        self.progress.up.store(1, Ordering::Release);
        if let Some(r) = health.recovered(Instant::now()) {
            self.metrics.set_problem(HealthSource::Database, None);
            tracing::info!(
                down_for = ?r.down_for,
                failures = r.failures,
                "database: back; catching up with the journal"
            );
        }
    }

    async fn flush(
        &self,
        writer: &mut Writer,
        batcher: &mut Batcher,
        syncer: Option<&mut Syncer>,
    ) -> Result<Option<BatchReport>, PipelineError> {
        let items = batcher.items();
        let last_received = items.iter().rev().find_map(|i| match i {
            Item::Record(r) => Some(r.received_at),
            Item::Damage(_) => None,
        });
        let mut received: Vec<Timestamp> = Vec::with_capacity(items.len());
        received.extend(items.iter().filter_map(|i| match i {
            Item::Record(r) => Some(r.received_at),
            Item::Damage(_) => None,
        }));
        // Journal bytes now in the database, counted like the journal counts its own: only the
        // records it appended since it was opened (the lag in bytes is the difference). Records
        // come in seq order, so those from before the open (a backlog, at start) lead the batch.
        let opened = self.metrics.journal_opened_seq();
        let backlog_bytes: u64 = items
            .iter()
            .filter_map(|i| match i {
                Item::Record(r) => Some(r),
                Item::Damage(_) => None,
            })
            .take_while(|r| r.seq <= opened)
            .map(encoded_len)
            .sum();
        let appended_bytes = batcher.bytes().saturating_sub(backlog_bytes);
        let started = Timestamp::now();
        let Some(report) = batcher.flush(writer, syncer).await? else {
            return Ok(None);
        };
        let p = &self.progress;
        let committed_at = Timestamp::now();
        p.batch_duration
            .observe_ns(committed_at.nanos_since(started));
        for at in received {
            p.commit_latency.observe_ns(committed_at.nanos_since(at));
        }
        let rows = report.rows;
        p.messages.fetch_add(rows.messages, Ordering::Relaxed);
        p.entries.fetch_add(rows.entries, Ordering::Relaxed);
        p.events.fetch_add(rows.events, Ordering::Relaxed);
        p.damaged_seqs
            .fetch_add(rows.damaged_seqs, Ordering::Relaxed);
        p.stored_raw.fetch_add(rows.stored_raw, Ordering::Relaxed);
        p.not_stored.fetch_add(rows.not_stored, Ordering::Relaxed);
        p.bytes.fetch_add(appended_bytes, Ordering::Relaxed);
        if rows.stored_raw + rows.not_stored > 0 {
            let mut logged = self.raw_logged.lock().unwrap_or_else(|p| p.into_inner());
            logged.1 += rows.stored_raw + rows.not_stored;
            let now = Instant::now();
            if logged
                .0
                .is_none_or(|at| now.saturating_duration_since(at) >= RAW_LOG_EVERY)
            {
                tracing::warn!(
                    records = logged.1,
                    last_seq = report.last_seq,
                    "database: records whose structured form the database cannot hold were stored raw or stood for by an event (see the stored_raw and not_stored rows of kraken_feed_events; said at most once a minute)"
                );
                *logged = (Some(now), 0);
            }
        }
        if let Some(at) = last_received {
            p.checkpoint_received_ns
                .store(at.unix_nanos(), Ordering::Relaxed);
        }
        p.checkpoint_seq.store(report.last_seq, Ordering::Release);
        p.up.store(1, Ordering::Relaxed);
        if let Some(tx) = &self.checkpoints {
            tx.send_replace(report.last_seq);
        }
        Ok(Some(report))
    }
}

/// A [`DbPipeline`] running on its own thread ([`DbPipeline::spawn`]).
#[derive(Debug)]
pub struct PipelineThread {
    ended: tokio::sync::oneshot::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PipelineThread {
    /// Completes when the pipeline has returned and its thread is gone; may be awaited again
    /// (say, after a timeout and a cancel).
    pub async fn join(&mut self) {
        let _ = (&mut self.ended).await;
        if let Some(thread) = self.thread.take() {
            // The thread has dropped its runtime and is returning: this does not wait long.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Runs `work` until it completes (`Some`), or `cancel` (`None`), keeping `/health` current
/// meanwhile: an outage crosses its unhealthy threshold on time even while an attempt hangs.
async fn guarded<F: std::future::Future>(
    health: &DbHealth,
    metrics: &Metrics,
    cancel: &CancellationToken,
    work: F,
) -> Option<F::Output> {
    tokio::pin!(work);
    loop {
        let next = health.next_change(Instant::now());
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return None,
            out = &mut work => return Some(out),
            _ = sleep_until(next) => {
                metrics.set_problem(HealthSource::Database, health.problem(Instant::now()));
            }
        }
    }
}

/// Completes at `at` on the pipeline's kernel timer; never without an instant.
async fn alarm_until(alarm: &mut crate::alarm::Alarm, at: Option<Instant>) {
    match at {
        Some(at) => alarm.sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Records read at once at most.
const READ_CHUNK: usize = 512;
/// Journal bytes read at once at most.
const READ_CHUNK_BYTES: u64 = 256 << 10;
/// A reader caught up with a live journal looks again this often even if the journal says
/// nothing.
const CAUGHT_UP_POLL: Duration = Duration::from_millis(250);

/// When the pipeline reads the journal next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NextRead {
    /// At once: there is more.
    Now,
    /// Caught up: when the journal has flushed something new (or at `or_at`), unless a batch is
    /// open, then when it is due.
    OnChange { or_at: Instant },
    /// At this instant (the journal is being written under the reader, or damaged at its end).
    At(Instant),
    /// Caught up with a steady, slow feed: at this instant, when the next batch would be due
    /// (or at once when closing), without waking on the journal's flushes meanwhile.
    Paced(Instant),
    /// Never again: a closed journal read to its end.
    Never,
}

/// What one [`Follower::fill`] found.
#[derive(Debug)]
enum Fill {
    /// The chunk is full: there may be more.
    More,
    /// Everything written so far has been read.
    CaughtUp,
    /// Look again after this long.
    Wait(Duration),
    /// A closed journal read to its end (or a live one that closed): nothing more will come.
    End,
    /// The reader failed (the pipeline pauses and starts over from the database's checkpoint).
    Failed(JournalError),
}

/// Follows the journal after a `seq`: reads records in seq order, a chunk at a time, and turns
/// what stops a reader (a hole in the seqs, corruption in a closed segment, a truncated closed
/// journal) into damage it reports and moves past. A live journal (`closed_end` `None`) is
/// followed through its `flushed` position; a closed one ends at `closed_end`, and whatever the
/// reader cannot reach before it is damage.
struct Follower {
    dir: PathBuf,
    reader: JournalReader,
    flushed: watch::Receiver<u64>,
    closed_end: Option<u64>,
    /// The live journal closed (its `flushed` sender is gone): what it flushed is all there is.
    journal_closed: bool,
    /// Receive time of the last record read (the `before` of damage found after it).
    last_received: Option<Timestamp>,
    /// A hole seen once at this position: confirmed if a second read finds nothing more.
    suspect_hole: Option<u64>,
}

impl Follower {
    fn open(
        dir: PathBuf,
        after: u64,
        flushed: watch::Receiver<u64>,
        closed_end: Option<u64>,
    ) -> Result<Self, JournalError> {
        let reader = JournalReader::open(&dir, after)?;
        Ok(Follower {
            dir,
            reader,
            flushed,
            closed_end,
            journal_closed: false,
            last_received: None,
            suspect_hole: None,
        })
    }

    /// Whether the journal flushed something since the reader last looked (or closed: then
    /// what it flushed last is all there is, and the next read that catches up ends).
    fn has_new(&mut self) -> bool {
        self.flushed.has_changed().unwrap_or_else(|_| {
            self.journal_closed = true;
            true
        })
    }

    /// Completes when the journal flushed something new, or closed.
    async fn changed(&mut self) {
        if self.flushed.changed().await.is_err() {
            self.journal_closed = true;
        }
    }

    /// Reads into `out` until it holds `max_items` items or `max_bytes` journal bytes, or the
    /// journal has nothing more for now.
    fn fill(&mut self, out: &mut Vec<Item>, max_items: usize, max_bytes: u64) -> Fill {
        let mut bytes = 0;
        loop {
            if out.len() >= max_items || bytes >= max_bytes {
                return Fill::More;
            }
            if let Some(fill) = self.nothing_flushed() {
                return fill;
            }
            let step = match self.reader.next_owned() {
                Ok(Some(item)) => {
                    self.suspect_hole = None;
                    if let Item::Record(r) = &item {
                        self.last_received = Some(r.received_at);
                        bytes += encoded_len(r);
                    }
                    out.push(item);
                    continue;
                }
                Ok(None) => self.caught_up(out),
                Err(JournalError::Corrupt { path, offset, .. }) => {
                    self.skip_corrupt(path, offset, out)
                }
                Err(e) => self.failed(e, out),
            };
            if let ControlFlow::Break(fill) = step {
                return fill;
            }
        }
    }

    /// A live journal that has handed nothing past the reader's position to the operating system
    /// has nothing to read: caught up (or, closed, at its end), said without reading to the end
    /// of the file, where the reader looks for a next segment (two `stat`s a time; that cost
    /// the pipeline more than its reading when every batch did it).
    fn nothing_flushed(&mut self) -> Option<Fill> {
        if self.closed_end.is_some() {
            return None;
        }
        let pos = self.reader.position();
        if *self.flushed.borrow() > pos {
            return None;
        }
        // A flush after this is seen as a change (and read at the next wake-up).
        self.flushed.mark_unchanged();
        if *self.flushed.borrow() > pos {
            return None;
        }
        Some(if self.journal_closed {
            Fill::End
        } else {
            Fill::CaughtUp
        })
    }

    /// A reader error: a reader that stops in front of a hole in the seqs (no segment holds the
    /// next seq, a later one exists) is moved past it, reported as missing; any other error goes
    /// to the pipeline (which pauses and starts over from the database's checkpoint).
    fn failed(&mut self, e: JournalError, out: &mut Vec<Item>) -> ControlFlow<Fill> {
        let pos = self.reader.position();
        if !matches!(e, JournalError::Io { .. })
            && let Ok(Some((next, path))) = hole_after(&self.dir, pos)
        {
            return self.skip(DamageKind::MissingSegment, pos + 1, next - 1, path, 0, out);
        }
        ControlFlow::Break(Fill::Failed(e))
    }

    /// Records `first..=last` as missing and goes on after them.
    fn skip(
        &mut self,
        kind: DamageKind,
        first: u64,
        last: u64,
        segment: PathBuf,
        offset: u64,
        out: &mut Vec<Item>,
    ) -> ControlFlow<Fill> {
        out.push(Item::Damage(Damage {
            kind,
            segment,
            offset,
            bytes: 0,
            first_seq: first,
            last_seq: last,
            before: self.last_received,
            after: None,
        }));
        match JournalReader::open(&self.dir, last) {
            Ok(r) => {
                self.reader = r;
                self.suspect_hole = None;
                ControlFlow::Continue(())
            }
            Err(e) => ControlFlow::Break(Fill::Failed(e)),
        }
    }

    /// A damaged closed segment the reader cannot resynchronize in: its records from the damage
    /// on are missing, and reading goes on with the next segment.
    fn skip_corrupt(
        &mut self,
        path: PathBuf,
        offset: u64,
        out: &mut Vec<Item>,
    ) -> ControlFlow<Fill> {
        let pos = self.reader.position();
        let next = match list_segments(&self.dir) {
            Ok(segments) => segments.into_iter().find(|s| s.first_seq > pos),
            Err(e) => return ControlFlow::Break(Fill::Failed(e)),
        };
        match next {
            Some(seg) if seg.first_seq > pos + 1 => self.skip(
                DamageKind::Corrupt,
                pos + 1,
                seg.first_seq - 1,
                path,
                offset,
                out,
            ),
            Some(seg) => {
                // Damage after the segment's last record: nothing missing.
                tracing::warn!(segment = %path.display(), offset, "journal: damaged bytes after the last record of a closed segment; nothing is missing, going on");
                match JournalReader::open(&self.dir, seg.first_seq - 1) {
                    Ok(r) => {
                        self.reader = r;
                        ControlFlow::Continue(())
                    }
                    Err(e) => ControlFlow::Break(Fill::Failed(e)),
                }
            }
            // The damage is in the last segment: nothing can be read past it until the journal
            // moves on to a new segment. Look again in a while.
            None => ControlFlow::Break(Fill::Wait(Duration::from_secs(1))),
        }
    }

    /// Everything readable so far has been read: damage if the journal goes on past a hole (or,
    /// closed, ends early), else wait for more.
    fn caught_up(&mut self, out: &mut Vec<Item>) -> ControlFlow<Fill> {
        let pos = self.reader.position();
        if self.closed_end.is_none() {
            // A live journal that has handed nothing past `pos` to the operating system has no
            // record the reader could have missed: wait, without listing the directory (which
            // cost more than the reading when it was done on every catch-up).
            self.flushed.mark_unchanged();
            if *self.flushed.borrow() <= pos {
                return ControlFlow::Break(if self.journal_closed {
                    Fill::End
                } else {
                    Fill::CaughtUp
                });
            }
        }
        match hole_after(&self.dir, pos) {
            Ok(Some((next, path))) => {
                if self.suspect_hole == Some(pos) {
                    // A second read found nothing more: the records are not coming.
                    return self.skip(DamageKind::MissingSegment, pos + 1, next - 1, path, 0, out);
                }
                // The writer finishes a segment before it starts the next: read once more.
                self.suspect_hole = Some(pos);
                return ControlFlow::Continue(());
            }
            Ok(None) => {}
            Err(e) => return ControlFlow::Break(Fill::Failed(e)),
        }
        if let Some(end) = self.closed_end {
            if pos < end {
                let segment = list_segments(&self.dir)
                    .ok()
                    .and_then(|s| s.into_iter().rev().find(|s| s.first_seq <= pos + 1))
                    .map(|s| s.path)
                    .unwrap_or_else(|| self.dir.clone());
                return self.skip(DamageKind::TruncatedSegment, pos + 1, end, segment, 0, out);
            }
            // A closed journal read to its end: nothing more will come.
            return ControlFlow::Break(Fill::End);
        }
        // Written after our read returned: read again, without spinning hot.
        ControlFlow::Break(Fill::Wait(Duration::from_millis(1)))
    }
}

/// The first seq and path of the next segment when the journal goes on beyond `pos + 1` but no
/// segment starts at `pos + 1` (the records in between are in no segment), else `None`.
fn hole_after(dir: &Path, pos: u64) -> Result<Option<(u64, PathBuf)>, JournalError> {
    let segments = list_segments(dir)?;
    if segments.iter().any(|s| s.first_seq == pos + 1) {
        return Ok(None);
    }
    Ok(segments
        .into_iter()
        .find(|s| s.first_seq > pos + 1)
        .map(|s| (s.first_seq, s.path)))
}

/// Syncs every segment of the closed journal in `dir` (and the directory) to disk, so that the
/// database never holds a record a later power cut could take from the journal (a collector
/// killed without its final sync leaves its last writes in the page cache only).
pub(crate) fn sync_closed_journal(dir: &Path) -> Result<(), JournalError> {
    for segment in list_segments(dir)? {
        std::fs::File::open(&segment.path)
            .and_then(|f| f.sync_all())
            .map_err(|source| JournalError::Io {
                path: segment.path.clone(),
                source,
            })?;
    }
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|source| JournalError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Entry, JournalConfig, spawn_journal};
    use crate::record::{FrameRecord, RecordBody};

    fn frame(n: u64) -> Entry {
        Entry {
            received_at: Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + n as i64),
            conn_id: 1,
            conn_seq: n,
            body: RecordBody::Frame(FrameRecord {
                bytes: format!("{{\"channel\":\"heartbeat\",\"n\":{n}}}").into_bytes(),
                checksum_ok: None,
                best_bid: None,
                best_ask: None,
            }),
        }
    }

    /// A live journal in a scratch directory holding frames 1 to 10, flushed.
    async fn journal_of_ten() -> (
        tempfile::TempDir,
        CancellationToken,
        crate::journal::JournalHandle,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let journal =
            spawn_journal(JournalConfig::new(dir.path()), 64, None, cancel.clone()).unwrap();
        journal
            .sender
            .send_batch((1..=10).map(frame).collect())
            .await
            .unwrap();
        let mut flushed = journal.flushed.clone();
        flushed.wait_for(|f| *f >= 10).await.unwrap();
        (dir, cancel, journal)
    }

    fn seqs(items: &[Item]) -> Vec<u64> {
        items
            .iter()
            .map(|i| match i {
                Item::Record(r) => r.seq,
                Item::Damage(d) => panic!("damage: {d:?}"),
            })
            .collect()
    }

    /// The reader stops where the journal says it has flushed, without reading on to the end
    /// of the file (where it would look for a next segment on every batch): records written
    /// past that position are read after the journal's next flush.
    #[tokio::test]
    async fn the_reader_reads_no_further_than_the_journal_has_flushed() {
        let (dir, cancel, journal) = journal_of_ten().await;

        let (said, flushed) = watch::channel(6u64);
        let mut follower = Follower::open(dir.path().to_path_buf(), 0, flushed, None).unwrap();
        let mut items = Vec::new();
        assert!(matches!(
            follower.fill(&mut items, 100, u64::MAX),
            Fill::CaughtUp
        ));
        assert_eq!(seqs(&items), [1, 2, 3, 4, 5, 6]);
        assert!(!follower.has_new());
        said.send_replace(10);
        assert!(follower.has_new());
        items.clear();
        assert!(matches!(
            follower.fill(&mut items, 100, u64::MAX),
            Fill::CaughtUp
        ));
        assert_eq!(seqs(&items), [7, 8, 9, 10]);
        drop(said);
        assert!(follower.has_new(), "the journal closed");
        items.clear();
        assert!(matches!(
            follower.fill(&mut items, 100, u64::MAX),
            Fill::End
        ));
        assert!(items.is_empty());
        cancel.cancel();
        journal.join().await.unwrap();
    }

    /// The reader now runs in the pipeline's task: it reads a chunk at a time in seq order,
    /// says when it has caught up (and the pipeline waits for the journal's next flush), sees
    /// the next flush, and ends once the live journal has closed and everything is read (a
    /// journal that closed must not leave it looking for more in a loop).
    #[tokio::test]
    async fn the_reader_follows_a_live_journal_a_chunk_at_a_time_and_ends_when_it_closes() {
        let (dir, cancel, journal) = journal_of_ten().await;

        let mut follower =
            Follower::open(dir.path().to_path_buf(), 0, journal.flushed.clone(), None).unwrap();
        let mut items = Vec::new();
        assert!(matches!(follower.fill(&mut items, 4, u64::MAX), Fill::More));
        assert_eq!(seqs(&items), [1, 2, 3, 4]);
        items.clear();
        assert!(matches!(follower.fill(&mut items, 4, u64::MAX), Fill::More));
        assert_eq!(seqs(&items), [5, 6, 7, 8]);
        items.clear();
        assert!(matches!(
            follower.fill(&mut items, 4, u64::MAX),
            Fill::CaughtUp
        ));
        assert_eq!(seqs(&items), [9, 10]);
        assert!(!follower.has_new(), "nothing flushed since");

        journal.sender.send(frame(11)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), follower.changed())
            .await
            .expect("the next flush is seen");
        items.clear();
        assert!(matches!(
            follower.fill(&mut items, 4, u64::MAX),
            Fill::CaughtUp
        ));
        assert_eq!(seqs(&items), [11]);

        journal.sender.send(frame(12)).await.unwrap();
        cancel.cancel();
        journal.join().await.unwrap();
        assert!(follower.has_new(), "the journal closed: read what is left");
        items.clear();
        assert!(matches!(follower.fill(&mut items, 4, u64::MAX), Fill::End));
        assert_eq!(seqs(&items), [12]);
    }
}
