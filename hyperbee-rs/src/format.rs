//! The block format: what one hypercore block of a bee holds, and how nodes
//! and ops are laid out inside it. Pure encoding and decoding, no I/O.
//!
//! Every block starts with the format version byte. Block 0 is the header;
//! every other block is a tree block:
//!
//! ```text
//! version u8 | kind u8 (1) | flags u8 | [root ptr] | node count | node lengths | nodes | op count | ops
//! ```
//!
//! The decoder must never panic, loop or allocate more than the block's own
//! size on any input: every count is checked against the bytes that remain.

use crate::error::{CorruptError, Error};
use crate::node::{Bytes, Child, LeafValue, Node, Ptr, Value};
use crate::{MAX_KEY_LEN, MAX_VALUE_LEN};
use std::sync::Arc;

/// The format version written in the first byte of every block.
pub const FORMAT_VERSION: u8 = 1;
const KIND_HEADER: u8 = 0;
const KIND_TREE: u8 = 1;
const MAGIC: &[u8] = b"hyperbee-rs";
/// The last block of an atomic flush: a committed version ends here.
const FLAG_END: u8 = 1;
/// The block names the root of the tree at the version it ends.
const FLAG_ROOT: u8 = 2;
/// The deepest tree accepted (levels 0..=MAX_LEVEL). A tree of minimum
/// fan-out 2 this deep would hold more keys than any core can.
pub(crate) const MAX_LEVEL: u8 = 48;

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_node_bytes(out: &mut Vec<u8>, b: &Bytes) {
    put_varint(out, b.len() as u64);
    b.append_to(out);
}

/// A bounds-checked reader over one block.
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    seq: u64,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(seq: u64, buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0, seq }
    }

    fn truncated(&self, what: &'static str) -> CorruptError {
        CorruptError::Truncated {
            seq: self.seq,
            what,
        }
    }

    fn invalid(&self, what: &'static str) -> CorruptError {
        CorruptError::Invalid {
            seq: self.seq,
            what,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CorruptError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.truncated(what))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, CorruptError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(what)?;
            let part = (b & 0x7f) as u64;
            if i == 9 && b > 1 {
                return Err(self.invalid(what));
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.invalid(what))
    }

    /// A count of items that each take at least one byte.
    fn count(&mut self, what: &'static str) -> Result<usize, CorruptError> {
        let n = self.varint(what)?;
        if n > self.remaining() as u64 {
            return Err(self.invalid(what));
        }
        Ok(n as usize)
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<(usize, usize), CorruptError> {
        if n > self.remaining() as u64 {
            return Err(self.truncated(what));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok((start, self.pos))
    }

    /// A length-prefixed byte string of at most `max` bytes: its range.
    fn bytes(&mut self, max: usize, what: &'static str) -> Result<(usize, usize), CorruptError> {
        let n = self.varint(what)?;
        if n > max as u64 {
            return Err(self.invalid(what));
        }
        self.take(n, what)
    }

    /// A pointer stored as (distance back in blocks, slot), from a node or
    /// root at `own`: it must point strictly backwards.
    fn ptr(&mut self, own: Ptr, what: &'static str) -> Result<Ptr, CorruptError> {
        let delta = self.varint(what)?;
        let slot = self.varint(what)?;
        let bad = CorruptError::BadPointer {
            seq: self.seq,
            what,
        };
        if delta > own.seq || slot > u32::MAX as u64 {
            return Err(bad);
        }
        let p = Ptr {
            seq: own.seq - delta,
            slot: slot as u32,
        };
        if p >= own {
            return Err(bad);
        }
        Ok(p)
    }

    fn finish(&self, what: &'static str) -> Result<(), CorruptError> {
        if self.pos != self.buf.len() {
            return Err(self.invalid(what));
        }
        Ok(())
    }
}

fn put_ptr(out: &mut Vec<u8>, own: Ptr, p: Ptr) {
    debug_assert!(p < own);
    put_varint(out, own.seq - p.seq);
    put_varint(out, p.slot as u64);
}

/// The header block (block 0).
pub(crate) fn encode_header() -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION, KIND_HEADER];
    out.extend_from_slice(MAGIC);
    out
}

/// Checks that `buf` is a header this code can read.
pub(crate) fn check_header(buf: &[u8]) -> Result<(), Error> {
    match buf {
        [v, KIND_HEADER, rest @ ..] if rest.starts_with(MAGIC) => {
            if *v != FORMAT_VERSION {
                return Err(Error::UnsupportedVersion(*v));
            }
            Ok(())
        }
        _ => Err(Error::NotABee),
    }
}

