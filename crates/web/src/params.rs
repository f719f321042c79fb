//! The API's query parameters: parsed and checked without I/O, every refusal a [`BadRequest`]
//! that names the parameter and says what would be accepted (the page and scripts show it as is).
//!
//! What must hold: a value the peer sent is never trusted: symbols are short and made of the
//! characters pair names use, instants parse as RFC 3339, numbers lie in their ranges, ranges
//! are ordered and bounded, and a parameter the endpoint does not know is refused (a typo in a
//! script fails loudly instead of being ignored).

use std::collections::BTreeMap;

use crate::text::printable;
use crate::time::Timestamp;

/// A refused request: which parameter and why (the 400 response's JSON).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BadRequest {
    /// The parameter at fault.
    pub param: String,
    /// What is wrong and what would do.
    pub error: String,
}

impl BadRequest {
    fn new(param: &str, error: impl Into<String>) -> BadRequest {
        BadRequest {
            param: printable(param).into_owned(),
            error: error.into(),
        }
    }
}

/// The longest symbol accepted (Kraken's longest pair names are about 12 characters).
pub const MAX_SYMBOL: usize = 32;
/// The most levels a side the book and heatmap endpoints give.
pub const MAX_DEPTH: usize = 1000;
/// The most heatmap columns.
pub const MAX_COLUMNS: usize = 2000;
/// The longest heatmap range, in seconds (31 days).
pub const MAX_HEATMAP_SECONDS: i64 = 31 * 86_400;

/// A request's query string, decoded, with the parameters the endpoint knows.
#[derive(Debug)]
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    /// Decodes `query` (`a=1&b=2`, percent-encoded) and refuses any parameter not in `known`,
    /// and any given twice.
    pub fn parse(query: Option<&str>, known: &[&str]) -> Result<Params, BadRequest> {
        let mut values = BTreeMap::new();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !known.contains(&k.as_ref()) {
                return Err(BadRequest::new(
                    &k,
                    format!(
                        "unknown parameter {:?}; this endpoint takes: {}",
                        printable(&k),
                        known.join(", ")
                    ),
                ));
            }
            if values.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(BadRequest::new(&k, "given more than once"));
            }
        }
        Ok(Params { values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// A required symbol such as `BTC/USD`.
    pub fn symbol(&self) -> Result<String, BadRequest> {
        let s = self
            .get("symbol")
            .ok_or_else(|| BadRequest::new("symbol", "missing: give symbol=BTC/USD"))?;
        check_name("symbol", s, MAX_SYMBOL)
    }

    /// An optional collector identity.
    pub fn collector(&self) -> Result<Option<String>, BadRequest> {
        self.get("collector")
            .filter(|c| !c.is_empty())
            .map(|c| check_name("collector", c, 128))
            .transpose()
    }

    /// A required instant.
    pub fn instant(&self, name: &str) -> Result<Timestamp, BadRequest> {
        let text = self.get(name).ok_or_else(|| {
            BadRequest::new(
                name,
                format!("missing: give {name}=2026-11-24T10:00:00Z (RFC 3339)"),
            )
        })?;
        Timestamp::parse(text).map_err(|e| {
            BadRequest::new(
                name,
                format!(
                    "not an RFC 3339 instant ({}): give e.g. {name}=2026-11-24T10:00:00.250Z",
                    printable(&e.to_string())
                ),
            )
        })
    }

    /// An optional instant.
    pub fn optional_instant(&self, name: &str) -> Result<Option<Timestamp>, BadRequest> {
        match self.get(name) {
            Some(_) => self.instant(name).map(Some),
            None => Ok(None),
        }
    }

    /// An optional integer in `min..=max`, `default` when absent.
    pub fn integer(&self, name: &str, default: i64, min: i64, max: i64) -> Result<i64, BadRequest> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        let n: i64 = text.parse().map_err(|_| {
            BadRequest::new(
                name,
                format!("not an integer: give {name} between {min} and {max}"),
            )
        })?;
        if !(min..=max).contains(&n) {
            return Err(BadRequest::new(
                name,
                format!("{n} is out of range: give {name} between {min} and {max}"),
            ));
        }
        Ok(n)
    }

    /// A required integer (any `i64`).
    pub fn required_integer(&self, name: &str) -> Result<i64, BadRequest> {
        if self.get(name).is_none() {
            return Err(BadRequest::new(
                name,
                format!("missing: give {name}=<integer>"),
            ));
        }
        self.integer(name, 0, i64::MIN, i64::MAX)
    }

    /// A levels-per-side count (`depth`), 1 to [`MAX_DEPTH`].
    pub fn depth(&self, default: usize) -> Result<usize, BadRequest> {
        // Both bounds are small: the casts are exact.
        self.integer("depth", default as i64, 1, MAX_DEPTH as i64)
            .map(|d| d as usize)
    }

    /// A step direction: `next` (default) or `prev`.
    pub fn forward(&self) -> Result<bool, BadRequest> {
        match self.get("dir") {
            None | Some("next") => Ok(true),
            Some("prev") => Ok(false),
            Some(_) => Err(BadRequest::new("dir", "give dir=next or dir=prev")),
        }
    }

    /// A time range `from`..`to`: both required, `from` before `to`, at most `max_seconds` long.
    pub fn range(&self, max_seconds: i64) -> Result<(Timestamp, Timestamp), BadRequest> {
        let from = self.instant("from")?;
        let to = self.instant("to")?;
        if to <= from {
            return Err(BadRequest::new("to", "must be after from"));
        }
        if to.nanos_since(from) / 1_000_000_000 > max_seconds {
            return Err(BadRequest::new(
                "to",
                format!("the range is longer than {max_seconds} s: give a shorter one"),
            ));
        }
        Ok((from, to))
    }
}

