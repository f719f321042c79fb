//! `krakenbook serve`: a web explorer of what was recorded, read-only, every asset in the binary.
//!
//! - [`http`]: the HTTP/1.1 server (hyper), hardened like the metrics endpoint: bounded
//!   connections, header and connection deadlines, paced accept errors, no request bodies,
//!   strict security headers (a Content-Security-Policy that allows only the binary's own script
//!   and style), and, on a loopback address, only loopback host names (a DNS-rebinding page
//!   cannot reach it);
//! - [`api`]: the JSON API under `/api/` (symbols, coverage, book, step, heatmap, collectors);
//! - [`params`]: the query parameters, checked without I/O (400 with the parameter and why);
//! - [`heatmap`]: books at evenly spaced instants, built from the verified record only;
//! - [`Tier`] / [`Session`]: the cold tier (the archive) read through each session: a session
//!   opens with what coverage reads of every archived part mounted, and each request first asks
//!   its session for the windows it reads ([`Session::need`]: the book's instant, every
//!   heatmap column's instant, a step's message and its neighbour), whose archived rows are
//!   then loaded once and kept for the session's later requests, up to [`SESSION_ROWS`]; a
//!   session past that bound, or whose archive catalog changed, is replaced by a fresh one;
//! - `assets/`: the page (plain HTML, CSS and JavaScript drawing on canvas and SVG; no build
//!   step, no CDN), compiled in with `include_str!`.
//!
//! What must always hold:
//! - **Read-only.** Every database session sets `default_transaction_read_only = on` before its
//!   first query; nothing here writes.
//! - **Loopback unless asked.** [`check_listen`] refuses a non-loopback address without
//!   `--public`.
//! - **Archived ranges answer as before archiving.** Every read of the API asks its session for
//!   the windows it reads before it reads them, so the rows an answer is built from are all
//!   there, from the database or the archive's files.
//! - **The one coverage model.** Coverage, the book at an instant, and which heatmap columns
//!   have a book all come from [`crate::history`] (via [`crate::readback`]).
//! - **Nothing from the database or the peer reaches the page unescaped.** The API writes JSON
//!   with `serde_json`; the page only ever sets `textContent` and SVG attributes, never HTML.
//!
//! # Layer
//!
//! Crate `krakenbook-web`, on top of the read side. May use: `krakenbook-core`,
//! `krakenbook-store`, `krakenbook-history`, and `krakenbook-collect` for the metrics server's
//! hardened accept loop (bounded connections, paced accept errors), shared rather than copied.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

// The layers below, under the names the `krakenbook` facade gives them.
use krakenbook_collect::metrics;
use krakenbook_core::{book, text, time};
use krakenbook_history::{history, readback};
use krakenbook_store as store;

pub mod api;
pub mod heatmap;
pub mod http;
pub mod params;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio_postgres::Client;

use crate::store::{DbTarget, StoreError};
use crate::time::Timestamp;

pub use http::{Limits, serve, serve_on};

/// A listen address refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "refusing to listen on {addr}: it is not a loopback address, and the explorer has no authentication; add --public to serve it to the network anyway, or listen on 127.0.0.1"
)]
pub struct ListenRefused {
    /// The address.
    pub addr: SocketAddr,
}

/// Refuses a non-loopback `addr` unless `public`.
pub fn check_listen(addr: SocketAddr, public: bool) -> Result<(), ListenRefused> {
    if public || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(ListenRefused { addr })
    }
}

/// Why the cold tier could not give what a read needs (one line, saying what to do).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TierError(pub String);

/// A boxed future, as the tier's object-safe methods return.
pub type TierFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, TierError>> + Send + 'a>>;

/// A cold tier the explorer reads through (the archive: the binary installs it, as this crate
/// sits beside the archive, not above it). One [`TierSession`] is opened per database session.
pub trait Tier: std::fmt::Debug + Send + Sync {
    /// Prepares a new session (before it is made read-only) and returns its state.
    fn open<'a>(&'a self, client: &'a Client) -> TierFuture<'a, Box<dyn TierSession>>;
}

/// A session's view of the cold tier: what is mounted, loaded as requests need it.
pub trait TierSession: std::fmt::Debug + Send {
    /// The earliest start and the latest end of the archived ranges (`None`: nothing archived).
    fn archived_range(&self) -> Option<(Timestamp, Timestamp)>;
    /// Makes the books of `symbol` at every instant of the `windows` (`[from, to]`) readable.
    fn ensure<'a>(
        &'a mut self,
        client: &'a Client,
        symbol: &'a str,
        windows: &'a [(Timestamp, Timestamp)],
    ) -> TierFuture<'a, ()>;
    /// The Kraken timestamp of the archived book message `seq` of `symbol` on the collector's
    /// connection `conn_id` (`None`: not archived).
    fn locate<'a>(
        &'a self,
        symbol: &'a str,
        collector: &'a str,
        conn_id: i64,
        seq: i64,
    ) -> TierFuture<'a, Option<Timestamp>>;
    /// Whether what is archived changed since the session opened (the session is then stale).
    fn changed<'a>(&'a self, client: &'a Client) -> TierFuture<'a, bool>;
    /// Rows loaded into the session so far.
    fn rows_loaded(&self) -> u64;
    /// Whether a load failed part-way (the session must not be used again).
    fn is_poisoned(&self) -> bool;
}

/// Rows of archived ranges a session may hold before it is replaced by a fresh one (after the
/// request that went past it): about 1 GB of temporary tables at depth 100.
pub const SESSION_ROWS: u64 = 2_000_000;

