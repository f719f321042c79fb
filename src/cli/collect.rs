//! `krakenbook collect`: record order books to the journal (and a database).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;

use krakenbook::collect::{self, CollectConfig, DatabaseConfig, Symbols};
use krakenbook::config::{self, CollectFile};
use krakenbook::feed::FeedConfig;
use krakenbook::journal::JournalConfig;
use krakenbook::kraken::Depth;
use krakenbook::metrics::Metrics;

pub(crate) const COLLECT_HELP: &str = "\
Records every frame of Kraken's v2 book channel for the given symbols: stamped with the local
receive time, checksum-verified, appended to the journal (and, with a database, written to
TimescaleDB). Stops cleanly on Ctrl-C or SIGTERM: the journal is synced before exit.

Settings come from flags, then environment variables (KRAKENBOOK_SYMBOLS, KRAKENBOOK_DEPTH,
KRAKENBOOK_URL, KRAKENBOOK_JOURNAL_DIR, DATABASE_URL, KRAKENBOOK_METRICS_LISTEN), then the
--config TOML file, then defaults. Without a database the journal is the only store (load it
later with `krakenbook import`). Durations and sizes carry their unit: 500ms, 5s, 1h, 30d,
256MiB (a bare number is refused).

Examples:
  krakenbook collect --symbols BTC/USD,ETH/USD --depth 100
  krakenbook collect --all --depth 1000 --journal-dir /var/lib/krakenbook/journal
  krakenbook collect --symbols BTC/USD --database-url postgres://user@localhost/market
  krakenbook collect --symbols BTC/USD --redundancy 2 --url wss://ws.kraken.com/v2,wss://ws.kraken.com/v2
  krakenbook simulate --listen 127.0.0.1:8790 &   # offline: a local Kraken
  krakenbook collect --url ws://127.0.0.1:8790/v2 --symbols BTC/USD,ETH/USD --metrics-listen 127.0.0.1:9187";

