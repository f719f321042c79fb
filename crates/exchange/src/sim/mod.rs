//! The simulated exchange: [`Simulator`] = the protocol server ([`crate::server`]) +
//! a simulated market ([`market::SimMarket`]).
//!
//! - [`book`]: each pair's deep "true" book and the events that move it;
//! - [`window`]: what a subscriber at a given depth is sent for an event (Kraken's rules);
//! - [`market`]: the pairs, their views per depth, and the clock that moves them.
//!
//! What must always hold: every frame is what Kraken would send for the simulated book, so every
//! checksum verifies for a correct client (unless a fault says otherwise), and a run is
//! reproducible from its seed.

pub mod book;
pub mod market;
pub mod window;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::market::SimMarket;
use super::server::{Exchange, ExchangeError, ServerConfig};
use super::stats::StatsSnapshot;
use crate::book::{Decimal, Precision};

/// The largest precision accepted (prices and quantities are `u64` mantissas).
pub const MAX_PRECISION: u8 = 12;

/// One simulated pair: `BTC/USD:1:8`, optionally `:price=62800.0` and `:rate=50`.
#[derive(Clone, Debug, PartialEq)]
pub struct PairSpec {
    /// `BTC/USD`.
    pub symbol: String,
    /// Decimals of prices and quantities.
    pub precision: Precision,
    /// Starting mid price as a mantissa at the price precision (random when `None`).
    pub mid: Option<u64>,
    /// Events per second for this pair (the run's rate when `None`).
    pub rate: Option<f64>,
}

/// A pair specification that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid pair {text:?}: {reason} (expected SYMBOL:PRICE_PRECISION:QTY_PRECISION[:price=P][:rate=R], e.g. BTC/USD:1:8 or BTC/USD:1:8:price=62800.0:rate=50)"
)]
pub struct PairSpecError {
    /// The text as given.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

fn valid_symbol(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    match s.split_once('/') {
        Some((base, quote)) => {
            !base.is_empty()
                && !quote.is_empty()
                && base.chars().all(ok_char)
                && quote.chars().all(ok_char)
        }
        None => false,
    }
}

impl FromStr for PairSpec {
    type Err = PairSpecError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PairSpecError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = text.trim().split(':');
        let symbol = parts.next().unwrap_or_default();
        if !valid_symbol(symbol) {
            return Err(err(
                "the symbol must be BASE/QUOTE of letters, digits, '.', '-' or '_'",
            ));
        }
        let precision = |p: Option<&str>, what: &str| -> Result<u8, PairSpecError> {
            p.and_then(|p| p.parse::<u8>().ok())
                .filter(|&p| p <= MAX_PRECISION)
                .ok_or_else(|| {
                    err(&format!(
                        "the {what} precision must be 0 to {MAX_PRECISION}"
                    ))
                })
        };
        let precision = Precision {
            price: precision(parts.next(), "price")?,
            qty: precision(parts.next(), "quantity")?,
        };
        let mut spec = PairSpec {
            symbol: symbol.to_owned(),
            precision,
            mid: None,
            rate: None,
        };
        for part in parts {
            match part.split_once('=') {
                Some(("price", v)) => {
                    let price = Decimal::parse(v)
                        .map_err(|_| err("price= must be a positive decimal number"))?;
                    let m = price
                        .mantissa_at(precision.price)
                        .filter(|&m| m >= 2)
                        .ok_or_else(|| {
                            err("price= must be above zero and have no more decimals than the price precision")
                        })?;
                    spec.mid = Some(
                        u64::try_from(m)
                            .ok()
                            .filter(|&m| m < u64::MAX / 4)
                            .ok_or_else(|| err("price= is too large"))?,
                    );
                }
                Some(("rate", v)) => {
                    let r = v
                        .parse::<f64>()
                        .ok()
                        .filter(|r| r.is_finite() && *r >= 0.0 && *r <= 1e6)
                        .ok_or_else(|| err("rate= must be events per second, from 0 to 1000000"))?;
                    spec.rate = Some(r);
                }
                _ => return Err(err(&format!("unknown option {part:?}"))),
            }
        }
        Ok(spec)
    }
}

