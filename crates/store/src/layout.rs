//! The compatibility views over the book table (schema version 6), and the state of the move out
//! of the legacy tables.
//!
//! `kraken_orderbook_messages` and `kraken_orderbook_entries` keep the columns and types the
//! tables of that name had (the original tool's README queries run unchanged); they read
//! `krakenbook_book` (frames rebuilt from their levels), `krakenbook_other` (frames stored whole)
//! and, while rows of the older layout remain, `krakenbook_legacy_messages` /
//! `krakenbook_legacy_entries`. `krakenbook_copies` has one row per received copy of a book
//! message (the first copy and each one packed in `dup`/`dups`): a stream's records.
//!
//! What must always hold:
//! - for every book row without `raw`, the messages view's `raw_message` equals, as `jsonb`, the
//!   frame the collector received (the writer stores `raw` whenever it would not);
//! - the entries view lists each stored level once, in wire order (`ordinal`), bids first;
//! - the views are replaced in one transaction: a reader sees either the old or the new ones.

use tokio_postgres::Client;

use super::StoreError;

/// A book row's frame rebuilt from its columns (`b` is the row), as `jsonb`.
pub(crate) const REBUILT_FRAME: &str = "jsonb_build_object(
         'channel', 'book',
         'type', CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END,
         'data', jsonb_build_array(jsonb_build_object(
           'symbol', b.symbol,
           'bids', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'price', krakenbook_dec(b.levels[2 * i - 1]),
                                'qty', krakenbook_dec(b.levels[2 * i])) ORDER BY i)
                              FROM generate_series(1, b.n_bids) i), '[]'::jsonb),
           'asks', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'price', krakenbook_dec(b.levels[2 * i - 1]),
                                'qty', krakenbook_dec(b.levels[2 * i])) ORDER BY i)
                              FROM generate_series(b.n_bids + 1, cardinality(b.levels) / 2) i),
                             '[]'::jsonb),
           'checksum', b.checksum::bigint & 4294967295,
           'timestamp', krakenbook_kraken_ts(b.\"timestamp\"))))";

const MESSAGE_COLUMNS: &str = "\"timestamp\", received_at, collector, seq, conn_id, conn_seq, \
    channel, message_type, symbol, checksum, checksum_ok, raw_message, raw_text, raw_bytes, \
    best_bid_price, best_bid_qty, best_ask_price, best_ask_qty";

/// What `kraken_orderbook_messages` shows for the book rows of `source` (`krakenbook_book`, or a
/// table with its columns: the legacy move checks its new rows through this before they are
/// stored), with the columns `extra` adds (`, b.col`; empty for the view).
pub(crate) fn book_messages_sql(source: &str, extra: &str) -> String {
    format!(
        "SELECT b.\"timestamp\", b.received_at,
       (SELECT c.name FROM krakenbook_collectors c WHERE c.id = b.collector_id) AS collector,
       b.seq, b.conn_id, NULL::bigint AS conn_seq, 'book'::text AS channel,
       CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END AS message_type,
       b.symbol, b.checksum::bigint & 4294967295 AS checksum, b.checksum_ok,
       coalesce(b.raw, {REBUILT_FRAME}) AS raw_message,
       NULL::text AS raw_text, NULL::bytea AS raw_bytes,
       NULL::numeric AS best_bid_price, NULL::numeric AS best_bid_qty,
       NULL::numeric AS best_ask_price, NULL::numeric AS best_ask_qty{extra}
  FROM {source} b"
    )
}

/// What `kraken_orderbook_entries` shows for the book rows of `source` (as
/// [`book_messages_sql`]): each row joined to its levels, prices at odd positions of `levels`
/// (unnest ... WITH ORDINALITY: planned at 10 rows a message, where generate_series is planned at
/// 1000, which pushes plans over jit_above_cost); a row whose values do not fit dec64 has its
/// levels in raw only, read from there by the second branch of the lateral subquery: behind a
/// one-time filter on `levels IS NULL` (never started for other rows: a function scan started
/// per row cost 8 µs) and an unnest of an array (planned at 10 rows; jsonb_array_elements is
/// planned at 100, which pushes plans over jit_above_cost).
///
/// One join, not a `UNION ALL` of two: PostgreSQL plans the branches of a `UNION ALL` of joins
/// as subqueries that never learn the outer query's order, so `ORDER BY timestamp DESC LIMIT 10`
/// over two branches sorted every level of the table (892 ms where the older layout took
/// 0.08 ms); over one join it walks the time index backwards.
pub(crate) fn book_entries_sql(source: &str) -> String {
    format!(
        "SELECT b.\"timestamp\", b.received_at, b.symbol,
       CASE WHEN e.k <= b.n_bids THEN 'bid' ELSE 'ask' END AS side,
       e.price, e.quantity,
       CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END AS message_type,
       b.checksum::bigint & 4294967295 AS checksum,
       (SELECT c.name FROM krakenbook_collectors c WHERE c.id = b.collector_id) AS collector,
       b.seq, (e.k - 1)::smallint AS ordinal
  FROM {source} b
  CROSS JOIN LATERAL (
      SELECT (u.k + 1) / 2 AS k, krakenbook_dec(u.v) AS price,
             krakenbook_dec(b.levels[u.k + 1]) AS quantity
        FROM unnest(b.levels) WITH ORDINALITY u(v, k)
       WHERE u.k % 2 = 1
      UNION ALL
      SELECT l.k, (l.v ->> 'price')::numeric, (l.v ->> 'qty')::numeric
        FROM unnest(ARRAY(SELECT jsonb_array_elements(
                 coalesce(b.raw -> 'data' -> 0 -> 'bids', '[]')
                 || coalesce(b.raw -> 'data' -> 0 -> 'asks', '[]'))))
             WITH ORDINALITY l(v, k)
       WHERE b.levels IS NULL) e"
    )
}

/// The statements that (re)create the views; `legacy`: rows of the older layout remain.
pub fn views_sql(legacy: bool) -> String {
    let legacy_messages = if legacy {
        format!("\nUNION ALL\nSELECT {MESSAGE_COLUMNS} FROM krakenbook_legacy_messages")
    } else {
        String::new()
    };
    let legacy_entries = if legacy {
        "\nUNION ALL\nSELECT \"timestamp\", received_at, symbol, side, price, quantity, message_type, \
         checksum, collector, seq, ordinal FROM krakenbook_legacy_entries"
    } else {
        ""
    };
    let book_messages = book_messages_sql("krakenbook_book", "");
    let book_entries = book_entries_sql("krakenbook_book");
    format!(
        "DROP VIEW IF EXISTS kraken_orderbook_messages, kraken_orderbook_entries, krakenbook_copies;
-- The frames stored whole first: a query without ORDER BY (the original README's
-- `jsonb_pretty(raw_message) ... LIMIT 1`) gets the first frame received (Kraken's status message,
-- as the older layout gave) without rebuilding a book frame.
CREATE VIEW kraken_orderbook_messages AS
SELECT {MESSAGE_COLUMNS} FROM krakenbook_other
UNION ALL
{book_messages}{legacy_messages};

-- Each book row joined to its levels (prices at odd positions of levels; a row whose values do
-- not fit dec64 has them in raw only). One join, not a UNION ALL: ORDER BY timestamp ... LIMIT
-- walks the time index.
CREATE VIEW kraken_orderbook_entries AS
{book_entries}{legacy_entries};

-- Every received copy of a book message: the row's first copy (copy 0) and each packed in dups.
CREATE VIEW krakenbook_copies AS
SELECT b.\"timestamp\", b.symbol, b.collector_id, b.kind, b.checksum, b.n_bids, b.levels, b.raw,
       b.seq AS row_seq, c.conn_id, c.seq, c.received_at, c.checksum_ok, c.copy
  FROM krakenbook_book b
  CROSS JOIN LATERAL (
      SELECT b.conn_id, b.seq, b.received_at, b.checksum_ok, 0::bigint AS copy
      UNION ALL
      SELECT krakenbook_dup_conn(b.conn_id, u.d), krakenbook_dup_seq(b.seq, u.d),
             krakenbook_dup_received(b.received_at, u.d), krakenbook_dup_ok(u.d), u.k
        FROM unnest(CASE WHEN b.dup IS NOT NULL
                         THEN array_prepend(b.dup, coalesce(b.dups, '{{}}'::bigint[])) END)
             WITH ORDINALITY u(d, k)) c;"
    )
}

/// Whether the legacy tables (rows of the layout before version 6) still exist.
pub async fn legacy_exists(client: &Client) -> Result<bool, StoreError> {
    Ok(client
        .query_one(
            "SELECT to_regclass('krakenbook_legacy_messages') IS NOT NULL",
            &[],
        )
        .await
        .map_err(StoreError::db("looking for the legacy tables"))?
        .get(0))
}

/// Drops the legacy tables when they hold no row, and (re)creates the views for what remains.
/// Returns whether legacy rows remain.
pub async fn settle_views(client: &Client) -> Result<bool, StoreError> {
    let mut legacy = legacy_exists(client).await?;
    if legacy {
        let rows: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM krakenbook_legacy_messages)
                     OR EXISTS (SELECT 1 FROM krakenbook_legacy_entries)",
                &[],
            )
            .await
            .map_err(StoreError::db("looking for rows in the legacy tables"))?
            .get(0);
        legacy = rows;
    }
    let drop = if legacy {
        ""
    } else {
        "DROP VIEW IF EXISTS kraken_orderbook_messages, kraken_orderbook_entries;
         DROP TABLE IF EXISTS krakenbook_legacy_messages;
         DROP TABLE IF EXISTS krakenbook_legacy_entries;
         DELETE FROM krakenbook_layout_migration WHERE state = 'pending';"
    };
    let result = client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL client_min_messages = warning; {drop} {} COMMIT;",
            views_sql(legacy)
        ))
        .await;
    if let Err(e) = result {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(StoreError::db("creating the views over the book table")(e));
    }
    Ok(legacy)
}
