//! The collector end to end: the simulator over loopback, the `krakenbook collect` process, and a
//! real TimescaleDB. Each test checks one promise of the collector against what the simulator
//! logged as sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use krakenbook::book::Precision;
use krakenbook::exchange::{Faults, PairSpec, SimConfig, Simulator};
use krakenbook::journal::JournalReader;
use krakenbook::record::RecordBody;

use crate::db::{TestDb, column, connect, fresh_db, own_cluster};
use crate::support::krakenbook;

pub(crate) fn pairs() -> Vec<PairSpec> {
    [("BTC/USD", 1, 8), ("ETH/USD", 2, 8), ("MINA/GBP", 4, 8)]
        .into_iter()
        .map(|(s, p, q)| PairSpec {
            symbol: s.into(),
            precision: Precision { price: p, qty: q },
            mid: None,
            rate: None,
        })
        .collect()
}

pub(crate) async fn simulator(dir: &Path, rate: f64, faults: Faults) -> Simulator {
    let mut config = SimConfig {
        pairs: pairs(),
        rate,
        seed: 11,
        ..SimConfig::default()
    };
    config.server.faults = faults;
    config.server.log = Some(dir.join("sent.ndjson"));
    Simulator::bind(config).await.expect("the simulator starts")
}

pub(crate) struct Collector {
    child: Child,
    stderr: PathBuf,
}

impl Collector {
    pub(crate) fn start(
        sim: &Simulator,
        db_url: Option<&str>,
        dir: &Path,
        extra: &[&str],
    ) -> Collector {
        Collector::start_url(&format!("ws://{}/v2", sim.local_addr()), db_url, dir, extra)
    }

