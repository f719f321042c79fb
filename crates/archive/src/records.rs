//! The rows of each archived table: read from the database, written as Parquet cells, read back,
//! and copied into a session's temporary tables (binary `COPY`) when a range is mounted.
//!
//! One type per table, with every column the table has (nothing a reader of the database could
//! see is left out): [`BookRec`] (`krakenbook_book`, the collector as its name), [`OtherRec`]
//! (`krakenbook_other`), [`StateRec`] (`kraken_book_states`), [`EventRec`]
//! (`kraken_feed_events`), [`ConnRec`] (`krakenbook_connections`).
//!
//! Parquet representations: times as `TIMESTAMP(MICROS, UTC)`; `levels` and `dups` as
//! `list<int64>` exactly as the database holds them (dec64 values `mantissa * 32 + scale`, bids
//! first, `n_bids` of them; packed copies, see `krakenbook_store::book_rows`); `checksum` as
//! `INT(32, unsigned)` (Kraken's CRC32); `jsonb` columns as JSON text (`jsonb::text`, which
//! parses back to the same `jsonb`); `numeric` columns as their exact text.
//!
//! What must always hold: `from_cells(cells())` is the record itself, and
//! [`copy_into`] writes columns whose types are the table's, so that a mounted row is the row
//! the database held.

use std::collections::HashMap;
use std::pin::pin;

use futures_util::TryStreamExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, GenericClient, Row};

use crate::book::Decimal;
use crate::columns::{Cell, CellRef, Col, Kind};
use crate::naming::Dataset;
use crate::time::Timestamp;

/// A record of one archived table.
pub trait Record: Sized + Send + Sync + 'static {
    /// Its dataset.
    const DATASET: Dataset;
    /// Its Parquet columns.
    const COLUMNS: &'static [Col];
    /// Its cells, in column order.
    fn cells(&self) -> Vec<CellRef<'_>>;
    /// The record from cells read back.
    fn from_cells(cells: Vec<Cell>) -> Result<Self, String>;
    /// The time its table is partitioned by.
    fn time(&self) -> Timestamp;
    /// Its symbol, if it has one.
    fn symbol(&self) -> Option<&str>;
}

/// Cells to fields, naming the column on a mismatch.
struct Fields {
    cells: std::vec::IntoIter<Cell>,
    cols: &'static [Col],
    at: usize,
}

impl Fields {
    fn new(cells: Vec<Cell>, cols: &'static [Col]) -> Result<Fields, String> {
        if cells.len() != cols.len() {
            return Err(format!("{} cells for {} columns", cells.len(), cols.len()));
        }
        Ok(Fields {
            cells: cells.into_iter(),
            cols,
            at: 0,
        })
    }

    fn next(&mut self) -> (Cell, &'static str) {
        let name = self.cols.get(self.at).map_or("?", |c| c.name);
        self.at += 1;
        (self.cells.next().unwrap_or(Cell::Null), name)
    }

    fn int_opt(&mut self) -> Result<Option<i64>, String> {
        match self.next() {
            (Cell::Null, _) => Ok(None),
            (Cell::Int(v), _) => Ok(Some(v)),
            (other, name) => Err(format!("column {name}: {other:?}")),
        }
    }

    fn int(&mut self) -> Result<i64, String> {
        let name = self.cols.get(self.at).map_or("?", |c| c.name);
        self.int_opt()?
            .ok_or_else(|| format!("column {name}: null"))
    }

    fn time(&mut self) -> Result<Timestamp, String> {
        Ok(micros(self.int()?))
    }

    fn time_opt(&mut self) -> Result<Option<Timestamp>, String> {
        Ok(self.int_opt()?.map(micros))
    }

    fn bool_opt(&mut self) -> Result<Option<bool>, String> {
        match self.next() {
            (Cell::Null, _) => Ok(None),
            (Cell::Bool(b), _) => Ok(Some(b)),
            (other, name) => Err(format!("column {name}: {other:?}")),
        }
    }

    fn bytes_opt(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.next() {
            (Cell::Null, _) => Ok(None),
            (Cell::Bytes(b), _) => Ok(Some(b)),
            (other, name) => Err(format!("column {name}: {other:?}")),
        }
    }

    fn text_opt(&mut self) -> Result<Option<String>, String> {
        let name = self.cols.get(self.at).map_or("?", |c| c.name);
        self.bytes_opt()?
            .map(|b| String::from_utf8(b).map_err(|_| format!("column {name}: not UTF-8")))
            .transpose()
    }

    fn text(&mut self) -> Result<String, String> {
        let name = self.cols.get(self.at).map_or("?", |c| c.name);
        self.text_opt()?
            .ok_or_else(|| format!("column {name}: null"))
    }

    fn list_opt(&mut self) -> Result<Option<Vec<i64>>, String> {
        match self.next() {
            (Cell::Null, _) => Ok(None),
            (Cell::List(l), _) => Ok(Some(l)),
            (other, name) => Err(format!("column {name}: {other:?}")),
        }
    }
}

fn micros(us: i64) -> Timestamp {
    Timestamp::from_unix_nanos(us.saturating_mul(1000))
}

fn t(ts: Timestamp) -> CellRef<'static> {
    CellRef::Int(ts.unix_micros())
}

