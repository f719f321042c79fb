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
//! - a busy feed is read on a finer grid ([`ReadPace`]): when a connection reads, in one tick,
//!   at a rate that would put [`BUSY_BYTES`] in its socket between two ticks of the period asked
//!   for, the timer moves to the fast grid at once and stays there until a whole read period
//!   passed without such a read, so a long `--read-every` never lets a socket's receive buffer
//!   fill (the exchange would see a slow client); fast ticks are parts of the slow period, so
//!   every slow tick is also a fast one;
//! - the ticker never ends on its own: it stops at the feed's cancel, or with an error (a
//!   `timerfd` that cannot be read), which ends the feed like any connection's failure.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, watch};
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
        arm(&fd, epoch, period)?;
        // Deprecated because a `T` that closes its descriptor while registered breaks the
        // reactor (tokio PR 8587); an `OwnedFd` closes it only when the `AsyncFd` drops it,
        // after deregistering. The replacement is `unsafe`, which this crate forbids.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        Ok(Ticker { fd })
    }

    /// Counts the ticks into `ticks` (adding how many expired since the last look) until
    /// `cancel`. With a fast period in `pace` ([`ReadPace::fast`]), the timer expires on the
    /// fast grid while a connection is busy ([`ReadPace::is_busy`]: moved at once when one turns
    /// busy, back to `pace`'s period at the first expiry after the busy time ended).
    pub async fn run(
        self,
        ticks: &watch::Sender<u64>,
        pace: &ReadPace,
        fast_ticks: &AtomicU64,
        cancel: CancellationToken,
    ) -> io::Result<()> {
        let mut expired = [0u8; 8];
        let mut fast = false;
        loop {
            let mut ready = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = pace.turned_busy.notified(), if !fast => {
                    fast = self.follow(pace, fast)?;
                    continue;
                }
                ready = self.fd.readable() => ready?,
            };
            match rustix::io::read(self.fd.get_ref(), &mut expired) {
                Ok(8) => {
                    let n = u64::from_ne_bytes(expired);
                    ticks.send_modify(|count| *count = count.wrapping_add(n));
                    if fast {
                        fast_ticks.fetch_add(n, Ordering::Relaxed);
                    }
                    // Read out: not readable again before the next expiry (a later expiry
                    // marks it ready anew, whatever this clears).
                    ready.clear_ready();
                    fast = self.follow(pace, fast)?;
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

    /// Arms the timer on the grid `pace` asks for now, if it is not the one it is on (`fast`:
    /// whether it is on the fast grid); returns the grid it is on.
    fn follow(&self, pace: &ReadPace, fast: bool) -> io::Result<bool> {
        let Some(fast_period) = pace.fast else {
            return Ok(false);
        };
        let want = pace.is_busy(Instant::now());
        if want != fast {
            let period = if want { fast_period } else { pace.every };
            arm(self.fd.get_ref(), pace.epoch, period)?;
            pace.on_fast.store(want, Ordering::Relaxed);
            tracing::debug!(period = ?period, "feed: read tick");
        }
        Ok(want)
    }
}

/// Sets `fd` to expire every `period` on the grid from `epoch`, first at the grid's next tick
/// (on the kernel's monotonic clock, the clock `Instant` reads). Expirations not yet read are
/// dropped (the kernel resets the count).
fn arm(fd: &OwnedFd, epoch: Instant, period: Duration) -> io::Result<()> {
    let now = Instant::now();
    let kernel_now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let first = kernel_now
        .checked_add(timespec(next_tick(epoch, period, now) - now)?)
        .ok_or_else(|| io::Error::other("the read tick's first expiry overflows the clock"))?;
    timerfd_settime(
        fd,
        TimerfdTimerFlags::ABSTIME,
        &Itimerspec {
            it_interval: timespec(period)?,
            it_value: first,
        },
    )?;
    Ok(())
}

/// The fastest the read tick goes when a connection is busy: the default read period, at which
/// a socket's default receive buffer holds ~12 MB/s.
pub const FAST_READ: Duration = Duration::from_millis(10);

/// A connection that receives at least this much in one read period (at its rate) is busy. Why:
/// Linux gives a socket a 128 KiB receive buffer (`tcp_rmem`) and, for a reader that reads only
/// every 100 ms, does not grow it (measured on this kernel: 131,072 bytes and a 64 KiB receive
/// space after a minute of reads every 100 ms at 2 MB/s); once it is full the sender waits, and
/// an exchange that sees its send queue grow closes the connection (Kraken drops slow clients;
/// so does the simulator). A quarter of the buffer per period leaves room for bursts.
pub const BUSY_BYTES: u64 = 32 * 1024;

/// How fast the feed reads: every `read_every`, or on a finer grid ([`ReadPace::fast`]) for a
/// while after a connection read at a rate that would fill its socket's buffer between slow
/// ticks ([`BUSY_BYTES`] in a period, or a read stopped at its bound). The fine grid also
/// stamps a busy feed's frames closer to their arrival; a quiet feed keeps the slow one (its
/// wake-ups are its CPU).
#[derive(Debug)]
pub struct ReadPace {
    /// Where the grids start.
    pub epoch: Instant,
    /// The read period asked for.
    pub every: Duration,
    /// The period while busy (`every` divided into whole parts of at most [`FAST_READ`]);
    /// `None` when `every` is no longer than that (or zero).
    pub fast: Option<Duration>,
    /// Until when (nanoseconds after `epoch`) reads go on the fast grid.
    busy_until: AtomicU64,
    /// Whether the ticker is on the fast grid now (a busy connection then need not wake it).
    on_fast: AtomicBool,
    /// Wakes the ticker when a connection turns busy while it is on the slow grid.
    pub turned_busy: Notify,
}

impl ReadPace {
    /// Reads every `every` on the grid from `epoch`.
    pub fn new(epoch: Instant, every: Duration) -> Self {
        let fast = (every > FAST_READ).then(|| {
            let parts = every.as_nanos().div_ceil(FAST_READ.as_nanos());
            every / u32::try_from(parts).unwrap_or(u32::MAX)
        });
        ReadPace {
            epoch,
            every,
            fast,
            busy_until: AtomicU64::new(0),
            on_fast: AtomicBool::new(false),
            turned_busy: Notify::new(),
        }
    }

    /// A connection read `bytes` in the reads of one tick, `since` after the tick before
    /// (`bounded`: a read stopped at its bound with more waiting). Busy at a rate of
    /// [`BUSY_BYTES`] a read period or more, or when bounded: reads then stay on the fast grid
    /// for a read period.
    pub fn observe(&self, bytes: u64, since: Duration, bounded: bool, now: Instant) {
        if self.fast.is_none() {
            return;
        }
        let since = since.max(Duration::from_millis(1)).as_nanos();
        let busy =
            bounded || u128::from(bytes) * self.every.as_nanos() >= u128::from(BUSY_BYTES) * since;
        if !busy {
            return;
        }
        let until = now.saturating_duration_since(self.epoch) + self.every;
        let until = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        self.busy_until.fetch_max(until, Ordering::Relaxed);
        if !self.on_fast.load(Ordering::Relaxed) {
            self.turned_busy.notify_one();
        }
    }

    /// Whether reads go on the fast grid at `now`.
    pub fn is_busy(&self, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        self.fast.is_some() && u128::from(self.busy_until.load(Ordering::Relaxed)) > since
    }

    /// The read period at `now`.
    pub fn period(&self, now: Instant) -> Duration {
        match self.fast {
            Some(fast) if self.is_busy(now) => fast,
            _ => self.every,
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
        let pace = ReadPace::new(epoch, period);
        let running =
            tokio::spawn(async move { ticker.run(&tx, &pace, &AtomicU64::new(0), stop).await });
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

    /// The fast period divides the slow one into whole parts of at most 10 ms; a period of 10 ms
    /// or less has none. A connection is busy at a rate of 32 KiB a slow period (whatever the
    /// time since its last read) or when a read stopped at its bound, and stays busy for one
    /// slow period after.
    #[tokio::test(start_paused = true)]
    async fn a_connection_that_reads_a_quarter_buffer_a_period_makes_the_pace_fast_for_a_period() {
        let ms = Duration::from_millis;
        let epoch = Instant::now();
        for (every, fast) in [
            (ms(100), Some(ms(10))),
            (ms(30), Some(ms(10))),
            (ms(25), Some(Duration::from_nanos(8_333_333))),
            (ms(11), Some(Duration::from_micros(5_500))),
            (ms(10), None),
            (ms(1), None),
            (ms(0), None),
        ] {
            assert_eq!(ReadPace::new(epoch, every).fast, fast, "{every:?}");
        }
        let pace = ReadPace::new(epoch, ms(100));
        let now = epoch + ms(1_000);
        assert!(!pace.is_busy(now));
        assert_eq!(pace.period(now), ms(100));
        // 32 KiB in 100 ms is the edge; the same rate over a fast tick too.
        pace.observe(BUSY_BYTES - 1, ms(100), false, now);
        pace.observe(BUSY_BYTES / 10 - 1, ms(10), false, now);
        assert!(!pace.is_busy(now), "under the rate");
        pace.observe(BUSY_BYTES / 10 + 1, ms(10), false, now);
        assert!(pace.is_busy(now));
        assert_eq!(pace.period(now), ms(10));
        assert!(pace.is_busy(now + ms(99)), "busy for a slow period");
        assert!(!pace.is_busy(now + ms(100)));
        // A read stopped at its bound is busy whatever it read.
        pace.observe(0, ms(100), true, now + ms(500));
        assert!(pace.is_busy(now + ms(550)));
        // A later, shorter busy time never shortens an earlier one.
        pace.observe(0, ms(100), true, now + ms(400));
        assert!(pace.is_busy(now + ms(590)));
        // No fast period: never busy.
        let slow = ReadPace::new(epoch, ms(10));
        slow.observe(u64::MAX, ms(1), true, now);
        assert!(!slow.is_busy(now));
    }

    /// The ticker counts the slow period's ticks while nobody is busy; a connection turning
    /// busy moves it to the fast grid at once (without waiting for the slow tick), and it goes
    /// back to the slow grid once a slow period passed without a busy read.
    #[tokio::test]
    async fn the_tick_goes_fast_at_once_when_a_connection_is_busy_and_slow_again_after() {
        let ms = Duration::from_millis;
        let epoch = Instant::now();
        let every = ms(200);
        let pace = std::sync::Arc::new(ReadPace::new(epoch, every));
        let ticker = Ticker::start(epoch, every).unwrap();
        let (tx, rx) = watch::channel(0u64);
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let p = std::sync::Arc::clone(&pace);
        let fast_ticks = std::sync::Arc::new(AtomicU64::new(0));
        let counted = std::sync::Arc::clone(&fast_ticks);
        let running = tokio::spawn(async move { ticker.run(&tx, &p, &counted, stop).await });
        let count = || *rx.borrow();
        // Slow: about two ticks in 450 ms.
        let before = count();
        tokio::time::sleep(ms(450)).await;
        let slow = count() - before;
        assert!((1..=3).contains(&slow), "{slow} ticks in 450 ms at 200 ms");
        // Busy, and kept busy for 300 ms: the 10 ms grid (expirations count even when the
        // thread was late to read them).
        let busy_from = count();
        let started = Instant::now();
        while started.elapsed() < ms(300) {
            pace.observe(0, every, true, Instant::now());
            tokio::time::sleep(ms(20)).await;
        }
        let fast = count() - busy_from;
        assert!(fast >= 20, "{fast} ticks in 300 ms busy (10 ms grid)");
        let counted_fast = fast_ticks.load(Ordering::Relaxed);
        assert!(counted_fast >= 20, "{counted_fast} fast ticks counted");
        // Quiet again: back to about five ticks a second once the busy time has run out.
        tokio::time::sleep(ms(250)).await;
        let quiet_from = count();
        tokio::time::sleep(ms(600)).await;
        let quiet = count() - quiet_from;
        assert!(
            (2..=4).contains(&quiet),
            "{quiet} ticks in 600 ms after the busy time"
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
