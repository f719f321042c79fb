//! The cold tier end to end: a recording of simulated pairs over several small chunks (5 s), the
//! older half moved to Parquet files by `krakenbook archive`, and every read command asked the
//! same questions before and after. Also: an interrupted archive leaves the database whole, a
//! tampered file is caught, an import into an archived range is refused, and the files read with
//! the `parquet` crate alone give the exact decimals.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use krakenbook::archive::columns::{Cell, CellRef, TableWriter, read_table};
use krakenbook::archive::records::{BookRec, Record as _};
use krakenbook::exchange::{Faults, SimConfig, Simulator};
use krakenbook::time::Timestamp;

use crate::collect::{Collector, finish, wait_count};
use crate::db::{TestDb, connect, fresh_db};
use crate::support::{krakenbook, three_pairs};

/// `krakenbook ARGS --database-url URL`.
pub(crate) fn kb(url: &str, args: &[&str]) -> Output {
    krakenbook()
        .args(args)
        .args(["--database-url", url])
        .env_remove("DATABASE_URL")
        .output()
        .expect("krakenbook runs")
}

pub(crate) fn stdout(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A recording of the three test pairs in 5-second chunks, about 25 s long, with a lost update
/// (a checksum mismatch and a resubscription) early on.
pub(crate) struct Recorded {
    pub db: TestDb,
    pub dir: tempfile::TempDir,
    pub first: Timestamp,
    pub last: Timestamp,
}

pub(crate) async fn record() -> Recorded {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    stdout(
        &kb(&db.url, &["migrate", "--chunk-interval", "5 seconds"]),
        "migrate",
    );
    let mut config = SimConfig {
        pairs: three_pairs(),
        rate: 40.0,
        seed: 31,
        ..SimConfig::default()
    };
    config.server.faults = Faults {
        lose_after: Some(150),
        connections: Some(1),
        ..Faults::default()
    };
    let sim = Simulator::bind(config).await.expect("the simulator starts");
    let collector = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    wait_count(
        &db.url,
        "SELECT coalesce(extract(epoch FROM max(\"timestamp\") - min(\"timestamp\"))::bigint, 0)
           FROM krakenbook_book WHERE symbol = 'BTC/USD'",
        25,
        Duration::from_secs(90),
        || collector.log(),
    )
    .await;
    finish(sim, collector).await;
    let client = connect(&db.url).await;
    let row = client
        .query_one(
            "SELECT min(\"timestamp\"), max(\"timestamp\") FROM krakenbook_book
              WHERE symbol = 'BTC/USD'",
            &[],
        )
        .await
        .unwrap();
    Recorded {
        db,
        dir,
        first: row.get(0),
        last: row.get(1),
    }
}

/// An instant about 12 to 17 s into the recording, half a chunk (2.5 s) past a chunk boundary.
/// `--older-than` is whole seconds, so the cutoff it gives lands anywhere in the second after the
/// instant asked; a boundary inside that second would be archived by one run and not by the next
/// (seen once in CI: the run that should find nothing older found that chunk).
pub(crate) fn cut_between_chunks(first: Timestamp) -> Timestamp {
    const CHUNK: i64 = 5_000_000_000;
    let after = first.add_nanos(10_000_000_000).unix_nanos();
    let boundary = after.div_euclid(CHUNK) * CHUNK + CHUNK;
    Timestamp::from_unix_nanos(boundary + CHUNK / 2)
}

/// `--older-than` that archives the chunks ending before `until` (and no later one, for a while).
pub(crate) async fn older_than_until(url: &str, until: Timestamp) -> String {
    let now: Timestamp = connect(url)
        .await
        .query_one("SELECT now()", &[])
        .await
        .unwrap()
        .get(0);
    format!("{}s", (now.nanos_since(until) / 1_000_000_000).max(0))
}

/// Rows of each table (book, other, states, events).
async fn counts(url: &str) -> [i64; 4] {
    let r = connect(url)
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM krakenbook_book), (SELECT count(*) FROM krakenbook_other),
                    (SELECT count(*) FROM kraken_book_states), (SELECT count(*) FROM kraken_feed_events)",
            &[],
        )
        .await
        .unwrap();
    [r.get(0), r.get(1), r.get(2), r.get(3)]
}

