//! `krakenbook simulate` over real WebSockets on loopback: Kraken's protocol, books that verify
//! at every depth, each fault as a client sees it, the frame log, reproducibility, the command.

use std::collections::BTreeMap;
use std::time::Duration;

use krakenbook::book::Verdict;
use krakenbook::exchange::faults::{GARBAGE_FRAME, UNKNOWN_CHANNEL_FRAME};
use krakenbook::exchange::sim::parse_pairs;
use krakenbook::exchange::{Faults, SimConfig, Simulator};
use krakenbook::kraken::{Frame, Request, decode};
use tokio::time::Instant;

use krakenbook_testkit::sim_client::{Checker, Client, LevelClient, Next};

const WAIT: Duration = Duration::from_secs(10);

fn config(pairs: &str, rate: f64, seed: u64) -> SimConfig {
    SimConfig {
        pairs: parse_pairs(pairs).unwrap(),
        rate,
        seed,
        ..SimConfig::default()
    }
}

fn with_faults(mut c: SimConfig, faults: Faults) -> SimConfig {
    c.server.faults = faults;
    c
}

/// Connects, subscribes to the instrument channel (for precisions) and to `symbols` at `depth`,
/// and reads until the acks and snapshots are in.
async fn subscribed(sim: &Simulator, symbols: &[&str], depth: u64) -> (Client, Checker) {
    let mut client = Client::connect(&sim.url()).await;
    let mut checker = Checker::new(10);
    checker.observe(&client.text().await);
    client.send(&Request::subscribe_instrument(Some(1))).await;
    client.subscribe_book(symbols, depth, 2).await;
    while checker.total().snapshots < symbols.len() as u64 {
        let text = client.text().await;
        checker.observe(&text);
    }
    (client, checker)
}

