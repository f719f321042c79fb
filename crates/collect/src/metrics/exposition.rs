//! The Prometheus text exposition (format 0.0.4) of [`Metrics`], as `/metrics` serves it.
//!
//! A scrape reads every atomic once into a snapshot (the symbol map's read lock is held only
//! while its rows are copied; counter updates never wait on a scrape), then `prometheus-client`'s
//! classic text encoder writes it as a custom collector: the crate does the escaping of label
//! values and help texts, the counters' `_total` suffix and the histogram series (`_bucket` with
//! `le`, `_sum`, `_count`). The classic format is chosen over OpenMetrics because it is today's
//! interface: same names, no `# EOF`, `text/plain; version=0.0.4`.
//!
//! What must always hold: the families below, their names, types, labels, help texts and the
//! histograms' bucket bounds ([`LATENCY_BUCKETS`]) are an interface that dashboards use. The
//! golden test `families_are_todays_names_types_labels_and_help` pins them; change them only
//! with the dashboards. Counter names are written here whole (`..._total`) so that a search for
//! a dashboard's name finds them; the encoder appends `_total` itself, so the stem is passed to it.
//! Families of the journal and the database appear only once that part is attached; those of
//! the journal's disk once it has been measured ([`super::disk`]). The per-symbol families have
//! a series for every symbol asked for, from its subscription on.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{CoverageReading, HealthSource, Histogram, LATENCY_BUCKETS, Metrics, SymbolMetrics};
use crate::time::Timestamp;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

impl Metrics {
    /// The metrics in Prometheus' text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot::take(self)));
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail, and the collector fails only when its writer does.
        if prometheus_text::encode(&mut out, &registry).is_err() {
            tracing::error!("metrics: encoding the exposition failed");
        }
        out
    }
}

/// Every metric as read at one scrape.
#[derive(Debug)]
struct Snapshot {
    families: Vec<Family>,
    /// Per symbol, the values of [`PER_SYMBOL`]'s families, in that order, and its coverage.
    symbols: Vec<(String, [u64; PER_SYMBOL.len()], CoverageReading)>,
}

/// One metric family.
#[derive(Debug)]
struct Family {
    /// The full name, as scrapers see it (counters end in `_total`).
    name: &'static str,
    help: &'static str,
    value: Value,
}

#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(u64),
    SignedGauge(i64),
    FloatGauge(f64),
    /// A counter with a `symbol` label: the index of its field in [`PER_SYMBOL`].
    PerSymbol(usize),
    /// A gauge with a `symbol` label: one figure of the symbol's coverage.
    PerSymbolGauge(fn(&CoverageReading) -> f64),
    /// A counter with a `symbol` label: one total of the symbol's coverage.
    PerSymbolTotal(fn(&CoverageReading) -> f64),
    /// A gauge with a `part` label per [`HealthSource`]: 1 while the part has a problem.
    Problems([bool; HealthSource::ALL.len()]),
    Histogram(HistogramSnapshot),
}

type Field = fn(&SymbolMetrics) -> &AtomicU64;

