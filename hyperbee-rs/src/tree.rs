//! The copy-on-write B+tree mutation logic, as a synchronous state machine.
//!
//! A batch owns a [`WorkTree`]: an arena of dirty (copied) nodes hanging off
//! the stored tree. Every operation either completes or stops with
//! [`Stop::Miss`] naming a stored node it needs before it can continue; the
//! async driver loads that node and runs the operation again. Stopping is
//! always safe: the only change made before a miss is copying stored nodes
//! into the arena, which does not change what the tree holds.
//!
//! [`WorkTree::finish`] lays the dirty nodes out into blocks, children before
//! parents, so every pointer points strictly backwards. This module does no
//! I/O and must never panic on a stored node it did not write itself.

use crate::cache::NodeCache;
use crate::error::CorruptError;
use crate::format::{encode_node, encode_op, BlockBuilder};
use crate::node::{separator, Bytes, Child, LeafValue, Node, Ptr, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Split a leaf above this many encoded bytes.
pub(crate) const LEAF_BYTES: usize = 2048;
/// Split an internal node above this many encoded bytes.
pub(crate) const BRANCH_BYTES: usize = 1024;
/// Blocks of a flush are filled up to about this many bytes.
pub(crate) const TARGET_BLOCK: usize = 16 * 1024;

/// Why an operation could not complete.
#[derive(Debug)]
pub(crate) enum Stop {
    /// This stored node must be loaded first.
    Miss(Ptr),
    /// A stored node is not a valid part of the tree.
    Corrupt(CorruptError),
}

/// The blocks of one flush, and what to cache once they are appended.
pub(crate) struct Flush {
    pub(crate) blocks: Vec<Vec<u8>>,
    pub(crate) root: Option<Ptr>,
    pub(crate) written: Vec<(Ptr, Arc<Node>)>,
    /// Stored nodes this flush rewrote: the new head no longer uses them.
    pub(crate) superseded: Vec<Ptr>,
}

/// One put (`Some` value) or del of a batch, in order.
pub(crate) type PendingOp = (Bytes, Option<Bytes>);

pub(crate) struct WorkTree {
    arena: Vec<Node>,
    root: Option<Child>,
    cache: Arc<NodeCache>,
    pinned: HashMap<Ptr, Arc<Node>>,
    /// Stored nodes copied into the arena (replaced by their copies).
    copied: Vec<Ptr>,
}

fn cap(n: &Node) -> usize {
    if n.is_leaf() {
        LEAF_BYTES
    } else {
        BRANCH_BYTES
    }
}

impl WorkTree {
    pub(crate) fn new(root: Option<Ptr>, cache: Arc<NodeCache>) -> Self {
        WorkTree {
            arena: Vec::new(),
            root: root.map(Child::Stored),
            cache,
            pinned: HashMap::new(),
            copied: Vec::new(),
        }
    }

    /// Keeps a loaded node for the rest of the batch (the shared cache may
    /// evict it at any time).
    pub(crate) fn pin(&mut self, ptr: Ptr, node: Arc<Node>) {
        self.pinned.insert(ptr, node);
    }

    fn lookup(&self, ptr: Ptr) -> Result<Arc<Node>, Stop> {
        if let Some(n) = self.pinned.get(&ptr) {
            return Ok(n.clone());
        }
        self.cache.get(&ptr).ok_or(Stop::Miss(ptr))
    }

    fn level_error(ptr: Ptr) -> Stop {
        Stop::Corrupt(CorruptError::Tree {
            seq: ptr.seq,
            what: "child level does not match its parent",
        })
    }

    fn dirty_root(&mut self) -> Result<Option<usize>, Stop> {
        match self.root {
            None => Ok(None),
            Some(Child::Dirty(i)) => Ok(Some(i)),
            Some(Child::Stored(p)) => {
                let n = self.lookup(p)?;
                self.arena.push(n.copy_for_edit());
                self.copied.push(p);
                let i = self.arena.len() - 1;
                self.root = Some(Child::Dirty(i));
                Ok(Some(i))
            }
        }
    }

    fn dirty_child(&mut self, parent: usize, i: usize) -> Result<usize, Stop> {
        let Some(&c) = self.arena[parent].children.get(i) else {
            return Err(Stop::Corrupt(CorruptError::Tree {
                seq: 0,
                what: "missing child",
            }));
        };
        match c {
            Child::Dirty(j) => Ok(j),
            Child::Stored(p) => {
                let n = self.lookup(p)?;
                if n.level.checked_add(1) != Some(self.arena[parent].level) {
                    return Err(Self::level_error(p));
                }
                self.arena.push(n.copy_for_edit());
                self.copied.push(p);
                let j = self.arena.len() - 1;
                self.arena[parent].children[i] = Child::Dirty(j);
                Ok(j)
            }
        }
    }

    /// Copies the path to `key` into the arena: (node, chosen child) pairs,
    /// root first, ending with the leaf.
    fn descend(&mut self, key: &[u8]) -> Result<Vec<(usize, usize)>, Stop> {
        let mut path = Vec::new();
        let Some(mut cur) = self.dirty_root()? else {
            return Ok(path);
        };
        loop {
            if self.arena[cur].is_leaf() {
                path.push((cur, 0));
                return Ok(path);
            }
            let ci = self.arena[cur].child_index(key);
            path.push((cur, ci));
            cur = self.dirty_child(cur, ci)?;
        }
    }

    /// The value of `key` as this batch sees it.
    pub(crate) fn find(&self, key: &[u8]) -> Result<Option<(Bytes, LeafValue)>, Stop> {
        let mut cur = match self.root {
            None => return Ok(None),
            Some(c) => c,
        };
        let mut parent_level: Option<u8> = None;
        loop {
            let stored;
            let node: &Node = match cur {
                Child::Dirty(i) => &self.arena[i],
                Child::Stored(p) => {
                    stored = self.lookup(p)?;
                    if let Some(pl) = parent_level {
                        if stored.level.checked_add(1) != Some(pl) {
                            return Err(Self::level_error(p));
                        }
                    }
                    &stored
                }
            };
            if node.is_leaf() {
                return Ok(node
                    .search(key)
                    .ok()
                    .map(|i| (node.keys[i].clone(), node.vals[i].clone())));
            }
            parent_level = Some(node.level);
            match node.children.get(node.child_index(key)) {
                Some(c) => cur = *c,
                None => return Ok(None),
            }
        }
    }

    pub(crate) fn put(&mut self, key: Bytes, val: LeafValue) -> Result<(), Stop> {
        let path = self.descend(&key)?;
        let Some(&(leaf, _)) = path.last() else {
            let mut n = Node::leaf();
            n.bytes += Node::leaf_entry_size(&key, &val);
            n.keys.push(key);
            n.vals.push(val);
            self.arena.push(n);
            self.root = Some(Child::Dirty(self.arena.len() - 1));
            return Ok(());
        };
        let n = &mut self.arena[leaf];
        match n.search(&key) {
            Ok(i) => {
                n.bytes += Node::leaf_entry_size(&key, &val);
                n.bytes -= Node::leaf_entry_size(&n.keys[i], &n.vals[i]);
                n.vals[i] = val;
            }
            Err(i) => {
                n.bytes += Node::leaf_entry_size(&key, &val);
                n.keys.insert(i, key);
                n.vals.insert(i, val);
            }
        }
        self.fix_up(&path);
        Ok(())
    }

    /// Removes `key`; returns whether it was there.
    pub(crate) fn del(&mut self, key: &[u8]) -> Result<bool, Stop> {
        let path = self.descend(key)?;
        let Some(&(leaf, _)) = path.last() else {
            return Ok(false);
        };
        let Ok(i) = self.arena[leaf].search(key) else {
            return Ok(false);
        };
        // Load the siblings a rebalance may need before changing anything.
        let n = &self.arena[leaf];
        let mut may = n.size() - Node::leaf_entry_size(&n.keys[i], &n.vals[i]) < cap(n) / 4;
        for depth in (1..path.len()).rev() {
            if !may {
                break;
            }
            let (p, pos) = path[depth - 1];
            let count = self.arena[p].children.len();
            let sib = if pos + 1 < count {
                pos + 1
            } else if pos > 0 {
                pos - 1
            } else {
                break;
            };
            self.dirty_child(p, sib)?;
            let pn = &self.arena[p];
            let biggest = pn.keys.iter().map(|k| Node::sep_size(k)).max().unwrap_or(0);
            may = pn.size() - biggest < cap(pn) / 4;
        }
        let n = &mut self.arena[leaf];
        n.bytes -= Node::leaf_entry_size(&n.keys[i], &n.vals[i]);
        n.keys.remove(i);
        n.vals.remove(i);
        self.fix_up(&path);
        Ok(true)
    }

    fn too_big(&self, i: usize) -> bool {
        let n = &self.arena[i];
        let splittable = if n.is_leaf() {
            n.keys.len() >= 2
        } else {
            n.keys.len() >= 3
        };
        splittable && n.size() > cap(n)
    }

    /// Splits node `i` once, by bytes; returns the separator and the new right node.
    fn split_once(&mut self, i: usize) -> Option<(Bytes, usize)> {
        let n = &mut self.arena[i];
        let half = n.size() / 2;
        let mut acc = 0;
        let right = if n.is_leaf() {
            if n.keys.len() < 2 {
                return None;
            }
            let mut at = n.keys.len() - 1;
            for (k, (key, v)) in n.keys.iter().zip(&n.vals).enumerate() {
                acc += Node::leaf_entry_size(key, v);
                if acc >= half {
                    at = k + 1;
                    break;
                }
            }
            let at = at.clamp(1, n.keys.len() - 1);
            let keys = n.keys.split_off(at);
            let vals = n.vals.split_off(at);
            let sep = separator(&n.keys[at - 1], &keys[0]);
            (
                sep,
                Node {
                    level: 0,
                    keys,
                    vals,
                    children: Vec::new(),
                    bytes: 0,
                },
            )
        } else {
            if n.keys.len() < 3 {
                return None;
            }
            let mut m = n.keys.len() - 2;
            for (k, key) in n.keys.iter().enumerate() {
                acc += Node::sep_size(key);
                if acc >= half {
                    m = k;
                    break;
                }
            }
            let m = m.clamp(1, n.keys.len() - 2);
            let keys = n.keys.split_off(m + 1);
            let children = n.children.split_off(m + 1);
            let sep = n.keys.pop()?;
            (
                sep,
                Node {
                    level: n.level,
                    keys,
                    vals: Vec::new(),
                    children,
                    bytes: 0,
                },
            )
        };
        n.recompute();
        let (sep, mut node) = right;
        node.recompute();
        self.arena.push(node);
        Some((sep, self.arena.len() - 1))
    }

    /// Splits node `i` until every piece fits: the new pieces to its right.
    fn split_all(&mut self, i: usize) -> Vec<(Bytes, usize)> {
        let mut pieces: Vec<(Option<Bytes>, usize)> = vec![(None, i)];
        let mut k = 0;
        while k < pieces.len() {
            let j = pieces[k].1;
            if self.too_big(j) {
                if let Some((sep, r)) = self.split_once(j) {
                    pieces.insert(k + 1, (Some(sep), r));
                    continue;
                }
            }
            k += 1;
        }
        pieces
            .into_iter()
            .filter_map(|(s, j)| s.map(|s| (s, j)))
            .collect()
    }

    /// Restores node sizes along a changed path, bottom up.
    fn fix_up(&mut self, path: &[(usize, usize)]) {
        for depth in (0..path.len()).rev() {
            let (i, _) = path[depth];
            let parent = depth.checked_sub(1).map(|d| path[d]);
            if self.too_big(i) {
                let pieces = self.split_all(i);
                match parent {
                    Some((p, pos)) => {
                        let pn = &mut self.arena[p];
                        for (k, (sep, j)) in pieces.into_iter().enumerate() {
                            pn.keys.insert(pos + k, sep);
                            pn.children.insert(pos + 1 + k, Child::Dirty(j));
                        }
                        pn.recompute();
                    }
                    None => {
                        let level = self.arena[i].level.saturating_add(1);
                        let mut root = Node {
                            level,
                            keys: Vec::new(),
                            vals: Vec::new(),
                            children: vec![Child::Dirty(i)],
                            bytes: 0,
                        };
                        for (sep, j) in pieces {
                            root.keys.push(sep);
                            root.children.push(Child::Dirty(j));
                        }
                        root.recompute();
                        self.arena.push(root);
                        self.root = Some(Child::Dirty(self.arena.len() - 1));
                    }
                }
            } else if let Some((p, pos)) = parent {
                let n = &self.arena[i];
                if n.keys.is_empty() && n.is_leaf() {
                    self.remove_child(p, pos);
                } else if n.size() < cap(n) / 4 {
                    // Best effort: a sibling that is not loaded leaves the node
                    // underfull, which costs space, never correctness.
                    let _ = self.rebalance(p, pos);
                }
            }
        }
        // Collapse a root that lost its keys.
        while let Some(Child::Dirty(r)) = self.root {
            let n = &self.arena[r];
            if n.keys.is_empty() {
                self.root = if n.is_leaf() {
                    None
                } else {
                    n.children.first().copied()
                };
            } else {
                break;
            }
        }
    }

    fn remove_child(&mut self, p: usize, pos: usize) {
        let pn = &mut self.arena[p];
        if pn.children.len() < 2 || pos >= pn.children.len() {
            return;
        }
        pn.children.remove(pos);
        pn.keys.remove(pos.saturating_sub(1).min(pn.keys.len() - 1));
        pn.recompute();
    }

    /// Merges child `pos` of `p` with a sibling, or evens the two out.
    fn rebalance(&mut self, p: usize, pos: usize) -> Result<(), Stop> {
        let count = self.arena[p].children.len();
        if count < 2 || pos >= count {
            return Ok(());
        }
        let l = if pos + 1 < count { pos } else { pos - 1 };
        let li = self.dirty_child(p, l)?;
        let ri = self.dirty_child(p, l + 1)?;
        if self.arena[li].level != self.arena[ri].level {
            return Ok(());
        }
        let sep = self.arena[p].keys.remove(l);
        self.arena[p].children.remove(l + 1);
        let right = std::mem::replace(&mut self.arena[ri], Node::leaf());
        let left = &mut self.arena[li];
        if !left.is_leaf() {
            left.keys.push(sep);
        }
        left.keys.extend(right.keys);
        left.vals.extend(right.vals);
        left.children.extend(right.children);
        left.recompute();
        let pieces = self.split_all(li);
        let pn = &mut self.arena[p];
        for (k, (sep, j)) in pieces.into_iter().enumerate() {
            pn.keys.insert(l + k, sep);
            pn.children.insert(l + 1 + k, Child::Dirty(j));
        }
        pn.recompute();
        Ok(())
    }

    /// Lays out the batch: `ops` first, then every dirty node children
    /// first. Block `k` of the result will be block `base + k` of the core.
    pub(crate) fn finish(mut self, base: u64, ops: &[PendingOp]) -> Flush {
        let mut done: Vec<BlockBuilder> = Vec::new();
        let mut cur = BlockBuilder::default();
        let make_room = |done: &mut Vec<BlockBuilder>, cur: &mut BlockBuilder, size: usize| {
            if cur.size > 0 && cur.size + size > TARGET_BLOCK {
                done.push(std::mem::take(cur));
            }
        };
        let mut op_loc = Vec::with_capacity(ops.len());
        let mut tmp = Vec::new();
        for (key, value) in ops {
            tmp.clear();
            encode_op(&mut tmp, key, value.as_deref());
            make_room(&mut done, &mut cur, tmp.len());
            op_loc.push((done.len(), cur.nops as u32));
            cur.ops.extend_from_slice(&tmp);
            cur.nops += 1;
            cur.size += tmp.len();
        }
        let mut final_ptr: Vec<Option<Ptr>> = vec![None; self.arena.len()];
        let mut written = Vec::with_capacity(self.arena.len());
        let root = match self.root {
            None => None,
            Some(Child::Stored(p)) => Some(p),
            Some(Child::Dirty(r)) => {
                let mut stack: Vec<(usize, usize)> = vec![(r, 0)];
                while let Some(&(i, c)) = stack.last() {
                    let node = &self.arena[i];
                    let next = (c..node.children.len()).find_map(|k| match node.children[k] {
                        Child::Dirty(j) if final_ptr[j].is_none() => Some((k, j)),
                        _ => None,
                    });
                    if let Some((k, j)) = next {
                        if let Some(top) = stack.last_mut() {
                            top.1 = k + 1;
                        }
                        stack.push((j, 0));
                        continue;
                    }
                    stack.pop();
                    let mut out = std::mem::replace(&mut self.arena[i], Node::leaf());
                    for c in out.children.iter_mut() {
                        if let Child::Dirty(j) = *c {
                            // Children come first in this order, so the pointer is set.
                            *c = Child::Stored(final_ptr[j].unwrap_or(Ptr { seq: 0, slot: 0 }));
                        }
                    }
                    for v in out.vals.iter_mut() {
                        if let Value::Pending { op, len } = v.value {
                            let (b, k) = op_loc.get(op as usize).copied().unwrap_or((0, 0));
                            v.value = Value::Ref {
                                seq: base + b as u64,
                                op: k,
                                len,
                            };
                        }
                    }
                    out.recompute();
                    make_room(&mut done, &mut cur, out.size());
                    let own = Ptr {
                        seq: base + done.len() as u64,
                        slot: cur.nodes.len() as u32,
                    };
                    // The size estimate is exact but for pointers (at most
                    // ~20 bytes each, estimated at 5).
                    let mut buf = Vec::with_capacity(out.size() + 16 * out.children.len() + 8);
                    encode_node(&out, own, &mut buf);
                    cur.size += buf.len() + 3;
                    cur.nodes.push(buf);
                    final_ptr[i] = Some(own);
                    written.push((own, Arc::new(out)));
                }
                final_ptr[r]
            }
        };
        done.push(cur);
        let last = done.len() - 1;
        let blocks = done
            .iter()
            .enumerate()
            .map(|(k, b)| b.encode(base + k as u64, k == last, root))
            .collect();
        Flush {
            blocks,
            root,
            written,
            superseded: self.copied,
        }
    }
}
