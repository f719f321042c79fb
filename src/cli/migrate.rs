//! `krakenbook migrate`: create or upgrade the TimescaleDB schema.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use krakenbook::store::{self, Compression, MigrateOptions};

pub(crate) const MIGRATE_EXAMPLES: &str = "\
Creates the tables (kraken_orderbook_messages, kraken_orderbook_entries and kraken_book_states
as hypertables, kraken_feed_events, krakenbook_checkpoints, krakenbook_connections) or upgrades
them. Safe to run again, and from two
processes at once. Tables made by the original tool's setup SQL are converted in place, keeping
every row. Every command that writes to the database runs this first.

A database written before schema version 6 has its rows moved into the new layout one chunk per
transaction, each checked (every message and level reads back identical) before its old rows
go; progress (range i of n, rate, time left) is logged on stderr. Interrupting is safe: the
range in flight is rolled back, and running migrate again continues. Queries see every row
throughout.

Keep the password off the command line (where `ps` shows it): libpq's PGPASSWORD, or a line
`host:port:database:user:password` in ~/.pgpass (or the file PGPASSFILE names; mode 0600).

Examples:
  PGPASSWORD=secret krakenbook migrate --database-url postgres://kb@localhost:5432/market
  DATABASE_URL=postgres://kb@db.internal/market?sslmode=verify-full krakenbook migrate
  krakenbook migrate --database-url postgres://localhost/market --chunk-interval 6h";

/// `krakenbook migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: super::db::DbArgs,
    /// Chunk interval of both hypertables (e.g. 1d, 6h). Default: 1d for new tables; existing
    /// tables keep theirs unless this is given.
    #[arg(long, value_name = "DURATION", value_parser = chunk_interval)]
    pub chunk_interval: Option<String>,
}

/// Runs `krakenbook migrate`.
pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let url = args.db.url()?;
    let target = store::DbTarget::parse(&url)?;
    let client = target.connect("krakenbook migrate").await?;
    let report = store::migrate(
        &client,
        &MigrateOptions {
            chunk_interval: args.chunk_interval,
        },
    )
    .await
    .with_context(|| format!("migrating {}", target.redacted()))?;
    let mut line = if report.applied.is_empty() {
        format!(
            "{}: schema already at version {}",
            target.redacted(),
            report.to_version
        )
    } else {
        let names: Vec<String> = report
            .applied
            .iter()
            .map(|(v, n)| format!("{v} ({n})"))
            .collect();
        format!(
            "{}: schema migrated from version {} to {} (applied {})",
            target.redacted(),
            report.from_version,
            report.to_version,
            names.join(", ")
        )
    };
    if report.converted_original_tables {
        line.push_str("; converted the existing tables in place");
    }
    if let Some(iv) = &report.chunk_interval_set {
        line.push_str(&format!("; chunk interval {iv}"));
    }
    line.push_str(match &report.compression {
        Compression::Enabled => "; compression enabled",
        Compression::AlreadyEnabled => "; compression on",
        Compression::Skipped { .. } => "; compression skipped (Apache edition)",
    });
    if let Some(moved) = &report.legacy {
        line.push_str(&format!(
            "; legacy rows moved: {} of {} range(s), {} messages ({} book, {} other), {} levels in {:.1} s ({} messages/s)",
            moved.ranges,
            moved.pending,
            moved.messages,
            moved.book,
            moved.other,
            moved.levels,
            moved.elapsed.as_secs_f64(),
            moved.rate()
        ));
    }
    if report.legacy_remains {
        line.push_str(
            "; some levels of the older layout belong to no stored message and stay in \
             krakenbook_legacy_entries (the views read them)",
        );
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

/// A chunk interval in the one duration syntax (`6h`, `1d`), as PostgreSQL interval text
/// (whole microseconds, the precision of its `interval`).
pub(crate) fn chunk_interval(text: &str) -> Result<String, String> {
    let d = krakenbook::config::positive_duration(text)?;
    let micros = d.as_micros();
    if micros == 0 || d.subsec_nanos() % 1000 != 0 {
        return Err(format!(
            "{text:?}: a chunk interval is whole microseconds, e.g. 6h or 1d"
        ));
    }
    Ok(format!("{micros} microseconds"))
}
