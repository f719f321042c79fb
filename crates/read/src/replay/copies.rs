//! Every stored copy of a book message checked against the others: the decisions of `replay
//! --verify` over the database, without I/O (`db.rs` reads the rows and feeds them here in `seq`
//! order).
//!
//! The database holds each book message several times over, and each copy is one comparison here,
//! named by the two [`StoredCopy`]s it sets against each other:
//! - the frame itself: `raw_message` (or `raw_text`/`raw_bytes` where the writer stored it raw),
//!   decoded with the project's decoder ([`kraken::decode`]): the reference every other copy of the
//!   message is compared with;
//! - its `kraken_orderbook_entries` rows, in `ordinal` order: symbol, side, price and quantity
//!   (exact decimal text: value and scale), message type and checksum, and their count, against
//!   the raw levels ([`compare_entries`]);
//! - the messages row's columns: `message_type` (and `channel`), `symbol`, `checksum` and
//!   `timestamp` against the raw message; `checksum_ok` against the verdict the book engine
//!   recomputes; `best_bid_price/qty` and `best_ask_price/qty` against the rebuilt book after the
//!   message;
//! - the two rebuilt books: one from the raw levels, one from the entry rows; their verdicts must
//!   agree;
//! - `kraken_book_states`: levels (exact), checksum, depth and precision against the book rebuilt
//!   at that `seq` ([`compare_state`]). Kraken's checksum covers the top ten levels only: a level
//!   changed deep in the book is caught by the entries-vs-raw comparison and by the book states.
//!
//! A layout change that moves a copy (entries become a view over arrays, the raw message is held
//! once) changes the query that fills the copy's row type ([`MessageRow`], [`EntryRow`],
//! [`StateRow`]) and keeps its comparison here.
//!
//! The books: one set per connection of the collector, rebuilt with the project's one engine
//! ([`Tracker`]), as the collector did. A stream is what one connection received for one symbol: a
//! new connection starts every book over, unverifiable until its snapshot. While every message's
//! entry rows equal its raw levels, the book rebuilt from the entries is the book rebuilt from the
//! raw message (same engine, same input), so one is kept; from the first message of a connection
//! whose entries differ, the entries' book is kept apart (a copy of the raw book before that
//! message) and both verdicts are compared from then on.
//!
//! What must hold:
//! - every disagreement is reported with its collector, seq, symbol and the two copies, never
//!   passed over; nothing that the writer stores on purpose is reported: a message with a
//!   `stored_raw` event and no entry rows (a frame with more levels than `ordinal` can number,
//!   stored whole in `raw_message`; or one the database refused, stored as received in
//!   `raw_text`/`raw_bytes` without symbol, checksum or entries) is checked against what its event
//!   says, and its levels reach both books from the raw message;
//! - a verdict or a book state that the database cannot reproduce because records are missing
//!   before it (`journal_damage` or `not_stored` events: the books start over) is counted as
//!   unverifiable after damage, not as a disagreement, until the connection's book is known again;
//! - a symbol the collector did not ask for (an `unasked_symbol` event, or no subscription ack for
//!   it where the connection has acks) was never tracked: its messages have no verdict and no best
//!   bid or ask;
//! - records before a range build the books and are not reported ([`CopyVerifier::warm`]); a book
//!   state found while its book is unknown starts the book again (a state is a verified book).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::book::{Decimal, FrameVerdict, OrderBook, Precision, PriceLevel, Tracker, Verdict};
use crate::kraken::{self, BookData, BookKind, BookMessage, Frame, Level, WireDecimal};
use crate::store::rows::MAX_LEVELS_PER_MESSAGE;
use crate::time::Timestamp;

use super::engine::{Disagreement, ReplayReport, verdict_name};

