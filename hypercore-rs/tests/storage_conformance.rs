//! One conformance suite, run against every `Storage` implementation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{block_on, small_opts};
use hypercore_rs::storage::vfs::SimVfs;
use hypercore_rs::{Batch, DiskStorage, MemoryStorage, Node, Op, Storage};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

const A: [u8; 32] = [1; 32];
const B: [u8; 32] = [2; 32];

fn node(index: u64) -> Node {
    Node {
        index,
        size: index * 3 + 1,
        hash: *blake3::hash(&index.to_le_bytes()).as_bytes(),
    }
}

/// Every implementation under test, each fresh.
fn implementations() -> Vec<(&'static str, Arc<dyn Storage>)> {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskStorage::open_with_options(dir.path(), small_opts()).unwrap();
    // Keep the folder alive for the storage's lifetime by leaking the guard.
    std::mem::forget(dir);
    vec![
        ("memory", Arc::new(MemoryStorage::new())),
        (
            "sim-disk",
            Arc::new(DiskStorage::open_vfs(Arc::new(SimVfs::new()), small_opts()).unwrap()),
        ),
        ("disk", Arc::new(disk)),
    ]
}

async fn write(s: &dyn Storage, ops: Vec<Op>) {
    let mut b = Batch::new();
    for op in ops {
        b.push(op);
    }
    s.write(b).await.unwrap();
}

#[test]
fn values_nodes_blocks_and_meta() {
    block_on(async {
        for (name, s) in implementations() {
            let s = s.as_ref();
            write(
                s,
                vec![
                    Op::PutValue {
                        core: A,
                        key: b"x".to_vec(),
                        value: b"1".to_vec(),
                    },
                    Op::PutValue {
                        core: A,
                        key: b"user/a".to_vec(),
                        value: b"2".to_vec(),
                    },
                    Op::PutValue {
                        core: A,
                        key: b"user/b".to_vec(),
                        value: b"3".to_vec(),
                    },
                    Op::PutNode {
                        core: A,
                        node: node(4),
                    },
                    Op::PutBlock {
                        core: A,
                        index: 2,
                        data: b"two".to_vec(),
                    },
                    Op::PutBlock {
                        core: B,
                        index: 0,
                        data: vec![],
                    },
                    Op::PutValue {
                        core: B,
                        key: b"x".to_vec(),
                        value: b"b".to_vec(),
                    },
                    Op::PutMeta {
                        key: b"m".to_vec(),
                        value: b"v".to_vec(),
                    },
                ],
            )
            .await;
            assert_eq!(
                s.value(&A, b"x").await.unwrap().as_deref(),
                Some(&b"1"[..]),
                "{name}"
            );
            assert_eq!(s.values(&A, b"user/").await.unwrap().len(), 2, "{name}");
            assert_eq!(s.node(&A, 4).await.unwrap(), Some(node(4)), "{name}");
            assert_eq!(s.node(&A, 5).await.unwrap(), None, "{name}");
            assert_eq!(s.node(&B, 4).await.unwrap(), None, "{name}");
            assert_eq!(
                s.block(&A, 2).await.unwrap().as_deref(),
                Some(&b"two"[..]),
                "{name}"
            );
            assert_eq!(
                s.block(&B, 0).await.unwrap().as_deref(),
                Some(&b""[..]),
                "{name}"
            );
            assert!(s.has_block(&A, 2).await.unwrap(), "{name}");
            assert!(!s.has_block(&A, 3).await.unwrap(), "{name}");
            assert_eq!(
                s.meta(b"m").await.unwrap().as_deref(),
                Some(&b"v"[..]),
                "{name}"
            );
            assert_eq!(s.cores().await.unwrap(), vec![A, B], "{name}");
            write(
                s,
                vec![
                    Op::DelValue {
                        core: A,
                        key: b"user/a".to_vec(),
                    },
                    Op::DelMeta { key: b"m".to_vec() },
                    Op::DeleteCore { core: B },
                ],
            )
            .await;
            assert_eq!(s.values(&A, b"user/").await.unwrap().len(), 1, "{name}");
            assert_eq!(s.meta(b"m").await.unwrap(), None, "{name}");
            assert_eq!(s.cores().await.unwrap(), vec![A], "{name}");
            assert_eq!(s.block(&B, 0).await.unwrap(), None, "{name}");
            s.flush().await.unwrap();
        }
    });
}

#[test]
fn truncate_drops_blocks_and_nodes_outside_the_prefix() {
    block_on(async {
        for (name, s) in implementations() {
            let s = s.as_ref();
            let mut ops = Vec::new();
            for i in 0..40u64 {
                ops.push(Op::PutNode {
                    core: A,
                    node: node(i),
                });
            }
            for i in 0..20u64 {
                ops.push(Op::PutBlock {
                    core: A,
                    index: i,
                    data: vec![i as u8; 10],
                });
            }
            write(s, ops).await;
            write(s, vec![Op::Truncate { core: A, length: 5 }]).await;
            for i in 0..40u64 {
                let survives = hypercore_rs::flat::in_tree(i, 5);
                assert_eq!(
                    s.node(&A, i).await.unwrap().is_some(),
                    survives,
                    "{name} node {i}"
                );
            }
            for i in 0..20u64 {
                assert_eq!(s.has_block(&A, i).await.unwrap(), i < 5, "{name} block {i}");
            }
            // Writing again after a truncation works and is not masked.
            write(
                s,
                vec![
                    Op::PutNode {
                        core: A,
                        node: node(11),
                    },
                    Op::PutBlock {
                        core: A,
                        index: 7,
                        data: b"n".to_vec(),
                    },
                ],
            )
            .await;
            assert_eq!(s.node(&A, 11).await.unwrap(), Some(node(11)), "{name}");
            assert_eq!(
                s.block(&A, 7).await.unwrap().as_deref(),
                Some(&b"n"[..]),
                "{name}"
            );
            assert_eq!(s.node(&A, 13).await.unwrap(), None, "{name}");
        }
    });
}

