//! Reading a journal in `seq` order from any point, including a journal that is still being
//! written (the database pipeline follows the live journal this way), reporting what is missing
//! as [`Damage`] and going on.
//!
//! What must hold:
//! - Every intact record after the starting point is returned, in order, once; every seq that
//!   is not is covered by exactly one damage item, returned where the seqs would have been. The
//!   rules are those of recovery (`scan`), so a reader and the next writer agree.
//! - Nothing hangs: a missing or truncated segment is found by seq continuity (each header
//!   states the seq before it, and `EXPIRED` what retention removed), reported, and the reader
//!   goes on with the next segment.
//! - Two modes: *following* a live journal, bytes that end inside a record at the end of the last
//!   segment mean "not written yet"; reading a *closed* journal (nothing holds the `LOCK`), they
//!   are the torn tail recovery would cut, reported as [`DamageKind::TornTail`]. [`ReadMode::Auto`]
//!   asks the lock, only when it meets such bytes.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{RecordView, max_records, view_validated};
use super::io::{Fs, StdFs};
use super::scan::{PrevEnd, Scanner, Step, classify_gap};
use super::segment::{LOCK_FILE, SegmentFile, list_in, open_segment, read_expired, segment_name};
use super::{Damage, DamageKind, JournalError};
use crate::record::Record;
use crate::time::Timestamp;

/// What a reader returns next: a record, read in place, or the records found missing.
#[derive(Debug)]
pub enum ReadItem<'a> {
    /// An intact record (valid until the next read).
    Record(RecordView<'a>),
    /// Records missing before the next intact one.
    Damage(Damage),
}

/// [`ReadItem`], owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// An intact record.
    Record(Record),
    /// Records missing before the next intact one.
    Damage(Damage),
}

/// How a reader treats the end of the last segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Ask whether a writer holds the journal's lock when it matters (the default).
    Auto,
    /// A writer is appending: an incomplete record at the end is not written yet.
    Follow,
    /// Nobody writes: an incomplete record at the end is a torn tail.
    Closed,
}

const CHUNK: usize = 256 << 10;
/// The least time between two listings of the directory while following at the end.
const RELIST_EVERY: Duration = Duration::from_millis(50);

/// Reads records with `seq` greater than a starting point, in order, across segments.
pub struct JournalReader {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    mode: ReadMode,
    /// The last `seq` returned or covered by damage returned (or the starting point).
    after: u64,
    cursor: Option<Cursor>,
    /// The first `seq` of the last segment read to its end.
    finished: Option<u64>,
    /// How the last segment read ended.
    prev_end: PrevEnd,
    /// Damage found and not yet returned (it goes out before the next record).
    pending: VecDeque<Damage>,
    /// A record parsed and held back behind `pending`: its offset in the cursor's buffer.
    held: Option<(usize, u64)>,
    /// Return `pending` now, without waiting for a record.
    flush_pending: bool,
    last_received: Option<Timestamp>,
    listed: Vec<SegmentFile>,
    listed_at: Option<Instant>,
    /// Frame buffers handed back ([`JournalReader::recycle`]) for `next_owned` to fill again.
    spare: Vec<Vec<u8>>,
}

/// The largest frame buffer [`JournalReader::recycle`] keeps (a larger one is freed: a
/// snapshot's buffer would hold its size in every update it carried after).
pub const RECYCLED_MAX_CAPACITY: usize = 4 << 10;
/// How many frame buffers [`JournalReader::recycle`] keeps at most (at most 4 MiB with
/// [`RECYCLED_MAX_CAPACITY`]).
pub const RECYCLED_MAX_BUFFERS: usize = 1024;

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("dir", &self.dir)
            .field("mode", &self.mode)
            .field("after", &self.after)
            .field("segment", &self.cursor.as_ref().map(|c| &c.segment.path))
            .finish()
    }
}

