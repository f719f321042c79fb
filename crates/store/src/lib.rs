//! TimescaleDB storage: the schema and its migrations, and the exactly-once binary-COPY writer.
//!
//! The data flow: journal → [`Batcher`] → [`Writer::write_batch`] → [`rows::RowEncoder`] (binary
//! COPY rows) → TimescaleDB. The tables:
//! - `kraken_orderbook_messages` (hypertable on `timestamp`): one row per received frame except
//!   heartbeats, with the frame as `jsonb` (or as text/bytes when it is not JSON), the checksum
//!   verdict, the best bid and ask after applying it, and the order key `(collector, seq)`;
//! - `kraken_orderbook_entries` (hypertable on `timestamp`): one row per level of a book frame,
//!   exact `numeric` price and quantity, `ordinal` = position in its message;
//! - `kraken_book_states` (hypertable on `timestamp`): a symbol's whole verified book every so
//!   many updates (Kraken's snapshots count too), levels as exact decimal strings, so a book at
//!   an instant is rebuilt from the nearest state before it, never from the subscription's start;
//! - `kraken_feed_events`: connections, subscriptions, checksum mismatches, resyncs, and what the
//!   writer itself records: `journal_damage` (records missing from the journal), `stored_raw`
//!   (a record stored without its structured form, and why), `not_stored` (one not stored at all);
//! - `krakenbook_checkpoints`: per collector, the seq of the last record committed and the
//!   instance id of the journal it comes from;
//! - `krakenbook_connections`: per connection of a collector, its first and last frame stored
//!   (heartbeats included), updated in every batch's transaction;
//! - `krakenbook_collector_state`: per collector, its state as it last published it (the
//!   collector's `collect::state` upserts it every few seconds, outside the writer's path);
//! - `krakenbook_archive`: the parts moved to the cold tier (`krakenbook archive`): their range,
//!   location and files;
//! - `krakenbook_migrations`: the schema versions applied.
//!
//! Errors carry their class ([`ErrorClass`]): transient ones are retried, record-specific ones
//! make the writer split the batch around the record (`bisect`), environment ones pause the
//! pipeline with backoff ([`health`]).
//!
//! What must always hold: every record is committed exactly once, in the same transaction as the
//! checkpoint that covers it, and (in the collector) only once the journal has synced it; one
//! writer per collector identity and one journal per identity; prices and quantities are stored
//! exactly with their scale; no password is ever printed.
//!
//! # Layer
//!
//! Crate `krakenbook-store`. May use: `krakenbook-core` and `krakenbook-journal` (the writer follows
//! the journal and binds to its instance). The throwaway test cluster and the capture reader are
//! test infrastructure and live in `krakenbook-testkit`.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

// The layers below, under the names the `krakenbook` facade gives them, so that a path
// reads the same in every crate (`crate::time::Timestamp`).
use krakenbook_core::{book, host, kraken, record, rng, text, time};
use krakenbook_journal as journal;

mod batch;
mod bisect;
pub mod book_rows;
pub mod canonical;
mod connect;
mod error;
pub mod health;
pub mod layout;
mod legacy;
mod migrate;
pub mod rows;
pub mod types;
mod writer;

pub use batch::{BatchConfig, Batcher, instant_at};
pub use connect::{
    CONNECT_TIMEOUT, DbTarget, PassKey, PasswordSources, SessionSetup, pgpass_lookup, redact,
};
pub use error::{
    ErrorClass, StoreError, pg_class, pg_is_retriable, sqlstate_class, sqlstate_is_retriable,
};
pub use legacy::{LegacyMove, LegacyMoveError};
pub use migrate::{
    COMPRESS_AFTER, Compression, DEFAULT_CHUNK_INTERVAL, MigrateOptions, MigrateReport,
    SCHEMA_VERSION, migrate,
};
pub use rows::{ConnLiveness, RowCounts, RowEncoder, RowError, Streams};
pub use writer::{
    BatchItem, BatchReport, JournalBinding, RetryPolicy, Unit, WRITER_LOCK, Writer, WriterConfig,
    WriterStats,
};

/// Connects to `url` (a `postgres://` URL or `key=value` pairs) for a one-off task such as a
/// migration; `application_name` shows in `pg_stat_activity`.
pub async fn connect(
    url: &str,
    application_name: &str,
) -> Result<tokio_postgres::Client, StoreError> {
    DbTarget::parse(url)?.connect(application_name).await
}
