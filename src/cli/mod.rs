//! The command line: clap definitions, and one file per command with the code that runs it.
//!
//! `main.rs` only parses, sets up logging and turns an error into an exit code; the commands'
//! work is here or in the library, so it can be tested.

mod bench;
mod bench_simulate;
mod simulate;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Records Kraken's public order books exactly, verifies every checksum, and gives them back.
#[derive(Debug, Parser)]
#[command(name = "krakenbook", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (error, warn, info, debug, trace, or a directive such as krakenbook=debug).
    #[arg(long, global = true, env = "KRAKENBOOK_LOG", default_value = "info")]
    pub log: String,
}

const EXAMPLES: &str = "\
Examples:
  krakenbook verify tests/fixtures/kraken-v2/*.ndjson     check every checksum in recorded frames
  krakenbook verify --json capture.ndjson                 the same, as JSON for scripts
  krakenbook simulate --symbols BTC/USD:1:8 --rate 50      a local Kraken v2 exchange on 127.0.0.1:8790
  krakenbook bench simulate --pairs 500                   messages per second the simulator serves";

/// krakenbook's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the checksum of every book message in recorded frame files.
    #[command(after_help = verify::VERIFY_EXAMPLES)]
    Verify(verify::VerifyArgs),
    /// A local Kraken v2 exchange (simulated books, faults on demand) for offline work and tests.
    #[command(after_help = simulate::SIMULATE_EXAMPLES)]
    Simulate(Box<simulate::SimulateArgs>),
    /// Benchmarks that print figures.
    #[command(after_help = bench::BENCH_EXAMPLES)]
    Bench(bench::BenchArgs),
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Verify(args) => verify::run(args),
        Command::Simulate(args) => simulate::run(*args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}
