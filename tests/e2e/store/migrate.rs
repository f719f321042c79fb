//! Schema and migrations on a real TimescaleDB: migrating twice or concurrently, the chunk
//! interval, a database made by the original tool's setup SQL migrated keeping every row, a
//! database written by the version-5 layout moved into the new tables range by range (every row
//! reads back identical; a failure, a killed process or a row that would read back differently
//! leave every range not finished as it was), the original README's queries run unmodified, and
//! the `migrate` command's output and errors.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use krakenbook::store::{self, Compression, MigrateOptions, StoreError};
use krakenbook::time::Timestamp;

use super::{count, expected, frame_record, simple_rows, write_all};
use crate::db::{TestDb, column, connect, fixture_records, fresh_db, migrated_db, shared_cluster};
use crate::support::run;

// ---------------------------------------------------------------------------------------------
// Migrations.

/// Columns, indexes, constraints, triggers and hypertable dimensions of the public schema.
async fn schema_snapshot(client: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
           FROM information_schema.columns WHERE table_schema = 'public'",
        "SELECT tablename || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'public'",
        "SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
          WHERE connamespace = 'public'::regnamespace",
        "SELECT hypertable_name || ' ' || time_interval::text FROM timescaledb_information.dimensions",
        "SELECT version || ' ' || name FROM krakenbook_migrations",
    ] {
        let mut rows: Vec<String> = column(client, sql).await;
        rows.sort();
        out.extend(rows);
    }
    out
}

#[tokio::test]
async fn migrating_twice_is_a_no_op() {
    let db = fresh_db().await;
    let client = connect(&db.url).await;
    let first = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (first.from_version, first.to_version, first.applied.clone()),
        (
            0,
            10,
            vec![
                (1, "schema"),
                (2, "book_states"),
                (3, "journal_instance"),
                (4, "connections"),
                (5, "collector_state"),
                (6, "layout"),
                (7, "archive"),
                (8, "views"),
                (9, "view_plans"),
                (10, "frame_rebuild")
            ]
        )
    );
    assert!(!first.converted_original_tables);
    assert_eq!(
        first.compression,
        Compression::Skipped {
            license: "apache".into()
        }
    );
    // A new database has no legacy rows: nothing to move, and the legacy tables are gone.
    assert_eq!((first.legacy.clone(), first.legacy_remains), (None, false));
    let before = schema_snapshot(&client).await;
    assert!(
        before
            .iter()
            .any(|l| l.contains("krakenbook_book_snapshot_view_idx"))
    );
    assert!(
        !before.iter().any(|l| l.contains("krakenbook_legacy")),
        "{before:?}"
    );
    let second = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap();
    assert_eq!((second.from_version, second.applied.len()), (10, 0));
    assert_eq!((second.legacy, second.legacy_remains), (None, false));
    assert_eq!(schema_snapshot(&client).await, before);
}

#[tokio::test]
async fn concurrent_migrations_are_safe() {
    let db = fresh_db().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            store::migrate(&client, &MigrateOptions::default()).await
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"))
            .applied
            .len();
    }
    assert_eq!(applied, 10, "exactly one process applies each migration");
    let client = connect(&db.url).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM krakenbook_migrations").await,
        10
    );
}

