//! `krakenbook export` end to end, on data collected from the simulator into a real TimescaleDB
//! ([`crate::recording`], and a recording of this module's with several reconnections): every
//! file is read back (CSV with the `csv` crate, Parquet with the parquet crate's reader) and
//! compared with the database row for row and digit for digit, and the books the files describe,
//! applied by each kind of consumer of [`krakenbook::export::consumers`], are compared with the
//! books rebuilt by the book engine after every message. Then the output rules: devices, FIFOs,
//! symlinks, full disks, signals, names and depths.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use krakenbook::book::{Decimal, Side};
use krakenbook::exchange::{Faults, SimConfig, Simulator};
use krakenbook::export::consumers::{
    Book, ClearsToDeepest, Consumer, L2Row, NeverClears, TardisRule,
};
use krakenbook::export::parquet::{Value, read_file};
use krakenbook::history::{Cause, Coverage, Source};
use krakenbook::readback;
use krakenbook::time::Timestamp;
use tokio::sync::OnceCell;
use tokio_postgres::Client;

use crate::collect::{Collector, count, finish, wait_count};
use crate::db::{TestDb, connect, fresh_db};
use crate::recording::{Recording, recording};
use crate::support::krakenbook;
use crate::support::three_pairs;

const TARDIS_L2: [&str; 8] = [
    "exchange",
    "symbol",
    "timestamp",
    "local_timestamp",
    "is_snapshot",
    "side",
    "price",
    "amount",
];

const DEPTH: usize = 25;

/// Runs `krakenbook export` on the recording's database.
fn export(rec: &Recording, args: &[&str]) -> Output {
    let out = export_output(rec, args);
    assert!(
        out.status.success(),
        "export {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `krakenbook export` on the recording's database, whatever the outcome.
fn export_output(rec: &Recording, args: &[&str]) -> Output {
    krakenbook()
        .arg("export")
        .args(["--database-url", &rec.url])
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("krakenbook export runs")
}

/// Runs `krakenbook export ARGS -o PATH`.
pub(crate) fn export_to(rec: &Recording, args: &[&str], path: &Path) -> Output {
    export(rec, &[args, &["-o", path.to_str().unwrap()]].concat())
}

fn read_csv_bytes(bytes: &[u8]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes);
    let mut records = r.records().map(|r| {
        r.unwrap()
            .iter()
            .map(str::to_owned)
            .collect::<Vec<String>>()
    });
    let header = records.next().expect("a header");
    let rows: Vec<Vec<String>> = records.collect();
    for row in &rows {
        assert_eq!(row.len(), header.len(), "{row:?}");
    }
    (header, rows)
}

pub(crate) fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    read_csv_bytes(&std::fs::read(path).unwrap())
}

fn t(s: &str) -> String {
    s.to_owned()
}

pub(crate) fn micros(s: &str) -> i64 {
    s.parse().unwrap()
}

