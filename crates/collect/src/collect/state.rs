//! The collector's state, published to the database every few seconds for `krakenbook serve`'s
//! health view: one row per collector identity in `krakenbook_collector_state` (migration 5),
//! upserted.
//!
//! What must always hold: publishing never harms the feed. It runs in its own task, on its own
//! database connection, reads only the metrics' atomics, and bounds every attempt by a timeout;
//! a database that is down, slow, or not yet migrated only makes it skip a beat (logged at debug,
//! tried again at the next tick). What each connection last received is already in
//! `krakenbook_connections` (the writer updates it with every batch); this row adds what only the
//! running process knows: frames and mismatches counted, streams verified now, the database's
//! lag behind the journal, and the `/health` verdict. A graceful stop publishes `running = false`
//! once more; a crash leaves the last row, which readers judge by its age.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::time::Timestamp;

/// How often the state is published.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(3);

/// How long one attempt (connect, or upsert) may take before it is given up.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// One symbol's part of the state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SymbolState {
    /// The pair.
    pub symbol: String,
    /// Streams whose book of it is verified now.
    pub streams_verified: u64,
    /// Checksum mismatches since the process started.
    pub mismatches: u64,
    /// Seconds since its last verified message.
    pub seconds_since_verified: f64,
    /// Seconds its current gap has been open (0 while verified).
    pub gap_seconds: f64,
}

/// The collector's state at one instant: a row of `krakenbook_collector_state`.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectorState {
    /// Frames received since start.
    pub frames: u64,
    /// Receive time of the latest verified book message of any symbol.
    pub last_verified_at: Option<Timestamp>,
    /// Exchange connections open now.
    pub connections_open: i64,
    /// Streams verified now, over every symbol.
    pub streams_live: u64,
    /// Mismatches since start, over every symbol.
    pub mismatches: u64,
    /// Connections lost since start.
    pub reconnects: u64,
    /// Records the database is behind the journal.
    pub lag_records: u64,
    /// Seconds the database is behind the journal.
    pub lag_seconds: f64,
    /// `/health`'s reason, when unhealthy.
    pub problem: Option<String>,
    /// Per symbol.
    pub symbols: Vec<SymbolState>,
}

impl CollectorState {
    /// Reads the state of `symbols` from `metrics` as of `now` (no I/O, no lock but the metrics'
    /// short symbol-map read).
    pub fn read(metrics: &Metrics, symbols: &[String], now: Timestamp) -> CollectorState {
        let per: Vec<SymbolState> = symbols
            .iter()
            .map(|s| {
                let m = metrics.symbol(s);
                let c = m.coverage.read(now);
                SymbolState {
                    symbol: s.clone(),
                    streams_verified: c.streams_verified,
                    mismatches: m.checksum_mismatch.load(Ordering::Relaxed),
                    seconds_since_verified: c.seconds_since_verified,
                    gap_seconds: c.gap_seconds,
                }
            })
            .collect();
        // The newest verified message: the smallest age among symbols that ever verified (a
        // symbol that never verified counts its age from its subscription: not a message).
        let last_verified_at = per
            .iter()
            .zip(symbols)
            .filter(|(_, s)| metrics.symbol(s).checksum_ok.load(Ordering::Relaxed) > 0)
            .map(|(p, _)| p.seconds_since_verified)
            .min_by(f64::total_cmp)
            .map(|age| now.add_nanos(-((age * 1e9) as i64)));
        let (lag_records, lag_seconds, _) = metrics.db_lag();
        CollectorState {
            frames: metrics.frames.load(Ordering::Relaxed),
            last_verified_at,
            connections_open: metrics.connections_open.load(Ordering::Relaxed),
            streams_live: per.iter().map(|p| p.streams_verified).sum(),
            mismatches: per.iter().map(|p| p.mismatches).sum(),
            reconnects: metrics.reconnects.load(Ordering::Relaxed),
            lag_records,
            lag_seconds,
            problem: metrics.health().err(),
            symbols: per,
        }
    }
}

/// Publishes a collector's state every [`PUBLISH_EVERY`] until cancelled.
#[derive(Debug)]
pub struct StatePublisher {
    /// The database URL.
    pub database_url: String,
    /// The collector identity (the row's key).
    pub collector: String,
    /// The symbols asked for.
    pub symbols: Vec<String>,
    /// The collector's metrics.
    pub metrics: Arc<Metrics>,
    /// Publishing interval.
    pub every: Duration,
}

