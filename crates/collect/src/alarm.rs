//! A one-shot kernel timer (a `timerfd`) to sleep until an instant without the extra wake-ups of
//! tokio's timer wheel.
//!
//! Why: tokio's wheel keeps a timer due in a later 64 ms window in a coarser level and wakes the
//! thread at that window's start to move it down, so a sleep of 100 ms to a few seconds costs two
//! wake-ups instead of one (seen on the database thread: each batch deadline woke it ~20–40 ms
//! early, then again on time). At a few hundred messages a second a wake-up costs more than the
//! messages it serves (see `krakenbook-bench wakeup`), so the threads that sleep between batches
//! sleep on an [`Alarm`]. The feed's periodic read tick is the same kind of timer
//! ([`crate::feed::ticker`]).
//!
//! What must hold: [`Alarm::sleep_until`] completes at or after its instant as tokio's clock
//! reads it, never before (an expiry of an earlier, abandoned sleep is discarded when the alarm
//! is armed again; on a paused test clock, where the kernel's time runs on and tokio's does not,
//! the rest is slept on tokio's timer); it can be dropped in a `select!` and the alarm used
//! again; where no kernel timer can be made (or one fails), it sleeps on tokio's timer instead,
//! so it never fails. Like any tokio I/O type it must be made on a runtime with I/O enabled.

use std::io;
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// A one-shot timer, on the reactor of the runtime it was made on.
#[derive(Debug)]
pub struct Alarm {
    /// `None`: no kernel timer (it could not be made, or it failed); tokio's timer serves.
    fd: Option<AsyncFd<OwnedFd>>,
}

impl Alarm {
    /// A disarmed alarm. Must be called on a runtime with I/O enabled (it panics otherwise, as
    /// tokio's I/O types do); where the kernel timer cannot be made, it sleeps on tokio's timer.
    pub fn new() -> Alarm {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(io::Error::from)
        // Deprecated because a `T` that closes its descriptor while registered breaks the
        // reactor (tokio PR 8587); an `OwnedFd` closes it only when the `AsyncFd` drops it,
        // after deregistering. The replacement is `unsafe`, which this crate forbids.
        .and_then(|fd| {
            #[allow(deprecated)]
            AsyncFd::with_interest(fd, Interest::READABLE)
        });
        match fd {
            Ok(fd) => Alarm { fd: Some(fd) },
            Err(e) => {
                tracing::debug!(error = %e, "no kernel timer: sleeping on tokio's");
                Alarm { fd: None }
            }
        }
    }

    /// Whether the alarm sleeps on a kernel timer (else on tokio's).
    pub fn is_kernel(&self) -> bool {
        self.fd.is_some()
    }

    /// Completes at `at` (at once when it has passed).
    pub async fn sleep_until(&mut self, at: Instant) {
        let now = Instant::now();
        if at <= now {
            return;
        }
        if let Some(fd) = &self.fd {
            match Self::kernel_sleep(fd, at - now).await {
                // The kernel's clock is the one tokio reads, unless tokio's is paused (tests):
                // then what is left of the sleep is tokio's.
                Ok(()) if Instant::now() >= at => return,
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the kernel timer failed: sleeping on tokio's from now on");
                    self.fd = None;
                }
            }
        }
        tokio::time::sleep_until(at).await;
    }

    /// Arms the timer `after` from now (on the kernel's monotonic clock, the one `Instant`
    /// reads) and waits for its expiry.
    async fn kernel_sleep(fd: &AsyncFd<OwnedFd>, after: Duration) -> io::Result<()> {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let due = now
            .checked_add(timespec(after)?)
            .ok_or_else(|| io::Error::other("the alarm's expiry overflows the clock"))?;
        // Arming resets the count of expiries: one left unread by an abandoned sleep is gone.
        timerfd_settime(
            fd.get_ref(),
            TimerfdTimerFlags::ABSTIME,
            &Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: due,
            },
        )?;
        loop {
            let mut ready = fd.readable().await?;
            match read_expirations(fd.get_ref())? {
                Some(_) => return Ok(()),
                // Readiness left from an earlier expiry (read or reset since): wait for this one.
                None => ready.clear_ready(),
            }
        }
    }
}

impl Default for Alarm {
    fn default() -> Self {
        Alarm::new()
    }
}

/// A periodic [`Alarm`] for the collector's chores (the state publisher, the disk sampler): as
/// tokio's `interval` with [`tokio::time::MissedTickBehavior::Delay`] (the first tick at once,
/// each next one `every` after the last completed), with one wake-up a tick instead of the
/// wheel's two or three (a 3 s interval woke the main runtime at 607 ms, 63 ms and 33 ms before
/// it, seen with `strace`). A tick dropped in a `select!` leaves the next one where it was.
#[derive(Debug)]
pub struct Every {
    alarm: Alarm,
    every: Duration,
    next: Option<Instant>,
}

