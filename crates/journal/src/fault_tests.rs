//! The journal under faults, through the simulated disk (`sim`): damaged bytes, torn writes at
//! every byte, missing and truncated segments, a full disk, failing fsyncs, bad settings, and
//! power cuts in the middle of anything.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::format::{Parsed, parse_record};
use super::io::Fs;
use super::sim::{Cut, SimDisk};
use super::*;
use crate::record::{EventKind, FrameRecord, Record, RecordBody};
use crate::time::Timestamp;

fn dir() -> PathBuf {
    PathBuf::from("/sim/journal")
}

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

fn config(fs: &Arc<dyn Fs>) -> JournalConfig {
    let mut c = JournalConfig::new(dir());
    c.compression_level = 0;
    c.fs = Arc::clone(fs);
    c
}

/// Everything a reader returns, in `mode`.
fn items(fs: &Arc<dyn Fs>, after: u64, mode: ReadMode) -> Vec<Item> {
    let mut reader = JournalReader::open_with(Arc::clone(fs), &dir(), after, mode).unwrap();
    let mut out = Vec::new();
    while let Some(item) = reader.next_owned().unwrap() {
        out.push(item);
    }
    out
}

fn records(items: &[Item]) -> Vec<&Record> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Record(r) => Some(r),
            Item::Damage(_) => None,
        })
        .collect()
}

fn damage(items: &[Item]) -> Vec<(DamageKind, u64, u64)> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Damage(d) => Some((d.kind, d.first_seq, d.last_seq)),
            Item::Record(_) => None,
        })
        .collect()
}

/// (offset, length, seq) of each record of a segment's bytes, in order.
fn layout(bytes: &[u8]) -> Vec<(usize, usize, u64)> {
    let header = match format::SegmentHeader::decode(bytes) {
        format::HeaderParse::Header(_, len) => len,
        other => panic!("no header: {other:?}"),
    };
    let mut at = header;
    let mut out = Vec::new();
    while let Parsed::Record(view, len) = parse_record(&bytes[at..]) {
        out.push((at, len, view.seq));
        at += len;
    }
    out
}

fn segments(fs: &Arc<dyn Fs>) -> Vec<SegmentFile> {
    segment::list_in(fs.as_ref(), &dir()).unwrap()
}

/// Writes `n` frames in one run (synced and closed).
fn write_run(fs: &Arc<dyn Fs>, c: JournalConfig, range: std::ops::Range<u64>) -> Recovery {
    let _ = fs;
    let (mut w, recovery) = JournalWriter::open(c).unwrap();
    for i in range {
        w.append(frame(i)).unwrap();
        w.maybe_rotate().unwrap();
    }
    w.close().unwrap();
    recovery
}

