//! Exports: recorded books out of TimescaleDB into files that research tools read, with every
//! price and quantity exact.
//!
//! Three kinds, each in CSV (optionally zstd-compressed) or Parquet:
//! - [`Kind::Incremental`]: tardis.dev's `incremental_book_L2` layout
//!   (`exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount`), one row per level
//!   change in received order (`seq`, then `ordinal`), which nautilus_trader's and hftbacktest's
//!   tardis loaders read, following the coverage model: a book where coverage starts, the
//!   verified stream's rows, every level deleted where a gap starts. See [`incremental`] for how
//!   the file alone rebuilds the exact book (or an empty one in a gap) in each of them
//!   ([`consumers`] models them);
//! - [`Kind::Snapshots`]: tardis's `book_snapshot_{N}` layout at a fixed interval, from the book
//!   rebuilt and checksum-verified by [`crate::readback::BookCursor`]; see [`snapshots`];
//! - [`Kind::Messages`]: the stored messages themselves, with their verdicts; see [`messages`].
//!
//! Ranges are on Kraken's clock (`timestamp`): `from` inclusive, `to` exclusive. Times are written
//! as microseconds since the epoch (UTC), as tardis does. The symbols of an export go to one file
//! (tardis's files hold several symbols too; the `symbol` column tells them apart), or to one file
//! each when the output path holds [`SYMBOL_PLACEHOLDER`] (hftbacktest reads one symbol per
//! file), all read from one collector's record (the only one that recorded them, or
//! `--collector`). Beside each file, `<file>.precision.json` gives each pair's price and quantity
//! precision as recorded ([`recorded`]), which nautilus_trader needs to build its instruments.
//!
//! What must always hold:
//! - no value passes through a float: decimals are copied from `numeric` (or from the book engine)
//!   to the file's text or DECIMAL mantissa;
//! - a file appears complete or not at all, and a device or FIFO is written in place and never
//!   replaced ([`crate::output`]); the files of one export are committed together at its end;
//! - the format is the one the name says (`.csv`, `.csv.zst`, `.parquet`): a name that says
//!   another, or none, needs `--format`, and one that contradicts `--format` is refused;
//! - every bad request (time, symbol, range, output) fails before the database is read at length,
//!   with one line that says what to do.

pub mod consumers;
pub mod csv;
pub mod incremental;
pub mod messages;
pub mod parquet;
pub mod snapshots;
pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tokio_postgres::Client;

pub use crate::output::OutputError;
pub use crate::recorded::{self, Recorded};
pub use crate::source::{self, MAX_SNAPSHOT_DEPTH, Selection, SourceError};
pub use table::{Cell, Column, ColumnKind, Scales};

use self::csv::CsvWriter;
use self::parquet::{ParquetFileError, ParquetWriter};
use crate::book::Precision;
use crate::output::{OutputFile, Placement};
use crate::readback::ReadbackError;
use crate::store::{DbTarget, StoreError};
use crate::time::Timestamp;

/// The exchange name in the `exchange` column.
pub const EXCHANGE: &str = "kraken";

/// The most symbols in one snapshot export (each is read on its own database connection).
pub const MAX_SNAPSHOT_SYMBOLS: usize = 32;

/// In an output path, the symbol's place: one file per symbol (`l2_{symbol}.csv`).
pub const SYMBOL_PLACEHOLDER: &str = "{symbol}";

/// What is appended to a file's path for its precision file.
pub const PRECISION_SUFFIX: &str = ".precision.json";

/// What to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Level changes, tardis `incremental_book_L2`.
    Incremental,
    /// The book every `interval_micros`, `depth` levels a side, tardis `book_snapshot_{depth}`.
    Snapshots {
        /// Levels per side.
        depth: usize,
        /// Microseconds between snapshots.
        interval_micros: i64,
    },
    /// The stored messages.
    Messages,
}

impl Kind {
    /// The kind's name (`incremental`, `snapshots`, `messages`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Incremental => "incremental",
            Kind::Snapshots { .. } => "snapshots",
            Kind::Messages => "messages",
        }
    }
}

