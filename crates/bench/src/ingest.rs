//! `krakenbook-bench ingest`: throughput figures, measured in one run so that they compare on a
//! shared, noisy machine.
//!
//! It times the store writer against plain binary COPY of the very same rows into the
//! same tables: the writer's rate over COPY's is the figure of merit (goal: at least 0.75). The
//! writer runs as the collector's pipeline runs it: on a current-thread runtime of its own thread,
//! with batches cut as the pipeline's batcher cuts them under a backlog.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::SinkExt;
use tokio_postgres::Client;

use krakenbook::journal::Item;
use krakenbook::kraken::{self, Frame};
use krakenbook::record::Record;
use krakenbook::store::{
    self, BatchConfig, Batcher, DbTarget, MigrateOptions, RowEncoder, Streams, Writer,
    WriterConfig, rows,
};
use krakenbook_testkit::{ClusterOptions, TempCluster, capture};

pub(crate) const BENCH_INGEST_EXAMPLES: &str = "\
Examples:
  krakenbook-bench ingest                                  a throwaway TimescaleDB cluster, 100000 messages
  krakenbook-bench ingest --messages 20000 --batch 500
  krakenbook-bench ingest --database-url postgres://kb@localhost/postgres   (makes and drops a scratch database)";

/// `krakenbook-bench ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// A server to measure on: a scratch database is created there and dropped afterwards (needs
    /// CREATEDB). Default: a throwaway local cluster with durable settings (fsync on).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Book messages to store (the BTC/USD captures, repeated as needed).
    #[arg(long, default_value = "100000", value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub messages: u64,
    /// Records per writer batch at most (default: the collector's, `BatchConfig::max_records`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch: Option<u64>,
    /// Journal bytes per writer batch at most (default: the collector's,
    /// `BatchConfig::max_bytes`): a batch ends at whichever limit it reaches first, as the
    /// collector's batcher ends it under a backlog.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 30), value_name = "BYTES")]
    pub batch_bytes: Option<u64>,
    /// Rounds of (writer, COPY); the best of each is reported.
    #[arg(long, default_value = "2", value_parser = clap::value_parser!(u64).range(1..=20))]
    pub rounds: u64,
    /// Where the captures are (files named kraken_btcusd_*.ndjson).
    #[arg(long, default_value = "tests/fixtures/kraken-v2", value_name = "DIR")]
    pub fixtures: PathBuf,
}

/// Runs `krakenbook-bench ingest`.
pub async fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let records = bench_records(&args.fixtures, args.messages)?;
    let levels = count_levels(&records);
    let (target, _cluster, scratch) = match &args.database_url {
        Some(url) => {
            let server = DbTarget::parse(url)?;
            let admin = server.connect("krakenbook-bench").await?;
            let name = format!("krakenbook_bench_{}", std::process::id());
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                .await
                .context("dropping a stale scratch database")?;
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .with_context(|| {
                    format!(
                        "creating scratch database {name} on {} (bench needs CREATEDB; or run without --database-url for a throwaway cluster)",
                        server.redacted()
                    )
                })?;
            (server.with_dbname(&name), None, Some((admin, name)))
        }
        None => {
            let cluster = tokio::task::spawn_blocking(|| {
                TempCluster::with_options(ClusterOptions {
                    durable: true,
                    bindir: None,
                })
            })
            .await
            .context("starting a throwaway cluster")??;
            let url = cluster.create_database().await?;
            (DbTarget::parse(&url)?, Some(cluster), None)
        }
    };
    // The collector's database pipeline runs on a current-thread runtime of its own thread (its
    // connection's I/O and the writer's encoding take turns there): so does the bench's writer.
    let result = {
        let target = target.clone();
        tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the bench's runtime")?;
            runtime.block_on(measure(&args, &target, &records, levels))
        })
        .await
        .context("the bench's thread")?
    };
    if let Some((admin, name)) = scratch
        && let Err(e) = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
    {
        eprintln!("warning: could not drop scratch database {name}: {e}");
    }
    result
}

