//! `krakenbook archive --older-than 7d --to DIR`: closed chunks moved to Parquet files (the cold
//! tier), each verified before it is dropped from the database (see `krakenbook-archive`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use krakenbook::archive::{ArchiveOptions, Location, Stage, archive};
use krakenbook::store::DbTarget;

pub(crate) const ARCHIVE_EXAMPLES: &str = "\
Moves every chunk of the book table whose range ended more than --older-than ago (the database's
clock), with the same time range of the other frames, book states and feed events, into Parquet
files under --to, hive-partitioned for DuckDB and polars:
  book/pair=BTC-USD/date=2026-12-06/part-<chunk>.parquet   (also marks/, other/, states/,
  events/date=.../, connections/date=.../)
In the pair key a '/' of the symbol is written '-', and '-', '%', '_' and any byte that is not a
letter, a digit or '.' are percent-encoded (%2D, %25, %5F): the mapping can be undone, and the
exact symbol is a column. Levels are list<int64> dec64 (mantissa * 32 + scale: exact; the files'
metadata says how to read them).

Each part is written under temporary names, read back and compared with the database, and its
checksums replayed from the archived rows (the same report as from the database's rows is
required); only then are the files renamed and, in one transaction, the chunk dropped, the
range's other rows deleted and the part recorded in krakenbook_archive. Interrupt it at any
point: the range is archived or untouched, and a rerun finishes. Every read command (book,
query, export, plot, replay) reads archived ranges together with the database.

Examples:
  krakenbook archive --older-than 7d --to /srv/krakenbook-archive
  krakenbook archive --older-than 30d --to file:///mnt/cold/kb --limit 10";

/// `krakenbook archive`.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Archive chunks whose range ended at least this long ago (e.g. 7d, 12h, 90s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Duration,
    /// Where the files go: a directory (made if missing) or a file:// URL.
    #[arg(long, value_name = "DIR")]
    pub to: String,
    /// At most this many chunks in this run (the oldest first).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub db: super::db::DbArgs,
    /// Tests: stop after this stage of the first chunk, as an interruption would.
    #[arg(long, hide = true, value_enum)]
    pub fail_after: Option<FailAfter>,
}

/// Stages a test may stop after.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FailAfter {
    /// Files written under their temporary names.
    Written,
    /// Files read back and replayed.
    Verified,
    /// Files renamed to their final names.
    Renamed,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 7d, 12h, 30m, 90s)"))
}

/// `target` for a read command: every session it opens mounts the archived ranges `mount` asks
/// for (nothing when no range is archived), so the command reads archive and database as one.
pub(crate) fn reading(target: DbTarget, mount: krakenbook::archive::Mount) -> DbTarget {
    target.with_session_setup(std::sync::Arc::new(mount))
}

/// Runs `krakenbook archive`.
pub async fn run(args: ArchiveArgs) -> anyhow::Result<ExitCode> {
    let url = args.db.url()?;
    let target = DbTarget::parse(&url)?;
    let options = ArchiveOptions {
        older_than: args.older_than,
        location: Location::parse(&args.to)?,
        limit: args.limit,
        fail_after: args.fail_after.map(|f| match f {
            FailAfter::Written => Stage::Written,
            FailAfter::Verified => Stage::Verified,
            FailAfter::Renamed => Stage::Renamed,
        }),
    };
    let report = archive(&target, &options, |part, i, n| {
        let per = if part.messages > 0 {
            part.bytes as f64 / part.messages as f64
        } else {
            0.0
        };
        eprintln!(
            "[{i}/{n}] {} .. {} ({}): {} book messages ({} verified by the replay), {} files, {} bytes ({per:.1} bytes a message)",
            part.range_start,
            part.range_end,
            part.chunk,
            part.messages,
            part.replay_ok,
            part.files,
            part.bytes
        );
    })
    .await?;
    let messages = report.messages();
    let bytes = report.bytes();
    if report.parts.is_empty() {
        println!(
            "{}: no chunk older than {} to archive",
            target.redacted(),
            humantime::format_duration(args.older_than)
        );
    } else {
        println!(
            "{}: archived {} chunk(s) to {}: {messages} book messages, {bytes} bytes ({:.1} bytes a message){}",
            target.redacted(),
            report.parts.len(),
            options.location.as_str(),
            if messages > 0 {
                bytes as f64 / messages as f64
            } else {
                0.0
            },
            if report.left > 0 {
                format!("; {} more left (--limit)", report.left)
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