/// The file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// CSV.
    Csv,
    /// CSV compressed with zstd (`.csv.zst`; pandas reads it directly).
    CsvZstd,
    /// Parquet (zstd-compressed pages).
    Parquet,
}

impl Format {
    /// The format a file name implies: `.parquet` (or `.pq`), `.csv.zst`, `.csv` (`None`
    /// otherwise).
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".parquet") || name.ends_with(".pq") {
            Some(Format::Parquet)
        } else if name.ends_with(".csv.zst") {
            Some(Format::CsvZstd)
        } else if name.ends_with(".csv") {
            Some(Format::Csv)
        } else {
            None
        }
    }

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::CsvZstd => "csv.zst",
            Format::Parquet => "parquet",
        }
    }

    /// The format to write to `dest`: `given` (`--format`), else the one its name says. A name
    /// that says none is refused unless `--format` is given (a device or FIFO whose name has no
    /// extension, like standard output, is written as CSV); a name that says another format than
    /// `--format` is refused.
    pub fn for_output(given: Option<Format>, dest: &Destination) -> Result<Format, ExportError> {
        let Destination::File(path) = dest else {
            return Ok(given.unwrap_or(Format::Csv));
        };
        crate::output::check_kind(path)?;
        let named = Format::from_path(path);
        match (given, named) {
            (Some(g), Some(n)) if g != n => Err(ExportError::Invalid(format!(
                "{} is named as {} but --format is {}: name the file for the format, or drop --format",
                path.display(),
                n.name(),
                g.name()
            ))),
            (Some(g), _) => Ok(g),
            (None, Some(n)) => Ok(n),
            (None, None) if path.extension().is_none() && crate::output::writes_in_place(path) => {
                Ok(Format::Csv)
            }
            (None, None) => Err(ExportError::Invalid(format!(
                "cannot tell the format from the name {}: name it .csv, .csv.zst or .parquet, or give --format csv, csv.zst or parquet",
                path.display()
            ))),
        }
    }
}

/// Where the export goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A file (replaced atomically), or a device or FIFO (written in place); one file per
    /// symbol when the path holds [`SYMBOL_PLACEHOLDER`].
    File(PathBuf),
    /// Standard output (CSV only).
    Stdout,
}

/// The text that stands for `symbol` in a file name: `/` becomes `-` (`BTC/USD` gives
/// `BTC-USD`), and any other character but letters, digits, `.`, `_` and `-` becomes `_`.
pub fn symbol_in_file_name(symbol: &str) -> String {
    symbol
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') => c,
            _ => '_',
        })
        .collect()
}

/// The files of an export: each with the symbols it holds. One file for all the symbols, or,
/// when the path holds [`SYMBOL_PLACEHOLDER`], one per symbol, in the order given.
pub fn outputs(
    symbols: &[String],
    dest: &Destination,
) -> Result<Vec<(Vec<String>, Destination)>, ExportError> {
    let Destination::File(path) = dest else {
        return Ok(vec![(symbols.to_vec(), dest.clone())]);
    };
    let Some(text) = path.to_str().filter(|t| t.contains(SYMBOL_PLACEHOLDER)) else {
        return Ok(vec![(symbols.to_vec(), dest.clone())]);
    };
    let mut out: Vec<(Vec<String>, Destination)> = Vec::new();
    for symbol in symbols {
        let file = PathBuf::from(text.replace(SYMBOL_PLACEHOLDER, &symbol_in_file_name(symbol)));
        if let Some((other, _)) = out
            .iter()
            .find(|(_, d)| *d == Destination::File(file.clone()))
        {
            return Err(ExportError::Invalid(format!(
                "{} and {symbol} would both be written to {}: export them separately",
                other.join(", "),
                file.display()
            )));
        }
        out.push((vec![symbol.clone()], Destination::File(file)));
    }
    Ok(out)
}

