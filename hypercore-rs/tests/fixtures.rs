//! Newer code must open data written by older code. `tests/fixtures/v1-store`
//! is a disk storage written by format version 1 (a named core with 300
//! blocks, a truncation, a cleared range, user data, an encrypted core).
//! Regenerate only when adding a new fixture version:
//! `REGENERATE_FIXTURES=1 cargo test -p hypercore-rs --test fixtures`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::block_on;
use hypercore_rs::{CoreOptions, Corestore, DiskStorage, Storage};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SEED: [u8; 32] = [77; 32];
const ENC: [u8; 32] = [78; 32];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-store")
}

fn block(i: u64) -> Vec<u8> {
    format!("entry {i}").into_bytes()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

async fn write_fixture(dir: &Path) {
    let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(dir).unwrap());
    let store = Corestore::with_seed(storage, SEED);
    let log = store.get("log").await.unwrap();
    for i in 0..300 {
        log.append(&block(i)).await.unwrap();
    }
    log.truncate(250).await.unwrap();
    log.append(b"after fork").await.unwrap();
    log.clear(10, 20).await.unwrap();
    log.set_user_data("owner", Some(b"patient")).await.unwrap();
    let secret = store
        .get_with("secret", CoreOptions::encrypted(ENC))
        .await
        .unwrap();
    secret.append(b"sealed").await.unwrap();
    store.flush().await.unwrap();
}

#[test]
fn version_1_store_opens_and_reads_back() {
    if std::env::var("REGENERATE_FIXTURES").is_ok() {
        let _ = std::fs::remove_dir_all(fixture_dir());
        block_on(write_fixture(&fixture_dir()));
        let _ = std::fs::remove_file(fixture_dir().join("LOCK"));
    }
    // Work on a copy: opening checkpoints and would modify the fixture.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), tmp.path());
    block_on(async {
        let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(tmp.path()).unwrap());
        let store = Corestore::with_seed(storage, SEED);
        let log = store.get("log").await.unwrap();
        assert_eq!((log.length(), log.fork()), (251, 1));
        for i in 0..250 {
            let got = log.get(i).await.unwrap();
            if (10..20).contains(&i) {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(block(i)), "block {i}");
            }
        }
        assert_eq!(
            log.get(250).await.unwrap().as_deref(),
            Some(&b"after fork"[..])
        );
        assert_eq!(
            log.user_data("owner").await.unwrap().as_deref(),
            Some(&b"patient"[..])
        );
        let secret = store
            .get_with("secret", CoreOptions::encrypted(ENC))
            .await
            .unwrap();
        assert_eq!(
            secret.get(0).await.unwrap().as_deref(),
            Some(&b"sealed"[..])
        );
        // And it keeps working.
        log.append(b"new").await.unwrap();
        log.flush().await.unwrap();
    });
}
