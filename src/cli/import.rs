//! `krakenbook import`: load a journal recorded without a database into TimescaleDB.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use krakenbook::collect;
use krakenbook::store::{BatchConfig, DbTarget};

pub(crate) const IMPORT_EXAMPLES: &str = "\
Writes every record of a journal (recorded by `krakenbook collect` without --database-url) that
the database does not hold yet: it resumes from the database's checkpoint for this journal, so
running it twice changes nothing and an interrupted import continues where it stopped. Records
missing from the journal (a missing, truncated or damaged segment) are reported and stored as
journal_damage events; everything intact is imported all the same.

Exit status: 0 imported (or nothing to import), 1 imported but records are missing from the
journal, 2 an error (nothing more imported).

Examples:
  krakenbook import --journal-dir ./data/journal --database-url postgres://kb@localhost/market
  DATABASE_URL=postgres://kb@db.internal/market?sslmode=require krakenbook import --journal-dir /backup/journal";

/// `krakenbook import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The journal directory.
    #[arg(long, env = "KRAKENBOOK_JOURNAL_DIR", default_value = "data/journal")]
    pub journal_dir: PathBuf,
    #[command(flatten)]
    pub db: super::db::DbArgs,
    /// Most records per transaction.
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// No progress bar (for scripts and logs).
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `krakenbook import`.
pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let url = args.db.url()?;
    let target = DbTarget::parse(&url)?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} importing [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let batch = BatchConfig {
        max_records: args.batch.max(1),
        ..BatchConfig::default()
    };
    let report = collect::import(&args.journal_dir, &url, batch, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    if report.stored_raw + report.not_stored > 0 {
        eprintln!(
            "{} record(s) the database refused in structured form were stored raw, {} not at all (see the stored_raw and not_stored rows of kraken_feed_events; the journal keeps them)",
            report.stored_raw, report.not_stored
        );
    }
    if report.damaged_seqs > 0 {
        for d in &report.damage {
            eprintln!(
                "missing from the journal: seqs {}..={} ({}, {} at byte {})",
                d.first_seq,
                d.last_seq,
                d.kind.as_str(),
                d.segment.display(),
                d.offset
            );
        }
        if report.damage.len() < report.damaged_seqs as usize
            && report.damage.len() == krakenbook::collect::DAMAGE_KEPT
        {
            eprintln!("(more ranges: see the journal_damage rows of kraken_feed_events)");
        }
        println!(
            "{}: imported seq {}..={} of collector {} except {} seq(s) missing from the journal (recorded as journal_damage events): {} messages, {} levels, {} feed events",
            target.redacted(),
            report.from_seq + 1,
            report.to_seq,
            report.collector,
            report.damaged_seqs,
            report.messages,
            report.entries,
            report.events
        );
        return Ok(ExitCode::from(1));
    }
    if report.from_seq >= report.to_seq {
        println!(
            "{}: already holds journal {} (collector {}) through seq {}; nothing to import",
            target.redacted(),
            args.journal_dir.display(),
            report.collector,
            report.to_seq
        );
    } else {
        println!(
            "{}: imported seq {}..={} of collector {}: {} messages, {} levels, {} feed events",
            target.redacted(),
            report.from_seq + 1,
            report.to_seq,
            report.collector,
            report.messages,
            report.entries,
            report.events
        );
    }
    Ok(ExitCode::SUCCESS)
}
