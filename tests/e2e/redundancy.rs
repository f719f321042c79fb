//! Redundant capture end to end (issue 12, the capture side): `collect --redundancy 2` against
//! the simulator dropping one connection every few seconds, in turn, into a real TimescaleDB.
//!
//! - With two replicas the union coverage of every symbol has no gap from its first verified
//!   instant to the end, every frame sent is journaled and stored, and `book --at` inside one
//!   connection's gap answers a verified book from another stream.
//! - With one connection under the very same fault there are gaps (so the first test can fail).
//! - The replicas never reconnect at the same time: no two connections' reconnect windows (from
//!   the `connected` event to every symbol verified) overlap, also when the exchange goes away
//!   under both at once.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::OnceCell;

use krakenbook::exchange::{Faults, Simulator};
use krakenbook::history::{Coverage, Source, SpanEnd};
use krakenbook::readback::book_at;
use krakenbook::time::Timestamp;

use crate::collect::{
    Collector, assert_stored_exactly, finish, sent, simulator, stored, wait_count,
};
use crate::db::{TestDb, connect, fresh_db};
use crate::support::run;

const SYMBOLS: [&str; 3] = ["BTC/USD", "ETH/USD", "MINA/GBP"];
/// How long each recording runs.
const RECORD_FOR: Duration = Duration::from_secs(25);
/// The simulator drops one connection this often, in turn. A replica is dropped every other
/// period; its reconnect backoff (up to 1 s, then 2 s, ...) stays well inside that.
const DROP_EVERY: Duration = Duration::from_secs(5);

/// One recording under the drop fault.
pub(crate) struct Recording {
    pub(crate) db: TestDb,
    dir: tempfile::TempDir,
}

pub(crate) struct Both {
    pub(crate) redundant: Recording,
    single: Recording,
}

static BOTH: OnceCell<Both> = OnceCell::const_new();

/// The two recordings, made once per test process, side by side (two simulators, two collector
/// processes, two databases).
pub(crate) async fn recordings() -> &'static Both {
    BOTH.get_or_init(|| async {
        let (redundant, single) = tokio::join!(record(2), record(1));
        Both { redundant, single }
    })
    .await
}

