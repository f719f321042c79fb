//! The database writer: records in, rows committed exactly once.
//!
//! [`Writer::write_batch`] stores a batch of [`Record`]s in one transaction: it locks the
//! collector's checkpoint row, skips the records at or below the checkpoint, streams the message
//! rows with binary COPY while decoding (then the entry and event rows), moves the checkpoint to
//! the batch's last seq, and commits.
//!
//! What must always hold:
//! - exactly once: a record is committed with the checkpoint that covers it, in the same
//!   transaction, and every attempt first reads the checkpoint under a row lock. A batch whose
//!   commit outcome was unknown (the connection died during `COMMIT`) is retried, finds its records
//!   covered, and writes nothing twice; a second writer with the same collector name waits on the
//!   lock instead of writing the same rows;
//! - nothing dropped: retriable failures (see [`StoreError::is_retriable`]) are retried with
//!   exponential backoff on a new connection, for as long as the policy allows (by default
//!   forever); any other failure is returned with the batch's seq range, nothing of the batch
//!   committed;
//! - a batch's seqs are strictly increasing (the journal's order); anything else is refused.

use std::time::Duration;

use futures_util::SinkExt;
use tokio_postgres::{Client, Statement};

use super::StoreError;
use super::connect::DbTarget;
use super::rows::{COPY_ENTRIES, COPY_EVENTS, COPY_MESSAGES, COPY_STATES, RowCounts, RowEncoder};
use crate::record::Record;
use crate::time::Timestamp;

/// How much of a COPY stream is sent at a time.
const CHUNK: usize = 128 * 1024;

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
    /// The wait after failed attempt `attempt` (1-based), before jitter: the initial delay doubled
    /// per attempt, capped at the maximum.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }
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
}

impl WriterConfig {
    /// Defaults for collector `collector`: retry forever, 2 minutes per attempt.
    pub fn new(collector: impl Into<String>) -> WriterConfig {
        WriterConfig {
            collector: collector.into(),
            retry: RetryPolicy::default(),
            attempt_timeout: Duration::from_secs(120),
        }
    }
}

/// What one [`Writer::write_batch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// The batch's first seq.
    pub first_seq: u64,
    /// The batch's last seq.
    pub last_seq: u64,
    /// Records written now.
    pub written: u64,
    /// Records skipped because the checkpoint already covered them.
    pub skipped: u64,
    /// Rows written now.
    pub rows: RowCounts,
    /// Attempts it took (1: no retry).
    pub attempts: u32,
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
}

/// Writes records to TimescaleDB, exactly once (see the module doc).
#[derive(Debug)]
pub struct Writer {
    target: DbTarget,
    config: WriterConfig,
    conn: Option<Conn>,
    encoder: RowEncoder,
    stats: WriterStats,
}

