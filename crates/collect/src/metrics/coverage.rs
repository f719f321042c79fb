//! Per-symbol coverage as `/metrics` shows it, over *every stream of the symbol*: how many
//! streams' books are verified now, whether the union covers the symbol now, when the last
//! verified message arrived on any of them, how long the symbol's current gap has been open, how
//! long since its last gap ended, and the seconds spent in gaps since its subscription.
//!
//! A *stream* is what one connection received for one symbol. Each stream owns a
//! [`StreamCoverage`], which counts itself in its symbol's [`SymbolCoverage`] while its book is
//! verified. The symbol is in a *gap* (a union gap) only while no stream counts itself verified:
//! several connections of one collector (`--redundancy`) are one union here; several collectors
//! are united by the alert rules (`min by (symbol)` over their instances).
//!
//! What must always hold:
//! - the hot path (one verified book message) costs one atomic maximum and a branch on a field
//!   the stream owns; a stream's book changing state (verified, mismatched, connection lost),
//!   which is rare, takes a short lock that keeps the count of verified streams, the bounds of
//!   the gaps and their total consistent with each other; a scrape takes it too;
//! - a stream that ends, however it ends (closed, dropped, its symbol rejected), stops counting
//!   itself verified: [`StreamCoverage`]'s `Drop` takes care of the paths that forget to;
//! - before any stream verified the symbol, both ages count from the symbol's subscription (when
//!   the collector first asked for it), so every series exists, at 0, from the subscription on,
//!   and a symbol that never verifies shows a growing gap rather than none;
//! - the gap begins where the verified knowledge ends: the latest verified message, or, for a
//!   stream whose connection was lost, its last frame (heartbeats confirm the book up to then),
//!   or the instant of a mismatch; a quiet but verified symbol is never in a gap. It ends at the
//!   receipt of the message that verifies a stream again;
//! - the seconds in gaps never decrease from one reading to the next, whatever the clock does
//!   (a scrape inside a gap moves the gap's end no earlier than the instant it was read at), so
//!   Prometheus never sees a counter reset that did not happen.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use super::SymbolMetrics;
use crate::time::Timestamp;

/// No instant recorded yet.
const NONE: i64 = i64::MIN;

/// The coverage of one symbol across all its streams (see the module doc).
#[derive(Debug)]
pub struct SymbolCoverage {
    /// When the symbol was first asked for (ns since the epoch).
    subscribed_ns: i64,
    /// Receive time of the latest verified book message on any stream ([`NONE`] before one).
    last_verified_ns: AtomicI64,
    /// What changes when a stream's book changes state.
    union: Mutex<Union>,
}

/// The union of a symbol's streams: changed only when a stream's book changes state.
#[derive(Debug)]
struct Union {
    /// Streams whose book of the symbol is verified now.
    streams: u64,
    /// The latest instant a stream was known verified up to, when its verified span ended.
    verified_until_ns: i64,
    /// Where the last gap ended ([`NONE`] before the first verified message).
    covered_since_ns: i64,
    /// Nanoseconds of the gaps that ended.
    closed_gaps_ns: i64,
    /// The latest instant a reading was made at: an open gap has lasted at least until then.
    read_ns: i64,
}

impl Union {
    /// Where the current gap began (meaningful while no stream is verified): where the verified
    /// knowledge ends.
    fn gap_start(&self, subscribed: i64, last_verified: i64) -> i64 {
        let newest_message = if last_verified == NONE {
            subscribed
        } else {
            last_verified
        };
        newest_message.max(self.verified_until_ns)
    }

    /// Where the current gap's seconds count from in the total: its start, but never before the
    /// end of the gap before it (a gap whose end was moved to a scrape's instant is not counted
    /// twice).
    fn counted_from(&self, subscribed: i64, last_verified: i64) -> i64 {
        self.gap_start(subscribed, last_verified)
            .max(self.covered_since_ns)
    }
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
    /// Seconds since the last gap ended (every stream was last dark): 0 while in a gap.
    pub seconds_since_gap: f64,
    /// Seconds spent in gaps since the subscription, the open one included: never decreases.
    pub uncovered_seconds: f64,
}

impl CoverageReading {
    /// Whether some stream's book is verified now: the union covers the symbol.
    pub fn covered(&self) -> bool {
        self.streams_verified > 0
    }
}

/// Whole milliseconds as seconds: all a dashboard needs, and short in the exposition.
fn seconds(nanos: i64) -> f64 {
    (nanos.max(0) / 1_000_000) as f64 / 1e3
}

impl SymbolCoverage {
    /// The coverage of a symbol first asked for at `subscribed`.
    pub fn new(subscribed: Timestamp) -> Self {
        SymbolCoverage {
            subscribed_ns: subscribed.unix_nanos(),
            last_verified_ns: AtomicI64::new(NONE),
            union: Mutex::new(Union {
                streams: 0,
                verified_until_ns: NONE,
                covered_since_ns: NONE,
                closed_gaps_ns: 0,
                read_ns: NONE,
            }),
        }
    }

    fn union(&self) -> std::sync::MutexGuard<'_, Union> {
        self.union.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A verified book message of some stream, received at `at`.
    pub fn verified_message(&self, at: Timestamp) {
        self.last_verified_ns
            .fetch_max(at.unix_nanos(), Ordering::Relaxed);
    }

