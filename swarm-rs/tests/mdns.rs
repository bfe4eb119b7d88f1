//! mDNS discovery over real sockets: two `MdnsDiscovery` instances on one
//! host find each other through multicast loop-back, then two swarms meet
//! through it and connect over TCP. Runs on a private port (not 5353), so
//! it neither disturbs nor hears the LAN's real mDNS traffic.
//!
//! Skipped (with the reason printed) only when the OS offers no IPv4
//! multicast: joining the group fails, or a probe sent to the group does not
//! come back.
#![cfg(feature = "mdns")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::{block_on, LocalPool};
use futures::task::LocalSpawnExt;
use futures::{SinkExt, StreamExt};
use swarm_rs::mdns::MDNS_GROUP;
use swarm_rs::{
    Discovery, JoinMode, KeyPair, MdnsConfig, MdnsDiscovery, SwarmBuilder, SystemClock,
    TcpTransport, Topic,
};

/// A UDP port free right now.
fn free_port() -> u16 {
    UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Why this host cannot do IPv4 multicast, if it cannot.
fn no_multicast(port: u16) -> Option<String> {
    let socket = match UdpSocket::bind(("0.0.0.0", port)) {
        Ok(s) => s,
        Err(e) => return Some(format!("cannot bind a UDP socket: {e}")),
    };
    if let Err(e) = socket.join_multicast_v4(&MDNS_GROUP, &Ipv4Addr::UNSPECIFIED) {
        return Some(format!("cannot join {MDNS_GROUP}: {e}"));
    }
    let _ = socket.set_multicast_loop_v4(true);
    let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
    if let Err(e) = socket.send_to(b"swarm-rs multicast probe", (MDNS_GROUP, port)) {
        return Some(format!("cannot send to {MDNS_GROUP}: {e}"));
    }
    let mut buf = [0u8; 64];
    match socket.recv_from(&mut buf) {
        Ok((n, _)) if &buf[..n] == b"swarm-rs multicast probe" => None,
        Ok(_) => Some("the multicast probe came back altered".into()),
        Err(e) => Some(format!("the multicast probe did not come back: {e}")),
    }
}

fn config(port: u16) -> MdnsConfig {
    MdnsConfig::default()
        .with_port(port)
        .with_query_wait(Duration::from_millis(500))
}

macro_rules! require_multicast {
    ($port:expr) => {
        if let Some(reason) = no_multicast($port) {
            eprintln!("SKIPPED: this host has no usable IPv4 multicast: {reason}");
            return;
        }
    };
}

#[test]
fn two_instances_find_each_other_and_goodbyes_withdraw() {
    let port = free_port();
    require_multicast!(port);
    let clock = Arc::new(SystemClock);
    let a = MdnsDiscovery::bind(config(port), clock.clone()).unwrap();
    let b = MdnsDiscovery::bind(config(port), clock).unwrap();
    let key = Topic::from_name("mdns-test").discovery_key();
    let (pa, pb) = (
        KeyPair::from_seed([1; 32]).public_key(),
        KeyPair::from_seed([2; 32]).public_key(),
    );
    let addr_a: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    block_on(async {
        a.announce(key, pa, addr_a).await.unwrap();
        // b asks; a's responder thread answers.
        let found = b.lookup(key).await.unwrap();
        assert_eq!(found, vec![(pa, addr_a)]);
        // Nothing under another key.
        let other = Topic::from_name("elsewhere").discovery_key();
        assert!(b.lookup(other).await.unwrap().is_empty());
        // b announces too: a finds both (its own through loop-back).
        b.announce(key, pb, "127.0.0.1:4002".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(a.lookup(key).await.unwrap().len(), 2);
        a.unannounce(key, pa).await.unwrap();
        let left = b.lookup(key).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, pb);
    });
    // Dropping b says goodbye for its announcements.
    drop(b);
    // (The goodbye reaches a's thread asynchronously: allow for a loaded host.)
    let gone = (0..10).any(|_| block_on(a.lookup(key)).unwrap().is_empty());
    assert!(gone, "b's goodbye was not heard");
}

#[test]
fn two_swarms_meet_over_mdns_and_tcp() {
    let port = free_port();
    require_multicast!(port);
    let mut pool = LocalPool::new();
    let topic = Topic::from_name("mdns-swarm-test");
    let server = JoinMode {
        server: true,
        client: false,
    };
    let client = JoinMode {
        server: false,
        client: true,
    };
    let mut peers = Vec::new();
    for (seed, mode) in [(1u8, server), (2, client)] {
        let discovery = MdnsDiscovery::bind(config(port), Arc::new(SystemClock)).unwrap();
        let builder = SwarmBuilder::new(KeyPair::from_seed([seed; 32]));
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bind = builder.bind(TcpTransport, discovery, &addr);
        let (handle, connections, driver) = pool.run_until(bind).unwrap();
        pool.spawner().spawn_local(driver).unwrap();
        handle.join(&topic, mode).unwrap();
        peers.push((handle, connections));
    }
    let (mut a, mut b) = pool.run_until(async {
        let deadline = async_io::Timer::after(Duration::from_secs(20));
        let meet = async {
            let a = peers[0].1.next().await.expect("a connection");
            let b = peers[1].1.next().await.expect("a connection");
            (a, b)
        };
        match futures::future::select(Box::pin(meet), deadline).await {
            futures::future::Either::Left((pair, _)) => pair,
            futures::future::Either::Right(_) => panic!("the swarms did not meet within 20 s"),
        }
    });
    assert_eq!(a.remote_public_key(), peers[1].0.public_key());
    assert_eq!(b.remote_public_key(), peers[0].0.public_key());
    pool.run_until(async {
        a.send(b"over mdns".to_vec()).await.unwrap();
        assert_eq!(b.next().await.unwrap().unwrap(), b"over mdns".to_vec());
    });
}
