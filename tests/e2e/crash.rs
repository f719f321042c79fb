//! Crash consistency of the whole collector: real SIGKILLs of a `krakenbook collect` process
//! writing to a real TimescaleDB, each optionally followed by what a power cut leaves (the active
//! segment cut back to a point that had been synced, possibly inside the next record), then a
//! restart. After every round the journal and the database must agree exactly: every frame the
//! journal holds is stored once under its seq, nothing the journal lost is in the database under a
//! seq that the journal has since given to another record, and both `replay --verify` runs pass.
//!
//! `KRAKENBOOK_CRASH_ITERATIONS=N` runs N rounds (default 3, a few seconds each);
//! `KRAKENBOOK_CRASH_SEED` fixes the random choices (printed on failure).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use krakenbook::exchange::Faults;
use krakenbook::journal::{HeaderParse, Item, JournalReader, SegmentHeader};
use krakenbook::record::RecordBody;

use crate::collect::{Collector, count, free_addr, is_heartbeat, simulator, wait_count};
use crate::db::{column, connect, fresh_db};
use crate::support::run;

/// A count, or 0 before the collector has created the tables.
async fn count_or_zero(url: &str, sql: &str) -> i64 {
    match connect(url).await.query_one(sql, &[]).await {
        Ok(row) => row.get(0),
        Err(_) => 0,
    }
}

/// A small deterministic generator for the test's choices.
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A gauge from the collector's `/metrics` (0 when unreachable or absent).
async fn gauge(metrics: std::net::SocketAddr, name: &str) -> u64 {
    let Ok(body) = http_get(metrics, "/metrics").await else {
        return 0;
    };
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    Ok(out)
}

/// The plain segment files of a journal, by first seq.
fn plain_segments(journal: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(journal)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_str()?.to_owned();
            let stem = name.strip_suffix(".kbj")?;
            Some((stem.parse().ok()?, p))
        })
        .collect();
    out.sort();
    out
}

/// The length of a segment's header.
fn header_len(bytes: &[u8]) -> usize {
    match SegmentHeader::decode(bytes) {
        HeaderParse::Header(_, len) => len,
        other => panic!("the active segment's header does not parse: {other:?}"),
    }
}

/// Byte offsets of the ends of the records in a plain segment, with their seqs (walking the
/// format: the header, then `len:u32 crc:u32 body` with the seq first in the body).
fn record_ends(bytes: &[u8]) -> Vec<(u64, usize)> {
    let mut at = header_len(bytes);
    let mut out = Vec::new();
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let end = at + 8 + len;
        if len < 8 || end > bytes.len() {
            break;
        }
        let seq = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        out.push((seq, end));
        at = end;
    }
    out
}

/// What a power cut leaves: the active segment cut back to the end of record `synced` (every
/// record up to it had reached the disk), and with `torn` part of the next record too.
fn power_cut(journal: &Path, synced: u64, torn: bool) -> String {
    let Some((first, path)) = plain_segments(journal).pop() else {
        return "no plain segment".into();
    };
    let bytes = std::fs::read(&path).unwrap();
    let ends = record_ends(&bytes);
    let header = header_len(&bytes);
    let keep = if synced < first {
        header
    } else {
        ends.iter()
            .take_while(|(seq, _)| *seq <= synced)
            .last()
            .map_or(header, |&(_, end)| end)
    };
    let next_end = ends.iter().find(|&&(_, end)| end > keep).map(|&(_, e)| e);
    let cut = match (torn, next_end) {
        (true, Some(e)) if e - keep > 9 => keep + (e - keep) / 2,
        _ => keep,
    };
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(cut as u64).unwrap();
    format!(
        "{}: cut from {} to {cut} bytes (synced through seq {synced}, torn: {})",
        path.display(),
        bytes.len(),
        cut > keep
    )
}

/// Every frame record (heartbeats aside) the journal holds, by seq, with its text.
fn journal_frames(journal: &Path) -> BTreeMap<i64, String> {
    let mut reader = JournalReader::open(journal, 0).unwrap();
    let mut out = BTreeMap::new();
    while let Some(item) = reader.next_owned().unwrap() {
        let Item::Record(r) = item else { continue };
        if let RecordBody::Frame(f) = &r.body {
            let text = String::from_utf8_lossy(&f.bytes).into_owned();
            if !is_heartbeat(&text) {
                out.insert(r.seq as i64, text);
            }
        }
    }
    out
}

#[tokio::test]
async fn sigkills_and_power_cuts_leave_journal_and_database_in_exact_agreement() {
    crash_rounds(&[]).await;
}

/// The same at `--redundancy 2`: a kill can fall between a frame's two copies, so the database
/// may hold one copy of a message whose other copy the journal still has to give it; after the
/// restart every copy the journal holds is stored exactly once (in the row, or packed with it).
#[tokio::test]
async fn sigkills_and_power_cuts_at_redundancy_2_leave_every_copy_stored_once() {
    crash_rounds(&["--redundancy", "2"]).await;
}

