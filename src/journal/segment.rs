//! Segment files: naming, listing, and compression of closed segments.
//!
//! A segment is named after its first record's `seq`, zero-padded so names sort in order:
//! `00000000000000000001.kbj` while it is written, `00000000000000000001.kbj.zst` once closed and
//! compressed. Compression writes `<name>.kbj.zst.tmp`, syncs it, renames it into place and syncs
//! the directory before the plain file is removed: at every instant one complete copy exists.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::JournalError;

/// Extension of a segment being written (or not yet compressed).
pub const PLAIN_EXT: &str = "kbj";
/// Extension of a closed, compressed segment.
pub const ZST_EXT: &str = "kbj.zst";

/// One segment file in a journal directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// The `seq` of its first record (from the file name).
    pub first_seq: u64,
    /// Its path.
    pub path: PathBuf,
    /// Whether it is zstd-compressed.
    pub compressed: bool,
}

/// The file name of a segment.
pub fn segment_name(first_seq: u64, compressed: bool) -> String {
    format!(
        "{first_seq:020}.{}",
        if compressed { ZST_EXT } else { PLAIN_EXT }
    )
}

/// The segments in `dir`, in `seq` order. Where both a plain and a compressed copy exist (a crash
/// between rename and removal), the compressed one is listed: it is complete.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, JournalError> {
    let entries = fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    let mut out: Vec<SegmentFile> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (stem, compressed) = if let Some(stem) = name.strip_suffix(".kbj.zst") {
            (stem, true)
        } else if let Some(stem) = name.strip_suffix(".kbj") {
            (stem, false)
        } else {
            continue;
        };
        if stem.len() != 20 {
            continue;
        }
        let Ok(first_seq) = stem.parse::<u64>() else {
            continue;
        };
        out.push(SegmentFile {
            first_seq,
            path: entry.path(),
            compressed,
        });
    }
    out.sort_by_key(|s| (s.first_seq, !s.compressed));
    out.dedup_by_key(|s| s.first_seq);
    Ok(out)
}

/// Opens a segment for reading, decompressing on the fly when it is compressed.
pub fn open_segment(segment: &SegmentFile) -> Result<Box<dyn io::Read + Send>, JournalError> {
    let file = File::open(&segment.path).map_err(|e| JournalError::io(&segment.path, e))?;
    if segment.compressed {
        let decoder = zstd::stream::read::Decoder::new(file)
            .map_err(|e| JournalError::io(&segment.path, e))?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(file))
    }
}

/// Compresses a closed plain segment in place (see the module doc for the order of steps).
/// Returns the compressed segment, or `None` when `stop` was raised first (the temporary file is
/// removed and the plain segment stays, to be compressed by the next writer).
pub fn compress(
    segment: &SegmentFile,
    level: i32,
    stop: &AtomicBool,
) -> Result<Option<SegmentFile>, JournalError> {
    let dir = segment.path.parent().unwrap_or(Path::new("."));
    let target = dir.join(segment_name(segment.first_seq, true));
    let tmp = dir.join(format!("{}.tmp", segment_name(segment.first_seq, true)));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| JournalError::io(&p, e)
    };
    {
        let mut input = File::open(&segment.path).map_err(io(&segment.path))?;
        let output = File::create(&tmp).map_err(io(&tmp))?;
        let mut encoder =
            zstd::stream::write::Encoder::new(BufWriter::new(output), level).map_err(io(&tmp))?;
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            if stop.load(Ordering::Relaxed) {
                drop(encoder);
                fs::remove_file(&tmp).map_err(io(&tmp))?;
                return Ok(None);
            }
            let n = match input.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(JournalError::io(&segment.path, e)),
            };
            encoder.write_all(&chunk[..n]).map_err(io(&tmp))?;
        }
        let mut output = encoder.finish().map_err(io(&tmp))?;
        output.flush().map_err(io(&tmp))?;
        output.get_ref().sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &target).map_err(io(&target))?;
    sync_dir(dir)?;
    fs::remove_file(&segment.path).map_err(io(&segment.path))?;
    Ok(Some(SegmentFile {
        first_seq: segment.first_seq,
        path: target,
        compressed: true,
    }))
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io(dir, e))
}

/// Removes leftovers of interrupted work: temporary files, and plain copies of segments that
/// were already compressed.
pub fn clean_leftovers(dir: &Path) -> Result<(), JournalError> {
    let entries = fs::read_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    for name in &names {
        let stale_tmp = name.ends_with(".kbj.zst.tmp");
        let superseded = name.ends_with(".kbj") && names.contains(&format!("{name}.zst"));
        if stale_tmp || superseded {
            let path = dir.join(name);
            fs::remove_file(&path).map_err(|e| JournalError::io(&path, e))?;
        }
    }
    Ok(())
}
