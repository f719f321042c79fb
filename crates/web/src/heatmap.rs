//! The heatmap: a symbol's book at evenly spaced instants over a range (one *column* each),
//! built from the verified record only.
//!
//! Each column is the book at its instant `t` (every message at or before `t` applied), from the
//! stream the coverage model ([`crate::history`]) chooses at `t`, exactly as `book --at t` would
//! answer. A column whose instant lies in a gap, or whose rebuild does not reproduce Kraken's
//! checksum, is blank and says why; nothing is interpolated.
//!
//! How a day stays cheap: a column never replays the record from far back. It starts from the
//! latest snapshot or journaled book state at or before `t` on the chosen stream's span (the
//! `(symbol, timestamp)` indexes of `krakenbook_book` and `kraken_book_states`; one
//! query lists a span's starts over the whole range, so columns cost no lookup of their own), or,
//! when the previous column's book on the same span is already past that start, goes on from
//! that book with only the messages between the two instants. Over a range each stored message
//! is read at most once, and a sparse range (a month in 400 columns) reads only the messages
//! between each column's nearest start and its instant. No summary is precomputed: nothing is
//! stored beyond what the collector already writes.

use std::pin::Pin;
use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;
use tokio_postgres::{Client, RowStream};

use crate::book::{Decimal, OrderBook};
use crate::history::{Source, StreamId};
use crate::readback::{BookCursor, ReadbackError, Start, StartKind};
use crate::store::StoreError;
use crate::time::Timestamp;

/// What to draw.
#[derive(Clone, Debug)]
pub struct HeatmapRequest {
    /// The pair.
    pub symbol: String,
    /// Only this collector's streams (every collector's when `None`).
    pub collector: Option<String>,
    /// The first column's instant.
    pub from: Timestamp,
    /// The end of the range (the last column lies one step before it).
    pub to: Timestamp,
    /// How many columns.
    pub columns: usize,
    /// Levels a side in each column.
    pub depth: usize,
}

/// One column: the book at `t`, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Column {
    /// The instant.
    pub t: Timestamp,
    /// `verified`, a gap's cause (`mismatch`, `connection_lost`, `no_collector`,
    /// `journal_damage`, `not_recorded`), or `unverified` (the rebuild did not reproduce
    /// Kraken's checksum).
    pub status: String,
    /// Bids, best first, `[price, qty]` as exact decimal strings (empty unless verified).
    pub bids: Vec<(Decimal, Decimal)>,
    /// Asks, best first.
    pub asks: Vec<(Decimal, Decimal)>,
}

/// What building it took.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeatmapStats {
    /// Columns with a verified book.
    pub verified: usize,
    /// Blank columns.
    pub blank: usize,
    /// Books rebuilt from a snapshot or state.
    pub books_started: u64,
    /// Stored messages applied.
    pub messages_applied: u64,
    /// Milliseconds the build took.
    pub millis: u64,
}

/// The heatmap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heatmap {
    /// The pair.
    pub symbol: String,
    /// The range's start.
    pub from: Timestamp,
    /// The range's end.
    pub to: Timestamp,
    /// Nanoseconds between columns.
    pub step_ns: i64,
    /// Levels a side.
    pub depth: usize,
    /// The columns, in time order.
    pub columns: Vec<Column>,
    /// What it took.
    pub stats: HeatmapStats,
}

/// The instants of `columns` columns evenly spaced over `[from, to)`.
pub fn column_instants(from: Timestamp, to: Timestamp, columns: usize) -> (i64, Vec<Timestamp>) {
    let n = columns.max(1) as i64;
    let step = (to.nanos_since(from) / n).max(1);
    (step, (0..n).map(|i| from.add_nanos(i * step)).collect())
}

/// A book being carried from column to column along one span of one stream.
struct Carried {
    stream: StreamId,
    span_start_seq: i64,
    book: OrderBook,
    /// The last message applied (or the start's seq).
    seq: i64,
    /// Its Kraken timestamp.
    ts: Timestamp,
    synced: bool,
}

