//! # hyperbee-rs
//!
//! An append-only, versioned B+tree key/value store on a
//! [hypercore](hypercore_rs): the Rust rebuild of Holepunch's Hyperbee.
//! Every flush appends the written entries and the copied root-to-leaf
//! paths (copy-on-write); unchanged subtrees are referenced, never copied.
//! Keys are bytes in bytewise order. Gets, puts, deletes, atomic batches,
//! compare-and-swap, prefixed sub-databases that nest without leaking,
//! ranges, checkout of any version, history and diff streams, watch, and a
//! typed layer on top. Runtime-agnostic: `futures` only.
//!
//! ```
//! use std::sync::Arc;
//! use hypercore_rs::{Core, MemoryStorage};
//! use hyperbee_rs::{Bee, Range};
//!
//! # futures::executor::block_on(async {
//! let core = Core::builder(Arc::new(MemoryStorage::new())).open().await?;
//! let bee = Bee::open(core).await?;
//! bee.put(b"apple", b"red").await?;
//! let v1 = bee.version();
//!
//! // An atomic batch: readers see all of it or none of it.
//! let mut batch = bee.batch().await?;
//! batch.put(b"banana", b"yellow").await?;
//! batch.del(b"apple").await?;
//! assert!(batch.get(b"apple").await?.is_none()); // a batch sees its own writes
//! batch.flush().await?;
//!
//! let now: Vec<_> = bee.range(Range::all()).collect().await?;
//! assert_eq!(now.len(), 1);
//! assert_eq!(now[0].key, b"banana");
//!
//! // Any past version stays readable, and diffs skip shared subtrees.
//! let then = bee.checkout(v1).await?;
//! assert_eq!(then.get(b"apple").await?.map(|e| e.value), Some(b"red".to_vec()));
//! let changes = bee.diff(v1, bee.version(), Range::all()).await?.collect().await?;
//! assert_eq!(changes.len(), 2);
//!
//! // Subs nest without leaking into each other.
//! let users = bee.sub("users");
//! users.sub("admins").put(b"ada", b"1").await?;
//! users.put(b"bob", b"2").await?;
//! assert_eq!(users.range(Range::all()).collect().await?.len(), 1);
//! # Ok::<(), hyperbee_rs::Error>(())
//! # }).unwrap();
//! ```
//!
//! See `DESIGN.md` for the block format, the node layout and the bounds.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bee;
mod cache;
mod error;
mod format;
mod node;
mod read;
mod tree;
mod typed;

pub use bee::{
    Batch, Bee, BeeBuilder, Change, DiffIter, History, HistoryIter, RangeIter, Snapshot, Sub,
    DEFAULT_CACHE_BYTES,
};
pub use error::{CorruptError, Error, Result};
pub use format::FORMAT_VERSION;
pub use read::{Diff, Entry, HistoryEntry, Range};
pub use typed::{OrderedKey, Typed, TypedIter};

/// The largest key accepted (bytes).
pub const MAX_KEY_LEN: usize = 1024;
/// The largest value accepted (bytes).
pub const MAX_VALUE_LEN: usize = 8 << 20;
/// Values up to this size are stored inside their leaf; larger ones are
/// stored once in the flush's op list and referenced from the leaf.
pub const INLINE_MAX: usize = 512;
