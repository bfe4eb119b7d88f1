//! The async secure stream over the in-memory pipe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use futures::future::{join, select, Either};
use futures::{AsyncWriteExt, SinkExt, StreamExt};
use swarm_rs::{
    duplex, Clock, KeyPair, PipeStream, Role, SecureConfig, SecureError, SecureStream,
    SeededEntropy, StreamError, SystemClock,
};

fn clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

fn keypair(n: u8) -> KeyPair {
    KeyPair::from_seed([n; 32])
}

async fn open(
    io: PipeStream,
    role: Role,
    kp: &KeyPair,
    config: SecureConfig,
    seed: u64,
) -> Result<SecureStream<PipeStream>, StreamError> {
    SecureStream::handshake(
        io,
        role,
        kp,
        config,
        &mut SeededEntropy::from_u64(seed),
        clock(),
    )
    .await
}

fn pair(capacity: usize) -> (SecureStream<PipeStream>, SecureStream<PipeStream>) {
    let (x, y) = duplex(capacity);
    let (ka, kb) = (keypair(1), keypair(2));
    let (a, b) = block_on(join(
        open(x, Role::Initiator, &ka, SecureConfig::default(), 1),
        open(y, Role::Responder, &kb, SecureConfig::default(), 2),
    ));
    (a.unwrap(), b.unwrap())
}

#[test]
fn handshake_then_frames_both_ways() {
    let (mut a, mut b) = pair(1024);
    assert_eq!(a.remote_public_key(), Some(keypair(2).public_key()));
    assert_eq!(b.remote_public_key(), Some(keypair(1).public_key()));
    assert!(a.handshake_hash().is_some());
    assert_eq!(a.handshake_hash(), b.handshake_hash());
    block_on(async {
        a.send(b"hello".to_vec()).await.unwrap();
        assert_eq!(b.next().await.unwrap().unwrap(), b"hello");
        b.send(b"world".to_vec()).await.unwrap();
        assert_eq!(a.next().await.unwrap().unwrap(), b"world");
    });
}

#[test]
fn many_large_frames_through_a_small_pipe() {
    let (a, b) = pair(4096);
    let frames: Vec<Vec<u8>> = (0..8u32)
        .map(|i| (0..(i * 23_000)).map(|j| (j ^ i) as u8).collect())
        .collect();
    let expected = frames.clone();
    let (mut a_tx, _a_rx) = a.split();
    let sender = async move {
        for f in frames {
            a_tx.send(f).await.unwrap();
        }
        a_tx.close().await.unwrap();
    };
    let receiver = async move {
        let mut b = b;
        let mut got = Vec::new();
        while let Some(frame) = b.next().await {
            got.push(frame.unwrap());
        }
        got
    };
    let ((), got) = block_on(join(sender, receiver));
    assert_eq!(got, expected);
}

#[test]
fn a_silent_peer_hits_the_handshake_timeout() {
    let (x, _silent) = duplex(1024);
    let mut config = SecureConfig::default();
    config.handshake_timeout = Duration::from_millis(100);
    let err = block_on(open(x, Role::Responder, &keypair(2), config, 2)).unwrap_err();
    assert!(
        matches!(err, StreamError::Secure(SecureError::HandshakeTimeout)),
        "{err:?}"
    );
}

#[test]
fn a_peer_hanging_up_mid_handshake_is_an_error() {
    let (x, y) = duplex(1024);
    drop(y);
    let err = block_on(open(
        x,
        Role::Responder,
        &keypair(2),
        SecureConfig::default(),
        2,
    ))
    .unwrap_err();
    assert!(
        matches!(err, StreamError::EndOfStreamInHandshake),
        "{err:?}"
    );
}

#[test]
fn garbage_from_the_peer_is_a_typed_error() {
    let (x, mut y) = duplex(1024);
    let (res, ()) = block_on(join(
        open(x, Role::Responder, &keypair(2), SecureConfig::default(), 2),
        async move {
            y.write_all(&[33, 0]).await.unwrap();
            y.write_all(&[0x42; 33]).await.unwrap();
            // Keep the pipe open until the victim gave up.
            let _ = futures::AsyncReadExt::read(&mut y, &mut [0u8; 8]).await;
        },
    ));
    let err = res.unwrap_err();
    assert!(
        matches!(
            err,
            StreamError::Secure(SecureError::UnsupportedVersion(0x42))
        ),
        "{err:?}"
    );
}

#[test]
fn wrong_expected_key_is_refused() {
    let (x, y) = duplex(1024);
    let expected = keypair(3).public_key();
    let (a, b) = block_on(join(
        open(
            x,
            Role::Initiator,
            &keypair(1),
            SecureConfig::default().with_expected_remote(expected),
            1,
        ),
        async move {
            let mut config = SecureConfig::default();
            config.handshake_timeout = Duration::from_millis(200);
            open(y, Role::Responder, &keypair(2), config, 2).await
        },
    ));
    assert!(matches!(
        a.unwrap_err(),
        StreamError::Secure(SecureError::UnexpectedRemoteKey { expected: e }) if e == expected
    ));
    // The initiator dropped the pipe without revealing itself.
    assert!(b.is_err());
}

