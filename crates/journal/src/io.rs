//! The journal's file operations behind one small seam, [`Fs`]: the writer, recovery, the
//! compressor, retention and every reader go through it, so tests can run the whole journal on
//! an in-memory disk that loses unsynced writes, tears them, flips bits, fills up or fails to
//! sync (`sim::SimDisk`, test builds only). [`StdFs`] is the real one (`std::fs`).
//!
//! What must hold: an implementation makes data durable only through
//! [`WriteFile::sync_data`] (file contents) and [`Fs::sync_dir`] (creations, renames and removals
//! in a directory), exactly as POSIX promises and no more; the journal's crash-safety argument
//! (in [`super`]) relies on nothing else.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

/// A file opened for appending.
pub trait WriteFile: Send + fmt::Debug {
    /// Appends all of `buf`. On failure a prefix of it may have been written.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the file's contents durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes; the next write appends at `len`.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// Held while a directory's lock is taken; dropping it releases the lock.
pub trait LockGuard: Send + fmt::Debug {}

/// The file system, as the journal uses it.
pub trait Fs: Send + Sync + fmt::Debug {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` is an existing directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// The names of the entries in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Creates `path` (truncating it if it exists) for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Opens an existing file for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// Opens a file for reading from its start.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
    /// The file's length in bytes.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Renames `from` to `to`, replacing `to` (durable after [`sync_dir`](Fs::sync_dir)).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file (durable after [`sync_dir`](Fs::sync_dir)).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Cuts `path` to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Takes the exclusive lock of `path` (created if missing); `None` when another holder has
    /// it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>>;
    /// Whether another holder has the exclusive lock of `path` now (a momentary probe; a missing
    /// file is not locked).
    fn is_locked(&self, path: &Path) -> io::Result<bool>;

    /// Reads a whole file.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_read(path)?.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl StdFs {
    /// The real file system, shareable.
    pub fn shared() -> Arc<dyn Fs> {
        Arc::new(StdFs)
    }
}

#[derive(Debug)]
struct StdWriteFile(File);

impl WriteFile for StdWriteFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(&mut self.0, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.seek(SeekFrom::Start(len)).map(|_| ())
    }
}

#[derive(Debug)]
struct StdLock(#[allow(dead_code)] File);

impl LockGuard for StdLock {}

impl Fs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        Ok(Box::new(StdWriteFile(file)))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Box::new(StdWriteFile(file)))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(path)?))
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(StdLock(file)))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn is_locked(&self, path: &Path) -> io::Result<bool> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        // A shared lock is refused only while a writer holds the exclusive one; it is released
        // at once (the writer retries its own lock briefly, so a probe never keeps it out).
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                Ok(false)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}
