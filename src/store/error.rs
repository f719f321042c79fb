//! The store's errors, and which of them are worth retrying.
//!
//! What must always hold: an error's text never holds a password (targets are redacted before
//! they get here), and [`StoreError::is_retriable`] is true exactly for failures that can go away
//! by themselves: a lost or refused connection, a server starting up or shutting down, a
//! serialization failure or deadlock, an I/O error, a timeout, a server out of resources.

use std::error::Error as StdError;
use std::time::Duration;

use super::rows::RowError;

/// Everything that can go wrong storing or migrating.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection string cannot be used.
    #[error("invalid database URL {url}: {reason}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Connecting failed.
    #[error("cannot connect to {target}: {}", pg_detail(source))]
    Connect {
        /// The target, password redacted.
        target: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The TLS set-up failed (a missing or unreadable `sslrootcert`).
    #[error("TLS for {target}: {reason}")]
    Tls {
        /// The target, password redacted.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// A statement failed.
    #[error("{context}: {}", pg_detail(source))]
    Db {
        /// What was being done.
        context: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// Something took longer than allowed.
    #[error("timed out {what} (after {after:?})")]
    Timeout {
        /// What was being done.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The TimescaleDB extension is missing and cannot be created.
    #[error(
        "the timescaledb extension is not installed in database {database} and could not be created ({}); \
         install TimescaleDB (scripts/install-timescaledb), add it to shared_preload_libraries, and run \
         `CREATE EXTENSION timescaledb;` as a superuser",
        pg_detail(source)
    )]
    NoTimescale {
        /// The database.
        database: String,
        /// Why `CREATE EXTENSION` failed.
        source: tokio_postgres::Error,
    },
    /// The database's schema was made by a newer krakenbook.
    #[error(
        "the database schema is at version {found}, newer than this krakenbook knows ({known}); upgrade krakenbook"
    )]
    SchemaTooNew {
        /// The version recorded in the database.
        found: i32,
        /// The latest version this build knows.
        known: i32,
    },
    /// A migration failed (nothing of it was applied: each runs in its own transaction).
    #[error("migration {version} ({name}) failed: {}", pg_detail(source))]
    Migration {
        /// Its version.
        version: i32,
        /// Its name.
        name: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A bad option value (a chunk interval the server does not accept).
    #[error("invalid {option} {value:?}: {reason}")]
    Option {
        /// The option.
        option: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The records handed to the writer are not a batch it can store.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A record that cannot be stored.
    #[error(transparent)]
    Record(#[from] RowError),
    /// A batch failed with an error that retrying cannot fix; nothing of it was committed.
    #[error(
        "writing records {first_seq}..={last_seq} failed after {attempts} attempt(s): {source}"
    )]
    Batch {
        /// The batch's first seq.
        first_seq: u64,
        /// The batch's last seq.
        last_seq: u64,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        source: Box<StoreError>,
    },
    /// A throwaway cluster could not be set up or run.
    #[error("throwaway TimescaleDB cluster: {0}")]
    Cluster(String),
}

impl StoreError {
    /// Whether the operation may succeed if tried again later (on a new connection).
    pub fn is_retriable(&self) -> bool {
        match self {
            StoreError::Connect { source, .. }
            | StoreError::Db { source, .. }
            | StoreError::Migration { source, .. } => pg_is_retriable(source),
            StoreError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The SQLSTATE code of the server's error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StoreError::Connect { source, .. }
            | StoreError::Db { source, .. }
            | StoreError::Migration { source, .. }
            | StoreError::NoTimescale { source, .. } => source.code().map(|c| c.code()),
            StoreError::Batch { source, .. } => source.sqlstate(),
            _ => None,
        }
    }

    pub(crate) fn db(
        context: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Db { context, source }
    }
}

/// Whether a driver error is transient.
pub fn pg_is_retriable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        return sqlstate_is_retriable(db.code().code());
    }
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<rustls::Error>() {
            return false;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return false;
            }
            return !matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::Unsupported
            );
        }
        source = s.source();
    }
    // The driver's own timeout error has no source.
    e.to_string().starts_with("timeout")
}

/// SQLSTATEs of transient failures: connection exceptions (08), serialization failure and
/// deadlock (40001, 40P01), insufficient resources (53), operator intervention such as a
/// shutdown, a crash restart, a server still starting, or a statement timeout (57P01-57P05, 57014),
/// a lock not available (55P03), system I/O errors (58030), a read-only standby during fail-over
/// (25006) and an idle-session timeout (25P03).
pub fn sqlstate_is_retriable(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(
            code,
            "40001" | "40P01" | "57014" | "55P03" | "58030" | "25006" | "25P03"
        )
}

/// The server's message (with detail and hint) or the driver's error chain.
fn pg_detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str("; ");
            s.push_str(d);
        }
        if let Some(h) = db.hint() {
            s.push_str("; hint: ");
            s.push_str(h);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        // Wrappers often repeat their cause's text: keep each part once.
        let part = inner.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        // (SQLSTATE, retriable, what it is)
        let cases = [
            ("08006", true, "connection failure"),
            ("08001", true, "cannot establish connection"),
            ("57P01", true, "admin shutdown (pg_terminate_backend)"),
            ("57P03", true, "cannot connect now (starting up)"),
            ("40001", true, "serialization failure"),
            ("40P01", true, "deadlock"),
            ("53300", true, "too many connections"),
            ("57014", true, "statement timeout"),
            ("42P01", false, "undefined table"),
            ("22P02", false, "invalid text representation"),
            ("23505", false, "unique violation"),
            ("28P01", false, "bad password"),
            ("42501", false, "insufficient privilege"),
        ];
        for (code, retriable, what) in cases {
            assert_eq!(sqlstate_is_retriable(code), retriable, "{code} {what}");
        }
    }
}
