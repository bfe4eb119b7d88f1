//! Sync over the internet (feature `iroh`): the swarm's internet engine,
//! [iroh](https://docs.rs/iroh), behind swarm-rs's `Transport` trait.
//!
//! Peers are dialed by public key over QUIC; iroh punches holes through
//! NATs and falls back to relays. [`Record::iroh_transport`] binds an iroh
//! endpoint whose id is this device's network identity
//! ([`Record::identity`]), so the key a peer dials is the key the record's
//! firewall checks. Hand it to [`Record::sync`] with any
//! [`swarm_rs::Discovery`] of iroh addresses ([`EndpointAddr`]: key, direct
//! addresses, relay URL): the record's topic, firewall and replication are
//! the same as over TCP.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ehr_core::iroh::{EndpointAddr, IrohConfig, RelayMode};
//! use ehr_core::Record;
//! use hypercore_rs::MemoryStorage;
//! use swarm_rs::MemoryDiscovery;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut pool = futures::executor::LocalPool::new();
//! let record = pool.run_until(Record::builder(Arc::new(MemoryStorage::new())).create("p1"))?;
//! // iroh's public relays and hole punching; `IrohConfig::direct` alone
//! // (no relay) is enough on a LAN or on loopback.
//! let config = IrohConfig::direct("0.0.0.0:0".parse()?).with_relay_mode(RelayMode::Default);
//! let transport = record.iroh_transport(config)?; // blocks while binding
//! let addr = transport.local_addr();
//! // Any discovery that carries `EndpointAddr`s (in-process here).
//! let discovery: MemoryDiscovery<EndpointAddr> = MemoryDiscovery::new();
//! let (_handle, work) = pool.run_until(record.sync(transport, discovery, &addr))?;
//! pool.run_until(work)?; // replicates with every peer the firewall lets in
//! # Ok(())
//! # }
//! ```
//!
//! Tested on loopback with direct addresses only (`tests/iroh_sync.rs`:
//! `cargo test -p ehr-core --features iroh --test iroh_sync`); relays and
//! hole punching are iroh's and are not exercised by the tests.

use crate::error::Error;
use crate::record::Record;

pub use swarm_rs::iroh_transport::{EndpointAddr, IrohConfig, IrohTransport, RelayMode};

impl Record {
    /// Binds an iroh endpoint keyed by this device's network identity
    /// ([`Record::identity`]), for [`Record::sync`]. Blocks the calling
    /// thread while binding (call it outside async code, or accept a short
    /// block); the endpoint runs on its own one-thread tokio runtime inside
    /// swarm-rs, so the caller needs no tokio.
    pub fn iroh_transport(&self, config: IrohConfig) -> Result<IrohTransport, Error> {
        IrohTransport::bind(&self.identity(), config)
            .map_err(|e| Error::Storage(format!("cannot bind the iroh endpoint: {e}")))
    }
}
