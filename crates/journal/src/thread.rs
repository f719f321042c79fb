//! The journal's own thread: takes entries from a bounded queue, appends them, flushes, syncs
//! (on a timer and on request), rotates and expires, so that file I/O never blocks the async
//! feed and a slow or full disk pushes back on the socket readers instead of growing memory.
//!
//! The queue ([`JournalSender`]) is bounded by a count of entries and by their bytes
//! ([`QUEUE_BYTES`]: a burst of depth-1000 snapshots, 80 kB each, waits in the sockets rather
//! than in memory), and takes them one at a time or a batch at a time: a batch is one message, so it wakes the journal thread once, however
//! many entries it holds (sent one by one, each could wake it: the kernel often runs the thread
//! woken before the sender sends the next).
//!
//! What must hold:
//! - `synced` (and [`Syncer::sync_through`]) only ever names records an fsync covered: the
//!   database pipeline commits nothing a power cut could take back;
//! - on a full disk nothing is dropped: the records already taken stay in memory, no more are
//!   taken from the queue (the feed feels the back-pressure), the problem is published on
//!   [`JournalHandle::problem`], and writing is retried every second;
//! - a failed fsync stops the thread with the error naming the file; it is never retried as if
//!   the data were safe. The next start recovers from what the disk holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::JournalError;
use super::recovery::Recovery;
use super::spare::SpareBuffers;
use super::writer::{Entry, JournalConfig, JournalStats, JournalWriter};
use crate::record::RecordBody;

/// The longest a record waits in the writer's buffer before it is handed to the operating system
/// (what a crash of the process, as opposed to the machine, can lose).
pub const FLUSH_EVERY: Duration = Duration::from_millis(2);
/// How often writing is retried while the disk is full.
pub const DISK_FULL_RETRY: Duration = Duration::from_secs(1);
/// How often the journal thread looks at rotation by age and retention when nothing else wakes
/// it (a segment's age limit is kept to within this).
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// Entries taken from the queue at once before the writer looks at its timers again.
const BATCH: usize = 4096;
/// How many times closing retries a full disk (once a second) before it gives up.
const CLOSE_RETRIES: u32 = 5;
/// The most bytes of entries the queue holds (about: counted in KiB, each entry with a little
/// overhead); a batch larger than this goes in alone.
pub const QUEUE_BYTES: usize = 4 << 20;
const QUEUE_KIB: u32 = (QUEUE_BYTES >> 10) as u32;

/// When the journal thread must look at its timers even if nothing comes: the periodic sync
/// (`sync_every` after the last) while something written is not synced yet, else the next
/// [`HOUSEKEEPING`] (rotation by age, retention).
fn next_housekeeping(
    unsynced: bool,
    last_sync: Instant,
    last_housekeeping: Instant,
    sync_every: Duration,
) -> Instant {
    let housekeeping = last_housekeeping + HOUSEKEEPING;
    if unsynced {
        housekeeping.min(last_sync + sync_every)
    } else {
        housekeeping
    }
}

/// The bytes an entry stands for in the queue's bound.
fn entry_bytes(entry: &Entry) -> usize {
    const OVERHEAD: usize = 64;
    OVERHEAD
        + match &entry.body {
            crate::record::RecordBody::Frame(frame) => frame.bytes.len(),
            crate::record::RecordBody::BookState(state) => {
                32 * (state.bids.len() + state.asks.len())
            }
            crate::record::RecordBody::Event(event) => event.detail.len(),
        }
}

/// The KiB of the queue's byte bound that `entries` take (at most all of it).
fn batch_kib(entries: &[Entry]) -> u32 {
    let bytes: usize = entries.iter().map(entry_bytes).sum();
    u32::try_from(bytes.div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, QUEUE_KIB)
}