/// Encodes a node at `own`. Every child must be stored and every value
/// resolved; pointers are written relative to `own`.
pub(crate) fn encode_node(node: &Node, own: Ptr, out: &mut Vec<u8>) {
    out.push(node.level);
    put_varint(out, node.keys.len() as u64);
    if node.is_leaf() {
        for (k, v) in node.keys.iter().zip(&node.vals) {
            put_node_bytes(out, k);
            put_varint(out, v.seq);
            match &v.value {
                Value::Inline(b) => {
                    out.push(0);
                    put_node_bytes(out, b);
                }
                Value::Ref { seq, op, len } => {
                    out.push(1);
                    put_varint(out, own.seq - seq);
                    put_varint(out, *op as u64);
                    put_varint(out, *len as u64);
                }
                Value::Pending { .. } => debug_assert!(false, "pending value at encode"),
            }
        }
    } else {
        let ptr = |c: &Child| match c {
            Child::Stored(p) => *p,
            Child::Dirty(_) => {
                debug_assert!(false, "dirty child at encode");
                own
            }
        };
        if let Some(c) = node.children.first() {
            put_ptr(out, own, ptr(c));
        }
        for (k, c) in node.keys.iter().zip(node.children.iter().skip(1)) {
            put_node_bytes(out, k);
            put_ptr(out, own, ptr(c));
        }
    }
}

/// Decodes the node at `own` from its bytes (a copy is kept by the node).
pub(crate) fn decode_node(own: Ptr, data: &[u8]) -> Result<Node, CorruptError> {
    let buf: Arc<[u8]> = Arc::from(data);
    let mut d = Decoder::new(own.seq, &buf);
    let tree = |what| CorruptError::Tree { seq: own.seq, what };
    let level = d.u8("node level")?;
    if level > MAX_LEVEL {
        return Err(tree("level too deep"));
    }
    let n = d.count("key count")?;
    let mut node = Node {
        level,
        keys: Vec::with_capacity(n),
        vals: Vec::new(),
        children: Vec::new(),
        bytes: 0,
    };
    if level == 0 {
        node.vals.reserve(n);
        for _ in 0..n {
            let (s, e) = d.bytes(MAX_KEY_LEN, "leaf key")?;
            let seq = d.varint("entry seq")?;
            if seq > own.seq {
                return Err(d.invalid("entry seq"));
            }
            let value = match d.u8("value tag")? {
                0 => {
                    let (vs, ve) = d.bytes(MAX_VALUE_LEN, "inline value")?;
                    Value::Inline(Bytes::slice_of(&buf, vs, ve))
                }
                1 => {
                    let delta = d.varint("value ref")?;
                    let op = d.varint("value ref")?;
                    let len = d.varint("value ref")?;
                    if delta > own.seq || op > u32::MAX as u64 || len > MAX_VALUE_LEN as u64 {
                        return Err(CorruptError::BadPointer {
                            seq: own.seq,
                            what: "value ref",
                        });
                    }
                    Value::Ref {
                        seq: own.seq - delta,
                        op: op as u32,
                        len: len as u32,
                    }
                }
                _ => return Err(d.invalid("value tag")),
            };
            push_key(&mut node, Bytes::slice_of(&buf, s, e), own)?;
            node.vals.push(LeafValue { seq, value });
        }
    } else {
        node.children.reserve(n + 1);
        node.children
            .push(Child::Stored(d.ptr(own, "child pointer")?));
        for _ in 0..n {
            let (s, e) = d.bytes(MAX_KEY_LEN, "separator")?;
            push_key(&mut node, Bytes::slice_of(&buf, s, e), own)?;
            node.children
                .push(Child::Stored(d.ptr(own, "child pointer")?));
        }
    }
    d.finish("node trailing bytes")?;
    node.recompute();
    Ok(node)
}

fn push_key(node: &mut Node, key: Bytes, own: Ptr) -> Result<(), CorruptError> {
    if let Some(last) = node.keys.last() {
        if **last >= *key {
            return Err(CorruptError::Tree {
                seq: own.seq,
                what: "keys out of order",
            });
        }
    }
    node.keys.push(key);
    Ok(())
}

/// One put or del as recorded in a block (the history of the bee).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OpRecord {
    pub(crate) key: Vec<u8>,
    /// `None` for a delete.
    pub(crate) value: Option<Vec<u8>>,
}

