//! The replication wire format: one message per frame, `[version][postcard]`,
//! with a hard frame-size limit checked before decoding, and the capability
//! that proves knowledge of a core's key without sending it.

use crate::hash::Hash;
use crate::proof::{Proof, ProofRequest};
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks (first byte of every frame).
pub const PROTOCOL_VERSION: u8 = 1;
/// The largest frame accepted or sent: a maximum-size block plus proof.
pub const MAX_FRAME: usize = crate::error::MAX_BLOCK_SIZE + 64 * 1024;
/// The most ranges one `Have` message may carry.
pub const MAX_RANGES_PER_MESSAGE: usize = 4096;
/// The longest extension name.
pub const MAX_EXTENSION_NAME: usize = 128;

const CAP_DOMAIN: &[u8] = b"hypercore-rs/replication-capability/v1";
const SESSION_DOMAIN: &str = "hypercore-rs 2026 replication session v1";

/// A replication message. Every channel-scoped message carries the *sender's*
/// channel number; the receiver maps it to its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// First message of each side: a fresh nonce (binds capabilities to the
    /// session when the transport gives no handshake hash).
    Hello {
        /// 32 random bytes.
        nonce: [u8; 32],
    },
    /// Opens a channel for the core with this discovery key.
    Open {
        /// The sender's channel number.
        channel: u32,
        /// The core's discovery key.
        discovery_key: Hash,
        /// Proof that the sender knows the core key.
        capability: Hash,
    },
    /// Refuses the remote's `Open` (unknown core or bad capability: the two
    /// are indistinguishable on purpose).
    Reject {
        /// The remote's channel number, as it sent it.
        channel: u32,
    },
    /// Closes a channel.
    Close {
        /// The sender's channel number.
        channel: u32,
    },
    /// The sender's view of the core.
    Sync {
        /// Channel.
        channel: u32,
        /// Fork id.
        fork: u64,
        /// Signed length.
        length: u64,
    },
    /// Asks for a proof.
    Request {
        /// Channel.
        channel: u32,
        /// Request id, unique per channel and sender.
        id: u64,
        /// What is asked.
        request: Box<ProofRequest>,
    },
    /// Withdraws a request.
    Cancel {
        /// Channel.
        channel: u32,
        /// The request id.
        id: u64,
    },
    /// Answers a request.
    Data {
        /// Channel.
        channel: u32,
        /// The request id.
        id: u64,
        /// The proof.
        proof: Box<Proof>,
    },
    /// The sender cannot answer a request.
    NoData {
        /// Channel.
        channel: u32,
        /// The request id.
        id: u64,
    },
    /// The sender would like to know what the receiver has in a range.
    Want {
        /// Channel.
        channel: u32,
        /// First block.
        start: u64,
        /// Number of blocks.
        length: u64,
    },
    /// The sender no longer needs a range.
    Unwant {
        /// Channel.
        channel: u32,
        /// First block.
        start: u64,
        /// Number of blocks.
        length: u64,
    },
    /// The sender has (or, with `drop`, no longer has) these block ranges
    /// (start, length).
    Have {
        /// Channel.
        channel: u32,
        /// Whether these ranges were dropped.
        drop: bool,
        /// (start, length) pairs.
        ranges: Vec<(u64, u64)>,
    },
    /// A message for an upper-layer protocol.
    Extension {
        /// Channel.
        channel: u32,
        /// Extension name.
        name: String,
        /// Payload.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Empty frame.
    #[error("empty frame")]
    Empty,
    /// Another protocol version.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// Not a valid message.
    #[error("malformed message")]
    Malformed,
}

/// Encodes a message as one frame.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = vec![PROTOCOL_VERSION];
    // Encoding into a Vec cannot fail for these types.
    if let Ok(body) = postcard::to_stdvec(msg) {
        out.extend_from_slice(&body);
    }
    out
}

/// Decodes one frame, checking its size first.
pub fn decode(frame: &[u8]) -> Result<Message, FrameError> {
    if frame.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(frame.len()));
    }
    let (&v, body) = frame.split_first().ok_or(FrameError::Empty)?;
    if v != PROTOCOL_VERSION {
        return Err(FrameError::Version(v));
    }
    let msg: Message = postcard::from_bytes(body).map_err(|_| FrameError::Malformed)?;
    match &msg {
        Message::Have { ranges, .. } if ranges.len() > MAX_RANGES_PER_MESSAGE => {
            Err(FrameError::Malformed)
        }
        Message::Extension { name, .. } if name.len() > MAX_EXTENSION_NAME => {
            Err(FrameError::Malformed)
        }
        _ => Ok(msg),
    }
}

/// The session secret both sides derive: the transport's handshake hash if
/// there is one, else a hash of both nonces (initiator's first).
pub fn session_secret(
    handshake_hash: Option<&[u8]>,
    initiator_nonce: &[u8; 32],
    responder_nonce: &[u8; 32],
) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(SESSION_DOMAIN);
    if let Some(hh) = handshake_hash {
        h.update(&[1]);
        h.update(&(hh.len() as u64).to_le_bytes());
        h.update(hh);
    } else {
        h.update(&[0]);
    }
    h.update(initiator_nonce);
    h.update(responder_nonce);
    *h.finalize().as_bytes()
}

/// The capability the initiator (`initiator = true`) or the responder sends
/// for core `key` in a session: a keyed hash that only key holders can make,
/// bound to the session and the sender's role (no reflection).
pub fn capability(key: &Hash, session: &Hash, initiator: bool) -> Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(CAP_DOMAIN);
    h.update(session);
    h.update(&[u8::from(initiator)]);
    *h.finalize().as_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let m = Message::Sync {
            channel: 3,
            fork: 1,
            length: 99,
        };
        assert_eq!(decode(&encode(&m)).unwrap(), m);
        // Golden encoding: version byte, variant 4, then varints.
        assert_eq!(encode(&m), vec![1, 4, 3, 1, 99]);
        assert_eq!(decode(&[]), Err(FrameError::Empty));
        assert_eq!(decode(&[2, 4, 3, 1, 99]), Err(FrameError::Version(2)));
        assert_eq!(decode(&[1, 200]), Err(FrameError::Malformed));
        assert_eq!(
            decode(&vec![1; MAX_FRAME + 1]),
            Err(FrameError::TooLarge(MAX_FRAME + 1))
        );
        let many = Message::Have {
            channel: 0,
            drop: false,
            ranges: vec![(1, 1); MAX_RANGES_PER_MESSAGE + 1],
        };
        assert_eq!(decode(&encode(&many)), Err(FrameError::Malformed));
    }

    #[test]
    fn capabilities_bind_key_session_and_role() {
        let s1 = session_secret(None, &[1; 32], &[2; 32]);
        let s2 = session_secret(None, &[2; 32], &[1; 32]);
        let s3 = session_secret(Some(&[9; 64]), &[1; 32], &[2; 32]);
        assert_ne!(s1, s2);
        assert_ne!(s1, s3);
        let k = [7; 32];
        assert_ne!(capability(&k, &s1, true), capability(&k, &s1, false));
        assert_ne!(capability(&k, &s1, true), capability(&k, &s2, true));
        assert_ne!(capability(&k, &s1, true), capability(&[8; 32], &s1, true));
    }
}
