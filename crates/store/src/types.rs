//! PostgreSQL binary encodings of krakenbook's exact values: `numeric` for
//! [`Decimal`](crate::book::Decimal), `timestamptz` for [`Timestamp`](crate::time::Timestamp) (both in the core crate's `sql` module, re-exported here), and
//! `jsonb` for a frame's text.
//!
//! What must always hold:
//! - a `Decimal` goes to `numeric` and back without changing its value or its scale: `0.00005100`
//!   is sent with display scale 8 and prints back as `0.00005100` (no `f64`, no text round trip);
//! - a `Timestamp` is sent as microseconds since 2000-01-01 (`Timestamp::pg_micros`);
//! - a [`Jsonb`] value is only made from text that PostgreSQL's `jsonb` accepts
//!   ([`jsonb_compatible`]); other text is stored as text instead, so a batch never fails on it.
//!
//! The same encoders serve `ToSql` (query parameters) and the binary COPY rows of
//! [`super::rows`], which write straight into a reused buffer.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

pub use krakenbook_core::sql::{NumericError, put_numeric, put_numeric_field, read_numeric};

type BoxError = Box<dyn StdError + Sync + Send>;

/// JSON text sent as `jsonb` without parsing it on this side: the binary format is a version byte
/// (1) and the text. Only build one from text that [`jsonb_compatible`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct Jsonb<'a>(pub &'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        if *ty == Type::JSONB {
            out.put_u8(1);
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

/// The deepest nesting of arrays and objects stored as `jsonb`. PostgreSQL's JSON parser
/// recurses per level and fails with "stack depth limit exceeded" (54001) somewhere above 12,000
/// levels at the default `max_stack_depth` (2 MB), and above 500 at its smallest setting (100 kB);
/// Kraken's frames nest 4 deep. Deeper text is stored as text.
pub const MAX_JSON_DEPTH: usize = 256;

/// Whether text that is already known to be valid JSON is also accepted by PostgreSQL's `jsonb`
/// (see [`jsonb_refusal`]).
pub fn jsonb_compatible(json: &str) -> bool {
    jsonb_refusal(json).is_none()
}