/// The journal's queue: entries go in one at a time or a batch at a time, in order, and wait for
/// room when `capacity` entries are already waiting (back-pressure, never memory).
#[derive(Clone, Debug)]
pub struct JournalSender {
    /// Batches with the KiB of the byte bound they took.
    batches: mpsc::UnboundedSender<(Vec<Entry>, u32)>,
    /// One permit per entry the queue has room for; the journal thread gives them back as it
    /// takes entries, and closes it when it stops (waiting senders then fail).
    room: Arc<Semaphore>,
    /// One permit per KiB of [`QUEUE_BYTES`] free; given back and closed as `room` is.
    bytes_room: Arc<Semaphore>,
    capacity: usize,
    /// The buffers of frames the journal thread wrote, for the sender's next copies.
    spare: Arc<SpareBuffers>,
}

impl JournalSender {
    /// The buffers of the frames the journal thread wrote: [`SpareBuffers::copy_of`] copies a
    /// frame to journal into one.
    pub fn spare_buffers(&self) -> &Arc<SpareBuffers> {
        &self.spare
    }

    /// Queues one entry, waiting for room. Fails (giving the entry back) once the journal has
    /// stopped taking entries.
    // As tokio's `send`: the entry comes back on failure.
    #[allow(clippy::result_large_err)]
    pub async fn send(&self, entry: Entry) -> Result<(), SendError<Entry>> {
        let Ok(permit) = self.room.acquire().await else {
            return Err(SendError(entry));
        };
        permit.forget();
        let entries = vec![entry];
        let kib = batch_kib(&entries);
        let Ok(permit) = self.bytes_room.acquire_many(kib).await else {
            return Err(SendError(
                entries.into_iter().next().expect("a batch of one"),
            ));
        };
        permit.forget();
        // The batch given back is the one just made, of one entry: `next` is that entry.
        self.batches
            .send((entries, kib))
            .map_err(|e| SendError(e.0.0.into_iter().next().expect("a batch of one")))
    }

    /// Queues `entries` in order, waiting for room; each part that fits in the queue at once
    /// wakes the journal thread once. Fails (giving back what was not queued) once the journal
    /// has stopped taking entries.
    pub async fn send_batch(&self, mut entries: Vec<Entry>) -> Result<(), SendError<Vec<Entry>>> {
        while !entries.is_empty() {
            let n = entries.len().min(self.capacity);
            let rest = entries.split_off(n);
            let permits = u32::try_from(n).unwrap_or(u32::MAX);
            let Ok(permit) = self.room.acquire_many(permits).await else {
                entries.extend(rest);
                return Err(SendError(entries));
            };
            permit.forget();
            let kib = batch_kib(&entries);
            let Ok(permit) = self.bytes_room.acquire_many(kib).await else {
                entries.extend(rest);
                return Err(SendError(entries));
            };
            permit.forget();
            if let Err(e) = self.batches.send((entries, kib)) {
                let mut back = e.0.0;
                back.extend(rest);
                return Err(SendError(back));
            }
            entries = rest;
        }
        Ok(())
    }

    /// Queues one entry if there is room now.
    // As tokio's `try_send`: the entry comes back on failure, so nothing is lost by trying.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, entry: Entry) -> Result<(), TrySendError<Entry>> {
        match self.room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(TrySendError::Full(entry)),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(TrySendError::Closed(entry)),
        }
        let entries = vec![entry];
        let kib = batch_kib(&entries);
        let back = |entries: Vec<Entry>| entries.into_iter().next().expect("a batch of one");
        match self.bytes_room.try_acquire_many(kib) {
            Ok(permit) => permit.forget(),
            Err(e) => {
                // The entry's room goes back: it was not queued.
                self.room.add_permits(1);
                return Err(match e {
                    tokio::sync::TryAcquireError::NoPermits => TrySendError::Full(back(entries)),
                    tokio::sync::TryAcquireError::Closed => TrySendError::Closed(back(entries)),
                });
            }
        }
        // The batch given back is the one just made, of one entry: `next` is that entry.
        self.batches
            .send((entries, kib))
            .map_err(|e| TrySendError::Closed(back(e.0.0)))
    }

    /// Room for this many more entries now.
    pub fn capacity(&self) -> usize {
        self.room.available_permits()
    }

    /// The most entries the queue holds.
    pub fn max_capacity(&self) -> usize {
        self.capacity
    }
}