fn t_opt(ts: Option<Timestamp>) -> CellRef<'static> {
    ts.map_or(CellRef::Null, t)
}

fn i_opt(v: Option<i64>) -> CellRef<'static> {
    v.map_or(CellRef::Null, CellRef::Int)
}

fn b_opt(v: Option<bool>) -> CellRef<'static> {
    v.map_or(CellRef::Null, CellRef::Bool)
}

fn s(v: &str) -> CellRef<'_> {
    CellRef::Bytes(v.as_bytes())
}

fn s_opt(v: Option<&str>) -> CellRef<'_> {
    v.map_or(CellRef::Null, s)
}

fn l_opt(v: Option<&[i64]>) -> CellRef<'_> {
    v.map_or(CellRef::Null, CellRef::List)
}

/// A row of `krakenbook_book`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookRec {
    /// Kraken's timestamp.
    pub timestamp: Timestamp,
    /// When the first copy was read.
    pub received_at: Timestamp,
    /// The first copy's journal seq.
    pub seq: i64,
    /// The first copy's connection.
    pub conn_id: i64,
    /// Kraken's CRC32, its bits as stored (`integer`).
    pub checksum: Option<i32>,
    /// The collector's name.
    pub collector: String,
    /// How many of the levels are bids.
    pub n_bids: i16,
    /// `s` snapshot, `u` update.
    pub kind: i8,
    /// The collector's verdict on the first copy.
    pub checksum_ok: Option<bool>,
    /// The pair.
    pub symbol: String,
    /// dec64 price, qty, ... (bids first).
    pub levels: Option<Vec<i64>>,
    /// The frame, when the row alone does not rebuild it.
    pub raw: Option<String>,
    /// Further copies, packed.
    pub dups: Option<Vec<i64>>,
}

impl Record for BookRec {
    const DATASET: Dataset = Dataset::Book;
    const COLUMNS: &'static [Col] = &[
        Col::delta("timestamp", Kind::Micros),
        Col::req("received_at", Kind::Micros),
        Col::req("seq", Kind::Int64),
        Col::req("conn_id", Kind::Int64),
        Col::opt("checksum", Kind::UInt32),
        Col::req("collector", Kind::Text),
        Col::req("n_bids", Kind::Int16),
        Col::req("kind", Kind::Text),
        Col::opt("checksum_ok", Kind::Bool),
        Col::req("symbol", Kind::Text),
        Col::opt("levels", Kind::Int64List),
        Col::opt("raw", Kind::Json),
        Col::opt("dups", Kind::Int64List),
    ];

    fn cells(&self) -> Vec<CellRef<'_>> {
        vec![
            t(self.timestamp),
            t(self.received_at),
            CellRef::Int(self.seq),
            CellRef::Int(self.conn_id),
            i_opt(self.checksum.map(|c| i64::from(c as u32))),
            s(&self.collector),
            CellRef::Int(i64::from(self.n_bids)),
            // The table's check allows `s` and `u` only.
            CellRef::Bytes(match self.kind as u8 {
                b's' => b"s",
                b'u' => b"u",
                _ => b"?",
            }),
            b_opt(self.checksum_ok),
            s(&self.symbol),
            l_opt(self.levels.as_deref()),
            s_opt(self.raw.as_deref()),
            l_opt(self.dups.as_deref()),
        ]
    }

    fn from_cells(cells: Vec<Cell>) -> Result<Self, String> {
        let mut f = Fields::new(cells, Self::COLUMNS)?;
        Ok(BookRec {
            timestamp: f.time()?,
            received_at: f.time()?,
            seq: f.int()?,
            conn_id: f.int()?,
            checksum: f.int_opt()?.map(|c| c as u32 as i32),
            collector: f.text()?,
            n_bids: i16::try_from(f.int()?).map_err(|e| format!("column n_bids: {e}"))?,
            kind: match f.text()?.as_bytes() {
                [k] => *k as i8,
                other => return Err(format!("column kind: {other:?}")),
            },
            checksum_ok: f.bool_opt()?,
            symbol: f.text()?,
            levels: f.list_opt()?,
            raw: f.text_opt()?,
            dups: f.list_opt()?,
        })
    }

    fn time(&self) -> Timestamp {
        self.timestamp
    }

    fn symbol(&self) -> Option<&str> {
        Some(&self.symbol)
    }
}

impl BookRec {
    /// The SELECT that reads a range's rows, ordered as the files are: by symbol, then time,
    /// collector and seq.
    pub const SELECT: &'static str = "SELECT b.\"timestamp\", b.received_at, b.seq, b.conn_id, \
        b.checksum, k.name, b.n_bids, b.kind, b.checksum_ok, b.symbol, b.levels, b.raw::text, \
        (CASE WHEN b.dup IS NOT NULL THEN array_prepend(b.dup, coalesce(b.dups, '{}'::bigint[])) END) \
        FROM krakenbook_book b JOIN krakenbook_collectors k ON k.id = b.collector_id \
        WHERE b.\"timestamp\" >= $1 AND b.\"timestamp\" < $2 \
        ORDER BY b.symbol, b.\"timestamp\", k.name, b.seq";

