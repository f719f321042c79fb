//! Exact, non-negative decimal numbers for prices and quantities.
//!
//! A [`Decimal`] is `mantissa × 10^-scale` with a `u128` mantissa: 38 significant digits, far more
//! than any Kraken price or quantity. It is parsed from JSON number text (`62802.5`, `0.00005100`,
//! `5e-05`) without passing through binary floating point, keeps the scale it was written with (so
//! `0.00005100` prints back as `0.00005100`), and compares by value (`0.5660 == 0.566`).
//!
//! Invariant: `scale <= MAX_SCALE`, so `10^scale` always fits in a `u128`.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// Powers of ten that fit in a `u128` (10^0 through 10^38).
const POW10: [u128; 39] = {
    let mut t = [1u128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// `10^n`, if it fits in a `u128`.
pub fn pow10(n: u8) -> Option<u128> {
    POW10.get(usize::from(n)).copied()
}

/// An exact non-negative decimal: `mantissa × 10^-scale`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Decimal {
    mantissa: u128,
    scale: u8,
}

/// Why a text is not a decimal this crate accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid decimal {text:?}: {reason}")]
pub struct DecimalError {
    /// The text as given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Decimal {
    /// The largest scale (digits after the point) a decimal may have.
    pub const MAX_SCALE: u8 = 30;
    /// Zero, at scale 0.
    pub const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };

    /// `mantissa × 10^-scale`, or `None` if `scale` exceeds [`Decimal::MAX_SCALE`].
    pub const fn new(mantissa: u128, scale: u8) -> Option<Decimal> {
        if scale > Self::MAX_SCALE {
            None
        } else {
            Some(Decimal { mantissa, scale })
        }
    }

    /// The integer digits of the value as written (`62802.5` → 628025).
    pub const fn mantissa(self) -> u128 {
        self.mantissa
    }

    /// Digits after the decimal point as written (`0.00005100` → 8).
    pub const fn scale(self) -> u8 {
        self.scale
    }

    /// Whether the value is zero (at any scale).
    pub const fn is_zero(self) -> bool {
        self.mantissa == 0
    }

    /// Parses JSON number text: digits, an optional fraction and an optional exponent.
    ///
    /// Accepts `62802.5`, `0.00005100`, `5e-05`, `1.5E+3`; rejects signs, empty parts, `NaN`,
    /// and values needing more than 38 digits or a scale above [`Decimal::MAX_SCALE`].
    pub fn parse(text: &str) -> Result<Decimal, DecimalError> {
        Self::parse_bytes(text.as_bytes()).map_err(|reason| DecimalError {
            text: text.to_owned(),
            reason,
        })
    }

    fn parse_bytes(b: &[u8]) -> Result<Decimal, &'static str> {
        let mut i = 0;
        let mut mantissa: u128 = 0;
        let mut int_digits = 0usize;
        let mut frac_digits = 0usize;
        if b.first() == Some(&b'-') {
            return Err("negative values are not prices or quantities");
        }
        while i < b.len() && b[i].is_ascii_digit() {
            mantissa = push_digit(mantissa, b[i])?;
            int_digits += 1;
            i += 1;
        }
        if int_digits == 0 {
            return Err("expected a digit");
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                mantissa = push_digit(mantissa, b[i])?;
                frac_digits += 1;
                i += 1;
            }
            if frac_digits == 0 {
                return Err("expected a digit after the point");
            }
        }
        let mut exponent: i64 = 0;
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            i += 1;
            let negative = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                exponent = (exponent * 10 + i64::from(b[i] - b'0')).min(1000);
                i += 1;
            }
            if i == start {
                return Err("expected a digit in the exponent");
            }
            if negative {
                exponent = -exponent;
            }
        }
        if i != b.len() {
            return Err("unexpected character");
        }
        let scale = frac_digits as i64 - exponent;
        if scale < 0 {
            let up = usize::try_from(-scale).map_err(|_| "too large")?;
            let factor = POW10.get(up).ok_or("too large")?;
            mantissa = mantissa.checked_mul(*factor).ok_or("too large")?;
            return Ok(Decimal { mantissa, scale: 0 });
        }
        if scale > i64::from(Self::MAX_SCALE) {
            return Err("too many digits after the point");
        }
        Ok(Decimal {
            mantissa,
            scale: scale as u8,
        })
    }

    /// The mantissa of this value at `scale` digits, when it is exact there: `0.5` at scale 3 is
    /// 500; `0.1234` at scale 2 is `None` (it would round).
    pub fn mantissa_at(self, scale: u8) -> Option<u128> {
        match scale.cmp(&self.scale) {
            Ordering::Equal => Some(self.mantissa),
            Ordering::Greater => self
                .mantissa
                .checked_mul(*POW10.get(usize::from(scale - self.scale))?),
            Ordering::Less => {
                let f = POW10[usize::from(self.scale - scale)];
                self.mantissa.is_multiple_of(f).then_some(self.mantissa / f)
            }
        }
    }

    /// This value written with exactly `scale` digits after the point, when that is exact.
    pub fn with_scale(self, scale: u8) -> Option<Decimal> {
        if scale > Self::MAX_SCALE {
            return None;
        }
        Some(Decimal {
            mantissa: self.mantissa_at(scale)?,
            scale,
        })
    }

    /// The same value with trailing fractional zeros removed (`0.5660` → `0.566`).
    pub fn normalized(self) -> Decimal {
        let mut d = self;
        while d.scale > 0 && d.mantissa.is_multiple_of(10) {
            d.mantissa /= 10;
            d.scale -= 1;
        }
        if d.mantissa == 0 {
            d.scale = 0;
        }
        d
    }

    /// `self - other`, or `None` when the result would be negative or does not fit.
    pub fn checked_sub(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        let a = self.mantissa_at(scale)?;
        let b = other.mantissa_at(scale)?;
        Some(Decimal {
            mantissa: a.checked_sub(b)?,
            scale,
        })
    }

    /// `self + other`, or `None` when it does not fit.
    pub fn checked_add(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        let a = self.mantissa_at(scale)?;
        let b = other.mantissa_at(scale)?;
        Some(Decimal {
            mantissa: a.checked_add(b)?,
            scale,
        })
    }

    /// `self × other`, exact, or `None` when it does not fit.
    pub fn checked_mul(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.checked_add(other.scale)?;
        Decimal::new(self.mantissa.checked_mul(other.mantissa)?, scale)
            .map(|d| if d.scale > 18 { d.normalized() } else { d })
    }

    /// The digits Kraken's checksum uses for this value: the value printed with `precision`
    /// decimals, the point removed and leading zeros stripped (`0.5660` → `5660`, zero → empty).
    ///
    /// When the value has more decimals than `precision` and they are not all zero, its own digits
    /// are used: the wire text is then the only honest input, and a resulting mismatch shows the
    /// discrepancy instead of hiding it.
    pub fn checksum_digits(self, precision: u8, buf: &mut itoa::Buffer) -> &str {
        let m = self.mantissa_at(precision).unwrap_or(self.mantissa);
        if m == 0 {
            return "";
        }
        match u64::try_from(m) {
            Ok(small) => buf.format(small),
            Err(_) => buf.format(m),
        }
    }
}

