//! Operational metrics: the counters shared by the feed, the journal and the database writer,
//! the collector's health, and the HTTP endpoint that shows them on `--metrics-listen`.
//!
//! - here: [`Metrics`] and the structs it gathers ([`SymbolMetrics`], [`StoreProgress`],
//!   [`Histogram`]), and [`HealthSource`]s' problems behind [`Metrics::health`];
//! - [`coverage`]: per symbol, over every stream of it (their union): streams verified now,
//!   whether the union covers it, the age of the last verified message, how long the current gap
//!   has been open, how long since the last one ended, and the seconds spent in gaps;
//! - [`disk`]: the journal's segment bytes and its filesystem's free and total bytes, measured in
//!   the background;
//! - [`exposition`]: the Prometheus text format (version 0.0.4) of a [`Metrics`], written by the
//!   `prometheus-client` crate from a snapshot of the atomics;
//! - [`server`]: `/metrics` and `/health` over HTTP/1.1 (hyper), built so that no client can
//!   hurt recording;
//! - [`accept`]: the accept loop's pacing: backoff and a rate-limited log of accept errors.
//!
//! What must always hold:
//! - The hot path never locks: every counter is an atomic that the feed, the journal or the
//!   database writer bumps; per-symbol counters are created once per symbol (a short lock) and
//!   then held by the connection that updates them. Scrapes only read the atomics.
//! - Every symbol the collector asks for has its series from the moment it is asked for (the
//!   feed registers it when it creates the connection that will carry it), at 0, not only after
//!   its first message; several streams of one symbol share one [`SymbolMetrics`].
//! - Metric names, types, labels, help texts and histogram bucket bounds are an interface that
//!   dashboards use; a golden test in [`exposition`] pins them.
//! - `/health` is 503 while any [`HealthSource`] has a problem or no exchange connection is open.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::journal::JournalStats;
use crate::time::Timestamp;

pub mod accept;
pub mod coverage;
pub mod disk;
pub mod exposition;
pub mod server;

pub use coverage::{CoverageReading, StreamCoverage, SymbolCoverage};
pub use disk::JournalDisk;
pub use server::{bind, serve};

/// Counters for one symbol, shared by every stream (connection) that carries it.
#[derive(Debug, Default)]
pub struct SymbolMetrics {
    /// Book messages received.
    pub book_messages: AtomicU64,
    /// Book messages whose checksum matched.
    pub checksum_ok: AtomicU64,
    /// Book messages whose checksum did not match.
    pub checksum_mismatch: AtomicU64,
    /// Book messages received while the book was unsynced (not verifiable).
    pub unverifiable: AtomicU64,
    /// Resubscriptions after a mismatch.
    pub resubscribes: AtomicU64,
    /// Gaps closed (the book verified again after a mismatch or a reconnect).
    pub resyncs: AtomicU64,
    /// Coverage over every stream of the symbol.
    pub coverage: SymbolCoverage,
}

impl SymbolMetrics {
    /// The counters of a symbol first asked for at `subscribed`, all at 0.
    pub fn subscribed_at(subscribed: Timestamp) -> Self {
        SymbolMetrics {
            coverage: SymbolCoverage::new(subscribed),
            ..SymbolMetrics::default()
        }
    }
}

/// Upper bounds (seconds) of the commit-latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 24] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations, updated without locks.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (the last one: above every bound).
    pub counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of all observations, in nanoseconds.
    pub sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration of `nanos` nanoseconds (negative counts as zero).
    pub fn observe_ns(&self, nanos: i64) {
        let seconds = nanos.max(0) as f64 / 1e9;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(nanos.max(0) as u64, Ordering::Relaxed);
    }
}

/// The `q` quantile (0..=1) of a histogram given as cumulative counts per bucket bound
/// (`+Inf` last), interpolated linearly inside the bucket; `None` without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, u64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, cumulative) in buckets {
        if cumulative as f64 >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let inside = (cumulative - lower.1) as f64;
            let frac = if inside > 0.0 {
                (rank - lower.1 as f64) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * frac.clamp(0.0, 1.0));
        }
        lower = (bound, cumulative);
    }
    Some(lower.0)
}

