//! `replay --verify` over the database: every stored copy of a book message checked against the
//! others. One recording made by `krakenbook collect` from the simulator over loopback into a real
//! TimescaleDB (a lost update, then a dropped connection, a book state every 40 updates); each
//! test that tampers with a copy works on its own database, imported from the recording's journal
//! by `krakenbook import` (the same writer the collector runs).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OnceCell;

use krakenbook::book::{Decimal, OrderBook};
use krakenbook::exchange::Faults;
use krakenbook::record::{FrameRecord, Record, RecordBody};
use krakenbook::store::{Writer, WriterConfig};
use krakenbook::time::Timestamp;

use crate::collect::{Collector, count, finish, simulator, wait_count};
use crate::db::{TestDb, connect, fresh_db, migrated_db};
use crate::support::{krakenbook, run};

/// The shared recording: its database (as the collector wrote it) and its journal.
struct Recorded {
    db: TestDb,
    journal: PathBuf,
    _dir: tempfile::TempDir,
}

static RECORDED: OnceCell<Recorded> = OnceCell::const_new();

async fn recorded() -> &'static Recorded {
    RECORDED
        .get_or_init(|| async {
            let dir = tempfile::tempdir().unwrap();
            let db = fresh_db().await;
            let faults = Faults {
                lose_after: Some(150),
                drop_after: Some(500),
                connections: Some(1),
                ..Faults::default()
            };
            let sim = simulator(dir.path(), 60.0, faults).await;
            let collector = Collector::start(
                &sim,
                Some(&db.url),
                dir.path(),
                &["--book-state-every", "40"],
            );
            // One resync after the lost update, three after the reconnection, then some more.
            wait_count(
                &db.url,
                "SELECT count(*) FROM kraken_feed_events WHERE event = 'resynced'",
                4,
                Duration::from_secs(60),
                || collector.log(),
            )
            .await;
            let verified = count(
                &db.url,
                "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok",
            )
            .await;
            wait_count(
                &db.url,
                "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok",
                verified + 200,
                Duration::from_secs(30),
                || collector.log(),
            )
            .await;
            finish(sim, collector).await;
            Recorded {
                db,
                journal: dir.path().join("journal"),
                _dir: dir,
            }
        })
        .await
}

/// A database of its own holding the recording: its journal imported.
async fn copy() -> TestDb {
    let rec = recorded().await;
    let db = fresh_db().await;
    let out = krakenbook()
        .args(["import", "--quiet", "--database-url", &db.url])
        .arg("--journal-dir")
        .arg(&rec.journal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    db
}

/// `replay --verify --json` over `url` with `extra` arguments: the exit code and the report.
fn verify(url: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec![
        "replay",
        "--verify",
        "--json",
        "--quiet",
        "--database-url",
        url,
    ];
    args.extend_from_slice(extra);
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), report)
}

/// `sql` runs on `url` (a tampering), changing exactly one row.
async fn tamper(url: &str, sql: &str) {
    let n = connect(url).await.execute(sql, &[]).await.unwrap();
    assert_eq!(n, 1, "{sql}");
}