/// A stored copy of (part of) a book message, by the name a report gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoredCopy {
    /// The frame as stored: `raw_message`, or `raw_text`/`raw_bytes` for a frame stored raw.
    RawMessage,
    /// Its rows in `kraken_orderbook_entries`.
    Entries,
    /// Its row in `kraken_orderbook_messages` (where entry rows have none).
    MessageRow,
    /// The messages row's `message_type` (and `channel`).
    MessageType,
    /// The messages row's `symbol`.
    Symbol,
    /// The messages row's `timestamp`.
    Timestamp,
    /// The messages row's `checksum`.
    Checksum,
    /// The messages row's `checksum_ok`: the collector's verdict.
    ChecksumOk,
    /// The messages row's `best_bid_price` and `best_bid_qty`.
    BestBid,
    /// The messages row's `best_ask_price` and `best_ask_qty`.
    BestAsk,
    /// A row of `kraken_book_states`.
    BookState,
    /// The `stored_raw` event of a message stored raw on purpose.
    StoredRawEvent,
    /// The book rebuilt from the raw messages.
    BookFromRaw,
    /// The book rebuilt from the entry rows.
    BookFromEntries,
}

impl StoredCopy {
    /// The name reports use.
    pub const fn name(self) -> &'static str {
        match self {
            StoredCopy::RawMessage => "raw_message",
            StoredCopy::Entries => "kraken_orderbook_entries",
            StoredCopy::MessageRow => "kraken_orderbook_messages",
            StoredCopy::MessageType => "message_type",
            StoredCopy::Symbol => "symbol",
            StoredCopy::Timestamp => "timestamp",
            StoredCopy::Checksum => "checksum",
            StoredCopy::ChecksumOk => "checksum_ok",
            StoredCopy::BestBid => "best_bid",
            StoredCopy::BestAsk => "best_ask",
            StoredCopy::BookState => "kraken_book_states",
            StoredCopy::StoredRawEvent => "stored_raw event",
            StoredCopy::BookFromRaw => "book from raw_message",
            StoredCopy::BookFromEntries => "book from kraken_orderbook_entries",
        }
    }
}

/// A stored `numeric` price or quantity: its exact value, or why it is not one (negative, NaN,
/// beyond 38 digits: only a hand-made change stores one).
pub type StoredDecimal = Result<Decimal, String>;

/// Where a messages row holds its frame.
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

/// One row of `kraken_orderbook_messages`.
#[derive(Clone, Debug)]
pub struct MessageRow {
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

impl MessageRow {
    /// Whether the row says it is a book message.
    pub fn claims_book(&self) -> bool {
        self.channel == "book" && matches!(self.message_type.as_str(), "snapshot" | "update")
    }

    /// The stored frame, decoded (`None`: no text, or it does not decode).
    pub fn decode(&self) -> Option<Frame<'_>> {
        self.frame.text().and_then(|t| kraken::decode(t).ok())
    }
}

/// One row of `kraken_orderbook_entries`.
#[derive(Clone, Debug)]
pub struct EntryRow {
    /// `seq`.
    pub seq: i64,
    /// `ordinal`.
    pub ordinal: Option<i16>,
    /// `symbol`.
    pub symbol: String,
    /// `side`.
    pub side: String,
    /// `price`.
    pub price: StoredDecimal,
    /// `quantity`.
    pub quantity: StoredDecimal,
    /// `message_type`.
    pub message_type: String,
    /// `checksum`.
    pub checksum: Option<i64>,
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

/// The books of one connection.
#[derive(Clone, Debug)]
struct Books {
    /// Rebuilt from the raw messages.
    raw: Tracker,
    /// Rebuilt from the entry rows, once they differed from the raw levels (`None`: the same
    /// book as `raw`).
    entries: Option<Tracker>,
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
            raw: Tracker::new(10),
            entries: None,
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

