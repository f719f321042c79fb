//! `krakenbook replay`: verify recorded data again, or serve it over Kraken's protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use krakenbook::archive::Mount;
use krakenbook::exchange::{Exchange, ServerConfig};
use krakenbook::replay::{self, DbScope, ReplayMarket, ReplayReport, ReplaySource};
use krakenbook::store::DbTarget;
use krakenbook::time::Timestamp;

pub(crate) const REPLAY_EXAMPLES: &str = "\
--verify re-runs recorded frames through the book engine and compares every recomputed checksum
verdict with the recorded one. From a journal directory it also reports every damaged or missing
range it finds (kind, seqs, segment, byte offset) and verifies every intact record all the same.
From the database it checks every stored copy of every book message against the others: each
copy the collector received (on each of its connections) replayed from the stored levels against
Kraken's checksum and against the verdict recorded for that copy (checksum_ok, the verdict bits
in dups), a raw frame kept beside its levels against them, the columns of frames stored whole,
and the book states (every level at depth); each disagreement is reported with its collector,
seq, symbol and the two copies. Then, wherever two
streams of a symbol (two collectors, or two connections) were verified at once, their books are
compared at every Kraken timestamp both have a message at, every level down to the smaller depth
(the checksum covers only the top ten): each disagreement is reported with both collectors and
seqs, and the common instants that agreed are counted. Without --from/--to
it verifies the whole database (a progress bar on stderr, unless --quiet or not a terminal);
--from/--to (Kraken's clock), --symbol and --collector narrow it. Exit status: 0 everything
verified and agreed; 1 a disagreement, or records lost (from the journal; or, in the database,
journal_damage/not_stored events); 2 an error; 3 nothing to verify (no book message in the journal
or range). --serve speaks Kraken's v2 protocol from the
database, as Kraken would have: a book subscription (at most the recorded depth) gets a snapshot
of the recorded book at the replay's clock (--from, then running --speed times faster; at 0, as
fast as the client reads), then the recorded updates in Kraken's level order. A gap in the record
drops the connection like a lost one (reconnect to go on after it); the end of the record closes
it with code 1000 and the reason \"end of recording\".

Examples:
  krakenbook replay --verify --journal-dir ./data/journal
  krakenbook replay --verify --database-url postgres://kb@localhost/market
  krakenbook replay --verify --from 2026-11-24T00:00:00Z --to 2026-11-25T00:00:00Z --symbol BTC/USD
  krakenbook replay --serve 127.0.0.1:8791 --from 2026-11-24T10:00:00Z --speed 10
  krakenbook collect --url ws://127.0.0.1:8791/v2 --symbols BTC/USD --journal-dir ./replayed";

/// `krakenbook replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Verify the recorded verdicts.
    #[arg(long, conflicts_with = "serve", required_unless_present = "serve")]
    pub verify: bool,
    /// Serve the recorded books over WebSocket at this address (e.g. 127.0.0.1:8791).
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<SocketAddr>,
    /// Replay a journal directory (with --verify) instead of the database.
    #[arg(long, value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Start of the range (required with --serve; --verify over the database: Kraken's clock,
    /// default the start of the record).
    #[arg(long, value_name = "TIME", value_parser = super::parse_time)]
    pub from: Option<Timestamp>,
    /// End of the range (exclusive; default: the end of the record).
    #[arg(long, value_name = "TIME", value_parser = super::parse_time)]
    pub to: Option<Timestamp>,
    /// Only these symbols (repeatable, or comma-separated).
    #[arg(long = "symbol", value_delimiter = ',')]
    pub symbols: Vec<String>,
    /// Recorded time runs this many times faster (--serve); 0: as fast as the client reads.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Only this collector's record (--serve, and --verify over the database).
    #[arg(long)]
    pub collector: Option<String>,
    /// Allow a non-loopback --serve address.
    #[arg(long)]
    pub public: bool,
    /// Print the verification report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub db: super::db::DbArgs,
}

/// Runs `krakenbook replay`.
pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    match args.serve {
        Some(addr) => serve(addr, args).await,
        None => verify(args).await,
    }
}

fn bar(quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} replayed {pos} messages ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

async fn verify(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let progress = bar(args.quiet || args.json);
    let report = match &args.journal_dir {
        Some(dir) => {
            let dir = dir.clone();
            let (from, to) = (args.from, args.to);
            let p = progress.clone();
            tokio::task::spawn_blocking(move || {
                replay::verify_journal(&dir, from, to, |n| p.set_position(n))
            })
            .await??
        }
        None => {
            progress.finish_and_clear();
            verify_database(&args).await?
        }
    };
    progress.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, args.journal_dir.is_none()));
    }
    let code = exit_code(&report);
    if code == NOTHING_VERIFIED {
        let what = match &args.journal_dir {
            Some(dir) => format!("the journal {}", dir.display()),
            None => "the database".to_owned(),
        };
        let range = match (args.from, args.to) {
            (None, None) => String::new(),
            (from, to) => format!(
                " between {} and {}",
                from.map_or("its start".to_owned(), |t| t.to_string()),
                to.map_or("now".to_owned(), |t| t.to_string())
            ),
        };
        eprintln!(
            "replay: nothing verified: {what} holds no book message{range}; check the directory or --from/--to/--symbol"
        );
    }
    Ok(ExitCode::from(code))
}

