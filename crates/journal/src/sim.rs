//! An in-memory disk for tests, behind the journal's [`Fs`] seam, that keeps exactly what POSIX
//! promises and no more, and fails on demand.
//!
//! - File contents become durable only at `sync_data` (or `truncate`), a directory's names only
//!   at `sync_dir`. A *power cut* drops everything since: every file falls back to its last
//!   synced contents, optionally with a torn prefix of what was written since, or zero-filled
//!   pages (a file system that extended the file but never wrote the data), and every directory
//!   to its last synced names. The handles of the old boot fail from then on (the process died
//!   with the machine); [`SimDisk::boot`] gives a file system for the next one.
//! - A power cut can be armed to strike at the n-th mutating operation, anywhere: in the
//!   middle of an append, a rotation, a compression, or recovery itself.
//! - A full disk (writes past a capacity write a prefix and fail with `StorageFull`), failing
//!   fsyncs (`EIO`), flipped bits and removed files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::io::{Fs, LockGuard, WriteFile};

/// What a power cut leaves of the bytes written to a file since its last sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Nothing.
    Clean,
    /// A prefix of random length.
    Torn,
    /// Zeroed pages of random length.
    Zeros,
    /// For each file, one of the above at random.
    Any,
}

#[derive(Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug)]
struct State {
    boot: u64,
    dirs: BTreeSet<PathBuf>,
    visible: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    locks: HashMap<PathBuf, u64>,
    next_lock: u64,
    capacity: Option<u64>,
    fail_sync: bool,
    fail_create: bool,
    /// Operations of the arming thread left before the armed cut, the cut, and that thread.
    crash_after: Option<(u64, Cut, std::thread::ThreadId)>,
    rng: crate::rng::Rng,
    /// Whether the last power cut struck an fsync that had completed.
    struck_after_sync: bool,
}

impl State {
    fn next_random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Bytes held by the files that have a name.
    fn used(&self) -> u64 {
        let named: BTreeSet<u64> = self.visible.values().copied().collect();
        named
            .iter()
            .filter_map(|id| self.inodes.get(id))
            .map(|i| i.data.len() as u64)
            .sum()
    }

    /// Counts a mutating operation; strikes the armed power cut (before the operation) when its
    /// time has come.
    fn mutate(&mut self, boot: u64) -> io::Result<()> {
        match self.due(boot)? {
            Some(cut) => {
                self.power_cut(cut);
                Err(dead())
            }
            None => Ok(()),
        }
    }

    /// Counts a mutating operation; the armed power cut, when its time has come (the caller
    /// strikes it before or after doing the operation).
    fn due(&mut self, boot: u64) -> io::Result<Option<Cut>> {
        self.alive(boot)?;
        if let Some((left, cut, thread)) = self.crash_after
            && thread == std::thread::current().id()
        {
            if left == 0 {
                self.crash_after = None;
                return Ok(Some(cut));
            }
            self.crash_after = Some((left - 1, cut, thread));
        }
        Ok(None)
    }

    fn alive(&self, boot: u64) -> io::Result<()> {
        if boot == self.boot {
            Ok(())
        } else {
            Err(dead())
        }
    }

    fn power_cut(&mut self, cut: Cut) {
        self.boot += 1;
        self.struck_after_sync = false;
        self.locks.clear();
        self.visible = self.durable.clone();
        let live: BTreeSet<u64> = self.visible.values().copied().collect();
        self.inodes.retain(|id, _| live.contains(id));
        let ids: Vec<u64> = live.into_iter().collect();
        for id in ids {
            let mode = match cut {
                Cut::Any => match self.next_random() % 4 {
                    0 => Cut::Clean,
                    1 => Cut::Torn,
                    2 => Cut::Zeros,
                    _ => Cut::Any,
                },
                other => other,
            };
            let r1 = self.next_random();
            let r2 = self.next_random();
            let Some(inode) = self.inodes.get_mut(&id) else {
                continue;
            };
            let synced = inode.durable.len();
            let extends = inode.data.len() > synced && inode.data.starts_with(&inode.durable);
            let mut kept = inode.durable.clone();
            if extends {
                let unsynced = inode.data.len() - synced;
                let prefix = (r1 % (unsynced as u64 + 1)) as usize;
                match mode {
                    Cut::Clean => {}
                    Cut::Torn => kept.extend_from_slice(&inode.data[synced..synced + prefix]),
                    Cut::Zeros => {
                        let pages = (prefix.div_ceil(4096)).max(1);
                        kept.resize(synced + pages * 4096, 0);
                    }
                    // A torn prefix, then zeroed pages.
                    Cut::Any => {
                        kept.extend_from_slice(&inode.data[synced..synced + prefix]);
                        let zeros = (r2 % 8192) as usize;
                        kept.resize(kept.len() + zeros, 0);
                    }
                }
            }
            inode.data = kept.clone();
            inode.durable = kept;
        }
    }