/// A journal running on its own thread.
#[derive(Debug)]
pub struct JournalHandle {
    /// Where to send entries. Dropping every sender (or cancelling) drains and closes the journal.
    pub sender: JournalSender,
    /// The last `seq` handed to the operating system, for readers following the journal.
    pub flushed: watch::Receiver<u64>,
    /// The last `seq` synced to disk: what a power cut cannot take back.
    pub synced: watch::Receiver<u64>,
    /// Why the journal is held up (`Some`: a full disk, a rotation that fails) or stopped (a
    /// failed sync); `None` while it writes normally. For `/health`
    /// (`Metrics::set_problem(HealthSource::Journal, ..)`).
    pub problem: watch::Receiver<Option<String>>,
    sync_now: Arc<Notify>,
    /// What opening the journal found.
    pub recovery: Recovery,
    /// Live counters.
    pub stats: Arc<JournalStats>,
    thread: std::thread::JoinHandle<Result<(), JournalError>>,
}

impl JournalHandle {
    /// A handle that asks the journal to sync now and waits for it (see [`Syncer`]).
    pub fn syncer(&self) -> Syncer {
        Syncer {
            synced: self.synced.clone(),
            sync_now: Arc::clone(&self.sync_now),
        }
    }

    /// Waits for the journal thread to drain, sync and close.
    pub async fn join(self) -> Result<(), JournalError> {
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| JournalError::Thread(e.to_string()))?
            .map_err(|_| JournalError::Thread("the journal thread panicked".into()))?
    }
}

/// Asks a running journal to sync, and waits until a `seq` is on disk: the database pipeline
/// commits only records a power cut cannot take back.
#[derive(Clone, Debug)]
pub struct Syncer {
    synced: watch::Receiver<u64>,
    sync_now: Arc<Notify>,
}

impl Syncer {
    /// The last `seq` synced to disk.
    pub fn synced(&self) -> u64 {
        *self.synced.borrow()
    }

    /// Returns once every record up to `seq` is synced to disk, asking the journal to sync now
    /// if it is not yet. Fails when the journal closed without syncing `seq` (it was never
    /// written, or the journal failed).
    pub async fn sync_through(&mut self, seq: u64) -> Result<(), JournalError> {
        loop {
            if *self.synced.borrow_and_update() >= seq {
                return Ok(());
            }
            self.sync_now.notify_one();
            if self.synced.changed().await.is_err() {
                let last = *self.synced.borrow();
                return if last >= seq {
                    Ok(())
                } else {
                    Err(JournalError::Thread(format!(
                        "the journal closed with seq {last} synced, before seq {seq}"
                    )))
                };
            }
        }
    }
}

