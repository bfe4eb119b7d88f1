//! Criterion benchmarks of ehr-core security: encrypt+write and
//! read+decrypt of one resource against the plain record (reads in two
//! records holding the same `EHR_GET_RESOURCES`, default 1,000,
//! Observations, sealed in one; `EHR_GET_PAD` bytes longer than 421 if
//! set), and key rotation
//! for a record with 20 grantees and `EHR_ROTATION_RESOURCES` (default
//! 100,000) sealed resources (rotation must not touch history).

// A benchmark aborts on a setup failure: that is the right outcome here.
#![allow(clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ehr_core::keys::Identity;
use ehr_core::scope_crypto::Keyring;
use ehr_core::SecureRecord;
use futures::executor::block_on;
use hypercore_rs::OsEntropy;
use std::sync::atomic::{AtomicU64, Ordering};

use ehr_benches::security::{fill, obs, read_records, record};

fn put_get(c: &mut Criterion) {
    let mut g = c.benchmark_group("ehr-security");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    let plain = record();
    let n = AtomicU64::new(0);
    g.bench_function("put/plain", |b| {
        b.iter(|| block_on(plain.put(obs(n.fetch_add(1, Ordering::Relaxed)))).expect("put"))
    });
    let sealing = SecureRecord::new(record());
    let m = AtomicU64::new(0);
    g.bench_function("put/sealed", |b| {
        b.iter(|| {
            block_on(sealing.put("default", obs(m.fetch_add(1, Ordering::Relaxed)))).expect("put")
        })
    });
    // Reads: two records holding the same Observations, clear in one and
    // sealed in the other (which also holds its key wrap and audit event).
    // Mind hyperbee's inline threshold (512 bytes): the 421-byte
    // Observation's head record is stored inside the tree node in clear,
    // while its sealed shell is not and costs a block read; with
    // `EHR_GET_PAD=300` neither is inlined.
    let n = ehr_benches::env_usize("EHR_GET_RESOURCES", 1_000).max(2) as u64;
    let (plain, secure) = read_records(n);
    let key = secure.keyring().current("default").expect("key").clone();
    let id = format!("o{}", n / 2);
    g.bench_function("get/plain", |b| {
        b.iter(|| {
            block_on(plain.get("Observation", &id))
                .expect("get")
                .expect("present")
        })
    });
    g.bench_function("get/sealed", |b| {
        b.iter(|| {
            block_on(secure.get("Observation", &id))
                .expect("get")
                .expect("present")
        })
    });
    // A first read: the cache of opened shells is emptied before each
    // (adding no keys empties it), so every read finds, decodes and
    // decrypts the shell.
    g.bench_function("get/sealed-uncached", |b| {
        b.iter(|| {
            secure.add_keys(Keyring::new());
            block_on(secure.get("Observation", &id))
                .expect("get")
                .expect("present")
        })
    });
    // The same lookup in the sealed record without opening, to tell the
    // cost of opening from the cost of the lookup itself.
    g.bench_function("get/sealed-shell-only", |b| {
        b.iter(|| {
            block_on(secure.record().get("Observation", &id))
                .expect("get")
                .expect("present")
        })
    });
    // Opening stored bytes without knowing where they were read from
    // (`open_stored`: parses the shell to learn its type and id).
    let shell = block_on(secure.record().get("Observation", &id))
        .expect("get")
        .and_then(|v| v.resource)
        .expect("present");
    g.bench_function("open/sealed-uncached", |b| {
        b.iter(|| block_on(secure.open_stored(&shell)).expect("open"))
    });
    let ring = secure.keyring();
    let v1ct = key.encrypt(&obs(1), &OsEntropy).expect("enc");
    g.bench_function("crypto/v1-decrypt", |b| {
        b.iter(|| key.decrypt(&v1ct).expect("dec"))
    });
    g.bench_function("open/sealed-at", |b| {
        b.iter(|| {
            ehr_core::scope_crypto::open_resource_at(&ring, "Observation", &id, &shell)
                .expect("open")
        })
    });
    g.finish();
}

fn rotation(c: &mut Criterion) {
    let n = ehr_benches::env_usize("EHR_ROTATION_RESOURCES", 100_000) as u64;
    let secure = SecureRecord::new(record());
    block_on(secure.put("default", obs(0))).expect("first");
    let key = secure.keyring().current("default").expect("key").clone();
    let t = std::time::Instant::now();
    fill(secure.record(), 1, n, Some(&key));
    eprintln!(
        "filled {n} sealed resources in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for k in 0..20u8 {
        let id = Identity::from_seed([k + 1; 32]).public();
        block_on(secure.share(id, None, &["default"])).expect("share");
    }
    let mut g = c.benchmark_group("ehr-security");
    g.sample_size(10);
    let next = AtomicU64::new(100);
    g.bench_function("rotate/20-grantees", |b| {
        b.iter_batched(
            || {
                // A 21st grantee to rotate away; the 20 others stay.
                let s = next.fetch_add(1, Ordering::Relaxed);
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&s.to_le_bytes());
                let id = Identity::from_seed(seed).public();
                block_on(secure.share(id, None, &["default"])).expect("share");
                id
            },
            |id| {
                let r = block_on(secure.rotate_away(&[id])).expect("rotate");
                assert_eq!(r.wraps, 21, "20 grantees and the owner");
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, put_get, rotation);
criterion_main!(benches);
