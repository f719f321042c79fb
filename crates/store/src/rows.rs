//! Records to rows: the binary COPY encoding of book rows, other frames, feed events and book
//! states (schema version 6).
//!
//! A [`RowEncoder`] turns [`Record`]s into the binary COPY streams of the four tables, decoding
//! each frame once with [`kraken::decode`], except a book frame in Kraken's layout (exact, or
//! spaced otherwise, or its members in another order), whose row [`super::canonical::read`]
//! takes in one pass (the same columns). A book message becomes
//! one `krakenbook_book` row ([`super::book_rows`]: levels as dec64, the frame only when the
//! views would not rebuild it, copies on other connections merged into their first copy's row);
//! the book stream is taken while the batch is encoded ([`RowEncoder::take_book`]), the rest at
//! [`RowEncoder::finish`].
//!
//! What must always hold:
//! - every frame record except a heartbeat is stored exactly once: a book message of one data
//!   element as a book row or as a copy packed in one (`dup`/`dups`, with its connection, seq,
//!   verdict and receive time), anything else as a `krakenbook_other` row; every level of a book
//!   row is in its `levels` in wire order (bids first), or in its `raw` frame when a value does
//!   not fit dec64;
//! - nothing is lost: a frame that is valid JSON goes to `raw_message` (jsonb); a frame that is not
//!   goes to `raw_text`, and bytes that are not text to `raw_bytes`, with
//!   `message_type = 'malformed'`; valid JSON that `jsonb` would refuse ([`jsonb_refusal`]: a
//!   `\u0000`, nesting deeper than the server's parser allows, a number `numeric` cannot hold)
//!   keeps its type, goes to `raw_text`, and gets a `stored_raw` event row saying why;
//! - a book frame the book table cannot hold (several data elements, more levels than a
//!   `smallint` counts) is stored whole as its real type in `krakenbook_other`, and a
//!   `stored_raw` event row says so (only a lying peer sends such a frame);
//! - [`RowEncoder::push_raw`] (the writer's fallback when the server refused a record's rows)
//!   writes the frame as received into `raw_text` or `raw_bytes` and nothing else of it (no
//!   `jsonb`, no symbol, no levels), with a `stored_raw` event row; [`RowEncoder::push_not_stored`]
//!   writes only a `not_stored` event row for a record the server refused even so; and
//!   [`RowEncoder::push_damage`] a `journal_damage` event row for records missing from the
//!   journal;
//! - every frame record (heartbeats included) updates its connection's liveness
//!   ([`RowEncoder::connections`]), written in the batch's transaction;
//! - `(collector, seq)` of a row (and of each packed copy) is its record's: ordering by it
//!   reproduces the received order;
//! - the encoder never fails on a frame's content; it fails only on a record that cannot be stored
//!   at all (a number beyond PostgreSQL's `bigint`), before anything of that record is written.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use super::book_rows::{BookRow, BookRows, Hashed, levels_dec64, row_rebuilds};
use super::canonical;
use super::types::{jsonb_refusal, put_numeric_field};
use crate::book::{Decimal, PriceLevel};
use crate::journal::Damage;
use crate::kraken::{self, BookData, BookMessage, DecodeError, Frame};
use crate::record::{BookState, EventKind, FeedEvent, FrameRecord, Record, RecordBody};
use crate::time::Timestamp;

/// `COPY` statement for [`Streams::messages`] (column order of the encoded rows): every frame
/// that is not a book message the book table holds.
pub const COPY_MESSAGES: &str = "COPY krakenbook_other (timestamp, received_at, collector, \
    seq, conn_id, conn_seq, channel, message_type, symbol, checksum, checksum_ok, raw_message, \
    raw_text, raw_bytes, best_bid_price, best_bid_qty, best_ask_price, best_ask_qty) \
    FROM STDIN (FORMAT binary)";
const MESSAGE_FIELDS: i16 = 18;

pub use super::book_rows::COPY_BOOK;

/// `COPY` statement for [`Streams::events`].
pub const COPY_EVENTS: &str = "COPY kraken_feed_events (time, collector, seq, conn_id, event, \
    symbol, gap_start, detail) FROM STDIN (FORMAT binary)";
const EVENT_FIELDS: i16 = 8;

/// `COPY` statement for [`Streams::states`].
pub const COPY_STATES: &str = "COPY kraken_book_states (timestamp, received_at, collector, seq, \
    conn_id, symbol, depth, price_precision, qty_precision, checksum, bids, asks) \
    FROM STDIN (FORMAT binary)";
const STATE_FIELDS: i16 = 12;

/// The binary COPY signature, flags and header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The most levels one message may have: the views number them with a `smallint` `ordinal` and
/// the book table counts bids in a `smallint` (Kraken's deepest book, 1000 levels a side, is far
/// below).
pub const MAX_LEVELS_PER_MESSAGE: usize = i16::MAX as usize + 1;

/// Rows encoded since the last [`RowEncoder::reset`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RowCounts {
    /// Messages stored (frames other than heartbeats): book rows plus other rows; a copy merged
    /// into an earlier book row is not one.
    pub messages: u64,
    /// Rows of `krakenbook_book`.
    pub book: u64,
    /// Copies merged into an earlier book row (`dups`).
    pub copies: u64,
    /// Book levels stored (in the book rows' `levels`).
    pub entries: u64,
    /// Feed-event rows.
    pub events: u64,
    /// Book-state rows.
    pub states: u64,
    /// Heartbeat frames (not stored).
    pub heartbeats: u64,
    /// Message rows of frames that could not be decoded (stored with `message_type = 'malformed'`).
    pub malformed: u64,
    /// Records stored in raw form (each with a `stored_raw` event row).
    pub stored_raw: u64,
    /// Records the server refused even in raw form (each a `not_stored` event row).
    pub not_stored: u64,
    /// Seqs missing from the journal (lost records, each range a `journal_damage` event row).
    pub damaged_seqs: u64,
}