/// A symbol or collector name: printable ASCII letters, digits and `/ . _ - :`, not empty.
fn check_name(param: &str, s: &str, max: usize) -> Result<String, BadRequest> {
    if s.is_empty() || s.len() > max {
        return Err(BadRequest::new(
            param,
            format!("must be 1 to {max} characters long"),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:".contains(&b))
    {
        return Err(BadRequest::new(
            param,
            format!(
                "{:?} has characters no {param} name has (letters, digits, / . _ - :)",
                printable(s)
            ),
        ));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_checked_and_refusals_name_the_parameter() {
        let known = &["symbol", "at", "depth", "from", "to", "dir", "collector"];
        // (query, what to read, Ok(rendered value) or Err(parameter at fault))
        type Read = fn(&Params) -> Result<String, BadRequest>;
        let symbol: Read = |p| p.symbol();
        let at: Read = |p| p.instant("at").map(|t| t.to_string());
        let depth: Read = |p| p.depth(10).map(|d| d.to_string());
        let range: Read = |p| p.range(3600).map(|(a, b)| format!("{a}..{b}"));
        let dir: Read = |p| p.forward().map(|f| f.to_string());
        let collector: Read = |p| p.collector().map(|c| format!("{c:?}"));
        let table: &[(&str, Read, Result<&str, &str>)] = &[
            ("symbol=BTC%2FUSD", symbol, Ok("BTC/USD")),
            ("symbol=BTC/USD", symbol, Ok("BTC/USD")),
            ("", symbol, Err("symbol")),
            ("symbol=", symbol, Err("symbol")),
            ("symbol=%3Cscript%3E", symbol, Err("symbol")),
            ("symbol=BTC%20USD", symbol, Err("symbol")),
            (
                "symbol=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                symbol,
                Err("symbol"),
            ),
            (
                "at=2026-11-24T10:00:00.25Z",
                at,
                Ok("2026-11-24T10:00:00.250000Z"),
            ),
            ("at=yesterday", at, Err("at")),
            ("", at, Err("at")),
            ("", depth, Ok("10")),
            ("depth=100", depth, Ok("100")),
            ("depth=0", depth, Err("depth")),
            ("depth=1001", depth, Err("depth")),
            ("depth=-1", depth, Err("depth")),
            ("depth=ten", depth, Err("depth")),
            (
                "from=2026-11-24T10:00:00Z&to=2026-11-24T11:00:00Z",
                range,
                Ok("2026-11-24T10:00:00.000000Z..2026-11-24T11:00:00.000000Z"),
            ),
            (
                "from=2026-11-24T10:00:00Z&to=2026-11-24T10:00:00Z",
                range,
                Err("to"),
            ),
            (
                "from=2026-11-24T10:00:00Z&to=2026-11-24T09:00:00Z",
                range,
                Err("to"),
            ),
            (
                "from=2026-11-24T10:00:00Z&to=2026-11-24T11:00:01Z",
                range,
                Err("to"),
            ),
            ("to=2026-11-24T10:00:00Z", range, Err("from")),
            ("", dir, Ok("true")),
            ("dir=prev", dir, Ok("false")),
            ("dir=back", dir, Err("dir")),
            ("", collector, Ok("None")),
            ("collector=host-a1b2", collector, Ok("Some(\"host-a1b2\")")),
            ("collector=a%27b", collector, Err("collector")),
        ];
        for (query, read, want) in table {
            let p = Params::parse(Some(query), known).unwrap();
            let got = read(&p).map_err(|e| e.param);
            assert_eq!(
                got.as_ref().map(String::as_str).map_err(String::as_str),
                *want,
                "{query}"
            );
        }
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        let e = Params::parse(Some("symbol=X&sybmol=Y"), &["symbol"]).unwrap_err();
        assert_eq!(e.param, "sybmol");
        assert!(e.error.contains("takes: symbol"), "{}", e.error);
        let e = Params::parse(Some("symbol=X&symbol=Y"), &["symbol"]).unwrap_err();
        assert_eq!(e.param, "symbol");
        // A control character in a parameter's name is escaped before it is echoed.
        let e = Params::parse(Some("a%0Ab=1"), &["symbol"]).unwrap_err();
        assert!(!e.param.contains('\n') && !e.error.contains('\n'), "{e:?}");
    }
}
