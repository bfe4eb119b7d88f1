//! Proofs that a writer forked its input.
//!
//! Every input block is signed by its writer over its node hash, and a node
//! hash covers the hash of the writer's previous node, so it pins the whole
//! log up to that node. An honest writer never signs two different nodes at
//! one position (its input core is append-only); two valid signatures by one
//! writer over different node hashes at the same position are an
//! [`Equivocation`]: anyone can check it with nothing but the proof.
//!
//! Peers build a proof as soon as they read a block or a head that conflicts
//! with the log they hold, gossip it, and write it into their input as an
//! evidence node. When that node is applied, in linear order, the writer is
//! cut on every peer alike: removed, and its nodes past the ones ordered
//! before the evidence are never read again (see `DESIGN.md`).

use crate::checkpoint::writer_key;
use ed25519_dalek::VerifyingKey;
use hypercore_rs::{PublicKey, Sig};
use serde::{Deserialize, Serialize};

/// The domain of the messages writers sign for their nodes.
pub(crate) const SIGN_DOMAIN: &str = "autobase-rs/node-signature/v2";

/// One signed node position: the node hash and its writer's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SignedNode {
    /// The node hash (it covers the position and the previous node's hash).
    pub hash: [u8; 32],
    /// The writer's signature over it.
    pub signature: Sig,
}

/// Two different nodes signed by one writer at the same position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Equivocation {
    /// The writer's ed25519 public key (its writer key is
    /// `Manifest::single(public_key).key()`).
    pub public_key: PublicKey,
    /// The position (seq in the writer's input) both nodes claim.
    pub seq: u64,
    /// One node, the one with the smaller hash.
    pub a: SignedNode,
    /// The other node.
    pub b: SignedNode,
}

/// Why an equivocation proof is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EquivocationError {
    /// The two nodes are the same: nothing conflicts.
    #[error("the two nodes are the same")]
    NoConflict,
    /// A signature does not verify, or the key is not a public key.
    #[error("a signature does not verify")]
    BadSignature,
    /// The bytes do not decode.
    #[error("malformed equivocation proof")]
    Malformed,
}

impl Equivocation {
    /// A proof from two signed nodes at `seq` (in any order).
    pub fn new(public_key: PublicKey, seq: u64, x: SignedNode, y: SignedNode) -> Self {
        let (a, b) = if x.hash <= y.hash { (x, y) } else { (y, x) };
        Equivocation {
            public_key,
            seq,
            a,
            b,
        }
    }

    /// A proof from two raw input blocks (as stored in a writer's input
    /// core, or fetched) that both claim position `seq`: each must decode
    /// as a node at `seq` and carry `public_key`'s signature, and they must
    /// differ. What an auditor holding two copies of a writer's log uses to
    /// show the fork to others ([`crate::Autobase::add_equivocation`]).
    pub fn from_blocks(
        public_key: PublicKey,
        seq: u64,
        x: &[u8],
        y: &[u8],
    ) -> Result<Self, EquivocationError> {
        let node = |b: &[u8]| {
            crate::node::Block::decode(b, seq)
                .map(|s| s.node())
                .ok_or(EquivocationError::Malformed)
        };
        let proof = Equivocation::new(public_key, seq, node(x)?, node(y)?);
        proof.verify()?;
        Ok(proof)
    }

    /// The writer key of the equivocating writer.
    pub fn writer(&self) -> [u8; 32] {
        writer_key(&self.public_key)
    }

    /// Checks the proof: two different node hashes, both signed by the key.
    /// (`seq` is informative: the hashes cover the position already.)
    pub fn verify(&self) -> Result<(), EquivocationError> {
        if self.a.hash == self.b.hash {
            return Err(EquivocationError::NoConflict);
        }
        let vk = VerifyingKey::from_bytes(&self.public_key)
            .map_err(|_| EquivocationError::BadSignature)?;
        for n in [&self.a, &self.b] {
            if !crate::node::verify_node(&vk, &n.hash, &n.signature) {
                return Err(EquivocationError::BadSignature);
            }
        }
        Ok(())
    }

