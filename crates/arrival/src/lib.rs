//! Kernel arrival stamps: when the bytes of a TCP stream reached this machine, recorded by the
//! kernel as each segment arrives, without waking the process that reads the socket.
//!
//! Why: the collector reads its sockets on a tick (one wake-up reads every connection), because
//! on a virtual machine a wake-up costs tens of microseconds of CPU, more than the work on a
//! frame. A frame stamped when it is read is then up to a tick late, so the tick was a trade of
//! receive-time precision for CPU. With a filter on the socket recording each segment's arrival
//! ([`kernel`]), a frame is stamped with when its last byte could first be read ([`timeline`]),
//! to the microsecond, however late the process reads it: the tick then only decides how soon
//! frames reach the journal.
//!
//! What must hold:
//! - the stream is never touched: the filter accepts every segment whole, whatever happens in
//!   it (tested: every byte arrives, in order, through the filter);
//! - a time is given only when the records prove it; otherwise [`Arrived::Unknown`] and the
//!   caller stamps as it did before (the first bytes when the filter was attached late, a ring
//!   that overflowed, more reordering than is kept);
//! - no wake-up, no system call per segment or per lookup: the records are read from memory
//!   shared with the kernel.
//!
//! Unsafe code: [`kernel`] only (the `bpf` system call, the ring's mapping); a measured need
//! (the collector's CPU per message at a few hundred a second, issue 13, in the README).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod kernel;
pub mod timeline;

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, SystemTime};

pub use timeline::Arrived;

use kernel::RingFilter;
use timeline::Timeline;

/// One socket's arrival stamps: the filter on it and the timeline of its stream.
#[derive(Debug)]
pub struct Arrivals {
    filter: RingFilter,
    timeline: Timeline,
    clock: WallClock,
}

impl Arrivals {
    /// Attaches the filter to `socket`, which must not be connected yet (the peer's SYN is
    /// where the stream's offsets start). Errors when the kernel refuses (see
    /// [`RingFilter::attach`]): the caller goes on without.
    pub fn attach(socket: RawFd) -> io::Result<Arrivals> {
        Ok(Arrivals {
            filter: RingFilter::attach(socket)?,
            timeline: Timeline::default(),
            clock: WallClock::default(),
        })
    }

    /// When bytes `[0, end)` of the stream could first all be read, on the wall clock; `end`
    /// must be at most what was read from the socket, and never smaller than the last call's.
    pub fn arrived(&mut self, end: u64) -> Option<SystemTime> {
        let timeline = &mut self.timeline;
        self.filter.drain(|segment| timeline.segment(segment));
        match self.timeline.arrived(end) {
            Arrived::At(ns) => Some(self.clock.wall_time_of(ns)),
            Arrived::Unknown => None,
        }
    }

    /// Lookups answered unknown since the stream's start was seen.
    pub fn unknown(&self) -> u64 {
        self.timeline.unknown()
    }

    /// Whether the filter has seen the peer's SYN (the stream's origin).
    pub fn has_origin(&mut self) -> bool {
        let timeline = &mut self.timeline;
        self.filter.drain(|segment| timeline.segment(segment));
        self.timeline.has_origin()
    }
}

/// Whether this process may stamp arrivals: the filter attached to a socket of its own (not
/// connected, dropped at once). The error is the kernel's (`EPERM`: no `CAP_BPF`).
pub fn probe() -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    RingFilter::attach(socket.as_raw_fd()).map(drop)
}

/// Monotonic times to wall-clock times, for one stream.
#[derive(Debug, Default)]
struct WallClock {
    /// Wall minus monotonic, in nanoseconds, as last taken.
    offset: Option<i128>,
    /// The last time given.
    last: Option<SystemTime>,
}

/// How far the wall clock may move against the monotonic one before the offset is taken again:
/// two readings of the clocks differ by tens of nanoseconds, and a stamp must not move with
/// that; a step of the wall clock (or a slew adding up to this) moves it, as it would have
/// moved a stamp taken on reading.
const OFFSET_STEP_NS: i128 = 20_000;

/// A regression smaller than this (a slew taken up) gives the last time again, so a stream's
/// times never go back by a little; a larger one is the wall clock set back, and shows.
const NEVER_BACK_NS: u64 = 1_000_000;

impl WallClock {
    /// The wall-clock time of `CLOCK_MONOTONIC` reading `ns`.
    fn wall_time_of(&mut self, ns: u64) -> SystemTime {
        self.wall_time_with(ns, monotonic_ns, || {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128)
        })
    }

    /// [`WallClock::wall_time_of`] with the clocks read by `monotonic` and `wall`.
    fn wall_time_with(
        &mut self,
        ns: u64,
        monotonic: impl FnOnce() -> u64,
        wall: impl FnOnce() -> i128,
    ) -> SystemTime {
        // The monotonic clock first: a pause before the wall clock is read (the thread
        // preempted, its virtual CPU stolen) then makes the offset larger and the time later,
        // never earlier than the bytes arrived.
        let monotonic = monotonic();
        let offset = wall() - i128::from(monotonic);
        let offset = match self.offset {
            Some(kept) if (offset - kept).abs() <= OFFSET_STEP_NS => kept,
            _ => offset,
        };
        self.offset = Some(offset);
        let at = i128::from(ns) + offset;
        let mut time = SystemTime::UNIX_EPOCH + Duration::from_nanos(at.max(0) as u64);
        if let Some(last) = self.last
            && let Ok(back) = last.duration_since(time)
            && back.as_nanos() < u128::from(NEVER_BACK_NS)
        {
            time = last;
        }
        self.last = Some(time);
        time
    }
}

fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests;