/// The per-symbol counters: name, help, field.
const PER_SYMBOL: [(&str, &str, Field); 6] = [
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

impl Snapshot {
    fn take(m: &Metrics) -> Snapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut families = Vec::with_capacity(64);
        let mut add = |name, help, value| families.push(Family { name, help, value });
        add(
            "krakenbook_frames_received_total",
            "WebSocket frames received.",
            Value::Counter(get(&m.frames)),
        );
        add(
            "krakenbook_bytes_received_total",
            "Bytes of frames received.",
            Value::Counter(get(&m.bytes)),
        );
        add(
            "krakenbook_malformed_frames_total",
            "Frames that could not be decoded (journaled all the same).",
            Value::Counter(get(&m.malformed_frames)),
        );
        add(
            "krakenbook_frames_stamped_on_read_total",
            "Frames stamped when read, not with their arrival as the kernel recorded it.",
            Value::Counter(get(&m.stamped_on_read)),
        );
        add(
            "krakenbook_connects_total",
            "Connections opened.",
            Value::Counter(get(&m.connects)),
        );
        add(
            "krakenbook_reconnects_total",
            "Open connections that ended (and are reopened).",
            Value::Counter(get(&m.reconnects)),
        );
        add(
            "krakenbook_connect_failures_total",
            "Attempts to open a connection that failed.",
            Value::Counter(get(&m.connect_failures)),
        );
        add(
            "krakenbook_subscription_errors_total",
            "Subscriptions rejected by the exchange.",
            Value::Counter(get(&m.subscription_errors)),
        );
        add(
            "krakenbook_connections_open",
            "Connections currently open.",
            Value::SignedGauge(m.connections_open.load(Ordering::Relaxed)),
        );
        add(
            "krakenbook_journal_queue_depth",
            "Entries waiting for the journal.",
            Value::Gauge(get(&m.journal_queue)),
        );
        add(
            "krakenbook_unasked_symbol_frames_total",
            "Frames for symbols that were not asked for (counted, never tracked).",
            Value::Counter(get(&m.unasked_frames)),
        );
        add(
            "krakenbook_frames_too_large_total",
            "Frames above the frame-size cap (not kept; the connection is reopened).",
            Value::Counter(get(&m.frames_too_large)),
        );
        add(
            "krakenbook_fast_read_ticks_total",
            "Read ticks taken on the 10 ms grid instead of the --read-every period, while a connection received too much for its socket's buffer between slow ticks.",
            Value::Counter(get(&m.fast_read_ticks)),
        );
        add(
            "krakenbook_shared_book_copies_taken_total",
            "Book messages of a replica that took the verdict of the same bytes already applied at its place in its group's shared book (not decoded again).",
            Value::Counter(get(&m.shared_copies_taken)),
        );
        add(
            "krakenbook_shared_book_rebuilds_total",
            "Books rebuilt for a replica that left its group's shared book (a copy that differed from the message applied at its place).",
            Value::Counter(get(&m.shared_book_rebuilds)),
        );
        add(
            "krakenbook_healthy",
            "1 while /health answers 200 (an exchange connection open, no part with a problem).",
            Value::Gauge(u64::from(m.health().is_ok())),
        );
        add(
            "krakenbook_health_problem",
            "1 while this part of the collector reports a problem on /health.",
            Value::Problems(m.problems()),
        );
        for (i, (name, help, _)) in PER_SYMBOL.iter().enumerate() {
            add(name, help, Value::PerSymbol(i));
        }
        add(
            "krakenbook_symbol_streams_verified",
            "Streams (connections) whose book of the symbol is verified now.",
            Value::PerSymbolGauge(|c| c.streams_verified as f64),
        );
        add(
            "krakenbook_symbol_seconds_since_verified",
            "Seconds since the last verified book message of the symbol on any stream (since its subscription before the first).",
            Value::PerSymbolGauge(|c| c.seconds_since_verified),
        );
        add(
            "krakenbook_symbol_gap_seconds",
            "Seconds the symbol's current gap has been open: 0 while any stream's book is verified.",
            Value::PerSymbolGauge(|c| c.gap_seconds),
        );
        add(
            "krakenbook_symbol_covered",
            "1 while some stream's book of the symbol is verified (the union of its streams covers it), 0 in a gap (every stream dark).",
            Value::PerSymbolGauge(|c| f64::from(u8::from(c.covered()))),
        );
        add(
            "krakenbook_symbol_seconds_since_gap",
            "Seconds since every stream of the symbol was last dark (since its last gap ended): 0 while they are.",
            Value::PerSymbolGauge(|c| c.seconds_since_gap),
        );
        add(
            "krakenbook_symbol_uncovered_seconds_total",
            "Seconds the symbol spent in gaps (every stream dark) since its subscription, the open gap included: 1 - rate() is the union's coverage.",
            Value::PerSymbolTotal(|c| c.uncovered_seconds),
        );

        if let Some(j) = m.journal.get() {
            add(
                "krakenbook_journal_records_total",
                "Records appended to the journal.",
                Value::Counter(get(&j.records)),
            );
            add(
                "krakenbook_journal_bytes_total",
                "Bytes appended to the journal.",
                Value::Counter(get(&j.bytes)),
            );
            add(
                "krakenbook_journal_rotations_total",
                "Journal segments closed and started.",
                Value::Counter(get(&j.rotations)),
            );
            add(
                "krakenbook_journal_synced_seq",
                "Last journal seq synced to disk.",
                Value::Gauge(get(&j.synced_seq)),
            );
            add(
                "krakenbook_journal_flushed_seq",
                "Last journal seq handed to the OS.",
                Value::Gauge(get(&j.flushed_seq)),
            );
            add(
                "krakenbook_journal_torn_bytes",
                "Bytes of a torn tail cut when the journal was opened.",
                Value::Gauge(get(&j.torn_bytes)),
            );
            add(
                "krakenbook_journal_recovery_damaged_seqs",
                "Seqs found damaged in the last segment when the journal was opened.",
                Value::Gauge(get(&j.damaged_seqs_at_open)),
            );
            add(
                "krakenbook_journal_expired_segments_total",
                "Closed segments removed by retention.",
                Value::Counter(get(&j.expired_segments)),
            );
            add(
                "krakenbook_journal_disk_full",
                "1 while journal writing is stopped on a full disk (records wait in memory).",
                Value::Gauge(u64::from(j.disk_full.load(Ordering::Relaxed))),
            );
            add(
                "krakenbook_journal_disk_full_stalls_total",
                "Times journal writing stopped on a full disk.",
                Value::Counter(get(&j.disk_full_stalls)),
            );
            if let Some(disk) = m.journal_disk.latest() {
                add(
                    "krakenbook_journal_segment_bytes",
                    "Bytes of the journal's segment files on disk.",
                    Value::Gauge(disk.segment_bytes),
                );
                add(
                    "krakenbook_journal_segment_files",
                    "Segment files in the journal directory.",
                    Value::Gauge(disk.segment_files),
                );
                add(
                    "krakenbook_journal_disk_free_bytes",
                    "Bytes free for the collector on the journal's filesystem.",
                    Value::Gauge(disk.free_bytes),
                );
                add(
                    "krakenbook_journal_disk_size_bytes",
                    "Size of the journal's filesystem in bytes.",
                    Value::Gauge(disk.size_bytes),
                );
            }
        }
        if let Some(s) = m.store.get() {
            add(
                "krakenbook_db_messages_written_total",
                "Message rows committed to the database.",
                Value::Counter(get(&s.messages)),
            );
            add(
                "krakenbook_db_entries_written_total",
                "Level rows committed to the database.",
                Value::Counter(get(&s.entries)),
            );
            add(
                "krakenbook_db_events_written_total",
                "Feed-event rows committed to the database.",
                Value::Counter(get(&s.events)),
            );
            add(
                "krakenbook_db_retries_total",
                "Database batches retried after a retriable error.",
                Value::Counter(get(&s.retries)),
            );
            add(
                "krakenbook_journal_damage_seqs_total",
                "Seqs the database pipeline found missing from the journal.",
                Value::Counter(get(&s.damaged_seqs)),
            );
            add(
                "krakenbook_db_records_stored_raw_total",
                "Records the database refused in structured form, stored raw.",
                Value::Counter(get(&s.stored_raw)),
            );
            add(
                "krakenbook_db_records_not_stored_total",
                "Records the database refused even in raw form (an event row stands for each).",
                Value::Counter(get(&s.not_stored)),
            );
            add(
                "krakenbook_db_up",
                "1 while the database is reachable.",
                Value::Gauge(get(&s.up)),
            );
            add(
                "krakenbook_db_checkpoint_seq",
                "Last journal seq committed to the database.",
                Value::Gauge(get(&s.checkpoint_seq)),
            );
            add(
                "krakenbook_db_commit_latency_seconds",
                "Time from a frame's receipt to the commit of the batch that holds it.",
                Value::Histogram(HistogramSnapshot::take(&s.commit_latency)),
            );
            add(
                "krakenbook_db_batch_seconds",
                "Time one database batch takes to write and commit.",
                Value::Histogram(HistogramSnapshot::take(&s.batch_duration)),
            );
            let (lag_records, lag_seconds, lag_bytes) = m.db_lag();
            add(
                "krakenbook_db_lag_records",
                "Journal records not yet in the database.",
                Value::Gauge(lag_records),
            );
            add(
                "krakenbook_db_lag_seconds",
                "Age of the oldest journal record not yet in the database.",
                Value::FloatGauge(lag_seconds),
            );
            add(
                "krakenbook_db_lag_bytes",
                "Journal bytes not yet in the database.",
                Value::Gauge(lag_bytes),
            );
        }

        let now = Timestamp::now();
        let symbols = m
            .symbols
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(symbol, sm)| {
                (
                    symbol.clone(),
                    PER_SYMBOL.map(|(_, _, field)| get(field(sm))),
                    sm.coverage.read(now),
                )
            })
            .collect();
        Snapshot { families, symbols }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for family in &self.families {
            let kind = match family.value {
                Value::Counter(_) | Value::PerSymbol(_) | Value::PerSymbolTotal(_) => {
                    MetricType::Counter
                }
                Value::Gauge(_)
                | Value::SignedGauge(_)
                | Value::FloatGauge(_)
                | Value::PerSymbolGauge(_)
                | Value::Problems(_) => MetricType::Gauge,
                Value::Histogram(_) => MetricType::Histogram,
            };
            // The encoder appends `_total` to a counter's name.
            let name = match kind {
                MetricType::Counter => family.name.strip_suffix("_total").unwrap_or(family.name),
                _ => family.name,
            };
            let mut metric = encoder.encode_descriptor(name, family.help, None, kind)?;
            match &family.value {
                Value::Counter(v) => ConstCounter::new(*v).encode(metric)?,
                Value::Gauge(v) => ConstGauge::new(*v).encode(metric)?,
                Value::SignedGauge(v) => ConstGauge::new(*v).encode(metric)?,
                Value::FloatGauge(v) => ConstGauge::new(*v).encode(metric)?,
                Value::PerSymbol(i) => {
                    for (symbol, values, _) in &self.symbols {
                        let labels = [("symbol", symbol.as_str())];
                        ConstCounter::new(values[*i]).encode(metric.encode_family(&labels)?)?;
                    }
                }
                Value::PerSymbolGauge(figure) => {
                    for (symbol, _, coverage) in &self.symbols {
                        let labels = [("symbol", symbol.as_str())];
                        ConstGauge::new(figure(coverage)).encode(metric.encode_family(&labels)?)?;
                    }
                }
                Value::PerSymbolTotal(total) => {
                    for (symbol, _, coverage) in &self.symbols {
                        let labels = [("symbol", symbol.as_str())];
                        ConstCounter::new(total(coverage))
                            .encode(metric.encode_family(&labels)?)?;
                    }
                }
                Value::Problems(problems) => {
                    for (part, problem) in HealthSource::ALL.iter().zip(problems) {
                        let labels = [("part", part.name())];
                        ConstGauge::new(u64::from(*problem))
                            .encode(metric.encode_family(&labels)?)?;
                    }
                }
                Value::Histogram(h) => h.encode(metric)?,
            }
        }
        Ok(())
    }
}

