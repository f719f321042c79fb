//! The feed's read tick: one kernel timer (a `timerfd`) that wakes the feed's thread once per
//! read period, for every connection at once.
//!
//! Why not a tokio interval: tokio's timer wheel holds a timer that falls in the current 64 ms
//! window of its clock in its finest level, and one in a later window in a coarser level, which
//! the runtime moves down by waking at the start of that window. A 10 ms interval crosses a
//! window every 6.4 ticks, so it cost about 16 wake-ups a second on top of its 100 (the feed
//! measured 112 wake-ups a second at a 10 ms period, 62 at 20 ms). A `timerfd` is a file the
//! reactor watches: it wakes the thread when it expires, and at no other time.
//!
//! What must hold:
//! - ticks fall on the grid of period `period` from the feed's epoch (the outbox's hand-off grid
//!   is a whole number of read periods on the same epoch, so a batch falls due on a read tick);
//! - a tick the thread was too busy to take is not taken twice: the count says how many passed,
//!   and a waiter sees only that the count moved (one read per wake-up, never a burst);
//! - the ticker never ends on its own: it stops at the feed's cancel, or with an error (a
//!   `timerfd` that cannot be read), which ends the feed like any connection's failure.

use std::io;
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::outbox::next_tick;
use crate::alarm::timespec;

/// A kernel timer expiring on the read grid, watched by the reactor of the runtime it was made
/// on.
#[derive(Debug)]
pub struct Ticker {
    fd: AsyncFd<OwnedFd>,
}

impl Ticker {
    /// A timer expiring every `period` on the grid from `epoch`, starting at the grid's next
    /// tick. Must be called on a runtime with I/O enabled; `period` must not be zero.
    pub fn start(epoch: Instant, period: Duration) -> io::Result<Ticker> {
        if period.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a read tick needs a period",
            ));
        }
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // The grid's next tick on the kernel's monotonic clock (the clock `Instant` reads).
        let now = Instant::now();
        let kernel_now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let first = kernel_now
            .checked_add(timespec(next_tick(epoch, period, now) - now)?)
            .ok_or_else(|| io::Error::other("the read tick's first expiry overflows the clock"))?;
        timerfd_settime(
            &fd,
            TimerfdTimerFlags::ABSTIME,
            &Itimerspec {
                it_interval: timespec(period)?,
                it_value: first,
            },
        )?;
        // Deprecated because a `T` that closes its descriptor while registered breaks the
        // reactor (tokio PR 8587); an `OwnedFd` closes it only when the `AsyncFd` drops it,
        // after deregistering. The replacement is `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        Ok(Ticker { fd })
    }

    /// Counts the ticks into `ticks` (adding how many expired since the last look) until
    /// `cancel`.
    pub async fn run(
        self,
        ticks: &watch::Sender<u64>,
        cancel: CancellationToken,
    ) -> io::Result<()> {
        let mut expired = [0u8; 8];
        loop {
            let mut ready = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                ready = self.fd.readable() => ready?,
            };
            match rustix::io::read(self.fd.get_ref(), &mut expired) {
                Ok(8) => {
                    let n = u64::from_ne_bytes(expired);
                    ticks.send_modify(|count| *count = count.wrapping_add(n));
                    // Read out: not readable again before the next expiry (a later expiry
                    // marks it ready anew, whatever this clears).
                    ready.clear_ready();
                }
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "the read tick's timer gave {n} bytes instead of 8"
                    )));
                }
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                // A signal came in the middle: the expirations are still there, read again.
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::time::Timespec;

    #[test]
    fn kernel_times_add_with_a_carry() {
        let t = Timespec {
            tv_sec: 5,
            tv_nsec: 900_000_000,
        };
        let cases = [
            (Duration::from_millis(50), (5, 950_000_000)),
            (Duration::from_millis(100), (6, 0)),
            (Duration::from_millis(1_150), (7, 50_000_000)),
            (Duration::ZERO, (5, 900_000_000)),
        ];
        for (d, (sec, nsec)) in cases {
            let sum = t.checked_add(timespec(d).unwrap()).unwrap();
            assert_eq!((sum.tv_sec, sum.tv_nsec), (sec, nsec), "{d:?}");
        }
        assert_eq!(
            timespec(Duration::from_millis(2_010)).unwrap(),
            Timespec {
                tv_sec: 2,
                tv_nsec: 10_000_000
            }
        );
        let err = timespec(Duration::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// The ticker counts expirations on the grid: the first not before the grid's next tick,
    /// then one per period (a waiter that looked late sees the count moved by the ticks it
    /// missed, in one go); it stops at the cancel.
    #[tokio::test]
    async fn ticks_fall_on_the_grid_and_a_late_look_sees_every_tick_it_missed() {
        let epoch = Instant::now() - Duration::from_millis(3);
        let period = Duration::from_millis(10);
        let ticker = Ticker::start(epoch, period).unwrap();
        let (tx, mut rx) = watch::channel(0u64);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let running = tokio::spawn(async move { ticker.run(&tx, stop).await });
        rx.changed().await.unwrap();
        let first = Instant::now();
        assert!(
            first >= epoch + period,
            "the first tick came {:?} after the epoch, before the grid's next tick",
            first - epoch
        );
        // Not looking for a while: the ticks pile up in the count, not in wake-ups.
        let seen = *rx.borrow_and_update();
        std::thread::sleep(Duration::from_millis(55));
        rx.changed().await.unwrap();
        let later = *rx.borrow_and_update();
        assert!(
            later >= seen + 5,
            "55 ms later the count moved {seen} -> {later}"
        );
        cancel.cancel();
        running.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_zero_period_is_refused() {
        let err = Ticker::start(Instant::now(), Duration::ZERO).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