/// Parses a comma-separated list of pairs.
pub fn parse_pairs(list: &str) -> Result<Vec<PairSpec>, PairSpecError> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

/// `n` generated pairs with varied precisions: `AAA/USD`, `AAB/EUR`, ...
pub fn generated_pairs(n: usize) -> Vec<PairSpec> {
    const QUOTES: [&str; 4] = ["USD", "EUR", "GBP", "USDT"];
    const PRICE: [u8; 6] = [1, 2, 3, 4, 5, 6];
    const QTY: [u8; 4] = [8, 4, 6, 5];
    (0..n)
        .map(|i| {
            let mut base = String::new();
            let mut k = i / QUOTES.len();
            for _ in 0..3 {
                base.insert(0, char::from(b'A' + (k % 26) as u8));
                k /= 26;
            }
            if k > 0 {
                base.insert_str(0, &k.to_string());
            }
            PairSpec {
                symbol: format!("{base}/{}", QUOTES[i % QUOTES.len()]),
                precision: Precision {
                    price: PRICE[i % PRICE.len()],
                    qty: QTY[(i / 3) % QTY.len()],
                },
                mid: None,
                rate: None,
            }
        })
        .collect()
}

/// A simulated exchange's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The pairs.
    pub pairs: Vec<PairSpec>,
    /// Book events per second per pair (a pair's own `rate` overrides it).
    pub rate: f64,
    /// Levels a side of each pair's true book (served depths are windows of it).
    pub book_levels: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// How often the market draws the events that are due.
    pub tick: Duration,
    /// The protocol server's settings (its seed is set from `seed`).
    pub server: ServerConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            pairs: vec![
                PairSpec {
                    symbol: "BTC/USD".into(),
                    precision: Precision { price: 1, qty: 8 },
                    mid: Some(628_025),
                    rate: None,
                },
                PairSpec {
                    symbol: "ETH/USD".into(),
                    precision: Precision { price: 2, qty: 8 },
                    mid: Some(265_050),
                    rate: None,
                },
                PairSpec {
                    symbol: "MINA/GBP".into(),
                    precision: Precision { price: 4, qty: 8 },
                    mid: Some(2_790),
                    rate: None,
                },
            ],
            rate: 20.0,
            book_levels: 2000,
            seed: 0,
            tick: Duration::from_millis(2),
            server: ServerConfig::default(),
        }
    }
}

impl SimConfig {
    fn validate(&self) -> Result<(), ExchangeError> {
        let bad = |m: String| Err(ExchangeError::Config(m));
        if self.pairs.is_empty() {
            return bad("no pairs to simulate: give --symbols or --pairs".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.pairs {
            if !seen.insert(&p.symbol) {
                return bad(format!("pair {} is listed twice", p.symbol));
            }
        }
        if !(self.rate.is_finite() && (0.0..=1e6).contains(&self.rate)) {
            return bad(format!(
                "rate {} must be events per second from 0 to 1000000",
                self.rate
            ));
        }
        if !(10..=100_000).contains(&self.book_levels) {
            return bad(format!(
                "book levels {} must be from 10 to 100000",
                self.book_levels
            ));
        }
        if self.tick.is_zero() {
            return bad("the market tick must be above zero".into());
        }
        Ok(())
    }
}

/// A running simulated exchange.
#[derive(Debug)]
pub struct Simulator {
    exchange: Exchange,
    market: Arc<SimMarket>,
}

/// The simulator's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SimStats {
    /// The protocol server's counters.
    #[serde(flatten)]
    pub exchange: StatsSnapshot,
    /// Book events drawn (all pairs).
    pub market_events: u64,
    /// Book frames encoded (one per depth served per event that changed it, plus snapshots).
    pub market_frames: u64,
}

impl Simulator {
    /// Starts the simulator: binds `config.server.listen` and begins serving.
    pub async fn bind(mut config: SimConfig) -> Result<Simulator, ExchangeError> {
        config.validate()?;
        config.server.seed = config.seed;
        let market = Arc::new(SimMarket::new(&config));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let exchange = Exchange::bind(
            config.server.clone(),
            Arc::clone(&market) as Arc<dyn super::Market>,
            cancel.clone(),
            tracker.clone(),
        )
        .await?;
        tracker.spawn(market.clock(config.tick).run(cancel));
        Ok(Simulator { exchange, market })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.exchange.local_addr()
    }

