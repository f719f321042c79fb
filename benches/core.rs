//! decode + apply + checksum over the real BTC/USD captures: the work the collector does for every
//! book message. Goal: at least 1,000,000 book messages per second on one core.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use krakenbook::book::{Tracker, Verdict};
use krakenbook::kraken::{self, Frame};
use krakenbook_testkit::capture::read_capture;

/// The received frames of a capture, in order, as their exact text.
fn frames(name: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kraken-v2")
        .join(name);
    read_capture(&path, &mut 1, 1)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter_map(|r| r.frame_text().map(str::to_owned))
        .collect()
}

fn run(frames: &[String]) -> u64 {
    let mut tracker = Tracker::new(10);
    let mut ok = 0;
    for text in frames {
        match kraken::decode(text) {
            Ok(Frame::Book(msg)) => {
                for data in &msg.data {
                    ok += u64::from(tracker.apply(msg.kind, data) == Verdict::Ok);
                }
            }
            Ok(other) => tracker.observe(&other),
            Err(e) => panic!("{e}"),
        }
    }
    ok
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_apply_checksum");
    for name in [
        "kraken_btcusd_d10_20260816.ndjson",
        "kraken_btcusd_d100_20260816.ndjson",
    ] {
        let frames = frames(name);
        let books = run(&frames);
        assert!(books > 800, "{name}: every book message verifies");
        group.throughput(Throughput::Elements(books));
        group.bench_function(name.trim_end_matches(".ndjson"), |b| {
            b.iter(|| black_box(run(black_box(&frames))))
        });
    }
    group.finish();
    let mut decode = c.benchmark_group("decode_only");
    let frames = frames("kraken_btcusd_d100_20260816.ndjson");
    decode.throughput(Throughput::Elements(frames.len() as u64));
    decode.bench_function("btcusd_d100", |b| {
        b.iter(|| frames.iter().filter(|t| kraken::decode(t).is_ok()).count())
    });
    decode.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
