//! Reading a tree at a fixed version: node loading (through the cache), point
//! lookups, range cursors, the diff walk and the history walk.
//!
//! Every reader is pinned to a root pointer, and blocks never change once
//! appended, so a reader sees one version whatever is appended meanwhile.
//! Every walk terminates: child pointers point strictly backwards and each
//! child's level is its parent's minus one, both checked on load.

use crate::cache::NodeCache;
use crate::error::{CorruptError, Error, Result};
use crate::format::{parse_block, Block};
use crate::node::{Child, LeafValue, Node, Ptr, Value};
use hypercore_rs::Core;
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

/// One key and its value, as stored at some version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The first block of the flush that wrote this value.
    pub seq: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

/// A key whose value differs between two versions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Diff {
    /// The key.
    pub key: Vec<u8>,
    /// The entry at the older (`from`) version, if the key existed.
    pub old: Option<Entry>,
    /// The entry at the newer (`to`) version, if the key exists.
    pub new: Option<Entry>,
}

/// One put or del, as recorded in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// The block that records the operation.
    pub seq: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The value put, or `None` for a del.
    pub value: Option<Vec<u8>>,
}

/// Which keys a range read visits, in which order, and how many.
///
/// ```
/// use hyperbee_rs::Range;
/// let r = Range::all().gte(b"a").lt(b"m").reverse().limit(10);
/// assert!(r.contains(b"b") && !r.contains(b"m"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub(crate) lower: Bound<Vec<u8>>,
    pub(crate) upper: Bound<Vec<u8>>,
    pub(crate) reverse: bool,
    pub(crate) limit: Option<usize>,
}

impl Default for Range {
    fn default() -> Self {
        Self::all()
    }
}

impl Range {
    /// Every key, ascending, no limit.
    pub fn all() -> Self {
        Range {
            lower: Bound::Unbounded,
            upper: Bound::Unbounded,
            reverse: false,
            limit: None,
        }
    }
    /// Keys strictly greater than `k` (replaces any lower bound).
    pub fn gt(mut self, k: impl AsRef<[u8]>) -> Self {
        self.lower = Bound::Excluded(k.as_ref().to_vec());
        self
    }
    /// Keys greater than or equal to `k` (replaces any lower bound).
    pub fn gte(mut self, k: impl AsRef<[u8]>) -> Self {
        self.lower = Bound::Included(k.as_ref().to_vec());
        self
    }
    /// Keys strictly less than `k` (replaces any upper bound).
    pub fn lt(mut self, k: impl AsRef<[u8]>) -> Self {
        self.upper = Bound::Excluded(k.as_ref().to_vec());
        self
    }
    /// Keys less than or equal to `k` (replaces any upper bound).
    pub fn lte(mut self, k: impl AsRef<[u8]>) -> Self {
        self.upper = Bound::Included(k.as_ref().to_vec());
        self
    }
    /// Every key starting with `prefix`.
    pub fn prefix(self, prefix: impl AsRef<[u8]>) -> Self {
        let p = prefix.as_ref();
        let r = self.gte(p);
        match prefix_end(p) {
            Some(end) => r.lt(end),
            None => Range {
                upper: Bound::Unbounded,
                ..r
            },
        }
    }
    /// Descending order.
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }
    /// At most `n` entries.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }
    /// Whether `key` lies within the bounds.
    pub fn contains(&self, key: &[u8]) -> bool {
        !below(&self.lower, key) && !above(&self.upper, key)
    }
}

/// The smallest key greater than every key starting with `p`, if any.
pub(crate) fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `key` is below the lower bound.
pub(crate) fn below(lower: &Bound<Vec<u8>>, key: &[u8]) -> bool {
    match lower {
        Bound::Unbounded => false,
        Bound::Included(k) => key < k.as_slice(),
        Bound::Excluded(k) => key <= k.as_slice(),
    }
}

