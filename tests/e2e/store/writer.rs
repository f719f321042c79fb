//! The writer on a real TimescaleDB: the real captures stored once, every level once and exact;
//! exactly once under injected failures (a backend terminated mid-batch, failed commits, a bad
//! record isolated by bisection); exact decimals and timestamps; malformed frames kept with
//! their text.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::Client;

use krakenbook::book::Decimal;
use krakenbook::record::{EventKind, FeedEvent, Record, RecordBody};
use krakenbook::store::{self, StoreError, Writer, WriterConfig};
use krakenbook::time::Timestamp;

use super::{
    ExpectedLevel, assert_stored_once, count, expected, frame_record, test_config, write_all,
};
use crate::db::{column, connect, fixture_records, fresh_db, migrated_db};

// ---------------------------------------------------------------------------------------------
// Writing the real captures.

#[tokio::test]
async fn the_real_captures_store_every_book_frame_once_and_every_level_once_exactly() {
    let (db, client) = migrated_db().await;
    let records = fixture_records();
    let e = expected();
    assert_eq!(records.len() as u64, e.frames);
    let writer = write_all(&db.url, "fixtures", &records, 700).await;
    let stats = writer.stats();
    assert_eq!(stats.records, e.frames);
    assert_eq!(stats.rows.messages, e.frames - e.heartbeats);
    assert_eq!(stats.rows.entries, e.levels.len() as u64);

    // Every stored frame once, under its seq, with its JSON as received.
    let rows = client
        .query(
            "SELECT seq, channel, message_type, symbol FROM kraken_orderbook_messages ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(seqs, e.stored.keys().copied().collect::<Vec<_>>());
    let mut books = BTreeMap::new();
    for r in &rows {
        let kind: String = r.get(2);
        if r.get::<_, String>(1) == "book" && (kind == "snapshot" || kind == "update") {
            books.insert(r.get::<_, i64>(0), (r.get(3), kind));
        }
    }
    let differ = books
        .iter()
        .zip(&e.books)
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("stored {a:?}, capture {b:?}"));
    assert!(
        books == e.books,
        "book frames: {} stored, {} in the captures; first difference: {differ:?}",
        books.len(),
        e.books.len()
    );
    let (seqs, texts): (Vec<i64>, Vec<String>) = e.stored.clone().into_iter().unzip();
    let same_json = count_with(
        &client,
        "SELECT count(*) FROM unnest($1::bigint[], $2::text[]) AS x(seq, frame)
           JOIN kraken_orderbook_messages m USING (seq)
          WHERE m.raw_message = x.frame::jsonb AND m.raw_text IS NULL",
        &seqs,
        &texts,
    )
    .await;
    assert_eq!(
        same_json,
        e.stored.len() as i64,
        "raw_message is each frame's JSON"
    );

    // Every level once, in wire order, with its exact text (0.00005100 stays 0.00005100).
    let rows = client
        .query(
            "SELECT seq, ordinal, side, price::text, quantity::text, symbol, message_type
               FROM kraken_orderbook_entries ORDER BY seq, ordinal",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<ExpectedLevel> = rows
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
    assert_eq!(stored.len(), e.levels.len());
    let differ = stored.iter().zip(&e.levels).find(|(a, b)| a != b);
    assert!(
        differ.is_none(),
        "levels differ from the captures: {differ:?}"
    );
    assert!(
        stored.iter().any(|l| l.4 == "0.00005100"),
        "the captures' 0.00005100 quantities are stored with their scale"
    );

    // Checksum verdicts: every book message verified except the capture that starts mid-stream.
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE checksum_ok),
                    count(*) FILTER (WHERE checksum_ok IS NULL),
                    count(*) FILTER (WHERE NOT checksum_ok)
               FROM kraken_orderbook_messages WHERE message_type IN ('snapshot', 'update')",
            &[],
        )
        .await
        .unwrap();
    let mid_stream = e
        .books
        .keys()
        .filter(|s| records[(**s - 1) as usize].conn_id == 5)
        .count() as i64;
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (e.books.len() as i64 - mid_stream, mid_stream, 0)
    );

    // Kraken's frames are rebuilt exactly from the book rows: none keeps its frame.
    let kept = count(
        &client,
        "SELECT count(*) FROM krakenbook_book WHERE raw IS NOT NULL OR levels IS NULL",
    )
    .await;
    assert_eq!(kept, 0, "every real frame is rebuilt from its row");

    // The checkpoint is the last record's seq.
    let ckpt: Option<i64> = client
        .query_one(
            "SELECT seq FROM krakenbook_checkpoints WHERE collector = 'fixtures'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ckpt, Some(e.frames as i64));
}

