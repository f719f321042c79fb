//! A symbol's book stepped through a time range, one stored message at a time.

use std::pin::Pin;

use futures_util::StreamExt;
use tokio_postgres::{Client, Row, RowStream};

use super::ReadbackError;
use crate::book::{Decimal, OrderBook, Precision};
use crate::kraken::{self, Frame};
use crate::store::StoreError;
use crate::store::book_rows::{DUP_SEQ_REACH, undec64};
use crate::time::Timestamp;

/// What a rebuild starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartKind {
    /// A snapshot Kraken sent.
    Snapshot,
    /// A book state the collector journaled.
    State,
}

/// The starting point of a rebuild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// Snapshot or state.
    pub kind: StartKind,
    /// The collector whose record this is.
    pub collector: String,
    /// Its connection.
    pub conn_id: i64,
    /// Its `seq`.
    pub seq: i64,
    /// Its (Kraken) timestamp.
    pub timestamp: Timestamp,
    /// When the collector received it (a state: the frame it follows).
    pub received_at: Timestamp,
}

/// The book after one stored message.
#[derive(Debug)]
pub struct Step<'a> {
    /// The message's `seq`.
    pub seq: i64,
    /// Kraken's timestamp of the message.
    pub timestamp: Timestamp,
    /// When the collector received it.
    pub received_at: Timestamp,
    /// Whether it was a snapshot.
    pub snapshot: bool,
    /// Kraken's checksum.
    pub checksum: u32,
    /// Whether the rebuilt book has Kraken's checksum after this message (`None`: the book is
    /// not synced, e.g. after a mismatch and before the next snapshot).
    pub verified: Option<bool>,
    /// The book after the message.
    pub book: &'a OrderBook,
}

type Rows = Pin<Box<RowStream>>;

/// Steps through a symbol's stored book messages from a starting point.
pub struct BookCursor {
    symbol: String,
    start: Start,
    book: OrderBook,
    synced: bool,
    subscribed: Option<usize>,
    rows: Option<Rows>,
    pending: Option<Row>,
}

impl std::fmt::Debug for BookCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookCursor")
            .field("symbol", &self.symbol)
            .field("start", &self.start)
            .field("synced", &self.synced)
            .finish()
    }
}

/// The book messages of a collector's record in seq order, first copies only ($1 symbol, $2
/// collector, $3..$4 Kraken time, ($5, $6] seqs): one row a message, its levels as dec64.
const MESSAGES: &str = "SELECT b.seq, b.kind = 's', b.checksum, b.n_bids, b.levels, b.raw::text, \
    b.\"timestamp\", b.received_at \
    FROM krakenbook_book b \
    WHERE b.symbol = $1 AND b.collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $2) \
      AND b.\"timestamp\" >= $3 AND b.\"timestamp\" <= $4 AND b.seq > $5 AND b.seq <= $6 \
    ORDER BY b.seq";

/// [`MESSAGES`] of one stream (connection $7): every copy that connection received, the first
/// copies of rows and those packed in other rows' `dups`, in that connection's own seq order.
const STREAM_MESSAGES: &str = "SELECT c.seq, c.kind = 's', c.checksum, c.n_bids, c.levels, \
    c.raw::text, c.\"timestamp\", c.received_at \
    FROM krakenbook_copies c \
    WHERE c.symbol = $1 AND c.collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $2) \
      AND c.\"timestamp\" >= $3 AND c.\"timestamp\" <= $4 AND c.seq > $5 AND c.seq <= $6 \
      AND c.conn_id = $7 \
    ORDER BY c.seq";

/// One stored book message as the readers apply it: levels in wire order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// The copy's seq.
    pub seq: i64,
    /// A snapshot (else an update).
    pub snapshot: bool,
    /// Kraken's checksum.
    pub checksum: u32,
    /// Bid levels (price, qty) in wire order.
    pub bids: Vec<(Decimal, Decimal)>,
    /// Ask levels in wire order.
    pub asks: Vec<(Decimal, Decimal)>,
    /// Kraken's timestamp.
    pub timestamp: Timestamp,
    /// When the copy was received.
    pub received_at: Timestamp,
}

