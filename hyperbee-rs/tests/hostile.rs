//! Hostile and corrupt blocks: garbage, wrong pointers, pointer cycles,
//! huge lengths, mismatched levels and random mutations of a real bee. Every
//! read returns a typed error or a value; none panics or hangs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::executor::block_on;
use hyperbee_rs::{Bee, CorruptError, Error, History, Range, FORMAT_VERSION};
use hypercore_rs::{Core, MemoryStorage};
use proptest::prelude::*;
use std::sync::Arc;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn header() -> Vec<u8> {
    let mut h = vec![FORMAT_VERSION, 0];
    h.extend_from_slice(b"hyperbee-rs");
    h
}

/// A tree block ending a flush whose root is `root` (delta, slot), holding `nodes`.
fn tree_block(root: Option<(u64, u64)>, nodes: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![FORMAT_VERSION, 1, if root.is_some() { 3 } else { 1 }];
    if let Some((d, s)) = root {
        varint(&mut b, d);
        varint(&mut b, s);
    }
    varint(&mut b, nodes.len() as u64);
    for n in nodes {
        varint(&mut b, n.len() as u64);
    }
    for n in nodes {
        b.extend_from_slice(n);
    }
    b.push(0); // no ops
    b
}

/// An internal node at `level` with one child pointer (delta, slot).
fn internal(level: u8, child: (u64, u64)) -> Vec<u8> {
    let mut n = vec![level, 0];
    varint(&mut n, child.0);
    varint(&mut n, child.1);
    n
}

fn leaf(keys: &[&[u8]]) -> Vec<u8> {
    let mut n = vec![0];
    varint(&mut n, keys.len() as u64);
    for k in keys {
        varint(&mut n, k.len() as u64);
        n.extend_from_slice(k);
        n.push(1); // seq
        n.push(0); // inline
        n.push(1);
        n.push(b'v');
    }
    n
}

async fn core_with(blocks: &[Vec<u8>]) -> Core {
    let core = Core::builder(Arc::new(MemoryStorage::new()))
        .open()
        .await
        .unwrap();
    for b in blocks {
        core.append(b).await.unwrap();
    }
    core
}

/// Opens the bee and exercises every read; returns the first error.
async fn exercise(core: Core) -> Result<(), Error> {
    let bee = Bee::open(core).await?;
    let v = bee.version();
    let mut first = Ok(());
    let mut note = |r: Result<(), Error>| {
        if first.is_ok() {
            first = r;
        }
    };
    note(bee.get(b"k").await.map(drop));
    note(bee.range(Range::all()).collect().await.map(drop));
    note(bee.range(Range::all().reverse()).collect().await.map(drop));
    note(bee.history(History::all()).collect().await.map(drop));
    for old in 0..v {
        match bee.diff(old, v, Range::all()).await {
            Ok(d) => note(d.collect().await.map(drop)),
            Err(e) => note(Err(e)),
        }
    }
    first
}

#[test]
fn not_a_bee() {
    block_on(async {
        let core = core_with(&[b"garbage".to_vec()]).await;
        assert!(matches!(Bee::open(core).await, Err(Error::NotABee)));
        let mut h = header();
        h[0] = 99;
        let core = core_with(&[h]).await;
        assert!(matches!(
            Bee::open(core).await,
            Err(Error::UnsupportedVersion(99))
        ));
    });
}

#[test]
fn pointer_cycles_and_forward_pointers_are_rejected() {
    block_on(async {
        // A node pointing at itself (slot 0 of its own block).
        let core = core_with(&[header(), tree_block(Some((0, 0)), &[internal(1, (0, 0))])]).await;
        let err = exercise(core).await.unwrap_err();
        assert!(
            matches!(err, Error::Corrupt(CorruptError::BadPointer { .. })),
            "{err:?}"
        );
        // Two nodes pointing at each other: the earlier one points forward.
        let core = core_with(&[
            header(),
            tree_block(Some((0, 1)), &[internal(1, (0, 1)), internal(2, (0, 0))]),
        ])
        .await;
        let err = exercise(core).await.unwrap_err();
        assert!(
            matches!(err, Error::Corrupt(CorruptError::BadPointer { .. })),
            "{err:?}"
        );
        // A root pointing before the start of the core.
        let core = core_with(&[header(), tree_block(Some((5, 0)), &[])]).await;
        assert!(Bee::open(core).await.is_err());
        // A pointer at the header block.
        let core = core_with(&[header(), tree_block(Some((0, 0)), &[internal(1, (1, 0))])]).await;
        assert!(exercise(core).await.is_err());
    });
}