/// The regression for issue 9, item 2: 4 bytes flipped in the middle of the active segment made
/// the next start cut 42,077 bytes (146 intact records) after them as "a torn tail".
#[test]
fn one_damaged_record_is_not_taken_for_a_torn_tail() {
    let disk = SimDisk::new(1);
    let fs = disk.boot();
    let (mut w, _) = JournalWriter::open(config(&fs)).unwrap();
    for i in 0..300 {
        w.append(frame(i)).unwrap();
    }
    w.sync().unwrap();
    let active = w.segment_path().to_path_buf();
    drop(w); // SIGKILL: nothing more is written
    let bytes = disk.read(&active);
    let laid_out = layout(&bytes);
    let (at, len, victim) = laid_out[150];
    for i in 0..4 {
        disk.flip(&active, at + len / 2 + i, 0xa5);
    }
    disk.power_cut(Cut::Clean);
    let fs = disk.boot();
    let (w, recovery) = JournalWriter::open(config(&fs)).unwrap();
    assert_eq!(recovery.torn_bytes, 0, "nothing was cut");
    assert_eq!(recovery.last_seq, 300);
    assert_eq!(
        recovery.next_seq, 301,
        "no seq skipped: there is no torn tail"
    );
    assert_eq!(recovery.damage.len(), 1, "{:?}", recovery.damage);
    let d = &recovery.damage[0];
    assert_eq!(
        (d.kind, d.first_seq, d.last_seq, d.offset, d.bytes),
        (DamageKind::Corrupt, victim, victim, at as u64, len as u64)
    );
    assert_eq!(d.segment, active);
    assert_eq!(w.stats().damaged_seqs_at_open.load(Ordering::Relaxed), 1);
    assert_eq!(
        disk.read(&active).len(),
        bytes.len(),
        "the segment is kept whole"
    );
    w.close().unwrap();
    let fs = disk.boot();
    let got = items(&fs, 0, ReadMode::Auto);
    assert_eq!(damage(&got), vec![(DamageKind::Corrupt, victim, victim)]);
    let seqs: Vec<u64> = records(&got).iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (1..=300).filter(|&s| s != victim).collect();
    assert_eq!(
        seqs, expected,
        "every intact record after the damage is kept"
    );
    // The damage item sits where the record would have been, with the times around it.
    let at = got
        .iter()
        .position(|i| matches!(i, Item::Damage(_)))
        .unwrap();
    match (&got[at - 1], &got[at], &got[at + 1]) {
        (Item::Record(before), Item::Damage(d), Item::Record(after)) => {
            assert_eq!(d.before, Some(before.received_at));
            assert_eq!(d.after, Some(after.received_at));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(last_seq_in(fs.as_ref(), &dir()).unwrap(), 300);
}

/// The regression for issue 9, item 3: with a middle segment missing or truncated,
/// `replay --verify` passed on a third of the records, `import` hung and the collector's
/// pipeline stalled forever, silently.
#[test]
fn a_missing_or_truncated_middle_segment_is_reported_not_skipped() {
    let disk = SimDisk::new(2);
    let fs = disk.boot();
    let mut c = config(&fs);
    c.segment_bytes = 2_000;
    write_run(&fs, c.clone(), 0..200);
    let all = segments(&fs);
    assert!(all.len() >= 6, "{} segments", all.len());
    let last_of = |i: usize| all[i + 1].first_seq - 1;
    // Segment 2 goes; segment 4 loses its last 30 bytes (it now ends inside a record).
    disk.remove(&all[2].path);
    let truncated = disk.read(&all[4].path);
    let cut_at = truncated.len() - 30;
    disk.write(&all[4].path, &truncated[..cut_at]);
    let torn_record = layout(&truncated).last().copied().unwrap();
    let expected = vec![
        (DamageKind::MissingSegment, all[2].first_seq, last_of(2)),
        (DamageKind::TruncatedSegment, torn_record.2, last_of(4)),
    ];
    for mode in [ReadMode::Closed, ReadMode::Auto, ReadMode::Follow] {
        let got = items(&fs, 0, mode);
        assert_eq!(damage(&got), expected, "{mode:?}");
        let seqs: Vec<u64> = records(&got).iter().map(|r| r.seq).collect();
        let expected_seqs: Vec<u64> = (1..=200)
            .filter(|&s| {
                !(all[2].first_seq..=last_of(2)).contains(&s) && s < torn_record.2 || s > last_of(4)
            })
            .collect();
        assert_eq!(seqs, expected_seqs, "{mode:?}");
    }
    // A follower of a live journal meets the same holes, reports them and goes on to the end
    // (and then waits for more, never hangs).
    let (mut w, recovery) = JournalWriter::open(c).unwrap();
    assert_eq!(recovery.last_seq, 200);
    let mut reader = JournalReader::open_with(Arc::clone(&fs), &dir(), 0, ReadMode::Auto).unwrap();
    let mut seen = Vec::new();
    while let Some(item) = reader.next_owned().unwrap() {
        seen.push(item);
    }
    assert_eq!(damage(&seen), expected);
    assert_eq!(reader.position(), 200);
    w.append(frame(200)).unwrap();
    w.flush().unwrap();
    assert!(matches!(reader.next_owned().unwrap(), Some(Item::Record(r)) if r.seq == 201));
    w.close().unwrap();
    // The damage is a loss: the strict reader refuses, and `last_seq` is still right.
    let fs2 = disk.boot();
    let mut strict = JournalReader::open_with(fs2, &dir(), 0, ReadMode::Closed).unwrap();
    let err = loop {
        match strict.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the missing segment went unnoticed"),
            Err(e) => break e,
        }
    };
    assert!(
        err.to_string().contains(&format!(
            "seqs {}..={} missing (missing_segment)",
            all[2].first_seq,
            last_of(2)
        )),
        "{err}"
    );
    assert_eq!(last_seq_in(disk.boot().as_ref(), &dir()).unwrap(), 201);
}

#[test]
fn a_missing_first_segment_is_lost_unless_retention_recorded_it() {
    let disk = SimDisk::new(3);
    let fs = disk.boot();
    let mut c = config(&fs);
    c.segment_bytes = 2_000;
    write_run(&fs, c, 0..100);
    let all = segments(&fs);
    disk.remove(&all[0].path);
    let end = all[1].first_seq - 1;
    assert_eq!(
        damage(&items(&fs, 0, ReadMode::Closed)),
        vec![(DamageKind::MissingSegment, 1, end)]
    );
    let path = dir().join(segment::EXPIRED_FILE);
    segment::write_expired(fs.as_ref(), &dir(), end - 2).unwrap();
    assert!(fs.exists(&path).unwrap());
    assert_eq!(
        damage(&items(&fs, 0, ReadMode::Closed)),
        vec![
            (DamageKind::Expired, 1, end - 2),
            (DamageKind::MissingSegment, end - 1, end)
        ]
    );
}

#[test]
fn torn_writes_at_every_byte_of_the_last_record_are_cut_and_their_seqs_skipped() {
    // The journal as a power cut can leave it: synced records, then any prefix of the next.
    let disk = SimDisk::new(4);
    let fs = disk.boot();
    let (mut w, _) = JournalWriter::open(config(&fs)).unwrap();
    for i in 0..20 {
        w.append(frame(i)).unwrap();
    }
    w.sync().unwrap();
    let active = w.segment_path().to_path_buf();
    w.close().unwrap();
    let whole = disk.read(&active);
    let (at, len, seq) = *layout(&whole).last().unwrap();
    assert_eq!(seq, 20);
    for cut in 1..len {
        let disk = SimDisk::new(cut as u64);
        let fs = disk.boot();
        fs.create_dir_all(&dir()).unwrap();
        let mut f = fs.create(&active).unwrap();
        f.write_all(&whole[..at + cut]).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        // Read before recovery: a closed journal (no lock held) reports the tail as recovery
        // will skip it.
        let skip = max_records(cut as u64);
        assert_eq!(
            damage(&items(&fs, 0, ReadMode::Auto)),
            vec![(DamageKind::TornTail, 20, 19 + skip)],
            "cut at {cut}"
        );
        let (w, recovery) = JournalWriter::open(config(&fs)).unwrap();
        assert_eq!(
            (recovery.last_seq, recovery.torn_bytes, recovery.next_seq),
            (19, cut as u64, 20 + skip),
            "cut at {cut}"
        );
        w.close().unwrap();
        assert_eq!(disk.read(&active).len(), at, "cut at {cut}");
        let got = items(&fs, 0, ReadMode::Auto);
        assert_eq!(damage(&got), vec![(DamageKind::TornTail, 20, 19 + skip)]);
        let recs = records(&got);
        assert_eq!(recs.len(), 20, "19 frames and the event");
        assert_eq!(recs[19].seq, 20 + skip);
        assert!(
            matches!(&recs[19].body, RecordBody::Event(e) if e.kind == EventKind::JournalRecovered)
        );
    }
}

#[test]
fn a_crash_during_recovery_never_lowers_the_seqs_skipped() {
    // A torn tail, then power cuts at every operation of the recovery that handles it (each
    // cut leaving torn or zeroed bytes of what it was writing): every later start skips at least
    // as far as the first would have.
    let disk = SimDisk::new(5);
    let fs = disk.boot();
    let (mut w, _) = JournalWriter::open(config(&fs)).unwrap();
    for i in 0..50 {
        w.append(frame(i)).unwrap();
    }
    w.sync().unwrap();
    for i in 50..60 {
        w.append(frame(i)).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    disk.power_cut(Cut::Torn);
    let plan_next = || {
        let fs = disk.boot();
        recovery::plan(fs.as_ref(), &segments(&fs))
            .unwrap()
            .recovery
            .next_seq
    };
    let reference = plan_next();
    assert!(reference > 50);
    for strike in 0.. {
        assert!(strike < 100, "recovery never completed");
        disk.crash_after(strike, Cut::Any);
        let opened = JournalWriter::open(config(&disk.boot()));
        let struck = !disk.disarm();
        match opened {
            Ok((w, recovery)) => {
                assert!(!struck);
                assert!(
                    recovery.next_seq >= reference,
                    "after a cut at op {strike}: {} < {reference}",
                    recovery.next_seq
                );
                w.close().unwrap();
                break;
            }
            Err(_) => {
                assert!(struck);
                let again = plan_next();
                assert!(
                    again >= reference,
                    "after a cut at op {strike}: {again} < {reference}"
                );
            }
        }
    }
}

#[test]
fn a_full_disk_leaves_no_half_record_and_writing_resumes_when_there_is_room() {
    let disk = SimDisk::new(6);
    let fs = disk.boot();
    let (mut w, _) = JournalWriter::open(config(&fs)).unwrap();
    for i in 0..10 {
        w.append(frame(i)).unwrap();
    }
    w.sync().unwrap();
    let path = w.segment_path().to_path_buf();
    let before = disk.read(&path).len();
    // Room for half a record more.
    disk.set_capacity(Some(disk.used() + 40));
    for i in 10..20 {
        w.append(frame(i)).unwrap();
    }
    let err = w.flush().unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(
        disk.read(&path).len(),
        before,
        "cut back to the last whole record"
    );
    assert_eq!(w.waiting(), 10, "the records are kept");
    // Syncing still syncs what was written, and says the disk is full.
    assert!(w.sync().unwrap_err().is_disk_full());
    assert_eq!(w.synced_seq(), 10);
    assert!(w.stats().disk_full.load(Ordering::Relaxed));
    // More entries while full: kept too.
    w.append(frame(20)).unwrap();
    assert!(w.flush().unwrap_err().is_disk_full());
    disk.set_capacity(None);
    w.sync().unwrap();
    assert_eq!((w.waiting(), w.synced_seq()), (0, 21));
    assert!(!w.stats().disk_full.load(Ordering::Relaxed));
    w.close().unwrap();
    let got = items(&fs, 0, ReadMode::Auto);
    assert!(damage(&got).is_empty(), "{:?}", damage(&got));
    let seqs: Vec<u64> = records(&got).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=21).collect::<Vec<_>>());
}

