//! `krakenbook book SYMBOL --at TIME`: the book as it was at an instant.
//!
//! The coverage model ([`crate::history`]) says whether the book is known at the instant and, if
//! it is, which stream answers (the one verified longest). The book is then rebuilt from that
//! stream alone: its latest snapshot or book state at or before the instant inside the stream's
//! verified span, and its messages up to the instant (never past the span's last record). Inside
//! a gap no book is given: the gap (start, end, cause) and the time of the last verified book
//! before it.

use serde::Serialize;
use tokio_postgres::Client;

use super::ReadbackError;
use super::cursor::{BookCursor, Start, StartKind};
use crate::book::{BookView, Decimal, PriceLevel};
use crate::history::{Cause, Source, StreamId};
use crate::store::StoreError;
use crate::time::Timestamp;

/// The gap an instant falls in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BookGap {
    /// When it began (`None`: before the first record).
    pub start: Option<Timestamp>,
    /// When the book was verified again (`None`: not after it, the record ends there).
    pub end: Option<Timestamp>,
    /// Why: `mismatch`, `connection_lost`, `no_collector`, `journal_damage` or `not_recorded`.
    pub cause: Cause,
    /// Kraken's timestamp of the last verified message before the gap, when there is one.
    pub last_verified_at: Option<Timestamp>,
    /// The stream whose verified book ended where the gap begins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<StreamId>,
}

/// The book at an instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BookAt {
    /// The pair.
    pub symbol: String,
    /// The instant asked for.
    pub at: Timestamp,
    /// Bids, best first (at most the depth asked for); empty in a gap.
    pub bids: Vec<PriceLevel>,
    /// Asks, best first; empty in a gap.
    pub asks: Vec<PriceLevel>,
    /// Kraken's checksum of the last message at or before the instant (`None` in a gap).
    pub checksum: Option<u32>,
    /// Whether the rebuilt book has that checksum (`None` in a gap).
    pub checksum_ok: Option<bool>,
    /// Best ask minus best bid.
    pub spread: Option<Decimal>,
    /// Kraken's timestamp of the last message applied.
    pub last_message_at: Option<Timestamp>,
    /// Its `seq`, on `collector`'s record.
    pub last_seq: Option<i64>,
    /// The collector of the stream the book comes from.
    pub collector: Option<String>,
    /// The stream's connection.
    pub conn_id: Option<i64>,
    /// What the rebuild started from: `snapshot` or `state`.
    pub started_from: Option<String>,
    /// When it started (Kraken's timestamp).
    pub started_at: Option<Timestamp>,
    /// Messages applied after the start.
    pub messages_applied: u64,
    /// Set when the instant falls in a gap: then there is no book.
    pub gap: Option<BookGap>,
}

impl BookAt {
    /// Whether a verified book is given: no gap, and the rebuild reproduced Kraken's checksum.
    pub fn is_verified(&self) -> bool {
        self.gap.is_none() && self.checksum_ok == Some(true)
    }
}

/// Rebuilds `symbol`'s book as it was at `at`, showing `depth` levels a side, from the streams of
/// `collector` (every collector's when `None`).
pub async fn book_at(
    client: &Client,
    symbol: &str,
    at: Timestamp,
    depth: usize,
    collector: Option<&str>,
) -> Result<BookAt, ReadbackError> {
    let coverage = Source::Database(client)
        .coverage_of(symbol, collector)
        .await?;
    let no_start = || ReadbackError::NoStart {
        symbol: symbol.to_owned(),
        at,
    };
    if coverage.streams.is_empty() {
        return Err(no_start());
    }
    let empty = BookAt {
        symbol: symbol.to_owned(),
        at,
        bids: Vec::new(),
        asks: Vec::new(),
        checksum: None,
        checksum_ok: None,
        spread: None,
        last_message_at: None,
        last_seq: None,
        collector: None,
        conn_id: None,
        started_from: None,
        started_at: None,
        messages_applied: 0,
        gap: None,
    };
    let Some((stream, span)) = coverage.choose(at) else {
        let Some(gap) = coverage.gap_at(at) else {
            return Err(no_start());
        };
        let last_verified_at = match (&gap.after, gap.start) {
            (Some(after), Some(start)) => last_verified(client, symbol, after, start).await?,
            _ => None,
        };
        return Ok(BookAt {
            gap: Some(BookGap {
                start: gap.start,
                end: gap.end,
                cause: gap.cause,
                last_verified_at,
                after: gap.after.clone(),
            }),
            ..empty
        });
    };
    let id = &stream.stream;
    let start: Start = BookCursor::find_start_in_span(
        client,
        symbol,
        at,
        &id.collector,
        id.conn_id,
        span.start_seq,
        span.last_seq,
    )
    .await?
    .ok_or_else(no_start)?;
    let mut cursor =
        BookCursor::open_bounded(client, symbol, start.clone(), at, span.last_seq).await?;
    let mut last = None;
    let mut applied = 0u64;
    let mut verified = None;
    while let Some(step) = cursor.next().await? {
        applied += 1;
        verified = step.verified;
        last = Some((step.seq, step.timestamp, step.checksum));
    }
    // With no message after the start (a book state, or a snapshot whose levels are not stored),
    // the start itself is the book: verified only if the cursor holds it synced.
    let (last_seq, last_at, checksum) =
        last.unwrap_or((start.seq, start.timestamp, cursor.book().checksum()));
    let checksum_ok = cursor.is_synced() && verified != Some(false);
    let book = cursor.book();
    let BookView { bids, asks } = book.view(depth);
    Ok(BookAt {
        bids,
        asks,
        checksum: Some(checksum),
        checksum_ok: Some(checksum_ok),
        spread: book.spread(),
        last_message_at: Some(last_at),
        last_seq: Some(last_seq),
        collector: Some(start.collector.clone()),
        conn_id: Some(start.conn_id),
        started_from: Some(
            match start.kind {
                StartKind::Snapshot => "snapshot",
                StartKind::State => "state",
            }
            .to_owned(),
        ),
        started_at: Some(start.timestamp),
        messages_applied: applied,
        ..empty
    })
}

/// Kraken's timestamp of the last verified book message of `symbol` on `stream` at or before
/// `before`.
async fn last_verified(
    client: &Client,
    symbol: &str,
    stream: &StreamId,
    before: Timestamp,
) -> Result<Option<Timestamp>, ReadbackError> {
    let row = client
        .query_opt(
            "SELECT \"timestamp\" FROM krakenbook_copies
              WHERE symbol = $1 AND \"timestamp\" <= $2
                AND collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $3)
                AND conn_id = $4 AND checksum_ok
              ORDER BY \"timestamp\" DESC LIMIT 1",
            &[&symbol, &before, &stream.collector, &stream.conn_id],
        )
        .await
        .map_err(StoreError::db("finding the last verified book"))?;
    Ok(row.map(|r| r.get(0)))
}
