//! A tour of hypercore-rs: append to a signed log on disk, reopen it, let a
//! reader that knows only the key verify blocks from proofs, reject a tampered
//! proof, follow a truncation to a new fork, and serve an encrypted log from a
//! blind mirror.
//!
//! `cargo run --release -p ehr-examples --bin hypercore-demo [-- --data DIR]`

use hypercore_rs::{
    Core, CoreOptions, Corestore, DiskStorage, Error, MemoryStorage, ProofError, ProofRequest,
    Storage, UpgradeRequest,
};
use std::sync::Arc;
use std::time::Instant;

fn hex(b: &[u8]) -> String {
    b.iter()
        .take(8)
        .map(|x| format!("{x:02x}"))
        .collect::<String>()
        + ".."
}

/// Brings `reader` up to date with `holder`: one upgrade, then one proof per missing block.
async fn sync(holder: &Core, reader: &Core) -> Result<usize, Error> {
    let mut bytes = 0;
    let mut req = ProofRequest {
        fork: reader.fork(),
        upgrade: Some(UpgradeRequest {
            start: reader.length(),
        }),
        manifest: reader.manifest().is_none(),
        ..Default::default()
    };
    let up = holder.proof(&req).await?;
    if up.upgrade.is_some() || up.manifest.is_some() {
        match reader.verify(&up).await {
            Err(Error::Proof(ProofError::MissingAnchor)) => {
                // A sparse reader after a fork: start from a boundary it holds.
                req.round_fork_point = true;
                reader.verify(&holder.proof(&req).await?).await?;
            }
            other => {
                other?;
            }
        }
    }
    for i in 0..reader.length() {
        if reader.get_raw(i).await?.is_none() {
            let p = holder
                .proof(&ProofRequest {
                    fork: reader.fork(),
                    block: Some(reader.block_request(i).await?),
                    ..Default::default()
                })
                .await?;
            bytes += p
                .block
                .as_ref()
                .map(|b| b.value.len() + b.nodes.len() * 48)
                .unwrap_or(0);
            reader.verify(&p).await?;
        }
    }
    Ok(bytes)
}

async fn run(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("hypercore-rs demo, data in {}", dir.display());

    // 1. A writer appends 10,000 entries to a named core of a corestore on disk.
    let key = {
        let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(dir)?);
        let store = Corestore::open(storage).await?;
        let log = store.get("visits").await?;
        let start = log.length();
        let t0 = Instant::now();
        let entries: Vec<String> = (start..start + 10_000)
            .map(|i| format!("{{\"visit\":{i},\"note\":\"blood pressure 120/80\"}}"))
            .collect();
        for chunk in entries.chunks(100) {
            log.append_batch(chunk.iter().map(|s| s.as_bytes())).await?;
        }
        log.flush().await?;
        println!(
            "1. appended 10,000 entries in {:.1} ms (100 per call, one signature at flush); length {}",
            t0.elapsed().as_secs_f64() * 1e3,
            log.length()
        );
        println!(
            "   core key {}  discovery key {}",
            hex(&log.key()),
            hex(&log.discovery_key())
        );
        log.key()
    };

    // 2. Reopen from disk: the same seed gives the same writable core, data intact.
    let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(dir)?);
    let store = Corestore::open(storage).await?;
    let log = store.get("visits").await?;
    assert_eq!(log.key(), key);
    let last = log.length() - 1;
    println!(
        "2. reopened: length {}, writable {}, block {last} = {}",
        log.length(),
        log.writable(),
        String::from_utf8_lossy(&log.get(last).await?.unwrap_or_default())
    );

    // 3. A reader that knows only the key verifies everything it is sent.
    let reader = Core::builder(Arc::new(MemoryStorage::new()))
        .key(key)
        .open()
        .await?;
    let up = log
        .proof(&ProofRequest {
            upgrade: Some(UpgradeRequest { start: 0 }),
            manifest: true,
            ..Default::default()
        })
        .await?;
    reader.verify(&up).await?;
    let req = ProofRequest {
        block: Some(reader.block_request(4242).await?),
        ..Default::default()
    };
    let proof = log.proof(&req).await?;
    let nodes = proof.block.as_ref().map(|b| b.nodes.len()).unwrap_or(0);
    reader.verify(&proof).await?;
    println!(
        "3. reader verified the signed length {} and block 4242 with {nodes} hashes: {}",
        reader.length(),
        String::from_utf8_lossy(&reader.get(4242).await?.unwrap_or_default())
    );

    // 4. A tampered block is rejected and nothing is stored.
    let mut forged = log
        .proof(&ProofRequest {
            block: Some(reader.block_request(7).await?),
            ..Default::default()
        })
        .await?;
    if let Some(b) = forged.block.as_mut() {
        b.value = b"{\"visit\":7,\"note\":\"no allergies\"}".to_vec();
    }
    match reader.verify(&forged).await {
        Err(e) => println!(
            "4. tampered block 7 rejected: {e}; reader holds it: {}",
            reader.get(7).await?.is_some()
        ),
        Ok(_) => return Err("a tampered proof was accepted".into()),
    }

    // 5. The writer truncates (a new fork); the reader follows to the common prefix.
    log.truncate(log.length() - 3).await?;
    log.append(b"{\"visit\":\"corrected\"}").await?;
    sync(&log, &reader).await?;
    println!(
        "5. writer truncated 3 entries and appended a correction: reader now at fork {}, length {}, same tree: {}",
        reader.fork(),
        reader.length(),
        reader.tree_hash() == log.tree_hash()
    );

    // 6. An encrypted core served by a blind mirror that cannot read it.
    let secret = store
        .get_with("lab-results", CoreOptions::encrypted([7; 32]))
        .await?;
    secret.append(b"HbA1c 5.4%").await?;
    let mirror = Core::builder(Arc::new(MemoryStorage::new()))
        .key(secret.key())
        .open()
        .await?;
    sync(&secret, &mirror).await?;
    let doctor = Core::builder(Arc::new(MemoryStorage::new()))
        .key(secret.key())
        .encryption_key([7; 32])
        .open()
        .await?;
    sync(&mirror, &doctor).await?;
    println!(
        "6. blind mirror holds {} bytes of ciphertext; the key holder reads: {}",
        mirror.byte_length(),
        String::from_utf8_lossy(&doctor.get(0).await?.unwrap_or_default())
    );
    store.flush().await?;
    println!("done.");
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut data = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data" => data = args.next(),
            "-h" | "--help" => {
                println!("usage: hypercore-demo [--data DIR]   (default: a temporary folder)");
                return;
            }
            other => {
                eprintln!("hypercore-demo: unknown argument {other:?}; try --help");
                std::process::exit(2);
            }
        }
    }
    let tmp;
    let dir = match data {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = match tempfile::tempdir() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("hypercore-demo: cannot create a temporary folder: {e}");
                    std::process::exit(1);
                }
            };
            tmp.path().to_path_buf()
        }
    };
    if let Err(e) = futures::executor::block_on(run(&dir)) {
        eprintln!("hypercore-demo: {e}");
        std::process::exit(1);
    }
}
