//! `krakenbook export` end to end, on data collected from the simulator into a real TimescaleDB
//! ([`crate::recording`]): every file is read back (CSV with the project's CSV reader, Parquet with
//! the parquet crate's reader) and compared with the database row for row and digit for digit,
//! and the books the files describe are compared with the books rebuilt by the book engine.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Output;

use krakenbook::book::Decimal;
use krakenbook::export::csv::CsvReader;
use krakenbook::export::parquet::{Value, read_file};
use krakenbook::readback::{self, BookCursor};
use krakenbook::time::Timestamp;
use tokio_postgres::Client;

use crate::db::connect;
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
    let out = krakenbook()
        .arg("export")
        .args(["--database-url", &rec.url])
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("krakenbook export runs");
    assert!(
        out.status.success(),
        "export {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `krakenbook export ARGS -o PATH`.
fn export_to(rec: &Recording, args: &[&str], path: &Path) -> Output {
    export(rec, &[args, &["-o", path.to_str().unwrap()]].concat())
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut r = CsvReader::new(file);
    let header = r.next_record().unwrap().expect("a header");
    let rows: Vec<Vec<String>> = std::iter::from_fn(|| r.next_record().unwrap()).collect();
    for row in &rows {
        assert_eq!(row.len(), header.len(), "{row:?}");
    }
    (header, rows)
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

type Side = Vec<(Decimal, Decimal)>;

/// A consumer as tardis.dev documents it: rows before a symbol's first snapshot are skipped;
/// amount 0 deletes, anything else sets; a snapshot row after a non-snapshot row clears the
/// book first.
#[derive(Default)]
struct Consumer {
    bids: BTreeMap<Decimal, Decimal>,
    asks: BTreeMap<Decimal, Decimal>,
    started: bool,
    last_snapshot: bool,
}

impl Consumer {
    fn apply(&mut self, row: &[String]) {
        let snapshot = row[4] == "true";
        if !self.started && !snapshot {
            return;
        }
        self.started = true;
        if snapshot && !self.last_snapshot {
            self.bids.clear();
            self.asks.clear();
        }
        self.last_snapshot = snapshot;
        let side = if row[5] == "bid" {
            &mut self.bids
        } else {
            &mut self.asks
        };
        let (price, amount) = (dec(&row[6]), dec(&row[7]));
        if amount.is_zero() {
            side.remove(&price);
        } else {
            side.insert(price, amount);
        }
    }

    fn book(&self) -> (Side, Side) {
        (
            self.bids.iter().rev().map(|(p, q)| (*p, *q)).collect(),
            self.asks.iter().map(|(p, q)| (*p, *q)).collect(),
        )
    }
}

fn view(book: &krakenbook::book::OrderBook, depth: usize) -> (Side, Side) {
    let v = book.view(depth);
    (
        v.bids.iter().map(|l| (l.price, l.qty)).collect(),
        v.asks.iter().map(|l| (l.price, l.qty)).collect(),
    )
}

/// The book after each message, per symbol: (timestamp, local_timestamp, verified, book), one
/// entry per run of messages with the same two times (the file cannot tell them apart).
type Groups = Vec<(i64, i64, bool, (Side, Side))>;

/// What the book engine says, per symbol: the book just before `from` (when verified) and the
/// book after each message in `[from, to)`.
async fn engine_books(
    client: &Client,
    rec: &Recording,
    symbol: &str,
    from: Timestamp,
    to: Timestamp,
) -> (Option<(Side, Side)>, Groups) {
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

/// Replays the file's rows as a tardis consumer and compares the book after each message with
/// the book engine's (where it verified). Returns the number of books compared.
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
        let mut consumer = Consumer::default();
        let mut file_groups: Vec<(i64, i64, (Side, Side))> = Vec::new();
        for (i, row) in mine.iter().enumerate() {
            consumer.apply(row);
            let key = (micros(&row[2]), micros(&row[3]));
            let next = mine.get(i + 1).map(|r| (micros(&r[2]), micros(&r[3])));
            if consumer.started && next != Some(key) {
                file_groups.push((key.0, key.1, consumer.book()));
            }
        }
        let (initial, engine) = engine_books(client, rec, symbol, from, to).await;
        let mut file = file_groups.into_iter().peekable();
        if let Some(first) = file.peek()
            && (first.0, first.1) == (from_us, from_us)
            && engine
                .first()
                .is_none_or(|e| (e.0, e.1) != (from_us, from_us))
        {
            let (_, _, book) = file.next().unwrap();
            let want = initial
                .clone()
                .unwrap_or_else(|| panic!("{symbol}: an initial book the engine does not verify"));
            assert_eq!(book, want, "{symbol}: the book at --from");
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
            "{symbol}: messages in the file and in the database"
        );
        for (k, (f, e)) in file.iter().zip(&engine).enumerate() {
            assert_eq!((f.0, f.1), (e.0, e.1), "{symbol}: message {k}'s times");
            assert!(
                f.2.0.len() <= DEPTH && f.2.1.len() <= DEPTH,
                "{symbol}: message {k}: the file's book holds more than the depth"
            );
            if e.2 {
                assert_eq!(f.2, e.3, "{symbol}: the book after message {k}");
                compared += 1;
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

#[tokio::test]
async fn export_incremental_round_trips_and_the_file_alone_rebuilds_every_verified_book() {
    let rec = recording().await;
    let client = connect(&rec.url).await;
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = rec.all();
    let symbols = ["BTC/USD", "ETH/USD", "MINA/GBP"];
    let (f, tt) = (from.to_string(), to.to_string());
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
    // level (amount 0) without being a snapshot row.
    let stored = stored_levels(&client, rec, &symbols, from, to).await;
    let mut k = 0;
    let mut deletions: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        if k < stored.len() && *row == stored[k] {
            k += 1;
        } else {
            assert!(dec(&row[7]).is_zero() && row[4] == "false", "{row:?}");
            *deletions.entry(row[1].as_str()).or_default() += 1;
        }
    }
    assert_eq!(k, stored.len(), "every stored level is in the file");
    // BTC/USD and ETH/USD move: Kraken's window drops levels past the depth.
    assert!(
        deletions.get("BTC/USD").copied().unwrap_or(0) > 10,
        "{deletions:?}"
    );
    // MINA/GBP never changes: its snapshot after the reconnection directly follows the first
    // one, and the file empties the book in between.
    assert!(
        deletions.get("MINA/GBP").copied().unwrap_or(0) >= DEPTH,
        "{deletions:?}"
    );
    let compared =
        assert_file_rebuilds_the_books(&client, rec, &symbols, from, to, &rows, false).await;
    assert!(compared > 500, "{compared} books compared");

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
    // The file opens with both books at `from`, as snapshot rows stamped `from`, equal to the
    // book `krakenbook book --at` rebuilds.
    let from_us = from.unix_micros().to_string();
    let opening: Vec<&Vec<String>> = rows
        .iter()
        .take_while(|r| r[2] == from_us && r[3] == from_us && r[4] == "true")
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
        assert!(at.checksum_ok && at.gap.is_none(), "{at:?}");
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
    assert!(compared > 100, "{compared} books compared");
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
        assert!(book.checksum_ok, "{row:?}\n{book:?}");
        let received: Timestamp = client
            .query_one(
                "SELECT received_at FROM kraken_orderbook_messages WHERE collector = $1 AND seq = $2",
                &[&rec.collector, &book.last_seq],
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
                    !book.checksum_ok || book.gap.is_some(),
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
            vec!["plot", "DOGE/EUR", "--from", &f, "--to", &tt, "-o", o],
            "unknown symbol DOGE/EUR",
        ),
        (
            vec![
                "plot", "BTC/USD", "--from", &f, "--to", &tt, "--width", "200", "--height", "100",
                "-o", o,
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