fn push_digit(m: u128, c: u8) -> Result<u128, &'static str> {
    m.checked_mul(10)
        .and_then(|m| m.checked_add(u128::from(c - b'0')))
        .ok_or("more than 38 significant digits")
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Decimal {}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        if self.scale == other.scale {
            return self.mantissa.cmp(&other.mantissa);
        }
        if self.scale < other.scale {
            let f = POW10[usize::from(other.scale - self.scale)];
            match self.mantissa.checked_mul(f) {
                Some(a) => a.cmp(&other.mantissa),
                None => Ordering::Greater,
            }
        } else {
            other.cmp(self).reverse()
        }
    }
}

impl Hash for Decimal {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let n = self.normalized();
        n.mantissa.hash(state);
        n.scale.hash(state);
    }
}

impl fmt::Display for Decimal {
    /// The value with exactly `scale` digits after the point (`0.00005100`, `62802.5`, `3`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(self.mantissa);
        let scale = usize::from(self.scale);
        if scale == 0 {
            return f.pad(digits);
        }
        let mut s = String::with_capacity(digits.len() + scale + 2);
        if digits.len() <= scale {
            s.push_str("0.");
            s.extend(std::iter::repeat_n('0', scale - digits.len()));
            s.push_str(digits);
        } else {
            let (int, frac) = digits.split_at(digits.len() - scale);
            s.push_str(int);
            s.push('.');
            s.push_str(frac);
        }
        f.pad(&s)
    }
}

