//! Sync over the swarm's internet engine (feature `iroh`): a patient and a
//! granted provider, each on its own iroh endpoint keyed by its network
//! identity, meet on the record's topic with `Record::sync` and converge to
//! byte-identical views; a stranger who knows the record key is refused by
//! both firewalls and gets nothing. Loopback with direct addresses only (no
//! relay, no address lookup, no DNS); discovery is the in-process registry
//! of iroh addresses.
#![cfg(feature = "iroh")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ehr_core::iroh::{EndpointAddr, IrohConfig};
use ehr_core::{Grant, Record, Role, VIEW_NAME};
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use hyperbee_rs::Range;
use hypercore_rs::MemoryStorage;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_rs::{Discovery, MemoryDiscovery};

const OBS: &[u8] = br#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p"},"valueQuantity":{"value":1.50}}"#;
const COND_PATIENT: &[u8] =
    br#"{"resourceType":"Condition","id":"c-patient","subject":{"reference":"Patient/p"},"note":[{"text":"4.30"}]}"#;
const COND_DOCTOR: &[u8] =
    br#"{"resourceType":"Condition","id":"c-doctor","subject":{"reference":"Patient/p"},"onsetDateTime":"2024-05-01T08:00:00+02:00"}"#;

/// Upper bound for any condition to become true over loopback QUIC.
const PATIENCE: Duration = Duration::from_secs(60);

fn direct() -> IrohConfig {
    IrohConfig::direct("127.0.0.1:0".parse().unwrap())
}

/// Updates `peers` until `done` holds (real sockets: real time passes).
async fn wait_until<F, Fut>(peers: &[&Record], mut done: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        for r in peers {
            r.update().await.unwrap();
        }
        if done().await {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "timed out: {what}");
        async_io::Timer::after(Duration::from_millis(10)).await;
    }
}

