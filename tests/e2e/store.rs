//! The TimescaleDB store against a real TimescaleDB: schema and migrations, the writer's
//! exactly-once guarantee under injected failures, exact decimals, malformed frames, the original
//! tool's tables and README queries, and the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_postgres::{Client, SimpleQueryMessage};

use krakenbook::book::Decimal;
use krakenbook::record::{EventKind, FeedEvent, FrameRecord, Record, RecordBody};
use krakenbook::store::{
    self, Compression, ErrorClass, MigrateOptions, RetryPolicy, StoreError, Writer, WriterConfig,
};
use krakenbook::time::Timestamp;

use crate::db::{
    column, connect, fixture_records, fresh_db, migrated_db, own_cluster, shared_cluster,
};
use crate::support::{fixtures, run};

// ---------------------------------------------------------------------------------------------
// What the captures hold, read with serde_json alone (not krakenbook's decoder).

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default)]
    frame: Option<&'a RawValue>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    rx_ns: Option<i64>,
    #[serde(default)]
    captured_at: Option<String>,
}

#[derive(Deserialize)]
struct AnyFrame<'a> {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    time_out: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct BookPart<'a> {
    symbol: String,
    #[serde(borrow, default)]
    bids: Vec<RawLevel<'a>>,
    #[serde(borrow, default)]
    asks: Vec<RawLevel<'a>>,
    #[serde(default)]
    timestamp: Option<String>,
}

#[derive(Deserialize)]
struct RawLevel<'a> {
    #[serde(borrow)]
    price: &'a RawValue,
    #[serde(borrow)]
    qty: &'a RawValue,
}

/// One level as the capture has it: (seq, ordinal, side, price text, qty text, symbol, type).
type ExpectedLevel = (i64, i16, String, String, String, String, String);

#[derive(Default)]
struct Expected {
    /// Received frames (heartbeats included).
    frames: u64,
    heartbeats: u64,
    /// seq → frame text, for every frame that is stored (all but heartbeats).
    stored: BTreeMap<i64, String>,
    /// seq → (symbol, type) of book frames.
    books: BTreeMap<i64, (String, String)>,
    levels: Vec<ExpectedLevel>,
    /// Per symbol, levels.
    levels_by_symbol: BTreeMap<String, u64>,
    /// The stored `timestamp`s: Kraken's where given, else the receive time.
    timestamps: Vec<Timestamp>,
}

/// Reads the captures the way the tests' records are numbered: every received frame of the six
/// files (sorted by name), seqs from 1.
fn expected() -> Expected {
    let mut e = Expected::default();
    let mut seq = 0i64;
    for path in fixtures() {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut captured_at = None;
        let mut first_rx = None;
        for raw in text.lines().filter(|l| !l.trim().is_empty()) {
            let line: Line<'_> = serde_json::from_str(raw).unwrap();
            let Some(frame) = line.frame else {
                captured_at = line.captured_at.map(|t| Timestamp::parse(&t).unwrap());
                continue;
            };
            if line.dir.as_deref() == Some("tx") {
                continue;
            }
            seq += 1;
            e.frames += 1;
            let rx = line.rx_ns.unwrap();
            let received_at = captured_at
                .unwrap()
                .add_nanos(rx - *first_rx.get_or_insert(rx));
            let f: AnyFrame<'_> = serde_json::from_str(frame.get()).unwrap();
            if f.channel.as_deref() == Some("heartbeat") {
                e.heartbeats += 1;
                continue;
            }
            e.stored.insert(seq, frame.get().to_owned());
            let mut timestamp = f.time_out.map(|t| Timestamp::parse(&t).unwrap());
            if f.channel.as_deref() == Some("book") {
                let kind = f.kind.clone().unwrap();
                let parts: Vec<BookPart<'_>> = serde_json::from_str(f.data.unwrap().get()).unwrap();
                e.books.insert(seq, (parts[0].symbol.clone(), kind.clone()));
                timestamp = parts[0]
                    .timestamp
                    .as_deref()
                    .map(|t| Timestamp::parse(t).unwrap());
                let mut ordinal = 0i16;
                for part in &parts {
                    for (side, levels) in [("bid", &part.bids), ("ask", &part.asks)] {
                        for l in levels {
                            e.levels.push((
                                seq,
                                ordinal,
                                side.to_owned(),
                                l.price.get().to_owned(),
                                l.qty.get().to_owned(),
                                part.symbol.clone(),
                                kind.clone(),
                            ));
                            *e.levels_by_symbol.entry(part.symbol.clone()).or_default() += 1;
                            ordinal += 1;
                        }
                    }
                }
            }
            e.timestamps.push(timestamp.unwrap_or(received_at));
        }
    }
    e
}

