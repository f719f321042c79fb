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

/// A book row's frame rebuilt from its columns (`b` is the row), as `jsonb`: one call of
/// `krakenbook_frame` (migration 8), planned as a function call where two aggregate subqueries
/// were planned with every query on the view before.
pub(crate) const REBUILT_FRAME: &str =
    "krakenbook_frame(b.kind, b.symbol, b.levels, b.n_bids, b.checksum, b.\"timestamp\")";

/// The levels of a message the entries view lists inline, as `1..ORDINALS_INLINE` (a message
/// with more, or with its levels in raw only, gets its ordinals from `krakenbook_level_ordinals`).
const ORDINALS_INLINE: usize = 256;

const MESSAGE_COLUMNS: &str = "\"timestamp\", received_at, collector, seq, conn_id, conn_seq, \
    channel, message_type, symbol, checksum, checksum_ok, raw_message, raw_text, raw_bytes, \
    best_bid_price, best_bid_qty, best_ask_price, best_ask_qty";

/// What `kraken_orderbook_messages` shows for the book rows of `source` (`krakenbook_book`, or a
/// table with its columns: the legacy move checks its new rows through this before they are
/// stored), with the columns `extra` adds (`, b.col`; empty for the view).
///
/// `conn_seq` is `krakenbook_serial()` (migration 9): NULL once inlined, and PARALLEL UNSAFE, so
/// every query that names the view is planned serial. Under the view's `UNION ALL` the book
/// table is sized before TimescaleDB expands its chunks (2 rows, whatever it holds), and the
/// parallel plans picked on that estimate gather every row to the leader: `COUNT(*)` ran 5 to 7
/// times slower than serial.
pub(crate) fn book_messages_sql(source: &str, extra: &str) -> String {
    format!(
        "SELECT b.\"timestamp\", b.received_at,
       krakenbook_collector_name(b.collector_id) AS collector,
       b.seq, b.conn_id, krakenbook_serial() AS conn_seq, 'book'::text AS channel,
       CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END AS message_type,
       b.symbol, b.checksum::bigint & 4294967295 AS checksum, b.checksum_ok,
       coalesce(b.raw, {REBUILT_FRAME}) AS raw_message,
       NULL::text AS raw_text, NULL::bytea AS raw_bytes,
       NULL::numeric AS best_bid_price, NULL::numeric AS best_bid_qty,
       NULL::numeric AS best_ask_price, NULL::numeric AS best_ask_qty{extra}
  FROM {source} b"
    )
}

/// The powers of ten `krakenbook_dec` (migration 6) multiplies a dec64 mantissa by: 10^-0 to
/// 10^-31, each written with exactly that scale (numeric multiplication adds the scales, so
/// `150 * 0.01` is `1.50`). The same literal as that function's body (a test compares them).
const POWERS_OF_TEN: &str = "'{1,0.1,0.01,0.001,0.0001,0.00001,0.000001,0.0000001,0.00000001,\
0.000000001,0.0000000001,0.00000000001,0.000000000001,0.0000000000001,0.00000000000001,\
0.000000000000001,0.0000000000000001,0.00000000000000001,0.000000000000000001,\
0.0000000000000000001,0.00000000000000000001,0.000000000000000000001,\
0.0000000000000000000001,0.00000000000000000000001,0.000000000000000000000001,\
0.0000000000000000000000001,0.00000000000000000000000001,0.000000000000000000000000001,\
0.0000000000000000000000000001,0.00000000000000000000000000001,\
0.000000000000000000000000000001,0.0000000000000000000000000000001}'::numeric[]";

/// `krakenbook_dec(value)` written out: the expression PostgreSQL inlines that SQL function
/// into, spelled in the view instead. Each inlining read the function's stored body again,
/// powers of ten included, at every planning of a query on the view (two per query: price and
/// quantity); a view's own expressions are read once per session. The same expression, so the
/// same values (`NULL` for `NULL`, as the function is `STRICT`).
fn dec_sql(value: &str) -> String {
    format!("(({value} >> 5)::numeric * ({POWERS_OF_TEN})[({value} & 31)::integer + 1])")
}

