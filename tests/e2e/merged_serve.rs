//! `replay --serve` over two collectors: the recording of [`crate::merged`] (collectors `A` and
//! `B` recording the same pairs from one simulator into one database, each stopped for 5 s while
//! the other runs). The replay server follows the merged history as the incremental export does:
//! a client connected once from the start of the record to its end is never dropped (the union
//! of the two records has no gap), rebuilds `book --at`'s book at every instant tested inside
//! either collector's downtime, and every checksum it is sent verifies. With `--collector` the
//! replay serves that collector's record alone, and its downtime is a gap again.

use std::collections::{BTreeMap, HashMap};

use krakenbook::book::Decimal;
use krakenbook::export::incremental::timeline;
use krakenbook::history::{Cause, Source};
use krakenbook::kraken::BookKind;
use krakenbook::readback;
use krakenbook::time::Timestamp;
use krakenbook_testkit::sim_client::{Checker, LevelClient, Next};
use tokio_postgres::Client;

use crate::db::connect;
use crate::merged::{TAMPER, two_collectors};
use crate::recording::Recording;
use crate::replay_serve::{book_frames, read_connection, serve_db, url};

const SYMBOLS: [&str; 3] = ["BTC/USD", "ETH/USD", "MINA/GBP"];

/// The depth both collectors recorded at, and the one served.
const DEPTH: usize = 25;

/// The first instant every pair has a snapshot at or before, on `collector`'s record (either
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

type Levels = Vec<(Decimal, Decimal)>;

/// A book as (bids, asks), best first.
type Book = (Levels, Levels);

/// The client's book of a symbol (bids, asks, best first).
fn held(level: &LevelClient, symbol: &str) -> Option<Book> {
    let (bids, asks) = level.book(symbol)?;
    let parse = |side: Vec<(String, String)>| -> Levels {
        side.iter()
            .map(|(p, q)| (Decimal::parse(p).unwrap(), Decimal::parse(q).unwrap()))
            .collect()
    };
    Some((parse(bids), parse(asks)))
}

/// One connection from the first instant to the end of the record, at speed 0, subscribed to
/// every pair at the recorded depth: never dropped, closed at the end of the record, every
/// message verified by both kinds of client; inside each collector's downtime the book it holds
/// is `book --at`'s (over both collectors) at every instant tested; and a switch where the books
/// agree sends nothing.
#[tokio::test]
async fn replay_serve_follows_the_other_collector_through_each_downtime_without_a_drop() {
    let rec: &Recording = two_collectors().await;
    let _read = TAMPER.read().await;
    let client = connect(&rec.url).await;
    let from = first_instant(&client, None).await;
    let exchange = serve_db(&rec.url, from, 0.0, None).await;
    let conn = read_connection(&url(&exchange), DEPTH as u64).await;
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

    let frames = book_frames(&conn.frames);
    // The instants tested, per symbol: inside each collector's downtime, every update served
    // there and twenty instants evenly spread over it.
    let mut instants: HashMap<&str, Vec<Timestamp>> = HashMap::new();
    let mut served_inside: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for symbol in SYMBOLS {
        let mine = instants.entry(symbol).or_default();
        for c in ["A", "B"] {
            let (s, e) = downtime(&client, symbol, c).await;
            let inside: Vec<Timestamp> = frames
                .iter()
                .filter(|f| f.0 == symbol && f.1 == BookKind::Update && s < f.2 && f.2 < e)
                .map(|f| f.2)
                .collect();
            served_inside.insert((symbol, c), inside.len());
            mine.extend(inside);
            let step = e.nanos_since(s) / 21;
            mine.extend((1..=20).map(|i| s.add_nanos(step * i)));
        }
        mine.sort();
        mine.dedup();
    }
    for c in ["A", "B"] {
        for symbol in ["BTC/USD", "ETH/USD"] {
            let n = served_inside[&(symbol, c)];
            assert!(n > 20, "{symbol}: {n} updates served while {c} was stopped");
        }
    }

    // The client's book at each instant: after every frame before the symbol's first update
    // stamped later (no stream changes inside a downtime: the other collector is followed
    // throughout).
    let mut level = LevelClient::new(DEPTH);
    let mut at: HashMap<&str, Vec<(Timestamp, Option<Book>)>> = HashMap::new();
    let mut next: HashMap<&str, usize> = HashMap::new();
    let mut capture = |level: &LevelClient, symbol: &str, before: Option<Timestamp>| {
        let Some(symbol) = SYMBOLS.iter().find(|s| **s == symbol) else {
            return;
        };
        let list = &instants[symbol];
        let i = next.entry(*symbol).or_default();
        while *i < list.len() && before.is_none_or(|b| list[*i] < b) {
            at.entry(*symbol)
                .or_default()
                .push((list[*i], held(level, symbol)));
            *i += 1;
        }
    };
    for text in &conn.frames {
        if let Some((symbol, BookKind::Update, ts, _)) =
            book_frames(std::slice::from_ref(text)).pop()
        {
            capture(&level, &symbol, Some(ts));
        }
        level.observe(text);
    }
    for symbol in SYMBOLS {
        capture(&level, symbol, None);
    }

    let mut compared = 0;
    for symbol in SYMBOLS {
        for (t, book) in &at[symbol] {
            let want = readback::book_at(&client, symbol, *t, DEPTH, None)
                .await
                .unwrap();
            assert!(want.is_verified(), "{symbol} at {t}: {want:?}");
            let want = (
                want.bids.iter().map(|l| (l.price, l.qty)).collect(),
                want.asks.iter().map(|l| (l.price, l.qty)).collect(),
            );
            assert_eq!(book.as_ref(), Some(&want), "{symbol}: book --at {t}");
            compared += 1;
        }
    }
    assert!(compared > 200, "{compared} books compared");

    // A snapshot at the join, and at most one at each switch of stream; the quiet pair's books
    // agree on both collectors, so its switches send nothing.
    for symbol in SYMBOLS {
        let coverage = Source::Database(&client)
            .coverage_of(symbol, None)
            .await
            .unwrap();
        let segments = timeline(&coverage, from, coverage.record_end().unwrap());
        let collectors: Vec<&str> = segments
            .iter()
            .map(|s| s.stream.collector.as_str())
            .collect();
        assert!(
            collectors.contains(&"A") && collectors.contains(&"B"),
            "{symbol} follows both collectors: {collectors:?}"
        );
        assert!(segments.iter().all(|s| !s.gap_after), "{segments:?}");
        let snapshots = frames
            .iter()
            .filter(|f| f.0 == symbol && f.1 == BookKind::Snapshot)
            .count();
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