/// Opens the journal and runs it on a dedicated thread. Entries arrive through a channel of
/// `capacity`; the thread appends them, flushes whenever the channel runs dry but at most every
/// [`FLUSH_EVERY`] (so a crash of the process loses at most that much), syncs at least every
/// `sync_interval` and whenever a [`Syncer`] asks, rotates, and expires. `checkpoint` is the
/// database's checkpoint (retention waits for it); `None` without a database. It stops after
/// `cancel` once the channel is drained, or when every sender is dropped.
pub fn spawn_journal(
    config: JournalConfig,
    capacity: usize,
    checkpoint: Option<watch::Receiver<u64>>,
    cancel: CancellationToken,
) -> Result<JournalHandle, JournalError> {
    // A zero interval (refused by `JournalConfig::validate`, but possible here) would spin.
    let sync_every = config.sync_interval.max(Duration::from_millis(1));
    let (writer, recovery) = JournalWriter::open(config)?;
    let stats = writer.stats();
    let opened = writer.written_seq();
    // The permits are counted in u32 (`acquire_many`): a larger queue is no use anyway.
    let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let (tx, rx) = mpsc::unbounded_channel::<(Vec<Entry>, u32)>();
    let room = Arc::new(Semaphore::new(capacity));
    let bytes_room = Arc::new(Semaphore::new(QUEUE_KIB as usize));
    let (flushed_tx, flushed_rx) = watch::channel(opened);
    let (synced_tx, synced_rx) = watch::channel(opened);
    let (problem_tx, problem_rx) = watch::channel(None);
    let sync_now = Arc::new(Notify::new());
    let spare = Arc::new(SpareBuffers::default());
    let task = Task {
        writer,
        spare: Arc::clone(&spare),
        rx,
        room: Room(Arc::clone(&room), Arc::clone(&bytes_room)),
        flushed_tx,
        synced_tx,
        problem_tx,
        sync_requested: Arc::clone(&sync_now),
        checkpoint,
        cancel,
        sync_every,
        stalled_until: None,
        rotation_problem: false,
    };
    let thread = std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || -> Result<(), JournalError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| JournalError::Thread(e.to_string()))?;
            runtime.block_on(task.run())
        })
        .map_err(|e| JournalError::Thread(e.to_string()))?;
    Ok(JournalHandle {
        sender: JournalSender {
            batches: tx,
            room,
            bytes_room,
            capacity,
            spare,
        },
        flushed: flushed_rx,
        synced: synced_rx,
        problem: problem_rx,
        sync_now,
        recovery,
        stats,
        thread,
    })
}

struct Task {
    writer: JournalWriter,
    /// Where the buffers of the frames written go, for the feed's next copies.
    spare: Arc<SpareBuffers>,
    rx: mpsc::UnboundedReceiver<(Vec<Entry>, u32)>,
    /// The queue's room, given back as entries are taken.
    room: Room,
    flushed_tx: watch::Sender<u64>,
    synced_tx: watch::Sender<u64>,
    problem_tx: watch::Sender<Option<String>>,
    sync_requested: Arc<Notify>,
    checkpoint: Option<watch::Receiver<u64>>,
    cancel: CancellationToken,
    sync_every: Duration,
    /// While the disk is full: when to try writing again.
    stalled_until: Option<Instant>,
    /// Whether a failing rotation is published as the problem.
    rotation_problem: bool,
}

/// The queue's room as the journal thread holds it: however the thread ends, the room closes,
/// so that senders waiting for it fail rather than wait forever.
struct Room(Arc<Semaphore>, Arc<Semaphore>);

impl Room {
    fn close(&self) {
        self.0.close();
        self.1.close();
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.close();
    }
}

