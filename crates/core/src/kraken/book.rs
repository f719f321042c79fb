//! The `book` channel: level-2 snapshots and updates.
//!
//! Doc page: <https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/book>. A snapshot at
//! depth 10, as received from `wss://ws.kraken.com/v2` (`tests/fixtures/kraken-v2/
//! kraken_btcusd_d10_20260816.ndjson`, line breaks added), with its real checksum:
//!
//! ```json
//! {"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",
//!   "bids":[{"price":62802.5,"qty":0.02987767},{"price":62800.7,"qty":0.05598472},
//!     {"price":62800.6,"qty":0.00005100},{"price":62797.5,"qty":0.00005100},
//!     {"price":62797.0,"qty":0.00012700},{"price":62796.2,"qty":0.00019900},
//!     {"price":62794.3,"qty":0.00005100},{"price":62794.0,"qty":0.00532806},
//!     {"price":62793.9,"qty":0.79625467},{"price":62793.1,"qty":0.00318620}],
//!   "asks":[{"price":62802.6,"qty":1.09074394},{"price":62803.7,"qty":0.05598472},
//!     {"price":62803.8,"qty":0.95536416},{"price":62803.9,"qty":1.16228981},
//!     {"price":62806.5,"qty":0.18489680},{"price":62806.6,"qty":3.79004471},
//!     {"price":62806.8,"qty":0.00005100},{"price":62807.1,"qty":0.36000000},
//!     {"price":62807.2,"qty":0.65540712},{"price":62807.4,"qty":0.50920200}],
//!   "checksum":975661613,"timestamp":"2026-08-16T23:37:04.316445Z"}]}
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

    /// The module doc's example, as it stands in the doc.
    fn documented_snapshot() -> String {
        let doc: Vec<&str> = include_str!("book.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!"))
            .collect();
        let start = doc.iter().position(|l| l.trim() == "```json").unwrap() + 1;
        let end = start + doc[start..].iter().position(|l| l.trim() == "```").unwrap();
        doc[start..end].join("\n")
    }

    /// The module doc's example is a real frame: it stands in the capture (but for the line
    /// breaks), its checksum is the one Kraken's recipe gives for its levels, and it decodes to
    /// exactly these values.
    #[test]
    fn decodes_the_documented_snapshot_a_real_frame_with_its_real_checksum() {
        let text = documented_snapshot();
        let capture = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/kraken-v2/kraken_btcusd_d10_20260816.ndjson"
        ))
        .unwrap();
        let joined: String = text
            .lines()
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .concat();
        assert!(capture.contains(&joined), "not in the capture: {joined}");

        let Ok(Frame::Book(book)) = decode(&text) else {
            panic!("not a book frame: {:?}", decode(&text))
        };
        assert_eq!(book.kind, super::BookKind::Snapshot);
        let data = &book.data[0];
        assert_eq!(data.symbol, "BTC/USD");
        assert_eq!(data.checksum, 975_661_613);
        assert_eq!(
            data.timestamp.unwrap().to_string(),
            "2026-08-16T23:37:04.316445Z"
        );
        assert_eq!((data.bids.len(), data.asks.len()), (10, 10));
        assert_eq!(data.asks[1].qty.text, "0.05598472");
        assert_eq!(data.asks[6].qty.value.to_string(), "0.00005100");
        assert_eq!(data.asks[1].price.value.to_string(), "62803.7");
        assert_eq!(data.bids[0].price.value.mantissa(), 628025);

        // Kraken's checksum guide: asks then bids, each price then qty, the point removed and
        // leading zeros stripped, CRC32 of the whole.
        let digits = |t: &str| t.replace('.', "").trim_start_matches('0').to_owned();
        let mut input = String::new();
        for level in data.asks.iter().chain(&data.bids) {
            input += &digits(level.price.text);
            input += &digits(level.qty.text);
        }
        assert_eq!(crc32fast::hash(input.as_bytes()), data.checksum);
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
