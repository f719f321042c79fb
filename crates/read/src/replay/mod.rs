//! Replays of recorded data: verification against the recorded verdicts (from a journal), every
//! stored copy checked against the others (from the database), and serving recorded books over
//! Kraken's protocol.
//!
//! A journal's damage is reported with the verdicts: every item the reader finds (kind, seq
//! range, segment, offset), while every intact record is still verified. The database holds each
//! book message once, as one row of levels with every copy of it the collector received (schema
//! version 6), beside Kraken's checksum, the collector's verdicts and the book states after it:
//! [`verify_database`] replays every copy on its own connection's books and sets every stored copy
//! against the others ([`copies`] says which and how), over the whole database by default.
//! [`cross_check`] (run after it by `replay --verify`) compares, where two streams of a symbol
//! (two collectors, or two connections) were verified at once, their books at every common Kraken
//! timestamp ([`cross`]).

pub mod copies;
pub mod cross;
mod db;
mod engine;
mod serve;

use std::path::Path;

pub use copies::{CopyVerifier, StoredCopy};
pub use cross::{CrossCheck, CrossDisagreement, StreamAt, cross_check};
pub use db::{
    DbScope, FIRST_WINDOW, Progress, SPAN_BYTES, SPAN_ROWS, connection_ends, verify_database,
};
pub use engine::{DamageFound, Disagreement, ReplayEngine, ReplayReport, SymbolReplay};
pub use serve::{ReplayMarket, ReplaySource};

use crate::journal::{JournalError, JournalReader, ReadItem};
use crate::time::Timestamp;

