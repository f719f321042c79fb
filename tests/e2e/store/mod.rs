//! The TimescaleDB store against a real TimescaleDB, one file per concern:
//! - `writer`: the writer's exactly-once guarantee on the real captures and under injected
//!   failures (a terminated backend, failed commits, a bad record in a batch), exact decimals and
//!   timestamps, malformed frames;
//! - `cluster`: the writer against the cluster's other sessions and its availability: the
//!   collector's lock held, left by a killed writer or by a stuck session, a database outage;
//! - `migrate`: schema and migrations, the original tool's tables and README queries, and the
//!   `migrate` command;
//! - `tls`: the TLS modes against a server with its own certificates.
//!
//! This file holds what they share: the captures read with serde_json alone (what the store
//! must hold, computed without krakenbook's decoder) and the checks that everything was stored
//! exactly once.

mod cluster;
mod migrate;
mod tls;
mod writer;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_postgres::{Client, SimpleQueryMessage};

use krakenbook::record::{FrameRecord, Record, RecordBody};
use krakenbook::store::{RetryPolicy, Writer, WriterConfig};
use krakenbook::time::Timestamp;

use crate::support::fixtures;

// ---------------------------------------------------------------------------------------------
// What the captures hold, read with serde_json alone (not krakenbook's decoder).

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default)]
    frame: Option<&'a RawValue>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    rx_ns: Option<i64>,
    #[serde(default)]
    captured_at: Option<String>,
}

#[derive(Deserialize)]
struct AnyFrame<'a> {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    time_out: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct BookPart<'a> {
    symbol: String,
    #[serde(borrow, default)]
    bids: Vec<RawLevel<'a>>,
    #[serde(borrow, default)]
    asks: Vec<RawLevel<'a>>,
    #[serde(default)]
    timestamp: Option<String>,
}

#[derive(Deserialize)]
struct RawLevel<'a> {
    #[serde(borrow)]
    price: &'a RawValue,
    #[serde(borrow)]
    qty: &'a RawValue,
}

/// One level as the capture has it: (seq, ordinal, side, price text, qty text, symbol, type).
pub(super) type ExpectedLevel = (i64, i16, String, String, String, String, String);

#[derive(Default)]
pub(super) struct Expected {
    /// Received frames (heartbeats included).
    pub(super) frames: u64,
    pub(super) heartbeats: u64,
    /// seq → frame text, for every frame that is stored (all but heartbeats).
    pub(super) stored: BTreeMap<i64, String>,
    /// seq → (symbol, type) of book frames.
    pub(super) books: BTreeMap<i64, (String, String)>,
    pub(super) levels: Vec<ExpectedLevel>,
    /// Per symbol, levels.
    pub(super) levels_by_symbol: BTreeMap<String, u64>,
    /// The stored `timestamp`s: Kraken's where given, else the receive time.
    pub(super) timestamps: Vec<Timestamp>,
}

/// Reads the captures the way the tests' records are numbered: every received frame of the six
/// files (sorted by name), seqs from 1.
pub(super) fn expected() -> Expected {
    let mut e = Expected::default();
    let mut seq = 0i64;
    for path in fixtures() {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut captured_at = None;
        let mut first_rx = None;
        for raw in text.lines().filter(|l| !l.trim().is_empty()) {
            let line: Line<'_> = serde_json::from_str(raw).unwrap();
            let Some(frame) = line.frame else {
                captured_at = line.captured_at.map(|t| Timestamp::parse(&t).unwrap());
                continue;
            };
            if line.dir.as_deref() == Some("tx") {
                continue;
            }
            seq += 1;
            e.frames += 1;
            let rx = line.rx_ns.unwrap();
            let received_at = captured_at
                .unwrap()
                .add_nanos(rx - *first_rx.get_or_insert(rx));
            let f: AnyFrame<'_> = serde_json::from_str(frame.get()).unwrap();
            if f.channel.as_deref() == Some("heartbeat") {
                e.heartbeats += 1;
                continue;
            }
            e.stored.insert(seq, frame.get().to_owned());
            let mut timestamp = f.time_out.map(|t| Timestamp::parse(&t).unwrap());
            if f.channel.as_deref() == Some("book") {
                let kind = f.kind.clone().unwrap();
                let parts: Vec<BookPart<'_>> = serde_json::from_str(f.data.unwrap().get()).unwrap();
                e.books.insert(seq, (parts[0].symbol.clone(), kind.clone()));
                timestamp = parts[0]
                    .timestamp
                    .as_deref()
                    .map(|t| Timestamp::parse(t).unwrap());
                let mut ordinal = 0i16;
                for part in &parts {
                    for (side, levels) in [("bid", &part.bids), ("ask", &part.asks)] {
                        for l in levels {
                            e.levels.push((
                                seq,
                                ordinal,
                                side.to_owned(),
                                l.price.get().to_owned(),
                                l.qty.get().to_owned(),
                                part.symbol.clone(),
                                kind.clone(),
                            ));
                            *e.levels_by_symbol.entry(part.symbol.clone()).or_default() += 1;
                            ordinal += 1;
                        }
                    }
                }
            }
            e.timestamps.push(timestamp.unwrap_or(received_at));
        }
    }
    e
}