/// Decodes a row of `seq, snapshot, checksum, n_bids, levels, raw, timestamp, received_at` (the
/// book table's columns: levels as dec64, or the frame in raw when they do not fit).
pub fn stored_message(row: &Row, symbol: &str) -> Result<StoredMessage, ReadbackError> {
    let seq: i64 = row.get(0);
    let invalid = |reason: String| ReadbackError::Invalid {
        symbol: symbol.to_owned(),
        seq,
        reason,
    };
    let n_bids = usize::try_from(row.get::<_, i16>(3)).map_err(|e| invalid(e.to_string()))?;
    let (bids, asks) = match row.get::<_, Option<Vec<i64>>>(4) {
        Some(levels) => {
            if levels.len() % 2 != 0 || n_bids * 2 > levels.len() {
                return Err(invalid(format!(
                    "{} level values with {n_bids} bids",
                    levels.len()
                )));
            }
            let mut pairs = levels.chunks_exact(2).map(|p| {
                match (undec64(p[0]), undec64(p[1])) {
                    (Some(price), Some(qty)) => Ok((price, qty)),
                    _ => Err(invalid(format!("level {p:?} is not dec64"))),
                }
            });
            let bids = pairs.by_ref().take(n_bids).collect::<Result<Vec<_>, _>>()?;
            let asks = pairs.collect::<Result<Vec<_>, _>>()?;
            (bids, asks)
        }
        None => {
            let raw: Option<&str> = row.get(5);
            let raw = raw.ok_or_else(|| invalid("neither levels nor raw".to_owned()))?;
            match kraken::decode(raw) {
                Ok(Frame::Book(book)) => {
                    let data = book
                        .data
                        .iter()
                        .find(|d| d.symbol == symbol)
                        .ok_or_else(|| invalid("raw frame of another symbol".to_owned()))?;
                    let pair = |l: &kraken::Level<'_>| (l.price.value, l.qty.value);
                    (
                        data.bids.iter().map(pair).collect(),
                        data.asks.iter().map(pair).collect(),
                    )
                }
                Ok(_) => return Err(invalid("raw frame is not a book frame".to_owned())),
                Err(e) => return Err(invalid(e.to_string())),
            }
        }
    };
    let timestamp: Timestamp = row.get(6);
    Ok(StoredMessage {
        seq,
        snapshot: row.get(1),
        checksum: row.get::<_, Option<i32>>(2).unwrap_or(0) as u32,
        bids,
        asks,
        timestamp,
        received_at: row.get::<_, Option<Timestamp>>(7).unwrap_or(timestamp),
    })
}

impl BookCursor {
    /// The latest starting point (snapshot or state) of `symbol` at or before `at`, on
    /// `collector`'s record (any collector when `None`).
    pub async fn find_start(
        client: &Client,
        symbol: &str,
        at: Timestamp,
        collector: Option<&str>,
    ) -> Result<Option<Start>, ReadbackError> {
        let row = client
            .query_opt(
                "SELECT kind, collector, conn_id, seq, ts, received_at FROM (
                   (SELECT 'snapshot' AS kind,
                           (SELECT k.name FROM krakenbook_collectors k WHERE k.id = b.collector_id) AS collector,
                           conn_id, seq, \"timestamp\" AS ts, received_at
                      FROM krakenbook_book b
                     WHERE symbol = $1 AND kind = 's' AND \"timestamp\" <= $2
                       AND ($3::text IS NULL
                            OR collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $3))
                     ORDER BY \"timestamp\" DESC, seq DESC LIMIT 1)
                   UNION ALL
                   (SELECT 'state', collector, conn_id, seq, \"timestamp\", received_at
                      FROM kraken_book_states
                     WHERE symbol = $1 AND \"timestamp\" <= $2 AND ($3::text IS NULL OR collector = $3)
                     ORDER BY \"timestamp\" DESC, seq DESC LIMIT 1)
                 ) s ORDER BY ts DESC, seq DESC LIMIT 1",
                &[&symbol, &at, &collector],
            )
            .await
            .map_err(StoreError::db("finding where the book starts"))?;
        Ok(row.map(|r| Start {
            kind: if r.get::<_, &str>(0) == "snapshot" {
                StartKind::Snapshot
            } else {
                StartKind::State
            },
            collector: r.get(1),
            conn_id: r.get(2),
            seq: r.get(3),
            timestamp: r.get(4),
            received_at: r.get(5),
        }))
    }

