//! Criterion micro-benchmarks of swarm-rs: encrypted stream throughput over
//! TCP loopback (64 KiB frames), connect + Noise handshake latency on
//! loopback, mux cost per message, and hypercore replication over TCP +
//! Noise. Everything runs on one thread (`block_on`): sender and receiver
//! share one core.

// A benchmark aborts on a setup failure: that is the right outcome here.
#![allow(clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ehr_benches::blocks;
use ehr_benches::tcp::{loopback_listener, replicate_download, secure_pair, secure_pair_on};
use futures::executor::block_on;
use futures::{SinkExt, StreamExt};
use hypercore_rs::{Core, MemoryStorage};
use swarm_rs::{Mux, MuxConfig, MuxEvent};

const FRAME: usize = 64 * 1024;

fn stream_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("secure_stream");
    g.throughput(Throughput::Bytes(FRAME as u64));
    g.measurement_time(Duration::from_secs(5));
    let (mut a, mut b) = block_on(secure_pair()).expect("secure pair");
    let frame = vec![7u8; FRAME];
    g.bench_function("tcp_loopback/64KiB_frames", |bench| {
        bench.iter_custom(|iters| {
            let start = Instant::now();
            block_on(async {
                let send = async {
                    for _ in 0..iters {
                        a.feed(frame.clone()).await.expect("send");
                    }
                    a.flush().await.expect("flush");
                };
                let receive = async {
                    for _ in 0..iters {
                        let got = b.next().await.expect("open").expect("frame");
                        assert_eq!(got.len(), FRAME);
                    }
                };
                futures::future::join(send, receive).await;
            });
            start.elapsed()
        })
    });
    // The same, but the sender reuses the frames the receiver is done with
    // instead of allocating one per send: the stream's own cost, without the
    // application's frame allocation (which glibc's heap trimming makes
    // expensive for 64 KiB buffers).
    g.bench_function("tcp_loopback/64KiB_frames_recycled", |bench| {
        bench.iter_custom(|iters| {
            let pool = std::cell::RefCell::new(Vec::<Vec<u8>>::new());
            let start = Instant::now();
            block_on(async {
                let send = async {
                    for _ in 0..iters {
                        let next = pool.borrow_mut().pop();
                        a.feed(next.unwrap_or_else(|| frame.clone()))
                            .await
                            .expect("send");
                    }
                    a.flush().await.expect("flush");
                };
                let receive = async {
                    for _ in 0..iters {
                        let got = b.next().await.expect("open").expect("frame");
                        assert_eq!(got.len(), FRAME);
                        pool.borrow_mut().push(got);
                    }
                };
                futures::future::join(send, receive).await;
            });
            start.elapsed()
        })
    });
    let mut a_slot = Some(a);
    // Each end on its own thread (so its own core, when one is free): the
    // sender encrypts, the receiver decrypts. What one side's core costs.
    g.bench_function("tcp_loopback/64KiB_frames_two_threads", |bench| {
        bench.iter_custom(|iters| {
            let mut sender = a_slot.take().expect("sender");
            let frame = frame.clone();
            let start = Instant::now();
            let thread = std::thread::spawn(move || {
                block_on(async {
                    for _ in 0..iters {
                        sender.feed(frame.clone()).await.expect("send");
                    }
                    sender.flush().await.expect("flush");
                });
                sender
            });
            block_on(async {
                for _ in 0..iters {
                    let got = b.next().await.expect("open").expect("frame");
                    assert_eq!(got.len(), FRAME);
                }
            });
            let elapsed = start.elapsed();
            a_slot = Some(thread.join().expect("sender thread"));
            elapsed
        })
    });
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let mut listener = block_on(loopback_listener()).expect("listen");
    g.bench_function("tcp_loopback/connect+noise_xx+identity_proofs", |bench| {
        bench.iter(|| block_on(secure_pair_on(&mut listener)).expect("handshake"))
    });
    g.finish();
}

/// Two muxes with one paired channel each.
fn paired() -> (Mux, Mux, swarm_rs::ChannelId) {
    let (mut a, mut b) = (
        Mux::new(MuxConfig::default()),
        Mux::new(MuxConfig::default()),
    );
    let ch = a.open("bench/v1", b"id").expect("open");
    b.open("bench/v1", b"id").expect("open");
    while let Some(f) = a.poll_transmit() {
        b.handle_frame(&f).expect("frame");
    }
    while let Some(f) = b.poll_transmit() {
        a.handle_frame(&f).expect("frame");
    }
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    assert!(a.is_paired(ch));
    (a, b, ch)
}

fn mux(c: &mut Criterion) {
    let mut g = c.benchmark_group("mux");
    g.throughput(Throughput::Elements(1));
    for size in [64usize, 4096] {
        let (mut a, mut b, ch) = paired();
        let data = vec![1u8; size];
        g.bench_function(format!("encode+decode/{size}B"), |bench| {
            bench.iter(|| {
                a.send(ch, &data).expect("send");
                let frame = a.poll_transmit().expect("frame");
                b.handle_frame(&frame).expect("handle");
                match b.poll_event() {
                    Some(MuxEvent::Message { data, .. }) => data.len(),
                    other => panic!("unexpected {other:?}"),
                }
            })
        });
    }
    g.finish();
}

fn replication(c: &mut Criterion) {
    const BLOCKS: usize = 256;
    const SIZE: usize = 16 * 1024;
    let mut g = c.benchmark_group("replication");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((BLOCKS * SIZE) as u64));
    let source = block_on(async {
        let core = Core::builder(Arc::new(MemoryStorage::new()))
            .open()
            .await
            .expect("core");
        core.append_batch(blocks(BLOCKS, SIZE, 3))
            .await
            .expect("append");
        core.flush().await.expect("flush");
        core
    });
    g.bench_function("download/tcp_noise/4MiB_16KiB_blocks", |bench| {
        bench.iter_batched(
            || {
                block_on(
                    Core::builder(Arc::new(MemoryStorage::new()))
                        .key(source.key())
                        .open(),
                )
                .expect("reader")
            },
            |dest| block_on(replicate_download(&source, &dest)).expect("replicate"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, stream_throughput, handshake, mux, replication);
criterion_main!(benches);