fn dec(s: &str) -> Decimal {
    Decimal::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

/// The full range of a recording, as `--from` and `--to` texts.
pub(crate) fn range_args(rec: &Recording) -> (String, String) {
    let (from, to) = rec.all();
    (from.to_string(), to.to_string())
}

/// The stored levels in range, as the tardis layout writes them (computed by SQL, not by the
/// exporter's code), each with its message's `seq`.
async fn stored_levels(
    client: &Client,
    rec: &Recording,
    symbols: &[&str],
    from: Timestamp,
    to: Timestamp,
) -> Vec<(i64, Vec<String>)> {
    let symbols: Vec<String> = symbols.iter().map(|s| t(s)).collect();
    client
        .query(
            "SELECT seq, 'kraken', symbol,
                    (extract(epoch FROM \"timestamp\") * 1000000)::bigint::text,
                    (extract(epoch FROM coalesce(received_at, \"timestamp\")) * 1000000)::bigint::text,
                    (message_type = 'snapshot')::text, side, price::text, quantity::text
               FROM kraken_orderbook_entries
              WHERE collector = $1 AND symbol = ANY($2) AND \"timestamp\" >= $3 AND \"timestamp\" < $4
              ORDER BY seq, ordinal",
            &[&rec.collector, &symbols, &from, &to],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (1..9).map(|i| r.get::<_, String>(i)).collect()))
        .collect()
}

/// The collector a recording's reads name: its own, or none (every collector's, merged) when its
/// `collector` is empty (a recording of several collectors).
pub(crate) fn reads(rec: &Recording) -> Option<&str> {
    (!rec.collector.is_empty()).then_some(rec.collector.as_str())
}

/// A symbol's coverage on the recording: the coverage model's, as `book --at` and `query` get it.
pub(crate) async fn coverage_of(client: &Client, rec: &Recording, symbol: &str) -> Coverage {
    Source::Database(client)
        .coverage_of(symbol, reads(rec))
        .await
        .unwrap()
}

fn at_micros(us: i64) -> Timestamp {
    Timestamp::from_unix_nanos(us * 1000)
}

/// The stored levels a file of `[from, to)` must hold: those of the messages the coverage model
/// verifies, on the stream it chooses at their instant. The others (the updates of an unverified
/// book after a mismatch, what comes before coverage starts) are left out.
async fn covered_levels(
    client: &Client,
    rec: &Recording,
    symbols: &[&str],
    from: Timestamp,
    to: Timestamp,
) -> Vec<Vec<String>> {
    let mut coverage = HashMap::new();
    for &s in symbols {
        coverage.insert(s.to_owned(), coverage_of(client, rec, s).await);
    }
    stored_levels(client, rec, symbols, from, to)
        .await
        .into_iter()
        .filter(|(seq, row)| {
            coverage[&row[1]]
                .choose(at_micros(micros(&row[2])))
                .is_some_and(|(_, span)| span.start_seq <= *seq && *seq <= span.last_seq)
        })
        .map(|(_, row)| row)
        .collect()
}

/// A CSV row of the tardis layout, as a consumer reads it.
fn l2_row(row: &[String]) -> L2Row {
    L2Row {
        snapshot: row[4] == "true",
        side: if row[5] == "bid" {
            Side::Bid
        } else {
            Side::Ask
        },
        price: dec(&row[6]),
        amount: dec(&row[7]),
    }
}

/// The three kinds of consumer: tardis.dev's rule, nautilus_trader's loader (never clears),
/// hftbacktest's converter (clears down to the snapshot's deepest price).
fn consumers() -> Vec<(&'static str, Box<dyn Consumer>)> {
    vec![
        ("tardis rule", Box::new(TardisRule::default())),
        (
            "never clears (nautilus_trader)",
            Box::new(NeverClears::default()),
        ),
        (
            "clears to the deepest price (hftbacktest)",
            Box::new(ClearsToDeepest::default()),
        ),
    ]
}

/// `book SYMBOL --at T` for the recording's collector, remembered: the book where it is
/// verified, `None` in a gap.
#[derive(Default)]
pub(crate) struct BookAt(HashMap<(String, i64), Option<Book>>);

impl BookAt {
    async fn get(
        &mut self,
        client: &Client,
        rec: &Recording,
        symbol: &str,
        at: i64,
    ) -> Option<Book> {
        if let Some(b) = self.0.get(&(symbol.to_owned(), at)) {
            return b.clone();
        }
        let book = readback::book_at(client, symbol, at_micros(at), DEPTH, reads(rec))
            .await
            .unwrap();
        let answer = if book.gap.is_some() {
            assert!(book.bids.is_empty() && book.asks.is_empty(), "{book:?}");
            None
        } else {
            assert!(book.is_verified(), "not a gap, not verified: {book:?}");
            Some((
                book.bids.iter().map(|l| (l.price, l.qty)).collect(),
                book.asks.iter().map(|l| (l.price, l.qty)).collect(),
            ))
        };
        self.0.insert((symbol.to_owned(), at), answer.clone());
        answer
    }
}

/// Books compared: at verified instants, and in gaps (each per consumer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Compared {
    pub(crate) verified: usize,
    pub(crate) in_gaps: usize,
}

/// Replays the file's rows of each symbol through each kind of consumer: once it has applied
/// every row stamped at or before an instant, each must hold `book --at`'s book there where the
/// coverage model verifies it, and an empty book in a gap. The instants: every stored message
/// of the symbol in `[from, to)` (those left out too), `from`, and each bound of the coverage
/// (a span's first and last microsecond, a gap's first and middle one).
pub(crate) async fn assert_file_rebuilds_the_books(
    client: &Client,
    rec: &Recording,
    symbols: &[&str],
    from: Timestamp,
    to: Timestamp,
    rows: &[Vec<String>],
    oracle: &mut BookAt,
) -> Compared {
    let (from_us, to_us) = (from.unix_micros(), to.unix_micros());
    let mut compared = Compared::default();
    for &symbol in symbols {
        let mine: Vec<&Vec<String>> = rows.iter().filter(|r| r[1] == symbol).collect();
        for w in mine.windows(2) {
            assert!(
                micros(&w[0][2]) <= micros(&w[1][2]),
                "{symbol}: the file goes back in time: {w:?}"
            );
        }
        let mut instants: Vec<i64> = client
            .query(
                "SELECT DISTINCT (extract(epoch FROM \"timestamp\") * 1000000)::bigint
                   FROM kraken_orderbook_messages
                  WHERE symbol = $1 AND ($2::text IS NULL OR collector = $2) AND channel = 'book'
                    AND message_type IN ('snapshot', 'update')
                    AND \"timestamp\" >= $3 AND \"timestamp\" < $4",
                &[&symbol, &reads(rec), &from, &to],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        instants.push(from_us);
        let coverage = coverage_of(client, rec, symbol).await;
        for iv in &coverage.spans {
            let (s, e) = (iv.start.unix_micros(), iv.end.unix_micros());
            instants.extend([s, e - 1, e]);
        }
        for g in &coverage.gaps {
            if let (Some(s), Some(e)) = (g.start, g.end) {
                instants.push((s.unix_micros() + e.unix_micros()) / 2);
            }
        }
        instants.retain(|&i| from_us <= i && i < to_us);
        instants.sort_unstable();
        instants.dedup();
        let mut wants = Vec::with_capacity(instants.len());
        for &at in &instants {
            wants.push(oracle.get(client, rec, symbol, at).await);
        }
        for (name, mut consumer) in consumers() {
            let mut next = 0;
            for (&at, want) in instants.iter().zip(&wants) {
                while next < mine.len() && micros(&mine[next][2]) <= at {
                    consumer.apply(&l2_row(mine[next]));
                    next += 1;
                }
                match want {
                    Some(book) => {
                        assert_eq!(
                            &consumer.book(),
                            book,
                            "{symbol}, {name}: book --at {at} µs"
                        );
                        compared.verified += 1;
                    }
                    None => {
                        assert_eq!(
                            consumer.book(),
                            Book::default(),
                            "{symbol}, {name}: at {at} µs, in a gap, the book must be empty"
                        );
                        compared.in_gaps += 1;
                    }
                }
            }
        }
    }
    compared
}

/// Every Parquet row equals the CSV row: same texts, integers and booleans; each decimal the same
/// value, at its column's one scale, whose text rescaled to the CSV's scale is the CSV's text.
fn assert_parquet_matches_csv(
    header: &[String],
    csv: &[Vec<String>],
    names: &[String],
    rows: &[Vec<Value>],
) {
    assert_eq!(names, header);
    assert_eq!(rows.len(), csv.len(), "rows");
    let mut scales: HashMap<usize, u8> = HashMap::new();
    for (i, (p, c)) in rows.iter().zip(csv).enumerate() {
        for (j, (v, text)) in p.iter().zip(c).enumerate() {
            match v {
                Value::Decimal(d) => {
                    let want = dec(text);
                    assert_eq!(*d, want, "row {i}, {}", names[j]);
                    assert_eq!(
                        d.with_scale(want.scale()).unwrap().to_string(),
                        *text,
                        "row {i}, {}",
                        names[j]
                    );
                    let s = *scales.entry(j).or_insert(d.scale());
                    assert_eq!(d.scale(), s, "one scale per column ({})", names[j]);
                }
                Value::Null => assert_eq!(text, "", "row {i}, {}", names[j]),
                other => assert_eq!(other.to_text(), *text, "row {i}, {}", names[j]),
            }
        }
    }
}

fn parquet(path: &Path) -> (Vec<String>, Vec<Vec<Value>>) {
    read_file(std::fs::File::open(path).unwrap()).unwrap()
}

/// What a file added to the stored rows, per symbol.
#[derive(Debug, Default)]
struct Added {
    /// `amount` 0 rows that are not snapshot rows.
    deletions: usize,
    /// Snapshot rows of the books written where coverage starts.
    book_levels: usize,
}

/// Checks the rows that are not stored levels: each is a deletion (`amount` 0, not a snapshot
/// row), a snapshot end (the symbol's previous row, a snapshot row, again as an update) or a
/// snapshot row of a book written where coverage starts; and the stored rows `stored` are all
/// there, in order.
fn classify_added_rows<'a>(
    rows: &'a [Vec<String>],
    stored: &[Vec<String>],
) -> HashMap<&'a str, Added> {
    let mut k = 0;
    let mut added: HashMap<&str, Added> = HashMap::new();
    let mut previous: HashMap<&str, &Vec<String>> = HashMap::new();
    for row in rows {
        let symbol = row[1].as_str();
        if k < stored.len() && *row == stored[k] {
            k += 1;
        } else if dec(&row[7]).is_zero() && row[4] == "false" {
            added.entry(symbol).or_default().deletions += 1;
        } else if row[4] == "true" {
            added.entry(symbol).or_default().book_levels += 1;
        } else {
            let prev = previous.get(symbol).expect("a row before");
            let mut as_update = (*prev).clone();
            as_update[4] = t("false");
            assert!(
                prev[4] == "true" && *row == as_update,
                "neither stored, a deletion, a book's level nor a snapshot end: {row:?} after {prev:?}"
            );
        }
        previous.insert(symbol, row);
    }
    assert_eq!(
        k,
        stored.len(),
        "every stored level the coverage verifies is in the file, in order"
    );
    added
}

#[tokio::test]
async fn export_incremental_round_trips_and_the_file_alone_rebuilds_every_verified_book() {
    let rec = recording().await;
    let client = connect(&rec.url).await;
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = rec.all();
    let symbols = ["BTC/USD", "ETH/USD", "MINA/GBP"];
    let (f, tt) = range_args(rec);
    let csv = dir.path().join("l2.csv");
    let out = export_to(
        rec,
        &[
            "--symbol",
            "BTC/USD,ETH/USD",
            "--symbol",
            "MINA/GBP",
            "--from",
            &f,
            "--to",
            &tt,
        ],
        &csv,
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("implied deletions"), "{summary}");
    assert!(summary.contains("gaps cleared"), "{summary}");
    assert!(!summary.contains("next snapshot"), "{summary}");

    let (header, rows) = read_csv(&csv);
    assert_eq!(header, TARDIS_L2);
    // The stored rows the coverage verifies are all in the file, unchanged and in order; every
    // other row deletes a level (amount 0) without being a snapshot row, ends a snapshot, or is
    // a level of a book written where coverage starts.
    let covered = covered_levels(&client, rec, &symbols, from, to).await;
    let stored = stored_levels(&client, rec, &symbols, from, to).await;
    assert!(
        covered.len() < stored.len(),
        "the lost update's unverified rows and those before coverage starts are left out"
    );
    let added = classify_added_rows(&rows, &covered);
    // BTC/USD and ETH/USD move: Kraken's window drops levels past the depth.
    assert!(added["BTC/USD"].deletions > 10, "{added:?}");
    // MINA/GBP never changes: where its connection was lost, the file empties the book.
    assert!(added["MINA/GBP"].deletions >= DEPTH, "{added:?}");
    let compared = assert_file_rebuilds_the_books(
        &client,
        rec,
        &symbols,
        from,
        to,
        &rows,
        &mut BookAt::default(),
    )
    .await;
    assert!(compared.verified > 1500, "{compared:?}");
    assert!(compared.in_gaps > 10, "{compared:?}");

    // zstd-compressed CSV: the same bytes.
    let all = [
        "--quiet",
        "--symbol",
        "BTC/USD,ETH/USD,MINA/GBP",
        "--from",
        &f,
        "--to",
        &tt,
    ];
    let zst = dir.path().join("l2.csv.zst");
    export_to(rec, &all, &zst);
    let plain = std::fs::read(&csv).unwrap();
    let unpacked = zstd::decode_all(std::fs::File::open(&zst).unwrap()).unwrap();
    assert!(unpacked == plain, "the .csv.zst holds the same CSV");

    // Parquet: the same rows, decimals exact.
    let pq = dir.path().join("l2.parquet");
    export_to(rec, &all, &pq);
    let (names, prows) = parquet(&pq);
    assert_parquet_matches_csv(&header, &rows, &names, &prows);

    // --stored-only: exactly the stored rows, covered or not.
    let only = dir.path().join("stored.csv");
    export_to(rec, &[&all[..], &["--stored-only"]].concat(), &only);
    let stored: Vec<Vec<String>> = stored.into_iter().map(|(_, row)| row).collect();
    assert_eq!(read_csv(&only).1, stored);
}

#[tokio::test]
async fn export_incremental_from_the_middle_opens_with_the_verified_book_at_from() {
    let rec = recording().await;
    let client = connect(&rec.url).await;
    let dir = tempfile::tempdir().unwrap();
    // An instant well after the reconnection, in the middle of BTC/USD's updates.
    let from: Timestamp = client
        .query_one(
            "SELECT \"timestamp\" FROM kraken_orderbook_messages
              WHERE symbol = 'BTC/USD' AND checksum_ok AND message_type = 'update'
                AND seq > (SELECT max(seq) FROM kraken_feed_events WHERE event = 'resynced')
              ORDER BY seq OFFSET 60 LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let to = rec.last.add_nanos(1000);
    let symbols = ["BTC/USD", "ETH/USD"];
    let csv = dir.path().join("mid.csv");
    let (f, tt) = (from.to_string(), to.to_string());
    export_to(
        rec,
        &[
            "--quiet",
            "--symbol",
            "BTC/USD,ETH/USD",
            "--from",
            &f,
            "--to",
            &tt,
        ],
        &csv,
    );
    let (_, rows) = read_csv(&csv);
    // The file opens with both books at `from`, as snapshot rows stamped `from` (each followed
    // by its snapshot end), equal to the book `krakenbook book --at` rebuilds.
    let from_us = from.unix_micros().to_string();
    let opening: Vec<&Vec<String>> = rows
        .iter()
        .take_while(|r| r[2] == from_us)
        .filter(|r| r[4] == "true")
        .collect();
    assert!(
        opening.iter().all(|r| micros(&r[3]) >= from.unix_micros()),
        "received when the book was held, never before --from"
    );
    for symbol in symbols {
        let at = readback::book_at(
            &client,
            symbol,
            from.add_nanos(-1),
            DEPTH,
            Some(&rec.collector),
        )
        .await
        .unwrap();
        assert!(at.is_verified(), "{at:?}");
        let side = |s: &str| -> Vec<(String, String)> {
            opening
                .iter()
                .filter(|r| r[1] == symbol && r[5] == s)
                .map(|r| (r[6].clone(), r[7].clone()))
                .collect()
        };
        let want = |bids: bool| -> Vec<(String, String)> {
            let levels = if bids { &at.bids } else { &at.asks };
            levels
                .iter()
                .map(|l| (l.price.to_string(), l.qty.to_string()))
                .collect()
        };
        assert_eq!(side("bid"), want(true), "{symbol} bids at --from");
        assert_eq!(side("ask"), want(false), "{symbol} asks at --from");
        assert!(!at.bids.is_empty());
    }
    let compared = assert_file_rebuilds_the_books(
        &client,
        rec,
        &symbols,
        from,
        to,
        &rows,
        &mut BookAt::default(),
    )
    .await;
    assert!(compared.verified > 300, "{compared:?}");
}

/// A recording of this module's: the three pairs at depth 25, the first three connections each
/// losing an update (a checksum mismatch, a resubscription) and then dropped (a reconnection,
/// every book rebuilt), the fourth left alone.
static RECONNECTS: OnceCell<Recording> = OnceCell::const_new();

async fn reconnects() -> &'static Recording {
    RECONNECTS.get_or_init(record_reconnects).await
}

async fn record_reconnects() -> Recording {
    let dir = tempfile::tempdir().unwrap();
    let db: TestDb = fresh_db().await;
    let mut config = SimConfig {
        pairs: three_pairs(),
        rate: 80.0,
        seed: 41,
        ..SimConfig::default()
    };
    config.server.faults = Faults {
        lose_after: Some(40),
        drop_after: Some(120),
        connections: Some(3),
        ..Faults::default()
    };
    let sim = Simulator::bind(config).await.expect("the simulator starts");
    let collector = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    // Four connections: three dropped.
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_feed_events WHERE event = 'connected'",
        4,
        Duration::from_secs(90),
        || collector.log(),
    )
    .await;
    let client = connect(&db.url).await;
    let verified: i64 = client
        .query_one(
            "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok",
        verified + 200,
        Duration::from_secs(30),
        || collector.log(),
    )
    .await;
    finish(sim, collector).await;
    let row = client
        .query_one(
            "SELECT min(collector), min(\"timestamp\"), max(\"timestamp\")
               FROM kraken_orderbook_messages WHERE channel = 'book'
                AND message_type IN ('snapshot', 'update')",
            &[],
        )
        .await
        .unwrap();
    Recording {
        url: db.url.clone(),
        collector: row.get(0),
        first: row.get(1),
        last: row.get(2),
        _db: db,
    }
}

/// nautilus_trader's loader never cleared its book on a snapshot (39/35 levels, crossed ETH and
/// MINA books), hftbacktest's cleared only down to the snapshot's deepest price (a stale MINA
/// bid in the top 25); and between a gap's start and the next snapshot the file went on feeding
/// the updates of an unverified book. Following the coverage model (a book where coverage
/// starts, every level deleted where a gap starts), each kind of consumer holds exactly `book
/// --at`'s book at every verified instant and an empty book at every instant inside a gap, in
/// one file per symbol and in one file of all.
#[tokio::test]
async fn every_kind_of_consumer_rebuilds_the_exact_book_across_reconnections() {
    let rec = reconnects().await;
    let client = connect(&rec.url).await;
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = rec.all();
    let (f, tt) = range_args(rec);
    let symbols = ["BTC/USD", "ETH/USD", "MINA/GBP"];
    let snapshots: i64 = client
        .query_one(
            "SELECT count(*) FROM kraken_orderbook_messages WHERE message_type = 'snapshot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        snapshots >= 12,
        "{snapshots} snapshots: every pair, four connections"
    );

    let template = dir.path().join("l2_{symbol}.csv");
    let out = export(
        rec,
        &[
            "--symbol",
            "BTC/USD,ETH/USD,MINA/GBP",
            "--from",
            &f,
            "--to",
            &tt,
            "-o",
            template.to_str().unwrap(),
        ],
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("gaps cleared"), "{summary}");
    let precisions = [("BTC/USD", 1, 8), ("ETH/USD", 2, 8), ("MINA/GBP", 4, 8)];
    let mut oracle = BookAt::default();
    for (symbol, price, qty) in precisions {
        let name = format!("l2_{}.csv", symbol.replace('/', "-"));
        let path = dir.path().join(&name);
        assert!(summary.contains(&name), "{summary}");
        let (header, rows) = read_csv(&path);
        assert_eq!(header, TARDIS_L2);
        assert!(rows.iter().all(|r| r[1] == symbol), "{name}: one symbol");
        let covered = covered_levels(&client, rec, &[symbol], from, to).await;
        let added = classify_added_rows(&rows, &covered);
        assert!(added[symbol].deletions > 0, "{symbol}: {added:?}");
        let compared =
            assert_file_rebuilds_the_books(&client, rec, &[symbol], from, to, &rows, &mut oracle)
                .await;
        // Three connections lost: a gap each (and a mismatch before each loss).
        assert!(compared.in_gaps >= 3 * 3, "{symbol}: {compared:?}");
        assert!(compared.verified >= 4 * 3, "{symbol}: {compared:?}");
        // The precision beside the file, as the instrument channel gave it.
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("{name}.precision.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({symbol: {"price_precision": price, "qty_precision": qty}}),
            "{name}"
        );
    }

    // One file of all the symbols: the consumers that key their books by symbol.
    let one = dir.path().join("all.csv");
    export_to(
        rec,
        &[
            "--quiet",
            "--symbol",
            "BTC/USD,ETH/USD,MINA/GBP",
            "--from",
            &f,
            "--to",
            &tt,
        ],
        &one,
    );
    let (_, rows) = read_csv(&one);
    let compared =
        assert_file_rebuilds_the_books(&client, rec, &symbols, from, to, &rows, &mut oracle).await;
    assert!(compared.verified > 300, "{compared:?}");
    let json: BTreeMap<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("all.csv.precision.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        json.keys().collect::<Vec<_>>(),
        ["BTC/USD", "ETH/USD", "MINA/GBP"]
    );
}

/// `export --from T` with T between the first snapshot's Kraken time and its stream's start
/// (the subscription's receive time) found no verified book at T, said "their rows start at
/// their next snapshot", and wrote the symbol's updates from T on: nautilus_trader and
/// hftbacktest applied them to an empty book until the next snapshot, 14 s later. The file now
/// opens with the book at the stream's start, and writes nothing of the symbol before it.
#[tokio::test]
async fn an_export_starting_just_before_the_first_snapshot_opens_with_it() {
    let rec = reconnects().await;
    let client = connect(&rec.url).await;
    let dir = tempfile::tempdir().unwrap();
    let to = rec.all().1;
    // Every symbol whose first verified span starts after its snapshot's Kraken time.
    let mut cases = Vec::new();
    for symbol in ["BTC/USD", "ETH/USD", "MINA/GBP"] {
        let coverage = coverage_of(&client, rec, symbol).await;
        let (stream, span) = coverage.choose_from(rec.first).expect("a verified span");
        let snapshot: Timestamp = client
            .query_one(
                "SELECT \"timestamp\" FROM kraken_orderbook_messages WHERE collector = $1 AND seq = $2",
                &[&stream.stream.collector, &span.start_seq],
            )
            .await
            .unwrap()
            .get(0);
        let gap = span.start.unix_micros() - snapshot.unix_micros();
        if gap >= 2 {
            cases.push((
                symbol,
                at_micros(snapshot.unix_micros() + gap / 2),
                span.start,
            ));
        }
    }
    assert!(
        cases.iter().any(|c| c.0 == "MINA/GBP"),
        "the quiet pair's snapshot carries the time of its last change, before the stream: {cases:?}"
    );
    for (symbol, from, start) in cases {
        let csv = dir.path().join(format!("{}.csv", symbol.replace('/', "-")));
        let out = export_to(
            rec,
            &[
                "--symbol",
                symbol,
                "--from",
                &from.to_string(),
                "--to",
                &to.to_string(),
            ],
            &csv,
        );
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(
            summary.contains(&format!("{symbol} covered from {start}")),
            "{summary}"
        );
        let (_, rows) = read_csv(&csv);
        // Nothing before the stream's start; the book there first, as snapshot rows.
        assert!(
            rows.iter().all(|r| micros(&r[2]) >= start.unix_micros()),
            "{symbol}: a row before coverage starts"
        );
        assert_eq!(rows[0][4], "true", "{symbol}: {:?}", rows[0]);
        assert_eq!(micros(&rows[0][2]), start.unix_micros());
        let book = readback::book_at(&client, symbol, start, DEPTH, Some(&rec.collector))
            .await
            .unwrap();
        assert!(book.is_verified(), "{book:?}");
        let opening: Vec<(Decimal, Decimal)> = rows
            .iter()
            .take_while(|r| r[4] == "true" && r[5] == "bid")
            .map(|r| (dec(&r[6]), dec(&r[7])))
            .collect();
        assert_eq!(
            opening,
            book.bids
                .iter()
                .map(|l| (l.price, l.qty))
                .collect::<Vec<_>>(),
            "{symbol}: the bids at the stream's start"
        );
        let compared = assert_file_rebuilds_the_books(
            &client,
            rec,
            &[symbol],
            from,
            to,
            &rows,
            &mut BookAt::default(),
        )
        .await;
        assert!(
            compared.in_gaps >= 3,
            "{symbol}: from is in a gap: {compared:?}"
        );
    }
}

/// After a lost update (the simulator's `lose update` fault: a checksum mismatch), the file went
/// on writing the updates of the unverified book until the resubscription's snapshot. None of
/// them is written now, and every level held is deleted where the mismatch gap starts.
#[tokio::test]
async fn no_row_of_the_unverified_updates_after_a_mismatch_is_written() {
    let rec = reconnects().await;
    let client = connect(&rec.url).await;
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = rec.all();
    let (f, tt) = range_args(rec);
    let csv = dir.path().join("all.csv");
    export_to(
        rec,
        &[
            "--quiet",
            "--symbol",
            "BTC/USD,ETH/USD,MINA/GBP",
            "--from",
            &f,
            "--to",
            &tt,
        ],
        &csv,
    );
    let (_, rows) = read_csv(&csv);
    // The updates the collector did not verify: each mismatch, and what came after it on its
    // connection before the resubscription's snapshot.
    let unverified: Vec<(String, i64, i64)> = client
        .query(
            "SELECT symbol, (extract(epoch FROM \"timestamp\") * 1000000)::bigint,
                    (extract(epoch FROM received_at) * 1000000)::bigint
               FROM kraken_orderbook_messages
              WHERE collector = $1 AND channel = 'book' AND message_type = 'update'
                AND checksum_ok IS NOT TRUE AND \"timestamp\" >= $2 AND \"timestamp\" < $3",
            &[&rec.collector, &from, &to],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        !unverified.is_empty(),
        "the lost updates were recorded as mismatches"
    );
    for (symbol, ts, received) in &unverified {
        assert!(
            !rows
                .iter()
                .any(|r| r[1] == *symbol && micros(&r[2]) == *ts && micros(&r[3]) == *received),
            "{symbol}: a row of the unverified update stamped {ts}, received {received}"
        );
    }
    // Where each mismatch gap starts, every level held is deleted.
    let mut gaps = 0;
    for symbol in ["BTC/USD", "ETH/USD", "MINA/GBP"] {
        let coverage = coverage_of(&client, rec, symbol).await;
        for g in coverage.gaps_in(from, to) {
            let (Some(start), Some(_)) = (g.start, g.end) else {
                continue;
            };
            if g.cause != Cause::Mismatch || start < from {
                continue;
            }
            let at: Vec<&Vec<String>> = rows
                .iter()
                .filter(|r| r[1] == symbol && micros(&r[2]) == start.unix_micros())
                .collect();
            assert!(
                !at.is_empty() && at.iter().all(|r| dec(&r[7]).is_zero() && r[4] == "false"),
                "{symbol}: the book is emptied at the gap's start {start}: {at:?}"
            );
            gaps += 1;
        }
    }
    assert!(gaps >= 1, "a mismatch gap in the recording");
}

static DOWNTIME: OnceCell<Recording> = OnceCell::const_new();

/// A recording with a downtime of its collector: the three pairs (MINA/GBP quiet: its snapshot
/// after the restart carries the time of its only change, before the downtime), a collector
/// stopped (SIGTERM) for 6 s and started again on the same journal and database.
async fn downtime() -> &'static Recording {
    DOWNTIME.get_or_init(record_downtime).await
}

async fn record_downtime() -> Recording {
    let dir = tempfile::tempdir().unwrap();
    let db: TestDb = fresh_db().await;
    let config = SimConfig {
        pairs: three_pairs(),
        rate: 60.0,
        seed: 43,
        ..SimConfig::default()
    };
    let sim = Simulator::bind(config).await.expect("the simulator starts");
    let verified = "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok";
    let first = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    wait_count(&db.url, verified, 150, Duration::from_secs(60), || {
        first.log()
    })
    .await;
    let (status, _, log) = first.stop();
    assert!(status.success(), "{log}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = count(&db.url, verified).await;
    let second = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    wait_count(
        &db.url,
        verified,
        before + 150,
        Duration::from_secs(60),
        || second.log(),
    )
    .await;
    let (status, _, log) = second.stop();
    assert!(status.success(), "{log}");
    sim.shutdown().await.unwrap();
    // Whatever the database had not taken at a stop is loaded from the journal.
    let out = krakenbook()
        .args(["import", "--journal-dir"])
        .arg(dir.path().join("journal"))
        .args(["--database-url", &db.url])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = connect(&db.url).await;
    let row = client
        .query_one(
            "SELECT min(collector), min(\"timestamp\"), max(\"timestamp\")
               FROM kraken_orderbook_messages WHERE channel = 'book'
                AND message_type IN ('snapshot', 'update')",
            &[],
        )
        .await
        .unwrap();
    Recording {
        url: db.url.clone(),
        collector: row.get(0),
        first: row.get(1),
        last: row.get(2),
        _db: db,
    }
}

/// A collector that was not running is a `no_collector` gap: the file empties every book where
/// it starts, writes nothing inside it (the quiet pair's snapshot after the restart is stamped
/// before the downtime: written as stored, it would refill the book inside the gap), and writes
/// the book where coverage starts again; each kind of consumer holds `book --at`'s book at every
/// verified instant and an empty book inside the downtime.
#[tokio::test]
async fn a_collector_downtime_is_an_empty_book_in_every_consumer_until_coverage_starts_again() {
    let rec = downtime().await;
    let client = connect(&rec.url).await;
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = rec.all();
    let (f, tt) = range_args(rec);
    let symbols = ["BTC/USD", "ETH/USD", "MINA/GBP"];
    let csv = dir.path().join("all.csv");
    let out = export_to(
        rec,
        &[
            "--symbol",
            "BTC/USD,ETH/USD,MINA/GBP",
            "--from",
            &f,
            "--to",
            &tt,
        ],
        &csv,
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    // A coverage start per symbol at the beginning and after the downtime; a gap each.
    assert!(summary.contains("6 coverage starts"), "{summary}");
    assert!(summary.contains("3 gaps cleared"), "{summary}");
    let (_, rows) = read_csv(&csv);
    for symbol in symbols {
        let coverage = coverage_of(&client, rec, symbol).await;
        let downtime: Vec<_> = coverage
            .gaps_in(from, to)
            .filter(|g| g.cause == Cause::NoCollector && g.start.is_some() && g.end.is_some())
            .collect();
        assert_eq!(downtime.len(), 1, "{symbol}: {:?}", coverage.gaps);
        let (start, end) = (
            downtime[0].start.unwrap().unix_micros(),
            downtime[0].end.unwrap().unix_micros(),
        );
        assert!(end - start > 5_000_000, "{symbol}: {start}..{end}");
        let mine: Vec<&Vec<String>> = rows.iter().filter(|r| r[1] == symbol).collect();
        // At the gap's start, only deletions, one per level held (a full book each side).
        let at_start: Vec<&&Vec<String>> = mine
            .iter()
            .filter(|r| micros(&r[2]) > start - 1 && micros(&r[2]) <= start + 1)
            .filter(|r| dec(&r[7]).is_zero())
            .collect();
        assert!(at_start.len() >= DEPTH, "{symbol}: {at_start:?}");
        // Inside the gap, nothing.
        let inside: Vec<&&Vec<String>> = mine
            .iter()
            .filter(|r| micros(&r[2]) > start + 1 && micros(&r[2]) < end)
            .collect();
        assert!(
            inside.is_empty(),
            "{symbol}: rows inside the downtime: {inside:?}"
        );
        // Where it ends, the book, as snapshot rows stamped there.
        let at_end = mine
            .iter()
            .filter(|r| micros(&r[2]) == end && r[4] == "true")
            .count();
        assert_eq!(
            at_end,
            2 * DEPTH,
            "{symbol}: the book where coverage starts again"
        );
    }
    let compared = assert_file_rebuilds_the_books(
        &client,
        rec,
        &symbols,
        from,
        to,
        &rows,
        &mut BookAt::default(),
    )
    .await;
    assert!(compared.verified > 300, "{compared:?}");
    assert!(compared.in_gaps >= 3 * 3, "{compared:?}");
}

#[tokio::test]
async fn export_snapshots_hold_the_verified_book_at_each_instant_and_skip_gaps() {
    let rec = recording().await;
    let client = connect(&rec.url).await;
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = rec.all();
    let (f, tt) = (from.to_string(), to.to_string());
    let csv = dir.path().join("snap.csv");
    let depth = 10;
    let args = [
        "--kind",
        "snapshots",
        "--depth",
        "10",
        "--interval",
        "100ms",
        "--symbol",
        "BTC/USD,ETH/USD,MINA/GBP",
        "--from",
        &f,
        "--to",
        &tt,
    ];
    let out = export_to(rec, &args, &csv);
    let summary = String::from_utf8_lossy(&out.stdout);
    let (header, rows) = read_csv(&csv);
    assert_eq!(header.len(), 4 + depth * 4);
    assert_eq!(
        &header[..8],
        [
            "exchange",
            "symbol",
            "timestamp",
            "local_timestamp",
            "asks[0].price",
            "asks[0].amount",
            "bids[0].price",
            "bids[0].amount"
        ]
    );
    assert_eq!(header[4 + 4 * 9], "asks[9].price");

    // Each row is the book `krakenbook book --at` rebuilds for that instant, verified, and its
    // local_timestamp is when the last message applied was received.
    let mut per_symbol: HashMap<String, Vec<i64>> = HashMap::new();
    for row in &rows {
        let ts = micros(&row[2]);
        assert_eq!(ts % 100_000, 0, "instants on multiples of the interval");
        let at = Timestamp::from_unix_nanos(ts * 1000);
        let book = readback::book_at(&client, &row[1], at, depth, Some(&rec.collector))
            .await
            .unwrap();
        assert_eq!(book.checksum_ok, Some(true), "{row:?}\n{book:?}");
        // The message may have been received on more than one connection (a resync snapshot of
        // a quiet pair repeats the last one byte for byte, stored once with both receipts): the
        // export may have applied either copy.
        let received: Vec<i64> = client
            .query(
                "SELECT c.received_at FROM krakenbook_copies c
                  WHERE c.collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $1)
                    AND c.row_seq = (SELECT row_seq FROM krakenbook_copies
                                      WHERE collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $1)
                                        AND seq = $2)",
                &[&rec.collector, &book.last_seq.unwrap()],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, Timestamp>(0).unix_micros())
            .collect();
        assert!(received.contains(&micros(&row[3])), "{row:?}: {received:?}");
        // `book --at` and the export ask the same gap record: a written instant is no gap.
        assert!(book.gap.is_none(), "{row:?}\n{book:?}");
        for i in 0..depth {
            for (k, side) in [&book.asks, &book.bids].into_iter().enumerate() {
                let col = 4 + i * 4 + k * 2;
                match side.get(i) {
                    Some(l) => {
                        assert_eq!(row[col], l.price.to_string(), "{} {row:?}", header[col]);
                        assert_eq!(
                            row[col + 1],
                            l.qty.to_string(),
                            "{} {row:?}",
                            header[col + 1]
                        );
                    }
                    None => assert_eq!((&row[col][..], &row[col + 1][..]), ("", "")),
                }
            }
        }
        per_symbol.entry(row[1].clone()).or_default().push(ts);
    }
    let instants = krakenbook::export::snapshots::boundaries(from, to, 100_000).count();
    assert!(instants > 50, "{instants}");
    for symbol in ["BTC/USD", "ETH/USD", "MINA/GBP"] {
        let n = per_symbol.get(symbol).map_or(0, Vec::len);
        assert!(
            n > instants / 2 && n < instants,
            "{symbol}: {n} of {instants}"
        );
    }
    assert!(summary.contains("instants skipped"), "{summary}");
    // And every instant skipped is one `book --at` does not vouch for.
    for symbol in ["BTC/USD", "ETH/USD", "MINA/GBP"] {
        let written = per_symbol.get(symbol).cloned().unwrap_or_default();
        for at in krakenbook::export::snapshots::boundaries(from, to, 100_000) {
            if written.contains(&at.unix_micros()) {
                continue;
            }
            match readback::book_at(&client, symbol, at, depth, Some(&rec.collector)).await {
                Ok(book) => assert!(
                    !book.is_verified(),
                    "{symbol} at {at} was skipped: {book:?}"
                ),
                Err(readback::ReadbackError::NoStart { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    // From the lost connection to each symbol's resync, no instant is written.
    let events = client
        .query(
            "SELECT d.time, r.symbol, r.time FROM kraken_feed_events d
               JOIN kraken_feed_events r ON r.event = 'resynced' AND r.time > d.time
              WHERE d.event = 'disconnected'",
            &[],
        )
        .await
        .unwrap();
    let mut in_gaps = 0;
    for e in &events {
        let (lost, symbol, back): (Timestamp, String, Timestamp) = (e.get(0), e.get(1), e.get(2));
        // The gap ends, on Kraken's clock, at the resync's snapshot: its timestamp (the book's
        // last change) may precede its receipt, and the book is verified from there.
        let snapshot: Option<Timestamp> = client
            .query_one(
                "SELECT min(\"timestamp\") FROM krakenbook_copies
                  WHERE symbol = $1 AND kind = 's' AND received_at > $2 AND received_at <= $3",
                &[&symbol, &lost, &back],
            )
            .await
            .unwrap()
            .get(0);
        let back = snapshot.map_or(back, |s| s.min(back));
        let (lo, hi) = (lost.unix_micros(), back.unix_micros());
        let written = per_symbol.get(&symbol).cloned().unwrap_or_default();
        let inside: Vec<&i64> = written.iter().filter(|&&t| t > lo && t < hi).collect();
        assert!(
            inside.is_empty(),
            "{symbol}: rows inside its gap {lo}..{hi}: {inside:?}"
        );
        in_gaps += krakenbook::export::snapshots::boundaries(
            Timestamp::from_unix_nanos(lo * 1000 + 1000),
            Timestamp::from_unix_nanos(hi * 1000),
            100_000,
        )
        .count();
    }
    assert!(in_gaps > 0, "the reconnection gap spans an instant");

    // Parquet: the same rows.
    let pq = dir.path().join("snap.parquet");
    export_to(rec, &[&args[..], &["--quiet"]].concat(), &pq);
    let (names, prows) = parquet(&pq);
    assert_parquet_matches_csv(&header, &rows, &names, &prows);
}

/// MINA/GBP never changes in the recording: every snapshot of it, the reconnection's too,
/// carries the first one's Kraken timestamp. An export whose first instants fall after that
/// timestamp but before the first connection's coverage begins (its snapshot's receipt) must not
/// apply the reconnection's snapshot there: from the first covered instant to the drop, each
/// row is the first connection's book, received then, never a receipt from after the drop.
#[tokio::test]
async fn a_quiet_pairs_reconnection_snapshot_waits_for_its_own_stream() {
    let rec = recording().await;
    let client = connect(&rec.url).await;
    let cov = coverage_of(&client, rec, "MINA/GBP").await;
    assert!(cov.streams.len() >= 2, "{cov:?}");
    let (first, later) = (&cov.streams[0], &cov.streams[1]);
    let span = &first.spans[0];
    // Its snapshot: stamped before the span begins, received as it begins.
    let (stamped, received): (Timestamp, Timestamp) = {
        let row = client
            .query_one(
                "SELECT \"timestamp\", received_at FROM krakenbook_book
                  WHERE symbol = 'MINA/GBP' AND seq = $1
                    AND collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $2)",
                &[&span.start_seq, &rec.collector],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(stamped < span.start, "{stamped} {span:?}");
    // The precondition: the later stream's snapshot is stamped the same (the pair is quiet).
    let again: Timestamp = client
        .query_one(
            "SELECT \"timestamp\" FROM krakenbook_book
              WHERE symbol = 'MINA/GBP' AND seq = $1
                AND collector_id = (SELECT id FROM krakenbook_collectors WHERE name = $2)",
            &[&later.spans[0].start_seq, &rec.collector],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, stamped);
    // Every millisecond from the snapshot's stamp to 50 ms into the span: a few instants before
    // coverage begins (skipped), then covered ones.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("quiet.csv");
    let (f, tt) = (
        stamped.to_string(),
        span.start.add_nanos(50_000_000).to_string(),
    );
    let mut args: Vec<&str> =
        "--quiet --kind snapshots --depth 10 --interval 1ms --symbol MINA/GBP --from"
            .split(' ')
            .collect();
    args.extend([f.as_str(), "--to", &tt]);
    let out = export_to(rec, &args, &csv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, rows) = read_csv(&csv);
    assert!(rows.len() >= 45, "{}", rows.len());
    for row in &rows {
        assert!(micros(&row[2]) >= span.start.unix_micros() - 1, "{row:?}");
        assert_eq!(
            micros(&row[3]),
            received.unix_micros(),
            "{row:?}: the later stream's snapshot ({}) applied before its turn",
            later.first_received
        );
    }
}

#[tokio::test]
async fn export_messages_are_the_stored_messages_in_order() {
    let rec = recording().await;
    let client = connect(&rec.url).await;
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = rec.all();
    let (f, tt) = (from.to_string(), to.to_string());
    let csv = dir.path().join("messages.csv");
    let args = [
        "--quiet",
        "--kind",
        "messages",
        "--symbol",
        "BTC/USD,MINA/GBP",
        "--from",
        &f,
        "--to",
        &tt,
    ];
    export_to(rec, &args, &csv);
    let (header, rows) = read_csv(&csv);
    assert_eq!(
        header,
        [
            "timestamp",
            "local_timestamp",
            "collector",
            "seq",
            "conn_id",
            "channel",
            "type",
            "symbol",
            "checksum",
            "checksum_ok",
            "raw_message"
        ]
    );
    let symbols = vec![t("BTC/USD"), t("MINA/GBP")];
    let want: Vec<Vec<String>> = client
        .query(
            "SELECT (extract(epoch FROM \"timestamp\") * 1000000)::bigint::text,
                    (extract(epoch FROM received_at) * 1000000)::bigint::text,
                    collector, seq::text, coalesce(conn_id::text, ''), channel, message_type,
                    coalesce(symbol, ''), coalesce(checksum::text, ''),
                    coalesce(checksum_ok::text, ''), coalesce(raw_message::text, raw_text, '')
               FROM kraken_orderbook_messages
              WHERE symbol = ANY($1) AND \"timestamp\" >= $2 AND \"timestamp\" < $3
              ORDER BY kraken_orderbook_messages.seq",
            &[&symbols, &from, &to],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (0..11).map(|i| r.get::<_, String>(i)).collect())
        .collect();
    assert_eq!(rows.len(), want.len());
    for (i, (r, w)) in rows.iter().zip(&want).enumerate() {
        assert_eq!(r, w, "message {i}");
    }
    // Book messages, acknowledgements, and the one mismatch or none (it may be ETH/USD's).
    assert!(rows.iter().any(|r| r[6] == "subscribe"));
    assert!(rows.iter().filter(|r| r[6] == "snapshot").count() >= 3);
    let raw: serde_json::Value = serde_json::from_str(&rows.last().unwrap()[10]).unwrap();
    assert_eq!(raw["channel"], "book");

    // To standard output: the same bytes.
    let stdout = export(rec, &[&args[..], &["-o", "-"]].concat()).stdout;
    assert!(
        stdout == std::fs::read(&csv).unwrap(),
        "stdout holds the same CSV"
    );

    let pq = dir.path().join("messages.parquet");
    export_to(rec, &args, &pq);
    let (names, prows) = parquet(&pq);
    assert_parquet_matches_csv(&header, &rows, &names, &prows);
}

/// Runs a command expected to fail; its standard error.
fn fails(rec: &Recording, args: &[&str]) -> String {
    let out = krakenbook()
        .args(args)
        .args(["--database-url", &rec.url])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

#[tokio::test]
async fn export_refuses_bad_requests_with_one_line_that_says_why() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.csv");
    let o = out.to_str().unwrap();
    let png_path = dir.path().join("out.png");
    let png = png_path.to_str().unwrap();
    let (from, to) = rec.all();
    let (f, tt) = (from.to_string(), to.to_string());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "export", "--symbol", "DOGE/EUR", "--from", &f, "--to", &tt, "-o", o,
            ],
            "unknown symbol DOGE/EUR: it was never recorded here (recorded: BTC/USD, ETH/USD, MINA/GBP)",
        ),
        (
            vec![
                "export",
                "--symbol",
                "BTC/USD",
                "--from",
                "2001-01-01",
                "--to",
                "2001-01-02",
                "-o",
                o,
            ],
            "no data of BTC/USD from 2001-01-01T00:00:00.000000Z to 2001-01-02T00:00:00.000000Z: it is recorded from",
        ),
        (
            vec![
                "export", "--symbol", "BTC/USD", "--from", &tt, "--to", &f, "-o", o,
            ],
            "the range is empty",
        ),
        (
            vec![
                "export",
                "--symbol",
                "BTC/USD",
                "--from",
                &f,
                "--to",
                &tt,
                "-o",
                "/nonexistent-dir/x.csv",
            ],
            "cannot write /nonexistent-dir/x.csv: the directory /nonexistent-dir does not exist",
        ),
        (
            vec![
                "export", "--symbol", "BTC/USD", "--from", &f, "--to", &tt, "--format", "parquet",
                "-o", "-",
            ],
            "only CSV goes to standard output",
        ),
        (
            vec![
                "export",
                "--symbol",
                "BTC/USD",
                "--from",
                &f,
                "--to",
                &tt,
                "--kind",
                "snapshots",
                "--depth",
                "0",
                "-o",
                o,
            ],
            "--depth 0: give 1 to 1000 levels a side",
        ),
        (
            vec![
                "export",
                "--symbol",
                "BTC/USD",
                "--from",
                &f,
                "--to",
                &tt,
                "--collector",
                "nobody",
                "-o",
                o,
            ],
            "collector nobody recorded nothing of BTC/USD",
        ),
        (
            vec!["plot", "DOGE/EUR", "--from", &f, "--to", &tt, "-o", png],
            "unknown symbol DOGE/EUR",
        ),
        (
            vec![
                "plot", "BTC/USD", "--from", &f, "--to", &tt, "--width", "200", "--height", "100",
                "-o", png,
            ],
            "too small for the chart",
        ),
        (
            vec![
                "plot",
                "BTC/USD",
                "--from",
                &f,
                "--to",
                &tt,
                "-o",
                dir.path().to_str().unwrap(),
            ],
            "it is a directory",
        ),
    ];
    for (args, want) in cases {
        let err = fails(rec, &args);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}\nwanted: {want}");
    }
    // Clap's own: the reason on the first line.
    let err = fails(
        rec,
        &[
            "export",
            "--symbol",
            "BTC/USD",
            "--from",
            "yesterday",
            "-o",
            o,
        ],
    );
    assert!(
        err.lines()
            .next()
            .unwrap()
            .contains("invalid time \"yesterday\""),
        "{err}"
    );
    let err = fails(
        rec,
        &[
            "export",
            "--symbol",
            "BTC/USD",
            "--from",
            &f,
            "--interval",
            "5x",
            "-o",
            o,
        ],
    );
    assert!(
        err.lines()
            .next()
            .unwrap()
            .contains("write a number and a unit"),
        "{err}"
    );
    // Nothing was left behind: no output, no temporary file.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn export_and_plot_help_show_examples() {
    for cmd in ["export", "plot"] {
        let out = krakenbook().args([cmd, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(help.contains("Examples:"), "{cmd}: {help}");
        assert!(
            help.contains(&format!("krakenbook {cmd} ")),
            "{cmd}: {help}"
        );
    }
    let out = krakenbook().args(["export", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("incremental_book_L2") && help.contains("book_snapshot_N"));
}

// ---- Output files -------------------------------------------------------------------------

/// A device node of the test's own (`mknod`, as root) standing for `/dev/null` (minor 3) or
/// `/dev/full` (minor 7), so that a regression cannot replace the machine's; where mknod is not
/// allowed, the machine's own (then this process cannot replace it either).
pub(crate) fn device(dir: &Path, minor: u32) -> PathBuf {
    let own = dir.join(if minor == 7 { "full" } else { "null" });
    let made = Command::new("mknod")
        .arg(&own)
        .args(["c", "1", &minor.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made {
        own
    } else {
        PathBuf::from(if minor == 7 { "/dev/full" } else { "/dev/null" })
    }
}

pub(crate) fn is_char_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

pub(crate) fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

pub(crate) fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

/// The names in `dir`, sorted.
pub(crate) fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Standard error of a failed run, trimmed; the run must have failed.
fn failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// `-o /dev/full` as root replaced the device with a regular file (the temporary file renamed
/// over it). A device is written in place: the error is the device's, on one line, and the
/// device is still a device; through a symlink too.
#[tokio::test]
async fn export_to_dev_full_fails_with_one_line_and_the_device_stays_a_device() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let full = device(dir.path(), 7);
    let link = dir.path().join("link-to-full");
    std::os::unix::fs::symlink(&full, &link).unwrap();
    let (f, tt) = range_args(rec);
    for out in [&full, &link] {
        let err = failure(&export_output(
            rec,
            &[
                "--symbol",
                "BTC/USD",
                "--from",
                &f,
                "--to",
                &tt,
                "-o",
                out.to_str().unwrap(),
            ],
        ));
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(
            err,
            format!(
                "error: cannot write {}: No space left on device (os error 28)",
                out.display()
            )
        );
        assert!(
            is_char_device(&full),
            "{} is still a device",
            full.display()
        );
    }
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), full);
    // Nothing else appeared: no temporary file, no precision file.
    let mut want = vec![t("link-to-full")];
    if full.starts_with(dir.path()) {
        want.insert(0, t("full"));
    }
    assert_eq!(names(dir.path()), want);
}

#[tokio::test]
async fn export_to_a_device_writes_in_place() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let null = device(dir.path(), 3);
    let (f, tt) = range_args(rec);
    let out = export(
        rec,
        &[
            "--symbol",
            "BTC/USD",
            "--from",
            &f,
            "--to",
            &tt,
            "-o",
            null.to_str().unwrap(),
        ],
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("written in place"), "{summary}");
    assert!(is_char_device(&null));
    assert!(
        names(dir.path()).iter().all(|n| n == "null"),
        "{:?}",
        names(dir.path())
    );
}

/// A FIFO was replaced by a regular file; it is streamed into, and its reader gets exactly the
/// file an export to a regular file holds.
#[tokio::test]
async fn export_into_a_fifo_streams_to_its_reader_and_leaves_the_fifo() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.csv");
    mkfifo(&fifo);
    let (f, tt) = range_args(rec);
    let args = [
        "--quiet",
        "--symbol",
        "BTC/USD,ETH/USD",
        "--from",
        &f,
        "--to",
        &tt,
    ];
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    export_to(rec, &args, &fifo);
    let streamed = reader.join().unwrap();
    let file = dir.path().join("file.csv");
    export_to(rec, &args, &file);
    assert!(
        streamed == std::fs::read(&file).unwrap(),
        "the reader got the whole file"
    );
    assert!(is_fifo(&fifo), "the FIFO is still a FIFO");
    // No precision file beside a FIFO (only beside the regular file).
    assert_eq!(
        names(dir.path()),
        ["file.csv", "file.csv.precision.json", "pipe.csv"]
    );
}

/// A symlink was replaced by a regular file. Through a symlink, the file it points to is
/// replaced (its temporary file beside it, not beside the link) and the link kept; a dangling
/// link gets its file.
#[tokio::test]
async fn export_through_a_symlink_replaces_the_file_it_points_to_and_keeps_the_link() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("real.csv"), "old").unwrap();
    let link = dir.path().join("link.csv");
    std::os::unix::fs::symlink("data/real.csv", &link).unwrap();
    let dangling = dir.path().join("dangling.csv");
    std::os::unix::fs::symlink("data/new.csv", &dangling).unwrap();
    let (f, tt) = range_args(rec);
    let args = ["--quiet", "--symbol", "MINA/GBP", "--from", &f, "--to", &tt];
    for l in [&link, &dangling] {
        export_to(rec, &args, l);
        assert!(
            std::fs::symlink_metadata(l)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("data/real.csv")
    );
    assert_eq!(
        std::fs::read_link(&dangling).unwrap(),
        Path::new("data/new.csv")
    );
    for target in ["real.csv", "new.csv"] {
        let (header, rows) = read_csv(&data.join(target));
        assert_eq!(header, TARDIS_L2, "{target}");
        assert!(!rows.is_empty());
    }
    assert_eq!(names(&data), ["new.csv", "real.csv"]);
    assert_eq!(
        names(dir.path()),
        [
            "dangling.csv",
            "dangling.csv.precision.json",
            "data",
            "link.csv",
            "link.csv.precision.json"
        ]
    );
}

/// Ctrl-C mid-export left a hidden `.NAME.part` of hundreds of MB. Here the export has written
/// its file and waits to open its precision file (a FIFO nobody reads): a real SIGINT or
/// SIGTERM sent to the process removes the written temporary file, and it exits as a shell
/// reports a process killed by the signal.
#[tokio::test]
async fn an_export_stopped_by_ctrl_c_or_sigterm_leaves_no_partial_file() {
    let rec = recording().await;
    let (f, tt) = range_args(rec);
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("l2.csv");
        mkfifo(&dir.path().join("l2.csv.precision.json"));
        let mut child = krakenbook()
            .args(["export", "--quiet", "--database-url", &rec.url])
            .args([
                "--symbol",
                "BTC/USD,ETH/USD,MINA/GBP",
                "--from",
                &f,
                "--to",
                &tt,
            ])
            .arg("-o")
            .arg(&out)
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the temporary file to hold the whole export (its size stops changing while
        // the process waits on the FIFO).
        let started = Instant::now();
        let mut last = (0, Instant::now());
        loop {
            let part = names(dir.path())
                .into_iter()
                .find(|n| n.starts_with(".l2.csv.") && n.ends_with(".part"));
            let size = part
                .map(|p| std::fs::metadata(dir.path().join(p)).map_or(0, |m| m.len()))
                .unwrap_or(0);
            if size > 0 && size == last.0 && last.1.elapsed() > Duration::from_millis(300) {
                break;
            }
            if size != last.0 {
                last = (size, Instant::now());
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "export exited before the signal"
            );
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no temporary file with the export in it: {:?}",
                names(dir.path())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{signal}"), &pid])
                .status()
                .unwrap()
                .success()
        );
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(code), "SIG{signal}");
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            err.trim(),
            format!("error: interrupted by SIG{signal}: the unfinished output was removed"),
            "SIG{signal}"
        );
        assert_eq!(names(dir.path()), ["l2.csv.precision.json"], "SIG{signal}");
        assert!(is_fifo(&dir.path().join("l2.csv.precision.json")));
    }
}

