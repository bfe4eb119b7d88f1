//! The public handles: [`Bee`] (the database), [`Batch`] (atomic writes),
//! [`Snapshot`] (a read-only version), [`Sub`] (a prefixed sub-database) and
//! the iterators over ranges, diffs and history.
//!
//! Writers are serialised by one async lock that a [`Batch`] holds from its
//! creation until it is flushed or dropped, so a failed compare-and-swap can
//! never leak the lock. The head (version and root) changes only after the
//! whole flush is appended, so readers never see half a batch.

use crate::cache::NodeCache;
use crate::error::{CorruptError, Error, Result};
use crate::format::encode_header;
use crate::node::{Bytes, LeafValue, Ptr, Value};
use crate::read::{
    prefix_end, Cursor, Diff, DiffWalk, Entry, HistoryEntry, HistoryWalk, Range, Store,
};
use crate::tree::{PendingOp, Stop, WorkTree};
use crate::{INLINE_MAX, MAX_KEY_LEN, MAX_VALUE_LEN};
use futures::lock::{Mutex as AsyncMutex, OwnedMutexGuard};
use futures::{Stream, StreamExt};
use hypercore_rs::{Core, Event};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

/// Default budget of the decoded-node cache (bytes, approximate).
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    version: u64,
    root: Option<Ptr>,
}

struct Inner {
    store: Store,
    write: Arc<AsyncMutex<()>>,
    head: Mutex<Head>,
}

/// An append-only B+tree key/value database stored in a hypercore.
///
/// Cheap to clone; clones share the cache, the head and the write lock.
#[derive(Clone)]
pub struct Bee {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bee")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

/// Options for opening a [`Bee`].
#[derive(Debug)]
pub struct BeeBuilder {
    core: Core,
    cache_bytes: usize,
    remote: Option<std::time::Duration>,
}

impl BeeBuilder {
    /// The budget of the decoded-node cache, in bytes (default
    /// [`DEFAULT_CACHE_BYTES`]).
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Reads a core replicated from peers sparsely: blocks not held locally
    /// are fetched on demand (only those on the path of each read, each
    /// verified), waiting at most `timeout` per block; `open` and
    /// [`Bee::update`] first learn the latest signed length from peers.
    pub fn remote(mut self, timeout: std::time::Duration) -> Self {
        self.remote = Some(timeout);
        self
    }

    /// Opens the bee: writes the header into an empty writable core, checks
    /// it otherwise, and loads the head.
    pub async fn open(self) -> Result<Bee> {
        let store = Store {
            core: self.core.clone(),
            cache: Arc::new(NodeCache::new(self.cache_bytes)),
            remote: self.remote,
        };
        let core = &self.core;
        if self.remote.is_some() && !core.writable() {
            core.update().await?;
        }
        if core.length() == 0 && core.writable() {
            core.append(&encode_header()).await?;
        }
        let head = read_head(&store).await?;
        Ok(Bee {
            inner: Arc::new(Inner {
                store,
                write: Arc::new(AsyncMutex::new(())),
                head: Mutex::new(head),
            }),
        })
    }
}

async fn read_head(store: &Store) -> Result<Head> {
    let version = store.core.length();
    if version >= 1 {
        crate::format::check_header(&store.block(0).await?)?;
    }
    let root = match store.root_at(version).await {
        Err(Error::NotAVersion(_)) => {
            return Err(CorruptError::Invalid {
                seq: version - 1,
                what: "last block does not end a flush",
            }
            .into())
        }
        r => r?,
    };
    Ok(Head { version, root })
}

impl Bee {
    /// Options for opening a bee on `core`.
    pub fn builder(core: Core) -> BeeBuilder {
        BeeBuilder {
            core,
            cache_bytes: DEFAULT_CACHE_BYTES,
            remote: None,
        }
    }

    /// Opens a bee on `core` with default options.
    pub async fn open(core: Core) -> Result<Bee> {
        Self::builder(core).open().await
    }

    fn head(&self) -> MutexGuard<'_, Head> {
        // Head is a plain value, consistent at every point.
        self.inner.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The underlying core.
    pub fn core(&self) -> &Core {
        &self.inner.store.core
    }

    /// The current version: the length of the core after the last flush.
    pub fn version(&self) -> u64 {
        self.head().version
    }

