//! Exports: recorded books out of TimescaleDB into files that research tools read, with every
//! price and quantity exact.
//!
//! Three kinds, each in CSV (optionally zstd-compressed) or Parquet:
//! - [`Kind::Incremental`]: tardis.dev's `incremental_book_L2` layout
//!   (`exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount`), one row per level
//!   change in received order (`seq`, then `ordinal`), which nautilus_trader's and hftbacktest's
//!   tardis loaders read. See [`incremental`] for how the file alone rebuilds the exact book;
//! - [`Kind::Snapshots`]: tardis's `book_snapshot_{N}` layout at a fixed interval, from the book
//!   rebuilt and checksum-verified by [`crate::readback::BookCursor`]; see [`snapshots`];
//! - [`Kind::Messages`]: the stored messages themselves, with their verdicts; see [`messages`].
//!
//! Ranges are on Kraken's clock (`timestamp`): `from` inclusive, `to` exclusive. Times are written
//! as microseconds since the epoch (UTC), as tardis does. All symbols of an export go to one file
//! (tardis's files hold several symbols too; the `symbol` column tells them apart), read from one
//! collector's record (the only one that recorded them, or `--collector`).
//!
//! What must always hold:
//! - no value passes through a float: decimals are copied from `numeric` (or from the book engine)
//!   to the file's text or DECIMAL mantissa;
//! - a file appears complete or not at all: it is written to a temporary file beside the target,
//!   synced, then renamed over it;
//! - every bad request (time, symbol, range, output) fails before the database is read at length,
//!   with one line that says what to do.

pub mod csv;
pub mod incremental;
pub mod messages;
pub mod parquet;
pub mod snapshots;
pub mod source;
pub mod table;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::TempPath;
use tokio_postgres::Client;

pub use crate::readback::Gaps;
pub use source::{Selection, SourceError};
pub use table::{Cell, Column, ColumnKind, Scales};

use self::csv::CsvWriter;
use self::parquet::{ParquetFileError, ParquetWriter};
use crate::readback::ReadbackError;
use crate::store::{DbTarget, StoreError};
use crate::time::Timestamp;

/// The exchange name in the `exchange` column.
pub const EXCHANGE: &str = "kraken";

/// The largest snapshot depth (Kraken's deepest book).
pub const MAX_SNAPSHOT_DEPTH: usize = 1000;

/// The most symbols in one snapshot export (each is read on its own database connection).
pub const MAX_SNAPSHOT_SYMBOLS: usize = 32;

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
    /// The format a file name implies: `.parquet`, `.csv.zst`, `.csv` (`None` otherwise).
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
}

/// Where the export goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A file (replaced atomically).
    File(PathBuf),
    /// Standard output (CSV only).
    Stdout,
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
    /// The collector whose record to read (`None`: the only one that recorded the range).
    pub collector: Option<String>,
    /// What to export.
    pub kind: Kind,
    /// The file format.
    pub format: Format,
    /// Incremental only: write the stored levels and nothing else (no initial snapshot, no
    /// implied deletions).
    pub stored_only: bool,
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// The collector whose record was read.
    pub collector: String,
    /// Rows written (header aside).
    pub rows: u64,
    /// Stored messages read.
    pub messages: u64,
    /// Incremental: stored levels written.
    pub stored_levels: u64,
    /// Incremental: levels of the initial snapshots (the book at `from`).
    pub initial_levels: u64,
    /// Incremental: deletions written for levels Kraken drops past the subscribed depth.
    pub implied_deletions: u64,
    /// Incremental: deletions written before a snapshot that follows a snapshot, so that a
    /// consumer starts it from an empty book.
    pub reset_deletions: u64,
    /// Incremental: subscriptions whose depth is not recorded (no implied deletions for them).
    pub unknown_depth: u64,
    /// Incremental: symbols whose book at `from` was not known (in a gap, or not recorded yet)
    /// and whose first rows are updates: a consumer skips them until the symbol's next snapshot.
    pub no_initial_book: Vec<String>,
    /// Snapshots: instants asked for (per symbol, summed).
    pub intervals: u64,
    /// Snapshots: instants skipped because the book was in a gap (or not recorded yet).
    pub skipped_intervals: u64,
    /// Bytes written.
    pub bytes: u64,
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
    /// The output cannot be written.
    #[error("cannot write {path}: {source}")]
    Output {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The Parquet writer failed.
    #[error("writing {path}: {source}")]
    Parquet {
        /// The file.
        path: String,
        /// Why.
        source: ParquetFileError,
    },
}

pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ExportError {
    move |source| {
        ExportError::Store(StoreError::Db {
            context: context.to_owned(),
            source,
        })
    }
}

/// Progress: how far into the range (microseconds of `total`), and rows written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Microseconds of the range covered.
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
        (self.report)(Progress {
            done,
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
    Csv(CsvWriter<Out>),
    Parquet(ParquetWriter<File>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("path", &self.path).finish()
    }
}

pub(crate) enum Out {
    Plain(BufWriter<File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
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
    /// Ends the stream; the file, when there is one.
    fn finish(self) -> io::Result<Option<File>> {
        match self {
            Out::Plain(w) => w.into_inner().map(Some).map_err(|e| e.into_error()),
            Out::Zstd(w) => w
                .finish()?
                .into_inner()
                .map(Some)
                .map_err(|e| e.into_error()),
            Out::Stdout(mut w) => w.flush().map(|()| None),
        }
    }
}

/// The output file, open before any database work so that an unwritable path fails first.
struct Target {
    dest: Destination,
    /// The temporary file beside the destination, renamed over it when complete.
    temp: Option<(File, TempPath)>,
}

impl Target {
    fn open(dest: &Destination) -> Result<Target, ExportError> {
        let Destination::File(path) = dest else {
            return Ok(Target {
                dest: dest.clone(),
                temp: None,
            });
        };
        let out_err = |source: io::Error| ExportError::Output {
            path: path.display().to_string(),
            source,
        };
        if path.is_dir() {
            return Err(out_err(io::Error::other(
                "it is a directory: give a file name, e.g. -o book.csv",
            )));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "export".into());
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".part")
            .tempfile_in(&dir)
            .map_err(|e| {
                if dir.is_dir() {
                    out_err(e)
                } else {
                    out_err(io::Error::other(format!(
                        "the directory {} does not exist",
                        dir.display()
                    )))
                }
            })?;
        Ok(Target {
            dest: dest.clone(),
            temp: Some(temp.into_parts()),
        })
    }

    fn path_text(&self) -> String {
        match &self.dest {
            Destination::File(p) => p.display().to_string(),
            Destination::Stdout => "standard output".into(),
        }
    }

    fn sink(
        &mut self,
        format: Format,
        columns: &[Column],
        scales: &Scales,
        metadata: Vec<(String, String)>,
    ) -> Result<Sink, ExportError> {
        let path = self.path_text();
        let out_err = |source: io::Error| ExportError::Output {
            path: path.clone(),
            source,
        };
        let file = match &self.temp {
            Some((f, _)) => Some(f.try_clone().map_err(out_err)?),
            None => None,
        };
        let writer = match (format, file) {
            (Format::Parquet, Some(f)) => {
                Writer::Parquet(ParquetWriter::new(f, columns, scales, metadata).map_err(
                    |source| ExportError::Parquet {
                        path: path.clone(),
                        source,
                    },
                )?)
            }
            (Format::Csv, Some(f)) => Writer::Csv(
                CsvWriter::new(Out::Plain(BufWriter::with_capacity(1 << 16, f)), columns)
                    .map_err(out_err)?,
            ),
            (Format::CsvZstd, Some(f)) => {
                let enc =
                    zstd::stream::write::Encoder::new(BufWriter::new(f), 3).map_err(out_err)?;
                Writer::Csv(CsvWriter::new(Out::Zstd(enc), columns).map_err(out_err)?)
            }
            (Format::Csv, None) => Writer::Csv(
                CsvWriter::new(
                    Out::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
                    columns,
                )
                .map_err(out_err)?,
            ),
            (_, None) => {
                return Err(ExportError::Invalid(
                    "only CSV goes to standard output: give -o FILE.parquet or -o FILE.csv.zst"
                        .into(),
                ));
            }
        };
        Ok(Sink { writer, path })
    }

    /// Completes the file: flush, sync, rename over the destination. Returns its size.
    fn commit(self, sink: Sink) -> Result<u64, ExportError> {
        let path = self.path_text();
        let out_err = |source: io::Error| ExportError::Output {
            path: path.clone(),
            source,
        };
        let file = match sink.writer {
            Writer::Csv(w) => w.finish().map_err(out_err)?.finish().map_err(out_err)?,
            Writer::Parquet(w) => Some(w.finish().map_err(|source| ExportError::Parquet {
                path: path.clone(),
                source,
            })?),
        };
        let (Some(file), Some((_, temp)), Destination::File(dest)) = (file, self.temp, &self.dest)
        else {
            return Ok(0);
        };
        file.sync_all().map_err(out_err)?;
        let bytes = file.metadata().map_err(out_err)?.len();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The temporary file is private (0600); an export is an ordinary file.
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644))
                .map_err(out_err)?;
        }
        temp.persist(dest).map_err(|e| out_err(e.error))?;
        Ok(bytes)
    }
}