/// A write error on a regular file (here the file-size limit: EFBIG, as a full disk gives
/// ENOSPC) is one line naming the file, and leaves nothing behind.
#[tokio::test]
async fn a_write_error_on_a_file_is_one_line_and_leaves_nothing_behind() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l2.csv");
    let (f, tt) = range_args(rec);
    // The shell ignores SIGXFSZ (an ignored signal stays ignored across exec) and limits the
    // size of the files the export writes to 16 blocks.
    let output = Command::new("sh")
        .args(["-c", "trap '' XFSZ; ulimit -f 16; exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_krakenbook"))
        .args(["export", "--database-url", &rec.url])
        .args([
            "--symbol",
            "BTC/USD,ETH/USD,MINA/GBP",
            "--from",
            &f,
            "--to",
            &tt,
        ])
        .arg("-o")
        .arg(&out)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let err = failure(&output);
    assert_eq!(
        err,
        format!(
            "error: cannot write {}: File too large (os error 27)",
            out.display()
        )
    );
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
}

/// `-o x.csv.gz` and `x.xlsx` wrote CSV under those names. A name that says no format the
/// export writes needs `--format`; one that says another format than `--format` is refused.
#[tokio::test]
async fn export_refuses_a_name_whose_format_it_does_not_write() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let (f, tt) = range_args(rec);
    let base = ["--symbol", "BTC/USD", "--from", &f, "--to", &tt];
    let cases: [(&str, &[&str], &str); 4] = [
        ("x.csv.gz", &[], "cannot tell the format from the name"),
        ("x.xlsx", &[], "cannot tell the format from the name"),
        ("x", &[], "cannot tell the format from the name"),
        (
            "x.csv",
            &["--format", "parquet"],
            "is named as csv but --format is parquet",
        ),
    ];
    for (name, extra, want) in cases {
        let path = dir.path().join(name);
        let err = failure(&export_output(
            rec,
            &[&base[..], extra, &["-o", path.to_str().unwrap()]].concat(),
        ));
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
    }
    assert!(names(dir.path()).is_empty());
    // --format says what a name does not.
    let txt = dir.path().join("x.txt");
    export_to(
        rec,
        &[&base[..], &["--format", "csv", "--quiet"]].concat(),
        &txt,
    );
    assert_eq!(read_csv(&txt).0, TARDIS_L2);
}

