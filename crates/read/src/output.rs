//! Output files of `export` and `plot`: where the bytes go, and how a finished file appears.
//!
//! What the path names decides how it is written ([`Placement::of`], no I/O):
//! - an existing **device or FIFO**, or a symlink to one (`/dev/null`, `/dev/full`, a pipe made
//!   with `mkfifo`): written **in place**, streaming, and never replaced, truncated or removed.
//!   Opening a FIFO waits for its reader, as a shell redirection does;
//! - a **regular file**, a path where nothing is yet, or a symlink to either (a dangling one
//!   too): the bytes go to a temporary file beside the *target* (the file at the end of the
//!   symlink chain, so that a link stays a link and the rename stays on one filesystem), which is
//!   synced and then renamed over the target. The file appears complete or not at all; a file
//!   replaced keeps its permission bits, a new one is `0644`;
//! - a directory or a socket is refused, with a one-line reason.
//!
//! What must always hold: no temporary file outlives an output that was not committed. Dropping
//! an [`OutputFile`] (an error anywhere, a panic unwinding) removes it; a signal is handled by the
//! CLI, which calls [`remove_partial_files`] before it exits (the process-wide registry of
//! temporary files exists for that one purpose: a signal handler cannot reach the values on the
//! stack of the thread it interrupts). The registry's lock is held across a commit's rename, so
//! a signal either removes the temporary file before the rename or finds the output committed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Why an output could not be opened, written or committed: the path as the user gave it and
/// the reason (one line).
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct OutputError {
    /// The path as given.
    pub path: String,
    /// Why.
    #[source]
    pub source: io::Error,
}

impl OutputError {
    fn new(path: &Path, source: io::Error) -> OutputError {
        OutputError {
            path: path.display().to_string(),
            source,
        }
    }

    fn reason(path: &Path, reason: impl Into<String>) -> OutputError {
        OutputError::new(path, io::Error::other(reason.into()))
    }

    /// Whether the reader of a pipe or FIFO went away (`EPIPE`).
    pub fn is_broken_pipe(&self) -> bool {
        self.source.kind() == io::ErrorKind::BrokenPipe
    }
}

/// What is at a path, as far as writing to it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing (or a dangling symlink).
    Nothing,
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A character or block device.
    Device,
    /// A FIFO (named pipe).
    Fifo,
    /// A Unix socket.
    Socket,
}

impl Found {
    /// What `path` names, following symlinks.
    pub fn at(path: &Path) -> io::Result<Found> {
        use std::os::unix::fs::FileTypeExt;
        match fs::metadata(path) {
            Ok(m) => {
                let t = m.file_type();
                Ok(if t.is_dir() {
                    Found::Directory
                } else if t.is_file() {
                    Found::File
                } else if t.is_fifo() {
                    Found::Fifo
                } else if t.is_socket() {
                    Found::Socket
                } else {
                    Found::Device
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Nothing),
            Err(e) => Err(e),
        }
    }
}

/// How an output is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Streamed into what is there (a device or a FIFO), never replaced.
    InPlace,
    /// Written beside the target and renamed over it when complete.
    Replace,
}

impl Placement {
    /// How to write to what was found, or why not.
    pub fn of(found: Found) -> Result<Placement, &'static str> {
        match found {
            Found::Nothing | Found::File => Ok(Placement::Replace),
            Found::Device | Found::Fifo => Ok(Placement::InPlace),
            Found::Directory => Err("it is a directory: give a file name"),
            Found::Socket => Err("it is a socket: give a file, a FIFO or a device"),
        }
    }
}

/// Refuses, with the reason, a path that cannot be an output whatever its name (a directory, a
/// socket): for the checks made before an output is opened.
pub fn check_kind(path: &Path) -> Result<(), OutputError> {
    match Found::at(path).map(Placement::of) {
        Ok(Err(why)) => Err(OutputError::reason(path, why)),
        _ => Ok(()),
    }
}

/// Whether `path` is written in place (an existing device or FIFO, or a symlink to one).
pub fn writes_in_place(path: &Path) -> bool {
    matches!(
        Found::at(path).ok().map(Placement::of),
        Some(Ok(Placement::InPlace))
    )
}