/// One read-only database session and its view of the cold tier.
#[derive(Debug)]
pub struct Session {
    client: Client,
    tier: Option<tokio::sync::Mutex<Box<dyn TierSession>>>,
    archived: Option<(Timestamp, Timestamp)>,
    bound: u64,
    /// Set when the session must not be handed out again (over its bound, or a load failed).
    retired: AtomicBool,
}

impl std::ops::Deref for Session {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Session {
    /// The database session.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The earliest start and the latest end of the archived ranges, as the session opened.
    pub fn archived_range(&self) -> Option<(Timestamp, Timestamp)> {
        self.archived
    }

    /// Makes the books of `symbol` at every instant of `windows` readable in this session
    /// (the archived rows they need loaded, once; nothing when nothing is archived).
    pub async fn need(
        &self,
        symbol: &str,
        windows: &[(Timestamp, Timestamp)],
    ) -> Result<(), TierError> {
        let (Some(tier), Some((first, _))) = (&self.tier, self.archived) else {
            return Ok(());
        };
        // Windows that end before the archive or start after it need nothing of it (a window
        // whose books start inside it is after it only when `from` is: the tier checks that).
        let wanted: Vec<(Timestamp, Timestamp)> = windows
            .iter()
            .copied()
            .filter(|&(_, to)| to >= first)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut tier = tier.lock().await;
        let result = tier.ensure(&self.client, symbol, &wanted).await;
        if tier.is_poisoned() || tier.rows_loaded() > self.bound {
            self.retired.store(true, Ordering::Relaxed);
        }
        result
    }

    /// The Kraken timestamp of the archived book message `seq` of `symbol` on `collector`'s
    /// connection `conn_id`, found in the archive's files (`None`: not archived, or nothing is).
    pub async fn locate(
        &self,
        symbol: &str,
        collector: &str,
        conn_id: i64,
        seq: i64,
    ) -> Result<Option<Timestamp>, TierError> {
        let Some(tier) = &self.tier else {
            return Ok(None);
        };
        let tier = tier.lock().await;
        tier.locate(symbol, collector, conn_id, seq).await
    }

    async fn stale(&self) -> bool {
        if self.client.is_closed() || self.retired.load(Ordering::Relaxed) {
            return true;
        }
        let Some(tier) = &self.tier else {
            return false;
        };
        let tier = tier.lock().await;
        match tier.changed(&self.client).await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(error = %e, "serve: cannot read the archive catalog");
                true
            }
        }
    }
}

/// Read-only database sessions, shared by the requests: a few connections used in turn (one
/// slow heatmap does not hold up every other request), each reopened when it closes, when the
/// archive's catalog changed, or when it holds more archived rows than its bound.
#[derive(Debug)]
pub struct Sessions {
    target: DbTarget,
    tier: Option<Arc<dyn Tier>>,
    bound: u64,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Session>>>>,
    next: AtomicUsize,
}

/// How many database sessions the explorer keeps.
pub const SESSIONS: usize = 4;

impl Sessions {
    /// Sessions to `url` (opened on first use).
    pub fn new(url: &str) -> Result<Sessions, StoreError> {
        Ok(Sessions::from_target(DbTarget::parse(url)?))
    }

    /// Sessions through `target` (which may prepare each session it opens before it is made
    /// read-only).
    pub fn from_target(target: DbTarget) -> Sessions {
        Sessions {
            target,
            tier: None,
            bound: SESSION_ROWS,
            slots: (0..SESSIONS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// These sessions reading through `tier`, each replaced once it holds more than `bound`
    /// archived rows.
    pub fn with_tier(mut self, tier: Arc<dyn Tier>, bound: u64) -> Sessions {
        self.tier = Some(tier);
        self.bound = bound;
        self
    }

    /// A read-only session.
    pub async fn client(&self) -> Result<Arc<Session>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(s) = slot.as_ref()
            && !s.stale().await
        {
            return Ok(Arc::clone(s));
        }
        *slot = None;
        let client = self.target.connect("krakenbook serve").await?;
        let tier = match &self.tier {
            Some(t) => Some(t.open(&client).await.map_err(|e| StoreError::Session {
                what: "mounting archived data".into(),
                reason: e.0,
            })?),
            None => None,
        };
        client
            .batch_execute("SET default_transaction_read_only = on; SET statement_timeout = '120s'")
            .await
            .map_err(StoreError::db("making the session read-only"))?;
        let session = Arc::new(Session {
            client,
            archived: tier.as_ref().and_then(|t| t.archived_range()),
            tier: tier.map(tokio::sync::Mutex::new),
            bound: self.bound,
            retired: AtomicBool::new(false),
        });
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_listens_without_public() {
        // (address, --public, allowed)
        let table = [
            ("127.0.0.1:8080", false, true),
            ("127.3.4.5:8080", false, true),
            ("[::1]:8080", false, true),
            ("0.0.0.0:8080", false, false),
            ("[::]:8080", false, false),
            ("192.168.1.10:8080", false, false),
            ("0.0.0.0:8080", true, true),
        ];
        for (addr, public, allowed) in table {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(
                check_listen(addr, public).is_ok(),
                allowed,
                "{addr} {public}"
            );
        }
        let e = check_listen("0.0.0.0:80".parse().unwrap(), false).unwrap_err();
        assert!(e.to_string().contains("add --public"), "{e}");
    }
}
