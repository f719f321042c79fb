//! Instants as nanoseconds since the Unix epoch, with RFC 3339 parsing and formatting.
//!
//! Kraken's v2 timestamps are RFC 3339 strings with microseconds (`2026-08-17T16:01:57.687440Z`);
//! the local receive clock is nanoseconds. Both become a [`Timestamp`], which orders, subtracts and
//! converts to PostgreSQL's `timestamptz` (microseconds since 2000-01-01) without loss. Parsing is
//! strict: a string that is not a valid RFC 3339 date-time is an error, never a guess.
//!
//! Two parsers, on purpose: [`Timestamp::parse`] is the fixed-format parser of Kraken's frames
//! (the hot path: no allocation, benchmarked with the frame decoder), and
//! [`Timestamp::parse_user`] reads what people type in `--at`, `--from`, `--to` with jiff
//! (RFC 3339 with `T`, `t` or a space, an offset or `Z`, up to nine fraction digits, or a date
//! alone for its midnight UTC). Printing ([`fmt::Display`]) goes through jiff too. Both keep every
//! nanosecond: no instant is rounded on the way in or out.

use std::fmt;

/// Nanoseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_OFFSET_NS: i64 = 946_684_800_000_000_000;
const NS_PER_SEC: i64 = 1_000_000_000;

/// An instant: nanoseconds since 1970-01-01T00:00:00Z (covers years 1678 to 2262).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

/// A string that is not an RFC 3339 date-time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid timestamp {text:?}: {reason} (expected RFC 3339, e.g. 2026-08-17T16:01:57.687440Z)"
)]
pub struct TimestampError {
    /// The text as given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A time given by a person that does not parse (see [`Timestamp::parse_user`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid time {text:?}: {reason}; write RFC 3339 with a zone, e.g. 2026-11-24T10:00:00Z, 2026-11-24 10:00:00.25+01:00, or a date, 2026-11-24 (midnight UTC)"
)]
pub struct UserTimeError {
    /// The text as given.
    pub text: String,
    /// What is wrong with it (jiff's words).
    pub reason: String,
}

impl Timestamp {
    /// The instant `nanos` nanoseconds after the Unix epoch.
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn unix_nanos(self) -> i64 {
        self.0
    }

    /// Microseconds since the Unix epoch (rounded toward negative infinity).
    pub const fn unix_micros(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// The current time from the system clock.
    pub fn now() -> Self {
        Timestamp::from_system_time(std::time::SystemTime::now())
    }

    /// The instant of a system time (before 1970: the epoch; after 2262: the latest instant).
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Microseconds since 2000-01-01, PostgreSQL's binary `timestamptz` value (exact for every
    /// instant: the epochs are a whole number of microseconds apart, so the shift is made in
    /// microseconds, where it cannot overflow; in nanoseconds it did before 1707-09-22).
    pub const fn pg_micros(self) -> i64 {
        self.0.div_euclid(1000) - PG_EPOCH_OFFSET_NS / 1000
    }

    /// The instant of a PostgreSQL binary `timestamptz` value (saturating beyond the years
    /// 1677 to 2262; every value [`Timestamp::pg_micros`] gives comes back exactly, to the
    /// microsecond).
    pub const fn from_pg_micros(micros: i64) -> Self {
        Timestamp(
            micros
                .saturating_add(PG_EPOCH_OFFSET_NS / 1000)
                .saturating_mul(1000),
        )
    }

    /// Parses an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
    ///
    /// A space may stand for the `T`, and a date alone (`2026-11-24`) means its midnight UTC.
    /// Fractions beyond nanoseconds are an error rather than silently rounded.
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        parse_rfc3339(text.as_bytes()).map_err(|reason| TimestampError {
            text: text.to_owned(),
            reason,
        })
    }

    /// Parses a time as people write it on a command line, with jiff: an RFC 3339 date-time with
    /// `Z` or an offset (`2026-11-24T10:00:00Z`, `2026-11-24 10:00:00.25+01:00`, `T`, `t` or a
    /// space between date and time, up to nine fraction digits), or a date alone
    /// (`2026-11-24`: its midnight UTC). A date-time without a zone is refused, never guessed.
    pub fn parse_user(text: &str) -> Result<Self, UserTimeError> {
        let t = text.trim();
        let err = |reason: String| UserTimeError {
            text: text.to_owned(),
            reason,
        };
        let instant = if t.len() == 10 && !t.contains(['T', 't', ' ']) {
            let date: jiff::civil::Date = t.parse().map_err(|e: jiff::Error| err(e.to_string()))?;
            jiff::tz::Offset::UTC
                .to_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
                .map_err(|e| err(e.to_string()))?
        } else {
            t.parse::<jiff::Timestamp>().map_err(|e| {
                let reason = e.to_string();
                if reason.contains("offset") || reason.contains("Z") {
                    err("no time zone: end it with Z (UTC) or an offset such as +01:00".to_owned())
                } else {
                    err(reason)
                }
            })?
        };
        i64::try_from(instant.as_nanosecond())
            .map(Timestamp)
            .map_err(|_| err("outside the years 1678 to 2262".to_owned()))
    }

