//! `krakenbook verify`: check the checksums of recorded frame files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use krakenbook::book::Precision;
use krakenbook::kraken::Depth;
use krakenbook::verify::{self, FileReport, VerifyOptions};

pub(crate) const VERIFY_EXAMPLES: &str = "\
Each line of a file is a frame, or an object with the frame under \"frame\" (lines with
\"dir\": \"tx\" are frames the client sent, and skipped); a first line without a frame is a header.
Depth comes from the subscribe acks in the file, else --depth; precision from instrument frames in
the file, else --price-precision/--qty-precision, else the numbers' own decimals.
Exit status: 0 every book message verified, 1 a checksum mismatch or a line that cannot be
decoded, 2 an error (a file that cannot be read), 3 nothing verified (no book message with a
snapshot before it in any file).

Examples:
  krakenbook verify capture.ndjson
  krakenbook verify --depth 25 --price-precision 4 --qty-precision 8 matic.ndjson
  krakenbook verify --json shared/fixtures/kraken-v2/*.ndjson | jq '.[].symbols'";

/// `krakenbook verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Files of recorded frames (one JSON frame per line).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Book depth where the file has no subscribe ack: 10, 25, 100, 500 or 1000.
    #[arg(long, default_value = "10")]
    pub depth: Depth,
    /// Price decimals where the file has no instrument frame (needs --qty-precision).
    #[arg(long, requires = "qty_precision", value_parser = clap::value_parser!(u8).range(0..=30))]
    pub price_precision: Option<u8>,
    /// Quantity decimals where the file has no instrument frame (needs --price-precision).
    #[arg(long, requires = "price_precision", value_parser = clap::value_parser!(u8).range(0..=30))]
    pub qty_precision: Option<u8>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `krakenbook verify`.
pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let options = VerifyOptions {
        depth: args.depth,
        precision: args
            .price_precision
            .zip(args.qty_precision)
            .map(|(price, qty)| Precision { price, qty }),
    };
    let mut reports = Vec::with_capacity(args.files.len());
    for path in &args.files {
        reports.push(verify::verify_file(path, options).with_context(|| "verify stopped")?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", render_verify(&reports));
    }
    if !reports.iter().all(FileReport::is_clean) {
        return Ok(ExitCode::FAILURE);
    }
    if reports.iter().map(FileReport::verified).sum::<u64>() == 0 {
        eprintln!(
            "verify: nothing verified: the files hold no book message with a snapshot before it"
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human-readable verify report.
pub fn render_verify(reports: &[FileReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for r in reports {
        let verdict = if r.is_clean() { "ok" } else { "FAILED" };
        let _ = writeln!(
            out,
            "{}: {verdict} ({} frames received, {} sent, {} unknown, {} undecodable)",
            krakenbook::text::printable(&r.path),
            r.frames,
            r.sent_frames,
            r.unknown_frames,
            r.undecodable.len()
        );
        let _ = writeln!(
            out,
            "  {:<14} {:>9} {:>9} {:>9} {:>10} {:>12}  first mismatch",
            "symbol", "messages", "snapshots", "ok", "mismatches", "unverifiable"
        );
        for (symbol, s) in &r.symbols {
            let symbol = krakenbook::text::printable(symbol);
            let first = match (s.first_mismatch_line, s.first_mismatch) {
                (Some(line), Some(m)) => format!(
                    "line {line} (expected {}, computed {})",
                    m.expected, m.computed
                ),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {symbol:<14} {:>9} {:>9} {:>9} {:>10} {:>12}  {first}",
                s.book_messages, s.snapshots, s.ok, s.mismatches, s.unverifiable
            );
            if s.unverifiable > 0 {
                let _ = writeln!(
                    out,
                    "  {:<14} note: {} message(s) came with no snapshot before them and could not be verified",
                    "", s.unverifiable
                );
            }
        }
        for u in r.undecodable.iter().take(10) {
            let _ = writeln!(
                out,
                "  line {}: {}",
                u.line,
                krakenbook::text::printable(&u.error)
            );
        }
        if r.undecodable.len() > 10 {
            let _ = writeln!(
                out,
                "  ... and {} more undecodable lines",
                r.undecodable.len() - 10
            );
        }
    }
    out
}
