//! Kraken's public WebSocket v2 protocol: every frame a public connection receives, decoded
//! without I/O and without floating point.
//!
//! [`decode`] turns a frame's text into a [`Frame`] that borrows from it. What must always hold:
//! - every frame decodes to something: a frame this module does not model (another channel, a new
//!   method) is [`Frame::Unknown`] with its text, so nothing is dropped for being unexpected;
//! - text that is not JSON, or a known frame with the wrong shape (a book level without a `qty`),
//!   is a [`DecodeError`] that carries the text; it never panics (a property test feeds it bytes);
//! - prices and quantities keep their exact value and their wire text ([`book::WireDecimal`]);
//! - `connection_id` is a `u64` (it exceeds 2^53).
//!
//! Each message type lives in its own file with its doc page and a raw example that its tests
//! decode: [`status`], [`instrument`], [`book`], [`response`]; [`request`] encodes what we send;
//! [`capture`] reads the capture files that hold real frames.

pub mod book;
pub mod capture;
pub mod encode;
mod fast;
pub mod instrument;
pub mod request;
pub mod response;
pub mod status;

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

pub use book::{BookData, BookKind, BookMessage, Level, WireDecimal};
pub use instrument::{InstrumentMessage, Pair};
pub use request::{Depth, DepthError, Params, Request};
pub use response::{AckResult, Response};
pub use status::Status;

use crate::time::Timestamp;

