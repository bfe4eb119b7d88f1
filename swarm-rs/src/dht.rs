//! Internet discovery over the BitTorrent mainline DHT (feature `dht`).
//!
//! Plain mainline peer announcements (BEP 5) carry only `ip:port`, and the
//! swarm needs each peer's public key before it dials. So a topic's peers
//! live in one BEP 44 mutable item, signed by a key pair *derived from the
//! discovery key*: everyone who knows the discovery key can read and update
//! the list; DHT nodes see only that derived public key, never the topic nor
//! the discovery key itself.
//!
//! The list (at most 1000 bytes, the BEP 44 limit, so about 25 IPv4 peers)
//! is read, changed and written back with compare-and-swap on the item's
//! sequence number, retried on conflict. A lost update (two writers the DHT
//! did not catch) heals at the next announce: the driver re-announces every
//! refresh, and an announce writes whenever its entry is missing. Entries
//! are not signed by their peer: a forged entry costs a failed dial, since
//! the dialer insists on the listed key in the Noise handshake. The list
//! codec is sans-IO and tested on its own; `tests/dht.rs` runs the whole
//! service against a local mainline test network.
//!
//! mainline runs its own thread and channels, so no executor is needed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use async_trait::async_trait;
use mainline::{Dht, MutableItem, SigningKey};

use crate::discovery::{Discovery, DiscoveryError};
use crate::identity::{PublicKey, PUBLIC_KEY_LEN};
use crate::swarm::DiscoveryKey;

/// Version byte of the peer list.
const LIST_VERSION: u8 = 1;
/// BEP 44 limit on a mutable item's value.
const MAX_VALUE: usize = 1000;
/// Salt of the item, so other uses of a derived key cannot collide.
const SALT: &[u8] = b"swarm-rs peers v1";
const TAG_V4: u8 = 4;
const TAG_V6: u8 = 6;
/// Read-modify-write attempts before giving up (until the next announce).
const ATTEMPTS: usize = 4;

/// The signing seed of a topic's peer list: a hash of the discovery key.
fn list_seed(key: &DiscoveryKey) -> [u8; 32] {
    blake3::derive_key("swarm-rs 2026 dht peer list key v1", &key.0)
}

/// Encodes a peer list, keeping the *last* entries that fit in the BEP 44
/// limit (the newest announcements are at the end).
pub fn encode_list(peers: &[(PublicKey, SocketAddr)]) -> Vec<u8> {
    let entry = |(peer, addr): &(PublicKey, SocketAddr)| {
        let mut out = Vec::with_capacity(PUBLIC_KEY_LEN + 19);
        out.extend_from_slice(peer.as_bytes());
        match addr.ip() {
            IpAddr::V4(ip) => {
                out.push(TAG_V4);
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(TAG_V6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&addr.port().to_be_bytes());
        out
    };
    let mut kept = Vec::new();
    let mut size = 1;
    for e in peers.iter().rev().map(entry) {
        if size + e.len() > MAX_VALUE {
            break;
        }
        size += e.len();
        kept.push(e);
    }
    let mut out = Vec::with_capacity(size);
    out.push(LIST_VERSION);
    for e in kept.into_iter().rev() {
        out.extend_from_slice(&e);
    }
    out
}

/// Decodes a peer list; anything malformed ends it (what came before is
/// kept), an unknown version is an empty list.
pub fn decode_list(value: &[u8]) -> Vec<(PublicKey, SocketAddr)> {
    let mut out = Vec::new();
    let Some((&LIST_VERSION, mut rest)) = value.split_first() else {
        return out;
    };
    while !rest.is_empty() {
        let Some((key, tail)) = rest.split_first_chunk::<PUBLIC_KEY_LEN>() else {
            break;
        };
        let Ok(peer) = PublicKey::from_bytes(*key) else {
            break;
        };
        let (ip, tail) = match tail.split_first() {
            Some((&TAG_V4, t)) => match t.split_first_chunk::<4>() {
                Some((ip, t)) => (IpAddr::V4(Ipv4Addr::from(*ip)), t),
                None => break,
            },
            Some((&TAG_V6, t)) => match t.split_first_chunk::<16>() {
                Some((ip, t)) => (IpAddr::V6(Ipv6Addr::from(*ip)), t),
                None => break,
            },
            _ => break,
        };
        let Some((port, tail)) = tail.split_first_chunk::<2>() else {
            break;
        };
        out.retain(|(p, _)| *p != peer);
        out.push((peer, SocketAddr::new(ip, u16::from_be_bytes(*port))));
        rest = tail;
    }
    out
}

/// Settings of a [`DhtDiscovery`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DhtConfig {
    /// Bootstrap nodes (`host:port`); `None` uses mainline's public ones.
    pub bootstrap: Option<Vec<String>>,
    /// Local address for the DHT's UDP socket (`None`: all interfaces).
    pub bind_address: Option<Ipv4Addr>,
}

impl DhtConfig {
    /// Bootstraps from these nodes instead of the public ones (a local test
    /// network, or a private DHT).
    pub fn with_bootstrap(mut self, nodes: Vec<String>) -> Self {
        self.bootstrap = Some(nodes);
        self
    }

    /// Binds the DHT socket to this address.
    pub fn with_bind_address(mut self, addr: Ipv4Addr) -> Self {
        self.bind_address = Some(addr);
        self
    }
}

/// Discovery over the mainline DHT: a [`Discovery`] for TCP addresses.
pub struct DhtDiscovery {
    dht: mainline::async_dht::AsyncDht,
}

impl std::fmt::Debug for DhtDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtDiscovery").finish_non_exhaustive()
    }
}

