//! Peer-to-peer plumbing: identities, Noise-encrypted connections, channels
//! and transports (a Rust rebuild of Hyperswarm, secret-stream and Protomux).
//!
//! Peers are addressed by their ed25519 [`PublicKey`]. The protocol logic is
//! written sans-IO: [`SecureConnection`] takes received bytes and a `now`
//! instant, and hands back bytes to send, events and deadlines. Randomness is
//! always injected through an [`EntropySource`], so tests are reproducible.
//!
//! ```
//! use std::time::Instant;
//! use swarm_rs::{KeyPair, Role, SecureConfig, SecureConnection, SecureEvent, SeededEntropy};
//!
//! let mut entropy = SeededEntropy::from_u64(1); // use `OsEntropy` in production
//! let alice = KeyPair::generate(&mut entropy)?;
//! let bob = KeyPair::generate(&mut entropy)?;
//! let now = Instant::now();
//!
//! // Alice dials Bob and insists on talking to him.
//! let config = SecureConfig::default().with_expected_remote(bob.public_key());
//! let mut a = SecureConnection::new(Role::Initiator, &alice, config, &mut entropy, now)?;
//! let mut b = SecureConnection::new(Role::Responder, &bob, SecureConfig::default(), &mut entropy, now)?;
//!
//! // Shuttle bytes until both sides are quiet (a real adapter does this over a socket).
//! loop {
//!     let mut moved = false;
//!     if let Some(bytes) = a.poll_transmit() { b.handle_input(&bytes, now)?; moved = true; }
//!     if let Some(bytes) = b.poll_transmit() { a.handle_input(&bytes, now)?; moved = true; }
//!     if !moved { break; }
//! }
//! assert_eq!(b.remote_public_key(), Some(alice.public_key()));
//! assert_eq!(a.handshake_hash(), b.handshake_hash());
//!
//! a.send(b"hello bob", now)?;
//! b.handle_input(&a.poll_transmit().unwrap_or_default(), now)?;
//! assert!(matches!(b.poll_event(), Some(SecureEvent::Established { .. })));
//! assert_eq!(b.poll_event(), Some(SecureEvent::Message(b"hello bob".to_vec())));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod clock;
#[cfg(feature = "dht")]
pub mod dht;
pub mod discovery;
pub mod driver;
pub mod entropy;
pub mod identity;
#[cfg(feature = "iroh")]
pub mod iroh_transport;
#[cfg(feature = "mdns")]
pub mod mdns;
pub mod mux;
pub mod secure;
pub mod stream;
pub mod swarm;
pub mod transport;

pub use clock::{Clock, SystemClock};
#[cfg(feature = "dht")]
pub use dht::{DhtConfig, DhtDiscovery};
pub use discovery::{DirAddress, DirDiscovery, Discovery, DiscoveryError, MemoryDiscovery};
pub use driver::{
    Connections, DriverConfig, DriverStopped, PeerConnection, SwarmBuilder, SwarmDriver,
    SwarmHandle,
};
pub use entropy::{EntropyError, EntropySource, OsEntropy, SeededEntropy};
pub use identity::{IdentityError, KeyPair, PublicKey};
#[cfg(feature = "mdns")]
pub use mdns::{MdnsConfig, MdnsDiscovery};
pub use mux::{ChannelId, Mux, MuxConfig, MuxError, MuxEvent};
pub use secure::{HandshakeHash, Role, SecureConfig, SecureConnection, SecureError, SecureEvent};
pub use stream::{MuxedStream, MuxedStreamError, SecureStream, StreamError};
pub use swarm::{
    CloseReason, ConnectionId, Direction, DiscoveryKey, JoinMode, Swarm, SwarmAction, SwarmConfig,
    Topic,
};
pub use transport::{
    duplex, DialFaults, Listener, MemoryAddr, MemoryNetwork, MemoryTransport, PipeStream,
    TcpTransport, Transport,
};
