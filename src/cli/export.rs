//! `krakenbook export`: recorded books into CSV or Parquet files (tardis.dev layouts).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use krakenbook::export::{self, Destination, ExportRequest, Format, Kind};
use krakenbook::store::DbTarget;
use krakenbook::time::Timestamp;

pub(crate) const EXPORT_HELP: &str = "\
Kinds (--kind):
  incremental  tardis.dev incremental_book_L2: exchange,symbol,timestamp,local_timestamp,
               is_snapshot,side,price,amount; every level change in received order. The file opens
               with the book at --from (snapshot rows) and carries the deletions Kraken implies
               when it drops levels past the subscribed depth, so the file alone rebuilds the
               exact book (--stored-only: the stored levels and nothing else).
  snapshots    tardis.dev book_snapshot_N: the top --depth levels every --interval, from the book
               rebuilt with every checksum verified; instants in a gap are skipped.
  messages     the stored messages (raw JSON) with their checksum verdicts.

Times: --from and --to are RFC 3339 (2026-11-24T10:00:00Z) or a date (2026-11-24), on Kraken's
clock; --from is included, --to is not. In the files, times are microseconds since the epoch (UTC).
Decimals are exact: CSV keeps each value's text, Parquet uses DECIMAL(38, S). The format follows
the file name (.csv, .csv.zst, .parquet) unless --format says otherwise; -o - writes CSV to
standard output. Several symbols go to one file, told apart by the symbol column.

Examples:
  krakenbook export --symbol BTC/USD --from 2026-11-24 --to 2026-11-25 -o btcusd.csv.zst
  krakenbook export --symbol BTC/USD,ETH/USD --from 2026-11-24T10:00:00Z --to 2026-11-24T11:00:00Z \\
      --kind snapshots --depth 25 --interval 1s -o book_snapshot_25.parquet
  krakenbook export --symbol MINA/GBP --from 2026-11-24 --to 2026-11-25 --kind messages -o - | head";

/// What to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Level changes (tardis incremental_book_L2).
    Incremental,
    /// The book at a fixed interval (tardis book_snapshot_N).
    Snapshots,
    /// The stored messages.
    Messages,
}

/// The file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// CSV.
    Csv,
    /// CSV compressed with zstd.
    #[value(name = "csv.zst")]
    CsvZst,
    /// Parquet.
    Parquet,
}

/// `krakenbook export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Symbols to export (repeat, or separate with commas).
    #[arg(
        long = "symbol",
        alias = "symbols",
        value_name = "SYMBOL",
        value_delimiter = ',',
        required = true
    )]
    pub symbols: Vec<String>,
    /// Range start (inclusive): RFC 3339 or a date.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: Timestamp,
    /// Range end (exclusive): RFC 3339 or a date [default: now].
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to: Option<Timestamp>,
    /// What to export.
    #[arg(long, value_enum, default_value = "incremental")]
    pub kind: KindArg,
    /// File format [default: from the file name, else csv].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Snapshots: levels per side.
    #[arg(long, default_value_t = 25)]
    pub depth: usize,
    /// Snapshots: time between snapshots (100ms, 1s, 1m, ...).
    #[arg(long, default_value = "1s", value_parser = export::parse_interval)]
    pub interval: i64,
    /// Read this collector's record (needed when several recorded the range).
    #[arg(long, value_name = "NAME")]
    pub collector: Option<String>,
    /// Incremental: the stored levels only (no initial book, no implied deletions).
    #[arg(long)]
    pub stored_only: bool,
    /// The output file (`-`: standard output, CSV only).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// The database: postgres://user:password@host:port/database (sslmode honoured).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// No progress bar and no summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

pub(crate) fn parse_time(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse(text).map_err(|e| e.to_string())
}

/// Runs `krakenbook export`.
pub async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let url = super::migrate::database_url(args.database_url)?;
    let target = DbTarget::parse(&url)?;
    let dest = if args.output.as_os_str() == "-" {
        Destination::Stdout
    } else {
        Destination::File(args.output.clone())
    };
    let format = match (args.format, &dest) {
        (Some(FormatArg::Csv), _) => Format::Csv,
        (Some(FormatArg::CsvZst), _) => Format::CsvZstd,
        (Some(FormatArg::Parquet), _) => Format::Parquet,
        (None, Destination::File(p)) => Format::from_path(p).unwrap_or(Format::Csv),
        (None, Destination::Stdout) => Format::Csv,
    };
    let kind = match args.kind {
        KindArg::Incremental => Kind::Incremental,
        KindArg::Snapshots => Kind::Snapshots {
            depth: args.depth,
            interval_micros: args.interval,
        },
        KindArg::Messages => Kind::Messages,
    };
    let request = ExportRequest {
        symbols: args
            .symbols
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        from: args.from,
        to: args.to.unwrap_or_else(Timestamp::now),
        collector: args.collector,
        kind,
        format,
        stored_only: args.stored_only,
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(1)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} exporting [{bar:40}] {percent}% of the range, {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut progress = |p: export::Progress| {
        bar.set_length(p.total.max(1));
        bar.set_position(p.done);
        bar.set_message(format!("{} rows", p.rows));
    };
    let report = export::export(&target, &request, &dest, &mut progress).await?;
    bar.finish_and_clear();
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let where_to = match &dest {
        Destination::File(p) => format!("{} ({} bytes)", p.display(), report.bytes),
        Destination::Stdout => "standard output".to_owned(),
    };
    let mut line = format!(
        "{}: {} rows of {} ({}) from {} to {}, collector {}",
        where_to,
        report.rows,
        request.symbols.join(", "),
        request.kind.name(),
        request.from,
        request.to,
        report.collector
    );
    match request.kind {
        Kind::Incremental => {
            line.push_str(&format!(
                "; {} messages, {} stored levels",
                report.messages, report.stored_levels
            ));
            if !request.stored_only {
                line.push_str(&format!(
                    ", {} initial-book levels, {} implied deletions",
                    report.initial_levels,
                    report.implied_deletions + report.reset_deletions
                ));
            }
            if !report.no_initial_book.is_empty() {
                line.push_str(&format!(
                    "; no verified book at --from for {} (their rows start at their next snapshot)",
                    report.no_initial_book.join(", ")
                ));
            }
            if report.unknown_depth > 0 {
                line.push_str(&format!(
                    "; {} subscriptions of unknown depth (no implied deletions for them)",
                    report.unknown_depth
                ));
            }
        }
        Kind::Snapshots { .. } => {
            line.push_str(&format!(
                "; {} of {} instants skipped (book in a gap or not recorded yet)",
                report.skipped_intervals, report.intervals
            ));
        }
        Kind::Messages => {}
    }
    // With the data on standard output, the summary goes to standard error.
    match dest {
        Destination::Stdout => eprintln!("{line}"),
        Destination::File(_) => println!("{line}"),
    }
    Ok(ExitCode::SUCCESS)
}
