//! The drive: a metadata hyperbee (path -> entry) and a blobs hypercore
//! (file contents in fixed-size chunks).
//!
//! Every write goes through a metadata batch, which holds the bee's write
//! lock from its creation to its flush: that lock also makes this handle the
//! only appender of the blobs core, so a file's chunks are contiguous.
//! Content is appended before the entry that references it, in the same
//! storage, so a crash leaves either the old entry or the new one (at worst
//! some unreferenced chunks). Reads never trust an entry: offsets, chunk
//! sizes and the whole-file BLAKE3 hash are checked before bytes go out.

use crate::entry::{
    blocks_for, decode_entry, decode_header, encode_entry, encode_header, Blob, Entry, EntryKind,
    Header, HEADER_KEY,
};
use crate::error::{CorruptError, Error, Result};
use crate::path::{display, folder_range, key_of, path_of_key, resolve_link, segments, SEP};
use futures::io::{AsyncRead, AsyncReadExt};
use futures::stream::{BoxStream, Stream, StreamExt};
use hyperbee_rs::{Bee, Range, RangeIter, Snapshot};
use hypercore_rs::{Clock, Core, Corestore, Download, GetOptions, Hash, ThreadClock};
use std::sync::Arc;
use std::time::Duration;

/// Size of a content chunk (one blobs core block), in bytes.
pub const CHUNK_SIZE: u64 = 64 * 1024;
/// Chunks appended per blobs core batch while writing (the write buffer is
/// `CHUNK_SIZE * WRITE_CHUNKS` = 1 MiB).
pub const WRITE_CHUNKS: usize = 16;
/// The largest user metadata accepted per entry, in bytes.
pub const MAX_METADATA_LEN: usize = 64 * 1024;
/// How many symlinks a lookup follows before giving up.
pub const MAX_SYMLINK_HOPS: usize = 16;

const NAMESPACE: &str = "hyperdrive-rs";
const BLOBS_NAME: &str = "blobs";
/// Preallocation cap when reading a whole file into memory.
const MAX_PREALLOC: u64 = 64 << 20;

/// Options for writing a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutOptions {
    /// The executable flag.
    pub executable: bool,
    /// Opaque user metadata (at most [`MAX_METADATA_LEN`] bytes).
    pub metadata: Vec<u8>,
}

impl PutOptions {
    /// Sets the executable flag.
    pub fn executable(mut self, executable: bool) -> Self {
        self.executable = executable;
        self
    }

    /// Sets the user metadata.
    pub fn metadata(mut self, metadata: impl Into<Vec<u8>>) -> Self {
        self.metadata = metadata.into();
        self
    }
}

/// A byte range of a file: `length` bytes from `start` (to the end when
/// `None`; clipped at the end of the file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadRange {
    /// First byte.
    pub start: u64,
    /// Number of bytes (`None`: to the end).
    pub length: Option<u64>,
}

impl ReadRange {
    /// The whole file.
    pub fn all() -> Self {
        ReadRange::default()
    }

    /// `length` bytes from `start`.
    pub fn new(start: u64, length: u64) -> Self {
        ReadRange {
            start,
            length: Some(length),
        }
    }

    /// Everything from `start`.
    pub fn from(start: u64) -> Self {
        ReadRange {
            start,
            length: None,
        }
    }
}

/// A stream of a file's bytes, chunk by chunk.
pub type ReadStream = BoxStream<'static, Result<Vec<u8>>>;

/// A committed change seen by [`Drive::watch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The version last seen.
    pub from: u64,
    /// The new version.
    pub to: u64,
}

/// How a path differs between two versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiffKind {
    /// Present only in the newer version.
    Added,
    /// Present in both, with a different entry.
    Changed,
    /// Present only in the older version.
    Removed,
}

/// One difference between two versions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Diff {
    /// Canonical path.
    pub path: String,
    /// The entry in the older version.
    pub old: Option<Entry>,
    /// The entry in the newer version.
    pub new: Option<Entry>,
}

impl Diff {
    /// Added, changed or removed.
    pub fn kind(&self) -> DiffKind {
        match (&self.old, &self.new) {
            (None, _) => DiffKind::Added,
            (Some(_), None) => DiffKind::Removed,
            (Some(_), Some(_)) => DiffKind::Changed,
        }
    }
}

struct Inner {
    bee: Bee,
    blobs: Core,
    chunk: u64,
    /// How long reads wait for peers for a missing block (`None`: local only).
    wait: Option<Duration>,
}

/// A versioned file system. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Drive {
    inner: Arc<Inner>,
    /// A pinned version (a checkout); `None` follows the latest.
    view: Option<Snapshot>,
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("version", &self.version())
            .field("writable", &self.writable())
            .finish_non_exhaustive()
    }
}

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_segments(path: &str) -> Result<Vec<&str>> {
    segments(path, false).map_err(|r| Error::path(path, r))
}

