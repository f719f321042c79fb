//! Kraken's window rule: what a subscriber at depth D is sent when one level of one side changes.
//! The simulator (`krakenbook-exchange`) and the replay server (`krakenbook-read`) both send what this
//! rule says, one change at a time, in the order the changes happen; the export writes the
//! levels a subscriber drops past the window ([`truncate`]) as the deletions Kraken implies.
//!
//! The rule, for a change of the level at price P (levels strictly better than P: `better`):
//! - below the window (`better >= D`): nothing is sent; a level pushed out of the window by an
//!   insert above it gets no message either (the client truncates);
//! - a change or an insert inside the window: that level;
//! - a deletion inside the window: the deletion, then at once the level that now ranks D-th, if
//!   the side has one (the refill from below, an ordinary insert);
//! - the deletion of a price that has no level: nothing.
//!
//! A message carries the changes of one event, each side's levels in the order the rule produced
//! them. So a deletion always comes before the level that refills its place, and a client that
//! truncates its side to D after every level (python-kraken-sdk's `SpotOrderBookClient`; Kraken's
//! checksum guide allows it) holds exactly the window after every level: it never drops a level
//! that is still in the window.
//!
//! What the real captures show (`tests/fixtures/kraken-v2`, six captures at depths 10, 25 and
//! 100: 4,891 updates after a snapshot, 7,791 levels), replayed by a client that truncates after
//! every level:
//! - each of the 1,923 deletions is followed directly by its refill (1,923 refills, every one
//!   right after its deletion), never by a refill later in the message;
//! - 541 refills are pushed out again by an insert later in the same message: Kraken sends each
//!   change's window effect as it happens, not the difference between the windows before and
//!   after the message (which would not contain those refills);
//! - no deletion follows an insert into a full window on the same side (0 of 2,038 such inserts),
//!   and no deletion names a price the client does not hold (0 of 1,923);
//! - a client that truncates after every level and one that truncates after every message hold
//!   the same book after every update (0 differences).
//!
//! One case the captures never show needs care: an insert pushes a level out, then that level is
//! deleted below the window, then a deletion inside the window brings up a refill that ranks
//! below the deleted level. A client that truncates only after the message would still hold the
//! deleted level and drop the refill. The servers check for it (with a client model that
//! truncates after the message) and then append the deletion of that level to the message: a true
//! deletion, which a client truncating after every level ignores (it no longer holds the level).
//! The simulator's tests show both kinds of client holding the exact window after every message.

use std::collections::BTreeSet;

use crate::num::{Decimal, Side};

/// What one change of a side sends to a window of `depth` levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Nothing: the change is below the window, or deletes a price that has no level.
    Nothing,
    /// The changed level (a change, an insert, or a deletion with no level left to refill).
    Level,
    /// The deletion, then the level now ranking `depth`-th, if the side has one.
    DeletionAndRefill,
}

/// What a window of `depth` levels is sent for one change of a side.
///
/// `better` is the number of levels strictly better than the changed price (the same before and
/// after the change), `existed` whether the price had a level before the change, `deletion`
/// whether the change deletes it (quantity zero).
pub fn on_change(depth: usize, better: usize, existed: bool, deletion: bool) -> Sent {
    match (better < depth, deletion, existed) {
        (false, _, _) | (true, true, false) => Sent::Nothing,
        (true, true, true) => Sent::DeletionAndRefill,
        (true, false, _) => Sent::Level,
    }
}

/// The levels one side of a subscriber's book drops at the end of a message: Kraken sends no
/// deletion for a level pushed past the window (the first bullet of the rule above), so the
/// client truncates the side to `depth` levels, its best. `prices` is the side's prices; the
/// ones dropped (the lowest bids, the highest asks) are taken out and returned, the worst first.
/// The export writes them as the deletions Kraken implies; [`crate::book::OrderBook`] truncates
/// its own sides the same way.
pub fn truncate(side: Side, prices: &mut BTreeSet<Decimal>, depth: usize) -> Vec<Decimal> {
    let mut dropped = Vec::new();
    while prices.len() > depth {
        let worst = match side {
            Side::Bid => prices.pop_first(),
            Side::Ask => prices.pop_last(),
        };
        dropped.extend(worst);
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_drops_the_worst_levels_of_each_side_past_the_depth() {
        let set = |ps: &[&str]| -> BTreeSet<Decimal> {
            ps.iter().map(|p| Decimal::parse(p).unwrap()).collect()
        };
        let list = |ps: &[&str]| -> Vec<Decimal> {
            ps.iter().map(|p| Decimal::parse(p).unwrap()).collect()
        };
        // (side, depth, prices, dropped (worst first), kept, what it covers)
        type Case = (
            Side,
            usize,
            &'static [&'static str],
            &'static [&'static str],
            &'static [&'static str],
            &'static str,
        );
        let cases: [Case; 5] = [
            (
                Side::Bid,
                2,
                &["100", "99.5", "101"],
                &["99.5"],
                &["100", "101"],
                "the lowest bid goes",
            ),
            (
                Side::Ask,
                2,
                &["102", "103", "102.5"],
                &["103"],
                &["102", "102.5"],
                "the highest ask goes",
            ),
            (
                Side::Bid,
                1,
                &["1", "2", "3"],
                &["1", "2"],
                &["3"],
                "several levels, the worst first",
            ),
            (
                Side::Ask,
                3,
                &["1", "2"],
                &[],
                &["1", "2"],
                "a side inside the window keeps everything",
            ),
            (
                Side::Ask,
                0,
                &["1", "2"],
                &["2", "1"],
                &[],
                "a zero depth empties the side",
            ),
        ];
        for (side, depth, prices, dropped, kept, what) in cases {
            let mut prices = set(prices);
            assert_eq!(truncate(side, &mut prices, depth), list(dropped), "{what}");
            assert_eq!(prices, set(kept), "{what}");
        }
    }

    #[test]
    fn each_change_sends_what_kraken_sends() {
        // (depth, better, existed, deletion, sent, what it covers)
        let cases = [
            (
                10,
                0,
                true,
                false,
                Sent::Level,
                "a change of the best level",
            ),
            (
                10,
                9,
                true,
                false,
                Sent::Level,
                "a change of the last level in the window",
            ),
            (
                10,
                10,
                true,
                false,
                Sent::Nothing,
                "a change just below the window",
            ),
            (
                10,
                3,
                false,
                false,
                Sent::Level,
                "an insert inside the window",
            ),
            (
                10,
                10,
                false,
                false,
                Sent::Nothing,
                "an insert below the window",
            ),
            (
                10,
                9,
                true,
                true,
                Sent::DeletionAndRefill,
                "a deletion inside the window: refilled from below",
            ),
            (
                10,
                12,
                true,
                true,
                Sent::Nothing,
                "a deletion below the window",
            ),
            (
                10,
                0,
                false,
                true,
                Sent::Nothing,
                "the deletion of an absent price",
            ),
            (
                1,
                0,
                true,
                true,
                Sent::DeletionAndRefill,
                "a one-level window",
            ),
        ];
        for (depth, better, existed, deletion, sent, what) in cases {
            assert_eq!(on_change(depth, better, existed, deletion), sent, "{what}");
        }
    }
}
