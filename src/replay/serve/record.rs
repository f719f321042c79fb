//! Where a served subscription reads the record: one symbol's stored messages on one collector's
//! record, each with its levels in the order received and the verified book after it; and where
//! that record has gaps.
//!
//! The messages come from [`BookCursor`] (the book after each message, its checksum recomputed),
//! their levels from a second query over the same rows on a connection of its own, read in step
//! with the cursor (two result streams on one connection would make each wait for the other).
//! The gaps come from [`GapSource`], today [`crate::readback::Gaps`]: the one place to change when
//! coverage gets its own definition.

use std::pin::Pin;

use futures_util::StreamExt;
use tokio_postgres::{Client, Row, RowStream};

use crate::book::{Decimal, OrderBook};
use crate::readback::{BookCursor, Gaps, ReadbackError, Start, StartKind};
use crate::store::DbTarget;
use crate::time::Timestamp;

/// Where the record of a symbol has gaps, and where it ends.
#[derive(Debug)]
pub(super) struct GapSource {
    gaps: Gaps,
}

impl GapSource {
    /// The gaps of `symbol` on `collector`'s record from `since`.
    pub(super) async fn load(
        client: &Client,
        collector: &str,
        symbol: &str,
        since: Timestamp,
    ) -> Result<GapSource, ReadbackError> {
        let gaps = Gaps::load(
            client,
            collector,
            &[symbol.to_owned()],
            since,
            Timestamp::from_unix_nanos(i64::MAX),
        )
        .await?;
        Ok(GapSource { gaps })
    }

    /// When the book of `symbol` was lost after its last message (received at `last_received`)
    /// and at or before `at`: a lost connection, a new one, a checksum mismatch, the end of the
    /// record. `None` when the book synced by that message is still known at `at`.
    pub(super) fn lost_after(
        &self,
        symbol: &str,
        last_received: Timestamp,
        at: Timestamp,
    ) -> Option<Timestamp> {
        // `Gaps` also reports the closed gaps (a mismatch or a loss until the resync) that `at`
        // lies in; one that began before the last message ended with a snapshot the caller has
        // already applied, and a gap that began after it begins with a loss, reported as such.
        self.gaps
            .gap_at(symbol, last_received, at)
            .map(|(t, _)| t)
            .filter(|&t| t > last_received)
    }

    /// Where the collector's record ends (its last message or commit), when known.
    pub(super) fn record_end(&self, symbol: &str) -> Option<Timestamp> {
        // `Gaps` says every instant after the record's end is a gap "not recorded" beginning
        // there, before looking at anything else: ask it about the last instant there is.
        let last = Timestamp::from_unix_nanos(i64::MAX);
        match self.gaps.gap_at(symbol, last, last) {
            Some((end, "not recorded")) => Some(end),
            _ => None,
        }
    }
}

/// One recorded message: its levels in the order received, and the book after it.
#[derive(Debug)]
pub(super) struct Recorded<'a> {
    /// Kraken's timestamp.
    pub(super) timestamp: Timestamp,
    /// When the collector received it.
    pub(super) received_at: Timestamp,
    /// Whether it was a snapshot.
    pub(super) snapshot: bool,
    /// Whether the rebuilt book verified after it (`None`: not synced).
    pub(super) verified: Option<bool>,
    /// Bid levels as received.
    pub(super) bids: Vec<(Decimal, Decimal)>,
    /// Ask levels as received.
    pub(super) asks: Vec<(Decimal, Decimal)>,
    /// The book after it (at the recorded depth).
    pub(super) book: &'a OrderBook,
}

type Rows = Pin<Box<RowStream>>;

const LEVELS: &str = "SELECT seq, side, price, quantity FROM kraken_orderbook_entries \
    WHERE symbol = $1 AND collector = $2 AND \"timestamp\" >= $3 AND \"timestamp\" <= $4 AND seq > $5 \
    ORDER BY seq, ordinal";

