//! Criterion benchmarks of ehr-core: importing a 500-entry transaction
//! Bundle, and the first page of a code + date-range search on a
//! 100,000-resource record.

// A benchmark aborts on a setup failure: that is the right outcome here.
#![allow(clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ehr_core::fhir::parse_fhir_date;
use ehr_core::{Query, Record};
use futures::executor::block_on;
use hypercore_rs::{DiskStorage, MemoryStorage, SeededEntropy, Storage};
use std::sync::Arc;

const CODES: usize = 20;

/// A transaction Bundle: one Patient (first bundle only) and `n`
/// Observations referencing it by `urn:uuid:`, dates spread over 2020-2022.
fn transaction(n: usize, salt: usize, with_patient: bool) -> Vec<u8> {
    let mut entries = Vec::with_capacity(n + 1);
    let subject = if with_patient {
        entries.push(
            r#"{"fullUrl":"urn:uuid:patient","resource":{"resourceType":"Patient","name":[{"family":"Bench","given":["Ada"]}],"birthDate":"1970-01-01"},"request":{"method":"POST","url":"Patient"}}"#
                .to_owned(),
        );
        "urn:uuid:patient"
    } else {
        "Patient/p"
    };
    for i in 0..n {
        let k = salt * n + i;
        let code = k % CODES;
        let day = (k * 7919) % 1000;
        let (y, d) = (2020 + day / 365, day % 365);
        let (m, dd) = (d / 31 + 1, d % 28 + 1);
        entries.push(format!(
            r#"{{"fullUrl":"urn:uuid:o{k}","resource":{{"resourceType":"Observation","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory","display":"Laboratory"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"{code}-1","display":"Test {code}"}}],"text":"Test {code}"}},"subject":{{"reference":"{subject}"}},"effectiveDateTime":"{y}-{m:02}-{dd:02}T08:{:02}:00+01:00","issued":"{y}-{m:02}-{dd:02}T09:00:00.000+01:00","valueQuantity":{{"value":{}.{:02},"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}},"referenceRange":[{{"low":{{"value":3.1,"unit":"mmol/L"}},"high":{{"value":6.2,"unit":"mmol/L"}}}}]}},"request":{{"method":"POST","url":"Observation"}}}}"#,
            k % 60,
            k % 10,
            k % 100
        ));
    }
    format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes()
}

fn record(storage: Arc<dyn Storage>) -> Record {
    block_on(
        Record::builder(storage)
            .entropy(Arc::new(SeededEntropy::new(1)))
            .create("p"),
    )
    .expect("record")
}

fn import(c: &mut Criterion) {
    let bundle = transaction(499, 0, true);
    let mut g = c.benchmark_group("ehr/import");
    g.throughput(Throughput::Elements(500));
    g.sample_size(20);
    g.bench_function("memory/transaction-500", |b| {
        b.iter_batched(
            || record(Arc::new(MemoryStorage::new())),
            |rec| block_on(rec.import_bundle(&bundle)).expect("import"),
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
            |(_dir, rec)| block_on(rec.import_bundle(&bundle)).expect("import"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn search(c: &mut Criterion) {
    let n = ehr_benches::env_usize("EHR_SEARCH_RESOURCES", 100_000);
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
    let q = Query::new("Observation")
        .code("http://loinc.org|7-1")
        .dates(parse_fhir_date("2021-01-01"), parse_fhir_date("2022-01-01"))
        .limit(20);
    let first = block_on(rec.search(&q)).expect("search");
    assert_eq!(first.entries.len(), 20);
    let mut g = c.benchmark_group("ehr/search");
    g.bench_function("code+date/first-page-20/100k", |b| {
        b.iter(|| block_on(rec.search(&q)).expect("search"))
    });
    g.finish();
}

criterion_group!(benches, import, search);
criterion_main!(benches);
