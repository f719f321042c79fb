//! What an export or a plot reads: the symbols, the time range and the collector whose record is
//! read, checked against the database before any work starts, and the gaps in each symbol's
//! record.
//!
//! What must hold:
//! - a symbol never recorded, a range with no book message of a symbol, or a range recorded by
//!   several collectors (without `--collector`) is refused with a one-line error that says what is
//!   recorded, before a file is written;
//! - every check uses an index (`(symbol, timestamp)` of the messages, the checkpoints table, the
//!   feed events): none scans a day of rows;
//! - [`Gaps::is_gap`] says an instant is in a gap whenever the book the collector held then was not
//!   known to be Kraken's: inside a closed gap (`resynced` event: from its `gap_start` to its
//!   time), or after a checksum mismatch of the symbol or the loss of a connection that carried
//!   it, with no message of the symbol since, or after the collector's record ends (its last
//!   stored message or commit: a collector killed leaves no `disconnected` event).

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;

use crate::store::StoreError;
use crate::time::Timestamp;

/// What an export or a plot reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The symbols, as given.
    pub symbols: Vec<String>,
    /// The range's start (inclusive), on Kraken's clock (the `timestamp` column).
    pub from: Timestamp,
    /// The range's end (exclusive).
    pub to: Timestamp,
    /// The collector whose record is read.
    pub collector: String,
}

/// Why a selection was refused.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--from` is not before `--to`.
    #[error("the range is empty: --from {from} is not before --to {to}")]
    EmptyRange {
        /// Start.
        from: Timestamp,
        /// End.
        to: Timestamp,
    },
    /// No symbol given.
    #[error("no symbol given: name one, e.g. --symbol BTC/USD")]
    NoSymbol,
    /// A symbol that was never recorded.
    #[error("unknown symbol {symbol}: it was never recorded here ({known})")]
    UnknownSymbol {
        /// The symbol.
        symbol: String,
        /// What is recorded, for the message.
        known: String,
    },
    /// A symbol with no book message in the range.
    #[error("no data of {symbol} from {from} to {to}: {recorded}")]
    NoData {
        /// The symbol.
        symbol: String,
        /// Start.
        from: Timestamp,
        /// End.
        to: Timestamp,
        /// What is recorded, for the message.
        recorded: String,
    },
    /// Several collectors recorded the symbols in the range.
    #[error(
        "the range was recorded by several collectors ({collectors}): choose one with --collector NAME"
    )]
    SeveralCollectors {
        /// Their names.
        collectors: String,
    },
    /// The collector asked for recorded nothing of the symbols in the range.
    #[error("collector {collector} recorded nothing of {symbols} from {from} to {to}{others}")]
    CollectorHasNoData {
        /// The collector.
        collector: String,
        /// The symbols.
        symbols: String,
        /// Start.
        from: Timestamp,
        /// End.
        to: Timestamp,
        /// Collectors that did, for the message.
        others: String,
    },
    /// The rows in range carry no collector (recorded by the original tool).
    #[error(
        "the book messages from {from} to {to} carry no collector and sequence number (recorded by the original tool?): they cannot be put back in received order"
    )]
    NoCollector {
        /// Start.
        from: Timestamp,
        /// End.
        to: Timestamp,
    },
}

pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> SourceError {
    move |source| {
        SourceError::Store(StoreError::Db {
            context: context.to_owned(),
            source,
        })
    }
}

/// Checks the symbols and the range, and finds the collector whose record is read.
pub async fn select(
    client: &Client,
    symbols: &[String],
    from: Timestamp,
    to: Timestamp,
    collector: Option<&str>,
) -> Result<Selection, SourceError> {
    if from >= to {
        return Err(SourceError::EmptyRange { from, to });
    }
    if symbols.is_empty() {
        return Err(SourceError::NoSymbol);
    }
    for symbol in symbols {
        check_symbol(client, symbol, from, to).await?;
    }
    let collector = match collector {
        Some(c) => {
            if !collector_has_data(client, c, symbols, from, to).await? {
                let others = collectors_with_data(client, symbols, from, to).await?;
                return Err(SourceError::CollectorHasNoData {
                    collector: c.to_owned(),
                    symbols: symbols.join(", "),
                    from,
                    to,
                    others: if others.is_empty() {
                        String::new()
                    } else {
                        format!(" (recorded by: {})", others.join(", "))
                    },
                });
            }
            c.to_owned()
        }
        None => {
            let mut found = collectors_with_data(client, symbols, from, to).await?;
            match found.len() {
                0 => return Err(SourceError::NoCollector { from, to }),
                1 => found.remove(0),
                _ => {
                    return Err(SourceError::SeveralCollectors {
                        collectors: found.join(", "),
                    });
                }
            }
        }
    };
    Ok(Selection {
        symbols: symbols.to_vec(),
        from,
        to,
        collector,
    })
}

