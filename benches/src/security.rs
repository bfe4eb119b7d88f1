//! The sealed-read workload of the ehr-core security benchmarks: two
//! records holding the same Observations, clear in one and sealed in the
//! other, shared by the criterion bench (`ehr_security`) and the
//! interleaved ratio example (`sealed_read_ratio`).

use ehr_core::scope_crypto::{seal_resource, ScopeKey};
use ehr_core::{Record, SecureRecord};
use futures::executor::block_on;
use hypercore_rs::{MemoryStorage, OsEntropy};
use std::sync::Arc;

/// A fresh in-memory record (seeded entropy, patient `p`).
pub fn record() -> Record {
    crate::ehr::record(Arc::new(MemoryStorage::new()))
}

/// An Observation of 421 bytes (o1..o9: shorter ids), or padded by `pad`
/// bytes of note text.
pub fn obs_padded(i: u64, pad: usize) -> Vec<u8> {
    let text = format!(
        "measured at rest, left arm, seated, after five minutes{}",
        "x".repeat(pad)
    );
    String::from_utf8_lossy(&obs(i))
        .replace(
            "measured at rest, left arm, seated, after five minutes",
            &text,
        )
        .into_bytes()
}

/// The unpadded Observation `o<i>`.
pub fn obs(i: u64) -> Vec<u8> {
    format!(
        r#"{{"resourceType":"Observation","id":"o{i}","status":"final","subject":{{"reference":"Patient/p"}},"code":{{"coding":[{{"system":"http://loinc.org","code":"8480-6","display":"Systolic blood pressure"}}]}},"effectiveDateTime":"2024-05-01T08:00:00+02:00","valueQuantity":{{"value":120.5,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},"note":[{{"text":"measured at rest, left arm, seated, after five minutes"}}]}}"#
    )
    .into_bytes()
}

/// Imports Observations `from..to` (padded by `EHR_GET_PAD` bytes),
/// sealed under `key` if given, 500 per Bundle.
pub fn fill(record: &Record, from: u64, to: u64, key: Option<&ScopeKey>) {
    let pad = crate::env_usize("EHR_GET_PAD", 0);
    let mut i = from;
    while i < to {
        let mut entries = Vec::new();
        for j in i..(i + 500).min(to) {
            let bytes = match key {
                Some(key) => match seal_resource(key, &obs_padded(j, pad), &OsEntropy) {
                    Ok(b) => b,
                    Err(e) => panic!("seal: {e}"),
                },
                None => obs_padded(j, pad),
            };
            entries.push(format!(
                "{{\"resource\":{}}}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        let bundle = format!(
            "{{\"resourceType\":\"Bundle\",\"type\":\"collection\",\"entry\":[{}]}}",
            entries.join(",")
        );
        if let Err(e) = block_on(record.import_bundle(bundle.as_bytes())) {
            panic!("fill: {e}");
        }
        i += 500;
    }
}

/// The two read records: `n` Observations (`o1..o<n>`, plus `o0` written
/// through the sealed record's `put`) in clear in the first, sealed under
/// the `default` scope in the second.
pub fn read_records(n: u64) -> (Record, SecureRecord) {
    let plain = record();
    fill(&plain, 0, n, None);
    let secure = SecureRecord::new(record());
    let pad = crate::env_usize("EHR_GET_PAD", 0);
    if let Err(e) = block_on(secure.put("default", obs_padded(0, pad))) {
        panic!("put: {e}");
    }
    let Some(key) = secure.keyring().current("default").cloned() else {
        panic!("no default key after a sealed put");
    };
    fill(secure.record(), 1, n, Some(&key));
    (plain, secure)
}
