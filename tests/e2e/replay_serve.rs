//! `replay --serve` speaks Kraken as the real captures show it, over real sockets, from a
//! recording in a real TimescaleDB: level order that a client truncating after every level
//! follows, no message for a level merely pushed out of the window, time order across the symbols
//! of a connection, Kraken's refusal of a depth it does not have, a gap shown as a lost
//! connection (never an unasked snapshot), and the end of the record as a close with a reason.
//!
//! The recording (made once per test process): the simulator over loopback and `krakenbook
//! collect` at depth 25. On the first connection a lost update (a checksum mismatch of one
//! symbol, resubscribed: a gap in that symbol only), then a 7 s silence (the collector drops the
//! connection and reconnects: a gap in every symbol); then the collector is stopped and started
//! again 2 s later (a gap in every symbol across the restart).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use krakenbook::book::Decimal;
use krakenbook::exchange::{Exchange, Faults, ServerConfig, SimConfig, Simulator};
use krakenbook::kraken::{BookKind, Frame, decode};
use krakenbook::replay::{ReplayMarket, ReplaySource};
use krakenbook::time::Timestamp;

use crate::collect::{Collector, finish, simulator, wait_count};
use crate::db::{TestDb, connect, fresh_db};
use krakenbook_testkit::sim_client::{Checker, Client, LevelClient, Next};

const SYMBOLS: [&str; 3] = ["BTC/USD", "ETH/USD", "MINA/GBP"];

const VERIFIED: &str = "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok";

/// The shared recording.
struct Recording {
    db: TestDb,
    /// The first instant every pair has a snapshot at or before (Kraken's clock).
    first: Timestamp,
    /// When the collector lost the silent connection (its `disconnected` event).
    lost: Timestamp,
    /// When the first snapshot after that arrived.
    back: Timestamp,
    /// When the restarted collector connected.
    restarted: Timestamp,
    _dir: tempfile::TempDir,
}

static RECORDING: OnceCell<Recording> = OnceCell::const_new();

async fn recording() -> &'static Recording {
    RECORDING.get_or_init(record).await
}

