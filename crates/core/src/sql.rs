//! PostgreSQL binary encodings of the core's exact values (feature `sql`): `numeric` for
//! [`Decimal`], `timestamptz` for [`Timestamp`]. They live here, beside the types, because Rust
//! lets only the type's crate or the trait's crate implement `ToSql`/`FromSql`.
//!
//! What must always hold:
//! - a [`Decimal`] goes to `numeric` and back without changing its value or its scale: `0.00005100`
//!   is sent with display scale 8 and prints back as `0.00005100` (no `f64`, no text round trip);
//! - a [`Timestamp`] is sent as microseconds since 2000-01-01 ([`Timestamp::pg_micros`]).
//!
//! The same encoders serve `ToSql` (query parameters) and the store's binary COPY rows, which
//! write straight into a reused buffer.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use postgres_types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::num::Decimal;
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
pub fn put_numeric_field(d: Decimal, out: &mut BytesMut) {
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
