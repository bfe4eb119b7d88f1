//! Criterion benchmarks of ehr-core: importing a 500-entry transaction
//! Bundle, and the first page of a code + date-range search on a
//! 100,000-resource record, and a new provider's first full sync of a
//! 10,000-resource record over TCP loopback + Noise (peak memory of that
//! sync: `ehr-figures -- sync`).

// A benchmark aborts on a setup failure: that is the right outcome here.
#![allow(clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ehr_benches::ehr::{filled_record, first_sync, record, transaction};
use ehr_core::fhir::parse_fhir_date;
use ehr_core::Query;
use futures::executor::block_on;
use hypercore_rs::{DiskStorage, MemoryStorage};
use std::sync::Arc;

/// The workload: one 500-entry transaction Bundle (a new Patient
/// and 499 Observations referencing it by `urn:uuid:`) into a fresh record.
/// Only the import is timed: the record is created in the setup, and the
/// routine hands it back so that dropping it (freeing the store, removing
/// the temporary directory) happens outside the measurement.
fn import(c: &mut Criterion) {
    let bundle = transaction(499, 0, true);
    let mut g = c.benchmark_group("ehr/import");
    g.throughput(Throughput::Elements(500));
    g.sample_size(20);
    g.bench_function("memory/transaction-500", |b| {
        b.iter_batched(
            || record(Arc::new(MemoryStorage::new())),
            |rec| {
                let imported = block_on(rec.import_bundle(&bundle)).expect("import");
                assert_eq!(imported.written.len(), 500);
                rec
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("disk/transaction-500", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let rec = record(Arc::new(DiskStorage::open(dir.path()).expect("disk")));
                (dir, rec)
            },
            |(dir, rec)| {
                let imported = block_on(rec.import_bundle(&bundle)).expect("import");
                assert_eq!(imported.written.len(), 500);
                (dir, rec)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn search(c: &mut Criterion) {
    let n = ehr_benches::env_usize("EHR_SEARCH_RESOURCES", 100_000);
    let q = Query::new("Observation")
        .code("http://loinc.org|7-1")
        .dates(parse_fhir_date("2021-01-01"), parse_fhir_date("2022-01-01"))
        .limit(20);
    // Filled on first use, so a run filtered to other groups does not pay
    // for the 100,000 imports.
    let mut filled: Option<ehr_core::Record> = None;
    let mut g = c.benchmark_group("ehr/search");
    g.bench_function("code+date/first-page-20/100k", |b| {
        let rec = filled.get_or_insert_with(|| {
            let rec = record(Arc::new(MemoryStorage::new()));
            let t = std::time::Instant::now();
            for salt in 0..n / 500 {
                block_on(rec.import_bundle(&transaction(500, salt, false))).expect("fill");
            }
            eprintln!(
                "filled {n} resources in {:.2} s ({:.0}/s)",
                t.elapsed().as_secs_f64(),
                n as f64 / t.elapsed().as_secs_f64()
            );
            let first = block_on(rec.search(&q)).expect("search");
            assert_eq!(first.entries.len(), 20);
            rec
        });
        b.iter(|| block_on(rec.search(&q)).expect("search"))
    });
    g.finish();
}

/// A new provider joins a 10,000-resource record (fresh in-memory storage)
/// and replicates it over TCP loopback + Noise until its view equals the
/// patient's. The patient is filled once, outside the measurement.
fn sync(c: &mut Criterion) {
    let n = ehr_benches::env_usize("EHR_SYNC_RESOURCES", 10_000);
    let patient = filled_record(n);
    let mut g = c.benchmark_group("ehr/first_sync");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(format!("tcp_loopback/{n}"), |b| {
        b.iter_with_large_drop(|| first_sync(&patient))
    });
    g.finish();
}

criterion_group!(benches, import, search, sync);
criterion_main!(benches);