/// A stream's messages (every copy its connection $7 received) in ($5, $6] between two instants,
/// one row a message (the columns `readback::stored_message` reads).
const MESSAGES_AFTER: &str = "SELECT seq, kind = 's', checksum, n_bids, levels, raw::text, \
    \"timestamp\", received_at \
    FROM krakenbook_copies \
    WHERE symbol = $1 AND collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $2) \
      AND \"timestamp\" >= $3 AND \"timestamp\" <= $4 AND seq > $5 AND seq <= $6 AND conn_id = $7 \
    ORDER BY seq";

/// Builds the heatmap of `req` from the database.
pub async fn heatmap(client: &Client, req: &HeatmapRequest) -> Result<Heatmap, ReadbackError> {
    let started = Instant::now();
    let coverage = Source::Database(client)
        .coverage_of(&req.symbol, req.collector.as_deref())
        .await?;
    let (step_ns, instants) = column_instants(req.from, req.to, req.columns);
    let mut stats = HeatmapStats::default();
    let mut columns = Vec::with_capacity(instants.len());
    let mut carried: Option<Carried> = None;
    let mut starts: Option<(StreamId, i64, Vec<Start>)> = None;
    for t in instants {
        let blank = |status: &str| Column {
            t,
            status: status.to_owned(),
            bids: Vec::new(),
            asks: Vec::new(),
        };
        let Some((stream, span)) = coverage.choose(t) else {
            let cause = coverage
                .gap_at(t)
                .map_or("not_recorded", |g| g.cause.as_str());
            columns.push(blank(cause));
            continue;
        };
        let id = &stream.stream;
        // Every start of this span over the rest of the range, in one query per span.
        if starts
            .as_ref()
            .is_none_or(|(sid, seq, _)| sid != id || *seq != span.start_seq)
        {
            let list = span_starts(client, req, id, span.start_seq, span.last_seq, t).await?;
            starts = Some((id.clone(), span.start_seq, list));
        }
        let list = starts.as_ref().map_or(&[][..], |(_, _, l)| l.as_slice());
        let Some(start) = list[..list.partition_point(|s| s.timestamp <= t)]
            .last()
            .cloned()
        else {
            columns.push(blank("not_recorded"));
            continue;
        };
        let reuse = carried.as_ref().is_some_and(|c| {
            c.stream == *id && c.span_start_seq == span.start_seq && c.seq >= start.seq && c.ts <= t
        });
        let c = match (reuse, carried.take()) {
            (true, Some(mut c)) => {
                stats.messages_applied +=
                    advance(client, &req.symbol, &mut c, t, span.last_seq).await?;
                c
            }
            _ => {
                stats.books_started += 1;
                let mut cursor =
                    BookCursor::open_bounded(client, &req.symbol, start.clone(), t, span.last_seq)
                        .await?;
                let (mut seq, mut ts, mut verified) = (start.seq, start.timestamp, None);
                while let Some(step) = cursor.next().await? {
                    stats.messages_applied += 1;
                    (seq, ts, verified) = (step.seq, step.timestamp, step.verified);
                }
                Carried {
                    stream: id.clone(),
                    span_start_seq: span.start_seq,
                    synced: cursor.is_synced() && verified != Some(false),
                    book: cursor.book().clone(),
                    seq,
                    ts,
                }
            }
        };
        if c.synced {
            let view = c.book.view(req.depth);
            columns.push(Column {
                t,
                status: "verified".to_owned(),
                bids: view.bids.into_iter().map(|l| (l.price, l.qty)).collect(),
                asks: view.asks.into_iter().map(|l| (l.price, l.qty)).collect(),
            });
        } else {
            columns.push(blank("unverified"));
        }
        carried = Some(c);
    }
    stats.verified = columns.iter().filter(|c| c.status == "verified").count();
    stats.blank = columns.len() - stats.verified;
    stats.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(Heatmap {
        symbol: req.symbol.clone(),
        from: req.from,
        to: req.to,
        step_ns,
        depth: req.depth,
        columns,
        stats,
    })
}