impl Every {
    /// Ticks every `every`, the first at once. Must be called on a runtime with I/O enabled.
    pub fn new(every: Duration) -> Every {
        Every {
            alarm: Alarm::new(),
            every,
            next: None,
        }
    }

    /// Completes at the next tick.
    pub async fn tick(&mut self) {
        if let Some(at) = self.next {
            self.alarm.sleep_until(at).await;
        }
        self.next = Some(Instant::now() + self.every);
    }
}

/// The expirations a `timerfd` holds, read without waiting: `None` when it holds none (not yet
/// expired, or read already); a signal in the middle reads again. Shared with the feed's read
/// tick ([`crate::feed::ticker`]).
pub(crate) fn read_expirations(fd: &OwnedFd) -> io::Result<Option<u64>> {
    let mut expired = [0u8; 8];
    loop {
        return match rustix::io::read(fd, &mut expired) {
            Ok(8) => Ok(Some(u64::from_ne_bytes(expired))),
            Ok(n) => Err(io::Error::other(format!(
                "a kernel timer gave {n} bytes instead of 8"
            ))),
            Err(rustix::io::Errno::AGAIN) => Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => Err(e.into()),
        };
    }
}

/// `d` as the kernel's time, or an error when it does not fit (shared with the feed's read
/// tick, [`crate::feed::ticker`]).
pub(crate) fn timespec(d: Duration) -> io::Result<Timespec> {
    Timespec::try_from(d).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{d:?} does not fit the kernel's clock"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Every` ticks as tokio's interval with `Delay`: at once, then `every` after each tick
    /// completed (a slow turn pushes the next one back, never two at once); a tick abandoned in
    /// a `select!` leaves the next where it was.
    #[tokio::test(start_paused = true)]
    async fn every_ticks_at_once_then_a_period_after_each_tick() {
        let ms = Duration::from_millis;
        let start = Instant::now();
        let mut every = Every::new(ms(3_000));
        every.tick().await;
        assert_eq!(Instant::now(), start, "the first tick at once");
        every.tick().await;
        assert_eq!(Instant::now(), start + ms(3_000));
        // A turn that took 5 s: the next tick 3 s after this one completed.
        tokio::time::advance(ms(5_000)).await;
        every.tick().await;
        assert_eq!(
            Instant::now(),
            start + ms(8_000),
            "late: at once, no burst after"
        );
        every.tick().await;
        assert_eq!(Instant::now(), start + ms(11_000));
        // Abandoned after 1 s: the next tick is still at 14 s.
        tokio::select! {
            _ = tokio::time::sleep(ms(1_000)) => {}
            _ = every.tick() => panic!("ticked early"),
        }
        every.tick().await;
        assert_eq!(Instant::now(), start + ms(14_000));
    }

    /// An alarm completes at its instant, not before; one abandoned in a `select!` does not
    /// end the next sleep early (its expiry is discarded when the alarm is armed again); a past
    /// instant completes at once.
    #[tokio::test]
    async fn an_alarm_wakes_on_time_and_an_abandoned_one_does_not_end_the_next_early() {
        let mut alarm = Alarm::new();
        assert!(alarm.is_kernel(), "a kernel timer on this machine");
        let start = Instant::now();
        alarm.sleep_until(start + Duration::from_millis(30)).await;
        assert!(start.elapsed() >= Duration::from_millis(30));

        // Abandoned: armed for 20 ms, dropped after 1 ms (the short sleep wins even if a busy
        // machine makes both ready at once); the timer still expires at 20 ms.
        let start = Instant::now();
        tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            _ = alarm.sleep_until(start + Duration::from_millis(20)) => {}
        }
        std::thread::sleep(Duration::from_millis(40));
        // Its expiry (now readable) must not end a sleep to 150 ms.
        alarm.sleep_until(start + Duration::from_millis(150)).await;
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "woke after {:?}",
            start.elapsed()
        );

        let start = Instant::now();
        alarm.sleep_until(start - Duration::from_millis(5)).await;
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    /// On a paused clock (tokio's does not move while the kernel's does) the alarm still
    /// completes at its instant as tokio reads it, never before: a loop that sleeps until `at`
    /// and then checks `now >= at` gets there. (A first version returned at once by tokio's
    /// clock: found by review.)
    #[tokio::test(start_paused = true)]
    async fn on_a_paused_clock_the_alarm_completes_at_its_instant() {
        let mut alarm = Alarm::new();
        assert!(alarm.is_kernel());
        let start = Instant::now();
        alarm.sleep_until(start + Duration::from_millis(50)).await;
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "woke at {:?} on tokio's clock",
            start.elapsed()
        );
    }

    /// Without a kernel timer the alarm falls back to tokio's timer and still sleeps.
    #[tokio::test(start_paused = true)]
    async fn without_a_kernel_timer_it_sleeps_on_tokios() {
        let mut alarm = Alarm { fd: None };
        let start = Instant::now();
        alarm.sleep_until(start + Duration::from_secs(3)).await;
        assert!(start.elapsed() >= Duration::from_secs(3));
    }
}