fn folder_segments(path: &str) -> Result<Vec<&str>> {
    segments(path, true).map_err(|r| Error::path(path, r))
}

fn check_metadata(m: &[u8]) -> Result<()> {
    if m.len() > MAX_METADATA_LEN {
        return Err(Error::MetadataTooLarge(m.len()));
    }
    Ok(())
}

impl Drive {
    /// Opens (or creates) the writable drive called `name` in `store`. The
    /// metadata core's key pair is the store's for `name` in the
    /// `hyperdrive-rs` namespace; the blobs core's is derived from the same
    /// seed and the drive key, and its key is recorded in the drive header.
    pub async fn open(store: &Corestore, name: &str) -> Result<Drive> {
        let ns = store.namespace(NAMESPACE);
        let meta = ns.get(name).await?;
        let blobs = ns.namespace(&hex(&meta.key())).get(BLOBS_NAME).await?;
        let bee = Bee::open(meta).await?;
        let header = match bee.get(HEADER_KEY).await? {
            Some(e) => decode_header(&e.value)?,
            None => {
                let h = Header {
                    blobs_key: blobs.key(),
                    chunk_size: CHUNK_SIZE,
                };
                bee.put(HEADER_KEY, encode_header(&h)).await?;
                h
            }
        };
        if header.blobs_key != blobs.key() {
            return Err(Error::BlobsKeyMismatch);
        }
        Ok(Drive {
            inner: Arc::new(Inner {
                bee,
                blobs,
                chunk: header.chunk_size,
                wait: None,
            }),
            view: None,
        })
    }

    /// Opens the drive with `key` from what `store` holds locally (read-only
    /// unless it is one of the store's own drives, which [`Drive::open`]
    /// opens writable). Missing content reads as [`Error::NotAvailable`].
    pub async fn open_key(store: &Corestore, key: Hash) -> Result<Drive> {
        Self::open_key_inner(store, key, None).await
    }

    /// Opens the drive with `key` from peers the store replicates with:
    /// learns the latest metadata length, downloads the metadata core, and
    /// reads contents sparsely, each missing chunk waited for at most `wait`.
    pub async fn open_remote(store: &Corestore, key: Hash, wait: Duration) -> Result<Drive> {
        Self::open_remote_with_clock(store, key, wait, Arc::new(ThreadClock)).await
    }