/// The starts (snapshots and book states) of one span of `stream` that a column from `first` to
/// the range's end may begin from: the latest at or before `first`, then every later one up to
/// the range's end, ordered by (timestamp, seq).
async fn span_starts(
    client: &Client,
    req: &HeatmapRequest,
    stream: &StreamId,
    first_seq: i64,
    last_seq: i64,
    first: Timestamp,
) -> Result<Vec<Start>, ReadbackError> {
    let mut list: Vec<Start> = BookCursor::find_start_in_span(
        client,
        &req.symbol,
        first,
        &stream.collector,
        stream.conn_id,
        first_seq,
        last_seq,
    )
    .await?
    .into_iter()
    .collect();
    let rows = client
        .query(
            "SELECT kind, seq, ts, received_at FROM (
               SELECT 'snapshot' AS kind, seq, \"timestamp\" AS ts, received_at
                 FROM krakenbook_copies
                WHERE symbol = $1 AND kind = 's'
                  AND \"timestamp\" > $2 AND \"timestamp\" <= $3
                  AND collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $4)
                  AND conn_id = $5 AND seq >= $6 AND seq <= $7
               UNION ALL
               SELECT 'state', seq, \"timestamp\", received_at FROM kraken_book_states
                WHERE symbol = $1 AND \"timestamp\" > $2 AND \"timestamp\" <= $3
                  AND collector = $4 AND conn_id = $5 AND seq >= $6 AND seq <= $7
             ) s ORDER BY ts, seq",
            &[
                &req.symbol,
                &first,
                &req.to,
                &stream.collector,
                &stream.conn_id,
                &first_seq,
                &last_seq,
            ],
        )
        .await
        .map_err(StoreError::db("listing the starts of a span"))?;
    list.extend(rows.iter().map(|r| Start {
        kind: if r.get::<_, &str>(0) == "snapshot" {
            StartKind::Snapshot
        } else {
            StartKind::State
        },
        collector: stream.collector.clone(),
        conn_id: stream.conn_id,
        seq: r.get(1),
        timestamp: r.get(2),
        received_at: r.get(3),
    }));
    Ok(list)
}

/// Applies to `c` the stream's messages after `c.seq` up to `t` (and never past `last_seq`),
/// verifying each checksum as the cursor does; returns how many were applied.
async fn advance(
    client: &Client,
    symbol: &str,
    c: &mut Carried,
    t: Timestamp,
    last_seq: i64,
) -> Result<u64, ReadbackError> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &symbol,
        &c.stream.collector,
        &c.ts,
        &t,
        &c.seq,
        &last_seq,
        &c.stream.conn_id,
    ];
    let mut rows: Pin<Box<RowStream>> = Box::pin(
        client
            .query_raw(MESSAGES_AFTER, params)
            .await
            .map_err(StoreError::db("reading book levels for the heatmap"))?,
    );
    let mut applied = 0u64;
    while let Some(r) = rows.next().await {
        let r = r.map_err(StoreError::db("reading book levels for the heatmap"))?;
        let mut m = crate::readback::stored_message(&r, symbol)?;
        apply(c, m.snapshot, m.checksum, &mut m.bids, &mut m.asks);
        c.seq = m.seq;
        applied += 1;
    }
    c.ts = t;
    Ok(applied)
}

/// One message's levels applied to the carried book, its checksum compared (the rule of
/// `readback::BookCursor::next`).
fn apply(
    c: &mut Carried,
    snapshot: bool,
    checksum: u32,
    bids: &mut Vec<(Decimal, Decimal)>,
    asks: &mut Vec<(Decimal, Decimal)>,
) {
    let result = if snapshot {
        c.synced = true;
        c.book.apply_snapshot(bids.drain(..), asks.drain(..))
    } else if c.synced {
        c.book.apply_update(bids.drain(..), asks.drain(..))
    } else {
        bids.clear();
        asks.clear();
        Ok(())
    };
    if result.is_err() {
        c.synced = false;
        c.book.clear();
    } else if c.synced {
        c.synced = c.book.current_checksum() == checksum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_evenly_spaced_from_the_range_start() {
        let from = Timestamp::parse("2026-11-24T10:00:00Z").unwrap();
        let to = Timestamp::parse("2026-11-24T11:00:00Z").unwrap();
        let (step, at) = column_instants(from, to, 4);
        assert_eq!(step, 900 * 1_000_000_000);
        assert_eq!(at.len(), 4);
        assert_eq!(at[0], from);
        assert_eq!(at[3].to_string(), "2026-11-24T10:45:00.000000Z");
        // More columns than nanoseconds: one nanosecond apart, never zero.
        let (step, at) = column_instants(from, from.add_nanos(2), 5);
        assert_eq!((step, at.len()), (1, 5));
    }
}
