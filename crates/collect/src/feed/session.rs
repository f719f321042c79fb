//! One connection's decisions, without I/O: a [`Session`] takes what happened (a frame received
//! with its receive time, a timer, a permit from the resubscribe limiter, the end of the
//! connection) and answers with [`Action`]s (journal this entry, send this request, close the
//! connection) that [`super::Connection`] carries out in order.
//!
//! What it owns and what must hold:
//! - **subscriptions**: the instrument channel first (each pair's precision), then `book` for the
//!   symbols asked for in chunks of 50, once the instrument snapshot arrived or its deadline
//!   passed; a symbol the exchange rejected is recorded ([`EventKind::SubscriptionError`]) and
//!   never asked for again on this or a later connection ([`Continuity`]); a rate-limit error in
//!   an ack is not a rejection: the connection closes with [`Lost::RateLimited`] and the
//!   reconnect waits long;
//! - **every frame** is journaled as received, numbered (`conn_seq`) in received order, before
//!   anything derived from it (events, book states) and before any request it causes;
//! - **verdicts**: each book message of a symbol asked for is applied to its book and checked;
//!   a mismatch opens a gap ([`EventKind::ChecksumMismatch`]) and queues one resubscription for
//!   the episode (sent when the shared limiter grants a permit; again only if the symbol is still
//!   unsynced after `resubscribe_retry`); the first verified message after a gap (on this or a
//!   later connection) records [`EventKind::Resynced`] with the gap's start; a verified book is
//!   journaled whole every `book_state_every` verified updates;
//! - **coverage metrics**: each symbol's stream on this connection counts itself verified in the
//!   symbol's shared metrics ([`StreamCoverage`]) from its first verified message until a
//!   mismatch or the connection's end (its last frame), so `/metrics` shows the union over every
//!   stream of the symbol;
//! - **the watchdog** counts Kraken frames only (the connection never hands WebSocket pings or
//!   pongs to the session): no frame for `silence_timeout` closes the connection; the deadline is
//!   fixed by the last frame, never pushed back by timers or permits;
//! - **a lying peer cannot grow it**: state is kept only for the symbols asked for. A frame for any
//!   other symbol is journaled (as every frame), counted (`unasked_frames`), and named in an
//!   [`EventKind::UnaskedSymbol`] event at most once per symbol and at most
//!   [`UNASKED_EVENTS_PER_CONNECTION`] times per connection; it never gets a book, a depth, a
//!   precision, per-symbol metrics or a subscription;
//! - **logs are bounded**: what a peer can repeat at will (unasked symbols, malformed frames,
//!   rejected requests without a symbol, exchange status) is logged one by one a few times per
//!   connection, then as one summary line a minute with a count; every peer text in a log line or
//!   an event goes through [`crate::text::printable`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::FeedConfig;
use super::error::{Lost, is_rate_limit_text};
use super::shared_books::{Shared, SharedBooks, StateParts, book_symbol_hint, frame_key};
use crate::book::PriceLevel;
use crate::book::{FrameVerdict, OrderBook, Tracker, Verdict};
use crate::journal::{Entry, SpareBuffers};
use crate::kraken::{self, BookKind, BookMessage, Frame, Request, Response};
use crate::metrics::{Metrics, StreamCoverage, SymbolMetrics};
use crate::record::{BookState, EventKind, FeedEvent, FrameRecord, RecordBody};
use crate::text::{printable, printable_prefix};
use crate::time::Timestamp;

/// At most this many [`EventKind::UnaskedSymbol`] events per connection (one per symbol).
pub const UNASKED_EVENTS_PER_CONNECTION: usize = 100;
/// At most this many symbols not asked for are logged one by one per connection; frames for
/// further ones are summed up in one log line a minute.
pub const UNASKED_LOGGED_PER_CONNECTION: usize = 10;
/// The longest symbol text kept in an event or a log line (Kraken's are under 20 characters).
const SYMBOL_TEXT_MAX: usize = 64;
/// Requests of one kind a peer can provoke at will are logged this many times per connection,
/// then summed up once a minute.
const LOGGED_PER_CONNECTION: u32 = 10;
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// Symbols per `book` subscribe request.
const SUBSCRIBE_CHUNK: usize = 50;

/// What the connection must do, in the order given.
#[derive(Debug)]
pub enum Action {
    /// Append this entry to the journal (waiting for room: back-pressure reaches the socket).
    Journal(Entry),
    /// Send this request.
    Send(Request),
    /// Close the connection for this reason (then call [`Session::close`]).
    Close(Lost),
}

/// A data frame as the socket delivered it (never a WebSocket ping, pong or close).
#[derive(Clone, Copy, Debug)]
pub enum Received<'a> {
    /// A text frame (the WebSocket layer checked it is UTF-8).
    Text(&'a str),
    /// A binary frame (Kraken sends none; kept as received all the same).
    Binary(&'a [u8]),
}

impl Received<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Received::Text(t) => t.as_bytes(),
            Received::Binary(b) => b,
        }
    }
}