    /// The latest starting point (snapshot or state) of `symbol` at or before `at` on one
    /// stream's verified span: connection `conn_id` of `collector`, seqs `first_seq..=last_seq`
    /// (see [`crate::history::Span`]).
    pub async fn find_start_in_span(
        client: &Client,
        symbol: &str,
        at: Timestamp,
        collector: &str,
        conn_id: i64,
        first_seq: i64,
        last_seq: i64,
    ) -> Result<Option<Start>, ReadbackError> {
        let row = client
            .query_opt(
                "SELECT kind, collector, conn_id, seq, ts, received_at FROM (
                   (SELECT 'snapshot' AS kind, $3::text AS collector, conn_id, seq,
                           \"timestamp\" AS ts, received_at
                      FROM krakenbook_copies
                     WHERE symbol = $1 AND kind = 's' AND \"timestamp\" <= $2
                       AND collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $3)
                       AND conn_id = $4 AND seq >= $5 AND seq <= $6
                     ORDER BY \"timestamp\" DESC, seq DESC LIMIT 1)
                   UNION ALL
                   (SELECT 'state', collector, conn_id, seq, \"timestamp\", received_at
                      FROM kraken_book_states
                     WHERE symbol = $1 AND \"timestamp\" <= $2 AND collector = $3 AND conn_id = $4
                       AND seq >= $5 AND seq <= $6
                     ORDER BY \"timestamp\" DESC, seq DESC LIMIT 1)
                 ) s ORDER BY ts DESC, seq DESC LIMIT 1",
                &[&symbol, &at, &collector, &conn_id, &first_seq, &last_seq],
            )
            .await
            .map_err(StoreError::db("finding where the stream's book starts"))?;
        Ok(row.map(|r| Start {
            kind: if r.get::<_, &str>(0) == "snapshot" {
                StartKind::Snapshot
            } else {
                StartKind::State
            },
            collector: r.get(1),
            conn_id: r.get(2),
            seq: r.get(3),
            timestamp: r.get(4),
            received_at: r.get(5),
        }))
    }

    /// Where a replay of `symbol` from `at` begins, as the coverage model says: the latest start
    /// at or before `at` on the stream verified at `at`, else the start of the first verified
    /// span after it; `None` when nothing is verified from `at` on. (A quiet pair's later
    /// snapshots carry old Kraken timestamps: the latest start by time alone may lie in a later
    /// stream.)
    pub async fn find_start_covered(
        client: &Client,
        symbol: &str,
        coverage: &crate::history::Coverage,
        at: Timestamp,
    ) -> Result<Option<Start>, ReadbackError> {
        let Some((stream, span)) = coverage.choose_from(at) else {
            return Ok(None);
        };
        Self::find_start_in_span(
            client,
            symbol,
            at.max(span.start),
            &stream.stream.collector,
            stream.stream.conn_id,
            span.start_seq,
            span.last_seq,
        )
        .await
    }