struct Conn {
    client: Client,
    lock_checkpoint: Statement,
    update_checkpoint: Statement,
    copy_messages: Statement,
    copy_entries: Statement,
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
        }
    }

    /// A writer connected now: for commands that should fail fast when the database is not there.
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

    /// The seq of the last record committed for this collector (`None`: nothing yet): where a
    /// journal reader resumes. Retried like a batch.
    pub async fn checkpoint(&mut self) -> Result<Option<u64>, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                if self.conn.is_none() {
                    self.conn = Some(self.open().await?);
                }
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

    /// Stores `records` (strictly increasing seqs) in one transaction with the checkpoint; see the
    /// module doc. Records the checkpoint already covers are skipped.
    pub async fn write_batch(&mut self, records: &[Record]) -> Result<BatchReport, StoreError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(BatchReport::default());
        };
        let (first_seq, last_seq) = (first.seq, last.seq);
        validate(records)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let timeout = self.config.attempt_timeout;
            let result = match tokio::time::timeout(timeout, self.attempt(records)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout {
                    what: format!("writing records {first_seq}..={last_seq}"),
                    after: timeout,
                }),
            };
            match result {
                Ok(mut report) => {
                    report.first_seq = first_seq;
                    report.last_seq = last_seq;
                    report.attempts = attempt;
                    let s = &mut self.stats;
                    s.batches += 1;
                    s.records += report.written;
                    s.skipped += report.skipped;
                    s.rows += report.rows;
                    return Ok(report);
                }
                Err(e) => {
                    let what = format!("writing records {first_seq}..={last_seq}");
                    if let Err(e) = self.after_failure(e, attempt, &what).await {
                        return Err(StoreError::Batch {
                            first_seq,
                            last_seq,
                            attempts: attempt,
                            source: Box::new(e),
                        });
                    }
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

    async fn open(&mut self) -> Result<Conn, StoreError> {
        let mut app = format!("krakenbook writer {}", self.config.collector);
        // PostgreSQL keeps 63 bytes of application_name.
        while app.len() > 63 {
            app.pop();
        }
        let client = self.target.connect(&app).await?;
        let prepare = |sql: &'static str| {
            let client = &client;
            async move {
                client
                    .prepare(sql)
                    .await
                    .map_err(StoreError::db(format!("preparing {}", first_words(sql))))
            }
        };
        // Creates the collector's row if missing and locks it either way, returning its seq: a
        // second writer of the same collector waits here, then sees the first one's checkpoint.
        let lock_checkpoint = prepare(
            "INSERT INTO krakenbook_checkpoints (collector) VALUES ($1) \
             ON CONFLICT (collector) DO UPDATE SET collector = excluded.collector RETURNING seq",
        )
        .await?;
        let update_checkpoint = prepare(
            "UPDATE krakenbook_checkpoints SET seq = $1, updated_at = now() WHERE collector = $2",
        )
        .await?;
        let copy_messages = prepare(COPY_MESSAGES).await?;
        let copy_entries = prepare(COPY_ENTRIES).await?;
        let copy_events = prepare(COPY_EVENTS).await?;
        let copy_states = prepare(COPY_STATES).await?;
        let backend_pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(StoreError::db("reading the backend pid"))?
            .get(0);
        self.stats.connections += 1;
        tracing::debug!(database = %self.target.redacted(), backend_pid, "writer connected");
        Ok(Conn {
            client,
            lock_checkpoint,
            update_checkpoint,
            copy_messages,
            copy_entries,
            copy_events,
            copy_states,
            backend_pid,
        })
    }

    /// One attempt at a batch.
    async fn attempt(&mut self, records: &[Record]) -> Result<BatchReport, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(self.open().await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::InvalidBatch(
                "no connection after connecting".into(),
            ));
        };
        let collector = self.config.collector.as_str();
        let encoder = &mut self.encoder;
        let tx = conn
            .client
            .transaction()
            .await
            .map_err(StoreError::db("beginning a transaction"))?;
        let checkpoint: Option<i64> = tx
            .query_one(&conn.lock_checkpoint, &[&collector])
            .await
            .map_err(StoreError::db("locking the checkpoint"))?
            .get(0);
        let start = match checkpoint.and_then(|c| u64::try_from(c).ok()) {
            Some(c) => records.partition_point(|r| r.seq <= c),
            None => 0,
        };
        let mut report = BatchReport {
            skipped: start as u64,
            ..BatchReport::default()
        };
        let todo = &records[start..];
        let Some(last) = todo.last() else {
            // Everything is already committed (an earlier attempt's commit went through).
            tx.rollback()
                .await
                .map_err(StoreError::db("ending a transaction"))?;
            return Ok(report);
        };

        encoder.reset();
        let sink = tx
            .copy_in(&conn.copy_messages)
            .await
            .map_err(StoreError::db(
                "starting COPY into kraken_orderbook_messages",
            ))?;
        futures_util::pin_mut!(sink);
        let copy_err = StoreError::db("COPY into kraken_orderbook_messages");
        let mut result = Ok(());
        for record in todo {
            encoder.push(record)?;
            if encoder.messages_len() >= CHUNK {
                result = sink.feed(encoder.take_messages()).await;
                if result.is_err() {
                    break;
                }
            }
        }
        let streams = encoder.finish();
        let counts = encoder.counts();
        let copied = match result {
            Ok(()) => match sink.feed(streams.messages).await {
                Ok(()) => sink.as_mut().finish().await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
        .map_err(copy_err)?;
        expect_rows("kraken_orderbook_messages", copied, counts.messages)?;
        if counts.entries > 0 {
            let n = copy_all(
                &tx,
                &conn.copy_entries,
                streams.entries,
                "kraken_orderbook_entries",
            )
            .await?;
            expect_rows("kraken_orderbook_entries", n, counts.entries)?;
        }
        if counts.events > 0 {
            let n = copy_all(&tx, &conn.copy_events, streams.events, "kraken_feed_events").await?;
            expect_rows("kraken_feed_events", n, counts.events)?;
        }
        if counts.states > 0 {
            let n = copy_all(&tx, &conn.copy_states, streams.states, "kraken_book_states").await?;
            expect_rows("kraken_book_states", n, counts.states)?;
        }
        let last_seq = i64::try_from(last.seq)
            .map_err(|_| StoreError::InvalidBatch(format!("seq {} exceeds bigint", last.seq)))?;
        tx.execute(&conn.update_checkpoint, &[&last_seq, &collector])
            .await
            .map_err(StoreError::db("moving the checkpoint"))?;
        tx.commit().await.map_err(StoreError::db("committing"))?;
        report.written = todo.len() as u64;
        report.rows = counts;
        Ok(report)
    }
}

/// Sends a whole COPY stream in chunks and finishes it, returning the rows the server counted.
async fn copy_all(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &Statement,
    mut data: bytes::Bytes,
    table: &str,
) -> Result<u64, StoreError> {
    let sink = tx
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

/// A batch must be in the journal's order, and its numbers must fit PostgreSQL's `bigint`.
fn validate(records: &[Record]) -> Result<(), StoreError> {
    let max = i64::MAX as u64;
    for pair in records.windows(2) {
        if pair[1].seq <= pair[0].seq {
            return Err(StoreError::InvalidBatch(format!(
                "seqs must be strictly increasing, found {} after {}",
                pair[1].seq, pair[0].seq
            )));
        }
    }
    if let Some(r) = records
        .iter()
        .find(|r| r.seq > max || r.conn_id > max || r.conn_seq > max)
    {
        return Err(StoreError::InvalidBatch(format!(
            "record {} has a number beyond PostgreSQL's bigint",
            r.seq
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
    let noise = Timestamp::now().unix_nanos().unsigned_abs() % quarter;
    d + Duration::from_nanos(noise)
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
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