#[tokio::test]
async fn a_chunk_interval_is_validated_and_applied() {
    let db = fresh_db().await;
    let client = connect(&db.url).await;
    for bad in ["soon", "-1 day", "0"] {
        let e = store::migrate(
            &client,
            &MigrateOptions {
                chunk_interval: Some(bad.into()),
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(e, StoreError::Option { .. }), "{bad}: {e}");
    }
    let r = store::migrate(
        &client,
        &MigrateOptions {
            chunk_interval: Some("6h".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(r.chunk_interval_set.as_deref(), Some("06:00:00"));
    let intervals: Vec<String> = column(
        &client,
        "SELECT time_interval::text FROM timescaledb_information.dimensions",
    )
    .await;
    assert_eq!(intervals, ["06:00:00", "06:00:00", "06:00:00"]);
}

/// The original tool's setup SQL, verbatim from the issue.
const ORIGINAL_SETUP: &str = "
CREATE TABLE IF NOT EXISTS kraken_orderbook_messages (id SERIAL, timestamp TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  received_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), channel TEXT NOT NULL, message_type TEXT NOT NULL,
  symbol TEXT NOT NULL, checksum BIGINT, raw_message JSONB NOT NULL, PRIMARY KEY (timestamp, symbol, id));
SELECT create_hypertable('kraken_orderbook_messages', 'timestamp', if_not_exists => TRUE);
CREATE TABLE IF NOT EXISTS kraken_orderbook_entries (timestamp TIMESTAMPTZ NOT NULL, symbol TEXT NOT NULL,
  side TEXT NOT NULL, price NUMERIC(20,8) NOT NULL, quantity NUMERIC(20,8) NOT NULL, message_type TEXT NOT NULL,
  checksum BIGINT, PRIMARY KEY (timestamp, symbol, side, price));
SELECT create_hypertable('kraken_orderbook_entries', 'timestamp', if_not_exists => TRUE);
CREATE INDEX IF NOT EXISTS idx_orderbook_messages_symbol_type ON kraken_orderbook_messages(symbol, message_type);
CREATE INDEX IF NOT EXISTS idx_orderbook_entries_symbol_side ON kraken_orderbook_entries(symbol, side);
CREATE INDEX IF NOT EXISTS idx_orderbook_messages_timestamp ON kraken_orderbook_messages(timestamp);
CREATE INDEX IF NOT EXISTS idx_orderbook_entries_timestamp ON kraken_orderbook_entries(timestamp);
";

/// Rows as the original tool wrote them: 3 days of messages whose frames hold no book data, and
/// levels at its NUMERIC(20,8) that match no message's frame (72 messages, 144 levels); then three
/// book frames as Kraken sent them with their levels as the tool stored them (rounded to 8
/// decimals, no order), and two messages sharing one key (timestamp, symbol, type, checksum) with
/// the levels the tool's primary key merged for them.
const ORIGINAL_ROWS: &str = r#"
INSERT INTO kraken_orderbook_messages (timestamp, received_at, channel, message_type, symbol, checksum, raw_message)
SELECT '2025-01-01'::timestamptz + i * interval '1 hour', '2025-01-01'::timestamptz + i * interval '1 hour',
       'book', CASE WHEN i % 10 = 0 THEN 'snapshot' ELSE 'update' END,
       CASE WHEN i % 2 = 0 THEN 'BTC/USD' ELSE 'ETH/USD' END, 1000 + i,
       jsonb_build_object('channel', 'book', 'i', i)
  FROM generate_series(1, 72) AS i;
INSERT INTO kraken_orderbook_entries (timestamp, symbol, side, price, quantity, message_type, checksum)
SELECT '2025-01-01'::timestamptz + i * interval '1 hour', 'BTC/USD', s.side,
       62000 + i * 0.1, 0.00005100 * i, 'update', 1000 + i
  FROM generate_series(1, 72) AS i, (VALUES ('bid'), ('ask')) AS s(side);
INSERT INTO kraken_orderbook_messages (timestamp, received_at, channel, message_type, symbol, checksum, raw_message) VALUES
 ('2025-01-05T00:00:01Z', '2025-01-05T00:00:01.2Z', 'book', 'snapshot', 'BTC/USD', 3230000001,
  '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[{"price":62000.1,"qty":0.5},{"price":61999.9,"qty":1.25}],"asks":[{"price":62000.2,"qty":0.000051004},{"price":62000.3,"qty":2}],"checksum":3230000001,"timestamp":"2025-01-05T00:00:01.000000Z"}]}'),
 ('2025-01-05T00:00:02Z', '2025-01-05T00:00:02.2Z', 'book', 'update', 'BTC/USD', 17,
  '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],"asks":[{"price":62000.2,"qty":0}],"checksum":17,"timestamp":"2025-01-05T00:00:02.000000Z"}]}'),
 ('2025-01-05T00:00:03Z', '2025-01-05T00:00:03.2Z', 'book', 'update', 'ETH/USD', 18,
  '{"channel":"book","type":"update","data":[{"symbol":"ETH/USD","bids":[{"price":3000.5,"qty":1}],"asks":[],"checksum":18,"timestamp":"2025-01-05T00:00:03.000000Z"}]}'),
 ('2025-01-05T00:00:04Z', '2025-01-05T00:00:04.1Z', 'book', 'update', 'ETH/USD', 19,
  '{"channel":"book","type":"update","data":[{"symbol":"ETH/USD","bids":[{"price":3000.4,"qty":1}],"asks":[],"checksum":19,"timestamp":"2025-01-05T00:00:04.000000Z"}]}'),
 ('2025-01-05T00:00:04Z', '2025-01-05T00:00:04.2Z', 'book', 'update', 'ETH/USD', 19,
  '{"channel":"book","type":"update","data":[{"symbol":"ETH/USD","bids":[{"price":3000.3,"qty":2}],"asks":[],"checksum":19,"timestamp":"2025-01-05T00:00:04.000000Z"}]}');
INSERT INTO kraken_orderbook_entries (timestamp, symbol, side, price, quantity, message_type, checksum) VALUES
 ('2025-01-05T00:00:01Z', 'BTC/USD', 'ask', 62000.3, 2, 'snapshot', 3230000001),
 ('2025-01-05T00:00:01Z', 'BTC/USD', 'bid', 61999.9, 1.25, 'snapshot', 3230000001),
 ('2025-01-05T00:00:01Z', 'BTC/USD', 'ask', 62000.2, 0.000051004, 'snapshot', 3230000001),
 ('2025-01-05T00:00:01Z', 'BTC/USD', 'bid', 62000.1, 0.5, 'snapshot', 3230000001),
 ('2025-01-05T00:00:02Z', 'BTC/USD', 'ask', 62000.2, 0, 'update', 17),
 ('2025-01-05T00:00:03Z', 'ETH/USD', 'bid', 3000.5, 1, 'update', 18),
 ('2025-01-05T00:00:04Z', 'ETH/USD', 'bid', 3000.4, 1, 'update', 19),
 ('2025-01-05T00:00:04Z', 'ETH/USD', 'bid', 3000.3, 2, 'update', 19);
"#;

#[tokio::test]
async fn a_database_made_by_the_original_setup_sql_migrates_keeping_every_row() {
    let db = fresh_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .await
        .unwrap();
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    client.batch_execute(ORIGINAL_SETUP).await.unwrap();
    client.batch_execute(ORIGINAL_ROWS).await.unwrap();
    let old_messages = simple_rows(
        &client,
        "SELECT id, timestamp, received_at, channel, message_type, symbol, checksum, raw_message
           FROM kraken_orderbook_messages ORDER BY id",
    )
    .await;
    const ENTRIES: &str = "SELECT timestamp, symbol, side, price, quantity, message_type, checksum
                             FROM kraken_orderbook_entries ORDER BY timestamp, side, price";
    let old_entries = simple_rows(&client, ENTRIES).await;
    assert_eq!((old_messages.len(), old_entries.len()), (77, 152));
    // The tool rounded to 8 decimals.
    assert!(
        old_entries
            .iter()
            .any(|r| r[4].as_deref() == Some("0.00005100")),
        "{old_entries:?}"
    );

    let report = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.converted_original_tables);
    assert_eq!(
        report.applied,
        vec![
            (1, "schema"),
            (2, "book_states"),
            (3, "journal_instance"),
            (4, "connections"),
            (5, "collector_state"),
            (6, "layout"),
            (7, "archive"),
            (8, "views"),
            (9, "view_plans"),
            (10, "frame_rebuild")
        ]
    );
    let moved = report.legacy.clone().expect("the legacy rows moved");
    assert_eq!((moved.ranges, moved.pending), (2, 2), "{moved:?}");
    assert_eq!((moved.messages, moved.book), (77, 3), "{moved:?}");
    // The snapshot's 4 levels, the two updates' 1 each; the rest stay in the legacy table: the
    // 144 that match no frame and the 2 that the messages sharing one key share.
    assert_eq!((moved.levels, moved.levels_left), (6, 146), "{moved:?}");
    assert!(report.legacy_remains);

    // Every row kept, every original column unchanged; the id is the seq.
    assert_eq!(
        simple_rows(
            &client,
            "SELECT seq, timestamp, received_at, channel, message_type, symbol, checksum, raw_message
               FROM kraken_orderbook_messages ORDER BY seq",
        )
        .await,
        old_messages
    );
    assert_eq!(simple_rows(&client, ENTRIES).await, old_entries);
    // The three frames are book rows of collector 0 with their id as seq; their frames are kept
    // whole (their levels, as the tool stored them, do not rebuild them), and their levels read
    // back in book order, best first, with the message's receive time.
    assert_eq!(
        simple_rows(
            &client,
            "SELECT seq, conn_id, raw IS NOT NULL, cardinality(levels) / 2 FROM krakenbook_book
              WHERE collector_id = 0 ORDER BY seq"
        )
        .await,
        [
            ["73", "0", "t", "4"].map(|v| Some(v.to_owned())),
            ["74", "0", "t", "1"].map(|v| Some(v.to_owned())),
            ["75", "0", "t", "1"].map(|v| Some(v.to_owned())),
        ]
    );
    assert_eq!(
        simple_rows(
            &client,
            "SELECT ordinal, side, price, quantity, received_at, collector FROM kraken_orderbook_entries
              WHERE seq = 73 ORDER BY ordinal"
        )
        .await,
        [
            ["0", "bid", "62000.10000000", "0.50000000"],
            ["1", "bid", "61999.90000000", "1.25000000"],
            ["2", "ask", "62000.20000000", "0.00005100"],
            ["3", "ask", "62000.30000000", "2.00000000"],
        ]
        .map(|r| {
            let mut r: Vec<Option<String>> = r.iter().map(|v| Some((*v).to_owned())).collect();
            r.push(Some("2025-01-05 00:00:01.2+00".to_owned()));
            r.push(None);
            r
        })
    );
    // The original README's queries answer as before.
    let one = |rows: Vec<Vec<Option<String>>>| rows[0][0].clone().unwrap();
    assert_eq!(
        one(simple_rows(&client, "SELECT COUNT(*) FROM kraken_orderbook_messages;").await),
        "77"
    );
    assert_eq!(
        one(simple_rows(&client, "SELECT COUNT(*) FROM kraken_orderbook_entries;").await),
        "152"
    );
    assert_eq!(
        simple_rows(
            &client,
            "SELECT * FROM kraken_orderbook_entries WHERE symbol = 'BTC/USD' ORDER BY timestamp DESC;"
        )
        .await
        .len(),
        149
    );
    let latest = simple_rows(
        &client,
        "SELECT * FROM kraken_orderbook_messages ORDER BY timestamp DESC LIMIT 5;",
    )
    .await;
    assert_eq!(latest.len(), 5);
    // Levels that belong to no message stay where they were, in the legacy table, and the legacy
    // messages table is empty; a second run has nothing to move.
    assert_eq!(
        (
            count(&client, "SELECT count(*) FROM krakenbook_legacy_messages").await,
            count(&client, "SELECT count(*) FROM krakenbook_legacy_entries").await
        ),
        (0, 146)
    );
    let again = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap();
    assert_eq!((again.legacy, again.legacy_remains), (None, true));
    // The keys that merged rows are gone; the columns no longer round.
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM pg_constraint WHERE contype = 'p'
              AND conrelid = 'krakenbook_legacy_entries'::regclass"
        )
        .await,
        0
    );

    // The new writer stores beside them: the captures, and a message naming the same price
    // twice (which the old primary key would have merged into one row).
    let mut records = fixture_records();
    let next = records.len() as u64 + 1;
    records.push(frame_record(
        next,
        br#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":62000.1,"qty":0.5},{"price":62000.1,"qty":0.00000001}],"asks":[],"checksum":7,"timestamp":"2025-01-01T01:00:00.000000Z"}]}"#,
    ));
    let e = expected();
    write_all(&db.url, "converted", &records, 1000).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM kraken_orderbook_messages").await,
        77 + e.stored.len() as i64 + 1
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM kraken_orderbook_entries").await,
        152 + e.levels.len() as i64 + 2
    );
    let twice = simple_rows(
        &client,
        &format!(
            "SELECT ordinal, quantity FROM kraken_orderbook_entries
              WHERE collector = 'converted' AND seq = {next} ORDER BY ordinal"
        ),
    )
    .await;
    assert_eq!(
        twice,
        [
            vec![Some("0".into()), Some("0.5".into())],
            vec![Some("1".into()), Some("0.00000001".into())]
        ]
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM kraken_orderbook_messages WHERE seq IS NULL"
        )
        .await,
        0
    );
}

// ---------------------------------------------------------------------------------------------
// The original README's queries, unmodified.

