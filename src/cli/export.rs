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
               is_snapshot,side,price,amount; every verified level change in received order.
               Wherever coverage starts (--from, or the first verified book after it, and after
               every gap) the file writes the book there as snapshot rows; where a gap starts, an
               amount-0 row for every level held; no row of an unverified book. With the deletions
               Kraken implies when it drops levels past the subscribed depth and a deletion of
               every held level before each snapshot, the file alone rebuilds `book --at`'s book
               (and an empty book in gaps) in tardis's rule, nautilus_trader's and hftbacktest's
               loaders alike (--stored-only: the stored levels and nothing else).
               Recorded by several collectors (or connections), it is one merged stream: it
               follows one stream and, where that one stops being verified, writes the book of
               another verified there as snapshot rows; a gap only where every stream was dark.
               --collector NAME follows that collector's streams only.
  snapshots    tardis.dev book_snapshot_N: the top --depth levels every --interval, from the book
               rebuilt with every checksum verified; instants in a gap are skipped.
  messages     the stored messages (raw JSON) with their checksum verdicts.
  (snapshots, messages and --stored-only read one collector: a range several recorded needs
  --collector NAME.)

Times: --from and --to are RFC 3339 (2026-11-24T10:00:00Z) or a date (2026-11-24), on Kraken's
clock; --from is included, --to is not. In the files, times are microseconds since the epoch (UTC).
Decimals are exact: CSV keeps each value's text, Parquet uses DECIMAL(38, S).

