//! On-disk storage: per-core data, tree and index files, plus one write-ahead
//! log (WAL) for the whole store.
//!
//! How a batch commits: block bytes are appended to the core's data file
//! (never over referenced bytes), then one WAL record holding every other
//! change (nodes, block locations with CRCs, values, truncations) is appended.
//! The record's checksum is the commit point. Changes live in an in-memory
//! overlay until a checkpoint writes them into the fixed-slot tree and index
//! files, writes a new `state` file atomically (write, sync, rename) and empties
//! the WAL. Tree and index files are only modified after the WAL records that
//! describe the modification are durable, so replaying the WAL always repairs
//! them.
//!
//! After a crash, opening replays the WAL from its start and stops at the first
//! record that is torn, from an older generation, or whose block bytes did not
//! reach the disk (CRC mismatch): the store is at a committed prefix, and every
//! batch committed before the last `flush` is in it (flush syncs data files
//! before the WAL). Space is given back (holes punched) only after the change
//! that frees it is durable. Open cost is bounded by the checkpoint thresholds,
//! not by the size of the store. This module must never overwrite bytes that a
//! durable state references.

use super::vfs::{StdVfs, Vfs, VfsFile};
use super::{node_survives, Batch, CoreId, Op, Storage};
use crate::error::StorageError;
use crate::fast_hash::FastMap;
use crate::flat;
use crate::hash::Node;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

const STATE_MAGIC: &[u8; 8] = b"HCSTATE\0";
const FORMAT_VERSION: u32 = 1;
const WAL_MAGIC: u32 = 0x3157_4348; // "HCW1"
const WAL_HEADER: usize = 20;
const NODE_SLOT: u64 = 48;
const LOC_SLOT: u64 = 24;
const PRESENT: u32 = 0x5052_5331; // "PRS1"
const MAX_WAL_RECORD: usize = 256 << 20;

/// A slot of the dense part of an [`Overlay`].
#[derive(Clone, Copy, Debug)]
enum Slot<T> {
    /// Not in the overlay (look in the file).
    Unset,
    /// Erased since the last checkpoint.
    Erased,
    /// Written since the last checkpoint.
    Set(T),
}

/// The changes to one slot file since the last checkpoint: a dense vector for
/// the (usually sequential) indices of appends, and a map for the rest.
/// `get` answers `Some(Some(v))` written, `Some(None)` erased, `None` not
/// changed (read the file).
#[derive(Debug)]
struct Overlay<T: Copy> {
    base: u64,
    dense: Vec<Slot<T>>,
    sparse: FastMap<u64, Option<T>>,
}

/// Gaps up to this many slots are filled in the dense part.
const OVERLAY_GAP: u64 = 64;

impl<T: Copy> Default for Overlay<T> {
    fn default() -> Self {
        Overlay {
            base: 0,
            dense: Vec::new(),
            sparse: FastMap::default(),
        }
    }
}

impl<T: Copy> Overlay<T> {
    fn dense_slot(&self, i: u64) -> Option<usize> {
        let off = i.checked_sub(self.base)?;
        (off < self.dense.len() as u64).then_some(off as usize)
    }

    fn get(&self, i: u64) -> Option<Option<T>> {
        if let Some(k) = self.dense_slot(i) {
            match self.dense[k] {
                Slot::Unset => {}
                Slot::Erased => return Some(None),
                Slot::Set(v) => return Some(Some(v)),
            }
        }
        self.sparse.get(&i).copied()
    }

    fn insert(&mut self, i: u64, v: Option<T>) {
        let slot = match v {
            Some(x) => Slot::Set(x),
            None => Slot::Erased,
        };
        if self.dense.is_empty() {
            self.base = i;
        }
        let end = self.base + self.dense.len() as u64;
        if let Some(k) = self.dense_slot(i) {
            self.dense[k] = slot;
            // A stale entry for the same index may sit in the map.
            self.sparse.remove(&i);
        } else if i >= end && i - end <= OVERLAY_GAP {
            self.dense.resize((i - self.base) as usize, Slot::Unset);
            self.dense.push(slot);
            self.sparse.remove(&i);
        } else {
            self.sparse.insert(i, v);
        }
    }

    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let base = self.base;
        for (k, s) in self.dense.iter_mut().enumerate() {
            if !matches!(s, Slot::Unset) && !keep(base + k as u64) {
                *s = Slot::Unset;
            }
        }
        self.sparse.retain(|i, _| keep(*i));
    }

    fn clear(&mut self) {
        self.dense.clear();
        self.sparse.clear();
        self.base = 0;
    }

    fn is_empty(&self) -> bool {
        self.sparse.is_empty() && self.dense.iter().all(|s| matches!(s, Slot::Unset))
    }

    fn max_key(&self) -> Option<u64> {
        let dense = self
            .dense
            .iter()
            .rposition(|s| !matches!(s, Slot::Unset))
            .map(|k| self.base + k as u64);
        dense.max(self.sparse.keys().max().copied())
    }

    /// Every changed slot, sorted by index.
    fn sorted_entries(&self) -> Vec<(u64, Option<T>)> {
        let mut out: Vec<(u64, Option<T>)> =
            Vec::with_capacity(self.dense.len() + self.sparse.len());
        for (k, s) in self.dense.iter().enumerate() {
            match s {
                Slot::Unset => {}
                Slot::Erased => out.push((self.base + k as u64, None)),
                Slot::Set(v) => out.push((self.base + k as u64, Some(*v))),
            }
        }
        for (i, v) in &self.sparse {
            let shadowed = self
                .dense_slot(*i)
                .is_some_and(|k| !matches!(self.dense[k], Slot::Unset));
            if !shadowed {
                out.push((*i, *v));
            }
        }
        out.sort_unstable_by_key(|e| e.0);
        out
    }
}

/// Unsynced data bytes per data file after which writeback is started.
const WRITEBACK: u64 = 8 << 20;

/// Sequential reads are served from one read-ahead buffer of this size.
const READ_AHEAD: u64 = 128 * 1024;