    /// The WebSocket URL to connect to (`ws://127.0.0.1:8790/v2`).
    pub fn url(&self) -> String {
        format!("ws://{}/v2", self.local_addr())
    }

    /// The counters now.
    pub fn stats(&self) -> SimStats {
        SimStats {
            exchange: self.exchange.stats(),
            market_events: self.market.events(),
            market_frames: self.market.frames(),
        }
    }

    /// The token that stops the simulator when cancelled (then call [`Simulator::shutdown`]).
    pub fn cancellation_token(&self) -> CancellationToken {
        self.exchange.cancellation_token()
    }

    /// Stops the market and the listener, drains every connection (each gets a close frame),
    /// flushes the frame log, and returns the final counters.
    pub async fn shutdown(self) -> Result<SimStats, ExchangeError> {
        let exchange = self.exchange.shutdown().await?;
        Ok(SimStats {
            exchange,
            market_events: self.market.events(),
            market_frames: self.market.frames(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_specs_parse_or_say_what_to_write() {
        let p: PairSpec = "BTC/USD:1:8".parse().unwrap();
        assert_eq!(p.precision, Precision { price: 1, qty: 8 });
        assert_eq!((p.mid, p.rate), (None, None));
        let p: PairSpec = "MINA/GBP:4:8:price=0.0279:rate=2.5".parse().unwrap();
        assert_eq!((p.mid, p.rate), (Some(279), Some(2.5)));
        // (text, part of the reason)
        let bad = [
            ("BTCUSD:1:8", "BASE/QUOTE"),
            ("BTC/USD:1", "quantity precision"),
            ("BTC/USD:x:8", "price precision"),
            ("BTC/USD:13:8", "price precision must be 0 to 12"),
            ("BTC/USD:1:8:price=1.25", "no more decimals"),
            ("BTC/USD:1:8:price=0", "above zero"),
            ("BTC/USD:1:8:rate=-1", "rate="),
            ("BTC/USD:1:8:speed=3", "unknown option"),
            ("B\"C/USD:1:8", "BASE/QUOTE"),
        ];
        for (text, reason) in bad {
            let e = text.parse::<PairSpec>().unwrap_err().to_string();
            assert!(e.contains(reason), "{text}: {e}");
            assert!(e.contains("e.g. BTC/USD:1:8"), "{text}: {e}");
        }
        let list = parse_pairs("BTC/USD:1:8, ETH/USD:2:8,").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].symbol, "ETH/USD");
    }

    #[test]
    fn generated_pairs_are_unique_valid_and_varied() {
        let pairs = generated_pairs(2000);
        let names: std::collections::HashSet<_> = pairs.iter().map(|p| &p.symbol).collect();
        assert_eq!(names.len(), 2000);
        assert!(pairs.iter().all(|p| valid_symbol(&p.symbol)));
        let precisions: std::collections::HashSet<_> = pairs
            .iter()
            .map(|p| (p.precision.price, p.precision.qty))
            .collect();
        assert!(precisions.len() >= 12, "{precisions:?}");
        assert_eq!(pairs[0].symbol, "AAA/USD");
        assert_eq!(pairs[5].symbol, "AAB/EUR");
    }
}
