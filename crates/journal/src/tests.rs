//! Journal tests: round trips, rotation and compression, torn tails, corruption, live tailing,
//! locking, retention, and the journal thread.

use std::fs;
use std::io::Write;
use std::time::Duration;

use super::*;
use crate::record::{EventKind, FeedEvent, FrameRecord, RecordBody};
use crate::time::Timestamp;

fn frame(i: u64) -> Entry {
    Entry {
        received_at: Timestamp::from_unix_nanos(1_000 + i as i64),
        conn_id: 1 + i / 100,
        conn_seq: i,
        body: RecordBody::Frame(FrameRecord {
            bytes: format!(
                r#"{{"channel":"book","type":"update","n":{i},"pad":"{}"}}"#,
                "x".repeat((i % 50) as usize)
            )
            .into_bytes(),
            checksum_ok: Some(!i.is_multiple_of(3)),
            best_bid: None,
            best_ask: None,
        }),
    }
}

fn config(dir: &std::path::Path) -> JournalConfig {
    let mut c = JournalConfig::new(dir);
    c.compression_level = 0;
    c
}

fn read_all(dir: &std::path::Path, after: u64) -> Vec<crate::record::Record> {
    let mut reader = JournalReader::open(dir, after).unwrap();
    let mut out = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        out.push(r);
    }
    out
}

fn read_items(dir: &std::path::Path, after: u64) -> Vec<Item> {
    let mut reader = JournalReader::open(dir, after).unwrap();
    let mut out = Vec::new();
    while let Some(item) = reader.next_owned().unwrap() {
        out.push(item);
    }
    out
}

fn write(dir: &std::path::Path, config: JournalConfig, range: std::ops::Range<u64>) -> Recovery {
    let (mut w, recovery) = JournalWriter::open(config).unwrap();
    for i in range {
        w.append(frame(i)).unwrap();
    }
    w.close().unwrap();
    let _ = dir;
    recovery
}

#[test]
fn records_come_back_in_order_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = write(dir.path(), config(dir.path()), 0..10);
    assert_eq!((fresh.last_seq, fresh.next_seq), (0, 1));
    assert!(fresh.damage.is_empty());
    let recovery = write(dir.path(), config(dir.path()), 10..25);
    assert_eq!((recovery.last_seq, recovery.next_seq), (10, 11));
    assert_eq!(recovery.conn_id_base, 1);
    let records = read_all(dir.path(), 0);
    assert_eq!(records.len(), 25);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        let expected = frame(i as u64);
        assert_eq!(
            (r.received_at, r.conn_seq, &r.body),
            (expected.received_at, expected.conn_seq, &expected.body)
        );
    }
    // Reading from the middle returns exactly the rest.
    let rest = read_all(dir.path(), 17);
    assert_eq!(rest.first().map(|r| r.seq), Some(18));
    assert_eq!(rest.len(), 8);
}

