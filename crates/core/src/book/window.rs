//! Kraken's window rule: what a subscriber at depth D is sent when one level of one side changes.
//! The simulator (`krakenbook-exchange`) and the replay server (`krakenbook-read`) both send what this
//! rule says, one change at a time, in the order the changes happen.
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

#[cfg(test)]
mod tests {
    use super::*;

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
