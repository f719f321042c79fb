//! Plots: a symbol's mid price, spread and depth near the top over a time range, from the
//! database, as a PNG that reads at a glance.
//!
//! The data: [`BookCursor`] steps through every stored message of the range, recomputing each
//! checksum; after each verified message the book gives the mid price, the spread (best ask minus
//! best bid) and the quantity within the top N levels of each side, summed exactly as
//! [`Decimal`]s and turned into floats only to place pixels. [`series`] reduces them to one
//! min/max/first/last aggregate per pixel column, so memory and drawing time depend on the
//! image's width, not on the range: a day of BTC/USD costs the time to read it, nothing more.
//! Where the book was not verified (after a checksum mismatch, a lost connection, before the
//! first snapshot) the columns are shaded and no line is drawn.
//!
//! The drawing is our own: [`canvas`] (rectangles, lines, text), [`font`] (a 5×7 bitmap font
//! drawn for this project), [`axis`] (round ticks), [`chart`] (layout), and the `png` crate to
//! encode. Why not `plotters`: its bitmap backend draws text only through system fonts (its `ttf`
//! feature, via font-kit and fontconfig) or a font file the program supplies (`ab_glyph`). The
//! machines this runs on (servers, containers, CI) often have no fonts installed, and a font file
//! copied into the repository is someone else's work; a chart whose labels fail to render is
//! worse than none. A few hundred lines here give titles, axes and legends that always render,
//! with a small dependency (`png`) instead of plotters' tree.
//!
//! What must hold: the image has exactly the size asked for; every value plotted comes from a
//! verified book; the output is a `.png` (or a device or FIFO whose name has no extension), and
//! it is written as [`crate::output`] writes every output: a file appears complete or not at all,
//! a device or FIFO is written in place and never replaced; a `--depth-levels` deeper than the
//! recorded books is clamped to them, and the report says so.

pub mod axis;
pub mod canvas;
pub mod chart;
pub mod font;
pub mod series;

use std::io::Write;
use std::path::Path;

use crate::book::{Decimal, OrderBook};
use crate::output::{OutputError, OutputFile};
use crate::readback::{BookCursor, ReadbackError};
use crate::source::{self, SourceError};
use crate::store::{DbTarget, StoreError};
use crate::time::Timestamp;

use self::chart::{Labels, Layout};
use self::series::{SERIES, Sample, Series, SeriesBuilder};

/// A plot to draw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlotRequest {
    /// The pair (`BTC/USD`).
    pub symbol: String,
    /// Range start (inclusive), Kraken's clock.
    pub from: Timestamp,
    /// Range end (exclusive).
    pub to: Timestamp,
    /// The collector whose record to read (`None`: the only one that recorded the range).
    pub collector: Option<String>,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Levels of each side summed for the depth panel.
    pub depth_levels: usize,
}

/// What a plot drew.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlotReport {
    /// The collector whose record was read.
    pub collector: String,
    /// Stored messages read (from the rebuild's start).
    pub messages: u64,
    /// Messages whose checksum verified.
    pub verified: u64,
    /// Pixel columns of the plot area.
    pub columns: usize,
    /// Columns shaded as gaps.
    pub gap_columns: usize,
    /// Size of the PNG file.
    pub bytes: u64,
    /// The levels summed in the depth panel (`--depth-levels`, clamped to the recorded depth).
    pub depth_levels: usize,
    /// `--depth-levels` was deeper than the recorded books: what was asked.
    pub depth_levels_asked: Option<usize>,
}