/// An export to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportRequest {
    /// The symbols (`BTC/USD`).
    pub symbols: Vec<String>,
    /// Range start (inclusive), Kraken's clock.
    pub from: Timestamp,
    /// Range end (exclusive).
    pub to: Timestamp,
    /// The collector whose record to read (`None`: every collector that recorded the range,
    /// merged by the incremental export; the other kinds and `--stored-only` need it to be one).
    pub collector: Option<String>,
    /// What to export.
    pub kind: Kind,
    /// The file format.
    pub format: Format,
    /// Incremental only: write every stored level in range and nothing else (no books where
    /// coverage starts, no implied deletions, resets, gap deletions or snapshot ends).
    pub stored_only: bool,
}

/// A file an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    /// Its path, as given (the placeholder replaced).
    pub path: PathBuf,
    /// The symbols it holds.
    pub symbols: Vec<String>,
    /// Bytes written.
    pub bytes: u64,
    /// Written in place (a device or FIFO) rather than replaced whole.
    pub in_place: bool,
    /// Its precision file, when one was written beside it.
    pub precision_file: Option<PathBuf>,
}

/// A snapshot depth beyond what was recorded, and what was written instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthClamp {
    /// `--depth`.
    pub asked: usize,
    /// The deepest book recorded for the file's symbols in the range.
    pub recorded: usize,
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// The collector whose record was read (`A+B` when several were merged).
    pub collector: String,
    /// The files written (none for standard output).
    pub files: Vec<FileReport>,
    /// Rows written (header aside).
    pub rows: u64,
    /// Stored messages read.
    pub messages: u64,
    /// Incremental: stored levels written.
    pub stored_levels: u64,
    /// Incremental: levels of the books written where coverage starts (at `from`, after each
    /// gap) or the stream followed changes.
    pub opening_levels: u64,
    /// Incremental: deletions written for levels Kraken drops past the subscribed depth.
    pub implied_deletions: u64,
    /// Incremental: deletions written before each snapshot, for every level still held, so
    /// that every consumer starts it from an empty book.
    pub reset_deletions: u64,
    /// Incremental: snapshot ends written (a snapshot's last level again, as an update).
    pub snapshot_ends: u64,
    /// Incremental: deletions written where a gap starts, for every level held, so that every
    /// consumer holds an empty book through the gap.
    pub gap_deletions: u64,
    /// Incremental: subscriptions whose depth is not recorded (no implied deletions for them).
    pub unknown_depth: u64,
    /// Incremental: each symbol and the first instant of the range where the coverage model
    /// verifies its book (`None`: nowhere in the range); from there on the file describes it.
    pub covered_from: Vec<(String, Option<Timestamp>)>,
    /// Incremental: instants where a symbol's coverage starts (at `from` or later, and after
    /// each gap), each written as the book at that instant or its stored snapshot.
    pub coverage_starts: u64,
    /// Incremental: gaps whose start was written as a deletion of every level held.
    pub gaps_cleared: u64,
    /// Incremental: books written where the stream followed changed without a gap (another
    /// connection or collector verified where the one followed stopped being).
    pub stream_switches: u64,
    /// Incremental: stored messages in range left out: outside the coverage (the updates of an
    /// unverified book after a mismatch, before coverage starts, ...).
    pub messages_left_out: u64,
    /// Incremental: pieces of coverage left out because the book at their start could not be
    /// rebuilt and verified from the stored records (the coverage model and the records
    /// disagree; none is expected).
    pub unverified_starts: u64,
    /// Snapshots: instants asked for (per symbol, summed).
    pub intervals: u64,
    /// Snapshots: instants skipped because the book was in a gap (or not recorded yet).
    pub skipped_intervals: u64,
    /// Snapshots: `--depth` was deeper than the recorded books (per file, the first).
    pub depth_clamped: Option<DepthClamp>,
    /// Each pair's precision as recorded, in the order given.
    pub precision: Vec<(String, Precision)>,
    /// Pairs whose instrument frames were not recorded: their precision is the largest number
    /// of decimals of their stored values in the range.
    pub precision_from_values: Vec<String>,
    /// Bytes written, all files together.
    pub bytes: u64,
}

