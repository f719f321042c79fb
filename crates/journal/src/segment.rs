//! Segment files: naming, listing, creation, compression of closed segments, leftovers of
//! interrupted work, and the `EXPIRED` record of what retention removed. Every operation goes
//! through the [`Fs`] seam.
//!
//! A segment is named after its first record's `seq`, zero-padded so names sort in order:
//! `00000000000000000001.kbj` while it is written, `00000000000000000001.kbj.zst` once closed and
//! compressed. What must hold (the crash-safety argument in [`super`] relies on it):
//! - a segment appears under its name only complete with its header, synced: it is written as
//!   `<name>.kbj.tmp`, synced, renamed into place, and the directory synced;
//! - compression writes `<name>.kbj.zst.tmp`, syncs it, renames it into place and syncs the
//!   directory before the plain file is removed: at every instant one complete copy exists;
//! - `EXPIRED` (the highest `seq` retention removed) is replaced the same way, before the
//!   segments it names are removed.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::JournalError;
use super::format::SegmentHeader;
use super::io::{Fs, WriteFile};

/// Extension of a segment being written (or not yet compressed).
pub const PLAIN_EXT: &str = "kbj";
/// Extension of a closed, compressed segment.
pub const ZST_EXT: &str = "kbj.zst";
/// The file recording the highest `seq` retention removed.
pub const EXPIRED_FILE: &str = "EXPIRED";
/// The file whose lock the one writer holds.
pub const LOCK_FILE: &str = "LOCK";

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

/// The segments in `dir` (on the real file system), in `seq` order.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, JournalError> {
    list_in(&super::io::StdFs, dir)
}

/// The segments in `dir`, in `seq` order. Where both a plain and a compressed copy exist (a crash
/// between rename and removal), the compressed one is listed: it is complete.
pub(crate) fn list_in(fs: &dyn Fs, dir: &Path) -> Result<Vec<SegmentFile>, JournalError> {
    let names = fs.list(dir).map_err(|e| JournalError::io(dir, e))?;
    let mut out: Vec<SegmentFile> = names
        .iter()
        .filter_map(|name| {
            let (stem, compressed) = if let Some(stem) = name.strip_suffix(".kbj.zst") {
                (stem, true)
            } else {
                (name.strip_suffix(".kbj")?, false)
            };
            if stem.len() != 20 {
                return None;
            }
            let first_seq = stem.parse::<u64>().ok().filter(|&s| s > 0)?;
            Some(SegmentFile {
                first_seq,
                path: dir.join(name),
                compressed,
            })
        })
        .collect();
    out.sort_by_key(|s| (s.first_seq, !s.compressed));
    out.dedup_by_key(|s| s.first_seq);
    Ok(out)
}

/// Opens a segment for reading, decompressing on the fly when it is compressed.
pub(crate) fn open_segment(
    fs: &dyn Fs,
    segment: &SegmentFile,
) -> Result<Box<dyn Read + Send>, JournalError> {
    let file = fs
        .open_read(&segment.path)
        .map_err(|e| JournalError::io(&segment.path, e))?;
    if segment.compressed {
        let decoder = zstd::stream::read::Decoder::new(file)
            .map_err(|e| JournalError::io(&segment.path, e))?;
        Ok(Box::new(decoder))
    } else {
        Ok(file)
    }
}

/// A segment's (uncompressed) bytes, as far as they can be read: the bytes, and whether reading
/// stopped at an error (a damaged compressed stream) rather than at the end.
pub(crate) fn read_segment(
    fs: &dyn Fs,
    segment: &SegmentFile,
) -> Result<(Vec<u8>, bool), JournalError> {
    let mut source = open_segment(fs, segment)?;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        match source.read(&mut chunk) {
            Ok(0) => return Ok((bytes, false)),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) if segment.compressed => return Ok((bytes, true)),
            Err(e) => return Err(JournalError::io(&segment.path, e)),
        }
    }
}

/// Creates segment `header.first_seq` in `dir` complete with its header: written beside, synced,
/// renamed into place (replacing an empty segment of the same name), directory synced. Returns
/// the file, open for appending after the header.
pub(crate) fn create_segment(
    fs: &dyn Fs,
    dir: &Path,
    header: &SegmentHeader,
) -> Result<(Box<dyn WriteFile>, SegmentFile), JournalError> {
    let name = segment_name(header.first_seq, false);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let written = (|| {
        let mut file = fs.create(&tmp)?;
        file.write_all(&header.encode())?;
        file.sync_data()?;
        Ok::<_, io::Error>(file)
    })();
    let file = match written {
        Ok(file) => file,
        Err(e) => {
            let _ = fs.remove(&tmp);
            return Err(JournalError::io(&tmp, e));
        }
    };
    fs.rename(&tmp, &path)
        .map_err(|e| JournalError::io(&path, e))?;
    fs.sync_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    Ok((
        file,
        SegmentFile {
            first_seq: header.first_seq,
            path,
            compressed: false,
        },
    ))
}