/// Tuning for [`DiskStorage`].
#[derive(Clone, Debug)]
pub struct DiskOptions {
    /// Checkpoint when the WAL grows beyond this many bytes (bounds open time).
    pub checkpoint_wal_bytes: u64,
    /// Checkpoint when this many block bytes were written since the last one
    /// (bounds how much data a recovery re-checks).
    pub checkpoint_data_bytes: u64,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            checkpoint_wal_bytes: 32 << 20,
            checkpoint_data_bytes: 1 << 30,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Loc {
    offset: u64,
    len: u32,
    crc: u32,
}

#[derive(Serialize, Deserialize)]
enum WalOp {
    PutValue {
        core: CoreId,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    DelValue {
        core: CoreId,
        key: Vec<u8>,
    },
    PutNode {
        core: CoreId,
        node: Node,
    },
    PutBlock {
        core: CoreId,
        index: u64,
        loc: Loc,
    },
    // Freed data ranges are computed when the batch is written (when the
    // state is exact) and logged: replay must never read files to find them,
    // because an interrupted checkpoint may have left the files ahead of it.
    Truncate {
        core: CoreId,
        length: u64,
        freed: Vec<(u64, u64)>,
    },
    Clear {
        core: CoreId,
        start: u64,
        end: u64,
        freed: Vec<(u64, u64)>,
    },
    DeleteCore {
        core: CoreId,
        freed: Vec<(u64, u64)>,
    },
    PutMeta {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    DelMeta {
        key: Vec<u8>,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct StateFile {
    version: u32,
    generation: u64,
    meta: Vec<(Vec<u8>, Vec<u8>)>,
    cores: Vec<(CoreId, CoreState)>,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct CoreState {
    values: Vec<(Vec<u8>, Vec<u8>)>,
    data_end: u64,
}

#[derive(Default)]
struct CoreFiles {
    dir: String,
    data: Option<Box<dyn VfsFile>>,
    tree: Option<Box<dyn VfsFile>>,
    index: Option<Box<dyn VfsFile>>,
    values: BTreeMap<Vec<u8>, Vec<u8>>,
    data_end: u64,
    data_dirty: bool,
    created: bool,
    /// Files known not to exist (only this engine creates them), so lookups
    /// of absent nodes or blocks cost no `stat`.
    absent: HashSet<&'static str>,
    /// Cached lengths of the tree and index files (only this engine changes
    /// them, at checkpoints, which reset these).
    tree_len: Option<u64>,
    index_len: Option<u64>,
    // Overlay of changes since the last checkpoint.
    nodes: Overlay<Node>,
    locs: Overlay<Loc>,
    // Read-ahead over the data file. Referenced bytes are never overwritten,
    // so a buffered range cannot go stale for any block still referenced.
    read_buf: Option<(u64, Vec<u8>)>,
    /// Data file offset up to which writeback was started (see `WRITEBACK`).
    writeback_from: u64,
    last_read_end: u64,
    tree_limit: u64,
    index_limit: u64,
}

fn hex(id: &CoreId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(op: &'static str, path: &str, e: std::io::Error) -> StorageError {
    StorageError::io(op, path, e)
}

impl CoreFiles {
    fn new(id: &CoreId) -> Self {
        CoreFiles {
            dir: format!("cores/{}", hex(id)),
            tree_limit: u64::MAX,
            index_limit: u64::MAX,
            ..Default::default()
        }
    }

    /// Opens (or, with `create`, creates) one of the core's files by name:
    /// `"data"`, `"tree"` or `"index"`; `None` if it does not exist.
    fn file(
        &mut self,
        vfs: &dyn Vfs,
        name: &'static str,
        create: bool,
    ) -> Result<Option<&dyn VfsFile>, StorageError> {
        let slot = match name {
            "data" => &mut self.data,
            "tree" => &mut self.tree,
            _ => &mut self.index,
        };
        if slot.is_none() {
            let path = format!("{}/{name}", self.dir);
            if !create && (self.absent.contains(name) || !vfs.exists(&path)) {
                self.absent.insert(name);
                return Ok(None);
            }
            self.absent.remove(name);
            if create && !vfs.exists(&path) {
                self.created = true;
            }
            *slot = Some(
                vfs.open(&path, create)
                    .map_err(|e| io_err("open", &path, e))?,
            );
        }
        Ok(slot.as_deref())
    }

    fn data_file(
        &mut self,
        vfs: &dyn Vfs,
        create: bool,
    ) -> Result<Option<&dyn VfsFile>, StorageError> {
        self.file(vfs, "data", create)
    }

    fn tree_file(
        &mut self,
        vfs: &dyn Vfs,
        create: bool,
    ) -> Result<Option<&dyn VfsFile>, StorageError> {
        self.file(vfs, "tree", create)
    }

    fn index_file(
        &mut self,
        vfs: &dyn Vfs,
        create: bool,
    ) -> Result<Option<&dyn VfsFile>, StorageError> {
        self.file(vfs, "index", create)
    }

    fn node(&mut self, vfs: &dyn Vfs, index: u64) -> Result<Option<Node>, StorageError> {
        if let Some(n) = self.nodes.get(index) {
            return Ok(n);
        }
        if index >= self.tree_limit || index >= u64::MAX / NODE_SLOT {
            return Ok(None);
        }
        let off = index * NODE_SLOT;
        let mut buf = [0u8; NODE_SLOT as usize];
        if !self.read_slot(vfs, "tree", off, &mut buf)? {
            return Ok(None);
        }
        decode_node(index, &buf).map_err(|what| {
            StorageError::Corrupt(format!("{}/tree: {what} at node {index}", self.dir))
        })
    }

    fn loc(&mut self, vfs: &dyn Vfs, index: u64) -> Result<Option<Loc>, StorageError> {
        if let Some(l) = self.locs.get(index) {
            return Ok(l);
        }
        if index >= self.index_limit || index >= u64::MAX / LOC_SLOT {
            return Ok(None);
        }
        let off = index * LOC_SLOT;
        let mut buf = [0u8; LOC_SLOT as usize];
        if !self.read_slot(vfs, "index", off, &mut buf)? {
            return Ok(None);
        }
        decode_loc(&buf).map_err(|what| {
            StorageError::Corrupt(format!("{}/index: {what} at block {index}", self.dir))
        })
    }

    /// Reads one slot of the tree or index file; false if the file is absent
    /// or shorter than the slot.
    fn read_slot(
        &mut self,
        vfs: &dyn Vfs,
        which: &'static str,
        off: u64,
        buf: &mut [u8],
    ) -> Result<bool, StorageError> {
        let cached = if which == "tree" {
            self.tree_len
        } else {
            self.index_len
        };
        let len = match cached {
            Some(l) => l,
            None => {
                let Some(f) = self.file(vfs, which, false)? else {
                    return Ok(false);
                };
                let l = f
                    .len()
                    .map_err(|e| io_err("stat", &format!("{}/{which}", self.dir), e))?;
                if which == "tree" {
                    self.tree_len = Some(l);
                } else {
                    self.index_len = Some(l);
                }
                l
            }
        };
        if off + buf.len() as u64 > len {
            return Ok(false);
        }
        let Some(f) = self.file(vfs, which, false)? else {
            return Ok(false);
        };
        f.read_at(buf, off)
            .map_err(|e| io_err("read", &format!("{}/{which}", self.dir), e))?;
        Ok(true)
    }

    /// Reads a block's bytes, through the read-ahead buffer when the reads
    /// are sequential.
    fn read_data(&mut self, vfs: &dyn Vfs, loc: &Loc) -> Result<Vec<u8>, StorageError> {
        let (off, len) = (loc.offset, loc.len as u64);
        if let Some((start, buf)) = &self.read_buf {
            if off >= *start && off + len <= *start + buf.len() as u64 {
                let a = (off - start) as usize;
                self.last_read_end = off + len;
                return Ok(buf[a..a + len as usize].to_vec());
            }
        }
        let sequential = off == self.last_read_end;
        self.last_read_end = off + len;
        let want = if sequential && len < READ_AHEAD {
            READ_AHEAD.min(self.data_end.saturating_sub(off)).max(len)
        } else {
            len
        };
        let path = format!("{}/data", self.dir);
        let f = self
            .data_file(vfs, false)?
            .ok_or_else(|| StorageError::Corrupt(format!("{path} is missing")))?;
        let mut data = vec![0u8; want as usize];
        let short = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                StorageError::Corrupt(format!("{path} is shorter than its index says"))
            }
            _ => io_err("read", &path, e),
        };
        if want > len {
            if f.read_at(&mut data, off).is_err() {
                // The file may end before the read-ahead window: read exactly.
                data.truncate(len as usize);
                f.read_at(&mut data, off).map_err(short)?;
                return Ok(data);
            }
            let out = data[..len as usize].to_vec();
            self.read_buf = Some((off, data));
            return Ok(out);
        }
        f.read_at(&mut data, off).map_err(short)?;
        Ok(data)
    }

    /// One past the highest block index that may have a location.
    fn block_upper(&mut self, vfs: &dyn Vfs) -> u64 {
        let file_entries = match self.index_file(vfs, false) {
            Ok(Some(f)) => f.len().unwrap_or(0) / LOC_SLOT,
            _ => 0,
        };
        let overlay = self.locs.max_key().map(|m| m + 1).unwrap_or(0);
        file_entries.min(self.index_limit).max(overlay)
    }
}

fn decode_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}
fn decode_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn node_check(index: u64, size: u64, hash: &[u8; 32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(&size.to_le_bytes());
    h.update(hash);
    h.finalize()
}

fn encode_node(node: &Node) -> [u8; NODE_SLOT as usize] {
    let mut b = [0u8; NODE_SLOT as usize];
    b[..32].copy_from_slice(&node.hash);
    b[32..40].copy_from_slice(&node.size.to_le_bytes());
    b[40..44].copy_from_slice(&node_check(node.index, node.size, &node.hash).to_le_bytes());
    b[44..48].copy_from_slice(&PRESENT.to_le_bytes());
    b
}

fn decode_node(index: u64, b: &[u8]) -> Result<Option<Node>, &'static str> {
    let present = decode_u32(&b[44..48]);
    if present == 0 {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        return Err("damaged empty slot");
    }
    if present != PRESENT {
        return Err("bad slot marker");
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&b[..32]);
    let size = decode_u64(&b[32..40]);
    if decode_u32(&b[40..44]) != node_check(index, size, &hash) {
        return Err("checksum mismatch");
    }
    Ok(Some(Node { index, size, hash }))
}

fn encode_loc(loc: &Loc) -> [u8; LOC_SLOT as usize] {
    let mut b = [0u8; LOC_SLOT as usize];
    b[..8].copy_from_slice(&loc.offset.to_le_bytes());
    b[8..12].copy_from_slice(&loc.len.to_le_bytes());
    b[12..16].copy_from_slice(&loc.crc.to_le_bytes());
    let check = crc32fast::hash(&b[..16]);
    b[16..20].copy_from_slice(&check.to_le_bytes());
    b[20..24].copy_from_slice(&PRESENT.to_le_bytes());
    b
}

fn decode_loc(b: &[u8]) -> Result<Option<Loc>, &'static str> {
    let present = decode_u32(&b[20..24]);
    if present == 0 {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        return Err("damaged empty slot");
    }
    if present != PRESENT {
        return Err("bad slot marker");
    }
    if decode_u32(&b[16..20]) != crc32fast::hash(&b[..16]) {
        return Err("checksum mismatch");
    }
    Ok(Some(Loc {
        offset: decode_u64(&b[..8]),
        len: decode_u32(&b[8..12]),
        crc: decode_u32(&b[12..16]),
    }))
}

/// The nodes below index `2 * length` that straddle `length` (common ancestors
/// of the leaves `length - 1` and `length`); all others either survive
/// truncation or lie at index `2 * length` or above.
fn straddling(length: u64) -> Vec<u64> {
    let mut out = Vec::new();
    if length == 0 {
        return out;
    }
    let mut i = (length - 1).saturating_mul(2);
    for _ in 0..64 {
        let (a, b) = flat::span(i);
        if a < length && b > length && i < length * 2 {
            out.push(i);
        }
        if flat::depth(i) >= 62 {
            break;
        }
        i = flat::parent(i);
    }
    out
}

/// What a batch has changed so far, while its WAL record is being built.
#[derive(Default)]
struct BatchView {
    locs: FastMap<(CoreId, u64), Option<Loc>>,
    upper: FastMap<CoreId, u64>,
    limit: FastMap<CoreId, u64>,
}

struct Engine {
    vfs: Arc<dyn Vfs>,
    opts: DiskOptions,
    wal: Box<dyn VfsFile>,
    wal_len: u64,
    wal_dirty: bool,
    generation: u64,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    cores: FastMap<CoreId, CoreFiles>,
    punches: Vec<(CoreId, u64, u64)>,
    data_since_checkpoint: u64,
}

/// Storage on the local file system (or any [`Vfs`]).
pub struct DiskStorage {
    engine: Mutex<Engine>,
}

impl std::fmt::Debug for DiskStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage").finish_non_exhaustive()
    }
}

impl DiskStorage {
    /// Opens (or creates) a storage in the folder `path`, taking an exclusive
    /// lock on it; recovers from a crash if the last session did not close.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with_options(path, DiskOptions::default())
    }

