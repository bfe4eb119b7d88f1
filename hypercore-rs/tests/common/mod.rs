//! Helpers shared by the integration tests.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use hypercore_rs::storage::vfs::SimVfs;
use hypercore_rs::{Core, DiskOptions, DiskStorage, ProofRequest, UpgradeRequest};
use std::sync::Arc;

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Disk storage on a simulated file system, with small checkpoint thresholds
/// so that tests cross checkpoints often.
pub fn sim_disk(vfs: &SimVfs) -> Arc<DiskStorage> {
    Arc::new(DiskStorage::open_vfs(Arc::new(vfs.clone()), small_opts()).unwrap())
}

pub fn small_opts() -> DiskOptions {
    DiskOptions {
        checkpoint_wal_bytes: 4096,
        checkpoint_data_bytes: 16 * 1024,
    }
}

/// Brings `reader` up to `writer`'s length and downloads every block, one
/// verified proof at a time.
pub async fn sync_all(writer: &Core, reader: &Core) {
    let req = ProofRequest {
        fork: reader.fork(),
        upgrade: Some(UpgradeRequest {
            start: reader.length(),
        }),
        manifest: reader.manifest().is_none(),
        ..Default::default()
    };
    let proof = writer.proof(&req).await.unwrap();
    if proof.upgrade.is_some() {
        reader.verify(&proof).await.unwrap();
    }
    for i in 0..reader.length() {
        if reader.get_raw(i).await.unwrap().is_none() {
            let req = ProofRequest {
                fork: reader.fork(),
                block: Some(reader.block_request(i).await.unwrap()),
                ..Default::default()
            };
            let proof = writer.proof(&req).await.unwrap();
            reader.verify(&proof).await.unwrap();
        }
    }
}

/// Like `sync_all` but skips blocks the holder does not have.
pub async fn sync_all_available(writer: &Core, reader: &Core) {
    let req = ProofRequest {
        fork: reader.fork(),
        upgrade: Some(UpgradeRequest {
            start: reader.length(),
        }),
        manifest: reader.manifest().is_none(),
        ..Default::default()
    };
    let proof = writer.proof(&req).await.unwrap();
    reader.verify(&proof).await.unwrap();
    for i in 0..reader.length() {
        let req = ProofRequest {
            fork: reader.fork(),
            block: Some(reader.block_request(i).await.unwrap()),
            ..Default::default()
        };
        match writer.proof(&req).await {
            Ok(p) => {
                reader.verify(&p).await.unwrap();
                assert_eq!(
                    reader.get_raw(i).await.unwrap(),
                    writer.get_raw(i).await.unwrap()
                );
            }
            Err(hypercore_rs::Error::NotAvailable(_)) => {}
            Err(e) => panic!("proof for block {i}: {e}"),
        }
    }
}
