//! The database writer: records in, rows committed exactly once.
//!
//! [`Writer::write`] stores a batch of units (journal records, and ranges of records found
//! missing from the journal) in one transaction: it locks the collector's checkpoint row, skips
//! the units at or below the checkpoint, streams the message rows with binary COPY while encoding
//! (then the entry, event and book-state rows), merges the batch's per-connection liveness into
//! `krakenbook_connections`, moves the checkpoint to the batch's last seq, waits until the journal
//! has synced the batch's records (when given a [`Syncer`]), and commits. The requests that do
//! not wait for one another go out together: three round trips a batch on a connection that has
//! committed before (see `Writer::attempt`), however many records it holds.
//!
//! What must always hold:
//! - exactly once: a record is committed with the checkpoint that covers it, in the same
//!   transaction, and every attempt first reads the checkpoint under a row lock. A batch whose
//!   commit outcome was unknown (the connection died during `COMMIT`) is retried, finds its records
//!   covered, and writes nothing twice;
//! - one writer per collector identity: every connection first takes a session advisory lock on
//!   the collector's name ([`WRITER_LOCK`], `hashtext(collector)`), held until it closes; when
//!   another session holds it the writer refuses ([`StoreError::Locked`], naming the holder).
//!   The writer's own previous session (after a failure it may still be ending, or stuck in an
//!   abandoned attempt) is ended instead, so a retry is never refused by its own past; so is a
//!   session of a writer process of this host that no longer runs (killed mid-statement, before
//!   the server noticed), named by its `application_name`
//!   (`krakenbook writer NAME (pid PID on HOST)`);
//! - one journal per collector identity: with a [`JournalBinding`], every connection checks the
//!   journal instance recorded beside the checkpoint (a NULL one is adopted) and that the
//!   checkpoint is not beyond the journal's last seq, refusing otherwise
//!   ([`StoreError::InstanceMismatch`], [`StoreError::CheckpointBeyondJournal`]);
//! - the database never holds a record the journal can lose: with a [`Syncer`], no transaction
//!   commits before the journal has synced its last record to disk (the sync is asked for when the
//!   batch starts, so it overlaps the COPY);
//! - no record can stop the writer: a batch failing with a record-specific error
//!   ([`ErrorClass::RecordSpecific`]) is split in seq order ([`super::bisect`]) until the record
//!   is found; it is stored in raw form, or if even that fails a `not_stored` event row stands
//!   for it, while every other record is stored normally. Each part commits with its own
//!   checkpoint, in seq order;
//! - a statement timeout is not a reason to stop: a part whose write the server's
//!   `statement_timeout` cut short (SQLSTATE 57014: a role's limit shorter than a batch takes) is
//!   halved, each
//!   half committing with its own checkpoint in seq order; later batches are written in parts of
//!   that size until [`PARTS_BEFORE_GROWING`] parts in a row go through, when the size doubles
//!   again. A single record cut short is an environment error (below);
//! - nothing dropped otherwise: transient failures ([`ErrorClass::Transient`]) are retried with
//!   exponential backoff on a new connection, for as long as the policy allows (by default
//!   forever); environment errors are returned at once with the batch's seq range, nothing of the
//!   failed part committed, never split;
//! - a batch's seqs are strictly increasing (the journal's order); anything else is refused.

use std::time::Duration;

use futures_util::{FutureExt, SinkExt};
use tokio_postgres::{Client, Statement};

use super::bisect::{Bisect, Mode, Part};
use super::connect::DbTarget;
use super::rows::{
    CLOSE_BATCH, COPY_BOOK, COPY_EVENTS, COPY_MESSAGES, COPY_STATES, RowCounts, RowEncoder,
};
use super::{ErrorClass, StoreError};
use crate::journal::{Damage, Item, Syncer};
use crate::record::{Record, RecordBody};
use crate::time::Timestamp;

/// How much of a COPY stream is sent at a time.
const CHUNK: usize = 128 * 1024;

/// Creates the collector's checkpoint row if missing and locks it either way, returning its seq:
/// an attempt whose earlier twin's commit went through sees that twin's checkpoint.
const LOCK_CHECKPOINT: &str = "INSERT INTO krakenbook_checkpoints (collector) VALUES ($1) \
    ON CONFLICT (collector) DO UPDATE SET collector = excluded.collector RETURNING seq";

/// The first key of the writers' session advisory locks (`pg_try_advisory_lock(WRITER_LOCK,
/// hashtext(collector))`): "krkb".
pub const WRITER_LOCK: i32 = 0x6b72_6b62;

/// How the writer retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the first retry.
    pub initial_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// Give up after this many attempts (`None`: never give up on a retriable error).
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry: for callers that retry themselves (the collector's pipeline, which
    /// tracks the database's health across attempts).
    pub fn once() -> RetryPolicy {
        RetryPolicy {
            max_attempts: Some(1),
            ..RetryPolicy::default()
        }
    }

    /// The wait after failed attempt `attempt` (1-based), before jitter: the initial delay doubled
    /// per attempt, capped at the maximum.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }
}

/// The journal a writer's records come from: checked against what the database recorded for the
/// collector on every connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalBinding {
    /// The journal's instance id (`journal::instance`).
    pub instance: String,
    /// The journal's directory (named in refusals).
    pub dir: String,
    /// The journal's last seq: the database's checkpoint must not be beyond it.
    pub last_seq: u64,
}