pub(crate) fn encode_op(out: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    match value {
        Some(v) => {
            out.push(0);
            put_bytes(out, key);
            put_bytes(out, v);
        }
        None => {
            out.push(1);
            put_bytes(out, key);
        }
    }
}

/// A tree block being assembled.
#[derive(Default)]
pub(crate) struct BlockBuilder {
    pub(crate) nodes: Vec<Vec<u8>>,
    pub(crate) ops: Vec<u8>,
    pub(crate) nops: u64,
    pub(crate) size: usize,
}

impl BlockBuilder {
    /// The block's bytes; `end` marks the last block of a flush, whose
    /// `root` is the tree at the new version (`None`: empty tree).
    pub(crate) fn encode(&self, seq: u64, end: bool, root: Option<Ptr>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size + 32);
        out.push(FORMAT_VERSION);
        out.push(KIND_TREE);
        let mut flags = 0;
        if end {
            flags |= FLAG_END;
            if root.is_some() {
                flags |= FLAG_ROOT;
            }
        }
        out.push(flags);
        if let (true, Some(r)) = (end, root) {
            // The root may live in this block: point from one slot past the end.
            let own = Ptr {
                seq,
                slot: self.nodes.len() as u32,
            };
            put_ptr(&mut out, own, r);
        }
        put_varint(&mut out, self.nodes.len() as u64);
        for n in &self.nodes {
            put_varint(&mut out, n.len() as u64);
        }
        for n in &self.nodes {
            out.extend_from_slice(n);
        }
        put_varint(&mut out, self.nops);
        out.extend_from_slice(&self.ops);
        out
    }
}

/// A parsed tree block: where its nodes and ops are.
pub(crate) struct TreeBlock<'a> {
    pub(crate) seq: u64,
    buf: &'a [u8],
    /// Whether a committed version ends with this block.
    pub(crate) end: bool,
    pub(crate) root: Option<Ptr>,
    nodes: Vec<(usize, usize)>,
    ops_at: usize,
}

/// What block `seq` is.
pub(crate) enum Block<'a> {
    Header,
    Tree(TreeBlock<'a>),
}

pub(crate) fn parse_block(seq: u64, buf: &[u8]) -> Result<Block<'_>, Error> {
    let mut d = Decoder::new(seq, buf);
    let version = d.u8("version")?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    match d.u8("kind")? {
        KIND_HEADER => {
            check_header(buf)?;
            Ok(Block::Header)
        }
        KIND_TREE => {
            let flags = d.u8("flags")?;
            if flags & !(FLAG_END | FLAG_ROOT) != 0 || flags == FLAG_ROOT {
                return Err(d.invalid("flags").into());
            }
            let root_ref = if flags & FLAG_ROOT != 0 {
                Some((d.varint("root pointer")?, d.varint("root pointer")?))
            } else {
                None
            };
            let n = d.count("node count")?;
            let mut lens = Vec::with_capacity(n);
            for _ in 0..n {
                lens.push(d.varint("node length")?);
            }
            let mut nodes = Vec::with_capacity(n);
            for len in lens {
                nodes.push(d.take(len, "node")?);
            }
            let ops_at = d.pos;
            let root = match root_ref {
                None => None,
                Some((delta, slot)) => {
                    let bad = CorruptError::BadPointer {
                        seq,
                        what: "root pointer",
                    };
                    if delta > seq || slot > u32::MAX as u64 || (delta == 0 && slot >= n as u64) {
                        return Err(bad.into());
                    }
                    Some(Ptr {
                        seq: seq - delta,
                        slot: slot as u32,
                    })
                }
            };
            Ok(Block::Tree(TreeBlock {
                seq,
                buf,
                end: flags & FLAG_END != 0,
                root,
                nodes,
                ops_at,
            }))
        }
        _ => Err(d.invalid("kind").into()),
    }
}