impl std::ops::AddAssign for RowCounts {
    fn add_assign(&mut self, other: RowCounts) {
        self.messages += other.messages;
        self.book += other.book;
        self.copies += other.copies;
        self.entries += other.entries;
        self.events += other.events;
        self.states += other.states;
        self.heartbeats += other.heartbeats;
        self.malformed += other.malformed;
        self.stored_raw += other.stored_raw;
        self.not_stored += other.not_stored;
        self.damaged_seqs += other.damaged_seqs;
    }
}

/// What a batch tells about one connection: its first and last frame in the batch (heartbeats
/// included), and the latest Kraken timestamp among its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLiveness {
    /// The connection.
    pub conn_id: i64,
    /// Its first frame in the batch.
    pub first_seq: i64,
    /// That frame's receive time.
    pub first_received_at: Timestamp,
    /// Its last frame in the batch.
    pub last_seq: i64,
    /// That frame's receive time.
    pub last_received_at: Timestamp,
    /// The latest Kraken timestamp among its frames in the batch (book data, acks' `time_out`).
    pub last_frame_timestamp: Option<Timestamp>,
}

/// The text of [`UPSERT_CONNECTIONS`] (a macro, so that [`CLOSE_BATCH`] can hold it too).
macro_rules! upsert_connections {
    () => {
        "INSERT INTO krakenbook_connections AS c (collector, conn_id, \
    first_seq, first_received_at, last_seq, last_received_at, last_frame_timestamp) \
    SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::timestamptz[], $5::bigint[], \
    $6::timestamptz[], $7::timestamptz[]) \
    ON CONFLICT (collector, conn_id) DO UPDATE SET \
    first_seq = LEAST(c.first_seq, excluded.first_seq), \
    first_received_at = CASE WHEN excluded.first_seq < c.first_seq \
        THEN excluded.first_received_at ELSE c.first_received_at END, \
    last_seq = GREATEST(c.last_seq, excluded.last_seq), \
    last_received_at = CASE WHEN excluded.last_seq > c.last_seq \
        THEN excluded.last_received_at ELSE c.last_received_at END, \
    last_frame_timestamp = GREATEST(c.last_frame_timestamp, excluded.last_frame_timestamp)"
    };
}

/// The statement that merges a batch's [`ConnLiveness`] into `krakenbook_connections`
/// (parameters: collector, then arrays of conn_id, first_seq, first_received_at, last_seq,
/// last_received_at, last_frame_timestamp). A later batch moves the last frame forward, never back.
pub const UPSERT_CONNECTIONS: &str = upsert_connections!();

/// The statement that ends a batch: [`UPSERT_CONNECTIONS`] (parameters `$1` to `$7`) and the
/// collector's checkpoint moved to `$8`, in one statement (one message, one round trip). It
/// updates one row, the checkpoint's.
pub const CLOSE_BATCH: &str = concat!(
    "WITH live AS (",
    upsert_connections!(),
    ") UPDATE krakenbook_checkpoints SET seq = $8, updated_at = now() WHERE collector = $1"
);

/// The finished COPY streams of one batch, one a table.
#[derive(Debug)]
pub struct Streams {
    /// Rows of `krakenbook_other` ([`COPY_MESSAGES`]) not taken yet.
    pub messages: Bytes,
    /// Rows of `krakenbook_book` ([`COPY_BOOK`]).
    pub book: Bytes,
    /// Rows of `kraken_feed_events` ([`COPY_EVENTS`]).
    pub events: Bytes,
    /// Rows of `kraken_book_states` ([`COPY_STATES`]).
    pub states: Bytes,
}

/// A record that cannot be stored at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {seq} cannot be stored: {reason}")]
pub struct RowError {
    /// The record's seq.
    pub seq: u64,
    /// What is wrong.
    pub reason: &'static str,
}

/// Encodes records into the binary COPY streams of the messages, entries, events and book-state
/// tables.
pub struct RowEncoder {
    collector: String,
    collector_id: i16,
    messages: BytesMut,
    book: BytesMut,
    book_rows: BookRows,
    events: BytesMut,
    states: BytesMut,
    counts: RowCounts,
    conns: Vec<ConnLiveness>,
    /// Every frame takes the general path (decode, write back, compare), never
    /// [`canonical::read`]: for tests that compare the two.
    general_only: bool,
}

impl std::fmt::Debug for RowEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowEncoder")
            .field("collector", &self.collector)
            .field("counts", &self.counts)
            .field(
                "buffered_bytes",
                &(self.messages.len() + self.events.len() + self.states.len()),
            )
            .finish()
    }
}

impl RowEncoder {
    /// An encoder for the rows of collector `collector`, ready for the first record.
    pub fn new(collector: &str) -> RowEncoder {
        let mut e = RowEncoder {
            // PostgreSQL's text cannot hold NUL.
            collector: collector.replace('\0', "\u{FFFD}"),
            collector_id: 0,
            messages: BytesMut::with_capacity(64 * 1024),
            book: BytesMut::with_capacity(256 * 1024),
            book_rows: BookRows::default(),
            events: BytesMut::with_capacity(4096),
            states: BytesMut::with_capacity(4096),
            counts: RowCounts::default(),
            conns: Vec::new(),
            general_only: false,
        };
        e.reset();
        e
    }

