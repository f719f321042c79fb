//! `krakenbook-bench readback`: how fast recorded books come back.
//!
//! Synthesizes a long recording of one pair at depth 1000 (a random walk of the book near the
//! top, `--rate` messages per second of Kraken time for `--span`, every frame with a correct
//! checksum), journals it as the collector would (a book state every 10,000 updates) and writes
//! it to TimescaleDB with the store writer. Then it measures, in one run:
//! - `book --at` latency at random instants across the recording (coverage + rebuild + verify +
//!   print-ready);
//! - the coverage model's answer for the whole recording (what `query` and every read path ask),
//!   from the database and from the journal;
//! - `replay --verify` speed from the journal (messages per second, one core);
//! - `replay --verify` speed from the database (every stored copy checked) over one hour of the
//!   recording, and over all of it.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use krakenbook::book::{Decimal, OrderBook, Precision};
use krakenbook::journal::{Entry, JournalConfig, JournalWriter};
use krakenbook::kraken::BookKind;
use krakenbook::kraken::encode;
use krakenbook::readback::book_at;
use krakenbook::record::{BookState, FrameRecord, RecordBody};
use krakenbook::replay;
use krakenbook::store::{self, MigrateOptions, Writer, WriterConfig};
use krakenbook::time::Timestamp;
use krakenbook_testkit::{ClusterOptions, TempCluster};

pub(crate) const BENCH_READBACK_EXAMPLES: &str = "\
Examples:
  krakenbook-bench readback                         a day of BTC/USD-like data at depth 1000, 20 msg/s
  krakenbook-bench readback --span 2h --rate 50      smaller and denser";

/// `krakenbook-bench readback`.
#[derive(Debug, Args)]
pub struct BenchReadbackArgs {
    /// Kraken time to synthesize (e.g. 24h, 2h).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = krakenbook::config::positive_duration)]
    pub span: std::time::Duration,
    /// Book messages per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// `book --at` lookups to time.
    #[arg(long, default_value_t = 30)]
    pub lookups: usize,
    /// A book state every this many updates (the collector's default is 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub state_every: u64,
    /// Times to run each `replay --verify` from the database (the figures of every run are
    /// printed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Use this database instead of a throwaway cluster: synthesized into when it holds no book
    /// row (same --span and --rate), read as it is otherwise (the journal measurements are then
    /// skipped: the journal is not kept).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

/// Runs `krakenbook-bench readback`.
pub async fn run(args: BenchReadbackArgs) -> anyhow::Result<ExitCode> {
    let hours = args.span.as_secs_f64() / 3600.0;
    let messages = (hours * 3600.0 * args.rate) as u64;
    anyhow::ensure!(
        messages >= 1000,
        "--span x --rate must give at least 1000 messages"
    );
    let work = tempfile::tempdir()?;
    let journal_dir = work.path().join("journal");
    let (cluster, url) = match &args.database_url {
        Some(url) => (None, url.clone()),
        None => {
            let cluster = tokio::task::spawn_blocking(|| {
                TempCluster::with_options(ClusterOptions {
                    durable: false,
                    bindir: None,
                })
            })
            .await??;
            let url = cluster.create_database().await?;
            (Some(cluster), url)
        }
    };
    let mut client = store::connect(&url, "krakenbook-bench").await?;
    store::migrate(&client, &MigrateOptions::default()).await?;
    let start_ts = Timestamp::parse("2026-11-24T00:00:00Z")?;
    let step_ns = (1e9 / args.rate) as i64;
    let stored: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM krakenbook_book)", &[])
        .await?
        .get(0);
    // The journal's measurements need the journal this run wrote.
    let journaled = !stored;
    if stored {
        eprintln!("bench readback: reading the recording already in the database");
    } else {
        synthesize(&args, &url, &journal_dir, messages, start_ts, step_ns).await?;
        client.batch_execute("ANALYZE").await?;
    }
    let entries: i64 = client
        .query_one("SELECT count(*) FROM kraken_orderbook_entries", &[])
        .await?
        .get(0);
    eprintln!("bench readback: {messages} messages, {entries} levels stored");

