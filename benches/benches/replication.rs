//! Sparse replication: random `get`s from a 100,000-block remote core over an
//! in-memory duplex. Criterion reports the latency per get; the bytes that
//! crossed the link per fetched block (proof overhead) are printed once.

// A benchmark aborts on a setup failure: that is the right outcome here.
#![allow(clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use ehr_benches::blocks;
use futures::{SinkExt, StreamExt};
use hypercore_rs::replication::{duplex, ReplicateOptions};
use hypercore_rs::{Core, GetOptions, MemoryStorage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: u64 = 100_000;
const GETS: u64 = 1_000;

/// Runs `gets` random sparse gets on a fresh reader; returns (time, bytes received).
fn sparse_gets(writer: &Core, gets: u64, seed: u64) -> (Duration, u64) {
    futures::executor::block_on(async {
        let reader = Core::builder(Arc::new(MemoryStorage::new()))
            .key(writer.key())
            .open()
            .await
            .expect("reader");
        let (x, y) = duplex();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let (sink, stream) = y.split();
        let stream = stream.inspect(move |f| {
            if let Ok(f) = f {
                counter.fetch_add(f.len() as u64, Ordering::Relaxed);
            }
        });
        let y = stream.zip(futures::stream::repeat(())).map(|(f, _)| f);
        let io = Joined {
            sink,
            stream: Box::pin(y),
        };
        let w = writer.clone();
        let r = reader.clone();
        let sessions = futures::future::join(
            w.replicate(x, ReplicateOptions::new(true)),
            r.replicate(io, ReplicateOptions::new(false)),
        );
        let work = async {
            reader.update().await.expect("update");
            let before = received.load(Ordering::Relaxed);
            let mut state = seed | 1;
            let t0 = Instant::now();
            for _ in 0..gets {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = state % N;
                reader
                    .get_with(i, GetOptions::wait_for(Duration::from_secs(30)))
                    .await
                    .expect("get")
                    .expect("block");
            }
            (t0.elapsed(), received.load(Ordering::Relaxed) - before)
        };
        futures::pin_mut!(sessions);
        futures::pin_mut!(work);
        match futures::future::select(sessions, work).await {
            futures::future::Either::Right((r, _)) => r,
            futures::future::Either::Left(_) => panic!("replication ended"),
        }
    })
}

struct Joined<S, T> {
    sink: S,
    stream: T,
}

impl<S: futures::Sink<Vec<u8>, Error = std::io::Error> + Unpin, T: Unpin> futures::Sink<Vec<u8>>
    for Joined<S, T>
{
    type Error = std::io::Error;
    fn poll_ready(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.sink.poll_ready_unpin(cx)
    }
    fn start_send(mut self: std::pin::Pin<&mut Self>, item: Vec<u8>) -> Result<(), Self::Error> {
        self.sink.start_send_unpin(item)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.sink.poll_flush_unpin(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.sink.poll_close_unpin(cx)
    }
}

impl<S: Unpin, T: futures::Stream + Unpin> futures::Stream for Joined<S, T> {
    type Item = T::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T::Item>> {
        self.stream.poll_next_unpin(cx)
    }
}

fn sparse(c: &mut Criterion) {
    let writer = futures::executor::block_on(async {
        let w = Core::builder(Arc::new(MemoryStorage::new()))
            .open()
            .await
            .expect("writer");
        w.append_batch(&blocks(N as usize, 1024, 11))
            .await
            .expect("append");
        w
    });
    let (t, bytes) = sparse_gets(&writer, GETS, 7);
    println!(
        "sparse get, {GETS} random blocks of a {N}-block remote core: {:.1} us/get, {} bytes received per 1 KiB block ({} bytes of proof and framing)",
        t.as_secs_f64() * 1e6 / GETS as f64,
        bytes / GETS,
        bytes / GETS - 1024
    );
    let mut g = c.benchmark_group("replication");
    g.sample_size(10);
    g.bench_function("sparse_get/100k_remote", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            let mut seed = 1;
            while left > 0 {
                let k = left.min(GETS);
                total += sparse_gets(&writer, k, seed).0;
                left -= k;
                seed += 1;
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, sparse);
criterion_main!(benches);
