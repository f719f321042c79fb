//! Opening a journal: the directory's lock taken, leftovers cleaned, and the recovery plan of
//! [`crate::recovery`] carried out (that module decides; this one changes the files).
//!
//! What must hold: the steps run in the order the crash-safety argument of the crate's doc
//! needs. The new segment, declaring the skipped seqs in its header, is durable before a single
//! byte of a torn tail is cut, so a crash at any point of recovery recovers to the same (or a
//! later) first seq and no seq that could have been synced is used twice; damage is kept and
//! reported, never cut; closed segments left uncompressed are handed to the compressor.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::compress::Compressor;
use super::{Entry, JournalConfig, JournalStats, JournalWriter};
use crate::JournalError;
use crate::format::{HEADER_LEN, SegmentHeader};
use crate::io::{Fs, LockGuard};
use crate::record::{EventKind, FeedEvent, RecordBody};
use crate::recovery::{self, Recovery};
use crate::segment::{LOCK_FILE, clean_leftovers, create_segment, list_in};
use crate::time::Timestamp;

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