    /// [`Drive::open_remote`] with an injected clock (for simulations).
    pub async fn open_remote_with_clock(
        store: &Corestore,
        key: Hash,
        wait: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Drive> {
        let meta = store.get_by_key(key).await?;
        if meta.length() == 0 {
            // Wait for a peer to bring the header block (the channel for a
            // newly opened core may not be up yet, so `update` alone could
            // return before any peer is asked).
            meta.get_with(0, patient(wait)).await?;
        }
        meta.update().await?;
        sync_core(&meta).await?;
        Self::open_key_inner(store, key, Some((wait, clock))).await
    }

    async fn open_key_inner(
        store: &Corestore,
        key: Hash,
        wait: Option<(Duration, Arc<dyn Clock>)>,
    ) -> Result<Drive> {
        let meta = store.get_by_key(key).await?;
        let bee = Bee::open(meta).await?;
        let Some(h) = bee.get(HEADER_KEY).await? else {
            return Err(Error::NoHeader);
        };
        let header = decode_header(&h.value)?;
        if header.blobs_key == key {
            return Err(CorruptError::Header("blobs key is the drive key").into());
        }
        let blobs = store.get_by_key(header.blobs_key).await?;
        if let Some((t, clock)) = &wait {
            await_peer(&blobs, *t, clock.as_ref()).await?;
        }
        let wait = wait.map(|(t, _)| t);
        Ok(Drive {
            inner: Arc::new(Inner {
                bee,
                blobs,
                chunk: header.chunk_size,
                wait,
            }),
            view: None,
        })
    }

    /// For a drive read from peers: learns their latest version, downloads
    /// the new metadata and moves to it. Returns whether the version changed.
    pub async fn update(&self) -> Result<bool> {
        let meta = self.inner.bee.core();
        if meta.writable() {
            return Ok(false);
        }
        meta.update().await?;
        sync_core(meta).await?;
        self.inner.blobs.update().await?;
        Ok(self.inner.bee.update().await?)
    }

    /// The drive key (the metadata core's key): all a reader needs.
    pub fn key(&self) -> Hash {
        self.inner.bee.core().key()
    }

    /// The metadata core's discovery key.
    pub fn discovery_key(&self) -> Hash {
        self.inner.bee.core().discovery_key()
    }

    /// The blobs core's key (from the verified header).
    pub fn blobs_key(&self) -> Hash {
        self.inner.blobs.key()
    }

    /// The chunk size this drive was written with.
    pub fn chunk_size(&self) -> u64 {
        self.inner.chunk
    }

    /// The version (metadata core length) this handle shows.
    pub fn version(&self) -> u64 {
        match &self.view {
            Some(s) => s.version(),
            None => self.inner.bee.version(),
        }
    }

    /// Whether this handle can write (not a checkout, and holds the key).
    pub fn writable(&self) -> bool {
        self.view.is_none() && self.inner.bee.core().writable()
    }

    /// The metadata database.
    pub fn db(&self) -> &Bee {
        &self.inner.bee
    }

    /// The blobs core.
    pub fn blobs(&self) -> &Core {
        &self.inner.blobs
    }

    /// Makes every committed write durable (contents first, then metadata).
    pub async fn flush(&self) -> Result<()> {
        self.inner.blobs.flush().await?;
        self.inner.bee.flush().await?;
        Ok(())
    }

    fn snap(&self) -> Snapshot {
        match &self.view {
            Some(s) => s.clone(),
            None => self.inner.bee.snapshot(),
        }
    }

    /// A read-only view of a past version.
    pub async fn checkout(&self, version: u64) -> Result<Drive> {
        let snap = self.inner.bee.checkout(version).await?;
        Ok(Drive {
            inner: self.inner.clone(),
            view: Some(snap),
        })
    }

    // ---- reads -------------------------------------------------------------

    /// The entry at `path` itself (a symlink is not followed).
    pub async fn entry(&self, path: &str) -> Result<Option<Entry>> {
        let segs = file_segments(path)?;
        self.entry_at(&self.snap(), &segs).await
    }

    async fn entry_at(&self, snap: &Snapshot, segs: &[&str]) -> Result<Option<Entry>> {
        let Some(e) = snap.get(key_of(segs)).await? else {
            return Ok(None);
        };
        decode_entry(display(segs), e.seq, &e.value, self.inner.chunk).map(Some)
    }

    /// Whether anything (file or symlink) is at `path`.
    pub async fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.entry(path).await?.is_some())
    }

    /// The file `path` names, following symlinks (at most
    /// [`MAX_SYMLINK_HOPS`]); `None` if it, or a link's target, is missing.
    pub async fn resolve(&self, path: &str) -> Result<Option<Entry>> {
        let snap = self.snap();
        let mut segs: Vec<String> = file_segments(path)?
            .into_iter()
            .map(str::to_string)
            .collect();
        for _ in 0..=MAX_SYMLINK_HOPS {
            let refs: Vec<&str> = segs.iter().map(String::as_str).collect();
            let Some(e) = self.entry_at(&snap, &refs).await? else {
                return Ok(None);
            };
            match &e.kind {
                EntryKind::File { .. } => return Ok(Some(e)),
                EntryKind::Symlink { target } => {
                    segs = resolve_link(&segs, target).map_err(|r| Error::path(target, r))?;
                }
            }
        }
        Err(Error::SymlinkLoop(path.to_string()))
    }

    /// The whole content of the file at `path` (symlinks followed), checked
    /// against its BLAKE3 hash; `None` if there is no such file.
    pub async fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(e) = self.resolve(path).await? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(e.size().min(MAX_PREALLOC) as usize);
        let mut s = self.read_entry(&e, ReadRange::all())?;
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Some(out))
    }

    /// Streams a byte range of the file at `path` (symlinks followed),
    /// fetching only the chunks the range covers. A read of the whole file
    /// is checked against the file's BLAKE3 hash before its last chunk is
    /// yielded; every chunk is verified by the blobs core's signed tree.
    pub async fn read(&self, path: &str, range: ReadRange) -> Result<ReadStream> {
        let e = self
            .resolve(path)
            .await?
            .ok_or_else(|| Error::NotFound(path.to_string()))?;
        self.read_entry(&e, range)
    }

    /// Streams a byte range of a file entry; see [`Drive::read`].
    pub fn read_entry(&self, entry: &Entry, range: ReadRange) -> Result<ReadStream> {
        let EntryKind::File { blob, hash, .. } = entry.kind else {
            return Err(Error::NotFound(entry.path.clone()));
        };
        let size = blob.byte_length;
        if range.start > size {
            return Err(Error::RangeOutOfBounds {
                start: range.start,
                size,
            });
        }
        let end = match range.length {
            Some(l) => range.start.saturating_add(l).min(size),
            None => size,
        };
        let st = ReadState {
            drive: self.clone(),
            path: entry.path.clone(),
            blob,
            expect: hash,
            pos: range.start,
            end,
            hasher: (range.start == 0 && end == size).then(blake3::Hasher::new),
            started: false,
            done: false,
            _download: None,
        };
        Ok(futures::stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            match st.step().await {
                Ok(Some(b)) => Some((Ok(b), st)),
                Ok(None) => None,
                Err(e) => {
                    st.done = true;
                    Some((Err(e), st))
                }
            }
        })
        .boxed())
    }

    /// Checks that a blob lies inside the blobs core (learning a newer
    /// length from peers first when reads may wait).
    async fn check_blob(&self, path: &str, blob: &Blob) -> Result<()> {
        let blobs = &self.inner.blobs;
        if blob.block_end() > blobs.length() && self.inner.wait.is_some() && blobs.peer_count() > 0
        {
            blobs.update().await?;
        }
        if let (true, Some(t)) = (blob.block_end() > blobs.length(), self.inner.wait) {
            // No peer yet (or it is behind): wait, bounded, for an upgrade
            // that covers the blob's last block (this fetches that block).
            match blobs.get_with(blob.block_end() - 1, patient(t)).await {
                Ok(_) | Err(hypercore_rs::Error::Timeout) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if blob.block_end() > blobs.length() {
            return Err(CorruptError::BlobOutOfRange {
                path: path.to_string(),
                end: blob.block_end(),
                length: blobs.length(),
            }
            .into());
        }
        Ok(())
    }

    /// Chunk `idx` of a blob, checked for its expected size.
    async fn chunk(&self, path: &str, blob: &Blob, idx: u64) -> Result<Vec<u8>> {
        let block = blob.block_offset + idx;
        let blobs = &self.inner.blobs;
        let data = match self.inner.wait {
            None => blobs.get(block).await?,
            Some(t) => blobs.get_with(block, GetOptions::wait_for(t)).await?,
        };
        let data = data.ok_or_else(|| Error::NotAvailable {
            path: path.to_string(),
            block,
        })?;
        let expected = self
            .inner
            .chunk
            .min(blob.byte_length.saturating_sub(idx * self.inner.chunk));
        if data.len() as u64 != expected {
            return Err(CorruptError::ChunkSize {
                path: path.to_string(),
                block,
                expected,
                got: data.len() as u64,
            }
            .into());
        }
        Ok(data)
    }

    // ---- listing -----------------------------------------------------------

    /// The entries under `folder` (`/` for the root): its direct files and
    /// symlinks, or with `recursive` everything below it, in path order.
    /// A folder is one contiguous key range, so this costs one seek plus the
    /// entries read (and one seek per skipped subfolder when not recursive).
    pub fn list(&self, folder: &str, recursive: bool) -> Result<List> {
        let segs = folder_segments(folder)?;
        Ok(List {
            walk: Walk::new(self.snap(), &segs, recursive),
            chunk: self.inner.chunk,
        })
    }

    /// The names directly inside `folder`: files, symlinks and subfolders,
    /// each once, in byte order.
    pub fn readdir(&self, folder: &str) -> Result<Readdir> {
        let segs = folder_segments(folder)?;
        Ok(Readdir {
            walk: Walk::new(self.snap(), &segs, false),
            last: None,
        })
    }

    /// The paths under `folder` whose entries differ between versions
    /// `from` and `to`, in path order; unchanged subtrees are skipped unread.
    pub async fn diff(&self, from: u64, to: u64, folder: &str) -> Result<DiffIter> {
        let segs = folder_segments(folder)?;
        let (start, end) = folder_range(&segs);
        let a = self.inner.bee.checkout(from).await?;
        let b = self.inner.bee.checkout(to).await?;
        Ok(DiffIter {
            it: a.diff(&b, Range::all().gte(start).lt(end)).await?,
            chunk: self.inner.chunk,
        })
    }

    /// A stream that yields each time a committed change touches `folder`.
    pub fn watch(&self, folder: &str) -> Result<BoxStream<'static, Result<Change>>> {
        let segs = folder_segments(folder)?;
        let (start, end) = folder_range(&segs);
        Ok(self
            .inner
            .bee
            .watch(Range::all().gte(start).lt(end))
            .map(|r| {
                r.map(|c| Change {
                    from: c.from,
                    to: c.to,
                })
                .map_err(Error::from)
            })
            .boxed())
    }

    // ---- local storage ------------------------------------------------------

    /// The blob ranges of `path`: the file (symlinks followed), or every file
    /// under it if it names a folder. Sorted and merged.
    async fn ranges_of(&self, path: &str) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        if segments(path, false).is_ok() {
            if let Some(e) = self.resolve(path).await? {
                if let Some(b) = e.blob() {
                    out.push((b.block_offset, b.block_end()));
                }
                return Ok(out);
            }
        }
        let mut list = self.list(path, true)?;
        while let Some(e) = list.next().await? {
            if let Some(b) = e.blob() {
                if b.block_length > 0 {
                    out.push((b.block_offset, b.block_end()));
                }
            }
        }
        out.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(out.len());
        for (s, e) in out {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Ok(merged)
    }

    /// Downloads a file, or every file under a folder, from peers ahead of
    /// time; completes when all of it is held locally.
    pub async fn download(&self, path: &str) -> Result<()> {
        let ranges = self.ranges_of(path).await?;
        self.download_ranges(&ranges).await
    }

    /// Downloads the chunks covering a byte range of a file.
    pub async fn download_range(&self, path: &str, range: ReadRange) -> Result<()> {
        let e = self
            .resolve(path)
            .await?
            .ok_or_else(|| Error::NotFound(path.to_string()))?;
        let Some(r) = self.block_span(&e, range)? else {
            return Ok(());
        };
        self.download_ranges(&[r]).await
    }

    /// The blocks `[first, end)` holding a byte range of a file entry.
    fn block_span(&self, e: &Entry, range: ReadRange) -> Result<Option<(u64, u64)>> {
        let Some(blob) = e.blob() else {
            return Ok(None);
        };
        if range.start > blob.byte_length {
            return Err(Error::RangeOutOfBounds {
                start: range.start,
                size: blob.byte_length,
            });
        }
        let end = match range.length {
            Some(l) => range.start.saturating_add(l).min(blob.byte_length),
            None => blob.byte_length,
        };
        if end == range.start {
            return Ok(None);
        }
        let c = self.inner.chunk;
        Ok(Some((
            blob.block_offset + range.start / c,
            blob.block_offset + end.div_ceil(c),
        )))
    }

    async fn download_ranges(&self, ranges: &[(u64, u64)]) -> Result<()> {
        let blobs = &self.inner.blobs;
        let mut pending = Vec::new();
        for &(s, e) in ranges {
            if !blobs.has(s, e).await? {
                pending.push(blobs.download(s, e));
            }
        }
        for d in &pending {
            d.done().await?;
        }
        Ok(())
    }

    /// Drops the local copy of a file's chunks (or of every file under a
    /// folder), giving the disk space back. The entries stay; the content
    /// can be fetched again from peers. Returns the number of blocks cleared.
    pub async fn clear(&self, path: &str) -> Result<u64> {
        let ranges = self.ranges_of(path).await?;
        let mut n = 0;
        for (s, e) in ranges {
            self.inner.blobs.clear(s, e).await?;
            n += e - s;
        }
        Ok(n)
    }

    // ---- writes --------------------------------------------------------------

    /// Starts an atomic batch of file operations: readers see all of it or
    /// none of it. It holds the drive's write lock until flushed or dropped.
    pub async fn batch(&self) -> Result<DriveBatch> {
        if !self.writable() {
            return Err(Error::ReadOnly);
        }
        Ok(DriveBatch {
            drive: self.clone(),
            batch: self.inner.bee.batch().await?,
        })
    }

    /// Writes a file from memory; returns the new version.
    pub async fn put(&self, path: &str, data: &[u8]) -> Result<u64> {
        self.put_with(path, data, PutOptions::default()).await
    }

    /// [`Drive::put`] with options.
    pub async fn put_with(&self, path: &str, data: &[u8], options: PutOptions) -> Result<u64> {
        let mut b = self.batch().await?;
        b.put_with(path, data, options).await?;
        b.flush().await
    }

    /// Writes a file from a reader of any size with bounded memory (one
    /// 1 MiB buffer); returns the new version.
    pub async fn put_stream<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        reader: R,
        options: PutOptions,
    ) -> Result<u64> {
        let mut b = self.batch().await?;
        b.put_stream(path, reader, options).await?;
        b.flush().await
    }

    /// Creates a symlink at `path` pointing at `target` (relative to the
    /// link's folder, or absolute from the root; it must stay inside the
    /// drive). Returns the new version.
    pub async fn symlink(&self, path: &str, target: &str) -> Result<u64> {
        let mut b = self.batch().await?;
        b.symlink(path, target).await?;
        b.flush().await
    }

    /// Deletes the entry at `path`; returns whether there was one.
    pub async fn del(&self, path: &str) -> Result<bool> {
        let mut b = self.batch().await?;
        if b.entry(path).await?.is_none() {
            return Ok(false);
        }
        b.del(path).await?;
        b.flush().await?;
        Ok(true)
    }
}

