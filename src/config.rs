//! Settings shared by the commands: durations and sizes as people write them (`500ms`, `30d`,
//! `256MiB`), and the TOML settings file of `krakenbook collect --config`.
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
    /// A duration that does not parse.
    #[error("invalid duration {0:?}: use a number and a unit, e.g. 500ms, 5s, 10m, 1h, 30d")]
    Duration(String),
    /// A size that does not parse.
    #[error("invalid size {0:?}: use a number and a unit, e.g. 64MiB, 1GiB, 500MB")]
    Size(String),
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

/// Parses `500ms`, `5s`, `10m`, `1h`, `30d` (and a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| ConfigError::Duration(text.to_owned()))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" | "mins" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        _ => return Err(ConfigError::Duration(text.to_owned())),
    };
    let total = value * seconds;
    if !total.is_finite() || !(0.0..=1e12).contains(&total) {
        return Err(ConfigError::Duration(text.to_owned()));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Parses `64MiB`, `1GiB`, `500MB`, `4096` (bytes).
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| ConfigError::Size(text.to_owned()))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(ConfigError::Size(text.to_owned())),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| ConfigError::Size(text.to_owned()))
}

/// The settings file of `krakenbook collect` (every field optional; flags and environment
/// variables win). Example:
///
/// ```toml
/// symbols = ["BTC/USD", "ETH/USD"]
/// depth = 100
/// url = "wss://ws.kraken.com/v2"
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
    /// WebSocket URL.
    pub url: Option<String>,
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
    /// The frame-size cap (`16MiB`).
    pub max_frame_size: Option<String>,
    /// How long the database may be unreachable before `/health` says so (`30s`).
    pub db_unhealthy_after: Option<String>,
    /// Journal sync interval.
    pub journal_sync_interval: Option<String>,
    /// Journal segment size.
    pub journal_segment_size: Option<String>,
    /// Journal segment age.
    pub journal_segment_age: Option<String>,
    /// Journal retention.
    pub journal_retention: Option<String>,
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
    fn durations_and_sizes_parse_as_written() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("5"), Duration::from_secs(5));
        assert_eq!(d("10m"), Duration::from_secs(600));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("30d"), Duration::from_secs(30 * 86_400));
        for bad in ["", "ms", "5 parsecs", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
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
