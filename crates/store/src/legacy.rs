//! The move of the rows of the layout before schema version 6 into the new tables, one range per
//! transaction (`docs/design/storage.md`, "Migration: chunk by chunk, resumable, with progress").
//!
//! Migration 6 renamed the old tables `krakenbook_legacy_messages` / `krakenbook_legacy_entries`
//! and recorded one pending row per legacy chunk in `krakenbook_layout_migration`. [`move_legacy`]
//! (called by `migrate`, under its advisory lock, while the views read the new tables and the
//! legacy ones together) takes the pending ranges oldest first, each in its own transaction
//! (after registering the range's collector names in `krakenbook_collectors` in a short one of
//! their own, so that a collector registering itself never waits for a range; and decompressing
//! the range's compressed legacy chunks, Timescale License only, inside the range's transaction):
//! 1. builds the book rows in a temporary table: every legacy message of the range that is a book
//!    snapshot or update with exactly one data element, a symbol, a checksum that fits 32 bits and
//!    entries that the book table can show exactly as they are (all of them carry the message's
//!    timestamp, receive time, symbol, type and checksum; ordinals 0..n-1, bids first; at most
//!    [`MAX_LEVELS`]) becomes one row: its entries aggregated in ordinal order as dec64
//!    (`krakenbook_to_dec`; when one does not fit, levels null and raw holds the frame); a
//!    message whose (collector, seq) two candidates share stays whole instead;
//! 2. checks those rows through the views' own definitions ([`super::layout::book_messages_sql`],
//!    [`super::layout::book_entries_sql`]), text against text (so `1.50` and `1.5` differ):
//!    each message row against the legacy row it comes from: where only the frame differs (the
//!    view does not rebuild it: no timestamp, other key order, rounded levels), the row keeps the
//!    legacy frame in raw, so the view shows exactly that and raw is null only where the rebuild
//!    equals the legacy `raw_message`; and every level against the legacy levels of the moved
//!    messages, counts included. Any other difference rolls the range back and fails with
//!    [`StoreError::LegacyMove`], naming the range, the collector and the seq;
//! 3. inserts the book rows, copies every other message of the range into `krakenbook_other` as it
//!    is, removes the range's legacy rows (whole chunks by `drop_chunks`, the rest by `DELETE`),
//!    checks nothing of the range is left but the orphan levels (below), marks the range moved with
//!    its counts, and commits.
//!
//! The original tool's rows (no collector, no seq) move the same way: collector id 0, their `id`
//! as seq (in `krakenbook_other` too), connection 0. Their entries carry no seq and no ordinal:
//! they belong to the message with the same timestamp, symbol, type and checksum (when exactly one
//! message has that key), bids first, best price first; the entries view then shows the message's
//! receive time, its seq and that position where those columns (added by krakenbook) were null.
//!
//! What must always hold:
//! - a range moves whole or not at all: an interruption (a kill, a lost connection) rolls back the
//!   range in flight only, and a rerun continues with the first pending range;
//! - every query sees every row exactly once throughout (the views read both layouts, and a
//!   range's new rows and the removal of its legacy rows commit together);
//! - nothing is dropped: levels that belong to no moved message (the original tool's entries whose
//!   message cannot be told, or a message the book table cannot hold) stay in
//!   `krakenbook_legacy_entries`, read through the views' legacy branch, and the legacy tables stay
//!   until they are empty. Not carried: `conn_seq` and `best_*` of book messages (the new layout
//!   has no column for them; the journal keeps `conn_seq`); other messages keep every column.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, Row};

use super::StoreError;
use super::layout::{book_entries_sql, book_messages_sql};
use crate::time::Timestamp;

/// The most levels a moved book row holds (the writer's limit: `rows::MAX_LEVELS_PER_MESSAGE`
/// values, two a level); a message with more stays whole in `krakenbook_other`.
pub const MAX_LEVELS: usize = super::rows::MAX_LEVELS_PER_MESSAGE / 2;

/// What the move of the legacy rows did (in [`crate::MigrateReport::legacy`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegacyMove {
    /// Ranges pending when the move started.
    pub pending: usize,
    /// Ranges moved.
    pub ranges: usize,
    /// Messages moved (book rows plus other rows).
    pub messages: u64,
    /// Of which book rows.
    pub book: u64,
    /// Of which rows of `krakenbook_other`.
    pub other: u64,
    /// Book rows whose frame is kept in `raw` (the view would not rebuild it exactly).
    pub raw_kept: u64,
    /// Levels moved.
    pub levels: u64,
    /// Levels of the moved ranges left in `krakenbook_legacy_entries`: they belong to no moved
    /// message (see the module doc).
    pub levels_left: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl LegacyMove {
    /// Messages moved per second.
    pub fn rate(&self) -> u64 {
        rate(self.messages, self.elapsed)
    }
}

/// A range whose move found a row that would not read back as it was (see
/// [`StoreError::LegacyMove`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "moving the legacy rows of range {index} of {ranges} ({start} .. {end}) into the new layout \
     was rolled back: {what}; that range's rows stay in the legacy tables, where every query \
     still reads them (nothing was lost); please report this with the message above"
)]
pub struct LegacyMoveError {
    /// The range's position among the ranges pending when the move started (from 1).
    pub index: usize,
    /// How many ranges were pending.
    pub ranges: usize,
    /// The range's start (a legacy chunk's).
    pub start: String,
    /// The range's end.
    pub end: String,
    /// The collector of the first row that differs (`None`: the original tool's rows, or no
    /// single row is to blame).
    pub collector: Option<String>,
    /// Its seq (the legacy `id` for the original tool's rows), when a row was found.
    pub seq: Option<i64>,
    /// What differs.
    pub what: String,
}

/// A pending range, with the number of legacy messages the server estimates it holds (0: no
/// estimate).
#[derive(Clone, Debug)]
struct Range {
    start: Timestamp,
    end: Timestamp,
    estimate: u64,
}

/// What one range's move did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RangeCounts {
    book: u64,
    other: u64,
    raw_kept: u64,
    levels: u64,
    levels_left: u64,
}