/// `--verify` over the database: every stored copy against the others, with a progress bar of
/// the seqs read (hidden with --quiet or --json, or when stderr is not a terminal).
async fn verify_database(args: &ReplayArgs) -> anyhow::Result<ReplayReport> {
    use std::io::IsTerminal;
    if let (Some(from), Some(to)) = (args.from, args.to)
        && to <= from
    {
        bail!("--to ({to}) must be after --from ({from})");
    }
    let url = args.db.url()?;
    let target = super::archive::reading(
        DbTarget::parse(&url)?,
        Mount::window(&args.symbols, args.from, args.to),
    );
    let scope = DbScope {
        from: args.from,
        to: args.to,
        symbols: args.symbols.clone(),
        collector: args.collector.clone(),
    };
    let bar = if args.quiet || args.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} verifying [{bar:30}] {percent}% of the record, {msg} messages ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    // On a thread of its own with a single-threaded runtime: the connection's task and the
    // verification take turns on one thread instead of waking each other across threads for
    // every batch of rows.
    let progress = bar.clone();
    let report = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut client = target.connect("krakenbook replay").await?;
            let mut report = replay::verify_database(&mut client, &scope, |p| {
                progress.set_length(p.total);
                progress.set_position(p.done);
                progress.set_message(p.messages.to_string());
            })
            .await?;
            if !report.verified_nothing() {
                // Overlapping streams' books, each pair read on two connections.
                let other = target.connect("krakenbook replay").await?;
                report.cross = replay::cross_check(
                    &client,
                    &other,
                    &scope.symbols,
                    scope.collector.as_deref(),
                    scope.from,
                    scope.to,
                )
                .await?;
            }
            anyhow::Ok(report)
        })
    })
    .await??;
    bar.finish_and_clear();
    Ok(report)
}

/// Exit status when nothing was verified.
const NOTHING_VERIFIED: u8 = 3;

/// 1 for a disagreement or lost records, 3 when nothing was verified, else 0.
fn exit_code(r: &ReplayReport) -> u8 {
    if !r.is_clean() {
        1
    } else if r.verified_nothing() {
        NOTHING_VERIFIED
    } else {
        0
    }
}

