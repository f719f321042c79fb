//! The frame log (`--log FILE`): every frame the exchange sent, one JSON line each, so a test can
//! compare what a client received with what was sent.
//!
//! Lines, in the order each connection sent its frames:
//!
//! ```json
//! {"conn":1,"ns":1787000000123456789,"event":"connect","detail":"127.0.0.1:53422"}
//! {"conn":1,"ns":1787000000123501234,"sent":"{\"channel\":\"status\",...}"}
//! {"conn":1,"ns":1787000000223501234,"fault":"lose_update","frame":"{\"channel\":\"book\",...}"}
//! {"conn":1,"ns":1787000000323501234,"event":"close","detail":"dropped by the drop fault"}
//! ```
//!
//! `conn` is the server's connection number (1 for the first), `ns` the send time in nanoseconds
//! since the Unix epoch, `sent` the frame's exact text (a JSON string, so even the non-JSON fault
//! frame is logged exactly). A line with `sent` is a frame that went to the socket; `fault` and
//! `event` lines say what else happened (a withheld update is logged with the frame it withheld).
//!
//! Back-pressure, not loss: connections hand lines to one writer task through a bounded channel
//! and *wait* when it is full. A log that silently missed frames would make every comparison
//! built on it a lie; waiting instead slows the sending connections to the disk's pace, which
//! shows up as an ordinary slow network (their send queues fill and, past their bound, the
//! connection is closed and counted as a slow client). The market itself never waits on the log:
//! it only pushes into the connections' bounded queues. Without `--log`, nothing is formatted.
//!
//! Shutdown drains: the writer runs until every sender is gone (every connection has finished
//! and sent its close event), then flushes and syncs the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::market::ConnId;
use super::stats::{Stats, add};
use crate::time::Timestamp;

/// Lines waiting for the writer, at most.
const CAPACITY: usize = 8192;

/// One line of the log.
#[derive(Debug)]
pub enum LogEntry {
    /// A frame went to the socket.
    Sent {
        /// Connection number.
        conn: ConnId,
        /// When.
        at: Timestamp,
        /// The frame.
        text: Utf8Bytes,
    },
    /// A fault fired (with the frame it concerns, for a withheld update).
    Fault {
        /// Connection number.
        conn: ConnId,
        /// When.
        at: Timestamp,
        /// Which fault.
        fault: &'static str,
        /// The withheld frame.
        frame: Option<Utf8Bytes>,
    },
    /// A connection opened or closed.
    Event {
        /// Connection number.
        conn: ConnId,
        /// When.
        at: Timestamp,
        /// `connect` or `close`.
        event: &'static str,
        /// The peer address, or why it closed.
        detail: String,
    },
}

/// Where connections send log lines (cheap to clone).
#[derive(Clone, Debug)]
pub struct LogSender {
    tx: mpsc::Sender<LogEntry>,
}

impl LogSender {
    /// Queues a line, waiting while the writer is behind.
    pub async fn send(&self, entry: LogEntry) {
        // The writer only stops once every sender is dropped, so this cannot fail while `self`
        // exists; if it ever did, the line is lost and nothing else is affected.
        let _ = self.tx.send(entry).await;
    }
}

/// The frame log could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[error("frame log {path}: {source}")]
pub struct LogError {
    /// The file.
    pub path: PathBuf,
    /// What failed.
    #[source]
    pub source: std::io::Error,
}

/// The task that writes the log file.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: tokio::fs::File,
    rx: mpsc::Receiver<LogEntry>,
    stats: Arc<Stats>,
}