/// A decoded frame, borrowing from its text.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame<'a> {
    /// `channel: status`.
    Status(Vec<Status<'a>>),
    /// `channel: heartbeat`.
    Heartbeat,
    /// `method: pong`.
    Pong(Response<'a>),
    /// A response to subscribe/unsubscribe (or any other method), success or error.
    Ack(Response<'a>),
    /// `channel: instrument`.
    Instrument(InstrumentMessage<'a>),
    /// `channel: book`.
    Book(BookMessage<'a>),
    /// Valid JSON this module does not model, kept as received.
    Unknown(&'a str),
}

impl Frame<'_> {
    /// A short name for logs and the database's `channel` column.
    pub fn channel(&self) -> &str {
        match self {
            Frame::Status(_) => "status",
            Frame::Heartbeat => "heartbeat",
            Frame::Pong(_) => "pong",
            Frame::Ack(r) => r.channel().unwrap_or("method"),
            Frame::Instrument(_) => "instrument",
            Frame::Book(_) => "book",
            Frame::Unknown(_) => "unknown",
        }
    }
}

/// Why a frame could not be decoded. Both kinds carry the frame's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The text is not JSON.
    #[error("frame is not valid JSON ({reason}): {}", excerpt(text))]
    Json {
        /// serde_json's description, with line and column.
        reason: String,
        /// The frame as received.
        text: String,
    },
    /// The JSON is a known frame with a wrong shape (missing field, bad number, ...).
    #[error("malformed {channel} frame ({reason}): {}", excerpt(text))]
    Shape {
        /// The channel or method the frame claims.
        channel: String,
        /// What is wrong.
        reason: String,
        /// The frame as received.
        text: String,
    },
}

impl DecodeError {
    /// The frame's text as received.
    pub fn text(&self) -> &str {
        match self {
            DecodeError::Json { text, .. } | DecodeError::Shape { text, .. } => text,
        }
    }
}

fn excerpt(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Decodes one frame's text.
///
/// Every frame is offered to the fast path first, not only those that begin as Kraken's do:
/// another frame is declined at its first key or value (a heartbeat at `"heartbeat"`, an
/// acknowledgement at `"method"`), and a book frame spaced otherwise (Python's `", "` and
/// `": "`) or with its members in another order is read in one pass too; before, the spaced
/// one took serde's path at three times the cost.
pub fn decode(text: &str) -> Result<Frame<'_>, DecodeError> {
    if let Some(book) = fast::decode_book(text) {
        return Ok(Frame::Book(book));
    }
    decode_general(text)
}

/// Decodes one frame's text with serde alone (the path every frame the fast path declines takes).
fn decode_general(text: &str) -> Result<Frame<'_>, DecodeError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = RawFrame::deserialize(&mut de).and_then(|f| de.end().map(|()| f));
    match parsed {
        Ok(raw) => raw.into_frame(text),
        Err(e) if e.is_data() => Err(DecodeError::Shape {
            channel: sniff_channel(text),
            reason: e.to_string(),
            text: text.to_owned(),
        }),
        Err(e) => Err(DecodeError::Json {
            reason: e.to_string(),
            text: text.to_owned(),
        }),
    }
}

/// The channel or method a malformed frame claims, for its error message.
fn sniff_channel(text: &str) -> String {
    #[derive(Deserialize)]
    struct Claim<'a> {
        #[serde(borrow, default)]
        channel: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        method: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Claim<'_>>(text)
        .ok()
        .and_then(|c| c.channel.or(c.method))
        .map_or_else(|| "unknown".to_owned(), Cow::into_owned)
}

/// Everything a top-level frame object may hold, read in one pass.
#[derive(Default)]
struct RawFrame<'a> {
    object: bool,
    channel: Option<Cow<'a, str>>,
    kind: Option<Cow<'a, str>>,
    /// `data`, decoded as it was read when `channel` came first (Kraken's order).
    data: Option<Data<'a>>,
    method: Option<Cow<'a, str>>,
    success: Option<bool>,
    result: Option<&'a RawValue>,
    error: Option<Cow<'a, str>>,
    symbol: Option<Cow<'a, str>>,
    req_id: Option<u64>,
    time_in: Option<Timestamp>,
    time_out: Option<Timestamp>,
}

enum Data<'a> {
    Book(Vec<BookData<'a>>),
    Status(Vec<Status<'a>>),
    Instrument(instrument::InstrumentData<'a>),
    /// Read before `channel` was known (or for a channel not modelled): decoded afterwards.
    Raw(&'a RawValue),
}

impl<'a> RawFrame<'a> {
    fn into_frame(self, text: &'a str) -> Result<Frame<'a>, DecodeError> {
        if !self.object {
            return Ok(Frame::Unknown(text));
        }
        let shape = |channel: &str, reason: String| DecodeError::Shape {
            channel: channel.to_owned(),
            reason,
            text: text.to_owned(),
        };
        if let Some(channel) = self.channel.as_deref() {
            let kind = self.kind.as_deref();
            let data = match self.data {
                Some(Data::Raw(raw)) => Some(
                    decode_data(channel, raw.get()).map_err(|e| shape(channel, e.to_string()))?,
                ),
                other => other,
            };
            return Ok(match (channel, data) {
                ("heartbeat", _) => Frame::Heartbeat,
                ("status", Some(Data::Status(s))) => Frame::Status(s),
                ("book", Some(Data::Book(data))) => {
                    let kind = match kind {
                        Some("snapshot") => BookKind::Snapshot,
                        Some("update") => BookKind::Update,
                        other => {
                            return Err(shape("book", format!("unknown book type {other:?}")));
                        }
                    };
                    Frame::Book(BookMessage { kind, data })
                }
                ("book" | "status" | "instrument", None) => {
                    return Err(shape(channel, "missing field `data`".to_owned()));
                }
                ("instrument", Some(Data::Instrument(d))) => Frame::Instrument(InstrumentMessage {
                    snapshot: kind == Some("snapshot"),
                    pairs: d.pairs,
                }),
                _ => Frame::Unknown(text),
            });
        }
        if let Some(method) = self.method {
            let result = match self.result {
                Some(raw) => serde_json::from_str::<AckResult<'a>>(raw.get()).ok(),
                None => None,
            };
            let response = Response {
                method,
                success: self.success,
                result,
                error: self.error,
                symbol: self.symbol,
                req_id: self.req_id,
                time_in: self.time_in,
                time_out: self.time_out,
            };
            return Ok(if response.method == "pong" {
                Frame::Pong(response)
            } else {
                Frame::Ack(response)
            });
        }
        Ok(Frame::Unknown(text))
    }
}

fn decode_data<'a>(channel: &str, text: &'a str) -> Result<Data<'a>, serde_json::Error> {
    Ok(match channel {
        "book" => Data::Book(serde_json::from_str(text)?),
        "status" => Data::Status(serde_json::from_str(text)?),
        "instrument" => Data::Instrument(serde_json::from_str(text)?),
        _ => Data::Raw(serde_json::from_str(text)?),
    })
}

impl<'de> Deserialize<'de> for RawFrame<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FrameVisitor)
    }
}

