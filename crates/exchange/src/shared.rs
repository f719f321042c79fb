//! What every connection of a server shares: the market, the configuration, the counters, the
//! frame log, the encoded instrument snapshot, and the id sources (subscriptions, connection ids).
//!
//! It sits below both [`super::server`] (which makes one) and [`super::connection`] (which reads
//! it), so neither imports the other's internals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_tungstenite::tungstenite::Utf8Bytes;

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
        }
    }

    pub(crate) fn next_sub(&self) -> SubId {
        self.next_sub.fetch_add(1, Ordering::Relaxed)
    }

    /// The `connection_id` the `status` frame announces for connection number `conn`: the
    /// server's own id source, derived from the run's seed (so a `--seed` reproduces it) with
    /// the top bit set (ids above 2^53, as Kraken's are).
    pub(crate) fn connection_id(&self, conn: ConnId) -> u64 {
        Rng::derive(self.config.seed, &format!("connection_id {conn}")).next_u64() | (1 << 63)
    }
}
