//! Criterion micro-benchmarks of hyperbee-rs: single puts, a batch, point
//! gets, a full scan and a diff between two versions.

// A benchmark aborts on a setup failure: that is the right outcome here.
#![allow(clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ehr_benches::blocks;
use futures::executor::block_on;
use hyperbee_rs::{Bee, Range};
use hypercore_rs::{Core, DiskStorage, MemoryStorage, Storage};
use std::sync::Arc;

const N: usize = 10_000;

fn memory_bee() -> Bee {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    block_on(async {
        let core = Core::builder(storage).open().await.expect("core");
        Bee::open(core).await.expect("bee")
    })
}

fn disk_bee(dir: &tempfile::TempDir) -> Bee {
    let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(dir.path()).expect("disk"));
    block_on(async {
        let core = Core::builder(storage).open().await.expect("core");
        Bee::open(core).await.expect("bee")
    })
}

fn filled(keys: &[Vec<u8>], values: &[Vec<u8>]) -> Bee {
    let bee = memory_bee();
    block_on(async {
        let mut b = bee.batch().await.expect("batch");
        for (k, v) in keys.iter().zip(values) {
            b.put(k, v).await.expect("put");
        }
        b.flush().await.expect("flush");
    });
    bee
}

fn put(c: &mut Criterion) {
    let keys = blocks(1000, 16, 1);
    let values = blocks(1000, 100, 2);
    let mut g = c.benchmark_group("put");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(10);
    g.bench_function("disk/single/1000", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let bee = disk_bee(&dir);
                (dir, bee)
            },
            |(_dir, bee)| {
                block_on(async {
                    for (k, v) in keys.iter().zip(&values) {
                        bee.put(k, v).await.expect("put");
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("memory/batch/1000", |b| {
        b.iter_batched(
            memory_bee,
            |bee| {
                block_on(async {
                    let mut batch = bee.batch().await.expect("batch");
                    for (k, v) in keys.iter().zip(&values) {
                        batch.put(k, v).await.expect("put");
                    }
                    batch.flush().await.expect("flush");
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn read(c: &mut Criterion) {
    let keys = blocks(N, 16, 1);
    let values = blocks(N, 100, 2);
    let bee = filled(&keys, &values);
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("get/10k", |b| {
        b.iter(|| {
            i = (i + 7919) % N;
            block_on(bee.get(&keys[i])).expect("get")
        })
    });
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("scan/10k", |b| {
        b.iter(|| block_on(bee.range(Range::all()).collect()).expect("scan"))
    });
    g.finish();
}

fn diff(c: &mut Criterion) {
    let keys = blocks(N, 16, 1);
    let values = blocks(N, 100, 2);
    let bee = filled(&keys, &values);
    let v1 = bee.version();
    block_on(async {
        for k in keys.iter().take(10) {
            bee.put(k, b"changed").await.expect("put");
        }
    });
    let v2 = bee.version();
    let mut g = c.benchmark_group("diff");
    g.bench_function("10-changes-in-10k", |b| {
        b.iter(|| {
            block_on(async {
                let d = bee.diff(v1, v2, Range::all()).await.expect("diff");
                d.collect().await.expect("collect")
            })
        })
    });
    g.finish();
}

criterion_group!(benches, put, read, diff);
criterion_main!(benches);
