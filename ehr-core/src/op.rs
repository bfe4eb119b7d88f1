//! The operations writers append to their logs.
//!
//! An [`Op`] is what one writer asks the record to do, with the time the
//! writer claims. It is encoded as one format byte ([`OP_FORMAT`]) followed by
//! postcard. Ops carry resources as their original bytes. Decoding never
//! trusts the input: any malformed op is a typed [`OpError`], and `apply`
//! records it as a rejected write.

use crate::consent::Grant;
use crate::fhir::ResourceRef;
use serde::{Deserialize, Serialize};

/// The op encoding version written by this code.
pub const OP_FORMAT: u8 = 1;

/// A writer's 32-byte public key (its log's key).
pub type WriterKey = [u8; 32];

/// What the writer had seen of a resource when it wrote, so that concurrent
/// edits can be told apart from sequential ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Expect {
    /// A blind write (imports): never marked as a conflict.
    Any,
    /// The writer saw no live version (a create).
    Absent,
    /// The writer edited this version.
    Version(u64),
}

/// One write inside an atomic import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ImportOp {
    /// Create or replace a resource.
    Put {
        /// The resource's JSON bytes (with an id).
        #[serde(with = "serde_bytes")]
        resource: Vec<u8>,
    },
    /// Delete a resource.
    Delete {
        /// Which one.
        target: ResourceRef,
    },
}

/// What a writer asks the record to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OpBody {
    /// The first op of a record: names its patient; its writer is the owner.
    Genesis {
        /// The record's patient id.
        patient: String,
        /// The owner device's network identity (for the firewall).
        peer: Option<[u8; 32]>,
    },
    /// Create or replace a resource.
    Put {
        /// The resource's JSON bytes (with an id).
        #[serde(with = "serde_bytes")]
        resource: Vec<u8>,
        /// What the writer had seen.
        expect: Expect,
    },
    /// Delete a resource (a tombstone; history is kept).
    Delete {
        /// Which one.
        target: ResourceRef,
        /// What the writer had seen.
        expect: Expect,
    },
    /// Several writes that are accepted together or rejected together.
    Import {
        /// The writes.
        entries: Vec<ImportOp>,
    },
    /// Gives a writer a grant (owners only).
    Grant {
        /// The writer.
        writer: WriterKey,
        /// What it may do.
        grant: Grant,
    },
    /// Replaces an existing writer's grant (owners only).
    ChangeGrant {
        /// The writer.
        writer: WriterKey,
        /// Its new grant.
        grant: Grant,
    },
    /// Revokes a writer (owners only); later writes by it are rejected.
    Revoke {
        /// The writer.
        writer: WriterKey,
    },
    /// Gives a writer a grant because it redeemed an invite (owners only).
    /// Only the first redemption of an invite in linear order takes
    /// effect; a later one (two patient devices that answered while
    /// partitioned) is rejected on every peer.
    InviteGrant {
        /// The invite's id.
        invite: [u8; 16],
        /// The writer.
        writer: WriterKey,
        /// What it may do.
        grant: Grant,
    },
    /// Marks the record sealed (owners only; cannot be undone): from then
    /// on resources written in clear are rejected (see
    /// [`crate::sealed_policy`]).
    RequireSealed,
}

/// An op with the time its writer claims (ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The writer's clock when it wrote.
    pub time: u64,
    /// What it asks.
    pub body: OpBody,
}

/// An op that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// Empty input.
    #[error("empty op")]
    Empty,
    /// A format version this code does not know.
    #[error("unknown op format {0}")]
    UnknownFormat(u8),
    /// Bytes that do not decode (or trailing bytes).
    #[error("malformed op")]
    Malformed,
}

impl Op {
    /// An op at `time`.
    pub fn new(time: u64, body: OpBody) -> Op {
        Op { time, body }
    }

    /// The encoding: the format byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![OP_FORMAT];
        // Serialising plain data into a Vec cannot fail.
        match postcard::to_extend(self, out) {
            Ok(v) => v,
            Err(_) => vec![OP_FORMAT],
        }
    }

    /// Decodes an op, refusing unknown formats and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Op, OpError> {
        let (&format, rest) = bytes.split_first().ok_or(OpError::Empty)?;
        if format != OP_FORMAT {
            return Err(OpError::UnknownFormat(format));
        }
        match postcard::take_from_bytes::<Op>(rest) {
            Ok((op, [])) => Ok(op),
            _ => Err(OpError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::Role;
    use proptest::prelude::*;

    #[test]
    fn golden_and_round_trip() {
        let op = Op::new(
            1,
            OpBody::Put {
                resource: b"{}".to_vec(),
                expect: Expect::Version(2),
            },
        );
        let bytes = op.encode();
        // format, time, variant 1 (Put), len 2, "{}", Expect::Version, 2
        assert_eq!(bytes, [1, 1, 1, 2, b'{', b'}', 2, 2]);
        assert_eq!(Op::decode(&bytes), Ok(op));
        let g = Op::new(
            9,
            OpBody::Grant {
                writer: [7; 32],
                grant: Grant::new(Role::Lab, &["patient/Observation.c"])
                    .expect("scope")
                    .with_expiry(5),
            },
        );
        assert_eq!(Op::decode(&g.encode()), Ok(g));
        assert_eq!(Op::decode(&[]), Err(OpError::Empty));
        assert_eq!(Op::decode(&[2, 0]), Err(OpError::UnknownFormat(2)));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(Op::decode(&trailing), Err(OpError::Malformed));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = bytes;
            if let Some(f) = b.first_mut() { *f = OP_FORMAT; }
            let _ = Op::decode(&b);
        }
    }
}
