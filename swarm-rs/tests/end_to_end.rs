//! Two peers meet on a topic: discovery, swarm rules, memory transport,
//! handshake and channels, wired together by hand the way an adapter would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use futures::executor::block_on;
use futures::future::join;
use swarm_rs::{
    Discovery, JoinMode, KeyPair, Listener, MemoryAddr, MemoryDiscovery, MemoryNetwork, MuxConfig,
    MuxEvent, MuxedStream, Role, SecureConfig, SecureStream, SeededEntropy, Swarm, SwarmAction,
    SwarmConfig, SystemClock, Topic, Transport,
};

#[test]
fn two_peers_meet_on_a_topic_and_talk_on_a_channel() {
    let net = MemoryNetwork::new();
    let discovery: MemoryDiscovery<MemoryAddr> = MemoryDiscovery::new();
    let topic = Topic::from_name("patient-42");
    let (server_kp, client_kp) = (KeyPair::from_seed([10; 32]), KeyPair::from_seed([20; 32]));

    let mut server: Swarm<MemoryAddr> = Swarm::new(server_kp.public_key(), SwarmConfig::default());
    let mut client: Swarm<MemoryAddr> = Swarm::new(client_kp.public_key(), SwarmConfig::default());
    server.join(
        &topic,
        JoinMode {
            server: true,
            client: false,
        },
    );
    client.join(
        &topic,
        JoinMode {
            server: false,
            client: true,
        },
    );

    block_on(async {
        let transport = net.transport();
        let mut listener = transport.listen(&MemoryAddr(0)).await.unwrap();
        let server_addr = listener.local_addr().unwrap();

        // Carry out the server's announce, then the client's lookup.
        while let Some(action) = server.poll_action() {
            match action {
                SwarmAction::Announce(key) => discovery
                    .announce(key, server_kp.public_key(), server_addr)
                    .await
                    .unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(discovery.keys(), vec![topic.discovery_key()]);
        let lookups: Vec<_> = std::iter::from_fn(|| client.poll_action()).collect();
        for action in lookups {
            match action {
                SwarmAction::Lookup(key) => {
                    for (peer, addr) in discovery.lookup(key).await.unwrap() {
                        client.handle_peer_found(key, peer, addr);
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let Some(SwarmAction::Dial {
            conn: dial,
            peer,
            addr,
        }) = client.poll_action()
        else {
            panic!("client should dial");
        };
        assert_eq!(peer, server_kp.public_key());

        // Dial and accept, with the handshakes running concurrently.
        let dialing = async {
            let io = transport.connect(&addr).await.unwrap();
            let config = SecureConfig::default().with_expected_remote(peer);
            SecureStream::handshake(
                io,
                Role::Initiator,
                &client_kp,
                config,
                &mut SeededEntropy::from_u64(1),
                Arc::new(SystemClock),
            )
            .await
            .unwrap()
        };
        let accepting = async {
            let (io, _) = listener.accept().await.unwrap();
            SecureStream::handshake(
                io,
                Role::Responder,
                &server_kp,
                SecureConfig::default(),
                &mut SeededEntropy::from_u64(2),
                Arc::new(SystemClock),
            )
            .await
            .unwrap()
        };
        let (c_stream, s_stream) = join(dialing, accepting).await;
        let inbound = server.handle_incoming();
        server.handle_established(inbound, s_stream.remote_public_key().unwrap());
        client.handle_established(dial, c_stream.remote_public_key().unwrap());
        assert!(matches!(
            server.poll_action(),
            Some(SwarmAction::Connection { .. })
        ));
        assert!(matches!(
            client.poll_action(),
            Some(SwarmAction::Connection { .. })
        ));
        assert!(client.is_flushed());

        // Both open the same channel and exchange a message.
        let mut c = MuxedStream::new(c_stream, MuxConfig::default());
        let mut s = MuxedStream::new(s_stream, MuxConfig::default());
        let cc = c.open("records/v1", b"patient-42").unwrap();
        let sc = s.open("records/v1", b"patient-42").unwrap();
        let client_side = async {
            assert!(matches!(
                c.next_event().await.unwrap().unwrap(),
                MuxEvent::Opened { .. }
            ));
            c.send(cc, b"GET allergies").unwrap();
            c.flush().await.unwrap();
            match c.next_event().await.unwrap().unwrap() {
                MuxEvent::Message { data, .. } => data,
                other => panic!("unexpected {other:?}"),
            }
        };
        let server_side = async {
            assert!(matches!(
                s.next_event().await.unwrap().unwrap(),
                MuxEvent::Opened { .. }
            ));
            match s.next_event().await.unwrap().unwrap() {
                MuxEvent::Message { data, .. } => assert_eq!(data, b"GET allergies"),
                other => panic!("unexpected {other:?}"),
            }
            s.send(sc, b"penicillin").unwrap();
            s.flush().await.unwrap();
        };
        let (reply, ()) = join(client_side, server_side).await;
        assert_eq!(reply, b"penicillin");
    });
}
