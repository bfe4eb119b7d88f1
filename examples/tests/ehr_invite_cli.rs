//! End to end with invites: the real `ehr` binary in separate processes.
//! The patient creates an invite; the doctor redeems it over TCP loopback
//! against the patient's `ehr sync --listen`, writes, syncs; the patient
//! revokes. Expired, cancelled and reused invites give one clear line, a
//! non-zero exit, grant nothing and leave the provider's folder unjoined.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::path::Path;

fn invite(p: &Path, args: &[&str]) -> (String, String) {
    let mut a = vec!["invite", "create", "--json"];
    a.extend_from_slice(args);
    let v = json(p, &a);
    (
        v["invite"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

const CONDITION: &str = r#"{"resourceType":"Condition","id":"htn","subject":{"reference":"Patient/alice"},"code":{"text":"Hypertension"},"onsetDateTime":"2025-02-11"}"#;

#[test]
fn invite_join_write_sync_revoke_and_bad_invites() {
    let root = tempfile::tempdir().unwrap();
    let p = root.path().join("patient");
    ok(&p, &["init", "--patient", "alice"]);
    ok(&p, &["import", BUNDLE]);
    let d = root.path().join("doctor");
    ok(&d, &["init", "--provider", "Dr. Osei"]);
    let lab = root.path().join("lab");
    ok(&lab, &["init", "--provider", "Lab"]);

    let (good, good_id) = invite(
        &p,
        &[
            "--role",
            "practitioner",
            "--scopes",
            "patient/*.cruds",
            "--expires",
            "1h",
        ],
    );
    assert!(good.starts_with("ehr-invite1:"));
    let (short, _) = invite(&p, &["--role", "lab", "--expires", "1s"]);
    let (cancelled, cancelled_id) = invite(&p, &["--role", "lab", "--expires", "1h"]);
    ok(&p, &["invite", "cancel", &cancelled_id]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let grants_before = json(&p, &["grants", "list", "--json"]);

    // A damaged invite text is refused before any connection.
    let mut damaged = good.clone().into_bytes();
    let last = damaged.len() - 1;
    damaged[last] = if damaged[last] == b'a' { b'b' } else { b'a' };
    let e = fails(
        &d,
        &[
            "join",
            std::str::from_utf8(&damaged).unwrap(),
            "--peer",
            "127.0.0.1:9",
        ],
    );
    assert!(e.contains("damaged"), "{e}");

    let doc_writer;
    {
        let (_sync, addr) = listen(&p);
        // Expired and cancelled: one line each, nothing granted, the lab's
        // folder still joined nothing.
        let e = fails(&lab, &["join", &short, "--peer", &addr]);
        assert!(e.contains("expired"), "{e}");
        let e = fails(&lab, &["join", &cancelled, "--peer", &addr]);
        assert!(e.contains("cancelled"), "{e}");
        assert_eq!(
            json(&lab, &["whoami", "--json"])["record_key"],
            serde_json::Value::Null
        );

        // The doctor redeems the good one and holds the record at once.
        let out = ok(&d, &["join", &good, "--peer", &addr]);
        assert!(out.contains("joined the record of patient alice"), "{out}");
        assert!(out.contains("practitioner"), "{out}");
        let who = json(&d, &["whoami", "--json"]);
        assert_eq!(who["patient"], "alice");
        assert_eq!(who["writable"], true);
        doc_writer = who["writer_key"].as_str().unwrap().to_owned();

        // Reused by someone else: refused.
        let e = fails(&lab, &["join", &good, "--peer", &addr]);
        assert!(e.contains("already used"), "{e}");

        // The doctor writes and syncs back; later connections are let in
        // by the grant (it names the doctor's network identity).
        let cond = root.path().join("cond.json");
        std::fs::write(&cond, CONDITION).unwrap();
        ok(&d, &["put", cond.to_str().unwrap()]);
        let out = ok(&d, &["sync", "--peer", &addr, "--once", "--timeout", "20"]);
        assert!(out.contains("caught up"), "{out}");
    }
    let got = ok(&p, &["get", "Condition", "htn", "--json"]);
    assert_eq!(got.trim_end(), CONDITION);

    // Only the doctor was granted; the bad invites changed no grant.
    let grants = json(&p, &["grants", "list", "--json"]);
    let n = |g: &serde_json::Value| g.as_array().unwrap().len();
    assert_eq!(n(&grants), n(&grants_before) + 1);
    let doc = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["writer"] == doc_writer.as_str())
        .unwrap();
    assert_eq!(doc["grant"]["role"], "practitioner");
    let list = json(&p, &["invite", "list", "--json"]);
    let status = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(status(&good_id).starts_with("used by"));
    assert_eq!(status(&cancelled_id), "cancelled");

    // Revoke: the doctor's later write never reaches the patient.
    ok(&p, &["grants", "revoke", &doc_writer]);
    let late = root.path().join("late.json");
    std::fs::write(&late, CONDITION.replace("htn", "late")).unwrap();
    let _ = ehr(&d, &["put", late.to_str().unwrap()]);
    {
        let (_sync, addr) = listen(&p);
        let _ = ehr(&d, &["sync", "--peer", &addr, "--once", "--timeout", "3"]);
    }
    fails(&p, &["get", "Condition", "late"]);
    let audit = json(&p, &["audit", "list", "--json"]);
    let codes: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["subtype"][0]["code"].as_str())
        .collect();
    assert!(codes.iter().any(|c| c.contains("invite")), "{codes:?}");
}

/// A stranger: dials `addr`, completes the Noise handshake with a fresh
/// identity, and then sends nothing.
async fn silent_stranger(
    addr: &str,
    seed: u8,
) -> impl futures::Stream<Item = Result<Vec<u8>, swarm_rs::StreamError>> + Unpin {
    let tcp = async_net::TcpStream::connect(addr.to_owned())
        .await
        .unwrap();
    swarm_rs::SecureStream::handshake(
        tcp,
        swarm_rs::Role::Initiator,
        &swarm_rs::KeyPair::from_seed([seed; 32]),
        swarm_rs::SecureConfig::default(),
        &mut swarm_rs::OsEntropy,
        std::sync::Arc::new(swarm_rs::SystemClock),
    )
    .await
    .unwrap()
}

/// Whether the listener closed `conn` (without sending it anything)
/// within `within`.
async fn closed_within(
    conn: &mut (impl futures::Stream<Item = Result<Vec<u8>, swarm_rs::StreamError>> + Unpin),
    within: std::time::Duration,
) -> bool {
    use futures::StreamExt;
    let next = conn.next();
    let timer = async_io::Timer::after(within);
    futures::pin_mut!(timer);
    match futures::future::select(next, timer).await {
        futures::future::Either::Left((Some(Ok(m)), _)) => panic!("a stranger was sent {m:?}"),
        futures::future::Either::Left(_) => true,
        futures::future::Either::Right(_) => false,
    }
}

/// `ehr sync --listen` limits strangers on the invite channel like the
/// library: eight silent ones wait, the ninth is closed at once, the eight
/// are closed after `EHR_INVITE_TIMEOUT_MS`, and a real redeemer joins
/// while a silent stranger waits.
#[test]
fn the_listener_times_out_silent_strangers_and_caps_them_at_eight() {
    use std::time::{Duration, Instant};
    let root = tempfile::tempdir().unwrap();
    let p = root.path().join("patient");
    ok(&p, &["init", "--patient", "alice"]);
    let d = root.path().join("doctor");
    ok(&d, &["init", "--provider", "Dr. Osei"]);
    let (good, _) = invite(&p, &["--role", "practitioner", "--expires", "1h"]);
    let timeout = Duration::from_millis(2_500);
    let (_sync, addr) = listen_env(&p, &[("EHR_INVITE_TIMEOUT_MS", "2500")]);
    futures::executor::block_on(async {
        let start = Instant::now();
        let mut eight = Vec::new();
        for i in 0..8u8 {
            eight.push(silent_stranger(&addr, 10 + i).await);
            // Let the listener take each one to the gate.
            async_io::Timer::after(Duration::from_millis(60)).await;
        }
        let mut ninth = silent_stranger(&addr, 30).await;
        assert!(
            closed_within(&mut ninth, Duration::from_millis(1_000)).await,
            "the ninth stranger was not refused"
        );
        assert!(
            start.elapsed() < timeout,
            "the ninth was refused by the cap, not the timeout"
        );
        for (i, c) in eight.iter_mut().enumerate() {
            assert!(
                closed_within(c, timeout * 3).await,
                "stranger {i} was never closed"
            );
        }
        assert!(
            start.elapsed() >= timeout - Duration::from_millis(100),
            "closed before the timeout: {:?}",
            start.elapsed()
        );
        // The slots are free again: a silent stranger waits while the
        // doctor redeems.
        let _waiting = silent_stranger(&addr, 40).await;
        let out = ok(&d, &["join", &good, "--peer", &addr]);
        assert!(out.contains("joined"), "{out}");
    });
}
