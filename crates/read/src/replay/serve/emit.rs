//! What a replay subscriber at depth D is sent for each recorded message (no I/O).
//!
//! The recording holds, for each message, its levels in the order Kraken sent them at the
//! recorded depth R (at least D), and the book after it (the collector's, verified). An
//! [`Emitter`] replays the levels one at a time on its own copy of the recorded book, truncated to
//! R after every level (what Kraken's subscriber at R holds), and sends to the depth-D window what
//! Kraken's window rule ([`crate::book::window`]) sends for each: the level when it ranks
//! inside the window, and after a deletion inside the window the level that now ranks D-th. At
//! D = R that is the recorded message itself; below R it is what Kraken would have sent at D.
//!
//! Two checks keep every subscriber's book exact whatever the recording's order:
//! - after the message, the copy must equal the recorded book. It does when the recording is in
//!   Kraken's order; otherwise (a recording made by other software) the copy is set to the
//!   recorded book and the difference between the window the subscriber holds and the recorded
//!   window is appended: deletions first, then the changed and new levels best first, so a client
//!   truncating after every level never drops a level it needs;
//! - a client truncating after the message must end with the recorded window: a model of it is
//!   kept, and when it would not (a level pushed out of the window, then deleted below it, then a
//!   refill from below it, all in one message) the deletions of the levels it should not hold,
//!   and the window's levels it lacks, are appended. Each of those is a no-op for a client
//!   truncating after every level.
//!
//! What must always hold (the tests replay the real captures at depths 1 to 100 with both kinds of
//! client): after every message both kinds of client hold exactly the top D levels of the
//! recorded book, no level merely pushed out of the window gets a message, and a deletion comes
//! before the level that refills its place.

use std::cmp::Ordering;

use crate::book::window::{Sent, on_change};
use crate::book::{Decimal, OrderBook, PriceLevel, Side};

/// One side's levels, best first, at most a given depth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Levels {
    side: Side,
    levels: Vec<(Decimal, Decimal)>,
}

impl Levels {
    #[cfg(test)]
    fn new(side: Side) -> Self {
        Levels {
            side,
            levels: Vec::new(),
        }
    }

    /// Whether `a` ranks strictly better than `b` on this side.
    fn better(&self, a: &Decimal, b: &Decimal) -> bool {
        match self.side {
            Side::Bid => a > b,
            Side::Ask => a < b,
        }
    }

    /// How many levels are strictly better than `price`.
    fn better_than(&self, price: &Decimal) -> usize {
        self.levels.partition_point(|(p, _)| self.better(p, price))
    }

    /// Sets a level (quantity zero deletes it); returns whether the price had a level before.
    fn set(&mut self, price: Decimal, qty: Decimal) -> bool {
        let i = self.better_than(&price);
        let existed = self.levels.get(i).is_some_and(|(p, _)| *p == price);
        match (existed, qty.is_zero()) {
            (true, true) => {
                self.levels.remove(i);
            }
            (true, false) => self.levels[i].1 = qty,
            (false, true) => {}
            (false, false) => self.levels.insert(i, (price, qty)),
        }
        existed
    }

    fn at_rank(&self, rank: usize) -> Option<(Decimal, Decimal)> {
        self.levels.get(rank).copied()
    }

    fn truncate(&mut self, depth: usize) {
        self.levels.truncate(depth);
    }

    fn qty_at(&self, price: &Decimal) -> Option<Decimal> {
        let i = self.better_than(price);
        self.levels
            .get(i)
            .filter(|(p, _)| p == price)
            .map(|&(_, q)| q)
    }

    fn from_levels(side: Side, levels: impl Iterator<Item = PriceLevel>) -> Self {
        Levels {
            side,
            levels: levels.map(|l| (l.price, l.qty)).collect(),
        }
    }
}

/// The levels to send for one message: each side in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sending {
    pub(crate) bids: Vec<(Decimal, Decimal)>,
    pub(crate) asks: Vec<(Decimal, Decimal)>,
}

impl Sending {
    pub(crate) fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }
}

