//! Where each archived file lives: hive-partitioned paths that DuckDB and polars read directly.
//!
//! ```text
//! book/pair=BTC-USD/date=2026-12-06/part-_hyper_1_5_chunk.parquet      every book row of the pair
//! marks/pair=BTC-USD/date=2026-12-06/part-_hyper_1_5_chunk.parquet     the rows coverage reads
//! other/pair=BTC-USD/date=2026-12-06/part-_hyper_1_5_chunk.parquet     other frames of the pair
//! other/pair=__HIVE_DEFAULT_PARTITION__/date=.../part-....parquet      other frames without one
//! states/pair=BTC-USD/date=2026-12-06/part-_hyper_1_5_chunk.parquet    book states
//! events/date=2026-12-06/part-_hyper_1_5_chunk.parquet                 feed events of the range
//! connections/date=2026-12-06/part-_hyper_1_5_chunk.parquet            connections overlapping it
//! ```
//!
//! `part-<chunk>`: the book table's chunk the range was (TimescaleDB's chunk table name, unique
//! for the life of the database: a chunk made again later for the same range is another part).
//! `date`: the UTC date of the range's start.
//!
//! **The pair key** is the symbol written so that the mapping can be undone and every object
//! store and file system takes it: `/` becomes `-`; ASCII letters, digits and `.` stay; every other
//! byte of the symbol's UTF-8 (`-`, `%`, `_`, `=`, a space, ...) is percent-encoded (`%2D`, `%25`,
//! `%5F`, ...). So `BTC/USD` is `BTC-USD`, `USDT-X/EUR` is `USDT%2DX-EUR`, a symbol without a
//! `/` never contains `-`. A missing symbol is `__HIVE_DEFAULT_PARTITION__` (Hive's name for a
//! null key, which no encoded symbol can be: `_` is always encoded), the empty one `__EMPTY__`,
//! and `.`/`..` are `%2E`/`%2E%2E`. The exact symbol is also a column of every file, and the key
//! is named `pair`, not `symbol`, so that DuckDB and polars never mix the two.
//!
//! What must always hold: [`decode_pair`] undoes [`encode_pair`] for every symbol, and two
//! different symbols never share a key.

use crate::time::Timestamp;

/// The key of rows without a symbol (Hive's name for a null partition value).
pub const NULL_PAIR: &str = "__HIVE_DEFAULT_PARTITION__";

/// The key of the empty symbol.
pub const EMPTY_PAIR: &str = "__EMPTY__";

/// Suffix of a file written but not yet verified (never read as part of the archive).
pub const TEMP_SUFFIX: &str = ".tmp";

/// The datasets of an archive, one top-level directory each.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// `krakenbook_book` rows.
    Book,
    /// Copies of the book rows the coverage model reads (snapshots, checksum failures and the
    /// verified message before each, each stream's last verified message).
    Marks,
    /// `krakenbook_other` rows.
    Other,
    /// `kraken_book_states` rows.
    States,
    /// `kraken_feed_events` rows.
    Events,
    /// `krakenbook_connections` rows.
    Connections,
}

impl Dataset {
    /// Every dataset, in the order they are written.
    pub const ALL: [Dataset; 6] = [
        Dataset::Book,
        Dataset::Marks,
        Dataset::Other,
        Dataset::States,
        Dataset::Events,
        Dataset::Connections,
    ];

    /// Its directory name.
    pub fn dir(self) -> &'static str {
        match self {
            Dataset::Book => "book",
            Dataset::Marks => "marks",
            Dataset::Other => "other",
            Dataset::States => "states",
            Dataset::Events => "events",
            Dataset::Connections => "connections",
        }
    }

    /// Whether its files are partitioned by pair.
    pub fn by_pair(self) -> bool {
        !matches!(self, Dataset::Events | Dataset::Connections)
    }
}