#[test]
fn segments_rotate_by_size_and_compress_and_still_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = JournalConfig::new(dir.path());
    c.segment_bytes = 2_000;
    let (mut w, _) = JournalWriter::open(c.clone()).unwrap();
    for i in 0..300 {
        w.append(frame(i)).unwrap();
        w.maybe_rotate().unwrap();
    }
    w.flush().unwrap();
    // The compressor works in the background while the writer is open: wait for it to finish
    // the closed segments (closing the writer stops it).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let segments = list_segments(dir.path()).unwrap();
        let plain = segments.iter().filter(|s| !s.compressed).count();
        if plain <= 1 || std::time::Instant::now() > deadline {
            assert!(
                segments.len() > 10,
                "rotated into many segments: {}",
                segments.len()
            );
            assert!(
                plain <= 1,
                "closed segments are compressed ({plain} plain left)"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    w.close().unwrap();
    let records = read_all(dir.path(), 0);
    assert_eq!(records.len(), 300);
    assert!(records.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(read_all(dir.path(), 150).len(), 150);
    // Reopening keeps counting.
    let (w, recovery) = JournalWriter::open(c).unwrap();
    assert_eq!(recovery.last_seq, 300);
    w.close().unwrap();
}

#[test]
fn a_torn_tail_is_cut_on_open_and_every_intact_record_survives() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), config(dir.path()), 0..20);
    let last = list_segments(dir.path()).unwrap().pop().unwrap();
    let intact_len = fs::metadata(&last.path).unwrap().len();
    // A record half-written when the machine stopped: a plausible prefix, then nothing.
    let mut encoded = Vec::new();
    format::encode_record(
        &crate::record::Record {
            seq: 21,
            received_at: Timestamp::from_unix_nanos(1),
            conn_id: 1,
            conn_seq: 21,
            body: frame(20).body,
        },
        &mut encoded,
    );
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&last.path)
        .unwrap();
    f.write_all(&encoded[..encoded.len() / 2]).unwrap();
    drop(f);
    // A reader before recovery sees only the intact records (the tail looks "not yet written").
    assert_eq!(read_all(dir.path(), 0).len(), 20);

    let (w, recovery) = JournalWriter::open(config(dir.path())).unwrap();
    assert_eq!(recovery.last_seq, 20);
    assert_eq!(recovery.torn_bytes, (encoded.len() / 2) as u64);
    // The cut bytes could have held this many records: their seqs are skipped, never reused.
    let skipped = max_records((encoded.len() / 2) as u64);
    assert_eq!(recovery.next_seq, 21 + skipped);
    assert_eq!(
        fs::metadata(&last.path).unwrap().len(),
        intact_len,
        "cut at the last intact record"
    );
    w.close().unwrap();
    let records = read_all(dir.path(), 0);
    assert_eq!(records.len(), 21, "20 frames and the recovery event");
    assert_eq!(records[20].seq, 21 + skipped);
    match &records[20].body {
        RecordBody::Event(e) => {
            assert_eq!(e.kind, EventKind::JournalRecovered);
            assert!(
                e.detail.contains(&format!("seqs 21..={}", 20 + skipped)),
                "{}",
                e.detail
            );
        }
        other => panic!("expected the JournalRecovered event, got {other:?}"),
    }
    // A reader says why the seqs are missing: a torn tail, not a loss.
    let items = read_items(dir.path(), 0);
    let damage: Vec<&Damage> = items
        .iter()
        .filter_map(|i| match i {
            Item::Damage(d) => Some(d),
            Item::Record(_) => None,
        })
        .collect();
    assert_eq!(damage.len(), 1);
    assert_eq!(
        (damage[0].kind, damage[0].first_seq, damage[0].last_seq),
        (DamageKind::TornTail, 21, 20 + skipped)
    );
}

#[test]
fn a_flipped_byte_in_a_closed_segment_is_reported_with_its_offset_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), config(dir.path()), 0..20);
    write(dir.path(), config(dir.path()), 20..30); // the first segment is now closed
    let first = list_segments(dir.path()).unwrap().remove(0);
    let mut bytes = fs::read(&first.path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(&first.path, &bytes).unwrap();
    let items = read_items(dir.path(), 0);
    let damage: Vec<&Damage> = items
        .iter()
        .filter_map(|i| match i {
            Item::Damage(d) => Some(d),
            Item::Record(_) => None,
        })
        .collect();
    assert_eq!(damage.len(), 1, "{damage:?}");
    let d = damage[0];
    assert_eq!(
        (d.kind, d.first_seq, d.last_seq),
        (DamageKind::Corrupt, d.first_seq, d.first_seq)
    );
    assert_eq!(d.segment, first.path);
    assert!(
        d.offset <= at as u64 && at as u64 <= d.offset + d.bytes,
        "{d:?} vs {at}"
    );
    let records = items
        .iter()
        .filter(|i| matches!(i, Item::Record(_)))
        .count();
    assert_eq!(records, 29, "every other record is read");
    // The strict reader refuses.
    let mut reader = JournalReader::open(dir.path(), 0).unwrap();
    let err = loop {
        match reader.next_record() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("corruption went unnoticed"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, JournalError::Damaged(_)), "{err}");
}