    /// The earliest snapshot of `symbol` in `[from, to)` on `collector`'s record.
    pub async fn find_first_start(
        client: &Client,
        symbol: &str,
        from: Timestamp,
        to: Timestamp,
        collector: &str,
    ) -> Result<Option<Start>, ReadbackError> {
        let row = client
            .query_opt(
                "SELECT $4::text, conn_id, seq, \"timestamp\", received_at FROM krakenbook_book
                  WHERE symbol = $1 AND kind = 's'
                    AND \"timestamp\" >= $2 AND \"timestamp\" < $3
                    AND collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $4)
                  ORDER BY \"timestamp\", seq LIMIT 1",
                &[&symbol, &from, &to, &collector],
            )
            .await
            .map_err(StoreError::db("finding the first snapshot"))?;
        Ok(row.map(|r| Start {
            kind: StartKind::Snapshot,
            collector: r.get(0),
            conn_id: r.get(1),
            seq: r.get(2),
            timestamp: r.get(3),
            received_at: r.get(4),
        }))
    }

    /// The latest start at or before `at`, else (the record begins later) the first snapshot in
    /// `[at, to)`: where a replay of `[at, to)` begins.
    pub async fn find_start_or_first(
        client: &Client,
        symbol: &str,
        at: Timestamp,
        to: Timestamp,
        collector: &str,
    ) -> Result<Option<Start>, ReadbackError> {
        match Self::find_start(client, symbol, at, Some(collector)).await? {
            Some(start) => Ok(Some(start)),
            None => Self::find_first_start(client, symbol, at, to, collector).await,
        }
    }

    /// Opens a cursor at `start` that steps through every message of `symbol` up to `to`
    /// (inclusive). The first step is the start itself.
    pub async fn open(
        client: &Client,
        symbol: &str,
        start: Start,
        to: Timestamp,
    ) -> Result<BookCursor, ReadbackError> {
        Self::open_inner(client, symbol, start, to, i64::MAX, false).await
    }

    /// [`open`](Self::open), stepping only through messages whose `seq` is at most `last_seq`
    /// (the end of a stream's verified span: later records belong to another stream or lie past
    /// a mismatch).
    pub async fn open_bounded(
        client: &Client,
        symbol: &str,
        start: Start,
        to: Timestamp,
        last_seq: i64,
    ) -> Result<BookCursor, ReadbackError> {
        Self::open_inner(client, symbol, start, to, last_seq, true).await
    }

    /// `one_stream`: only the start's connection's messages (a stream's span), or every message
    /// of the collector (a record followed across its connections).
    async fn open_inner(
        client: &Client,
        symbol: &str,
        start: Start,
        to: Timestamp,
        last_seq: i64,
        one_stream: bool,
    ) -> Result<BookCursor, ReadbackError> {
        let mut book;
        let mut synced = false;
        let mut after_seq = start.seq - 1;
        let subscribed;
        match start.kind {
            StartKind::State => {
                let r = client
                    .query_one(
                        "SELECT depth, price_precision, qty_precision, bids::text, asks::text FROM kraken_book_states
                          WHERE symbol = $1 AND collector = $2 AND seq = $3 AND \"timestamp\" = $4",
                        &[&symbol, &start.collector, &start.seq, &start.timestamp],
                    )
                    .await
                    .map_err(StoreError::db("reading a book state"))?;
                let invalid = |reason: String| ReadbackError::Invalid {
                    symbol: symbol.to_owned(),
                    seq: start.seq,
                    reason,
                };
                let depth: i32 = r.get(0);
                subscribed = usize::try_from(depth).ok();
                let precision = Precision {
                    price: u8::try_from(r.get::<_, i16>(1)).map_err(|e| invalid(e.to_string()))?,
                    qty: u8::try_from(r.get::<_, i16>(2)).map_err(|e| invalid(e.to_string()))?,
                };
                book = OrderBook::with_precision(subscribed.unwrap_or(1000), Some(precision));
                let bids = parse_levels(r.get(3)).map_err(invalid)?;
                let asks = parse_levels(r.get(4)).map_err(invalid)?;
                book.apply_snapshot(bids, asks)
                    .map_err(|e| invalid(e.to_string()))?;
                synced = true;
                after_seq = start.seq;
            }
            StartKind::Snapshot => {
                subscribed =
                    subscribed_depth(client, &start.collector, start.conn_id, symbol, start.seq)
                        .await?;
                let precision = instrument_precision(client, symbol, &start).await?;
                book = OrderBook::with_precision(subscribed.unwrap_or(1000), precision);
            }
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &symbol,
            &start.collector,
            &start.timestamp,
            &to,
            &after_seq,
            &last_seq,
            &start.conn_id,
        ];
        let rows = if one_stream {
            client.query_raw(STREAM_MESSAGES, params).await
        } else {
            client.query_raw(MESSAGES, params[..6].iter().copied()).await
        };
        let rows = rows.map_err(StoreError::db("reading book levels"))?;
        Ok(BookCursor {
            symbol: symbol.to_owned(),
            start,
            book,
            synced,
            subscribed,
            rows: Some(Box::pin(rows)),
            pending: None,
        })
    }

    /// The depth the book was subscribed at, when the record says (its ack, or the state).
    pub fn subscribed_depth(&self) -> Option<usize> {
        self.subscribed
    }

    /// Where this cursor started.
    pub fn start(&self) -> &Start {
        &self.start
    }

    /// The book so far.
    pub fn book(&self) -> &OrderBook {
        &self.book
    }

    /// Whether the book is synced (verified since its last snapshot or state).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The timestamp of the next message, without applying it (`None` at the end).
    pub async fn peek_timestamp(&mut self) -> Result<Option<Timestamp>, ReadbackError> {
        if self.pending.is_none() {
            self.pending = self.next_row().await?;
        }
        Ok(self.pending.as_ref().map(|r| r.get(6)))
    }

    /// The `seq` of the next message, without applying it (`None` at the end).
    pub async fn peek_seq(&mut self) -> Result<Option<i64>, ReadbackError> {
        if self.pending.is_none() {
            self.pending = self.next_row().await?;
        }
        Ok(self.pending.as_ref().map(|r| r.get(0)))
    }

    /// Applies the next message and returns the book after it; `None` at the end of the range.
    pub async fn next(&mut self) -> Result<Option<Step<'_>>, ReadbackError> {
        let first = match self.pending.take() {
            Some(row) => row,
            None => match self.next_row().await? {
                Some(row) => row,
                None => return Ok(None),
            },
        };
        let StoredMessage {
            seq,
            snapshot,
            checksum,
            bids,
            asks,
            timestamp,
            received_at,
        } = stored_message(&first, &self.symbol)?;
        let applied = if snapshot {
            self.synced = true;
            self.book.apply_snapshot(bids, asks)
        } else if self.synced {
            self.book.apply_update(bids, asks)
        } else {
            Ok(())
        };
        let verified = if applied.is_err() {
            self.synced = false;
            self.book.clear();
            None
        } else if self.synced {
            let ok = self.book.current_checksum() == checksum;
            self.synced = ok;
            Some(ok)
        } else {
            None
        };
        Ok(Some(Step {
            seq,
            timestamp,
            received_at,
            snapshot,
            checksum,
            verified,
            book: &self.book,
        }))
    }

    async fn next_row(&mut self) -> Result<Option<Row>, ReadbackError> {
        let Some(rows) = self.rows.as_mut() else {
            return Ok(None);
        };
        match rows.next().await {
            Some(Ok(row)) => Ok(Some(row)),
            Some(Err(e)) => Err(StoreError::db("reading book levels")(e).into()),
            None => {
                self.rows = None;
                Ok(None)
            }
        }
    }
}

