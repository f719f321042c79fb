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
//! - `assets/`: the page (plain HTML, CSS and JavaScript drawing on canvas and SVG; no build
//!   step, no CDN), compiled in with `include_str!`.
//!
//! What must always hold:
//! - **Read-only.** Every database session sets `default_transaction_read_only = on` before its
//!   first query; nothing here writes.
//! - **Loopback unless asked.** [`check_listen`] refuses a non-loopback address without
//!   `--public`.
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
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::Client;

use crate::store::{DbTarget, StoreError};

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

/// Read-only database sessions, shared by the requests: a few connections used in turn (one
/// slow heatmap does not hold up every other request), each reopened when it closes.
#[derive(Debug)]
pub struct Sessions {
    target: DbTarget,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
}

/// How many database sessions the explorer keeps.
pub const SESSIONS: usize = 4;

impl Sessions {
    /// Sessions to `url` (opened on first use).
    pub fn new(url: &str) -> Result<Sessions, StoreError> {
        Ok(Sessions::from_target(DbTarget::parse(url)?))
    }

    /// Sessions through `target` (which may prepare each session it opens, e.g. mount archived
    /// ranges, before it is made read-only).
    pub fn from_target(target: DbTarget) -> Sessions {
        Sessions {
            target,
            slots: (0..SESSIONS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A read-only session.
    pub async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        let client = self.target.connect("krakenbook serve").await?;
        client
            .batch_execute("SET default_transaction_read_only = on; SET statement_timeout = '120s'")
            .await
            .map_err(StoreError::db("making the session read-only"))?;
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
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