/// Moves every pending legacy range into the new tables (see the module doc). `Ok(None)`: there
/// was nothing to move. Must run under the migration lock, after the views are (re)created with
/// their legacy branch.
pub async fn move_legacy(client: &Client) -> Result<Option<LegacyMove>, StoreError> {
    if !super::layout::legacy_exists(client).await? {
        return Ok(None);
    }
    let ranges = pending_ranges(client).await?;
    if ranges.is_empty() {
        return Ok(None);
    }
    let has_id: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute
                             WHERE attrelid = 'krakenbook_legacy_messages'::regclass
                               AND attname = 'id' AND NOT attisdropped)",
            &[],
        )
        .await
        .map_err(StoreError::db("looking for the original tool's id column"))?
        .get(0);
    let sql = MoveSql::new(has_id);
    let estimate: u64 = ranges.iter().map(|r| r.estimate).sum();
    tracing::info!(
        ranges = ranges.len(),
        estimated_messages = estimate,
        "moving the rows of the layout before schema version 6 into the new tables: {} range(s) \
         pending, one transaction each (interrupting is safe: a rerun continues)",
        ranges.len()
    );
    let started = Instant::now();
    let mut report = LegacyMove {
        pending: ranges.len(),
        ..LegacyMove::default()
    };
    for (i, range) in ranges.iter().enumerate() {
        let at = RangeAt {
            index: i + 1,
            ranges: ranges.len(),
            range,
        };
        let range_started = Instant::now();
        let Some(counts) = move_range(client, &sql, &at).await? else {
            continue;
        };
        report.ranges += 1;
        report.book += counts.book;
        report.other += counts.other;
        report.messages += counts.book + counts.other;
        report.raw_kept += counts.raw_kept;
        report.levels += counts.levels;
        report.levels_left += counts.levels_left;
        report.elapsed = started.elapsed();
        let left = eta(
            report.elapsed,
            &ranges.iter().map(|r| r.estimate).collect::<Vec<_>>(),
            i + 1,
        );
        tracing::info!(
            range = at.index,
            of = at.ranges,
            start = %range.start,
            end = %range.end,
            messages = counts.book + counts.other,
            book = counts.book,
            other = counts.other,
            levels = counts.levels,
            frames_kept_whole = counts.raw_kept,
            seconds = range_started.elapsed().as_secs_f64(),
            "legacy range {} of {} moved: {} messages so far, {} messages/s, {}",
            at.index,
            at.ranges,
            report.messages,
            report.rate(),
            left.map_or_else(|| "done".to_owned(), |d| format!("about {} left", human(d)))
        );
        if counts.levels_left > 0 {
            tracing::warn!(
                range = at.index,
                levels = counts.levels_left,
                "{} level(s) of legacy range {} belong to no message that could move; they stay \
                 in krakenbook_legacy_entries, read through the views as before",
                counts.levels_left,
                at.index
            );
        }
    }
    report.elapsed = started.elapsed();
    Ok(Some(report))
}

/// The pending ranges, oldest first, with the server's estimate of their legacy messages.
async fn pending_ranges(client: &Client) -> Result<Vec<Range>, StoreError> {
    let rows = client
        .query(
            "SELECT l.range_start, l.range_end,
                    coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
               FROM krakenbook_layout_migration l
               LEFT JOIN timescaledb_information.chunks ch
                      ON ch.hypertable_name = 'krakenbook_legacy_messages'
                     AND ch.range_start < l.range_end AND ch.range_end > l.range_start
               LEFT JOIN pg_class c
                      ON c.oid = CASE WHEN ch.chunk_name IS NOT NULL
                                      THEN format('%I.%I', ch.chunk_schema, ch.chunk_name)::regclass
                                 END
              WHERE l.state = 'pending'
              GROUP BY l.range_start, l.range_end
              ORDER BY l.range_start",
            &[],
        )
        .await
        .map_err(StoreError::db("reading the pending legacy ranges"))?;
    Ok(rows
        .iter()
        .map(|r| Range {
            start: r.get(0),
            end: r.get(1),
            estimate: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
        })
        .collect())
}

/// A range and where it stands among the pending ones (for messages).
struct RangeAt<'a> {
    index: usize,
    ranges: usize,
    range: &'a Range,
}

impl RangeAt<'_> {
    /// An adaptor for `map_err`: a driver error while doing `step` in this range.
    fn db(&self, step: &str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        StoreError::db(format!(
            "moving legacy range {} of {} ({} .. {}): {step}",
            self.index, self.ranges, self.range.start, self.range.end
        ))
    }

    fn failed(&self, collector: Option<String>, seq: Option<i64>, what: String) -> StoreError {
        StoreError::LegacyMove(Box::new(LegacyMoveError {
            index: self.index,
            ranges: self.ranges,
            start: self.range.start.to_string(),
            end: self.range.end.to_string(),
            collector,
            seq,
            what,
        }))
    }
}