/// The incremental export's coverage, for its summary line: where each symbol is covered from,
/// the coverage starts, the gaps cleared and the messages left out (`from`: the range's start).
pub fn coverage_summary(report: &ExportReport, from: Timestamp) -> String {
    let mut text = String::new();
    let at_from: Vec<&str> = report
        .covered_from
        .iter()
        .filter(|(_, c)| *c == Some(from))
        .map(|(s, _)| s.as_str())
        .collect();
    if !at_from.is_empty() {
        text.push_str(&format!("; covered from --from: {}", at_from.join(", ")));
    }
    for (symbol, covered) in &report.covered_from {
        match covered {
            Some(c) if *c == from => {}
            Some(c) => text.push_str(&format!("; {symbol} covered from {c}")),
            None => text.push_str(&format!("; {symbol} not covered anywhere in the range")),
        }
    }
    text.push_str(&format!(
        "; {} coverage starts, {} gaps cleared ({} deletions), {} messages outside the coverage left out",
        report.coverage_starts, report.gaps_cleared, report.gap_deletions, report.messages_left_out
    ));
    if report.stream_switches > 0 {
        text.push_str(&format!(
            "; {} stream switches (the book of another stream where the one followed stopped being verified)",
            report.stream_switches
        ));
    }
    if report.unverified_starts > 0 {
        text.push_str(&format!(
            "; {} pieces of coverage left out: their book could not be rebuilt and verified from the stored records",
            report.unverified_starts
        ));
    }
    text
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The request cannot be run as given.
    #[error("{0}")]
    Invalid(String),
    /// The selection was refused (symbol, range, collector).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Rebuilding a book failed.
    #[error(transparent)]
    Readback(#[from] ReadbackError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output cannot be opened, written or committed.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The Parquet writer failed.
    #[error("writing {path}: {source}")]
    Parquet {
        /// The file.
        path: String,
        /// Why.
        source: ParquetFileError,
    },
}

impl ExportError {
    /// Whether the reader of the output (standard output, a FIFO) went away before the end.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ExportError::Output(e) if e.is_broken_pipe())
    }
}

/// Progress: how far into the range (microseconds of `total`), and rows written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Microseconds of the range covered (over all the files, when there are several).
    pub done: u64,
    /// The range's length in microseconds.
    pub total: u64,
    /// Rows written so far.
    pub rows: u64,
}

/// Reports progress every so many rows.
pub(crate) struct Ticker<'a> {
    from: i64,
    total: u64,
    rows: u64,
    every: u64,
    /// The file being written, of how many: each covers the whole range.
    part: (u64, u64),
    report: &'a mut (dyn FnMut(Progress) + Send),
}

impl<'a> Ticker<'a> {
    pub(crate) fn new(
        from: Timestamp,
        to: Timestamp,
        report: &'a mut (dyn FnMut(Progress) + Send),
    ) -> Ticker<'a> {
        Ticker {
            from: from.unix_micros(),
            total: u64::try_from(to.unix_micros() - from.unix_micros()).unwrap_or(0),
            rows: 0,
            every: 4096,
            part: (0, 1),
            report,
        }
    }

    /// `rows` written so far, the last at `at`.
    pub(crate) fn rows(&mut self, rows: u64, at: Timestamp) {
        let before = self.rows / self.every;
        self.rows = rows;
        if self.rows / self.every != before {
            self.at(at);
        }
    }

    /// Reports the position `at`.
    pub(crate) fn at(&mut self, at: Timestamp) {
        let done = u64::try_from(at.unix_micros() - self.from)
            .unwrap_or(0)
            .min(self.total);
        let (i, n) = self.part;
        (self.report)(Progress {
            done: (i * self.total + done) / n.max(1),
            total: self.total,
            rows: self.rows,
        });
    }

    pub(crate) fn done(&mut self) {
        (self.report)(Progress {
            done: self.total,
            total: self.total,
            rows: self.rows,
        });
    }
}

