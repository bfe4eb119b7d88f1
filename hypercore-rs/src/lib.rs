//! # hypercore-rs
//!
//! A signed, verifiable, crash-safe append-only log: the Rust rebuild of
//! Holepunch's Hypercore, with BLAKE3 Merkle trees, ed25519 signatures
//! (single or k-of-n signers), optional block encryption, snapshots, proofs
//! for sparse readers, and an explicit durability model. Runtime-agnostic:
//! the API is `async` over `futures` only.
//!
//! ```
//! use std::sync::Arc;
//! use hypercore_rs::{Core, MemoryStorage, ProofRequest, UpgradeRequest};
//!
//! # futures::executor::block_on(async {
//! // A writer appends; signing happens once, when a signature is needed.
//! let writer = Core::builder(Arc::new(MemoryStorage::new())).open().await?;
//! writer.append_batch([&b"hello"[..], b"world"]).await?;
//!
//! // A reader knows only the key; everything it stores is verified first.
//! let reader = Core::builder(Arc::new(MemoryStorage::new())).key(writer.key()).open().await?;
//! let req = ProofRequest {
//!     upgrade: Some(UpgradeRequest { start: 0 }),
//!     block: Some(reader.block_request(1).await?),
//!     manifest: true,
//!     ..Default::default()
//! };
//! let proof = writer.proof(&req).await?;
//! reader.verify(&proof).await?;
//! assert_eq!(reader.length(), 2);
//! assert_eq!(reader.get(1).await?.as_deref(), Some(&b"world"[..]));
//! # Ok::<(), hypercore_rs::Error>(())
//! # }).unwrap();
//! ```
//!
//! See `DESIGN.md` for the formats, the crash-safety argument and the bounds.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod clock;
mod core;
mod corestore;
mod encryption;
mod entropy;
mod error;
pub mod fast_hash;
pub mod flat;
pub mod hash;
mod manifest;
pub mod proof;
pub mod replication;
pub mod storage;

pub use crate::core::{Core, CoreBuilder, Download, Durability, Event, GetOptions, Info, Snapshot};
pub use clock::{Clock, ManualClock, ThreadClock};
pub use corestore::{CoreOptions, Corestore};
pub use encryption::{BlockEncryption, OVERHEAD as ENCRYPTION_OVERHEAD};
pub use entropy::{Entropy, OsEntropy, SeededEntropy};
pub use error::{Error, ProofError, Result, StorageError, MAX_BLOCK_SIZE};
pub use hash::{Hash, Node};
pub use manifest::{
    discovery_key, signable, KeyPair, Manifest, MultiSignature, PublicKey, Sig, MANIFEST_VERSION,
    MAX_SIGNERS,
};
pub use proof::{
    BlockProof, BlockRequest, HashProof, HashRequest, Proof, ProofRequest, SeekProof, SeekRequest,
    UpgradeProof, UpgradeRequest, Verified,
};
pub use storage::{Batch, CoreId, DiskOptions, DiskStorage, MemoryStorage, Op, Storage};

/// The README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctest;
