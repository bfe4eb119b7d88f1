//! # autobase-rs
//!
//! Many writers, one deterministic view: the Rust rebuild of Holepunch's
//! Autobase on [hypercore-rs](hypercore_rs) and [hyperbee-rs](hyperbee_rs).
//!
//! Every writer appends to its own input core; every block names the heads
//! its writer had seen, forming a causal DAG. The [`linearizer`] (sans-IO)
//! orders the DAG; nodes acknowledged by the indexers become indexed and
//! never move again, the rest is an optimistic tail. The user's [`Apply`]
//! turns ordered nodes into hyperbee views; a reorder rolls the views back
//! only to the first changed position.
//!
//! ```
//! use std::sync::Arc;
//! use autobase_rs::{Apply, ApplyError, Autobase, Host, Node, View};
//! use hypercore_rs::{Corestore, MemoryStorage};
//!
//! struct Kv;
//! #[async_trait::async_trait]
//! impl Apply for Kv {
//!     async fn apply(&self, nodes: &[Node], view: &mut View, _host: &mut Host)
//!         -> Result<(), ApplyError> {
//!         for n in nodes {
//!             let (k, v) = n.value.split_at(1);
//!             view.bee("view")?.put(k, v).await?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # futures::executor::block_on(async {
//! let store = Corestore::open(Arc::new(MemoryStorage::new())).await?;
//! let base = Autobase::builder(store, Kv).open().await?;
//! base.append(b"ared".to_vec()).await?;
//! let view = base.view("view").await?;
//! assert_eq!(view.get(b"a").await?.map(|e| e.value), Some(b"red".to_vec()));
//! assert_eq!(base.indexed_length().await, 1); // a lone indexer confirms at once
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod base;
pub mod checkpoint;
pub mod equivocation;
mod error;
mod forks;
pub mod linearizer;
mod node;

pub use base::{
    Apply, Autobase, AutobaseBuilder, Cut, Event, ForkChoice, Host, View, WriterInfo,
    CHECKPOINT_EXTENSION,
};
pub use checkpoint::{follow_chain, Checkpoint, CheckpointError, CommittedTip, SignedCheckpoint};
pub use equivocation::{Equivocation, EquivocationError, SignedNode};
pub use error::{ApplyError, Error};
pub use node::{block_values, Node, MAX_HEADS, NODE_VERSION};

/// The README's example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctest;

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn handles_are_send_and_sync() {
        send_sync::<crate::Autobase>();
        send_sync::<crate::Host>();
        send_sync::<crate::Event>();
    }
}
