//! A crash at any write of the storage during a streaming overwrite leaves
//! the old file or the new one, never a mix, for every way the disk may have
//! lost unsynced writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::executor::block_on;
use hypercore_rs::storage::vfs::{CrashMode, SimVfs};
use hypercore_rs::{Corestore, DiskOptions, DiskStorage};
use hyperdrive_rs::{Drive, PutOptions};
use std::sync::Arc;

fn opts() -> DiskOptions {
    DiskOptions {
        checkpoint_wal_bytes: 64 * 1024,
        checkpoint_data_bytes: 256 * 1024,
    }
}

fn old() -> Vec<u8> {
    vec![0x0a; 150_000]
}

fn new() -> Vec<u8> {
    (0..1_300_000u32).map(|i| (i % 251) as u8).collect()
}

/// Writes the old file durably, then overwrites it with a streaming write.
/// Returns how far it got: 0 nothing durable, 1 old durable, 2 all done.
async fn run(vfs: &SimVfs) -> u8 {
    let Ok(storage) = DiskStorage::open_vfs(Arc::new(vfs.clone()), opts()) else {
        return 0;
    };
    let store = Corestore::with_seed(Arc::new(storage), [9; 32]);
    let Ok(d) = Drive::open(&store, "d").await else {
        return 0;
    };
    if d.put("/f", &old()).await.is_err() || d.flush().await.is_err() {
        return 0;
    }
    let reader = futures::io::Cursor::new(new());
    if d.put_stream("/f", reader, PutOptions::default())
        .await
        .is_err()
        || d.flush().await.is_err()
    {
        return 1;
    }
    2
}

async fn after(vfs: SimVfs) -> Option<Option<Vec<u8>>> {
    let storage = DiskStorage::open_vfs(Arc::new(vfs), opts()).ok()?;
    let store = Corestore::with_seed(Arc::new(storage), [9; 32]);
    let d = Drive::open(&store, "d")
        .await
        .expect("a recovered drive opens");
    Some(
        d.get("/f")
            .await
            .expect("a recovered file reads and verifies"),
    )
}

async fn after_ok(vfs: &SimVfs) -> Option<Vec<u8>> {
    after(vfs.recover(CrashMode::LoseUnsynced)).await.flatten()
}

#[test]
fn crash_during_a_streaming_write_keeps_old_or_new() {
    block_on(async {
        let total = {
            let vfs = SimVfs::new();
            assert_eq!(run(&vfs).await, 2);
            vfs.op_count()
        };
        let (old, new) = (old(), new());
        let mut checked = 0;
        let step = (total / 40).max(1);
        for n in (0..total).step_by(step as usize) {
            let vfs = SimVfs::new();
            vfs.crash_after(n);
            let reached = run(&vfs).await;
            for mode in [
                CrashMode::KeepAll,
                CrashMode::LoseUnsynced,
                CrashMode::Random(n),
            ] {
                let Some(got) = after(vfs.recover(mode)).await else {
                    continue;
                };
                match got {
                    // Nothing was durable yet.
                    None => assert_eq!(reached, 0, "crash at {n}, {mode:?}: flushed file lost"),
                    Some(b) => {
                        assert!(b == old || b == new, "crash at {n}, {mode:?}: a mixed file")
                    }
                }
                if reached == 2 {
                    assert_eq!(after_ok(&vfs).await, Some(new.clone()));
                }
                checked += 1;
            }
        }
        assert!(checked > 30, "only {checked} recoveries checked");
    });
}
