//! Sync over swarm-rs (in-memory network and discovery): peers meet on the
//! record's topic (its discovery key), the firewall lets in only the
//! identities the record names (the owner, live grants) plus explicitly
//! allowed ones, and offline writes reach the other side once they meet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{pump_until, YieldNow};

use ehr_core::{Grant, Record, Role};
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use hypercore_rs::MemoryStorage;
use std::sync::Arc;
use swarm_rs::{JoinMode, KeyPair, MemoryAddr, MemoryDiscovery, MemoryNetwork, SwarmBuilder};

const OBS: &[u8] = br#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p"},"valueQuantity":{"value":1.50}}"#;

#[test]
fn granted_peers_sync_and_strangers_are_refused() {
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let (net, discovery) = (MemoryNetwork::new(), MemoryDiscovery::new());
    pool.run_until(async {
        let mem = || Record::builder(Arc::new(MemoryStorage::new()));
        let patient = mem().create("p").await.unwrap();
        // Written before anyone is connected.
        patient.put(OBS.to_vec()).await.unwrap();
        let doctor = mem().join(patient.key()).await.unwrap();
        let stranger = mem().join(patient.key()).await.unwrap();
        // Both learnt the patient's identity (from an invite, say).
        let patient_id = patient.identity().public_key().to_bytes();
        doctor.allow_peer(patient_id);
        stranger.allow_peer(patient_id);
        patient
            .grant(
                doctor.writer_key(),
                Grant::new(Role::Practitioner, &["patient/*.cruds"])
                    .unwrap()
                    .with_peer(doctor.identity().public_key().to_bytes()),
            )
            .await
            .unwrap();
        assert!(patient.allows_peer(&doctor.identity().public_key().to_bytes()));
        assert!(!patient.allows_peer(&stranger.identity().public_key().to_bytes()));

        let both = JoinMode {
            server: true,
            client: true,
        };
        for rec in [&patient, &doctor, &stranger] {
            let builder = SwarmBuilder::new(KeyPair::from_seed(rec.identity().seed()))
                .firewall(rec.firewall());
            let (handle, conns, driver) = builder
                .bind(net.transport(), discovery.clone(), &MemoryAddr(0))
                .await
                .unwrap();
            spawner.spawn_local(driver).unwrap();
            handle.join(&rec.topic(), both).unwrap();
            let r = rec.clone();
            spawner
                .spawn_local(async move {
                    let _handle = handle;
                    let _ = r.serve(conns).await;
                })
                .unwrap();
        }
        pump_until(
            &[&patient, &doctor, &stranger],
            || async {
                doctor.writable().await && doctor.get("Observation", "o1").await.unwrap().is_some()
            },
            "doctor never synced",
        )
        .await;
        assert_eq!(doctor.patient_id(), "p");
        // The doctor writes; the patient gets it over the swarm.
        let cond = br#"{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p"}}"#;
        doctor.put(cond.to_vec()).await.unwrap();
        pump_until(
            &[&patient, &doctor, &stranger],
            || async { patient.get("Condition", "c1").await.unwrap().is_some() },
            "patient never received the doctor's write",
        )
        .await;
        // The stranger knows the key but nobody lets it in: it has nothing.
        for _ in 0..200 {
            stranger.update().await.unwrap();
            YieldNow(false).await;
        }
        assert_eq!(stranger.patient_id(), "");
        assert!(stranger.get("Observation", "o1").await.unwrap().is_none());
    });
}

/// `Record::sync` does the swarm plumbing itself: a granted doctor and the
/// patient meet on the topic and converge; leaving the topic stops new
/// meetings (a device that syncs only after the patient left finds nobody).
#[test]
fn record_sync_joins_the_topic_and_replicates() {
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let (net, discovery) = (MemoryNetwork::new(), MemoryDiscovery::new());
    pool.run_until(async {
        let mem = || Record::builder(Arc::new(MemoryStorage::new()));
        let patient = mem().create("p").await.unwrap();
        patient.put(OBS.to_vec()).await.unwrap();
        let doctor = mem().join(patient.key()).await.unwrap();
        doctor.allow_peer(patient.identity().public_key().to_bytes());
        patient
            .grant(
                doctor.writer_key(),
                Grant::new(Role::Practitioner, &["patient/*.cruds"])
                    .unwrap()
                    .with_peer(doctor.identity().public_key().to_bytes()),
            )
            .await
            .unwrap();
        let mut handles = Vec::new();
        for rec in [&patient, &doctor] {
            let (handle, work) = rec
                .sync(net.transport(), discovery.clone(), &MemoryAddr(0))
                .await
                .unwrap();
            spawner
                .spawn_local(async move {
                    let _ = work.await;
                })
                .unwrap();
            handles.push(handle);
        }
        pump_until(
            &[&patient, &doctor],
            || async {
                doctor.writable().await && doctor.get("Observation", "o1").await.unwrap().is_some()
            },
            "doctor never synced through Record::sync",
        )
        .await;
        let got = doctor.get("Observation", "o1").await.unwrap().unwrap();
        assert_eq!(
            got.resource.as_deref(),
            Some(OBS),
            "bytes differ after sync"
        );
        let cond = br#"{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p"}}"#;
        doctor.put(cond.to_vec()).await.unwrap();
        pump_until(
            &[&patient, &doctor],
            || async { patient.get("Condition", "c1").await.unwrap().is_some() },
            "patient never received the doctor's write",
        )
        .await;
        for h in &handles {
            h.leave().unwrap();
        }
    });
}
