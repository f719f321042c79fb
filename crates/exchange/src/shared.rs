//! What every connection of a server shares: the market, the configuration, the counters, the
//! frame log, the encoded instrument snapshot, and the id sources (subscriptions, connection ids).
//!
//! It sits below both [`super::server`] (which makes one) and [`super::connection`] (which reads
//! it), so neither imports the other's internals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::faults::DropRotation;
use super::log::LogSender;
use super::market::{ConnId, Market, SubId};
use super::rng::Rng;
use super::server::ServerConfig;
use super::stats::Stats;
use crate::kraken::encode;

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) market: Arc<dyn Market>,
    pub(crate) config: ServerConfig,
    pub(crate) stats: Arc<Stats>,
    pub(crate) log: Option<LogSender>,
    pub(crate) instrument_snapshot: Utf8Bytes,
    next_sub: AtomicU64,
    /// The live connections, for the `drop_every` fault: its turn, and each one's drop token.
    drops: Mutex<(DropRotation, HashMap<ConnId, CancellationToken>)>,
}

impl Shared {
    pub(crate) fn new(
        market: Arc<dyn Market>,
        config: ServerConfig,
        stats: Arc<Stats>,
        log: Option<LogSender>,
    ) -> Self {
        let instrument_snapshot = encode::instrument_snapshot(market.instruments()).into();
        Shared {
            market,
            config,
            stats,
            log,
            instrument_snapshot,
            next_sub: AtomicU64::new(1),
            drops: Mutex::default(),
        }
    }

    pub(crate) fn next_sub(&self) -> SubId {
        self.next_sub.fetch_add(1, Ordering::Relaxed)
    }

    fn with_drops<T>(
        &self,
        f: impl FnOnce(&mut (DropRotation, HashMap<ConnId, CancellationToken>)) -> T,
    ) -> T {
        // A poisoned lock means a panic mid-update of a set and a map: still usable.
        f(&mut self.drops.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Connection `conn` is live: the token that the `drop_every` fault cancels to drop it.
    pub(crate) fn opened(&self, conn: ConnId) -> CancellationToken {
        let token = CancellationToken::new();
        self.with_drops(|(turn, tokens)| {
            turn.opened(conn);
            tokens.insert(conn, token.clone());
        });
        token
    }

    /// Connection `conn` ended.
    pub(crate) fn closed(&self, conn: ConnId) {
        self.with_drops(|(turn, tokens)| {
            turn.closed(conn);
            tokens.remove(&conn);
        });
    }

    /// The `drop_every` fault's period came: drops the next live connection in turn, if any.
    pub(crate) fn drop_next(&self) -> Option<ConnId> {
        self.with_drops(|(turn, tokens)| {
            let conn = turn.next_victim()?;
            if let Some(token) = tokens.get(&conn) {
                token.cancel();
            }
            Some(conn)
        })
    }

    /// The `connection_id` the `status` frame announces for connection number `conn`: the
    /// server's own id source, derived from the run's seed (so a `--seed` reproduces it) with
    /// the top bit set (ids above 2^53, as Kraken's are).
    pub(crate) fn connection_id(&self, conn: ConnId) -> u64 {
        Rng::derive(self.config.seed, &format!("connection_id {conn}")).next_u64() | (1 << 63)
    }
}