pub(super) async fn write_all(
    url: &str,
    collector: &str,
    records: &[Record],
    batch: usize,
) -> Writer {
    let mut writer = Writer::new(url, WriterConfig::new(collector)).unwrap();
    for chunk in by_connection(records, batch) {
        writer
            .write_batch(chunk)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    writer
}

/// `records` in batches of at most `batch` that never span two connections: a message received on
/// two connections within one batch is stored once with both copies (`dups`), and the tests that
/// compare every frame with its own row write this way.
pub(super) fn by_connection(records: &[Record], batch: usize) -> Vec<&[Record]> {
    let mut out = Vec::new();
    for run in records.chunk_by(|a, b| a.conn_id == b.conn_id) {
        out.extend(run.chunks(batch));
    }
    out
}

pub(super) async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Rows of a simple-protocol query (exactly as a user would type it), as text.
pub(super) async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

pub(super) fn test_config(collector: &str) -> WriterConfig {
    WriterConfig {
        retry: RetryPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_attempts: Some(20),
        },
        ..WriterConfig::new(collector)
    }
}

pub(super) async fn assert_stored_once(client: &Client, records: &[Record]) {
    let e = expected();
    let n = records.len() as i64;
    // Every received copy: a book message's first copy and the copies packed with it, and every
    // other frame.
    const COPIES: &str = "SELECT k.name AS collector, c.seq, cardinality(c.levels) / 2 AS levels
                            FROM krakenbook_copies c
                            JOIN krakenbook_collectors k ON k.id = c.collector_id
                          UNION ALL
                          SELECT collector, seq, 0 FROM krakenbook_other";
    let messages = count(client, &format!("SELECT count(*) FROM ({COPIES}) x")).await;
    let distinct = count(
        client,
        &format!("SELECT count(DISTINCT (collector, seq)) FROM ({COPIES}) x"),
    )
    .await;
    let want_messages = e.stored.keys().filter(|s| **s <= n).count() as i64;
    assert_eq!((messages, distinct), (want_messages, want_messages));
    let entries = count(
        client,
        &format!("SELECT coalesce(sum(levels), 0)::bigint FROM ({COPIES}) x"),
    )
    .await;
    let want_entries = e.levels.iter().filter(|l| l.0 <= n).count() as i64;
    assert_eq!(entries, want_entries);
}

/// A frame record of `bytes`, numbered `seq`, received a microsecond per seq after a fixed
/// instant.
pub(super) fn frame_record(seq: u64, bytes: &[u8]) -> Record {
    Record {
        seq,
        received_at: Timestamp::parse("2026-08-18T10:00:00Z")
            .unwrap()
            .add_nanos(seq as i64 * 1000),
        conn_id: 9,
        conn_seq: seq,
        body: RecordBody::Frame(FrameRecord {
            bytes: bytes.to_vec(),
            checksum_ok: None,
            best_bid: None,
            best_ask: None,
        }),
    }
}