/// What `kraken_orderbook_entries` shows for the book rows of `source` (as
/// [`book_messages_sql`]): each row joined to its levels' ordinals `k` (1, 2, ...: bids first,
/// in wire order), the price of level `k` at `levels[2k - 1]` and its quantity at `levels[2k]`
/// (dec64, decoded by [`dec_sql`]); a row whose values do not fit dec64 has its levels in raw
/// only, read from there by `krakenbook_raw_level` (a `CASE` on `levels IS NULL`).
///
/// The ordinals come from `unnest` in the select list of a lateral subquery: PostgreSQL runs it
/// as a ProjectSet, row by row, where a function scan in `FROM` (the `unnest ... WITH
/// ORDINALITY` of before, and any `UNION ALL` of two) fills a tuplestore for every message. The
/// array is `1..n` sliced from an inline constant for messages of up to [`ORDINALS_INLINE`]
/// levels (a constant in the view is read once per session) and `krakenbook_level_ordinals`
/// otherwise (more levels, or levels in raw only). What is rare is a PL/pgSQL call (migration
/// 9): the planner sees one function call, where SQL functions (schema 8) were inlined into
/// every query on the view and the raw fallback's jsonb paths were planned with each (warm
/// planning of `ORDER BY timestamp DESC LIMIT 10`: 0.15 ms, 0.10 ms since).
///
/// `WHERE coalesce(cardinality(b.levels), krakenbook_serial()::integer, 0) >= 0` holds for every
/// row: it is there for the planner, twice.
/// - PostgreSQL plans `unnest` of an array it cannot see at 10 elements, four times what a book
///   message holds on average (2.39 levels at depth 100; Kraken's updates carry 1 to 3), so
///   every plan on the view was costed for 4 times its rows: `COUNT(*)` was JIT-compiled and a
///   symbol's 30 seconds went to a parallel plan that ran 3 times slower than serial. An
///   inequality on an expression it has no statistics for is priced at one third, so the view
///   is planned at 3.3 levels a message; on the message, not on each level, because a filter
///   on the ordinals keeps a Subquery Scan node over every level (`COUNT(*)` 15% slower).
/// - `krakenbook_serial()` (NULL, dropped from the `coalesce` when the planner inlines it) is
///   PARALLEL UNSAFE, so queries on this view are planned serial, as on the messages view
///   (schema 10). A symbol's levels in time order (`WHERE symbol = ... ORDER BY timestamp
///   DESC`) went to a parallel bitmap heap scan, costed by PostgreSQL's model below the serial
///   plan, that ran 1.3 to 1.8 times slower than it on 2 vCPUs (30-34 ms against 39-45 ms for
///   6,500 messages' 15,000 levels; the leader sorts every row the workers send). `ALTER
///   FUNCTION krakenbook_serial() PARALLEL SAFE` gives both views their parallel plans back.
///
/// One join, not a `UNION ALL` of two: PostgreSQL plans the branches of a `UNION ALL` of joins
/// as subqueries that never learn the outer query's order, so `ORDER BY timestamp DESC LIMIT 10`
/// over two branches sorted every level of the table (892 ms where the older layout took
/// 0.08 ms); over one join it walks the time index backwards.
pub(crate) fn book_entries_sql(source: &str) -> String {
    let inline = (1..=ORDINALS_INLINE)
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "SELECT b.\"timestamp\", b.received_at, b.symbol,
       CASE WHEN e.k <= b.n_bids THEN 'bid' ELSE 'ask' END AS side,
       CASE WHEN b.levels IS NOT NULL THEN {price}
            ELSE krakenbook_raw_level(b.raw, e.k, 'price') END AS price,
       CASE WHEN b.levels IS NOT NULL THEN {quantity}
            ELSE krakenbook_raw_level(b.raw, e.k, 'qty') END AS quantity,
       CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END AS message_type,
       b.checksum::bigint & 4294967295 AS checksum,
       krakenbook_collector_name(b.collector_id) AS collector,
       b.seq, (e.k - 1)::smallint AS ordinal
  FROM {source} b
  CROSS JOIN LATERAL (
      SELECT unnest(CASE WHEN cardinality(b.levels) <= {twice}
                         THEN ('{{{inline}}}'::integer[])[1:cardinality(b.levels) / 2]
                         ELSE krakenbook_level_ordinals(b.levels, b.raw) END) AS k) e
 WHERE coalesce(cardinality(b.levels), krakenbook_serial()::integer, 0) >= 0",
        twice = 2 * ORDINALS_INLINE,
        price = dec_sql("b.levels[2 * e.k - 1]"),
        quantity = dec_sql("b.levels[2 * e.k]"),
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

-- Each book row joined to its levels' ordinals (prices at odd positions of levels; a row whose
-- values do not fit dec64 has them in raw only). One join, not a UNION ALL: ORDER BY timestamp
-- ... LIMIT walks the time index.
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

#[cfg(test)]
mod tests {
    use super::{POWERS_OF_TEN, book_entries_sql, dec_sql};

    /// The entries view decodes dec64 with `krakenbook_dec`'s own expression: the powers of ten
    /// are the literal of that function's body in migration 6 (applied migrations never change,
    /// so a difference is an edit of this file), and the view names no call of it.
    #[test]
    fn the_entries_view_decodes_dec64_with_krakenbook_dec_s_own_powers_of_ten() {
        let sql = include_str!("migrations/0006_layout.sql");
        let body = &sql[sql
            .find("CREATE FUNCTION krakenbook_dec(")
            .expect("migration 6 creates krakenbook_dec")..];
        let body = &body[..body.find(';').expect("one statement")];
        let start = body.find("'{").expect("a literal array");
        let end = body.find("::numeric[]").expect("of numerics") + "::numeric[]".len();
        assert_eq!(&body[start..end], POWERS_OF_TEN);
        assert!(body.contains(
            "RETURN (v >> 5)::numeric * ('{1,0.1,0.01,0.001,0.0001,0.00001,0.000001,0.0000001,"
        ));
        assert!(body.ends_with("::numeric[])[(v & 31)::int + 1]"), "{body}");
        assert_eq!(
            dec_sql("v"),
            format!("((v >> 5)::numeric * ({POWERS_OF_TEN})[(v & 31)::integer + 1])")
        );
        let view = book_entries_sql("krakenbook_book");
        assert!(!view.contains("krakenbook_dec("), "{view}");
        assert_eq!(view.matches(POWERS_OF_TEN).count(), 2, "price and quantity");
    }
}
