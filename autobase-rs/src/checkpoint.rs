//! Signed checkpoints: the indexed state of a base, signed by its indexers,
//! from which a joining peer can start instead of replaying every input node.
//!
//! A checkpoint names the indexed length, the committed frontier of every
//! writer, the system state (membership, rejected count) and each view's
//! length and Merkle tree hash at that point: all functions of the indexed
//! order, so every peer that indexed the same nodes builds the same bytes.
//! Indexers sign a domain-separated hash of its encoding with the ed25519
//! key of their input core (a writer key is the key of the single-signer
//! manifest of that public key). A checkpoint is final when a majority of
//! the indexers it names signed it; a peer accepts it only when a majority
//! of the indexers *it* already trusts signed it too, so a forger cannot
//! name itself the only indexer.

use crate::base::{Host, WriterInfo};
use crate::linearizer::WriterCheckpoint;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use hypercore_rs::hash::{tree_hash, Node as TreeNode};
use hypercore_rs::{KeyPair, Manifest, PublicKey, Sig};
use serde::{Deserialize, Serialize};

const CHECKPOINT_VERSION: u8 = 2;
const SIGN_DOMAIN: &str = "autobase-rs/checkpoint/v1";

/// The most signatures a checkpoint may carry (more is malformed).
pub const MAX_CHECKPOINT_SIGNATURES: usize = 64;

/// Why a checkpoint was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The checkpoint belongs to another base.
    #[error("the checkpoint belongs to another base")]
    WrongBase,
    /// A signature does not verify (forged or altered checkpoint).
    #[error("a checkpoint signature does not verify")]
    BadSignature,
    /// Too few of the required indexers signed.
    #[error("{signed} of the required indexers signed, {needed} are needed")]
    NoQuorum {
        /// Distinct required indexers that signed.
        signed: usize,
        /// The majority needed.
        needed: usize,
    },
    /// The checkpoint is not ahead of what this peer already indexed.
    #[error("checkpoint at {offered} is not ahead of the indexed length {have}")]
    Stale {
        /// This peer's indexed length.
        have: u64,
        /// The checkpoint's indexed length.
        offered: u64,
    },
    /// The view blocks offered do not rebuild the signed view.
    #[error("the blocks of view {0:?} do not match the signed tree hash")]
    ViewMismatch(String),
    /// The checkpoint is badly shaped (version, views, sizes).
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// Two signed checkpoints with different contents cannot be merged.
    #[error("the checkpoints differ")]
    Differ,
    /// This peer is not an indexer at its indexed length, so it cannot sign.
    #[error("this peer is not an indexer")]
    NotIndexer,
}

/// One view at the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ViewCheckpoint {
    /// The view's name.
    pub name: String,
    /// Its core length at the indexed length.
    pub length: u64,
    /// Its Merkle tree hash at that length.
    pub hash: [u8; 32],
}

/// The last committed node of one writer: pins the fork of its log that was
/// indexed, so a peer that continues from a checkpoint checks the next
/// blocks it reads chain onto it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommittedTip {
    /// The writer's key.
    pub key: [u8; 32],
    /// The node's position in the writer's input.
    pub seq: u64,
    /// Its hash and the writer's signature.
    pub node: crate::equivocation::SignedNode,
}

/// The indexed state of a base at one indexed length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Checkpoint {
    /// Format version.
    pub version: u8,
    /// The base key.
    pub base: [u8; 32],
    /// Indexed length (committed nodes).
    pub indexed_length: u64,
    /// Committed frontier of every writer with committed nodes, by key.
    pub writers: Vec<WriterCheckpoint>,
    /// Membership at the indexed length.
    pub members: Vec<WriterInfo>,
    /// Blocks rejected up to the indexed length.
    pub rejected: u64,
    /// Every view at the indexed length, in the base's view order.
    pub views: Vec<ViewCheckpoint>,
    /// The last committed node of every writer with committed nodes, by key.
    pub tips: Vec<CommittedTip>,
}

/// One indexer's signature over a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CheckpointSignature {
    /// The signer's ed25519 public key (its writer key is the key of
    /// `Manifest::single(public_key)`).
    pub public_key: PublicKey,
    /// The signature over [`Checkpoint::signable`].
    pub signature: Sig,
}

