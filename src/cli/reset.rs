//! `krakenbook reset`: empty the tables, keeping the schema and the hypertables.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use krakenbook::store::DbTarget;

pub(crate) const RESET_EXAMPLES: &str = "\
Deletes every stored message, level, book state and feed event, and every collector's
checkpoint; the tables, their hypertables and indexes stay. A collector's journal is not
touched: a collector started again writes its whole journal into the emptied tables (the
database is a function of the journals); `--keep-checkpoints` starts them empty instead.

The archive catalog (krakenbook_archive, what `krakenbook archive` moved to Parquet) is emptied
too, so no read looks for archived ranges any more. The archive's files are left where they are
and their directories are printed: delete them yourself, or add --delete-archive-files to delete
exactly the files the catalog lists (nothing else under those directories is touched).

Examples:
  krakenbook reset                       asks for confirmation
  krakenbook reset --yes --database-url postgres://kb@localhost/market
  krakenbook reset --yes --delete-archive-files";

/// `krakenbook reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Keep the collectors' checkpoints: journals are not written again.
    #[arg(long)]
    pub keep_checkpoints: bool,
    /// Also delete the archive's files that the catalog lists (else they are left in place).
    #[arg(long)]
    pub delete_archive_files: bool,
    #[command(flatten)]
    pub db: super::db::DbArgs,
}

/// The tables emptied (schema version 6: `kraken_orderbook_messages` and `_entries` are views
/// over the first two; the dictionary `krakenbook_collectors` stays, as running collectors keep
/// their ids).
const TABLES: [&str; 6] = [
    "krakenbook_book",
    "krakenbook_other",
    "kraken_book_states",
    "kraken_feed_events",
    "krakenbook_connections",
    "krakenbook_collector_state",
];

/// Runs `krakenbook reset`.
pub async fn run(args: ResetArgs) -> anyhow::Result<ExitCode> {
    let url = args.db.url()?;
    let target = DbTarget::parse(&url)?;
    let client = target.connect("krakenbook reset").await?;
    let messages: i64 = client
        .query_one("SELECT count(*) FROM kraken_orderbook_messages", &[])
        .await
        .context("the database has no krakenbook tables (run `krakenbook migrate` first)")?
        .get(0);
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to empty {} without confirmation: add --yes",
                target.redacted()
            );
        }
        print!(
            "Empty every krakenbook table of {} ({messages} messages){}? Type yes to confirm: ",
            target.redacted(),
            if args.delete_archive_files {
                ", and delete the archive's files"
            } else {
                ""
            }
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            println!("nothing changed");
            return Ok(ExitCode::FAILURE);
        }
    }
    let mut tables: Vec<&str> = TABLES.to_vec();
    let legacy: bool = client
        .query_one(
            "SELECT to_regclass('krakenbook_legacy_messages') IS NOT NULL",
            &[],
        )
        .await
        .context("looking for the legacy tables")?
        .get(0);
    if legacy {
        tables.extend(["krakenbook_legacy_messages", "krakenbook_legacy_entries"]);
    }
    if !args.keep_checkpoints {
        tables.push("krakenbook_checkpoints");
    }
    // The archive's catalog, read before it is emptied: the files it lists are the user's to
    // keep unless asked.
    let archived = krakenbook::archive::archived_overlapping(&client, None, None)
        .await
        .context("reading the archive catalog")?;
    if krakenbook::archive::catalog::exists(&client)
        .await
        .context("looking for the archive catalog")?
    {
        tables.push("krakenbook_archive");
    }
    client
        .batch_execute(&format!("TRUNCATE {}", tables.join(", ")))
        .await
        .context("emptying the tables")?;
    println!(
        "{}: emptied {} ({messages} messages removed)",
        target.redacted(),
        tables.join(", ")
    );
    if archived.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut locations: Vec<&str> = archived.iter().map(|p| p.location.as_str()).collect();
    locations.sort_unstable();
    locations.dedup();
    let files: usize = archived.iter().map(|p| p.files.len()).sum();
    let messages: i64 = archived.iter().map(|p| p.messages).sum();
    if !args.delete_archive_files {
        println!(
            "the archive's {} part(s) ({files} files, {messages} book messages) are no longer read; their files are left in {} (delete them yourself, or run reset with --delete-archive-files to delete exactly those files)",
            archived.len(),
            locations.join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut deleted = 0usize;
    let mut failed = Vec::new();
    for part in &archived {
        let location = match krakenbook::archive::Location::open(&part.location) {
            Ok(l) => l,
            Err(e) => {
                failed.push(e.to_string());
                continue;
            }
        };
        for f in &part.files {
            match location.delete(&f.path).await {
                Ok(()) => deleted += 1,
                Err(e) => failed.push(e.to_string()),
            }
        }
    }
    println!(
        "deleted {deleted} of the archive's {files} files in {}",
        locations.join(", ")
    );
    if let Some(first) = failed.first() {
        bail!(
            "{} archive file(s) could not be deleted (the catalog is emptied already: they are no longer read), e.g. {first}",
            failed.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
