//! `krakenbook-bench collect`: what the collector costs while it records, and how long a frame
//! takes to reach the database.
//!
//! Starts the simulator in-process and `krakenbook collect` as a child process subscribed to
//! every simulated pair (journal, and a throwaway TimescaleDB unless `--journal-only` or
//! `--database-url`). After the snapshots and a warm-up it measures, over `--measure`, the
//! collector's CPU time (user + system, as a share of one core and per book message), its peak
//! resident memory, the frames it received per second, and the receive-to-commit latency
//! histogram its `/metrics` exposes (p50, p99).
//!
//! CPU time comes from each thread's `/proc/PID/task/TID/schedstat` (nanoseconds on a CPU), so
//! that a light load (`--pairs 2`: a few hundred messages a second, well under 1% of a core) is
//! measured to the microsecond per message rather than in 10 ms ticks; it is split by thread
//! name (feed, journal, db, runtime workers) to show where it goes. The process's
//! tick count (`/proc/PID/stat`) is printed beside it as a cross-check: it also counts threads
//! that ended during the window, which the per-thread sum cannot see.
//!
//! `--compare-redundancy A,B` runs two collectors side by side instead (see `pair`): on this
//! shared machine a single run's CPU moves by up to 1.7× with the neighbours' load, so a cost
//! ratio is only shown by collectors measured over the same window.

mod ccxt;
mod pair;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use krakenbook::exchange::sim::generated_pairs;
use krakenbook::exchange::{SimConfig, Simulator};
use krakenbook::kraken::Depth;
use krakenbook::metrics::histogram_quantile;
use krakenbook_testkit::{ClusterOptions, TempCluster};

pub(crate) const BENCH_COLLECT_EXAMPLES: &str = "\
Run it with a release build (cargo run --release -- bench collect ...). The offered load is
--pairs x --rate book events per second; at depth 1000 nearly every event is a message.

Examples:
  krakenbook-bench collect --pairs 1000 --depth 1000 --rate 2                  a whole market into TimescaleDB
  krakenbook-bench collect --pairs 2 --depth 1000 --rate 150 --measure 60s     CPU per message at ~300 msg/s
  krakenbook-bench collect --pairs 100 --depth 1000 --rate 100                 ~10,000 msg/s into TimescaleDB
  krakenbook-bench collect --database-url postgres://kb@localhost/market       an existing server
  krakenbook-bench collect --redundancy 2                                      two connections per group
  krakenbook-bench collect --compare-redundancy 1,2 --rounds 5                 N = 2 against N = 1, side by side";

