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

Examples:
  krakenbook reset                       asks for confirmation
  krakenbook reset --yes --database-url postgres://kb@localhost/market";

/// `krakenbook reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Keep the collectors' checkpoints: journals are not written again.
    #[arg(long)]
    pub keep_checkpoints: bool,
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
            "Empty every krakenbook table of {} ({messages} messages)? Type yes to confirm: ",
            target.redacted()
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
    client
        .batch_execute(&format!("TRUNCATE {}", tables.join(", ")))
        .await
        .context("emptying the tables")?;
    println!(
        "{}: emptied {} ({messages} messages removed)",
        target.redacted(),
        tables.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
