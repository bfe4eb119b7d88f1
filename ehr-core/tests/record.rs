//! Record behaviour: versions and history, tombstones, conflict markers,
//! search against a simple model, the summary, history Bundles, export then
//! import into a fresh record, and recovery after a crash between the log
//! append and the view update.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::fhir::{parse_fhir_date, Resource};
use ehr_core::op::Expect;
use ehr_core::{ManualClock, Query, Record};
use futures::executor::block_on;
use hypercore_rs::{DiskStorage, MemoryStorage, SeededEntropy};
use proptest::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

async fn record_at(clock: Arc<ManualClock>) -> Record {
    Record::builder(Arc::new(MemoryStorage::new()))
        .clock(clock)
        .entropy(Arc::new(SeededEntropy::new(7)))
        .create("p")
        .await
        .unwrap()
}

fn obs(id: &str, code: &str, date: &str, cat: &str, value: &str) -> Vec<u8> {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","status":"final",
"category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"{cat}"}}]}}],
"code":{{"coding":[{{"system":"http://loinc.org","code":"{code}"}}]}},
"subject":{{"reference":"Patient/p"}},"encounter":{{"reference":"Encounter/e-{cat}"}},
"effectiveDateTime":"{date}","valueQuantity":{{"value":{value}}}}}"#
    )
    .into_bytes()
}

#[test]
fn history_tombstones_and_history_bundle() {
    block_on(async {
        let clock = Arc::new(ManualClock::new(1_000));
        let rec = record_at(clock.clone()).await;
        let v1 = obs("o", "1-1", "2020-01-01", "laboratory", "1.0");
        let v2 = obs("o", "1-1", "2020-01-01", "laboratory", "2.00");
        assert_eq!(rec.put(v1.clone()).await.unwrap().version, 1);
        clock.set(2_000);
        assert_eq!(rec.put(v2.clone()).await.unwrap().version, 2);
        clock.set(3_000);
        assert_eq!(rec.delete("Observation", "o").await.unwrap().version, 3);
        assert!(rec.get("Observation", "o").await.unwrap().is_none());
        let h = rec.history("Observation", "o").await.unwrap();
        assert_eq!(
            h.iter()
                .map(|v| (v.version, v.time, v.resource.clone()))
                .collect::<Vec<_>>(),
            vec![
                (3, 3_000, None),
                (2, 2_000, Some(v2.clone())),
                (1, 1_000, Some(v1))
            ]
        );
        assert!(h.iter().all(|v| v.author == rec.writer_key()));
        // Deleted: out of search and export, still in history.
        let page = rec.search(&Query::new("Observation")).await.unwrap();
        assert!(page.entries.is_empty());
        let hb: Value =
            serde_json::from_slice(&rec.history_bundle("Observation", "o").await.unwrap()).unwrap();
        assert_eq!(hb["type"], "history");
        assert_eq!(hb["entry"][0]["request"]["method"], "DELETE");
        assert_eq!(hb["entry"][1]["response"]["etag"], "W/\"2\"");
        assert_eq!(
            hb["entry"][2]["response"]["lastUpdated"],
            "1970-01-01T00:00:01.000Z"
        );
        assert_eq!(
            hb["entry"][1]["resource"],
            serde_json::from_slice::<Value>(&v2).unwrap()
        );
        // Re-created after a delete: versions continue.
        assert_eq!(
            rec.put(obs("o", "1-1", "2020", "laboratory", "3"))
                .await
                .unwrap()
                .version,
            4
        );
    });
}

