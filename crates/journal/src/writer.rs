//! Appending to the journal: recovery at open, appends, flush and sync, rotation, compression of
//! closed segments, and retention.
//!
//! [`JournalWriter`] is synchronous and single-owner; [`super::spawn_journal`] runs one on a
//! dedicated thread. What must hold:
//! - the file only ever holds whole records: records are encoded into a buffer and written in
//!   one piece; a write that fails is cut back to the last whole record before anything else is
//!   written (a full disk leaves no half record followed by others), and the buffered records
//!   stay to be written again;
//! - `synced` only ever names records that an fsync covered; after an fsync fails the writer
//!   never syncs again (the kernel may have dropped the dirty pages: a retried fsync could
//!   succeed with the data gone), it stops with the error naming the file.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::JournalError;
use super::format::{HEADER_LEN, SegmentHeader, encode_record};
use super::io::{Fs, LockGuard, StdFs, WriteFile};
use super::recovery::{self, Recovery};
use super::segment::{
    LOCK_FILE, SegmentFile, clean_leftovers, compress, create_segment, list_in, open_segment,
    write_expired,
};
use crate::record::{EventKind, FeedEvent, Record, RecordBody};
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
    /// The file system (the real one; tests give an in-memory one that fails on demand).
    pub fs: Arc<dyn Fs>,
}

/// A journal setting that cannot work, refused when the settings are parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalConfigError {
    /// The sync interval is below 1 ms.
    #[error(
        "--journal-sync-interval must be at least 1ms (got {0:?}): it is the most a power cut can lose, e.g. 1s"
    )]
    SyncInterval(Duration),
    /// Segments below 1 MiB.
    #[error(
        "--journal-segment-size must be at least 1MiB (got {0} bytes): smaller segments only make many files, e.g. 256MiB"
    )]
    SegmentSize(u64),
    /// Segments younger than 1 s.
    #[error(
        "--journal-segment-age must be at least 1s (got {0:?}): shorter only makes many files, e.g. 1h"
    )]
    SegmentAge(Duration),
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
            fs: StdFs::shared(),
        }
    }

    /// Refuses settings that cannot work: a sync interval under 1 ms, segments under 1 MiB or
    /// younger than 1 s. (The journal itself survives any value; these are operator typos.)
    pub fn validate(&self) -> Result<(), JournalConfigError> {
        if self.sync_interval < Duration::from_millis(1) {
            return Err(JournalConfigError::SyncInterval(self.sync_interval));
        }
        if self.segment_bytes < 1 << 20 {
            return Err(JournalConfigError::SegmentSize(self.segment_bytes));
        }
        if self.segment_age < Duration::from_secs(1) {
            return Err(JournalConfigError::SegmentAge(self.segment_age));
        }
        Ok(())
    }
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
    /// The last `seq` accounted for when the journal was opened (`Recovery::next_seq - 1`):
    /// `bytes` counts the records after it.
    pub opened_seq: AtomicU64,
    /// Bytes of a torn tail cut when the journal was opened.
    pub torn_bytes: AtomicU64,
    /// Seqs found lost in the last segment when the journal was opened (damage; not the seqs
    /// skipped after a torn tail).
    pub damaged_seqs_at_open: AtomicU64,
    /// Closed segments removed by retention since start.
    pub expired_segments: AtomicU64,
    /// Times writing stopped on a full disk (each episode once; see `JournalHandle::problem`).
    pub disk_full_stalls: AtomicU64,
    /// Whether writing is stopped on a full disk now (records wait in memory and the queue).
    pub disk_full: AtomicBool,
}

/// Bytes buffered before the writer hands them to the file on its own.
const WRITE_CHUNK: usize = 256 << 10;
/// How long the writer waits before retrying a rotation that failed.
const ROTATE_RETRY: Duration = Duration::from_secs(1);

/// The single writer of a journal directory.
#[derive(Debug)]
pub struct JournalWriter {
    config: JournalConfig,
    fs: Arc<dyn Fs>,
    file: Box<dyn WriteFile>,
    segment: SegmentFile,
    /// Bytes in the active segment's file: the header and whole records.
    file_len: u64,
    segment_opened: Instant,
    next_seq: u64,
    /// The last seq whose record is in the file.
    written_seq: u64,
    /// The last seq an fsync covered.
    synced_seq: u64,
    conn_id_base: u64,
    /// Encoded records not yet in the file: seqs `written_seq + 1 .. next_seq`.
    pending: Vec<u8>,
    /// Set once a write could not be undone or an fsync failed: nothing more is written or
    /// synced.
    failed: Option<String>,
    /// The last rotation attempt that failed.
    rotate_failed: Option<Instant>,
    stats: Arc<JournalStats>,
    /// Held (locked) for the writer's life: one writer per directory.
    _lock: Box<dyn LockGuard>,
    compressor: Option<Compressor>,
}