/// Why PostgreSQL's `jsonb` would refuse text that is already known to be valid JSON, or `None`
/// when it accepts it.
///
/// `jsonb` is stricter than JSON in four ways, each checked here in one pass over the bytes: it
/// rejects the escape `\u0000`, an unpaired UTF-16 surrogate escape, numbers outside `numeric`'s
/// range (an exponent beyond ±1000 digits is refused by its parser; this check refuses any
/// exponent or digit run longer than that, conservatively), and nesting deeper than its parser's
/// stack allows ([`MAX_JSON_DEPTH`], conservatively). Text refused here is stored as text, never
/// lost.
pub fn jsonb_refusal(json: &str) -> Option<&'static str> {
    const MAX_DIGITS: usize = 1000;
    const NUL: &str = "a \\u0000 escape (jsonb cannot hold NUL)";
    const SURROGATE: &str = "an unpaired UTF-16 surrogate escape";
    const NUMBER: &str = "a number outside numeric's range";
    let b = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Some(
                        "nesting deeper than 256 levels (PostgreSQL's jsonb parser would exceed its stack depth)",
                    );
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Some("an unterminated string"),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            if b.get(i + 1) == Some(&b'u') {
                                let Some(unit) = hex4(b, i + 2) else {
                                    return Some("a malformed \\u escape");
                                };
                                i += 6;
                                match unit {
                                    0 => return Some(NUL),
                                    0xD800..=0xDBFF => {
                                        let low = (b.get(i) == Some(&b'\\')
                                            && b.get(i + 1) == Some(&b'u'))
                                        .then(|| hex4(b, i + 2))
                                        .flatten();
                                        match low {
                                            Some(0xDC00..=0xDFFF) => i += 6,
                                            _ => return Some(SURROGATE),
                                        }
                                    }
                                    0xDC00..=0xDFFF => return Some(SURROGATE),
                                    _ => {}
                                }
                            } else {
                                i += 2;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'.' | b'-' | b'+') {
                    i += 1;
                }
                if i - start > MAX_DIGITS {
                    return Some(NUMBER);
                }
                if i < b.len() && matches!(b[i], b'e' | b'E') {
                    i += 1;
                    let exp_start = i;
                    while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+') {
                        i += 1;
                    }
                    let digits = json[exp_start..i].trim_start_matches(['-', '+']);
                    let digits = digits.trim_start_matches('0');
                    if digits.len() > 4 || digits.parse::<u32>().unwrap_or(u32::MAX) > 1000 {
                        return Some(NUMBER);
                    }
                }
            }
            _ => i += 1,
        }
    }
    None
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let h = b.get(at..at + 4)?;
    let mut v = 0u32;
    for &c in h {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Decimal;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    fn encode(s: &str) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_numeric(d(s), &mut out);
        out.to_vec()
    }

    fn words(w: &[i16]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn numeric_encoding_matches_postgres_layout() {
        // (value, [ndigits, weight, sign, dscale, digits...]) as PostgreSQL's numeric_send writes.
        let cases: [(&str, &[i16]); 9] = [
            ("0", &[0, 0, 0, 0]),
            ("0.00000000", &[0, 0, 0, 8]),
            ("62802.5", &[3, 1, 0, 1, 6, 2802, 5000]),
            ("0.00005100", &[1, -2, 0, 8, 5100]),
            ("10000", &[1, 1, 0, 0, 1]),
            ("1.0001", &[2, 0, 0, 4, 1, 1]),
            ("0.5", &[1, -1, 0, 1, 5000]),
            ("12345678.9", &[3, 1, 0, 1, 1234, 5678, 9000]),
            ("1098.3947558", &[3, 0, 0, 7, 1098, 3947, 5580]),
        ];
        for (text, expected) in cases {
            let mut want = words(&expected[..4]);
            want.extend(words(&expected[4..]));
            assert_eq!(encode(text), want, "{text}");
        }
    }

    #[test]
    fn numeric_round_trips_through_its_own_decoder() {
        for text in [
            "0",
            "0.0",
            "0.00005100",
            "62802.5",
            "62803.0",
            "99999999999999999999999999999999999999",
            "0.000000000000000000000000000001",
            "12345678901234567890.12345678",
            "1000000",
            "0.123456789012345678901234567890",
        ] {
            let v = d(text);
            let back = read_numeric(&encode(text)).unwrap();
            assert_eq!(back.to_string(), text, "{text}");
            assert_eq!(back.scale(), v.scale(), "{text}");
        }
    }

    #[test]
    fn numeric_decoder_rejects_what_is_not_a_decimal() {
        let nan = words(&[0, 0, 0xC000u16 as i16, 0]);
        let neg = words(&[1, 0, 0x4000, 0, 5]);
        let short = words(&[2, 0, 0, 0, 5]);
        let deep = words(&[1, 0, 0, 31, 5]);
        for raw in [nan, neg, short, deep] {
            assert!(read_numeric(&raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn jsonb_compatibility_follows_postgres_rules() {
        // (JSON text, accepted by jsonb)
        let cases = [
            (r#"{"channel":"book","data":[{"price":62802.5}]}"#, true),
            (r#"{"symbol":"BTC\/USD","x":"\u00e9\ud83d\ude00"}"#, true),
            (r#"{"a":1e5,"b":2.5E-300,"c":-0.5e+1000}"#, true),
            (r#"{"a":"\u0000"}"#, false),
            (r#"{"a":"\ud83d"}"#, false),
            (r#"{"a":"\ude00x"}"#, false),
            (r#"{"a":1e1001}"#, false),
            (r#"{"a":1e99999999999999999999}"#, false),
            (r#"{"e":"1e9999 inside a string is text"}"#, true),
            (r#"{"d":"[[[[ inside a string is text"}"#, true),
        ];
        for (text, ok) in cases {
            assert_eq!(jsonb_compatible(text), ok, "{text}");
        }
        // Depth: at the limit accepted, one more refused, whatever mix of arrays and objects.
        let nest = |n: usize| {
            let mut s = String::from(r#"{"a":"#);
            for i in 0..n - 1 {
                s.push_str(if i % 2 == 0 { "[" } else { r#"{"k":"# });
            }
            s.push('1');
            for i in (0..n - 1).rev() {
                s.push(if i % 2 == 0 { ']' } else { '}' });
            }
            s.push('}');
            s
        };
        assert!(jsonb_compatible(&nest(MAX_JSON_DEPTH)));
        assert!(jsonb_refusal(&nest(MAX_JSON_DEPTH + 1)).is_some_and(|r| r.contains("nesting")));
        let attack = format!(
            r#"{{"channel":"book","data":{}{}}}"#,
            "[".repeat(20_000),
            "]".repeat(20_000)
        );
        assert!(jsonb_refusal(&attack).is_some_and(|r| r.contains("nesting")));
    }
}
