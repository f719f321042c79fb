//! `krakenbook book SYMBOL --at TIME`: the book as it was at an instant, checksum-verified.

use std::process::ExitCode;

use clap::Args;

use krakenbook::readback::{BookAt, book_at};
use krakenbook::store::DbTarget;
use krakenbook::time::Timestamp;

pub(crate) const BOOK_EXAMPLES: &str = "\
Rebuilds the book from the database: the latest snapshot or journaled book state before TIME on
one collector's record, then every update up to TIME, verifying each checksum on the way. Says
so when TIME falls in a gap (after a checksum mismatch or a lost connection, before the book
verified again). Exit status 1 when the book at TIME is not verified.

Examples:
  krakenbook book BTC/USD --at 2026-11-24T10:00:00Z
  krakenbook book ETH/USD --at '2026-11-24 10:00:00.250Z' --depth 25
  krakenbook book BTC/USD --at 2026-11-24T10:00:00Z --json | jq '.bids[0]'";

/// `krakenbook book`.
#[derive(Debug, Args)]
pub struct BookArgs {
    /// The pair, e.g. BTC/USD.
    pub symbol: String,
    /// The instant (RFC 3339, UTC or with an offset).
    #[arg(long)]
    pub at: Timestamp,
    /// Levels to show per side.
    #[arg(long, default_value_t = 10)]
    pub depth: usize,
    /// Only this collector's record (when several collectors record the same pair).
    #[arg(long)]
    pub collector: Option<String>,
    /// The database (or DATABASE_URL).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Print JSON: {"symbol","at","bids":[{"price","qty"}],"asks":[...],"checksum","checksum_ok",...}.
    #[arg(long)]
    pub json: bool,
}

/// Runs `krakenbook book`.
pub async fn run(args: BookArgs) -> anyhow::Result<ExitCode> {
    let url = super::migrate::database_url(args.database_url)?;
    let client = DbTarget::parse(&url)?.connect("krakenbook book").await?;
    let book = book_at(
        &client,
        &args.symbol,
        args.at,
        args.depth.max(1),
        args.collector.as_deref(),
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&book)?);
    } else {
        print!("{}", render(&book));
    }
    Ok(if book.checksum_ok && book.gap.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The book as a table for people.
pub fn render(b: &BookAt) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{} at {}", b.symbol, b.at);
    let _ = writeln!(
        out,
        "last message {} (seq {} of {}), rebuilt from the {} of {} + {} messages",
        b.last_message_at,
        b.last_seq,
        b.collector,
        b.started_from,
        b.started_at,
        b.messages_applied
    );
    let verdict = if b.checksum_ok {
        "verified"
    } else {
        "NOT VERIFIED"
    };
    let _ = writeln!(out, "checksum {} {verdict}", b.checksum);
    if let Some(gap) = &b.gap {
        let _ = writeln!(
            out,
            "GAP: {} falls in a gap that began at {} ({}); the book below is the last one before it",
            b.at, gap.since, gap.reason
        );
    }
    let best = |levels: &[krakenbook::readback::Level]| {
        levels
            .first()
            .map(|l| l.price.to_string())
            .unwrap_or_else(|| "-".into())
    };
    let spread = b
        .spread
        .map(|s| s.to_string())
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "best bid {}  best ask {}  spread {spread}",
        best(&b.bids),
        best(&b.asks)
    );
    let rows = b.bids.len().max(b.asks.len());
    let _ = writeln!(
        out,
        "{:>18} {:>18} | {:<18} {:<18}",
        "bid qty", "bid", "ask", "ask qty"
    );
    for i in 0..rows {
        let (bq, bp) = b.bids.get(i).map_or((String::new(), String::new()), |l| {
            (l.qty.to_string(), l.price.to_string())
        });
        let (ap, aq) = b.asks.get(i).map_or((String::new(), String::new()), |l| {
            (l.price.to_string(), l.qty.to_string())
        });
        let _ = writeln!(out, "{bq:>18} {bp:>18} | {ap:<18} {aq:<18}");
    }
    out
}