    fn from_row(r: &Row) -> Result<BookRec, tokio_postgres::Error> {
        Ok(BookRec {
            timestamp: r.try_get(0)?,
            received_at: r.try_get(1)?,
            seq: r.try_get(2)?,
            conn_id: r.try_get(3)?,
            checksum: r.try_get(4)?,
            collector: r.try_get(5)?,
            n_bids: r.try_get(6)?,
            kind: r.try_get(7)?,
            checksum_ok: r.try_get(8)?,
            symbol: r.try_get(9)?,
            levels: r.try_get(10)?,
            raw: r.try_get(11)?,
            dups: r.try_get(12)?,
        })
    }

    /// Every received copy of the message: (connection, seq, verdict), the first copy first.
    pub fn copies(&self) -> Vec<(i64, i64, Option<bool>)> {
        let mut out = vec![(self.conn_id, self.seq, self.checksum_ok)];
        for d in self.dups.iter().flatten() {
            let (conn, seq, verdict, _) = crate::store::book_rows::unpack_dup(*d);
            out.push((self.conn_id + conn, self.seq + seq, verdict));
        }
        out
    }
}

/// A row of `krakenbook_other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherRec {
    /// Kraken's timestamp (or the receive time).
    pub timestamp: Timestamp,
    /// When it was read.
    pub received_at: Timestamp,
    /// The collector.
    pub collector: Option<String>,
    /// Journal seq.
    pub seq: Option<i64>,
    /// Connection.
    pub conn_id: Option<i64>,
    /// Frame number on the connection.
    pub conn_seq: Option<i64>,
    /// Channel.
    pub channel: String,
    /// Message type.
    pub message_type: String,
    /// Symbol.
    pub symbol: Option<String>,
    /// Checksum.
    pub checksum: Option<i64>,
    /// Verdict.
    pub checksum_ok: Option<bool>,
    /// The frame as `jsonb` text.
    pub raw_message: Option<String>,
    /// The frame as text (not JSON).
    pub raw_text: Option<String>,
    /// The frame as bytes (not UTF-8).
    pub raw_bytes: Option<Vec<u8>>,
    /// Best bid price (exact `numeric` text).
    pub best_bid_price: Option<String>,
    /// Best bid quantity.
    pub best_bid_qty: Option<String>,
    /// Best ask price.
    pub best_ask_price: Option<String>,
    /// Best ask quantity.
    pub best_ask_qty: Option<String>,
}

impl Record for OtherRec {
    const DATASET: Dataset = Dataset::Other;
    const COLUMNS: &'static [Col] = &[
        Col::delta("timestamp", Kind::Micros),
        Col::req("received_at", Kind::Micros),
        Col::opt("collector", Kind::Text),
        Col::opt("seq", Kind::Int64),
        Col::opt("conn_id", Kind::Int64),
        Col::opt("conn_seq", Kind::Int64),
        Col::req("channel", Kind::Text),
        Col::req("message_type", Kind::Text),
        Col::opt("symbol", Kind::Text),
        Col::opt("checksum", Kind::Int64),
        Col::opt("checksum_ok", Kind::Bool),
        Col::opt("raw_message", Kind::Json),
        Col::opt("raw_text", Kind::Text),
        Col::opt("raw_bytes", Kind::Bytes),
        Col::opt("best_bid_price", Kind::Text),
        Col::opt("best_bid_qty", Kind::Text),
        Col::opt("best_ask_price", Kind::Text),
        Col::opt("best_ask_qty", Kind::Text),
    ];

    fn cells(&self) -> Vec<CellRef<'_>> {
        vec![
            t(self.timestamp),
            t(self.received_at),
            s_opt(self.collector.as_deref()),
            i_opt(self.seq),
            i_opt(self.conn_id),
            i_opt(self.conn_seq),
            s(&self.channel),
            s(&self.message_type),
            s_opt(self.symbol.as_deref()),
            i_opt(self.checksum),
            b_opt(self.checksum_ok),
            s_opt(self.raw_message.as_deref()),
            s_opt(self.raw_text.as_deref()),
            self.raw_bytes
                .as_deref()
                .map_or(CellRef::Null, CellRef::Bytes),
            s_opt(self.best_bid_price.as_deref()),
            s_opt(self.best_bid_qty.as_deref()),
            s_opt(self.best_ask_price.as_deref()),
            s_opt(self.best_ask_qty.as_deref()),
        ]
    }

    fn from_cells(cells: Vec<Cell>) -> Result<Self, String> {
        let mut f = Fields::new(cells, Self::COLUMNS)?;
        Ok(OtherRec {
            timestamp: f.time()?,
            received_at: f.time()?,
            collector: f.text_opt()?,
            seq: f.int_opt()?,
            conn_id: f.int_opt()?,
            conn_seq: f.int_opt()?,
            channel: f.text()?,
            message_type: f.text()?,
            symbol: f.text_opt()?,
            checksum: f.int_opt()?,
            checksum_ok: f.bool_opt()?,
            raw_message: f.text_opt()?,
            raw_text: f.text_opt()?,
            raw_bytes: f.bytes_opt()?,
            best_bid_price: f.text_opt()?,
            best_bid_qty: f.text_opt()?,
            best_ask_price: f.text_opt()?,
            best_ask_qty: f.text_opt()?,
        })
    }

    fn time(&self) -> Timestamp {
        self.timestamp
    }

    fn symbol(&self) -> Option<&str> {
        self.symbol.as_deref()
    }
}

