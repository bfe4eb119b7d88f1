//! The Rust side of `../shared/anchors/compare.sh`: runs the same workloads as
//! `js/bench.js` and prints one JSON line per figure on stdout.
//!
//! `cargo run --release -p ehr-benches --bin compare -- [GROUP ...]`
//! (GROUP: hypercore | replication | hyperbee | autobase; default all).
//! Honours the same count overrides as the JS suite (N_BLOCKS, BLOCK_SIZE, BATCH, ...).

use ehr_benches::{blocks, env_usize, error_line, rate_line};
use hypercore_rs::{Core, DiskStorage, Storage};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let groups: Vec<&str> = if args.is_empty() {
        vec!["hypercore", "replication", "hyperbee", "autobase"]
    } else {
        args.iter().map(|s| s.as_str()).collect()
    };
    for g in groups {
        let t0 = Instant::now();
        let result = match g {
            "hypercore" => futures::executor::block_on(hypercore()),
            "replication" => Err("replication.error: replication is not built yet".to_string()),
            "hyperbee" => Err("hyperbee.error: hyperbee-rs is not built yet".to_string()),
            "autobase" => Err("autobase.error: autobase-rs is not built yet".to_string()),
            other => Err(format!("{other}.error: unknown group")),
        };
        if let Err(e) = result {
            let (figure, msg) = e.split_once(": ").unwrap_or(("compare.error", e.as_str()));
            println!("{}", error_line(figure, msg));
        }
        eprintln!("[rust] {g} done in {:.1} s", t0.elapsed().as_secs_f64());
    }
}

async fn open_core(dir: &std::path::Path) -> Result<Core, String> {
    let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(dir).map_err(|e| e.to_string())?);
    Core::builder(storage)
        .open()
        .await
        .map_err(|e| e.to_string())
}

async fn hypercore() -> Result<(), String> {
    let fail = |e: hypercore_rs::Error| format!("hypercore.error: {e}");
    let n = env_usize("N_BLOCKS", 100_000);
    let size = env_usize("BLOCK_SIZE", 1024);
    let batch = env_usize("BATCH", 100).max(1);
    let data = blocks(n, size, 1);
    let bytes = (n * size) as u64;
    let root = tempfile::tempdir().map_err(|e| format!("hypercore.error: {e}"))?;
    let block_size = [("block_size", size.to_string())];

    // (1a) one append call per block, fresh on-disk core, no fsync per append.
    let single = open_core(&root.path().join("append-single"))
        .await
        .map_err(|e| format!("hypercore.error: {e}"))?;
    let t0 = Instant::now();
    for b in &data {
        single.append(b).await.map_err(fail)?;
    }
    println!(
        "{}",
        rate_line(
            "hypercore.append.single",
            n as u64,
            bytes,
            t0.elapsed().as_secs_f64(),
            &block_size
        )
    );

    // (1b) BATCH blocks per append call.
    let batched = open_core(&root.path().join("append-batch"))
        .await
        .map_err(|e| format!("hypercore.error: {e}"))?;
    let t0 = Instant::now();
    for chunk in data.chunks(batch) {
        batched.append_batch(chunk).await.map_err(fail)?;
    }
    let calls = n.div_ceil(batch).to_string();
    println!(
        "{}",
        rate_line(
            &format!("hypercore.append.batch{batch}"),
            n as u64,
            bytes,
            t0.elapsed().as_secs_f64(),
            &[("block_size", size.to_string()), ("calls", calls)]
        )
    );
    drop(batched);

    // (2) sequential get of every block of the single-append core.
    let t0 = Instant::now();
    let mut got = 0u64;
    for i in 0..n as u64 {
        got += single
            .get(i)
            .await
            .map_err(fail)?
            .map(|b| b.len() as u64)
            .unwrap_or(0);
    }
    let secs = t0.elapsed().as_secs_f64();
    if got != bytes {
        return Err(format!(
            "hypercore.error: get returned {got} bytes, expected {bytes}"
        ));
    }
    println!(
        "{}",
        rate_line("hypercore.get.seq", n as u64, bytes, secs, &block_size)
    );
    Ok(())
}
