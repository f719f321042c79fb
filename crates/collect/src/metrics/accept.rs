//! Pacing of the metrics server's accept loop after errors; decisions only, no I/O.
//!
//! An accept error is never retried at once. Under file-descriptor exhaustion (`EMFILE`,
//! `ENFILE`) the pending connection stays queued, so every retry fails again at once: retried in
//! a tight loop, it spun a core, wrote 225,000 warnings (26 MB) in 3 s, and kept the process at
//! its descriptor limit until the journal could not open a segment (issue 9, item 5).
//!
//! - [`AcceptBackoff`]: the pause after each consecutive error doubles from [`MIN_PAUSE`] up to
//!   [`MAX_PAUSE`]; a successful accept resets it.
//! - [`ErrorLog`]: at most one log line per [`LOG_EVERY`] whatever the error rate, each carrying
//!   the number of errors left unlogged since the previous line.
//!
//! What must always hold: however many errors, the loop waits at least [`MIN_PAUSE`] per error and
//! writes at most one line per [`LOG_EVERY`] (plus the first).

use std::time::Duration;

use tokio::time::Instant;

/// The pause after the first of consecutive accept errors.
pub const MIN_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between accept attempts while errors go on.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line about accept errors per this period.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The pause before the next accept after an error: doubling, capped, reset by a success.
#[derive(Clone, Debug)]
pub struct AcceptBackoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff::new(MIN_PAUSE, MAX_PAUSE)
    }
}

impl AcceptBackoff {
    /// Pauses start at `min` and double up to `max` (at least `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        AcceptBackoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// An accept failed: how long to wait before the next one.
    pub fn on_error(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        pause
    }

    /// An accept succeeded: the next error starts from the shortest pause again.
    pub fn on_success(&mut self) {
        self.next = self.min;
    }
}

/// Decides which accept errors are logged: one line per period at most.
#[derive(Clone, Debug)]
pub struct ErrorLog {
    every: Duration,
    last_line: Option<Instant>,
    unlogged: u64,
}

impl Default for ErrorLog {
    fn default() -> Self {
        ErrorLog::new(LOG_EVERY)
    }
}

impl ErrorLog {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        ErrorLog {
            every,
            last_line: None,
            unlogged: 0,
        }
    }

    fn may_log(&self, now: Instant) -> bool {
        self.last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= self.every)
    }

    /// An accept failed at `now`: `Some(n)` to log it, with `n` errors left unlogged before it;
    /// `None` to count it silently.
    pub fn on_error(&mut self, now: Instant) -> Option<u64> {
        if self.may_log(now) {
            self.last_line = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }

    /// An accept succeeded at `now`: `Some(n)` to log that accepting works again, with `n` errors
    /// left unlogged since the last line; `None` when there is nothing to tell or a line was
    /// written less than a period ago (the count then waits for the next line).
    pub fn on_success(&mut self, now: Instant) -> Option<u64> {
        if self.unlogged > 0 && self.may_log(now) {
            self.last_line = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_ten_milliseconds_to_one_second_and_reset_on_success() {
        let mut b = AcceptBackoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.on_error().as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.on_success();
        assert_eq!(b.on_error(), MIN_PAUSE);
        // A maximum below the minimum is the minimum.
        let mut flat = AcceptBackoff::new(Duration::from_millis(50), Duration::ZERO);
        assert_eq!(flat.on_error(), Duration::from_millis(50));
        assert_eq!(flat.on_error(), Duration::from_millis(50));
    }

    #[test]
    fn errors_are_logged_at_most_once_per_period_with_the_count_of_the_rest() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = ErrorLog::new(Duration::from_secs(10));
        // (what happens, when in ms, the decision)
        let table: [(&str, u64, Option<u64>); 9] = [
            ("first error: logged", 0, Some(0)),
            ("error 1 ms later: counted", 1, None),
            ("error 9.999 s later: counted", 9_999, None),
            ("success within the period: waits", 9_999, None),
            ("error after 10 s: logged with 2 unlogged", 10_000, Some(2)),
            ("error: counted", 10_500, None),
            ("success a period later: logged with 1", 20_000, Some(1)),
            ("success with nothing unlogged: silent", 40_000, None),
            ("error long after: logged", 60_000, Some(0)),
        ];
        for (case, ms, want) in table {
            let got = if case.starts_with("success") {
                log.on_success(at(ms))
            } else {
                log.on_error(at(ms))
            };
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn ten_thousand_errors_in_ten_seconds_make_one_line_and_the_next_counts_them() {
        let t0 = Instant::now();
        let mut log = ErrorLog::default();
        let lines = (0..10_000u64)
            .filter_map(|i| log.on_error(t0 + Duration::from_millis(i)))
            .collect::<Vec<_>>();
        // At 0 s and at 10 s, the second carrying the 9,999 errors of the first period.
        assert_eq!(lines, [0]);
        assert_eq!(
            log.on_error(t0 + Duration::from_secs(10)),
            Some(9_999),
            "the next line counts every error not logged"
        );
    }
}