    /// The collector name written in every row.
    pub fn collector(&self) -> &str {
        &self.collector
    }

    /// The collector's id in `krakenbook_collectors`, written in every book row (the writer
    /// registers the name and sets it before the first batch).
    pub fn set_collector_id(&mut self, id: i16) {
        self.collector_id = id;
    }

    /// The collector id set by [`RowEncoder::set_collector_id`] (0 until then).
    pub fn collector_id(&self) -> i16 {
        self.collector_id
    }

    /// Forgets everything encoded (keeping the buffers' memory) and starts four new COPY streams.
    pub fn reset(&mut self) {
        for buf in [
            &mut self.messages,
            &mut self.book,
            &mut self.events,
            &mut self.states,
        ] {
            buf.clear();
            buf.put_slice(COPY_HEADER);
        }
        self.book_rows.clear();
        self.counts = RowCounts::default();
        self.conns.clear();
    }

    /// The connections whose frames were encoded since the last reset, with their first and last
    /// frame ([`UPSERT_CONNECTIONS`] writes them).
    pub fn connections(&self) -> &[ConnLiveness] {
        &self.conns
    }

    /// Rows encoded since the last reset.
    pub fn counts(&self) -> RowCounts {
        self.counts
    }

    /// Encodes the book rows that no later copy can join any more (older than
    /// [`super::book_rows::MERGE_WINDOW`] rows) and returns the bytes of the book stream not yet
    /// taken, when there are at least `at_least` (for sending while encoding goes on).
    pub fn take_book(&mut self, at_least: usize) -> Option<Bytes> {
        self.book_rows
            .encode_aged(self.collector_id, &mut self.book);
        (self.book.len() >= at_least).then(|| self.book.split().freeze())
    }

    /// Ends the four streams and takes them. Call once per reset.
    pub fn finish(&mut self) -> Streams {
        let end = |buf: &mut BytesMut| {
            buf.put_i16(-1);
            buf.split().freeze()
        };
        self.book_rows.encode(self.collector_id, &mut self.book);
        Streams {
            messages: end(&mut self.messages),
            book: end(&mut self.book),
            events: end(&mut self.events),
            states: end(&mut self.states),
        }
    }

    /// Encodes one record's rows. On error nothing of the record has been written.
    pub fn push(&mut self, record: &Record) -> Result<(), RowError> {
        let ids = Ids::of(record)?;
        match &record.body {
            RecordBody::Frame(frame) => {
                let kraken_time = self.push_frame(&ids, frame);
                self.touch(&ids, kraken_time);
            }
            RecordBody::Event(event) => self.push_event(&ids, event),
            RecordBody::BookState(state) => self.push_state(&ids, state),
        }
        Ok(())
    }

