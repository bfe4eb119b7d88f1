//! Discovery: where peers announce themselves under a [`DiscoveryKey`] and
//! look each other up. Only discovery keys (hashes of topics) are ever
//! handed to a discovery service, never topics.
//!
//! [`MemoryDiscovery`] serves tests in one process; [`DirDiscovery`] is a
//! rendezvous folder for processes on one machine.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use thiserror::Error;

use crate::identity::PublicKey;
use crate::swarm::DiscoveryKey;

/// Errors of a discovery service.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The service cannot be reached right now.
    #[error("discovery service unavailable")]
    Unavailable,
    /// The service refused to store more announcements.
    #[error("discovery service is full")]
    Full,
}

/// A peer directory keyed by discovery key.
#[async_trait]
pub trait Discovery: Send + Sync {
    /// The transport address peers are reachable at.
    type Address: Clone + Debug + Send + Sync + 'static;

    /// Announces that `peer` is reachable at `addr` under `key`
    /// (replacing an earlier announcement of the same peer).
    async fn announce(
        &self,
        key: DiscoveryKey,
        peer: PublicKey,
        addr: Self::Address,
    ) -> Result<(), DiscoveryError>;

    /// Withdraws an announcement.
    async fn unannounce(&self, key: DiscoveryKey, peer: PublicKey) -> Result<(), DiscoveryError>;

    /// The peers currently announced under `key`, in public-key order.
    async fn lookup(
        &self,
        key: DiscoveryKey,
    ) -> Result<Vec<(PublicKey, Self::Address)>, DiscoveryError>;
}

type Table<A> = BTreeMap<DiscoveryKey, BTreeMap<PublicKey, A>>;

/// An in-process registry shared by clones; deterministic (results are
/// ordered by public key). For tests and simulations.
#[derive(Debug)]
pub struct MemoryDiscovery<A> {
    table: Arc<Mutex<Table<A>>>,
    max_per_key: usize,
}

impl<A> Clone for MemoryDiscovery<A> {
    fn clone(&self) -> Self {
        Self {
            table: Arc::clone(&self.table),
            max_per_key: self.max_per_key,
        }
    }
}

impl<A> Default for MemoryDiscovery<A> {
    fn default() -> Self {
        Self {
            table: Arc::new(Mutex::new(BTreeMap::new())),
            max_per_key: 1024,
        }
    }
}

impl<A> MemoryDiscovery<A> {
    /// An empty registry holding at most 1024 peers per key.
    pub fn new() -> Self {
        Self::default()
    }

