//! The journal: every frame exactly as received, with its receive time, connection, sequence
//! number and checksum verdict, in append-only segment files on local disk.
//!
//! It is the embedded default store (`krakenbook collect` without a database) and the
//! write-ahead log for the database: the database pipeline follows it from its checkpoint, so a
//! database outage, a slow server or a restart never costs a frame.
//!
//! # On-disk format (version 2)
//!
//! A journal is a directory of segments, each named after the `seq` of its first record,
//! zero-padded to 20 digits: `00000000000000000001.kbj` (plain; the active segment and segments
//! not yet compressed) or `00000000000000000001.kbj.zst` (closed, zstd-compressed; the same bytes
//! inside). Beside them: `LOCK` (held with `flock` by the one writer), `EXPIRED` (the highest
//! `seq` retention removed, as decimal text), `COLLECTOR` and `INSTANCE` (the journal's
//! identity). All integers are little-endian.
//!
//! ```text
//! segment  := header record*
//! header   := magic[8] = "KBJRNL\0\x02"  first_seq:u64  conn_id_base:u64  created_ns:i64
//!             prev_seq:u64  crc:u32                     (crc = CRC32 of the 40 bytes before it)
//! record   := len:u32  crc:u32  body[len]               (crc = CRC32 of body; 33 ≤ len ≤ 64 MiB)
//! body     := seq:u64  received_ns:i64  conn_id:u64  conn_seq:u64  kind:u8  payload
//! payload  := kind 1 (frame): verdict:u8 (0 none, 1 ok, 2 mismatch)  tops:u8 (bit 0 best bid,
//!                             bit 1 best ask)  level*  frame bytes exactly as received (to the end)
//!             kind 2 (event): a JSON FeedEvent
//!             kind 3 (book state): n:u16 symbol[n] depth:u16 price_precision:u8 qty_precision:u8
//!                             checksum:u32 timestamp_ns:i64 bids:u32 level*bids asks:u32
//!                             level*asks (best first)
//! level    := price:decimal  qty:decimal
//! decimal  := scale:u8  n:u8  mantissa[n]  (n ≤ 16, little-endian u128 without high zero bytes)
//! ```
//!
//! Version 1 segments (magic `"KBJRNL\0\x01"`, a 36-byte header without `prev_seq`) are still
//! read, with `prev_seq = first_seq - 1`; new segments are always version 2.
//!
//! `seq` starts at 1 and increases by one per record across segments: it is the exact order in
//! which the collector received frames. It jumps only where a header says so: a segment's
//! `prev_seq` is the last seq its writer knew intact when it created the segment, and the seqs
//! `prev_seq + 1 ..= first_seq - 1` were *skipped on purpose* after a torn tail (never held a
//! record a reader or the database could have taken; see below). Such a segment's first record
//! is a `JournalRecovered` event saying so. `conn_id_base` is the highest connection id used
//! before the segment, so connection ids keep increasing across restarts.
//!
//! # Crash safety
//!
//! What the file system promises, and all this relies on: data reaches the disk only through an
//! fsync of the file (`fdatasync`), and creations, renames and removals only through an fsync of
//! the directory; a rename replaces its target atomically. Every operation goes through the
//! [`io::Fs`] seam, and the tests run the journal on a disk that keeps nothing more than that
//! (writes since the last sync dropped, possibly leaving a torn prefix or zeroed pages).
//!
//! - Records are only ever appended, whole: the writer encodes them into a buffer and writes
//!   them in one piece; a failed write (a full disk) is cut back to the last whole record before
//!   anything else is written.
//! - The writer flushes to the operating system whenever its queue runs dry (at most every 2 ms,
//!   [`FLUSH_EVERY`]), and syncs to disk at least every `sync_interval` (1 s by default), when a
//!   [`Syncer`] asks, on rotation and on shutdown. A crash of the process loses at most the
//!   frames of the last 2 ms; a power cut at most those since the last sync.
//! - A segment appears under its name complete with its header, synced: it is written as
//!   `<name>.kbj.tmp`, synced, renamed into place, and the directory synced, before any record
//!   goes into it. So every segment in the directory has a valid header, and its name and
//!   `prev_seq` are durable before any of its seqs is used.
//! - Only the end of the last segment can be torn (the records after the last sync). On open,
//!   the writer scans the last segment. Bytes that are not a valid record are *damage* if a
//!   valid, confirmed record follows them (the rules are in `scan`): everything is kept, the
//!   damage is reported (log, [`JournalStats::damaged_seqs_at_open`], [`Recovery::damage`]) and
//!   readers report it too. Only when no valid record follows are they a *torn tail*: it is cut
//!   ([`JournalStats::torn_bytes`]) and its seqs skipped (below).
//! - A closed segment is never written again; recovery never cuts one.
//! - Compression writes `<name>.kbj.zst.tmp`, syncs it, renames it to `<name>.kbj.zst`, syncs the
//!   directory, then removes `<name>.kbj`: at every instant one complete copy exists. Leftover
//!   temporary files, and plain files whose compressed copy exists, are removed on open.
//! - Retention writes `EXPIRED` (synced, renamed into place) before it removes anything, so
//!   readers can tell seqs removed on purpose from lost ones.
//!
//! # The durability invariant: no seq is ever reused; the database holds only synced records
//!
//! *The database only holds synced records.* The database pipeline commits a batch only after
//! [`Syncer::sync_through`] returned for its last seq, and the `synced` watch only ever names
//! records an fsync covered (an fsync that fails stops the journal: it is never retried as if
//! the data were safe). So every record the database holds was on the disk when it committed.
//!
//! *No seq is ever given to two records.* A seq handed out in one run can be handed out again in
//! a later run only if the later run starts at or below it. The next run starts at
//! `next = max(last intact record + 1 + max_records(torn bytes), first_seq of every segment
//! present)`, where `max_records(n) = ceil(n / 41)` bounds the records `n` bytes can hold (a
//! record takes at least 41 bytes). Take any seq `s` handed out before a crash:
//! - if its record is intact on disk, `next > s`;
//! - if it was never synced, no reader and no database can have taken it (above), so no record
//!   anyone holds is ever confused with a later one of the same seq (it may be reused);
//! - if it was synced, its bytes are on disk: either they are intact (first case), or they were
//!   damaged; damaged bytes followed by a valid record are damage, kept and reported, and the
//!   seqs after them are above `s`; damaged bytes with nothing valid after them are the torn tail,
//!   whose seqs, all `s` among them, are skipped by `max_records(torn bytes)`.
//! - Skipping must survive a crash during recovery itself. The new segment, whose header
//!   declares `prev_seq` and `first_seq = next`, is durable (file and directory synced) before a
//!   byte is cut; a crash before that point recovers from the same bytes to the same `next`, a
//!   crash after it finds the new segment, and its name bounds `next` from below. An empty
//!   segment is only ever replaced by one of the same or a higher name (by rename), never
//!   removed first.
//! - A SIGKILL loses nothing the operating system was given; after it the same argument holds
//!   with fewer bytes missing.
//!
//! *What a lying disk can still do.* The argument trusts fsync. A disk that acknowledges a sync
//! and loses the data (a volatile write cache without power-loss protection) can lose synced
//! records that the database already holds; if it loses whole records at the end (the file
//! shorter than what was synced) no bytes are left to bound them, and their seqs can be used
//! again: the database then holds a different record under that seq than the journal (the
//! database pipeline can see this as a checkpoint beyond the journal's end). A disk that
//! reorders writes across a sync can leave a closed segment torn; readers report it as a
//! truncated segment (a loss). Bit flips are found by the CRCs and reported, never taken for
//! records.
//!
//! # Readers
//!
//! [`JournalReader`] returns records and [`Damage`] items in seq order (see `reader`): damage
//! inside a segment (it resynchronises on the next valid record), a closed segment that ends
//! early ([`DamageKind::TruncatedSegment`]), a missing segment ([`DamageKind::MissingSegment`]),
//! seqs skipped after a torn tail ([`DamageKind::TornTail`], not a loss) and segments retention
//! removed ([`DamageKind::Expired`], not a loss).
//!
//! # Layer
//!
//! Crate `krakenbook-journal`. May use: `krakenbook-core` only (the layer test, `tests/layers.rs`,
//! fails otherwise). Used by the store (whose writer follows it), the collector, history and the
//! read paths.
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, missing_docs)]

