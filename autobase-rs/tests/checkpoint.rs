//! Checkpoints and fast-forward: a late joiner starts from the indexed state
//! signed by a majority of indexers, and refuses forged, under-signed or
//! mismatching checkpoints with typed errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use autobase_rs::checkpoint::writer_key;
use autobase_rs::{CheckpointError, Error};
use common::*;
use hypercore_rs::{KeyPair, MemoryStorage};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn refused(r: Result<(), Error>) -> CheckpointError {
    match r {
        Err(Error::Checkpoint(e)) => e,
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_late_joiner_fast_forwards_from_a_majority_checkpoint() {
    // Three indexers (c offline): a and b are a majority.
    let a = mem(None).await;
    let b = mem(Some(a.key())).await;
    let c = mem(Some(a.key())).await;
    connect(&a, &b);
    a.append(format!("a{}", hex(&b.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b], || async { b.writable().await }).await;
    a.append(format!("a{}", hex(&c.local_writer_key())).into_bytes())
        .await
        .unwrap();
    for i in 0..40 {
        a.append(format!("pa{i}=1").into_bytes()).await.unwrap();
        b.append(format!("pb{i}=1").into_bytes()).await.unwrap();
    }
    settle(&[&a, &b], || async { converged(&[&a, &b]).await }).await;
    let history = a.indexed_length().await;
    assert!(history > 80, "history {history}");

    let mut signed = a.sign_checkpoint().await.unwrap();
    assert_eq!(
        signed.checkpoint,
        b.checkpoint().await,
        "same bytes on both"
    );
    let only_a = signed.clone();
    signed.merge(&b.sign_checkpoint().await.unwrap()).unwrap();
    let blocks = vec![a.view_blocks("view").await.unwrap()];

    let (d, calls) = open(Arc::new(MemoryStorage::new()), Some(a.key())).await;
    // A minority of the indexers (one of three) is not enough.
    assert_eq!(
        refused(d.fast_forward(&only_a, &blocks).await),
        CheckpointError::NoQuorum {
            signed: 1,
            needed: 2
        }
    );
    // Altered after signing.
    let mut forged = signed.clone();
    forged.checkpoint.rejected += 1;
    assert_eq!(
        refused(d.fast_forward(&forged, &blocks).await),
        CheckpointError::BadSignature
    );
    let mut forged = signed.clone();
    forged.checkpoint.views[0].hash[0] ^= 1;
    assert_eq!(
        refused(d.fast_forward(&forged, &blocks).await),
        CheckpointError::BadSignature
    );
    // A stranger who names itself the only indexer and signs: its own
    // quorum holds, but none of the indexers the joiner trusts signed.
    let stranger = KeyPair::from_seed([9; 32]);
    let mut own = signed.checkpoint.clone();
    for m in &mut own.members {
        m.removed = true;
    }
    own.members[0].key = writer_key(&stranger.public_key());
    own.members[0].removed = false;
    own.members[0].indexer = true;
    let mut forged = autobase_rs::SignedCheckpoint::unsigned(own);
    forged.sign(&stranger);
    assert_eq!(
        refused(d.fast_forward(&forged, &blocks).await),
        CheckpointError::NoQuorum {
            signed: 0,
            needed: 1
        }
    );
    // View blocks that do not rebuild the signed tree.
    let mut bad = blocks.clone();
    bad[0].pop();
    assert!(matches!(
        refused(d.fast_forward(&signed, &bad).await),
        CheckpointError::ViewMismatch(_)
    ));
    let mut bad = blocks.clone();
    if let Some(last) = bad[0].last_mut() {
        last.push(0);
    }
    assert!(matches!(
        refused(d.fast_forward(&signed, &bad).await),
        CheckpointError::ViewMismatch(_)
    ));
    // Another base's checkpoint.
    let other = mem(None).await;
    other.append(b"px=1".to_vec()).await.unwrap();
    let theirs = other.sign_checkpoint().await.unwrap();
    assert_eq!(
        refused(
            d.fast_forward(&theirs, &[other.view_blocks("view").await.unwrap()])
                .await
        ),
        CheckpointError::WrongBase
    );
    // Nothing was installed by the refusals.
    assert_eq!(d.indexed_length().await, 0);
    assert_eq!(calls.load(Ordering::Relaxed), 0);

    // The majority checkpoint is taken (as carried over the wire): no apply
    // call at all.
    let carried = autobase_rs::SignedCheckpoint::decode(&signed.encode()).unwrap();
    d.fast_forward(&carried, &blocks).await.unwrap();
    assert_eq!(d.indexed_length().await, history);
    assert_eq!(
        d.view_hash("view").await.unwrap(),
        a.view_hash("view").await.unwrap()
    );
    assert_eq!(dump(&d).await.len(), 80);
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(
        refused(d.fast_forward(&signed, &blocks).await),
        CheckpointError::Stale {
            have: history,
            offered: history
        }
    );

    // Then it catches up on the nodes after the frontier only.
    connect(&a, &d);
    connect(&b, &d);
    for i in 0..5 {
        a.append(format!("pqa{i}=2").into_bytes()).await.unwrap();
        b.append(format!("pqb{i}=2").into_bytes()).await.unwrap();
    }
    settle(&[&a, &b, &d], || async { converged(&[&a, &b, &d]).await }).await;
    assert_eq!(dump(&d).await.len(), 90);
    assert_eq!(
        d.view_hash("view").await.unwrap(),
        a.view_hash("view").await.unwrap()
    );
    // It never downloaded the inputs' history either.
    for w in [a.local_writer_key(), b.local_writer_key()] {
        let core = d.store().get_by_key(w).await.unwrap();
        assert!(core.length() > 40);
        assert!(!core.has(0, 1).await.unwrap(), "history block downloaded");
    }
    let applied = calls.load(Ordering::Relaxed);
    assert!(
        (10..=20).contains(&applied),
        "the joiner applied {applied} blocks of {} indexed",
        d.indexed_length().await
    );

    // A joiner that replays everything applies the whole history.
    let (e, replayed) = open(Arc::new(MemoryStorage::new()), Some(a.key())).await;
    connect(&a, &e);
    settle(&[&a, &b, &e], || async { converged(&[&a, &b, &e]).await }).await;
    let replayed = replayed.load(Ordering::Relaxed);
    eprintln!(
        "indexed {}: fast-forwarded joiner applied {applied}, replaying joiner {replayed}",
        e.indexed_length().await
    );
    assert!(replayed >= 90);
    assert_eq!(
        e.view_hash("view").await.unwrap(),
        d.view_hash("view").await.unwrap()
    );
}

#[tokio::test]
async fn only_indexers_sign_and_merging_needs_equal_checkpoints() {
    let a = mem(None).await;
    let b = mem(Some(a.key())).await;
    let e = b.sign_checkpoint().await;
    assert!(matches!(
        e,
        Err(Error::Checkpoint(CheckpointError::NotIndexer))
    ));
    let mut s1 = a.sign_checkpoint().await.unwrap();
    a.append(b"pk=v".to_vec()).await.unwrap();
    let s2 = a.sign_checkpoint().await.unwrap();
    assert_eq!(s1.merge(&s2), Err(CheckpointError::Differ));
    // A lone indexer's checkpoint verifies alone.
    s2.verify(&a.key(), &[a.key()]).unwrap();
    assert_eq!(
        s2.verify(&b.local_writer_key(), &[a.key()]),
        Err(CheckpointError::WrongBase)
    );
}

/// A base with one indexer and `n` values, and a signed checkpoint of it.
async fn history(
    n: usize,
) -> (
    autobase_rs::Autobase,
    autobase_rs::SignedCheckpoint,
    Vec<Vec<Vec<u8>>>,
) {
    let a = mem(None).await;
    for i in 0..n {
        a.append(format!("pk{i}=v").into_bytes()).await.unwrap();
    }
    let signed = a.sign_checkpoint().await.unwrap();
    let blocks = vec![a.view_blocks("view").await.unwrap()];
    (a, signed, blocks)
}

#[tokio::test]
async fn a_fast_forwarded_peer_restarts_from_its_record() {
    let (a, signed, blocks) = history(30).await;
    let storage: Arc<dyn hypercore_rs::Storage> = Arc::new(MemoryStorage::new());
    let (d, calls) = open(storage.clone(), Some(a.key())).await;
    d.fast_forward(&signed, &blocks).await.unwrap();
    d.flush().await.unwrap();
    drop(d);
    let (d, calls2) = open(storage, Some(a.key())).await;
    assert_eq!(d.indexed_length().await, 30);
    assert_eq!(
        d.view_hash("view").await.unwrap(),
        a.view_hash("view").await.unwrap()
    );
    assert_eq!(
        calls.load(Ordering::Relaxed) + calls2.load(Ordering::Relaxed),
        0
    );
    connect(&a, &d);
    a.append(b"pz=1".to_vec()).await.unwrap();
    settle(&[&a, &d], || async { converged(&[&a, &d]).await }).await;
    assert_eq!(calls2.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn view_bytes_without_a_record_are_dropped_on_open() {
    // As after a fast-forward that crashed before its record: the view holds
    // blocks, no record says so. The base must rebuild, not apply on top.
    let (a, _, blocks) = history(10).await;
    let storage: Arc<dyn hypercore_rs::Storage> = Arc::new(MemoryStorage::new());
    {
        let store = hypercore_rs::Corestore::open(storage.clone())
            .await
            .unwrap();
        let view = store
            .namespace("autobase-rs")
            .namespace(&hex(&a.key()))
            .get("view/view")
            .await
            .unwrap();
        for b in &blocks[0] {
            view.append(b).await.unwrap();
        }
        view.flush().await.unwrap();
    }
    let (d, calls) = open(storage, Some(a.key())).await;
    connect(&a, &d);
    settle(&[&a, &d], || async { converged(&[&a, &d]).await }).await;
    assert_eq!(calls.load(Ordering::Relaxed), 10);
    assert_eq!(
        d.view_hash("view").await.unwrap(),
        a.view_hash("view").await.unwrap()
    );
}