/// The writer's settings.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// The collector whose records these are: written in every row and naming its checkpoint.
    pub collector: String,
    /// Retry policy for retriable failures.
    pub retry: RetryPolicy,
    /// The longest one attempt at a batch may take before it is abandoned (and retried on a new
    /// connection; the checkpoint lock makes a late commit of the abandoned attempt harmless).
    pub attempt_timeout: Duration,
    /// The journal the records come from (`None`: not checked, for benchmarks and tests).
    pub journal: Option<JournalBinding>,
}

impl WriterConfig {
    /// Defaults for collector `collector`: retry forever, 2 minutes per attempt, no journal check.
    pub fn new(collector: impl Into<String>) -> WriterConfig {
        WriterConfig {
            collector: collector.into(),
            retry: RetryPolicy::default(),
            attempt_timeout: Duration::from_secs(120),
            journal: None,
        }
    }
}

/// One unit of a batch, as the writer sees it: a record, or records found missing.
#[derive(Clone, Copy, Debug)]
pub enum Unit<'a> {
    /// A journal record.
    Record(&'a Record),
    /// Records missing from the journal (damage, a missing or truncated segment, a torn tail,
    /// expired segments): a `journal_damage` event row when records were lost, and the
    /// checkpoint moves past it either way.
    Damage(&'a Damage),
}

impl Unit<'_> {
    /// The first seq it covers.
    pub fn first_seq(&self) -> u64 {
        match self {
            Unit::Record(r) => r.seq,
            Unit::Damage(d) => d.first_seq,
        }
    }

    /// The last seq it covers.
    pub fn last_seq(&self) -> u64 {
        match self {
            Unit::Record(r) => r.seq,
            Unit::Damage(d) => d.last_seq.max(d.first_seq),
        }
    }

    fn record(&self) -> Option<&Record> {
        match self {
            Unit::Record(r) => Some(r),
            Unit::Damage(_) => None,
        }
    }
}

/// What a writer can store: [`Record`]s, or the journal reader's [`Item`]s.
pub trait BatchItem {
    /// The unit this is.
    fn unit(&self) -> Unit<'_>;
}

impl BatchItem for Record {
    fn unit(&self) -> Unit<'_> {
        Unit::Record(self)
    }
}

impl BatchItem for Item {
    fn unit(&self) -> Unit<'_> {
        match self {
            Item::Record(r) => Unit::Record(r),
            Item::Damage(d) => Unit::Damage(d),
        }
    }
}

/// What one [`Writer::write`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// The batch's first seq.
    pub first_seq: u64,
    /// The batch's last seq.
    pub last_seq: u64,
    /// Units written now (records, and damage ranges).
    pub written: u64,
    /// Units skipped because the checkpoint already covered them.
    pub skipped: u64,
    /// Rows written now (with the records stored raw or not stored, and the seqs found missing).
    pub rows: RowCounts,
    /// Attempts it took (1: no retry, no split).
    pub attempts: u32,
    /// Transactions committed (more than 1 when the batch was split around a refused record).
    pub commits: u32,
}

/// Totals over a writer's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Batches committed (or found already committed).
    pub batches: u64,
    /// Records written.
    pub records: u64,
    /// Records skipped as already committed.
    pub skipped: u64,
    /// Rows written, by table.
    pub rows: RowCounts,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Connections opened.
    pub connections: u64,
    /// Batches split to find a record the server refused.
    pub splits: u64,
    /// Parts halved because a timeout cut their write short (a role's `statement_timeout`).
    pub timeout_halvings: u64,
}

/// After this many parts written in a row at a lowered part size, the size doubles again.
const PARTS_BEFORE_GROWING: u32 = 16;

/// Writes records to TimescaleDB, exactly once (see the module doc).
#[derive(Debug)]
pub struct Writer {
    target: DbTarget,
    config: WriterConfig,
    conn: Option<Conn>,
    encoder: RowEncoder,
    stats: WriterStats,
    /// The server process of the last connection: after a failure it may still hold the
    /// collector's lock for a moment (or for good, stuck in an abandoned attempt).
    previous_backend: Option<i32>,
    /// The most units one transaction writes, lowered when a timeout cut a write short (a
    /// role's `statement_timeout` shorter than a batch takes); `None`: whole batches.
    part_limit: Option<usize>,
    /// Parts written in a row at the lowered limit (it doubles after [`PARTS_BEFORE_GROWING`]).
    parts_at_limit: u32,
}

struct Conn {
    client: Client,
    /// The checkpoint as this connection last saw it under the row lock (inner `None`: no record
    /// stored yet), or `None` when it has not looked yet. While the connection holds the
    /// collector's writer lock nothing else moves the checkpoint, so the next batch starts its
    /// COPY together with the lock on this guess; the lock's answer confirms it before any row
    /// is sent.
    checkpoint: Option<Option<u64>>,
    lock_checkpoint: Statement,
    /// Merges a batch's liveness rows and moves the checkpoint ([`CLOSE_BATCH`]).
    close_batch: Statement,
    copy_messages: Statement,
    copy_book: Statement,
    /// This collector's id in `krakenbook_collectors` (written in every book row).
    collector_id: i16,
    copy_events: Statement,
    copy_states: Statement,
    backend_pid: i32,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("backend_pid", &self.backend_pid)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// A writer for the database at `url`; it connects on first use (so a collector can start
    /// while the database is down). A bad URL is an error now.
    pub fn new(url: &str, config: WriterConfig) -> Result<Writer, StoreError> {
        Ok(Writer::with_target(DbTarget::parse(url)?, config))
    }