// The layers below, under the names the `krakenbook` facade gives them, so that a path
// reads the same in every crate (`crate::time::Timestamp`).
use krakenbook_core::{book, host, record, rng, time};

mod format;
pub mod io;
mod reader;
mod recovery;
mod scan;
mod segment;
mod spare;
mod thread;
pub mod writer;

use std::path::{Path, PathBuf};

pub use format::{
    FrameView, HeaderParse, MAX_BODY, RecordView, SegmentHeader, encoded_len, max_records,
};
pub use reader::{
    Item, JournalReader, RECYCLED_MAX_BUFFERS, RECYCLED_MAX_CAPACITY, ReadItem, ReadMode,
};
pub use recovery::Recovery;
pub use segment::{SegmentFile, list_segments};
pub use spare::SpareBuffers;
pub use thread::{
    DISK_FULL_RETRY, FLUSH_EVERY, JournalHandle, JournalSender, Syncer, spawn_journal,
};
pub use writer::{Entry, JournalConfig, JournalConfigError, JournalStats, JournalWriter};

/// Records a reader found missing, and why: readers report it and go on with the next intact
/// record, so one damaged record never takes intact ones with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Why the records are missing.
    pub kind: DamageKind,
    /// The segment concerned (for a missing segment: the one after the hole).
    pub segment: PathBuf,
    /// Byte offset of the damage in the (uncompressed) segment.
    pub offset: u64,
    /// Bytes skipped (0 for a missing segment).
    pub bytes: u64,
    /// The first missing `seq`.
    pub first_seq: u64,
    /// The last missing `seq` (inclusive).
    pub last_seq: u64,
    /// Receive time of the last intact record before the damage, if any was read.
    pub before: Option<crate::time::Timestamp>,
    /// Receive time of the first intact record after the damage, if known.
    pub after: Option<crate::time::Timestamp>,
}

