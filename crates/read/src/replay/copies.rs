//! Every stored copy of a book message checked against the others: the decisions of `replay
//! --verify` over the database, without I/O (`db.rs` reads the rows and feeds them here, each
//! connection's records in `seq` order).
//!
//! Since schema version 6 (`docs/design/storage.md`, "Which stored copies remain") a book message
//! is one row of `krakenbook_book` ([`BookRow`]): its levels once, as dec64 values, and each copy
//! of it that the collector received ([`CopyOf`]: the row's own, and each one packed in `dups`).
//! What is set against what, each comparison named by the two [`StoredCopy`]s of a report:
//! - **the levels against the replayed book, through Kraken's checksum**: every copy is applied to
//!   the books of its own connection with the project's one engine ([`Tracker`]), as the
//!   collector did, and the book after it must have the row's `checksum`. Where the collector
//!   verified that copy and the replayed book does not have the checksum, `checksum` and the
//!   replayed book disagree (a level in the top ten or the checksum was changed);
//! - **the verdicts**: `checksum_ok` (the first copy's) and the verdict bits of every copy in
//!   `dups`, each against the verdict recomputed on that copy's connection;
//! - **`raw` against the levels**, for a row that holds both (a frame that is not in Kraken's
//!   layout but whose values fit dec64): kind, symbol, checksum, timestamp and every level (exact:
//!   value and scale) must be the same. A row whose values do not fit dec64 has no levels: its
//!   raw frame, decoded with the project's decoder, is set against the row's columns and its
//!   levels reach the books from there;
//! - **`kraken_book_states`** against the replayed book, every level at depth ([`compare_state`]):
//!   the only stored copy of the levels below the top ten, so a level changed deep in the book is
//!   caught at the next book state (at most `--book-state-every` updates later) or by another
//!   stream (`super::cross`);
//! - a frame stored whole in `krakenbook_other` ([`OtherRow`]: acks, status, malformed frames,
//!   book frames the book table cannot hold) is decoded from `raw_message` (or
//!   `raw_text`/`raw_bytes`); for a book frame there its columns (`message_type`, `symbol`,
//!   `checksum`, `timestamp`, `best_bid_*`/`best_ask_*`) and verdict are checked as before.
//!
//! Copies that no longer exist are no longer checked: the entry rows against `raw_message` (the
//! entries table is a view over the levels), and `best_bid_*`/`best_ask_*` of book messages (the
//! book table has none; the view shows null).
//!
//! The books: one [`Tracker`] per connection of the collector. A stream is what one connection
//! received for one symbol: a new connection starts every book over, unverifiable until its
//! snapshot. Where the collector verified a copy and the replay finds a mismatch, the replay goes on
//! from its own book as if verified (the collector's book was): a changed stored value is reported
//! where it is, not once more for every message until the next snapshot.
//!
//! What must hold:
//! - every disagreement is reported with its collector, seq (the copy's own), symbol and the two
//!   copies, never passed over; nothing that the writer stores on purpose is reported (a frame in
//!   `krakenbook_other` stored as received after the database refused its rows carries no
//!   symbol or checksum: its `stored_raw` event says so);
//! - a verdict or a book state that the database cannot reproduce because records are missing
//!   before it (`journal_damage` or `not_stored` events: the books start over) is counted as
//!   unverifiable after damage, not as a disagreement, until the connection's book is known again;
//! - a symbol the collector did not ask for (an `unasked_symbol` event, or no subscription ack for
//!   it where the connection has acks) was never tracked: its messages have no verdict;
//! - records before a range build the books and are not reported ([`CopyVerifier::warm`]); a book
//!   state found while its book is unknown starts the book again (a state is a verified book).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::book::{Decimal, FrameVerdict, OrderBook, Precision, PriceLevel, Tracker, Verdict};
use crate::kraken::{self, BookData, BookKind, BookMessage, Frame, Level, WireDecimal};
use crate::store::book_rows::{undec64, unpack_dup};
use crate::time::Timestamp;

use super::engine::{Disagreement, ReplayReport, verdict_name};

/// A stored copy of (part of) a book message, by the name a report gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoredCopy {
    /// `krakenbook_book.levels`.
    Levels,
    /// `krakenbook_book.raw`: the frame, where the row alone does not rebuild it.
    Raw,
    /// `krakenbook_book.kind`.
    Kind,
    /// The row's `symbol`.
    Symbol,
    /// The row's `timestamp`.
    Timestamp,
    /// The row's `checksum`.
    Checksum,
    /// The row's `checksum_ok`: the collector's verdict on its first copy.
    ChecksumOk,
    /// `krakenbook_book.dups`: a further copy (its verdict, its place).
    Dups,
    /// `krakenbook_book.seq`: where the row's first copy is.
    Seq,
    /// A row of `kraken_book_states`.
    BookState,
    /// The book replayed from the stored levels, on the copy's connection.
    Replayed,
    /// `krakenbook_other.raw_message` (or `raw_text`/`raw_bytes`): a frame stored whole.
    RawMessage,
    /// `krakenbook_other.message_type` (and `channel`).
    MessageType,
    /// `krakenbook_other.best_bid_price` and `best_bid_qty`.
    BestBid,
    /// `krakenbook_other.best_ask_price` and `best_ask_qty`.
    BestAsk,
}

impl StoredCopy {
    /// The name reports use.
    pub const fn name(self) -> &'static str {
        match self {
            StoredCopy::Levels => "levels",
            StoredCopy::Raw => "raw",
            StoredCopy::Kind => "kind",
            StoredCopy::Symbol => "symbol",
            StoredCopy::Timestamp => "timestamp",
            StoredCopy::Checksum => "checksum",
            StoredCopy::ChecksumOk => "checksum_ok",
            StoredCopy::Dups => "dups",
            StoredCopy::Seq => "seq",
            StoredCopy::BookState => "kraken_book_states",
            StoredCopy::Replayed => "replayed book",
            StoredCopy::RawMessage => "raw_message",
            StoredCopy::MessageType => "message_type",
            StoredCopy::BestBid => "best_bid",
            StoredCopy::BestAsk => "best_ask",
        }
    }
}

/// A stored `numeric` price or quantity: its exact value, or why it is not one (negative, NaN,
/// beyond 38 digits: only a hand-made change stores one).
pub type StoredDecimal = Result<Decimal, String>;

/// One row of `krakenbook_book`: a book message and every copy of it this collector received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookRow {
    /// `seq`: the first copy's.
    pub seq: i64,
    /// `conn_id`: the first copy's connection.
    pub conn_id: i64,
    /// `timestamp`: Kraken's (the receive time when the frame has none).
    pub timestamp: Timestamp,
    /// `received_at`: when the first copy was read.
    pub received_at: Timestamp,
    /// `checksum`: Kraken's CRC32, its 32 bits.
    pub checksum: Option<i32>,
    /// `n_bids`.
    pub n_bids: i16,
    /// `kind`: `s` or `u`.
    pub kind: i8,
    /// `checksum_ok`: the verdict on the first copy.
    pub checksum_ok: Option<bool>,
    /// `symbol`.
    pub symbol: String,
    /// `levels`: dec64 price, qty, ... (an element null only by a hand-made change).
    pub levels: Option<Vec<Option<i64>>>,
    /// `raw`, as text.
    pub raw: Option<String>,
    /// `dups`: further copies, packed (empty when null; an element null only by a hand-made
    /// change).
    pub dups: Vec<Option<i64>>,
}

/// One received copy of a book row: the first (`index` 0) or the `index`th of `dups`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOf {
    /// 0: the row's own copy; k: `dups[k]` (1-based, as SQL counts).
    pub index: usize,
    /// The copy's journal seq.
    pub seq: i64,
    /// Its connection.
    pub conn_id: i64,
    /// The collector's verdict on it.
    pub verdict: Option<bool>,
}

impl BookRow {
    /// Every copy of the message: the row's own first, then `dups` in order.
    pub fn copies(&self) -> impl Iterator<Item = CopyOf> + '_ {
        let first = CopyOf {
            index: 0,
            seq: self.seq,
            conn_id: self.conn_id,
            verdict: self.checksum_ok,
        };
        std::iter::once(first).chain(self.dups.iter().enumerate().filter_map(|(k, d)| {
            let (conn, seq, verdict, _) = unpack_dup((*d)?);
            Some(CopyOf {
                index: k + 1,
                seq: self.seq.saturating_add(seq),
                conn_id: self.conn_id.saturating_add(conn),
                verdict,
            })
        }))
    }

    /// Bytes it holds (levels and raw), for bounding what a read keeps.
    pub fn size(&self) -> usize {
        96 + self.symbol.len()
            + self.levels.as_ref().map_or(0, |l| 16 * l.len())
            + self.raw.as_ref().map_or(0, String::len)
            + 8 * self.dups.len()
    }

    /// The row's `kind` as a book message kind (`None`: neither `s` nor `u`).
    fn book_kind(&self) -> Option<BookKind> {
        match u8::try_from(self.kind).ok()? {
            b's' => Some(BookKind::Snapshot),
            b'u' => Some(BookKind::Update),
            _ => None,
        }
    }
}