/// Waits (at most `t`) until a peer replicates `core`, then learns its
/// length. The channel of a core opened after replication started comes up
/// a round trip later; without this the first read would not know the
/// blobs core's length yet.
async fn await_peer(core: &Core, t: Duration, clock: &dyn Clock) -> Result<bool> {
    let start = clock.now();
    while core.peer_count() == 0 {
        if clock.now().saturating_sub(start) >= t {
            return Ok(false);
        }
        clock.sleep(Duration::from_millis(2)).await;
    }
    Ok(core.update().await?)
}

/// Waits for a block at most `t`, even while no peer is connected yet.
fn patient(t: Duration) -> GetOptions {
    let mut o = GetOptions::wait_for(t);
    o.fail_fast = false;
    o
}

/// Downloads every block of `core` it does not hold yet.
async fn sync_core(core: &Core) -> Result<()> {
    let len = core.length();
    if len > 0 && !core.has(0, len).await? {
        core.download(0, len).done().await?;
    }
    Ok(())
}

struct ReadState {
    drive: Drive,
    path: String,
    blob: Blob,
    expect: [u8; 32],
    pos: u64,
    end: u64,
    hasher: Option<blake3::Hasher>,
    started: bool,
    done: bool,
    /// Keeps the range wanted from peers while the stream lives.
    _download: Option<Download>,
}

