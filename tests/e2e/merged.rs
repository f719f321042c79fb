//! Two collectors, one history: two `krakenbook collect` processes with their own identities and
//! journals record the same pairs from one simulator into one database; each is stopped for a few
//! seconds while the other runs, so each alone has a gap and their union has none. The merged
//! incremental export (no `--collector`) must rebuild `book --at`'s book over every collector at
//! every instant in each kind of consumer, and `replay --verify` cross-checks their overlapping
//! streams (and reports a stored level tampered where the other collector overlaps).

use std::path::Path;
use std::time::Duration;

use krakenbook::exchange::{SimConfig, Simulator};
use krakenbook::history::{Cause, Coverage, Source};
use tokio::sync::OnceCell;

use crate::collect::{Collector, wait_count};
use crate::db::{TestDb, connect, fresh_db};
use crate::export::{
    BookAt, assert_file_rebuilds_the_books, export_to, micros, range_args, read_csv,
};
use crate::recording::Recording;
use crate::support::krakenbook;
use crate::support::three_pairs;

const SYMBOLS: [&str; 3] = ["BTC/USD", "ETH/USD", "MINA/GBP"];

static TWO: OnceCell<(Recording, tempfile::TempDir)> = OnceCell::const_new();

/// Held for reading by every test of the shared recording, for writing by the one that tampers
/// with it (and puts it back).
pub(crate) static TAMPER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The recording of collectors `A` and `B` (its `collector` empty: reads merge both).
pub(crate) async fn two_collectors() -> &'static Recording {
    &TWO.get_or_init(record_two).await.0
}

fn start(sim: &Simulator, db: &str, dir: &Path, name: &str) -> Collector {
    Collector::start(sim, Some(db), dir, &["--collector-id", name])
}

