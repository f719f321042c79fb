//! krakenbook's one source of pseudo-random numbers: SplitMix64, seeded where a run must be
//! reproducible (the simulator's books per pair, the server's faults and connection ids per
//! connection, a connection's reconnect jitter, the journal's simulated disk), seeded by the
//! operating system where it must not repeat ([`Rng::from_os`], [`os_u64`]: the journal's instance
//! id, the database writer's retry jitter).
//!
//! Small, fast and fully determined by its seed, so a `--seed` reproduces every book and every
//! fault. What must always hold: the same seed gives the same sequence on every platform (only
//! integer arithmetic and exactly rounded IEEE operations decide what happens; `ln` is used only
//! for waiting times, which change when a frame is sent but never what it says; `f64` is never
//! used for prices or quantities). Not cryptographic: nothing here is a secret.
//!
//! Why our own and not a crate: `fastrand` would serve for jitter, but its seeded sequence is not
//! promised to stay the same across its releases, and a simulator run's `--seed` must; the
//! generator is twelve lines with its published reference values as a test.

use std::hash::{BuildHasher, Hasher};

/// 64 bits the operating system seeded: std seeds the keys of its hash maps' `RandomState` from
/// the OS's random source (once a thread, then stepped per use), and the hash of the time and
/// process id under those keys is a fresh value each call. Never fails, does no I/O of its own.
pub fn os_u64() -> u64 {
    let mut h = std::hash::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a 64-bit state stepped by a constant and mixed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A generator seeded by the operating system ([`os_u64`]): for what must differ between runs.
    pub fn from_os() -> Self {
        Rng(os_u64())
    }

    /// A generator for one named stream of a run: the same `(seed, name)` always gives the same
    /// stream, and adding another name does not change the others.
    pub fn derive(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, then mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut r = Rng(seed ^ h.rotate_left(17));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n > 0`; 0 when `n == 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-and-reject method.
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform integer in `lo..=hi` (`lo` when `hi < lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// A uniform `f64` in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A geometric count of failures before the first success with success probability `p`:
    /// 0, 1, 2, ... with mean `(1 - p) / p`, capped at `cap`.
    ///
    /// Inverse transform with only IEEE multiplications and comparisons (no `ln`, whose last bit
    /// may differ between platforms' maths libraries), so the count is the same everywhere.
    pub fn geometric(&mut self, p: f64, cap: u64) -> u64 {
        let q = 1.0 - p.clamp(0.0, 1.0);
        let u = self.unit();
        // The count is at least k exactly when u < q^k.
        let mut k = 0;
        let mut t = q;
        while k < cap && u < t {
            k += 1;
            t *= q;
        }
        k
    }

    /// An exponentially distributed waiting time with the given mean, in nanoseconds (at least 1).
    pub fn exp_nanos(&mut self, mean_nanos: f64) -> u64 {
        let u = 1.0 - self.unit(); // (0, 1]
        let t = -u.ln() * mean_nanos;
        if t.is_finite() && t >= 1.0 {
            t.min(u64::MAX as f64 / 2.0) as u64
        } else {
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_names_are_independent() {
        let a: Vec<u64> = (0..5)
            .map(|_| Rng::derive(7, "BTC/USD").next_u64())
            .collect();
        assert!(
            a.windows(2).all(|w| w[0] == w[1]),
            "derive is a pure function"
        );
        let mut x = Rng::derive(7, "BTC/USD");
        let mut y = Rng::derive(7, "ETH/USD");
        let mut z = Rng::derive(8, "BTC/USD");
        let (x1, y1, z1) = (x.next_u64(), y.next_u64(), z.next_u64());
        assert_ne!(x1, y1);
        assert_ne!(x1, z1);
    }

    #[test]
    fn os_seeded_generators_differ_between_calls() {
        let seeds: std::collections::HashSet<u64> = (0..64).map(|_| os_u64()).collect();
        assert_eq!(seeds.len(), 64);
        assert_ne!(Rng::from_os().next_u64(), Rng::from_os().next_u64());
    }

    #[test]
    fn splitmix_reference_values() {
        // SplitMix64 seeded with 0 starts with these values (the published reference sequence).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn below_and_range_stay_in_bounds_and_cover_them() {
        let mut r = Rng::new(42);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            let v = r.range(3, 9);
            assert!((3..=9).contains(&v));
            seen[(v - 3) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "roughly uniform: {seen:?}");
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range(5, 5), 5);
    }

    #[test]
    fn geometric_has_the_expected_mean_and_cap() {
        let mut r = Rng::new(1);
        let n = 20_000;
        let sum: u64 = (0..n).map(|_| r.geometric(0.04, 10_000)).sum();
        let mean = sum as f64 / f64::from(n);
        assert!((mean - 24.0).abs() < 1.5, "mean {mean}");
        assert!((0..1000).all(|_| r.geometric(0.01, 5) <= 5));
    }

    #[test]
    fn exponential_waits_have_the_expected_mean() {
        let mut r = Rng::new(3);
        let n = 20_000u64;
        let sum: u64 = (0..n).map(|_| r.exp_nanos(1_000_000.0)).sum();
        let mean = sum / n;
        assert!((950_000..1_050_000).contains(&mean), "mean {mean}");
    }
}
