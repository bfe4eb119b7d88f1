//! The input-core block format: one block is one DAG node.
//!
//! A block names the heads its writer had seen (other writers' keys, lengths
//! and the hash of the named node, with its writer's signature), its height
//! in the DAG (checked on arrival), the hash of its writer's previous node,
//! and either a batch of user values (applied atomically), an ack, or the
//! proof that some writer equivocated. Every block is signed by its writer
//! over its node hash, so two conflicting blocks of one writer make a proof
//! anyone can check. Decoding never panics; a block that does not decode is
//! rejected the same way on every peer.

use crate::equivocation::{Equivocation, SIGN_DOMAIN};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use hypercore_rs::Sig;
use serde::{Deserialize, Serialize};

/// The block format version. The layout starts as it always did
/// (`{version, height, heads: [{key, length}], body}`, which readers such as
/// ehr-core's audit export decode) and continues with the previous node's
/// hash, the pins of the heads and the writer's signature.
pub const NODE_VERSION: u8 = 1;

/// The most heads a block may name: a block naming more is rejected (each
/// named key makes every reader open that writer's input core).
pub const MAX_HEADS: usize = 1024;

const NODE_HASH_DOMAIN: &str = "autobase-rs/node/v2";

/// A head named by a node: the writer's key, the length of its log seen, and
/// the hash of node `length - 1` with that writer's signature over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WireHead {
    pub(crate) key: [u8; 32],
    pub(crate) length: u64,
    pub(crate) hash: [u8; 32],
    pub(crate) sig: Sig,
}

/// What a node carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// Nothing to say: confirms what the writer has seen.
    Ack,
    /// A batch of user values, applied together.
    Values(Vec<serde_bytes::ByteBuf>),
    /// Proof that a writer signed two different nodes at one position: once
    /// indexed, that writer is cut on every peer.
    Evidence(Box<Equivocation>),
    /// Evidence written by an indexer, with what its own chain had seen of
    /// the forker at the proof's position when it learnt the proof: the
    /// attestation the fork choice counts (see `DESIGN.md`).
    Attested(Box<Attested>),
}

/// An indexer's evidence with its attestation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Attested {
    /// The proof.
    pub(crate) proof: Equivocation,
    /// The hash of the forker's node at `proof.seq` in the past of the
    /// writer's previous node (an attested node names no heads, so that is
    /// its whole past), or `None` when that past does not reach it.
    pub(crate) seen: Option<[u8; 32]>,
}

impl Body {
    /// The proof an evidence node carries, and its attestation (`Some` for
    /// an attested node).
    pub(crate) fn evidence(&self) -> Option<(&Equivocation, Option<Option<[u8; 32]>>)> {
        match self {
            Body::Evidence(p) => Some((p, None)),
            Body::Attested(a) => Some((&a.proof, Some(a.seen))),
            _ => None,
        }
    }
}

/// The signed part of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Block {
    pub(crate) version: u8,
    pub(crate) height: u64,
    /// Hash of the writer's previous node (zero for its first).
    pub(crate) prev: [u8; 32],
    pub(crate) heads: Vec<WireHead>,
    pub(crate) body: Body,
}

/// A block as read: its content, its node hash and its writer's signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Signed {
    pub(crate) block: Block,
    pub(crate) hash: [u8; 32],
    pub(crate) sig: Sig,
}

impl Signed {
    /// The node's hash and signature.
    pub(crate) fn node(&self) -> crate::equivocation::SignedNode {
        crate::equivocation::SignedNode {
            hash: self.hash,
            signature: self.sig,
        }
    }
}

/// The hash of node `seq` with content bytes `content` (covers `prev`, so
/// it pins the writer's whole log up to that node).
pub(crate) fn node_hash(seq: u64, content: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(NODE_HASH_DOMAIN);
    h.update(&seq.to_le_bytes());
    h.update(content);
    *h.finalize().as_bytes()
}

/// The message a writer signs for a node hash.
pub(crate) fn signable(hash: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(SIGN_DOMAIN, hash)
}

