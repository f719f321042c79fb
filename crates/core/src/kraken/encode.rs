//! Server-side encoding: the frames a Kraken v2 server sends, byte for byte in Kraken's layout.
//!
//! The simulator and the replay server (`krakenbook-exchange`, `krakenbook-read`) send only what this module writes, so
//! a client tested against them sees Kraken's wire format. The layouts are Kraken's as received
//! (see the captures in `tests/fixtures/kraken-v2/`), and the tests re-encode captured frames and
//! compare them byte for byte:
//!
//! - `book`: `{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":62802.5,"qty":0.02987767}],"asks":[],"checksum":975661613,"timestamp":"2026-08-16T23:37:04.316445Z"}]}`:
//!   prices and quantities are JSON numbers at the pair's precision with trailing zeros kept (a
//!   deletion's quantity is `0.00000000`), the timestamp has microseconds;
//! - `status`: `{"channel":"status","type":"update","data":[{"version":"2.0.10","system":"online","api_version":"v2","connection_id":769405522530892351}]}`;
//! - method responses have their keys in alphabetical order, as Kraken writes them:
//!   `{"method":"subscribe","req_id":1,"result":{"channel":"book","depth":10,"snapshot":true,"symbol":"BTC/USD"},"success":true,"time_in":"...","time_out":"..."}`,
//!   `{"error":"Currency pair not supported XBT/USD","method":"subscribe","success":false,"symbol":"XBT/USD","time_in":"...","time_out":"..."}`,
//!   `{"method":"pong","req_id":101,"time_in":"...","time_out":"..."}`;
//! - `instrument`: one snapshot listing assets and pairs; increments are printed the way Kraken
//!   prints them (`1e-08`, `0.1`, `5e-05`).
//!
//! What must always hold: every frame written here decodes with [`crate::kraken::decode`] to the
//! values it was written from, and strings are escaped as JSON requires.

use std::fmt::Write;

use crate::kraken::BookKind;
use crate::num::{Decimal, Precision};
use crate::time::Timestamp;

/// The `version` Kraken's status frame reported when the captures were made.
pub const STATUS_VERSION: &str = "2.0.10";

/// A heartbeat frame.
pub const HEARTBEAT: &str = r#"{"channel":"heartbeat"}"#;

/// The `status` frame sent on connect.
pub fn status(connection_id: u64) -> String {
    format!(
        r#"{{"channel":"status","type":"update","data":[{{"version":"{STATUS_VERSION}","system":"online","api_version":"v2","connection_id":{connection_id}}}]}}"#
    )
}

/// One `book` frame for one symbol. Levels are written in the order given, each value at the
/// pair's precision (a value with more decimals than the precision is written as it is).
pub fn book(
    kind: BookKind,
    symbol: &str,
    bids: impl IntoIterator<Item = (Decimal, Decimal)>,
    asks: impl IntoIterator<Item = (Decimal, Decimal)>,
    precision: Precision,
    checksum: u32,
    timestamp: Timestamp,
) -> String {
    let mut out = String::with_capacity(160);
    book_into(
        &mut out, kind, symbol, bids, asks, precision, checksum, timestamp,
    );
    out
}