/// Progress of the database writer.
#[derive(Debug, Default)]
pub struct StoreProgress {
    /// Messages (frame rows) committed.
    pub messages: AtomicU64,
    /// Level rows committed.
    pub entries: AtomicU64,
    /// Feed-event rows committed.
    pub events: AtomicU64,
    /// Journal bytes (record payloads) committed.
    pub bytes: AtomicU64,
    /// The database's checkpoint: the last journal `seq` committed.
    pub checkpoint_seq: AtomicU64,
    /// The checkpoint found when the pipeline (last) connected.
    pub started_seq: AtomicU64,
    /// Receive time (ns) of the record at the checkpoint.
    pub checkpoint_received_ns: AtomicI64,
    /// 1 while the database is reachable and the last batch committed.
    pub up: AtomicU64,
    /// Batches retried after a retriable error.
    pub retries: AtomicU64,
    /// Seqs the pipeline found missing from the journal (damage, missing or truncated segments).
    pub damaged_seqs: AtomicU64,
    /// Records the database refused in structured form, stored raw.
    pub stored_raw: AtomicU64,
    /// Records the database refused even in raw form (an event row stands for each).
    pub not_stored: AtomicU64,
    /// Time from a frame's receipt to the commit of the batch that holds it.
    pub commit_latency: Histogram,
    /// Time one batch takes to write and commit (retries included).
    pub batch_duration: Histogram,
    /// Chunks the pipeline read from the journal: a steady slow feed needs about one a batch
    /// (each read is a wake-up of the pipeline's thread).
    pub journal_reads: AtomicU64,
}

/// All of the collector's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket frames received (all kinds).
    pub frames: AtomicU64,
    /// Bytes of frames received.
    pub bytes: AtomicU64,
    /// Frames that could not be decoded (kept in the journal all the same).
    pub malformed_frames: AtomicU64,
    /// Frames stamped when read, not with their arrival: the kernel recorded none for them
    /// (`--receive-stamps read`, no `CAP_BPF`, or its records did not cover them).
    pub stamped_on_read: AtomicU64,
    /// Connections opened.
    pub connects: AtomicU64,
    /// Open connections that ended (lost, closed by the server, or dropped as silent).
    pub reconnects: AtomicU64,
    /// Attempts to open a connection that failed.
    pub connect_failures: AtomicU64,
    /// Connections currently open.
    pub connections_open: AtomicI64,
    /// Subscriptions rejected by the exchange.
    pub subscription_errors: AtomicU64,
    /// Entries waiting in the journal's queue (sampled).
    pub journal_queue: AtomicU64,
    /// Frames for symbols that were not asked for (counted, never tracked).
    pub unasked_frames: AtomicU64,
    /// Frames larger than the frame-size cap (not kept; the connection is reopened).
    pub frames_too_large: AtomicU64,
    /// Read ticks taken on the feed's fast grid while a connection was busy
    /// ([`crate::feed::ticker::ReadPace`]).
    pub fast_read_ticks: AtomicU64,
    /// Copies of book messages that took the outcome of the same message already applied to
    /// their group's shared book (`--redundancy` ≥ 2: not decoded again).
    pub shared_copies_taken: AtomicU64,
    /// Books rebuilt for a replica that left its group's shared book.
    pub shared_book_rebuilds: AtomicU64,
    /// The journal's segment bytes and free disk, measured in the background ([`disk`]).
    pub journal_disk: JournalDisk,
    symbols: RwLock<BTreeMap<String, Arc<SymbolMetrics>>>,
    journal: OnceLock<Arc<JournalStats>>,
    store: OnceLock<Arc<StoreProgress>>,
    health: Mutex<[Option<String>; HealthSource::COUNT]>,
}

/// The parts of the collector that can make it unhealthy, each with its own reason slot, so that
/// one part recovering never hides another's problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthSource {
    /// The connections to the exchange.
    Feed,
    /// The journal.
    Journal,
    /// The database pipeline.
    Database,
}

impl HealthSource {
    const COUNT: usize = 3;
    /// Every part, in the order of [`Metrics::problems`].
    pub const ALL: [HealthSource; HealthSource::COUNT] = [
        HealthSource::Feed,
        HealthSource::Journal,
        HealthSource::Database,
    ];

    /// The part's name, as `/metrics` labels it.
    pub fn name(self) -> &'static str {
        match self {
            HealthSource::Feed => "feed",
            HealthSource::Journal => "journal",
            HealthSource::Database => "database",
        }
    }

    fn index(self) -> usize {
        match self {
            HealthSource::Feed => 0,
            HealthSource::Journal => 1,
            HealthSource::Database => 2,
        }
    }
}

