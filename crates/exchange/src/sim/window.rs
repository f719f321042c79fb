//! What a subscriber at depth D is sent for one event of the true book: Kraken's window rule
//! ([`crate::book::window`]) applied to each op of the event as it happens.
//!
//! A [`Stream`] collects one view's levels for one event: [`Stream::on_op`] is called just after
//! each op was applied to the true book, with the side after it, and appends what the rule sends:
//! the op when its price ranks inside the window, and after a deletion inside the window the level
//! that now ranks D-th (the refill). So each side's levels are in the order the book changed, and
//! a deletion always precedes the level that refills its place.
//!
//! Why both kinds of client then hold exactly the new window:
//! - a client that truncates after every level holds the true window after every level: a level
//!   sent inside the window is set in both; an insert pushes out the D-th level of both; a
//!   deletion inside the window removes it from both and the refill adds the true D-th level;
//!   changes below the window touch neither;
//! - a client that truncates after the message holds, before truncating, every level of the new
//!   window with its quantity (a level enters the window only by an insert or a refill, both sent,
//!   and a level changed below the window and later back inside came back as a refill), plus levels
//!   not in the new window. Those rank below the new window, except a level pushed out and then
//!   deleted below the window (it is no longer in the book): the stream marks the side as
//!   [`Stream::needs_check`] when that can have happened, and the market then sends that level's
//!   deletion at the end of the message.
//!
//! The unit tests check both clients on long random runs at depths 1 to 1000.

use super::book::{Ladder, Op};
use crate::book::window::{Sent, on_change};
use crate::book::{OrderBook, PriceLevel, Side};

/// One view's levels for the current event: `(price, qty)` mantissas, each side in the order the
/// rule sent them.
#[derive(Clone, Debug, Default)]
pub struct Stream {
    depth: usize,
    /// Bid levels sent.
    pub bids: Vec<(u64, u64)>,
    /// Ask levels sent.
    pub asks: Vec<(u64, u64)>,
    /// Per side (bids, asks): the levels inserts pushed out of the window during this event.
    pushed: [Vec<u64>; 2],
    /// A level pushed out was then deleted below the window during this event.
    check: bool,
}

fn index(side: Side) -> usize {
    match side {
        Side::Bid => 0,
        Side::Ask => 1,
    }
}

impl Stream {
    /// An empty stream for a window of `depth` levels.
    pub fn new(depth: usize) -> Self {
        Stream {
            depth: depth.max(1),
            ..Stream::default()
        }
    }

    /// Starts a new event.
    pub fn clear(&mut self) {
        self.bids.clear();
        self.asks.clear();
        self.pushed[0].clear();
        self.pushed[1].clear();
        self.check = false;
    }

    /// Whether nothing was sent for the event.
    pub fn is_empty(&self) -> bool {
        self.bids.is_empty() && self.asks.is_empty()
    }

    /// Whether a client that truncates after the message may hold a deleted level (one pushed
    /// out of the window, then deleted below it): the market must compare its book with the true
    /// window.
    pub fn needs_check(&self) -> bool {
        self.check
    }

    /// When [`Stream::needs_check`]: appends the deletion of every level that `applied` (the
    /// view's book with this stream's levels applied, as a client truncating after the message
    /// holds it) has and the true book (`bids`, `asks`) no longer has.
    pub fn settle(&mut self, applied: &OrderBook, bids: &Ladder, asks: &Ladder, price_scale: u8) {
        let deleted = |held: &mut dyn Iterator<Item = PriceLevel>, truth: &Ladder| {
            held.filter_map(|l| l.price.mantissa_at(price_scale))
                .filter_map(|m| u64::try_from(m).ok())
                .filter(|&price| truth.qty_at(price).is_none())
                .map(|price| (price, 0))
                .collect::<Vec<_>>()
        };
        let b = deleted(&mut applied.bids(), bids);
        let a = deleted(&mut applied.asks(), asks);
        self.bids.extend(b);
        self.asks.extend(a);
    }

