//! The journal's footprint on disk, for `/metrics`: the bytes of its segment files and the free
//! and total bytes of the filesystem that holds it.
//!
//! A background task ([`sample_every`]) measures them every few seconds, off the async runtime
//! (`spawn_blocking`), into [`JournalDisk`]'s atomics; a scrape only reads those. So the cost of
//! listing the directory is fixed by the interval, never by how often, or by how many clients,
//! `/metrics` is read.
//!
//! What must always hold:
//! - segment bytes are the lengths of the directory's segment files (`*.kbj`, `*.kbj.zst`, and
//!   their `.tmp` forms while being written or compressed), nothing else in it;
//! - free bytes are those an unprivileged writer can still use (`statvfs`'s `f_bavail`), which is
//!   what the journal, running as a service user, can fill;
//! - a failed measurement keeps the last values and is logged once per episode; the families
//!   appear in `/metrics` after the first measurement that succeeded.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Metrics;

/// The last measurement of the journal's disk.
#[derive(Debug, Default)]
pub struct JournalDisk {
    /// Bytes of the segment files.
    pub segment_bytes: AtomicU64,
    /// Segment files.
    pub segment_files: AtomicU64,
    /// Bytes available to unprivileged writers on the journal's filesystem.
    pub free_bytes: AtomicU64,
    /// Size of the journal's filesystem in bytes.
    pub size_bytes: AtomicU64,
    /// Whether a measurement has succeeded yet.
    pub sampled: AtomicBool,
}

/// One measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskSample {
    /// Bytes of the segment files.
    pub segment_bytes: u64,
    /// Segment files.
    pub segment_files: u64,
    /// Bytes available to unprivileged writers.
    pub free_bytes: u64,
    /// Size of the filesystem.
    pub size_bytes: u64,
}

impl JournalDisk {
    /// Keeps `sample` as the latest measurement.
    pub fn record(&self, sample: DiskSample) {
        self.segment_bytes
            .store(sample.segment_bytes, Ordering::Relaxed);
        self.segment_files
            .store(sample.segment_files, Ordering::Relaxed);
        self.free_bytes.store(sample.free_bytes, Ordering::Relaxed);
        self.size_bytes.store(sample.size_bytes, Ordering::Relaxed);
        self.sampled.store(true, Ordering::Release);
    }

    /// The latest measurement, `None` before the first.
    pub fn latest(&self) -> Option<DiskSample> {
        self.sampled.load(Ordering::Acquire).then(|| DiskSample {
            segment_bytes: self.segment_bytes.load(Ordering::Relaxed),
            segment_files: self.segment_files.load(Ordering::Relaxed),
            free_bytes: self.free_bytes.load(Ordering::Relaxed),
            size_bytes: self.size_bytes.load(Ordering::Relaxed),
        })
    }
}

