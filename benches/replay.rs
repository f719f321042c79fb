//! Replay speed from the journal: read records, decode, apply, checksum, compare verdicts.
//! Goal: a million book messages per second per core.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use krakenbook::journal::{Entry, JournalConfig, JournalWriter};
use krakenbook::record::RecordBody;
use krakenbook::replay::verify_journal;
use krakenbook_testkit::capture::read_capture;

/// A journal of `copies` connections, each the BTC/USD depth-100 capture as the collector would
/// have journaled it; returns the number of book messages.
fn build(dir: &std::path::Path, copies: u64) -> u64 {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kraken-v2/kraken_btcusd_d100_20260816.ndjson");
    let mut config = JournalConfig::new(dir);
    config.compression_level = 0;
    let (mut w, _) = JournalWriter::open(config).unwrap();
    let mut books = 0;
    let mut seq = 1;
    for conn in 1..=copies {
        for r in read_capture(&path, &mut seq, conn).unwrap() {
            if let RecordBody::Frame(f) = &r.body {
                books += u64::from(f.checksum_ok.is_some());
            }
            w.append(Entry {
                received_at: r.received_at,
                conn_id: r.conn_id,
                conn_seq: r.conn_seq,
                body: r.body,
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
