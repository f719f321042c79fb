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

use krakenbook::book::{Decimal, Precision, Side};
use krakenbook::exchange::{Faults, PairSpec, SimConfig, Simulator};
use krakenbook::export::consumers::{
    Book, ClearsToDeepest, Consumer, L2Row, NeverClears, TardisRule,
};
use krakenbook::export::parquet::{Value, read_file};
use krakenbook::readback::{self, BookCursor};
use krakenbook::time::Timestamp;
use tokio::sync::OnceCell;
use tokio_postgres::Client;

use crate::collect::{Collector, finish, wait_count};
use crate::db::{TestDb, connect, fresh_db};
use crate::recording::{Recording, recording};
use crate::support::krakenbook;

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
fn export_to(rec: &Recording, args: &[&str], path: &Path) -> Output {
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

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    read_csv_bytes(&std::fs::read(path).unwrap())
}

fn t(s: &str) -> String {
    s.to_owned()
}

fn micros(s: &str) -> i64 {
    s.parse().unwrap()
}

fn dec(s: &str) -> Decimal {
    Decimal::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

/// The full range of a recording, as `--from` and `--to` texts.
fn range_args(rec: &Recording) -> (String, String) {
    let (from, to) = rec.all();
    (from.to_string(), to.to_string())
}

/// The stored levels in range, as the tardis layout writes them (computed by SQL, not by the
/// exporter's code).
async fn stored_levels(
    client: &Client,
    rec: &Recording,
    symbols: &[&str],
    from: Timestamp,
    to: Timestamp,
) -> Vec<Vec<String>> {
    let symbols: Vec<String> = symbols.iter().map(|s| t(s)).collect();
    client
        .query(
            "SELECT 'kraken', symbol,
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
        .map(|r| (0..8).map(|i| r.get::<_, String>(i)).collect())
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

fn view(book: &krakenbook::book::OrderBook, depth: usize) -> Book {
    let v = book.view(depth);
    (
        v.bids.iter().map(|l| (l.price, l.qty)).collect(),
        v.asks.iter().map(|l| (l.price, l.qty)).collect(),
    )
}

/// The book after each message, per symbol: (timestamp, local_timestamp, verified, book), one
/// entry per run of messages with the same two times (the file cannot tell them apart).
type Groups = Vec<(i64, i64, bool, Book)>;

/// What the book engine says, per symbol: the book just before `from` (when verified) and the
/// book after each message in `[from, to)`.
async fn engine_books(
    client: &Client,
    rec: &Recording,
    symbol: &str,
    from: Timestamp,
    to: Timestamp,
) -> (Option<Book>, Groups) {
    let before = from.add_nanos(-1);
    let start = BookCursor::find_start_or_first(client, symbol, before, to, &rec.collector)
        .await
        .unwrap()
        .expect("a start for the symbol");
    let mut cursor = BookCursor::open(client, symbol, start, to.add_nanos(-1))
        .await
        .unwrap();
    let mut initial = None;
    let mut groups: Groups = Vec::new();
    while let Some(step) = cursor.next().await.unwrap() {
        let verified = step.verified == Some(true);
        if step.timestamp < from {
            initial = verified.then(|| view(step.book, DEPTH));
            continue;
        }
        let key = (step.timestamp.unix_micros(), step.received_at.unix_micros());
        let entry = (key.0, key.1, verified, view(step.book, DEPTH));
        match groups.last_mut() {
            Some(last) if (last.0, last.1) == key => *last = entry,
            _ => groups.push(entry),
        }
    }
    (initial, groups)
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

/// Replays the file's rows of each symbol through each kind of consumer and compares its book
/// after each message with the book engine's (where it verified). Returns the number of books
/// compared.
async fn assert_file_rebuilds_the_books(
    client: &Client,
    rec: &Recording,
    symbols: &[&str],
    from: Timestamp,
    to: Timestamp,
    rows: &[Vec<String>],
    expect_initial: bool,
) -> usize {
    let from_us = from.unix_micros();
    let mut compared = 0;
    for &symbol in symbols {
        let mine: Vec<&Vec<String>> = rows.iter().filter(|r| r[1] == symbol).collect();
        let (initial, engine) = engine_books(client, rec, symbol, from, to).await;
        for (name, mut consumer) in consumers() {
            // Books from the symbol's first snapshot row on (rows before it describe no book).
            let mut seen_snapshot = false;
            let mut file_groups: Vec<(i64, i64, Book)> = Vec::new();
            for (i, row) in mine.iter().enumerate() {
                consumer.apply(&l2_row(row));
                seen_snapshot |= row[4] == "true";
                let key = (micros(&row[2]), micros(&row[3]));
                let next = mine.get(i + 1).map(|r| (micros(&r[2]), micros(&r[3])));
                if seen_snapshot && next != Some(key) {
                    file_groups.push((key.0, key.1, consumer.book()));
                }
            }
            let mut file = file_groups.into_iter().peekable();
            if let Some(first) = file.peek()
                && (first.0, first.1) == (from_us, from_us)
                && engine
                    .first()
                    .is_none_or(|e| (e.0, e.1) != (from_us, from_us))
            {
                let (_, _, book) = file.next().unwrap();
                let want = initial.clone().unwrap_or_else(|| {
                    panic!("{symbol}: an initial book the engine does not verify")
                });
                assert_eq!(book, want, "{symbol}, {name}: the book at --from");
                compared += 1;
            } else {
                assert!(
                    !expect_initial,
                    "{symbol}: the file does not open with the book at --from"
                );
            }
            let file: Vec<_> = file.collect();
            assert_eq!(
                file.len(),
                engine.len(),
                "{symbol}, {name}: messages in the file and in the database"
            );
            for (k, (f, e)) in file.iter().zip(&engine).enumerate() {
                assert_eq!((f.0, f.1), (e.0, e.1), "{symbol}: message {k}'s times");
                if e.2 {
                    assert_eq!(f.2, e.3, "{symbol}, {name}: the book after message {k}");
                    compared += 1;
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

/// Checks the rows that are not stored levels: each is a deletion (`amount` 0, not a snapshot
/// row) or a snapshot end (the symbol's previous row, a snapshot row, again as an update).
/// Returns the deletions per symbol.
fn classify_added_rows<'a>(
    rows: &'a [Vec<String>],
    stored: &[Vec<String>],
) -> HashMap<&'a str, usize> {
    let mut k = 0;
    let mut deletions: HashMap<&str, usize> = HashMap::new();
    let mut previous: HashMap<&str, &Vec<String>> = HashMap::new();
    for row in rows {
        if k < stored.len() && *row == stored[k] {
            k += 1;
        } else if dec(&row[7]).is_zero() && row[4] == "false" {
            *deletions.entry(row[1].as_str()).or_default() += 1;
        } else {
            let prev = previous.get(row[1].as_str()).expect("a row before");
            let mut as_update = (*prev).clone();
            as_update[4] = t("false");
            assert!(
                prev[4] == "true" && *row == as_update,
                "neither stored, a deletion nor a snapshot end: {row:?} after {prev:?}"
            );
        }
        previous.insert(row[1].as_str(), row);
    }
    assert_eq!(k, stored.len(), "every stored level is in the file");
    deletions
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

    let (header, rows) = read_csv(&csv);
    assert_eq!(header, TARDIS_L2);
    // The stored rows are all in the file, unchanged and in order; every other row deletes a
    // level (amount 0) without being a snapshot row, or ends a snapshot.
    let stored = stored_levels(&client, rec, &symbols, from, to).await;
    let deletions = classify_added_rows(&rows, &stored);
    // BTC/USD and ETH/USD move: Kraken's window drops levels past the depth.
    assert!(
        deletions.get("BTC/USD").copied().unwrap_or(0) > 10,
        "{deletions:?}"
    );
    // MINA/GBP never changes: before its snapshot after the reconnection, the file empties
    // the book the first one set.
    assert!(
        deletions.get("MINA/GBP").copied().unwrap_or(0) >= DEPTH,
        "{deletions:?}"
    );
    let compared =
        assert_file_rebuilds_the_books(&client, rec, &symbols, from, to, &rows, false).await;
    assert!(compared > 1500, "{compared} books compared");

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

    // --stored-only: exactly the stored rows.
    let only = dir.path().join("stored.csv");
    export_to(rec, &[&all[..], &["--stored-only"]].concat(), &only);
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
        .take_while(|r| r[2] == from_us && r[3] == from_us)
        .filter(|r| r[4] == "true")
        .collect();
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
    let compared =
        assert_file_rebuilds_the_books(&client, rec, &symbols, from, to, &rows, true).await;
    assert!(compared > 300, "{compared} books compared");
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
    let pair = |s: &str, p: u8, rate: Option<f64>| PairSpec {
        symbol: s.into(),
        precision: Precision { price: p, qty: 8 },
        mid: None,
        rate,
    };
    let mut config = SimConfig {
        pairs: vec![
            pair("BTC/USD", 1, None),
            pair("ETH/USD", 2, None),
            pair("MINA/GBP", 4, Some(0.0)),
        ],
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
/// bid in the top 25): with a deletion of every held level before each snapshot, each kind of
/// consumer holds the engine's book after every message, in one file per symbol and in one
/// file of all.
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
    let precisions = [("BTC/USD", 1, 8), ("ETH/USD", 2, 8), ("MINA/GBP", 4, 8)];
    let mut all_rows = Vec::new();
    for (symbol, price, qty) in precisions {
        let name = format!("l2_{}.csv", symbol.replace('/', "-"));
        let path = dir.path().join(&name);
        assert!(summary.contains(&name), "{summary}");
        let (header, rows) = read_csv(&path);
        assert_eq!(header, TARDIS_L2);
        assert!(rows.iter().all(|r| r[1] == symbol), "{name}: one symbol");
        let stored = stored_levels(&client, rec, &[symbol], from, to).await;
        let deletions = classify_added_rows(&rows, &stored);
        assert!(deletions[symbol] > 0, "{symbol}: {deletions:?}");
        let compared =
            assert_file_rebuilds_the_books(&client, rec, &[symbol], from, to, &rows, false).await;
        // MINA/GBP never changes: a book per snapshot, per consumer.
        assert!(compared >= 9, "{symbol}: {compared} books compared");
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
        all_rows.extend(rows);
    }
    // Soon after each snapshot (a reconnection, a resubscription), the books the consumers hold
    // are `book --at`'s (at the third message after it: the snapshot's own instant may still
    // count as the gap it ends).
    let resyncs = client
        .query(
            "SELECT s.symbol, (SELECT m.\"timestamp\" FROM kraken_orderbook_messages m
                                WHERE m.symbol = s.symbol AND m.seq > s.seq AND m.channel = 'book'
                                  AND m.message_type IN ('snapshot', 'update')
                                ORDER BY m.seq OFFSET 2 LIMIT 1)
               FROM kraken_orderbook_messages s
              WHERE s.message_type = 'snapshot' AND s.checksum_ok ORDER BY s.seq",
            &[],
        )
        .await
        .unwrap();
    let mut checked = 0;
    for r in &resyncs {
        let (symbol, at): (String, Option<Timestamp>) = (r.get(0), r.get(1));
        let Some(at) = at else {
            continue;
        };
        let book = readback::book_at(&client, &symbol, at, DEPTH, Some(&rec.collector))
            .await
            .unwrap();
        if !book.is_verified() {
            eprintln!("{symbol} at {at}: not checked: {book:?}");
            continue;
        }
        let want: Book = (
            book.bids.iter().map(|l| (l.price, l.qty)).collect(),
            book.asks.iter().map(|l| (l.price, l.qty)).collect(),
        );
        let at_us = at.unix_micros();
        for (name, mut consumer) in consumers() {
            for row in all_rows
                .iter()
                .filter(|row| row[1] == symbol && micros(&row[2]) <= at_us)
            {
                consumer.apply(&l2_row(row));
            }
            assert_eq!(consumer.book(), want, "{symbol} at {at}, {name}: book --at");
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "{checked} snapshots checked against book --at"
    );

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
        assert_file_rebuilds_the_books(&client, rec, &symbols, from, to, &rows, false).await;
    assert!(compared > 300, "{compared} books compared");
    let json: BTreeMap<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("all.csv.precision.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        json.keys().collect::<Vec<_>>(),
        ["BTC/USD", "ETH/USD", "MINA/GBP"]
    );
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
        let received: Timestamp = client
            .query_one(
                "SELECT received_at FROM kraken_orderbook_messages WHERE collector = $1 AND seq = $2",
                &[&rec.collector, &book.last_seq.unwrap()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(micros(&row[3]), received.unix_micros(), "{row:?}");
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
            .contains("invalid timestamp \"yesterday\""),
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
        err.lines().next().unwrap().contains("the unit must be"),
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