/// The first `i64` of the first row of `sql`.
async fn one(url: &str, sql: &str) -> i64 {
    connect(url).await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Exit 1, the first disagreement at `seq` (of the recording's collector, with a symbol), and one
/// at `seq` between exactly `copies`.
fn caught(code: Option<i32>, report: &Value, seq: i64, copies: [&str; 2]) {
    assert_eq!(code, Some(1), "{report:#}");
    let all = report["disagreements"].as_array().unwrap();
    let first = &all[0];
    assert_eq!(first["seq"].as_i64(), Some(seq), "{report:#}");
    assert!(first["collector"].is_string(), "{first}");
    assert!(first["symbol"].is_string(), "{first}");
    assert!(
        all.iter()
            .any(|d| d["seq"].as_i64() == Some(seq) && d["copies"] == serde_json::json!(copies)),
        "no disagreement between {copies:?} at seq {seq}: {report:#}"
    );
}

/// An update that verified and set the best bid: its seq and the ordinal of that bid level (in
/// the checksum's top ten, so the book and its checksum change with it).
async fn best_bid_level(url: &str) -> (i64, i16) {
    let row = connect(url)
        .await
        .query_one(
            "SELECT e.seq, e.ordinal FROM kraken_orderbook_entries e
               JOIN kraken_orderbook_messages m ON m.collector = e.collector AND m.seq = e.seq
              WHERE e.message_type = 'update' AND e.side = 'bid' AND m.checksum_ok
                AND e.price = m.best_bid_price AND e.quantity > 0
              ORDER BY e.seq OFFSET 5 LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A verified update, well inside the record.
async fn verified_update(url: &str) -> i64 {
    one(
        url,
        "SELECT seq FROM kraken_orderbook_messages
          WHERE message_type = 'update' AND checksum_ok AND best_bid_price IS NOT NULL
          ORDER BY seq OFFSET 60 LIMIT 1",
    )
    .await
}

const BOOK_MESSAGES: &str = "SELECT count(*) FROM kraken_orderbook_messages
    WHERE channel = 'book' AND message_type IN ('snapshot', 'update')";

fn total(report: &Value, field: &str) -> i64 {
    report["symbols"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s[field].as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn a_clean_recording_verifies_everything_without_a_range() {
    let rec = recorded().await;
    let url = &rec.db.url;
    let (code, report) = verify(url, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["disagreement_count"], 0);
    // Every row of every table, as the collector wrote them.
    assert_eq!(
        total(&report, "book_messages"),
        count(url, BOOK_MESSAGES).await
    );
    assert_eq!(
        report["frames"].as_i64(),
        Some(count(url, "SELECT count(*) FROM kraken_orderbook_messages").await)
    );
    assert_eq!(
        total(&report, "states"),
        count(url, "SELECT count(*) FROM kraken_book_states").await
    );
    assert!(total(&report, "states") > 10, "{report:#}");
    assert_eq!(
        report["entries_compared"].as_i64(),
        Some(count(url, "SELECT count(*) FROM kraken_orderbook_entries").await)
    );
    assert_eq!(
        total(&report, "ok"),
        count(
            url,
            "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok"
        )
        .await
    );
    assert_eq!(total(&report, "mismatches"), 1, "the one lost update");
    // The same for the copy the importer wrote from the journal.
    let db = copy().await;
    let (code, again) = verify(&db.url, &[]);
    assert_eq!(code, Some(0), "{again:#}");
    assert_eq!(again["symbols"], report["symbols"]);

    // The human report says what it checked.
    let out = run(&["replay", "--verify", "--quiet", "--database-url", url]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("every stored copy agrees") && text.contains("entry rows compared"),
        "{text}"
    );
}

#[tokio::test]
async fn a_range_a_symbol_and_a_collector_narrow_it_and_its_books_start_before_the_range() {
    let rec = recorded().await;
    let url = &rec.db.url;
    let client = connect(url).await;
    let times: Vec<Timestamp> = client
        .query(
            "SELECT \"timestamp\" FROM kraken_orderbook_messages
              WHERE channel = 'book' AND message_type = 'update' ORDER BY \"timestamp\"",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (from, to) = (times[times.len() / 3], times[2 * times.len() / 3]);
    let (from_text, to_text) = (from.to_string(), to.to_string());
    let range = ["--from", from_text.as_str(), "--to", to_text.as_str()];
    let (code, report) = verify(url, &range);
    assert_eq!(code, Some(0), "{report:#}");
    let in_range = |sql: &str| {
        format!("{sql} AND \"timestamp\" >= '{from_text}' AND \"timestamp\" < '{to_text}'")
    };
    assert_eq!(
        total(&report, "book_messages"),
        count(url, &in_range(BOOK_MESSAGES)).await
    );
    assert_eq!(
        total(&report, "states"),
        count(
            url,
            &in_range("SELECT count(*) FROM kraken_book_states WHERE true")
        )
        .await
    );
    assert_eq!(
        total(&report, "unverifiable"),
        count(
            url,
            &in_range(&format!("{BOOK_MESSAGES} AND checksum_ok IS NULL"))
        )
        .await,
        "the books were rebuilt from before the range: {report:#}"
    );

    let (code, report) = verify(url, &[&range[..], &["--symbol", "ETH/USD"]].concat());
    assert_eq!(code, Some(0), "{report:#}");
    let symbols: Vec<&String> = report["symbols"].as_object().unwrap().keys().collect();
    assert_eq!(symbols, ["ETH/USD"]);
    assert_eq!(
        total(&report, "book_messages"),
        count(
            url,
            &in_range(&format!("{BOOK_MESSAGES} AND symbol = 'ETH/USD'"))
        )
        .await
    );

    let collector: String = client
        .query_one("SELECT min(collector) FROM kraken_orderbook_messages", &[])
        .await
        .unwrap()
        .get(0);
    let (code, report) = verify(url, &["--collector", &collector]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        total(&report, "book_messages"),
        count(url, BOOK_MESSAGES).await
    );
    let (code, report) = verify(url, &["--collector", "nobody"]);
    assert_eq!(code, Some(3), "{report:#}");
}

#[tokio::test]
async fn an_empty_database_verifies_nothing_and_exits_3() {
    let (db, _client) = migrated_db().await;
    let (code, report) = verify(&db.url, &[]);
    assert_eq!(code, Some(3), "{report:#}");
    assert_eq!(report["disagreement_count"], 0);
    // Not even migrated: nothing either.
    let bare = fresh_db().await;
    let out = run(&["replay", "--verify", "--quiet", "--database-url", &bare.url]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing verified"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_tampered_raw_message_level_is_reported_with_its_seq() {
    let db = copy().await;
    let (seq, ordinal) = best_bid_level(&db.url).await;
    tamper(
        &db.url,
        &format!(
            "UPDATE kraken_orderbook_messages SET raw_message = jsonb_set(raw_message,
                 '{{data,0,bids,{ordinal},price}}',
                 to_jsonb((raw_message #>> '{{data,0,bids,{ordinal},price}}')::numeric - 0.5))
              WHERE seq = {seq}"
        ),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(
        code,
        &report,
        seq,
        ["raw_message", "kraken_orderbook_entries"],
    );
}

#[tokio::test]
async fn a_tampered_checksum_inside_raw_message_is_reported_with_its_seq() {
    let db = copy().await;
    let seq = verified_update(&db.url).await;
    tamper(
        &db.url,
        &format!(
            "UPDATE kraken_orderbook_messages SET raw_message = jsonb_set(raw_message,
                 '{{data,0,checksum}}', to_jsonb((raw_message #>> '{{data,0,checksum}}')::bigint + 1))
              WHERE seq = {seq}"
        ),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(code, &report, seq, ["checksum", "raw_message"]);
    caught(code, &report, seq, ["checksum_ok", "book from raw_message"]);
}

#[tokio::test]
async fn a_checksum_column_that_disagrees_with_its_raw_message_is_reported_with_its_seq() {
    let db = copy().await;
    let seq = verified_update(&db.url).await;
    tamper(
        &db.url,
        &format!("UPDATE kraken_orderbook_messages SET checksum = checksum + 1 WHERE seq = {seq}"),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(code, &report, seq, ["checksum", "raw_message"]);
    assert_eq!(report["disagreement_count"], 1, "{report:#}");
    // The human report names the collector, the seq, the symbol and both copies.
    let out = run(&["replay", "--verify", "--quiet", "--database-url", &db.url]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let d = &report["disagreements"][0];
    let line = format!(
        "seq {seq} of {} {}: checksum says {}; raw_message says {}",
        d["collector"].as_str().unwrap(),
        d["symbol"].as_str().unwrap(),
        d["recorded"].as_str().unwrap(),
        d["replayed"].as_str().unwrap()
    );
    assert!(text.contains(&line), "{line} in\n{text}");
}

#[tokio::test]
async fn a_tampered_checksum_ok_is_reported_with_its_seq() {
    let db = copy().await;
    let seq = verified_update(&db.url).await;
    tamper(
        &db.url,
        &format!("UPDATE kraken_orderbook_messages SET checksum_ok = false WHERE seq = {seq}"),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(code, &report, seq, ["checksum_ok", "book from raw_message"]);
    assert_eq!(report["disagreement_count"], 1, "{report:#}");
    assert_eq!(report["disagreements"][0]["recorded"], "mismatch");
    assert_eq!(report["disagreements"][0]["replayed"], "ok");
}

#[tokio::test]
async fn a_tampered_best_bid_is_reported_with_its_seq() {
    let db = copy().await;
    let seq = verified_update(&db.url).await;
    tamper(
        &db.url,
        &format!(
            "UPDATE kraken_orderbook_messages SET best_bid_qty = best_bid_qty + 1 WHERE seq = {seq}"
        ),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(code, &report, seq, ["best_bid", "book from raw_message"]);
    assert_eq!(report["disagreement_count"], 1, "{report:#}");
}

#[tokio::test]
async fn a_tampered_entry_quantity_is_reported_with_its_seq() {
    let db = copy().await;
    let (seq, ordinal) = best_bid_level(&db.url).await;
    tamper(
        &db.url,
        &format!(
            "UPDATE kraken_orderbook_entries SET quantity = quantity + 1
              WHERE seq = {seq} AND ordinal = {ordinal}"
        ),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(
        code,
        &report,
        seq,
        ["raw_message", "kraken_orderbook_entries"],
    );
    // The book rebuilt from the entries no longer has Kraken's checksum.
    caught(
        code,
        &report,
        seq,
        [
            "book from raw_message",
            "book from kraken_orderbook_entries",
        ],
    );
}

#[tokio::test]
async fn a_deleted_entry_row_is_reported_with_its_seq() {
    let db = copy().await;
    let seq = verified_update(&db.url).await;
    tamper(
        &db.url,
        &format!(
            "DELETE FROM kraken_orderbook_entries WHERE seq = {seq}
                AND ordinal = (SELECT max(ordinal) FROM kraken_orderbook_entries WHERE seq = {seq})"
        ),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(
        code,
        &report,
        seq,
        ["raw_message", "kraken_orderbook_entries"],
    );
}

#[tokio::test]
async fn a_tampered_deep_level_of_a_book_state_is_reported_with_its_seq() {
    let db = copy().await;
    let seq = one(
        &db.url,
        "SELECT seq FROM kraken_book_states WHERE jsonb_array_length(bids) > 20
          ORDER BY seq OFFSET 2 LIMIT 1",
    )
    .await;
    // The 21st bid: beyond the checksum's top ten.
    tamper(
        &db.url,
        &format!(
            "UPDATE kraken_book_states SET bids = jsonb_set(bids, '{{20,1}}',
                 to_jsonb(((bids #>> '{{20,1}}')::numeric + 1)::text))
              WHERE seq = {seq}"
        ),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(
        code,
        &report,
        seq,
        ["kraken_book_states", "book from raw_message"],
    );
    assert_eq!(report["disagreement_count"], 1, "{report:#}");
    assert!(
        report["disagreements"][0]["recorded"]
            .as_str()
            .unwrap()
            .starts_with("bid level 21"),
        "{report:#}"
    );
}

#[tokio::test]
async fn a_tampered_message_type_is_reported_with_its_seq() {
    let db = copy().await;
    let seq = verified_update(&db.url).await;
    tamper(
        &db.url,
        &format!(
            "UPDATE kraken_orderbook_messages SET message_type = 'snapshot' WHERE seq = {seq}"
        ),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(code, &report, seq, ["message_type", "raw_message"]);
    assert_eq!(report["disagreement_count"], 1, "{report:#}");
}

#[tokio::test]
async fn bad_frames_and_a_rejected_symbol_are_stored_as_they_came_and_not_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let faults = Faults {
        garbage_after: Some(30),
        unknown_channel_after: Some(50),
        reject: vec!["ETH/USD".into()],
        lose_after: Some(120),
        ..Faults::default()
    };
    let sim = simulator(dir.path(), 60.0, faults).await;
    let collector = Collector::start(
        &sim,
        Some(&db.url),
        dir.path(),
        &["--book-state-every", "40"],
    );
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok",
        300,
        Duration::from_secs(30),
        || collector.log(),
    )
    .await;
    finish(sim, collector).await;
    let (code, report) = verify(&db.url, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["undecodable"], 1, "the frame that is not JSON");
    assert!(report["symbols"].get("ETH/USD").is_none(), "{report:#}");
    assert_eq!(total(&report, "mismatches"), 1, "the lost update");
}

/// A frame's record as the collector journals it.
fn frame(seq: u64, text: &str, book: Option<&OrderBook>) -> Record {
    Record {
        seq,
        received_at: Timestamp::parse("2026-08-18T10:00:00Z")
            .unwrap()
            .add_nanos(seq as i64 * 1_000_000),
        conn_id: 1,
        conn_seq: seq,
        body: RecordBody::Frame(FrameRecord {
            bytes: text.as_bytes().to_vec(),
            checksum_ok: book.map(|_| true),
            best_bid: book.and_then(OrderBook::best_bid),
            best_ask: book.and_then(OrderBook::best_ask),
        }),
    }
}

#[tokio::test]
async fn a_snapshot_stored_raw_for_having_too_many_levels_is_not_flagged() {
    let (db, client) = migrated_db().await;
    let d = |s: &str| Decimal::parse(s).unwrap();
    let level = |p: String, q: &str| format!(r#"{{"price":{p},"qty":{q}}}"#);
    // 33,000 levels: more than ordinal (a smallint) can number; the book keeps the best ten.
    let bids: Vec<(String, &str)> = (0..16_500)
        .map(|i| (format!("{}.5", 50_000 - i), "1.25000000"))
        .collect();
    let asks: Vec<(String, &str)> = (0..16_500)
        .map(|i| (format!("{}.5", 50_001 + i), "0.50000000"))
        .collect();
    let mut book = OrderBook::new(10);
    book.apply_snapshot(
        bids.iter().map(|(p, q)| (d(p), d(q))),
        asks.iter().map(|(p, q)| (d(p), d(q))),
    )
    .unwrap();
    let snapshot = format!(
        r#"{{"channel":"book","type":"snapshot","data":[{{"symbol":"BTC/USD","bids":[{}],"asks":[{}],"checksum":{},"timestamp":"2026-08-18T10:00:00.002000Z"}}]}}"#,
        bids.iter()
            .map(|(p, q)| level(p.clone(), q))
            .collect::<Vec<_>>()
            .join(","),
        asks.iter()
            .map(|(p, q)| level(p.clone(), q))
            .collect::<Vec<_>>()
            .join(","),
        book.checksum()
    );
    let mut records = vec![
        frame(
            1,
            r#"{"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,"symbol":"BTC/USD"},"success":true,"time_in":"2026-08-18T10:00:00.000000Z","time_out":"2026-08-18T10:00:00.001000Z"}"#,
            None,
        ),
        frame(2, &snapshot, Some(&book)),
    ];
    for k in 0..5u64 {
        let qty = format!("2.{k}0000000");
        book.apply_update([(d("50000.5"), d(&qty))], []).unwrap();
        let text = format!(
            r#"{{"channel":"book","type":"update","data":[{{"symbol":"BTC/USD","bids":[{}],"asks":[],"checksum":{},"timestamp":"2026-08-18T10:00:00.00{}000Z"}}]}}"#,
            level("50000.5".into(), &qty),
            book.checksum(),
            k + 3
        );
        records.push(frame(k + 3, &text, Some(&book)));
    }
    let mut writer = Writer::new(&db.url, WriterConfig::new("deep")).unwrap();
    let written = writer.write_batch(&records).await.unwrap();
    assert_eq!(written.rows.stored_raw, 1);
    let (code, report) = verify(&db.url, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["stored_raw"], 1);
    assert_eq!(total(&report, "ok"), 6, "{report:#}");

    // What keeps it from being flagged is its stored_raw event: without it, the entries are missing.
    client
        .execute(
            "DELETE FROM kraken_feed_events WHERE event = 'stored_raw'",
            &[],
        )
        .await
        .unwrap();
    let (code, report) = verify(&db.url, &[]);
    caught(
        code,
        &report,
        2,
        ["raw_message", "kraken_orderbook_entries"],
    );
}