    /// The time elapsed from `earlier` to `self`, in nanoseconds (negative if `earlier` is later).
    pub const fn nanos_since(self, earlier: Timestamp) -> i64 {
        self.0 - earlier.0
    }

    /// This instant plus `nanos` nanoseconds (saturating).
    pub const fn add_nanos(self, nanos: i64) -> Self {
        Timestamp(self.0.saturating_add(nanos))
    }
}

fn digits(b: &[u8], start: usize, n: usize) -> Result<i64, &'static str> {
    let part = b.get(start..start + n).ok_or("too short")?;
    let mut v = 0i64;
    for &c in part {
        if !c.is_ascii_digit() {
            return Err("expected a digit");
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Ok(v)
}

fn expect(b: &[u8], at: usize, what: &[u8]) -> Result<(), &'static str> {
    match b.get(at) {
        Some(c) if what.contains(c) => Ok(()),
        _ => Err("unexpected character"),
    }
}

fn parse_rfc3339(b: &[u8]) -> Result<Timestamp, &'static str> {
    let year = digits(b, 0, 4)?;
    expect(b, 4, b"-")?;
    let month = digits(b, 5, 2)?;
    expect(b, 7, b"-")?;
    let day = digits(b, 8, 2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("no such date");
    }
    let days = days_from_civil(year, month, day);
    if b.len() == 10 {
        return Ok(Timestamp(days * 86_400 * NS_PER_SEC));
    }
    expect(b, 10, b"Tt ")?;
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b":")?;
    let minute = digits(b, 14, 2)?;
    expect(b, 16, b":")?;
    let second = digits(b, 17, 2)?;
    if hour > 23 || minute > 59 || second > 60 {
        return Err("time of day out of range");
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return Err("empty fraction");
        }
        if n > 9 {
            return Err("fraction finer than nanoseconds");
        }
        frac_ns = digits(b, start, n)? * 10i64.pow(9 - n as u32);
    }
    let offset_secs = match b.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, i + 1, 2)?;
            expect(b, i + 3, b":")?;
            let om = digits(b, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err("offset out of range");
            }
            i += 6;
            let off = oh * 3600 + om * 60;
            if sign == b'+' { off } else { -off }
        }
        _ => return Err("missing time zone (Z or ±HH:MM)"),
    };
    if i != b.len() {
        return Err("trailing characters");
    }
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(NS_PER_SEC)
        .and_then(|ns| ns.checked_add(frac_ns))
        .map(Timestamp)
        .ok_or("out of range")
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the era-based civil calendar algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC, printed by jiff: microseconds when the instant has no finer part (as
    /// Kraken prints), else nanoseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use jiff::fmt::{StdFmtWrite, temporal::DateTimePrinter};
        static MICROS: DateTimePrinter = DateTimePrinter::new().precision(Some(6));
        static NANOS: DateTimePrinter = DateTimePrinter::new().precision(Some(9));
        // Every i64 of nanoseconds (years 1677 to 2262) is inside jiff's range (years -9999 to
        // 9999), so this cannot fail; an error would print as a formatting error, not a panic.
        let instant =
            jiff::Timestamp::from_nanosecond(i128::from(self.0)).map_err(|_| fmt::Error)?;
        let printer = if self.0.rem_euclid(1000) == 0 {
            &MICROS
        } else {
            &NANOS
        };
        printer
            .print_timestamp(&instant, StdFmtWrite(f))
            .map_err(|_| fmt::Error)
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL's microseconds are exact over every instant a `Timestamp` holds, both ways (a
    /// Kraken timestamp before 1707-09-22 overflowed the shift in nanoseconds: a panic in a
    /// debug build, a timestamp wrapped to the 2290s in a release one).
    #[test]
    fn postgres_microseconds_are_exact_at_every_instant() {
        for text in [
            "1677-09-21T00:12:44.000000Z",
            "1700-01-01T00:00:00.000000Z",
            "1707-09-22T00:12:43.145224Z",
            "1969-12-31T23:59:59.999999Z",
            "2000-01-01T00:00:00.000000Z",
            "2026-08-17T16:01:57.687440Z",
            "2262-04-11T23:47:16.854775Z",
        ] {
            let t = Timestamp::parse(text).unwrap();
            let exact = (i128::from(t.0) - i128::from(PG_EPOCH_OFFSET_NS)).div_euclid(1000);
            assert_eq!(i128::from(t.pg_micros()), exact, "{text}");
            assert_eq!(Timestamp::from_pg_micros(t.pg_micros()), t, "{text}");
        }
        for ns in [i64::MIN, i64::MIN + 999, -1, 0, 999, i64::MAX] {
            let t = Timestamp(ns);
            let exact = (i128::from(ns) - i128::from(PG_EPOCH_OFFSET_NS)).div_euclid(1000);
            assert_eq!(i128::from(t.pg_micros()), exact, "{ns}");
            // Back to the microsecond (truncated toward the past), or saturated at the ends.
            let back = Timestamp::from_pg_micros(t.pg_micros()).0;
            let truncated = ns.div_euclid(1000).checked_mul(1000).unwrap_or(i64::MIN);
            assert_eq!(back, truncated, "{ns}");
        }
    }

    #[test]
    fn parses_and_formats_kraken_timestamps() {
        // (text, unix nanos, canonical form)
        let cases = [
            ("1970-01-01T00:00:00Z", 0, "1970-01-01T00:00:00.000000Z"),
            (
                "2026-08-17T16:01:57.687440Z",
                1_786_982_517_687_440_000,
                "2026-08-17T16:01:57.687440Z",
            ),
            (
                "2026-08-17T18:01:57.687440+02:00",
                1_786_982_517_687_440_000,
                "2026-08-17T16:01:57.687440Z",
            ),
            (
                "2000-02-29 00:00:00.000000001Z",
                951_782_400_000_000_001,
                "2000-02-29T00:00:00.000000001Z",
            ),
            (
                "1969-12-31T23:59:59.5Z",
                -500_000_000,
                "1969-12-31T23:59:59.500000Z",
            ),
            (
                "2026-11-24",
                1_795_478_400_000_000_000,
                "2026-11-24T00:00:00.000000Z",
            ),
        ];
        for (text, nanos, canonical) in cases {
            let t = Timestamp::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(t.unix_nanos(), nanos, "{text}");
            assert_eq!(t.to_string(), canonical, "{text}");
            assert_eq!(
                Timestamp::parse(canonical).unwrap(),
                t,
                "round trip of {text}"
            );
        }
    }

    #[test]
    fn rejects_malformed_timestamps() {
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-08-17T24:00:00Z",
            "2026-08-17T16:01:57",
            "2026-08-17T16:01:57.Z",
            "2026-08-17T16:01:57.1234567891Z",
            "2026-08-17T16:01:57Zjunk",
            "yesterday",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn converts_to_and_from_postgres_micros() {
        let t = Timestamp::parse("2000-01-01T00:00:01.000002Z").unwrap();
        assert_eq!(t.pg_micros(), 1_000_002);
        assert_eq!(Timestamp::from_pg_micros(1_000_002), t);
        let before = Timestamp::parse("1999-12-31T23:59:59.999999Z").unwrap();
        assert_eq!(before.pg_micros(), -1);
    }

    #[test]
    fn the_fixed_parser_and_jiff_agree_over_the_whole_range() {
        // days_from_civil is the hot path's own calendar: jiff is the reference.
        for day in (-106_000i64..106_000).step_by(37) {
            let t = Timestamp(day * 86_400 * NS_PER_SEC + 123_456_789);
            let text = t.to_string();
            assert_eq!(Timestamp::parse(&text), Ok(t), "{text}");
            assert_eq!(Timestamp::parse_user(&text), Ok(t), "{text}");
        }
    }

    #[test]
    fn people_s_times_parse_to_the_nanosecond() {
        // (what is typed, unix nanos): every form the README lists.
        let cases = [
            ("2026-11-24T10:00:00Z", 1_795_514_400_000_000_000),
            ("2026-11-24t10:00:00z", 1_795_514_400_000_000_000),
            ("2026-11-24 10:00:00.25+01:00", 1_795_510_800_250_000_000),
            ("2026-11-24T10:00:00.123456789Z", 1_795_514_400_123_456_789),
            (
                "2026-11-24T10:00:00.000000001-00:30",
                1_795_516_200_000_000_001,
            ),
            ("2026-11-24 10:00:00.250Z", 1_795_514_400_250_000_000),
            ("2026-11-24", 1_795_478_400_000_000_000),
            ("  2026-11-24T10:00:00Z ", 1_795_514_400_000_000_000),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59.5Z", -500_000_000),
        ];
        for (text, nanos) in cases {
            let t = Timestamp::parse_user(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(t.unix_nanos(), nanos, "{text}");
            assert_eq!(
                Timestamp::parse_user(&t.to_string()),
                Ok(t),
                "round trip of {text}"
            );
        }
    }

    #[test]
    fn people_s_times_that_do_not_parse_say_what_to_write() {
        // (what is typed, a word of the reason)
        let cases = [
            ("2026-11-24T10:00:00", "zone"),
            ("2026-11-24 10:00", "zone"),
            ("2026-13-01T00:00:00Z", ""),
            ("2026-02-29", ""),
            ("2026-11-24T24:00:00Z", ""),
            ("2026-11-24T10:00:00.1234567891Z", ""),
            ("2026-11-24T10:00:00Zjunk", ""),
            ("3000-01-01T00:00:00Z", "1678 to 2262"),
            ("yesterday", ""),
            ("", ""),
            ("1732442400", ""),
        ];
        for (text, word) in cases {
            let err = Timestamp::parse_user(text).expect_err(text).to_string();
            assert!(err.contains(word), "{text}: {err}");
            assert!(
                err.contains("2026-11-24T10:00:00Z"),
                "{text}: the example: {err}"
            );
            assert!(!err.contains('\n'), "{text}: one line: {err}");
        }
    }
}
