//! Grants, grant changes and revocations made directly through `Record`
//! are audited like the invite path: one AuditEvent each, by the acting
//! patient device, naming the writer; a refused grant writes none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::{Grant, Record, Role, SecureRecord};

async fn audit_events(r: &Record) -> Vec<String> {
    r.everything()
        .await
        .unwrap()
        .into_iter()
        .filter(|v| v.target.resource_type == "AuditEvent")
        .filter_map(|v| v.resource)
        .map(|b| String::from_utf8(b).unwrap())
        .collect()
}

#[tokio::test]
async fn direct_grants_changes_and_revocations_are_audited() {
    let patient = Record::in_memory().create("p").await.unwrap();
    let doctor = [7u8; 32];
    let hex = ehr_core::hex(&doctor);
    assert!(audit_events(&patient).await.is_empty());

    let g = Grant::new(Role::Practitioner, &["patient/Observation.cru"]).unwrap();
    patient.grant(doctor, g.clone()).await.unwrap();
    let events = audit_events(&patient).await;
    assert_eq!(events.len(), 1);
    assert!(events[0].contains("\"code\":\"grant\""), "{}", events[0]);
    assert!(events[0].contains(&hex));
    assert!(events[0].contains("patient/Observation.cru"));

    // A refused grant (already a writer) writes no event.
    assert!(patient.grant(doctor, g).await.is_err());
    assert_eq!(audit_events(&patient).await.len(), 1);

    let g2 = Grant::new(Role::Practitioner, &["patient/*.rs"]).unwrap();
    patient.change_grant(doctor, g2).await.unwrap();
    patient.revoke(doctor).await.unwrap();
    let events = audit_events(&patient).await;
    assert_eq!(events.len(), 3);
    for code in ["grant-changed", "revoke"] {
        assert!(
            events
                .iter()
                .any(|e| e.contains(&format!("\"code\":\"{code}\"")) && e.contains(&hex)),
            "{code}"
        );
    }
    // A second revocation is refused and not audited.
    assert!(patient.revoke(doctor).await.is_err());
    assert_eq!(audit_events(&patient).await.len(), 3);

    // SecureRecord::revoke writes one event (with the rotation), not two.
    let other = Record::in_memory().create("q").await.unwrap();
    let secure = SecureRecord::new(other);
    let w = [9u8; 32];
    secure
        .record()
        .grant(
            w,
            Grant::new(Role::Lab, &["patient/Observation.c"]).unwrap(),
        )
        .await
        .unwrap();
    secure.revoke(w).await.unwrap();
    let revokes = audit_events(secure.record())
        .await
        .into_iter()
        .filter(|e| e.contains("\"code\":\"revoke\""))
        .count();
    assert_eq!(revokes, 1);
}
