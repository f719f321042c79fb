//! `krakenbook simulate`: a local Kraken v2 exchange with faults on demand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use krakenbook::config;
use krakenbook::exchange::sim::{generated_pairs, parse_pairs};
use krakenbook::exchange::{Faults, Probability, ServerConfig, SimConfig, SimStats, Simulator};

pub(crate) const SIMULATE_EXAMPLES: &str = "\
Speaks Kraken's public WebSocket v2 protocol (status, instrument, book, heartbeat, ping) at
ws://ADDR/v2. Each pair keeps a deep book moved by random events (changes, deletions and inserts
concentrated near the top); each subscriber gets Kraken's updates for its depth (10, 25, 100,
500 or 1000) with a correct checksum on every message. A pair starts trading when first
subscribed, and the same --seed gives the same frames (timestamps aside).

Fault counts (--*-after N) count the book updates sent on each connection, and fire once per
connection; rates (--*-rate P) are probabilities per update. Prints the address on the first line
of stdout, counters every --stats-every on stderr, and runs until Ctrl-C or SIGTERM.

Examples:
  krakenbook simulate                                          BTC/USD, ETH/USD, MINA/GBP on 127.0.0.1:8790
  krakenbook simulate --symbols BTC/USD:1:8,ETH/USD:2:8 --rate 50 --seed 7
  krakenbook simulate --symbols BTC/USD:1:8:price=62800.0:rate=200,MINA/GBP:4:8:rate=0.5
  krakenbook simulate --pairs 500 --rate 100 --listen 127.0.0.1:9000
  krakenbook simulate --drop-after 1000 --fault-connections 1    drop the first connection once
  krakenbook simulate --lose-after 200 --log frames.ndjson  a checksum failure, and a log
  krakenbook simulate --silence-every 30s --silence-for 6s --reject ETH/USD --garbage-after 50
  krakenbook simulate --drop-every 20s                       drop the connections in turn
  krakenbook simulate --silence-conn 2 --silence-at 10s --silence-for 8s   one quiet connection";

/// `krakenbook simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on. Loopback only, unless --public.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8790")]
    pub listen: SocketAddr,
    /// Allow a non-loopback --listen address (anyone who can reach it gets the feed).
    #[arg(long)]
    pub public: bool,
    /// Pairs to simulate, comma-separated: SYMBOL:PRICE_PRECISION:QTY_PRECISION, optionally
    /// followed by :price=P (starting price) and :rate=R (events per second for this pair).
    /// Default: BTC/USD:1:8,ETH/USD:2:8,MINA/GBP:4:8.
    #[arg(long, value_name = "LIST", conflicts_with = "pairs")]
    pub symbols: Option<String>,
    /// Simulate N generated pairs (AAA/USD, AAB/EUR, ...) with varied precisions.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pairs: Option<u32>,
    /// Book events per second per pair (each event changes 1 to 8 levels; a subscriber gets a
    /// message for each event that touches its depth).
    #[arg(long, value_name = "EVENTS", default_value = "20")]
    pub rate: f64,
    /// Seed of every random choice (books, event times, connection ids, random faults).
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Levels a side of each pair's full book; served depths are windows of it.
    #[arg(long, value_name = "N", default_value = "2000")]
    pub book_levels: usize,
    /// Book frames queued per connection; a client that falls further behind is disconnected.
    #[arg(long, value_name = "FRAMES", default_value = "16384")]
    pub send_queue: usize,
    /// Write every frame sent to FILE, one JSON line each: {"conn":1,"ns":...,"sent":"<frame>"}.
    #[arg(long = "log", visible_alias = "frame-log", value_name = "FILE")]
    pub frame_log: Option<PathBuf>,
    /// Print counters to stderr this often (0s: only at the end).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = config::duration)]
    pub stats_every: Duration,

    /// Close each connection (no WebSocket close) after its N-th book update.
    #[arg(long, value_name = "N", help_heading = "Faults", value_parser = clap::value_parser!(u64).range(1..))]
    pub drop_after: Option<u64>,
    /// Close the connection after each update with probability P (e.g. 0.0001).
    #[arg(long, value_name = "P", help_heading = "Faults", default_value = "0")]
    pub drop_rate: Probability,
    /// Go silent (no frame at all, heartbeats included) after the N-th update.
    #[arg(long, value_name = "N", help_heading = "Faults", value_parser = clap::value_parser!(u64).range(1..))]
    pub silence_after: Option<u64>,
    /// Go silent every DURATION of each connection's life (e.g. 30s).
    #[arg(long, value_name = "DURATION", help_heading = "Faults", value_parser = config::positive_duration)]
    pub silence_every: Option<Duration>,
    /// How long a silence lasts (e.g. 6s, 500ms).
    #[arg(
        long,
        visible_alias = "silence-secs",
        value_name = "DURATION",
        help_heading = "Faults",
        default_value = "6s",
        value_parser = config::positive_duration
    )]
    pub silence_for: Duration,
    /// Withhold the first update after N updates that changes the checksum: the client's next
    /// checksum for that pair fails.
    #[arg(long, value_name = "N", help_heading = "Faults")]
    pub lose_after: Option<u64>,
    /// Withhold each checksum-changing update with probability P.
    #[arg(long, value_name = "P", help_heading = "Faults", default_value = "0")]
    pub lose_rate: Probability,
    /// Send a frame that is not JSON after the N-th update.
    #[arg(long, value_name = "N", help_heading = "Faults", value_parser = clap::value_parser!(u64).range(1..))]
    pub garbage_after: Option<u64>,
    /// Send a frame of an unknown channel after the N-th update.
    #[arg(long, value_name = "N", help_heading = "Faults", value_parser = clap::value_parser!(u64).range(1..))]
    pub unknown_channel_after: Option<u64>,
    /// Refuse subscriptions to these symbols with "Currency pair not supported" (comma-separated).
    #[arg(
        long,
        value_name = "SYMBOLS",
        help_heading = "Faults",
        value_delimiter = ','
    )]
    pub reject: Vec<String>,
    /// Apply the per-connection faults to the first N connections only.
    #[arg(long, value_name = "N", help_heading = "Faults")]
    pub fault_connections: Option<u64>,
    /// Every DURATION, drop one live connection (no WebSocket close), taking them in turn in
    /// accept order: a client with two connections always has one up (e.g. 20s).
    #[arg(long, value_name = "DURATION", help_heading = "Faults", value_parser = config::positive_duration)]
    pub drop_every: Option<Duration>,
    /// Apply the silence faults to connection N (accept order, from 1) only; the others go on.
    #[arg(long, value_name = "N", help_heading = "Faults", value_parser = clap::value_parser!(u64).range(1..))]
    pub silence_conn: Option<u64>,
    /// Go silent once, DURATION after each connection (or the --silence-conn one) opened.
    #[arg(long, value_name = "DURATION", help_heading = "Faults", value_parser = config::duration)]
    pub silence_at: Option<Duration>,
}