    /// The discovery keys that have announcements (what an observer of the
    /// service could see).
    pub fn keys(&self) -> Vec<DiscoveryKey> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> MutexGuard<'_, Table<A>> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl<A: Clone + Debug + Send + Sync + 'static> Discovery for MemoryDiscovery<A> {
    type Address = A;

    async fn announce(
        &self,
        key: DiscoveryKey,
        peer: PublicKey,
        addr: A,
    ) -> Result<(), DiscoveryError> {
        let max = self.max_per_key;
        let mut table = self.lock();
        let peers = table.entry(key).or_default();
        if peers.len() >= max && !peers.contains_key(&peer) {
            return Err(DiscoveryError::Full);
        }
        peers.insert(peer, addr);
        Ok(())
    }

    async fn unannounce(&self, key: DiscoveryKey, peer: PublicKey) -> Result<(), DiscoveryError> {
        let mut table = self.lock();
        if let Some(peers) = table.get_mut(&key) {
            peers.remove(&peer);
            if peers.is_empty() {
                table.remove(&key);
            }
        }
        Ok(())
    }

    async fn lookup(&self, key: DiscoveryKey) -> Result<Vec<(PublicKey, A)>, DiscoveryError> {
        Ok(self
            .lock()
            .get(&key)
            .map(|peers| peers.iter().map(|(k, a)| (*k, a.clone())).collect())
            .unwrap_or_default())
    }
}

/// A rendezvous in a shared folder, for peers on one machine (several
/// processes, e.g. over TCP loopback). Each announcement is one small file,
/// `<folder>/<discovery key hex>/<public key hex>`, holding the address as
/// text (`HOST:PORT`). Lookups list the key's folder.
///
/// Honest limits: it only works between processes that see the same folder;
/// announcements of a process that was killed stay until withdrawn or
/// overwritten (dialing them fails and is retried with backoff, then given
/// up); the file system calls block the polling thread briefly (the files
/// are tiny). For LAN and internet use, mDNS and a DHT are the plan.
#[derive(Debug, Clone)]
pub struct DirDiscovery {
    root: std::path::PathBuf,
}

impl DirDiscovery {
    /// A rendezvous in `root` (created when needed).
    pub fn new(root: impl Into<std::path::PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn key_dir(&self, key: &DiscoveryKey) -> std::path::PathBuf {
        self.root.join(hex(&key.0))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl Discovery for DirDiscovery {
    type Address = std::net::SocketAddr;

    async fn announce(
        &self,
        key: DiscoveryKey,
        peer: PublicKey,
        addr: std::net::SocketAddr,
    ) -> Result<(), DiscoveryError> {
        let dir = self.key_dir(&key);
        std::fs::create_dir_all(&dir).map_err(|_| DiscoveryError::Unavailable)?;
        // Write then rename, so a lookup never reads half an address.
        let name = peer.to_string();
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, addr.to_string()).map_err(|_| DiscoveryError::Unavailable)?;
        std::fs::rename(&tmp, dir.join(&name)).map_err(|_| DiscoveryError::Unavailable)
    }

    async fn unannounce(&self, key: DiscoveryKey, peer: PublicKey) -> Result<(), DiscoveryError> {
        match std::fs::remove_file(self.key_dir(&key).join(peer.to_string())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(_) => Err(DiscoveryError::Unavailable),
        }
    }

    async fn lookup(
        &self,
        key: DiscoveryKey,
    ) -> Result<Vec<(PublicKey, std::net::SocketAddr)>, DiscoveryError> {
        let entries = match std::fs::read_dir(self.key_dir(&key)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(_) => return Err(DiscoveryError::Unavailable),
        };
        let mut found = BTreeMap::new();
        // Anything unreadable or malformed (another program's files, a
        // half-written temp file) is skipped, never trusted.
        for entry in entries.flatten().take(1024) {
            let Some(peer) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<PublicKey>().ok())
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if let Ok(addr) = text.trim().parse() {
                found.insert(peer, addr);
            }
        }
        Ok(found.into_iter().collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::identity::KeyPair;
    use crate::swarm::Topic;
    use futures::executor::block_on;

    #[test]
    fn announce_lookup_unannounce() {
        let d: MemoryDiscovery<u32> = MemoryDiscovery::new();
        let topic = Topic::from_name("clinic");
        let key = topic.discovery_key();
        let (a, b) = (
            KeyPair::from_seed([1; 32]).public_key(),
            KeyPair::from_seed([2; 32]).public_key(),
        );
        block_on(async {
            d.announce(key, b, 2).await.unwrap();
            d.announce(key, a, 1).await.unwrap();
            d.announce(key, a, 11).await.unwrap();
            let mut expected = vec![(a, 11), (b, 2)];
            expected.sort();
            assert_eq!(d.lookup(key).await.unwrap(), expected);
            // The service only ever sees the hash.
            assert_eq!(d.keys(), vec![key]);
            assert_ne!(d.keys()[0].0, topic.0);
            d.unannounce(key, a).await.unwrap();
            d.unannounce(key, b).await.unwrap();
            assert!(d.lookup(key).await.unwrap().is_empty());
            assert!(d.keys().is_empty());
        });
    }

    #[test]
    fn dir_rendezvous_round_trip() {
        let root = std::env::temp_dir().join(format!("swarm-rs-dir-test-{}", std::process::id()));
        let d = DirDiscovery::new(&root);
        let key = Topic::from_name("clinic").discovery_key();
        let a = KeyPair::from_seed([1; 32]).public_key();
        let addr: std::net::SocketAddr = "127.0.0.1:4242".parse().unwrap();
        block_on(async {
            assert!(d.lookup(key).await.unwrap().is_empty());
            d.announce(key, a, addr).await.unwrap();
            // Garbage in the folder is ignored.
            std::fs::write(d.key_dir(&key).join("not-a-key"), "x").unwrap();
            assert_eq!(d.lookup(key).await.unwrap(), vec![(a, addr)]);
            d.unannounce(key, a).await.unwrap();
            d.unannounce(key, a).await.unwrap();
            assert!(d.lookup(key).await.unwrap().is_empty());
        });
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn registry_is_bounded_per_key() {
        let mut d: MemoryDiscovery<u32> = MemoryDiscovery::new();
        d.max_per_key = 1;
        let key = Topic::from_name("t").discovery_key();
        let (a, b) = (
            KeyPair::from_seed([1; 32]).public_key(),
            KeyPair::from_seed([2; 32]).public_key(),
        );
        block_on(async {
            d.announce(key, a, 1).await.unwrap();
            d.announce(key, a, 2).await.unwrap();
            assert_eq!(d.announce(key, b, 3).await, Err(DiscoveryError::Full));
        });
    }
}
