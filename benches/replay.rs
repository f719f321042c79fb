//! Replay speed from the journal: read records, decode, apply, checksum, compare verdicts.
//! Goal: a million book messages per second per core.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use krakenbook::book::{Tracker, Verdict};
use krakenbook::journal::{Entry, JournalConfig, JournalWriter};
use krakenbook::kraken::{self, Frame};
use krakenbook::record::{FrameRecord, RecordBody};
use krakenbook::replay::verify_journal;
use krakenbook::time::Timestamp;

fn frames(name: &str) -> Vec<String> {
    let path = format!(
        "{}/tests/fixtures/kraken-v2/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.contains(r#""dir": "tx""#))
        .filter_map(|l| {
            l.find(r#""frame": "#)
                .map(|i| l[i + 9..l.len() - 1].to_owned())
        })
        .collect()
}

/// A journal of `copies` connections, each replaying the BTC/USD depth-100 capture.
fn build(dir: &std::path::Path, copies: u64) -> u64 {
    let frames = frames("kraken_btcusd_d100_20260816.ndjson");
    let mut config = JournalConfig::new(dir);
    config.compression_level = 0;
    let (mut w, _) = JournalWriter::open(config).unwrap();
    let mut books = 0;
    for conn in 1..=copies {
        let mut tracker = Tracker::new(10);
        for (i, text) in frames.iter().enumerate() {
            let checksum_ok = match kraken::decode(text).unwrap() {
                Frame::Book(msg) => {
                    books += 1;
                    Some(tracker.apply(msg.kind, &msg.data[0]) == Verdict::Ok)
                }
                other => {
                    tracker.observe(&other);
                    None
                }
            };
            w.append(Entry {
                received_at: Timestamp::from_unix_nanos(i as i64),
                conn_id: conn,
                conn_seq: i as u64 + 1,
                body: RecordBody::Frame(FrameRecord {
                    bytes: text.clone().into_bytes(),
                    checksum_ok,
                    best_bid: None,
                    best_ask: None,
                }),
            })
            .unwrap();
        }
    }
    w.close().unwrap();
    books
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let books = build(dir.path(), 20);
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.throughput(Throughput::Elements(books));
    group.bench_function("verify_journal_btcusd_d100_x20", |b| {
        b.iter(|| {
            let report = verify_journal(black_box(dir.path()), None, None, |_| {}).unwrap();
            assert!(report.is_clean());
            report.records
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
