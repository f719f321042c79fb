//! Helpers shared by the end-to-end tests.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The built `krakenbook` binary.
pub fn krakenbook() -> Command {
    Command::new(env!("CARGO_BIN_EXE_krakenbook"))
}

/// Runs `krakenbook` with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    krakenbook().args(args).output().expect("krakenbook runs")
}

/// The real Kraken captures under `tests/fixtures/kraken-v2`.
pub fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kraken-v2");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        6,
        "expected the six captures in {}",
        dir.display()
    );
    files
}

/// The three pairs most recordings use: BTC/USD and ETH/USD moving at the simulator's rate, and
/// MINA/GBP quiet (its every snapshot carries the time of its only change, before the recording),
/// at price precisions 1, 2 and 4 (quantities 8).
pub fn three_pairs() -> Vec<krakenbook::exchange::PairSpec> {
    let pair = |s: &str, p: u8, rate: Option<f64>| krakenbook::exchange::PairSpec {
        symbol: s.into(),
        precision: krakenbook::book::Precision { price: p, qty: 8 },
        mid: None,
        rate,
    };
    vec![
        pair("BTC/USD", 1, None),
        pair("ETH/USD", 2, None),
        pair("MINA/GBP", 4, Some(0.0)),
    ]
}
