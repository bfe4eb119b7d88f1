//! End to end: the real `ehr` binary, run as separate processes against
//! temporary data folders. A patient and a doctor (and a lab) meet over TCP
//! loopback; bad input of every kind gets one clear line, a non-zero exit
//! and leaves the data unchanged; a killed import leaves a consistent record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn patient(root: &Path) -> (std::path::PathBuf, String) {
    let p = root.join("patient");
    ok(&p, &["init", "--patient", "alice"]);
    ok(&p, &["import", BUNDLE]);
    let key = json(&p, &["whoami", "--json"])["record_key"]
        .as_str()
        .unwrap()
        .to_owned();
    (p, key)
}

/// A provider that joined `key`: its folder, writer key and identity.
fn provider(root: &Path, name: &str, key: &str) -> (std::path::PathBuf, String, String) {
    let d = root.join(name);
    ok(&d, &["init", "--provider", name]);
    ok(&d, &["join", key]);
    let who = json(&d, &["whoami", "--json"]);
    let s = |k: &str| who[k].as_str().unwrap().to_owned();
    (d, s("writer_key"), s("identity"))
}

const CONDITION: &str = r#"{"resourceType":"Condition","id":"htn","subject":{"reference":"Patient/alice"},"code":{"text":"Hypertension"},"onsetDateTime":"2025-02-11","note":[{"text":"BP 150/95, 4.30 ratio"}]}"#;

#[test]
fn grant_join_write_sync_revoke_across_processes() {
    let root = tempfile::tempdir().unwrap();
    let (p, key) = patient(root.path());
    let (d, dk, di) = provider(root.path(), "doctor", &key);
    let (x, _, _) = provider(root.path(), "stranger", &key);

    // Before any grant or sync the doctor's write is refused, nothing written.
    let cond = root.path().join("cond.json");
    std::fs::write(&cond, CONDITION).unwrap();
    fails(&d, &["put", cond.to_str().unwrap()]);

    ok(
        &p,
        &[
            "grants",
            "add",
            &dk,
            "--role",
            "practitioner",
            "--scopes",
            "patient/*.cruds",
            "--expiry",
            "30d",
            "--identity",
            &di,
        ],
    );
    let grants = json(&p, &["grants", "list", "--json"]);
    assert!(grants
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["writer"] == dk.as_str()));

    {
        let (_sync, addr) = listen(&p);
        // The firewall: an identity no grant names gets nothing.
        let _ = ehr(&x, &["sync", "--peer", &addr, "--once", "--timeout", "3"]);
        assert_eq!(json(&x, &["whoami", "--json"])["patient"], "");
        let out = ok(&d, &["sync", "--peer", &addr, "--once", "--timeout", "20"]);
        assert!(out.contains("caught up"), "{out}");
        // The doctor now holds the imported record and its grant.
        let who = json(&d, &["whoami", "--json"]);
        assert_eq!(who["patient"], "alice");
        assert_eq!(who["writable"], true);
        let s = json(&d, &["summary", "--json"]);
        assert_eq!(s["allergies"].as_array().unwrap().len(), 1);

        ok(&d, &["put", cond.to_str().unwrap()]);
        ok(&d, &["sync", "--peer", &addr, "--once", "--timeout", "20"]);
    }
    // The patient's process stopped: the patient reads the doctor's write
    // byte for byte, authored by the doctor.
    let got = ehr(&p, &["get", "Condition", "htn", "--json"]);
    assert!(got.status.success());
    assert_eq!(String::from_utf8(got.stdout).unwrap().trim_end(), CONDITION);
    let h = json(&p, &["search", "Condition", "--json"]);
    let htn = h
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "htn")
        .unwrap();
    assert_eq!(htn["author"], dk.as_str());

    // Revoke: the patient's firewall no longer lets the doctor in, so
    // whatever the doctor writes from now on never reaches the patient.
    ok(&p, &["grants", "revoke", &dk]);
    let late = root.path().join("late.json");
    std::fs::write(&late, CONDITION.replace("htn", "late")).unwrap();
    let _ = ehr(&d, &["put", late.to_str().unwrap()]);
    {
        let (_sync, addr) = listen(&p);
        let _ = ehr(&d, &["sync", "--peer", &addr, "--once", "--timeout", "3"]);
    }
    fails(&p, &["get", "Condition", "late"]);
    let g = json(&p, &["grants", "list", "--json"]);
    let doc = g
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["writer"] == dk.as_str())
        .unwrap();
    assert_eq!(doc["grant"]["revoked"], true);
    // The audit trail: the revocation is an AuditEvent; the exported
    // package verifies offline (from a folder with no data) against the
    // record key, and a flipped byte fails with one line.
    let audit = json(&p, &["audit", "list", "--json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["subtype"][0]["code"] == "revoke"),
        "{audit}"
    );
    let pkg = root.path().join("audit.pkg");
    ok(&p, &["audit", "export", "--out", pkg.to_str().unwrap()]);
    let nowhere = root.path().join("nowhere");
    let v = json(
        &nowhere,
        &[
            "audit",
            "verify",
            pkg.to_str().unwrap(),
            "--record",
            &key,
            "--json",
        ],
    );
    assert!(!v.as_array().unwrap().is_empty());
    let mut bytes = std::fs::read(&pkg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&pkg, bytes).unwrap();
    let e = fails(
        &nowhere,
        &["audit", "verify", pkg.to_str().unwrap(), "--record", &key],
    );
    assert!(e.contains("does NOT verify"), "{e}");

    let list = ok(&p, &["grants", "list"]);
    assert!(list.contains("revoked"), "{list}");
}

