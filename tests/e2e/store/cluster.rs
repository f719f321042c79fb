//! The writer against the cluster's other sessions and its availability: one writer per
//! collector (a second is refused naming the holder and the fix), a lock left by a killed writer
//! or held by a stuck session of this one taken back, and a database outage waited out, with
//! every record stored exactly once.

use std::time::Duration;

use krakenbook::store::{self, ErrorClass, MigrateOptions, StoreError, Writer, WriterConfig};

use super::{assert_stored_once, count, test_config};
use crate::db::{connect, fixture_records, migrated_db, own_cluster};

#[tokio::test]
async fn a_writer_whose_attempt_timed_out_takes_its_lock_back_from_its_stuck_session() {
    let (db, client) = migrated_db().await;
    let records = fixture_records();
    // The book table held: every attempt stops at its book COPY until released, and an
    // abandoned attempt's server session stays there, holding the collector's writer lock.
    let mut holder = connect(&db.url).await;
    let hold = holder.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE krakenbook_book IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let url = db.url.clone();
    let writing = tokio::spawn({
        let records = records[..500].to_vec();
        async move {
            let mut w = Writer::new(
                &url,
                WriterConfig {
                    attempt_timeout: Duration::from_millis(1500),
                    ..test_config("stuck")
                },
            )
            .unwrap();
            let report = w.write_batch(&records).await;
            (report, w.stats())
        }
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    hold.commit().await.unwrap();
    let (report, stats) = writing.await.unwrap();
    let report = report.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.attempts >= 2, "{report:?}");
    assert!(stats.retries >= 1 && stats.connections >= 2, "{stats:?}");
    assert_stored_once(&client, &records[..500]).await;
}

#[tokio::test]
async fn a_second_writer_of_one_collector_is_refused_naming_the_holder_and_the_fix() {
    let (db, client) = migrated_db().await;
    let records = fixture_records();
    let mut first = Writer::connect(&db.url, test_config("twin")).await.unwrap();
    first.write_batch(&records[..300]).await.unwrap();
    // A second process with the same identity (a copied journal directory): refused at once,
    // never retried, whether it connects eagerly or on its first batch.
    let err = Writer::connect(&db.url, test_config("twin"))
        .await
        .expect_err("the second writer must be refused");
    assert_eq!(err.class(), ErrorClass::Environment, "{err}");
    let text = err.to_string();
    for needle in [
        "\"twin\"",
        "application 'krakenbook writer twin (pid",
        "server pid",
        "pg_terminate_backend",
        "--collector-id",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let mut lazy = Writer::new(&db.url, test_config("twin")).unwrap();
    let err = lazy.write_batch(&records[300..600]).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Batch { source, attempts: 1, .. } if matches!(**source, StoreError::Locked { .. })),
        "{err:?}"
    );
    // Another identity is not concerned; the first writer goes on.
    let mut other = Writer::connect(&db.url, test_config("other"))
        .await
        .unwrap();
    other.write_batch(&records[..10]).await.unwrap();
    first.write_batch(&records[300..]).await.unwrap();
    // Once the holder is gone, the identity is free again.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        match Writer::connect(&db.url, test_config("twin")).await {
            Ok(w) => {
                again = Some(w);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut again = again.expect("the lock goes with its session");
    assert_eq!(
        again.checkpoint().await.unwrap(),
        Some(records.len() as u64)
    );
    let stored = count(
        &client,
        "SELECT count(DISTINCT seq) - count(*) FROM kraken_orderbook_messages WHERE collector = 'twin'",
    )
    .await;
    assert_eq!(stored, 0, "nothing written twice");
}

#[tokio::test]
async fn a_lock_left_by_a_killed_writer_of_this_host_is_taken_back_but_a_live_one_is_not() {
    let (db, _client) = migrated_db().await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    // A session of a krakenbook writer killed mid-statement: its process is gone, the server has
    // not noticed yet, and it holds the lock. Then one of a process that still runs (pid 1).
    for (pid, taken_back) in [(u32::MAX - 7, true), (1, false)] {
        let stale = connect(&db.url).await;
        stale
            .batch_execute(&format!(
                "SET application_name = 'krakenbook writer orphan (pid {pid} on {host})'"
            ))
            .await
            .unwrap();
        stale
            .query_one(
                "SELECT pg_advisory_lock($1::int4, hashtext('orphan'))",
                &[&store::WRITER_LOCK],
            )
            .await
            .unwrap();
        let result = Writer::connect(&db.url, test_config("orphan")).await;
        assert_eq!(result.is_ok(), taken_back, "pid {pid}: {result:?}");
        if !taken_back {
            let text = result.unwrap_err().to_string();
            assert!(text.contains(&format!("pid {pid} on {host}")), "{text}");
        }
    }
}

#[tokio::test]
async fn the_writer_waits_out_a_database_outage() {
    let cluster = own_cluster();
    let url = cluster.create_database().await.unwrap();
    let client = connect(&url).await;
    store::migrate(&client, &MigrateOptions::default())
        .await
        .unwrap();
    drop(client);
    let records = fixture_records();
    let mut w = Writer::new(&url, WriterConfig::new("outage")).unwrap();
    w.write_batch(&records[..2000]).await.unwrap();
    cluster.stop().unwrap();
    assert!(!cluster.is_running());
    let writing = tokio::spawn({
        let records = records[2000..].to_vec();
        async move {
            let report = w.write_batch(&records).await;
            (report, w.stats())
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !writing.is_finished(),
        "the writer must wait for the database"
    );
    cluster.start().unwrap();
    let (report, stats) = writing.await.unwrap();
    let report = report.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.attempts > 1, "{report:?}");
    assert!(stats.retries >= 1);
    let client = connect(&url).await;
    assert_stored_once(&client, &records).await;
}
