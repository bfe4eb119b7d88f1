//! The file operations the disk storage needs, behind a trait, so that tests
//! can swap in [`SimVfs`]: a file system that "crashes" at any chosen write or
//! sync and then forgets what was not yet durable.
//!
//! Paths are relative, `/`-separated, inside the storage's root folder.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// A file system the disk storage runs on.
pub trait Vfs: Send + Sync + 'static {
    /// Opens a file, creating it (and its folders) when `create` is set.
    fn open(&self, path: &str, create: bool) -> io::Result<Box<dyn VfsFile>>;
    /// Whether a file exists.
    fn exists(&self, path: &str) -> bool;
    /// Replaces `to` with `from`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file; removing a missing file is not an error.
    fn remove(&self, path: &str) -> io::Result<()>;
    /// Makes the creations, renames and removals inside `dir` durable.
    fn sync_dir(&self, dir: &str) -> io::Result<()>;
    /// Takes an exclusive lock on the storage (other processes are refused).
    fn lock(&self) -> io::Result<()>;
}

/// An open file.
#[allow(clippy::len_without_is_empty)]
pub trait VfsFile: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes the buffers one after another from `offset`, as one write
    /// (by default they are joined and written with [`VfsFile::write_at`]).
    fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        match bufs {
            [] => Ok(()),
            [one] => self.write_at(one, offset),
            _ => self.write_at(&bufs.concat(), offset),
        }
    }
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's contents durable.
    fn sync(&self) -> io::Result<()>;
    /// Asks the OS to start writing `[offset, offset + len)` to disk now,
    /// without waiting, so a later [`VfsFile::sync`] has less left to do.
    /// Only a hint: it guarantees nothing, and by default does nothing.
    fn start_writeback(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
    /// Zeroes `[offset, offset + len)` and gives whole file-system blocks in it back.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// The real file system under a root folder.
#[derive(Debug)]
pub struct StdVfs {
    root: PathBuf,
    lock: Mutex<Option<std::fs::File>>,
}

impl StdVfs {
    /// A file system rooted at `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(StdVfs {
            root,
            lock: Mutex::new(None),
        })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }
}

struct StdFile {
    file: std::fs::File,
}

impl Vfs for StdVfs {
    fn open(&self, path: &str, create: bool) -> io::Result<Box<dyn VfsFile>> {
        let full = self.path(path);
        if create {
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(full)?;
        Ok(Box::new(StdFile { file }))
    }

    fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from), self.path(to))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(path)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::fs::File::open(self.path(dir))?.sync_all()
        }
        #[cfg(not(unix))]
        {
            let _ = dir;
            Ok(())
        }
    }

    fn lock(&self) -> io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path("LOCK"))?;
        f.try_lock()
            .map_err(|_| io::Error::new(io::ErrorKind::WouldBlock, "locked"))?;
        *self.lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
        Ok(())
    }
}