#[tokio::test]
async fn the_original_readme_queries_run_unmodified_and_answer_right() {
    let (db, client) = migrated_db().await;
    write_all(&db.url, "readme", &fixture_records(), 1000).await;
    let e = expected();
    let stored = e.stored.len() as i64;
    let one = |rows: Vec<Vec<Option<String>>>| rows[0][0].clone().unwrap();

    let q = "SELECT COUNT(*) FROM kraken_orderbook_messages;";
    assert_eq!(one(simple_rows(&client, q).await), stored.to_string());
    let q = "SELECT COUNT(*) FROM kraken_orderbook_entries;";
    assert_eq!(
        one(simple_rows(&client, q).await),
        e.levels.len().to_string()
    );

    let mut ts = e.timestamps.clone();
    ts.sort();
    let latest = |n: usize| -> Vec<Timestamp> { ts.iter().rev().take(n).copied().collect() };
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let q = "SELECT * FROM kraken_orderbook_messages ORDER BY timestamp DESC LIMIT 5;";
    let got: Vec<Timestamp> = client
        .query(q, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("timestamp"))
        .collect();
    assert_eq!(got, latest(5));

    let q = "SELECT * FROM kraken_orderbook_entries ORDER BY timestamp DESC LIMIT 10;";
    let rows = client.query(q, &[]).await.unwrap();
    assert_eq!(rows.len(), 10);
    let newest_level: Timestamp = rows[0].get("timestamp");
    let newest_book = e
        .levels
        .iter()
        .map(|l| e.timestamps[e.stored.keys().position(|s| *s == l.0).unwrap()])
        .max()
        .unwrap();
    assert_eq!(newest_level, newest_book);

    let q = "SELECT DISTINCT symbol FROM kraken_orderbook_messages;";
    let symbols: BTreeSet<Option<String>> = simple_rows(&client, q)
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let mut want: BTreeSet<Option<String>> =
        e.books.values().map(|(s, _)| Some(s.clone())).collect();
    // Frames about no symbol (the status frame) have none.
    want.insert(None);
    assert_eq!(symbols, want);

    let q = "SELECT COUNT(*) as total_messages, COUNT(DISTINCT symbol) as unique_symbols, MIN(timestamp) as first_message, MAX(timestamp) as last_message FROM kraken_orderbook_messages;";
    let r = &client.query(q, &[]).await.unwrap()[0];
    assert_eq!(r.get::<_, i64>("total_messages"), stored);
    assert_eq!(r.get::<_, i64>("unique_symbols"), 2);
    assert_eq!(r.get::<_, Timestamp>("first_message"), ts[0]);
    assert_eq!(r.get::<_, Timestamp>("last_message"), *ts.last().unwrap());

    let q = "SELECT jsonb_pretty(raw_message) FROM kraken_orderbook_messages LIMIT 1;";
    let pretty = one(simple_rows(&client, q).await);
    let v: serde_json::Value = serde_json::from_str(&pretty).unwrap();
    assert!(
        v.get("channel").is_some() || v.get("method").is_some(),
        "{pretty}"
    );
    assert!(pretty.contains('\n'), "pretty-printed");

    let q =
        "SELECT * FROM kraken_orderbook_entries WHERE symbol = 'BTC/USD' ORDER BY timestamp DESC;";
    assert_eq!(
        simple_rows(&client, q).await.len() as u64,
        e.levels_by_symbol["BTC/USD"]
    );

    let q = "SELECT * FROM timescaledb_information.hypertables;";
    let names: BTreeSet<String> = client
        .query(q, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>("hypertable_name"))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "kraken_book_states".to_owned(),
            "krakenbook_book".to_owned(),
            "krakenbook_other".to_owned()
        ])
    );
    let q = "SELECT * FROM timescaledb_information.chunks;";
    let chunk_tables: BTreeSet<String> = client
        .query(q, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>("hypertable_name"))
        .collect();
    // The captures hold no book states (the collector writes those), so that table has no chunk.
    let with_rows: BTreeSet<String> = names
        .iter()
        .filter(|n| *n != "kraken_book_states")
        .cloned()
        .collect();
    assert_eq!(chunk_tables, with_rows);
}

/// The README queries that order by time or ask for a symbol's latest rows can walk an index
/// through the views: no Sort over the whole table. Sorts and sequential scans are priced out so
/// that the small fixture cannot hide a plan that must sort (the entries view as a `UNION ALL` of
/// two joins sorted every level for `ORDER BY timestamp DESC LIMIT 10`: 892 ms on 87,000
/// messages, 0.08 ms in the older layout).
#[tokio::test]
async fn the_readme_queries_that_order_by_time_walk_an_index_through_the_views() {
    let (db, client) = migrated_db().await;
    write_all(&db.url, "readme", &fixture_records(), 1000).await;
    client
        .batch_execute("ANALYZE; SET enable_sort = off; SET enable_seqscan = off")
        .await
        .unwrap();
    for q in [
        "SELECT * FROM kraken_orderbook_messages ORDER BY timestamp DESC LIMIT 5",
        "SELECT * FROM kraken_orderbook_entries ORDER BY timestamp DESC LIMIT 10",
        "SELECT collector, seq, timestamp FROM kraken_orderbook_messages WHERE symbol = 'BTC/USD' \
           AND message_type = 'snapshot' AND timestamp <= now() ORDER BY timestamp DESC LIMIT 1",
        "SELECT * FROM kraken_orderbook_messages WHERE symbol = 'BTC/USD' ORDER BY timestamp DESC LIMIT 10",
        "SELECT * FROM kraken_orderbook_entries WHERE symbol = 'BTC/USD' ORDER BY timestamp DESC LIMIT 10",
    ] {
        let plan: Vec<String> = simple_rows(&client, &format!("EXPLAIN {q}"))
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect();
        let plan = plan.join("\n");
        assert!(
            !plan.lines().any(|l| {
                let node = l.trim_start().trim_start_matches("->  ");
                node.starts_with("Sort  (") || node.starts_with("Incremental Sort  (")
            }),
            "{q} sorts:\n{plan}"
        );
        assert!(plan.contains("Index Scan Backward"), "{q}:\n{plan}");
    }
}

/// A book message of 300 bids and 10 asks (more levels than the entries view's inline ordinals):
/// price k, quantity 0.5 (dec64: mantissa * 32 + scale), collector `late`, seq 42.
const DEEP_BOOK_ROW: &str =
    "INSERT INTO krakenbook_book (\"timestamp\", received_at, seq, conn_id, collector_id,
                 n_bids, kind, symbol, checksum, levels)
             SELECT '2026-01-02T03:04:05.678901Z', '2026-01-02T03:04:05.7Z', 42, 1,
                    krakenbook_collector_id('late'), 300, 's', 'DEEP/USD', 7,
                    array_agg(v ORDER BY k, w)
               FROM generate_series(1, 310) k,
                    LATERAL (VALUES (1, k::bigint * 32), (2, 5 * 32 + 1)) l(w, v)";

