//! The iroh adapter on loopback with direct addresses only (no relay, no
//! address lookup, no DNS): two endpoints reach each other by ed25519
//! public key through the [`Transport`] trait.
#![cfg(feature = "iroh")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use futures::future::{join, select, Either};
use futures::{AsyncReadExt, AsyncWriteExt, SinkExt, StreamExt};
use swarm_rs::iroh_transport::{
    endpoint_id_of, public_key_of, EndpointAddr, IrohConfig, IrohTransport, TransportAddr,
};
use swarm_rs::{
    KeyPair, Listener, Role, SecureConfig, SecureStream, SeededEntropy, SystemClock, Transport,
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