/// One symbol's record from a starting point, message by message.
pub(super) struct Record {
    target: DbTarget,
    symbol: String,
    start: Start,
    to: Timestamp,
    cursor: BookCursor,
    /// The cursor's connection, kept open while its rows are read.
    _client: Client,
    /// The levels' connection and rows, opened at the first message read with its levels.
    levels: Option<(Client, Rows)>,
    pending: Option<Row>,
    /// The last message stepped over.
    last_seq: i64,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("symbol", &self.symbol)
            .field("start", &self.start)
            .field("last_seq", &self.last_seq)
            .finish()
    }
}

impl Record {
    /// The record of `symbol` from `start` up to `to` (inclusive).
    pub(super) async fn open(
        target: &DbTarget,
        client: Client,
        symbol: &str,
        start: Start,
        to: Timestamp,
    ) -> Result<Record, ReadbackError> {
        let cursor = BookCursor::open(&client, symbol, start.clone(), to).await?;
        let last_seq = match start.kind {
            StartKind::State => start.seq,
            StartKind::Snapshot => start.seq - 1,
        };
        Ok(Record {
            target: target.clone(),
            symbol: symbol.to_owned(),
            start,
            to,
            cursor,
            _client: client,
            levels: None,
            pending: None,
            last_seq,
        })
    }

    /// Where it started.
    pub(super) fn start(&self) -> &Start {
        &self.start
    }

    /// The book now, and whether it is synced.
    pub(super) fn book(&self) -> (&OrderBook, bool) {
        (self.cursor.book(), self.cursor.is_synced())
    }

    /// Kraken's timestamp and the `seq` of the next message, without reading it.
    pub(super) async fn peek(&mut self) -> Result<Option<(Timestamp, i64)>, ReadbackError> {
        let Some(ts) = self.cursor.peek_timestamp().await? else {
            return Ok(None);
        };
        Ok(self.cursor.peek_seq().await?.map(|seq| (ts, seq)))
    }

    /// Applies the next message without reading its levels (before anything was read with
    /// them); returns its timestamp and receipt time.
    pub(super) async fn skip(&mut self) -> Result<Option<(Timestamp, Timestamp)>, ReadbackError> {
        debug_assert!(self.levels.is_none(), "skip only before reading levels");
        Ok(self.cursor.next().await?.map(|step| {
            self.last_seq = step.seq;
            (step.timestamp, step.received_at)
        }))
    }

    /// Applies the next message and returns it with its levels.
    pub(super) async fn next(&mut self) -> Result<Option<Recorded<'_>>, ReadbackError> {
        if self.levels.is_none() {
            let client = self.target.connect("krakenbook replay").await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                &self.symbol,
                &self.start.collector,
                &self.start.timestamp,
                &self.to,
                &self.last_seq,
            ];
            let rows = client
                .query_raw(LEVELS, params)
                .await
                .map_err(crate::readback::db("reading book levels"))?;
            self.levels = Some((client, Box::pin(rows)));
        }
        let Some(step) = self.cursor.next().await? else {
            return Ok(None);
        };
        self.last_seq = step.seq;
        let (mut bids, mut asks) = (Vec::new(), Vec::new());
        loop {
            let row = match self.pending.take() {
                Some(row) => row,
                None => match self.levels.as_mut() {
                    Some((_, rows)) => match rows.next().await {
                        Some(Ok(row)) => row,
                        Some(Err(e)) => return Err(crate::readback::db("reading book levels")(e)),
                        None => break,
                    },
                    None => break,
                },
            };
            let seq: i64 = row.get(0);
            if seq < step.seq {
                continue;
            }
            if seq > step.seq {
                self.pending = Some(row);
                break;
            }
            let level = (row.get::<_, Decimal>(2), row.get::<_, Decimal>(3));
            match row.get::<_, &str>(1) {
                "bid" => bids.push(level),
                _ => asks.push(level),
            }
        }
        Ok(Some(Recorded {
            timestamp: step.timestamp,
            received_at: step.received_at,
            snapshot: step.snapshot,
            verified: step.verified,
            bids,
            asks,
            book: step.book,
        }))
    }
}
