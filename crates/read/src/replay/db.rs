//! `krakenbook replay --verify` over the database: every stored copy of every book message checked
//! against the others ([`super::copies`] decides; this file reads), over the whole database or a
//! range, streaming.
//!
//! How it reads (schema version 6), per collector: its record in windows of seqs, `(after,
//! until]`, each in one round trip that also reads the next window's rows:
//! - `krakenbook_book` by `collector_id` and row `seq` through its block-range index (no order
//!   asked of the server); every row is expanded in Rust into its copies (its own and those packed
//!   in `dups`), each at its own seq, and held until its window is fed: a copy's seq lies after
//!   its row's (within [`DUP_SEQ_REACH`]), so it is in the row's window or a later one. A window's
//!   query reads every page range of the index not yet summarized (written since the chunk's last
//!   vacuum: a whole fresh chunk) whatever its seqs, so windows are few and large (about
//!   [`SPAN_BYTES`] or [`SPAN_ROWS`]), a range's first window sized from the range's rows, and
//!   the rows before a range whose copies reach into it come in the first window's scan;
//! - `krakenbook_other` by `(collector, seq)`;
//! - `kraken_book_states` by seq and a window of Kraken time (the updates of this window and the
//!   one before: a state follows its update, perhaps in the next window); `kraken_feed_events` by
//!   `(collector, seq)`.
//!
//! The copies, frames, states and events of a window are fed to the verifier in seq order: each
//! connection's stream in the order it was received. The verifier runs on a thread of its own,
//! handed one window at a time through a channel of one, while this task reads the next. Levels are decoded from dec64 in Rust (no
//! numeric parsing in the server); a row without levels from its raw frame with the project's
//! decoder. Everything is read in one `REPEATABLE READ` read-only transaction: one consistent view,
//! even while a collector writes. Memory holds at most four windows (read, queued, being verified,
//! and the next one's rows read with this one's states; their size in seqs adapts so that each
//! holds about [`SPAN_BYTES`]), the rows whose later copies are still to come, and the books of the
//! connections still open ([`connection_ends`]), whatever the size of the tables.
//!
//! A range (`--from`/`--to`, on Kraken's clock like `book --at` and exports) verifies the book
//! messages and states whose timestamp falls in it. Each stream (connection and symbol) is replayed
//! from where its book was last known before the range: its latest snapshot copy or book state on
//! that connection, the latest subscription ack and instrument list of the connection fed first,
//! so the first messages of the range verify like the rest; what comes before the range builds the
//! books and is not reported.
//!
//! What must hold: every copy of a row in the scope is fed once, at its own seq, or reported (a
//! copy whose seq comes before records of its connection already fed, which the writer never
//! stores); rows of collector id 0 (the original tool's rows, no received order) and rows still in
//! the legacy tables are counted, not verified.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, GenericClient, IsolationLevel, Row, Statement, Transaction};

use super::copies::{
    BookRow, CopyOf, CopyVerifier, EventRow, OtherRow, StateRow, StoredDecimal, StoredFrame,
};
use super::engine::ReplayReport;
use crate::readback::ReadbackError;
use crate::store::StoreError;
use crate::store::book_rows::{DUP_SEQ_REACH, unpack_dup};
use crate::time::Timestamp;

/// Seqs in the first window of a record (later windows grow or shrink to hold about
/// [`SPAN_BYTES`]).
pub const FIRST_WINDOW: i64 = 8192;

/// Most rows a window aims to hold.
pub const SPAN_ROWS: usize = 250_000;

/// Bytes of levels and frames a window aims to hold: memory stays bounded when the record holds
/// deep snapshots (a whole market resubscribed at depth 1000). Large, because a window's query
/// may cost a scan of the whole chunk: the block-range index lists every page range written since
/// the chunk was last vacuumed (not yet summarized) as a match for any seq.
pub const SPAN_BYTES: usize = 32 << 20;

/// The most a window grows or shrinks from one to the next.
const RESIZE: i64 = 16;

/// What to verify.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbScope {
    /// Book messages and states from this Kraken timestamp on (all when `None`).
    pub from: Option<Timestamp>,
    /// Before this one (exclusive; all when `None`).
    pub to: Option<Timestamp>,
    /// Only these symbols (all when empty).
    pub symbols: Vec<String>,
    /// Only this collector's record (all when `None`).
    pub collector: Option<String>,
}

impl DbScope {
    fn has_range(&self) -> bool {
        self.from.is_some() || self.to.is_some()
    }

    fn contains(&self, t: Timestamp) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|to| t < to)
    }
}

/// How far a verification has come: `done` of `total` seqs of the collectors' records to read,
/// and the messages checked so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Seqs read.
    pub done: u64,
    /// Seqs to read.
    pub total: u64,
    /// Copies and frames checked.
    pub messages: u64,
}

