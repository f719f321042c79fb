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

/// A verified update that set the best bid of the book state after it (the last message before
/// the state that set that level): its seq and the 1-based position in `levels` of that bid's
/// quantity (in the checksum's top ten, so the book's checksum changes with it).
async fn best_bid_level(url: &str, offset: i64) -> (i64, i32) {
    level_of_a_state(url, 0, offset).await
}

/// The last verified update before a book state (the `offset`th with such an update) that set
/// the state's bid at `level` (0 the best) to its quantity there: the update's seq, and the
/// 1-based position of that quantity in its `levels`.
async fn level_of_a_state(url: &str, level: i32, offset: i64) -> (i64, i32) {
    let row = connect(url)
        .await
        .query_one(
            "SELECT b.seq, (b.k + 1)::int FROM kraken_book_states s
              CROSS JOIN LATERAL (
                  SELECT b.seq, u.k FROM krakenbook_book b
                   CROSS JOIN LATERAL unnest(b.levels[1:2 * b.n_bids]) WITH ORDINALITY u(v, k)
                   WHERE b.symbol = s.symbol AND b.conn_id = s.conn_id AND b.seq < s.seq
                     AND b.collector_id = (SELECT id FROM krakenbook_collectors c
                                            WHERE c.name = s.collector)
                     AND u.k % 2 = 1 AND krakenbook_dec(u.v) = (s.bids -> $1::int ->> 0)::numeric
                   ORDER BY b.seq DESC LIMIT 1) b
              JOIN krakenbook_book r ON r.seq = b.seq
             WHERE jsonb_array_length(s.bids) > $1::int AND r.kind = 'u' AND r.checksum_ok
               AND krakenbook_dec(r.levels[b.k + 1]) = (s.bids -> $1::int ->> 1)::numeric
             ORDER BY s.seq OFFSET $2 LIMIT 1",
            &[&level, &offset],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A verified update, well inside the record.
async fn verified_update(url: &str) -> i64 {
    one(
        url,
        "SELECT seq FROM krakenbook_book WHERE kind = 'u' AND checksum_ok
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
        count(url, "SELECT count(*) FROM krakenbook_copies").await
    );
    assert_eq!(
        total(&report, "book_messages"),
        count(url, BOOK_MESSAGES).await,
        "one connection: one copy a message"
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
        report["levels_compared"].as_i64(),
        Some(count(url, "SELECT count(*) FROM kraken_orderbook_entries").await)
    );
    assert_eq!(
        report["raw_compared"], 0,
        "Kraken's layout: no raw frame kept"
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
        text.contains("every stored copy agrees") && text.contains("levels replayed"),
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
            "SELECT \"timestamp\" FROM krakenbook_book WHERE kind = 'u' ORDER BY \"timestamp\"",
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
        .query_one("SELECT min(name) FROM krakenbook_collectors", &[])
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
async fn a_tampered_level_in_the_top_ten_is_reported_with_its_seq() {
    let db = copy().await;
    let (seq, qty) = best_bid_level(&db.url, 3).await;
    // One more unit of the quantity's last digit (dec64: mantissa * 32 + scale).
    tamper(
        &db.url,
        &format!("UPDATE krakenbook_book SET levels[{qty}] = levels[{qty}] + 32 WHERE seq = {seq}"),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(code, &report, seq, ["checksum_ok", "replayed book"]);
    caught(code, &report, seq, ["checksum", "replayed book"]);
    let first = &report["disagreements"][0];
    assert_eq!(
        (&first["recorded"], &first["replayed"]),
        (&"ok".into(), &"mismatch".into())
    );
}

#[tokio::test]
async fn a_checksum_column_that_disagrees_with_the_replayed_book_is_reported_with_its_seq() {
    let db = copy().await;
    let seq = verified_update(&db.url).await;
    let checksum = one(
        &db.url,
        &format!("SELECT checksum::bigint & 4294967295 FROM krakenbook_book WHERE seq = {seq}"),
    )
    .await;
    tamper(
        &db.url,
        &format!("UPDATE krakenbook_book SET checksum = checksum # 1 WHERE seq = {seq}"),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(code, &report, seq, ["checksum", "replayed book"]);
    // Its verdict and the checksum, once: the replay goes on from its book.
    assert_eq!(report["disagreement_count"], 2, "{report:#}");
    // The human report names the collector, the seq, the symbol and both copies.
    let out = run(&["replay", "--verify", "--quiet", "--database-url", &db.url]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let d = report["disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["copies"][0] == "checksum")
        .unwrap();
    assert_eq!(d["replayed"], checksum.to_string().as_str(), "{d}");
    let line = format!(
        "seq {seq} of {} {}: checksum says {}; replayed book says {}",
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
        &format!("UPDATE krakenbook_book SET checksum_ok = false WHERE seq = {seq}"),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(code, &report, seq, ["checksum_ok", "replayed book"]);
    assert_eq!(report["disagreement_count"], 1, "{report:#}");
    assert_eq!(report["disagreements"][0]["recorded"], "mismatch");
    assert_eq!(report["disagreements"][0]["replayed"], "ok");
}

#[tokio::test]
async fn a_tampered_kind_is_reported_with_its_seq() {
    let db = copy().await;
    let seq = verified_update(&db.url).await;
    tamper(
        &db.url,
        &format!("UPDATE krakenbook_book SET kind = 's' WHERE seq = {seq}"),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    // Applied as a snapshot, its few levels are not the book Kraken summed.
    caught(code, &report, seq, ["checksum_ok", "replayed book"]);
}

#[tokio::test]
async fn a_raw_frame_kept_beside_its_levels_must_say_the_same() {
    let db = copy().await;
    let (seq, _) = best_bid_level(&db.url, 5).await;
    // The frame as the view renders it, stored as raw (as the writer does for a frame not in
    // Kraken's layout): it agrees.
    tamper(
        &db.url,
        &format!(
            "UPDATE krakenbook_book b SET raw = m.raw_message
               FROM kraken_orderbook_messages m WHERE m.seq = b.seq AND b.seq = {seq}"
        ),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["raw_compared"], 1);
    // Its first bid's quantity changed in raw only.
    tamper(
        &db.url,
        &format!(
            "UPDATE krakenbook_book SET raw = jsonb_set(raw, '{{data,0,bids,0,qty}}',
                 to_jsonb((raw #>> '{{data,0,bids,0,qty}}')::numeric + 1))
              WHERE seq = {seq}"
        ),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    caught(code, &report, seq, ["raw", "levels"]);
    assert_eq!(report["disagreement_count"], 1, "{report:#}");
}

#[tokio::test]
async fn a_tampered_level_below_the_top_ten_is_caught_by_the_next_book_state() {
    let db = copy().await;
    // A book state's 21st bid (beyond the checksum's top ten) and the last message before the
    // state that set that level: its quantity there, one unit more.
    let (seq, qty) = level_of_a_state(&db.url, 20, 2).await;
    let state = one(
        &db.url,
        &format!(
            "SELECT min(s.seq) FROM kraken_book_states s, krakenbook_book b
              WHERE b.seq = {seq} AND s.symbol = b.symbol AND s.conn_id = b.conn_id
                AND s.seq > b.seq"
        ),
    )
    .await;
    tamper(
        &db.url,
        &format!("UPDATE krakenbook_book SET levels[{qty}] = levels[{qty}] + 32 WHERE seq = {seq}"),
    )
    .await;
    let (code, report) = verify(&db.url, &[]);
    assert_eq!(code, Some(1), "{report:#}");
    // Nothing before the message; the first book state after it holds the changed level (the
    // checksums see it only if it was in the top ten at some message between).
    let first = report["disagreements"][0]["seq"].as_i64().unwrap();
    assert!(seq <= first && first <= state, "{report:#}");
    let at_state = report["disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["seq"].as_i64() == Some(state))
        .unwrap_or_else(|| panic!("nothing at the state's seq {state}: {report:#}"));
    assert_eq!(
        at_state["copies"],
        serde_json::json!(["kraken_book_states", "replayed book"])
    );
    assert!(
        at_state["recorded"]
            .as_str()
            .unwrap()
            .starts_with("bid level "),
        "{report:#}"
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
    caught(code, &report, seq, ["kraken_book_states", "replayed book"]);
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
async fn a_frame_stored_whole_that_claims_to_be_a_book_message_is_reported_with_its_seq() {
    let db = copy().await;
    let seq = one(
        &db.url,
        "SELECT seq FROM krakenbook_other WHERE channel = 'book' AND message_type = 'subscribe'
          ORDER BY seq LIMIT 1",
    )
    .await;
    tamper(
        &db.url,
        &format!("UPDATE krakenbook_other SET message_type = 'snapshot' WHERE seq = {seq}"),
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

    // Without its event it is still the frame, whole: its levels replay from raw_message.
    client
        .execute(
            "DELETE FROM kraken_feed_events WHERE event = 'stored_raw'",
            &[],
        )
        .await
        .unwrap();
    let (code, report) = verify(&db.url, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["stored_raw"], 0);
    // Its best bid's quantity changed inside raw_message: the book no longer has Kraken's
    // checksum there.
    let n = client
        .execute(
            "UPDATE krakenbook_other SET raw_message = jsonb_set(raw_message,
                 '{data,0,bids,0,qty}', to_jsonb((raw_message #>> '{data,0,bids,0,qty}')::numeric + 1))
              WHERE seq = 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let (code, report) = verify(&db.url, &[]);
    caught(code, &report, 2, ["checksum_ok", "replayed book"]);
}

/// A collector with two connections (`--redundancy 2`): each message one row, its copy on the
/// other connection packed in `dups`. Every copy's verdict is checked on its own connection.
#[tokio::test]
async fn a_tampered_verdict_of_a_copy_on_another_connection_is_reported_with_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let sim = simulator(dir.path(), 60.0, Faults::default()).await;
    let collector = Collector::start(
        &sim,
        Some(&db.url),
        dir.path(),
        &["--redundancy", "2", "--book-state-every", "40"],
    );
    wait_count(
        &db.url,
        "SELECT count(*) FROM krakenbook_copies WHERE copy > 0 AND checksum_ok",
        300,
        Duration::from_secs(60),
        || collector.log(),
    )
    .await;
    finish(sim, collector).await;
    let url = &db.url;
    let (code, report) = verify(url, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        total(&report, "book_messages"),
        count(url, "SELECT count(*) FROM krakenbook_copies").await,
        "every copy replayed on its connection"
    );
    assert_eq!(
        total(&report, "ok"),
        count(
            url,
            "SELECT count(*) FROM krakenbook_copies WHERE checksum_ok"
        )
        .await
    );
    assert!(
        total(&report, "book_messages") > count(url, BOOK_MESSAGES).await,
        "copies merged into rows: {report:#}"
    );
    // A range: each connection's streams replayed from their own start before it.
    let times: Vec<Timestamp> = connect(url)
        .await
        .query(
            "SELECT \"timestamp\" FROM krakenbook_book WHERE kind = 'u' ORDER BY \"timestamp\"",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (from, to) = (
        times[times.len() / 3].to_string(),
        times[2 * times.len() / 3].to_string(),
    );
    let (code, report) = verify(url, &["--from", &from, "--to", &to]);
    assert_eq!(code, Some(0), "{report:#}");
    let in_range =
        |sql: &str| format!("{sql} AND \"timestamp\" >= '{from}' AND \"timestamp\" < '{to}'");
    assert_eq!(
        total(&report, "book_messages"),
        count(
            url,
            &in_range("SELECT count(*) FROM krakenbook_copies WHERE true")
        )
        .await
    );
    assert_eq!(
        total(&report, "unverifiable"),
        count(
            url,
            &in_range("SELECT count(*) FROM krakenbook_copies WHERE checksum_ok IS NULL")
        )
        .await,
        "every stream's book was rebuilt from before the range: {report:#}"
    );
    // A verified second copy, well inside the record: its verdict bits (01, ok) made 10
    // (mismatch).
    let row = connect(url)
        .await
        .query_one(
            "SELECT row_seq, seq FROM krakenbook_copies
              WHERE copy = 1 AND checksum_ok AND kind = 'u' ORDER BY seq OFFSET 100 LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (row_seq, seq): (i64, i64) = (row.get(0), row.get(1));
    tamper(
        url,
        &format!("UPDATE krakenbook_book SET dup = dup # (3::bigint << 24) WHERE seq = {row_seq}"),
    )
    .await;
    let (code, report) = verify(url, &[]);
    caught(code, &report, seq, ["dups", "replayed book"]);
    assert_eq!(report["disagreement_count"], 1, "{report:#}");
    let d = &report["disagreements"][0];
    assert!(
        d["recorded"]
            .as_str()
            .unwrap()
            .starts_with("mismatch (copy 1 on connection "),
        "{d}"
    );
    assert_eq!(d["replayed"], "ok");
}