    /// Encodes a frame record in raw form after the server refused its rows (`reason`, the
    /// server's error): a message row with the frame as received in `raw_text` (or `raw_bytes`
    /// when it is not text or holds NUL) and nothing decoded from it (no `jsonb`, symbol, checksum
    /// or entries), and a `stored_raw` event row. `Ok(false)`: the record is not a frame and has
    /// no raw form (nothing written).
    pub fn push_raw(&mut self, record: &Record, reason: &str) -> Result<bool, RowError> {
        let ids = Ids::of(record)?;
        let RecordBody::Frame(frame) = &record.body else {
            return Ok(false);
        };
        let (channel, message_type) = match std::str::from_utf8(&frame.bytes) {
            Ok(text) => match kraken::decode(text) {
                Ok(decoded) => {
                    let claim: Claim<'_> = match decoded {
                        Frame::Unknown(_) => serde_json::from_str(text).unwrap_or_default(),
                        _ => Claim::default(),
                    };
                    let other = other_frame_row(&ids, text, &decoded, &claim);
                    let kind = match &decoded {
                        Frame::Book(b) => b.kind.as_str(),
                        Frame::Heartbeat => "heartbeat",
                        _ => other.row.message_type,
                    };
                    (short(other.row.channel), short(kind))
                }
                Err(DecodeError::Shape { channel, .. }) => {
                    (short(&channel), "malformed".to_owned())
                }
                Err(DecodeError::Json { .. }) => ("unknown".to_owned(), "malformed".to_owned()),
            },
            Err(_) => ("unknown".to_owned(), "malformed".to_owned()),
        };
        let raw = match std::str::from_utf8(&frame.bytes) {
            Ok(text) if !text.contains('\0') => Raw::Text(text),
            _ => Raw::Bytes(&frame.bytes),
        };
        let row = MessageRow {
            timestamp: ids.received_at,
            channel: &channel,
            message_type: &message_type,
            symbol: None,
            checksum: None,
            raw,
            ids: &ids,
        };
        self.put_message(&row, frame);
        self.put_event_row(
            ids.received_at,
            ids.seq,
            Some(ids.conn_id),
            EventKind::StoredRaw,
            None,
            None,
            &format!(
                "the database refused the frame's rows ({reason}); stored as received in {}, without jsonb or entries",
                if matches!(row.raw, Raw::Text(_)) { "raw_text" } else { "raw_bytes" }
            ),
        );
        self.counts.stored_raw += 1;
        self.touch(&ids, None);
        Ok(true)
    }

    /// Encodes a `not_stored` event row standing for a record the server refused even in raw form
    /// (`reason`, the server's error): its seq, receive time and connection. The journal still
    /// holds the record.
    pub fn push_not_stored(&mut self, record: &Record, reason: &str) -> Result<(), RowError> {
        let ids = Ids::of(record)?;
        let what = match &record.body {
            RecordBody::Frame(_) => "frame",
            RecordBody::Event(_) => "feed event",
            RecordBody::BookState(_) => "book state",
        };
        self.put_event_row(
            ids.received_at,
            ids.seq,
            Some(ids.conn_id),
            EventKind::NotStored,
            None,
            None,
            &format!(
                "the database refused this {what} record even in raw form ({reason}); the journal still holds it"
            ),
        );
        self.counts.not_stored += 1;
        if matches!(record.body, RecordBody::Frame(_)) {
            self.touch(&ids, None);
        }
        Ok(())
    }

    /// Encodes a `journal_damage` event row for records missing from the journal: `seq` is the
    /// first missing seq at or after `from_seq` (seqs before it are already covered), `gap_start`
    /// the receive time of the last intact record before the damage, the row's time that of the
    /// first intact record after it (else the one before, else now); `detail` names the seq range,
    /// the cause, the segment and the byte offset. Damage that lost nothing
    /// ([`crate::journal::DamageKind::is_loss`] false) writes no row.
    pub fn push_damage(&mut self, damage: &Damage, from_seq: u64) -> Result<(), RowError> {
        if !damage.kind.is_loss() {
            return Ok(());
        }
        let first = damage.first_seq.max(from_seq);
        let seq = i64::try_from(first).map_err(|_| RowError {
            seq: first,
            reason: "seq exceeds bigint",
        })?;
        let time = damage
            .after
            .or(damage.before)
            .unwrap_or_else(Timestamp::now);
        self.put_event_row(
            time,
            seq,
            None,
            EventKind::JournalDamage,
            None,
            damage.before,
            &crate::text::printable(&damage.to_string()),
        );
        self.counts.damaged_seqs += damage.last_seq.saturating_sub(first) + 1;
        Ok(())
    }

    /// Records a frame of `ids`' connection in the batch's liveness.
    fn touch(&mut self, ids: &Ids, kraken_time: Option<Timestamp>) {
        match self.conns.iter_mut().find(|c| c.conn_id == ids.conn_id) {
            Some(c) => {
                if ids.seq < c.first_seq {
                    c.first_seq = ids.seq;
                    c.first_received_at = ids.received_at;
                }
                if ids.seq > c.last_seq {
                    c.last_seq = ids.seq;
                    c.last_received_at = ids.received_at;
                }
                if kraken_time > c.last_frame_timestamp {
                    c.last_frame_timestamp = kraken_time;
                }
            }
            None => self.conns.push(ConnLiveness {
                conn_id: ids.conn_id,
                first_seq: ids.seq,
                first_received_at: ids.received_at,
                last_seq: ids.seq,
                last_received_at: ids.received_at,
                last_frame_timestamp: kraken_time,
            }),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn put_event_row(
        &mut self,
        time: Timestamp,
        seq: i64,
        conn_id: Option<i64>,
        kind: EventKind,
        symbol: Option<&str>,
        gap_start: Option<Timestamp>,
        detail: &str,
    ) {
        let b = &mut self.events;
        b.put_i16(EVENT_FIELDS);
        put_ts(b, time);
        put_text(b, &self.collector);
        put_i64(b, seq);
        match conn_id {
            Some(c) => put_i64(b, c),
            None => put_null(b),
        }
        put_text(b, kind.as_str());
        put_opt_text(b, symbol);
        match gap_start {
            Some(t) => put_ts(b, t),
            None => put_null(b),
        }
        put_opt_text(b, (!detail.is_empty()).then_some(detail));
        self.counts.events += 1;
    }

    fn push_event(&mut self, ids: &Ids, event: &FeedEvent) {
        self.put_event_row(
            ids.received_at,
            ids.seq,
            Some(ids.conn_id),
            event.kind,
            event.symbol.as_deref(),
            event.gap_start,
            &event.detail,
        );
    }

    fn push_state(&mut self, ids: &Ids, state: &BookState) {
        let b = &mut self.states;
        b.put_i16(STATE_FIELDS);
        put_ts(b, state.timestamp);
        put_ts(b, ids.received_at);
        put_text(b, &self.collector);
        put_i64(b, ids.seq);
        put_i64(b, ids.conn_id);
        put_text(b, &state.symbol);
        b.put_i32(4);
        b.put_i32(i32::from(state.depth));
        b.put_i32(2);
        b.put_i16(i16::from(state.precision.price));
        b.put_i32(2);
        b.put_i16(i16::from(state.precision.qty));
        put_i64(b, i64::from(state.checksum));
        for side in [&state.bids, &state.asks] {
            let json = levels_json(side);
            b.put_i32(json.len() as i32 + 1);
            b.put_u8(1);
            b.put_slice(json.as_bytes());
        }
        self.counts.states += 1;
    }

    /// Encodes a frame's rows; returns its Kraken timestamp, if it carries one.
    fn push_frame(&mut self, ids: &Ids, frame: &FrameRecord) -> Option<Timestamp> {
        // A copy of a book message received on another connection, byte for byte: merged with
        // its first copy without decoding it again (redundancy's cost).
        let hashed = match self.book_rows.push_copy_bytes(
            &frame.bytes,
            ids.conn_id,
            ids.seq,
            frame.checksum_ok,
            ids.received_at,
        ) {
            Ok(kraken_time) => {
                self.counts.copies += 1;
                return Some(kraken_time);
            }
            Err(hashed) => hashed,
        };
        // A book frame in Kraken's layout (exact, or spaced otherwise, or its members in another
        // order): its row's columns in one pass, no decoding and no writing back to compare
        // (what the general path below concludes for it).
        if !self.general_only
            && let Some(c) = canonical::read(&frame.bytes)
            && c.levels.len() / 2 <= MAX_LEVELS_PER_MESSAGE / 2
        {
            let row = BookRow {
                timestamp: c.timestamp,
                received_at: ids.received_at,
                seq: ids.seq,
                conn_id: ids.conn_id,
                checksum: c.checksum,
                n_bids: c.n_bids as i16,
                kind: c.kind,
                checksum_ok: frame.checksum_ok,
                symbol: c.symbol.to_owned(),
                levels: Some(c.levels),
                raw: None,
                dups: Vec::new(),
            };
            self.push_book_row(row, &frame.bytes, hashed);
            return Some(c.timestamp);
        }
        let Ok(text) = std::str::from_utf8(&frame.bytes) else {
            // Not text at all: kept byte for byte.
            let row = MessageRow::malformed(ids, "unknown", Raw::Bytes(&frame.bytes));
            self.put_message(&row, frame);
            self.counts.malformed += 1;
            return None;
        };
        match kraken::decode(text) {
            Ok(Frame::Heartbeat) => {
                self.counts.heartbeats += 1;
                None
            }
            Ok(Frame::Book(book)) => {
                let kraken_time = book.data.first().and_then(|d| d.timestamp);
                match self.book_row(ids, frame, text, &book) {
                    Some(row) => self.push_book_row(row, &frame.bytes, hashed),
                    None => self.push_book_whole(ids, frame, text, &book),
                }
                kraken_time
            }
            Ok(decoded) => {
                let claim: Claim<'_> = match decoded {
                    Frame::Unknown(_) => serde_json::from_str(text).unwrap_or_default(),
                    _ => Claim::default(),
                };
                let other = other_frame_row(ids, text, &decoded, &claim);
                self.put_message(&other.row, frame);
                self.note_refusal(ids, other.row.symbol, other.refusal);
                other.kraken_time
            }
            Err(e) => {
                let (channel, raw, refusal) = match &e {
                    DecodeError::Shape { channel, .. } => {
                        let (raw, refusal) = Raw::json(text);
                        (channel.as_str(), raw, refusal)
                    }
                    DecodeError::Json { .. } => {
                        ("unknown", Raw::not_json(text, &frame.bytes), None)
                    }
                };
                let row = MessageRow::malformed(ids, channel, raw);
                self.put_message(&row, frame);
                self.counts.malformed += 1;
                self.note_refusal(ids, None, refusal);
                None
            }
        }
    }

    /// Holds a book row for the batch (merged into an earlier row when it is a copy of it).
    fn push_book_row(&mut self, row: BookRow, bytes: &[u8], hashed: Hashed) {
        let levels = row.levels.as_ref().map_or(0, |l| l.len() as u64 / 2);
        if self.book_rows.push_frame(row, bytes, hashed) {
            self.counts.copies += 1;
        } else {
            self.counts.messages += 1;
            self.counts.book += 1;
            self.counts.entries += levels;
        }
    }

    /// The book-table row of a book frame, or `None` when the book table cannot hold it (not
    /// exactly one data element, too many levels, text `jsonb` refuses): such a frame is stored
    /// whole in `krakenbook_other` by [`RowEncoder::push_book_whole`].
    fn book_row(
        &self,
        ids: &Ids,
        frame: &FrameRecord,
        text: &str,
        book: &BookMessage<'_>,
    ) -> Option<BookRow> {
        let [data] = book.data.as_slice() else {
            return None;
        };
        if data.bids.len() + data.asks.len() > MAX_LEVELS_PER_MESSAGE / 2
            || data.symbol.contains('\0')
        {
            return None;
        }
        let levels = levels_dec64(&data.bids, &data.asks);
        // Rebuilt by the row: Kraken's layout byte for byte, or that layout spaced otherwise or
        // with its members in another order (the `jsonb` the database keeps is the same; the
        // journal keeps the bytes).
        let rebuilt = levels.is_some() && row_rebuilds(book.kind, data, &frame.bytes);
        // A frame that is, but for whitespace between tokens and member order, what `canonical`
        // writes from exact levels and a symbol without NUL is JSON `jsonb` takes (no `\u0000`,
        // no surrogate escape, numbers of at most 19 digits, four levels deep:
        // `book_rows::tests`): only the others are scanned (the scan was a twentieth of the
        // database thread's CPU).
        if !rebuilt && jsonb_refusal(text).is_some() {
            return None;
        }
        Some(BookRow {
            timestamp: data.timestamp.unwrap_or(ids.received_at),
            received_at: ids.received_at,
            seq: ids.seq,
            conn_id: ids.conn_id,
            checksum: data.checksum,
            n_bids: data.bids.len() as i16,
            kind: book.kind,
            checksum_ok: frame.checksum_ok,
            symbol: data.symbol.to_string(),
            levels,
            raw: (!rebuilt).then(|| text.to_owned()),
            dups: Vec::new(),
        })
    }

    /// A book frame the book table cannot hold, stored whole as its real type in
    /// `krakenbook_other` (with a `stored_raw` event row saying why when that is not obvious).
    fn push_book_whole(
        &mut self,
        ids: &Ids,
        frame: &FrameRecord,
        text: &str,
        book: &BookMessage<'_>,
    ) {
        let first = book.data.first();
        let kraken_time = first.and_then(|d| d.timestamp);
        let message_type = book.kind.as_str();
        let symbol = first.map(|d| d.symbol.as_ref());
        let (raw, refusal) = Raw::json(text);
        let row = MessageRow {
            timestamp: kraken_time.unwrap_or(ids.received_at),
            channel: "book",
            message_type,
            symbol,
            checksum: first.map(|d| i64::from(d.checksum)),
            raw,
            ids,
        };
        self.put_message(&row, frame);
        if refusal.is_some() {
            self.note_refusal(ids, symbol, refusal);
            return;
        }
        let levels: usize = book.data.iter().map(BookData::level_count).sum();
        let detail = if book.data.len() != 1 {
            format!(
                "book frame with {} data elements: stored whole as its {message_type} message in \
                 krakenbook_other (no levels in the book table)",
                book.data.len()
            )
        } else {
            format!(
                "book frame with {levels} levels, more than the {} one message may have: stored \
                 whole as its {message_type} message in krakenbook_other (no levels in the book \
                 table)",
                MAX_LEVELS_PER_MESSAGE / 2
            )
        };
        self.put_event_row(
            ids.received_at,
            ids.seq,
            Some(ids.conn_id),
            EventKind::StoredRaw,
            symbol,
            None,
            &detail,
        );
        self.counts.stored_raw += 1;
    }

    /// A `stored_raw` event row when `jsonb` would have refused a frame's valid JSON (`refusal`).
    fn note_refusal(&mut self, ids: &Ids, symbol: Option<&str>, refusal: Option<&'static str>) {
        let Some(why) = refusal else {
            return;
        };
        self.put_event_row(
            ids.received_at,
            ids.seq,
            Some(ids.conn_id),
            EventKind::StoredRaw,
            symbol,
            None,
            &format!("valid JSON that jsonb refuses ({why}): stored in raw_text"),
        );
        self.counts.stored_raw += 1;
    }

    fn put_message(&mut self, row: &MessageRow<'_>, frame: &FrameRecord) {
        let b = &mut self.messages;
        b.put_i16(MESSAGE_FIELDS);
        put_ts(b, row.timestamp);
        put_ts(b, row.ids.received_at);
        put_text(b, &self.collector);
        put_i64(b, row.ids.seq);
        put_i64(b, row.ids.conn_id);
        put_i64(b, row.ids.conn_seq);
        put_text(b, row.channel);
        put_text(b, row.message_type);
        put_opt_text(b, row.symbol);
        match row.checksum {
            Some(c) => put_i64(b, c),
            None => put_null(b),
        }
        match frame.checksum_ok {
            Some(ok) => {
                b.put_i32(1);
                b.put_u8(u8::from(ok));
            }
            None => put_null(b),
        }
        match row.raw {
            Raw::Json(text) => {
                b.put_i32(text.len() as i32 + 1);
                b.put_u8(1);
                b.put_slice(text.as_bytes());
                put_null(b);
                put_null(b);
            }
            Raw::Text(text) => {
                put_null(b);
                put_text(b, text);
                put_null(b);
            }
            Raw::Bytes(bytes) => {
                put_null(b);
                put_null(b);
                b.put_i32(bytes.len() as i32);
                b.put_slice(bytes);
            }
        }
        put_level(b, frame.best_bid.as_ref());
        put_level(b, frame.best_ask.as_ref());
        self.counts.messages += 1;
    }
}