/// `key` is above the upper bound.
pub(crate) fn above(upper: &Bound<Vec<u8>>, key: &[u8]) -> bool {
    match upper {
        Bound::Unbounded => false,
        Bound::Included(k) => key > k.as_slice(),
        Bound::Excluded(k) => key >= k.as_slice(),
    }
}

/// Loads nodes and values of one core through the shared cache.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) core: Core,
    pub(crate) cache: Arc<NodeCache>,
    /// Fetch blocks missing locally from peers, waiting at most this long.
    pub(crate) remote: Option<std::time::Duration>,
}

impl Store {
    pub(crate) async fn block(&self, seq: u64) -> Result<Vec<u8>> {
        if let Some(b) = self.core.get(seq).await? {
            return Ok(b);
        }
        match self.remote {
            // Sparse read: only the blocks on the path are fetched, verified.
            Some(t) => self
                .core
                .get_with(seq, hypercore_rs::GetOptions::wait_for(t))
                .await?
                .ok_or(Error::BlockNotAvailable(seq)),
            None => Err(Error::BlockNotAvailable(seq)),
        }
    }

    /// The node at `ptr`, decoded once and then served from the cache.
    pub(crate) async fn node(&self, ptr: Ptr) -> Result<Arc<Node>> {
        if let Some(n) = self.cache.get(&ptr) {
            return Ok(n);
        }
        let buf = self.block(ptr.seq).await?;
        let node = match parse_block(ptr.seq, &buf)? {
            Block::Tree(t) => t.node(ptr.slot)?,
            Block::Header => {
                return Err(CorruptError::BadPointer {
                    seq: ptr.seq,
                    what: "points at the header",
                }
                .into())
            }
        };
        let node = Arc::new(node);
        self.cache.insert(ptr, node.clone());
        Ok(node)
    }

    /// Child `i` of `parent`, checked to be one level below it.
    pub(crate) async fn child(&self, parent: &Node, i: usize) -> Result<Arc<Node>> {
        let Some(Child::Stored(p)) = parent.children.get(i).copied() else {
            return Err(CorruptError::Tree {
                seq: 0,
                what: "missing child",
            }
            .into());
        };
        let n = self.node(p).await?;
        if n.level.checked_add(1) != Some(parent.level) {
            return Err(CorruptError::Tree {
                seq: p.seq,
                what: "child level does not match its parent",
            }
            .into());
        }
        Ok(n)
    }

    /// The root of the tree at `version` (a core length).
    pub(crate) async fn root_at(&self, version: u64) -> Result<Option<Ptr>> {
        if version <= 1 {
            return Ok(None);
        }
        let buf = self.block(version - 1).await?;
        match parse_block(version - 1, &buf)? {
            Block::Header => Ok(None),
            Block::Tree(t) if t.end => Ok(t.root),
            Block::Tree(_) => Err(Error::NotAVersion(version)),
        }
    }

    pub(crate) async fn value(&self, v: &LeafValue) -> Result<Vec<u8>> {
        match &v.value {
            Value::Inline(b) => Ok(b.to_vec()),
            Value::Ref { seq, op, len } => {
                let bad = |what| CorruptError::BadPointer { seq: *seq, what };
                let buf = self.block(*seq).await?;
                let Block::Tree(t) = parse_block(*seq, &buf)? else {
                    return Err(bad("value ref points at the header").into());
                };
                let rec = t.op(*op)?.ok_or(bad("value ref names no op"))?;
                match rec.value {
                    Some(v) if v.len() == *len as usize => Ok(v),
                    _ => Err(bad("value ref names no matching put").into()),
                }
            }
            Value::Pending { .. } => Err(CorruptError::Invalid {
                seq: v.seq,
                what: "unwritten value",
            }
            .into()),
        }
    }

    pub(crate) async fn entry(&self, key: &[u8], v: &LeafValue) -> Result<Entry> {
        Ok(Entry {
            seq: v.seq,
            key: key.to_vec(),
            value: self.value(v).await?,
        })
    }

