//! Criterion micro-benchmarks of hypercore-rs hot paths: append (single and
//! batched, memory and disk), get, proof generation and verification.

// A benchmark aborts on a setup failure: that is the right outcome here.
#![allow(clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ehr_benches::blocks;
use futures::executor::block_on;
use hypercore_rs::{Core, DiskStorage, MemoryStorage, ProofRequest, Storage, UpgradeRequest};
use std::sync::Arc;

fn memory() -> Arc<dyn Storage> {
    Arc::new(MemoryStorage::new())
}

fn disk(dir: &tempfile::TempDir) -> Arc<dyn Storage> {
    Arc::new(DiskStorage::open(dir.path()).expect("open disk storage"))
}

fn append(c: &mut Criterion) {
    let data = blocks(1000, 1024, 7);
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(20);
    for (name, batch) in [("single", 1usize), ("batch100", 100)] {
        g.bench_function(format!("memory/{name}/1000x1KiB"), |b| {
            b.iter_batched(
                || block_on(Core::builder(memory()).open()).expect("core"),
                |core| {
                    block_on(async {
                        for chunk in data.chunks(batch) {
                            core.append_batch(chunk).await.expect("append");
                        }
                    });
                    core
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("disk/{name}/1000x1KiB"), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let core = block_on(Core::builder(disk(&dir)).open()).expect("core");
                    (dir, core)
                },
                // Returned, so criterion drops them (and the checkpoint with
                // its fsync on close) outside the timed section.
                |(dir, core)| {
                    block_on(async {
                        for chunk in data.chunks(batch) {
                            core.append_batch(chunk).await.expect("append");
                        }
                    });
                    (dir, core)
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn get(c: &mut Criterion) {
    let data = blocks(10_000, 1024, 8);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(10_000));
    g.sample_size(20);
    for (name, storage) in [("memory", memory()), ("disk", disk(&dir))] {
        let core = block_on(async {
            let core = Core::builder(storage).open().await.expect("core");
            core.append_batch(&data).await.expect("append");
            core
        });
        g.bench_function(format!("{name}/seq/10000x1KiB"), |b| {
            b.iter(|| {
                block_on(async {
                    for i in 0..10_000 {
                        core.get(i).await.expect("get");
                    }
                })
            })
        });
    }
    g.finish();
}

fn proofs(c: &mut Criterion) {
    let data = blocks(100_000, 64, 9);
    let writer = block_on(async {
        let core = Core::builder(memory()).open().await.expect("core");
        core.append_batch(&data).await.expect("append");
        core
    });
    let reader = block_on(async {
        let r = Core::builder(memory())
            .key(writer.key())
            .open()
            .await
            .expect("reader");
        let up = writer
            .proof(&ProofRequest {
                upgrade: Some(UpgradeRequest { start: 0 }),
                manifest: true,
                ..Default::default()
            })
            .await
            .expect("proof");
        r.verify(&up).await.expect("verify");
        r
    });
    let req = |i: u64| ProofRequest {
        block: Some(block_on(reader.block_request(i)).expect("request")),
        ..Default::default()
    };
    let mut g = c.benchmark_group("proof");
    g.bench_function("generate/block/100k", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % 100_000;
            block_on(writer.proof(&req(i))).expect("proof")
        })
    });
    g.bench_function("verify/block/100k", |b| {
        b.iter_batched(
            || {
                let i = 4_242u64;
                let p = block_on(writer.proof(&req(i))).expect("proof");
                let r = block_on(async {
                    let r = Core::builder(memory())
                        .key(writer.key())
                        .open()
                        .await
                        .expect("reader");
                    let up = writer
                        .proof(&ProofRequest {
                            upgrade: Some(UpgradeRequest { start: 0 }),
                            manifest: true,
                            ..Default::default()
                        })
                        .await
                        .expect("proof");
                    r.verify(&up).await.expect("verify");
                    r
                });
                (r, p)
            },
            |(r, p)| block_on(r.verify(&p)).expect("verify"),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("verify/upgrade+signature", |b| {
        let up = block_on(writer.proof(&ProofRequest {
            upgrade: Some(UpgradeRequest { start: 0 }),
            manifest: true,
            ..Default::default()
        }))
        .expect("proof");
        b.iter_batched(
            || block_on(Core::builder(memory()).key(writer.key()).open()).expect("reader"),
            |r| block_on(r.verify(&up)).expect("verify"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, append, get, proofs);
criterion_main!(benches);
