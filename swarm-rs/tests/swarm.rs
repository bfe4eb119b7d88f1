//! The sans-IO swarm rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use swarm_rs::{
    CloseReason, ConnectionId, Direction, JoinMode, KeyPair, PublicKey, Swarm, SwarmAction,
    SwarmConfig, Topic,
};

fn key(n: u8) -> PublicKey {
    KeyPair::from_seed([n; 32]).public_key()
}

fn actions(s: &mut Swarm<u32>) -> Vec<SwarmAction<u32>> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn client(local: u8, config: SwarmConfig) -> (Swarm<u32>, Topic) {
    let mut s = Swarm::new(key(local), config);
    let topic = Topic::from_name("records");
    s.join(
        &topic,
        JoinMode {
            server: false,
            client: true,
        },
    );
    assert_eq!(
        actions(&mut s),
        vec![SwarmAction::Lookup(topic.discovery_key())]
    );
    (s, topic)
}

fn dial_of(acts: &[SwarmAction<u32>]) -> (ConnectionId, PublicKey, u32) {
    match acts {
        [SwarmAction::Dial { conn, peer, addr }] => (*conn, *peer, *addr),
        other => panic!("expected one dial, got {other:?}"),
    }
}

#[test]
fn join_announces_only_the_hash_and_leave_withdraws() {
    let mut s: Swarm<u32> = Swarm::new(key(1), SwarmConfig::default());
    let topic = Topic::from_name("records");
    let dk = topic.discovery_key();
    assert_ne!(dk.0, topic.0);
    assert_eq!(dk, Topic::from_name("records").discovery_key());
    s.join(&topic, JoinMode::BOTH);
    assert_eq!(
        actions(&mut s),
        vec![SwarmAction::Announce(dk), SwarmAction::Lookup(dk)]
    );
    s.refresh();
    assert_eq!(actions(&mut s), vec![SwarmAction::Lookup(dk)]);
    s.leave(&topic);
    assert_eq!(actions(&mut s), vec![SwarmAction::Unannounce(dk)]);
    // Peers of a topic we left are ignored.
    s.handle_peer_found(dk, key(2), 7);
    assert!(actions(&mut s).is_empty());
}

#[test]
fn found_peers_are_dialed_and_handed_out_once() {
    let (mut s, topic) = client(1, SwarmConfig::default());
    let dk = topic.discovery_key();
    s.handle_peer_found(dk, key(2), 22);
    let (conn, peer, addr) = dial_of(&actions(&mut s));
    assert_eq!((peer, addr), (key(2), 22));
    assert!(!s.is_flushed());
    // Found again while dialing: no second dial. Ourselves: ignored.
    s.handle_peer_found(dk, key(2), 22);
    s.handle_peer_found(dk, key(1), 11);
    assert!(actions(&mut s).is_empty());
    s.handle_established(conn, key(2));
    assert_eq!(
        actions(&mut s),
        vec![SwarmAction::Connection {
            conn,
            peer: key(2),
            direction: Direction::Outbound
        }]
    );
    assert!(s.is_flushed());
    assert_eq!(s.connection(&key(2)), Some(conn));
}

#[test]
fn failed_dials_back_off_exponentially_then_give_up() {
    let start = Instant::now();
    let mut config = SwarmConfig::default();
    config.max_attempts = 3;
    let (mut s, topic) = client(1, config);
    s.handle_peer_found(topic.discovery_key(), key(2), 22);
    let mut now = start;
    let mut delays = Vec::new();
    loop {
        let acts = actions(&mut s);
        if acts.is_empty() {
            break;
        }
        let (conn, _, _) = dial_of(&acts);
        s.handle_dial_failed(conn, now);
        let Some(next) = s.poll_timeout() else {
            break;
        };
        delays.push(next - now);
        now = next;
        s.handle_timeout(now);
    }
    assert_eq!(
        delays,
        vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4)
        ]
    );
    assert_eq!(s.poll_timeout(), None, "gave up");
}

#[test]
fn dropped_connections_are_redialed() {
    let now = Instant::now();
    let (mut s, topic) = client(1, SwarmConfig::default());
    s.handle_peer_found(topic.discovery_key(), key(2), 22);
    let (conn, _, _) = dial_of(&actions(&mut s));
    s.handle_established(conn, key(2));
    actions(&mut s);
    s.handle_closed(conn, now);
    assert_eq!(s.connection(&key(2)), None);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(1)));
    s.handle_timeout(now + Duration::from_secs(1));
    let (conn2, peer, _) = dial_of(&actions(&mut s));
    assert_eq!(peer, key(2));
    assert_ne!(conn2, conn);
}

#[test]
fn the_firewall_sees_the_key_before_hand_out() {
    let mut s: Swarm<u32> = Swarm::new(key(1), SwarmConfig::default());
    let denied = key(3);
    s.set_firewall(Box::new(move |remote| *remote != denied));
    let c = s.handle_incoming();
    s.handle_established(c, key(3));
    assert_eq!(
        actions(&mut s),
        vec![SwarmAction::Close {
            conn: c,
            reason: CloseReason::Firewalled
        }]
    );
    let c = s.handle_incoming();
    s.handle_established(c, key(2));
    assert!(matches!(
        actions(&mut s).as_slice(),
        [SwarmAction::Connection { .. }]
    ));
}

