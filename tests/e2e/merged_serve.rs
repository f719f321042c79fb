//! `replay --serve` over the merged history of several streams, end to end:
//! - two collectors: the recording of [`crate::merged`] (collectors `A` and `B` recording the same
//!   pairs from one simulator into one database, each stopped for 5 s while the other runs);
//! - two connections of one collector: the `--redundancy 2` recording of [`crate::redundancy`]
//!   (the simulator dropping one connection every 5 s, in turn).
//!
//! The replay server follows the merged history as the incremental export does: a client
//! connected once from the start of the record to its end is never dropped (the union of the
//! streams has no gap), rebuilds `book --at`'s book at every instant tested while a stream it
//! followed was dark, and every checksum it is sent verifies, for a client truncating after each
//! level and one truncating after each message. With `--collector` the replay serves that
//! collector's record alone, and its downtime is a gap again.

use std::collections::HashMap;

use krakenbook::book::Decimal;
use krakenbook::export::incremental::{Segment, timeline};
use krakenbook::history::{Cause, Source};
use krakenbook::kraken::BookKind;
use krakenbook::readback;
use krakenbook::time::Timestamp;
use krakenbook_testkit::sim_client::{Checker, LevelClient, Next};
use tokio_postgres::Client;

use crate::db::connect;
use crate::merged::{TAMPER, two_collectors};
use crate::replay_serve::{book_frames, read_connection, serve_db, url};

const SYMBOLS: [&str; 3] = ["BTC/USD", "ETH/USD", "MINA/GBP"];

/// The depth every recording here was made at, and the one served.
const DEPTH: usize = 25;

/// The first instant every pair has a snapshot at or before, on `collector`'s record (every
/// collector's when `None`).
async fn first_instant(client: &Client, collector: Option<&str>) -> Timestamp {
    client
        .query_one(
            "SELECT max(t) FROM (SELECT min(\"timestamp\") AS t FROM kraken_orderbook_messages
              WHERE channel = 'book' AND message_type = 'snapshot'
                AND ($1::text IS NULL OR collector = $1) GROUP BY symbol) s",
            &[&collector],
        )
        .await
        .unwrap()
        .get(0)
}

/// `collector`'s downtime for `symbol`, as its own record's coverage has it: the gap while its
/// process was stopped.
async fn downtime(client: &Client, symbol: &str, collector: &str) -> (Timestamp, Timestamp) {
    let own = Source::Database(client)
        .coverage_of(symbol, Some(collector))
        .await
        .unwrap();
    let gap = own
        .gaps
        .iter()
        .find(|g| g.cause == Cause::NoCollector && g.start.is_some() && g.end.is_some())
        .unwrap_or_else(|| panic!("{symbol}, {collector}: {:?}", own.gaps));
    (gap.start.unwrap(), gap.end.unwrap())
}

/// The segments of `symbol`'s merged history from `from` to the end of its record.
async fn segments(client: &Client, symbol: &str, from: Timestamp) -> Vec<Segment> {
    let coverage = Source::Database(client)
        .coverage_of(symbol, None)
        .await
        .unwrap();
    timeline(&coverage, from, coverage.record_end().unwrap())
}

type Levels = Vec<(Decimal, Decimal)>;

/// A book as (bids, asks), best first.
type Book = (Levels, Levels);

/// What a client rebuilt from one connection: per symbol, each of its book frames (kind, Kraken
/// timestamp) with the book the client held after it.
struct Rebuilt(HashMap<String, Vec<(BookKind, Timestamp, Book)>>);

impl Rebuilt {
    fn new(frames: &[String]) -> Rebuilt {
        let mut level = LevelClient::new(DEPTH);
        let mut out: HashMap<String, Vec<(BookKind, Timestamp, Book)>> = HashMap::new();
        for text in frames {
            level.observe(text);
            let Some((symbol, kind, ts, _)) = book_frames(std::slice::from_ref(text)).pop() else {
                continue;
            };
            let (bids, asks) = level.book(&symbol).unwrap_or_default();
            let parse = |side: Vec<(String, String)>| -> Levels {
                side.iter()
                    .map(|(p, q)| (Decimal::parse(p).unwrap(), Decimal::parse(q).unwrap()))
                    .collect()
            };
            out.entry(symbol)
                .or_default()
                .push((kind, ts, (parse(bids), parse(asks))));
        }
        Rebuilt(out)
    }

