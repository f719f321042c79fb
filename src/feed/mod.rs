//! The feed: WebSocket connections to Kraken, subscriptions, checksum verification, and the
//! stream of stamped frames and events into the journal.
//!
//! One [`Connection`] task per WebSocket connection, each owning a share of the symbols. A
//! connection subscribes to the instrument channel first (each pair's precision), then to `book`
//! for its symbols; it stamps every frame with the local receive time, its connection id and a
//! sequence number, applies book frames to its books (a [`crate::book::Tracker`]) and sends the
//! frame, with its checksum verdict and the best bid and ask, to the journal. What must hold:
//! - every frame received is journaled, in received order, before the connection reads further
//!   (a full journal queue stops the reader: back-pressure reaches the socket, never memory);
//! - a checksum mismatch marks the symbol unsynced, records a `checksum_mismatch` event (the gap
//!   begins), and resubscribes the symbol once per episode, paced by a limiter shared by all
//!   connections; the first verified message after it records `resynced` with the gap's start;
//! - a connection silent for the heartbeat timeout (5 s; heartbeats count) is dropped; reconnects
//!   back off exponentially with jitter and are paced by a shared limiter well under Kraken's
//!   ban threshold; books are rebuilt from fresh snapshots and each symbol's gap is recorded;
//! - a rejected subscription is recorded and not retried; a frame that does not decode is
//!   journaled as received, counted and logged, and the feed goes on.

mod backoff;
mod connection;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub use backoff::{Backoff, RateLimiter};
pub use connection::{Connection, fetch_pairs};

use crate::journal::Entry;
use crate::kraken::Depth;
use crate::metrics::Metrics;

/// How the feed connects and paces itself.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// The WebSocket URL (`wss://ws.kraken.com/v2`).
    pub url: url::Url,
    /// Book depth.
    pub depth: Depth,
    /// Symbols per connection.
    pub symbols_per_connection: usize,
    /// A connection with no frame for this long is dropped (heartbeats count).
    pub silence_timeout: Duration,
    /// Time allowed to open a connection (TCP, TLS and WebSocket handshake).
    pub connect_timeout: Duration,
    /// Time to wait for the instrument snapshot before subscribing to books anyway.
    pub instrument_timeout: Duration,
    /// First reconnect delay (doubles per failure, with jitter).
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// A connection up this long resets its backoff.
    pub healthy_after: Duration,
    /// A symbol resubscribed this long ago and still unsynced may be resubscribed again.
    pub resubscribe_retry: Duration,
    /// Journal the whole verified book of a symbol after this many verified updates since its
    /// last snapshot or state, so that rebuilding a book never replays more than that.
    pub book_state_every: u64,
}

impl FeedConfig {
    /// Defaults for `url` and `depth`.
    pub fn new(url: url::Url, depth: Depth) -> Self {
        FeedConfig {
            url,
            depth,
            symbols_per_connection: 100,
            silence_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            instrument_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
            resubscribe_retry: Duration::from_secs(60),
            book_state_every: 10_000,
        }
    }
}

/// What every connection of one feed shares.
#[derive(Debug)]
pub struct FeedShared {
    /// Settings.
    pub config: FeedConfig,
    /// The journal's queue.
    pub journal: tokio::sync::mpsc::Sender<Entry>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Paces connection attempts across all connections.
    pub connect_limiter: RateLimiter,
    /// Paces resubscriptions across all connections and symbols.
    pub resubscribe_limiter: RateLimiter,
    /// The last connection id handed out (connection ids keep increasing across restarts).
    pub last_conn_id: AtomicU64,
}

impl FeedShared {
    /// Shared state for a feed whose connection ids continue after `conn_id_base`.
    ///
    /// Connects are limited to a burst of 10 then one per 10 s (60 per 10 minutes, well under
    /// Kraken's ~150); resubscriptions to a burst of 10 then one per 2 s.
    pub fn new(
        config: FeedConfig,
        journal: tokio::sync::mpsc::Sender<Entry>,
        metrics: Arc<Metrics>,
        conn_id_base: u64,
    ) -> Self {
        FeedShared {
            config,
            journal,
            metrics,
            connect_limiter: RateLimiter::new(10, Duration::from_secs(10)),
            resubscribe_limiter: RateLimiter::new(10, Duration::from_secs(2)),
            last_conn_id: AtomicU64::new(conn_id_base),
        }
    }
}

/// Why the feed had to stop.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The journal stopped accepting entries: nothing more could be recorded.
    #[error("the journal stopped accepting frames")]
    JournalClosed,
    /// The instrument list could not be fetched.
    #[error("could not fetch the instrument list from {url}: {reason}")]
    Instruments {
        /// Where from.
        url: String,
        /// Why.
        reason: String,
    },
}
