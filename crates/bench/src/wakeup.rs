//! `krakenbook-bench wakeup`: what one wake-up of a sleeping thread costs on this machine, the
//! floor under the collector's CPU at low message rates.
//!
//! A thread that does nothing but sleep for a period and wake, `--count` times, reads the CPU
//! time the kernel charged it (its `schedstat`: run time in nanoseconds) and divides. On bare
//! metal this is a few microseconds; in a virtual machine whose idle CPUs halt, waking costs the
//! exits and entries of the hypervisor, charged to the thread that woke. The collector wakes
//! once per read tick (`--read-every`) plus a few times a second for the journal and the
//! database; at a few hundred messages a second those wake-ups, not the messages, are most of
//! its CPU (README, "CPU per message").

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

pub(crate) const BENCH_WAKEUP_EXAMPLES: &str = "\
Examples:
  krakenbook-bench wakeup                         sleep 10 ms, 300 times
  krakenbook-bench wakeup --every 30ms --count 100";

/// `krakenbook-bench wakeup`.
#[derive(Debug, Args)]
pub struct BenchWakeupArgs {
    /// How long each sleep lasts (1ms to 1s); several may be given, measured one after another.
    #[arg(long, value_name = "DURATION", value_delimiter = ',', default_value = "10ms", value_parser = sleep_period)]
    pub every: Vec<Duration>,
    /// How many wake-ups to measure for each period.
    #[arg(long, value_name = "N", default_value = "300", value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub count: u32,
}

fn sleep_period(text: &str) -> Result<Duration, String> {
    let d = krakenbook::config::duration(text)?;
    if !(Duration::from_millis(1)..=Duration::from_secs(1)).contains(&d) {
        return Err(format!("{text:?}: give 1ms to 1s"));
    }
    Ok(d)
}

/// Runs `krakenbook-bench wakeup`.
pub async fn run(args: BenchWakeupArgs) -> anyhow::Result<ExitCode> {
    for every in args.every {
        let count = args.count;
        let per_wakeup = tokio::task::spawn_blocking(move || sleeper(every, count))
            .await
            .context("the sleeping thread")??;
        println!(
            "a thread sleeping {:?} and waking, {count} times: {:.1} µs of CPU per wake-up ({:.2}% of a core at this period)",
            every,
            per_wakeup * 1e6,
            100.0 * per_wakeup / every.as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// CPU seconds the calling thread was charged per wake-up over `count` sleeps of `every`.
fn sleeper(every: Duration, count: u32) -> anyhow::Result<f64> {
    let before = own_run_time()?;
    for _ in 0..count {
        std::thread::sleep(every);
    }
    let after = own_run_time()?;
    Ok(per_wakeup(before, after, count))
}

fn per_wakeup(before_ns: u64, after_ns: u64, count: u32) -> f64 {
    after_ns.saturating_sub(before_ns) as f64 / 1e9 / f64::from(count.max(1))
}

/// The calling thread's run time so far, in nanoseconds (the first field of its schedstat).
fn own_run_time() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat (Linux only)")?;
    crate::collect::run_time_ns(&text).context("an unreadable /proc/thread-self/schedstat")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_out_of_range_are_refused_with_the_range() {
        assert_eq!(sleep_period("10ms"), Ok(Duration::from_millis(10)));
        assert!(sleep_period("0ms").unwrap_err().contains("1ms to 1s"));
        assert!(sleep_period("2s").unwrap_err().contains("1ms to 1s"));
    }

    #[test]
    fn the_cost_is_the_run_time_over_the_wake_ups() {
        assert_eq!(per_wakeup(1_000, 51_000, 1), 50e-6);
        assert_eq!(per_wakeup(0, 5_000_000, 100), 50e-6);
        assert_eq!(
            per_wakeup(10, 5, 3),
            0.0,
            "a clock that went back counts nothing"
        );
    }

    #[test]
    fn the_thread_run_time_moves_forward() {
        let a = own_run_time().unwrap();
        // Busy for 20 ms of wall time (a loop the optimiser could fold away took no time in a
        // release build).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let b = own_run_time().unwrap();
        assert!(b > a, "{a} -> {b}");
    }
}
