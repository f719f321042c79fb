//! Gaps in a recorded book: when the book a collector held was not known to be right.
//!
//! A symbol's book is in a gap at an instant when the instant lies in a closed gap (from
//! `gap_start` to `resynced` in the feed events), or when, after the last message applied to the
//! book was received, the book was lost and no message of the symbol came since: a checksum
//! mismatch of the symbol, or the loss of (or a new) connection that carried it (after a crash
//! there is no `disconnected`, only the next `connected`). Instants after the collector's record
//! ends are gaps too. All of it is on the local clock: Kraken's timestamp of a quiet pair's
//! snapshot can be far older than its receipt. `book --at`, the snapshot export and the plot all
//! ask this one place.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;

use super::{ReadbackError, db};
use crate::time::Timestamp;

/// The gaps in each symbol's record: when the book the collector held was not known to be right.
#[derive(Clone, Debug, Default)]
pub struct Gaps {
    symbols: HashMap<String, SymbolGaps>,
    /// The collector's record ends here (its last stored message, or its last commit): later
    /// instants are not recorded (yet), whatever the last book was.
    recorded_until: Option<Timestamp>,
}

#[derive(Clone, Debug, Default)]
struct SymbolGaps {
    /// Closed gaps: `[gap_start, resynced)`, local clock.
    closed: Vec<(Timestamp, Timestamp)>,
    /// Instants the book was lost: a checksum mismatch of the symbol, or the loss of (or a new)
    /// connection of the collector that carried the symbol; sorted.
    breaks: Vec<(Timestamp, &'static str)>,
}

impl Gaps {
    /// Loads the feed events of `collector` from `since` to `until` for `symbols`.
    pub async fn load(
        client: &Client,
        collector: &str,
        symbols: &[String],
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Gaps, ReadbackError> {
        // The connections that carried each symbol (a few rows per connection, all time).
        let conns = client
            .query(
                "SELECT DISTINCT symbol, conn_id FROM kraken_feed_events
                  WHERE collector = $1 AND event = 'subscribed' AND symbol = ANY($2)
                    AND conn_id IS NOT NULL",
                &[&collector, &symbols],
            )
            .await
            .map_err(db("reading the subscriptions"))?;
        let mut carried: HashMap<i64, Vec<String>> = HashMap::new();
        for r in &conns {
            carried.entry(r.get(1)).or_default().push(r.get(0));
        }
        let rows = client
            .query(
                "SELECT time, event, symbol, conn_id, gap_start FROM kraken_feed_events
                  WHERE collector = $1 AND time >= $2 AND time <= $3
                    AND (event IN ('disconnected', 'connected')
                         OR (event IN ('checksum_mismatch', 'resynced') AND symbol = ANY($4)))
                  ORDER BY time, seq",
                &[&collector, &since, &until, &symbols],
            )
            .await
            .map_err(db("reading the feed events"))?;
        let mut gaps = Gaps::default();
        let end = client
            .query_one(
                "SELECT greatest(
                   (SELECT received_at FROM kraken_orderbook_messages WHERE collector = $1
                     ORDER BY seq DESC LIMIT 1),
                   (SELECT updated_at FROM krakenbook_checkpoints WHERE collector = $1))",
                &[&collector],
            )
            .await
            .map_err(db("reading where the record ends"))?;
        gaps.recorded_until = end.get(0);
        let wanted: HashSet<&String> = symbols.iter().collect();
        for r in rows {
            let time: Timestamp = r.get(0);
            let event: &str = r.get(1);
            let symbol: Option<String> = r.get(2);
            let conn: Option<i64> = r.get(3);
            match (event, symbol) {
                ("resynced", Some(s)) => {
                    let start: Option<Timestamp> = r.get(4);
                    gaps.symbols
                        .entry(s)
                        .or_default()
                        .closed
                        .push((start.unwrap_or(time), time));
                }
                ("checksum_mismatch", Some(s)) => {
                    gaps.symbols
                        .entry(s)
                        .or_default()
                        .breaks
                        .push((time, "checksum_mismatch"));
                }
                (kind @ ("disconnected" | "connected"), _) => {
                    let reason = if kind == "connected" {
                        "reconnected"
                    } else {
                        "disconnected"
                    };
                    // A lost connection, or a new one (after a crash there was no
                    // `disconnected`): the books of the symbols it carries start over. A
                    // connection that never subscribed a wanted symbol affects none.
                    let affected: Vec<String> = match conn {
                        Some(c) => carried.get(&c).cloned().unwrap_or_default(),
                        None => symbols.to_vec(),
                    };
                    for s in affected.into_iter().filter(|s| wanted.contains(s)) {
                        gaps.symbols
                            .entry(s)
                            .or_default()
                            .breaks
                            .push((time, reason));
                    }
                }
                _ => {}
            }
        }
        Ok(gaps)
    }