impl Sink {
    pub(crate) fn write_row(&mut self, cells: &[Cell<'_>]) -> Result<(), ExportError> {
        match &mut self.writer {
            Writer::Csv(w) => w.write_row(cells).map_err(|source| ExportError::Output {
                path: self.path.clone(),
                source,
            }),
            Writer::Parquet(w) => w.write_row(cells).map_err(|source| ExportError::Parquet {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// Runs an export: checks the request, reads the range, writes the file. `progress` is called
/// every few thousand rows.
pub async fn export(
    target: &DbTarget,
    request: &ExportRequest,
    dest: &Destination,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<ExportReport, ExportError> {
    check_request(request, dest)?;
    let mut out = Target::open(dest)?;
    let client = target.connect("krakenbook export").await?;
    let selection = source::select(
        &client,
        &request.symbols,
        request.from,
        request.to,
        request.collector.as_deref(),
    )
    .await?;
    let mut ticker = Ticker::new(request.from, request.to, progress);
    let metadata = vec![
        ("krakenbook.kind".to_owned(), request.kind.name().to_owned()),
        ("krakenbook.symbols".to_owned(), selection.symbols.join(",")),
        ("krakenbook.from".to_owned(), request.from.to_string()),
        ("krakenbook.to".to_owned(), request.to.to_string()),
        (
            "krakenbook.collector".to_owned(),
            selection.collector.clone(),
        ),
    ];
    let mut report = ExportReport {
        collector: selection.collector.clone(),
        ..ExportReport::default()
    };
    let sink = match request.kind {
        Kind::Incremental => {
            let plan = incremental::plan(&client, &selection, request).await?;
            let scales = if request.format == Format::Parquet {
                plan.scales(&client).await?
            } else {
                Scales::default()
            };
            let mut sink = out.sink(request.format, &incremental::columns(), &scales, metadata)?;
            plan.write(target, &mut sink, &mut ticker, &mut report)
                .await?;
            sink
        }
        Kind::Snapshots {
            depth,
            interval_micros,
        } => {
            let plan = snapshots::plan(target, &client, &selection, depth, interval_micros).await?;
            let scales = if request.format == Format::Parquet {
                plan.scales(&client).await?
            } else {
                Scales::default()
            };
            let mut sink = out.sink(request.format, &plan.columns(), &scales, metadata)?;
            plan.write(&mut sink, &mut ticker, &mut report).await?;
            sink
        }
        Kind::Messages => {
            let mut sink = out.sink(
                request.format,
                &messages::columns(),
                &Scales::default(),
                metadata,
            )?;
            messages::write(&client, &selection, &mut sink, &mut ticker, &mut report).await?;
            sink
        }
    };
    ticker.done();
    report.bytes = out.commit(sink)?;
    Ok(report)
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

/// Parses an interval: a whole number and a unit, `us`, `ms`, `s`, `m`, `h` or `d` (`1s`,
/// `100ms`, `5m`); microseconds.
pub fn parse_interval(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = t.split_at(digits);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("invalid interval {text:?}: expected e.g. 1s, 100ms, 5m"))?;
    let per = match unit.trim() {
        "us" | "µs" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" | "min" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => {
            return Err(format!(
                "invalid interval {text:?}: the unit must be us, ms, s, m, h or d (e.g. 1s)"
            ));
        }
    };
    n.checked_mul(per)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("invalid interval {text:?}: must be above zero"))
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
            "SELECT coalesce(max(scale(price)), 0), coalesce(max(scale(quantity)), 0)
               FROM kraken_orderbook_entries
              WHERE symbol = ANY($1) AND collector = $2 AND \"timestamp\" >= $3 AND \"timestamp\" < $4",
            &[&selection.symbols, &selection.collector, &since, &selection.to],
        )
        .await
        .map_err(db("finding the decimal scales"))?;
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
    fn intervals_parse_with_units_and_bad_ones_say_why() {
        let cases = [
            ("1s", Ok(1_000_000)),
            ("100ms", Ok(100_000)),
            ("250us", Ok(250)),
            ("5m", Ok(300_000_000)),
            ("1h", Ok(3_600_000_000)),
            ("1d", Ok(86_400_000_000)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_interval(text), want, "{text}");
        }
        for bad in ["", "s", "1", "1.5s", "0s", "-1s", "1w"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
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