/// Reads frames into `checker` until `done` says so; panics after `WAIT` without a frame.
async fn read_until(client: &mut Client, checker: &mut Checker, done: impl Fn(&Checker) -> bool) {
    while !done(checker) {
        let text = client.text().await;
        checker.observe(&text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_checksum_verifies_at_depths_10_25_100_and_1000() {
    let sim = Simulator::bind(config(
        "BTC/USD:1:8:price=62802.5,ETH/USD:2:8,MINA/GBP:4:8:price=0.0279",
        1500.0,
        1,
    ))
    .await
    .unwrap();
    let symbols = ["BTC/USD", "ETH/USD", "MINA/GBP"];
    let mut tasks = Vec::new();
    for depth in [10, 25, 100, 1000] {
        let url_sim = &sim;
        let (mut client, mut checker) = subscribed(url_sim, &symbols, depth).await;
        tasks.push(tokio::spawn(async move {
            read_until(&mut client, &mut checker, |c| c.total().updates >= 2500).await;
            (depth, checker)
        }));
    }
    let mut verified = 0;
    for task in tasks {
        let (depth, checker) = task.await.unwrap();
        let t = checker.total();
        assert_eq!(t.mismatches, 0, "depth {depth}: {t:?}");
        assert_eq!(t.unsynced, 0, "depth {depth}: {t:?}");
        assert_eq!(
            t.ok,
            t.updates + t.snapshots,
            "depth {depth}: every message verified"
        );
        assert_eq!(t.snapshots, 3);
        assert!(
            t.deletions > 0 && t.refills > 0 && t.repeats > 0,
            "depth {depth}: deletions, refills from below the window and repeated prices all occur: {t:?}"
        );
        for symbol in symbols {
            let book = checker.tracker.book(symbol).unwrap();
            assert_eq!(book.depth(), depth as usize, "the ack's depth was applied");
            assert!(
                checker.stats[symbol].updates > 50,
                "{symbol} at {depth} flows"
            );
        }
        let p = checker.tracker.precision("MINA/GBP").unwrap();
        assert_eq!(
            (p.price, p.qty),
            (4, 8),
            "precisions from the instrument channel"
        );
        verified += t.ok;
    }
    assert!(verified > 10_000, "verified {verified} messages");
    let stats = sim.shutdown().await.unwrap();
    assert_eq!(stats.exchange.slow_client_disconnects, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_truncating_after_each_level_verifies_every_frame_at_depths_10_and_25() {
    let sim = Simulator::bind(config(
        "BTC/USD:1:8:price=62802.5,ETH/USD:2:8,MINA/GBP:4:8:price=0.0279",
        1500.0,
        5,
    ))
    .await
    .unwrap();
    let symbols = ["BTC/USD", "ETH/USD", "MINA/GBP"];
    for depth in [10u64, 25] {
        let (mut client, mut checker) = subscribed(&sim, &symbols, depth).await;
        let mut level = LevelClient::new(depth as usize);
        for text in &client.received {
            level.observe(text);
        }
        while checker.total().updates < 3000 {
            let text = client.text().await;
            checker.observe(&text);
            level.observe(&text);
        }
        let t = checker.total();
        assert!(
            level.mismatches.is_empty(),
            "depth {depth}: {} of {} messages failed, first at {:?}",
            level.mismatches.len(),
            level.total(),
            level.mismatches.first()
        );
        assert_eq!(
            level.ok,
            level.total(),
            "depth {depth}: every message verified"
        );
        assert_eq!(level.total(), t.updates + t.snapshots);
        assert!(
            t.deletions > 0 && t.refills > 0 && t.repeats > 0,
            "depth {depth}: {t:?}"
        );
        // The whole-message client verifies the same frames.
        assert_eq!((t.mismatches, t.ok), (0, level.ok), "depth {depth}: {t:?}");
        for symbol in symbols {
            let book = checker.tracker.book(symbol).unwrap().view(depth as usize);
            let text = |l: &krakenbook::book::PriceLevel| (l.price.to_string(), l.qty.to_string());
            assert_eq!(
                level.book(symbol).unwrap(),
                (
                    book.bids.iter().map(text).collect(),
                    book.asks.iter().map(text).collect()
                ),
                "depth {depth}: {symbol}: both clients hold the same book"
            );
        }
    }
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_lost_update_fails_the_next_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("frames.ndjson");
    let mut cfg = with_faults(
        config("BTC/USD:1:8", 400.0, 3),
        Faults {
            lose_after: Some(30),
            ..Faults::default()
        },
    );
    cfg.server.log = Some(log.clone());
    let sim = Simulator::bind(cfg).await.unwrap();
    let (mut client, mut checker) = subscribed(&sim, &["BTC/USD"], 10).await;
    let mut first_mismatch = None;
    while first_mismatch.is_none() {
        let text = client.text().await;
        if let Some(Verdict::Mismatch { .. }) = checker.observe(&text) {
            first_mismatch = Some(text);
        }
        assert!(checker.total().updates < 500, "no mismatch after the loss");
    }
    let t = checker.total();
    assert_eq!(t.mismatches, 1);
    assert!(t.ok >= 31, "the 30 updates before the loss verified: {t:?}");
    drop(client);
    let stats = sim.shutdown().await.unwrap();
    assert_eq!(stats.exchange.fault_lost_updates, 1);
    // In the log, the frame after the withheld one is the one whose checksum failed.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lost = lines
        .iter()
        .position(|l| l["fault"] == "lose_update")
        .expect("the loss is logged");
    let withheld = lines[lost]["frame"].as_str().unwrap();
    assert!(withheld.starts_with(r#"{"channel":"book","type":"update""#));
    let sent_before = lines[..lost]
        .iter()
        .filter(|l| {
            l["sent"]
                .as_str()
                .is_some_and(|s| s.contains(r#""type":"update""#))
        })
        .count();
    // The first update after 30 that changes the checksum (the top ten) is withheld.
    assert!(
        sent_before >= 30,
        "lost after at least 30 updates: {sent_before}"
    );
    let checksum = |frame: &str| match decode(frame) {
        Ok(Frame::Book(b)) => b.data[0].checksum,
        _ => panic!("{frame}"),
    };
    let last_sent = lines[..lost]
        .iter()
        .rev()
        .find_map(|l| {
            l["sent"]
                .as_str()
                .filter(|s| s.contains(r#""channel":"book""#))
        })
        .unwrap();
    assert_ne!(
        checksum(withheld),
        checksum(last_sent),
        "the withheld update changed the top ten"
    );
    let next_sent = lines[lost + 1..]
        .iter()
        .find_map(|l| l["sent"].as_str())
        .unwrap();
    assert_eq!(
        Some(next_sent),
        first_mismatch.as_deref(),
        "the very next update fails"
    );
}

#[tokio::test]
async fn the_drop_fault_closes_the_socket_without_a_close_frame() {
    let sim = Simulator::bind(with_faults(
        config("BTC/USD:1:8", 500.0, 4),
        Faults {
            drop_after: Some(50),
            ..Faults::default()
        },
    ))
    .await
    .unwrap();
    let (mut client, mut checker) = subscribed(&sim, &["BTC/USD"], 10).await;
    let end = loop {
        match client.next(WAIT).await {
            Next::Text(t, _) => {
                checker.observe(&t);
            }
            other => break other,
        }
    };
    let Next::Dropped(reason) = end else {
        panic!("expected an abrupt end, got {end:?}")
    };
    assert!(reason.contains("without closing handshake"), "{reason}");
    assert_eq!(checker.total().updates, 50);
    assert_eq!(checker.total().mismatches, 0);
    let stats = sim.shutdown().await.unwrap();
    assert_eq!(stats.exchange.fault_drops, 1);
}

#[tokio::test]
async fn random_drops_hit_only_the_first_connections_when_asked() {
    let sim = Simulator::bind(with_faults(
        config("BTC/USD:1:8", 1000.0, 5),
        Faults {
            drop_rate: "0.02".parse().unwrap(),
            connections: Some(1),
            ..Faults::default()
        },
    ))
    .await
    .unwrap();
    let (mut first, mut checker) = subscribed(&sim, &["BTC/USD"], 25).await;
    let end = loop {
        match first.next(WAIT).await {
            Next::Text(t, _) => {
                checker.observe(&t);
            }
            other => break other,
        }
    };
    assert!(matches!(end, Next::Dropped(_)), "{end:?}");
    assert!(checker.total().updates < 1000, "{:?}", checker.total());
    // The second connection is spared.
    let (mut second, mut checker) = subscribed(&sim, &["BTC/USD"], 25).await;
    read_until(&mut second, &mut checker, |c| c.total().updates >= 400).await;
    assert_eq!(checker.total().mismatches, 0);
    assert_eq!(sim.stats().exchange.fault_drops, 1);
    drop(second);
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn silence_means_no_frame_at_all_heartbeats_included() {
    let silence = Duration::from_millis(1500);
    let sim = Simulator::bind(with_faults(
        config("BTC/USD:1:8", 300.0, 6),
        Faults {
            silence_after: Some(20),
            silence_for: silence,
            ..Faults::default()
        },
    ))
    .await
    .unwrap();
    let (mut client, mut checker) = subscribed(&sim, &["BTC/USD"], 10).await;
    let mut last = Instant::now();
    let mut gaps = Vec::new();
    while checker.total().updates < 60 {
        match client.next(WAIT).await {
            Next::Text(t, at) => {
                gaps.push((at - last, checker.total().updates));
                last = at;
                checker.observe(&t);
            }
            other => panic!("{other:?}"),
        }
    }
    // The longest gap follows the 20th update, and lasts the silence (less scheduling slack).
    let (longest, after) = gaps.iter().max().copied().unwrap();
    assert_eq!(
        after, 20,
        "the silence starts after the 20th update: {gaps:?}"
    );
    assert!(
        longest >= silence - Duration::from_millis(250),
        "gap {longest:?} shorter than the silence"
    );
    assert!(
        longest < silence + Duration::from_secs(2),
        "it ends: {longest:?}"
    );
    drop(client);
    let stats = sim.shutdown().await.unwrap();
    assert_eq!(stats.exchange.fault_silences, 1);
    assert!(stats.exchange.frames_discarded_in_silence > 0);
}

#[tokio::test]
async fn a_rejected_symbol_gets_krakens_error_and_the_rest_flows() {
    let sim = Simulator::bind(with_faults(
        config("BTC/USD:1:8,ETH/USD:2:8", 300.0, 7),
        Faults {
            reject: vec!["ETH/USD".into()],
            ..Faults::default()
        },
    ))
    .await
    .unwrap();
    let mut client = Client::connect(&sim.url()).await;
    let mut checker = Checker::new(10);
    checker.observe(&client.text().await);
    client
        .send_text(r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD","ETH/USD","XBT/USD"],"depth":25},"req_id":42}"#)
        .await;
    let mut acks = Vec::new();
    while acks.len() < 3 {
        let text = client.text().await;
        if let Ok(Frame::Ack(a)) = decode(&text) {
            assert_eq!(a.req_id, Some(42), "{text}");
            acks.push((
                a.symbol().unwrap_or_default().to_owned(),
                a.error.map(|e| e.into_owned()),
            ));
        }
        checker.observe(&text);
    }
    assert_eq!(
        acks,
        [
            ("BTC/USD".to_owned(), None),
            (
                "ETH/USD".to_owned(),
                Some("Currency pair not supported ETH/USD".to_owned())
            ),
            (
                "XBT/USD".to_owned(),
                Some("Currency pair not supported XBT/USD".to_owned())
            ),
        ]
    );
    // The connection stays open; BTC/USD flows, ETH/USD never does; requests still work.
    read_until(&mut client, &mut checker, |c| c.total().updates >= 100).await;
    client
        .send_text(r#"{"method":"subscribe","params":{"channel":"book","symbol":["ETH/USD"],"depth":50},"req_id":43}"#)
        .await;
    client.send(&Request::ping(Some(44))).await;
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let text = client.text().await;
        match decode(&text) {
            Ok(Frame::Ack(a)) => replies.push(format!("{:?} {:?}", a.req_id, a.error)),
            Ok(Frame::Pong(p)) => replies.push(format!("pong {:?}", p.req_id)),
            _ => {
                checker.observe(&text);
            }
        }
    }
    assert_eq!(
        replies,
        [
            r#"Some(43) Some("Subscription depth not supported")"#,
            "pong Some(44)"
        ]
    );
    assert!(!checker.stats.contains_key("ETH/USD"));
    assert_eq!(checker.total().mismatches, 0);
    drop(client);
    let stats = sim.shutdown().await.unwrap();
    assert_eq!(stats.exchange.fault_rejected_subscriptions, 1);
}

#[tokio::test]
async fn the_non_json_and_unknown_channel_frames_arrive_and_books_still_verify() {
    let sim = Simulator::bind(with_faults(
        config("BTC/USD:1:8", 400.0, 8),
        Faults {
            garbage_after: Some(10),
            unknown_channel_after: Some(20),
            ..Faults::default()
        },
    ))
    .await
    .unwrap();
    let (mut client, mut checker) = subscribed(&sim, &["BTC/USD"], 10).await;
    let mut positions = BTreeMap::new();
    while checker.total().updates < 100 {
        let text = client.text().await;
        if text == GARBAGE_FRAME || text == UNKNOWN_CHANNEL_FRAME {
            positions.insert(text.clone(), checker.total().updates);
        }
        checker.observe(&text);
    }
    assert_eq!(checker.undecodable, [GARBAGE_FRAME]);
    assert_eq!(checker.unknown, [UNKNOWN_CHANNEL_FRAME]);
    assert_eq!(positions[GARBAGE_FRAME], 10, "right after the 10th update");
    assert_eq!(positions[UNKNOWN_CHANNEL_FRAME], 20);
    assert_eq!(checker.total().mismatches, 0);
    drop(client);
    let stats = sim.shutdown().await.unwrap();
    assert_eq!(
        (
            stats.exchange.fault_garbage_frames,
            stats.exchange.fault_unknown_channel_frames
        ),
        (1, 1)
    );
}

#[tokio::test]
async fn the_frame_log_is_exactly_what_the_client_received() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("frames.ndjson");
    let mut cfg = config("BTC/USD:1:8,ETH/USD:2:8", 300.0, 9);
    cfg.server.log = Some(log.clone());
    let sim = Simulator::bind(cfg).await.unwrap();
    let (mut client, mut checker) = subscribed(&sim, &["BTC/USD", "ETH/USD"], 100).await;
    read_until(&mut client, &mut checker, |c| c.total().updates >= 300).await;
    // Shut down while the client reads on: it gets the queued frames, then a close frame.
    let shutdown = tokio::spawn(sim.shutdown());
    loop {
        match client.next(WAIT).await {
            Next::Text(..) => {}
            Next::Closed(_) => break,
            other => panic!("{other:?}"),
        }
    }
    let stats = shutdown.await.unwrap().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sent: Vec<&str> = lines
        .iter()
        .filter(|l| l["conn"] == 1)
        .filter_map(|l| l["sent"].as_str())
        .collect();
    assert_eq!(sent.len(), client.received.len());
    assert!(
        sent.iter().zip(&client.received).all(|(a, b)| a == b),
        "same frames, same order"
    );
    assert_eq!(lines.first().unwrap()["event"], "connect");
    assert_eq!(lines.last().unwrap()["event"], "close");
    assert_eq!(stats.exchange.log_lines, lines.len() as u64);
    let ns: Vec<i64> = lines.iter().map(|l| l["ns"].as_i64().unwrap()).collect();
    assert!(ns.windows(2).all(|w| w[0] <= w[1]), "send times in order");
}

/// The book frames per symbol of a fresh simulator, timestamps removed.
async fn first_frames(seed: u64) -> (String, BTreeMap<String, Vec<String>>) {
    let sim = Simulator::bind(config("BTC/USD:1:8,ETH/USD:2:8", 500.0, seed))
        .await
        .unwrap();
    let mut client = Client::connect(&sim.url()).await;
    let status = client.text().await;
    client.subscribe_book(&["BTC/USD", "ETH/USD"], 25, 1).await;
    let mut frames: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while frames.len() < 2 || frames.values().any(|f| f.len() < 150) {
        let text = client.text().await;
        if let Ok(Frame::Book(b)) = decode(&text) {
            let ts = b.data[0].timestamp.unwrap().to_string();
            frames
                .entry(b.data[0].symbol.to_string())
                .or_default()
                .push(text.replace(&ts, ""));
        }
    }
    drop(client);
    sim.shutdown().await.unwrap();
    for f in frames.values_mut() {
        f.truncate(150);
    }
    (status, frames)
}

#[tokio::test]
async fn the_same_seed_gives_the_same_frames() {
    let (status_a, a) = first_frames(11).await;
    let (status_b, b) = first_frames(11).await;
    let (status_c, c) = first_frames(12).await;
    assert!(
        a.values().all(|f| f.len() == 150),
        "enough frames per symbol"
    );
    assert_eq!(a, b, "same seed, same books and updates");
    assert_eq!(status_a, status_b, "same connection id");
    assert_ne!(a["BTC/USD"], c["BTC/USD"], "another seed, another market");
    assert_ne!(status_a, status_c);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_not_buffered() {
    let mut cfg = config(
        &krakenbook::exchange::sim::generated_pairs(40)
            .iter()
            .map(|p| format!("{}:{}:{}", p.symbol, p.precision.price, p.precision.qty))
            .collect::<Vec<_>>()
            .join(","),
        500.0,
        10,
    );
    cfg.server.send_queue = 64;
    let sim = Simulator::bind(cfg).await.unwrap();
    // A client with a small receive buffer subscribes to everything at depth 1000, then stops.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(sim.local_addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(sim.url(), stream)
        .await
        .unwrap();
    let symbols: Vec<String> = krakenbook::exchange::sim::generated_pairs(40)
        .into_iter()
        .map(|p| p.symbol)
        .collect();
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        Request::subscribe_book(
            &symbols,
            krakenbook::kraken::Depth::new(1000).unwrap(),
            true,
            None,
        )
        .to_json()
        .into(),
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = sim.stats().exchange;
        if s.slow_client_disconnects == 1 && s.connections_open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not disconnected: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its socket is closed: reading ends (after whatever was already in flight).
    use futures_util::StreamExt;
    let ended =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(ended.is_ok(), "the slow client's socket was closed");
    // Another client is served normally.
    let (mut other, mut checker) = subscribed(&sim, &["AAA/USD"], 10).await;
    read_until(&mut other, &mut checker, |c| c.total().updates >= 50).await;
    assert_eq!(checker.total().mismatches, 0);
    drop(other);
    sim.shutdown().await.unwrap();
}

#[test]
fn simulate_help_explains_every_flag() {
    let out = crate::support::run(&["simulate", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--public",
        "--symbols",
        "--pairs",
        "--rate",
        "--seed",
        "--book-levels",
        "--send-queue",
        "--frame-log",
        "--stats-every",
        "--drop-after",
        "--drop-rate",
        "--silence-after",
        "--silence-every",
        "--silence-for",
        "--lose-after",
        "--lose-rate",
        "--garbage-after",
        "--unknown-channel-after",
        "--reject",
        "--fault-connections",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("Examples:\n  krakenbook simulate"));
    // A public address needs --public; a bad pair says what to write. One line each, exit 2.
    for (args, says) in [
        (
            &["simulate", "--listen", "0.0.0.0:8790"][..],
            "pass --public",
        ),
        (
            &["simulate", "--symbols", "BTCUSD:1:8"][..],
            "e.g. BTC/USD:1:8",
        ),
    ] {
        let out = crate::support::run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{err}");
    }
}

#[tokio::test]
async fn the_command_serves_until_terminated_then_closes_politely() {
    use std::io::BufRead;
    let mut child = crate::support::krakenbook()
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--symbols",
            "BTC/USD:1:8",
            "--rate",
            "100",
            "--stats-every",
            "0s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    let mut client = Client::connect(&url).await;
    assert!(client.text().await.starts_with(r#"{"channel":"status""#));
    client.subscribe_book(&["BTC/USD"], 10, 1).await;
    let mut checker = Checker::new(10);
    read_until(&mut client, &mut checker, |c| c.total().updates >= 20).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let end = loop {
        match client.next(WAIT).await {
            Next::Text(..) => {}
            other => break other,
        }
    };
    assert!(matches!(end, Next::Closed(_)), "{end:?}");
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(checker.total().mismatches, 0);
}
