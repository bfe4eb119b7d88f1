//! The `autobase-demo` tour runs to the end: the peers converge after
//! writing apart (the same view hash on all three, where it differed on
//! each while apart), and the new device starts from a checkpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// The view hash printed on a peer line (`view HASH ...`).
fn view_of(line: &str) -> &str {
    line.split_whitespace()
        .skip_while(|w| *w != "view")
        .nth(1)
        .expect("a view hash")
}

#[test]
fn the_autobase_demo_converges_and_starts_a_joiner_from_a_checkpoint() {
    let out = Command::new(env!("CARGO_BIN_EXE_autobase-demo"))
        .output()
        .expect("run autobase-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let section = |title: &str| -> Vec<&str> {
        lines
            .iter()
            .skip_while(|l| !l.starts_with(title))
            .skip(1)
            .take_while(|l| !l.starts_with("=="))
            .filter(|l| l.contains(" view "))
            .copied()
            .collect()
    };
    let apart = section("== offline");
    let met = section("== they meet");
    assert_eq!(apart.len(), 3, "{stdout}");
    assert_eq!(met.len(), 3, "{stdout}");
    assert!(
        view_of(apart[0]) != view_of(apart[1]) && view_of(apart[1]) != view_of(apart[2]),
        "apart, each peer has its own view:\n{stdout}"
    );
    assert!(
        met.iter().all(|l| view_of(l) == view_of(met[0])),
        "after meeting, one view:\n{stdout}"
    );
    for w in [
        "weight=71kg",
        "note=from-laptop",
        "bp=120/80",
        "visit=2026-11-26",
    ] {
        assert!(met[0].contains(w), "{w} missing:\n{stdout}");
    }
    assert_eq!(stdout.matches("converged: true").count(), 2, "{stdout}");
    assert!(
        stdout.contains("from the checkpoint: 0 apply call(s)"),
        "the joiner did not start from a checkpoint:\n{stdout}"
    );
}