    /// Re-reads the head from the core (for a bee whose core grows by
    /// replication). Returns whether the version changed.
    pub async fn update(&self) -> Result<bool> {
        if self.store().remote.is_some() && !self.core().writable() {
            self.core().update().await?;
        }
        let _w = self.inner.write.lock().await;
        let head = read_head(self.store()).await?;
        let mut h = self.head();
        let changed = *h != head;
        *h = head;
        Ok(changed)
    }

    /// Makes every flushed write durable (see hypercore-rs durability).
    pub async fn flush(&self) -> Result<()> {
        Ok(self.core().flush().await?)
    }

    /// A read-only view of the current version.
    pub fn snapshot(&self) -> Snapshot {
        let h = *self.head();
        Snapshot {
            store: self.store().clone(),
            version: h.version,
            root: h.root,
        }
    }

    /// A read-only view of a past version.
    pub async fn checkout(&self, version: u64) -> Result<Snapshot> {
        if version > self.version() {
            return Err(Error::NotAVersion(version));
        }
        let root = self.store().root_at(version).await?;
        Ok(Snapshot {
            store: self.store().clone(),
            version,
            root,
        })
    }

    /// Starts an atomic batch. It holds the write lock until it is flushed
    /// or dropped: do not write through the bee while holding one.
    pub async fn batch(&self) -> Result<Batch> {
        if !self.core().writable() {
            return Err(Error::ReadOnly);
        }
        let guard = self.inner.write.clone().lock_owned().await;
        let h = *self.head();
        Ok(Batch {
            bee: self.clone(),
            _guard: guard,
            tree: WorkTree::new(h.root, self.store().cache.clone()),
            ops: Vec::new(),
            base: h.version,
        })
    }

    /// The entry for `key` at the current version.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Entry>> {
        self.snapshot().get(key).await
    }

    /// Puts one key; returns the new version.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64> {
        let mut b = self.batch().await?;
        b.put(key, value).await?;
        b.flush().await
    }

    /// Deletes one key; returns the new version.
    pub async fn del(&self, key: impl AsRef<[u8]>) -> Result<u64> {
        let mut b = self.batch().await?;
        b.del(key).await?;
        b.flush().await
    }

    /// Puts `key` only if `cas(current entry)` returns true. Returns whether
    /// it did.
    pub async fn put_cas(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        cas: impl FnOnce(Option<&Entry>) -> bool,
    ) -> Result<bool> {
        let mut b = self.batch().await?;
        if !b.put_cas(key, value, cas).await? {
            return Ok(false);
        }
        b.flush().await?;
        Ok(true)
    }

    /// Deletes `key` only if it exists and `cas(current entry)` returns true.
    /// Returns whether it did.
    pub async fn del_cas(
        &self,
        key: impl AsRef<[u8]>,
        cas: impl FnOnce(&Entry) -> bool,
    ) -> Result<bool> {
        let mut b = self.batch().await?;
        if !b.del_cas(key, cas).await? {
            return Ok(false);
        }
        b.flush().await?;
        Ok(true)
    }

    /// The entries in `range` at the current version (pinned: later writes
    /// are not seen).
    pub fn range(&self, range: Range) -> RangeIter {
        self.snapshot().range(range)
    }

    /// The first entry of `range` (last, if reversed).
    pub async fn peek(&self, range: Range) -> Result<Option<Entry>> {
        self.snapshot().peek(range).await
    }

    /// The recorded puts and dels, pinned to the current version.
    pub fn history(&self, h: History) -> HistoryIter {
        self.snapshot().history(h)
    }

    /// The keys in `range` whose values differ between versions `from` and
    /// `to`, in key order. Shared subtrees are skipped without being read.
    pub async fn diff(&self, from: u64, to: u64, range: Range) -> Result<DiffIter> {
        let a = self.checkout(from).await?;
        let b = self.checkout(to).await?;
        a.diff(&b, range).await
    }

    /// A stream that yields each time a committed change touches `range`.
    /// Changes are coalesced: one item may cover several versions.
    pub fn watch(&self, range: Range) -> impl Stream<Item = Result<Change>> + Send + 'static {
        watch(
            self.store().clone(),
            self.core().events(),
            *self.head(),
            range,
        )
    }

    /// A prefixed sub-database named `name`.
    pub fn sub(&self, name: impl AsRef<[u8]>) -> Sub {
        Sub {
            bee: self.clone(),
            ns: Some(sub_ns(&[], name.as_ref())),
            view: None,
        }
    }

    /// A typed view of the whole bee.
    pub fn typed<K, V>(&self) -> crate::typed::Typed<K, V> {
        crate::typed::Typed::new(Sub {
            bee: self.clone(),
            ns: None,
            view: None,
        })
    }
}

