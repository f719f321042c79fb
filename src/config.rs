//! Settings shared by the commands: durations and sizes as people write them (`500ms`, `30d`,
//! `256MiB`), and the TOML settings file of `krakenbook collect --config`.
//!
//! One syntax everywhere: every flag, environment variable and settings-file key that takes a
//! duration or a size goes through [`parse_duration`] (humantime) or [`parse_size`] (bytesize),
//! as a clap value parser ([`duration`], [`size`]) or a serde `deserialize_with`. A number must
//! carry its unit: a bare `5` is refused with the unit to add, never read as seconds or bytes.
//!
//! Precedence, highest first: command-line flags, environment variables, the settings file,
//! built-in defaults. Flags and environment variables are resolved by clap; this module reads the
//! file and lets the command fill what is still unset.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A setting that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A bare number where a duration or a size is expected: the unit is not guessed.
    #[error("add a unit, e.g. `{number}{unit}` or `{number}{other}`")]
    NoUnit {
        /// The number as given.
        number: String,
        /// The unit suggested first (`s`, `MiB`).
        unit: &'static str,
        /// The unit suggested second (`ms`, `B`).
        other: &'static str,
    },
    /// A duration that does not parse.
    #[error(
        "invalid duration {text:?}: {reason} (write a number and a unit, e.g. 500ms, 5s, 10m, 1h, 7d)"
    )]
    Duration {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A size that does not parse.
    #[error(
        "invalid size {text:?}: {reason} (write a number and a unit, e.g. 64KiB, 256MiB, 1GiB, 500MB)"
    )]
    Size {
        /// The text as given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The settings file holds a password and other users can read it.
    #[error(
        "settings file {path} holds a database password and is readable by other users (mode {mode:o}): run `chmod 600 {path}`"
    )]
    ReadableSecret {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The settings file cannot be read or parsed.
    #[error("settings file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong (with line and column where TOML says).
        reason: String,
    },
}

