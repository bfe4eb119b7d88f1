//! Emergency access by any 2 of 3 emergency contacts: k shares open the
//! emergency scope (and nothing else), k-1 fail with a typed error, forged
//! or altered shares fail, the opening expires and is audited, and after it
//! ends the contacts are re-armed with a new emergency key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::emergency_contacts::{EmergencyError, EmergencyOpening, ReleasedShare};
use ehr_core::keys::{open, seal, Identity};
use ehr_core::{Error, ManualClock, Record, SecureRecord};
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

async fn device(
    clock: &Arc<ManualClock>,
    key: [u8; 32],
    patient: &SecureRecord,
    seed: u8,
) -> (SecureRecord, Identity) {
    let r = Record::builder(Arc::new(MemoryStorage::new()))
        .clock(clock.clone())
        .join(key)
        .await
        .unwrap();
    connect(patient.record(), &r);
    let id = Identity::from_seed([seed; 32]);
    (SecureRecord::with_identity(r, id.clone()), id)
}

fn is_emergency(e: Error, f: impl Fn(&EmergencyError) -> bool) -> bool {
    matches!(e, Error::Emergency(ref x) if f(x))
}

#[tokio::test]
async fn two_of_three_contacts_open_the_emergency_scope() {
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
    let key = patient.record().key();
    let (c1, _) = device(&clock, key, &patient, 1).await;
    let (c2, _) = device(&clock, key, &patient, 2).await;
    let (c3, c3_id) = device(&clock, key, &patient, 3).await;
    let (opener, opener_id) = device(&clock, key, &patient, 9).await;

    // Bad set-ups are typed errors and write nothing.
    let contacts = [c1.identity(), c2.identity(), c3.identity()];
    for (cs, k) in [(&contacts[..], 0), (&contacts[..], 4), (&contacts[..0], 1)] {
        let e = patient
            .setup_emergency_contacts(cs, k, 1)
            .await
            .unwrap_err();
        assert!(is_emergency(e, |x| matches!(
            x,
            EmergencyError::InvalidSetup(_)
        )));
    }
    let twice = [c1.identity(), c1.identity()];
    assert!(patient
        .setup_emergency_contacts(&twice, 1, 1)
        .await
        .is_err());
    assert!(patient.emergency_setup().await.unwrap().is_none());

    let day = 24 * 3_600_000;
    let setup = patient
        .setup_emergency_contacts(&contacts, 2, day)
        .await
        .unwrap();
    let setup_id = format!("emc-{}", setup.emergency.fingerprint());
    for c in [&c1, &c2, &c3, &opener] {
        settle(patient.record(), c.record(), "Basic", &setup_id).await;
    }
    // The setup in the record holds no share in clear.
    assert_eq!(opener.emergency_setup().await.unwrap(), Some(setup.clone()));
    // Someone who is not a contact has no share to release.
    let e = opener
        .release_emergency_share(opener.identity())
        .await
        .unwrap_err();
    assert!(is_emergency(e, |x| matches!(
        x,
        EmergencyError::NotAContact
    )));

    let s1 = c1.release_emergency_share(opener.identity()).await.unwrap();
    let s2 = c2.release_emergency_share(opener.identity()).await.unwrap();
    let s1 = ReleasedShare::parse(&s1.to_text()).unwrap();
    assert!(ReleasedShare::parse("ehr-share1:zz").is_err());

    // k-1 shares (also the same share twice) do not open.
    for given in [vec![s1.clone()], vec![s1.clone(), s1.clone()], vec![]] {
        let e = opener.open_emergency(&given, "Dr. ER").await.unwrap_err();
        assert!(
            is_emergency(e, |x| matches!(x, EmergencyError::NotEnoughShares { .. })),
            "{given:?}"
        );
    }
    // A share released to someone else does not open for the opener.
    let to_c3 = c1.release_emergency_share(c3.identity()).await.unwrap();
    let e = opener
        .open_emergency(&[to_c3, s2.clone()], "x")
        .await
        .unwrap_err();
    assert!(is_emergency(e, |x| matches!(
        x,
        EmergencyError::ForgedShare(_)
    )));
    // Tampered bytes or signature.
    let mut t = s2.clone();
    let last = t.sealed.len() - 1;
    t.sealed[last] ^= 1;
    let e = opener
        .open_emergency(&[s1.clone(), t], "x")
        .await
        .unwrap_err();
    assert!(is_emergency(e, |x| matches!(
        x,
        EmergencyError::ForgedShare(_)
    )));
    let mut t = s2.clone();
    t.signature[0] ^= 1;
    let e = opener
        .open_emergency(&[s1.clone(), t], "x")
        .await
        .unwrap_err();
    assert!(is_emergency(e, |x| matches!(
        x,
        EmergencyError::ForgedShare(_)
    )));
    // A malicious contact (c3) that sends a different, correctly signed
    // share: its commitment does not match.
    let mut bad = c3.release_emergency_share(opener.identity()).await.unwrap();
    let mut plain = open(&opener_id, &bad.sealed).unwrap();
    let n = plain.len();
    plain[n - 1] ^= 0x55;
    bad.sealed = seal(&opener.identity(), &plain, &OsEntropy).unwrap();
    let mut msg = b"ehr-core emergency share release v1".to_vec();
    for k in [&bad.emergency.0, &bad.contact.0, &bad.opener.0] {
        msg.extend_from_slice(k);
    }
    msg.extend_from_slice(&bad.sealed);
    bad.signature = c3_id.sign(&msg).to_vec();
    let e = opener
        .open_emergency(&[s1.clone(), bad], "x")
        .await
        .unwrap_err();
    assert!(is_emergency(e, |x| matches!(
        x,
        EmergencyError::ForgedShare(_)
    )));

    // Two genuine shares open the emergency scope, and only it.
    let session = opener
        .open_emergency(&[s1.clone(), s2.clone()], "Dr. ER")
        .await
        .unwrap();
    assert_eq!(session.resources, vec![ALLERGY.to_vec()]);
    assert!(!session
        .resources
        .iter()
        .any(|r| String::from_utf8_lossy(r).contains("private")));
    assert!(matches!(
        opener.get("Condition", "psy").await,
        Err(Error::Sealed(_))
    ));
    assert_eq!(session.opening.expires, 1_000 + day);
    assert_eq!(session.read().await.unwrap(), vec![ALLERGY.to_vec()]);

    // The notice: a forged one is refused; the real one is audited.
    let notice = EmergencyOpening::parse(&session.opening.to_text()).unwrap();
    let mut forged = notice.clone();
    forged.responder = "someone else".into();
    assert!(patient.accept_emergency_opening(&forged).await.is_err());
    patient.accept_emergency_opening(&notice).await.unwrap();
    let events = patient.emergency_events().await.unwrap();
    assert!(events
        .iter()
        .any(|e| String::from_utf8_lossy(e).contains("opened by Dr. ER")));
    assert!(events
        .iter()
        .any(|e| String::from_utf8_lossy(e).contains("any 2 of 3")));
    assert_eq!(patient.emergency_openings().await.unwrap(), vec![notice]);

    // Not yet over: nothing ends.
    assert_eq!(patient.end_expired_emergency_openings().await.unwrap(), 0);
    // Time is up: the session refuses, the patient ends the opening and
    // re-arms the contacts with a new emergency key.
    clock.set(1_000 + day);
    let e = session.read().await.unwrap_err();
    assert!(is_emergency(e, |x| matches!(x, EmergencyError::Expired)));
    assert_eq!(patient.end_expired_emergency_openings().await.unwrap(), 1);
    assert_eq!(patient.end_expired_emergency_openings().await.unwrap(), 0);
    let rearmed = patient.emergency_setup().await.unwrap().unwrap();
    assert_ne!(rearmed.emergency, setup.emergency);
    patient.put("emergency", LATER.to_vec()).await.unwrap();
    for c in [&c1, &c3, &opener] {
        settle(patient.record(), c.record(), "Condition", "later").await;
    }
    // The old shares still rebuild the old key, which cannot read what was
    // written after the opening ended.
    let old = opener
        .open_emergency(&[s1.clone(), s2.clone()], "again")
        .await
        .unwrap();
    assert_eq!(old.resources, vec![ALLERGY.to_vec()]);
    // The re-armed contacts open the new key, which reads it.
    let n1 = c1.release_emergency_share(opener.identity()).await.unwrap();
    let n3 = c3.release_emergency_share(opener.identity()).await.unwrap();
    let fresh = opener.open_emergency(&[n3, n1], "Dr. ER").await.unwrap();
    assert!(fresh.resources.contains(&LATER.to_vec()));
    assert!(fresh.resources.contains(&ALLERGY.to_vec()));
}