/// Where a `krakenbook_other` row holds its frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredFrame {
    /// `raw_message` (jsonb, as text).
    Json(String),
    /// `raw_text`.
    Text(String),
    /// `raw_bytes`.
    Bytes(Vec<u8>),
    /// None of them.
    Missing,
}

impl StoredFrame {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        match self {
            StoredFrame::Json(t) | StoredFrame::Text(t) => t.len(),
            StoredFrame::Bytes(b) => b.len(),
            StoredFrame::Missing => 0,
        }
    }

    /// Whether there is nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's text, when it has one.
    pub fn text(&self) -> Option<&str> {
        match self {
            StoredFrame::Json(t) | StoredFrame::Text(t) => Some(t),
            StoredFrame::Bytes(b) => std::str::from_utf8(b).ok(),
            StoredFrame::Missing => None,
        }
    }
}

/// One row of `krakenbook_other`: a frame stored whole.
#[derive(Clone, Debug)]
pub struct OtherRow {
    /// `seq`.
    pub seq: i64,
    /// `conn_id`.
    pub conn_id: Option<i64>,
    /// `timestamp` (Kraken's, or the receive time).
    pub timestamp: Timestamp,
    /// `received_at`.
    pub received_at: Timestamp,
    /// `channel`.
    pub channel: String,
    /// `message_type`.
    pub message_type: String,
    /// `symbol`.
    pub symbol: Option<String>,
    /// `checksum`.
    pub checksum: Option<i64>,
    /// `checksum_ok`.
    pub checksum_ok: Option<bool>,
    /// The frame.
    pub frame: StoredFrame,
    /// `best_bid_price`, `best_bid_qty`.
    pub best_bid: [Option<StoredDecimal>; 2],
    /// `best_ask_price`, `best_ask_qty`.
    pub best_ask: [Option<StoredDecimal>; 2],
}

impl OtherRow {
    /// Whether the row says it is a book message.
    pub fn claims_book(&self) -> bool {
        self.channel == "book" && matches!(self.message_type.as_str(), "snapshot" | "update")
    }

    /// The stored frame, decoded (`None`: no text, or it does not decode).
    pub fn decode(&self) -> Option<Frame<'_>> {
        self.frame.text().and_then(|t| kraken::decode(t).ok())
    }
}

/// One row of `kraken_book_states`.
#[derive(Clone, Debug)]
pub struct StateRow {
    /// `seq`.
    pub seq: i64,
    /// `conn_id`.
    pub conn_id: i64,
    /// `symbol`.
    pub symbol: String,
    /// `timestamp`.
    pub timestamp: Timestamp,
    /// `depth`.
    pub depth: i32,
    /// `price_precision`.
    pub price_precision: i16,
    /// `qty_precision`.
    pub qty_precision: i16,
    /// `checksum`.
    pub checksum: i64,
    /// `bids` as text: `[["price","qty"], ...]`.
    pub bids: String,
    /// `asks` as text.
    pub asks: String,
}

/// One row of `kraken_feed_events` that matters to the books.
#[derive(Clone, Debug)]
pub struct EventRow {
    /// `seq`.
    pub seq: i64,
    /// `conn_id`.
    pub conn_id: Option<i64>,
    /// `event`.
    pub event: String,
    /// `symbol`.
    pub symbol: Option<String>,
}

/// A disagreement found in one row, before it is reported: the two copies and what each says.
type Found = ((StoredCopy, String), (StoredCopy, String));

/// The message a book row stands for, and what its stored copies say against each other.
#[derive(Debug)]
struct RowFrame<'r> {
    /// Snapshot or update.
    kind: BookKind,
    /// The symbol's part (`None`: nothing to apply: no levels and a raw frame that does not
    /// decode).
    data: Option<BookData<'r>>,
    /// The disagreements between the row's own columns, `levels` and `raw`, in the order found.
    found: Vec<Found>,
}

/// Decodes a book row: its levels from dec64 (exact, no text), or its raw frame where it has no
/// levels; where it holds both, `raw` is set against `levels` and the row's columns.
fn row_frame(row: &BookRow) -> RowFrame<'_> {
    let mut found: Vec<Found> = Vec::new();
    let kind = row.book_kind().unwrap_or_else(|| {
        found.push((
            (StoredCopy::Kind, format!("{:?}", row.kind as u8 as char)),
            (
                StoredCopy::Levels,
                "a snapshot ('s') or an update ('u')".into(),
            ),
        ));
        BookKind::Update
    });
    let checksum = match row.checksum {
        Some(c) => c as u32,
        None => {
            found.push((
                (StoredCopy::Checksum, "null".into()),
                (
                    StoredCopy::Levels,
                    "a book message, which carries Kraken's checksum".into(),
                ),
            ));
            0
        }
    };
    if let Some(k) = row.dups.iter().position(Option::is_none) {
        found.push((
            (StoredCopy::Dups, format!("copy {}: null", k + 1)),
            (StoredCopy::Seq, "a copy packed in 64 bits".into()),
        ));
    }
    let levels = row
        .levels
        .as_ref()
        .map(|l| levels_of(l, row.n_bids, &mut found));
    let raw = row.raw.as_deref().map(|text| match kraken::decode(text) {
        Ok(Frame::Book(BookMessage { kind, mut data })) if data.len() == 1 => {
            Ok((kind, data.remove(0)))
        }
        Ok(Frame::Book(b)) => Err(format!("a book frame with {} data elements", b.data.len())),
        Ok(f) => Err(format!("a {} frame", f.channel())),
        Err(_) => Err("a frame that does not decode".to_owned()),
    });
    let own = |bids, asks| BookData {
        symbol: Cow::Borrowed(row.symbol.as_str()),
        bids,
        asks,
        checksum,
        timestamp: Some(row.timestamp),
    };
    let data = match (levels, raw) {
        (Some((bids, asks)), None) => Some(own(bids, asks)),
        (levels, Some(Err(raw_says))) => {
            found.push((
                (StoredCopy::Raw, raw_says),
                (StoredCopy::Kind, format!("a book {}", kind.as_str())),
            ));
            levels.map(|(bids, asks)| own(bids, asks))
        }
        (Some((bids, asks)), Some(Ok((raw_kind, raw)))) => {
            let data = own(bids, asks);
            let differs = compare_raw(row, kind, raw_kind, &raw)
                .or_else(|| compare_levels(&raw, &data).map(|(a, b)| (StoredCopy::Levels, a, b)));
            if let Some((copy, raw_says, says)) = differs {
                found.push(((StoredCopy::Raw, raw_says), (copy, says)));
            }
            Some(data)
        }
        (None, Some(Ok((raw_kind, raw)))) => {
            if let Some((copy, raw_says, says)) = compare_raw(row, kind, raw_kind, &raw) {
                found.push(((StoredCopy::Raw, raw_says), (copy, says)));
            }
            if usize::try_from(row.n_bids).ok() != Some(raw.bids.len()) {
                found.push((
                    (StoredCopy::Raw, format!("{} bids", raw.bids.len())),
                    (StoredCopy::Levels, format!("n_bids {}", row.n_bids)),
                ));
            }
            Some(raw)
        }
        (None, None) => {
            found.push((
                (StoredCopy::Levels, "null".into()),
                (StoredCopy::Raw, "null".into()),
            ));
            None
        }
    };
    RowFrame { kind, data, found }
}

/// The levels of a row as bids and asks (`n_bids` pairs first); a value that is not dec64, an odd
/// count or an `n_bids` beyond the pairs is reported into `found` and left out.
fn levels_of(
    values: &[Option<i64>],
    n_bids: i16,
    found: &mut Vec<Found>,
) -> (Vec<Level<'static>>, Vec<Level<'static>>) {
    let pairs = values.len() / 2;
    if values.len() % 2 == 1 || usize::try_from(n_bids).is_ok_and(|n| n > pairs) || n_bids < 0 {
        found.push((
            (
                StoredCopy::Levels,
                format!("{} values, n_bids {n_bids}", values.len()),
            ),
            (
                StoredCopy::Levels,
                "price and quantity pairs, n_bids of them bids".into(),
            ),
        ));
    }
    let n_bids = usize::try_from(n_bids).unwrap_or(0).min(pairs);
    let (mut bids, mut asks) = (
        Vec::with_capacity(n_bids),
        Vec::with_capacity(pairs - n_bids),
    );
    for k in 0..pairs {
        let value = |i: usize| values[i].and_then(undec64).ok_or(values[i]);
        match (value(2 * k), value(2 * k + 1)) {
            (Ok(p), Ok(q)) => {
                if k < n_bids {
                    bids.push(level(p, q));
                } else {
                    asks.push(level(p, q));
                }
            }
            (Err(v), _) | (_, Err(v)) => found.push((
                (
                    StoredCopy::Levels,
                    format!("level {}: {} is not a dec64 value", k + 1, optional(v)),
                ),
                (StoredCopy::Levels, "mantissa * 32 + scale".into()),
            )),
        }
    }
    (bids, asks)
}