/// One range in one transaction: `Ok(None)` when it was no longer pending.
async fn move_range(
    client: &Client,
    sql: &MoveSql,
    at: &RangeAt<'_>,
) -> Result<Option<RangeCounts>, StoreError> {
    // The range's collectors get their ids first, in a transaction of their own: registering a
    // name locks the dictionary, which a collector registering itself would otherwise wait on
    // until the range commits.
    let bounds: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&at.range.start, &at.range.end];
    client
        .execute(&sql.register_collectors, &bounds)
        .await
        .map_err(at.db("registering its collectors"))?;
    client
        .batch_execute(
            "BEGIN; SET LOCAL client_min_messages = warning; SET LOCAL statement_timeout = 0; \
             SET LOCAL jit = off; SET LOCAL work_mem = '64MB'",
        )
        .await
        .map_err(at.db("starting its transaction"))?;
    let result = move_range_in(client, sql, at).await;
    let result = match result {
        Ok(counts) => client
            .batch_execute("COMMIT")
            .await
            .map(|()| counts)
            .map_err(at.db("committing")),
        Err(e) => Err(e),
    };
    if result.is_err() {
        // The session may be gone (then the server rolled back already).
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

async fn move_range_in(
    client: &Client,
    sql: &MoveSql,
    at: &RangeAt<'_>,
) -> Result<Option<RangeCounts>, StoreError> {
    let bounds: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&at.range.start, &at.range.end];
    let state = client
        .query_opt(
            "SELECT state FROM krakenbook_layout_migration WHERE range_start = $1 FOR UPDATE",
            &bounds[..1],
        )
        .await
        .map_err(at.db("locking its row of krakenbook_layout_migration"))?;
    if state.is_none_or(|r| r.get::<_, &str>(0) != "pending") {
        return Ok(None);
    }
    client
        .batch_execute(TEMP_TABLES)
        .await
        .map_err(at.db("creating its temporary tables"))?;
    // Compressed legacy chunks (Timescale License) are read and deleted from row by row below:
    // decompressed first (in this transaction: a rollback compresses them back).
    client
        .execute(DECOMPRESS, &bounds)
        .await
        .map_err(at.db("decompressing its legacy chunks"))?;
    client
        .execute(&sql.collectors, &bounds)
        .await
        .map_err(at.db("reading its collectors' ids"))?;
    let messages = count(client, &sql.count_messages, &bounds)
        .await
        .map_err(at.db("counting its messages"))?;
    let entries = count(client, &sql.count_entries, &bounds)
        .await
        .map_err(at.db("counting its levels"))?;
    client
        .execute(&sql.book_keyed, &bounds)
        .await
        .map_err(at.db("building its book rows"))?;
    if let Some(original) = &sql.book_original {
        client
            .execute(original, &bounds)
            .await
            .map_err(at.db("building the book rows of the original tool's messages"))?;
        client
            .execute(&sql.ambiguous_original, &bounds)
            .await
            .map_err(at.db("setting aside the original tool's ambiguous messages"))?;
    }
    client
        .batch_execute(DUPLICATE_KEYS)
        .await
        .map_err(at.db("setting aside messages whose key is not unique"))?;

    // The checks, through the views' own definitions. Messages: row by row against the legacy
    // row each comes from; a row whose frame the view renders differently keeps the legacy frame
    // in raw (then the view shows exactly that), any other difference stops the move.
    client
        .execute(&sql.check_messages, &bounds)
        .await
        .map_err(at.db("checking its messages through the view"))?;
    let bad = client
        .query(&sql.first_bad_message, &bounds)
        .await
        .map_err(at.db("reading the first message that differs"))?;
    if let Some((collector, seq, what)) = first_difference(&bad, MESSAGE_CHECKED, 0, true) {
        return Err(at.failed(
            collector,
            seq,
            format!("the message reads back differently through kraken_orderbook_messages: {what}"),
        ));
    }
    let raw_differs = count(
        client,
        "SELECT count(*) FROM kb_move_d WHERE raw_differs",
        &[],
    )
    .await
    .map_err(at.db("counting its frames the view would not rebuild"))?;
    let raw_kept = client
        .execute(&sql.keep_raw, &bounds)
        .await
        .map_err(at.db("keeping the frames the view would not rebuild"))?;
    if raw_kept != raw_differs {
        return Err(at.failed(
            None,
            None,
            format!(
                "{raw_kept} frames were kept whole for {raw_differs} the view would not rebuild"
            ),
        ));
    }
    let book = count(client, "SELECT count(*) FROM kb_move_b", &[])
        .await
        .map_err(at.db("counting its book rows"))?;
    let check = client
        .query(&sql.check_entries, &bounds)
        .await
        .map_err(at.db("checking its levels through the view"))?;
    let (levels, attached) = check_counts(&check);
    if let Some((collector, seq, what)) = first_difference(&check, ENTRY_CHECKED, 2, false) {
        return Err(at.failed(
            collector,
            seq,
            format!("a level reads back differently through kraken_orderbook_entries: {what}"),
        ));
    }
    if levels != attached {
        return Err(at.failed(
            None,
            None,
            format!("the view shows {levels} levels of the book rows, the legacy table {attached}"),
        ));
    }

    // The move.
    let inserted_book = client
        .execute(INSERT_BOOK, &[])
        .await
        .map_err(at.db("inserting its book rows"))?;
    let inserted_other = client
        .execute(&sql.insert_other, &bounds)
        .await
        .map_err(at.db("copying its other messages into krakenbook_other"))?;
    if inserted_book != book || inserted_book + inserted_other != messages {
        return Err(at.failed(
            None,
            None,
            format!(
                "{inserted_book} book rows and {inserted_other} other rows were stored for \
                 {messages} legacy messages ({book} book rows built)"
            ),
        ));
    }
    let raw_kept = count(
        client,
        "SELECT count(*) FROM kb_move_b WHERE raw IS NOT NULL",
        &[],
    )
    .await
    .map_err(at.db("counting its frames kept whole"))?;

    // The legacy rows go.
    client
        .execute(DROP_MESSAGE_CHUNKS, &bounds)
        .await
        .map_err(at.db("dropping its legacy message chunks"))?;
    client
        .execute(DELETE_MESSAGES, &bounds)
        .await
        .map_err(at.db("deleting its legacy messages"))?;
    let levels_left = entries.saturating_sub(attached);
    if levels_left == 0 {
        client
            .execute(DROP_ENTRY_CHUNKS, &bounds)
            .await
            .map_err(at.db("dropping its legacy entry chunks"))?;
        client
            .execute(DELETE_ENTRIES, &bounds)
            .await
            .map_err(at.db("deleting its legacy entries"))?;
    } else {
        let mut deleted = client
            .execute(DELETE_ENTRIES_KEYED, &bounds)
            .await
            .map_err(at.db("deleting its moved legacy entries"))?;
        if let Some(original) = &sql.delete_entries_original {
            deleted += client
                .execute(original, &bounds)
                .await
                .map_err(at.db("deleting the original tool's moved legacy entries"))?;
        }
        if deleted != attached {
            return Err(at.failed(
                None,
                None,
                format!("{deleted} legacy levels were deleted for {attached} moved"),
            ));
        }
    }
    let messages_left = count(client, &sql.count_messages, &bounds)
        .await
        .map_err(at.db("counting what is left of its messages"))?;
    let entries_left = count(client, &sql.count_entries, &bounds)
        .await
        .map_err(at.db("counting what is left of its levels"))?;
    if messages_left != 0 || entries_left != levels_left {
        return Err(at.failed(
            None,
            None,
            format!(
                "{messages_left} legacy messages and {entries_left} levels are left after the move \
                 (expected 0 and {levels_left})"
            ),
        ));
    }
    let messages_i = i64::try_from(messages).unwrap_or(i64::MAX);
    let levels_i = i64::try_from(attached).unwrap_or(i64::MAX);
    client
        .execute(
            "UPDATE krakenbook_layout_migration
                SET state = 'moved', messages = $2, levels = $3, moved_at = now()
              WHERE range_start = $1",
            &[&at.range.start, &messages_i, &levels_i],
        )
        .await
        .map_err(at.db("marking it moved"))?;
    Ok(Some(RangeCounts {
        book,
        other: inserted_other,
        raw_kept,
        levels: attached,
        levels_left,
    }))
}