    /// Makes the names in `dir` durable.
    fn durable_dir(&mut self, dir: &Path) {
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let durable: BTreeMap<PathBuf, u64> = self
            .durable
            .iter()
            .filter(|(p, _)| !in_dir(p))
            .chain(self.visible.iter().filter(|(p, _)| in_dir(p)))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        self.durable = durable;
    }

    fn inode_of(&self, path: &Path) -> io::Result<u64> {
        self.visible
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display())))
    }

    fn parent_exists(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if self.dirs.contains(p) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory for {}", path.display()),
            )),
        }
    }
}

fn dead() -> io::Error {
    io::Error::other("simulated power cut: this boot's handles are gone")
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulated disk, across boots.
#[derive(Clone, Debug)]
pub(crate) struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl SimDisk {
    /// An empty disk; `seed` drives the random parts of power cuts.
    pub fn new(seed: u64) -> Self {
        SimDisk {
            state: Arc::new(Mutex::new(State {
                boot: 0,
                dirs: BTreeSet::new(),
                visible: BTreeMap::new(),
                durable: BTreeMap::new(),
                inodes: HashMap::new(),
                next_inode: 1,
                locks: HashMap::new(),
                next_lock: 1,
                capacity: None,
                fail_sync: false,
                fail_create: false,
                crash_after: None,
                rng: crate::rng::Rng::new(seed),
                struck_after_sync: false,
            })),
        }
    }

    /// The file system as this boot of the machine sees it.
    pub fn boot(&self) -> Arc<dyn Fs> {
        let boot = lock(&self.state).boot;
        Arc::new(SimFs {
            state: Arc::clone(&self.state),
            boot,
        })
    }

    /// Cuts the power now.
    pub fn power_cut(&self, cut: Cut) {
        lock(&self.state).power_cut(cut);
    }

    /// Cuts the power when `ops` more mutating operations of the calling thread have run (at
    /// the next one; other threads' operations, such as the compressor's, are not counted, so a
    /// seed replays the same cut).
    pub fn crash_after(&self, ops: u64, cut: Cut) {
        lock(&self.state).crash_after = Some((ops, cut, std::thread::current().id()));
    }

    /// Disarms a power cut that has not struck; `true` when one was still armed.
    pub fn disarm(&self) -> bool {
        lock(&self.state).crash_after.take().is_some()
    }

    /// Whether the last power cut struck an fsync after it had made the data durable (the
    /// process never learned it).
    pub fn struck_after_sync(&self) -> bool {
        lock(&self.state).struck_after_sync
    }

    /// Caps the bytes all files may hold (`None`: unlimited).
    pub fn set_capacity(&self, capacity: Option<u64>) {
        lock(&self.state).capacity = capacity;
    }

    /// Bytes all files hold.
    pub fn used(&self) -> u64 {
        lock(&self.state).used()
    }

    /// Makes every fsync fail with EIO (or succeed again).
    pub fn fail_syncs(&self, fail: bool) {
        lock(&self.state).fail_sync = fail;
    }

    /// Makes creating a file fail with EMFILE, too many open files (or succeed again).
    pub fn fail_creates(&self, fail: bool) {
        lock(&self.state).fail_create = fail;
    }

    /// Flips bits of a file, on disk and in the page cache alike.
    pub fn flip(&self, path: &Path, offset: usize, mask: u8) {
        let mut s = lock(&self.state);
        let Ok(id) = s.inode_of(path) else { return };
        if let Some(inode) = s.inodes.get_mut(&id) {
            for data in [&mut inode.data, &mut inode.durable] {
                if let Some(b) = data.get_mut(offset) {
                    *b ^= mask;
                }
            }
        }
    }

    /// A file's contents (as the running system sees them).
    pub fn read(&self, path: &Path) -> Vec<u8> {
        let s = lock(&self.state);
        s.inode_of(path)
            .ok()
            .and_then(|id| s.inodes.get(&id))
            .map(|i| i.data.clone())
            .unwrap_or_default()
    }

    /// Replaces a file's contents, durably.
    pub fn write(&self, path: &Path, bytes: &[u8]) {
        let mut s = lock(&self.state);
        if let Ok(id) = s.inode_of(path)
            && let Some(inode) = s.inodes.get_mut(&id)
        {
            inode.data = bytes.to_vec();
            inode.durable = bytes.to_vec();
        }
    }

    /// Removes a file, durably (an operator's `rm`, or a lost file).
    pub fn remove(&self, path: &Path) {
        let mut s = lock(&self.state);
        s.visible.remove(path);
        s.durable.remove(path);
    }
}

#[derive(Debug)]
struct SimFs {
    state: Arc<Mutex<State>>,
    boot: u64,
}

#[derive(Debug)]
struct SimWrite {
    state: Arc<Mutex<State>>,
    boot: u64,
    inode: u64,
    pos: usize,
}

struct SimRead {
    state: Arc<Mutex<State>>,
    boot: u64,
    inode: u64,
    pos: usize,
}

#[derive(Debug)]
struct SimLock {
    state: Arc<Mutex<State>>,
    boot: u64,
    path: PathBuf,
    id: u64,
}

impl LockGuard for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        if s.boot == self.boot && s.locks.get(&self.path) == Some(&self.id) {
            s.locks.remove(&self.path);
        }
    }
}