Output: the format is the file name's (.csv, .csv.zst, .parquet); any other name needs --format,
and a name that says another format than --format is refused. Several symbols go to one file,
told apart by the symbol column, unless the name holds {symbol}: then one file per symbol, the
symbol written with / as - (l2_{symbol}.csv gives l2_BTC-USD.csv). Beside each file,
FILE.precision.json gives each pair's price and quantity decimals, as recorded:
{\"BTC/USD\": {\"price_precision\": 1, \"qty_precision\": 8}}. A file appears complete or not at all
(written beside it, then renamed; through a symlink, the file it points to is replaced and the
link kept); an existing device or FIFO is written in place; Ctrl-C or SIGTERM removes the
unfinished file. -o - writes CSV to standard output.

Examples:
  krakenbook export --symbol BTC/USD --from 2026-11-24 --to 2026-11-25 -o btcusd.csv.zst
  krakenbook export --symbol BTC/USD,ETH/USD --from 2026-11-24 --to 2026-11-25 -o 'l2_{symbol}.csv'
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
    #[arg(long, value_name = "TIME", value_parser = super::parse_time)]
    pub from: Timestamp,
    /// Range end (exclusive): RFC 3339 or a date [default: now].
    #[arg(long, value_name = "TIME", value_parser = super::parse_time)]
    pub to: Option<Timestamp>,
    /// What to export.
    #[arg(long, value_enum, default_value = "incremental")]
    pub kind: KindArg,
    /// File format [default: the file name's; needed for any other name].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Snapshots: levels per side (at most the recorded depth: deeper is clamped, with a
    /// warning).
    #[arg(long, default_value_t = 25)]
    pub depth: usize,
    /// Snapshots: time between snapshots (100ms, 1s, 1m, ...; whole microseconds).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = interval_micros)]
    pub interval: i64,
    /// Read this collector's record (needed when several recorded the range).
    #[arg(long, value_name = "NAME")]
    pub collector: Option<String>,
    /// Incremental: the stored levels only (no books where coverage starts, no deletions added).
    #[arg(long)]
    pub stored_only: bool,
    /// The output file (`{symbol}` in it: one file per symbol; `-`: standard output, CSV only).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub db: super::db::DbArgs,
    /// No progress bar and no summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// A snapshot interval in microseconds, the files' resolution: above zero, whole microseconds.
fn interval_micros(text: &str) -> Result<i64, String> {
    let d = krakenbook::config::positive_duration(text)?;
    if d.subsec_nanos() % 1000 != 0 {
        return Err(format!(
            "{text:?}: snapshots are microseconds apart at the finest, e.g. 100us or 1ms"
        ));
    }
    i64::try_from(d.as_micros()).map_err(|_| format!("{text:?} is too long"))
}

/// Runs `krakenbook export`.
pub async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let url = args.db.url()?;
    let target = super::archive::reading(
        DbTarget::parse(&url)?,
        krakenbook::archive::Mount::window(&args.symbols, Some(args.from), args.to),
    );
    let dest = if args.output.as_os_str() == "-" {
        Destination::Stdout
    } else {
        Destination::File(args.output.clone())
    };
    let format = Format::for_output(
        args.format.map(|f| match f {
            FormatArg::Csv => Format::Csv,
            FormatArg::CsvZst => Format::CsvZstd,
            FormatArg::Parquet => Format::Parquet,
        }),
        &dest,
    )?;
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
    stop_on_signal(bar.clone())?;
    let mut progress = |p: export::Progress| {
        bar.set_length(p.total.max(1));
        bar.set_position(p.done);
        bar.set_message(format!("{} rows", p.rows));
    };
    let report = match export::export(&target, &request, &dest, &mut progress).await {
        Ok(r) => r,
        // The reader of standard output stopped early (`| head`): what it read is what it
        // wanted.
        Err(e) if dest == Destination::Stdout && e.is_broken_pipe() => {
            bar.finish_and_clear();
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            bar.finish_and_clear();
            return Err(e.into());
        }
    };
    bar.finish_and_clear();
    if let Some(c) = report.depth_clamped {
        eprintln!(
            "warning: --depth {} is deeper than the books recorded ({} levels a side): the snapshots hold {} levels",
            c.asked, c.recorded, c.recorded
        );
    }
    if !report.precision_from_values.is_empty() {
        eprintln!(
            "warning: no instrument frame of {} is recorded in the range: its precision is the most decimals of its stored values",
            report.precision_from_values.join(", ")
        );
    }
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let where_to = match &dest {
        Destination::File(_) => report
            .files
            .iter()
            .map(|f| {
                format!(
                    "{} ({} bytes{})",
                    f.path.display(),
                    f.bytes,
                    if f.in_place { ", written in place" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
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
                    ", {} levels of books where coverage starts, {} implied deletions, {} deletions before snapshots, {} snapshot ends",
                    report.opening_levels,
                    report.implied_deletions,
                    report.reset_deletions,
                    report.snapshot_ends
                ));
                line.push_str(&export::coverage_summary(&report, request.from));
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
    if report.files.iter().any(|f| f.precision_file.is_some()) {
        let pairs: Vec<String> = report
            .precision
            .iter()
            .map(|(s, p)| format!("{s} {}/{}", p.price, p.qty))
            .collect();
        line.push_str(&format!(
            "; price/quantity decimals in {}: {}",
            export::PRECISION_SUFFIX,
            pairs.join(", ")
        ));
    }
    // With the data on standard output, the summary goes to standard error.
    match dest {
        Destination::Stdout => eprintln!("{line}"),
        Destination::File(_) => println!("{line}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// On Ctrl-C (SIGINT) or SIGTERM: removes the unfinished output files and exits at once (the
/// main thread may be blocked writing to a FIFO nobody reads, so this does not wait for it),
/// with 130 or 143 as a shell reports a process killed by the signal.
pub(crate) fn stop_on_signal(bar: ProgressBar) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::spawn(async move {
        let (name, code) = tokio::select! {
            _ = int.recv() => ("SIGINT", 130),
            _ = term.recv() => ("SIGTERM", 143),
        };
        let removed = krakenbook::output::remove_partial_files();
        bar.finish_and_clear();
        if removed.is_empty() {
            eprintln!("error: interrupted by {name}");
        } else {
            eprintln!("error: interrupted by {name}: the unfinished output was removed");
        }
        std::process::exit(code);
    });
    Ok(())
}
