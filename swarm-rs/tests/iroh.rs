//! The iroh adapter on loopback with direct addresses only (no relay, no
//! address lookup, no DNS): two endpoints reach each other by ed25519
//! public key through the [`Transport`] trait, and swarm drivers over it
//! meet on a topic through a discovery of iroh addresses.
#![cfg(feature = "iroh")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::{block_on, LocalPool};
use futures::future::{join, select, Either};
use futures::task::LocalSpawnExt;
use futures::{AsyncReadExt, AsyncWriteExt, SinkExt, StreamExt};
use swarm_rs::iroh_transport::{
    endpoint_id_of, public_key_of, EndpointAddr, IrohConfig, IrohStream, IrohTransport, RelayUrl,
    TransportAddr,
};
use swarm_rs::{
    DirAddress, DirDiscovery, Discovery, DriverConfig, HandshakeHash, JoinMode, KeyPair, Listener,
    MemoryDiscovery, Mux, MuxConfig, MuxEvent, PeerConnection, PublicKey, Role, SecureConfig,
    SecureStream, SeededEntropy, SwarmBuilder, SwarmConfig, SwarmHandle, SystemClock, Topic,
    Transport,
};

/// Runs `fut` to completion, failing the test if it takes longer than
/// `secs` (a hung QUIC handshake must not hang CI).
fn run<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    block_on(async {
        let timer = async_io::Timer::after(Duration::from_secs(secs));
        match select(Box::pin(fut), timer).await {
            Either::Left((out, _)) => out,
            Either::Right(_) => panic!("timed out after {secs} s"),
        }
    })
}

fn bind(keypair: &KeyPair) -> IrohTransport {
    IrohTransport::bind(keypair, IrohConfig::direct("127.0.0.1:0".parse().unwrap())).unwrap()
}

