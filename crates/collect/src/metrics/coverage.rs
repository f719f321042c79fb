//! Per-symbol coverage as `/metrics` shows it, over *every stream of the symbol*: whether any
//! stream's book is verified now, when the last verified message arrived on any of them, and how
//! long the symbol's current gap has been open.
//!
//! A *stream* is what one connection received for one symbol. Each stream owns a
//! [`StreamCoverage`], which counts itself in its symbol's [`SymbolCoverage`] while its book is
//! verified; the symbol keeps only atomics that streams raise (an atomic maximum of instants, a
//! count of verified streams), so the union over several connections needs no lock and no
//! coordination: whichever stream saw the latest verified message sets the time, and the symbol
//! is in a gap only while no stream counts itself verified.
//!
//! What must always hold:
//! - the hot path (one verified book message) costs one atomic maximum and a branch on a field
//!   the stream owns; everything else happens when a stream's book changes state (verified,
//!   mismatched, connection lost), which is rare;
//! - a stream that ends, however it ends (closed, dropped, its symbol rejected), stops counting
//!   itself verified: [`StreamCoverage`]'s `Drop` takes care of the paths that forget to;
//! - before any stream verified the symbol, both ages count from the symbol's subscription (when
//!   the collector first asked for it), so every series exists, at 0, from the subscription on,
//!   and a symbol that never verifies shows a growing gap rather than none;
//! - the gap begins where the verified knowledge ends: the latest verified message, or, for a
//!   stream whose connection was lost, its last frame (heartbeats confirm the book up to then),
//!   or the instant of a mismatch; a quiet but verified symbol is never in a gap.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::SymbolMetrics;
use crate::time::Timestamp;

/// No instant recorded yet.
const NONE: i64 = i64::MIN;

/// The coverage of one symbol across all its streams (see the module doc).
#[derive(Debug)]
pub struct SymbolCoverage {
    /// When the symbol was first asked for (ns since the epoch).
    subscribed_ns: AtomicI64,
    /// Receive time of the latest verified book message on any stream ([`NONE`] before one).
    last_verified_ns: AtomicI64,
    /// The latest instant a stream was known verified up to, when its verified span ended.
    verified_until_ns: AtomicI64,
    /// Streams whose book of the symbol is verified now.
    streams_verified: AtomicI64,
}

impl Default for SymbolCoverage {
    fn default() -> Self {
        SymbolCoverage::new(Timestamp::now())
    }
}

/// A symbol's coverage as read at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CoverageReading {
    /// Streams whose book is verified now.
    pub streams_verified: u64,
    /// Seconds since the last verified message on any stream (since the subscription before the
    /// first).
    pub seconds_since_verified: f64,
    /// Seconds the current gap has been open: 0 while any stream is verified.
    pub gap_seconds: f64,
}

impl SymbolCoverage {
    /// The coverage of a symbol first asked for at `subscribed`.
    pub fn new(subscribed: Timestamp) -> Self {
        SymbolCoverage {
            subscribed_ns: AtomicI64::new(subscribed.unix_nanos()),
            last_verified_ns: AtomicI64::new(NONE),
            verified_until_ns: AtomicI64::new(NONE),
            streams_verified: AtomicI64::new(0),
        }
    }

    /// A verified book message of some stream, received at `at`.
    pub fn verified_message(&self, at: Timestamp) {
        self.last_verified_ns
            .fetch_max(at.unix_nanos(), Ordering::Relaxed);
    }

    fn stream_up(&self) {
        self.streams_verified.fetch_add(1, Ordering::AcqRel);
    }

    /// A stream's verified span ended; it was verified up to `until`. The instant is raised
    /// before the count falls, so a reader that sees no stream verified sees the instant too.
    fn stream_down(&self, until: Timestamp) {
        self.verified_until_ns
            .fetch_max(until.unix_nanos(), Ordering::Release);
        self.streams_verified.fetch_sub(1, Ordering::AcqRel);
    }

    /// The coverage as of `now`.
    pub fn read(&self, now: Timestamp) -> CoverageReading {
        let streams = self.streams_verified.load(Ordering::Acquire);
        let subscribed = self.subscribed_ns.load(Ordering::Relaxed);
        let last = self.last_verified_ns.load(Ordering::Relaxed);
        let until = self.verified_until_ns.load(Ordering::Acquire);
        // Whole milliseconds: all a dashboard needs, and short in the exposition.
        let age =
            |from: i64| (now.unix_nanos().saturating_sub(from).max(0) / 1_000_000) as f64 / 1e3;
        let newest_message = if last == NONE { subscribed } else { last };
        CoverageReading {
            streams_verified: u64::try_from(streams).unwrap_or(0),
            seconds_since_verified: age(newest_message),
            gap_seconds: if streams > 0 {
                0.0
            } else {
                age(newest_message.max(until))
            },
        }
    }
}

/// One stream's part in its symbol's coverage: counted among the verified streams while its book
/// is verified, and uncounted when it ends (explicitly, or when dropped).
#[derive(Debug)]
pub struct StreamCoverage {
    symbol: Arc<SymbolMetrics>,
    verified: bool,
    /// Receive time of this stream's latest verified message (where a dropped stream's span
    /// ends when nothing better was said).
    last_verified: Timestamp,
}

impl StreamCoverage {
    /// A new stream of `symbol`, not verified yet.
    pub fn new(symbol: Arc<SymbolMetrics>) -> Self {
        StreamCoverage {
            symbol,
            verified: false,
            last_verified: Timestamp::from_unix_nanos(0),
        }
    }