impl WriteFile for SimWrite {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.mutate(self.boot)?;
        let room = s
            .capacity
            .map_or(usize::MAX, |c| c.saturating_sub(s.used()) as usize);
        let n = buf.len().min(room);
        let inode = s
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "inode gone"))?;
        let end = self.pos + n;
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[self.pos..end].copy_from_slice(&buf[..n]);
        self.pos = end;
        if n < buf.len() {
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut s = lock(&self.state);
        let strike = s.due(self.boot)?;
        if s.fail_sync {
            return Err(io::Error::from_raw_os_error(5));
        }
        // A power cut during an fsync: the data may or may not have reached the disk.
        let completes = strike.is_none() || s.next_random().is_multiple_of(2);
        if completes && let Some(inode) = s.inodes.get_mut(&self.inode) {
            inode.durable = inode.data.clone();
        }
        if let Some(cut) = strike {
            s.power_cut(cut);
            s.struck_after_sync = completes;
            return Err(dead());
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.mutate(self.boot)?;
        if let Some(inode) = s.inodes.get_mut(&self.inode) {
            inode.data.resize(len as usize, 0);
        }
        self.pos = len as usize;
        Ok(())
    }
}

impl Read for SimRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = lock(&self.state);
        s.alive(self.boot)?;
        let Some(inode) = s.inodes.get(&self.inode) else {
            return Ok(0);
        };
        let avail = inode.data.get(self.pos..).unwrap_or(&[]);
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.alive(self.boot)?;
        for d in dir.ancestors() {
            s.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        lock(&self.state).dirs.contains(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = lock(&self.state);
        s.alive(self.boot)?;
        if !s.dirs.contains(dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(s.visible
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let s = lock(&self.state);
        s.alive(self.boot)?;
        Ok(s.visible.contains_key(path) || s.dirs.contains(path))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let mut s = lock(&self.state);
        s.mutate(self.boot)?;
        s.parent_exists(path)?;
        if s.fail_create {
            return Err(io::Error::from_raw_os_error(24));
        }
        let id = match s.visible.get(path) {
            Some(&id) => {
                if let Some(inode) = s.inodes.get_mut(&id) {
                    inode.data.clear();
                }
                id
            }
            None => {
                let id = s.next_inode;
                s.next_inode += 1;
                s.inodes.insert(id, Inode::default());
                s.visible.insert(path.to_path_buf(), id);
                id
            }
        };
        Ok(Box::new(SimWrite {
            state: Arc::clone(&self.state),
            boot: self.boot,
            inode: id,
            pos: 0,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let s = lock(&self.state);
        s.alive(self.boot)?;
        let id = s.inode_of(path)?;
        let pos = s.inodes.get(&id).map_or(0, |i| i.data.len());
        Ok(Box::new(SimWrite {
            state: Arc::clone(&self.state),
            boot: self.boot,
            inode: id,
            pos,
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        let s = lock(&self.state);
        s.alive(self.boot)?;
        let id = s.inode_of(path)?;
        Ok(Box::new(SimRead {
            state: Arc::clone(&self.state),
            boot: self.boot,
            inode: id,
            pos: 0,
        }))
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        let s = lock(&self.state);
        s.alive(self.boot)?;
        let id = s.inode_of(path)?;
        Ok(s.inodes.get(&id).map_or(0, |i| i.data.len() as u64))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.mutate(self.boot)?;
        let id = s.inode_of(from)?;
        s.visible.remove(from);
        s.visible.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.mutate(self.boot)?;
        s.inode_of(path)?;
        s.visible.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        let strike = s.due(self.boot)?;
        if s.fail_sync {
            return Err(io::Error::from_raw_os_error(5));
        }
        if let Some(cut) = strike {
            // The directory's changes may or may not have reached the disk.
            if s.next_random().is_multiple_of(2) {
                s.durable_dir(dir);
            }
            s.power_cut(cut);
            return Err(dead());
        }
        s.durable_dir(dir);
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.mutate(self.boot)?;
        if s.fail_sync {
            return Err(io::Error::from_raw_os_error(5));
        }
        let id = s.inode_of(path)?;
        if let Some(inode) = s.inodes.get_mut(&id) {
            inode.data.resize(len as usize, 0);
            inode.durable = inode.data.clone();
        }
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        let mut s = lock(&self.state);
        s.alive(self.boot)?;
        if s.locks.contains_key(path) {
            return Ok(None);
        }
        let id = s.next_lock;
        s.next_lock += 1;
        s.locks.insert(path.to_path_buf(), id);
        Ok(Some(Box::new(SimLock {
            state: Arc::clone(&self.state),
            boot: self.boot,
            path: path.to_path_buf(),
            id,
        })))
    }

    fn is_locked(&self, path: &Path) -> io::Result<bool> {
        let s = lock(&self.state);
        s.alive(self.boot)?;
        Ok(s.locks.contains_key(path))
    }
}