    /// A writer for `target`; it connects on first use.
    pub fn with_target(target: DbTarget, config: WriterConfig) -> Writer {
        let encoder = RowEncoder::new(&config.collector);
        Writer {
            target,
            config,
            conn: None,
            encoder,
            stats: WriterStats::default(),
            previous_backend: None,
            part_limit: None,
            parts_at_limit: 0,
        }
    }

    /// A writer connected now: for commands that should fail fast when the database is not there
    /// (or another process writes this collector, or the journal is not the database's).
    pub async fn connect(url: &str, config: WriterConfig) -> Result<Writer, StoreError> {
        let mut w = Writer::new(url, config)?;
        w.conn = Some(w.open().await?);
        Ok(w)
    }

    /// The database, password redacted.
    pub fn target(&self) -> &DbTarget {
        &self.target
    }

    /// The collector name.
    pub fn collector(&self) -> &str {
        &self.config.collector
    }

    /// Totals so far.
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// The server process of the current connection, if connected (as in `pg_stat_activity`).
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.as_ref().map(|c| c.backend_pid)
    }

    /// Whether a connection is open (it is dropped after any failure).
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Connects now if not connected (taking the collector's lock and checking the journal).
    pub async fn ensure_connected(&mut self) -> Result<(), StoreError> {
        if self.conn.is_none() {
            self.conn = Some(self.open().await?);
        }
        Ok(())
    }

    /// Closes the connection (releasing the collector's lock).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Tells the writer how far the journal goes now (checked against the database's checkpoint
    /// at the next connection).
    pub fn set_journal_end(&mut self, last_seq: u64) {
        if let Some(j) = &mut self.config.journal {
            j.last_seq = j.last_seq.max(last_seq);
        }
    }

    /// The seq of the last record committed for this collector (`None`: nothing yet): where a
    /// journal reader resumes. Retried like a batch.
    pub async fn checkpoint(&mut self) -> Result<Option<u64>, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                self.ensure_connected().await?;
                let conn = self.conn.as_ref().ok_or_else(|| {
                    StoreError::InvalidBatch("no connection after connecting".into())
                })?;
                let row = conn
                    .client
                    .query_opt(
                        "SELECT seq FROM krakenbook_checkpoints WHERE collector = $1",
                        &[&self.config.collector],
                    )
                    .await
                    .map_err(StoreError::db("reading the checkpoint"))?;
                Ok::<_, StoreError>(
                    row.and_then(|r| r.get::<_, Option<i64>>(0))
                        .and_then(|s| u64::try_from(s).ok()),
                )
            }
            .await;
            match result {
                Ok(seq) => return Ok(seq),
                Err(e) => {
                    self.after_failure(e, attempt, "reading the checkpoint")
                        .await?
                }
            }
        }
    }

    /// Stores `records` (strictly increasing seqs) with the checkpoint, without waiting for a
    /// journal sync; see [`Writer::write`].
    pub async fn write_batch(&mut self, records: &[Record]) -> Result<BatchReport, StoreError> {
        self.write(records, None).await
    }

    /// Stores `items` (strictly increasing seqs) in one transaction with the checkpoint, or, when
    /// the server refuses one of its records, in several (see the module doc). Units the
    /// checkpoint already covers are skipped. With `sync`, nothing commits before the journal has
    /// synced the records it holds.
    pub async fn write<T: BatchItem>(
        &mut self,
        items: &[T],
        mut sync: Option<&mut Syncer>,
    ) -> Result<BatchReport, StoreError> {
        let (Some(first), Some(last)) = (items.first(), items.last()) else {
            return Ok(BatchReport::default());
        };
        let (first_seq, last_seq) = (first.unit().first_seq(), last.unit().last_seq());
        validate(items)?;
        let mut report = BatchReport {
            first_seq,
            last_seq,
            ..BatchReport::default()
        };
        let mut plan = Bisect::limited(items.len(), self.part_limit);
        while let Some(part) = plan.next().cloned() {
            let units = &items[part.start..part.end];
            match self
                .write_part(units, &part, sync.as_deref_mut(), &mut report)
                .await
            {
                Ok(()) => {
                    plan.succeeded();
                    self.part_written();
                }
                Err(e) if cut_short(&e) && plan.halve() => {
                    // Nothing of the part committed; its halves are written one after the
                    // other, and so are later batches' parts, until writes go through again.
                    let len = part.end - part.start;
                    self.part_limit = Some(len / 2);
                    self.parts_at_limit = 0;
                    self.stats.timeout_halvings += 1;
                    tracing::warn!(
                        records = len,
                        now = len / 2,
                        error = %crate::text::printable(&e.to_string()),
                        "a write was cut short by a timeout; writing smaller parts (a role's statement_timeout shorter than a batch takes: raise it to write whole batches)"
                    );
                }
                Err(e) if e.class() == ErrorClass::RecordSpecific => {
                    if part.mode == Mode::Whole && part.end - part.start == items.len() {
                        self.stats.splits += 1;
                    }
                    let part_first = units.first().map_or(first_seq, |u| u.unit().first_seq());
                    let part_last = units.last().map_or(last_seq, |u| u.unit().last_seq());
                    tracing::debug!(
                        error = %crate::text::printable(&e.to_string()),
                        first = part_first,
                        last = part_last,
                        mode = ?part.mode,
                        "the database refused a record of this part; splitting"
                    );
                    let reason = crate::text::printable(&e.to_string()).into_owned();
                    let has_raw = |i: usize| {
                        matches!(
                            items[i].unit(),
                            Unit::Record(Record {
                                body: RecordBody::Frame(_),
                                ..
                            })
                        )
                    };
                    if plan.failed(reason, has_raw).is_err() {
                        return Err(StoreError::Batch {
                            first_seq: part_first,
                            last_seq: part_last,
                            attempts: report.attempts,
                            source: Box::new(e),
                        });
                    }
                }
                Err(e) => {
                    return Err(StoreError::Batch {
                        first_seq,
                        last_seq,
                        attempts: report.attempts,
                        source: Box::new(e),
                    });
                }
            }
        }
        let s = &mut self.stats;
        s.batches += 1;
        s.records += report.written;
        s.skipped += report.skipped;
        s.rows += report.rows;
        Ok(report)
    }

    /// A part was committed: at a lowered part size, the size grows back after a run of them.
    fn part_written(&mut self) {
        let Some(limit) = self.part_limit else {
            return;
        };
        self.parts_at_limit += 1;
        if self.parts_at_limit >= PARTS_BEFORE_GROWING {
            self.parts_at_limit = 0;
            let grown = limit.saturating_mul(2);
            // Beyond any batch the collector makes: whole batches again.
            self.part_limit = (grown < 1 << 20).then_some(grown);
        }
    }

    /// Writes one part of a batch, retrying transient failures as the policy allows; other
    /// failures are returned as they are (the caller splits on record-specific ones).
    async fn write_part<T: BatchItem>(
        &mut self,
        units: &[T],
        part: &Part,
        mut sync: Option<&mut Syncer>,
        report: &mut BatchReport,
    ) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (units.first(), units.last()) else {
            return Ok(());
        };
        let (first_seq, last_seq) = (first.unit().first_seq(), last.unit().last_seq());
        let mut attempt = 0;
        loop {
            attempt += 1;
            report.attempts += 1;
            let timeout = self.config.attempt_timeout;
            let sync = sync.as_deref_mut();
            let result = match tokio::time::timeout(timeout, self.attempt(units, part, sync)).await
            {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout {
                    what: format!("writing records {first_seq}..={last_seq}"),
                    after: timeout,
                }),
            };
            match result {
                Ok(done) => {
                    report.written += done.written;
                    report.skipped += done.skipped;
                    report.rows += done.rows;
                    report.commits += u32::from(done.committed);
                    return Ok(());
                }
                Err(e) if e.class() == ErrorClass::Transient => {
                    let what = format!("writing records {first_seq}..={last_seq}");
                    self.after_failure(e, attempt, &what).await?;
                }
                Err(e) => {
                    // The connection may be in any state (mid-COPY, aborted transaction).
                    self.conn = None;
                    return Err(e);
                }
            }
        }
    }

    /// After a failed attempt: drops the connection, and either waits for the next attempt or
    /// returns the error when it is not retriable or the attempts are used up.
    async fn after_failure(
        &mut self,
        e: StoreError,
        attempt: u32,
        what: &str,
    ) -> Result<(), StoreError> {
        // The connection may be in any state (mid-COPY, aborted transaction): start afresh.
        self.conn = None;
        let policy = self.config.retry;
        if !e.is_retriable() || policy.max_attempts.is_some_and(|max| attempt >= max) {
            return Err(e);
        }
        let delay = jitter(policy.delay(attempt));
        self.stats.retries += 1;
        tracing::warn!(
            error = %e,
            attempt,
            retry_in = ?delay,
            database = %self.target.redacted(),
            "{what} failed; retrying"
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// The session name on the server: the collector, and which process of which host writes it
    /// (shown to a second writer that is refused).
    fn application_name(&self) -> String {
        let mut app = format!(
            "krakenbook writer {} (pid {} on {})",
            self.config.collector,
            std::process::id(),
            crate::host::hostname()
        );
        // PostgreSQL keeps 63 bytes of application_name.
        while app.len() > 63 {
            app.pop();
        }
        app
    }

    async fn open(&mut self) -> Result<Conn, StoreError> {
        let client = self.target.connect(&self.application_name()).await?;
        self.take_lock(&client).await?;
        if let Some(binding) = &self.config.journal {
            check_journal(&client, &self.config.collector, binding).await?;
        }
        let prepare = |sql: &'static str| {
            let client = &client;
            async move {
                client
                    .prepare(sql)
                    .await
                    .map_err(StoreError::db(format!("preparing {}", first_words(sql))))
            }
        };
        // The statements are prepared together (one round trip): a new connection costs little
        // more than its handshake.
        let (lock_checkpoint, close_batch, copy_messages, copy_book, copy_events, copy_states) = tokio::try_join!(
            prepare(LOCK_CHECKPOINT),
            prepare(CLOSE_BATCH),
            prepare(COPY_MESSAGES),
            prepare(COPY_BOOK),
            prepare(COPY_EVENTS),
            prepare(COPY_STATES),
        )?;
        let collector_id: i16 = client
            .query_one(
                "SELECT krakenbook_collector_id($1)",
                &[&self.encoder.collector()],
            )
            .await
            .map_err(StoreError::db("registering the collector's id"))?
            .get(0);
        let backend_pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(StoreError::db("reading the backend pid"))?
            .get(0);
        self.stats.connections += 1;
        self.previous_backend = Some(backend_pid);
        tracing::debug!(database = %self.target.redacted(), backend_pid, "writer connected");
        Ok(Conn {
            client,
            checkpoint: None,
            lock_checkpoint,
            close_batch,
            copy_messages,
            copy_book,
            collector_id,
            copy_events,
            copy_states,
            backend_pid,
        })
    }

    /// Takes the collector's session advisory lock, or says who holds it. A lock still held by
    /// this writer's own previous session (ending after a failure, or stuck in an abandoned
    /// attempt) is taken back: that session is ended.
    async fn take_lock(&self, client: &Client) -> Result<(), StoreError> {
        let collector = &self.config.collector;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let holder = loop {
            let free: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1::int4, hashtext($2::text))",
                    &[&WRITER_LOCK, collector],
                )
                .await
                .map_err(StoreError::db("taking the collector's writer lock"))?
                .get(0);
            if free {
                return Ok(());
            }
            let holder = client
                .query_opt(
                    "SELECT l.pid, a.application_name, host(a.client_addr), a.client_port, \
                            to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                            a.usename::text
                       FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
                      WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                        AND l.classid = ($1::int4)::oid AND l.objid = hashtext($2::text)::oid
                        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                        AND l.pid <> pg_backend_pid()
                      LIMIT 1",
                    &[&WRITER_LOCK, collector],
                )
                .await
                .ok()
                .flatten();
            let pid: Option<i32> = holder.as_ref().and_then(|r| r.get(0));
            let app: Option<String> = holder.as_ref().and_then(|r| r.get(1));
            let ours = pid.is_some() && pid == self.previous_backend;
            let orphan = app
                .as_deref()
                .is_some_and(|a| orphaned_writer(a, &crate::host::hostname(), process_runs));
            if orphan && !ours {
                tracing::warn!(
                    pid,
                    application = %crate::text::printable(app.as_deref().unwrap_or_default()),
                    "the collector's writer lock is held by a session of a krakenbook process of this host that no longer runs (killed mid-statement); ending that session"
                );
            }
            if (ours || orphan) && tokio::time::Instant::now() < deadline {
                tracing::debug!(
                    pid,
                    "the writer's previous session still holds its lock; ending it"
                );
                let _ = client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            if holder.is_none() && tokio::time::Instant::now() < deadline {
                // Released between the two queries: try again.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            break holder;
        };
        let (holder, stale) = match holder {
            Some(row) => {
                let pid: Option<i32> = row.get(0);
                let app: Option<String> = row.get(1);
                let addr: Option<String> = row.get(2);
                let port: Option<i32> = row.get(3);
                let since: Option<String> = row.get(4);
                let user: Option<String> = row.get(5);
                let mut parts = Vec::new();
                if let Some(app) = app.filter(|a| !a.is_empty()) {
                    parts.push(format!("application '{}'", crate::text::printable(&app)));
                }
                match (addr, port) {
                    (Some(a), Some(p)) if p > 0 => parts.push(format!("from {a} port {p}")),
                    (Some(a), _) => parts.push(format!("from {a}")),
                    (None, _) => parts.push("over a local socket".to_owned()),
                }
                if let Some(u) = user {
                    parts.push(format!("user {u}"));
                }
                if let Some(s) = since {
                    parts.push(format!("connected since {s}"));
                }
                if let Some(pid) = pid {
                    parts.push(format!("server pid {pid}"));
                }
                let stale = pid
                    .map(|pid| {
                        format!(
                            " (if that process is gone, end its session: SELECT pg_terminate_backend({pid}))"
                        )
                    })
                    .unwrap_or_default();
                (parts.join(", "), stale)
            }
            None => ("another session of this database".to_owned(), String::new()),
        };
        Err(StoreError::Locked {
            collector: collector.clone(),
            holder,
            stale,
        })
    }

    /// One attempt at a part of a batch: three round trips when the connection knows where the
    /// checkpoint is (see [`Conn::checkpoint`]), four when it does not, plus one per COPY of
    /// the rarer tables.
    ///
    /// 1. `BEGIN`, the checkpoint's lock and the book COPY's start, sent together;
    /// 2. the book rows, streamed while the part is encoded, then the end of the COPY together
    ///    with the statement that merges the liveness rows and moves the checkpoint;
    /// 3. `COMMIT`, once the journal has synced the part (asked for before step 1).
    ///
    /// Requests sent together go out in the order they are polled first (tokio-postgres sends a
    /// request when its future is first polled; every request here is a single message or, for
    /// COPY, a stream the connection finishes before it writes the next request), so they are
    /// joined `biased`: `BEGIN` before the lock before the COPY, and an error is reported by the
    /// request that caused it, not by the ones the aborted transaction then refused.
    async fn attempt<T: BatchItem>(
        &mut self,
        units: &[T],
        part: &Part,
        sync: Option<&mut Syncer>,
    ) -> Result<Attempted, StoreError> {
        self.ensure_connected().await?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::InvalidBatch(
                "no connection after connecting".into(),
            ));
        };
        // Ask the journal to sync the part's records now: the sync runs while the rows are sent,
        // and the commit waits for it.
        let sync_seq = units
            .iter()
            .rev()
            .find_map(|u| u.unit().record().map(|r| r.seq));
        let mut gate = match (sync, sync_seq) {
            (Some(s), Some(seq)) => Some((seq, Box::pin(s.sync_through(seq)))),
            _ => None,
        };
        if let Some((_, g)) = gate.as_mut()
            && let Some(done) = g.as_mut().now_or_never()
        {
            done.map_err(|e| StoreError::JournalSync {
                seq: sync_seq.unwrap_or_default(),
                reason: e.to_string(),
            })?;
            gate = None;
        }

        let collector = self.config.collector.as_str();
        let encoder = &mut self.encoder;
        let Conn {
            client,
            checkpoint: known,
            lock_checkpoint,
            close_batch,
            copy_messages,
            copy_book,
            copy_events,
            copy_states,
            collector_id,
            ..
        } = conn;
        let client = &*client;
        let begin = || async {
            client
                .batch_execute("BEGIN")
                .await
                .map_err(StoreError::db("beginning a transaction"))
        };
        let lock = || async {
            let row = client
                .query_one(&*lock_checkpoint, &[&collector])
                .await
                .map_err(StoreError::db("locking the checkpoint"))?;
            Ok::<_, StoreError>(
                row.get::<_, Option<i64>>(0)
                    .and_then(|c| u64::try_from(c).ok()),
            )
        };
        let start_copy = || async {
            client
                .copy_in::<_, bytes::Bytes>(&*copy_book)
                .await
                .map_err(StoreError::db("starting COPY into krakenbook_book"))
        };
        let skip = |covered: Option<u64>| match covered {
            Some(c) => units.partition_point(|u| u.unit().last_seq() <= c),
            None => 0,
        };

        let (covered, sink) = loop {
            // The checkpoint this connection last saw under the lock: nothing else moves it while
            // the connection holds the collector's writer lock, so the COPY starts with the lock,
            // and the lock's answer confirms the guess before a single row is sent.
            let guess = known.filter(|c| skip(*c) < units.len());
            if let Some(guess) = guess {
                let (_, covered, sink) = tokio::try_join!(biased; begin(), lock(), start_copy())?;
                if covered == guess {
                    break (covered, sink);
                }
                // Moved by someone else after all: end the COPY (dropping the sink fails it) and
                // the transaction, and start over the careful way.
                drop(sink);
                client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(StoreError::db("ending a transaction"))?;
                *known = None;
                continue;
            }
            let (_, covered) = tokio::try_join!(biased; begin(), lock())?;
            *known = Some(covered);
            if skip(covered) == units.len() {
                // Everything is already committed (an earlier attempt's commit went through).
                client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(StoreError::db("ending a transaction"))?;
                return Ok(Attempted {
                    skipped: units.len() as u64,
                    ..Attempted::default()
                });
            }
            break (covered, start_copy().await?);
        };
        let start = skip(covered);
        let mut done = Attempted {
            skipped: start as u64,
            ..Attempted::default()
        };
        let todo = &units[start..];
        let Some(last) = todo.last() else {
            return Err(StoreError::InvalidBatch(
                "nothing left to write after the checkpoint".into(),
            ));
        };
        let last_seq = last.unit().last_seq();
        let last_seq = i64::try_from(last_seq)
            .map_err(|_| StoreError::InvalidBatch(format!("seq {last_seq} exceeds bigint")))?;
        let from_seq = covered.map_or(0, |c| c + 1);
        let reason = part.reason.as_deref().unwrap_or("refused");

        encoder.reset();
        encoder.set_collector_id(*collector_id);
        // The book rows stream while the batch is encoded (they are nearly all of it); the other
        // frames follow in a COPY of their own.
        futures_util::pin_mut!(sink);
        let copy_err = StoreError::db("COPY into krakenbook_book");
        let mut result = Ok(());
        for item in todo {
            match (item.unit(), part.mode) {
                (Unit::Record(r), Mode::Whole) => encoder.push(r)?,
                (Unit::Record(r), Mode::Raw) => {
                    if !encoder.push_raw(r, reason)? {
                        encoder.push_not_stored(r, reason)?;
                    }
                }
                (Unit::Record(r), Mode::NotStored) => encoder.push_not_stored(r, reason)?,
                (Unit::Damage(d), _) => encoder.push_damage(d, from_seq)?,
            }
            if let Some(chunk) = encoder.take_book(CHUNK) {
                result = sink.feed(chunk).await;
                if result.is_err() {
                    break;
                }
                // On the pipeline's current-thread runtime the connection's task writes the
                // chunk to the socket only when this task lets it run: without a turn here the
                // first chunks waited in the channel while the next were encoded, and the
                // server sat idle. With it the server parses chunk k while chunk k + 1 is
                // encoded (bench ingest: 0.78-0.89 of plain COPY against 0.72-0.81, alternated).
                tokio::task::yield_now().await;
            }
        }
        let streams = encoder.finish();
        let counts = encoder.counts();
        let finish_book = async {
            match result {
                Ok(()) => match sink.feed(streams.book).await {
                    Ok(()) => sink.as_mut().finish().await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
            .map_err(copy_err)
        };
        // The liveness rows and the checkpoint: one statement.
        let live = encoder.connections();
        let ids: Vec<i64> = live.iter().map(|c| c.conn_id).collect();
        let first_seqs: Vec<i64> = live.iter().map(|c| c.first_seq).collect();
        let first_at: Vec<Timestamp> = live.iter().map(|c| c.first_received_at).collect();
        let last_seqs: Vec<i64> = live.iter().map(|c| c.last_seq).collect();
        let last_at: Vec<Timestamp> = live.iter().map(|c| c.last_received_at).collect();
        let kraken: Vec<Option<Timestamp>> = live.iter().map(|c| c.last_frame_timestamp).collect();
        let close = async {
            client
                .execute(
                    &*close_batch,
                    &[
                        &collector,
                        &ids,
                        &first_seqs,
                        &first_at,
                        &last_seqs,
                        &last_at,
                        &kraken,
                        &last_seq,
                    ],
                )
                .await
                .map_err(StoreError::db(
                    "moving the checkpoint and updating krakenbook_connections",
                ))
        };
        let others = counts.messages - counts.book;
        let moved = if others == 0 && counts.events == 0 && counts.states == 0 {
            // The common case: the end of the COPY and the closing statement go out together.
            let (copied, moved) = tokio::try_join!(biased; finish_book, close)?;
            expect_rows("krakenbook_book", copied, counts.book)?;
            moved
        } else {
            let copied = finish_book.await?;
            expect_rows("krakenbook_book", copied, counts.book)?;
            if others > 0 {
                let n =
                    copy_all(client, copy_messages, streams.messages, "krakenbook_other").await?;
                expect_rows("krakenbook_other", n, others)?;
            }
            if counts.events > 0 {
                let n = copy_all(client, copy_events, streams.events, "kraken_feed_events").await?;
                expect_rows("kraken_feed_events", n, counts.events)?;
            }
            if counts.states > 0 {
                let n = copy_all(client, copy_states, streams.states, "kraken_book_states").await?;
                expect_rows("kraken_book_states", n, counts.states)?;
            }
            close.await?
        };
        if moved != 1 {
            return Err(StoreError::InvalidBatch(format!(
                "the checkpoint row of collector {collector} was not found under its lock ({moved} rows updated)"
            )));
        }
        if let Some((seq, g)) = gate {
            g.await.map_err(|e| StoreError::JournalSync {
                seq,
                reason: e.to_string(),
            })?;
        }
        client
            .batch_execute("COMMIT")
            .await
            .map_err(StoreError::db("committing"))?;
        *known = Some(u64::try_from(last_seq).ok());
        done.written = todo.len() as u64;
        done.rows = counts;
        done.committed = true;
        Ok(done)
    }
}