impl ReadState {
    async fn step(&mut self) -> Result<Option<Vec<u8>>> {
        if !self.started {
            self.started = true;
            self.drive.check_blob(&self.path, &self.blob).await?;
            if self.drive.inner.wait.is_some() && self.end > self.pos {
                let c = self.drive.inner.chunk;
                let (s, e) = (
                    self.blob.block_offset + self.pos / c,
                    self.blob.block_offset + self.end.div_ceil(c),
                );
                if !self.drive.inner.blobs.has(s, e).await? {
                    self._download = Some(self.drive.inner.blobs.download(s, e));
                }
            }
        }
        if self.pos >= self.end {
            self.done = true;
            self.check_hash()?;
            return Ok(None);
        }
        let c = self.drive.inner.chunk;
        let idx = self.pos / c;
        let data = self.drive.chunk(&self.path, &self.blob, idx).await?;
        let base = idx * c;
        let from = (self.pos - base) as usize;
        let to = ((self.end - base) as usize).min(data.len());
        let out = if from == 0 && to == data.len() {
            data
        } else {
            data[from..to].to_vec()
        };
        self.pos += out.len() as u64;
        if let Some(h) = &mut self.hasher {
            h.update(&out);
        }
        if self.pos >= self.end {
            // Check the whole file before its last bytes go out.
            self.done = true;
            self.check_hash()?;
        }
        Ok(Some(out))
    }

