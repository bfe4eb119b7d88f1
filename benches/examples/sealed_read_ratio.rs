//! Sealed reads against clear reads, measured *interleaved*: batches of
//! clear reads and first (uncached) sealed reads of the same resource
//! alternate, so both see the same machine load, and each figure is the
//! fastest batch (the least disturbed one). On a 2-core machine shared
//! with builds, criterion's separate runs of the two move 1.5x run to run;
//! the ratio of interleaved batches stays within a few percent.
//!
//! `EHR_GET_PAD=300 cargo run --release -p ehr-benches --example
//! sealed_read_ratio` (same records as `--bench ehr_security -- get`:
//! `EHR_GET_RESOURCES`, default 1,000 Observations, padded by
//! `EHR_GET_PAD` bytes).

#![allow(clippy::expect_used, clippy::print_stdout, missing_docs)]

use ehr_benches::security::read_records;
use ehr_core::scope_crypto::Keyring;
use futures::executor::block_on;
use std::time::{Duration, Instant};

fn main() {
    let n = ehr_benches::env_usize("EHR_GET_RESOURCES", 1_000).max(2) as u64;
    let rounds = ehr_benches::env_usize("EHR_RATIO_ROUNDS", 2_000);
    let batch = 50;
    let (plain, secure) = read_records(n);
    let id = format!("o{}", n / 2);
    let per_op = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(batch);
    let (mut best_plain, mut best_first, mut best_cached) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..batch {
            block_on(plain.get("Observation", &id))
                .expect("get")
                .expect("present");
        }
        best_plain = best_plain.min(per_op(t.elapsed()));
        // First reads: the cache of opened shells is emptied before each
        // (timed too, as in the criterion bench: adding no keys empties it).
        let t = Instant::now();
        for _ in 0..batch {
            secure.add_keys(Keyring::new());
            block_on(secure.get("Observation", &id))
                .expect("get")
                .expect("present");
        }
        best_first = best_first.min(per_op(t.elapsed()));
        let t = Instant::now();
        for _ in 0..batch {
            block_on(secure.get("Observation", &id))
                .expect("get")
                .expect("present");
        }
        best_cached = best_cached.min(per_op(t.elapsed()));
    }
    println!("get plain                 {best_plain:.3} us");
    println!(
        "get sealed, first read    {best_first:.3} us  ({:.2}x)",
        best_first / best_plain
    );
    println!(
        "get sealed, cached        {best_cached:.3} us  ({:.2}x)",
        best_cached / best_plain
    );
}
