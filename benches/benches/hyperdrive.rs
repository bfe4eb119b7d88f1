//! Criterion benchmarks of hyperdrive-rs: writing and reading a 256 MiB file
//! on disk (streamed, bounded buffers), listing a folder of 100,000 files,
//! mirroring a 1,000-file local folder into a drive, and ranged-read latency.

// A benchmark aborts on a setup failure: that is the right outcome here.
#![allow(clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures::executor::block_on;
use futures::StreamExt;
use hypercore_rs::{Corestore, DiskStorage, MemoryStorage};
use hyperdrive_rs::mirror::local_to_drive;
use hyperdrive_rs::{Drive, MirrorOptions, PutOptions, ReadRange};
use std::sync::Arc;

const BIG: usize = 256 << 20;

fn disk_drive(dir: &tempfile::TempDir) -> Drive {
    let storage = Arc::new(DiskStorage::open(dir.path()).expect("disk"));
    let store = Corestore::with_seed(storage, [1; 32]);
    block_on(Drive::open(&store, "bench")).expect("drive")
}

fn memory_drive() -> Drive {
    let store = Corestore::with_seed(Arc::new(MemoryStorage::new()), [1; 32]);
    block_on(Drive::open(&store, "bench")).expect("drive")
}

fn content() -> Vec<u8> {
    (0..BIG)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn large_file(c: &mut Criterion) {
    let data = content();
    let mut g = c.benchmark_group("large_file");
    g.throughput(Throughput::Bytes(BIG as u64));
    g.sample_size(10);
    g.bench_function("disk/write_stream/256MiB", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let d = disk_drive(&dir);
                (dir, d)
            },
            |(_dir, d)| {
                block_on(async {
                    let r = futures::io::Cursor::new(&data[..]);
                    d.put_stream("/f", r, PutOptions::default())
                        .await
                        .expect("put");
                    d.flush().await.expect("flush");
                })
            },
            BatchSize::PerIteration,
        )
    });
    // The same write without the final flush: the write path itself (the
    // storage makes it durable at its next checkpoint or flush).
    g.bench_function("disk/write_stream_unflushed/256MiB", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let d = disk_drive(&dir);
                (dir, d)
            },
            |(dir, d)| {
                block_on(async {
                    let r = futures::io::Cursor::new(&data[..]);
                    d.put_stream("/f", r, PutOptions::default())
                        .await
                        .expect("put");
                });
                (dir, d)
            },
            BatchSize::PerIteration,
        )
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let d = disk_drive(&dir);
    block_on(async {
        d.put_stream(
            "/f",
            futures::io::Cursor::new(&data[..]),
            PutOptions::default(),
        )
        .await
        .expect("put");
        d.flush().await.expect("flush");
    });
    g.bench_function("disk/read_stream_verified/256MiB", |b| {
        b.iter(|| {
            block_on(async {
                let mut s = d.read("/f", ReadRange::all()).await.expect("read");
                let mut n = 0;
                while let Some(chunk) = s.next().await {
                    n += chunk.expect("chunk").len();
                }
                assert_eq!(n, BIG);
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("range_read");
    g.bench_function("disk/4KiB_at_random_offsets", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = i.wrapping_add(7_919);
            let start = (i * 4096 * 13) % (BIG as u64 - 4096);
            block_on(async {
                let mut s = d
                    .read("/f", ReadRange::new(start, 4096))
                    .await
                    .expect("read");
                let mut n = 0;
                while let Some(chunk) = s.next().await {
                    n += chunk.expect("chunk").len();
                }
                assert_eq!(n, 4096);
            })
        })
    });
    g.finish();
}

fn listing(c: &mut Criterion) {
    const FILES: usize = 100_000;
    let d = memory_drive();
    block_on(async {
        let mut b = d.batch().await.expect("batch");
        for i in 0..FILES {
            b.put(&format!("/patients/p{:03}/doc-{i:06}.pdf", i % 100), b"x")
                .await
                .expect("put");
        }
        b.put("/other/file", b"y").await.expect("put");
        b.flush().await.expect("flush");
    });
    let mut g = c.benchmark_group("list");
    g.sample_size(10);
    g.throughput(Throughput::Elements(FILES as u64));
    g.bench_function("recursive/100000", |b| {
        b.iter(|| {
            block_on(async {
                let n = d
                    .list("/patients", true)
                    .expect("list")
                    .collect()
                    .await
                    .expect("collect")
                    .len();
                assert_eq!(n, FILES);
            })
        })
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("readdir/100_folders_of_1000", |b| {
        b.iter(|| {
            block_on(async {
                let n = d
                    .readdir("/patients")
                    .expect("readdir")
                    .collect()
                    .await
                    .expect("collect")
                    .len();
                assert_eq!(n, 100);
            })
        })
    });
    g.finish();
}

fn mirror(c: &mut Criterion) {
    let src = tempfile::tempdir().expect("tempdir");
    for i in 0..1000 {
        let p = src
            .path()
            .join(format!("dir{}", i % 10))
            .join(format!("f{i}.txt"));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, vec![i as u8; 1000 + i * 10]).expect("write");
    }
    let mut g = c.benchmark_group("mirror");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("local_to_drive/1000_files/fresh", |b| {
        b.iter_batched(
            memory_drive,
            |d| {
                block_on(async {
                    let r = local_to_drive(src.path(), &d, &MirrorOptions::default())
                        .await
                        .expect("mirror");
                    assert_eq!(r.added(), 1000);
                })
            },
            BatchSize::PerIteration,
        )
    });
    let d = memory_drive();
    block_on(local_to_drive(src.path(), &d, &MirrorOptions::default())).expect("mirror");
    g.bench_function("local_to_drive/1000_files/unchanged", |b| {
        b.iter(|| {
            block_on(async {
                let r = local_to_drive(src.path(), &d, &MirrorOptions::default())
                    .await
                    .expect("mirror");
                assert_eq!(r.unchanged, 1000);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, large_file, listing, mirror);
criterion_main!(benches);