/// What one connection of a feed hands to the next: the gaps still open and the symbols the
/// exchange rejected. Holds only symbols that were asked for.
#[derive(Debug, Default, Clone)]
pub struct Continuity {
    /// Symbols whose gap is open across reconnects: symbol → when the gap began.
    gaps: HashMap<String, Timestamp>,
    /// Symbols the exchange rejected: not asked for again.
    rejected: HashSet<String>,
}

impl Continuity {
    /// Whether the exchange rejected `symbol`.
    pub fn is_rejected(&self, symbol: &str) -> bool {
        self.rejected.contains(symbol)
    }

    /// When `symbol`'s open gap began, if it has one.
    pub fn gap_start(&self, symbol: &str) -> Option<Timestamp> {
        self.gaps.get(symbol).copied()
    }
}

/// The decisions of one WebSocket connection (see the module doc).
#[derive(Debug)]
pub struct Session {
    conn_id: u64,
    config: FeedConfig,
    metrics: Arc<Metrics>,
    conn_seq: u64,
    tracker: Tracker,
    /// The symbols asked for on this connection (the rejected ones left out), in order.
    asked: Vec<String>,
    symbols: HashMap<String, SymbolState>,
    continuity: Continuity,
    pending_resubscribe: VecDeque<String>,
    books_requested: bool,
    instrument_deadline: Instant,
    req_id: u64,
    /// When the last Kraken frame arrived (the watchdog's reference).
    last_frame: Instant,
    /// Its receive time (where a live book's gap begins when the connection is lost).
    last_frame_at: Timestamp,
    unasked: Unasked,
    malformed_log: LogBudget,
    rejected_log: LogBudget,
    status_log: LogBudget,
    closing: bool,
    /// A book message verified on this connection.
    verified_any: bool,
    /// The books this replica shares with the others of its group, and its number there.
    shared: Option<(Arc<SharedBooks>, usize)>,
    /// With redundancy: the newest stamp the group's replicas gave a frame that was not a copy
    /// taken from another replica ([`Session::in_group`]).
    group: Option<Arc<GroupStamps>>,
    /// The journal's spare frame buffers, to copy frames into (none: a new buffer each).
    spare: Option<Arc<SpareBuffers>>,
    actions: VecDeque<Action>,
}

/// The newest stamp a group of replicas gave a frame that was not a copy taken from another
/// replica. Why: a message on several connections is stored once, as its first copy journaled,
/// so the stored messages of a symbol come from one replica or another; with stamps of arrival
/// ([`FeedConfig::arrival_stamps`]) a replica read later in a tick may hold a message that
/// arrived on it before the last one stored from the replica read first (it is the faster
/// one). Stored with its own stamp it would sort before that one. So such a frame takes at
/// least the group's newest stamp (moved later by at most the replicas' difference in
/// latency), and a symbol's stored messages keep their order in time.
#[derive(Debug, Default)]
pub struct GroupStamps {
    newest: std::sync::atomic::AtomicI64,
}

impl GroupStamps {
    /// The stamp a first copy stamped `at` takes: `at`, or the group's newest when that is later.
    pub fn first(&self, at: Timestamp) -> Timestamp {
        let before = self.newest.fetch_max(at.unix_nanos(), Ordering::Relaxed);
        Timestamp::from_unix_nanos(before.max(at.unix_nanos()))
    }
}

/// What applying one symbol's part of a book message gave the session.
struct Applied {
    verdict: Verdict,
    /// The book whole, when a state was due and the book is at hand.
    parts: Option<StateParts>,
    /// The best bid and ask after it (a synced book only).
    best: (Option<PriceLevel>, Option<PriceLevel>),
}

impl Session {
    /// The session of connection `conn_id`, just opened at `now` (`at` on the wall clock), for
    /// `symbols` (those `continuity` says were rejected are left out). Its first actions journal
    /// the `connected` event and subscribe to the instrument channel.
    pub fn open(
        conn_id: u64,
        symbols: &[String],
        continuity: Continuity,
        config: &FeedConfig,
        metrics: Arc<Metrics>,
        now: Instant,
        at: Timestamp,
    ) -> Self {
        let asked: Vec<String> = symbols
            .iter()
            .filter(|s| !continuity.is_rejected(s))
            .cloned()
            .collect();
        let states = asked
            .iter()
            .map(|s| (s.clone(), SymbolState::new(metrics.symbol(s))))
            .collect();
        let mut session = Session {
            conn_id,
            config: config.clone(),
            metrics,
            conn_seq: 0,
            tracker: Tracker::new(config.depth.levels()),
            asked,
            symbols: states,
            continuity,
            pending_resubscribe: VecDeque::new(),
            books_requested: false,
            instrument_deadline: now + config.instrument_timeout,
            req_id: 0,
            last_frame: now,
            last_frame_at: at,
            unasked: Unasked::new(now),
            malformed_log: LogBudget::new(now),
            rejected_log: LogBudget::new(now),
            status_log: LogBudget::new(now),
            closing: false,
            verified_any: false,
            shared: None,
            group: None,
            spare: None,
            actions: VecDeque::new(),
        };
        session.event(at, EventKind::Connected, None, None, config.url.to_string());
        let request = Request::subscribe_instrument(Some(session.next_req_id()));
        session.actions.push_back(Action::Send(request));
        session
    }

