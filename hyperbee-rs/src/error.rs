//! Typed errors of hyperbee-rs.
//!
//! Whatever a block contains (written by a buggy or hostile writer, or damaged
//! on disk), reading it yields one of these values: never a panic, a loop or
//! an unbounded allocation.

/// Why a block could not be used as part of a bee.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptError {
    /// The block ends before a field it announces.
    #[error("block {seq}: truncated ({what})")]
    Truncated {
        /// The block.
        seq: u64,
        /// The field being read.
        what: &'static str,
    },
    /// A field holds a value the format does not allow.
    #[error("block {seq}: invalid {what}")]
    Invalid {
        /// The block.
        seq: u64,
        /// The field.
        what: &'static str,
    },
    /// A pointer does not point strictly backwards, or points at a missing slot.
    #[error("block {seq}: bad pointer ({what})")]
    BadPointer {
        /// The block holding the pointer.
        seq: u64,
        /// Which pointer.
        what: &'static str,
    },
    /// The tree is not shaped as a B+tree (levels, key order).
    #[error("block {seq}: malformed tree ({what})")]
    Tree {
        /// The block holding the offending node.
        seq: u64,
        /// What is wrong.
        what: &'static str,
    },
}

/// The umbrella error of hyperbee-rs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying hypercore failed.
    #[error(transparent)]
    Core(#[from] hypercore_rs::Error),
    /// A block of the bee is corrupt or hostile.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
    /// Block 0 of the core is not a hyperbee-rs header.
    #[error("this core does not hold a hyperbee-rs database")]
    NotABee,
    /// The header names a format version this code does not know.
    #[error("unsupported hyperbee-rs format version {0}")]
    UnsupportedVersion(u8),
    /// The version is not a committed state of the bee (beyond the length, or
    /// inside an atomic batch).
    #[error("version {0} is not a committed version of this bee")]
    NotAVersion(u64),
    /// A block the bee needs is not held locally.
    #[error("block {0} is not available locally")]
    BlockNotAvailable(u64),
    /// A key is larger than [`crate::MAX_KEY_LEN`].
    #[error("a key of {0} bytes exceeds the limit of {max} bytes", max = crate::MAX_KEY_LEN)]
    KeyTooLarge(usize),
    /// A value is larger than [`crate::MAX_VALUE_LEN`].
    #[error("a value of {0} bytes exceeds the limit of {max} bytes", max = crate::MAX_VALUE_LEN)]
    ValueTooLarge(usize),
    /// The bee cannot be written: the core is not writable.
    #[error("this bee is read-only")]
    ReadOnly,
    /// The core was appended to outside this bee while a batch was open.
    #[error("the core changed underneath the bee")]
    Conflict,
    /// A typed key or value could not be encoded or decoded.
    #[error("typed encoding failed: {0}")]
    Encoding(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
