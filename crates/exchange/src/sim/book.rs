//! A simulated pair's "true" book and its dynamics: the deep book that every served depth is a
//! window of, and the random events that change it.
//!
//! Prices and quantities are integer mantissas at the pair's precision (a price of `62802.5` at
//! price precision 1 is `628025`), so nothing here is ever rounded. Each side is a `Vec` sorted
//! with the best level at the back, because events concentrate at the top: an insert or delete
//! near the top moves few elements, and the level at rank `r` is one index away.
//!
//! An event is a short list of [`Op`]s, each already applied to the book when the next is drawn:
//! - the level a change touches is drawn by rank, geometric with a mean of about 25 levels (this
//!   matches the real BTC/USD captures: about a third of the messages at depth 10, two thirds at
//!   depth 25, nearly all at depth 100), with a few drawn uniformly over the whole book;
//! - a change sets a new quantity, a delete removes the level, an insert opens a new price in
//!   the gap above the drawn rank (a new best inside the spread at rank 0);
//! - an event's deletions come first, then its changes and inserts (no real capture has a
//!   deletion after an insert into a full window on the same side of a message);
//! - now and then the same price is touched twice in one event (changed again, deleted, or
//!   deleted and re-added), as Kraken sometimes sends;
//! - each side is then kept between `levels` and `levels + levels / 10` by adding or removing
//!   levels at its far end, far below any served depth.
//!
//! What must always hold (checked by the tests below on long random runs): each side is sorted
//! and unique by price, every quantity is positive, every bid is below every ask, and every op
//! in an event's list is exactly what was done to the book, in order, each seen by the event's
//! watcher just after it was applied.

use crate::book::Side;
use crate::rng::Rng;

/// One change to a side of the book: `qty == 0` deletes the level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Which side.
    pub side: Side,
    /// Price mantissa at the pair's price precision.
    pub price: u64,
    /// Quantity mantissa at the pair's quantity precision; 0 deletes.
    pub qty: u64,
}

/// A level: mantissas at the pair's precisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lvl {
    /// Price mantissa.
    pub price: u64,
    /// Quantity mantissa (never 0 in a book).
    pub qty: u64,
}

/// One side, best level at the back: bids ascend toward the back, asks descend.
#[derive(Clone, Debug)]
pub struct Ladder {
    side: Side,
    levels: Vec<Lvl>,
}

impl Ladder {
    fn new(side: Side) -> Self {
        Ladder {
            side,
            levels: Vec::new(),
        }
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Number of levels.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    /// Whether the side is empty.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The level at `rank` (0 is the best).
    pub fn at_rank(&self, rank: usize) -> Option<Lvl> {
        let n = self.levels.len();
        if rank < n {
            Some(self.levels[n - 1 - rank])
        } else {
            None
        }
    }

    /// The levels, best first.
    pub fn best_first(&self) -> impl ExactSizeIterator<Item = Lvl> + '_ {
        self.levels.iter().rev().copied()
    }

    /// Whether price `a` is strictly worse than price `b` on this side.
    pub fn worse(&self, a: u64, b: u64) -> bool {
        match self.side {
            Side::Bid => a < b,
            Side::Ask => a > b,
        }
    }

    fn find(&self, price: u64) -> Result<usize, usize> {
        match self.side {
            Side::Bid => self.levels.binary_search_by(|l| l.price.cmp(&price)),
            Side::Ask => self.levels.binary_search_by(|l| price.cmp(&l.price)),
        }
    }

    /// The quantity at `price`, if the level exists.
    pub fn qty_at(&self, price: u64) -> Option<u64> {
        self.find(price).ok().map(|i| self.levels[i].qty)
    }

    /// The number of levels strictly better than `price`.
    pub fn better_than(&self, price: u64) -> usize {
        let n = self.levels.len();
        match self.find(price) {
            Ok(i) => n - 1 - i,
            Err(i) => n - i,
        }
    }