/// Rounds of SIGKILL (and power cuts) of a collector started with `extra` arguments, then a
/// clean run, then the journal and the database compared copy by copy.
async fn crash_rounds(extra: &[&str]) {
    const PACKED: &str = "SELECT count(dup) FROM krakenbook_book";
    let replicas = extra.contains(&"--redundancy");
    let iterations: usize = std::env::var("KRAKENBOOK_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("KRAKENBOOK_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut choose = Choices(seed);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let db = fresh_db().await;
    let sim = simulator(dir.path(), 200.0, Faults::default()).await;
    let mut history = Vec::new();
    for round in 0..iterations {
        let metrics = free_addr();
        let metrics_arg = metrics.to_string();
        let mut args = vec!["--metrics-listen", &metrics_arg];
        args.extend_from_slice(extra);
        let collector = Collector::start(&sim, Some(&db.url), dir.path(), &args);
        let before = count_or_zero(
            &db.url,
            "SELECT count(*) FROM kraken_orderbook_messages WHERE channel = 'book'",
        )
        .await;
        wait_count(
            &db.url,
            "SELECT count(*) FROM kraken_orderbook_messages WHERE channel = 'book'",
            before + 50,
            Duration::from_secs(30),
            || collector.log(),
        )
        .await;
        if replicas {
            // Replicas start staggered: kill only once copies from both connections are stored.
            let packed = count_or_zero(&db.url, PACKED).await;
            wait_count(
                &db.url,
                PACKED,
                packed + 20,
                Duration::from_secs(30),
                || collector.log(),
            )
            .await;
        }
        // The database must never be ahead of what the journal has synced: a checkpoint read
        // before a synced seq can never exceed it.
        let mut synced;
        let until = tokio::time::Instant::now() + Duration::from_millis(choose.below(1500));
        loop {
            let checkpoint = gauge(metrics, "krakenbook_db_checkpoint_seq").await;
            synced = gauge(metrics, "krakenbook_journal_synced_seq").await;
            assert!(
                checkpoint <= synced,
                "round {round}: the database holds seq {checkpoint}, the journal has synced only {synced}: a power cut would lose records the database holds (seed {seed})"
            );
            if tokio::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        collector.kill9();
        let what = match choose.below(3) {
            0 => "SIGKILL".to_owned(),
            cut => {
                // Whatever the database committed had been synced first, so a power cut cannot
                // take it back: cut no earlier than the checkpoint.
                let checkpoint = count_or_zero(
                    &db.url,
                    "SELECT coalesce(max(seq), 0) FROM krakenbook_checkpoints",
                )
                .await as u64;
                format!(
                    "SIGKILL + power cut: {}",
                    power_cut(&journal, synced.max(checkpoint), cut == 2)
                )
            }
        };
        history.push(format!("round {round}: {what}"));
    }
    // A last clean run lets the database catch up with everything the journal holds.
    let metrics = free_addr();
    let metrics_arg = metrics.to_string();
    let mut args = vec!["--metrics-listen", &metrics_arg];
    args.extend_from_slice(extra);
    let last = Collector::start(&sim, Some(&db.url), dir.path(), &args);
    let before = count(&db.url, "SELECT count(*) FROM kraken_orderbook_messages").await;
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_orderbook_messages",
        before + 100,
        Duration::from_secs(30),
        || last.log(),
    )
    .await;
    sim.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, log) = last.stop();
    let context = format!("seed {seed}\n{}\n{log}", history.join("\n"));
    assert!(status.success(), "{context}");

    let expected = journal_frames(&journal);
    let client = connect(&db.url).await;
    // Every received copy: a book message's copies (the row's first and each packed with it, all
    // the same frame) and the frames stored whole.
    let copies = "SELECT c.seq, coalesce(m.raw_message::text, m.raw_text) AS frame
                    FROM krakenbook_copies c
                    JOIN kraken_orderbook_messages m ON m.channel = 'book' AND m.seq = c.row_seq
                  UNION ALL
                  SELECT seq, coalesce(raw_message::text, raw_text) FROM krakenbook_other";
    let seqs: Vec<i64> = column(
        &client,
        &format!("SELECT seq FROM ({copies}) c ORDER BY seq"),
    )
    .await;
    let rows = client
        .query(
            &format!("SELECT seq, frame FROM ({copies}) c ORDER BY seq"),
            &[],
        )
        .await
        .unwrap();
    if replicas {
        let packed = count(
            &db.url,
            "SELECT count(*) FROM krakenbook_copies WHERE copy > 0",
        )
        .await;
        let per_conn: Vec<String> = column(
            &client,
            "SELECT conn_id::text || ': ' || count(*)::text || ' rows, ' || count(dup)::text || ' dup'
               FROM krakenbook_book GROUP BY conn_id ORDER BY conn_id",
        )
        .await;
        assert!(
            packed > 100,
            "only {packed} copies packed with their rows: {per_conn:?}\n{context}"
        );
    }
    let stored: BTreeMap<i64, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(seqs.len(), stored.len(), "no seq stored twice\n{context}");
    let missing: Vec<&i64> = expected
        .keys()
        .filter(|s| !stored.contains_key(s))
        .collect();
    let extra: Vec<&i64> = stored
        .keys()
        .filter(|s| !expected.contains_key(s))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "journal frames missing from the database: {} (first {:?}); database rows the journal does not hold: {} (first {:?})\n{context}",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    for (seq, text) in &expected {
        let a: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let b: serde_json::Value = serde_json::from_str(&stored[seq]).unwrap_or_default();
        assert_eq!(
            a, b,
            "seq {seq} holds another frame in the database\n{context}"
        );
    }

    let journal_arg = journal.to_str().unwrap();
    let out = run(&["replay", "--verify", "--journal-dir", journal_arg]);
    assert!(
        out.status.success(),
        "replay --verify over the journal: {}\n{}\n{context}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "replay",
        "--verify",
        "--database-url",
        &db.url,
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01T00:00:00Z",
    ]);
    assert!(
        out.status.success(),
        "replay --verify over the database: {}\n{}\n{context}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
