//! The segments' lifecycle after open: rotation (the active segment closed, synced, and a new
//! one started) and retention (closed segments removed once old enough and in the database).
//!
//! What must hold: a closed segment is never written again; a rotation that fails leaves the
//! active segment in use (retried a second later), losing nothing; retention records the highest
//! seq it removes (synced, in `EXPIRED`) before any file goes, never removes the active segment,
//! one with a record above the database's checkpoint, or one the compressor still holds.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::JournalWriter;
use crate::JournalError;
use crate::format::{HEADER_LEN, HeaderParse, SegmentHeader};
use crate::io::Fs;
use crate::segment::{SegmentFile, create_segment, list_in, open_segment, write_expired};
use crate::time::Timestamp;

/// How long the writer waits before retrying a rotation that failed.
const ROTATE_RETRY: Duration = Duration::from_secs(1);

impl JournalWriter {
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
        HeaderParse::Header(h, _) => Ok(h),
        _ => Err(JournalError::Corrupt {
            path: segment.path.clone(),
            offset: 0,
            reason: "bad segment header",
        }),
    }
}