impl VfsFile for StdFile {
    #[cfg(unix)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    #[cfg(unix)]
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, buf, offset)
    }
    #[cfg(windows)]
    fn read_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match self.file.seek_read(buf, offset)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
    #[cfg(windows)]
    fn write_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            let n = self.file.seek_write(buf, offset)?;
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
    #[cfg(target_os = "linux")]
    fn write_all_at(&self, bufs: &[&[u8]], mut offset: u64) -> io::Result<()> {
        // One `pwritev` instead of joining the buffers (no copy, no big
        // temporary allocation); short writes continue where they stopped.
        const MAX_IOV: usize = 1024;
        let mut first = 0;
        let mut skip = 0;
        while first < bufs.len() {
            let slices: Vec<io::IoSlice<'_>> = bufs[first..]
                .iter()
                .take(MAX_IOV)
                .enumerate()
                .map(|(k, b)| io::IoSlice::new(if k == 0 { &b[skip..] } else { b }))
                .collect();
            let mut n = rustix::io::pwritev(&self.file, &slices, offset)?;
            if n == 0 && slices.iter().any(|s| !s.is_empty()) {
                return Err(io::ErrorKind::WriteZero.into());
            }
            offset += n as u64;
            while first < bufs.len() && n >= bufs[first].len() - skip {
                n -= bufs[first].len() - skip;
                first += 1;
                skip = 0;
            }
            skip += n;
        }
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    #[cfg(target_os = "linux")]
    fn start_writeback(&self, offset: u64, len: u64) {
        // Linux starts asynchronous writeback of the range's dirty pages
        // for this advice (and drops only pages already clean), which lets
        // the disk work while we keep writing. A failure only loses the hint.
        if let Some(len) = std::num::NonZeroU64::new(len) {
            let _ =
                rustix::fs::fadvise(&self.file, offset, Some(len), rustix::fs::Advice::DontNeed);
        }
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{fallocate, FallocateFlags};
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if fallocate(&self.file, flags, offset, len).is_ok() {
                return Ok(());
            }
        }
        // No hole punching here: zero the bytes so cleared data is gone at least.
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.write_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

// ---- simulation -----------------------------------------------------------------------

/// What a simulated crash keeps of the writes that were not yet durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// The process died but the operating system kept running: every write stays.
    KeepAll,
    /// Power loss: only what was synced survives.
    LoseUnsynced,
    /// Power loss with the disk having written a random subset of pending writes,
    /// possibly torn, chosen by this seed.
    Random(u64),
}

#[derive(Clone)]
enum FileOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Clone, Default)]
struct SimFile {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
}

#[derive(Default)]
struct SimState {
    files: HashMap<u64, SimFile>,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    next_id: u64,
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    fail_writes: bool,
}

/// An in-memory file system that can crash at the N-th mutating operation
/// (write, truncate, sync, rename, remove) and then be recovered as a machine
/// would find its disk after the crash. For crash-consistency tests.
#[derive(Clone, Default)]
pub struct SimVfs {
    state: Arc<Mutex<SimState>>,
}

impl std::fmt::Debug for SimVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimVfs").finish_non_exhaustive()
    }
}

fn crash_error() -> io::Error {
    io::Error::other("simulated crash")
}

