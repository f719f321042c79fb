//! The `book` channel: level-2 snapshots and updates.
//!
//! Doc page: <https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/book>. A snapshot, as received from
//! `wss://ws.kraken.com/v2` (trimmed to two levels a side):
//!
//! ```json
//! {"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",
//!   "bids":[{"price":62802.5,"qty":0.02987767},{"price":62800.7,"qty":0.05598472}],
//!   "asks":[{"price":62802.6,"qty":1.09074394},{"price":62803.0,"qty":0.00005100}],
//!   "checksum":1234567890,"timestamp":"2026-08-16T23:37:04.397814Z"}]}
//! ```
//!
//! Prices and quantities are JSON numbers printed at the pair's precision, trailing zeros kept.
//! They are read from their text into [`Decimal`]s, never through `f64`, and the text is kept.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::num::Decimal;
use crate::time::Timestamp;

/// Whether a book message replaces the book or changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BookKind {
    /// `"type":"snapshot"`: the whole book at the subscribed depth.
    Snapshot,
    /// `"type":"update"`: changed levels only.
    Update,
}

impl BookKind {
    /// `"snapshot"` or `"update"`, as on the wire and in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            BookKind::Snapshot => "snapshot",
            BookKind::Update => "update",
        }
    }
}

/// A decoded `book` frame.
#[derive(Clone, Debug, PartialEq)]
pub struct BookMessage<'a> {
    /// Snapshot or update.
    pub kind: BookKind,
    /// One entry per symbol (Kraken sends one).
    pub data: Vec<BookData<'a>>,
}

/// One symbol's part of a `book` frame.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct BookData<'a> {
    /// The pair, e.g. `BTC/USD`.
    #[serde(borrow)]
    pub symbol: Cow<'a, str>,
    /// Bid levels in wire order.
    #[serde(borrow, default)]
    pub bids: Vec<Level<'a>>,
    /// Ask levels in wire order.
    #[serde(borrow, default)]
    pub asks: Vec<Level<'a>>,
    /// Kraken's CRC32 of the book after this message.
    pub checksum: u32,
    /// Kraken's time for this message, when given.
    #[serde(default)]
    pub timestamp: Option<Timestamp>,
}

impl BookData<'_> {
    /// The bids as (price, qty) pairs, in wire order.
    pub fn bid_pairs(&self) -> impl Iterator<Item = (Decimal, Decimal)> + '_ {
        self.bids.iter().map(|l| (l.price.value, l.qty.value))
    }

    /// The asks as (price, qty) pairs, in wire order.
    pub fn ask_pairs(&self) -> impl Iterator<Item = (Decimal, Decimal)> + '_ {
        self.asks.iter().map(|l| (l.price.value, l.qty.value))
    }

    /// Number of levels on both sides.
    pub fn level_count(&self) -> usize {
        self.bids.len() + self.asks.len()
    }
}

/// One level as sent: `{"price":62802.5,"qty":0.02987767}`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct Level<'a> {
    /// The price.
    #[serde(borrow)]
    pub price: WireDecimal<'a>,
    /// The quantity at that price; zero deletes the level.
    #[serde(borrow)]
    pub qty: WireDecimal<'a>,
}

/// A JSON number read exactly: its value and its text as received.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WireDecimal<'a> {
    /// The exact value.
    pub value: Decimal,
    /// The number's text on the wire (`0.00005100`, `5e-05`).
    pub text: &'a str,
}

impl<'de: 'a, 'a> Deserialize<'de> for WireDecimal<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: &'de RawValue = Deserialize::deserialize(d)?;
        let text = raw.get();
        // Kraken sends numbers; a quoted decimal is accepted too, as other v2 channels use them.
        let unquoted = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        let value = Decimal::parse(unquoted).map_err(serde::de::Error::custom)?;
        Ok(WireDecimal { value, text })
    }
}

#[cfg(test)]
mod tests {
    use crate::kraken::{Frame, decode};

    /// The module doc's example decodes to exactly these values.
    #[test]
    fn decodes_the_documented_snapshot() {
        let text = r#"{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",
          "bids":[{"price":62802.5,"qty":0.02987767},{"price":62800.7,"qty":0.05598472}],
          "asks":[{"price":62802.6,"qty":1.09074394},{"price":62803.0,"qty":0.00005100}],
          "checksum":1234567890,"timestamp":"2026-08-16T23:37:04.397814Z"}]}"#;
        let Ok(Frame::Book(book)) = decode(text) else {
            panic!("not a book frame: {:?}", decode(text))
        };
        assert_eq!(book.kind, super::BookKind::Snapshot);
        let data = &book.data[0];
        assert_eq!(data.symbol, "BTC/USD");
        assert_eq!(data.checksum, 1_234_567_890);
        assert_eq!(
            data.timestamp.unwrap().to_string(),
            "2026-08-16T23:37:04.397814Z"
        );
        assert_eq!(data.bids.len(), 2);
        assert_eq!(data.asks[1].qty.text, "0.00005100");
        assert_eq!(data.asks[1].qty.value.to_string(), "0.00005100");
        assert_eq!(data.asks[1].price.value.to_string(), "62803.0");
        assert_eq!(data.bids[0].price.value.mantissa(), 628025);
    }

    #[test]
    fn decodes_an_update_with_a_deletion_and_no_timestamp() {
        let text = r#"{"channel":"book","type":"update","data":[{"symbol":"MINA/GBP","bids":[{"price":0.0292,"qty":0}],"asks":[],"checksum":2678396431}]}"#;
        let Ok(Frame::Book(book)) = decode(text) else {
            panic!()
        };
        assert_eq!(book.kind, super::BookKind::Update);
        assert!(book.data[0].bids[0].qty.value.is_zero());
        assert_eq!(book.data[0].timestamp, None);
        assert_eq!(book.data[0].checksum, 2_678_396_431);
    }
}
