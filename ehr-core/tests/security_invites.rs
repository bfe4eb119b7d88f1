//! Invite redemption over in-memory pipes: a provider redeems an invite and
//! gets exactly its grant and keys; expired, reused, cancelled, forged,
//! tampered, wrong-secret and relayed (man-in-the-middle) redemptions fail
//! with typed errors and grant nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::invite::{InviteMsg, InviteStatus};
use ehr_core::{Grant, Invite, InviteError, ManualClock, Record, Redemption, Role, SecureRecord};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use hypercore_rs::MemoryStorage;
use std::sync::Arc;

async fn peer(key: Option<[u8; 32]>, clock: Arc<ManualClock>) -> SecureRecord {
    let b = Record::builder(Arc::new(MemoryStorage::new())).clock(clock);
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

/// A secured channel: two byte pipes and the handshake hash both ends see.
struct Channel {
    hh: [u8; 32],
    to_patient: (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>),
    to_provider: (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>),
}

fn channel(n: u8) -> Channel {
    Channel {
        hh: [n; 32],
        to_patient: mpsc::channel(4),
        to_provider: mpsc::channel(4),
    }
}

/// Runs one redemption through a channel; returns both sides' results.
async fn redeem(
    patient: &SecureRecord,
    r: &Redemption,
    ch: &mut Channel,
) -> (Result<(), InviteError>, Result<[u8; 32], InviteError>) {
    ch.to_patient.0.send(r.request(&ch.hh)).await.unwrap();
    let req = ch.to_patient.1.next().await.unwrap();
    let answer = patient.answer_invite(&ch.hh, &req).await;
    ch.to_provider.0.send(answer.reply).await.unwrap();
    let reply = ch.to_provider.1.next().await.unwrap();
    (r.on_reply(&ch.hh, &reply), answer.result)
}

const OBS: &[u8] = br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p"},"note":[{"text":"hello"}]}"#;

#[tokio::test]
async fn redeem_grants_exactly_the_invite_once() {
    let clock = Arc::new(ManualClock::new(1_000));
    let patient = peer(None, clock.clone()).await;
    let doctor = peer(Some(patient.record().key()), clock.clone()).await;
    connect(patient.record(), doctor.record());
    patient.put("default", OBS.to_vec()).await.unwrap();

    let grant = Grant::new(Role::Practitioner, &["patient/Observation.cru"]).unwrap();
    let invite = patient
        .create_invite(grant.clone(), &["default"], 10_000)
        .await
        .unwrap();
    // The text form is what travels (copy/paste or QR).
    let text = invite.to_text();
    let parsed = Invite::parse(&text).unwrap();
    assert_eq!(parsed.record_key, doctor.record().key());
    let me = (doctor.record().writer_key(), doctor.identity());
    let r = Redemption::new(parsed.clone(), me.0, me.1);

    let mut ch = channel(1);
    let (provider_side, patient_side) = redeem(&patient, &r, &mut ch).await;
    assert_eq!(provider_side, Ok(()));
    assert_eq!(patient_side, Ok(me.0));
    assert_eq!(
        patient.record().grant_of(&me.0).await.unwrap(),
        Some((grant, false))
    );
    assert!(matches!(
        patient.invite_state(&invite.id).await.unwrap().unwrap().status,
        InviteStatus::Used(w) if w == me.0
    ));

    // The doctor now syncs, can write and reads the shared scope.
    for _ in 0..20_000 {
        patient.record().update().await.unwrap();
        doctor.record().update().await.unwrap();
        if doctor.record().writable().await
            && doctor
                .get("Observation", "o1")
                .await
                .ok()
                .flatten()
                .is_some()
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        doctor.get("Observation", "o1").await.unwrap().as_deref(),
        Some(OBS)
    );

    // Single use, even on a fresh channel.
    let (p, s) = redeem(&patient, &r, &mut channel(2)).await;
    assert_eq!(
        (p, s),
        (Err(InviteError::AlreadyUsed), Err(InviteError::AlreadyUsed))
    );
}

#[tokio::test]
async fn every_bad_redemption_fails_typed_and_grants_nothing() {
    let clock = Arc::new(ManualClock::new(1_000));
    let patient = peer(None, clock.clone()).await;
    let grant = Grant::new(Role::Lab, &["patient/Observation.c"]).unwrap();
    let writer = [9u8; 32];
    let identity = ehr_core::keys::Identity::from_seed([5; 32]).public();
    let mallory_writer = [6u8; 32];
    let no_grant = |w: [u8; 32]| {
        let p = &patient;
        async move { p.record().grant_of(&w).await.unwrap().is_none() }
    };

    // Expired.
    let inv = patient
        .create_invite(grant.clone(), &[], 2_000)
        .await
        .unwrap();
    clock.set(2_000);
    let r = Redemption::new(inv.clone(), writer, identity);
    assert_eq!(
        redeem(&patient, &r, &mut channel(1)).await.1,
        Err(InviteError::Expired)
    );
    clock.set(1_000);

    // Cancelled.
    let inv = patient
        .create_invite(grant.clone(), &[], 9_000)
        .await
        .unwrap();
    patient.cancel_invite(&inv.id).await.unwrap();
    let r = Redemption::new(inv, writer, identity);
    let (p, s) = redeem(&patient, &r, &mut channel(1)).await;
    assert_eq!(
        (p, s),
        (Err(InviteError::Cancelled), Err(InviteError::Cancelled))
    );

    let inv = patient
        .create_invite(grant.clone(), &[], 9_000)
        .await
        .unwrap();

    // Wrong secret (a valid-looking invite with another secret).
    let wrong = Redemption::new(inv.clone().with_secret([0; 32]), writer, identity);
    assert_eq!(
        redeem(&patient, &wrong, &mut channel(1)).await.1,
        Err(InviteError::BadProof)
    );

    // Forged: an invite id no patient device issued.
    let mut forged = inv.clone();
    forged.id = [0xee; 16];
    let r = Redemption::new(forged, writer, identity);
    assert_eq!(
        redeem(&patient, &r, &mut channel(1)).await.1,
        Err(InviteError::Unknown)
    );

    // Tampered text.
    let mut text = inv.to_text().into_bytes();
    let last = text.len() - 1;
    text[last] = if text[last] == b'a' { b'b' } else { b'a' };
    assert_eq!(
        Invite::parse(std::str::from_utf8(&text).unwrap()),
        Err(InviteError::Malformed)
    );
    // Tampered message.
    let answer = patient.answer_invite(&[1; 32], b"\x01garbage").await;
    assert_eq!(answer.result, Err(InviteError::Malformed));

    // Man in the middle: Mallory relays the honest provider's request from
    // her channel with the provider (hh 1) onto hers with the patient (hh 2).
    let honest = Redemption::new(inv.clone(), writer, identity);
    let req = honest.request(&[1; 32]);
    let relayed = patient.answer_invite(&[2; 32], &req).await;
    assert_eq!(relayed.result, Err(InviteError::BadProof));
    // ...or swaps in her own writer key on the provider's channel.
    let mut m = InviteMsg::decode(&req).unwrap();
    if let InviteMsg::Redeem { writer, .. } = &mut m {
        *writer = mallory_writer;
    }
    let swapped = patient.answer_invite(&[1; 32], &m.encode()).await;
    assert_eq!(swapped.result, Err(InviteError::BadProof));

    // An impostor patient device (without the invite) cannot fake acceptance.
    let fake = InviteMsg::Accepted { proof: [0; 32] }.encode();
    assert_eq!(honest.on_reply(&[1; 32], &fake), Err(InviteError::BadReply));

    // None of this granted anything, and the invite is still open.
    assert!(no_grant(writer).await);
    assert!(no_grant(mallory_writer).await);
    assert_eq!(
        patient.invite_state(&inv.id).await.unwrap().unwrap().status,
        InviteStatus::Open
    );
    // The honest provider on its real channel still succeeds.
    let (p, s) = redeem(&patient, &honest, &mut channel(1)).await;
    assert_eq!((p, s), (Ok(()), Ok(writer)));
}
