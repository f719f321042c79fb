//! The journal: every frame exactly as received, with its receive time, connection, sequence
//! number and checksum verdict, in append-only segment files on local disk.
//!
//! It is the embedded default store (`krakenbook collect` without a database) and the
//! write-ahead log for the database: the database writer follows it from its checkpoint, so a
//! database outage, a slow server or a restart never costs a frame.
//!
//! # On-disk format (version 1)
//!
//! A journal is a directory of segments, each named after the `seq` of its first record,
//! zero-padded to 20 digits: `00000000000000000001.kbj` (plain; the active segment and segments
//! not yet compressed) or `00000000000000000001.kbj.zst` (closed, zstd-compressed; the same bytes
//! inside). A `LOCK` file is held (`flock`) by the one writer. All integers are little-endian.
//!
//! ```text
//! segment  := header record*
//! header   := magic[8] = "KBJRNL\0\x01"  first_seq:u64  conn_id_base:u64  created_ns:i64  crc:u32
//!             (crc = CRC32 of the 32 bytes before it)
//! record   := len:u32  crc:u32  body[len]          (crc = CRC32 of body)
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
//! `seq` starts at 1 and increases by one per record across segments, without gaps: it is the
//! exact order in which the collector received frames. `conn_id_base` is the highest connection
//! id used before the segment, so connection ids keep increasing across restarts.
//!
//! # Crash safety
//!
//! - Records are only ever appended; a segment is never rewritten, except that recovery may cut
//!   its torn tail.
//! - The writer flushes to the operating system whenever its queue runs dry (at most every 2 ms,
//!   [`writer::FLUSH_EVERY`]), and syncs to disk at least every `sync_interval` (1 s by default),
//!   on rotation and on shutdown. A crash of the process loses at most the frames of the last
//!   2 ms; a power cut loses at most the last `sync_interval`.
//! - A crash can leave only the end of the last segment incomplete: the records after the last
//!   sync, possibly half-written. On open, the writer scans the last segment, keeps every record
//!   whose length and CRC check out and whose `seq` follows its predecessor's, and cuts the file at
//!   the first that does not (the torn tail, logged with its offset and size). It then starts a new
//!   segment, so the recovered one is never appended to again.
//! - A new segment's header is synced, and the directory too, before any record goes into it; a
//!   segment whose header is missing or torn held no records and is removed at recovery.
//! - Compression writes `<name>.kbj.zst.tmp`, syncs it, renames it to `<name>.kbj.zst`, syncs the
//!   directory, then removes `<name>.kbj`: at every instant one complete copy exists. Leftover
//!   temporary files, and plain files whose compressed copy exists, are removed on open.
//! - Readers treat an incomplete record at the end of the active segment as not yet written; in a
//!   closed segment, an incomplete or invalid record is corruption, reported with the file and
//!   byte offset as [`JournalError::Corrupt`].

mod format;
mod reader;
mod segment;
pub mod writer;

use std::path::{Path, PathBuf};

pub use format::{FrameView, MAX_BODY, RecordView, SegmentHeader, encoded_len};
pub use reader::{Item, JournalReader, ReadItem};
pub use segment::{SegmentFile, list_segments};
pub use writer::{
    Entry, JournalConfig, JournalHandle, JournalStats, JournalWriter, Recovery, Syncer,
    spawn_journal,
};

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

/// The `seq` of the last intact record in the journal at `dir` (0 when it holds none), found by
/// reading its last segment.
pub fn last_seq(dir: &Path) -> Result<u64, JournalError> {
    let segments = list_segments(dir)?;
    let Some(last) = segments.last() else {
        return Ok(0);
    };
    let mut reader = JournalReader::open(dir, last.first_seq.saturating_sub(1))?;
    while reader.next_record()?.is_some() {}
    Ok(reader.position())
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
                        crate::config::hostname(),
                        crc32fast::hash(&salt.to_le_bytes())
                    )
                }
            };
            let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
            std::fs::write(&tmp, format!("{name}\n")).map_err(|e| JournalError::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| JournalError::io(&path, e))?;
            segment::sync_dir(dir)?;
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
            segment::sync_dir(dir)?;
            Ok(id)
        }
        Err(e) => Err(JournalError::io(&path, e)),
    }
}

/// 128 bits from the operating system's random source (the kernel's, read from
/// `/dev/urandom`), mixed with the time and process id should that fail, as 32 hex digits.
fn random_hex() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        let nanos = crate::time::Timestamp::now().unix_nanos() as u128;
        let mixed = nanos ^ (u128::from(std::process::id()) << 64);
        bytes = mixed.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    /// Records are missing between two `seq`s (segments removed by hand or by retention).
    #[error("journal has a gap in {path}: expected seq {expected}, found {found}")]
    Gap {
        /// The seq that should come next.
        expected: u64,
        /// The seq found instead.
        found: u64,
        /// Where.
        path: PathBuf,
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
}

#[cfg(test)]
mod tests;