    fn trackers(&mut self) -> impl Iterator<Item = &mut Tracker> {
        std::iter::once(&mut self.raw).chain(self.entries.as_mut())
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

    /// What a replay that starts after the connection's subscription needs to know of it: the
    /// depth `symbol` was subscribed at and its precision (from the stored ack and instrument
    /// message before the start).
    pub fn prime(
        &mut self,
        conn_id: i64,
        symbol: &str,
        depth: Option<usize>,
        precision: Option<Precision>,
    ) {
        let books = self.conns.entry(conn_id).or_insert_with(Books::new);
        books.acked.insert(symbol.to_owned());
        for t in books.trackers() {
            if let Some(d) = depth {
                t.set_depth(symbol, d);
            }
            if let Some(p) = precision {
                t.set_precision(symbol, p);
            }
        }
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
                    let symbols = std::mem::take(&mut books.symbols);
                    for t in books.trackers() {
                        for s in &symbols {
                            t.forget(s);
                        }
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

    /// Entry rows at a `seq` that has no book message row.
    pub fn orphan_entries(&mut self, entries: &[EntryRow]) {
        let Some(first) = entries.first() else {
            return;
        };
        self.report.entries_compared += entries.len() as u64;
        let symbol = first.symbol.clone();
        self.differ(
            first.seq,
            Some(&symbol),
            (
                StoredCopy::Entries,
                format!("{} levels of {}", entries.len(), first.symbol),
            ),
            (StoredCopy::MessageRow, "no book message at this seq".into()),
        );
    }

    /// One messages row (any channel), its frame decoded, the entry rows of its `seq` in ordinal
    /// order, and whether a `stored_raw` event stands beside it.
    pub fn message(
        &mut self,
        m: &MessageRow,
        frame: Option<&Frame<'_>>,
        entries: &[EntryRow],
        stored_raw: bool,
    ) {
        let conn = m.conn_id.unwrap_or(-1);
        let book = match frame {
            Some(Frame::Book(book)) => book,
            other => {
                if let Some(f) = other {
                    self.observe(conn, f);
                }
                self.not_a_book(m, other, entries);
                return;
            }
        };
        if !book.data.iter().any(|d| self.wanted(&d.symbol)) && !book.data.is_empty() {
            return;
        }
        self.count(m.seq);
        self.report.frames += 1;
        self.book(m, conn, book, entries, stored_raw);
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
        for t in books.trackers() {
            t.observe(frame);
        }
    }

    /// A row whose frame is not a book message.
    fn not_a_book(&mut self, m: &MessageRow, frame: Option<&Frame<'_>>, entries: &[EntryRow]) {
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
                (StoredCopy::RawMessage, raw_says.clone()),
            );
        }
        if !entries.is_empty() {
            self.report.entries_compared += entries.len() as u64;
            self.differ(
                m.seq,
                symbol,
                (StoredCopy::Entries, format!("{} levels", entries.len())),
                (StoredCopy::RawMessage, raw_says),
            );
        }
    }

    fn book(
        &mut self,
        m: &MessageRow,
        conn: i64,
        book: &BookMessage<'_>,
        entries: &[EntryRow],
        stored_raw: bool,
    ) {
        let seq = m.seq;
        let first = book.data.first();
        let symbol = first.map(|d| d.symbol.as_ref());
        // The writer's fallback when the database refused the rows: the frame as received in
        // raw_text or raw_bytes, and nothing decoded from it (no symbol, checksum or entries).
        let as_received = stored_raw && !matches!(m.frame, StoredFrame::Json(_));

        // The messages row's columns against the raw message.
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

        // The entry rows against the raw levels.
        let levels: usize = book.data.iter().map(BookData::level_count).sum();
        let by_design =
            stored_raw && entries.is_empty() && (as_received || levels > MAX_LEVELS_PER_MESSAGE);
        let entries_same = if by_design {
            self.report.stored_raw += 1;
            true
        } else if stored_raw && entries.is_empty() {
            self.differ(
                seq,
                symbol,
                (
                    StoredCopy::StoredRawEvent,
                    "stored in raw_message without entry rows".into(),
                ),
                (
                    StoredCopy::RawMessage,
                    format!("{levels} levels, which entry rows can number"),
                ),
            );
            false
        } else {
            self.report.entries_compared += entries.len() as u64;
            match compare_entries(book, entries) {
                None => true,
                Some((raw_says, entries_say)) => {
                    self.differ(
                        seq,
                        symbol,
                        (StoredCopy::RawMessage, raw_says),
                        (StoredCopy::Entries, entries_say),
                    );
                    false
                }
            }
        };

        // Both books, then the verdicts.
        let counts = &mut self.report.symbols;
        let books = self.conns.entry(conn).or_insert_with(Books::new);
        if !entries_same && books.entries.is_none() {
            books.entries = Some(books.raw.clone());
        }
        for d in &book.data {
            if !books.symbols.contains(d.symbol.as_ref()) {
                books.symbols.insert(d.symbol.to_string());
            }
        }
        let raw_verdict = apply(
            &mut books.raw,
            &books.acked,
            books.any_ack,
            &books.unasked,
            book.kind,
            &book.data,
            |s, v| {
                let sr = match counts.get_mut(s) {
                    Some(sr) => sr,
                    None => counts.entry(s.to_owned()).or_default(),
                };
                sr.book_messages += 1;
                match v {
                    Some(Verdict::Ok) => sr.ok += 1,
                    Some(Verdict::Mismatch { .. }) => sr.mismatches += 1,
                    Some(Verdict::Unsynced) | None => sr.unverifiable += 1,
                }
            },
        );
        let entries_verdict = match books.entries.as_mut() {
            None => raw_verdict,
            Some(t) if entries_same => apply(
                t,
                &books.acked,
                books.any_ack,
                &books.unasked,
                book.kind,
                &book.data,
                |_, _| {},
            ),
            Some(t) => {
                let (kind, data) = entries_data(entries);
                apply(
                    t,
                    &books.acked,
                    books.any_ack,
                    &books.unasked,
                    kind,
                    &data,
                    |_, _| {},
                )
            }
        };
        let tracked_first = symbol.is_some_and(|s| books.tracked(s));
        let after: Option<&OrderBook> = symbol
            .filter(|_| tracked_first)
            .and_then(|s| books.raw.synced_book(s));
        let best = [
            after.and_then(OrderBook::best_bid),
            after.and_then(OrderBook::best_ask),
        ];
        if raw_verdict != entries_verdict {
            self.differ(
                seq,
                symbol,
                (StoredCopy::BookFromRaw, verdict_name(raw_verdict)),
                (StoredCopy::BookFromEntries, verdict_name(entries_verdict)),
            );
        }
        if raw_verdict.is_some() && self.damaged {
            self.verified_since_damage.insert(conn);
        }
        let recorded = m.checksum_ok;
        if raw_verdict.is_none() && recorded.is_some() && self.excused(conn) {
            return;
        }
        if recorded != raw_verdict {
            self.differ(
                seq,
                symbol,
                (StoredCopy::ChecksumOk, verdict_name(recorded)),
                (StoredCopy::BookFromRaw, verdict_name(raw_verdict)),
            );
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
                    (StoredCopy::BookFromRaw, level_text(replayed.as_ref())),
                );
            }
        }
    }

