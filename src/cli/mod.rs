//! The command line: clap definitions, and one file per command with the code that runs it.
//!
//! `main.rs` only parses, sets up logging and turns an error into an exit code; the commands'
//! work is here or in the library, so it can be tested.

mod archive;
mod book;
mod collect;
mod db;
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
    /// Move closed chunks older than a duration to Parquet files (the cold tier), verified first.
    #[command(after_help = archive::ARCHIVE_EXAMPLES)]
    Archive(archive::ArchiveArgs),
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

/// A time flag (`--at`, `--from`, `--to`, `--since`, `--until`) as people write it: see
/// [`krakenbook::time::Timestamp::parse_user`] for the forms accepted.
pub(crate) fn parse_time(text: &str) -> Result<krakenbook::time::Timestamp, String> {
    krakenbook::time::Timestamp::parse_user(text).map_err(|e| e.to_string())
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
        Command::Archive(args) => archive::run(args).await,
        Command::Export(args) => export::run(*args).await,
        Command::Plot(args) => plot::run(*args).await,
        Command::Serve(args) => serve::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_command_that_reads_the_database_takes_the_same_database_url() {
        let cli = Cli::command();
        let mut with = Vec::new();
        for sub in cli.get_subcommands() {
            let Some(arg) = sub.get_arguments().find(|a| a.get_id() == "database_url") else {
                continue;
            };
            with.push(sub.get_name().to_owned());
            assert_eq!(arg.get_long(), Some("database-url"), "{}", sub.get_name());
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some("DATABASE_URL"),
                "{}",
                sub.get_name()
            );
            assert!(arg.is_hide_env_values_set(), "{}", sub.get_name());
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(
                help.contains("PGPASSWORD or ~/.pgpass"),
                "{}: {help}",
                sub.get_name()
            );
        }
        let want = [
            "collect", "import", "book", "query", "replay", "reset", "migrate", "archive",
            "export", "plot", "serve",
        ];
        assert_eq!(with, want);
    }

    #[test]
    fn time_flags_take_what_people_write_and_refuse_the_rest() {
        // (argv, accepted)
        let cases: [(&[&str], bool); 8] = [
            (&["book", "BTC/USD", "--at", "2026-11-24T10:00:00Z"], true),
            (
                &["book", "BTC/USD", "--at", "2026-11-24 10:00:00.25+01:00"],
                true,
            ),
            (&["book", "BTC/USD", "--at", "2026-11-24T10:00:00"], false),
            (
                &["query", "--since", "2026-11-24", "--until", "2026-11-25"],
                true,
            ),
            (
                &["replay", "--verify", "--from", "2026-11-24t10:00:00z"],
                true,
            ),
            (&["replay", "--verify", "--to", "tomorrow"], false),
            (
                &["plot", "X/Y", "--from", "2026-11-24", "-o", "x.png"],
                true,
            ),
            (
                &[
                    "export",
                    "--symbol",
                    "X/Y",
                    "--from",
                    "1732442400",
                    "-o",
                    "x.csv",
                ],
                false,
            ),
        ];
        for (argv, accepted) in cases {
            let result =
                Cli::try_parse_from(std::iter::once("krakenbook").chain(argv.iter().copied()));
            match (result, accepted) {
                (Ok(_), true) => {}
                (Err(e), false) => {
                    let text = e.to_string();
                    assert!(
                        text.contains("e.g. 2026-11-24T10:00:00Z"),
                        "{argv:?}: {text}"
                    );
                }
                (Ok(_), false) => panic!("{argv:?} was accepted"),
                (Err(e), true) => panic!("{argv:?}: {e}"),
            }
        }
        let Ok(Cli {
            command: Command::Book(b),
            ..
        }) = Cli::try_parse_from([
            "krakenbook",
            "book",
            "X/Y",
            "--at",
            "2026-11-24 10:00:00.000000001Z",
        ])
        else {
            panic!("book --at")
        };
        assert_eq!(b.at.unix_nanos(), 1_795_514_400_000_000_001);
    }

    #[test]
    fn simulate_and_export_durations_need_their_unit() {
        // (argv, the message, or "" when accepted)
        let cases: [(&[&str], &str); 7] = [
            (
                &["simulate", "--silence-every", "30s", "--silence-for", "6s"],
                "",
            ),
            (
                &["simulate", "--silence-secs", "500ms", "--stats-every", "0s"],
                "",
            ),
            (
                &["simulate", "--silence-every", "30"],
                "add a unit, e.g. `30s` or `30ms`",
            ),
            (&["simulate", "--silence-for", "0s"], "above zero"),
            (
                &["simulate", "--stats-every", "10"],
                "add a unit, e.g. `10s`",
            ),
            (
                &[
                    "export",
                    "--symbol",
                    "X/Y",
                    "--from",
                    "2026-11-24",
                    "-o",
                    "x.csv",
                    "--interval",
                    "1",
                ],
                "add a unit, e.g. `1s`",
            ),
            (
                &[
                    "export",
                    "--symbol",
                    "X/Y",
                    "--from",
                    "2026-11-24",
                    "-o",
                    "x.csv",
                    "--interval",
                    "1ns",
                ],
                "microseconds",
            ),
        ];
        for (argv, message) in cases {
            let result =
                Cli::try_parse_from(std::iter::once("krakenbook").chain(argv.iter().copied()));
            match result {
                Ok(_) => assert_eq!(message, "", "{argv:?} was accepted"),
                Err(e) => {
                    let text = e.to_string();
                    assert!(
                        !message.is_empty() && text.contains(message),
                        "{argv:?}: {text}"
                    );
                }
            }
        }
    }
}
