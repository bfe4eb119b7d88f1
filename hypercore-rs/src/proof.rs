//! Proofs: what a holder sends so that a reader can verify blocks, tree nodes,
//! byte seeks and length upgrades against the core key alone.
//!
//! A reader asks with a [`ProofRequest`]; the holder answers with a [`Proof`]
//! (see `Core::proof`), and the reader checks and applies it with
//! `Core::verify`. The requester says how many sibling nodes it is missing
//! (`nodes`), so the holder sends only those: proofs stay O(log n) and usually
//! much smaller. A verifier uses every node it is given or rejects the proof:
//! no bit of a proof is unchecked.

use crate::error::ProofError;
use crate::flat;
use crate::hash::Node;
use crate::manifest::{Manifest, MultiSignature};
use serde::{Deserialize, Serialize};

/// Asks for one block's data and the nodes proving it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    /// The block.
    pub index: u64,
    /// How many sibling nodes to send, bottom up; 0 = up to a root of the
    /// proof's tree (needed when the block is beyond the requester's length).
    pub nodes: u64,
}

/// Asks for one tree node and the nodes proving it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashRequest {
    /// The node's flat-tree index.
    pub index: u64,
    /// As in [`BlockRequest::nodes`].
    pub nodes: u64,
}

/// Asks which block holds a byte offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeekRequest {
    /// The byte offset.
    pub bytes: u64,
}

/// Asks for the holder's latest signed length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRequest {
    /// The requester's length: the holder sends only what is new past it.
    pub start: u64,
}

/// A request for a proof, as a reader would send it to a holder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofRequest {
    /// The requester's fork id.
    pub fork: u64,
    /// A block, if wanted.
    pub block: Option<BlockRequest>,
    /// A tree node, if wanted.
    pub hash: Option<HashRequest>,
    /// A byte seek, if wanted.
    pub seek: Option<SeekRequest>,
    /// An upgrade, if wanted.
    pub upgrade: Option<UpgradeRequest>,
    /// Whether the requester needs the manifest (it knows only the key).
    pub manifest: bool,
    /// After a fork, start the upgrade at a boundary of the requester's own
    /// roots (which every reader holds) rather than at the exact fork point
    /// (which keeps more data but needs the requester's nodes there).
    pub round_fork_point: bool,
}

/// A block with the sibling nodes from its leaf upward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockProof {
    /// The block index.
    pub index: u64,
    /// The block as stored (ciphertext for encrypted cores).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Siblings, bottom up.
    pub nodes: Vec<Node>,
}

/// A tree node with the sibling nodes above it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashProof {
    /// The node.
    pub node: Node,
    /// Siblings, bottom up.
    pub nodes: Vec<Node>,
}

/// The leaf holding a byte offset, with every sibling up to its root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeekProof {
    /// The byte offset asked for.
    pub bytes: u64,
    /// The leaf node of the block holding it.
    pub leaf: Node,
    /// Siblings, bottom up, to a root.
    pub nodes: Vec<Node>,
}

/// A signed length upgrade from `start` to `length`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeProof {
    /// The length the verifier already has (its tree up to here is reused).
    pub start: u64,
    /// The new length.
    pub length: u64,
    /// The nodes that, with the verifier's roots at `start`, give the new roots.
    pub nodes: Vec<Node>,
    /// The signature over the new tree.
    pub signature: MultiSignature,
}

/// A holder's answer to a [`ProofRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The holder's fork id.
    pub fork: u64,
    /// The block, if asked.
    pub block: Option<BlockProof>,
    /// The node, if asked.
    pub hash: Option<HashProof>,
    /// The seek, if asked.
    pub seek: Option<SeekProof>,
    /// The upgrade, if asked and the holder has more.
    pub upgrade: Option<UpgradeProof>,
    /// The manifest, if asked.
    pub manifest: Option<Manifest>,
}

/// What a verified proof changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// The new length, if the proof upgraded the core.
    pub upgraded: Option<u64>,
    /// The length the core was truncated to, if the upgrade was a new fork.
    pub truncated: Option<u64>,
    /// The block stored, if any.
    pub block: Option<u64>,
    /// The node verified, if any.
    pub hash: Option<Node>,
    /// (block, offset in block) of the byte seek, if any.
    pub seek: Option<(u64, u64)>,
}

