//! Schema migrations: versioned SQL, applied once, in order, by one process at a time.
//!
//! [`migrate`] brings a database to [`SCHEMA_VERSION`]: it creates the TimescaleDB extension if
//! missing, then applies each migration newer than the one recorded in `krakenbook_migrations`,
//! each in its own transaction together with its record. Migration 1 also converts the original
//! tool's tables in place (see `migrations/0001_schema.sql`). Migration 6 renames the tables of the
//! older layout `krakenbook_legacy_*`; their rows are then moved into the new tables one range per
//! transaction ([`super::legacy`]), with the views reading both layouts until the legacy tables
//! are empty and dropped ([`super::layout::settle_views`]).
//!
//! What must always hold:
//! - running it twice is a no-op the second time, and two processes running it at once are safe:
//!   the whole run holds a session advisory lock, so the second waits and then finds nothing to do;
//! - a failed migration leaves no part of itself behind (PostgreSQL's DDL is transactional); an
//!   interrupted or failed legacy move leaves every range it did not finish as it was, and the next
//!   run continues with it;
//! - a database migrated by a newer krakenbook is refused, not downgraded;
//! - compression (segment by symbol, order by time) and its policy are set up only where the
//!   server's TimescaleDB carries the Timescale License; on the Apache edition the step is skipped
//!   with one log line, and taken on a later run if the license changes.

use tokio_postgres::Client;

use super::StoreError;
use super::legacy::LegacyMove;

/// The schema version this build brings a database to.
pub const SCHEMA_VERSION: i32 = 10;

/// The default chunk interval of both hypertables.
pub const DEFAULT_CHUNK_INTERVAL: &str = "1 day";

/// Chunks older than this are compressed by the policy (Timescale License only).
pub const COMPRESS_AFTER: &str = "7 days";

/// The advisory lock held while migrating ("krakenmg").
const MIGRATION_LOCK: i64 = 0x6b72_616b_656e_6d67;

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "schema",
        sql: include_str!("migrations/0001_schema.sql"),
    },
    Migration {
        version: 2,
        name: "book_states",
        sql: include_str!("migrations/0002_book_states.sql"),
    },
    Migration {
        version: 3,
        name: "journal_instance",
        sql: include_str!("migrations/0003_journal_instance.sql"),
    },
    Migration {
        version: 4,
        name: "connections",
        sql: include_str!("migrations/0004_connections.sql"),
    },
    Migration {
        version: 5,
        name: "collector_state",
        sql: include_str!("migrations/0005_collector_state.sql"),
    },
    Migration {
        version: 6,
        name: "layout",
        sql: include_str!("migrations/0006_layout.sql"),
    },
    Migration {
        version: 7,
        name: "archive",
        sql: include_str!("migrations/0007_archive.sql"),
    },
    Migration {
        version: 8,
        name: "views",
        sql: include_str!("migrations/0008_views.sql"),
    },
    Migration {
        version: 9,
        name: "view_plans",
        sql: include_str!("migrations/0009_view_plans.sql"),
    },
    Migration {
        version: 10,
        name: "frame_rebuild",
        sql: include_str!("migrations/0010_frame_rebuild.sql"),
    },
];

/// What [`migrate`] may change.
#[derive(Clone, Debug, Default)]
pub struct MigrateOptions {
    /// Chunk interval of both hypertables (PostgreSQL interval syntax: `1 day`, `6 hours`, `1h`).
    /// `None`: one day for new tables, existing ones left as they are.
    pub chunk_interval: Option<String>,
}

/// What [`migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateReport {
    /// The schema version before (0: none).
    pub from_version: i32,
    /// The schema version after.
    pub to_version: i32,
    /// Migrations applied, in order: (version, name).
    pub applied: Vec<(i32, &'static str)>,
    /// Whether tables made by the original tool were converted.
    pub converted_original_tables: bool,
    /// The chunk interval set, if one was (server's canonical form, e.g. `1 day`).
    pub chunk_interval_set: Option<String>,
    /// What happened about compression.
    pub compression: Compression,
    /// The rows of the layout before version 6 moved by this run (`None`: nothing was pending).
    pub legacy: Option<LegacyMove>,
    /// Whether rows of the layout before version 6 remain after this run (in
    /// `krakenbook_legacy_messages` / `krakenbook_legacy_entries`, read through the views): levels
    /// that belong to no message that could move (see [`LegacyMove::levels_left`]).
    pub legacy_remains: bool,
}

