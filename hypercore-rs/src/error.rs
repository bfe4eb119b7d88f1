//! Typed errors: one enum per operation family plus the umbrella [`Error`].
//!
//! Nothing a peer, a file or a caller sends may panic: every failure is one of
//! these values. Signature failures are deliberately opaque.

use std::io;

/// A failure of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The operating system refused an operation (disk full, permission denied, ...).
    #[error("storage I/O failed during {op} on {path}: {source}")]
    Io {
        /// What the storage was doing.
        op: &'static str,
        /// The file concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Stored data failed a checksum or could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A previous write failed half-way; the storage must be reopened.
    #[error("storage is poisoned by an earlier failed write; reopen it")]
    Poisoned,
    /// The storage was written by a newer, unknown format version.
    #[error("unsupported storage format version {0}")]
    UnsupportedVersion(u32),
    /// Another process holds this storage directory.
    #[error("storage directory {0} is locked by another process")]
    Locked(String),
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl std::fmt::Display, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.to_string(),
            source,
        }
    }
}

/// Why a proof was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The proof is not shaped as the verifier needs (wrong indices, missing or
    /// extra nodes, out-of-range values).
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    /// A hash in the proof does not match the tree the verifier trusts.
    #[error("proof does not match the verified tree")]
    Mismatch,
    /// The signature over the upgraded tree is invalid.
    #[error("invalid signature")]
    BadSignature,
    /// The proof ends at a node the verifier does not hold (yet): the request
    /// assumed an anchor that an earlier answer was to provide. Ask again.
    #[error("the proof does not reach a node the verifier holds")]
    Unanchored,
    /// The upgrade starts at a length for which the verifier does not hold its
    /// own roots (a sparse reader after a fork); ask again with
    /// `ProofRequest::round_fork_point`.
    #[error("the verifier lacks its roots at the upgrade start")]
    MissingAnchor,
    /// The proof is valid but older than what the verifier already has, or was
    /// made for another fork; it can be asked for again.
    #[error("stale proof: {0}")]
    Stale(&'static str),
}

/// The umbrella error of hypercore-rs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage layer failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A proof was rejected.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// The core has no signing key, or it accepts no foreign upgrades because it is writable.
    #[error("this core is not writable")]
    NotWritable,
    /// A writable core refuses upgrades from others.
    #[error("a writable core does not accept upgrades from other peers")]
    WriterUpgrade,
    /// The index is at or beyond the core's length.
    #[error("block {index} is out of range (length {length})")]
    OutOfRange {
        /// The requested index.
        index: u64,
        /// The core's length.
        length: u64,
    },
    /// The block is in the tree but its data is not held locally.
    #[error("block {0} is not available locally")]
    NotAvailable(u64),
    /// A tree node needed to answer is not held locally.
    #[error("tree node {0} is not available locally")]
    NodeNotAvailable(u64),
    /// The byte offset is beyond the core's byte length.
    #[error("byte offset {bytes} is beyond the byte length {byte_length}")]
    SeekOutOfRange {
        /// The requested offset.
        bytes: u64,
        /// The core's byte length.
        byte_length: u64,
    },
    /// A block could not be decrypted (wrong key, or not an encrypted block).
    #[error("block {0} could not be decrypted")]
    Decryption(u64),
    /// The block is encrypted and no key was given.
    #[error("this core is encrypted and was opened without its key")]
    NoEncryptionKey,
    /// The manifest is invalid (no signers, quorum out of range, ...).
    #[error("invalid manifest: {0}")]
    InvalidManifest(&'static str),
    /// The given key pair does not match the core's manifest.
    #[error("the key pair does not match the core's manifest")]
    KeyMismatch,
    /// A caller passed an argument that cannot be honoured.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A block or batch is too large.
    #[error("a block of {0} bytes exceeds the limit of {MAX_BLOCK_SIZE} bytes")]
    BlockTooLarge(usize),
    /// The core or store was closed.
    #[error("closed")]
    Closed,
    /// A wait for peers timed out.
    #[error("timed out waiting for peers")]
    Timeout,
    /// No peer is connected to ask.
    #[error("no peer is connected")]
    Offline,
}

/// The largest block the log accepts (and that a peer may send).
pub const MAX_BLOCK_SIZE: usize = 16 * 1024 * 1024;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