impl OtherRec {
    /// The SELECT of a range's rows, in file order.
    pub const SELECT: &'static str = "SELECT \"timestamp\", received_at, collector, seq, conn_id, \
        conn_seq, channel, message_type, symbol, checksum, checksum_ok, raw_message::text, raw_text, \
        raw_bytes, best_bid_price::text, best_bid_qty::text, best_ask_price::text, best_ask_qty::text \
        FROM krakenbook_other WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2 \
        ORDER BY symbol NULLS FIRST, \"timestamp\", collector, seq";

    fn from_row(r: &Row) -> Result<OtherRec, tokio_postgres::Error> {
        Ok(OtherRec {
            timestamp: r.try_get(0)?,
            received_at: r.try_get(1)?,
            collector: r.try_get(2)?,
            seq: r.try_get(3)?,
            conn_id: r.try_get(4)?,
            conn_seq: r.try_get(5)?,
            channel: r.try_get(6)?,
            message_type: r.try_get(7)?,
            symbol: r.try_get(8)?,
            checksum: r.try_get(9)?,
            checksum_ok: r.try_get(10)?,
            raw_message: r.try_get(11)?,
            raw_text: r.try_get(12)?,
            raw_bytes: r.try_get(13)?,
            best_bid_price: r.try_get(14)?,
            best_bid_qty: r.try_get(15)?,
            best_ask_price: r.try_get(16)?,
            best_ask_qty: r.try_get(17)?,
        })
    }
}

/// A row of `kraken_book_states`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateRec {
    /// Kraken's timestamp of the state.
    pub timestamp: Timestamp,
    /// Receive time.
    pub received_at: Timestamp,
    /// Collector.
    pub collector: String,
    /// Journal seq.
    pub seq: i64,
    /// Connection.
    pub conn_id: i64,
    /// Symbol.
    pub symbol: String,
    /// Subscribed depth.
    pub depth: i32,
    /// Price decimals.
    pub price_precision: i16,
    /// Quantity decimals.
    pub qty_precision: i16,
    /// The book's checksum.
    pub checksum: i64,
    /// Bids as `jsonb` text.
    pub bids: String,
    /// Asks as `jsonb` text.
    pub asks: String,
}

impl Record for StateRec {
    const DATASET: Dataset = Dataset::States;
    const COLUMNS: &'static [Col] = &[
        Col::delta("timestamp", Kind::Micros),
        Col::req("received_at", Kind::Micros),
        Col::req("collector", Kind::Text),
        Col::req("seq", Kind::Int64),
        Col::req("conn_id", Kind::Int64),
        Col::req("symbol", Kind::Text),
        Col::req("depth", Kind::Int32),
        Col::req("price_precision", Kind::Int16),
        Col::req("qty_precision", Kind::Int16),
        Col::req("checksum", Kind::Int64),
        Col::req("bids", Kind::Json),
        Col::req("asks", Kind::Json),
    ];

    fn cells(&self) -> Vec<CellRef<'_>> {
        vec![
            t(self.timestamp),
            t(self.received_at),
            s(&self.collector),
            CellRef::Int(self.seq),
            CellRef::Int(self.conn_id),
            s(&self.symbol),
            CellRef::Int(i64::from(self.depth)),
            CellRef::Int(i64::from(self.price_precision)),
            CellRef::Int(i64::from(self.qty_precision)),
            CellRef::Int(self.checksum),
            s(&self.bids),
            s(&self.asks),
        ]
    }

    fn from_cells(cells: Vec<Cell>) -> Result<Self, String> {
        let mut f = Fields::new(cells, Self::COLUMNS)?;
        let small =
            |v: i64, name: &str| i16::try_from(v).map_err(|e| format!("column {name}: {e}"));
        Ok(StateRec {
            timestamp: f.time()?,
            received_at: f.time()?,
            collector: f.text()?,
            seq: f.int()?,
            conn_id: f.int()?,
            symbol: f.text()?,
            depth: i32::try_from(f.int()?).map_err(|e| format!("column depth: {e}"))?,
            price_precision: small(f.int()?, "price_precision")?,
            qty_precision: small(f.int()?, "qty_precision")?,
            checksum: f.int()?,
            bids: f.text()?,
            asks: f.text()?,
        })
    }

    fn time(&self) -> Timestamp {
        self.timestamp
    }

    fn symbol(&self) -> Option<&str> {
        Some(&self.symbol)
    }
}

impl StateRec {
    /// The SELECT of a range's rows, in file order.
    pub const SELECT: &'static str = "SELECT \"timestamp\", received_at, collector, seq, conn_id, \
        symbol, depth, price_precision, qty_precision, checksum, bids::text, asks::text \
        FROM kraken_book_states WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2 \
        ORDER BY symbol, \"timestamp\", collector, seq";

