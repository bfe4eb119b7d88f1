//! Several parties on one record over in-memory replication: the patient,
//! a doctor, a lab and a mirror. Grants reach every peer; writes inside a
//! grant are accepted everywhere; a write outside it is refused locally
//! (typed, nothing appended) and, when forced into the log anyway, rejected
//! by every peer alike; revocation stops a writer; all views converge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::consent::Denied;
use ehr_core::fhir::Coding;
use ehr_core::op::{Expect, Op, OpBody};
use ehr_core::{apply::Rejection, Error, Grant, Record, Role};
use hyperbee_rs::Range;
use hypercore_rs::MemoryStorage;
use std::sync::Arc;

async fn peer(key: Option<[u8; 32]>) -> Record {
    let b = Record::builder(Arc::new(MemoryStorage::new()));
    match key {
        None => b.create("p").await.unwrap(),
        Some(k) => b.join(k).await.unwrap(),
    }
}

fn connect(a: &Record, b: &Record) {
    let (x, y) = hypercore_rs::replication::duplex();
    let (a, b) = (a.clone(), b.clone());
    tokio::spawn(async move {
        let _ = a.replicate(x, true).await;
    });
    tokio::spawn(async move {
        let _ = b.replicate(y, false).await;
    });
}

async fn settle<F, Fut>(peers: &[&Record], mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..20_000 {
        for p in peers {
            p.update().await.unwrap();
        }
        if done().await {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("peers did not settle");
}

async fn dump(r: &Record) -> Vec<(Vec<u8>, Vec<u8>)> {
    r.base()
        .view(ehr_core::VIEW_NAME)
        .await
        .unwrap()
        .range(Range::all())
        .collect()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

async fn converged(peers: &[&Record]) -> bool {
    let first = dump(peers[0]).await;
    for p in &peers[1..] {
        if dump(p).await != first {
            return false;
        }
    }
    true
}

fn lab_obs(id: &str, cat: &str) -> Vec<u8> {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","status":"final","subject":{{"reference":"Patient/p"}},
"category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"{cat}"}}]}}],
"code":{{"coding":[{{"system":"http://loinc.org","code":"2345-7"}}]}},"effectiveDateTime":"2024-01-02","valueQuantity":{{"value":5.30}}}}"#
    )
    .into_bytes()
}

const CONDITION: &[u8] =
    br#"{"resourceType":"Condition","id":"flu","subject":{"reference":"Patient/p"},"onsetDateTime":"2024-01-01"}"#;