/// Walks from `start` up through `siblings`; returns the nodes now proven
/// (siblings and computed parents) and the node reached.
pub(crate) fn walk_up(
    start: Node,
    siblings: &[Node],
    tree_length: u64,
) -> Result<(Vec<Node>, Node), ProofError> {
    if !flat::in_tree(start.index, tree_length) {
        return Err(ProofError::Malformed("node outside the tree"));
    }
    if siblings.len() > 64 {
        return Err(ProofError::Malformed("too many nodes"));
    }
    let mut cur = start;
    let mut proven = Vec::with_capacity(siblings.len() * 2 + 1);
    proven.push(start);
    for sib in siblings {
        if flat::is_root(cur.index, tree_length) {
            return Err(ProofError::Malformed("path continues past a root"));
        }
        if sib.index != flat::sibling(cur.index) {
            return Err(ProofError::Malformed("unexpected sibling index"));
        }
        let parent = if flat::is_left(cur.index) {
            Node::parent(&cur, sib)
        } else {
            Node::parent(sib, &cur)
        };
        proven.push(*sib);
        proven.push(parent);
        cur = parent;
    }
    Ok((proven, cur))
}

/// Computes the roots of a tree of `length` blocks from the verifier's roots
/// at `start` (`local`) and the nodes of an upgrade proof. Every provided node
/// must be used exactly once. Returns (new roots, every node proven).
pub(crate) fn upgrade_roots(
    start: u64,
    length: u64,
    local: &[Node],
    provided: &[Node],
) -> Result<(Vec<Node>, Vec<Node>), ProofError> {
    if length < start {
        return Err(ProofError::Malformed("upgrade shrinks the log"));
    }
    if provided.len() > 4096 {
        return Err(ProofError::Malformed("too many nodes"));
    }
    let mut map: std::collections::HashMap<u64, (Node, bool)> = std::collections::HashMap::new();
    for n in provided {
        if map.insert(n.index, (*n, false)).is_some() {
            return Err(ProofError::Malformed("duplicate node"));
        }
    }
    let local: std::collections::HashMap<u64, Node> = local.iter().map(|n| (n.index, *n)).collect();
    let mut proven = Vec::new();
    let mut roots = Vec::new();
    for r in flat::full_roots(length) {
        let n = compute(r, start, &local, &mut map, &mut proven, 0)?;
        roots.push(n);
    }
    if map.values().any(|(_, used)| !used) {
        return Err(ProofError::Malformed("unused node"));
    }
    Ok((roots, proven))
}

fn compute(
    index: u64,
    start: u64,
    local: &std::collections::HashMap<u64, Node>,
    provided: &mut std::collections::HashMap<u64, (Node, bool)>,
    proven: &mut Vec<Node>,
    depth: u32,
) -> Result<Node, ProofError> {
    if depth > 64 {
        return Err(ProofError::Malformed("tree too deep"));
    }
    let (a, b) = flat::span(index);
    if b <= start {
        return local.get(&index).copied().ok_or(ProofError::MissingAnchor);
    }
    if a >= start {
        if let Some((n, used)) = provided.get_mut(&index) {
            *used = true;
            let n = *n;
            proven.push(n);
            return Ok(n);
        }
    }
    let Some((l, r)) = flat::children(index) else {
        return Err(ProofError::Malformed("missing node"));
    };
    let left = compute(l, start, local, provided, proven, depth + 1)?;
    let right = compute(r, start, local, provided, proven, depth + 1)?;
    let p = Node::parent(&left, &right);
    proven.push(p);
    Ok(p)
}

/// The nodes a holder sends so that a verifier with `start` blocks can compute
/// the roots of `length` blocks: the maximal subtrees past `start`.
pub(crate) fn upgrade_node_indices(start: u64, length: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut stack: Vec<u64> = flat::full_roots(length).into_iter().rev().collect();
    while let Some(i) = stack.pop() {
        let (a, b) = flat::span(i);
        if b <= start {
            continue;
        }
        if a >= start {
            out.push(i);
            continue;
        }
        if let Some((l, r)) = flat::children(i) {
            stack.push(r);
            stack.push(l);
        }
    }
    out
}