    fn check_hash(&mut self) -> Result<()> {
        if let Some(h) = self.hasher.take() {
            if *h.finalize().as_bytes() != self.expect {
                return Err(CorruptError::HashMismatch {
                    path: self.path.clone(),
                }
                .into());
            }
        }
        Ok(())
    }
}

/// Appends a file's content to the blobs core in `WRITE_CHUNKS` batches,
/// hashing it on the way.
struct BlobWriter {
    blobs: Core,
    chunk: usize,
    /// Full chunks not appended yet (at most `WRITE_CHUNKS`).
    full: Vec<Vec<u8>>,
    /// The chunk being filled.
    cur: Vec<u8>,
    hasher: blake3::Hasher,
    block_offset: u64,
    byte_offset: u64,
    len: u64,
}

impl BlobWriter {
    fn new(blobs: &Core, chunk: u64) -> Self {
        let chunk = chunk as usize;
        BlobWriter {
            blobs: blobs.clone(),
            chunk,
            full: Vec::with_capacity(WRITE_CHUNKS),
            cur: Vec::new(),
            hasher: blake3::Hasher::new(),
            block_offset: blobs.length(),
            byte_offset: blobs.byte_length(),
            len: 0,
        }
    }

    fn cap(&self) -> usize {
        self.chunk * WRITE_CHUNKS
    }

    async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.len += data.len() as u64;
        while !data.is_empty() {
            if self.cur.capacity() == 0 {
                self.cur.reserve_exact(self.chunk);
            }
            let n = (self.chunk - self.cur.len()).min(data.len());
            self.cur.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.cur.len() == self.chunk {
                self.full.push(std::mem::take(&mut self.cur));
                if self.full.len() == WRITE_CHUNKS {
                    self.spill().await?;
                }
            }
        }
        Ok(())
    }

    /// Appends the full chunks (the chunks move into storage, no copy).
    async fn spill(&mut self) -> Result<()> {
        if !self.full.is_empty() {
            let chunks = std::mem::replace(&mut self.full, Vec::with_capacity(WRITE_CHUNKS));
            self.blobs.append_owned(chunks).await?;
        }
        Ok(())
    }

    /// Gives back the space of the chunks appended for a write that failed
    /// (best effort: they stay unreferenced either way).
    async fn abandon(self, err: Error) -> Error {
        let end = self.blobs.length();
        if end > self.block_offset {
            let _ = self.blobs.clear(self.block_offset, end).await;
        }
        err
    }

    async fn finish(mut self) -> Result<(Blob, [u8; 32])> {
        if !self.cur.is_empty() {
            self.full.push(std::mem::take(&mut self.cur));
        }
        self.spill().await?;
        let blocks = blocks_for(self.len, self.chunk as u64);
        if self.blobs.length() != self.block_offset + blocks {
            return Err(Error::Conflict);
        }
        Ok((
            Blob {
                block_offset: self.block_offset,
                block_length: blocks,
                byte_offset: self.byte_offset,
                byte_length: self.len,
            },
            *self.hasher.finalize().as_bytes(),
        ))
    }
}