    /// This session is replica `replica` of a group whose replicas keep one book per symbol in
    /// `books` ([`super::shared_books`]): same verdicts, records and events as with books of its
    /// own, less work for every copy after the first.
    pub fn share_books(mut self, books: Arc<SharedBooks>, replica: usize) -> Self {
        if replica < super::replicas::MAX_REDUNDANCY {
            self.shared = Some((books, replica));
        }
        self
    }

    /// This session is a replica of a group that stores each message once: the stamps of its
    /// frames that are not copies it took from another replica never go back across the group
    /// (see [`GroupStamps`]).
    pub fn in_group(mut self, group: Arc<GroupStamps>) -> Self {
        self.group = Some(group);
        self
    }

    /// Copies the frames it journals into the journal's spare buffers ([`SpareBuffers`]).
    pub fn copy_frames_into(mut self, spare: Arc<SpareBuffers>) -> Self {
        self.spare = Some(spare);
        self
    }

    /// The session's own book of `symbol` (not a shared one), for tests.
    #[cfg(test)]
    pub(crate) fn own_book_of(&self, symbol: &str) -> Option<&OrderBook> {
        self.tracker.book(symbol)
    }

    /// The session's own book of `symbol` and whether it is synced, for tests.
    #[cfg(test)]
    pub(crate) fn own_tracked(&self, symbol: &str) -> Option<(&OrderBook, bool)> {
        self.tracker
            .book(symbol)
            .map(|b| (b, self.tracker.is_synced(symbol)))
    }

    /// The next action to carry out, in order.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The connection's number.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// The symbols asked for on this connection (without the rejected ones).
    pub fn asked(&self) -> &[String] {
        &self.asked
    }

    /// Whether the session keeps any state for `symbol` (a book, counters, a gap).
    pub fn tracks(&self, symbol: &str) -> bool {
        self.symbols.contains_key(symbol) || self.tracker.book(symbol).is_some()
    }

    /// How many symbols the session keeps state for: the symbols asked for, plus the (bounded)
    /// names of symbols not asked for that it has reported.
    pub fn tracked_symbols(&self) -> usize {
        self.symbols.len() + self.unasked.named.len()
    }

    /// When [`Session::on_timer`] must run next: the silence deadline (fixed by the last frame),
    /// or the instrument deadline while books are not yet requested.
    pub fn deadline(&self) -> Instant {
        let silence = self.last_frame + self.config.silence_timeout;
        if self.books_requested {
            silence
        } else {
            silence.min(self.instrument_deadline)
        }
    }

    /// Time passed: closes a silent connection, subscribes to books when the instrument snapshot
    /// is late, queues resubscriptions that went unanswered, and writes the log summaries. Call it
    /// at [`Session::deadline`] and about once a second.
    pub fn on_timer(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        if now >= self.last_frame + self.config.silence_timeout {
            self.close_with(Lost::Silent(self.config.silence_timeout));
            return;
        }
        if !self.books_requested && now >= self.instrument_deadline {
            tracing::warn!(
                connection = self.conn_id,
                "feed: no instrument snapshot in time; precision comes from the wire text"
            );
            self.subscribe_books();
        }
        self.queue_stale_resubscribes(now);
        self.summaries(Some(now));
    }

    /// Whether a resubscription waits for a permit from the shared limiter (only once the books
    /// were subscribed: before that, the book subscription brings the snapshot).
    pub fn wants_resubscribe(&self) -> bool {
        !self.closing && self.books_requested && !self.pending_resubscribe.is_empty()
    }

    /// The symbol the next resubscribe permit would resubscribe, if any.
    pub fn next_resubscribe(&self) -> Option<&str> {
        self.pending_resubscribe.front().map(String::as_str)
    }

    /// Whether this connection's book of `symbol` is verified now.
    pub fn is_verified(&self, symbol: &str) -> bool {
        self.symbols
            .get(symbol)
            .is_some_and(|s| s.stream.is_verified())
    }

    /// Whether a book message has verified on this connection (the connection recovered).
    pub fn has_verified(&self) -> bool {
        self.verified_any
    }

    /// Whether the session asked for the connection to close (read nothing more).
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether every symbol asked for on this connection (the rejected ones aside) is verified
    /// now: the connection's reconnect is over.
    pub fn all_verified(&self) -> bool {
        self.symbols.iter().all(|(symbol, state)| {
            state.stream.is_verified() || self.continuity.is_rejected(symbol)
        })
    }