async fn record_two() -> (Recording, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let db: TestDb = fresh_db().await;
    let config = SimConfig {
        pairs: three_pairs(),
        rate: 60.0,
        seed: 47,
        ..SimConfig::default()
    };
    let sim = Simulator::bind(config).await.expect("the simulator starts");
    let verified = |c: &str| {
        format!(
            "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok AND collector = '{c}'"
        )
    };
    let wait_more = |c: &'static str, n: i64, who: &Collector| {
        let sql = verified(c);
        let url = db.url.clone();
        let log = who.log();
        async move {
            // Before the first collector made the tables, nothing is counted.
            let before = match connect(&url).await.query_one(sql.as_str(), &[]).await {
                Ok(row) => row.get(0),
                Err(_) => 0,
            };
            wait_count(&url, &sql, before + n, Duration::from_secs(60), || {
                log.clone()
            })
            .await;
        }
    };
    let a = start(&sim, &db.url, &dir_a, "A");
    let b = start(&sim, &db.url, &dir_b, "B");
    wait_more("A", 150, &a).await;
    wait_more("B", 150, &b).await;
    // B dark for 5 s while A runs.
    let (status, _, log) = b.stop();
    assert!(status.success(), "{log}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b = start(&sim, &db.url, &dir_b, "B");
    wait_more("B", 150, &b).await;
    // Then A dark for 5 s while B runs.
    let (status, _, log) = a.stop();
    assert!(status.success(), "{log}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a = start(&sim, &db.url, &dir_a, "A");
    wait_more("A", 150, &a).await;
    for c in [a, b] {
        let (status, _, log) = c.stop();
        assert!(status.success(), "{log}");
    }
    sim.shutdown().await.unwrap();
    // Whatever the database had not taken at a stop is loaded from each journal.
    for d in [&dir_a, &dir_b] {
        let out = krakenbook()
            .args(["import", "--journal-dir"])
            .arg(d.join("journal"))
            .args(["--database-url", &db.url])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let client = connect(&db.url).await;
    let row = client
        .query_one(
            "SELECT min(\"timestamp\"), max(\"timestamp\")
               FROM kraken_orderbook_messages WHERE channel = 'book'
                AND message_type IN ('snapshot', 'update')",
            &[],
        )
        .await
        .unwrap();
    let rec = Recording {
        url: db.url.clone(),
        collector: String::new(),
        first: row.get(0),
        last: row.get(1),
        _db: db,
    };
    (rec, dir)
}

/// Whether a coverage has a gap of a stopped collector with both ends inside the record.
fn has_downtime(c: &Coverage) -> bool {
    c.gaps
        .iter()
        .any(|g| g.cause == Cause::NoCollector && g.start.is_some() && g.end.is_some())
}

/// Each collector alone has a `no_collector` gap inside the recording; their union has none
/// between its first and last verified instant.
#[tokio::test]
async fn two_collectors_each_with_a_downtime_leave_no_union_gap() {
    let rec = two_collectors().await;
    let _read = TAMPER.read().await;
    let client = connect(&rec.url).await;
    for symbol in SYMBOLS {
        let all = Source::Database(&client)
            .coverage_of(symbol, None)
            .await
            .unwrap();
        assert_eq!(all.spans.len(), 1, "{symbol}: {:?}", all.spans);
        for c in ["A", "B"] {
            let one = Source::Database(&client)
                .coverage_of(symbol, Some(c))
                .await
                .unwrap();
            assert!(has_downtime(&one), "{symbol}, {c}: {:?}", one.gaps);
        }
    }
}

/// Without `--collector` the incremental export is one merged stream: it switches from one
/// collector to the other where the one followed stopped (a snapshot there, no gap), and every
/// kind of consumer holds `book --at`'s book over both collectors at every instant tested.
#[tokio::test]
async fn the_merged_export_rebuilds_book_at_over_every_collector_without_a_gap() {
    let rec = two_collectors().await;
    let _read = TAMPER.read().await;
    let client = connect(&rec.url).await;
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = rec.all();
    let (f, t) = range_args(rec);
    let csv = dir.path().join("merged.csv");
    let out = export_to(
        rec,
        &["--symbol", &SYMBOLS.join(","), "--from", &f, "--to", &t],
        &csv,
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("A+B"), "{summary}");
    // One coverage start per symbol, no gap: the downtimes are switches.
    assert!(summary.contains("3 coverage starts"), "{summary}");
    assert!(summary.contains("0 gaps cleared"), "{summary}");
    assert!(summary.contains("stream switches"), "{summary}");
    let (_, rows) = read_csv(&csv);
    // Inside each collector's downtime, the moving pairs have rows (the other collector's).
    for c in ["A", "B"] {
        let one = Source::Database(&client)
            .coverage_of("BTC/USD", Some(c))
            .await
            .unwrap();
        let gap = one
            .gaps
            .iter()
            .find(|g| g.cause == Cause::NoCollector && g.start.is_some() && g.end.is_some())
            .unwrap();
        let (s, e) = (
            gap.start.unwrap().unix_micros(),
            gap.end.unwrap().unix_micros(),
        );
        let inside = rows
            .iter()
            .filter(|r| r[1] == "BTC/USD" && s < micros(&r[2]) && micros(&r[2]) < e)
            .count();
        assert!(inside > 50, "{c} dark {s}..{e}: {inside} rows");
    }
    let compared = assert_file_rebuilds_the_books(
        &client,
        rec,
        &SYMBOLS,
        from,
        to,
        &rows,
        &mut BookAt::default(),
    )
    .await;
    assert!(compared.verified > 600, "{compared:?}");
}

/// `--collector` still restricts the export to one collector: its downtime is a gap, and so is
/// its stop at the end of the recording when B's last message came after it (the two stop one
/// after the other: which is last is a race, so the gaps are counted from A's coverage).
#[tokio::test]
async fn a_merged_range_exported_with_collector_follows_that_collector_only() {
    let rec = two_collectors().await;
    let _read = TAMPER.read().await;
    let client = connect(&rec.url).await;
    let (from, to) = rec.all();
    let a = Source::Database(&client)
        .coverage_of("BTC/USD", Some("A"))
        .await
        .unwrap();
    let gaps = a
        .gaps
        .iter()
        .filter(|g| g.start.is_some_and(|s| from < s && s < to))
        .count();
    assert!(has_downtime(&a), "A's downtime: {:?}", a.gaps);
    let dir = tempfile::tempdir().unwrap();
    let (f, t) = range_args(rec);
    let csv = dir.path().join("a.csv");
    let out = export_to(
        rec,
        &[
            "--symbol",
            "BTC/USD",
            "--from",
            &f,
            "--to",
            &t,
            "--collector",
            "A",
        ],
        &csv,
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!((1..=2).contains(&gaps), "{:?}", a.gaps);
    assert!(
        summary.contains(&format!(" {gaps} gaps cleared")),
        "{gaps} gaps of A in range: {summary}"
    );
    // Snapshots still read one collector, and say so.
    let out = crate::support::krakenbook()
        .args(["export", "--database-url", &rec.url])
        .args(["--symbol", "BTC/USD", "--from", &f, "--to", &t])
        .args(["--kind", "snapshots", "-o"])
        .arg(dir.path().join("s.csv"))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--collector NAME"), "{err}");
}

/// `replay --verify --database-url` over both collectors: every overlap of their streams is
/// walked and the books agree at every common instant.
fn replay_verify(rec: &Recording) -> std::process::Output {
    krakenbook()
        .args(["replay", "--verify", "--quiet", "--database-url", &rec.url])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

/// Where two collectors overlap, `replay --verify` compares their books at every common Kraken
/// timestamp; a level below the top ten altered in one collector's snapshot (its entry row and
/// its raw message alike, so every stored copy of that collector still agrees and the checksum
/// still verifies) is reported as a disagreement of the two collectors, with both seqs, exit 1.
#[tokio::test]
async fn replay_verify_cross_checks_two_collectors_and_reports_a_level_tampered_in_one() {
    let rec = two_collectors().await;
    let _write = TAMPER.write().await;
    let out = replay_verify(rec);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("cross-check:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(" 0 disagreed"), "{line}");
    let compared: u64 = line
        .split(", ")
        .find_map(|p| p.strip_suffix(" common instants compared"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(compared > 100, "{line}");

    // A's snapshot of BTC/USD after its downtime (B was running): the quantity of each bid from
    // the 16th down, +1 (in levels, the one stored copy of them; dec64 is mantissa * 32 + scale,
    // so one unit is 32 * 10^scale). Several: the first instant both collectors share comes
    // after A's snapshot was received, and an update at one of those prices before it puts that
    // level right (one tampered level was healed so on a loaded machine), never all ten. From
    // the 16th: six levels of margin before one rises into the top ten, where the checksum sees
    // it (that may happen later in the run; the cross-check has spoken by then). A's last
    // snapshot at least a second before B's last message: A may have resynced later (a loaded
    // machine), close to where B stops and nothing follows to compare.
    let client = connect(&rec.url).await;
    let seq: i64 = client
        .query_one(
            "SELECT seq FROM krakenbook_book
              WHERE collector_id = (SELECT id FROM krakenbook_collectors WHERE name = 'A')
                AND symbol = 'BTC/USD' AND kind = 's' AND n_bids > 20
                AND \"timestamp\" < (
                    SELECT max(\"timestamp\") - interval '1 second' FROM krakenbook_book
                     WHERE collector_id = (SELECT id FROM krakenbook_collectors WHERE name = 'B')
                       AND symbol = 'BTC/USD')
              ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let tamper = |sign: &'static str| {
        let client = &client;
        async move {
            let n = client
                .execute(
                    &format!(
                        "UPDATE krakenbook_book b
                            SET levels = (
                                SELECT array_agg(
                                         CASE WHEN i % 2 = 0 AND i > 30 AND i <= 2 * b.n_bids
                                              THEN v {sign} 32 * (10::numeric ^ (v & 31))::bigint
                                              ELSE v END
                                         ORDER BY i)
                                  FROM unnest(b.levels) WITH ORDINALITY AS u(v, i))
                          WHERE collector_id = (SELECT id FROM krakenbook_collectors WHERE name = 'A')
                            AND seq = $1"
                    ),
                    &[&seq],
                )
                .await
                .unwrap();
            assert_eq!(n, 1, "seq {seq}");
        }
    };
    tamper("+").await;
    let out = replay_verify(rec);
    tamper("-").await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("OVERLAPPING STREAMS DISAGREE") || text.contains("DISAGREEMENTS FOUND"),
        "{text}"
    );
    let reported: Vec<&str> = text
        .lines()
        // A bid from the 16th down at the snapshot: levels inserted or removed above before the
        // first instant both collectors share move it (the report names its place then).
        .filter(|l| l.contains("BTC/USD at ") && l.contains(" disagree: bid level "))
        .collect();
    assert!(!reported.is_empty(), "{text}");
    // Both collectors named, A with the tampered snapshot's seq or a later one.
    let first = reported[0];
    assert!(
        first.contains("A connection") && first.contains("B connection"),
        "{first}"
    );
    let a_seq: i64 = first
        .split("A connection ")
        .nth(1)
        .and_then(|r| r.split(" seq ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{first}"));
    assert!(a_seq >= seq, "{first}: tampered at seq {seq}");
    // Put back, it verifies again.
    let out = replay_verify(rec);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