/// An atomic batch of file operations; see [`Drive::batch`].
pub struct DriveBatch {
    drive: Drive,
    batch: hyperbee_rs::Batch,
}

impl std::fmt::Debug for DriveBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriveBatch")
            .field("ops", &self.batch.len())
            .finish_non_exhaustive()
    }
}

impl DriveBatch {
    /// The entry at `path` as this batch would leave it (reads its own writes).
    pub async fn entry(&mut self, path: &str) -> Result<Option<Entry>> {
        let segs = file_segments(path)?;
        let Some(e) = self.batch.get(key_of(&segs)).await? else {
            return Ok(None);
        };
        decode_entry(display(&segs), e.seq, &e.value, self.drive.inner.chunk).map(Some)
    }

    /// Writes a file from memory.
    pub async fn put(&mut self, path: &str, data: &[u8]) -> Result<()> {
        self.put_with(path, data, PutOptions::default()).await
    }

    /// [`DriveBatch::put`] with options.
    pub async fn put_with(&mut self, path: &str, data: &[u8], options: PutOptions) -> Result<()> {
        let key = key_of(&file_segments(path)?);
        check_metadata(&options.metadata)?;
        let mut w = BlobWriter::new(&self.drive.inner.blobs, self.drive.inner.chunk);
        w.write(data).await?;
        self.commit(key, w, options).await
    }

    /// Writes a file from a reader, with bounded memory; returns its size.
    pub async fn put_stream<R: AsyncRead + Unpin>(
        &mut self,
        path: &str,
        mut reader: R,
        options: PutOptions,
    ) -> Result<u64> {
        let key = key_of(&file_segments(path)?);
        check_metadata(&options.metadata)?;
        let mut w = BlobWriter::new(&self.drive.inner.blobs, self.drive.inner.chunk);
        let mut buf = vec![0u8; w.cap()];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => return Err(w.abandon(Error::io(None, e)).await),
            };
            if n == 0 {
                break;
            }
            if let Err(e) = w.write(&buf[..n]).await {
                return Err(w.abandon(e).await);
            }
        }
        let len = w.len;
        self.commit(key, w, options).await?;
        Ok(len)
    }

    /// Writes a file from a stream of byte chunks (e.g. another drive's
    /// [`ReadStream`]); returns its size.
    pub async fn put_chunks<S>(
        &mut self,
        path: &str,
        mut chunks: S,
        options: PutOptions,
    ) -> Result<u64>
    where
        S: Stream<Item = Result<Vec<u8>>> + Unpin,
    {
        let key = key_of(&file_segments(path)?);
        check_metadata(&options.metadata)?;
        let mut w = BlobWriter::new(&self.drive.inner.blobs, self.drive.inner.chunk);
        while let Some(c) = chunks.next().await {
            let r = match c {
                Ok(c) => w.write(&c).await,
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                return Err(w.abandon(e).await);
            }
        }
        let len = w.len;
        self.commit(key, w, options).await?;
        Ok(len)
    }

    async fn commit(&mut self, key: Vec<u8>, w: BlobWriter, options: PutOptions) -> Result<()> {
        let (blob, hash) = w.finish().await?;
        let kind = EntryKind::File {
            blob,
            hash,
            executable: options.executable,
        };
        self.batch
            .put(key, encode_entry(&kind, &options.metadata))
            .await?;
        Ok(())
    }

    /// Creates a symlink; see [`Drive::symlink`].
    pub async fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let segs = file_segments(path)?;
        let owned: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
        resolve_link(&owned, target).map_err(|r| Error::path(target, r))?;
        let kind = EntryKind::Symlink {
            target: target.to_string(),
        };
        self.batch
            .put(key_of(&segs), encode_entry(&kind, &[]))
            .await?;
        Ok(())
    }

    /// Deletes the entry at `path` (nothing if there is none).
    pub async fn del(&mut self, path: &str) -> Result<()> {
        let segs = file_segments(path)?;
        self.batch.del(key_of(&segs)).await?;
        Ok(())
    }

    /// Commits the batch; returns the new version.
    pub async fn flush(self) -> Result<u64> {
        Ok(self.batch.flush().await?)
    }
}

