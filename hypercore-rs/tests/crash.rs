//! Crash consistency: a scripted workload is crashed at every write and sync
//! point of the simulated file system; the recovered core must be at a
//! committed state no older than the last successful flush, every block must
//! read back exactly, every proof must verify, and the core must stay usable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{block_on, small_opts};
use hypercore_rs::storage::vfs::{CrashMode, SimVfs};
use hypercore_rs::{Core, DiskStorage, KeyPair, MemoryStorage, Result};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
struct ModelState {
    fork: u64,
    blocks: Vec<Option<Vec<u8>>>,
}

enum Step {
    Append(Vec<Vec<u8>>),
    Flush,
    Truncate(u64),
    Clear(u64, u64),
}

fn script() -> Vec<Step> {
    let blk =
        |seed: usize, n: usize| -> Vec<u8> { (0..n).map(|i| (seed * 31 + i) as u8).collect() };
    vec![
        Step::Append((0..3).map(|i| blk(i, 20)).collect()),
        Step::Append(vec![blk(3, 5)]),
        Step::Flush,
        Step::Append((4..9).map(|i| blk(i, 300)).collect()),
        Step::Truncate(4),
        Step::Append((9..11).map(|i| blk(i, 7)).collect()),
        Step::Clear(1, 3),
        Step::Append((11..51).map(|i| blk(i, 700)).collect()),
        Step::Flush,
        Step::Truncate(20),
        Step::Append((51..54).map(|i| blk(i, 90)).collect()),
        Step::Append(vec![blk(54, 1)]),
    ]
}

fn apply_model(m: &mut ModelState, step: &Step) {
    match step {
        Step::Append(b) => m.blocks.extend(b.iter().cloned().map(Some)),
        Step::Flush => {}
        Step::Truncate(n) => {
            m.blocks.truncate(*n as usize);
            m.fork += 1;
        }
        Step::Clear(a, b) => {
            for i in *a..*b {
                if let Some(x) = m.blocks.get_mut(i as usize) {
                    *x = None;
                }
            }
        }
    }
}

async fn run(core: &Core, step: &Step) -> Result<()> {
    match step {
        Step::Append(b) => core.append_batch(b).await.map(|_| ()),
        Step::Flush => core.flush().await,
        Step::Truncate(n) => core.truncate(*n).await,
        Step::Clear(a, b) => core.clear(*a, *b).await,
    }
}

fn kp() -> KeyPair {
    KeyPair::from_seed([42; 32])
}

async fn state_of(core: &Core) -> ModelState {
    let mut blocks = Vec::new();
    for i in 0..core.length() {
        blocks.push(core.get(i).await.unwrap());
    }
    ModelState {
        fork: core.fork(),
        blocks,
    }
}

/// Runs the script against a fresh simulated disk that crashes after `crash_at`
/// operations. Returns the vfs, the committed model states (index 0 = empty)
/// and (last state index known committed, last index known flushed).
fn crashed_run(crash_at: Option<u64>) -> (SimVfs, Vec<ModelState>, usize, usize) {
    block_on(async {
        let vfs = SimVfs::new();
        let mut states = vec![ModelState {
            fork: 0,
            blocks: vec![],
        }];
        let storage = match DiskStorage::open_vfs(Arc::new(vfs.clone()), small_opts()) {
            Ok(s) => Arc::new(s),
            Err(_) => return (vfs, states, 0, 0),
        };
        if let Some(n) = crash_at {
            vfs.crash_after(n.saturating_sub(vfs.op_count()));
        }
        let core = match Core::builder(storage.clone()).key_pair(kp()).open().await {
            Ok(c) => c,
            Err(_) => return (vfs, states, 0, 0),
        };
        let mut model = states[0].clone();
        let mut flushed = 0;
        for step in script() {
            apply_model(&mut model, &step);
            let ok = run(&core, &step).await.is_ok();
            let is_flush = matches!(step, Step::Flush);
            if !is_flush {
                states.push(model.clone());
            }
            if !ok {
                // The failing step may or may not have committed.
                let last = if is_flush {
                    states.len() - 1
                } else {
                    states.len() - 2
                };
                return (vfs, states, last, flushed);
            }
            if is_flush {
                flushed = states.len() - 1;
            }
        }
        let last = states.len() - 1;
        std::mem::forget(core);
        std::mem::forget(storage);
        (vfs, states, last, flushed)
    })
}