    /// Sets a level; `qty == 0` deletes it. Returns whether the price had a level before.
    pub fn set(&mut self, price: u64, qty: u64) -> bool {
        match self.find(price) {
            Ok(i) if qty == 0 => {
                self.levels.remove(i);
                true
            }
            Ok(i) => {
                self.levels[i].qty = qty;
                true
            }
            Err(_) if qty == 0 => false,
            Err(i) => {
                self.levels.insert(i, Lvl { price, qty });
                false
            }
        }
    }
}

/// How the book moves: the knobs of [`TrueBook::event`].
#[derive(Clone, Copy, Debug)]
pub struct Dynamics {
    /// Levels kept on each side (the side stays between this and 110 % of it).
    pub levels: usize,
    /// Success probability of the geometric rank draw (0.04: mean rank about 24).
    pub rank_p: f64,
    /// Probability that a change's rank is drawn uniformly over the whole side instead.
    pub deep_p: f64,
    /// Probability that a change is followed by another on the same price in the same event.
    pub repeat_p: f64,
    /// Success probability of the geometric count of extra changes in an event.
    pub extra_p: f64,
}

impl Dynamics {
    /// The dynamics used by the simulator, keeping `levels` levels a side.
    pub fn new(levels: usize) -> Self {
        Dynamics {
            levels: levels.max(1),
            rank_p: 0.04,
            deep_p: 0.03,
            repeat_p: 0.05,
            extra_p: 0.55,
        }
    }
}

/// A pair's whole book.
#[derive(Clone, Debug)]
pub struct TrueBook {
    /// Bids.
    pub bids: Ladder,
    /// Asks.
    pub asks: Ladder,
    qty_precision: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Change,
    Delete,
    Insert,
}

impl TrueBook {
    /// A fresh book around `mid` (price mantissa) with `dynamics.levels` levels a side where the
    /// prices allow it (bids stop above zero).
    pub fn generate(rng: &mut Rng, mid: u64, qty_precision: u8, dynamics: &Dynamics) -> Self {
        let mut book = TrueBook {
            bids: Ladder::new(Side::Bid),
            asks: Ladder::new(Side::Ask),
            qty_precision,
        };
        let mid = mid.max(2);
        let half_spread = rng.range(0, 2);
        let mut bid = mid.saturating_sub(1 + half_spread);
        let mut ask = mid + half_spread;
        let mut bids = Vec::with_capacity(dynamics.levels);
        let mut asks = Vec::with_capacity(dynamics.levels);
        for _ in 0..dynamics.levels {
            if bid >= 1 {
                bids.push(Lvl {
                    price: bid,
                    qty: book.draw_qty(rng),
                });
                bid = bid.saturating_sub(gap(rng));
            }
            asks.push(Lvl {
                price: ask,
                qty: book.draw_qty(rng),
            });
            ask = ask.saturating_add(gap(rng));
        }
        // Best at the back.
        bids.reverse();
        asks.reverse();
        book.bids.levels = bids;
        book.asks.levels = asks;
        book
    }