    /// Whether this stream's book is verified now.
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    /// A book message of this stream verified, received at `at`.
    pub fn verified(&mut self, at: Timestamp) {
        let coverage = &self.symbol.coverage;
        coverage.verified_message(at);
        self.last_verified = at;
        if !self.verified {
            self.verified = true;
            coverage.stream_up();
        }
    }

    /// This stream's book is no longer verified (a mismatch, a lost connection, an unsubscribe);
    /// it was verified up to `until`. Nothing happens when it was not verified.
    pub fn unverified(&mut self, until: Timestamp) {
        if std::mem::take(&mut self.verified) {
            self.symbol
                .coverage
                .stream_down(until.max(self.last_verified));
        }
    }
}

impl Drop for StreamCoverage {
    fn drop(&mut self) {
        let until = self.last_verified;
        self.unverified(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + seconds * 1_000_000_000)
    }

    fn symbol() -> Arc<SymbolMetrics> {
        Arc::new(SymbolMetrics::subscribed_at(t(0)))
    }

    /// (streams verified, seconds since verified, gap seconds) at `now`.
    fn read(s: &SymbolMetrics, now: i64) -> (u64, f64, f64) {
        let r = s.coverage.read(t(now));
        (r.streams_verified, r.seconds_since_verified, r.gap_seconds)
    }

    #[test]
    fn before_any_verified_message_both_ages_count_from_the_subscription() {
        let s = symbol();
        assert_eq!(
            read(&s, 0),
            (0, 0.0, 0.0),
            "present at 0 at the subscription"
        );
        assert_eq!(read(&s, 42), (0, 42.0, 42.0));
        // A clock that steps back never shows a negative age.
        assert_eq!(read(&s, -5), (0, 0.0, 0.0));
    }

    #[test]
    fn a_quiet_verified_symbol_ages_but_is_never_in_a_gap() {
        let s = symbol();
        let mut stream = StreamCoverage::new(Arc::clone(&s));
        stream.verified(t(10));
        assert_eq!(read(&s, 10), (1, 0.0, 0.0));
        assert_eq!(read(&s, 600), (1, 590.0, 0.0));
    }

    #[test]
    fn a_lost_connection_opens_the_gap_at_its_last_frame_not_at_its_last_update() {
        let s = symbol();
        let mut stream = StreamCoverage::new(Arc::clone(&s));
        stream.verified(t(10));
        // Heartbeats until 100 confirmed the book; the connection was lost after them.
        stream.unverified(t(100));
        assert_eq!(read(&s, 130), (0, 120.0, 30.0));
    }

    #[test]
    fn a_mismatch_opens_the_gap_and_the_next_verified_message_closes_it() {
        let s = symbol();
        let mut stream = StreamCoverage::new(Arc::clone(&s));
        stream.verified(t(10));
        stream.verified(t(20));
        stream.unverified(t(21));
        stream.unverified(t(22)); // another mismatch in the same gap changes nothing
        assert_eq!(read(&s, 31), (0, 11.0, 10.0));
        stream.verified(t(40));
        assert_eq!(read(&s, 45), (1, 5.0, 0.0));
    }

    #[test]
    fn the_symbol_is_in_a_gap_only_while_every_stream_is_dark() {
        let s = symbol();
        let mut a = StreamCoverage::new(Arc::clone(&s));
        let mut b = StreamCoverage::new(Arc::clone(&s));
        a.verified(t(10));
        b.verified(t(11));
        assert_eq!(read(&s, 12), (2, 1.0, 0.0));
        a.unverified(t(15));
        // b is verified and quiet: no gap, and its last message is the newest.
        assert_eq!(read(&s, 30), (1, 19.0, 0.0));
        a.verified(t(31));
        b.unverified(t(32));
        assert_eq!(read(&s, 33), (1, 2.0, 0.0));
        a.unverified(t(40));
        // Both dark: the gap runs from the later end of the two spans.
        assert_eq!(read(&s, 50), (0, 19.0, 10.0));
    }

    #[test]
    fn the_latest_message_wins_whichever_stream_reports_it_first() {
        let s = symbol();
        let mut a = StreamCoverage::new(Arc::clone(&s));
        let mut b = StreamCoverage::new(Arc::clone(&s));
        a.verified(t(20));
        b.verified(t(15)); // b's copy arrived later in program order but is older
        assert_eq!(read(&s, 25), (2, 5.0, 0.0));
    }

    #[test]
    fn a_dropped_stream_stops_counting_itself_verified() {
        let s = symbol();
        let mut stream = StreamCoverage::new(Arc::clone(&s));
        stream.verified(t(10));
        drop(stream);
        assert_eq!(read(&s, 12), (0, 2.0, 2.0));
        // A stream dropped unverified changes nothing.
        let other = StreamCoverage::new(Arc::clone(&s));
        drop(other);
        assert_eq!(read(&s, 12), (0, 2.0, 2.0));
    }

    #[test]
    fn streams_on_several_threads_leave_the_count_exact() {
        let s = symbol();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let s = Arc::clone(&s);
                scope.spawn(move || {
                    let mut stream = StreamCoverage::new(s);
                    for i in 0..10_000 {
                        stream.verified(t(thread * 100_000 + i));
                        if i % 7 == 0 {
                            stream.unverified(t(thread * 100_000 + i));
                        }
                    }
                });
            }
        });
        let r = s.coverage.read(t(400_000));
        assert_eq!(r.streams_verified, 0, "every stream ended");
        assert_eq!(r.seconds_since_verified, 400_000.0 - 309_999.0);
    }
}