/// Why a plot failed.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The request cannot be drawn as given.
    #[error("{0}")]
    Invalid(String),
    /// The selection was refused (symbol, range, collector).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Rebuilding the book failed.
    #[error(transparent)]
    Readback(#[from] ReadbackError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output cannot be opened, written or committed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// PNG encoding failed.
    #[error("encoding the PNG: {0}")]
    Png(#[from] png::EncodingError),
}

/// The largest image side accepted.
pub const MAX_SIDE: u32 = 10_000;

/// Whether `path` may receive a PNG: its name ends in `.png` (any case), or it is a device or
/// FIFO whose name has no extension (`/dev/stdout`, a named pipe).
pub fn check_png_name(path: &Path) -> Result<(), PlotError> {
    crate::output::check_kind(path)?;
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if png || (path.extension().is_none() && crate::output::writes_in_place(path)) {
        return Ok(());
    }
    Err(PlotError::Invalid(format!(
        "plot writes PNG images: name the file .png (e.g. -o chart.png), not {}",
        path.display()
    )))
}

/// Draws the plot of `request` into the PNG file `path`.
pub async fn plot(
    target: &DbTarget,
    request: &PlotRequest,
    path: &Path,
) -> Result<PlotReport, PlotError> {
    if request.width > MAX_SIDE || request.height > MAX_SIDE {
        return Err(PlotError::Invalid(format!(
            "--width and --height may be at most {MAX_SIDE} pixels"
        )));
    }
    if request.depth_levels == 0 || request.depth_levels > crate::source::MAX_SNAPSHOT_DEPTH {
        return Err(PlotError::Invalid(format!(
            "--depth-levels {}: give 1 to {}",
            request.depth_levels,
            crate::source::MAX_SNAPSHOT_DEPTH
        )));
    }
    let layout = Layout::new(request.width, request.height).map_err(PlotError::Invalid)?;
    if request.from >= request.to {
        return Err(SourceError::EmptyRange {
            from: request.from,
            to: request.to,
        }
        .into());
    }
    check_png_name(path)?;
    let mut out = OutputFile::create(path)?;
    let client = target.connect("krakenbook plot").await?;
    let selection = source::select(
        &client,
        std::slice::from_ref(&request.symbol),
        request.from,
        request.to,
        request.collector.as_deref(),
        false,
    )
    .await?;
    let mut report = PlotReport {
        collector: selection.collector.clone(),
        columns: layout.columns(),
        depth_levels: request.depth_levels,
        ..PlotReport::default()
    };
    let recorded = crate::recorded::recorded(&client, &selection, &request.symbol).await?;
    if let Some(depth) = recorded.depth
        && depth < request.depth_levels
    {
        report.depth_levels_asked = Some(request.depth_levels);
        report.depth_levels = depth;
    }
    let series = read_series(
        &client,
        &selection,
        request,
        report.depth_levels,
        layout.columns(),
        &mut report,
    )
    .await?;
    report.gap_columns = series.columns.iter().filter(|c| c.gap).count();
    let labels = labels(request, &selection.collector, &report);
    let canvas = chart::draw(&layout, &series, &labels);
    let png = canvas.encode_png()?;
    out.write_all(&png).map_err(|e| out.error(e))?;
    report.bytes = out.commit()?;
    Ok(report)
}

/// Reads the range through the book engine into one aggregate per pixel column.
async fn read_series(
    client: &tokio_postgres::Client,
    selection: &source::Selection,
    request: &PlotRequest,
    depth_levels: usize,
    columns: usize,
    report: &mut PlotReport,
) -> Result<Series, PlotError> {
    let symbol = &request.symbol;
    // The coverage model says which instants have a book; a carried book also stops at a gap
    // that began after the message it came from (received at `last`).
    let coverage = source::coverage(client, &selection.collector, symbol).await?;
    let gap_at = |last: Timestamp, at: Timestamp| {
        !coverage.covers(at) || coverage.next_gap(last, at).is_some()
    };
    // From the stream verified at `from` (or the first one after it).
    let start = BookCursor::find_start_covered(client, symbol, &coverage, selection.from).await?;
    let mut builder = SeriesBuilder::new(selection.from, selection.to, columns);
    if let Some(start) = start {
        let mut cursor =
            BookCursor::open(client, symbol, start, selection.to.add_nanos(-1)).await?;
        if cursor.is_synced() {
            // A book state: the book is there before the first message.
            let s = sample(cursor.book(), depth_levels);
            let at = cursor.start().timestamp;
            builder.step(at, at, Some(s), &gap_at);
        }
        while let Some(step) = cursor.next().await? {
            report.messages += 1;
            let verified = step.verified == Some(true);
            report.verified += u64::from(verified);
            let s = verified.then(|| sample(step.book, depth_levels));
            builder.step(step.timestamp, step.received_at, s, &gap_at);
        }
    }
    let mut series = builder.finish(&gap_at);
    // Every column a gap reaches into is shaded, even one no message fell in.
    for g in coverage.gaps_in(selection.from, selection.to) {
        series.mark_gap(
            g.start.unwrap_or(selection.from),
            g.end.unwrap_or(selection.to),
        );
    }
    Ok(series)
}

/// The plotted values of a book.
fn sample(book: &OrderBook, depth_levels: usize) -> Sample {
    let bid = book.best_bid().map(|l| to_f64(l.price));
    let ask = book.best_ask().map(|l| to_f64(l.price));
    let depth = |levels: &mut dyn Iterator<Item = crate::book::PriceLevel>| {
        levels
            .take(depth_levels)
            .try_fold(Decimal::ZERO, |sum, l| sum.checked_add(l.qty))
            .map(to_f64)
    };
    let mut values = [None; SERIES];
    values[series::MID] = bid.zip(ask).map(|(b, a)| (b + a) / 2.0);
    values[series::SPREAD] = book.spread().map(to_f64);
    values[series::BID_DEPTH] = depth(&mut book.bids());
    values[series::ASK_DEPTH] = depth(&mut book.asks());
    Sample { values }
}

/// A decimal as a float, only to place a pixel.
fn to_f64(d: Decimal) -> f64 {
    d.mantissa() as f64 / 10f64.powi(i32::from(d.scale()))
}

fn labels(request: &PlotRequest, collector: &str, report: &PlotReport) -> Labels {
    let (base, quote) = request
        .symbol
        .split_once('/')
        .unwrap_or((request.symbol.as_str(), ""));
    let unit = |u: &str| {
        if u.is_empty() {
            String::new()
        } else {
            format!(" ({u})")
        }
    };
    let from = request.from.to_string();
    let to = request.to.to_string();
    let short = |t: &str| t.get(0..19).unwrap_or(t).replace('T', " ");
    let (from_s, to_s) = (short(&from), short(&to));
    let range = if from_s.get(0..10) == to_s.get(0..10) {
        format!("{from_s} to {} UTC", to_s.get(11..).unwrap_or(&to_s))
    } else {
        format!("{from_s} to {to_s} UTC")
    };
    Labels {
        title: format!("{} on Kraken, {range}", request.symbol),
        subtitle: format!(
            "collector {collector}: {} book messages, {} with a verified checksum",
            report.messages, report.verified
        ),
        panels: [
            format!("mid price{}", unit(quote)),
            format!("spread{}", unit(quote)),
            format!(
                "depth, top {} levels of each side{}",
                report.depth_levels,
                unit(base)
            ),
        ],
        time_axis: format!("time (UTC), from {from_s} to {to_s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn samples_sum_the_top_levels_exactly() {
        let mut book = OrderBook::new(25);
        book.apply_snapshot(
            [("100.0", "0.1"), ("99.5", "0.2"), ("99.0", "5")].map(|(p, q)| (d(p), d(q))),
            [("100.5", "0.3"), ("101.0", "0.00000001")].map(|(p, q)| (d(p), d(q))),
        )
        .unwrap();
        let s = sample(&book, 2);
        assert_eq!(s.values[series::MID], Some(100.25));
        assert_eq!(s.values[series::SPREAD], Some(0.5));
        // 0.1 + 0.2 exactly (0.30000000000000004 if summed as floats).
        assert_eq!(s.values[series::BID_DEPTH], Some(0.3));
        assert_eq!(s.values[series::ASK_DEPTH], Some(0.30000001));
        let empty = sample(&OrderBook::new(10), 10);
        assert_eq!(empty.values[series::MID], None);
        assert_eq!(empty.values[series::BID_DEPTH], Some(0.0));
    }
}