struct Ids {
    seq: i64,
    conn_id: i64,
    conn_seq: i64,
    received_at: Timestamp,
}

impl Ids {
    fn of(record: &Record) -> Result<Ids, RowError> {
        let err = |reason| RowError {
            seq: record.seq,
            reason,
        };
        Ok(Ids {
            seq: i64::try_from(record.seq).map_err(|_| err("seq exceeds bigint"))?,
            conn_id: i64::try_from(record.conn_id).map_err(|_| err("conn_id exceeds bigint"))?,
            conn_seq: i64::try_from(record.conn_seq).map_err(|_| err("conn_seq exceeds bigint"))?,
            received_at: record.received_at,
        })
    }
}

/// Up to 64 characters of a name taken from a frame (a raw row's channel or type).
fn short(name: &str) -> String {
    name.chars().take(64).collect()
}

/// Where a frame's content is stored.
enum Raw<'a> {
    /// Valid JSON that `jsonb` accepts: `raw_message`.
    Json(&'a str),
    /// Text that is not (jsonb-acceptable) JSON: `raw_text`.
    Text(&'a str),
    /// Bytes that are not storable as text: `raw_bytes`.
    Bytes(&'a [u8]),
}

impl<'a> Raw<'a> {
    /// Text known to be valid JSON: `jsonb`, or text with the reason `jsonb` would refuse it.
    fn json(text: &'a str) -> (Raw<'a>, Option<&'static str>) {
        match jsonb_refusal(text) {
            None => (Raw::Json(text), None),
            Some(why) => (Raw::Text(text), Some(why)),
        }
    }

    /// Text that is not JSON (PostgreSQL's `text` cannot hold NUL: such text is kept as bytes).
    fn not_json(text: &'a str, bytes: &'a [u8]) -> Raw<'a> {
        if text.contains('\0') {
            Raw::Bytes(bytes)
        } else {
            Raw::Text(text)
        }
    }
}

struct MessageRow<'a> {
    timestamp: Timestamp,
    channel: &'a str,
    message_type: &'a str,
    symbol: Option<&'a str>,
    checksum: Option<i64>,
    raw: Raw<'a>,
    ids: &'a Ids,
}