    fn from_row(r: &Row) -> Result<StateRec, tokio_postgres::Error> {
        Ok(StateRec {
            timestamp: r.try_get(0)?,
            received_at: r.try_get(1)?,
            collector: r.try_get(2)?,
            seq: r.try_get(3)?,
            conn_id: r.try_get(4)?,
            symbol: r.try_get(5)?,
            depth: r.try_get(6)?,
            price_precision: r.try_get(7)?,
            qty_precision: r.try_get(8)?,
            checksum: r.try_get(9)?,
            bids: r.try_get(10)?,
            asks: r.try_get(11)?,
        })
    }
}

/// A row of `kraken_feed_events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRec {
    /// When.
    pub time: Timestamp,
    /// Collector.
    pub collector: String,
    /// Journal seq.
    pub seq: i64,
    /// Connection.
    pub conn_id: Option<i64>,
    /// What happened.
    pub event: String,
    /// Symbol.
    pub symbol: Option<String>,
    /// Start of a gap.
    pub gap_start: Option<Timestamp>,
    /// Detail.
    pub detail: Option<String>,
}

impl Record for EventRec {
    const DATASET: Dataset = Dataset::Events;
    const COLUMNS: &'static [Col] = &[
        Col::req("time", Kind::Micros),
        Col::req("collector", Kind::Text),
        Col::delta("seq", Kind::Int64),
        Col::opt("conn_id", Kind::Int64),
        Col::req("event", Kind::Text),
        Col::opt("symbol", Kind::Text),
        Col::opt("gap_start", Kind::Micros),
        Col::opt("detail", Kind::Text),
    ];

    fn cells(&self) -> Vec<CellRef<'_>> {
        vec![
            t(self.time),
            s(&self.collector),
            CellRef::Int(self.seq),
            i_opt(self.conn_id),
            s(&self.event),
            s_opt(self.symbol.as_deref()),
            t_opt(self.gap_start),
            s_opt(self.detail.as_deref()),
        ]
    }

    fn from_cells(cells: Vec<Cell>) -> Result<Self, String> {
        let mut f = Fields::new(cells, Self::COLUMNS)?;
        Ok(EventRec {
            time: f.time()?,
            collector: f.text()?,
            seq: f.int()?,
            conn_id: f.int_opt()?,
            event: f.text()?,
            symbol: f.text_opt()?,
            gap_start: f.time_opt()?,
            detail: f.text_opt()?,
        })
    }

    fn time(&self) -> Timestamp {
        self.time
    }

    fn symbol(&self) -> Option<&str> {
        self.symbol.as_deref()
    }
}

impl EventRec {
    /// The SELECT of a range's rows, in file order.
    pub const SELECT: &'static str = "SELECT time, collector, seq, conn_id, event, symbol, \
        gap_start, detail FROM kraken_feed_events WHERE time >= $1 AND time < $2 \
        ORDER BY collector, seq";

    fn from_row(r: &Row) -> Result<EventRec, tokio_postgres::Error> {
        Ok(EventRec {
            time: r.try_get(0)?,
            collector: r.try_get(1)?,
            seq: r.try_get(2)?,
            conn_id: r.try_get(3)?,
            event: r.try_get(4)?,
            symbol: r.try_get(5)?,
            gap_start: r.try_get(6)?,
            detail: r.try_get(7)?,
        })
    }
}

/// A row of `krakenbook_connections` (archived as a copy: the table stays in the database).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRec {
    /// Collector.
    pub collector: String,
    /// Connection.
    pub conn_id: i64,
    /// First frame's seq.
    pub first_seq: i64,
    /// Last frame's seq.
    pub last_seq: i64,
    /// First frame's receive time.
    pub first_received_at: Timestamp,
    /// Last frame's receive time.
    pub last_received_at: Timestamp,
    /// Latest Kraken timestamp among its frames.
    pub last_frame_timestamp: Option<Timestamp>,
}

impl Record for ConnRec {
    const DATASET: Dataset = Dataset::Connections;
    const COLUMNS: &'static [Col] = &[
        Col::req("collector", Kind::Text),
        Col::req("conn_id", Kind::Int64),
        Col::req("first_seq", Kind::Int64),
        Col::req("last_seq", Kind::Int64),
        Col::req("first_received_at", Kind::Micros),
        Col::req("last_received_at", Kind::Micros),
        Col::opt("last_frame_timestamp", Kind::Micros),
    ];

    fn cells(&self) -> Vec<CellRef<'_>> {
        vec![
            s(&self.collector),
            CellRef::Int(self.conn_id),
            CellRef::Int(self.first_seq),
            CellRef::Int(self.last_seq),
            t(self.first_received_at),
            t(self.last_received_at),
            t_opt(self.last_frame_timestamp),
        ]
    }

    fn from_cells(cells: Vec<Cell>) -> Result<Self, String> {
        let mut f = Fields::new(cells, Self::COLUMNS)?;
        Ok(ConnRec {
            collector: f.text()?,
            conn_id: f.int()?,
            first_seq: f.int()?,
            last_seq: f.int()?,
            first_received_at: f.time()?,
            last_received_at: f.time()?,
            last_frame_timestamp: f.time_opt()?,
        })
    }

    fn time(&self) -> Timestamp {
        self.first_received_at
    }

    fn symbol(&self) -> Option<&str> {
        None
    }
}