/// Whether a session named `application` (as [`Writer`] names its sessions:
/// `krakenbook writer NAME (pid PID on HOST)`) belongs to a writer process of this host (`host`)
/// that is gone: `alive(pid)` says whether a krakenbook process with that pid runs. A name cut
/// short, another host, or a live process: not orphaned.
pub(crate) fn orphaned_writer(application: &str, host: &str, alive: impl Fn(u32) -> bool) -> bool {
    let Some(rest) = application.strip_prefix("krakenbook writer ") else {
        return false;
    };
    let Some((_, tail)) = rest.rsplit_once(" (pid ") else {
        return false;
    };
    let Some((pid, on)) = tail.strip_suffix(')').and_then(|t| t.split_once(" on ")) else {
        return false;
    };
    match pid.parse::<u32>() {
        Ok(pid) => on == host && pid != std::process::id() && !alive(pid),
        Err(_) => false,
    }
}

/// Whether a process with `pid` runs on this host (present in `/proc`; an unreadable entry
/// counts as running: a session is never ended on a guess).
fn process_runs(pid: u32) -> bool {
    match std::fs::metadata(format!("/proc/{pid}")) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// What one attempt at a part did.
#[derive(Debug, Default)]
struct Attempted {
    written: u64,
    skipped: u64,
    rows: RowCounts,
    committed: bool,
}

/// The journal-instance and journal-end checks, on a new connection (holding the collector's
/// lock, so no other writer changes the row meanwhile).
async fn check_journal(
    client: &Client,
    collector: &str,
    binding: &JournalBinding,
) -> Result<(), StoreError> {
    let row = client
        .query_opt(
            "SELECT seq, journal_instance FROM krakenbook_checkpoints WHERE collector = $1",
            &[&collector],
        )
        .await
        .map_err(StoreError::db("reading the checkpoint's journal instance"))?;
    let (seq, instance): (Option<i64>, Option<String>) = match &row {
        Some(r) => (r.get(0), r.get(1)),
        None => (None, None),
    };
    let seq = seq.and_then(|s| u64::try_from(s).ok());
    match journal_verdict(collector, seq, instance.as_deref(), binding)? {
        JournalVerdict::Matches => Ok(()),
        JournalVerdict::Adopt => {
            client
                .execute(
                    "INSERT INTO krakenbook_checkpoints (collector, journal_instance) VALUES ($1, $2) \
                     ON CONFLICT (collector) DO UPDATE SET journal_instance = excluded.journal_instance",
                    &[&collector, &binding.instance],
                )
                .await
                .map_err(StoreError::db("recording the journal instance"))?;
            if let Some(old) = instance {
                tracing::info!(collector, old = %old, new = %binding.instance, "database: this collector had stored nothing from its former journal; the new journal instance is recorded");
            }
            Ok(())
        }
    }
}

/// What the database's checkpoint row says about the journal being written.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JournalVerdict {
    /// The instance recorded is this journal's.
    Matches,
    /// Record this journal's instance (none recorded yet, or nothing stored under the old one).
    Adopt,
}

