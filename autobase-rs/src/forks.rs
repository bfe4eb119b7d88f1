//! Blocks of another fork of a proven forker, fetched because heads pin them.
//!
//! A peer holds one fork of each writer in that writer's input core (a core
//! cannot hold two). When a writer is proven to fork, nodes of honest
//! writers can pin (by hash, with the forker's signature) nodes of the fork
//! this peer does not hold. Those nodes are wanted: asked for over the
//! `autobase/checkpoint` extension by `(writer key, seq, node hash)`, and
//! a block answered is kept only when it decodes as node `seq`, hashes to
//! the wanted node hash and carries the forker's signature. Its `prev`
//! names the node below it on that fork, which is wanted in turn until the
//! chain reaches a node this peer holds (the fork point): so what is kept is
//! exactly the other fork's chain from the fork point up to the pinned
//! nodes, each block verified against a hash a signed node committed to.
//!
//! Only writers with a verified proof are fetched for, and both sets are
//! bounded, so a peer cannot be made to hold unbounded data.

use crate::node::{verify_node, Block, Signed};
use ed25519_dalek::VerifyingKey;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The most blocks of other forks kept.
pub(crate) const MAX_FORK_BLOCKS: usize = 4096;
/// The most nodes wanted at once.
pub(crate) const MAX_FORK_WANTS: usize = 1024;

/// The most nodes one answer to a want sends: the wanted node and the
/// chain below it.
pub(crate) const ANSWER_CHAIN: usize = 256;
/// An answer stops once it has sent this many block bytes.
pub(crate) const ANSWER_BYTES: usize = 256 * 1024;

/// `(writer key, seq, node hash)`.
pub(crate) type ForkNode = ([u8; 32], u64, [u8; 32]);

/// A verified block of another fork: its raw bytes (decoded again with
/// `Block::decode` when used, and served on to peers that want it too).
#[derive(Clone, Debug)]
pub(crate) struct ForkBlock {
    pub(crate) bytes: Arc<Vec<u8>>,
}

/// Wanted and fetched nodes of other forks.
#[derive(Debug, Default)]
pub(crate) struct OtherForks {
    wants: BTreeSet<ForkNode>,
    blocks: BTreeMap<ForkNode, ForkBlock>,
    /// Wanted nodes this peer answered with a chain (forgotten in bulk
    /// past [`MAX_FORK_WANTS`]).
    chained: BTreeSet<ForkNode>,
}

impl OtherForks {
    /// Whether a want of `node` may be answered with the chain below it:
    /// the first time only (then it is remembered).
    pub(crate) fn answer_chain_once(&mut self, node: ForkNode) -> bool {
        if self.chained.len() >= MAX_FORK_WANTS {
            self.chained.clear();
        }
        self.chained.insert(node)
    }

    /// Wants node `(key, seq, hash)`; `true` when it is newly wanted (not
    /// held, not wanted yet, and within the bounds).
    pub(crate) fn want(&mut self, node: ForkNode) -> bool {
        if self.blocks.contains_key(&node)
            || self.wants.contains(&node)
            || self.wants.len() >= MAX_FORK_WANTS
            || self.blocks.len() >= MAX_FORK_BLOCKS
        {
            return false;
        }
        self.wants.insert(node)
    }

    /// Every wanted node.
    pub(crate) fn wants(&self) -> impl Iterator<Item = &ForkNode> {
        self.wants.iter()
    }

    /// Takes block `bytes` offered as node `seq` of `key`, signed with
    /// `vk`: kept (and returned) only if that node is wanted and the bytes
    /// are it.
    pub(crate) fn offer(
        &mut self,
        key: [u8; 32],
        seq: u64,
        bytes: &[u8],
        vk: &VerifyingKey,
    ) -> Option<Arc<Signed>> {
        let signed = Block::decode(bytes, seq)?;
        let node = (key, seq, signed.hash);
        if !self.wants.contains(&node) || !verify_node(vk, &signed.hash, &signed.sig) {
            return None;
        }
        self.wants.remove(&node);
        let signed = Arc::new(signed);
        self.blocks.insert(
            node,
            ForkBlock {
                bytes: Arc::new(bytes.to_vec()),
            },
        );
        Some(signed)
    }

    /// The block of node `(key, seq, hash)`, if fetched.
    pub(crate) fn get(&self, node: &ForkNode) -> Option<&ForkBlock> {
        self.blocks.get(node)
    }

    /// The fetched nodes of `key`'s other forks: `(seq, node hash)`, by seq.
    pub(crate) fn list(&self, key: &[u8; 32]) -> Vec<(u64, [u8; 32])> {
        self.blocks
            .range((*key, 0, [0; 32])..=(*key, u64::MAX, [0xff; 32]))
            .map(|((_, s, h), _)| (*s, *h))
            .collect()
    }
}

/// Message `5`: a request for node `(key, seq, hash)`.
pub(crate) fn request_message(tag: u8, node: &ForkNode) -> Vec<u8> {
    let mut m = Vec::with_capacity(73);
    m.push(tag);
    m.extend_from_slice(&node.0);
    m.extend_from_slice(&node.1.to_le_bytes());
    m.extend_from_slice(&node.2);
    m
}

