//! decode + apply + checksum over the real BTC/USD captures: the work the collector does for every
//! book message. Goal: at least 1,000,000 book messages per second on one core. Also: decode
//! alone, and the database thread's encoding of book rows, for frames in Kraken's layout and for
//! the same frames as another exchange might write them (Python's spacing, a Go map's order).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use krakenbook::book::{Tracker, Verdict};
use krakenbook::kraken::{self, Frame};
use krakenbook::record::{Record, RecordBody};
use krakenbook::store::RowEncoder;
use krakenbook::store::book_rows::sorted_form;
use krakenbook_testkit::capture::read_capture;

/// The records of a capture, in order.
fn records(name: &str) -> Vec<Record> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kraken-v2")
        .join(name);
    read_capture(&path, &mut 1, 1).unwrap_or_else(|e| panic!("{e}"))
}

/// The received frames of a capture, in order, as their exact text.
fn frames(name: &str) -> Vec<String> {
    records(name)
        .iter()
        .filter_map(|r| r.frame_text().map(str::to_owned))
        .collect()
}

/// A Kraken frame as Python's `json.dumps` writes it by default (`", "`, `": "`; Kraken's strings
/// hold no `,` and no `":`).
fn python_spaced(text: &str) -> String {
    text.replace(',', ", ").replace("\":", "\": ")
}

/// The capture's book frames, each written by `layout`.
fn book_records(name: &str, layout: fn(&str) -> String) -> Vec<Record> {
    let mut out = records(name);
    out.retain(|r| {
        r.frame_text()
            .is_some_and(|t| t.starts_with(r#"{"channel":"book""#))
    });
    for r in &mut out {
        if let RecordBody::Frame(f) = &mut r.body {
            f.bytes = layout(std::str::from_utf8(&f.bytes).unwrap()).into_bytes();
        }
    }
    out
}

/// Encodes the records' rows as the database thread does, a batch of all of them: the book
/// table's COPY stream.
fn encode(encoder: &mut RowEncoder, records: &[Record]) -> bytes::Bytes {
    encoder.reset();
    for r in records {
        encoder.push(r).unwrap();
    }
    encoder.finish().book
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
    let spaced: Vec<String> = frames.iter().map(|t| python_spaced(t)).collect();
    decode.bench_function("btcusd_d100_python_spaced", |b| {
        b.iter(|| spaced.iter().filter(|t| kraken::decode(t).is_ok()).count())
    });
    decode.finish();
    let mut rows = c.benchmark_group("book_rows");
    type Layout = fn(&str) -> String;
    let layouts: [(&str, Layout); 3] = [
        ("kraken", str::to_owned),
        ("python_spaced", python_spaced),
        ("sorted", |t| {
            String::from_utf8(sorted_form(t.as_bytes()).unwrap()).unwrap()
        }),
    ];
    let mut kraken_rows = None;
    for (name, layout) in layouts {
        let records = book_records("kraken_btcusd_d100_20260816.ndjson", layout);
        let mut encoder = RowEncoder::new("bench");
        let stream = encode(&mut encoder, &records);
        // Every layout is stored as the very rows of Kraken's, without `raw`.
        assert_eq!(
            &stream,
            kraken_rows.get_or_insert_with(|| stream.clone()),
            "{name}"
        );
        rows.throughput(Throughput::Elements(records.len() as u64));
        rows.bench_function(format!("btcusd_d100_{name}"), |b| {
            b.iter(|| black_box(encode(&mut encoder, black_box(&records))))
        });
    }
    rows.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