#[test]
fn a_damaged_compressed_segment_is_reported_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = JournalConfig::new(dir.path());
    c.segment_bytes = 1;
    let (mut w, _) = JournalWriter::open(c).unwrap();
    for i in 0..5 {
        w.append(frame(i)).unwrap();
        w.maybe_rotate().unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let compressed = loop {
        if let Some(s) = list_segments(dir.path())
            .unwrap()
            .into_iter()
            .find(|s| s.compressed && s.first_seq == 2)
        {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "segment 2 was never compressed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    w.close().unwrap(); // after the compressor is done (closing stops it)
    let mut bytes = fs::read(&compressed.path).unwrap();
    bytes.truncate(bytes.len() - 6);
    fs::write(&compressed.path, &bytes).unwrap();
    let mut reader = JournalReader::open(dir.path(), 1).unwrap();
    assert!(
        reader.next_record().is_err(),
        "a truncated compressed segment must fail a strict read"
    );
    let items = read_items(dir.path(), 1);
    let seqs: Vec<(Option<DamageKind>, u64, u64)> = items
        .iter()
        .map(|i| match i {
            Item::Damage(d) => (Some(d.kind), d.first_seq, d.last_seq),
            Item::Record(r) => (None, r.seq, r.seq),
        })
        .collect();
    assert_eq!(
        seqs,
        vec![
            (Some(DamageKind::TruncatedSegment), 2, 2),
            (None, 3, 3),
            (None, 4, 4),
            (None, 5, 5)
        ]
    );
}

#[test]
fn a_reader_follows_a_live_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_bytes = 3_000;
    let (mut w, _) = JournalWriter::open(c).unwrap();
    let mut reader = JournalReader::open(dir.path(), 0).unwrap();
    let mut seen = 0;
    for round in 0..10u64 {
        for i in 0..17 {
            w.append(frame(round * 17 + i)).unwrap();
            w.maybe_rotate().unwrap();
        }
        // Not flushed yet: at most what reached the OS is visible, never a partial record.
        while let Some(r) = reader.next_record().unwrap() {
            seen += 1;
            assert_eq!(r.seq, seen);
        }
        w.flush().unwrap();
        while let Some(r) = reader.next_record().unwrap() {
            seen += 1;
            assert_eq!(r.seq, seen);
        }
        assert_eq!(seen, (round + 1) * 17, "everything flushed is readable");
    }
    w.close().unwrap();
}

#[test]
fn one_writer_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = JournalWriter::open(config(dir.path())).unwrap();
    let err = JournalWriter::open(config(dir.path())).unwrap_err();
    assert!(matches!(err, JournalError::Locked(_)), "{err}");
    assert!(err.to_string().contains("--journal-dir"));
    drop(w);
    assert!(JournalWriter::open(config(dir.path())).is_ok());
}

#[test]
fn a_segment_whose_header_never_reached_disk_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), config(dir.path()), 0..7);
    // A crash right after creating the next segment file, before its header was written.
    fs::write(dir.path().join("00000000000000000008.kbj"), b"KBJ").unwrap();
    let (w, recovery) = JournalWriter::open(config(dir.path())).unwrap();
    assert_eq!(recovery.last_seq, 7);
    // Its three bytes might have been a record: seq 8 is skipped, the event says so.
    assert_eq!(recovery.next_seq, 9);
    w.close().unwrap();
    let records = read_all(dir.path(), 0);
    assert_eq!(records.len(), 8);
    assert!(
        matches!(&records[7].body, RecordBody::Event(e) if e.kind == EventKind::JournalRecovered)
    );
}

