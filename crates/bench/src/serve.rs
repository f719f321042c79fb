//! `krakenbook-bench serve`: how fast the web explorer's views answer.
//!
//! Synthesizes a recording of one pair at depth 100 into a throwaway TimescaleDB with the store
//! writer: `--history` of quiet history (one message every 10 s, a new connection every 4 hours:
//! subscription, snapshot, updates), then `--busy` of a busy pair (`--rate` messages per second,
//! a book state every 10,000 updates as the collector journals them). Every frame has a correct
//! checksum. Then it measures what `/api/` answers, in-process (the HTTP layer adds little):
//! - the coverage of the whole recording (a month by default);
//! - the book at an instant (depth 100) at random instants of the busy part;
//! - the heatmap (500 columns, depth 100) of one hour and of the whole busy part, JSON included.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use krakenbook::book::{Decimal, OrderBook, Precision};
use krakenbook::kraken::{BookKind, encode};
use krakenbook::readback::book_at;
use krakenbook::record::{BookState, FrameRecord, Record, RecordBody};
use krakenbook::store::{self, MigrateOptions, Writer, WriterConfig};
use krakenbook::time::Timestamp;
use krakenbook::web::heatmap::{HeatmapRequest, heatmap};
use krakenbook_testkit::{ClusterOptions, TempCluster};

pub(crate) const BENCH_SERVE_EXAMPLES: &str = "\
Examples:
  krakenbook-bench serve                          30 quiet days, then 24 busy hours at 20 msg/s
  krakenbook-bench serve --history 2d --busy 2h  a quick run";

/// `krakenbook-bench serve`.
#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// Quiet history before the busy part (e.g. 30d).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = krakenbook::config::duration)]
    pub history: std::time::Duration,
    /// The busy part (at least 1h).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = krakenbook::config::duration)]
    pub busy: std::time::Duration,
    /// Book messages per second in the busy part.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Heatmap columns.
    #[arg(long, default_value_t = 500)]
    pub columns: usize,
}

const SYMBOL: &str = "BTC/USD";
const DEPTH: usize = 100;
const STATE_EVERY: u64 = 10_000;

/// A random walk of a depth-100 book near 62,800.0 (precision 1/8), and the records of it.
struct Synth {
    book: OrderBook,
    rng: krakenbook::rng::Rng,
    seq: u64,
    conn: u64,
    conn_seq: u64,
    since_state: u64,
    batch: Vec<Record>,
}

impl Synth {
    fn next(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn push(&mut self, at: Timestamp, body: RecordBody, conn_seq: u64) {
        self.seq += 1;
        self.batch.push(Record {
            seq: self.seq,
            received_at: at,
            conn_id: self.conn,
            conn_seq,
            body,
        });
    }

    fn frame(&mut self, at: Timestamp, text: String, verified: Option<bool>) {
        self.conn_seq += 1;
        let body = RecordBody::Frame(FrameRecord {
            bytes: text.into_bytes(),
            checksum_ok: verified,
            best_bid: self.book.best_bid(),
            best_ask: self.book.best_ask(),
        });
        self.push(at, body, self.conn_seq);
    }

    /// A new connection: the subscription's ack and a snapshot.
    fn connect(&mut self, at: Timestamp) {
        self.conn += 1;
        self.conn_seq = 0;
        self.since_state = 0;
        self.frame(
            at,
            format!(
                r#"{{"method":"subscribe","result":{{"channel":"book","depth":{DEPTH},"snapshot":true,"symbol":"{SYMBOL}"}},"success":true,"time_in":"{at}","time_out":"{at}"}}"#
            ),
            None,
        );
        let level = |base: u128, up: bool, r: u128| {
            let price = if up { base + r * 3 } else { base - r * 3 };
            (
                Decimal::new(price, 1).unwrap_or_default(),
                Decimal::new(100_000_000 + r, 8).unwrap_or_default(),
            )
        };
        let bids: Vec<_> = (0..DEPTH as u128)
            .map(|r| level(628_000, false, r))
            .collect();
        let asks: Vec<_> = (0..DEPTH as u128)
            .map(|r| level(628_010, true, r))
            .collect();
        let _ = self.book.apply_snapshot(bids.clone(), asks.clone());
        let text = encode::book(
            BookKind::Snapshot,
            SYMBOL,
            bids,
            asks,
            self.book.precision(),
            self.book.checksum(),
            at.add_nanos(1000),
        );
        self.frame(at.add_nanos(1000), text, Some(true));
    }

    fn update(&mut self, at: Timestamp) {
        let n = 1 + self.next() % 3;
        let (mut bids, mut asks) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let bid = self.next().is_multiple_of(2);
            let rank = u128::from((self.next() % 120).min(self.next() % 120));
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
            let level = (
                Decimal::new(price, 1).unwrap_or_default(),
                Decimal::new(u128::from(qty), 8).unwrap_or_default(),
            );
            if bid {
                bids.push(level);
            } else {
                asks.push(level);
            }
        }
        let _ = self.book.apply_update(bids.clone(), asks.clone());
        let text = encode::book(
            BookKind::Update,
            SYMBOL,
            bids,
            asks,
            self.book.precision(),
            self.book.checksum(),
            at,
        );
        self.frame(at, text, Some(true));
        self.since_state += 1;
        if self.since_state >= STATE_EVERY {
            self.since_state = 0;
            let view = self.book.view(DEPTH);
            let body = RecordBody::BookState(BookState {
                symbol: SYMBOL.into(),
                depth: DEPTH as u16,
                precision: self.book.precision(),
                checksum: self.book.checksum(),
                timestamp: at,
                bids: view.bids,
                asks: view.asks,
            });
            self.push(at, body, 0);
        }
    }
}

