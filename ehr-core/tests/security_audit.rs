//! The audit trail: grants, key shares, invites, revocations become
//! AuditEvents; the exported package verifies offline against the record
//! key, and flipping any single byte of it makes verification fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::audit::{verify_audit_package, AuditError};
use ehr_core::{Grant, InviteError, Record, Redemption, Role, SecureRecord};
use hypercore_rs::MemoryStorage;
use std::sync::Arc;

fn subtype(event: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(event).unwrap();
    v["subtype"][0]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn audit_package_verifies_offline_and_any_flipped_byte_fails() {
    let patient = SecureRecord::new(
        Record::builder(Arc::new(MemoryStorage::new()))
            .create("p")
            .await
            .unwrap(),
    );
    let doctor = ehr_core::keys::Identity::from_seed([7; 32]).public();
    let writer = [8u8; 32];
    patient
        .record()
        .grant(
            writer,
            Grant::new(Role::Practitioner, &["patient/*.rs"]).unwrap(),
        )
        .await
        .unwrap();
    patient
        .share(doctor, Some(writer), &["default"])
        .await
        .unwrap();
    let inv = patient
        .create_invite(
            Grant::new(Role::Lab, &["patient/Observation.c"]).unwrap(),
            &[],
            u64::MAX,
        )
        .await
        .unwrap();
    // A refused redemption of a known invite is audited too.
    let bad = Redemption::new(inv.clone().with_secret([1; 32]), [9; 32], doctor);
    let answer = patient
        .answer_invite(&[3; 32], &bad.request(&[3; 32]))
        .await;
    assert_eq!(answer.result, Err(InviteError::BadProof));
    patient.revoke(writer).await.unwrap();

    let package = patient.export_audit().await.unwrap();
    let key = patient.record().key();
    let events = verify_audit_package(&key, &package).await.unwrap();
    let kinds: Vec<String> = events.iter().map(|e| subtype(e)).collect();
    assert_eq!(
        kinds,
        [
            "grant",
            "share",
            "invite-created",
            "invite-refused",
            "revoke"
        ],
        "{kinds:?}"
    );
    // Every AuditEvent in the package is one the record holds.
    for e in &events {
        let v: serde_json::Value = serde_json::from_slice(e).unwrap();
        let id = v["id"].as_str().unwrap();
        let stored = patient
            .record()
            .get("AuditEvent", id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.resource.as_deref(), Some(&e[..]));
    }
    // Against another record key: refused.
    assert_eq!(
        verify_audit_package(&[0; 32], &package).await,
        Err(AuditError::WrongRecord)
    );
    // Flip every byte (one bit each): verification always fails.
    for i in 0..package.len() {
        let mut p = package.clone();
        p[i] ^= 0x01;
        assert!(
            verify_audit_package(&key, &p).await.is_err(),
            "flipping byte {i} of {} still verified",
            package.len()
        );
    }
    // Truncation fails too.
    assert!(verify_audit_package(&key, &package[..package.len() - 1])
        .await
        .is_err());

    // Rejected writes render as AuditEvents on demand.
    assert!(patient.rejected_audit_events().await.unwrap().is_empty());
}