#[test]
fn retention_waits_for_the_database_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = JournalConfig::new(dir.path());
    c.segment_bytes = 1;
    c.retention = Some(Duration::ZERO);
    let (mut w, _) = JournalWriter::open(c).unwrap();
    for i in 0..6 {
        w.append(frame(i)).unwrap();
        w.maybe_rotate().unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while list_segments(dir.path())
        .unwrap()
        .iter()
        .filter(|s| s.compressed)
        .count()
        < 6
    {
        assert!(
            std::time::Instant::now() < deadline,
            "segments were never compressed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(w.expire(0).unwrap(), 0, "nothing is in the database yet");
    assert_eq!(
        w.expire(3).unwrap(),
        3,
        "segments holding seq 1..=3 are in the database"
    );
    assert_eq!(read_all(dir.path(), 3).len(), 3);
    // What retention removed is reported as expired, not lost, and reading goes on.
    let items = read_items(dir.path(), 0);
    assert!(
        matches!(&items[0], Item::Damage(d) if (d.kind, d.first_seq, d.last_seq) == (DamageKind::Expired, 1, 3)),
        "{:?}",
        items[0]
    );
    assert_eq!(read_all(dir.path(), 0).len(), 3);
    w.close().unwrap();
}

#[test]
fn retention_removes_segments_that_were_never_compressed() {
    // No compressor (or one that failed, e.g. on a full disk): the plain segments must still
    // expire, or the journal grows without bound.
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.segment_bytes = 1;
    c.retention = Some(Duration::ZERO);
    let (mut w, _) = JournalWriter::open(c).unwrap();
    for i in 0..6 {
        w.append(frame(i)).unwrap();
        w.maybe_rotate().unwrap();
    }
    assert!(
        list_segments(dir.path())
            .unwrap()
            .iter()
            .all(|s| !s.compressed)
    );
    assert_eq!(w.expire(4).unwrap(), 4);
    assert_eq!(read_all(dir.path(), 4).len(), 2);
    // The active segment (empty, after seq 6) is never removed, whatever the checkpoint.
    assert_eq!(w.expire(u64::MAX).unwrap(), 2);
    assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    w.close().unwrap();
}

#[tokio::test]
async fn the_journal_thread_drains_everything_on_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let handle = spawn_journal(config(dir.path()), 64, None, cancel.clone()).unwrap();
    let mut flushed = handle.flushed.clone();
    for i in 0..1000 {
        handle.sender.send(frame(i)).await.unwrap();
    }
    handle
        .sender
        .send(Entry {
            received_at: Timestamp::from_unix_nanos(5),
            conn_id: 3,
            conn_seq: 0,
            body: RecordBody::Event(FeedEvent {
                kind: EventKind::Connected,
                symbol: None,
                gap_start: None,
                detail: "ws://127.0.0.1:1".into(),
            }),
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), flushed.wait_for(|&s| s == 1001))
        .await
        .unwrap()
        .unwrap();
    cancel.cancel();
    handle.join().await.unwrap();
    let records = read_all(dir.path(), 0);
    assert_eq!(records.len(), 1001);
    assert!(matches!(records[1000].body, RecordBody::Event(_)));
    let (w, recovery) = JournalWriter::open(config(dir.path())).unwrap();
    assert_eq!(
        (
            recovery.last_seq,
            recovery.conn_id_base,
            recovery.torn_bytes
        ),
        (1001, 10, 0)
    );
    drop(w);
}

/// The journal thread gives the buffers of the frames it wrote to the spare ones, and frames
/// copied into them (the feed's way) are journaled exactly: a buffer never carries a byte of the
/// frame it held before.
#[tokio::test]
async fn frames_copied_into_the_buffers_the_journal_gave_back_are_journaled_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let handle = spawn_journal(config(dir.path()), 4096, None, cancel.clone()).unwrap();
    let spare = std::sync::Arc::clone(handle.sender.spare_buffers());
    let mut flushed = handle.flushed.clone();
    let mut sent = Vec::new();
    for round in 0..4u64 {
        let batch: Vec<Entry> = (0..200)
            .map(|i| {
                let mut entry = frame(round * 200 + i);
                if let RecordBody::Frame(f) = &mut entry.body {
                    sent.push(f.bytes.clone());
                    // Copied as the feed copies: into a spare buffer when one fits.
                    f.bytes = spare.copy_of(&f.bytes);
                }
                entry
            })
            .collect();
        handle.sender.send_batch(batch).await.unwrap();
        let through = (round + 1) * 200;
        tokio::time::timeout(Duration::from_secs(10), flushed.wait_for(|&s| s >= through))
            .await
            .unwrap()
            .unwrap();
        // The batch's buffers came back (at most the bound is kept).
        assert!(spare.len() >= 150, "round {round}: {} spare", spare.len());
    }
    cancel.cancel();
    handle.join().await.unwrap();
    let records = read_all(dir.path(), 0);
    let got: Vec<Vec<u8>> = records
        .iter()
        .map(|r| match &r.body {
            RecordBody::Frame(f) => f.bytes.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(got, sent);
}

#[test]
fn a_journal_keeps_one_collector_identity() {
    let dir = tempfile::tempdir().unwrap();
    let first = identity(dir.path(), None).unwrap();
    assert!(first.len() > 9, "{first}");
    assert_eq!(identity(dir.path(), None).unwrap(), first);
    assert_eq!(identity(dir.path(), Some(&first)).unwrap(), first);
    let err = identity(dir.path(), Some("other")).unwrap_err();
    assert!(
        matches!(err, JournalError::IdentityMismatch { .. }),
        "{err}"
    );
    let other = tempfile::tempdir().unwrap();
    assert_ne!(
        identity(other.path(), None).unwrap(),
        first,
        "two journals never share an identity"
    );
    let named = tempfile::tempdir().unwrap();
    assert_eq!(identity(named.path(), Some("desk-a")).unwrap(), "desk-a");
}

/// A regression: a run that journaled nothing left an empty last segment, which the next open
/// sent to the compressor while reusing its name for the new active segment, so the next run's
/// records were compressed away under the writer (and a reader spun on the finished segment).
#[test]
fn a_run_that_journals_nothing_loses_nothing_of_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let c = JournalConfig::new(dir.path()); // compression on, as in production
    for round in 0..5u64 {
        let (w, _) = JournalWriter::open(c.clone()).unwrap();
        w.close().unwrap(); // nothing journaled
        let (mut w, recovery) = JournalWriter::open(c.clone()).unwrap();
        assert_eq!(recovery.last_seq, round * 5);
        for i in 0..5 {
            w.append(frame(round * 5 + i)).unwrap();
        }
        w.close().unwrap();
        std::thread::sleep(Duration::from_millis(50)); // let the compressor run
    }
    let (w, recovery) = JournalWriter::open(c).unwrap();
    assert_eq!(recovery.last_seq, 25);
    drop(w);
    assert_eq!(read_all(dir.path(), 0).len(), 25);
}

#[test]
fn records_read_into_recycled_buffers_are_the_records_read_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = JournalWriter::open(config(dir.path())).unwrap();
    for i in 0..300 {
        w.append(frame(i)).unwrap();
        if i % 37 == 0 {
            // Events and other kinds in between: their records own no frame buffer.
            w.append(Entry {
                received_at: Timestamp::from_unix_nanos(5_000 + i as i64),
                conn_id: 1,
                conn_seq: 0,
                body: RecordBody::Event(FeedEvent {
                    kind: EventKind::Connected,
                    symbol: None,
                    gap_start: None,
                    detail: "up".into(),
                }),
            })
            .unwrap();
        }
    }
    w.close().unwrap();
    let fresh = read_items(dir.path(), 0);
    assert!(fresh.len() > 300);

    let mut reader = JournalReader::open(dir.path(), 0).unwrap();
    let mut got: Vec<Item> = Vec::new();
    loop {
        // Buffers as a batch hands them back: old frames' bytes longer and shorter than the
        // next, none at all, and one too large to keep (freed).
        reader.recycle([
            vec![0xAA; 3],
            vec![b'}'; 700],
            Vec::new(),
            Vec::with_capacity(RECYCLED_MAX_CAPACITY + 1),
        ]);
        let recycled: Vec<Vec<u8>> = got
            .iter()
            .rev()
            .take(2)
            .filter_map(|item| match item {
                Item::Record(crate::record::Record {
                    body: RecordBody::Frame(f),
                    ..
                }) => Some(f.bytes.clone()),
                _ => None,
            })
            .collect();
        reader.recycle(recycled);
        match reader.next_owned().unwrap() {
            Some(item) => got.push(item),
            None => break,
        }
    }
    assert_eq!(got, fresh);
    assert!(reader.spare_buffers() <= RECYCLED_MAX_BUFFERS);
    // The pool keeps no more than its bound, and nothing empty or too large.
    reader.recycle((0..5_000).map(|i| vec![0u8; i % 100]));
    assert_eq!(reader.spare_buffers(), RECYCLED_MAX_BUFFERS);
    let mut big = JournalReader::open(dir.path(), 0).unwrap();
    big.recycle([Vec::new(), Vec::with_capacity(RECYCLED_MAX_CAPACITY + 1)]);
    assert_eq!(big.spare_buffers(), 0);
}