struct Cursor {
    segment: SegmentFile,
    source: Box<dyn Read + Send>,
    buf: Vec<u8>,
    /// Segment offset of `buf[0]`.
    base: u64,
    /// Bytes of `buf` holding data.
    end: usize,
    scanner: Scanner,
    /// No byte will be added after `buf[..end]`.
    final_end: bool,
    /// Reading stopped at an error (a damaged compressed stream).
    read_failed: bool,
    /// A later segment exists: the writer is done with this one.
    closed: bool,
}

impl Cursor {
    /// Reads more bytes; returns how many (0 at the end, or after a compressed stream failed).
    fn fill(&mut self) -> Result<usize, JournalError> {
        // `buf[..end]` holds bytes read; `buf[end..]` is zeroed room kept between reads, so a read
        // never pays for clearing memory (a live journal is read a few hundred bytes at a time).
        let keep = ((self.scanner.keep_from().saturating_sub(self.base)) as usize).min(self.end);
        if keep > 0 && (keep * 2 >= self.end || self.end == self.buf.len()) {
            self.buf.copy_within(keep..self.end, 0);
            self.end -= keep;
            self.base += keep as u64;
        }
        if self.buf.len() - self.end < CHUNK / 4 {
            let grown = (self.buf.len() * 2).max(CHUNK);
            self.buf.resize(grown, 0);
        }
        if self.read_failed {
            return Ok(0);
        }
        loop {
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if self.segment.compressed => {
                    tracing::debug!(path = %self.segment.path.display(), error = %e, "journal: compressed segment unreadable from here");
                    self.read_failed = true;
                    return Ok(0);
                }
                Err(e) => return Err(JournalError::io(&self.segment.path, e)),
            }
        }
    }

    /// Whether bytes were read that the scanner has not decided about yet.
    fn undecided(&self) -> bool {
        self.base + self.end as u64 > self.scanner.keep_from()
    }
}

enum EndKind {
    Final,
    Live,
    More,
}

enum Next {
    /// A record at this offset of the cursor's buffer.
    Record(usize),
    Damage(Damage),
}

impl JournalReader {
    /// A reader of `dir` that returns the records after `after_seq` (0 reads from the start),
    /// asking the journal's lock whether a writer is still appending when that matters.
    pub fn open(dir: &Path, after_seq: u64) -> Result<Self, JournalError> {
        Self::open_with(StdFs::shared(), dir, after_seq, ReadMode::Auto)
    }

    /// A reader through the file system `fs`, in `mode`.
    pub fn open_with(
        fs: Arc<dyn Fs>,
        dir: &Path,
        after_seq: u64,
        mode: ReadMode,
    ) -> Result<Self, JournalError> {
        if !fs.is_dir(dir) {
            return Err(JournalError::NotADirectory(dir.to_path_buf()));
        }
        Ok(JournalReader {
            fs,
            dir: dir.to_path_buf(),
            mode,
            after: after_seq,
            cursor: None,
            finished: None,
            prev_end: PrevEnd::Start,
            pending: VecDeque::new(),
            held: None,
            flush_pending: false,
            last_received: None,
            listed: Vec::new(),
            listed_at: None,
            spare: Vec::new(),
        })
    }

    /// How many frame buffers [`JournalReader::recycle`] holds.
    pub fn spare_buffers(&self) -> usize {
        self.spare.len()
    }

    /// Hands frame buffers back (the bytes of records [`next_owned`](Self::next_owned) returned
    /// and their user is done with): later records are copied into them instead of new
    /// allocations. Keeps at most [`RECYCLED_MAX_BUFFERS`], none above
    /// [`RECYCLED_MAX_CAPACITY`] bytes or empty; the rest are freed.
    pub fn recycle(&mut self, buffers: impl IntoIterator<Item = Vec<u8>>) {
        for buf in buffers {
            if self.spare.len() >= RECYCLED_MAX_BUFFERS {
                break;
            }
            if (1..=RECYCLED_MAX_CAPACITY).contains(&buf.capacity()) {
                self.spare.push(buf);
            }
        }
    }