#[test]
fn a_failed_fsync_stops_the_writer_and_is_never_retried() {
    let disk = SimDisk::new(7);
    let fs = disk.boot();
    let (mut w, _) = JournalWriter::open(config(&fs)).unwrap();
    w.append(frame(0)).unwrap();
    w.sync().unwrap();
    w.append(frame(1)).unwrap();
    disk.fail_syncs(true);
    let err = w.sync().unwrap_err();
    assert!(
        matches!(&err, JournalError::Io { path, source } if *path == w.segment_path() && source.raw_os_error() == Some(5)),
        "{err}"
    );
    assert_eq!(w.synced_seq(), 1, "seq 2 is not claimed synced");
    disk.fail_syncs(false);
    // The kernel may have dropped the dirty pages: a second fsync could succeed with the data
    // gone. The writer never tries.
    assert!(matches!(w.sync(), Err(JournalError::Stopped(_))));
    assert!(matches!(w.append(frame(2)), Err(JournalError::Stopped(_))));
    assert_eq!(w.stats().synced_seq.load(Ordering::Relaxed), 1);
    assert!(w.close().is_err());
    // Restart recovers from what the disk holds.
    disk.power_cut(Cut::Clean);
    let (w, recovery) = JournalWriter::open(config(&disk.boot())).unwrap();
    assert_eq!(recovery.last_seq, 1);
    w.close().unwrap();
}

