//! `krakenbook book SYMBOL --at TIME`: the book as it was at an instant.

use serde::Serialize;
use tokio_postgres::Client;

use super::cursor::{BookCursor, Start, StartKind};
use super::{ReadbackError, db};
use crate::book::{BookView, Decimal};
use crate::time::Timestamp;

/// A time range in which the book was not known exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// When it began.
    pub since: Timestamp,
    /// Why: `checksum_mismatch`, `disconnected`, or `unverified` (no verified message yet).
    pub reason: String,
}

/// The book at an instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BookAt {
    /// The pair.
    pub symbol: String,
    /// The instant asked for.
    pub at: Timestamp,
    /// Bids, best first (at most the depth asked for).
    pub bids: Vec<Level>,
    /// Asks, best first.
    pub asks: Vec<Level>,
    /// Kraken's checksum of the last message at or before the instant.
    pub checksum: u32,
    /// Whether the rebuilt book has that checksum.
    pub checksum_ok: bool,
    /// Best ask minus best bid.
    pub spread: Option<Decimal>,
    /// Kraken's timestamp of the last message applied.
    pub last_message_at: Timestamp,
    /// Its `seq`, on `collector`'s record.
    pub last_seq: i64,
    /// The collector whose record this is.
    pub collector: String,
    /// What the rebuild started from: `snapshot` or `state`, and when.
    pub started_from: String,
    /// When it started.
    pub started_at: Timestamp,
    /// Messages applied after the start.
    pub messages_applied: u64,
    /// Set when the instant falls in a gap: the book shown is the last one before it.
    pub gap: Option<Gap>,
}

/// One level in the JSON output: decimal strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Level {
    /// Price.
    pub price: Decimal,
    /// Quantity.
    pub qty: Decimal,
}

/// Rebuilds `symbol`'s book as it was at `at`, showing `depth` levels a side.
pub async fn book_at(
    client: &Client,
    symbol: &str,
    at: Timestamp,
    depth: usize,
    collector: Option<&str>,
) -> Result<BookAt, ReadbackError> {
    let start: Start = BookCursor::find_start(client, symbol, at, collector)
        .await?
        .ok_or_else(|| ReadbackError::NoStart {
            symbol: symbol.to_owned(),
            at,
        })?;
    let mut cursor = BookCursor::open(client, symbol, start.clone(), at).await?;
    let mut last = None;
    let mut applied = 0u64;
    let mut gap: Option<Gap> = None;
    while let Some(step) = cursor.next().await? {
        applied += 1;
        match step.verified {
            Some(true) => gap = None,
            Some(false) => {
                gap.get_or_insert(Gap {
                    since: step.timestamp,
                    reason: "checksum_mismatch".into(),
                });
            }
            None => {}
        }
        last = Some((
            step.seq,
            step.timestamp,
            step.received_at,
            step.checksum,
            step.verified == Some(true),
        ));
    }
    let (last_seq, last_at, last_received, checksum, checksum_ok) = match last {
        Some(l) => l,
        // A state start with no message after it: the state itself, verified when journaled.
        None => (
            start.seq,
            start.timestamp,
            start.timestamp,
            cursor.book().checksum(),
            true,
        ),
    };
    if !checksum_ok && gap.is_none() {
        gap = Some(Gap {
            since: last_at,
            reason: "unverified".into(),
        });
    }
    // The last message's connection lost (or a mismatch the collector saw) after that message
    // was received and before the instant: the book was not being kept then. Both sides of the
    // comparison are local receive times (Kraken's timestamp of a quiet pair's snapshot can be
    // far older than its receipt).
    let last_conn: Option<i64> = client
        .query_opt(
            "SELECT conn_id FROM kraken_orderbook_messages WHERE collector = $1 AND seq = $2",
            &[&start.collector, &last_seq],
        )
        .await
        .map_err(db("reading the last message's connection"))?
        .map_or(Some(start.conn_id), |r| r.get(0));
    if gap.is_none()
        && let Some(row) = client
            .query_opt(
                "SELECT time, event FROM kraken_feed_events
                  WHERE collector = $1 AND time > $2 AND time <= $3
                    AND ((event = 'disconnected' AND conn_id = $5)
                         OR (event = 'checksum_mismatch' AND symbol = $4))
                  ORDER BY time LIMIT 1",
                &[&start.collector, &last_received, &at, &symbol, &last_conn],
            )
            .await
            .map_err(db("reading feed events"))?
    {
        gap = Some(Gap {
            since: row.get(0),
            reason: row.get(1),
        });
    }
    let book = cursor.book();
    let BookView { bids, asks } = book.view(depth);
    let level = |l: crate::book::PriceLevel| Level {
        price: l.price,
        qty: l.qty,
    };
    Ok(BookAt {
        symbol: symbol.to_owned(),
        at,
        bids: bids.into_iter().map(level).collect(),
        asks: asks.into_iter().map(level).collect(),
        checksum,
        checksum_ok,
        spread: book.spread(),
        last_message_at: last_at,
        last_seq,
        collector: start.collector.clone(),
        started_from: match start.kind {
            StartKind::Snapshot => "snapshot".into(),
            StartKind::State => "state".into(),
        },
        started_at: start.timestamp,
        messages_applied: applied,
        gap,
    })
}
