//! The incremental export's reading: each segment's opening book rebuilt and verified by the
//! cursor from the stream's own records, then the stored rows read in received order (`seq`,
//! `ordinal`) and driven through the [`Follower`] into the sink, counted in the report.
//!
//! What must hold: every stored row in range is read once, in order, and handed to the follower,
//! which alone decides what is written; a segment whose opening book the cursor does not verify
//! is left out and counted (`unverified_starts`); the first error of the sink stops the export.
//!
//! One collector's record is read in `seq` order. Several collectors' records (merged: the
//! selection has no `--collector` and several recorded the range) have no common `seq`: they are
//! read in receive order (ties by collector, then `seq`), the order a consumer would have seen
//! them in had one process received every connection, and each segment's rows are told by its
//! collector as well as its `seq` range.

use futures_util::StreamExt;
use tokio_postgres::Client;

use super::emit::{Follower, Row, RowKind};
use super::timeline::{Opening, Opens, Pos, Segment, mark_gaps, single, timeline};
use crate::book::Side;
use crate::export::source::Selection;
use crate::export::table::{Cell, Scales};
use crate::export::{EXCHANGE, ExportError, ExportReport, ExportRequest, Sink, Ticker};
use crate::readback::{BookCursor, StartKind};
use crate::store::DbTarget;
use crate::store::StoreError;
use crate::store::book_rows::DUP_SEQ_REACH;
use crate::time::Timestamp;

/// Every received copy of the selected book messages, one row a copy, in `seq` order (the
/// columns [`crate::readback::stored_message`] reads, then symbol, collector and connection).
const MESSAGES: &str = "SELECT c.seq, c.kind = 's', c.checksum, c.n_bids, c.levels, c.raw::text, \
    c.\"timestamp\", c.received_at, c.symbol, k.name, c.conn_id \
    FROM krakenbook_copies c JOIN krakenbook_collectors k ON k.id = c.collector_id \
    WHERE c.symbol = ANY($1) AND k.name = ANY($2) AND c.\"timestamp\" >= $3 AND c.\"timestamp\" < $4 \
    ORDER BY c.seq";

/// [`MESSAGES`] of several collectors, in receive order.
const MESSAGES_MERGED: &str = "SELECT c.seq, c.kind = 's', c.checksum, c.n_bids, c.levels, \
    c.raw::text, c.\"timestamp\", c.received_at, c.symbol, k.name, c.conn_id \
    FROM krakenbook_copies c JOIN krakenbook_collectors k ON k.id = c.collector_id \
    WHERE c.symbol = ANY($1) AND k.name = ANY($2) AND c.\"timestamp\" >= $3 AND c.\"timestamp\" < $4 \
    ORDER BY c.received_at, k.name, c.seq";

/// The receive time of a stream's last stored message at or before a `seq`.
const LAST_RECEIVED: &str = "SELECT received_at FROM krakenbook_copies \
    WHERE collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $1) AND conn_id = $2 \
      AND symbol = $3 AND row_seq >= $4::bigint - $6::bigint AND row_seq <= $5::bigint + $6::bigint \
      AND seq >= $4 AND seq <= $5 \
    ORDER BY seq DESC LIMIT 1";

/// One symbol's segments, each with how it starts.
#[derive(Debug)]
struct Followed {
    symbol: String,
    segments: Vec<(Segment, Opens)>,
    /// Segments left out: the coverage model verifies them, the cursor could not (counted).
    unverified: u64,
}

/// An incremental export, ready to write.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    selection: &'a Selection,
    stored_only: bool,
    followed: Vec<Followed>,
}

/// Walks each symbol's timeline and rebuilds the book where each segment starts (unless
/// `--stored-only`).
pub(crate) async fn plan<'a>(
    client: &Client,
    selection: &'a Selection,
    request: &ExportRequest,
) -> Result<Plan<'a>, ExportError> {
    let mut plan = Plan {
        selection,
        stored_only: request.stored_only,
        followed: Vec::new(),
    };
    if request.stored_only {
        return Ok(plan);
    }
    let collectors = selection.collectors();
    for symbol in &selection.symbols {
        let coverage = crate::export::source::coverage_of(
            client,
            selection
                .merged
                .is_empty()
                .then_some(selection.collector.as_str()),
            symbol,
        )
        .await?;
        let mut followed = Followed {
            symbol: symbol.clone(),
            segments: Vec::new(),
            unverified: 0,
        };
        let mut kept = Vec::new();
        for mut segment in timeline(&coverage, selection.from, selection.to) {
            // A stream of a collector not selected (one that recorded nothing in range).
            let Some(rank) = collectors
                .iter()
                .position(|c| *c == segment.stream.collector)
            else {
                followed.unverified += 1;
                continue;
            };
            if !selection.merged.is_empty() {
                segment.rank = rank;
                segment.after = last_position(client, symbol, &segment, rank).await?;
            }
            match opening(client, symbol, &segment).await? {
                Some(start) => kept.push((segment, start)),
                None => followed.unverified += 1,
            }
        }
        let mut segments: Vec<Segment> = kept.iter().map(|(s, _)| s.clone()).collect();
        mark_gaps(&mut segments, selection.to);
        followed.segments = segments
            .into_iter()
            .zip(kept)
            .map(|(s, (_, start))| (s, start))
            .collect();
        plan.followed.push(followed);
    }
    Ok(plan)
}

