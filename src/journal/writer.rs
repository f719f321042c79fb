//! Appending to the journal: recovery at open, appends, flush and sync, rotation, compression of
//! closed segments, and retention.
//!
//! [`JournalWriter`] is synchronous and single-owner. [`spawn_journal`] runs one on a dedicated
//! thread fed by a bounded channel, so that file I/O never blocks the async feed and a slow disk
//! pushes back on the socket readers instead of growing memory.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::JournalError;
use super::format::{HEADER_LEN, Parsed, SegmentHeader, encode_record, parse_record};
use super::segment::{
    SegmentFile, clean_leftovers, compress, list_segments, segment_name, sync_dir,
};
use crate::record::{Record, RecordBody};
use crate::time::Timestamp;

/// How the journal rotates, syncs, compresses and expires segments.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// The journal directory (created if missing).
    pub dir: PathBuf,
    /// Rotate when the active segment reaches this many bytes.
    pub segment_bytes: u64,
    /// Rotate when the active segment is this old.
    pub segment_age: Duration,
    /// Sync to disk at least this often: the most a power cut can lose.
    pub sync_interval: Duration,
    /// zstd level for closed segments (0 disables compression).
    pub compression_level: i32,
    /// Remove closed segments older than this (once the database has them, when one is used).
    pub retention: Option<Duration>,
}

impl JournalConfig {
    /// Defaults: 256 MiB or one hour per segment, sync every second, zstd level 3, keep forever.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            segment_bytes: 256 << 20,
            segment_age: Duration::from_secs(3600),
            sync_interval: Duration::from_secs(1),
            compression_level: 3,
            retention: None,
        }
    }
}

/// What opening the journal found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The `seq` of the last intact record (0 for a new journal).
    pub last_seq: u64,
    /// The highest connection id used so far.
    pub conn_id_base: u64,
    /// Bytes cut from a torn tail (a record half-written when the process or machine stopped).
    pub torn_bytes: u64,
}

/// What to append: a record without its `seq` (the journal assigns it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Local receive time (or event time).
    pub received_at: Timestamp,
    /// The collector's connection number.
    pub conn_id: u64,
    /// Frame number within the connection (0 for events).
    pub conn_seq: u64,
    /// The frame or event.
    pub body: RecordBody,
}

/// Counters a journal keeps, readable from any thread (for metrics).
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Records appended since start.
    pub records: AtomicU64,
    /// Bytes appended since start.
    pub bytes: AtomicU64,
    /// The last `seq` handed to the operating system (readers can see it).
    pub flushed_seq: AtomicU64,
    /// The last `seq` synced to disk.
    pub synced_seq: AtomicU64,
    /// Segments rotated since start.
    pub rotations: AtomicU64,
    /// The last `seq` found when the journal was opened: `bytes` counts the records after it.
    pub opened_seq: AtomicU64,
    /// Bytes of a torn tail cut when the journal was opened.
    pub torn_bytes: AtomicU64,
    /// Seqs found damaged in the last segment when the journal was opened.
    pub damaged_seqs_at_open: AtomicU64,
    /// Closed segments removed by retention since start.
    pub expired_segments: AtomicU64,
}

/// The single writer of a journal directory.
#[derive(Debug)]
pub struct JournalWriter {
    config: JournalConfig,
    file: BufWriter<File>,
    segment: SegmentFile,
    segment_len: u64,
    segment_opened: Instant,
    next_seq: u64,
    conn_id_base: u64,
    buf: Vec<u8>,
    unflushed: bool,
    unsynced: bool,
    stats: Arc<JournalStats>,
    /// Held (locked) for the writer's life: one writer per directory.
    _lock: File,
    compressor: Option<Compressor>,
}