impl SimVfs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    fn st(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Crash when the `n`-th mutating operation from now is attempted
    /// (0 = the next one); that operation and every later one fail.
    pub fn crash_after(&self, n: u64) {
        let mut s = self.st();
        s.crash_at = Some(s.ops + n);
    }

    /// Mutating operations performed so far.
    pub fn op_count(&self) -> u64 {
        self.st().ops
    }

    /// Whether the simulated crash happened.
    pub fn crashed(&self) -> bool {
        self.st().crashed
    }

    /// Makes writes fail with "no space" (until called again with `false`),
    /// without crashing: to test that I/O errors surface and are survived.
    pub fn set_disk_full(&self, full: bool) {
        self.st().fail_writes = full;
    }

    /// Total bytes held by all files (what a `du` would show, holes excluded
    /// approximately: zero runs of 4 KiB pages are not counted).
    pub fn used_bytes(&self) -> u64 {
        let s = self.st();
        s.names
            .values()
            .filter_map(|id| s.files.get(id))
            .map(|f| {
                f.current
                    .chunks(4096)
                    .filter(|c| c.iter().any(|&b| b != 0))
                    .map(|c| c.len() as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    /// The disk as found after the crash, as a fresh file system.
    pub fn recover(&self, mode: CrashMode) -> SimVfs {
        let s = self.st();
        let mut out = SimState {
            next_id: s.next_id,
            ..Default::default()
        };
        let mut rng = mode_seed(mode);
        let names = match mode {
            CrashMode::KeepAll => s.names.clone(),
            _ => s.durable_names.clone(),
        };
        for (name, id) in &names {
            let Some(f) = s.files.get(id) else { continue };
            let content = match mode {
                CrashMode::KeepAll => f.current.clone(),
                CrashMode::LoseUnsynced => f.durable.clone(),
                CrashMode::Random(_) => {
                    let mut c = f.durable.clone();
                    for op in &f.pending {
                        if next(&mut rng).is_multiple_of(2) {
                            continue;
                        }
                        match op {
                            FileOp::Write(off, data) => {
                                // Sometimes only a prefix of the write lands (torn write).
                                let keep = if next(&mut rng).is_multiple_of(4) {
                                    (next(&mut rng) % (data.len() as u64 + 1)) as usize
                                } else {
                                    data.len()
                                };
                                write_into(&mut c, *off, &data[..keep]);
                            }
                            FileOp::SetLen(l) => c.resize(*l as usize, 0),
                        }
                    }
                    c
                }
            };
            out.files.insert(
                *id,
                SimFile {
                    current: content.clone(),
                    durable: content,
                    pending: Vec::new(),
                },
            );
            out.names.insert(name.clone(), *id);
        }
        out.durable_names = out.names.clone();
        SimVfs {
            state: Arc::new(Mutex::new(out)),
        }
    }

    /// Flips one bit of a file (for corruption tests). Returns false if missing.
    pub fn flip_bit(&self, path: &str, byte: usize, bit: u8) -> bool {
        let mut s = self.st();
        let Some(id) = s.names.get(path).copied() else {
            return false;
        };
        match s.files.get_mut(&id) {
            Some(f) if byte < f.current.len() => {
                f.current[byte] ^= 1 << (bit % 8);
                f.durable = f.current.clone();
                true
            }
            _ => false,
        }
    }

    /// Replaces a file's contents (for corruption tests).
    pub fn set_contents(&self, path: &str, data: Vec<u8>) -> bool {
        let mut s = self.st();
        let Some(id) = s.names.get(path).copied() else {
            return false;
        };
        if let Some(f) = s.files.get_mut(&id) {
            f.current = data.clone();
            f.durable = data;
            return true;
        }
        false
    }

    /// A file's current contents, if it exists.
    pub fn contents(&self, path: &str) -> Option<Vec<u8>> {
        let s = self.st();
        let id = s.names.get(path)?;
        s.files.get(id).map(|f| f.current.clone())
    }

    /// The names of all files.
    pub fn files(&self) -> Vec<String> {
        self.st().names.keys().cloned().collect()
    }

    /// A file's length, if it exists.
    pub fn file_len(&self, path: &str) -> Option<u64> {
        let s = self.st();
        let id = s.names.get(path)?;
        s.files.get(id).map(|f| f.current.len() as u64)
    }
}

fn mode_seed(mode: CrashMode) -> u64 {
    match mode {
        CrashMode::Random(s) => s ^ 0x9e37_79b9_7f4a_7c15,
        _ => 1,
    }
}

fn next(state: &mut u64) -> u64 {
    // xorshift64*: deterministic, good enough to pick which writes survive.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn write_into(buf: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    if buf.len() < off + data.len() {
        buf.resize(off + data.len(), 0);
    }
    buf[off..off + data.len()].copy_from_slice(data);
}

impl SimState {
    /// Counts a mutating operation; fails if the crash point is reached.
    fn tick(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(crash_error());
        }
        if let Some(at) = self.crash_at {
            if self.ops >= at {
                self.crashed = true;
                return Err(crash_error());
            }
        }
        self.ops += 1;
        Ok(())
    }
}

struct SimHandle {
    vfs: SimVfs,
    id: u64,
}

fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

impl Vfs for SimVfs {
    fn open(&self, path: &str, create: bool) -> io::Result<Box<dyn VfsFile>> {
        let mut s = self.st();
        if s.crashed {
            return Err(crash_error());
        }
        let id = match s.names.get(path) {
            Some(id) => *id,
            None if create => {
                s.tick()?;
                let id = s.next_id;
                s.next_id += 1;
                s.files.insert(id, SimFile::default());
                s.names.insert(path.to_string(), id);
                id
            }
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        Ok(Box::new(SimHandle {
            vfs: self.clone(),
            id,
        }))
    }

    fn exists(&self, path: &str) -> bool {
        self.st().names.contains_key(path)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut s = self.st();
        s.tick()?;
        let id = s.names.remove(from).ok_or(io::ErrorKind::NotFound)?;
        s.names.insert(to.to_string(), id);
        Ok(())
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let mut s = self.st();
        s.tick()?;
        s.names.remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        let mut s = self.st();
        s.tick()?;
        let in_dir = |p: &str| parent_dir(p) == dir;
        let current: Vec<(String, u64)> = s
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        s.durable_names.retain(|p, _| !in_dir(p));
        s.durable_names.extend(current);
        Ok(())
    }

    fn lock(&self) -> io::Result<()> {
        Ok(())
    }
}

impl SimHandle {
    fn with<T>(&self, f: impl FnOnce(&mut SimFile) -> T) -> io::Result<T> {
        let mut s = self.vfs.st();
        let file = s.files.get_mut(&self.id).ok_or(io::ErrorKind::NotFound)?;
        Ok(f(file))
    }

    fn mutate(&self, op: FileOp) -> io::Result<()> {
        let mut s = self.vfs.st();
        s.tick()?;
        if s.fail_writes {
            if let FileOp::Write(..) = op {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "simulated disk full",
                ));
            }
        }
        let file = s.files.get_mut(&self.id).ok_or(io::ErrorKind::NotFound)?;
        match &op {
            FileOp::Write(off, data) => write_into(&mut file.current, *off, data),
            FileOp::SetLen(l) => file.current.resize(*l as usize, 0),
        }
        file.pending.push(op);
        Ok(())
    }
}

impl VfsFile for SimHandle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|f| {
            let off = offset as usize;
            match off.checked_add(buf.len()) {
                Some(end) if end <= f.current.len() => {
                    buf.copy_from_slice(&f.current[off..end]);
                    Ok(())
                }
                _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            }
        })?
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.mutate(FileOp::Write(offset, buf.to_vec()))
    }
    fn len(&self) -> io::Result<u64> {
        self.with(|f| f.current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mutate(FileOp::SetLen(len))
    }
    fn sync(&self) -> io::Result<()> {
        let mut s = self.vfs.st();
        s.tick()?;
        let file = s.files.get_mut(&self.id).ok_or(io::ErrorKind::NotFound)?;
        file.durable = file.current.clone();
        file.pending.clear();
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let cur = self.len()?;
        let end = (offset + len).min(cur);
        if end <= offset {
            return Ok(());
        }
        self.mutate(FileOp::Write(offset, vec![0; (end - offset) as usize]))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Vectored writes put every buffer where joined bytes would go, on the
    /// real file system (more buffers than one `pwritev` takes, empty ones
    /// among them) and on the simulated one.
    #[test]
    fn write_all_at_equals_one_joined_write() {
        let dir = tempfile::tempdir().unwrap();
        let vfss: Vec<Box<dyn Vfs>> = vec![
            Box::new(StdVfs::new(dir.path()).unwrap()),
            Box::new(SimVfs::new()),
        ];
        for vfs in vfss {
            let bufs: Vec<Vec<u8>> = (0..2500u32)
                .map(|i| vec![(i % 251) as u8; (i % 7) as usize * 3])
                .collect();
            let slices: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
            let joined = bufs.concat();
            let f = vfs.open("f", true).unwrap();
            f.write_at(b"head", 0).unwrap();
            f.write_all_at(&slices, 4).unwrap();
            f.write_all_at(&[], 4).unwrap();
            f.start_writeback(0, joined.len() as u64 + 4);
            assert_eq!(f.len().unwrap(), joined.len() as u64 + 4);
            let mut back = vec![0u8; joined.len()];
            f.read_at(&mut back, 4).unwrap();
            assert_eq!(back, joined);
        }
    }
}
