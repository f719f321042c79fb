//! The feed's own thread: every [`Connection`] task of a feed runs on one current-thread tokio
//! runtime, on a thread of its own.
//!
//! Why: a frame's cost is mostly the wake-up that delivers it, not the work on it. On one thread
//! with its own runtime, a wake-up of the feed (the read tick, [`super::polled`]) reads what
//! every socket holds, and nothing
//! in it wakes another thread (no work stealing, no hand-over of tasks between workers); the only
//! cross-thread hand-off is the batch to the journal ([`super::outbox`]). The database writer,
//! the metrics server and the rest stay on the caller's runtime, so that a slow COPY or a scrape
//! never delays a read (and the receive time stamped on a frame is when it was read).
//!
//! The thread's read tick is one kernel timer ([`super::ticker`]) every connection and the
//! outbox wait on.
//!
//! What must hold: [`FeedThread::failure`] yields every error a connection (or the outbox's
//! timer, or the read tick) ended with (the first stops the collector); a connection task that panics is reported as a failure, never left
//! silently missing; after the feed's token is cancelled, [`FeedThread::join`] returns once every
//! connection has handed its last entries to the journal and the runtime is gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Connection, FeedError, FeedShared};

/// A feed running on its own thread.
#[derive(Debug)]
pub struct FeedThread {
    failures: mpsc::Receiver<FeedError>,
    ended: oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts `connections` (all of `shared`'s) and the timer of their outbox on a new thread named
/// `feed`, each running until `cancel`.
pub fn spawn_feed(
    shared: &Arc<FeedShared>,
    connections: Vec<Connection>,
    cancel: CancellationToken,
) -> Result<FeedThread, FeedError> {
    let outbox = Arc::clone(&shared.outbox);
    let shared = Arc::clone(shared);
    let runtime = tokio::runtime::Builder::new_current_thread()
        // Sockets and timers; no signal or process driver (each would be polled every turn).
        .enable_io()
        .enable_time()
        .thread_name("feed-blocking")
        .build()
        .map_err(|e| FeedError::Thread(format!("cannot start the feed's runtime: {e}")))?;
    let (failed_tx, failures) = mpsc::channel(connections.len().max(1));
    let (ended_tx, ended) = oneshot::channel::<()>();
    // The thread logs where its caller logs (a scoped subscriber too, as tests install).
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let thread = std::thread::Builder::new()
        .name("feed".into())
        .spawn(move || {
            let _logs = tracing::dispatcher::set_default(&dispatch);
            runtime.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                if let Some(ticker) = start_ticker(&shared) {
                    let shared = Arc::clone(&shared);
                    let cancel = cancel.clone();
                    tasks.spawn(async move {
                        ticker
                            .run(
                                &shared.ticks,
                                &shared.pace,
                                &shared.metrics.fast_read_ticks,
                                cancel,
                            )
                            .await
                            .map_err(|e| {
                                FeedError::Thread(format!("the feed's read tick failed: {e}"))
                            })
                    });
                }
                tasks.spawn(outbox.run(cancel.clone(), shared.read_ticks()));
                for connection in connections {
                    tasks.spawn(connection.run(cancel.clone()));
                }
                while let Some(ended) = tasks.join_next().await {
                    let failure = match ended {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => e,
                        Err(e) => FeedError::Thread(format!("a connection task failed: {e}")),
                    };
                    // Room for one failure per connection: this never waits.
                    let _ = failed_tx.send(failure).await;
                }
            });
            // The runtime (and its blocking threads) is gone before the end is announced.
            drop(runtime);
            drop(ended_tx);
        })
        .map_err(|e| FeedError::Thread(format!("cannot start the feed's thread: {e}")))?;
    Ok(FeedThread {
        failures,
        ended,
        thread,
    })
}

/// The read tick's kernel timer, on the feed's runtime, when connections read on a tick (every
/// `read_every`, whatever the hand-off period); `None` (connections then keep a tokio interval
/// each) when they read on arrival or the timer cannot be made (logged).
fn start_ticker(shared: &FeedShared) -> Option<super::ticker::Ticker> {
    let every = shared.config.read_every;
    if every.is_zero() {
        return None;
    }
    // The same period as a connection's own interval would have.
    match super::ticker::Ticker::start(shared.epoch, every.max(Duration::from_millis(1))) {
        Ok(ticker) => {
            shared
                .ticker_running
                .store(true, std::sync::atomic::Ordering::Release);
            Some(ticker)
        }
        Err(e) => {
            tracing::warn!(error = %e, "feed: no kernel timer for the read tick; each connection keeps its own");
            None
        }
    }
}

impl FeedThread {
    /// The next error a connection ended with; `None` once every connection has ended without
    /// one (after a cancel).
    pub async fn failure(&mut self) -> Option<FeedError> {
        self.failures.recv().await
    }

    /// Waits until every connection has ended (cancel the feed's token first) and the thread is
    /// gone.
    pub async fn join(self) {
        let _ = self.ended.await;
        // The thread has dropped its runtime and is returning: this does not wait long.
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The read tick is a kernel timer whenever connections read on a tick, whatever the
    /// hand-off period (a zero one hands off at the end of each wake-up, and still reads on the
    /// tick); reading on arrival there is none.
    #[tokio::test]
    async fn the_ticker_runs_whenever_reads_are_on_a_tick() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, cancel) = crate::feed::test_journal(dir.path(), 64);
        let shared = |read: u64, handoff: u64| {
            crate::feed::test_shared(
                journal.sender.clone(),
                Duration::from_millis(read),
                Duration::from_millis(handoff),
            )
        };
        for (read, handoff) in [(10, 20), (10, 0), (30, 20)] {
            let s = shared(read, handoff);
            assert!(s.read_ticks().is_none(), "not before it starts");
            assert!(
                start_ticker(&s).is_some(),
                "reads every {read} ms, hand-offs every {handoff} ms"
            );
            assert!(s.read_ticks().is_some());
        }
        let on_arrival = shared(0, 20);
        assert!(start_ticker(&on_arrival).is_none());
        assert!(on_arrival.read_ticks().is_none());
        cancel.cancel();
        journal.join().await.unwrap();
    }
}