async fn count(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let n: i64 = client.query_one(sql, params).await?.get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// The statements. `$1`, `$2`: the range's start and end; the legacy rows of a range are those
// with start <= timestamp < end.

/// The temporary tables of one range (gone at commit or rollback): its collectors' ids, and its
/// book rows (krakenbook_book's columns plus the legacy row's physical address).
const TEMP_TABLES: &str = "
CREATE TEMP TABLE kb_move_c (name text NOT NULL, id smallint NOT NULL) ON COMMIT DROP;
CREATE TEMP TABLE kb_move_b (LIKE krakenbook_book) ON COMMIT DROP;
ALTER TABLE kb_move_b ADD COLUMN l_toid oid NOT NULL, ADD COLUMN l_tid tid NOT NULL;
CREATE TEMP TABLE kb_move_d (l_toid oid NOT NULL, l_tid tid NOT NULL, raw_differs boolean NOT NULL,
                             row_differs boolean NOT NULL) ON COMMIT DROP;";

/// Decompresses the legacy chunks of the range that are compressed (none on the Apache edition).
const DECOMPRESS: &str = "
SELECT count(decompress_chunk(format('%I.%I', chunk_schema, chunk_name)::regclass, true))
  FROM timescaledb_information.chunks
 WHERE hypertable_name IN ('krakenbook_legacy_messages', 'krakenbook_legacy_entries')
   AND is_compressed AND range_start < $2 AND range_end > $1";

/// Two candidate book rows with one key (collector, seq) would show each other's levels: both
/// stay whole in `krakenbook_other` (their entries in the legacy table).
const DUPLICATE_KEYS: &str = "
DELETE FROM kb_move_b b
 WHERE b.collector_id <> 0
   AND EXISTS (SELECT 1 FROM kb_move_b o
                WHERE o.collector_id = b.collector_id AND o.seq = b.seq
                  AND NOT (o.l_toid = b.l_toid AND o.l_tid = b.l_tid));
ANALYZE kb_move_b;";

const INSERT_BOOK: &str = "
INSERT INTO krakenbook_book (\"timestamp\", received_at, seq, conn_id, checksum, collector_id,
                             n_bids, kind, checksum_ok, symbol, levels, raw, dups)
SELECT \"timestamp\", received_at, seq, conn_id, checksum, collector_id, n_bids, kind, checksum_ok,
       symbol, levels, raw, dups
  FROM kb_move_b ORDER BY \"timestamp\", collector_id, seq";

const DROP_MESSAGE_CHUNKS: &str = "SELECT count(*) FROM drop_chunks('krakenbook_legacy_messages', \
    older_than => $2::timestamptz, newer_than => $1::timestamptz)";
const DELETE_MESSAGES: &str = "DELETE FROM krakenbook_legacy_messages \
    WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2";
const DROP_ENTRY_CHUNKS: &str = "SELECT count(*) FROM drop_chunks('krakenbook_legacy_entries', \
    older_than => $2::timestamptz, newer_than => $1::timestamptz)";
const DELETE_ENTRIES: &str = "DELETE FROM krakenbook_legacy_entries \
    WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2";

/// The levels of moved messages written by krakenbook: their (collector, seq) is a book row's.
const DELETE_ENTRIES_KEYED: &str = "
DELETE FROM krakenbook_legacy_entries e USING kb_move_c c, kb_move_b b
 WHERE e.\"timestamp\" >= $1 AND e.\"timestamp\" < $2 AND e.seq IS NOT NULL
   AND c.name = e.collector AND b.collector_id = c.id AND b.seq = e.seq";

/// The columns of the messages view that a moved book message must read back with unchanged.
/// Not compared: `conn_seq` and `best_*` (the book table has no column for them; the view shows
/// null), `raw_text` and `raw_bytes` (null in every candidate).
const MESSAGE_CHECKED: &[&str] = &[
    "timestamp",
    "received_at",
    "collector",
    "seq",
    "conn_id",
    "channel",
    "message_type",
    "symbol",
    "checksum",
    "checksum_ok",
    "raw_message",
];

/// [`MESSAGE_CHECKED`] but the frame (compared on its own: a difference there keeps the frame).
const MESSAGE_CHECKED_FIELDS: &[&str] = &[
    "\"timestamp\"",
    "received_at",
    "collector",
    "seq",
    "conn_id",
    "channel",
    "message_type",
    "symbol",
    "checksum",
    "checksum_ok",
];

/// `fields` of alias `a`, comma-separated.
fn prefixed(a: &str, fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| format!("{a}.{f}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns of the entries view that a moved level must read back with unchanged (prices and
/// quantities as text: the scale counts).
const ENTRY_CHECKED: &[&str] = &[
    "timestamp",
    "received_at",
    "symbol",
    "side",
    "price",
    "quantity",
    "message_type",
    "checksum",
    "collector",
    "seq",
    "ordinal",
];

/// The statements that depend on the legacy table's shape (whether it has the original tool's
/// `id` column).
#[derive(Debug)]
struct MoveSql {
    register_collectors: String,
    collectors: String,
    count_messages: String,
    count_entries: String,
    book_keyed: String,
    book_original: Option<String>,
    ambiguous_original: String,
    check_messages: String,
    first_bad_message: String,
    keep_raw: String,
    check_entries: String,
    insert_other: String,
    delete_entries_original: Option<String>,
}

/// The legacy rows of the range, for alias `a`.
fn in_range(a: &str) -> String {
    format!("{a}.\"timestamp\" >= $1 AND {a}.\"timestamp\" < $2")
}

/// A book row built from legacy message `m` and aggregated entries `e` (columns of the
/// subqueries below), raw null unless the levels do not fit dec64 (the check through the view
/// then keeps the frame of every row the view would not render as it was). `seq`, `conn_id`,
/// `collector_id` are expressions.
fn book_row_select(seq: &str, conn_id: &str, collector_id: &str, from: &str) -> String {
    format!(
        "INSERT INTO kb_move_b (\"timestamp\", received_at, seq, conn_id, checksum, collector_id,
                        n_bids, kind, checksum_ok, symbol, levels, raw, dups, l_toid, l_tid)
SELECT b.\"timestamp\", b.received_at, b.seq, b.conn_id, b.checksum, b.collector_id, b.n_bids,
       b.kind, b.checksum_ok, b.symbol, b.levels,
       CASE WHEN b.levels IS NULL THEN b.raw END,
       NULL, b.l_toid, b.l_tid
  FROM (SELECT m.\"timestamp\", m.received_at, {seq} AS seq, {conn_id} AS conn_id,
               (CASE WHEN m.checksum >= 2147483648 THEN m.checksum - 4294967296
                     ELSE m.checksum END)::integer AS checksum,
               {collector_id} AS collector_id, e.n_bids::smallint AS n_bids,
               (CASE m.message_type WHEN 'snapshot' THEN 's' ELSE 'u' END)::\"char\" AS kind,
               m.checksum_ok, m.symbol,
               CASE WHEN array_position(e.levels, NULL) IS NULL THEN e.levels END AS levels,
               m.raw_message AS raw, m.tableoid AS l_toid, m.ctid AS l_tid
          {from}
         WHERE {m_range}
           AND m.channel = 'book' AND m.message_type IN ('snapshot', 'update')
           AND m.symbol IS NOT NULL AND m.raw_text IS NULL AND m.raw_bytes IS NULL
           AND CASE WHEN jsonb_typeof(m.raw_message -> 'data') = 'array'
                    THEN jsonb_array_length(m.raw_message -> 'data') = 1 ELSE false END
           AND (m.checksum IS NULL OR m.checksum BETWEEN 0 AND 4294967295)
           AND e.n <= {MAX_LEVELS}
           AND e.t0 = m.\"timestamp\" AND e.t1 = m.\"timestamp\"
           AND e.s0 = m.symbol AND e.s1 = m.symbol
           AND e.k0 = m.message_type AND e.k1 = m.message_type
           AND CASE WHEN m.checksum IS NULL THEN e.cn = 0
                    ELSE e.cn = e.n AND e.c0 = m.checksum AND e.c1 = m.checksum END) b",
        m_range = in_range("m"),
    )
}

/// A message's entries aggregated (`e` over [`entries_in_order`]): counts, the extremes of the
/// columns each must share with its message, and the levels as dec64, price and quantity
/// interleaved in the input's order.
const ENTRY_AGGREGATES: &str = "count(*) FILTER (WHERE e.part = 0) AS n,
         count(*) FILTER (WHERE e.part = 0 AND e.side = 'bid') AS n_bids,
         min(e.\"timestamp\") AS t0, max(e.\"timestamp\") AS t1,
         min(e.received_at) AS r0, max(e.received_at) AS r1,
         count(e.received_at) FILTER (WHERE e.part = 0) AS rn,
         min(e.symbol) AS s0, max(e.symbol) AS s1,
         min(e.message_type) AS k0, max(e.message_type) AS k1,
         min(e.checksum) AS c0, max(e.checksum) AS c1,
         count(e.checksum) FILTER (WHERE e.part = 0) AS cn,
         bool_and(e.in_place) AS in_place,
         array_agg(e.d) AS levels";

/// The legacy entries of the range that satisfy `filter`, each twice (price, then quantity: one
/// aggregate interleaves them), sorted by `key` then `order` (the levels' order), with `in_place`:
/// whether the entry's ordinal is its position in that order.
///
/// The aggregate reads its input in this order (a sorted subquery; on PostgreSQL 15 an
/// `array_agg(... ORDER BY ...)` sorts every group on its own, which made the move four times
/// slower). Should the order ever not hold, the check through the entries view finds it.
/// `krakenbook_to_dec` (a SQL function that is not inlined: it is strict, its body is not) runs
/// here, in the subquery's projection: called inside the VALUES list or as the aggregate's
/// argument it costs ten times as much.
fn entries_in_order(filter: &str, key: &str, order: &str) -> String {
    format!(
        "(SELECT e.*, x.part, krakenbook_to_dec(x.v) AS d
            FROM (SELECT e.\"timestamp\", e.received_at, e.symbol, e.side, e.price, e.quantity,
                         e.message_type, e.checksum, e.collector, e.seq, e.ordinal,
                         coalesce(row_number() OVER (PARTITION BY {key} ORDER BY {order}) - 1
                                  = e.ordinal, false) AS in_place
                    FROM krakenbook_legacy_entries e
                   WHERE {range} AND {filter}) e
           CROSS JOIN LATERAL (VALUES (0, e.price), (1, e.quantity)) x(part, v)
           ORDER BY {key}, {order}, x.part) e",
        range = in_range("e"),
    )
}

/// The original tool's entries in book order: bids first, best price first.
const ORIGINAL_ORDER: &str =
    "e.side = 'ask', CASE WHEN e.side = 'bid' THEN -e.price ELSE e.price END, e.quantity";

impl MoveSql {
    fn new(has_id: bool) -> MoveSql {
        let m_range = in_range("m");
        let e_range = in_range("e");
        let id = if has_id {
            "m.id::bigint"
        } else {
            "NULL::bigint"
        };
        // The original tool's rows: no collector, no seq; their id as seq.
        let original = format!("m.collector IS NULL AND m.seq IS NULL AND {id} IS NOT NULL");
        let book_keyed = book_row_select(
            "m.seq",
            "m.conn_id",
            "c.id",
            &format!(
                "FROM krakenbook_legacy_messages m
          JOIN kb_move_c c ON c.name = m.collector
          JOIN (SELECT e.collector, e.seq, {ENTRY_AGGREGATES},
                       max(e.ordinal) FILTER (WHERE e.side = 'bid') AS max_bid,
                       min(e.ordinal) FILTER (WHERE e.side = 'ask') AS min_ask
                  FROM {entries}
                 GROUP BY e.collector, e.seq) e
            ON e.collector = m.collector AND e.seq = m.seq
           AND m.seq IS NOT NULL AND m.conn_id IS NOT NULL
           AND e.in_place
           AND (e.n_bids = 0 OR e.max_bid = e.n_bids - 1)
           AND (e.n_bids = e.n OR e.min_ask = e.n_bids)
           AND e.rn = e.n AND e.r0 = m.received_at AND e.r1 = m.received_at",
                entries = entries_in_order(
                    "e.collector IS NOT NULL AND e.seq IS NOT NULL",
                    "e.collector, e.seq",
                    "e.ordinal",
                ),
            ),
        );
        let book_original = has_id.then(|| {
            book_row_select(
                id,
                "0::bigint",
                "0::smallint",
                &format!(
                    "FROM krakenbook_legacy_messages m
          JOIN (SELECT e.\"timestamp\", e.symbol, e.message_type, e.checksum, {ENTRY_AGGREGATES}
                  FROM {entries}
                 GROUP BY e.\"timestamp\", e.symbol, e.message_type, e.checksum) e
            ON e.\"timestamp\" = m.\"timestamp\" AND e.symbol = m.symbol
           AND e.message_type = m.message_type
           AND coalesce(e.checksum, -1) = coalesce(m.checksum, -1)
           AND {original}
           AND (e.rn = 0 OR (e.rn = e.n AND e.r0 = m.received_at AND e.r1 = m.received_at))",
                    entries = entries_in_order(
                        "e.collector IS NULL AND e.seq IS NULL AND e.ordinal IS NULL",
                        "e.\"timestamp\", e.symbol, e.message_type, e.checksum",
                        ORIGINAL_ORDER,
                    ),
                ),
            )
        });
        // The original tool's key (timestamp, symbol, type, checksum) of a book row `b`.
        let original_key = |a: &str| {
            format!(
                "{a}.\"timestamp\" = b.\"timestamp\" AND {a}.symbol = b.symbol
                 AND {a}.message_type = CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END
                 AND coalesce({a}.checksum, -1) = coalesce(b.checksum::bigint & 4294967295, -1)"
            )
        };
        let ambiguous_original = format!(
            "DELETE FROM kb_move_b b
              WHERE b.collector_id = 0
                AND EXISTS (SELECT 1 FROM krakenbook_legacy_messages m
                             WHERE {m_range} AND m.collector IS NULL AND m.seq IS NULL
                               AND {key}
                               AND NOT (m.tableoid = b.l_toid AND m.ctid = b.l_tid))",
            key = original_key("m"),
        );
        let original_entries_join = format!(
            "FROM krakenbook_legacy_entries e
              JOIN kb_move_b b ON b.collector_id = 0 AND {key}
             WHERE {e_range} AND e.collector IS NULL AND e.seq IS NULL AND e.ordinal IS NULL",
            key = original_key("e"),
        );
        let legacy_messages = format!(
            "SELECT m.\"timestamp\", m.received_at, m.collector, coalesce(m.seq, {id}) AS seq,
                    CASE WHEN m.collector IS NULL THEN coalesce(m.conn_id, 0) ELSE m.conn_id END
                      AS conn_id,
                    m.channel, m.message_type, m.symbol, m.checksum, m.checksum_ok,
                    m.raw_message, m.tableoid AS l_toid, m.ctid AS l_tid
               FROM krakenbook_legacy_messages m
              WHERE {m_range}"
        );
        let mut legacy_entries = format!(
            "SELECT e.\"timestamp\", e.received_at, e.symbol, e.side, e.price, e.quantity,
                    e.message_type, e.checksum, e.collector, e.seq, e.ordinal
               FROM krakenbook_legacy_entries e
               JOIN kb_move_c c ON c.name = e.collector
               JOIN kb_move_b b ON b.collector_id = c.id AND b.seq = e.seq
              WHERE {e_range} AND e.seq IS NOT NULL"
        );
        if has_id {
            legacy_entries.push_str(&format!(
                "
             UNION ALL
             SELECT e.\"timestamp\", coalesce(e.received_at, b.received_at), e.symbol, e.side,
                    e.price, e.quantity, e.message_type, e.checksum, NULL::text, b.seq,
                    (row_number() OVER (PARTITION BY b.seq ORDER BY {ORIGINAL_ORDER}) - 1)::smallint
               {original_entries_join}"
            ));
        }
        let messages_columns = "\"timestamp\", received_at, collector, seq, conn_id, channel, \
            message_type, symbol, checksum, checksum_ok, raw_message::text AS raw_message";
        let entries_columns = "\"timestamp\", received_at, symbol, side, price::text AS price, \
            quantity::text AS quantity, message_type, checksum, collector, seq, ordinal";
        MoveSql {
            register_collectors: format!(
                "SELECT count(krakenbook_collector_id(d.name))
                   FROM (SELECT DISTINCT m.collector AS name FROM krakenbook_legacy_messages m
                          WHERE {m_range} AND m.collector IS NOT NULL) d"
            ),
            collectors: format!(
                "INSERT INTO kb_move_c
                 SELECT d.name, krakenbook_collector_id(d.name)
                   FROM (SELECT DISTINCT m.collector AS name FROM krakenbook_legacy_messages m
                          WHERE {m_range} AND m.collector IS NOT NULL) d"
            ),
            count_messages: format!(
                "SELECT count(*) FROM krakenbook_legacy_messages m WHERE {m_range}"
            ),
            count_entries: format!(
                "SELECT count(*) FROM krakenbook_legacy_entries e WHERE {e_range}"
            ),
            book_keyed,
            book_original,
            ambiguous_original,
            check_messages: format!(
                "INSERT INTO kb_move_d
                 SELECT x.l_toid, x.l_tid, x.moved IS DISTINCT FROM x.legacy, x.row_differs
                   FROM (SELECT v.l_toid, v.l_tid, v.raw_message::text AS moved,
                                l.raw_message::text AS legacy,
                                ({fields}) IS DISTINCT FROM ({legacy_fields}) AS row_differs
                           FROM ({view}) v
                           JOIN ({legacy_messages}) l
                             ON l.l_toid = v.l_toid AND l.l_tid = v.l_tid
                         OFFSET 0) x
                  WHERE x.moved IS DISTINCT FROM x.legacy OR x.row_differs",
                view = book_messages_sql("kb_move_b", ", b.l_toid, b.l_tid"),
                fields = prefixed("v", MESSAGE_CHECKED_FIELDS),
                legacy_fields = prefixed("l", MESSAGE_CHECKED_FIELDS),
            ),
            first_bad_message: format!(
                "WITH bad AS (SELECT d.l_toid, d.l_tid FROM kb_move_d d
                                JOIN kb_move_b b ON b.l_toid = d.l_toid AND b.l_tid = d.l_tid
                               WHERE d.row_differs ORDER BY b.seq LIMIT 1)
                 SELECT 'moved' AS diff_side, {messages_columns}
                   FROM ({view}) v JOIN bad ON bad.l_toid = v.l_toid AND bad.l_tid = v.l_tid
                 UNION ALL
                 SELECT 'legacy', {messages_columns}
                   FROM ({legacy_messages}) l JOIN bad ON bad.l_toid = l.l_toid AND bad.l_tid = l.l_tid",
                view = book_messages_sql("kb_move_b", ", b.l_toid, b.l_tid"),
            ),
            keep_raw: format!(
                "UPDATE kb_move_b b SET raw = m.raw_message
                   FROM kb_move_d d, krakenbook_legacy_messages m
                  WHERE d.raw_differs AND b.l_toid = d.l_toid AND b.l_tid = d.l_tid
                    AND m.tableoid = d.l_toid AND m.ctid = d.l_tid AND {m_range}"
            ),
            check_entries: check_sql(
                &book_entries_sql("kb_move_b"),
                &legacy_entries,
                entries_columns,
                "seq, collector, ordinal, diff_side",
            ),
            insert_other: format!(
                "INSERT INTO krakenbook_other (\"timestamp\", received_at, collector, seq, conn_id,
                     conn_seq, channel, message_type, symbol, checksum, checksum_ok, raw_message,
                     raw_text, raw_bytes, best_bid_price, best_bid_qty, best_ask_price,
                     best_ask_qty)
                 SELECT m.\"timestamp\", m.received_at, m.collector,
                        CASE WHEN m.collector IS NULL AND m.seq IS NULL THEN {id} ELSE m.seq END,
                        m.conn_id, m.conn_seq, m.channel, m.message_type, m.symbol, m.checksum,
                        m.checksum_ok, m.raw_message, m.raw_text, m.raw_bytes, m.best_bid_price,
                        m.best_bid_qty, m.best_ask_price, m.best_ask_qty
                   FROM krakenbook_legacy_messages m
                  WHERE {m_range}
                    AND NOT EXISTS (SELECT 1 FROM kb_move_b b
                                     WHERE b.l_toid = m.tableoid AND b.l_tid = m.ctid)
                  ORDER BY m.\"timestamp\""
            ),
            delete_entries_original: has_id.then(|| {
                format!(
                    "DELETE FROM krakenbook_legacy_entries e USING kb_move_b b
                      WHERE b.collector_id = 0 AND {key}
                        AND {e_range} AND e.collector IS NULL AND e.seq IS NULL
                        AND e.ordinal IS NULL",
                    key = original_key("e"),
                )
            }),
        }
    }
}

/// A query comparing what the view shows for the book rows (`view`) with the legacy rows they
/// come from (`legacy`), over `columns` (each select list gives them these names): its first row
/// holds the two counts (view, legacy) and, when they differ, a row that only one of them has
/// (`diff_side`: which), then at most three more, in `order` (by seq, so that the two versions of
/// one row come together). One grouping of both sides (a row present as often on each side is
/// equal), not two `EXCEPT ALL`s: half the hashing.
fn check_sql(view: &str, legacy: &str, columns: &str, order: &str) -> String {
    let names: Vec<&str> = columns
        .split(',')
        .map(|c| {
            let c = c.trim();
            c.rsplit_once(" AS ").map_or(c, |(_, name)| name.trim())
        })
        .collect();
    let names = names.join(", ");
    format!(
        "WITH g AS MATERIALIZED (
    SELECT {names},
           count(*) FILTER (WHERE x.from_view) AS from_view,
           count(*) FILTER (WHERE NOT x.from_view) AS from_legacy
      FROM (SELECT true AS from_view, {columns} FROM ({view}) v
            UNION ALL
            SELECT false, {columns} FROM ({legacy}) l) x
     GROUP BY {names})
SELECT (SELECT coalesce(sum(from_view), 0) FROM g)::bigint,
       (SELECT coalesce(sum(from_legacy), 0) FROM g)::bigint, d.*
  FROM (SELECT 1) one
  LEFT JOIN (SELECT CASE WHEN from_view > from_legacy THEN 'moved' ELSE 'legacy' END AS diff_side,
                    {names}
               FROM g WHERE from_view <> from_legacy
              ORDER BY {order} LIMIT 4) d ON true"
    )
}