/// Whether `sig` is `vk`'s signature over node hash `hash`.
pub(crate) fn verify_node(vk: &VerifyingKey, hash: &[u8; 32], sig: &Sig) -> bool {
    vk.verify(
        &signable(hash),
        &ed25519_dalek::Signature::from_bytes(&sig.0),
    )
    .is_ok()
}

/// The encoded layout: the original fields first, then the trailer.
#[derive(Serialize, Deserialize)]
struct Layout {
    version: u8,
    height: u64,
    heads: Vec<LayoutHead>,
    body: Body,
    prev: [u8; 32],
    pins: Vec<Pin>,
}

#[derive(Serialize, Deserialize)]
struct LayoutHead {
    key: [u8; 32],
    length: u64,
}

#[derive(Serialize, Deserialize)]
struct Pin {
    hash: [u8; 32],
    sig: Sig,
}

impl Block {
    fn content(&self) -> Vec<u8> {
        let layout = Layout {
            version: self.version,
            height: self.height,
            heads: self
                .heads
                .iter()
                .map(|h| LayoutHead {
                    key: h.key,
                    length: h.length,
                })
                .collect(),
            body: self.body.clone(),
            prev: self.prev,
            pins: self
                .heads
                .iter()
                .map(|h| Pin {
                    hash: h.hash,
                    sig: h.sig,
                })
                .collect(),
        };
        // Encoding plain owned data into a Vec cannot fail.
        postcard::to_allocvec(&layout).unwrap_or_default()
    }

    /// Encodes and signs as node `seq`: the bytes, the node hash and the
    /// signature.
    pub(crate) fn sign(&self, seq: u64, key: &SigningKey) -> (Vec<u8>, [u8; 32], Sig) {
        let mut bytes = self.content();
        let hash = node_hash(seq, &bytes);
        let sig = Sig(key.sign(&signable(&hash)).to_bytes());
        bytes.extend_from_slice(&sig.0);
        (bytes, hash, sig)
    }

    /// Decodes node `seq` and checks its shape (not the DAG facts, nor the
    /// signature: see [`verify_node`]).
    pub(crate) fn decode(bytes: &[u8], seq: u64) -> Option<Signed> {
        let split = bytes.len().checked_sub(64)?;
        let (content, sig) = bytes.split_at(split);
        let (l, rest): (Layout, _) = postcard::take_from_bytes(content).ok()?;
        if !rest.is_empty() || l.heads.len() != l.pins.len() {
            return None;
        }
        let b = Block {
            version: l.version,
            height: l.height,
            prev: l.prev,
            heads: l
                .heads
                .into_iter()
                .zip(l.pins)
                .map(|(h, p)| WireHead {
                    key: h.key,
                    length: h.length,
                    hash: p.hash,
                    sig: p.sig,
                })
                .collect(),
            body: l.body,
        };
        if b.version != NODE_VERSION || b.height == 0 {
            return None;
        }
        if b.heads.len() > MAX_HEADS || b.heads.iter().any(|h| h.length == 0) {
            return None;
        }
        if (seq == 0) != (b.prev == [0; 32]) {
            return None;
        }
        if let Body::Values(v) = &b.body {
            if v.is_empty() {
                return None;
            }
        }
        let sig = Sig(sig.try_into().ok()?);
        Some(Signed {
            hash: node_hash(seq, content),
            block: b,
            sig,
        })
    }
}

/// One user value in linear order, as handed to [`crate::Apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Node {
    /// The writer's input core key.
    pub writer: [u8; 32],
    /// The block's position in the writer's input core.
    pub seq: u64,
    /// Position of this value inside its block's batch.
    pub index: u32,
    /// The value.
    pub value: Vec<u8>,
    /// The heads (writer key, length) the writer had seen.
    pub heads: Vec<([u8; 32], u64)>,
}

impl Node {
    /// A node (for tests of `apply` logic outside a base).
    pub fn new(writer: [u8; 32], seq: u64, value: Vec<u8>) -> Self {
        Node {
            writer,
            seq,
            index: 0,
            value,
            heads: Vec::new(),
        }
    }
}

