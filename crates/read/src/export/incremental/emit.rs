//! The incremental export's rows, decided without I/O: the [`Follower`] walks each symbol's
//! segments through the stored messages, read in received order, and its emitter turns them into
//! the file's rows: the stored levels, and (unless `--stored-only`) the opening books, the
//! implied deletions, resets, snapshot ends and gap deletions the parent module's doc describes.
//!
//! What must hold (the tests below check it with the three consumer models of
//! [`crate::export::consumers`] on a table of records with every kind of gap): a consumer that
//! applies the rows stamped at or before an instant holds `book --at`'s book there where the
//! coverage model verifies it, an empty book in a gap. The levels past the subscribed depth are
//! dropped by Kraken's one window rule, [`crate::book::window::truncate`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use super::timeline::{Opening, Opens, Pos, Segment};
use crate::book::window;
use crate::book::{Decimal, Side};
use crate::time::Timestamp;

/// The instant rounded up to the microsecond (the file's unit): a row stamped there is applied
/// by a consumer at no instant before it.
fn ceil_micros(t: Timestamp) -> Timestamp {
    let n = t.unix_nanos();
    Timestamp::from_unix_nanos(n + (1000 - n.rem_euclid(1000)) % 1000)
}

/// What one row of the file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RowKind {
    /// A level of a book written where a segment starts.
    Opening,
    /// A stored level.
    Stored,
    /// A level Kraken dropped past the depth.
    Implied,
    /// A level deleted before a new snapshot.
    Reset,
    /// A level deleted where a gap starts.
    GapClear,
    /// The last level of a snapshot again, as an update: ends the snapshot for consumers that
    /// apply one only when a non-snapshot row follows it.
    SnapshotEnd,
}

/// One row of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Row<'a> {
    pub(super) kind: RowKind,
    pub(super) symbol: &'a str,
    pub(super) ts: Timestamp,
    pub(super) received: Timestamp,
    pub(super) snapshot: bool,
    pub(super) side: Side,
    pub(super) price: Decimal,
    pub(super) amount: Decimal,
}

#[derive(Debug)]
struct Track {
    symbol: String,
    segments: Vec<(Segment, Opens)>,
    /// The segment open (when `open`), else the next one to open.
    at: usize,
    open: bool,
    /// Bumped at every event: entries of the queues with an older one are stale.
    generation: u64,
}

/// What happens next on a track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Event {
    /// Due only after a stored row read past this (the last record of the segment before it: no
    /// row of that segment can follow).
    after: Pos,
    /// Due only at a stored row stamped at or after this.
    at: Timestamp,
}

impl Track {
    /// The next event: the open segment's gap, or the next segment's start.
    fn next_event(&self) -> Option<Event> {
        let (current, next) = if self.open {
            let (seg, _) = self.segments.get(self.at)?;
            if seg.gap_after {
                return Some(Event {
                    after: seg.after,
                    at: seg.end,
                });
            }
            (Some(seg), self.segments.get(self.at + 1))
        } else {
            (
                self.at
                    .checked_sub(1)
                    .and_then(|i| self.segments.get(i))
                    .map(|(s, _)| s),
                self.segments.get(self.at),
            )
        };
        let (next, _) = next?;
        Some(Event {
            after: current.map_or((Timestamp::from_unix_nanos(i64::MIN), 0, i64::MIN), |s| {
                s.after
            }),
            at: next.start,
        })
    }
}

/// Follows each symbol's segments through the stored rows, read in received order, and turns
/// them into the file's rows (see the module doc); no I/O.
#[derive(Debug)]
pub(super) struct Follower {
    emitter: Emitter,
    stored_only: bool,
    tracks: Vec<Track>,
    by_symbol: HashMap<String, usize>,
    /// Events whose `after` no row has passed yet: (after, track, generation).
    waiting: BinaryHeap<Reverse<(Pos, usize, u64)>>,
    /// Events past their `after`, by instant: (at, track, generation).
    due: BinaryHeap<Reverse<(Timestamp, usize, u64)>>,
    /// Books written where coverage starts (at the first segment, and after a gap).
    pub(super) coverage_starts: u64,
    /// Gaps whose start was written (deletions of every level held).
    pub(super) gaps_cleared: u64,
    /// Books written where the stream followed changed without a gap (another stream, of the
    /// same collector or another, verified where the one followed stopped being).
    pub(super) switches: u64,
}

impl Follower {
    pub(super) fn new(
        stored_only: bool,
        symbols: impl IntoIterator<Item = (String, Vec<(Segment, Opens)>)>,
    ) -> Follower {
        let mut f = Follower {
            emitter: Emitter::new(stored_only),
            stored_only,
            tracks: Vec::new(),
            by_symbol: HashMap::new(),
            waiting: BinaryHeap::new(),
            due: BinaryHeap::new(),
            coverage_starts: 0,
            gaps_cleared: 0,
            switches: 0,
        };
        for (symbol, segments) in symbols {
            let k = f.tracks.len();
            f.by_symbol.insert(symbol.clone(), k);
            f.tracks.push(Track {
                symbol,
                segments,
                at: 0,
                open: false,
                generation: 0,
            });
            f.schedule(k);
        }
        f
    }