/// Verifies every stored copy of the book messages in `scope` against the others, calling
/// `progress` after every window read.
pub async fn verify_database(
    client: &mut Client,
    scope: &DbScope,
    mut progress: impl FnMut(Progress),
) -> Result<ReplayReport, ReadbackError> {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass('krakenbook_book')::text", &[])
        .await
        .map_err(StoreError::db("looking for the book table"))?
        .get(0);
    if exists.is_none() {
        return Ok(ReplayReport::default());
    }
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(StoreError::db("starting a read-only transaction"))?;
    // A plan made for the window's own bounds, every time: a generic plan over the hypertables
    // reads whole chunks.
    tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
        .await
        .map_err(StoreError::db("setting the plan mode"))?;
    let mut plans = Vec::new();
    for (name, id) in collectors(&tx, scope.collector.as_deref()).await? {
        if let Some(p) = plan(&tx, name, id, scope).await? {
            plans.push(p);
        }
    }
    let (unordered, legacy) = unverified_rows(&tx, scope).await?;
    let mut at = Progress {
        total: plans.iter().map(Plan::span).sum(),
        ..Progress::default()
    };
    progress(at);
    let statements = Statements::prepare(&tx).await?;
    // The checks run on a thread of their own while this task reads the next window: reading and
    // verifying overlap.
    let (jobs, mut queue) = tokio::sync::mpsc::channel::<Job>(1);
    let symbols = scope.symbols.clone();
    let worker_scope = scope.clone();
    let worker = tokio::task::spawn_blocking(move || {
        let mut verifier = CopyVerifier::new(&symbols);
        while let Some(job) = queue.blocking_recv() {
            job.run(&mut verifier, &worker_scope);
        }
        verifier
    });
    let read = async {
        for plan in &plans {
            send(&jobs, Job::Begin(plan.collector.clone())).await;
            let base = at.done;
            read_collector(&tx, &statements, plan, scope, &jobs, |seq, messages| {
                at.done = base + (seq - plan.lo + 1).clamp(0, plan.hi - plan.lo + 1) as u64;
                at.messages += messages;
                progress(at);
            })
            .await?;
            at.done = base + plan.span();
        }
        Ok::<_, ReadbackError>(())
    };
    let read = read.await;
    drop(jobs);
    let verifier = match worker.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("the verification's thread was cancelled: {e}"),
    };
    read?;
    tx.rollback()
        .await
        .map_err(StoreError::db("ending the read-only transaction"))?;
    progress(at);
    let mut report = verifier.finish();
    report.unordered_rows = unordered;
    report.legacy_rows = legacy;
    Ok(report)
}

/// Hands a job to the verifying thread (which stops only when the jobs end, or by a panic that
/// the caller resumes when it joins it).
async fn send(jobs: &tokio::sync::mpsc::Sender<Job>, job: Job) {
    let _ = jobs.send(job).await;
}

/// What the verifying thread does, in the order read.
enum Job {
    /// Another collector's record starts.
    Begin(String),
    /// Frames before the first window that build the books.
    Warm(Vec<OtherRow>),
    /// One window's records.
    Window(Batch),
}

/// One window's records, in what order they are fed decided by the reading side.
struct Batch {
    /// The book rows' copies of the window, by seq.
    copies: Vec<(Arc<BookRow>, CopyOf)>,
    other: Vec<OtherRow>,
    states: Vec<StateRow>,
    events: Vec<(EventRow, Timestamp)>,
    /// Copies whose seq comes before records of their connection already fed, and that seq.
    late: Vec<(Arc<BookRow>, CopyOf)>,
    fed_before: i64,
    /// Connections over once the window is fed.
    ended: Vec<i64>,
}

impl Job {
    fn run(self, verifier: &mut CopyVerifier, scope: &DbScope) {
        match self {
            Job::Begin(collector) => verifier.begin_collector(&collector),
            Job::Warm(frames) => verifier.warm(|w| {
                for m in &frames {
                    w.other(m, m.decode().as_ref(), false);
                }
            }),
            Job::Window(b) => {
                for (row, copy) in &b.late {
                    if scope.contains(row.timestamp) {
                        verifier.copy_out_of_order(row, copy, b.fed_before);
                    }
                }
                feed(verifier, scope, &b.copies, &b.other, &b.states, &b.events);
                for conn in b.ended {
                    verifier.end_connection(conn);
                }
            }
        }
    }
}