/// Where the last stored message of `segment`'s span is read when collectors are merged.
async fn last_position(
    client: &Client,
    symbol: &str,
    segment: &Segment,
    rank: usize,
) -> Result<Pos, ExportError> {
    let id = &segment.stream;
    let row = client
        .query_opt(
            LAST_RECEIVED,
            &[
                &id.collector,
                &id.conn_id,
                &symbol,
                &segment.start_seq,
                &segment.last_seq,
                &DUP_SEQ_REACH,
            ],
        )
        .await
        .map_err(StoreError::db("finding a span's last message"))?;
    // No stored message in the span (a book state alone): nothing of it is read.
    let received = row.map_or(segment.start, |r| r.get::<_, Timestamp>(0));
    Ok((received, rank, segment.last_seq))
}

/// How `segment` of `symbol` starts: the stream's book just before the segment's instant,
/// rebuilt from the stream's own records and verified; or its stored snapshot stamped at that
/// instant. `None` when neither can be had (the cursor does not verify what the coverage model
/// does: the segment is left out).
async fn opening(
    client: &Client,
    symbol: &str,
    segment: &Segment,
) -> Result<Option<Opens>, ExportError> {
    // Every message before the instant (timestamps are whole microseconds).
    let before = segment.start.add_nanos(-1);
    let find = |at: Timestamp| crate::source::segment_start(client, symbol, segment, at);
    let start = match find(before).await? {
        Some(start) => start,
        None => match find(segment.start).await? {
            // A book state journaled at the instant itself: it is not a stored row.
            Some(start) if start.kind == StartKind::State => start,
            Some(_) => return Ok(Some(Opens::Stored)),
            None => return Ok(None),
        },
    };
    let mut received = start.received_at;
    let mut cursor =
        BookCursor::open_bounded(client, symbol, start, before, segment.last_seq).await?;
    let mut last = None;
    while let Some(step) = cursor.next().await? {
        last = Some(step.verified);
        received = step.received_at;
    }
    let verified = match last {
        Some(v) => v == Some(true),
        // A book state with nothing after it: verified when it was journaled.
        None => cursor.is_synced(),
    };
    if !verified {
        return Ok(None);
    }
    let depth = cursor.subscribed_depth();
    let book = cursor.book();
    let keep = depth.unwrap_or(usize::MAX);
    let precision = book.precision();
    Ok(Some(Opens::Book(Opening {
        bids: book.bids().take(keep).collect(),
        asks: book.asks().take(keep).collect(),
        depth,
        scales: (precision.price, precision.qty),
        received,
    })))
}

