//! The journal's damage as the commands see it: `replay --verify --journal-dir` over damaged,
//! torn and empty journals (exit 1 naming the lost seqs, 0 for a torn tail, 3 for nothing to
//! verify), an empty database range, and `import` over a journal with a hole (it ends).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use krakenbook::journal::{Entry, JournalConfig, JournalWriter, list_segments};
use krakenbook_testkit::capture::read_capture;

use crate::db::migrated_db;
use crate::support::{krakenbook, run};

/// Journals the BTC/USD depth-10 capture as the collector would have, in segments of about
/// `segment_bytes`; returns the number of records.
fn journal_capture(dir: &Path, segment_bytes: u64) -> u64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kraken-v2/kraken_btcusd_d10_20260816.ndjson");
    let records = read_capture(&path, &mut 1, 1).unwrap();
    let mut config = JournalConfig::new(dir);
    config.compression_level = 0;
    config.segment_bytes = segment_bytes;
    let (mut w, _) = JournalWriter::open(config).unwrap();
    for r in &records {
        w.append(Entry {
            received_at: r.received_at,
            conn_id: r.conn_id,
            conn_seq: r.conn_seq,
            body: r.body.clone(),
        })
        .unwrap();
        w.maybe_rotate().unwrap();
    }
    w.close().unwrap();
    records.len() as u64
}

fn verify_json(dir: &Path) -> (Option<i32>, Value, String) {
    let out = run(&[
        "replay",
        "--verify",
        "--json",
        "--quiet",
        "--journal-dir",
        dir.to_str().unwrap(),
    ]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 9, item 12: verifying an empty journal directory passed.
#[test]
fn replay_verify_of_an_empty_journal_verifies_nothing_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let (code, report, stderr) = verify_json(dir.path());
    assert_eq!(code, Some(3), "{report} {stderr}");
    assert!(stderr.contains("nothing verified"), "{stderr}");
    // A directory that does not exist is an error, not "nothing".
    let (code, _, stderr) = verify_json(&dir.path().join("missing"));
    assert_eq!(code, Some(2), "{stderr}");
}

/// Issue 9, item 3: with a segment missing, `replay --verify` exited 0 on a third of the records.
#[test]
fn replay_verify_names_lost_seqs_exits_1_and_still_verifies_every_intact_record() {
    let dir = tempfile::tempdir().unwrap();
    let total = journal_capture(dir.path(), 20_000);
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 4, "{} segments", segments.len());
    let (code, clean, _) = verify_json(dir.path());
    assert_eq!(code, Some(0), "{clean}");
    // A middle segment goes; another gets 4 bytes flipped in the middle.
    let gone = &segments[1];
    let missing = (gone.first_seq, segments[2].first_seq - 1);
    std::fs::remove_file(&gone.path).unwrap();
    let damaged = &segments[segments.len() - 2];
    let mut bytes = std::fs::read(&damaged.path).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 4] {
        *b ^= 0x5a;
    }
    std::fs::write(&damaged.path, &bytes).unwrap();

    let (code, report, stderr) = verify_json(dir.path());
    assert_eq!(code, Some(1), "{report} {stderr}");
    let damage = report["damage"].as_array().unwrap();
    assert_eq!(damage.len(), 2, "{report}");
    assert_eq!(damage[0]["kind"], "missing_segment");
    assert_eq!(
        (
            damage[0]["first_seq"].as_u64().unwrap(),
            damage[0]["last_seq"].as_u64().unwrap()
        ),
        missing
    );
    assert_eq!(damage[0]["loss"], true);
    assert_eq!(damage[1]["kind"], "corrupt");
    assert_eq!(
        damage[1]["segment"].as_str().unwrap(),
        damaged.path.display().to_string()
    );
    let offset = damage[1]["offset"].as_u64().unwrap();
    assert!(offset <= at as u64 && at as u64 <= offset + damage[1]["bytes"].as_u64().unwrap());
    let lost = report["lost_seqs"].as_u64().unwrap();
    let corrupt =
        damage[1]["last_seq"].as_u64().unwrap() - damage[1]["first_seq"].as_u64().unwrap() + 1;
    assert!(corrupt <= 2, "4 bytes damage one record, or two: {report}");
    assert_eq!(
        lost,
        missing.1 - missing.0 + 1 + corrupt,
        "the segment and the damaged records"
    );
    assert_eq!(
        report["records"].as_u64().unwrap(),
        total - lost,
        "every intact record replayed"
    );
    assert_eq!(
        report["disagreement_count"].as_u64(),
        Some(0),
        "the books after the damage are not verifiable, not wrong: {report}"
    );
    assert!(report["unverifiable_after_damage"].as_u64().unwrap() > 0);

    // The text report names the range.
    let out = run(&[
        "replay",
        "--verify",
        "--quiet",
        "--journal-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "seqs {}..={} LOST: missing_segment",
            missing.0, missing.1
        )),
        "{text}"
    );
    assert!(text.contains("RECORDS ARE LOST"), "{text}");
}

#[test]
fn replay_verify_reports_a_torn_tail_but_passes() {
    let dir = tempfile::tempdir().unwrap();
    journal_capture(dir.path(), 256 << 20);
    // A record half-written when the machine stopped, then nothing (no writer holds the lock:
    // the journal is closed, so the reader classifies it as the next start would).
    let last = list_segments(dir.path()).unwrap().pop().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last.path)
        .unwrap();
    use std::io::Write;
    f.write_all(&[0x40, 0x01, 0, 0, 7, 7, 7, 7, 1, 2, 3])
        .unwrap();
    drop(f);
    let (code, report, stderr) = verify_json(dir.path());
    assert_eq!(code, Some(0), "{report} {stderr}");
    let damage = report["damage"].as_array().unwrap();
    assert_eq!(damage.len(), 1, "{report}");
    assert_eq!(damage[0]["kind"], "torn_tail");
    assert_eq!(damage[0]["loss"], false);
    assert_eq!(report["lost_seqs"].as_u64(), Some(0));
}

/// Issue 9, item 12: an empty database range passed.
#[tokio::test]
async fn replay_verify_of_an_empty_database_range_verifies_nothing_and_exits_3() {
    let (db, _client) = migrated_db().await;
    let out = run(&[
        "replay",
        "--verify",
        "--quiet",
        "--database-url",
        &db.url,
        "--from",
        "2001-01-01T00:00:00Z",
        "--to",
        "2001-01-02T00:00:00Z",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("nothing verified"), "{stderr}");
}

/// Issue 9, item 3: `import` hung forever on a journal with a missing segment. Whatever it
/// decides about the hole, it must end, and say which seqs are missing if it stops on them.
#[tokio::test]
async fn import_over_a_journal_with_a_missing_segment_ends() {
    let (db, _client) = migrated_db().await;
    let dir = tempfile::tempdir().unwrap();
    journal_capture(dir.path(), 20_000);
    let segments = list_segments(dir.path()).unwrap();
    let gone = &segments[1];
    let missing = format!("{}..={}", gone.first_seq, segments[2].first_seq - 1);
    std::fs::remove_file(&gone.path).unwrap();
    let mut child = krakenbook()
        .args([
            "import",
            "--journal-dir",
            dir.path().to_str().unwrap(),
            "--database-url",
            &db.url,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("import hangs on a journal with a missing segment");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = child.wait_with_output().unwrap();
    if !status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&missing), "{stderr}");
    }
}
