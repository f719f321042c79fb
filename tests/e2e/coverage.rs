//! Coverage end to end: every read path asks the one coverage model (`krakenbook::history`), on
//! recordings made by `krakenbook collect` from the simulator into a real TimescaleDB.
//!
//! - A collector stopped for 15 s and started again into the same database: the downtime is a
//!   `no_collector` gap for `book --at`, `query`, the snapshots export and `plot` (issue 10's
//!   first finding: it read as a verified book, no gap, 45 frozen rows, a flat line).
//! - A checksum mismatch and a dropped connection ([`crate::recording`]): gaps with their causes
//!   and exact bounds, through `book --at` and `query`.
//! - The coverage of one recording computed from its journal and from its database agree exactly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OnceCell;

use krakenbook::exchange::{Faults, SimConfig, Simulator};
use krakenbook::history::{Cause, Source};
use krakenbook::plot::canvas::Rgb;
use krakenbook::plot::chart::{GAP, Layout, MID_COLOR};
use krakenbook::time::Timestamp;

use crate::collect::{Collector, count, wait_count};
use crate::db::{TestDb, connect, fresh_db};
use crate::support::run;
use crate::support::three_pairs;

const SYMBOLS: [&str; 3] = ["BTC/USD", "ETH/USD", "MINA/GBP"];

/// A recording with a downtime of its collector (see [`record_downtime`]).
pub(crate) struct Downtime {
    pub(crate) db: TestDb,
    pub(crate) dir: tempfile::TempDir,
    /// Just before the first collector was sent SIGTERM.
    pub(crate) stopped: Timestamp,
    /// Just before the second collector was started.
    pub(crate) restarted: Timestamp,
}

impl Downtime {
    fn journal(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    /// An instant in the middle of the downtime (whole microseconds).
    fn middle(&self) -> Timestamp {
        Downtime::midpoint(self.stopped, self.restarted)
    }

    /// The instant halfway from `stopped` to `restarted`, in whole microseconds.
    pub(crate) fn midpoint(stopped: Timestamp, restarted: Timestamp) -> Timestamp {
        Timestamp::from_unix_nanos(
            (stopped.unix_nanos() + restarted.unix_nanos()) / 2 / 1000 * 1000,
        )
    }
}

static DOWNTIME: OnceCell<Downtime> = OnceCell::const_new();

/// Made once per test process: the simulator (BTC/USD and ETH/USD moving, MINA/GBP quiet: its
/// every snapshot carries the time of its only change, before the recording; the first connection
/// loses an update: a mismatch and a resubscription), a collector recording into a fresh database,
/// stopped (SIGTERM) for 15 s, then a second collector process on the same journal and database.
async fn downtime() -> &'static Downtime {
    DOWNTIME
        .get_or_init(|| async {
            record_downtime(31, Duration::from_secs(15), async |_, _| ())
                .await
                .0
        })
        .await
}

/// Records the simulator (BTC/USD and ETH/USD moving, MINA/GBP quiet; the first connection loses
/// an update: a mismatch and a resubscription, `seed` choosing the market) with a collector into
/// a fresh database, stops it (SIGTERM) for `pause`, starts a second collector process on the
/// same journal and database, runs `meanwhile` while that one records, stops it, and imports what
/// the database had not taken.
pub(crate) async fn record_downtime<T>(
    seed: u64,
    pause: Duration,
    meanwhile: impl AsyncFnOnce(&TestDb, &Collector) -> T,
) -> (Downtime, T) {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let mut config = SimConfig {
        pairs: three_pairs(),
        rate: 60.0,
        seed,
        ..SimConfig::default()
    };
    config.server.faults = Faults {
        lose_after: Some(120),
        connections: Some(1),
        ..Faults::default()
    };
    let sim = Simulator::bind(config).await.expect("the simulator starts");
    let verified = "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok";
    let first = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    wait_count(&db.url, verified, 300, Duration::from_secs(60), || {
        first.log()
    })
    .await;
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_feed_events WHERE event = 'resynced'",
        1,
        Duration::from_secs(30),
        || first.log(),
    )
    .await;
    let stopped = Timestamp::now();
    let (status, _, log) = first.stop();
    assert!(status.success(), "{log}");
    tokio::time::sleep(pause).await;
    let before = count(&db.url, verified).await;
    let restarted = Timestamp::now();
    let second = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    wait_count(
        &db.url,
        verified,
        before + 300,
        Duration::from_secs(60),
        || second.log(),
    )
    .await;
    let got = meanwhile(&db, &second).await;
    // The collector stops first this time (the exchange keeps running: no lost connection at the
    // end), then the exchange.
    let (status, _, log) = second.stop();
    assert!(status.success(), "{log}");
    sim.shutdown().await.unwrap();
    // Whatever the database had not taken at the stop is loaded from the journal.
    let out = run(&[
        "import",
        "--journal-dir",
        dir.path().join("journal").to_str().unwrap(),
        "--database-url",
        &db.url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        Downtime {
            db,
            dir,
            stopped,
            restarted,
        },
        got,
    )
}

