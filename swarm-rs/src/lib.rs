//! Peer-to-peer plumbing: identities, Noise-encrypted connections, channels
//! and transports (a Rust rebuild of Hyperswarm, secret-stream and Protomux).
//!
//! Peers are addressed by their ed25519 [`PublicKey`]. Randomness is always
//! injected through an [`EntropySource`], so tests are reproducible.
//!
//! ```
//! use swarm_rs::{KeyPair, PublicKey, SeededEntropy};
//!
//! let alice = KeyPair::generate(&mut SeededEntropy::from_u64(1))?;
//! let signature = alice.sign(b"hello");
//! alice.public_key().verify(b"hello", &signature)?;
//!
//! // Public keys print as hex and parse back.
//! let text = alice.public_key().to_string();
//! assert_eq!(text.parse::<PublicKey>()?, alice.public_key());
//! # Ok::<(), swarm_rs::IdentityError>(())
//! ```
#![forbid(unsafe_code)]

pub mod entropy;
pub mod identity;

pub use entropy::{EntropyError, EntropySource, OsEntropy, SeededEntropy};
pub use identity::{IdentityError, KeyPair, PublicKey};
