//! A malicious provider with broad write scope tries to inject scope keys:
//! a key wrap it writes itself is ignored by every device (only wraps
//! written by an unrevoked owner device are trusted), and a resource it
//! seals under its own key does not open with the real scope key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::keys::seal;
use ehr_core::scope_crypto::{ScopeKey, SealError};
use ehr_core::{Error, Grant, KeyWrap, Record, Role, SecureRecord};
use hypercore_rs::{MemoryStorage, OsEntropy};
use std::sync::Arc;

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

#[tokio::test]
async fn provider_written_key_wraps_are_ignored() {
    let patient = SecureRecord::new(
        Record::builder(Arc::new(MemoryStorage::new()))
            .create("p")
            .await
            .unwrap(),
    );
    let key = patient.record().key();
    let join = || async {
        SecureRecord::new(
            Record::builder(Arc::new(MemoryStorage::new()))
                .join(key)
                .await
                .unwrap(),
        )
    };
    let mallory = join().await;
    let doctor = join().await;
    connect(patient.record(), mallory.record());
    connect(patient.record(), doctor.record());
    for w in [mallory.record().writer_key(), doctor.record().writer_key()] {
        patient
            .record()
            .grant(
                w,
                Grant::new(Role::Practitioner, &["patient/*.cruds"]).unwrap(),
            )
            .await
            .unwrap();
    }
    patient
        .share(
            doctor.identity(),
            Some(doctor.record().writer_key()),
            &["default"],
        )
        .await
        .unwrap();
    patient
        .put(
            "default",
            br#"{"resourceType":"Observation","id":"real","subject":{"reference":"Patient/p"}}"#
                .to_vec(),
        )
        .await
        .unwrap();
    for _ in 0..20_000 {
        for r in [&patient, &mallory, &doctor] {
            r.record().update().await.unwrap();
        }
        if mallory.record().writable().await
            && doctor
                .record()
                .get("Observation", "real")
                .await
                .unwrap()
                .is_some()
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Mallory forges a wrap of her own "default" key (epoch 5) to the doctor
    // and to herself, and writes a resource under it.
    let fake = ScopeKey::generate("default", 5, &OsEntropy).unwrap();
    for to in [doctor.identity(), mallory.identity()] {
        let wrap = KeyWrap {
            recipient: to,
            writer: None,
            scope: "default".into(),
            epoch: 5,
            sealed: seal(&to, &fake.to_bytes(), &OsEntropy).unwrap(),
        };
        mallory
            .record()
            .put(wrap.to_resource("p").to_string().into_bytes())
            .await
            .unwrap();
    }
    let shell = ehr_core::scope_crypto::seal_resource(
        &fake,
        br#"{"resourceType":"Observation","id":"planted","subject":{"reference":"Patient/p"}}"#,
        &OsEntropy,
    )
    .unwrap();
    mallory.record().put(shell).await.unwrap();
    for _ in 0..20_000 {
        for r in [&patient, &mallory, &doctor] {
            r.record().update().await.unwrap();
        }
        if doctor
            .record()
            .get("Observation", "planted")
            .await
            .unwrap()
            .is_some()
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Neither the doctor nor Mallory herself accepts the forged wrap.
    doctor.refresh_keys().await.unwrap();
    assert!(doctor.keyring().get("default", 5).is_none());
    assert_eq!(mallory.refresh_keys().await.unwrap(), 0);
    assert!(matches!(
        doctor.get("Observation", "planted").await,
        Err(Error::Sealed(SealError::NoKey { epoch: 5, .. }))
    ));
    // Mallory never got the real key: the real resource stays closed to her.
    assert!(matches!(
        mallory.get("Observation", "real").await,
        Err(Error::Sealed(SealError::NoKey { .. }))
    ));
    assert!(doctor.get("Observation", "real").await.unwrap().is_some());
}
