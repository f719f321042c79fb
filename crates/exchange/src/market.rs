//! The interface between the protocol server and what it serves: a [`Market`].
//!
//! The server ([`super::server`]) owns everything about the protocol: connections, requests,
//! acks and errors, heartbeats, pings, faults and the frame log. A market owns the books: it lists
//! its instruments, and for each book subscription it pushes a snapshot and then every update,
//! already encoded, into the subscriber's [`BookSink`]. The simulator is one market; a replay
//! server serving recorded frames is another.
//!
//! A market may also end a connection, after the frames it already queued: drop it like a lost
//! connection (the socket closes without a WebSocket close frame: a replay reaching a gap in its
//! record), or close it with a reason (`1000`, the end of the record). See [`BookSink::end`].
//!
//! What must always hold:
//! - a simulated market never blocks on a subscriber: [`BookSink::send`] never waits. A sink whose
//!   bounded queue is full is *overflowed*: the push fails, the connection is told to close (a slow
//!   client is disconnected, as an exchange does), and the market drops the subscription. A
//!   replay, which has all the time it wants, may wait instead ([`BookSink::send_waiting`]);
//! - for one subscription, frames arrive in the order the market pushed them, the snapshot first;
//!   an end is acted on after every frame pushed before it;
//! - frames are shared (`Arc`): pushing one frame to many subscribers copies no text.

use std::fmt;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::kraken::encode::InstrumentPair;
use crate::kraken::{BookKind, Depth};

/// The server's number for a connection (1 for the first accepted).
pub type ConnId = u64;

/// The server's number for one book subscription of one connection (unique within the server).
pub type SubId = u64;

/// One encoded `book` frame for one symbol at one depth, shared by all its subscribers.
#[derive(Debug)]
pub struct BookFrame {
    /// The symbol.
    pub symbol: Arc<str>,
    /// Snapshot or update.
    pub kind: BookKind,
    /// The checksum the frame carries.
    pub checksum: u32,
    /// Whether the checksum differs from the previous frame's at this depth: losing this frame
    /// makes the client's next checksum fail (a frame that only touches levels below the top ten
    /// would not).
    pub checksum_changed: bool,
    /// The frame's text.
    pub text: Utf8Bytes,
}

/// How a market ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Like a lost connection: the socket closes without a WebSocket close frame.
    Drop,
    /// A WebSocket close with code 1000 (normal) and this reason.
    Close(&'static str),
}

/// What a market pushes to a connection.
#[derive(Clone, Debug)]
pub enum Item {
    /// A book frame.
    Frame(Arc<BookFrame>),
    /// The end of the connection, once everything before it was sent.
    End(Ending),
}

/// An item on its way to one connection.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The subscription it belongs to (the connection drops frames of ended subscriptions; an
    /// end applies whatever its subscription).
    pub sub: SubId,
    /// The frame or the end.
    pub item: Item,
}

/// Why a push to a [`BookSink`] failed; either way the subscription is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The connection's queue was full: it is being closed as a slow client.
    #[error("the subscriber's queue is full")]
    Overflow,
    /// The connection is gone.
    #[error("the subscriber is gone")]
    Closed,
}

/// Where a market pushes one subscription's frames: the connection's bounded queue.
#[derive(Clone, Debug)]
pub struct BookSink {
    conn: ConnId,
    sub: SubId,
    tx: mpsc::Sender<Delivery>,
    overflow: CancellationToken,
}

impl BookSink {
    /// A sink for subscription `sub` of connection `conn`; a full queue cancels `overflow`.
    pub fn new(
        conn: ConnId,
        sub: SubId,
        tx: mpsc::Sender<Delivery>,
        overflow: CancellationToken,
    ) -> Self {
        BookSink {
            conn,
            sub,
            tx,
            overflow,
        }
    }

    /// The connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The subscription.
    pub fn sub(&self) -> SubId {
        self.sub
    }

    /// Queues `frame` without waiting.
    pub fn send(&self, frame: &Arc<BookFrame>) -> Result<(), SinkError> {
        if self.overflow.is_cancelled() {
            return Err(SinkError::Overflow);
        }
        match self.tx.try_send(Delivery {
            sub: self.sub,
            item: Item::Frame(Arc::clone(frame)),
        }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow.cancel();
                Err(SinkError::Overflow)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SinkError::Closed),
        }
    }
}

impl BookSink {
    /// Queues `frame`, waiting while the queue is full: for markets that replay recorded data as
    /// fast as the client reads (a simulated exchange never waits; see [`BookSink::send`]).
    pub async fn send_waiting(&self, frame: &Arc<BookFrame>) -> Result<(), SinkError> {
        self.push(Item::Frame(Arc::clone(frame))).await
    }

    /// Ends the connection once the items queued before this one were sent, waiting while the
    /// queue is full.
    pub async fn end(&self, ending: Ending) -> Result<(), SinkError> {
        self.push(Item::End(ending)).await
    }

    async fn push(&self, item: Item) -> Result<(), SinkError> {
        if self.overflow.is_cancelled() {
            return Err(SinkError::Overflow);
        }
        self.tx
            .send(Delivery {
                sub: self.sub,
                item,
            })
            .await
            .map_err(|_| SinkError::Closed)
    }
}

/// A book subscription refused by the market.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MarketError {
    /// The market does not serve this symbol (Kraken's wording).
    #[error("Currency pair not supported {0}")]
    UnknownSymbol(String),
    /// The market cannot serve this depth (Kraken's wording for a depth it does not offer).
    #[error("Subscription depth not supported")]
    DepthNotSupported,
    /// The market cannot take the subscription now.
    #[error("Subscription failed: {0}")]
    Unavailable(&'static str),
}

/// What the protocol server serves.
pub trait Market: Send + Sync + fmt::Debug + 'static {
    /// Every pair, in the order the `instrument` snapshot lists them.
    fn instruments(&self) -> &[InstrumentPair];

    /// Starts serving `symbol` at `depth` into `sink`: the snapshot first (when `snapshot`), then
    /// every update, until [`Market::unsubscribe_book`], [`Market::disconnect`] or a failed push.
    fn subscribe_book(
        &self,
        symbol: &str,
        depth: Depth,
        snapshot: bool,
        sink: BookSink,
    ) -> Result<(), MarketError>;

    /// Stops subscription `sub` of connection `conn` to `symbol`.
    fn unsubscribe_book(&self, symbol: &str, conn: ConnId, sub: SubId);

    /// Stops every subscription of connection `conn`.
    fn disconnect(&self, conn: ConnId);
}