/// The open output: rows go in, a finished file (or stdout) comes out.
pub(crate) struct Sink {
    writer: Writer,
    /// The destination, for error messages.
    path: String,
}

enum Writer {
    // Both boxed: each is a few hundred bytes, and a sink is moved around.
    Csv(Box<CsvWriter<Out>>),
    Parquet(Box<ParquetWriter<OutputFile>>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("path", &self.path).finish()
    }
}

/// Where CSV text goes.
pub(crate) enum Out {
    /// The `csv` crate buffers: its chunks go straight to the file.
    Plain(OutputFile),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<OutputFile>>),
    Stdout(BufWriter<io::Stdout>),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Out::Plain(w) => w.write(buf),
            Out::Zstd(w) => w.write(buf),
            Out::Stdout(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Out::Plain(w) => w.write_all(buf),
            Out::Zstd(w) => w.write_all(buf),
            Out::Stdout(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Out::Plain(w) => w.flush(),
            Out::Zstd(w) => w.flush(),
            Out::Stdout(w) => w.flush(),
        }
    }
}

impl Out {
    /// Ends the stream; the output file, when there is one.
    fn finish(self) -> io::Result<Option<OutputFile>> {
        match self {
            Out::Plain(f) => Ok(Some(f)),
            Out::Zstd(w) => w
                .finish()?
                .into_inner()
                .map(Some)
                .map_err(|e| e.into_error()),
            Out::Stdout(mut w) => w.flush().map(|()| None),
        }
    }
}

/// An output, opened before any database work so that an unwritable path fails first.
#[derive(Debug)]
enum Target {
    File(OutputFile),
    Stdout,
}

impl Target {
    fn open(dest: &Destination) -> Result<Target, ExportError> {
        Ok(match dest {
            Destination::File(path) => Target::File(OutputFile::create(path)?),
            Destination::Stdout => Target::Stdout,
        })
    }

    fn path_text(&self) -> String {
        match self {
            Target::File(f) => f.path().display().to_string(),
            Target::Stdout => "standard output".into(),
        }
    }

    /// The writer of `format` over this output (the header written).
    fn sink(
        self,
        format: Format,
        columns: &[Column],
        scales: &Scales,
        metadata: Vec<(String, String)>,
    ) -> Result<Sink, ExportError> {
        let path = self.path_text();
        let out_err = |source: io::Error| {
            ExportError::Output(OutputError {
                path: path.clone(),
                source,
            })
        };
        let writer = match (format, self) {
            (Format::Parquet, Target::File(f)) => Writer::Parquet(Box::new(
                ParquetWriter::new(f, columns, scales, metadata).map_err(|source| {
                    ExportError::Parquet {
                        path: path.clone(),
                        source,
                    }
                })?,
            )),
            (Format::Csv, Target::File(f)) => Writer::Csv(Box::new(
                CsvWriter::new(Out::Plain(f), columns).map_err(out_err)?,
            )),
            (Format::CsvZstd, Target::File(f)) => {
                let enc =
                    zstd::stream::write::Encoder::new(BufWriter::with_capacity(1 << 16, f), 3)
                        .map_err(out_err)?;
                Writer::Csv(Box::new(
                    CsvWriter::new(Out::Zstd(enc), columns).map_err(out_err)?,
                ))
            }
            (Format::Csv, Target::Stdout) => Writer::Csv(Box::new(
                CsvWriter::new(
                    Out::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
                    columns,
                )
                .map_err(out_err)?,
            )),
            (_, Target::Stdout) => {
                return Err(ExportError::Invalid(
                    "only CSV goes to standard output: give -o FILE.parquet or -o FILE.csv.zst"
                        .into(),
                ));
            }
        };
        Ok(Sink { writer, path })
    }
}

