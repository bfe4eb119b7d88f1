//! The async swarm driver over the memory transport and in-memory discovery:
//! peers meet on a topic and end with exactly one connection per pair, the
//! firewall is honoured, leaving stops announcing, partitions heal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use futures::{SinkExt, StreamExt};
use swarm_rs::{
    DialFaults, DriverConfig, HandshakeHash, JoinMode, KeyPair, MemoryAddr, MemoryDiscovery,
    MemoryNetwork, MemoryTransport, PeerConnection, PipeStream, PublicKey, SeededEntropy,
    SwarmBuilder, SwarmConfig, SwarmHandle, SystemClock, Topic,
};

/// Upper bound for any condition to become true.
const PATIENCE: Duration = Duration::from_secs(20);

fn fast_config() -> DriverConfig {
    let mut config = DriverConfig::default();
    let mut swarm = SwarmConfig::default();
    swarm.backoff_base = Duration::from_millis(10);
    swarm.backoff_max = Duration::from_millis(200);
    config.swarm = swarm;
    config.refresh_interval = Duration::from_millis(50);
    config
}

/// Live connections of one peer, by remote key, as handshake hashes.
type Live = Arc<Mutex<BTreeMap<PublicKey, Vec<HandshakeHash>>>>;

struct Node {
    handle: SwarmHandle,
    transport: MemoryTransport,
    /// Connections the application holds and that have not ended.
    live: Live,
    /// Every peer a connection was ever handed out for.
    seen: Arc<Mutex<Vec<PublicKey>>>,
}

impl Node {
    fn key(&self) -> PublicKey {
        self.handle.public_key()
    }

    fn live(&self) -> BTreeMap<PublicKey, Vec<HandshakeHash>> {
        self.live.lock().unwrap().clone()
    }
}

/// Reads a connection until it ends, keeping `live` up to date.
async fn hold(mut conn: PeerConnection<PipeStream>, live: Live) {
    let peer = conn.remote_public_key();
    let hash = conn.handshake_hash();
    live.lock().unwrap().entry(peer).or_default().push(hash);
    // Say hello so both directions carry data.
    let _ = conn.send(b"hello".to_vec()).await;
    while let Some(Ok(_)) = conn.next().await {}
    let mut live = live.lock().unwrap();
    if let Some(hashes) = live.get_mut(&peer) {
        hashes.retain(|h| *h != hash);
        if hashes.is_empty() {
            live.remove(&peer);
        }
    }
}

fn spawn_node(
    pool: &mut LocalPool,
    transport: MemoryTransport,
    discovery: &MemoryDiscovery<MemoryAddr>,
    seed: u8,
    firewall: Option<PublicKey>,
) -> Node {
    let spawner = pool.spawner();
    let mut builder = SwarmBuilder::new(KeyPair::from_seed([seed; 32]))
        .config(fast_config())
        .entropy(Box::new(SeededEntropy::from_u64(u64::from(seed))));
    if let Some(refused) = firewall {
        builder = builder.firewall(move |peer| *peer != refused);
    }
    let (handle, mut connections, driver) = pool
        .run_until(builder.bind(transport.clone(), discovery.clone(), &MemoryAddr(0)))
        .unwrap();
    spawner.spawn_local(driver).unwrap();
    let live: Live = Arc::default();
    let seen: Arc<Mutex<Vec<PublicKey>>> = Arc::default();
    let (live2, seen2, spawner2) = (live.clone(), seen.clone(), spawner.clone());
    spawner
        .spawn_local(async move {
            while let Some(conn) = connections.next().await {
                seen2.lock().unwrap().push(conn.remote_public_key());
                spawner2.spawn_local(hold(conn, live2.clone())).unwrap();
            }
        })
        .unwrap();
    Node {
        handle,
        transport,
        live,
        seen,
    }
}

async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

/// Polls `check` until it holds, or fails the test after `PATIENCE`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for: {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// Every pair of `nodes` holds exactly one connection, the same physical one
/// on both sides (same handshake hash), and the rules agree.
async fn fully_meshed(nodes: &[Node]) -> bool {
    for a in nodes {
        let live = a.live();
        if live.len() != nodes.len() - 1 || live.values().any(|h| h.len() != 1) {
            return false;
        }
        let mut expected: Vec<PublicKey> = live.keys().copied().collect();
        expected.sort();
        if a.handle.connected_peers().await.unwrap() != expected {
            return false;
        }
        for b in nodes {
            if a.key() == b.key() {
                continue;
            }
            let ours = live.get(&b.key()).cloned();
            let theirs = b.live().get(&a.key()).cloned();
            if ours.is_none() || ours != theirs {
                return false;
            }
        }
    }
    true
}

#[test]
fn every_pair_of_peers_ends_with_exactly_one_connection() {
    let mut pool = LocalPool::new();
    let net = MemoryNetwork::new();
    let discovery = MemoryDiscovery::new();
    let nodes: Vec<Node> = (1..=5)
        .map(|seed| spawn_node(&mut pool, net.transport(), &discovery, seed, None))
        .collect();
    let topic = Topic::from_name("ward-7");
    for node in &nodes {
        node.handle.join(&topic, JoinMode::BOTH).unwrap();
    }
    pool.run_until(async {
        eventually("a full mesh", || fully_meshed(&nodes)).await;
        // And it stays that way: no churn once settled.
        sleep(Duration::from_millis(300)).await;
        assert!(fully_meshed(&nodes).await);
    });
    // Only the hash of the topic was ever announced.
    assert_eq!(discovery.keys(), vec![topic.discovery_key()]);
}

