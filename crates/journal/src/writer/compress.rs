//! Compression of closed segments, on a thread of its own so that the writer never waits for
//! zstd.
//!
//! What must hold: only closed segments are compressed (the writer sends a segment once it has
//! rotated past it); the compressed copy replaces the plain file only once complete (see
//! `crate::segment::compress`); a segment sent and not yet done with is known
//! ([`Compressor::is_pending`]) so retention leaves it alone; and no compression outlives its
//! writer.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::io::Fs;
use crate::segment::{SegmentFile, compress};

/// The thread that compresses closed segments. Stopping it (on drop: a writer closed or
/// dropped) abandons the segment in progress, which the next writer compresses, and waits for the
/// thread: no compression outlives its writer (it would race the next writer's recovery).
#[derive(Debug)]
pub(super) struct Compressor {
    tx: Option<std::sync::mpsc::Sender<SegmentFile>>,
    /// The `first_seq`s of the segments sent and not yet done with (compressed or failed).
    pending: Arc<Mutex<BTreeSet<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compressor {
    pub(super) fn spawn(fs: Arc<dyn Fs>, level: i32) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<SegmentFile>();
        let stop = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(Mutex::new(BTreeSet::new()));
        let stopping = Arc::clone(&stop);
        let done_with = Arc::clone(&pending);
        let spawned = std::thread::Builder::new()
            .name("journal-compress".into())
            .spawn(move || {
                for segment in rx {
                    match compress(fs.as_ref(), &segment, level, &stopping) {
                        Ok(Some(done)) => tracing::debug!(path = %done.path.display(), "journal: segment compressed"),
                        Ok(None) => return,
                        Err(e) => tracing::error!(error = %e, "journal: compressing a closed segment failed; it stays uncompressed"),
                    }
                    lock(&done_with).remove(&segment.first_seq);
                }
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "journal: cannot start the compression thread; closed segments stay uncompressed");
                None
            }
        };
        Compressor {
            tx: thread.is_some().then_some(tx),
            pending,
            stop,
            thread,
        }
    }

    pub(super) fn send(&self, segment: SegmentFile) {
        if let Some(tx) = &self.tx {
            let first_seq = segment.first_seq;
            lock(&self.pending).insert(first_seq);
            if tx.send(segment).is_err() {
                lock(&self.pending).remove(&first_seq);
            }
        }
    }

    /// Whether the segment starting at `first_seq` waits for (or is in) compression.
    pub(super) fn is_pending(&self, first_seq: u64) -> bool {
        lock(&self.pending).contains(&first_seq)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Compressor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