impl JournalWriter {
    /// Opens (or creates) the journal: takes the directory's lock, recovers the last segment
    /// (keeping and reporting damage, cutting a torn tail and skipping its seqs), and starts a
    /// new segment after it.
    pub fn open(config: JournalConfig) -> Result<(Self, Recovery), JournalError> {
        let fs = Arc::clone(&config.fs);
        let dir = config.dir.clone();
        fs.create_dir_all(&dir)
            .map_err(|e| JournalError::io(&dir, e))?;
        if !fs.is_dir(&dir) {
            return Err(JournalError::NotADirectory(dir));
        }
        let lock = lock_dir(fs.as_ref(), &dir)?;
        clean_leftovers(fs.as_ref(), &dir)?;
        let segments = list_in(fs.as_ref(), &dir)?;
        let plan = recovery::plan(fs.as_ref(), &segments)?;
        let mut recovery = plan.recovery;
        let first_seq = recovery.next_seq;
        // 1. The new segment, declaring the skipped seqs in its header, durable before anything
        //    is cut: a crash from here on recovers to the same (or a later) first seq.
        let header = SegmentHeader {
            first_seq,
            conn_id_base: recovery.conn_id_base,
            created: Timestamp::now(),
            prev_seq: plan.prev_seq,
        };
        let (file, segment) = create_segment(fs.as_ref(), &dir, &header)?;
        // 2. The torn tail is cut (and synced).
        if let Some((torn, offset)) = &plan.cut {
            fs.truncate(&torn.path, *offset)
                .map_err(|e| JournalError::io(&torn.path, e))?;
            tracing::warn!(
                path = %torn.path.display(),
                offset,
                bytes = recovery.torn_bytes,
                "journal: cut a torn tail left by an interrupted write"
            );
        }
        // 3. Trailing segments without records go (one named like the new segment was replaced).
        let mut removed = false;
        for e in &plan.empty {
            if e.path != segment.path {
                fs.remove(&e.path)
                    .map_err(|err| JournalError::io(&e.path, err))?;
                removed = true;
            }
        }
        if removed {
            fs.sync_dir(&dir).map_err(|e| JournalError::io(&dir, e))?;
        }
        let stats = Arc::new(JournalStats::default());
        let opened = first_seq - 1;
        for s in [&stats.flushed_seq, &stats.synced_seq, &stats.opened_seq] {
            s.store(opened, Ordering::Relaxed);
        }
        stats
            .torn_bytes
            .store(recovery.torn_bytes, Ordering::Relaxed);
        let mut damaged = 0;
        for d in &mut recovery.damage {
            if d.segment.as_os_str().is_empty() {
                d.segment = segment.path.clone();
            }
            if d.kind.is_loss() {
                damaged += d.last_seq - d.first_seq + 1;
                tracing::warn!(damage = %d, "journal: damaged records found at open; every intact record after them is kept");
            } else {
                tracing::warn!(damage = %d, "journal: seqs skipped after a torn tail (no record that was synced is lost; none is reused)");
            }
        }
        stats.damaged_seqs_at_open.store(damaged, Ordering::Relaxed);
        let compressor = (config.compression_level > 0)
            .then(|| Compressor::spawn(Arc::clone(&fs), config.compression_level));
        if let Some(c) = &compressor {
            let gone: Vec<&PathBuf> = plan.empty.iter().map(|e| &e.path).collect();
            for s in segments
                .iter()
                .filter(|s| !s.compressed && s.first_seq < first_seq && !gone.contains(&&s.path))
            {
                c.send(s.clone());
            }
        }
        let mut writer = JournalWriter {
            fs,
            file,
            segment,
            file_len: HEADER_LEN as u64,
            segment_opened: Instant::now(),
            next_seq: first_seq,
            written_seq: opened,
            synced_seq: opened,
            conn_id_base: recovery.conn_id_base,
            pending: Vec::with_capacity(64 << 10),
            failed: None,
            rotate_failed: None,
            stats,
            _lock: lock,
            compressor,
            config,
        };
        if first_seq > plan.prev_seq + 1 {
            // Readers learn from the header that the skipped seqs are not a loss; the database
            // learns it from this event.
            let detail = format!(
                "seqs {}..={} skipped so that none is used twice: {}",
                plan.prev_seq + 1,
                first_seq - 1,
                plan.skip_detail.as_deref().unwrap_or("after a torn tail")
            );
            writer.append(Entry {
                received_at: Timestamp::now(),
                conn_id: 0,
                conn_seq: 0,
                body: RecordBody::Event(FeedEvent {
                    kind: EventKind::JournalRecovered,
                    symbol: None,
                    gap_start: plan.last_received,
                    detail,
                }),
            })?;
        }
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

    /// The last `seq` handed to the operating system.
    pub fn written_seq(&self) -> u64 {
        self.written_seq
    }

    /// The last `seq` synced to disk.
    pub fn synced_seq(&self) -> u64 {
        self.synced_seq
    }

    /// The active segment.
    pub fn segment_path(&self) -> &Path {
        &self.segment.path
    }

    /// Records appended but not yet in the file (waiting for room on the disk, or the next
    /// flush).
    pub fn waiting(&self) -> u64 {
        self.next_seq - 1 - self.written_seq
    }

    /// Appends an entry, giving it the next `seq`. It reaches the operating system at the next
    /// [`flush`](Self::flush) (or when enough is buffered), and the disk at the next
    /// [`sync`](Self::sync).
    pub fn append(&mut self, entry: Entry) -> Result<u64, JournalError> {
        self.check_failed()?;
        let record = Record {
            seq: self.next_seq,
            received_at: entry.received_at,
            conn_id: entry.conn_id,
            conn_seq: entry.conn_seq,
            body: entry.body,
        };
        self.conn_id_base = self.conn_id_base.max(record.conn_id);
        let before = self.pending.len();
        encode_record(&record, &mut self.pending);
        let len = (self.pending.len() - before) as u64;
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.fetch_add(len, Ordering::Relaxed);
        self.next_seq += 1;
        if self.pending.len() >= WRITE_CHUNK {
            match self.write_pending() {
                Err(e) if e.is_disk_full() => {} // kept; the next flush says so
                other => other?,
            }
        }
        Ok(record.seq)
    }

    /// Hands buffered records to the operating system: a crash of this process loses nothing
    /// flushed; readers of the journal can see it. On a full disk the records stay buffered
    /// (the file is cut back to its last whole record) and the error says so
    /// ([`JournalError::is_disk_full`]): flush again later.
    pub fn flush(&mut self) -> Result<(), JournalError> {
        self.write_pending()?;
        self.stats
            .flushed_seq
            .store(self.written_seq, Ordering::Release);
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), JournalError> {
        self.check_failed()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.file_len += self.pending.len() as u64;
                self.written_seq = self.next_seq - 1;
                self.pending.clear();
                if self.stats.disk_full.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %self.segment.path.display(), "journal: the disk has room again; writing resumed");
                }
                Ok(())
            }
            Err(source) => {
                // Whatever part reached the file goes: no half record may precede the next.
                if let Err(cut) = self.file.set_len(self.file_len) {
                    let e = JournalError::io(&self.segment.path, cut);
                    self.failed = Some(e.to_string());
                    return Err(e);
                }
                let e = JournalError::io(&self.segment.path, source);
                if e.is_disk_full() {
                    if !self.stats.disk_full.swap(true, Ordering::Relaxed) {
                        self.stats.disk_full_stalls.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    self.failed = Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// Flushes and syncs the active segment to disk: a power cut loses nothing synced. On a full
    /// disk, what reached the file is synced and the disk-full error returned.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        let flushed = self.flush();
        if let Err(e) = &flushed
            && !e.is_disk_full()
        {
            return flushed;
        }
        if self.written_seq > self.synced_seq {
            if let Err(source) = self.file.sync_data() {
                let e = JournalError::io(&self.segment.path, source);
                self.failed = Some(e.to_string());
                return Err(e);
            }
            self.synced_seq = self.written_seq;
            self.stats
                .synced_seq
                .store(self.synced_seq, Ordering::Release);
        }
        flushed
    }

    fn check_failed(&self) -> Result<(), JournalError> {
        match &self.failed {
            Some(why) => Err(JournalError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    /// Rotates if the active segment is large or old enough and holds records. A rotation that
    /// fails (no room for the new segment, too many open files) leaves the active segment in use
    /// and is tried again a second later.
    pub fn maybe_rotate(&mut self) -> Result<bool, JournalError> {
        let len = self.file_len + self.pending.len() as u64;
        let holds_records = len > HEADER_LEN as u64;
        let due = len >= self.config.segment_bytes
            || self.segment_opened.elapsed() >= self.config.segment_age;
        let waiting = self
            .rotate_failed
            .is_some_and(|at| at.elapsed() < ROTATE_RETRY);
        if holds_records && due && !waiting {
            self.rotate()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Closes the active segment (synced) and starts the next; the closed one is compressed in
    /// the background. When the new segment cannot be created, the active one stays in use and
    /// the error is returned ([`JournalError::is_retriable`]).
    pub fn rotate(&mut self) -> Result<(), JournalError> {
        self.sync()?;
        let header = SegmentHeader {
            first_seq: self.next_seq,
            conn_id_base: self.conn_id_base,
            created: Timestamp::now(),
            prev_seq: self.next_seq - 1,
        };
        let (file, segment) = match create_segment(self.fs.as_ref(), &self.config.dir, &header) {
            Ok(created) => created,
            Err(e) => {
                self.rotate_failed = Some(Instant::now());
                return Err(JournalError::Rotate(Box::new(e)));
            }
        };
        self.rotate_failed = None;
        let closed = std::mem::replace(&mut self.segment, segment);
        self.file = file;
        self.file_len = HEADER_LEN as u64;
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
    /// the disk never frees; only one waiting for the compressor is left to it. The highest seq
    /// removed is recorded (synced, in `EXPIRED`) before any file goes, so readers report the
    /// missing seqs as expired, not lost.
    pub fn expire(&mut self, keep_after: u64) -> Result<usize, JournalError> {
        let Some(retention) = self.config.retention else {
            return Ok(0);
        };
        let cutoff =
            Timestamp::now().add_nanos(-(retention.as_nanos().min(i64::MAX as u128) as i64));
        let segments = list_in(self.fs.as_ref(), &self.config.dir)?;
        let mut doomed = Vec::new();
        let mut highest = 0;
        // Oldest first, and both conditions only grow stricter along the list: stop at the first
        // segment that must stay (no header of a newer segment is read).
        for pair in segments.windows(2) {
            let (seg, next) = (&pair[0], &pair[1]);
            let last_seq = next.first_seq.saturating_sub(1);
            if seg.first_seq >= self.segment.first_seq || last_seq > keep_after {
                break;
            }
            let compressing = self
                .compressor
                .as_ref()
                .is_some_and(|c| !seg.compressed && c.is_pending(seg.first_seq));
            if compressing {
                continue;
            }
            if read_header(self.fs.as_ref(), seg)?.created >= cutoff {
                break;
            }
            doomed.push(seg.clone());
            highest = last_seq;
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        write_expired(self.fs.as_ref(), &self.config.dir, highest)?;
        for seg in &doomed {
            self.fs
                .remove(&seg.path)
                .map_err(|e| JournalError::io(&seg.path, e))?;
        }
        self.fs
            .sync_dir(&self.config.dir)
            .map_err(|e| JournalError::io(&self.config.dir, e))?;
        self.stats
            .expired_segments
            .fetch_add(doomed.len() as u64, Ordering::Relaxed);
        Ok(doomed.len())
    }

    /// Syncs and closes the journal; the directory lock is released.
    pub fn close(mut self) -> Result<(), JournalError> {
        let synced = self.sync();
        drop(self.compressor.take());
        match synced {
            Err(e) if e.is_disk_full() => Err(JournalError::NotJournaled {
                records: self.waiting(),
                source: Box::new(e),
            }),
            other => other,
        }
    }
}

/// Takes the directory's lock. A reader probing whether a writer is alive holds it for a few
/// microseconds: a refusal is retried briefly before it counts.
fn lock_dir(fs: &dyn Fs, dir: &Path) -> Result<Box<dyn LockGuard>, JournalError> {
    let path = dir.join(LOCK_FILE);
    for attempt in 0..10 {
        if let Some(guard) = fs.try_lock(&path).map_err(|e| JournalError::io(&path, e))? {
            return Ok(guard);
        }
        if attempt < 9 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(JournalError::Locked(dir.to_path_buf()))
}

fn read_header(fs: &dyn Fs, segment: &SegmentFile) -> Result<SegmentHeader, JournalError> {
    let mut source = open_segment(fs, segment)?;
    let mut b = [0u8; HEADER_LEN];
    let mut n = 0;
    while n < b.len() {
        match source.read(&mut b[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(JournalError::io(&segment.path, e)),
        }
    }
    match SegmentHeader::decode(&b[..n]) {
        super::format::HeaderParse::Header(h, _) => Ok(h),
        _ => Err(JournalError::Corrupt {
            path: segment.path.clone(),
            offset: 0,
            reason: "bad segment header",
        }),
    }
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
    fn spawn(fs: Arc<dyn Fs>, level: i32) -> Self {
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