/// Whether a file name in a journal directory is a segment (plain, compressed, or either being
/// written: `00000000000000000001.kbj`, `….kbj.zst`, `….kbj.tmp`, `….kbj.zst.tmp`).
pub fn is_segment_name(name: &str) -> bool {
    let name = name.strip_suffix(".tmp").unwrap_or(name);
    let stem = name
        .strip_suffix(".kbj.zst")
        .or_else(|| name.strip_suffix(".kbj"));
    stem.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

/// Measures the journal directory `dir` and its filesystem.
pub fn measure(dir: &Path) -> io::Result<DiskSample> {
    let mut sample = DiskSample::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_segment_name) {
            continue;
        }
        // A file removed between the listing and its metadata (compression, retention) no
        // longer takes room: skip it.
        match entry.metadata() {
            Ok(meta) if meta.is_file() => {
                sample.segment_bytes += meta.len();
                sample.segment_files += 1;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let fs = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    sample.free_bytes = fs.f_bavail.saturating_mul(fs.f_frsize);
    sample.size_bytes = fs.f_blocks.saturating_mul(fs.f_frsize);
    Ok(sample)
}

/// How often [`sample_every`] measures by default.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Measures `dir` now and then every `every` into `metrics`, until `cancel`.
pub async fn sample_every(
    dir: PathBuf,
    metrics: Arc<Metrics>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut failing = false;
    // One wake-up a tick (tokio's interval woke the runtime two or three times for each).
    let mut tick = crate::alarm::Every::new(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let path = dir.clone();
        let result = tokio::task::spawn_blocking(move || measure(&path)).await;
        match result {
            Ok(Ok(sample)) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(dir = %dir.display(), "metrics: measuring the journal's disk again");
                }
                metrics.journal_disk.record(sample);
            }
            Ok(Err(error)) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(dir = %dir.display(), %error, "metrics: cannot measure the journal's disk; its figures keep their last values");
                }
            }
            // The blocking pool is shutting down with the runtime.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_are_told_from_the_other_files_of_a_journal() {
        for (name, segment) in [
            ("00000000000000000001.kbj", true),
            ("00000000000000000001.kbj.zst", true),
            ("00000000000000000001.kbj.tmp", true),
            ("00000000000000000001.kbj.zst.tmp", true),
            ("LOCK", false),
            ("EXPIRED", false),
            ("COLLECTOR", false),
            ("INSTANCE", false),
            ("CONNECTS", false),
            ("CONNECTS.tmp", false),
            (".kbj", false),
            ("notes.kbj", false),
            ("00000000000000000001.kbj.bak", false),
        ] {
            assert_eq!(is_segment_name(name), segment, "{name}");
        }
    }

    #[test]
    fn segment_bytes_count_segment_files_only_and_the_filesystem_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, len: usize| std::fs::write(dir.path().join(name), vec![7u8; len]);
        write("00000000000000000001.kbj.zst", 1000).unwrap();
        write("00000000000000000900.kbj", 250).unwrap();
        write("00000000000000000950.kbj.tmp", 5).unwrap();
        write("COLLECTOR", 64).unwrap();
        write("LOCK", 0).unwrap();
        std::fs::create_dir(dir.path().join("00000000000000000999.kbj")).unwrap();
        let s = measure(dir.path()).unwrap();
        assert_eq!((s.segment_bytes, s.segment_files), (1255, 3));
        assert!(s.size_bytes > 0 && s.free_bytes <= s.size_bytes, "{s:?}");
    }

    #[test]
    fn a_missing_directory_is_an_error_and_keeps_the_last_values() {
        let disk = JournalDisk::default();
        assert_eq!(disk.latest(), None);
        let good = DiskSample {
            segment_bytes: 1,
            segment_files: 1,
            free_bytes: 2,
            size_bytes: 3,
        };
        disk.record(good);
        let dir = tempfile::tempdir().unwrap();
        assert!(measure(&dir.path().join("gone")).is_err());
        assert_eq!(disk.latest(), Some(good));
    }

    /// Real time: the sampler sleeps on a kernel timer ([`crate::alarm::Every`]), which a
    /// paused test clock does not move.
    #[tokio::test]
    async fn the_sampler_measures_at_once_and_stops_when_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000000000000000001.kbj"), [1u8; 40]).unwrap();
        let metrics = Arc::new(Metrics::default());
        let cancel = CancellationToken::new();
        let every = Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(sample_every(
            dir.path().to_owned(),
            Arc::clone(&metrics),
            every,
            cancel.clone(),
        ));
        while metrics.journal_disk.latest().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no first sample"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(started.elapsed() < every, "the first sample at once");
        assert_eq!(metrics.journal_disk.latest().unwrap().segment_bytes, 40);
        std::fs::write(dir.path().join("00000000000000000002.kbj"), [1u8; 60]).unwrap();
        while metrics.journal_disk.latest().unwrap().segment_bytes != 100 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no second sample"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(started.elapsed() >= every, "the second a period later");
        cancel.cancel();
        task.await.unwrap();
    }
}