impl Task {
    async fn run(mut self) -> Result<(), JournalError> {
        let mut last_housekeeping = Instant::now();
        let mut last_sync = Instant::now();
        let mut last_expire = Instant::now();
        let mut last_flush = Instant::now();
        let mut flush_due: Option<Instant> = None;
        let result: Result<(), JournalError> = loop {
            let stalled = self.stalled_until.is_some();
            let housekeeping_at = self.next_housekeeping(last_sync, last_housekeeping);
            let step = tokio::select! {
                biased;
                // A reader wants what it holds on disk: everything appended so far.
                _ = self.sync_requested.notified() => {
                    last_sync = Instant::now();
                    self.sync()
                }
                _ = self.cancel.cancelled() => break self.drain(),
                // While a flush is pending the queue is not watched: entries gather in it and are
                // taken all at once when the flush is due, so that a trickle of frames costs one
                // wake-up, one write and one reader wake-up per FLUSH_EVERY instead of one per
                // frame. While the disk is full nothing more is taken: the queue pushes back.
                batch = self.rx.recv(), if flush_due.is_none() && !stalled => {
                    let Some(batch) = batch else { break Ok(()) };
                    match self.take(batch) {
                        Ok(()) if last_flush.elapsed() >= FLUSH_EVERY => {
                            last_flush = Instant::now();
                            self.flush()
                        }
                        Ok(()) => {
                            flush_due = Some(last_flush + FLUSH_EVERY);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                _ = tokio::time::sleep_until(flush_due.unwrap_or_else(Instant::now)), if flush_due.is_some() && !stalled => {
                    flush_due = None;
                    last_flush = Instant::now();
                    self.take_queued().and_then(|()| self.flush())
                }
                _ = tokio::time::sleep_until(self.stalled_until.unwrap_or_else(Instant::now)), if stalled => {
                    self.flush()
                }
                // The periodic sync, when something written is not synced yet (a steady feed's
                // hand-offs and the database's sync requests wake the thread anyway, so this
                // rarely fires), and rotation by age and retention every HOUSEKEEPING; no
                // wake-up a second of its own (each costs more than a hand-off's write).
                _ = tokio::time::sleep_until(housekeeping_at) => {
                    last_housekeeping = Instant::now();
                    Ok(())
                }
            };
            if let Err(e) = self.settle(step) {
                break Err(e);
            }
            if self.stalled_until.is_some() {
                flush_due = None;
            }
            if last_sync.elapsed() >= self.sync_every {
                last_sync = Instant::now();
                let synced = self.sync();
                if let Err(e) = self.settle(synced) {
                    break Err(e);
                }
            }
            if self.stalled_until.is_none() {
                match self.writer.maybe_rotate() {
                    Ok(true) if self.rotation_problem => {
                        self.rotation_problem = false;
                        tracing::info!("journal: rotating again");
                        self.publish(None);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Err(e) = self.settle(Err(e)) {
                            break Err(e);
                        }
                    }
                }
            }
            if last_expire.elapsed() >= Duration::from_secs(60) {
                last_expire = Instant::now();
                let keep_after = self.checkpoint.as_ref().map_or(u64::MAX, |c| *c.borrow());
                if let Err(e) = self.writer.expire(keep_after) {
                    tracing::warn!(error = %e, "journal: retention failed; will retry");
                }
            }
        };
        self.close(result).await
    }

    /// When the loop must look at its timers even if nothing comes ([`next_housekeeping`]).
    fn next_housekeeping(&self, last_sync: Instant, last_housekeeping: Instant) -> Instant {
        let unsynced = self.writer.synced_seq() < self.writer.written_seq();
        next_housekeeping(unsynced, last_sync, last_housekeeping, self.sync_every)
    }

    /// Appends `first` and whatever else is already queued (without flushing).
    fn take(&mut self, first: (Vec<Entry>, u32)) -> Result<(), JournalError> {
        self.append(first)?;
        self.take_queued()
    }

    fn take_queued(&mut self) -> Result<(), JournalError> {
        let mut taken = 0;
        while taken < BATCH {
            match self.rx.try_recv() {
                Ok(batch) => {
                    taken += batch.0.len();
                    self.append(batch)?;
                }
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Appends a batch taken from the queue, giving its room back, and its frames' buffers to
    /// the spare ones. On an error (a failed write) the rest of the batch is not appended: the
    /// journal stops.
    fn append(&mut self, (batch, kib): (Vec<Entry>, u32)) -> Result<(), JournalError> {
        self.room.0.add_permits(batch.len());
        self.room.1.add_permits(kib as usize);
        let mut spent = Vec::with_capacity(batch.len());
        let mut appended = Ok(());
        for entry in batch {
            match self.writer.append_giving_back(entry) {
                Ok((_, RecordBody::Frame(frame))) => spent.push(frame.bytes),
                Ok(_) => {}
                Err(e) => {
                    appended = Err(e);
                    break;
                }
            }
        }
        self.spare.give(spent);
        appended
    }

    fn flush(&mut self) -> Result<(), JournalError> {
        let flushed = self.writer.flush();
        self.announce();
        flushed
    }

    fn sync(&mut self) -> Result<(), JournalError> {
        let synced = self.writer.sync();
        self.announce();
        synced
    }

    /// Publishes the flushed and synced seqs (only when they move: a waiting [`Syncer`] is
    /// woken by progress, never by a sync that changed nothing).
    fn announce(&self) {
        let written = self.writer.written_seq();
        let synced = self.writer.synced_seq();
        self.flushed_tx.send_if_modified(|s| {
            let moved = written > *s;
            *s = (*s).max(written);
            moved
        });
        self.synced_tx.send_if_modified(|s| {
            let moved = synced > *s;
            *s = (*s).max(synced);
            moved
        });
    }

    /// Sorts a step's outcome: a full disk or a failed rotation is waited out (published as the
    /// problem, retried); anything else is fatal.
    fn settle(&mut self, step: Result<(), JournalError>) -> Result<(), JournalError> {
        match step {
            Ok(()) => {
                if self.stalled_until.is_some() && self.writer.waiting() == 0 {
                    self.stalled_until = None;
                    self.publish(None);
                }
                Ok(())
            }
            Err(e) if e.is_disk_full() => {
                if self.stalled_until.is_none() {
                    let why = format!(
                        "journal: disk full, {} records wait in memory and the feed is held back; retrying every second: {e}",
                        self.writer.waiting()
                    );
                    tracing::error!("{why}");
                    self.publish(Some(why));
                }
                self.stalled_until = Some(Instant::now() + DISK_FULL_RETRY);
                Ok(())
            }
            Err(e) if e.is_retriable() => {
                if !self.rotation_problem {
                    let why = format!(
                        "journal: cannot start a new segment, still writing {}; retrying with each write (at least every 10 s): {e}",
                        self.writer.segment_path().display()
                    );
                    tracing::error!("{why}");
                    self.rotation_problem = true;
                    self.publish(Some(why));
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn publish(&self, problem: Option<String>) {
        self.problem_tx.send_replace(problem);
    }

    /// On cancel: takes everything still queued (nothing is dropped).
    fn drain(&mut self) -> Result<(), JournalError> {
        self.rx.close();
        self.room.close();
        while let Ok(batch) = self.rx.try_recv() {
            self.append(batch)?;
        }
        Ok(())
    }

    async fn close(mut self, result: Result<(), JournalError>) -> Result<(), JournalError> {
        if let Err(e) = &result {
            tracing::error!(error = %e, "journal: stopped");
            self.publish(Some(format!("journal: stopped: {e}")));
            self.announce();
            return result;
        }
        // A full disk at shutdown: a few more tries before the records still in memory are
        // given up (and said so).
        for _ in 0..CLOSE_RETRIES {
            match self.sync() {
                Err(e) if e.is_disk_full() => tokio::time::sleep(DISK_FULL_RETRY).await,
                _ => break,
            }
        }
        let stats = self.writer.stats();
        let closed = self.writer.close();
        if let Err(e) = &closed {
            tracing::error!(error = %e, "journal: closing failed");
        }
        self.flushed_tx
            .send_replace(stats.flushed_seq.load(Ordering::Acquire));
        self.synced_tx
            .send_replace(stats.synced_seq.load(Ordering::Acquire));
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{FrameRecord, RecordBody};
    use crate::time::Timestamp;

    fn frame(n: u64, len: usize) -> Entry {
        Entry {
            received_at: Timestamp::from_unix_nanos(0),
            conn_id: 1,
            conn_seq: n,
            body: RecordBody::Frame(FrameRecord {
                bytes: vec![b'x'; len],
                checksum_ok: None,
                best_bid: None,
                best_ask: None,
            }),
        }
    }

    #[test]
    fn a_batch_takes_its_bytes_in_kib_of_the_queue_bound() {
        // (frame sizes, KiB taken, what it covers)
        let cases: [(&[usize], u32, &str); 4] = [
            (&[0], 1, "an empty frame still takes its overhead"),
            (&[960], 1, "960 bytes and the overhead: one KiB"),
            (&[961, 0], 2, "a byte past a KiB"),
            (
                &[3 << 20, 3 << 20],
                QUEUE_KIB,
                "more than the bound: all of it, no more",
            ),
        ];
        for (sizes, kib, what) in cases {
            let entries: Vec<Entry> = sizes.iter().map(|&len| frame(1, len)).collect();
            assert_eq!(batch_kib(&entries), kib, "{what}");
        }
    }

    /// Batches larger than the byte bound still go in (one at a time), in order: the bound
    /// never wedges the feed.
    #[tokio::test]
    async fn batches_over_the_byte_bound_go_in_one_at_a_time_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let handle =
            spawn_journal(JournalConfig::new(dir.path()), 64, None, cancel.clone()).unwrap();
        for round in 0..3u64 {
            let batch = (1..=3).map(|n| frame(round * 10 + n, 3 << 20)).collect();
            handle.sender.send_batch(batch).await.unwrap();
        }
        handle.sender.send(frame(99, 10)).await.unwrap();
        cancel.cancel();
        handle.join().await.unwrap();
        let mut reader = crate::JournalReader::open(dir.path(), 0).unwrap();
        let mut seqs = Vec::new();
        while let Some(crate::Item::Record(r)) = reader.next_owned().unwrap() {
            seqs.push(r.conn_seq);
        }
        assert_eq!(seqs, vec![1, 2, 3, 11, 12, 13, 21, 22, 23, 99]);
    }

    /// With nothing else to wake the thread (no more entries, no sync request), what was
    /// written is still synced about one sync interval later: the periodic sync has its own
    /// timer while something is unsynced (the thread no longer wakes every second for it).
    #[tokio::test]
    async fn what_was_written_is_synced_within_the_interval_with_nothing_else_to_wake_it() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        let mut config = JournalConfig::new(dir.path());
        config.sync_interval = Duration::from_millis(300);
        let handle = spawn_journal(config, 64, None, cancel.clone()).unwrap();
        let mut synced = handle.synced.clone();
        // Twice: the timer is armed again after a sync.
        for n in 1..=2u64 {
            let sent = Instant::now();
            handle.sender.send(frame(n, 10)).await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), synced.wait_for(|s| *s >= n))
                .await
                .expect("synced by the periodic sync")
                .unwrap();
            let took = sent.elapsed();
            assert!(
                took < Duration::from_secs(3),
                "entry {n} synced after {took:?}"
            );
        }
        cancel.cancel();
        handle.join().await.unwrap();
    }

    /// The housekeeping timer: the periodic sync only while something written is unsynced
    /// (and never later than the housekeeping), else every HOUSEKEEPING.
    #[test]
    fn the_housekeeping_timer_is_the_sync_only_while_something_is_unsynced() {
        let t = Instant::now();
        let s = Duration::from_secs;
        // (unsynced, last sync, last housekeeping, sync every, expected, what)
        let cases = [
            (
                false,
                t,
                t,
                s(1),
                t + HOUSEKEEPING,
                "all synced: housekeeping only",
            ),
            (
                true,
                t,
                t,
                s(1),
                t + s(1),
                "unsynced: the sync is due first",
            ),
            (
                true,
                t,
                t,
                s(3600),
                t + HOUSEKEEPING,
                "a sync interval past the housekeeping",
            ),
            (
                true,
                t + s(2),
                t,
                s(1),
                t + s(3),
                "from the last sync, not from now",
            ),
        ];
        for (unsynced, last_sync, last_hk, every, want, what) in cases {
            assert_eq!(
                next_housekeeping(unsynced, last_sync, last_hk, every),
                want,
                "{what}"
            );
        }
        // What the thread asks the writer: written but not synced, until it syncs.
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = JournalWriter::open(JournalConfig::new(dir.path())).unwrap();
        assert_eq!(writer.synced_seq(), writer.written_seq(), "nothing written");
        writer.append(frame(1, 10)).unwrap();
        writer.flush().unwrap();
        assert!(
            writer.synced_seq() < writer.written_seq(),
            "written, not synced"
        );
        writer.sync().unwrap();
        assert_eq!(writer.synced_seq(), writer.written_seq(), "synced");
    }
}
