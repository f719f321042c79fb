//! What a subscriber at depth D is sent for one event of the true book: Kraken's rules for a
//! depth-limited book.
//!
//! Kraken sends, for a window of the best D levels a side, every change inside the window, the
//! deletion of a level that leaves it by being deleted, and the level that enters it from below as
//! an ordinary insert; a level pushed out of the window by an insert above it gets no message
//! (the client truncates to D after each message). [`window_update`] computes exactly that for
//! one side, from the window's boundary before the event, the event's ops, and the book after it:
//!
//! 1. every op whose price is at or better than the worse of the two boundaries (the D-th best
//!    price before and after the event; when either window is not full, every op) is sent, in
//!    the event's order, so a price changed twice in the event is sent twice;
//! 2. every level of the new window that lies strictly below the old boundary and that no sent op
//!    touched is sent with its quantity: the refills from below.
//!
//! Why the client then holds exactly the new window: every level of the new window is either set
//! by its last sent op, or was in the old window untouched, or is a refill. Any other level the
//! client holds is in the true book (its last op was sent, or it was untouched) but ranks below
//! D, and the new window is then full: truncating to D removes it. The unit tests check this on
//! long random runs at depths 1 to 1000, with the project's own [`OrderBook`] as the client.
//!
//! [`OrderBook`]: crate::book::OrderBook

use super::book::{Ladder, Op};

/// The D-th best price of a side (the window's boundary), if the side has D levels.
pub fn boundary(side: &Ladder, depth: usize) -> Option<u64> {
    depth
        .checked_sub(1)
        .and_then(|r| side.at_rank(r))
        .map(|l| l.price)
}

/// Appends to `out` the levels a depth-`depth` subscriber is sent for one side of one event.
///
/// `before` is [`boundary`] of the side before the event, `ops` the event's ops (other sides'
/// ops are skipped), `after` the side after the event. Levels are `(price, qty)` mantissas.
pub fn window_update(
    before: Option<u64>,
    ops: &[Op],
    after: &Ladder,
    depth: usize,
    out: &mut Vec<(u64, u64)>,
) {
    let start = out.len();
    let side = after.side();
    let reach = match (before, boundary(after, depth)) {
        (Some(b), Some(a)) => Some(if after.worse(a, b) { a } else { b }),
        _ => None,
    };
    for op in ops.iter().filter(|op| op.side == side) {
        if reach.is_none_or(|r| !after.worse(op.price, r)) {
            out.push((op.price, op.qty));
        }
    }
    let Some(old) = before else {
        // The old window held the whole side: every level of the new one was sent or unchanged.
        return;
    };
    let sent = out.len();
    for rank in (0..depth.min(after.len())).rev() {
        let Some(level) = after.at_rank(rank) else {
            break;
        };
        if !after.worse(level.price, old) {
            break;
        }
        if !out[start..sent].iter().any(|&(p, _)| p == level.price) {
            out.push((level.price, level.qty));
        }
    }
    // Refills best first, as a reader of the wire would expect.
    out[sent..].reverse();
}