/// Levels stored as `[["price","qty"], ...]`.
pub fn parse_levels(text: &str) -> Result<Vec<(Decimal, Decimal)>, String> {
    let pairs: Vec<(String, String)> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    pairs
        .into_iter()
        .map(|(p, q)| {
            Ok((
                Decimal::parse(&p).map_err(|e| e.to_string())?,
                Decimal::parse(&q).map_err(|e| e.to_string())?,
            ))
        })
        .collect()
}

/// The `seq` at which connection `conn_id` of `collector` began (its `connected` event).
async fn connection_start(
    client: &Client,
    collector: &str,
    conn_id: i64,
) -> Result<Option<i64>, ReadbackError> {
    Ok(client
        .query_one(
            "SELECT max(seq) FROM kraken_feed_events WHERE collector = $1 AND conn_id = $2 AND event = 'connected'",
            &[&collector, &conn_id],
        )
        .await
        .map_err(StoreError::db("reading where the connection began"))?
        .get(0))
}

/// How far back to look on the same connection when its `connected` event is not stored (data
/// recorded by another tool): a bound for the backward scan of the `(collector, seq)` index.
const LOOKBACK: i64 = 1_000_000;

/// The depth `symbol` was subscribed at on connection `conn_id` before `seq`: the `book`
/// subscription acknowledged last before it on that connection (found by `seq`, not by time: a
/// quiet pair's snapshot carries the time of its last change, which may precede the ack).
pub(crate) async fn subscribed_depth(
    client: &Client,
    collector: &str,
    conn_id: i64,
    symbol: &str,
    seq: i64,
) -> Result<Option<usize>, ReadbackError> {
    let floor = connection_start(client, collector, conn_id)
        .await?
        .unwrap_or(seq - LOOKBACK);
    let row = client
        .query_opt(
            "SELECT raw_message -> 'result' ->> 'depth' FROM krakenbook_other
              WHERE collector = $1 AND seq < $2 AND seq >= $3 AND conn_id = $4 AND symbol = $5
                AND channel = 'book' AND message_type = 'subscribe'
              ORDER BY seq DESC LIMIT 1",
            &[&collector, &seq, &floor, &conn_id, &symbol],
        )
        .await
        .map_err(StoreError::db("reading the subscribed depth"))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|d| d.parse().ok()))
}

