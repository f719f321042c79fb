//! Appending to the journal: recovery at open, appends, flush and sync, rotation, compression of
//! closed segments, and retention.
//!
//! [`JournalWriter`] is synchronous and single-owner; [`super::spawn_journal`] runs one on a
//! dedicated thread (the writer task, `super::thread`). This file owns the writer's state and
//! the durable path (append, flush, sync, close); the rest is split by concern:
//! - `config`: [`JournalConfig`] and the settings refused at parse time;
//! - `open`: [`JournalWriter::open`], the directory lock and recovery carried out (the plan is
//!   decided by `super::recovery`, without changing anything);
//! - `rotate`: rotation and retention of closed segments;
//! - `compress`: the thread that compresses closed segments.
//!
//! What must hold:
//! - the file only ever holds whole records: records are encoded into a buffer and written in
//!   one piece; a write that fails is cut back to the last whole record before anything else is
//!   written (a full disk leaves no half record followed by others), and the buffered records
//!   stay to be written again;
//! - `synced` only ever names records that an fsync covered; after an fsync fails the writer
//!   never syncs again (the kernel may have dropped the dirty pages: a retried fsync could
//!   succeed with the data gone), it stops with the error naming the file.

mod compress;
mod config;
mod open;
mod rotate;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

pub use config::{JournalConfig, JournalConfigError};

use super::JournalError;
use super::format::encode_record;
use super::io::{Fs, LockGuard, WriteFile};
use super::segment::SegmentFile;
use crate::record::{Record, RecordBody};
use crate::time::Timestamp;
use compress::Compressor;

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
        self.append_giving_back(entry).map(|(seq, _)| seq)
    }

    /// [`JournalWriter::append`], giving back the entry's body once its record is encoded (a
    /// frame's buffer can then take the next frame: [`crate::SpareBuffers`]).
    pub fn append_giving_back(&mut self, entry: Entry) -> Result<(u64, RecordBody), JournalError> {
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
        Ok((record.seq, record.body))
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