/// The temporary files not yet committed, for [`remove_partial_files`].
static PARTIAL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Set once the process is being stopped: no new temporary file is created after it.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn partial() -> MutexGuard<'static, Vec<PathBuf>> {
    PARTIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes every temporary file of an output not yet committed, and refuses new ones from now
/// on: for a signal handler, just before the process exits. Returns the files removed.
pub fn remove_partial_files() -> Vec<PathBuf> {
    STOPPING.store(true, Ordering::SeqCst);
    let mut files = partial();
    let mut removed = Vec::new();
    for path in files.drain(..) {
        if fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// An output being written: a [`Write`] that counts its bytes, then [`OutputFile::commit`].
#[derive(Debug)]
pub struct OutputFile {
    /// The path as given (for messages).
    shown: PathBuf,
    file: File,
    bytes: u64,
    /// `Replace`: the temporary file, the target and the mode the finished file gets.
    replace: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    temp: PathBuf,
    target: PathBuf,
    mode: u32,
}

/// The most symlinks followed (Linux's own limit).
const MAX_LINKS: usize = 40;

/// The file at the end of `path`'s symlink chain (the path itself when it is no link). A
/// dangling link ends at the path it names.
fn end_of_links(path: &Path) -> io::Result<PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                let next = fs::read_link(&at)?;
                at = if next.is_absolute() {
                    next
                } else {
                    at.parent().unwrap_or(Path::new("")).join(next)
                };
            }
            Ok(_) => return Ok(at),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(at),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

impl OutputFile {
    /// Opens the output `path` (see the module doc for what each kind of path gets). Fails,
    /// with nothing created, when it cannot be written.
    pub fn create(path: &Path) -> Result<OutputFile, OutputError> {
        let err = |e: io::Error| OutputError::new(path, e);
        if STOPPING.load(Ordering::SeqCst) {
            return Err(OutputError::reason(path, "interrupted"));
        }
        let found = Found::at(path).map_err(err)?;
        match Placement::of(found).map_err(|why| OutputError::reason(path, why))? {
            Placement::InPlace => {
                // No create, no truncate: what is there stays what it is.
                let file = OpenOptions::new().write(true).open(path).map_err(err)?;
                Ok(OutputFile {
                    shown: path.to_path_buf(),
                    file,
                    bytes: 0,
                    replace: None,
                })
            }
            Placement::Replace => {
                let target = end_of_links(path).map_err(err)?;
                let dir = match target.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                if !dir.is_dir() {
                    return Err(OutputError::reason(
                        path,
                        format!("the directory {} does not exist", dir.display()),
                    ));
                }
                let mode = match fs::metadata(&target) {
                    Ok(m) => {
                        use std::os::unix::fs::PermissionsExt;
                        m.permissions().mode() & 0o7777
                    }
                    Err(_) => 0o644,
                };
                let name = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "output".into());
                // Registered before the file exists, so that no signal finds it unlisted.
                let mut files = partial();
                let (file, temp) = tempfile::Builder::new()
                    .prefix(&format!(".{name}."))
                    .suffix(".part")
                    .tempfile_in(&dir)
                    .map_err(err)?
                    .keep()
                    .map_err(|e| err(e.error))?;
                files.push(temp.clone());
                drop(files);
                Ok(OutputFile {
                    shown: path.to_path_buf(),
                    file,
                    bytes: 0,
                    replace: Some(Pending { temp, target, mode }),
                })
            }
        }
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// How it is written.
    pub fn placement(&self) -> Placement {
        if self.replace.is_some() {
            Placement::Replace
        } else {
            Placement::InPlace
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// An error about this output.
    pub fn error(&self, source: io::Error) -> OutputError {
        OutputError::new(&self.shown, source)
    }

    /// Completes the output: in place, flushed; else synced and renamed over the target.
    /// Returns the bytes written.
    pub fn commit(mut self) -> Result<u64, OutputError> {
        self.file.flush().map_err(|e| self.error(e))?;
        let Some(p) = self.replace.take() else {
            return Ok(self.bytes);
        };
        // From here on this value no longer owns the temporary file: every path below removes
        // it or renames it.
        let fail = |this: &OutputFile, e: io::Error| {
            let mut files = partial();
            let _ = fs::remove_file(&p.temp);
            files.retain(|f| *f != p.temp);
            this.error(e)
        };
        if let Err(e) = self.file.sync_all() {
            return Err(fail(&self, e));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = fs::set_permissions(&p.temp, fs::Permissions::from_mode(p.mode)) {
                return Err(fail(&self, e));
            }
        }
        let mut files = partial();
        if !files.contains(&p.temp) {
            // Removed by a signal meanwhile: the process is stopping.
            return Err(self.error(io::Error::other("interrupted")));
        }
        if let Err(e) = fs::rename(&p.temp, &p.target) {
            drop(files);
            return Err(fail(&self, e));
        }
        files.retain(|f| *f != p.temp);
        drop(files);
        // The rename itself is durable once the directory is synced (best effort: not every
        // filesystem lets a directory be opened for it).
        let dir = match p.target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(self.bytes)
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Some(p) = self.replace.take() {
            let mut files = partial();
            let _ = fs::remove_file(&p.temp);
            files.retain(|f| *f != p.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_at_the_path_decides_how_it_is_written() {
        let cases = [
            (Found::Nothing, Ok(Placement::Replace), "a new file"),
            (
                Found::File,
                Ok(Placement::Replace),
                "a file is replaced whole",
            ),
            (
                Found::Device,
                Ok(Placement::InPlace),
                "/dev/null, /dev/full",
            ),
            (Found::Fifo, Ok(Placement::InPlace), "a named pipe streams"),
            (
                Found::Directory,
                Err("it is a directory: give a file name"),
                "a directory",
            ),
            (
                Found::Socket,
                Err("it is a socket: give a file, a FIFO or a device"),
                "a socket cannot be opened",
            ),
        ];
        for (found, want, what) in cases {
            assert_eq!(Placement::of(found), want, "{what}");
        }
    }

    fn temp_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".part"))
            .collect()
    }

    #[test]
    fn a_dropped_output_leaves_nothing_and_a_committed_one_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        fs::write(&path, "old").unwrap();
        let mut out = OutputFile::create(&path).unwrap();
        out.write_all(b"half").unwrap();
        assert_eq!(temp_files(dir.path()).len(), 1);
        drop(out);
        assert!(temp_files(dir.path()).is_empty());
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");

        let mut out = OutputFile::create(&path).unwrap();
        assert_eq!(out.placement(), Placement::Replace);
        out.write_all(b"new text").unwrap();
        assert_eq!(out.commit().unwrap(), 8);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new text");
        assert!(temp_files(dir.path()).is_empty());
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_a_new_one_is_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("private.csv");
        fs::write(&old, "x").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o600)).unwrap();
        let new = dir.path().join("new.csv");
        for path in [&old, &new] {
            let mut out = OutputFile::create(path).unwrap();
            out.write_all(b"y").unwrap();
            out.commit().unwrap();
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&old), 0o600);
        assert_eq!(mode(&new), 0o644);
    }

    #[test]
    fn symlink_chains_end_at_the_file_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("sub")).unwrap();
        fs::write(d.join("sub/real.csv"), "x").unwrap();
        std::os::unix::fs::symlink("sub/real.csv", d.join("a")).unwrap();
        std::os::unix::fs::symlink(d.join("a"), d.join("b")).unwrap();
        std::os::unix::fs::symlink("missing.csv", d.join("dangling")).unwrap();
        std::os::unix::fs::symlink("loop", d.join("loop")).unwrap();
        assert_eq!(end_of_links(&d.join("b")).unwrap(), d.join("sub/real.csv"));
        assert_eq!(end_of_links(&d.join("a")).unwrap(), d.join("sub/real.csv"));
        assert_eq!(
            end_of_links(&d.join("dangling")).unwrap(),
            d.join("missing.csv")
        );
        assert_eq!(end_of_links(&d.join("plain")).unwrap(), d.join("plain"));
        assert!(end_of_links(&d.join("loop")).is_err());
    }
}