/// `krakenbook-bench collect`.
#[derive(Debug, Args)]
pub struct BenchCollectArgs {
    /// Simulated pairs (the collector records all of them).
    #[arg(long, value_name = "N", default_value = "100", value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub pairs: u32,
    /// Book events per second per pair.
    #[arg(long, value_name = "EVENTS", default_value = "100")]
    pub rate: f64,
    /// Book depth: 10, 25, 100, 500 or 1000.
    #[arg(long, default_value = "1000")]
    pub depth: Depth,
    /// How long to measure, after the warm-up (1s to 1h).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = bench_period)]
    pub measure: Duration,
    /// How long to wait after starting before measuring (snapshots, connections, caches).
    #[arg(long, value_name = "DURATION", default_value = "8s", value_parser = krakenbook::config::duration)]
    pub warmup: Duration,
    /// Record to the journal only (no database; no latency figure).
    #[arg(long, conflicts_with = "database_url")]
    pub journal_only: bool,
    /// Write to this database instead of a throwaway local cluster.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// The collector's `--db-batch-delay` (its default when not given: 50ms): with few
    /// messages a second, the database's commits (one per batch, each with a journal sync)
    /// are most of the collector's CPU.
    #[arg(long, value_name = "DURATION", value_parser = krakenbook::config::duration)]
    pub db_batch_delay: Option<Duration>,
    /// The collector's `--redundancy`: connections per symbol group (1 to 4). Frames per
    /// second then count every replica's copy.
    #[arg(long, value_name = "N", default_value = "1", value_parser = clap::value_parser!(u32).range(1..=4))]
    pub redundancy: u32,
    /// The collector's `--read-every`: how often its feed reads the sockets (its default when
    /// not given: 100ms where the kernel stamps arrivals for it, else 10ms; 0ms reads each frame
    /// on arrival).
    #[arg(long, value_name = "DURATION", value_parser = krakenbook::config::duration)]
    pub read_every: Option<Duration>,
    /// The collector's `--own-books`: with redundancy, every connection keeps books of its own
    /// instead of sharing one per symbol with its group (the cost before the books were shared).
    #[arg(long)]
    pub own_books: bool,
    /// Two collectors at once, one at each of these `--redundancy` values (say 1,2), against the
    /// same simulated market, each with its own journal and its own database in the throwaway
    /// cluster (journal only with --journal-only), measured over the same window: prints each
    /// one's figures and the second's CPU over the first's (issue 12: at most 1.6 at 1,2).
    #[arg(long, value_name = "A,B", value_parser = pair::redundancy_pair, conflicts_with_all = ["redundancy", "database_url"])]
    pub compare_redundancy: Option<pair::RedundancyPair>,
    /// With --compare-redundancy: pairs of fresh collectors measured one after the other (which
    /// one starts first swaps every round); prints every round's ratio, their median, min and max.
    #[arg(long, value_name = "K", default_value = "1", requires = "compare_redundancy", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// ccxt (the original tool's engine) on the same feed at the same depth, run with this
    /// Python interpreter (one with ccxt installed: `python3 -m venv V && V/bin/pip install
    /// ccxt==4.5.90`) and measured over the same window: its CPU per book message against the
    /// collector's.
    #[arg(long, value_name = "PYTHON", conflicts_with = "compare_redundancy")]
    pub beside_ccxt: Option<std::path::PathBuf>,
}

/// A measuring period or a warm-up: a duration with its unit, from 1 s to 1 h.
pub(crate) fn bench_period(text: &str) -> Result<Duration, String> {
    let d = krakenbook::config::duration(text)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("{text:?}: give 1s to 1h"));
    }
    Ok(d)
}

