//! Pacing for reconnects and resubscriptions, so that a bad minute cannot get the collector
//! rate-limited or banned (Kraken bans an IP for about 10 minutes after ~150 reconnects in 10).
//!
//! - [`Backoff`]: exponential delay with equal jitter (uniform in the upper half of the current
//!   ceiling, so a delay never shrinks below half its step) between reconnect attempts of one
//!   connection.
//! - [`Reconnect`]: which delay each kind of failure gets ([`Pace`], decided by the error types in
//!   [`super::error`]): an open connection that ended reconnects promptly (the backoff's first step
//!   once the connection had proved healthy: a book message verified on it, or it stayed up for
//!   `healthy_after`; one that keeps dying before that backs off further each time), an
//!   unreachable exchange backs off normally, a rate limit pauses for minutes, and a broken setup
//!   (TLS, certificate) is retried slowly.
//! - [`RateLimiter`]: a token bucket shared by all connections, for connects and for
//!   resubscriptions; waiting for a token is how pacing happens.
//!
//! The limiter uses tokio's clock, so tests run it on a paused clock; the delays are pure.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::rng::Rng;

/// Exponential backoff with equal jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: Rng,
}

impl Backoff {
    /// Delays start at `base` and double up to `max`; `seed` drives the jitter.
    pub fn new(base: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
            rng: Rng::new(seed),
        }
    }

    /// The delay before the next attempt: uniformly random in [ceiling/2, ceiling], where the
    /// ceiling doubles with each consecutive failure up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + self.jitter(half)
    }

    /// A uniformly random duration in [0, `spread`).
    pub fn jitter(&mut self, spread: Duration) -> Duration {
        // Nearby seeds (connection numbers) give unrelated streams: SplitMix64 mixes its output.
        let spread = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.below(spread))
    }

    /// Forgets past failures (after a connection proved healthy).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How soon to try again after a failure, by what the failure needs (the error types classify:
/// [`super::ConnectError::pace`], [`super::Lost::pace`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pace {
    /// An open connection ended (reset, EOF, a close frame, silence, an oversized frame):
    /// reconnect promptly: the backoff's first step when the connection had proved healthy;
    /// a connection that keeps dying young backs off like any failure.
    Prompt,
    /// The exchange could not be reached (DNS, a refused or timed-out connect, an HTTP error):
    /// the backoff's next step, doubling per consecutive failure.
    Normal,
    /// The exchange says we send too much (HTTP 429, a rate-limit error): a pause of minutes, to
    /// stay clear of a ban.
    RateLimited,
    /// Broken until someone fixes it (a TLS or certificate failure, a URL that cannot work):
    /// retried slowly; the feed reports it on `/health`.
    Broken,
}

/// The reconnect delays of one connection: the backoff for prompt and normal retries, long fixed
/// pauses (with up to half again of jitter, so connections spread out) for rate limits and broken
/// setups.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    healthy_after: Duration,
    rate_limit_pause: Duration,
    broken_retry: Duration,
}

impl Reconnect {
    /// The delays of connection `seed` under `config`.
    pub fn new(config: &super::FeedConfig, seed: u64) -> Self {
        Reconnect {
            backoff: Backoff::new(config.backoff_base, config.backoff_max, seed),
            healthy_after: config.healthy_after,
            rate_limit_pause: config.rate_limit_pause,
            broken_retry: config.broken_retry,
        }
    }

    /// A book message verified on the connection: it recovered, so its next failure starts the
    /// backoff afresh (a connection that keeps dying before its books verify backs off).
    pub fn verified(&mut self) {
        self.backoff.reset();
    }

    /// The delay before the next attempt after a failure of `pace`; `up_for` is how long the
    /// connection that ended had been open (`None`: it never opened).
    pub fn delay(&mut self, pace: Pace, up_for: Option<Duration>) -> Duration {
        match pace {
            Pace::Prompt => {
                if up_for.is_some_and(|up| up >= self.healthy_after) {
                    self.backoff.reset();
                }
                self.backoff.next_delay()
            }
            Pace::Normal => self.backoff.next_delay(),
            Pace::RateLimited => {
                self.rate_limit_pause + self.backoff.jitter(self.rate_limit_pause / 2)
            }
            Pace::Broken => self.broken_retry + self.backoff.jitter(self.broken_retry / 2),
        }
    }
}