#[test]
fn concurrent_edits_are_marked_until_a_newer_write() {
    block_on(async {
        let rec = record_at(Arc::new(ManualClock::new(5))).await;
        rec.put(obs("c", "1", "2020", "x", "1")).await.unwrap();
        // Two edits based on version 1 (as two offline devices would do).
        let a = Resource::parse(obs("c", "1", "2020", "x", "2")).unwrap();
        let b = Resource::parse(obs("c", "1", "2020", "x", "3")).unwrap();
        rec.put_expecting(a, Expect::Version(1)).await.unwrap();
        rec.put_expecting(b.clone(), Expect::Version(1))
            .await
            .unwrap();
        let head = rec.head("Observation", "c").await.unwrap().unwrap();
        assert_eq!((head.version, head.conflicts.clone()), (3, vec![2]));
        // The later one in linear order wins; both are in history.
        let got = rec.get("Observation", "c").await.unwrap().unwrap();
        assert_eq!(got.resource.as_deref(), Some(b.bytes()));
        assert_eq!(rec.history("Observation", "c").await.unwrap().len(), 3);
        // A create racing an existing resource is a conflict too.
        let c = Resource::parse(obs("c", "1", "2020", "x", "4")).unwrap();
        rec.put_expecting(c, Expect::Absent).await.unwrap();
        let head = rec.head("Observation", "c").await.unwrap().unwrap();
        assert_eq!(head.conflicts, vec![2, 3]);
        // A write based on the latest version clears the marker.
        rec.put(obs("c", "1", "2020", "x", "5")).await.unwrap();
        let head = rec.head("Observation", "c").await.unwrap().unwrap();
        assert_eq!((head.version, head.conflicts), (5, vec![]));
    });
}

#[derive(Debug, Clone)]
struct Spec {
    id: u8,
    code: u8,
    cat: u8,
    day: u8,
    delete: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (0u8..24, 0u8..3, 0u8..2, 0u8..20, prop::bool::weighted(0.15)).prop_map(
        |(id, code, cat, day, delete)| Spec {
            id,
            code,
            cat,
            day,
            delete,
        },
    )
}

const CATS: [&str; 2] = ["laboratory", "vital-signs"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Search by code, category, encounter and date range, with paging,
    /// returns exactly what a filter over a map returns, newest first.
    #[test]
    fn search_matches_a_model(ops in prop::collection::vec(spec(), 1..60), page in 1usize..7) {
        block_on(async {
            let rec = record_at(Arc::new(ManualClock::new(1))).await;
            // id -> (code, cat, day)
            let mut model: BTreeMap<String, (u8, u8, u8)> = BTreeMap::new();
            for s in &ops {
                let id = format!("o{}", s.id);
                if s.delete {
                    let r = rec.delete("Observation", &id).await;
                    prop_assert_eq!(r.is_ok(), model.remove(&id).is_some());
                } else {
                    let date = format!("2020-01-{:02}", s.day + 1);
                    rec.put(obs(&id, &s.code.to_string(), &date, CATS[s.cat as usize], "1")).await.unwrap();
                    model.insert(id, (s.code, s.cat, s.day));
                }
            }
            let day_ms = |d: u8| parse_fhir_date(&format!("2020-01-{:02}", d + 1)).unwrap();
            for code in 0u8..3 {
                for cat in [None, Some(0u8), Some(1)] {
                    for (from, to) in [(None, None), (Some(3u8), Some(12u8)), (Some(10), None)] {
                        let mut want: Vec<(u8, String)> = model
                            .iter()
                            .filter(|(_, (c, k, d))| {
                                *c == code
                                    && cat.is_none_or(|x| x == *k)
                                    && from.is_none_or(|f| *d >= f)
                                    && to.is_none_or(|t| *d < t)
                            })
                            .map(|(id, (_, _, d))| (*d, id.clone()))
                            .collect();
                        want.sort();
                        want.reverse();
                        let mut q = Query::new("Observation")
                            .code(&format!("http://loinc.org|{code}"))
                            .dates(from.map(day_ms), to.map(day_ms))
                            .limit(page);
                        if let Some(k) = cat {
                            q = q.category(&format!(
                                "http://terminology.hl7.org/CodeSystem/observation-category|{}",
                                CATS[k as usize]
                            ));
                        }
                        let mut got = Vec::new();
                        loop {
                            let p = rec.search(&q).await.unwrap();
                            prop_assert!(p.entries.len() <= page);
                            got.extend(p.entries.into_iter().map(|v| v.target.id));
                            match p.next {
                                Some(c) => q = q.clone().after(c),
                                None => break,
                            }
                        }
                        let want_ids: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
                        prop_assert_eq!(got, want_ids);
                    }
                }
            }
            // A bare code matches whatever the system (a filtered scan).
            for code in 0u8..3 {
                let bare = rec
                    .search(&Query::new("Observation").code(&code.to_string()).limit(1000))
                    .await
                    .unwrap();
                prop_assert_eq!(bare.entries.len(), model.values().filter(|v| v.0 == code).count());
            }
            let bare_cat = rec
                .search(&Query::new("Observation").category("vital-signs").limit(1000))
                .await
                .unwrap();
            prop_assert_eq!(bare_cat.entries.len(), model.values().filter(|v| v.1 == 1).count());
            // By encounter (the category's) alone, and by author.
            let enc = rec.search(&Query::new("Observation").encounter("e-laboratory").limit(1000)).await.unwrap();
            prop_assert_eq!(enc.entries.len(), model.values().filter(|v| v.1 == 0).count());
            let mine = rec.search(&Query::new("Observation").author(rec.writer_key()).limit(1000)).await.unwrap();
            prop_assert_eq!(mine.entries.len(), model.len());
            Ok(())
        })?;
    }
}