const TAG_KEY: u8 = 0x00;
const TAG_SUB: u8 = 0x01;

fn sub_ns(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut ns = parent.to_vec();
    ns.push(TAG_SUB);
    crate::format::put_varint(&mut ns, name.len() as u64);
    ns.extend_from_slice(name);
    ns
}

/// A committed change seen by [`Bee::watch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The version last seen.
    pub from: u64,
    /// The new version.
    pub to: u64,
}

struct WatchState {
    store: Store,
    events: futures::channel::mpsc::UnboundedReceiver<Event>,
    head: Head,
    range: Range,
}

fn watch(
    store: Store,
    events: futures::channel::mpsc::UnboundedReceiver<Event>,
    head: Head,
    range: Range,
) -> impl Stream<Item = Result<Change>> + Send + 'static {
    let st = WatchState {
        store,
        events,
        head,
        range,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            let mut length = event_length(st.events.next().await?);
            // Coalesce whatever else is queued: the work per wake-up is bounded.
            while let Ok(ev) = st.events.try_recv() {
                length = event_length(ev).or(length);
            }
            let Some(length) = length else { continue };
            if length == st.head.version {
                continue;
            }
            let root = match st.store.root_at(length).await {
                Ok(r) => r,
                Err(e) => return Some((Err(e), st)),
            };
            let changed = match DiffWalk::new(st.store.clone(), st.head.root, root, &st.range).await
            {
                Ok(mut w) => w.next().await.map(|d| d.is_some()),
                Err(e) => Err(e),
            };
            let from = st.head.version;
            st.head = Head {
                version: length,
                root,
            };
            match changed {
                Ok(true) => return Some((Ok(Change { from, to: length }), st)),
                Ok(false) => continue,
                Err(e) => return Some((Err(e), st)),
            }
        }
    })
}

fn event_length(ev: Event) -> Option<u64> {
    match ev {
        Event::Append { length, .. }
        | Event::Upgrade { length, .. }
        | Event::Truncate { length, .. } => Some(length),
        _ => None,
    }
}

/// A read-only view of one version of a bee.
#[derive(Clone)]
pub struct Snapshot {
    store: Store,
    version: u64,
    root: Option<Ptr>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// The version this snapshot shows.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The entry for `key`.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Entry>> {
        self.store.get(self.root, key.as_ref()).await
    }

    /// The entries in `range`.
    pub fn range(&self, range: Range) -> RangeIter {
        RangeIter {
            cursor: Cursor::new(self.store.clone(), self.root, &range),
            remaining: range.limit,
            strip: 0,
        }
    }

    /// The first entry of `range` (last, if reversed).
    pub async fn peek(&self, range: Range) -> Result<Option<Entry>> {
        self.range(range.limit(1)).next().await
    }

    /// The keys in `range` whose values differ from this version to `to`.
    pub async fn diff(&self, to: &Snapshot, range: Range) -> Result<DiffIter> {
        Ok(DiffIter {
            walk: DiffWalk::new(self.store.clone(), self.root, to.root, &range).await?,
            remaining: range.limit,
            strip: 0,
        })
    }

    /// The number of levels of the tree (0 when empty); for tests and tuning.
    #[doc(hidden)]
    pub async fn height(&self) -> Result<u8> {
        match self.root {
            None => Ok(0),
            Some(r) => Ok(self.store.node(r).await?.level + 1),
        }
    }

    /// The puts and dels recorded up to this version.
    pub fn history(&self, h: History) -> HistoryIter {
        let end = h.end.unwrap_or(u64::MAX).min(self.version);
        HistoryIter {
            walk: HistoryWalk::new(self.store.clone(), h.start, end, h.reverse),
            remaining: h.limit,
        }
    }
}

/// Which part of the history to read: block sequence numbers, order, limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    start: u64,
    end: Option<u64>,
    reverse: bool,
    limit: Option<usize>,
}