impl Plan<'_> {
    /// Whether a copy received on `conn_id` of `collector` at `seq` belongs to another stream:
    /// a segment of the symbol follows another connection of that collector over that seq
    /// (a collector with redundant connections interleaves its streams' seqs), and none follows
    /// this connection there.
    fn another_streams_copy(&self, symbol: &str, collector: &str, conn_id: i64, seq: i64) -> bool {
        let Some(f) = self.followed.iter().find(|f| f.symbol == symbol) else {
            return false;
        };
        let over = |s: &Segment| {
            s.stream.collector == collector && s.start_seq <= seq && seq <= s.last_seq
        };
        let mut others = false;
        for (s, _) in f.segments.iter().filter(|(s, _)| over(s)) {
            if s.stream.conn_id == conn_id {
                return false;
            }
            others = true;
        }
        others
    }

    /// The DECIMAL scales for Parquet: every stored value in range, and the books written.
    pub(crate) async fn scales(&self, client: &Client) -> Result<Scales, ExportError> {
        let floor = self
            .followed
            .iter()
            .flat_map(|f| &f.segments)
            .filter_map(|(_, start)| match start {
                Opens::Book(o) => Some(o.scales),
                Opens::Stored => None,
            })
            .fold((0, 0), |(p, q), s| (p.max(s.0), q.max(s.1)));
        let (p, q) =
            crate::export::stored_scales(client, self.selection, self.selection.from, floor)
                .await?;
        Ok(Scales {
            by_column: vec![0, 0, 0, 0, 0, 0, p, q],
        })
    }

    /// Writes the rows.
    pub(crate) async fn write(
        &self,
        target: &DbTarget,
        sink: &mut Sink,
        ticker: &mut Ticker<'_>,
        report: &mut ExportReport,
    ) -> Result<(), ExportError> {
        let sel = self.selection;
        let mut follower = Follower::new(
            self.stored_only,
            self.followed
                .iter()
                .map(|f| (f.symbol.clone(), f.segments.clone())),
        );
        let mut out = Output {
            sink,
            report: &mut *report,
            error: None,
        };

        // The levels stream on a connection of their own; depth lookups use another.
        let stream_client = target.connect("krakenbook export").await?;
        let lookups = target.connect("krakenbook export").await?;
        let collectors = sel.collectors();
        let merged = !sel.merged.is_empty();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&sel.symbols, &collectors, &sel.from, &sel.to];
        let rows = stream_client
            .query_raw(if merged { MESSAGES_MERGED } else { MESSAGES }, params)
            .await
            .map_err(StoreError::db("reading the stored levels"))?;
        futures_util::pin_mut!(rows);
        // The message being read (its position and symbol), and whether its rows are written.
        let mut current: Option<(Pos, String, bool)> = None;
        while let Some(r) = rows.next().await {
            let r = r.map_err(StoreError::db("reading the stored levels"))?;
            let symbol: &str = r.get(8);
            let collector: &str = r.get(9);
            let conn_id: i64 = r.get(10);
            let seq: i64 = r.get(0);
            if self.another_streams_copy(symbol, collector, conn_id, seq) {
                continue;
            }
            let m = crate::readback::stored_message(&r, symbol)?;
            let (ts, received, snapshot) = (m.timestamp, m.received_at, m.snapshot);
            let pos = if merged {
                let rank = collectors.iter().position(|c| c == collector).unwrap_or(0);
                (received, rank, seq)
            } else {
                single(seq)
            };

            let same = current
                .as_ref()
                .is_some_and(|(p, sym, _)| *p == pos && sym == symbol);
            if !same {
                if let Some((_, _, true)) = current {
                    follower.end_message(&mut |r| out.row(r));
                }
                out.check()?;
                ticker.rows(out.report.rows, ts);
                out.report.messages += 1;
                follower.advance(pos, ts, &mut |r| out.row(r));
                let written = follower.enter(symbol, pos, ts, &mut |r| out.row(r));
                if written {
                    let depth = if snapshot && !self.stored_only {
                        let d =
                            crate::readback::subscribed_depth_of(&lookups, collector, seq).await?;
                        if d.is_none() {
                            out.report.unknown_depth += 1;
                        }
                        d
                    } else {
                        None
                    };
                    follower
                        .begin_message(symbol, snapshot, depth, ts, received, &mut |r| out.row(r));
                } else {
                    out.report.messages_left_out += 1;
                }
                current = Some((pos, symbol.to_owned(), written));
            }
            if let Some((_, _, true)) = current {
                for (side, levels) in [(Side::Bid, &m.bids), (Side::Ask, &m.asks)] {
                    for &(price, qty) in levels {
                        follower.level(side, price, qty, &mut |r| out.row(r));
                    }
                }
            }
        }
        if let Some((_, _, true)) = current {
            follower.end_message(&mut |r| out.row(r));
        }
        follower.finish(&mut |r| out.row(r));
        out.check()?;
        for f in &self.followed {
            report
                .covered_from
                .push((f.symbol.clone(), f.segments.first().map(|(s, _)| s.start)));
            report.unverified_starts += f.unverified;
        }
        report.coverage_starts += follower.coverage_starts;
        report.gaps_cleared += follower.gaps_cleared;
        report.stream_switches += follower.switches;
        Ok(())
    }
}

/// Writes rows to the sink and counts them (the first error is kept and stops the export).
struct Output<'a> {
    sink: &'a mut Sink,
    report: &'a mut ExportReport,
    error: Option<ExportError>,
}

impl Output<'_> {
    fn row(&mut self, r: Row<'_>) {
        if self.error.is_some() {
            return;
        }
        let written = self.sink.write_row(&[
            Cell::Text(EXCHANGE),
            Cell::Text(r.symbol),
            Cell::Micros(r.ts.unix_micros()),
            Cell::Micros(r.received.unix_micros()),
            Cell::Bool(r.snapshot),
            Cell::Text(r.side.as_str()),
            Cell::Decimal(r.price),
            Cell::Decimal(r.amount),
        ]);
        if let Err(e) = written {
            self.error = Some(e);
            return;
        }
        self.report.rows += 1;
        match r.kind {
            RowKind::Opening => self.report.opening_levels += 1,
            RowKind::Stored => self.report.stored_levels += 1,
            RowKind::Implied => self.report.implied_deletions += 1,
            RowKind::Reset => self.report.reset_deletions += 1,
            RowKind::GapClear => self.report.gap_deletions += 1,
            RowKind::SnapshotEnd => self.report.snapshot_ends += 1,
        }
    }

    fn check(&mut self) -> Result<(), ExportError> {
        self.error.take().map_or(Ok(()), Err)
    }
}