    /// Point lookup at the tree rooted at `root`.
    pub(crate) async fn get(&self, root: Option<Ptr>, key: &[u8]) -> Result<Option<Entry>> {
        let Some(root) = root else {
            return Ok(None);
        };
        let mut node = self.node(root).await?;
        while !node.is_leaf() {
            let i = node.child_index(key);
            node = self.child(&node, i).await?;
        }
        match node.search(key) {
            Ok(i) => Ok(Some(self.entry(key, &node.vals[i]).await?)),
            Err(_) => Ok(None),
        }
    }
}

/// An ordered walk over the entries of one version within bounds.
pub(crate) struct Cursor {
    store: Store,
    root: Option<Ptr>,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    /// Forward: internal frames name the child being visited, leaf frames the
    /// next entry. Reverse: leaf frames count the entries still to visit.
    stack: Vec<(Arc<Node>, usize)>,
    started: bool,
    done: bool,
}

impl Cursor {
    pub(crate) fn new(store: Store, root: Option<Ptr>, range: &Range) -> Self {
        Cursor {
            store,
            root,
            lower: range.lower.clone(),
            upper: range.upper.clone(),
            reverse: range.reverse,
            stack: Vec::new(),
            started: false,
            done: false,
        }
    }

    async fn seek(&mut self) -> Result<()> {
        let Some(root) = self.root else {
            self.done = true;
            return Ok(());
        };
        let mut node = self.store.node(root).await?;
        loop {
            if node.is_leaf() {
                let keys = &node.keys;
                let i = if !self.reverse {
                    match &self.lower {
                        Bound::Unbounded => 0,
                        Bound::Included(k) => keys.partition_point(|x| **x < **k),
                        Bound::Excluded(k) => keys.partition_point(|x| **x <= **k),
                    }
                } else {
                    match &self.upper {
                        Bound::Unbounded => keys.len(),
                        Bound::Included(k) => keys.partition_point(|x| **x <= **k),
                        Bound::Excluded(k) => keys.partition_point(|x| **x < **k),
                    }
                };
                self.stack.push((node, i));
                return Ok(());
            }
            let bound = if self.reverse {
                &self.upper
            } else {
                &self.lower
            };
            let ci = match bound {
                Bound::Unbounded if self.reverse => node.children.len().saturating_sub(1),
                Bound::Unbounded => 0,
                Bound::Included(k) | Bound::Excluded(k) => node.child_index(k),
            };
            let child = self.store.child(&node, ci).await?;
            self.stack.push((node, ci));
            node = child;
        }
    }

    /// Pushes the edge path of child `ci` of `node` (leftmost, or rightmost in reverse).
    async fn descend(&mut self, mut node: Arc<Node>, mut ci: usize) -> Result<()> {
        loop {
            let child = self.store.child(&node, ci).await?;
            self.stack.push((node, ci));
            if child.is_leaf() {
                let start = if self.reverse { child.keys.len() } else { 0 };
                self.stack.push((child, start));
                return Ok(());
            }
            ci = if self.reverse {
                child.children.len().saturating_sub(1)
            } else {
                0
            };
            node = child;
        }
    }

    /// The next key and value reference.
    pub(crate) async fn next_raw(&mut self) -> Result<Option<(Arc<Node>, usize)>> {
        if self.done {
            return Ok(None);
        }
        if !self.started {
            self.started = true;
            self.seek().await?;
        }
        while let Some((node, idx)) = self.stack.pop() {
            if node.is_leaf() {
                if !self.reverse && idx < node.keys.len() {
                    if above(&self.upper, &node.keys[idx]) {
                        break;
                    }
                    self.stack.push((node.clone(), idx + 1));
                    return Ok(Some((node, idx)));
                }
                if self.reverse && idx > 0 && idx <= node.keys.len() {
                    if below(&self.lower, &node.keys[idx - 1]) {
                        break;
                    }
                    self.stack.push((node.clone(), idx - 1));
                    return Ok(Some((node, idx - 1)));
                }
                continue;
            }
            let next = if self.reverse {
                idx.checked_sub(1)
            } else {
                Some(idx + 1).filter(|&n| n < node.children.len())
            };
            if let Some(ci) = next {
                self.descend(node, ci).await?;
            }
        }
        self.done = true;
        self.stack.clear();
        Ok(None)
    }