    // book --at at random instants.
    let end_ts = start_ts.add_nanos(step_ns * messages as i64);
    let mut rng = krakenbook::rng::Rng::new(0x2545_f491_4f6c_dd1d);
    let mut times = Vec::new();
    let mut replayed = Vec::new();
    for _ in 0..args.lookups {
        let at = start_ts.add_nanos(rng.below(end_ts.nanos_since(start_ts) as u64) as i64);
        let t = Instant::now();
        let book = book_at(&client, "BTC/USD", at, 1000, None).await?;
        times.push(t.elapsed());
        anyhow::ensure!(
            book.is_verified(),
            "the rebuilt book at {at} did not verify"
        );
        replayed.push(book.messages_applied);
    }
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    println!(
        "book --at (depth 1000, {} lookups over {} h, {} rows): p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms; up to {} messages replayed per lookup",
        times.len(),
        hours,
        entries + messages as i64,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        replayed.iter().max().copied().unwrap_or(0)
    );

    // The coverage model over the whole recording: what `query` and every read path ask.
    let mut coverage_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let coverage = krakenbook::history::Source::Database(&client)
            .coverage_of("BTC/USD", None)
            .await?;
        coverage_times.push(t.elapsed());
        anyhow::ensure!(
            coverage.spans.len() == 1,
            "the synthesized recording is one verified span: {:?}",
            coverage.gaps
        );
    }
    coverage_times.sort();
    println!(
        "coverage of the whole recording ({} h): median {:.1} ms, max {:.1} ms",
        hours,
        coverage_times[coverage_times.len() / 2].as_secs_f64() * 1e3,
        coverage_times
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    );

    if journaled {
        // The same from the journal: one pass over every record.
        let t = Instant::now();
        let coverage = krakenbook::history::Source::Journal(&journal_dir)
            .coverage_of("BTC/USD", None)
            .await?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            coverage.spans.len() == 1,
            "the journal's coverage is one verified span: {:?}",
            coverage.gaps
        );
        println!(
            "coverage of the whole recording from the journal: {secs:.2} s = {:.0} records/s",
            messages as f64 / secs
        );

        // replay --verify from the journal.
        let dir = journal_dir.clone();
        let t = Instant::now();
        let report =
            tokio::task::spawn_blocking(move || replay::verify_journal(&dir, None, None, |_| {}))
                .await??;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(report.is_clean(), "journal replay disagreed");
        println!(
            "replay --verify from the journal: {} messages in {secs:.2} s = {:.0} messages/s",
            report.frames,
            report.frames as f64 / secs
        );
    }

    // replay --verify from the database, one hour, then all of it (no range).
    let from = start_ts.add_nanos(end_ts.nanos_since(start_ts) / 2);
    let hour = replay::DbScope {
        from: Some(from),
        to: Some(from.add_nanos(3_600_000_000_000)),
        ..replay::DbScope::default()
    };
    for (scope, what) in [
        (hour, "replay --verify from the database"),
        (
            replay::DbScope::default(),
            "replay --verify from the database, all of it",
        ),
    ] {
        for _ in 0..args.repeat {
            let t = Instant::now();
            let report = replay::verify_database(&mut client, &scope, |_| {})
                .await
                .context(what)?;
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(
                report.is_clean(),
                "database replay disagreed: {:?}",
                report.disagreements.first()
            );
            println!(
                "{what}: {} messages in {secs:.2} s = {:.0} messages/s",
                report.frames,
                report.frames as f64 / secs
            );
        }
    }
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}

