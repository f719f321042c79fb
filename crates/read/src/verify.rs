//! `krakenbook verify`: check the checksums of recorded frames, file by file.
//!
//! A recording is one JSON value per line: either a bare frame, or an object with the frame under
//! `"frame"` (the capture format of `shared/fixtures/kraken-v2`, where other keys are ignored and
//! a line with `"dir": "tx"` is a frame the client sent; read by [`kraken::capture`]). A first line that holds no frame is a
//! header. Each file is its own connection: its books start empty.
//!
//! Depth comes from the subscribe acks in the file, else from the options; precision from the
//! instrument frames in the file, else from the options, else from the wire text. The report
//! counts, per symbol, book messages, checksums ok, mismatches (with the line of the first) and
//! messages that could not be verified because no snapshot preceded them.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde::Serialize;

use crate::book::{Precision, Tracker, Verdict};
use crate::kraken::capture::{CaptureLine, CaptureLines, classify};
use crate::kraken::{self, Depth, Frame};

/// What `verify` assumes where a recording does not say.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// Depth for symbols without a subscribe ack in the file.
    pub depth: Depth,
    /// Precision for symbols without an instrument frame in the file (else the wire text).
    pub precision: Option<Precision>,
}

/// The checks of one file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileReport {
    /// The file's path as given.
    pub path: String,
    /// Lines read (including header and blank lines).
    pub lines: u64,
    /// Frames received (lines holding a received frame).
    pub frames: u64,
    /// Frames the client sent (`"dir": "tx"`), skipped.
    pub sent_frames: u64,
    /// Frames of a kind this tool does not model (kept, not checked).
    pub unknown_frames: u64,
    /// Lines that could not be decoded.
    pub undecodable: Vec<Undecodable>,
    /// Per-symbol results.
    pub symbols: BTreeMap<String, SymbolReport>,
}

/// A line that is not a decodable frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Undecodable {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub error: String,
}

/// One symbol's checksum results in one file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SymbolReport {
    /// Book messages (snapshots and updates).
    pub book_messages: u64,
    /// Of which snapshots.
    pub snapshots: u64,
    /// Messages whose checksum matched.
    pub ok: u64,
    /// Messages whose checksum did not match.
    pub mismatches: u64,
    /// Messages that could not be verified (no snapshot before them, or since a mismatch).
    pub unverifiable: u64,
    /// The line of the first mismatch.
    pub first_mismatch_line: Option<u64>,
    /// Kraken's and our checksum at the first mismatch.
    pub first_mismatch: Option<MismatchDetail>,
}

/// The two checksums of a mismatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MismatchDetail {
    /// Kraken's.
    pub expected: u32,
    /// Ours.
    pub computed: u32,
}

impl FileReport {
    /// Whether the file verified cleanly: no mismatch and no undecodable line.
    pub fn is_clean(&self) -> bool {
        self.undecodable.is_empty() && self.symbols.values().all(|s| s.mismatches == 0)
    }

    /// Book messages whose checksum was verified (matched).
    pub fn verified(&self) -> u64 {
        self.symbols.values().map(|s| s.ok).sum()
    }
}

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct VerifyError {
    /// The file.
    pub path: String,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Verifies one recording file.
pub fn verify_file(path: &Path, options: VerifyOptions) -> Result<FileReport, VerifyError> {
    let label = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| VerifyError {
        path: label.clone(),
        source,
    })?;
    verify_reader(&label, std::io::BufReader::new(file), options).map_err(|source| VerifyError {
        path: label,
        source,
    })
}

