//! Model-based tests: random sequences of put, del, batch and
//! compare-and-swap against a `BTreeMap`, on memory and on disk storage.
//! Every version is checked out and compared; diffs between versions and
//! ranges with every bound combination are compared with the model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{make_range, model_range, open, pairs, Backing, Model};
use futures::executor::block_on;
use hyperbee_rs::{Bee, History, Range};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::ops::Bound;

/// Lower bound, upper bound, reverse, limit.
type RangeCase = (Bound<Vec<u8>>, Bound<Vec<u8>>, bool, Option<usize>);

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Del(Vec<u8>),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    CasPut(Vec<u8>, Option<Vec<u8>>, Vec<u8>),
    CasDel(Vec<u8>, Vec<u8>),
}

/// Keys from a small pool so that ops collide; some share a long prefix so
/// that separators are long and the tree grows several levels deep.
fn key() -> impl Strategy<Value = Vec<u8>> {
    (0u16..300, prop_oneof![Just(0usize), Just(2), Just(600)]).prop_map(|(i, pre)| {
        let mut k = vec![b'p'; pre];
        k.extend_from_slice(format!("{i:04}").as_bytes());
        k
    })
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..16),
        2 => proptest::collection::vec(any::<u8>(), 200..400),
        1 => proptest::collection::vec(any::<u8>(), 513..1500),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => key().prop_map(Op::Del),
        2 => proptest::collection::vec((key(), proptest::option::weighted(0.7, value())), 0..60).prop_map(Op::Batch),
        1 => (key(), proptest::option::of(value()), value()).prop_map(|(k, e, v)| Op::CasPut(k, e, v)),
        1 => (key(), value()).prop_map(|(k, e)| Op::CasDel(k, e)),
    ]
}

fn bound() -> impl Strategy<Value = Bound<Vec<u8>>> {
    prop_oneof![
        Just(Bound::Unbounded),
        key().prop_map(Bound::Included),
        key().prop_map(Bound::Excluded),
    ]
}

async fn apply(bee: &Bee, m: &mut Model, op: &Op, history: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>) {
    match op {
        Op::Put(k, v) => {
            bee.put(k, v).await.unwrap();
            m.insert(k.clone(), v.clone());
            history.push((k.clone(), Some(v.clone())));
        }
        Op::Del(k) => {
            bee.del(k).await.unwrap();
            m.remove(k);
            history.push((k.clone(), None));
        }
        Op::Batch(ops) => {
            let mut b = bee.batch().await.unwrap();
            let mut staged = m.clone();
            for (k, v) in ops {
                match v {
                    Some(v) => {
                        b.put(k, v).await.unwrap();
                        staged.insert(k.clone(), v.clone());
                    }
                    None => {
                        b.del(k).await.unwrap();
                        staged.remove(k);
                    }
                }
                // A batch sees its own writes.
                assert_eq!(
                    b.get(k).await.unwrap().map(|e| e.value),
                    staged.get(k).cloned()
                );
                history.push((k.clone(), v.clone()));
            }
            let before = bee.version();
            // Readers do not see the unflushed batch... (it holds the write lock,
            // but reads go on).
            assert_eq!(bee.snapshot().version(), before);
            b.flush().await.unwrap();
            *m = staged;
        }
        Op::CasPut(k, expected, v) => {
            let applied = bee
                .put_cas(k, v, |cur| cur.map(|e| &e.value) == expected.as_ref())
                .await
                .unwrap();
            assert_eq!(applied, m.get(k) == expected.as_ref());
            if applied {
                m.insert(k.clone(), v.clone());
                history.push((k.clone(), Some(v.clone())));
            }
        }
        Op::CasDel(k, expected) => {
            let applied = bee.del_cas(k, |cur| &cur.value == expected).await.unwrap();
            assert_eq!(applied, m.get(k) == Some(expected));
            if applied {
                m.remove(k);
                history.push((k.clone(), None));
            }
        }
    }
}