/// A checkpoint with its indexers' signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SignedCheckpoint {
    /// What is signed.
    pub checkpoint: Checkpoint,
    /// The signatures.
    pub signatures: Vec<CheckpointSignature>,
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl Checkpoint {
    pub(crate) fn new(
        base: [u8; 32],
        indexed_length: u64,
        mut writers: Vec<WriterCheckpoint>,
        host: &Host,
        rejected: u64,
        views: Vec<ViewCheckpoint>,
        mut tips: Vec<CommittedTip>,
    ) -> Self {
        // Writers with nothing committed depend on what a peer happened to
        // see; ids depend on arrival order: keep the committed, by key.
        writers.retain(|w| w.committed > 0);
        writers.sort_by_key(|w| w.key);
        tips.retain(|t| {
            writers
                .iter()
                .any(|w| w.key == t.key && w.committed == t.seq + 1)
        });
        tips.sort_by_key(|t| t.key);
        Checkpoint {
            version: CHECKPOINT_VERSION,
            base,
            indexed_length,
            writers,
            members: host.writers().to_vec(),
            rejected,
            views,
            tips,
        }
    }

    /// The membership as a [`Host`].
    pub(crate) fn host(&self) -> Host {
        Host::from_writers(self.members.clone())
    }

    /// The bytes indexers sign: a domain-separated hash of the encoding.
    pub fn signable(&self) -> [u8; 32] {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        blake3::derive_key(SIGN_DOMAIN, &bytes)
    }

    /// The writer keys of the indexers at this checkpoint.
    pub fn indexers(&self) -> Vec<[u8; 32]> {
        self.host().indexer_keys()
    }
}

/// The writer key of an ed25519 public key (its single-signer core key).
pub fn writer_key(public_key: &PublicKey) -> [u8; 32] {
    Manifest::single(*public_key).key()
}

impl SignedCheckpoint {
    /// A checkpoint with no signature yet.
    pub fn unsigned(checkpoint: Checkpoint) -> Self {
        SignedCheckpoint {
            checkpoint,
            signatures: Vec::new(),
        }
    }

    /// Adds (or replaces) the signature of `key_pair` (an indexer's input
    /// core key pair; [`crate::Autobase::sign_checkpoint`] uses this peer's).
    pub fn sign(&mut self, key_pair: &KeyPair) {
        let sk = SigningKey::from_bytes(&key_pair.seed());
        let public_key = key_pair.public_key();
        self.signatures.retain(|s| s.public_key != public_key);
        self.signatures.push(CheckpointSignature {
            public_key,
            signature: Sig(sk.sign(&self.checkpoint.signable()).to_bytes()),
        });
    }

    /// The wire encoding (postcard), to carry a checkpoint to a joiner.
    pub fn encode(&self) -> Vec<u8> {
        // Plain owned data into a Vec: cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes [`SignedCheckpoint::encode`]'s bytes (never panics; says
    /// nothing about the signatures: call [`SignedCheckpoint::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let s: SignedCheckpoint =
            postcard::from_bytes(bytes).map_err(|_| CheckpointError::Malformed("encoding"))?;
        if s.checkpoint.version != CHECKPOINT_VERSION {
            return Err(CheckpointError::Malformed("version"));
        }
        if s.signatures.len() > MAX_CHECKPOINT_SIGNATURES {
            return Err(CheckpointError::Malformed("too many signatures"));
        }
        Ok(s)
    }

    /// Adds the signatures of `other` over the same checkpoint.
    pub fn merge(&mut self, other: &SignedCheckpoint) -> Result<(), CheckpointError> {
        if other.checkpoint != self.checkpoint {
            return Err(CheckpointError::Differ);
        }
        for s in &other.signatures {
            if !self.signatures.iter().any(|o| o.public_key == s.public_key) {
                self.signatures.push(s.clone());
            }
        }
        Ok(())
    }

    /// Drops every signature that does not verify over this checkpoint, so
    /// that a forged signature merged from one peer cannot spoil (or, under
    /// a genuine signer's key, shadow) the genuine ones from another.
    pub fn retain_valid(&mut self) {
        let msg = self.checkpoint.signable();
        self.signatures.retain(|s| {
            VerifyingKey::from_bytes(&s.public_key).is_ok_and(|vk| {
                vk.verify(&msg, &ed25519_dalek::Signature::from_bytes(&s.signature.0))
                    .is_ok()
            })
        });
    }

