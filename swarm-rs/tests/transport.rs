//! One conformance suite run against every transport.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::Arc;

use futures::executor::block_on;
use futures::future::join;
use futures::{AsyncReadExt, AsyncWriteExt, SinkExt, StreamExt};
use swarm_rs::{
    KeyPair, Listener, MemoryAddr, MemoryNetwork, Role, SecureConfig, SecureStream, SeededEntropy,
    SystemClock, TcpTransport, Transport,
};

/// Raw bytes both ways, then a secure handshake and frames over a second
/// connection to the same listener.
async fn conformance<T: Transport>(transport: T, listen_on: T::Address) {
    let mut listener = transport.listen(&listen_on).await.unwrap();
    let addr = listener.local_addr().unwrap();

    let (dialed, accepted) = join(transport.connect(&addr), listener.accept()).await;
    let (mut dialed, (mut accepted, _from)) = (dialed.unwrap(), accepted.unwrap());
    dialed.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    accepted.write_all(b"pong").await.unwrap();
    dialed.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    dialed.close().await.unwrap();
    assert_eq!(accepted.read(&mut buf).await.unwrap(), 0, "end of stream");

    let (alice, bob) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
    let dial = async {
        let io = transport.connect(&addr).await.unwrap();
        let config = SecureConfig::default().with_expected_remote(bob.public_key());
        let mut entropy = SeededEntropy::from_u64(1);
        let mut s = SecureStream::handshake(
            io,
            Role::Initiator,
            &alice,
            config,
            &mut entropy,
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        s.send(b"over the transport".to_vec()).await.unwrap();
        s.next().await.unwrap().unwrap()
    };
    let accept = async {
        let (io, _) = listener.accept().await.unwrap();
        let mut entropy = SeededEntropy::from_u64(2);
        let mut s = SecureStream::handshake(
            io,
            Role::Responder,
            &bob,
            SecureConfig::default(),
            &mut entropy,
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        assert_eq!(s.remote_public_key(), Some(alice.public_key()));
        let got = s.next().await.unwrap().unwrap();
        s.send(got.clone()).await.unwrap();
        got
    };
    let (echoed, got) = join(dial, accept).await;
    assert_eq!(got, b"over the transport");
    assert_eq!(echoed, got);

    // Nobody listens once the listener is gone.
    drop(listener);
    match transport.connect(&addr).await {
        Err(err) => assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused),
        Ok(_) => panic!("connected to a closed listener"),
    }
}

#[test]
fn memory_transport_conforms() {
    let net = MemoryNetwork::new();
    block_on(conformance(net.transport(), MemoryAddr(7)));
    // Ephemeral listen address.
    block_on(conformance(net.transport(), MemoryAddr(0)));
}

#[test]
fn tcp_transport_conforms() {
    block_on(conformance(TcpTransport, "127.0.0.1:0".parse().unwrap()));
}

#[test]
fn memory_addresses_are_exclusive_and_freed_on_drop() {
    let net = MemoryNetwork::new();
    let t = net.transport();
    block_on(async {
        let l = t.listen(&MemoryAddr(5)).await.unwrap();
        assert_eq!(
            t.listen(&MemoryAddr(5)).await.unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(l);
        t.listen(&MemoryAddr(5)).await.unwrap();
        // Another network is separate.
        MemoryNetwork::new()
            .transport()
            .listen(&MemoryAddr(5))
            .await
            .unwrap();
    });
}

#[test]
fn partitions_cut_connections_and_refuse_dials_until_healed() {
    use swarm_rs::{MemoryNetwork, StreamError};
    let net = MemoryNetwork::new();
    let (ta, tb) = (net.transport(), net.transport());
    assert_ne!(ta.host(), tb.host());
    let (alice, bob) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
    block_on(async {
        let mut listener = tb.listen(&MemoryAddr(9)).await.unwrap();
        let connect = async {
            let io = ta.connect(&MemoryAddr(9)).await.unwrap();
            SecureStream::handshake(
                io,
                Role::Initiator,
                &alice,
                SecureConfig::default(),
                &mut SeededEntropy::from_u64(1),
                Arc::new(SystemClock),
            )
            .await
            .unwrap()
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
            .unwrap()
        };
        let (mut a, mut b) = join(connect, accept).await;
        a.send(b"before".to_vec()).await.unwrap();
        assert_eq!(b.next().await.unwrap().unwrap(), b"before");

        net.partition(ta.host(), tb.host());
        let err = b.next().await.unwrap().unwrap_err();
        assert!(
            matches!(&err, StreamError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{err:?}"
        );
        assert!(a.send(b"after".to_vec()).await.is_err());
        match ta.connect(&MemoryAddr(9)).await {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::HostUnreachable),
            Ok(_) => panic!("dial crossed a partition"),
        }
        // Other hosts are unaffected; healing restores dials.
        net.transport().connect(&MemoryAddr(9)).await.unwrap();
        net.heal(ta.host(), tb.host());
        ta.connect(&MemoryAddr(9)).await.unwrap();
    });
}