    /// A book state: compared with the book rebuilt at its place (both books, when they are kept
    /// apart); a book not known there starts again from it.
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
        let mut found = Vec::new();
        let mut unknown = false;
        for (copy, tracker) in [
            (StoredCopy::BookFromRaw, Some(&books.raw)),
            (StoredCopy::BookFromEntries, books.entries.as_ref()),
        ] {
            let Some(tracker) = tracker else { continue };
            match tracker.synced_book(&st.symbol) {
                Some(book) => {
                    if let Some(d) = compare_state(st, &levels, book) {
                        found.push((copy, d));
                    }
                }
                None => unknown = true,
            }
        }
        if unknown {
            // The book is not known here: after missing records that is expected; otherwise the
            // replay lost it where the collector had it verified.
            let excused = self.excused(st.conn_id);
            let books = self.conns.entry(st.conn_id).or_insert_with(Books::new);
            if let Ok((bids, asks)) = &levels {
                books.symbols.insert(st.symbol.clone());
                for t in books.trackers() {
                    if t.synced_book(&st.symbol).is_none() {
                        seed(t, st, bids, asks);
                    }
                }
            }
            if self.damaged && books.raw.synced_book(&st.symbol).is_some() {
                self.verified_since_damage.insert(st.conn_id);
            }
            if !excused {
                self.differ(
                    st.seq,
                    Some(&st.symbol),
                    (
                        StoredCopy::BookState,
                        format!("a verified book (checksum {})", st.checksum),
                    ),
                    (
                        StoredCopy::BookFromRaw,
                        "no verified book at this seq".into(),
                    ),
                );
            }
        }
        for (copy, (state_says, book_says)) in found {
            self.differ(
                st.seq,
                Some(&st.symbol),
                (StoredCopy::BookState, state_says),
                (copy, book_says),
            );
        }
    }
}