async fn write_all(url: &str, collector: &str, records: &[Record], batch: usize) -> Writer {
    let mut writer = Writer::new(url, WriterConfig::new(collector)).unwrap();
    for chunk in records.chunks(batch) {
        writer
            .write_batch(chunk)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    writer
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Rows of a simple-protocol query (exactly as a user would type it), as text.
async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

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

    // Best bid and ask after a snapshot are its first levels.
    let (first_snapshot, _) = e.books.iter().find(|(_, (_, t))| t == "snapshot").unwrap();
    let first = |side: &str| {
        e.levels
            .iter()
            .find(|l| l.0 == *first_snapshot && l.2 == side)
            .map(|l| (l.3.clone(), l.4.clone()))
            .unwrap()
    };
    let r = client
        .query_one(
            "SELECT best_bid_price::text, best_bid_qty::text, best_ask_price::text, best_ask_qty::text
               FROM kraken_orderbook_messages WHERE seq = $1",
            &[first_snapshot],
        )
        .await
        .unwrap();
    assert_eq!((r.get(0), r.get(1)), first("bid"));
    assert_eq!((r.get(2), r.get(3)), first("ask"));

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
            ("kraken_orderbook_entries".to_owned(), "1 day".to_owned()),
            ("kraken_orderbook_messages".to_owned(), "1 day".to_owned())
        ]
    );
    // The captures span three days: each table has a chunk per day.
    for table in ["kraken_orderbook_messages", "kraken_orderbook_entries"] {
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

fn test_config(collector: &str) -> WriterConfig {
    WriterConfig {
        retry: RetryPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_attempts: Some(20),
        },
        ..WriterConfig::new(collector)
    }
}

async fn assert_stored_once(client: &Client, records: &[Record]) {
    let e = expected();
    let n = records.len() as i64;
    let messages = count(client, "SELECT count(*) FROM kraken_orderbook_messages").await;
    let distinct = count(
        client,
        "SELECT count(DISTINCT (collector, seq)) FROM kraken_orderbook_messages",
    )
    .await;
    let want_messages = e.stored.keys().filter(|s| **s <= n).count() as i64;
    assert_eq!((messages, distinct), (want_messages, want_messages));
    let entries = count(client, "SELECT count(*) FROM kraken_orderbook_entries").await;
    let distinct = count(
        client,
        "SELECT count(DISTINCT (collector, seq, ordinal)) FROM kraken_orderbook_entries",
    )
    .await;
    let want_entries = e.levels.iter().filter(|l| l.0 <= n).count() as i64;
    assert_eq!((entries, distinct), (want_entries, want_entries));
}