struct FrameVisitor;

impl<'de> Visitor<'de> for FrameVisitor {
    type Value = RawFrame<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFrame<'de>, A::Error> {
        let mut f = RawFrame {
            object: true,
            ..RawFrame::default()
        };
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "channel" => f.channel = Some(map.next_value()?),
                "type" => f.kind = Some(map.next_value()?),
                "data" => {
                    f.data = Some(match f.channel.as_deref() {
                        Some("book") => Data::Book(map.next_value()?),
                        Some("status") => Data::Status(map.next_value()?),
                        Some("instrument") => Data::Instrument(map.next_value()?),
                        _ => Data::Raw(map.next_value()?),
                    })
                }
                "method" => f.method = Some(map.next_value()?),
                "success" => f.success = map.next_value()?,
                "result" => f.result = Some(map.next_value()?),
                "error" => f.error = map.next_value()?,
                "symbol" => f.symbol = map.next_value()?,
                "req_id" => f.req_id = map.next_value()?,
                "time_in" => f.time_in = map.next_value()?,
                "time_out" => f.time_out = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(f)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawFrame<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(RawFrame::default())
    }

    fn visit_bool<E>(self, _: bool) -> Result<RawFrame<'de>, E> {
        Ok(RawFrame::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<RawFrame<'de>, E> {
        Ok(RawFrame::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<RawFrame<'de>, E> {
        Ok(RawFrame::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<RawFrame<'de>, E> {
        Ok(RawFrame::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<RawFrame<'de>, E> {
        Ok(RawFrame::default())
    }
    fn visit_unit<E>(self) -> Result<RawFrame<'de>, E> {
        Ok(RawFrame::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unexpected_frames_are_kept_as_unknown() {
        for text in [
            r#"{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":1.0}]}"#,
            r#"{"channel":"trade","data":[]}"#,
            r#"[0,{"a":1}]"#,
            r#""hello""#,
            "42",
            "null",
            r#"{"something":"else"}"#,
        ] {
            assert_eq!(decode(text), Ok(Frame::Unknown(text)), "{text}");
        }
    }

    #[test]
    fn malformed_frames_are_typed_errors_with_the_text() {
        // (text, expected kind)
        let cases = [
            ("not json", "json"),
            (
                r#"{"channel":"book","type":"update","data":[{"symbol":"X"#,
                "json",
            ),
            (r#"{"channel":"book"} trailing"#, "json"),
            (
                r#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":1}],"asks":[],"checksum":1}]}"#,
                "shape",
            ),
            (
                r#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":-1,"qty":1}],"asks":[],"checksum":1}]}"#,
                "shape",
            ),
            (
                r#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],"checksum":99999999999}]}"#,
                "shape",
            ),
            (r#"{"channel":"book","type":"sideways","data":[]}"#, "shape"),
            (r#"{"channel":"book","type":"update"}"#, "shape"),
            (
                r#"{"data":[{"symbol":"X","bids":"nope"}],"channel":"book","type":"update"}"#,
                "shape",
            ),
        ];
        for (text, kind) in cases {
            let err = decode(text).expect_err(text);
            assert_eq!(err.text(), text);
            match (kind, &err) {
                ("json", DecodeError::Json { .. }) => {}
                ("shape", DecodeError::Shape { channel, .. }) => {
                    assert_eq!(channel, "book", "{text}")
                }
                _ => panic!("{text}: expected {kind}, got {err:?}"),
            }
        }
    }

    #[test]
    fn data_before_channel_still_decodes() {
        let text = r#"{"data":[{"symbol":"X/Y","bids":[{"price":1.50,"qty":2}],"asks":[],"checksum":7}],"type":"update","channel":"book"}"#;
        let Ok(Frame::Book(book)) = decode(text) else {
            panic!("{:?}", decode(text))
        };
        assert_eq!(book.data[0].bids[0].price.text, "1.50");
    }

    /// `decode` offers every frame to the fast path, not only those that begin as Kraken's book
    /// frames do: frames that went straight to serde before (the data first, `"channel"` late,
    /// twice or another, whitespace or a byte order mark first, not an object, another method)
    /// decode as serde alone decodes them, and only the plain book frames are taken fast.
    #[test]
    fn every_frame_offered_to_the_fast_path_decodes_as_serde_alone_decodes_it() {
        let data = r#"[{"symbol":"X/Y","bids":[{"price":1.50,"qty":2}],"asks":[],"checksum":7}]"#;
        let taken = [
            r#"{"data":DATA,"type":"update","channel":"book"}"#,
            "\t{ \"type\" : \"update\" ,\"data\":DATA,\"channel\":\"book\"}\r\n",
        ];
        let declined = [
            r#"{"data":DATA,"type":"update","channel":"ticker"}"#,
            r#"{"data":DATA,"type":"update","channel":"ticker","channel":"book"}"#,
            r#"{"channel":"book","type":"update","data":DATA,"channel":"ticker"}"#,
            r#"{"type":"update","data":DATA}"#,
            r#"{"type":"update","channel":"book","data":DATA,"method":"x"}"#,
            "\u{feff}{\"channel\":\"book\",\"type\":\"update\",\"data\":DATA}",
            r#"[{"channel":"book","type":"update","data":DATA}]"#,
            r#"{"method":"subscribe","result":{"channel":"book","symbol":"X/Y"}}"#,
            r#"{"channel":"heartbeat"}"#,
        ];
        for (frames, fast) in [(&taken[..], true), (&declined[..], false)] {
            for text in frames {
                let text = text.replace("DATA", data);
                assert_eq!(fast::decode_book(&text).is_some(), fast, "{text}");
                assert_eq!(decode(&text), decode_general(&text), "{text}");
            }
        }
    }

    #[test]
    fn escaped_strings_decode() {
        let text = r#"{"channel":"book","type":"update","data":[{"symbol":"BTC\/USD","bids":[],"asks":[],"checksum":7}]}"#;
        let Ok(Frame::Book(book)) = decode(text) else {
            panic!()
        };
        assert_eq!(book.data[0].symbol, "BTC/USD");
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = decode(&text);
        }

        #[test]
        fn decode_never_panics_on_mutated_book_frames(
            cut in 0usize..200, flip in 0usize..200, byte in any::<u8>()
        ) {
            let base = r#"{"channel":"book","type":"update","data":[{"symbol":"MINA/GBP","bids":[{"price":0.0292,"qty":32787.04556319}],"asks":[],"checksum":2678396431,"timestamp":"2026-08-17T16:01:57.687440Z"}]}"#;
            let mut bytes = base.as_bytes().to_vec();
            let i = flip % bytes.len();
            bytes[i] = byte;
            bytes.truncate(bytes.len() - cut.min(bytes.len()));
            let text = String::from_utf8_lossy(&bytes);
            match decode(&text) {
                Ok(_) => {}
                Err(e) => prop_assert_eq!(e.text(), text.as_ref()),
            }
        }
    }
}
