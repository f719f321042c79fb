//! A real TimescaleDB for the end-to-end tests: the server at `TEST_DATABASE_URL` when it is set,
//! else one throwaway cluster per test process (started on first use, stopped by its watchdog
//! when the process ends); a fresh database for every test. When neither works, the test fails
//! with a message that says how to fix it: a database test never skips.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use krakenbook::record::Record;
use krakenbook::store::{self, MigrateOptions};
use krakenbook_testkit::{TempCluster, capture};
use tokio_postgres::Client;

use crate::support::fixtures;

const HOW_TO_FIX: &str = "the database tests need TimescaleDB: run scripts/install-timescaledb \
    (it builds TimescaleDB for the machine's PostgreSQL 15 server), or set \
    TEST_DATABASE_URL=postgres://user:password@host:port/database for a server with TimescaleDB \
    where that user may create databases";

static CLUSTER: OnceLock<Result<TempCluster, String>> = OnceLock::new();

/// The test process's throwaway cluster (started on first use).
pub fn shared_cluster() -> &'static TempCluster {
    match CLUSTER.get_or_init(|| TempCluster::new().map_err(|e| e.to_string())) {
        Ok(c) => c,
        Err(e) => panic!("cannot start a throwaway TimescaleDB ({e}); {HOW_TO_FIX}"),
    }
}

/// A throwaway cluster of the test's own (for tests that stop the server or change its
/// settings).
pub fn own_cluster() -> TempCluster {
    TempCluster::new()
        .unwrap_or_else(|e| panic!("cannot start a throwaway TimescaleDB ({e}); {HOW_TO_FIX}"))
}

/// A fresh, empty database; on an external server it is dropped when this is.
#[derive(Debug)]
pub struct TestDb {
    /// Its URL.
    pub url: String,
    external: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.external.take() else {
            return;
        };
        // Dropped from a plain thread: Drop cannot await, and the test's runtime may be gone.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = store::connect(&admin_url, "krakenbook tests").await.ok()?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// A fresh, empty database.
pub async fn fresh_db() -> TestDb {
    if let Ok(url) = std::env::var("TEST_DATABASE_URL")
        && !url.trim().is_empty()
    {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "krakenbook_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = store::connect(&url, "krakenbook tests")
            .await
            .unwrap_or_else(|e| panic!("TEST_DATABASE_URL: {e}; {HOW_TO_FIX}"));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| {
                panic!("TEST_DATABASE_URL: cannot create a database: {e}; {HOW_TO_FIX}")
            });
        return TestDb {
            url: with_dbname(&url, &name),
            external: Some((url, name)),
        };
    }
    let url = shared_cluster()
        .create_database()
        .await
        .unwrap_or_else(|e| panic!("{e}; {HOW_TO_FIX}"));
    TestDb {
        url,
        external: None,
    }
}

/// `url` pointing at database `name`.
pub fn with_dbname(url: &str, name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = url
            .split_once('?')
            .map_or((url, None), |(b, q)| (b, Some(q)));
        let scheme_end = base.find("://").unwrap() + 3;
        let host_end = base[scheme_end..]
            .find('/')
            .map_or(base.len(), |i| scheme_end + i);
        let mut out = format!("{}/{name}", &base[..host_end]);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    } else {
        format!("{url} dbname={name}")
    }
}

/// A connection to `url`.
pub async fn connect(url: &str) -> Client {
    store::connect(url, "krakenbook tests")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The first column of every row `sql` returns.
pub async fn column<T>(client: &Client, sql: &str) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A fresh database with the schema, and a connection to it.
pub async fn migrated_db() -> (TestDb, Client) {
    let db = fresh_db().await;
    let client = connect(&db.url).await;
    store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (db, client)
}

/// Every received frame of the six real captures as records: seqs from 1 in file order (files
/// sorted by name), connection id = file number (from 1).
pub fn fixture_records() -> Vec<Record> {
    let mut seq = 1;
    let mut out = Vec::new();
    for (i, path) in fixtures().iter().enumerate() {
        out.extend(capture::read_capture(path, &mut seq, i as u64 + 1).unwrap());
    }
    out
}
