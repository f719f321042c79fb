//! Book frames in Kraken's exact layout, read straight into a book row's columns.
//!
//! Nearly every book frame the collector stores is byte for byte what
//! [`crate::book_rows::canonical`] writes from the row's own columns (Kraken's layout: no spaces,
//! Kraken's key order, plain numbers, a timestamp in microseconds), so its row needs no `raw`.
//! The general path learns that by decoding the frame into a [`crate::kraken::BookMessage`],
//! turning its levels into dec64, writing the frame back from its parts and comparing: about two
//! fifths of the database thread at a few hundred messages a second (`perf`, the decode alone a
//! third), for a frame the feed had already decoded once. [`read`] takes the same columns in one
//! pass over the bytes, matching the layout as it goes.
//!
//! What must always hold: [`read`] answers only for a frame the general path stores as a book
//! row without `raw` (one data element, every value exact in dec64, a timestamp that prints back
//! as sent), and then answers exactly that row's columns; anything else (spaces, another key
//! order, an escape in the symbol, a number that is not plain or does not fit dec64, a timestamp
//! finer than microseconds or one the parser would normalise, such as a leap second) is `None`,
//! and the general path decides as before. Property tests check both against the general path,
//! over Kraken-shaped frames and their mutations.

use crate::book::Decimal;
use crate::book_rows::dec64;
use crate::kraken::BookKind;
use crate::time::Timestamp;

/// A book frame's row columns, read from a frame in Kraken's exact layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canonical<'a> {
    /// Snapshot or update.
    pub kind: BookKind,
    /// The pair, as sent (it needed no escape).
    pub symbol: &'a str,
    /// dec64 price, qty, ... in wire order, bids first.
    pub levels: Vec<i64>,
    /// How many of the levels are bids.
    pub n_bids: usize,
    /// Kraken's CRC32.
    pub checksum: u32,
    /// Kraken's timestamp (whole microseconds).
    pub timestamp: Timestamp,
}