/// Kinds of [`Damage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// Bytes inside a segment that are not valid records (a flipped bit, a zeroed page).
    Corrupt,
    /// A segment is missing: the next one starts later than the records before it end.
    MissingSegment,
    /// A closed segment ends early (cut, or its compressed stream is damaged).
    TruncatedSegment,
    /// A torn tail cut at recovery: the seqs the writer skipped so that none is used twice. The
    /// records were never completely written (nothing synced was lost).
    TornTail,
    /// Segments removed by retention, as configured (recorded in the journal directory).
    Expired,
}

impl DamageKind {
    /// Whether records that had been written were lost (corruption, a missing or truncated
    /// segment), as opposed to seqs that never held a complete record or were expired on purpose.
    pub fn is_loss(self) -> bool {
        matches!(
            self,
            DamageKind::Corrupt | DamageKind::MissingSegment | DamageKind::TruncatedSegment
        )
    }

    /// A short name for messages and the database (`corrupt`, `missing_segment`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DamageKind::Corrupt => "corrupt",
            DamageKind::MissingSegment => "missing_segment",
            DamageKind::TruncatedSegment => "truncated_segment",
            DamageKind::TornTail => "torn_tail",
            DamageKind::Expired => "expired",
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seqs {}..={} missing ({}) in {} at byte {} ({} bytes)",
            self.first_seq,
            self.last_seq,
            self.kind.as_str(),
            self.segment.display(),
            self.offset,
            self.bytes
        )
    }
}

/// The `seq` of the last intact record in the journal at `dir` (0 when it holds none): the last
/// valid record of the last segment that holds one, damage and torn tails notwithstanding.
pub fn last_seq(dir: &Path) -> Result<u64, JournalError> {
    last_seq_in(&io::StdFs, dir)
}

pub(crate) fn last_seq_in(fs: &dyn io::Fs, dir: &Path) -> Result<u64, JournalError> {
    let segments = segment::list_in(fs, dir)?;
    for s in segments.iter().rev() {
        let (bytes, _) = segment::read_segment(fs, s)?;
        if let Some((seq, _)) = scan::scan_segment(&bytes, s.first_seq).last {
            return Ok(seq);
        }
    }
    Ok(0)
}

/// The name of the file holding a journal's collector identity.
pub const IDENTITY_FILE: &str = "COLLECTOR";