impl LogWriter {
    /// Creates (truncates) the file at `path`.
    pub fn create(path: &Path, stats: Arc<Stats>) -> Result<(LogWriter, LogSender), LogError> {
        let file = std::fs::File::create(path).map_err(|source| LogError {
            path: path.to_owned(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(CAPACITY);
        Ok((
            LogWriter {
                path: path.to_owned(),
                file: tokio::fs::File::from_std(file),
                rx,
                stats,
            },
            LogSender { tx },
        ))
    }

    /// Writes lines until every sender is dropped, then flushes and syncs. A write error is
    /// reported at the end; lines after it are received (so senders never wait forever) but lost.
    pub async fn run(mut self) -> Result<(), LogError> {
        let mut file = tokio::io::BufWriter::with_capacity(1 << 18, self.file);
        let mut batch = Vec::with_capacity(1024);
        let mut buf = Vec::with_capacity(1 << 16);
        let mut failed: Option<std::io::Error> = None;
        while self.rx.recv_many(&mut batch, 1024).await > 0 {
            buf.clear();
            for entry in batch.drain(..) {
                write_line(&mut buf, &entry);
            }
            if failed.is_none() {
                match file.write_all(&buf).await {
                    Ok(()) => add(&self.stats.log_lines, count_lines(&buf)),
                    Err(e) => {
                        tracing::error!(path = %self.path.display(), error = %e, "frame log write failed; later lines are lost");
                        failed = Some(e);
                    }
                }
            }
        }
        if failed.is_none()
            && let Err(e) = file.flush().await
        {
            failed = Some(e);
        }
        if failed.is_none()
            && let Err(e) = file.get_mut().sync_data().await
        {
            failed = Some(e);
        }
        match failed {
            None => Ok(()),
            Some(source) => Err(LogError {
                path: self.path,
                source,
            }),
        }
    }
}

fn count_lines(buf: &[u8]) -> u64 {
    buf.iter().filter(|&&b| b == b'\n').count() as u64
}

#[derive(Serialize)]
struct SentLine<'a> {
    conn: ConnId,
    ns: i64,
    sent: &'a str,
}

#[derive(Serialize)]
struct FaultLine<'a> {
    conn: ConnId,
    ns: i64,
    fault: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    frame: Option<&'a str>,
}

#[derive(Serialize)]
struct EventLine<'a> {
    conn: ConnId,
    ns: i64,
    event: &'a str,
    detail: &'a str,
}

fn write_line(buf: &mut Vec<u8>, entry: &LogEntry) {
    // Serializing strings and integers into a Vec cannot fail.
    let _ = match entry {
        LogEntry::Sent { conn, at, text } => serde_json::to_writer(
            &mut *buf,
            &SentLine {
                conn: *conn,
                ns: at.unix_nanos(),
                sent: text.as_str(),
            },
        ),
        LogEntry::Fault {
            conn,
            at,
            fault,
            frame,
        } => serde_json::to_writer(
            &mut *buf,
            &FaultLine {
                conn: *conn,
                ns: at.unix_nanos(),
                fault,
                frame: frame.as_ref().map(Utf8Bytes::as_str),
            },
        ),
        LogEntry::Event {
            conn,
            at,
            event,
            detail,
        } => serde_json::to_writer(
            &mut *buf,
            &EventLine {
                conn: *conn,
                ns: at.unix_nanos(),
                event,
                detail,
            },
        ),
    };
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_written_in_order_and_drained_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames.ndjson");
        let stats = Arc::new(Stats::default());
        let (writer, sender) = LogWriter::create(&path, Arc::clone(&stats)).unwrap();
        let task = tokio::spawn(writer.run());
        let not_json = "<html>\"quoted\"\n</html>";
        for i in 0..10_000u64 {
            sender
                .send(LogEntry::Sent {
                    conn: 1 + i % 2,
                    at: Timestamp::from_unix_nanos(i as i64),
                    text: if i == 5 {
                        not_json.into()
                    } else {
                        format!("frame {i}").into()
                    },
                })
                .await;
        }
        sender
            .send(LogEntry::Fault {
                conn: 1,
                at: Timestamp::default(),
                fault: "drop",
                frame: None,
            })
            .await;
        drop(sender);
        task.await.unwrap().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 10_001);
        assert_eq!(
            lines[5]["sent"], not_json,
            "non-JSON frames are logged exactly"
        );
        assert_eq!(lines[9_999]["sent"], "frame 9999");
        assert_eq!(lines[9_999]["ns"], 9_999);
        assert_eq!(lines[10_000]["fault"], "drop");
        assert!(lines[10_000].get("frame").is_none());
        assert_eq!(stats.snapshot().log_lines, 10_001);
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let err = LogWriter::create(
            Path::new("/nonexistent-dir/frames.ndjson"),
            Arc::new(Stats::default()),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("frame log /nonexistent-dir/frames.ndjson: ")
        );
    }
}
