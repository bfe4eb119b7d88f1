//! Behaviour of the driver: apply, membership, rejection, restart, two and
//! three peers replicating in-process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use hypercore_rs::{MemoryStorage, Storage};
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[tokio::test]
async fn single_writer_applies_and_indexes() {
    let a = mem(None).await;
    assert!(a.writable().await);
    assert_eq!(a.key(), a.local_writer_key());
    a.append(b"pk1=v1".to_vec()).await.unwrap();
    a.append_batch(vec![b"pk2=v2".to_vec(), b"pk3=v3".to_vec()])
        .await
        .unwrap();
    assert_eq!(a.indexed_length().await, 2);
    assert_eq!(a.length().await, 2);
    assert_eq!(dump(&a).await.len(), 3);
    // A rejected block changes nothing and is counted.
    let h = a.view_hash("view").await.unwrap();
    a.append_batch(vec![b"pk4=v4".to_vec(), b"x".to_vec()])
        .await
        .unwrap();
    assert_eq!(a.rejected().await, 1);
    assert_eq!(dump(&a).await.len(), 3);
    assert_eq!(a.view_hash("view").await.unwrap(), h);
    assert!(a.view("nope").await.is_err());
    assert!(matches!(
        a.append_batch(vec![]).await,
        Err(autobase_rs::Error::Empty)
    ));
}

#[tokio::test]
async fn last_indexer_cannot_be_removed() {
    let a = mem(None).await;
    a.append(format!("r{}", hex(&a.key())).into_bytes())
        .await
        .unwrap();
    assert_eq!(a.rejected().await, 1);
    assert!(a.writable().await);
}

#[tokio::test]
async fn restart_does_not_replay_history() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let (a, calls) = open(storage.clone(), None).await;
    for i in 0..50 {
        a.append(format!("pk{i}=v{i}").into_bytes()).await.unwrap();
    }
    a.flush().await.unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 50);
    let (key, hash) = (a.key(), a.view_hash("view").await.unwrap());
    drop(a);
    let (b, calls) = open(storage.clone(), None).await;
    assert_eq!(b.key(), key);
    assert_eq!(calls.load(Ordering::Relaxed), 0, "reopen replayed history");
    assert_eq!(b.indexed_length().await, 50);
    assert_eq!(b.view_hash("view").await.unwrap(), hash);
    assert_eq!(dump(&b).await.len(), 50);
    b.append(b"pz=z".to_vec()).await.unwrap();
    assert_eq!(dump(&b).await.len(), 51);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    // Opening by key gives the same base.
    drop(b);
    let (c, _) = open(storage, Some(key)).await;
    assert_eq!(c.indexed_length().await, 51);
    assert!(c.writable().await);
}