/// The symbol is recorded, and has a book message in the range.
async fn check_symbol(
    client: &Client,
    symbol: &str,
    from: Timestamp,
    to: Timestamp,
) -> Result<(), SourceError> {
    let extent = client
        .query_one(
            "SELECT (SELECT \"timestamp\" FROM kraken_orderbook_messages
                      WHERE symbol = $1 AND channel = 'book' ORDER BY \"timestamp\" LIMIT 1),
                    (SELECT \"timestamp\" FROM kraken_orderbook_messages
                      WHERE symbol = $1 AND channel = 'book' ORDER BY \"timestamp\" DESC LIMIT 1),
                    EXISTS (SELECT 1 FROM kraken_orderbook_messages
                      WHERE symbol = $1 AND channel = 'book' AND \"timestamp\" >= $2 AND \"timestamp\" < $3)",
            &[&symbol, &from, &to],
        )
        .await
        .map_err(db("checking the symbol"))?;
    let first: Option<Timestamp> = extent.get(0);
    let last: Option<Timestamp> = extent.get(1);
    let in_range: bool = extent.get(2);
    match (first, last) {
        (Some(first), Some(last)) if !in_range => Err(SourceError::NoData {
            symbol: symbol.to_owned(),
            from,
            to,
            recorded: format!("it is recorded from {first} to {last}"),
        }),
        (Some(_), Some(_)) => Ok(()),
        _ => {
            let known = recorded_symbols(client).await?;
            Err(SourceError::UnknownSymbol {
                symbol: symbol.to_owned(),
                known: if known.is_empty() {
                    "no book is recorded in this database".to_owned()
                } else {
                    format!("recorded: {}", known.join(", "))
                },
            })
        }
    }
}

/// Every symbol with a book message, by a skip scan of the `(symbol, timestamp)` index (one
/// index probe per symbol, not a scan of the table).
pub async fn recorded_symbols(client: &Client) -> Result<Vec<String>, SourceError> {
    let rows = client
        .query(
            "WITH RECURSIVE s(symbol) AS (
               (SELECT symbol FROM kraken_orderbook_messages WHERE symbol IS NOT NULL
                 ORDER BY symbol LIMIT 1)
               UNION ALL
               SELECT (SELECT m.symbol FROM kraken_orderbook_messages m
                        WHERE m.symbol > s.symbol ORDER BY m.symbol LIMIT 1)
                 FROM s WHERE s.symbol IS NOT NULL)
             SELECT symbol FROM s WHERE symbol IS NOT NULL LIMIT 200",
            &[],
        )
        .await
        .map_err(db("listing the recorded symbols"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn collector_has_data(
    client: &Client,
    collector: &str,
    symbols: &[String],
    from: Timestamp,
    to: Timestamp,
) -> Result<bool, SourceError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM kraken_orderbook_messages
                WHERE symbol = ANY($1) AND collector = $2 AND channel = 'book'
                  AND \"timestamp\" >= $3 AND \"timestamp\" < $4)",
            &[&symbols, &collector, &from, &to],
        )
        .await
        .map_err(db("checking the collector"))?;
    Ok(row.get(0))
}

/// The collectors (from the writers' checkpoints) with a book message of the symbols in range.
async fn collectors_with_data(
    client: &Client,
    symbols: &[String],
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<String>, SourceError> {
    let known: Vec<String> = client
        .query(
            "SELECT collector FROM krakenbook_checkpoints ORDER BY collector",
            &[],
        )
        .await
        .map_err(db("reading the collectors"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut found = Vec::new();
    for c in known {
        if collector_has_data(client, &c, symbols, from, to).await? {
            found.push(c);
        }
    }
    Ok(found)
}

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
    breaks: Vec<Timestamp>,
}

impl Gaps {
    /// Loads the feed events of `collector` from `since` to `until` for `symbols`.
    pub async fn load(
        client: &Client,
        collector: &str,
        symbols: &[String],
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Gaps, SourceError> {
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
                    gaps.symbols.entry(s).or_default().breaks.push(time);
                }
                ("disconnected" | "connected", _) => {
                    // A lost connection, or a new one (after a crash there was no
                    // `disconnected`): the books of the symbols it carries start over. A
                    // connection that never subscribed a wanted symbol affects none.
                    let affected: Vec<String> = match conn {
                        Some(c) => carried.get(&c).cloned().unwrap_or_default(),
                        None => symbols.to_vec(),
                    };
                    for s in affected.into_iter().filter(|s| wanted.contains(s)) {
                        gaps.symbols.entry(s).or_default().breaks.push(time);
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
        if self.recorded_until.is_some_and(|end| at > end) {
            return true;
        }
        let Some(g) = self.symbols.get(symbol) else {
            return false;
        };
        if g.closed.iter().any(|&(s, e)| s <= at && at < e) {
            return true;
        }
        // The first break after the last message: the book was lost then, and no message of
        // the symbol has come since.
        let i = g.breaks.partition_point(|&t| t <= last_received);
        g.breaks.get(i).is_some_and(|&t| t <= at)
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
                breaks: vec![ts(10), ts(50)],
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