/// The views' collector name is an array the planner inlines, written again whenever a collector
/// registers: a plan made before a collector registered (a prepared statement) names its rows
/// after; and the entries view lists a message of more levels than its inline ordinals (256)
/// through `krakenbook_ordinals`, every level once, in wire order, with the frame the messages
/// view rebuilds for it.
#[tokio::test]
async fn the_views_name_collectors_registered_after_planning_and_list_messages_of_any_depth() {
    let (_db, client) = migrated_db().await;
    let by_collector = client
        .prepare("SELECT collector, count(*) FROM kraken_orderbook_messages GROUP BY 1 ORDER BY 1")
        .await
        .unwrap();
    assert!(client.query(&by_collector, &[]).await.unwrap().is_empty());
    client.batch_execute(DEEP_BOOK_ROW).await.unwrap();
    let named: Vec<(Option<String>, i64)> = client
        .query(&by_collector, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(named, [(Some("late".to_owned()), 1)]);

    let levels = simple_rows(
        &client,
        "SELECT ordinal, side, price, quantity, collector FROM kraken_orderbook_entries
          WHERE symbol = 'DEEP/USD' ORDER BY ordinal",
    )
    .await;
    assert_eq!(levels.len(), 310);
    for (i, row) in levels.iter().enumerate() {
        let side = if i < 300 { "bid" } else { "ask" };
        let want = [
            i.to_string(),
            side.to_owned(),
            (i + 1).to_string(),
            "0.5".to_owned(),
            "late".to_owned(),
        ];
        assert_eq!(row, &want.map(Some).to_vec());
    }
    let frame: serde_json::Value = serde_json::from_str(
        &simple_rows(
            &client,
            "SELECT raw_message FROM kraken_orderbook_messages WHERE symbol = 'DEEP/USD'",
        )
        .await[0][0]
            .clone()
            .unwrap(),
    )
    .unwrap();
    let data = &frame["data"][0];
    assert_eq!(data["bids"].as_array().unwrap().len(), 300);
    assert_eq!(data["asks"][9].to_string(), r#"{"price":310,"qty":0.5}"#);
    assert_eq!(
        (&frame["type"], &data["checksum"], &data["timestamp"]),
        (
            &serde_json::json!("snapshot"),
            &serde_json::json!(7),
            &serde_json::json!("2026-01-02T03:04:05.678901Z")
        )
    );
}

/// Schema 8's two compatibility views (before migration 9), as `migrate` created them: the
/// entries view inlined its ordinals' SQL functions and the raw fallback's jsonb paths, the
/// messages view's `conn_seq` was a plain NULL (parallel plans allowed).
fn schema_8_views() -> String {
    let inline = (1..=256)
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let raw_level = |key: &str| {
        format!(
            "((coalesce(b.raw -> 'data' -> 0 -> 'bids', '[]') \
               || coalesce(b.raw -> 'data' -> 0 -> 'asks', '[]')) -> (e.k - 1) ->> '{key}')::numeric"
        )
    };
    let columns = "\"timestamp\", received_at, collector, seq, conn_id, conn_seq, channel, \
        message_type, symbol, checksum, checksum_ok, raw_message, raw_text, raw_bytes, \
        best_bid_price, best_bid_qty, best_ask_price, best_ask_qty";
    format!(
        "DROP VIEW kraken_orderbook_messages, kraken_orderbook_entries;
         CREATE VIEW kraken_orderbook_messages AS
         SELECT {columns} FROM krakenbook_other
         UNION ALL
         SELECT b.\"timestamp\", b.received_at, krakenbook_collector_name(b.collector_id),
                b.seq, b.conn_id, NULL::bigint, 'book'::text,
                CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END,
                b.symbol, b.checksum::bigint & 4294967295, b.checksum_ok,
                coalesce(b.raw, krakenbook_frame(b.kind, b.symbol, b.levels, b.n_bids, b.checksum,
                                                 b.\"timestamp\")),
                NULL::text, NULL::bytea, NULL::numeric, NULL::numeric, NULL::numeric, NULL::numeric
           FROM krakenbook_book b;
         CREATE VIEW kraken_orderbook_entries AS
         SELECT b.\"timestamp\", b.received_at, b.symbol,
                CASE WHEN e.k <= b.n_bids THEN 'bid' ELSE 'ask' END AS side,
                CASE WHEN b.levels IS NOT NULL THEN krakenbook_dec(b.levels[2 * e.k - 1])
                     ELSE {raw_price} END AS price,
                CASE WHEN b.levels IS NOT NULL THEN krakenbook_dec(b.levels[2 * e.k])
                     ELSE {raw_qty} END AS quantity,
                CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END AS message_type,
                b.checksum::bigint & 4294967295 AS checksum,
                krakenbook_collector_name(b.collector_id) AS collector,
                b.seq, (e.k - 1)::smallint AS ordinal
           FROM krakenbook_book b
           CROSS JOIN LATERAL (
               SELECT unnest(CASE WHEN b.levels IS NULL THEN krakenbook_raw_ordinals(b.raw)
                                  WHEN cardinality(b.levels) <= 512
                                  THEN ('{{{inline}}}'::integer[])[1:cardinality(b.levels) / 2]
                                  ELSE krakenbook_ordinals(cardinality(b.levels) / 2) END) AS k) e;",
        raw_price = raw_level("price"),
        raw_qty = raw_level("qty"),
    )
}

/// A book message whose first bid's price does not fit dec64 (mantissa of 2^58 or more): its
/// levels are in raw only. Collector `late`, seq 43.
const RAW_ONLY_BOOK_ROW: &str = "INSERT INTO krakenbook_book (\"timestamp\", received_at, seq,
         conn_id, collector_id, n_bids, kind, symbol, checksum, raw)
     VALUES ('2026-01-02T03:04:06Z', '2026-01-02T03:04:06.1Z', 43, 1,
             krakenbook_collector_id('late'), 1, 'u', 'RAW/USD', 9,
             '{\"channel\":\"book\",\"type\":\"update\",\"data\":[{\"symbol\":\"RAW/USD\",
               \"bids\":[{\"price\":123456789012345678901234.50,\"qty\":1.25}],
               \"asks\":[{\"price\":2.5,\"qty\":0.00000001},{\"price\":2.6,\"qty\":3}],
               \"checksum\":9,\"timestamp\":\"2026-01-02T03:04:06.000000Z\"}]}')";

/// The real captures, a message of 310 levels (more than the entries view's inline ordinals) and
/// a message whose price does not fit dec64 (its levels in raw only), in a migrated database.
async fn db_with_every_kind_of_book_row() -> (TestDb, Client) {
    let (db, client) = migrated_db().await;
    write_all(&db.url, "readme", &fixture_records(), 1000).await;
    client
        .batch_execute(&format!("{DEEP_BOOK_ROW}; {RAW_ONLY_BOOK_ROW}; ANALYZE"))
        .await
        .unwrap();
    (db, client)
}

/// Every row of both views, as text, in a stable order.
async fn every_view_row(client: &Client) -> (Vec<Vec<Option<String>>>, Vec<Vec<Option<String>>>) {
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let messages = simple_rows(
        client,
        "SELECT * FROM kraken_orderbook_messages
          ORDER BY collector NULLS FIRST, seq, \"timestamp\", raw_message::text",
    )
    .await;
    let entries = simple_rows(
        client,
        "SELECT * FROM kraken_orderbook_entries ORDER BY collector, seq, ordinal",
    )
    .await;
    (messages, entries)
}

/// Migration 9 changes how the views are planned, not what they show: a database at schema 8
/// (its views and its frame function as schema 8 made them) migrates (to 9, then 10), and both
/// views list the same rows, as text, before and after: the captures, a message deeper than the
/// inline ordinals and one whose levels are in raw only.
#[tokio::test]
async fn a_schema_8_database_migrates_to_9_and_its_views_show_the_same_rows_as_text() {
    let (_db, client) = db_with_every_kind_of_book_row().await;
    client
        .batch_execute(&format!(
            "BEGIN; {} {}
             DROP FUNCTION krakenbook_serial(), krakenbook_level_ordinals(bigint[], jsonb),
                           krakenbook_raw_level(jsonb, integer, text);
             DELETE FROM krakenbook_migrations WHERE version >= 9; COMMIT;",
            schema_8_views(),
            schema_8_frame()
        ))
        .await
        .unwrap();
    let before = every_view_row(&client).await;
    assert!(before.1.iter().any(|r| r[2].as_deref() == Some("RAW/USD")));
    assert_eq!(
        before
            .1
            .iter()
            .filter(|r| r[2].as_deref() == Some("DEEP/USD"))
            .count(),
        310
    );

    let report = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (report.from_version, report.applied.as_slice()),
        (8, &[(9, "view_plans"), (10, "frame_rebuild")][..])
    );
    let after = every_view_row(&client).await;
    assert_eq!(after.0, before.0, "kraken_orderbook_messages");
    assert_eq!(after.1, before.1, "kraken_orderbook_entries");
    let raw: Vec<_> = after
        .1
        .iter()
        .filter(|r| r[2].as_deref() == Some("RAW/USD"))
        .map(|r| {
            (
                r[3].clone().unwrap(),
                r[4].clone().unwrap(),
                r[5].clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        raw,
        [
            ("bid", "123456789012345678901234.50", "1.25"),
            ("ask", "2.5", "0.00000001"),
            ("ask", "2.6", "3"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
}

/// With parallel plans made free in this session: `table_sql` on the book table goes parallel,
/// none of `view_queries` does (the view is serial), and the first of them does once an operator
/// declares `krakenbook_serial()` parallel safe.
async fn serial_until_switched(client: &Client, table_sql: &str, view_queries: &[&str]) {
    client
        .batch_execute(
            "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
             SET min_parallel_table_scan_size = 0; SET min_parallel_index_scan_size = 0;
             SET max_parallel_workers_per_gather = 2",
        )
        .await
        .unwrap();
    let plan = |sql: &str| {
        let sql = format!("EXPLAIN {sql}");
        async move {
            simple_rows(client, &sql)
                .await
                .into_iter()
                .map(|r| r[0].clone().unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let table = plan(table_sql).await;
    assert!(
        table.contains("Gather"),
        "the table goes parallel:\n{table}"
    );
    for q in view_queries {
        let p = plan(q).await;
        assert!(!p.contains("Gather"), "{q}:\n{p}");
    }
    client
        .batch_execute("ALTER FUNCTION krakenbook_serial() PARALLEL SAFE")
        .await
        .unwrap();
    let p = plan(view_queries[0]).await;
    assert!(p.contains("Gather"), "switched back on:\n{p}");
}

/// Plans on the messages view are serial, even where parallel plans cost nothing: under the
/// view's `UNION ALL` the book table is sized before TimescaleDB expands its chunks (2 rows,
/// whatever it holds), and the parallel plans chosen on that estimate gathered every row to the
/// leader (`COUNT(*)` 5 to 7 times slower than serial on 125,000 messages). The book table
/// itself still gets parallel plans, and so does the view once an operator declares
/// `krakenbook_serial()` parallel safe.
#[tokio::test]
async fn queries_on_the_messages_view_stay_serial_even_where_parallel_plans_cost_nothing() {
    let (_db, client) = db_with_every_kind_of_book_row().await;
    let readme = [
        "SELECT COUNT(*) FROM kraken_orderbook_messages",
        "SELECT DISTINCT symbol FROM kraken_orderbook_messages",
        "SELECT COUNT(*) as total_messages, COUNT(DISTINCT symbol) as unique_symbols, \
         MIN(timestamp) as first_message, MAX(timestamp) as last_message FROM kraken_orderbook_messages",
    ];
    serial_until_switched(&client, "SELECT count(*) FROM krakenbook_book", &readme).await;
}

/// The entries view is planned at a third of 10 levels a message, not 10 (PostgreSQL's guess for
/// `unnest` of an array it cannot see, four times what a book message holds on average): plans
/// costed for 4 times their rows JIT-compiled `COUNT(*)` and took a symbol's 30 seconds to a
/// parallel plan 3 times slower than the serial one.
#[tokio::test]
async fn the_entries_view_is_planned_at_a_few_levels_a_message_not_ten() {
    let (_db, client) = db_with_every_kind_of_book_row().await;
    let rows = |sql: &'static str| {
        let client = &client;
        async move {
            let json = simple_rows(client, &format!("EXPLAIN (FORMAT JSON) {sql}")).await[0][0]
                .clone()
                .unwrap();
            let plan: serde_json::Value = serde_json::from_str(&json).unwrap();
            plan[0]["Plan"]["Plan Rows"].as_f64().unwrap()
        }
    };
    let messages = rows("SELECT * FROM krakenbook_book").await;
    let levels = rows("SELECT * FROM kraken_orderbook_entries").await;
    let per_message = levels / messages;
    assert!(
        (2.0..5.0).contains(&per_message),
        "{levels} levels planned for {messages} messages"
    );
}

/// `krakenbook_frame` as migration 8 made it (schema 8 and 9; migration 10 replaces it), read
/// from that migration's file.
fn schema_8_frame() -> String {
    let sql = include_str!("../../../crates/store/src/migrations/0008_views.sql");
    let start = sql
        .find("CREATE FUNCTION krakenbook_frame(")
        .expect("migration 8 creates krakenbook_frame");
    let end = start + sql[start..].find("$f$;").expect("its body ends") + "$f$;".len();
    sql[start..end].replacen("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
}

/// Schema 9's entries view (before schema 10): dec64 decoded by calls of `krakenbook_dec`, and
/// no PARALLEL UNSAFE marker (parallel plans allowed).
fn schema_9_entries_view() -> String {
    let inline = (1..=256)
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "DROP VIEW kraken_orderbook_entries;
         CREATE VIEW kraken_orderbook_entries AS
         SELECT b.\"timestamp\", b.received_at, b.symbol,
                CASE WHEN e.k <= b.n_bids THEN 'bid' ELSE 'ask' END AS side,
                CASE WHEN b.levels IS NOT NULL THEN krakenbook_dec(b.levels[2 * e.k - 1])
                     ELSE krakenbook_raw_level(b.raw, e.k, 'price') END AS price,
                CASE WHEN b.levels IS NOT NULL THEN krakenbook_dec(b.levels[2 * e.k])
                     ELSE krakenbook_raw_level(b.raw, e.k, 'qty') END AS quantity,
                CASE b.kind WHEN 's' THEN 'snapshot' ELSE 'update' END AS message_type,
                b.checksum::bigint & 4294967295 AS checksum,
                krakenbook_collector_name(b.collector_id) AS collector,
                b.seq, (e.k - 1)::smallint AS ordinal
           FROM krakenbook_book b
           CROSS JOIN LATERAL (
               SELECT unnest(CASE WHEN cardinality(b.levels) <= 512
                                  THEN ('{{{inline}}}'::integer[])[1:cardinality(b.levels) / 2]
                                  ELSE krakenbook_level_ordinals(b.levels, b.raw) END) AS k) e
          WHERE coalesce(cardinality(b.levels), 0) >= 0;"
    )
}

/// Book rows at the edges of the frame's rebuild and of dec64's decoding, collector `edge`:
/// an empty snapshot without a checksum whose symbol needs escaping in JSON (seq 1); asks only
/// (seq 2); 32 bids, one at each of dec64's 32 scales, with a mantissa of 2^58 - 1 and of 0
/// among them, and one ask (seq 3); bids only at a time with no fraction of a second (seq 4).
const EDGE_BOOK_ROWS: &str = "
    INSERT INTO krakenbook_book (\"timestamp\", received_at, seq, conn_id, collector_id,
                                 n_bids, kind, symbol, checksum, levels)
    VALUES ('2026-01-03T00:00:00.000001Z', '2026-01-03T00:00:00.1Z', 1, 1,
            krakenbook_collector_id('edge'), 0, 's', 'Q\"U\\OTE/€', NULL, '{}'),
           ('2026-01-03T00:00:01.5Z', '2026-01-03T00:00:01.6Z', 2, 1,
            krakenbook_collector_id('edge'), 0, 'u', 'EDGE/USD', -1,
            ARRAY[150 * 32 + 2, 1 * 32 + 8, 151 * 32 + 2, 0 * 32 + 0]);
    INSERT INTO krakenbook_book (\"timestamp\", received_at, seq, conn_id, collector_id,
                                 n_bids, kind, symbol, checksum, levels)
    SELECT '2026-01-03T00:00:02Z', '2026-01-03T00:00:02.1Z', 3, 1,
           krakenbook_collector_id('edge'), 32, 'u', 'EDGE/USD', 2147483647,
           array_agg(v ORDER BY s, w) || ARRAY[7::bigint * 32 + 31, 288230376151711743 * 32]
      FROM generate_series(0, 31) s,
           LATERAL (VALUES (1, CASE s WHEN 0 THEN 0 WHEN 31 THEN 288230376151711743
                                      ELSE 1234567 * s END * 32 + s),
                           (2, (s + 1)::bigint * 32 + (31 - s))) l(w, v);
    INSERT INTO krakenbook_book (\"timestamp\", received_at, seq, conn_id, collector_id,
                                 n_bids, kind, symbol, checksum, levels)
    VALUES ('2026-01-03T00:00:03Z', '2026-01-03T00:00:03.1Z', 4, 1,
            krakenbook_collector_id('edge'), 1, 'u', 'EDGE/USD', 0, ARRAY[62800 * 32 + 1, 5]);
    ANALYZE";

/// Migration 10 and the views of schema 10 change how a frame is rebuilt and how the entries
/// view is written and planned, not what either view shows: a database at schema 9 (its entries
/// view and its frame function as schema 9 made them) migrates, and both views list the same
/// rows, as text, before and after: the captures, a message deeper than the inline ordinals,
/// one whose levels are in raw only, and the edge rows (every dec64 scale, an empty book, no
/// checksum, a symbol JSON must escape).
#[tokio::test]
async fn a_schema_9_database_migrates_to_10_and_its_views_show_the_same_rows_as_text() {
    let (_db, client) = db_with_every_kind_of_book_row().await;
    client.batch_execute(EDGE_BOOK_ROWS).await.unwrap();
    client
        .batch_execute(&format!(
            "BEGIN; {} {} DELETE FROM krakenbook_migrations WHERE version = 10; COMMIT;",
            schema_9_entries_view(),
            schema_8_frame()
        ))
        .await
        .unwrap();
    let before = every_view_row(&client).await;
    let edge = |rows: &[Vec<Option<String>>], collector: usize| {
        rows.iter()
            .filter(|r| r[collector].as_deref() == Some("edge"))
            .count()
    };
    assert_eq!(
        (edge(&before.0, 2), edge(&before.1, 8)),
        (4, 2 + 33 + 1),
        "the edge rows are in both views"
    );

    let report = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (report.from_version, report.applied.as_slice()),
        (9, &[(10, "frame_rebuild")][..])
    );
    let after = every_view_row(&client).await;
    assert_eq!(after.0, before.0, "kraken_orderbook_messages");
    assert_eq!(after.1, before.1, "kraken_orderbook_entries");
    let scales: Vec<String> = simple_rows(
        &client,
        "SELECT price FROM kraken_orderbook_entries
          WHERE collector = 'edge' AND seq = 3 AND side = 'bid' ORDER BY ordinal",
    )
    .await
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect();
    assert_eq!(
        (scales[0].as_str(), scales[2].as_str(), scales[31].as_str()),
        ("0", "24691.34", "0.0000000000000288230376151711743")
    );
    let empty = simple_rows(
        &client,
        "SELECT raw_message::text FROM kraken_orderbook_messages WHERE collector = 'edge' AND seq = 1",
    )
    .await;
    assert_eq!(
        empty[0][0].as_deref(),
        Some(
            r#"{"data": [{"asks": [], "bids": [], "symbol": "Q\"U\\OTE/€", "checksum": null, "timestamp": "2026-01-03T00:00:00.000001Z"}], "type": "snapshot", "channel": "book"}"#
        )
    );
}

/// Plans on the entries view are serial too (schema 10): a symbol's levels in time order went to
/// a parallel bitmap heap scan, costed below the serial plan by PostgreSQL's model, that ran
/// slower than it on 2 vCPUs. The book table itself keeps its parallel plans, and so does the
/// view once an operator declares `krakenbook_serial()` parallel safe.
#[tokio::test]
async fn queries_on_the_entries_view_stay_serial_even_where_parallel_plans_cost_nothing() {
    let (_db, client) = db_with_every_kind_of_book_row().await;
    let queries = [
        "SELECT * FROM kraken_orderbook_entries WHERE symbol = 'BTC/USD' ORDER BY timestamp DESC",
        "SELECT COUNT(*) FROM kraken_orderbook_entries",
        "SELECT seq, ordinal, side, price, quantity FROM kraken_orderbook_entries \
         WHERE symbol = 'BTC/USD' AND timestamp BETWEEN '2020-01-01' AND '2030-01-01' \
         ORDER BY collector, seq, ordinal",
    ];
    serial_until_switched(
        &client,
        "SELECT * FROM krakenbook_book WHERE symbol = 'BTC/USD'",
        &queries,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Moving a database written by the version-5 layout into the new tables.

/// Migrations 1 to 5, as `migrate` applied them before version 6.
const V5_MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "schema",
        include_str!("../../../crates/store/src/migrations/0001_schema.sql"),
    ),
    (
        2,
        "book_states",
        include_str!("../../../crates/store/src/migrations/0002_book_states.sql"),
    ),
    (
        3,
        "journal_instance",
        include_str!("../../../crates/store/src/migrations/0003_journal_instance.sql"),
    ),
    (
        4,
        "connections",
        include_str!("../../../crates/store/src/migrations/0004_connections.sql"),
    ),
    (
        5,
        "collector_state",
        include_str!("../../../crates/store/src/migrations/0005_collector_state.sql"),
    ),
];

/// A fresh database at schema version 5 (the layout before the book table), its message chunks
/// `chunk` long and its entry chunks `entry_chunk` long (unaligned, so some straddle a range).
async fn v5_db(chunk: &str, entry_chunk: &str) -> (TestDb, Client) {
    let db = fresh_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "SET client_min_messages = warning;
             CREATE EXTENSION IF NOT EXISTS timescaledb;
             CREATE TABLE krakenbook_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    for (version, name, sql) in V5_MIGRATIONS {
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL krakenbook.chunk_interval = '{chunk}'; {sql};
                 INSERT INTO krakenbook_migrations (version, name) VALUES ({version}, '{name}');
                 COMMIT;"
            ))
            .await
            .unwrap_or_else(|e| panic!("migration {version}: {e}"));
    }
    client
        .batch_execute(&format!(
            "SELECT set_chunk_time_interval('kraken_orderbook_entries', interval '{entry_chunk}');
             SET TimeZone = 'UTC'"
        ))
        .await
        .unwrap();
    (db, client)
}

/// Stores the real captures into the version-5 tables of `v5` as the version-5 writer did: the
/// rows the views of a version-6 database show for them (the same columns and values; the writer
/// of then also filled conn_seq and best_*, which stand in here as values of their own).
async fn store_captures_in_v5(v5: &Client, collector: &str) {
    let (source_db, source) = migrated_db().await;
    let writer = write_all(&source_db.url, collector, &fixture_records(), 1000).await;
    drop(writer);
    for (view, columns) in [
        (
            "kraken_orderbook_messages",
            "\"timestamp\", received_at, collector, seq, conn_id, conn_seq, channel, message_type, \
             symbol, checksum, checksum_ok, raw_message, raw_text, raw_bytes, best_bid_price, \
             best_bid_qty, best_ask_price, best_ask_qty",
        ),
        (
            "kraken_orderbook_entries",
            "\"timestamp\", received_at, symbol, side, price, quantity, message_type, checksum, \
             collector, seq, ordinal",
        ),
    ] {
        let out = source
            .copy_out(&format!(
                "COPY (SELECT {columns} FROM {view}) TO STDOUT (FORMAT binary)"
            ))
            .await
            .unwrap();
        let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(out).await.unwrap();
        let sink = v5
            .copy_in(&format!(
                "COPY {view} ({columns}) FROM STDIN (FORMAT binary)"
            ))
            .await
            .unwrap();
        futures_util::pin_mut!(sink);
        for c in chunks {
            futures_util::SinkExt::send(&mut sink, c).await.unwrap();
        }
        sink.finish().await.unwrap();
    }
    v5.batch_execute(&format!(
        "UPDATE kraken_orderbook_messages
            SET conn_seq = seq * 10, best_bid_price = 62000.1, best_bid_qty = 0.5,
                best_ask_price = 62000.2, best_ask_qty = 1.25
          WHERE collector = '{collector}'"
    ))
    .await
    .unwrap();
}

/// Rows the version-5 writer could have written that are not in the captures, each testing one
/// rule of the move (collector `edge`, seqs from 1001, on 2026-08-19): a book frame without a
/// timestamp (frame kept in raw), a price beyond dec64 (levels in raw only), trailing zeros (kept
/// by dec64, frame rebuilt), no checksum, the largest checksum, a book frame without levels and a
/// malformed one (both kept whole as other messages).
const EDGE_ROWS: &str = r#"
INSERT INTO kraken_orderbook_messages ("timestamp", received_at, collector, seq, conn_id, conn_seq, channel, message_type, symbol, checksum, checksum_ok, raw_message, raw_text, best_bid_price) VALUES
 ('2026-08-19T00:00:01.5Z', '2026-08-19T00:00:01.5Z', 'edge', 1001, 1, 1, 'book', 'update', 'BTC/USD', 42, false,
  '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":62000.1,"qty":0.5}],"asks":[],"checksum":42}]}', NULL, 62000.1),
 ('2026-08-19T00:00:02Z', '2026-08-19T00:00:02.1Z', 'edge', 1002, 1, 2, 'book', 'snapshot', 'BIG/USD', 43, NULL,
  '{"channel":"book","type":"snapshot","data":[{"symbol":"BIG/USD","bids":[{"price":123456789012345678.5,"qty":1.0}],"asks":[{"price":123456789012345679.5,"qty":2}],"checksum":43,"timestamp":"2026-08-19T00:00:02.000000Z"}]}', NULL, NULL),
 ('2026-08-19T00:00:03Z', '2026-08-19T00:00:03.1Z', 'edge', 1003, 1, 3, 'book', 'update', 'BTC/USD', 44, true,
  '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":62000.10,"qty":1.50000000}],"asks":[{"price":62001,"qty":0.000051004}],"checksum":44,"timestamp":"2026-08-19T00:00:03.000000Z"}]}', NULL, NULL),
 ('2026-08-19T00:00:04Z', '2026-08-19T00:00:04.1Z', 'edge', 1004, 1, 4, 'book', 'update', 'BTC/USD', NULL, NULL,
  '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":62000.3,"qty":1}],"asks":[],"timestamp":"2026-08-19T00:00:04.000000Z"}]}', NULL, NULL),
 ('2026-08-19T00:00:05Z', '2026-08-19T00:00:05.1Z', 'edge', 1005, 1, 5, 'book', 'update', 'BTC/USD', 4294967295, true,
  '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],"asks":[{"price":62000.4,"qty":3}],"checksum":4294967295,"timestamp":"2026-08-19T00:00:05.000000Z"}]}', NULL, NULL),
 ('2026-08-19T00:00:06Z', '2026-08-19T00:00:06.1Z', 'edge', 1006, 1, 6, 'book', 'update', 'BTC/USD', 45, true,
  '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],"asks":[],"checksum":45,"timestamp":"2026-08-19T00:00:06.000000Z"}]}', NULL, 62000.1),
 ('2026-08-19T00:00:07.1Z', '2026-08-19T00:00:07.1Z', 'edge', 1007, 1, 7, 'book', 'malformed', NULL, NULL, NULL,
  NULL, '{"channel":"book","type":"update","data":[{"symbol":', NULL);
INSERT INTO kraken_orderbook_entries ("timestamp", received_at, symbol, side, price, quantity, message_type, checksum, collector, seq, ordinal) VALUES
 ('2026-08-19T00:00:01.5Z', '2026-08-19T00:00:01.5Z', 'BTC/USD', 'bid', 62000.1, 0.5, 'update', 42, 'edge', 1001, 0),
 ('2026-08-19T00:00:02Z', '2026-08-19T00:00:02.1Z', 'BIG/USD', 'bid', 123456789012345678.5, 1.0, 'snapshot', 43, 'edge', 1002, 0),
 ('2026-08-19T00:00:02Z', '2026-08-19T00:00:02.1Z', 'BIG/USD', 'ask', 123456789012345679.5, 2, 'snapshot', 43, 'edge', 1002, 1),
 ('2026-08-19T00:00:03Z', '2026-08-19T00:00:03.1Z', 'BTC/USD', 'bid', 62000.10, 1.50000000, 'update', 44, 'edge', 1003, 0),
 ('2026-08-19T00:00:03Z', '2026-08-19T00:00:03.1Z', 'BTC/USD', 'ask', 62001, 0.000051004, 'update', 44, 'edge', 1003, 1),
 ('2026-08-19T00:00:04Z', '2026-08-19T00:00:04.1Z', 'BTC/USD', 'bid', 62000.3, 1, 'update', NULL, 'edge', 1004, 0),
 ('2026-08-19T00:00:05Z', '2026-08-19T00:00:05.1Z', 'BTC/USD', 'ask', 62000.4, 3, 'update', 4294967295, 'edge', 1005, 0);
"#;

/// Every column of every message, as text, in a stable order.
const ALL_MESSAGES: &str = "SELECT \"timestamp\", received_at, collector, seq, conn_id, conn_seq, \
    channel, message_type, symbol, checksum, checksum_ok, raw_message, raw_text, raw_bytes, \
    best_bid_price, best_bid_qty, best_ask_price, best_ask_qty \
    FROM kraken_orderbook_messages ORDER BY collector, seq";
/// Every column of every level, as text, in a stable order.
const ALL_ENTRIES: &str = "SELECT * FROM kraken_orderbook_entries ORDER BY collector, seq, ordinal";

/// What the version-5 tables held for the messages, with the columns the book table has no
/// place for (conn_seq, best_*) cleared for book messages: what must read back after the move.
fn as_moved(messages: &[Vec<Option<String>>]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let is_book_row = r[6].as_deref() == Some("book")
                && matches!(r[7].as_deref(), Some("snapshot" | "update"))
                && !(r[2].as_deref() == Some("edge") && r[3].as_deref() == Some("1006"));
            if is_book_row {
                r[5] = None;
                for c in &mut r[14..18] {
                    *c = None;
                }
            }
            r
        })
        .collect()
}

/// The pending ranges, oldest first.
async fn pending(client: &Client) -> Vec<(Timestamp, Timestamp)> {
    client
        .query(
            "SELECT range_start, range_end FROM krakenbook_layout_migration
              WHERE state = 'pending' ORDER BY range_start",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_database_written_by_the_version_5_layout_moves_chunk_by_chunk_and_reads_back_identical()
{
    let (db, client) = v5_db("30 seconds", "45 seconds").await;
    store_captures_in_v5(&client, "v5").await;
    client.batch_execute(EDGE_ROWS).await.unwrap();
    let e = expected();
    let before_messages = simple_rows(&client, ALL_MESSAGES).await;
    let before_entries = simple_rows(&client, ALL_ENTRIES).await;
    assert_eq!(
        (before_messages.len(), before_entries.len()),
        (e.stored.len() + 7, e.levels.len() + 7)
    );
    let chunks = count(
        &client,
        "SELECT count(*) FROM timescaledb_information.chunks
          WHERE hypertable_name = 'kraken_orderbook_messages'",
    )
    .await;
    assert!(chunks >= 8, "the captures span {chunks} chunks");

    let report = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.applied,
        vec![
            (6, "layout"),
            (7, "archive"),
            (8, "views"),
            (9, "view_plans"),
            (10, "frame_rebuild")
        ]
    );
    let moved = report.legacy.clone().expect("legacy rows moved");
    assert_eq!(
        (moved.pending, moved.ranges),
        (chunks as usize, chunks as usize)
    );
    assert_eq!(moved.messages as usize, before_messages.len());
    // Book rows: every capture's book frame and five edge rows; other rows: the captures' other
    // frames, the book frame without levels and the malformed one.
    assert_eq!(moved.book as usize, e.books.len() + 5, "{moved:?}");
    assert_eq!(
        moved.other as usize,
        e.stored.len() - e.books.len() + 2,
        "{moved:?}"
    );
    assert_eq!(
        (moved.levels as usize, moved.levels_left),
        (before_entries.len(), 0)
    );
    assert!(!report.legacy_remains);

    // Every message and every level reads back as the version-5 tables held it.
    assert_eq!(
        simple_rows(&client, ALL_MESSAGES).await,
        as_moved(&before_messages)
    );
    assert_eq!(simple_rows(&client, ALL_ENTRIES).await, before_entries);
    // And as the captures hold them (read without krakenbook's decoder).
    let levels: Vec<super::ExpectedLevel> = client
        .query(
            "SELECT seq, ordinal, side, price::text, quantity::text, symbol, message_type
               FROM kraken_orderbook_entries WHERE collector = 'v5' ORDER BY seq, ordinal",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    assert!(levels == e.levels, "the levels differ from the captures'");
    // Where each edge row went: the frames the row alone does not rebuild keep raw (no
    // timestamp, no checksum); values beyond dec64 leave levels null.
    assert_eq!(
        simple_rows(
            &client,
            "SELECT seq, raw IS NOT NULL, levels IS NULL, checksum FROM krakenbook_book b
               JOIN krakenbook_collectors c ON c.id = b.collector_id
              WHERE c.name = 'edge' ORDER BY seq"
        )
        .await,
        [
            [Some("1001"), Some("t"), Some("f"), Some("42")],
            [Some("1002"), Some("t"), Some("t"), Some("43")],
            [Some("1003"), Some("f"), Some("f"), Some("44")],
            [Some("1004"), Some("t"), Some("f"), None],
            [Some("1005"), Some("f"), Some("f"), Some("-1")],
        ]
        .map(|r| r.map(|v| v.map(str::to_owned)).to_vec())
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM krakenbook_other WHERE collector = 'edge' AND seq IN (1006, 1007)"
        )
        .await,
        2
    );

    // The legacy tables are gone, every range is moved with its counts, and a rerun does nothing.
    assert_eq!(
        column::<Option<String>>(
            &client,
            "SELECT to_regclass('krakenbook_legacy_messages')::text
              UNION ALL SELECT to_regclass('krakenbook_legacy_entries')::text"
        )
        .await,
        [None, None]
    );
    assert_eq!(
        simple_rows(
            &client,
            "SELECT count(*), sum(messages), sum(levels) FROM krakenbook_layout_migration
              WHERE state = 'moved' AND moved_at IS NOT NULL"
        )
        .await,
        [vec![
            Some(chunks.to_string()),
            Some(before_messages.len().to_string()),
            Some(before_entries.len().to_string())
        ]]
    );
    assert!(pending(&client).await.is_empty());
    let again = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (again.applied.len(), again.legacy, again.legacy_remains),
        (0, None, false)
    );
    // The collector writes beside the moved rows as before (its own identity, same tables).
    write_all(&db.url, "after", &fixture_records(), 1000).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM kraken_orderbook_messages").await as usize,
        before_messages.len() + e.stored.len()
    );
}

/// The legacy chunks of the messages (the ranges the move takes), oldest first, as (chunk table,
/// start, end); before version 6 they are chunks of kraken_orderbook_messages.
async fn message_chunks(client: &Client) -> Vec<(String, Timestamp, Timestamp)> {
    client
        .query(
            "SELECT format('%I.%I', chunk_schema, chunk_name), range_start, range_end
               FROM timescaledb_information.chunks
              WHERE hypertable_name IN ('kraken_orderbook_messages', 'krakenbook_legacy_messages')
              ORDER BY range_start",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Makes the removal of legacy levels of [start, end) fail, the last step of a range's move (a
/// stand-in for a full disk or a lost connection at the worst moment). Levels of a range always
/// have some rows in an entry chunk that straddles it (45-second chunks, 30-second ranges), so
/// they are deleted row by row, and this trigger fires.
async fn fail_legacy_deletes_in(client: &Client, range: (Timestamp, Timestamp)) {
    client
        .batch_execute(&format!(
            "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'injected failure'; END $$;
             CREATE TRIGGER test_refuse BEFORE DELETE ON kraken_orderbook_entries FOR EACH ROW
               WHEN (OLD.\"timestamp\" >= '{}' AND OLD.\"timestamp\" < '{}')
               EXECUTE FUNCTION test_refuse();",
            range.0, range.1
        ))
        .await
        .unwrap();
}

/// Legacy (messages, levels) of a range.
async fn legacy_counts(client: &Client, range: (Timestamp, Timestamp)) -> (i64, i64) {
    let mut out = [0i64; 2];
    for (i, table) in ["krakenbook_legacy_messages", "krakenbook_legacy_entries"]
        .iter()
        .enumerate()
    {
        out[i] = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {table} WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2"
                ),
                &[&range.0, &range.1],
            )
            .await
            .unwrap()
            .get(0);
    }
    (out[0], out[1])
}

/// (messages, levels) of the version-5 tables per chunk of messages, before any move.
async fn v5_counts(client: &Client, chunks: &[(String, Timestamp, Timestamp)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for (_, start, end) in chunks {
        let mut pair = [0i64; 2];
        for (i, table) in ["kraken_orderbook_messages", "kraken_orderbook_entries"]
            .iter()
            .enumerate()
        {
            pair[i] = client
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {table} WHERE \"timestamp\" >= $1 AND \"timestamp\" < $2"
                    ),
                    &[start, end],
                )
                .await
                .unwrap()
                .get(0);
        }
        out.push((pair[0], pair[1]));
    }
    out
}

#[tokio::test]
async fn an_interrupted_move_rolls_back_only_its_range_and_a_rerun_continues_with_it() {
    let (db, client) = v5_db("30 seconds", "45 seconds").await;
    store_captures_in_v5(&client, "v5").await;
    let before_messages = simple_rows(&client, ALL_MESSAGES).await;
    let before_entries = simple_rows(&client, ALL_ENTRIES).await;
    let chunks = message_chunks(&client).await;
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    let per_range = v5_counts(&client, &chunks).await;
    let range = |i: usize| (chunks[i].1, chunks[i].2);
    let in_first: Vec<bool> = client
        .query(
            "SELECT \"timestamp\" < $1 FROM kraken_orderbook_messages ORDER BY collector, seq",
            &[&range(0).1],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    // 1. A failure at the last step of range 2: range 1 stays moved, range 2 and later are as
    // they were, and every query still sees every row once.
    fail_legacy_deletes_in(&client, range(1)).await;
    let e = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("moving legacy range 2 of {}", chunks.len()))
            && e.contains("injected failure"),
        "{e}"
    );
    let moved: Vec<Timestamp> = column(
        &client,
        "SELECT range_start FROM krakenbook_layout_migration WHERE state = 'moved'",
    )
    .await;
    assert_eq!(moved, [range(0).0]);
    assert_eq!(pending(&client).await.len(), chunks.len() - 1);
    assert_eq!(legacy_counts(&client, range(0)).await, (0, 0));
    for (i, want) in per_range.iter().enumerate().skip(1) {
        assert_eq!(
            legacy_counts(&client, range(i)).await,
            *want,
            "range {}",
            i + 1
        );
    }
    assert_eq!(
        count(
            &client,
            "SELECT (SELECT count(*) FROM krakenbook_book) + (SELECT count(*) FROM krakenbook_other)"
        )
        .await,
        per_range[0].0
    );
    // Range 1's book messages lost conn_seq and best_* (the book table has no place for them);
    // the others are still legacy rows.
    let mid: Vec<Vec<Option<String>>> = before_messages
        .iter()
        .zip(as_moved(&before_messages))
        .zip(&in_first)
        .map(|((old, new), first)| if *first { new } else { old.clone() })
        .collect();
    assert_eq!(simple_rows(&client, ALL_MESSAGES).await, mid);
    assert_eq!(simple_rows(&client, ALL_ENTRIES).await, before_entries);
    client
        .batch_execute("DROP TRIGGER test_refuse ON krakenbook_legacy_entries")
        .await
        .unwrap();

    // 2. The migrate process killed in the middle of range 3, after its rows were inserted:
    // a reader holding range 3's legacy chunk makes the move wait at its drop, then the process
    // is killed there.
    let holder = connect(&db.url).await;
    holder
        .batch_execute(&format!("BEGIN; SELECT count(*) FROM {}", chunks[2].0))
        .await
        .unwrap();
    let mut child = crate::support::krakenbook()
        .args(["migrate", "--database-url", &db.url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let waiting = count(
            &client,
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'krakenbook migrate' AND wait_event_type = 'Lock'
                AND query LIKE '%drop_chunks%'",
        )
        .await;
        if waiting == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the migrate process never reached range 3's drop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Range 3's rows are in the book table (uncommitted) when the process dies.
    child.kill().unwrap();
    child.wait().unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    // The server notices the client is gone once the statement ends, and rolls range 3 back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count(
        &client,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'krakenbook migrate'",
    )
    .await
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed session stayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let moved: Vec<Timestamp> = column(
        &client,
        "SELECT range_start FROM krakenbook_layout_migration WHERE state = 'moved'
          ORDER BY range_start",
    )
    .await;
    assert_eq!(moved, [range(0).0, range(1).0]);
    for (i, want) in per_range.iter().enumerate().skip(2) {
        assert_eq!(
            legacy_counts(&client, range(i)).await,
            *want,
            "range {}",
            i + 1
        );
    }
    assert_eq!(
        count(
            &client,
            "SELECT (SELECT count(*) FROM krakenbook_book) + (SELECT count(*) FROM krakenbook_other)"
        )
        .await,
        per_range[0].0 + per_range[1].0
    );

    // 3. A rerun finishes, with the same result as a move never interrupted.
    let report = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let moved = report.legacy.expect("the rest moved");
    assert_eq!(
        (moved.pending, moved.ranges),
        (chunks.len() - 2, chunks.len() - 2)
    );
    assert!(!report.legacy_remains);
    assert_eq!(
        simple_rows(&client, ALL_MESSAGES).await,
        as_moved(&before_messages)
    );
    assert_eq!(simple_rows(&client, ALL_ENTRIES).await, before_entries);
    assert!(pending(&client).await.is_empty());
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM krakenbook_layout_migration WHERE state = 'moved'"
        )
        .await,
        chunks.len() as i64
    );
}

#[tokio::test]
async fn a_row_that_would_read_back_differently_stops_the_move_naming_its_range_and_seq() {
    let (_db, client) = v5_db("30 seconds", "45 seconds").await;
    store_captures_in_v5(&client, "v5").await;
    let before_entries = simple_rows(&client, ALL_ENTRIES).await;
    let chunks = message_chunks(&client).await;
    // Schema 6 with every range pending: the first range fails (see the test above).
    fail_legacy_deletes_in(&client, (chunks[0].1, chunks[0].2)).await;
    store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap_err();
    client
        .batch_execute("DROP TRIGGER test_refuse ON krakenbook_legacy_entries")
        .await
        .unwrap();
    assert_eq!(pending(&client).await.len(), chunks.len());
    let first_seq = count(
        &client,
        &format!(
            "SELECT min(seq) FROM krakenbook_legacy_entries WHERE \"timestamp\" < '{}'",
            chunks[0].2
        ),
    )
    .await;
    let definition = |f: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    &format!("SELECT pg_get_functiondef('{f}'::regprocedure)"),
                    &[],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };

    // A collector dictionary that names another collector: the messages view would show it.
    let good_id = definition("krakenbook_collector_id(text)").await;
    client
        .batch_execute(
            "INSERT INTO krakenbook_collectors VALUES (7, 'impostor');
             CREATE OR REPLACE FUNCTION krakenbook_collector_id(collector_name text)
                 RETURNS smallint LANGUAGE sql RETURN 7",
        )
        .await
        .unwrap();
    let e = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap_err();
    let StoreError::LegacyMove(failure) = &e else {
        panic!("{e}");
    };
    assert_eq!(
        (
            failure.index,
            failure.collector.as_deref(),
            failure.seq,
            failure.what.as_str()
        ),
        (
            1,
            Some("v5"),
            Some(first_seq),
            format!(
                "the message reads back differently through kraken_orderbook_messages: \
                 collector v5, seq {first_seq}: collector: legacy v5 / moved impostor"
            )
            .as_str()
        ),
        "{e}"
    );
    client.batch_execute(&good_id).await.unwrap();
    client
        .batch_execute("DELETE FROM krakenbook_collectors")
        .await
        .unwrap();

    // An encoder that loses the scale: the view would show 62802.5 as 628025. (The entries
    // view decodes with krakenbook_dec's expression written out, so the move's check does not
    // depend on that function; the encoder is the move's own.)
    let good = definition("krakenbook_to_dec(numeric)").await;
    client
        .batch_execute(
            "CREATE OR REPLACE FUNCTION krakenbook_to_dec(x numeric) RETURNS bigint
                 LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
                 RETURN CASE WHEN x >= 0 AND scale(x) <= 31
                                  AND x * 10::numeric ^ scale(x) < 288230376151711744
                             THEN (x * 10::numeric ^ scale(x))::bigint * 32 END",
        )
        .await
        .unwrap();
    let e = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap_err();
    let StoreError::LegacyMove(failure) = &e else {
        panic!("{e}");
    };
    let store::LegacyMoveError {
        index,
        ranges,
        collector,
        seq,
        what,
        ..
    } = failure.as_ref();
    assert_eq!(
        (*index, *ranges, collector.as_deref(), *seq),
        (1, chunks.len(), Some("v5"), Some(first_seq)),
        "{e}"
    );
    assert!(
        what.contains("kraken_orderbook_entries") && what.contains("price: legacy"),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("range 1 of") && text.contains("nothing was lost"),
        "{text}"
    );
    // Nothing moved; with the decoder restored, the move goes through.
    assert_eq!(pending(&client).await.len(), chunks.len());
    assert_eq!(
        count(&client, "SELECT count(*) FROM krakenbook_book").await,
        0
    );
    client.batch_execute(&good).await.unwrap();
    let report = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.legacy.map(|m| m.ranges), Some(chunks.len()));
    assert_eq!(simple_rows(&client, ALL_ENTRIES).await, before_entries);
}

