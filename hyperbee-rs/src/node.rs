//! The in-memory shape of a B+tree node, shared by decoded (immutable, cached)
//! nodes and the dirty nodes of a batch being built.
//!
//! Nothing here reads storage; sizes computed here drive splits and merges and
//! must match the encoder in `format` closely enough that a node written by
//! the tree never exceeds what the decoder accepts.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Byte strings up to this long are stored inline in [`Bytes`]: no pointer
/// to chase in a binary search, no reference count to touch on clone or drop.
const INLINE_BYTES: usize = 22;

/// A cheap-to-clone byte string: short ones inline, longer ones a slice of
/// a shared buffer (a decoded node's bytes, or a caller's value).
#[derive(Clone)]
pub(crate) enum Bytes {
    Inline {
        len: u8,
        data: [u8; INLINE_BYTES],
    },
    Shared {
        buf: Arc<[u8]>,
        start: usize,
        end: usize,
    },
}

impl Bytes {
    fn inline(data: &[u8]) -> Option<Bytes> {
        if data.len() > INLINE_BYTES {
            return None;
        }
        let mut d = [0u8; INLINE_BYTES];
        d[..data.len()].copy_from_slice(data);
        Some(Bytes::Inline {
            len: data.len() as u8,
            data: d,
        })
    }

    pub(crate) fn copy_from(data: &[u8]) -> Bytes {
        Self::inline(data).unwrap_or_else(|| Bytes::Shared {
            buf: Arc::from(data),
            start: 0,
            end: data.len(),
        })
    }

    /// A slice `[start, end)` of `buf`; the caller has checked the bounds.
    pub(crate) fn slice_of(buf: &Arc<[u8]>, start: usize, end: usize) -> Bytes {
        debug_assert!(start <= end && end <= buf.len());
        let whole = buf.get(start..end).unwrap_or_default();
        Self::inline(whole).unwrap_or_else(|| Bytes::Shared {
            buf: buf.clone(),
            start,
            end,
        })
    }
}

impl Bytes {
    /// Appends the bytes to `out`. Inline strings are copied as their fixed
    /// array then cut back, which compiles to a couple of moves instead of
    /// a `memcpy` call per key (node encoding copies hundreds per put).
    pub(crate) fn append_to(&self, out: &mut Vec<u8>) {
        match self {
            Bytes::Inline { len, data } => {
                let at = out.len();
                out.extend_from_slice(data);
                out.truncate(at + (*len as usize).min(INLINE_BYTES));
            }
            Bytes::Shared { .. } => out.extend_from_slice(self),
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, data } => &data[..(*len as usize).min(INLINE_BYTES)],
            Bytes::Shared { buf, start, end } => buf.get(*start..*end).unwrap_or_default(),
        }
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &**self)
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
impl Eq for Bytes {}

/// Where a node lives: the block that holds it and its slot in that block.
/// Pointers inside the tree always point strictly backwards in this order,
/// which is what makes cycles impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Ptr {
    pub(crate) seq: u64,
    pub(crate) slot: u32,
}

/// A leaf value: inline, or a reference to the op (in the same flush) that
/// holds a large value.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Inline(Bytes),
    /// The `op`-th op of block `seq` holds the value (`len` bytes).
    Ref {
        seq: u64,
        op: u32,
        len: u32,
    },
    /// Not written yet: the `op`-th op of the batch being built.
    Pending {
        op: u32,
        len: u32,
    },
}

/// A leaf entry's payload: the version that wrote it and its value.
#[derive(Clone, Debug)]
pub(crate) struct LeafValue {
    pub(crate) seq: u64,
    pub(crate) value: Value,
}

/// A child of an internal node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Child {
    Stored(Ptr),
    /// Index into the arena of the batch being built.
    Dirty(usize),
}

/// A B+tree node. Leaves (`level == 0`) hold `keys` and `vals` (same length);
/// internal nodes hold separator `keys` and `children` (`keys.len() + 1`),
/// child `i` holding the keys `k` with `keys[i-1] <= k < keys[i]`.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) level: u8,
    pub(crate) keys: Vec<Bytes>,
    pub(crate) vals: Vec<LeafValue>,
    pub(crate) children: Vec<Child>,
    /// The estimated encoded size, kept up to date by every mutation (see
    /// [`Node::recompute`]): splits are decided on it, per operation.
    pub(crate) bytes: usize,
}

