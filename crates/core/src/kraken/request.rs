//! Requests a client sends: `subscribe`/`unsubscribe` (`book`, `instrument`) and `ping`.
//!
//! Doc pages: <https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/book>,
//! <https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/instrument> and
//! <https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/ping>. A book subscription:
//!
//! ```json
//! {"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD","ETH/USD"],"depth":100,"snapshot":true},"req_id":1}
//! ```
//!
//! The same types decode requests on the server side (the simulator and the replay server).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A book depth Kraken accepts: 10, 25, 100, 500 or 1000 levels a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Depth(u16);

impl Depth {
    /// Every depth Kraken offers.
    pub const ALL: [Depth; 5] = [Depth(10), Depth(25), Depth(100), Depth(500), Depth(1000)];

    /// The depth of `levels`, if Kraken offers it.
    pub fn new(levels: u64) -> Option<Depth> {
        Self::ALL.into_iter().find(|d| u64::from(d.0) == levels)
    }

    /// Levels a side.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// Levels a side, as a `usize`.
    pub const fn levels(self) -> usize {
        self.0 as usize
    }
}

impl Default for Depth {
    /// Kraken's default, 10.
    fn default() -> Self {
        Depth(10)
    }
}

impl fmt::Display for Depth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A depth that Kraken does not offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("depth {0:?} is not offered by Kraken: use 10, 25, 100, 500 or 1000")]
pub struct DepthError(pub String);

impl FromStr for Depth {
    type Err = DepthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u64>()
            .ok()
            .and_then(Depth::new)
            .ok_or_else(|| DepthError(s.to_owned()))
    }
}

/// A request frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `subscribe`, `unsubscribe` or `ping`.
    pub method: String,
    /// Channel parameters (absent for `ping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Params>,
    /// Client's id, echoed in the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<u64>,
}

/// The `params` of a subscribe or unsubscribe request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// `book` or `instrument`.
    pub channel: String,
    /// Symbols, for per-symbol channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Vec<String>>,
    /// Levels a side (`book`); kept as sent, so a server can reject an unsupported value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u64>,
    /// Whether to send a snapshot first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<bool>,
}

impl Request {
    /// Subscribe to `book` for `symbols` at `depth`.
    pub fn subscribe_book(
        symbols: &[String],
        depth: Depth,
        snapshot: bool,
        req_id: Option<u64>,
    ) -> Self {
        Self::book("subscribe", symbols, Some(depth), Some(snapshot), req_id)
    }

    /// Unsubscribe `symbols` from `book` at `depth`.
    pub fn unsubscribe_book(symbols: &[String], depth: Depth, req_id: Option<u64>) -> Self {
        Self::book("unsubscribe", symbols, Some(depth), None, req_id)
    }

    fn book(
        method: &str,
        symbols: &[String],
        depth: Option<Depth>,
        snapshot: Option<bool>,
        req_id: Option<u64>,
    ) -> Self {
        Request {
            method: method.to_owned(),
            params: Some(Params {
                channel: "book".to_owned(),
                symbol: Some(symbols.to_vec()),
                depth: depth.map(|d| u64::from(d.get())),
                snapshot,
            }),
            req_id,
        }
    }

    /// Subscribe to the `instrument` channel (reference data, with a snapshot).
    pub fn subscribe_instrument(req_id: Option<u64>) -> Self {
        Request {
            method: "subscribe".to_owned(),
            params: Some(Params {
                channel: "instrument".to_owned(),
                symbol: None,
                depth: None,
                snapshot: Some(true),
            }),
            req_id,
        }
    }

    /// An application-level `ping`.
    pub fn ping(req_id: Option<u64>) -> Self {
        Request {
            method: "ping".to_owned(),
            params: None,
            req_id,
        }
    }

    /// The request as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, integers and booleans cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes a request (server side).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests_as_documented() {
        let symbols = vec!["BTC/USD".to_owned(), "ETH/USD".to_owned()];
        let cases = [
            (
                Request::subscribe_book(&symbols, Depth::new(100).unwrap(), true, Some(1)),
                r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD","ETH/USD"],"depth":100,"snapshot":true},"req_id":1}"#,
            ),
            (
                Request::unsubscribe_book(&symbols[..1], Depth::default(), None),
                r#"{"method":"unsubscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":10}}"#,
            ),
            (
                Request::subscribe_instrument(Some(2)),
                r#"{"method":"subscribe","params":{"channel":"instrument","snapshot":true},"req_id":2}"#,
            ),
            (
                Request::ping(Some(101)),
                r#"{"method":"ping","req_id":101}"#,
            ),
        ];
        for (request, json) in cases {
            assert_eq!(request.to_json(), json);
            assert_eq!(
                Request::parse(json).unwrap(),
                request,
                "round trip of {json}"
            );
        }
    }

    #[test]
    fn depth_accepts_only_krakens_values() {
        for ok in ["10", "25", "100", "500", "1000"] {
            assert_eq!(ok.parse::<Depth>().unwrap().to_string(), ok);
        }
        for bad in ["0", "5", "50", "2000", "ten", "-10"] {
            let err = bad.parse::<Depth>().unwrap_err().to_string();
            assert!(err.contains("use 10, 25, 100, 500 or 1000"), "{err}");
        }
    }
}
