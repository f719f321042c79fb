//! The store's errors, and what each calls for: [`StoreError::class`].
//!
//! - [`ErrorClass::Transient`]: can go away by itself (a lost or refused connection, a server
//!   starting up or shutting down, a serialization failure or deadlock, an I/O error, the
//!   client's own timeout, a server out of resources): retry the same batch on a new connection.
//! - [`ErrorClass::RecordSpecific`]: the data of some record in the batch is refused (a data
//!   exception, SQLSTATE class 22; a program limit such as "stack depth limit exceeded", 54001, or
//!   an index row too large, 54000; a record the encoder cannot store): split the batch to find
//!   the record and store it in raw form.
//! - [`ErrorClass::Environment`]: the database is not set up for us (authentication 28xxx, a
//!   missing database 3D000, permission or a missing column or table 42xxx, a statement timeout
//!   57014, another writer holding this collector's lock, a journal that is not the database's):
//!   never split, never retried in a tight loop; the pipeline pauses with backoff and says why.
//!   Anything not known to be one of the other two is taken as this one.
//!
//! What must always hold: an error's text never holds a password (targets are redacted before
//! they get here).

use std::error::Error as StdError;
use std::time::Duration;

use super::legacy::LegacyMoveError;
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
    /// Moving a range of the rows of the layout before schema version 6 into the new tables found
    /// a row that would not read back as it was: the range's transaction was rolled back, its rows
    /// stay in the legacy tables (the views still read them).
    #[error(transparent)]
    LegacyMove(Box<LegacyMoveError>),
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
    /// Another session holds this collector's writer lock: two processes write one identity.
    #[error(
        "collector {collector:?} is already being written to this database by another process ({holder}); \
         stop that process, or, if this journal is a copy of its journal, give this one its own \
         --journal-dir and --collector-id{stale}"
    )]
    Locked {
        /// The collector identity.
        collector: String,
        /// Who holds it, as far as the server tells (application, client address, server pid).
        holder: String,
        /// How to end a session whose process is gone (empty when the holder is unknown).
        stale: String,
    },
    /// The database's checkpoint of this collector belongs to another journal.
    #[error(
        "collector {collector:?} in this database was recorded from journal instance {database_instance}, \
         but {journal_dir} is journal instance {journal_instance} (a journal directory deleted and \
         started again, or another journal under the same identity): its records would reuse seqs \
         the database already holds; start it with a new --collector-id (or reset the database)"
    )]
    InstanceMismatch {
        /// The collector identity.
        collector: String,
        /// The instance recorded beside the checkpoint.
        database_instance: String,
        /// The instance of the journal being written.
        journal_instance: String,
        /// The journal directory (for the message).
        journal_dir: String,
    },
    /// The database holds records of this collector beyond the journal's end.
    #[error(
        "collector {collector:?} in this database is at seq {checkpoint}, beyond the last record of \
         {journal_dir} (seq {journal_last}): this journal is an older copy or a restored backup, \
         and its new records would reuse seqs the database holds and never be stored; start it \
         with a new --collector-id and --journal-dir"
    )]
    CheckpointBeyondJournal {
        /// The collector identity.
        collector: String,
        /// The database's checkpoint.
        checkpoint: u64,
        /// The journal's last seq.
        journal_last: u64,
        /// The journal directory (for the message).
        journal_dir: String,
    },
    /// The journal could not make a batch's records durable before its commit.
    #[error("journal sync through seq {seq} failed before a database commit: {reason}")]
    JournalSync {
        /// The batch's last record.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A session's set-up (see `DbTarget::with_session_setup`) failed.
    #[error("{what}: {reason}")]
    Session {
        /// What the set-up does.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

/// What an error calls for (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Retry the same work later, on a new connection.
    Transient,
    /// A record of the batch is refused: split the batch to find it.
    RecordSpecific,
    /// The database or its set-up is wrong for us: pause, say why, never split.
    Environment,
}

impl ErrorClass {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::RecordSpecific => "record-specific",
            ErrorClass::Environment => "environment",
        }
    }
}

impl StoreError {
    /// What the error calls for (see the module doc).
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::Connect { source, .. }
            | StoreError::Db { source, .. }
            | StoreError::Migration { source, .. } => pg_class(source),
            StoreError::Timeout { .. } => ErrorClass::Transient,
            StoreError::Record(_) => ErrorClass::RecordSpecific,
            StoreError::Batch { source, .. } => source.class(),
            StoreError::Url { .. }
            | StoreError::Tls { .. }
            | StoreError::NoTimescale { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::Option { .. }
            | StoreError::InvalidBatch(_)
            | StoreError::Locked { .. }
            | StoreError::InstanceMismatch { .. }
            | StoreError::LegacyMove(_)
            | StoreError::CheckpointBeyondJournal { .. }
            | StoreError::JournalSync { .. }
            | StoreError::Session { .. } => ErrorClass::Environment,
        }
    }

    /// Whether the operation may succeed if tried again later (on a new connection): the
    /// [`ErrorClass::Transient`] errors.
    pub fn is_retriable(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// How to fix an environment error, where one fix is known (appended to messages).
    pub fn fix(&self) -> Option<&'static str> {
        let code = self.sqlstate()?;
        Some(match code {
            _ if code.starts_with("28") => {
                "check the user and password (the URL, PGPASSWORD, or ~/.pgpass / PGPASSFILE) and pg_hba.conf"
            }
            "3D000" => "create the database (createdb NAME) or fix the database name in the URL",
            "42501" => {
                "grant the user CREATE on the database's public schema, or run `krakenbook migrate` once as the owner"
            }
            "42703" | "42P01" => {
                "a krakenbook table or column is missing: run `krakenbook migrate`, or restore what was dropped"
            }
            "57014" => {
                "a statement_timeout cut a statement short: raise it for this user (ALTER ROLE ... SET statement_timeout = 0)"
            }
            _ => return None,
        })
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

    /// An adaptor for `map_err`: a driver error while doing `context` ("reading the coverage").
    pub fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Db { context, source }
    }
}