    /// Checks one link of a chain of checkpoints: every signature verifies
    /// and a majority of `previous` signed (the indexers named by the link
    /// before, or those the verifier trusts). The indexers a link names may
    /// not have signed it: it is the checkpoint at which an indexer set
    /// handed over to the next, vouched for by the outgoing set.
    pub fn verify_link(
        &self,
        base: &[u8; 32],
        previous: &[[u8; 32]],
    ) -> Result<(), CheckpointError> {
        let signers = self.signers(base)?;
        quorum(&signers, previous)
    }

    /// The writer keys of the signers, sorted; fails unless every signature
    /// verifies.
    fn signers(&self, base: &[u8; 32]) -> Result<Vec<[u8; 32]>, CheckpointError> {
        let cp = &self.checkpoint;
        if cp.version != CHECKPOINT_VERSION {
            return Err(CheckpointError::Malformed("version"));
        }
        if &cp.base != base {
            return Err(CheckpointError::WrongBase);
        }
        if self.signatures.len() > MAX_CHECKPOINT_SIGNATURES {
            return Err(CheckpointError::Malformed("too many signatures"));
        }
        let msg = cp.signable();
        let mut signers: Vec<[u8; 32]> = Vec::with_capacity(self.signatures.len());
        for s in &self.signatures {
            let vk = VerifyingKey::from_bytes(&s.public_key)
                .map_err(|_| CheckpointError::BadSignature)?;
            let sig = ed25519_dalek::Signature::from_bytes(&s.signature.0);
            vk.verify(&msg, &sig)
                .map_err(|_| CheckpointError::BadSignature)?;
            signers.push(writer_key(&s.public_key));
        }
        signers.sort_unstable();
        signers.dedup();
        Ok(signers)
    }

    /// Checks the checkpoint for base `base`: every signature verifies, a
    /// majority of the indexers it names signed, and a majority of
    /// `trusted` (the indexers the verifier already knows) signed.
    pub fn verify(&self, base: &[u8; 32], trusted: &[[u8; 32]]) -> Result<(), CheckpointError> {
        self.verify_without(base, trusted, &[])
    }

    /// [`SignedCheckpoint::verify`], with the majorities taken over the
    /// indexers other than `proven`: writers the verifier holds a valid
    /// [`Equivocation`](crate::Equivocation) proof against. Under the
    /// bound of the forking-indexer rule (one forker, an even number of
    /// at least four indexers, `DESIGN.md`) the others are honest, and
    /// honest indexers only sign states that never conflict, so a
    /// majority of them suffices (2 of the 3 others of 4).
    pub fn verify_without(
        &self,
        base: &[u8; 32],
        trusted: &[[u8; 32]],
        proven: &[[u8; 32]],
    ) -> Result<(), CheckpointError> {
        let signers = self.signers(base)?;
        let keep = |set: &[[u8; 32]]| -> Vec<[u8; 32]> {
            set.iter()
                .filter(|k| !proven.contains(k))
                .copied()
                .collect()
        };
        quorum(&signers, &keep(&self.checkpoint.indexers()))?;
        quorum(&signers, &keep(trusted))
    }
}

/// Whether a majority of `set` (deduplicated) is among `signers` (sorted).
fn quorum(signers: &[[u8; 32]], set: &[[u8; 32]]) -> Result<(), CheckpointError> {
    let mut set = set.to_vec();
    set.sort_unstable();
    set.dedup();
    if set.is_empty() {
        return Err(CheckpointError::Malformed("no indexers"));
    }
    let signed = set
        .iter()
        .filter(|k| signers.binary_search(k).is_ok())
        .count();
    let needed = majority(set.len());
    if signed < needed {
        return Err(CheckpointError::NoQuorum { signed, needed });
    }
    Ok(())
}

