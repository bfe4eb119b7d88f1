//! A record created sealed: a malicious provider that bypasses
//! `SecureRecord` and appends clear content straight to its log (a clear
//! resource, a shell with an extra clear field, a clear "control" resource,
//! an import with one clear entry) is rejected in `apply`, the same on
//! every peer, and the rejections are listed; sealed writes pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::apply::Rejection;
use ehr_core::op::{Expect, ImportOp, Op, OpBody};
use ehr_core::{Error, Grant, Record, Role, SecureRecord};
use hypercore_rs::OsEntropy;

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

const CLEAR: &[u8] = br#"{"resourceType":"Observation","id":"clear","subject":{"reference":"Patient/p"},"note":[{"text":"HIV positive"}]}"#;
const SEALED: &[u8] = br#"{"resourceType":"Observation","id":"ok","subject":{"reference":"Patient/p"},"meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}]},"category":[{"coding":[{"code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]},"effectivePeriod":{"start":"2024-01-01"},"note":[{"text":"fine"}]}"#;

async fn pump(peers: &[&Record], done: impl AsyncFn() -> bool) {
    for _ in 0..20_000 {
        for r in peers {
            r.update().await.unwrap();
        }
        if done().await {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("no sync");
}

fn clear_rejections(r: &[ehr_core::RejectedWrite]) -> usize {
    r.iter()
        .filter(|r| matches!(r.rejection, Rejection::Clear { .. }))
        .count()
}

#[tokio::test]
async fn clear_writes_by_a_provider_are_rejected_on_every_peer() {
    let patient = SecureRecord::create_sealed(Record::in_memory(), "p")
        .await
        .unwrap();
    assert!(patient.record().is_sealed().await.unwrap());
    let key = patient.record().key();
    let mallory = SecureRecord::new(Record::in_memory().join(key).await.unwrap());
    let mirror = Record::in_memory().join(key).await.unwrap();
    connect(patient.record(), mallory.record());
    connect(patient.record(), &mirror);
    patient
        .record()
        .grant(
            mallory.record().writer_key(),
            Grant::new(Role::Practitioner, &["patient/*.cruds"]).unwrap(),
        )
        .await
        .unwrap();
    patient
        .share(
            mallory.identity(),
            Some(mallory.record().writer_key()),
            &["default"],
        )
        .await
        .unwrap();
    let peers = [patient.record(), mallory.record(), &mirror];
    pump(&peers, async || {
        mallory.record().writable().await && mallory.record().is_sealed().await.unwrap()
    })
    .await;

    // The honest path: sealed writes are accepted everywhere.
    mallory.put("default", SEALED.to_vec()).await.unwrap();
    // Through the honest client a clear put is refused before it is appended.
    let e = mallory.record().put(CLEAR.to_vec()).await.unwrap_err();
    assert!(matches!(e, Error::Rejected(Rejection::Clear { .. })), "{e}");

    // Bypassing the client: ops appended straight to the log.
    mallory.refresh_keys().await.unwrap();
    let k = mallory.keyring().current("default").unwrap().clone();
    let shell = ehr_core::scope_crypto::seal_resource(
        &k,
        br#"{"resourceType":"Observation","id":"shell","subject":{"reference":"Patient/p"}}"#,
        &OsEntropy,
    )
    .unwrap();
    let mut with_note: serde_json::Value = serde_json::from_slice(&shell).unwrap();
    with_note["note"] = serde_json::json!([{"text": "in clear"}]);
    let control = br#"{"resourceType":"Basic","id":"ctl","subject":{"reference":"Patient/p"},"code":{"coding":[{"system":"urn:ehr-core:keywrap","code":"x"}]},"extension":[{"url":"urn:x","valueString":"secret"}]}"#;
    let put = |r: Vec<u8>| OpBody::Put {
        resource: r,
        expect: Expect::Any,
    };
    let ops = [
        put(CLEAR.to_vec()),
        put(serde_json::to_vec(&with_note).unwrap()),
        put(control.to_vec()),
        OpBody::Import {
            entries: vec![
                ImportOp::Put {
                    resource: shell.clone(),
                },
                ImportOp::Put {
                    resource: CLEAR.to_vec(),
                },
            ],
        },
        OpBody::RequireSealed,
    ];
    for body in ops {
        mallory
            .record()
            .base()
            .append(Op::new(1, body).encode())
            .await
            .unwrap();
    }
    mallory.record().flush().await.unwrap();
    // A clear write by the owner itself is refused too.
    assert!(patient.record().put(CLEAR.to_vec()).await.is_err());

    pump(&peers, async || {
        for r in [patient.record(), &mirror] {
            if r.rejected().await.unwrap().len() < 5
                || r.get("Observation", "ok").await.unwrap().is_none()
            {
                return false;
            }
        }
        true
    })
    .await;
    let on_patient = patient.record().rejected().await.unwrap();
    let by_mallory: Vec<_> = on_patient
        .iter()
        .filter(|r| r.writer == mallory.record().writer_key())
        .cloned()
        .collect();
    assert_eq!(clear_rejections(&by_mallory), 4, "{by_mallory:?}");
    assert!(by_mallory
        .iter()
        .any(|r| matches!(r.rejection, Rejection::Clear { entry: Some(1), .. })));
    assert!(by_mallory
        .iter()
        .any(|r| matches!(r.rejection, Rejection::Denied { .. })));
    // Identical on every peer.
    assert_eq!(mirror.rejected().await.unwrap(), on_patient);
    assert_eq!(mallory.record().rejected().await.unwrap(), on_patient);
    for r in peers {
        for id in ["clear", "shell"] {
            assert!(r.get("Observation", id).await.unwrap().is_none());
        }
        assert!(r.get("Basic", "ctl").await.unwrap().is_none());
        assert!(r.get("Observation", "ok").await.unwrap().is_some());
    }
    assert_eq!(
        patient.get("Observation", "ok").await.unwrap().as_deref(),
        Some(SEALED)
    );
}

#[tokio::test]
async fn records_not_marked_sealed_accept_clear_writes() {
    let r = Record::in_memory().create("p").await.unwrap();
    assert!(!r.is_sealed().await.unwrap());
    r.put(CLEAR.to_vec()).await.unwrap();
    r.require_sealed().await.unwrap();
    assert!(r.is_sealed().await.unwrap());
    let e = r.put(CLEAR.to_vec()).await.unwrap_err();
    assert!(matches!(e, Error::Rejected(Rejection::Clear { .. })), "{e}");
    // Control resources by the owner stay writable in clear.
    let audit = br#"{"resourceType":"AuditEvent","id":"a1","recorded":"2024-01-01T00:00:00Z"}"#;
    r.put(audit.to_vec()).await.unwrap();
}