/// Decides on the checkpoint row (`seq`, `instance`) against the journal (no I/O): a different
/// instance with records stored is refused, as is a checkpoint beyond the journal's last seq.
pub(crate) fn journal_verdict(
    collector: &str,
    seq: Option<u64>,
    instance: Option<&str>,
    binding: &JournalBinding,
) -> Result<JournalVerdict, StoreError> {
    let stored = seq.filter(|s| *s > 0);
    match instance {
        Some(i) if i != binding.instance && stored.is_some() => {
            return Err(StoreError::InstanceMismatch {
                collector: collector.to_owned(),
                database_instance: i.to_owned(),
                journal_instance: binding.instance.clone(),
                journal_dir: binding.dir.clone(),
            });
        }
        _ => {}
    }
    if let Some(s) = stored
        && s > binding.last_seq
    {
        return Err(StoreError::CheckpointBeyondJournal {
            collector: collector.to_owned(),
            checkpoint: s,
            journal_last: binding.last_seq,
            journal_dir: binding.dir.clone(),
        });
    }
    Ok(if instance == Some(binding.instance.as_str()) {
        JournalVerdict::Matches
    } else {
        JournalVerdict::Adopt
    })
}

/// Sends a whole COPY stream in chunks and finishes it, returning the rows the server counted.
async fn copy_all(
    client: &Client,
    statement: &Statement,
    mut data: bytes::Bytes,
    table: &str,
) -> Result<u64, StoreError> {
    let sink = client
        .copy_in(statement)
        .await
        .map_err(StoreError::db(format!("starting COPY into {table}")))?;
    futures_util::pin_mut!(sink);
    let result = async {
        while data.len() > CHUNK {
            sink.feed(data.split_to(CHUNK)).await?;
        }
        sink.feed(data).await?;
        sink.as_mut().finish().await
    }
    .await;
    result.map_err(StoreError::db(format!("COPY into {table}")))
}