/// The columns of `frame` when it is byte for byte Kraken's layout of a book message (see the
/// module doc), else `None`.
pub fn read(frame: &[u8]) -> Option<Canonical<'_>> {
    let mut c = Cursor { b: frame, at: 0 };
    c.lit(br#"{"channel":"book","type":""#)?;
    let kind = if c.lit(b"snapshot").is_some() {
        BookKind::Snapshot
    } else {
        c.lit(b"update")?;
        BookKind::Update
    };
    c.lit(br#"","data":[{"symbol":""#)?;
    let symbol = std::str::from_utf8(c.string()?).ok()?;
    c.lit(br#","bids":["#)?;
    // Room for every level the frame can hold (a level takes at least 22 bytes,
    // `{"price":1,"qty":1},`, two values each), up to a depth-1000 snapshot's: no growing.
    let mut levels = Vec::with_capacity((frame.len() / 11).clamp(8, 4096));
    c.levels(&mut levels)?;
    let n_bids = levels.len() / 2;
    c.lit(br#","asks":["#)?;
    c.levels(&mut levels)?;
    c.lit(br#","checksum":"#)?;
    let checksum = match c.number()? {
        (value, 0) => u32::try_from(value).ok()?,
        _ => return None,
    };
    c.lit(br#","timestamp":""#)?;
    let timestamp = micros(c.string()?)?;
    c.lit(b"}]}")?;
    (c.at == frame.len()).then_some(Canonical {
        kind,
        symbol,
        levels,
        n_bids,
        checksum,
        timestamp,
    })
}

/// A timestamp written as `YYYY-MM-DDTHH:MM:SS.ffffffZ` that parses to an instant which prints
/// back exactly so: the parser takes a leap second (`:60`) into the next minute, and `t`, a
/// space or an offset, none of which print back.
fn micros(text: &[u8]) -> Option<Timestamp> {
    const SHAPE: &[u8; 27] = b"0000-00-00T00:00:00.000000Z";
    if text.len() != SHAPE.len() {
        return None;
    }
    for (&b, &s) in text.iter().zip(SHAPE) {
        let fits = if s == b'0' {
            b.is_ascii_digit()
        } else {
            b == s
        };
        if !fits {
            return None;
        }
    }
    // Seconds 00-59 (the parser checks month, day, hour and minute itself).
    if text[17] > b'5' {
        return None;
    }
    Timestamp::parse(std::str::from_utf8(text).ok()?).ok()
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// Takes `text` when it comes next.
    fn lit(&mut self, text: &[u8]) -> Option<()> {
        let end = self.at.checked_add(text.len())?;
        (self.b.get(self.at..end)? == text).then(|| self.at = end)
    }

    /// The bytes up to the next `"` (taken too), when none needs an escape in JSON (`"`, `\`, a
    /// control character: the general path's writer would escape them, so such a frame is left
    /// to it).
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        loop {
            match *self.b.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        let s = &self.b[start..self.at];
        self.at += 1;
        Some(s)
    }

    /// A plain number: digits, no leading zero (but `0` itself), and at most one `.` with
    /// digits on both sides; its digits as one integer (`None` past `u64`) and how many follow
    /// the point.
    fn number(&mut self) -> Option<(u64, usize)> {
        let start = self.at;
        let mut mantissa = 0u64;
        let mut digits = |c: &mut Self| -> Option<usize> {
            let s = c.at;
            while let Some(&b) = c.b.get(c.at).filter(|b| b.is_ascii_digit()) {
                mantissa = mantissa.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                c.at += 1;
            }
            Some(c.at - s)
        };
        let whole = digits(self)?;
        if whole == 0 || (whole > 1 && self.b[start] == b'0') {
            return None;
        }
        let mut scale = 0;
        if self.b.get(self.at) == Some(&b'.') {
            self.at += 1;
            scale = digits(self)?;
            if scale == 0 {
                return None;
            }
        }
        Some((mantissa, scale))
    }

    /// A number as dec64: the digits and the scale as written, as [`Decimal::parse`] takes
    /// them (`None` when it is not plain or does not fit).
    fn dec64(&mut self) -> Option<i64> {
        let (mantissa, scale) = self.number()?;
        dec64(Decimal::new(
            u128::from(mantissa),
            u8::try_from(scale).ok()?,
        )?)
    }

    /// `{"price":P,"qty":Q},...]` (after the `[`), each level's pair appended to `out`.
    fn levels(&mut self, out: &mut Vec<i64>) -> Option<()> {
        if self.lit(b"]").is_some() {
            return Some(());
        }
        loop {
            self.lit(br#"{"price":"#)?;
            let price = self.dec64()?;
            self.lit(br#","qty":"#)?;
            let qty = self.dec64()?;
            self.lit(b"}")?;
            out.push(price);
            out.push(qty);
            if self.lit(b"]").is_some() {
                return Some(());
            }
            self.lit(b",")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book_rows::{is_canonical, levels_dec64};
    use crate::kraken::{self, Frame};
    use proptest::prelude::*;

    /// The columns the general path stores for `text` as a book row without `raw` in Kraken's
    /// exact layout, or `None` when it stores it otherwise (a row with `raw`, or not in the book
    /// table) or the frame is that layout spaced otherwise (stored without `raw` as well, by the
    /// general path: `read` leaves it there).
    fn general(text: &str) -> Option<Canonical<'_>> {
        let Ok(Frame::Book(book)) = kraken::decode(text) else {
            return None;
        };
        let [data] = book.data.as_slice() else {
            return None;
        };
        let levels = levels_dec64(&data.bids, &data.asks)?;
        if !is_canonical(book.kind, data, text.as_bytes()) {
            return None;
        }
        let symbol = match &data.symbol {
            std::borrow::Cow::Borrowed(s) => *s,
            // The writer escaped it: not a frame `read` takes.
            std::borrow::Cow::Owned(_) => return None,
        };
        Some(Canonical {
            kind: book.kind,
            symbol,
            levels,
            n_bids: data.bids.len(),
            checksum: data.checksum,
            timestamp: data.timestamp?,
        })
    }

    /// `read`'s answer, checked against the general path's whenever it answers.
    fn agree(text: &str) -> Option<Canonical<'_>> {
        let fast = read(text.as_bytes());
        if let Some(fast) = &fast {
            assert_eq!(general(text).as_ref(), Some(fast), "{text}");
        }
        fast
    }

    #[test]
    fn reads_every_book_frame_of_the_real_captures_as_the_general_path_does() {
        let (mut read_here, mut general_rows) = (0, 0);
        for record in krakenbook_testkit::captured_records() {
            let frame = record.frame_text().unwrap();
            if general(frame).is_some() {
                general_rows += 1;
                assert!(agree(frame).is_some(), "declined a Kraken frame: {frame}");
                read_here += 1;
            } else {
                assert!(agree(frame).is_none(), "{frame}");
            }
        }
        assert!(read_here > 4900, "{read_here} of {general_rows}");
    }

    #[test]
    fn declines_what_the_general_path_stores_otherwise_or_writes_differently() {
        let ok = r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":97000.1,"qty":0.5}],"asks":[],"checksum":123,"timestamp":"2026-08-17T16:01:57.687440Z"}]}"#;
        let fast = agree(ok).expect("a plain Kraken update");
        assert_eq!(fast.levels.len(), 2);
        assert_eq!(fast.n_bids, 1);
        for (from, to) in [
            // A space, another key order, an escape in the symbol.
            (r#""bids":["#, r#""bids": ["#),
            (
                r#"{"channel":"book","type":"update""#,
                r#"{"type":"update","channel":"book""#,
            ),
            ("BTC/USD", r"BTC\/USD"),
            // Numbers: leading zero, exponent, sign, a bare point, quotes, too many digits.
            ("97000.1", "097000.1"),
            ("97000.1", "9.70001e4"),
            ("0.5", "-0.5"),
            ("0.5", "0."),
            ("0.5", "\"0.5\""),
            ("0.5", "1234567890123456789"),
            // Past u64 (2^64 wraps to 0, which dec64 would take).
            ("0.5", "18446744073709551616"),
            ("0.5", "1844674407370955161.6"),
            ("0.5", "0.0000000000000000000000000000001"),
            // Checksum: leading zero, a point, beyond u32.
            (":123,", ":0123,"),
            (":123,", ":123.0,"),
            (":123,", ":4294967296,"),
            // Timestamps: nanoseconds, milliseconds, a leap second, no such day, `t`, an offset.
            ("57.687440Z", "57.687440123Z"),
            ("57.687440Z", "57.687Z"),
            ("16:01:57", "23:59:60"),
            ("2026-08-17", "2026-02-30"),
            ("17T16", "17t16"),
            ("687440Z", "687440+00:00"),
            // Two data elements, something after the end, another channel or type.
            (
                "}]}",
                r#"},{"symbol":"X","bids":[],"asks":[],"checksum":1}]}"#,
            ),
            ("}]}", "}]} "),
            (r#""type":"update""#, r#""type":"delta""#),
        ] {
            let text = ok.replacen(from, to, 1);
            assert_ne!(text, ok, "{from} not in the frame");
            assert_eq!(agree(&text), None, "{text}");
        }
        // No timestamp: the row's timestamp would be the receive time, and the frame is kept.
        let no_time = ok.replace(r#","timestamp":"2026-08-17T16:01:57.687440Z""#, "");
        assert_eq!(agree(&no_time), None);
    }

    fn arb_number() -> impl Strategy<Value = String> {
        prop_oneof![
            // Written as Kraken writes them: `scale` digits after the point.
            (0u128..100_000_000_000, 0u8..12)
                .prop_map(|(m, s)| Decimal::new(m, s).unwrap().to_string()),
            Just("0".to_owned()),
            Just("0.0".to_owned()),
            Just("1.50".to_owned()),
            Just("288230376151711743".to_owned()),
            Just("288230376151711744".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just("18446744073709551616".to_owned()),
            "[1-9][0-9]{17,24}(\\.[0-9]{1,6})?",
            Just("1e5".to_owned()),
        ]
    }

    fn arb_level() -> impl Strategy<Value = String> {
        (arb_number(), arb_number()).prop_map(|(p, q)| format!(r#"{{"price":{p},"qty":{q}}}"#))
    }

    fn arb_time() -> impl Strategy<Value = String> {
        (
            1677i64..=2262,
            1u32..13,
            1u32..32,
            0u32..25,
            0u32..61,
            0u32..61,
            0u32..1_000_000,
        )
            .prop_map(|(y, mo, d, h, mi, s, us)| {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
            })
    }

    fn arb_frame() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(arb_level(), 0..6),
            prop::collection::vec(arb_level(), 0..6),
            prop_oneof![Just("snapshot"), Just("update")],
            prop_oneof![
                Just("BTC/USD"),
                Just("MINA/GBP"),
                Just("Ä/€"),
                Just("🦑/USD"),
                Just("A\u{7f}B"),
            ],
            any::<u32>(),
            arb_time(),
        )
            .prop_map(|(bids, asks, kind, symbol, checksum, ts)| {
                format!(
                    r#"{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}","bids":[{}],"asks":[{}],"checksum":{checksum},"timestamp":"{ts}"}}]}}"#,
                    bids.join(","),
                    asks.join(",")
                )
            })
    }

    proptest! {
        /// Both ways: `read` answers exactly when the general path stores the frame as a row
        /// without `raw`, and then with its columns (for symbols that need no escape: `read`
        /// leaves an escaped one to the general path; the limit on levels is the encoder's,
        /// tested in `rows::tests`).
        #[test]
        fn answers_exactly_when_and_what_the_general_path_does(text in arb_frame()) {
            let fast = agree(&text);
            prop_assert_eq!(fast.is_some(), general(&text).is_some(), "{}", text);
        }

        #[test]
        fn a_changed_byte_never_makes_it_disagree(text in arb_frame(), at in 0usize..400, byte in any::<u8>()) {
            let mut bytes = text.into_bytes();
            let i = at % bytes.len();
            bytes[i] = byte;
            if let Ok(text) = String::from_utf8(bytes.clone()) {
                agree(&text);
            } else {
                // Not text: the general path keeps it byte for byte; `read` must decline.
                prop_assert!(read(&bytes).is_none());
            }
        }

        #[test]
        fn a_timestamp_is_read_only_when_it_prints_back_as_sent(ts in arb_time()) {
            let read = micros(ts.as_bytes());
            let printed = Timestamp::parse(&ts).ok().map(|t| t.to_string());
            prop_assert_eq!(read.is_some(), printed.as_deref() == Some(ts.as_str()), "{}", ts);
        }
    }
}