/// Runs `krakenbook-bench collect`.
pub async fn run(args: BenchCollectArgs) -> anyhow::Result<ExitCode> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of events per second");
    }
    if args.beside_ccxt.is_some() && args.redundancy > 1 {
        bail!(
            "--beside-ccxt compares one copy of each message: drop --redundancy (the collector's figure would count every replica's copy)"
        );
    }
    if let Some(pair) = args.compare_redundancy {
        return pair::run(&args, pair).await;
    }
    let work = tempfile::tempdir().context("creating a scratch directory")?;
    let (cluster, db_url) = match (&args.database_url, args.journal_only) {
        (Some(url), _) => (None, Some(url.clone())),
        (None, true) => (None, None),
        (None, false) => {
            let cluster = throwaway_cluster().await?;
            let url = cluster.create_database().await?;
            (Some(cluster), Some(url))
        }
    };

    let market = Market::start(&args).await?;
    let collector = Collector::spawn(
        &args,
        &market,
        args.redundancy,
        &work.path().join("journal"),
        db_url.as_deref(),
    )
    .await?;
    eprintln!(
        "bench collect: {} pairs at depth {} on {} connection(s) per group, {} events/s offered ({} per pair), warm-up {:?}, measuring {:?}{}",
        args.pairs,
        args.depth,
        args.redundancy,
        args.pairs as f64 * args.rate,
        args.rate,
        args.warmup,
        args.measure,
        if db_url.is_some() {
            ", into TimescaleDB"
        } else {
            ", journal only"
        }
    );
    let mut beside = match &args.beside_ccxt {
        Some(python) => Some(ccxt::Ccxt::spawn(python, &market, args.depth, work.path())?),
        None => None,
    };
    if let Some(c) = beside.as_mut() {
        // ccxt missing: say so now, not after the warm-up.
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.check_running()?;
    }
    tokio::time::sleep(args.warmup).await;
    if let Some(waited) = collector.wait_caught_up().await? {
        eprintln!(
            "bench collect: the database caught up with the startup snapshots {:.1} s after the warm-up",
            waited.as_secs_f64()
        );
    }
    let start = collector.reading().await?;
    let ccxt_start = beside.as_mut().map(|c| c.reading()).transpose()?;
    tokio::time::sleep(args.measure).await;
    let end = collector.reading().await?;
    let ccxt_end = beside.as_mut().map(|c| c.reading()).transpose()?;
    let ccxt_rss = beside.as_ref().map(|c| c.peak_rss()).transpose()?;
    let peak_rss = peak_rss_bytes(collector.pid)?;

    let stopped = collector.stop().await;
    if let Some(c) = beside {
        c.stop().await;
    }
    market.sim.shutdown().await?;
    drop(cluster);

    let window = Window::between(&start, &end, peak_rss);
    window.print(db_url.is_some());
    if let (Some(a), Some(b), Some(rss)) = (ccxt_start, ccxt_end, ccxt_rss) {
        ccxt::print(&a, &b, rss, window.micros_per_message(), window.ok);
    }
    stopped?;
    Ok(if window.mismatches == 0.0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A throwaway local TimescaleDB cluster, fsync on (a collector's commits cost what they cost).
async fn throwaway_cluster() -> anyhow::Result<TempCluster> {
    Ok(tokio::task::spawn_blocking(|| {
        TempCluster::with_options(ClusterOptions {
            durable: true,
            bindir: None,
        })
    })
    .await??)
}

/// The simulated market every collector of a run subscribes to: one simulator, one market.
struct Market {
    sim: Simulator,
    symbols: Vec<String>,
}

impl Market {
    async fn start(args: &BenchCollectArgs) -> anyhow::Result<Market> {
        let pairs = generated_pairs(args.pairs as usize);
        let symbols: Vec<String> = pairs.iter().map(|p| p.symbol.clone()).collect();
        let sim = Simulator::bind(SimConfig {
            pairs,
            rate: args.rate,
            ..SimConfig::default()
        })
        .await?;
        Ok(Market { sim, symbols })
    }
}

/// One `krakenbook collect` child process recording the market, with its `/metrics` address.
struct Collector {
    child: tokio::process::Child,
    pid: u32,
    metrics_addr: SocketAddr,
    has_db: bool,
}

impl Collector {
    /// Starts `krakenbook collect` at `redundancy` with its journal in `journal_dir` and, when
    /// given, its database at `db_url` (journal only otherwise).
    async fn spawn(
        args: &BenchCollectArgs,
        market: &Market,
        redundancy: u32,
        journal_dir: &Path,
        db_url: Option<&str>,
    ) -> anyhow::Result<Collector> {
        let metrics_addr: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?
        };
        let exe = krakenbook_binary()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args([
            "collect",
            "--url",
            &format!("ws://{}/v2", market.sim.local_addr()),
        ])
        .args(["--symbols", &market.symbols.join(",")])
        .args(["--depth", &args.depth.to_string()])
        .args(["--redundancy", &redundancy.to_string()])
        .args(["--metrics-listen", &metrics_addr.to_string()])
        .arg("--journal-dir")
        .arg(journal_dir)
        .env_remove("DATABASE_URL")
        .env("KRAKENBOOK_LOG", "warn")
        .envs(
            std::env::var("BENCH_WORKERS")
                .ok()
                .map(|w| ("TOKIO_WORKER_THREADS", w)),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
        if let Some(url) = db_url {
            cmd.args(["--database-url", url]);
        }
        if let Some(delay) = args.db_batch_delay {
            cmd.arg("--db-batch-delay")
                .arg(format!("{}ms", delay.as_millis()));
        }
        if let Some(every) = args.read_every {
            cmd.arg("--read-every")
                .arg(format!("{}ms", every.as_millis()));
        }
        if args.own_books {
            cmd.arg("--own-books");
        }
        let child = cmd.spawn().context("starting krakenbook collect")?;
        let pid = child.id().context("the collector's pid")?;
        Ok(Collector {
            child,
            pid,
            metrics_addr,
            has_db: db_url.is_some(),
        })
    }

    /// With a database: waits until it has caught up with the journal (the subscriptions'
    /// snapshots, 2,000 levels each at depth 1000, arrive in a burst; the steady state is what is
    /// measured) and returns how long that took. Journal only: `None` at once.
    async fn wait_caught_up(&self) -> anyhow::Result<Option<Duration>> {
        if !self.has_db {
            return Ok(None);
        }
        let waiting = Instant::now();
        loop {
            let lag = counter(
                &scrape(self.metrics_addr).await?,
                "krakenbook_db_lag_records",
            );
            if lag < 1000.0 {
                return Ok(Some(waiting.elapsed()));
            }
            if waiting.elapsed() > Duration::from_secs(300) {
                bail!(
                    "the database did not catch up with the journal within 5 minutes ({lag} records behind)"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The collector's counters and CPU now.
    async fn reading(&self) -> anyhow::Result<Reading> {
        let ticks = cpu_seconds(self.pid)?;
        let threads = thread_cpu(self.pid)?;
        let metrics = scrape(self.metrics_addr).await?;
        Ok(Reading {
            at: Instant::now(),
            ticks,
            threads,
            metrics,
        })
    }

    /// Stops it as an operator would (SIGTERM) and waits up to 15 s for a clean exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(id) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &id.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => bail!("the collector exited with {s}"),
            _ => bail!("the collector did not exit after SIGTERM"),
        }
    }
}

/// One collector at one instant: its CPU (process ticks and per thread) and its `/metrics`.
struct Reading {
    at: Instant,
    ticks: f64,
    threads: Vec<ThreadReading>,
    metrics: String,
}

/// What one collector did between two readings.
#[derive(Debug, Clone, PartialEq)]
struct Window {
    /// Wall seconds between the readings.
    wall: f64,
    /// Frames received (every connection's copy).
    frames: f64,
    /// Book messages whose checksum matched (every connection's copy).
    ok: f64,
    /// Checksum mismatches since the collector started.
    mismatches: f64,
    /// Bytes appended to the journal.
    journal_bytes: f64,
    /// Journal segments closed (each then compressed with zstd on the `journal-compress`
    /// thread: a lump of CPU that a short window catches or misses).
    rotations: f64,
    /// CPU seconds per thread name, most first.
    split: Vec<ThreadUse>,
    /// CPU seconds from the process's ticks (also counts threads that ended in the window).
    ticks_cpu: f64,
    peak_rss: u64,
    /// Receive-to-commit latency and batch duration histograms over the window.
    latency: Vec<(f64, u64)>,
    batches: Vec<(f64, u64)>,
}

impl Window {
    fn between(start: &Reading, end: &Reading, peak_rss: u64) -> Window {
        let delta = |name| counter(&end.metrics, name) - counter(&start.metrics, name);
        let sum_delta = |name| sum_counter(&end.metrics, name) - sum_counter(&start.metrics, name);
        Window {
            wall: end.at.duration_since(start.at).as_secs_f64(),
            frames: delta("krakenbook_frames_received_total"),
            ok: sum_delta("krakenbook_checksum_ok_total"),
            mismatches: sum_counter(&end.metrics, "krakenbook_checksum_mismatch_total"),
            journal_bytes: delta("krakenbook_journal_bytes_total"),
            rotations: delta("krakenbook_journal_rotations_total"),
            split: thread_split(&start.threads, &end.threads),
            ticks_cpu: end.ticks - start.ticks,
            peak_rss,
            latency: histogram_delta(
                &start.metrics,
                &end.metrics,
                "krakenbook_db_commit_latency_seconds",
            ),
            batches: histogram_delta(&start.metrics, &end.metrics, "krakenbook_db_batch_seconds"),
        }
    }

    /// CPU seconds of every live thread over the window.
    fn cpu(&self) -> f64 {
        self.split.iter().map(|u| u.cpu).sum()
    }

    /// CPU seconds of the threads of one part of the collector.
    fn part_cpu(&self, part: Part) -> f64 {
        self.split
            .iter()
            .filter(|u| Part::of(&u.name) == part)
            .map(|u| u.cpu)
            .sum()
    }

    /// Share of one core.
    fn core_share(&self) -> f64 {
        self.cpu() / self.wall
    }

    /// CPU microseconds per verified book message.
    fn micros_per_message(&self) -> f64 {
        1e6 * self.cpu() / self.ok.max(1.0)
    }

    fn print(&self, has_db: bool) {
        let wall = self.wall;
        let ok = self.ok;
        let cpu = self.cpu();
        let wakeups: u64 = self.split.iter().map(|u| u.wakeups).sum();
        println!(
            "collector frames received:   {:.0} /s ({:.0} verified book messages/s)",
            self.frames / wall,
            ok / wall
        );
        println!(
            "collector CPU:               {:.2}% of one core ({:.1} µs per book message, {:.1} µs per frame)",
            100.0 * cpu / wall,
            1e6 * cpu / ok.max(1.0),
            1e6 * cpu / self.frames.max(1.0)
        );
        println!(
            "collector wake-ups:          {:.0} /s ({:.2} per book message)",
            wakeups as f64 / wall,
            wakeups as f64 / ok.max(1.0)
        );
        for used in &self.split {
            println!(
                "  {:<26} {:>6.2}% of a core {:>7.1} µs/msg {:>7.0} wake-ups/s",
                used.name,
                100.0 * used.cpu / wall,
                1e6 * used.cpu / ok.max(1.0),
                used.wakeups as f64 / wall
            );
        }
        println!(
            "  cross-check (/proc/PID/stat ticks, with threads that ended): {:.2}% of one core",
            100.0 * self.ticks_cpu / wall
        );
        println!(
            "collector peak RSS:          {:.1} MB",
            self.peak_rss as f64 / 1e6
        );
        println!("checksum mismatches:         {}", self.mismatches);
        if has_db {
            for (label, buckets) in [
                ("receive → committed latency", &self.latency),
                ("database batch duration    ", &self.batches),
            ] {
                match (
                    histogram_quantile(0.5, buckets),
                    histogram_quantile(0.99, buckets),
                ) {
                    (Some(p50), Some(p99)) => {
                        println!("{label}: p50 {:.1} ms, p99 {:.1} ms", p50 * 1e3, p99 * 1e3)
                    }
                    _ => println!("{label}: no commits during the window"),
                }
            }
        }
    }
}

/// The parts of the collector its threads belong to, by thread name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// `feed` and its blocking pool: sockets, decoding, books, checksums.
    Feed,
    /// `journal` and `journal-compress`: appends, syncs, compression.
    Journal,
    /// `db` and its blocking pool: the database pipeline (reads the journal, writes rows).
    Db,
    /// The main runtime's workers and anything else (metrics, supervision).
    Other,
}

impl Part {
    const ALL: [Part; 4] = [Part::Feed, Part::Journal, Part::Db, Part::Other];

    fn of(thread: &str) -> Part {
        let family = thread.split('-').next().unwrap_or(thread);
        match family {
            "feed" => Part::Feed,
            "journal" => Part::Journal,
            "db" => Part::Db,
            _ => Part::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Part::Feed => "feed",
            Part::Journal => "journal",
            Part::Db => "db",
            Part::Other => "other",
        }
    }
}

/// User + system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context("reading /proc/PID/stat (Linux only)")?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    Ok((ticks(11) + ticks(12)) / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One thread of the collector at one instant.
#[derive(Debug, Clone, PartialEq)]
struct ThreadReading {
    tid: u32,
    name: String,
    /// CPU seconds so far.
    cpu: f64,
    /// Times it went to sleep waiting for something (voluntary context switches): its wake-ups.
    wakeups: u64,
}

/// What one thread name used over a window: CPU seconds and wake-ups.
#[derive(Debug, Clone, PartialEq)]
struct ThreadUse {
    name: String,
    cpu: f64,
    wakeups: u64,
}

/// Each live thread of a process: its id, its name, its CPU seconds so far (from
/// `/proc/PID/task/TID/schedstat`, nanosecond resolution) and its wake-ups.
fn thread_cpu(pid: u32) -> anyhow::Result<Vec<ThreadReading>> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .context("reading /proc/PID/task (Linux only)")?;
    for task in tasks {
        let task = task?;
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the reads: skip it.
        let (Ok(name), Ok(stat), Ok(status)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("schedstat")),
            std::fs::read_to_string(task.path().join("status")),
        ) else {
            continue;
        };
        // Unreadable: skipped like a thread that ended, never counted as zero CPU.
        let Some(ns) = run_time_ns(&stat) else {
            continue;
        };
        let wakeups = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push(ThreadReading {
            tid,
            name: name.trim().to_owned(),
            cpu: ns as f64 / 1e9,
            wakeups,
        });
    }
    Ok(out)
}

/// A thread's run time in nanoseconds: the first field of its `schedstat`.
pub(crate) fn run_time_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// What each thread name used between two readings of [`thread_cpu`], most CPU first. A thread
/// that started in between counts from zero; one that ended in between is not seen.
fn thread_split(start: &[ThreadReading], end: &[ThreadReading]) -> Vec<ThreadUse> {
    let mut by_name: Vec<ThreadUse> = Vec::new();
    for now in end {
        let before = start
            .iter()
            .find(|s| s.tid == now.tid && s.name == now.name);
        let cpu = (now.cpu - before.map_or(0.0, |b| b.cpu)).max(0.0);
        let wakeups = now.wakeups.saturating_sub(before.map_or(0, |b| b.wakeups));
        match by_name.iter_mut().find(|u| u.name == now.name) {
            Some(used) => {
                used.cpu += cpu;
                used.wakeups += wakeups;
            }
            None => by_name.push(ThreadUse {
                name: now.name.clone(),
                cpu,
                wakeups,
            }),
        }
    }
    by_name.retain(|u| u.cpu > 0.0 || u.wakeups > 0);
    by_name.sort_by(|a, b| b.cpu.total_cmp(&a.cpu));
    by_name
}

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc/PID/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kb * 1024)
}