/// What a folder walk found next.
enum Found {
    Entry(hyperbee_rs::Entry),
    Folder(Vec<u8>),
}

/// Walks one folder's key range, optionally skipping subfolders with a seek.
struct Walk {
    snap: Snapshot,
    it: RangeIter,
    end: Vec<u8>,
    prefix: usize,
    recursive: bool,
}

impl Walk {
    fn new(snap: Snapshot, segs: &[&str], recursive: bool) -> Self {
        let (start, end) = folder_range(segs);
        Walk {
            it: snap.range(Range::all().gte(&start).lt(&end)),
            snap,
            end,
            prefix: start.len(),
            recursive,
        }
    }

    async fn next(&mut self) -> Result<Option<Found>> {
        let Some(e) = self.it.next().await? else {
            return Ok(None);
        };
        if self.recursive {
            return Ok(Some(Found::Entry(e)));
        }
        let rest = e.key.get(self.prefix..).unwrap_or_default();
        match rest.iter().position(|b| *b == SEP) {
            None => Ok(Some(Found::Entry(e))),
            Some(pos) => {
                // A subfolder: report it and seek past its whole range.
                let name = rest[..pos].to_vec();
                let mut from = e.key[..self.prefix + pos].to_vec();
                from.push(SEP + 1);
                self.it = self.snap.range(Range::all().gte(from).lt(&self.end));
                Ok(Some(Found::Folder(name)))
            }
        }
    }
}

/// Entries of a folder; see [`Drive::list`].
pub struct List {
    walk: Walk,
    chunk: u64,
}

impl std::fmt::Debug for List {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("List").finish_non_exhaustive()
    }
}

impl List {
    /// The next entry.
    pub async fn next(&mut self) -> Result<Option<Entry>> {
        loop {
            match self.walk.next().await? {
                None => return Ok(None),
                Some(Found::Folder(_)) => continue,
                Some(Found::Entry(e)) => {
                    let path = path_of_key(&e.key).ok_or(CorruptError::Key)?;
                    return decode_entry(path, e.seq, &e.value, self.chunk).map(Some);
                }
            }
        }
    }

    /// Every remaining entry.
    pub async fn collect(mut self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await? {
            out.push(e);
        }
        Ok(out)
    }
}

/// Names in a folder; see [`Drive::readdir`].
pub struct Readdir {
    walk: Walk,
    last: Option<Vec<u8>>,
}

impl std::fmt::Debug for Readdir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readdir").finish_non_exhaustive()
    }
}

impl Readdir {
    /// The next name.
    pub async fn next(&mut self) -> Result<Option<String>> {
        loop {
            let name = match self.walk.next().await? {
                None => return Ok(None),
                Some(Found::Folder(n)) => n,
                Some(Found::Entry(e)) => e.key.get(self.walk.prefix..).unwrap_or_default().to_vec(),
            };
            // A file and a folder may share a name; they are adjacent.
            if self.last.as_ref() == Some(&name) {
                continue;
            }
            let s = String::from_utf8(name.clone()).map_err(|_| CorruptError::Key)?;
            if crate::path::segments(&s, false).map(|v| v.len()) != Ok(1) {
                return Err(CorruptError::Key.into());
            }
            self.last = Some(name);
            return Ok(Some(s));
        }
    }

    /// Every remaining name.
    pub async fn collect(mut self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        while let Some(n) = self.next().await? {
            out.push(n);
        }
        Ok(out)
    }
}

/// Differences between two versions; see [`Drive::diff`].
pub struct DiffIter {
    it: hyperbee_rs::DiffIter,
    chunk: u64,
}

impl std::fmt::Debug for DiffIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffIter").finish_non_exhaustive()
    }
}

impl DiffIter {
    /// The next difference.
    pub async fn next(&mut self) -> Result<Option<Diff>> {
        let Some(d) = self.it.next().await? else {
            return Ok(None);
        };
        let path = path_of_key(&d.key).ok_or(CorruptError::Key)?;
        let dec = |e: Option<hyperbee_rs::Entry>| -> Result<Option<Entry>> {
            e.map(|e| decode_entry(path.clone(), e.seq, &e.value, self.chunk))
                .transpose()
        };
        let old = dec(d.old)?;
        let new = dec(d.new)?;
        Ok(Some(Diff { path, old, new }))
    }

    /// Every remaining difference.
    pub async fn collect(mut self) -> Result<Vec<Diff>> {
        let mut out = Vec::new();
        while let Some(d) = self.next().await? {
            out.push(d);
        }
        Ok(out)
    }
}
