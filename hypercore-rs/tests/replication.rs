//! Replication between peers over in-memory duplexes: eager and live sync,
//! sparse gets, update, downloads, forks, blind mirrors, corestores, several
//! peers, and hostile peers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::block_on;
use futures::future::{select, Either};
use futures::{FutureExt, SinkExt, StreamExt};
use hypercore_rs::replication::{
    duplex, wire, ConnEvent, Connection, DuplexEnd, ProtocolError, ReplicateOptions,
    ReplicationError,
};
use hypercore_rs::{Core, Corestore, Error, GetOptions, KeyPair, MemoryStorage, SeededEntropy};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn opts(initiator: bool) -> ReplicateOptions {
    let mut o = ReplicateOptions::new(initiator);
    o.entropy = Arc::new(SeededEntropy::new(u64::from(initiator)));
    o
}

async fn writer(n: u64, seed: u8) -> Core {
    let core = Core::builder(Arc::new(MemoryStorage::new()))
        .key_pair(KeyPair::from_seed([seed; 32]))
        .open()
        .await
        .unwrap();
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| format!("block {i}").into_bytes()).collect();
    if n > 0 {
        core.append_batch(&blocks).await.unwrap();
    }
    core
}

async fn reader(of: &Core) -> Core {
    Core::builder(Arc::new(MemoryStorage::new()))
        .key(of.key())
        .open()
        .await
        .unwrap()
}

/// Runs `test` while the given replication sessions run; returns the test's output.
async fn with_sessions<T>(
    sessions: Vec<futures::future::BoxFuture<'static, Result<(), ReplicationError>>>,
    test: impl Future<Output = T>,
) -> T {
    // Sessions are polled first so they are connecting before the test runs.
    let all = futures::future::join_all(sessions);
    futures::pin_mut!(test);
    match select(all, test).await {
        Either::Right((t, _)) => t,
        Either::Left((r, _)) => panic!("replication ended before the test: {r:?}"),
    }
}

fn connect(
    a: &Core,
    b: &Core,
) -> Vec<futures::future::BoxFuture<'static, Result<(), ReplicationError>>> {
    let (x, y) = duplex();
    let (a, b) = (a.clone(), b.clone());
    vec![
        async move { a.replicate(x, opts(true)).await }.boxed(),
        async move { b.replicate(y, opts(false)).await }.boxed(),
    ]
}

#[test]
fn eager_download_then_live_appends() {
    block_on(async {
        let w = writer(1000, 1).await;
        let r = reader(&w).await;
        let sessions = connect(&w, &r);
        with_sessions(sessions, async {
            let live = r.download_live();
            r.download(0, 1000).done().await.unwrap();
            assert_eq!(r.length(), 1000);
            for i in (0..1000).step_by(111) {
                assert_eq!(r.get(i).await.unwrap(), w.get(i).await.unwrap());
            }
            // New appends reach the reader promptly while the live download runs.
            w.append(b"fresh").await.unwrap();
            let got = r
                .get_with(1000, GetOptions::wait_for(Duration::from_secs(10)))
                .await
                .unwrap();
            assert_eq!(got.as_deref(), Some(&b"fresh"[..]));
            assert_eq!(r.contiguous_length(), 1001);
            drop(live);
        })
        .await;
    });
}

/// A writer that keeps appending while a live reader catches up: the reader
/// asks for its last block (a one-leaf root of its tree) without an upgrade,
/// and the writer's answer must not walk up to a root of its longer tree
/// (regression: "path continues past a root" ended the session).
#[test]
fn live_reader_keeps_up_with_interleaved_appends() {
    block_on(async {
        let sa = Corestore::open(Arc::new(MemoryStorage::new()))
            .await
            .unwrap();
        let sb = Corestore::open(Arc::new(MemoryStorage::new()))
            .await
            .unwrap();
        let w = sa.get("w").await.unwrap();
        let (x, y) = duplex();
        let (a2, b2) = (sa.clone(), sb.clone());
        let sessions = vec![
            async move { a2.replicate(x, opts(true)).await }.boxed(),
            async move { b2.replicate(y, opts(false)).await }.boxed(),
        ];
        with_sessions(sessions, async {
            let r = sb.get_by_key(w.key()).await.unwrap();
            let _live = r.download_live();
            for i in 0..300u32 {
                w.append(&i.to_le_bytes()).await.unwrap();
                yield_now().await;
            }
            for _ in 0..100_000 {
                if r.contiguous_length() == 300 {
                    break;
                }
                yield_now().await;
            }
            assert_eq!(r.contiguous_length(), 300);
            assert_eq!(
                r.get(299).await.unwrap(),
                Some(299u32.to_le_bytes().to_vec())
            );
        })
        .await;
    });
}

