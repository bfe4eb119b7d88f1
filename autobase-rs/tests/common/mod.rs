//! Shared test apply: a tiny command language over the default view.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use autobase_rs::{Apply, ApplyError, Autobase, Host, Node, View};
use hypercore_rs::{Corestore, MemoryStorage, Storage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Commands: `p<key>=<value>` put, `a<hex key>` add indexer, `w<hex key>` add
/// non-indexer writer, `r<hex key>` remove, `x` reject.
pub struct Cmds {
    pub calls: Arc<AtomicU64>,
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, k) in k.iter_mut().enumerate() {
        *k = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    k
}

#[async_trait::async_trait]
impl Apply for Cmds {
    async fn apply(
        &self,
        nodes: &[Node],
        view: &mut View,
        host: &mut Host,
    ) -> Result<(), ApplyError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        for n in nodes {
            let s = String::from_utf8_lossy(&n.value).to_string();
            match s.as_bytes().first() {
                Some(b'p') => {
                    let (k, v) = s[1..].split_once('=').unwrap_or((&s[1..], ""));
                    view.bee("view")?.put(k.as_bytes(), v.as_bytes()).await?;
                }
                Some(b'a') => host.add_writer(unhex(&s[1..]), true)?,
                Some(b'w') => host.add_writer(unhex(&s[1..]), false)?,
                Some(b'r') => host.remove_writer(unhex(&s[1..]))?,
                _ => return Err(ApplyError::Rejected("unknown command".into())),
            }
        }
        Ok(())
    }
}

pub async fn open(storage: Arc<dyn Storage>, key: Option<[u8; 32]>) -> (Autobase, Arc<AtomicU64>) {
    let store = Corestore::open(storage).await.unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let base = Autobase::builder(
        store,
        Cmds {
            calls: calls.clone(),
        },
    )
    .bootstrap(key)
    .open()
    .await
    .unwrap();
    (base, calls)
}

pub async fn mem(key: Option<[u8; 32]>) -> Autobase {
    open(Arc::new(MemoryStorage::new()), key).await.0
}

pub async fn dump(base: &Autobase) -> Vec<(Vec<u8>, Vec<u8>)> {
    let snap = base.view("view").await.unwrap();
    snap.range(hyperbee_rs::Range::all())
        .collect()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

/// Connects two bases with live in-process replication.
pub fn connect(a: &Autobase, b: &Autobase) {
    let (x, y) = hypercore_rs::replication::duplex();
    let (a, b) = (a.clone(), b.clone());
    tokio::spawn(async move {
        if let Err(e) = a.replicate(x, true).await {
            eprintln!("replication (initiator) ended: {e}");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = b.replicate(y, false).await {
            eprintln!("replication (responder) ended: {e}");
        }
    });
}

/// Updates every base until `done` holds (or panics after many rounds).
pub async fn settle<F, Fut>(bases: &[&Autobase], mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..20_000 {
        for (i, b) in bases.iter().enumerate() {
            if let Err(e) = b.update().await {
                let w = b.writers().await;
                panic!(
                    "update of base {i} ({:02x}) failed: {e}; proofs {:?} cuts {:?}",
                    b.local_writer_key()[0],
                    b.equivocations()
                        .await
                        .iter()
                        .map(|p| (p.writer()[0], p.seq))
                        .collect::<Vec<_>>(),
                    w.iter()
                        .map(|w| (w.key[0], w.indexer, w.removed, w.cut.map(|c| c.at)))
                        .collect::<Vec<_>>()
                );
            }
        }
        if done().await {
            return;
        }
        tokio::task::yield_now().await;
    }
    for (i, b) in bases.iter().enumerate() {
        eprintln!(
            "base {i}: indexed {} length {} heads {:?} view {:02x?} proofs {:?} cuts {:?}",
            b.indexed_length().await,
            b.length().await,
            b.heads()
                .await
                .iter()
                .map(|(k, l)| (k[0], *l))
                .collect::<Vec<_>>(),
            &b.view_hash("view").await.unwrap()[..4],
            b.equivocations()
                .await
                .iter()
                .map(|p| (p.writer()[0], p.seq))
                .collect::<Vec<_>>(),
            b.writers()
                .await
                .iter()
                .filter_map(|w| Some((w.key[0], w.cut?.at)))
                .collect::<Vec<_>>()
        );
    }
    panic!("bases did not settle");
}

pub async fn converged(bases: &[&Autobase]) -> bool {
    let first = bases[0];
    let (h, il, l, d) = (
        first.heads().await,
        first.indexed_length().await,
        first.length().await,
        dump(first).await,
    );
    // Everything that writes to the view is indexed (a tail of acks may remain).
    if first.view_hash("view").await.unwrap() != first.view_tip_hash("view").await.unwrap() {
        return false;
    }
    for b in &bases[1..] {
        if b.heads().await != h
            || b.indexed_length().await != il
            || b.length().await != l
            || dump(b).await != d
        {
            return false;
        }
        if b.view_hash("view").await.unwrap() != first.view_hash("view").await.unwrap() {
            return false;
        }
    }
    true
}