    /// A collector of the three test pairs at depth 25 from `url`, journaling under `dir`.
    pub(crate) fn start_url(
        url: &str,
        db_url: Option<&str>,
        dir: &Path,
        extra: &[&str],
    ) -> Collector {
        let stderr = dir.join(format!(
            "collector-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let journal = dir.join("journal");
        let mut cmd = krakenbook();
        cmd.args([
            "collect",
            "--url",
            url,
            "--symbols",
            "BTC/USD,ETH/USD,MINA/GBP",
            "--depth",
            "25",
        ])
        .arg("--journal-dir")
        .arg(&journal)
        .args(extra)
        .env_remove("DATABASE_URL")
        .env("KRAKENBOOK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
        if let Some(db) = db_url {
            cmd.args(["--database-url", db]);
        }
        Collector {
            child: cmd.spawn().expect("krakenbook collect starts"),
            stderr,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (within 10 s, or the test fails).
    pub(crate) fn stop(mut self) -> (ExitStatus, Duration, String) {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed(), self.log());
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                panic!(
                    "collect did not exit within 10 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A collector still running when its test ends without stopping it (a failed assertion, a
/// panic) is killed and reaped, never left recording.
impl Drop for Collector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Stops the exchange first, so that every frame it sent has arrived, then the collector, which
/// must exit 0; returns the collector's log.
pub(crate) async fn finish(sim: Simulator, collector: Collector) -> String {
    sim.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, log) = collector.stop();
    assert!(status.success(), "{log}");
    log
}

/// What the simulator logged as sent: per connection (in connection order), the frames in order.
pub(crate) fn sent(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("sent.ndjson")).unwrap();
    let mut conns: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if let (Some(conn), Some(frame)) = (v["conn"].as_u64(), v["sent"].as_str()) {
            conns.entry(conn).or_default().push(frame.to_owned());
        }
    }
    conns.into_values().collect()
}

pub(crate) fn is_heartbeat(frame: &str) -> bool {
    frame == r#"{"channel":"heartbeat"}"#
}

/// A frame's meaning, for comparing a frame with what jsonb gives back.
pub(crate) fn meaning(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Levels in book frames.
fn levels(frame: &str) -> u64 {
    let v = meaning(frame);
    if v["channel"] != "book" {
        return 0;
    }
    v["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| {
                    (x["bids"].as_array().map_or(0, Vec::len)
                        + x["asks"].as_array().map_or(0, Vec::len)) as u64
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The stored messages, per connection in connection order, each connection's in `seq` order:
/// every received copy (a book message received on several connections is one row holding its
/// further copies), as the messages view renders its row.
pub(crate) async fn stored(url: &str) -> Vec<Vec<String>> {
    let client = connect(url).await;
    let rows = client
        .query(
            "SELECT conn_id, frame FROM (
               SELECT c.conn_id, m.raw_message::text AS frame, k.name AS collector, c.seq
                 FROM krakenbook_copies c
                 JOIN krakenbook_collectors k ON k.id = c.collector_id
                 JOIN kraken_orderbook_messages m
                   ON m.collector = k.name AND m.seq = c.row_seq AND m.channel = 'book'
               UNION ALL
               SELECT conn_id, coalesce(raw_message::text, raw_text), collector, seq
                 FROM krakenbook_other) x
             ORDER BY collector, seq",
            &[],
        )
        .await
        .unwrap();
    let mut conns: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in rows {
        conns.entry(r.get(0)).or_default().push(r.get(1));
    }
    conns.into_values().collect()
}

pub(crate) async fn count(url: &str, sql: &str) -> i64 {
    connect(url).await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until `sql` (a count) reaches `at_least`, or fails after `timeout`.
pub(crate) async fn wait_count(
    url: &str,
    sql: &str,
    at_least: i64,
    timeout: Duration,
    log: impl Fn() -> String,
) -> i64 {
    let started = Instant::now();
    loop {
        // Before the collector has migrated, the tables do not exist yet: count that as 0.
        let n = match connect(url).await.query_one(sql, &[]).await {
            Ok(row) => row.get(0),
            Err(_) => 0,
        };
        if n >= at_least {
            return n;
        }
        assert!(
            started.elapsed() < timeout,
            "waited {timeout:?} for {sql} ≥ {at_least}, got {n}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every frame the simulator sent (heartbeats aside) is stored once, in received order.
pub(crate) fn assert_stored_exactly(sent: &[Vec<String>], stored: &[Vec<String>]) {
    assert_eq!(
        stored.len(),
        sent.len(),
        "one stored connection per simulator connection"
    );
    for (i, (s, d)) in sent.iter().zip(stored).enumerate() {
        let s: Vec<Value> = s
            .iter()
            .filter(|f| !is_heartbeat(f))
            .map(|f| meaning(f))
            .collect();
        let d: Vec<Value> = d.iter().map(|f| meaning(f)).collect();
        assert_eq!(d.len(), s.len(), "connection {i}: frames stored vs sent");
        if let Some(k) = (0..s.len()).find(|&k| s[k] != d[k]) {
            panic!(
                "connection {i}, frame {k}: stored {} but sent {}",
                d[k], s[k]
            );
        }
    }
}

async fn checkpoint(url: &str) -> i64 {
    count(
        url,
        "SELECT coalesce(max(seq), 0) FROM krakenbook_checkpoints",
    )
    .await
}

/// The journal's records: (last seq, frames).
fn journal(dir: &Path) -> (u64, u64) {
    if !dir.join("journal").is_dir() {
        return (0, 0);
    }
    let mut reader = JournalReader::open(&dir.join("journal"), 0).unwrap();
    let mut frames = 0;
    while let Some(r) = reader.next_record().unwrap() {
        frames += u64::from(matches!(r.body, RecordBody::Frame(_)));
    }
    (reader.position(), frames)
}

pub(crate) fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn every_frame_sent_is_stored_once_in_order_and_shutdown_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let sim = simulator(dir.path(), 60.0, Faults::default()).await;
    let metrics = free_addr();
    let collector = Collector::start(
        &sim,
        Some(&db.url),
        dir.path(),
        &["--metrics-listen", &metrics.to_string()],
    );
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok",
        600,
        Duration::from_secs(30),
        || collector.log(),
    )
    .await;

    // The metrics endpoint shows the feed, the journal and the database.
    let body = http_get(metrics, "/metrics").await;
    for needle in [
        "krakenbook_checksum_ok_total{symbol=\"BTC/USD\"}",
        "krakenbook_journal_records_total",
        "krakenbook_db_lag_seconds",
        "krakenbook_connections_open 1",
    ] {
        assert!(
            body.contains(needle),
            "{needle} missing from /metrics:\n{body}"
        );
    }
    assert!(
        http_get(metrics, "/health")
            .await
            .starts_with("HTTP/1.1 200")
    );

    // Stop the exchange first so that every frame it sent has arrived, then the collector.
    sim.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, took, log) = collector.stop();
    assert!(status.success(), "exit 0 on SIGTERM: {status}\n{log}");
    assert!(took < Duration::from_secs(10));
    assert!(log.contains("journal synced"), "{log}");

    let sent = sent(dir.path());
    assert_stored_exactly(&sent, &stored(&db.url).await);
    let sent_levels: u64 = sent.iter().flatten().map(|f| levels(f)).sum();
    assert_eq!(
        count(&db.url, "SELECT count(*) FROM kraken_orderbook_entries").await as u64,
        sent_levels,
        "one entry row per level sent"
    );
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok = false"
        )
        .await,
        0
    );
    // The database caught up with the journal before exit.
    let (last, _) = journal(dir.path());
    assert_eq!(
        checkpoint(&db.url).await as u64,
        last,
        "database checkpoint = journal end"
    );
}

#[tokio::test]
async fn a_lost_update_is_caught_resubscribed_and_recorded_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let faults = Faults {
        lose_after: Some(40),
        connections: Some(1),
        ..Faults::default()
    };
    let sim = simulator(dir.path(), 60.0, faults).await;
    let collector = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_feed_events WHERE event = 'resynced'",
        1,
        Duration::from_secs(30),
        || collector.log(),
    )
    .await;
    // Let the resynced book run a while: every later message must verify.
    let at: i64 = count(&db.url, "SELECT max(seq) FROM kraken_orderbook_messages").await;
    wait_count(
        &db.url,
        &format!("SELECT count(*) FROM kraken_orderbook_messages WHERE seq > {at} AND checksum_ok"),
        200,
        Duration::from_secs(30),
        || collector.log(),
    )
    .await;
    let log = finish(sim, collector).await;

    let client = connect(&db.url).await;
    let mismatch = client
        .query_one(
            "SELECT seq, symbol, time FROM kraken_feed_events WHERE event = 'checksum_mismatch'",
            &[],
        )
        .await
        .expect("exactly one mismatch event");
    let (m_seq, symbol): (i64, String) = (mismatch.get(0), mismatch.get(1));
    let resynced = client
        .query_one("SELECT seq, gap_start, time FROM kraken_feed_events WHERE event = 'resynced' AND symbol = $1", &[&symbol])
        .await
        .unwrap();
    let (r_seq, gap_start, gap_end): (i64, std::time::SystemTime, std::time::SystemTime) =
        (resynced.get(0), resynced.get(1), resynced.get(2));
    assert_eq!(
        gap_start,
        mismatch.get::<_, std::time::SystemTime>(2),
        "the gap runs from the mismatch"
    );
    assert!(gap_end > gap_start);
    // The very next book message of that symbol after the lost update failed its checksum.
    let bad: i64 = client
        .query_one(
            "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok = false",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 1, "one mismatch: the message after the lost update");
    // Resubscribed once: unsubscribe + subscribe, and a second snapshot for the symbol.
    let snapshots: i64 = client
        .query_one("SELECT count(*) FROM kraken_orderbook_messages WHERE message_type = 'snapshot' AND symbol = $1", &[&symbol])
        .await
        .unwrap()
        .get(0);
    assert_eq!(snapshots, 2, "{log}");
    // Every book message after the resync verifies.
    let after: i64 = client
        .query_one(
            "SELECT count(*) FROM kraken_orderbook_messages WHERE channel = 'book' AND message_type IN ('snapshot', 'update') AND seq > $1 AND checksum_ok IS DISTINCT FROM true",
            &[&r_seq],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, 0);
    assert!(m_seq < r_seq);
    assert_stored_exactly(&sent(dir.path()), &stored(&db.url).await);
}

/// (event, symbol, time, gap_start, detail) of a feed-event row.
type EventRow = (
    String,
    Option<String>,
    std::time::SystemTime,
    Option<std::time::SystemTime>,
    Option<String>,
);

/// The reason a `disconnected` event must give: all of it, or a part (a reason with a duration
/// the test does not pin).
enum Reason {
    Exactly(String),
    Containing(&'static str),
}

async fn reopened_after(faults: Faults, expect_reason: Reason) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let sim = simulator(dir.path(), 40.0, faults).await;
    let collector = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_feed_events WHERE event = 'resynced'",
        3,
        Duration::from_secs(40),
        || collector.log(),
    )
    .await;
    let log = finish(sim, collector).await;

    let client = connect(&db.url).await;
    let rows = client
        .query(
            "SELECT event, symbol, time, gap_start, detail FROM kraken_feed_events ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let events: Vec<EventRow> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let lost = events
        .iter()
        .find(|e| e.0 == "disconnected")
        .unwrap_or_else(|| panic!("a disconnected event: {events:?}"));
    let reason = lost.4.as_deref().unwrap_or("");
    let as_expected = match &expect_reason {
        Reason::Exactly(want) => reason == want,
        Reason::Containing(part) => reason.contains(part),
    };
    assert!(as_expected, "{lost:?}\n{events:#?}\n{log}");
    let reconnected = events
        .iter()
        .filter(|e| e.0 == "connected")
        .nth(1)
        .expect("a second connection");
    let gap = reconnected.2.duration_since(lost.2).unwrap();
    assert!(
        gap < Duration::from_secs(10),
        "reopened within 10 s of the loss, took {gap:?}"
    );
    // Every symbol's book was rebuilt from a fresh snapshot, and its gap recorded.
    for symbol in ["BTC/USD", "ETH/USD", "MINA/GBP"] {
        let resync = events
            .iter()
            .find(|e| e.0 == "resynced" && e.1.as_deref() == Some(symbol))
            .unwrap_or_else(|| panic!("{symbol} resynced: {events:?}"));
        let start = resync.3.expect("a gap start");
        assert!(
            start <= lost.2 + Duration::from_millis(1),
            "{symbol}: the gap starts by the loss"
        );
        let snapshots: i64 = client
            .query_one("SELECT count(*) FROM kraken_orderbook_messages WHERE message_type = 'snapshot' AND symbol = $1", &[&symbol])
            .await
            .unwrap()
            .get(0);
        assert_eq!(snapshots, 2, "{symbol}: a snapshot per connection");
    }
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok = false"
        )
        .await,
        0
    );
    assert_stored_exactly(&sent(dir.path()), &stored(&db.url).await);
}

#[tokio::test]
async fn a_dropped_connection_is_reopened_with_books_rebuilt() {
    let faults = Faults {
        drop_after: Some(60),
        connections: Some(1),
        ..Faults::default()
    };
    // The simulator closes the TCP connection without a WebSocket close: an end of stream, not
    // a close frame, a silence or a socket error.
    let eof = krakenbook::feed::Lost::Eof.to_string();
    reopened_after(faults, Reason::Exactly(eof)).await;
}

#[tokio::test]
async fn a_silent_connection_is_reopened_with_books_rebuilt() {
    let faults = Faults {
        silence_after: Some(60),
        silence_for: Duration::from_secs(8),
        connections: Some(1),
        ..Faults::default()
    };
    reopened_after(faults, Reason::Containing("no frame")).await;
}

#[tokio::test]
async fn bad_frames_and_rejected_symbols_are_kept_and_the_feed_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let faults = Faults {
        garbage_after: Some(30),
        unknown_channel_after: Some(50),
        reject: vec!["ETH/USD".into()],
        ..Faults::default()
    };
    let sim = simulator(dir.path(), 50.0, faults).await;
    let metrics = free_addr();
    let collector = Collector::start(
        &sim,
        Some(&db.url),
        dir.path(),
        &["--metrics-listen", &metrics.to_string()],
    );
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok",
        400,
        Duration::from_secs(30),
        || collector.log(),
    )
    .await;
    let body = http_get(metrics, "/metrics").await;
    assert!(
        body.contains("krakenbook_malformed_frames_total 1"),
        "{body}"
    );
    assert!(
        body.contains("krakenbook_subscription_errors_total 1"),
        "{body}"
    );
    finish(sim, collector).await;

    let client = connect(&db.url).await;
    let malformed: Vec<String> = column(
        &client,
        "SELECT raw_text FROM kraken_orderbook_messages WHERE message_type = 'malformed'",
    )
    .await;
    assert_eq!(
        malformed.len(),
        1,
        "the non-JSON frame is stored as received"
    );
    let sent_garbage = sent(dir.path())
        .concat()
        .into_iter()
        .find(|f| serde_json::from_str::<Value>(f).is_err())
        .unwrap();
    assert_eq!(malformed[0], sent_garbage);
    let rejected: String = client
        .query_one("SELECT detail FROM kraken_feed_events WHERE event = 'subscription_error' AND symbol = 'ETH/USD'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        rejected.contains("Currency pair not supported"),
        "{rejected}"
    );
    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) FROM kraken_feed_events WHERE event = 'malformed_frame'"
        )
        .await,
        1
    );
    // The other symbols kept flowing after both bad frames.
    let last_bad: i64 = count(&db.url, "SELECT max(seq) FROM kraken_orderbook_messages WHERE message_type = 'malformed' OR channel = 'unknown'").await;
    let later_ok = count(
        &db.url,
        &format!(
            "SELECT count(*) FROM kraken_orderbook_messages WHERE seq > {last_bad} AND checksum_ok"
        ),
    )
    .await;
    assert!(later_ok > 50, "{later_ok}");
    assert_stored_exactly(&sent(dir.path()), &stored(&db.url).await);
}

