//! `krakenbook replay --verify` over the database: every stored copy of every book message checked
//! against the others ([`super::copies`] decides; this file reads), over the whole database or a
//! range, streaming.
//!
//! How it reads, per collector: the messages in `seq` order through a portal over the
//! `(collector, seq)` index, [`BATCH`] rows at a time, in spans of at most [`SPAN_MESSAGES`] rows
//! or [`SPAN_BYTES`] of frames; for each span, in one round trip (which also asks for the next
//! span's messages), the entry rows, book states and feed events of its seqs: entries and states
//! through their `(symbol, timestamp)` and time indexes, in windows of Kraken time taken from the
//! span's decoded frames; events through their `(collector, seq)` key. Everything is read in one
//! `REPEATABLE READ` read-only transaction: one consistent view, even while a collector writes.
//! Memory holds two spans and the books of the connections still open ([`connection_ends`]),
//! whatever the size of the tables.
//!
//! A range (`--from`/`--to`, on Kraken's clock like `book --at` and exports) verifies the book
//! messages and states whose timestamp falls in it. Each of its streams is replayed from where its
//! book was last known before the range ([`stream_start`], the one place that says where a book
//! restarts), so the first messages of the range verify like the rest; what comes before the range
//! builds the books and is not reported.

use std::collections::HashMap;

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, GenericClient, IsolationLevel, Portal, Row, Statement, Transaction};

use super::copies::{
    CopyVerifier, EntryRow, EventRow, MessageRow, StateRow, StoredDecimal, StoredFrame,
};
use super::engine::ReplayReport;
use crate::book::Precision;
use crate::kraken::Frame;
use crate::readback::{
    BookCursor, ReadbackError, Start, StartKind, instrument_precision, subscribed_depth_of,
};
use crate::store::StoreError;
use crate::time::Timestamp;

/// Message rows fetched from the portal at a time.
pub const BATCH: i32 = 1000;

/// Most message rows in one span (the entry rows, states and events of a span are read in one
/// round trip).
pub const SPAN_MESSAGES: usize = 10_000;

/// Most bytes of frames in one span (once reached, the span ends with its batch): memory stays
/// bounded when the record holds deep snapshots (a whole market resubscribed at depth 1000), and
/// so does the number of entry rows a span reads (a level is some 40 bytes of frame).
pub const SPAN_BYTES: usize = 4 << 20;

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
    /// Message rows checked.
    pub messages: u64,
}

/// Verifies every stored copy of the book messages in `scope` against the others, calling
/// `progress` after every span read.
pub async fn verify_database(
    client: &mut Client,
    scope: &DbScope,
    mut progress: impl FnMut(Progress),
) -> Result<ReplayReport, ReadbackError> {
    let exists: Option<String> = client
        .query_one("SELECT to_regclass('kraken_orderbook_messages')::text", &[])
        .await
        .map_err(StoreError::db("looking for the messages table"))?
        .get(0);
    if exists.is_none() {
        return Ok(ReplayReport::default());
    }
    let collectors = match &scope.collector {
        Some(c) => vec![c.clone()],
        None => collectors(client).await?,
    };
    let mut plans = Vec::new();
    for c in collectors {
        if let Some(p) = plan(client, &c, scope).await? {
            plans.push(p);
        }
    }
    let unordered = if scope.collector.is_none() {
        let (from, to) = bounds(scope);
        client
            .query_one(
                "SELECT count(*) FROM kraken_orderbook_messages
                  WHERE collector IS NULL AND \"timestamp\" >= $1 AND \"timestamp\" < $2",
                &[&from, &to],
            )
            .await
            .map_err(StoreError::db("counting rows without a collector"))?
            .get::<_, i64>(0)
    } else {
        0
    };
    let mut at = Progress {
        total: plans.iter().map(|p| p.span()).sum(),
        ..Progress::default()
    };
    progress(at);
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(StoreError::db("starting a read-only transaction"))?;
    // A plan made for the span's own windows, every time: a generic plan over the hypertables
    // reads whole chunks.
    tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
        .await
        .map_err(StoreError::db("setting the plan mode"))?;
    let mut verifier = CopyVerifier::new(&scope.symbols);
    for plan in &plans {
        verifier.begin_collector(&plan.collector);
        for p in &plan.primes {
            verifier.prime(p.conn_id, &p.symbol, p.depth, p.precision);
        }
        let base = at.done;
        read_collector(&tx, plan, scope, &mut verifier, |seq, messages| {
            at.done = base + (seq - plan.lo + 1).clamp(0, plan.last - plan.lo + 1) as u64;
            at.messages += messages;
            progress(at);
        })
        .await?;
        at.done = base + plan.span();
    }
    tx.rollback()
        .await
        .map_err(StoreError::db("ending the read-only transaction"))?;
    progress(at);
    let mut report = verifier.finish();
    report.unordered_rows = unordered.max(0) as u64;
    Ok(report)
}

