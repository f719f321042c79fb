//! Where a served subscription reads the record: one segment of its symbol's merged history
//! ([`crate::export::incremental::timeline`]): the stored messages of the one stream (connection
//! of a collector) the segment follows, inside that stream's verified span, each with its levels
//! in the order received and the verified book after it.
//!
//! The messages come from [`BookCursor`] bounded to the stream and its span (each message's levels
//! as received and the book after it, its checksum recomputed; one row a message, so the levels
//! need no query of their own). A segment is opened at an instant: the book there is the stream's
//! book after every message stamped at or before it, as `book --at` has it.

use tokio_postgres::Client;

use crate::book::{Decimal, OrderBook};
use crate::export::incremental::Segment;
use crate::readback::{BookCursor, ReadbackError, Start, StartKind};
use crate::store::DbTarget;
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

/// One segment's record from a starting point, message by message.
pub(super) struct Record {
    symbol: String,
    start: Start,
    cursor: BookCursor,
    /// The cursor's connection, kept open while its rows are read.
    _client: Client,
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
            symbol: symbol.to_owned(),
            last_timestamp: start.timestamp,
            start,
            cursor,
            _client: client,
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

    /// Applies the next message without returning it.
    async fn skip(&mut self) -> Result<(), ReadbackError> {
        if let Some(step) = self.cursor.next().await? {
            self.last_seq = step.seq;
            self.last_timestamp = step.timestamp;
        }
        Ok(())
    }

    /// Applies the next message and returns it with its levels.
    pub(super) async fn next(&mut self) -> Result<Option<Recorded<'_>>, ReadbackError> {
        let Some(step) = self.cursor.next().await? else {
            return Ok(None);
        };
        self.last_seq = step.seq;
        self.last_timestamp = step.timestamp;
        let (bids, asks) = (step.bids.to_vec(), step.asks.to_vec());
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
