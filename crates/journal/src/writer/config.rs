//! The journal's settings: how it rotates, syncs, compresses and expires segments, and the
//! values refused when the settings are parsed (operator typos; the journal itself survives any
//! value).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::io::{Fs, StdFs};

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
