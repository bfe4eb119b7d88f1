//! Replication: verified eager and sparse sync of cores between peers.
//!
//! - [`wire`]: the versioned message format and capabilities.
//! - [`connection`]: the protocol as a sans-IO state machine.
//! - `scheduler`: per-core, shared by all connections: which block to ask
//!   whom for (never the same block from two peers), waiters.
//! - [`replicate`]: the async driver over any framed duplex; [`duplex`] is an
//!   in-memory one.
//!
//! A peer opens a core's channel by discovery key and proves it knows the key
//! with a capability bound to the session (the transport's handshake hash, or
//! exchanged nonces) and to its role; the key itself is never sent. A peer
//! that cannot prove knowledge gets a `Reject` and nothing else.

pub mod connection;
mod driver;
mod pipe;
pub mod ranges;
pub(crate) mod scheduler;
pub mod wire;

pub use connection::{ConnEvent, Connection, Pending, ProtocolError};
pub use driver::{replicate, CoreProvider, ReplicateOptions, ReplicationError};
pub use pipe::{duplex, DuplexEnd};