/// The compression step's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Compression and its policy were set up now.
    Enabled,
    /// Compression was already set up.
    AlreadyEnabled,
    /// Skipped: the server's TimescaleDB license (`apache`) has no compression.
    Skipped {
        /// `SHOW timescaledb.license`.
        license: String,
    },
}

/// Brings the database `client` is connected to up to [`SCHEMA_VERSION`].
pub async fn migrate(
    client: &Client,
    options: &MigrateOptions,
) -> Result<MigrateReport, StoreError> {
    let free: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(StoreError::db("taking the migration lock"))?
        .get(0);
    if !free {
        // Another process is migrating (a conversion of a large database can take minutes).
        tracing::info!("waiting for another krakenbook migration to finish");
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(StoreError::db("taking the migration lock"))?;
    }
    let result = migrate_locked(client, options).await;
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
    {
        // The lock is the session's: it goes with the connection at the latest.
        tracing::debug!(error = %e, "releasing the migration lock");
    }
    result
}

async fn migrate_locked(
    client: &Client,
    options: &MigrateOptions,
) -> Result<MigrateReport, StoreError> {
    ensure_timescaledb(client).await?;
    let interval = match &options.chunk_interval {
        Some(text) => Some(canonical_interval(client, text).await?),
        None => None,
    };
    let has_table: bool = client
        .query_one(
            "SELECT to_regclass('krakenbook_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(StoreError::db("looking for krakenbook_migrations"))?
        .get(0);
    if !has_table {
        client
            .batch_execute(
                "CREATE TABLE krakenbook_migrations (
                     version    integer PRIMARY KEY,
                     name       text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(StoreError::db("creating krakenbook_migrations"))?;
    }
    let from_version: i32 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM krakenbook_migrations",
            &[],
        )
        .await
        .map_err(StoreError::db("reading the schema version"))?
        .get(0);
    if from_version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: from_version,
            known: SCHEMA_VERSION,
        });
    }
    let converted_original_tables = from_version == 0
        && client
            .query_one(
                "SELECT to_regclass('kraken_orderbook_messages') IS NOT NULL
                     OR to_regclass('kraken_orderbook_entries') IS NOT NULL",
                &[],
            )
            .await
            .map_err(StoreError::db("looking for existing tables"))?
            .get::<_, bool>(0);
    if converted_original_tables {
        tracing::info!("converting the existing kraken_orderbook tables in place (every row kept)");
    }
    let interval_for_new = interval.as_deref().unwrap_or(DEFAULT_CHUNK_INTERVAL);
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > from_version) {
        apply(client, m, interval_for_new).await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        applied.push((m.version, m.name));
    }
    // An explicit interval on an existing schema: new chunks get it.
    if let (Some(iv), true) = (&interval, applied.is_empty()) {
        for table in ["krakenbook_book", "krakenbook_other", "kraken_book_states"] {
            client
                .execute(
                    "SELECT set_chunk_time_interval($1::text::regclass, $2::text::interval)",
                    &[&table, iv],
                )
                .await
                .map_err(StoreError::db(format!(
                    "setting the chunk interval of {table}"
                )))?;
        }
    }
    // The views read both layouts while legacy rows remain, so every query sees every row
    // while they move; the second pass drops the legacy tables once they are empty.
    let mut legacy_remains = super::layout::settle_views(client).await?;
    let legacy = super::legacy::move_legacy(client).await?;
    if legacy.is_some() {
        legacy_remains = super::layout::settle_views(client).await?;
    }
    let compression = compression(client).await?;
    Ok(MigrateReport {
        from_version,
        to_version: SCHEMA_VERSION,
        applied,
        converted_original_tables,
        chunk_interval_set: if from_version == 0 {
            Some(interval_for_new.to_owned())
        } else {
            interval
        },
        compression,
        legacy,
        legacy_remains,
    })
}