    /// The shared limiter granted a permit: resubscribe the next symbol waiting (unsubscribe,
    /// then subscribe with a snapshot).
    pub fn on_resubscribe_permit(&mut self, now: Instant) {
        let Some(symbol) = self.pending_resubscribe.pop_front() else {
            return;
        };
        let Some(state) = self.symbols.get_mut(&symbol) else {
            return;
        };
        state.resubscribed_at = Some(now);
        state.metrics.resubscribes.fetch_add(1, Ordering::Relaxed);
        let depth = self.config.depth;
        let one = [symbol];
        let unsubscribe = Request::unsubscribe_book(&one, depth, Some(self.next_req_id()));
        let subscribe = Request::subscribe_book(&one, depth, true, Some(self.next_req_id()));
        self.actions.push_back(Action::Send(unsubscribe));
        self.actions.push_back(Action::Send(subscribe));
        tracing::info!(
            connection = self.conn_id,
            symbol = %printable(&one[0]),
            "feed: resubscribed after a checksum mismatch"
        );
    }

    /// A frame larger than the frame-size cap arrived (tungstenite refused it unread): counted,
    /// recorded as a [`EventKind::FrameTooLarge`] event, and the connection is closed.
    pub fn on_frame_too_large(&mut self, size: usize, max: usize, at: Timestamp) {
        // Stamped as a frame is: never before the connection's last frame.
        let at = at.max(self.last_frame_at);
        self.metrics
            .frames_too_large
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            connection = self.conn_id,
            size,
            max,
            "feed: a frame over the frame-size cap; not kept, reconnecting"
        );
        self.event(
            at,
            EventKind::FrameTooLarge,
            None,
            None,
            format!("a frame of {size} bytes or more; the cap is {max} bytes"),
        );
        self.close_with(Lost::FrameTooLarge { size, max });
    }

    /// The connection ended (for any reason: one the session asked for or one the socket
    /// reported) at `at`: each symbol whose book was live has a gap from the last frame received
    /// (the book is known up to there, not up to when the loss was noticed); a symbol already in
    /// a gap keeps its gap's start. Journals the `disconnected` event.
    pub fn close(&mut self, why: &Lost, at: Timestamp) {
        self.closing = true;
        self.leave_shared();
        // What was counted and not yet reported is reported now, not lost with the connection.
        self.summaries(None);
        for (symbol, state) in &mut self.symbols {
            state.stream.unverified(self.last_frame_at);
            let start = match state.gap_start {
                Some(start) => start,
                None if state.ever_synced => self.last_frame_at,
                None => continue,
            };
            self.continuity.gaps.entry(symbol.clone()).or_insert(start);
        }
        self.event(at, EventKind::Disconnected, None, None, why.to_string());
    }

    /// What the next connection needs to know.
    pub fn into_continuity(mut self) -> Continuity {
        std::mem::take(&mut self.continuity)
    }

    /// Leaves every shared book (the session's books go with it).
    fn leave_shared(&mut self) {
        if let Some((books, replica)) = &self.shared {
            books.leave_all(*replica);
        }
    }

    /// Takes `symbol`'s book back from the shared books into the session's own tracker (unless
    /// `keep` says the shared book already is what the session is about to make its book).
    fn own_book(&mut self, symbol: &str, keep: impl FnOnce(&OrderBook) -> bool) {
        if let Some((books, replica)) = &self.shared
            && let Some(book) = books.leave_unless(*replica, symbol, keep)
        {
            self.tracker.put(symbol, book);
        }
    }

    /// The fast path of a replica sharing books: a frame whose bytes are the next ones its
    /// lineage logged takes their outcome undecoded. `false`: the frame goes the usual way.
    fn follow_shared(
        &mut self,
        frame: Received<'_>,
        at: Timestamp,
        record: &mut FrameRecord,
    ) -> bool {
        let Some((books, replica)) = &self.shared else {
            return false;
        };
        let Received::Text(text) = frame else {
            return false;
        };
        let Some(symbol) = book_symbol_hint(text) else {
            return false;
        };
        let Some(state) = self.symbols.get(symbol) else {
            return false;
        };
        let due = state.since_state + 1 >= self.config.book_state_every.max(1);
        let Some((outcome, parts)) = books.follow(*replica, symbol, text.as_bytes(), due) else {
            return false;
        };
        let mut folded = FrameVerdict::default();
        folded.add(outcome.verdict);
        record.checksum_ok = folded.checksum_ok();
        record.best_bid = outcome.best_bid;
        record.best_ask = outcome.best_ask;
        self.on_verdict(
            symbol,
            outcome.kind,
            outcome.verdict,
            outcome.checksum,
            outcome.timestamp,
            parts,
            at,
        );
        true
    }

    /// A Kraken frame arrived at `now` (`at` on the wall clock).
    ///
    /// A connection's stamps never go back: a frame stamped earlier than the one before (the
    /// wall clock set back by less than it takes to notice, or a frame the kernel's records did
    /// not cover, stamped on reading, before frames they did) takes the one before's.
    pub fn on_frame(&mut self, frame: Received<'_>, now: Instant, at: Timestamp) {
        let at = at.max(self.last_frame_at);
        self.conn_seq += 1;
        self.last_frame = now;
        self.last_frame_at = at;
        let bytes = frame.bytes();
        self.metrics.frames.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        // Everything derived from the frame goes after the frame itself.
        let mark = self.actions.len();
        let mut record = FrameRecord {
            bytes: Vec::new(),
            checksum_ok: None,
            best_bid: None,
            best_ask: None,
        };
        if self.follow_shared(frame, at, &mut record) {
            self.journal_frame(mark, bytes, record, at);
            return;
        }
        let at = match &self.group {
            Some(group) => group.first(at),
            None => at,
        };
        self.last_frame_at = at;
        let text = match frame {
            Received::Text(t) => Ok(t),
            Received::Binary(b) => {
                std::str::from_utf8(b).map_err(|e| format!("a binary frame that is not UTF-8: {e}"))
            }
        };
        match text.and_then(|t| kraken::decode(t).map_err(|e| e.to_string())) {
            Err(error) => self.malformed(&error, at),
            Ok(Frame::Book(msg)) => self.book(&msg, bytes, at, &mut record),
            Ok(Frame::Ack(ack)) => self.ack(&ack, at),
            Ok(Frame::Instrument(msg)) => {
                for pair in &msg.pairs {
                    if self.symbols.contains_key(pair.symbol.as_ref()) {
                        let precision = pair.precision();
                        self.own_book(&pair.symbol, |b| b.known_precision() == Some(precision));
                        self.tracker.set_precision(&pair.symbol, precision);
                    }
                }
                if msg.snapshot && !self.books_requested {
                    self.subscribe_books();
                }
            }
            Ok(Frame::Status(status)) => {
                if let Some(st) = status.iter().find(|st| st.system != "online")
                    && self.status_log.take()
                {
                    tracing::warn!(
                        connection = self.conn_id,
                        system = %printable_prefix(&st.system, SYMBOL_TEXT_MAX),
                        "feed: exchange status is not online"
                    );
                }
            }
            Ok(Frame::Heartbeat | Frame::Pong(_) | Frame::Unknown(_)) => {}
        }
        self.journal_frame(mark, bytes, record, at);
    }

    /// Journals the frame as received, before everything derived from it (at `mark`).
    fn journal_frame(&mut self, mark: usize, bytes: &[u8], mut record: FrameRecord, at: Timestamp) {
        record.bytes = match &self.spare {
            Some(spare) => spare.copy_of(bytes),
            None => bytes.to_vec(),
        };
        self.actions.insert(
            mark,
            Action::Journal(Entry {
                received_at: at,
                conn_id: self.conn_id,
                conn_seq: self.conn_seq,
                body: RecordBody::Frame(record),
            }),
        );
    }

    fn malformed(&mut self, error: &str, at: Timestamp) {
        self.metrics
            .malformed_frames
            .fetch_add(1, Ordering::Relaxed);
        if self.malformed_log.take() {
            tracing::warn!(
                connection = self.conn_id,
                frame = self.conn_seq,
                error = %printable(error),
                "feed: frame does not decode; journaled as received"
            );
        }
        self.event(
            at,
            EventKind::MalformedFrame,
            None,
            None,
            printable(error).into_owned(),
        );
    }

    fn book(
        &mut self,
        msg: &BookMessage<'_>,
        bytes: &[u8],
        at: Timestamp,
        record: &mut FrameRecord,
    ) {
        let mut folded = FrameVerdict::default();
        let mut unasked = false;
        let state_every = self.config.book_state_every.max(1);
        // Kraken sends one symbol a frame; a frame of several goes to the session's own books.
        let single = msg.data.len() == 1;
        let mut best = None;
        for data in &msg.data {
            let symbol = data.symbol.as_ref();
            let Some(state) = self.symbols.get(symbol) else {
                unasked = true;
                self.note_unasked(symbol, at);
                continue;
            };
            let due = msg.kind == BookKind::Update && state.since_state + 1 >= state_every;
            let applied = self.apply_book(msg.kind, data, bytes, single, due);
            folded.add(applied.verdict);
            if single {
                best = Some(applied.best);
            }
            self.on_verdict(
                symbol,
                msg.kind,
                applied.verdict,
                data.checksum,
                data.timestamp,
                applied.parts,
                at,
            );
        }
        if unasked {
            self.metrics.unasked_frames.fetch_add(1, Ordering::Relaxed);
        }
        record.checksum_ok = folded.checksum_ok();
        if let Some((bid, ask)) = best {
            record.best_bid = bid;
            record.best_ask = ask;
        } else if let Some(first) = msg.data.first()
            && self.symbols.contains_key(first.symbol.as_ref())
            && let Some(book) = self.tracker.synced_book(&first.symbol)
        {
            record.best_bid = book.best_bid();
            record.best_ask = book.best_ask();
        }
    }

    /// Applies one symbol's part of a book message: to the shared book when this replica is a
    /// member of its lineage (or joins it now), else to the session's own.
    fn apply_book(
        &mut self,
        kind: BookKind,
        data: &crate::kraken::BookData<'_>,
        bytes: &[u8],
        single: bool,
        due: bool,
    ) -> Applied {
        let symbol = data.symbol.as_ref();
        let shared = self.shared.clone();
        if let Some((books, replica)) = &shared {
            if single {
                match books.apply(*replica, symbol, kind, data, bytes, due) {
                    Shared::Taken(outcome, parts) => return taken(outcome, parts),
                    Shared::Own(book) => {
                        // Its book at its place, when it left the lineage just now.
                        if let Some(book) = book {
                            self.tracker.put(symbol, book);
                        }
                    }
                }
                // Ahead of the lineage's front by this message: it joins before applying it.
                let last = self.symbols.get(symbol).map_or(0, |s| s.last_key);
                if books.offer(*replica, symbol, &mut self.tracker, last)
                    && let Shared::Taken(outcome, parts) =
                        books.apply(*replica, symbol, kind, data, bytes, due)
                {
                    return taken(outcome, parts);
                }
            } else {
                self.own_book(symbol, |_| false);
            }
        }
        let verdict = self.tracker.apply(kind, data);
        let book = self.tracker.synced_book(symbol);
        let applied = Applied {
            verdict,
            parts: (due && verdict == Verdict::Ok)
                .then(|| book.map(StateParts::of))
                .flatten(),
            best: book.map_or((None, None), |b| (b.best_bid(), b.best_ask())),
        };
        if let Some((books, replica)) = &shared
            && single
            && let Some(state) = self.symbols.get_mut(symbol)
        {
            state.last_key = frame_key(bytes);
            // Behind the front by this message, or the first to verify: it joins now.
            if verdict == Verdict::Ok {
                books.offer(*replica, symbol, &mut self.tracker, state.last_key);
            }
        }
        applied
    }

    /// What a verdict on one symbol's part of a book message means for the stream: metrics,
    /// coverage, book states, and the gap's events.
    #[allow(clippy::too_many_arguments)]
    fn on_verdict(
        &mut self,
        symbol: &str,
        kind: BookKind,
        verdict: Verdict,
        checksum: u32,
        timestamp: Option<Timestamp>,
        parts: Option<StateParts>,
        at: Timestamp,
    ) {
        let state_every = self.config.book_state_every.max(1);
        let Some(state) = self.symbols.get_mut(symbol) else {
            return;
        };
        state.metrics.book_messages.fetch_add(1, Ordering::Relaxed);
        match verdict {
            Verdict::Ok => {
                state.metrics.checksum_ok.fetch_add(1, Ordering::Relaxed);
                state.stream.verified(at);
                state.ever_synced = true;
                self.verified_any = true;
                if kind == BookKind::Snapshot {
                    state.since_state = 0;
                } else {
                    state.since_state += 1;
                    // Due, and the book at hand (a replica sharing books gets it rebuilt at
                    // its place when it is behind its lineage's front).
                    if state.since_state >= state_every
                        && let Some(parts) = parts
                    {
                        state.since_state = 0;
                        let body = RecordBody::BookState(BookState {
                            symbol: symbol.to_owned(),
                            depth: u16::try_from(parts.depth).unwrap_or(u16::MAX),
                            precision: parts.precision,
                            checksum,
                            timestamp: timestamp.unwrap_or(at),
                            bids: parts.view.bids,
                            asks: parts.view.asks,
                        });
                        self.actions.push_back(Action::Journal(Entry {
                            received_at: at,
                            conn_id: self.conn_id,
                            conn_seq: 0,
                            body,
                        }));
                    }
                }
                let gap = state
                    .gap_start
                    .take()
                    .or_else(|| self.continuity.gaps.remove(symbol));
                if let Some(start) = gap {
                    state.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
                    state.resubscribed_at = None;
                    tracing::info!(connection = self.conn_id, symbol = %printable(symbol), gap_start = %start, "feed: book verified again");
                    push_event(
                        &mut self.actions,
                        self.conn_id,
                        at,
                        event(
                            EventKind::Resynced,
                            Some(symbol),
                            Some(start),
                            String::new(),
                        ),
                    );
                }
            }
            Verdict::Mismatch { expected, computed } => {
                state
                    .metrics
                    .checksum_mismatch
                    .fetch_add(1, Ordering::Relaxed);
                state.stream.unverified(at);
                let kind = match kind {
                    BookKind::Snapshot => "snapshot",
                    BookKind::Update => "update",
                };
                if state.gap_start.is_none() {
                    // Logged once per episode: a peer repeating bad snapshots does not
                    // flood the log (each mismatch is still an event).
                    tracing::warn!(
                        connection = self.conn_id,
                        symbol = %printable(symbol),
                        expected,
                        computed,
                        kind,
                        "feed: checksum mismatch; resubscribing"
                    );
                    state.gap_start = Some(self.continuity.gaps.remove(symbol).unwrap_or(at));
                }
                let queue = state.resubscribed_at.is_none();
                push_event(
                    &mut self.actions,
                    self.conn_id,
                    at,
                    event(
                        EventKind::ChecksumMismatch,
                        Some(symbol),
                        None,
                        format!("{kind} checksum {expected}, computed {computed}"),
                    ),
                );
                if queue && !self.pending_resubscribe.iter().any(|s| s == symbol) {
                    self.pending_resubscribe.push_back(symbol.to_owned());
                }
            }
            Verdict::Unsynced => {
                state.metrics.unverifiable.fetch_add(1, Ordering::Relaxed);
                state.stream.unverified(at);
            }
        }
    }

    fn ack(&mut self, ack: &Response<'_>, at: Timestamp) {
        let symbol = ack.symbol();
        if let Some(symbol) = symbol
            && !self.symbols.contains_key(symbol)
        {
            // An answer about a symbol this connection does not hold (never asked for, or
            // already rejected): it changes nothing.
            self.metrics.unasked_frames.fetch_add(1, Ordering::Relaxed);
            self.note_unasked(symbol, at);
            return;
        }
        if ack.is_error() {
            let error = ack.error.as_deref().unwrap_or("rejected");
            let shown = printable_prefix(error, 200);
            if is_rate_limit_text(error) {
                tracing::warn!(connection = self.conn_id, symbol = ?symbol.map(printable), method = %printable(&ack.method), error = %shown, "feed: the exchange is rate-limiting this connection; closing it and pausing");
                self.event(at, EventKind::SubscriptionError, symbol, None, shown);
                self.close_with(Lost::RateLimited(error.to_owned()));
                return;
            }
            self.metrics
                .subscription_errors
                .fetch_add(1, Ordering::Relaxed);
            // A rejection names a symbol this connection asked for (each is logged once: it is
            // then forgotten) or none (bounded like any repeatable peer text).
            if symbol.is_some() || self.rejected_log.take() {
                tracing::error!(connection = self.conn_id, symbol = ?symbol.map(printable), method = %printable(&ack.method), error = %shown, "feed: request rejected by the exchange; not retried");
            }
            if ack.method == "subscribe"
                && let Some(symbol) = symbol
            {
                self.continuity.rejected.insert(symbol.to_owned());
                self.continuity.gaps.remove(symbol);
                self.symbols.remove(symbol);
                self.own_book(symbol, |_| false);
                self.tracker.forget(symbol);
                self.pending_resubscribe.retain(|s| s != symbol);
            }
            self.event(at, EventKind::SubscriptionError, symbol, None, shown);
            return;
        }
        let Some(result) = &ack.result else {
            return;
        };
        if result.channel != "book" {
            return;
        }
        match (ack.method.as_ref(), symbol) {
            ("subscribe", Some(symbol)) => {
                if let Some(depth) = result.depth {
                    let depth = usize::from(depth);
                    self.own_book(symbol, |b| b.depth() == depth.max(1));
                    self.tracker.set_depth(symbol, depth);
                }
                let detail = result
                    .depth
                    .map(|d| format!("depth {d}"))
                    .unwrap_or_default();
                self.event(at, EventKind::Subscribed, Some(symbol), None, detail);
            }
            ("unsubscribe", Some(symbol)) => {
                self.own_book(symbol, |_| false);
                self.tracker.forget(symbol);
                if let Some(state) = self.symbols.get_mut(symbol) {
                    state.stream.unverified(at);
                }
            }
            _ => {}
        }
    }

    /// A frame named a symbol not asked for: named in an event once per symbol (bounded per
    /// connection), logged for the first few, summed up for the rest.
    fn note_unasked(&mut self, symbol: &str, at: Timestamp) {
        let name = printable_prefix(symbol, SYMBOL_TEXT_MAX);
        match self.unasked.named.get(&name) {
            Some(true) => return,
            Some(false) => {
                self.unasked.log.suppressed += 1;
                return;
            }
            None => {}
        }
        self.unasked.log.suppressed += 1;
        if self.unasked.named.len() >= UNASKED_EVENTS_PER_CONNECTION {
            return;
        }
        let logged = self.unasked.named.len() < UNASKED_LOGGED_PER_CONNECTION;
        if logged {
            self.unasked.log.suppressed -= 1;
            tracing::warn!(
                connection = self.conn_id,
                symbol = %name,
                "feed: frames for a symbol not asked for; journaled and counted, never tracked"
            );
        }
        self.event(
            at,
            EventKind::UnaskedSymbol,
            Some(&name),
            None,
            String::new(),
        );
        self.unasked.named.insert(name, logged);
    }

    /// Logs the summaries due (`None`: all that have something to report, due or not).
    fn summaries(&mut self, now: Option<Instant>) {
        let conn_id = self.conn_id;
        if let Some(n) = self.unasked.log.summary(now) {
            tracing::warn!(
                connection = conn_id,
                frames = n,
                named = self.unasked.named.len(),
                "feed: more frames for symbols not asked for since the last report (not logged one by one)"
            );
        }
        if let Some(n) = self.malformed_log.summary(now) {
            tracing::warn!(
                connection = conn_id,
                frames = n,
                "feed: more frames that do not decode since the last report (not logged one by one)"
            );
        }
        if let Some(n) = self.rejected_log.summary(now) {
            tracing::error!(
                connection = conn_id,
                requests = n,
                "feed: more requests rejected by the exchange since the last report"
            );
        }
        if let Some(n) = self.status_log.summary(now) {
            tracing::warn!(
                connection = conn_id,
                frames = n,
                "feed: more status frames saying the exchange is not online"
            );
        }
    }

    fn subscribe_books(&mut self) {
        self.books_requested = true;
        let depth = self.config.depth;
        let asked = std::mem::take(&mut self.asked);
        for chunk in asked.chunks(SUBSCRIBE_CHUNK) {
            let request = Request::subscribe_book(chunk, depth, true, Some(self.next_req_id()));
            self.actions.push_back(Action::Send(request));
        }
        self.asked = asked;
    }

    /// Symbols resubscribed long ago and still unsynced get another resubscription.
    fn queue_stale_resubscribes(&mut self, now: Instant) {
        let retry_after = self.config.resubscribe_retry;
        for (symbol, state) in &mut self.symbols {
            if let Some(at) = state.resubscribed_at
                && state.gap_start.is_some()
                && now.saturating_duration_since(at) >= retry_after
            {
                state.resubscribed_at = None;
                if !self.pending_resubscribe.contains(symbol) {
                    self.pending_resubscribe.push_back(symbol.clone());
                }
            }
        }
    }

    fn close_with(&mut self, why: Lost) {
        if !self.closing {
            self.closing = true;
            self.actions.push_back(Action::Close(why));
        }
    }

    fn next_req_id(&mut self) -> u64 {
        self.req_id += 1;
        self.req_id
    }

    fn event(
        &mut self,
        at: Timestamp,
        kind: EventKind,
        symbol: Option<&str>,
        gap_start: Option<Timestamp>,
        detail: String,
    ) {
        push_event(
            &mut self.actions,
            self.conn_id,
            at,
            event(kind, symbol, gap_start, detail),
        );
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.leave_shared();
    }
}