#[test]
fn bans_close_and_refuse() {
    let (mut s, topic) = client(1, SwarmConfig::default());
    let c = s.handle_incoming();
    s.handle_established(c, key(2));
    actions(&mut s);
    s.ban(key(2));
    assert_eq!(
        actions(&mut s),
        vec![SwarmAction::Close {
            conn: c,
            reason: CloseReason::Banned
        }]
    );
    s.handle_peer_found(topic.discovery_key(), key(2), 22);
    assert!(actions(&mut s).is_empty(), "banned peers are not dialed");
    let c = s.handle_incoming();
    s.handle_established(c, key(2));
    assert_eq!(
        actions(&mut s),
        vec![SwarmAction::Close {
            conn: c,
            reason: CloseReason::Banned
        }]
    );
    s.unban(&key(2));
    s.handle_peer_found(topic.discovery_key(), key(2), 22);
    dial_of(&actions(&mut s));
}

#[test]
fn max_peers_queues_dials_and_refuses_inbound() {
    let mut config = SwarmConfig::default();
    config.max_peers = 1;
    let (mut s, topic) = client(1, config);
    let dk = topic.discovery_key();
    s.handle_peer_found(dk, key(2), 22);
    s.handle_peer_found(dk, key(3), 33);
    let (c2, _, _) = dial_of(&actions(&mut s));
    s.handle_established(c2, key(2));
    actions(&mut s);
    let inbound = s.handle_incoming();
    s.handle_established(inbound, key(4));
    assert_eq!(
        actions(&mut s),
        vec![SwarmAction::Close {
            conn: inbound,
            reason: CloseReason::MaxPeers
        }]
    );
    // A slot frees: the queued peer is dialed.
    s.ban(key(2));
    let acts = actions(&mut s);
    assert!(matches!(
        acts[0],
        SwarmAction::Close {
            reason: CloseReason::Banned,
            ..
        }
    ));
    let (_, peer, addr) = dial_of(&acts[1..]);
    assert_eq!((peer, addr), (key(3), 33));
    // The report of the close the swarm asked for is ignored.
    s.handle_closed(c2, Instant::now());
    assert!(actions(&mut s).is_empty());
}

#[test]
fn reaching_ourselves_or_the_wrong_peer_is_closed() {
    let (mut s, topic) = client(1, SwarmConfig::default());
    let c = s.handle_incoming();
    s.handle_established(c, key(1));
    assert!(matches!(
        actions(&mut s).as_slice(),
        [SwarmAction::Close {
            reason: CloseReason::SelfConnection,
            ..
        }]
    ));
    s.handle_peer_found(topic.discovery_key(), key(2), 22);
    let (c, _, _) = dial_of(&actions(&mut s));
    s.handle_established(c, key(5));
    assert!(matches!(
        actions(&mut s).as_slice(),
        [SwarmAction::Close {
            reason: CloseReason::UnexpectedPeer,
            ..
        }]
    ));
}

/// Both peers find each other and dial at once. Whatever order the four
/// handshakes complete in, both keep the same physical connection: the one
/// dialed by the smaller key.
fn double_dial(order: &[usize], ka: u8, kb: u8) {
    let (mut a, topic) = client(ka, SwarmConfig::default());
    let (mut b, _) = client(kb, SwarmConfig::default());
    let dk = topic.discovery_key();
    a.handle_peer_found(dk, key(kb), 2);
    b.handle_peer_found(dk, key(ka), 1);
    let (a_out, _, _) = dial_of(&actions(&mut a));
    let (b_out, _, _) = dial_of(&actions(&mut b));
    let a_in = a.handle_incoming(); // physical connection 2 (b dialed)
    let b_in = b.handle_incoming(); // physical connection 1 (a dialed)
                                    // (swarm, connection id, physical connection)
    let steps = [(0, a_out, 1), (0, a_in, 2), (1, b_in, 1), (1, b_out, 2)];
    let mut closed_phys = [Vec::new(), Vec::new()];
    for &i in order {
        let (side, conn, _) = steps[i];
        let (s, remote) = if side == 0 {
            (&mut a, key(kb))
        } else {
            (&mut b, key(ka))
        };
        s.handle_established(conn, remote);
        for act in actions(s) {
            if let SwarmAction::Close { conn, reason } = act {
                assert_eq!(reason, CloseReason::Duplicate);
                let phys = steps
                    .iter()
                    .find(|(sd, c, _)| *sd == side && *c == conn)
                    .unwrap()
                    .2;
                closed_phys[side].push(phys);
            }
        }
    }
    let kept_a = a.connection(&key(kb)).unwrap();
    let kept_b = b.connection(&key(ka)).unwrap();
    let phys = |side: usize, c: ConnectionId| {
        steps
            .iter()
            .find(|(sd, cc, _)| *sd == side && *cc == c)
            .unwrap()
            .2
    };
    assert_eq!(
        phys(0, kept_a),
        phys(1, kept_b),
        "both keep the same connection"
    );
    let winner = if key(ka) < key(kb) { 1 } else { 2 };
    assert_eq!(phys(0, kept_a), winner, "dialed by the smaller key");
    assert_eq!(closed_phys[0], vec![3 - winner]);
    assert_eq!(closed_phys[1], vec![3 - winner]);
}

proptest! {
    #[test]
    fn simultaneous_dials_converge(order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(), ka in 1u8..50, kb in 50u8..100) {
        double_dial(&order, ka, kb);
        double_dial(&order, kb, ka);
    }
}