impl std::str::FromStr for Decimal {
    type Err = DecimalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Decimal::parse(s)
    }
}

impl serde::Serialize for Decimal {
    /// Serialized as a decimal string, never as a float.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_wire_forms_exactly() {
        // (text, mantissa, scale, printed back)
        let cases = [
            ("62802.5", 628025, 1, "62802.5"),
            ("0.00005100", 5100, 8, "0.00005100"),
            ("5e-05", 5, 5, "0.00005"),
            ("1.5E+3", 1500, 0, "1500"),
            ("2.5e1", 25, 0, "25"),
            ("0", 0, 0, "0"),
            ("0.0", 0, 1, "0.0"),
            ("1098.3947558", 10983947558, 7, "1098.3947558"),
            (
                "12345678901234567890.12345678",
                1234567890123456789012345678,
                8,
                "12345678901234567890.12345678",
            ),
        ];
        for (text, m, s, printed) in cases {
            let v = d(text);
            assert_eq!((v.mantissa(), v.scale()), (m, s), "{text}");
            assert_eq!(v.to_string(), printed, "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_price() {
        for bad in [
            "", "-1", "1.", ".5", "1e", "1e+", "NaN", "1,5", "0x10", "1.2.3", " 1", "1e99", "1e-99",
        ] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn compares_by_value_across_scales() {
        assert_eq!(d("0.5660"), d("0.566"));
        assert!(d("0.5659") < d("0.566"));
        assert!(d("62802.6") > d("62802.50"));
        assert!(d("100") > d("99.999999999"));
        use std::collections::hash_map::DefaultHasher;
        let h = |x: Decimal| {
            let mut s = DefaultHasher::new();
            x.hash(&mut s);
            s.finish()
        };
        assert_eq!(h(d("0.5660")), h(d("0.566")));
    }

    #[test]
    fn checksum_digits_pad_to_precision_and_strip_leading_zeros() {
        // (value, precision, digits)
        let cases = [
            ("0.566", 4, "5660"),
            ("0.5666", 4, "5666"),
            ("45285.2", 1, "452852"),
            ("0.00100000", 8, "100000"),
            ("0.001", 8, "100000"),
            ("18097.1547", 8, "1809715470000"),
            ("62794.0", 1, "627940"),
            ("0.123456789", 8, "123456789"), // more decimals than the precision: wire digits
            ("0.12345670", 7, "1234567"),    // extra decimals are zeros: dropped
        ];
        for (value, precision, digits) in cases {
            let mut buf = itoa::Buffer::new();
            assert_eq!(
                d(value).checksum_digits(precision, &mut buf),
                digits,
                "{value} at {precision}"
            );
        }
    }

    #[test]
    fn arithmetic_is_exact() {
        assert_eq!(d("62802.6").checked_sub(d("62802.5")), Some(d("0.1")));
        assert_eq!(d("0.1").checked_add(d("0.2")), Some(d("0.3")));
        assert_eq!(d("0.1").checked_sub(d("0.2")), None);
        assert_eq!(d("1.5").checked_mul(d("0.2")), Some(d("0.3")));
        assert_eq!(d("0.566").mantissa_at(4), Some(5660));
        assert_eq!(d("0.5661").mantissa_at(3), None);
    }
}