async fn apply(client: &Client, m: &Migration, chunk_interval: &str) -> Result<(), StoreError> {
    let failed = |source| StoreError::Migration {
        version: m.version,
        name: m.name,
        source,
    };
    client.batch_execute("BEGIN").await.map_err(failed)?;
    let result = async {
        client
            .batch_execute(&format!(
                "SET LOCAL client_min_messages = warning; \
                 SET LOCAL krakenbook.chunk_interval = '{}'",
                chunk_interval.replace('\'', "''")
            ))
            .await?;
        client.batch_execute(m.sql).await?;
        client
            .execute(
                "INSERT INTO krakenbook_migrations (version, name) VALUES ($1, $2)",
                &[&m.version, &m.name],
            )
            .await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if let Err(e) = result {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(failed(e));
    }
    Ok(())
}

async fn ensure_timescaledb(client: &Client) -> Result<(), StoreError> {
    let installed = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await
        .map_err(StoreError::db("looking for the timescaledb extension"))?;
    if installed.is_some() {
        return Ok(());
    }
    match client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .await
    {
        Ok(()) => {
            tracing::info!("created the timescaledb extension");
            Ok(())
        }
        Err(source) if source.as_db_error().is_some() => {
            let database: String = client
                .query_one("SELECT current_database()", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or_else(|_| "?".to_owned());
            Err(StoreError::NoTimescale { database, source })
        }
        Err(source) => Err(StoreError::Db {
            context: "creating the timescaledb extension".into(),
            source,
        }),
    }
}

/// The server's canonical text of a positive interval, or a clear error.
async fn canonical_interval(client: &Client, text: &str) -> Result<String, StoreError> {
    let bad = |reason: String| StoreError::Option {
        option: "chunk interval",
        value: text.to_owned(),
        reason,
    };
    let row = client
        .query_one(
            "SELECT $1::text::interval::text, $1::text::interval > interval '0'",
            &[&text],
        )
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => bad(format!(
                "{} (use PostgreSQL interval syntax, e.g. '1 day', '6 hours', '30 minutes')",
                db.message()
            )),
            None => StoreError::Db {
                context: "checking the chunk interval".into(),
                source: e,
            },
        })?;
    if !row.get::<_, bool>(1) {
        return Err(bad("it must be positive".into()));
    }
    Ok(row.get(0))
}

async fn compression(client: &Client) -> Result<Compression, StoreError> {
    let license: String = client
        .query_one("SHOW timescaledb.license", &[])
        .await
        .map_err(StoreError::db("reading timescaledb.license"))?
        .get(0);
    if license != "timescale" {
        tracing::info!(
            license = %license,
            "compression skipped: this server's TimescaleDB is the {license} edition; compression needs the Timescale License"
        );
        return Ok(Compression::Skipped { license });
    }
    let mut enabled_now = false;
    for (table, orderby) in [
        ("krakenbook_book", "timestamp, seq"),
        ("krakenbook_other", "timestamp, seq"),
        ("kraken_book_states", "timestamp, seq"),
    ] {
        let enabled: bool = client
            .query_one(
                "SELECT coalesce(bool_or(compression_enabled), false)
                   FROM timescaledb_information.hypertables WHERE hypertable_name = $1",
                &[&table],
            )
            .await
            .map_err(StoreError::db("reading compression settings"))?
            .get(0);
        if !enabled {
            client
                .batch_execute(&format!(
                    "ALTER TABLE {table} SET (timescaledb.compress, \
                     timescaledb.compress_segmentby = 'symbol', \
                     timescaledb.compress_orderby = '{orderby}')"
                ))
                .await
                .map_err(StoreError::db(format!("enabling compression on {table}")))?;
            enabled_now = true;
        }
        client
            .execute(
                "SELECT add_compression_policy($1::text::regclass, $2::text::interval, if_not_exists => true)",
                &[&table, &COMPRESS_AFTER],
            )
            .await
            .map_err(StoreError::db(format!("adding the compression policy of {table}")))?;
    }
    Ok(if enabled_now {
        tracing::info!(
            after = COMPRESS_AFTER,
            "compression enabled (segment by symbol, order by time)"
        );
        Compression::Enabled
    } else {
        Compression::AlreadyEnabled
    })
}

#[cfg(test)]
mod doc_tests {
    use super::MIGRATIONS;

    /// The entries view writes out `krakenbook_dec`'s expression as migration 6 defines it
    /// (`layout.rs` compares the two): a later migration that redefined the function would leave
    /// the view decoding the old way, so none may.
    #[test]
    fn only_migration_6_defines_krakenbook_dec() {
        let defining: Vec<i32> = MIGRATIONS
            .iter()
            .filter(|m| m.sql.contains("FUNCTION krakenbook_dec("))
            .map(|m| m.version)
            .collect();
        assert_eq!(defining, [6]);
    }

    /// The crate's doc lists the tables: one a migration creates and the doc omits fails this.
    #[test]
    fn the_crate_doc_names_every_table_the_migrations_create() {
        let doc: String = include_str!("lib.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut tables = vec!["krakenbook_migrations".to_owned()];
        for m in MIGRATIONS {
            for part in m.sql.split("CREATE TABLE IF NOT EXISTS ").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                tables.push(name);
            }
        }
        assert!(tables.len() >= 8, "{tables:?}");
        for table in tables {
            assert!(
                doc.contains(&format!("`{table}`")),
                "crates/store/src/lib.rs does not list `{table}`"
            );
        }
    }
}
