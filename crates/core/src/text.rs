//! Text from the outside world made safe to print.
//!
//! Frames, symbols and error messages come from a peer that may lie: a symbol such as
//! `"\u{1b}[2J"` would clear an operator's terminal, and a newline inside an error text would forge
//! a log line. Everything the collector prints that came from a frame goes through [`printable`]
//! (or [`printable_bytes`] for bytes that may not be UTF-8), which writes every control character
//! (C0, DEL, C1) as a visible escape and leaves everything else as it was.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control character escaped (`\n`, `\t`, `\r`, `\u{1b}`...); borrowed when
/// there is nothing to escape.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_char(&mut out, c);
    }
    Cow::Owned(out)
}

/// `bytes` as text: valid UTF-8 as [`printable`] writes it, every other byte as `\xNN`.
pub fn printable_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c);
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// At most `max` characters of `text`, made printable, with `…` when cut.
pub fn printable_prefix(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        push_char(&mut out, c);
    }
    out
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_control() => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_escapes() {
        for (input, expected) in [
            ("BTC/USD", "BTC/USD"),
            ("a\nb", "a\\nb"),
            ("\u{1b}[2J", "\\u{1b}[2J"),
            ("tab\there\r", "tab\\there\\r"),
            ("del\u{7f}", "del\\u{7f}"),
            ("c1\u{9b}31m", "c1\\u{9b}31m"),
            ("', DROP TABLE x;--", "', DROP TABLE x;--"),
            ("日本", "日本"),
        ] {
            assert_eq!(printable(input), expected, "{input:?}");
        }
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_written_as_hex() {
        assert_eq!(printable_bytes(b"ok\xff\x00z"), "ok\\xff\\u{0}z");
        assert_eq!(printable_prefix("abc\ndef", 4), "abc\\n…");
        assert_eq!(printable_prefix("ab", 4), "ab");
    }
}