#[test]
fn a_rotation_that_cannot_create_its_segment_keeps_writing_the_active_one() {
    // Issue 9, item 5: with no file descriptor left, the journal could not open a segment and
    // the collector exited.
    let disk = SimDisk::new(13);
    let fs = disk.boot();
    let mut c = config(&fs);
    c.segment_bytes = 1_000;
    let (mut w, _) = JournalWriter::open(c).unwrap();
    for i in 0..20 {
        w.append(frame(i)).unwrap();
    }
    let active = w.segment_path().to_path_buf();
    disk.fail_creates(true);
    let err = w.maybe_rotate().unwrap_err();
    assert!(err.is_retriable() && !err.is_disk_full(), "{err}");
    assert!(
        err.to_string().contains("cannot start a new segment"),
        "{err}"
    );
    // Writing goes on in the active segment; the retry waits a second, not every append.
    for i in 20..40 {
        w.append(frame(i)).unwrap();
        assert!(!w.maybe_rotate().unwrap());
    }
    w.sync().unwrap();
    assert_eq!(w.segment_path(), active);
    disk.fail_creates(false);
    w.rotate().unwrap();
    assert_ne!(w.segment_path(), active);
    w.append(frame(40)).unwrap();
    w.close().unwrap();
    let got = items(&disk.boot(), 0, ReadMode::Auto);
    assert!(damage(&got).is_empty());
    assert_eq!(records(&got).len(), 41);
    assert!(
        !disk
            .boot()
            .list(&dir())
            .unwrap()
            .iter()
            .any(|n| n.ends_with(".tmp")),
        "no temporary file left behind"
    );
}