/// Writes the synthetic recording to the journal in `journal_dir` and to the database at `url`.
async fn synthesize(
    args: &BenchReadbackArgs,
    url: &str,
    journal_dir: &std::path::Path,
    messages: u64,
    start_ts: Timestamp,
    step_ns: i64,
) -> anyhow::Result<()> {
    let hours = args.span.as_secs_f64() / 3600.0;
    eprintln!(
        "bench readback: synthesizing {messages} messages ({} h at {} msg/s, depth 1000)",
        hours, args.rate
    );
    let started = Instant::now();
    let (mut journal, _) = JournalWriter::open(JournalConfig::new(journal_dir))?;
    let mut writer = Writer::connect(url, WriterConfig::new("bench")).await?;
    let mut batch = Vec::with_capacity(5000);
    let mut seq = 0u64;
    let mut generator = Generator::new();
    let mut since_state = 0u64;
    for i in 0..messages {
        let ts = start_ts.add_nanos(step_ns * i as i64);
        let text = if i == 0 {
            // The subscription's ack comes first, as on a real connection: it gives the depth.
            format!(
                r#"{{"method":"subscribe","result":{{"channel":"book","depth":1000,"snapshot":true,"symbol":"BTC/USD"}},"success":true,"time_in":"{ts}","time_out":"{ts}"}}"#
            )
        } else {
            generator.next_frame(i == 1, ts)
        };
        let record_bytes = text.into_bytes();
        seq += 1;
        journal.append(Entry {
            received_at: ts,
            conn_id: 1,
            conn_seq: i + 1,
            body: RecordBody::Frame(FrameRecord {
                bytes: record_bytes.clone(),
                checksum_ok: (i > 0).then_some(true),
                best_bid: generator.book.best_bid(),
                best_ask: generator.book.best_ask(),
            }),
        })?;
        batch.push(krakenbook::record::Record {
            seq,
            received_at: ts,
            conn_id: 1,
            conn_seq: i + 1,
            body: RecordBody::Frame(FrameRecord {
                bytes: record_bytes,
                checksum_ok: (i > 0).then_some(true),
                best_bid: generator.book.best_bid(),
                best_ask: generator.book.best_ask(),
            }),
        });
        since_state += 1;
        if i > 1 && since_state >= args.state_every {
            since_state = 0;
            let view = generator.book.view(1000);
            let body = RecordBody::BookState(BookState {
                symbol: "BTC/USD".into(),
                depth: 1000,
                precision: generator.book.precision(),
                checksum: generator.book.checksum(),
                timestamp: ts,
                bids: view.bids,
                asks: view.asks,
            });
            seq += 1;
            journal.append(Entry {
                received_at: ts,
                conn_id: 1,
                conn_seq: 0,
                body: body.clone(),
            })?;
            batch.push(krakenbook::record::Record {
                seq,
                received_at: ts,
                conn_id: 1,
                conn_seq: 0,
                body,
            });
        }
        if batch.len() >= 5000 {
            writer.write_batch(&batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        writer.write_batch(&batch).await?;
    }
    journal.close()?;
    eprintln!(
        "bench readback: wrote {messages} messages in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A random walk of a depth-1000 book around 62,800.0 (precision 1/8).
struct Generator {
    book: OrderBook,
    rng: krakenbook::rng::Rng,
}

impl Generator {
    fn new() -> Self {
        let book = OrderBook::with_precision(1000, Some(Precision { price: 1, qty: 8 }));
        Generator {
            book,
            rng: krakenbook::rng::Rng::new(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn next(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn level(&mut self, bid: bool, near: u64) -> (Decimal, Decimal) {
        // Ranks concentrate near the top: the minimum of two uniform draws.
        let rank = (self.next() % near).min(self.next() % near) as u128;
        let price = if bid {
            628_000 - rank * 3
        } else {
            628_010 + rank * 3
        };
        let qty = if self.next().is_multiple_of(5) {
            0
        } else {
            1 + self.next() % 200_000_000
        };
        (
            Decimal::new(price, 1).unwrap_or_default(),
            Decimal::new(u128::from(qty), 8).unwrap_or_default(),
        )
    }

    fn next_frame(&mut self, snapshot: bool, ts: Timestamp) -> String {
        let (bids, asks): (Vec<_>, Vec<_>) = if snapshot {
            let bids = (0..1000u128)
                .map(|r| {
                    (
                        Decimal::new(628_000 - r * 3, 1).unwrap_or_default(),
                        Decimal::new(100_000_000 + r, 8).unwrap_or_default(),
                    )
                })
                .collect();
            let asks = (0..1000u128)
                .map(|r| {
                    (
                        Decimal::new(628_010 + r * 3, 1).unwrap_or_default(),
                        Decimal::new(100_000_000 + r, 8).unwrap_or_default(),
                    )
                })
                .collect();
            (bids, asks)
        } else {
            let n = 1 + self.next() % 3;
            let mut bids = Vec::new();
            let mut asks = Vec::new();
            for _ in 0..n {
                if self.next().is_multiple_of(2) {
                    let l = self.level(true, 1200);
                    bids.push(l);
                } else {
                    let l = self.level(false, 1200);
                    asks.push(l);
                }
            }
            (bids, asks)
        };
        let kind = if snapshot {
            BookKind::Snapshot
        } else {
            BookKind::Update
        };
        if snapshot {
            let _ = self.book.apply_snapshot(bids.clone(), asks.clone());
        } else {
            let _ = self.book.apply_update(bids.clone(), asks.clone());
        }
        encode::book(
            kind,
            "BTC/USD",
            bids,
            asks,
            self.book.precision(),
            self.book.checksum(),
            ts,
        )
    }
}
