//! `krakenbook plot`: a symbol's mid price, spread and depth near the top over time, as a PNG.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use krakenbook::plot::{self, PlotRequest};
use krakenbook::store::DbTarget;
use krakenbook::time::Timestamp;

pub(crate) const PLOT_HELP: &str = "\
Draws three panels over a shared time axis (UTC): the mid price, the spread (best ask minus best
bid), and the quantity within the top --depth-levels levels of each side. The books are rebuilt
from the database with every checksum recomputed; where a book was not verified (a checksum
mismatch, a lost connection, before the first snapshot) the time is shaded and no line is drawn.
Long ranges are reduced to one min/max per pixel column, so a day draws as readably as a minute.

Times: --from and --to are RFC 3339 (2026-11-24T10:00:00Z) or a date (2026-11-24), on Kraken's
clock; --from is included, --to is not.

Output: a PNG, so the name must end in .png (a device or FIFO without an extension is written in
place). The file appears complete or not at all; Ctrl-C or SIGTERM removes the unfinished file.
--depth-levels deeper than the recorded books is clamped to them, with a warning.

Examples:
  krakenbook plot BTC/USD --from 2026-11-24 --to 2026-11-25 -o btcusd.png
  krakenbook plot ETH/USD --from 2026-11-24T10:00:00Z --to 2026-11-24T10:05:00Z -o eth.png \\
      --width 1600 --height 900 --depth-levels 25";

/// `krakenbook plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The pair, e.g. BTC/USD.
    pub symbol: String,
    /// Range start (inclusive): RFC 3339 or a date.
    #[arg(long, value_name = "TIME", value_parser = super::parse_time)]
    pub from: Timestamp,
    /// Range end (exclusive): RFC 3339 or a date [default: now].
    #[arg(long, value_name = "TIME", value_parser = super::parse_time)]
    pub to: Option<Timestamp>,
    /// The PNG file to write.
    #[arg(short = 'o', long = "output", value_name = "FILE.png")]
    pub output: PathBuf,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 800)]
    pub height: u32,
    /// Levels of each side summed in the depth panel.
    #[arg(long, default_value_t = 10)]
    pub depth_levels: usize,
    /// Read this collector's record (needed when several recorded the range).
    #[arg(long, value_name = "NAME")]
    pub collector: Option<String>,
    #[command(flatten)]
    pub db: super::db::DbArgs,
    /// No summary line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `krakenbook plot`.
pub async fn run(args: PlotArgs) -> anyhow::Result<ExitCode> {
    let url = args.db.url()?;
    let target = super::archive::reading(
        DbTarget::parse(&url)?,
        krakenbook::archive::Mount::window(
            std::slice::from_ref(&args.symbol),
            Some(args.from),
            args.to,
        ),
    );
    let request = PlotRequest {
        symbol: args.symbol.trim().to_owned(),
        from: args.from,
        to: args.to.unwrap_or_else(Timestamp::now),
        collector: args.collector,
        width: args.width,
        height: args.height,
        depth_levels: args.depth_levels,
    };
    super::export::stop_on_signal(indicatif::ProgressBar::hidden())?;
    let report = plot::plot(&target, &request, &args.output).await?;
    if let Some(asked) = report.depth_levels_asked {
        eprintln!(
            "warning: --depth-levels {asked} is deeper than the books recorded ({} levels a side): the depth panel sums {}",
            report.depth_levels, report.depth_levels
        );
    }
    if !args.quiet {
        println!(
            "{}: {}x{} PNG ({} bytes) of {} from {} to {}, collector {}: {} messages ({} verified), {} of {} pixel columns shaded as gaps",
            args.output.display(),
            request.width,
            request.height,
            report.bytes,
            request.symbol,
            request.from,
            request.to,
            report.collector,
            report.messages,
            report.verified,
            report.gap_columns,
            report.columns
        );
    }
    Ok(ExitCode::SUCCESS)
}