/// The first difference between a row's raw frame and its columns (kind, symbol, checksum,
/// timestamp): the column, what `raw` says and what the column says.
fn compare_raw(
    row: &BookRow,
    kind: BookKind,
    raw_kind: BookKind,
    raw: &BookData<'_>,
) -> Option<(StoredCopy, String, String)> {
    if raw_kind != kind {
        return Some((
            StoredCopy::Kind,
            raw_kind.as_str().into(),
            kind.as_str().into(),
        ));
    }
    if raw.symbol != row.symbol.as_str() {
        return Some((
            StoredCopy::Symbol,
            raw.symbol.to_string(),
            row.symbol.clone(),
        ));
    }
    if row.checksum.map(|c| c as u32) != Some(raw.checksum) {
        return Some((
            StoredCopy::Checksum,
            raw.checksum.to_string(),
            optional(row.checksum.map(|c| c as u32)),
        ));
    }
    let raw_time = raw.timestamp.unwrap_or(row.received_at);
    if raw_time.pg_micros() != row.timestamp.pg_micros() {
        return Some((
            StoredCopy::Timestamp,
            raw_time.to_string(),
            row.timestamp.to_string(),
        ));
    }
    None
}

/// The first difference between a raw frame's levels and the row's (exact: value and scale), as
/// what each says.
fn compare_levels(raw: &BookData<'_>, levels: &BookData<'_>) -> Option<(String, String)> {
    for (side, a, b) in [
        ("bid", &raw.bids, &levels.bids),
        ("ask", &raw.asks, &levels.asks),
    ] {
        for k in 0..a.len().max(b.len()) {
            let (x, y) = (a.get(k), b.get(k));
            let same = match (x, y) {
                (Some(x), Some(y)) => {
                    exact(x.price.value, y.price.value) && exact(x.qty.value, y.qty.value)
                }
                _ => false,
            };
            if !same {
                let said = |l: Option<&Level<'_>>| {
                    l.map_or("nothing".to_owned(), |l| {
                        format!("{} x {}", l.price.value, l.qty.value)
                    })
                };
                return Some((
                    format!("{side} {}: {}", k + 1, said(x)),
                    format!("{side} {}: {}", k + 1, said(y)),
                ));
            }
        }
    }
    None
}

/// The books of one connection.
#[derive(Clone, Debug)]
struct Books {
    /// Replayed from the stored levels.
    tracker: Tracker,
    /// Symbols with a successful book subscription ack on this connection.
    acked: HashSet<String>,
    /// Whether any book subscription ack was seen on this connection.
    any_ack: bool,
    /// Symbols named by an `unasked_symbol` event on this connection.
    unasked: HashSet<String>,
    /// Symbols with a book (forgotten after damage).
    symbols: HashSet<String>,
}

impl Books {
    fn new() -> Books {
        Books {
            tracker: Tracker::new(10),
            acked: HashSet::new(),
            any_ack: false,
            unasked: HashSet::new(),
            symbols: HashSet::new(),
        }
    }

    /// Whether the collector tracked `symbol` on this connection (asked for it).
    fn tracked(&self, symbol: &str) -> bool {
        self.acked.contains(symbol) || (!self.any_ack && !self.unasked.contains(symbol))
    }
}

/// Checks every stored copy of the book messages of one collector's record after another, fed in
/// `seq` order.
#[derive(Debug, Default)]
pub struct CopyVerifier {
    collector: String,
    /// Only these symbols (all when empty).
    symbols: HashSet<String>,
    conns: HashMap<i64, Books>,
    report: ReplayReport,
    /// Records are missing before this point: a book not known since may have missed some.
    damaged: bool,
    /// Connections whose books verified again since the damage.
    verified_since_damage: HashSet<i64>,
}

impl CopyVerifier {
    /// A verifier of `symbols` (all when empty).
    pub fn new(symbols: &[String]) -> CopyVerifier {
        CopyVerifier {
            symbols: symbols.iter().cloned().collect(),
            ..CopyVerifier::default()
        }
    }

    /// Starts on another collector's record: its connections are its own.
    pub fn begin_collector(&mut self, collector: &str) {
        collector.clone_into(&mut self.collector);
        self.conns.clear();
        self.damaged = false;
        self.verified_since_damage.clear();
    }

    /// A connection is over (nothing of it remains to be read): its books go.
    pub fn end_connection(&mut self, conn_id: i64) {
        self.conns.remove(&conn_id);
        self.verified_since_damage.remove(&conn_id);
    }

    /// The report so far.
    pub fn report(&self) -> &ReplayReport {
        &self.report
    }

    /// The finished report.
    pub fn finish(self) -> ReplayReport {
        self.report
    }

    /// Runs `f` to build the books without reporting anything (records outside the range).
    pub fn warm<R>(&mut self, f: impl FnOnce(&mut CopyVerifier) -> R) -> R {
        let saved = std::mem::take(&mut self.report);
        let r = f(self);
        self.report = saved;
        r
    }

    fn wanted(&self, symbol: &str) -> bool {
        self.symbols.is_empty() || self.symbols.contains(symbol)
    }

    fn differ(
        &mut self,
        seq: i64,
        symbol: Option<&str>,
        (a, a_says): (StoredCopy, String),
        (b, b_says): (StoredCopy, String),
    ) {
        self.report.disagree_copies(Disagreement {
            seq: seq.max(0) as u64,
            collector: Some(self.collector.clone()),
            symbol: symbol.map(str::to_owned),
            copies: [a.name(), b.name()],
            recorded: a_says,
            replayed: b_says,
        });
    }

    fn count(&mut self, seq: i64) {
        let seq = seq.max(0) as u64;
        self.report.records += 1;
        self.report.seq_range = Some(match self.report.seq_range {
            Some((a, b)) => (a.min(seq), b.max(seq)),
            None => (seq, seq),
        });
    }

    /// Whether a verdict that cannot be reproduced on `conn_id` is excused by records missing
    /// before it.
    fn excused(&mut self, conn_id: i64) -> bool {
        if self.damaged && !self.verified_since_damage.contains(&conn_id) {
            self.report.unverifiable_after_damage += 1;
            return true;
        }
        false
    }

    /// A feed event: records missing (`journal_damage`, `not_stored`) make every book start over;
    /// `unasked_symbol` says the collector never tracked that symbol on the connection.
    pub fn event(&mut self, e: &EventRow) {
        match e.event.as_str() {
            "journal_damage" | "not_stored" => {
                self.report.records_missing += 1;
                for books in self.conns.values_mut() {
                    for s in std::mem::take(&mut books.symbols) {
                        books.tracker.forget(&s);
                    }
                }
                self.damaged = true;
                self.verified_since_damage.clear();
            }
            "unasked_symbol" => {
                if let (Some(conn), Some(symbol)) = (e.conn_id, &e.symbol) {
                    let books = self.conns.entry(conn).or_insert_with(Books::new);
                    books.unasked.insert(symbol.clone());
                }
            }
            _ => {}
        }
    }

    /// A copy of a book row whose seq comes before records of its connection already fed (its
    /// row lies further ahead than the read looks): it is reported, not replayed.
    pub fn copy_out_of_order(&mut self, row: &BookRow, copy: &CopyOf, fed_through: i64) {
        if !self.wanted(&row.symbol) {
            return;
        }
        self.differ(
            copy.seq,
            Some(&row.symbol),
            (
                StoredCopy::Dups,
                format!(
                    "copy {} on connection {} at seq {}",
                    copy.index, copy.conn_id, copy.seq
                ),
            ),
            (
                StoredCopy::Seq,
                format!(
                    "the row's first copy at seq {}, read after seq {fed_through}: a further copy comes after its row",
                    row.seq
                ),
            ),
        );
    }