#[test]
fn summary_and_export_import_round_trip() {
    block_on(async {
        let rec = record_at(Arc::new(ManualClock::new(1))).await;
        let sub = r#""subject":{"reference":"Patient/p"}"#;
        let pat = r#""patient":{"reference":"Patient/p"}"#;
        for r in [
            r#"{"resourceType":"Patient","id":"p","birthDate":"1970-01-01"}"#.to_string(),
            format!(r#"{{"resourceType":"AllergyIntolerance","id":"a",{pat}}}"#),
            format!(r#"{{"resourceType":"MedicationStatement","id":"m",{sub}}}"#),
            format!(r#"{{"resourceType":"MedicationRequest","id":"m2",{sub}}}"#),
            format!(r#"{{"resourceType":"Condition","id":"c",{sub}}}"#),
            format!(r#"{{"resourceType":"Condition","id":"gone",{sub}}}"#),
            format!(r#"{{"resourceType":"Immunization","id":"i",{pat}}}"#),
        ] {
            rec.put(r.into_bytes()).await.unwrap();
        }
        rec.delete("Condition", "gone").await.unwrap();
        let s = rec.summary().await.unwrap();
        assert_eq!(
            (
                s.allergies.len(),
                s.medications.len(),
                s.conditions.len(),
                s.immunizations.len()
            ),
            (1, 2, 1, 1)
        );
        let export = rec.export_everything().await.unwrap();
        let v: Value = serde_json::from_slice(&export).unwrap();
        assert_eq!(v["total"], 6);
        assert_eq!(v["entry"][0]["resource"]["resourceType"], "Patient");
        // The export imports into a fresh record of the same patient.
        let other = record_at(Arc::new(ManualClock::new(1))).await;
        let done = other.import_bundle(&export).await.unwrap();
        assert_eq!(done.written.len(), 6);
        assert_eq!(other.export_everything().await.unwrap(), export);
    });
}

#[test]
fn reopen_keeps_everything_and_create_refuses_existing() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let storage = || Arc::new(DiskStorage::open(dir.path()).unwrap());
        let key = {
            let rec = Record::builder(storage()).create("p").await.unwrap();
            rec.put(obs("a", "1", "2020", "x", "1")).await.unwrap();
            rec.put(obs("a", "1", "2020", "x", "2")).await.unwrap();
            rec.key()
        };
        let rec = Record::builder(storage()).open().await.unwrap();
        assert_eq!(rec.patient_id(), "p");
        assert_eq!(rec.key(), key);
        assert_eq!(rec.history("Observation", "a").await.unwrap().len(), 2);
        rec.put(obs("b", "1", "2021", "x", "2")).await.unwrap();
        drop(rec);
        assert!(matches!(
            Record::builder(storage()).create("p").await,
            Err(ehr_core::Error::Exists)
        ));
        let rec = Record::builder(storage()).open().await.unwrap();
        assert!(rec.get("Observation", "b").await.unwrap().is_some());
        drop(rec);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            Record::builder(Arc::new(DiskStorage::open(empty.path()).unwrap()))
                .open()
                .await,
            Err(ehr_core::Error::NoRecord)
        ));
    });
}