/// Bytes of a LEB128 varint.
pub(crate) fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Estimated encoded size of a child pointer (exact once written; dirty
/// children are estimated generously).
const PTR_ESTIMATE: usize = 5;
/// Fixed part of a node: level byte and key count.
pub(crate) const NODE_OVERHEAD: usize = 4;

impl Node {
    pub(crate) fn leaf() -> Node {
        Node {
            level: 0,
            keys: Vec::new(),
            vals: Vec::new(),
            children: Vec::new(),
            bytes: NODE_OVERHEAD,
        }
    }

    /// A copy to be edited in a batch: room for a few more entries, so the
    /// insert (and a split's separator) that follows does not reallocate.
    pub(crate) fn copy_for_edit(&self) -> Node {
        fn with_room<T: Clone>(v: &[T]) -> Vec<T> {
            let mut out = Vec::with_capacity(v.len() + 2);
            out.extend_from_slice(v);
            out
        }
        Node {
            level: self.level,
            keys: with_room(&self.keys),
            vals: with_room(&self.vals),
            children: with_room(&self.children),
            bytes: self.bytes,
        }
    }

    pub(crate) fn is_leaf(&self) -> bool {
        self.level == 0
    }

    pub(crate) fn leaf_entry_size(key: &[u8], v: &LeafValue) -> usize {
        let value = match &v.value {
            Value::Inline(b) => varint_len(b.len() as u64) + b.len(),
            Value::Ref { .. } | Value::Pending { .. } => 12,
        };
        varint_len(key.len() as u64) + key.len() + varint_len(v.seq) + 1 + value
    }

    pub(crate) fn sep_size(key: &[u8]) -> usize {
        varint_len(key.len() as u64) + key.len() + PTR_ESTIMATE
    }

    /// Estimated encoded size (cached).
    pub(crate) fn size(&self) -> usize {
        debug_assert_eq!(self.bytes, self.compute_size());
        self.bytes
    }

    /// Recomputes the cached size after a structural change.
    pub(crate) fn recompute(&mut self) {
        self.bytes = self.compute_size();
    }

    fn compute_size(&self) -> usize {
        let body: usize = if self.is_leaf() {
            self.keys
                .iter()
                .zip(&self.vals)
                .map(|(k, v)| Self::leaf_entry_size(k, v))
                .sum()
        } else {
            self.keys.iter().map(|k| Self::sep_size(k)).sum::<usize>() + PTR_ESTIMATE
        };
        NODE_OVERHEAD + body
    }

    /// Memory charged to the cache for this node.
    pub(crate) fn weight(&self) -> usize {
        let entries = self.keys.len() + self.children.len();
        self.size() + 64 * entries + 128
    }

    /// Index of the child that may hold `key`.
    pub(crate) fn child_index(&self, key: &[u8]) -> usize {
        self.keys.partition_point(|s| &**s <= key)
    }

    /// Leaf search.
    pub(crate) fn search(&self, key: &[u8]) -> Result<usize, usize> {
        self.keys.binary_search_by(|k| (**k).cmp(key))
    }
}

/// The shortest separator `s` with `a < s <= b`, given `a < b`: a prefix of
/// `b`. Short separators keep internal nodes small and wide.
pub(crate) fn separator(a: &[u8], b: &[u8]) -> Bytes {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let n = (common + 1).min(b.len());
    debug_assert!(a.cmp(&b[..n]) == Ordering::Less);
    Bytes::copy_from(&b[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_are_short_and_between() {
        for (a, b) in [
            (&b"apple"[..], &b"banana"[..]),
            (b"abc", b"abd"),
            (b"ab", b"abc"),
            (b"", b"a"),
            (b"a\xff", b"b"),
        ] {
            let s = separator(a, b);
            assert!(a < &*s && &*s <= b, "{a:?} {s:?} {b:?}");
        }
        assert_eq!(&*separator(b"apple", b"banana"), b"b");
        assert_eq!(&*separator(b"ab", b"abc"), b"abc");
    }

    #[test]
    fn append_to_writes_exactly_the_bytes() {
        for n in [0usize, 1, 21, 22, 23, 100] {
            let data: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            let b = Bytes::copy_from(&data);
            let mut out = vec![9u8];
            b.append_to(&mut out);
            b.append_to(&mut out);
            let mut want = vec![9u8];
            want.extend_from_slice(&data);
            want.extend_from_slice(&data);
            assert_eq!(out, want);
        }
    }

    #[test]
    fn copies_for_edit_equal_the_original() {
        let mut n = Node::leaf();
        for k in [&b"a"[..], b"b", b"c"] {
            n.keys.push(Bytes::copy_from(k));
            n.vals.push(LeafValue {
                seq: 1,
                value: Value::Inline(Bytes::copy_from(k)),
            });
        }
        n.recompute();
        let c = n.copy_for_edit();
        assert_eq!(c.keys, n.keys);
        assert_eq!(c.vals.len(), 3);
        assert_eq!(c.bytes, n.bytes);
        assert!(c.keys.capacity() > c.keys.len());
    }

    #[test]
    fn varint_lengths() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
        assert_eq!(varint_len(u64::MAX), 10);
    }
}
