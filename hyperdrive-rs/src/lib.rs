//! # hyperdrive-rs
//!
//! A versioned, replicable file system on hypercores: the Rust rebuild of
//! Holepunch's Hyperdrive. File metadata (path -> entry) lives in a
//! [hyperbee](hyperbee_rs); file contents live in a separate blobs
//! [hypercore](hypercore_rs) in 64 KiB chunks. The blobs core's key is
//! derived from the drive's and recorded in a signed header entry, so the
//! drive key is all a reader needs. Every entry carries a BLAKE3 hash of
//! its file. Streaming writes and ranged streaming reads with bounded
//! memory, atomic batches, checkouts, diffs, watch, mirror to and from
//! local folders, selective download and clear. Runtime-agnostic.
//!
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use hypercore_rs::{Corestore, MemoryStorage};
//! use hyperdrive_rs::{DiffKind, Drive, ReadRange};
//!
//! # futures::executor::block_on(async {
//! let store = Corestore::with_seed(Arc::new(MemoryStorage::new()), [1; 32]);
//! let drive = Drive::open(&store, "records").await?;
//! drive.put("/scans/ct-1.dcm", &vec![7u8; 200_000]).await?;
//! drive.put("/letters/referral.pdf", b"%PDF-1.7 ...").await?;
//! let v1 = drive.version();
//!
//! // An atomic batch: a version holds all of it or none of it.
//! let mut batch = drive.batch().await?;
//! batch.put("/notes.txt", b"follow-up in 6 weeks").await?;
//! batch.del("/letters/referral.pdf").await?;
//! batch.flush().await?;
//!
//! // Ranged, streaming reads fetch only the chunks they cover.
//! let mut s = drive.read("/scans/ct-1.dcm", ReadRange::new(70_000, 10)).await?;
//! assert_eq!(s.next().await.transpose()?, Some(vec![7u8; 10]));
//!
//! // Listings, past versions and diffs.
//! assert_eq!(drive.readdir("/")?.collect().await?, ["notes.txt", "scans"]);
//! let then = drive.checkout(v1).await?;
//! assert!(then.exists("/letters/referral.pdf").await?);
//! let changes = drive.diff(v1, drive.version(), "/").await?.collect().await?;
//! let kinds: Vec<_> = changes.iter().map(|d| d.kind()).collect();
//! assert_eq!(kinds, [DiffKind::Removed, DiffKind::Added]);
//! # Ok::<(), hyperdrive_rs::Error>(())
//! # }).unwrap();
//! ```
//!
//! See `DESIGN.md` for the entry format, the key layout, the chunk size and
//! why, the mirror algorithm and the limits.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod drive;
mod entry;
mod error;
pub mod mirror;
mod path;

pub use drive::{
    Change, Diff, DiffIter, DiffKind, Drive, DriveBatch, List, PutOptions, ReadRange, ReadStream,
    Readdir, CHUNK_SIZE, MAX_METADATA_LEN, MAX_SYMLINK_HOPS, WRITE_CHUNKS,
};
pub use entry::{Blob, Entry, EntryKind, FORMAT_VERSION};
pub use error::{CorruptError, Error, PathError, Result};
pub use mirror::{MirrorChange, MirrorOp, MirrorOptions, MirrorReport};
pub use path::{MAX_PATH_LEN, MAX_SEGMENT_LEN};

/// Low-level encoders for tests and tools that must write raw metadata
/// (for example to simulate a hostile writer). Entries written with these
/// bypass every check a [`Drive`] makes.
pub mod hazmat {
    use crate::error::{Error, Result};

    /// The stored bytes of an entry.
    pub fn encode_entry(kind: &crate::EntryKind, metadata: &[u8]) -> Vec<u8> {
        crate::entry::encode_entry(kind, metadata)
    }

    /// The metadata key of a path.
    pub fn key_of_path(path: &str) -> Result<Vec<u8>> {
        let segs = crate::path::segments(path, false).map_err(|r| Error::path(path, r))?;
        Ok(crate::path::key_of(&segs))
    }

    /// A blob location (the struct is non-exhaustive).
    pub fn blob(block_offset: u64, block_length: u64, byte_length: u64) -> crate::Blob {
        crate::Blob {
            block_offset,
            block_length,
            byte_offset: 0,
            byte_length,
        }
    }
}

/// The README's example, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctest;