#[tokio::test]
async fn patient_doctor_lab_and_mirror_converge_under_consent() {
    let patient = peer(None).await;
    let doctor = peer(Some(patient.key())).await;
    let lab = peer(Some(patient.key())).await;
    let mirror = peer(Some(patient.key())).await;
    let all = [&patient, &doctor, &lab, &mirror];
    connect(&patient, &doctor);
    connect(&patient, &lab);
    connect(&doctor, &lab);
    connect(&patient, &mirror);

    // Not granted yet: refused with a typed error, nothing appended.
    assert!(matches!(
        doctor.put(CONDITION.to_vec()).await,
        Err(Error::Rejected(_))
    ));

    patient
        .grant(
            doctor.writer_key(),
            Grant::new(Role::Practitioner, &["patient/*.cruds"]).unwrap(),
        )
        .await
        .unwrap();
    patient
        .grant(
            lab.writer_key(),
            Grant::new(Role::Lab, &["patient/Observation.cu"])
                .unwrap()
                .with_categories(vec![Coding::new(None, "laboratory")]),
        )
        .await
        .unwrap();
    patient
        .grant(mirror.writer_key(), Grant::new(Role::Mirror, &[]).unwrap())
        .await
        .unwrap();
    settle(&all, || async {
        doctor.writable().await && lab.writable().await && doctor.patient_id() == "p"
    })
    .await;

    doctor.put(CONDITION.to_vec()).await.unwrap();
    lab.put(lab_obs("glucose", "laboratory")).await.unwrap();
    // Outside the lab's grant: refused locally, typed, nothing appended.
    let e = lab.put(CONDITION.to_vec()).await.unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Rejected(Rejection::Denied {
                denied: Denied::OutOfScope(_),
                ..
            })
        ),
        "{e:?}"
    );
    let e = lab.put(lab_obs("bp", "vital-signs")).await.unwrap_err();
    assert!(matches!(
        &e,
        Error::Rejected(Rejection::Denied {
            denied: Denied::Category,
            ..
        })
    ));
    // The mirror holds no write scope.
    assert!(mirror.put(lab_obs("m", "laboratory")).await.is_err());

    // A lab that skips its own check: every peer rejects the write alike.
    let forced = Op::new(
        1,
        OpBody::Put {
            resource: CONDITION.to_vec(),
            expect: Expect::Any,
        },
    );
    lab.base().append(forced.encode()).await.unwrap();
    settle(&all, || async { converged(&all).await }).await;
    for p in all {
        let rejected = p.rejected().await.unwrap();
        assert_eq!(rejected.len(), 1, "every peer records the forced write");
        assert_eq!(rejected[0].writer, lab.writer_key());
        let cond = p.get("Condition", "flu").await.unwrap().unwrap();
        assert_eq!(
            cond.author,
            doctor.writer_key(),
            "the doctor's version stands"
        );
        assert_eq!(cond.resource.as_deref(), Some(CONDITION));
        assert!(p.get("Observation", "glucose").await.unwrap().is_some());
    }

    // Revocation: the lab can no longer write, on any peer.
    patient.revoke(lab.writer_key()).await.unwrap();
    settle(&all, || async {
        !lab.writable().await && converged(&all).await
    })
    .await;
    assert!(lab.put(lab_obs("late", "laboratory")).await.is_err());
    let (_, revoked) = doctor.grant_of(&lab.writer_key()).await.unwrap().unwrap();
    assert!(revoked);

    // An attachment written by the patient, read by the doctor from the
    // patient's drive and checked against its hash.
    let scan = vec![7u8; 200_000];
    let a = patient.put_attachment(&scan).await.unwrap();
    let doc = format!(
        r#"{{"resourceType":"DocumentReference","id":"scan","status":"current","subject":{{"reference":"Patient/p"}},"content":[{{"attachment":{{"contentType":"application/dicom","url":"{}","size":{}}}}}]}}"#,
        a.url(),
        a.size
    );
    patient.put(doc.into_bytes()).await.unwrap();
    settle(&all, || async { converged(&all).await }).await;
    let got = doctor
        .get("DocumentReference", "scan")
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&got.resource.unwrap()).unwrap();
    let url = v["content"][0]["attachment"]["url"].as_str().unwrap();
    let size = v["content"][0]["attachment"]["size"].as_u64().unwrap();
    let wanted = ehr_core::Attachment::parse(url, size).unwrap();
    let bytes = doctor
        .get_attachment(&wanted, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(bytes, scan);
    // A reference whose size (or hash) lies is refused.
    let mut lying = wanted.clone();
    lying.size += 1;
    assert!(matches!(
        doctor
            .get_attachment(&lying, std::time::Duration::from_secs(10))
            .await,
        Err(Error::AttachmentMismatch(_))
    ));

    // The mirror holds the whole record, byte for byte.
    assert_eq!(
        mirror.export_everything().await.unwrap(),
        patient.export_everything().await.unwrap()
    );
}

#[tokio::test]
async fn concurrent_edits_converge_with_a_conflict_marker() {
    let patient = peer(None).await;
    let doctor = peer(Some(patient.key())).await;
    let all = [&patient, &doctor];
    connect(&patient, &doctor);
    patient
        .grant(
            doctor.writer_key(),
            Grant::new(Role::Practitioner, &["patient/*.cruds"]).unwrap(),
        )
        .await
        .unwrap();
    patient.put(CONDITION.to_vec()).await.unwrap();
    settle(&all, || async {
        doctor.writable().await && doctor.get("Condition", "flu").await.unwrap().is_some()
    })
    .await;
    // Both edit version 1 without seeing each other's edit.
    let a = ehr_core::fhir::Resource::parse(CONDITION.replace_last("2024-01-01", "2024-01-03"))
        .unwrap();
    let b = ehr_core::fhir::Resource::parse(CONDITION.replace_last("2024-01-01", "2024-01-04"))
        .unwrap();
    patient.put_expecting(a, Expect::Version(1)).await.unwrap();
    doctor.put_expecting(b, Expect::Version(1)).await.unwrap();
    settle(&all, || async {
        converged(&all).await
            && patient
                .head("Condition", "flu")
                .await
                .unwrap()
                .unwrap()
                .version
                == 3
    })
    .await;
    for p in all {
        let h = p.head("Condition", "flu").await.unwrap().unwrap();
        assert_eq!(h.conflicts, vec![2], "both peers show the conflict");
        assert_eq!(p.history("Condition", "flu").await.unwrap().len(), 3);
    }
    // A write based on the latest version clears it everywhere.
    doctor.put(CONDITION.to_vec()).await.unwrap();
    settle(&all, || async { converged(&all).await }).await;
    for p in all {
        let h = p.head("Condition", "flu").await.unwrap().unwrap();
        assert_eq!((h.version, h.conflicts), (4, vec![]));
    }
}