/// The identity of the collector that writes the journal in `dir`: the key under which its
/// records (ordered by `seq`) and its checkpoint are stored in the database.
///
/// Each journal has its own identity, fixed when the journal is created and kept in the
/// `COLLECTOR` file: two journals must never share one, or their `seq`s would collide in the
/// database. `requested` names a new journal (default: host name plus a random suffix); for an
/// existing journal it must match or be absent.
pub fn identity(dir: &Path, requested: Option<&str>) -> Result<String, JournalError> {
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let existing = text.trim().to_owned();
            if let Some(r) = requested
                && r != existing
            {
                return Err(JournalError::IdentityMismatch {
                    dir: dir.to_path_buf(),
                    existing,
                    requested: r.to_owned(),
                });
            }
            Ok(existing)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
            let name = match requested {
                Some(r) => r.to_owned(),
                None => {
                    let nanos = crate::time::Timestamp::now().unix_nanos() as u64;
                    let salt = nanos ^ (u64::from(std::process::id()) << 32);
                    format!(
                        "{}-{:08x}",
                        crate::host::hostname(),
                        crc32fast::hash(&salt.to_le_bytes())
                    )
                }
            };
            let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
            std::fs::write(&tmp, format!("{name}\n")).map_err(|e| JournalError::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| JournalError::io(&path, e))?;
            io::Fs::sync_dir(&io::StdFs, dir).map_err(|e| JournalError::io(dir, e))?;
            Ok(name)
        }
        Err(e) => Err(JournalError::io(&path, e)),
    }
}

/// The name of the file holding a journal's instance id.
pub const INSTANCE_FILE: &str = "INSTANCE";

/// The instance id of the journal in `dir`: 32 random hex digits fixed when the journal is first
/// given one, kept in the `INSTANCE` file, and stored beside the database's checkpoint. A journal
/// directory deleted and started again under the same collector identity gets a new instance,
/// which the database refuses instead of silently skipping its records.
pub fn instance(dir: &Path) -> Result<String, JournalError> {
    let path = dir.join(INSTANCE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
            let id = random_hex();
            let tmp = dir.join(format!("{INSTANCE_FILE}.tmp"));
            std::fs::write(&tmp, format!("{id}\n")).map_err(|e| JournalError::io(&tmp, e))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| JournalError::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| JournalError::io(&path, e))?;
            io::Fs::sync_dir(&io::StdFs, dir).map_err(|e| JournalError::io(dir, e))?;
            Ok(id)
        }
        Err(e) => Err(JournalError::io(&path, e)),
    }
}

/// 128 bits seeded by the operating system ([`rng::os_u64`], twice), as 32 hex digits.
fn random_hex() -> String {
    format!("{:016x}{:016x}", rng::os_u64(), rng::os_u64())
}

/// Journal failures, each naming the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing a file failed.
    #[error("journal I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A record or header that should be intact is not.
    #[error("journal corrupt in {path} at byte {offset}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Byte offset in the (uncompressed) segment.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Records are lost (a strict read: [`JournalReader::next_record`]).
    #[error("journal damaged: {0}")]
    Damaged(Box<Damage>),
    /// The journal stopped after an earlier failure (a sync or a write that could not be
    /// undone) and writes nothing more.
    #[error("the journal stopped after an earlier failure: {0}")]
    Stopped(String),
    /// A new segment could not be created; the active one stays in use.
    #[error("journal: cannot start a new segment: {0}")]
    Rotate(Box<JournalError>),
    /// Closing left records unwritten (the disk stayed full).
    #[error("{records} journal records could not be written: {source}")]
    NotJournaled {
        /// How many.
        records: u64,
        /// Why.
        #[source]
        source: Box<JournalError>,
    },
    /// Another process is writing this journal.
    #[error(
        "journal {0} is in use by another process (its LOCK file is held); stop it or use another --journal-dir"
    )]
    Locked(PathBuf),
    /// The path is not a journal directory.
    #[error("{0} is not a directory; give the journal directory (--journal-dir)")]
    NotADirectory(PathBuf),
    /// The journal belongs to another collector identity.
    #[error(
        "journal {dir} belongs to collector {existing:?}, not {requested:?}: drop --collector-id or use another --journal-dir"
    )]
    IdentityMismatch {
        /// The journal.
        dir: PathBuf,
        /// Its identity.
        existing: String,
        /// The identity asked for.
        requested: String,
    },
    /// The journal's thread could not run.
    #[error("journal thread failed: {0}")]
    Thread(String),
}

impl JournalError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        JournalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the disk (or the user's quota) is full: the journal keeps the records and retries;
    /// it resumes by itself once there is room.
    pub fn is_disk_full(&self) -> bool {
        match self {
            JournalError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) || matches!(source.raw_os_error(), Some(28 | 122))
            }
            _ => false,
        }
    }

    /// Whether the journal goes on after this error by retrying (a full disk, a rotation that
    /// failed); anything else stops it.
    pub fn is_retriable(&self) -> bool {
        self.is_disk_full() || matches!(self, JournalError::Rotate(_))
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
