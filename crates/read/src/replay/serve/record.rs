//! Where a served subscription reads the record: one segment of its symbol's merged history
//! ([`crate::export::incremental::timeline`]): the stored messages of the one stream (connection
//! of a collector) the segment follows, inside that stream's verified span, each with its levels
//! in the order received and the verified book after it.
//!
//! The messages come from [`BookCursor`] bounded to the stream and its span (the book after each
//! message, its checksum recomputed), their levels from a second query over the collector's rows
//! on a connection of its own, read in step with the cursor (two result streams on one connection
//! would make each wait for the other; rows of the collector's other connections interleave by
//! `seq` and are stepped over). A segment is opened at an instant: the book there is the stream's
//! book after every message stamped at or before it, as `book --at` has it.

use std::pin::Pin;

use futures_util::StreamExt;
use tokio_postgres::{Client, Row, RowStream};

use crate::book::{Decimal, OrderBook};
use crate::export::incremental::Segment;
use crate::readback::{BookCursor, ReadbackError, Start, StartKind};
use crate::store::DbTarget;
use crate::store::StoreError;
use crate::time::Timestamp;

/// One recorded message: its levels in the order received, and the book after it.
#[derive(Debug)]
pub(super) struct Recorded<'a> {
    /// Kraken's timestamp.
    pub(super) timestamp: Timestamp,
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

/// One segment's record from a starting point, message by message.
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
    /// Kraken's timestamp of the last message applied (the start's before any).
    last_timestamp: Timestamp,
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
    /// `segment` of `symbol`'s merged history opened at `at` (inside it): the stream's record
    /// from its latest start (snapshot or book state) at or before `at` in the segment's span,
    /// every message stamped at or before `at` applied, the rest up to the segment's end to
    /// come. `None` when the record has no such start, or its book is not verified at `at` (the
    /// cursor does not verify what the coverage model does).
    pub(super) async fn open(
        target: &DbTarget,
        symbol: &str,
        segment: &Segment,
        at: Timestamp,
    ) -> Result<Option<Record>, ReadbackError> {
        let client = target.connect("krakenbook replay").await?;
        let Some(start) = crate::source::segment_start(&client, symbol, segment, at).await? else {
            return Ok(None);
        };
        // The segment holds the messages stamped before its end.
        let to = segment.end.add_nanos(-1);
        let cursor =
            BookCursor::open_bounded(&client, symbol, start.clone(), to, segment.last_seq).await?;
        let last_seq = match start.kind {
            StartKind::State => start.seq,
            StartKind::Snapshot => start.seq - 1,
        };
        let mut record = Record {
            target: target.clone(),
            symbol: symbol.to_owned(),
            last_timestamp: start.timestamp,
            start,
            to,
            cursor,
            _client: client,
            levels: None,
            pending: None,
            last_seq,
        };
        while record.peek().await?.is_some_and(|(t, _)| t <= at) {
            record.skip().await?;
        }
        Ok(record.cursor.is_synced().then_some(record))
    }

    /// The book now (at the recorded depth).
    pub(super) fn book(&self) -> &OrderBook {
        self.cursor.book()
    }

    /// Kraken's timestamp of the last message in the book (of its start before any).
    pub(super) fn last_timestamp(&self) -> Timestamp {
        self.last_timestamp
    }

    /// Kraken's timestamp and the `seq` of the next message, without reading it.
    pub(super) async fn peek(&mut self) -> Result<Option<(Timestamp, i64)>, ReadbackError> {
        let Some(ts) = self.cursor.peek_timestamp().await? else {
            return Ok(None);
        };
        Ok(self.cursor.peek_seq().await?.map(|seq| (ts, seq)))
    }

    /// Applies the next message without reading its levels (before anything was read with
    /// them).
    async fn skip(&mut self) -> Result<(), ReadbackError> {
        debug_assert!(self.levels.is_none(), "skip only before reading levels");
        if let Some(step) = self.cursor.next().await? {
            self.last_seq = step.seq;
            self.last_timestamp = step.timestamp;
        }
        Ok(())
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
        self.last_timestamp = step.timestamp;
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
            snapshot: step.snapshot,
            verified: step.verified,
            bids,
            asks,
            book: step.book,
        }))
    }
}
