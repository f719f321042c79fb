//! `krakenbook-bench simulate`: how many book messages per second the simulator delivers.
//!
//! Starts the simulator in-process on a loopback port, connects `--clients` clients, each
//! subscribed to every pair, waits until every snapshot arrived, then counts for `--measure` the
//! book messages each client actually received. A sample of the pairs (every `--verify-every`-th)
//! is verified on every message with the project's own engine (`kraken::decode` +
//! `book::Tracker`), so the figure is for correct books; the others are only counted, to leave
//! the machine's CPU to the server. Fails (exit 1) on any checksum mismatch or disconnect.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use krakenbook::book::{Tracker, Verdict};
use krakenbook::exchange::sim::generated_pairs;
use krakenbook::exchange::{ServerConfig, SimConfig, Simulator};
use krakenbook::kraken::{Depth, Frame, Request, decode};

pub(crate) const BENCH_SIMULATE_EXAMPLES: &str = "\
The offered load is --pairs x --rate book events per second; a client at depth D receives one
message per event that touches the top D levels (about half of them at depth 10). Run it with
a release build: cargo run --release -- bench simulate.

Examples:
  krakenbook-bench simulate                                    500 pairs, 10 s
  krakenbook-bench simulate --pairs 1000 --rate 200 --depth 25 --clients 2
  krakenbook-bench simulate --verify-every 1 --json             verify every pair, print JSON";

