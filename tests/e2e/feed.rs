//! The feed against a scripted exchange over loopback: exact control of what the server sends,
//! so each behaviour of a connection is checked in isolation (the simulator tests cover the
//! same at scale).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use krakenbook::book::{Decimal, OrderBook, Precision};
use krakenbook::collect::{self, CollectConfig, Symbols};
use krakenbook::feed::FeedConfig;
use krakenbook::journal::{JournalConfig, JournalReader};
use krakenbook::kraken::{Depth, Request};
use krakenbook::metrics::Metrics;
use krakenbook::record::{EventKind, Record, RecordBody};

struct Peer<S = TcpStream>(WebSocketStream<S>);

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Peer<S> {
    async fn send(&mut self, text: &str) {
        self.0.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// The next request the client sends.
    async fn request(&mut self) -> Request {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("a request within 10 s")
                .expect("connection open")
                .unwrap();
            if let Message::Text(t) = msg {
                return Request::parse(t.as_str()).unwrap();
            }
        }
    }
}

async fn exchange() -> (SocketAddr, tokio::sync::mpsc::Receiver<Peer>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await
                && tx.send(Peer(ws)).await.is_err()
            {
                return;
            }
        }
    });
    (addr, rx)
}

fn config(addr: SocketAddr, journal: &std::path::Path, symbols: &[&str]) -> CollectConfig {
    let url = url::Url::parse(&format!("ws://{addr}/v2")).unwrap();
    let mut feed = FeedConfig::new(url, Depth::default());
    // Longer than the connection's 1 s housekeeping tick, which must not postpone the deadline
    // (a regression: it once restarted the silence timer every second).
    feed.silence_timeout = Duration::from_millis(1500);
    feed.backoff_base = Duration::from_millis(50);
    feed.backoff_max = Duration::from_millis(200);
    feed.instrument_timeout = Duration::from_secs(2);
    feed.book_state_every = 1;
    let mut journal = JournalConfig::new(journal);
    journal.compression_level = 0;
    CollectConfig {
        feed,
        symbols: Symbols::List(symbols.iter().map(|s| s.to_string()).collect()),
        journal,
        journal_queue: 1024,
        metrics_listen: None,
        shutdown_grace: Duration::from_secs(1),
        database: None,
        collector_id: None,
    }
}

fn records(dir: &std::path::Path) -> Vec<Record> {
    let mut reader = JournalReader::open(dir, 0).unwrap();
    let mut out = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        out.push(r);
    }
    out
}

fn events(records: &[Record]) -> Vec<(EventKind, Option<String>)> {
    records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::Event(e) => Some((e.kind, e.symbol.clone())),
            _ => None,
        })
        .collect()
}

/// An empty X/Y book: depth 10, prices to 1 decimal, quantities to 2.
fn xy_book() -> OrderBook {
    OrderBook::with_precision(10, Some(Precision { price: 1, qty: 2 }))
}