    /// Appends what the window is sent for `op`, just applied: `after` is its side now, `existed`
    /// whether its price had a level before.
    pub fn on_op(&mut self, after: &Ladder, op: Op, existed: bool) {
        let deletion = op.qty == 0;
        let i = index(op.side);
        let out = match op.side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        };
        match on_change(self.depth, after.better_than(op.price), existed, deletion) {
            Sent::Nothing => {
                if deletion && existed && self.pushed[i].contains(&op.price) {
                    self.check = true;
                }
            }
            Sent::Level => {
                out.push((op.price, op.qty));
                if !existed && let Some(out) = after.at_rank(self.depth) {
                    self.pushed[i].push(out.price);
                }
            }
            Sent::DeletionAndRefill => {
                out.push((op.price, 0));
                if let Some(l) = after.at_rank(self.depth - 1) {
                    out.push((l.price, l.qty));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::book::{Dynamics, Lvl, TrueBook};
    use super::*;
    use crate::book::{Decimal, OrderBook, Precision};
    use crate::rng::Rng;

    fn dec(m: u64, scale: u8) -> Decimal {
        Decimal::new(u128::from(m), scale).unwrap()
    }

    fn top(book: &TrueBook, depth: usize, p: Precision) -> Vec<(Decimal, Decimal)> {
        book.bids
            .best_first()
            .take(depth)
            .chain(book.asks.best_first().take(depth))
            .map(|l| (dec(l.price, p.price), dec(l.qty, p.qty)))
            .collect()
    }

    fn client_top(book: &OrderBook, depth: usize) -> Vec<(Decimal, Decimal)> {
        book.bids()
            .take(depth)
            .chain(book.asks().take(depth))
            .map(|l| (l.price, l.qty))
            .collect()
    }

    /// Counts of what the windows were sent, to show the run exercised every rule.
    #[derive(Default, Debug)]
    struct Seen {
        messages: u64,
        deletions: u64,
        refills: u64,
        repeats: u64,
        /// Refills pushed out again later in the same message (Kraken sends those too).
        refills_pushed_out: u64,
        /// Messages where the market had to check for a deleted level a client may hold.
        checked: u64,
        /// Deletions appended by that check.
        appended: u64,
    }

    /// A client that truncates its side after every level (python-kraken-sdk's way).
    fn apply_per_level(client: &mut OrderBook, side: Side, levels: &[(Decimal, Decimal)]) {
        for &(price, qty) in levels {
            client.set_level(side, price, qty).unwrap();
            client.truncate();
        }
    }

    fn run(depth: usize, levels: usize, mid: u64, events: usize, seed: u64) -> Seen {
        let p = Precision { price: 2, qty: 8 };
        let d = Dynamics::new(levels);
        let mut rng = Rng::new(seed);
        let mut book = TrueBook::generate(&mut rng, mid, p.qty, &d);
        let mut whole = OrderBook::with_precision(depth, Some(p));
        let level = |l: Lvl| (dec(l.price, p.price), dec(l.qty, p.qty));
        whole
            .apply_snapshot(
                book.bids.best_first().take(depth).map(level),
                book.asks.best_first().take(depth).map(level),
            )
            .unwrap();
        let mut per_level = whole.clone();
        let mut ops = Vec::new();
        let mut stream = Stream::new(depth);
        let mut seen = Seen::default();
        for _ in 0..events {
            stream.clear();
            book.event(&mut rng, &d, &mut ops, &mut |after, op, existed| {
                stream.on_op(after, op, existed)
            });
            if stream.is_empty() {
                // Nothing is sent: the window must not have changed.
                assert_eq!(client_top(&whole, depth), top(&book, depth, p));
                continue;
            }
            seen.messages += 1;
            let decs = |side: &[(u64, u64)]| {
                side.iter()
                    .map(|&(pr, q)| (dec(pr, p.price), dec(q, p.qty)))
                    .collect::<Vec<_>>()
            };
            let mut before = whole.clone();
            whole
                .apply_update(decs(&stream.bids), decs(&stream.asks))
                .unwrap();
            if stream.needs_check() {
                // What the market does.
                seen.checked += 1;
                let n = stream.bids.len() + stream.asks.len();
                stream.settle(&whole, &book.bids, &book.asks, p.price);
                seen.appended += (stream.bids.len() + stream.asks.len() - n) as u64;
                before
                    .apply_update(decs(&stream.bids), decs(&stream.asks))
                    .unwrap();
                whole = before;
            }
            for (side, sent) in [(Side::Bid, &stream.bids), (Side::Ask, &stream.asks)] {
                let held = |b: &OrderBook| -> Vec<u64> {
                    let v: Vec<_> = match side {
                        Side::Bid => b.bids().collect(),
                        Side::Ask => b.asks().collect(),
                    };
                    v.iter()
                        .map(|l| u64::try_from(l.price.mantissa_at(p.price).unwrap()).unwrap())
                        .collect()
                };
                let mut model = per_level.clone();
                for (i, &(price, qty)) in sent.iter().enumerate() {
                    seen.deletions += u64::from(qty == 0);
                    seen.repeats += u64::from(sent[..i].iter().any(|&(q, _)| q == price));
                    let was_held = held(&model).contains(&price);
                    let full = held(&model).len() == depth - 1;
                    if qty != 0 && !was_held && full && i > 0 && sent[i - 1].1 == 0 {
                        seen.refills += 1;
                        let rest = &sent[i + 1..];
                        let mut m = model.clone();
                        apply_per_level(&mut m, side, &decs(&sent[i..]));
                        if !held(&m).contains(&price) && !rest.iter().any(|&(q, _)| q == price) {
                            seen.refills_pushed_out += 1;
                        }
                    }
                    apply_per_level(&mut model, side, &decs(&sent[i..=i]));
                }
                apply_per_level(&mut per_level, side, &decs(sent));
            }
            assert_eq!(
                client_top(&whole, depth),
                top(&book, depth, p),
                "depth {depth}: a client truncating after the message holds the true window"
            );
            assert_eq!(
                client_top(&per_level, depth),
                top(&book, depth, p),
                "depth {depth}: a client truncating after every level holds the true window"
            );
        }
        seen
    }

    #[test]
    fn clients_hold_exactly_the_true_window_at_every_depth() {
        // (depth, levels in the true book, mid price, events, what it covers)
        let cases = [
            (1, 50, 100_000, 3000, "a one-level window"),
            (10, 2000, 6_280_250, 4000, "Kraken's default depth"),
            (25, 2000, 6_280_250, 4000, "depth 25"),
            (100, 2000, 6_280_250, 3000, "depth 100"),
            (
                1000,
                2000,
                6_280_250,
                3000,
                "depth 1000 in a 2000-level book",
            ),
            (25, 20, 100_000, 3000, "a book shallower than the window"),
            (10, 12, 100_000, 3000, "a book about as deep as the window"),
            (500, 150, 300, 2000, "a thin book near zero"),
        ];
        let mut all = Seen::default();
        for (i, (depth, levels, mid, events, what)) in cases.into_iter().enumerate() {
            let seen = run(depth, levels, mid, events, 100 + i as u64);
            assert!(seen.messages > 0, "{what}: {seen:?}");
            if levels > depth {
                assert!(
                    seen.deletions > 0 && seen.refills > 0 && seen.repeats > 0,
                    "{what}: deletions, refills and repeated prices all occur: {seen:?}"
                );
            }
            all.refills_pushed_out += seen.refills_pushed_out;
            all.checked += seen.checked;
            all.appended += seen.appended;
        }
        assert!(
            all.refills_pushed_out > 0,
            "refills pushed out again in the same message occur, as on Kraken: {all:?}"
        );
        // An event's deletions come first, so a level pushed out and then deleted below the
        // window is rare (the hand-made case below covers it).
        assert!(all.checked <= all.refills_pushed_out, "{all:?}");
    }

    fn ladder(prices: &[u64]) -> TrueBook {
        let d = Dynamics::new(4);
        let mut rng = Rng::new(0);
        let mut book = TrueBook::generate(&mut rng, 100, 0, &d);
        for price in book.bids.best_first().map(|l| l.price).collect::<Vec<_>>() {
            book.bids.set(price, 0);
        }
        for &price in prices {
            book.bids.set(price, 1);
        }
        book
    }

    /// Applies `ops` to the bids of `book` one by one and returns what a window of `depth` got.
    fn send(book: &mut TrueBook, depth: usize, ops: &[(u64, u64)]) -> (Vec<(u64, u64)>, bool) {
        let mut stream = Stream::new(depth);
        for &(price, qty) in ops {
            let existed = book.bids.set(price, qty);
            let op = Op {
                side: Side::Bid,
                price,
                qty,
            };
            stream.on_op(&book.bids, op, existed);
        }
        (stream.bids.clone(), stream.needs_check())
    }

    #[test]
    fn each_op_sends_its_window_effect_in_order() {
        // Bids 10, 9, 8, 7 (best first), a window of 2.
        let mut book = ladder(&[7, 8, 9, 10]);
        // (ops, sent, whether the market must check, what it covers)
        type Levels = &'static [(u64, u64)];
        let cases: [(Levels, Levels, bool, &str); 7] = [
            (
                &[(11, 5)],
                &[(11, 5)],
                false,
                "an insert pushes 10 out: no message for 10",
            ),
            (
                &[(11, 0), (10, 0)],
                &[(11, 0), (9, 1), (10, 0), (8, 1)],
                false,
                "each deletion is followed at once by its refill",
            ),
            (
                &[(7, 3)],
                &[],
                false,
                "a change below the window is not sent",
            ),
            (
                &[(12, 2), (9, 0)],
                &[(12, 2), (9, 0), (8, 1)],
                false,
                "an insert, then a deletion: the refill is the level the insert pushed out",
            ),
            (
                &[(13, 4), (8, 0), (12, 0)],
                &[(13, 4), (12, 0), (7, 3)],
                true,
                "a pushed-out level deleted below the window, then a refill below it: check",
            ),
            (
                &[(20, 0)],
                &[],
                false,
                "deleting an absent price sends nothing",
            ),
            (
                &[(13, 0)],
                &[(13, 0)],
                false,
                "a deletion with nothing left to refill",
            ),
        ];
        for (ops, sent, check, what) in cases {
            assert_eq!(send(&mut book, 2, ops), (sent.to_vec(), check), "{what}");
        }
    }

    #[test]
    fn a_level_pushed_out_then_deleted_below_the_window_is_deleted_at_the_end() {
        // Bids 10, 9, 8, 7 (best first), a window of 2 held by a client truncating after the
        // message: 11 pushes 9 out, 9 is deleted below the window, deleting 11 brings up 8.
        let mut book = ladder(&[7, 8, 9, 10]);
        let p = Precision { price: 0, qty: 0 };
        let mut client = OrderBook::with_precision(2, Some(p));
        let dec0 = |m: u64| dec(m, 0);
        client
            .apply_snapshot([(dec0(10), dec0(1)), (dec0(9), dec0(1))], [])
            .unwrap();
        let mut stream = Stream::new(2);
        for (price, qty) in [(11, 5), (9, 0), (11, 0)] {
            let existed = book.bids.set(price, qty);
            let op = Op {
                side: Side::Bid,
                price,
                qty,
            };
            stream.on_op(&book.bids, op, existed);
        }
        assert_eq!(stream.bids, [(11, 5), (11, 0), (8, 1)]);
        assert!(stream.needs_check());
        let mut applied = client.clone();
        let levels = |s: &Stream| {
            s.bids
                .iter()
                .map(|&(a, b)| (dec0(a), dec0(b)))
                .collect::<Vec<_>>()
        };
        applied.apply_update(levels(&stream), []).unwrap();
        assert_eq!(
            client_top(&applied, 2),
            [(dec0(10), dec0(1)), (dec0(9), dec0(1))],
            "without the check, the client keeps the deleted 9"
        );
        stream.settle(&applied, &book.bids, &book.asks, 0);
        assert_eq!(stream.bids, [(11, 5), (11, 0), (8, 1), (9, 0)]);
        client.apply_update(levels(&stream), []).unwrap();
        assert_eq!(
            client_top(&client, 2),
            [(dec0(10), dec0(1)), (dec0(8), dec0(1))]
        );
    }
}