    /// One copy of a book row, in its connection's order: the row's own columns are checked
    /// against each other with its first copy, the levels replayed on the copy's connection and
    /// the copy's verdict set against the replay's.
    pub fn book_copy(&mut self, row: &BookRow, copy: &CopyOf) {
        if !self.wanted(&row.symbol) {
            return;
        }
        self.count(copy.seq);
        self.report.frames += 1;
        let frame = row_frame(row);
        if copy.index == 0 {
            if let Some(levels) = &row.levels {
                self.report.levels_compared += (levels.len() / 2) as u64;
            }
            if row.raw.is_some() && row.levels.is_some() {
                self.report.raw_compared += 1;
            }
            for (a, b) in frame.found {
                self.differ(copy.seq, Some(&row.symbol), a, b);
            }
        }
        let conn = copy.conn_id;
        let counts = &mut self.report.symbols;
        let books = self.conns.entry(conn).or_insert_with(Books::new);
        let (replayed, verdict) = match &frame.data {
            Some(data) => {
                if !books.symbols.contains(data.symbol.as_ref()) {
                    books.symbols.insert(data.symbol.to_string());
                }
                apply(books, frame.kind, std::slice::from_ref(data), |s, v| {
                    tally(counts, s, v)
                })
            }
            None => {
                tally(counts, &row.symbol, None);
                (None, None)
            }
        };
        self.verdicts(row.seq, &row.symbol, copy, replayed, verdict);
    }

    /// A copy's recorded verdict against the replayed one (`verdict`: the replay's on the
    /// message's symbol, when tracked). Returns `false` when records missing before it excuse a
    /// verdict the replay cannot reproduce (nothing compared).
    fn verdicts(
        &mut self,
        row_seq: i64,
        symbol: &str,
        copy: &CopyOf,
        replayed: Option<bool>,
        verdict: Option<Verdict>,
    ) -> bool {
        let conn = copy.conn_id;
        if replayed.is_some() && self.damaged {
            self.verified_since_damage.insert(conn);
        }
        let recorded = copy.verdict;
        if replayed.is_none() && recorded.is_some() && self.excused(conn) {
            return false;
        }
        if recorded != replayed {
            let says = if copy.index == 0 {
                (StoredCopy::ChecksumOk, verdict_name(recorded))
            } else {
                (
                    StoredCopy::Dups,
                    format!(
                        "{} (copy {} on connection {conn}, of the row at seq {row_seq})",
                        verdict_name(recorded),
                        copy.index
                    ),
                )
            };
            self.differ(
                copy.seq,
                Some(symbol),
                says,
                (StoredCopy::Replayed, verdict_name(replayed)),
            );
        }
        if recorded == Some(true)
            && let Some(Verdict::Mismatch { expected, computed }) = verdict
        {
            self.differ(
                copy.seq,
                Some(symbol),
                (StoredCopy::Checksum, expected.to_string()),
                (StoredCopy::Replayed, computed.to_string()),
            );
            // The collector had this book verified here: the replay goes on from its own.
            if let Some(books) = self.conns.get_mut(&conn) {
                resume(&mut books.tracker, symbol);
            }
        }
        true
    }

    /// One `krakenbook_other` row (any channel: a frame stored whole), its frame decoded, and
    /// whether a `stored_raw` event stands beside it.
    pub fn other(&mut self, m: &OtherRow, frame: Option<&Frame<'_>>, stored_raw: bool) {
        let conn = m.conn_id.unwrap_or(-1);
        let book = match frame {
            Some(Frame::Book(book)) => book,
            other => {
                if let Some(f) = other {
                    self.observe(conn, f);
                }
                self.not_a_book(m, other);
                return;
            }
        };
        if !book.data.iter().any(|d| self.wanted(&d.symbol)) && !book.data.is_empty() {
            return;
        }
        self.count(m.seq);
        self.report.frames += 1;
        self.book_whole(m, conn, book, stored_raw);
    }

    fn observe(&mut self, conn: i64, frame: &Frame<'_>) {
        let books = self.conns.entry(conn).or_insert_with(Books::new);
        if let Frame::Ack(ack) = frame
            && ack.channel().is_none_or(|c| c == "book")
            && let Some(symbol) = ack.symbol()
        {
            if ack.is_error() {
                books.acked.remove(symbol);
            } else if ack.channel() == Some("book") {
                books.any_ack = true;
                if ack.method == "subscribe" {
                    books.acked.insert(symbol.to_owned());
                } else if ack.method == "unsubscribe" {
                    books.acked.remove(symbol);
                }
            }
        }
        books.tracker.observe(frame);
    }

    /// A row whose frame is not a book message.
    fn not_a_book(&mut self, m: &OtherRow, frame: Option<&Frame<'_>>) {
        let claims = m.claims_book();
        // With symbols picked, other frames (acks, instrument lists) only build the books.
        let picked = claims && m.symbol.as_deref().is_some_and(|s| self.wanted(s));
        if !self.symbols.is_empty() && !picked {
            return;
        }
        self.count(m.seq);
        self.report.frames += 1;
        let symbol = m.symbol.as_deref();
        let raw_says = match frame {
            Some(f) => format!("a {} frame", f.channel()),
            None if m.frame.text().is_some() => "a frame that does not decode".to_owned(),
            None => "no frame".to_owned(),
        };
        if frame.is_none() && m.message_type == "malformed" {
            self.report.undecodable += 1;
        }
        if claims {
            self.differ(
                m.seq,
                symbol,
                (
                    StoredCopy::MessageType,
                    format!("{} {}", m.channel, m.message_type),
                ),
                (StoredCopy::RawMessage, raw_says.clone()),
            );
        }
        if m.checksum_ok.is_some() && !claims {
            self.differ(
                m.seq,
                symbol,
                (StoredCopy::ChecksumOk, verdict_name(m.checksum_ok)),
                (StoredCopy::RawMessage, raw_says),
            );
        }
    }

    /// A book frame stored whole in `krakenbook_other`: its columns against its frame, its
    /// levels replayed from the frame.
    fn book_whole(&mut self, m: &OtherRow, conn: i64, book: &BookMessage<'_>, stored_raw: bool) {
        let seq = m.seq;
        let first = book.data.first();
        let symbol = first.map(|d| d.symbol.as_ref());
        // The writer's fallback when the database refused the rows: the frame as received in
        // raw_text or raw_bytes, and nothing decoded from it (no symbol or checksum).
        let as_received = stored_raw && !matches!(m.frame, StoredFrame::Json(_));
        if stored_raw {
            self.report.stored_raw += 1;
        }

        if m.channel != "book" || m.message_type != book.kind.as_str() {
            self.differ(
                seq,
                symbol,
                (
                    StoredCopy::MessageType,
                    if m.channel == "book" {
                        m.message_type.clone()
                    } else {
                        format!("{} {}", m.channel, m.message_type)
                    },
                ),
                (StoredCopy::RawMessage, book.kind.as_str().to_owned()),
            );
        }
        if !(as_received && m.symbol.is_none()) && m.symbol.as_deref() != symbol {
            self.differ(
                seq,
                symbol,
                (StoredCopy::Symbol, optional(m.symbol.as_deref())),
                (StoredCopy::RawMessage, optional(symbol)),
            );
        }
        let raw_checksum = first.map(|d| i64::from(d.checksum));
        if !(as_received && m.checksum.is_none()) && m.checksum != raw_checksum {
            self.differ(
                seq,
                symbol,
                (StoredCopy::Checksum, optional(m.checksum)),
                (StoredCopy::RawMessage, optional(raw_checksum)),
            );
        }
        let raw_time = match first.and_then(|d| d.timestamp) {
            Some(t) if !as_received => t,
            _ => m.received_at,
        };
        if m.timestamp.pg_micros() != raw_time.pg_micros() {
            self.differ(
                seq,
                symbol,
                (StoredCopy::Timestamp, m.timestamp.to_string()),
                (StoredCopy::RawMessage, raw_time.to_string()),
            );
        }

        let counts = &mut self.report.symbols;
        let books = self.conns.entry(conn).or_insert_with(Books::new);
        for d in &book.data {
            if !books.symbols.contains(d.symbol.as_ref()) {
                books.symbols.insert(d.symbol.to_string());
            }
        }
        let (replayed, verdict) = apply(books, book.kind, &book.data, |s, v| tally(counts, s, v));
        let tracked_first = symbol.is_some_and(|s| books.tracked(s));
        let after: Option<&OrderBook> = symbol
            .filter(|_| tracked_first)
            .and_then(|s| books.tracker.synced_book(s));
        let best = [
            after.and_then(OrderBook::best_bid),
            after.and_then(OrderBook::best_ask),
        ];
        let copy = CopyOf {
            index: 0,
            seq,
            conn_id: conn,
            verdict: m.checksum_ok,
        };
        if !self.verdicts(seq, symbol.unwrap_or(""), &copy, replayed, verdict) {
            // Records missing before it: its best levels cannot be known either.
            return;
        }
        for ((copy, stored), replayed) in [
            (StoredCopy::BestBid, &m.best_bid),
            (StoredCopy::BestAsk, &m.best_ask),
        ]
        .into_iter()
        .zip(best)
        {
            if !same_level(stored, replayed.as_ref()) {
                self.differ(
                    seq,
                    symbol,
                    (copy, stored_level(stored)),
                    (StoredCopy::Replayed, level_text(replayed.as_ref())),
                );
            }
        }
    }