/// Verifies a recording read from `reader`; `label` names it in the report.
pub fn verify_reader(
    label: &str,
    reader: impl BufRead,
    options: VerifyOptions,
) -> std::io::Result<FileReport> {
    let mut report = FileReport {
        path: label.to_owned(),
        ..FileReport::default()
    };
    let mut tracker = Tracker::new(options.depth.levels());
    tracker.set_default_precision(options.precision);
    let mut lines = CaptureLines::new(reader);
    while let Some((n, text)) = lines.next_line()? {
        let line = classify(text);
        let frame_text = match line {
            CaptureLine::Sent { .. } => {
                report.sent_frames += 1;
                continue;
            }
            CaptureLine::Received { frame, .. } => frame,
            CaptureLine::NoFrame { .. } | CaptureLine::Other => text,
        };
        let frame = match kraken::decode(frame_text) {
            Ok(frame) => frame,
            Err(e) => {
                report.undecodable.push(Undecodable {
                    line: n,
                    error: e.to_string(),
                });
                continue;
            }
        };
        let is_wrapped = matches!(line, CaptureLine::Received { .. });
        if n == 1 && !is_wrapped && matches!(frame, Frame::Unknown(_)) {
            continue; // a header line
        }
        report.frames += 1;
        match &frame {
            Frame::Book(msg) => {
                for data in &msg.data {
                    let verdict = tracker.apply(msg.kind, data);
                    let s = report
                        .symbols
                        .entry(data.symbol.clone().into_owned())
                        .or_default();
                    s.book_messages += 1;
                    if msg.kind == kraken::BookKind::Snapshot {
                        s.snapshots += 1;
                    }
                    match verdict {
                        Verdict::Ok => s.ok += 1,
                        Verdict::Unsynced => s.unverifiable += 1,
                        Verdict::Mismatch { expected, computed } => {
                            s.mismatches += 1;
                            if s.first_mismatch_line.is_none() {
                                s.first_mismatch_line = Some(n);
                                s.first_mismatch = Some(MismatchDetail { expected, computed });
                            }
                        }
                    }
                }
            }
            Frame::Unknown(_) => report.unknown_frames += 1,
            other => tracker.observe(other),
        }
    }
    report.lines = lines.lines_read();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> FileReport {
        verify_reader("test", text.as_bytes(), VerifyOptions::default()).unwrap()
    }

    const SNAP: &str = r#"{"channel":"book","type":"snapshot","data":[{"symbol":"A/B","bids":[{"price":1.0,"qty":2.00}],"asks":[{"price":1.1,"qty":3.00}],"checksum":CK}]}"#;

    fn snap() -> String {
        // Checksum of bids 1.0/2.00, asks 1.1/3.00 at the wire's precision: "11300" + "10200".
        SNAP.replace("CK", &crc32fast::hash(b"1130010200").to_string())
    }

    #[test]
    fn reads_bare_and_wrapped_frames_and_skips_headers_and_sent_frames() {
        let text = format!(
            "{{\"captured_at\":\"x\",\"depth\":10}}\n{{\"rx_ns\":1,\"dir\":\"tx\",\"frame\":{{\"method\":\"subscribe\"}}}}\n{{\"rx_ns\":2,\"frame\":{}}}\n{}\n\n{{\"channel\":\"heartbeat\"}}\n",
            snap(),
            snap()
        );
        let r = run(&text);
        assert_eq!((r.lines, r.frames, r.sent_frames), (6, 3, 1));
        assert_eq!(r.symbols["A/B"].ok, 2);
        assert!(r.is_clean());
    }

    #[test]
    fn reports_the_line_of_the_first_mismatch_and_counts_unverifiable_updates() {
        let update = r#"{"channel":"book","type":"update","data":[{"symbol":"A/B","bids":[{"price":1.0,"qty":0}],"asks":[],"checksum":5}]}"#;
        let text = format!("{update}\n{}\n{update}\n{update}\n", snap());
        let r = run(&text);
        let s = &r.symbols["A/B"];
        assert_eq!(
            (s.book_messages, s.ok, s.mismatches, s.unverifiable),
            (4, 1, 1, 2)
        );
        assert_eq!(s.first_mismatch_line, Some(3));
        assert_eq!(s.first_mismatch.unwrap().expected, 5);
        assert!(!r.is_clean());
    }

    #[test]
    fn undecodable_lines_are_reported_not_fatal() {
        let text = format!("{}\nnot json at all\n{}\n", snap(), snap());
        let r = run(&text);
        assert_eq!(r.undecodable.len(), 1);
        assert_eq!(r.undecodable[0].line, 2);
        assert_eq!(r.symbols["A/B"].ok, 2);
        assert!(!r.is_clean());
    }
}