async fn measure(
    args: &IngestArgs,
    target: &DbTarget,
    records: &[Record],
    levels: u64,
) -> anyhow::Result<ExitCode> {
    let client = target.connect("krakenbook-bench").await?;
    store::migrate(&client, &MigrateOptions::default()).await?;
    let fsync: String = client.query_one("SHOW fsync", &[]).await?.get(0);
    let messages = records.len() as u64;
    let rows = messages + levels;
    let defaults = BatchConfig::default();
    let (max_records, max_bytes) = (
        args.batch.map_or(defaults.max_records, |n| n as usize),
        args.batch_bytes.unwrap_or(defaults.max_bytes),
    );
    let batches = batches(records, max_records, max_bytes);
    println!(
        "bench ingest: {messages} BTC/USD book messages with {levels} levels ({rows} rows), \
         batches of at most {max_records} records or {} KiB of journal ({} batches, {:.0} records \
         each on average), {} round(s); database {} (fsync {fsync}); {} CPU(s)",
        max_bytes / 1024,
        batches.len(),
        messages as f64 / batches.len().max(1) as f64,
        args.rounds,
        target.redacted(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // The ceiling's input: the same rows, encoded once, before timing.
    let mut encoder = RowEncoder::new("bench");
    let id: i16 = client
        .query_one("SELECT krakenbook_collector_id('bench')", &[])
        .await?
        .get(0);
    encoder.set_collector_id(id);
    for r in records {
        encoder.push(r)?;
    }
    let counts = encoder.counts();
    let Streams {
        messages: msg_rows,
        book: book_rows,
        ..
    } = encoder.finish();

    let mut best_writer = Duration::MAX;
    let mut best_copy = Duration::MAX;
    let mut best_encode = Duration::MAX;
    for _ in 0..args.rounds {
        // The writer's own work, without a database: decode and encode, batch by batch.
        let start = Instant::now();
        for batch in &batches {
            encoder.reset();
            for r in batch.iter() {
                encoder.push(r)?;
                let _ = encoder.take_book(128 * 1024);
            }
            std::hint::black_box(encoder.finish());
        }
        best_encode = best_encode.min(start.elapsed());

        truncate(&client).await?;
        let mut writer = Writer::with_target(target.clone(), WriterConfig::new("bench"));
        let start = Instant::now();
        for batch in &batches {
            writer.write_batch(batch).await?;
        }
        let t = start.elapsed();
        check_counts(&client, messages, levels).await?;
        best_writer = best_writer.min(t);

        truncate(&client).await?;
        let start = Instant::now();
        copy_raw(&client, msg_rows.clone(), book_rows.clone()).await?;
        let t = start.elapsed();
        check_counts(&client, counts.messages, counts.entries).await?;
        best_copy = best_copy.min(t);
    }
    truncate(&client).await?;

    let rate = |d: Duration, n: u64| n as f64 / d.as_secs_f64();
    println!(
        "writer (decode + COPY + checkpoint, one transaction per batch): {:>9.0} messages/s {:>10.0} rows/s ({:.2} s)",
        rate(best_writer, messages),
        rate(best_writer, rows),
        best_writer.as_secs_f64()
    );
    println!(
        "plain binary COPY of the same rows (pre-encoded):              {:>9.0} messages/s {:>10.0} rows/s ({:.2} s)",
        rate(best_copy, messages),
        rate(best_copy, rows),
        best_copy.as_secs_f64()
    );
    println!(
        "of which the writer's own decode + encode (no database):       {:>9.0} messages/s            ({:.2} s, {} batches)",
        rate(best_encode, messages),
        best_encode.as_secs_f64(),
        batches.len()
    );
    println!(
        "ratio writer/COPY: {:.2} (goal >= 0.75)",
        best_copy.as_secs_f64() / best_writer.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// N book-frame records from the BTC/USD captures, repeated as needed with fresh seqs and
/// receive times that keep increasing.
fn bench_records(dir: &Path, n: u64) -> anyhow::Result<Vec<Record>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "reading fixtures directory {} (see --fixtures)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("kraken_btcusd_") && f.ends_with(".ndjson"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "no kraken_btcusd_*.ndjson captures in {} (see --fixtures)",
            dir.display()
        );
    }
    let mut source = Vec::new();
    let mut seq = 1;
    for (i, f) in files.iter().enumerate() {
        let records = capture::read_capture(f, &mut seq, i as u64 + 1)?;
        source.extend(records.into_iter().filter(|r| {
            r.frame_text()
                .is_some_and(|t| matches!(kraken::decode(t), Ok(Frame::Book(_))))
        }));
    }
    let (Some(first), Some(last)) = (source.first(), source.last()) else {
        bail!("the captures in {} hold no book frames", dir.display());
    };
    let span = last.received_at.nanos_since(first.received_at) + 1_000_000;
    let mut out = Vec::with_capacity(n as usize);
    let mut round = 0i64;
    'fill: loop {
        for r in &source {
            if out.len() as u64 == n {
                break 'fill;
            }
            let mut r = r.clone();
            r.seq = out.len() as u64 + 1;
            // One connection: the captures of several depths share messages, which the writer
            // would store once with their copies; the bench measures one row per message.
            r.conn_id = 1;
            r.received_at = r.received_at.add_nanos(round * span);
            out.push(r);
        }
        round += 1;
    }
    Ok(out)
}

