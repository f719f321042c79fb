//! `krakenbook-bench storage`: bytes at rest per book message, per table and per tier, for a
//! recording it makes (or a database it is given).
//!
//! Recording mode starts the simulator in-process and `krakenbook collect` as a child process
//! (every simulated pair, one throwaway TimescaleDB with durable settings), once per
//! `--redundancy` value asked for, each into its own database and journal, stops it gracefully,
//! and measures: every table's size with its indexes and TOAST (`hypertable_size` for
//! hypertables, `pg_total_relation_size` for the others), the journal's segments as written and
//! compressed with zstd, each divided by the number of book messages stored (first copies: a
//! message received on two connections counts once). With several `--redundancy` values it
//! prints each database's size against the first's (issue 12's cost: at most 1.15 at N = 2).
//!
//! With `--database-url` it measures that database only (no recording, no journal).

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio_postgres::Client;

use krakenbook::exchange::sim::generated_pairs;
use krakenbook::exchange::{SimConfig, Simulator};
use krakenbook::kraken::Depth;
use krakenbook::store::DbTarget;
use krakenbook_testkit::{ClusterOptions, TempCluster};

pub(crate) const BENCH_STORAGE_EXAMPLES: &str = "\
Run it with a release build (cargo build --release --workspace).

Examples:
  krakenbook-bench storage                                      20 pairs, depth 100, 45 s, N = 1 and N = 2
  krakenbook-bench storage --pairs 5 --seconds 20 --redundancy 1
  krakenbook-bench storage --redundancy 1 --queries             also the README queries, views against schema 5
  krakenbook-bench storage --database-url postgres://kb@localhost/market   measure an existing database";