/// Adapts a [`WriteFile`] to [`std::io::Write`] (for the zstd encoder).
struct Writer<'a>(&'a mut dyn WriteFile);

impl Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compresses a closed plain segment in place (see the module doc for the order of steps).
/// Returns the compressed segment, or `None` when `stop` was raised first (the temporary file is
/// removed and the plain segment stays, to be compressed by the next writer).
pub(crate) fn compress(
    fs: &dyn Fs,
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
        let mut input = fs.open_read(&segment.path).map_err(io(&segment.path))?;
        let mut output = fs.create(&tmp).map_err(io(&tmp))?;
        let result = (|| {
            let mut encoder = zstd::stream::write::Encoder::new(
                io::BufWriter::with_capacity(1 << 20, Writer(output.as_mut())),
                level,
            )
            .map_err(io(&tmp))?;
            let mut chunk = vec![0u8; 1 << 20];
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                let n = match input.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(JournalError::io(&segment.path, e)),
                };
                encoder.write_all(&chunk[..n]).map_err(io(&tmp))?;
            }
            let mut buffered = encoder.finish().map_err(io(&tmp))?;
            buffered.flush().map_err(io(&tmp))?;
            Ok(true)
        })();
        match result {
            Ok(true) => output.sync_data().map_err(io(&tmp))?,
            Ok(false) => {
                drop(output);
                fs.remove(&tmp).map_err(io(&tmp))?;
                return Ok(None);
            }
            Err(e) => {
                drop(output);
                let _ = fs.remove(&tmp);
                return Err(e);
            }
        }
    }
    fs.rename(&tmp, &target).map_err(io(&target))?;
    fs.sync_dir(dir).map_err(io(dir))?;
    fs.remove(&segment.path).map_err(io(&segment.path))?;
    Ok(Some(SegmentFile {
        first_seq: segment.first_seq,
        path: target,
        compressed: true,
    }))
}

/// Removes leftovers of interrupted work: temporary files, and plain copies of segments that
/// were already compressed.
pub(crate) fn clean_leftovers(fs: &dyn Fs, dir: &Path) -> Result<(), JournalError> {
    let names = fs.list(dir).map_err(|e| JournalError::io(dir, e))?;
    let mut removed = false;
    for name in &names {
        let stale_tmp = name.ends_with(".kbj.zst.tmp")
            || name.ends_with(".kbj.tmp")
            || *name == format!("{EXPIRED_FILE}.tmp");
        let superseded = name.ends_with(".kbj") && names.contains(&format!("{name}.zst"));
        if stale_tmp || superseded {
            let path = dir.join(name);
            fs.remove(&path).map_err(|e| JournalError::io(&path, e))?;
            removed = true;
        }
    }
    if removed {
        fs.sync_dir(dir).map_err(|e| JournalError::io(dir, e))?;
    }
    Ok(())
}

/// The highest `seq` retention removed from `dir` (0 when it removed nothing).
pub(crate) fn read_expired(fs: &dyn Fs, dir: &Path) -> Result<u64, JournalError> {
    let path = dir.join(EXPIRED_FILE);
    match fs.read_all(&path) {
        Ok(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .ok_or(JournalError::Corrupt {
                path,
                offset: 0,
                reason: "EXPIRED does not hold a seq",
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(JournalError::io(&path, e)),
    }
}

/// Records, durably, that retention removes every segment up to `seq`.
pub(crate) fn write_expired(fs: &dyn Fs, dir: &Path, seq: u64) -> Result<(), JournalError> {
    let path = dir.join(EXPIRED_FILE);
    let tmp = dir.join(format!("{EXPIRED_FILE}.tmp"));
    (|| {
        let mut file = fs.create(&tmp)?;
        file.write_all(format!("{seq}\n").as_bytes())?;
        file.sync_data()
    })()
    .map_err(|e| JournalError::io(&tmp, e))?;
    fs.rename(&tmp, &path)
        .map_err(|e| JournalError::io(&path, e))?;
    fs.sync_dir(dir).map_err(|e| JournalError::io(dir, e))
}