#[test]
fn sparse_get_fetches_only_what_it_needs() {
    block_on(async {
        let w = writer(100_000, 2).await;
        let r = reader(&w).await;
        let sessions = connect(&w, &r);
        with_sessions(sessions, async {
            assert!(r.update().await.unwrap());
            assert_eq!(r.length(), 100_000);
            for i in [5u64, 77_777, 99_999] {
                let got = r
                    .get_with(i, GetOptions::wait_for(Duration::from_secs(10)))
                    .await
                    .unwrap();
                assert_eq!(got, w.get(i).await.unwrap());
            }
            let mut held = 0;
            for i in (0..100_000).step_by(1) {
                if r.get(i).await.unwrap().is_some() {
                    held += 1;
                }
            }
            assert_eq!(
                held, 3,
                "a sparse reader holds exactly the blocks it asked for"
            );
        })
        .await;
    });
}

#[test]
fn get_fails_fast_offline_and_times_out() {
    block_on(async {
        let w = writer(3, 3).await;
        let r = reader(&w).await;
        assert!(matches!(
            r.get_with(0, GetOptions::wait_for(Duration::from_millis(50)))
                .await,
            Err(Error::Offline)
        ));
        assert!(!r.update().await.unwrap());
        // Connected to a peer that does not have block 5 yet: times out.
        let sessions = connect(&w, &r);
        with_sessions(sessions, async {
            r.update().await.unwrap();
            let res = r
                .get_with(5, GetOptions::wait_for(Duration::from_millis(100)))
                .await;
            assert!(matches!(res, Err(Error::Timeout)), "{res:?}");
            assert_eq!(r.get(2).await.unwrap(), None);
        })
        .await;
    });
}

#[test]
fn readers_follow_forks() {
    block_on(async {
        let w = writer(50, 4).await;
        let r = reader(&w).await;
        let sessions = connect(&w, &r);
        with_sessions(sessions, async {
            let _live = r.download_live();
            r.download(0, 50).done().await.unwrap();
            w.truncate(30).await.unwrap();
            w.append_batch([b"x", b"y"]).await.unwrap();
            // Until it hears of the fork, the reader still serves its old data.
            assert!(r.update().await.unwrap());
            assert_eq!(r.fork(), 1);
            let got = r
                .get_with(31, GetOptions::wait_for(Duration::from_secs(10)))
                .await
                .unwrap();
            assert_eq!(got.as_deref(), Some(&b"y"[..]));
            assert_eq!((r.fork(), r.length()), (1, 32));
            assert_eq!(r.tree_hash(), w.tree_hash());
            assert_eq!(r.get(29).await.unwrap(), w.get(29).await.unwrap());
        })
        .await;
    });
}

#[test]
fn blind_mirror_serves_a_reader_with_the_key() {
    block_on(async {
        let key = [9u8; 32];
        let w = Core::builder(Arc::new(MemoryStorage::new()))
            .encryption_key(key)
            .open()
            .await
            .unwrap();
        for i in 0..20u8 {
            w.append(&[i; 10]).await.unwrap();
        }
        let mirror = reader(&w).await;
        let mut sessions = connect(&w, &mirror);
        let r = Core::builder(Arc::new(MemoryStorage::new()))
            .key(w.key())
            .encryption_key(key)
            .open()
            .await
            .unwrap();
        sessions.extend(connect(&mirror, &r));
        with_sessions(sessions, async {
            let _m = mirror.download_live();
            mirror.download(0, 20).done().await.unwrap();
            assert_ne!(
                mirror.get(3).await.unwrap(),
                Some(vec![3; 10]),
                "the mirror cannot read"
            );
            r.download(0, 20).done().await.unwrap();
            assert_eq!(r.get(3).await.unwrap(), Some(vec![3; 10]));
        })
        .await;
    });
}

#[test]
fn corestores_replicate_what_both_know() {
    block_on(async {
        let a = Corestore::with_seed(Arc::new(MemoryStorage::new()), [1; 32]);
        let b = Corestore::with_seed(Arc::new(MemoryStorage::new()), [2; 32]);
        let x = a.get("x").await.unwrap();
        let y = a.get("y").await.unwrap();
        let secret = a.get("secret").await.unwrap();
        for c in [&x, &y, &secret] {
            c.append_batch([b"one", b"two"]).await.unwrap();
        }
        let bx = b.get_by_key(x.key()).await.unwrap();
        let (s1, s2) = duplex();
        let (a2, b2) = (a.clone(), b.clone());
        let sessions = vec![
            async move { a2.replicate(s1, opts(true)).await }.boxed(),
            async move { b2.replicate(s2, opts(false)).await }.boxed(),
        ];
        with_sessions(sessions, async {
            bx.download(0, 2).done().await.unwrap();
            // A core opened after replication started is picked up too.
            let by = b.get_by_key(y.key()).await.unwrap();
            by.download(0, 2).done().await.unwrap();
            assert_eq!(by.get(1).await.unwrap().as_deref(), Some(&b"two"[..]));
            // B never learns `secret`: it does not know its key.
            assert_eq!(b.list().await.unwrap().len(), 2);
        })
        .await;
    });
}

