//! Every HL7 FHIR R4 example resource goes in and comes back out unchanged:
//! byte for byte through `get`, and with the same JSON meaning through the
//! `$everything` export. The example Bundles of importable types import.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::fhir::Resource;
use ehr_core::Record;
use futures::executor::block_on;
use hypercore_rs::MemoryStorage;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

fn examples() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fhir/r4-examples");
    let dir = if dir.exists() {
        dir
    } else {
        PathBuf::from("/work/shared/fhir/r4-examples")
    };
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read"))
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 400,
        "expected the HL7 examples, found {}",
        out.len()
    );
    out
}

async fn record(patient: &str) -> Record {
    Record::builder(Arc::new(MemoryStorage::new()))
        .create(patient)
        .await
        .expect("create")
}

#[test]
fn every_example_round_trips() {
    block_on(async {
        // One record per patient the examples are about.
        let mut groups: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        for (name, bytes) in examples() {
            let r = Resource::parse(bytes.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let patient = r.info().patient.clone().unwrap_or_else(|| "example".into());
            groups.entry(patient).or_default().push((name, bytes));
        }
        let mut total = 0;
        for (patient, files) in groups {
            let rec = record(&patient).await;
            let mut ids = Vec::new();
            for (name, bytes) in &files {
                let w = rec
                    .put(bytes.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let got = rec
                    .get(&w.target.resource_type, &w.target.id)
                    .await
                    .unwrap()
                    .and_then(|v| v.resource)
                    .unwrap_or_else(|| panic!("{name}: missing after put"));
                if Resource::parse(bytes.clone()).unwrap().id().is_some() {
                    assert_eq!(&got, bytes, "{name}: bytes changed");
                } else {
                    // An id was assigned: the same meaning plus the id.
                    let mut want: Value = serde_json::from_slice(bytes).unwrap();
                    want["id"] = Value::from(w.target.id.clone());
                    assert_eq!(serde_json::from_slice::<Value>(&got).unwrap(), want);
                }
                ids.push((name.clone(), w.target, got));
            }
            let export: Value =
                serde_json::from_slice(&rec.export_everything().await.unwrap()).unwrap();
            let entries = export["entry"].as_array().unwrap();
            for (name, target, stored) in &ids {
                let want: Value = serde_json::from_slice(stored).unwrap();
                let found = entries.iter().find(|e| {
                    e["resource"]["resourceType"] == target.resource_type.as_str()
                        && e["resource"]["id"] == target.id.as_str()
                });
                let found = found.unwrap_or_else(|| panic!("{name}: not exported"));
                // Several example files can share a type and id: the later wins.
                let last = ids.iter().rev().find(|(_, t, _)| t == target).unwrap();
                if std::ptr::eq(last, ids.iter().find(|(n, _, _)| n == name).unwrap()) {
                    assert_eq!(found["resource"], want, "{name}: meaning changed");
                }
            }
            total += files.len();
        }
        assert!(total >= 400);
    });
}

#[test]
fn decimals_and_timezones_survive_exactly() {
    block_on(async {
        let rec = record("p").await;
        let text = br#"{"resourceType":"Observation","id":"d","subject":{"reference":"Patient/p"},
  "effectiveDateTime":"2013-04-02T09:30:10+01:00",
  "valueQuantity":{"value":112.41600000000001,"unit":"mg"},"component":[{"valueQuantity":{"value":4.30}},{"valueInteger":100000000000000000000000}]}"#;
        rec.put(text.to_vec()).await.unwrap();
        let got = rec.get("Observation", "d").await.unwrap().unwrap();
        assert_eq!(got.resource.as_deref(), Some(&text[..]));
        let export = rec.export_everything().await.unwrap();
        let needle = b"112.41600000000001";
        assert!(export.windows(needle.len()).any(|w| w == needle));
        assert!(export.windows(4).any(|w| w == b"4.30"));
    });
}

#[test]
fn example_bundles_import() {
    block_on(async {
        let mut imported = 0;
        for (name, bytes) in examples() {
            if !name.starts_with("Bundle-") {
                continue;
            }
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            let ty = v["type"].as_str().unwrap_or("").to_owned();
            // Which patient the bundle is about: the first subject/patient.
            let mut patient = "example".to_owned();
            for e in v["entry"].as_array().into_iter().flatten() {
                let r = &e["resource"];
                if r["resourceType"] == "Patient" {
                    if let Some(id) = r["id"].as_str() {
                        patient = id.to_owned();
                        break;
                    }
                }
                for f in ["subject", "patient"] {
                    if let Some(s) = r[f]["reference"].as_str() {
                        if let Some(id) = s.strip_prefix("Patient/") {
                            patient = id.to_owned();
                        }
                    }
                }
            }
            let rec = record(&patient).await;
            let before = rec.view_version().await.unwrap();
            match rec.import_bundle(&bytes).await {
                Ok(done) => {
                    imported += 1;
                    for t in &done.written {
                        assert!(
                            rec.get(&t.resource_type, &t.id).await.unwrap().is_some(),
                            "{name}: {t} missing"
                        );
                    }
                }
                Err(e) => {
                    // Refused whole: nothing written, and the error is typed.
                    eprintln!("{name} ({ty}): {e}");
                    assert_eq!(
                        rec.view_version().await.unwrap(),
                        before,
                        "{name}: partial write"
                    );
                    assert!(
                        !matches!(
                            ty.as_str(),
                            "collection" | "document" | "transaction" | "batch"
                        ) || matches!(e, ehr_core::Error::Import(_)),
                        "{name}: {e:?}"
                    );
                }
            }
        }
        assert!(imported >= 5, "only {imported} example bundles imported");
    });
}