/// The whole view (resources, versions, indexes, grants), key and value bytes.
async fn dump(r: &Record) -> Vec<(Vec<u8>, Vec<u8>)> {
    r.base()
        .view(VIEW_NAME)
        .await
        .unwrap()
        .range(Range::all())
        .collect()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

async fn resource(r: &Record, ty: &str, id: &str) -> Option<Vec<u8>> {
    r.get(ty, id).await.unwrap().and_then(|v| v.resource)
}

#[test]
fn a_patient_and_a_granted_provider_sync_over_iroh_and_a_stranger_is_refused() {
    let started = Instant::now();
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let discovery: MemoryDiscovery<EndpointAddr> = MemoryDiscovery::new();
    let (patient, doctor, stranger) = pool.run_until(async {
        let mem = || Record::builder(Arc::new(MemoryStorage::new()));
        let patient = mem().create("p").await.unwrap();
        // Written before anyone is connected.
        patient.put(OBS.to_vec()).await.unwrap();
        let doctor = mem().join(patient.key()).await.unwrap();
        let stranger = mem().join(patient.key()).await.unwrap();
        // Both learnt the patient's identity (from an invite, say); only
        // the doctor is granted.
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
        (patient, doctor, stranger)
    });

    // Each device on its own iroh endpoint, whose id is its network identity.
    let mut handles = Vec::new();
    for rec in [&patient, &doctor, &stranger] {
        let transport = rec.iroh_transport(direct()).unwrap();
        assert_eq!(transport.public_key().unwrap(), rec.identity().public_key());
        let addr = transport.local_addr();
        let (handle, work) = pool
            .run_until(rec.sync(transport, discovery.clone(), &addr))
            .unwrap();
        spawner
            .spawn_local(async move {
                let _ = work.await;
            })
            .unwrap();
        handles.push(handle);
    }
    let id = |r: &Record| r.identity().public_key();

    pool.run_until(async {
        // The patient's offline write reaches the doctor, who can write.
        wait_until(
            &[&patient, &doctor, &stranger],
            || async {
                doctor.writable().await && resource(&doctor, "Observation", "o1").await.is_some()
            },
            "the doctor never synced over iroh",
        )
        .await;
        assert_eq!(doctor.patient_id(), "p");
        assert_eq!(
            resource(&doctor, "Observation", "o1").await.as_deref(),
            Some(OBS)
        );

        // Only the hash of the record's topic is announced, with each
        // device's iroh address (its identity, loopback, no relay).
        let topic_key = patient.topic().discovery_key();
        assert_eq!(discovery.keys(), vec![topic_key]);
        let announced = discovery.lookup(topic_key).await.unwrap();
        assert_eq!(announced.len(), 3);
        for (peer, addr) in announced {
            assert_eq!(addr.id.as_bytes(), peer.as_bytes());
            assert!(addr.ip_addrs().all(|a| a.ip().is_loopback()));
            assert_eq!(addr.relay_urls().count(), 0);
        }

        // Both write while connected: each write reaches the other side.
        patient.put(COND_PATIENT.to_vec()).await.unwrap();
        doctor.put(COND_DOCTOR.to_vec()).await.unwrap();
        wait_until(
            &[&patient, &doctor, &stranger],
            || async {
                resource(&patient, "Condition", "c-doctor").await.is_some()
                    && resource(&doctor, "Condition", "c-patient").await.is_some()
                    && dump(&patient).await == dump(&doctor).await
            },
            "the views never converged over iroh",
        )
        .await;
        for r in [&patient, &doctor] {
            assert_eq!(
                resource(r, "Condition", "c-doctor").await.as_deref(),
                Some(COND_DOCTOR)
            );
            assert_eq!(
                resource(r, "Condition", "c-patient").await.as_deref(),
                Some(COND_PATIENT)
            );
        }
        let view = dump(&patient).await;
        assert!(!view.is_empty());
        assert_eq!(dump(&doctor).await, view, "views differ byte for byte");

        // The stranger has had every chance to dial both (and be dialed):
        // neither firewall ever handed its connection to replication.
        async_io::Timer::after(Duration::from_millis(1500)).await;
        for _ in 0..20 {
            stranger.update().await.unwrap();
            async_io::Timer::after(Duration::from_millis(10)).await;
        }
        assert_eq!(
            handles[0].swarm().connected_peers().await.unwrap(),
            vec![id(&doctor)]
        );
        assert_eq!(
            handles[1].swarm().connected_peers().await.unwrap(),
            vec![id(&patient)]
        );
        assert!(!handles[2]
            .swarm()
            .connected_peers()
            .await
            .unwrap()
            .contains(&id(&doctor)));
        assert_eq!(stranger.patient_id(), "");
        assert!(resource(&stranger, "Observation", "o1").await.is_none());
        assert!(dump(&stranger).await.is_empty(), "the stranger holds data");

        // Leaving withdraws the announcements.
        for h in &handles {
            h.leave().unwrap();
        }
        wait_until(
            &[],
            || async { discovery.keys().is_empty() },
            "announcements stayed",
        )
        .await;
    });
    eprintln!("iroh sync test took {:?}", started.elapsed());
}

/// A provider's device goes away (its sync and endpoint dropped), both
/// write while apart, and it comes back on a new endpoint (new port, same
/// identity): the offline writes cross and the views converge again.
#[test]
fn offline_writes_cross_when_the_provider_comes_back_on_a_new_endpoint() {
    use futures::task::SpawnExt as _;
    let started = Instant::now();
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let discovery: MemoryDiscovery<EndpointAddr> = MemoryDiscovery::new();
    let (patient, doctor) = pool.run_until(async {
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
        (patient, doctor)
    });
    let start = |rec: &Record, pool: &mut LocalPool| {
        let transport = rec.iroh_transport(direct()).unwrap();
        let addr = transport.local_addr();
        let (handle, work) = pool
            .run_until(rec.sync(transport, discovery.clone(), &addr))
            .unwrap();
        // Dropping the remote handle cancels the sync (and its endpoint).
        let running = spawner.spawn_with_handle(async move {
            let _ = work.await;
        });
        (handle, running.unwrap(), addr)
    };
    let _patient_sync = start(&patient, &mut pool);
    let (doctor_handle, doctor_sync, first_addr) = start(&doctor, &mut pool);
    pool.run_until(wait_until(
        &[&patient, &doctor],
        || async {
            doctor.writable().await && resource(&doctor, "Observation", "o1").await.is_some()
        },
        "the doctor never synced over iroh",
    ));
    eprintln!("first sync after {:?}", started.elapsed());

    // The doctor's device goes away; both write while apart.
    drop((doctor_handle, doctor_sync));
    pool.run_until(async {
        patient.put(COND_PATIENT.to_vec()).await.unwrap();
        doctor.put(COND_DOCTOR.to_vec()).await.unwrap();
        async_io::Timer::after(Duration::from_millis(300)).await;
        for r in [&patient, &doctor] {
            r.update().await.unwrap();
        }
        assert!(resource(&patient, "Condition", "c-doctor").await.is_none());
        assert!(resource(&doctor, "Condition", "c-patient").await.is_none());
    });

    // Back on a new endpoint: same identity, another port.
    let back = Instant::now();
    let (_doctor_handle, _doctor_sync, second_addr) = start(&doctor, &mut pool);
    assert_eq!(second_addr.id, first_addr.id);
    assert_ne!(second_addr, first_addr);
    pool.run_until(wait_until(
        &[&patient, &doctor],
        || async {
            resource(&patient, "Condition", "c-doctor").await.is_some()
                && resource(&doctor, "Condition", "c-patient").await.is_some()
                && dump(&patient).await == dump(&doctor).await
        },
        "the offline writes never crossed after the doctor came back",
    ));
    eprintln!(
        "reconverged {:?} after the doctor came back ({:?} in all)",
        back.elapsed(),
        started.elapsed()
    );
}