/// Counts the Data frames that cross a duplex end.
fn counting(
    end: DuplexEnd,
    counter: Arc<AtomicU64>,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>>
       + futures::Sink<Vec<u8>, Error = std::io::Error>
       + Send
       + 'static {
    let (sink, stream) = end.split();
    let stream = stream.inspect(move |f| {
        if let Ok(f) = f {
            if let Ok(wire::Message::Data { proof, .. }) = wire::decode(f) {
                if proof.block.is_some() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    Both { sink, stream }
}

struct Both<S, T> {
    sink: S,
    stream: T,
}

impl<S: futures::Sink<Vec<u8>, Error = std::io::Error> + Unpin, T: Unpin> futures::Sink<Vec<u8>>
    for Both<S, T>
{
    type Error = std::io::Error;
    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::pin::Pin::new(&mut self.sink).poll_ready(cx)
    }
    fn start_send(mut self: std::pin::Pin<&mut Self>, item: Vec<u8>) -> Result<(), Self::Error> {
        std::pin::Pin::new(&mut self.sink).start_send(item)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::pin::Pin::new(&mut self.sink).poll_flush(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::pin::Pin::new(&mut self.sink).poll_close(cx)
    }
}

impl<S: Unpin, T: futures::Stream + Unpin> futures::Stream for Both<S, T> {
    type Item = T::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T::Item>> {
        std::pin::Pin::new(&mut self.stream).poll_next(cx)
    }
}

#[test]
fn downloads_spread_across_peers_without_duplicates() {
    block_on(async {
        let w = writer(2000, 5).await;
        let m1 = reader(&w).await;
        let m2 = reader(&w).await;
        // Two full mirrors first.
        let mut sessions = connect(&w, &m1);
        sessions.extend(connect(&w, &m2));
        with_sessions(sessions, async {
            m1.download(0, 2000).done().await.unwrap();
            m2.download(0, 2000).done().await.unwrap();
        })
        .await;
        let r = reader(&w).await;
        let (c1, c2) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut sessions = Vec::new();
        for (m, c) in [(&m1, c1.clone()), (&m2, c2.clone())] {
            let (x, y) = duplex();
            let (m, r) = (m.clone(), r.clone());
            sessions.push(async move { m.replicate(x, opts(true)).await }.boxed());
            sessions.push(async move { r.replicate(counting(y, c), opts(false)).await }.boxed());
        }
        with_sessions(sessions, async {
            r.download(0, 2000).done().await.unwrap();
        })
        .await;
        let (n1, n2) = (c1.load(Ordering::Relaxed), c2.load(Ordering::Relaxed));
        assert_eq!(n1 + n2, 2000, "no block was downloaded twice ({n1} + {n2})");
        assert!(
            n1 > 200 && n2 > 200,
            "both peers served a share ({n1}, {n2})"
        );
    });
}

// ---- hostile peers ---------------------------------------------------------------------

/// A hand-driven peer: speaks the protocol with `Connection`, answers requests
/// from `source` after passing each proof through `tamper`.
async fn evil_peer(
    end: DuplexEnd,
    source: Core,
    tamper: impl Fn(&mut hypercore_rs::Proof),
) -> Result<(), ProtocolError> {
    let (mut tx, mut rx) = end.split();
    let mut conn = Connection::new(true, None, [66; 32]);
    conn.open(source.discovery_key(), source.key()).unwrap();
    loop {
        while let Some(m) = conn.poll_send() {
            if tx.send(wire::encode(&m)).await.is_err() {
                return Ok(());
            }
        }
        let Some(Ok(frame)) = rx.next().await else {
            return Ok(());
        };
        for ev in conn.handle(wire::decode(&frame)?)? {
            match ev {
                ConnEvent::Opened { channel } => {
                    let (fork, length) = (source.fork(), source.length());
                    conn.send(channel, |c| wire::Message::Sync {
                        channel: c,
                        fork,
                        length,
                    });
                    conn.send(channel, |c| wire::Message::Have {
                        channel: c,
                        drop: false,
                        ranges: vec![(0, length)],
                    });
                }
                ConnEvent::Request {
                    channel,
                    id,
                    request,
                } => {
                    let mut p = source.proof(&request).await.ok();
                    if let Some(p) = p.as_mut() {
                        tamper(p);
                    }
                    conn.answer(channel, id, p);
                }
                _ => {}
            }
        }
    }
}

#[test]
fn a_peer_sending_bad_blocks_is_dropped_and_nothing_is_stored() {
    block_on(async {
        let w = writer(10, 6).await;
        let victim = reader(&w).await;
        let (x, y) = duplex();
        let v = victim.clone();
        let evil = evil_peer(x, w.clone(), |p| {
            if let Some(b) = p.block.as_mut() {
                b.value = b"forged".to_vec();
            }
        });
        let honest_side = async move { v.replicate(y, opts(false)).await };
        let want = victim.download(0, 10);
        let (res, _) = futures::future::join(honest_side, evil).await;
        match res {
            Err(ReplicationError::Protocol(ProtocolError::InvalidProof(_))) => {}
            other => panic!("expected an invalid-proof error, got {other:?}"),
        }
        for i in 0..victim.length() {
            assert_eq!(
                victim.get(i).await.unwrap(),
                None,
                "nothing unverified is stored"
            );
        }
        // The victim keeps working with an honest peer.
        let sessions = connect(&w, &victim);
        with_sessions(sessions, async { want.done().await.unwrap() }).await;
        assert_eq!(victim.get(9).await.unwrap(), w.get(9).await.unwrap());
    });
}

#[test]
fn forged_signatures_and_lies_about_length_are_rejected() {
    block_on(async {
        let w = writer(10, 7).await;
        let victim = reader(&w).await;
        let (x, y) = duplex();
        let v = victim.clone();
        let evil = evil_peer(x, w.clone(), |p| {
            if let Some(u) = p.upgrade.as_mut() {
                u.length += 5; // claim a length that was never signed
            }
        });
        let (res, _) =
            futures::future::join(async move { v.replicate(y, opts(false)).await }, evil).await;
        assert!(
            matches!(
                res,
                Err(ReplicationError::Protocol(ProtocolError::InvalidProof(_)))
            ),
            "{res:?}"
        );
        assert_eq!(victim.length(), 0);
    });
}

#[test]
fn garbage_and_oversized_frames_close_the_connection_without_panic() {
    block_on(async {
        let w = writer(3, 8).await;
        let cases: Vec<Vec<Vec<u8>>> = vec![
            vec![vec![0xff, 1, 2, 3]],
            vec![vec![1]],
            vec![vec![1; wire::MAX_FRAME + 1]],
            vec![wire::encode(&wire::Message::Sync {
                channel: 0,
                fork: 0,
                length: 1,
            })],
            vec![
                wire::encode(&wire::Message::Hello { nonce: [1; 32] }),
                wire::encode(&wire::Message::Data {
                    channel: 7,
                    id: 1,
                    proof: Default::default(),
                }),
            ],
            vec![
                wire::encode(&wire::Message::Hello { nonce: [1; 32] }),
                wire::encode(&wire::Message::Hello { nonce: [1; 32] }),
            ],
        ];
        for frames in cases {
            let (mut x, y) = duplex();
            for f in frames {
                x.send(f).await.unwrap();
            }
            let res = w.replicate(y, opts(false)).await;
            assert!(matches!(res, Err(ReplicationError::Protocol(_))), "{res:?}");
        }
    });
}

#[test]
fn a_peer_without_the_key_learns_nothing() {
    block_on(async {
        let w = writer(5, 9).await;
        let (x, y) = duplex();
        let (mut tx, mut rx) = x.split();
        let dkey = w.discovery_key();
        let serve = w.replicate(y, opts(false));
        let probe = async move {
            let mut conn = Connection::new(true, None, [5; 32]);
            // The right discovery key, but not the key: the capability is wrong.
            let ch = conn.open(dkey, [0; 32]).unwrap();
            let mut seen = Vec::new();
            let mut poked = false;
            loop {
                while let Some(m) = conn.poll_send() {
                    let _ = tx.send(wire::encode(&m)).await;
                }
                let Some(Ok(f)) = rx.next().await else { break };
                let m = wire::decode(&f).unwrap();
                seen.push(m.clone());
                let _ = conn.handle(m);
                if !poked
                    && seen
                        .iter()
                        .any(|m| matches!(m, wire::Message::Reject { .. }))
                {
                    // Poke the refused channel: the server must end the session.
                    poked = true;
                    let _ = tx
                        .send(wire::encode(&wire::Message::Sync {
                            channel: ch,
                            fork: 0,
                            length: 0,
                        }))
                        .await;
                }
            }
            seen
        };
        let (res, seen) = futures::future::join(serve, probe).await;
        assert!(
            matches!(
                res,
                Err(ReplicationError::Protocol(ProtocolError::UnknownChannel))
            ),
            "{res:?}"
        );
        assert!(
            seen.iter()
                .any(|m| matches!(m, wire::Message::Reject { .. })),
            "{seen:?}"
        );
        assert!(
            !seen.iter().any(|m| matches!(
                m,
                wire::Message::Sync { .. }
                    | wire::Message::Have { .. }
                    | wire::Message::Data { .. }
            )),
            "nothing about the core leaked: {seen:?}"
        );
    });
}

#[test]
fn a_silent_peer_times_out() {
    block_on(async {
        let w = writer(10, 10).await;
        let victim = reader(&w).await;
        let (x, y) = duplex();
        let clock = hypercore_rs::ManualClock::new();
        let mut o = opts(false);
        o.clock = Arc::new(clock.clone());
        // A peer that opens the core, claims to have everything, then never answers.
        let silent = async move {
            let (mut tx, mut rx) = x.split();
            let mut conn = Connection::new(true, None, [3; 32]);
            conn.open(w.discovery_key(), w.key()).unwrap();
            loop {
                while let Some(m) = conn.poll_send() {
                    let _ = tx.send(wire::encode(&m)).await;
                }
                let Some(Ok(f)) = rx.next().await else { return };
                for ev in conn.handle(wire::decode(&f).unwrap()).unwrap() {
                    if let ConnEvent::Opened { channel } = ev {
                        conn.send(channel, |c| wire::Message::Sync {
                            channel: c,
                            fork: 0,
                            length: 10,
                        });
                        conn.send(channel, |c| wire::Message::Have {
                            channel: c,
                            drop: false,
                            ranges: vec![(0, 10)],
                        });
                    }
                }
            }
        };
        let v = victim.clone();
        let session = async move { v.replicate(y, o).await };
        let ticker = async {
            for _ in 0..100 {
                // Let the session run, then move virtual time forward.
                for _ in 0..20 {
                    yield_now().await;
                }
                clock.advance(Duration::from_secs(1));
            }
        };
        let _want = victim.download(0, 10);
        futures::pin_mut!(session);
        let silent = silent.boxed();
        let res = match select(session, futures::future::join(silent, ticker).boxed()).await {
            Either::Left((r, _)) => r,
            Either::Right(_) => panic!("the silent peer was never dropped"),
        };
        assert!(
            matches!(res, Err(ReplicationError::Protocol(ProtocolError::Timeout))),
            "{res:?}"
        );
        assert_eq!(victim.contiguous_length(), 0);
    });
}

/// Yields to the executor once, waking itself so it is polled again.
async fn yield_now() {
    let mut yielded = false;
    futures::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

#[test]
fn a_session_ends_when_the_remote_hangs_up() {
    // The remote sends its hello and closes at once: the end of the stream is
    // already queued behind a frame (regression: it used to be swallowed).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let res = block_on(async {
            let w = writer(3, 11).await;
            let (mut x, y) = duplex();
            x.send(wire::encode(&wire::Message::Hello { nonce: [9; 32] }))
                .await
                .unwrap();
            drop(x);
            w.replicate(y, opts(false)).await
        });
        let _ = tx.send(res.is_ok());
    });
    let ended = rx.recv_timeout(Duration::from_secs(20));
    assert_eq!(
        ended,
        Ok(true),
        "the session did not end when the remote hung up"
    );
}

#[test]
fn peers_on_two_threads_sync_and_the_server_ends_when_the_reader_leaves() {
    let w = block_on(writer(500, 12));
    let r = block_on(reader(&w));
    let (x, y) = duplex();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let w2 = w.clone();
    let server = std::thread::spawn(move || {
        let res = block_on(w2.replicate(x, opts(true)));
        let _ = done_tx.send(res.is_ok());
    });
    let r2 = r.clone();
    let client = std::thread::spawn(move || {
        block_on(async {
            let session = r2.replicate(y, opts(false));
            let work = async {
                r2.update().await.unwrap();
                r2.download(0, 500).done().await.unwrap();
            };
            futures::pin_mut!(session);
            futures::pin_mut!(work);
            select(session, work).await;
        })
    });
    client.join().unwrap();
    assert_eq!(r.contiguous_length(), 500);
    // The reader's end is gone: the server's session must end by itself.
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(20)), Ok(true));
    server.join().unwrap();
}
