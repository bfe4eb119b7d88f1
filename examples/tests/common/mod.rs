//! Shared by the end-to-end tests: run the real `ehr` binary against a
//! data folder, expect success or exactly one error line, and run a
//! listening peer that is killed when the test ends.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The binary under test.
pub(crate) const EHR: &str = env!("CARGO_BIN_EXE_ehr");
/// A small FHIR transaction Bundle about Patient/alice.
pub(crate) const BUNDLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo-bundle.json");

/// Kills the child process when dropped, even if the test panics.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `ehr --data DATA ARGS`, with `EHR_PASSPHRASE` set to `pass` (or
/// unset) and no inherited data-folder default.
pub(crate) fn ehr_env(data: &Path, args: &[&str], pass: Option<&str>) -> Output {
    let mut c = Command::new(EHR);
    c.arg("--data")
        .arg(data)
        .args(args)
        .env_remove("XDG_DATA_HOME")
        .env_remove("EHR_PASSPHRASE");
    if let Some(p) = pass {
        c.env("EHR_PASSPHRASE", p);
    }
    c.output().expect("run ehr")
}

/// Runs `ehr` without a passphrase.
pub(crate) fn ehr(data: &Path, args: &[&str]) -> Output {
    ehr_env(data, args, None)
}

/// Expects success; returns stdout.
pub(crate) fn ok_env(data: &Path, args: &[&str], pass: Option<&str>) -> String {
    let o = ehr_env(data, args, pass);
    assert!(
        o.status.success(),
        "ehr {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Expects success without a passphrase; returns stdout.
pub(crate) fn ok(data: &Path, args: &[&str]) -> String {
    ok_env(data, args, None)
}

/// Expects failure with exactly one `error: ` line on stderr; returns it.
pub(crate) fn fails_env(data: &Path, args: &[&str], pass: Option<&str>) -> String {
    let o = ehr_env(data, args, pass);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "ehr {args:?} should fail");
    assert_eq!(err.trim_end().lines().count(), 1, "one line, got {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

/// [`fails_env`] without a passphrase.
pub(crate) fn fails(data: &Path, args: &[&str]) -> String {
    fails_env(data, args, None)
}

/// Expects success and JSON on stdout.
pub(crate) fn json(data: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(data, args)).unwrap()
}

/// Starts `ehr sync --listen 127.0.0.1:0` on `data`; returns the process
/// (killed on drop) and the address it listens on.
pub(crate) fn listen(data: &Path) -> (Killed, String) {
    listen_env(data, &[])
}

/// [`listen`] with extra environment variables.
pub(crate) fn listen_env(data: &Path, env: &[(&str, &str)]) -> (Killed, String) {
    let mut child = Command::new(EHR)
        .arg("--data")
        .arg(data)
        .args(["sync", "--listen", "127.0.0.1:0"])
        .env_remove("EHR_PASSPHRASE")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected {line:?}"))
        .to_owned();
    (Killed(child), addr)
}
