//! Typed errors of hyperdrive-rs.
//!
//! Whatever a drive's metadata or blobs contain (written by a buggy or
//! hostile writer, or damaged on disk), reading them yields one of these
//! values: never a panic and never wrong bytes handed out as a file.

use std::path::PathBuf;

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path names no file (empty, or only `/`).
    #[error("the path is empty")]
    Empty,
    /// The path contains a NUL byte.
    #[error("the path contains a NUL byte")]
    Nul,
    /// The path contains a backslash (a separator on some systems).
    #[error("the path contains a backslash")]
    Backslash,
    /// The path has an empty segment (`a//b`).
    #[error("the path has an empty segment")]
    EmptySegment,
    /// The path has a `..` segment.
    #[error("the path has a `..` segment")]
    DotDot,
    /// A symlink target leaves the drive's root.
    #[error("the path escapes the drive's root")]
    Escapes,
    /// A segment is longer than [`crate::MAX_SEGMENT_LEN`] bytes.
    #[error("a segment of {0} bytes is too long")]
    SegmentTooLong(usize),
    /// The path is longer than [`crate::MAX_PATH_LEN`] bytes.
    #[error("a path of {0} bytes is too long")]
    TooLong(usize),
}

/// Why stored metadata or content could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptError {
    /// A metadata key is not a valid path.
    #[error("a metadata key is not a valid path")]
    Key,
    /// An entry could not be decoded or is inconsistent.
    #[error("{path}: invalid entry ({what})")]
    Entry {
        /// The entry's path.
        path: String,
        /// What is wrong.
        what: &'static str,
    },
    /// The drive header is invalid.
    #[error("invalid drive header ({0})")]
    Header(&'static str),
    /// An entry points beyond the end of the blobs core.
    #[error("{path}: blob ends at block {end}, beyond the blobs core length {length}")]
    BlobOutOfRange {
        /// The entry's path.
        path: String,
        /// The first block after the blob.
        end: u64,
        /// The blobs core's length.
        length: u64,
    },
    /// A content chunk does not have the size the entry implies.
    #[error("{path}: chunk {block} has {got} bytes, expected {expected}")]
    ChunkSize {
        /// The entry's path.
        path: String,
        /// The blobs core block.
        block: u64,
        /// The size implied by the entry.
        expected: u64,
        /// The size stored.
        got: u64,
    },
    /// The content does not match the entry's BLAKE3 hash.
    #[error("{path}: content does not match its BLAKE3 hash")]
    HashMismatch {
        /// The entry's path.
        path: String,
    },
}

/// The umbrella error of hyperdrive-rs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hypercore (metadata or blobs) failed.
    #[error(transparent)]
    Core(#[from] hypercore_rs::Error),
    /// The metadata hyperbee failed.
    #[error(transparent)]
    Bee(#[from] hyperbee_rs::Error),
    /// Stored metadata or content is corrupt or hostile.
    #[error(transparent)]
    Corrupt(#[from] CorruptError),
    /// A path was rejected.
    #[error("invalid path {path:?}: {reason}")]
    Path {
        /// The path as given.
        path: String,
        /// Why it was rejected.
        #[source]
        reason: PathError,
    },
    /// No entry at this path.
    #[error("{0}: no such file")]
    NotFound(String),
    /// Symlinks chain more than [`crate::MAX_SYMLINK_HOPS`] times (or loop).
    #[error("{0}: too many levels of symbolic links")]
    SymlinkLoop(String),
    /// The drive (or this checkout) cannot be written.
    #[error("this drive is read-only")]
    ReadOnly,
    /// The metadata core holds no drive header (not a drive, or not yet
    /// downloaded).
    #[error("the metadata holds no hyperdrive-rs header")]
    NoHeader,
    /// The header names a format version this code does not know.
    #[error("unsupported hyperdrive-rs format version {0}")]
    UnsupportedVersion(u8),
    /// A writer's header names a blobs core other than the one derived from
    /// its key.
    #[error("the header's blobs key does not match the derived one")]
    BlobsKeyMismatch,
    /// A content chunk is not held locally (and waiting was not enabled).
    #[error("{path}: block {block} is not available locally")]
    NotAvailable {
        /// The file.
        path: String,
        /// The blobs core block.
        block: u64,
    },
    /// A read starts beyond the end of the file.
    #[error("read starts at byte {start}, beyond the file size {size}")]
    RangeOutOfBounds {
        /// Requested start.
        start: u64,
        /// File size.
        size: u64,
    },
    /// User metadata larger than [`crate::MAX_METADATA_LEN`].
    #[error("metadata of {0} bytes is too large")]
    MetadataTooLarge(usize),
    /// The blobs core was appended to outside this drive during a write.
    #[error("the blobs core changed underneath the drive")]
    Conflict,
    /// A local file system operation failed (streams, mirror).
    #[error("I/O error on {path:?}: {source}")]
    Io {
        /// The local path, if any.
        path: Option<PathBuf>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn path(path: &str, reason: PathError) -> Self {
        Error::Path {
            path: path.to_string(),
            reason,
        }
    }

    pub(crate) fn io(path: Option<&std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.map(|p| p.to_path_buf()),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