impl StatePublisher {
    /// Publishes until `cancel`, then once more with `running = false`.
    pub async fn run(self, cancel: CancellationToken) {
        let started_at = Timestamp::now();
        let mut client: Option<Client> = None;
        let mut frames_seen = 0u64;
        let mut last_frame_at: Option<Timestamp> = None;
        // One wake-up a tick (tokio's interval woke the runtime two or three times for each).
        let mut tick = crate::alarm::Every::new(self.every);
        loop {
            let running = tokio::select! {
                _ = cancel.cancelled() => false,
                _ = tick.tick() => true,
            };
            let now = Timestamp::now();
            let mut state = CollectorState::read(&self.metrics, &self.symbols, now);
            if !running {
                // Stopping on purpose: closed connections are not a problem then.
                state.problem = None;
            }
            if state.frames > frames_seen {
                frames_seen = state.frames;
                last_frame_at = Some(now);
            }
            if client.as_ref().is_none_or(Client::is_closed) {
                client = match tokio::time::timeout(
                    ATTEMPT_TIMEOUT,
                    crate::store::connect(&self.database_url, "krakenbook collector state"),
                )
                .await
                {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "collector state: cannot connect; skipped");
                        None
                    }
                    Err(_) => None,
                };
            }
            if let Some(c) = &client {
                let upsert = self.upsert(c, started_at, running, last_frame_at, &state);
                match tokio::time::timeout(ATTEMPT_TIMEOUT, upsert).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        // Not migrated yet, or the database failed: next tick.
                        tracing::debug!(error = %e, "collector state: not published; skipped");
                    }
                    Err(_) => {
                        tracing::debug!("collector state: the database is slow; skipped");
                        client = None;
                    }
                }
            }
            if !running {
                return;
            }
        }
    }

    async fn upsert(
        &self,
        client: &Client,
        started_at: Timestamp,
        running: bool,
        last_frame_at: Option<Timestamp>,
        s: &CollectorState,
    ) -> Result<(), tokio_postgres::Error> {
        let detail = serde_json::to_string(&s.symbols).unwrap_or_else(|_| "[]".to_owned());
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let small = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
        client
            .execute(
                "INSERT INTO krakenbook_collector_state (collector, host, pid, version, started_at,
                     updated_at, running, frames, last_frame_at, last_verified_at, connections_open,
                     symbols, streams_live, mismatches, reconnects, lag_records, lag_seconds,
                     problem, detail)
                 VALUES ($1, $2, $3, $4, $5, now(), $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                         $16, $17, $18::text::jsonb)
                 ON CONFLICT (collector) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
                     version = EXCLUDED.version, started_at = EXCLUDED.started_at,
                     updated_at = EXCLUDED.updated_at, running = EXCLUDED.running,
                     frames = EXCLUDED.frames, last_frame_at = EXCLUDED.last_frame_at,
                     last_verified_at = EXCLUDED.last_verified_at,
                     connections_open = EXCLUDED.connections_open, symbols = EXCLUDED.symbols,
                     streams_live = EXCLUDED.streams_live, mismatches = EXCLUDED.mismatches,
                     reconnects = EXCLUDED.reconnects, lag_records = EXCLUDED.lag_records,
                     lag_seconds = EXCLUDED.lag_seconds, problem = EXCLUDED.problem,
                     detail = EXCLUDED.detail",
                &[
                    &self.collector,
                    &krakenbook_core::host::hostname(),
                    &i32::try_from(std::process::id()).unwrap_or(i32::MAX),
                    &env!("CARGO_PKG_VERSION"),
                    &started_at,
                    &running,
                    &big(s.frames),
                    &last_frame_at,
                    &s.last_verified_at,
                    &small(s.connections_open),
                    &i32::try_from(s.symbols.len()).unwrap_or(i32::MAX),
                    &i32::try_from(s.streams_live).unwrap_or(i32::MAX),
                    &big(s.mismatches),
                    &big(s.reconnects),
                    &big(s.lag_records),
                    &s.lag_seconds,
                    &s.problem,
                    &detail,
                ],
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_sums_symbols_and_says_why_unhealthy() {
        let m = Metrics::default();
        let symbols = vec!["BTC/USD".to_owned(), "ETH/USD".to_owned()];
        m.frames.store(42, Ordering::Relaxed);
        m.symbol("BTC/USD")
            .checksum_mismatch
            .store(2, Ordering::Relaxed);
        m.symbol("ETH/USD")
            .checksum_mismatch
            .store(1, Ordering::Relaxed);
        let now = Timestamp::now();
        let s = CollectorState::read(&m, &symbols, now);
        assert_eq!((s.frames, s.mismatches, s.streams_live), (42, 3, 0));
        assert_eq!(s.symbols.len(), 2);
        // Nothing verified yet: no last verified message, and /health's reason.
        assert_eq!(s.last_verified_at, None);
        assert_eq!(
            s.problem.as_deref(),
            Some("no connection to the exchange is open")
        );
        // A verified message two seconds ago.
        let btc = m.symbol("BTC/USD");
        btc.checksum_ok.store(1, Ordering::Relaxed);
        btc.coverage.verified_message(now.add_nanos(-2_000_000_000));
        m.connections_open.store(1, Ordering::Relaxed);
        let s = CollectorState::read(&m, &symbols, now);
        let at = s.last_verified_at.expect("a verified message");
        assert!(
            now.nanos_since(at).abs_diff(2_000_000_000) < 2_000_000,
            "{at}"
        );
        assert_eq!(s.problem, None);
    }
}
