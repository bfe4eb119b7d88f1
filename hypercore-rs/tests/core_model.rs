//! Model-based property test: a core (on disk, reopened at random points) and
//! a verifying reader behave like a `Vec<Vec<u8>>` with forks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{block_on, sim_disk};
use hypercore_rs::storage::vfs::SimVfs;
use hypercore_rs::{
    Core, Error, KeyPair, MemoryStorage, ProofRequest, Snapshot, Storage, UpgradeRequest,
};
use proptest::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Clone, Debug)]
enum Step {
    Append(Vec<Vec<u8>>),
    Truncate(u64),
    Clear(u64, u64),
    Snapshot,
    Reopen,
    Flush,
    Sync,
    Seek(u64),
}

fn step() -> impl Strategy<Value = Step> {
    let block = proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        6 => proptest::collection::vec(block, 1..6).prop_map(Step::Append),
        1 => (0..100u64).prop_map(Step::Truncate),
        1 => (0..40u64, 0..40u64).prop_map(|(a, b)| Step::Clear(a.min(b), a.max(b))),
        1 => Just(Step::Snapshot),
        1 => Just(Step::Reopen),
        1 => Just(Step::Flush),
        2 => Just(Step::Sync),
        1 => (0..2000u64).prop_map(Step::Seek),
    ]
}

/// Follows the writer through proofs only; skips blocks the writer cleared.
async fn follow(writer: &Core, reader: &Core) {
    let mut req = ProofRequest {
        fork: reader.fork(),
        upgrade: Some(UpgradeRequest {
            start: reader.length(),
        }),
        manifest: reader.manifest().is_none(),
        ..Default::default()
    };
    let proof = writer.proof(&req).await.unwrap();
    if proof.upgrade.is_some() || proof.manifest.is_some() {
        match reader.verify(&proof).await {
            // The reader skipped blocks the writer cleared, so it may lack its
            // own nodes at the exact fork point: ask from a root boundary.
            Err(Error::Proof(hypercore_rs::ProofError::MissingAnchor)) => {
                req.round_fork_point = true;
                reader
                    .verify(&writer.proof(&req).await.unwrap())
                    .await
                    .unwrap();
            }
            other => {
                other.unwrap();
            }
        }
    }
    for i in 0..reader.length() {
        if reader.get(i).await.unwrap().is_some() {
            continue;
        }
        let req = ProofRequest {
            fork: reader.fork(),
            block: Some(reader.block_request(i).await.unwrap()),
            ..Default::default()
        };
        match writer.proof(&req).await {
            Ok(p) => {
                reader.verify(&p).await.unwrap();
            }
            Err(Error::NotAvailable(_)) => {}
            Err(e) => panic!("proof failed: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn core_matches_model(steps in proptest::collection::vec(step(), 1..40)) {
        block_on(async {
            let vfs = SimVfs::new();
            let kp = KeyPair::from_seed([7; 32]);
            let open = |vfs: &SimVfs| {
                let storage: Arc<dyn Storage> = sim_disk(vfs);
                let kp = kp.clone();
                async move { Core::builder(storage).key_pair(kp).open().await.unwrap() }
            };
            let mut core = open(&vfs).await;
            let reader = Core::builder(Arc::new(MemoryStorage::new())).key(core.key()).open().await.unwrap();
            let mut model: Vec<Vec<u8>> = Vec::new();
            let mut fork = 0u64;
            let mut cleared: HashSet<u64> = HashSet::new();
            let mut snaps: Vec<(Snapshot, Vec<Vec<u8>>)> = Vec::new();
            let mut any_clear = false;
            for s in steps {
                match s {
                    Step::Append(blocks) => {
                        let len = core.append_batch(&blocks).await.unwrap();
                        model.extend(blocks);
                        assert_eq!(len, model.len() as u64);
                    }
                    Step::Truncate(n) => {
                        let n = n.min(model.len() as u64);
                        core.truncate(n).await.unwrap();
                        model.truncate(n as usize);
                        fork += 1;
                        cleared.retain(|i| *i < n);
                    }
                    Step::Clear(a, b) => {
                        core.clear(a, b).await.unwrap();
                        for i in a..b.min(model.len() as u64) {
                            cleared.insert(i);
                        }
                        any_clear = true;
                    }
                    Step::Snapshot => snaps.push((core.snapshot(), model.clone())),
                    Step::Reopen => {
                        snaps.clear();
                        drop(core);
                        core = open(&vfs).await;
                    }
                    Step::Flush => core.flush().await.unwrap(),
                    Step::Sync => {
                        follow(&core, &reader).await;
                        assert_eq!(reader.length(), model.len() as u64);
                        assert_eq!(reader.fork(), fork);
                        assert_eq!(reader.tree_hash(), core.tree_hash());
                        for (i, b) in model.iter().enumerate() {
                            let got = reader.get(i as u64).await.unwrap();
                            if cleared.contains(&(i as u64)) {
                                assert!(got.is_none() || got.as_ref() == Some(b));
                            } else {
                                assert_eq!(got.as_ref(), Some(b), "reader block {}", i);
                            }
                        }
                    }
                    Step::Seek(bytes) => {
                        let total: u64 = model.iter().map(|b| b.len() as u64).sum();
                        match core.seek(bytes).await {
                            Ok((i, off)) => {
                                let before: u64 = model[..i as usize].iter().map(|b| b.len() as u64).sum();
                                assert_eq!(before + off, bytes);
                                assert!(off < model[i as usize].len() as u64);
                            }
                            Err(Error::SeekOutOfRange { .. }) => assert!(bytes >= total),
                            Err(e) => panic!("seek: {e}"),
                        }
                    }
                }
                assert_eq!(core.length(), model.len() as u64);
                assert_eq!(core.fork(), fork);
                assert_eq!(core.byte_length(), model.iter().map(|b| b.len() as u64).sum::<u64>());
                for (i, b) in model.iter().enumerate() {
                    let got = core.get(i as u64).await.unwrap();
                    if cleared.contains(&(i as u64)) {
                        assert_eq!(got, None, "cleared block {}", i);
                    } else {
                        assert_eq!(got.as_ref(), Some(b), "block {}", i);
                    }
                }
                let contiguous = (0..model.len() as u64).take_while(|i| !cleared.contains(i)).count() as u64;
                assert!(core.contiguous_length() <= contiguous);
                for (snap, frozen) in &snaps {
                    assert_eq!(snap.length(), frozen.len() as u64);
                    for (i, b) in frozen.iter().enumerate() {
                        let got = snap.get(i as u64).await.unwrap();
                        if any_clear {
                            assert!(got.is_none() || got.as_ref() == Some(b));
                        } else {
                            assert_eq!(got.as_ref(), Some(b), "snapshot block {}", i);
                        }
                    }
                }
            }
        });
    }
}
