//! The capture file format (`tests/fixtures/kraken-v2/`): real Kraken frames as a client
//! received them, one JSON value per line. The one reader of it, used by `verify` (krakenbook-read)
//! and the test kit's record builder (krakenbook-testkit).
//!
//! A capture starts with a header object (`captured_at`, `depth`, ...), then one line a frame:
//! `{"rx_ns": <monotonic ns>, "frame": <the frame as received>}`, with `"dir": "tx"` on a frame
//! the client sent. Other keys are ignored. What must always hold: a frame's text is given
//! exactly as it stands in the file (a borrowed slice, never re-serialized), so its checksum and
//! its stored bytes are the received ones; a line is classified, never rejected with a panic;
//! line numbers are 1-based and count blank lines.

use std::borrow::Cow;
use std::io::BufRead;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::time::Timestamp;

/// One line of a capture, classified by [`classify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureLine<'a> {
    /// A frame the client received: its text exactly as in the file, and its `rx_ns`.
    Received {
        /// The frame's text.
        frame: &'a str,
        /// The monotonic receive time in nanoseconds, if the line has one.
        rx_ns: Option<i64>,
    },
    /// A frame the client sent (`"dir": "tx"`).
    Sent {
        /// The frame's text.
        frame: &'a str,
    },
    /// A JSON object holding no `frame`: a header (with its `captured_at`, if it has one that is a
    /// time), or a bare frame such as `{"channel":"heartbeat"}`.
    NoFrame {
        /// The header's capture time.
        captured_at: Option<Timestamp>,
    },
    /// Not a capture object: a bare frame that is not an object, or not JSON at all.
    Other,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    frame: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dir: Option<Cow<'a, str>>,
    #[serde(default)]
    rx_ns: Option<i64>,
    #[serde(borrow, default)]
    captured_at: Option<&'a RawValue>,
}

/// Classifies one line (without its line ending).
pub fn classify(line: &str) -> CaptureLine<'_> {
    let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(line) else {
        return CaptureLine::Other;
    };
    match envelope.frame {
        Some(frame) if envelope.dir.as_deref() == Some("tx") => {
            CaptureLine::Sent { frame: frame.get() }
        }
        Some(frame) => CaptureLine::Received {
            frame: frame.get(),
            rx_ns: envelope.rx_ns,
        },
        None => CaptureLine::NoFrame {
            captured_at: envelope
                .captured_at
                .and_then(|raw| serde_json::from_str(raw.get()).ok()),
        },
    }
}

/// Reads a capture's lines: line endings trimmed, blank lines skipped but counted.
#[derive(Debug)]
pub struct CaptureLines<R> {
    reader: R,
    buf: String,
    lines: u64,
}

impl<R: BufRead> CaptureLines<R> {
    /// Reads from `reader`.
    pub fn new(reader: R) -> Self {
        CaptureLines {
            reader,
            buf: String::new(),
            lines: 0,
        }
    }

    /// The next non-blank line with its 1-based number, or `None` at the end.
    pub fn next_line(&mut self) -> std::io::Result<Option<(u64, &str)>> {
        loop {
            self.buf.clear();
            if self.reader.read_line(&mut self.buf)? == 0 {
                return Ok(None);
            }
            self.lines += 1;
            if !self.buf.trim().is_empty() {
                break;
            }
        }
        Ok(Some((self.lines, self.buf.trim_end_matches(['\n', '\r']))))
    }

    /// Lines read so far, blank ones included.
    pub fn lines_read(&self) -> u64 {
        self.lines
    }
}

/// The frames received in each of the project's real captures (`tests/fixtures/kraken-v2`),
/// file by file in name order, each exactly as in the file: for this crate's tests.
#[cfg(test)]
pub(crate) fn fixture_received_frames() -> Vec<Vec<String>> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/kraken-v2"
    );
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            text.lines()
                .filter_map(|line| match classify(line) {
                    CaptureLine::Received { frame, .. } => Some(frame.to_owned()),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_line_is_classified_as_what_it_holds() {
        let header = r#"{"captured_at": "2026-08-16T23:37:02.871589+00:00", "depth": 10}"#;
        let cases: [(&str, CaptureLine<'_>, &str); 6] = [
            (
                header,
                CaptureLine::NoFrame {
                    captured_at: Timestamp::parse("2026-08-16T23:37:02.871589Z").ok(),
                },
                "a header gives its capture time",
            ),
            (
                r#"{"captured_at": "x"}"#,
                CaptureLine::NoFrame { captured_at: None },
                "a header whose time is not one",
            ),
            (
                r#"{"rx_ns": 5, "frame": {"channel":"heartbeat"}}"#,
                CaptureLine::Received {
                    frame: r#"{"channel":"heartbeat"}"#,
                    rx_ns: Some(5),
                },
                "a received frame, its text as in the file",
            ),
            (
                r#"{"rx_ns": 5, "dir": "tx", "frame": {"method":"ping"}}"#,
                CaptureLine::Sent {
                    frame: r#"{"method":"ping"}"#,
                },
                "a sent frame",
            ),
            (
                r#"{"channel":"heartbeat"}"#,
                CaptureLine::NoFrame { captured_at: None },
                "a bare frame object",
            ),
            ("not json", CaptureLine::Other, "a line that is not JSON"),
        ];
        for (line, want, what) in cases {
            assert_eq!(classify(line), want, "{what}");
        }
    }

    #[test]
    fn a_frame_keeps_its_exact_text_including_spacing_and_number_forms() {
        let line = r#"{"frame": {"price": 1.10, "qty":2.000e0} ,"rx_ns":1}"#;
        assert_eq!(
            classify(line),
            CaptureLine::Received {
                frame: r#"{"price": 1.10, "qty":2.000e0}"#,
                rx_ns: Some(1)
            }
        );
    }

    #[test]
    fn lines_are_numbered_from_one_counting_blank_lines_and_trimmed() {
        let mut lines = CaptureLines::new("a\r\n\n  \nb\nc".as_bytes());
        let mut got = Vec::new();
        while let Some((n, text)) = lines.next_line().unwrap() {
            got.push((n, text.to_owned()));
        }
        assert_eq!(
            got,
            [
                (1, "a".to_owned()),
                (4, "b".to_owned()),
                (5, "c".to_owned())
            ]
        );
        assert_eq!(lines.lines_read(), 5);
    }
}