async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .context("connecting to the collector's /metrics")?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn sum_counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn buckets(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|l| {
            let (bound, count) = l.split_once("\"} ")?;
            Some((
                bound.parse::<f64>().unwrap_or(f64::INFINITY),
                count.trim().parse().ok()?,
            ))
        })
        .collect()
}

fn histogram_delta(start: &str, end: &str, name: &str) -> Vec<(f64, u64)> {
    let before = buckets(start, name);
    buckets(end, name)
        .into_iter()
        .enumerate()
        .map(|(i, (bound, n))| (bound, n.saturating_sub(before.get(i).map_or(0, |b| b.1))))
        .collect()
}

/// The `krakenbook` binary beside this one (cargo builds both into the same directory).
pub(crate) fn krakenbook_binary() -> anyhow::Result<std::path::PathBuf> {
    let me = std::env::current_exe().context("locating the krakenbook-bench binary")?;
    let exe = me.with_file_name("krakenbook");
    if !exe.is_file() {
        bail!(
            "no krakenbook binary beside {} (build both: cargo build --release --workspace)",
            me.display()
        );
    }
    Ok(exe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(tid: u32, name: &str, cpu: f64, wakeups: u64) -> ThreadReading {
        ThreadReading {
            tid,
            name: name.to_owned(),
            cpu,
            wakeups,
        }
    }

    #[test]
    fn thread_use_is_summed_by_name_over_the_window() {
        let start = [
            reading(1, "feed", 1.0, 100),
            reading(2, "tokio-rt-worker", 2.0, 50),
            reading(3, "tokio-rt-worker", 0.5, 10),
            reading(4, "gone", 9.0, 9),
        ];
        let end = [
            reading(1, "feed", 1.25, 400),
            reading(2, "tokio-rt-worker", 2.5, 60),
            reading(3, "tokio-rt-worker", 0.75, 30),
            // Started during the window: counts from zero.
            reading(5, "journal", 0.125, 7),
            // Idle all along: left out.
            reading(6, "idle", 0.0, 0),
        ];
        let used = thread_split(&start, &end);
        let got: Vec<(&str, f64, u64)> = used
            .iter()
            .map(|u| (u.name.as_str(), u.cpu, u.wakeups))
            .collect();
        assert_eq!(
            got,
            vec![
                ("tokio-rt-worker", 0.75, 30),
                ("feed", 0.25, 300),
                ("journal", 0.125, 7),
            ]
        );
    }
}