    /// The side `side`.
    pub fn side(&self, side: Side) -> &Ladder {
        match side {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut Ladder {
        match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        }
    }

    /// A quantity mantissa: from 10^-4 to 10^3 units, a quarter of them round (two significant
    /// digits, so trailing zeros show on the wire).
    fn draw_qty(&self, rng: &mut Rng) -> u64 {
        let qp = u32::from(self.qty_precision);
        let lo = qp.saturating_sub(4);
        let e = rng.range(u64::from(lo), u64::from(qp + 2)) as u32;
        let base = 10u64.pow(e);
        let mut m = rng.range(base, base * 10 - 1);
        if e >= 2 && rng.chance(0.25) {
            let unit = 10u64.pow(e - 1);
            m = m / unit * unit;
        }
        m.max(1)
    }

    fn draw_rank(&self, rng: &mut Rng, len: usize, d: &Dynamics) -> usize {
        if len == 0 {
            return 0;
        }
        let r = if rng.chance(d.deep_p) {
            rng.below(len as u64)
        } else {
            rng.geometric(d.rank_p, len as u64)
        };
        (r as usize).min(len - 1)
    }

    /// Draws one event, applies it, and appends what was done to `ops` (cleared first). `watch`
    /// sees each op just after it was applied: the side after it, the op, and whether its price
    /// had a level before.
    ///
    /// An event's deletions are drawn first, as on Kraken (no real capture has a deletion after
    /// an insert into a full window on the same side of a message).
    pub fn event(
        &mut self,
        rng: &mut Rng,
        d: &Dynamics,
        ops: &mut Vec<Op>,
        watch: &mut impl FnMut(&Ladder, Op, bool),
    ) {
        ops.clear();
        let changes = 1 + rng.geometric(d.extra_p, 7) as usize;
        let mut kinds = [(Side::Bid, Kind::Change); 8];
        for k in kinds.iter_mut().take(changes) {
            let side = if rng.chance(0.5) {
                Side::Bid
            } else {
                Side::Ask
            };
            *k = (side, self.draw_kind(rng));
        }
        // Stable: deletions first, the rest in the order drawn.
        kinds[..changes].sort_by_key(|&(_, kind)| kind != Kind::Delete);
        for &(side, kind) in &kinds[..changes] {
            let Some(op) = self.change(rng, d, side, kind) else {
                continue;
            };
            self.apply(op, ops, watch);
            if rng.chance(d.repeat_p) {
                let again = match self.side(side).qty_at(op.price) {
                    Some(_) if rng.chance(0.6) => Some(self.draw_qty(rng)),
                    Some(_) => Some(0),
                    None if self.can_insert(side, op.price) => Some(self.draw_qty(rng)),
                    None => None,
                };
                if let Some(qty) = again {
                    self.apply(
                        Op {
                            side,
                            price: op.price,
                            qty,
                        },
                        ops,
                        watch,
                    );
                }
            }
        }
        self.maintain(rng, d, ops, watch);
    }

    fn apply(&mut self, op: Op, ops: &mut Vec<Op>, watch: &mut impl FnMut(&Ladder, Op, bool)) {
        let existed = self.side_mut(op.side).set(op.price, op.qty);
        ops.push(op);
        watch(self.side(op.side), op, existed);
    }

    /// Whether a level at `price` on `side` would keep the book uncrossed.
    fn can_insert(&self, side: Side, price: u64) -> bool {
        match side {
            Side::Bid => price >= 1 && self.asks.at_rank(0).is_none_or(|a| price < a.price),
            Side::Ask => self.bids.at_rank(0).is_none_or(|b| price > b.price),
        }
    }

    /// What a change does: inserts and deletes balance (the side's size is kept by `maintain`).
    fn draw_kind(&self, rng: &mut Rng) -> Kind {
        match rng.below(20) {
            0..=8 => Kind::Change,
            9..=13 => Kind::Delete,
            _ => Kind::Insert,
        }
    }

    /// One change of `kind` on `side`, not yet applied.
    fn change(&mut self, rng: &mut Rng, d: &Dynamics, side: Side, kind: Kind) -> Option<Op> {
        let ladder = self.side(side);
        let len = ladder.len();
        let rank = self.draw_rank(rng, len, d);
        let existing = ladder.at_rank(rank);
        if (kind == Kind::Insert || existing.is_none())
            && let Some(price) = self.insert_price(rng, side, rank)
        {
            return Some(Op {
                side,
                price,
                qty: self.draw_qty(rng),
            });
        }
        let level = existing?;
        Some(match kind {
            Kind::Delete if len > 1 => Op {
                side,
                price: level.price,
                qty: 0,
            },
            _ => Op {
                side,
                price: level.price,
                qty: self.draw_qty(rng),
            },
        })
    }

    /// A free price just better than the level at `rank` (inside the spread for rank 0).
    fn insert_price(&self, rng: &mut Rng, side: Side, rank: usize) -> Option<u64> {
        let ladder = self.side(side);
        let below = ladder.at_rank(rank).map(|l| l.price);
        let above = if rank == 0 {
            match side {
                Side::Bid => self.asks.at_rank(0).map(|l| l.price),
                Side::Ask => self.bids.at_rank(0).map(|l| l.price),
            }
        } else {
            ladder.at_rank(rank - 1).map(|l| l.price)
        };
        // Free prices strictly between `below` (worse) and `above` (better, or the other side).
        let (lo, hi) = match (side, below, above) {
            (Side::Bid, Some(b), Some(a)) => (b + 1, a.checked_sub(1)?),
            (Side::Bid, Some(b), None) => (b + 1, b + 3),
            (Side::Bid, None, Some(a)) => (a.saturating_sub(3).max(1), a.checked_sub(1)?),
            (Side::Ask, Some(b), Some(a)) => (a + 1, b.checked_sub(1)?),
            (Side::Ask, Some(b), None) => (b.saturating_sub(3).max(1), b.checked_sub(1)?),
            (Side::Ask, None, Some(a)) => (a + 1, a + 3),
            (_, None, None) => (1_000_000, 1_000_000),
        };
        if lo > hi {
            return None;
        }
        let price = rng.range(lo, hi);
        self.can_insert(side, price).then_some(price)
    }

    /// Keeps each side between `levels` and 110 % of it, at its far end.
    fn maintain(
        &mut self,
        rng: &mut Rng,
        d: &Dynamics,
        ops: &mut Vec<Op>,
        watch: &mut impl FnMut(&Ladder, Op, bool),
    ) {
        let max = d.levels + d.levels / 10;
        for side in [Side::Bid, Side::Ask] {
            while self.side(side).len() < d.levels {
                let worst = self.side(side).levels.first().map(|l| l.price);
                let price = match (side, worst) {
                    (Side::Bid, Some(w)) => match w.checked_sub(gap(rng)) {
                        Some(p) if p >= 1 => p,
                        _ => break,
                    },
                    (Side::Ask, Some(w)) => w.saturating_add(gap(rng)),
                    (_, None) => break,
                };
                let qty = self.draw_qty(rng);
                self.apply(Op { side, price, qty }, ops, watch);
            }
            while self.side(side).len() > max {
                let Some(worst) = self.side(side).levels.first().copied() else {
                    break;
                };
                self.apply(
                    Op {
                        side,
                        price: worst.price,
                        qty: 0,
                    },
                    ops,
                    watch,
                );
            }
        }
    }
}

/// The distance in ticks between neighbouring levels of a fresh book: mostly 1 to 3.
fn gap(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0..=4 => 1,
        5..=7 => 2,
        8 => 3,
        _ => rng.range(4, 8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(book: &TrueBook) {
        for side in [&book.bids, &book.asks] {
            let v: Vec<Lvl> = side.best_first().collect();
            assert!(
                v.windows(2).all(|w| side.worse(w[1].price, w[0].price)),
                "sorted and unique"
            );
            assert!(v.iter().all(|l| l.qty > 0), "no zero quantity");
        }
        if let (Some(b), Some(a)) = (book.bids.at_rank(0), book.asks.at_rank(0)) {
            assert!(b.price < a.price, "crossed: {} >= {}", b.price, a.price);
        }
    }

    #[test]
    fn a_long_random_run_keeps_the_book_well_formed_and_ops_exact() {
        let d = Dynamics::new(300);
        let mut rng = Rng::new(11);
        let mut book = TrueBook::generate(&mut rng, 628_025, 8, &d);
        check(&book);
        assert_eq!(book.bids.len(), 300);
        let mut ops = Vec::new();
        let mut repeated = 0;
        let (mut inserts, mut deletes, mut changes) = (0, 0, 0);
        for _ in 0..20_000 {
            let before = book.clone();
            book.event(&mut rng, &d, &mut ops, &mut |_, _, _| {});
            assert!(!ops.is_empty());
            // Replaying the ops on the previous book gives the new book exactly.
            let mut replay = before.clone();
            for op in &ops {
                let was = replay.side(op.side).qty_at(op.price);
                match (was, op.qty) {
                    (None, 0) => panic!("deleting an absent level: {op:?}"),
                    (None, _) => inserts += 1,
                    (Some(_), 0) => deletes += 1,
                    (Some(_), _) => changes += 1,
                }
                replay.side_mut(op.side).set(op.price, op.qty);
            }
            assert_eq!(replay.bids.levels, book.bids.levels);
            assert_eq!(replay.asks.levels, book.asks.levels);
            if ops.iter().enumerate().any(|(i, a)| {
                ops[..i]
                    .iter()
                    .any(|b| b.side == a.side && b.price == a.price)
            }) {
                repeated += 1;
            }
            check(&book);
            for side in [&book.bids, &book.asks] {
                assert!(
                    (300..=330).contains(&side.len()),
                    "size kept: {}",
                    side.len()
                );
            }
        }
        assert!(
            repeated > 200,
            "the same price twice in an event: {repeated}"
        );
        assert!(inserts > 5000 && deletes > 5000 && changes > 5000);
    }

    #[test]
    fn changes_concentrate_at_the_top() {
        let d = Dynamics::new(2000);
        let mut rng = Rng::new(5);
        let mut book = TrueBook::generate(&mut rng, 1_000_000, 4, &d);
        let mut ops = Vec::new();
        let (mut top10, mut top25, mut top100, mut events) = (0u32, 0u32, 0u32, 0u32);
        for _ in 0..5000 {
            let before = book.clone();
            book.event(&mut rng, &d, &mut ops, &mut |_, _, _| {});
            events += 1;
            // The best rank any op of the event touched, before or after.
            let rank = |side: &Ladder, p: u64| side.best_first().position(|l| l.price == p);
            let best = ops
                .iter()
                .filter_map(|op| {
                    let r1 = rank(before.side(op.side), op.price);
                    let r2 = rank(book.side(op.side), op.price);
                    r1.into_iter().chain(r2).min()
                })
                .min()
                .unwrap_or(usize::MAX);
            top10 += u32::from(best < 10);
            top25 += u32::from(best < 25);
            top100 += u32::from(best < 100);
        }
        let f = |n: u32| f64::from(n) / f64::from(events);
        // Kraken's BTC/USD: about 1/3 of messages at depth 10, 2/3 at 25, nearly all at 100.
        assert!((0.3..0.75).contains(&f(top10)), "top 10: {}", f(top10));
        assert!(
            f(top25) > f(top10) && f(top100) > 0.9,
            "{} {}",
            f(top25),
            f(top100)
        );
    }

    #[test]
    fn a_low_price_keeps_bids_above_zero() {
        let d = Dynamics::new(100);
        let mut rng = Rng::new(9);
        let mut book = TrueBook::generate(&mut rng, 40, 2, &d);
        assert!(book.bids.len() < 40, "bids stop above zero");
        let mut ops = Vec::new();
        for _ in 0..2000 {
            book.event(&mut rng, &d, &mut ops, &mut |_, _, _| {});
            check(&book);
            assert!(book.bids.best_first().all(|l| l.price >= 1));
        }
    }

    #[test]
    fn quantities_span_magnitudes_and_some_are_round() {
        let d = Dynamics::new(10);
        let mut rng = Rng::new(2);
        let book = TrueBook::generate(&mut rng, 1000, 8, &d);
        let qs: Vec<u64> = (0..2000).map(|_| book.draw_qty(&mut rng)).collect();
        assert!(qs.iter().all(|&q| (10_000..1_000_000_000_000).contains(&q)));
        let round = qs.iter().filter(|&&q| q % 1_000_000 == 0).count();
        assert!(round > 100, "round quantities: {round}");
    }
}
