//! Records from capture files (the format of `tests/fixtures/kraken-v2/`): real Kraken frames
//! turned into the [`Record`]s a collector would have journaled, for benchmarks and tests.
//!
//! A capture is one JSON value per line: a header (`captured_at`, ...), then
//! `{"rx_ns": <monotonic ns>, "frame": <frame as received>}` lines, where `"dir": "tx"` marks a
//! frame the client sent (skipped). What must always hold: every received frame becomes one frame
//! record whose bytes are the frame's text exactly as in the file, in file order, with seqs
//! counting up from the caller's; the checksum verdict and best bid/ask are what a collector's
//! [`Tracker`] gives (best levels only while the book is synced); `received_at` is the header's
//! `captured_at` plus the frame's `rx_ns` offset from the first frame.

use std::path::Path;

use krakenbook_core::book::{FrameVerdict, Tracker};
use krakenbook_core::kraken::capture::{CaptureLine, CaptureLines, classify};
use krakenbook_core::kraken::{self, Frame};
use krakenbook_core::record::{FrameRecord, Record, RecordBody};
use krakenbook_core::time::Timestamp;

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a capture line.
    #[error("{path} line {line}: not a capture line (expected {{\"rx_ns\": ..., \"frame\": ...}})")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: u64,
    },
}

/// Every capture of `tests/fixtures/kraken-v2/`, in file-name order, as one collector's records:
/// each file a connection of its own (ids from 1), seqs counting up from 1. Panics when a
/// capture cannot be read (for tests).
pub fn captured_records() -> Vec<Record> {
    let dir = crate::fixtures().join("kraken-v2");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a capture directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    paths.sort();
    let mut next_seq = 1;
    let mut records = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        records.extend(
            read_capture(path, &mut next_seq, i as u64 + 1).unwrap_or_else(|e| panic!("{e}")),
        );
    }
    records
}

/// Reads a capture into records: seqs from `*next_seq` (advanced past the last), connection id
/// `conn_id`, connection seqs from 1.
pub fn read_capture(
    path: &Path,
    next_seq: &mut u64,
    conn_id: u64,
) -> Result<Vec<Record>, CaptureError> {
    let label = path.display().to_string();
    let io = |source| CaptureError::Io {
        path: label.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut lines = CaptureLines::new(std::io::BufReader::new(file));
    let mut tracker = Tracker::new(10);
    let mut records = Vec::new();
    let mut base = Timestamp::from_unix_nanos(0);
    let mut first_rx: Option<i64> = None;
    let mut conn_seq = 0u64;
    while let Some((line_no, text)) = lines.next_line().map_err(io)? {
        let (frame_text, rx_ns) = match classify(text) {
            CaptureLine::Received { frame, rx_ns } => (frame, rx_ns),
            CaptureLine::Sent { .. } => continue,
            CaptureLine::NoFrame { captured_at } => {
                if let Some(at) = captured_at {
                    base = at;
                }
                continue;
            }
            CaptureLine::Other => {
                return Err(CaptureError::Line {
                    path: label.clone(),
                    line: line_no,
                });
            }
        };
        let rx = rx_ns.unwrap_or(0);
        let offset = rx - *first_rx.get_or_insert(rx);
        let mut record = FrameRecord {
            bytes: frame_text.as_bytes().to_vec(),
            checksum_ok: None,
            best_bid: None,
            best_ask: None,
        };
        match kraken::decode(frame_text) {
            Ok(Frame::Book(book)) => {
                let mut folded = FrameVerdict::default();
                for (i, data) in book.data.iter().enumerate() {
                    folded.add(tracker.apply(book.kind, data));
                    if i == 0
                        && let Some(b) = tracker.synced_book(&data.symbol)
                    {
                        record.best_bid = b.best_bid();
                        record.best_ask = b.best_ask();
                    }
                }
                record.checksum_ok = folded.checksum_ok();
            }
            Ok(other) => tracker.observe(&other),
            Err(_) => {}
        }
        conn_seq += 1;
        records.push(Record {
            seq: *next_seq,
            received_at: base.add_nanos(offset),
            conn_id,
            conn_seq,
            body: RecordBody::Frame(record),
        });
        *next_seq += 1;
    }
    Ok(records)
}