#[tokio::test]
async fn the_database_down_for_30_s_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = own_cluster();
    let url = cluster.create_database().await.unwrap();
    let sim = simulator(dir.path(), 40.0, Faults::default()).await;
    let collector = Collector::start(&sim, Some(&url), dir.path(), &[]);
    wait_count(
        &url,
        "SELECT count(*) FROM kraken_orderbook_messages",
        100,
        Duration::from_secs(30),
        || collector.log(),
    )
    .await;
    cluster.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    cluster.start().unwrap();
    // The journal kept everything; the writer catches up.
    let (journal_seq_before, _) = journal_peek(dir.path());
    wait_count(
        &url,
        "SELECT coalesce(max(seq), 0) FROM krakenbook_checkpoints",
        journal_seq_before as i64,
        Duration::from_secs(60),
        || collector.log(),
    )
    .await;
    let log = finish(sim, collector).await;
    assert!(log.contains("retr") || log.contains("database"), "{log}");
    assert_stored_exactly(&sent(dir.path()), &stored(&url).await);
    let dup = count(&url, "SELECT count(*) FROM (SELECT collector, seq FROM kraken_orderbook_messages GROUP BY 1, 2 HAVING count(*) > 1) d").await;
    assert_eq!(dup, 0);
}

/// The journal's last seq, read while a collector may be writing it.
fn journal_peek(dir: &Path) -> (u64, u64) {
    journal(dir)
}