/// `krakenbook collect`.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Symbols to record, comma-separated (e.g. BTC/USD,ETH/USD).
    #[arg(
        long,
        env = "KRAKENBOOK_SYMBOLS",
        value_delimiter = ',',
        conflicts_with = "all"
    )]
    pub symbols: Vec<String>,
    /// Record every pair the exchange lists as online.
    #[arg(long)]
    pub all: bool,
    /// Book depth: 10, 25, 100, 500 or 1000 [default: 10].
    #[arg(long, env = "KRAKENBOOK_DEPTH")]
    pub depth: Option<Depth>,
    /// Kraken's WebSocket v2 URL [default: wss://ws.kraken.com/v2]. Repeat it or separate
    /// URLs with commas to name several endpoints: replica k of a group connects to the k-th
    /// (modulo their number).
    #[arg(long, env = "KRAKENBOOK_URL", value_delimiter = ',')]
    pub url: Vec<String>,
    /// Subscribe every symbol group on N connections (1 to 4): separate sockets, staggered
    /// starts, never resubscribing a symbol on two at once. The journal keeps every copy; the
    /// database stores a message once with the connections that received it [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4))]
    pub redundancy: Option<u64>,
    /// With --redundancy: give every connection a book of its own, each copy decoded and
    /// applied again. By default the connections of a group share one book per symbol, and a
    /// copy whose bytes equal the message already applied at its place takes its verdict
    /// without being decoded again (same verdicts; less CPU).
    #[arg(long)]
    pub own_books: bool,
    /// Journal directory [default: ./data/journal].
    #[arg(long, env = "KRAKENBOOK_JOURNAL_DIR")]
    pub journal_dir: Option<PathBuf>,
    #[command(flatten)]
    pub db: super::db::DbArgs,
    /// This collector's name in the database, for a new journal [default: host name + random].
    #[arg(long, env = "KRAKENBOOK_COLLECTOR_ID")]
    pub collector_id: Option<String>,
    /// Chunk interval of new hypertables (e.g. 1d, 6h) [default: 1d].
    #[arg(long, value_name = "DURATION", value_parser = super::migrate::chunk_interval)]
    pub chunk_interval: Option<String>,
    /// Most records per database transaction [default: 10000].
    #[arg(long)]
    pub db_batch_size: Option<usize>,
    /// Longest a record waits for its database batch (e.g. 50ms, 200ms); a fast feed's batches
    /// close sooner, after 50ms [default: 250ms; ten read ticks, up to 1s, with a --read-every
    /// over 25ms].
    #[arg(long, value_name = "DURATION", value_parser = config::duration)]
    pub db_batch_delay: Option<Duration>,
    /// /health answers 503 once the database has been unreachable this long (e.g. 30s, 2m)
    /// [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = config::duration)]
    pub db_unhealthy_after: Option<Duration>,
    /// Serve /metrics and /health here (e.g. 127.0.0.1:9187).
    #[arg(long, env = "KRAKENBOOK_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Settings file (TOML); flags and environment variables win over it.
    #[arg(long, env = "KRAKENBOOK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Symbols per WebSocket connection [default: 100].
    #[arg(long)]
    pub symbols_per_connection: Option<usize>,
    /// With --all, refuse an instrument list naming more pairs than this [default: 2000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_symbols: Option<u64>,
    /// A frame larger than this is not kept: it is recorded as a frame_too_large event and the
    /// connection is reopened (e.g. 16MiB) [default: 16MiB].
    #[arg(long, value_name = "SIZE", value_parser = config::size)]
    pub max_frame_size: Option<u64>,
    /// Journal each symbol's whole verified book after this many verified updates, so that
    /// `krakenbook book --at` never replays more [default: 10000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub book_state_every: Option<u64>,
    /// Read the sockets on a tick this long (one wake-up reads every connection). With arrival
    /// stamps (--receive-stamps) a frame's stamp does not depend on it; stamped on reading, a
    /// frame is at most this long late. 0ms reads each frame on arrival, at the CPU cost of a
    /// wake-up per arrival; over 10ms, a connection receiving 32KiB a tick puts the feed on a
    /// 10ms tick while it does [default: 100ms where the kernel stamps arrivals for the
    /// collector, else 10ms].
    #[arg(long, value_name = "DURATION", value_parser = config::duration)]
    pub read_every: Option<Duration>,
    /// What a frame's receive time is: arrival (when its last byte reached the machine, as the
    /// kernel records it; needs CAP_BPF or root, else stamped on reading, with a warning; the
    /// read tick then defaults to 100ms, since the stamps no longer depend on it) or read (when
    /// the collector read it) [default: arrival].
    #[arg(long, value_enum, value_name = "WHEN")]
    pub receive_stamps: Option<config::ReceiveStamps>,
    /// Sync the journal to disk at least this often: what a power cut can lose [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = config::duration)]
    pub journal_sync_interval: Option<Duration>,
    /// Start a new journal segment at this size [default: 256MiB].
    #[arg(long, value_name = "SIZE", value_parser = config::size)]
    pub journal_segment_size: Option<u64>,
    /// Start a new journal segment at this age [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = config::duration)]
    pub journal_segment_age: Option<Duration>,
    /// Remove closed journal segments older than this (e.g. 30d) [default: keep].
    #[arg(long, value_name = "DURATION", value_parser = config::duration)]
    pub journal_retention: Option<Duration>,
}