    pub(crate) async fn next(&mut self) -> Result<Option<Entry>> {
        match self.next_raw().await? {
            None => Ok(None),
            Some((node, i)) => Ok(Some(self.store.entry(&node.keys[i], &node.vals[i]).await?)),
        }
    }
}

/// One side of a diff walk: frames name the next child or entry to visit.
struct DiffSide {
    stack: Vec<(Arc<Node>, usize)>,
    upper: Bound<Vec<u8>>,
}

enum Item {
    Child(Ptr, u8),
    Entry(Arc<Node>, usize),
    End,
}

impl DiffSide {
    async fn new(store: &Store, root: Option<Ptr>, range: &Range) -> Result<Self> {
        let mut side = DiffSide {
            stack: Vec::new(),
            upper: range.upper.clone(),
        };
        let Some(root) = root else {
            return Ok(side);
        };
        let mut node = store.node(root).await?;
        match &range.lower {
            Bound::Unbounded => side.stack.push((node, 0)),
            Bound::Included(k) | Bound::Excluded(k) => loop {
                if node.is_leaf() {
                    let i = node.keys.partition_point(|x| below(&range.lower, x));
                    side.stack.push((node, i));
                    break;
                }
                let ci = node.child_index(k);
                let child = store.child(&node, ci).await?;
                side.stack.push((node, ci + 1));
                node = child;
            },
        }
        Ok(side)
    }

    fn peek(&mut self) -> Item {
        while let Some((node, idx)) = self.stack.last() {
            if node.is_leaf() {
                if let Some(k) = node.keys.get(*idx) {
                    if above(&self.upper, k) {
                        self.stack.clear();
                        return Item::End;
                    }
                    return Item::Entry(node.clone(), *idx);
                }
            } else if let Some(Child::Stored(p)) = node.children.get(*idx) {
                let beyond = idx
                    .checked_sub(1)
                    .and_then(|s| node.keys.get(s))
                    .is_some_and(|k| above(&self.upper, k));
                if beyond {
                    self.stack.clear();
                    return Item::End;
                }
                return Item::Child(*p, node.level.saturating_sub(1));
            }
            self.stack.pop();
        }
        Item::End
    }

    fn skip(&mut self) {
        if let Some(top) = self.stack.last_mut() {
            top.1 += 1;
        }
    }

    async fn descend(&mut self, store: &Store) -> Result<()> {
        let Some((node, idx)) = self.stack.last().cloned() else {
            return Ok(());
        };
        let child = store.child(&node, idx).await?;
        self.skip();
        self.stack.push((child, 0));
        Ok(())
    }
}

/// Walks two versions together, skipping every subtree they share.
pub(crate) struct DiffWalk {
    store: Store,
    old: DiffSide,
    new: DiffSide,
}

impl DiffWalk {
    pub(crate) async fn new(
        store: Store,
        old: Option<Ptr>,
        new: Option<Ptr>,
        range: &Range,
    ) -> Result<Self> {
        let (old, new) = if old == new {
            (
                DiffSide::new(&store, None, range).await?,
                DiffSide::new(&store, None, range).await?,
            )
        } else {
            (
                DiffSide::new(&store, old, range).await?,
                DiffSide::new(&store, new, range).await?,
            )
        };
        Ok(DiffWalk { store, old, new })
    }

