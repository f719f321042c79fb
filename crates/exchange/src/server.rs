//! The protocol server: accepts WebSocket connections and runs one [`Connection`] task for each,
//! serving any [`Market`].
//!
//! What must always hold:
//! - every queue is bounded: a connection's book frames wait in a queue of `send_queue` frames,
//!   and a client too slow to drain it is disconnected and counted (`slow_client_disconnects`),
//!   so a slow client never grows the server's memory;
//! - shutdown drains: the acceptor stops, each connection sends what is already queued and a
//!   WebSocket close (`1001`, going away), then the frame log is flushed and synced;
//! - the listening address is whatever the caller chose; refusing public addresses is the
//!   command line's job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::Connection;
use super::faults::{Faults, FaultsError};
use super::log::{LogError, LogWriter};
use super::market::{ConnId, Market};
use super::shared::Shared;
use super::stats::{Stats, StatsSnapshot, bump};

/// How the server behaves, apart from its market.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Heartbeat after this long without a frame (Kraken: about a second).
    pub heartbeat: Duration,
    /// Book frames queued per connection before it counts as a slow client and is closed.
    pub send_queue: usize,
    /// Faults to inject.
    pub faults: Faults,
    /// Seed of the connection ids and the random faults.
    pub seed: u64,
    /// Where to log every frame sent, if anywhere.
    pub log: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            heartbeat: Duration::from_secs(1),
            send_queue: 16_384,
            faults: Faults::default(),
            seed: 0,
            log: None,
        }
    }
}

/// Why the server could not start or finished badly.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The frame log could not be created or written.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Contradictory fault settings.
    #[error(transparent)]
    Faults(#[from] FaultsError),
    /// A setting out of range.
    #[error("{0}")]
    Config(String),
    /// A task of the server panicked.
    #[error("{0}")]
    Task(String),
}

/// A running exchange: the listener, its connections and its log.
#[derive(Debug)]
pub struct Exchange {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
    stats: Arc<Stats>,
    shared: Option<Arc<Shared>>,
    log_task: Option<JoinHandle<Result<(), LogError>>>,
}

impl Exchange {
    /// Binds `config.listen` and starts serving `market`. `tracker` and `cancel` are shared with
    /// the market's own tasks, so one shutdown stops and drains everything.
    pub async fn bind(
        config: ServerConfig,
        market: Arc<dyn Market>,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<Exchange, ExchangeError> {
        config.faults.validate()?;
        if config.heartbeat.is_zero() {
            return Err(ExchangeError::Config(
                "the heartbeat interval must be above zero".to_owned(),
            ));
        }
        let stats = Arc::new(Stats::default());
        let (log, log_task) = match &config.log {
            Some(path) => {
                let (writer, sender) = LogWriter::create(path, Arc::clone(&stats))?;
                (Some(sender), Some(tokio::spawn(writer.run())))
            }
            None => (None, None),
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ExchangeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ExchangeError::Bind {
                addr: config.listen,
                source,
            })?;
        let shared = Arc::new(Shared::new(market, config, Arc::clone(&stats), log));
        let acceptor = Acceptor {
            listener,
            shared: Arc::clone(&shared),
            tracker: tracker.clone(),
        };
        tracker.spawn(acceptor.run(cancel.clone()));
        if let Some(every) = shared.config.faults.drop_every {
            tracker.spawn(drop_in_turn(Arc::clone(&shared), every, cancel.clone()));
        }
        Ok(Exchange {
            local_addr,
            cancel,
            tracker,
            stats,
            shared: Some(shared),
            log_task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The token that stops everything when cancelled.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops accepting, drains every connection, then flushes and syncs the log.
    pub async fn shutdown(mut self) -> Result<StatsSnapshot, ExchangeError> {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        // The last log senders are the connections' (gone now) and the shared state's.
        self.shared = None;
        if let Some(task) = self.log_task.take() {
            match task.await {
                Ok(result) => result?,
                Err(e) => {
                    return Err(ExchangeError::Task(format!(
                        "the frame log writer failed: {e}"
                    )));
                }
            }
        }
        Ok(self.stats.snapshot())
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // Dropped without `shutdown`: at least stop the tasks.
        self.cancel.cancel();
    }
}

/// The accept loop.
#[derive(Debug)]
struct Acceptor {
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl Acceptor {
    async fn run(self, cancel: CancellationToken) {
        let mut next: ConnId = 1;
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let conn = next;
                    next += 1;
                    let shared = Arc::clone(&self.shared);
                    self.tracker
                        .spawn(handle(conn, stream, peer, shared, cancel.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }
}

/// The `drop_every` fault: every `every`, drops the next live connection in turn.
async fn drop_in_turn(shared: Arc<Shared>, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Some(conn) = shared.drop_next() {
                    tracing::debug!(conn, "fault: drop_every");
                }
            }
        }
    }
}

/// How long a client may take to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn handle(
    conn: ConnId,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(config));
    let ws = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match r {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "WebSocket handshake failed");
                bump(&shared.stats.handshake_failures);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "WebSocket handshake timed out");
                bump(&shared.stats.handshake_failures);
                return;
            }
        }
    };
    bump(&shared.stats.connections_accepted);
    shared
        .stats
        .connections_open
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(conn, %peer, "connection accepted");
    if let Some(log) = &shared.log {
        log.send(super::log::LogEntry::Event {
            conn,
            at: crate::time::Timestamp::now(),
            event: "connect",
            detail: peer.to_string(),
        })
        .await;
    }
    let stats = Arc::clone(&shared.stats);
    Connection::new(conn, ws, shared, cancel).run().await;
    stats.connections_open.fetch_sub(1, Ordering::Relaxed);
}