/// Resolves flags, environment and settings file into a configuration.
pub fn resolve(args: CollectArgs) -> anyhow::Result<CollectConfig> {
    let file = match &args.config {
        Some(path) => CollectFile::load(path)?,
        None => CollectFile::default(),
    };
    let symbols = if args.all || (args.symbols.is_empty() && file.all == Some(true)) {
        Symbols::All
    } else {
        let list: Vec<String> = if args.symbols.is_empty() {
            file.symbols.clone().unwrap_or_default()
        } else {
            args.symbols.clone()
        };
        let list: Vec<String> = list
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if list.is_empty() {
            bail!("no symbols to record: give --symbols BTC/USD,ETH/USD or --all");
        }
        if let Some(bad) = list.iter().find(|s| !s.contains('/')) {
            bail!("symbol {bad:?} is not a Kraken v2 pair: write it as BASE/QUOTE, e.g. BTC/USD");
        }
        Symbols::List(dedup(list))
    };
    let depth = match (args.depth, file.depth) {
        (Some(d), _) => d,
        (None, Some(d)) => d.to_string().parse::<Depth>()?,
        (None, None) => Depth::default(),
    };
    let url_texts: Vec<String> = if !args.url.is_empty() {
        args.url
            .iter()
            .flat_map(|u| config::split_list(u))
            .collect()
    } else {
        file.url.clone().unwrap_or_default()
    };
    let mut urls = url_texts
        .iter()
        .map(|u| parse_ws_url(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if urls.is_empty() {
        urls.push(parse_ws_url("wss://ws.kraken.com/v2")?);
    }
    let url = urls.remove(0);
    let mut feed = FeedConfig::new(url, depth);
    feed.more_urls = urls;
    if let Some(n) = args.redundancy.map(|n| n as usize).or(file.redundancy) {
        if !(1..=krakenbook::feed::replicas::MAX_REDUNDANCY).contains(&n) {
            bail!("--redundancy {n}: must be from 1 to 4 (connections per symbol group)");
        }
        feed.redundancy = n;
    }
    feed.share_books = !(args.own_books || file.own_books.unwrap_or(false));
    if let Some(n) = args.symbols_per_connection.or(file.symbols_per_connection) {
        if n == 0 {
            bail!("--symbols-per-connection must be at least 1");
        }
        feed.symbols_per_connection = n;
    }
    if let Some(n) = args.book_state_every {
        feed.book_state_every = n;
    }
    if let Some(n) = args.max_symbols.or(file.max_symbols) {
        feed.max_symbols = usize::try_from(n).unwrap_or(usize::MAX);
    }
    let stamps = args
        .receive_stamps
        .or(file.receive_stamps)
        .unwrap_or(config::ReceiveStamps::Arrival);
    feed.arrival_stamps = stamps == config::ReceiveStamps::Arrival;
    // Stamped with their arrival, frames do not wait on the read tick for their stamp: the
    // default tick is then the long one (fewer wake-ups), where the kernel takes the filter.
    if feed.arrival_stamps && krakenbook::feed::arrival_stamps_work().is_ok() {
        feed.read_every = krakenbook::feed::ARRIVAL_READ_EVERY;
    }
    if let Some(d) = args.read_every.or(file.read_every) {
        if d > Duration::from_millis(100) {
            bail!(
                "--read-every {}: must be at most 100ms (a frame is stamped when read; 0ms stamps it on arrival)",
                humantime::format_duration(d)
            );
        }
        feed.read_every = d;
    }
    if let Some(bytes) = args.max_frame_size.or(file.max_frame_size) {
        if !(64 << 10..=1 << 30).contains(&bytes) {
            bail!(
                "--max-frame-size {bytes}B: must be between 64KiB and 1GiB (a depth-1000 snapshot is about 60KB; the instrument list about 1MB)"
            );
        }
        feed.max_frame_bytes = bytes as usize;
    }
    let dir = args
        .journal_dir
        .or(file.journal_dir)
        .unwrap_or_else(|| PathBuf::from("data/journal"));
    let mut journal = JournalConfig::new(dir);
    if let Some(d) = args.journal_sync_interval.or(file.journal_sync_interval) {
        journal.sync_interval = d;
    }
    if let Some(bytes) = args.journal_segment_size.or(file.journal_segment_size) {
        journal.segment_bytes = bytes;
    }
    if let Some(d) = args.journal_segment_age.or(file.journal_segment_age) {
        journal.segment_age = d;
    }
    if let Some(d) = args.journal_retention.or(file.journal_retention) {
        journal.retention = Some(d);
    }
    journal.validate()?;
    let metrics_listen = match args.metrics_listen.or(file.metrics_listen) {
        Some(a) => Some(
            a.parse::<SocketAddr>()
                .map_err(|_| anyhow::anyhow!("--metrics-listen {a:?} is not an address: write it as HOST:PORT, e.g. 127.0.0.1:9187"))?,
        ),
        None => None,
    };
    let mut batch = krakenbook::store::BatchConfig {
        // A fast feed's batches close 50 ms after their first record (receive-to-commit stays
        // well under 250 ms at p99 at 10,000 messages per second); a slow feed's wait up to
        // 250 ms (longer with a longer read tick) to carry more records per commit (see the
        // README's benchmarks).
        max_delay: default_batch_delay(feed.read_every),
        min_delay: std::time::Duration::from_millis(50),
        fill: default_batch_fill(feed.read_every),
        ..krakenbook::store::BatchConfig::default()
    };
    if let Some(n) = args.db_batch_size {
        batch.max_records = n.max(1);
    }
    if let Some(d) = args.db_batch_delay.or(file.db_batch_delay) {
        batch.max_delay = d;
    }
    let unhealthy_after = args
        .db_unhealthy_after
        .or(file.db_unhealthy_after)
        .unwrap_or(Duration::from_secs(30));
    let database = args
        .db
        .given()
        .or(file.database_url)
        .filter(|u| !u.trim().is_empty())
        .map(|url| DatabaseConfig {
            url,
            batch,
            chunk_interval: args.chunk_interval.clone(),
            unhealthy_after,
        });
    if let Some(db) = &database {
        krakenbook::store::DbTarget::parse(&db.url)
            .map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
    }
    Ok(CollectConfig {
        database,
        collector_id: args.collector_id.or(file.collector_id),
        feed,
        symbols,
        journal,
        journal_queue: 16_384,
        metrics_listen,
        shutdown_grace: std::time::Duration::from_secs(7),
    })
}

fn dedup(list: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    list.into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// Parses a WebSocket URL, with a one-line error that says what to write instead.
pub fn parse_ws_url(text: &str) -> anyhow::Result<url::Url> {
    let url = url::Url::parse(text).map_err(|e| {
        anyhow::anyhow!("--url {text:?} is not a URL ({e}): write it as wss://ws.kraken.com/v2")
    })?;
    if !matches!(url.scheme(), "ws" | "wss") {
        bail!("--url {text:?} must start with ws:// or wss://, e.g. wss://ws.kraken.com/v2");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("--url {text:?} has no host: write it as wss://ws.kraken.com/v2");
    }
    Ok(url)
}

/// Runs `krakenbook collect` until Ctrl-C or SIGTERM.
pub async fn run(args: CollectArgs) -> anyhow::Result<ExitCode> {
    let config = resolve(args)?;
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;
    let metrics = Arc::new(Metrics::default());
    let summary = collect::run(config, cancel, metrics).await?;
    match summary.database_seq {
        Some(db) => eprintln!(
            "collect: stopped cleanly: {} frames received, journal synced through seq {}, database through seq {db}",
            summary.frames, summary.journal_seq
        ),
        None => eprintln!(
            "collect: stopped cleanly: {} frames received, journal synced through seq {}",
            summary.frames, summary.journal_seq
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Cancels `cancel` on Ctrl-C (SIGINT) or SIGTERM.
pub fn spawn_signal_handler(cancel: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        cancel.cancel();
    });
    Ok(())
}

/// The longest a record waits for its database batch unless `--db-batch-delay` says: 250 ms, or
/// ten read ticks (at most 1 s) for a feed reading less often than every 25 ms. Who reads every
/// 100 ms has traded receive-time precision for CPU; at a few hundred messages a second each
/// batch costs the collector about ten thread wake-ups (the journal's sync, the round trips), so
/// a batch a second instead of four is most of what is left to save (see the README's "CPU per
/// message at a few hundred messages a second").
pub fn default_batch_delay(read_every: Duration) -> Duration {
    read_every
        .saturating_mul(10)
        .clamp(Duration::from_millis(250), Duration::from_secs(1))
}

/// Records a batch should carry ([`krakenbook::store::BatchConfig::fill`]): 256 a quarter of a
/// second, scaled with [`default_batch_delay`] (1,024 with `--read-every 100ms`), so that a slow
/// feed read every 100 ms commits once a second rather than every 256 records (about 1.3 times a
/// second at 300 messages a second).
pub fn default_batch_fill(read_every: Duration) -> usize {
    let quarters = default_batch_delay(read_every).as_millis() / 250;
    256 * usize::try_from(quarters.max(1)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: CollectArgs,
    }

    fn resolve_args(argv: &[&str]) -> anyhow::Result<CollectConfig> {
        let mut full = vec!["collect"];
        full.extend_from_slice(argv);
        resolve(Wrap::try_parse_from(full)?.args)
    }

    #[test]
    fn flags_win_over_the_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(
            &path,
            "symbols = [\"ETH/USD\"]\ndepth = 25\njournal_sync_interval = \"250ms\"\nreceive_stamps = \"read\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = resolve_args(&["--config", p]).unwrap();
        assert!(!c.feed.arrival_stamps);
        assert!(
            resolve_args(&["--config", p, "--receive-stamps", "arrival"])
                .unwrap()
                .feed
                .arrival_stamps
        );
        assert_eq!(c.symbols, Symbols::List(vec!["ETH/USD".into()]));
        assert_eq!(c.feed.depth.get(), 25);
        assert_eq!(
            c.journal.sync_interval,
            std::time::Duration::from_millis(250)
        );
        let c = resolve_args(&[
            "--config",
            p,
            "--symbols",
            "BTC/USD,BTC/USD,XRP/EUR",
            "--depth",
            "1000",
        ])
        .unwrap();
        assert_eq!(
            c.symbols,
            Symbols::List(vec!["BTC/USD".into(), "XRP/EUR".into()])
        );
        assert_eq!(c.feed.depth.get(), 1000);
        // A regression: this flag was once parsed and then ignored.
        let c = resolve_args(&[
            "--symbols",
            "BTC/USD",
            "--book-state-every",
            "40",
            "--db-batch-delay",
            "20ms",
        ])
        .unwrap();
        assert_eq!(c.feed.book_state_every, 40);
        // Stamped with their arrival (where the kernel records it: root here), frames are read
        // on the long tick; stamped on reading, on the short one.
        let arrival = krakenbook::feed::arrival_stamps_work().is_ok();
        let expected = if arrival {
            krakenbook::feed::ARRIVAL_READ_EVERY
        } else {
            krakenbook::feed::DEFAULT_READ_EVERY
        };
        assert_eq!(c.feed.read_every, expected);
        assert!(c.feed.arrival_stamps);
        let c = resolve_args(&["--symbols", "BTC/USD", "--receive-stamps", "read"]).unwrap();
        assert_eq!(c.feed.read_every, krakenbook::feed::DEFAULT_READ_EVERY);
        assert!(!c.feed.arrival_stamps);
        let e = resolve_args(&["--symbols", "BTC/USD", "--receive-stamps", "kernel"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("arrival") && e.contains("read"), "{e}");
        let c = resolve_args(&["--symbols", "BTC/USD", "--read-every", "0ms"]).unwrap();
        assert_eq!(c.feed.read_every, Duration::ZERO);
        let e = resolve_args(&["--symbols", "BTC/USD", "--read-every", "1s"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--read-every 1s: must be at most 100ms"), "{e}");
        let c =
            resolve_args(&["--all", "--max-symbols", "3000", "--max-frame-size", "4MiB"]).unwrap();
        assert_eq!(c.feed.max_symbols, 3000);
        assert_eq!(c.feed.max_frame_bytes, 4 << 20);
        let c = resolve_args(&[
            "--symbols",
            "BTC/USD",
            "--database-url",
            "postgres://x@localhost/db",
            "--db-batch-delay",
            "20ms",
        ])
        .unwrap();
        assert_eq!(
            c.database.unwrap().batch.max_delay,
            std::time::Duration::from_millis(20)
        );
    }

    /// The batch delay follows the read tick unless given: 250 ms up to a 25 ms tick, ten ticks
    /// up to 1 s; `--db-batch-delay` (or the file's) wins at any tick.
    #[test]
    fn the_batch_delay_follows_the_read_tick_unless_given() {
        let ms = Duration::from_millis;
        for (tick, delay, fill) in [
            (0, 250, 256),
            (10, 250, 256),
            (25, 250, 256),
            (30, 300, 256),
            (50, 500, 512),
            (100, 1000, 1024),
        ] {
            assert_eq!(default_batch_delay(ms(tick)), ms(delay), "tick {tick} ms");
            assert_eq!(default_batch_fill(ms(tick)), fill, "tick {tick} ms");
            let mut a = vec!["--symbols", "BTC/USD", "--database-url", "postgres://x@h/d"];
            let every = format!("{tick}ms");
            a.extend_from_slice(&["--read-every", &every]);
            let batch = resolve_args(&a).unwrap().database.unwrap().batch;
            assert_eq!(
                (batch.max_delay, batch.fill),
                (ms(delay), fill),
                "tick {tick} ms"
            );
        }
        let url = "postgres://x@localhost/db";
        let delay = |extra: &[&str]| {
            let mut a = vec!["--symbols", "BTC/USD", "--database-url", url];
            a.extend_from_slice(extra);
            resolve_args(&a).unwrap().database.unwrap().batch.max_delay
        };
        // The default tick is the long one where frames are stamped with their arrival.
        let arrival = krakenbook::feed::arrival_stamps_work().is_ok();
        assert_eq!(delay(&[]), ms(if arrival { 1000 } else { 250 }));
        assert_eq!(delay(&["--receive-stamps", "read"]), ms(250));
        assert_eq!(delay(&["--read-every", "10ms"]), ms(250));
        assert_eq!(delay(&["--read-every", "100ms"]), ms(1000));
        assert_eq!(delay(&["--read-every", "0ms"]), ms(250));
        assert_eq!(
            delay(&["--read-every", "100ms", "--db-batch-delay", "100ms"]),
            ms(100)
        );
    }

    #[test]
    fn redundancy_and_several_urls_reach_the_feed_configuration() {
        let c = resolve_args(&["--symbols", "BTC/USD"]).unwrap();
        assert_eq!(c.feed.redundancy, 1, "one connection per group by default");
        assert_eq!(c.feed.endpoints().len(), 1);
        let c = resolve_args(&[
            "--symbols",
            "BTC/USD",
            "--redundancy",
            "3",
            "--url",
            "ws://a:1/v2,ws://b:2/v2",
            "--url",
            "ws://c:3/v2",
        ])
        .unwrap();
        assert_eq!(c.feed.redundancy, 3);
        assert!(c.feed.share_books, "the replicas share books by default");
        let hosts: Vec<String> = (0..4)
            .map(|k| c.feed.for_replica(k).url.host_str().unwrap().to_owned())
            .collect();
        assert_eq!(hosts, ["a", "b", "c", "a"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(
            &path,
            "symbols = [\"BTC/USD\"]\nredundancy = 2\nurl = [\"ws://a:1/v2\", \"ws://b:2/v2\"]\n",
        )
        .unwrap();
        let c = resolve_args(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.feed.redundancy, 2);
        assert_eq!(c.feed.for_replica(1).url.as_str(), "ws://b:2/v2");
        let own = resolve_args(&["--config", path.to_str().unwrap(), "--own-books"]).unwrap();
        assert!(!own.feed.share_books, "--own-books");
        // A flag wins over the file, the whole list at once.
        let c =
            resolve_args(&["--config", path.to_str().unwrap(), "--url", "ws://z:9/v2"]).unwrap();
        assert_eq!(c.feed.endpoints().len(), 1);
        assert_eq!(c.feed.for_replica(1).url.host_str(), Some("z"));
        std::fs::write(&path, "symbols = [\"BTC/USD\"]\nredundancy = 9\n").unwrap();
        let err = format!(
            "{:#}",
            resolve_args(&["--config", path.to_str().unwrap()]).unwrap_err()
        );
        assert!(err.contains("--redundancy 9: must be from 1 to 4"), "{err}");
        assert!(Wrap::try_parse_from(["collect", "--redundancy", "5"]).is_err());
    }

    #[test]
    fn bad_settings_get_one_line_errors_that_say_what_to_do() {
        for (argv, needle) in [
            (vec!["--symbols", "BTCUSD"], "BASE/QUOTE"),
            (
                vec!["--symbols", "BTC/USD", "--url", "http://x"],
                "ws:// or wss://",
            ),
            (
                vec!["--symbols", "BTC/USD", "--url", "not a url"],
                "wss://ws.kraken.com/v2",
            ),
            (
                vec!["--symbols", "BTC/USD", "--url", "ws://a/v2,http://b"],
                "ws:// or wss://",
            ),
            (
                vec!["--symbols", "BTC/USD", "--metrics-listen", "9187"],
                "HOST:PORT",
            ),
            (vec![], "--symbols"),
            (
                vec!["--symbols", "BTC/USD", "--journal-sync-interval", "0s"],
                "at least 1ms",
            ),
            (
                vec!["--symbols", "BTC/USD", "--journal-segment-size", "0B"],
                "at least 1MiB",
            ),
            (
                vec!["--symbols", "BTC/USD", "--journal-segment-age", "0s"],
                "at least 1s",
            ),
            (
                vec!["--symbols", "BTC/USD", "--max-frame-size", "1KiB"],
                "between 64KiB and 1GiB",
            ),
        ] {
            let err = format!("{:#}", resolve_args(&argv).unwrap_err());
            assert!(err.contains(needle), "{argv:?}: {err}");
            assert!(!err.contains('\n'), "{argv:?}: one line: {err}");
        }
    }

    #[test]
    fn durations_and_sizes_without_a_unit_are_refused_with_the_unit_to_add() {
        // (flag, value, what the message says)
        let cases = [
            (
                "--journal-sync-interval",
                "5",
                "add a unit, e.g. `5s` or `5ms`",
            ),
            ("--journal-segment-age", "3600", "add a unit, e.g. `3600s`"),
            ("--journal-retention", "30", "add a unit, e.g. `30s`"),
            ("--db-batch-delay", "50", "add a unit, e.g. `50s` or `50ms`"),
            ("--db-unhealthy-after", "30", "add a unit, e.g. `30s`"),
            (
                "--journal-segment-size",
                "268435456",
                "add a unit, e.g. `268435456MiB` or `268435456B`",
            ),
            ("--max-frame-size", "16", "add a unit, e.g. `16MiB`"),
            ("--chunk-interval", "6", "add a unit, e.g. `6s`"),
            ("--journal-sync-interval", "often", "e.g. 500ms, 5s"),
        ];
        for (flag, value, message) in cases {
            let err = Wrap::try_parse_from(["collect", "--symbols", "BTC/USD", flag, value])
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} was accepted"));
            let first = err.to_string();
            let first = first.lines().next().unwrap_or_default();
            assert!(first.contains(message), "{flag} {value}: {first}");
            assert!(
                first.contains(flag),
                "{flag} {value}: names the flag: {first}"
            );
        }
    }

    #[test]
    fn durations_and_sizes_with_their_unit_reach_the_configuration() {
        let c = resolve_args(&[
            "--symbols",
            "BTC/USD",
            "--journal-sync-interval",
            "500ms",
            "--journal-segment-size",
            "64MiB",
            "--journal-segment-age",
            "10m",
            "--journal-retention",
            "7d",
            "--max-frame-size",
            "1MiB",
            "--database-url",
            "postgres://x@localhost/db",
            "--db-unhealthy-after",
            "2m",
            "--chunk-interval",
            "6h",
        ])
        .unwrap();
        assert_eq!(c.journal.sync_interval, Duration::from_millis(500));
        assert_eq!(c.journal.segment_bytes, 64 << 20);
        assert_eq!(c.journal.segment_age, Duration::from_secs(600));
        assert_eq!(c.journal.retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(c.feed.max_frame_bytes, 1 << 20);
        let db = c.database.unwrap();
        assert_eq!(db.unhealthy_after, Duration::from_secs(120));
        assert_eq!(
            db.chunk_interval.as_deref(),
            Some("21600000000 microseconds")
        );
    }
}