#[tokio::test]
async fn a_collector_killed_with_sigkill_restarts_and_stores_every_journaled_frame_once() {
    let dir = tempfile::tempdir().unwrap();
    let db: TestDb = fresh_db().await;
    let sim = simulator(dir.path(), 60.0, Faults::default()).await;
    let first = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_orderbook_messages",
        300,
        Duration::from_secs(30),
        || first.log(),
    )
    .await;
    first.kill9();
    let second = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    let seen = count(&db.url, "SELECT count(*) FROM kraken_orderbook_messages").await;
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_orderbook_messages",
        seen + 300,
        Duration::from_secs(30),
        || second.log(),
    )
    .await;
    finish(sim, second).await;

    // Every frame record of the journal (both runs) is in the database exactly once, by seq.
    let mut reader = JournalReader::open(&dir.path().join("journal"), 0).unwrap();
    let mut expected = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        if let RecordBody::Frame(f) = &r.body
            && !is_heartbeat(std::str::from_utf8(&f.bytes).unwrap_or(""))
        {
            expected.push(r.seq as i64);
        }
    }
    let client = connect(&db.url).await;
    let stored: Vec<i64> = column(
        &client,
        "SELECT seq FROM kraken_orderbook_messages ORDER BY seq",
    )
    .await;
    assert_eq!(stored, expected, "every journaled frame stored once");
    // Two collector runs, one journal identity, connection ids still increasing.
    let conns: Vec<i64> = column(
        &client,
        "SELECT DISTINCT conn_id FROM kraken_orderbook_messages ORDER BY 1",
    )
    .await;
    assert!(
        conns.len() >= 2 && conns.windows(2).all(|w| w[0] < w[1]),
        "{conns:?}"
    );
}