/// Follows a chain of checkpoints from the indexers a verifier trusts: in
/// order of indexed length, every link signed by a majority of the current
/// set moves the set to the indexers that link names (links that do not
/// verify are skipped). Returns the set reached.
pub fn follow_chain(
    base: &[u8; 32],
    trusted: &[[u8; 32]],
    chain: &[SignedCheckpoint],
) -> Vec<[u8; 32]> {
    let mut links: Vec<&SignedCheckpoint> = chain.iter().collect();
    links.sort_by_key(|l| l.checkpoint.indexed_length);
    let mut current = trusted.to_vec();
    for l in links {
        if l.verify_link(base, &current).is_ok() {
            let next = l.checkpoint.indexers();
            if !next.is_empty() {
                current = next;
            }
        }
    }
    current
}

/// The Merkle tree hash of a core holding exactly `blocks`.
pub(crate) fn tree_hash_of(blocks: &[Vec<u8>]) -> [u8; 32] {
    // Full subtrees left to right, with their leaf counts; two of equal
    // count merge, so the stack ends as the roots.
    let mut stack: Vec<(TreeNode, u64)> = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        let mut node = (TreeNode::leaf(i as u64, b), 1u64);
        while let Some(&(left, n)) = stack.last() {
            if n != node.1 {
                break;
            }
            stack.pop();
            node = (TreeNode::parent(&left, &node.0), n.saturating_mul(2));
        }
        stack.push(node);
    }
    let roots: Vec<TreeNode> = stack.into_iter().map(|(n, _)| n).collect();
    tree_hash(&roots)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hypercore_rs::{Core, MemoryStorage};
    use proptest::prelude::*;
    use std::sync::Arc;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn tree_hash_of_matches_a_core(blocks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..70)) {
            let got = futures::executor::block_on(async {
                let core = Core::builder(Arc::new(MemoryStorage::new())).open().await.unwrap();
                let mut hashes = vec![core.tree_hash()];
                for b in &blocks {
                    core.append(b).await.unwrap();
                    hashes.push(core.tree_hash());
                }
                hashes
            });
            for (n, h) in got.iter().enumerate() {
                prop_assert_eq!(tree_hash_of(&blocks[..n]), *h);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = SignedCheckpoint::decode(&bytes);
        }

        #[test]
        fn a_flipped_bit_never_verifies(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let kp = KeyPair::from_seed([3; 32]);
            let base = writer_key(&kp.public_key());
            let mut host = Host::default();
            host.add_writer(base, true).unwrap();
            let views = vec![ViewCheckpoint { name: "view".into(), length: 7, hash: [1; 32] }];
            let cp = Checkpoint::new(base, 9, Vec::new(), &host, 2, views, Vec::new());
            let mut s = SignedCheckpoint::unsigned(cp);
            s.sign(&kp);
            let mut bytes = s.encode();
            prop_assert_eq!(&SignedCheckpoint::decode(&bytes).unwrap(), &s);
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(t) = SignedCheckpoint::decode(&bytes) {
                prop_assert!(t == s || t.verify(&base, &[base]).is_err());
            }
        }
    }

    #[test]
    fn duplicate_signatures_count_once() {
        let kp = KeyPair::from_seed([3; 32]);
        let other = KeyPair::from_seed([4; 32]);
        let base = writer_key(&kp.public_key());
        let mut host = Host::default();
        host.add_writer(base, true).unwrap();
        host.add_writer(writer_key(&other.public_key()), true)
            .unwrap();
        let cp = Checkpoint::new(base, 5, Vec::new(), &host, 0, Vec::new(), Vec::new());
        let mut s = SignedCheckpoint::unsigned(cp);
        s.sign(&kp);
        let dup = s.signatures[0].clone();
        s.signatures.push(dup);
        // Two indexers: one signer, twice, is still one of two.
        assert_eq!(
            s.verify(&base, &[base]),
            Err(CheckpointError::NoQuorum {
                signed: 1,
                needed: 2
            })
        );
        s.sign(&other);
        s.verify(&base, &[base]).unwrap();
        let sigs = s.signatures.clone();
        s.signatures =
            std::iter::repeat_n(sigs[0].clone(), MAX_CHECKPOINT_SIGNATURES + 1).collect();
        assert!(matches!(
            s.verify(&base, &[base]),
            Err(CheckpointError::Malformed(_))
        ));
        // A signature moved onto another public key does not verify.
        s.signatures = sigs;
        s.signatures[0].public_key = KeyPair::from_seed([5; 32]).public_key();
        assert_eq!(s.verify(&base, &[base]), Err(CheckpointError::BadSignature));
    }
}
