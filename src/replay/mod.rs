//! Replays of recorded data: verification against the recorded verdicts (from a journal or from
//! the database), and serving recorded books over Kraken's protocol.

mod db;
mod engine;
mod serve;

use std::path::Path;

pub use db::verify_database;
pub use engine::{Disagreement, ReplayEngine, ReplayReport, SymbolReplay};
pub use serve::{ReplayMarket, ReplaySource};

use crate::journal::{JournalError, JournalReader};
use crate::time::Timestamp;

/// Replays the journal in `dir` (records received in `[from, to)`, all when `None`), calling
/// `progress(records)` now and then.
pub fn verify_journal(
    dir: &Path,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    mut progress: impl FnMut(u64),
) -> Result<ReplayReport, JournalError> {
    let mut reader = JournalReader::open(dir, 0)?;
    let mut engine = ReplayEngine::new();
    let mut n = 0u64;
    while let Some(view) = reader.next_view()? {
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
    use crate::book::{Tracker, Verdict};
    use crate::journal::{Entry, JournalConfig, JournalWriter};
    use crate::kraken::{self, Frame};
    use crate::record::{FrameRecord, RecordBody};

    /// The received frames of a real capture, exactly as received.
    fn capture(name: &str) -> Vec<String> {
        let path = format!(
            "{}/tests/fixtures/kraken-v2/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .skip(1)
            .filter(|l| !l.contains(r#""dir": "tx""#))
            .filter_map(|l| {
                l.find(r#""frame": "#)
                    .map(|i| l[i + 9..l.len() - 1].to_owned())
            })
            .collect()
    }

    /// Journals frames the way the feed does: verdicts from a tracker, in order. `tamper` may
    /// change a frame's text after its verdict was computed.
    fn journal(dir: &Path, frames: &[String], tamper: impl Fn(usize, &str) -> String) {
        let mut config = JournalConfig::new(dir);
        config.compression_level = 0;
        let (mut w, _) = JournalWriter::open(config).unwrap();
        let mut tracker = Tracker::new(10);
        for (i, text) in frames.iter().enumerate() {
            let checksum_ok = match kraken::decode(text).unwrap() {
                Frame::Book(msg) => match tracker.apply(msg.kind, &msg.data[0]) {
                    Verdict::Ok => Some(true),
                    Verdict::Mismatch { .. } => Some(false),
                    Verdict::Unsynced => None,
                },
                other => {
                    tracker.observe(&other);
                    None
                }
            };
            w.append(Entry {
                received_at: Timestamp::from_unix_nanos(1_000 * i as i64),
                conn_id: 1,
                conn_seq: i as u64 + 1,
                body: RecordBody::Frame(FrameRecord {
                    bytes: tamper(i, text).into_bytes(),
                    checksum_ok,
                    best_bid: None,
                    best_ask: None,
                }),
            })
            .unwrap();
        }
        w.close().unwrap();
    }

    #[test]
    fn a_faithful_journal_replays_clean() {
        let frames = capture("kraken_btcusd_d25_20260816.ndjson");
        let dir = tempfile::tempdir().unwrap();
        journal(dir.path(), &frames, |_, t| t.to_owned());
        let report = verify_journal(dir.path(), None, None, |_| {}).unwrap();
        assert!(report.is_clean(), "{:?}", report.disagreements);
        assert_eq!(report.frames, frames.len() as u64);
        let s = &report.symbols["BTC/USD"];
        assert_eq!(s.ok, s.book_messages);
        assert_eq!(
            s.book_messages,
            frames
                .iter()
                .filter(|f| f.starts_with(r#"{"channel":"book""#))
                .count() as u64
        );
    }

    #[test]
    fn a_tampered_frame_is_a_disagreement_at_its_seq() {
        let frames = capture("kraken_btcusd_d10_20260816.ndjson");
        let target = frames
            .iter()
            .position(|f| f.contains(r#""type":"update""#) && f.contains(r#""bids":[{"#))
            .unwrap()
            + 40;
        let dir = tempfile::tempdir().unwrap();
        journal(dir.path(), &frames, |i, t| {
            if i == target {
                // Change the first quantity's last digit: the book, and so the checksum, differ.
                let at = t.find(r#""qty":"#).unwrap() + 6;
                let end = at + t[at..].find([',', '}']).unwrap();
                let mut s = t.to_owned();
                let last = s.as_bytes()[end - 1];
                s.replace_range(end - 1..end, if last == b'1' { "2" } else { "1" });
                s
            } else {
                t.to_owned()
            }
        });
        let report = verify_journal(dir.path(), None, None, |_| {}).unwrap();
        assert!(!report.is_clean());
        assert_eq!(report.disagreements[0].seq, target as u64 + 1);
        assert_eq!(report.disagreements[0].recorded, "ok");
    }

    #[test]
    fn a_time_range_reports_only_its_frames_but_builds_books_from_before() {
        let frames = capture("kraken_btcusd_d10_20260816.ndjson");
        let dir = tempfile::tempdir().unwrap();
        journal(dir.path(), &frames, |_, t| t.to_owned());
        let from = Timestamp::from_unix_nanos(1_000 * 300);
        let to = Timestamp::from_unix_nanos(1_000 * 400);
        let report = verify_journal(dir.path(), Some(from), Some(to), |_| {}).unwrap();
        assert!(report.is_clean(), "{:?}", report.disagreements);
        assert_eq!(report.frames, 100);
        assert_eq!(report.seq_range, Some((301, 400)));
        let s = &report.symbols["BTC/USD"];
        assert_eq!(
            s.unverifiable, 0,
            "the books were built from the frames before the range"
        );
    }
}