/// Whether `text` is a number without a unit (`5`, `1.5`, `-3`).
fn is_bare_number(text: &str) -> bool {
    !text.is_empty() && text.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Parses a duration in humantime's syntax: a number and its unit, `500ms`, `5s`, `10m`, `1h`,
/// `7d`, `1.5h`, `1h 30m`. A bare number is refused ([`ConfigError::NoUnit`]): `5` could be
/// seconds or milliseconds, and a guess is how a sync interval becomes a thousand times longer.
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let t = text.trim();
    if is_bare_number(t) {
        return Err(ConfigError::NoUnit {
            number: t.to_owned(),
            unit: "s",
            other: "ms",
        });
    }
    humantime::parse_duration(t).map_err(|e| ConfigError::Duration {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// Parses a size in bytesize's syntax: a number and its unit, `4096B`, `64KiB`, `256MiB`,
/// `1GiB`, `500MB` (KB, MB, GB are powers of 1,000; KiB, MiB, GiB of 1,024). A bare number is
/// refused ([`ConfigError::NoUnit`]), and so is a size past 2^64 - 1 bytes.
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    if is_bare_number(t) {
        return Err(ConfigError::NoUnit {
            number: t.to_owned(),
            unit: "MiB",
            other: "B",
        });
    }
    let err = |reason: &str| ConfigError::Size {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    if t.starts_with('-') {
        return Err(err("a size cannot be negative"));
    }
    let bytes = t
        .parse::<bytesize::ByteSize>()
        .map_err(|e| err(&e))?
        .as_u64();
    // bytesize saturates instead of failing.
    if bytes == u64::MAX {
        return Err(err("too large"));
    }
    Ok(bytes)
}

/// [`parse_duration`] as a clap value parser: `#[arg(value_parser = config::duration)]`.
pub fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// [`parse_duration`] for a duration that must be above zero (a period, a length of silence).
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(d) if d.is_zero() => Err(format!("{text:?} must be above zero, e.g. 1s or 500ms")),
        other => other.map_err(|e| e.to_string()),
    }
}

/// [`parse_size`] as a clap value parser: `#[arg(value_parser = config::size)]`.
pub fn size(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

/// A TOML value where a duration or a size is expected: a string, or a number (refused, with
/// the unit to add).
#[derive(Deserialize)]
#[serde(untagged)]
enum Written {
    Text(String),
    Integer(i64),
    Float(f64),
}

impl Written {
    fn text(self) -> String {
        match self {
            Written::Text(t) => t,
            Written::Integer(n) => n.to_string(),
            Written::Float(x) => x.to_string(),
        }
    }
}

/// Deserializes an optional duration with [`parse_duration`] (`journal_sync_interval = "1s"`).
pub fn deserialize_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let text = Written::deserialize(d)?.text();
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Deserializes an optional size with [`parse_size`] (`journal_segment_size = "256MiB"`).
pub fn deserialize_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = Written::deserialize(d)?.text();
    parse_size(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A TOML value where a list of texts is expected: a list, or one comma-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Listed {
    One(String),
    Many(Vec<String>),
}

/// Deserializes an optional list written as a list or as one comma-separated string
/// (`url = ["ws://a/v2", "ws://b/v2"]` or `url = "ws://a/v2,ws://b/v2"`); blanks are dropped.
pub fn deserialize_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    let items = match Listed::deserialize(d)? {
        Listed::One(text) => split_list(&text),
        Listed::Many(list) => list.iter().flat_map(|t| split_list(t)).collect(),
    };
    Ok(Some(items))
}

/// Splits a comma-separated list, trimming each item and dropping blanks.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What a frame's receive time is (`collect --receive-stamps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReceiveStamps {
    /// When its last byte reached the machine, as the kernel recorded it (a socket filter; it
    /// needs CAP_BPF, or root); where the kernel does not, when it was read.
    Arrival,
    /// When the collector read it (up to a read period after it arrived).
    Read,
}

/// The settings file of `krakenbook collect` (every field optional; flags and environment
/// variables win). Example:
///
/// ```toml
/// symbols = ["BTC/USD", "ETH/USD"]
/// depth = 100
/// url = "wss://ws.kraken.com/v2"        # or a list: replica k uses the k-th (mod their number)
/// redundancy = 2                         # connections per symbol group
/// own_books = false                      # true: each connection keeps books of its own
/// journal_dir = "/var/lib/krakenbook/journal"
/// database_url = "postgres://krakenbook@db.internal/market?sslmode=require"
/// metrics_listen = "127.0.0.1:9187"
/// journal_sync_interval = "1s"
/// journal_retention = "30d"
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectFile {
    /// Symbols to record.
    pub symbols: Option<Vec<String>>,
    /// Record every online pair.
    pub all: Option<bool>,
    /// Book depth.
    pub depth: Option<u16>,
    /// WebSocket URL, or several: a list, or one comma-separated string (replica k of a group
    /// connects to the k-th, modulo their number).
    #[serde(default, deserialize_with = "deserialize_list")]
    pub url: Option<Vec<String>>,
    /// Connections per symbol group (1 to 4).
    pub redundancy: Option<usize>,
    /// With redundancy, every connection keeps books of its own (`--own-books`).
    pub own_books: Option<bool>,
    /// Journal directory.
    pub journal_dir: Option<PathBuf>,
    /// Database URL.
    pub database_url: Option<String>,
    /// Metrics listen address.
    pub metrics_listen: Option<String>,
    /// This collector's name in the database.
    pub collector_id: Option<String>,
    /// Symbols per WebSocket connection.
    pub symbols_per_connection: Option<usize>,
    /// With `all`, the most pairs the instrument list may name.
    pub max_symbols: Option<u64>,
    /// The frame-size cap (`"16MiB"`).
    #[serde(default, deserialize_with = "deserialize_size")]
    pub max_frame_size: Option<u64>,
    /// How long the database may be unreachable before `/health` says so (`"30s"`).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub db_unhealthy_after: Option<Duration>,
    /// Longest a record waits for its database batch (`"50ms"`).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub db_batch_delay: Option<Duration>,
    /// The sockets' read tick (`"10ms"`; `"0ms"`: on every arrival; default 100 ms where the
    /// kernel stamps arrivals for the collector, else 10 ms).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub read_every: Option<Duration>,
    /// What a frame's receive time is: `"arrival"` (the kernel's, where it records them) or
    /// `"read"`.
    pub receive_stamps: Option<ReceiveStamps>,
    /// Journal sync interval (`"1s"`).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub journal_sync_interval: Option<Duration>,
    /// Journal segment size (`"256MiB"`).
    #[serde(default, deserialize_with = "deserialize_size")]
    pub journal_segment_size: Option<u64>,
    /// Journal segment age (`"1h"`).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub journal_segment_age: Option<Duration>,
    /// Journal retention (`"30d"`).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub journal_retention: Option<Duration>,
}

impl CollectFile {
    /// Reads and parses a settings file; unknown keys are errors (a typo must not be ignored).
    /// A file that holds a database password must not be readable by other users (as libpq
    /// demands of `~/.pgpass`).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let file: CollectFile = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        if file.database_url.as_deref().is_some_and(holds_password) {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| ConfigError::File {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(ConfigError::ReadableSecret {
                    path: path.to_path_buf(),
                    mode: mode & 0o777,
                });
            }
        }
        Ok(file)
    }
}

