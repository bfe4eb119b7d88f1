//! # ehr-core
//!
//! A patient-controlled health record: FHIR R4 resources kept byte for byte,
//! consent enforced where writes are applied, every version kept, secondary
//! indexes for search, and FHIR Bundle import and export.
//!
//! - [`fhir`]: byte-faithful resources, the fields the record reads,
//!   limits, Bundle planning (`urn:uuid:` rewriting).
//! - [`op`]: what writers append (versioned postcard).
//! - [`consent`]: grants in SMART scope syntax.
//! - [`apply`]: the deterministic record logic over a small key-value trait.
//! - [`Record`]: the public API: a record is an autobase whose writers are
//!   the patient's devices and granted providers; attachments live in
//!   hyperdrives ([`Attachment`]); peers meet over swarm-rs on the record's
//!   discovery key behind a firewall that follows the grants.
//! - `iroh` (feature `iroh`, off by default): sync over the swarm's
//!   internet engine (QUIC by public key, hole punching, relays).
//!
//! ```
//! use std::sync::Arc;
//! use ehr_core::{Query, Record};
//! use hypercore_rs::MemoryStorage;
//!
//! # futures::executor::block_on(async {
//! let record = Record::builder(Arc::new(MemoryStorage::new())).create("p1").await?;
//! let obs = br#"{"resourceType":"Observation","id":"bp","status":"final",
//!   "code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},
//!   "subject":{"reference":"Patient/p1"},
//!   "effectiveDateTime":"2024-05-01T08:00:00+02:00","valueQuantity":{"value":120.0}}"#;
//! record.put(obs.to_vec()).await?;
//!
//! // Stored exactly as written: `120.0` and the timezone come back unchanged.
//! let got = record.get("Observation", "bp").await?.and_then(|v| v.resource);
//! assert_eq!(got.as_deref(), Some(&obs[..]));
//!
//! let page = record.search(&Query::new("Observation").code("http://loinc.org|8480-6")).await?;
//! assert_eq!(page.entries.len(), 1);
//!
//! // A resource about another patient is refused, and nothing is written.
//! let other = br#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"}}"#;
//! assert!(record.put(other.to_vec()).await.is_err());
//! # Ok::<(), ehr_core::Error>(())
//! # }).unwrap();
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod apply;
mod attachment;
pub mod audit;
pub mod consent;
pub mod emergency;
pub mod emergency_contacts;
mod error;
pub mod fhir;
pub mod invite;
mod invite_net;
#[cfg(feature = "iroh")]
pub mod iroh;
mod json;
pub mod keys;
pub mod keystore;
pub mod op;
pub mod read_log;
mod record;
pub mod scope_crypto;
pub mod sealed_policy;
mod secure;
pub mod shamir;
mod sync;
pub use sync::SyncHandle;
mod view;

pub use attachment::{Attachment, ATTACHMENT_SCHEME};
pub use consent::{Grant, Role, Scope};
pub use error::Error;
pub use invite::{Invite, InviteError, Redemption};
pub use invite_net::{
    InviteGate, InviteServing, Redeemed, DEFAULT_REDEMPTION_TIMEOUT, INVITE_CHANNEL,
    MAX_PENDING_REDEMPTIONS,
};
pub use record::{
    Clock, Cursor, Head, Imported, ManualClock, Page, Query, Record, RecordBuilder, RejectedWrite,
    Summary, SystemClock, Version, Written, VIEW_NAME,
};
pub use secure::{KeyWrap, Rotation, SecureRecord, KEYWRAP_SYSTEM, KEYWRAP_URL};
pub use view::{hex, VIEW_FORMAT};

/// Storage for records: hypercore-rs's storage trait and its in-memory and
/// on-disk implementations.
pub mod storage {
    pub use hypercore_rs::{DiskStorage, MemoryStorage, Storage};
}