    /// A book state: compared with the book replayed at its place; a book not known there starts
    /// again from it.
    pub fn state(&mut self, st: &StateRow) {
        if !self.wanted(&st.symbol) {
            return;
        }
        self.count(st.seq);
        self.report
            .symbols
            .entry(st.symbol.clone())
            .or_default()
            .states += 1;
        let levels = parse_state(st);
        let books = self.conns.entry(st.conn_id).or_insert_with(Books::new);
        // The collector journals states of the books it tracks only.
        if !books.acked.contains(&st.symbol) {
            books.acked.insert(st.symbol.clone());
        }
        let found = match books.tracker.synced_book(&st.symbol) {
            Some(book) => compare_state(st, &levels, book),
            None => {
                // The book is not known here: after missing records that is expected; otherwise
                // the replay lost it where the collector had it verified.
                if let Ok((bids, asks)) = &levels {
                    books.symbols.insert(st.symbol.clone());
                    seed(&mut books.tracker, st, bids, asks);
                }
                let known = books.tracker.synced_book(&st.symbol).is_some();
                let excused = self.excused(st.conn_id);
                if self.damaged && known {
                    self.verified_since_damage.insert(st.conn_id);
                }
                (!excused).then(|| {
                    (
                        format!("a verified book (checksum {})", st.checksum),
                        "no verified book at this seq".to_owned(),
                    )
                })
            }
        };
        if let Some((state_says, book_says)) = found {
            self.differ(
                st.seq,
                Some(&st.symbol),
                (StoredCopy::BookState, state_says),
                (StoredCopy::Replayed, book_says),
            );
        }
    }
}

/// Counts one symbol's verdict of a replayed copy.
fn tally(
    counts: &mut std::collections::BTreeMap<String, super::engine::SymbolReplay>,
    symbol: &str,
    v: Option<Verdict>,
) {
    let sr = match counts.get_mut(symbol) {
        Some(sr) => sr,
        None => counts.entry(symbol.to_owned()).or_default(),
    };
    sr.book_messages += 1;
    match v {
        Some(Verdict::Ok) => sr.ok += 1,
        Some(Verdict::Mismatch { .. }) => sr.mismatches += 1,
        Some(Verdict::Unsynced) | None => sr.unverifiable += 1,
    }
}

/// Applies one message's data to a connection's books (symbols the collector tracked), calling
/// `each` with every symbol's verdict (`None`: not tracked); returns the message's folded verdict
/// and its first symbol's.
fn apply(
    books: &mut Books,
    kind: BookKind,
    data: &[BookData<'_>],
    mut each: impl FnMut(&str, Option<Verdict>),
) -> (Option<bool>, Option<Verdict>) {
    let mut folded = FrameVerdict::default();
    let mut first = None;
    for (i, d) in data.iter().enumerate() {
        if !books.tracked(&d.symbol) {
            each(&d.symbol, None);
            continue;
        }
        let v = books.tracker.apply(kind, d);
        folded.add(v);
        if i == 0 {
            first = Some(v);
        }
        each(&d.symbol, Some(v));
    }
    (folded.checksum_ok(), first)
}

/// Takes `symbol`'s book as verified again after a mismatch the collector did not see: the book
/// after the message, as it is (a book the engine had to clear is left unknown).
fn resume(tracker: &mut Tracker, symbol: &str) {
    let Some(book) = tracker.book(symbol) else {
        return;
    };
    if book.bids().next().is_none() && book.asks().next().is_none() {
        return;
    }
    let view = book.view(book.depth());
    let data = BookData {
        symbol: Cow::Borrowed(symbol),
        bids: view.bids.iter().map(|l| level(l.price, l.qty)).collect(),
        asks: view.asks.iter().map(|l| level(l.price, l.qty)).collect(),
        checksum: book.checksum(),
        timestamp: None,
    };
    tracker.apply(BookKind::Snapshot, &data);
}

/// Starts `symbol`'s book again from a book state.
fn seed(
    tracker: &mut Tracker,
    st: &StateRow,
    bids: &[(Decimal, Decimal)],
    asks: &[(Decimal, Decimal)],
) {
    if let Ok(depth) = usize::try_from(st.depth) {
        tracker.set_depth(&st.symbol, depth);
    }
    if let (Ok(price), Ok(qty)) = (
        u8::try_from(st.price_precision),
        u8::try_from(st.qty_precision),
    ) {
        tracker.set_precision(&st.symbol, Precision { price, qty });
    }
    let data = BookData {
        symbol: Cow::Borrowed(&st.symbol),
        bids: bids.iter().map(|&(p, q)| level(p, q)).collect(),
        asks: asks.iter().map(|&(p, q)| level(p, q)).collect(),
        checksum: u32::try_from(st.checksum).unwrap_or(0),
        timestamp: None,
    };
    tracker.apply(BookKind::Snapshot, &data);
}

fn level(price: Decimal, qty: Decimal) -> Level<'static> {
    Level {
        price: WireDecimal {
            value: price,
            text: "",
        },
        qty: WireDecimal {
            value: qty,
            text: "",
        },
    }
}

/// Whether two decimals are the same text: the same value at the same scale.
fn exact(a: Decimal, b: Decimal) -> bool {
    a.mantissa() == b.mantissa() && a.scale() == b.scale()
}

fn optional<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

fn stored_decimal(v: &Option<StoredDecimal>) -> String {
    match v {
        None => "null".into(),
        Some(Ok(d)) => d.to_string(),
        Some(Err(e)) => format!("not a decimal ({e})"),
    }
}

fn stored_level(v: &[Option<StoredDecimal>; 2]) -> String {
    match v {
        [None, None] => "none".into(),
        [p, q] => format!("{} x {}", stored_decimal(p), stored_decimal(q)),
    }
}

fn level_text(l: Option<&PriceLevel>) -> String {
    l.map_or_else(|| "none".to_owned(), |l| format!("{} x {}", l.price, l.qty))
}

fn same_level(stored: &[Option<StoredDecimal>; 2], replayed: Option<&PriceLevel>) -> bool {
    match (stored, replayed) {
        ([None, None], None) => true,
        ([Some(Ok(p)), Some(Ok(q))], Some(l)) => exact(*p, l.price) && exact(*q, l.qty),
        _ => false,
    }
}

/// A book state's levels: bids and asks as exact decimals.
type StateLevels = Result<(Vec<(Decimal, Decimal)>, Vec<(Decimal, Decimal)>), String>;

fn parse_state(st: &StateRow) -> StateLevels {
    Ok((
        crate::readback::parse_levels(&st.bids)?,
        crate::readback::parse_levels(&st.asks)?,
    ))
}