impl History {
    /// Every recorded op, oldest first.
    pub fn all() -> Self {
        Self::default()
    }
    /// Ops recorded in blocks at or after `seq`.
    pub fn gte(mut self, seq: u64) -> Self {
        self.start = seq;
        self
    }
    /// Ops recorded in blocks before `seq`.
    pub fn lt(mut self, seq: u64) -> Self {
        self.end = Some(seq);
        self
    }
    /// Newest first.
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }
    /// At most `n` ops.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }
}

/// Entries of a range at one version.
pub struct RangeIter {
    cursor: Cursor,
    remaining: Option<usize>,
    strip: usize,
}

impl RangeIter {
    /// The next entry.
    pub async fn next(&mut self) -> Result<Option<Entry>> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        let Some(mut e) = self.cursor.next().await? else {
            return Ok(None);
        };
        if let Some(r) = self.remaining.as_mut() {
            *r -= 1;
        }
        if self.strip > 0 {
            e.key.drain(..self.strip.min(e.key.len()));
        }
        Ok(Some(e))
    }

    /// Every remaining entry, collected.
    pub async fn collect(mut self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await? {
            out.push(e);
        }
        Ok(out)
    }

    /// As a stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<Entry>> + Send + 'static {
        futures::stream::try_unfold(self, |mut it| async move {
            Ok(it.next().await?.map(|e| (e, it)))
        })
    }
}

/// Differences between two versions, in key order.
pub struct DiffIter {
    walk: DiffWalk,
    remaining: Option<usize>,
    strip: usize,
}

impl DiffIter {
    /// The next difference.
    pub async fn next(&mut self) -> Result<Option<Diff>> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        let Some(mut d) = self.walk.next().await? else {
            return Ok(None);
        };
        if let Some(r) = self.remaining.as_mut() {
            *r -= 1;
        }
        if self.strip > 0 {
            let s = self.strip;
            d.key.drain(..s.min(d.key.len()));
            for e in [d.old.as_mut(), d.new.as_mut()].into_iter().flatten() {
                e.key.drain(..s.min(e.key.len()));
            }
        }
        Ok(Some(d))
    }

    /// Every remaining difference, collected.
    pub async fn collect(mut self) -> Result<Vec<Diff>> {
        let mut out = Vec::new();
        while let Some(d) = self.next().await? {
            out.push(d);
        }
        Ok(out)
    }

    /// As a stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<Diff>> + Send + 'static {
        futures::stream::try_unfold(self, |mut it| async move {
            Ok(it.next().await?.map(|e| (e, it)))
        })
    }
}

/// Recorded puts and dels.
pub struct HistoryIter {
    walk: HistoryWalk,
    remaining: Option<usize>,
}

impl HistoryIter {
    /// The next op.
    pub async fn next(&mut self) -> Result<Option<HistoryEntry>> {
        if self.remaining == Some(0) {
            return Ok(None);
        }
        let e = self.walk.next().await?;
        if let (Some(r), Some(_)) = (self.remaining.as_mut(), &e) {
            *r -= 1;
        }
        Ok(e)
    }

    /// Every remaining op, collected.
    pub async fn collect(mut self) -> Result<Vec<HistoryEntry>> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await? {
            out.push(e);
        }
        Ok(out)
    }

    /// As a stream.
    pub fn into_stream(self) -> impl Stream<Item = Result<HistoryEntry>> + Send + 'static {
        futures::stream::try_unfold(self, |mut it| async move {
            Ok(it.next().await?.map(|e| (e, it)))
        })
    }
}

/// An atomic group of writes: all of them become visible at once, or none.
///
/// Reads through the batch see its own writes. Holds the bee's write lock
/// until [`Batch::flush`] or drop; dropping discards the writes.
pub struct Batch {
    bee: Bee,
    _guard: OwnedMutexGuard<()>,
    tree: WorkTree,
    ops: Vec<PendingOp>,
    base: u64,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("base", &self.base)
            .field("ops", &self.ops.len())
            .finish_non_exhaustive()
    }
}

impl Batch {
    async fn run<T>(&mut self, mut f: impl FnMut(&mut WorkTree) -> Result<T, Stop>) -> Result<T> {
        loop {
            match f(&mut self.tree) {
                Ok(v) => return Ok(v),
                Err(Stop::Miss(p)) => {
                    let n = self.bee.store().node(p).await?;
                    self.tree.pin(p, n);
                }
                Err(Stop::Corrupt(e)) => return Err(e.into()),
            }
        }
    }