// ---------------------------------------------------------------------------------------------
// The command line.

#[tokio::test]
async fn migrate_command_reports_and_never_prints_the_password() {
    let db = fresh_db().await;
    // Trust authentication ignores the password, so it can be given and must then be hidden.
    let url = db.url.replacen("postgres@", "postgres:hunter2@", 1);
    assert!(url.contains("hunter2") || std::env::var("TEST_DATABASE_URL").is_ok());
    let out = run(&["migrate", "--database-url", &url, "--chunk-interval", "12h"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("schema migrated from version 0 to 10"),
        "{stdout}"
    );
    assert!(stdout.contains("chunk interval 12:00:00"), "{stdout}");
    assert!(stdout.contains("compression skipped"), "{stdout}");
    let again = run(&["migrate", "--database-url", &url]);
    let stdout2 = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout2.contains("schema already at version 10"),
        "{stdout2}"
    );
    assert!(!stdout2.contains("legacy"), "nothing to move: {stdout2}");
    for text in [
        &stdout,
        &stderr,
        &stdout2,
        &String::from_utf8_lossy(&again.stderr),
    ] {
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[tokio::test]
async fn migrate_command_moves_legacy_rows_with_progress_on_stderr_and_a_summary() {
    // One edge row a second, one-second chunks: seven ranges.
    let (db, client) = v5_db("1 second", "1 second").await;
    client.batch_execute(EDGE_ROWS).await.unwrap();
    let out = run(&["migrate", "--database-url", &db.url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "schema migrated from version 5 to 10 \
             (applied 6 (layout), 7 (archive), 8 (views), 9 (view_plans), 10 (frame_rebuild))"
        ) && stdout.contains(
            "legacy rows moved: 7 of 7 range(s), 7 messages (5 book, 2 other), 7 levels in "
        ) && stdout.contains(" messages/s)"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    for i in 1..=7 {
        assert!(
            stderr.contains(&format!("legacy range {i} of 7 moved")),
            "range {i}: {stderr}"
        );
    }
    assert!(stderr.contains("7 range(s) pending"), "{stderr}");
    assert!(stderr.contains(" left"), "the time left: {stderr}");
    let again = run(&["migrate", "--database-url", &db.url]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("schema already at version 10") && !stdout.contains("legacy"),
        "{stdout}"
    );
}

#[test]
fn migrate_command_errors_are_one_line_and_say_what_to_fix() {
    // (arguments, what the message must say)
    let port = shared_cluster().port();
    let refused = format!("postgres://kb:hunter2@127.0.0.1:{}/x", free_port());
    let no_db = format!("postgres://postgres:hunter2@127.0.0.1:{port}/no_such_db?sslmode=disable");
    let good = no_db.replace("no_such_db", "postgres");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["migrate"], "--database-url"),
        (
            vec!["migrate", "--database-url", "localhost:5432"],
            "database URL",
        ),
        (
            vec![
                "migrate",
                "--database-url",
                "postgres://kb:hunter2@host:port/db",
            ],
            "invalid database URL postgres://kb:***@host:port/db",
        ),
        (
            vec!["migrate", "--database-url", &refused],
            "Connection refused",
        ),
        (vec!["migrate", "--database-url", &no_db], "no_such_db"),
        (
            vec![
                "migrate",
                "--database-url",
                &good,
                "--chunk-interval",
                "whenever",
            ],
            "invalid duration \"whenever\"",
        ),
    ];
    for (args, says) in cases {
        let out = crate::support::krakenbook()
            .args(&args)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{args:?}: {stderr}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
