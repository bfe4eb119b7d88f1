//! `Record::serve` (and so `Record::sync`) runs the record's checkpoint
//! duty next to the replication sessions: the patient's device serves
//! signed checkpoints of the indexed record, and a provider joining a
//! long record starts from one instead of replaying every input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::YieldNow;

use ehr_core::{Grant, Record, Role, VIEW_NAME};
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use hypercore_rs::MemoryStorage;
use std::sync::Arc;
use swarm_rs::{JoinMode, KeyPair, MemoryAddr, MemoryDiscovery, MemoryNetwork, SwarmBuilder};

fn obs(i: usize) -> Vec<u8> {
    format!(
        r#"{{"resourceType":"Observation","id":"o{i}","status":"final","subject":{{"reference":"Patient/p"}},"valueQuantity":{{"value":{i}}}}}"#
    )
    .into_bytes()
}

#[test]
fn a_joiner_of_a_long_record_starts_from_a_checkpoint() {
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let (net, discovery) = (MemoryNetwork::new(), MemoryDiscovery::new());
    pool.run_until(async {
        let mem = || Record::builder(Arc::new(MemoryStorage::new()));
        let patient = mem().create("p").await.unwrap();
        let doctor = mem().join(patient.key()).await.unwrap();
        patient
            .grant(
                doctor.writer_key(),
                Grant::new(Role::Practitioner, &["patient/*.cruds"])
                    .unwrap()
                    .with_peer(doctor.identity().public_key().to_bytes()),
            )
            .await
            .unwrap();
        // A long history, written before the doctor connects.
        const N: usize = 60;
        for i in 0..N {
            patient.put(obs(i)).await.unwrap();
        }
        doctor.allow_peer(patient.identity().public_key().to_bytes());
        let indexed = patient.base().indexed_length().await;
        assert!(indexed > N as u64);
        assert_eq!(doctor.base().indexed_length().await, 0);

        for rec in [&patient, &doctor] {
            let builder = SwarmBuilder::new(KeyPair::from_seed(rec.identity().seed()))
                .firewall(rec.firewall());
            let (handle, conns, driver) = builder
                .bind(net.transport(), discovery.clone(), &MemoryAddr(0))
                .await
                .unwrap();
            spawner.spawn_local(driver).unwrap();
            handle.join(&rec.topic(), JoinMode::BOTH).unwrap();
            let r = rec.clone();
            spawner
                .spawn_local(async move {
                    let _handle = handle;
                    let _ = r.serve(conns).await;
                })
                .unwrap();
        }
        // Only the patient is updated by the test: the doctor's indexed
        // length can move only through its checkpoint duty (a
        // fast-forward, then an update), never through a replay here.
        let mut reached = false;
        for _ in 0..200_000 {
            patient.update().await.unwrap();
            if doctor.base().indexed_length().await >= indexed {
                reached = true;
                break;
            }
            YieldNow(false).await;
        }
        assert!(reached, "the doctor never fast-forwarded");
        assert_eq!(
            doctor.base().view_hash(VIEW_NAME).await.unwrap(),
            patient.base().checkpoint().await.views[0].hash,
            "the doctor's view is the patient's indexed view"
        );
        // The installed view answers reads, the doctor learnt the record's
        // genesis from it, and it can write on from there.
        assert_eq!(doctor.patient_id(), "p");
        for i in [0, N / 2, N - 1] {
            assert!(
                doctor
                    .get("Observation", &format!("o{i}"))
                    .await
                    .unwrap()
                    .is_some(),
                "o{i} missing"
            );
        }
        assert!(doctor.writable().await);
        let cond = br#"{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p"}}"#;
        doctor.put(cond.to_vec()).await.unwrap();
        common::pump_until(
            &[&patient, &doctor],
            || async { patient.get("Condition", "c1").await.unwrap().is_some() },
            "the doctor's write never reached the patient",
        )
        .await;
        common::pump_until(
            &[&patient, &doctor],
            || async {
                patient.base().indexed_length().await == doctor.base().indexed_length().await
                    && patient.base().view_hash(VIEW_NAME).await.unwrap()
                        == doctor.base().view_hash(VIEW_NAME).await.unwrap()
            },
            "the two never agreed",
        )
        .await;
    });
}

/// The same through the invite paths: a provider that joins by redeeming
/// an invite (`join_with_invite`) against a patient device answering
/// invites (`sync_with_invites`) starts from the patient's checkpoint too;
/// both paths run the checkpoint duty beside their sessions.
#[test]
fn a_provider_joining_by_invite_starts_from_a_checkpoint() {
    use ehr_core::{Invite, SecureRecord};
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let (net, discovery) = (MemoryNetwork::new(), MemoryDiscovery::new());
    pool.run_until(async {
        let mem = || Record::builder(Arc::new(MemoryStorage::new()));
        let alice = Arc::new(SecureRecord::new(mem().create("p").await.unwrap()));
        const N: usize = 60;
        for i in 0..N {
            alice.record().put(obs(i)).await.unwrap();
        }
        let indexed = alice.record().base().indexed_length().await;
        assert!(indexed > N as u64);
        let invite = alice
            .create_invite(
                Grant::new(Role::Practitioner, &["patient/*.cru"]).unwrap(),
                &[],
                u64::MAX,
            )
            .await
            .unwrap();
        let (_ah, work) = alice
            .clone()
            .sync_with_invites(net.transport(), discovery.clone(), &MemoryAddr(0))
            .await
            .unwrap();
        spawner
            .spawn_local(async move {
                let _ = work.await;
            })
            .unwrap();

        let invite = Invite::parse(&invite.to_text()).unwrap();
        let doc = Arc::new(SecureRecord::new(
            mem().join(invite.record_key).await.unwrap(),
        ));
        let (_dh, work, redeemed) = doc
            .clone()
            .join_with_invite(&invite, net.transport(), discovery.clone(), &MemoryAddr(0))
            .await
            .unwrap();
        spawner
            .spawn_local(async move {
                let _ = work.await;
            })
            .unwrap();
        assert_eq!(redeemed.await, Ok(()));
        // Only the patient is updated by the test: the doctor's indexed
        // length moves only through its checkpoint duty. Its first request
        // went out before the redemption (no peer yet); it asks again
        // after 50 ms, then less often, so give it wall-clock time.
        let mut reached = false;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(20) {
            alice.record().update().await.unwrap();
            if doc.record().base().indexed_length().await >= indexed {
                reached = true;
                break;
            }
            YieldNow(false).await;
        }
        assert!(reached, "the invited doctor never fast-forwarded");
        assert_eq!(doc.record().patient_id(), "p");
        assert!(doc
            .record()
            .get("Observation", &format!("o{}", N - 1))
            .await
            .unwrap()
            .is_some());
    });
}