#[cfg(test)]
mod tests {
    use super::super::book::{Dynamics, TrueBook};
    use super::super::rng::Rng;
    use super::*;
    use crate::book::{Decimal, OrderBook, Precision, Side};

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
    }

    fn run(depth: usize, levels: usize, mid: u64, events: usize, seed: u64) -> Seen {
        let p = Precision { price: 2, qty: 8 };
        let d = Dynamics::new(levels);
        let mut rng = Rng::new(seed);
        let mut book = TrueBook::generate(&mut rng, mid, p.qty, &d);
        let mut client = OrderBook::with_precision(depth, Some(p));
        let level = |l: super::super::book::Lvl| (dec(l.price, p.price), dec(l.qty, p.qty));
        client
            .apply_snapshot(
                book.bids.best_first().take(depth).map(level),
                book.asks.best_first().take(depth).map(level),
            )
            .unwrap();
        let mut ops = Vec::new();
        let (mut bids, mut asks) = (Vec::new(), Vec::new());
        let mut seen = Seen::default();
        for _ in 0..events {
            let old_b = boundary(&book.bids, depth);
            let old_a = boundary(&book.asks, depth);
            let old_worst_b = client.bids().last().map(|l| l.price);
            let old_worst_a = client.asks().last().map(|l| l.price);
            let full = client.len();
            book.event(&mut rng, &d, &mut ops);
            bids.clear();
            asks.clear();
            window_update(old_b, &ops, &book.bids, depth, &mut bids);
            window_update(old_a, &ops, &book.asks, depth, &mut asks);
            if bids.is_empty() && asks.is_empty() {
                // Nothing is sent: the window must not have changed.
                assert_eq!(client_top(&client, depth), top(&book, depth, p));
                continue;
            }
            seen.messages += 1;
            for (levels, worst, n, side) in [
                (&bids, old_worst_b, full.0, Side::Bid),
                (&asks, old_worst_a, full.1, Side::Ask),
            ] {
                for (i, &(price, qty)) in levels.iter().enumerate() {
                    seen.deletions += u64::from(qty == 0);
                    seen.repeats += u64::from(levels[..i].iter().any(|&(q, _)| q == price));
                    let beyond = worst.is_some_and(|w| {
                        let price = dec(price, p.price);
                        match side {
                            Side::Bid => price < w,
                            Side::Ask => price > w,
                        }
                    });
                    seen.refills += u64::from(qty != 0 && n == depth && beyond);
                }
            }
            client
                .apply_update(
                    bids.iter()
                        .map(|&(pr, q)| (dec(pr, p.price), dec(q, p.qty))),
                    asks.iter()
                        .map(|&(pr, q)| (dec(pr, p.price), dec(q, p.qty))),
                )
                .unwrap();
            assert_eq!(
                client_top(&client, depth),
                top(&book, depth, p),
                "depth {depth}: the client's book equals the true window after every message"
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
        for (i, (depth, levels, mid, events, what)) in cases.into_iter().enumerate() {
            let seen = run(depth, levels, mid, events, 100 + i as u64);
            assert!(seen.messages > 0, "{what}: {seen:?}");
            if levels > depth {
                assert!(
                    seen.deletions > 0 && seen.refills > 0 && seen.repeats > 0,
                    "{what}: deletions, refills and repeated prices all occur: {seen:?}"
                );
            }
        }
    }

    #[test]
    fn a_level_pushed_out_gets_no_message_and_a_refill_is_an_insert() {
        // A hand-built side: bids 10, 9, 8, 7 (best first), window of 2.
        let d = Dynamics::new(4);
        let mut rng = Rng::new(0);
        let mut book = TrueBook::generate(&mut rng, 100, 0, &d);
        book.bids = {
            let mut l = book.bids.clone();
            for p in l.best_first().map(|l| l.price).collect::<Vec<_>>() {
                l.set(p, 0);
            }
            for p in [7, 8, 9, 10] {
                l.set(p, 1);
            }
            l
        };
        // An insert at 11 pushes 9 out: only the insert is sent.
        let before = boundary(&book.bids, 2);
        let ops = [Op {
            side: Side::Bid,
            price: 11,
            qty: 5,
        }];
        book.bids.set(11, 5);
        let mut out = Vec::new();
        window_update(before, &ops, &book.bids, 2, &mut out);
        assert_eq!(out, vec![(11, 5)]);
        // Deleting 11 and 10 brings 9 and 8 back as inserts, best first.
        let before = boundary(&book.bids, 2);
        let ops = [
            Op {
                side: Side::Bid,
                price: 11,
                qty: 0,
            },
            Op {
                side: Side::Bid,
                price: 10,
                qty: 0,
            },
        ];
        book.bids.set(11, 0);
        book.bids.set(10, 0);
        out.clear();
        window_update(before, &ops, &book.bids, 2, &mut out);
        assert_eq!(out, vec![(11, 0), (10, 0), (9, 1), (8, 1)]);
        // A change below the window is not sent.
        let before = boundary(&book.bids, 2);
        let ops = [Op {
            side: Side::Bid,
            price: 7,
            qty: 3,
        }];
        book.bids.set(7, 3);
        out.clear();
        window_update(before, &ops, &book.bids, 2, &mut out);
        assert!(out.is_empty());
    }
}