/// The two counts of a [`check_sql`] answer: (view, legacy).
fn check_counts(rows: &[Row]) -> (u64, u64) {
    let get = |i: usize| {
        rows.first()
            .and_then(|r| r.try_get::<_, i64>(i).ok())
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
    };
    (get(0), get(1))
}

/// The first difference of a [`check_sql`] answer: (collector, seq, what), or `None`.
fn first_difference(
    rows: &[Row],
    columns: &[&str],
    at: usize,
    paired: bool,
) -> Option<(Option<String>, Option<i64>, String)> {
    let diffs: Vec<DiffRow> = rows
        .iter()
        .filter_map(|r| DiffRow::read(r, columns, at))
        .collect();
    describe(&diffs, columns, paired)
}

/// One differing row of a [`check_sql`] answer, its values as text.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DiffRow {
    /// "moved" (the view shows it, the legacy table does not) or "legacy".
    side: String,
    values: Vec<Option<String>>,
}

impl DiffRow {
    /// The row's side at column `at`, its values after it.
    fn read(row: &Row, columns: &[&str], at: usize) -> Option<DiffRow> {
        let side: Option<String> = row.try_get(at).ok()?;
        let side = side?;
        let values = (0..columns.len())
            .map(|i| cell_text(row, at + 1 + i))
            .collect();
        Some(DiffRow { side, values })
    }