async fn record(redundancy: u32) -> Recording {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let faults = Faults {
        drop_every: Some(DROP_EVERY),
        ..Faults::default()
    };
    let sim = simulator(dir.path(), 40.0, faults).await;
    let collector = Collector::start(
        &sim,
        Some(&db.url),
        dir.path(),
        &["--redundancy", &redundancy.to_string()],
    );
    tokio::time::sleep(RECORD_FOR).await;
    assert!(
        sim.stats().exchange.fault_drops >= 4,
        "the fault fired: {:?}",
        sim.stats().exchange
    );
    finish(sim, collector).await;
    // Whatever the database had not taken at the stop is loaded from the journal.
    let out = run(&[
        "import",
        "--journal-dir",
        journal(&dir).to_str().unwrap(),
        "--database-url",
        &db.url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Recording { db, dir }
}

fn journal(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("journal")
}

async fn coverage(url: &str, symbol: &str) -> Coverage {
    let client = connect(url).await;
    Source::Database(&client)
        .coverage_of(symbol, None)
        .await
        .unwrap()
}

/// The union gaps between the first verified instant and the end (the first gap, before any
/// stream verified, and the last, after the recording, have an open bound).
fn inner_gaps(c: &Coverage) -> Vec<(Timestamp, Timestamp)> {
    c.gaps
        .iter()
        .filter_map(|g| Some((g.start?, g.end?)))
        .collect()
}

#[tokio::test]
async fn two_replicas_under_alternating_drops_leave_no_union_gap_and_store_every_frame() {
    let rec = &recordings().await.redundant;
    let url = &rec.db.url;
    for symbol in SYMBOLS {
        let c = coverage(url, symbol).await;
        assert!(c.first_verified().is_some(), "{symbol}: {c:?}");
        assert_eq!(
            inner_gaps(&c),
            vec![],
            "{symbol}: no union gap: {:?}",
            c.gaps
        );
        // The drops did darken streams: several connections, each a stream of its own, and at
        // least one ended by its connection inside the recording.
        assert!(
            c.streams.len() >= 4,
            "{symbol}: {} streams",
            c.streams.len()
        );
    }
    // Every frame the simulator sent on any connection is stored once, per connection, in order.
    assert_stored_exactly(&sent(rec.dir.path()), &stored(url).await);
    // ...and a message both connections received is one row with the second copy packed in it:
    // while both are up, most book messages are (issue 12's storage cost).
    let client = connect(url).await;
    let row = client
        .query_one(
            "SELECT count(*), count(dup),
                    (count(dup) + coalesce(sum(cardinality(dups)), 0))::bigint
               FROM krakenbook_book",
            &[],
        )
        .await
        .unwrap();
    let (rows, with_copies, copies): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert!(
        with_copies * 2 > rows && copies == with_copies,
        "{rows} book rows, {with_copies} with a further copy, {copies} copies"
    );
}

#[tokio::test]
async fn book_at_inside_one_connections_gap_answers_a_verified_book_from_another_stream() {
    let rec = &recordings().await.redundant;
    let client = connect(&rec.db.url).await;
    let mut answered = 0;
    for symbol in SYMBOLS {
        let c = coverage(&rec.db.url, symbol).await;
        let last = c.last_verified().unwrap();
        // Just after a stream ended with its dropped connection (its replacement is at least
        // half a second of backoff away), well before the recording's end.
        for stream in &c.streams {
            let Some(span) = stream.spans.last() else {
                continue;
            };
            let at = span.end.add_nanos(100_000_000);
            if span.ended_by != SpanEnd::ConnectionEnded || at.add_nanos(2_000_000_000) > last {
                continue;
            }
            assert!(stream.span_at(at).is_none(), "{symbol}: dark at {at}");
            let book = book_at(&client, symbol, at, 25, None).await.unwrap();
            assert_eq!(
                book.checksum_ok,
                Some(true),
                "{symbol} at {at}, inside connection {}'s gap: {book:?}",
                stream.stream.conn_id
            );
            assert!(!book.bids.is_empty() && !book.asks.is_empty(), "{book:?}");
            let from = book.conn_id.unwrap();
            assert_ne!(
                from, stream.stream.conn_id,
                "{symbol} at {at}: answered from another stream"
            );
            eprintln!(
                "{symbol} at {at}: connection {} dark, book from connection {from} (seq {:?})",
                stream.stream.conn_id, book.last_seq
            );
            answered += 1;
        }
    }
    assert!(answered >= 6, "instants tested: {answered}");
}

#[tokio::test]
async fn one_connection_under_the_same_drops_has_union_gaps() {
    let rec = &recordings().await.single;
    for symbol in SYMBOLS {
        let c = coverage(&rec.db.url, symbol).await;
        let gaps = inner_gaps(&c);
        assert!(gaps.len() >= 3, "{symbol}: a gap per drop: {gaps:?}");
    }
}

/// Each connection's reconnect window: from its `connected` event to the instant every symbol
/// had a verified message on it.
async fn reconnect_windows(url: &str) -> Vec<(i64, Timestamp, Timestamp)> {
    let client = connect(url).await;
    let rows = client
        .query(
            "SELECT e.conn_id, e.time,
                    (SELECT max(first) FROM (
                        SELECT min(m.received_at) AS first FROM kraken_orderbook_messages m
                         WHERE m.conn_id = e.conn_id AND m.checksum_ok GROUP BY m.symbol) f)
               FROM kraken_feed_events e
              WHERE e.event = 'connected'
              ORDER BY e.time",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .filter_map(|r| Some((r.get(0), r.get(1), r.get::<_, Option<Timestamp>>(2)?)))
        .collect()
}

fn assert_never_together(windows: &[(i64, Timestamp, Timestamp)]) {
    for pair in windows.windows(2) {
        let ((a, _, a_done), (b, b_start, _)) = (pair[0], pair[1]);
        assert!(
            b_start >= a_done,
            "connection {b} started reconnecting at {b_start}, before connection {a} was verified at {a_done}: {windows:?}"
        );
    }
}

#[tokio::test]
async fn replicas_never_reconnect_at_the_same_time() {
    // Under the alternating drops.
    let rec = &recordings().await.redundant;
    let windows = reconnect_windows(&rec.db.url).await;
    assert!(windows.len() >= 5, "{windows:?}");
    assert_never_together(&windows);

    // And when the exchange goes away under both replicas at once and comes back.
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let first = simulator(dir.path(), 40.0, Faults::default()).await;
    let addr = first.local_addr();
    let collector = Collector::start(&first, Some(&db.url), dir.path(), &["--redundancy", "2"]);
    let verified_conns =
        "SELECT count(DISTINCT conn_id) FROM kraken_orderbook_messages WHERE checksum_ok";
    wait_count(&db.url, verified_conns, 2, Duration::from_secs(30), || {
        collector.log()
    })
    .await;
    first.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut config = krakenbook::exchange::SimConfig {
        pairs: crate::collect::pairs(),
        rate: 40.0,
        seed: 12,
        ..Default::default()
    };
    config.server.listen = addr;
    let second = Simulator::bind(config)
        .await
        .expect("the simulator restarts");
    wait_count(&db.url, verified_conns, 4, Duration::from_secs(30), || {
        collector.log()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    finish(second, collector).await;
    let windows = reconnect_windows(&db.url).await;
    assert!(windows.len() >= 4, "{windows:?}");
    assert_never_together(&windows);
}

/// The replicas share one book per symbol (the default): under lost messages (a checksum fails
/// on one connection: that replica leaves its lineage, resubscribes, joins again) and drops, a
/// replay of the journal, each connection through books of its own, reproduces every verdict the
/// collector recorded, and most second copies were verified by the shared book.
#[tokio::test]
async fn replicas_sharing_books_record_the_verdicts_books_of_their_own_give() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults {
        lose_rate: krakenbook::exchange::Probability::new(0.002).unwrap(),
        drop_rate: krakenbook::exchange::Probability::new(0.0005).unwrap(),
        ..Faults::default()
    };
    let sim = simulator(dir.path(), 80.0, faults).await;
    let metrics = crate::collect::free_addr();
    let collector = Collector::start(
        &sim,
        None,
        dir.path(),
        &[
            "--redundancy",
            "2",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let body = crate::collect::http_get(metrics, "/metrics").await;
    let value = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
    };
    let taken = value("krakenbook_shared_book_copies_taken_total ");
    let frames = value("krakenbook_frames_received_total ");
    let mismatches: u64 = body
        .lines()
        .filter(|l| l.starts_with("krakenbook_checksum_mismatch_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    finish(sim, collector).await;
    assert!(
        mismatches >= 2,
        "the lost messages failed checksums: {mismatches}"
    );
    assert!(
        taken * 4 > frames,
        "{taken} of {frames} frames took a shared book's verdict"
    );
    let out = run(&[
        "replay",
        "--verify",
        "--journal-dir",
        journal(&dir).to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("every recorded verdict reproduced"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
