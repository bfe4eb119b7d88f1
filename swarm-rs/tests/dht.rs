//! DHT discovery against a local mainline test network on loopback: two
//! `DhtDiscovery` clients announce, look up and withdraw under a topic, and
//! two swarms meet through it and connect over TCP.
#![cfg(feature = "dht")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::executor::{block_on, LocalPool};
use futures::task::LocalSpawnExt;
use futures::{SinkExt, StreamExt};
use mainline::Testnet;
use swarm_rs::{
    DhtConfig, DhtDiscovery, Discovery, JoinMode, KeyPair, SwarmBuilder, TcpTransport, Topic,
};

fn client(testnet: &Testnet) -> DhtDiscovery {
    let d = DhtDiscovery::start(
        DhtConfig::default()
            .with_bootstrap(testnet.bootstrap.clone())
            .with_bind_address(Ipv4Addr::LOCALHOST),
    )
    .unwrap();
    assert!(block_on(d.bootstrapped()), "joined the test network");
    d
}

#[test]
fn announce_lookup_and_unannounce_on_a_local_testnet() {
    let testnet = Testnet::builder(6).build().unwrap();
    let (a, b) = (client(&testnet), client(&testnet));
    let key = Topic::from_name("dht-test").discovery_key();
    let (pa, pb) = (
        KeyPair::from_seed([1; 32]).public_key(),
        KeyPair::from_seed([2; 32]).public_key(),
    );
    let (addr_a, addr_b): (SocketAddr, SocketAddr) = (
        "127.0.0.1:4001".parse().unwrap(),
        "127.0.0.1:4002".parse().unwrap(),
    );
    block_on(async {
        assert!(b.lookup(key).await.unwrap().is_empty());
        a.announce(key, pa, addr_a).await.unwrap();
        assert_eq!(b.lookup(key).await.unwrap(), vec![(pa, addr_a)]);
        b.announce(key, pb, addr_b).await.unwrap();
        let mut both = vec![(pa, addr_a), (pb, addr_b)];
        both.sort();
        assert_eq!(a.lookup(key).await.unwrap(), both);
        // Announcing again changes nothing; a new address replaces the old.
        a.announce(key, pa, addr_a).await.unwrap();
        assert_eq!(a.lookup(key).await.unwrap().len(), 2);
        a.unannounce(key, pa).await.unwrap();
        assert_eq!(b.lookup(key).await.unwrap(), vec![(pb, addr_b)]);
        // Another topic is empty.
        let other = Topic::from_name("other").discovery_key();
        assert!(a.lookup(other).await.unwrap().is_empty());
    });
}

#[test]
fn two_swarms_meet_over_the_dht_and_tcp() {
    let testnet = Testnet::builder(6).build().unwrap();
    let mut pool = LocalPool::new();
    let topic = Topic::from_name("dht-swarm-test");
    let server = JoinMode {
        server: true,
        client: false,
    };
    let client_mode = JoinMode {
        server: false,
        client: true,
    };
    let mut peers = Vec::new();
    for (seed, mode) in [(1u8, server), (2, client_mode)] {
        let discovery = client(&testnet);
        let builder = SwarmBuilder::new(KeyPair::from_seed([seed; 32]));
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bind = builder.bind(TcpTransport, discovery, &addr);
        let (handle, connections, driver) = pool.run_until(bind).unwrap();
        pool.spawner().spawn_local(driver).unwrap();
        handle.join(&topic, mode).unwrap();
        peers.push((handle, connections));
    }
    let (mut a, mut b) = pool.run_until(async {
        let deadline = async_io::Timer::after(Duration::from_secs(40));
        let meet = async {
            let a = peers[0].1.next().await.expect("a connection");
            let b = peers[1].1.next().await.expect("a connection");
            (a, b)
        };
        match futures::future::select(Box::pin(meet), deadline).await {
            futures::future::Either::Left((pair, _)) => pair,
            futures::future::Either::Right(_) => panic!("the swarms did not meet within 40 s"),
        }
    });
    assert_eq!(a.remote_public_key(), peers[1].0.public_key());
    pool.run_until(async {
        a.send(b"over the dht".to_vec()).await.unwrap();
        assert_eq!(b.next().await.unwrap().unwrap(), b"over the dht".to_vec());
    });
}