fn spawn(
    fs: &Arc<dyn Fs>,
    c: JournalConfig,
    capacity: usize,
) -> (JournalHandle, CancellationToken) {
    let _ = fs;
    let cancel = CancellationToken::new();
    (
        spawn_journal(c, capacity, None, cancel.clone()).unwrap(),
        cancel,
    )
}

use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn on_a_full_disk_the_journal_thread_holds_entries_says_so_and_resumes() {
    let disk = SimDisk::new(8);
    let fs = disk.boot();
    let (handle, cancel) = spawn(&fs, config(&fs), 16);
    let mut problem = handle.problem.clone();
    for i in 0..5 {
        handle.sender.send(frame(i)).await.unwrap();
    }
    let mut syncer = handle.syncer();
    syncer.sync_through(5).await.unwrap();
    disk.set_capacity(Some(disk.used() + 100));
    // Send until the queue pushes back: the journal takes no more while it cannot write.
    let mut sent = 5;
    let pushed_back = loop {
        match handle.sender.try_send(frame(sent)) {
            Ok(()) => sent += 1,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => break true,
            Err(e) => panic!("{e}"),
        }
        if sent > 10_000 {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert!(pushed_back, "the queue pushes back while the disk is full");
    tokio::time::timeout(Duration::from_secs(10), problem.wait_for(|p| p.is_some()))
        .await
        .unwrap()
        .unwrap();
    let why = problem.borrow().clone().unwrap();
    assert!(why.contains("disk full"), "{why}");
    assert!(handle.stats.disk_full.load(Ordering::Relaxed));
    assert_eq!(handle.stats.disk_full_stalls.load(Ordering::Relaxed), 1);
    assert!(*handle.synced.borrow() < sent);
    // Room again: everything is written, in order, and the problem clears.
    disk.set_capacity(None);
    tokio::time::timeout(Duration::from_secs(10), problem.wait_for(|p| p.is_none()))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), syncer.sync_through(sent))
        .await
        .unwrap()
        .unwrap();
    cancel.cancel();
    handle.join().await.unwrap();
    let got = items(&disk.boot(), 0, ReadMode::Auto);
    assert!(damage(&got).is_empty());
    let seqs: Vec<u64> = records(&got).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=sent).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_failed_fsync_stops_the_journal_thread_with_the_file_named() {
    let disk = SimDisk::new(9);
    let fs = disk.boot();
    let (handle, _cancel) = spawn(&fs, config(&fs), 16);
    let mut syncer = handle.syncer();
    let mut problem = handle.problem.clone();
    handle.sender.send(frame(0)).await.unwrap();
    syncer.sync_through(1).await.unwrap();
    disk.fail_syncs(true);
    handle.sender.send(frame(1)).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), syncer.sync_through(2))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("before seq 2"), "{err}");
    assert!(problem.wait_for(|p| p.is_some()).await.is_ok());
    let err = handle.join().await.unwrap_err();
    assert!(
        err.to_string().contains("00000000000000000001.kbj"),
        "{err}"
    );
    assert!(matches!(err, JournalError::Io { .. }), "{err}");
    disk.fail_syncs(false);
    disk.power_cut(Cut::Clean);
    let (w, recovery) = JournalWriter::open(config(&disk.boot())).unwrap();
    assert_eq!(recovery.last_seq, 1);
    w.close().unwrap();
}

/// Issue 9, item 11: `--journal-sync-interval 0s` panicked the journal thread;
/// `--journal-segment-size 0` made 593 files in 3 s.
#[test]
fn settings_that_cannot_work_are_refused_with_one_line() {
    let ok = JournalConfig::new("/x");
    assert_eq!(ok.validate(), Ok(()));
    let cases: Vec<(&str, JournalConfig, &str)> = vec![
        (
            "a zero sync interval",
            JournalConfig {
                sync_interval: Duration::ZERO,
                ..ok.clone()
            },
            "--journal-sync-interval must be at least 1ms",
        ),
        (
            "a sync interval under a millisecond",
            JournalConfig {
                sync_interval: Duration::from_micros(999),
                ..ok.clone()
            },
            "--journal-sync-interval must be at least 1ms",
        ),
        (
            "segments of zero bytes",
            JournalConfig {
                segment_bytes: 0,
                ..ok.clone()
            },
            "--journal-segment-size must be at least 1MiB",
        ),
        (
            "segments of zero seconds",
            JournalConfig {
                segment_age: Duration::ZERO,
                ..ok.clone()
            },
            "--journal-segment-age must be at least 1s",
        ),
    ];
    for (what, c, message) in cases {
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with(message), "{what}: {err}");
        assert!(!err.contains('\n'), "{what}: one line");
    }
    let edge = JournalConfig {
        sync_interval: Duration::from_millis(1),
        segment_bytes: 1 << 20,
        segment_age: Duration::from_secs(1),
        ..ok
    };
    assert_eq!(edge.validate(), Ok(()));
}

