//! PostgreSQL binary encodings of krakenbook's exact values: `numeric` for [`Decimal`],
//! `timestamptz` for [`Timestamp`], and `jsonb` for a frame's text.
//!
//! What must always hold:
//! - a [`Decimal`] goes to `numeric` and back without changing its value or its scale: `0.00005100`
//!   is sent with display scale 8 and prints back as `0.00005100` (no `f64`, no text round trip);
//! - a [`Timestamp`] is sent as microseconds since 2000-01-01 ([`Timestamp::pg_micros`]);
//! - a [`Jsonb`] value is only made from text that PostgreSQL's `jsonb` accepts
//!   ([`jsonb_compatible`]); other text is stored as text instead, so a batch never fails on it.
//!
//! The same encoders serve `ToSql` (query parameters) and the binary COPY rows of
//! [`super::rows`], which write straight into a reused buffer.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::book::Decimal;
use crate::time::Timestamp;

type BoxError = Box<dyn StdError + Sync + Send>;

/// `numeric`'s sign word for a positive value (the only kind a [`Decimal`] holds besides zero).
const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
/// The base-10000 digits of the largest [`Decimal`] (38 digits, padded to groups of 4 on each side
/// of the point) fit in 12 groups.
const MAX_GROUPS: usize = 12;

/// The base-10000 form of a decimal, as PostgreSQL's binary `numeric` holds it.
struct NumericParts {
    groups: [u16; MAX_GROUPS],
    len: usize,
    weight: i16,
    dscale: u16,
}

impl NumericParts {
    fn of(d: Decimal) -> NumericParts {
        let scale = u32::from(d.scale());
        let mut parts = NumericParts {
            groups: [0; MAX_GROUPS],
            len: 0,
            weight: 0,
            dscale: d.scale().into(),
        };
        if d.is_zero() {
            return parts;
        }
        // Pad the fraction to a multiple of four digits so that groups align on the point.
        let pad = (4 - scale % 4) % 4;
        let frac_groups = (scale + pad) / 4;
        let m = d.mantissa();
        // `scale <= 30`, so 10^scale fits; the fraction is below 10^30 and times 10^3 still fits.
        let unit = 10u128.pow(scale);
        let (int, frac) = (m / unit, (m % unit) * 10u128.pow(pad));
        // Little-endian groups: fraction first (least significant), then the integer part.
        let mut le = [0u16; MAX_GROUPS];
        let mut n = 0;
        let mut f = frac;
        for _ in 0..frac_groups {
            le[n] = (f % 10_000) as u16;
            f /= 10_000;
            n += 1;
        }
        let mut i = int;
        while i > 0 {
            le[n] = (i % 10_000) as u16;
            i /= 10_000;
            n += 1;
        }
        // Weight of the most significant group: integer groups - 1 (negative when int == 0).
        let int_groups = n as i32 - frac_groups as i32;
        let mut top = n;
        while top > 0 && le[top - 1] == 0 {
            top -= 1;
        }
        let weight = (int_groups - 1) - (n - top) as i32;
        let mut bottom = 0;
        while bottom < top && le[bottom] == 0 {
            bottom += 1;
        }
        for (k, g) in le[bottom..top].iter().rev().enumerate() {
            parts.groups[k] = *g;
        }
        parts.len = top - bottom;
        parts.weight = weight as i16;
        parts
    }

    fn encoded_len(&self) -> usize {
        8 + 2 * self.len
    }

    fn write(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_i16(self.len as i16);
        out.put_i16(self.weight);
        out.put_u16(NUMERIC_POS);
        out.put_u16(self.dscale);
        for g in &self.groups[..self.len] {
            out.put_u16(*g);
        }
    }
}

/// Writes `d` in PostgreSQL's binary `numeric` format.
pub fn put_numeric(d: Decimal, out: &mut BytesMut) {
    NumericParts::of(d).write(out);
}

/// Writes `d` as a binary COPY field: its length, then its `numeric` bytes.
pub(crate) fn put_numeric_field(d: Decimal, out: &mut BytesMut) {
    let parts = NumericParts::of(d);
    out.put_i32(parts.encoded_len() as i32);
    parts.write(out);
}

/// Reads PostgreSQL's binary `numeric` into a [`Decimal`], exactly, keeping the display scale.
pub fn read_numeric(raw: &[u8]) -> Result<Decimal, NumericError> {
    let word = |i: usize| -> Result<u16, NumericError> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(NumericError("truncated numeric value"))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let dscale = word(6)?;
    if raw.len() != 8 + 2 * ndigits {
        return Err(NumericError("numeric value of the wrong length"));
    }
    match sign {
        NUMERIC_POS => {}
        NUMERIC_NEG => return Err(NumericError("negative numeric is not a price or quantity")),
        _ => {
            return Err(NumericError(
                "numeric NaN or infinity is not a price or quantity",
            ));
        }
    }
    let scale = u8::try_from(dscale)
        .ok()
        .filter(|s| *s <= Decimal::MAX_SCALE)
        .ok_or(NumericError(
            "numeric has more than 30 digits after the point",
        ))?;
    let mut mantissa: u128 = 0;
    for k in 0..ndigits {
        let digit = u128::from(word(8 + 2 * k)?);
        if digit >= 10_000 {
            return Err(NumericError("numeric digit out of range"));
        }
        // This group's value is digit × 10000^(weight - k); at the display scale its power of ten is:
        let exp = 4 * (weight - k as i32) + i32::from(scale);
        let term = if exp >= 0 {
            let p = u32::try_from(exp).map_err(|_| NumericError("numeric too large"))?;
            10u128
                .checked_pow(p)
                .and_then(|f| digit.checked_mul(f))
                .ok_or(NumericError("numeric too large for 38 digits"))?
        } else {
            // Below the display scale: only zeros may be there (PostgreSQL never sends others).
            let f = 10u128.pow(exp.unsigned_abs().min(4));
            if digit % f != 0 {
                return Err(NumericError("numeric has digits beyond its display scale"));
            }
            digit / f
        };
        mantissa = mantissa
            .checked_add(term)
            .ok_or(NumericError("numeric too large for 38 digits"))?;
    }
    Decimal::new(mantissa, scale).ok_or(NumericError("numeric scale out of range"))
}

/// A binary `numeric` that is not a [`Decimal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NumericError(&'static str);

impl ToSql for Decimal {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        put_numeric(*self, out);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Decimal {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Decimal, BoxError> {
        Ok(read_numeric(raw)?)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

impl ToSql for Timestamp {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_i64(self.pg_micros());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ || *ty == Type::TIMESTAMP
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Timestamp {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Timestamp, BoxError> {
        let bytes: [u8; 8] = raw
            .try_into()
            .map_err(|_| "timestamptz value is not 8 bytes")?;
        Ok(Timestamp::from_pg_micros(i64::from_be_bytes(bytes)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ || *ty == Type::TIMESTAMP
    }
}

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