    /// Queues track `k`'s next event.
    fn schedule(&mut self, k: usize) {
        let t = &self.tracks[k];
        if let Some(e) = t.next_event() {
            self.waiting.push(Reverse((e.after, k, t.generation)));
        }
    }

    /// Applies track `k`'s next event: a gap's deletions, or a segment's start.
    fn fire(&mut self, k: usize, out: &mut dyn FnMut(Row<'_>)) {
        let t = &mut self.tracks[k];
        let Some(event) = t.next_event() else {
            return;
        };
        t.generation += 1;
        let gap = t.open && t.segments.get(t.at).is_some_and(|(s, _)| s.gap_after);
        if gap {
            t.open = false;
            t.at += 1;
            self.gaps_cleared += 1;
            self.emitter.clear(&t.symbol, ceil_micros(event.at), out);
        } else {
            if t.open {
                // The stream followed changes without a gap.
                t.at += 1;
                self.switches += 1;
            } else {
                self.coverage_starts += 1;
            }
            t.open = true;
            if let Some((seg, Opens::Book(book))) = t.segments.get(t.at) {
                let ts = ceil_micros(seg.start);
                self.emitter
                    .open(&t.symbol, book, ts, book.received.max(ts), out);
            }
        }
        self.schedule(k);
    }

    /// A stored message read at `pos`, stamped `ts`, comes next: the events it makes due go first.
    pub(super) fn advance(&mut self, pos: Pos, ts: Timestamp, out: &mut dyn FnMut(Row<'_>)) {
        if self.stored_only {
            return;
        }
        loop {
            while let Some(&Reverse((after, k, g))) = self.waiting.peek()
                && after < pos
            {
                self.waiting.pop();
                if let Some(e) = self.tracks[k].next_event()
                    && self.tracks[k].generation == g
                {
                    self.due.push(Reverse((e.at, k, g)));
                }
            }
            match self.due.peek() {
                Some(&Reverse((at, k, g))) if at <= ts => {
                    self.due.pop();
                    if self.tracks[k].generation == g {
                        self.fire(k, out);
                    }
                }
                _ => break,
            }
        }
    }

    /// Whether the stored message of `symbol` read at `pos`, stamped `ts`, is written: it belongs
    /// to one of the symbol's segments (the one open, or a later one, which is then opened first).
    pub(super) fn enter(
        &mut self,
        symbol: &str,
        pos: Pos,
        ts: Timestamp,
        out: &mut dyn FnMut(Row<'_>),
    ) -> bool {
        if self.stored_only {
            return true;
        }
        let Some(&k) = self.by_symbol.get(symbol) else {
            return false;
        };
        let t = &self.tracks[k];
        let Some(j) = t
            .segments
            .iter()
            .enumerate()
            .skip(t.at)
            .find(|(_, (s, _))| s.holds(pos, ts))
            .map(|(j, _)| j)
        else {
            return false;
        };
        while !(self.tracks[k].open && self.tracks[k].at == j) {
            self.fire(k, out);
        }
        true
    }

    /// The rest of every track: segments that start, and gaps that begin, after the last row.
    pub(super) fn finish(&mut self, out: &mut dyn FnMut(Row<'_>)) {
        if self.stored_only {
            return;
        }
        // In time order across the symbols.
        while let Some((k, _)) = self
            .tracks
            .iter()
            .enumerate()
            .filter_map(|(k, t)| t.next_event().map(|e| (k, e.at)))
            .min_by_key(|(k, at)| (*at, *k))
        {
            self.fire(k, out);
        }
    }

    pub(super) fn begin_message(
        &mut self,
        symbol: &str,
        snapshot: bool,
        depth: Option<usize>,
        ts: Timestamp,
        received: Timestamp,
        out: &mut dyn FnMut(Row<'_>),
    ) {
        self.emitter
            .begin_message(symbol, snapshot, depth, ts, received, out);
    }

    pub(super) fn level(
        &mut self,
        side: Side,
        price: Decimal,
        qty: Decimal,
        out: &mut dyn FnMut(Row<'_>),
    ) {
        self.emitter.level(side, price, qty, out);
    }

    pub(super) fn end_message(&mut self, out: &mut dyn FnMut(Row<'_>)) {
        self.emitter.end_message(out);
    }
}

/// Turns messages into the file's rows: the stored levels, plus (unless stored-only) the
/// implied deletions, resets and snapshot ends that let every consumer hold Kraken's book from
/// the file alone, the books written where segments start and the deletions where gaps start.
#[derive(Debug)]
struct Emitter {
    stored_only: bool,
    held: HashMap<String, Held>,
    current: Option<Message>,
}

/// The message being written.
#[derive(Debug)]
struct Message {
    symbol: String,
    ts: Timestamp,
    received: Timestamp,
    snapshot: bool,
    /// A snapshot's last level written.
    last: Option<(Side, Decimal, Decimal)>,
}

impl Emitter {
    fn new(stored_only: bool) -> Emitter {
        Emitter {
            stored_only,
            held: HashMap::new(),
            current: None,
        }
    }

    /// A book written where a segment starts, as snapshot rows (and its snapshot end).
    fn open(
        &mut self,
        symbol: &str,
        book: &Opening,
        ts: Timestamp,
        received: Timestamp,
        out: &mut dyn FnMut(Row<'_>),
    ) {
        self.begin_message(symbol, true, book.depth, ts, received, out);
        for (side, levels) in [(Side::Bid, &book.bids), (Side::Ask, &book.asks)] {
            for l in levels {
                self.write_level(RowKind::Opening, side, l.price, l.qty, out);
            }
        }
        self.end_message(out);
    }

    /// A gap starts at `ts`: every level held is deleted.
    fn clear(&mut self, symbol: &str, ts: Timestamp, out: &mut dyn FnMut(Row<'_>)) {
        let Some(held) = self.held.get_mut(symbol) else {
            return;
        };
        let received = held.last_received.map_or(ts, |r| r.max(ts));
        for (side, price) in held.clear() {
            out(Row {
                kind: RowKind::GapClear,
                symbol,
                ts,
                received,
                snapshot: false,
                side,
                price,
                amount: Decimal::ZERO,
            });
        }
        held.known = false;
        held.last_received = Some(received);
    }

    /// A message begins (`depth`: its subscription's, for a snapshot). Before a snapshot, every
    /// level a consumer still holds for the symbol is deleted.
    fn begin_message(
        &mut self,
        symbol: &str,
        snapshot: bool,
        depth: Option<usize>,
        ts: Timestamp,
        received: Timestamp,
        out: &mut dyn FnMut(Row<'_>),
    ) {
        if snapshot && !self.stored_only {
            let held = self.held.entry(symbol.to_owned()).or_default();
            for (side, price) in held.clear() {
                out(Row {
                    kind: RowKind::Reset,
                    symbol,
                    ts,
                    received,
                    snapshot: false,
                    side,
                    price,
                    amount: Decimal::ZERO,
                });
            }
            held.known = true;
            held.depth = depth;
        }
        self.current = Some(Message {
            symbol: symbol.to_owned(),
            ts,
            received,
            snapshot,
            last: None,
        });
    }

    /// A stored level of the current message.
    fn level(&mut self, side: Side, price: Decimal, qty: Decimal, out: &mut dyn FnMut(Row<'_>)) {
        self.write_level(RowKind::Stored, side, price, qty, out);
    }

    fn write_level(
        &mut self,
        kind: RowKind,
        side: Side,
        price: Decimal,
        qty: Decimal,
        out: &mut dyn FnMut(Row<'_>),
    ) {
        let Some(m) = &mut self.current else {
            return;
        };
        out(Row {
            kind,
            symbol: &m.symbol,
            ts: m.ts,
            received: m.received,
            snapshot: m.snapshot,
            side,
            price,
            amount: qty,
        });
        if m.snapshot {
            m.last = Some((side, price, qty));
        }
        if !self.stored_only {
            // Held whether or not the book is known: a consumer that applies every row holds
            // it, and the next snapshot or gap deletes it.
            let held = match self.held.get_mut(&m.symbol) {
                Some(held) => held,
                None => self.held.entry(m.symbol.clone()).or_default(),
            };
            held.apply(side, price, qty);
            held.last_received = Some(m.received);
        }
    }

    /// The current message ends: the levels Kraken dropped past the depth are deleted, and a
    /// snapshot not followed by such a deletion gets its snapshot end.
    fn end_message(&mut self, out: &mut dyn FnMut(Row<'_>)) {
        let Some(m) = self.current.take() else {
            return;
        };
        if self.stored_only {
            return;
        }
        let Some(held) = self.held.get_mut(&m.symbol) else {
            return;
        };
        let row = |kind, side, price, amount| Row {
            kind,
            symbol: &m.symbol,
            ts: m.ts,
            received: m.received,
            snapshot: false,
            side,
            price,
            amount,
        };
        let mut dropped = 0;
        if held.known {
            for (side, price) in held.overflow() {
                dropped += 1;
                out(row(RowKind::Implied, side, price, Decimal::ZERO));
            }
        }
        if m.snapshot
            && dropped == 0
            && let Some((side, price, qty)) = m.last
        {
            out(row(RowKind::SnapshotEnd, side, price, qty));
        }
    }
}

/// What a consumer that applies every row of the file holds for a symbol (the prices of each
/// side), and Kraken's window over it ([`window::truncate`]).
#[derive(Debug, Default)]
struct Held {
    /// Known since a snapshot (a book written where a segment starts, or a stored one), and not
    /// cleared by a gap since.
    known: bool,
    /// The subscribed depth (`None`: unknown, nothing is dropped).
    depth: Option<usize>,
    bids: BTreeSet<Decimal>,
    asks: BTreeSet<Decimal>,
    /// The `local_timestamp` of the symbol's last row.
    last_received: Option<Timestamp>,
}

impl Held {
    fn apply(&mut self, side: Side, price: Decimal, qty: Decimal) {
        let set = match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        if qty.is_zero() {
            set.remove(&price);
        } else {
            set.insert(price);
        }
    }

    /// Drops the levels past the depth, by Kraken's window rule (the worst: lowest bids,
    /// highest asks); the levels dropped.
    fn overflow(&mut self) -> Vec<(Side, Decimal)> {
        let Some(depth) = self.depth else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (side, set) in [(Side::Bid, &mut self.bids), (Side::Ask, &mut self.asks)] {
            out.extend(
                window::truncate(side, set, depth)
                    .into_iter()
                    .map(|p| (side, p)),
            );
        }
        out
    }

    /// Empties the book; the levels it held.
    fn clear(&mut self) -> Vec<(Side, Decimal)> {
        let bids = std::mem::take(&mut self.bids);
        let asks = std::mem::take(&mut self.asks);
        bids.into_iter()
            .map(|p| (Side::Bid, p))
            .chain(asks.into_iter().map(|p| (Side::Ask, p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::timeline::{single, timeline};
    use super::*;
    use crate::book::OrderBook;
    use crate::export::consumers::{
        Book, ClearsToDeepest, Consumer, L2Row, NeverClears, TardisRule,
    };
    use crate::history::{Connection, Coverage, Mark, Observation, Observed, StreamId};

    const DEPTH: usize = 2;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn levels(spec: Spec) -> Vec<(Decimal, Decimal)> {
        spec.iter().map(|(p, q)| (d(p), d(q))).collect()
    }

    /// Second `s` of a fixed day.
    fn t(s: f64) -> Timestamp {
        Timestamp::from_unix_nanos(1_800_000_000_000_000_000 + (s * 1e9).round() as i64)
    }

    /// Levels as text: `(price, quantity)`.
    type Spec = &'static [(&'static str, &'static str)];

    /// What one record of the collector's is.
    #[derive(Clone, Copy, Debug)]
    enum What {
        /// A connection's first frame.
        Connected,
        /// The book subscription acknowledged.
        Subscribed,
        /// A book message that verified, stamped `kraken` (seconds).
        Verified {
            snapshot: bool,
            kraken: f64,
            bids: Spec,
            asks: Spec,
        },
        /// An update whose checksum did not match (one before it was lost).
        Mismatch { kraken: f64, bids: Spec },
        /// An update after a mismatch, before the resubscription's snapshot: never verified.
        Unsynced { kraken: f64, bids: Spec },
        /// A heartbeat.
        Heartbeat,
    }
    use What::*;

    /// A record: (seq, connection, received at (seconds), what).
    type Rec = (i64, i64, f64, What);

    fn stream(conn: i64) -> StreamId {
        StreamId {
            collector: "c".into(),
            conn_id: conn,
        }
    }

    /// What a source would observe of the records, and the coverage the model computes.
    fn coverage_of(records: &[Rec]) -> Coverage {
        let mut observed = Observed {
            symbol: "X".into(),
            ..Observed::default()
        };
        let mut conns: Vec<i64> = records.iter().map(|r| r.1).collect();
        conns.dedup();
        for conn in conns {
            let mine: Vec<&Rec> = records.iter().filter(|r| r.1 == conn).collect();
            let (first, last) = (mine[0], mine[mine.len() - 1]);
            observed.connections.push(Connection {
                id: stream(conn),
                first_seq: first.0,
                last_seq: last.0,
                first_received: t(first.2),
                last_received: t(last.2),
                loss_recorded: true,
            });
            let mut last_verified = None;
            for &&(seq, _, received, what) in &mine {
                let mark = match what {
                    Subscribed => Mark::Subscribed,
                    Verified {
                        snapshot, kraken, ..
                    } => {
                        last_verified = Some(t(kraken));
                        if !snapshot {
                            continue;
                        }
                        Mark::Snapshot { kraken: t(kraken) }
                    }
                    Mismatch { kraken, .. } => Mark::Mismatch {
                        kraken: t(kraken),
                        last_verified: last_verified.take(),
                    },
                    _ => continue,
                };
                observed.observations.push(Observation {
                    stream: stream(conn),
                    seq,
                    received: t(received),
                    mark,
                });
            }
        }
        Coverage::compute(&observed)
    }

    /// A book message's fields: (snapshot, Kraken's timestamp, bids, asks).
    fn message(what: What) -> Option<(bool, f64, Spec, Spec)> {
        match what {
            Verified {
                snapshot,
                kraken,
                bids,
                asks,
            } => Some((snapshot, kraken, bids, asks)),
            Mismatch { kraken, bids } | Unsynced { kraken, bids } => {
                Some((false, kraken, bids, &[]))
            }
            _ => None,
        }
    }

    fn engine_book(b: &OrderBook) -> Book {
        (
            b.bids().map(|l| (l.price, l.qty)).collect(),
            b.asks().map(|l| (l.price, l.qty)).collect(),
        )
    }

    /// The verified messages of a span, stamped at or before `until` (or strictly before),
    /// applied by the book engine; the receive time of the last one. What `book --at` and the
    /// cursor do, by other code.
    fn replay(
        records: &[Rec],
        conn: i64,
        seqs: (i64, i64),
        keep: impl Fn(Timestamp) -> bool,
    ) -> Option<(OrderBook, Timestamp)> {
        let mut engine = OrderBook::new(DEPTH);
        let mut synced = None;
        for &(seq, c, received, what) in records {
            let Verified {
                snapshot,
                kraken,
                bids,
                asks,
            } = what
            else {
                continue;
            };
            if c != conn || seq < seqs.0 || seq > seqs.1 || !keep(t(kraken)) {
                continue;
            }
            if snapshot {
                engine.apply_snapshot(levels(bids), levels(asks)).unwrap();
                synced = Some(t(received));
            } else if synced.is_some() {
                engine.apply_update(levels(bids), levels(asks)).unwrap();
                synced = Some(t(received));
            }
        }
        synced.map(|r| (engine, r))
    }

    /// `book --at`: the book of the stream the coverage model chooses at `at`, or none in a gap.
    fn book_at(records: &[Rec], coverage: &Coverage, at: Timestamp) -> Option<Book> {
        let (s, span) = coverage.choose(at)?;
        let (engine, _) = replay(
            records,
            s.stream.conn_id,
            (span.start_seq, span.last_seq),
            |k| k <= at,
        )
        .expect("a verified span starts with a snapshot");
        Some(engine_book(&engine))
    }

    /// A row as the tests keep it.
    #[derive(Clone, Debug)]
    struct Written {
        kind: RowKind,
        ts: Timestamp,
        received: Timestamp,
        row: L2Row,
    }

    /// The export of symbol X over `[from, to)`: its segments (the book at each start rebuilt
    /// like the cursor does) driven through the records in received order.
    fn export(records: &[Rec], coverage: &Coverage, from: f64, to: f64) -> Vec<Written> {
        let (from, to) = (t(from), t(to));
        let segments: Vec<(Segment, Opens)> = timeline(coverage, from, to)
            .into_iter()
            .map(|seg| {
                let opens = match replay(
                    records,
                    seg.stream.conn_id,
                    (seg.start_seq, seg.last_seq),
                    |k| k < seg.start,
                ) {
                    Some((engine, received)) => Opens::Book(Opening {
                        bids: engine.bids().collect(),
                        asks: engine.asks().collect(),
                        depth: Some(DEPTH),
                        scales: (1, 0),
                        received,
                    }),
                    None => Opens::Stored,
                };
                (seg, opens)
            })
            .collect();
        let mut follower = Follower::new(false, [("X".to_owned(), segments)]);
        let mut rows = Vec::new();
        let mut out = |r: Row<'_>| {
            assert_eq!(r.symbol, "X");
            rows.push(Written {
                kind: r.kind,
                ts: r.ts,
                received: r.received,
                row: L2Row {
                    snapshot: r.snapshot,
                    side: r.side,
                    price: r.price,
                    amount: r.amount,
                },
            });
        };
        for &(seq, _, received, what) in records {
            let Some((snapshot, kraken, bids, asks)) = message(what) else {
                continue;
            };
            let ts = t(kraken);
            if ts < from || ts >= to {
                continue;
            }
            follower.advance(single(seq), ts, &mut out);
            if follower.enter("X", single(seq), ts, &mut out) {
                follower.begin_message("X", snapshot, Some(DEPTH), ts, t(received), &mut out);
                for (p, q) in levels(bids) {
                    follower.level(Side::Bid, p, q, &mut out);
                }
                for (p, q) in levels(asks) {
                    follower.level(Side::Ask, p, q, &mut out);
                }
                follower.end_message(&mut out);
            }
        }
        follower.finish(&mut out);
        rows
    }

    fn consumers() -> Vec<(&'static str, Box<dyn Consumer>)> {
        vec![
            ("tardis", Box::new(TardisRule::default())),
            ("nautilus", Box::new(NeverClears::default())),
            ("hftbacktest", Box::new(ClearsToDeepest::default())),
        ]
    }

    /// Every consumer model applies every row stamped at or before each instant of `[from,
    /// to)` that matters (every message's, every bound of a span or a gap, and between them):
    /// each must hold `book --at`'s book where the coverage model verifies it, an empty book
    /// in a gap. Returns the rows and the number of books compared.
    fn check(records: &[Rec], from: f64, to: f64) -> (Vec<Written>, usize) {
        let coverage = coverage_of(records);
        let rows = export(records, &coverage, from, to);
        let (from, to) = (t(from), t(to));
        for w in rows.windows(2) {
            assert!(w[0].ts <= w[1].ts, "rows go back in time: {w:?}");
            assert!(w[0].received <= w[1].received, "local times go back: {w:?}");
        }
        // No row of a message the coverage model does not verify.
        for &(_, _, _, what) in records {
            if let Mismatch { kraken, bids } | Unsynced { kraken, bids } = what {
                for (price, _) in levels(bids) {
                    assert!(
                        !rows
                            .iter()
                            .any(|r| r.ts == t(kraken) && r.row.price == price),
                        "a row of the unverified update at {kraken}"
                    );
                }
            }
        }
        let mut instants: Vec<Timestamp> = records
            .iter()
            .filter_map(|r| message(r.3).map(|m| t(m.1)))
            .collect();
        for s in &coverage.streams {
            for span in &s.spans {
                instants.extend([span.start, span.end, span.end.add_nanos(-1000)]);
            }
        }
        let mut around: Vec<Timestamp> = instants.clone();
        around.sort();
        for w in around.windows(2) {
            instants.push(w[0].add_nanos(w[1].nanos_since(w[0]) / 2));
        }
        instants.retain(|&i| from <= i && i < to);
        instants.sort();
        instants.dedup();
        let mut compared = 0;
        for (name, mut consumer) in consumers() {
            let mut next = 0;
            for &at in &instants {
                while next < rows.len() && rows[next].ts <= at {
                    consumer.apply(&rows[next].row);
                    next += 1;
                }
                let want = book_at(records, &coverage, at).unwrap_or_default();
                assert_eq!(
                    consumer.book(),
                    want,
                    "{name} at {at} ({})",
                    if coverage.covers(at) {
                        "verified"
                    } else {
                        "in a gap"
                    }
                );
                compared += 1;
            }
        }
        (rows, compared)
    }

    /// Two connections of a quiet-and-busy pair at depth 2, with every way a book starts and
    /// stops being known.
    const RECORDS: &[Rec] = &[
        (1, 1, 0.0, Connected),
        (2, 1, 1.0, Subscribed),
        // Stamped before the stream began (a quiet pair's snapshot carries its last change):
        // coverage starts at the subscription, with the book as it was then.
        (
            3,
            1,
            1.1,
            Verified {
                snapshot: true,
                kraken: 0.5,
                bids: &[("100.0", "1"), ("99.0", "1")],
                asks: &[("101.0", "1"), ("102.0", "1")],
            },
        ),
        (
            4,
            1,
            1.2,
            Verified {
                snapshot: false,
                kraken: 0.9,
                bids: &[("100.5", "2")],
                asks: &[],
            },
        ),
        // An insert pushes the worst ask out: an implied deletion.
        (
            5,
            1,
            1.6,
            Verified {
                snapshot: false,
                kraken: 1.5,
                bids: &[],
                asks: &[("100.8", "3")],
            },
        ),
        // A deletion and a level re-entering the window.
        (
            6,
            1,
            2.1,
            Verified {
                snapshot: false,
                kraken: 2.0,
                bids: &[("100.5", "0"), ("99.5", "1")],
                asks: &[],
            },
        ),
        // An update was lost: the book is not known from just after the last verified one.
        (
            7,
            1,
            3.1,
            Mismatch {
                kraken: 3.0,
                bids: &[("98.0", "1")],
            },
        ),
        (
            8,
            1,
            3.6,
            Unsynced {
                kraken: 3.5,
                bids: &[("97.0", "7")],
            },
        ),
        (9, 1, 4.0, Subscribed),
        // The resubscription's snapshot, shallower: coverage starts again at its own instant.
        (
            10,
            1,
            4.3,
            Verified {
                snapshot: true,
                kraken: 4.2,
                bids: &[("98.0", "1")],
                asks: &[("103.0", "1")],
            },
        ),
        (
            11,
            1,
            5.1,
            Verified {
                snapshot: false,
                kraken: 5.0,
                bids: &[("98.5", "1")],
                asks: &[],
            },
        ),
        // A snapshot inside the span (a resubscription that healed at once), and the same again.
        (
            12,
            1,
            5.6,
            Verified {
                snapshot: true,
                kraken: 5.5,
                bids: &[("97.0", "4")],
                asks: &[("104.0", "5"), ("105.0", "1")],
            },
        ),
        (
            13,
            1,
            5.8,
            Verified {
                snapshot: true,
                kraken: 5.7,
                bids: &[("97.0", "4")],
                asks: &[("104.0", "5"), ("105.0", "1")],
            },
        ),
        (
            14,
            1,
            6.1,
            Verified {
                snapshot: false,
                kraken: 6.0,
                bids: &[("97.5", "1")],
                asks: &[],
            },
        ),
        // The connection's last frame: a gap until the next connection's book.
        (15, 1, 7.0, Heartbeat),
        (16, 2, 9.0, Connected),
        (17, 2, 9.1, Subscribed),
        // Stamped before the stream began, after the gap: coverage starts at the subscription.
        (
            18,
            2,
            9.2,
            Verified {
                snapshot: true,
                kraken: 8.0,
                bids: &[("96.0", "1"), ("95.0", "1")],
                asks: &[("106.0", "1")],
            },
        ),
        (
            19,
            2,
            9.3,
            Verified {
                snapshot: false,
                kraken: 9.5,
                bids: &[],
                asks: &[("105.5", "2")],
            },
        ),
        (
            20,
            2,
            10.1,
            Verified {
                snapshot: false,
                kraken: 10.0,
                bids: &[("96.5", "1")],
                asks: &[],
            },
        ),
        // A mismatch whose resubscription's snapshot carries the very next microsecond: the
        // spans touch, no gap.
        (
            21,
            2,
            10.2,
            Mismatch {
                kraken: 10.000001,
                bids: &[("50.0", "1")],
            },
        ),
        (22, 2, 10.3, Subscribed),
        (
            23,
            2,
            10.4,
            Verified {
                snapshot: true,
                kraken: 10.000001,
                bids: &[("96.5", "1"), ("96.0", "1")],
                asks: &[("105.5", "2"), ("106.0", "1")],
            },
        ),
        (
            24,
            2,
            11.1,
            Verified {
                snapshot: false,
                kraken: 11.0,
                bids: &[("96.8", "3")],
                asks: &[],
            },
        ),
        (25, 2, 12.0, Heartbeat),
    ];

    #[test]
    fn every_consumer_rebuilds_the_engines_book_after_every_message() {
        let coverage = coverage_of(RECORDS);
        // The model sees what the table means: two gaps inside the record.
        let inner: Vec<_> = coverage
            .gaps
            .iter()
            .filter(|g| g.start.is_some() && g.cause != crate::history::Cause::NotRecorded)
            .map(|g| (g.start.unwrap(), g.cause))
            .collect();
        assert_eq!(
            inner,
            [
                (t(2.000001), crate::history::Cause::Mismatch),
                (t(7.0), crate::history::Cause::ConnectionLost),
            ],
            "{:?}",
            coverage.gaps
        );
        // Ranges from before the record, from mid-span, from inside each gap, and to mid-span.
        for (from, to) in [
            (0.0, 13.0),
            (1.0, 12.0),
            (1.5, 6.5),
            (3.0, 9.6),
            (5.55, 10.05),
            (8.5, 9.15),
            (7.5, 13.0),
        ] {
            let (rows, compared) = check(RECORDS, from, to);
            assert!(compared >= 6, "[{from}, {to}): {compared} books compared");
            if (from, to) == (0.0, 13.0) {
                let count = |k| rows.iter().filter(|r| r.kind == k).count();
                // Where coverage starts at 1.0 and 9.1 (the snapshots are older) a book is
                // written (4 and 3 levels); at 4.2 the stored snapshot is the book.
                assert_eq!(count(RowKind::Opening), 4 + 3, "{rows:?}");
                assert!(count(RowKind::GapClear) >= 4, "{rows:?}");
                assert!(count(RowKind::Implied) > 0);
                assert!(count(RowKind::Reset) > 0);
                // Every book written and stored snapshot ends with a non-snapshot row.
                assert_eq!(count(RowKind::SnapshotEnd), 2 + 4, "{rows:?}");
            }
        }
    }

    /// The export started between the first snapshot's Kraken time and its stream's start wrote
    /// that symbol's updates from `--from` on (nautilus_trader and hftbacktest applied them to
    /// an empty book for 14 s): it opens with the book at the stream's start instead.
    #[test]
    fn an_export_starting_just_before_the_first_snapshot_opens_with_it() {
        let (rows, _) = check(RECORDS, 8.5, 12.0);
        let first = &rows[0];
        assert_eq!(first.kind, RowKind::Opening);
        assert_eq!(first.ts, t(9.1), "stamped where the stream began");
        assert_eq!(first.received, t(9.2), "received with the snapshot");
        assert!(rows.iter().all(|r| r.ts >= t(9.1)));
    }

    #[test]
    fn no_row_of_an_unverified_book_is_written_and_a_gap_empties_every_book() {
        let (rows, _) = check(RECORDS, 1.5, 5.0);
        // The book at 1.5, its updates to 2.0, every level deleted at the gap's start, the
        // resubscription's snapshot at 4.2 (nothing to reset).
        let clear: Vec<&Written> = rows
            .iter()
            .filter(|r| r.kind == RowKind::GapClear)
            .collect();
        assert_eq!(clear.len(), 4, "{rows:?}");
        assert!(clear.iter().all(|r| r.ts == t(2.000001)));
        assert!(!rows.iter().any(|r| r.kind == RowKind::Reset));
        assert!(
            rows.iter()
                .filter(|r| r.ts > t(2.0) && r.ts < t(4.2))
                .all(|r| r.kind == RowKind::GapClear)
        );
    }

    #[test]
    fn at_a_streams_gap_the_timeline_continues_with_another_verified_there() {
        // Two connections of one collector carrying the pair at once (issue 12): the first from
        // 1 to its loss at 10, the second from 5 to 20 with a mismatch at 15.
        let conn = |n: i64, seqs: (i64, i64), from: f64, to: f64| Connection {
            id: stream(n),
            first_seq: seqs.0,
            last_seq: seqs.1,
            first_received: t(from),
            last_received: t(to),
            loss_recorded: true,
        };
        let mark = |n: i64, seq: i64, received: f64, mark: Mark| Observation {
            stream: stream(n),
            seq,
            received: t(received),
            mark,
        };
        let coverage = Coverage::compute(&Observed {
            symbol: "X".into(),
            connections: vec![conn(1, (1, 100), 0.5, 10.0), conn(2, (50, 300), 4.0, 20.0)],
            observations: vec![
                mark(1, 2, 0.9, Mark::Subscribed),
                mark(1, 3, 1.0, Mark::Snapshot { kraken: t(1.0) }),
                mark(2, 51, 4.5, Mark::Subscribed),
                mark(2, 52, 5.0, Mark::Snapshot { kraken: t(5.0) }),
                mark(
                    2,
                    200,
                    15.0,
                    Mark::Mismatch {
                        kraken: t(15.0),
                        last_verified: Some(t(14.0)),
                    },
                ),
            ],
            damage: vec![],
        });
        let segs = timeline(&coverage, t(0.0), t(30.0));
        let brief: Vec<_> = segs
            .iter()
            .map(|s| (s.stream.conn_id, s.start, s.end, s.gap_after))
            .collect();
        assert_eq!(
            brief,
            [
                (1, t(1.0), t(10.0), false),
                (2, t(10.0), t(14.000001), true),
            ]
        );
        // From inside the first stream's span but after it ends: the second alone.
        let segs = timeline(&coverage, t(12.0), t(13.0));
        assert_eq!(segs.len(), 1);
        assert_eq!((segs[0].stream.conn_id, segs[0].start), (2, t(12.0)));
        assert!(!segs[0].gap_after, "ends at --to");
        // Nothing verified in the range: no segment.
        assert!(timeline(&coverage, t(14.5), t(19.0)).is_empty());
    }

    #[test]
    fn instants_round_up_to_the_microsecond() {
        let at = |n: i64| Timestamp::from_unix_nanos(n);
        assert_eq!(ceil_micros(at(5_000)), at(5_000));
        assert_eq!(ceil_micros(at(5_001)), at(6_000));
        assert_eq!(ceil_micros(at(5_999)), at(6_000));
        assert_eq!(ceil_micros(at(-1)), at(0));
    }

    #[test]
    fn stored_only_writes_the_stored_levels_alone() {
        let t = Timestamp::from_unix_nanos(0);
        let mut follower = Follower::new(true, []);
        let mut rows = Vec::new();
        for (seq, snapshot) in [(1, true), (2, true), (3, false)] {
            let mut sink = |r: Row<'_>| rows.push((r.kind, r.snapshot, r.price));
            follower.advance(single(seq), t, &mut sink);
            assert!(follower.enter("X", single(seq), t, &mut sink));
            follower.begin_message("X", snapshot, Some(1), t, t, &mut sink);
            follower.level(Side::Bid, d("1"), d("1"), &mut sink);
            follower.level(Side::Bid, d("2"), d("1"), &mut sink);
            follower.end_message(&mut sink);
        }
        follower.finish(&mut |r: Row<'_>| rows.push((r.kind, r.snapshot, r.price)));
        assert_eq!(rows.len(), 6);
        assert!(rows.iter().all(|r| r.0 == RowKind::Stored));
    }

    #[test]
    fn the_window_drops_the_worst_levels_past_the_depth() {
        let mut w = Held {
            known: true,
            depth: Some(2),
            ..Held::default()
        };
        for p in ["100.0", "99.5", "101.0"] {
            w.apply(Side::Bid, d(p), d("1"));
        }
        for p in ["102.0", "103.0", "102.5"] {
            w.apply(Side::Ask, d(p), d("1"));
        }
        // The lowest bid and the highest ask fall out; the text kept is the one sent.
        assert_eq!(
            w.overflow(),
            vec![(Side::Bid, d("99.5")), (Side::Ask, d("103.0"))]
        );
        assert_eq!(w.overflow(), vec![], "nothing more past the depth");
        // A deletion by value removes the level whatever its text.
        w.apply(Side::Bid, d("100.00"), d("0"));
        assert_eq!(w.bids.iter().copied().collect::<Vec<_>>(), vec![d("101.0")]);
        // Unknown depth: nothing is dropped.
        w.depth = None;
        for p in ["1", "2", "3"] {
            w.apply(Side::Ask, d(p), d("1"));
        }
        assert!(w.overflow().is_empty());
        assert_eq!(w.clear().len(), 6);
        assert!(w.bids.is_empty() && w.asks.is_empty());
    }
}
