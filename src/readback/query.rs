//! `krakenbook query`: what is stored, at a glance; the original `query_data.py` and more.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::{ReadbackError, db};
use crate::time::Timestamp;

/// Which rows a query looks at.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this symbol.
    pub symbol: Option<String>,
    /// From this instant (inclusive).
    pub since: Option<Timestamp>,
    /// Up to this instant (exclusive).
    pub until: Option<Timestamp>,
}

impl Filter {
    /// `WHERE` conditions on `time_col` and `symbol`, with their parameters numbered from 1.
    fn clause(&self, time_col: &str) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
        let mut conds = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        if let Some(s) = &self.symbol {
            params.push(Box::new(s.clone()));
            conds.push(format!("symbol = ${}", params.len()));
        }
        if let Some(t) = self.since {
            params.push(Box::new(t));
            conds.push(format!("{time_col} >= ${}", params.len()));
        }
        if let Some(t) = self.until {
            params.push(Box::new(t));
            conds.push(format!("{time_col} < ${}", params.len()));
        }
        let clause = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        (clause, params)
    }
}

fn refs(params: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Totals (the original script's summary).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Rows in `kraken_orderbook_messages`.
    pub total_messages: i64,
    /// Rows in `kraken_orderbook_entries`.
    pub total_entries: i64,
    /// Distinct symbols among the messages.
    pub unique_symbols: i64,
    /// The earliest message's timestamp.
    pub first_message: Option<Timestamp>,
    /// The latest message's timestamp.
    pub last_message: Option<Timestamp>,
}

/// One symbol's coverage: what was collected, how well it verified, and its gaps.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Coverage {
    /// The pair.
    pub symbol: String,
    /// The first book message.
    pub first: Option<Timestamp>,
    /// The last book message.
    pub last: Option<Timestamp>,
    /// Book messages.
    pub book_messages: i64,
    /// Of which verified.
    pub checksum_ok: i64,
    /// Of which mismatched.
    pub checksum_mismatch: i64,
    /// Of which not verifiable (before a snapshot, or in a gap).
    pub unverified: i64,
    /// Gaps that closed (the book verified again): start and end.
    pub gaps: Vec<(Timestamp, Timestamp)>,
    /// A gap still open at the end of the record, since when.
    pub open_gap: Option<Timestamp>,
    /// Seconds in closed gaps.
    pub gap_seconds: f64,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MessageRow {
    /// Kraken's timestamp (or the receive time).
    pub timestamp: Timestamp,
    /// Receive time.
    pub received_at: Timestamp,
    /// The pair.
    pub symbol: Option<String>,
    /// Channel.
    pub channel: String,
    /// Type.
    pub message_type: String,
    /// Kraken's checksum.
    pub checksum: Option<i64>,
    /// The verdict.
    pub checksum_ok: Option<bool>,
    /// The message, pretty-printed JSON (or the text as received when it is not JSON).
    pub raw_message: Option<String>,
}

/// A stored level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryRow {
    /// Kraken's timestamp of its message.
    pub timestamp: Timestamp,
    /// The pair.
    pub symbol: String,
    /// `bid` or `ask`.
    pub side: String,
    /// Price, exact.
    pub price: String,
    /// Quantity, exact (0 deletes the level).
    pub quantity: String,
    /// `snapshot` or `update`.
    pub message_type: String,
    /// Its message's `seq`.
    pub seq: Option<i64>,
}

/// Counts and time range of the stored data.
pub async fn summary(client: &Client, filter: &Filter) -> Result<Summary, ReadbackError> {
    let (clause, params) = filter.clause("\"timestamp\"");
    let m = client
        .query_one(
            &format!("SELECT count(*), count(DISTINCT symbol), min(\"timestamp\"), max(\"timestamp\") FROM kraken_orderbook_messages {clause}"),
            &refs(&params),
        )
        .await
        .map_err(db("counting messages"))?;
    let e = client
        .query_one(
            &format!("SELECT count(*) FROM kraken_orderbook_entries {clause}"),
            &refs(&params),
        )
        .await
        .map_err(db("counting entries"))?;
    Ok(Summary {
        total_messages: m.get(0),
        unique_symbols: m.get(1),
        first_message: m.get(2),
        last_message: m.get(3),
        total_entries: e.get(0),
    })
}

