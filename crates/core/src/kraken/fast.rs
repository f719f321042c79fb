//! A fast path for the frames that dominate the feed: `book` snapshots and updates in Kraken's
//! own layout, or in that layout spaced or ordered otherwise ([`super::decode`] offers it every
//! frame; any other is declined at its first key or value that is not a book's).
//!
//! [`decode_book`] reads a book frame in one pass, scanning each number's text once and parsing
//! it into a decimal (no `f64`, no allocation), and gives up (`None`) on anything it does not
//! expect: an escape in a string, an unknown key, a `null`, a number that is not a plain price.
//! [`super::decode`] then takes the general serde path, which accepts or rejects the frame with a
//! proper error. So the fast path never decides that a frame is invalid; it only speeds up frames
//! that are plainly valid, and a property test checks that whenever it answers, it answers
//! exactly what the general path does.

use std::borrow::Cow;

use super::book::{BookData, BookKind, BookMessage, Level, WireDecimal};
use crate::num::Decimal;
use crate::time::Timestamp;

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// `,` → `true` (more follows), `close` → `false`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let b = self.peek()?;
        self.at += 1;
        match b {
            b',' => Some(true),
            _ if b == close => Some(false),
            _ => None,
        }
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let bytes = self.text.as_bytes();
        loop {
            match *bytes.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        let s = &self.text[start..self.at];
        self.at += 1;
        Some(s)
    }

    fn key(&mut self) -> Option<&'a str> {
        let k = self.string()?;
        self.eat(b':')?;
        Some(k)
    }

    /// The text of a JSON number (strict grammar: no leading zeros, digits after a point).
    fn number_text(&mut self) -> Option<&'a str> {
        self.ws();
        let bytes = self.text.as_bytes();
        let start = self.at;
        let digits = |c: &mut Self| {
            let s = c.at;
            while bytes.get(c.at).is_some_and(u8::is_ascii_digit) {
                c.at += 1;
            }
            c.at - s
        };
        let int = digits(self);
        if int == 0 || (int > 1 && bytes[start] == b'0') {
            return None;
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(&self.text[start..self.at])
    }

    /// A price or quantity, read in the same pass that finds its text: Kraken's plain numbers
    /// (no exponent, at most 19 digits) are summed into a `u64` as they are scanned, which is
    /// exactly what [`Decimal::parse`] makes of them (every digit into the mantissa, the fraction
    /// digits as the scale); anything else is left to [`Decimal::parse`].
    fn decimal(&mut self) -> Option<WireDecimal<'a>> {
        self.ws();
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut i = start;
        let mut mantissa: u64 = 0;
        let mut digits = |i: &mut usize| {
            let s = *i;
            while let Some(&b) = bytes.get(*i)
                && b.is_ascii_digit()
            {
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                *i += 1;
            }
            *i - s
        };
        let int = digits(&mut i);
        // The strict grammar of `number_text`: no leading zeros, digits after a point.
        if int == 0 || (int > 1 && bytes[start] == b'0') {
            return None;
        }
        let mut frac = 0;
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            frac = digits(&mut i);
            if frac == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = bytes.get(i) {
            let text = self.number_text()?;
            return Some(WireDecimal {
                value: Decimal::parse(text).ok()?,
                text,
            });
        }
        self.at = i;
        let text = &self.text[start..i];
        // At most 19 digits always fit a u64 (the sum above did not wrap), and a scale of at
        // most 19 is within Decimal::MAX_SCALE.
        let value = if int + frac <= 19 {
            Decimal::new(u128::from(mantissa), u8::try_from(frac).ok()?)?
        } else {
            Decimal::parse(text).ok()?
        };
        Some(WireDecimal { value, text })
    }

    /// Takes `literal` if the text continues with it, exactly.
    fn literal(&mut self, literal: &[u8]) -> bool {
        let taken = self
            .text
            .as_bytes()
            .get(self.at..)
            .is_some_and(|rest| rest.starts_with(literal));
        if taken {
            self.at += literal.len();
        }
        taken
    }

    fn levels(&mut self) -> Option<Vec<Level<'a>>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Some(out);
        }
        loop {
            self.eat(b'{')?;
            let (mut price, mut qty) = (None, None);
            loop {
                // Kraken's own keys without whitespace are matched whole; any other spelling
                // goes through `key`, which reads them just the same. Which of the two it is
                // stays a bool (comparing the key as a string again was 2% of a decode).
                let is_price = if self.literal(br#""price":"#) {
                    true
                } else if self.literal(br#""qty":"#) {
                    false
                } else {
                    match self.key()? {
                        "price" => true,
                        "qty" => false,
                        _ => return None,
                    }
                };
                let field = if is_price { &mut price } else { &mut qty };
                if field.is_some() {
                    return None;
                }
                *field = Some(self.decimal()?);
                if !self.more(b'}')? {
                    break;
                }
            }
            out.push(Level {
                price: price?,
                qty: qty?,
            });
            if !self.more(b']')? {
                return Some(out);
            }
        }
    }

    fn data(&mut self) -> Option<BookData<'a>> {
        self.eat(b'{')?;
        let (mut symbol, mut bids, mut asks, mut checksum, mut timestamp) =
            (None, None, None, None, None);
        // The keys as Kraken writes them, in its order, are matched whole (see `levels`).
        let mut next = 0;
        loop {
            let key = match next {
                0 if self.literal(br#""symbol":"#) => "symbol",
                1 if self.literal(br#""bids":"#) => "bids",
                2 if self.literal(br#""asks":"#) => "asks",
                3 if self.literal(br#""checksum":"#) => "checksum",
                4 if self.literal(br#""timestamp":"#) => "timestamp",
                _ => self.key()?,
            };
            next += 1;
            match key {
                "symbol" if symbol.is_none() => symbol = Some(self.string()?),
                "bids" if bids.is_none() => bids = Some(self.levels()?),
                "asks" if asks.is_none() => asks = Some(self.levels()?),
                "checksum" if checksum.is_none() => {
                    let text = self.number_text()?;
                    checksum = Some(text.parse::<u32>().ok()?);
                }
                "timestamp" if timestamp.is_none() => {
                    timestamp = Some(Timestamp::parse(self.string()?).ok()?)
                }
                _ => return None,
            }
            if !self.more(b'}')? {
                break;
            }
        }
        Some(BookData {
            symbol: Cow::Borrowed(symbol?),
            bids: bids.unwrap_or_default(),
            asks: asks.unwrap_or_default(),
            checksum: checksum?,
            timestamp,
        })
    }
}

/// Decodes a plainly valid `book` frame, or returns `None` to leave it to the general path.
pub(super) fn decode_book(text: &str) -> Option<BookMessage<'_>> {
    let mut c = Cursor { text, at: 0 };
    c.eat(b'{')?;
    let (mut channel, mut kind, mut data) = (false, None, None);
    let mut next = 0;
    loop {
        let key = match next {
            0 if c.literal(br#""channel":"#) => "channel",
            1 if c.literal(br#""type":"#) => "type",
            2 if c.literal(br#""data":"#) => "data",
            _ => c.key()?,
        };
        next += 1;
        match key {
            "channel" if !channel => {
                if c.string()? != "book" {
                    return None;
                }
                channel = true;
            }
            "type" if kind.is_none() => {
                kind = Some(match c.string()? {
                    "snapshot" => BookKind::Snapshot,
                    "update" => BookKind::Update,
                    _ => return None,
                })
            }
            "data" if data.is_none() => {
                c.eat(b'[')?;
                let mut items = Vec::with_capacity(1);
                c.ws();
                if c.peek() == Some(b']') {
                    c.at += 1;
                } else {
                    loop {
                        items.push(c.data()?);
                        if !c.more(b']')? {
                            break;
                        }
                    }
                }
                data = Some(items);
            }
            _ => return None,
        }
        if !c.more(b'}')? {
            break;
        }
    }
    c.ws();
    if c.at != text.len() || !channel {
        return None;
    }
    Some(BookMessage {
        kind: kind?,
        data: data?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kraken::{Frame, decode_general};
    use proptest::prelude::*;

    /// The fast path's answer, checked against the general path's.
    fn agree(text: &str) -> Option<BookMessage<'_>> {
        let fast = decode_book(text);
        if let Some(fast) = &fast {
            assert_eq!(
                decode_general(text),
                Ok(Frame::Book(fast.clone())),
                "{text}"
            );
        }
        fast
    }

    #[test]
    fn takes_every_book_frame_of_the_real_captures() {
        let mut taken = 0;
        for frame in crate::kraken::capture::fixture_received_frames().concat() {
            if frame.starts_with(r#"{"channel":"book""#) {
                assert!(
                    agree(&frame).is_some(),
                    "fast path declined a real frame: {frame}"
                );
                taken += 1;
                // Spaced as Python's `json.dumps` spaces it, and pretty-printed (Kraken's
                // strings hold no `,` and no `":`): read in one pass too, which `decode`
                // now offers every frame.
                let python = frame.replace(',', ", ").replace("\":", "\": ");
                let pretty = python.replace('{', "{\n\t").replace('}', "\r\n}");
                for spaced in [python, pretty] {
                    assert!(agree(&spaced).is_some(), "declined spaced: {spaced}");
                }
            }
        }
        assert!(taken > 4900, "{taken}");
    }

    #[test]
    fn declines_what_it_does_not_expect() {
        for text in [
            r#"{"channel":"book","type":"update","data":[{"symbol":"BTC\/USD","bids":[],"asks":[],"checksum":1}]}"#,
            r#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],"checksum":1,"extra":1}]}"#,
            r#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"bids":[],"asks":[],"checksum":1}]}"#,
            r#"{"channel":"book","channel":"book","type":"update","data":[]}"#,
            r#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":01,"qty":1}],"asks":[],"checksum":1}]}"#,
            r#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],"checksum":4294967296}]}"#,
            r#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],"checksum":1,"timestamp":null}]}"#,
            r#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[],"asks":[],"checksum":1}]} x"#,
            r#"{"channel":"book","type":"update","data":[{"symbol":"X","bids":[{"price":1}],"asks":[],"checksum":1}]}"#,
            r#"{"channel":"ticker","type":"update","data":[]}"#,
        ] {
            assert!(decode_book(text).is_none(), "{text}");
        }
    }

    fn arb_number() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..10_000_000, 0usize..9).prop_map(|(m, s)| {
                let d = m.to_string();
                if s == 0 {
                    d
                } else if d.len() > s {
                    format!("{}.{}", &d[..d.len() - s], &d[d.len() - s..])
                } else {
                    format!("0.{}{}", "0".repeat(s - d.len()), d)
                }
            }),
            (1u64..100, 1u32..9).prop_map(|(m, e)| format!("{m}e-0{e}")),
            // Around the 19 digits read in one pass: up to 38 digits (all valid decimals).
            ("[1-9][0-9]{0,19}", prop::option::of("[0-9]{1,18}")).prop_map(|(int, frac)| {
                match frac {
                    Some(frac) => format!("{int}.{frac}"),
                    None => int,
                }
            }),
            Just("0".to_owned()),
            Just("-1.5".to_owned()),
            Just("\"2.5\"".to_owned()),
        ]
    }

    fn arb_level() -> impl Strategy<Value = String> {
        (arb_number(), arb_number(), any::<bool>(), " ?").prop_map(|(p, q, swap, ws)| {
            if swap {
                format!(r#"{{{ws}"qty":{q},"price"{ws}:{p}}}"#)
            } else {
                format!(r#"{{"price":{p},{ws}"qty":{q}{ws}}}"#)
            }
        })
    }

    fn arb_frame() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(arb_level(), 0..5),
            prop::collection::vec(arb_level(), 0..5),
            prop_oneof![Just("snapshot"), Just("update"), Just("delta")],
            prop_oneof![Just("BTC/USD"), Just("BTC\\/USD"), Just("MINA/GBP")],
            any::<u32>(),
            prop::option::of(Just("2026-08-17T16:01:57.687440Z")),
            0usize..3,
            0usize..4,
        )
            .prop_map(|(bids, asks, kind, symbol, checksum, ts, order, data_order)| {
                let ts = ts.map(|t| format!(r#","timestamp":"{t}""#)).unwrap_or_default();
                let (bids, asks) = (bids.join(","), asks.join(", "));
                // Kraken's order and spelling, then others: whitespace around the first key, the
                // keys reversed, bids and asks swapped (the keys the decoder expects next are
                // not there, and it reads whatever is).
                let data = match data_order {
                    0 => format!(
                        r#"[{{"symbol":"{symbol}","bids":[{bids}],"asks":[{asks}],"checksum":{checksum}{ts}}}]"#
                    ),
                    1 => format!(
                        r#"[{{ "symbol" : "{symbol}","bids":[{bids}],"asks":[{asks}],"checksum":{checksum}{ts}}}]"#
                    ),
                    2 => format!(
                        r#"[{{"checksum":{checksum},"asks":[{asks}],"bids":[{bids}],"symbol":"{symbol}"{ts}}}]"#
                    ),
                    _ => format!(
                        r#"[{{"symbol":"{symbol}","asks":[{asks}],"bids":[{bids}],"checksum":{checksum}{ts}}}]"#
                    ),
                };
                match order {
                    0 => format!(r#"{{"channel":"book","type":"{kind}","data":{data}}}"#),
                    1 => format!(r#"{{ "type" : "{kind}" , "channel":"book", "data":{data} }}"#),
                    _ => format!(r#"{{"data":{data},"channel":"book","type":"{kind}"}}"#),
                }
            })
    }

    /// What `Cursor::decimal` did in two passes before it read numbers in one: the number's
    /// text, then `Decimal::parse` of it. The exact mantissa and scale, the text and where the
    /// cursor stops.
    fn two_passes(text: &str) -> Option<(u128, u8, &str, usize)> {
        let mut c = Cursor { text, at: 0 };
        let t = c.number_text()?;
        let v = Decimal::parse(t).ok()?;
        Some((v.mantissa(), v.scale(), t, c.at))
    }

    fn one_pass(text: &str) -> Option<(u128, u8, &str, usize)> {
        let mut c = Cursor { text, at: 0 };
        let d = c.decimal()?;
        Some((d.value.mantissa(), d.value.scale(), d.text, c.at))
    }

    /// Number texts around every edge of the one-pass reading: 1 to 45 digits (19 and 20, past
    /// u64, past u128's 38 digits), fractions past `Decimal::MAX_SCALE`, leading zeros,
    /// exponents (complete or not), signs, a point without digits, what follows the number.
    fn arb_number_text() -> impl Strategy<Value = String> {
        (
            "[ ]?-?[0-9]{0,45}",
            prop::option::of("\\.[0-9]{0,35}"),
            prop::option::of("[eE][+-]?[0-9]{0,3}"),
            "[ ,}x.]?",
        )
            .prop_map(|(int, frac, exp, tail)| {
                format!(
                    "{int}{}{}{tail}",
                    frac.unwrap_or_default(),
                    exp.unwrap_or_default()
                )
            })
    }

    #[test]
    fn one_pass_decimals_are_the_two_passes_at_the_edges() {
        for text in [
            "0",
            "0.0",
            "00",
            "01",
            "1.",
            ".5",
            "1e5",
            "1.5E+3",
            "5e-05",
            "62802.5,",
            "0.00005100}",
            "9999999999999999999",
            "10000000000000000000",
            "18446744073709551615",
            "18446744073709551616",
            "1.000000000000000000",
            "0.0000000000000000001",
            "0.0000000000000000000000000000001",
            "99999999999999999999999999999999999999",
            "999999999999999999999999999999999999999",
            "123456789012345678901234567.12345678",
            "-1",
            " 7",
        ] {
            assert_eq!(one_pass(text), two_passes(text), "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn one_pass_decimals_are_the_two_passes(text in arb_number_text()) {
            prop_assert_eq!(one_pass(&text), two_passes(&text), "{:?}", text);
        }
    }

    proptest! {
        #[test]
        fn whenever_the_fast_path_answers_it_agrees_with_the_general_path(text in arb_frame()) {
            let fast = agree(&text);
            // The plain Kraken layout with plain numbers is always taken.
            let plain = !text.contains('\\') && !text.contains("-1.5") && !text.contains("\"2.5\"")
                && !text.contains("delta");
            prop_assert_eq!(fast.is_some(), plain, "{}", text);
        }

        #[test]
        fn never_panics_on_mutated_frames(text in arb_frame(), at in 0usize..400, byte in any::<u8>()) {
            let mut bytes = text.into_bytes();
            let i = at % bytes.len();
            bytes[i] = byte;
            let text = String::from_utf8_lossy(&bytes);
            agree(&text);
        }
    }

    /// A hostile exchange's attacks one at a time, each with whether the fast path takes it:
    /// what it takes, it must decode as serde does (`agree`); what it declines, serde decides.
    /// It would catch any of these taken when it should not be (or left when it should not).
    #[test]
    fn hostile_levels_one_by_one() {
        // (what it covers, the one bid level, taken)
        let cases = [
            (
                "Kraken's own",
                r#"{"price":62802.5,"qty":0.00005100}"#,
                true,
            ),
            (
                "zero, and zero at scale 1",
                r#"{"price":0.0,"qty":0}"#,
                true,
            ),
            (
                "19 digits: the one pass",
                r#"{"price":9999999999999999999,"qty":0.000000000000000001}"#,
                true,
            ),
            (
                "20 digits: past u64",
                r#"{"price":18446744073709551616,"qty":1.0000000000000000000}"#,
                true,
            ),
            (
                "39 digits, u128::MAX",
                r#"{"price":1,"qty":340282366920938463463374607431768211455}"#,
                true,
            ),
            (
                "39 digits past u128",
                r#"{"price":1,"qty":999999999999999999999999999999999999999}"#,
                false,
            ),
            (
                "30 decimals",
                r#"{"price":1,"qty":0.000000000000000000000000000001}"#,
                true,
            ),
            (
                "31 decimals: past MAX_SCALE",
                r#"{"price":1,"qty":0.0000000000000000000000000000001}"#,
                false,
            ),
            ("exponents", r#"{"price":1.5E+3,"qty":5e-05}"#, true),
            (
                "an exponent out of range",
                r#"{"price":1e400,"qty":1}"#,
                false,
            ),
            ("minus zero", r#"{"price":-0,"qty":1}"#, false),
            ("negative", r#"{"price":1,"qty":-1.5}"#, false),
            ("a leading zero", r#"{"price":01,"qty":1}"#, false),
            (
                "a leading zero before the point",
                r#"{"price":00.5,"qty":1}"#,
                false,
            ),
            ("a point without digits", r#"{"price":1.,"qty":1}"#, false),
            ("a quoted number", r#"{"price":"2.5","qty":1}"#, false),
            ("null", r#"{"price":null,"qty":1}"#, false),
            (
                "keys swapped, JSON's four whitespaces",
                "{ \"qty\"\t:\r\n1 ,\"price\" :2\t}",
                true,
            ),
            ("an escaped key", r#"{"pr\u0069ce":1,"qty":1}"#, false),
            (
                "a key extending Kraken's",
                r#"{"price2":1,"price":1,"qty":1}"#,
                false,
            ),
            ("another", r#"{"price":1,"qtyx":1,"qty":1}"#, false),
            ("a key cut short", r#"{"pric":1,"price":1,"qty":1}"#, false),
            ("a duplicate key", r#"{"price":1,"qty":1,"qty":2}"#, false),
            ("a missing key", r#"{"price":1}"#, false),
            (
                "a NUL after a number",
                "{\"price\":1\u{0},\"qty\":1}",
                false,
            ),
            (
                "a form feed as whitespace",
                "{\"price\":1,\u{c}\"qty\":1}",
                false,
            ),
            ("a trailing comma", r#"{"price":1,"qty":1,}"#, false),
        ];
        for (what, level, taken) in cases {
            let text = format!(
                r#"{{"channel":"book","type":"update","data":[{{"symbol":"BTC/USD","bids":[{level}],"asks":[],"checksum":1}}]}}"#
            );
            assert_eq!(agree(&text).is_some(), taken, "{what}: {text}");
        }
    }

    /// No proper prefix of a frame is a frame: each is declined (and serde rejects it). It would
    /// catch a decoder that answers before it has read its text to the end.
    #[test]
    fn every_cut_of_a_frame_is_declined() {
        let text = r#"{"channel":"book","type":"update","data":[{"symbol":"MINA/GBP","bids":[{"price":0.0292,"qty":0}],"asks":[{"price":0.0293,"qty":12.5}],"checksum":2678396431,"timestamp":"2026-08-17T16:01:57.687440Z"}]}"#;
        assert!(agree(text).is_some());
        for end in 0..text.len() {
            assert!(agree(&text[..end]).is_none(), "{}", &text[..end]);
            assert!(decode_general(&text[..end]).is_err(), "{}", &text[..end]);
        }
    }

    /// JSON whitespace, mostly none, and now and then a byte that only looks like it (form
    /// feed, vertical tab, NUL, a no-break space).
    fn hws() -> impl Strategy<Value = String> {
        prop_oneof![
            60 => Just(String::new()),
            10 => prop::collection::vec(prop::sample::select(vec![" ", "\t", "\n", "\r"]), 1..3)
                .prop_map(|v| v.concat()),
            1 => prop::sample::select(vec!["\u{c}", "\u{b}", "\u{0}", "\u{a0}"]).prop_map(str::to_owned),
        ]
    }

    /// A key as Kraken writes it, or escaped, or a prefix / extension of it, or another case.
    fn hkey(name: &'static str) -> impl Strategy<Value = String> {
        let escaped = format!(r#""\u{:04x}{}""#, name.as_bytes()[0], &name[1..]);
        let escaped_last = format!(
            r#""{}\u{:04X}""#,
            &name[..name.len() - 1],
            name.as_bytes()[name.len() - 1]
        );
        prop_oneof![
            60 => Just(format!(r#""{name}""#)),
            1 => Just(escaped),
            1 => Just(escaped_last),
            1 => Just(format!(r#""{name}2""#)),
            1 => Just(format!(r#""{name}x""#)),
            1 => Just(format!(r#""{}""#, &name[..name.len() - 1])),
            1 => Just(format!(r#""{}""#, name.to_uppercase())),
            1 => Just(format!(r#""{name} ""#)),
        ]
    }

    fn hnumber() -> impl Strategy<Value = String> {
        prop_oneof![
            30 => ("[1-9][0-9]{0,21}", prop::option::of("\\.[0-9]{1,33}"))
                .prop_map(|(i, f)| format!("{i}{}", f.unwrap_or_default())),
            10 => "0\\.[0-9]{1,33}",
            2 => "[1-9][0-9]{0,3}(\\.[0-9]{1,4})?[eE][+-]?[0-9]{1,3}",
            4 => prop::sample::select(vec![
                "0", "0.0", "-0", "-0.0", "00", "01", "00.5", "1.", ".5", "-1", "+1", "1e5",
                "1E+2", "1.5e-3", "1e400", "1e-40", "0e0", "0E-0", "\"2.5\"", "null", "true",
                "[]", "{}", "1.0e", "NaN", "9999999999999999999", "10000000000000000000",
                "18446744073709551615", "18446744073709551616", "0.0000000000000000001",
                "0.000000000000000000000000000001", "0.0000000000000000000000000000001",
                "99999999999999999999999999999999999999",
                "340282366920938463463374607431768211455", "1\u{0}", "1 2",
            ])
            .prop_map(str::to_owned),
        ]
    }

    /// An object of the given entries: each value's key hostile now and then, entries dropped,
    /// doubled, unknown ones added, and the order shuffled, with whitespace anywhere JSON allows.
    fn hobject(entries: Vec<BoxedStrategy<(String, String)>>) -> BoxedStrategy<String> {
        let entry = |s: BoxedStrategy<(String, String)>| {
            (s, hws(), hws(), hws(), hws(), prop::bool::weighted(0.97))
                .prop_map(|((k, v), a, b, c, d, keep)| keep.then(|| format!("{a}{k}{b}:{c}{v}{d}")))
        };
        let n = entries.len();
        let all: Vec<_> = entries.into_iter().map(entry).collect();
        (
            all,
            prop::option::weighted(0.2, 0..n),
            prop::option::weighted(0.05, Just(r#""x":1"#.to_owned())),
            prop::bool::weighted(0.15),
            hws(),
        )
            .prop_flat_map(|(entries, doubles, extra, shuffle, ws)| {
                let mut list: Vec<String> = entries.iter().flatten().cloned().collect();
                if let Some(Some(e)) = doubles.and_then(|i| entries.get(i)) {
                    list.push(e.clone());
                }
                list.extend(extra);
                let list = if shuffle {
                    Just(list).prop_shuffle().boxed()
                } else {
                    Just(list).boxed()
                };
                list.prop_map(move |l| {
                    if l.is_empty() {
                        format!("{{{ws}}}")
                    } else {
                        format!("{{{}}}", l.join(","))
                    }
                })
            })
            .boxed()
    }

    fn hpair(key: &'static str, value: BoxedStrategy<String>) -> BoxedStrategy<(String, String)> {
        (hkey(key), value).boxed()
    }

    fn harray(item: BoxedStrategy<String>, max: usize) -> BoxedStrategy<String> {
        prop_oneof![
            20 => (prop::collection::vec((item, hws()), 0..max), hws()).prop_map(|(v, ws)| {
                let items: Vec<String> = v.into_iter().map(|(i, w)| format!("{w}{i}")).collect();
                format!("[{}{ws}]", items.join(","))
            }),
            1 => prop::sample::select(vec!["null", "{}", "[1]", "[,]", "[{},]"]).prop_map(str::to_owned),
        ]
        .boxed()
    }

    fn hlevel() -> BoxedStrategy<String> {
        hobject(vec![
            hpair("price", hnumber().boxed()),
            hpair("qty", hnumber().boxed()),
        ])
    }

    /// Mostly `usual`, now and then one of `odd`.
    fn mostly(usual: &'static str, odd: Vec<&'static str>) -> BoxedStrategy<String> {
        prop_oneof![6 => Just(usual), 1 => prop::sample::select(odd)]
            .prop_map(str::to_owned)
            .boxed()
    }

    fn hdata() -> BoxedStrategy<String> {
        let symbol = mostly(
            r#""BTC/USD""#,
            vec![
                r#""BTC\/USD""#,
                r#""""#,
                "null",
                "1",
                "\"a\tb\"",
                "\"\u{20ac}/USD\"",
                "\"a\u{0}b\"",
                "\"\u{7f}\"",
            ],
        );
        let checksum = prop_oneof![
            6 => any::<u32>().prop_map(|c| c.to_string()),
            1 => prop::sample::select(vec![
                "0", "4294967295", "4294967296", "-1", "-0", "1.0", "1e3", "01", "\"5\"", "null",
                "99999999999999999999999",
            ])
            .prop_map(str::to_owned),
        ];
        let timestamp = mostly(
            r#""2026-08-17T16:01:57.687440Z""#,
            vec![
                r#""2026-08-17T16:01:57Z""#,
                r#""2026-08-17T18:01:57.687440+02:00""#,
                r#""2026-02-30T00:00:00Z""#,
                r#""x""#,
                "null",
                r#""2026-08-17T16:01:57.687440\u005a""#,
            ],
        );
        hobject(vec![
            hpair("symbol", symbol),
            hpair("bids", harray(hlevel(), 4)),
            hpair("asks", harray(hlevel(), 4)),
            hpair("checksum", checksum.boxed()),
            hpair("timestamp", timestamp),
        ])
    }

    fn hframe() -> BoxedStrategy<String> {
        let channel = mostly(
            r#""book""#,
            vec![r#""bo\u006fk""#, r#""Book""#, r#""book ""#, r#""ticker""#],
        );
        let kind = prop_oneof![
            Just(r#""snapshot""#.to_owned()),
            mostly(
                r#""update""#,
                vec![r#""delta""#, "null", r#""upd\u0061te""#],
            ),
        ];
        (
            hobject(vec![
                hpair("channel", channel),
                hpair("type", kind.boxed()),
                hpair("data", harray(hdata(), 2)),
            ]),
            hws(),
            hws(),
        )
            .prop_map(|(f, a, b)| format!("{a}{f}{b}"))
            .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        /// Book frames written as a hostile exchange might: each key now and then escaped
        /// (`"pr\u0069ce"`), extended (`"price2"`, `"qtyx"`), cut (`"pric"`), in capitals or
        /// with a space inside its quotes; entries dropped, doubled, unknown ones added, the
        /// order shuffled at each of the three levels; whitespace (and bytes that only look like
        /// it) anywhere JSON allows; numbers at every edge `Cursor::decimal` has (19 and 20
        /// digits, 2^64, 38 and 39 digits, scales past 30, exponents, `-0`, `0.0`, leading
        /// zeros, quoted, `null`); hostile symbols, checksums and timestamps; then a third of
        /// them cut short or with a byte inserted, replaced or removed. Whenever the fast path
        /// answers, it answers what serde does (about one frame in ten is taken); nothing
        /// panics. It would catch a key taken for another, a duplicate or an escape let through,
        /// a number read past 19 digits in one pass, or whitespace JSON does not allow.
        #[test]
        fn hostile_frames_are_declined_or_decoded_as_serde_decodes_them(
            text in hframe(),
            cut in any::<prop::sample::Index>(),
            how in 0u8..12,
            byte in any::<u8>(),
        ) {
            // As written, or cut short, or a byte inserted, replaced or removed.
            let mut bytes = text.into_bytes();
            let i = cut.index(bytes.len() + 1);
            match how {
                0 => bytes.truncate(i),
                1 => bytes.insert(i, byte),
                2 if i < bytes.len() => bytes[i] = byte,
                3 if i < bytes.len() => { bytes.remove(i); }
                _ => {}
            }
            let text = String::from_utf8_lossy(&bytes);
            agree(&text);
            let _ = crate::kraken::decode(&text);
        }
    }
}