/// A book frame with the checksum our engine computes for the book after applying it (or a
/// wrong one), and the book it leaves.
fn book_frame(
    book: &mut OrderBook,
    kind: &str,
    bids: &[(&str, &str)],
    asks: &[(&str, &str)],
    correct: bool,
) -> String {
    let d = |s: &str| Decimal::parse(s).unwrap();
    let b: Vec<_> = bids.iter().map(|(p, q)| (d(p), d(q))).collect();
    let a: Vec<_> = asks.iter().map(|(p, q)| (d(p), d(q))).collect();
    if kind == "snapshot" {
        book.apply_snapshot(b, a).unwrap();
    } else {
        book.apply_update(b, a).unwrap();
    }
    let checksum = if correct {
        book.checksum()
    } else {
        book.checksum() ^ 1
    };
    let levels = |l: &[(&str, &str)]| {
        l.iter()
            .map(|(p, q)| format!(r#"{{"price":{p},"qty":{q}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{{"channel":"book","type":"{kind}","data":[{{"symbol":"X/Y","bids":[{}],"asks":[{}],"checksum":{checksum},"timestamp":"2026-08-17T16:01:57.687440Z"}}]}}"#,
        levels(bids),
        levels(asks)
    )
}

const INSTRUMENT: &str = r#"{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[{"symbol":"X/Y","price_precision":1,"qty_precision":2,"status":"online"}]}}"#;

async fn handshake<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    peer: &mut Peer<S>,
    symbols: &[&str],
) {
    peer.send(r#"{"channel":"status","type":"update","data":[{"system":"online","api_version":"v2","connection_id":17001309753738053924,"version":"2.0.10"}]}"#).await;
    let r = peer.request().await;
    assert_eq!(
        r.params.as_ref().unwrap().channel,
        "instrument",
        "instrument channel first"
    );
    peer.send(INSTRUMENT).await;
    let r = peer.request().await;
    let params = r.params.unwrap();
    assert_eq!(
        (r.method.as_str(), params.channel.as_str()),
        ("subscribe", "book")
    );
    let asked: Vec<String> = params.symbol.unwrap();
    assert_eq!(
        asked,
        symbols.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
}

fn ack(symbol: &str) -> String {
    format!(
        r#"{{"method":"subscribe","result":{{"channel":"book","depth":10,"snapshot":true,"symbol":"{symbol}"}},"success":true,"time_in":"2026-08-17T16:01:57.000001Z","time_out":"2026-08-17T16:01:57.000002Z"}}"#
    )
}

#[tokio::test]
async fn a_mismatch_resubscribes_once_and_the_gap_is_recorded() {
    let (addr, mut peers) = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let collector = tokio::spawn(collect::run(
        config(addr, dir.path(), &["X/Y"]),
        cancel.clone(),
        Arc::new(Metrics::default()),
    ));

    let mut peer = peers.recv().await.unwrap();
    handshake(&mut peer, &["X/Y"]).await;
    let mut book = xy_book();
    peer.send(&ack("X/Y")).await;
    peer.send(&book_frame(
        &mut book,
        "snapshot",
        &[("100.0", "1.00"), ("99.5", "2.00")],
        &[("100.5", "3.00")],
        true,
    ))
    .await;
    peer.send(&book_frame(
        &mut book,
        "update",
        &[("100.0", "1.50")],
        &[],
        true,
    ))
    .await;
    peer.send(&book_frame(
        &mut book,
        "update",
        &[("99.5", "0.00")],
        &[],
        false,
    ))
    .await; // mismatch
    peer.send(&book_frame(
        &mut book,
        "update",
        &[("99.0", "4.00")],
        &[],
        true,
    ))
    .await; // unverifiable now
    // The client resubscribes: unsubscribe, then subscribe with a snapshot.
    let unsub = peer.request().await;
    let sub = peer.request().await;
    assert_eq!(unsub.method, "unsubscribe");
    assert_eq!(sub.method, "subscribe");
    assert_eq!(sub.params.as_ref().unwrap().snapshot, Some(true));
    assert_eq!(sub.params.unwrap().symbol.unwrap(), vec!["X/Y".to_owned()]);
    peer.send(r#"{"method":"unsubscribe","result":{"channel":"book","depth":10,"symbol":"X/Y"},"success":true}"#).await;
    peer.send(&ack("X/Y")).await;
    let mut fresh = xy_book();
    peer.send(&book_frame(
        &mut fresh,
        "snapshot",
        &[("100.0", "1.50")],
        &[("100.5", "3.00")],
        true,
    ))
    .await;
    peer.send(&book_frame(
        &mut fresh,
        "update",
        &[],
        &[("101.0", "1.00")],
        true,
    ))
    .await;
    peer.send(r#"{"channel":"heartbeat"}"#).await;
    // No second resubscription for the same episode: the next thing the client could send would
    // be a request; give it a moment and check the journal instead.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    collector.await.unwrap().unwrap();

    let records = records(dir.path());
    let verdicts: Vec<Option<bool>> = records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::Frame(f) if f.bytes.starts_with(br#"{"channel":"book""#) => {
                Some(f.checksum_ok)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        verdicts,
        vec![
            Some(true),
            Some(true),
            Some(false),
            None,
            Some(true),
            Some(true)
        ]
    );
    let kinds: Vec<EventKind> = events(&records).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Connected,
            EventKind::Subscribed,
            EventKind::ChecksumMismatch,
            EventKind::Subscribed,
            EventKind::Resynced
        ]
    );
    let mismatch_at = records
        .iter()
        .find(|r| matches!(&r.body, RecordBody::Event(e) if e.kind == EventKind::ChecksumMismatch))
        .unwrap()
        .received_at;
    let resynced = records
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::Event(e) if e.kind == EventKind::Resynced => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        resynced.gap_start,
        Some(mismatch_at),
        "the gap runs from the mismatch to the resync"
    );
    // Every frame the server sent is journaled, in order, with increasing seq and conn_seq.
    let frames: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(r.body, RecordBody::Frame(_)))
        .collect();
    assert_eq!(
        frames.len(),
        12,
        "status, instrument, 2 acks, unsubscribe ack, 2 snapshots, 4 updates, heartbeat"
    );
    assert!(
        frames
            .windows(2)
            .all(|w| w[1].conn_seq == w[0].conn_seq + 1 && w[1].seq > w[0].seq)
    );
    // A book state follows every verified update (the tests ask for one every update) and holds
    // the book as verified at that point.
    let states: Vec<(usize, &krakenbook::record::BookState)> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.body {
            RecordBody::BookState(b) => Some((i, b)),
            _ => None,
        })
        .collect();
    assert_eq!(
        states.len(),
        2,
        "one after each verified update: not after snapshots or mismatches"
    );
    for (at, state) in states {
        let RecordBody::Frame(before) = &records[at - 1].body else {
            panic!("a state follows its frame")
        };
        let text = std::str::from_utf8(&before.bytes).unwrap();
        assert!(
            text.contains(&format!(r#""checksum":{}"#, state.checksum)),
            "{text}"
        );
        let mut rebuilt = OrderBook::with_precision(10, Some(state.precision));
        rebuilt
            .apply_snapshot(
                state.bids.iter().map(|l| (l.price, l.qty)),
                state.asks.iter().map(|l| (l.price, l.qty)),
            )
            .unwrap();
        assert_eq!(rebuilt.checksum(), state.checksum);
    }
    // Best bid and ask travel with verified frames.
    let last = frames
        .iter()
        .rev()
        .find_map(|r| match &r.body {
            RecordBody::Frame(f) if f.bytes.starts_with(br#"{"channel":"book""#) => Some(f),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        last.best_ask.unwrap().price,
        Decimal::parse("100.5").unwrap()
    );
    assert_eq!(last.best_bid.unwrap().qty.to_string(), "1.50");
}

#[tokio::test]
async fn a_silent_connection_is_dropped_and_reopened_and_books_are_rebuilt() {
    let (addr, mut peers) = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let collector = tokio::spawn(collect::run(
        config(addr, dir.path(), &["X/Y"]),
        cancel.clone(),
        Arc::new(Metrics::default()),
    ));

    let mut first = peers.recv().await.unwrap();
    handshake(&mut first, &["X/Y"]).await;
    let mut book = xy_book();
    peer_snapshot(&mut first, &mut book).await;
    // Now silence, heartbeats included: the client must give up on this connection.
    let started = std::time::Instant::now();
    let mut second = tokio::time::timeout(Duration::from_secs(10), peers.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before the silence timeout"
    );
    handshake(&mut second, &["X/Y"]).await;
    let mut book = xy_book();
    peer_snapshot(&mut second, &mut book).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    collector.await.unwrap().unwrap();
    drop(first);

    let records = records(dir.path());
    let kinds: Vec<EventKind> = events(&records).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Connected,
            EventKind::Subscribed,
            EventKind::Disconnected,
            EventKind::Connected,
            EventKind::Subscribed,
            EventKind::Resynced
        ]
    );
    let disconnected = records
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::Event(e) if e.kind == EventKind::Disconnected => {
                Some((r.received_at, e.detail.clone()))
            }
            _ => None,
        })
        .unwrap();
    assert!(disconnected.1.contains("no frame"), "{}", disconnected.1);
    let resynced = records
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::Event(e) if e.kind == EventKind::Resynced => Some(e.gap_start),
            _ => None,
        })
        .unwrap();
    assert!(
        resynced.is_some() && resynced.unwrap() <= disconnected.0,
        "the gap starts by the disconnect"
    );
    // Connection ids increase; frame numbers restart per connection.
    let conns: Vec<u64> = records
        .iter()
        .filter(|r| r.conn_seq == 1)
        .map(|r| r.conn_id)
        .collect();
    assert_eq!(conns.len(), 2);
    assert!(conns[1] > conns[0]);
}

