//! Reading a journal in `seq` order from any point, including a journal that is still being
//! written (the database writer follows the live journal this way).
//!
//! Within a live segment, bytes that end inside a record mean "not written yet", never
//! corruption: the writer appends whole records but the operating system may show part of one.
//! Only the writer's own recovery, at startup, decides that an incomplete tail is torn and cuts it.
//! In a closed segment (a later one exists, or it is compressed), an incomplete tail or an invalid
//! record is corruption, reported with the file and byte offset.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::JournalError;
use super::format::{HEADER_LEN, Parsed, RecordView, SegmentHeader, parse_record, view_validated};
use super::segment::{SegmentFile, list_segments, open_segment, segment_name};
use crate::record::Record;

/// What a reader returns next: a record, read in place, or the records found missing.
#[derive(Debug)]
pub enum ReadItem<'a> {
    /// An intact record (valid until the next read).
    Record(RecordView<'a>),
    /// Records missing before the next intact one.
    Damage(super::Damage),
}

/// [`ReadItem`], owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// An intact record.
    Record(Record),
    /// Records missing before the next intact one.
    Damage(super::Damage),
}

const CHUNK: usize = 256 << 10;

/// Reads records with `seq` greater than a starting point, in order, across segments.
pub struct JournalReader {
    dir: PathBuf,
    /// The last `seq` returned (or the starting point).
    after: u64,
    cursor: Option<Cursor>,
    /// The first `seq` of the last segment read to its end: not to be opened again.
    finished: Option<u64>,
}

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("dir", &self.dir)
            .field("after", &self.after)
            .field("segment", &self.cursor.as_ref().map(|c| &c.segment.path))
            .finish()
    }
}

struct Cursor {
    segment: SegmentFile,
    source: Box<dyn Read + Send>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Byte offset in the (uncompressed) segment of `buf[start]`.
    offset: u64,
    header: bool,
}

impl Cursor {
    /// Reads more bytes; returns how many.
    fn fill(&mut self) -> Result<usize, JournalError> {
        // `buf[..end]` holds bytes read; `buf[end..]` is zeroed room kept between reads, so a read
        // never pays for clearing memory (a live journal is read a few hundred bytes at a time).
        if self.start > 0 && (self.start * 2 >= self.end || self.end == self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < CHUNK / 4 {
            let grown = (self.buf.len() * 2).max(CHUNK);
            self.buf.resize(grown, 0);
        }
        let n = loop {
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(JournalError::io(&self.segment.path, e)),
            }
        };
        self.end += n;
        Ok(n)
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn corrupt(&self, reason: &'static str) -> JournalError {
        JournalError::Corrupt {
            path: self.segment.path.clone(),
            offset: self.offset,
            reason,
        }
    }
}

impl JournalReader {
    /// A reader of `dir` that returns the records after `after_seq` (0 reads from the start).
    pub fn open(dir: &Path, after_seq: u64) -> Result<Self, JournalError> {
        if !dir.is_dir() {
            return Err(JournalError::NotADirectory(dir.to_path_buf()));
        }
        Ok(JournalReader {
            dir: dir.to_path_buf(),
            after: after_seq,
            cursor: None,
            finished: None,
        })
    }

    /// The `seq` of the last record returned (or the starting point).
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The next record or damage, read in place, or `None` when everything written so far has
    /// been read.
    pub fn next_item(&mut self) -> Result<Option<ReadItem<'_>>, JournalError> {
        Ok(self.next_view()?.map(ReadItem::Record))
    }

    /// The next record or damage, owned.
    pub fn next_owned(&mut self) -> Result<Option<Item>, JournalError> {
        Ok(self.next_record()?.map(Item::Record))
    }