/// Where the connections of `collector` that are still open at `seq` or later end: their last
/// frame's seq (heartbeats included), by seq. A book state follows its frame with nothing but
/// events between, so once a message after a connection's last frame is read, nothing of the
/// connection remains and its books can go: memory stays flat however many connections a record
/// holds. Read from `krakenbook_connections` (none when the table is not there), in the
/// verification's transaction (a live collector moves them on).
pub async fn connection_ends(
    client: &impl GenericClient,
    collector: &str,
    seq: i64,
) -> Result<Vec<(i64, i64)>, ReadbackError> {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass('krakenbook_connections')::text", &[])
        .await
        .map_err(StoreError::db("looking for the connections table"))?
        .get(0);
    if exists.is_none() {
        return Ok(Vec::new());
    }
    Ok(client
        .query(
            "SELECT last_seq, conn_id FROM krakenbook_connections
              WHERE collector = $1 AND last_seq >= $2 ORDER BY last_seq",
            &[&collector, &seq],
        )
        .await
        .map_err(StoreError::db("reading where the connections end"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Far enough back and ahead for any recording (PostgreSQL's timestamps go further than ours).
const EARLIEST: Timestamp = Timestamp::from_unix_nanos(-2_208_988_800_000_000_000); // 1900
const LATEST: Timestamp = Timestamp::from_unix_nanos(7_258_118_400_000_000_000); // 2200

fn bounds(scope: &DbScope) -> (Timestamp, Timestamp) {
    (scope.from.unwrap_or(EARLIEST), scope.to.unwrap_or(LATEST))
}

/// The collectors with rows, by name: those of the dictionary (their id; 0 is the original tool's
/// rows, which have no received order) and those with frames in `krakenbook_other` only (one
/// probe of its `(collector, seq)` index per collector).
async fn collectors(
    tx: &Transaction<'_>,
    only: Option<&str>,
) -> Result<BTreeMap<String, Option<i16>>, ReadbackError> {
    let mut out = BTreeMap::new();
    for r in tx
        .query(
            "SELECT name, id FROM krakenbook_collectors
              WHERE id <> 0 AND ($1::text IS NULL OR name = $1)",
            &[&only],
        )
        .await
        .map_err(StoreError::db("listing the collectors"))?
    {
        out.insert(r.get(0), Some(r.get(1)));
    }
    let others = tx
        .query(
            "WITH RECURSIVE c(collector) AS (
                (SELECT collector FROM krakenbook_other
                  WHERE collector IS NOT NULL AND ($1::text IS NULL OR collector = $1)
                  ORDER BY collector LIMIT 1)
                UNION ALL
                SELECT (SELECT o.collector FROM krakenbook_other o
                         WHERE o.collector > c.collector AND $1::text IS NULL
                         ORDER BY o.collector LIMIT 1)
                  FROM c WHERE c.collector IS NOT NULL)
             SELECT collector FROM c WHERE collector IS NOT NULL",
            &[&only],
        )
        .await
        .map_err(StoreError::db("listing the collectors"))?;
    for r in others {
        out.entry(r.get(0)).or_insert(None);
    }
    Ok(out)
}

/// Rows in the scope that are not verified: the original tool's (no collector, no received
/// order) and those still in the legacy tables.
async fn unverified_rows(
    tx: &Transaction<'_>,
    scope: &DbScope,
) -> Result<(u64, u64), ReadbackError> {
    let (from, to) = bounds(scope);
    let unordered: i64 = if scope.collector.is_none() {
        tx.query_one(
            "SELECT (SELECT count(*) FROM krakenbook_other
                      WHERE collector IS NULL AND \"timestamp\" >= $1 AND \"timestamp\" < $2)
                  + (SELECT count(*) FROM krakenbook_book
                      WHERE collector_id = 0 AND \"timestamp\" >= $1 AND \"timestamp\" < $2)",
            &[&from, &to],
        )
        .await
        .map_err(StoreError::db("counting rows without a collector"))?
        .get(0)
    } else {
        0
    };
    let legacy: Option<String> = tx
        .query_one(
            "SELECT to_regclass('krakenbook_legacy_messages')::text",
            &[],
        )
        .await
        .map_err(StoreError::db("looking for the legacy tables"))?
        .get(0);
    let legacy: i64 = match legacy {
        Some(_) => tx
            .query_one(
                "SELECT count(*) FROM krakenbook_legacy_messages
                  WHERE ($1::text IS NULL OR collector = $1)
                    AND \"timestamp\" >= $2 AND \"timestamp\" < $3",
                &[&scope.collector, &from, &to],
            )
            .await
            .map_err(StoreError::db("counting the legacy rows"))?
            .get(0),
        None => 0,
    };
    Ok((unordered.max(0) as u64, legacy.max(0) as u64))
}

/// The seqs of one collector's record to read, and what the replay must know first.
#[derive(Debug)]
struct Plan {
    collector: String,
    /// Its id in `krakenbook_book` (`None`: it has frames in `krakenbook_other` only).
    collector_id: Option<i16>,
    /// First seq to read.
    lo: i64,
    /// Last seq to read.
    hi: i64,
    /// Whether rows before `lo` may have copies at `lo` or later (a range).
    head: bool,
    /// Frames before `lo` that the replay starts from: each connection's latest subscription
    /// acks and instrument lists, in seq order.
    warm: Vec<OtherRow>,
    /// The Kraken times of the book states the replay starts from (where the first window looks
    /// for them).
    state_times: Vec<Timestamp>,
    /// Seqs in the first window: [`FIRST_WINDOW`], or for a range as many as the range's book
    /// rows say fit the window's budgets (its first query may cost a scan of the chunk: one
    /// window instead of a few small ones).
    first_window: i64,
}

impl Plan {
    fn span(&self) -> u64 {
        (self.hi - self.lo + 1).max(0) as u64
    }
}

/// The first and last seq of a collector's record: from the small tables (connections,
/// checkpoint, frames stored whole, events), widened by what the book table holds beyond them
/// (one probe of its block-range index each way).
async fn record_bounds(
    tx: &Transaction<'_>,
    collector: &str,
    id: Option<i16>,
) -> Result<Option<(i64, i64)>, ReadbackError> {
    let r = tx
        .query_one(
            "SELECT least((SELECT min(first_seq) FROM krakenbook_connections WHERE collector = $1),
                          (SELECT min(seq) FROM krakenbook_other WHERE collector = $1)),
                    greatest((SELECT seq FROM krakenbook_checkpoints WHERE collector = $1),
                             (SELECT max(last_seq) FROM krakenbook_connections WHERE collector = $1),
                             (SELECT max(seq) FROM krakenbook_other WHERE collector = $1),
                             (SELECT max(seq) FROM kraken_feed_events WHERE collector = $1))",
            &[&collector],
        )
        .await
        .map_err(StoreError::db("reading a collector's seqs"))?;
    let (mut first, mut last): (Option<i64>, Option<i64>) = (r.get(0), r.get(1));
    let Some(id) = id else {
        return Ok(first.zip(last));
    };
    let probe = |sql: &'static str, seq: i64| async move {
        tx.query_one(sql, &[&id, &seq])
            .await
            .map_err(StoreError::db("reading a collector's seqs"))
            .map(|r| r.get::<_, Option<i64>>(0))
    };
    match (first, last) {
        (Some(f), Some(l)) => {
            let below = probe(
                "SELECT min(seq) FROM krakenbook_book WHERE collector_id = $1 AND seq < $2",
                f,
            )
            .await?;
            let above = probe(
                "SELECT max(seq) FROM krakenbook_book WHERE collector_id = $1 AND seq > $2",
                l,
            )
            .await?;
            first = Some(below.map_or(f, |b| b.min(f)));
            last = Some(above.map_or(l, |a| a.max(l)));
        }
        _ => {
            // Nothing but book rows (written by hand): read them all once.
            let r = tx
                .query_one(
                    "SELECT min(seq), max(seq) FROM krakenbook_book WHERE collector_id = $1",
                    &[&id],
                )
                .await
                .map_err(StoreError::db("reading a collector's seqs"))?;
            let (f, l): (Option<i64>, Option<i64>) = (r.get(0), r.get(1));
            first = first.into_iter().chain(f).min();
            last = last.into_iter().chain(l).max();
        }
    }
    Ok(first.zip(last))
}

async fn plan(
    tx: &Transaction<'_>,
    collector: String,
    id: Option<i16>,
    scope: &DbScope,
) -> Result<Option<Plan>, ReadbackError> {
    let Some((first, last)) = record_bounds(tx, &collector, id).await? else {
        return Ok(None);
    };
    let mut plan = Plan {
        collector,
        collector_id: id,
        lo: first,
        hi: last,
        head: false,
        warm: Vec::new(),
        state_times: Vec::new(),
        first_window: FIRST_WINDOW,
    };
    if !scope.has_range() {
        return Ok(Some(plan));
    }
    let (from, to) = bounds(scope);
    // The seqs of the range's book messages (every copy) and states, per symbol.
    let mut symbols: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    // The range's book rows and the bytes they hold in memory (about).
    let mut density = (0u128, 0u128);
    let mut add = |s: Option<String>, a: Option<i64>, b: Option<i64>| {
        if let (Some(s), Some(a), Some(b)) = (s, a, b) {
            let e = symbols.entry(s).or_insert((a, b));
            *e = (e.0.min(a), e.1.max(b));
        }
    };
    if let Some(id) = id {
        for r in tx
            .query(
                "SELECT symbol, min(seq),
                        max(seq + coalesce((SELECT max((d << 16) >> 42) FROM unnest(CASE WHEN dup IS NOT NULL THEN array_prepend(dup, coalesce(dups, '{}'::bigint[])) END) d), 0)),
                        count(*),
                        sum(16 * coalesce(cardinality(levels), 0) + coalesce(octet_length(raw::text), 0)
                            + 8 * coalesce(cardinality(dups) + 1, 0))::bigint
                   FROM krakenbook_book
                  WHERE collector_id = $1 AND \"timestamp\" >= $2 AND \"timestamp\" < $3
                    AND (cardinality($4::text[]) = 0 OR symbol = ANY($4))
                  GROUP BY symbol",
                &[&id, &from, &to, &scope.symbols],
            )
            .await
            .map_err(StoreError::db("reading what the range holds"))?
        {
            add(r.get(0), r.get(1), r.get(2));
            let (count, bytes): (i64, Option<i64>) = (r.get(3), r.get(4));
            density.0 += count.max(0) as u128;
            density.1 += (128 * count.max(0) + bytes.unwrap_or(0).max(0)) as u128;
        }
    }
    for r in tx
        .query(
            "SELECT symbol, min(seq), max(seq) FROM krakenbook_other
              WHERE collector = $1 AND \"timestamp\" >= $2 AND \"timestamp\" < $3
                AND channel = 'book' AND message_type IN ('snapshot', 'update')
                AND (cardinality($4::text[]) = 0 OR symbol = ANY($4))
              GROUP BY symbol",
            &[&plan.collector, &from, &to, &scope.symbols],
        )
        .await
        .map_err(StoreError::db("reading what the range holds"))?
    {
        add(r.get(0), r.get(1), r.get(2));
    }
    for r in tx
        .query(
            "SELECT symbol, min(seq), max(seq) FROM kraken_book_states
              WHERE collector = $1 AND \"timestamp\" >= $2 AND \"timestamp\" < $3
                AND (cardinality($4::text[]) = 0 OR symbol = ANY($4))
              GROUP BY symbol",
            &[&plan.collector, &from, &to, &scope.symbols],
        )
        .await
        .map_err(StoreError::db("reading the range's book states"))?
    {
        add(r.get(0), r.get(1), r.get(2));
    }
    let (Some(lo), Some(hi)) = (
        symbols.values().map(|s| s.0).min(),
        symbols.values().map(|s| s.1).max(),
    ) else {
        return Ok(None);
    };
    plan.hi = hi;
    let span = (hi - lo).max(0) as u128 + 1;
    let (rows, bytes) = density;
    let fits = |budget: usize, used: u128| span * budget as u128 / used.max(1);
    plan.first_window = fits(SPAN_BYTES, bytes)
        .min(fits(SPAN_ROWS, rows))
        .clamp(FIRST_WINDOW as u128, 1 << 24) as i64;
    if scope.from.is_none() {
        // From the record's start: the subscriptions are read like everything else.
        return Ok(Some(plan));
    }
    plan.lo = lo;
    plan.head = true;
    // Each stream (connection, symbol) of the range starts from its latest snapshot copy or book
    // state before the range.
    let conns: Vec<(i64, i64)> = tx
        .query(
            "SELECT conn_id, first_seq FROM krakenbook_connections
              WHERE collector = $1 AND first_seq <= $2 AND last_seq >= $3 ORDER BY conn_id",
            &[&plan.collector, &hi, &lo],
        )
        .await
        .map_err(StoreError::db("reading the range's connections"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for &(conn, _) in &conns {
        for symbol in symbols.keys() {
            let snapshot = match id {
                Some(id) => snapshot_before(tx, id, conn, symbol, from).await?,
                None => None,
            };
            let state = state_before(tx, &plan.collector, conn, symbol, from).await?;
            let start = match (snapshot, state) {
                (Some(a), Some(b)) if b.0 > a.0 => Some((b, true)),
                (Some(a), _) => Some((a, false)),
                (None, Some(b)) => Some((b, true)),
                (None, None) => None,
            };
            if let Some(((seq, t), is_state)) = start {
                plan.lo = plan.lo.min(seq);
                if is_state {
                    plan.state_times.push(t);
                }
            }
        }
    }
    // What each connection's books knew at `lo`: its latest subscription acks and instrument
    // lists before it.
    let names: Vec<&str> = symbols.keys().map(String::as_str).collect();
    for &(conn, first_seq) in &conns {
        if first_seq >= plan.lo {
            continue;
        }
        for r in tx
            .query(
                &format!(
                    "SELECT * FROM (SELECT DISTINCT ON (symbol) {OTHER_COLUMNS} FROM krakenbook_other
                      WHERE collector = $1 AND conn_id = $2 AND seq >= $3 AND seq < $4
                        AND channel = 'book' AND message_type IN ('subscribe', 'unsubscribe')
                        AND symbol = ANY($5)
                      ORDER BY symbol, seq DESC) acks
                     UNION ALL
                    (SELECT {OTHER_COLUMNS} FROM krakenbook_other
                      WHERE collector = $1 AND conn_id = $2 AND seq >= $3 AND seq < $4
                        AND channel = 'instrument'
                      ORDER BY seq DESC LIMIT 4)"
                ),
                &[&plan.collector, &conn, &first_seq, &plan.lo, &names],
            )
            .await
            .map_err(StoreError::db("reading the subscriptions before the range"))?
        {
            plan.warm.push(other_row(&r));
        }
    }
    plan.warm.sort_by_key(|m| m.seq);
    Ok(Some(plan))
}

/// The latest snapshot of `symbol` that connection `conn` received before `at` (any copy of it):
/// the copy's seq and Kraken time.
async fn snapshot_before(
    tx: &Transaction<'_>,
    id: i16,
    conn: i64,
    symbol: &str,
    at: Timestamp,
) -> Result<Option<(i64, Timestamp)>, ReadbackError> {
    let row = tx
        .query_opt(
            "SELECT seq, conn_id, (CASE WHEN dup IS NOT NULL THEN array_prepend(dup, coalesce(dups, '{}'::bigint[])) END), \"timestamp\" FROM krakenbook_book
              WHERE symbol = $1 AND kind = 's' AND \"timestamp\" < $2 AND collector_id = $3
                AND (conn_id = $4
                     OR EXISTS (SELECT 1 FROM unnest(CASE WHEN dup IS NOT NULL THEN array_prepend(dup, coalesce(dups, '{}'::bigint[])) END) d WHERE conn_id + (d >> 48) = $4))
              ORDER BY \"timestamp\" DESC, seq DESC LIMIT 1",
            &[&symbol, &at, &id, &conn],
        )
        .await
        .map_err(StoreError::db("finding where a stream's book starts"))?;
    Ok(row.and_then(|r| {
        let (seq, first_conn): (i64, i64) = (r.get(0), r.get(1));
        let t: Timestamp = r.get(3);
        if first_conn == conn {
            return Some((seq, t));
        }
        r.get::<_, Option<Vec<Option<i64>>>>(2)?
            .into_iter()
            .flatten()
            .map(unpack_dup)
            .find(|&(c, ..)| first_conn.saturating_add(c) == conn)
            .map(|(_, s, ..)| (seq.saturating_add(s), t))
    }))
}

/// The latest book state of `symbol` on connection `conn` before `at`: its seq and Kraken time.
async fn state_before(
    tx: &Transaction<'_>,
    collector: &str,
    conn: i64,
    symbol: &str,
    at: Timestamp,
) -> Result<Option<(i64, Timestamp)>, ReadbackError> {
    Ok(tx
        .query_opt(
            "SELECT seq, \"timestamp\" FROM kraken_book_states
              WHERE symbol = $1 AND \"timestamp\" < $2 AND collector = $3 AND conn_id = $4
              ORDER BY \"timestamp\" DESC, seq DESC LIMIT 1",
            &[&symbol, &at, &collector, &conn],
        )
        .await
        .map_err(StoreError::db("finding where a stream's book starts"))?
        .map(|r| (r.get(0), r.get(1))))
}

const BOOK_COLUMNS: &str = "seq, conn_id, \"timestamp\", received_at, checksum, n_bids, kind, \
    checksum_ok, symbol, levels, raw::text, (CASE WHEN dup IS NOT NULL THEN array_prepend(dup, coalesce(dups, '{}'::bigint[])) END)";

/// A window's book rows (their first copies' seqs in `($5, $3]`), unordered: the copies are
/// ordered in Rust; and those in `($2, $5]` with further copies (rows before a range whose copies
/// may reach into it; `$2 = $5` otherwise).
const BOOK: &str = "SELECT seq, conn_id, \"timestamp\", received_at, checksum, n_bids, kind, \
    checksum_ok, symbol, levels, raw::text, (CASE WHEN dup IS NOT NULL THEN array_prepend(dup, coalesce(dups, '{}'::bigint[])) END) \
    FROM krakenbook_book \
    WHERE collector_id = $1 AND seq > $2 AND seq <= $3 AND (seq > $5 OR dup IS NOT NULL) \
      AND (cardinality($4::text[]) = 0 OR symbol = ANY($4))";

const OTHER_COLUMNS: &str = "seq, conn_id, \"timestamp\", received_at, channel, message_type, \
    symbol, checksum, checksum_ok, raw_message::text, raw_text, raw_bytes, best_bid_price, \
    best_bid_qty, best_ask_price, best_ask_qty";

const OTHER: &str = "SELECT seq, conn_id, \"timestamp\", received_at, channel, message_type, \
    symbol, checksum, checksum_ok, raw_message::text, raw_text, raw_bytes, best_bid_price, \
    best_bid_qty, best_ask_price, best_ask_qty \
    FROM krakenbook_other \
    WHERE collector = $1 AND seq > $2 AND seq <= $3 \
      AND (cardinality($4::text[]) = 0 OR symbol IS NULL OR symbol = ANY($4)) \
    ORDER BY seq";

/// The book states of a window: there is no index on their seqs, so a window of Kraken time
/// ($4, $5) finds them through the time index.
const STATES: &str = "SELECT seq, conn_id, symbol, \"timestamp\", depth, price_precision, \
    qty_precision, checksum, bids::text, asks::text \
    FROM kraken_book_states \
    WHERE collector = $1 AND seq > $2 AND seq <= $3 AND \"timestamp\" >= $4 AND \"timestamp\" <= $5 \
      AND (cardinality($6::text[]) = 0 OR symbol = ANY($6)) \
    ORDER BY seq";

const EVENTS: &str = "SELECT seq, conn_id, event, symbol, \"time\" FROM kraken_feed_events \
    WHERE collector = $1 AND seq > $2 AND seq <= $3 \
      AND event IN ('stored_raw', 'unasked_symbol', 'journal_damage', 'not_stored') \
    ORDER BY seq";

/// The window queries, prepared once.
struct Statements {
    book: Statement,
    other: Statement,
    states: Statement,
    events: Statement,
}

impl Statements {
    async fn prepare(tx: &Transaction<'_>) -> Result<Statements, ReadbackError> {
        let prepare = |sql: &'static str| async move {
            tx.prepare(sql)
                .await
                .map_err(StoreError::db("preparing the verification's queries"))
        };
        debug_assert!(BOOK.contains(BOOK_COLUMNS));
        debug_assert!(OTHER.contains(OTHER_COLUMNS));
        Ok(Statements {
            book: prepare(BOOK).await?,
            other: prepare(OTHER).await?,
            states: prepare(STATES).await?,
            events: prepare(EVENTS).await?,
        })
    }
}

/// A stored `numeric`, kept even when it is not a [`crate::book::Decimal`] (the comparison
/// reports it).
struct Numeric(StoredDecimal);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> Result<Numeric, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Numeric(
            crate::store::types::read_numeric(raw).map_err(|e| e.to_string()),
        ))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

fn numeric(r: &Row, i: usize) -> Option<StoredDecimal> {
    r.get::<_, Option<Numeric>>(i).map(|n| n.0)
}

fn book_row(r: &Row) -> BookRow {
    BookRow {
        seq: r.get(0),
        conn_id: r.get(1),
        timestamp: r.get(2),
        received_at: r.get(3),
        checksum: r.get(4),
        n_bids: r.get(5),
        kind: r.get(6),
        checksum_ok: r.get(7),
        symbol: r.get(8),
        levels: r.get(9),
        raw: r.get(10),
        dups: r.get::<_, Option<Vec<Option<i64>>>>(11).unwrap_or_default(),
    }
}

fn other_row(r: &Row) -> OtherRow {
    let frame = match (
        r.get::<_, Option<String>>(9),
        r.get::<_, Option<String>>(10),
        r.get::<_, Option<Vec<u8>>>(11),
    ) {
        (Some(j), _, _) => StoredFrame::Json(j),
        (None, Some(t), _) => StoredFrame::Text(t),
        (None, None, Some(b)) => StoredFrame::Bytes(b),
        (None, None, None) => StoredFrame::Missing,
    };
    OtherRow {
        seq: r.get(0),
        conn_id: r.get(1),
        timestamp: r.get(2),
        received_at: r.get(3),
        channel: r.get(4),
        message_type: r.get(5),
        symbol: r.get(6),
        checksum: r.get(7),
        checksum_ok: r.get(8),
        frame,
        best_bid: [numeric(r, 12), numeric(r, 13)],
        best_ask: [numeric(r, 14), numeric(r, 15)],
    }
}

fn state_row(r: &Row) -> StateRow {
    StateRow {
        seq: r.get(0),
        conn_id: r.get(1),
        symbol: r.get(2),
        timestamp: r.get(3),
        depth: r.get(4),
        price_precision: r.get(5),
        qty_precision: r.get(6),
        checksum: r.get(7),
        bids: r.get(8),
        asks: r.get(9),
    }
}

/// An event and its time (for the range).
fn event_row(r: &Row) -> (EventRow, Timestamp) {
    (
        EventRow {
            seq: r.get(0),
            conn_id: r.get(1),
            event: r.get(2),
            symbol: r.get(3),
        },
        r.get(4),
    )
}

/// A Kraken-time window, widened by each time added.
fn widen(w: &mut Option<(Timestamp, Timestamp)>, t: Timestamp) {
    *w = Some(match *w {
        Some((a, b)) => (a.min(t), b.max(t)),
        None => (t, t),
    });
}

/// The copies read and not fed yet, by seq (then the order they were read in).
#[derive(Debug, Default)]
struct Pending {
    copies: BTreeMap<(i64, u64), (Arc<BookRow>, CopyOf)>,
    read: u64,
}

impl Pending {
    /// Takes a row's copies with seqs in `[from, to]`; a copy at or before `fed` (its place in
    /// its stream is behind) goes to `late`.
    fn add(
        &mut self,
        row: BookRow,
        (from, to): (i64, i64),
        fed: i64,
        late: &mut Vec<(Arc<BookRow>, CopyOf)>,
    ) {
        let row = Arc::new(row);
        for copy in row.copies() {
            if copy.seq < from || copy.seq > to {
                continue;
            }
            if copy.seq <= fed {
                late.push((row.clone(), copy));
                continue;
            }
            self.read += 1;
            self.copies
                .insert((copy.seq, self.read), (row.clone(), copy));
        }
    }

    /// Removes and returns the copies up to `seq`, in order.
    fn through(&mut self, seq: i64) -> Vec<(Arc<BookRow>, CopyOf)> {
        let rest = self.copies.split_off(&(seq.saturating_add(1), 0));
        std::mem::replace(&mut self.copies, rest)
            .into_values()
            .collect()
    }
}

/// One window's rows of `krakenbook_other`, and what its book rows weigh.
#[derive(Debug)]
struct Window {
    after: i64,
    until: i64,
    other: Vec<OtherRow>,
    rows: usize,
    bytes: usize,
}

/// Reads the book and other rows of `(after, until]` (and the book rows of `(head, after]` that
/// have further copies): the book rows are returned with the window of other rows.
async fn read_window(
    tx: &Transaction<'_>,
    st: &Statements,
    plan: &Plan,
    scope: &DbScope,
    (after, until): (i64, i64),
    head: Option<i64>,
) -> Result<(Window, Vec<BookRow>), ReadbackError> {
    let book = async {
        match plan.collector_id {
            Some(id) => tx
                .query(
                    &st.book,
                    &[&id, &head.unwrap_or(after), &until, &scope.symbols, &after],
                )
                .await
                .map(|rows| rows.iter().map(book_row).collect())
                .map_err(StoreError::db("reading book rows")),
            None => Ok(Vec::new()),
        }
    };
    let other = async {
        tx.query(
            &st.other,
            &[&plan.collector, &after, &until, &scope.symbols],
        )
        .await
        .map(|rows| rows.iter().map(other_row).collect::<Vec<_>>())
        .map_err(StoreError::db("reading frames stored whole"))
    };
    let (book, other): (Vec<BookRow>, Vec<OtherRow>) = futures_util::try_join!(book, other)?;
    let bytes = book.iter().map(BookRow::size).sum::<usize>()
        + other.iter().map(|m| 128 + m.frame.len()).sum::<usize>();
    Ok((
        Window {
            after,
            until,
            rows: book.len() + other.len(),
            other,
            bytes,
        },
        book,
    ))
}

/// The next window's size in seqs, from what the last one held: scaled towards [`SPAN_BYTES`] and
/// [`SPAN_ROWS`] (whichever it is nearer to), by at most [`RESIZE`] either way.
fn next_size(size: i64, w: &Window) -> i64 {
    // How full the window was, in millionths of the nearer budget.
    let ppm = |used: usize, budget: usize| (used as u128 * 1_000_000) / budget as u128;
    let fill = ppm(w.bytes, SPAN_BYTES).max(ppm(w.rows, SPAN_ROWS)).max(1);
    let scaled = (size.max(1) as u128 * 1_000_000 / fill).min(i64::MAX as u128) as i64;
    scaled
        .clamp(size / RESIZE, size.saturating_mul(RESIZE))
        .clamp(64, 1 << 24)
}

/// Reads one collector's record as `plan` says and hands it to the verifying thread window by
/// window (`jobs`), calling `progress(seq read up to, copies and frames handed)` after every
/// window.
async fn read_collector(
    tx: &Transaction<'_>,
    st: &Statements,
    plan: &Plan,
    scope: &DbScope,
    jobs: &tokio::sync::mpsc::Sender<Job>,
    mut progress: impl FnMut(i64, u64),
) -> Result<(), ReadbackError> {
    let reach = (plan.lo, plan.hi);
    let mut pending = Pending::default();
    let mut late = Vec::new();
    // Seqs up to here are fed.
    let mut fed = plan.lo.saturating_sub(1);
    if !plan.warm.is_empty() {
        send(jobs, Job::Warm(plan.warm.clone())).await;
    }
    let ends = connection_ends(tx, &plan.collector, plan.lo).await?;
    let mut ends = ends.iter().peekable();
    let mut size = plan.first_window;
    // The first window also reads the rows before it whose copies may reach into it (a range):
    // in the same scan.
    let head = plan.head.then(|| fed.saturating_sub(DUP_SEQ_REACH));
    let first = (fed, fed.saturating_add(size).min(plan.hi));
    let (window, rows) = read_window(tx, st, plan, scope, first, head).await?;
    for row in rows {
        pending.add(row, reach, fed, &mut late);
    }
    let mut next = Some(window);
    // The Kraken times of the updates fed in the window before (a book state follows its update,
    // perhaps in the next window); the first window looks for the states the replay starts from.
    let mut carry: Option<(Timestamp, Timestamp)> = None;
    for t in &plan.state_times {
        widen(&mut carry, *t);
    }
    while let Some(window) = next.take() {
        size = next_size(size, &window);
        let copies = pending.through(window.until);
        let mut updates = carry;
        carry = None;
        for (row, _) in &copies {
            if row.kind == b'u' as i8 {
                widen(&mut updates, row.timestamp);
                widen(&mut carry, row.timestamp);
            }
        }
        for m in &window.other {
            if m.channel == "book" && m.message_type == "update" {
                widen(&mut updates, m.timestamp);
                widen(&mut carry, m.timestamp);
            }
        }
        let side = read_side(tx, st, plan, scope, &window, updates);
        // The next window's rows come in the same round trip: copies of them may come before
        // this window's end.
        let (states, events) = if window.until < plan.hi {
            let bounds = (window.until, window.until.saturating_add(size).min(plan.hi));
            let ((states, events), (following, rows)) =
                futures_util::try_join!(side, read_window(tx, st, plan, scope, bounds, None))?;
            for row in rows {
                pending.add(row, reach, fed, &mut late);
            }
            next = Some(following);
            (states, events)
        } else {
            side.await?
        };
        let mut copies = copies;
        copies.extend(pending.through(window.until));
        copies.sort_by_key(|(_, c)| c.seq);
        let fed_now = (copies.len() + window.other.len()) as u64;
        let fed_before = fed;
        fed = window.until;
        // Connections whose last frame is before the window's end are over.
        let mut ended = Vec::new();
        while let Some(&&(last, conn)) = ends.peek()
            && last < window.until
        {
            ended.push(conn);
            ends.next();
        }
        send(
            jobs,
            Job::Window(Batch {
                copies,
                other: window.other,
                states,
                events,
                late: std::mem::take(&mut late),
                fed_before,
                ended,
            }),
        )
        .await;
        progress(fed, fed_now);
    }
    Ok(())
}

type Side = (Vec<StateRow>, Vec<(EventRow, Timestamp)>);

/// The book states and events of a window, in one round trip.
async fn read_side(
    tx: &Transaction<'_>,
    st: &Statements,
    plan: &Plan,
    scope: &DbScope,
    window: &Window,
    updates: Option<(Timestamp, Timestamp)>,
) -> Result<Side, ReadbackError> {
    let states = async {
        let Some((lo, hi)) = updates else {
            return Ok(Vec::new());
        };
        tx.query(
            &st.states,
            &[
                &plan.collector,
                &window.after,
                &window.until,
                &lo,
                &hi,
                &scope.symbols,
            ],
        )
        .await
        .map(|rows| rows.iter().map(state_row).collect())
        .map_err(StoreError::db("reading book states"))
    };
    let events = async {
        tx.query(&st.events, &[&plan.collector, &window.after, &window.until])
            .await
            .map(|rows| rows.iter().map(event_row).collect())
            .map_err(StoreError::db("reading feed events"))
    };
    Ok(futures_util::try_join!(states, events)?)
}

/// What is fed at one seq.
enum Item<'a> {
    Copy(&'a BookRow, &'a CopyOf),
    Other(&'a OtherRow, bool),
    State(&'a StateRow),
    Event(&'a EventRow, Timestamp),
}

/// Feeds a window's copies, frames, states and events to the verifier in seq order (a
/// `stored_raw` event goes with the frame of its seq); returns how many copies and frames.
fn feed(
    verifier: &mut CopyVerifier,
    scope: &DbScope,
    copies: &[(Arc<BookRow>, CopyOf)],
    other: &[OtherRow],
    states: &[StateRow],
    events: &[(EventRow, Timestamp)],
) -> u64 {
    let frames: HashMap<i64, usize> = other.iter().enumerate().map(|(i, m)| (m.seq, i)).collect();
    let mut stored_raw = vec![false; other.len()];
    let mut items: Vec<(i64, u8, Item<'_>)> =
        Vec::with_capacity(copies.len() + other.len() + states.len() + events.len());
    for (ev, time) in events {
        match frames.get(&ev.seq) {
            Some(&i) => stored_raw[i] |= ev.event == "stored_raw",
            None => items.push((ev.seq, 2, Item::Event(ev, *time))),
        }
    }
    for (row, copy) in copies {
        items.push((copy.seq, 0, Item::Copy(row, copy)));
    }
    for (m, raw) in other.iter().zip(stored_raw) {
        items.push((m.seq, 0, Item::Other(m, raw)));
    }
    for s in states {
        items.push((s.seq, 1, Item::State(s)));
    }
    // Stable: copies of one seq keep their order.
    items.sort_by_key(|(seq, order, _)| (*seq, *order));
    let fed = (copies.len() + other.len()) as u64;
    for (_, _, item) in items {
        match item {
            Item::Copy(row, copy) => {
                if scope.contains(row.timestamp) {
                    verifier.book_copy(row, copy);
                } else {
                    verifier.warm(|w| w.book_copy(row, copy));
                }
            }
            Item::Other(m, raw) => {
                let frame = m.decode();
                if scope.contains(m.timestamp) {
                    verifier.other(m, frame.as_ref(), raw);
                } else {
                    verifier.warm(|w| w.other(m, frame.as_ref(), raw));
                }
            }
            Item::State(s) => {
                if scope.contains(s.timestamp) {
                    verifier.state(s);
                } else {
                    verifier.warm(|w| w.state(s));
                }
            }
            Item::Event(ev, time) => {
                if scope.contains(time) {
                    verifier.event(ev);
                } else {
                    verifier.warm(|w| w.event(ev));
                }
            }
        }
    }
    fed
}