/// Per-symbol coverage, gaps from the feed events.
pub async fn coverage(client: &Client, filter: &Filter) -> Result<Vec<Coverage>, ReadbackError> {
    let (clause, params) = filter.clause("\"timestamp\"");
    let book_clause = if clause.is_empty() {
        "WHERE channel = 'book' AND message_type IN ('snapshot', 'update') AND symbol IS NOT NULL"
            .to_owned()
    } else {
        format!(
            "{clause} AND channel = 'book' AND message_type IN ('snapshot', 'update') AND symbol IS NOT NULL"
        )
    };
    let rows = client
        .query(
            &format!(
                "SELECT symbol, min(\"timestamp\"), max(\"timestamp\"), count(*),
                        count(*) FILTER (WHERE checksum_ok), count(*) FILTER (WHERE checksum_ok = false),
                        count(*) FILTER (WHERE checksum_ok IS NULL)
                   FROM kraken_orderbook_messages {book_clause}
                  GROUP BY symbol ORDER BY symbol"
            ),
            &refs(&params),
        )
        .await
        .map_err(db("measuring coverage"))?;
    let mut out: BTreeMap<String, Coverage> = rows
        .iter()
        .map(|r| {
            let symbol: String = r.get(0);
            (
                symbol.clone(),
                Coverage {
                    symbol,
                    first: r.get(1),
                    last: r.get(2),
                    book_messages: r.get(3),
                    checksum_ok: r.get(4),
                    checksum_mismatch: r.get(5),
                    unverified: r.get(6),
                    ..Coverage::default()
                },
            )
        })
        .collect();
    let (clause, params) = filter.clause("time");
    let events = client
        .query(
            &format!(
                "SELECT symbol, event, time, gap_start FROM kraken_feed_events {}
                  ORDER BY time, seq",
                if clause.is_empty() {
                    "WHERE event IN ('resynced', 'checksum_mismatch') AND symbol IS NOT NULL".to_owned()
                } else {
                    format!("{clause} AND event IN ('resynced', 'checksum_mismatch') AND symbol IS NOT NULL")
                }
            ),
            &refs(&params),
        )
        .await
        .map_err(db("reading feed events"))?;
    for e in events {
        let symbol: String = e.get(0);
        let Some(c) = out.get_mut(&symbol) else {
            continue;
        };
        let time: Timestamp = e.get(2);
        match e.get::<_, &str>(1) {
            "resynced" => {
                let start: Option<Timestamp> = e.get(3);
                if let Some(start) = start {
                    // A gap that began before `--since` counts from there.
                    let start = filter.since.map_or(start, |s| start.max(s));
                    c.gaps.push((start, time));
                    c.gap_seconds += time.nanos_since(start).max(0) as f64 / 1e9;
                }
                c.open_gap = None;
            }
            _ => {
                c.open_gap.get_or_insert(time);
            }
        }
    }
    Ok(out.into_values().collect())
}

/// The most recent (or earliest) messages.
pub async fn messages(
    client: &Client,
    filter: &Filter,
    limit: i64,
    ascending: bool,
) -> Result<Vec<MessageRow>, ReadbackError> {
    let (clause, params) = filter.clause("\"timestamp\"");
    let order = if ascending { "ASC" } else { "DESC" };
    let rows = client
        .query(
            &format!(
                "SELECT \"timestamp\", received_at, symbol, channel, message_type, checksum, checksum_ok,
                        coalesce(jsonb_pretty(raw_message), raw_text)
                   FROM kraken_orderbook_messages {clause}
                  ORDER BY \"timestamp\" {order}, seq {order} LIMIT {limit}"
            ),
            &refs(&params),
        )
        .await
        .map_err(db("reading messages"))?;
    Ok(rows
        .iter()
        .map(|r| MessageRow {
            timestamp: r.get(0),
            received_at: r.get(1),
            symbol: r.get(2),
            channel: r.get(3),
            message_type: r.get(4),
            checksum: r.get(5),
            checksum_ok: r.get(6),
            raw_message: r.get(7),
        })
        .collect())
}

/// The most recent (or earliest) levels.
pub async fn entries(
    client: &Client,
    filter: &Filter,
    limit: i64,
    ascending: bool,
) -> Result<Vec<EntryRow>, ReadbackError> {
    let (clause, params) = filter.clause("\"timestamp\"");
    let order = if ascending { "ASC" } else { "DESC" };
    let rows = client
        .query(
            &format!(
                "SELECT \"timestamp\", symbol, side, price::text, quantity::text, message_type, seq
                   FROM kraken_orderbook_entries {clause}
                  ORDER BY \"timestamp\" {order}, seq {order}, ordinal LIMIT {limit}"
            ),
            &refs(&params),
        )
        .await
        .map_err(db("reading entries"))?;
    Ok(rows
        .iter()
        .map(|r| EntryRow {
            timestamp: r.get(0),
            symbol: r.get(1),
            side: r.get(2),
            price: r.get(3),
            quantity: r.get(4),
            message_type: r.get(5),
            seq: r.get(6),
        })
        .collect())
}

/// Every symbol with a book message, by a skip scan of the `(symbol, timestamp)` index (one
/// index probe per symbol, not a scan of the table). Acks and rejections, which name symbols
/// too, do not count.
pub async fn recorded_symbols(client: &Client) -> Result<Vec<String>, ReadbackError> {
    let rows = client
        .query(
            "WITH RECURSIVE s(symbol) AS (
               (SELECT symbol FROM kraken_orderbook_messages
                 WHERE symbol IS NOT NULL AND channel = 'book' AND message_type IN ('snapshot', 'update')
                 ORDER BY symbol LIMIT 1)
               UNION ALL
               SELECT (SELECT m.symbol FROM kraken_orderbook_messages m
                        WHERE m.symbol > s.symbol AND m.channel = 'book'
                          AND m.message_type IN ('snapshot', 'update')
                        ORDER BY m.symbol LIMIT 1)
                 FROM s WHERE s.symbol IS NOT NULL)
             SELECT symbol FROM s WHERE symbol IS NOT NULL LIMIT 1000",
            &[],
        )
        .await
        .map_err(db("listing the recorded symbols"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