/// A token bucket: `burst` tokens, refilled at one per `interval`.
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<Bucket>,
    burst: f64,
    per_second: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// A bucket that allows `burst` at once and then one per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            state: Mutex::new(Bucket {
                tokens: burst,
                updated: Instant::now(),
            }),
            burst,
            per_second: 1.0 / interval.as_secs_f64().max(1e-9),
        }
    }

    /// A bucket that starts with `tokens` (between 0 and `burst`), then refills as [`Self::new`]'s.
    pub fn with_tokens(burst: u32, interval: Duration, tokens: f64) -> Self {
        let limiter = RateLimiter::new(burst, interval);
        let start = if tokens.is_finite() { tokens } else { 0.0 };
        limiter
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tokens = start.clamp(0.0, limiter.burst);
        limiter
    }

    /// The tokens available now.
    pub fn tokens(&self) -> f64 {
        let b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = Instant::now()
            .saturating_duration_since(b.updated)
            .as_secs_f64();
        (b.tokens + elapsed * self.per_second).min(self.burst)
    }

    /// Takes a token if one is available now; otherwise says how long until one is.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&self) {
        while let Err(wait) = self.try_acquire() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60), 42);
        let mut ceilings = Vec::new();
        for attempt in 0..10u32 {
            let d = b.next_delay();
            let ceiling = Duration::from_secs(1u64 << attempt.min(20)).min(Duration::from_secs(60));
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "attempt {attempt}: {d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceilings.push(ceiling);
        }
        assert_eq!(ceilings.last(), Some(&Duration::from_secs(60)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_connections_apart() {
        let delays: Vec<_> = (0..8)
            .map(|seed| {
                Backoff::new(Duration::from_secs(8), Duration::from_secs(8), seed).next_delay()
            })
            .collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() >= 6, "{delays:?}");
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Each kind of failure, in sequence on one connection, and the delay it gets (defaults:
    /// backoff 1 s doubling to 60 s, healthy after 60 s, rate-limit pause and broken retry 5 min).
    #[test]
    fn each_kind_of_failure_gets_its_own_delay() {
        let config = super::super::FeedConfig::new(
            "wss://ws.kraken.com/v2".parse().unwrap(),
            Default::default(),
        );
        let mut r = Reconnect::new(&config, 3);
        let minutes = |m: u64| secs(60 * m);
        // (what, pace, how long the connection had been up, lowest delay, highest delay)
        let steps: [(&str, Pace, Option<Duration>, Duration, Duration); 10] = [
            (
                "DNS failure",
                Pace::Normal,
                None,
                secs(0) + secs(1) / 2,
                secs(1),
            ),
            ("DNS failure again", Pace::Normal, None, secs(1), secs(2)),
            ("refused", Pace::Normal, None, secs(2), secs(4)),
            (
                "reset after 2 minutes up: the first step",
                Pace::Prompt,
                Some(minutes(2)),
                secs(1) / 2,
                secs(1),
            ),
            (
                "reset after 5 s up: dying young backs off",
                Pace::Prompt,
                Some(secs(5)),
                secs(1),
                secs(2),
            ),
            (
                "HTTP 429",
                Pace::RateLimited,
                None,
                minutes(5),
                minutes(5) + minutes(5) / 2,
            ),
            (
                "a close citing a rate limit",
                Pace::RateLimited,
                Some(secs(1)),
                minutes(5),
                minutes(5) + minutes(5) / 2,
            ),
            (
                "TLS failure",
                Pace::Broken,
                None,
                minutes(5),
                minutes(5) + minutes(5) / 2,
            ),
            (
                "a rate limit does not advance the backoff",
                Pace::Normal,
                None,
                secs(2),
                secs(4),
            ),
            (
                "EOF after a healthy hour",
                Pace::Prompt,
                Some(minutes(60)),
                secs(1) / 2,
                secs(1),
            ),
        ];
        for (what, pace, up_for, low, high) in steps {
            let d = r.delay(pace, up_for);
            assert!(
                d >= low && d <= high,
                "{what}: {d:?} outside [{low:?}, {high:?}]"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_allows_a_burst_then_paces() {
        let limiter = RateLimiter::new(3, Duration::from_secs(10));
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is immediate");
        limiter.acquire().await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
        // 150 reconnects in 10 minutes is Kraken's ban line: the largest start-up burst and 60
        // per 10 minutes stay under it.
        let burst = super::super::MAX_CONNECT_BURST;
        let limiter = super::super::connect_limiter(burst, None);
        let start = Instant::now();
        for _ in 0..burst + 60 {
            limiter.acquire().await;
        }
        assert!(
            start.elapsed() >= Duration::from_secs(590),
            "{:?}",
            start.elapsed()
        );
    }
}