async fn peer_snapshot(peer: &mut Peer, book: &mut OrderBook) {
    peer.send(&ack("X/Y")).await;
    peer.send(&book_frame(
        book,
        "snapshot",
        &[("100.0", "1.00")],
        &[("100.5", "3.00")],
        true,
    ))
    .await;
}

#[tokio::test]
async fn bad_frames_and_rejected_symbols_are_journaled_and_the_feed_goes_on() {
    let (addr, mut peers) = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let collector = tokio::spawn(collect::run(
        config(addr, dir.path(), &["X/Y", "NOPE/USD"]),
        cancel.clone(),
        Arc::clone(&metrics),
    ));

    let mut peer = peers.recv().await.unwrap();
    handshake(&mut peer, &["X/Y", "NOPE/USD"]).await;
    peer.send(&ack("X/Y")).await;
    peer.send(r#"{"error":"Currency pair not supported NOPE/USD","method":"subscribe","success":false,"symbol":"NOPE/USD","time_in":"2026-08-17T16:01:57.000001Z","time_out":"2026-08-17T16:01:57.000002Z"}"#).await;
    peer.send("this is not json").await;
    peer.send(r#"{"channel":"mystery","data":[1,2,3]}"#).await;
    let mut book = xy_book();
    peer.send(&book_frame(
        &mut book,
        "snapshot",
        &[("100.0", "1.00")],
        &[("100.5", "3.00")],
        true,
    ))
    .await;
    peer.send(&book_frame(
        &mut book,
        "update",
        &[("100.0", "2.00")],
        &[],
        true,
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Drop the connection: after the reconnect the rejected symbol is not asked for again.
    drop(peer);
    let mut again = tokio::time::timeout(Duration::from_secs(10), peers.recv())
        .await
        .unwrap()
        .unwrap();
    handshake(&mut again, &["X/Y"]).await;
    cancel.cancel();
    collector.await.unwrap().unwrap();

    let records = records(dir.path());
    let texts: Vec<Vec<u8>> = records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::Frame(f) => Some(f.bytes.clone()),
            _ => None,
        })
        .collect();
    assert!(
        texts.iter().any(|t| t == b"this is not json"),
        "the bad frame is kept as received"
    );
    assert!(
        texts
            .iter()
            .any(|t| t == br#"{"channel":"mystery","data":[1,2,3]}"#),
        "the unknown frame is kept"
    );
    let evs = events(&records);
    assert!(
        evs.contains(&(EventKind::SubscriptionError, Some("NOPE/USD".into()))),
        "{evs:?}"
    );
    assert!(
        evs.iter().any(|(k, _)| *k == EventKind::MalformedFrame),
        "{evs:?}"
    );
    assert_eq!(
        metrics
            .malformed_frames
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        metrics
            .subscription_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        metrics
            .symbol("X/Y")
            .checksum_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the feed went on"
    );
}

/// Waits (up to 20 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The log lines the code under test writes on this thread (the tests run on a current-thread
/// runtime, so the collector's tasks log here too).
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogBuffer {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Issue 9 item 7: a server that, once subscribed, sends only WebSocket pings (no Kraken frame,
/// no heartbeat) kept a dead feed "alive". Pings are not Kraken frames: the connection is closed
/// after the silence timeout, the gap is recorded and the books are rebuilt on a new connection.
#[tokio::test]
async fn protocol_pings_do_not_keep_a_dead_feed_alive() {
    let (addr, mut peers) = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let collector = tokio::spawn(collect::run(
        config(addr, dir.path(), &["X/Y"]),
        cancel.clone(),
        Arc::clone(&metrics),
    ));

    let mut first = peers.recv().await.unwrap();
    handshake(&mut first, &["X/Y"]).await;
    let mut book = xy_book();
    peer_snapshot(&mut first, &mut book).await;
    // From now on only protocol pings, every 100 ms, well inside the 1.5 s silence timeout.
    let pinger = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut pings = 0u32;
        while first
            .0
            .send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .is_ok()
        {
            pings += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(15) {
                break;
            }
        }
        (pings, started.elapsed())
    });
    let mut second = tokio::time::timeout(Duration::from_secs(10), peers.recv())
        .await
        .expect("a new connection after the silence timeout")
        .unwrap();
    handshake(&mut second, &["X/Y"]).await;
    let mut book = xy_book();
    peer_snapshot(&mut second, &mut book).await;
    until("resynced", || {
        metrics
            .symbol("X/Y")
            .resyncs
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    cancel.cancel();
    collector.await.unwrap().unwrap();
    let (pings, _) = pinger.await.unwrap();
    assert!(pings >= 5, "the server kept pinging ({pings})");

    let records = records(dir.path());
    let kinds: Vec<EventKind> = events(&records).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Connected,
            EventKind::Subscribed,
            EventKind::Disconnected,
            EventKind::Connected,
            EventKind::Subscribed,
            EventKind::Resynced
        ]
    );
    let (disconnected_at, detail) = records
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::Event(e) if e.kind == EventKind::Disconnected => {
                Some((r.received_at, e.detail.clone()))
            }
            _ => None,
        })
        .unwrap();
    assert!(detail.contains("no frame for 1.5s"), "{detail}");
    // The gap runs from the last Kraken frame of the first connection (the snapshot), not from
    // the last ping.
    let last_frame_first = records
        .iter()
        .filter(|r| matches!(r.body, RecordBody::Frame(_)) && r.received_at < disconnected_at)
        .map(|r| r.received_at)
        .max()
        .unwrap();
    let gap_start = records
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::Event(e) if e.kind == EventKind::Resynced => e.gap_start,
            _ => None,
        })
        .unwrap();
    assert_eq!(gap_start, last_frame_first);
    assert!(
        disconnected_at.nanos_since(last_frame_first) >= 1_500_000_000,
        "closed only after the silence timeout"
    );
}

