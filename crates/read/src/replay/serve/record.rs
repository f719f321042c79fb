//! Where a served subscription reads the record: one symbol's stored messages on one collector's
//! record, each with its levels in the order received and the verified book after it; and where
//! that record has gaps.
//!
//! The messages come from [`BookCursor`] (the book after each message, its checksum recomputed),
//! their levels from a second query over the same rows on a connection of its own, read in step
//! with the cursor (two result streams on one connection would make each wait for the other).
//! The gaps come from [`GapSource`]: the coverage model ([`crate::history`]) of the collector's
//! record, the same answer `book --at` and the exports get. A stream that ended (a stopped
//! collector, a crash, a drop) is seen at its connection's last frame, not at the next
//! connection's first.

use std::pin::Pin;

use futures_util::StreamExt;
use tokio_postgres::{Client, Row, RowStream};

use crate::book::{Decimal, OrderBook};
use crate::history::{Coverage, Source};
use crate::readback::{BookCursor, ReadbackError, Start, StartKind};
use crate::store::DbTarget;
use crate::store::StoreError;
use crate::time::Timestamp;

/// Where the record of a symbol has gaps, and where it ends.
#[derive(Debug)]
pub(super) struct GapSource {
    coverage: Coverage,
}

impl GapSource {
    /// The coverage of `symbol` on `collector`'s record (`_since`: where the replay starts; the
    /// model reads the whole record of the symbol from its indexes).
    pub(super) async fn load(
        client: &Client,
        collector: &str,
        symbol: &str,
        _since: Timestamp,
    ) -> Result<GapSource, ReadbackError> {
        let coverage = Source::Database(client)
            .coverage_of(symbol, Some(collector))
            .await?;
        Ok(GapSource { coverage })
    }

    /// When the book of `symbol` was lost after its last message (received at `last_received`)
    /// and at or before `at`: the start of the first gap of the record that ends after that
    /// message and begins by `at` (a mismatch, a lost connection, a stopped collector, journal
    /// damage, the end of the record). `None` when the book synced by that message is still
    /// known at `at`.
    pub(super) fn lost_after(
        &self,
        symbol: &str,
        last_received: Timestamp,
        at: Timestamp,
    ) -> Option<Timestamp> {
        debug_assert_eq!(symbol, self.coverage.symbol);
        // A gap that ended by the last message was closed by a snapshot the caller has already
        // applied. A gap that begins with the last message's receipt (its connection's last
        // frame) begins right after it.
        self.coverage
            .next_gap(last_received, at)
            .and_then(|g| g.start)
            .map(|start| start.max(last_received))
    }

    /// Where the collector's record of the symbol ends (its connections' last frame), when known.
    pub(super) fn record_end(&self, symbol: &str) -> Option<Timestamp> {
        debug_assert_eq!(symbol, self.coverage.symbol);
        self.coverage.record_end()
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
                .map_err(StoreError::db("reading book levels"))?;
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
                        Some(Err(e)) => return Err(StoreError::db("reading book levels")(e).into()),
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