    /// The book the client held at `t`: after every update stamped at or before it. `None` when
    /// that is ambiguous: a snapshot came between that update and the next (a snapshot carries
    /// the time of its book's last change, not of the switch that sent it).
    fn at(&self, symbol: &str, t: Timestamp) -> Option<&Book> {
        let frames = self.0.get(symbol)?;
        let next = frames
            .iter()
            .position(|f| f.0 == BookKind::Update && f.1 > t)
            .unwrap_or(frames.len());
        let last = frames[..next]
            .iter()
            .rposition(|f| f.0 == BookKind::Update)
            .unwrap_or(0);
        let between = frames[last + 1..next]
            .iter()
            .any(|f| f.0 == BookKind::Snapshot);
        (!between && next > 0).then(|| &frames[next - 1].2)
    }

    /// Updates of `symbol` stamped inside `(from, to)`.
    fn updates_in(&self, symbol: &str, from: Timestamp, to: Timestamp) -> usize {
        self.0.get(symbol).map_or(0, |f| {
            f.iter()
                .filter(|f| f.0 == BookKind::Update && from < f.1 && f.1 < to)
                .count()
        })
    }

    fn snapshots(&self, symbol: &str) -> usize {
        self.0.get(symbol).map_or(0, |f| {
            f.iter().filter(|f| f.0 == BookKind::Snapshot).count()
        })
    }
}

/// Books compared with `book --at`, and instants left out as ambiguous.
#[derive(Debug, Default)]
struct Compared {
    equal: usize,
    ambiguous: usize,
}

/// Serves the record at `url` from `from` at speed 0 to one client subscribed to every pair at
/// the recorded depth, which must be served to the end of the record without a drop and verify
/// every message; then compares its book with `book --at` (every collector's) at every update
/// it was sent inside each window of `windows` and at `spread` instants evenly spread over it.
async fn serve_to_the_end_and_compare(
    url: &str,
    from: Timestamp,
    windows: &[(&str, Timestamp, Timestamp)],
    spread: i64,
) -> (Rebuilt, Compared) {
    let exchange = serve_db(url, from, 0.0, None).await;
    let conn = read_connection(&crate::replay_serve::url(&exchange), DEPTH as u64).await;
    let stats = exchange.shutdown().await.unwrap();
    match &conn.end {
        Next::Closed(Some((code, reason))) => {
            assert_eq!((*code, reason.as_str()), (1000, "end of recording"));
        }
        other => panic!("one connection to the end of the record, not {other:?}"),
    }
    assert_eq!(stats.market_drops, 0, "{stats:?}");
    // Every message verifies, for a client truncating after each level and one truncating after
    // each message.
    let mut checker = Checker::new(DEPTH);
    let mut verifier = LevelClient::new(DEPTH);
    for text in &conn.frames {
        checker.observe(text);
        verifier.observe(text);
    }
    let t = checker.total();
    assert!(verifier.mismatches.is_empty(), "{:?}", verifier.mismatches);
    assert_eq!((verifier.ok, verifier.unsynced), (verifier.total(), 0));
    assert_eq!(
        (t.mismatches, t.unsynced, t.ok),
        (0, 0, verifier.ok),
        "{t:?}"
    );

    let rebuilt = Rebuilt::new(&conn.frames);
    let client = connect(url).await;
    let mut compared = Compared::default();
    for &(symbol, s, e) in windows {
        let mut instants: Vec<Timestamp> = rebuilt.0.get(symbol).map_or(Vec::new(), |f| {
            f.iter()
                .filter(|f| f.0 == BookKind::Update && s < f.1 && f.1 < e)
                .map(|f| f.1)
                .collect()
        });
        let step = e.nanos_since(s) / (spread + 1);
        instants.extend((1..=spread).map(|i| s.add_nanos(step * i)));
        for t in instants {
            let Some(book) = rebuilt.at(symbol, t) else {
                compared.ambiguous += 1;
                continue;
            };
            let want = readback::book_at(&client, symbol, t, DEPTH, None)
                .await
                .unwrap();
            assert!(want.is_verified(), "{symbol} at {t}: {want:?}");
            let want = (
                want.bids.iter().map(|l| (l.price, l.qty)).collect(),
                want.asks.iter().map(|l| (l.price, l.qty)).collect(),
            );
            assert_eq!(book, &want, "{symbol}: book --at {t}");
            compared.equal += 1;
        }
    }
    (rebuilt, compared)
}