trait ReplaceLast {
    fn replace_last(&self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplaceLast for &[u8] {
    fn replace_last(&self, from: &str, to: &str) -> Vec<u8> {
        String::from_utf8_lossy(self).replace(from, to).into_bytes()
    }
}

/// Connects two records until the returned guard is dropped (a partition).
fn link(a: &Record, b: &Record) -> Vec<tokio::task::JoinHandle<()>> {
    let (x, y) = hypercore_rs::replication::duplex();
    let (a, b) = (a.clone(), b.clone());
    vec![
        tokio::spawn(async move {
            let _ = a.replicate(x, true).await;
        }),
        tokio::spawn(async move {
            let _ = b.replicate(y, false).await;
        }),
    ]
}

#[tokio::test]
async fn offline_writes_partitions_and_a_restart_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = || Arc::new(hypercore_rs::DiskStorage::open(dir.path()).unwrap());
    let patient = Record::builder(disk()).create("p").await.unwrap();
    let doctor = peer(Some(patient.key())).await;
    let lab = peer(Some(patient.key())).await;
    let mut links = link(&patient, &doctor);
    links.extend(link(&patient, &lab));
    patient
        .grant(
            doctor.writer_key(),
            Grant::new(Role::Practitioner, &["patient/*.cruds"]).unwrap(),
        )
        .await
        .unwrap();
    patient
        .grant(
            lab.writer_key(),
            Grant::new(Role::Lab, &["patient/Observation.c"]).unwrap(),
        )
        .await
        .unwrap();
    settle(&[&patient, &doctor, &lab], || async {
        doctor.writable().await && lab.writable().await
    })
    .await;

    // Partition: everyone writes offline.
    for l in links.drain(..) {
        l.abort();
        let _ = l.await;
    }
    for i in 0..5 {
        patient
            .put(lab_obs(&format!("pt{i}"), "vital-signs"))
            .await
            .unwrap();
        doctor
            .put(lab_obs(&format!("dr{i}"), "laboratory"))
            .await
            .unwrap();
        lab.put(lab_obs(&format!("lb{i}"), "laboratory"))
            .await
            .unwrap();
    }
    // The patient's device restarts while partitioned.
    drop(patient);
    let patient = Record::builder(disk()).open().await.unwrap();
    assert_eq!(
        patient
            .get("Observation", "pt4")
            .await
            .unwrap()
            .map(|v| v.version),
        Some(1)
    );

    // Heal: doctor and lab meet first, then the patient joins them.
    links.extend(link(&doctor, &lab));
    settle(&[&doctor, &lab], || async {
        converged(&[&doctor, &lab]).await
    })
    .await;
    links.extend(link(&patient, &doctor));
    let all = [&patient, &doctor, &lab];
    settle(&all, || async {
        converged(&all).await
            && patient.get("Observation", "lb4").await.unwrap().is_some()
            && lab.get("Observation", "pt4").await.unwrap().is_some()
    })
    .await;
    for p in all {
        for who in ["pt", "dr", "lb"] {
            for i in 0..5 {
                assert!(
                    p.get("Observation", &format!("{who}{i}"))
                        .await
                        .unwrap()
                        .is_some(),
                    "{who}{i} lost"
                );
            }
        }
        assert!(p.rejected().await.unwrap().is_empty());
    }
    for l in links {
        l.abort();
    }
}

#[tokio::test]
async fn a_second_owner_device_can_grant_and_revoke() {
    let laptop = peer(None).await;
    let phone = peer(Some(laptop.key())).await;
    let doctor = peer(Some(laptop.key())).await;
    let all = [&laptop, &phone, &doctor];
    connect(&laptop, &phone);
    connect(&phone, &doctor);
    connect(&laptop, &doctor);
    laptop
        .grant(phone.writer_key(), Grant::owner())
        .await
        .unwrap();
    settle(&all, || async {
        phone.writable().await && phone.patient_id() == "p"
    })
    .await;
    // The phone (an owner too) grants the doctor; the doctor writes.
    phone
        .grant(
            doctor.writer_key(),
            Grant::new(Role::Practitioner, &["patient/Condition.c"]).unwrap(),
        )
        .await
        .unwrap();
    settle(&all, || async { doctor.writable().await }).await;
    doctor.put(CONDITION.to_vec()).await.unwrap();
    // A practitioner cannot grant.
    let e = doctor
        .grant([9; 32], Grant::new(Role::Lab, &["patient/*.c"]).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        Error::Rejected(Rejection::Denied {
            denied: Denied::NotOwner,
            ..
        })
    ));
    // Nor can the phone revoke the record's first owner.
    let e = phone.revoke(laptop.writer_key()).await.unwrap_err();
    assert!(
        matches!(e, Error::Rejected(Rejection::Membership(_))),
        "{e:?}"
    );
    settle(&all, || async {
        converged(&all).await && laptop.get("Condition", "flu").await.unwrap().is_some()
    })
    .await;
    // The phone revokes the doctor; everyone sees it.
    phone.revoke(doctor.writer_key()).await.unwrap();
    settle(&all, || async {
        !doctor.writable().await && converged(&all).await
    })
    .await;
    let writers = laptop.base().writers().await;
    assert!(writers
        .iter()
        .any(|w| w.key == phone.writer_key() && w.indexer && !w.removed));
    assert!(writers
        .iter()
        .any(|w| w.key == doctor.writer_key() && w.removed));
}