fn taken(outcome: super::shared_books::Outcome, parts: Option<StateParts>) -> Applied {
    Applied {
        verdict: outcome.verdict,
        parts,
        best: (outcome.best_bid, outcome.best_ask),
    }
}

fn push_event(actions: &mut VecDeque<Action>, conn_id: u64, at: Timestamp, event: FeedEvent) {
    actions.push_back(Action::Journal(Entry {
        received_at: at,
        conn_id,
        conn_seq: 0,
        body: RecordBody::Event(event),
    }));
}

fn event(
    kind: EventKind,
    symbol: Option<&str>,
    gap_start: Option<Timestamp>,
    detail: String,
) -> FeedEvent {
    FeedEvent {
        kind,
        symbol: symbol.map(|s| printable(s).into_owned()),
        gap_start,
        detail,
    }
}

#[derive(Debug)]
struct SymbolState {
    metrics: Arc<SymbolMetrics>,
    /// This stream's part in the symbol's coverage metrics.
    stream: StreamCoverage,
    /// Verified at least once on this connection.
    ever_synced: bool,
    /// When the current gap began (after a mismatch), until the book verifies again.
    gap_start: Option<Timestamp>,
    /// When this episode's resubscription was sent.
    resubscribed_at: Option<Instant>,
    /// Verified updates since the last snapshot or journaled book state.
    since_state: u64,
    /// The key of the latest frame of the symbol applied to the session's own book (replicas
    /// sharing books only: it joins its lineage when this is the lineage's latest).
    last_key: u64,
}