#[test]
fn clear_drops_block_data_but_keeps_nodes() {
    block_on(async {
        for (name, s) in implementations() {
            let s = s.as_ref();
            let mut ops = vec![Op::PutNode {
                core: A,
                node: node(2),
            }];
            for i in 0..10u64 {
                ops.push(Op::PutBlock {
                    core: A,
                    index: i,
                    data: vec![7; 100],
                });
            }
            write(s, ops).await;
            write(
                s,
                vec![Op::Clear {
                    core: A,
                    start: 2,
                    end: 6,
                }],
            )
            .await;
            s.flush().await.unwrap();
            for i in 0..10u64 {
                assert_eq!(
                    s.has_block(&A, i).await.unwrap(),
                    !(2..6).contains(&i),
                    "{name} {i}"
                );
            }
            assert_eq!(s.node(&A, 2).await.unwrap(), Some(node(2)), "{name}");
            assert_eq!(s.block(&A, 7).await.unwrap(), Some(vec![7; 100]), "{name}");
        }
    });
}

#[derive(Clone, Debug)]
enum MOp {
    Put(u8, u64, u8),
    Node(u8, u64),
    Truncate(u8, u64),
    Clear(u8, u64, u64),
    Value(u8, u8, u8),
    Flush,
    Checkpoint,
}

fn mop() -> impl Strategy<Value = MOp> {
    prop_oneof![
        4 => (0..2u8, 0..30u64, any::<u8>()).prop_map(|(c, i, v)| MOp::Put(c, i, v)),
        3 => (0..2u8, 0..60u64).prop_map(|(c, i)| MOp::Node(c, i)),
        1 => (0..2u8, 0..30u64).prop_map(|(c, l)| MOp::Truncate(c, l)),
        1 => (0..2u8, 0..30u64, 0..30u64).prop_map(|(c, a, b)| MOp::Clear(c, a.min(b), a.max(b))),
        2 => (0..2u8, 0..4u8, any::<u8>()).prop_map(|(c, k, v)| MOp::Value(c, k, v)),
        1 => Just(MOp::Flush),
        1 => Just(MOp::Checkpoint),
    ]
}

#[derive(Default, Clone, PartialEq, Debug)]
struct Model {
    blocks: HashMap<(u8, u64), Vec<u8>>,
    nodes: HashMap<(u8, u64), Node>,
    values: BTreeMap<(u8, u8), u8>,
}

fn cid(c: u8) -> [u8; 32] {
    [c + 10; 32]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Memory and (simulated) disk storage agree with a plain model, including
    /// after reopening the disk storage at any point.
    #[test]
    fn implementations_agree_with_a_model(ops in proptest::collection::vec(mop(), 1..60), reopen_at in 0usize..60) {
        block_on(async {
            let vfs = SimVfs::new();
            let mem = MemoryStorage::new();
            let mut disk = DiskStorage::open_vfs(Arc::new(vfs.clone()), small_opts()).unwrap();
            let mut model = Model::default();
            for (step, op) in ops.iter().enumerate() {
                if step == reopen_at {
                    drop(disk);
                    disk = DiskStorage::open_vfs(Arc::new(vfs.clone()), small_opts()).unwrap();
                }
                let mut b = Batch::new();
                match op.clone() {
                    MOp::Put(c, i, v) => {
                        let data = vec![v; (v % 50) as usize];
                        model.blocks.insert((c, i), data.clone());
                        b.push(Op::PutBlock { core: cid(c), index: i, data });
                    }
                    MOp::Node(c, i) => {
                        model.nodes.insert((c, i), node(i));
                        b.push(Op::PutNode { core: cid(c), node: node(i) });
                    }
                    MOp::Truncate(c, l) => {
                        model.blocks.retain(|(mc, i), _| *mc != c || *i < l);
                        model.nodes.retain(|(mc, i), _| *mc != c || hypercore_rs::flat::in_tree(*i, l));
                        b.push(Op::Truncate { core: cid(c), length: l });
                    }
                    MOp::Clear(c, s, e) => {
                        model.blocks.retain(|(mc, i), _| *mc != c || *i < s || *i >= e);
                        b.push(Op::Clear { core: cid(c), start: s, end: e });
                    }
                    MOp::Value(c, k, v) => {
                        model.values.insert((c, k), v);
                        b.push(Op::PutValue { core: cid(c), key: vec![k], value: vec![v] });
                    }
                    MOp::Flush => {
                        disk.flush().await.unwrap();
                        continue;
                    }
                    MOp::Checkpoint => {
                        disk.checkpoint().unwrap();
                        continue;
                    }
                }
                mem.write(b.clone()).await.unwrap();
                disk.write(b).await.unwrap();
            }
            for s in [&mem as &dyn Storage, &disk as &dyn Storage] {
                for c in 0..2u8 {
                    for i in 0..30u64 {
                        assert_eq!(s.block(&cid(c), i).await.unwrap(), model.blocks.get(&(c, i)).cloned());
                    }
                    for i in 0..64u64 {
                        assert_eq!(s.node(&cid(c), i).await.unwrap(), model.nodes.get(&(c, i)).copied());
                    }
                    for k in 0..4u8 {
                        assert_eq!(s.value(&cid(c), &[k]).await.unwrap(), model.values.get(&(c, k)).map(|v| vec![*v]));
                    }
                }
            }
        });
    }
}