/// Applies one message's data to `tracker` (symbols the collector tracked), calling `each` with
/// every symbol's verdict (`None`: not tracked), and returns the message's folded verdict.
fn apply(
    tracker: &mut Tracker,
    acked: &HashSet<String>,
    any_ack: bool,
    unasked: &HashSet<String>,
    kind: BookKind,
    data: &[BookData<'_>],
    mut each: impl FnMut(&str, Option<Verdict>),
) -> Option<bool> {
    let mut folded = FrameVerdict::default();
    for d in data {
        let tracked =
            acked.contains(d.symbol.as_ref()) || (!any_ack && !unasked.contains(d.symbol.as_ref()));
        if !tracked {
            each(&d.symbol, None);
            continue;
        }
        let v = tracker.apply(kind, d);
        folded.add(v);
        each(&d.symbol, Some(v));
    }
    folded.checksum_ok()
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

/// The entry rows of a message as book data: consecutive rows of one symbol and checksum, bids
/// then asks, make one symbol's part; their levels in ordinal order (a value that is not a
/// decimal is left out: the comparison with the raw levels has reported it).
fn entries_data(entries: &[EntryRow]) -> (BookKind, Vec<BookData<'static>>) {
    let kind = match entries.first().map(|e| e.message_type.as_str()) {
        Some("snapshot") => BookKind::Snapshot,
        _ => BookKind::Update,
    };
    let mut out: Vec<BookData<'static>> = Vec::new();
    for e in entries {
        let bid = e.side == "bid";
        let checksum = e.checksum.and_then(|c| u32::try_from(c).ok()).unwrap_or(0);
        let start_new = match out.last() {
            None => true,
            Some(d) => {
                d.symbol != e.symbol.as_str()
                    || d.checksum != checksum
                    || (bid && !d.asks.is_empty())
            }
        };
        if start_new {
            out.push(BookData {
                symbol: Cow::Owned(e.symbol.clone()),
                bids: Vec::new(),
                asks: Vec::new(),
                checksum,
                timestamp: None,
            });
        }
        let (Ok(price), Ok(qty)) = (&e.price, &e.quantity) else {
            continue;
        };
        if let Some(d) = out.last_mut() {
            if bid {
                d.bids.push(level(*price, *qty));
            } else {
                d.asks.push(level(*price, *qty));
            }
        }
    }
    (kind, out)
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

/// The first difference between a book message's raw levels and its entry rows (in ordinal
/// order), as what each says; `None` when every row is its level: same position, symbol, side,
/// price and quantity (exact text), message type and checksum, and as many rows as levels.
pub fn compare_entries(book: &BookMessage<'_>, entries: &[EntryRow]) -> Option<(String, String)> {
    let kind = book.kind.as_str();
    let mut i = 0usize;
    for d in &book.data {
        let checksum = i64::from(d.checksum);
        for (side, levels) in [("bid", &d.bids), ("ask", &d.asks)] {
            for l in levels {
                let raw_says = || {
                    format!(
                        "ordinal {i}: {} {side} {} x {} ({kind}, checksum {checksum})",
                        d.symbol, l.price.value, l.qty.value
                    )
                };
                let Some(e) = entries.get(i) else {
                    return Some((
                        raw_says(),
                        format!("no row at ordinal {i} ({} rows)", entries.len()),
                    ));
                };
                let same = e
                    .ordinal
                    .is_some_and(|o| usize::try_from(o).is_ok_and(|o| o == i))
                    && e.symbol == d.symbol.as_ref()
                    && e.side == side
                    && e.price.as_ref().is_ok_and(|p| exact(*p, l.price.value))
                    && e.quantity.as_ref().is_ok_and(|q| exact(*q, l.qty.value))
                    && e.message_type == kind
                    && e.checksum == Some(checksum);
                if !same {
                    return Some((raw_says(), entry_text(e)));
                }
                i += 1;
            }
        }
    }
    if entries.len() != i {
        return Some((
            format!("{i} levels"),
            format!(
                "{} rows, the first extra one {}",
                entries.len(),
                entry_text(&entries[i])
            ),
        ));
    }
    None
}

fn entry_text(e: &EntryRow) -> String {
    let value = |v: &StoredDecimal| match v {
        Ok(d) => d.to_string(),
        Err(e) => format!("not a decimal ({e})"),
    };
    format!(
        "ordinal {}: {} {} {} x {} ({}, checksum {})",
        optional(e.ordinal),
        e.symbol,
        e.side,
        value(&e.price),
        value(&e.quantity),
        e.message_type,
        optional(e.checksum)
    )
}

/// A book state's levels: bids and asks as exact decimals.
type StateLevels = Result<(Vec<(Decimal, Decimal)>, Vec<(Decimal, Decimal)>), String>;

fn parse_state(st: &StateRow) -> StateLevels {
    Ok((
        crate::readback::parse_levels(&st.bids)?,
        crate::readback::parse_levels(&st.asks)?,
    ))
}

/// The first difference between a book state and the rebuilt book, as what each says; `None`
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
    use krakenbook_testkit::capture::read_capture;

    /// The rows the writer stores for a real capture (the messages row and its entry rows, in
    /// ordinal order; heartbeats are not stored), each with its frame's text as stored.
    fn stored(name: &str) -> Vec<(MessageRow, Vec<EntryRow>)> {
        let path = krakenbook_testkit::fixtures().join("kraken-v2").join(name);
        let mut out = Vec::new();
        for r in read_capture(&path, &mut 1, 1).unwrap() {
            let RecordBody::Frame(f) = &r.body else {
                continue;
            };
            let text = std::str::from_utf8(&f.bytes).unwrap();
            let frame = kraken::decode(text).unwrap();
            if matches!(frame, Frame::Heartbeat) {
                continue;
            }
            let seq = r.seq as i64;
            let level = |l: Option<PriceLevel>| match l {
                Some(l) => [Some(Ok(l.price)), Some(Ok(l.qty))],
                None => [None, None],
            };
            let mut m = MessageRow {
                seq,
                conn_id: Some(1),
                timestamp: r.received_at,
                received_at: r.received_at,
                channel: frame.channel().to_owned(),
                message_type: "status".into(),
                symbol: None,
                checksum: None,
                checksum_ok: f.checksum_ok,
                frame: StoredFrame::Json(text.to_owned()),
                best_bid: level(f.best_bid),
                best_ask: level(f.best_ask),
            };
            let mut entries = Vec::new();
            match &frame {
                Frame::Book(b) => {
                    let first = &b.data[0];
                    m.message_type = b.kind.as_str().into();
                    m.symbol = Some(first.symbol.to_string());
                    m.checksum = Some(i64::from(first.checksum));
                    m.timestamp = first.timestamp.unwrap_or(r.received_at);
                    for d in &b.data {
                        for (side, levels) in [("bid", &d.bids), ("ask", &d.asks)] {
                            for l in levels {
                                entries.push(EntryRow {
                                    seq,
                                    ordinal: Some(entries.len() as i16),
                                    symbol: d.symbol.to_string(),
                                    side: side.into(),
                                    price: Ok(l.price.value),
                                    quantity: Ok(l.qty.value),
                                    message_type: b.kind.as_str().into(),
                                    checksum: Some(i64::from(d.checksum)),
                                });
                            }
                        }
                    }
                }
                Frame::Ack(a) => m.message_type = a.method.to_string(),
                _ => {}
            }
            out.push((m, entries));
        }
        out
    }

    fn verify(rows: &[(MessageRow, Vec<EntryRow>)]) -> ReplayReport {
        let mut v = CopyVerifier::new(&[]);
        v.begin_collector("test");
        for (m, entries) in rows {
            v.message(m, m.decode().as_ref(), entries, false);
        }
        v.finish()
    }

    /// The index of the `n`th verified update that sets the best bid with its first level.
    fn update_at_top(rows: &[(MessageRow, Vec<EntryRow>)], n: usize) -> usize {
        rows.iter()
            .enumerate()
            .filter(|(_, (m, e))| {
                m.message_type == "update"
                    && m.checksum_ok == Some(true)
                    && e.first().is_some_and(|e| {
                        e.side == "bid" && Some(&e.price) == m.best_bid[0].as_ref()
                    })
            })
            .nth(n)
            .unwrap()
            .0
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
            let books = rows.iter().filter(|(m, _)| m.claims_book()).count() as u64;
            assert_eq!(report.book_messages(), books, "{name}");
            assert_eq!(
                report.entries_compared,
                rows.iter().map(|(_, e)| e.len() as u64).sum::<u64>()
            );
        }
    }

    /// Each copy of one message altered in turn: the first disagreement is at its seq, between
    /// the copies named.
    #[test]
    fn each_altered_copy_is_reported_at_its_seq_between_the_right_copies() {
        type Tamper = fn(&mut MessageRow, &mut Vec<EntryRow>);
        let cases: Vec<(&str, Tamper, [&str; 2])> = vec![
            (
                "a level price inside raw_message",
                |m, _| {
                    let StoredFrame::Json(t) = &mut m.frame else {
                        panic!()
                    };
                    let at = t.find(r#""price":"#).unwrap() + 8;
                    *t = bump_number_end(t, at);
                },
                ["raw_message", "kraken_orderbook_entries"],
            ),
            (
                "the checksum column",
                |m, _| m.checksum = m.checksum.map(|c| c + 1),
                ["checksum", "raw_message"],
            ),
            (
                "checksum_ok",
                |m, _| m.checksum_ok = Some(false),
                ["checksum_ok", "book from raw_message"],
            ),
            (
                "the best bid quantity",
                |m, _| m.best_bid[1] = Some(Ok(Decimal::parse("1.23456789").unwrap())),
                ["best_bid", "book from raw_message"],
            ),
            (
                "the message type",
                |m, _| m.message_type = "snapshot".into(),
                ["message_type", "raw_message"],
            ),
            (
                "the symbol column",
                |m, _| m.symbol = Some("ETH/USD".into()),
                ["symbol", "raw_message"],
            ),
            (
                "an entry's quantity",
                |_, e| e[0].quantity = Ok(Decimal::parse("99.5").unwrap()),
                ["raw_message", "kraken_orderbook_entries"],
            ),
            (
                "an entry's price scale (the same value, other text)",
                |_, e| {
                    let p = e[0].price.clone().unwrap();
                    e[0].price = Ok(p.with_scale(p.scale() + 1).unwrap());
                },
                ["raw_message", "kraken_orderbook_entries"],
            ),
            (
                "an entry's side",
                |_, e| e[0].side = "ask".into(),
                ["raw_message", "kraken_orderbook_entries"],
            ),
            (
                "an entry row deleted",
                |_, e| {
                    e.pop();
                },
                ["raw_message", "kraken_orderbook_entries"],
            ),
            (
                "an entry row added",
                |_, e| {
                    let mut extra = e[0].clone();
                    extra.ordinal = Some(e.len() as i16);
                    e.push(extra);
                },
                ["raw_message", "kraken_orderbook_entries"],
            ),
        ];
        let clean = stored("kraken_btcusd_d10_20260816.ndjson");
        let at = update_at_top(&clean, 20);
        for (what, tamper, copies) in cases {
            let mut rows = clean.clone();
            let (m, e) = &mut rows[at];
            tamper(m, e);
            let report = verify(&rows);
            assert!(!report.is_clean(), "{what}: not caught");
            let first = &report.disagreements[0];
            assert_eq!(first.seq, rows[at].0.seq as u64, "{what}: {first:?}");
            assert_eq!(first.collector.as_deref(), Some("test"), "{what}");
            assert_eq!(first.symbol.as_deref(), Some("BTC/USD"), "{what}");
            assert!(
                report
                    .disagreements
                    .iter()
                    .any(|d| d.seq == first.seq && d.copies == copies),
                "{what}: no {copies:?} in {:?}",
                report.disagreements
            );
        }
    }

    /// `text` with the last digit of the number that starts at `at` changed.
    fn bump_number_end(text: &str, at: usize) -> String {
        let end = at + text[at..].find([',', '}']).unwrap();
        let mut b = text.as_bytes().to_vec();
        b[end - 1] = if b[end - 1] == b'1' { b'2' } else { b'1' };
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn a_message_stored_raw_on_purpose_without_entries_is_checked_against_its_event() {
        let clean = stored("kraken_btcusd_d10_20260816.ndjson");
        let at = update_at_top(&clean, 5);
        // Stored as received after the database refused its rows: raw_text, no symbol, checksum
        // or entries, its time the receive time.
        let mut rows = clean.clone();
        let (m, e) = &mut rows[at];
        let StoredFrame::Json(t) = &m.frame else {
            panic!()
        };
        m.frame = StoredFrame::Text(t.clone());
        (m.symbol, m.checksum, m.timestamp) = (None, None, m.received_at);
        e.clear();
        let mut v = CopyVerifier::new(&[]);
        v.begin_collector("test");
        for (i, (m, entries)) in rows.iter().enumerate() {
            v.message(m, m.decode().as_ref(), entries, i == at);
        }
        let report = v.finish();
        assert!(report.is_clean(), "{:?}", report.disagreements);
        assert_eq!(report.stored_raw, 1);
        // Without its event, the missing entries are a disagreement.
        let report = verify(&rows);
        assert_eq!(
            report.disagreements[0].copies,
            ["symbol", "raw_message"],
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
            .find(|(m, _)| m.message_type == "snapshot")
            .unwrap();
        let mut rows = clean[..at].to_vec();
        for (k, (m, e)) in [snapshot, &clean[at]].into_iter().enumerate() {
            let mut m = m.clone();
            let StoredFrame::Json(t) = &m.frame else {
                panic!()
            };
            m.frame = StoredFrame::Json(t.replace("BTC/USD", "XBT/EUR"));
            m.symbol = Some("XBT/EUR".into());
            m.seq = clean[at].0.seq * 10 + k as i64;
            (m.checksum_ok, m.best_bid, m.best_ask) = (None, [None, None], [None, None]);
            let mut e = e.clone();
            for r in &mut e {
                r.seq = m.seq;
                r.symbol = "XBT/EUR".into();
            }
            rows.push((m, e));
        }
        rows.extend(clean[at..].iter().cloned());
        let report = verify(&rows);
        assert!(report.is_clean(), "{:?}", report.disagreements);
        assert_eq!(report.symbols["XBT/EUR"].unverifiable, 2);
        // Had the collector tracked it (a verdict recorded), the replay would say otherwise.
        let mut tracked = rows.clone();
        let i = tracked
            .iter()
            .position(|(m, _)| m.symbol.as_deref() == Some("XBT/EUR"))
            .unwrap();
        tracked[i].0.checksum_ok = Some(true);
        let report = verify(&tracked);
        assert_eq!(
            report.disagreements[0].copies,
            ["checksum_ok", "book from raw_message"]
        );
    }

    #[test]
    fn a_book_state_is_compared_level_by_level_beyond_the_checksum() {
        let rows = stored("kraken_btcusd_d100_20260816.ndjson");
        let at = update_at_top(&rows, 10);
        let mut v = CopyVerifier::new(&[]);
        v.begin_collector("test");
        for (m, entries) in &rows[..=at] {
            v.message(m, m.decode().as_ref(), entries, false);
        }
        let book = v.conns[&1].raw.synced_book("BTC/USD").unwrap().clone();
        let view = book.view(book.depth());
        let json = crate::store::rows::levels_json;
        let state = |bids: &[PriceLevel]| StateRow {
            seq: rows[at].0.seq + 1,
            conn_id: 1,
            symbol: "BTC/USD".into(),
            timestamp: rows[at].0.timestamp,
            depth: book.depth() as i32,
            price_precision: i16::from(book.precision().price),
            qty_precision: i16::from(book.precision().qty),
            checksum: i64::from(book.checksum()),
            bids: json(bids),
            asks: json(&view.asks),
        };
        v.state(&state(&view.bids));
        assert!(v.report().is_clean(), "{:?}", v.report().disagreements);
        // Level 60 changed: the checksum (top ten) is the same, the state is not.
        let mut bids = view.bids.clone();
        bids[59].qty = Decimal::parse("7.77700000").unwrap();
        v.state(&state(&bids));
        let d = &v.report().disagreements[0];
        assert_eq!(d.copies, ["kraken_book_states", "book from raw_message"]);
        assert!(d.recorded.starts_with("bid level 60: "), "{d:?}");
    }
}
