//! `krakenbook collect`: the feed, the journal and (with a database) the database writer, wired
//! together, with metrics and a graceful shutdown.
//!
//! ```text
//! feed thread (connection tasks) ──(bounded queue, a batch per hand-off)──► journal thread
//!     ──(flushed seq)──► db thread (reads the journal files, writes the database)
//! ```
//!
//! The connections run on the feed's own thread and runtime ([`crate::feed::spawn_feed`]), the
//! database pipeline on its own ([`DbPipeline::spawn`]); the metrics server and the state
//! publisher on the caller's runtime. So a wake-up for a frame, for the journal or for a database
//! round trip wakes one thread, and none waits for another's work.
//!
//! With `redundancy` N (`collect --redundancy`), each group of symbols is recorded by N
//! connection tasks (replicas, [`crate::feed::replicas`]) that share nothing but a gate; every
//! replica's frames go to the one journal, in received order, each under its own connection id.
//!
//! Shutdown drains, never drops: on cancel the connections stop reading and close; the journal
//! appends what is queued, syncs and closes; the database pipeline then commits what the journal
//! holds, for up to `shutdown_grace`. Whatever the database has not received by then stays in the
//! journal and is written on the next start: nothing is lost either way.
//!
//! With a database, the collector also publishes its state every few seconds ([`state`]: one
//! row per collector for `krakenbook serve`'s health view), on its own connection, never in the
//! feed's way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::feed::{
    Connection, FeedConfig, FeedError, FeedShared, SharedGate, all_pairs, spawn_feed,
};
use crate::journal::{JournalConfig, JournalError, spawn_journal};
use crate::metrics::{self, HealthSource, Metrics};

mod import;
mod pipeline;
pub mod state;

pub use import::{ImportError, ImportReport, import};
pub use pipeline::{
    DAMAGE_KEPT, DamageLog, DbPipeline, PipelineConfig, PipelineError, PipelineThread, Preflight,
    preflight,
};

/// Which symbols to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Symbols {
    /// These symbols.
    List(Vec<String>),
    /// Every pair the instrument channel lists as online.
    All,
}

/// Everything `collect` needs.
#[derive(Clone, Debug)]
pub struct CollectConfig {
    /// Connections and subscriptions.
    pub feed: FeedConfig,
    /// What to record.
    pub symbols: Symbols,
    /// Where and how to journal.
    pub journal: JournalConfig,
    /// Capacity of the queue between the connections and the journal.
    pub journal_queue: usize,
    /// Where to serve `/metrics` and `/health`.
    pub metrics_listen: Option<SocketAddr>,
    /// How long shutdown waits for the database to catch up with the journal.
    pub shutdown_grace: Duration,
    /// The database to write to (journal only when `None`).
    pub database: Option<DatabaseConfig>,
    /// The collector identity for a new journal (an existing journal keeps its own).
    pub collector_id: Option<String>,
}

/// Where and how the collector writes to TimescaleDB.
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// The database URL (`sslmode` honoured; never logged with its password).
    pub url: String,
    /// Batching by count and delay.
    pub batch: crate::store::BatchConfig,
    /// Chunk interval for new hypertables.
    pub chunk_interval: Option<String>,
    /// How long the database may be unreachable before `/health` says so.
    pub unhealthy_after: Duration,
}

/// What a finished run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Frames received.
    pub frames: u64,
    /// The journal's last `seq`.
    pub journal_seq: u64,
    /// The database's checkpoint at exit (`None` without a database).
    pub database_seq: Option<u64>,
}

/// Why `collect` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The feed could not go on.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The metrics address could not be bound.
    #[error(
        "cannot listen for metrics on {addr}: {source} (choose another --metrics-listen address)"
    )]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing to record.
    #[error("no symbols to record: give --symbols BTC/USD,... or --all")]
    NoSymbols,
    /// The database refused this collector at start-up (credentials, rights, another writer,
    /// another journal): the collector does not start rather than record what it cannot store.
    #[error(transparent)]
    Database(#[from] PipelineError),
}

/// How long the start-up check waits for the database before the collector starts journaling
/// alone.
const PREFLIGHT_WAIT: Duration = Duration::from_secs(15);