async fn check(
    backing: Backing,
    ops: Vec<Op>,
    ranges: Vec<RangeCase>,
    pairs_to_diff: Vec<(usize, usize)>,
) {
    let bee = open(&backing).await;
    let mut m = Model::new();
    let mut versions = vec![(bee.version(), m.clone())];
    let mut history = Vec::new();
    for op in &ops {
        apply(&bee, &mut m, op, &mut history).await;
        if versions.last().map(|(v, _)| *v) != Some(bee.version()) {
            versions.push((bee.version(), m.clone()));
        } else {
            // No append: the model must not have changed either.
            assert_eq!(versions.last().map(|(_, m)| m), Some(&m));
        }
    }
    let height = bee.snapshot().height().await.unwrap();
    if m.len() > 150 {
        assert!(height >= 3, "{} keys in {height} levels", m.len());
    }
    // Every version checks out to the model at that version.
    for (v, model) in &versions {
        let snap = bee.checkout(*v).await.unwrap();
        let got = pairs(snap.range(Range::all()).collect().await.unwrap());
        let want = model_range(model, &Bound::Unbounded, &Bound::Unbounded, false, None);
        assert_eq!(got, want, "checkout({v})");
        for k in model.keys().take(5) {
            assert_eq!(
                snap.get(k).await.unwrap().map(|e| e.value),
                model.get(k).cloned()
            );
        }
    }
    // Ranges with every bound combination, on the last and a middle version.
    let mid = versions.len() / 2;
    for (v, model) in [&versions[mid], versions.last().unwrap()] {
        let snap = bee.checkout(*v).await.unwrap();
        for (lo, hi, rev, limit) in &ranges {
            let got = pairs(
                snap.range(make_range(lo, hi, *rev, *limit))
                    .collect()
                    .await
                    .unwrap(),
            );
            assert_eq!(
                got,
                model_range(model, lo, hi, *rev, *limit),
                "range {lo:?} {hi:?} rev={rev} limit={limit:?}"
            );
            let peek = snap
                .peek(make_range(lo, hi, *rev, None))
                .await
                .unwrap()
                .map(|e| (e.key, e.value));
            assert_eq!(peek, model_range(model, lo, hi, *rev, Some(1)).pop());
        }
    }
    // Diffs between versions equal the model's difference, whole and ranged.
    for (a, b) in pairs_to_diff {
        let (va, ma) = &versions[a % versions.len()];
        let (vb, mb) = &versions[b % versions.len()];
        let got: Vec<_> = bee
            .diff(*va, *vb, Range::all())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.key, d.old.map(|e| e.value), d.new.map(|e| e.value)))
            .collect();
        let keys: BTreeSet<_> = ma.keys().chain(mb.keys()).collect();
        let want: Vec<_> = keys
            .into_iter()
            .filter(|k| ma.get(*k) != mb.get(*k))
            .map(|k| ((*k).clone(), ma.get(k).cloned(), mb.get(k).cloned()))
            .collect();
        assert_eq!(got, want, "diff({va}, {vb})");
        if let Some((lo, hi, _, _)) = ranges.first() {
            let got: Vec<_> = bee
                .diff(*va, *vb, make_range(lo, hi, false, None))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.key)
                .collect();
            let r = make_range(lo, hi, false, None);
            let want: Vec<_> = want
                .iter()
                .filter(|(k, _, _)| r.contains(k))
                .map(|(k, _, _)| k.clone())
                .collect();
            assert_eq!(got, want, "ranged diff");
        }
    }
    // History records every applied put and del, in order.
    let h: Vec<_> = bee
        .history(History::all())
        .collect()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(h, history);
    let mut rev: Vec<_> = bee
        .history(History::all().reverse().limit(7))
        .collect()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    rev.reverse();
    assert_eq!(rev, history[history.len().saturating_sub(7)..].to_vec());
}

fn ranges() -> impl Strategy<Value = Vec<RangeCase>> {
    proptest::collection::vec(
        (
            bound(),
            bound(),
            any::<bool>(),
            proptest::option::of(0usize..20),
        ),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn memory_matches_model(
        ops in proptest::collection::vec(op(), 1..60),
        ranges in ranges(),
        diffs in proptest::collection::vec((any::<usize>(), any::<usize>()), 1..8),
    ) {
        block_on(check(Backing::Memory, ops, ranges, diffs));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn disk_matches_model(
        ops in proptest::collection::vec(op(), 1..40),
        ranges in ranges(),
        diffs in proptest::collection::vec((any::<usize>(), any::<usize>()), 1..8),
    ) {
        block_on(check(Backing::Disk(tempfile::tempdir().unwrap()), ops, ranges, diffs));
    }
}

/// A bigger deterministic run: thousands of keys, deep trees, deletes that
/// empty the tree again, on disk, reopened.
#[test]
fn large_tree_insert_delete_reopen() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Model::new();
        let n = 5000u32;
        {
            let bee = open(&Backing::Disk(
                tempfile::TempDir::new_in(dir.path()).unwrap(),
            ))
            .await;
            let mut b = bee.batch().await.unwrap();
            for i in 0..n {
                let k = (i.wrapping_mul(2_654_435_761)).to_be_bytes().to_vec();
                let v = vec![(i % 251) as u8; (i % 40) as usize];
                b.put(&k, &v).await.unwrap();
                m.insert(k, v);
            }
            b.flush().await.unwrap();
            assert!(bee.snapshot().height().await.unwrap() >= 2);
            for (i, k) in m.clone().keys().enumerate() {
                if i % 3 != 0 {
                    bee.del(k).await.unwrap();
                    m.remove(k);
                }
            }
            let got = pairs(bee.range(Range::all()).collect().await.unwrap());
            assert_eq!(
                got,
                model_range(&m, &Bound::Unbounded, &Bound::Unbounded, false, None)
            );
            let mut b = bee.batch().await.unwrap();
            for k in m.keys() {
                b.del(k).await.unwrap();
            }
            b.flush().await.unwrap();
            assert!(bee.peek(Range::all()).await.unwrap().is_none());
        }
    });
}