impl Metrics {
    /// The counters of `symbol`, created on first use (the symbol's subscription: its coverage
    /// ages count from then until its first verified message).
    pub fn symbol(&self, symbol: &str) -> Arc<SymbolMetrics> {
        if let Some(m) = self
            .symbols
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(symbol)
        {
            return Arc::clone(m);
        }
        let mut map = self.symbols.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            map.entry(symbol.to_owned())
                .or_insert_with(|| Arc::new(SymbolMetrics::subscribed_at(Timestamp::now()))),
        )
    }

    /// Shows the journal's counters too.
    pub fn attach_journal(&self, stats: Arc<JournalStats>) {
        let _ = self.journal.set(stats);
    }

    /// Shows the database writer's progress too.
    pub fn attach_store(&self, progress: Arc<StoreProgress>) {
        let _ = self.store.set(progress);
    }

    /// Records (`Some`) or clears (`None`) the problem of one part of the collector.
    pub fn set_problem(&self, source: HealthSource, reason: Option<String>) {
        self.health.lock().unwrap_or_else(|p| p.into_inner())[source.index()] = reason;
    }

    /// Whether each part ([`HealthSource::ALL`], in order) has a problem now.
    pub fn problems(&self) -> [bool; HealthSource::COUNT] {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .each_ref()
            .map(Option::is_some)
    }

    /// `Ok` when healthy, else why not: a part recorded a problem, or no connection is open.
    pub fn health(&self) -> Result<(), String> {
        let problems: Vec<String> = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .cloned()
            .collect();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        if self.connections_open.load(Ordering::Relaxed) <= 0 {
            return Err("no connection to the exchange is open".into());
        }
        Ok(())
    }

    /// The last `seq` the journal held when it was opened (`u64::MAX` without a journal, so
    /// that nothing counts as appended).
    pub fn journal_opened_seq(&self) -> u64 {
        self.journal
            .get()
            .map_or(u64::MAX, |j| j.opened_seq.load(Ordering::Relaxed))
    }

    /// The database's checkpoint, when a database pipeline is attached.
    pub fn store_checkpoint(&self) -> Option<u64> {
        self.store
            .get()
            .map(|s| s.checkpoint_seq.load(Ordering::Acquire))
    }

    /// Database lag: (records, seconds, bytes) between the journal and the database.
    pub fn db_lag(&self) -> (u64, f64, u64) {
        let (Some(j), Some(s)) = (self.journal.get(), self.store.get()) else {
            return (0, 0.0, 0);
        };
        let flushed = j.flushed_seq.load(Ordering::Relaxed);
        let committed = s.checkpoint_seq.load(Ordering::Relaxed);
        let records = flushed.saturating_sub(committed);
        // Behind: the records after the checkpoint have waited at least as long as the one at
        // the checkpoint was received ago.
        let seconds = if records == 0 {
            0.0
        } else {
            let at = Timestamp::from_unix_nanos(s.checkpoint_received_ns.load(Ordering::Relaxed));
            Timestamp::now().nanos_since(at).max(0) as f64 / 1e9
        };
        let bytes = j
            .bytes
            .load(Ordering::Relaxed)
            .saturating_sub(s.bytes.load(Ordering::Relaxed));
        (records, seconds, if records == 0 { 0 } else { bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let h = Histogram::default();
        for ms in 1..=100 {
            h.observe_ns(ms * 1_000_000);
        }
        let m = Metrics::default();
        let progress = Arc::new(StoreProgress::default());
        for ms in 1..=100 {
            progress.commit_latency.observe_ns(ms * 1_000_000);
        }
        m.attach_store(progress);
        let text = m.render();
        assert!(
            text.contains("krakenbook_db_commit_latency_seconds_count 100"),
            "{text}"
        );
        // Read the buckets back as a scraper would, and take quantiles.
        let buckets: Vec<(f64, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("krakenbook_db_commit_latency_seconds_bucket{le=\""))
            .map(|l| {
                let (bound, count) = l.split_once("\"} ").unwrap();
                (
                    bound.parse::<f64>().unwrap_or(f64::INFINITY),
                    count.parse().unwrap(),
                )
            })
            .collect();
        let p50 = histogram_quantile(0.5, &buckets).unwrap();
        let p99 = histogram_quantile(0.99, &buckets).unwrap();
        assert!((0.04..=0.06).contains(&p50), "{p50}");
        assert!((0.075..=0.1).contains(&p99), "{p99}");
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0), (f64::INFINITY, 0)]),
            None
        );
        assert_eq!(
            h.counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>(),
            100
        );
    }

    #[test]
    fn health_needs_an_open_connection_and_no_fatal_error() {
        let m = Metrics::default();
        assert!(m.health().is_err());
        m.connections_open.store(1, Ordering::Relaxed);
        assert!(m.health().is_ok());
        m.set_problem(HealthSource::Journal, Some("journal failed".into()));
        assert_eq!(m.health(), Err("journal failed".into()));
    }
}