impl ConnRec {
    /// The SELECT of the connections that overlap a range.
    pub const SELECT: &'static str = "SELECT collector, conn_id, first_seq, last_seq, \
        first_received_at, last_received_at, last_frame_timestamp FROM krakenbook_connections \
        WHERE first_received_at < $2 AND last_received_at >= $1 ORDER BY collector, conn_id";

    fn from_row(r: &Row) -> Result<ConnRec, tokio_postgres::Error> {
        Ok(ConnRec {
            collector: r.try_get(0)?,
            conn_id: r.try_get(1)?,
            first_seq: r.try_get(2)?,
            last_seq: r.try_get(3)?,
            first_received_at: r.try_get(4)?,
            last_received_at: r.try_get(5)?,
            last_frame_timestamp: r.try_get(6)?,
        })
    }
}

/// A record the database gives (the range's rows, streamed in file order).
pub trait DbRecord: Record {
    /// Its SELECT (`$1`, `$2`: the range).
    const SQL: &'static str;
    /// The record of a row.
    fn from_db(row: &Row) -> Result<Self, tokio_postgres::Error>;
}

impl DbRecord for BookRec {
    const SQL: &'static str = BookRec::SELECT;
    fn from_db(row: &Row) -> Result<Self, tokio_postgres::Error> {
        BookRec::from_row(row)
    }
}
impl DbRecord for OtherRec {
    const SQL: &'static str = OtherRec::SELECT;
    fn from_db(row: &Row) -> Result<Self, tokio_postgres::Error> {
        OtherRec::from_row(row)
    }
}
impl DbRecord for StateRec {
    const SQL: &'static str = StateRec::SELECT;
    fn from_db(row: &Row) -> Result<Self, tokio_postgres::Error> {
        StateRec::from_row(row)
    }
}
impl DbRecord for EventRec {
    const SQL: &'static str = EventRec::SELECT;
    fn from_db(row: &Row) -> Result<Self, tokio_postgres::Error> {
        EventRec::from_row(row)
    }
}
impl DbRecord for ConnRec {
    const SQL: &'static str = ConnRec::SELECT;
    fn from_db(row: &Row) -> Result<Self, tokio_postgres::Error> {
        ConnRec::from_row(row)
    }
}

/// Streams the rows of `[from, to)` of `R`'s table to `each`, in file order.
pub async fn for_each_in_range<R: DbRecord>(
    client: &impl GenericClient,
    from: Timestamp,
    to: Timestamp,
    mut each: impl FnMut(R) -> Result<(), crate::ArchiveError>,
) -> Result<u64, crate::ArchiveError> {
    let db = |e| crate::ArchiveError::Db {
        context: format!("reading the {} rows of the range", R::DATASET.dir()),
        source: e,
    };
    let params: [&(dyn ToSql + Sync); 2] = [&from, &to];
    let rows = client
        .query_raw(R::SQL, params.iter().copied())
        .await
        .map_err(db)?;
    let mut rows = pin!(rows);
    let mut n = 0;
    while let Some(row) = rows.try_next().await.map_err(db)? {
        each(R::from_db(&row).map_err(db)?)?;
        n += 1;
    }
    Ok(n)
}

/// `jsonb` from its text, for binary `COPY` (version byte 1, then the text).
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

fn numeric(text: Option<&str>, column: &str) -> Result<Option<Decimal>, crate::ArchiveError> {
    text.map(|t| {
        Decimal::parse(t).map_err(|e| crate::ArchiveError::Invalid {
            what: format!("{column} {t:?} of an archived row"),
            reason: e.to_string(),
        })
    })
    .transpose()
}

/// The temporary tables a mount fills, and the views that stand in for the tables.
pub const TEMP_TABLES: &[(&str, &str)] = &[
    ("krakenbook_book", "krakenbook_archived_book"),
    ("krakenbook_other", "krakenbook_archived_other"),
    ("kraken_book_states", "krakenbook_archived_states"),
    ("kraken_feed_events", "krakenbook_archived_events"),
];

/// Copies records into their temporary table (binary `COPY`). `collector_ids`: the
/// `krakenbook_collectors` ids by name (book rows carry the name in the archive).
pub async fn copy_into<R: CopyRecord>(
    client: &Client,
    records: &[R],
    collector_ids: &HashMap<String, i16>,
) -> Result<(), crate::ArchiveError> {
    if records.is_empty() {
        return Ok(());
    }
    let db = |e| crate::ArchiveError::Db {
        context: format!(
            "copying archived {} rows into the session",
            R::DATASET.dir()
        ),
        source: e,
    };
    let sink = client.copy_in(R::COPY).await.map_err(db)?;
    let writer = BinaryCopyInWriter::new(sink, R::TYPES);
    let mut writer = pin!(writer);
    for r in records {
        r.write(writer.as_mut(), collector_ids).await?;
    }
    writer.finish().await.map_err(db)?;
    Ok(())
}

type Sink<'a> = std::pin::Pin<&'a mut BinaryCopyInWriter>;