#[tokio::test]
async fn a_zero_sync_interval_does_not_stop_the_journal_thread() {
    let disk = SimDisk::new(10);
    let fs = disk.boot();
    let mut c = config(&fs);
    c.sync_interval = Duration::ZERO;
    let (handle, cancel) = spawn(&fs, c, 16);
    for i in 0..100 {
        handle.sender.send(frame(i)).await.unwrap();
    }
    let mut synced = handle.synced.clone();
    tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|&s| s == 100))
        .await
        .unwrap()
        .unwrap();
    cancel.cancel();
    handle.join().await.unwrap();
}

#[tokio::test]
async fn a_sync_request_is_answered_promptly_under_a_long_interval() {
    let disk = SimDisk::new(11);
    let fs = disk.boot();
    let mut c = config(&fs);
    c.sync_interval = Duration::from_secs(3600);
    let (handle, cancel) = spawn(&fs, c, 64);
    let mut syncer = handle.syncer();
    for round in 0..20u64 {
        for i in 0..10 {
            handle.sender.send(frame(round * 10 + i)).await.unwrap();
        }
        let mut flushed = handle.flushed.clone();
        flushed.wait_for(|&s| s >= (round + 1) * 10).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            syncer.sync_through((round + 1) * 10),
        )
        .await
        .expect("a sync request is answered without waiting for the interval")
        .unwrap();
        assert!(handle.stats.synced_seq.load(Ordering::Relaxed) >= (round + 1) * 10);
    }
    cancel.cancel();
    handle.join().await.unwrap();
}

#[test]
fn a_closed_segment_ending_in_a_torn_tail_that_recovery_never_cut_is_not_a_loss() {
    // What a power cut leaves when it strikes after recovery made the new segment durable
    // (declaring the skip) and before it cut the torn tail: the tail in a closed segment.
    let disk = SimDisk::new(12);
    let fs = disk.boot();
    let (mut w, _) = JournalWriter::open(config(&fs)).unwrap();
    for i in 0..30 {
        w.append(frame(i)).unwrap();
    }
    w.sync().unwrap();
    let first = w.segment_path().to_path_buf();
    w.close().unwrap();
    let mut bytes = disk.read(&first);
    let mut next = Vec::new();
    format::encode_record(
        &Record {
            seq: 31,
            received_at: Timestamp::from_unix_nanos(1),
            conn_id: 1,
            conn_seq: 31,
            body: frame(30).body,
        },
        &mut next,
    );
    bytes.extend_from_slice(&next[..next.len() - 5]);
    disk.write(&first, &bytes);
    let tail = (next.len() - 5) as u64;
    let plan = recovery::plan(fs.as_ref(), &segments(&fs)).unwrap();
    let skip_to = plan.recovery.next_seq;
    assert_eq!(skip_to, 31 + max_records(tail));
    segment::create_segment(
        fs.as_ref(),
        &dir(),
        &SegmentHeader {
            first_seq: skip_to,
            conn_id_base: 1,
            created: Timestamp::from_unix_nanos(2),
            prev_seq: 30,
        },
    )
    .unwrap();
    disk.power_cut(Cut::Clean);
    let fs = disk.boot();
    assert_eq!(disk.read(&first).len(), bytes.len(), "not cut");
    let got = items(&fs, 0, ReadMode::Closed);
    assert_eq!(damage(&got), vec![(DamageKind::TornTail, 31, skip_to - 1)]);
    match got.iter().find(|i| matches!(i, Item::Damage(_))) {
        Some(Item::Damage(d)) => assert_eq!(
            (&d.segment, d.offset, d.bytes),
            (&first, (bytes.len() - next.len() + 5) as u64, tail)
        ),
        other => panic!("{other:?}"),
    }
    // The next start agrees, cuts the tail and says so.
    let (w, recovery) = JournalWriter::open(config(&fs)).unwrap();
    assert_eq!(recovery.next_seq, skip_to);
    assert_eq!(recovery.torn_bytes, tail);
    w.close().unwrap();
    assert_eq!(disk.read(&first).len(), bytes.len() - tail as usize);
    let got = items(&disk.boot(), 0, ReadMode::Auto);
    assert_eq!(damage(&got), vec![(DamageKind::TornTail, 31, skip_to - 1)]);
}