impl TreeBlock<'_> {
    /// The node in `slot`.
    pub(crate) fn node(&self, slot: u32) -> Result<Node, CorruptError> {
        let &(s, e) = self
            .nodes
            .get(slot as usize)
            .ok_or(CorruptError::BadPointer {
                seq: self.seq,
                what: "missing slot",
            })?;
        decode_node(
            Ptr {
                seq: self.seq,
                slot,
            },
            &self.buf[s..e],
        )
    }

    /// The `idx`-th op of this block, copying only its own bytes.
    pub(crate) fn op(&self, idx: u32) -> Result<Option<OpRecord>, CorruptError> {
        let mut d = Decoder::new(self.seq, self.buf);
        d.pos = self.ops_at;
        let n = d.count("op count")?;
        for i in 0..n {
            let tag = d.u8("op tag")?;
            let (ks, ke) = d.bytes(MAX_KEY_LEN, "op key")?;
            let value = match tag {
                0 => Some(d.bytes(MAX_VALUE_LEN, "op value")?),
                1 => None,
                _ => return Err(d.invalid("op tag")),
            };
            if i == idx as usize {
                return Ok(Some(OpRecord {
                    key: self.buf[ks..ke].to_vec(),
                    value: value.map(|(vs, ve)| self.buf[vs..ve].to_vec()),
                }));
            }
        }
        Ok(None)
    }

    /// Every op recorded in this block, in order.
    pub(crate) fn ops(&self) -> Result<Vec<OpRecord>, CorruptError> {
        let mut d = Decoder::new(self.seq, self.buf);
        d.pos = self.ops_at;
        let n = d.count("op count")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let tag = d.u8("op tag")?;
            let (ks, ke) = d.bytes(MAX_KEY_LEN, "op key")?;
            let value = match tag {
                0 => {
                    let (vs, ve) = d.bytes(MAX_VALUE_LEN, "op value")?;
                    Some(self.buf[vs..ve].to_vec())
                }
                1 => None,
                _ => return Err(d.invalid("op tag")),
            };
            out.push(OpRecord {
                key: self.buf[ks..ke].to_vec(),
                value,
            });
        }
        d.finish("block trailing bytes")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn leaf(keys: &[&[u8]]) -> Node {
        let mut n = Node::leaf();
        for (i, k) in keys.iter().enumerate() {
            n.keys.push(Bytes::copy_from(k));
            n.vals.push(LeafValue {
                seq: i as u64,
                value: Value::Inline(Bytes::copy_from(b"v")),
            });
        }
        n.recompute();
        n
    }

    #[test]
    fn node_round_trip_and_size_estimate() {
        let n = leaf(&[b"a", b"b", b"c"]);
        let own = Ptr { seq: 9, slot: 0 };
        let mut out = Vec::new();
        encode_node(&n, own, &mut out);
        assert!(out.len() <= n.size());
        let d = decode_node(own, &out).unwrap();
        assert_eq!(d.keys, n.keys);
        let mut inner = Node {
            level: 1,
            keys: vec![Bytes::copy_from(b"m")],
            vals: vec![],
            children: vec![
                Child::Stored(Ptr { seq: 3, slot: 1 }),
                Child::Stored(Ptr { seq: 9, slot: 0 }),
            ],
            bytes: 0,
        };
        inner.recompute();
        let own = Ptr { seq: 9, slot: 1 };
        out.clear();
        encode_node(&inner, own, &mut out);
        assert!(out.len() <= inner.size());
        let d = decode_node(own, &out).unwrap();
        assert_eq!(d.children, inner.children);
        // A pointer to itself (a cycle) is rejected.
        inner.children[1] = Child::Stored(Ptr { seq: 9, slot: 1 });
        out.clear();
        encode_node(&inner, Ptr { seq: 9, slot: 2 }, &mut out);
        assert!(decode_node(own, &out).is_err());
    }

    #[test]
    fn unsorted_keys_are_rejected() {
        let mut n = leaf(&[b"a", b"b"]);
        n.keys.swap(0, 1);
        let own = Ptr { seq: 1, slot: 0 };
        let mut out = Vec::new();
        encode_node(&n, own, &mut out);
        assert!(matches!(
            decode_node(own, &out),
            Err(CorruptError::Tree { .. })
        ));
    }

    #[test]
    fn header() {
        check_header(&encode_header()).unwrap();
        assert!(matches!(check_header(b"nope"), Err(Error::NotABee)));
        let mut h = encode_header();
        h[0] = 7;
        assert!(matches!(
            check_header(&h),
            Err(Error::UnsupportedVersion(7))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(seq in 0u64..1000, data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_node(Ptr { seq, slot: 3 }, &data);
            if let Ok(Block::Tree(t)) = parse_block(seq, &data) {
                let _ = t.ops();
                for s in 0..4 {
                    let _ = t.node(s);
                }
            }
            let mut framed = vec![FORMAT_VERSION, KIND_TREE];
            framed.extend_from_slice(&data);
            if let Ok(Block::Tree(t)) = parse_block(seq, &framed) {
                let _ = t.ops();
                for s in 0..4 {
                    let _ = t.node(s);
                }
            }
        }
    }
}