#[tokio::test]
async fn journal_only_then_import_stores_everything_and_a_second_import_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(dir.path(), 60.0, Faults::default()).await;
    // Sockets read on every arrival (`--read-every 0ms`): the other tests read on the tick.
    let collector = Collector::start(&sim, None, dir.path(), &["--read-every", "0ms"]);
    let started = Instant::now();
    while journal(dir.path()).1 < 400 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            collector.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    finish(sim, collector).await;

    let db = fresh_db().await;
    let journal_dir = dir.path().join("journal");
    let out = krakenbook()
        .args(["import", "--quiet", "--database-url", &db.url])
        .arg("--journal-dir")
        .arg(&journal_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("imported seq 1..="), "{stdout}");
    assert_stored_exactly(&sent(dir.path()), &stored(&db.url).await);
    let before = count(&db.url, "SELECT count(*) FROM kraken_orderbook_entries").await;
    let again = krakenbook()
        .args(["import", "--quiet", "--database-url", &db.url])
        .arg("--journal-dir")
        .arg(&journal_dir)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to import"));
    assert_eq!(
        count(&db.url, "SELECT count(*) FROM kraken_orderbook_entries").await,
        before
    );
}

pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn collect_all_records_every_online_pair_the_instrument_channel_lists() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(dir.path(), 40.0, Faults::default()).await;
    let url = format!("ws://{}/v2", sim.local_addr());
    let stderr = dir.path().join("all.log");
    let mut child = krakenbook()
        .args([
            "collect",
            "--all",
            "--url",
            &url,
            "--symbols-per-connection",
            "2",
        ])
        .arg("--journal-dir")
        .arg(dir.path().join("journal"))
        .env_remove("KRAKENBOOK_SYMBOLS")
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let symbols = loop {
        let mut seen = std::collections::BTreeSet::new();
        if dir.path().join("journal").is_dir() {
            let mut reader = JournalReader::open(&dir.path().join("journal"), 0).unwrap();
            while let Some(r) = reader.next_record().unwrap() {
                if let Some(Ok(krakenbook::kraken::Frame::Book(b))) =
                    r.frame_text().map(krakenbook::kraken::decode)
                {
                    seen.extend(b.data.iter().map(|d| d.symbol.to_string()));
                }
            }
        }
        if seen.len() == 3 || started.elapsed() > Duration::from_secs(20) {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    sim.shutdown().await.unwrap();
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(status.success(), "{log}");
    assert_eq!(
        symbols.into_iter().collect::<Vec<_>>(),
        ["BTC/USD", "ETH/USD", "MINA/GBP"],
        "{log}"
    );
    assert!(
        log.contains("connections=2"),
        "3 pairs at 2 per connection: two connections\n{log}"
    );
}

/// Issue 9, item 9: permanent database errors were retried forever. A collector whose password
/// the database refuses at start-up stops at once with one line saying what to do; the password
/// never shows.
#[tokio::test]
async fn a_refused_password_at_start_up_stops_the_collector_with_one_line() {
    let cluster = own_cluster();
    cluster.require_passwords().unwrap();
    let admin_url = cluster.create_database().await.unwrap();
    connect(&admin_url)
        .await
        .batch_execute("CREATE ROLE kb LOGIN SUPERUSER PASSWORD 'right-one'")
        .await
        .unwrap();
    let url = admin_url.replacen("postgres@", "kb@", 1);
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(dir.path(), 20.0, Faults::default()).await;
    let out = krakenbook()
        .args(["collect", "--url", &format!("ws://{}/v2", sim.local_addr())])
        .args(["--symbols", "BTC/USD", "--database-url", &url])
        .arg("--journal-dir")
        .arg(dir.path().join("journal"))
        .env("PGPASSWORD", "wrong-one")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{err}");
    assert!(last.contains("28P01") || last.contains("password"), "{err}");
    assert!(!err.contains("wrong-one"), "{err}");
    // With the right password the same command records.
    let mut ok = krakenbook()
        .args(["collect", "--url", &format!("ws://{}/v2", sim.local_addr())])
        .args(["--symbols", "BTC/USD", "--database-url", &url])
        .arg("--journal-dir")
        .arg(dir.path().join("journal"))
        .env("PGPASSWORD", "right-one")
        .env_remove("DATABASE_URL")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_count(
        &admin_url,
        "SELECT count(*) FROM kraken_orderbook_messages WHERE channel = 'book'",
        20,
        Duration::from_secs(30),
        String::new,
    )
    .await;
    ok.kill().unwrap();
    ok.wait().unwrap();
    sim.shutdown().await.unwrap();
}

/// Issue 9, item 10: a password in `--database-url` was visible to every user in `ps` for as
/// long as the collector ran. The process starts itself again without it, and records.
#[tokio::test]
async fn a_password_given_in_the_url_is_not_left_on_the_command_line() {
    let cluster = own_cluster();
    cluster.require_passwords().unwrap();
    let admin_url = cluster.create_database().await.unwrap();
    connect(&admin_url)
        .await
        .batch_execute("CREATE ROLE kb LOGIN SUPERUSER PASSWORD 'sekrit-pw'")
        .await
        .unwrap();
    let url = admin_url.replacen("postgres@", "kb:sekrit-pw@", 1);
    let dir = tempfile::tempdir().unwrap();
    let sim = simulator(dir.path(), 20.0, Faults::default()).await;
    let log = dir.path().join("collector.log");
    let mut child = krakenbook()
        .args(["collect", "--url", &format!("ws://{}/v2", sim.local_addr())])
        .args(["--symbols", "BTC/USD", "--database-url", &url])
        .arg("--journal-dir")
        .arg(dir.path().join("journal"))
        .env_remove("DATABASE_URL")
        .env_remove("PGPASSWORD")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_count(
        &admin_url,
        "SELECT count(*) FROM kraken_orderbook_messages WHERE channel = 'book'",
        20,
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).unwrap_or_default(),
    )
    .await;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains("sekrit-pw"), "{cmdline}");
    assert!(cmdline.contains("--database-url"), "{cmdline}");
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("sekrit-pw"), "{text}");
    assert!(text.contains("moved to PGPASSWORD"), "{text}");
    sim.shutdown().await.unwrap();
}