    /// The next record, or `None` when every record written so far has been read.
    pub fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        match self.next_view()? {
            None => Ok(None),
            Some(view) => view.to_record().map(Some).ok_or(JournalError::Thread(
                "a validated journal record failed to decode".into(),
            )),
        }
    }

    /// The next record, read in place without copying (valid until the next call).
    pub fn next_view(&mut self) -> Result<Option<RecordView<'_>>, JournalError> {
        let Some(at) = self.advance()? else {
            return Ok(None);
        };
        match &self.cursor {
            Some(cursor) => Ok(Some(view_validated(&cursor.buf[at..cursor.end]))),
            None => Ok(None),
        }
    }

    /// Moves past the next record after `after`, returning its offset in the cursor's buffer.
    fn advance(&mut self) -> Result<Option<usize>, JournalError> {
        loop {
            if self.cursor.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let Some(cursor) = self.cursor.as_mut() else {
                return Ok(None);
            };
            if !cursor.header {
                if cursor.pending().len() < HEADER_LEN {
                    if cursor.fill()? == 0 {
                        let compressed = cursor.segment.compressed;
                        if compressed || self.has_later_segment()? {
                            let Some(cursor) = self.cursor.as_ref() else {
                                return Ok(None);
                            };
                            return Err(cursor.corrupt("segment ends inside its header"));
                        }
                        return Ok(None);
                    }
                    continue;
                }
                let header = SegmentHeader::decode(cursor.pending())
                    .ok_or_else(|| cursor.corrupt("bad segment header"))?;
                if header.first_seq != cursor.segment.first_seq {
                    return Err(cursor.corrupt("header disagrees with the file name"));
                }
                cursor.start += HEADER_LEN;
                cursor.offset += HEADER_LEN as u64;
                cursor.header = true;
            }
            match parse_record(cursor.pending()) {
                Parsed::Record(record, len) => {
                    let (seq, at) = (record.seq, cursor.start);
                    cursor.start += len;
                    cursor.offset += len as u64;
                    if seq <= self.after {
                        continue;
                    }
                    if seq != self.after + 1 {
                        return Err(JournalError::Gap {
                            expected: self.after + 1,
                            found: seq,
                            path: cursor.segment.path.clone(),
                        });
                    }
                    self.after = seq;
                    return Ok(Some(at));
                }
                Parsed::Invalid(reason) => return Err(cursor.corrupt(reason)),
                Parsed::Incomplete => {
                    if cursor.fill()? > 0 {
                        continue;
                    }
                    let closed = cursor.segment.compressed || self.has_later_segment()?;
                    let Some(cursor) = self.cursor.as_mut() else {
                        return Ok(None);
                    };
                    if !closed {
                        return Ok(None);
                    }
                    // Closed: the writer finished it before starting the next one, so one more read
                    // sees everything it will ever hold.
                    if cursor.fill()? > 0 {
                        continue;
                    }
                    if !cursor.pending().is_empty() {
                        return Err(cursor.corrupt("closed segment ends inside a record"));
                    }
                    self.finished = Some(cursor.segment.first_seq);
                    self.cursor = None;
                }
            }
        }
    }

    /// Whether the segment after the current one exists. Segments are contiguous, so at the end
    /// of the current one its successor is named after `after + 1`: two `stat`s, not a listing
    /// of the directory (this runs each time a follower catches up with the writer).
    fn has_later_segment(&self) -> Result<bool, JournalError> {
        let Some(cursor) = &self.cursor else {
            return Ok(false);
        };
        let next = self.after + 1;
        if next <= cursor.segment.first_seq {
            return Ok(false);
        }
        Ok([false, true]
            .into_iter()
            .any(|compressed| self.dir.join(segment_name(next, compressed)).exists()))
    }

    /// Opens the segment holding `after + 1`; `false` when there is none yet.
    fn open_next(&mut self) -> Result<bool, JournalError> {
        for _attempt in 0..3 {
            let segments = list_segments(&self.dir)?;
            let want = self.after + 1;
            let chosen = match segments.iter().rposition(|s| s.first_seq <= want) {
                // Everything up to `after` is read and no segment holds more yet.
                Some(i) if Some(segments[i].first_seq) == self.finished => return Ok(false),
                Some(i) => &segments[i],
                None => match segments.first() {
                    Some(first) => {
                        return Err(JournalError::Gap {
                            expected: want,
                            found: first.first_seq,
                            path: first.path.clone(),
                        });
                    }
                    None => return Ok(false),
                },
            };
            match open_segment(chosen) {
                Ok(source) => {
                    self.cursor = Some(Cursor {
                        segment: chosen.clone(),
                        source,
                        buf: vec![0; CHUNK],
                        start: 0,
                        end: 0,
                        offset: 0,
                        header: false,
                    });
                    return Ok(true);
                }
                // Compressed and removed between listing and opening: list again.
                Err(JournalError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}
