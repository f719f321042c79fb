//! `krakenbook bench`: benchmarks that print figures (the performance goals live here, never in
//! timed tests). One subcommand per benchmark, each in its own file.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{bench_collect, bench_ingest, bench_readback, bench_serve, bench_simulate};

pub(crate) const BENCH_EXAMPLES: &str = "\
Examples:
  krakenbook bench collect --pairs 100 --depth 1000 --rate 100   collector CPU, memory, commit latency
  krakenbook bench ingest                                the store writer against plain COPY (throwaway cluster)
  krakenbook bench simulate --pairs 500 --seconds 10     messages per second the simulator serves";

/// `krakenbook bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The benchmark to run.
    #[command(subcommand)]
    pub command: BenchCommand,
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
    /// How fast the web explorer answers: coverage of a month, book at an instant, heatmaps.
    #[command(after_help = bench_serve::BENCH_SERVE_EXAMPLES)]
    Serve(bench_serve::BenchServeArgs),
    /// Messages per second the simulator delivers to loopback clients subscribed to every pair.
    #[command(after_help = bench_simulate::BENCH_SIMULATE_EXAMPLES)]
    Simulate(bench_simulate::BenchSimulateArgs),
}

/// Runs the chosen benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Collect(a) => bench_collect::run(a).await,
        BenchCommand::Readback(a) => bench_readback::run(a).await,
        BenchCommand::Ingest(a) => bench_ingest::run(a).await,
        BenchCommand::Serve(a) => bench_serve::run(a).await,
        BenchCommand::Simulate(a) => bench_simulate::run(a).await,
    }
}