    /// A stream's book is verified from its message received at `at` (before that message
    /// counts as the newest: a gap ends where the message that ends it arrived).
    fn stream_up(&self, at: Timestamp) {
        let mut u = self.union();
        if u.streams == 0 {
            let start = u.counted_from(
                self.subscribed_ns,
                self.last_verified_ns.load(Ordering::Relaxed),
            );
            let end = at.unix_nanos().max(u.read_ns).max(start);
            u.closed_gaps_ns = u.closed_gaps_ns.saturating_add(end - start);
            u.covered_since_ns = end;
        }
        u.streams += 1;
    }

    /// A stream's verified span ended; it was verified up to `until`.
    fn stream_down(&self, until: Timestamp) {
        let mut u = self.union();
        u.verified_until_ns = u.verified_until_ns.max(until.unix_nanos());
        u.streams = u.streams.saturating_sub(1);
    }

    /// The coverage as of `now`.
    pub fn read(&self, now: Timestamp) -> CoverageReading {
        let mut u = self.union();
        let last = self.last_verified_ns.load(Ordering::Relaxed);
        let now = now.unix_nanos();
        u.read_ns = u.read_ns.max(now);
        let newest_message = if last == NONE {
            self.subscribed_ns
        } else {
            last
        };
        let covered = u.streams > 0;
        let gap_start = u.gap_start(self.subscribed_ns, last);
        let counted_from = u.counted_from(self.subscribed_ns, last);
        CoverageReading {
            streams_verified: u.streams,
            seconds_since_verified: seconds(now.saturating_sub(newest_message)),
            gap_seconds: if covered {
                0.0
            } else {
                seconds(now.saturating_sub(gap_start))
            },
            seconds_since_gap: if covered {
                seconds(now.saturating_sub(u.covered_since_ns))
            } else {
                0.0
            },
            uncovered_seconds: seconds(if covered {
                u.closed_gaps_ns
            } else {
                u.closed_gaps_ns
                    .saturating_add(u.read_ns.saturating_sub(counted_from).max(0))
            }),
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
        if !self.verified {
            self.verified = true;
            coverage.stream_up(at);
        }
        coverage.verified_message(at);
        self.last_verified = at;
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

    /// What happens to a symbol's two streams, in order.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        /// Stream `n` has a verified message received at `t`.
        Verified(usize, i64),
        /// Stream `n` stops being verified, verified up to `t`.
        Unverified(usize, i64),
        /// A scrape at `t`: (streams verified, gap seconds, seconds since the last gap, seconds
        /// in gaps since the subscription).
        Read(i64, (u64, f64, f64, f64)),
    }

    #[test]
    fn union_gaps_are_timed_only_while_every_stream_is_dark() {
        use Step::*;
        // (what it covers, the steps)
        let cases: [(&str, &[Step]); 4] = [
            (
                "the wait for the first verified message is the first gap",
                &[
                    Read(4, (0, 4.0, 0.0, 4.0)),
                    Verified(0, 10),
                    Read(15, (1, 0.0, 5.0, 10.0)),
                ],
            ),
            (
                "one stream dark while the other is verified is no gap",
                &[
                    Verified(0, 10),
                    Verified(1, 12),
                    Unverified(0, 20),
                    Read(30, (1, 0.0, 20.0, 10.0)),
                    Verified(0, 35),
                    Unverified(1, 40),
                    Read(50, (1, 0.0, 40.0, 10.0)),
                ],
            ),
            (
                "every stream dark: a gap from the later end, closed by the next verified message",
                &[
                    Verified(0, 10),
                    Verified(1, 11),
                    Unverified(0, 20),
                    Unverified(1, 24),
                    Read(30, (0, 6.0, 0.0, 16.0)),
                    Verified(1, 34),
                    Read(40, (1, 0.0, 6.0, 20.0)),
                    Unverified(1, 50),
                    Verified(0, 53),
                    Read(60, (1, 0.0, 7.0, 23.0)),
                ],
            ),
            (
                "a gap that ended before a scrape inside it was processed never shrinks",
                &[
                    Verified(0, 10),
                    Unverified(0, 20),
                    Read(50, (0, 30.0, 0.0, 40.0)),
                    // Received at 45, counted after the scrape at 50: the gap ends at 50.
                    Verified(0, 45),
                    Read(50, (1, 0.0, 0.0, 40.0)),
                    // A clock stepped back changes no total.
                    Read(47, (1, 0.0, 0.0, 40.0)),
                    Read(60, (1, 0.0, 10.0, 40.0)),
                ],
            ),
        ];
        for (what, steps) in cases {
            let s = symbol();
            let mut streams = [
                StreamCoverage::new(Arc::clone(&s)),
                StreamCoverage::new(Arc::clone(&s)),
            ];
            for (i, step) in steps.iter().enumerate() {
                match *step {
                    Verified(n, at) => streams[n].verified(t(at)),
                    Unverified(n, at) => streams[n].unverified(t(at)),
                    Read(at, want) => {
                        let r = s.coverage.read(t(at));
                        assert_eq!(
                            (
                                r.streams_verified,
                                r.gap_seconds,
                                r.seconds_since_gap,
                                r.uncovered_seconds
                            ),
                            want,
                            "{what}, step {i}"
                        );
                        assert_eq!(r.covered(), want.0 > 0, "{what}, step {i}");
                    }
                }
            }
        }
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
