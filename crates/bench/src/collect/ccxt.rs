//! `krakenbook-bench collect --beside-ccxt PYTHON`: ccxt, the original tool's engine, on the same
//! simulated feed as the collector and measured over the same window (issue 13: the collector at
//! 20 times less CPU a book message than ccxt on the same feed).
//!
//! `PYTHON` is an interpreter with ccxt installed (`scripts/interop` makes one under
//! `target/interop/venv-main`; `python3 -m venv V && V/bin/pip install ccxt==4.5.90` does too). It
//! runs `scripts/interop.d/ccxt_cpu.py`: ccxt.pro's Kraken client keeping every book at the
//! collector's depth with `watch_order_book`, and nothing else (no storage, no journal, no
//! checksum: ccxt's own raises on the first message), which is less than the original tool did
//! (it saved every message into TimescaleDB) and far less than the collector does. Its CPU is
//! its threads' run time (`schedstat`, as the collector's), divided by the book messages it
//! handled in the window (the count it writes every 200 ms).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, bail};

use super::{Market, ThreadReading, peak_rss_bytes, thread_cpu};

/// The consumer script, in this repository.
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/interop.d/ccxt_cpu.py"
);

/// The ccxt consumer process.
pub(super) struct Ccxt {
    child: tokio::process::Child,
    pid: u32,
    count_file: PathBuf,
}

/// The consumer at one instant: its threads' CPU so far, book messages handled, connections
/// lost.
pub(super) struct CcxtReading {
    at: Instant,
    threads: Vec<ThreadReading>,
    handled: f64,
    lost: f64,
}

impl Ccxt {
    /// Starts ccxt with `python` on `market` at `depth`, its count file under `dir`.
    pub(super) fn spawn(
        python: &Path,
        market: &Market,
        depth: impl std::fmt::Display,
        dir: &Path,
    ) -> anyhow::Result<Ccxt> {
        let count_file = dir.join("ccxt.count");
        let child = tokio::process::Command::new(python)
            .arg(SCRIPT)
            .args(["--url", &format!("ws://{}/v2", market.sim.local_addr())])
            .args(["--symbols", &market.symbols.join(",")])
            .args(["--depth", &depth.to_string()])
            .arg("--count-file")
            .arg(&count_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} {SCRIPT}", python.display()))?;
        let pid = child.id().context("ccxt's pid")?;
        Ok(Ccxt {
            child,
            pid,
            count_file,
        })
    }

    /// Fails when the consumer has exited (ccxt missing from `python`: it said why on stderr).
    pub(super) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the ccxt consumer exited ({status}; its reason is above): --beside-ccxt needs an interpreter with ccxt installed"
            );
        }
        Ok(())
    }

    /// Its CPU and counts now; an error when it has exited or has handled nothing yet.
    pub(super) fn reading(&mut self) -> anyhow::Result<CcxtReading> {
        self.check_running()?;
        let threads = thread_cpu(self.pid)?;
        let counts: Vec<f64> = std::fs::read_to_string(&self.count_file)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let [handled, lost] = counts[..] else {
            bail!("the ccxt consumer has handled no book message yet (no count after the warm-up)");
        };
        Ok(CcxtReading {
            at: Instant::now(),
            threads,
            handled,
            lost,
        })
    }

    /// Peak memory so far.
    pub(super) fn peak_rss(&self) -> anyhow::Result<u64> {
        peak_rss_bytes(self.pid)
    }

    /// Stops it (it keeps nothing).
    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Prints ccxt's figures over the window and the collector's CPU per message against them.
pub(super) fn print(
    start: &CcxtReading,
    end: &CcxtReading,
    peak_rss: u64,
    collector_micros_per_message: f64,
    collector_messages: f64,
) {
    let wall = end.at.duration_since(start.at).as_secs_f64();
    // Per thread, as the collector's: a thread new in the window counts from zero.
    let cpu: f64 = end
        .threads
        .iter()
        .map(|t| {
            let before = start
                .threads
                .iter()
                .find(|s| s.tid == t.tid)
                .map_or(0.0, |s| s.cpu);
            t.cpu - before
        })
        .sum();
    let handled = end.handled - start.handled;
    let micros = 1e6 * cpu / handled.max(1.0);
    println!(
        "ccxt on the same feed:       {:.0} book messages/s handled, {:.2}% of one core ({:.1} µs per book message), peak RSS {:.1} MB",
        handled / wall,
        100.0 * cpu / wall,
        micros,
        peak_rss as f64 / 1e6
    );
    let lost = end.lost - start.lost;
    if lost > 0.0 || handled < 0.95 * collector_messages {
        println!(
            "ccxt fell behind the feed in the window ({lost} connection(s) lost, {handled:.0} of the collector's {collector_messages:.0} book messages handled): its figure is not comparable"
        );
        return;
    }
    if handled > 0.0 && collector_micros_per_message > 0.0 {
        println!(
            "ccxt / collector, CPU per book message: {:.1}",
            micros / collector_micros_per_message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The consumer script is where the bench looks for it, and runs (its `--help` needs no
    /// ccxt: ccxt is imported only to consume).
    #[test]
    fn the_consumer_script_is_found_and_runs() {
        assert!(Path::new(SCRIPT).is_file(), "{SCRIPT}");
        let out = std::process::Command::new("python3")
            .arg(SCRIPT)
            .arg("--help")
            .output()
            .expect("python3 runs");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{help}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(help.contains("--count-file"), "{help}");
    }
}