async fn count_with(client: &Client, sql: &str, seqs: &[i64], texts: &[String]) -> i64 {
    client
        .query_one(sql, &[&seqs, &texts])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn both_tables_are_hypertables_with_one_day_chunks() {
    let (db, client) = migrated_db().await;
    write_all(&db.url, "fixtures", &fixture_records(), 2000).await;
    let rows = client
        .query(
            "SELECT hypertable_name::text, time_interval::text FROM timescaledb_information.dimensions
              ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let dims: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        dims,
        [
            ("kraken_book_states".to_owned(), "1 day".to_owned()),
            ("krakenbook_book".to_owned(), "1 day".to_owned()),
            ("krakenbook_other".to_owned(), "1 day".to_owned())
        ]
    );
    // The captures span three days: each table has a chunk per day.
    for table in ["krakenbook_book"] {
        let chunks: i64 = client
            .query_one(
                "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = $1",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        assert!(chunks >= 3, "{table}: {chunks} chunks");
    }
}

// ---------------------------------------------------------------------------------------------
// Exactly once under failures.

#[tokio::test]
async fn a_backend_terminated_mid_batch_is_retried_without_duplicates() {
    let (db, client) = migrated_db().await;
    let records = fixture_records();
    // Hold the book table so that the writer's transaction stops at its book COPY, after its
    // checkpoint lock: it is then certainly mid-batch when its backend is terminated.
    let mut holder = connect(&db.url).await;
    let hold = holder.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE krakenbook_book IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let url = db.url.clone();
    let writing = tokio::spawn({
        let records = records.clone();
        async move {
            let mut w = Writer::new(&url, test_config("kill")).unwrap();
            let report = w.write_batch(&records).await;
            (report, w.stats())
        }
    });
    let mut terminated = false;
    for _ in 0..600 {
        let n = count(
            &client,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE application_name LIKE 'krakenbook writer kill (pid %'
                AND query LIKE 'COPY krakenbook_book%' AND wait_event_type = 'Lock'",
        )
        .await;
        if n > 0 {
            terminated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(terminated, "the writer never reached the book COPY");
    // The killed transaction's messages must not survive; release the table and let it retry.
    hold.commit().await.unwrap();
    let (report, stats) = writing.await.unwrap();
    let report = report.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.attempts, 2);
    assert_eq!(report.written, records.len() as u64);
    assert_eq!(stats.retries, 1);
    assert_eq!(stats.connections, 2);
    assert_stored_once(&client, &records).await;
}

/// Installs a deferred trigger that fails the first `failures` commits that move the checkpoint,
/// with SQLSTATE `code`.
async fn fail_commits(client: &Client, failures: i64, code: &str) {
    client
        .batch_execute(&format!(
            "CREATE SEQUENCE commit_attempts;
             CREATE FUNCTION fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('commit_attempts') <= {failures} THEN
                     RAISE EXCEPTION 'injected commit failure' USING ERRCODE = '{code}';
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER fail_at_commit AFTER UPDATE ON krakenbook_checkpoints
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_commit();"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_commit_that_fails_with_a_serialization_failure_is_retried_without_duplicates() {
    let (db, client) = migrated_db().await;
    fail_commits(&client, 2, "40001").await;
    let records = fixture_records();
    let mut w = Writer::new(&db.url, test_config("commit")).unwrap();
    let first = w.write_batch(&records[..1000]).await.unwrap();
    assert_eq!((first.attempts, first.written, first.skipped), (3, 1000, 0));
    let second = w.write_batch(&records[1000..]).await.unwrap();
    assert_eq!(second.attempts, 1);
    assert_stored_once(&client, &records).await;
}

#[tokio::test]
async fn a_non_retriable_failure_is_reported_with_the_batch_range_and_nothing_committed() {
    let (db, client) = migrated_db().await;
    fail_commits(&client, 1, "23514").await;
    let records = fixture_records();
    let mut w = Writer::new(&db.url, test_config("fatal")).unwrap();
    let err = w.write_batch(&records[10..510]).await.unwrap_err();
    match &err {
        StoreError::Batch {
            first_seq,
            last_seq,
            attempts,
            ..
        } => assert_eq!((*first_seq, *last_seq, *attempts), (11, 510, 1)),
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retriable());
    let text = err.to_string();
    assert!(
        text.contains("11..=510") && text.contains("injected commit failure"),
        "{text}"
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM kraken_orderbook_messages").await,
        0
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM kraken_orderbook_entries").await,
        0
    );
    // The trigger has fired once: the same batch now goes through, once.
    w.write_batch(&records[10..510]).await.unwrap();
    assert_eq!(
        count(&client, "SELECT count(*) FROM kraken_orderbook_messages").await,
        expected()
            .stored
            .keys()
            .filter(|s| (11..=510).contains(*s))
            .count() as i64
    );
}

/// A record of `records` near `index` that is a book frame, rewritten to carry `symbol`.
fn with_symbol(records: &mut [Record], index: usize, symbol: &str) -> u64 {
    let i = (index..records.len())
        .find(|i| {
            records[*i]
                .frame_text()
                .is_some_and(|t| t.starts_with(r#"{"channel":"book""#))
        })
        .expect("a book frame");
    let text = records[i].frame_text().unwrap();
    let (head, tail) = text.split_once(r#""symbol":""#).unwrap();
    let rest = &tail[tail.find('"').unwrap()..];
    let rewritten = format!(r#"{head}"symbol":"{symbol}{rest}"#);
    if let RecordBody::Frame(f) = &mut records[i].body {
        f.bytes = rewritten.into_bytes();
    }
    records[i].seq
}

#[tokio::test]
async fn bisection_isolates_one_bad_record_in_a_batch_of_2000() {
    let (db, client) = migrated_db().await;
    let mut records: Vec<Record> = fixture_records().into_iter().take(2000).collect();
    // A symbol no index row can hold (refused by the server with 54000, not by any check here).
    let huge: String = {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        (0..8000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect()
    };
    let bad = with_symbol(&mut records, 1377, &huge);
    // And one the server refuses in every form (a data exception raised for its seq): only an
    // event can stand for it.
    let doomed = with_symbol(&mut records, 1600, "DOOMED/USD");
    client
        .batch_execute(&format!(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.seq = {doomed} THEN
                     RAISE EXCEPTION 'injected data exception' USING ERRCODE = '22023';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON krakenbook_book
                 FOR EACH ROW EXECUTE FUNCTION refuse();
             CREATE TRIGGER refuse BEFORE INSERT ON krakenbook_other
                 FOR EACH ROW EXECUTE FUNCTION refuse();"
        ))
        .await
        .unwrap();
    let mut w = Writer::new(&db.url, test_config("bisect")).unwrap();
    let report = w
        .write_batch(&records)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.rows.stored_raw, report.rows.not_stored), (1, 1));
    assert!(report.commits > 2, "{report:?}");
    assert!(report.attempts < 60, "{report:?}");
    assert_eq!(w.stats().splits, 1);
    assert_eq!(w.checkpoint().await.unwrap(), Some(2000));
    // Everything else is stored as usual.
    let e = expected();
    let others: Vec<i64> = e
        .stored
        .keys()
        .filter(|s| **s <= 2000 && **s != bad as i64 && **s != doomed as i64)
        .copied()
        .collect();
    let stored: Vec<i64> = column(
        &client,
        "SELECT seq FROM kraken_orderbook_messages WHERE raw_message IS NOT NULL ORDER BY seq",
    )
    .await;
    assert_eq!(stored, others);
    let entries = count(&client, "SELECT count(*) FROM kraken_orderbook_entries").await;
    let want_entries = e
        .levels
        .iter()
        .filter(|l| l.0 <= 2000 && l.0 != bad as i64 && l.0 != doomed as i64)
        .count() as i64;
    assert_eq!(entries, want_entries);
    // The bad one as received, without jsonb, symbol or entries, and an event saying why.
    let row = client
        .query_one(
            "SELECT raw_text, symbol, message_type FROM kraken_orderbook_messages WHERE seq = $1",
            &[&(bad as i64)],
        )
        .await
        .unwrap();
    let text: Option<String> = row.get(0);
    assert_eq!(
        text.as_deref(),
        records.iter().find(|r| r.seq == bad).unwrap().frame_text()
    );
    assert_eq!(row.get::<_, Option<String>>(1), None);
    let events: Vec<(i64, String, String)> = client
        .query(
            "SELECT seq, event, detail FROM kraken_feed_events
              WHERE event IN ('stored_raw', 'not_stored') ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (events[0].0, events[0].1.as_str()),
        (bad as i64, "stored_raw")
    );
    assert!(events[0].2.contains("54000"), "{}", events[0].2);
    assert_eq!(
        (events[1].0, events[1].1.as_str()),
        (doomed as i64, "not_stored")
    );
    assert!(
        events[1].2.contains("injected data exception"),
        "{}",
        events[1].2
    );
    assert_eq!(
        count(
            &client,
            &format!("SELECT count(*) FROM kraken_orderbook_messages WHERE seq = {doomed}")
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_book_frame_with_more_levels_than_ordinal_can_number_is_stored_whole_as_its_type() {
    let (db, client) = migrated_db().await;
    let levels: Vec<String> = (0..33_000)
        .map(|i| format!(r#"{{"price":{}.5,"qty":1.25}}"#, 100_000 - i))
        .collect();
    let frame = format!(
        r#"{{"channel":"book","type":"snapshot","data":[{{"symbol":"BTC/USD","bids":[{}],"asks":[],"checksum":12345,"timestamp":"2026-08-18T10:00:00.000000Z"}}]}}"#,
        levels.join(",")
    );
    let records = vec![
        frame_record(1, frame.as_bytes()),
        frame_record(2, br#"{"channel":"heartbeat"}"#),
    ];
    let mut w = Writer::new(&db.url, WriterConfig::new("deep")).unwrap();
    let report = w.write_batch(&records).await.unwrap();
    assert_eq!((report.rows.messages, report.rows.entries), (1, 0));
    assert_eq!((report.rows.malformed, report.rows.stored_raw), (0, 1));
    let row = client
        .query_one(
            "SELECT message_type, symbol, checksum, jsonb_array_length(raw_message->'data'->0->'bids')
               FROM kraken_orderbook_messages WHERE seq = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "snapshot");
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("BTC/USD"));
    assert_eq!(row.get::<_, Option<i64>>(2), Some(12345));
    assert_eq!(row.get::<_, i32>(3), 33_000, "every level in raw_message");
    assert_eq!(
        count(&client, "SELECT count(*) FROM kraken_orderbook_entries").await,
        0,
        "entries absent, never partial"
    );
    let detail: String = client
        .query_one(
            "SELECT detail FROM kraken_feed_events WHERE seq = 1 AND event = 'stored_raw'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(detail.contains("33000 levels"), "{detail}");
}

#[tokio::test]
async fn records_the_checkpoint_covers_are_skipped() {
    let (db, client) = migrated_db().await;
    let records = fixture_records();
    let mut w = Writer::new(&db.url, test_config("overlap")).unwrap();
    assert_eq!(w.checkpoint().await.unwrap(), None);
    let r = w.write_batch(&records[..1000]).await.unwrap();
    assert_eq!((r.written, r.skipped), (1000, 0));
    assert_eq!(w.checkpoint().await.unwrap(), Some(1000));
    // As after a commit whose outcome was unknown: the batch comes again, overlapping.
    let r = w.write_batch(&records[500..1500]).await.unwrap();
    assert_eq!((r.written, r.skipped), (500, 500));
    let r = w.write_batch(&records[..1500]).await.unwrap();
    assert_eq!((r.written, r.skipped, r.rows.messages), (0, 1500, 0));
    w.write_batch(&records[1500..]).await.unwrap();
    assert_stored_once(&client, &records).await;
}

// ---------------------------------------------------------------------------------------------
// Values.

/// A deterministic stream of decimals: every scale up to 30, mantissas of every length up to 38
/// digits.
fn decimals(n: usize) -> Vec<Decimal> {
    let mut x: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (i % 38) as u32 + 1;
            let mantissa = x % 10u128.pow(digits);
            let scale = (i % 31) as u8;
            Decimal::new(mantissa, scale).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn decimals_and_timestamps_round_trip_exactly_through_the_server() {
    let db = fresh_db().await;
    let client = connect(&db.url).await;
    let mut values: Vec<Decimal> = [
        "0.00005100",
        "62802.5",
        "62803.0",
        "0",
        "0.0",
        "0.00000000",
        "10000",
        "1.0001",
        "99999999999999999999999999999999999999",
        "0.000000000000000000000000000001",
        "12345678901234567890.12345678",
    ]
    .iter()
    .map(|s| Decimal::parse(s).unwrap())
    .collect();
    values.extend(decimals(5000));
    // The server prints each value exactly as krakenbook does (value and scale) ...
    let rows = client
        .query(
            "SELECT x::text, x FROM unnest($1::numeric[]) WITH ORDINALITY AS t(x, i) ORDER BY i",
            &[&values],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), values.len());
    for (row, v) in rows.iter().zip(&values) {
        assert_eq!(row.get::<_, String>(0), v.to_string());
        // ... and sends back the same value at the same scale.
        let back: Decimal = row.get(1);
        assert_eq!((back, back.scale()), (*v, v.scale()), "{v}");
    }
    // Text the server parses comes back exactly.
    for text in [
        "0.00005100",
        "62803.0",
        "1e-5",
        "0.1000000000000000000000000000",
    ] {
        let back: Decimal = client
            .query_one("SELECT $1::text::numeric", &[&text])
            .await
            .unwrap()
            .get(0);
        let server: String = client
            .query_one("SELECT $1::text::numeric::text", &[&text])
            .await
            .unwrap()
            .get(0);
        assert_eq!(back.to_string(), server, "{text}");
    }
    // What is not a Decimal is an error, not a wrong value.
    for text in [
        "NaN",
        "-1.5",
        "Infinity",
        "0.1234567890123456789012345678901",
    ] {
        let r = client
            .query_one("SELECT $1::text::numeric", &[&text])
            .await
            .unwrap();
        assert!(r.try_get::<_, Decimal>(0).is_err(), "{text}");
    }

    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    for (text, server) in [
        (
            "2026-08-17T16:01:57.687440Z",
            "2026-08-17 16:01:57.68744+00",
        ),
        ("2000-01-01T00:00:00Z", "2000-01-01 00:00:00+00"),
        (
            "1999-12-31T23:59:59.999999Z",
            "1999-12-31 23:59:59.999999+00",
        ),
    ] {
        let t = Timestamp::parse(text).unwrap();
        let row = client
            .query_one("SELECT $1::timestamptz::text, $1::timestamptz", &[&t])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), server);
        assert_eq!(row.get::<_, Timestamp>(1), t);
    }
}

#[tokio::test]
async fn jsonb_compatibility_matches_the_server() {
    let db = fresh_db().await;
    let client = connect(&db.url).await;
    // (JSON text, whether krakenbook's check is knowingly stricter than the server here)
    let cases = [
        (r#"{"a":"\u0000"}"#, false),
        (r#"{"a":"x\u0000y"}"#, false),
        (r#"{"a":"\ud83d"}"#, false),
        (r#"{"a":"\ude00"}"#, false),
        (r#"{"a":"\ud83d\ude00"}"#, false),
        (r#"{"a":"\u00e9"}"#, false),
        (r#"{"a":1e1000}"#, false),
        (r#"{"a":1e-1000}"#, false),
        (r#"{"a":12.5E+3}"#, false),
        (r#"[1,2,{"b":null}]"#, false),
        (r#"{"a":1e131072}"#, false),
        (r#"{"a":1e-16384}"#, false),
        // numeric's real limits are 131072 digits before the point and 16383 after; the check
        // stops at 1000-digit exponents.
        (r#"{"a":1e1001}"#, true),
        (r#"{"a":1e-1001}"#, true),
    ];
    for (text, stricter) in cases {
        let server_ok = client
            .query_one("SELECT $1::text::jsonb", &[&text])
            .await
            .is_ok();
        let ours = store::types::jsonb_compatible(text);
        // Refusing what the server would take costs only a text column; the reverse would fail a
        // batch, so that must never happen.
        assert!(
            server_ok || !ours,
            "{text}: the server refuses what krakenbook accepts"
        );
        assert_eq!(ours, server_ok && !stricter, "{text}");
    }
}

#[tokio::test]
async fn malformed_frames_are_stored_with_their_text_and_nothing_is_lost() {
    let (db, client) = migrated_db().await;
    let frames: Vec<(&[u8], &str, &str)> = vec![
        // (frame, channel, message_type)
        (b"not json {", "unknown", "malformed"),
        (b"\xff\xfe{\"channel\"", "unknown", "malformed"),
        (b"abc\0def", "unknown", "malformed"),
        (
            br#"{"channel":"book","type":"update","data":[{"symbol":"X/Y","bids":[{"price":-1,"qty":1}],"asks":[],"checksum":1}]}"#,
            "book",
            "malformed",
        ),
        (br#"{"channel":"ticker","type":"update","data":[{"symbol":"\u0000"}]}"#, "ticker", "update"),
        (br#"{"channel":"trade","type":"snapshot","data":[]}"#, "trade", "snapshot"),
        (br#"{"channel":"heartbeat"}"#, "", ""),
    ];
    let mut records: Vec<Record> = frames
        .iter()
        .enumerate()
        .map(|(i, (f, _, _))| frame_record(i as u64 + 1, f))
        .collect();
    records.push(Record {
        seq: 8,
        received_at: Timestamp::parse("2026-08-18T10:00:01Z").unwrap(),
        conn_id: 9,
        conn_seq: 0,
        body: RecordBody::Event(FeedEvent {
            kind: EventKind::MalformedFrame,
            symbol: None,
            gap_start: None,
            detail: "frame is not valid JSON".into(),
        }),
    });
    let mut w = Writer::new(&db.url, WriterConfig::new("bad")).unwrap();
    let report = w.write_batch(&records).await.unwrap();
    assert_eq!(report.rows.messages, 6);
    assert_eq!(report.rows.malformed, 4);
    // The feed event, and a stored_raw event for the \u0000 frame jsonb refuses.
    assert_eq!((report.rows.heartbeats, report.rows.events), (1, 2));
    assert_eq!(report.rows.stored_raw, 1);
    let rows = client
        .query(
            "SELECT seq, channel, message_type, raw_message::text, raw_text, raw_bytes
               FROM kraken_orderbook_messages ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 6);
    for (row, (frame, channel, kind)) in rows.iter().zip(&frames) {
        let seq: i64 = row.get(0);
        assert_eq!(
            (row.get::<_, String>(1), row.get::<_, String>(2)),
            (channel.to_string(), kind.to_string()),
            "seq {seq}"
        );
        let json: Option<String> = row.get(3);
        let text: Option<String> = row.get(4);
        let bytes: Option<Vec<u8>> = row.get(5);
        // Exactly one place holds the frame, and it holds all of it.
        let held = [json.is_some(), text.is_some(), bytes.is_some()];
        assert_eq!(held.iter().filter(|h| **h).count(), 1, "seq {seq}");
        match (json, text, bytes) {
            (Some(j), None, None) => {
                let a: serde_json::Value = serde_json::from_str(&j).unwrap();
                let b: serde_json::Value = serde_json::from_slice(frame).unwrap();
                assert_eq!(a, b, "seq {seq}");
            }
            (None, Some(t), None) => assert_eq!(t.as_bytes(), *frame, "seq {seq}"),
            (None, None, Some(b)) => assert_eq!(b.as_slice(), *frame, "seq {seq}"),
            _ => unreachable!(),
        }
    }
    let event: (String, String) = client
        .query_one(
            "SELECT event, detail FROM kraken_feed_events WHERE seq = 8",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        event,
        ("malformed_frame".into(), "frame is not valid JSON".into())
    );
    let raw: (String, String) = client
        .query_one(
            "SELECT event, detail FROM kraken_feed_events WHERE seq = 5",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(raw.0, "stored_raw");
    assert!(raw.1.contains("u0000"), "{}", raw.1);
}

// ---------------------------------------------------------------------------------------------
// One row per message, its copies on other connections packed with it.

#[tokio::test]
async fn a_message_received_on_three_connections_is_one_row_with_each_copy_as_received() {
    let (db, client) = migrated_db().await;
    let frame = r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":62802.5,"qty":0.02987767}],"asks":[],"checksum":975661613,"timestamp":"2026-08-16T23:37:04.316445Z"}]}"#;
    let other = r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[],"asks":[{"price":62806.6,"qty":0.00000000}],"checksum":265834348,"timestamp":"2026-08-16T23:37:05.376419Z"}]}"#;
    // Connection 7 first, then 8 and 5 (a lower id than the first copy's); a verdict on each;
    // connection 7 receives the same frame again (a repeat on one connection is a message of its
    // own, never a copy), and another message comes between.
    let mut records = Vec::new();
    for (seq, conn, text, ok) in [
        (1, 7, frame, Some(true)),
        (2, 8, other, None),
        (3, 8, frame, Some(false)),
        (4, 5, frame, None),
        (5, 7, frame, Some(true)),
    ] {
        let mut r = frame_record(seq, text.as_bytes());
        r.conn_id = conn;
        if let RecordBody::Frame(f) = &mut r.body {
            f.checksum_ok = ok;
        }
        records.push(r);
    }
    let mut w = Writer::new(&db.url, test_config("copies")).unwrap();
    let report = w
        .write_batch(&records)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((report.rows.book, report.rows.copies), (3, 2));
    let rows = client
        .query(
            "SELECT row_seq, conn_id, seq, received_at, checksum_ok, copy
               FROM krakenbook_copies ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, i64, i64, Timestamp, Option<bool>, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    let at = |seq: u64| records[seq as usize - 1].received_at;
    assert_eq!(
        got,
        vec![
            (1, 7, 1, at(1), Some(true), 0),
            (2, 8, 2, at(2), None, 0),
            (1, 8, 3, at(3), Some(false), 1),
            (1, 5, 4, at(4), None, 2),
            (5, 7, 5, at(5), Some(true), 0),
        ]
    );
    // The views show each message once, rebuilt exactly.
    let frames: Vec<String> = column(
        &client,
        "SELECT raw_message::text FROM kraken_orderbook_messages ORDER BY seq",
    )
    .await;
    let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
    assert_eq!(
        frames.iter().map(|f| json(f)).collect::<Vec<_>>(),
        vec![json(frame), json(other), json(frame)]
    );
}
