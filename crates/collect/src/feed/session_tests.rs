//! The session driven by the real captures in `tests/fixtures/kraken-v2` and by hand-made frames,
//! on tokio's paused clock: what it journals, sends and closes, frame by frame.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::feed::{FeedConfig, Pace, RateLimiter};
use crate::kraken::Depth;
use crate::record::Record;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/kraken-v2")
        .join(name)
}

/// The frames of a capture: (bytes, receive time).
fn capture(name: &str) -> Vec<(String, Timestamp)> {
    let mut seq = 1;
    krakenbook_testkit::capture::read_capture(&fixture(name), &mut seq, 1)
        .unwrap()
        .into_iter()
        .map(|r: Record| {
            let text = r.frame_text().unwrap().to_owned();
            (text, r.received_at)
        })
        .collect()
}

fn config(depth: u64) -> FeedConfig {
    FeedConfig::new(
        url::Url::parse("wss://ws.kraken.com/v2").unwrap(),
        Depth::new(depth).unwrap(),
    )
}

/// A session and everything it asked for, with the connection's loop played by the test: a
/// tick every second, the deadline honoured, resubscribe permits from a real limiter.
struct Harness {
    session: Session,
    metrics: Arc<Metrics>,
    limiter: RateLimiter,
    journal: Vec<Entry>,
    sent: Vec<Request>,
    closed: Option<Lost>,
    next_tick: Instant,
    /// Wall clock: the start plus the paused clock's elapsed time.
    wall: Timestamp,
    started: Instant,
}

impl Harness {
    fn open(config: &FeedConfig, symbols: &[&str], continuity: Continuity) -> Self {
        let metrics = Arc::new(Metrics::default());
        let now = Instant::now();
        let wall = Timestamp::parse("2026-08-18T20:43:52Z").unwrap();
        let symbols: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
        let session = Session::open(
            7,
            &symbols,
            continuity,
            config,
            Arc::clone(&metrics),
            now,
            wall,
        );
        let mut h = Harness {
            session,
            metrics,
            limiter: RateLimiter::new(10, Duration::from_secs(2)),
            journal: Vec::new(),
            sent: Vec::new(),
            closed: None,
            next_tick: now,
            wall,
            started: now,
        };
        h.drain();
        h
    }

    fn at(&self) -> Timestamp {
        self.wall
            .add_nanos(i64::try_from(self.started.elapsed().as_nanos()).unwrap())
    }

    /// Carries out the session's actions; a close ends the session as the connection would.
    fn drain(&mut self) {
        while let Some(action) = self.session.next_action() {
            match action {
                Action::Journal(entry) => self.journal.push(entry),
                Action::Send(request) if self.closed.is_none() => self.sent.push(request),
                Action::Send(_) => {}
                Action::Close(why) => {
                    assert!(self.closed.is_none(), "closed twice");
                    let at = self.at();
                    self.session.close(&why, at);
                    self.closed = Some(why);
                }
            }
        }
    }

    /// Lets the paused clock run to `until`, doing what the connection's loop does meanwhile.
    async fn run_until(&mut self, until: Instant) {
        loop {
            if self.closed.is_some() {
                return;
            }
            if self.session.wants_resubscribe() && self.limiter.try_acquire().is_ok() {
                self.session.on_resubscribe_permit(Instant::now());
                self.drain();
                continue;
            }
            let next = self.session.deadline().min(self.next_tick).min(until);
            tokio::time::advance(next.saturating_duration_since(Instant::now())).await;
            let now = Instant::now();
            if now >= self.next_tick {
                self.next_tick += Duration::from_secs(1);
                self.session.on_timer(now);
            } else if now >= self.session.deadline() {
                self.session.on_timer(now);
            }
            self.drain();
            if now >= until {
                return;
            }
        }
    }

    async fn run_for(&mut self, d: Duration) {
        self.run_until(Instant::now() + d).await;
    }

    fn frame(&mut self, text: &str) {
        assert!(self.closed.is_none(), "a frame after the close");
        let at = self.at();
        self.session
            .on_frame(Received::Text(text), Instant::now(), at);
        self.drain();
    }

    /// Plays a capture: each frame at its receive time (relative to the first).
    async fn play(&mut self, frames: &[(String, Timestamp)], tamper: Option<(usize, &str)>) {
        let first = frames[0].1;
        let start = Instant::now();
        for (i, (text, at)) in frames.iter().enumerate() {
            let offset = Duration::from_nanos(u64::try_from(at.nanos_since(first)).unwrap());
            self.run_until(start + offset).await;
            match tamper {
                Some((n, tampered)) if n == i => self.frame(tampered),
                _ => self.frame(text),
            }
        }
    }