/// The user values carried by an input block stored at position `seq` of
/// its writer's core; `None` when the block does not decode, or is an ack or
/// an equivocation proof. Checks the block's shape only, not its signature
/// nor its place in the DAG: for readers outside a base, such as audit tools
/// that check blocks by Merkle proof against the core's key.
pub fn block_values(bytes: &[u8], seq: u64) -> Option<Vec<Vec<u8>>> {
    match Block::decode(bytes, seq)?.block.body {
        Body::Values(v) => Some(v.into_iter().map(|b| b.into_vec()).collect()),
        Body::Ack | Body::Evidence(_) | Body::Attested(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[5; 32])
    }

    #[test]
    fn golden_ack() {
        let b = Block {
            version: 1,
            height: 3,
            prev: [4; 32],
            heads: vec![WireHead {
                key: [7; 32],
                length: 2,
                hash: [8; 32],
                sig: Sig([9; 64]),
            }],
            body: Body::Ack,
        };
        let (bytes, hash, sig) = b.sign(1, &key());
        // The original layout first (version, height, heads, body), then
        // prev, the pins and (after the postcard part) the signature.
        let mut want = vec![1u8, 3, 1];
        want.extend([7u8; 32]);
        want.extend([2u8, 0]);
        want.extend([4u8; 32]);
        want.push(1);
        want.extend([8u8; 32]);
        want.push(64);
        want.extend([9u8; 64]);
        assert_eq!(&bytes[..bytes.len() - 64], &want[..]);
        let got = Block::decode(&bytes, 1).unwrap();
        assert_eq!((got.block, got.hash, got.sig), (b, hash, sig));
        let vk = key().verifying_key();
        assert!(verify_node(&vk, &hash, &sig));
        // The hash covers the position: the same bytes at another seq differ.
        assert_ne!(Block::decode(&bytes, 2).unwrap().hash, hash);
        let mut bad = sig;
        bad.0[0] ^= 1;
        assert!(!verify_node(&vk, &hash, &bad));
    }

    #[test]
    fn rejects_bad_shapes() {
        let ok = Block {
            version: 1,
            height: 1,
            prev: [1; 32],
            heads: vec![],
            body: Body::Values(vec![serde_bytes::ByteBuf::from(vec![1u8])]),
        };
        let enc = |b: &Block| b.sign(3, &key()).0;
        assert!(Block::decode(&enc(&ok), 3).is_some());
        // prev must be zero exactly for the first node.
        assert!(Block::decode(&enc(&ok), 0).is_none());
        let mut b = ok.clone();
        b.version = 2;
        assert!(Block::decode(&enc(&b), 3).is_none());
        let mut b = ok.clone();
        b.height = 0;
        assert!(Block::decode(&enc(&b), 3).is_none());
        let mut b = ok.clone();
        b.body = Body::Values(vec![]);
        assert!(Block::decode(&enc(&b), 3).is_none());
        let mut b = ok.clone();
        b.heads = vec![WireHead {
            key: [1; 32],
            length: 0,
            hash: [0; 32],
            sig: Sig([0; 64]),
        }];
        assert!(Block::decode(&enc(&b), 3).is_none());
        let mut bytes = enc(&ok);
        bytes.pop();
        assert!(Block::decode(&bytes, 3).is_none());
        let mut b = ok;
        b.heads = (0..=MAX_HEADS)
            .map(|i| WireHead {
                key: [(i % 251) as u8; 32],
                length: 1,
                hash: [0; 32],
                sig: Sig([0; 64]),
            })
            .collect();
        assert!(Block::decode(&enc(&b), 3).is_none());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), seq in 0u64..4) {
            let _ = Block::decode(&bytes, seq);
        }

        #[test]
        fn round_trip(height in 1u64..1000, vals in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 1..5)) {
            let b = Block {
                version: 1,
                height,
                prev: [0; 32],
                heads: vec![],
                body: Body::Values(vals.into_iter().map(serde_bytes::ByteBuf::from).collect()),
            };
            let (bytes, hash, sig) = b.sign(0, &key());
            prop_assert_eq!(Block::decode(&bytes, 0), Some(Signed { block: b, hash, sig }));
        }
    }
}
