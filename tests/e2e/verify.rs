//! `krakenbook verify` over the real Kraken captures.

use serde_json::Value;

use crate::support::{fixtures, run};

/// Book frames in a capture, counted by a plain text scan independent of the decoder.
fn book_frames(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#"{"channel":"book","type":"#))
        .count() as u64
}

#[test]
fn every_book_message_in_the_real_captures_verifies() {
    let files = fixtures();
    let mut args = vec!["verify", "--json"];
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    let out = run(&args);
    assert!(
        out.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports.len(), files.len());
    let mut total_ok = 0;
    for (report, path) in reports.iter().zip(&files) {
        let name = path.file_name().unwrap().to_string_lossy();
        assert_eq!(report["undecodable"].as_array().unwrap().len(), 0, "{name}");
        let symbols = report["symbols"].as_object().unwrap();
        assert_eq!(symbols.len(), 1, "{name}");
        let s = symbols.values().next().unwrap();
        let messages = s["book_messages"].as_u64().unwrap();
        assert_eq!(
            messages,
            book_frames(path),
            "{name}: every book frame counted"
        );
        assert_eq!(s["mismatches"].as_u64(), Some(0), "{name}");
        if name.contains("20260817") {
            // This capture starts mid-stream: no snapshot, so nothing can be verified.
            assert_eq!(s["ok"].as_u64(), Some(0), "{name}");
            assert_eq!(s["unverifiable"].as_u64(), Some(messages), "{name}");
        } else {
            assert_eq!(s["ok"].as_u64(), Some(messages), "{name}: every message ok");
            total_ok += messages;
        }
    }
    assert!(
        total_ok > 4000,
        "the captures hold thousands of verifiable messages, got {total_ok}"
    );
}

#[test]
fn the_resync_capture_verifies_both_snapshots() {
    let file = fixtures()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("resync"))
        .unwrap();
    let out = run(&["verify", "--json", &file.display().to_string()]);
    assert!(out.status.success());
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reports[0]["symbols"]["MINA/GBP"]["snapshots"].as_u64(),
        Some(2)
    );
}

#[test]
fn a_tampered_checksum_fails_with_its_line() {
    let source = fixtures()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("btcusd_d10"))
        .unwrap();
    let text = std::fs::read_to_string(&source).unwrap();
    // Change the checksum of the 20th line's frame (an update), leaving everything else intact.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let target = lines
        .iter()
        .enumerate()
        .skip(19)
        .find(|(_, l)| l.contains(r#""type":"update""#))
        .map(|(i, _)| i)
        .unwrap();
    let start = lines[target].find(r#""checksum":"#).unwrap() + r#""checksum":"#.len();
    let end = start
        + lines[target][start..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap();
    let original: u64 = lines[target][start..end].parse().unwrap();
    lines[target].replace_range(start..end, &((original + 1) % (1 << 32)).to_string());
    let dir = tempfile::tempdir().unwrap();
    let tampered = dir.path().join("tampered.ndjson");
    std::fs::write(&tampered, lines.join("\n")).unwrap();

    let out = run(&["verify", &tampered.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains(&format!("line {}", target + 1)), "{stdout}");

    let out = run(&["verify", "--json", &tampered.display().to_string()]);
    let reports: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let s = &reports[0]["symbols"]["BTC/USD"];
    assert_eq!(s["mismatches"].as_u64(), Some(1));
    assert_eq!(s["first_mismatch_line"].as_u64(), Some(target as u64 + 1));
    assert_eq!(
        s["first_mismatch"]["expected"].as_u64(),
        Some((original + 1) % (1 << 32))
    );
}

#[test]
fn bad_flags_get_a_one_line_message() {
    let out = run(&["verify", "--depth", "50", "x.ndjson"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("use 10, 25, 100, 500 or 1000"), "{stderr}");
    let out = run(&["verify", "/no/such/file.ndjson"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/no/such/file.ndjson"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// Issue 9, item 12: an empty file, or one with only updates and no snapshot, verified nothing
/// and passed.
#[test]
fn verifying_nothing_exits_3_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    let updates_only = dir.path().join("updates.ndjson");
    std::fs::write(
        &updates_only,
        r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":1.0,"qty":2.0}],"asks":[],"checksum":1,"timestamp":"2026-11-24T10:00:00.000000Z"}]}
"#,
    )
    .unwrap();
    for file in [&empty, &updates_only] {
        let out = run(&["verify", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(3), "{}", file.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("nothing verified"), "{err}");
    }
    // A symbol name with an escape sequence is printed escaped, never raw.
    let hostile = dir.path().join("hostile.ndjson");
    std::fs::write(
        &hostile,
        "{\"channel\":\"book\",\"type\":\"update\",\"data\":[{\"symbol\":\"X\\u001b[2J/USD\",\"bids\":[],\"asks\":[],\"checksum\":1,\"timestamp\":\"2026-11-24T10:00:00.000000Z\"}]}\n",
    )
    .unwrap();
    let out = run(&["verify", hostile.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("X\\u{1b}[2J/USD"), "{text}");
}
