//! `krakenbook-bench`: benchmarks that print figures (the performance goals live here, never in
//! timed tests), kept out of the user's CLI. One subcommand per benchmark, each in its own file.
//!
//! # Layer
//!
//! Crate `krakenbook-bench`, a binary on top of everything: the `krakenbook` facade and
//! `krakenbook-testkit` (throwaway clusters, captures). Nothing depends on it. `collect` runs the
//! `krakenbook` binary found beside this one (build both: `cargo build --release --workspace`).
#![forbid(unsafe_code)]

mod collect;
mod ingest;
mod queries;
mod readback;
mod serve;
mod simulate;
mod storage;
mod wakeup;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use collect as bench_collect;
use ingest as bench_ingest;
use readback as bench_readback;
use serve as bench_serve;
use simulate as bench_simulate;
use storage as bench_storage;
use wakeup as bench_wakeup;

const BENCH_EXAMPLES: &str = "\
Examples:
  krakenbook-bench collect --pairs 100 --depth 1000 --rate 100   collector CPU, memory, commit latency
  krakenbook-bench ingest                                the store writer against plain COPY (throwaway cluster)
  krakenbook-bench simulate --pairs 500 --measure 10s    messages per second the simulator serves
  krakenbook-bench serve                                 the web explorer's views on a month of one pair";

/// krakenbook's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "krakenbook-bench", version, about, long_about = None, after_help = BENCH_EXAMPLES)]
pub struct BenchArgs {
    /// The benchmark to run.
    #[command(subcommand)]
    pub command: BenchCommand,
    /// Log filter (error, warn, info, debug, trace, or a directive such as krakenbook=debug).
    #[arg(long, global = true, env = "KRAKENBOOK_LOG", default_value = "warn")]
    pub log_level: String,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// How fast recorded books come back: book --at latency, replay speed (journal, database).
    #[command(after_help = bench_readback::BENCH_READBACK_EXAMPLES)]
    Readback(bench_readback::BenchReadbackArgs),
    /// The collector's CPU, peak memory and receive-to-commit latency while it records.
    #[command(after_help = bench_collect::BENCH_COLLECT_EXAMPLES)]
    Collect(bench_collect::BenchCollectArgs),
    /// The store writer against plain binary COPY of the same rows into the same tables.
    #[command(after_help = bench_ingest::BENCH_INGEST_EXAMPLES)]
    Ingest(bench_ingest::IngestArgs),
    /// Messages per second the simulator delivers to loopback clients subscribed to every pair.
    #[command(after_help = bench_simulate::BENCH_SIMULATE_EXAMPLES)]
    Simulate(bench_simulate::BenchSimulateArgs),
    /// How fast the web explorer answers: coverage of a month, book at an instant, heatmaps.
    #[command(after_help = bench_serve::BENCH_SERVE_EXAMPLES)]
    Serve(bench_serve::BenchServeArgs),
    /// Bytes at rest per book message, per table and tier, for a recording it makes.
    #[command(after_help = bench_storage::BENCH_STORAGE_EXAMPLES)]
    Storage(bench_storage::BenchStorageArgs),
    /// What one wake-up of a sleeping thread costs on this machine (the floor under the
    /// collector's CPU at low message rates).
    #[command(after_help = bench_wakeup::BENCH_WAKEUP_EXAMPLES)]
    Wakeup(bench_wakeup::BenchWakeupArgs),
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the chosen benchmark.
async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Collect(a) => bench_collect::run(a).await,
        BenchCommand::Readback(a) => bench_readback::run(a).await,
        BenchCommand::Ingest(a) => bench_ingest::run(a).await,
        BenchCommand::Simulate(a) => bench_simulate::run(a).await,
        BenchCommand::Serve(a) => bench_serve::run(a).await,
        BenchCommand::Storage(a) => bench_storage::run(a).await,
        BenchCommand::Wakeup(a) => bench_wakeup::run(a).await,
    }
}