fn expect_rows(table: &str, copied: u64, encoded: u64) -> Result<(), StoreError> {
    if copied == encoded {
        Ok(())
    } else {
        Err(StoreError::InvalidBatch(format!(
            "COPY into {table} stored {copied} rows, {encoded} were sent"
        )))
    }
}

/// A batch must be in the journal's order (each unit after the one before it ends), and its
/// numbers must fit PostgreSQL's `bigint`.
fn validate<T: BatchItem>(items: &[T]) -> Result<(), StoreError> {
    let max = i64::MAX as u64;
    for pair in items.windows(2) {
        let (a, b) = (pair[0].unit(), pair[1].unit());
        if b.first_seq() <= a.last_seq() {
            return Err(StoreError::InvalidBatch(format!(
                "seqs must be strictly increasing, found {} after {}",
                b.first_seq(),
                a.last_seq()
            )));
        }
    }
    if let Some(u) = items.iter().map(BatchItem::unit).find(|u| {
        u.last_seq() > max
            || u.record()
                .is_some_and(|r| r.conn_id > max || r.conn_seq > max)
    }) {
        return Err(StoreError::InvalidBatch(format!(
            "record {} has a number beyond PostgreSQL's bigint",
            u.first_seq()
        )));
    }
    Ok(())
}