#[tokio::test]
async fn a_backend_terminated_mid_batch_is_retried_without_duplicates() {
    let (db, client) = migrated_db().await;
    let records = fixture_records();
    // Hold the entries table so that the writer's transaction stops right after its messages
    // COPY: it is then certainly mid-batch when its backend is terminated.
    let mut holder = connect(&db.url).await;
    let hold = holder.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE kraken_orderbook_entries IN ACCESS EXCLUSIVE MODE")
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
                AND query LIKE 'COPY kraken_orderbook_entries%' AND wait_event_type = 'Lock'",
        )
        .await;
        if n > 0 {
            terminated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(terminated, "the writer never reached the entries COPY");
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

#[tokio::test]
async fn a_writer_whose_attempt_timed_out_takes_its_lock_back_from_its_stuck_session() {
    let (db, client) = migrated_db().await;
    let records = fixture_records();
    // The entries table held: every attempt stops at its entries COPY until released, and an
    // abandoned attempt's server session stays there, holding the collector's writer lock.
    let mut holder = connect(&db.url).await;
    let hold = holder.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE kraken_orderbook_entries IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let url = db.url.clone();
    let writing = tokio::spawn({
        let records = records[..500].to_vec();
        async move {
            let mut w = Writer::new(
                &url,
                WriterConfig {
                    attempt_timeout: Duration::from_millis(1500),
                    ..test_config("stuck")
                },
            )
            .unwrap();
            let report = w.write_batch(&records).await;
            (report, w.stats())
        }
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    hold.commit().await.unwrap();
    let (report, stats) = writing.await.unwrap();
    let report = report.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.attempts >= 2, "{report:?}");
    assert!(stats.retries >= 1 && stats.connections >= 2, "{stats:?}");
    assert_stored_once(&client, &records[..500]).await;
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
             CREATE TRIGGER refuse BEFORE INSERT ON kraken_orderbook_messages
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

#[tokio::test]
async fn a_second_writer_of_one_collector_is_refused_naming_the_holder_and_the_fix() {
    let (db, client) = migrated_db().await;
    let records = fixture_records();
    let mut first = Writer::connect(&db.url, test_config("twin")).await.unwrap();
    first.write_batch(&records[..300]).await.unwrap();
    // A second process with the same identity (a copied journal directory): refused at once,
    // never retried, whether it connects eagerly or on its first batch.
    let err = Writer::connect(&db.url, test_config("twin"))
        .await
        .expect_err("the second writer must be refused");
    assert_eq!(err.class(), ErrorClass::Environment, "{err}");
    let text = err.to_string();
    for needle in [
        "\"twin\"",
        "application 'krakenbook writer twin (pid",
        "server pid",
        "pg_terminate_backend",
        "--collector-id",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let mut lazy = Writer::new(&db.url, test_config("twin")).unwrap();
    let err = lazy.write_batch(&records[300..600]).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Batch { source, attempts: 1, .. } if matches!(**source, StoreError::Locked { .. })),
        "{err:?}"
    );
    // Another identity is not concerned; the first writer goes on.
    let mut other = Writer::connect(&db.url, test_config("other"))
        .await
        .unwrap();
    other.write_batch(&records[..10]).await.unwrap();
    first.write_batch(&records[300..]).await.unwrap();
    // Once the holder is gone, the identity is free again.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        match Writer::connect(&db.url, test_config("twin")).await {
            Ok(w) => {
                again = Some(w);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut again = again.expect("the lock goes with its session");
    assert_eq!(
        again.checkpoint().await.unwrap(),
        Some(records.len() as u64)
    );
    let stored = count(
        &client,
        "SELECT count(DISTINCT seq) - count(*) FROM kraken_orderbook_messages WHERE collector = 'twin'",
    )
    .await;
    assert_eq!(stored, 0, "nothing written twice");
}

#[tokio::test]
async fn a_lock_left_by_a_killed_writer_of_this_host_is_taken_back_but_a_live_one_is_not() {
    let (db, _client) = migrated_db().await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    // A session of a krakenbook writer killed mid-statement: its process is gone, the server has
    // not noticed yet, and it holds the lock. Then one of a process that still runs (pid 1).
    for (pid, taken_back) in [(u32::MAX - 7, true), (1, false)] {
        let stale = connect(&db.url).await;
        stale
            .batch_execute(&format!(
                "SET application_name = 'krakenbook writer orphan (pid {pid} on {host})'"
            ))
            .await
            .unwrap();
        stale
            .query_one(
                "SELECT pg_advisory_lock($1::int4, hashtext('orphan'))",
                &[&store::WRITER_LOCK],
            )
            .await
            .unwrap();
        let result = Writer::connect(&db.url, test_config("orphan")).await;
        assert_eq!(result.is_ok(), taken_back, "pid {pid}: {result:?}");
        if !taken_back {
            let text = result.unwrap_err().to_string();
            assert!(text.contains(&format!("pid {pid} on {host}")), "{text}");
        }
    }
}

#[tokio::test]
async fn the_writer_waits_out_a_database_outage() {
    let cluster = own_cluster();
    let url = cluster.create_database().await.unwrap();
    let client = connect(&url).await;
    store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap();
    drop(client);
    let records = fixture_records();
    let mut w = Writer::new(&url, WriterConfig::new("outage")).unwrap();
    w.write_batch(&records[..2000]).await.unwrap();
    cluster.stop().unwrap();
    assert!(!cluster.is_running());
    let writing = tokio::spawn({
        let records = records[2000..].to_vec();
        async move {
            let report = w.write_batch(&records).await;
            (report, w.stats())
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !writing.is_finished(),
        "the writer must wait for the database"
    );
    cluster.start().unwrap();
    let (report, stats) = writing.await.unwrap();
    let report = report.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.attempts > 1, "{report:?}");
    assert!(stats.retries >= 1);
    let client = connect(&url).await;
    assert_stored_once(&client, &records).await;
}

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
            5,
            vec![
                (1, "schema"),
                (2, "book_states"),
                (3, "journal_instance"),
                (4, "connections"),
                (5, "collector_state")
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
    assert_eq!((second.from_version, second.applied.len()), (5, 0));
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
    assert_eq!(applied, 5, "exactly one process applies each migration");
    let client = connect(&db.url).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM krakenbook_migrations").await,
        5
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
            (5, "collector_state")
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
            "kraken_orderbook_entries".to_owned(),
            "kraken_orderbook_messages".to_owned()
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

fn frame_record(seq: u64, bytes: &[u8]) -> Record {
    Record {
        seq,
        received_at: Timestamp::parse("2026-08-18T10:00:00Z")
            .unwrap()
            .add_nanos(seq as i64 * 1000),
        conn_id: 9,
        conn_seq: seq,
        body: RecordBody::Frame(FrameRecord {
            bytes: bytes.to_vec(),
            checksum_ok: None,
            best_bid: None,
            best_ask: None,
        }),
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
        stdout.contains("schema migrated from version 0 to 5"),
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

// ---------------------------------------------------------------------------------------------
// TLS.

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate for `localhost` signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=krakenbook test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
}

#[tokio::test]
async fn tls_modes_encrypt_and_verify_as_libpq_does() {
    let cluster = own_cluster();
    let dir = cluster.root().join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    // The server reads its key as its own user, and only a private key file.
    let owner = std::fs::metadata(cluster.root().join("data")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for f in ["server.key", "server.pem"] {
        std::os::unix::fs::chown(dir.join(f), Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let admin = connect(&cluster.url("postgres")).await;
    for sql in [
        format!(
            "ALTER SYSTEM SET ssl_cert_file = '{}'",
            dir.join("server.pem").display()
        ),
        format!(
            "ALTER SYSTEM SET ssl_key_file = '{}'",
            dir.join("server.key").display()
        ),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    for _ in 0..100 {
        let on: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if on == "on" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ca = dir.join("ca.pem").display().to_string();
    let port = cluster.port();
    let url =
        |host: &str, query: &str| format!("postgres://postgres:pw@{host}:{port}/postgres?{query}");
    let encrypted = |client: Client| async move {
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    // (URL, connects, encrypted)
    let cases = [
        (url("127.0.0.1", "sslmode=disable"), true, false),
        (url("127.0.0.1", ""), true, true),
        (url("127.0.0.1", "sslmode=require"), true, true),
        (
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            true,
            true,
        ),
        (
            url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
            true,
            true,
        ),
        (
            url("127.0.0.1", &format!("sslmode=require&sslrootcert={ca}")),
            true,
            true,
        ),
        // The certificate names localhost, not 127.0.0.1.
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            false,
            false,
        ),
        // Not signed by a public root.
        (url("localhost", "sslmode=verify-full"), false, false),
        (url("localhost", "sslmode=verify-ca"), false, false),
    ];
    for (u, connects, want_tls) in cases {
        match store::connect(&u, "krakenbook tls test").await {
            Ok(client) => {
                assert!(connects, "{u} should have been refused");
                assert_eq!(encrypted(client).await, want_tls, "{u}");
            }
            Err(e) => {
                assert!(!connects, "{u}: {e}");
                assert!(
                    !e.is_retriable(),
                    "{u}: a certificate problem is not retried: {e}"
                );
                assert!(!e.to_string().contains(":pw@"), "{e}");
                assert!(e.to_string().contains("certificate"), "{u}: {e}");
            }
        }
    }
    let e = store::connect(
        &url(
            "localhost",
            "sslmode=verify-full&sslrootcert=/no/such/ca.pem",
        ),
        "t",
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("/no/such/ca.pem"), "{e}");

    // The writer over verified TLS.
    let verified = url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    store::migrate(
        &store::connect(&verified, "t").await.unwrap(),
        &MigrateOptions::default(),
    )
    .await
    .unwrap();
    let records = fixture_records();
    let mut w = Writer::new(&verified, WriterConfig::new("tls")).unwrap();
    w.write_batch(&records[..300]).await.unwrap();
    assert_stored_once(&admin, &records[..300]).await;
}