    pub(crate) async fn next(&mut self) -> Result<Option<Diff>> {
        loop {
            match (self.old.peek(), self.new.peek()) {
                (Item::End, Item::End) => return Ok(None),
                (Item::Child(a, la), Item::Child(b, lb)) => {
                    if a == b {
                        self.old.skip();
                        self.new.skip();
                        continue;
                    }
                    if la >= lb {
                        self.old.descend(&self.store).await?;
                    }
                    if lb >= la {
                        self.new.descend(&self.store).await?;
                    }
                }
                (Item::Child(..), _) => self.old.descend(&self.store).await?,
                (_, Item::Child(..)) => self.new.descend(&self.store).await?,
                (Item::Entry(n, i), Item::End) => {
                    self.old.skip();
                    let old = self.store.entry(&n.keys[i], &n.vals[i]).await?;
                    return Ok(Some(Diff {
                        key: old.key.clone(),
                        old: Some(old),
                        new: None,
                    }));
                }
                (Item::End, Item::Entry(n, i)) => {
                    self.new.skip();
                    let new = self.store.entry(&n.keys[i], &n.vals[i]).await?;
                    return Ok(Some(Diff {
                        key: new.key.clone(),
                        old: None,
                        new: Some(new),
                    }));
                }
                (Item::Entry(a, i), Item::Entry(b, j)) => match a.keys[i].cmp(&b.keys[j]) {
                    Ordering::Less => {
                        self.old.skip();
                        let old = self.store.entry(&a.keys[i], &a.vals[i]).await?;
                        return Ok(Some(Diff {
                            key: old.key.clone(),
                            old: Some(old),
                            new: None,
                        }));
                    }
                    Ordering::Greater => {
                        self.new.skip();
                        let new = self.store.entry(&b.keys[j], &b.vals[j]).await?;
                        return Ok(Some(Diff {
                            key: new.key.clone(),
                            old: None,
                            new: Some(new),
                        }));
                    }
                    Ordering::Equal => {
                        self.old.skip();
                        self.new.skip();
                        let (va, vb) = (&a.vals[i], &b.vals[j]);
                        let same_ref = match (&va.value, &vb.value) {
                            (
                                Value::Ref {
                                    seq: s1, op: o1, ..
                                },
                                Value::Ref {
                                    seq: s2, op: o2, ..
                                },
                            ) => s1 == s2 && o1 == o2,
                            _ => false,
                        };
                        if same_ref && va.seq == vb.seq {
                            continue;
                        }
                        let old = self.store.entry(&a.keys[i], va).await?;
                        let new = self.store.entry(&b.keys[j], vb).await?;
                        if old.value == new.value {
                            continue;
                        }
                        return Ok(Some(Diff {
                            key: old.key.clone(),
                            old: Some(old),
                            new: Some(new),
                        }));
                    }
                },
            }
        }
    }
}

/// Walks the ops recorded in blocks `[start, end)`.
pub(crate) struct HistoryWalk {
    store: Store,
    next_seq: u64,
    end: u64,
    start: u64,
    reverse: bool,
    buf: VecDeque<HistoryEntry>,
}

impl HistoryWalk {
    pub(crate) fn new(store: Store, start: u64, end: u64, reverse: bool) -> Self {
        let start = start.max(1);
        HistoryWalk {
            store,
            next_seq: if reverse { end } else { start },
            end,
            start,
            reverse,
            buf: VecDeque::new(),
        }
    }

    pub(crate) async fn next(&mut self) -> Result<Option<HistoryEntry>> {
        loop {
            let item = if self.reverse {
                self.buf.pop_back()
            } else {
                self.buf.pop_front()
            };
            if let Some(e) = item {
                return Ok(Some(e));
            }
            let seq = if self.reverse {
                if self.next_seq <= self.start {
                    return Ok(None);
                }
                self.next_seq -= 1;
                self.next_seq
            } else {
                if self.next_seq >= self.end {
                    return Ok(None);
                }
                self.next_seq += 1;
                self.next_seq - 1
            };
            let buf = self.store.block(seq).await?;
            if let Block::Tree(t) = parse_block(seq, &buf)? {
                for op in t.ops()? {
                    self.buf.push_back(HistoryEntry {
                        seq,
                        key: op.key,
                        value: op.value,
                    });
                }
            }
        }
    }
}