/// The row of a frame other than a book frame or a heartbeat, why `jsonb` refused its text (if
/// it did), and its Kraken timestamp (if it carries one).
struct OtherRow<'a> {
    row: MessageRow<'a>,
    refusal: Option<&'static str>,
    kraken_time: Option<Timestamp>,
}

impl<'a> MessageRow<'a> {
    fn malformed(ids: &'a Ids, channel: &'a str, raw: Raw<'a>) -> MessageRow<'a> {
        MessageRow {
            timestamp: ids.received_at,
            channel,
            message_type: "malformed",
            symbol: None,
            checksum: None,
            raw,
            ids,
        }
    }
}

/// What a frame the store does not model claims to be.
#[derive(Deserialize, Default)]
struct Claim<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
}

/// The row of a frame other than a book frame or a heartbeat (`claim` is read for unknown frames).
fn other_frame_row<'a>(
    ids: &'a Ids,
    text: &'a str,
    decoded: &'a Frame<'a>,
    claim: &'a Claim<'a>,
) -> OtherRow<'a> {
    let (raw, refusal) = Raw::json(text);
    let mut kraken_time = None;
    let mut row = MessageRow {
        timestamp: ids.received_at,
        channel: decoded.channel(),
        message_type: "unknown",
        symbol: None,
        checksum: None,
        raw,
        ids,
    };
    match decoded {
        Frame::Status(_) => row.message_type = "status",
        Frame::Pong(r) | Frame::Ack(r) => {
            row.message_type = r.method.as_ref();
            row.symbol = r.symbol();
            kraken_time = r.time_out;
            row.timestamp = r.time_out.unwrap_or(ids.received_at);
        }
        Frame::Instrument(i) => {
            row.message_type = if i.snapshot { "snapshot" } else { "update" };
        }
        Frame::Unknown(_) => {
            let method = claim.method.as_deref();
            row.channel = claim.channel.as_deref().or(method).unwrap_or("unknown");
            row.message_type = claim.kind.as_deref().or(method).unwrap_or("unknown");
        }
        Frame::Heartbeat | Frame::Book(_) => {}
    }
    OtherRow {
        row,
        refusal,
        kraken_time,
    }
}