/// Runs `krakenbook-bench serve`.
pub async fn run(args: BenchServeArgs) -> anyhow::Result<ExitCode> {
    let hours = args.busy.as_secs_f64() / 3600.0;
    let days = args.history.as_secs_f64() / 86_400.0;
    anyhow::ensure!(
        hours >= 1.0 && args.rate > 0.0,
        "--busy must be at least 1h and --rate positive"
    );
    let cluster = tokio::task::spawn_blocking(|| {
        TempCluster::with_options(ClusterOptions {
            durable: false,
            bindir: None,
        })
    })
    .await??;
    let url = cluster.create_database().await?;
    let client = store::connect(&url, "krakenbook bench").await?;
    store::migrate(&client, &MigrateOptions::default()).await?;
    let mut writer = Writer::connect(&url, WriterConfig::new("bench")).await?;
    let started = Instant::now();
    let mut s = Synth {
        book: OrderBook::with_precision(DEPTH, Some(Precision { price: 1, qty: 8 })),
        rng: krakenbook::rng::Rng::new(0x9e37_79b9_7f4a_7c15),
        seq: 0,
        conn: 0,
        conn_seq: 0,
        since_state: 0,
        batch: Vec::with_capacity(5000),
    };
    let start = Timestamp::parse("2026-10-25T00:00:00Z")?;
    const SEC: i64 = 1_000_000_000;
    // Quiet history: a message every 10 s, a new connection every 4 hours.
    let quiet_end = start.add_nanos(i64::try_from(args.history.as_nanos()).unwrap_or(i64::MAX));
    let mut t = start;
    while t < quiet_end {
        if t.nanos_since(start) % (4 * 3600 * SEC) == 0 {
            s.connect(t);
        }
        s.update(t.add_nanos(5 * SEC));
        t = t.add_nanos(10 * SEC);
        if s.batch.len() >= 5000 {
            writer.write_batch(&s.batch).await?;
            s.batch.clear();
        }
    }
    // The busy part, on one connection.
    let busy_start = quiet_end;
    let messages = (hours * 3600.0 * args.rate) as i64;
    let step = (1e9 / args.rate) as i64;
    s.connect(busy_start);
    for i in 1..=messages {
        s.update(busy_start.add_nanos(i * step));
        if s.batch.len() >= 5000 {
            writer.write_batch(&s.batch).await?;
            s.batch.clear();
        }
    }
    if !s.batch.is_empty() {
        writer.write_batch(&s.batch).await?;
    }
    client.batch_execute("ANALYZE").await?;
    let busy_end = busy_start.add_nanos(messages * step);
    let rows: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM kraken_orderbook_messages) + (SELECT count(*) FROM kraken_orderbook_entries)",
            &[],
        )
        .await?
        .get(0);
    eprintln!(
        "bench serve: wrote {} records ({rows} message and level rows, {} connections) in {:.0} s",
        s.seq,
        s.conn,
        started.elapsed().as_secs_f64()
    );

    // Coverage of everything (a month by default).
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let c = krakenbook::history::Source::Database(&client)
            .coverage_of(SYMBOL, None)
            .await?;
        let json = serde_json::to_vec(&c)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(!json.is_empty() && !c.spans.is_empty(), "no coverage");
    }
    times.sort_by(f64::total_cmp);
    println!(
        "coverage of {} days + {} h ({} connections): median {:.0} ms, max {:.0} ms",
        days,
        hours,
        s.conn,
        times[times.len() / 2],
        times[times.len() - 1]
    );

    // The book at an instant, depth 100.
    let mut times = Vec::new();
    let mut rng = krakenbook::rng::Rng::new(0x2545_f491_4f6c_dd1d);
    for _ in 0..20 {
        let at = busy_start.add_nanos(rng.below(busy_end.nanos_since(busy_start) as u64) as i64);
        let t = Instant::now();
        let b = book_at(&client, SYMBOL, at, DEPTH, None).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(b.is_verified(), "the book at {at} did not verify");
    }
    times.sort_by(f64::total_cmp);
    println!(
        "book at an instant (depth 100, 20 instants): p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        times[10], times[18], times[19]
    );

    // Heatmaps.
    let measure = async |label: &str, from: Timestamp, to: Timestamp| -> anyhow::Result<()> {
        let t = Instant::now();
        let map = heatmap(
            &client,
            &HeatmapRequest {
                symbol: SYMBOL.into(),
                collector: None,
                from,
                to,
                columns: args.columns,
                depth: DEPTH,
            },
        )
        .await?;
        let json = serde_json::to_vec(&map)?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            map.stats.verified == map.columns.len(),
            "blank columns in a verified range: {:?}",
            map.stats
        );
        println!(
            "heatmap of {label} ({} columns, depth 100): {secs:.2} s, {} messages applied, {} books started, {} KB of JSON",
            map.columns.len(),
            map.stats.messages_applied,
            map.stats.books_started,
            json.len() / 1024
        );
        Ok(())
    };
    let hour_from = busy_start.add_nanos(busy_end.nanos_since(busy_start) / 2);
    measure("one hour", hour_from, hour_from.add_nanos(3600 * SEC)).await?;
    measure(&format!("{} h", hours), busy_start.add_nanos(SEC), busy_end).await?;
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}