use std::sync::atomic::Ordering;

/// Crash consistency: many power cuts at random points under load (torn prefixes, zeroed
/// pages, cuts in the middle of rotation, compression and recovery), with occasional bit flips
/// in synced records. After each: every record synced before the cut reads back identically,
/// seqs strictly increase, and no seq handed out before a cut (and possibly synced) is ever given
/// to a different record. `KRAKENBOOK_CRASH_ITERATIONS=N` runs N machines instead of 30.
#[test]
fn power_cuts_under_load_never_lose_a_synced_record_or_reuse_a_seq() {
    let iterations: u64 = std::env::var("KRAKENBOOK_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let base: u64 = std::env::var("KRAKENBOOK_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    for iteration in 0..iterations {
        crash_machine(base.wrapping_add(iteration));
    }
}

/// One machine: several boots, each cut short by a power cut.
fn crash_machine(seed: u64) {
    let ctx = format!("KRAKENBOOK_CRASH_SEED={seed} KRAKENBOOK_CRASH_ITERATIONS=1");
    let mut rng = crate::rng::Rng::new(seed);
    let disk = SimDisk::new(seed);
    // Every seq ever handed out, with the payload it was given.
    let mut handed: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    // Seqs synced for sure, and the highest an fsync covered (told or not).
    let mut synced: std::collections::BTreeSet<u64> = Default::default();
    let mut maybe_synced_through = 0u64;
    // Synced records damaged on purpose (bit flips): not required back, never reused.
    let mut flipped: std::collections::BTreeSet<u64> = Default::default();
    let compression = if rng.below(4) == 0 { 1 } else { 0 };
    let boots = 3 + rng.below(4);
    let mut n = 0u64;
    for boot in 0..=boots {
        let fs = disk.boot();
        let mut c = config(&fs);
        c.segment_bytes = 1_000 + rng.below(6_000);
        c.compression_level = compression;
        let last_boot = boot == boots;
        if !last_boot {
            disk.crash_after(rng.below(400), Cut::Any);
        }
        let (mut w, recovery) = match JournalWriter::open(c) {
            Ok(opened) => opened,
            Err(_) if !last_boot => continue, // the cut struck during recovery
            Err(e) => panic!("{ctx}: the final open failed: {e}"),
        };
        if std::env::var("KRAKENBOOK_CRASH_DEBUG").is_ok() {
            eprintln!(
                "boot {boot}: synced {:?} maybe {maybe_synced_through} flipped {flipped:?} -> {recovery:?}; segments {:?}",
                synced.last(),
                segments(&fs)
                    .iter()
                    .map(|s| s.first_seq)
                    .collect::<Vec<_>>()
            );
        }
        // Seqs at or after the new start were never synced (checked next): they may be reused.
        handed.retain(|&s, _| s < recovery.next_seq);
        if w.next_seq() > recovery.next_seq {
            handed.insert(recovery.next_seq, b"the recovery event".to_vec());
        }
        // The invariant, at every open.
        assert!(
            recovery.next_seq > maybe_synced_through,
            "{ctx}: boot {boot} starts at {} but seq {maybe_synced_through} may have been synced",
            recovery.next_seq
        );
        check_journal(&fs, &ctx, &handed, &synced, &flipped, &w);
        let boot_start = recovery.next_seq;
        if last_boot {
            disk.disarm();
            w.close().unwrap();
            let fs = disk.boot();
            let got = items(&fs, 0, ReadMode::Auto);
            let mut prev = 0;
            for r in records(&got) {
                assert!(r.seq > prev, "{ctx}");
                prev = r.seq;
            }
            return;
        }
        // Load until the power goes.
        loop {
            let step = rng.below(100);
            let result = if step < 70 {
                let payload = format!(
                    "m{seed}-b{boot}-n{n}-{}",
                    "y".repeat(rng.below(120) as usize)
                );
                n += 1;
                let seq = w.next_seq();
                let entry = Entry {
                    received_at: Timestamp::from_unix_nanos(n as i64),
                    conn_id: boot + 1,
                    conn_seq: n,
                    body: RecordBody::Frame(FrameRecord {
                        bytes: payload.clone().into_bytes(),
                        checksum_ok: None,
                        best_bid: None,
                        best_ask: None,
                    }),
                };
                let r = w.append(entry).map(|_| ());
                if r.is_ok() {
                    handed.insert(seq, payload.into_bytes());
                }
                r
            } else if step < 85 {
                w.flush()
            } else if step < 95 {
                let r = w.sync();
                // An fsync the power cut interrupted may have completed: then whatever reached
                // the file is on the disk, though nobody was told.
                if r.is_ok() || disk.struck_after_sync() {
                    maybe_synced_through = maybe_synced_through.max(w.written_seq());
                }
                if r.is_ok() {
                    synced.extend(boot_start..=w.synced_seq());
                }
                r
            } else {
                w.maybe_rotate().map(|_| ())
            };
            if let Err(e) = result {
                if std::env::var("KRAKENBOOK_CRASH_DEBUG").is_ok() {
                    eprintln!(
                        "  step {step} failed: {e}; next {} written {} synced {}",
                        w.next_seq(),
                        w.written_seq(),
                        w.synced_seq()
                    );
                }
                break;
            }
        }
        assert!(
            !disk.disarm(),
            "{ctx}: an operation failed without a power cut"
        );
        drop(w);
        // Now and then a synced record rots: a bit flips in one of the last records.
        if rng.below(4) == 0 {
            let fs = disk.boot();
            if let Some(last) = segments(&fs).iter().rev().find(|s| !s.compressed) {
                let bytes = disk.read(&last.path);
                if let format::HeaderParse::Header(..) = format::SegmentHeader::decode(&bytes) {
                    let recs = layout(&bytes);
                    if let Some(&(at, len, seq)) = recs.iter().rev().nth(rng.below(3) as usize) {
                        disk.flip(&last.path, at + rng.below(len as u64) as usize, 0x08);
                        flipped.insert(seq);
                    }
                }
            }
        }
    }
}

/// Reads the whole journal (the writer `w` holds it) and checks it against what was handed out.
fn check_journal(
    fs: &Arc<dyn Fs>,
    ctx: &str,
    handed: &std::collections::BTreeMap<u64, Vec<u8>>,
    synced: &std::collections::BTreeSet<u64>,
    flipped: &std::collections::BTreeSet<u64>,
    w: &JournalWriter,
) {
    let got = items(fs, 0, ReadMode::Follow);
    let mut prev = 0u64;
    let mut returned = std::collections::BTreeSet::new();
    for item in &got {
        match item {
            Item::Record(r) => {
                assert!(r.seq > prev, "{ctx}: seq {} after {prev}", r.seq);
                prev = r.seq;
                returned.insert(r.seq);
                match (&r.body, handed.get(&r.seq)) {
                    (RecordBody::Frame(f), Some(payload)) => assert_eq!(
                        &f.bytes, payload,
                        "{ctx}: seq {} holds another record than the one it was given",
                        r.seq
                    ),
                    (RecordBody::Event(e), payload) => {
                        assert_eq!(e.kind, EventKind::JournalRecovered, "{ctx}");
                        assert_eq!(
                            payload.map(Vec::as_slice),
                            Some(&b"the recovery event"[..]),
                            "{ctx}: the recovery event at seq {} took a seq handed out before",
                            r.seq
                        );
                    }
                    (body, None) => panic!("{ctx}: seq {} was never handed out: {body:?}", r.seq),
                    (body, Some(_)) => panic!("{ctx}: seq {}: {body:?}", r.seq),
                }
            }
            Item::Damage(d) => {
                assert!(d.first_seq > prev, "{ctx}: {d}");
                prev = d.last_seq;
                if d.kind.is_loss() {
                    for s in d.first_seq..=d.last_seq {
                        assert!(
                            flipped.contains(&s) || !synced.contains(&s),
                            "{ctx}: synced seq {s} lost: {d}"
                        );
                    }
                }
            }
        }
    }
    for &seq in synced {
        assert!(
            returned.contains(&seq) || flipped.contains(&seq),
            "{ctx}: synced seq {seq} did not come back (next seq {}); damage {:?}; segments {:?}",
            w.next_seq(),
            damage(&got),
            segments(fs)
                .iter()
                .map(|s| (s.first_seq, s.compressed))
                .collect::<Vec<_>>()
        );
    }
}