    /// The wire encoding (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes [`Equivocation::encode`]'s bytes (never panics; call
    /// [`Equivocation::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, EquivocationError> {
        postcard::from_bytes(bytes).map_err(|_| EquivocationError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::node::{Block, Body};
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    /// A one-value block at `seq` (its `prev` is made up).
    fn block(seq: u64, v: u8) -> Block {
        Block {
            version: crate::node::NODE_VERSION,
            height: 1,
            prev: if seq == 0 { [0; 32] } else { [1; 32] },
            heads: vec![],
            body: Body::Values(vec![serde_bytes::ByteBuf::from(vec![v])]),
        }
    }

    fn node(key: &SigningKey, seq: u64, v: u8) -> SignedNode {
        let (_, hash, signature) = block(seq, v).sign(seq, key);
        SignedNode { hash, signature }
    }

    #[test]
    fn two_signed_nodes_prove_a_fork() {
        let k = SigningKey::from_bytes(&[1; 32]);
        let pk = k.verifying_key().to_bytes();
        let p = Equivocation::new(pk, 4, node(&k, 4, 1), node(&k, 4, 2));
        p.verify().unwrap();
        assert_eq!(p, Equivocation::new(pk, 4, p.b, p.a));
        assert_eq!(
            p.writer(),
            hypercore_rs::Manifest::single(pk).key(),
            "the writer key is the input core key"
        );
        assert_eq!(Equivocation::decode(&p.encode()).unwrap(), p);
        // The same node twice proves nothing.
        let same = Equivocation::new(pk, 4, node(&k, 4, 1), node(&k, 4, 1));
        assert_eq!(same.verify(), Err(EquivocationError::NoConflict));
        // Another key's node cannot frame this writer.
        let other = SigningKey::from_bytes(&[2; 32]);
        let framed = Equivocation::new(pk, 4, node(&k, 4, 1), node(&other, 4, 2));
        assert_eq!(framed.verify(), Err(EquivocationError::BadSignature));
    }

    #[test]
    fn a_proof_from_raw_blocks() {
        let k = SigningKey::from_bytes(&[1; 32]);
        let pk = k.verifying_key().to_bytes();
        let raw = |seq: u64, v: u8, key: &SigningKey| block(seq, v).sign(seq, key).0;
        let (x, y) = (raw(4, 1, &k), raw(4, 2, &k));
        let p = Equivocation::from_blocks(pk, 4, &x, &y).unwrap();
        assert_eq!(p, Equivocation::new(pk, 4, node(&k, 4, 1), node(&k, 4, 2)));
        assert_eq!(
            Equivocation::from_blocks(pk, 4, &x, &x),
            Err(EquivocationError::NoConflict)
        );
        // Read at another position, the same bytes are other nodes (the
        // hash covers the position), so the signatures do not verify.
        assert_eq!(
            Equivocation::from_blocks(pk, 5, &x, &y),
            Err(EquivocationError::BadSignature)
        );
        let other = SigningKey::from_bytes(&[2; 32]);
        assert_eq!(
            Equivocation::from_blocks(pk, 4, &x, &raw(4, 2, &other)),
            Err(EquivocationError::BadSignature)
        );
        assert_eq!(
            Equivocation::from_blocks(pk, 4, &x, &y[..y.len() - 1]),
            Err(EquivocationError::Malformed)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn a_flipped_bit_never_frames(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let k = SigningKey::from_bytes(&[1; 32]);
            let honest = node(&k, 3, 1);
            // A proof made of one honest node and a tampered copy of it.
            let mut bytes = Equivocation::new(k.verifying_key().to_bytes(), 3, honest, honest).encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(p) = Equivocation::decode(&bytes) {
                prop_assert!(p.verify().is_err());
            }
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Equivocation::decode(&bytes);
        }
    }
}
