//! Read scopes enforced by encryption, over in-memory replication with
//! on-disk storage: a doctor holding the `default` scope, a lab holding
//! `default` and `lab`, a blind mirror holding nothing. Each device's own
//! disk is searched for plaintext. Then the doctor is revoked: every scope
//! it held rotates, and what is written afterwards is unreadable from its
//! own storage while the remaining grantee still reads it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::scope_crypto::SealError;
use ehr_core::{Error, Grant, Record, Role, SecureRecord};
use hypercore_rs::DiskStorage;
use std::path::Path;
use std::sync::Arc;

async fn peer(dir: &Path, key: Option<[u8; 32]>) -> SecureRecord {
    let b = Record::builder(Arc::new(DiskStorage::open(dir).unwrap()));
    let r = match key {
        None => b.create("p").await.unwrap(),
        Some(k) => b.join(k).await.unwrap(),
    };
    SecureRecord::new(r)
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

async fn settle<F, Fut>(peers: &[&SecureRecord], mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..20_000 {
        for p in peers {
            p.record().update().await.unwrap();
        }
        if done().await {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("peers did not settle");
}

fn obs(id: &str, secret: &str) -> Vec<u8> {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","status":"final","subject":{{"reference":"Patient/p"}},"code":{{"coding":[{{"system":"http://loinc.org","code":"2345-7"}}]}},"effectiveDateTime":"2024-01-02","valueQuantity":{{"value":5.30}},"note":[{{"text":"{secret}"}}]}}"#
    )
    .into_bytes()
}

/// Every byte this device keeps on disk.
fn disk_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.extend(std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn has(r: &SecureRecord, id: &str) -> bool {
    r.record().get("Observation", id).await.unwrap().is_some()
}

#[tokio::test]
async fn scopes_mirror_and_revocation_from_each_devices_own_disk() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let patient = peer(dirs[0].path(), None).await;
    let key = patient.record().key();
    let doctor = peer(dirs[1].path(), Some(key)).await;
    let lab = peer(dirs[2].path(), Some(key)).await;
    let mirror = peer(dirs[3].path(), Some(key)).await;
    let all = [&patient, &doctor, &lab, &mirror];
    connect(patient.record(), doctor.record());
    connect(patient.record(), lab.record());
    connect(patient.record(), mirror.record());

    let p = patient.record();
    p.grant(
        doctor.record().writer_key(),
        Grant::new(Role::Practitioner, &["patient/*.cruds"]).unwrap(),
    )
    .await
    .unwrap();
    p.grant(
        lab.record().writer_key(),
        Grant::new(Role::Lab, &["patient/Observation.cu"]).unwrap(),
    )
    .await
    .unwrap();
    p.grant(
        mirror.record().writer_key(),
        Grant::new(Role::Mirror, &[]).unwrap(),
    )
    .await
    .unwrap();
    patient
        .share(
            doctor.identity(),
            Some(doctor.record().writer_key()),
            &["default"],
        )
        .await
        .unwrap();
    patient
        .share(
            lab.identity(),
            Some(lab.record().writer_key()),
            &["default", "lab"],
        )
        .await
        .unwrap();
    patient
        .put("default", obs("general", "SECRET-GENERAL"))
        .await
        .unwrap();
    patient
        .put("lab", obs("labonly", "SECRET-LABONLY"))
        .await
        .unwrap();
    settle(&all, || async {
        doctor.record().writable().await
            && has(&doctor, "labonly").await
            && has(&lab, "labonly").await
            && has(&mirror, "labonly").await
    })
    .await;

    // The doctor reads its scope, not the lab's.
    assert_eq!(
        doctor.get("Observation", "general").await.unwrap(),
        Some(obs("general", "SECRET-GENERAL"))
    );
    assert!(matches!(
        doctor.get("Observation", "labonly").await,
        Err(Error::Sealed(SealError::NoKey { .. }))
    ));
    // The lab reads both; a grantee can write under a scope it holds.
    assert_eq!(
        lab.get("Observation", "labonly").await.unwrap(),
        Some(obs("labonly", "SECRET-LABONLY"))
    );
    doctor
        .put("default", obs("bydoctor", "SECRET-BYDOCTOR"))
        .await
        .unwrap();
    assert!(matches!(
        doctor.put("lab", obs("x", "y")).await,
        Err(Error::Sealed(SealError::NoKey { .. }))
    ));
    // Blinded search: key holders find by code; the shells hold no code.
    let found = lab
        .search_code("Observation", "http://loinc.org|2345-7", 50)
        .await
        .unwrap();
    assert_eq!(found.len(), 2, "general and labonly");

    // The mirror stores and serves everything but reads nothing.
    settle(&all, || async { has(&mirror, "bydoctor").await }).await;
    for id in ["general", "labonly", "bydoctor"] {
        assert!(matches!(
            mirror.get("Observation", id).await,
            Err(Error::Sealed(SealError::NoKey { .. }))
        ));
    }
    assert_eq!(mirror.refresh_keys().await.unwrap(), 0);

    // Revoke the doctor: every scope it held (default) rotates; lab stays.
    let rotation = patient.revoke(doctor.record().writer_key()).await.unwrap();
    assert_eq!(rotation.scopes, vec![("default".to_owned(), 1)]);
    assert_eq!(rotation.wraps, 2, "patient and lab");
    patient
        .put("default", obs("after", "SECRET-AFTER"))
        .await
        .unwrap();
    patient
        .put("lab", obs("after-lab", "SECRET-AFTERLAB"))
        .await
        .unwrap();
    settle(&all, || async {
        has(&doctor, "after-lab").await
            && has(&lab, "after-lab").await
            && has(&mirror, "after-lab").await
    })
    .await;
    // The doctor has the ciphertext but no key for epoch 1.
    assert!(matches!(
        doctor.get("Observation", "after").await,
        Err(Error::Sealed(SealError::NoKey { epoch: 1, .. }))
    ));
    // What it had before cannot be recalled (documented).
    assert!(doctor.get("Observation", "general").await.is_ok());
    // The remaining grantee reads the new epoch.
    assert_eq!(
        lab.get("Observation", "after").await.unwrap(),
        Some(obs("after", "SECRET-AFTER"))
    );
    // A revoked device cannot write under the old key either.
    assert!(doctor.put("default", obs("late", "z")).await.is_err());

    for r in &all {
        r.record().flush().await.unwrap();
    }
    // Each device's own disk: sealed shells present, no plaintext at all.
    for (i, dir) in dirs.iter().enumerate() {
        let bytes = disk_bytes(dir.path());
        assert!(
            contains(&bytes, "urn:ehr-core:sealed"),
            "device {i} holds the shells"
        );
        for secret in [
            "SECRET-GENERAL",
            "SECRET-LABONLY",
            "SECRET-BYDOCTOR",
            "SECRET-AFTER",
            "2345-7",
        ] {
            assert!(!contains(&bytes, secret), "device {i} disk holds {secret}");
        }
    }
}