fn unasked_book_frame(symbol: &str) -> String {
    format!(
        r#"{{"channel":"book","type":"snapshot","data":[{{"symbol":{},"bids":[{{"price":1.0,"qty":1.00}}],"asks":[{{"price":2.0,"qty":1.00}}],"checksum":12345,"timestamp":"2026-08-17T16:01:57.687440Z"}}]}}"#,
        serde_json::to_string(symbol).unwrap()
    )
}

/// Issue 9 item 8: a server sending frames for 20,000 symbols never asked for (one an SQL
/// injection, one a terminal escape) grew the collector's memory, `/metrics` and log. Now every
/// such frame is journaled and counted, at most 100 of them named in events (one per symbol),
/// none subscribed or given metrics; `/metrics` and the log stay small; the asked-for book goes
/// on.
#[tokio::test]
async fn twenty_thousand_unasked_symbols_do_not_grow_the_collector() {
    let log = LogBuffer::default();
    let _guard = log.install();
    let (addr, mut peers) = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let mut config = config(addr, dir.path(), &["X/Y"]);
    config.feed.silence_timeout = Duration::from_secs(10);
    let collector = tokio::spawn(collect::run(config, cancel.clone(), Arc::clone(&metrics)));

    let mut peer = peers.recv().await.unwrap();
    handshake(&mut peer, &["X/Y"]).await;
    let mut book = xy_book();
    peer_snapshot(&mut peer, &mut book).await;
    until("the snapshot verified", || {
        metrics
            .symbol("X/Y")
            .checksum_ok
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    let rendered_before = metrics.render().len();

    let mut names: Vec<String> = (0..20_000).map(|i| format!("LIE{i}/USD")).collect();
    names[7] = "'); DROP TABLE x;--".into();
    names[8] = "\u{1b}[2J".into();
    for (i, name) in names.iter().enumerate() {
        peer.send(&unasked_book_frame(name)).await;
        if i % 2 == 0 {
            // An ack for a subscription never asked for is a lie too.
            peer.send(&format!(
                r#"{{"method":"subscribe","result":{{"channel":"book","depth":10,"snapshot":true,"symbol":{}}},"success":true}}"#,
                serde_json::to_string(name).unwrap()
            ))
            .await;
        }
    }
    peer.send(&book_frame(
        &mut book,
        "update",
        &[("100.0", "2.00")],
        &[],
        true,
    ))
    .await;
    until("every lie counted", || {
        metrics
            .unasked_frames
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 30_000
    })
    .await;
    assert_eq!(
        metrics
            .unasked_frames
            .load(std::sync::atomic::Ordering::Relaxed),
        30_000
    );
    until("the asked-for book went on", || {
        metrics
            .symbol("X/Y")
            .checksum_ok
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2
    })
    .await;
    let rendered_after = metrics.render();
    assert!(
        rendered_after.len() < rendered_before + 200,
        "/metrics grew from {rendered_before} to {} bytes",
        rendered_after.len()
    );
    assert!(!rendered_after.contains("LIE1/USD"));
    assert!(!rendered_after.contains("DROP TABLE"));
    cancel.cancel();
    collector.await.unwrap().unwrap();
    drop(peer);

    let records = records(dir.path());
    let frames = records
        .iter()
        .filter(|r| matches!(r.body, RecordBody::Frame(_)))
        .count();
    assert_eq!(
        frames,
        4 + 30_000 + 1,
        "status, instrument, ack, snapshot, the lies and the update: all journaled"
    );
    let unasked: Vec<Option<String>> = events(&records)
        .into_iter()
        .filter(|(k, _)| *k == EventKind::UnaskedSymbol)
        .map(|(_, s)| s)
        .collect();
    assert_eq!(unasked.len(), 100, "a bounded number of events");
    let distinct: std::collections::HashSet<_> = unasked.iter().collect();
    assert_eq!(distinct.len(), 100, "one per symbol");
    assert!(unasked.contains(&Some("'); DROP TABLE x;--".into())));
    assert!(unasked.contains(&Some("\\u{1b}[2J".into())));
    // Nothing subscribed for the lies: the server got no request after the book subscription
    // (checked by the handshake); the log is short and holds no raw escape.
    let text = log.text();
    let lines = text.lines().count();
    assert!(lines < 40, "{lines} log lines:\n{text}");
    assert!(!text.contains('\u{1b}'), "a raw escape reached the log");
    assert!(text.contains("\\u{1b}[2J"), "{text}");
}

/// Issue 9 item 13: the frame-size cap. A frame above it is refused from its header (never held
/// whole), recorded as a `frame_too_large` event with its size and counted, and the connection
/// is reopened (a gap, like any drop).
#[tokio::test]
async fn a_frame_over_the_cap_is_recorded_and_the_connection_reopened() {
    let (addr, mut peers) = exchange().await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let mut config = config(addr, dir.path(), &["X/Y"]);
    config.feed.max_frame_bytes = 64 * 1024;
    let collector = tokio::spawn(collect::run(config, cancel.clone(), Arc::clone(&metrics)));

    let mut first = peers.recv().await.unwrap();
    handshake(&mut first, &["X/Y"]).await;
    let mut book = xy_book();
    peer_snapshot(&mut first, &mut book).await;
    let big = format!(
        r#"{{"channel":"heartbeat","pad":"{}"}}"#,
        "x".repeat(100_000)
    );
    first.send(&big).await;
    let mut second = tokio::time::timeout(Duration::from_secs(10), peers.recv())
        .await
        .expect("reconnected")
        .unwrap();
    handshake(&mut second, &["X/Y"]).await;
    let mut book = xy_book();
    peer_snapshot(&mut second, &mut book).await;
    until("resynced", || {
        metrics
            .symbol("X/Y")
            .resyncs
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    cancel.cancel();
    collector.await.unwrap().unwrap();

    assert_eq!(
        metrics
            .frames_too_large
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let records = records(dir.path());
    assert!(
        !records.iter().any(|r| match &r.body {
            RecordBody::Frame(f) => f.bytes.len() > 64 * 1024,
            _ => false,
        }),
        "the oversized frame is not kept"
    );
    let evs: Vec<(EventKind, String)> = records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::Event(e) => Some((e.kind, e.detail.clone())),
            _ => None,
        })
        .collect();
    let kinds: Vec<EventKind> = evs.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Connected,
            EventKind::Subscribed,
            EventKind::FrameTooLarge,
            EventKind::Disconnected,
            EventKind::Connected,
            EventKind::Subscribed,
            EventKind::Resynced
        ]
    );
    assert!(
        evs[2].1.contains(&format!("{} bytes", big.len())),
        "{}",
        evs[2].1
    );
    assert!(evs[2].1.contains("65536"), "{}", evs[2].1);
}

/// A raw TCP server that answers every connection with `answer` and counts the connections.
async fn raw_server(answer: &'static [u8]) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(answer).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// HTTP 429 at the WebSocket upgrade is a rate limit: the next attempt waits minutes (here the
/// backoff alone would retry within 200 ms), and the log says why.
#[tokio::test]
async fn http_429_at_the_upgrade_pauses_reconnects_for_minutes() {
    let log = LogBuffer::default();
    let _guard = log.install();
    let (addr, connects) =
        raw_server(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n").await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let collector = tokio::spawn(collect::run(
        config(addr, dir.path(), &["X/Y"]),
        cancel.clone(),
        Arc::clone(&metrics),
    ));
    until("one attempt", || {
        metrics
            .connect_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(connects.load(std::sync::atomic::Ordering::Relaxed), 1);
    cancel.cancel();
    collector.await.unwrap().unwrap();
    let text = log.text();
    assert!(text.contains("rate-limited"), "{text}");
    assert!(text.contains("429"), "{text}");
}

/// A TLS failure (here a server that does not speak TLS on a wss:// URL) is permanent until
/// fixed: `/health` reports it, it is logged once, and it is retried slowly, not at the backoff's
/// pace.
#[tokio::test]
async fn a_tls_failure_is_reported_on_health_and_retried_slowly() {
    let log = LogBuffer::default();
    let _guard = log.install();
    let (addr, connects) = raw_server(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let mut config = config(addr, dir.path(), &["X/Y"]);
    config.feed.url = url::Url::parse(&format!("wss://{addr}/v2")).unwrap();
    let collector = tokio::spawn(collect::run(config, cancel.clone(), Arc::clone(&metrics)));
    until("one attempt", || {
        metrics
            .connect_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    let health = metrics.health().unwrap_err();
    assert!(health.contains("TLS failure"), "{health}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(connects.load(std::sync::atomic::Ordering::Relaxed), 1);
    cancel.cancel();
    collector.await.unwrap().unwrap();
    let text = log.text();
    assert_eq!(text.matches("TLS failure").count(), 1, "{text}");
}

/// `collect --all` subscribes every online pair the instrument list names, up to
/// `max_symbols`: a longer list (true or not) is refused with an error naming the flag.
#[tokio::test]
async fn an_instrument_list_longer_than_max_symbols_is_refused() {
    let (addr, mut peers) = exchange().await;
    let pairs: Vec<String> = (0..30)
        .map(|i| {
            format!(
                r#"{{"symbol":"P{i}/USD","price_precision":1,"qty_precision":2,"status":"online"}}"#
            )
        })
        .collect();
    let instrument = format!(
        r#"{{"channel":"instrument","type":"snapshot","data":{{"assets":[],"pairs":[{}]}}}}"#,
        pairs.join(",")
    );
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let mut peer = peers.recv().await.unwrap();
            let r = peer.request().await;
            assert_eq!(r.params.unwrap().channel, "instrument");
            peer.send(&instrument).await;
        }
    });
    let url = url::Url::parse(&format!("ws://{addr}/v2")).unwrap();
    let mut config = FeedConfig::new(url, Depth::default());
    config.max_symbols = 30;
    let pairs = krakenbook::feed::all_pairs(&config, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(pairs.len(), 30);
    config.max_symbols = 29;
    let error = krakenbook::feed::all_pairs(&config, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            krakenbook::feed::FeedError::TooManySymbols { found: 30, max: 29 }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("--max-symbols"), "{error}");
    server.await.unwrap();
}

/// Frames sent 8 ms apart to a collector that reads its socket every 100 ms: stamped with their
/// arrival (the kernel's, where it records them for us: root here), each frame carries its own
/// time, within a few milliseconds of its sending, not the read tick's; stamped on reading, they
/// fall on two or three ticks.
#[tokio::test]
async fn frames_read_on_a_long_tick_carry_when_they_arrived() {
    let root = krakenbook::feed::arrival_stamps_work().is_ok();
    if !root {
        // Refused only to a process without CAP_BPF (39) and CAP_SYS_ADMIN (21), such as one
        // in a container that drops them.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
            .unwrap();
        assert_eq!(
            effective & (1 << 39 | 1 << 21),
            0,
            "CAP_BPF may load the filter"
        );
    }
    for arrival in [true, false] {
        let stamps = frames_sent_apart(arrival, false).await;
        // Stamps to the millisecond: frames read in one tick share theirs.
        let distinct = {
            let mut ticks: Vec<_> = stamps
                .iter()
                .map(|(_, at)| at.unix_nanos() / 1_000_000)
                .collect();
            ticks.dedup();
            ticks.len()
        };
        if arrival && root {
            assert_eq!(distinct, stamps.len(), "every frame its own stamp");
            for (i, (sent, at)) in stamps.iter().enumerate() {
                let late = at.unix_nanos() - sent.unix_nanos();
                assert!(
                    (0..20_000_000).contains(&late),
                    "frame {i} stamped {late} ns after it was sent"
                );
            }
        } else {
            assert!(
                distinct <= 4,
                "{distinct} stamps for frames read on a 100 ms tick"
            );
            let latest = stamps
                .iter()
                .map(|(sent, at)| at.unix_nanos() - sent.unix_nanos())
                .max()
                .unwrap();
            assert!(
                latest > 50_000_000,
                "stamped on reading: {latest} ns after sending at most"
            );
        }
    }
}

/// The same over TLS (`wss://`, Kraken's way): reads stop at the end of each TLS record, so a
/// frame carries the arrival of the record that completed it.
#[tokio::test]
async fn frames_over_tls_carry_when_they_arrived() {
    let stamps = frames_sent_apart(true, true).await;
    if krakenbook::feed::arrival_stamps_work().is_err() {
        return;
    }
    for (i, (sent, at)) in stamps.iter().enumerate() {
        let late = at.unix_nanos() - sent.unix_nanos();
        assert!(
            (0..20_000_000).contains(&late),
            "frame {i} stamped {late} ns after it was sent"
        );
    }
}

/// A certificate for 127.0.0.1, the server's TLS settings with it and a client's that trusts it.
fn tls_pair() -> (tokio_rustls::TlsAcceptor, Arc<rustls::ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = made.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        Arc::new(client),
    )
}

/// Twenty updates sent 8 ms apart to a collector reading every 100 ms (over TLS with `tls`);
/// their send times and the stamps the journal holds.
async fn frames_sent_apart(
    arrival: bool,
    tls: bool,
) -> Vec<(krakenbook::time::Timestamp, krakenbook::time::Timestamp)> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(addr, dir.path(), &["X/Y"]);
    config.feed.read_every = Duration::from_millis(100);
    config.feed.arrival_stamps = arrival;
    config.feed.silence_timeout = Duration::from_secs(5);
    let acceptor = if tls {
        let (acceptor, client) = tls_pair();
        config.feed.url = url::Url::parse(&format!("wss://{addr}/v2")).unwrap();
        config.feed.tls = Some(client);
        Some(acceptor)
    } else {
        None
    };
    let cancel = CancellationToken::new();
    let collector = tokio::spawn(collect::run(
        config,
        cancel.clone(),
        Arc::new(Metrics::default()),
    ));
    let (tcp, _) = listener.accept().await.unwrap();
    // Each frame in its own segment, at once (no wait for the previous one's ACK).
    tcp.set_nodelay(true).unwrap();
    let sent = match acceptor {
        Some(acceptor) => {
            let tls = acceptor.accept(tcp).await.unwrap();
            let mut peer = Peer(tokio_tungstenite::accept_async(tls).await.unwrap());
            send_apart(&mut peer).await
        }
        None => {
            let mut peer = Peer(tokio_tungstenite::accept_async(tcp).await.unwrap());
            send_apart(&mut peer).await
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    collector.await.unwrap().unwrap();
    let updates: Vec<_> = records(dir.path())
        .into_iter()
        .filter(|r| {
            matches!(&r.body, RecordBody::Frame(f)
                if f.bytes.starts_with(br#"{"channel":"book","type":"update""#))
        })
        .map(|r| r.received_at)
        .collect();
    assert_eq!(updates.len(), sent.len());
    sent.into_iter().zip(updates).collect()
}

/// The handshake, a snapshot, then twenty updates 8 ms apart: their send times.
async fn send_apart<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    peer: &mut Peer<S>,
) -> Vec<krakenbook::time::Timestamp> {
    handshake(peer, &["X/Y"]).await;
    let mut book = xy_book();
    peer.send(&ack("X/Y")).await;
    peer.send(&book_frame(
        &mut book,
        "snapshot",
        &[("100.0", "1.00")],
        &[("100.5", "3.00")],
        true,
    ))
    .await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let qty = format!("{}.00", i + 2);
        let frame = book_frame(&mut book, "update", &[("100.0", &qty)], &[], true);
        sent.push(krakenbook::time::Timestamp::now());
        peer.send(&frame).await;
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    sent
}