#[test]
fn endpoints_dial_by_public_key_and_exchange_frames() {
    let (alice, bob) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
    let (ta, tb) = (bind(&alice), bind(&bob));
    // The endpoint id is the swarm-rs identity.
    assert_eq!(ta.public_key().unwrap(), alice.public_key());
    assert_eq!(
        tb.local_addr().id,
        endpoint_id_of(&bob.public_key()).unwrap()
    );

    run(30, async {
        let mut listener = tb.listen(&tb.local_addr()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Direct loopback addresses only: no relay.
        assert!(addr.ip_addrs().any(|a| a.ip().is_loopback()), "{addr:?}");
        assert_eq!(addr.relay_urls().count(), 0);

        // Raw bytes both ways; the dialer writes first (QUIC opens streams lazily).
        let dial = async {
            let mut s = ta.connect(&addr).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            s.flush().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
            assert_eq!(s.remote_public_key().unwrap(), bob.public_key());
            s.close().await.unwrap();
            s
        };
        let accept = async {
            let (mut s, from) = listener.accept().await.unwrap();
            assert_eq!(public_key_of(&from.id).unwrap(), alice.public_key());
            assert_eq!(s.remote_public_key().unwrap(), alice.public_key());
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            s.write_all(b"pong").await.unwrap();
            s.flush().await.unwrap();
            assert_eq!(s.read(&mut buf).await.unwrap(), 0, "end of stream");
            s
        };
        let (_d, _a) = join(dial, accept).await;

        // Noise-framed messages over a second connection, both ways,
        // including frames larger than a QUIC packet.
        let frames: Vec<Vec<u8>> = vec![
            b"over iroh".to_vec(),
            Vec::new(),
            (0..200_000u32).map(|i| (i % 251) as u8).collect(),
            vec![7; 1],
        ];
        let dial = async {
            let io = ta.connect(&addr).await.unwrap();
            let config = SecureConfig::default().with_expected_remote(bob.public_key());
            let mut s = SecureStream::handshake(
                io,
                Role::Initiator,
                &alice,
                config,
                &mut SeededEntropy::from_u64(1),
                Arc::new(SystemClock),
            )
            .await
            .unwrap();
            for f in &frames {
                s.send(f.clone()).await.unwrap();
            }
            let mut echoed = Vec::new();
            for _ in &frames {
                echoed.push(s.next().await.unwrap().unwrap());
            }
            echoed
        };
        let accept = async {
            let (io, _) = listener.accept().await.unwrap();
            let mut s = SecureStream::handshake(
                io,
                Role::Responder,
                &bob,
                SecureConfig::default(),
                &mut SeededEntropy::from_u64(2),
                Arc::new(SystemClock),
            )
            .await
            .unwrap();
            assert_eq!(s.remote_public_key(), Some(alice.public_key()));
            let mut got = Vec::new();
            for _ in &frames {
                let f = s.next().await.unwrap().unwrap();
                s.send(f.clone()).await.unwrap();
                got.push(f);
            }
            got
        };
        let (echoed, got) = join(dial, accept).await;
        assert_eq!(got, frames);
        assert_eq!(echoed, frames);
    });
}

#[test]
fn a_wrong_expected_key_is_refused() {
    let (alice, bob, carol) = (
        KeyPair::from_seed([1; 32]),
        KeyPair::from_seed([2; 32]),
        KeyPair::from_seed([3; 32]),
    );
    let (ta, tb) = (bind(&alice), bind(&bob));
    run(30, async {
        // Listening under someone else's key is refused.
        let carol_id = endpoint_id_of(&carol.public_key()).unwrap();
        let err = tb.listen(&EndpointAddr::new(carol_id)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrNotAvailable);

        let mut listener = tb.listen(&tb.local_addr()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Bob's socket, but Alice expects Carol there: the QUIC handshake fails.
        let impostor =
            EndpointAddr::from_parts(carol_id, addr.ip_addrs().copied().map(TransportAddr::Ip));
        match ta.connect(&impostor).await {
            Err(err) => assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}"),
            Ok(_) => panic!("connected to a peer holding a different key"),
        }

        // The listener is unharmed: the right key still connects, and the
        // refused attempt never surfaced as an accepted stream.
        let dial = async {
            let mut s = ta.connect(&addr).await.unwrap();
            s.write_all(b"hi").await.unwrap();
            s.flush().await.unwrap();
            s
        };
        let accept = async {
            let (mut s, from) = listener.accept().await.unwrap();
            assert_eq!(public_key_of(&from.id).unwrap(), alice.public_key());
            let mut buf = [0u8; 2];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hi");
            s
        };
        let (_d, _a) = join(dial, accept).await;
    });
}

#[test]
fn a_secure_handshake_refuses_a_different_noise_key() {
    // The QUIC layer proves the endpoint key; the Noise layer on top still
    // refuses a peer that is not the one expected.
    let (alice, bob, carol) = (
        KeyPair::from_seed([1; 32]),
        KeyPair::from_seed([2; 32]),
        KeyPair::from_seed([3; 32]),
    );
    let (ta, tb) = (bind(&alice), bind(&bob));
    run(30, async {
        let mut listener = tb.listen(&tb.local_addr()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dial = async {
            let io = ta.connect(&addr).await.unwrap();
            let config = SecureConfig::default().with_expected_remote(carol.public_key());
            SecureStream::handshake(
                io,
                Role::Initiator,
                &alice,
                config,
                &mut SeededEntropy::from_u64(1),
                Arc::new(SystemClock),
            )
            .await
        };
        let accept = async {
            let (io, _) = listener.accept().await.unwrap();
            SecureStream::handshake(
                io,
                Role::Responder,
                &bob,
                SecureConfig::default(),
                &mut SeededEntropy::from_u64(2),
                Arc::new(SystemClock),
            )
            .await
        };
        let (dialed, _accepted) = join(dial, accept).await;
        assert!(dialed.is_err(), "Noise accepted the wrong key");
    });
}

#[test]
fn data_written_before_a_drop_still_arrives() {
    // Dropping a QUIC connection at once would discard unacknowledged data;
    // a dropped `IrohStream` finishes its stream and lingers instead.
    let (alice, bob) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
    let (ta, tb) = (bind(&alice), bind(&bob));
    let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    run(30, async {
        let mut listener = tb.listen(&tb.local_addr()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s = ta.connect(&addr).await.unwrap();
        s.write_all(&sent).await.unwrap();
        drop(s);
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes differ");
    });
}

// ---------------------------------------------------------------------------
// The swarm driver over iroh: topics, discovery of `EndpointAddr`s, the
// rules (one connection per pair, firewall, leave) and mux channels on the
// connections it hands out.

type Live = Arc<Mutex<BTreeMap<PublicKey, Vec<HandshakeHash>>>>;
type Heard = Arc<Mutex<BTreeMap<PublicKey, Vec<Vec<u8>>>>>;

/// Upper bound for any condition to become true over loopback QUIC.
const PATIENCE: Duration = Duration::from_secs(30);

/// What a peer says on the chat channel: `hello from ` + its key.
fn hello(from: &PublicKey) -> Vec<u8> {
    [b"hello from ".as_slice(), from.as_bytes().as_slice()].concat()
}

struct Node {
    handle: SwarmHandle,
    /// Connections the application holds and that have not ended.
    live: Live,
    /// Messages received on the chat channel, by sender.
    heard: Heard,
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
    fn heard(&self) -> BTreeMap<PublicKey, Vec<Vec<u8>>> {
        self.heard.lock().unwrap().clone()
    }
}

/// Runs a mux over one handed-out connection: opens the chat channel, says
/// hello once both sides opened it, and records what the peer says, until
/// the connection ends.
async fn chat(mut conn: PeerConnection<IrohStream>, me: PublicKey, live: Live, heard: Heard) {
    let peer = conn.remote_public_key();
    let hash = conn.handshake_hash();
    live.lock().unwrap().entry(peer).or_default().push(hash);
    let mut mux = Mux::new(MuxConfig::default());
    let channel = mux.open("chat/v1", b"ward-7").unwrap();
    'session: loop {
        while let Some(frame) = mux.poll_transmit() {
            if conn.feed(frame).await.is_err() {
                break 'session;
            }
        }
        if conn.flush().await.is_err() {
            break;
        }
        match conn.next().await {
            Some(Ok(frame)) => {
                // A peer breaking the mux rules ends the session, not the test.
                if mux.handle_frame(&frame).is_err() {
                    break;
                }
            }
            _ => break,
        }
        while let Some(event) = mux.poll_event() {
            match event {
                MuxEvent::Opened { channel: c, .. } if c == channel => {
                    mux.send(channel, &hello(&me)).unwrap();
                }
                MuxEvent::Message { channel: c, data } if c == channel => {
                    heard.lock().unwrap().entry(peer).or_default().push(data);
                }
                _ => {}
            }
        }
    }
    let mut live = live.lock().unwrap();
    if let Some(hashes) = live.get_mut(&peer) {
        hashes.retain(|h| *h != hash);
        if hashes.is_empty() {
            live.remove(&peer);
        }
    }
}

fn fast_config() -> DriverConfig {
    let mut config = DriverConfig::default();
    let mut swarm = SwarmConfig::default();
    swarm.backoff_base = Duration::from_millis(20);
    swarm.backoff_max = Duration::from_millis(400);
    config.swarm = swarm;
    config.refresh_interval = Duration::from_millis(200);
    config
}

/// A swarm on its own iroh endpoint (loopback, direct addresses only),
/// meeting others through `discovery`.
fn spawn_node<D: Discovery<Address = EndpointAddr> + Clone + 'static>(
    pool: &mut LocalPool,
    discovery: &D,
    seed: u8,
    refuse: Option<PublicKey>,
) -> Node {
    let keypair = KeyPair::from_seed([seed; 32]);
    let me = keypair.public_key();
    let transport = bind(&keypair);
    let addr = transport.local_addr();
    let mut builder = SwarmBuilder::new(keypair)
        .config(fast_config())
        .entropy(Box::new(SeededEntropy::from_u64(u64::from(seed))));
    if let Some(refused) = refuse {
        builder = builder.firewall(move |peer| *peer != refused);
    }
    let (handle, mut connections, driver) = pool
        .run_until(builder.bind(transport, discovery.clone(), &addr))
        .unwrap();
    let spawner = pool.spawner();
    spawner.spawn_local(driver).unwrap();
    let (live, heard): (Live, Heard) = Default::default();
    let seen: Arc<Mutex<Vec<PublicKey>>> = Arc::default();
    let (live2, heard2, seen2, spawner2) =
        (live.clone(), heard.clone(), seen.clone(), spawner.clone());
    spawner
        .spawn_local(async move {
            while let Some(conn) = connections.next().await {
                seen2.lock().unwrap().push(conn.remote_public_key());
                let session = chat(conn, me, live2.clone(), heard2.clone());
                spawner2.spawn_local(session).unwrap();
            }
        })
        .unwrap();
    Node {
        handle,
        live,
        heard,
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
        sleep(Duration::from_millis(20)).await;
    }
}

/// `a` and `b` hold exactly one connection to each other, the same one
/// (same handshake hash) on both sides, and each heard the other's hello on
/// the chat channel (once per connection the rules handed out: a duplicate
/// may be handed out before the tie-break closes it), and nothing else.
fn paired(a: &Node, b: &Node) -> bool {
    let (ab, ba) = (
        a.live().get(&b.key()).cloned(),
        b.live().get(&a.key()).cloned(),
    );
    let one = matches!(&ab, Some(h) if h.len() == 1) && ab == ba;
    let heard_hello = |x: &Node, from: &Node| {
        x.heard()
            .get(&from.key())
            .is_some_and(|m| !m.is_empty() && m.iter().all(|msg| *msg == hello(&from.key())))
    };
    one && heard_hello(a, b) && heard_hello(b, a)
}

#[test]
fn swarms_over_iroh_meet_once_per_pair_talk_on_channels_and_honour_the_firewall() {
    let mut pool = LocalPool::new();
    let discovery: MemoryDiscovery<EndpointAddr> = MemoryDiscovery::new();
    let refused = KeyPair::from_seed([3; 32]).public_key();
    // Node 1 refuses node 3; node 2 takes everyone.
    let guarded = spawn_node(&mut pool, &discovery, 1, Some(refused));
    let friend = spawn_node(&mut pool, &discovery, 2, None);
    let stranger = spawn_node(&mut pool, &discovery, 3, None);
    assert_eq!(stranger.key(), refused);
    let topic = Topic::from_name("ward-7");
    // Everyone is server and client: both sides of each pair dial at once.
    for node in [&guarded, &friend, &stranger] {
        node.handle.join(&topic, JoinMode::BOTH).unwrap();
    }
    pool.run_until(async {
        eventually("1-2 and 2-3 paired with one connection each", || async {
            paired(&guarded, &friend) && paired(&friend, &stranger)
        })
        .await;
        let expected = |n: &Node| {
            let mut keys: Vec<PublicKey> = n.live().keys().copied().collect();
            keys.sort();
            keys
        };
        assert_eq!(
            friend.handle.connected_peers().await.unwrap(),
            expected(&friend)
        );
        let settled = (guarded.live(), friend.live());
        // Long enough for the stranger to retry the guarded peer a few
        // times, and for any duplicate to be closed: nothing changes.
        sleep(Duration::from_millis(1000)).await;
        assert!(paired(&guarded, &friend) && paired(&friend, &stranger));
        assert_eq!(
            (guarded.live(), friend.live()),
            settled,
            "churn after settling"
        );
        // The guarded peer never handed out a connection to the stranger,
        // so no chat ever ran between them.
        assert!(!guarded.seen.lock().unwrap().contains(&refused));
        assert_eq!(
            guarded.handle.connected_peers().await.unwrap(),
            vec![friend.key()]
        );
        assert!(!guarded.heard().contains_key(&refused));
        assert!(!stranger.heard().contains_key(&guarded.key()));
        // What discovery holds: the hash of the topic, and each peer's
        // iroh address (its key, its loopback socket, no relay).
        assert_eq!(discovery.keys(), vec![topic.discovery_key()]);
        let announced = discovery.lookup(topic.discovery_key()).await.unwrap();
        assert_eq!(announced.len(), 3);
        for (peer, addr) in announced {
            assert_eq!(public_key_of(&addr.id).unwrap(), peer);
            assert!(addr.ip_addrs().all(|a| a.ip().is_loopback()), "{addr:?}");
            assert!(addr.ip_addrs().count() > 0 && addr.relay_urls().count() == 0);
        }
    });
}

#[test]
fn leaving_a_topic_over_iroh_stops_announcing_it() {
    let mut pool = LocalPool::new();
    let discovery: MemoryDiscovery<EndpointAddr> = MemoryDiscovery::new();
    let server = spawn_node(&mut pool, &discovery, 1, None);
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
        sleep(Duration::from_millis(600)).await;
        assert!(discovery.keys().is_empty());
    });
    // A client arriving later finds nobody.
    let client = spawn_node(&mut pool, &discovery, 2, None);
    client.handle.join(&topic, JoinMode::BOTH).unwrap();
    pool.run_until(async {
        sleep(Duration::from_millis(600)).await;
        assert!(client.live().is_empty());
        assert!(server.seen.lock().unwrap().is_empty());
        assert!(client.seen.lock().unwrap().is_empty());
        // Its own announcement is the only one under the topic.
        let announced = discovery.lookup(topic.discovery_key()).await.unwrap();
        assert_eq!(announced.len(), 1);
        assert_eq!(announced[0].0, client.key());
    });
}