/// One subscriber's view of a recorded book: what it is sent, message by message.
#[derive(Clone, Debug)]
pub(crate) struct Emitter {
    /// The subscribed depth D.
    depth: usize,
    /// The recorded depth R.
    recorded: usize,
    /// The recorded book as a subscriber at R holds it (truncated after every level).
    bids: Levels,
    asks: Levels,
    /// What a subscriber at D truncating after every message holds (its model).
    client: OrderBook,
}

impl Emitter {
    /// A subscriber at `depth` joining when the recorded book is `book` (at its recorded depth).
    pub(crate) fn new(book: &OrderBook, depth: usize) -> Self {
        let recorded = book.depth().max(depth);
        let mut client = OrderBook::with_precision(depth, Some(book.precision()));
        let view = book.view(depth);
        // The book's own levels at its own precision: they fit.
        let _ = client.apply_snapshot(
            view.bids.iter().map(|l| (l.price, l.qty)),
            view.asks.iter().map(|l| (l.price, l.qty)),
        );
        Emitter {
            depth,
            recorded,
            bids: Levels::from_levels(Side::Bid, book.bids().take(recorded)),
            asks: Levels::from_levels(Side::Ask, book.asks().take(recorded)),
            client,
        }
    }

    /// The subscriber's window now (what its snapshot holds).
    pub(crate) fn window(&self) -> Sending {
        Sending {
            bids: self.bids.levels.iter().take(self.depth).copied().collect(),
            asks: self.asks.levels.iter().take(self.depth).copied().collect(),
        }
    }

    /// What to send for a recorded message with these levels (in the recorded order), after which
    /// the recorded book is `after`. Empty when the window did not change.
    pub(crate) fn message(
        &mut self,
        bids: &[(Decimal, Decimal)],
        asks: &[(Decimal, Decimal)],
        after: &OrderBook,
    ) -> Sending {
        let mut out = Sending::default();
        for (side, levels, sent) in [
            (&mut self.bids, bids, &mut out.bids),
            (&mut self.asks, asks, &mut out.asks),
        ] {
            for &(price, qty) in levels {
                let existed = side.set(price, qty);
                match on_change(self.depth, side.better_than(&price), existed, qty.is_zero()) {
                    Sent::Nothing => {}
                    Sent::Level => sent.push((price, qty)),
                    Sent::DeletionAndRefill => {
                        sent.push((price, Decimal::ZERO));
                        sent.extend(side.at_rank(self.depth - 1));
                    }
                }
                side.truncate(self.recorded);
            }
        }
        self.repair(&mut out, after);
        self.settle(&mut out, after);
        out
    }

    /// Makes the copy equal the recorded book when the recorded order did not get it there,
    /// appending what the subscriber at D needs: deletions, then changes and new levels.
    fn repair(&mut self, out: &mut Sending, after: &OrderBook) {
        let bids = Levels::from_levels(Side::Bid, after.bids().take(self.recorded));
        let asks = Levels::from_levels(Side::Ask, after.asks().take(self.recorded));
        for (held, truth, sent) in [
            (&mut self.bids, bids, &mut out.bids),
            (&mut self.asks, asks, &mut out.asks),
        ] {
            if *held == truth {
                continue;
            }
            let window: Vec<_> = held.levels.iter().take(self.depth).copied().collect();
            let target: Vec<_> = truth.levels.iter().take(self.depth).copied().collect();
            for &(price, _) in &window {
                if truth.qty_at(&price).is_none() {
                    sent.push((price, Decimal::ZERO));
                }
            }
            for &(price, qty) in &target {
                if !window.contains(&(price, qty)) {
                    sent.push((price, qty));
                }
            }
            *held = truth;
        }
    }