pub(crate) async fn archived_parts(url: &str) -> i64 {
    connect(url)
        .await
        .query_one("SELECT count(*) FROM krakenbook_archive", &[])
        .await
        .unwrap()
        .get(0)
}

pub(crate) fn files_named(dir: &Path, suffix: &str) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                n += 1;
            }
        }
    }
    n
}

/// The answers every read command gives over `[from, to)` and at `at`.
#[derive(Debug, PartialEq)]
struct Answers {
    book_btc: String,
    book_eth: String,
    coverage: String,
    verify: serde_json::Value,
    export: Vec<u8>,
}

async fn answers(
    r: &Recorded,
    at: Timestamp,
    from: Timestamp,
    to: Timestamp,
    tag: &str,
) -> Answers {
    let url = &r.db.url;
    let at = at.to_string();
    let (from, to) = (from.to_string(), to.to_string());
    let book = |symbol: &str| {
        stdout(
            &kb(
                url,
                &["book", symbol, "--at", &at, "--depth", "25", "--json"],
            ),
            "book --at",
        )
    };
    let out = r.dir.path().join(format!("export-{tag}.csv"));
    stdout(
        &kb(
            url,
            &[
                "export",
                "--symbol",
                "BTC/USD,ETH/USD",
                "--from",
                &from,
                "--to",
                &to,
                "-q",
                "-o",
                out.to_str().unwrap(),
            ],
        ),
        "export",
    );
    // Exit 0 or 1 (a disagreement): the report is compared whole, before and after.
    let verify = kb(
        url,
        &[
            "replay", "--verify", "--from", &from, "--to", &to, "--json", "--quiet",
        ],
    );
    assert!(
        matches!(verify.status.code(), Some(0 | 1)),
        "replay --verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let verify = String::from_utf8_lossy(&verify.stdout).into_owned();
    Answers {
        book_btc: book("BTC/USD"),
        book_eth: book("ETH/USD"),
        coverage: stdout(
            &kb(url, &["query", "--coverage", "--json"]),
            "query --coverage",
        ),
        verify: serde_json::from_str(&verify).unwrap(),
        export: std::fs::read(&out).unwrap(),
    }
}

/// The coverage model's answer for each pair, in a session that mounted only what coverage reads
/// of the archive (as the web explorer's sessions do) or, before archiving, in a plain one.
async fn model_coverage(url: &str) -> Vec<krakenbook::history::Coverage> {
    let client = connect(url).await;
    krakenbook::archive::mount_coverage(&client, &[])
        .await
        .unwrap();
    let mut out = Vec::new();
    for symbol in ["BTC/USD", "ETH/USD", "MINA/GBP"] {
        out.push(
            krakenbook::history::Source::Database(&client)
                .coverage_of(symbol, None)
                .await
                .unwrap(),
        );
    }
    out
}

/// A dec64 value (`mantissa * 32 + scale`) as decimal text, by arithmetic alone.
fn dec64_text(v: i64) -> String {
    let (m, s) = ((v >> 5) as u64, (v & 31) as usize);
    let digits = format!("{m:0>width$}", width = s + 1);
    if s == 0 {
        digits
    } else {
        format!(
            "{}.{}",
            &digits[..digits.len() - s],
            &digits[digits.len() - s..]
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_range_answers_every_read_as_before_and_an_interrupted_run_leaves_the_database_whole()
 {
    let r = record().await;
    let url = r.db.url.clone();
    let archive_dir = r.dir.path().join("cold");
    let to_dir = archive_dir.to_str().unwrap().to_owned();
    let cut = cut_between_chunks(r.first);
    let at = r.first.add_nanos(7_000_000_000);
    let (from, to) = (
        r.first.add_nanos(2_000_000_000),
        r.last.add_nanos(-1_000_000_000),
    );
    let before = answers(&r, at, from, to, "before").await;
    assert!(
        before.book_btc.contains("\"checksum_ok\": true")
            || before.book_btc.contains("\"checksum_ok\":true"),
        "{}",
        before.book_btc
    );
    // The exact levels of BTC/USD's first seconds, as the database renders them.
    let exact: BTreeMap<i64, Vec<String>> = connect(&url)
        .await
        .query(
            "SELECT seq, array_agg(price::text || ' ' || quantity::text ORDER BY ordinal)
               FROM kraken_orderbook_entries
              WHERE symbol = 'BTC/USD' AND \"timestamp\" < $1 GROUP BY seq",
            &[&r.first.add_nanos(8_000_000_000)],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(exact.len() > 50, "{}", exact.len());
    let whole = counts(&url).await;
    let model_before = model_coverage(&url).await;
    assert!(
        model_before[0].gaps.len() >= 3,
        "the lost update's gap: {:?}",
        model_before[0].gaps
    );

    // Interrupted after writing, then after renaming: the database is as it was.
    for stage in ["written", "renamed"] {
        let older = older_than_until(&url, cut).await;
        let out = kb(
            &url,
            &[
                "archive",
                "--older-than",
                &older,
                "--to",
                &to_dir,
                "--fail-after",
                stage,
            ],
        );
        assert!(!out.status.success(), "{stage}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("stopped as asked after stage"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            counts(&url).await,
            whole,
            "after an interruption at {stage}"
        );
        assert_eq!(archived_parts(&url).await, 0);
    }
    assert!(
        files_named(&archive_dir, ".parquet") > 0,
        "the renamed files are there"
    );
    assert_eq!(answers(&r, at, from, to, "interrupted").await, before);

    // The run that completes.
    let older = older_than_until(&url, cut).await;
    let out = stdout(
        &kb(&url, &["archive", "--older-than", &older, "--to", &to_dir]),
        "archive",
    );
    eprintln!("{out}");
    let parts = archived_parts(&url).await;
    assert!(parts >= 2, "{parts} parts archived");
    let left = counts(&url).await;
    assert!(left[0] > 0 && left[0] < whole[0], "{left:?} of {whole:?}");
    assert_eq!(
        files_named(&archive_dir, ".tmp"),
        0,
        "no temporary file left"
    );
    let (messages, bytes): (i64, i64) = {
        let row = connect(&url)
            .await
            .query_one(
                "SELECT sum(messages)::bigint, sum(bytes)::bigint FROM krakenbook_archive",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    println!(
        "archive: {messages} book messages in {bytes} bytes: {:.1} bytes a book message, all files included ({parts} parts of 5 s: Parquet footers weigh more than in day-long chunks)",
        bytes as f64 / messages as f64
    );
    // A second run finds nothing older to do.
    let older = older_than_until(&url, cut).await;
    let again = stdout(
        &kb(&url, &["archive", "--older-than", &older, "--to", &to_dir]),
        "archive again",
    );
    assert!(again.contains("no chunk older"), "{again}");

    // Every read command answers as before, the archived range read back from the files.
    let after = answers(&r, at, from, to, "after").await;
    assert_eq!(after.book_btc, before.book_btc);
    assert_eq!(after.book_eth, before.book_eth);
    assert_eq!(after.coverage, before.coverage);
    assert_eq!(after.verify, before.verify);
    assert!(
        after.export == before.export,
        "the export differs after archiving"
    );

    // The files, read with the parquet crate alone, give the exact decimals.
    let mut decoded: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![archive_dir.join("book").join("pair=BTC-USD")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            use parquet::file::reader::{FileReader, SerializedFileReader};
            use parquet::record::Field;
            let reader = SerializedFileReader::new(std::fs::File::open(&p).unwrap()).unwrap();
            let kv = reader
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .unwrap();
            assert!(kv.iter().any(|k| k.key == "krakenbook.levels"
                && k.value.as_deref().is_some_and(|v| v.starts_with("dec64"))));
            for row in reader.get_row_iter(None).unwrap() {
                let row = row.unwrap();
                let mut seq = 0;
                let mut levels = Vec::new();
                for (name, field) in row.get_column_iter() {
                    match (name.as_str(), field) {
                        ("seq", Field::Long(v)) => seq = *v,
                        ("levels", Field::ListInternal(list)) => {
                            levels = list
                                .elements()
                                .iter()
                                .map(|f| match f {
                                    Field::Long(v) => dec64_text(*v),
                                    other => panic!("{other:?}"),
                                })
                                .collect();
                        }
                        _ => {}
                    }
                }
                let pairs = levels.chunks(2).map(|pq| pq.join(" ")).collect();
                decoded.insert(seq, pairs);
            }
        }
    }
    let mut compared = 0;
    for (seq, levels) in &exact {
        if let Some(d) = decoded.get(seq) {
            assert_eq!(d, levels, "seq {seq}");
            compared += 1;
        }
    }
    assert!(compared > 50, "compared {compared} messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_archive_file_is_caught_and_an_import_into_an_archived_range_is_refused() {
    let r = record().await;
    let url = r.db.url.clone();
    let archive_dir = r.dir.path().join("cold");
    let cut = cut_between_chunks(r.first);
    let older = older_than_until(&url, cut).await;
    stdout(
        &kb(
            &url,
            &[
                "archive",
                "--older-than",
                &older,
                "--to",
                archive_dir.to_str().unwrap(),
            ],
        ),
        "archive",
    );
    let client = connect(&url).await;
    let (from, to) = (
        r.first.add_nanos(1_000_000_000),
        r.last.add_nanos(-1_000_000_000),
    );
    let verify = |url: &str| {
        kb(
            url,
            &[
                "replay",
                "--verify",
                "--from",
                &from.to_string(),
                "--to",
                &to.to_string(),
                "--json",
                "--quiet",
            ],
        )
    };
    // The baseline: what the untouched record gives (with this layout, replay --verify reports
    // the best_* columns, which the book table does not store, as disagreements).
    let untouched = verify(&url);
    assert!(matches!(untouched.status.code(), Some(0 | 1)));
    let untouched: serde_json::Value = serde_json::from_slice(&untouched.stdout).unwrap();

    // An import of records that fall in the archived range is refused, naming the range.
    client
        .execute("UPDATE krakenbook_checkpoints SET seq = 0", &[])
        .await
        .unwrap();
    let out = kb(
        &url,
        &[
            "import",
            "--journal-dir",
            r.dir.path().join("journal").to_str().unwrap(),
            "--quiet",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refusing to import")
            && err.contains("krakenbook archive")
            && err.contains(archive_dir.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // A level changed in an archived book file: the file no longer matches its catalog digest.
    let row = client
        .query_one(
            "SELECT f->>'path' FROM krakenbook_archive, jsonb_array_elements(manifest) f
              WHERE f->>'dataset' = 'book' AND f->>'symbol' = 'BTC/USD'
              ORDER BY range_start DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let rel: String = row.get(0);
    let path = archive_dir.join(&rel);
    let table = read_table(
        bytes::Bytes::from(std::fs::read(&path).unwrap()),
        BookRec::COLUMNS,
    )
    .unwrap();
    let mut w = TableWriter::new(BookRec::COLUMNS, table.metadata.clone()).unwrap();
    let mut changed = 0;
    for mut row in table.rows {
        if row[7] == Cell::Bytes(b"u".to_vec())
            && let Cell::List(levels) = &mut row[10]
            && levels.len() >= 2
        {
            // The first level's quantity, one unit of its last digit more.
            levels[1] += 32;
            changed += 1;
        }
        let refs: Vec<CellRef<'_>> = row.iter().map(Cell::as_ref).collect();
        w.push(&refs).unwrap();
    }
    assert!(changed > 0);
    let (bytes, _, digest) = w.finish().unwrap();
    std::fs::write(&path, bytes).unwrap();
    let out = verify(&url);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&rel) && err.contains("changed after it was archived"),
        "{err}"
    );

    // The same change with the catalog's digest changed to match: the checksum replay finds it.
    client
        .execute(
            "UPDATE krakenbook_archive SET manifest = (
               SELECT jsonb_agg(CASE WHEN f->>'path' = $1 THEN jsonb_set(f, '{digest}', to_jsonb($2::text)) ELSE f END)
                 FROM jsonb_array_elements(manifest) f)",
            &[&rel, &digest.hex()],
        )
        .await
        .unwrap();
    let out = verify(&url);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Messages whose recomputed CRC32 no longer matches Kraken's: fewer verify, a disagreement
    // with the recorded verdict is reported.
    let ok = |r: &serde_json::Value| r["symbols"]["BTC/USD"]["ok"].as_u64().unwrap();
    assert!(
        ok(&report) < ok(&untouched),
        "BTC/USD verified {} messages, {} before the change",
        ok(&report),
        ok(&untouched)
    );
    assert!(report["disagreement_count"].as_u64().unwrap() > 0);
    assert_ne!(
        report["disagreement_count"],
        untouched["disagreement_count"]
    );
}

/// The measurement: 20 simulated pairs at depth 100 for 45 s (the recording of issue 13's
/// table), in 2-minute chunks, archived once closed; prints bytes per book message per dataset.
/// A measurement, not a check of time: run it with `--ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 3 minutes): run with --ignored --nocapture"]
async fn archive_bytes_per_book_message_of_twenty_pairs_at_depth_100() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let url = db.url.clone();
    stdout(
        &kb(&url, &["migrate", "--chunk-interval", "2 minutes"]),
        "migrate",
    );
    let config = SimConfig {
        pairs: krakenbook::exchange::sim::generated_pairs(20),
        rate: 100.0,
        seed: 1,
        ..SimConfig::default()
    };
    let sim = Simulator::bind(config).await.expect("the simulator starts");
    let mut child = krakenbook()
        .args(["collect", "--all", "--depth", "100", "--url"])
        .arg(format!("ws://{}/v2", sim.local_addr()))
        .arg("--journal-dir")
        .arg(dir.path().join("journal"))
        .args(["--database-url", &url])
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(45)).await;
    sim.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let client = connect(&url).await;
    loop {
        let open: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM timescaledb_information.chunks
                   WHERE hypertable_name = 'krakenbook_book' AND range_end > now())",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if !open {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let table_bytes: i64 = client
        .query_one(
            "SELECT hypertable_size('krakenbook_book') + hypertable_size('krakenbook_other')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let out = stdout(
        &kb(
            &url,
            &[
                "archive",
                "--older-than",
                "0s",
                "--to",
                dir.path().join("cold").to_str().unwrap(),
            ],
        ),
        "archive",
    );
    let rows = client
        .query(
            "SELECT f->>'dataset', sum((f->>'bytes')::bigint)::bigint, sum((f->>'rows')::bigint)::bigint
               FROM krakenbook_archive, jsonb_array_elements(manifest) f GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let messages: i64 = client
        .query_one("SELECT sum(messages)::bigint FROM krakenbook_archive", &[])
        .await
        .unwrap()
        .get(0);
    println!("{out}");
    println!(
        "database before archiving: krakenbook_book + krakenbook_other {table_bytes} bytes, {:.1} a book message",
        table_bytes as f64 / messages as f64
    );
    let mut total = 0;
    for r in &rows {
        let (dataset, bytes, n): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        total += bytes;
        println!(
            "  {dataset:<12} {n:>8} rows {bytes:>10} bytes {:>7.2} bytes a book message",
            bytes as f64 / messages as f64
        );
    }
    println!(
        "archive: {messages} book messages, {total} bytes, {:.2} bytes a book message, all included",
        total as f64 / messages as f64
    );
}