#[test]
fn the_demo_runs_and_converges() {
    let t = Instant::now();
    let o = Command::new(EHR).arg("demo").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "6 resources imported",
        "hash verified",
        "byte-identical",
        "conflict marker on versions",
        "refused",
        "revoked on every peer",
        "verified offline",
        "verification fails",
        "done in",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(t.elapsed() < Duration::from_secs(60));
}

#[test]
fn bad_input_gets_one_line_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // No data folder yet.
    let e = fails(&r.join("nothing"), &["summary"]);
    assert!(e.contains("ehr init"), "{e}");

    let (p, _) = patient(r);
    let before = ok(&p, &["export"]);
    let file = |name: &str, text: &str| {
        let f = r.join(name);
        std::fs::write(&f, text).unwrap();
        f.to_str().unwrap().to_owned()
    };
    // A missing file.
    let e = fails(&p, &["import", "/no/such/bundle.json"]);
    assert!(e.contains("no such file"), "{e}");
    // Malformed JSON; a Bundle with one bad entry (atomic: nothing written);
    // a resource about another patient; an unknown type.
    fails(
        &p,
        &["import", &file("bad.json", "{\"resourceType\":\"Bundle\",")],
    );
    let e = fails(
        &p,
        &[
            "import",
            &file(
                "mixed.json",
                r#"{"resourceType":"Bundle","type":"transaction","entry":[
            {"resource":{"resourceType":"Observation","id":"good","status":"final","subject":{"reference":"Patient/alice"}},"request":{"method":"PUT","url":"Observation/good"}},
            {"resource":{"resourceType":"Observation","id":"bad","subject":{"reference":"Patient/bob"}},"request":{"method":"PUT","url":"Observation/bad"}}]}"#,
            ),
        ],
    );
    assert!(e.contains("nothing was written"), "{e}");
    fails(
        &p,
        &[
            "put",
            &file(
                "other.json",
                r#"{"resourceType":"Condition","subject":{"reference":"Patient/bob"}}"#,
            ),
        ],
    );
    fails(
        &p,
        &[
            "put",
            &file("unknown.json", r#"{"resourceType":"Spaceship","id":"x"}"#),
        ],
    );
    // Bad keys, roles, scopes, expiries.
    fails(&p, &["grants", "add", "zz"]);
    fails(&p, &["grants", "add", &"ab".repeat(32), "--role", "wizard"]);
    fails(
        &p,
        &["grants", "add", &"ab".repeat(32), "--scopes", "everything"],
    );
    let e = fails(
        &p,
        &["grants", "add", &"ab".repeat(32), "--expiry", "2001-01-01"],
    );
    assert!(e.contains("past"), "{e}");
    fails(&p, &["grants", "revoke", &"cd".repeat(32)]);
    fails(&p, &["get", "Observation", "nope"]);
    fails(&p, &["init", "--patient", "again"]);
    // An unreachable peer.
    let e = fails(&p, &["sync", "--peer", "127.0.0.1:1", "--once"]);
    assert!(e.contains("cannot reach peer"), "{e}");
    // A data folder in use by another process.
    {
        let (_sync, _) = listen(&p);
        let e = fails(&p, &["put", &file("ok.json", CONDITION)]);
        assert!(e.contains("in use"), "{e}");
        fails(&p, &["import", BUNDLE]);
    }
    assert_eq!(ok(&p, &["export"]), before, "nothing was written");
}

/// A transaction Bundle of `n` Observations.
fn big_bundle(n: usize) -> String {
    let entries: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"resource":{{"resourceType":"Observation","id":"o{i}","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"2345-7"}}]}},"subject":{{"reference":"Patient/alice"}},"effectiveDateTime":"2024-01-{:02}","valueQuantity":{{"value":{}.{:02}}}}},"request":{{"method":"PUT","url":"Observation/o{i}"}}}}"#,
                i % 28 + 1,
                i % 10,
                i % 100
            )
        })
        .collect();
    format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{}]}}"#,
        entries.join(",")
    )
}

#[test]
fn an_import_killed_midway_leaves_a_consistent_record() {
    let root = tempfile::tempdir().unwrap();
    let (p, _) = patient(root.path());
    let n = 4000;
    let f = root.path().join("big.json");
    std::fs::write(&f, big_bundle(n)).unwrap();
    let count = |p: &Path| -> usize {
        let v = json(
            p,
            &[
                "search",
                "Observation",
                "--code",
                "http://loinc.org|2345-7",
                "--limit",
                "1000",
                "--json",
            ],
        );
        v.as_array().unwrap().len()
    };
    let mut outcomes = Vec::new();
    for delay_ms in [40u64, 400, 1200, 2500] {
        let mut child = Killed(
            Command::new(EHR)
                .arg("--data")
                .arg(&p)
                .args(["import", f.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.0.kill();
        let _ = child.0.wait();
        drop(child);
        // Reopens; all of the Bundle or none of it.
        let c = count(&p);
        assert!(
            c == 0 || c == 1000,
            "partial import: {c} after {delay_ms} ms"
        );
        let has = |id: &str| {
            ehr(&p, &["get", "Observation", id, "--json"])
                .status
                .success()
        };
        assert_eq!(has("o0"), has(&format!("o{}", n - 1)), "all or nothing");
        assert_eq!(has("o0"), c > 0);
        outcomes.push(c);
        // Still readable.
        let w = ok(&p, &["summary"]);
        assert!(w.contains("alice"));
    }
    // A last import runs to the end and everything is there.
    ok(&p, &["import", f.to_str().unwrap()]);
    assert_eq!(count(&p), 1000);
    let s = json(&p, &["summary", "--json"]);
    assert_eq!(s["conditions"].as_array().unwrap().len(), 1);
    eprintln!("counts after kills: {outcomes:?}");
}