impl JournalWriter {
    /// Opens (or creates) the journal: takes the directory's lock, recovers the last segment
    /// (cutting a torn tail), and starts a new segment after it.
    pub fn open(config: JournalConfig) -> Result<(Self, Recovery), JournalError> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| JournalError::io(&dir, e))?;
        let lock = lock_dir(&dir)?;
        clean_leftovers(&dir)?;
        let mut recovery = Recovery::default();
        let segments = list_segments(&dir)?;
        if let Some(last) = segments.last() {
            recovery = recover_last(last, &segments)?;
        }
        let stats = Arc::new(JournalStats::default());
        stats
            .flushed_seq
            .store(recovery.last_seq, Ordering::Relaxed);
        stats.synced_seq.store(recovery.last_seq, Ordering::Relaxed);
        stats.opened_seq.store(recovery.last_seq, Ordering::Relaxed);
        let compressor =
            (config.compression_level > 0).then(|| Compressor::spawn(config.compression_level));
        let first_seq = recovery.last_seq + 1;
        if let Some(tx) = &compressor {
            // Closed segments only: never the name the new active segment is about to take.
            for s in segments
                .iter()
                .filter(|s| !s.compressed && s.first_seq < first_seq)
            {
                if s.path.exists() {
                    tx.send(s.clone());
                }
            }
        }
        let (file, segment) = create_segment(&dir, first_seq, recovery.conn_id_base)?;
        let writer = JournalWriter {
            config,
            file,
            segment,
            segment_len: HEADER_LEN as u64,
            segment_opened: Instant::now(),
            next_seq: first_seq,
            conn_id_base: recovery.conn_id_base,
            buf: Vec::with_capacity(64 << 10),
            unflushed: false,
            unsynced: false,
            stats,
            _lock: lock,
            compressor,
        };
        Ok((writer, recovery))
    }

    /// The counters, shareable with other threads.
    pub fn stats(&self) -> Arc<JournalStats> {
        Arc::clone(&self.stats)
    }

    /// The `seq` the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends an entry, giving it the next `seq`. It reaches the operating system at the next
    /// [`flush`](Self::flush), and the disk at the next [`sync`](Self::sync).
    pub fn append(&mut self, entry: Entry) -> Result<u64, JournalError> {
        let record = Record {
            seq: self.next_seq,
            received_at: entry.received_at,
            conn_id: entry.conn_id,
            conn_seq: entry.conn_seq,
            body: entry.body,
        };
        self.conn_id_base = self.conn_id_base.max(record.conn_id);
        self.buf.clear();
        encode_record(&record, &mut self.buf);
        self.file
            .write_all(&self.buf)
            .map_err(|e| JournalError::io(&self.segment.path, e))?;
        self.segment_len += self.buf.len() as u64;
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.next_seq += 1;
        self.unflushed = true;
        self.unsynced = true;
        Ok(record.seq)
    }

    /// Hands buffered records to the operating system: a crash of this process loses nothing
    /// flushed; readers of the journal can see it.
    pub fn flush(&mut self) -> Result<(), JournalError> {
        if self.unflushed {
            self.file
                .flush()
                .map_err(|e| JournalError::io(&self.segment.path, e))?;
            self.unflushed = false;
            self.stats
                .flushed_seq
                .store(self.next_seq - 1, Ordering::Release);
        }
        Ok(())
    }

    /// Flushes and syncs the active segment to disk: a power cut loses nothing synced.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.flush()?;
        if self.unsynced {
            self.file
                .get_ref()
                .sync_data()
                .map_err(|e| JournalError::io(&self.segment.path, e))?;
            self.unsynced = false;
            self.stats
                .synced_seq
                .store(self.next_seq - 1, Ordering::Release);
        }
        Ok(())
    }

    /// Rotates if the active segment is large or old enough and holds records.
    pub fn maybe_rotate(&mut self) -> Result<bool, JournalError> {
        let holds_records = self.segment_len > HEADER_LEN as u64;
        let due = self.segment_len >= self.config.segment_bytes
            || self.segment_opened.elapsed() >= self.config.segment_age;
        if holds_records && due {
            self.rotate()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Closes the active segment (synced) and starts the next; the closed one is compressed in
    /// the background.
    pub fn rotate(&mut self) -> Result<(), JournalError> {
        self.sync()?;
        let (file, segment) = create_segment(&self.config.dir, self.next_seq, self.conn_id_base)?;
        let closed = std::mem::replace(&mut self.segment, segment);
        self.file = file;
        self.segment_len = HEADER_LEN as u64;
        self.segment_opened = Instant::now();
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = &self.compressor {
            c.send(closed);
        }
        Ok(())
    }

    /// Removes closed segments created before `now - retention` whose records are all at or
    /// below `keep_after` (the database's checkpoint; `u64::MAX` when there is no database).
    /// Compressed or not: a segment whose compression failed (a full disk) must still go, or
    /// the disk never frees; only one waiting for the compressor is left to it.
    pub fn expire(&mut self, keep_after: u64) -> Result<usize, JournalError> {
        let Some(retention) = self.config.retention else {
            return Ok(0);
        };
        let cutoff =
            Timestamp::now().add_nanos(-(retention.as_nanos().min(i64::MAX as u128) as i64));
        let segments = list_segments(&self.config.dir)?;
        let mut removed = 0;
        // Oldest first, and both conditions only grow stricter along the list: stop at the first
        // segment that must stay (no header of a newer segment is read).
        for pair in segments.windows(2) {
            let (seg, next) = (&pair[0], &pair[1]);
            let last_seq = next.first_seq.saturating_sub(1);
            if seg.first_seq == self.segment.first_seq || last_seq > keep_after {
                break;
            }
            let compressing = self
                .compressor
                .as_ref()
                .is_some_and(|c| !seg.compressed && c.is_pending(seg.first_seq));
            if compressing {
                continue;
            }
            if read_header(seg)?.created >= cutoff {
                break;
            }
            fs::remove_file(&seg.path).map_err(|e| JournalError::io(&seg.path, e))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.config.dir)?;
        }
        Ok(removed)
    }

    /// Syncs and closes the journal; the directory lock is released.
    pub fn close(mut self) -> Result<(), JournalError> {
        self.sync()?;
        drop(self.compressor.take());
        Ok(())
    }
}

fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| JournalError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(JournalError::io(&path, e)),
    }
}

fn create_segment(
    dir: &Path,
    first_seq: u64,
    conn_id_base: u64,
) -> Result<(BufWriter<File>, SegmentFile), JournalError> {
    let path = dir.join(segment_name(first_seq, false));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| JournalError::io(&path, e))?;
    let header = SegmentHeader {
        first_seq,
        conn_id_base,
        created: Timestamp::now(),
    };
    file.write_all(&header.encode())
        .map_err(|e| JournalError::io(&path, e))?;
    file.sync_data().map_err(|e| JournalError::io(&path, e))?;
    sync_dir(dir)?;
    Ok((
        BufWriter::with_capacity(256 << 10, file),
        SegmentFile {
            first_seq,
            path,
            compressed: false,
        },
    ))
}

fn read_header(segment: &SegmentFile) -> Result<SegmentHeader, JournalError> {
    let mut source = super::segment::open_segment(segment)?;
    let mut b = [0u8; HEADER_LEN];
    source
        .read_exact(&mut b)
        .map_err(|e| JournalError::io(&segment.path, e))?;
    SegmentHeader::decode(&b).ok_or_else(|| JournalError::Corrupt {
        path: segment.path.clone(),
        offset: 0,
        reason: "bad segment header",
    })
}

