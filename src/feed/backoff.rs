//! Pacing for reconnects and resubscriptions, so that a bad minute cannot get the collector
//! rate-limited or banned (Kraken bans an IP for about 10 minutes after ~150 reconnects in 10).
//!
//! - [`Backoff`]: exponential delay with full jitter between reconnect attempts of one connection,
//!   reset once a connection has stayed healthy for a while.
//! - [`RateLimiter`]: a token bucket shared by all connections, for connects and for
//!   resubscriptions; waiting for a token is how pacing happens.
//!
//! Both use tokio's clock, so tests run them on a paused clock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// Delays start at `base` and double up to `max`; `seed` drives the jitter.
    pub fn new(base: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
            rng: splitmix64(seed) | 1,
        }
    }

    /// The delay before the next attempt: uniformly random in [ceiling/2, ceiling], where the
    /// ceiling doubles with each consecutive failure up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: jitter need not be cryptographic, only spread out.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = ceiling / 2;
        let spread = half.as_nanos().max(1) as u64;
        half + Duration::from_nanos(self.rng % spread)
    }

    /// Forgets past failures (after a connection proved healthy).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Spreads nearby seeds (connection numbers) far apart.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
        // 150 reconnects in 10 minutes is Kraken's ban line: 60 per 10 minutes stays under it.
        let limiter = RateLimiter::new(10, Duration::from_secs(10));
        let start = Instant::now();
        for _ in 0..70 {
            limiter.acquire().await;
        }
        assert!(
            start.elapsed() >= Duration::from_secs(590),
            "{:?}",
            start.elapsed()
        );
    }
}
