//! A crash at any write of the storage leaves the bee at the version before
//! the batch in flight or after it, never between: checked at every crash
//! point of a script, for every way the disk may have lost unsynced writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::executor::block_on;
use hyperbee_rs::{Bee, Range};
use hypercore_rs::storage::vfs::{CrashMode, SimVfs};
use hypercore_rs::{Core, DiskOptions, DiskStorage, KeyPair};
use std::collections::BTreeMap;
use std::sync::Arc;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;
/// A put (`Some` value) or a del.
type BatchOp = (Vec<u8>, Option<Vec<u8>>);

fn opts() -> DiskOptions {
    DiskOptions {
        checkpoint_wal_bytes: 4096,
        checkpoint_data_bytes: 16 * 1024,
    }
}

/// Batches of (key, Some(value) | None); each is flushed to disk afterwards.
fn script() -> Vec<Vec<BatchOp>> {
    let mut out = Vec::new();
    for round in 0..6u32 {
        let mut b = Vec::new();
        for i in 0..(5 + round * 7) {
            let k = format!("k{:03}", (i * 7 + round * 3) % 40).into_bytes();
            if (i + round) % 5 == 0 {
                b.push((k, None));
            } else {
                b.push((k, Some(vec![round as u8; 30 + (i as usize % 3) * 300])));
            }
        }
        out.push(b);
    }
    out
}

/// Runs the script until the first failure; returns the model after each
/// fully flushed batch (index 0: empty) and how many batches were attempted.
async fn run(vfs: &SimVfs) -> (Vec<Model>, usize) {
    let mut models = vec![Model::new()];
    let Ok(storage) = DiskStorage::open_vfs(Arc::new(vfs.clone()), opts()) else {
        return (models, 0);
    };
    let Ok(core) = Core::builder(Arc::new(storage))
        .key_pair(KeyPair::from_seed([7; 32]))
        .open()
        .await
    else {
        return (models, 0);
    };
    let Ok(bee) = Bee::open(core).await else {
        return (models, 0);
    };
    if bee.flush().await.is_err() {
        return (models, 0);
    }
    let mut m = Model::new();
    for (n, ops) in script().into_iter().enumerate() {
        let attempt = async {
            let mut b = bee.batch().await?;
            for (k, v) in &ops {
                match v {
                    Some(v) => b.put(k, v).await?,
                    None => b.del(k).await?,
                }
            }
            b.flush().await?;
            bee.flush().await
        };
        for (k, v) in &ops {
            match v {
                Some(v) => m.insert(k.clone(), v.clone()),
                None => m.remove(k),
            };
        }
        if attempt.await.is_err() {
            models.push(m);
            return (models, n + 1);
        }
        models.push(m.clone());
    }
    (models, usize::MAX)
}

async fn state_after(vfs: SimVfs) -> Option<Model> {
    let storage = DiskStorage::open_vfs(Arc::new(vfs), opts()).ok()?;
    let core = Core::builder(Arc::new(storage))
        .key_pair(KeyPair::from_seed([7; 32]))
        .open()
        .await
        .ok()?;
    let bee = Bee::open(core).await.expect("a recovered bee opens");
    let all = bee
        .range(Range::all())
        .collect()
        .await
        .expect("a recovered bee reads");
    Some(all.into_iter().map(|e| (e.key, e.value)).collect())
}

#[test]
fn crash_during_a_batch_keeps_the_old_or_the_new_version() {
    block_on(async {
        let total = {
            let vfs = SimVfs::new();
            let (_, done) = run(&vfs).await;
            assert_eq!(done, usize::MAX);
            vfs.op_count()
        };
        let mut checked = 0;
        for n in (0..total).step_by(3) {
            let vfs = SimVfs::new();
            vfs.crash_after(n);
            let (models, attempted) = run(&vfs).await;
            assert!(vfs.crashed() || attempted == usize::MAX);
            for mode in [
                CrashMode::KeepAll,
                CrashMode::LoseUnsynced,
                CrashMode::Random(n),
            ] {
                let Some(state) = state_after(vfs.recover(mode)).await else {
                    continue;
                };
                // Batches before the one in flight were flushed: the state
                // is that of the last flushed batch or of the one in flight.
                let last = models.len() - 1;
                let allowed = if attempted == usize::MAX {
                    &models[last..]
                } else {
                    &models[last.saturating_sub(1)..]
                };
                assert!(
                    allowed.contains(&state),
                    "crash at op {n} ({mode:?}): {} keys, not a committed state",
                    state.len()
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} recoveries checked");
    });
}
