//! The `instrument` channel: reference data for every pair, including its precisions.
//!
//! Doc page: <https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/instrument>.
//! A snapshot (trimmed to one pair and with the `assets` list emptied):
//!
//! ```json
//! {"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[{"symbol":"BTC/USD",
//!   "base":"BTC","quote":"USD","status":"online","qty_precision":8,"qty_increment":1e-08,
//!   "price_precision":1,"cost_precision":5,"marginable":true,"has_index":true,"cost_min":0.5,
//!   "tick_size":0.1,"price_increment":0.1,"qty_min":5e-05}]}}
//! ```
//!
//! Increments and minimums may arrive in exponent form (`5e-05`); they are read exactly.

use std::borrow::Cow;

use serde::Deserialize;

use super::book::WireDecimal;
use crate::num::{Decimal, Precision};

/// A decoded `instrument` frame (only its pairs; assets are not needed to keep books).
#[derive(Clone, Debug, PartialEq)]
pub struct InstrumentMessage<'a> {
    /// `true` for the snapshot, `false` for an update.
    pub snapshot: bool,
    /// The pairs listed in this frame.
    pub pairs: Vec<Pair<'a>>,
}

#[derive(Deserialize)]
pub(super) struct InstrumentData<'a> {
    #[serde(borrow, default)]
    pub pairs: Vec<Pair<'a>>,
}

/// One tradeable pair.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Pair<'a> {
    /// The pair, e.g. `BTC/USD`.
    #[serde(borrow)]
    pub symbol: Cow<'a, str>,
    /// Base asset.
    #[serde(borrow, default)]
    pub base: Option<Cow<'a, str>>,
    /// Quote asset.
    #[serde(borrow, default)]
    pub quote: Option<Cow<'a, str>>,
    /// `online`, `cancel_only`, `delisted`, `limit_only`, `maintenance`, `post_only`, ...
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
    /// Decimals in a price.
    pub price_precision: u8,
    /// Decimals in a quantity.
    pub qty_precision: u8,
    /// Smallest price step.
    #[serde(borrow, default)]
    pub price_increment: Option<WireDecimal<'a>>,
    /// Smallest quantity step.
    #[serde(borrow, default)]
    pub qty_increment: Option<WireDecimal<'a>>,
    /// Smallest order quantity.
    #[serde(borrow, default)]
    pub qty_min: Option<WireDecimal<'a>>,
}

impl Pair<'_> {
    /// The precisions the book checksum is formatted with.
    pub fn precision(&self) -> Precision {
        Precision {
            price: self.price_precision,
            qty: self.qty_precision,
        }
    }

    /// Whether the pair is trading (`status` is `online`, or absent).
    pub fn is_online(&self) -> bool {
        self.status.as_deref().is_none_or(|s| s == "online")
    }

    /// The smallest price step, if given.
    pub fn price_increment(&self) -> Option<Decimal> {
        self.price_increment.map(|w| w.value)
    }
}

#[cfg(test)]
mod tests {
    use crate::kraken::{Frame, decode};

    #[test]
    fn decodes_the_documented_snapshot_with_exponent_numbers() {
        let text = r#"{"channel":"instrument","type":"snapshot","data":{"assets":[],"pairs":[{"symbol":"BTC/USD",
          "base":"BTC","quote":"USD","status":"online","qty_precision":8,"qty_increment":1e-08,
          "price_precision":1,"cost_precision":5,"marginable":true,"has_index":true,"cost_min":0.5,
          "tick_size":0.1,"price_increment":0.1,"qty_min":5e-05}]}}"#;
        let Ok(Frame::Instrument(msg)) = decode(text) else {
            panic!("{:?}", decode(text))
        };
        assert!(msg.snapshot);
        let pair = &msg.pairs[0];
        assert_eq!(pair.symbol, "BTC/USD");
        assert_eq!((pair.price_precision, pair.qty_precision), (1, 8));
        assert_eq!(pair.qty_min.unwrap().text, "5e-05");
        assert_eq!(pair.qty_min.unwrap().value.to_string(), "0.00005");
        assert_eq!(pair.qty_increment.unwrap().value.to_string(), "0.00000001");
        assert!(pair.is_online());
    }
}
