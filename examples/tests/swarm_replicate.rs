//! End to end: the `swarm-replicate` writer and reader run as two separate
//! processes, meet through a rendezvous folder, and the reader prints blocks
//! it verified over TCP loopback + Noise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The whole test gives up after this long.
const DEADLINE: Duration = Duration::from_secs(60);

/// Kills the child process when dropped, even if the test panics.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the example and forwards its stdout lines to a channel.
fn start(args: &[&str]) -> (Killed, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_swarm-replicate"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start swarm-replicate");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Killed(child), rx)
}

fn next_line(rx: &mpsc::Receiver<String>, start: Instant) -> String {
    let left = DEADLINE.saturating_sub(start.elapsed());
    rx.recv_timeout(left)
        .expect("the example printed nothing in time (or exited)")
}

#[test]
fn a_reader_process_receives_verified_blocks_from_a_writer_process() {
    let start_time = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (rendezvous, writer_data, reader_data) = (path("rendezvous"), path("w"), path("r"));
    let topic = "e2e-swarm-replicate";

    let (_writer, writer_out) = start(&[
        "write",
        "--topic",
        topic,
        "--data",
        &writer_data,
        "--rendezvous",
        &rendezvous,
        "--interval-ms",
        "200",
    ]);
    let first = next_line(&writer_out, start_time);
    let key = first
        .strip_prefix("key ")
        .unwrap_or_else(|| panic!("expected the key first, got {first:?}"))
        .to_owned();
    assert_eq!(key.len(), 64);

    let (_reader, reader_out) = start(&[
        "read",
        "--topic",
        topic,
        "--key",
        &key,
        "--data",
        &reader_data,
        "--rendezvous",
        &rendezvous,
    ]);
    // The reader prints blocks in order, from 0, exactly as written.
    for expected in 0..5 {
        let line = next_line(&reader_out, start_time);
        assert_eq!(
            line,
            format!("block {expected}: line {expected}: blood pressure 120/80")
        );
    }
    // The writer really wrote what the reader got.
    let appended: Vec<String> = writer_out.try_iter().collect();
    assert!(appended.iter().any(|l| l.starts_with("appended 4: ")));
    // Both processes are killed by `Killed` here.
}