/// Scans the last segment: finds its last intact record and the highest connection id, and cuts
/// a torn tail of a plain segment. An earlier segment's header supplies what an empty or
/// headerless last segment cannot.
fn recover_last(last: &SegmentFile, all: &[SegmentFile]) -> Result<Recovery, JournalError> {
    let mut source = super::segment::open_segment(last)?;
    let mut bytes = Vec::new();
    source
        .read_to_end(&mut bytes)
        .map_err(|e| JournalError::io(&last.path, e))?;
    let Some(header) = SegmentHeader::decode(&bytes) else {
        if last.compressed {
            return Err(JournalError::Corrupt {
                path: last.path.clone(),
                offset: 0,
                reason: "bad segment header",
            });
        }
        // Created but its header never reached the disk: nothing was written after it.
        fs::remove_file(&last.path).map_err(|e| JournalError::io(&last.path, e))?;
        let previous: Vec<_> = all
            .iter()
            .filter(|s| s.first_seq < last.first_seq)
            .cloned()
            .collect();
        return match previous.last() {
            Some(p) => recover_last(p, &previous),
            None => Ok(Recovery {
                last_seq: last.first_seq.saturating_sub(1),
                ..Recovery::default()
            }),
        };
    };
    let mut recovery = Recovery {
        last_seq: header.first_seq - 1,
        conn_id_base: header.conn_id_base,
        torn_bytes: 0,
    };
    let mut at = HEADER_LEN;
    loop {
        match parse_record(&bytes[at..]) {
            Parsed::Record(record, len) => {
                if record.seq != recovery.last_seq + 1 {
                    return Err(JournalError::Gap {
                        expected: recovery.last_seq + 1,
                        found: record.seq,
                        path: last.path.clone(),
                    });
                }
                recovery.last_seq = record.seq;
                recovery.conn_id_base = recovery.conn_id_base.max(record.conn_id);
                at += len;
            }
            Parsed::Incomplete | Parsed::Invalid(_) if at == bytes.len() => break,
            Parsed::Incomplete | Parsed::Invalid(_) => {
                if last.compressed {
                    return Err(JournalError::Corrupt {
                        path: last.path.clone(),
                        offset: at as u64,
                        reason: "compressed segment ends inside a record",
                    });
                }
                // Everything from the first record that is not whole and intact was being written
                // when the process or machine stopped: the torn tail. Cut it.
                recovery.torn_bytes = (bytes.len() - at) as u64;
                let mut file = OpenOptions::new()
                    .write(true)
                    .open(&last.path)
                    .map_err(|e| JournalError::io(&last.path, e))?;
                file.set_len(at as u64)
                    .map_err(|e| JournalError::io(&last.path, e))?;
                file.seek(SeekFrom::End(0))
                    .map_err(|e| JournalError::io(&last.path, e))?;
                file.sync_all()
                    .map_err(|e| JournalError::io(&last.path, e))?;
                tracing::warn!(
                    path = %last.path.display(),
                    offset = at,
                    bytes = recovery.torn_bytes,
                    "journal: cut a torn tail left by an interrupted write"
                );
                break;
            }
        }
    }
    if at == HEADER_LEN && !last.compressed {
        // A segment that holds no record (a run that journaled nothing, or a torn first record):
        // the new active segment takes its name, so it goes; its header told all it knew.
        fs::remove_file(&last.path).map_err(|e| JournalError::io(&last.path, e))?;
        sync_dir(last.path.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(recovery)
}

/// The thread that compresses closed segments. Stopping it (on drop: a writer closed or
/// dropped) abandons the segment in progress, which the next writer compresses, and waits for the
/// thread: no compression outlives its writer (it would race the next writer's recovery).
#[derive(Debug)]
struct Compressor {
    tx: Option<std::sync::mpsc::Sender<SegmentFile>>,
    /// The `first_seq`s of the segments sent and not yet done with (compressed or failed).
    pending: Arc<Mutex<BTreeSet<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compressor {
    fn spawn(level: i32) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<SegmentFile>();
        let stop = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(Mutex::new(BTreeSet::new()));
        let stopping = Arc::clone(&stop);
        let done_with = Arc::clone(&pending);
        let spawned = std::thread::Builder::new()
            .name("journal-compress".into())
            .spawn(move || {
                for segment in rx {
                    match compress(&segment, level, &stopping) {
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

    fn send(&self, segment: SegmentFile) {
        if let Some(tx) = &self.tx {
            let first_seq = segment.first_seq;
            lock(&self.pending).insert(first_seq);
            if tx.send(segment).is_err() {
                lock(&self.pending).remove(&first_seq);
            }
        }
    }

    /// Whether the segment starting at `first_seq` waits for (or is in) compression.
    fn is_pending(&self, first_seq: u64) -> bool {
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

/// A journal running on its own thread.
#[derive(Debug)]
pub struct JournalHandle {
    /// Where to send entries. Dropping every sender (or cancelling) drains and closes the journal.
    pub sender: mpsc::Sender<Entry>,
    /// The last `seq` handed to the operating system, for readers following the journal.
    pub flushed: watch::Receiver<u64>,
    /// The last `seq` synced to disk: what a power cut cannot take back.
    pub synced: watch::Receiver<u64>,
    sync_now: Arc<tokio::sync::Notify>,
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
    sync_now: Arc<tokio::sync::Notify>,
}

impl Syncer {
    /// The last `seq` synced to disk.
    pub fn synced(&self) -> u64 {
        *self.synced.borrow()
    }

    /// Returns once every record up to `seq` is synced to disk, asking the journal to sync now
    /// if it is not yet. Fails when the journal closed without syncing `seq` (it was never
    /// written).
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
/// [`FLUSH_EVERY`] (so a crash of the process loses at most that much), syncs at least every `sync_interval`, rotates, and expires.
/// `checkpoint` is the database's checkpoint (retention waits for it); `None` without a database.
/// It stops after `cancel` once the channel is drained, or when every sender is dropped.
pub fn spawn_journal(
    config: JournalConfig,
    capacity: usize,
    checkpoint: Option<watch::Receiver<u64>>,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<JournalHandle, JournalError> {
    let (mut writer, recovery) = JournalWriter::open(config)?;
    let stats = writer.stats();
    let (tx, mut rx) = mpsc::channel::<Entry>(capacity.max(1));
    let (flushed_tx, flushed_rx) = watch::channel(recovery.last_seq);
    let (synced_tx, synced_rx) = watch::channel(recovery.last_seq);
    let sync_now = Arc::new(tokio::sync::Notify::new());
    let sync_requested = Arc::clone(&sync_now);
    let thread = std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || -> Result<(), JournalError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| JournalError::Thread(e.to_string()))?;
            runtime.block_on(async move {
                let sync_every = writer.config.sync_interval;
                let mut tick = tokio::time::interval(sync_every.min(Duration::from_secs(1)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last_sync = Instant::now();
                let mut last_expire = Instant::now();
                let mut last_flush = tokio::time::Instant::now();
                let mut flush_due: Option<tokio::time::Instant> = None;
                let result = loop {
                    tokio::select! {
                        biased;
                        // While a flush is pending the queue is not watched: entries gather in
                        // it and are taken all at once when the flush is due, so that a trickle
                        // of frames costs one wake-up, one write and one reader wake-up per
                        // FLUSH_EVERY instead of one per frame.
                        entry = rx.recv(), if flush_due.is_none() => {
                            let Some(entry) = entry else { break Ok(()) };
                            if let Err(e) = append_queued(&mut writer, entry, &mut rx) {
                                break Err(e);
                            }
                            if last_flush.elapsed() >= FLUSH_EVERY {
                                if let Err(e) = writer.flush() {
                                    break Err(e);
                                }
                                last_flush = tokio::time::Instant::now();
                                let _ = flushed_tx.send(writer.next_seq() - 1);
                            } else {
                                flush_due = Some(last_flush + FLUSH_EVERY);
                            }
                            if let Err(e) = writer.maybe_rotate() {
                                break Err(e);
                            }
                        }
                        _ = tokio::time::sleep_until(flush_due.unwrap_or_else(tokio::time::Instant::now)), if flush_due.is_some() => {
                            flush_due = None;
                            let drained = loop {
                                match rx.try_recv() {
                                    Ok(entry) => {
                                        if let Err(e) = append_queued(&mut writer, entry, &mut rx) {
                                            break Err(e);
                                        }
                                    }
                                    Err(_) => break Ok(()),
                                }
                            };
                            if let Err(e) = drained.and_then(|()| writer.flush()) {
                                break Err(e);
                            }
                            last_flush = tokio::time::Instant::now();
                            let _ = flushed_tx.send(writer.next_seq() - 1);
                            if let Err(e) = writer.maybe_rotate() {
                                break Err(e);
                            }
                        }
                        _ = tick.tick() => {}
                        _ = sync_requested.notified() => {
                            // A reader wants what it holds on disk: everything appended so far.
                            if let Err(e) = writer.sync() {
                                break Err(e);
                            }
                            last_sync = Instant::now();
                            let _ = flushed_tx.send(writer.next_seq() - 1);
                            let _ = synced_tx.send(writer.stats.synced_seq.load(Ordering::Acquire));
                        }
                        _ = cancel.cancelled() => {
                            rx.close();
                            let mut failed = None;
                            while let Ok(entry) = rx.try_recv() {
                                if let Err(e) = writer.append(entry) {
                                    failed = Some(e);
                                    break;
                                }
                            }
                            break failed.map_or(Ok(()), Err);
                        }
                    }
                    if last_sync.elapsed() >= sync_every {
                        if let Err(e) = writer.sync() {
                            break Err(e);
                        }
                        last_sync = Instant::now();
                        let _ = synced_tx.send(writer.stats.synced_seq.load(Ordering::Acquire));
                    }
                    if last_expire.elapsed() >= Duration::from_secs(60) {
                        last_expire = Instant::now();
                        let keep_after = checkpoint.as_ref().map_or(u64::MAX, |c| *c.borrow());
                        if let Err(e) = writer.expire(keep_after) {
                            tracing::warn!(error = %e, "journal: retention failed; will retry");
                        }
                    }
                };
                // Announce only what reached the file; the loop's own error comes first.
                let closed = writer.sync();
                let _ = flushed_tx.send(writer.stats.flushed_seq.load(Ordering::Acquire));
                let _ = synced_tx.send(writer.stats.synced_seq.load(Ordering::Acquire));
                result.and(closed).and(writer.close())
            })
        })
        .map_err(|e| JournalError::Thread(e.to_string()))?;
    Ok(JournalHandle {
        sender: tx,
        flushed: flushed_rx,
        synced: synced_rx,
        sync_now,
        recovery,
        stats,
        thread,
    })
}

/// The longest a record waits in the writer's buffer before it is handed to the operating system
/// (what a crash of the process, as opposed to the machine, can lose).
pub const FLUSH_EVERY: Duration = Duration::from_millis(2);

/// Appends `first` and whatever else is already queued (without flushing).
fn append_queued(
    writer: &mut JournalWriter,
    first: Entry,
    rx: &mut mpsc::Receiver<Entry>,
) -> Result<(), JournalError> {
    writer.append(first)?;
    for _ in 0..4096 {
        match rx.try_recv() {
            Ok(entry) => {
                writer.append(entry)?;
            }
            Err(_) => break,
        }
    }
    Ok(())
}
