//! A connection's sending side: the queued book frames written out with the faults applied
//! (lost updates, garbage and unknown-channel frames, drops, silences), the market's endings of
//! a connection, and `feed`, the one path every frame takes to the socket.
//!
//! What must hold:
//! - frames of an ended subscription still in the queue are not sent;
//! - a snapshot is never withheld by a fault (only updates are);
//! - every frame written is logged first when there is a log, and every fault applied is
//!   logged and counted, so the log is what was sent;
//! - what was written before a drop or a silence reaches the client (flushed) before the
//!   socket closes or goes quiet; frames taken from the queue during a silence are discarded
//!   and counted.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::{Closed, Connection, DRAIN_TIMEOUT};
use crate::faults::{GARBAGE_FRAME, UNKNOWN_CHANNEL_FRAME};
use crate::kraken::BookKind;
use crate::log::LogEntry;
use crate::market::{Ending, Item};
use crate::stats::{add, bump};
use crate::time::Timestamp;

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Sends the queued frames (the batch already taken from the queue), applying the faults.
    pub(super) async fn deliver(&mut self) -> Result<(), Closed> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut result = Ok(());
        let mut rest = batch.drain(..);
        for d in rest.by_ref() {
            let frame = match d.item {
                Item::End(ending) => {
                    result = self.end(ending).await;
                    break;
                }
                Item::Frame(_) if !self.active.contains(&d.sub) => continue,
                Item::Frame(frame) => frame,
            };
            if frame.kind == BookKind::Snapshot {
                bump(&self.shared.stats.book_snapshots_sent);
                if let Err(c) = self.feed(frame.text.clone()).await {
                    result = Err(c);
                    break;
                }
                continue;
            }
            if self.faults.withhold(&frame) {
                bump(&self.shared.stats.fault_lost_updates);
                self.log_fault("lose_update", Some(frame.text.clone()))
                    .await;
                continue;
            }
            if let Err(c) = self.feed(frame.text.clone()).await {
                result = Err(c);
                break;
            }
            bump(&self.shared.stats.book_updates_sent);
            let after = self.faults.sent_update();
            if after.garbage {
                bump(&self.shared.stats.fault_garbage_frames);
                self.log_fault("garbage", None).await;
                if let Err(c) = self.feed(Utf8Bytes::from_static(GARBAGE_FRAME)).await {
                    result = Err(c);
                    break;
                }
            }
            if after.unknown_channel {
                bump(&self.shared.stats.fault_unknown_channel_frames);
                self.log_fault("unknown_channel", None).await;
                if let Err(c) = self
                    .feed(Utf8Bytes::from_static(UNKNOWN_CHANNEL_FRAME))
                    .await
                {
                    result = Err(c);
                    break;
                }
            }
            if after.drop {
                self.log_fault("drop", None).await;
                // What was written before the fault reaches the client; then the socket closes.
                result = self.flush().await.and(Err(Closed::DropFault));
                break;
            }
            if after.silence {
                result = self.flush().await;
                self.start_silence().await;
                break;
            }
        }
        let discarded = rest.len();
        drop(rest);
        if self.silent_until.is_some() {
            add(
                &self.shared.stats.frames_discarded_in_silence,
                discarded as u64,
            );
        }
        self.batch = batch;
        self.batch.clear();
        if result.is_ok() && self.silent_until.is_none() {
            result = self.flush().await;
        }
        result
    }

    /// Ends the connection as the market asked, after what was already written: a drop flushes
    /// and lets the socket close without a close frame; a close sends one (`1000`, the reason)
    /// and waits a moment for the client's reply.
    async fn end(&mut self, ending: Ending) -> Result<(), Closed> {
        self.flush().await?;
        if let Some(log) = &self.shared.log {
            log.send(LogEntry::Event {
                conn: self.conn,
                at: Timestamp::now(),
                event: "end",
                detail: match ending {
                    Ending::Drop => "drop".to_owned(),
                    Ending::Close(reason) => format!("close 1000 {reason}"),
                },
            })
            .await;
        }
        match ending {
            Ending::Drop => Err(Closed::MarketDrop),
            Ending::Close(reason) => {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: reason.into(),
                };
                let handshake = async {
                    self.ws.close(Some(close)).await.map_err(Closed::from_ws)?;
                    while let Some(Ok(_)) = self.ws.next().await {}
                    Ok::<(), Closed>(())
                };
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, handshake).await;
                Err(Closed::MarketClose(reason))
            }
        }
    }

    pub(super) async fn start_silence(&mut self) {
        let d = self.faults.silence_for();
        bump(&self.shared.stats.fault_silences);
        self.log_fault("silence", None).await;
        self.silent_until = Some(Instant::now() + d);
    }

    pub(super) async fn log_fault(&self, fault: &'static str, frame: Option<Utf8Bytes>) {
        tracing::debug!(conn = self.conn, fault, "fault");
        if let Some(log) = &self.shared.log {
            log.send(LogEntry::Fault {
                conn: self.conn,
                at: Timestamp::now(),
                fault,
                frame,
            })
            .await;
        }
    }

    /// Writes a frame into the socket's buffer (logged first).
    pub(super) async fn feed(&mut self, text: Utf8Bytes) -> Result<(), Closed> {
        let len = text.len() as u64;
        if let Some(log) = &self.shared.log {
            log.send(LogEntry::Sent {
                conn: self.conn,
                at: Timestamp::now(),
                text: text.clone(),
            })
            .await;
        }
        self.ws
            .feed(Message::Text(text))
            .await
            .map_err(Closed::from_ws)?;
        bump(&self.shared.stats.frames_sent);
        add(&self.shared.stats.bytes_sent, len);
        self.last_sent = Instant::now();
        Ok(())
    }

    pub(super) async fn flush(&mut self) -> Result<(), Closed> {
        self.ws.flush().await.map_err(Closed::from_ws)
    }

    pub(super) async fn send_now(&mut self, text: Utf8Bytes) -> Result<(), Closed> {
        self.feed(text).await?;
        self.flush().await
    }
}
