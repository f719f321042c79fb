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
//! - a busy feed is read on a finer grid ([`ReadPace`]): when a connection's reads of one tick
//!   reach [`BUSY_BYTES`], or a read stops at its bound, or its reads over a read period average
//!   that much a period, the timer moves to the fast grid at once and stays there until a read
//!   period and a fast tick passed without such a read, so a long `--read-every` never lets a
//!   socket's receive buffer fill (the exchange would see a slow client), and a quiet feed comes
//!   back to the slow grid after a burst; fast ticks divide the slow period exactly (for any
//!   period of whole milliseconds), so every slow tick is also a fast one;
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
use crate::alarm::{read_expirations, timespec};

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
        let mut fast = false;
        loop {
            let mut ready = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = pace.turned_busy.notified(), if !fast => {
                    // Expirations not yet read are counted before the re-arm drops them.
                    let n = read_expirations(self.fd.get_ref())?.unwrap_or(0);
                    if n > 0 {
                        ticks.send_modify(|count| *count = count.wrapping_add(n));
                    }
                    fast = self.follow(pace, fast)?;
                    continue;
                }
                ready = self.fd.readable() => ready?,
            };
            // Read out, or readiness left from an expiry already read: not readable again
            // before the next expiry (which marks it ready anew, whatever this clears).
            let expired = read_expirations(self.fd.get_ref())?;
            ready.clear_ready();
            if let Some(n) = expired {
                ticks.send_modify(|count| *count = count.wrapping_add(n));
                if fast {
                    fast_ticks.fetch_add(n, Ordering::Relaxed);
                }
                fast = self.follow(pace, fast)?;
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

/// A connection that receives at least this much in a read period is busy. Why: Linux gives a
/// socket a 128 KiB receive buffer (`tcp_rmem`) and, for a reader that reads only every 100 ms,
/// does not grow it (measured on this kernel: 131,072 bytes and a 64 KiB receive space after a
/// minute of reads every 100 ms at 2 MB/s); once it is full the sender waits, and an exchange
/// that sees its send queue grow closes the connection (Kraken drops slow clients; so does the
/// simulator). A quarter of the buffer per period leaves room for bursts.
pub const BUSY_BYTES: u64 = 32 * 1024;

/// How fast the feed reads: every `read_every`, or on a finer grid ([`ReadPace::fast`]) for a
/// read period after a connection was busy ([`ReadPace::observe`]). The fine grid also stamps a
/// busy feed's frames closer to their arrival; a quiet feed keeps the slow one (its wake-ups
/// are its CPU).
#[derive(Debug)]
pub struct ReadPace {
    /// Where the grids start.
    pub epoch: Instant,
    /// The read period asked for.
    pub every: Duration,
    /// The period while busy: `every` divided into the fewest whole parts of at most
    /// [`FAST_READ`] that divide it to the nanosecond (so every slow tick is also a fast one;
    /// 25 ms: 6.25 ms), else the nearest below; `None` when `every` is no longer than
    /// [`FAST_READ`] (or zero).
    pub fast: Option<Duration>,
    /// Until when (nanoseconds after `epoch`) reads go on the fast grid.
    busy_until: AtomicU64,
    /// Whether the ticker is on the fast grid now (a busy connection then need not wake it).
    on_fast: AtomicBool,
    /// Wakes the ticker when a connection turns busy while it is on the slow grid.
    pub turned_busy: Notify,
}

/// What one connection read, as its [`ReadPace`] judges it: the reads of the current tick, and
/// those since its window opened (a window closes at the first tick a read period or more after
/// it opened, on either grid).
#[derive(Clone, Copy, Debug)]
pub struct ReadMeter {
    /// When the current window opened.
    opened: Instant,
    /// Bytes read since.
    window: u64,
    /// Bytes read in the current tick.
    tick: u64,
}

impl ReadMeter {
    /// A meter whose first window opens at `now`.
    pub fn new(now: Instant) -> Self {
        ReadMeter {
            opened: now,
            window: 0,
            tick: 0,
        }
    }

    /// A new read tick: its reads start from nothing.
    pub fn tick(&mut self) {
        self.tick = 0;
    }
}

impl ReadPace {
    /// Reads every `every` on the grid from `epoch`.
    pub fn new(epoch: Instant, every: Duration) -> Self {
        ReadPace {
            epoch,
            every,
            fast: fast_period(every),
            busy_until: AtomicU64::new(0),
            on_fast: AtomicBool::new(false),
            turned_busy: Notify::new(),
        }
    }

    /// A connection read `bytes` (`bounded`: the read stopped at its bound with more waiting)
    /// at `now`; `meter` is its own. It is busy when one tick's reads reach [`BUSY_BYTES`] (a
    /// socket found that full, whatever the time since its last read: after a stall the buffer
    /// is fullest), when a read stopped at its bound, or when a window of a read period or more
    /// averaged [`BUSY_BYTES`] a period. The rate is judged over a whole period on the fast grid
    /// too: a feed of 8 KiB a period that went fast for its startup snapshots comes back to the
    /// slow grid a period after them. Busy keeps reads on the fast grid for a read period.
    pub fn observe(&self, meter: &mut ReadMeter, bytes: u64, bounded: bool, now: Instant) {
        if self.fast.is_none() {
            return;
        }
        meter.tick = meter.tick.saturating_add(bytes);
        meter.window = meter.window.saturating_add(bytes);
        let mut busy = bounded || meter.tick >= BUSY_BYTES;
        let open_for = now.saturating_duration_since(meter.opened);
        if open_for >= self.every {
            busy |= u128::from(meter.window) * self.every.as_nanos()
                >= u128::from(BUSY_BYTES) * open_for.as_nanos();
            *meter = ReadMeter {
                opened: now,
                window: 0,
                tick: meter.tick,
            };
        }
        if !busy {
            return;
        }
        // A period and one fast tick: the tick on which this connection's window next closes
        // still finds the pace busy (the ticker looks before the connections read), so a feed
        // that stays busy never drops to the slow grid for a tick.
        let fast = self.fast.unwrap_or_default();
        let until = now.saturating_duration_since(self.epoch) + self.every + fast;
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

/// The fast period for reads every `every` (see [`ReadPace::fast`]).
fn fast_period(every: Duration) -> Option<Duration> {
    if every <= FAST_READ {
        return None;
    }
    let nanos = every.as_nanos();
    let fewest = nanos.div_ceil(FAST_READ.as_nanos());
    // A divisor within four times the fewest parts (periods are whole milliseconds in
    // practice: 4 parts of 25 ms, 8 of 75 ms); else the nearest period below.
    let parts = (fewest..=fewest * 4)
        .find(|p| nanos.is_multiple_of(*p))
        .unwrap_or(fewest);
    let fast = Duration::from_nanos(u64::try_from(nanos / parts).unwrap_or(u64::MAX));
    Some(fast.max(Duration::from_millis(1)))
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

    /// The fast period divides the slow one into whole parts of at most 10 ms, exactly; a period
    /// of 10 ms or less has none. A connection is busy when one tick's reads reach 32 KiB, when
    /// a read stopped at its bound, or when a window of a read period averaged 32 KiB a period;
    /// busy lasts a slow period.
    #[tokio::test(start_paused = true)]
    async fn a_connection_that_reads_a_quarter_buffer_a_period_makes_the_pace_fast_for_a_period() {
        let ms = Duration::from_millis;
        let epoch = Instant::now();
        for (every, fast) in [
            (ms(100), Some(ms(10))),
            (ms(30), Some(ms(10))),
            (ms(25), Some(Duration::from_micros(6_250))),
            (ms(11), Some(Duration::from_micros(5_500))),
            (ms(75), Some(Duration::from_micros(9_375))),
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
        // A slow tick's reads: 32 KiB is the edge, in one read or several.
        let mut meter = ReadMeter::new(now - ms(100));
        meter.tick();
        pace.observe(&mut meter, BUSY_BYTES / 2, false, now);
        pace.observe(&mut meter, BUSY_BYTES / 2 - 1, false, now);
        assert!(!pace.is_busy(now), "under the threshold");
        meter.tick();
        pace.observe(&mut meter, BUSY_BYTES / 2, false, now + ms(100));
        pace.observe(&mut meter, BUSY_BYTES / 2, false, now + ms(100));
        assert!(pace.is_busy(now + ms(100)));
        assert_eq!(pace.period(now + ms(100)), ms(10));
        assert!(
            pace.is_busy(now + ms(209)),
            "busy for a slow period and a fast tick"
        );
        assert!(!pace.is_busy(now + ms(210)));
        // On the fast grid the rate is the window's: ten 10 ms ticks of 3.3 KiB each are busy
        // only as a whole period (33 KiB), and 3 KiB each (30 KiB) is not.
        for (each, busy) in [(3_300, true), (3_000, false)] {
            let pace = ReadPace::new(epoch, ms(100));
            let mut meter = ReadMeter::new(now);
            for k in 1..=10 {
                meter.tick();
                pace.observe(&mut meter, each, false, now + k * ms(10));
                assert!(
                    !pace.is_busy(now + k * ms(10)) || k == 10,
                    "{each} at tick {k}"
                );
            }
            assert_eq!(pace.is_busy(now + ms(100)), busy, "{each} a fast tick");
        }
        // After a stall (a second without a read) the whole buffer in one tick is busy.
        let pace = ReadPace::new(epoch, ms(100));
        let mut meter = ReadMeter::new(now);
        meter.tick();
        pace.observe(&mut meter, 128 << 10, false, now + ms(1_000));
        assert!(pace.is_busy(now + ms(1_000)));
        // A read stopped at its bound is busy whatever it read.
        let mut meter = ReadMeter::new(now);
        pace.observe(&mut meter, 0, true, now + ms(1_500));
        assert!(pace.is_busy(now + ms(1_550)));
        // A later, shorter busy time never shortens an earlier one.
        pace.observe(&mut meter, 0, true, now + ms(1_400));
        assert!(pace.is_busy(now + ms(1_605)));
        // No fast period: never busy.
        let slow = ReadPace::new(epoch, ms(10));
        slow.observe(&mut meter, u64::MAX, true, now);
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
        let mut meter = ReadMeter::new(Instant::now());
        while started.elapsed() < ms(300) {
            pace.observe(&mut meter, 0, true, Instant::now());
            tokio::time::sleep(ms(20)).await;
        }
        let fast = count() - busy_from;
        assert!(fast >= 20, "{fast} ticks in 300 ms busy (10 ms grid)");
        let counted_fast = fast_ticks.load(Ordering::Relaxed);
        assert!(counted_fast >= 20, "{counted_fast} fast ticks counted");
        // Quiet again: back to about five ticks a second once the busy time (a period and a
        // fast tick after the last busy read) has run out.
        tokio::time::sleep(ms(300)).await;
        let quiet_from = count();
        let fast_before_quiet = fast_ticks.load(Ordering::Relaxed);
        tokio::time::sleep(ms(600)).await;
        let quiet = count() - quiet_from;
        // About three; a stall around the switch can bring a few late fast expirations into
        // the window, but the fast grid would count about sixty.
        assert!(
            (1..=12).contains(&quiet),
            "{quiet} ticks in 600 ms after the busy time"
        );
        assert_eq!(
            fast_ticks.load(Ordering::Relaxed),
            fast_before_quiet,
            "slow ticks are not counted as fast"
        );
        cancel.cancel();
        running.await.unwrap().unwrap();
    }

    /// The ticker's and a connection's decisions replayed in virtual time, in
    /// the order a wake-up makes them (the ticker reads its expiry and follows the pace, then the
    /// connection reads what arrived since its last read and reports it; a connection turning
    /// busy on the slow grid re-arms the ticker at once). `arrivals`: (ns after the epoch, bytes),
    /// sorted. Returns (the share of the time spent on the fast grid after `settle`, switches of
    /// grid a minute after `settle`).
    fn replay(every: Duration, arrivals: &[(u64, u64)], settle: u64, end: u64) -> (f64, f64) {
        let epoch = Instant::now();
        let at = |ns: u64| epoch + Duration::from_nanos(ns);
        let pace = ReadPace::new(epoch, every);
        let fast_period = pace.fast.unwrap();
        let (mut fast, mut switches, mut fast_ns) = (false, 0u64, 0u64);
        let (mut t, mut i) = (every.as_nanos() as u64, 0usize);
        let mut meter = ReadMeter::new(epoch);
        while t < end {
            let want = pace.is_busy(at(t));
            if want != fast {
                fast = want;
                switches += u64::from(t >= settle);
            }
            let mut bytes = 0;
            while i < arrivals.len() && arrivals[i].0 <= t {
                bytes += arrivals[i].1;
                i += 1;
            }
            meter.tick();
            pace.observe(&mut meter, bytes, false, at(t));
            if !fast && pace.is_busy(at(t)) {
                fast = true;
                switches += u64::from(t >= settle);
            }
            let period = if fast { fast_period } else { every };
            let next = (next_tick(epoch, period, at(t)) - epoch).as_nanos() as u64;
            if fast && t >= settle {
                fast_ns += next.min(end) - t;
            }
            t = next;
        }
        let span = (end - settle) as f64;
        (fast_ns as f64 / span, switches as f64 * 60e9 / span)
    }

    /// A feed of one 4 KiB frame every 50 ms (80 KB/s, a quarter of the 32 KiB per 100 ms
    /// threshold) that went fast once (its startup snapshots) comes back to the slow grid. (A
    /// first version judged each 10 ms read on the fast grid alone, so any 3.3 KiB in 10 ms kept
    /// such a feed fast for good: 100 wake-ups a second instead of 10.)
    #[test]
    fn a_quiet_feed_with_4_kib_frames_comes_back_to_the_slow_grid_after_its_snapshots() {
        let ms = 1_000_000u64;
        let mut arrivals = vec![(ms, 2 << 20)]; // the startup snapshots
        arrivals.extend((1..1_200).map(|k| (k * 50 * ms + 3 * ms, 4096)));
        let (share, _) = replay(
            Duration::from_millis(100),
            &arrivals,
            2_000 * ms,
            60_000 * ms,
        );
        // Read at the slow period the feed is never busy (8 KiB a period).
        let (slow_share, _) = replay(
            Duration::from_millis(100),
            &arrivals[1..],
            2_000 * ms,
            60_000 * ms,
        );
        assert_eq!(
            slow_share, 0.0,
            "never busy when it starts on the slow grid"
        );
        assert!(
            share < 0.1,
            "{:.0}% of the time on the fast grid after the snapshots, at a quarter of the threshold",
            share * 100.0
        );
    }

    /// A read that finds the socket's whole 128 KiB buffer full after a stall (the connection's
    /// thread held by the journal's back-pressure for a second) is busy: a first version judged
    /// it by the rate since the last read (12.8 KiB a period) and stayed slow.
    #[test]
    fn a_read_that_finds_the_receive_buffer_full_after_a_stall_is_busy() {
        let epoch = Instant::now();
        let pace = ReadPace::new(epoch, Duration::from_millis(100));
        let now = epoch + Duration::from_secs(10);
        let mut meter = ReadMeter::new(now - Duration::from_secs(1));
        meter.tick();
        pace.observe(&mut meter, 128 << 10, false, now);
        assert!(
            pace.is_busy(now),
            "128 KiB read at once (the whole default receive buffer) is not busy"
        );
    }

    /// Every slow tick is also a fast one for every whole-millisecond period up to 100 ms (a
    /// first version cut 25 ms into 3 × 8,333,333 ns: the fast grid drifted off the hand-off
    /// grid by 1 ns a period, and after some tens of minutes a batch due on it waited one more
    /// fast tick).
    #[test]
    fn the_fast_grid_divides_the_slow_one() {
        let epoch = Instant::now();
        let odd: Vec<u64> = (11..=100u64)
            .filter(|&every| {
                let pace = ReadPace::new(epoch, Duration::from_millis(every));
                !pace
                    .every
                    .as_nanos()
                    .is_multiple_of(pace.fast.unwrap().as_nanos())
            })
            .collect();
        assert!(
            odd.is_empty(),
            "read periods (ms) whose fast grid drifts: {odd:?}"
        );
    }

    /// Poisson arrivals around the threshold, after a startup burst: a feed at half the
    /// threshold or less stays on the slow grid nearly always, one above it is mostly fast, and
    /// the grid switches at most a few times a second (each switch re-arms the timer once).
    /// `--nocapture` prints the table.
    #[test]
    fn near_the_threshold_the_grid_follows_the_rate_without_flapping() {
        let ms = 1_000_000u64;
        let threshold = BUSY_BYTES as f64 * 10.0; // bytes a second at 100 ms
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for size in [300u64, 1_000, 2_000, 4_000] {
            for share in [0.25, 0.5, 0.75, 0.9, 1.1] {
                let rate = share * threshold / size as f64; // frames a second
                let mut arrivals = vec![(ms, 2 << 20)];
                let mut t = 2.0 * ms as f64;
                while t < 120_000.0 * ms as f64 {
                    t += -(1.0 - uniform()).ln() / rate * 1e9;
                    arrivals.push((t as u64, size));
                }
                let (fast, switches) = replay(
                    Duration::from_millis(100),
                    &arrivals,
                    2_000 * ms,
                    120_000 * ms,
                );
                println!(
                    "frames of {size:>5} B at {:>3.0}% of the threshold: {:>5.1}% fast, {:>6.1} switches a minute",
                    share * 100.0,
                    fast * 100.0,
                    switches
                );
                let what = format!("{size} B frames at {share} of the threshold");
                if share <= 0.5 {
                    assert!(fast < 0.05, "{what}: {fast} of the time fast");
                }
                if share > 1.0 {
                    assert!(fast > 0.5, "{what}: {fast} of the time fast");
                }
                assert!(switches < 600.0, "{what}: {switches} switches a minute");
            }
        }
    }

    #[tokio::test]
    async fn a_zero_period_is_refused() {
        let err = Ticker::start(Instant::now(), Duration::ZERO).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
