//! A writer that forked its core: a reader holding one fork meets an honest
//! peer holding the other. By default the invalid proof ends the session;
//! with `isolate_invalid_proofs` only that core's channel closes and the
//! other cores keep replicating.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::block_on;
use futures::future::{select, Either};
use hypercore_rs::replication::{duplex, ProtocolError, ReplicateOptions, ReplicationError};
use hypercore_rs::{Clock, Corestore, MemoryStorage, SeededEntropy, ThreadClock};
use std::sync::Arc;
use std::time::Duration;

fn opts(initiator: bool, isolate: bool) -> ReplicateOptions {
    let mut o = ReplicateOptions::new(initiator);
    o.entropy = Arc::new(SeededEntropy::new(u64::from(initiator)));
    o.isolate_invalid_proofs = isolate;
    o
}

/// `r` holds fork B of core `x` (length 1); `s` holds fork A of `x`
/// (length 2, same key) and a core `y` of 5 blocks. Returns `(r, s, x key,
/// y key)`.
async fn setup() -> (Corestore, Corestore, [u8; 32], [u8; 32]) {
    let s = Corestore::with_seed(Arc::new(MemoryStorage::new()), [1; 32]);
    let liar = Corestore::with_seed(Arc::new(MemoryStorage::new()), [1; 32]);
    let xa = s.get("x").await.unwrap();
    xa.append_batch([b"a0", b"a1"]).await.unwrap();
    let xb = liar.get("x").await.unwrap();
    xb.append(b"b0").await.unwrap();
    assert_eq!(xa.key(), xb.key());
    let y = s.get("y").await.unwrap();
    for i in 0..5u8 {
        y.append(&[i; 10]).await.unwrap();
    }
    let r = Corestore::with_seed(Arc::new(MemoryStorage::new()), [2; 32]);
    let rx = r.get_by_key(xa.key()).await.unwrap();
    // r reads fork B first.
    let (p, q) = duplex();
    let (r2, l2) = (r.clone(), liar.clone());
    let one = async move { r2.replicate(p, opts(true, false)).await };
    let two = async move { l2.replicate(q, opts(false, false)).await };
    let got = async {
        rx.download(0, 1).done().await.unwrap();
    };
    let sessions = futures::future::join(one, two);
    match select(Box::pin(got), Box::pin(sessions)).await {
        Either::Left(_) => {}
        Either::Right(_) => panic!("session ended early"),
    }
    assert_eq!(rx.get(0).await.unwrap().as_deref(), Some(&b"b0"[..]));
    (r, s, xa.key(), y.key())
}

#[test]
fn an_invalid_proof_closes_only_its_channel_when_isolated() {
    block_on(async {
        let (r, s, _x, y) = setup().await;
        let ry = r.get_by_key(y).await.unwrap();
        let _live = r.get_by_key(_x).await.unwrap().download_live();
        let (p, q) = duplex();
        let (r2, s2) = (r.clone(), s.clone());
        let one = async move { r2.replicate(p, opts(true, true)).await };
        let two = async move { s2.replicate(q, opts(false, true)).await };
        let got = async {
            ry.download(0, 5).done().await.unwrap();
            // Keep the session a while after the conflicting proof.
            ThreadClock.sleep(Duration::from_millis(200)).await;
        };
        let sessions = futures::future::join(one, two);
        match select(Box::pin(got), Box::pin(sessions)).await {
            Either::Left(_) => {}
            Either::Right((res, _)) => panic!("session ended: {res:?}"),
        }
        assert_eq!(ry.get(4).await.unwrap(), Some(vec![4u8; 10]));
        // Nothing of the other fork was stored.
        let rx = r.get_by_key(_x).await.unwrap();
        assert_eq!(rx.length(), 1);
        assert_eq!(rx.get(0).await.unwrap().as_deref(), Some(&b"b0"[..]));
    });
}

#[test]
fn an_invalid_proof_ends_the_session_by_default() {
    block_on(async {
        let (r, s, x, _y) = setup().await;
        let _live = r.get_by_key(x).await.unwrap().download_live();
        let (p, q) = duplex();
        let (r2, s2) = (r.clone(), s.clone());
        let one = async move { r2.replicate(p, opts(true, false)).await };
        let two = async move {
            let _ = s2.replicate(q, opts(false, false)).await;
            // The honest side ends when the reader hangs up; wait for the
            // reader's verdict.
            futures::future::pending::<()>().await;
        };
        let timeout = ThreadClock.sleep(Duration::from_secs(10));
        let both = select(Box::pin(one), Box::pin(two));
        let res = match select(both, Box::pin(timeout)).await {
            Either::Left((Either::Left((res, _)), _)) => res,
            _ => panic!("the session did not end"),
        };
        assert!(
            matches!(
                res,
                Err(ReplicationError::Protocol(ProtocolError::InvalidProof(_)))
            ),
            "{res:?}"
        );
    });
}
