//! Method responses: subscribe/unsubscribe acknowledgements, errors and `pong`.
//!
//! Doc pages: <https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/book> (subscribe
//! responses) and <https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/ping>. Kraken
//! answers a subscription for several symbols with one response per symbol:
//!
//! ```json
//! {"method":"subscribe","result":{"channel":"book","depth":100,"snapshot":true,"symbol":"BTC/USD"},
//!   "success":true,"time_in":"2026-08-16T23:37:03.806372Z","time_out":"2026-08-16T23:37:03.806411Z"}
//! ```
//!
//! A rejection carries an `error` and names the symbol at the top level:
//!
//! ```json
//! {"error":"Currency pair not supported XBT/USD","method":"subscribe","success":false,
//!   "symbol":"XBT/USD","time_in":"2026-08-16T23:37:03.806372Z","time_out":"2026-08-16T23:37:03.806411Z"}
//! ```
//!
//! and `ping` is answered with
//! `{"method":"pong","req_id":101,"time_in":"2026-08-16T23:37:03.799685Z","time_out":"2026-08-16T23:37:03.799703Z"}`.

use std::borrow::Cow;

use serde::Deserialize;

use crate::time::Timestamp;

/// A response to a request: an ack (success or error) or a pong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// `subscribe`, `unsubscribe`, `pong`, ...
    pub method: Cow<'a, str>,
    /// Whether the request succeeded (absent on `pong`).
    pub success: Option<bool>,
    /// What was subscribed, on success.
    pub result: Option<AckResult<'a>>,
    /// Kraken's error text, on failure (`Currency pair not supported X/Y`).
    pub error: Option<Cow<'a, str>>,
    /// The symbol a failure is about.
    pub symbol: Option<Cow<'a, str>>,
    /// The request's `req_id`, echoed.
    pub req_id: Option<u64>,
    /// When Kraken received the request.
    pub time_in: Option<Timestamp>,
    /// When Kraken sent the response.
    pub time_out: Option<Timestamp>,
}

/// The `result` object of a successful subscribe or unsubscribe.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AckResult<'a> {
    /// The channel (`book`, `instrument`).
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    /// The symbol, for per-symbol channels.
    #[serde(borrow, default)]
    pub symbol: Option<Cow<'a, str>>,
    /// The book depth granted.
    #[serde(default)]
    pub depth: Option<u16>,
    /// Whether a snapshot follows.
    #[serde(default)]
    pub snapshot: Option<bool>,
}

impl Response<'_> {
    /// The symbol this response is about: the result's on success, the top-level one on failure.
    pub fn symbol(&self) -> Option<&str> {
        self.result
            .as_ref()
            .and_then(|r| r.symbol.as_deref())
            .or(self.symbol.as_deref())
    }

    /// The channel acknowledged, when the response says.
    pub fn channel(&self) -> Option<&str> {
        self.result.as_ref().map(|r| r.channel.as_ref())
    }

    /// Whether this is a failed request (`success: false`, or an `error` present).
    pub fn is_error(&self) -> bool {
        self.success == Some(false) || self.error.is_some()
    }
}

#[cfg(test)]
mod tests {
    use crate::kraken::{Frame, decode};

    #[test]
    fn decodes_the_documented_subscribe_ack() {
        let text = r#"{"method":"subscribe","result":{"channel":"book","depth":100,"snapshot":true,"symbol":"BTC/USD"},"success":true,"time_in":"2026-08-16T23:37:03.806372Z","time_out":"2026-08-16T23:37:03.806411Z"}"#;
        let Ok(Frame::Ack(ack)) = decode(text) else {
            panic!("{:?}", decode(text))
        };
        assert_eq!(ack.method, "subscribe");
        assert!(!ack.is_error());
        assert_eq!(ack.symbol(), Some("BTC/USD"));
        assert_eq!(ack.channel(), Some("book"));
        assert_eq!(ack.result.as_ref().unwrap().depth, Some(100));
        assert_eq!(
            ack.time_in.unwrap().to_string(),
            "2026-08-16T23:37:03.806372Z"
        );
    }

    #[test]
    fn decodes_the_documented_rejections() {
        let cases = [
            (
                r#"{"error":"Currency pair not supported XBT/USD","method":"subscribe","success":false,"symbol":"XBT/USD","time_in":"2026-08-16T23:37:03.806372Z","time_out":"2026-08-16T23:37:03.806411Z"}"#,
                "Currency pair not supported XBT/USD",
                Some("XBT/USD"),
            ),
            (
                r#"{"error":"Subscription depth not supported","method":"subscribe","req_id":7,"success":false,"symbol":"BTC/USD","time_in":"2026-08-16T23:37:03.806372Z","time_out":"2026-08-16T23:37:03.806411Z"}"#,
                "Subscription depth not supported",
                Some("BTC/USD"),
            ),
            (
                r#"{"error":"Malformed request","method":"subscribe","success":false,"time_in":"2026-08-16T23:37:03.806372Z","time_out":"2026-08-16T23:37:03.806411Z"}"#,
                "Malformed request",
                None,
            ),
        ];
        for (text, error, symbol) in cases {
            let Ok(Frame::Ack(ack)) = decode(text) else {
                panic!("{text}")
            };
            assert!(ack.is_error(), "{text}");
            assert_eq!(ack.error.as_deref(), Some(error));
            assert_eq!(ack.symbol(), symbol);
        }
    }

    #[test]
    fn decodes_the_documented_pong() {
        let text = r#"{"method":"pong","req_id":101,"time_in":"2026-08-16T23:37:03.799685Z","time_out":"2026-08-16T23:37:03.799703Z"}"#;
        let Ok(Frame::Pong(pong)) = decode(text) else {
            panic!("{:?}", decode(text))
        };
        assert_eq!(pong.req_id, Some(101));
        assert_eq!(pong.success, None);
    }
}
