//! Operational metrics: counters shared by the feed, the journal and the database writer, shown
//! in Prometheus' text format on `/metrics`, and a `/health` check, on `--metrics-listen`.
//!
//! Counters are atomics updated on the hot path without locks; per-symbol counters are created
//! once per symbol (a short lock) and then held by the connection that updates them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::journal::JournalStats;
use crate::time::Timestamp;

/// Counters for one symbol.
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

    /// Writes the histogram in Prometheus' format.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
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

    fn index(self) -> usize {
        match self {
            HealthSource::Feed => 0,
            HealthSource::Journal => 1,
            HealthSource::Database => 2,
        }
    }
}

impl Metrics {
    /// The counters of `symbol`, created on first use.
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
        Arc::clone(map.entry(symbol.to_owned()).or_default())
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

    /// The metrics in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "krakenbook_frames_received_total",
            "WebSocket frames received.",
            get(&self.frames),
        );
        counter(
            &mut out,
            "krakenbook_bytes_received_total",
            "Bytes of frames received.",
            get(&self.bytes),
        );
        counter(
            &mut out,
            "krakenbook_malformed_frames_total",
            "Frames that could not be decoded (journaled all the same).",
            get(&self.malformed_frames),
        );
        counter(
            &mut out,
            "krakenbook_connects_total",
            "Connections opened.",
            get(&self.connects),
        );
        counter(
            &mut out,
            "krakenbook_reconnects_total",
            "Open connections that ended (and are reopened).",
            get(&self.reconnects),
        );
        counter(
            &mut out,
            "krakenbook_connect_failures_total",
            "Attempts to open a connection that failed.",
            get(&self.connect_failures),
        );
        counter(
            &mut out,
            "krakenbook_subscription_errors_total",
            "Subscriptions rejected by the exchange.",
            get(&self.subscription_errors),
        );
        gauge(
            &mut out,
            "krakenbook_connections_open",
            "Connections currently open.",
            self.connections_open.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "krakenbook_journal_queue_depth",
            "Entries waiting for the journal.",
            get(&self.journal_queue) as f64,
        );
        counter(
            &mut out,
            "krakenbook_unasked_symbol_frames_total",
            "Frames for symbols that were not asked for (counted, never tracked).",
            get(&self.unasked_frames),
        );
        counter(
            &mut out,
            "krakenbook_frames_too_large_total",
            "Frames above the frame-size cap (not kept; the connection is reopened).",
            get(&self.frames_too_large),
        );

        let symbols = self.symbols.read().unwrap_or_else(|p| p.into_inner());
        type Field = fn(&SymbolMetrics) -> &AtomicU64;
        let per_symbol: [(&str, &str, Field); 6] = [
            (
                "krakenbook_book_messages_total",
                "Book messages received.",
                |m| &m.book_messages,
            ),
            (
                "krakenbook_checksum_ok_total",
                "Book messages whose checksum matched.",
                |m| &m.checksum_ok,
            ),
            (
                "krakenbook_checksum_mismatch_total",
                "Book messages whose checksum did not match.",
                |m| &m.checksum_mismatch,
            ),
            (
                "krakenbook_unverifiable_total",
                "Book messages received while the book was unsynced.",
                |m| &m.unverifiable,
            ),
            (
                "krakenbook_resubscribes_total",
                "Resubscriptions after a checksum mismatch.",
                |m| &m.resubscribes,
            ),
            (
                "krakenbook_resyncs_total",
                "Gaps closed: the book verified again after a mismatch or reconnect.",
                |m| &m.resyncs,
            ),
        ];
        for (name, help, field) in per_symbol {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (symbol, m) in symbols.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{symbol=\"{}\"}} {}",
                    escape_label(symbol),
                    field(m).load(Ordering::Relaxed)
                );
            }
        }
        drop(symbols);

        if let Some(j) = self.journal.get() {
            counter(
                &mut out,
                "krakenbook_journal_records_total",
                "Records appended to the journal.",
                get(&j.records),
            );
            counter(
                &mut out,
                "krakenbook_journal_bytes_total",
                "Bytes appended to the journal.",
                get(&j.bytes),
            );
            counter(
                &mut out,
                "krakenbook_journal_rotations_total",
                "Journal segments closed and started.",
                get(&j.rotations),
            );
            gauge(
                &mut out,
                "krakenbook_journal_synced_seq",
                "Last journal seq synced to disk.",
                get(&j.synced_seq) as f64,
            );
            gauge(
                &mut out,
                "krakenbook_journal_flushed_seq",
                "Last journal seq handed to the OS.",
                get(&j.flushed_seq) as f64,
            );
            gauge(
                &mut out,
                "krakenbook_journal_torn_bytes",
                "Bytes of a torn tail cut when the journal was opened.",
                get(&j.torn_bytes) as f64,
            );
            gauge(
                &mut out,
                "krakenbook_journal_recovery_damaged_seqs",
                "Seqs found damaged in the last segment when the journal was opened.",
                get(&j.damaged_seqs_at_open) as f64,
            );
            counter(
                &mut out,
                "krakenbook_journal_expired_segments_total",
                "Closed segments removed by retention.",
                get(&j.expired_segments),
            );
        }
        if let Some(s) = self.store.get() {
            counter(
                &mut out,
                "krakenbook_db_messages_written_total",
                "Message rows committed to the database.",
                get(&s.messages),
            );
            counter(
                &mut out,
                "krakenbook_db_entries_written_total",
                "Level rows committed to the database.",
                get(&s.entries),
            );
            counter(
                &mut out,
                "krakenbook_db_events_written_total",
                "Feed-event rows committed to the database.",
                get(&s.events),
            );
            counter(
                &mut out,
                "krakenbook_db_retries_total",
                "Database batches retried after a retriable error.",
                get(&s.retries),
            );
            counter(
                &mut out,
                "krakenbook_journal_damage_seqs_total",
                "Seqs the database pipeline found missing from the journal.",
                get(&s.damaged_seqs),
            );
            counter(
                &mut out,
                "krakenbook_db_records_stored_raw_total",
                "Records the database refused in structured form, stored raw.",
                get(&s.stored_raw),
            );
            counter(
                &mut out,
                "krakenbook_db_records_not_stored_total",
                "Records the database refused even in raw form (an event row stands for each).",
                get(&s.not_stored),
            );
            gauge(
                &mut out,
                "krakenbook_db_up",
                "1 while the database is reachable.",
                get(&s.up) as f64,
            );
            gauge(
                &mut out,
                "krakenbook_db_checkpoint_seq",
                "Last journal seq committed to the database.",
                get(&s.checkpoint_seq) as f64,
            );
            s.commit_latency.render(
                &mut out,
                "krakenbook_db_commit_latency_seconds",
                "Time from a frame's receipt to the commit of the batch that holds it.",
            );
            s.batch_duration.render(
                &mut out,
                "krakenbook_db_batch_seconds",
                "Time one database batch takes to write and commit.",
            );
            let (lag_records, lag_seconds, lag_bytes) = self.db_lag();
            gauge(
                &mut out,
                "krakenbook_db_lag_records",
                "Journal records not yet in the database.",
                lag_records as f64,
            );
            gauge(
                &mut out,
                "krakenbook_db_lag_seconds",
                "Age of the oldest journal record not yet in the database.",
                lag_seconds,
            );
            gauge(
                &mut out,
                "krakenbook_db_lag_bytes",
                "Journal bytes not yet in the database.",
                lag_bytes as f64,
            );
        }
        out
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

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics` and `/health` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, cancel: CancellationToken) {
    loop {
        let (mut socket, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut buf))
                    .await;
            let Ok(Ok(n)) = read else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                "/health" => match metrics.health() {
                    Ok(()) => (
                        "200 OK",
                        "application/json",
                        "{\"status\":\"ok\"}\n".to_owned(),
                    ),
                    Err(reason) => (
                        "503 Service Unavailable",
                        "application/json",
                        format!(
                            "{{\"status\":\"unhealthy\",\"reason\":{}}}\n",
                            serde_json::Value::from(reason)
                        ),
                    ),
                },
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /health\n".to_owned(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// Binds the metrics listener; a clear error when the address is taken or invalid.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_escaped_labels() {
        let m = Metrics::default();
        m.frames.fetch_add(3, Ordering::Relaxed);
        m.symbol("BTC/USD")
            .checksum_ok
            .fetch_add(2, Ordering::Relaxed);
        m.symbol("WEIRD\"X")
            .checksum_mismatch
            .fetch_add(1, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("krakenbook_frames_received_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("krakenbook_checksum_ok_total{symbol=\"BTC/USD\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("krakenbook_checksum_mismatch_total{symbol=\"WEIRD\\\"X\"} 1\n"),
            "{text}"
        );
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

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

    #[tokio::test]
    async fn serves_metrics_and_health_over_http() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.frames.store(7, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::clone(&metrics), cancel.clone()));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let body = get("/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("krakenbook_frames_received_total 7"));
        assert!(get("/health").await.starts_with("HTTP/1.1 503"));
        metrics.connections_open.store(2, Ordering::Relaxed);
        assert!(get("/health").await.starts_with("HTTP/1.1 200"));
        cancel.cancel();
        server.await.unwrap();
    }
}