#[test]
fn the_firewall_is_consulted_before_a_connection_is_handed_out() {
    let mut pool = LocalPool::new();
    let net = MemoryNetwork::new();
    let discovery = MemoryDiscovery::new();
    let refused = KeyPair::from_seed([3; 32]).public_key();
    let guarded = spawn_node(&mut pool, net.transport(), &discovery, 1, Some(refused));
    let friend = spawn_node(&mut pool, net.transport(), &discovery, 2, None);
    let stranger = spawn_node(&mut pool, net.transport(), &discovery, 3, None);
    assert_eq!(stranger.key(), refused);
    let topic = Topic::from_name("clinic");
    for node in [&guarded, &friend, &stranger] {
        node.handle.join(&topic, JoinMode::BOTH).unwrap();
    }
    pool.run_until(async {
        eventually("friend and stranger meet", || async {
            stranger.live().contains_key(&friend.key())
                && guarded.live().contains_key(&friend.key())
        })
        .await;
        // Give the stranger time to try (and retry) the guarded peer.
        sleep(Duration::from_millis(500)).await;
        assert!(!guarded.seen.lock().unwrap().contains(&refused));
        assert_eq!(
            guarded.handle.connected_peers().await.unwrap(),
            vec![friend.key()]
        );
    });
}

#[test]
fn leaving_a_topic_stops_announcing_it() {
    let mut pool = LocalPool::new();
    let net = MemoryNetwork::new();
    let discovery = MemoryDiscovery::new();
    let server = spawn_node(&mut pool, net.transport(), &discovery, 1, None);
    let topic = Topic::from_name("records");
    let server_only = JoinMode {
        server: true,
        client: false,
    };
    server.handle.join(&topic, server_only).unwrap();
    pool.run_until(async {
        eventually("the announcement", || async {
            discovery.keys() == vec![topic.discovery_key()]
        })
        .await;
        server.handle.leave(&topic).unwrap();
        eventually("the withdrawal", || async { discovery.keys().is_empty() }).await;
        // Refreshes must not announce it again.
        sleep(Duration::from_millis(200)).await;
        assert!(discovery.keys().is_empty());
    });
    // A client arriving later finds nobody.
    let client = spawn_node(&mut pool, net.transport(), &discovery, 2, None);
    client.handle.join(&topic, JoinMode::BOTH).unwrap();
    pool.run_until(async {
        sleep(Duration::from_millis(300)).await;
        assert!(client.live().is_empty());
        assert!(server.seen.lock().unwrap().is_empty());
    });
}

#[test]
fn dropping_every_handle_stops_the_driver_and_withdraws_announcements() {
    let mut pool = LocalPool::new();
    let net = MemoryNetwork::new();
    let discovery = MemoryDiscovery::new();
    let node = spawn_node(&mut pool, net.transport(), &discovery, 1, None);
    node.handle
        .join(&Topic::from_name("t"), JoinMode::BOTH)
        .unwrap();
    pool.run_until(async {
        eventually("the announcement", || async {
            !discovery.keys().is_empty()
        })
        .await;
    });
    drop(node);
    // The driver and the application task both finish.
    pool.run();
    assert!(discovery.keys().is_empty());
}

#[test]
fn a_partition_heals_and_peers_reconnect() {
    let mut pool = LocalPool::new();
    let net = MemoryNetwork::new();
    let discovery = MemoryDiscovery::new();
    let nodes: Vec<Node> = (1..=3)
        .map(|seed| spawn_node(&mut pool, net.transport(), &discovery, seed, None))
        .collect();
    let topic = Topic::from_name("ward-7");
    for node in &nodes {
        node.handle.join(&topic, JoinMode::BOTH).unwrap();
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    pool.run_until(async {
        eventually("a full mesh", || fully_meshed(&nodes)).await;
        let before = a.live()[&b.key()].clone();
        net.partition(a.transport.host(), b.transport.host());
        eventually("the cut connection ends", || async {
            !a.live().contains_key(&b.key()) && !b.live().contains_key(&a.key())
        })
        .await;
        // While cut, the others stay connected and a and b stay apart.
        sleep(Duration::from_millis(300)).await;
        assert!(!a.live().contains_key(&b.key()));
        assert!(a.live().contains_key(&nodes[2].key()));
        // Long enough for a and b to give up dialing (8 attempts, capped at
        // 200 ms); a refresh finds them again once healed.
        sleep(Duration::from_millis(1500)).await;
        net.heal(a.transport.host(), b.transport.host());
        eventually("a full mesh again", || fully_meshed(&nodes)).await;
        assert_ne!(a.live()[&b.key()], before, "a new connection");
    });
}

#[test]
fn the_mesh_forms_despite_slow_and_lost_dials() {
    let mut pool = LocalPool::new();
    let net = MemoryNetwork::new();
    let discovery = MemoryDiscovery::new();
    let nodes: Vec<Node> = (1..=4)
        .map(|seed| {
            // 5 ms per dial, and 40 % of the dials lost.
            let faults = DialFaults::new(
                Duration::from_millis(5),
                400_000,
                Arc::new(SystemClock),
                u64::from(seed),
            );
            let transport = net.transport().with_dial_faults(faults);
            spawn_node(&mut pool, transport, &discovery, seed, None)
        })
        .collect();
    let topic = Topic::from_name("ward-7");
    for node in &nodes {
        node.handle.join(&topic, JoinMode::BOTH).unwrap();
    }
    pool.run_until(async {
        eventually("a full mesh", || fully_meshed(&nodes)).await;
    });
}