    /// Makes sure a client truncating after the message ends with the recorded window: appends
    /// the deletions of levels it would wrongly hold and the window's levels it would lack.
    fn settle(&mut self, out: &mut Sending, after: &OrderBook) {
        let mut model = self.client.clone();
        let apply = |book: &mut OrderBook, out: &Sending| {
            for &(p, q) in &out.bids {
                let _ = book.set_level(Side::Bid, p, q);
            }
            for &(p, q) in &out.asks {
                let _ = book.set_level(Side::Ask, p, q);
            }
        };
        // Untruncated: every level the client holds before it truncates.
        apply(&mut model, out);
        let target = after.view(self.depth);
        let top = model.view(self.depth);
        if top != target {
            let mut fix = Sending::default();
            for (held, want, sent, side) in [
                (
                    model.bids().collect::<Vec<_>>(),
                    &target.bids,
                    &mut fix.bids,
                    Side::Bid,
                ),
                (
                    model.asks().collect::<Vec<_>>(),
                    &target.asks,
                    &mut fix.asks,
                    Side::Ask,
                ),
            ] {
                // Held levels that would rank inside the window but are not in it: not in the
                // recorded book either (the window is the book's best levels).
                let worst = want
                    .last()
                    .map(|l| l.price)
                    .filter(|_| want.len() == self.depth);
                for l in &held {
                    let in_window = match (worst, side) {
                        (None, _) => true,
                        (Some(w), Side::Bid) => l.price.cmp(&w) != Ordering::Less,
                        (Some(w), Side::Ask) => l.price.cmp(&w) != Ordering::Greater,
                    };
                    if in_window && !want.iter().any(|w| w.price == l.price) {
                        sent.push((l.price, Decimal::ZERO));
                    }
                }
                for w in want {
                    if !held.iter().any(|l| l == w) {
                        sent.push((w.price, w.qty));
                    }
                }
            }
            apply(&mut model, &fix);
            out.bids.extend(fix.bids);
            out.asks.extend(fix.asks);
        }
        model.truncate();
        self.client = model;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Tracker;
    use crate::kraken::{BookKind, Frame, decode};
    use crate::record::RecordBody;
    use krakenbook_testkit::capture::read_capture;

    /// A client truncating its side after every level, as python-kraken-sdk does.
    #[derive(Clone, Default)]
    struct PerLevel {
        bids: Vec<(Decimal, Decimal)>,
        asks: Vec<(Decimal, Decimal)>,
    }

    impl PerLevel {
        fn apply(&mut self, out: &Sending, depth: usize) {
            for (side, levels, bid) in [
                (&mut self.bids, &out.bids, true),
                (&mut self.asks, &out.asks, false),
            ] {
                let mut l = Levels::new(if bid { Side::Bid } else { Side::Ask });
                l.levels = std::mem::take(side);
                for &(p, q) in levels {
                    l.set(p, q);
                    l.truncate(depth);
                }
                *side = l.levels;
            }
        }
    }

    fn pairs(levels: &[PriceLevel]) -> Vec<(Decimal, Decimal)> {
        levels.iter().map(|l| (l.price, l.qty)).collect()
    }

    type Pairs = Vec<(Decimal, Decimal)>;
    /// A recorded message: whether a snapshot, its bids and asks, the book after it.
    type Message = (bool, Pairs, Pairs, OrderBook);

    /// The real captures as (name, recorded depth, messages): each message's levels and the book
    /// after it, as the collector holds it.
    fn captures() -> Vec<(String, usize, Vec<Message>)> {
        let dir = krakenbook_testkit::fixtures().join("kraken-v2");
        let mut out = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
            .collect();
        names.sort();
        for path in names {
            let header = std::fs::read_to_string(&path).unwrap();
            let header: serde_json::Value =
                serde_json::from_str(header.lines().next().unwrap()).unwrap();
            let depth = header["depth"].as_u64().unwrap() as usize;
            let mut tracker = Tracker::new(depth);
            let mut messages = Vec::new();
            for r in read_capture(&path, &mut 1, 1).unwrap() {
                let RecordBody::Frame(f) = &r.body else {
                    continue;
                };
                let Ok(frame) = decode(std::str::from_utf8(&f.bytes).unwrap()) else {
                    continue;
                };
                let Frame::Book(msg) = &frame else {
                    tracker.observe(&frame);
                    continue;
                };
                for data in &msg.data {
                    tracker.apply(msg.kind, data);
                    let Some(book) = tracker.synced_book(&data.symbol) else {
                        continue;
                    };
                    messages.push((
                        msg.kind == BookKind::Snapshot,
                        data.bid_pairs().collect(),
                        data.ask_pairs().collect(),
                        book.clone(),
                    ));
                }
            }
            out.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                depth,
                messages,
            ));
        }
        out
    }

    #[test]
    fn the_captures_served_at_any_depth_keep_both_kinds_of_client_exact() {
        let mut sent_at_recorded_depth_as_recorded = 0;
        let mut checked = 0;
        for (name, recorded, messages) in captures() {
            for depth in [1, 5, 10, 25, 100].into_iter().filter(|&d| d <= recorded) {
                let mut emitter: Option<Emitter> = None;
                let mut per_level = PerLevel::default();
                let mut whole = OrderBook::new(depth);
                for (i, (snapshot, bids, asks, after)) in messages.iter().enumerate() {
                    let out = match (&mut emitter, snapshot) {
                        (Some(e), false) => e.message(bids, asks, after),
                        _ => {
                            let e = Emitter::new(after, depth);
                            let w = e.window();
                            per_level = PerLevel::default();
                            per_level.apply(&w, depth);
                            whole
                                .apply_snapshot(w.bids.clone(), w.asks.clone())
                                .unwrap();
                            emitter = Some(e);
                            continue;
                        }
                    };
                    let want = after.view(depth);
                    if depth == recorded {
                        assert_eq!(
                            (&out.bids, &out.asks),
                            (bids, asks),
                            "{name} message {i}: at the recorded depth, the recorded levels"
                        );
                        sent_at_recorded_depth_as_recorded += 1;
                    }
                    // No message for a level merely pushed out: every deletion is of a level
                    // the recorded book no longer has.
                    // No message for a level merely pushed out: every deletion sent is of a
                    // level the recorded message deleted, or one the book no longer has.
                    for (sent, recorded, held) in [
                        (&out.bids, bids, pairs(&after.view(usize::MAX).bids)),
                        (&out.asks, asks, pairs(&after.view(usize::MAX).asks)),
                    ] {
                        for (price, qty) in sent.iter().filter(|(_, q)| q.is_zero()) {
                            assert!(
                                recorded.contains(&(*price, *qty))
                                    || !held.iter().any(|(p, _)| p == price),
                                "{name} message {i} depth {depth}: deletion of {price}, still in the book"
                            );
                        }
                    }
                    per_level.apply(&out, depth);
                    whole
                        .apply_update(out.bids.clone(), out.asks.clone())
                        .unwrap();
                    assert_eq!(
                        (per_level.bids.clone(), per_level.asks.clone()),
                        (pairs(&want.bids), pairs(&want.asks)),
                        "{name} message {i} depth {depth}: truncating after every level"
                    );
                    assert_eq!(
                        whole.view(depth),
                        want,
                        "{name} message {i} depth {depth}: truncating after the message"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 20_000, "{checked}");
        assert!(
            sent_at_recorded_depth_as_recorded > 4800,
            "{sent_at_recorded_depth_as_recorded}"
        );
    }

    fn level(p: u128, q: u128) -> (Decimal, Decimal) {
        (Decimal::new(p, 1).unwrap(), Decimal::new(q, 2).unwrap())
    }

    proptest::proptest! {
        /// Recorded messages in any order (not only Kraken's), applied to the recorded book as a
        /// whole: both kinds of client at any depth up to the recorded one end every message with
        /// the recorded window.
        #[test]
        fn any_recorded_order_keeps_both_kinds_of_client_exact(
            first in proptest::collection::vec((1u128..60, 1u128..5), 0..40),
            messages in proptest::collection::vec(
                proptest::collection::vec((1u128..60, 0u128..5, proptest::bool::ANY), 1..8),
                1..30,
            ),
            recorded in 1usize..30,
            depth in 1usize..30,
        ) {
            let depth = depth.min(recorded);
            let mut truth = OrderBook::new(recorded);
            truth
                .apply_snapshot(
                    first.iter().map(|&(p, q)| level(p, q)),
                    first.iter().map(|&(p, q)| level(p + 100, q)),
                )
                .unwrap();
            let mut e = Emitter::new(&truth, depth);
            let w = e.window();
            let mut per_level = PerLevel::default();
            per_level.apply(&w, depth);
            let mut whole = OrderBook::new(depth);
            whole.apply_snapshot(w.bids.clone(), w.asks.clone()).unwrap();
            for m in &messages {
                let bids: Vec<_> = m.iter().filter(|l| l.2).map(|&(p, q, _)| level(p, q)).collect();
                let asks: Vec<_> = m.iter().filter(|l| !l.2).map(|&(p, q, _)| level(p + 100, q)).collect();
                truth.apply_update(bids.clone(), asks.clone()).unwrap();
                let out = e.message(&bids, &asks, &truth);
                let want = truth.view(depth);
                per_level.apply(&out, depth);
                whole.apply_update(out.bids.clone(), out.asks.clone()).unwrap();
                proptest::prop_assert_eq!(
                    (per_level.bids.clone(), per_level.asks.clone()),
                    (pairs(&want.bids), pairs(&want.asks))
                );
                proptest::prop_assert_eq!(whole.view(depth), want);
            }
        }
    }

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn book(depth: usize, bids: &[(&str, &str)]) -> OrderBook {
        let mut b = OrderBook::new(depth);
        b.apply_snapshot(bids.iter().map(|&(p, q)| (d(p), d(q))), [])
            .unwrap();
        b
    }

    #[test]
    fn a_level_pushed_out_then_deleted_below_the_window_is_deleted_at_the_end() {
        // Recorded at depth 3 (the book below: 7, 6): bids 10, 9, 8; served at depth 2 (10, 9).
        let before = book(3, &[("10", "1"), ("9", "1"), ("8", "1")]);
        let after = book(3, &[("11", "5"), ("8", "1"), ("7", "1")]);
        // Kraken at depth 3: insert 11; delete 9, refill 8; delete 10, refill 7.
        let recorded = [
            (d("11"), d("5")),
            (d("9"), d("0")),
            (d("8"), d("1")),
            (d("10"), d("0")),
            (d("7"), d("1")),
        ];
        let mut e = Emitter::new(&before, 2);
        let out = e.message(&recorded, &[], &after);
        // At depth 2: 11 pushes 9 out (no message); 9 is deleted below the window (no message);
        // deleting 10 brings up 8. A client truncating after the message would still hold 9,
        // ranking above 8: its deletion is appended.
        assert_eq!(
            out.bids,
            vec![
                (d("11"), d("5")),
                (d("10"), d("0")),
                (d("8"), d("1")),
                (d("9"), d("0"))
            ]
        );
        let mut whole = OrderBook::new(2);
        whole
            .apply_snapshot([(d("10"), d("1")), (d("9"), d("1"))], [])
            .unwrap();
        whole.apply_update(out.bids.clone(), []).unwrap();
        assert_eq!(whole.view(2), after.view(2));
        let mut per_level = PerLevel::default();
        per_level.apply(&Emitter::new(&before, 2).window(), 2);
        per_level.apply(&out, 2);
        assert_eq!(per_level.bids, pairs(&after.view(2).bids));
    }

    #[test]
    fn a_recording_in_another_order_still_gives_the_recorded_window() {
        // Recorded at depth 3: bids 10, 9, 8. Then, in price order, an insert before the deletion
        // that makes room for it (what the old simulator and replay server sent): a client at
        // depth 3 applying it as a whole holds 9.5, 9, 8.
        let before = book(3, &[("10", "1"), ("9", "1"), ("8", "1")]);
        let after = book(3, &[("9.5", "2"), ("9", "1"), ("8", "1")]);
        let recorded = [(d("9.5"), d("2")), (d("10"), d("0"))];
        // (depth served, what is sent, what it covers)
        let cases = [
            (
                3,
                vec![(d("9.5"), d("2")), (d("10"), d("0")), (d("8"), d("1"))],
                "at the recorded depth the level the order lost (8) is appended",
            ),
            (
                2,
                vec![(d("9.5"), d("2")), (d("10"), d("0")), (d("9"), d("1"))],
                "at depth 2: 9.5 pushes 9 out (no message), deleting 10 brings 9 back",
            ),
        ];
        for (depth, sent, what) in cases {
            let mut e = Emitter::new(&before, depth);
            let out = e.message(&recorded, &[], &after);
            assert_eq!(out.bids, sent, "{what}");
            assert!(out.asks.is_empty());
            assert_eq!(e.window().bids, pairs(&after.view(depth).bids), "{what}");
            let mut per_level = PerLevel::default();
            per_level.apply(&Emitter::new(&before, depth).window(), depth);
            per_level.apply(&out, depth);
            assert_eq!(per_level.bids, pairs(&after.view(depth).bids), "{what}");
        }
    }
}