fn render(r: &ReplayReport, database: bool) -> String {
    use krakenbook::text::printable;
    use std::fmt::Write;
    let mut out = String::new();
    let verdict = if r.disagreement_count > 0 {
        "DISAGREEMENTS FOUND"
    } else if r.cross.disagreement_count > 0 {
        "OVERLAPPING STREAMS DISAGREE"
    } else if r.lost_seqs > 0 {
        "every intact record's verdict reproduced, but RECORDS ARE LOST"
    } else if r.records_missing > 0 {
        "every stored copy agrees, but RECORDS ARE MISSING from the database"
    } else if r.verified_nothing() {
        "nothing to verify"
    } else if database {
        "every stored copy agrees and every recorded verdict reproduced"
    } else {
        "every recorded verdict reproduced"
    };
    let range = r
        .seq_range
        .map(|(a, b)| format!("seq {a}..={b}"))
        .unwrap_or_else(|| "nothing".into());
    let _ = writeln!(
        out,
        "replayed {} records ({} frames, {range}): {verdict}",
        r.records, r.frames
    );
    let _ = writeln!(
        out,
        "  {:<14} {:>9} {:>9} {:>10} {:>12} {:>7}",
        "symbol", "messages", "ok", "mismatches", "unverifiable", "states"
    );
    for (symbol, s) in &r.symbols {
        let _ = writeln!(
            out,
            "  {symbol:<14} {:>9} {:>9} {:>10} {:>12} {:>7}",
            s.book_messages, s.ok, s.mismatches, s.unverifiable, s.states
        );
    }
    for d in &r.disagreements {
        let symbol = printable(d.symbol.as_deref().unwrap_or("-"));
        match (&d.collector, d.copies) {
            (None, ["recorded", "replayed"]) => {
                let _ = writeln!(
                    out,
                    "  seq {} {symbol}: recorded {}, replayed {}",
                    d.seq,
                    printable(&d.recorded),
                    printable(&d.replayed)
                );
            }
            (collector, [a, b]) => {
                let collector = collector
                    .as_deref()
                    .map(|c| format!(" of {}", printable(c)))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  seq {}{collector} {symbol}: {a} says {}; {b} says {}",
                    d.seq,
                    printable(&d.recorded),
                    printable(&d.replayed)
                );
            }
        }
    }
    if r.disagreement_count > r.disagreements.len() as u64 {
        let _ = writeln!(out, "  ... {} disagreements in all", r.disagreement_count);
    }
    for d in &r.damage {
        let what = if d.loss { "LOST" } else { "not a loss" };
        let _ = writeln!(
            out,
            "  journal damage: seqs {}..={} {what}: {} at byte {} of {} ({} bytes)",
            d.first_seq,
            d.last_seq,
            d.kind,
            d.offset,
            krakenbook::text::printable(&d.segment),
            d.bytes
        );
    }
    if r.damage_count > r.damage.len() as u64 {
        let _ = writeln!(out, "  ... {} damage items in all", r.damage_count);
    }
    if r.lost_seqs > 0 {
        let _ = writeln!(out, "  {} seqs lost from the journal", r.lost_seqs);
    }
    if database {
        let _ = writeln!(
            out,
            "  {} levels replayed from the book table, {} rows' raw frames compared with their levels; {} book frames stored whole beside a stored_raw event",
            r.levels_compared, r.raw_compared, r.stored_raw
        );
    }
    if database {
        let c = &r.cross;
        let _ = writeln!(
            out,
            "  cross-check: {} overlaps of two streams, {} common instants compared, {} agreed, {} disagreed",
            c.overlaps, c.compared, c.agreed, c.disagreement_count
        );
        if c.unopened > 0 {
            let _ = writeln!(
                out,
                "  {} overlaps not compared: a stream's book could not be rebuilt there",
                c.unopened
            );
        }
        for d in &c.disagreements {
            let _ = writeln!(
                out,
                "  {} at {}: {} connection {} seq {} and {} connection {} seq {} disagree: {}",
                printable(&d.symbol),
                d.at,
                printable(&d.a.collector),
                d.a.conn_id,
                d.a.seq,
                printable(&d.b.collector),
                d.b.conn_id,
                d.b.seq,
                printable(&d.what)
            );
        }
        if c.disagreement_count > c.disagreements.len() as u64 {
            let _ = writeln!(
                out,
                "  ... {} cross-check disagreements in all",
                c.disagreement_count
            );
        }
    }
    if r.records_missing > 0 {
        let _ = writeln!(
            out,
            "  {} journal_damage/not_stored events: records the database never got (the books after them start over from their next snapshot)",
            r.records_missing
        );
    }
    if r.unordered_rows > 0 {
        let _ = writeln!(
            out,
            "  {} message rows without a collector or seq (written by another tool): not verified",
            r.unordered_rows
        );
    }
    if r.legacy_rows > 0 {
        let _ = writeln!(
            out,
            "  {} message rows of the layout before schema version 6: not verified (run `krakenbook migrate` to move them)",
            r.legacy_rows
        );
    }
    if r.unverifiable_after_damage > 0 {
        let _ = writeln!(
            out,
            "  {} recorded verdicts could not be checked: records before them are missing",
            r.unverifiable_after_damage
        );
    }
    out
}

async fn serve(addr: SocketAddr, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !args.public && !addr.ip().is_loopback() {
        bail!(
            "refusing to serve on {addr}: not a loopback address; pass --public to allow it, or use e.g. --serve 127.0.0.1:8791"
        );
    }
    if !(args.speed.is_finite() && args.speed >= 0.0) {
        bail!("--speed must be 0 (as fast as possible) or a positive factor, e.g. 10");
    }
    let Some(from) = args.from else {
        bail!(
            "--serve needs --from, the recorded instant to start at: e.g. --from 2026-11-24T10:00:00Z"
        );
    };
    let url = args.db.url()?;
    let cancel = CancellationToken::new();
    super::collect::spawn_signal_handler(cancel.clone())?;
    let target = super::archive::reading(
        DbTarget::parse(&url)?,
        Mount::window(&args.symbols, Some(from), args.to),
    );
    let market = ReplayMarket::load_from(
        target,
        ReplaySource {
            database_url: url,
            symbols: args.symbols.clone(),
            from,
            to: args.to,
            speed: args.speed,
            collector: args.collector.clone(),
        },
        cancel.clone(),
    )
    .await?;
    if market_is_empty(&market) {
        bail!(
            "nothing recorded at or before {from}: check --from and --symbol (see `krakenbook query --coverage`)"
        );
    }
    let tracker = TaskTracker::new();
    let server = ServerConfig {
        listen: addr,
        ..ServerConfig::default()
    };
    let exchange = Exchange::bind(server, Arc::new(market), cancel.clone(), tracker).await?;
    eprintln!(
        "replay: serving recorded books from {from} at ws://{}/v2 (speed {}); Ctrl-C stops",
        exchange.local_addr(),
        args.speed
    );
    cancel.cancelled().await;
    exchange.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

fn market_is_empty(market: &ReplayMarket) -> bool {
    use krakenbook::exchange::Market;
    market.instruments().is_empty()
}