#[tokio::test]
async fn two_indexers_converge_over_replication() {
    let a = mem(None).await;
    let b = mem(Some(a.key())).await;
    assert!(!b.writable().await);
    assert!(matches!(
        b.append(b"pq=1".to_vec()).await,
        Err(autobase_rs::Error::NotWritable)
    ));
    connect(&a, &b);
    a.append(format!("a{}", hex(&b.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b], || async { b.writable().await }).await;
    for i in 0..20 {
        a.append(format!("pa{i}=x").into_bytes()).await.unwrap();
        b.append(format!("pb{i}=y").into_bytes()).await.unwrap();
        if i % 5 == 0 {
            a.update().await.unwrap();
            b.update().await.unwrap();
        }
    }
    settle(&[&a, &b], || async { converged(&[&a, &b]).await }).await;
    assert_eq!(dump(&a).await.len(), 40);
    let ws = a.writers().await;
    assert_eq!(ws.len(), 2);
    assert!(ws.iter().all(|w| w.indexer && !w.removed));
}

#[tokio::test]
async fn three_peers_with_a_non_indexer_and_a_removal() {
    let a = mem(None).await;
    let b = mem(Some(a.key())).await;
    let c = mem(Some(a.key())).await;
    connect(&a, &b);
    connect(&b, &c);
    connect(&a, &c);
    a.append(format!("a{}", hex(&b.local_writer_key())).into_bytes())
        .await
        .unwrap();
    a.append(format!("w{}", hex(&c.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b, &c], || async {
        b.writable().await && c.writable().await
    })
    .await;
    c.append(b"pc1=1".to_vec()).await.unwrap();
    b.append(b"pb1=1".to_vec()).await.unwrap();
    settle(&[&a, &b, &c], || async { converged(&[&a, &b, &c]).await }).await;
    // Remove c; its later writes never reach a view.
    a.append(format!("r{}", hex(&c.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b, &c], || async {
        converged(&[&a, &b, &c]).await && !c.writable().await
    })
    .await;
    assert!(matches!(
        c.append(b"pc2=2".to_vec()).await,
        Err(autobase_rs::Error::NotWritable)
    ));
    let d = dump(&a).await;
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|(k, _)| k != b"c2"));
}

#[tokio::test]
async fn a_reorder_reapplies_only_the_changed_tail() {
    use futures::{FutureExt, StreamExt};
    let (a, calls_a) = open(Arc::new(MemoryStorage::new()), None).await;
    let (b, _) = open(Arc::new(MemoryStorage::new()), Some(a.key())).await;
    let (x, y) = hypercore_rs::replication::duplex();
    let (a2, b2) = (a.clone(), b.clone());
    let ta = tokio::spawn(async move {
        let _ = a2.replicate(x, true).await;
    });
    let tb = tokio::spawn(async move {
        let _ = b2.replicate(y, false).await;
    });
    a.append(format!("a{}", hex(&b.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b], || async { b.writable().await }).await;
    for i in 0..30 {
        a.append(format!("ph{i}=1").into_bytes()).await.unwrap();
    }
    settle(&[&a, &b], || async { converged(&[&a, &b]).await }).await;
    // Partition: both write concurrently.
    ta.abort();
    tb.abort();
    let _ = ta.await;
    let _ = tb.await;
    let mut events = a.events();
    for i in 0..3 {
        a.append(format!("pa{i}=1").into_bytes()).await.unwrap();
        b.append(format!("pb{i}=1").into_bytes()).await.unwrap();
    }
    let before = calls_a.load(Ordering::Relaxed);
    connect(&a, &b);
    settle(&[&a, &b], || async { converged(&[&a, &b]).await }).await;
    let reapplied = calls_a.load(Ordering::Relaxed) - before;
    // B's three blocks, plus at most A's three re-applied after them: never
    // the 31 blocks of history.
    assert!(
        (3..=6).contains(&reapplied),
        "re-applied {reapplied} blocks"
    );
    assert_eq!(dump(&a).await.len(), 36);
    let mut saw = Vec::new();
    while let Some(Some(e)) = events.next().now_or_never() {
        saw.push(e);
    }
    assert!(saw
        .iter()
        .any(|e| matches!(e, autobase_rs::Event::Updated { .. })));
}

#[tokio::test]
async fn a_removed_indexer_no_longer_counts() {
    let a = mem(None).await;
    let b = mem(Some(a.key())).await;
    connect(&a, &b);
    a.append(format!("a{}", hex(&b.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b], || async { b.writable().await }).await;
    b.append(b"pb=1".to_vec()).await.unwrap();
    settle(&[&a, &b], || async { converged(&[&a, &b]).await }).await;
    a.append(format!("r{}", hex(&b.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b], || async {
        converged(&[&a, &b]).await && !b.writable().await
    })
    .await;
    let ws = a.writers().await;
    assert!(ws
        .iter()
        .any(|w| w.key == b.local_writer_key() && w.removed));
    // a alone is the indexer now: its writes are indexed without b.
    let before = a.indexed_length().await;
    a.append(b"pa=1".to_vec()).await.unwrap();
    assert!(a.indexed_length().await > before);
    assert_eq!(
        a.view_hash("view").await.unwrap(),
        a.view_tip_hash("view").await.unwrap()
    );
    // Re-adding b as a non-indexer lets it write again.
    a.append(format!("w{}", hex(&b.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b], || async { b.writable().await }).await;
    b.append(b"pb2=2".to_vec()).await.unwrap();
    settle(&[&a, &b], || async { converged(&[&a, &b]).await }).await;
    assert_eq!(dump(&a).await.len(), 3);
}

#[tokio::test]
async fn two_of_three_indexers_index_while_the_third_is_offline() {
    let a = mem(None).await;
    let b = mem(Some(a.key())).await;
    let c = mem(Some(a.key())).await; // never connected
    connect(&a, &b);
    a.append(format!("a{}", hex(&b.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b], || async { b.writable().await }).await;
    a.append(format!("a{}", hex(&c.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b], || async { converged(&[&a, &b]).await }).await;
    assert_eq!(a.writers().await.iter().filter(|w| w.indexer).count(), 3);
    let before = a.indexed_length().await;
    for i in 0..5 {
        a.append(format!("pa{i}=1").into_bytes()).await.unwrap();
        b.append(format!("pb{i}=1").into_bytes()).await.unwrap();
    }
    settle(&[&a, &b], || async { converged(&[&a, &b]).await }).await;
    assert!(a.indexed_length().await > before + 10);
    assert_eq!(dump(&a).await.len(), 10);
}