/// [`subscribed_depth`] for the stored book message at `(collector, seq)`.
pub async fn subscribed_depth_of(
    client: &Client,
    collector: &str,
    seq: i64,
) -> Result<Option<usize>, ReadbackError> {
    let row = client
        .query_opt(
            "SELECT conn_id, symbol FROM krakenbook_copies
              WHERE collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $1)
                AND row_seq > $2::bigint - $3::bigint AND row_seq < $2::bigint + $3::bigint AND seq = $2
             UNION ALL
             SELECT conn_id, symbol FROM krakenbook_other WHERE collector = $1 AND seq = $2
             LIMIT 1",
            &[&collector, &seq, &DUP_SEQ_REACH],
        )
        .await
        .map_err(StoreError::db("reading a book message"))?;
    match row {
        Some(r) => match (r.get::<_, Option<i64>>(0), r.get::<_, Option<String>>(1)) {
            (Some(conn), Some(symbol)) => {
                subscribed_depth(client, collector, conn, &symbol, seq).await
            }
            _ => Ok(None),
        },
        None => Ok(None),
    }
}

/// The pair's precision from the instrument channel on the snapshot's connection (its snapshot
/// comes right after the connection opens, before any book subscription).
pub async fn instrument_precision(
    client: &Client,
    symbol: &str,
    start: &Start,
) -> Result<Option<Precision>, ReadbackError> {
    let floor = connection_start(client, &start.collector, start.conn_id)
        .await?
        .unwrap_or(start.seq - LOOKBACK);
    let rows = client
        .query(
            "SELECT raw_message::text FROM krakenbook_other
              WHERE collector = $1 AND seq < $2 AND seq >= $3 AND conn_id = $4
                AND channel = 'instrument'
              ORDER BY seq DESC LIMIT 4",
            &[&start.collector, &start.seq, &floor, &start.conn_id],
        )
        .await
        .map_err(StoreError::db("reading the instrument list"))?;
    for row in rows {
        let Some(text) = row.get::<_, Option<String>>(0) else {
            continue;
        };
        if let Ok(Frame::Instrument(msg)) = kraken::decode(&text)
            && let Some(pair) = msg.pairs.iter().find(|p| p.symbol == symbol)
        {
            return Ok(Some(pair.precision()));
        }
    }
    Ok(None)
}
