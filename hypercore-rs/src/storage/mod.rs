//! Storage: the small, object-safe trait every core and corestore writes through.
//!
//! One storage serves a whole corestore. A [`Batch`] may touch several cores
//! and is applied atomically: after a crash at any point, a reopened storage
//! holds the state after some prefix of the committed batches, and every batch
//! committed before the last successful [`Storage::flush`] is in that prefix.
//! Durability is explicit: `write` makes a batch visible, `flush` makes it
//! durable. Implementations: [`MemoryStorage`] and [`DiskStorage`]; one
//! conformance suite (`tests/storage_conformance.rs`) runs against both.
//!
//! Storage never interprets block data: it keeps what it is given (ciphertext
//! for encrypted cores), so plaintext can never reach it.

mod disk;
mod memory;
pub mod vfs;

pub use disk::{DiskOptions, DiskStorage};
pub use memory::MemoryStorage;

use crate::error::StorageError;
use crate::flat;
use crate::hash::Node;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Identifies a core inside a storage: its discovery key (never the secret core key).
pub type CoreId = [u8; 32];

/// One change inside a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Op {
    /// Set a small per-core value (headers, user data).
    PutValue {
        /// The core.
        core: CoreId,
        /// The value's name.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove a per-core value.
    DelValue {
        /// The core.
        core: CoreId,
        /// The value's name.
        key: Vec<u8>,
    },
    /// Store a verified tree node.
    PutNode {
        /// The core.
        core: CoreId,
        /// The node.
        node: Node,
    },
    /// Store a block's data.
    PutBlock {
        /// The core.
        core: CoreId,
        /// The block index.
        index: u64,
        /// The block bytes (as stored; ciphertext for encrypted cores).
        data: Vec<u8>,
    },
    /// Drop every block at or after `length` and every node that does not lie
    /// entirely within the first `length` blocks.
    Truncate {
        /// The core.
        core: CoreId,
        /// The new length.
        length: u64,
    },
    /// Drop the data of blocks `[start, end)` (tree nodes stay) and give the
    /// space back to the file system.
    Clear {
        /// The core.
        core: CoreId,
        /// First block.
        start: u64,
        /// One past the last block.
        end: u64,
    },
    /// Remove a core entirely.
    DeleteCore {
        /// The core.
        core: CoreId,
    },
    /// Set a store-wide value (corestore seed, names).
    PutMeta {
        /// The name.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove a store-wide value.
    DelMeta {
        /// The name.
        key: Vec<u8>,
    },
}

/// An atomic group of changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a change.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Takes the changes.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends another batch's changes.
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }
}

/// Blocking or asynchronous storage for a whole corestore.
///
/// The disk implementation does its file I/O on the calling thread (like
/// redb); the trait is async so that remote or browser-backed storages fit too.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Applies a batch atomically. Visible to reads at once; durable after `flush`.
    async fn write(&self, batch: Batch) -> Result<(), StorageError>;
    /// Makes every earlier write durable.
    async fn flush(&self) -> Result<(), StorageError>;
    /// A per-core value.
    async fn value(&self, core: &CoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Every per-core value whose name starts with `prefix`, sorted by name.
    async fn values(
        &self,
        core: &CoreId,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError>;
    /// A stored tree node.
    async fn node(&self, core: &CoreId, index: u64) -> Result<Option<Node>, StorageError>;
    /// A stored block.
    async fn block(&self, core: &CoreId, index: u64) -> Result<Option<Vec<u8>>, StorageError>;
    /// Whether a block's data is held.
    async fn has_block(&self, core: &CoreId, index: u64) -> Result<bool, StorageError>;
    /// A store-wide value.
    async fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// The cores that have at least one value.
    async fn cores(&self) -> Result<Vec<CoreId>, StorageError>;
}

/// The entries of a per-core value map whose names start with `prefix`
/// (shared by all storages).
pub(crate) fn prefix_values(
    map: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    prefix: &[u8],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    map.range(prefix.to_vec()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether a node survives truncation to `length` (shared rule of all storages).
pub(crate) fn node_survives(index: u64, length: u64) -> bool {
    flat::in_tree(index, length)
}