#[test]
fn wrong_levels_and_unsorted_keys_are_rejected() {
    block_on(async {
        // Level 5 over a leaf.
        let core = core_with(&[
            header(),
            tree_block(Some((0, 1)), &[leaf(&[b"a"]), internal(5, (0, 0))]),
        ])
        .await;
        let err = exercise(core).await.unwrap_err();
        assert!(
            matches!(err, Error::Corrupt(CorruptError::Tree { .. })),
            "{err:?}"
        );
        let core = core_with(&[header(), tree_block(Some((0, 0)), &[leaf(&[b"b", b"a"])])]).await;
        let err = exercise(core).await.unwrap_err();
        assert!(
            matches!(err, Error::Corrupt(CorruptError::Tree { .. })),
            "{err:?}"
        );
        // A well-formed hand-made tree reads fine.
        let core = core_with(&[
            header(),
            tree_block(Some((0, 1)), &[leaf(&[b"a", b"k"]), internal(1, (0, 0))]),
        ])
        .await;
        exercise(core).await.unwrap();
    });
}

#[test]
fn huge_lengths_are_rejected_without_allocating() {
    block_on(async {
        let mut b = vec![FORMAT_VERSION, 1, 3, 0, 0];
        varint(&mut b, u64::MAX >> 1); // node count
        let core = core_with(&[header(), b]).await;
        assert!(matches!(Bee::open(core).await, Err(Error::Corrupt(_))));
        let mut n = vec![0];
        varint(&mut n, 1 << 40); // key count
        let core = core_with(&[header(), tree_block(Some((0, 0)), &[n])]).await;
        assert!(matches!(exercise(core).await, Err(Error::Corrupt(_))));
        let mut n = vec![0, 1];
        varint(&mut n, 1 << 50); // key length
        let core = core_with(&[header(), tree_block(Some((0, 0)), &[n])]).await;
        assert!(matches!(exercise(core).await, Err(Error::Corrupt(_))));
        // The last block does not end a flush.
        let mut b = tree_block(None, &[]);
        b[2] = 0;
        let core = core_with(&[header(), b]).await;
        assert!(matches!(Bee::open(core).await, Err(Error::Corrupt(_))));
    });
}

/// The blocks of a small real bee with a few levels.
fn real_blocks() -> Vec<Vec<u8>> {
    block_on(async {
        let core = Core::builder(Arc::new(MemoryStorage::new()))
            .open()
            .await
            .unwrap();
        let bee = Bee::open(core.clone()).await.unwrap();
        let mut b = bee.batch().await.unwrap();
        for i in 0..300u32 {
            b.put(format!("key{i:05}"), vec![i as u8; (i % 7 * 100) as usize])
                .await
                .unwrap();
        }
        b.flush().await.unwrap();
        for i in 0..20u32 {
            bee.put(format!("key{:05}", i * 13), b"x").await.unwrap();
            bee.del(format!("key{:05}", i * 7)).await.unwrap();
        }
        let mut out = Vec::new();
        for i in 0..core.length() {
            out.push(core.get(i).await.unwrap().unwrap());
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn mutated_blocks_never_panic(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        truncate in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut blocks = real_blocks();
        let i = which.index(blocks.len());
        let b = &mut blocks[i];
        for (at, byte) in &edits {
            if !b.is_empty() {
                let at = at.index(b.len());
                b[at] = *byte;
            }
        }
        if let Some(t) = truncate {
            let t = t.index(b.len() + 1);
            b.truncate(t);
        }
        block_on(async {
            let core = core_with(&blocks).await;
            let _ = exercise(core).await;
        });
    }

    #[test]
    fn garbage_blocks_never_panic(
        garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..4),
    ) {
        let mut blocks = real_blocks();
        for g in garbage {
            let mut b = vec![FORMAT_VERSION, 1];
            b.extend_from_slice(&g);
            blocks.push(b);
        }
        block_on(async {
            let core = core_with(&blocks).await;
            let _ = exercise(core).await;
        });
    }
}
