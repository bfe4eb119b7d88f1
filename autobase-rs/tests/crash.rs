//! Crash consistency of a base on a simulated disk: crash at many write and
//! sync points, recover under three crash models, reopen. The base must open,
//! its view must hold the values of an in-order prefix that includes every
//! flushed one, the indexed view must match the tip (a lone indexer indexes
//! everything), and it must keep working.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::field_reassign_with_default
)]

mod common;
use common::*;
use hypercore_rs::storage::vfs::{CrashMode, SimVfs};
use hypercore_rs::{DiskOptions, DiskStorage, Storage};
use std::sync::Arc;

const VALUES: usize = 12;

fn opts() -> DiskOptions {
    // Small thresholds so checkpoints happen inside the script too.
    let mut o = DiskOptions::default();
    o.checkpoint_wal_bytes = 4096;
    o
}

/// Runs the script; returns (values known appended, values known flushed).
async fn script(vfs: &SimVfs, crash_at: Option<u64>) -> (usize, usize) {
    let Ok(storage) = DiskStorage::open_vfs(Arc::new(vfs.clone()), opts()) else {
        return (0, 0);
    };
    let storage: Arc<dyn Storage> = Arc::new(storage);
    if let Some(n) = crash_at {
        vfs.crash_after(n.saturating_sub(vfs.op_count()));
    }
    let store = match hypercore_rs::Corestore::open(storage).await {
        Ok(s) => s,
        Err(_) => return (0, 0),
    };
    let base = match autobase_rs::Autobase::builder(
        store,
        Cmds {
            calls: Default::default(),
        },
    )
    .open()
    .await
    {
        Ok(b) => b,
        Err(_) => return (0, 0),
    };
    let (mut appended, mut flushed) = (0, 0);
    for i in 0..VALUES {
        if base
            .append(format!("pk{i:02}=v{i}").into_bytes())
            .await
            .is_err()
        {
            return (appended, flushed);
        }
        appended = i + 1;
        if i % 4 == 3 {
            if base.flush().await.is_err() {
                return (appended, flushed);
            }
            flushed = appended;
        }
    }
    std::mem::forget(base);
    (appended, flushed)
}

#[test]
fn a_base_recovers_at_every_crash_point() {
    let total = futures::executor::block_on(async {
        let vfs = SimVfs::new();
        script(&vfs, None).await;
        vfs.op_count()
    });
    assert!(total > 50, "the script should do many operations ({total})");
    let step = (total / 60).max(1);
    let mut crash_at = 0;
    while crash_at <= total {
        let vfs = SimVfs::new();
        let (appended, flushed) = futures::executor::block_on(script(&vfs, Some(crash_at)));
        for mode in [
            CrashMode::KeepAll,
            CrashMode::LoseUnsynced,
            CrashMode::Random(crash_at),
        ] {
            let disk = vfs.recover(mode);
            futures::executor::block_on(async {
                let storage: Arc<dyn Storage> = Arc::new(
                    DiskStorage::open_vfs(Arc::new(disk), opts())
                        .unwrap_or_else(|e| panic!("crash {crash_at} {mode:?}: {e}")),
                );
                // A crash before the store's seed was durable leaves nothing to check.
                if storage
                    .meta(b"corestore/primary-seed")
                    .await
                    .unwrap()
                    .is_none()
                {
                    return;
                }
                let (base, _) = open(storage, None).await;
                let got = dump(&base).await;
                let n = got.len();
                let want: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
                    .map(|i| {
                        (
                            format!("k{i:02}").into_bytes(),
                            format!("v{i}").into_bytes(),
                        )
                    })
                    .collect();
                assert_eq!(
                    got, want,
                    "crash {crash_at} {mode:?}: not an in-order prefix"
                );
                assert!(
                    n <= appended + 1,
                    "crash {crash_at} {mode:?}: {n} > {appended}"
                );
                if mode != CrashMode::KeepAll {
                    assert!(
                        n >= flushed,
                        "crash {crash_at} {mode:?}: lost flushed values ({n} < {flushed})"
                    );
                } else {
                    assert!(
                        n >= appended.saturating_sub(1),
                        "crash {crash_at} {mode:?}: lost {n} of {appended}"
                    );
                }
                assert_eq!(
                    base.view_hash("view").await.unwrap(),
                    base.view_tip_hash("view").await.unwrap(),
                    "crash {crash_at} {mode:?}"
                );
                base.append(b"pzz=after".to_vec()).await.unwrap();
                assert_eq!(dump(&base).await.len(), n + 1);
            });
        }
        crash_at += step;
    }
}