    fn frames(&self) -> Vec<&FrameRecord> {
        self.journal
            .iter()
            .filter_map(|e| match &e.body {
                RecordBody::Frame(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    fn book_verdicts(&self) -> Vec<Option<bool>> {
        self.frames()
            .into_iter()
            .filter(|f| f.bytes.starts_with(br#"{"channel":"book""#))
            .map(|f| f.checksum_ok)
            .collect()
    }

    fn events(&self) -> Vec<&FeedEvent> {
        self.journal
            .iter()
            .filter_map(|e| match &e.body {
                RecordBody::Event(ev) => Some(ev),
                _ => None,
            })
            .collect()
    }

    fn event_kinds(&self) -> Vec<EventKind> {
        self.events().iter().map(|e| e.kind).collect()
    }

    /// (method, channel, symbols) of each request sent.
    fn requests(&self) -> Vec<(String, String, Vec<String>)> {
        self.sent
            .iter()
            .map(|r| {
                let p = r.params.as_ref().unwrap();
                (
                    r.method.clone(),
                    p.channel.clone(),
                    p.symbol.clone().unwrap_or_default(),
                )
            })
            .collect()
    }
}

fn req(method: &str, channel: &str, symbols: &[&str]) -> (String, String, Vec<String>) {
    (
        method.into(),
        channel.into(),
        symbols.iter().map(|s| s.to_string()).collect(),
    )
}

/// Each capture, played whole: every frame journaled in order and as received, every book
/// message verified (or, for the capture that starts mid-stream, none), the instrument channel
/// asked for before the book, nothing resubscribed, the connection never closed.
#[tokio::test(start_paused = true)]
async fn every_book_message_of_the_real_captures_is_verified() {
    let cases: [(&str, &str, u64, Option<bool>); 6] = [
        (
            "kraken_btcusd_d10_20260816.ndjson",
            "BTC/USD",
            10,
            Some(true),
        ),
        (
            "kraken_btcusd_d25_20260816.ndjson",
            "BTC/USD",
            25,
            Some(true),
        ),
        (
            "kraken_btcusd_d100_20260816.ndjson",
            "BTC/USD",
            100,
            Some(true),
        ),
        (
            "kraken_minagbp_d25_20260816.ndjson",
            "MINA/GBP",
            25,
            Some(true),
        ),
        // Starts mid-stream: no snapshot, so nothing can be verified (and nothing is a mismatch).
        ("kraken_minagbp_d25_20260817.ndjson", "MINA/GBP", 25, None),
        (
            "kraken_minagbp_d25_resync_20260818.ndjson",
            "MINA/GBP",
            25,
            Some(true),
        ),
    ];
    for (file, symbol, depth, verdict) in cases {
        let frames = capture(file);
        let mut h = Harness::open(&config(depth), &[symbol], Continuity::default());
        h.play(&frames, None).await;
        assert!(h.closed.is_none(), "{file}: closed: {:?}", h.closed);
        let journaled = h.frames();
        assert_eq!(
            journaled.len(),
            frames.len(),
            "{file}: every frame journaled"
        );
        for (record, (text, _)) in journaled.iter().zip(&frames) {
            assert_eq!(record.bytes, text.as_bytes(), "{file}: kept as received");
        }
        let conn_seqs: Vec<u64> = h
            .journal
            .iter()
            .filter(|e| matches!(e.body, RecordBody::Frame(_)))
            .map(|e| e.conn_seq)
            .collect();
        assert!(
            conn_seqs
                .iter()
                .enumerate()
                .all(|(i, s)| *s == i as u64 + 1),
            "{file}: numbered in received order"
        );
        let verdicts = h.book_verdicts();
        assert!(!verdicts.is_empty(), "{file}");
        assert!(
            verdicts.iter().all(|v| *v == verdict),
            "{file}: {verdicts:?}"
        );
        let m = h.metrics.symbol(symbol);
        let expected_ok = if verdict == Some(true) {
            verdicts.len() as u64
        } else {
            0
        };
        assert_eq!(m.checksum_ok.load(Ordering::Relaxed), expected_ok, "{file}");
        assert_eq!(m.checksum_mismatch.load(Ordering::Relaxed), 0, "{file}");
        // The instrument channel first; the book once the instrument snapshot is overdue
        // (captures hold none), at the subscribed depth; no resubscription.
        assert_eq!(
            h.requests(),
            vec![
                req("subscribe", "instrument", &[]),
                req("subscribe", "book", &[symbol])
            ],
            "{file}"
        );
        assert_eq!(
            h.sent[1].params.as_ref().unwrap().depth,
            Some(depth),
            "{file}"
        );
        assert!(
            !h.event_kinds().contains(&EventKind::ChecksumMismatch),
            "{file}"
        );
        // Then silence: closed at the timeout after the capture's last frame; a book that was
        // verified gets a gap from that frame.
        let last_at = frames.last().unwrap().1;
        h.run_for(Duration::from_millis(4_999)).await;
        assert!(h.closed.is_none(), "{file}");
        h.run_for(Duration::from_millis(1)).await;
        assert!(matches!(h.closed, Some(Lost::Silent(_))), "{file}");
        let gap = h.session.into_continuity().gap_start(symbol);
        if verdict == Some(true) {
            let first = frames[0].1;
            let wall_first = Timestamp::parse("2026-08-18T20:43:52Z").unwrap();
            assert_eq!(
                gap,
                Some(wall_first.add_nanos(last_at.nanos_since(first))),
                "{file}"
            );
        } else {
            assert_eq!(gap, None, "{file}: never verified, no gap to record");
        }
    }
}

/// Index of the first update of the resync capture whose tampered form (its first level's
/// quantity changed) changes the top ten, so that Kraken's checksum no longer matches.
fn tampered_update(frames: &[(String, Timestamp)]) -> (usize, String) {
    for (i, (text, _)) in frames.iter().enumerate() {
        if !text.starts_with(r#"{"channel":"book","type":"update""#) {
            continue;
        }
        let Some(at) = text.find(r#""qty":"#) else {
            continue;
        };
        let start = at + r#""qty":"#.len();
        let end = start + text[start..].find(['}', ',']).unwrap();
        let tampered = format!("{}123.45678901{}", &text[..start], &text[end..]);
        let mut tracker = Tracker::new(25);
        for (earlier, _) in &frames[..i] {
            if let Ok(Frame::Book(msg)) = kraken::decode(earlier) {
                tracker.apply(msg.kind, &msg.data[0]);
            }
        }
        let Ok(Frame::Book(msg)) = kraken::decode(&tampered) else {
            panic!("{tampered}")
        };
        if matches!(
            tracker.apply(msg.kind, &msg.data[0]),
            Verdict::Mismatch { .. }
        ) {
            return (i, tampered);
        }
    }
    panic!("no update of the capture changes the top ten")
}

/// A tampered level in a real capture: one mismatch, exactly one resubscription (unsubscribe,
/// then subscribe with a snapshot) however many permits are offered, nothing verifiable until the
/// next snapshot, then `resynced` with the gap's start.
#[tokio::test(start_paused = true)]
async fn a_tampered_level_resubscribes_once_and_resyncs_after_the_next_snapshot() {
    let frames = capture("kraken_minagbp_d25_resync_20260818.ndjson");
    let (index, tampered) = tampered_update(&frames);
    let mut h = Harness::open(&config(25), &["MINA/GBP"], Continuity::default());
    h.play(&frames, Some((index, tampered.as_str()))).await;
    assert!(h.closed.is_none(), "{:?}", h.closed);

    assert_eq!(
        h.requests(),
        vec![
            req("subscribe", "instrument", &[]),
            req("subscribe", "book", &["MINA/GBP"]),
            req("unsubscribe", "book", &["MINA/GBP"]),
            req("subscribe", "book", &["MINA/GBP"]),
        ],
        "one resubscription for the episode"
    );
    assert_eq!(h.sent[3].params.as_ref().unwrap().snapshot, Some(true));
    assert_eq!(
        h.event_kinds(),
        vec![
            EventKind::Connected,
            EventKind::Subscribed,
            EventKind::ChecksumMismatch,
            EventKind::Subscribed,
            EventKind::Resynced,
        ]
    );
    // Verified up to the tampered update, a mismatch there, unverifiable until the snapshot
    // that follows the resubscription, verified from it on.
    let verdicts = h.book_verdicts();
    let mismatch = verdicts.iter().position(|v| *v == Some(false)).unwrap();
    let resynced = verdicts.iter().rposition(|v| *v != Some(true)).unwrap() + 1;
    assert!(verdicts[..mismatch].iter().all(|v| *v == Some(true)));
    assert!(verdicts[mismatch + 1..resynced].iter().all(|v| v.is_none()));
    assert!(verdicts[resynced..].iter().all(|v| *v == Some(true)));
    assert!(resynced < verdicts.len(), "{verdicts:?}");
    // The gap runs from the tampered frame's receipt to the resync.
    let mismatch_at = h
        .journal
        .iter()
        .find(
            |e| matches!(&e.body, RecordBody::Event(ev) if ev.kind == EventKind::ChecksumMismatch),
        )
        .unwrap()
        .received_at;
    let frame_at = h
        .journal
        .iter()
        .find(|e| e.conn_seq == index as u64 + 1)
        .unwrap()
        .received_at;
    assert_eq!(mismatch_at, frame_at);
    let resynced_event = h
        .events()
        .into_iter()
        .find(|e| e.kind == EventKind::Resynced)
        .unwrap()
        .clone();
    assert_eq!(resynced_event.gap_start, Some(mismatch_at));
    assert_eq!(resynced_event.symbol.as_deref(), Some("MINA/GBP"));
    let m = h.metrics.symbol("MINA/GBP");
    assert_eq!(m.resubscribes.load(Ordering::Relaxed), 1);
    assert_eq!(m.resyncs.load(Ordering::Relaxed), 1);
    assert_eq!(m.checksum_mismatch.load(Ordering::Relaxed), 1);
}

const SNAPSHOT_XY: &str = r#"{"channel":"book","type":"snapshot","data":[{"symbol":"MATIC/USD","bids":[{"price":0.5666,"qty":4831.75496356},{"price":0.5665,"qty":6658.22734739},{"price":0.5664,"qty":18724.91513344},{"price":0.5663,"qty":11563.92544914},{"price":0.5662,"qty":14006.65365711},{"price":0.5661,"qty":17454.85679807},{"price":0.566,"qty":18097.1547},{"price":0.5659,"qty":33644.89175666},{"price":0.5658,"qty":148.3464},{"price":0.5657,"qty":606.70854372}],"asks":[{"price":0.5668,"qty":4410.79769741},{"price":0.5669,"qty":4655.40412487},{"price":0.567,"qty":49844.89424998},{"price":0.5671,"qty":24306.41678},{"price":0.5672,"qty":29783.25223475},{"price":0.5673,"qty":57234.71239278},{"price":0.5674,"qty":45065.04744},{"price":0.5675,"qty":5912.76380354},{"price":0.5676,"qty":42514.92434778},{"price":0.5677,"qty":36304.0847022}],"checksum":2439117997}]}"#;
const UPDATE_XY: &str = r#"{"channel":"book","type":"update","data":[{"symbol":"MATIC/USD","bids":[{"price":0.5657,"qty":1098.3947558}],"asks":[],"checksum":2114181697,"timestamp":"2023-10-06T17:35:55.440295Z"}]}"#;
const INSTRUMENT_XY: &str = r#"{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[{"symbol":"MATIC/USD","price_precision":4,"qty_precision":8,"status":"online"},{"symbol":"NOPE/USD","price_precision":1,"qty_precision":8,"status":"online"}]}}"#;
const HEARTBEAT: &str = r#"{"channel":"heartbeat"}"#;

fn ack(symbol: &str) -> String {
    format!(
        r#"{{"method":"subscribe","result":{{"channel":"book","depth":10,"snapshot":true,"symbol":"{symbol}"}},"success":true}}"#
    )
}

/// A session for MATIC/USD (Kraken's documented vector) that has subscribed and verified a
/// snapshot.
async fn synced_matic() -> Harness {
    let mut h = Harness::open(&config(10), &["MATIC/USD"], Continuity::default());
    h.frame(INSTRUMENT_XY);
    h.frame(&ack("MATIC/USD"));
    h.frame(SNAPSHOT_XY);
    assert_eq!(h.book_verdicts(), vec![Some(true)]);
    h
}

/// The resubscription of an episode is sent again only when it went unanswered for
/// `resubscribe_retry`; a second bad snapshot in the meantime is recorded, not resubscribed.
#[tokio::test(start_paused = true)]
async fn an_unanswered_resubscription_is_repeated_only_after_the_retry_interval() {
    let mut h = synced_matic().await;
    h.frame(&UPDATE_XY.replace("2114181697", "1"));
    h.run_for(Duration::from_millis(10)).await;
    let resubscriptions =
        |h: &Harness| h.requests().iter().filter(|r| r.0 == "unsubscribe").count();
    assert_eq!(resubscriptions(&h), 1);
    // A bad snapshot while the episode is open: another mismatch event, no new request.
    for _ in 0..30 {
        h.frame(&SNAPSHOT_XY.replace("2439117997", "2"));
        h.run_for(Duration::from_secs(1)).await;
    }
    assert_eq!(resubscriptions(&h), 1, "once per episode");
    assert_eq!(
        h.event_kinds()
            .iter()
            .filter(|k| **k == EventKind::ChecksumMismatch)
            .count(),
        31
    );
    // Unanswered for the retry interval (60 s): asked again, once.
    for _ in 0..35 {
        h.frame(HEARTBEAT);
        h.run_for(Duration::from_secs(1)).await;
    }
    assert_eq!(resubscriptions(&h), 2);
    // The good snapshot closes the gap, which began at the first mismatch.
    h.frame(SNAPSHOT_XY);
    let resynced = h
        .events()
        .into_iter()
        .find(|e| e.kind == EventKind::Resynced)
        .cloned()
        .unwrap();
    let first_mismatch = h
        .journal
        .iter()
        .find(
            |e| matches!(&e.body, RecordBody::Event(ev) if ev.kind == EventKind::ChecksumMismatch),
        )
        .unwrap()
        .received_at;
    assert_eq!(resynced.gap_start, Some(first_mismatch));
}

/// The silence deadline is fixed by the last Kraken frame: ticks do not push it back, a
/// heartbeat does, and reaching it closes the connection with `Lost::Silent`; the books that
/// were live get a gap from the last frame.
#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_deadline_and_its_books_get_a_gap() {
    let mut h = synced_matic().await;
    let last = h.at();
    h.run_for(Duration::from_millis(4_900)).await;
    assert!(h.closed.is_none(), "not before the timeout");
    h.frame(HEARTBEAT);
    let heartbeat_at = h.at();
    h.run_for(Duration::from_millis(4_999)).await;
    assert!(h.closed.is_none(), "the heartbeat counted");
    h.run_for(Duration::from_millis(1)).await;
    assert!(
        matches!(h.closed, Some(Lost::Silent(d)) if d == Duration::from_secs(5)),
        "{:?}",
        h.closed
    );
    let disconnected = h.events().last().cloned().cloned().unwrap();
    assert_eq!(disconnected.kind, EventKind::Disconnected);
    assert!(
        disconnected.detail.contains("no frame for 5s"),
        "{disconnected:?}"
    );
    let continuity = h.session.into_continuity();
    assert_eq!(continuity.gap_start("MATIC/USD"), Some(heartbeat_at));
    assert!(heartbeat_at > last);
}

/// The coverage metrics follow the stream: verified from the snapshot, dark from a mismatch
/// until the next good snapshot, dark from the last frame when the connection is lost; a second
/// connection carrying the same symbol keeps it out of a gap while the first is dark.
#[tokio::test(start_paused = true)]
async fn coverage_metrics_count_a_stream_verified_until_its_mismatch_or_its_last_frame() {
    let mut h = synced_matic().await;
    let coverage = |h: &Harness| h.metrics.symbol("MATIC/USD").coverage.read(h.at());
    assert_eq!(coverage(&h).streams_verified, 1);
    assert_eq!(coverage(&h).gap_seconds, 0.0);

    h.run_for(Duration::from_secs(1)).await;
    h.frame(&UPDATE_XY.replace("2114181697", "1"));
    h.run_for(Duration::from_secs(2)).await;
    let c = coverage(&h);
    assert_eq!(
        (c.streams_verified, c.gap_seconds),
        (0, 2.0),
        "dark from the mismatch"
    );
    assert_eq!(
        c.seconds_since_verified, 3.0,
        "the snapshot was the last verified message"
    );

    // Another connection of the same collector carries MATIC/USD and verifies it.
    let mut other = Session::open(
        8,
        &["MATIC/USD".to_owned()],
        Continuity::default(),
        &config(10),
        Arc::clone(&h.metrics),
        Instant::now(),
        h.at(),
    );
    other.on_frame(Received::Text(INSTRUMENT_XY), Instant::now(), h.at());
    other.on_frame(Received::Text(&ack("MATIC/USD")), Instant::now(), h.at());
    other.on_frame(Received::Text(SNAPSHOT_XY), Instant::now(), h.at());
    let c = coverage(&h);
    assert_eq!(
        (c.streams_verified, c.gap_seconds),
        (1, 0.0),
        "the union is verified"
    );
    drop(other);
    assert_eq!(
        coverage(&h).streams_verified,
        0,
        "a session dropped uncounts itself"
    );

    h.frame(SNAPSHOT_XY);
    assert_eq!(coverage(&h).streams_verified, 1, "verified again");
    h.run_for(Duration::from_secs(2)).await;
    h.frame(HEARTBEAT);
    h.run_for(Duration::from_secs(6)).await;
    assert!(matches!(h.closed, Some(Lost::Silent(_))), "{:?}", h.closed);
    let c = coverage(&h);
    assert_eq!(c.streams_verified, 0);
    assert_eq!(
        c.gap_seconds, 5.0,
        "the gap runs from the last frame, a heartbeat"
    );
    assert_eq!(c.seconds_since_verified, 7.0);
}

/// A rejected symbol is recorded, dropped, and not asked for on the next connection; the other
/// symbols go on.
#[tokio::test(start_paused = true)]
async fn a_rejected_symbol_is_not_asked_for_again() {
    let config = config(10);
    let mut h = Harness::open(&config, &["MATIC/USD", "NOPE/USD"], Continuity::default());
    h.frame(INSTRUMENT_XY);
    assert_eq!(
        h.requests()[1],
        req("subscribe", "book", &["MATIC/USD", "NOPE/USD"])
    );
    h.frame(&ack("MATIC/USD"));
    h.frame(r#"{"error":"Currency pair not supported NOPE/USD","method":"subscribe","success":false,"symbol":"NOPE/USD"}"#);
    h.frame(SNAPSHOT_XY);
    assert_eq!(h.book_verdicts(), vec![Some(true)]);
    assert_eq!(h.metrics.subscription_errors.load(Ordering::Relaxed), 1);
    let rejection = h
        .events()
        .into_iter()
        .find(|e| e.kind == EventKind::SubscriptionError)
        .cloned()
        .unwrap();
    assert_eq!(rejection.symbol.as_deref(), Some("NOPE/USD"));
    assert_eq!(rejection.detail, "Currency pair not supported NOPE/USD");
    assert!(!h.session.tracks("NOPE/USD"));
    h.session.close(&Lost::Eof, h.at());
    let continuity = h.session.into_continuity();
    assert!(continuity.is_rejected("NOPE/USD"));

    let mut again = Harness::open(&config, &["MATIC/USD", "NOPE/USD"], continuity);
    again.frame(INSTRUMENT_XY);
    assert_eq!(
        again.requests(),
        vec![
            req("subscribe", "instrument", &[]),
            req("subscribe", "book", &["MATIC/USD"])
        ]
    );
    // The book that was live before the loss resyncs on the new connection.
    again.frame(&ack("MATIC/USD"));
    again.frame(SNAPSHOT_XY);
    assert_eq!(
        again.event_kinds(),
        vec![
            EventKind::Connected,
            EventKind::Subscribed,
            EventKind::Resynced
        ]
    );
}

/// A rate-limit answer is not a rejection: the connection closes (the reconnect pauses long)
/// and the symbol is asked for again next time.
#[tokio::test(start_paused = true)]
async fn a_rate_limit_answer_closes_the_connection_without_rejecting_the_symbol() {
    let mut h = Harness::open(&config(10), &["MATIC/USD"], Continuity::default());
    h.frame(INSTRUMENT_XY);
    h.frame(r#"{"error":"Exceeded msg rate","method":"subscribe","success":false,"symbol":"MATIC/USD"}"#);
    let Some(why) = &h.closed else {
        panic!("not closed")
    };
    assert!(matches!(why, Lost::RateLimited(_)), "{why:?}");
    assert_eq!(why.pace(), Pace::RateLimited);
    // The frame first, then what it caused.
    let tail: Vec<String> = h.journal[h.journal.len() - 3..]
        .iter()
        .map(|e| match &e.body {
            RecordBody::Frame(_) => "frame".to_owned(),
            RecordBody::Event(ev) => ev.kind.as_str().to_owned(),
            RecordBody::BookState(_) => "state".to_owned(),
        })
        .collect();
    assert_eq!(tail, ["frame", "subscription_error", "disconnected"]);
    assert_eq!(h.metrics.subscription_errors.load(Ordering::Relaxed), 0);
    assert!(!h.session.into_continuity().is_rejected("MATIC/USD"));
}

/// A frame over the cap: counted, recorded with its size, and the connection is reopened.
#[tokio::test(start_paused = true)]
async fn a_frame_over_the_cap_is_recorded_and_the_connection_reopened() {
    let mut h = synced_matic().await;
    h.session.on_frame_too_large(20 << 20, 16 << 20, h.at());
    h.drain();
    assert!(matches!(
        h.closed,
        Some(Lost::FrameTooLarge { size, max }) if size == 20 << 20 && max == 16 << 20
    ));
    assert_eq!(h.metrics.frames_too_large.load(Ordering::Relaxed), 1);
    let kinds = h.event_kinds();
    assert_eq!(
        kinds[kinds.len() - 2..],
        [EventKind::FrameTooLarge, EventKind::Disconnected]
    );
    let event = h.events()[kinds.len() - 2].clone();
    assert!(event.detail.contains("20971520 bytes"), "{event:?}");
    assert!(event.detail.contains("16777216"), "{event:?}");
}

/// A frame that does not decode is journaled as received, counted, recorded, and the feed goes
/// on; it resets the watchdog like any Kraken frame.
#[tokio::test(start_paused = true)]
async fn a_malformed_frame_is_kept_and_the_feed_goes_on() {
    let mut h = synced_matic().await;
    h.frame("this is not json\u{1b}[2J");
    h.session
        .on_frame(Received::Binary(b"\xff\xfe"), Instant::now(), h.at());
    h.drain();
    h.frame(UPDATE_XY);
    assert_eq!(h.book_verdicts(), vec![Some(true), Some(true)]);
    assert_eq!(h.metrics.malformed_frames.load(Ordering::Relaxed), 2);
    let frames = h.frames();
    assert!(frames.iter().any(|f| f.bytes == b"this is not json\x1b[2J"));
    assert!(frames.iter().any(|f| f.bytes == b"\xff\xfe"));
    let details: Vec<String> = h
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::MalformedFrame)
        .map(|e| e.detail.clone())
        .collect();
    assert_eq!(details.len(), 2);
    assert!(
        details.iter().all(|d| !d.chars().any(char::is_control)),
        "{details:?}"
    );
}

/// The attack of issue 9 item 8: 20,000 symbols never asked for (one an SQL injection, one a
/// terminal escape). Every frame is journaled and counted; at most 100 events, one per symbol;
/// no book, precision, depth, metric or subscription for any of them; the session's state stays
/// bounded by the symbols asked for.
#[tokio::test(start_paused = true)]
async fn frames_for_symbols_never_asked_for_are_counted_and_never_tracked() {
    let log = LogBuffer::default();
    let _guard = log.install();
    let mut h = synced_matic().await;
    let mut names: Vec<String> = (0..20_000).map(|i| format!("SYM{i}/USD")).collect();
    names[3] = "'); DROP TABLE x;--".to_owned();
    names[5] = "\u{1b}[2J".to_owned();
    let pairs: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                r#"{{"symbol":{},"price_precision":1,"qty_precision":8}}"#,
                serde_json::to_string(n).unwrap()
            )
        })
        .collect();
    h.frame(&format!(
        r#"{{"channel":"instrument","type":"update","data":{{"assets":[],"pairs":[{}]}}}}"#,
        pairs.join(",")
    ));
    let sent_before = h.sent.len();
    for (i, name) in names.iter().enumerate() {
        let symbol = serde_json::to_string(name).unwrap();
        let text = if i % 2 == 0 {
            format!(
                r#"{{"channel":"book","type":"snapshot","data":[{{"symbol":{symbol},"bids":[{{"price":1.0,"qty":1.0}}],"asks":[],"checksum":1}}]}}"#
            )
        } else {
            format!(
                r#"{{"method":"subscribe","result":{{"channel":"book","depth":1000,"snapshot":true,"symbol":{symbol}}},"success":true}}"#
            )
        };
        h.frame(&text);
        if i % 1000 == 0 {
            h.frame(HEARTBEAT);
        }
    }
    // Every frame of the flood again, for the same symbols: still nothing more.
    for name in names.iter().take(200) {
        let symbol = serde_json::to_string(name).unwrap();
        h.frame(&format!(
            r#"{{"channel":"book","type":"update","data":[{{"symbol":{symbol},"bids":[],"asks":[],"checksum":1}}]}}"#
        ));
    }
    h.run_for(Duration::from_secs(61)).await;
    assert!(h.closed.is_some(), "silent for 61 s: closed");

    assert_eq!(
        h.metrics.unasked_frames.load(Ordering::Relaxed),
        20_200,
        "every frame for a symbol not asked for is counted"
    );
    let unasked: Vec<&FeedEvent> = h
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::UnaskedSymbol)
        .collect();
    assert_eq!(unasked.len(), UNASKED_EVENTS_PER_CONNECTION);
    let distinct: std::collections::HashSet<_> = unasked.iter().map(|e| &e.symbol).collect();
    assert_eq!(distinct.len(), unasked.len(), "one event per symbol");
    assert!(
        unasked
            .iter()
            .any(|e| e.symbol.as_deref() == Some("'); DROP TABLE x;--"))
    );
    assert!(
        unasked
            .iter()
            .any(|e| e.symbol.as_deref() == Some("\\u{1b}[2J")),
        "escaped, never raw"
    );
    assert_eq!(h.sent.len(), sent_before, "nothing subscribed");
    assert!(h.session.tracked_symbols() <= 1 + UNASKED_EVENTS_PER_CONNECTION);
    for name in &names {
        assert!(!h.session.tracks(name), "{name:?} tracked");
        assert!(h.session.tracker.precision(name).is_none(), "{name:?}");
    }
    let rendered = h.metrics.render();
    assert!(!rendered.contains("SYM1/USD"), "no per-symbol metrics");
    assert!(!rendered.contains("DROP TABLE"), "no per-symbol metrics");
    // The asked-for book went on all along (every unasked frame journaled too).
    assert_eq!(h.frames().len(), 3 + 1 + 20_000 + 20 + 200);
    assert_eq!(h.book_verdicts().first(), Some(&Some(true)));
    // None of the events and none of the journal grows with the flood beyond the frames.
    assert!(h.events().len() < UNASKED_EVENTS_PER_CONNECTION + 10);
    // The log: the first ten symbols one by one, then one summary with the count of the rest.
    let text = log.text();
    let named = text.matches("a symbol not asked for").count();
    assert_eq!(named, UNASKED_LOGGED_PER_CONNECTION, "{text}");
    let summaries: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("more frames for symbols not asked for"))
        .collect();
    assert_eq!(summaries.len(), 1, "{text}");
    // 20,200 frames, less the 20 for the ten symbols named in their own lines.
    assert!(summaries[0].contains("frames=20180"), "{}", summaries[0]);
    assert!(text.lines().count() < 20, "{text}");
    assert!(!text.contains('\u{1b}'), "no raw escape in the log");
}

/// The log lines written on this thread while installed.
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

/// Instrument first; the book subscription waits for the instrument snapshot (precision) or its
/// deadline, and goes out in chunks of 50.
#[tokio::test(start_paused = true)]
async fn books_are_subscribed_after_the_instrument_snapshot_or_its_deadline() {
    let symbols: Vec<String> = (0..120).map(|i| format!("S{i}/USD")).collect();
    let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let mut h = Harness::open(&config(10), &refs, Continuity::default());
    assert_eq!(h.requests(), vec![req("subscribe", "instrument", &[])]);
    h.frame(HEARTBEAT);
    h.run_for(Duration::from_secs(4)).await;
    h.frame(HEARTBEAT);
    h.run_for(Duration::from_secs(4)).await;
    h.frame(HEARTBEAT);
    assert_eq!(h.sent.len(), 1, "waiting for the instrument snapshot");
    h.run_for(Duration::from_secs(2)).await;
    let chunks: Vec<usize> = h.requests()[1..].iter().map(|r| r.2.len()).collect();
    assert_eq!(
        chunks,
        vec![50, 50, 20],
        "after the 10 s deadline, in chunks"
    );
    let asked: Vec<String> = h.requests()[1..].iter().flat_map(|r| r.2.clone()).collect();
    assert_eq!(asked, symbols);

    let mut h = Harness::open(&config(10), &["MATIC/USD"], Continuity::default());
    h.frame(INSTRUMENT_XY);
    // The instrument frame is journaled before the request it causes is sent.
    assert!(matches!(
        h.journal.last().unwrap().body,
        RecordBody::Frame(_)
    ));
    assert_eq!(h.requests()[1], req("subscribe", "book", &["MATIC/USD"]));
    assert!(
        h.session.tracker.precision("NOPE/USD").is_none(),
        "not asked for"
    );
}

/// Issue 12's leftover: the reconnect backoff was reset only by a connection up for
/// `healthy_after` (a minute), so a connection that recovered (its books verified) and dropped
/// after a few seconds reconnected later each time, as if it were flapping. Now the first
/// verified book message resets it; a connection that dies before any book verifies still backs
/// off further each time. Played on the paused clock as the connection does: the session on the
/// real frames, then the delay it gets, waited out.
#[tokio::test(start_paused = true)]
async fn a_recovered_connection_reconnects_promptly_and_a_flapping_one_backs_off() {
    let config = config(10);
    let mut reconnect = crate::feed::Reconnect::new(&config, 5);
    let half = Duration::from_millis(500);
    let secs = Duration::from_secs;
    // (what, seconds up, whether its book verifies, the delay's bounds): the backoff starts at
    // 1 s and doubles; every session is far shorter than `healthy_after`.
    let sessions: [(&str, u64, bool, Duration, Duration); 7] = [
        ("first drop", 2, false, half, secs(1)),
        ("flapping", 2, false, secs(1), secs(2)),
        ("flapping again", 2, false, secs(2), secs(4)),
        ("recovered for 10 s", 10, true, half, secs(1)),
        ("dies before its book verifies", 1, false, secs(1), secs(2)),
        ("and again", 1, false, secs(2), secs(4)),
        ("recovered for 3 s", 3, true, half, secs(1)),
    ];
    for (what, up, verifies, low, high) in sessions {
        let opened = Instant::now();
        let mut h = Harness::open(&config, &["MATIC/USD"], Continuity::default());
        h.frame(INSTRUMENT_XY);
        h.frame(&ack("MATIC/USD"));
        if verifies {
            h.frame(SNAPSHOT_XY);
        }
        assert_eq!(h.session.has_verified(), verifies, "{what}");
        // Heartbeats keep the connection up until the peer drops it.
        let until = opened + secs(up);
        while Instant::now() + secs(1) < until {
            h.run_for(secs(1)).await;
            h.frame(HEARTBEAT);
        }
        h.run_until(until).await;
        assert!(h.closed.is_none(), "{what}: up until the peer drops it");
        // What `Connection::run` does when the connection is lost.
        if h.session.has_verified() {
            reconnect.verified();
        }
        let delay = reconnect.delay(Pace::Prompt, Some(opened.elapsed()));
        let lost = Instant::now();
        tokio::time::sleep(delay).await;
        let waited = lost.elapsed();
        assert!(
            waited >= low && waited <= high,
            "{what}: waited {waited:?}, not in [{low:?}, {high:?}]"
        );
    }
}

/// The frames a test session journaled, by their stamps.
fn frame_stamps(h: &Harness) -> Vec<i64> {
    h.journal
        .iter()
        .filter(|e| matches!(e.body, RecordBody::Frame(_)))
        .map(|e| e.received_at.unix_nanos())
        .collect()
}

/// Stamps of arrival can come out of order: a frame the kernel's records did not cover is
/// stamped on reading, before frames they did cover, and a wall clock set back by a little moves
/// a stamp back. A connection's journal never goes back in time: such a frame takes the stamp
/// before it (its own when later).
#[tokio::test(start_paused = true)]
async fn a_connection_s_stamps_never_go_back() {
    let mut h = Harness::open(&config(10), &["BTC/USD"], Continuity::default());
    let t0 = h.at();
    let ms = |n: i64| t0.add_nanos(n * 1_000_000);
    for at in [50, 20, 60, 59, 61] {
        h.session.on_frame(
            Received::Text(r#"{"channel":"heartbeat"}"#),
            Instant::now(),
            ms(at),
        );
        h.drain();
    }
    let want: Vec<i64> = [50, 50, 60, 60, 61]
        .iter()
        .map(|&n| ms(n).unix_nanos())
        .collect();
    assert_eq!(frame_stamps(&h), want);
}

/// Two replicas of a group, each message stored once as the first copy journaled: a frame on
/// the replica read second that arrived before the newest frame taken from the replica read
/// first takes that one's stamp, so a symbol's stored messages never go back in time; a later
/// one keeps its own.
#[tokio::test(start_paused = true)]
async fn a_group_s_first_copies_never_go_back() {
    let group = Arc::new(GroupStamps::default());
    let in_group = |mut h: Harness| {
        h.session = h.session.in_group(Arc::clone(&group));
        h
    };
    let mut a = in_group(Harness::open(
        &config(10),
        &["BTC/USD"],
        Continuity::default(),
    ));
    let mut b = in_group(Harness::open(
        &config(10),
        &["BTC/USD"],
        Continuity::default(),
    ));
    let t0 = a.at();
    let ms = |n: i64| t0.add_nanos(n * 1_000_000);
    let heartbeat = |h: &mut Harness, at: i64| {
        h.session.on_frame(
            Received::Text(r#"{"channel":"heartbeat"}"#),
            Instant::now(),
            ms(at),
        );
        h.drain();
    };
    // A tick reads A (up to 50), then B (a faster replica: 30, then 70); the next reads A (60).
    heartbeat(&mut a, 50);
    heartbeat(&mut b, 30);
    heartbeat(&mut b, 70);
    heartbeat(&mut a, 60);
    let at = |n: &[i64]| n.iter().map(|&n| ms(n).unix_nanos()).collect::<Vec<_>>();
    assert_eq!(frame_stamps(&a), at(&[50, 70]));
    assert_eq!(frame_stamps(&b), at(&[50, 70]));
    // Without a group nothing moves.
    let mut c = Harness::open(&config(10), &["BTC/USD"], Continuity::default());
    heartbeat(&mut c, 30);
    assert_eq!(frame_stamps(&c), at(&[30]));
}