/// Decodes the body of [`request_message`].
pub(crate) fn decode_request(b: &[u8]) -> Option<ForkNode> {
    if b.len() != 72 {
        return None;
    }
    let key: [u8; 32] = b[..32].try_into().ok()?;
    let seq = u64::from_le_bytes(b[32..40].try_into().ok()?);
    let hash: [u8; 32] = b[40..].try_into().ok()?;
    Some((key, seq, hash))
}

/// Message `6`: node `seq` of `key`, as its raw block bytes.
pub(crate) fn block_message(tag: u8, key: &[u8; 32], seq: u64, bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(41 + bytes.len());
    m.push(tag);
    m.extend_from_slice(key);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(bytes);
    m
}

/// Decodes the body of [`block_message`]: `(key, seq, block bytes)`.
pub(crate) fn decode_block(b: &[u8]) -> Option<([u8; 32], u64, &[u8])> {
    if b.len() < 40 {
        return None;
    }
    let key: [u8; 32] = b[..32].try_into().ok()?;
    let seq = u64::from_le_bytes(b[32..40].try_into().ok()?);
    Some((key, seq, &b[40..]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::node::Body;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    fn block(key: &SigningKey, seq: u64, prev: [u8; 32], v: u8) -> (Vec<u8>, [u8; 32]) {
        let b = Block {
            version: crate::node::NODE_VERSION,
            height: seq + 1,
            prev,
            heads: vec![],
            body: Body::Values(vec![serde_bytes::ByteBuf::from(vec![v])]),
        };
        let (bytes, hash, _) = b.sign(seq, key);
        (bytes, hash)
    }

    #[test]
    fn only_the_wanted_signed_node_is_kept() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let vk = k.verifying_key();
        let w = [9; 32];
        let (b0, h0) = block(&k, 0, [0; 32], 1);
        let (b1, h1) = block(&k, 1, h0, 2);
        let (other, _) = block(&k, 1, h0, 3);
        let mut f = OtherForks::default();
        // Not wanted: refused.
        assert!(f.offer(w, 1, &b1, &vk).is_none());
        assert!(f.want((w, 1, h1)));
        assert!(!f.want((w, 1, h1)), "wanted once");
        // Another node at that seq (signed by the writer too): refused.
        assert!(f.offer(w, 1, &other, &vk).is_none());
        // The right bytes under another seq: they hash differently.
        assert!(f.offer(w, 0, &b1, &vk).is_none());
        // Signed by someone else: refused.
        let stranger = SigningKey::from_bytes(&[8; 32]);
        let (forged, fh) = block(&stranger, 0, [0; 32], 1);
        assert!(f.want((w, 0, fh)));
        assert!(f.offer(w, 0, &forged, &vk).is_none());
        // The wanted node: kept, with its prev to follow.
        let got = f.offer(w, 1, &b1, &vk).unwrap();
        assert_eq!(got.block.prev, h0);
        assert!(f.get(&(w, 1, h1)).is_some());
        assert!(!f.want((w, 1, h1)), "held already");
        assert_eq!(f.list(&w), vec![(1, h1)]);
        assert!(f.list(&[1; 32]).is_empty());
        // Genuine, wanted, but arriving again: nothing more.
        assert!(f.offer(w, 1, &b1, &vk).is_none());
        let _ = b0;
    }

    #[test]
    fn a_chain_is_answered_once_per_node() {
        let mut f = OtherForks::default();
        let n = ([1; 32], 5, [2; 32]);
        assert!(f.answer_chain_once(n));
        assert!(!f.answer_chain_once(n), "asked again: the node alone");
        assert!(f.answer_chain_once(([1; 32], 4, [3; 32])));
        for i in 0..(MAX_FORK_WANTS as u64 + 5) {
            f.answer_chain_once(([9; 32], i, [0; 32]));
        }
        assert!(f.chained.len() <= MAX_FORK_WANTS, "bounded");
    }

    #[test]
    fn wants_are_bounded() {
        let mut f = OtherForks::default();
        for i in 0..(MAX_FORK_WANTS as u64 + 10) {
            f.want(([1; 32], i, [2; 32]));
        }
        assert_eq!(f.wants().count(), MAX_FORK_WANTS);
    }

    #[test]
    fn messages_round_trip() {
        let n = ([3; 32], 42, [4; 32]);
        let m = request_message(5, &n);
        assert_eq!(decode_request(&m[1..]), Some(n));
        let m = block_message(6, &[3; 32], 42, b"xyz");
        assert_eq!(decode_block(&m[1..]), Some(([3; 32], 42, &b"xyz"[..])));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode_request(&bytes);
            let _ = decode_block(&bytes);
            let k = SigningKey::from_bytes(&[7; 32]);
            let mut f = OtherForks::default();
            let _ = f.offer([0; 32], 0, &bytes, &k.verifying_key());
        }
    }
}