fn book_json(url: &str, symbol: &str, at: Timestamp) -> (Option<i32>, Value) {
    let out = run(&[
        "book",
        symbol,
        "--at",
        &at.to_string(),
        "--json",
        "--database-url",
        url,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), v)
}

fn ts(v: &Value) -> Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("a timestamp: {v}"))
        .parse()
        .unwrap()
}

fn query_coverage(url: &str, extra: &[&str]) -> Value {
    let out = run(&[
        &["query", "--coverage", "--json", "--database-url", url],
        extra,
    ]
    .concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The gap of `symbol` in `query --json`'s coverage that contains `at`.
fn gap_containing<'a>(q: &'a Value, symbol: &str, at: Timestamp) -> Option<&'a Value> {
    q["coverage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["symbol"] == symbol)?["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| ts(&g["start"]) <= at && at < ts(&g["end"]))
}

#[tokio::test]
async fn collector_downtime_is_a_gap_in_every_read_path() {
    let rec = downtime().await;
    let url = &rec.db.url;
    let client = connect(url).await;
    let at = rec.middle();
    // The quiet pair's snapshot after the restart is stamped before the downtime began: a span
    // starting at Kraken's timestamp would cover the downtime.
    let quiet_snapshot: Timestamp = client
        .query_one(
            "SELECT min(\"timestamp\") FROM kraken_orderbook_messages
              WHERE symbol = 'MINA/GBP' AND message_type = 'snapshot' AND received_at > $1",
            &[&rec.restarted],
        )
        .await
        .unwrap()
        .get(0);
    assert!(quiet_snapshot < rec.stopped, "{quiet_snapshot}");

    let mut gaps = Vec::new();
    for symbol in SYMBOLS {
        // book --at: exit 1, no book, the gap and its cause.
        let (code, v) = book_json(url, symbol, at);
        assert_eq!(code, Some(1), "{symbol} at {at}: {v}");
        let gap = &v["gap"];
        assert_eq!(gap["cause"], "no_collector", "{symbol}: {v}");
        assert!(v["bids"].as_array().unwrap().is_empty(), "{v}");
        assert!(v["asks"].as_array().unwrap().is_empty(), "{v}");
        assert!(v["checksum_ok"].is_null(), "{v}");
        let (start, end) = (ts(&gap["start"]), ts(&gap["end"]));
        // From the first collector's last frame (a heartbeat, at most a second before the stop
        // for these pairs) to the first verified book after the restart.
        assert!(
            start <= rec.stopped.add_nanos(1_000_000_000)
                && start > rec.stopped.add_nanos(-2_000_000_000),
            "{symbol}: the gap starts at {start}, the stop was at {}",
            rec.stopped
        );
        assert!(end > rec.restarted, "{symbol}: the gap ends at {end}");
        let last_frame: Timestamp = client
            .query_one(
                "SELECT max(last_received_at) FROM krakenbook_connections WHERE last_received_at < $1",
                &[&rec.restarted],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(start, last_frame, "{symbol}: the connection's last frame");
        let last_verified = ts(&gap["last_verified_at"]);
        assert!(last_verified <= start, "{v}");
        // Just before the gap and at its end, the book is verified again.
        let (code, v) = book_json(url, symbol, end);
        assert_eq!(code, Some(0), "{symbol} at the gap's end {end}: {v}");
        assert_eq!(v["checksum_ok"], true);
        let (code, v) = book_json(url, symbol, start.add_nanos(-1000));
        assert_eq!(code, Some(0), "{symbol} just before the gap: {v}");
        gaps.push((symbol, start, end));
    }
    // The quiet pair's book comes back when its new stream was subscribed, not at its snapshot's
    // old timestamp.
    let subscribed: Timestamp = client
        .query_one(
            "SELECT min(time) FROM kraken_feed_events
              WHERE symbol = 'MINA/GBP' AND event = 'subscribed' AND time > $1",
            &[&rec.restarted],
        )
        .await
        .unwrap()
        .get(0);
    let mina_end = gaps.iter().find(|g| g.0 == "MINA/GBP").unwrap().2;
    assert_eq!(
        mina_end, subscribed,
        "the quiet pair's coverage resumes at its subscription"
    );

    // query: the same gap, per symbol, in the union and in no stream's own gaps.
    let q = query_coverage(url, &[]);
    for &(symbol, start, end) in &gaps {
        let g = gap_containing(&q, symbol, at).unwrap_or_else(|| panic!("{symbol}: {q}"));
        assert_eq!(g["cause"], "no_collector", "{symbol}: {g}");
        assert_eq!((ts(&g["start"]), ts(&g["end"])), (start, end), "{symbol}");
        let c = q["coverage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["symbol"] == symbol)
            .unwrap();
        assert!(c["gap_seconds"].as_f64().unwrap() >= 14.0, "{c}");
        assert!(c["streams"].as_array().unwrap().len() >= 2, "{c}");
    }
    // --since/--until inside the downtime: the whole range is the gap.
    let (s, u) = (at.add_nanos(-1_000_000_000), at.add_nanos(1_000_000_000));
    let q = query_coverage(
        url,
        &[
            "--symbol",
            "BTC/USD",
            "--since",
            &s.to_string(),
            "--until",
            &u.to_string(),
        ],
    );
    let c = &q["coverage"][0];
    assert_eq!(c["gaps"].as_array().unwrap().len(), 1, "{q}");
    assert_eq!(c["gaps"][0]["cause"], "no_collector");
    assert!(
        (c["gap_seconds"].as_f64().unwrap() - 2.0).abs() < 1e-6,
        "{q}"
    );

    // The snapshots export writes no row inside the downtime, and rows on both sides of it.
    let (from, to) = (
        rec.stopped.add_nanos(-5_000_000_000),
        rec.restarted.add_nanos(5_000_000_000),
    );
    let csv = rec.dir.path().join("snapshots.csv");
    let out = run(&[
        "export",
        "--quiet",
        "--kind",
        "snapshots",
        "--interval",
        "100ms",
        "--depth",
        "5",
        "--symbol",
        "BTC/USD,ETH/USD,MINA/GBP",
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
        "--database-url",
        url,
        "-o",
        csv.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    for &(symbol, start, end) in &gaps {
        let instants: Vec<i64> = text
            .lines()
            .skip(1)
            .filter(|l| l.split(',').nth(1) == Some(symbol))
            .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
            .collect();
        let inside = instants
            .iter()
            .filter(|&&t| t >= start.unix_micros() && t < end.unix_micros())
            .count();
        assert_eq!(inside, 0, "{symbol}: rows inside the downtime");
        assert!(
            instants.iter().any(|&t| t < start.unix_micros())
                && instants.iter().any(|&t| t >= end.unix_micros()),
            "{symbol}: rows on both sides of the gap"
        );
    }

    // plot: the downtime is shaded, and no line is drawn across it.
    let png = rec.dir.path().join("btc.png");
    let out = run(&[
        "plot",
        "BTC/USD",
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
        "--database-url",
        url,
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (width, pixels) = decode_png(&png);
    let layout = Layout::new(width, pixels.len() as u32 / width / 3).unwrap();
    let n = layout.columns() as i64;
    let span = to.nanos_since(from) as i128;
    let (start, end) = (gaps[0].1, gaps[0].2);
    let column = |t: Timestamp| (i128::from(t.nanos_since(from)) * i128::from(n) / span) as i64;
    // Columns inside the gap (one column of margin on each side: a line is two pixels wide).
    let inside: Vec<i64> = (column(start) + 2..column(end) - 1).collect();
    assert!(
        inside.len() > n as usize / 3,
        "{} columns inside",
        inside.len()
    );
    let mid = layout.panels[0];
    for k in inside {
        let x = layout.plot_x0 + k as i32;
        let colors: Vec<Rgb> = (mid.0..=mid.1)
            .map(|y| {
                let i = (y as usize * width as usize + x as usize) * 3;
                Rgb(pixels[i], pixels[i + 1], pixels[i + 2])
            })
            .collect();
        assert!(colors.contains(&GAP), "column {k} is shaded");
        assert!(
            !colors.contains(&MID_COLOR),
            "column {k}: no mid line in the gap"
        );
    }
}

fn decode_png(path: &Path) -> (u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, buf)
}

#[tokio::test]
async fn coverage_from_the_journal_equals_coverage_from_the_database() {
    let rec = downtime().await;
    let client = connect(&rec.db.url).await;
    let symbols: Vec<String> = SYMBOLS.iter().map(|s| s.to_string()).collect();
    let journal = rec.journal();
    let from_journal = Source::Journal(&journal)
        .observe(&symbols, None)
        .await
        .unwrap();
    let from_db = Source::Database(&client)
        .observe(&symbols, None)
        .await
        .unwrap();
    assert_eq!(from_journal, from_db, "the observations");
    let by_journal = Source::Journal(&journal)
        .coverage(&symbols, None)
        .await
        .unwrap();
    let by_db = Source::Database(&client)
        .coverage(&symbols, None)
        .await
        .unwrap();
    assert_eq!(by_journal, by_db, "the coverage");
    // And it is not trivially equal: two processes, several streams, a mismatch and a downtime.
    for c in &by_db {
        assert!(c.streams.len() >= 2, "{}: {:?}", c.symbol, c.streams);
        assert!(
            c.gaps.iter().any(|g| g.cause == Cause::NoCollector),
            "{}: {:?}",
            c.symbol,
            c.gaps
        );
    }
    assert!(
        by_db
            .iter()
            .any(|c| c.gaps.iter().any(|g| g.cause == Cause::Mismatch)),
        "the lost update's mismatch: {by_db:?}"
    );
    // A collector named that is not the journal's: nothing.
    let other = Source::Journal(&journal)
        .coverage(&symbols, Some("someone-else"))
        .await
        .unwrap();
    assert!(other.iter().all(|c| c.streams.is_empty()));
}

/// The shared recording's lost update and dropped connection, through `book --at` and `query`,
/// with the bounds the record shows.
#[tokio::test]
async fn a_mismatch_and_a_dropped_connection_are_gaps_in_book_at_and_query() {
    let rec = crate::recording::recording().await;
    let client = connect(&rec.url).await;
    let q = query_coverage(&rec.url, &[]);

    // The mismatch: the gap starts just after the last message of the connection that verified
    // before it (the update lost lies somewhere after it).
    let row = client
        .query_one(
            "SELECT symbol, \"timestamp\", conn_id, seq FROM kraken_orderbook_messages
              WHERE checksum_ok = false ORDER BY seq LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (symbol, mismatched, conn, seq): (String, Timestamp, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let last_ok: Timestamp = client
        .query_one(
            "SELECT \"timestamp\" FROM kraken_orderbook_messages
              WHERE symbol = $1 AND conn_id = $2 AND seq < $3 AND checksum_ok
              ORDER BY seq DESC LIMIT 1",
            &[&symbol, &conn, &seq],
        )
        .await
        .unwrap()
        .get(0);
    let start = last_ok.add_nanos(1000).min(mismatched);
    let g = gap_containing(&q, &symbol, start).unwrap_or_else(|| panic!("{start}: {q}"));
    assert_eq!(g["cause"], "mismatch", "{g}");
    assert_eq!(ts(&g["start"]), start, "{g}");
    let end = ts(&g["end"]);
    // It ends at the resubscription's verified snapshot on the same connection.
    let resync: Timestamp = client
        .query_one(
            "SELECT received_at FROM kraken_orderbook_messages
              WHERE symbol = $1 AND conn_id = $2 AND message_type = 'snapshot' AND checksum_ok
                AND seq > $3 ORDER BY seq LIMIT 1",
            &[&symbol, &conn, &seq],
        )
        .await
        .unwrap()
        .get(0);
    assert!(end > start && end <= resync, "{g}: resynced at {resync}");
    let (code, v) = book_json(&rec.url, &symbol, start);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["gap"]["cause"], "mismatch", "{v}");
    assert_eq!(ts(&v["gap"]["last_verified_at"]), last_ok, "{v}");
    let (code, v) = book_json(&rec.url, &symbol, last_ok);
    assert_eq!(code, Some(0), "verified at the last verified message: {v}");
    let (code, v) = book_json(&rec.url, &symbol, end);
    assert_eq!(code, Some(0), "verified again at the gap's end: {v}");
    // The stream's own gaps show it too.
    let c = q["coverage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["symbol"] == symbol.as_str())
        .unwrap();
    let stream = c["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["conn_id"] == conn)
        .unwrap();
    assert!(
        stream["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["cause"] == "mismatch" && ts(&g["start"]) == start),
        "{stream}"
    );

    // The dropped connection: from its last frame to the next verified book, for every symbol.
    let row = client
        .query_one(
            "SELECT c.conn_id, c.last_received_at FROM krakenbook_connections c
               JOIN kraken_feed_events e ON e.collector = c.collector AND e.conn_id = c.conn_id
              WHERE e.event = 'disconnected' ORDER BY c.conn_id LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let (dropped, last_frame): (i64, Timestamp) = (row.get(0), row.get(1));
    for symbol in SYMBOLS {
        let g = gap_containing(&q, symbol, last_frame).unwrap_or_else(|| panic!("{symbol}: {q}"));
        assert_eq!(g["cause"], "connection_lost", "{symbol}: {g}");
        assert_eq!(ts(&g["start"]), last_frame, "{symbol}: {g}");
        assert_eq!(g["after"]["conn_id"], dropped, "{symbol}: {g}");
        let end = ts(&g["end"]);
        let middle = Timestamp::from_unix_nanos(
            (last_frame.unix_nanos() + end.unix_nanos()) / 2 / 1000 * 1000,
        );
        let (code, v) = book_json(&rec.url, symbol, middle);
        assert_eq!(code, Some(1), "{symbol} at {middle}: {v}");
        assert_eq!(v["gap"]["cause"], "connection_lost", "{v}");
        assert_eq!(ts(&v["gap"]["start"]), last_frame, "{v}");
        let (code, v) = book_json(&rec.url, symbol, end);
        assert_eq!(code, Some(0), "{symbol} verified again at {end}: {v}");
        assert_ne!(v["conn_id"], dropped, "{v}");
    }
}

/// Journal damage ends every stream of its collector at the last intact record before it; the
/// book is known again from the first book state after it. The journal (read directly) and the
/// database (the damage stored by `import` as a `journal_damage` event) say the same.
#[tokio::test]
async fn journal_damage_is_a_gap_from_the_journal_and_from_the_database_alike() {
    use krakenbook::book::{Tracker, Verdict};
    use krakenbook::journal::{Entry, JournalConfig, JournalWriter, list_segments};
    use krakenbook::kraken::{BookKind, Frame, decode};
    use krakenbook::record::{BookState, RecordBody};

    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    // The BTC/USD depth-10 capture, journaled as the collector would have, with a book state
    // every 40 verified updates.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kraken-v2/kraken_btcusd_d10_20260816.ndjson");
    let records = krakenbook_testkit::capture::read_capture(&path, &mut 1, 1).unwrap();
    let mut config = JournalConfig::new(&journal);
    config.compression_level = 0;
    config.segment_bytes = 20_000;
    let (mut w, _) = JournalWriter::open(config).unwrap();
    let mut tracker = Tracker::new(10);
    let mut updates = 0u64;
    let mut states = 0;
    for r in &records {
        w.append(Entry {
            received_at: r.received_at,
            conn_id: r.conn_id,
            conn_seq: r.conn_seq,
            body: r.body.clone(),
        })
        .unwrap();
        let Some(text) = r.frame_text() else { continue };
        match decode(text) {
            Ok(Frame::Book(msg)) => {
                for data in &msg.data {
                    let verdict = tracker.apply(msg.kind, data);
                    if verdict != Verdict::Ok || msg.kind != BookKind::Update {
                        continue;
                    }
                    updates += 1;
                    if !updates.is_multiple_of(40) {
                        continue;
                    }
                    let book = tracker.book(&data.symbol).unwrap();
                    let view = book.view(book.depth());
                    w.append(Entry {
                        received_at: r.received_at,
                        conn_id: r.conn_id,
                        conn_seq: 0,
                        body: RecordBody::BookState(BookState {
                            symbol: data.symbol.to_string(),
                            depth: book.depth() as u16,
                            precision: book.precision(),
                            checksum: data.checksum,
                            timestamp: data.timestamp.unwrap_or(r.received_at),
                            bids: view.bids,
                            asks: view.asks,
                        }),
                    })
                    .unwrap();
                    states += 1;
                }
            }
            Ok(other) => tracker.observe(&other),
            Err(_) => {}
        }
        w.maybe_rotate().unwrap();
    }
    w.close().unwrap();
    assert!(states > 5, "{states} book states");
    // Four bytes flipped in the middle of a middle segment: a record or two are lost.
    let segments = list_segments(&journal).unwrap();
    assert!(segments.len() >= 4, "{} segments", segments.len());
    let damaged = &segments[segments.len() / 2];
    let mut bytes = std::fs::read(&damaged.path).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(&damaged.path, &bytes).unwrap();

    let db = fresh_db().await;
    let out = run(&[
        "import",
        "--journal-dir",
        journal.to_str().unwrap(),
        "--database-url",
        &db.url,
    ]);
    let events = count(
        &db.url,
        "SELECT count(*) FROM kraken_feed_events WHERE event = 'journal_damage'",
    )
    .await;
    assert_eq!(events, 1, "{}", String::from_utf8_lossy(&out.stderr));

    let client = connect(&db.url).await;
    let symbols = vec!["BTC/USD".to_owned()];
    let from_journal = Source::Journal(&journal)
        .observe(&symbols, None)
        .await
        .unwrap();
    let from_db = Source::Database(&client)
        .observe(&symbols, None)
        .await
        .unwrap();
    assert_eq!(from_journal, from_db, "the observations");
    let coverage = Source::Database(&client)
        .coverage_of("BTC/USD", None)
        .await
        .unwrap();
    assert_eq!(
        Source::Journal(&journal)
            .coverage_of("BTC/USD", None)
            .await
            .unwrap(),
        coverage
    );
    let gap = coverage
        .gaps
        .iter()
        .find(|g| g.cause == Cause::JournalDamage)
        .unwrap_or_else(|| panic!("{:?}", coverage.gaps));
    let (start, end) = (gap.start.unwrap(), gap.end.unwrap());
    let (before, after): (Timestamp, Timestamp) = {
        let r = client
            .query_one(
                "SELECT gap_start, time FROM kraken_feed_events WHERE event = 'journal_damage'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(start, before, "the last intact record before the damage");
    assert!(
        end >= after,
        "known again no earlier than the first intact record after it"
    );
    // The stream resumed at a book state, not at a snapshot (the capture has only its first).
    let stream = &coverage.streams[0];
    let resumed = stream.spans.iter().find(|s| s.start == end).unwrap();
    assert_eq!(resumed.started_from, krakenbook::history::SpanStart::State);

    let middle =
        Timestamp::from_unix_nanos((start.unix_nanos() + end.unix_nanos()) / 2 / 1000 * 1000);
    let (code, v) = book_json(&db.url, "BTC/USD", middle);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["gap"]["cause"], "journal_damage", "{v}");
    let (code, v) = book_json(&db.url, "BTC/USD", end);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["started_from"], "state", "{v}");
}
