//! Schema and migrations on a real TimescaleDB: migrating twice or concurrently, the chunk
//! interval, a database made by the original tool's setup SQL migrated keeping every row, the
//! original README's queries run unmodified, and the `migrate` command's output and errors.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use krakenbook::store::{self, Compression, MigrateOptions, StoreError};
use krakenbook::time::Timestamp;

use super::{count, expected, frame_record, simple_rows, write_all};
use crate::db::{column, connect, fixture_records, fresh_db, migrated_db, shared_cluster};
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
            7,
            vec![
                (1, "schema"),
                (2, "book_states"),
                (3, "journal_instance"),
                (4, "connections"),
                (5, "collector_state"),
                (6, "layout"),
                (7, "archive")
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
    let before = schema_snapshot(&client).await;
    assert!(
        before
            .iter()
            .any(|l| l.contains("kraken_orderbook_messages_snapshot_idx"))
    );
    let second = store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap();
    assert_eq!((second.from_version, second.applied.len()), (7, 0));
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
    assert_eq!(applied, 7, "exactly one process applies each migration");
    let client = connect(&db.url).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM krakenbook_migrations").await,
        7
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

#[tokio::test]
async fn a_database_made_by_the_original_setup_sql_migrates_keeping_every_row() {
    let db = fresh_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .await
        .unwrap();
    client.batch_execute(ORIGINAL_SETUP).await.unwrap();
    // Rows as the original tool wrote them: 3 days of messages, and levels at its NUMERIC(20,8).
    client
        .batch_execute(
            "INSERT INTO kraken_orderbook_messages (timestamp, received_at, channel, message_type, symbol, checksum, raw_message)
             SELECT '2025-01-01'::timestamptz + i * interval '1 hour', '2025-01-01'::timestamptz + i * interval '1 hour',
                    'book', CASE WHEN i % 10 = 0 THEN 'snapshot' ELSE 'update' END,
                    CASE WHEN i % 2 = 0 THEN 'BTC/USD' ELSE 'ETH/USD' END, 1000 + i,
                    jsonb_build_object('channel', 'book', 'i', i)
               FROM generate_series(1, 72) AS i;
             INSERT INTO kraken_orderbook_entries (timestamp, symbol, side, price, quantity, message_type, checksum)
             SELECT '2025-01-01'::timestamptz + i * interval '1 hour', 'BTC/USD', s.side,
                    62000 + i * 0.1, 0.00005100 * i, 'update', 1000 + i
               FROM generate_series(1, 72) AS i, (VALUES ('bid'), ('ask')) AS s(side);",
        )
        .await
        .unwrap();
    let old_messages = simple_rows(
        &client,
        "SELECT id, timestamp, received_at, channel, message_type, symbol, checksum, raw_message
           FROM kraken_orderbook_messages ORDER BY id",
    )
    .await;
    let old_entries = simple_rows(
        &client,
        "SELECT timestamp, symbol, side, price, quantity, message_type, checksum
           FROM kraken_orderbook_entries ORDER BY timestamp, side",
    )
    .await;
    assert_eq!((old_messages.len(), old_entries.len()), (72, 144));

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
            (7, "archive")
        ]
    );

    // Every row kept, every value unchanged.
    assert_eq!(
        simple_rows(
            &client,
            "SELECT id, timestamp, received_at, channel, message_type, symbol, checksum, raw_message
               FROM kraken_orderbook_messages ORDER BY id",
        )
        .await,
        old_messages
    );
    assert_eq!(
        simple_rows(
            &client,
            "SELECT timestamp, symbol, side, price, quantity, message_type, checksum
               FROM kraken_orderbook_entries ORDER BY timestamp, side",
        )
        .await,
        old_entries
    );
    // The keys that merged rows are gone; the columns no longer round.
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM pg_constraint WHERE contype = 'p'
              AND conrelid IN ('kraken_orderbook_messages'::regclass, 'kraken_orderbook_entries'::regclass)"
        )
        .await,
        0
    );
    let dims = count(
        &client,
        "SELECT count(*) FROM timescaledb_information.hypertables",
    )
    .await;
    assert_eq!(dims, 3, "messages, entries and book states");

    // The new writer stores into the converted tables: the captures, and a message naming the
    // same price twice (which the old primary key would have merged into one row).
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
        72 + e.stored.len() as i64 + 1
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM kraken_orderbook_entries").await,
        144 + e.levels.len() as i64 + 2
    );
    let twice = simple_rows(
        &client,
        &format!(
            "SELECT ordinal, quantity FROM kraken_orderbook_entries WHERE seq = {next} ORDER BY ordinal"
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
    // The original rows kept their ids; new rows get ids from the same sequence.
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM kraken_orderbook_messages WHERE id IS NULL"
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
        stdout.contains("schema migrated from version 0 to 7"),
        "{stdout}"
    );
    assert!(stdout.contains("chunk interval 12:00:00"), "{stdout}");
    assert!(stdout.contains("compression skipped"), "{stdout}");
    let again = run(&["migrate", "--database-url", &url]);
    let stdout2 = String::from_utf8_lossy(&again.stdout);
    assert!(stdout2.contains("schema already at version 5"), "{stdout2}");
    for text in [
        &stdout,
        &stderr,
        &stdout2,
        &String::from_utf8_lossy(&again.stderr),
    ] {
        assert!(!text.contains("hunter2"), "{text}");
    }
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