    fn get(&self, columns: &[&str], name: &str) -> Option<&str> {
        let i = columns.iter().position(|c| *c == name)?;
        self.values.get(i)?.as_deref()
    }
}

/// A cell of any of the checked columns' types, as text.
fn cell_text(row: &Row, i: usize) -> Option<String> {
    if let Ok(v) = row.try_get::<_, Option<String>>(i) {
        return v;
    }
    if let Ok(v) = row.try_get::<_, Option<i64>>(i) {
        return v.map(|v| v.to_string());
    }
    if let Ok(v) = row.try_get::<_, Option<i16>>(i) {
        return v.map(|v| v.to_string());
    }
    if let Ok(v) = row.try_get::<_, Option<bool>>(i) {
        return v.map(|v| v.to_string());
    }
    if let Ok(v) = row.try_get::<_, Option<Timestamp>>(i) {
        return v.map(|v| v.to_string());
    }
    Some("?".to_owned())
}

/// What the differing rows say, decided without I/O: the first row's collector and seq, and the
/// columns in which its two versions differ (or which version is missing).
fn describe(
    diffs: &[DiffRow],
    columns: &[&str],
    paired: bool,
) -> Option<(Option<String>, Option<i64>, String)> {
    let first = diffs.first()?;
    let key = |d: &DiffRow| {
        (
            d.get(columns, "collector").map(str::to_owned),
            d.get(columns, "seq").map(str::to_owned),
            d.get(columns, "ordinal").map(str::to_owned),
        )
    };
    // `paired`: the rows are the two versions of one legacy row, whatever their values.
    let other = diffs
        .iter()
        .skip(1)
        .find(|d| d.side != first.side && (paired || key(d) == key(first)));
    // Named as the legacy rows have it (what the user finds there).
    let named = match other {
        Some(other) if first.side == "moved" => other,
        _ => first,
    };
    let collector = named.get(columns, "collector").map(str::to_owned);
    let seq_text = named.get(columns, "seq").map(str::to_owned);
    let seq = seq_text.as_deref().and_then(|s| s.parse().ok());
    let who = format!(
        "collector {}, seq {}",
        collector.as_deref().unwrap_or("(none)"),
        seq_text.as_deref().unwrap_or("(none)")
    );
    let what = match other {
        Some(other) => {
            let (moved, legacy) = if first.side == "moved" {
                (first, other)
            } else {
                (other, first)
            };
            let differing: Vec<String> = columns
                .iter()
                .enumerate()
                .filter(|(i, _)| moved.values.get(*i) != legacy.values.get(*i))
                .map(|(i, c)| {
                    format!(
                        "{c}: legacy {} / moved {}",
                        shown(legacy.values.get(i).cloned().flatten()),
                        shown(moved.values.get(i).cloned().flatten())
                    )
                })
                .collect();
            format!("{who}: {}", differing.join("; "))
        }
        None if first.side == "moved" => {
            format!("{who}: the moved rows show it, the legacy rows do not have it")
        }
        None => format!("{who}: the legacy rows have it, the moved rows do not show it"),
    };
    Some((collector, seq, what))
}

