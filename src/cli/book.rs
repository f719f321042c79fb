//! `krakenbook book SYMBOL --at TIME`: the book as it was at an instant, checksum-verified.

use std::process::ExitCode;

use clap::Args;

use krakenbook::archive::Mount;
use krakenbook::readback::{BookAt, book_at};
use krakenbook::store::DbTarget;
use krakenbook::time::Timestamp;

pub(crate) const BOOK_EXAMPLES: &str = "\
Rebuilds the book from the database. The coverage model (the same one `query`, `export`, `plot`
and `replay --serve` ask) says whether the book is known at TIME, and from which stream: of the
streams (one connection of one collector) verified at TIME, the one verified longest, ties to the
smallest collector and connection. The book is rebuilt from that stream's latest snapshot or
journaled book state before TIME, every checksum verified on the way.

When TIME falls in a gap, no book is printed: the gap's start, end and cause (mismatch,
connection_lost, no_collector, journal_damage, not_recorded) and when the last verified book
before it was. Exit status 1 when the book at TIME is not verified (a gap, or a rebuild that does
not reproduce Kraken's checksum).

Examples:
  krakenbook book BTC/USD --at 2026-11-24T10:00:00Z
  krakenbook book ETH/USD --at '2026-11-24 10:00:00.250Z' --depth 25
  krakenbook book BTC/USD --at 2026-11-24T10:00:00Z --collector host-a1b2c3d4
  krakenbook book BTC/USD --at 2026-11-24T10:00:00Z --json | jq '.bids[0]'";

/// `krakenbook book`.
#[derive(Debug, Args)]
pub struct BookArgs {
    /// The pair, e.g. BTC/USD.
    pub symbol: String,
    /// The instant (RFC 3339, UTC or with an offset).
    #[arg(long, value_name = "TIME", value_parser = super::parse_time)]
    pub at: Timestamp,
    /// Levels to show per side.
    #[arg(long, default_value_t = 10)]
    pub depth: usize,
    /// Only this collector's streams (default: every collector's).
    #[arg(long)]
    pub collector: Option<String>,
    #[command(flatten)]
    pub db: super::db::DbArgs,
    /// Print JSON: {"symbol","at","bids":[{"price","qty"}],"asks":[...],"checksum","checksum_ok",
    /// "collector","conn_id",...,"gap":{"start","end","cause","last_verified_at"} or null}.
    #[arg(long)]
    pub json: bool,
}

/// Runs `krakenbook book`.
pub async fn run(args: BookArgs) -> anyhow::Result<ExitCode> {
    let url = args.db.url()?;
    let mount = Mount::window(
        std::slice::from_ref(&args.symbol),
        Some(args.at),
        Some(args.at),
    );
    let client = super::archive::reading(DbTarget::parse(&url)?, mount)
        .connect("krakenbook book")
        .await?;
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
    Ok(if book.is_verified() {
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
    let ts = |t: Option<krakenbook::time::Timestamp>, none: &str| {
        t.map_or_else(|| none.to_owned(), |t| t.to_string())
    };
    if let Some(gap) = &b.gap {
        let _ = writeln!(
            out,
            "GAP ({}): no verified book from {} to {}",
            gap.cause,
            ts(gap.start, "the beginning"),
            ts(gap.end, "the end of the record"),
        );
        match gap.last_verified_at {
            Some(t) => {
                let _ = writeln!(out, "the last verified book before it is at {t}");
            }
            None => {
                let _ = writeln!(out, "no verified book before it");
            }
        }
        if let Some(after) = &gap.after {
            let _ = writeln!(out, "the gap began when {after} stopped being verified");
        }
        return out;
    }
    let _ = writeln!(
        out,
        "last message {} (seq {}) on collector {} connection {}, rebuilt from the {} of {} + {} messages",
        ts(b.last_message_at, "-"),
        b.last_seq.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        b.collector.as_deref().unwrap_or("-"),
        b.conn_id.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        b.started_from.as_deref().unwrap_or("-"),
        ts(b.started_at, "-"),
        b.messages_applied
    );
    let verdict = if b.checksum_ok == Some(true) {
        "verified"
    } else {
        "NOT VERIFIED: the rebuilt book does not have Kraken's checksum"
    };
    let _ = writeln!(
        out,
        "checksum {} {verdict}",
        b.checksum.map_or_else(|| "-".to_owned(), |c| c.to_string())
    );
    let best = |levels: &[krakenbook::book::PriceLevel]| {
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