/// Over two collectors, each stopped while the other runs: one connection from the first
/// instant to the end of the record, never dropped; inside each collector's downtime the client
/// is sent the other's updates and holds `book --at`'s book at every instant tested; a snapshot
/// at most where the stream followed changes, and none for the quiet pair, whose books agree.
#[tokio::test]
async fn replay_serve_follows_the_other_collector_through_each_downtime_without_a_drop() {
    let rec = two_collectors().await;
    let _read = TAMPER.read().await;
    let client = connect(&rec.url).await;
    let from = first_instant(&client, None).await;
    let mut windows = Vec::new();
    for symbol in SYMBOLS {
        for c in ["A", "B"] {
            let (s, e) = downtime(&client, symbol, c).await;
            windows.push((symbol, s, e));
        }
    }
    let (rebuilt, compared) = serve_to_the_end_and_compare(&rec.url, from, &windows, 20).await;
    assert!(compared.equal > 200, "{compared:?}");
    assert!(compared.ambiguous < 10, "{compared:?}");
    for &(symbol, s, e) in &windows {
        if symbol != "MINA/GBP" {
            let n = rebuilt.updates_in(symbol, s, e);
            assert!(n > 20, "{symbol}: {n} updates served from {s} to {e}");
        }
    }
    for symbol in SYMBOLS {
        let segments = segments(&client, symbol, from).await;
        let collectors: Vec<&str> = segments
            .iter()
            .map(|s| s.stream.collector.as_str())
            .collect();
        assert!(
            collectors.contains(&"A") && collectors.contains(&"B"),
            "{symbol} follows both collectors: {collectors:?}"
        );
        assert!(segments.iter().all(|s| !s.gap_after), "{segments:?}");
        let snapshots = rebuilt.snapshots(symbol);
        assert!(
            (1..=segments.len()).contains(&snapshots),
            "{symbol}: {snapshots} snapshots over {} segments",
            segments.len()
        );
        if symbol == "MINA/GBP" {
            assert_eq!(snapshots, 1, "the quiet pair's switches are unseen");
        }
    }
}

/// Over two connections of one collector (`--redundancy 2`, one dropped every 5 s in turn): one
/// connection of the replay from the first instant to the end, never dropped, though every
/// stream of the record ends at a drop; at every instant tested on each stretch the replay
/// follows one stream, the client holds `book --at`'s book.
#[tokio::test]
async fn replay_serve_follows_a_collectors_other_connection_through_each_drop_without_a_drop() {
    let rec = &crate::redundancy::recordings().await.redundant;
    let url = &rec.db.url;
    let client = connect(url).await;
    let from = first_instant(&client, None).await;
    let mut windows = Vec::new();
    let mut switches = 0;
    for symbol in SYMBOLS {
        let segments = segments(&client, symbol, from).await;
        assert!(segments.iter().all(|s| !s.gap_after), "{segments:?}");
        for pair in segments.windows(2) {
            assert_ne!(pair[0].stream, pair[1].stream, "{symbol}: {pair:?}");
            switches += 1;
        }
        windows.extend(segments.iter().map(|s| (symbol, s.start, s.end)));
    }
    assert!(switches >= 6, "{switches} switches of stream");
    let (rebuilt, compared) = serve_to_the_end_and_compare(url, from, &windows, 8).await;
    assert!(compared.equal > 200, "{compared:?}");
    assert!(compared.ambiguous < 20, "{compared:?}");
    for symbol in SYMBOLS {
        let snapshots = rebuilt.snapshots(symbol);
        assert!(snapshots <= 1 + switches, "{symbol}: {snapshots} snapshots");
    }
}

/// `--collector A` serves A's record alone: A's downtime is a gap there, and the connection is
/// dropped where it begins, as for any gap.
#[tokio::test]
async fn replay_serve_with_collector_drops_the_connection_at_that_collectors_downtime() {
    let rec = two_collectors().await;
    let _read = TAMPER.read().await;
    let client = connect(&rec.url).await;
    let from = first_instant(&client, Some("A")).await;
    let exchange = serve_db(&rec.url, from, 0.0, Some("A")).await;
    let conn = read_connection(&url(&exchange), DEPTH as u64).await;
    let stats = exchange.shutdown().await.unwrap();
    assert!(matches!(conn.end, Next::Dropped(_)), "{:?}", conn.end);
    assert_eq!(stats.market_drops, 1, "{stats:?}");
    let mut starts = HashMap::new();
    for symbol in SYMBOLS {
        starts.insert(symbol.to_owned(), downtime(&client, symbol, "A").await.0);
    }
    let updates: Vec<_> = book_frames(&conn.frames)
        .into_iter()
        .filter(|f| f.1 == BookKind::Update)
        .collect();
    assert!(updates.len() > 100, "{}", updates.len());
    for (symbol, _, ts, _) in &updates {
        assert!(
            *ts < starts[symbol],
            "{symbol}: an update at {ts}, after A stopped ({})",
            starts[symbol]
        );
    }
}