/// A long read period under a heavy feed (`--read-every 100ms`, 100 pairs at depth 1000: the
/// startup snapshots are about 7 MB): Linux's default receive buffer (128 KiB, not grown for a
/// reader that reads every 100 ms) held about 1.2 MB/s at that period, so the exchange's send
/// queue filled and it closed the connection as a slow client, again after every reconnect (the
/// collector recorded almost nothing). A busy connection makes the feed read on the fine tick:
/// no slow-client disconnect, one connection, and every frame sent is journaled.
#[tokio::test]
async fn a_long_read_period_speeds_up_for_a_busy_feed_and_the_exchange_never_sees_a_slow_client() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = krakenbook::exchange::sim::generated_pairs(100);
    let symbols: Vec<String> = pairs.iter().map(|p| p.symbol.clone()).collect();
    let mut config = SimConfig {
        pairs,
        rate: 2.0,
        seed: 5,
        ..SimConfig::default()
    };
    config.server.send_queue = 256;
    config.server.log = Some(dir.path().join("sent.ndjson"));
    let sim = Simulator::bind(config).await.expect("the simulator starts");
    let stderr = dir.path().join("collector.log");
    let metrics = free_addr();
    let child = krakenbook()
        .args(["collect", "--url", &sim.url(), "--depth", "1000"])
        .args(["--symbols", &symbols.join(",")])
        .args(["--read-every", "100ms"])
        .args(["--metrics-listen", &metrics.to_string()])
        .arg("--journal-dir")
        .arg(dir.path().join("journal"))
        .env_remove("DATABASE_URL")
        .env("KRAKENBOOK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("krakenbook collect starts");
    let collector = Collector { child, stderr };
    // Every snapshot, then about six seconds of updates (200 a second).
    let started = Instant::now();
    while journal(dir.path()).1 < 1_300 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}\n{}",
            sim.stats().exchange,
            collector.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = sim.stats().exchange;
    // The operator sees the faster reads.
    let scrape = http_get(metrics, "/metrics").await;
    let fast: u64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("krakenbook_fast_read_ticks_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fast read ticks counted:\n{scrape}"));
    assert!(fast > 0, "{scrape}");
    let log = finish(sim, collector).await;
    assert_eq!(stats.slow_client_disconnects, 0, "{stats:?}\n{log}");
    let sent = sent(dir.path());
    assert_eq!(
        sent.len(),
        1,
        "one connection, never reopened: {stats:?}\n{log}"
    );
    let (_, frames) = journal(dir.path());
    assert_eq!(
        frames,
        sent[0].len() as u64,
        "every frame sent is journaled"
    );
}