/// `krakenbook-bench simulate`.
#[derive(Debug, Args)]
pub struct BenchSimulateArgs {
    /// Simulated pairs (every client subscribes to all of them).
    #[arg(long, value_name = "N", default_value = "500", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pairs: u32,
    /// Book events per second per pair.
    #[arg(long, value_name = "EVENTS", default_value = "300")]
    pub rate: f64,
    /// Book depth the clients subscribe at: 10, 25, 100, 500 or 1000.
    #[arg(long, default_value = "10")]
    pub depth: Depth,
    /// Loopback clients, each subscribed to every pair.
    #[arg(long, value_name = "N", default_value = "1", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub clients: u32,
    /// How long to measure, after the warm-up (1s to 1h).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::collect::bench_period)]
    pub measure: Duration,
    /// How long to wait after every snapshot arrived before measuring.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = krakenbook::config::duration)]
    pub warmup: Duration,
    /// Verify every message of one pair in N (1: every pair).
    #[arg(long, value_name = "N", default_value = "10", value_parser = clap::value_parser!(u32).range(1..))]
    pub verify_every: u32,
    /// Seed of the simulation.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What one client saw, updated as it reads.
#[derive(Debug, Default)]
struct Counters {
    book_messages: AtomicU64,
    snapshots: AtomicU64,
    bytes: AtomicU64,
    verified_ok: AtomicU64,
    mismatches: AtomicU64,
    unsynced: AtomicU64,
    closed: AtomicU64,
}

/// One loopback client.
#[derive(Debug)]
struct BenchClient {
    url: String,
    symbols: Arc<Vec<String>>,
    sampled: Arc<HashSet<String>>,
    depth: Depth,
    counters: Arc<Counters>,
}

impl BenchClient {
    async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let (mut ws, _) = tokio_tungstenite::connect_async(&self.url)
            .await
            .with_context(|| format!("cannot connect to {}", self.url))?;
        ws.send(Message::Text(
            Request::subscribe_instrument(Some(1)).to_json().into(),
        ))
        .await?;
        ws.send(Message::Text(
            Request::subscribe_book(&self.symbols, self.depth, true, Some(2))
                .to_json()
                .into(),
        ))
        .await?;
        let mut tracker = Tracker::new(self.depth.levels());
        let c = &self.counters;
        let result = loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                m = ws.next() => m,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => {
                    break Err(anyhow::anyhow!("the server closed the connection"));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Err(e.into()),
            };
            let text = text.as_str();
            c.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
            let Some((snapshot, symbol)) = book_frame(text) else {
                // Not a book frame: acks teach the tracker depths, the instrument frame precisions.
                if let Ok(frame) = decode(text) {
                    tracker.observe(&frame);
                }
                continue;
            };
            if snapshot {
                c.snapshots.fetch_add(1, Ordering::Relaxed);
            } else {
                c.book_messages.fetch_add(1, Ordering::Relaxed);
            }
            if !self.sampled.contains(symbol) {
                continue;
            }
            match decode(text) {
                Ok(Frame::Book(msg)) => {
                    for data in &msg.data {
                        let counter = match tracker.apply(msg.kind, data) {
                            Verdict::Ok => &c.verified_ok,
                            Verdict::Mismatch { .. } => &c.mismatches,
                            Verdict::Unsynced => &c.unsynced,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {
                    c.mismatches.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        if result.is_err() {
            c.closed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// Whether a `book` frame in Kraken's layout is a snapshot, and its symbol, read without
/// decoding the frame.
fn book_frame(text: &str) -> Option<(bool, &str)> {
    let rest = text.strip_prefix(r#"{"channel":"book","type":""#)?;
    let snapshot = rest.starts_with("snapshot\"");
    const SYMBOL: &str = r#""data":[{"symbol":""#;
    let rest = &rest[rest.find(SYMBOL)? + SYMBOL.len()..];
    Some((snapshot, &rest[..rest.find('"')?]))
}

#[derive(Debug, serde::Serialize)]
struct Report {
    pairs: u32,
    depth: u16,
    clients: u32,
    offered_events_per_sec: f64,
    seconds: f64,
    market_events_per_sec: f64,
    book_messages_per_sec: f64,
    book_messages_per_sec_per_client: f64,
    megabytes_per_sec: f64,
    verified_ok: u64,
    mismatches: u64,
    unverifiable: u64,
    slow_client_disconnects: u64,
    client_disconnects: u64,
}

/// Runs the benchmark.
pub async fn run(args: BenchSimulateArgs) -> anyhow::Result<ExitCode> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a number of events per second above zero, e.g. 300");
    }
    let pairs = generated_pairs(args.pairs as usize);
    let symbols: Arc<Vec<String>> = Arc::new(pairs.iter().map(|p| p.symbol.clone()).collect());
    let sampled: Arc<HashSet<String>> = Arc::new(
        symbols
            .iter()
            .step_by(args.verify_every as usize)
            .cloned()
            .collect(),
    );
    let sim = Simulator::bind(SimConfig {
        pairs,
        rate: args.rate,
        seed: args.seed,
        server: ServerConfig {
            send_queue: 1 << 16,
            ..ServerConfig::default()
        },
        ..SimConfig::default()
    })
    .await
    .context("the simulator could not start")?;
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..args.clients {
        let c = Arc::new(Counters::default());
        counters.push(Arc::clone(&c));
        let client = BenchClient {
            url: sim.url(),
            symbols: Arc::clone(&symbols),
            sampled: Arc::clone(&sampled),
            depth: args.depth,
            counters: c,
        };
        tasks.push(tokio::spawn(client.run(cancel.clone())));
    }
    let total = |f: fn(&Counters) -> &AtomicU64| -> u64 {
        counters.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
    };
    let wanted = u64::from(args.pairs) * u64::from(args.clients);
    let deadline = Instant::now() + Duration::from_secs(60);
    while total(|c| &c.snapshots) < wanted {
        if Instant::now() > deadline || total(|c| &c.closed) > 0 {
            let got = total(|c| &c.snapshots);
            cancel.cancel();
            let mut why = String::new();
            for t in tasks {
                if let Ok(Err(e)) = t.await {
                    why = format!(": {e:#}");
                }
            }
            bail!("the clients received {got} of {wanted} snapshots{why}; giving up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(args.warmup).await;
    let (m0, b0, e0, t0) = (
        total(|c| &c.book_messages),
        total(|c| &c.bytes),
        sim.stats().market_events,
        Instant::now(),
    );
    tokio::time::sleep(args.measure).await;
    let (m1, b1, e1, dt) = (
        total(|c| &c.book_messages),
        total(|c| &c.bytes),
        sim.stats().market_events,
        t0.elapsed().as_secs_f64(),
    );
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let stats = sim.shutdown().await.context("simulator shutdown")?;
    let report = Report {
        pairs: args.pairs,
        depth: args.depth.get(),
        clients: args.clients,
        offered_events_per_sec: f64::from(args.pairs) * args.rate,
        seconds: dt,
        market_events_per_sec: (e1 - e0) as f64 / dt,
        book_messages_per_sec: (m1 - m0) as f64 / dt,
        book_messages_per_sec_per_client: (m1 - m0) as f64 / dt / f64::from(args.clients),
        megabytes_per_sec: (b1 - b0) as f64 / dt / 1e6,
        verified_ok: total(|c| &c.verified_ok),
        mismatches: total(|c| &c.mismatches),
        unverifiable: total(|c| &c.unsynced),
        slow_client_disconnects: stats.exchange.slow_client_disconnects,
        client_disconnects: total(|c| &c.closed),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, args.verify_every));
        if report.client_disconnects > 0 {
            println!(
                "  the client(s) could not keep up and were disconnected as slow clients: lower --rate or --pairs"
            );
        }
    }
    Ok(
        if report.mismatches == 0 && report.client_disconnects == 0 && report.verified_ok > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

fn render(r: &Report, verify_every: u32) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "krakenbook-bench simulate: {} pairs at depth {}, {} client(s), {:.0} events/s offered, {:.1} s measured, {cpus} CPUs\n\
         \x20 delivered    {:>12.0} book messages/s ({:.0} per client, {:.1} MB/s)\n\
         \x20 market       {:>12.0} events/s drawn\n\
         \x20 checksums    {:>12} verified ok, {} mismatches, {} unverifiable (every message of 1 pair in {verify_every})\n\
         \x20 disconnects  {:>12} slow clients, {} client errors\n",
        r.pairs,
        r.depth,
        r.clients,
        r.offered_events_per_sec,
        r.seconds,
        r.book_messages_per_sec,
        r.book_messages_per_sec_per_client,
        r.megabytes_per_sec,
        r.market_events_per_sec,
        r.verified_ok,
        r.mismatches,
        r.unverifiable,
        r.slow_client_disconnects,
        r.client_disconnects,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_frames_are_recognised_in_krakens_layout() {
        let update = r#"{"channel":"book","type":"update","data":[{"symbol":"MINA/GBP","bids":[],"asks":[],"checksum":1,"timestamp":"2026-08-17T16:01:57.687440Z"}]}"#;
        assert_eq!(book_frame(update), Some((false, "MINA/GBP")));
        let snapshot = update.replace("update", "snapshot");
        assert_eq!(book_frame(&snapshot), Some((true, "MINA/GBP")));
        assert_eq!(book_frame(r#"{"channel":"heartbeat"}"#), None);
        assert_eq!(
            book_frame(r#"{"channel":"book","type":"update","data":[{"symbol":"X"#),
            None
        );
    }
}
