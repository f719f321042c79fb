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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use krakenbook::exchange::{SimConfig, Simulator};

    use crate::collect::Collector;

    /// The processes whose command line holds `needle`.
    fn processes_with(needle: &str) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
            })
            .collect()
    }

    /// A collector that a failing test never stops (a panic between `start` and `stop`) is killed
    /// and reaped when it goes out of scope: no process is left recording, no zombie left.
    #[tokio::test]
    async fn a_collector_dropped_without_being_stopped_is_killed_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Simulator::bind(SimConfig::default()).await.unwrap();
        let collector = Collector::start(&sim, None, dir.path(), &[]);
        let journal = dir.path().join("journal");
        // The child may not have exec'd yet on a loaded machine: its command line shows once it has.
        let mut pids = processes_with(journal.to_str().unwrap());
        for _ in 0..100 {
            if !pids.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            pids = processes_with(journal.to_str().unwrap());
        }
        assert_eq!(pids.len(), 1, "{pids:?}");
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _running = collector;
            panic!("a test failing while its collector runs");
        }));
        assert!(failed.is_err());
        assert!(
            !Path::new(&format!("/proc/{}", pids[0])).exists(),
            "process {} is still there",
            pids[0]
        );
        sim.shutdown().await.unwrap();
    }
}
