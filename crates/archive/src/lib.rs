//! The cold tier: closed chunks of the database moved into Parquet files (a local directory or an
//! object store), verified before they are dropped, and mounted back into a reader's session so
//! that every read path sees archive and database as one.
//!
//! - [`archive()`](archive::archive) (`krakenbook archive --older-than 7d --to DIR`): for each
//!   chunk of `krakenbook_book` whose range ended before the cut-off, writes the range's rows of
//!   every table ([`records`]) as hive-partitioned Parquet files ([`naming`], [`columns`]),
//!   reads them back and checks them against the database (row counts and a digest of every
//!   cell), replays the range's checksums from the archived rows with the project's replay
//!   engine and requires the very report the database's rows give, and only then, in one
//!   transaction, drops the chunk, deletes the range's other rows and records the part in
//!   `krakenbook_archive` ([`catalog`]);
//! - [`mount()`](mount::mount): a reader's session that needs archived ranges gets temporary
//!   tables filled from the files and temporary views, named as the tables and views readers
//!   query, that put the database's rows and the archived ones together (PostgreSQL looks in
//!   `pg_temp` first). Every reader's SQL runs unchanged. [`Mount`] does it for every session a
//!   `DbTarget` opens;
//! - [`LazyMount`]: the same mount for a long-lived session (the web explorer's), loading the
//!   rows of the windows its reads need as they come, each once.
//!
//! What must always hold: a range is either archived (its files complete under their final
//! names, its catalog row written, its rows gone from the tables, all committed together) or
//! untouched (no catalog row, every row still in the tables): an interruption at any point
//! leaves one or the other, and a rerun finishes the job, rewriting any file of an unrecorded
//! range. Nothing is dropped that was not read back from the archive first.
//!
//! # Layer
//!
//! Crate `krakenbook-archive`. May use: `krakenbook-core`, `krakenbook-journal`,
//! `krakenbook-store`, `krakenbook-history`, `krakenbook-read` (the replay that verifies a
//! range). The `krakenbook` binary installs [`Mount`] on the targets of its read commands.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

use krakenbook_core::{book, text, time};
use krakenbook_store as store;

pub mod archive;
pub mod catalog;
pub mod columns;
pub mod lazy;
pub mod location;
pub mod marks;
pub mod mount;
pub mod naming;
pub mod records;

pub use archive::{ArchiveOptions, ArchiveReport, PartReport, Stage, archive};
pub use catalog::{ArchivedPart, FileEntry, archived_overlapping};
pub use lazy::{EnsureReport, LazyMount};
pub use location::Location;
pub use mount::{Mount, MountReport, mount, mount_coverage};

use crate::time::Timestamp;

/// Why archiving or mounting failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The database failed.
    #[error("{context}: {}", db_text(source))]
    Db {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A store error (connecting, a migration missing).
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The archive's location is unusable.
    #[error("archive location {location}: {reason}")]
    Location {
        /// The location as given.
        location: String,
        /// Why.
        reason: String,
    },
    /// The object store failed.
    #[error("archive {location}: {what}: {source}")]
    ObjectStore {
        /// The location.
        location: String,
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A Parquet file could not be written or read.
    #[error("archive file {path}: {source}")]
    File {
        /// The file (relative to the location).
        path: String,
        /// Why.
        #[source]
        source: columns::TableError,
    },
    /// A value that is not what it should be.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What.
        what: String,
        /// Why.
        reason: String,
    },
    /// The schema has no archive catalog.
    #[error(
        "this database has no archive catalog (schema older than version 7): run `krakenbook migrate` first"
    )]
    NoCatalog,
    /// An archived part's directory or file, recorded in the catalog, is gone or unreadable (moved
    /// or deleted after archiving, or its permissions changed): its ranges cannot be read.
    #[error(
        "the archive at {location} cannot be read ({what}: {reason}): the ranges archived there are not in the database any more; put the archive's files back at {location} (or, if you moved them, run UPDATE krakenbook_archive SET location = '<new place>' WHERE location = '{location}')"
    )]
    Lost {
        /// The location as the catalog records it.
        location: String,
        /// What could not be read (the directory, or a file under it).
        what: String,
        /// Why (the system's words).
        reason: String,
    },
    /// A file read back differs from the rows it was written from: nothing was dropped.
    #[error(
        "archive file {path} read back does not match the database ({detail}); nothing was dropped: run the archive again"
    )]
    Mismatch {
        /// The file.
        path: String,
        /// What differs.
        detail: String,
    },
    /// The checksum replay of the archived rows differs from the database's: nothing was dropped.
    #[error(
        "the checksum replay of {from} .. {to} from the archived rows differs from the database's ({detail}); nothing was dropped"
    )]
    ReplayDiffers {
        /// Range start.
        from: Timestamp,
        /// Range end.
        to: Timestamp,
        /// What differs.
        detail: String,
    },
    /// The range's rows changed between reading and dropping: nothing was dropped.
    #[error(
        "rows of {from} .. {to} changed while it was archived ({detail}); nothing was dropped: run the archive again"
    )]
    Changed {
        /// Range start.
        from: Timestamp,
        /// Range end.
        to: Timestamp,
        /// What changed.
        detail: String,
    },
    /// A test's injected stop.
    #[error("stopped as asked after stage {0:?}")]
    Injected(Stage),
}

/// A driver error with the server's own message (the driver's `Display` says only "db error").
fn db_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}", text::printable(db.message())),
        None => e.to_string(),
    }
}

impl From<ArchiveError> for store::StoreError {
    fn from(e: ArchiveError) -> store::StoreError {
        match e {
            ArchiveError::Store(e) => e,
            other => store::StoreError::Session {
                what: "mounting archived data".into(),
                reason: other.to_string(),
            },
        }
    }
}
