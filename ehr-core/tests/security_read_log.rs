//! Providers' self-reported read logs: the doctor's client logs each read
//! (resource, time, purpose) to its own read-log core; the log replicates
//! to the patient over the swarm (in-memory network) together with the
//! record, and the patient lists the entries, marked self-reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::pump_until;

use ehr_core::read_log::read_log_key;
use ehr_core::{Grant, ManualClock, Record, Role, SecureRecord};
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use hypercore_rs::MemoryStorage;
use std::sync::Arc;
use swarm_rs::{MemoryAddr, MemoryDiscovery, MemoryNetwork};

const OBS: &[u8] = br#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p"},"note":[{"text":"private"}]}"#;

#[test]
fn a_doctors_reads_reach_the_patient_marked_self_reported() {
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let (net, discovery) = (MemoryNetwork::new(), MemoryDiscovery::new());
    pool.run_until(async {
        let clock = Arc::new(ManualClock::new(5_000));
        let mem = || Record::builder(Arc::new(MemoryStorage::new())).clock(clock.clone());
        let patient = SecureRecord::new(mem().create("p").await.unwrap());
        patient.put("default", OBS.to_vec()).await.unwrap();
        let doctor = SecureRecord::new(mem().join(patient.record().key()).await.unwrap());
        doctor
            .record()
            .allow_peer(patient.record().identity().public_key().to_bytes());
        patient
            .record()
            .grant(
                doctor.record().writer_key(),
                Grant::new(Role::Practitioner, &["patient/*.rs"])
                    .unwrap()
                    .with_peer(doctor.record().identity().public_key().to_bytes()),
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
        let mut handles = Vec::new();
        for rec in [patient.record(), doctor.record()] {
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
        let peers = [patient.record(), doctor.record()];
        pump_until(
            &peers,
            || async {
                doctor
                    .record()
                    .get("Observation", "o1")
                    .await
                    .unwrap()
                    .is_some()
            },
            "doctor never synced",
        )
        .await;

        // The doctor's client logs, then reads.
        let got = doctor
            .get_logged("Observation", "o1", "treatment")
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(OBS));
        clock.set(6_000);
        doctor
            .log_read("Observation", "o1", "second opinion")
            .await
            .unwrap();
        assert_eq!(doctor.read_logs().await.unwrap().len(), 2);

        // The patient follows the logs of everyone it shared keys with.
        let follow = patient.follow_read_logs().await.unwrap();
        assert_eq!(follow.readers, vec![doctor.identity()]);
        pump_until(
            &peers,
            || async { patient.read_logs().await.unwrap().len() == 2 },
            "the read log never reached the patient",
        )
        .await;
        let log = patient.read_logs().await.unwrap();
        assert!(log.iter().all(|e| e.reader == doctor.identity()
            && e.self_reported
            && e.resource_type == "Observation"
            && e.id == "o1"));
        let purposes: Vec<(&str, u64)> = log.iter().map(|e| (e.purpose.as_str(), e.time)).collect();
        assert_eq!(purposes, [("treatment", 5_000), ("second opinion", 6_000)]);
        // The log's key follows from the identity alone.
        let core = patient
            .record()
            .base()
            .store()
            .get_by_key(read_log_key(&doctor.identity()))
            .await
            .unwrap();
        assert_eq!(core.length(), 2);
        assert!(!core.writable());
        for h in &handles {
            h.leave().unwrap();
        }
    });
}
