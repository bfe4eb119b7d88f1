//! # autobase-rs
//!
//! Many writers, one deterministic view: the Rust rebuild of Holepunch's
//! Autobase on [hypercore-rs](hypercore_rs) and [hyperbee-rs](hyperbee_rs).
//!
//! The [`linearizer`] is a sans-IO state machine: feed it nodes, ask for the
//! order, commit its final prefix.
//!
//! ```
//! use autobase_rs::linearizer::Linearizer;
//!
//! let mut lin = Linearizer::new();
//! let a = lin.writer([1; 32]);
//! lin.set_indexers(&[a]);
//! let (heads, height) = lin.next_heads(a);
//! assert!(heads.is_empty());
//! lin.add_node(a, 0, &[], height).unwrap();
//! let order = lin.order();
//! assert_eq!(order.final_len, 1); // a lone indexer confirms its own node
//! lin.commit(&order, order.final_len);
//! assert_eq!(lin.committed_count(), 1);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod linearizer;