impl DhtDiscovery {
    /// Starts a DHT client node (its own thread and UDP socket).
    pub fn start(config: DhtConfig) -> std::io::Result<Self> {
        let mut builder = Dht::builder();
        if let Some(nodes) = &config.bootstrap {
            builder.bootstrap(nodes);
        }
        if let Some(addr) = config.bind_address {
            builder.bind_address(addr);
        }
        Ok(Self {
            dht: builder.build()?.as_async(),
        })
    }

    /// Waits until the node has joined the DHT; false if bootstrapping
    /// failed (no reachable bootstrap node).
    pub async fn bootstrapped(&self) -> bool {
        self.dht.bootstrapped().await
    }

    /// Reads the list, applies `change`, writes it back if it changed;
    /// retries on write conflicts.
    async fn update(
        &self,
        key: &DiscoveryKey,
        change: impl Fn(&mut Vec<(PublicKey, SocketAddr)>),
    ) -> Result<(), DiscoveryError> {
        let signer = SigningKey::from_bytes(&list_seed(key));
        let list_key = signer.verifying_key().to_bytes();
        for _ in 0..ATTEMPTS {
            let current = self
                .dht
                .get_mutable_most_recent(&list_key, Some(SALT))
                .await;
            let (mut peers, seq) = match &current {
                Some(item) => (decode_list(item.value()), Some(item.seq())),
                None => (Vec::new(), None),
            };
            let before = peers.clone();
            change(&mut peers);
            if current.is_some() && peers == before {
                return Ok(());
            }
            let value = encode_list(&peers);
            let item = MutableItem::new(
                signer.clone(),
                &value,
                seq.map_or(1, |s| s.saturating_add(1)),
                Some(SALT),
            );
            match self.dht.put_mutable(item, seq).await {
                Ok(_) => return Ok(()),
                Err(mainline::errors::PutMutableError::Concurrency(_)) => continue,
                Err(mainline::errors::PutMutableError::Query(_)) => {
                    return Err(DiscoveryError::Unavailable)
                }
            }
        }
        Err(DiscoveryError::Unavailable)
    }
}

#[async_trait]
impl Discovery for DhtDiscovery {
    type Address = SocketAddr;

    async fn announce(
        &self,
        key: DiscoveryKey,
        peer: PublicKey,
        addr: SocketAddr,
    ) -> Result<(), DiscoveryError> {
        self.update(&key, |peers| {
            if !peers.contains(&(peer, addr)) {
                peers.retain(|(p, _)| *p != peer);
                peers.push((peer, addr));
            }
        })
        .await
    }

    async fn unannounce(&self, key: DiscoveryKey, peer: PublicKey) -> Result<(), DiscoveryError> {
        self.update(&key, |peers| peers.retain(|(p, _)| *p != peer))
            .await
    }

    async fn lookup(
        &self,
        key: DiscoveryKey,
    ) -> Result<Vec<(PublicKey, SocketAddr)>, DiscoveryError> {
        let signer = SigningKey::from_bytes(&list_seed(&key));
        let list_key = signer.verifying_key().to_bytes();
        let mut peers = self
            .dht
            .get_mutable_most_recent(&list_key, Some(SALT))
            .await
            .map(|item| decode_list(item.value()))
            .unwrap_or_default();
        peers.sort_by_key(|(p, _)| *p);
        Ok(peers)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::identity::KeyPair;
    use proptest::prelude::*;

    fn peer(seed: [u8; 32]) -> PublicKey {
        KeyPair::from_seed(seed).public_key()
    }

    #[test]
    fn golden_list() {
        let p = peer([1; 32]);
        let list = encode_list(&[(p, "192.0.2.1:258".parse().unwrap())]);
        let mut expected = vec![1];
        expected.extend_from_slice(p.as_bytes());
        expected.extend_from_slice(&[4, 192, 0, 2, 1, 1, 2]);
        assert_eq!(list, expected);
    }

    #[test]
    fn a_full_list_keeps_the_newest_entries() {
        let peers: Vec<_> = (0..40u8)
            .map(|n| (peer([n; 32]), SocketAddr::from(([10, 0, 0, n], 1000))))
            .collect();
        let list = encode_list(&peers);
        assert!(list.len() <= MAX_VALUE);
        let back = decode_list(&list);
        assert_eq!(back.len(), (MAX_VALUE - 1) / (32 + 1 + 4 + 2));
        assert_eq!(back.last(), peers.last());
        assert_eq!(&peers[peers.len() - back.len()..], &back[..]);
    }

    #[test]
    fn the_derived_list_key_hides_the_discovery_key() {
        let key = crate::swarm::Topic::from_name("t").discovery_key();
        let signer = SigningKey::from_bytes(&list_seed(&key));
        assert_ne!(signer.verifying_key().to_bytes(), key.0);
        assert_ne!(list_seed(&key), key.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn lists_round_trip(
            entries in proptest::collection::vec((any::<[u8; 32]>(), any::<[u8; 16]>(), any::<u16>(), any::<bool>()), 0..12)
        ) {
            let mut peers: Vec<(PublicKey, SocketAddr)> = Vec::new();
            for (seed, ip, port, v6) in entries {
                let ip = if v6 {
                    IpAddr::from(ip)
                } else {
                    IpAddr::from(*ip.first_chunk::<4>().unwrap())
                };
                let p = peer(seed);
                peers.retain(|(q, _)| *q != p);
                peers.push((p, SocketAddr::new(ip, port)));
            }
            prop_assert_eq!(decode_list(&encode_list(&peers)), peers);
        }

        #[test]
        fn random_values_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = decode_list(&bytes);
            let mut versioned = vec![LIST_VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = decode_list(&versioned);
        }
    }
}