#[test]
fn recovers_a_committed_prefix_at_every_crash_point() {
    let (full, _, _, _) = crashed_run(None);
    let total = full.op_count();
    assert!(
        total > 50,
        "the script should exercise many operations ({total})"
    );
    let mut checked = 0;
    for crash_at in 0..=total {
        let (vfs, states, last_ok, flushed) = crashed_run(Some(crash_at));
        for mode in [
            CrashMode::KeepAll,
            CrashMode::LoseUnsynced,
            CrashMode::Random(crash_at),
        ] {
            let disk = vfs.recover(mode);
            block_on(async {
                let storage = Arc::new(
                    DiskStorage::open_vfs(Arc::new(disk.clone()), small_opts())
                        .unwrap_or_else(|e| panic!("crash {crash_at} {mode:?}: open failed: {e}")),
                );
                let core = Core::builder(storage.clone())
                    .key_pair(kp())
                    .open()
                    .await
                    .unwrap_or_else(|e| panic!("crash {crash_at} {mode:?}: core open failed: {e}"));
                let got = state_of(&core).await;
                let hi = (last_ok + 1).min(states.len() - 1);
                let lo = if mode == CrashMode::KeepAll {
                    last_ok
                } else {
                    flushed
                };
                let matched = (lo..=hi).any(|j| states[j] == got);
                assert!(
                    matched,
                    "crash {crash_at} {mode:?}: recovered state (len {}, fork {}) is none of states {lo}..={hi}",
                    got.blocks.len(),
                    got.fork
                );
                // Every proof verifies: a fresh reader syncs everything that is held.
                let reader = Core::builder(Arc::new(MemoryStorage::new()))
                    .key(core.key())
                    .open()
                    .await
                    .unwrap();
                common::sync_all_available(&core, &reader).await;
                assert_eq!(reader.length(), core.length());
                assert_eq!(reader.tree_hash(), core.tree_hash());
                // The core stays usable.
                core.append(b"after").await.unwrap();
                core.flush().await.unwrap();
                checked += 1;
            });
        }
    }
    assert_eq!(checked, 3 * (total + 1));
}

#[test]
fn disk_full_surfaces_as_an_error_and_the_core_recovers() {
    block_on(async {
        let vfs = SimVfs::new();
        let storage = Arc::new(DiskStorage::open_vfs(Arc::new(vfs.clone()), small_opts()).unwrap());
        let core = Core::builder(storage.clone())
            .key_pair(kp())
            .open()
            .await
            .unwrap();
        core.append(b"one").await.unwrap();
        vfs.set_disk_full(true);
        assert!(core.append(b"two").await.is_err());
        assert!(core.append_batch(vec![vec![1u8; 5000]; 10]).await.is_err());
        assert_eq!(core.length(), 1);
        vfs.set_disk_full(false);
        core.append(b"three").await.unwrap();
        core.flush().await.unwrap();
        assert_eq!(core.get(1).await.unwrap().as_deref(), Some(&b"three"[..]));
        drop(core);
        drop(storage);
        let storage = Arc::new(
            DiskStorage::open_vfs(Arc::new(vfs.recover(CrashMode::LoseUnsynced)), small_opts())
                .unwrap(),
        );
        let core = Core::builder(storage).key_pair(kp()).open().await.unwrap();
        assert_eq!(core.length(), 2);
        assert_eq!(core.get(0).await.unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(core.get(1).await.unwrap().as_deref(), Some(&b"three"[..]));
    });
}