impl SimulateArgs {
    /// The simulator's configuration, or a one-line error saying what to change.
    pub fn config(&self) -> anyhow::Result<SimConfig> {
        if !self.public && !self.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {}: it is not a loopback address, so anyone who can reach it would get the feed; pass --public to allow it, or use e.g. --listen 127.0.0.1:8790",
                self.listen
            );
        }
        let defaults = SimConfig::default();
        let pairs = match (&self.symbols, self.pairs) {
            (Some(list), _) => parse_pairs(list).map_err(anyhow::Error::msg)?,
            (None, Some(n)) => generated_pairs(n as usize),
            (None, None) => defaults.pairs.clone(),
        };
        Ok(SimConfig {
            pairs,
            rate: self.rate,
            book_levels: self.book_levels,
            seed: self.seed,
            server: ServerConfig {
                listen: self.listen,
                send_queue: self.send_queue,
                log: self.frame_log.clone(),
                faults: Faults {
                    drop_after: self.drop_after,
                    drop_rate: self.drop_rate,
                    silence_after: self.silence_after,
                    silence_every: self.silence_every,
                    silence_for: self.silence_for,
                    lose_after: self.lose_after,
                    lose_rate: self.lose_rate,
                    garbage_after: self.garbage_after,
                    unknown_channel_after: self.unknown_channel_after,
                    reject: self.reject.iter().map(|s| s.trim().to_owned()).collect(),
                    connections: self.fault_connections,
                    silence_conn: self.silence_conn,
                    silence_at: self.silence_at,
                    drop_every: self.drop_every,
                },
                ..ServerConfig::default()
            },
            ..defaults
        })
    }
}

/// Runs `krakenbook simulate` until Ctrl-C or SIGTERM.
pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    let (pairs, rate, seed) = (config.pairs.len(), config.rate, config.seed);
    let sim = Simulator::bind(config)
        .await
        .context("krakenbook simulate could not start")?;
    println!(
        "krakenbook simulate: listening on {} ({pairs} pairs, {rate} events/s each, seed {seed})",
        sim.url()
    );
    let mut every = (!args.stats_every.is_zero()).then(|| tokio::time::interval(args.stats_every));
    if let Some(i) = &mut every {
        i.tick().await;
    }
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = &mut stop => {
                r.context("cannot listen for Ctrl-C")?;
                break;
            }
            _ = async { match &mut every { Some(i) => { i.tick().await; } None => std::future::pending().await } } => {
                eprintln!("{}", render_stats(&sim.stats()));
            }
        }
    }
    eprintln!("krakenbook simulate: shutting down");
    let stats = sim.shutdown().await.context("shutdown")?;
    eprintln!("{}", render_stats(&stats));
    Ok(ExitCode::SUCCESS)
}

async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// One line of counters.
pub fn render_stats(s: &SimStats) -> String {
    let e = &s.exchange;
    format!(
        "stats: {} connections open ({} accepted), {} events, {} book updates and {} snapshots sent, {} heartbeats, {} frames ({:.1} MB), slow-client disconnects {}, faults: {} drops, {} silences, {} lost updates, {} non-JSON, {} unknown-channel, {} rejected subscriptions",
        e.connections_open,
        e.connections_accepted,
        s.market_events,
        e.book_updates_sent,
        e.book_snapshots_sent,
        e.heartbeats_sent,
        e.frames_sent,
        e.bytes_sent as f64 / 1e6,
        e.slow_client_disconnects,
        e.fault_drops,
        e.fault_silences,
        e.fault_lost_updates,
        e.fault_garbage_frames,
        e.fault_unknown_channel_frames,
        e.fault_rejected_subscriptions,
    )
}