/// A value for a message: printable, cut at 200 characters.
fn shown(v: Option<String>) -> String {
    match v {
        None => "null".to_owned(),
        Some(s) => {
            let s = crate::text::printable(&s);
            if s.chars().count() > 200 {
                let cut: String = s.chars().take(200).collect();
                format!("{cut}...")
            } else {
                s.into_owned()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Progress, decided without I/O.

/// Messages per second.
fn rate(messages: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0;
    }
    // A count over a duration, for a progress line: not a price or a quantity.
    (messages as f64 / secs).round() as u64
}

/// The time left after `done` of the ranges whose estimated messages are `estimates` took
/// `elapsed`: by estimated messages when every range has an estimate, else by ranges. `None`:
/// nothing left (or nothing to go by).
fn eta(elapsed: Duration, estimates: &[u64], done: usize) -> Option<Duration> {
    let done = done.min(estimates.len());
    if done == estimates.len() || done == 0 {
        return None;
    }
    let (done_weight, left_weight) = if estimates.iter().all(|e| *e > 0) {
        (
            estimates[..done].iter().sum::<u64>(),
            estimates[done..].iter().sum::<u64>(),
        )
    } else {
        (done as u64, (estimates.len() - done) as u64)
    };
    if done_weight == 0 {
        return None;
    }
    let nanos = elapsed.as_nanos() * u128::from(left_weight) / u128::from(done_weight);
    Some(Duration::from_nanos(
        u64::try_from(nanos).unwrap_or(u64::MAX),
    ))
}

/// A duration for a progress line: `42 s`, `3 min 5 s`, `2 h 10 min`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{} s", s.max(1))
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_left_goes_by_estimated_messages_when_every_range_has_one() {
        // (estimates, done, elapsed s, expected s)
        let cases: &[(&[u64], usize, u64, Option<u64>)] = &[
            // Ranges of 100, 300, 600 messages: one done in 10 s leaves 900 at 10/100 s each.
            (&[100, 300, 600], 1, 10, Some(90)),
            (&[100, 300, 600], 2, 40, Some(60)),
            // Every range done: nothing left.
            (&[100, 300, 600], 3, 100, None),
            // One range without an estimate (never analyzed): by ranges.
            (&[100, 0, 600], 1, 10, Some(20)),
            // Nothing done yet: nothing to go by.
            (&[100, 200], 0, 0, None),
        ];
        for (estimates, done, elapsed, want) in cases {
            assert_eq!(
                eta(Duration::from_secs(*elapsed), estimates, *done).map(|d| d.as_secs()),
                *want,
                "{estimates:?} {done}"
            );
        }
    }

    #[test]
    fn rates_and_durations_read_as_a_person_would_say_them() {
        assert_eq!(rate(5000, Duration::from_millis(500)), 10_000);
        assert_eq!(rate(5000, Duration::ZERO), 0);
        assert_eq!(human(Duration::from_millis(300)), "1 s");
        assert_eq!(human(Duration::from_secs(185)), "3 min 5 s");
        assert_eq!(human(Duration::from_secs(7800)), "2 h 10 min");
    }

    fn row(side: &str, values: &[Option<&str>]) -> DiffRow {
        DiffRow {
            side: side.to_owned(),
            values: values.iter().map(|v| v.map(str::to_owned)).collect(),
        }
    }

    #[test]
    fn a_difference_names_the_seq_and_the_columns_that_differ() {
        let cols = &["collector", "seq", "raw_message", "checksum"];
        let moved = row(
            "moved",
            &[Some("c1"), Some("42"), Some(r#"{"a": 1.5}"#), Some("7")],
        );
        let legacy = row(
            "legacy",
            &[Some("c1"), Some("42"), Some(r#"{"a": 1.50}"#), Some("7")],
        );
        let (collector, seq, what) =
            describe(&[legacy.clone(), moved.clone()], cols, false).unwrap();
        assert_eq!((collector.as_deref(), seq), (Some("c1"), Some(42)));
        assert_eq!(
            what,
            r#"collector c1, seq 42: raw_message: legacy {"a": 1.50} / moved {"a": 1.5}"#
        );
        // Only one version: which side has it.
        let (_, _, what) = describe(std::slice::from_ref(&legacy), cols, false).unwrap();
        assert!(what.ends_with("the moved rows do not show it"), "{what}");
        let (_, _, what) = describe(&[moved], cols, false).unwrap();
        assert!(what.ends_with("the legacy rows do not have it"), "{what}");
        // The original tool's rows have no collector.
        let orphan = row("legacy", &[None, Some("7"), None, None]);
        let (collector, seq, what) = describe(&[orphan], cols, false).unwrap();
        assert_eq!((collector, seq), (None, Some(7)));
        assert!(what.starts_with("collector (none), seq 7"), "{what}");
        assert!(describe(&[], cols, true).is_none());
        // The two versions of one row, told apart by their key (another collector): paired, and
        // named as the legacy rows have it.
        let impostor = row(
            "moved",
            &[Some("c9"), Some("42"), Some(r#"{"a": 1.50}"#), Some("7")],
        );
        let (collector, seq, what) = describe(&[impostor, legacy], cols, true).unwrap();
        assert_eq!((collector.as_deref(), seq), (Some("c1"), Some(42)));
        assert_eq!(
            what,
            "collector c1, seq 42: collector: legacy c1 / moved c9"
        );
    }

    #[test]
    fn the_statements_read_the_original_tools_id_only_where_the_table_has_one() {
        let with = MoveSql::new(true);
        let without = MoveSql::new(false);
        assert!(with.book_original.is_some() && with.delete_entries_original.is_some());
        assert!(without.book_original.is_none() && without.delete_entries_original.is_none());
        assert!(with.insert_other.contains("m.id::bigint"));
        assert!(!without.insert_other.contains("m.id"));
        assert!(!without.check_messages.contains("m.id"));
        // The checks read the book rows through the views' own definitions.
        assert!(
            with.check_messages
                .contains(&book_messages_sql("kb_move_b", ", b.l_toid, b.l_tid"))
        );
        assert!(with.check_entries.contains(&book_entries_sql("kb_move_b")));
    }
}