    /// Whether the book of `symbol` at `at` is in a gap, given that the last message applied to
    /// it was received at `last_received`.
    pub fn is_gap(&self, symbol: &str, last_received: Timestamp, at: Timestamp) -> bool {
        self.gap_at(symbol, last_received, at).is_some()
    }

    /// The gap the book of `symbol` is in at `at` (when it began, and why), given that the last
    /// message applied to it was received at `last_received`.
    pub fn gap_at(
        &self,
        symbol: &str,
        last_received: Timestamp,
        at: Timestamp,
    ) -> Option<(Timestamp, &'static str)> {
        if let Some(end) = self.recorded_until
            && at > end
        {
            return Some((end, "not recorded"));
        }
        let g = self.symbols.get(symbol)?;
        // The first break after the last message: the book was lost then, and no message of
        // the symbol has come since.
        let i = g.breaks.partition_point(|&(t, _)| t <= last_received);
        if let Some(&(t, reason)) = g.breaks.get(i)
            && t <= at
        {
            return Some((t, reason));
        }
        g.closed
            .iter()
            .find(|&&(s, e)| s <= at && at < e)
            .map(|&(s, _)| (s, "gap"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_unix_nanos(s * 1_000_000_000)
    }

    #[test]
    fn gaps_cover_closed_ranges_and_breaks_after_the_last_message() {
        let mut gaps = Gaps::default();
        gaps.symbols.insert(
            "BTC/USD".into(),
            SymbolGaps {
                closed: vec![(ts(10), ts(20))],
                breaks: vec![(ts(10), "disconnected"), (ts(50), "checksum_mismatch")],
            },
        );
        let cases = [
            // (last message received, instant, in a gap, what it covers)
            (ts(5), ts(9), false, "before any gap"),
            (ts(5), ts(10), true, "the gap's first instant"),
            (
                ts(19),
                ts(19),
                true,
                "inside the closed gap, whatever the last message",
            ),
            (ts(20), ts(20), false, "the resync ends it"),
            (ts(21), ts(49), false, "between gaps"),
            (ts(21), ts(50), true, "a break after the last message"),
            (
                ts(51),
                ts(60),
                false,
                "a message after the break: the book is back",
            ),
        ];
        for (last, at, want, what) in cases {
            assert_eq!(gaps.is_gap("BTC/USD", last, at), want, "{what}");
        }
        assert!(!gaps.is_gap("ETH/USD", ts(0), ts(50)), "another symbol");
        assert_eq!(
            gaps.gap_at("BTC/USD", ts(21), ts(55)),
            Some((ts(50), "checksum_mismatch"))
        );
        assert_eq!(
            gaps.gap_at("BTC/USD", ts(15), ts(16)),
            Some((ts(10), "gap")),
            "a resync after the last message"
        );
        gaps.recorded_until = Some(ts(70));
        assert!(
            !gaps.is_gap("BTC/USD", ts(51), ts(70)),
            "the record's last instant"
        );
        assert!(
            gaps.is_gap("BTC/USD", ts(51), ts(71)),
            "after the record ends"
        );
    }
}