impl SymbolState {
    fn new(metrics: Arc<SymbolMetrics>) -> Self {
        SymbolState {
            stream: StreamCoverage::new(Arc::clone(&metrics)),
            metrics,
            ever_synced: false,
            gap_start: None,
            resubscribed_at: None,
            since_state: 0,
            last_key: 0,
        }
    }
}

/// The symbols not asked for that a connection has named in events (at most
/// [`UNASKED_EVENTS_PER_CONNECTION`], each at most [`SYMBOL_TEXT_MAX`] characters).
#[derive(Debug)]
struct Unasked {
    /// Symbol → whether it was logged on its own line.
    named: HashMap<String, bool>,
    log: LogBudget,
}

impl Unasked {
    fn new(now: Instant) -> Self {
        Unasked {
            named: HashMap::new(),
            log: LogBudget {
                // The one-by-one lines are counted by `named`.
                left: 0,
                suppressed: 0,
                last_summary: now,
            },
        }
    }
}

/// A bound on log lines a peer can provoke: the first few one by one, then a count once a minute.
#[derive(Debug)]
struct LogBudget {
    left: u32,
    suppressed: u64,
    last_summary: Instant,
}

impl LogBudget {
    fn new(now: Instant) -> Self {
        LogBudget {
            left: LOGGED_PER_CONNECTION,
            suppressed: 0,
            last_summary: now,
        }
    }

    /// Whether this occurrence may be logged on its own line (otherwise it is counted).
    fn take(&mut self) -> bool {
        if self.left > 0 {
            self.left -= 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// The count to report, once a minute at most (`None`: now, due or not).
    fn summary(&mut self, now: Option<Instant>) -> Option<u64> {
        if self.suppressed == 0 {
            return None;
        }
        if let Some(now) = now {
            if now.saturating_duration_since(self.last_summary) < SUMMARY_EVERY {
                return None;
            }
            self.last_summary = now;
        }
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