/// Whether a database connection string carries a password (in any form the store redacts).
pub fn holds_password(url: &str) -> bool {
    crate::store::redact(url) != url
}

/// This machine's host name (the default collector name), or `collector`.
pub use crate::host::hostname;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_redundancy_are_read_as_a_list_or_a_comma_separated_string() {
        // (file text, urls, redundancy)
        let cases = [
            ("url = \"ws://a/v2\"\n", vec!["ws://a/v2"], None),
            (
                "url = \"ws://a/v2, ws://b/v2,\"\nredundancy = 2\n",
                vec!["ws://a/v2", "ws://b/v2"],
                Some(2),
            ),
            (
                "url = [\"ws://a/v2\", \"ws://b/v2,ws://c/v2\"]\n",
                vec!["ws://a/v2", "ws://b/v2", "ws://c/v2"],
                None,
            ),
        ];
        for (text, urls, redundancy) in cases {
            let file: CollectFile = toml::from_str(text).unwrap();
            assert_eq!(
                file.url,
                Some(urls.iter().map(|u| u.to_string()).collect()),
                "{text}"
            );
            assert_eq!(file.redundancy, redundancy, "{text}");
        }
        assert!(toml::from_str::<CollectFile>("url = 5\n").is_err());
    }

    #[test]
    fn durations_parse_as_written_with_their_unit() {
        // (text, duration)
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            (" 5s ", Duration::from_secs(5)),
            ("250us", Duration::from_micros(250)),
            ("10m", Duration::from_secs(600)),
            ("1.5h", Duration::from_secs(5400)),
            ("1h 30m", Duration::from_secs(5400)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("30d", Duration::from_secs(30 * 86_400)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn a_bare_number_is_refused_with_the_unit_to_add() {
        // (text, the message)
        let cases = [
            (parse_duration("5"), "add a unit, e.g. `5s` or `5ms`"),
            (
                parse_duration(" 1.5 "),
                "add a unit, e.g. `1.5s` or `1.5ms`",
            ),
            (parse_duration("0"), "add a unit, e.g. `0s` or `0ms`"),
            (
                parse_size("4096").map(|_| Duration::ZERO),
                "add a unit, e.g. `4096MiB` or `4096B`",
            ),
        ];
        for (result, message) in cases {
            assert_eq!(result.map_err(|e| e.to_string()), Err(message.to_owned()));
        }
        assert_eq!(
            duration("5"),
            Err("add a unit, e.g. `5s` or `5ms`".to_owned())
        );
        assert_eq!(
            size("64"),
            Err("add a unit, e.g. `64MiB` or `64B`".to_owned())
        );
    }

    #[test]
    fn durations_that_do_not_parse_say_what_to_write() {
        for bad in ["", "ms", "5 parsecs", "-1s", "often", "1e400s"] {
            let err = parse_duration(bad).expect_err(bad).to_string();
            assert!(err.contains("e.g. 500ms, 5s"), "{bad:?}: {err}");
        }
        assert!(positive_duration("0s").unwrap_err().contains("above zero"));
        assert_eq!(positive_duration("6s"), Ok(Duration::from_secs(6)));
    }

    #[test]
    fn sizes_parse_as_written_with_their_unit() {
        // (text, bytes)
        let cases = [
            ("256MiB", 256 << 20),
            ("1GiB", 1 << 30),
            ("64KiB", 64 << 10),
            ("1GB", 1_000_000_000),
            ("500MB", 500_000_000),
            ("4096B", 4096),
            ("0B", 0),
            ("1.5 GiB", 3 << 29),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text:?}");
        }
        for bad in ["12XB", "99999999999999GiB", "-1MiB", "MiB", ""] {
            let err = parse_size(bad).expect_err(bad).to_string();
            assert!(err.contains("e.g. 64KiB, 256MiB"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn settings_file_durations_and_sizes_need_their_unit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(
            &path,
            "journal_sync_interval = \"250ms\"\njournal_segment_size = \"64MiB\"\n\
             journal_segment_age = \"1h\"\njournal_retention = \"7d\"\n\
             db_unhealthy_after = \"30s\"\ndb_batch_delay = \"20ms\"\nmax_frame_size = \"16MiB\"\n",
        )
        .unwrap();
        let f = CollectFile::load(&path).unwrap();
        assert_eq!(f.journal_sync_interval, Some(Duration::from_millis(250)));
        assert_eq!(f.journal_segment_size, Some(64 << 20));
        assert_eq!(f.journal_segment_age, Some(Duration::from_secs(3600)));
        assert_eq!(f.journal_retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(f.db_unhealthy_after, Some(Duration::from_secs(30)));
        assert_eq!(f.db_batch_delay, Some(Duration::from_millis(20)));
        assert_eq!(f.max_frame_size, Some(16 << 20));
        // (setting, what the error must say)
        let cases = [
            (
                "journal_sync_interval = 5",
                "add a unit, e.g. `5s` or `5ms`",
            ),
            (
                "journal_sync_interval = \"5\"",
                "add a unit, e.g. `5s` or `5ms`",
            ),
            (
                "journal_retention = 1.5",
                "add a unit, e.g. `1.5s` or `1.5ms`",
            ),
            (
                "journal_segment_size = 268435456",
                "add a unit, e.g. `268435456MiB`",
            ),
            ("db_unhealthy_after = \"soon\"", "e.g. 500ms, 5s"),
            ("max_frame_size = \"16 parsecs\"", "e.g. 64KiB, 256MiB"),
        ];
        for (line, message) in cases {
            std::fs::write(&path, format!("{line}\n")).unwrap();
            let err = CollectFile::load(&path).unwrap_err().to_string();
            assert!(err.contains(message), "{line}: {err}");
            assert!(
                err.contains(line.split(' ').next().unwrap()),
                "{line}: names the key: {err}"
            );
            assert!(!err.contains('\n'), "{line}: one line: {err}");
        }
    }

    #[test]
    fn a_settings_file_with_a_password_must_not_be_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(
            &path,
            "database_url = \"postgres://kb:hunter2@db/market\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = CollectFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(CollectFile::load(&path).is_ok());
        // Without a password the file may be shared.
        std::fs::write(&path, "database_url = \"postgres://kb@db/market\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(CollectFile::load(&path).is_ok());
    }

    #[test]
    fn the_settings_file_parses_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("krakenbook.toml");
        std::fs::write(
            &path,
            "symbols = [\"BTC/USD\"]\ndepth = 100\njournal_retention = \"30d\"\n",
        )
        .unwrap();
        let f = CollectFile::load(&path).unwrap();
        assert_eq!(f.symbols, Some(vec!["BTC/USD".to_owned()]));
        assert_eq!(f.depth, Some(100));
        std::fs::write(&path, "symbol = [\"BTC/USD\"]\n").unwrap();
        let err = CollectFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("symbol"), "{err}");
    }
}
