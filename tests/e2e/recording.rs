//! One recording shared by the export and plot tests (made once per test process, on first use):
//! the simulator over loopback (BTC/USD and ETH/USD moving, MINA/GBP quiet: it never changes, so
//! it only ever gets snapshots), a `krakenbook collect` process at depth 25 writing to a fresh
//! TimescaleDB, and on the way a lost update (a checksum mismatch, a resubscription) and then a
//! dropped connection (a reconnection, every book rebuilt).

use std::time::Duration;

use krakenbook::exchange::{Faults, SimConfig, Simulator};
use krakenbook::time::Timestamp;
use tokio::sync::OnceCell;

use crate::collect::{Collector, finish, wait_count};
use crate::db::{TestDb, connect, fresh_db};
use crate::support::three_pairs;

/// The recorded data.
#[derive(Debug)]
pub struct Recording {
    /// The database's URL.
    pub url: String,
    /// The collector's name.
    pub collector: String,
    /// Kraken timestamp of the first book message.
    pub first: Timestamp,
    /// Kraken timestamp of the last book message.
    pub last: Timestamp,
    pub(crate) _db: TestDb,
}

impl Recording {
    /// A range holding every book message.
    pub fn all(&self) -> (Timestamp, Timestamp) {
        (self.first, self.last.add_nanos(1000))
    }
}

static RECORDING: OnceCell<Recording> = OnceCell::const_new();

/// The shared recording.
pub async fn recording() -> &'static Recording {
    RECORDING.get_or_init(record).await
}

async fn record() -> Recording {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let mut config = SimConfig {
        pairs: three_pairs(),
        rate: 60.0,
        seed: 23,
        ..SimConfig::default()
    };
    config.server.faults = Faults {
        lose_after: Some(250),
        drop_after: Some(700),
        connections: Some(1),
        ..Faults::default()
    };
    let sim = Simulator::bind(config).await.expect("the simulator starts");
    let collector = Collector::start(&sim, Some(&db.url), dir.path(), &[]);
    // One resync after the lost update, three after the reconnection.
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_feed_events WHERE event = 'resynced'",
        4,
        Duration::from_secs(60),
        || collector.log(),
    )
    .await;
    let client = connect(&db.url).await;
    let verified: i64 = client
        .query_one(
            "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_count(
        &db.url,
        "SELECT count(*) FROM kraken_orderbook_messages WHERE checksum_ok",
        verified + 300,
        Duration::from_secs(30),
        || collector.log(),
    )
    .await;
    finish(sim, collector).await;
    let row = client
        .query_one(
            "SELECT min(collector), min(\"timestamp\"), max(\"timestamp\")
               FROM kraken_orderbook_messages WHERE channel = 'book'
                AND message_type IN ('snapshot', 'update')",
            &[],
        )
        .await
        .unwrap();
    Recording {
        url: db.url.clone(),
        collector: row.get(0),
        first: row.get(1),
        last: row.get(2),
        _db: db,
    }
}