#[test]
fn iroh_addresses_round_trip_through_rendezvous_text() {
    let id = endpoint_id_of(&KeyPair::from_seed([9; 32]).public_key()).unwrap();
    let relay: RelayUrl = "https://relay.example.org./".parse().unwrap();
    let full = EndpointAddr::new(id)
        .with_ip_addr("127.0.0.1:4433".parse().unwrap())
        .with_ip_addr("[::1]:4434".parse().unwrap())
        .with_relay_url(relay);
    for addr in [full, EndpointAddr::new(id)] {
        let text = addr.to_text();
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(EndpointAddr::from_text(&text), Some(addr));
    }
    let key = hex_of(id.as_bytes());
    for bad in [
        String::new(),
        "zz".to_string(),
        format!("{key} ip:nowhere"),
        format!("{key} relay:not a url"),
        format!("{key} carrier-pigeon:7"),
        // A key that is not a curve point (y = 2).
        format!("02{} ip:127.0.0.1:1", "00".repeat(31)),
    ] {
        assert_eq!(EndpointAddr::from_text(&bad), None, "{bad}");
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn swarms_over_iroh_meet_through_a_rendezvous_folder() {
    // Each peer has its own `DirDiscovery` on the same folder, as two
    // processes on one machine would; the files hold iroh addresses.
    let root = std::env::temp_dir().join(format!("swarm-rs-iroh-dir-{}", std::process::id()));
    let mut pool = LocalPool::new();
    let a = spawn_node(
        &mut pool,
        &DirDiscovery::<EndpointAddr>::new(&root),
        1,
        None,
    );
    let b = spawn_node(
        &mut pool,
        &DirDiscovery::<EndpointAddr>::new(&root),
        2,
        None,
    );
    let topic = Topic::from_name("ward-7");
    let look = DirDiscovery::<EndpointAddr>::new(&root);
    for node in [&a, &b] {
        node.handle.join(&topic, JoinMode::BOTH).unwrap();
    }
    pool.run_until(async {
        eventually("a and b paired", || async { paired(&a, &b) }).await;
        let found = look.lookup(topic.discovery_key()).await.unwrap();
        let keys: Vec<PublicKey> = found.iter().map(|(k, _)| *k).collect();
        let mut expected = vec![a.key(), b.key()];
        expected.sort();
        assert_eq!(keys, expected);
        for (peer, addr) in &found {
            assert_eq!(public_key_of(&addr.id).unwrap(), *peer);
            assert!(addr.ip_addrs().any(|a| a.ip().is_loopback()));
        }
        // Leaving removes the file.
        a.handle.leave(&topic).unwrap();
        eventually("a's file removed", || async {
            look.lookup(topic.discovery_key()).await.unwrap().len() == 1
        })
        .await;
    });
    drop((a, b));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn binding_inside_a_tokio_runtime_works_and_failing_there_does_not_panic() {
    // tokio refuses to block a runtime's thread (and to drop a runtime
    // there): `bind` must neither panic nor hang when the caller is
    // already inside one, whether binding works or fails.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let alice = KeyPair::from_seed([1; 32]);
    let (ok, err) = rt.block_on(async {
        let ok = IrohTransport::bind(&alice, IrohConfig::direct("127.0.0.1:0".parse().unwrap()));
        // An address this machine does not have cannot be bound.
        let err = IrohTransport::bind(&alice, IrohConfig::direct("192.0.2.1:9".parse().unwrap()));
        (ok, err)
    });
    let transport = ok.unwrap();
    assert_eq!(transport.public_key().unwrap(), alice.public_key());
    assert!(err.is_err());
    // Dropping it inside a runtime does not block either.
    rt.block_on(async move { drop(transport) });
}

/// A swarm whose handles are all dropped stops, and its transport with it:
/// the peer sees the connection end at once (the transport closes its
/// QUIC connections), not after the 20 s idle timeout.
#[test]
fn a_peer_that_stops_is_noticed_at_once() {
    let mut pool = LocalPool::new();
    let discovery: MemoryDiscovery<EndpointAddr> = MemoryDiscovery::new();
    let a = spawn_node(&mut pool, &discovery, 1, None);
    let b = spawn_node(&mut pool, &discovery, 2, None);
    let topic = Topic::from_name("ward-7");
    for node in [&a, &b] {
        node.handle.join(&topic, JoinMode::BOTH).unwrap();
    }
    pool.run_until(async {
        eventually("a and b paired", || async { paired(&a, &b) }).await;
    });
    let b_key = b.key();
    drop(b);
    let stopped = Instant::now();
    pool.run_until(async {
        eventually("a notices that b stopped", || async {
            !a.live().contains_key(&b_key)
        })
        .await;
    });
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(5), "noticed only after {took:?}");
    // Nor does anyone find it any more.
    pool.run_until(async {
        let announced = discovery.lookup(topic.discovery_key()).await.unwrap();
        assert_eq!(announced.len(), 1);
        assert_eq!(announced[0].0, a.key());
    });
}