/// The first difference between a book state and the replayed book, as what each says; `None`
/// when they are the same book: every level (exact text), the checksum, depth and precision.
pub fn compare_state(
    st: &StateRow,
    levels: &StateLevels,
    book: &OrderBook,
) -> Option<(String, String)> {
    let (bids, asks) = match levels {
        Ok(l) => l,
        Err(e) => return Some((format!("levels that do not parse ({e})"), "a book".into())),
    };
    let view = book.view(book.depth());
    for (side, stored, rebuilt) in [("bid", bids, &view.bids), ("ask", asks, &view.asks)] {
        for k in 0..stored.len().max(rebuilt.len()) {
            let s = stored.get(k);
            let r = rebuilt.get(k);
            let same = match (s, r) {
                (Some((p, q)), Some(l)) => exact(*p, l.price) && exact(*q, l.qty),
                _ => false,
            };
            if !same {
                let said = |l: Option<String>| l.unwrap_or_else(|| "nothing".into());
                return Some((
                    format!(
                        "{side} level {}: {}",
                        k + 1,
                        said(s.map(|(p, q)| format!("{p} x {q}")))
                    ),
                    format!(
                        "{side} level {}: {}",
                        k + 1,
                        said(r.map(|l| format!("{} x {}", l.price, l.qty)))
                    ),
                ));
            }
        }
    }
    if st.checksum != i64::from(book.checksum()) {
        return Some((
            format!("checksum {}", st.checksum),
            format!("checksum {}", book.checksum()),
        ));
    }
    if usize::try_from(st.depth).ok() != Some(book.depth()) {
        return Some((
            format!("depth {}", st.depth),
            format!("depth {}", book.depth()),
        ));
    }
    let p = book.precision();
    if (st.price_precision, st.qty_precision) != (i16::from(p.price), i16::from(p.qty)) {
        return Some((
            format!("precision {}/{}", st.price_precision, st.qty_precision),
            format!("precision {}/{}", p.price, p.qty),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordBody;
    use crate::store::book_rows::{canonical, levels_dec64, pack_dup, row_rebuilds};
    use krakenbook_testkit::capture::read_capture;

    /// A row as the writer stores it: in the book table, or whole in `krakenbook_other`.
    #[derive(Clone, Debug)]
    #[allow(clippy::large_enum_variant)] // a test's few thousand rows
    enum Stored {
        Book(BookRow),
        Other(OtherRow),
    }

    impl Stored {
        fn book(&mut self) -> &mut BookRow {
            match self {
                Stored::Book(b) => b,
                Stored::Other(m) => panic!("not a book row: {m:?}"),
            }
        }
    }

    /// The rows the writer stores for a real capture (heartbeats are not stored), on connection 1,
    /// as `book_rows` encodes them: levels as dec64, the frame kept only when it is not in
    /// Kraken's layout.
    fn stored(name: &str) -> Vec<Stored> {
        let path = krakenbook_testkit::fixtures().join("kraken-v2").join(name);
        let mut out = Vec::new();
        for r in read_capture(&path, &mut 1, 1).unwrap() {
            let RecordBody::Frame(f) = &r.body else {
                continue;
            };
            let text = std::str::from_utf8(&f.bytes).unwrap();
            let frame = kraken::decode(text).unwrap();
            let seq = r.seq as i64;
            match &frame {
                Frame::Heartbeat => continue,
                Frame::Book(b) if b.data.len() == 1 => {
                    let d = &b.data[0];
                    let levels = levels_dec64(&d.bids, &d.asks);
                    let rebuilt = levels.is_some() && row_rebuilds(b.kind, d, &f.bytes);
                    out.push(Stored::Book(BookRow {
                        seq,
                        conn_id: 1,
                        timestamp: d.timestamp.unwrap_or(r.received_at),
                        received_at: r.received_at,
                        checksum: Some(d.checksum as i32),
                        n_bids: d.bids.len() as i16,
                        kind: if b.kind == BookKind::Snapshot {
                            b's'
                        } else {
                            b'u'
                        } as i8,
                        checksum_ok: f.checksum_ok,
                        symbol: d.symbol.to_string(),
                        levels: levels.map(|l| l.into_iter().map(Some).collect()),
                        raw: (!rebuilt).then(|| text.to_owned()),
                        dups: Vec::new(),
                    }));
                }
                _ => {
                    let level = |l: Option<PriceLevel>| match l {
                        Some(l) => [Some(Ok(l.price)), Some(Ok(l.qty))],
                        None => [None, None],
                    };
                    let message_type = match &frame {
                        Frame::Ack(a) => a.method.to_string(),
                        _ => "status".into(),
                    };
                    out.push(Stored::Other(OtherRow {
                        seq,
                        conn_id: Some(1),
                        timestamp: r.received_at,
                        received_at: r.received_at,
                        channel: frame.channel().to_owned(),
                        message_type,
                        symbol: None,
                        checksum: None,
                        checksum_ok: f.checksum_ok,
                        frame: StoredFrame::Json(text.to_owned()),
                        best_bid: level(f.best_bid),
                        best_ask: level(f.best_ask),
                    }));
                }
            }
        }
        out
    }

    /// The same rows as a collector with two connections stores them: every frame received on
    /// connection 1 at seq 2s and on connection 2 at seq 2s + 1; a book message is one row, its
    /// second copy packed in `dups`.
    fn doubled(rows: &[Stored]) -> Vec<Stored> {
        let mut out = Vec::new();
        for s in rows {
            match s {
                Stored::Book(b) => {
                    let mut b = b.clone();
                    b.seq *= 2;
                    b.dups = vec![pack_dup(1, 1, b.checksum_ok, 250)];
                    out.push(Stored::Book(b));
                }
                Stored::Other(m) => {
                    let mut first = m.clone();
                    first.seq *= 2;
                    let mut second = first.clone();
                    second.seq += 1;
                    second.conn_id = Some(2);
                    out.push(Stored::Other(first));
                    out.push(Stored::Other(second));
                }
            }
        }
        out
    }

    /// Feeds every copy and frame in seq order, as `db.rs` does (`stored_raw`: the seqs with a
    /// `stored_raw` event).
    fn feed_all(v: &mut CopyVerifier, rows: &[Stored], stored_raw: &[i64]) {
        let mut items: Vec<(i64, usize, Option<CopyOf>)> = Vec::new();
        for (i, s) in rows.iter().enumerate() {
            match s {
                Stored::Book(b) => items.extend(b.copies().map(|c| (c.seq, i, Some(c)))),
                Stored::Other(m) => items.push((m.seq, i, None)),
            }
        }
        items.sort_by_key(|(seq, ..)| *seq);
        for (_, i, copy) in items {
            match (&rows[i], copy) {
                (Stored::Book(b), Some(c)) => v.book_copy(b, &c),
                (Stored::Other(m), _) => {
                    v.other(m, m.decode().as_ref(), stored_raw.contains(&m.seq));
                }
                (Stored::Book(_), None) => unreachable!(),
            }
        }
    }

    fn verify(rows: &[Stored]) -> ReplayReport {
        let mut v = CopyVerifier::new(&[]);
        v.begin_collector("test");
        feed_all(&mut v, rows, &[]);
        v.finish()
    }

    /// The index of the `n`th verified update whose first level is a bid that stays the best bid
    /// (in the checksum's top ten).
    fn update_at_top(rows: &[Stored], n: usize) -> usize {
        let mut books = Tracker::new(10);
        let mut found = Vec::new();
        for (i, s) in rows.iter().enumerate() {
            let b = match s {
                Stored::Book(b) => b,
                Stored::Other(m) => {
                    if let Some(f) = m.decode() {
                        books.observe(&f);
                    }
                    continue;
                }
            };
            let frame = row_frame(b);
            let data = frame.data.unwrap();
            books.apply(frame.kind, &data);
            let best = books.synced_book(&b.symbol).and_then(OrderBook::best_bid);
            if b.kind == b'u' as i8
                && b.checksum_ok == Some(true)
                && data
                    .bids
                    .first()
                    .zip(best)
                    .is_some_and(|(l, best)| l.price.value == best.price && !l.qty.value.is_zero())
            {
                found.push(i);
            }
        }
        found[n]
    }

    /// The first disagreement is at `seq`, of the collector and symbol; one at `seq` is between
    /// `copies`.
    fn caught(report: &ReplayReport, seq: i64, copies: [&str; 2], what: &str) {
        assert!(!report.is_clean(), "{what}: not caught");
        let first = &report.disagreements[0];
        assert_eq!(first.seq, seq as u64, "{what}: {:?}", report.disagreements);
        assert_eq!(first.collector.as_deref(), Some("test"), "{what}");
        assert_eq!(first.symbol.as_deref(), Some("BTC/USD"), "{what}");
        assert!(
            report
                .disagreements
                .iter()
                .any(|d| d.seq == seq as u64 && d.copies == copies),
            "{what}: no {copies:?} in {:?}",
            report.disagreements
        );
    }

    #[test]
    fn a_real_capture_stored_faithfully_has_no_disagreement() {
        for name in [
            "kraken_btcusd_d10_20260816.ndjson",
            "kraken_btcusd_d100_20260816.ndjson",
            "kraken_minagbp_d25_resync_20260818.ndjson",
        ] {
            let rows = stored(name);
            let report = verify(&rows);
            assert!(report.is_clean(), "{name}: {:?}", report.disagreements);
            let books: Vec<&BookRow> = rows
                .iter()
                .filter_map(|s| match s {
                    Stored::Book(b) => Some(b),
                    Stored::Other(_) => None,
                })
                .collect();
            assert_eq!(report.book_messages(), books.len() as u64, "{name}");
            assert_eq!(
                report.levels_compared,
                books
                    .iter()
                    .map(|b| b.levels.as_ref().unwrap().len() as u64 / 2)
                    .sum::<u64>()
            );
            let ok = books.iter().filter(|b| b.checksum_ok == Some(true)).count();
            assert_eq!(
                report.symbols.values().map(|s| s.ok).sum::<u64>(),
                ok as u64
            );
            // Kraken's frames are in its own layout: no raw frame is stored beside the levels.
            assert!(books.iter().all(|b| b.raw.is_none()), "{name}");
        }
    }

    /// Each stored copy of one message altered in turn: the first disagreement is at its seq,
    /// between the copies named.
    #[test]
    fn each_altered_copy_is_reported_at_its_seq_between_the_right_copies() {
        type Tamper = fn(&mut BookRow);
        let cases: Vec<(&str, Tamper, [&str; 2], Option<u64>)> = vec![
            (
                "the quantity of the first level (in the top ten)",
                |b| {
                    let q = undec64(b.levels.as_ref().unwrap()[1].unwrap()).unwrap();
                    let more = q.checked_add(Decimal::parse("1").unwrap()).unwrap();
                    b.levels.as_mut().unwrap()[1] = crate::store::book_rows::dec64(more);
                },
                ["checksum_ok", "replayed book"],
                None,
            ),
            (
                "the price scale of the first level (the same value, other text)",
                |b| {
                    let v = b.levels.as_mut().unwrap();
                    let p = undec64(v[0].unwrap()).unwrap();
                    v[0] = crate::store::book_rows::dec64(p.with_scale(p.scale() + 1).unwrap());
                },
                ["checksum", "replayed book"],
                None,
            ),
            (
                "the checksum column",
                |b| b.checksum = b.checksum.map(|c| c.wrapping_add(1)),
                ["checksum", "replayed book"],
                // The verdict and the checksum, once: the replay goes on from its book.
                Some(2),
            ),
            (
                "checksum_ok",
                |b| b.checksum_ok = Some(false),
                ["checksum_ok", "replayed book"],
                Some(1),
            ),
            (
                "the kind",
                |b| b.kind = b's' as i8,
                ["checksum_ok", "replayed book"],
                None,
            ),
            (
                "a level value that is not dec64",
                |b| b.levels.as_mut().unwrap()[0] = Some(-5),
                ["levels", "levels"],
                None,
            ),
            (
                "a level set to null",
                |b| b.levels.as_mut().unwrap()[1] = None,
                ["levels", "levels"],
                None,
            ),
            ("n_bids", |b| b.n_bids += 1, ["levels", "levels"], None),
        ];
        let clean = stored("kraken_btcusd_d10_20260816.ndjson");
        let at = update_at_top(&clean, 20);
        for (what, tamper, copies, count) in cases {
            let mut rows = clean.clone();
            let b = rows[at].book();
            tamper(b);
            let seq = b.seq;
            let report = verify(&rows);
            caught(&report, seq, copies, what);
            if let Some(n) = count {
                assert_eq!(
                    report.disagreement_count, n,
                    "{what}: {:?}",
                    report.disagreements
                );
            }
        }
    }

    #[test]
    fn a_raw_frame_stored_beside_its_levels_must_say_the_same() {
        let clean = stored("kraken_btcusd_d10_20260816.ndjson");
        let at = update_at_top(&clean, 7);
        // A frame not in Kraken's layout (a space): the writer keeps it beside the levels.
        let mut rows = clean.clone();
        let b = rows[at].book();
        let text = row_text(b).replacen(r#""bids":"#, r#""bids": "#, 1);
        b.raw = Some(text.clone());
        let seq = b.seq;
        let report = verify(&rows);
        assert!(report.is_clean(), "{:?}", report.disagreements);
        assert_eq!(report.raw_compared, 1);
        type Tamper = fn(&mut BookRow, &str);
        let cases: Vec<(&str, Tamper, [&str; 2])> = vec![
            (
                "a quantity inside raw",
                |b, t| {
                    let at = t.find(r#""qty":"#).unwrap() + 6;
                    b.raw = Some(bump_number_end(t, at));
                },
                ["raw", "levels"],
            ),
            (
                "a quantity in levels",
                |b, _| {
                    let v = b.levels.as_mut().unwrap();
                    v[1] = v[1].map(|q| q + 32 * 7);
                },
                ["raw", "levels"],
            ),
            (
                "the checksum inside raw",
                |b, t| {
                    let c = b.checksum.unwrap() as u32;
                    b.raw = Some(t.replace(
                        &format!(r#""checksum":{c}"#),
                        &format!(r#""checksum":{}"#, c.wrapping_add(1)),
                    ));
                },
                ["raw", "checksum"],
            ),
            (
                "the symbol inside raw",
                |b, t| b.raw = Some(t.replace("BTC/USD", "ETH/USD")),
                ["raw", "symbol"],
            ),
            (
                "raw that is not a book frame",
                |b, _| b.raw = Some(r#"{"channel":"status","type":"update","data":[]}"#.into()),
                ["raw", "kind"],
            ),
        ];
        for (what, tamper, copies) in cases {
            let mut rows = rows.clone();
            tamper(rows[at].book(), &text);
            caught(&verify(&rows), seq, copies, what);
        }
    }

    /// A row's frame as the view would render it (Kraken's layout).
    fn row_text(b: &BookRow) -> String {
        let frame = row_frame(b);
        let data = frame.data.unwrap();
        let owned: Vec<(String, String)> = data
            .bids
            .iter()
            .chain(&data.asks)
            .map(|l| (l.price.value.to_string(), l.qty.value.to_string()))
            .collect();
        let levels: Vec<Level<'_>> = owned
            .iter()
            .zip(data.bids.iter().chain(&data.asks))
            .map(|((p, q), l)| Level {
                price: WireDecimal {
                    value: l.price.value,
                    text: p,
                },
                qty: WireDecimal {
                    value: l.qty.value,
                    text: q,
                },
            })
            .collect();
        let (bids, asks) = levels.split_at(data.bids.len());
        let with_text = BookData {
            bids: bids.to_vec(),
            asks: asks.to_vec(),
            ..data
        };
        canonical(frame.kind, &with_text).unwrap()
    }

    /// `text` with the last digit of the number that starts at `at` changed.
    fn bump_number_end(text: &str, at: usize) -> String {
        let end = at + text[at..].find([',', '}']).unwrap();
        let mut b = text.as_bytes().to_vec();
        b[end - 1] = if b[end - 1] == b'1' { b'2' } else { b'1' };
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn a_row_without_levels_replays_from_its_raw_frame_and_its_columns_must_agree() {
        let clean = stored("kraken_btcusd_d10_20260816.ndjson");
        let at = update_at_top(&clean, 9);
        // Values beyond dec64: the writer keeps the frame alone (here the same frame, to replay).
        let mut rows = clean.clone();
        let b = rows[at].book();
        b.raw = Some(row_text(b));
        b.levels = None;
        let seq = b.seq;
        let report = verify(&rows);
        assert!(report.is_clean(), "{:?}", report.disagreements);
        type Tamper = fn(&mut BookRow);
        let cases: Vec<(&str, Tamper, [&str; 2])> = vec![
            ("n_bids", |b| b.n_bids += 1, ["raw", "levels"]),
            (
                "the checksum column",
                |b| b.checksum = b.checksum.map(|c| c ^ 1),
                ["raw", "checksum"],
            ),
            (
                "the timestamp column",
                |b| b.timestamp = b.timestamp.add_nanos(1000),
                ["raw", "timestamp"],
            ),
            ("the kind", |b| b.kind = b's' as i8, ["raw", "kind"]),
            (
                "a quantity inside raw",
                |b| {
                    let t = b.raw.clone().unwrap();
                    let at = t.find(r#""qty":"#).unwrap() + 6;
                    b.raw = Some(bump_number_end(&t, at));
                },
                ["checksum_ok", "replayed book"],
            ),
        ];
        for (what, tamper, copies) in cases {
            let mut rows = rows.clone();
            tamper(rows[at].book());
            caught(&verify(&rows), seq, copies, what);
        }
    }

    #[test]
    fn every_copy_on_another_connection_is_replayed_on_its_own_books_and_its_verdict_checked() {
        let clean = doubled(&stored("kraken_btcusd_d10_20260816.ndjson"));
        let report = verify(&clean);
        assert!(report.is_clean(), "{:?}", report.disagreements);
        let rows = clean
            .iter()
            .filter(|s| matches!(s, Stored::Book(_)))
            .count() as u64;
        assert_eq!(report.book_messages(), 2 * rows, "each copy replayed");
        let at = update_at_top(&clean, 12);
        let (row_seq, dup_seq) = {
            let b = clean[at].clone().book().clone();
            (b.seq, b.seq + 1)
        };
        // The second copy's verdict bits say mismatch: reported at that copy's seq, alone.
        let mut rows = clean.clone();
        let b = rows[at].book();
        b.dups = vec![pack_dup(1, 1, Some(false), 250)];
        let report = verify(&rows);
        caught(
            &report,
            dup_seq,
            ["dups", "replayed book"],
            "a dup's verdict",
        );
        assert_eq!(report.disagreement_count, 1, "{:?}", report.disagreements);
        let d = &report.disagreements[0];
        assert_eq!(
            d.recorded,
            format!("mismatch (copy 1 on connection 2, of the row at seq {row_seq})")
        );
        assert_eq!(d.replayed, "ok");
        // The first copy's verdict is its own.
        let mut rows = clean.clone();
        rows[at].book().checksum_ok = None;
        caught(
            &verify(&rows),
            row_seq,
            ["checksum_ok", "replayed book"],
            "the first copy's verdict",
        );
        // A copy said to be on a connection that has no book (connection 3): unverifiable there.
        let mut rows = clean.clone();
        rows[at].book().dups = vec![pack_dup(2, 1, Some(true), 250)];
        caught(
            &verify(&rows),
            dup_seq,
            ["dups", "replayed book"],
            "a dup's connection",
        );
        // A null copy.
        let mut rows = clean.clone();
        rows[at].book().dups = vec![None];
        caught(&verify(&rows), row_seq, ["dups", "seq"], "a null dup");
    }

    #[test]
    fn a_copy_read_after_its_place_in_the_stream_is_reported() {
        let rows = doubled(&stored("kraken_btcusd_d10_20260816.ndjson"));
        let mut b = match &rows[update_at_top(&rows, 3)] {
            Stored::Book(b) => b.clone(),
            Stored::Other(_) => unreachable!(),
        };
        b.dups = vec![pack_dup(1, -40, Some(true), -250)];
        let copy = b.copies().nth(1).unwrap();
        let mut v = CopyVerifier::new(&[]);
        v.begin_collector("test");
        v.copy_out_of_order(&b, &copy, b.seq - 1);
        let d = &v.report().disagreements[0];
        assert_eq!(d.seq, (b.seq - 40) as u64);
        assert_eq!(d.copies, ["dups", "seq"]);
    }

    #[test]
    fn a_frame_stored_as_received_after_a_refusal_is_checked_against_its_event() {
        let clean = stored("kraken_btcusd_d10_20260816.ndjson");
        let at = update_at_top(&clean, 5);
        // Stored as received after the database refused its rows: raw_text in krakenbook_other,
        // no symbol or checksum, its time the receive time.
        let mut rows = clean.clone();
        let b = rows[at].book().clone();
        let seq = b.seq;
        let best = {
            let mut v = CopyVerifier::new(&[]);
            v.begin_collector("test");
            feed_all(&mut v, &clean[..=at], &[]);
            let book = v.conns[&1].tracker.synced_book("BTC/USD").unwrap().clone();
            let level = |l: Option<PriceLevel>| l.map(|l| [Some(Ok(l.price)), Some(Ok(l.qty))]);
            [
                level(book.best_bid()).unwrap(),
                level(book.best_ask()).unwrap(),
            ]
        };
        let [best_bid, best_ask] = best;
        rows[at] = Stored::Other(OtherRow {
            seq,
            conn_id: Some(1),
            timestamp: b.received_at,
            received_at: b.received_at,
            channel: "book".into(),
            message_type: "update".into(),
            symbol: None,
            checksum: None,
            checksum_ok: b.checksum_ok,
            frame: StoredFrame::Text(row_text(&b)),
            best_bid,
            best_ask,
        });
        let mut v = CopyVerifier::new(&[]);
        v.begin_collector("test");
        feed_all(&mut v, &rows, &[seq]);
        let report = v.finish();
        assert!(report.is_clean(), "{:?}", report.disagreements);
        assert_eq!(report.stored_raw, 1);
        // Its best bid changed: reported against the replayed book.
        let mut tampered = rows.clone();
        if let Stored::Other(m) = &mut tampered[at] {
            m.best_bid[1] = Some(Ok(Decimal::parse("1.23456789").unwrap()));
        }
        let mut v = CopyVerifier::new(&[]);
        v.begin_collector("test");
        feed_all(&mut v, &tampered, &[seq]);
        caught(&v.finish(), seq, ["best_bid", "replayed book"], "best_bid");
        // Without its event, the missing symbol is a disagreement.
        let report = verify(&rows);
        assert!(
            report
                .disagreements
                .iter()
                .any(|d| d.seq == seq as u64 && d.copies == ["symbol", "raw_message"]),
            "{:?}",
            report.disagreements
        );
    }

    #[test]
    fn frames_of_a_symbol_never_asked_for_have_no_verdict_and_are_not_disagreements() {
        let clean = stored("kraken_btcusd_d10_20260816.ndjson");
        let at = update_at_top(&clean, 5);
        // The peer slips in another symbol's snapshot and update: the collector never tracked
        // them (no subscription ack for it on the connection), so they carry no verdict.
        let snapshot = clean
            .iter()
            .position(|s| matches!(s, Stored::Book(b) if b.kind == b's' as i8))
            .unwrap();
        let mut rows = clean[..at].to_vec();
        for (k, i) in [snapshot, at].into_iter().enumerate() {
            let mut b = clean[i].clone().book().clone();
            b.symbol = "XBT/EUR".into();
            b.seq = clean[at].clone().book().seq * 10 + k as i64;
            b.checksum_ok = None;
            rows.push(Stored::Book(b));
        }
        rows.extend(clean[at..].iter().cloned());
        let report = verify(&rows);
        assert!(report.is_clean(), "{:?}", report.disagreements);
        assert_eq!(report.symbols["XBT/EUR"].unverifiable, 2);
        // Had the collector tracked it (a verdict recorded), the replay would say otherwise.
        let mut tracked = rows.clone();
        let i = tracked
            .iter()
            .position(|s| matches!(s, Stored::Book(b) if b.symbol == "XBT/EUR"))
            .unwrap();
        tracked[i].book().checksum_ok = Some(true);
        let report = verify(&tracked);
        assert_eq!(
            report.disagreements[0].copies,
            ["checksum_ok", "replayed book"]
        );
    }

    /// A state of the book replayed through `rows[..=at]`, with its bids as given.
    fn state_after(rows: &[Stored], at: usize, bids: impl Fn(&mut Vec<PriceLevel>)) -> StateRow {
        let mut v = CopyVerifier::new(&[]);
        v.begin_collector("test");
        feed_all(&mut v, &rows[..=at], &[]);
        let book = v.conns[&1].tracker.synced_book("BTC/USD").unwrap().clone();
        let view = book.view(book.depth());
        let mut b = view.bids.clone();
        bids(&mut b);
        let json = crate::store::rows::levels_json;
        let row = match &rows[at] {
            Stored::Book(b) => b,
            Stored::Other(_) => unreachable!(),
        };
        StateRow {
            seq: row.seq + 1,
            conn_id: 1,
            symbol: "BTC/USD".into(),
            timestamp: row.timestamp,
            depth: book.depth() as i32,
            price_precision: i16::from(book.precision().price),
            qty_precision: i16::from(book.precision().qty),
            checksum: i64::from(book.checksum()),
            bids: json(&b),
            asks: json(&view.asks),
        }
    }

    #[test]
    fn a_book_state_is_compared_level_by_level_beyond_the_checksum() {
        let rows = stored("kraken_btcusd_d100_20260816.ndjson");
        let at = update_at_top(&rows, 10);
        let mut v = CopyVerifier::new(&[]);
        v.begin_collector("test");
        feed_all(&mut v, &rows[..=at], &[]);
        v.state(&state_after(&rows, at, |_| {}));
        assert!(v.report().is_clean(), "{:?}", v.report().disagreements);
        // Level 60 changed: the checksum (top ten) is the same, the state is not.
        v.state(&state_after(&rows, at, |b| {
            b[59].qty = Decimal::parse("7.77700000").unwrap();
        }));
        let d = &v.report().disagreements[0];
        assert_eq!(d.copies, ["kraken_book_states", "replayed book"]);
        assert!(d.recorded.starts_with("bid level 60: "), "{d:?}");
    }

    #[test]
    fn a_level_changed_below_the_top_ten_is_caught_by_the_next_book_state() {
        let clean = stored("kraken_btcusd_d100_20260816.ndjson");
        let snapshot = clean
            .iter()
            .position(|s| matches!(s, Stored::Book(b) if b.kind == b's' as i8))
            .unwrap();
        let at = update_at_top(&clean, 10);
        let state = state_after(&clean, at, |_| {});
        // A bid of the snapshot below the top ten, its quantity changed in levels only, where no
        // checksum covers it; the first such change that the updates after it leave in the book.
        let levels = clean[snapshot].clone().book().levels.clone().unwrap();
        for k in 10..levels.len() / 2 {
            let mut rows = clean.clone();
            let v = rows[snapshot].book().levels.as_mut().unwrap();
            v[2 * k + 1] = v[2 * k + 1].map(|q| q + 32 * 3);
            let mut verifier = CopyVerifier::new(&[]);
            verifier.begin_collector("test");
            feed_all(&mut verifier, &rows[..=at], &[]);
            if !verifier.report().is_clean() {
                // It rose into the top ten: the checksums saw it.
                continue;
            }
            verifier.state(&state);
            let Some(d) = verifier.report().disagreements.first() else {
                continue;
            };
            assert_eq!(d.seq, state.seq as u64);
            assert_eq!(d.copies, ["kraken_book_states", "replayed book"]);
            assert!(d.recorded.starts_with("bid level "), "{d:?}");
            return;
        }
        panic!("no change of the snapshot below the top ten lasts until the state");
    }
}
