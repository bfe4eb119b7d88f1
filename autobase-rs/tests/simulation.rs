//! Seeded simulations: three writers (two indexers, one not) and a late
//! reader, random offline writes with overlapping keys, partitions, restarts
//! and a lying writer. Properties: convergence (byte-identical views, same
//! view hash as a peer that replays everything at once), finality (what was
//! indexed never changes), membership (a removed writer's later values never
//! reach a view), and liars cannot stall the others.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::needless_range_loop)]

mod common;
use autobase_rs::Autobase;
use common::*;
use hypercore_rs::{MemoryStorage, Storage};
use std::sync::Arc;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Peer {
    storage: Arc<dyn Storage>,
    base: Option<Autobase>,
}

impl Peer {
    fn base(&self) -> &Autobase {
        self.base.as_ref().unwrap()
    }
}

type Links = Vec<tokio::task::JoinHandle<()>>;
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn link(a: &Autobase, b: &Autobase, links: &mut Links) {
    let (x, y) = hypercore_rs::replication::duplex();
    let (a, b) = (a.clone(), b.clone());
    links.push(tokio::spawn(async move {
        let _ = a.replicate(x, true).await;
    }));
    links.push(tokio::spawn(async move {
        let _ = b.replicate(y, false).await;
    }));
}

async fn cut(links: &mut Links) {
    for l in links.drain(..) {
        l.abort();
        let _ = l.await;
    }
}

fn link_all(peers: &[Peer], links: &mut Links) {
    for i in 0..peers.len() {
        for j in i + 1..peers.len() {
            link(peers[i].base(), peers[j].base(), links);
        }
    }
}

async fn settle_all(peers: &[Peer]) {
    let bases: Vec<&Autobase> = peers.iter().map(|p| p.base()).collect();
    settle(&bases, || converged(&bases)).await;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Liar {
    None,
    Malformed,
    MissingHead,
}

async fn run(seed: u64, liar: Liar, c_indexes: bool) {
    let mut rng = Rng(seed | 1);
    let mut peers: Vec<Peer> = Vec::new();
    for i in 0..3 {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let key = if i == 0 {
            None
        } else {
            Some(peers[0].base().key())
        };
        let base = open(storage.clone(), key).await.0;
        peers.push(Peer {
            storage,
            base: Some(base),
        });
    }
    let keys: Vec<[u8; 32]> = peers.iter().map(|p| p.base().local_writer_key()).collect();
    let mut links = Links::new();
    link_all(&peers, &mut links);
    let a = peers[0].base().clone();
    a.append(format!("a{}", hex(&keys[1])).into_bytes())
        .await
        .unwrap();
    let role = if c_indexes { "a" } else { "w" };
    a.append(format!("{role}{}", hex(&keys[2])).into_bytes())
        .await
        .unwrap();
    drop(a);
    {
        let bases: Vec<&Autobase> = peers.iter().map(|p| p.base()).collect();
        settle(&bases, || async {
            for b in &bases {
                if !b.writable().await {
                    return false;
                }
            }
            true
        })
        .await;
    }
    settle_all(&peers).await;

    let mut finals: Vec<(u64, Entries)> = Vec::new();
    let mut removed_c = false;
    for round in 0..3 {
        // Partition: everyone offline; random writes, some with overlapping keys.
        cut(&mut links).await;
        for _ in 0..(4 + rng.below(8)) {
            let p = rng.below(3) as usize;
            let base = peers[p].base();
            if !base.writable().await {
                continue;
            }
            let k = rng.below(6);
            let batch = 1 + rng.below(3);
            let vals: Vec<Vec<u8>> = (0..batch)
                .map(|j| format!("pk{k}{j}=p{p}r{round}").into_bytes())
                .collect();
            match base.append_batch(vals).await {
                Ok(()) => {}
                // A liar's input is ignored by everyone, itself included.
                Err(autobase_rs::Error::InputRejected) if p == 2 && liar != Liar::None => {}
                Err(e) => panic!("seed {seed}: {e}"),
            }
            if rng.below(4) == 0 {
                base.update().await.unwrap();
            }
        }
        // Some peers restart (from storage, no replay of the indexed part).
        for p in 0..3 {
            if rng.below(2) == 0 {
                peers[p].base = None;
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                let key = if p == 0 { None } else { Some(keys[0]) };
                peers[p].base = Some(open(peers[p].storage.clone(), key).await.0);
            }
        }
        if liar != Liar::None && round == 1 {
            // c writes straight into its input core: a malformed block, or a
            // block naming a head that does not exist.
            let c = peers[2].base();
            let input = c.store().get_by_key(keys[2]).await.unwrap();
            let bad = match liar {
                Liar::Malformed => vec![7u8, 7, 7],
                _ => missing_head_block(c, &input, keys[0]).await,
            };
            input.append(&bad).await.unwrap();
            let r = c.append(b"pliar=after".to_vec()).await;
            if liar == Liar::Malformed {
                assert!(matches!(r, Err(autobase_rs::Error::InputRejected)), "{r:?}");
            }
        }
        if round == 2 && !removed_c {
            // Remove c (the non-indexer) while it keeps writing offline.
            peers[0]
                .base()
                .append(format!("r{}", hex(&keys[2])).into_bytes())
                .await
                .unwrap();
            removed_c = true;
        }
        link_all(&peers, &mut links);
        settle_all(&peers).await;
        // Finality: earlier indexed states are unchanged.
        let a = peers[0].base();
        for (version, entries) in &finals {
            let snap = a.checkout("view", *version).await.unwrap();
            let now: Vec<(Vec<u8>, Vec<u8>)> = snap
                .range(hyperbee_rs::Range::all())
                .collect()
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.key, e.value))
                .collect();
            assert_eq!(&now, entries, "seed {seed}: an indexed state changed");
        }
        let v = a.view_indexed_version("view").await.unwrap();
        finals.push((v, dump(a).await));
    }
    // c was removed: it knows, and cannot write any more.
    assert!(!peers[2].base().writable().await);
    assert!(matches!(
        peers[2].base().append(b"pafter=removal".to_vec()).await,
        Err(autobase_rs::Error::NotWritable | autobase_rs::Error::InputRejected)
    ));
    assert!(dump(peers[0].base())
        .await
        .iter()
        .all(|(k, _)| k != b"after"));
    // A late reader replays everything at once and gets the same view.
    let late = mem(Some(keys[0])).await;
    for p in &peers {
        link(p.base(), &late, &mut links);
    }
    let all: Vec<&Autobase> = peers
        .iter()
        .map(|p| p.base())
        .chain(std::iter::once(&late))
        .collect();
    settle(&all, || converged(&all)).await;
    assert_eq!(
        late.view_hash("view").await.unwrap(),
        peers[0].base().view_hash("view").await.unwrap(),
        "seed {seed}"
    );
    cut(&mut links).await;
}

