//! Fetching a checkpoint over the replication session: a late joiner asks
//! connected peers, merges the indexers' signatures, fast-forwards, and
//! ignores forged answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use autobase_rs::{Autobase, CHECKPOINT_EXTENSION};
use common::*;
use futures::StreamExt;
use hypercore_rs::MemoryStorage;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Two indexers a and b with a history of `n` puts each.
async fn history(n: usize) -> (Autobase, Autobase) {
    let a = mem(None).await;
    let b = mem(Some(a.key())).await;
    connect(&a, &b);
    a.append(format!("a{}", hex(&b.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b], || async { b.writable().await }).await;
    for i in 0..n {
        a.append(format!("pa{i}=1").into_bytes()).await.unwrap();
        b.append(format!("pb{i}=1").into_bytes()).await.unwrap();
    }
    settle(&[&a, &b], || async { converged(&[&a, &b]).await }).await;
    (a, b)
}

/// Makes `e` answer every checkpoint request with forgeries: an altered
/// checkpoint, garbage, the genuine checkpoint under a bogus signature in
/// a genuine signer's name, and the genuine checkpoint with altered blocks.
async fn spawn_forger(
    e: &Autobase,
    key: [u8; 32],
    signed: autobase_rs::SignedCheckpoint,
    blocks: Vec<Vec<u8>>,
) {
    let core = e.store().get_by_key(key).await.unwrap();
    let mut rx = core.extension(CHECKPOINT_EXTENSION);
    let forger = core.clone();
    tokio::spawn(async move {
        while let Some((_, msg)) = rx.next().await {
            if msg.first() != Some(&0) {
                continue;
            }
            let mut bogus = signed.clone();
            for s in &mut bogus.signatures {
                s.signature.0[0] ^= 1;
            }
            let mut m = vec![1];
            m.extend_from_slice(&bogus.encode());
            forger.send_extension(CHECKPOINT_EXTENSION, m);
            // Altered after signing, and garbage.
            let mut forged = signed.clone();
            forged.checkpoint.rejected += 1;
            let mut m = vec![1];
            m.extend_from_slice(&forged.encode());
            forger.send_extension(CHECKPOINT_EXTENSION, m);
            forger.send_extension(CHECKPOINT_EXTENSION, vec![1, 2, 3]);
            forger.send_extension(CHECKPOINT_EXTENSION, vec![2; 40]);
            // The genuine checkpoint relayed, with view blocks altered.
            let mut m = vec![1];
            m.extend_from_slice(&signed.encode());
            forger.send_extension(CHECKPOINT_EXTENSION, m);
            let id = signed.checkpoint.signable();
            let mut bad = blocks.clone();
            if let Some(last) = bad.last_mut() {
                last.push(0);
            }
            let mut m = vec![2];
            m.extend_from_slice(&id);
            m.extend_from_slice(&0u32.to_le_bytes());
            m.extend_from_slice(&0u64.to_le_bytes());
            m.extend_from_slice(&(bad.len() as u32).to_le_bytes());
            for b in &bad {
                m.extend_from_slice(&(b.len() as u32).to_le_bytes());
                m.extend_from_slice(b);
            }
            forger.send_extension(CHECKPOINT_EXTENSION, m);
        }
    });
}

fn serve(base: &Autobase) {
    let base = base.clone();
    tokio::spawn(async move {
        let _ = base.serve_checkpoints().await;
    });
}

#[tokio::test]
async fn a_late_joiner_fetches_the_checkpoint_from_peers() {
    let (a, b) = history(60).await;
    let history = a.indexed_length().await;
    assert!(history > 120, "history {history}");
    serve(&a);
    serve(&b);

    // A forger connected too, answering first with a bogus signature in
    // a's name over the genuine checkpoint, and with altered blocks.
    let e = mem(Some(a.key())).await;
    let mut signed = a.sign_checkpoint().await.unwrap();
    signed.merge(&b.sign_checkpoint().await.unwrap()).unwrap();
    spawn_forger(&e, a.key(), signed, a.view_blocks("view").await.unwrap()).await;

    let (d, calls) = open(Arc::new(MemoryStorage::new()), Some(a.key())).await;
    connect(&e, &d);
    let asking = {
        let d = d.clone();
        tokio::spawn(async move { d.fast_forward_from_peers(Duration::from_secs(10)).await })
    };
    // The forgeries arrive first; then the honest indexers connect.
    hypercore_rs::Clock::sleep(&hypercore_rs::ThreadClock, Duration::from_millis(150)).await;
    connect(&a, &d);
    connect(&b, &d);
    // Neither signature alone is a quorum for the checkpoint's two
    // indexers: d merges both answers.
    assert!(asking.await.unwrap().unwrap());
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(d.indexed_length().await, history);
    assert_eq!(
        d.view_hash("view").await.unwrap(),
        a.view_hash("view").await.unwrap()
    );

    // Then it continues normally with the nodes after the checkpoint.
    for i in 0..5 {
        a.append(format!("pqa{i}=2").into_bytes()).await.unwrap();
        b.append(format!("pqb{i}=2").into_bytes()).await.unwrap();
    }
    settle(&[&a, &b, &d], || async { converged(&[&a, &b, &d]).await }).await;
    let applied = calls.load(Ordering::Relaxed);
    println!("history {history} nodes, joiner apply calls {applied}");
    assert!(applied < 40, "applied {applied} of {history}");
    assert_eq!(dump(&d).await.len(), 130);
}

/// The same without calling `fast_forward_from_peers`: every peer runs
/// `checkpoint_duty`, and a joiner that has indexed nothing starts from
/// the checkpoint on its own (no `apply` call for the history), announces
/// it, and goes on.
#[tokio::test]
async fn a_joiner_running_the_checkpoint_duty_starts_from_a_checkpoint() {
    let (a, b) = history(40).await;
    let history = a.indexed_length().await;
    for x in [&a, &b] {
        let x = x.clone();
        tokio::spawn(async move { x.checkpoint_duty(Duration::from_secs(10)).await });
    }
    let (d, calls) = open(Arc::new(MemoryStorage::new()), Some(a.key())).await;
    let mut events = d.events();
    {
        let d = d.clone();
        tokio::spawn(async move { d.checkpoint_duty(Duration::from_secs(10)).await });
    }
    connect(&a, &d);
    connect(&b, &d);
    let wait_event = async {
        while let Some(e) = events.next().await {
            if let autobase_rs::Event::FastForwarded { indexed_length } = e {
                return indexed_length;
            }
        }
        0
    };
    let timeout = hypercore_rs::Clock::sleep(&hypercore_rs::ThreadClock, Duration::from_secs(20));
    futures::pin_mut!(wait_event);
    let installed = match futures::future::select(wait_event, timeout).await {
        futures::future::Either::Left((n, _)) => n,
        futures::future::Either::Right(_) => panic!("no checkpoint installed"),
    };
    assert_eq!(installed, history);
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(
        d.view_hash("view").await.unwrap(),
        a.view_hash("view").await.unwrap()
    );
    a.append(b"pafter=1".to_vec()).await.unwrap();
    settle(&[&a, &b, &d], || async { converged(&[&a, &b, &d]).await }).await;
    assert!(calls.load(Ordering::Relaxed) < 20);
    assert_eq!(dump(&d).await.len(), 81);
}

#[tokio::test]
async fn a_forged_answer_is_ignored_and_the_joiner_replays() {
    let (a, b) = history(20).await;
    let history = a.indexed_length().await;
    // e is a plain replica that answers with forgeries.
    let e = mem(Some(a.key())).await;
    connect(&a, &e);
    settle(&[&a, &b, &e], || async { converged(&[&a, &b, &e]).await }).await;
    let mut signed = a.sign_checkpoint().await.unwrap();
    signed.merge(&b.sign_checkpoint().await.unwrap()).unwrap();
    let blocks = a.view_blocks("view").await.unwrap();
    spawn_forger(&e, a.key(), signed, blocks).await;

    let (f, calls) = open(Arc::new(MemoryStorage::new()), Some(a.key())).await;
    connect(&e, &f);
    assert!(!f
        .fast_forward_from_peers(Duration::from_millis(400))
        .await
        .unwrap());
    assert_eq!(f.indexed_length().await, 0);
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    // It falls back to replaying the history.
    settle(&[&e, &f], || async { f.indexed_length().await == history }).await;
    assert_eq!(
        f.view_hash("view").await.unwrap(),
        a.view_hash("view").await.unwrap()
    );
    assert!(calls.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn a_non_indexer_relays_the_signatures_it_heard() {
    let (a, b) = history(30).await;
    let history = a.indexed_length().await;
    serve(&a);
    serve(&b);
    // c is a plain replica: it serves only what it heard.
    let c = mem(Some(a.key())).await;
    connect(&a, &c);
    connect(&b, &c);
    settle(&[&a, &b, &c], || async { converged(&[&a, &b, &c]).await }).await;
    serve(&c);
    let (g, calls) = open(Arc::new(MemoryStorage::new()), Some(a.key())).await;
    connect(&c, &g);
    // Before c heard anything it stays silent.
    assert!(!g
        .fast_forward_from_peers(Duration::from_millis(300))
        .await
        .unwrap());
    // One request on c's session makes a and b answer; c keeps the
    // signatures over its own indexed state.
    let core = c.store().get_by_key(a.key()).await.unwrap();
    core.send_extension(CHECKPOINT_EXTENSION, vec![0]);
    assert!(g
        .fast_forward_from_peers(Duration::from_secs(10))
        .await
        .unwrap());
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(g.indexed_length().await, history);
    assert_eq!(
        g.view_hash("view").await.unwrap(),
        a.view_hash("view").await.unwrap()
    );
}

#[tokio::test]
async fn indexers_push_their_signatures_unasked() {
    let (a, b) = history(20).await;
    serve(&a);
    serve(&b);
    // New indexed states: each indexer pushes its signature to the other
    // without anyone asking.
    a.append(b"pnew=1".to_vec()).await.unwrap();
    settle(&[&a, &b], || async { converged(&[&a, &b]).await }).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    let history = a.indexed_length().await;
    // A joiner connected to a alone: a's signature is half of the quorum,
    // b's arrives relayed by a.
    let (d, calls) = open(Arc::new(MemoryStorage::new()), Some(a.key())).await;
    connect(&a, &d);
    assert!(d
        .fast_forward_from_peers(Duration::from_secs(10))
        .await
        .unwrap());
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(d.indexed_length().await, history);
    assert_eq!(
        d.view_hash("view").await.unwrap(),
        a.view_hash("view").await.unwrap()
    );
}

#[tokio::test]
async fn a_requester_gets_only_the_blocks_it_lacks() {
    let (a, _b) = history(20).await;
    serve(&a);
    let e = mem(Some(a.key())).await;
    connect(&a, &e);
    settle(&[&a, &e], || async { converged(&[&a, &e]).await }).await;
    let core = e.store().get_by_key(a.key()).await.unwrap();
    let mut rx = core.extension(CHECKPOINT_EXTENSION);
    // A plain request: the offer, then every view block.
    core.send_extension(CHECKPOINT_EXTENSION, vec![0]);
    let (mut signed, mut blocks) = (None, 0usize);
    let total = a.view_blocks("view").await.unwrap().len();
    while blocks < total {
        let m = next_msg(&mut rx).await;
        match m.first() {
            Some(1) => signed = Some(autobase_rs::SignedCheckpoint::decode(&m[1..]).unwrap()),
            Some(2) => blocks += u32::from_le_bytes(m[45..49].try_into().unwrap()) as usize,
            _ => {}
        }
    }
    let signed = signed.unwrap();
    // Asking again for the same checkpoint, holding all but 3 blocks:
    // only those 3 come.
    let mut req = vec![0u8];
    req.extend_from_slice(&signed.checkpoint.signable());
    req.extend_from_slice(&1u32.to_le_bytes());
    req.extend_from_slice(&(total as u64 - 3).to_le_bytes());
    core.send_extension(CHECKPOINT_EXTENSION, req);
    let mut again = Vec::new();
    while again.iter().sum::<usize>() < 3 {
        let m = next_msg(&mut rx).await;
        if m.first() == Some(&2) {
            let start = u64::from_le_bytes(m[37..45].try_into().unwrap());
            assert_eq!(start, total as u64 - 3);
            again.push(u32::from_le_bytes(m[45..49].try_into().unwrap()) as usize);
        }
    }
    assert_eq!(again, vec![3]);
}

async fn next_msg(rx: &mut futures::channel::mpsc::UnboundedReceiver<(u64, Vec<u8>)>) -> Vec<u8> {
    use futures::FutureExt;
    let mut sleep =
        hypercore_rs::Clock::sleep(&hypercore_rs::ThreadClock, Duration::from_secs(10)).fuse();
    futures::select! {
        m = rx.next() => m.unwrap().1,
        _ = sleep => panic!("no answer"),
    }
}

#[tokio::test]
async fn a_joiner_follows_the_chain_when_the_bootstrap_is_no_longer_an_indexer() {
    let a = mem(None).await;
    let b = mem(Some(a.key())).await;
    connect(&a, &b);
    serve(&a);
    serve(&b);
    a.append(format!("a{}", hex(&b.local_writer_key())).into_bytes())
        .await
        .unwrap();
    settle(&[&a, &b], || async { b.writable().await }).await;
    // a hands over: it stays a writer, b is the only indexer.
    a.append(format!("w{}", hex(&a.local_writer_key())).into_bytes())
        .await
        .unwrap();
    for i in 0..10 {
        a.append(format!("pa{i}=1").into_bytes()).await.unwrap();
        b.append(format!("pb{i}=1").into_bytes()).await.unwrap();
    }
    settle(&[&a, &b], || async {
        if !converged(&[&a, &b]).await {
            return false;
        }
        // Both transitions carry the outgoing indexers' signatures.
        let chain = b.checkpoint_chain().await;
        chain.len() == 2 && chain[0].signatures.len() == 1 && chain[1].signatures.len() == 2
    })
    .await;
    let chain = b.checkpoint_chain().await;
    assert_eq!(chain[0].checkpoint.indexers().len(), 2);
    assert_eq!(chain[1].checkpoint.indexers(), vec![b.local_writer_key()]);
    let history = b.indexed_length().await;

    // Without the chain, b's checkpoint means nothing to a joiner that
    // trusts only the bootstrap writer a.
    let (d, calls) = open(Arc::new(MemoryStorage::new()), Some(a.key())).await;
    let signed = b.sign_checkpoint().await.unwrap();
    let views = vec![b.view_blocks("view").await.unwrap()];
    assert!(matches!(
        d.fast_forward(&signed, &views).await,
        Err(autobase_rs::Error::Checkpoint(
            autobase_rs::CheckpointError::NoQuorum { .. }
        ))
    ));
    // A chain whose hand-over lacks the outgoing a's signature does not help.
    let mut forged = chain.clone();
    forged[1]
        .signatures
        .retain(|s| autobase_rs::checkpoint::writer_key(&s.public_key) == b.local_writer_key());
    assert!(d.fast_forward_via(&forged, &signed, &views).await.is_err());
    // Connected to b alone, it fetches the chain and the checkpoint.
    connect(&b, &d);
    assert!(d
        .fast_forward_from_peers(Duration::from_secs(10))
        .await
        .unwrap());
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(d.indexed_length().await, history);
    assert_eq!(
        d.view_hash("view").await.unwrap(),
        b.view_hash("view").await.unwrap()
    );
    assert_eq!(d.checkpoint_chain().await.len(), 2);
}