/// `--depth 1000` on a depth-25 recording gave 975 empty levels without a word.
#[tokio::test]
async fn export_snapshots_deeper_than_recorded_are_clamped_with_a_warning() {
    let rec = recording().await;
    let dir = tempfile::tempdir().unwrap();
    let (f, tt) = range_args(rec);
    let csv = dir.path().join("deep.csv");
    let out = export_to(
        rec,
        &[
            "--quiet",
            "--kind",
            "snapshots",
            "--depth",
            "1000",
            "--symbol",
            "BTC/USD",
            "--from",
            &f,
            "--to",
            &tt,
        ],
        &csv,
    );
    let (header, rows) = read_csv(&csv);
    assert_eq!(header.len(), 4 + DEPTH * 4);
    assert!(!rows.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "warning: --depth 1000 is deeper than the books recorded (25 levels a side): the snapshots hold 25 levels"
    );
}

/// `export -o - | head` ended with an error once `head` had what it wanted. A reader of
/// standard output that stops early ends the export quietly, with success.
#[tokio::test]
async fn export_to_standard_output_read_by_head_ends_quietly() {
    use std::io::Read;
    let rec = recording().await;
    let (f, tt) = range_args(rec);
    let mut child = krakenbook()
        .args(["export", "--quiet", "--database-url", &rec.url])
        .args(["--kind", "messages", "--symbol", "BTC/USD,ETH/USD,MINA/GBP"])
        .args(["--from", &f, "--to", &tt, "-o", "-"])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // The pipe is closed here: the export's next writes fail with EPIPE.
    let out = child.wait_with_output().unwrap();
    assert!(head.starts_with(b"timestamp,local_timestamp,"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
