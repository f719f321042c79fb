//! The command line: clap definitions, and one file per command with the code that runs it.
//!
//! `main.rs` only parses, sets up logging and turns an error into an exit code; the commands'
//! work is here or in the library, so it can be tested.

mod book;
mod collect;
mod export;
mod import;
mod migrate;
mod plot;
mod query;
mod replay;
mod reset;
pub mod secret;
mod serve;
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
    pub log_level: String,
}

const EXAMPLES: &str = "\
Examples:
  krakenbook collect --symbols BTC/USD,ETH/USD --depth 100  record books into ./data/journal
  krakenbook verify tests/fixtures/kraken-v2/*.ndjson     check every checksum in recorded frames
  krakenbook verify --json capture.ndjson                 the same, as JSON for scripts
  krakenbook migrate --database-url postgres://kb@localhost/market   create or upgrade the schema

  krakenbook simulate --symbols BTC/USD:1:8 --rate 50      a local Kraken v2 exchange on 127.0.0.1:8790";

/// krakenbook's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record order books from Kraken (or a simulator) into the journal and TimescaleDB.
    #[command(after_help = collect::COLLECT_HELP)]
    Collect(Box<collect::CollectArgs>),
    /// Load a journal recorded without a database into TimescaleDB (resumable, idempotent).
    #[command(after_help = import::IMPORT_EXAMPLES)]
    Import(import::ImportArgs),
    /// The book of a symbol as it was at an instant, rebuilt from the database and verified.
    #[command(after_help = book::BOOK_EXAMPLES)]
    Book(book::BookArgs),
    /// What is stored: summary, per-symbol coverage and gaps, latest messages and levels.
    #[command(after_help = query::QUERY_EXAMPLES)]
    Query(query::QueryArgs),
    /// Verify recorded data again, or serve it over Kraken's v2 protocol.
    #[command(after_help = replay::REPLAY_EXAMPLES)]
    Replay(Box<replay::ReplayArgs>),
    /// Empty the tables, keeping the schema and hypertables (asks first, unless --yes).
    #[command(after_help = reset::RESET_EXAMPLES)]
    Reset(reset::ResetArgs),
    /// Check the checksum of every book message in recorded frame files.
    #[command(after_help = verify::VERIFY_EXAMPLES)]
    Verify(verify::VerifyArgs),
    /// A local Kraken v2 exchange (simulated books, faults on demand) for offline work and tests.
    #[command(after_help = simulate::SIMULATE_EXAMPLES)]
    Simulate(Box<simulate::SimulateArgs>),
    /// Create or upgrade the TimescaleDB schema.
    #[command(after_help = migrate::MIGRATE_EXAMPLES)]
    Migrate(migrate::MigrateArgs),
    /// Export recorded books to CSV or Parquet (tardis.dev layouts, exact decimals).
    #[command(after_help = export::EXPORT_HELP)]
    Export(Box<export::ExportArgs>),
    /// Plot mid price, spread and depth near the top over time, as a PNG.
    #[command(after_help = plot::PLOT_HELP)]
    Plot(Box<plot::PlotArgs>),
    /// A web explorer of the recording: coverage, books, heatmap, collectors (read-only).
    #[command(after_help = serve::SERVE_EXAMPLES)]
    Serve(serve::ServeArgs),
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Collect(args) => collect::run(*args).await,
        Command::Import(args) => import::run(args).await,
        Command::Book(args) => book::run(args).await,
        Command::Query(args) => query::run(args).await,
        Command::Replay(args) => replay::run(*args).await,
        Command::Reset(args) => reset::run(args).await,
        Command::Verify(args) => verify::run(args),
        Command::Migrate(args) => migrate::run(args).await,
        Command::Simulate(args) => simulate::run(*args).await,
        Command::Export(args) => export::run(*args).await,
        Command::Plot(args) => plot::run(*args).await,
        Command::Serve(args) => serve::run(args).await,
    }
}