#[test]
fn an_unresponsive_established_peer_hits_the_idle_timeout() {
    let (x, y) = duplex(1024);
    let mut config = SecureConfig::default();
    config.keepalive_interval = Some(Duration::from_millis(20));
    config.idle_timeout = Some(Duration::from_millis(150));
    let (a, b) = block_on(join(
        open(x, Role::Initiator, &keypair(1), config.clone(), 1),
        open(y, Role::Responder, &keypair(2), config, 2),
    ));
    let (mut a, mut b) = (a.unwrap(), b.unwrap());

    // While both are polled, keep-alives keep the connection up.
    block_on(async {
        let both = join(a.next(), b.next());
        let timer = async_io_timer(Duration::from_millis(400));
        match select(Box::pin(both), Box::pin(timer)).await {
            Either::Left(((x, y), _)) => panic!("stream ended early: {x:?} {y:?}"),
            Either::Right(((), _)) => {}
        }
    });

    // Now b is never polled again: a gives up.
    let err = block_on(a.next()).unwrap().unwrap_err();
    assert!(
        matches!(err, StreamError::Secure(SecureError::IdleTimeout)),
        "{err:?}"
    );
    assert!(block_on(a.next()).is_none());
    drop(b);
}

async fn async_io_timer(d: Duration) {
    SystemClock.sleep_until(std::time::Instant::now() + d).await;
}

#[test]
fn channels_over_a_secure_stream() {
    use swarm_rs::{MuxConfig, MuxEvent, MuxedStream};
    let (a, b) = pair(512);
    let mut a = MuxedStream::new(a, MuxConfig::default());
    let mut b = MuxedStream::new(b, MuxConfig::default());
    assert_eq!(a.remote_public_key(), Some(keypair(2).public_key()));

    let alice = async move {
        let ch = a.open("echo", b"1").unwrap();
        // Wait for the pairing, then talk.
        match a.next_event().await.unwrap().unwrap() {
            MuxEvent::Opened { channel, .. } => assert_eq!(channel, ch),
            other => panic!("unexpected {other:?}"),
        }
        a.send(ch, b"ping").unwrap();
        let reply = match a.next_event().await.unwrap().unwrap() {
            MuxEvent::Message { channel, data } if channel == ch => data,
            other => panic!("unexpected {other:?}"),
        };
        a.close(ch).unwrap();
        a.shutdown().await.unwrap();
        // Half-closed: read until the peer hangs up too.
        while let Some(event) = a.next_event().await {
            event.unwrap();
        }
        reply
    };
    let bob = async move {
        let mut log = Vec::new();
        while let Some(event) = b.next_event().await {
            match event.unwrap() {
                MuxEvent::RemoteOpen { protocol, id } => {
                    b.open(&protocol, &id).unwrap();
                }
                MuxEvent::Opened { .. } => log.push("opened".to_string()),
                MuxEvent::Message { channel, data } => {
                    let mut echo = b"echo:".to_vec();
                    echo.extend_from_slice(&data);
                    b.send(channel, &echo).unwrap();
                }
                MuxEvent::Closed { .. } => log.push("closed".to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
        log
    };
    let (reply, log) = block_on(join(alice, bob));
    assert_eq!(reply, b"echo:ping");
    assert_eq!(log, vec!["opened", "closed"]);
}

#[test]
fn both_peers_sending_more_than_the_pipe_holds_do_not_deadlock() {
    use swarm_rs::{MuxConfig, MuxEvent, MuxedStream};
    let (a, b) = pair(4096);
    let run = |mut m: MuxedStream<PipeStream>| async move {
        let ch = m.open("bulk", b"").unwrap();
        let mut received = 0usize;
        let mut sent = false;
        while received < 10 {
            match m.next_event().await.unwrap().unwrap() {
                MuxEvent::Opened { channel, .. } => {
                    assert_eq!(channel, ch);
                    for i in 0..10u8 {
                        m.send(ch, &vec![i; 64 * 1024]).unwrap();
                    }
                    sent = true;
                }
                MuxEvent::Message { data, .. } => {
                    assert_eq!(data.len(), 64 * 1024);
                    assert!(data.iter().all(|b| usize::from(*b) == received));
                    received += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(sent);
        m.flush().await.unwrap();
        received
    };
    let (ra, rb) = block_on(join(
        run(MuxedStream::new(a, MuxConfig::default())),
        run(MuxedStream::new(b, MuxConfig::default())),
    ));
    assert_eq!((ra, rb), (10, 10));
}
