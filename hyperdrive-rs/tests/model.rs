//! Property test: a drive against an in-memory model of a file tree (a
//! `BTreeMap` per version), across puts, deletes and batches, checked
//! through checkouts, listings, readdir, contents and diffs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::executor::block_on;
use hypercore_rs::{Corestore, MemoryStorage};
use hyperdrive_rs::{DiffKind, Drive};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const PATHS: [&str; 7] = ["/a", "/a-z", "/b/c", "/b/d", "/b/e/f", "/b/e/g", "/h/i/j/k"];
const SIZES: [usize; 5] = [0, 1, 300, 65_536, 70_001];

type Model = BTreeMap<String, Vec<u8>>;

#[derive(Clone, Debug)]
enum Op {
    Put(usize, usize, u8),
    Del(usize),
}

#[derive(Clone, Debug)]
enum Step {
    One(Op),
    Batch(Vec<Op>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..PATHS.len(), 0..SIZES.len(), any::<u8>()).prop_map(|(p, s, b)| Op::Put(p, s, b)),
        1 => (0..PATHS.len()).prop_map(Op::Del),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => op().prop_map(Step::One),
        1 => prop::collection::vec(op(), 1..5).prop_map(Step::Batch),
    ]
}

fn content(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u8).wrapping_add(seed)).collect()
}

fn apply(m: &mut Model, op: &Op) {
    match op {
        Op::Put(p, s, b) => {
            m.insert(PATHS[*p].to_string(), content(SIZES[*s], *b));
        }
        Op::Del(p) => {
            m.remove(PATHS[*p]);
        }
    }
}

fn readdir_model(m: &Model, folder: &str) -> Vec<String> {
    let prefix = format!("{}/", folder.trim_end_matches('/'));
    let names: BTreeSet<String> = m
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix))
        .map(|rest| rest.split('/').next().unwrap_or_default().to_string())
        .collect();
    names.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn drive_matches_model_across_versions(steps in prop::collection::vec(step(), 1..12), pick in any::<u64>()) {
        block_on(async {
            let store = Corestore::with_seed(Arc::new(MemoryStorage::new()), [8; 32]);
            let d = Drive::open(&store, "model").await.unwrap();
            let mut model = Model::new();
            let mut versions = vec![(d.version(), model.clone())];
            for s in &steps {
                match s {
                    Step::One(Op::Put(p, sz, b)) => {
                        d.put(PATHS[*p], &content(SIZES[*sz], *b)).await.unwrap();
                    }
                    Step::One(Op::Del(p)) => {
                        d.del(PATHS[*p]).await.unwrap();
                    }
                    Step::Batch(ops) => {
                        let mut b = d.batch().await.unwrap();
                        for o in ops {
                            match o {
                                Op::Put(p, sz, v) => b.put(PATHS[*p], &content(SIZES[*sz], *v)).await.unwrap(),
                                Op::Del(p) => b.del(PATHS[*p]).await.unwrap(),
                            }
                        }
                        b.flush().await.unwrap();
                    }
                }
                match s {
                    Step::One(o) => apply(&mut model, o),
                    Step::Batch(ops) => ops.iter().for_each(|o| apply(&mut model, o)),
                }
                versions.push((d.version(), model.clone()));
            }
            for (v, m) in &versions {
                let c = d.checkout(*v).await.unwrap();
                let listed: Vec<String> = c.list("/", true).unwrap().collect().await.unwrap()
                    .into_iter().map(|e| e.path).collect();
                assert_eq!(listed, m.keys().cloned().collect::<Vec<_>>());
                for (p, body) in m {
                    assert_eq!(c.get(p).await.unwrap().as_ref(), Some(body));
                }
                for folder in ["/", "/b", "/b/e", "/h"] {
                    assert_eq!(c.readdir(folder).unwrap().collect().await.unwrap(), readdir_model(m, folder));
                }
            }
            // A diff between two recorded versions matches the models' difference.
            let i = (pick % versions.len() as u64) as usize;
            let j = ((pick >> 32) % versions.len() as u64) as usize;
            let (i, j) = (i.min(j), i.max(j));
            let (va, ma) = &versions[i];
            let (vb, mb) = &versions[j];
            let got: Vec<(String, DiffKind)> = d.diff(*va, *vb, "/").await.unwrap().collect().await.unwrap()
                .into_iter().map(|x| (x.path.clone(), x.kind())).collect();
            let keys: BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
            let mut want = Vec::new();
            for k in keys {
                match (ma.get(k), mb.get(k)) {
                    (None, Some(_)) => want.push((k.clone(), DiffKind::Added)),
                    (Some(_), None) => want.push((k.clone(), DiffKind::Removed)),
                    (Some(x), Some(y)) if x != y => want.push((k.clone(), DiffKind::Changed)),
                    // A rewrite with equal bytes may be a new entry (new blob).
                    (Some(_), Some(_)) if got.iter().any(|(p, _)| p == k) => want.push((k.clone(), DiffKind::Changed)),
                    _ => {}
                }
            }
            assert_eq!(got, want);
        });
    }
}