    /// Number of puts and dels so far.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no writes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The entry for `key`, including this batch's writes.
    pub async fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Entry>> {
        let key = key.as_ref();
        let found = self.run(|t| t.find(key)).await?;
        let Some((k, v)) = found else {
            return Ok(None);
        };
        if let Value::Pending { op, .. } = v.value {
            let value = self
                .ops
                .get(op as usize)
                .and_then(|(_, v)| v.as_ref())
                .map(|v| v.to_vec())
                .unwrap_or_default();
            return Ok(Some(Entry {
                seq: v.seq,
                key: k.to_vec(),
                value,
            }));
        }
        Ok(Some(self.bee.store().entry(&k, &v).await?))
    }

    /// Puts `key`.
    pub async fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLarge(key.len()));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(Error::ValueTooLarge(value.len()));
        }
        let k = Bytes::copy_from(key);
        let v = Bytes::copy_from(value);
        let lv = LeafValue {
            seq: self.base,
            value: if value.len() <= INLINE_MAX {
                Value::Inline(v.clone())
            } else {
                Value::Pending {
                    op: self.ops.len() as u32,
                    len: value.len() as u32,
                }
            },
        };
        self.run(|t| t.put(k.clone(), lv.clone())).await?;
        self.ops.push((k, Some(v)));
        Ok(())
    }

    /// Deletes `key` (recorded in the history even if it was absent).
    pub async fn del(&mut self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        if key.len() > MAX_KEY_LEN {
            return Err(Error::KeyTooLarge(key.len()));
        }
        self.run(|t| t.del(key)).await?;
        self.ops.push((Bytes::copy_from(key), None));
        Ok(())
    }

    /// Puts `key` only if `cas(current entry)` returns true.
    pub async fn put_cas(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        cas: impl FnOnce(Option<&Entry>) -> bool,
    ) -> Result<bool> {
        let cur = self.get(key.as_ref()).await?;
        if !cas(cur.as_ref()) {
            return Ok(false);
        }
        self.put(key, value).await?;
        Ok(true)
    }

    /// Deletes `key` only if it exists and `cas(current entry)` returns true.
    pub async fn del_cas(
        &mut self,
        key: impl AsRef<[u8]>,
        cas: impl FnOnce(&Entry) -> bool,
    ) -> Result<bool> {
        match self.get(key.as_ref()).await? {
            Some(cur) if cas(&cur) => {
                self.del(key).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Appends the batch (one atomic append) and makes it the head. Returns
    /// the new version.
    pub async fn flush(self) -> Result<u64> {
        if self.ops.is_empty() {
            return Ok(self.base);
        }
        let core = self.bee.core();
        if core.length() != self.base {
            return Err(Error::Conflict);
        }
        let flush = self.tree.finish(self.base, &self.ops);
        let version = core.append_owned(flush.blocks).await?;
        let cache = &self.bee.store().cache;
        cache.remove_superseded(&flush.superseded);
        for (p, n) in flush.written {
            cache.insert(p, n);
        }
        *self.bee.head() = Head {
            version,
            root: flush.root,
        };
        Ok(version)
    }
}

/// A prefixed sub-database. Its keys never appear in the ranges of any other
/// sub, including its parent and its own subs.
#[derive(Clone)]
pub struct Sub {
    bee: Bee,
    /// `None`: the bee's whole keyspace.
    ns: Option<Vec<u8>>,
    view: Option<Snapshot>,
}

impl std::fmt::Debug for Sub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sub")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

impl Sub {
    /// The bee this sub lives in.
    pub fn bee(&self) -> &Bee {
        &self.bee
    }

    /// A nested sub-database.
    pub fn sub(&self, name: impl AsRef<[u8]>) -> Sub {
        Sub {
            bee: self.bee.clone(),
            ns: Some(sub_ns(self.ns.as_deref().unwrap_or(&[]), name.as_ref())),
            view: self.view.clone(),
        }
    }

    /// This sub as it was at `version` (read-only).
    pub async fn checkout(&self, version: u64) -> Result<Sub> {
        Ok(Sub {
            view: Some(self.bee.checkout(version).await?),
            ..self.clone()
        })
    }

    /// A typed view of this sub.
    pub fn typed<K, V>(&self) -> crate::typed::Typed<K, V> {
        crate::typed::Typed::new(self.clone())
    }

    fn own_prefix(&self) -> Vec<u8> {
        match &self.ns {
            None => Vec::new(),
            Some(ns) => {
                let mut p = ns.clone();
                p.push(TAG_KEY);
                p
            }
        }
    }

    /// The key as stored in the bee (for use in a [`Batch`]).
    pub fn key(&self, key: impl AsRef<[u8]>) -> Vec<u8> {
        let mut k = self.own_prefix();
        k.extend_from_slice(key.as_ref());
        k
    }

    fn snapshot(&self) -> Snapshot {
        self.view.clone().unwrap_or_else(|| self.bee.snapshot())
    }

    fn writable(&self) -> Result<()> {
        if self.view.is_some() {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    fn strip(&self, mut e: Entry) -> Entry {
        let n = self.own_prefix().len().min(e.key.len());
        e.key.drain(..n);
        e
    }

    /// Maps a range of this sub's keys to the bee's keyspace.
    pub(crate) fn map_range(&self, r: &Range) -> Range {
        let Some(ns) = &self.ns else {
            return r.clone();
        };
        let own = self.own_prefix();
        let with = |k: &Vec<u8>| {
            let mut x = own.clone();
            x.extend_from_slice(k);
            x
        };
        let lower = match &r.lower {
            Bound::Unbounded => Bound::Included(own.clone()),
            Bound::Included(k) => Bound::Included(with(k)),
            Bound::Excluded(k) => Bound::Excluded(with(k)),
        };
        let upper = match &r.upper {
            Bound::Unbounded => match prefix_end(&own) {
                Some(end) => Bound::Excluded(end),
                None => Bound::Unbounded,
            },
            Bound::Included(k) => Bound::Included(with(k)),
            Bound::Excluded(k) => Bound::Excluded(with(k)),
        };
        debug_assert!(own.starts_with(ns));
        Range {
            lower,
            upper,
            reverse: r.reverse,
            limit: r.limit,
        }
    }

    /// The entry for `key`.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Entry>> {
        Ok(self
            .snapshot()
            .get(self.key(key))
            .await?
            .map(|e| self.strip(e)))
    }

    /// Puts `key`; returns the new version.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64> {
        self.writable()?;
        self.bee.put(self.key(key), value).await
    }

    /// Deletes `key`; returns the new version.
    pub async fn del(&self, key: impl AsRef<[u8]>) -> Result<u64> {
        self.writable()?;
        self.bee.del(self.key(key)).await
    }

    /// Compare-and-swap put (see [`Bee::put_cas`]).
    pub async fn put_cas(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        cas: impl FnOnce(Option<&Entry>) -> bool,
    ) -> Result<bool> {
        self.writable()?;
        let strip = self.own_prefix().len();
        self.bee
            .put_cas(self.key(key), value, |e| {
                let e = e.map(|e| {
                    let mut e = e.clone();
                    e.key.drain(..strip.min(e.key.len()));
                    e
                });
                cas(e.as_ref())
            })
            .await
    }

    /// Compare-and-swap delete (see [`Bee::del_cas`]).
    pub async fn del_cas(
        &self,
        key: impl AsRef<[u8]>,
        cas: impl FnOnce(&Entry) -> bool,
    ) -> Result<bool> {
        self.writable()?;
        let strip = self.own_prefix().len();
        self.bee
            .del_cas(self.key(key), |e| {
                let mut e = e.clone();
                e.key.drain(..strip.min(e.key.len()));
                cas(&e)
            })
            .await
    }

    /// The entries of this sub in `range` (keys without the prefix).
    pub fn range(&self, range: Range) -> RangeIter {
        let mut it = self.snapshot().range(self.map_range(&range));
        it.strip = self.own_prefix().len();
        it
    }

    /// The first entry of `range` (last, if reversed).
    pub async fn peek(&self, range: Range) -> Result<Option<Entry>> {
        self.range(range.limit(1)).next().await
    }

    /// Differences within this sub between two versions.
    pub async fn diff(&self, from: u64, to: u64, range: Range) -> Result<DiffIter> {
        let mut it = self.bee.diff(from, to, self.map_range(&range)).await?;
        it.strip = self.own_prefix().len();
        Ok(it)
    }

    /// A stream that yields when this sub's keys in `range` change.
    pub fn watch(&self, range: Range) -> impl Stream<Item = Result<Change>> + Send + 'static {
        self.bee.watch(self.map_range(&range))
    }
}
