//! End to end with the real `ehr` binary in separate processes: keys at
//! rest locked by a passphrase (a wrong or missing one is one line, a
//! non-zero exit and no change to the data folder), `sync --once` stopping
//! once lengths match the peer's, and emergency access by 2 of 3 contacts
//! (too few or forged shares refused, the opening audited for the patient).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

const ALLERGY: &str = r#"{"resourceType":"AllergyIntolerance","id":"peanut","patient":{"reference":"Patient/alice"},"code":{"text":"Peanut allergy"}}"#;
const NOTE: &str = r#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/alice"},"code":{"text":"weight"},"valueQuantity":{"value":70.5}}"#;

#[test]
fn passphrase_locks_the_keys_and_a_wrong_one_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let p = root.path().join("patient");
    let pass = Some("correct horse battery");
    ok_env(&p, &["init", "--patient", "alice"], pass);
    assert!(p.join("keys.locked").exists());
    let file = root.path().join("obs.json");
    std::fs::write(&file, NOTE).unwrap();
    ok_env(&p, &["put", file.to_str().unwrap()], pass);

    // The store holds no secret: the seed is only in keys.locked.
    let locked = std::fs::read(p.join("keys.locked")).unwrap();
    let seed = ehr_core::keystore::unlock(&locked, b"correct horse battery")
        .unwrap()
        .identity_seed;
    for (path, bytes) in snapshot(&p.join("store")) {
        assert!(
            !bytes.windows(32).any(|w| w == seed),
            "seed in clear in {path:?}"
        );
    }

    let before = snapshot(&p);
    // Wrong passphrase, and none at all: one line, non-zero, nothing changed.
    for args in [
        &["get", "Observation", "o1"][..],
        &["put", file.to_str().unwrap()][..],
        &["whoami"][..],
    ] {
        let e = fails_env(&p, args, Some("wrong"));
        assert!(e.contains("wrong passphrase"), "{e}");
        let e = fails_env(&p, args, None);
        assert!(e.contains("locked with a passphrase"), "{e}");
    }
    assert_eq!(snapshot(&p), before, "a refused command changed the data");

    // --passphrase-file and --passphrase work too.
    let pf = root.path().join("pass.txt");
    std::fs::write(&pf, "correct horse battery\n").unwrap();
    let got = ok_env(
        &p,
        &[
            "--passphrase-file",
            pf.to_str().unwrap(),
            "get",
            "Observation",
            "o1",
            "--json",
        ],
        None,
    );
    assert!(got.contains("70.5"), "{got}");
    ok_env(
        &p,
        &["--passphrase", "correct horse battery", "whoami"],
        None,
    );
}

/// Grants `name` read access (so the patient's firewall lets it connect)
/// and returns its folder and device key.
fn member(root: &Path, patient: &Path, key: &str, name: &str) -> (PathBuf, String) {
    let d = root.join(name);
    ok(&d, &["init", "--provider", name]);
    ok(&d, &["join", key]);
    let who = json(&d, &["whoami", "--json"]);
    let s = |k: &str| who[k].as_str().unwrap().to_owned();
    ok(
        patient,
        &[
            "grants",
            "add",
            &s("writer_key"),
            "--identity",
            &s("identity"),
            "--scopes",
            "patient/*.rs",
        ],
    );
    (d, s("device_key"))
}

#[test]
fn two_of_three_contacts_open_the_emergency_scope_across_processes() {
    let root = tempfile::tempdir().unwrap();
    let p = root.path().join("patient");
    ok(&p, &["init", "--patient", "alice"]);
    let key = json(&p, &["whoami", "--json"])["record_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let allergy = root.path().join("allergy.json");
    std::fs::write(&allergy, ALLERGY).unwrap();
    ok(&p, &["emergency", "put", allergy.to_str().unwrap()]);
    let (c1, k1) = member(root.path(), &p, &key, "c1");
    let (c2, k2) = member(root.path(), &p, &key, "c2");
    let (c3, k3) = member(root.path(), &p, &key, "c3");
    let (er, ker) = member(root.path(), &p, &key, "er");
    let contacts = format!("{k1},{k2},{k3}");
    fails_env(
        &p,
        &[
            "emergency",
            "setup",
            "--contacts",
            &contacts,
            "--threshold",
            "4",
        ],
        None,
    );
    ok(
        &p,
        &[
            "emergency",
            "setup",
            "--contacts",
            &contacts,
            "--threshold",
            "2",
            "--duration",
            "24h",
        ],
    );

    // Everyone catches up with the patient; `--once` returns when lengths match.
    {
        let (_sync, addr) = listen(&p);
        for d in [&c1, &c2, &c3, &er] {
            let t = Instant::now();
            let out = ok(d, &["sync", "--once", "--peer", &addr, "--timeout", "20"]);
            assert!(out.contains("caught up"), "{out}");
            assert!(t.elapsed() < Duration::from_secs(15));
        }
        // A device the patient does not let in is not "caught up": one line.
        let x = root.path().join("stranger");
        ok(&x, &["init", "--provider", "x"]);
        ok(&x, &["join", &key]);
        // (sync reports peers coming and going on stderr; the error is one line.)
        let o = ehr_env(
            &x,
            &["sync", "--once", "--peer", &addr, "--timeout", "10"],
            None,
        );
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains("closed the connection"), "{err}");
    }
    // The sealed allergy is not readable by a member without emergency access.
    let shown = ok(&er, &["get", "AllergyIntolerance", "peanut", "--json"]);
    assert!(!shown.contains("Peanut allergy"), "{shown}");

    let t1 = ok(&c1, &["emergency", "release", "--to", &ker])
        .trim()
        .to_owned();
    let t2 = ok(&c2, &["emergency", "release", "--to", &ker])
        .trim()
        .to_owned();
    // Not a contact: nothing to release.
    fails_env(&er, &["emergency", "release", "--to", &ker], None);
    // One share is not enough; a tampered one is forged.
    let e = fails_env(&er, &["emergency", "open", "--share", &t1], None);
    assert!(e.contains("1 valid share(s), 2 needed"), "{e}");
    let mut forged = t2.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let e = fails_env(
        &er,
        &["emergency", "open", "--share", &t1, "--share", &forged],
        None,
    );
    assert!(e.contains("forged") || e.contains("not a share"), "{e}");

    let opened = json(
        &er,
        &[
            "emergency",
            "open",
            "--share",
            &t1,
            "--share",
            &t2,
            "--responder",
            "Dr. ER",
            "--json",
        ],
    );
    assert_eq!(opened["resources"][0]["code"]["text"], "Peanut allergy");
    let notice = opened["notice"].as_str().unwrap().to_owned();

    // The patient records the opening and sees it.
    fails_env(&p, &["emergency", "accept", "ehr-opening1:00"], None);
    ok(&p, &["emergency", "accept", &notice]);
    let list = json(&p, &["emergency", "list", "--json"]);
    assert_eq!(list["openings"][0]["responder"], "Dr. ER");
    assert!(list["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["detail"].as_str().unwrap().contains("opened by Dr. ER")));
    assert_eq!(list["setup"]["threshold"], 2);
    let _ = c3;
}