/// Levels as exact decimal strings, best first: `[["62802.5","0.02987767"],...]`.
pub fn levels_json(levels: &[PriceLevel]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(levels.len() * 28 + 2);
    out.push('[');
    for (i, l) in levels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "[\"{}\",\"{}\"]", l.price, l.qty);
    }
    out.push(']');
    out
}

fn put_null(b: &mut BytesMut) {
    b.put_i32(-1);
}

fn put_i64(b: &mut BytesMut, v: i64) {
    b.put_i32(8);
    b.put_i64(v);
}

fn put_ts(b: &mut BytesMut, t: Timestamp) {
    put_i64(b, t.pg_micros());
}

/// Text (PostgreSQL's `text` cannot hold NUL; a NUL becomes U+FFFD, on this rare path only).
fn put_text(b: &mut BytesMut, s: &str) {
    if s.as_bytes().contains(&0) {
        let clean = s.replace('\0', "\u{FFFD}");
        b.put_i32(clean.len() as i32);
        b.put_slice(clean.as_bytes());
    } else {
        b.put_i32(s.len() as i32);
        b.put_slice(s.as_bytes());
    }
}

fn put_opt_text(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_text(b, s),
        None => put_null(b),
    }
}

fn put_level(b: &mut BytesMut, level: Option<&PriceLevel>) {
    match level {
        Some(l) => {
            put_decimal(b, l.price);
            put_decimal(b, l.qty);
        }
        None => {
            put_null(b);
            put_null(b);
        }
    }
}