/// A well-formed, signed block of `c` that names node 999 of a writer that
/// does not exist: it can never be placed.
async fn missing_head_block(c: &Autobase, input: &hypercore_rs::Core, base: [u8; 32]) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let seq = input.length();
    let prev = if seq == 0 {
        [0u8; 32]
    } else {
        let b = input.get(seq - 1).await.unwrap().unwrap();
        let mut h = blake3::Hasher::new_derive_key("autobase-rs/node/v2");
        h.update(&(seq - 1).to_le_bytes());
        h.update(&b[..b.len() - 64]);
        *h.finalize().as_bytes()
    };
    // postcard: version, height, one head (key, length 1000), body
    // Values(["x"]), prev, one pin (hash, signature as bytes).
    let mut content = vec![1u8, 5, 1];
    content.extend([9u8; 32]);
    content.extend([0xE8, 0x07]);
    content.extend([1, 1, 1, b'x']);
    content.extend(prev);
    content.push(1);
    content.extend([0u8; 32]);
    content.push(64);
    content.extend([0u8; 64]);
    let mut h = blake3::Hasher::new_derive_key("autobase-rs/node/v2");
    h.update(&seq.to_le_bytes());
    h.update(&content);
    let hash = *h.finalize().as_bytes();
    let kp = c
        .store()
        .namespace("autobase-rs")
        .namespace(&hex(&base))
        .key_pair("local");
    let sk = ed25519_dalek::SigningKey::from_bytes(&kp.seed());
    let sig = sk.sign(&blake3::derive_key("autobase-rs/node-signature/v2", &hash));
    content.extend(sig.to_bytes());
    content
}

#[tokio::test]
async fn seeded_partitions_and_restarts() {
    for seed in 1..=6u64 {
        run(seed * 0x9e37_79b9, Liar::None, false).await;
    }
}

#[tokio::test]
async fn a_lying_writer_cannot_stall_the_others() {
    for seed in 1..=3u64 {
        run(seed * 0x51_7cc1, Liar::Malformed, false).await;
        run(seed * 0x2545_f491, Liar::MissingHead, false).await;
    }
}

#[tokio::test]
async fn three_indexers_through_partitions_and_restarts() {
    // c is an indexer too, and is removed in the last round: a and b stay a
    // majority of the remaining two.
    for seed in 1..=4u64 {
        run(seed * 0x3c6e_f372, Liar::None, true).await;
    }
}
