//! Break-glass: a responder with the emergency card reads the emergency
//! scope and nothing else; the signed notice is audited by the patient's
//! device and ends the card's access to anything written afterwards;
//! forged notices and expired cards are handled.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::emergency::EmergencyCard;
use ehr_core::{Error, ManualClock, Record, SecureRecord};
use hypercore_rs::MemoryStorage;
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

const ALLERGY: &[u8] = br#"{"resourceType":"AllergyIntolerance","id":"peanut","patient":{"reference":"Patient/p"},"code":{"text":"peanut"}}"#;
const PSY: &[u8] = br#"{"resourceType":"Condition","id":"psy","subject":{"reference":"Patient/p"},"note":[{"text":"private"}]}"#;
const LATER: &[u8] =
    br#"{"resourceType":"Condition","id":"later","subject":{"reference":"Patient/p"}}"#;

async fn settle(a: &Record, b: &Record, ty: &str, id: &str) {
    for _ in 0..20_000 {
        a.update().await.unwrap();
        b.update().await.unwrap();
        if b.get(ty, id).await.unwrap().is_some() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("no sync");
}

#[tokio::test]
async fn card_opens_emergency_scope_once_then_is_rotated_away() {
    let clock = Arc::new(ManualClock::new(1_000));
    let patient = SecureRecord::new(
        Record::builder(Arc::new(MemoryStorage::new()))
            .clock(clock.clone())
            .create("p")
            .await
            .unwrap(),
    );
    patient.put("emergency", ALLERGY.to_vec()).await.unwrap();
    patient.put("mental-health", PSY.to_vec()).await.unwrap();
    let card = patient.create_emergency_card(100_000).await.unwrap();
    let card = EmergencyCard::parse(&card.to_text()).unwrap();
    assert!(EmergencyCard::parse("ehr-card1:00").is_err());

    // The responder's device joins with the card.
    let joined = Record::builder(Arc::new(MemoryStorage::new()))
        .clock(clock.clone())
        .join(card.record_key)
        .await
        .unwrap();
    connect(patient.record(), &joined);
    settle(
        patient.record(),
        &joined,
        "Basic",
        &format!("card-{}", card.public().fingerprint()),
    )
    .await;
    let responder = SecureRecord::with_identity(joined.clone(), card.identity());
    let view = responder.emergency_open(&card, "Dr. ER").await.unwrap();
    assert_eq!(view.resources, vec![ALLERGY.to_vec()]);
    assert!(matches!(
        responder.get("Condition", "psy").await,
        Err(Error::Sealed(_))
    ));

    // A forged notice (changed responder) is refused.
    let mut forged = view.notice.clone();
    forged.responder = "someone else".into();
    assert!(patient.accept_emergency_notice(&forged).await.is_err());
    // The real one is audited and rotates the emergency scope away.
    patient.accept_emergency_notice(&view.notice).await.unwrap();
    let audited = patient
        .record()
        .everything()
        .await
        .unwrap()
        .into_iter()
        .filter(|v| v.target.resource_type == "AuditEvent")
        .filter_map(|v| v.resource)
        .any(|r| String::from_utf8_lossy(&r).contains("opened by Dr. ER"));
    assert!(audited);
    patient.put("emergency", LATER.to_vec()).await.unwrap();
    settle(patient.record(), &joined, "Condition", "later").await;
    assert!(matches!(
        responder.get("Condition", "later").await,
        Err(Error::Sealed(_))
    ));

    // Expiry: a second card is rotated away once its validity ends.
    let card2 = patient.create_emergency_card(5_000).await.unwrap();
    assert_eq!(patient.expire_cards(&[card2.public()]).await.unwrap(), 0);
    clock.set(5_000);
    assert_eq!(patient.expire_cards(&[card2.public()]).await.unwrap(), 1);
}

#[tokio::test]
async fn locked_secrets_reopen_a_device() {
    use ehr_core::keystore::{lock, unlock, KdfParams};
    let storage = Arc::new(MemoryStorage::new());
    let patient = SecureRecord::new(Record::builder(storage.clone()).create("p").await.unwrap());
    patient.put("emergency", ALLERGY.to_vec()).await.unwrap();
    let file = lock(
        &patient.secrets(),
        b"passphrase",
        KdfParams::new(256, 1, 1),
        &hypercore_rs::OsEntropy,
    )
    .unwrap();
    assert!(unlock(&file, b"other").is_err());
    let back = SecureRecord::with_secrets(
        patient.record().clone(),
        unlock(&file, b"passphrase").unwrap(),
    );
    assert_eq!(back.identity(), patient.identity());
    assert_eq!(back.keyring(), patient.keyring());
    assert_eq!(
        back.get("AllergyIntolerance", "peanut")
            .await
            .unwrap()
            .as_deref(),
        Some(ALLERGY)
    );
}