/// The records cut by the collector's own [`Batcher`] under a backlog: a batch ends when the
/// batcher says it is full (`max_records` records or `max_bytes` journal bytes).
fn batches(records: &[Record], max_records: usize, max_bytes: u64) -> Vec<&[Record]> {
    let mut batcher = Batcher::new(BatchConfig {
        max_records,
        max_bytes,
        ..BatchConfig::default()
    });
    let mut out = Vec::new();
    let mut start = 0;
    for (i, r) in records.iter().enumerate() {
        if batcher.push(Item::Record(r.clone())) {
            out.push(&records[start..=i]);
            start = i + 1;
            batcher.clear();
        }
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

fn count_levels(records: &[Record]) -> u64 {
    records
        .iter()
        .filter_map(Record::frame_text)
        .map(|t| match kraken::decode(t) {
            Ok(Frame::Book(b)) => b.data.iter().map(|d| d.level_count() as u64).sum(),
            _ => 0,
        })
        .sum()
}

async fn truncate(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(
            "TRUNCATE krakenbook_book, krakenbook_other, kraken_feed_events, \
             krakenbook_connections, krakenbook_checkpoints",
        )
        .await
        .context("truncating the bench tables")
}

async fn copy_raw(
    client: &Client,
    messages: bytes::Bytes,
    book: bytes::Bytes,
) -> anyhow::Result<()> {
    for (sql, mut data) in [(rows::COPY_MESSAGES, messages), (rows::COPY_BOOK, book)] {
        let sink = client.copy_in::<_, bytes::Bytes>(sql).await?;
        futures_util::pin_mut!(sink);
        while data.len() > 128 * 1024 {
            sink.feed(data.split_to(128 * 1024)).await?;
        }
        sink.feed(data).await?;
        sink.as_mut().finish().await?;
    }
    Ok(())
}

async fn check_counts(client: &Client, messages: u64, entries: u64) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM krakenbook_book) + (SELECT count(*) FROM krakenbook_other), \
                    (SELECT coalesce(sum(cardinality(levels) / 2), 0)::bigint FROM krakenbook_book)",
            &[],
        )
        .await?;
    let (m, e): (i64, i64) = (row.get(0), row.get(1));
    if (m as u64, e as u64) != (messages, entries) {
        bail!("stored {m} messages and {e} entries, expected {messages} and {entries}");
    }
    Ok(())
}
