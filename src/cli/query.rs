//! `krakenbook query`: what is stored, at a glance (the original tool's query script, and more).

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde::Serialize;

use krakenbook::archive::Mount;
use krakenbook::readback::query::{self, Coverage, EntryRow, Filter, MessageRow, Summary};
use krakenbook::store::DbTarget;
use krakenbook::time::Timestamp;

pub(crate) const QUERY_EXAMPLES: &str = "\
Prints the summary (messages, levels, symbols, first and last message), each symbol's coverage,
the latest messages with their JSON pretty-printed, and the latest levels.

Coverage is the coverage model's (the same one `book --at`, `export`, `plot` and `replay --serve`
ask): when the book was verified on some stream (one connection of one collector), and every gap
of the union with its start, end and cause (mismatch, connection_lost, no_collector,
journal_damage, not_recorded), then each stream's own verified spans and gaps. Times are Kraken's
clock; see `krakenbook book --help`.

Examples:
  krakenbook query
  krakenbook query --symbol BTC/USD --since 2026-11-24T00:00:00Z --until 2026-11-25T00:00:00Z
  krakenbook query --coverage --json | jq '.coverage[] | {symbol, gap_seconds, gaps}'
  krakenbook query --coverage --collector host-a1b2c3d4
  krakenbook query --symbol ETH/USD --entries --limit 50 --order asc";

/// Sort order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// Earliest first.
    Asc,
    /// Latest first.
    Desc,
}

/// `krakenbook query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Only this symbol.
    #[arg(long)]
    pub symbol: Option<String>,
    /// From this instant (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = super::parse_time)]
    pub since: Option<Timestamp>,
    /// Up to this instant (RFC 3339, exclusive).
    #[arg(long, value_name = "TIME", value_parser = super::parse_time)]
    pub until: Option<Timestamp>,
    /// Only this collector's rows and streams (default: every collector's).
    #[arg(long)]
    pub collector: Option<String>,
    /// Messages and levels to list.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(0..=100_000))]
    pub limit: i64,
    /// Order of the listed messages and levels.
    #[arg(long, value_enum, default_value = "desc")]
    pub order: Order,
    /// Show only the summary.
    #[arg(long)]
    pub summary: bool,
    /// Show only the per-symbol coverage.
    #[arg(long)]
    pub coverage: bool,
    /// Show only the messages.
    #[arg(long)]
    pub messages: bool,
    /// Show only the levels.
    #[arg(long)]
    pub entries: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: super::db::DbArgs,
}

#[derive(Serialize)]
struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    coverage: Option<Vec<Coverage>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<MessageRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<EntryRow>>,
}

/// Runs `krakenbook query`.
pub async fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let url = args.db.url()?;
    let symbols: Vec<String> = args.symbol.iter().cloned().collect();
    // The counts of messages are of every row in the range: archived ranges are mounted whole
    // (coverage alone would need only what `Mount::coverage` loads).
    let mount = Mount::window(&symbols, args.since, args.until);
    let client = super::archive::reading(DbTarget::parse(&url)?, mount)
        .connect("krakenbook query")
        .await?;
    let filter = Filter {
        symbol: args.symbol.clone(),
        since: args.since,
        until: args.until,
        collector: args.collector.clone(),
    };
    let all = !(args.summary || args.coverage || args.messages || args.entries);
    let asc = args.order == Order::Asc;
    let report = Report {
        summary: if all || args.summary {
            Some(query::summary(&client, &filter).await?)
        } else {
            None
        },
        coverage: if all || args.coverage {
            Some(query::coverage(&client, &filter).await?)
        } else {
            None
        },
        messages: if all || args.messages {
            Some(query::messages(&client, &filter, args.limit, asc).await?)
        } else {
            None
        },
        entries: if all || args.entries {
            Some(query::entries(&client, &filter, args.limit, asc).await?)
        } else {
            None
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn ts(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| t.to_string())
}

fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(s) = &r.summary {
        let _ = writeln!(out, "== Summary");
        let _ = writeln!(out, "  total messages   {}", s.total_messages);
        let _ = writeln!(out, "  total levels     {}", s.total_entries);
        let _ = writeln!(out, "  unique symbols   {}", s.unique_symbols);
        let _ = writeln!(out, "  first message    {}", ts(s.first_message));
        let _ = writeln!(out, "  last message     {}", ts(s.last_message));
    }
    if let Some(c) = &r.coverage {
        let _ = writeln!(out, "== Coverage");
        let _ = writeln!(
            out,
            "  {:<12} {:<28} {:<28} {:>9} {:>9} {:>9} {:>10} {:>5} {:>10}",
            "symbol",
            "first",
            "last",
            "messages",
            "ok",
            "mismatch",
            "unverified",
            "gaps",
            "gap secs"
        );
        for s in c {
            let _ = writeln!(
                out,
                "  {:<12} {:<28} {:<28} {:>9} {:>9} {:>9} {:>10} {:>5} {:>10.3}",
                s.symbol,
                ts(s.first),
                ts(s.last),
                s.book_messages,
                s.checksum_ok,
                s.checksum_mismatch,
                s.unverified,
                s.gaps.len(),
                s.gap_seconds
            );
            let _ = writeln!(
                out,
                "  {:<12} verified from {} until {}",
                "",
                ts(s.verified_from),
                ts(s.verified_until)
            );
            for g in &s.gaps {
                let _ = writeln!(
                    out,
                    "  {:<12} gap {} .. {} {}",
                    "",
                    ts(g.start),
                    ts(g.end),
                    g.cause
                );
            }
            for st in &s.streams {
                let _ = writeln!(
                    out,
                    "  {:<12} stream: collector {} connection {}, frames {} .. {}, {} verified span(s), {} gap(s)",
                    "",
                    st.collector,
                    st.conn_id,
                    st.first_frame,
                    st.last_frame,
                    st.spans.len(),
                    st.gaps.len()
                );
                for g in &st.gaps {
                    let _ = writeln!(
                        out,
                        "  {:<12}   gap {} .. {} {}",
                        "",
                        ts(g.start),
                        ts(g.end),
                        g.cause
                    );
                }
            }
        }
    }
    if let Some(m) = &r.messages {
        let _ = writeln!(out, "== Messages");
        for row in m {
            let ok = match row.checksum_ok {
                Some(true) => "ok",
                Some(false) => "MISMATCH",
                None => "-",
            };
            let _ = writeln!(
                out,
                "  {} {} {}/{} checksum {} {ok}",
                row.timestamp,
                row.symbol.as_deref().unwrap_or("-"),
                row.channel,
                row.message_type,
                row.checksum
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            );
            if let Some(raw) = &row.raw_message {
                for line in raw.lines() {
                    let _ = writeln!(out, "      {line}");
                }
            }
        }
    }
    if let Some(e) = &r.entries {
        let _ = writeln!(out, "== Levels");
        let _ = writeln!(
            out,
            "  {:<28} {:<12} {:<4} {:>18} {:>20} {:<8}",
            "timestamp", "symbol", "side", "price", "quantity", "type"
        );
        for row in e {
            let _ = writeln!(
                out,
                "  {:<28} {:<12} {:<4} {:>18} {:>20} {:<8}",
                row.timestamp.to_string(),
                row.symbol,
                row.side,
                row.price,
                row.quantity,
                row.message_type
            );
        }
    }
    out
}