/// [`book`], appended to `out`.
#[allow(clippy::too_many_arguments)]
pub fn book_into(
    out: &mut String,
    kind: BookKind,
    symbol: &str,
    bids: impl IntoIterator<Item = (Decimal, Decimal)>,
    asks: impl IntoIterator<Item = (Decimal, Decimal)>,
    precision: Precision,
    checksum: u32,
    timestamp: Timestamp,
) {
    out.push_str(r#"{"channel":"book","type":""#);
    out.push_str(kind.as_str());
    out.push_str(r#"","data":[{"symbol":"#);
    push_json_str(out, symbol);
    out.push_str(r#","bids":["#);
    push_levels(out, bids, precision);
    out.push_str(r#"],"asks":["#);
    push_levels(out, asks, precision);
    let _ = write!(
        out,
        r#"],"checksum":{checksum},"timestamp":"{}"}}]}}"#,
        micros(timestamp)
    );
}

fn push_levels(
    out: &mut String,
    levels: impl IntoIterator<Item = (Decimal, Decimal)>,
    precision: Precision,
) {
    for (i, (price, qty)) in levels.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"price":"#);
        push_decimal(out, price, precision.price);
        out.push_str(r#","qty":"#);
        push_decimal(out, qty, precision.qty);
        out.push('}');
    }
}

/// `value` with exactly `scale` decimals when that is exact, else as it is written.
fn push_decimal(out: &mut String, value: Decimal, scale: u8) {
    let _ = match value.with_scale(scale) {
        Some(v) => write!(out, "{v}"),
        None => write!(out, "{value}"),
    };
}

/// `t` cut to whole microseconds, as Kraken prints its times.
fn micros(t: Timestamp) -> Timestamp {
    Timestamp::from_unix_nanos(t.unix_micros().saturating_mul(1000))
}

/// Appends `s` as a JSON string (quoted and escaped).
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The `result` of a successful subscribe or unsubscribe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckResult<'a> {
    /// `book` or `instrument`.
    pub channel: &'a str,
    /// The depth, for `book`.
    pub depth: Option<u16>,
    /// Whether a snapshot follows (subscribe only).
    pub snapshot: Option<bool>,
    /// The symbol, for `book`.
    pub symbol: Option<&'a str>,
}

/// A response to a method: success with a `result`, or failure with an `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack<'a> {
    /// `subscribe`, `unsubscribe`, or the method the client sent.
    pub method: Option<&'a str>,
    /// The client's `req_id`, echoed.
    pub req_id: Option<u64>,
    /// What was done, on success.
    pub result: Option<AckResult<'a>>,
    /// Kraken's error text, on failure.
    pub error: Option<&'a str>,
    /// The symbol a failure is about.
    pub symbol: Option<&'a str>,
    /// When the request arrived.
    pub time_in: Timestamp,
    /// When the response was written.
    pub time_out: Timestamp,
}

/// A method response.
pub fn ack(a: &Ack<'_>) -> String {
    let mut out = String::with_capacity(200);
    out.push('{');
    if let Some(error) = a.error {
        out.push_str(r#""error":"#);
        push_json_str(&mut out, error);
        out.push(',');
    }
    if let Some(method) = a.method {
        out.push_str(r#""method":"#);
        push_json_str(&mut out, method);
        out.push(',');
    }
    if let Some(id) = a.req_id {
        let _ = write!(out, r#""req_id":{id},"#);
    }
    if let Some(r) = &a.result {
        out.push_str(r#""result":{"channel":"#);
        push_json_str(&mut out, r.channel);
        if let Some(depth) = r.depth {
            let _ = write!(out, r#","depth":{depth}"#);
        }
        if let Some(snapshot) = r.snapshot {
            let _ = write!(out, r#","snapshot":{snapshot}"#);
        }
        if let Some(symbol) = r.symbol {
            out.push_str(r#","symbol":"#);
            push_json_str(&mut out, symbol);
        }
        out.push_str("},");
    }
    let success = a.error.is_none();
    let _ = write!(out, r#""success":{success},"#);
    if let Some(symbol) = a.symbol {
        out.push_str(r#""symbol":"#);
        push_json_str(&mut out, symbol);
        out.push(',');
    }
    let _ = write!(
        out,
        r#""time_in":"{}","time_out":"{}"}}"#,
        micros(a.time_in),
        micros(a.time_out)
    );
    out
}

/// The answer to `ping`.
pub fn pong(req_id: Option<u64>, time_in: Timestamp, time_out: Timestamp) -> String {
    let mut out = String::with_capacity(100);
    out.push_str(r#"{"method":"pong","#);
    if let Some(id) = req_id {
        let _ = write!(out, r#""req_id":{id},"#);
    }
    let _ = write!(
        out,
        r#""time_in":"{}","time_out":"{}"}}"#,
        micros(time_in),
        micros(time_out)
    );
    out
}

/// A pair as the `instrument` channel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstrumentPair {
    /// `BTC/USD`.
    pub symbol: String,
    /// `BTC`.
    pub base: String,
    /// `USD`.
    pub quote: String,
    /// `online`, `cancel_only`, ...
    pub status: String,
    /// Decimals of prices and quantities; the increments are one unit of the last decimal.
    pub precision: Precision,
    /// Smallest order quantity.
    pub qty_min: Decimal,
    /// Smallest order cost, in the quote currency.
    pub cost_min: Decimal,
}

impl InstrumentPair {
    /// A pair `BASE/QUOTE` trading online with the given precisions.
    pub fn online(symbol: &str, precision: Precision) -> Self {
        let (base, quote) = symbol.split_once('/').unwrap_or((symbol, ""));
        InstrumentPair {
            symbol: symbol.to_owned(),
            base: base.to_owned(),
            quote: quote.to_owned(),
            status: "online".to_owned(),
            precision,
            qty_min: Decimal::new(1, precision.qty.min(4)).unwrap_or(Decimal::ZERO),
            cost_min: Decimal::new(5, 1).unwrap_or(Decimal::ZERO),
        }
    }
}

/// The `instrument` snapshot: the assets (every base and quote, once) and the pairs.
pub fn instrument_snapshot(pairs: &[InstrumentPair]) -> String {
    let mut out = String::with_capacity(100 + 330 * pairs.len());
    out.push_str(r#"{"channel":"instrument","type":"snapshot","data":{"assets":["#);
    let mut assets: Vec<(&str, u8)> = Vec::new();
    for p in pairs {
        for (id, precision) in [(&p.base, p.precision.qty), (&p.quote, 4)] {
            match assets.iter_mut().find(|(a, _)| a == id) {
                Some((_, prec)) => *prec = (*prec).max(precision),
                None => assets.push((id, precision)),
            }
        }
    }
    for (i, (id, precision)) in assets.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"id":"#);
        push_json_str(&mut out, id);
        let _ = write!(
            out,
            r#","status":"enabled","precision":{},"precision_display":{},"borrowable":false,"collateral_value":0.0}}"#,
            precision + 2,
            (*precision).min(5)
        );
    }
    out.push_str(r#"],"pairs":["#);
    for (i, p) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let price_inc = Decimal::new(1, p.precision.price).unwrap_or(Decimal::ZERO);
        let qty_inc = Decimal::new(1, p.precision.qty).unwrap_or(Decimal::ZERO);
        out.push_str(r#"{"symbol":"#);
        push_json_str(&mut out, &p.symbol);
        out.push_str(r#","base":"#);
        push_json_str(&mut out, &p.base);
        out.push_str(r#","quote":"#);
        push_json_str(&mut out, &p.quote);
        out.push_str(r#","status":"#);
        push_json_str(&mut out, &p.status);
        let _ = write!(
            out,
            r#","qty_precision":{},"qty_increment":{},"price_precision":{},"cost_precision":{},"marginable":false,"has_index":true,"cost_min":{},"tick_size":{},"price_increment":{},"qty_min":{}}}"#,
            p.precision.qty,
            float_style(qty_inc),
            p.precision.price,
            p.precision.price.max(2) + 3,
            float_style(p.cost_min),
            float_style(price_inc),
            float_style(price_inc),
            float_style(p.qty_min),
        );
    }
    out.push_str("]}}");
    out
}

/// A decimal written the way Kraken writes its reference numbers (shortest float form):
/// `0.1`, `0.0001`, `1.0`, `1e-05`, `5e-05`, `1.5e-07`.
pub fn float_style(value: Decimal) -> String {
    let v = value.normalized();
    if v.is_zero() {
        return "0.0".to_owned();
    }
    let digits = v.mantissa().to_string();
    // The decimal exponent of the leading digit.
    let exp = digits.len() as i64 - 1 - i64::from(v.scale());
    if exp < -4 {
        let (lead, rest) = digits.split_at(1);
        let mut s = lead.to_owned();
        if !rest.is_empty() {
            s.push('.');
            s.push_str(rest);
        }
        let _ = write!(s, "e-{:02}", -exp);
        s
    } else if v.scale() == 0 {
        format!("{v}.0")
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Tracker;
    use crate::kraken::{Frame, decode};
    use serde::Deserialize;
    use serde_json::value::RawValue;

    fn fixture_frames(name: &str) -> Vec<String> {
        #[derive(Deserialize)]
        struct Line<'a> {
            #[serde(borrow, default)]
            frame: Option<&'a RawValue>,
            #[serde(borrow, default)]
            dir: Option<&'a str>,
        }
        let path = format!(
            "{}/../../tests/fixtures/kraken-v2/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        text.lines()
            .filter_map(|l| {
                let line: Line<'_> = serde_json::from_str(l).unwrap();
                match (line.frame, line.dir) {
                    (Some(f), None) => Some(f.get().to_owned()),
                    _ => None,
                }
            })
            .collect()
    }

    fn reencode(frame: &Frame<'_>, precision: Precision) -> Option<String> {
        Some(match frame {
            Frame::Book(msg) => {
                let d = &msg.data[0];
                book(
                    msg.kind,
                    &d.symbol,
                    d.bid_pairs(),
                    d.ask_pairs(),
                    precision,
                    d.checksum,
                    d.timestamp?,
                )
            }
            Frame::Status(s) => status(s[0].connection_id?),
            Frame::Heartbeat => HEARTBEAT.to_owned(),
            Frame::Ack(a) => {
                let r = a.result.as_ref();
                ack(&Ack {
                    method: Some(&a.method),
                    req_id: a.req_id,
                    result: r.map(|r| AckResult {
                        channel: &r.channel,
                        depth: r.depth,
                        snapshot: r.snapshot,
                        symbol: r.symbol.as_deref(),
                    }),
                    error: a.error.as_deref(),
                    symbol: a.symbol.as_deref(),
                    time_in: a.time_in?,
                    time_out: a.time_out?,
                })
            }
            Frame::Pong(p) => pong(p.req_id, p.time_in?, p.time_out?),
            _ => return None,
        })
    }

    /// Every frame of the real captures (book snapshots and updates, status, heartbeats,
    /// subscribe and unsubscribe acks) re-encodes to exactly the bytes Kraken sent.
    #[test]
    fn captured_frames_reencode_byte_for_byte() {
        // (capture, pair precision)
        let cases = [
            ("kraken_btcusd_d10_20260816.ndjson", (1, 8)),
            ("kraken_btcusd_d100_20260816.ndjson", (1, 8)),
            ("kraken_minagbp_d25_resync_20260818.ndjson", (4, 8)),
        ];
        for (name, (price, qty)) in cases {
            let mut kinds = std::collections::BTreeMap::new();
            for text in fixture_frames(name) {
                let frame = decode(&text).unwrap();
                let encoded = reencode(&frame, Precision { price, qty })
                    .unwrap_or_else(|| panic!("{name}: cannot re-encode {text}"));
                assert_eq!(encoded, text, "{name}");
                *kinds.entry(frame.channel().to_owned()).or_insert(0) += 1;
            }
            assert!(
                kinds["book"] > 10 && kinds["status"] == 1,
                "{name}: {kinds:?}"
            );
        }
    }

    #[test]
    fn documented_responses_encode_exactly() {
        let t_in = Timestamp::parse("2026-08-16T23:37:03.806372Z").unwrap();
        let t_out = Timestamp::parse("2026-08-16T23:37:03.806411Z").unwrap();
        let cases = [
            (
                Ack {
                    method: Some("subscribe"),
                    req_id: None,
                    result: None,
                    error: Some("Currency pair not supported XBT/USD"),
                    symbol: Some("XBT/USD"),
                    time_in: t_in,
                    time_out: t_out,
                },
                r#"{"error":"Currency pair not supported XBT/USD","method":"subscribe","success":false,"symbol":"XBT/USD","time_in":"2026-08-16T23:37:03.806372Z","time_out":"2026-08-16T23:37:03.806411Z"}"#,
            ),
            (
                Ack {
                    method: Some("subscribe"),
                    req_id: Some(7),
                    result: None,
                    error: Some("Subscription depth not supported"),
                    symbol: Some("BTC/USD"),
                    time_in: t_in,
                    time_out: t_out,
                },
                r#"{"error":"Subscription depth not supported","method":"subscribe","req_id":7,"success":false,"symbol":"BTC/USD","time_in":"2026-08-16T23:37:03.806372Z","time_out":"2026-08-16T23:37:03.806411Z"}"#,
            ),
            (
                Ack {
                    method: Some("subscribe"),
                    req_id: Some(1),
                    result: Some(AckResult {
                        channel: "book",
                        depth: Some(100),
                        snapshot: Some(true),
                        symbol: Some("BTC/USD"),
                    }),
                    error: None,
                    symbol: None,
                    time_in: t_in,
                    time_out: t_out,
                },
                r#"{"method":"subscribe","req_id":1,"result":{"channel":"book","depth":100,"snapshot":true,"symbol":"BTC/USD"},"success":true,"time_in":"2026-08-16T23:37:03.806372Z","time_out":"2026-08-16T23:37:03.806411Z"}"#,
            ),
        ];
        for (a, expected) in cases {
            let text = ack(&a);
            assert_eq!(text, expected);
            let Ok(Frame::Ack(decoded)) = decode(&text) else {
                panic!("{text}")
            };
            assert_eq!(decoded.req_id, a.req_id);
            assert_eq!(decoded.error.as_deref(), a.error);
        }
        assert_eq!(
            pong(
                Some(101),
                Timestamp::parse("2026-08-16T23:37:03.799685Z").unwrap(),
                Timestamp::parse("2026-08-16T23:37:03.799703123Z").unwrap()
            ),
            r#"{"method":"pong","req_id":101,"time_in":"2026-08-16T23:37:03.799685Z","time_out":"2026-08-16T23:37:03.799703Z"}"#
        );
    }

    #[test]
    fn book_values_are_printed_at_the_pair_precision() {
        let d = |s: &str| Decimal::parse(s).unwrap();
        let text = book(
            BookKind::Update,
            "MATIC/USD",
            [(d("0.566"), d("0")), (d("0.5657"), d("1098.3947558"))],
            [(d("1"), d("2.5"))],
            Precision { price: 4, qty: 8 },
            2_114_181_697,
            Timestamp::parse("2023-10-06T17:35:55.440295789Z").unwrap(),
        );
        assert_eq!(
            text,
            r#"{"channel":"book","type":"update","data":[{"symbol":"MATIC/USD","bids":[{"price":0.5660,"qty":0.00000000},{"price":0.5657,"qty":1098.39475580}],"asks":[{"price":1.0000,"qty":2.50000000}],"checksum":2114181697,"timestamp":"2023-10-06T17:35:55.440295Z"}]}"#
        );
        let Ok(Frame::Book(msg)) = decode(&text) else {
            panic!()
        };
        assert_eq!(msg.data[0].bids[1].qty.value, d("1098.3947558"));
    }

    #[test]
    fn strings_are_escaped() {
        let text = ack(&Ack {
            method: Some("subscribe"),
            req_id: None,
            result: None,
            error: Some("Currency pair not supported A\"B\\C\n"),
            symbol: Some("A\"B\\C\n"),
            time_in: Timestamp::default(),
            time_out: Timestamp::default(),
        });
        let Ok(Frame::Ack(a)) = decode(&text) else {
            panic!("{text}")
        };
        assert_eq!(a.symbol.as_deref(), Some("A\"B\\C\n"));
    }

    #[test]
    fn reference_numbers_look_like_krakens() {
        let d = |s: &str| Decimal::parse(s).unwrap();
        for (value, printed) in [
            ("0.00000001", "1e-08"),
            ("0.00005", "5e-05"),
            ("0.000015", "1.5e-05"),
            ("0.1", "0.1"),
            ("0.0001", "0.0001"),
            ("0.50", "0.5"),
            ("1", "1.0"),
            ("0", "0.0"),
            ("0.0000000001", "1e-10"),
        ] {
            assert_eq!(float_style(d(value)), printed, "{value}");
            assert_eq!(Decimal::parse(printed).unwrap(), d(value));
        }
    }

    #[test]
    fn the_instrument_snapshot_teaches_a_tracker_every_precision() {
        let pairs = [
            InstrumentPair::online("BTC/USD", Precision { price: 1, qty: 8 }),
            InstrumentPair::online("ETH/USD", Precision { price: 2, qty: 8 }),
            InstrumentPair::online("MINA/GBP", Precision { price: 4, qty: 8 }),
        ];
        let text = instrument_snapshot(&pairs);
        let frame = decode(&text).unwrap();
        let Frame::Instrument(msg) = &frame else {
            panic!("{text}")
        };
        assert!(msg.snapshot);
        assert_eq!(msg.pairs.len(), 3);
        assert_eq!(msg.pairs[0].qty_increment.unwrap().text, "1e-08");
        assert_eq!(msg.pairs[0].price_increment.unwrap().text, "0.1");
        assert_eq!(msg.pairs[2].price_increment.unwrap().text, "0.0001");
        assert!(msg.pairs.iter().all(|p| p.is_online()));
        let mut tracker = Tracker::new(10);
        tracker.observe(&frame);
        assert_eq!(
            tracker.precision("MINA/GBP"),
            Some(Precision { price: 4, qty: 8 })
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ids: Vec<&str> = v["data"]["assets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["BTC", "USD", "ETH", "MINA", "GBP"]);
    }
}