    /// [`DiskStorage::open`] with options.
    pub fn open_with_options(
        path: impl AsRef<Path>,
        opts: DiskOptions,
    ) -> Result<Self, StorageError> {
        let p = path.as_ref().display().to_string();
        let vfs = StdVfs::new(path.as_ref()).map_err(|e| io_err("create folder", &p, e))?;
        vfs.lock().map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => StorageError::Locked(p.clone()),
            _ => io_err("lock", &p, e),
        })?;
        Self::open_vfs(Arc::new(vfs), opts)
    }

    /// Opens a storage on any file system (tests use [`super::vfs::SimVfs`]).
    pub fn open_vfs(vfs: Arc<dyn Vfs>, opts: DiskOptions) -> Result<Self, StorageError> {
        let mut state = StateFile::default();
        if vfs.exists("state") {
            let f = vfs
                .open("state", false)
                .map_err(|e| io_err("open", "state", e))?;
            let len = f.len().map_err(|e| io_err("stat", "state", e))?;
            if !(16..=(1 << 30)).contains(&len) {
                return Err(StorageError::Corrupt(
                    "state file has an impossible size".into(),
                ));
            }
            let mut buf = vec![0u8; len as usize];
            f.read_at(&mut buf, 0)
                .map_err(|e| io_err("read", "state", e))?;
            state = decode_state(&buf)?;
        }
        let new_wal = !vfs.exists("wal");
        let wal = vfs
            .open("wal", true)
            .map_err(|e| io_err("open", "wal", e))?;
        if new_wal {
            // The WAL's name must be durable before any flush relies on it.
            vfs.sync_dir("")
                .map_err(|e| io_err("sync", "storage folder", e))?;
        }
        let mut engine = Engine {
            vfs: vfs.clone(),
            opts,
            wal,
            wal_len: 0,
            wal_dirty: false,
            generation: state.generation,
            meta: state.meta.into_iter().collect(),
            cores: FastMap::default(),
            punches: Vec::new(),
            data_since_checkpoint: 0,
        };
        for (id, cs) in state.cores {
            let mut cf = CoreFiles::new(&id);
            cf.values = cs.values.into_iter().collect();
            cf.data_end = cs.data_end;
            engine.cores.insert(id, cf);
        }
        engine.recover()?;
        Ok(DiskStorage {
            engine: Mutex::new(engine),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Engine> {
        // Engine methods leave the engine consistent at every `?`, so a
        // poisoned lock still guards sound data.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes every change into the tree and index files and empties the WAL.
    /// Runs automatically; call it before a planned shutdown to make the next
    /// open instant.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        self.lock().checkpoint()
    }

    /// Checkpoints and releases the storage.
    pub fn close(self) -> Result<(), StorageError> {
        self.checkpoint()
    }
}

fn decode_state(buf: &[u8]) -> Result<StateFile, StorageError> {
    if buf.len() < 16 || &buf[..8] != STATE_MAGIC {
        return Err(StorageError::Corrupt(
            "state file has no valid header".into(),
        ));
    }
    let version = decode_u32(&buf[8..12]);
    if version != FORMAT_VERSION {
        return Err(StorageError::UnsupportedVersion(version));
    }
    let crc = decode_u32(&buf[12..16]);
    if crc32fast::hash(&buf[16..]) != crc {
        return Err(StorageError::Corrupt("state file checksum mismatch".into()));
    }
    postcard::from_bytes(&buf[16..])
        .map_err(|_| StorageError::Corrupt("state file does not decode".into()))
}

fn encode_state(state: &StateFile) -> Result<Vec<u8>, StorageError> {
    let body = postcard::to_stdvec(state)
        .map_err(|_| StorageError::Corrupt("state does not encode".into()))?;
    let mut out = Vec::with_capacity(body.len() + 16);
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

impl Engine {
    fn core(&mut self, id: &CoreId) -> &mut CoreFiles {
        self.cores.entry(*id).or_insert_with(|| CoreFiles::new(id))
    }

    fn recover(&mut self) -> Result<(), StorageError> {
        let len = self.wal.len().map_err(|e| io_err("stat", "wal", e))?;
        if len == 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; len.min(u32::MAX as u64) as usize];
        self.wal
            .read_at(&mut buf, 0)
            .map_err(|e| io_err("read", "wal", e))?;
        // 1. The checksum-valid prefix of this generation's records.
        let mut records: Vec<(usize, Vec<WalOp>)> = Vec::new();
        let mut pos = 0usize;
        while pos + WAL_HEADER <= buf.len() {
            let h = &buf[pos..pos + WAL_HEADER];
            if decode_u32(&h[..4]) != WAL_MAGIC {
                break;
            }
            let plen = decode_u32(&h[4..8]) as usize;
            let crc = decode_u32(&h[8..12]);
            let generation = decode_u64(&h[12..20]);
            let end = pos + WAL_HEADER + plen;
            if plen > MAX_WAL_RECORD || end > buf.len() || generation != self.generation {
                break;
            }
            let mut c = crc32fast::Hasher::new();
            c.update(&h[12..20]);
            c.update(&buf[pos + WAL_HEADER..end]);
            if c.finalize() != crc {
                break;
            }
            let Ok(ops) = postcard::from_bytes::<Vec<WalOp>>(&buf[pos + WAL_HEADER..end]) else {
                break;
            };
            records.push((end, ops));
            pos = end;
        }
        // 2. The longest prefix in which no block whose bytes did not reach the
        // disk is still referenced. A block freed by a later record of the
        // prefix needs no bytes (and may legitimately have been punched).
        let mut pending: HashSet<(CoreId, u64)> = HashSet::new();
        let mut good = 0usize;
        for (k, (_, ops)) in records.iter().enumerate() {
            for op in ops {
                match op {
                    WalOp::PutBlock { core, index, loc } => {
                        pending.remove(&(*core, *index));
                        if !self.block_on_disk(core, loc) {
                            pending.insert((*core, *index));
                        }
                    }
                    WalOp::Truncate { core, length, .. } => {
                        pending.retain(|(c, i)| c != core || i < length);
                    }
                    WalOp::Clear {
                        core, start, end, ..
                    } => {
                        pending.retain(|(c, i)| c != core || i < start || i >= end);
                    }
                    WalOp::DeleteCore { core, .. } => pending.retain(|(c, _)| c != core),
                    _ => {}
                }
            }
            if pending.is_empty() {
                good = k + 1;
            }
        }
        records.truncate(good);
        self.wal_len = records.last().map(|(end, _)| *end as u64).unwrap_or(0);
        for (_, ops) in records {
            for op in ops {
                self.apply(op);
            }
        }
        self.wal_dirty = true;
        // Make the recovered state durable, drop the torn tail, reclaim space.
        self.checkpoint()
    }

    /// Whether a block's bytes are on disk with the CRC its record names.
    fn block_on_disk(&mut self, core: &CoreId, loc: &Loc) -> bool {
        if loc.len == 0 {
            return true;
        }
        let vfs = self.vfs.clone();
        let cf = self.core(core);
        let Ok(Some(f)) = cf.data_file(vfs.as_ref(), false) else {
            return false;
        };
        let mut data = vec![0u8; loc.len as usize];
        f.read_at(&mut data, loc.offset).is_ok() && crc32fast::hash(&data) == loc.crc
    }

    /// Applies one committed change to the in-memory overlay. Reads no file
    /// and never fails, so replay gives exactly the state the writer had.
    fn apply(&mut self, op: WalOp) {
        match op {
            WalOp::PutValue { core, key, value } => {
                self.core(&core).values.insert(key, value);
            }
            WalOp::DelValue { core, key } => {
                self.core(&core).values.remove(&key);
            }
            WalOp::PutNode { core, node } => {
                self.core(&core).nodes.insert(node.index, Some(node));
            }
            WalOp::PutBlock { core, index, loc } => {
                let cf = self.core(&core);
                cf.locs.insert(index, Some(loc));
                cf.data_end = cf.data_end.max(loc.offset + loc.len as u64);
            }
            WalOp::Truncate {
                core,
                length,
                freed,
            } => {
                let cf = self.core(&core);
                cf.locs.retain(|i| i < length);
                cf.index_limit = cf.index_limit.min(length);
                cf.nodes.retain(|i| node_survives(i, length));
                cf.tree_limit = cf.tree_limit.min(length.saturating_mul(2));
                for i in straddling(length) {
                    cf.nodes.insert(i, None);
                }
                self.punches
                    .extend(freed.into_iter().map(|(o, l)| (core, o, l)));
            }
            WalOp::Clear {
                core,
                start,
                end,
                freed,
            } => {
                let cf = self.core(&core);
                for i in start..end {
                    cf.locs.insert(i, None);
                }
                self.punches
                    .extend(freed.into_iter().map(|(o, l)| (core, o, l)));
            }
            WalOp::DeleteCore { core, freed } => {
                let cf = self.core(&core);
                cf.values.clear();
                cf.nodes.clear();
                cf.locs.clear();
                cf.tree_limit = 0;
                cf.index_limit = 0;
                self.punches
                    .extend(freed.into_iter().map(|(o, l)| (core, o, l)));
            }
            WalOp::PutMeta { key, value } => {
                self.meta.insert(key, value);
            }
            WalOp::DelMeta { key } => {
                self.meta.remove(&key);
            }
        }
    }

    /// One past the highest block that may be held, as of this batch so far.
    fn view_upper(&mut self, view: &BatchView, core: &CoreId) -> u64 {
        let vfs = self.vfs.clone();
        let stored = self.core(core).block_upper(vfs.as_ref());
        let stored = view.limit.get(core).map_or(stored, |l| stored.min(*l));
        stored.max(view.upper.get(core).copied().unwrap_or(0))
    }

    /// The data ranges freed by dropping blocks `[start, end)`, as of this
    /// batch so far; marks them dropped in the batch's view.
    fn view_free(
        &mut self,
        view: &mut BatchView,
        core: &CoreId,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, u64)>, StorageError> {
        let vfs = self.vfs.clone();
        let limit = view.limit.get(core).copied().unwrap_or(u64::MAX);
        let mut locs = Vec::new();
        for i in start..end {
            let loc = match view.locs.get(&(*core, i)) {
                Some(l) => *l,
                None if i >= limit => None,
                None => self.core(core).loc(vfs.as_ref(), i)?,
            };
            if let Some(l) = loc {
                locs.push((l.offset, l.len as u64));
            }
            view.locs.insert((*core, i), None);
        }
        locs.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (o, l) in locs {
            match out.last_mut() {
                Some((po, pl)) if *po + *pl >= o => *pl = (*pl).max(o + l - *po),
                _ if l > 0 => out.push((o, l)),
                _ => {}
            }
        }
        Ok(out)
    }

    fn write(&mut self, batch: Batch) -> Result<(), StorageError> {
        let vfs = self.vfs.clone();
        let ops = batch.into_ops();
        let mut wal_ops = Vec::with_capacity(ops.len());
        // Per core: where its new block bytes start, how many, and the blocks.
        let mut appends: Vec<(CoreId, u64, u64, Vec<Vec<u8>>)> = Vec::new();
        let mut data_bytes = 0u64;
        let mut view = BatchView::default();
        for op in ops {
            wal_ops.push(match op {
                Op::PutBlock { core, index, data } => {
                    let pos = match appends.iter().position(|(c, _, _, _)| *c == core) {
                        Some(p) => p,
                        None => {
                            let end = self.core(&core).data_end;
                            appends.push((core, end, 0, Vec::new()));
                            appends.len() - 1
                        }
                    };
                    let (_, start, filled, bufs) = &mut appends[pos];
                    let loc = Loc {
                        offset: *start + *filled,
                        len: u32::try_from(data.len())
                            .map_err(|_| StorageError::Corrupt("block larger than 4 GiB".into()))?,
                        crc: crc32fast::hash(&data),
                    };
                    data_bytes += data.len() as u64;
                    *filled += data.len() as u64;
                    bufs.push(data);
                    view.locs.insert((core, index), Some(loc));
                    view.upper
                        .entry(core)
                        .and_modify(|u| *u = (*u).max(index + 1))
                        .or_insert(index + 1);
                    WalOp::PutBlock { core, index, loc }
                }
                Op::PutValue { core, key, value } => WalOp::PutValue { core, key, value },
                Op::DelValue { core, key } => WalOp::DelValue { core, key },
                Op::PutNode { core, node } => WalOp::PutNode { core, node },
                Op::Truncate { core, length } => {
                    let upper = self.view_upper(&view, &core);
                    let freed = self.view_free(&mut view, &core, length, upper)?;
                    view.limit.insert(core, length);
                    WalOp::Truncate {
                        core,
                        length,
                        freed,
                    }
                }
                Op::Clear { core, start, end } => {
                    let end = end.min(self.view_upper(&view, &core));
                    let start = start.min(end);
                    let freed = self.view_free(&mut view, &core, start, end)?;
                    WalOp::Clear {
                        core,
                        start,
                        end,
                        freed,
                    }
                }
                Op::DeleteCore { core } => {
                    let mut end = self.core(&core).data_end;
                    if let Some((_, s, filled, _)) = appends.iter().find(|(c, _, _, _)| *c == core)
                    {
                        end = end.max(s + filled);
                    }
                    view.limit.insert(core, 0);
                    WalOp::DeleteCore {
                        core,
                        freed: if end > 0 { vec![(0, end)] } else { vec![] },
                    }
                }
                Op::PutMeta { key, value } => WalOp::PutMeta { key, value },
                Op::DelMeta { key } => WalOp::DelMeta { key },
            });
        }
        if wal_ops.is_empty() {
            return Ok(());
        }
        // 1. Block bytes go past every referenced byte of their data file.
        for (core, start, filled, bufs) in &appends {
            if *filled == 0 {
                continue;
            }
            let cf = self.core(core);
            // Large writes: let the disk start on them now, so the next
            // flush does not wait for all of them at once.
            let end = start + filled;
            let from = cf.writeback_from.min(*start);
            let kick = end - from >= WRITEBACK;
            cf.writeback_from = if kick { end } else { from };
            cf.data_dirty = true;
            let f = cf
                .data_file(vfs.as_ref(), true)?
                .ok_or_else(|| StorageError::Corrupt("data file vanished".into()))?;
            let slices: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
            if let Err(e) = f.write_all_at(&slices, *start) {
                return Err(io_err("write", &format!("{}/data", cf.dir), e));
            }
            if kick {
                f.start_writeback(from, end - from);
            }
        }
        // 2. The WAL record is the commit point.
        // The payload is encoded in place after a header filled in below.
        let mut rec = Vec::with_capacity(WAL_HEADER + 64 * wal_ops.len() + 64);
        rec.resize(WAL_HEADER, 0);
        let mut rec = postcard::to_extend(&wal_ops, rec)
            .map_err(|_| StorageError::Corrupt("batch does not encode".into()))?;
        let payload_len = rec.len() - WAL_HEADER;
        if payload_len > MAX_WAL_RECORD {
            return Err(StorageError::Corrupt(
                "batch too large for one record".into(),
            ));
        }
        let mut c = crc32fast::Hasher::new();
        c.update(&self.generation.to_le_bytes());
        c.update(&rec[WAL_HEADER..]);
        rec[0..4].copy_from_slice(&WAL_MAGIC.to_le_bytes());
        rec[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
        rec[8..12].copy_from_slice(&c.finalize().to_le_bytes());
        rec[12..20].copy_from_slice(&self.generation.to_le_bytes());
        self.wal
            .write_at(&rec, self.wal_len)
            .map_err(|e| io_err("write", "wal", e))?;
        self.wal_len += rec.len() as u64;
        self.wal_dirty = true;
        self.data_since_checkpoint += data_bytes;
        // 3. Visible.
        for op in wal_ops {
            self.apply(op);
        }
        if self.wal_len >= self.opts.checkpoint_wal_bytes
            || self.data_since_checkpoint >= self.opts.checkpoint_data_bytes
        {
            // The batch is committed; a failed checkpoint is retried later and
            // surfaces from the next flush.
            let _ = self.checkpoint();
        }
        Ok(())
    }

    fn sync_data(&mut self) -> Result<(), StorageError> {
        let vfs = self.vfs.clone();
        let mut new_dirs = false;
        for cf in self.cores.values_mut() {
            if cf.data_dirty {
                if let Some(f) = cf.data.as_deref() {
                    f.sync()
                        .map_err(|e| io_err("sync", &format!("{}/data", cf.dir), e))?;
                }
                cf.data_dirty = false;
            }
            if cf.created {
                vfs.sync_dir(&cf.dir)
                    .map_err(|e| io_err("sync", &cf.dir, e))?;
                new_dirs = true;
            }
        }
        if new_dirs {
            vfs.sync_dir("cores")
                .map_err(|e| io_err("sync", "cores", e))?;
            for cf in self.cores.values_mut() {
                cf.created = false;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        self.sync_data()?;
        if self.wal_dirty {
            self.wal.sync().map_err(|e| io_err("sync", "wal", e))?;
            self.wal_dirty = false;
        }
        self.punch();
        Ok(())
    }

    /// Gives freed ranges back to the file system. Runs only after the changes
    /// that freed them are durable.
    fn punch(&mut self) {
        let vfs = self.vfs.clone();
        let mut punches = std::mem::take(&mut self.punches);
        punches.sort_unstable();
        let mut merged: Vec<(CoreId, u64, u64)> = Vec::new();
        for (c, off, len) in punches {
            match merged.last_mut() {
                Some((mc, moff, mlen)) if *mc == c && *moff + *mlen >= off => {
                    *mlen = (*mlen).max(off + len - *moff);
                }
                _ => merged.push((c, off, len)),
            }
        }
        for (c, off, len) in merged {
            let cf = self.core(&c);
            if let Ok(Some(f)) = cf.data_file(vfs.as_ref(), false) {
                if f.punch_hole(off, len).is_err() {
                    self.punches.push((c, off, len));
                }
            }
        }
    }

    fn checkpoint(&mut self) -> Result<(), StorageError> {
        let vfs = self.vfs.clone();
        let clean = self.wal_len == 0
            && !self.wal_dirty
            && self.punches.is_empty()
            && self.cores.values().all(|c| {
                c.nodes.is_empty()
                    && c.locs.is_empty()
                    && c.tree_limit == u64::MAX
                    && c.index_limit == u64::MAX
                    && !c.data_dirty
                    && !c.created
            });
        if clean && vfs.exists("state") {
            return Ok(());
        }
        // The WAL must be durable before the files it describes change.
        self.sync_data()?;
        if self.wal_dirty {
            self.wal.sync().map_err(|e| io_err("sync", "wal", e))?;
            self.wal_dirty = false;
        }
        for cf in self.cores.values_mut() {
            write_overlay(cf, vfs.as_ref())?;
        }
        self.sync_data()?;
        let state = StateFile {
            version: FORMAT_VERSION,
            generation: self.generation + 1,
            meta: self
                .meta
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cores: {
                let mut v: Vec<(CoreId, CoreState)> = self
                    .cores
                    .iter()
                    .filter(|(_, cf)| !cf.values.is_empty() || cf.data_end > 0)
                    .map(|(id, cf)| {
                        (
                            *id,
                            CoreState {
                                values: cf
                                    .values
                                    .iter()
                                    .map(|(k, v)| (k.clone(), v.clone()))
                                    .collect(),
                                data_end: cf.data_end,
                            },
                        )
                    })
                    .collect();
                v.sort_by_key(|a| a.0);
                v
            },
        };
        let bytes = encode_state(&state)?;
        {
            let f = vfs
                .open("state.tmp", true)
                .map_err(|e| io_err("open", "state.tmp", e))?;
            f.set_len(0)
                .map_err(|e| io_err("truncate", "state.tmp", e))?;
            f.write_at(&bytes, 0)
                .map_err(|e| io_err("write", "state.tmp", e))?;
            f.sync().map_err(|e| io_err("sync", "state.tmp", e))?;
        }
        vfs.rename("state.tmp", "state")
            .map_err(|e| io_err("rename", "state", e))?;
        vfs.sync_dir("")
            .map_err(|e| io_err("sync", "storage folder", e))?;
        // From here on the new state is the durable truth.
        self.generation += 1;
        for cf in self.cores.values_mut() {
            cf.nodes.clear();
            cf.locs.clear();
            cf.tree_limit = u64::MAX;
            cf.index_limit = u64::MAX;
        }
        self.data_since_checkpoint = 0;
        self.wal_len = 0;
        self.wal
            .set_len(0)
            .map_err(|e| io_err("truncate", "wal", e))?;
        self.wal.sync().map_err(|e| io_err("sync", "wal", e))?;
        self.punch();
        Ok(())
    }
}

/// Writes a core's overlay into its tree and index files and syncs them.
fn write_overlay(cf: &mut CoreFiles, vfs: &dyn Vfs) -> Result<(), StorageError> {
    cf.tree_len = None;
    cf.index_len = None;
    if cf.tree_limit != u64::MAX || !cf.nodes.is_empty() {
        let path = format!("{}/tree", cf.dir);
        let limit = cf.tree_limit;
        let entries = cf.nodes.sorted_entries();
        let f = cf
            .tree_file(vfs, true)?
            .ok_or_else(|| StorageError::Corrupt("tree file vanished".into()))?;
        write_slots(f, &path, limit, NODE_SLOT, &entries, |n| match n {
            Some(n) => encode_node(n).to_vec(),
            None => vec![0; NODE_SLOT as usize],
        })?;
    }
    if cf.index_limit != u64::MAX || !cf.locs.is_empty() {
        let path = format!("{}/index", cf.dir);
        let limit = cf.index_limit;
        let entries = cf.locs.sorted_entries();
        let f = cf
            .index_file(vfs, true)?
            .ok_or_else(|| StorageError::Corrupt("index file vanished".into()))?;
        write_slots(f, &path, limit, LOC_SLOT, &entries, |l| match l {
            Some(l) => encode_loc(l).to_vec(),
            None => vec![0; LOC_SLOT as usize],
        })?;
    }
    Ok(())
}

fn write_slots<T>(
    f: &dyn VfsFile,
    path: &str,
    limit: u64,
    slot: u64,
    entries: &[(u64, T)],
    encode: impl Fn(&T) -> Vec<u8>,
) -> Result<(), StorageError> {
    let mut len = f.len().map_err(|e| io_err("stat", path, e))?;
    if limit != u64::MAX && limit.saturating_mul(slot) < len {
        len = limit * slot;
        f.set_len(len).map_err(|e| io_err("truncate", path, e))?;
    }
    // Coalesce runs of adjacent slots into one write each.
    let mut i = 0;
    while i < entries.len() {
        let start = entries[i].0;
        let mut buf = encode(&entries[i].1);
        let mut j = i + 1;
        while j < entries.len() && entries[j].0 == entries[j - 1].0 + 1 && buf.len() < (8 << 20) {
            buf.extend_from_slice(&encode(&entries[j].1));
            j += 1;
        }
        let off = start.saturating_mul(slot);
        // Erasing a slot past the end of the file needs no write.
        let all_zero_past_end = off >= len && buf.iter().all(|&b| b == 0);
        if !all_zero_past_end {
            f.write_at(&buf, off)
                .map_err(|e| io_err("write", path, e))?;
        }
        i = j;
    }
    f.sync().map_err(|e| io_err("sync", path, e))
}

#[async_trait]
impl Storage for DiskStorage {
    async fn write(&self, batch: Batch) -> Result<(), StorageError> {
        self.lock().write(batch)
    }

    async fn flush(&self) -> Result<(), StorageError> {
        self.lock().flush()
    }

    async fn value(&self, core: &CoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .lock()
            .cores
            .get(core)
            .and_then(|c| c.values.get(key).cloned()))
    }

    async fn values(
        &self,
        core: &CoreId,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let e = self.lock();
        Ok(e.cores
            .get(core)
            .map(|c| super::prefix_values(&c.values, prefix))
            .unwrap_or_default())
    }

    async fn node(&self, core: &CoreId, index: u64) -> Result<Option<Node>, StorageError> {
        let mut e = self.lock();
        let vfs = e.vfs.clone();
        e.core(core).node(vfs.as_ref(), index)
    }

    async fn block(&self, core: &CoreId, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let mut e = self.lock();
        let vfs = e.vfs.clone();
        let cf = e.core(core);
        let Some(loc) = cf.loc(vfs.as_ref(), index)? else {
            return Ok(None);
        };
        if loc.len == 0 {
            return Ok(Some(Vec::new()));
        }
        let data = cf.read_data(vfs.as_ref(), &loc)?;
        if crc32fast::hash(&data) != loc.crc {
            return Err(StorageError::Corrupt(format!(
                "{}/data: checksum mismatch for block {index}",
                cf.dir
            )));
        }
        Ok(Some(data))
    }

    async fn has_block(&self, core: &CoreId, index: u64) -> Result<bool, StorageError> {
        let mut e = self.lock();
        let vfs = e.vfs.clone();
        Ok(e.core(core).loc(vfs.as_ref(), index)?.is_some())
    }

    async fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().meta.get(key).cloned())
    }

    async fn cores(&self) -> Result<Vec<CoreId>, StorageError> {
        let e = self.lock();
        let mut v: Vec<CoreId> = e
            .cores
            .iter()
            .filter(|(_, c)| !c.values.is_empty())
            .map(|(k, _)| *k)
            .collect();
        v.sort_unstable();
        Ok(v)
    }
}

impl Drop for DiskStorage {
    fn drop(&mut self) {
        // Best effort: a clean shutdown leaves an empty WAL so the next open is instant.
        let _ = self.lock().checkpoint();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn overlay_matches_a_map(ops in proptest::collection::vec((0u8..4, 0u64..300, proptest::prelude::any::<bool>()), 0..200)) {
            let mut o: Overlay<u64> = Overlay::default();
            let mut m: std::collections::BTreeMap<u64, Option<u64>> = Default::default();
            for (kind, i, set) in ops {
                match kind {
                    0 | 1 => {
                        let v = if set { Some(i * 3) } else { None };
                        o.insert(i, v);
                        m.insert(i, v);
                    }
                    2 => {
                        o.retain(|k| k < i);
                        m.retain(|k, _| *k < i);
                    }
                    _ => {
                        if i % 7 == 0 {
                            o.clear();
                            m.clear();
                        }
                    }
                }
                for k in 0..310 {
                    proptest::prop_assert_eq!(o.get(k), m.get(&k).copied());
                }
                let entries: Vec<(u64, Option<u64>)> = m.iter().map(|(k, v)| (*k, *v)).collect();
                proptest::prop_assert_eq!(o.sorted_entries(), entries);
                proptest::prop_assert_eq!(o.max_key(), m.keys().max().copied());
                proptest::prop_assert_eq!(o.is_empty(), m.is_empty());
            }
        }
    }

    #[test]
    fn straddlers_are_exactly_the_crossing_nodes_below_2l() {
        for length in 0..70u64 {
            let s = straddling(length);
            for i in 0..(2 * length) {
                let (a, b) = flat::span(i);
                let crosses = a < length && b > length;
                assert_eq!(s.contains(&i), crosses, "length {length} node {i}");
            }
        }
    }

    #[test]
    fn slots_round_trip_and_detect_damage() {
        let n = Node {
            index: 9,
            size: 77,
            hash: [3; 32],
        };
        let b = encode_node(&n);
        assert_eq!(decode_node(9, &b), Ok(Some(n)));
        assert!(decode_node(11, &b).is_err());
        for bit in 0..(NODE_SLOT * 8) {
            let mut d = b;
            d[(bit / 8) as usize] ^= 1 << (bit % 8);
            assert!(decode_node(9, &d).is_err(), "bit {bit}");
        }
        let l = Loc {
            offset: 5,
            len: 9,
            crc: 1,
        };
        let e = encode_loc(&l);
        assert_eq!(decode_loc(&e), Ok(Some(l)));
        for bit in 0..(LOC_SLOT * 8) {
            let mut d = e;
            d[(bit / 8) as usize] ^= 1 << (bit % 8);
            assert!(decode_loc(&d).is_err(), "bit {bit}");
        }
        assert_eq!(decode_loc(&[0; 24]), Ok(None));
    }
}