/// `d` plus up to a quarter of it, so that writers restarting together do not retry in step.
fn jitter(d: Duration) -> Duration {
    let quarter = d.as_nanos() as u64 / 4;
    if quarter == 0 {
        return d;
    }
    let noise = crate::rng::Rng::from_os().below(quarter + 1);
    d + Duration::from_nanos(noise)
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Whether a failure is a write cut short by the server's `statement_timeout` (SQLSTATE 57014):
/// a smaller part can go through where the whole did not. (The attempt's own timeout is not one:
/// it is what a held lock or a stalled network looks like, retried as it is.)
fn cut_short(e: &StoreError) -> bool {
    e.sqlstate() == Some("57014")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{EventKind, FeedEvent, RecordBody};

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_attempts: None,
        };
        let delays: Vec<u64> = (1..=7).map(|a| p.delay(a).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(p.delay(1000), Duration::from_secs(2));
        for a in 1..10 {
            let d = p.delay(a);
            let j = jitter(d);
            assert!(j >= d && j <= d + d / 4, "{a}: {j:?}");
        }
    }

    fn event(seq: u64) -> Record {
        Record {
            seq,
            received_at: Timestamp::from_unix_nanos(0),
            conn_id: 1,
            conn_seq: 0,
            body: RecordBody::Event(FeedEvent {
                kind: EventKind::Connected,
                symbol: None,
                gap_start: None,
                detail: String::new(),
            }),
        }
    }

    #[test]
    fn only_a_gone_writer_process_of_this_host_is_orphaned() {
        let alive = |pid: u32| pid == 4242;
        // (application name, orphaned)
        let cases = [
            ("krakenbook writer bot (pid 777 on box)", true),
            ("krakenbook writer bot (pid 4242 on box)", false),
            ("krakenbook writer bot (pid 777 on other)", false),
            ("krakenbook writer a (b) (pid 777 on box)", true),
            ("krakenbook writer bot (pid 777 on bo", false),
            ("krakenbook writer bot", false),
            ("psql", false),
            ("krakenbook writer bot (pid x on box)", false),
        ];
        for (app, orphaned) in cases {
            assert_eq!(orphaned_writer(app, "box", alive), orphaned, "{app}");
        }
    }

    #[test]
    fn batches_out_of_order_or_out_of_range_are_refused() {
        assert!(validate(&[event(1), event(2), event(5)]).is_ok());
        for bad in [
            vec![event(2), event(1)],
            vec![event(3), event(3)],
            vec![event(1), event(u64::MAX)],
        ] {
            assert!(
                matches!(validate(&bad), Err(StoreError::InvalidBatch(_))),
                "{:?}",
                bad.iter().map(|r| r.seq).collect::<Vec<_>>()
            );
        }
    }
}
