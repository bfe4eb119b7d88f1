//! The input-core block format: one block is one DAG node.
//!
//! A block names the heads its writer had seen (other writers' keys and
//! lengths), its height in the DAG (checked on arrival), and either a batch
//! of user values (applied atomically) or an ack. Decoding never panics; a
//! block that does not decode is rejected the same way on every peer.

use serde::{Deserialize, Serialize};

/// The block format version.
pub const NODE_VERSION: u8 = 1;

/// The most heads a block may name: a block naming more is rejected (each
/// named key makes every reader open that writer's input core).
pub const MAX_HEADS: usize = 1024;

/// A head named by a node: the writer's key and the length of its log seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireHead {
    pub(crate) key: [u8; 32],
    pub(crate) length: u64,
}

/// What a node carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// Nothing to say: confirms what the writer has seen.
    Ack,
    /// A batch of user values, applied together.
    Values(Vec<serde_bytes::ByteBuf>),
}

/// One input block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Block {
    pub(crate) version: u8,
    pub(crate) height: u64,
    pub(crate) heads: Vec<WireHead>,
    pub(crate) body: Body,
}

impl Block {
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Encoding plain owned data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes and checks the shape (not the DAG facts: the linearizer does).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Block> {
        let b: Block = postcard::from_bytes(bytes).ok()?;
        if b.version != NODE_VERSION || b.height == 0 {
            return None;
        }
        if b.heads.len() > MAX_HEADS || b.heads.iter().any(|h| h.length == 0) {
            return None;
        }
        if let Body::Values(v) = &b.body {
            if v.is_empty() {
                return None;
            }
        }
        Some(b)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_ack() {
        let b = Block {
            version: 1,
            height: 3,
            heads: vec![WireHead {
                key: [7; 32],
                length: 2,
            }],
            body: Body::Ack,
        };
        let bytes = b.encode();
        let mut want = vec![1u8, 3, 1];
        want.extend([7u8; 32]);
        want.extend([2u8, 0]);
        assert_eq!(bytes, want);
        assert_eq!(Block::decode(&bytes), Some(b));
    }

    #[test]
    fn rejects_bad_shapes() {
        let ok = Block {
            version: 1,
            height: 1,
            heads: vec![],
            body: Body::Values(vec![serde_bytes::ByteBuf::from(vec![1u8])]),
        };
        assert!(Block::decode(&ok.encode()).is_some());
        let mut b = ok.clone();
        b.version = 2;
        assert!(Block::decode(&b.encode()).is_none());
        let mut b = ok.clone();
        b.height = 0;
        assert!(Block::decode(&b.encode()).is_none());
        let mut b = ok.clone();
        b.body = Body::Values(vec![]);
        assert!(Block::decode(&b.encode()).is_none());
        let mut b = ok.clone();
        b.heads = vec![WireHead {
            key: [1; 32],
            length: 0,
        }];
        assert!(Block::decode(&b.encode()).is_none());
        let mut b = ok;
        b.heads = (0..=MAX_HEADS)
            .map(|i| WireHead {
                key: [(i % 251) as u8; 32],
                length: 1,
            })
            .collect();
        assert!(Block::decode(&b.encode()).is_none());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Block::decode(&bytes);
        }

        #[test]
        fn round_trip(height in 1u64..1000, vals in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 1..5)) {
            let b = Block {
                version: 1,
                height,
                heads: vec![],
                body: Body::Values(vals.into_iter().map(serde_bytes::ByteBuf::from).collect()),
            };
            prop_assert_eq!(Block::decode(&b.encode()), Some(b));
        }
    }
}
