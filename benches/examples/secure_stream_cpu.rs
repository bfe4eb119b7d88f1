//! CPU time per 64 KiB frame through a swarm-rs secure stream over TCP
//! loopback, both ends on this one thread, next to the cost of the AEAD
//! alone (seal + open of 64 KiB): the ceiling for one core doing both ends.
//!
//! Criterion's wall-clock figures swing widely on a shared, loaded machine;
//! this thread's CPU time (Linux `/proc/thread-self/schedstat`) does not count
//! time spent waiting for a core, so it is the steadier "one core" figure.
//!
//! `cargo run --release -p ehr-benches --example secure_stream_cpu [FRAMES]`

// A measuring tool: it aborts on a setup failure.
#![allow(clippy::expect_used, missing_docs)]

use std::time::Instant;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use ehr_benches::tcp::secure_pair;
use futures::executor::block_on;
use futures::{SinkExt, StreamExt};

const FRAME: usize = 64 * 1024;

/// Nanoseconds this thread has run on a CPU (Linux only).
fn cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

fn report(what: &str, frames: u64, cpu: Option<u64>, wall: f64) {
    let bytes = (frames * FRAME as u64) as f64;
    match cpu {
        Some(ns) => println!(
            "{what}: {:.0} MB/s per core ({:.1} us CPU per frame), wall clock {:.0} MB/s",
            bytes / (ns as f64 / 1e9) / 1e6,
            ns as f64 / 1e3 / frames as f64,
            bytes / wall / 1e6
        ),
        None => println!("{what}: wall clock {:.0} MB/s", bytes / wall / 1e6),
    }
}

fn main() {
    let frames: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let frame = vec![7u8; FRAME];

    let aead = ChaCha20Poly1305::new(&[1u8; 32].into());
    let mut buf = frame.clone();
    let (c0, t0) = (cpu_ns(), Instant::now());
    for i in 0..frames {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_le_bytes());
        let tag = aead
            .encrypt_in_place_detached(&nonce.into(), &[], &mut buf)
            .expect("seal");
        aead.decrypt_in_place_detached(&nonce.into(), &[], &mut buf, &tag)
            .expect("open");
    }
    let cpu = cpu_ns().zip(c0).map(|(b, a)| b - a);
    report(
        "AEAD only (seal + open)",
        frames,
        cpu,
        t0.elapsed().as_secs_f64(),
    );

    let (mut a, mut b) = block_on(secure_pair()).expect("secure pair");
    for round in 1..=3 {
        let (c0, t0) = (cpu_ns(), Instant::now());
        block_on(async {
            let send = async {
                for _ in 0..frames {
                    a.feed(frame.clone()).await.expect("send");
                }
                a.flush().await.expect("flush");
            };
            let receive = async {
                for _ in 0..frames {
                    let got = b.next().await.expect("open").expect("frame");
                    assert_eq!(got.len(), FRAME);
                }
            };
            futures::future::join(send, receive).await;
        });
        let cpu = cpu_ns().zip(c0).map(|(b, a)| b - a);
        report(
            &format!("secure stream, both ends, round {round}"),
            frames,
            cpu,
            t0.elapsed().as_secs_f64(),
        );
    }
}
