//! `krakenbook query`: what is stored, at a glance; the original `query_data.py` and more.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::ReadbackError;
use crate::history::{self, Gap, Source, Span};
use crate::store::StoreError;
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
    /// Only this collector's rows and streams.
    pub collector: Option<String>,
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
        if let Some(c) = &self.collector {
            params.push(Box::new(c.clone()));
            conds.push(format!("collector = ${}", params.len()));
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

/// One symbol's coverage: what was collected, how well it verified, and its gaps, from the
/// coverage model ([`crate::history`]): the union of every stream's verified spans, and each
/// stream's own.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Coverage {
    /// The pair.
    pub symbol: String,
    /// The first book message (Kraken's timestamp).
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
    /// The first instant the book was verified on some stream (in the range asked for).
    pub verified_from: Option<Timestamp>,
    /// The first instant after the last verified one (in the range asked for).
    pub verified_until: Option<Timestamp>,
    /// The union's gaps inside the record (from the first verified book to the last frame),
    /// cut to the range asked for; a range reaching before or after the record also gets the
    /// `not_recorded` gaps there.
    pub gaps: Vec<Gap>,
    /// Seconds in those gaps.
    pub gap_seconds: f64,
    /// Each stream: its verified spans and its own gaps.
    pub streams: Vec<StreamSummary>,
}

/// One stream's coverage, in [`Coverage::streams`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamSummary {
    /// The collector.
    pub collector: String,
    /// Its connection.
    pub conn_id: i64,
    /// When the connection's first frame was received.
    pub first_frame: Timestamp,
    /// When its last frame was received.
    pub last_frame: Timestamp,
    /// Its verified spans.
    pub spans: Vec<Span>,
    /// Its own gaps (between its spans, and after the last one when a mismatch or damage ended
    /// it).
    pub gaps: Vec<Gap>,
}

impl Coverage {
    /// Fills the coverage fields from the model's answer for the symbol, cut to `[since, until)`.
    fn fill(
        &mut self,
        model: &history::Coverage,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) {
        let inside = |start: Timestamp, end: Timestamp| {
            since.is_none_or(|s| end > s) && until.is_none_or(|u| start < u)
        };
        let clip_start = |t: Timestamp| since.map_or(t, |s| t.max(s));
        let clip_end = |t: Timestamp| until.map_or(t, |u| t.min(u));
        let spans: Vec<&history::Interval> = model
            .spans
            .iter()
            .filter(|i| inside(i.start, i.end))
            .collect();
        self.verified_from = spans.first().map(|i| clip_start(i.start));
        self.verified_until = spans.last().map(|i| clip_end(i.end));
        // Cut to the range; a gap still unbounded (before the first record, after the last, with
        // no range on that side) is left out: `verified_from` and `verified_until` say it.
        self.gaps = model
            .gaps
            .iter()
            .map(|g| g.clipped(since, until))
            .filter(|g| matches!((g.start, g.end), (Some(s), Some(e)) if s < e))
            .collect();
        self.gap_seconds = self.gaps.iter().filter_map(history::Gap::seconds).sum();
        let (lo, hi) = (
            since.unwrap_or(Timestamp::from_unix_nanos(i64::MIN)),
            until.unwrap_or(Timestamp::from_unix_nanos(i64::MAX)),
        );
        self.streams = model
            .streams
            .iter()
            .filter(|s| inside(s.first_received, s.last_received.add_nanos(1)))
            .map(|s| StreamSummary {
                collector: s.stream.collector.clone(),
                conn_id: s.stream.conn_id,
                first_frame: s.first_received,
                last_frame: s.last_received,
                spans: s
                    .spans
                    .iter()
                    .filter(|x| inside(x.start, x.end))
                    .cloned()
                    .collect(),
                gaps: s
                    .gaps
                    .iter()
                    .filter(|g| g.overlaps(lo, hi))
                    .map(|g| g.clipped(since, until))
                    .collect(),
            })
            .collect();
    }
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
        .map_err(StoreError::db("counting messages"))?;
    let e = client
        .query_one(
            &format!("SELECT count(*) FROM kraken_orderbook_entries {clause}"),
            &refs(&params),
        )
        .await
        .map_err(StoreError::db("counting entries"))?;
    Ok(Summary {
        total_messages: m.get(0),
        unique_symbols: m.get(1),
        first_message: m.get(2),
        last_message: m.get(3),
        total_entries: e.get(0),
    })
}

/// Per-symbol coverage: message counts from the messages table, coverage and gaps from the
/// coverage model.
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
        .map_err(StoreError::db("measuring coverage"))?;
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
    // A symbol asked for by name is reported even when no message lies in the range (a range
    // inside a gap), if it was ever recorded.
    if let Some(symbol) = &filter.symbol
        && !out.contains_key(symbol)
    {
        out.insert(
            symbol.clone(),
            Coverage {
                symbol: symbol.clone(),
                ..Coverage::default()
            },
        );
    }
    let symbols: Vec<String> = out.keys().cloned().collect();
    let models = Source::Database(client)
        .coverage(&symbols, filter.collector.as_deref())
        .await?;
    let mut recorded = std::collections::BTreeSet::new();
    for model in &models {
        if let Some(c) = out.get_mut(&model.symbol) {
            if model.streams.is_empty() {
                continue;
            }
            recorded.insert(model.symbol.clone());
            c.fill(model, filter.since, filter.until);
        }
    }
    out.retain(|symbol, c| c.book_messages > 0 || recorded.contains(symbol));
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
        .map_err(StoreError::db("reading messages"))?;
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
        .map_err(StoreError::db("reading entries"))?;
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
               (SELECT symbol FROM krakenbook_book ORDER BY symbol LIMIT 1)
               UNION ALL
               SELECT (SELECT m.symbol FROM krakenbook_book m
                        WHERE m.symbol > s.symbol ORDER BY m.symbol LIMIT 1)
                 FROM s WHERE s.symbol IS NOT NULL)
             SELECT symbol FROM s WHERE symbol IS NOT NULL LIMIT 1000",
            &[],
        )
        .await
        .map_err(StoreError::db("listing the recorded symbols"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
