//! `krakenbook book SYMBOL --at TIME`: the book as it was at an instant.

use serde::Serialize;
use tokio_postgres::Client;

use super::cursor::{BookCursor, Start, StartKind};
use super::{Gaps, ReadbackError};
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
        last = Some((step.seq, step.timestamp, step.received_at, step.checksum));
    }
    // With no message after the start (a book state, or a snapshot whose levels are not stored),
    // the start itself is the book: verified only if the cursor holds it synced.
    let (last_seq, last_at, last_received, checksum) = last.unwrap_or((
        start.seq,
        start.timestamp,
        start.received_at,
        cursor.book().checksum(),
    ));
    let checksum_ok = cursor.is_synced();
    if !checksum_ok && gap.is_none() {
        gap = Some(Gap {
            since: last_at,
            reason: "unverified".into(),
        });
    }
    // The feed events: a connection lost, a reconnect after a crash, a mismatch, or a closed gap
    // around the instant (all compared in local receive time, see `Gaps`).
    if gap.is_none() {
        let since = start.received_at.min(last_received);
        let until = at.max(last_received);
        let gaps = Gaps::load(client, &start.collector, &[symbol.to_owned()], since, until).await?;
        if let Some((since, reason)) = gaps.gap_at(symbol, last_received, at) {
            gap = Some(Gap {
                since,
                reason: reason.into(),
            });
        }
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