    /// The `seq` of the last record returned, or the last seq of the last damage returned (or
    /// the starting point).
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The next record or damage, read in place, or `None` when everything written so far has
    /// been read.
    pub fn next_item(&mut self) -> Result<Option<ReadItem<'_>>, JournalError> {
        Ok(match self.step()? {
            None => None,
            Some(Next::Damage(d)) => Some(ReadItem::Damage(d)),
            Some(Next::Record(at)) => self
                .cursor
                .as_ref()
                .map(|c| ReadItem::Record(view_validated(&c.buf[at..c.end]))),
        })
    }

    /// The next record or damage, owned.
    pub fn next_owned(&mut self) -> Result<Option<Item>, JournalError> {
        let buf = self.spare.pop().unwrap_or_default();
        let item = match self.next_item()? {
            None => None,
            Some(ReadItem::Damage(d)) => Some(Item::Damage(d)),
            Some(ReadItem::Record(view)) => {
                return match view.to_record_in(buf) {
                    Some(record) => Ok(Some(Item::Record(record))),
                    None => Err(JournalError::Thread(
                        "a validated journal record failed to decode".into(),
                    )),
                };
            }
        };
        if buf.capacity() > 0 {
            self.spare.push(buf);
        }
        Ok(item)
    }

    /// The next record, or `None` when every record written so far has been read. Strict: seqs
    /// skipped after a torn tail or expired are passed over, lost records are an error
    /// ([`JournalError::Damaged`]; [`next_item`](Self::next_item) reports them and goes on).
    pub fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        loop {
            match self.next_owned()? {
                None => return Ok(None),
                Some(Item::Record(r)) => return Ok(Some(r)),
                Some(Item::Damage(d)) if d.kind.is_loss() => {
                    return Err(JournalError::Damaged(Box::new(d)));
                }
                Some(Item::Damage(_)) => {}
            }
        }
    }

    /// The next record, read in place without copying (valid until the next call). Strict, as
    /// [`next_record`](Self::next_record).
    pub fn next_view(&mut self) -> Result<Option<RecordView<'_>>, JournalError> {
        let at = loop {
            match self.step()? {
                None => return Ok(None),
                Some(Next::Record(at)) => break at,
                Some(Next::Damage(d)) if d.kind.is_loss() => {
                    return Err(JournalError::Damaged(Box::new(d)));
                }
                Some(Next::Damage(_)) => {}
            }
        };
        Ok(self
            .cursor
            .as_ref()
            .map(|c| view_validated(&c.buf[at..c.end])))
    }

    /// The highest seq accounted for: returned, or found missing and queued.
    fn covered(&self) -> u64 {
        self.pending
            .back()
            .map_or(self.after, |d| d.last_seq.max(self.after))
    }

    /// Queues damage for `first..=last`, clipped to what is not yet accounted for.
    fn queue(&mut self, mut d: Damage) {
        d.first_seq = d.first_seq.max(self.covered().saturating_add(1));
        if d.first_seq > d.last_seq {
            return;
        }
        d.before = d.before.or(self.last_received);
        self.pending.push_back(d);
    }

    fn step(&mut self) -> Result<Option<Next>, JournalError> {
        loop {
            if self.held.is_some() || self.flush_pending {
                if let Some(d) = self.pending.pop_front() {
                    self.after = self.after.max(d.last_seq);
                    return Ok(Some(Next::Damage(d)));
                }
                self.flush_pending = false;
                if let Some((at, seq)) = self.held.take() {
                    self.after = seq;
                    return Ok(Some(Next::Record(at)));
                }
            }
            if self.cursor.is_none() && !self.open_next()? {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                self.flush_pending = true;
                continue;
            }
            let Some(cursor) = self.cursor.as_mut() else {
                continue;
            };
            let step =
                cursor
                    .scanner
                    .step(&cursor.buf[..cursor.end], cursor.base, cursor.final_end);
            match step {
                Step::Header(h) => {
                    let declared = if cursor.scanner.header_damaged() {
                        h.first_seq.saturating_sub(1)
                    } else {
                        h.prev_seq
                    };
                    let path = cursor.segment.path.clone();
                    let from = self.covered().saturating_add(1);
                    if h.first_seq > from {
                        let expired = read_expired(self.fs.as_ref(), &self.dir)?;
                        let gap = classify_gap(
                            from,
                            h.first_seq - 1,
                            expired,
                            declared,
                            &self.prev_end,
                            &path,
                        );
                        for d in gap {
                            self.queue(d);
                        }
                    }
                }
                Step::Record { view, at, .. } => {
                    let (seq, received) = (view.seq, view.received_at);
                    let rel = (at - cursor.base) as usize;
                    self.last_received = Some(received);
                    if seq <= self.covered() {
                        continue; // before the starting point
                    }
                    if self.pending.is_empty() {
                        self.after = seq;
                        return Ok(Some(Next::Record(rel)));
                    }
                    for d in &mut self.pending {
                        d.after.get_or_insert(received);
                    }
                    self.held = Some((rel, seq));
                }
                Step::Damage {
                    offset,
                    bytes,
                    first_seq,
                    last_seq,
                } => {
                    let segment = cursor.segment.path.clone();
                    if first_seq > last_seq {
                        tracing::debug!(path = %segment.display(), offset, bytes, "journal: damaged bytes between two intact records (no record lost)");
                    }
                    self.queue(Damage {
                        kind: DamageKind::Corrupt,
                        segment,
                        offset,
                        bytes,
                        first_seq,
                        last_seq,
                        before: None,
                        after: None,
                    });
                }
                Step::NeedMore => {
                    if cursor.fill()? > 0 {
                        continue;
                    }
                    match self.decide_end()? {
                        EndKind::Final => {
                            if let Some(cursor) = self.cursor.as_mut() {
                                cursor.final_end = true;
                            }
                        }
                        EndKind::More => {}
                        // Following a live journal: nothing more yet.
                        EndKind::Live if self.pending.is_empty() => return Ok(None),
                        EndKind::Live => self.flush_pending = true,
                    }
                }
                Step::End => {
                    let (segment, end) = (cursor.segment.clone(), cursor.scanner.keep_from());
                    let failed = cursor.read_failed;
                    let last_seen = cursor.scanner.last_seen();
                    self.end_segment(&segment, failed, end, None, last_seen)?;
                }
                Step::Tail { offset, bytes } => {
                    let segment = cursor.segment.clone();
                    let failed = cursor.read_failed;
                    let last_seen = cursor.scanner.last_seen();
                    self.end_segment(&segment, failed, offset, Some(bytes), last_seen)?;
                }
            }
        }
    }

    /// At the end of the bytes read so far: decides whether the current segment is complete
    /// (its end is final), still being written, or known complete with more to read first.
    fn decide_end(&mut self) -> Result<EndKind, JournalError> {
        let Some(cursor) = self.cursor.as_ref() else {
            return Ok(EndKind::Final);
        };
        if cursor.segment.compressed || cursor.read_failed || cursor.closed {
            return Ok(EndKind::Final);
        }
        let undecided = cursor.undecided();
        if self.later_segment_exists()? {
            // The writer finished this segment before it created the next, so one more read
            // sees everything it will ever hold.
            if let Some(cursor) = self.cursor.as_mut() {
                cursor.closed = true;
            }
            return Ok(EndKind::More);
        }
        let live = match self.mode {
            ReadMode::Follow => true,
            ReadMode::Closed => false,
            // Only bytes that are not a whole record make a difference.
            ReadMode::Auto => {
                let lock = self.dir.join(LOCK_FILE);
                !undecided
                    || self
                        .fs
                        .is_locked(&lock)
                        .map_err(|e| JournalError::io(&lock, e))?
            }
        };
        Ok(if live { EndKind::Live } else { EndKind::Final })
    }

    /// The current segment ends: at `offset`, cleanly (`tail` None) or with `tail` bytes that
    /// hold no record. When it is the journal's last segment, that tail is reported as recovery
    /// would classify it.
    fn end_segment(
        &mut self,
        segment: &SegmentFile,
        read_failed: bool,
        offset: u64,
        tail: Option<u64>,
        last_seen: u64,
    ) -> Result<(), JournalError> {
        self.prev_end = match (read_failed, tail) {
            (true, _) => PrevEnd::Unreadable {
                segment: segment.path.clone(),
                offset,
            },
            (false, Some(bytes)) => PrevEnd::Tail {
                segment: segment.path.clone(),
                offset,
                bytes,
            },
            (false, None) => PrevEnd::Clean {
                segment: segment.path.clone(),
                end: offset,
            },
        };
        if (read_failed || tail.is_some()) && !self.later_segment_exists()? {
            // The end of a closed journal. A plain segment's tail is what the next writer will
            // cut and skip; a compressed segment was complete when it was compressed, so
            // anything wrong in it is lost records (how many is unknown when its stream is
            // damaged: at least one).
            let plain_tail = !segment.compressed && !read_failed;
            let count = tail.map_or(1, |b| max_records(b).max(1));
            self.queue(Damage {
                kind: if plain_tail {
                    DamageKind::TornTail
                } else {
                    DamageKind::TruncatedSegment
                },
                segment: segment.path.clone(),
                offset,
                bytes: tail.unwrap_or(0),
                first_seq: last_seen.saturating_add(1),
                last_seq: last_seen.saturating_add(count),
                before: None,
                after: None,
            });
        }
        self.finished = Some(segment.first_seq);
        self.cursor = None;
        Ok(())
    }

    /// Whether a segment after the current one exists. At the end of a live segment this runs
    /// each time a follower catches up with the writer: first a `stat` of the name the next
    /// segment would normally have, then (at most every 50 ms) a listing, which finds a segment
    /// after a hole.
    fn later_segment_exists(&mut self) -> Result<bool, JournalError> {
        let Some(cursor) = &self.cursor else {
            return Ok(false);
        };
        let first = cursor.segment.first_seq;
        if self.listed.iter().any(|s| s.first_seq > first) {
            return Ok(true);
        }
        let next = cursor.scanner.last_seen().saturating_add(1);
        if next > first {
            for compressed in [false, true] {
                let path = self.dir.join(segment_name(next, compressed));
                if self
                    .fs
                    .exists(&path)
                    .map_err(|e| JournalError::io(&path, e))?
                {
                    return Ok(true);
                }
            }
        }
        let stale = self.listed_at.is_none_or(|at| at.elapsed() >= RELIST_EVERY);
        if stale {
            self.listed = list_in(self.fs.as_ref(), &self.dir)?;
            self.listed_at = Some(Instant::now());
            return Ok(self.listed.iter().any(|s| s.first_seq > first));
        }
        Ok(false)
    }

    /// Opens the next segment to read; `false` when there is none (yet).
    fn open_next(&mut self) -> Result<bool, JournalError> {
        let mut last_error = None;
        for _attempt in 0..3 {
            self.listed = list_in(self.fs.as_ref(), &self.dir)?;
            self.listed_at = Some(Instant::now());
            let want = self.covered().saturating_add(1);
            let chosen = match self.finished {
                Some(done) => self.listed.iter().find(|s| s.first_seq > done),
                None => self
                    .listed
                    .iter()
                    .rev()
                    .find(|s| s.first_seq <= want)
                    .or(self.listed.first()),
            };
            let Some(chosen) = chosen.cloned() else {
                return Ok(false);
            };
            match open_segment(self.fs.as_ref(), &chosen) {
                Ok(source) => {
                    self.cursor = Some(Cursor {
                        scanner: Scanner::new(chosen.first_seq),
                        segment: chosen,
                        source,
                        buf: vec![0; CHUNK],
                        base: 0,
                        end: 0,
                        final_end: false,
                        read_failed: false,
                        closed: false,
                    });
                    return Ok(true);
                }
                // Compressed (or expired) and removed between listing and opening: list again.
                Err(JournalError::Io { source, path })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    last_error = Some(JournalError::Io { source, path });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or(JournalError::Thread("no segment to open".into())))
    }
}
