//! Domain-separated BLAKE3 hashes of leaves, parents and whole trees.
//!
//! Every hash starts with a type byte so a leaf can never be confused with a
//! parent or a tree, and every node commits to the byte size of what it covers
//! (that is what makes byte seeks provable).

use crate::flat;
use serde::{Deserialize, Serialize};

const LEAF: u8 = 0;
const PARENT: u8 = 1;
const TREE: u8 = 2;

/// A 32-byte BLAKE3 digest.
pub type Hash = [u8; 32];

/// A node of the Merkle tree: its flat-tree index, the bytes it covers and its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    /// Flat-tree index (block `i` is leaf `2 * i`).
    pub index: u64,
    /// Total byte length of the blocks this node covers.
    pub size: u64,
    /// Domain-separated BLAKE3 hash.
    pub hash: Hash,
}

impl Node {
    /// The leaf node for block `block` holding `data` (as stored: ciphertext for
    /// encrypted cores).
    pub fn leaf(block: u64, data: &[u8]) -> Node {
        Node {
            index: block.saturating_mul(2),
            size: data.len() as u64,
            hash: leaf_hash(data),
        }
    }

    /// The parent of two sibling nodes (left first).
    pub fn parent(left: &Node, right: &Node) -> Node {
        let size = left.size.saturating_add(right.size);
        let mut h = blake3::Hasher::new();
        h.update(&[PARENT]);
        h.update(&size.to_le_bytes());
        h.update(&left.hash);
        h.update(&right.hash);
        Node {
            index: flat::parent(left.index),
            size,
            hash: *h.finalize().as_bytes(),
        }
    }
}

/// The hash of a leaf holding `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[LEAF]);
    h.update(&(data.len() as u64).to_le_bytes());
    h.update(data);
    *h.finalize().as_bytes()
}

/// The hash of a whole tree, given its roots left to right.
pub fn tree_hash(roots: &[Node]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[TREE]);
    for r in roots {
        h.update(&r.hash);
        h.update(&r.index.to_le_bytes());
        h.update(&r.size.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn domains_differ() {
        let leaf = Node::leaf(0, b"");
        let p = Node::parent(&leaf, &leaf);
        assert_ne!(leaf.hash, p.hash);
        assert_ne!(tree_hash(&[]), leaf.hash);
        assert_eq!(p.index, 1);
        assert_eq!(p.size, 0);
    }

    #[test]
    fn golden_vectors() {
        // Encodings are a contract: these values must never change.
        let hex = |h: &Hash| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let l0 = Node::leaf(0, b"hello");
        let l1 = Node::leaf(1, b"world");
        let p = Node::parent(&l0, &l1);
        assert_eq!(
            hex(&l0.hash),
            "3cd0ae56e17f62f477b630a160b1f3eb66f608d9ffb93917e13ce92b62b7d663"
        );
        assert_eq!(
            hex(&p.hash),
            "083f2d4278093f86979b78878a1a152010262a8b48adb229c8821b2618f56d1a"
        );
        assert_eq!(
            hex(&tree_hash(&[p])),
            "fa179f71dc406b46614dee3b1e29ff92f264a84bafd1d03d8a521e1d56f65c87"
        );
        assert_eq!((p.index, p.size), (1, 10));
    }
}