/// A record that a mount copies into a temporary table.
pub trait CopyRecord: Record {
    /// The COPY statement (binary).
    const COPY: &'static str;
    /// The column types, in the COPY's order.
    const TYPES: &'static [Type];
    /// Writes the record.
    fn write<'a>(
        &'a self,
        w: Sink<'a>,
        collector_ids: &'a HashMap<String, i16>,
    ) -> impl std::future::Future<Output = Result<(), crate::ArchiveError>> + Send + 'a;
}

fn copy_err(e: tokio_postgres::Error) -> crate::ArchiveError {
    crate::ArchiveError::Db {
        context: "copying archived rows into the session".into(),
        source: e,
    }
}

impl CopyRecord for BookRec {
    const COPY: &'static str = "COPY pg_temp.krakenbook_archived_book (\"timestamp\", received_at, \
        seq, conn_id, dup, checksum, collector_id, n_bids, kind, checksum_ok, symbol, levels, raw, \
        dups) FROM STDIN (FORMAT binary)";
    const TYPES: &'static [Type] = &[
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT4,
        Type::INT2,
        Type::INT2,
        Type::CHAR,
        Type::BOOL,
        Type::TEXT,
        Type::INT8_ARRAY,
        Type::JSONB,
        Type::INT8_ARRAY,
    ];

    async fn write<'a>(
        &'a self,
        w: Sink<'a>,
        collector_ids: &'a HashMap<String, i16>,
    ) -> Result<(), crate::ArchiveError> {
        let id = *collector_ids
            .get(&self.collector)
            .ok_or_else(|| crate::ArchiveError::Invalid {
                what: format!("collector {}", krakenbook_core::text::printable(&self.collector)),
                reason: "an archived row names a collector that krakenbook_collectors does not hold (the archive is of another database?)".into(),
            })?;
        let raw = self.raw.as_deref().map(Jsonb);
        // Every further copy is one list in the files; the table keeps the first in `dup`.
        let dup: Option<i64> = self.dups.as_ref().and_then(|d| d.first().copied());
        let dups: Option<Vec<i64>> = self
            .dups
            .as_ref()
            .filter(|d| d.len() > 1)
            .map(|d| d[1..].to_vec());
        w.write(&[
            &self.timestamp,
            &self.received_at,
            &self.seq,
            &self.conn_id,
            &dup,
            &self.checksum,
            &id,
            &self.n_bids,
            &self.kind,
            &self.checksum_ok,
            &self.symbol,
            &self.levels,
            &raw,
            &dups,
        ])
        .await
        .map_err(copy_err)
    }
}

impl CopyRecord for OtherRec {
    const COPY: &'static str = "COPY pg_temp.krakenbook_archived_other (\"timestamp\", received_at, \
        collector, seq, conn_id, conn_seq, channel, message_type, symbol, checksum, checksum_ok, \
        raw_message, raw_text, raw_bytes, best_bid_price, best_bid_qty, best_ask_price, best_ask_qty) \
        FROM STDIN (FORMAT binary)";
    const TYPES: &'static [Type] = &[
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::BOOL,
        Type::JSONB,
        Type::TEXT,
        Type::BYTEA,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::NUMERIC,
        Type::NUMERIC,
    ];

    async fn write<'a>(
        &'a self,
        w: Sink<'a>,
        _: &'a HashMap<String, i16>,
    ) -> Result<(), crate::ArchiveError> {
        let raw = self.raw_message.as_deref().map(Jsonb);
        let bbp = numeric(self.best_bid_price.as_deref(), "best_bid_price")?;
        let bbq = numeric(self.best_bid_qty.as_deref(), "best_bid_qty")?;
        let bap = numeric(self.best_ask_price.as_deref(), "best_ask_price")?;
        let baq = numeric(self.best_ask_qty.as_deref(), "best_ask_qty")?;
        w.write(&[
            &self.timestamp,
            &self.received_at,
            &self.collector,
            &self.seq,
            &self.conn_id,
            &self.conn_seq,
            &self.channel,
            &self.message_type,
            &self.symbol,
            &self.checksum,
            &self.checksum_ok,
            &raw,
            &self.raw_text,
            &self.raw_bytes,
            &bbp,
            &bbq,
            &bap,
            &baq,
        ])
        .await
        .map_err(copy_err)
    }
}

impl CopyRecord for StateRec {
    const COPY: &'static str = "COPY pg_temp.krakenbook_archived_states (\"timestamp\", received_at, \
        collector, seq, conn_id, symbol, depth, price_precision, qty_precision, checksum, bids, asks) \
        FROM STDIN (FORMAT binary)";
    const TYPES: &'static [Type] = &[
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT4,
        Type::INT2,
        Type::INT2,
        Type::INT8,
        Type::JSONB,
        Type::JSONB,
    ];

    async fn write<'a>(
        &'a self,
        w: Sink<'a>,
        _: &'a HashMap<String, i16>,
    ) -> Result<(), crate::ArchiveError> {
        w.write(&[
            &self.timestamp,
            &self.received_at,
            &self.collector,
            &self.seq,
            &self.conn_id,
            &self.symbol,
            &self.depth,
            &self.price_precision,
            &self.qty_precision,
            &self.checksum,
            &Jsonb(&self.bids),
            &Jsonb(&self.asks),
        ])
        .await
        .map_err(copy_err)
    }
}