/// Runs the collector until `cancel`, then shuts down gracefully.
pub async fn run(
    config: CollectConfig,
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<Summary, CollectError> {
    let metrics_task = match config.metrics_listen {
        Some(addr) => {
            let listener = metrics::bind(addr)
                .await
                .map_err(|source| CollectError::Metrics { addr, source })?;
            tracing::info!(%addr, "metrics: serving /metrics and /health");
            Some(tokio::spawn(metrics::serve(
                listener,
                Arc::clone(&metrics),
                cancel.child_token(),
            )))
        }
        None => None,
    };

    let collector = crate::journal::identity(&config.journal.dir, config.collector_id.as_deref())?;
    let (checkpoint_tx, checkpoint_rx) = tokio::sync::watch::channel(0u64);
    let journal_cancel = CancellationToken::new();
    let retention_waits_for = config.database.as_ref().map(|_| checkpoint_rx);
    let journal = spawn_journal(
        config.journal.clone(),
        config.journal_queue,
        retention_waits_for,
        journal_cancel.clone(),
    )?;
    metrics.attach_journal(Arc::clone(&journal.stats));
    // The journal's segment bytes and free disk, for /metrics, until the journal closes.
    tokio::spawn(metrics::disk::sample_every(
        config.journal.dir.clone(),
        Arc::clone(&metrics),
        metrics::disk::SAMPLE_EVERY,
        journal_cancel.clone(),
    ));
    let recovery = journal.recovery.clone();
    // A full disk or a failing rotation shows on /health while it lasts.
    let mut journal_problem = journal.problem.clone();
    let problem_metrics = Arc::clone(&metrics);
    tokio::spawn(async move {
        loop {
            let problem = journal_problem.borrow_and_update().clone();
            problem_metrics.set_problem(HealthSource::Journal, problem);
            if journal_problem.changed().await.is_err() {
                break;
            }
        }
    });
    tracing::info!(
        dir = %config.journal.dir.display(),
        last_seq = recovery.last_seq,
        torn_bytes = recovery.torn_bytes,
        "journal: open"
    );

    let journal_instance = match &config.database {
        Some(_) => Some(crate::journal::instance(&config.journal.dir)?),
        None => None,
    };
    let pipeline_config = config.database.as_ref().map(|db| PipelineConfig {
        batch: db.batch,
        chunk_interval: db.chunk_interval.clone(),
        journal_instance: journal_instance.clone(),
        unhealthy_after: db.unhealthy_after,
        ..PipelineConfig::new(&config.journal.dir, collector.clone(), db.url.clone())
    });
    if let Some(pconfig) = &pipeline_config {
        // Refusals (credentials, rights, another writer of this identity, another journal) stop
        // the collector before it records anything it could not store; a database that does not
        // answer only delays the pipeline: the journal records alone until it returns.
        let journal_end = recovery.next_seq.saturating_sub(1);
        match preflight(pconfig, journal_end, PREFLIGHT_WAIT).await {
            Ok(Preflight::Ready { checkpoint }) => {
                tracing::info!(database = %crate::store::redact(&pconfig.database_url), %collector, checkpoint = ?checkpoint, "database: ready");
            }
            Ok(Preflight::Unreachable { reason }) => {
                tracing::warn!(%reason, "database: unreachable at start; journaling alone, the pipeline keeps trying");
            }
            Err(e) => {
                journal_cancel.cancel();
                let _ = journal.join().await;
                return Err(CollectError::Database(e));
            }
        }
    }
    let (done_tx, done_rx) = tokio::sync::watch::channel(None::<u64>);
    let pipeline_cancel = CancellationToken::new();
    let pipeline_task = pipeline_config.map(|pconfig| {
        tracing::info!(database = %crate::store::redact(&pconfig.database_url), %collector, "database: writing through the journal");
        let pipeline = DbPipeline::new(
            pconfig,
            journal.flushed.clone(),
            Some(journal.syncer()),
            Arc::clone(&metrics),
        )
        .publish_checkpoints(checkpoint_tx);
        pipeline.spawn(pipeline_cancel.clone(), done_rx)
    });
    let pipeline_task = match pipeline_task.transpose() {
        Ok(task) => task,
        Err(e) => {
            journal_cancel.cancel();
            let _ = journal.join().await;
            return Err(CollectError::Database(e));
        }
    };

    let symbols = match &config.symbols {
        Symbols::List(list) => list.clone(),
        Symbols::All => {
            let pairs = tokio::select! {
                _ = cancel.cancelled() => Vec::new(),
                pairs = all_pairs(&config.feed, Duration::from_secs(30)) => pairs?,
            };
            tracing::info!(pairs = pairs.len(), "feed: recording every online pair");
            pairs
        }
    };
    if symbols.is_empty() && !cancel.is_cancelled() {
        return Err(CollectError::NoSymbols);
    }

    // The collector's state for `krakenbook serve`, on its own connection: never in the way.
    let state_cancel = cancel.child_token();
    let state_task = config.database.as_ref().map(|db| {
        tokio::spawn(
            state::StatePublisher {
                database_url: db.url.clone(),
                collector: collector.clone(),
                symbols: symbols.clone(),
                metrics: Arc::clone(&metrics),
                every: state::PUBLISH_EVERY,
            }
            .run(state_cancel.clone()),
        )
    });

    let per = config.feed.symbols_per_connection.max(1);
    let redundancy = config
        .feed
        .redundancy
        .clamp(1, crate::feed::replicas::MAX_REDUNDANCY);
    let mut feed_shared = FeedShared::new(
        config.feed.clone(),
        journal.sender.clone(),
        Arc::clone(&metrics),
        recovery.conn_id_base,
    );
    // Every connection opens at once at start (up to a bound), not ten then one every 10 s,
    // from the bucket the last run left (Kraken counts connects per address, not per process).
    let budget = crate::feed::ConnectBudget::in_dir(&config.journal.dir);
    feed_shared.connect_limiter =
        crate::feed::connect_limiter(symbols.len().div_ceil(per) * redundancy, Some(&budget));
    feed_shared.connect_budget = Some(budget);
    let shared = Arc::new(feed_shared);
    let feed_cancel = cancel.child_token();
    let mut connections = Vec::new();
    for (group, chunk) in symbols.chunks(per).enumerate() {
        // With redundancy, the group's replicas share a gate; the connection index (the
        // backoff's seed) is unique per replica.
        let gate = (redundancy > 1)
            .then(|| Arc::new(SharedGate::new(redundancy, config.feed.replica_deadline)));
        let books = (redundancy > 1 && config.feed.share_books).then(|| {
            Arc::new(crate::feed::shared_books::SharedBooks::with_metrics(
                Arc::clone(&metrics),
            ))
        });
        for replica in 0..redundancy {
            let index = group * redundancy + replica;
            let mut connection = Connection::new(index, chunk.to_vec(), Arc::clone(&shared));
            if let Some(gate) = &gate {
                connection = connection.replica(replica, Arc::clone(gate));
            }
            if let Some(books) = &books {
                connection = connection.share_books(Arc::clone(books));
            }
            connections.push(connection);
        }
    }
    let connection_count = connections.len();
    // Every connection on the feed's own thread (see `feed::spawn_feed`).
    let mut feed = match spawn_feed(&shared, connections, feed_cancel.clone()) {
        Ok(feed) => feed,
        Err(e) => {
            journal_cancel.cancel();
            let _ = journal.join().await;
            return Err(CollectError::Feed(e));
        }
    };
    tracing::info!(symbols = symbols.len(), connections = connection_count, redundancy, depth = %config.feed.depth, "feed: started");

    let outcome = tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        failure = feed.failure() => match failure {
            Some(e) => Err(CollectError::Feed(e)),
            None => Ok(()),
        },
    };

    // Shut down: stop reading, close the journal after it drains, then stop the rest.
    feed_cancel.cancel();
    state_cancel.cancel();
    feed.join().await;
    drop(shared);
    journal_cancel.cancel();
    let stats = Arc::clone(&journal.stats);
    let journal_result = journal.join().await;
    let journal_seq = stats.flushed_seq.load(Ordering::Acquire);
    if let Some(mut task) = pipeline_task {
        let _ = done_tx.send(Some(journal_seq));
        if tokio::time::timeout(config.shutdown_grace, task.join())
            .await
            .is_err()
        {
            let (lag, _, _) = metrics.db_lag();
            tracing::warn!(
                records = lag,
                "database: not caught up within the shutdown grace; the journal keeps the rest for the next start"
            );
            pipeline_cancel.cancel();
            task.join().await;
        }
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(task) = state_task {
        let _ = task.await;
    }
    let summary = Summary {
        frames: metrics.frames.load(Ordering::Relaxed),
        journal_seq: stats.synced_seq.load(Ordering::Relaxed),
        database_seq: metrics.store_checkpoint(),
    };
    // The journal's own error first: when it fails, every connection only sees "journal closed".
    journal_result?;
    tracing::info!(
        frames = summary.frames,
        journal_seq = summary.journal_seq,
        "collect: stopped; journal synced"
    );
    outcome?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `metrics::bind` leaves the address to its caller: `run` must name it and say what to do.
    #[tokio::test]
    async fn a_metrics_address_in_use_is_refused_naming_the_address_and_the_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = CollectConfig {
            feed: FeedConfig::new("ws://127.0.0.1:9/v2".parse().unwrap(), Default::default()),
            symbols: Symbols::List(vec!["BTC/USD".to_owned()]),
            journal: JournalConfig::new(dir.path()),
            journal_queue: 16,
            metrics_listen: Some(addr),
            shutdown_grace: Duration::from_secs(1),
            database: None,
            collector_id: None,
        };
        let err = run(config, CancellationToken::new(), Arc::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, CollectError::Metrics { addr: a, .. } if a == addr),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        assert!(text.contains("--metrics-listen"), "{text}");
    }
}