/// Where a replay of `symbol` on `collector`'s record that must verify from `at` on starts: the
/// latest snapshot or book state strictly before `at`, else its first snapshot in `[at, to)`.
///
/// The one place that says where a stream's book is known again. Today it is read from the stored
/// rows themselves: a snapshot (which is also where a new connection's book starts) or a book
/// state; the coverage model can answer it instead.
pub async fn stream_start(
    client: &Client,
    collector: &str,
    symbol: &str,
    at: Timestamp,
    to: Timestamp,
) -> Result<Option<Start>, ReadbackError> {
    // Strictly before: a book state at exactly `at` follows messages at `at`, which are in range.
    BookCursor::find_start_or_first(client, symbol, at.add_nanos(-1000), to, collector).await
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

/// The collectors with rows, through the `(collector, seq)` index (one probe per collector).
async fn collectors(client: &Client) -> Result<Vec<String>, ReadbackError> {
    Ok(client
        .query(
            "WITH RECURSIVE c(collector) AS (
                (SELECT collector FROM kraken_orderbook_messages WHERE collector IS NOT NULL
                  ORDER BY collector LIMIT 1)
                UNION ALL
                SELECT (SELECT m.collector FROM kraken_orderbook_messages m
                         WHERE m.collector > c.collector ORDER BY m.collector LIMIT 1)
                  FROM c WHERE c.collector IS NOT NULL)
             SELECT collector FROM c WHERE collector IS NOT NULL",
            &[],
        )
        .await
        .map_err(StoreError::db("listing the collectors"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// What a replay of a stream that starts from a snapshot after its subscription needs to know.
#[derive(Debug)]
struct Prime {
    conn_id: i64,
    symbol: String,
    depth: Option<usize>,
    precision: Option<Precision>,
}

/// The seqs of one collector's record to read.
#[derive(Debug)]
struct Plan {
    collector: String,
    /// First seq to read.
    lo: i64,
    /// Last seq to read (`i64::MAX`: to the end).
    hi: i64,
    /// The last seq known when planning (for progress).
    last: i64,
    primes: Vec<Prime>,
    /// The Kraken times of the book states the replay starts from (where the first span looks
    /// for them).
    state_times: Vec<Timestamp>,
}

impl Plan {
    fn span(&self) -> u64 {
        (self.last - self.lo + 1).max(0) as u64
    }
}

async fn plan(
    client: &Client,
    collector: &str,
    scope: &DbScope,
) -> Result<Option<Plan>, ReadbackError> {
    let row = client
        .query_one(
            "SELECT min(seq), max(seq) FROM kraken_orderbook_messages WHERE collector = $1",
            &[&collector],
        )
        .await
        .map_err(StoreError::db("reading a collector's seqs"))?;
    let (Some(first), Some(last)): (Option<i64>, Option<i64>) = (row.get(0), row.get(1)) else {
        return Ok(None);
    };
    if !scope.has_range() {
        return Ok(Some(Plan {
            collector: collector.to_owned(),
            lo: first,
            hi: i64::MAX,
            last,
            primes: Vec::new(),
            state_times: Vec::new(),
        }));
    }
    let (from, to) = bounds(scope);
    let symbols = client
        .query(
            "SELECT symbol, min(seq), max(seq) FROM kraken_orderbook_messages
              WHERE collector = $1 AND \"timestamp\" >= $2 AND \"timestamp\" < $3
                AND channel = 'book' AND message_type IN ('snapshot', 'update')
                AND (cardinality($4::text[]) = 0 OR symbol = ANY($4))
              GROUP BY symbol",
            &[&collector, &from, &to, &scope.symbols],
        )
        .await
        .map_err(StoreError::db("reading what the range holds"))?;
    let states = client
        .query_one(
            "SELECT min(seq), max(seq) FROM kraken_book_states
              WHERE collector = $1 AND \"timestamp\" >= $2 AND \"timestamp\" < $3
                AND (cardinality($4::text[]) = 0 OR symbol = ANY($4))",
            &[&collector, &from, &to, &scope.symbols],
        )
        .await
        .map_err(StoreError::db("reading the range's book states"))?;
    let mut lo: Option<i64> = states.get(0);
    let mut hi: Option<i64> = states.get(1);
    for r in &symbols {
        let (a, b): (i64, i64) = (r.get(1), r.get(2));
        lo = Some(lo.map_or(a, |l| l.min(a)));
        hi = Some(hi.map_or(b, |h| h.max(b)));
    }
    let (Some(mut lo), Some(hi)) = (lo, hi) else {
        return Ok(None);
    };
    let mut primes = Vec::new();
    let mut state_times = Vec::new();
    if scope.from.is_none() {
        // From the record's start: the subscriptions are read like everything else.
        lo = first;
    } else {
        for r in &symbols {
            let Some(symbol) = r.get::<_, Option<String>>(0) else {
                continue;
            };
            let Some(start) = stream_start(client, collector, &symbol, from, to).await? else {
                continue;
            };
            lo = lo.min(start.seq);
            if start.kind == StartKind::State {
                state_times.push(start.timestamp);
            }
            if start.kind == StartKind::Snapshot {
                primes.push(Prime {
                    conn_id: start.conn_id,
                    depth: subscribed_depth_of(client, collector, start.seq).await?,
                    precision: instrument_precision(client, &symbol, &start).await?,
                    symbol,
                });
            }
        }
    }
    Ok(Some(Plan {
        collector: collector.to_owned(),
        lo,
        hi,
        last: hi,
        primes,
        state_times,
    }))
}

const MESSAGES: &str = "SELECT seq, conn_id, \"timestamp\", received_at, channel, message_type, \
    symbol, checksum, checksum_ok, raw_message::text, raw_text, raw_bytes, best_bid_price, \
    best_bid_qty, best_ask_price, best_ask_qty \
    FROM kraken_orderbook_messages \
    WHERE collector = $1 AND seq >= $2 AND seq <= $3 \
      AND (cardinality($4::text[]) = 0 OR symbol IS NULL OR symbol = ANY($4)) \
    ORDER BY seq";

/// The entry rows of a span: per symbol, a window of Kraken time over its `(symbol, timestamp)`
/// index ($2, $3, $4), then the span's seqs ($5, $6].
const ENTRIES: &str = "SELECT e.seq, e.ordinal, e.symbol, e.side, e.price, e.quantity, \
    e.message_type, e.checksum \
    FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[]) AS w(symbol, lo, hi) \
    CROSS JOIN LATERAL ( \
        SELECT seq, ordinal, symbol, side, price, quantity, message_type, checksum \
          FROM kraken_orderbook_entries \
         WHERE symbol = w.symbol AND \"timestamp\" >= w.lo AND \"timestamp\" <= w.hi \
           AND collector = $1 AND seq > $5 AND seq <= $6) e \
    ORDER BY e.seq, e.ordinal";

/// The book states of a span: a state carries the Kraken time of the update it follows, so the
/// span's update times ($4, $5) find it.
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

fn message_row(r: &Row) -> MessageRow {
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
    MessageRow {
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

fn entry_row(r: &Row) -> EntryRow {
    let value = |i| numeric(r, i).unwrap_or_else(|| Err("null".into()));
    EntryRow {
        seq: r.get(0),
        ordinal: r.get(1),
        symbol: r.get(2),
        side: r.get(3),
        price: value(4),
        quantity: value(5),
        message_type: r.get(6),
        checksum: r.get(7),
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

/// Kraken-time windows of a span: per symbol, for its entry rows; and the update times, for the
/// book states.
#[derive(Debug, Default)]
struct Windows {
    symbols: HashMap<String, (Timestamp, Timestamp)>,
    updates: Option<(Timestamp, Timestamp)>,
}

fn widen(w: &mut Option<(Timestamp, Timestamp)>, t: Timestamp) {
    *w = Some(match *w {
        Some((a, b)) => (a.min(t), b.max(t)),
        None => (t, t),
    });
}

impl Windows {
    fn add_symbol(&mut self, symbol: &str, t: Timestamp) {
        match self.symbols.get_mut(symbol) {
            Some((a, b)) => {
                *a = (*a).min(t);
                *b = (*b).max(t);
            }
            None => {
                self.symbols.insert(symbol.to_owned(), (t, t));
            }
        }
    }

    /// Adds a messages row (its frame decoded): where its entry rows and the book states after it
    /// are, in Kraken time. The row's own columns count too, so that rows stored under another
    /// symbol or time than the frame says are still found.
    fn add(&mut self, m: &MessageRow, frame: Option<&Frame<'_>>, wanted: impl Fn(&str) -> bool) {
        if let Some(Frame::Book(book)) = frame {
            let first_time = book
                .data
                .first()
                .and_then(|d| d.timestamp)
                .unwrap_or(m.received_at);
            for d in &book.data {
                if !wanted(&d.symbol) {
                    continue;
                }
                let t = d.timestamp.unwrap_or(first_time);
                self.add_symbol(&d.symbol, t);
                self.add_symbol(&d.symbol, m.timestamp);
                if book.kind == crate::kraken::BookKind::Update {
                    widen(&mut self.updates, t);
                }
            }
        }
        if m.claims_book()
            && let Some(s) = m.symbol.as_deref()
            && wanted(s)
        {
            self.add_symbol(s, m.timestamp);
        }
    }
}

/// Reads one collector's record as `plan` says and feeds it to `verifier`, calling
/// `progress(seq read up to, messages)` after every span.
async fn read_collector(
    tx: &Transaction<'_>,
    plan: &Plan,
    scope: &DbScope,
    verifier: &mut CopyVerifier,
    mut progress: impl FnMut(i64, u64),
) -> Result<(), ReadbackError> {
    let statement = tx
        .prepare(MESSAGES)
        .await
        .map_err(StoreError::db("preparing the messages query"))?;
    let statements = Statements {
        entries: tx
            .prepare(ENTRIES)
            .await
            .map_err(StoreError::db("preparing the entries query"))?,
        states: tx
            .prepare(STATES)
            .await
            .map_err(StoreError::db("preparing the states query"))?,
        events: tx
            .prepare(EVENTS)
            .await
            .map_err(StoreError::db("preparing the events query"))?,
    };
    let portal = tx
        .bind(
            &statement,
            &[&plan.collector, &plan.lo, &plan.hi, &scope.symbols],
        )
        .await
        .map_err(StoreError::db("opening the messages"))?;
    let wanted = |s: &str| scope.symbols.is_empty() || scope.symbols.iter().any(|w| w == s);
    // Seqs up to here are read.
    let mut done = plan.lo.saturating_sub(1);
    // The Kraken times of the updates of the last message before the span: a book state follows
    // its update closely (nothing but events between), perhaps in the next span. The first span
    // looks for the states the replay starts from.
    let mut carry: Vec<Timestamp> = plan.state_times.clone();
    let ends = connection_ends(tx, &plan.collector, plan.lo).await?;
    let mut ends = ends.iter().peekable();
    let mut next = Some(fetch_span(tx, &portal).await?);
    while let Some((messages, end_of_record)) = next.take() {
        let until = match messages.last() {
            Some(m) if !end_of_record => m.seq,
            _ => plan.hi,
        };
        let frames: Vec<Option<Frame<'_>>> = messages.iter().map(MessageRow::decode).collect();
        let mut windows = Windows::default();
        for t in carry.drain(..) {
            widen(&mut windows.updates, t);
        }
        for (m, f) in messages.iter().zip(&frames) {
            windows.add(m, f.as_ref(), wanted);
        }
        let span = Span {
            statements: &statements,
            collector: &plan.collector,
            after: done,
            until,
            windows: &windows,
            symbols: &scope.symbols,
        };
        // The next span's messages are asked for in the same round trip.
        let ((entries, states, events), following) = if end_of_record {
            (span.read(tx).await?, None)
        } else {
            let (rows, following) =
                futures_util::try_join!(span.read(tx), fetch_span(tx, &portal))?;
            (rows, Some(following))
        };
        next = following;
        feed(
            verifier, scope, &messages, &frames, &entries, &states, &events,
        );
        if let (Some(Some(Frame::Book(b))), Some(m)) = (frames.last(), messages.last())
            && b.kind == crate::kraken::BookKind::Update
        {
            let first = b
                .data
                .first()
                .and_then(|d| d.timestamp)
                .unwrap_or(m.received_at);
            carry.extend(b.data.iter().map(|d| d.timestamp.unwrap_or(first)));
        }
        done = until;
        // Connections whose last frame is before the span's last message are over.
        while let Some(&&(last, conn)) = ends.peek()
            && last < until
        {
            verifier.end_connection(conn);
            ends.next();
        }
        progress(done, messages.len() as u64);
    }
    Ok(())
}

/// The message rows of the next span from `portal`: up to [`SPAN_BYTES`] of frames or
/// [`SPAN_MESSAGES`] rows, and whether the record ends with them.
async fn fetch_span(
    tx: &Transaction<'_>,
    portal: &Portal,
) -> Result<(Vec<MessageRow>, bool), ReadbackError> {
    let mut messages = Vec::new();
    let mut bytes = 0usize;
    loop {
        let rows = tx
            .query_portal(portal, BATCH)
            .await
            .map_err(StoreError::db("reading messages"))?;
        let end_of_record = rows.len() < BATCH as usize;
        for r in &rows {
            let m = message_row(r);
            bytes += m.frame.len();
            messages.push(m);
        }
        if end_of_record || bytes >= SPAN_BYTES || messages.len() >= SPAN_MESSAGES {
            return Ok((messages, end_of_record));
        }
    }
}

/// The span queries, prepared once.
struct Statements {
    entries: Statement,
    states: Statement,
    events: Statement,
}

/// One round trip's seqs: `(after, until]`.
struct Span<'a> {
    statements: &'a Statements,
    collector: &'a str,
    after: i64,
    until: i64,
    windows: &'a Windows,
    symbols: &'a [String],
}

type SpanRows = (Vec<EntryRow>, Vec<StateRow>, Vec<(EventRow, Timestamp)>);

impl Span<'_> {
    /// The entry rows, book states and events of the span, in one round trip.
    async fn read(&self, tx: &Transaction<'_>) -> Result<SpanRows, ReadbackError> {
        let mut names = Vec::with_capacity(self.windows.symbols.len());
        let mut los = Vec::with_capacity(names.capacity());
        let mut his = Vec::with_capacity(names.capacity());
        for (s, (a, b)) in &self.windows.symbols {
            names.push(s.as_str());
            los.push(*a);
            his.push(*b);
        }
        let entries = async {
            if names.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(
                &self.statements.entries,
                &[
                    &self.collector,
                    &names,
                    &los,
                    &his,
                    &self.after,
                    &self.until,
                ],
            )
            .await
            .map(|rows| rows.iter().map(entry_row).collect())
            .map_err(StoreError::db("reading entry rows"))
        };
        let states = async {
            let Some((lo, hi)) = self.windows.updates else {
                return Ok(Vec::new());
            };
            tx.query(
                &self.statements.states,
                &[
                    &self.collector,
                    &self.after,
                    &self.until,
                    &lo,
                    &hi,
                    &self.symbols,
                ],
            )
            .await
            .map(|rows| rows.iter().map(state_row).collect())
            .map_err(StoreError::db("reading book states"))
        };
        let events = async {
            tx.query(
                &self.statements.events,
                &[&self.collector, &self.after, &self.until],
            )
            .await
            .map(|rows| rows.iter().map(event_row).collect())
            .map_err(StoreError::db("reading feed events"))
        };
        Ok(futures_util::try_join!(entries, states, events)?)
    }
}

/// Feeds a span's rows to the verifier in `seq` order.
fn feed(
    verifier: &mut CopyVerifier,
    scope: &DbScope,
    messages: &[MessageRow],
    frames: &[Option<Frame<'_>>],
    entries: &[EntryRow],
    states: &[StateRow],
    events: &[(EventRow, Timestamp)],
) {
    let (mut e, mut s, mut v) = (0usize, 0usize, 0usize);
    // States and events (other than a message's stored_raw) before `seq`, in seq order; entry
    // rows before it have no message.
    let before =
        |verifier: &mut CopyVerifier, seq: i64, e: &mut usize, s: &mut usize, v: &mut usize| {
            loop {
                let next_state = states.get(*s).filter(|st| st.seq < seq);
                let next_event = events.get(*v).filter(|(ev, _)| ev.seq < seq);
                match (next_state, next_event) {
                    (Some(st), ev) if ev.is_none_or(|(ev, _)| st.seq < ev.seq) => {
                        let in_range = scope.contains(st.timestamp);
                        if in_range {
                            verifier.state(st);
                        } else {
                            verifier.warm(|w| w.state(st));
                        }
                        *s += 1;
                    }
                    (_, Some((ev, time))) => {
                        if scope.contains(*time) {
                            verifier.event(ev);
                        } else {
                            verifier.warm(|w| w.event(ev));
                        }
                        *v += 1;
                    }
                    _ => break,
                }
            }
            let from = *e;
            while entries.get(*e).is_some_and(|en| en.seq < seq) {
                *e += 1;
            }
            let mut k = from;
            while k < *e {
                let mut j = k;
                while j < *e && entries[j].seq == entries[k].seq {
                    j += 1;
                }
                verifier.orphan_entries(&entries[k..j]);
                k = j;
            }
        };
    for (m, f) in messages.iter().zip(frames) {
        before(verifier, m.seq, &mut e, &mut s, &mut v);
        let first = e;
        while entries.get(e).is_some_and(|en| en.seq == m.seq) {
            e += 1;
        }
        let mut stored_raw = false;
        while let Some((ev, _)) = events.get(v).filter(|(ev, _)| ev.seq == m.seq) {
            stored_raw |= ev.event == "stored_raw";
            v += 1;
        }
        let rows = &entries[first..e];
        if scope.contains(m.timestamp) {
            verifier.message(m, f.as_ref(), rows, stored_raw);
        } else {
            verifier.warm(|w| w.message(m, f.as_ref(), rows, stored_raw));
        }
    }
    before(verifier, i64::MAX, &mut e, &mut s, &mut v);
}