impl Sink {
    pub(crate) fn write_row(&mut self, cells: &[Cell<'_>]) -> Result<(), ExportError> {
        match &mut self.writer {
            Writer::Csv(w) => w.write_row(cells).map_err(|source| {
                ExportError::Output(OutputError {
                    path: self.path.clone(),
                    source,
                })
            }),
            Writer::Parquet(w) => w.write_row(cells).map_err(|source| ExportError::Parquet {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Ends the file (footer, compression frame, buffers); the output, to commit.
    fn finish(self) -> Result<Option<OutputFile>, ExportError> {
        let path = self.path;
        match self.writer {
            Writer::Csv(w) => (*w)
                .finish()
                .and_then(Out::finish)
                .map_err(|source| ExportError::Output(OutputError { path, source })),
            Writer::Parquet(w) => (*w)
                .finish()
                .map(Some)
                .map_err(|source| ExportError::Parquet { path, source }),
        }
    }
}

/// Runs an export: checks the request, reads the range, writes the files and their precision
/// files. `progress` is called every few thousand rows.
pub async fn export(
    target: &DbTarget,
    request: &ExportRequest,
    dest: &Destination,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<ExportReport, ExportError> {
    check_request(request, dest)?;
    let files = outputs(&request.symbols, dest)?;
    // Every output opened before the database is read at length: an unwritable path fails first.
    let mut opened = Vec::with_capacity(files.len());
    for (_, d) in &files {
        opened.push(Target::open(d)?);
    }
    let client = target.connect("krakenbook export").await?;
    let selection = source::select(
        &client,
        &request.symbols,
        request.from,
        request.to,
        request.collector.as_deref(),
        request.kind == Kind::Incremental && !request.stored_only,
    )
    .await?;
    let mut report = ExportReport {
        collector: selection.collector_label(),
        ..ExportReport::default()
    };
    let mut info: HashMap<String, Recorded> = HashMap::new();
    for symbol in &selection.symbols {
        info.insert(
            symbol.clone(),
            recorded::recorded(&client, &selection, symbol).await?,
        );
    }
    let mut ticker = Ticker::new(request.from, request.to, progress);
    let parts = files.len() as u64;
    let mut finished: Vec<(Vec<String>, OutputFile)> = Vec::new();
    for (i, ((symbols, _), out)) in files.iter().zip(opened).enumerate() {
        ticker.part = (i as u64, parts);
        let part = Selection {
            symbols: symbols.clone(),
            ..selection.clone()
        };
        let sink = write_part(
            target,
            &client,
            request,
            &part,
            &info,
            out,
            &mut ticker,
            &mut report,
        )
        .await?;
        if let Some(file) = sink.finish()? {
            finished.push((symbols.clone(), file));
        }
    }
    ticker.done();

    // Each pair's precision, for the precision files and the summary.
    for symbol in &selection.symbols {
        let precision = match info.get(symbol).and_then(|r| r.precision) {
            Some(p) => p,
            None => {
                let one = Selection {
                    symbols: vec![symbol.clone()],
                    ..selection.clone()
                };
                report.precision_from_values.push(symbol.clone());
                let (price, qty) = stored_scales(&client, &one, selection.from, (0, 0)).await?;
                Precision { price, qty }
            }
        };
        report.precision.push((symbol.clone(), precision));
    }
    // A precision file beside each file replaced whole (a device or FIFO has no "beside").
    let mut precision_files: Vec<Option<OutputFile>> = Vec::new();
    for (symbols, file) in &finished {
        if file.placement() != Placement::Replace {
            precision_files.push(None);
            continue;
        }
        let mut path = file.path().as_os_str().to_owned();
        path.push(PRECISION_SUFFIX);
        let mut out = OutputFile::create(Path::new(&path))?;
        let text = precision_json(
            report
                .precision
                .iter()
                .filter(|(s, _)| symbols.contains(s))
                .map(|(s, p)| (s.as_str(), *p)),
        );
        out.write_all(text.as_bytes()).map_err(|e| out.error(e))?;
        precision_files.push(Some(out));
    }
    // Commit everything together, at the end: a failure above leaves nothing behind.
    for ((symbols, file), precision) in finished.into_iter().zip(precision_files) {
        let path = file.path().to_path_buf();
        let in_place = file.placement() == Placement::InPlace;
        let bytes = file.commit()?;
        let precision_file = match precision {
            Some(p) => {
                let at = p.path().to_path_buf();
                p.commit()?;
                Some(at)
            }
            None => None,
        };
        report.bytes += bytes;
        report.files.push(FileReport {
            path,
            symbols,
            bytes,
            in_place,
            precision_file,
        });
    }
    Ok(report)
}

/// Writes one file's rows (its symbols in `selection`); the open sink, to finish.
#[allow(clippy::too_many_arguments)]
async fn write_part(
    target: &DbTarget,
    client: &Client,
    request: &ExportRequest,
    selection: &Selection,
    info: &HashMap<String, Recorded>,
    out: Target,
    ticker: &mut Ticker<'_>,
    report: &mut ExportReport,
) -> Result<Sink, ExportError> {
    let metadata = vec![
        ("krakenbook.kind".to_owned(), request.kind.name().to_owned()),
        ("krakenbook.symbols".to_owned(), selection.symbols.join(",")),
        ("krakenbook.from".to_owned(), request.from.to_string()),
        ("krakenbook.to".to_owned(), request.to.to_string()),
        (
            "krakenbook.collector".to_owned(),
            selection.collector_label(),
        ),
    ];
    let sink = match request.kind {
        Kind::Incremental => {
            let plan = incremental::plan(client, selection, request).await?;
            let scales = if request.format == Format::Parquet {
                plan.scales(client).await?
            } else {
                Scales::default()
            };
            let mut sink = out.sink(request.format, &incremental::columns(), &scales, metadata)?;
            plan.write(target, &mut sink, ticker, report).await?;
            sink
        }
        Kind::Snapshots {
            depth,
            interval_micros,
        } => {
            let depths: Option<Vec<usize>> = selection
                .symbols
                .iter()
                .map(|s| info.get(s).and_then(|r| r.depth))
                .collect();
            let depth = match depths.and_then(|d| d.into_iter().max()) {
                Some(recorded) if recorded < depth => {
                    report.depth_clamped.get_or_insert(DepthClamp {
                        asked: depth,
                        recorded,
                    });
                    recorded
                }
                _ => depth,
            };
            let plan = snapshots::plan(target, client, selection, depth, interval_micros).await?;
            let scales = if request.format == Format::Parquet {
                plan.scales(client).await?
            } else {
                Scales::default()
            };
            let mut sink = out.sink(request.format, &plan.columns(), &scales, metadata)?;
            plan.write(&mut sink, ticker, report).await?;
            sink
        }
        Kind::Messages => {
            let mut sink = out.sink(
                request.format,
                &messages::columns(),
                &Scales::default(),
                metadata,
            )?;
            messages::write(client, selection, &mut sink, ticker, report).await?;
            sink
        }
    };
    Ok(sink)
}

/// The precision file's text: `{"BTC/USD": {"price_precision": 1, "qty_precision": 8}}`, one
/// entry per pair, sorted by symbol.
pub fn precision_json<'a>(pairs: impl IntoIterator<Item = (&'a str, Precision)>) -> String {
    #[derive(serde::Serialize)]
    struct Entry {
        price_precision: u8,
        qty_precision: u8,
    }
    let map: BTreeMap<&str, Entry> = pairs
        .into_iter()
        .map(|(s, p)| {
            (
                s,
                Entry {
                    price_precision: p.price,
                    qty_precision: p.qty,
                },
            )
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&map).unwrap_or_else(|_| "{}".to_owned());
    text.push('\n');
    text
}

fn check_request(request: &ExportRequest, dest: &Destination) -> Result<(), ExportError> {
    if request.from >= request.to {
        return Err(SourceError::EmptyRange {
            from: request.from,
            to: request.to,
        }
        .into());
    }
    if request.symbols.is_empty() {
        return Err(SourceError::NoSymbol.into());
    }
    if *dest == Destination::Stdout && request.format != Format::Csv {
        return Err(ExportError::Invalid(
            "only CSV goes to standard output: give -o FILE.parquet or -o FILE.csv.zst".into(),
        ));
    }
    if let Kind::Snapshots {
        depth,
        interval_micros,
    } = request.kind
    {
        if request.symbols.len() > MAX_SNAPSHOT_SYMBOLS {
            return Err(ExportError::Invalid(format!(
                "--kind snapshots reads each symbol on its own database connection: export at most {MAX_SNAPSHOT_SYMBOLS} symbols at a time"
            )));
        }
        if depth == 0 || depth > MAX_SNAPSHOT_DEPTH {
            return Err(ExportError::Invalid(format!(
                "--depth {depth}: give 1 to {MAX_SNAPSHOT_DEPTH} levels a side"
            )));
        }
        if interval_micros <= 0 {
            return Err(ExportError::Invalid(
                "--interval must be positive, e.g. 1s or 100ms".into(),
            ));
        }
        if snapshots::boundaries(request.from, request.to, interval_micros)
            .next()
            .is_none()
        {
            return Err(ExportError::Invalid(format!(
                "no multiple of the interval falls between --from {} and --to {}: widen the range or shorten --interval",
                request.from, request.to
            )));
        }
    }
    Ok(())
}

/// The decimal scales of the `price` and `quantity` stored for `symbols` by `collector` from
/// `since` to `to` (at least `floor`).
pub(crate) async fn stored_scales(
    client: &Client,
    selection: &Selection,
    since: Timestamp,
    floor: (u8, u8),
) -> Result<(u8, u8), ExportError> {
    let row = client
        .query_one(
            "SELECT coalesce(max(u.v & 31) FILTER (WHERE u.k % 2 = 1), 0)::int,
                    coalesce(max(u.v & 31) FILTER (WHERE u.k % 2 = 0), 0)::int
               FROM krakenbook_book b
               CROSS JOIN LATERAL unnest(b.levels) WITH ORDINALITY u(v, k)
              WHERE b.symbol = ANY($1)
                AND b.collector_id IN (SELECT id FROM krakenbook_collectors WHERE name = ANY($2))
                AND b.\"timestamp\" >= $3 AND b.\"timestamp\" < $4",
            &[&selection.symbols, &selection.collectors(), &since, &selection.to],
        )
        .await
        .map_err(StoreError::db("finding the decimal scales"))?;
    let scale = |v: i32| u8::try_from(v).unwrap_or(u8::MAX);
    Ok((
        scale(row.get(0)).max(floor.0),
        scale(row.get(1)).max(floor.1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_where_each_symbol_is_covered_from() {
        let from = Timestamp::from_unix_nanos(1_000_000_000);
        let later = from.add_nanos(14_000_000_000);
        let report = ExportReport {
            covered_from: vec![
                ("BTC/USD".into(), Some(from)),
                ("ETH/USD".into(), Some(from)),
                ("MINA/GBP".into(), Some(later)),
                ("DOGE/USD".into(), None),
            ],
            coverage_starts: 4,
            gaps_cleared: 2,
            gap_deletions: 50,
            messages_left_out: 7,
            ..ExportReport::default()
        };
        assert_eq!(
            coverage_summary(&report, from),
            format!(
                "; covered from --from: BTC/USD, ETH/USD; MINA/GBP covered from {later}; DOGE/USD not covered anywhere in the range; 4 coverage starts, 2 gaps cleared (50 deletions), 7 messages outside the coverage left out"
            )
        );
    }

    #[test]
    fn formats_follow_the_file_name() {
        let cases = [
            ("a/b/book.csv", Some(Format::Csv)),
            ("book.CSV.zst", Some(Format::CsvZstd)),
            ("book.parquet", Some(Format::Parquet)),
            ("book.txt", None),
        ];
        for (p, want) in cases {
            assert_eq!(Format::from_path(Path::new(p)), want, "{p}");
        }
    }
}
