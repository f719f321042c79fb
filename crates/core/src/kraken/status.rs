//! The `status` channel and `heartbeat` frames.
//!
//! Doc page: <https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/status>. Sent once on
//! connect and when the exchange's state changes, as received:
//!
//! ```json
//! {"channel":"status","type":"update","data":[{"version":"2.0.10","system":"online",
//!   "api_version":"v2","connection_id":17001309753738053924}]}
//! ```
//!
//! `connection_id` exceeds 2^53, so it is a `u64` (a float would round it). A heartbeat is
//! `{"channel":"heartbeat"}`, about once a second when nothing else was sent.

use std::borrow::Cow;

use serde::Deserialize;

/// One entry of a `status` frame.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Status<'a> {
    /// `online`, `maintenance`, `cancel_only` or `post_only`.
    #[serde(borrow)]
    pub system: Cow<'a, str>,
    /// The API's software version.
    #[serde(borrow, default)]
    pub version: Option<Cow<'a, str>>,
    /// `v2`.
    #[serde(borrow, default)]
    pub api_version: Option<Cow<'a, str>>,
    /// Kraken's id for this connection.
    #[serde(default)]
    pub connection_id: Option<u64>,
}

#[cfg(test)]
mod tests {
    use crate::kraken::{Frame, decode};

    #[test]
    fn decodes_the_documented_status_with_a_u64_connection_id() {
        let text = r#"{"channel":"status","type":"update","data":[{"version":"2.0.10","system":"online","api_version":"v2","connection_id":17001309753738053924}]}"#;
        let Ok(Frame::Status(status)) = decode(text) else {
            panic!("{:?}", decode(text))
        };
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].system, "online");
        assert_eq!(status[0].version.as_deref(), Some("2.0.10"));
        assert_eq!(status[0].connection_id, Some(17_001_309_753_738_053_924));
    }

    #[test]
    fn decodes_a_heartbeat() {
        assert_eq!(
            decode(r#"{"channel":"heartbeat"}"#).unwrap(),
            Frame::Heartbeat
        );
    }
}