async fn record() -> Recording {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let faults = Faults {
        lose_after: Some(150),
        silence_after: Some(400),
        silence_for: Duration::from_secs(7),
        connections: Some(1),
        ..Faults::default()
    };
    let sim = simulator(dir.path(), 60.0, faults).await;
    let extra = ["--book-state-every", "40"];
    let first = Collector::start(&sim, Some(&db.url), dir.path(), &extra);
    // One resync after the lost update, three after the reconnection.
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_feed_events WHERE event = 'resynced'",
        4,
        Duration::from_secs(60),
        || first.log(),
    )
    .await;
    let n = crate::collect::count(&db.url, VERIFIED).await;
    wait_count(&db.url, VERIFIED, n + 200, Duration::from_secs(30), || {
        first.log()
    })
    .await;
    let (status, _, log) = first.stop();
    assert!(status.success(), "{log}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = Collector::start(&sim, Some(&db.url), dir.path(), &extra);
    let n = crate::collect::count(&db.url, VERIFIED).await;
    wait_count(&db.url, VERIFIED, n + 300, Duration::from_secs(30), || {
        second.log()
    })
    .await;
    finish(sim, second).await;
    let client = connect(&db.url).await;
    // The first instant every pair has a book.
    let first: Timestamp = client
        .query_one(
            "SELECT max(t) FROM (SELECT min(\"timestamp\") AS t FROM kraken_orderbook_messages
              WHERE channel = 'book' AND message_type = 'snapshot' GROUP BY symbol) s",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let lost: Timestamp = client
        .query_one(
            "SELECT min(time) FROM kraken_feed_events WHERE event = 'disconnected'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let back: Timestamp = client
        .query_one(
            "SELECT min(received_at) FROM kraken_orderbook_messages
              WHERE message_type = 'snapshot' AND channel = 'book' AND received_at > $1",
            &[&lost],
        )
        .await
        .unwrap()
        .get(0);
    let restarted: Timestamp = client
        .query_one(
            "SELECT max(time) FROM kraken_feed_events WHERE event = 'connected'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(lost < back && back < restarted, "{lost} {back} {restarted}");
    Recording {
        db,
        first,
        lost,
        back,
        restarted,
        _dir: dir,
    }
}

/// A replay server in-process, every recorded pair from `from` at `speed`.
async fn serve(rec: &Recording, from: Timestamp, speed: f64) -> Exchange {
    serve_db(&rec.db.url, from, speed, None).await
}

/// A replay server in-process of the database at `url`: every recorded pair from `from` at
/// `speed`, on `collector`'s record (every collector's, merged, when `None`).
pub(crate) async fn serve_db(
    url: &str,
    from: Timestamp,
    speed: f64,
    collector: Option<&str>,
) -> Exchange {
    let cancel = CancellationToken::new();
    let market = ReplayMarket::load(
        ReplaySource {
            database_url: url.to_owned(),
            symbols: Vec::new(),
            from,
            to: None,
            speed,
            collector: collector.map(str::to_owned),
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    Exchange::bind(
        ServerConfig::default(),
        Arc::new(market),
        cancel,
        TaskTracker::new(),
    )
    .await
    .unwrap()
}

pub(crate) fn url(exchange: &Exchange) -> String {
    format!("ws://{}/v2", exchange.local_addr())
}

/// What one connection received, and how it ended.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) frames: Vec<String>,
    pub(crate) end: Next,
}

/// Reads one connection subscribed to every pair at `depth` until it ends.
pub(crate) async fn read_connection(url: &str, depth: u64) -> Conn {
    let mut client = Client::connect(url).await;
    client.subscribe_book(&SYMBOLS, depth, 1).await;
    let end = loop {
        match client.next(Duration::from_secs(20)).await {
            Next::Text(..) => {}
            other => break other,
        }
    };
    Conn {
        frames: client.received,
        end,
    }
}

/// The whole record at speed 0 from its first message, at `depth`: connecting again after every
/// drop, as a client of Kraken would, until the server closes.
async fn replay_all(rec: &Recording, depth: u64) -> Vec<Conn> {
    let exchange = serve(rec, rec.first, 0.0).await;
    let mut conns = Vec::new();
    loop {
        let conn = read_connection(&url(&exchange), depth).await;
        let closed = matches!(conn.end, Next::Closed(_));
        conns.push(conn);
        if closed || conns.len() > 8 {
            break;
        }
    }
    let stats = exchange.shutdown().await.unwrap();
    assert_eq!(stats.market_drops as usize, conns.len() - 1, "{stats:?}");
    conns
}

/// (symbol, kind, Kraken timestamp, levels (bid, price, qty)) of each book frame.
pub(crate) type BookFrame = (String, BookKind, Timestamp, Vec<(bool, Decimal, Decimal)>);

pub(crate) fn book_frames(frames: &[String]) -> Vec<BookFrame> {
    let mut out = Vec::new();
    for text in frames {
        if let Ok(Frame::Book(msg)) = decode(text) {
            for d in &msg.data {
                let levels = d
                    .bids
                    .iter()
                    .map(|l| (true, l.price.value, l.qty.value))
                    .chain(d.asks.iter().map(|l| (false, l.price.value, l.qty.value)))
                    .collect();
                out.push((d.symbol.to_string(), msg.kind, d.timestamp.unwrap(), levels));
            }
        }
    }
    out
}

#[tokio::test]
async fn replay_frames_verify_for_a_client_truncating_after_each_level_at_depths_10_and_25() {
    let rec = recording().await;
    for depth in [10, 25] {
        let conns = replay_all(rec, depth).await;
        let mut verified = 0;
        for (i, conn) in conns.iter().enumerate() {
            let mut level = LevelClient::new(depth as usize);
            let mut checker = Checker::new(depth as usize);
            for text in &conn.frames {
                level.observe(text);
                checker.observe(text);
            }
            let t = checker.total();
            assert!(
                level.mismatches.is_empty(),
                "depth {depth} connection {i}: {:?}",
                level.mismatches
            );
            assert_eq!(
                (level.ok, level.unsynced),
                (level.total(), 0),
                "depth {depth} connection {i}: every message verified"
            );
            assert_eq!(
                (t.mismatches, t.unsynced, t.ok),
                (0, 0, level.ok),
                "depth {depth} connection {i}: a client truncating after the message too: {t:?}"
            );
            verified += level.ok;
        }
        assert!(
            verified > 400,
            "depth {depth}: {verified} messages verified"
        );
    }
}

#[tokio::test]
async fn a_gap_drops_the_connection_without_a_close_frame_and_never_sends_an_unasked_snapshot() {
    let rec = recording().await;
    let conns = replay_all(rec, 25).await;
    // The lost update (one symbol), the lost connection, the restart: three drops, then the end.
    let ends: Vec<String> = conns
        .iter()
        .map(|c| match &c.end {
            Next::Dropped(_) => "dropped".to_owned(),
            Next::Closed(Some((code, reason))) => format!("closed {code} {reason}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ends,
        [
            "dropped",
            "dropped",
            "dropped",
            "closed 1000 end of recording"
        ]
    );
    for (i, conn) in conns.iter().enumerate() {
        let mut snapshots: BTreeMap<String, u32> = BTreeMap::new();
        let mut updated: HashSet<String> = HashSet::new();
        for (symbol, kind, _, _) in book_frames(&conn.frames) {
            match kind {
                BookKind::Snapshot => {
                    assert!(
                        !updated.contains(&symbol),
                        "connection {i}: a snapshot of {symbol} after its updates"
                    );
                    *snapshots.entry(symbol).or_default() += 1;
                }
                BookKind::Update => {
                    assert!(
                        snapshots.contains_key(&symbol),
                        "connection {i}: an update of {symbol} before its snapshot"
                    );
                    updated.insert(symbol);
                }
            }
        }
        assert!(
            snapshots.values().all(|&n| n == 1),
            "connection {i}: one snapshot per subscription: {snapshots:?}"
        );
        assert_eq!(snapshots.len(), 3, "connection {i}: {snapshots:?}");
    }
    // The first connection dropped at the lost update, though only one symbol had a gap: the
    // others' frames stop there too.
    let last = |c: &Conn| book_frames(&c.frames).last().unwrap().2;
    assert!(
        last(&conns[0]) < rec.lost,
        "{} {}",
        last(&conns[0]),
        rec.lost
    );
    // The second at the lost connection, the third at the restart.
    assert!(last(&conns[1]) <= rec.lost);
    assert!(last(&conns[2]) < rec.restarted);
}

#[tokio::test]
async fn speed_0_keeps_time_order_across_the_symbols_of_a_connection() {
    let rec = recording().await;
    let conns = replay_all(rec, 10).await;
    let mut updates = 0;
    for (i, conn) in conns.iter().enumerate() {
        let frames = book_frames(&conn.frames);
        let mut symbols = HashSet::new();
        let mut last: Option<Timestamp> = None;
        for (symbol, kind, ts, _) in frames {
            if kind == BookKind::Snapshot {
                // A snapshot carries the time of the book's last change, as on Kraken.
                continue;
            }
            if let Some(l) = last {
                assert!(
                    ts >= l,
                    "connection {i}: {symbol} at {ts} after a frame at {l}"
                );
            }
            last = Some(ts);
            symbols.insert(symbol);
            updates += 1;
        }
        assert_eq!(symbols.len(), 3, "connection {i}: every symbol flows");
    }
    assert!(updates > 400, "{updates}");
}

/// Regression (interop, ccxt): a client subscribing symbol by symbol, each join reading the
/// database while the replay clock moved on, got one symbol's snapshot of a later book before
/// another symbol's updates of earlier instants (up to 2.2 s back in time).
#[tokio::test]
async fn subscriptions_sent_one_by_one_never_get_a_frame_older_than_a_snapshot_before_it() {
    let rec = recording().await;
    for speed in [0.0, 10.0] {
        let exchange = serve(rec, rec.first, speed).await;
        // At speed 0 a second connection moves the shared clock while the first one joins.
        let runner = {
            let url = url(&exchange);
            tokio::spawn(async move {
                let mut client = Client::connect(&url).await;
                client.subscribe_book(&SYMBOLS, 10, 1).await;
                while let Next::Text(..) = client.next(Duration::from_secs(2)).await {}
            })
        };
        let mut client = Client::connect(&url(&exchange)).await;
        for (i, symbol) in SYMBOLS.iter().enumerate() {
            client.subscribe_book(&[symbol], 10, i as u64 + 1).await;
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < until {
            if !matches!(client.next(Duration::from_secs(2)).await, Next::Text(..)) {
                break;
            }
        }
        let frames = book_frames(&client.received);
        let snapshots = frames.iter().filter(|f| f.1 == BookKind::Snapshot).count();
        assert_eq!(
            snapshots,
            SYMBOLS.len(),
            "speed {speed}: a snapshot per symbol"
        );
        let mut latest: Option<(Timestamp, &str)> = None;
        let mut updates = 0;
        for (symbol, kind, ts, _) in &frames {
            if *kind == BookKind::Update {
                if let Some((l, of)) = latest {
                    assert!(
                        *ts >= l,
                        "speed {speed}: {symbol} update at {ts} after {of}'s frame at {l}"
                    );
                }
                updates += 1;
            }
            if latest.is_none_or(|(l, _)| *ts > l) {
                latest = Some((*ts, symbol));
            }
        }
        assert!(updates > 30, "speed {speed}: {updates} updates");
        runner.abort();
        exchange.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn no_quantity_0_is_sent_for_a_level_merely_pushed_out_of_the_window() {
    let rec = recording().await;
    // Every deletion recorded: (symbol, bid, price, Kraken timestamp).
    let client = connect(&rec.db.url).await;
    let recorded: HashSet<(String, bool, Decimal, Timestamp)> = client
        .query(
            "SELECT symbol, side = 'bid', price, \"timestamp\" FROM kraken_orderbook_entries WHERE quantity = 0",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert!(recorded.len() > 100, "{}", recorded.len());
    let mut deletions = 0;
    // At depth 10 of a record at depth 25 most levels leaving the window are still in the book.
    for conn in replay_all(rec, 10).await {
        for (symbol, _, ts, levels) in book_frames(&conn.frames) {
            for (bid, price, qty) in levels {
                if qty.is_zero() {
                    deletions += 1;
                    assert!(
                        recorded.contains(&(symbol.clone(), bid, price, ts)),
                        "{symbol} {price} at {ts}: a deletion the record does not have"
                    );
                }
            }
        }
    }
    assert!(deletions > 50, "{deletions}");
}

#[tokio::test]
async fn a_depth_beyond_the_recording_is_refused_with_the_simulators_error() {
    let rec = recording().await;
    let exchange = serve(rec, rec.first, 0.0).await;
    let mut replay = Client::connect(&url(&exchange)).await;
    replay.text().await;
    replay
        .send_text(r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":100},"req_id":6}"#)
        .await;
    let refused = replay.text().await;
    let sim = Simulator::bind(SimConfig::default()).await.unwrap();
    let mut simulated = Client::connect(&sim.url()).await;
    simulated.text().await;
    simulated
        .send_text(r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":50},"req_id":6}"#)
        .await;
    let unsupported = simulated.text().await;
    let without_times = |text: &str| {
        let mut v: Value = serde_json::from_str(text).unwrap();
        let obj = v.as_object_mut().unwrap();
        assert!(obj.remove("time_in").is_some() && obj.remove("time_out").is_some());
        v
    };
    assert_eq!(without_times(&refused), without_times(&unsupported));
    assert_eq!(
        without_times(&refused)["error"],
        "Subscription depth not supported"
    );
    // The recorded depth itself is served.
    replay.subscribe_book(&["BTC/USD"], 25, 7).await;
    let ack: Value = serde_json::from_str(&replay.text().await).unwrap();
    assert_eq!(ack["success"], true, "{ack}");
    assert_eq!(ack["result"]["depth"], 25, "{ack}");
    sim.shutdown().await.unwrap();
    exchange.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_subscription_during_a_gap_is_acked_at_once_and_gets_its_snapshot_when_the_gap_ends() {
    let rec = recording().await;
    // Inside the gap after the lost connection, at recorded speed.
    let from = rec.lost.add_nanos(50_000_000);
    assert!(from < rec.back);
    let exchange = serve(rec, from, 1.0).await;
    let mut client = Client::connect(&url(&exchange)).await;
    client.text().await;
    client.subscribe_book(&["BTC/USD"], 10, 3).await;
    let ack: Value = serde_json::from_str(&client.text().await).unwrap();
    assert_eq!(
        (&ack["success"], &ack["result"]["symbol"]),
        (&Value::Bool(true), &Value::from("BTC/USD")),
        "{ack}"
    );
    let mut level = LevelClient::new(10);
    // The next book frame is the snapshot taken after the gap, not the book before it.
    let mut snapshot = None;
    while snapshot.is_none() {
        let text = client.text().await;
        level.observe(&text);
        if let Some((symbol, kind, ts, _)) = book_frames(std::slice::from_ref(&text)).pop() {
            assert_eq!(
                (symbol.as_str(), kind),
                ("BTC/USD", BookKind::Snapshot),
                "{text}"
            );
            snapshot = Some(ts);
        }
    }
    let ts = snapshot.unwrap();
    assert!(ts > rec.lost, "the snapshot at {ts} is from after the gap");
    // Then updates, every one verifying.
    while level.total() < 20 {
        level.observe(&client.text().await);
    }
    assert!(level.mismatches.is_empty(), "{:?}", level.mismatches);
    assert_eq!(level.ok, level.total());
    exchange.shutdown().await.unwrap();
}

/// The collector's stop is a gap from its connection's last frame (the coverage model's), not
/// from the restarted collector's first connection: a subscription in between gets no stale book,
/// only its snapshot once the record goes on.
#[tokio::test]
async fn a_subscription_while_the_collector_was_stopped_gets_its_snapshot_after_the_restart() {
    let rec = recording().await;
    let client = connect(&rec.db.url).await;
    let last_frame: Timestamp = client
        .query_one(
            "SELECT max(last_received_at) FROM krakenbook_connections WHERE last_received_at < $1",
            &[&rec.restarted],
        )
        .await
        .unwrap()
        .get(0);
    assert!(last_frame.add_nanos(1_500_000_000) < rec.restarted);
    let from = Timestamp::from_unix_nanos(
        (last_frame.unix_nanos() + rec.restarted.unix_nanos()) / 2 / 1000 * 1000,
    );
    let exchange = serve(rec, from, 1.0).await;
    let mut client = Client::connect(&url(&exchange)).await;
    client.text().await;
    client.subscribe_book(&["BTC/USD"], 10, 3).await;
    let ack: Value = serde_json::from_str(&client.text().await).unwrap();
    assert_eq!(ack["success"], Value::Bool(true), "{ack}");
    let mut level = LevelClient::new(10);
    let mut snapshot = None;
    while snapshot.is_none() {
        let text = client.text().await;
        level.observe(&text);
        if let Some((symbol, kind, ts, _)) = book_frames(std::slice::from_ref(&text)).pop() {
            assert_eq!(
                (symbol.as_str(), kind),
                ("BTC/USD", BookKind::Snapshot),
                "{text}"
            );
            snapshot = Some(ts);
        }
    }
    let ts = snapshot.unwrap();
    assert!(
        ts > last_frame,
        "the snapshot at {ts} is the book after the restart, not the one the stopped collector last held ({last_frame})"
    );
    while level.total() < 10 {
        level.observe(&client.text().await);
    }
    assert!(level.mismatches.is_empty(), "{:?}", level.mismatches);
    exchange.shutdown().await.unwrap();
}

#[tokio::test]
async fn replay_serve_closes_with_1000_end_of_recording_at_the_end_of_the_record() {
    let rec = recording().await;
    // After the restart: nothing but the end is left to meet.
    let from = rec.restarted.add_nanos(1_000_000_000);
    let addr = crate::collect::free_addr();
    let mut server = crate::support::krakenbook()
        .args([
            "replay",
            "--serve",
            &addr.to_string(),
            "--from",
            &from.to_string(),
            "--speed",
            "0",
            "--database-url",
            &rec.db.url,
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "no server");
        std::thread::sleep(Duration::from_millis(50));
    }
    let conn = read_connection(&format!("ws://{addr}/v2"), 25).await;
    let mut level = LevelClient::new(25);
    for text in &conn.frames {
        level.observe(text);
    }
    // A client connecting after the end gets its acks, then the same close.
    let after = read_connection(&format!("ws://{addr}/v2"), 25).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    for conn in [&conn, &after] {
        match &conn.end {
            Next::Closed(Some((code, reason))) => {
                assert_eq!((*code, reason.as_str()), (1000, "end of recording"));
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    assert!(level.total() > 100, "{}", level.total());
    assert!(level.mismatches.is_empty(), "{:?}", level.mismatches);
    assert_eq!(level.ok, level.total());
    let acks = after
        .frames
        .iter()
        .filter(|t| t.contains(r#""success":true"#))
        .count();
    assert_eq!(
        (acks, book_frames(&after.frames).len()),
        (3, 0),
        "{:?}",
        after.frames
    );
}
