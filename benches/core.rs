//! decode + apply + checksum over the real BTC/USD captures: the work the collector does for every
//! book message. Goal: at least 1,000,000 book messages per second on one core.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use krakenbook::book::{Tracker, Verdict};
use krakenbook::kraken::{self, Frame};

/// The received frames of a capture, in order, as their exact text.
fn frames(name: &str) -> Vec<String> {
    let path = format!(
        "{}/tests/fixtures/kraken-v2/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            if v.get("dir").and_then(|d| d.as_str()) == Some("tx") {
                return None;
            }
            // Re-extract the frame's exact text (a Value would drop trailing zeros).
            let start = line.find("\"frame\": ")? + "\"frame\": ".len();
            Some(line[start..line.len() - 1].to_owned())
        })
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