/// `krakenbook-bench storage`.
#[derive(Debug, Args)]
pub struct BenchStorageArgs {
    /// Simulated pairs (the collector records all of them).
    #[arg(long, value_name = "N", default_value = "20", value_parser = clap::value_parser!(u32).range(1..=5_000))]
    pub pairs: u32,
    /// Book events per second per pair.
    #[arg(long, value_name = "EVENTS", default_value = "100")]
    pub rate: f64,
    /// Book depth: 10, 25, 100, 500 or 1000.
    #[arg(long, default_value = "100")]
    pub depth: Depth,
    /// How long each recording runs (after the collector started).
    #[arg(long, value_name = "DURATION", default_value = "45s", value_parser = crate::collect::bench_period)]
    pub seconds: Duration,
    /// The collector's `--redundancy` for each recording, comma-separated (1 to 4).
    #[arg(long, value_name = "N,...", default_value = "1,2", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=4))]
    pub redundancy: Vec<u32>,
    /// The simulator's seed (the same market for every recording).
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Also time the README queries through the views against the same rows in the layout before
    /// schema 6 (rebuilt beside them for the run, then dropped): on the first recording, or on the
    /// database given.
    #[arg(long)]
    pub queries: bool,
    /// Measure this database instead of recording one.
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// One table's size.
#[derive(Debug)]
struct TableSize {
    name: String,
    bytes: i64,
}

/// What one database holds.
#[derive(Debug)]
struct Measured {
    tables: Vec<TableSize>,
    /// Book messages (rows of the book table: first copies).
    messages: i64,
    /// Copies packed in those rows (`dup`, `dups`).
    copies: i64,
    /// Levels stored.
    levels: i64,
}

impl Measured {
    fn total(&self) -> i64 {
        self.tables.iter().map(|t| t.bytes).sum()
    }
}

/// Runs `krakenbook-bench storage`.
pub async fn run(args: BenchStorageArgs) -> anyhow::Result<ExitCode> {
    if let Some(url) = &args.database_url {
        let target = DbTarget::parse(url)?;
        let client = target.connect("krakenbook-bench storage").await?;
        let m = measure(&client).await?;
        println!(
            "bench storage: database {} ({} book messages)",
            target.redacted(),
            m.messages
        );
        print_tables(&m);
        if args.queries {
            crate::queries::run(&client).await?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of events per second");
    }
    let cluster = tokio::task::spawn_blocking(|| {
        TempCluster::with_options(ClusterOptions {
            durable: true,
            bindir: None,
        })
    })
    .await??;
    println!(
        "bench storage: {} simulated pairs at depth {}, {} events/s per pair, {:?} per recording, seed {}; {} CPU(s)",
        args.pairs,
        args.depth,
        args.rate,
        args.seconds,
        args.seed,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut first_total: Option<f64> = None;
    for n in &args.redundancy {
        let work = tempfile::tempdir().context("creating a scratch directory")?;
        let url = cluster.create_database().await?;
        record(&args, *n, &url, work.path()).await?;
        let target = DbTarget::parse(&url)?;
        let client = target.connect("krakenbook-bench storage").await?;
        let m = measure(&client).await?;
        if m.messages == 0 {
            bail!("the recording at --redundancy {n} stored no book message");
        }
        println!();
        println!(
            "--redundancy {n}: {} book messages, {} further copies packed with them, {} levels ({:.2} a message)",
            m.messages,
            m.copies,
            m.levels,
            m.levels as f64 / m.messages as f64
        );
        print_tables(&m);
        let (plain, zstd) = journal_bytes(&work.path().join("journal"))?;
        let per = |b: u64| b as f64 / m.messages as f64;
        println!(
            "  journal segments {:>12} bytes  {:>8.1} B/message (zstd -3: {:.1} B/message)",
            plain,
            per(plain),
            per(zstd)
        );
        let total = m.total() as f64 / m.messages as f64;
        if args.queries && first_total.is_none() {
            crate::queries::run(&client).await?;
        }
        match first_total {
            None => first_total = Some(total),
            Some(base) => println!(
                "  database against the first recording: {:.2}x (issue 12's goal at N = 2: <= 1.15)",
                total / base
            ),
        }
    }
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}

/// Records the simulator's market for `args.seconds` with `--redundancy n` into `url`.
async fn record(args: &BenchStorageArgs, n: u32, url: &str, work: &Path) -> anyhow::Result<()> {
    let pairs = generated_pairs(args.pairs as usize);
    let symbols: Vec<String> = pairs.iter().map(|p| p.symbol.clone()).collect();
    let sim = Simulator::bind(SimConfig {
        pairs,
        rate: args.rate,
        seed: args.seed,
        ..SimConfig::default()
    })
    .await?;
    let exe = crate::collect::krakenbook_binary()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["collect", "--url", &format!("ws://{}/v2", sim.local_addr())])
        .args(["--symbols", &symbols.join(",")])
        .args(["--depth", &args.depth.to_string()])
        .args(["--redundancy", &n.to_string()])
        .args(["--collector-id", "bench"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .arg("--journal-dir")
        .arg(work.join("journal"))
        .args(["--database-url", url])
        .env("KRAKENBOOK_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting krakenbook collect")?;
    eprintln!(
        "bench storage: recording --redundancy {n} for {:?}",
        args.seconds
    );
    tokio::time::sleep(args.seconds).await;
    if let Some(id) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &id.to_string()])
            .status();
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .context("the collector did not stop within 60 s of SIGINT")??;
    sim.shutdown().await?;
    if !status.success() {
        bail!("krakenbook collect exited with {status}");
    }
    Ok(())
}

/// Sizes of every krakenbook table, and what the book table holds.
async fn measure(client: &Client) -> anyhow::Result<Measured> {
    client.batch_execute("VACUUM ANALYZE").await?;
    let rows = client
        .query(
            "SELECT c.relname::text,
                    CASE WHEN h.hypertable_name IS NOT NULL
                         THEN hypertable_size(c.oid) ELSE pg_total_relation_size(c.oid) END
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
               LEFT JOIN timescaledb_information.hypertables h
                 ON h.hypertable_schema = 'public' AND h.hypertable_name = c.relname
              WHERE c.relkind IN ('r', 'p')
                AND (c.relname LIKE 'kraken%')
              ORDER BY 2 DESC, 1",
            &[],
        )
        .await
        .context("measuring the tables")?;
    let tables = rows
        .iter()
        .map(|r| TableSize {
            name: r.get(0),
            bytes: r.get::<_, Option<i64>>(1).unwrap_or(0),
        })
        .collect();
    let book = client
        .query_one(
            "SELECT count(*), (count(dup) + coalesce(sum(cardinality(dups)), 0))::bigint,
                    coalesce(sum(cardinality(levels) / 2), 0)::bigint
               FROM krakenbook_book",
            &[],
        )
        .await
        .context("counting the book messages (is this a krakenbook database of schema 6?)")?;
    Ok(Measured {
        tables,
        messages: book.get(0),
        copies: book.get(1),
        levels: book.get(2),
    })
}

fn print_tables(m: &Measured) {
    let per = |b: i64| b as f64 / m.messages.max(1) as f64;
    for t in &m.tables {
        println!(
            "  {:<32} {:>12} bytes  {:>8.1} B/message",
            t.name,
            t.bytes,
            per(t.bytes)
        );
    }
    println!(
        "  {:<32} {:>12} bytes  {:>8.1} B/message (goal A: <= 250)",
        "database, all tables + indexes",
        m.total(),
        per(m.total())
    );
}

/// The journal's segment bytes as written, and compressed with zstd at level 3.
fn journal_bytes(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let mut plain = 0u64;
    let mut compressed = 0u64;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        plain += bytes.len() as u64;
        compressed += zstd::bulk::compress(&bytes, 3)
            .with_context(|| format!("compressing {}", path.display()))?
            .len() as u64;
    }
    Ok((plain, compressed))
}
