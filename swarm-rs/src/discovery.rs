//! Discovery: where peers announce themselves under a [`DiscoveryKey`] and
//! look each other up. Only discovery keys (hashes of topics) are ever
//! handed to a discovery service, never topics.
//!
//! [`MemoryDiscovery`] serves tests in one process; [`DirDiscovery`] is a
//! rendezvous folder for processes on one machine, for any address that
//! can be written as a line of text ([`DirAddress`]).

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

/// How a [`DirDiscovery`] writes an address into its file: one short line
/// of text, read back with [`DirAddress::from_text`]. Implemented for
/// `SocketAddr` (`HOST:PORT`) and, with the feature `iroh`, for iroh's
/// `EndpointAddr`.
pub trait DirAddress: Clone + Debug + Send + Sync + Sized + 'static {
    /// The address as text (no line breaks).
    fn to_text(&self) -> String;
    /// Parses what [`DirAddress::to_text`] wrote; `None` for anything else
    /// (the file may come from another program).
    fn from_text(text: &str) -> Option<Self>;
}

impl DirAddress for std::net::SocketAddr {
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn from_text(text: &str) -> Option<Self> {
        text.trim().parse().ok()
    }
}

/// Largest address file a lookup reads (anything longer is skipped).
const MAX_ADDRESS_FILE: u64 = 4096;

/// A rendezvous in a shared folder, for peers on one machine (several
/// processes, e.g. over TCP loopback or iroh). Each announcement is one
/// small file, `<folder>/<discovery key hex>/<public key hex>`, holding the
/// address as text ([`DirAddress`]: `HOST:PORT` for TCP). Lookups list the
/// key's folder.
///
/// Honest limits: it only works between processes that see the same folder;
/// announcements of a process that was killed stay until withdrawn or
/// overwritten (dialing them fails and is retried with backoff, then given
/// up); the file system calls block the polling thread briefly (the files
/// are tiny). For LAN and internet use, mDNS and a DHT are the plan.
pub struct DirDiscovery<A = std::net::SocketAddr> {
    root: std::path::PathBuf,
    addr: std::marker::PhantomData<fn() -> A>,
}

impl<A> Debug for DirDiscovery<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirDiscovery")
            .field("root", &self.root)
            .finish()
    }
}

impl<A> Clone for DirDiscovery<A> {
    fn clone(&self) -> Self {
        Self::new(self.root.clone())
    }
}

impl<A> DirDiscovery<A> {
    /// A rendezvous in `root` (created when needed).
    pub fn new(root: impl Into<std::path::PathBuf>) -> Self {
        Self {
            root: root.into(),
            addr: std::marker::PhantomData,
        }
    }

    fn key_dir(&self, key: &DiscoveryKey) -> std::path::PathBuf {
        self.root.join(hex(&key.0))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads at most [`MAX_ADDRESS_FILE`] bytes of text; `None` if longer or
/// unreadable.
fn read_small(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(MAX_ADDRESS_FILE + 1)
        .read_to_string(&mut text)
        .ok()?;
    (text.len() as u64 <= MAX_ADDRESS_FILE).then_some(text)
}

#[async_trait]
impl<A: DirAddress> Discovery for DirDiscovery<A> {
    type Address = A;

    async fn announce(
        &self,
        key: DiscoveryKey,
        peer: PublicKey,
        addr: A,
    ) -> Result<(), DiscoveryError> {
        let dir = self.key_dir(&key);
        std::fs::create_dir_all(&dir).map_err(|_| DiscoveryError::Unavailable)?;
        // Write then rename, so a lookup never reads half an address.
        let name = peer.to_string();
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, addr.to_text()).map_err(|_| DiscoveryError::Unavailable)?;
        std::fs::rename(&tmp, dir.join(&name)).map_err(|_| DiscoveryError::Unavailable)
    }

    async fn unannounce(&self, key: DiscoveryKey, peer: PublicKey) -> Result<(), DiscoveryError> {
        match std::fs::remove_file(self.key_dir(&key).join(peer.to_string())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(_) => Err(DiscoveryError::Unavailable),
        }
    }

    async fn lookup(&self, key: DiscoveryKey) -> Result<Vec<(PublicKey, A)>, DiscoveryError> {
        let entries = match std::fs::read_dir(self.key_dir(&key)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(_) => return Err(DiscoveryError::Unavailable),
        };
        let mut found = BTreeMap::new();
        // Anything unreadable, oversized or malformed (another program's
        // files, a half-written temp file) is skipped, never trusted.
        for entry in entries.flatten().take(1024) {
            let Some(peer) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<PublicKey>().ok())
            else {
                continue;
            };
            let Some(text) = read_small(&entry.path()) else {
                continue;
            };
            if let Some(addr) = A::from_text(&text) {
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
        let d: DirDiscovery = DirDiscovery::new(&root);
        let key = Topic::from_name("clinic").discovery_key();
        let a = KeyPair::from_seed([1; 32]).public_key();
        let addr: std::net::SocketAddr = "127.0.0.1:4242".parse().unwrap();
        block_on(async {
            assert!(d.lookup(key).await.unwrap().is_empty());
            d.announce(key, a, addr).await.unwrap();
            // Garbage in the folder is ignored: a file that is not named
            // by a key, an unparsable address, an oversized file.
            std::fs::write(d.key_dir(&key).join("not-a-key"), "x").unwrap();
            let (b, c) = (
                KeyPair::from_seed([2; 32]).public_key(),
                KeyPair::from_seed([3; 32]).public_key(),
            );
            std::fs::write(d.key_dir(&key).join(b.to_string()), "nowhere:x").unwrap();
            let huge = format!("127.0.0.1:1{}", " ".repeat(5000));
            std::fs::write(d.key_dir(&key).join(c.to_string()), huge).unwrap();
            assert_eq!(d.lookup(key).await.unwrap(), vec![(a, addr)]);
            d.unannounce(key, a).await.unwrap();
            d.unannounce(key, a).await.unwrap();
            d.unannounce(key, b).await.unwrap();
            d.unannounce(key, c).await.unwrap();
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