/// A [`Histogram`] as read at one scrape: observations per bucket (not cumulative), `+Inf` last.
#[derive(Debug)]
struct HistogramSnapshot {
    buckets: Vec<(f64, u64)>,
    sum_seconds: f64,
}

impl HistogramSnapshot {
    fn take(h: &Histogram) -> HistogramSnapshot {
        let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        HistogramSnapshot {
            buckets: bounds
                .zip(&h.counts)
                .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
                .collect(),
            sum_seconds: h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        // The count is the buckets' sum as read, so `_count` always equals the `+Inf` bucket.
        let count = self.buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::journal::JournalStats;
    use crate::metrics::StoreProgress;

    /// Today's families, as the hand-written format showed them before `prometheus-client`
    /// took over (captured from that code), and those added since for the alert rules and the
    /// dashboard in `deploy/`: name, type, help, label names of its samples.
    #[rustfmt::skip]
    const GOLDEN: &[(&str, &str, &str, &[&str])] = &[
        ("krakenbook_frames_received_total", "counter", "WebSocket frames received.", &[]),
        ("krakenbook_bytes_received_total", "counter", "Bytes of frames received.", &[]),
        ("krakenbook_malformed_frames_total", "counter", "Frames that could not be decoded (journaled all the same).", &[]),
        ("krakenbook_frames_stamped_on_read_total", "counter", "Frames stamped when read, not with their arrival as the kernel recorded it.", &[]),
        ("krakenbook_connects_total", "counter", "Connections opened.", &[]),
        ("krakenbook_reconnects_total", "counter", "Open connections that ended (and are reopened).", &[]),
        ("krakenbook_connect_failures_total", "counter", "Attempts to open a connection that failed.", &[]),
        ("krakenbook_subscription_errors_total", "counter", "Subscriptions rejected by the exchange.", &[]),
        ("krakenbook_connections_open", "gauge", "Connections currently open.", &[]),
        ("krakenbook_journal_queue_depth", "gauge", "Entries waiting for the journal.", &[]),
        ("krakenbook_unasked_symbol_frames_total", "counter", "Frames for symbols that were not asked for (counted, never tracked).", &[]),
        ("krakenbook_frames_too_large_total", "counter", "Frames above the frame-size cap (not kept; the connection is reopened).", &[]),
        ("krakenbook_fast_read_ticks_total", "counter", "Read ticks taken on the 10 ms grid instead of the --read-every period, while a connection received too much for its socket's buffer between slow ticks.", &[]),
        ("krakenbook_shared_book_copies_taken_total", "counter", "Book messages of a replica that took the verdict of the same bytes already applied at its place in its group's shared book (not decoded again).", &[]),
        ("krakenbook_shared_book_rebuilds_total", "counter", "Books rebuilt for a replica that left its group's shared book (a copy that differed from the message applied at its place).", &[]),
        ("krakenbook_healthy", "gauge", "1 while /health answers 200 (an exchange connection open, no part with a problem).", &[]),
        ("krakenbook_health_problem", "gauge", "1 while this part of the collector reports a problem on /health.", &["part"]),
        ("krakenbook_book_messages_total", "counter", "Book messages received.", &["symbol"]),
        ("krakenbook_checksum_ok_total", "counter", "Book messages whose checksum matched.", &["symbol"]),
        ("krakenbook_checksum_mismatch_total", "counter", "Book messages whose checksum did not match.", &["symbol"]),
        ("krakenbook_unverifiable_total", "counter", "Book messages received while the book was unsynced.", &["symbol"]),
        ("krakenbook_resubscribes_total", "counter", "Resubscriptions after a checksum mismatch.", &["symbol"]),
        ("krakenbook_resyncs_total", "counter", "Gaps closed: the book verified again after a mismatch or reconnect.", &["symbol"]),
        ("krakenbook_symbol_streams_verified", "gauge", "Streams (connections) whose book of the symbol is verified now.", &["symbol"]),
        ("krakenbook_symbol_seconds_since_verified", "gauge", "Seconds since the last verified book message of the symbol on any stream (since its subscription before the first).", &["symbol"]),
        ("krakenbook_symbol_gap_seconds", "gauge", "Seconds the symbol's current gap has been open: 0 while any stream's book is verified.", &["symbol"]),
        ("krakenbook_symbol_covered", "gauge", "1 while some stream's book of the symbol is verified (the union of its streams covers it), 0 in a gap (every stream dark).", &["symbol"]),
        ("krakenbook_symbol_seconds_since_gap", "gauge", "Seconds since every stream of the symbol was last dark (since its last gap ended): 0 while they are.", &["symbol"]),
        ("krakenbook_symbol_uncovered_seconds_total", "counter", "Seconds the symbol spent in gaps (every stream dark) since its subscription, the open gap included: 1 - rate() is the union's coverage.", &["symbol"]),
        ("krakenbook_journal_records_total", "counter", "Records appended to the journal.", &[]),
        ("krakenbook_journal_bytes_total", "counter", "Bytes appended to the journal.", &[]),
        ("krakenbook_journal_rotations_total", "counter", "Journal segments closed and started.", &[]),
        ("krakenbook_journal_synced_seq", "gauge", "Last journal seq synced to disk.", &[]),
        ("krakenbook_journal_flushed_seq", "gauge", "Last journal seq handed to the OS.", &[]),
        ("krakenbook_journal_torn_bytes", "gauge", "Bytes of a torn tail cut when the journal was opened.", &[]),
        ("krakenbook_journal_recovery_damaged_seqs", "gauge", "Seqs found damaged in the last segment when the journal was opened.", &[]),
        ("krakenbook_journal_expired_segments_total", "counter", "Closed segments removed by retention.", &[]),
        ("krakenbook_journal_disk_full", "gauge", "1 while journal writing is stopped on a full disk (records wait in memory).", &[]),
        ("krakenbook_journal_disk_full_stalls_total", "counter", "Times journal writing stopped on a full disk.", &[]),
        ("krakenbook_journal_segment_bytes", "gauge", "Bytes of the journal's segment files on disk.", &[]),
        ("krakenbook_journal_segment_files", "gauge", "Segment files in the journal directory.", &[]),
        ("krakenbook_journal_disk_free_bytes", "gauge", "Bytes free for the collector on the journal's filesystem.", &[]),
        ("krakenbook_journal_disk_size_bytes", "gauge", "Size of the journal's filesystem in bytes.", &[]),
        ("krakenbook_db_messages_written_total", "counter", "Message rows committed to the database.", &[]),
        ("krakenbook_db_entries_written_total", "counter", "Level rows committed to the database.", &[]),
        ("krakenbook_db_events_written_total", "counter", "Feed-event rows committed to the database.", &[]),
        ("krakenbook_db_retries_total", "counter", "Database batches retried after a retriable error.", &[]),
        ("krakenbook_journal_damage_seqs_total", "counter", "Seqs the database pipeline found missing from the journal.", &[]),
        ("krakenbook_db_records_stored_raw_total", "counter", "Records the database refused in structured form, stored raw.", &[]),
        ("krakenbook_db_records_not_stored_total", "counter", "Records the database refused even in raw form (an event row stands for each).", &[]),
        ("krakenbook_db_up", "gauge", "1 while the database is reachable.", &[]),
        ("krakenbook_db_checkpoint_seq", "gauge", "Last journal seq committed to the database.", &[]),
        ("krakenbook_db_commit_latency_seconds", "histogram", "Time from a frame's receipt to the commit of the batch that holds it.", &["le"]),
        ("krakenbook_db_batch_seconds", "histogram", "Time one database batch takes to write and commit.", &["le"]),
        ("krakenbook_db_lag_records", "gauge", "Journal records not yet in the database.", &[]),
        ("krakenbook_db_lag_seconds", "gauge", "Age of the oldest journal record not yet in the database.", &[]),
        ("krakenbook_db_lag_bytes", "gauge", "Journal bytes not yet in the database.", &[]),
    ];

    /// Today's `le` labels of both histograms, as the hand-written format printed them.
    const GOLDEN_BOUNDS: [&str; 25] = [
        "0.0005", "0.001", "0.002", "0.003", "0.005", "0.0075", "0.01", "0.015", "0.02", "0.03",
        "0.05", "0.075", "0.1", "0.15", "0.2", "0.25", "0.3", "0.4", "0.5", "0.75", "1", "2", "5",
        "10", "+Inf",
    ];

    /// A symbol name a lying peer could send: a quote, a backslash, a newline.
    const ODD_SYMBOL: &str = "WE\"IRD\\X\nY";

    /// Metrics with every part attached and a value in every kind of family.
    fn populated() -> Metrics {
        let m = Metrics::default();
        m.frames.store(3, Ordering::Relaxed);
        m.connections_open.store(1, Ordering::Relaxed);
        m.symbol("BTC/USD").checksum_ok.store(2, Ordering::Relaxed);
        m.symbol(ODD_SYMBOL).checksum_ok.store(3, Ordering::Relaxed);
        let journal = Arc::new(JournalStats::default());
        journal.flushed_seq.store(12, Ordering::Relaxed);
        journal.bytes.store(1000, Ordering::Relaxed);
        m.attach_journal(journal);
        m.journal_disk.record(crate::metrics::disk::DiskSample {
            segment_bytes: 4096,
            segment_files: 2,
            free_bytes: 1 << 30,
            size_bytes: 1 << 34,
        });
        let store = Arc::new(StoreProgress::default());
        store.checkpoint_seq.store(10, Ordering::Relaxed);
        store.bytes.store(900, Ordering::Relaxed);
        store.commit_latency.observe_ns(1_000_000);
        store.commit_latency.observe_ns(20_000_000_000);
        store.batch_duration.observe_ns(3_000_000);
        m.attach_store(store);
        m
    }

    /// One sample line of the classic text format: name, labels (unescaped), value.
    #[derive(Debug, PartialEq)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: String,
    }

    /// Parses a sample line as Prometheus does: `name{k="v",...} value`, with `\\`, `\"` and
    /// `\n` escaped in label values.
    fn parse_sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).expect("a name");
        let name = line[..name_end].to_owned();
        let mut labels = Vec::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            while !rest.starts_with('}') {
                let (key, r) = rest.split_once("=\"").expect("key=\"");
                let mut value = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next().expect("closing quote") {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().expect("escaped char").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c} in {line:?}"),
                        },
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.to_owned(), value));
                rest = r[end + 1..].trim_start_matches(',');
            }
            rest = &rest[1..];
        }
        let value = rest.strip_prefix(' ').expect("a space before the value");
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        Sample {
            name,
            labels,
            value: value.to_owned(),
        }
    }

    /// (name, type, help, label names of its samples) per family, in order of appearance.
    fn families(text: &str) -> Vec<(String, String, String, Vec<String>)> {
        let mut out: Vec<(String, String, String, Vec<String>)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                out.push((name.into(), String::new(), help.into(), Vec::new()));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                let last = out.last_mut().expect("TYPE after HELP");
                assert_eq!(last.0, name, "TYPE names the family of its HELP");
                last.1 = kind.into();
            } else {
                assert!(!line.starts_with('#'), "no other comments: {line:?}");
                let sample = parse_sample(line);
                let last = out.last_mut().expect("a sample after its TYPE");
                let family = &last.0;
                let own = sample.name == *family
                    || (last.1 == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| sample.name == format!("{family}{s}")));
                assert!(own, "sample {line:?} outside its family {family}");
                for (key, _) in sample.labels {
                    if !last.3.contains(&key) {
                        last.3.push(key);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn families_are_todays_names_types_labels_and_help() {
        let text = populated().render();
        let got = families(&text);
        let want: Vec<(String, String, String, Vec<String>)> = GOLDEN
            .iter()
            .map(|(n, t, h, l)| {
                let labels = l.iter().map(|s| s.to_string()).collect();
                (n.to_string(), t.to_string(), h.to_string(), labels)
            })
            .collect();
        assert_eq!(got, want, "{text}");
    }

    #[test]
    fn histograms_keep_todays_bucket_bounds_and_count_cumulatively() {
        let text = populated().render();
        for name in [
            "krakenbook_db_commit_latency_seconds",
            "krakenbook_db_batch_seconds",
        ] {
            let buckets: Vec<Sample> = text
                .lines()
                .filter_map(parse_sample_or_comment)
                .filter(|s| s.name == format!("{name}_bucket"))
                .collect();
            let bounds: Vec<&str> = buckets.iter().map(|s| s.labels[0].1.as_str()).collect();
            assert_eq!(bounds, GOLDEN_BOUNDS, "{name}");
            assert!(
                text.contains(&format!("{name}_count ")),
                "{name}_count missing:\n{text}"
            );
        }
        // 1 ms falls in le=0.001 and above; 20 s only in +Inf.
        let latency =
            |le: &str| format!("krakenbook_db_commit_latency_seconds_bucket{{le=\"{le}\"}} ");
        assert!(text.contains(&(latency("0.0005") + "0\n")), "{text}");
        assert!(text.contains(&(latency("0.001") + "1\n")), "{text}");
        assert!(text.contains(&(latency("10") + "1\n")), "{text}");
        assert!(text.contains(&(latency("+Inf") + "2\n")), "{text}");
        assert!(
            text.contains("krakenbook_db_commit_latency_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("krakenbook_db_commit_latency_seconds_sum 20.001\n"),
            "{text}"
        );
    }

    /// The per-symbol families of a symbol's coverage.
    const PER_SYMBOL_GAUGES: usize = 6;

    fn parse_sample_or_comment(line: &str) -> Option<Sample> {
        (!line.starts_with('#')).then(|| parse_sample(line))
    }

    #[test]
    fn odd_symbol_names_are_escaped_and_read_back_whole() {
        let text = populated().render();
        assert!(
            text.contains("krakenbook_checksum_ok_total{symbol=\"WE\\\"IRD\\\\X\\nY\"} 3\n"),
            "{text}"
        );
        let samples: Vec<Sample> = text.lines().filter_map(parse_sample_or_comment).collect();
        let odd: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.labels.first().is_some_and(|(_, v)| v == ODD_SYMBOL))
            .collect();
        assert_eq!(odd.len(), PER_SYMBOL.len() + PER_SYMBOL_GAUGES, "{text}");
        // A newline in a label never starts a line of its own.
        assert!(text.lines().all(|l| !l.starts_with("Y\"")), "{text}");
    }

    #[test]
    fn integer_values_are_written_exactly() {
        let m = populated();
        m.frames.store(u64::MAX, Ordering::Relaxed);
        m.connections_open.store(-1, Ordering::Relaxed);
        let text = m.render();
        for line in [
            "krakenbook_frames_received_total 18446744073709551615\n",
            "krakenbook_connections_open -1\n",
            "krakenbook_journal_flushed_seq 12\n",
            "krakenbook_db_lag_records 2\n",
            "krakenbook_db_lag_bytes 100\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
    }

    /// The value of the sample `name{label="value"}` (or `name` alone), parsed as a scraper does.
    fn value_of(text: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        text.lines()
            .filter_map(parse_sample_or_comment)
            .find(|s| {
                s.name == name
                    && match label {
                        Some((k, v)) => s.labels == [(k.to_owned(), v.to_owned())],
                        None => s.labels.is_empty(),
                    }
            })
            .map(|s| s.value.parse().unwrap())
    }

    #[test]
    fn a_symbol_has_every_series_at_zero_from_its_subscription_before_any_message() {
        let m = Metrics::default();
        m.symbol("ETH/USD");
        let text = m.render();
        let eth = Some(("symbol", "ETH/USD"));
        for (name, _, _) in PER_SYMBOL {
            assert_eq!(value_of(&text, name, eth), Some(0.0), "{name}\n{text}");
        }
        assert_eq!(
            value_of(&text, "krakenbook_symbol_streams_verified", eth),
            Some(0.0)
        );
        // Dark from the subscription on: not covered, and the gap counts from then.
        for (name, want) in [
            ("krakenbook_symbol_covered", Some(0.0)),
            ("krakenbook_symbol_seconds_since_gap", Some(0.0)),
        ] {
            assert_eq!(value_of(&text, name, eth), want, "{name}\n{text}");
        }
        for name in [
            "krakenbook_symbol_seconds_since_verified",
            "krakenbook_symbol_gap_seconds",
            "krakenbook_symbol_uncovered_seconds_total",
        ] {
            let v = value_of(&text, name, eth).unwrap_or_else(|| panic!("{name}\n{text}"));
            assert!(
                (0.0..1.0).contains(&v),
                "{name} {v}: counts from the subscription"
            );
        }
    }

    #[test]
    fn coverage_gauges_show_a_verified_stream_and_an_open_gap() {
        let m = Metrics::default();
        let btc = m.symbol("BTC/USD");
        let mut stream = crate::metrics::StreamCoverage::new(Arc::clone(&btc));
        stream.verified(Timestamp::now().add_nanos(-30_000_000_000));
        let text = m.render();
        let label = Some(("symbol", "BTC/USD"));
        assert_eq!(
            value_of(&text, "krakenbook_symbol_streams_verified", label),
            Some(1.0)
        );
        assert_eq!(
            value_of(&text, "krakenbook_symbol_gap_seconds", label),
            Some(0.0)
        );
        let age = value_of(&text, "krakenbook_symbol_seconds_since_verified", label).unwrap();
        assert!((30.0..40.0).contains(&age), "{age}");
        assert_eq!(
            value_of(&text, "krakenbook_symbol_covered", label),
            Some(1.0)
        );
        stream.unverified(Timestamp::now().add_nanos(-10_000_000_000));
        let text = m.render();
        let gap = value_of(&text, "krakenbook_symbol_gap_seconds", label).unwrap();
        assert!((10.0..20.0).contains(&gap), "{gap}");
        assert_eq!(
            value_of(&text, "krakenbook_symbol_covered", label),
            Some(0.0)
        );
        assert_eq!(
            value_of(&text, "krakenbook_symbol_seconds_since_gap", label),
            Some(0.0)
        );
    }

    /// The coverage families show what the symbol's coverage reads, the total as a counter.
    #[test]
    fn union_coverage_families_show_the_symbols_reading() {
        let m = Metrics::default();
        let btc = m.symbol("BTC/USD");
        let mut stream = crate::metrics::StreamCoverage::new(Arc::clone(&btc));
        // Dark from the subscription until a verified message half a second later.
        stream.verified(Timestamp::now().add_nanos(500_000_000));
        let text = m.render();
        let label = Some(("symbol", "BTC/USD"));
        let total = value_of(&text, "krakenbook_symbol_uncovered_seconds_total", label).unwrap();
        assert!((0.5..0.6).contains(&total), "{total}");
        assert_eq!(
            total,
            btc.coverage.read(Timestamp::now()).uncovered_seconds,
            "the gap is closed: its total no longer grows"
        );
        assert_eq!(
            value_of(&text, "krakenbook_symbol_covered", label),
            Some(1.0)
        );
        assert!(
            text.contains("# TYPE krakenbook_symbol_uncovered_seconds_total counter\n"),
            "{text}"
        );
    }

    #[test]
    fn health_gauges_name_the_part_with_a_problem() {
        let m = Metrics::default();
        m.connections_open.store(1, Ordering::Relaxed);
        let text = m.render();
        assert_eq!(value_of(&text, "krakenbook_healthy", None), Some(1.0));
        m.set_problem(HealthSource::Database, Some("down".into()));
        let text = m.render();
        assert_eq!(value_of(&text, "krakenbook_healthy", None), Some(0.0));
        for (part, want) in [("feed", 0.0), ("journal", 0.0), ("database", 1.0)] {
            let v = value_of(&text, "krakenbook_health_problem", Some(("part", part)));
            assert_eq!(v, Some(want), "{part}\n{text}");
        }
    }

    #[test]
    fn the_journal_disk_families_wait_for_the_first_measurement() {
        let m = Metrics::default();
        m.attach_journal(Arc::new(JournalStats::default()));
        let text = m.render();
        assert!(text.contains("krakenbook_journal_disk_full 0\n"), "{text}");
        assert!(!text.contains("krakenbook_journal_segment_bytes"), "{text}");
        let text = populated().render();
        assert!(
            text.contains("krakenbook_journal_segment_bytes 4096\n"),
            "{text}"
        );
        assert!(
            text.contains("krakenbook_journal_disk_free_bytes 1073741824\n"),
            "{text}"
        );
    }

    #[test]
    fn families_of_parts_not_attached_are_absent() {
        let text = Metrics::default().render();
        assert!(text.contains("# TYPE krakenbook_checksum_ok_total counter\n"));
        assert!(!text.contains("krakenbook_journal_records_total"), "{text}");
        assert!(!text.contains("krakenbook_db_"), "{text}");
        assert!(!text.contains("# EOF"), "classic format, not OpenMetrics");
    }

    /// `promtool check metrics` (Debian's `prometheus` package) accepts the output.
    #[test]
    fn promtool_accepts_the_exposition() {
        use std::io::Write as _;
        let text = populated().render();
        let child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => panic!(
                "promtool is needed to check the exposition ({e}): install it with \
                 `apt-get install prometheus` (Debian's package provides promtool)"
            ),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}\n{}{}\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