fn put_decimal(b: &mut BytesMut, d: Decimal) {
    put_numeric_field(d, b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book_rows::sorted_form;

    /// Every frame of the real captures (and a seventh of their book frames again, no longer in
    /// Kraken's exact layout: one space, Python's spacing or a Go map's member order in turn; and
    /// two frames at and over the level limit),
    /// a fifth of them received again on a second connection.
    fn records() -> Vec<Record> {
        let captured = krakenbook_testkit::captured_records();
        let respaced: Vec<Record> = captured
            .iter()
            .filter(|r| {
                r.frame_text()
                    .is_some_and(|f| f.starts_with(r#"{"channel":"book""#))
            })
            .step_by(7)
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                if let RecordBody::Frame(f) = &mut r.body {
                    let text = String::from_utf8(f.bytes.clone()).unwrap();
                    // One space, Python's spacing, a Go map's order: each read in one pass.
                    f.bytes = match i % 3 {
                        0 => text.replacen(r#""bids":["#, r#""bids": ["#, 1).into_bytes(),
                        1 => python_spaced(&text).into_bytes(),
                        _ => sorted_form(text.as_bytes()).unwrap(),
                    };
                }
                r
            })
            .collect();
        let limit = [MAX_LEVELS_PER_MESSAGE / 2, MAX_LEVELS_PER_MESSAGE / 2 + 1].map(|n| {
            let level = r#"{"price":1.5,"qty":2}"#;
            let text = format!(
                r#"{{"channel":"book","type":"snapshot","data":[{{"symbol":"X/Y","bids":[{}],"asks":[],"checksum":7,"timestamp":"2026-08-17T16:01:57.687440Z"}}]}}"#,
                vec![level; n].join(",")
            );
            let mut r = captured[0].clone();
            r.body = RecordBody::Frame(FrameRecord {
                bytes: text.into_bytes(),
                checksum_ok: None,
                best_bid: None,
                best_ask: None,
            });
            r
        });
        let mut out: Vec<Record> = Vec::new();
        for (i, r) in captured
            .into_iter()
            .chain(respaced)
            .chain(limit)
            .enumerate()
        {
            let copies = if i % 5 == 0 { 2 } else { 1 };
            for conn in 0..copies {
                let mut r = r.clone();
                r.seq = out.len() as u64 + 1;
                r.conn_id = 1 + conn;
                out.push(r);
            }
        }
        out
    }

    /// What one batch wrote: its four streams (the book stream whole), its counts and its
    /// connections' liveness.
    type Batch = (Streams, RowCounts, Vec<ConnLiveness>);

    /// `records` encoded in two batches: the second keeps frames' bytes for byte-identical
    /// copies, as a batch after one that merged a copy does.
    fn encode(records: &[Record], general_only: bool) -> Vec<Batch> {
        let mut e = RowEncoder::new("c");
        e.general_only = general_only;
        e.set_collector_id(3);
        let mut batches = Vec::new();
        for part in records.chunks(records.len().div_ceil(2)) {
            e.reset();
            let mut book = Vec::new();
            for r in part {
                e.push(r).unwrap();
                if let Some(chunk) = e.take_book(1 << 16) {
                    book.extend_from_slice(&chunk);
                }
            }
            let mut streams = e.finish();
            book.extend_from_slice(&streams.book);
            streams.book = Bytes::from(book);
            batches.push((streams, e.counts(), e.connections().to_vec()));
        }
        batches
    }

    /// `text` with a space after every `,` and `:` outside its strings (Python's `json.dumps`
    /// with its default separators).
    fn python_spaced(text: &str) -> String {
        let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
        for c in text.chars() {
            out.push(c);
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            } else if c == '"' {
                in_string = true;
            } else if c == ',' || c == ':' {
                out.push(' ');
            }
        }
        out
    }

    /// The book stream one record encodes to, alone in a fresh encoder.
    fn book_stream(r: &Record) -> Bytes {
        let mut e = RowEncoder::new("c");
        e.set_collector_id(3);
        e.reset();
        e.push(r).unwrap();
        let mut book = e
            .take_book(usize::MAX)
            .map(|b| b.to_vec())
            .unwrap_or_default();
        book.extend_from_slice(&e.finish().book);
        Bytes::from(book)
    }

    /// A book frame from an exchange that spaces its JSON otherwise (Python's default
    /// separators, pretty-printing with line feeds and tabs, whitespace around the whole) is
    /// stored as the same row as the frame in Kraken's layout, without `raw` (its `jsonb` is
    /// the same; the journal keeps its bytes): on a recording of such an exchange every book
    /// message kept its text, 566 bytes a message against 226. So is one whose members come in
    /// another order (571 bytes a message before); one with a member more keeps `raw`.
    #[test]
    fn a_book_frame_spaced_otherwise_is_stored_as_the_row_of_kraken_s_layout() {
        let mut books = 0;
        for r in krakenbook_testkit::captured_records() {
            let Some(text) = r.frame_text().map(str::to_owned) else {
                continue;
            };
            if !text.starts_with(r#"{"channel":"book""#) {
                continue;
            }
            books += 1;
            let with = |bytes: String| {
                let mut r = r.clone();
                if let RecordBody::Frame(f) = &mut r.body {
                    f.bytes = bytes.into_bytes();
                }
                book_stream(&r)
            };
            let kraken = book_stream(&r);
            let python = python_spaced(&text);
            let pretty = python.replace(", ", ",\n\t").replace("{", "{\r\n ");
            for spaced in [python, pretty, format!(" \n{text}\t ")] {
                assert_eq!(with(spaced.clone()), kraken, "{spaced}");
            }
            // Members in another order (a Go map's: sorted; and the top level's moved by hand),
            // spaced or not.
            let sorted = String::from_utf8(sorted_form(text.as_bytes()).unwrap()).unwrap();
            assert_ne!(sorted, text);
            let moved = text
                .replacen(r#""channel":"book","type":"#, r#""type":"#, 1)
                .replacen(r#","data":"#, r#","channel":"book","data":"#, 1);
            for reordered in [python_spaced(&sorted), sorted, moved] {
                assert_eq!(with(reordered.clone()), kraken, "{reordered}");
            }
            // A member Kraken does not send is not the row's frame: kept in `raw`.
            let extra = text.replacen(r#","data":"#, r#","extra":1,"data":"#, 1);
            assert_ne!(with(extra.clone()), kraken, "{extra}");
        }
        assert!(books > 4_000, "{books}");
    }

    /// The one-pass reading of Kraken's layout writes exactly the rows the general path writes,
    /// copies merged alike (by their bytes in the second batch), the same liveness, over every
    /// frame of the real captures and a frame at and over the level limit.
    #[test]
    fn the_layout_read_in_one_pass_encodes_the_rows_the_general_path_does() {
        let records = records();
        let fast = encode(&records, false);
        let general = encode(&records, true);
        for (i, (f, g)) in fast.iter().zip(&general).enumerate() {
            assert_eq!(f.1, g.1, "batch {i}");
            assert!(f.1.book > 2000, "batch {i}: {:?}", f.1);
            assert!(f.1.copies > 250, "batch {i}: {:?}", f.1);
            assert_eq!(f.0.book, g.0.book, "batch {i}");
            assert_eq!(f.0.messages, g.0.messages, "batch {i}");
            assert_eq!(f.0.events, g.0.events, "batch {i}");
            assert_eq!(f.0.states, g.0.states, "batch {i}");
            assert_eq!(f.2, g.2, "batch {i}");
        }
        // The frame over the limit is stored whole, with a `stored_raw` event.
        assert!(fast[1].1.stored_raw >= 1, "{:?}", fast[1].1);
    }
}