/// Whether a driver error is transient.
pub fn pg_is_retriable(e: &tokio_postgres::Error) -> bool {
    pg_class(e) == ErrorClass::Transient
}

/// What a driver error calls for.
pub fn pg_class(e: &tokio_postgres::Error) -> ErrorClass {
    if let Some(db) = e.as_db_error() {
        return sqlstate_class(db.code().code());
    }
    if e.is_closed() || transport_is_transient(e) {
        ErrorClass::Transient
    } else {
        ErrorClass::Environment
    }
}

/// What a SQLSTATE calls for: [`sqlstate_is_retriable`] ones are transient; data exceptions
/// (class 22) and program limits (54000 such as an index row too large, 54001 stack depth) are
/// record-specific; everything else is the environment (28 authentication, 3D000, 42 permission
/// or a missing object, 57014 statement timeout, and any code not known).
pub fn sqlstate_class(code: &str) -> ErrorClass {
    if code == "57014" {
        ErrorClass::Environment
    } else if sqlstate_is_retriable(code) {
        ErrorClass::Transient
    } else if code.starts_with("22") || matches!(code, "54000" | "54001") {
        ErrorClass::RecordSpecific
    } else {
        ErrorClass::Environment
    }
}

/// Whether a driver error without a SQLSTATE is a transport failure that can go away (an I/O
/// error, the driver's timeout), as opposed to a TLS or configuration failure.
fn transport_is_transient(e: &tokio_postgres::Error) -> bool {
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
/// shutdown, a crash restart or a server still starting (57P01-57P05), a lock not available
/// (55P03), system I/O errors (58030), a read-only standby during fail-over (25006) and an
/// idle-session timeout (25P03). A statement timeout (57014) is not among them: a timeout set on
/// the role or database fails every attempt the same way (an environment error).
pub fn sqlstate_is_retriable(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "58030" | "25006" | "25P03"
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
        use ErrorClass::{Environment, RecordSpecific, Transient};
        // (SQLSTATE, class, what it is)
        let cases = [
            ("08006", Transient, "connection failure"),
            ("08001", Transient, "cannot establish connection"),
            ("57P01", Transient, "admin shutdown (pg_terminate_backend)"),
            ("57P03", Transient, "cannot connect now (starting up)"),
            ("40001", Transient, "serialization failure"),
            ("40P01", Transient, "deadlock"),
            ("53300", Transient, "too many connections"),
            ("55P03", Transient, "lock not available"),
            (
                "57014",
                Environment,
                "statement timeout (set on the role: fails every time)",
            ),
            ("42P01", Environment, "undefined table"),
            ("42703", Environment, "undefined column (a dropped column)"),
            (
                "42501",
                Environment,
                "insufficient privilege (no CREATE right)",
            ),
            ("28P01", Environment, "bad password"),
            ("28000", Environment, "no pg_hba.conf entry"),
            ("3D000", Environment, "database does not exist"),
            (
                "23505",
                Environment,
                "unique violation (not a record's content)",
            ),
            (
                "XX000",
                Environment,
                "internal error: unknown, so never split",
            ),
            ("22P02", RecordSpecific, "invalid text representation"),
            ("22P05", RecordSpecific, "untranslatable character"),
            ("22003", RecordSpecific, "numeric value out of range"),
            ("22008", RecordSpecific, "datetime field overflow"),
            (
                "54001",
                RecordSpecific,
                "stack depth limit exceeded (deep jsonb)",
            ),
            (
                "54000",
                RecordSpecific,
                "index row size exceeds the maximum (a huge symbol)",
            ),
        ];
        for (code, class, what) in cases {
            assert_eq!(sqlstate_class(code), class, "{code} {what}");
            assert_eq!(
                sqlstate_is_retriable(code),
                class == Transient,
                "{code} {what}"
            );
        }
    }

    #[test]
    fn refusals_are_environment_errors_with_a_fix() {
        let locked = StoreError::Locked {
            collector: "bot-1".into(),
            holder: "application 'krakenbook writer bot-1' from 10.0.0.7, server pid 4242".into(),
            stale: String::new(),
        };
        let mismatch = StoreError::InstanceMismatch {
            collector: "bot-1".into(),
            database_instance: "aa".repeat(16),
            journal_instance: "bb".repeat(16),
            journal_dir: "/data/journal".into(),
        };
        let beyond = StoreError::CheckpointBeyondJournal {
            collector: "bot-1".into(),
            checkpoint: 5000,
            journal_last: 1200,
            journal_dir: "/data/journal".into(),
        };
        for (e, needles) in [
            (&locked, &["bot-1", "10.0.0.7", "--collector-id"][..]),
            (&mismatch, &["bot-1", "aaaa", "bbbb", "--collector-id"][..]),
            (&beyond, &["bot-1", "5000", "1200", "--collector-id"][..]),
        ] {
            assert_eq!(e.class(), ErrorClass::Environment, "{e}");
            let text = e.to_string();
            assert!(!text.contains('\n'), "one line: {text}");
            for n in needles {
                assert!(text.contains(n), "{n} in {text}");
            }
        }
    }
}