/// Replays the journal in `dir` (records received in `[from, to)`, all when `None`), calling
/// `progress(records)` now and then. Damage found on the way is in the report (damage before
/// `from` only makes the books start over).
pub fn verify_journal(
    dir: &Path,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    mut progress: impl FnMut(u64),
) -> Result<ReplayReport, JournalError> {
    let mut reader = JournalReader::open(dir, 0)?;
    let mut engine = ReplayEngine::new();
    let mut n = 0u64;
    while let Some(item) = reader.next_item()? {
        let view = match item {
            ReadItem::Record(view) => view,
            ReadItem::Damage(d) => {
                // Reported when it may reach into the range: the first intact record after it
                // (if any) is in the range or later.
                let before_range = from.is_some_and(|f| d.after.is_some_and(|a| a < f));
                if before_range {
                    engine.forget_books();
                } else {
                    engine.damage(&d);
                }
                continue;
            }
        };
        if to.is_some_and(|t| view.received_at >= t) {
            break;
        }
        // Records before the range still build the books; their verdicts are not reported.
        if from.is_some_and(|f| view.received_at < f) {
            engine.warm(&view);
            continue;
        }
        engine.feed_view(&view);
        n += 1;
        if n.is_multiple_of(65_536) {
            progress(n);
        }
    }
    progress(n);
    Ok(engine.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Entry, JournalConfig, JournalWriter};
    use crate::record::{Record, RecordBody};
    use krakenbook_testkit::capture::read_capture;

    /// A real capture journaled as the collector would have (verdicts from a tracker, in order);
    /// `tamper` may change a frame's bytes after its verdict was computed.
    fn journal(dir: &Path, name: &str, tamper: impl Fn(usize, &mut Vec<u8>)) -> Vec<Record> {
        let path = krakenbook_testkit::fixtures().join("kraken-v2").join(name);
        let mut records = read_capture(&path, &mut 1, 1).unwrap();
        let mut config = JournalConfig::new(dir);
        config.compression_level = 0;
        let (mut w, _) = JournalWriter::open(config).unwrap();
        for (i, r) in records.iter_mut().enumerate() {
            if let RecordBody::Frame(f) = &mut r.body {
                tamper(i, &mut f.bytes);
            }
            w.append(Entry {
                received_at: r.received_at,
                conn_id: r.conn_id,
                conn_seq: r.conn_seq,
                body: r.body.clone(),
            })
            .unwrap();
        }
        w.close().unwrap();
        records
    }

    fn is_book(r: &Record) -> bool {
        r.frame_text()
            .is_some_and(|t| t.starts_with(r#"{"channel":"book""#))
    }

    #[test]
    fn a_faithful_journal_replays_clean() {
        let dir = tempfile::tempdir().unwrap();
        let records = journal(dir.path(), "kraken_btcusd_d25_20260816.ndjson", |_, _| {});
        let report = verify_journal(dir.path(), None, None, |_| {}).unwrap();
        assert!(report.is_clean(), "{:?}", report.disagreements);
        assert_eq!(report.frames, records.len() as u64);
        let s = &report.symbols["BTC/USD"];
        assert_eq!(s.ok, s.book_messages);
        assert_eq!(
            s.book_messages,
            records.iter().filter(|r| is_book(r)).count() as u64
        );
    }

    #[test]
    fn a_tampered_frame_is_a_disagreement_at_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let name = "kraken_btcusd_d10_20260816.ndjson";
        let clean = journal(tempfile::tempdir().unwrap().path(), name, |_, _| {});
        let target = clean
            .iter()
            .position(|r| {
                r.frame_text()
                    .is_some_and(|t| t.contains(r#""type":"update""#) && t.contains(r#""bids":[{"#))
            })
            .unwrap()
            + 40;
        journal(dir.path(), name, |i, bytes| {
            if i == target {
                // Change the first quantity's last digit: the book, and so the checksum, differ.
                let t = std::str::from_utf8(bytes).unwrap();
                let at = t.find(r#""qty":"#).unwrap() + 6;
                let end = at + t[at..].find([',', '}']).unwrap();
                bytes[end - 1] = if bytes[end - 1] == b'1' { b'2' } else { b'1' };
            }
        });
        let report = verify_journal(dir.path(), None, None, |_| {}).unwrap();
        assert!(!report.is_clean());
        assert_eq!(report.disagreements[0].seq, clean[target].seq);
        assert_eq!(report.disagreements[0].recorded, "ok");
    }

    #[test]
    fn damage_is_reported_and_the_frames_after_it_are_unverifiable_not_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let records = journal(dir.path(), "kraken_btcusd_d10_20260816.ndjson", |_, _| {});
        let segment = crate::journal::list_segments(dir.path()).unwrap().remove(0);
        let mut bytes = std::fs::read(&segment.path).unwrap();
        let at = bytes.len() / 3;
        for b in &mut bytes[at..at + 4] {
            *b ^= 0xff;
        }
        std::fs::write(&segment.path, &bytes).unwrap();
        let report = verify_journal(dir.path(), None, None, |_| {}).unwrap();
        assert!(!report.is_clean(), "records are lost");
        assert_eq!(report.disagreement_count, 0, "{:?}", report.disagreements);
        assert_eq!(report.damage.len(), 1);
        let d = &report.damage[0];
        assert_eq!((d.kind, d.loss), ("corrupt", true));
        assert_eq!(report.lost_seqs, d.last_seq - d.first_seq + 1);
        assert_eq!(report.records, records.len() as u64 - report.lost_seqs);
        assert!(report.unverifiable_after_damage > 0);
        assert!(!report.verified_nothing());
    }

    #[test]
    fn an_empty_journal_verifies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let report = verify_journal(dir.path(), None, None, |_| {}).unwrap();
        assert!(report.is_clean() && report.verified_nothing());
        let records = journal(dir.path(), "kraken_btcusd_d10_20260816.ndjson", |_, _| {});
        let after_all = records.last().unwrap().received_at.add_nanos(1);
        let report = verify_journal(dir.path(), Some(after_all), None, |_| {}).unwrap();
        assert!(
            report.verified_nothing(),
            "a range after every record holds nothing"
        );
    }

    #[test]
    fn a_time_range_reports_only_its_frames_but_builds_books_from_before() {
        let dir = tempfile::tempdir().unwrap();
        let records = journal(dir.path(), "kraken_btcusd_d10_20260816.ndjson", |_, _| {});
        let (from, to) = (records[300].received_at, records[400].received_at);
        let report = verify_journal(dir.path(), Some(from), Some(to), |_| {}).unwrap();
        assert!(report.is_clean(), "{:?}", report.disagreements);
        assert_eq!(report.frames, 100);
        assert_eq!(report.seq_range, Some((records[300].seq, records[399].seq)));
        let s = &report.symbols["BTC/USD"];
        assert_eq!(
            s.unverifiable, 0,
            "the books were built from the frames before the range"
        );
    }
}