impl CopyRecord for EventRec {
    const COPY: &'static str = "COPY pg_temp.krakenbook_archived_events (time, collector, seq, \
        conn_id, event, symbol, gap_start, detail) FROM STDIN (FORMAT binary)";
    const TYPES: &'static [Type] = &[
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TEXT,
    ];

    async fn write<'a>(
        &'a self,
        w: Sink<'a>,
        _: &'a HashMap<String, i16>,
    ) -> Result<(), crate::ArchiveError> {
        w.write(&[
            &self.time,
            &self.collector,
            &self.seq,
            &self.conn_id,
            &self.event,
            &self.symbol,
            &self.gap_start,
            &self.detail,
        ])
        .await
        .map_err(copy_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    fn round_trip<R: Record + PartialEq + std::fmt::Debug>(r: R) {
        let cells: Vec<Cell> = r
            .cells()
            .into_iter()
            .map(|c| match c {
                CellRef::Null => Cell::Null,
                CellRef::Int(v) => Cell::Int(v),
                CellRef::Bool(b) => Cell::Bool(b),
                CellRef::Bytes(b) => Cell::Bytes(b.to_vec()),
                CellRef::List(l) => Cell::List(l.to_vec()),
            })
            .collect();
        assert_eq!(cells.len(), R::COLUMNS.len());
        assert_eq!(R::from_cells(cells).unwrap(), r);
    }

    #[test]
    fn every_record_round_trips_through_its_cells() {
        round_trip(BookRec {
            timestamp: ts("2026-12-06T10:00:00.123456Z"),
            received_at: ts("2026-12-06T10:00:00.200001Z"),
            seq: 42,
            conn_id: 3,
            checksum: Some(-5),
            collector: "colA".into(),
            n_bids: 1,
            kind: b'u' as i8,
            checksum_ok: Some(true),
            symbol: "BTC/USD".into(),
            levels: Some(vec![627_975 * 32 + 1, 150 * 32 + 2]),
            raw: None,
            dups: Some(vec![
                crate::store::book_rows::pack_dup(1, 2, Some(false), -7).unwrap(),
            ]),
        });
        round_trip(BookRec {
            timestamp: ts("2026-12-06T10:00:00Z"),
            received_at: ts("2026-12-06T10:00:00Z"),
            seq: 1,
            conn_id: 1,
            checksum: None,
            collector: "c".into(),
            n_bids: 0,
            kind: b's' as i8,
            checksum_ok: None,
            symbol: "X/Y".into(),
            levels: None,
            raw: Some(r#"{"a": 1}"#.into()),
            dups: None,
        });
        round_trip(OtherRec {
            timestamp: ts("2026-12-06T10:00:00Z"),
            received_at: ts("2026-12-06T10:00:01Z"),
            collector: Some("c".into()),
            seq: Some(5),
            conn_id: None,
            conn_seq: Some(9),
            channel: "status".into(),
            message_type: "malformed".into(),
            symbol: None,
            checksum: Some(4_294_967_295),
            checksum_ok: Some(false),
            raw_message: None,
            raw_text: Some("not json".into()),
            raw_bytes: Some(vec![0xff, 0]),
            best_bid_price: Some("62802.50".into()),
            best_bid_qty: None,
            best_ask_price: None,
            best_ask_qty: Some("0.00005100".into()),
        });
        round_trip(StateRec {
            timestamp: ts("2026-12-06T10:00:00Z"),
            received_at: ts("2026-12-06T10:00:01Z"),
            collector: "c".into(),
            seq: 7,
            conn_id: 2,
            symbol: "BTC/USD".into(),
            depth: 1000,
            price_precision: 1,
            qty_precision: 8,
            checksum: 3_000_000_000,
            bids: r#"[["1.5", "2.00"]]"#.into(),
            asks: "[]".into(),
        });
        round_trip(EventRec {
            time: ts("2026-12-06T10:00:00Z"),
            collector: "c".into(),
            seq: 7,
            conn_id: Some(2),
            event: "subscribed".into(),
            symbol: Some("BTC/USD".into()),
            gap_start: Some(ts("2026-12-06T09:00:00Z")),
            detail: None,
        });
        round_trip(ConnRec {
            collector: "c".into(),
            conn_id: 2,
            first_seq: 1,
            last_seq: 100,
            first_received_at: ts("2026-12-06T09:00:00Z"),
            last_received_at: ts("2026-12-06T10:00:00Z"),
            last_frame_timestamp: None,
        });
    }

    #[test]
    fn a_book_rows_copies_are_its_first_copy_and_each_packed_one() {
        let dup = crate::store::book_rows::pack_dup(1, 3, Some(false), 20).unwrap();
        let r = BookRec {
            timestamp: ts("2026-12-06T10:00:00Z"),
            received_at: ts("2026-12-06T10:00:00Z"),
            seq: 100,
            conn_id: 4,
            checksum: Some(1),
            collector: "c".into(),
            n_bids: 0,
            kind: b'u' as i8,
            checksum_ok: Some(true),
            symbol: "X/Y".into(),
            levels: Some(Vec::new()),
            raw: None,
            dups: Some(vec![dup]),
        };
        assert_eq!(
            r.copies(),
            vec![(4, 100, Some(true)), (5, 103, Some(false))]
        );
    }
}