/// The pair key of a symbol (see the module doc).
pub fn encode_pair(symbol: Option<&str>) -> String {
    let Some(symbol) = symbol else {
        return NULL_PAIR.to_owned();
    };
    match symbol {
        "" => return EMPTY_PAIR.to_owned(),
        "." => return "%2E".to_owned(),
        ".." => return "%2E%2E".to_owned(),
        _ => {}
    }
    let mut out = String::with_capacity(symbol.len() + 4);
    for b in symbol.bytes() {
        match b {
            b'/' => out.push('-'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' => out.push(char::from(b)),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The symbol a pair key stands for (`Some(None)`: rows without a symbol), or `None` when the
/// key is not one [`encode_pair`] writes.
pub fn decode_pair(key: &str) -> Option<Option<String>> {
    match key {
        NULL_PAIR => return Some(None),
        EMPTY_PAIR => return Some(Some(String::new())),
        _ => {}
    }
    let mut bytes = Vec::with_capacity(key.len());
    let raw = key.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'-' => bytes.push(b'/'),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let hi = hex(*raw.get(i + 1)?)?;
                let lo = hex(*raw.get(i + 2)?)?;
                bytes.push((hi * 16 + lo) as u8);
                i += 2;
            }
            b if b.is_ascii_alphanumeric() || b == b'.' => bytes.push(b),
            _ => return None,
        }
        i += 1;
    }
    let symbol = String::from_utf8(bytes).ok()?;
    // Only the one spelling encode_pair writes.
    (encode_pair(Some(&symbol)) == key).then_some(Some(symbol))
}

/// The UTC date (`YYYY-MM-DD`) of an instant.
pub fn utc_date(t: Timestamp) -> String {
    let text = t.to_string();
    text.get(..10).unwrap_or(&text).to_owned()
}

/// The path of a file of `dataset` for one part (relative to the archive's root); `pair` is
/// ignored for the datasets not partitioned by pair.
pub fn file_path(dataset: Dataset, pair: Option<&str>, date: &str, chunk: &str) -> String {
    if dataset.by_pair() {
        format!(
            "{}/pair={}/date={date}/part-{chunk}.parquet",
            dataset.dir(),
            encode_pair(pair)
        )
    } else {
        format!("{}/date={date}/part-{chunk}.parquet", dataset.dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_keys_are_readable_and_undo_exactly() {
        // (symbol, key)
        let cases: &[(Option<&str>, &str)] = &[
            (Some("BTC/USD"), "BTC-USD"),
            (Some("XBT.M/USD"), "XBT.M-USD"),
            (Some("USDT-X/EUR"), "USDT%2DX-EUR"),
            (Some("A%B/C"), "A%25B-C"),
            (Some("A_B/C"), "A%5FB-C"),
            (Some("a b/€"), "a%20b-%E2%82%AC"),
            (Some("x=y/z"), "x%3Dy-z"),
            (Some("//"), "--"),
            (Some(""), EMPTY_PAIR),
            (Some("."), "%2E"),
            (Some(".."), "%2E%2E"),
            (None, NULL_PAIR),
        ];
        for (symbol, key) in cases {
            assert_eq!(encode_pair(*symbol), *key, "{symbol:?}");
            assert_eq!(decode_pair(key), Some(symbol.map(str::to_owned)), "{key}");
        }
    }

    #[test]
    fn keys_encode_pair_never_writes_are_refused() {
        for key in ["BTC_USD", "a%2", "a%zz", "a%2d", "x=y", "a b", "%41"] {
            assert_eq!(decode_pair(key), None, "{key}");
        }
    }

    #[test]
    fn two_symbols_never_share_a_key() {
        let symbols = [
            "BTC/USD",
            "BTC-USD",
            "BTC%2DUSD",
            "BTC%2FUSD",
            "BTC_USD",
            "btc/usd",
            "",
            ".",
            "..",
            "__EMPTY__",
            "__HIVE_DEFAULT_PARTITION__",
            "-",
            "%",
        ];
        let mut keys: Vec<String> = symbols.iter().map(|s| encode_pair(Some(s))).collect();
        keys.push(encode_pair(None));
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "{keys:?}");
        for s in symbols {
            assert_eq!(decode_pair(&encode_pair(Some(s))), Some(Some(s.to_owned())));
        }
    }

    #[test]
    fn paths_are_hive_partitions() {
        let date = utc_date(Timestamp::parse("2026-12-06T23:59:59.5Z").unwrap());
        assert_eq!(date, "2026-12-06");
        assert_eq!(
            file_path(Dataset::Book, Some("BTC/USD"), &date, "_hyper_1_5_chunk"),
            "book/pair=BTC-USD/date=2026-12-06/part-_hyper_1_5_chunk.parquet"
        );
        assert_eq!(
            file_path(Dataset::Other, None, &date, "c"),
            "other/pair=__HIVE_DEFAULT_PARTITION__/date=2026-12-06/part-c.parquet"
        );
        assert_eq!(
            file_path(Dataset::Events, Some("ignored"), &date, "c"),
            "events/date=2026-12-06/part-c.parquet"
        );
    }
}
