//! Proofs: everything a holder generates verifies; every single-bit mutation
//! of a proof (block, nodes, signature, lengths, fork) is rejected and leaves
//! the verifier unchanged; forged and random proofs never panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{block_on, sync_all};
use hypercore_rs::{
    BlockRequest, Core, Error, HashRequest, KeyPair, Manifest, MemoryStorage, Proof, ProofError,
    ProofRequest, SeekRequest, UpgradeRequest,
};
use proptest::prelude::*;
use std::sync::Arc;

async fn writer_with(n: u64, seed: u8) -> Core {
    let core = Core::builder(Arc::new(MemoryStorage::new()))
        .key_pair(KeyPair::from_seed([seed; 32]))
        .open()
        .await
        .unwrap();
    for i in 0..n {
        core.append(&[i as u8; 3][..(i % 4) as usize])
            .await
            .unwrap();
    }
    core
}

async fn reader_of(writer: &Core) -> Core {
    Core::builder(Arc::new(MemoryStorage::new()))
        .key(writer.key())
        .open()
        .await
        .unwrap()
}

fn fingerprint(c: &Core) -> (u64, u64, [u8; 32], u64) {
    (c.length(), c.fork(), c.tree_hash(), c.contiguous_length())
}

/// Whether every claim a proof makes is true of the writer's log: such a
/// proof may be accepted even if it is not the one the writer sent.
async fn claims_are_true(writer: &Core, p: &Proof) -> bool {
    let node_of = |index: u64| async move {
        writer
            .proof(&ProofRequest {
                hash: Some(HashRequest { index, nodes: 0 }),
                ..Default::default()
            })
            .await
            .ok()
            .and_then(|h| h.hash)
            .map(|h| h.node)
    };
    if p.fork != writer.fork() {
        return false;
    }
    if let Some(b) = &p.block {
        if writer.get_raw(b.index).await.ok().flatten().as_ref() != Some(&b.value) {
            return false;
        }
    }
    if let Some(h) = &p.hash {
        if node_of(h.node.index).await != Some(h.node) {
            return false;
        }
    }
    if let Some(s) = &p.seek {
        let at = writer.seek(s.bytes).await.ok().map(|(i, _)| i);
        if at != Some(s.leaf.index / 2) || node_of(s.leaf.index).await != Some(s.leaf) {
            return false;
        }
    }
    if let Some(u) = &p.upgrade {
        if u.length != writer.length() {
            return false;
        }
    }
    if let Some(m) = &p.manifest {
        if Some(m) != writer.manifest().as_ref() {
            return false;
        }
    }
    true
}

/// Flips every bit of the encoded proof. Each decodable mutation must be
/// rejected, leaving the reader unchanged, unless every claim it makes is
/// still true of the writer (e.g. a seek offset moved within the same block,
/// or an index moved between two identical empty blocks); then the reader is
/// rebuilt with `fresh` and the search goes on.
async fn assert_every_flip_rejected<F>(writer: &Core, reader: Core, proof: &Proof, fresh: F)
where
    F: Fn() -> futures::future::BoxFuture<'static, Core>,
{
    let mut reader = reader;
    let bytes = postcard::to_stdvec(proof).unwrap();
    let before = fingerprint(&reader);
    let mut tried = 0;
    for bit in 0..bytes.len() * 8 {
        let mut m = bytes.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        let Ok(p) = postcard::from_bytes::<Proof>(&m) else {
            continue;
        };
        if &p == proof {
            continue;
        }
        tried += 1;
        match reader.verify(&p).await {
            Err(_) => assert_eq!(
                fingerprint(&reader),
                before,
                "a rejected proof changed the reader"
            ),
            Ok(_) => {
                assert!(
                    claims_are_true(writer, &p).await,
                    "bit {bit} of {}: a false proof was accepted",
                    bytes.len() * 8
                );
                reader = fresh().await;
            }
        }
    }
    assert!(tried > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn single_bit_mutations_are_rejected(n in 2u64..40, known in 0u64..40, pick in 0u64..40, bytes in 0u64..100) {
        block_on(async {
            let writer = writer_with(n, 1).await;
            let reader = reader_of(&writer).await;
            // The reader already knows a prefix of the log.
            let known = known % n;
            if known > 0 {
                let partial = writer_with(known, 1).await;
                sync_all(&partial, &reader).await;
            }
            let index = pick % n;
            let total = writer.byte_length().max(1);
            let req = ProofRequest {
                fork: reader.fork(),
                upgrade: Some(UpgradeRequest { start: reader.length() }),
                block: Some(if index < reader.length() {
                    reader.block_request(index).await.unwrap()
                } else {
                    BlockRequest { index, nodes: 0 }
                }),
                hash: Some(HashRequest { index: 2 * index, nodes: 0 }),
                seek: Some(SeekRequest { bytes: bytes % total }),
                manifest: reader.manifest().is_none(),
                round_fork_point: false,
            };
            let proof = match writer.proof(&req).await {
                Ok(p) => p,
                Err(Error::SeekOutOfRange { .. }) => return, // all blocks empty
                Err(e) => panic!("{e}"),
            };
            let (w2, k2) = (writer.clone(), known);
            let fresh = move || -> futures::future::BoxFuture<'static, Core> {
                let w = w2.clone();
                Box::pin(async move {
                    let r = reader_of(&w).await;
                    if k2 > 0 {
                        sync_all(&writer_with(k2, 1).await, &r).await;
                    }
                    r
                })
            };
            assert_every_flip_rejected(&writer, fresh().await, &proof, &fresh).await;
            let reader = fresh().await;
            let v = reader.verify(&proof).await.unwrap();
            assert_eq!(v.upgraded, Some(n));
            assert_eq!(reader.length(), n);
            assert_eq!(reader.get(index).await.unwrap(), writer.get(index).await.unwrap());
            let (b, off) = v.seek.unwrap();
            assert_eq!((b, off), writer.seek(bytes % total).await.unwrap());
        });
    }
}

#[test]
fn block_only_proofs_reject_every_flip() {
    block_on(async {
        let writer = writer_with(23, 2).await;
        let reader = reader_of(&writer).await;
        let req = ProofRequest {
            upgrade: Some(UpgradeRequest { start: 0 }),
            manifest: true,
            ..Default::default()
        };
        reader
            .verify(&writer.proof(&req).await.unwrap())
            .await
            .unwrap();
        for i in [0u64, 7, 22] {
            let req = ProofRequest {
                block: Some(reader.block_request(i).await.unwrap()),
                ..Default::default()
            };
            let proof = writer.proof(&req).await.unwrap();
            let w2 = writer.clone();
            let fresh = move || -> futures::future::BoxFuture<'static, Core> {
                let w = w2.clone();
                Box::pin(async move {
                    let r = reader_of(&w).await;
                    let req = ProofRequest {
                        upgrade: Some(UpgradeRequest { start: 0 }),
                        manifest: true,
                        ..Default::default()
                    };
                    r.verify(&w.proof(&req).await.unwrap()).await.unwrap();
                    r
                })
            };
            assert_every_flip_rejected(&writer, fresh().await, &proof, &fresh).await;
            reader.verify(&proof).await.unwrap();
        }
    });
}

#[test]
fn a_forged_writer_is_rejected() {
    block_on(async {
        let honest = writer_with(10, 3).await;
        let reader = reader_of(&honest).await;
        let req = ProofRequest {
            upgrade: Some(UpgradeRequest { start: 0 }),
            manifest: true,
            ..Default::default()
        };
        reader
            .verify(&honest.proof(&req).await.unwrap())
            .await
            .unwrap();
        // Same length, different key pair: the signature cannot verify.
        let forger = writer_with(12, 4).await;
        let mut forged = forger
            .proof(&ProofRequest {
                upgrade: Some(UpgradeRequest { start: 10 }),
                ..Default::default()
            })
            .await
            .unwrap();
        forged.manifest = None;
        let err = reader.verify(&forged).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Proof(ProofError::BadSignature | ProofError::Mismatch)
            ),
            "{err}"
        );
        // A manifest that does not hash to the key is refused.
        let mut wrong_manifest = forged.clone();
        wrong_manifest.manifest = forger.manifest();
        assert!(reader.verify(&wrong_manifest).await.is_err());
        // Blocks that do not match the tree are refused.
        let mut p = honest
            .proof(&ProofRequest {
                block: Some(reader.block_request(4).await.unwrap()),
                ..Default::default()
            })
            .await
            .unwrap();
        p.block.as_mut().unwrap().value = b"evil".to_vec();
        assert_eq!(
            reader.verify(&p).await.unwrap_err().to_string(),
            Error::Proof(ProofError::Mismatch).to_string()
        );
        assert_eq!(
            reader.get(4).await.unwrap(),
            None,
            "nothing unverified is stored"
        );
        // A writable core never accepts someone else's upgrade.
        let up = honest
            .proof(&ProofRequest {
                upgrade: Some(UpgradeRequest { start: 0 }),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(matches!(
            forger.verify(&up).await,
            Err(Error::WriterUpgrade)
        ));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes that decode as a proof never panic the verifier and never
    /// change it.
    #[test]
    fn random_proofs_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        block_on(async {
            let writer = writer_with(9, 5).await;
            let reader = reader_of(&writer).await;
            sync_all(&writer, &reader).await;
            let before = fingerprint(&reader);
            if let Ok(p) = postcard::from_bytes::<Proof>(&bytes) {
                let _ = reader.verify(&p).await;
                let _ = writer.verify(&p).await;
            }
            if let Ok(r) = postcard::from_bytes::<ProofRequest>(&bytes) {
                let _ = writer.proof(&r).await;
                let _ = reader.proof(&r).await;
            }
            assert_eq!(fingerprint(&reader), before);
        });
    }
}

#[test]
fn k_of_n_manifests() {
    block_on(async {
        let keys: Vec<KeyPair> = (10..13).map(|s| KeyPair::from_seed([s; 32])).collect();
        let manifest = Manifest::multi(2, keys.iter().map(|k| k.public_key()).collect()).unwrap();
        let writer = Core::builder(Arc::new(MemoryStorage::new()))
            .manifest(manifest.clone())
            .key_pair(keys[0].clone())
            .key_pair(keys[2].clone())
            .open()
            .await
            .unwrap();
        assert!(writer.writable());
        writer.append_batch([b"a", b"b", b"c"]).await.unwrap();
        let reader = reader_of(&writer).await;
        sync_all(&writer, &reader).await;
        assert_eq!(reader.get(2).await.unwrap().as_deref(), Some(&b"c"[..]));
        assert_eq!(writer.signature().await.unwrap().0.len(), 2);
        // One signer alone is below the quorum: not writable.
        let lone = Core::builder(Arc::new(MemoryStorage::new()))
            .manifest(manifest)
            .key_pair(keys[1].clone())
            .open()
            .await
            .unwrap();
        assert!(!lone.writable());
        assert!(matches!(lone.append(b"x").await, Err(Error::NotWritable)));
        // A key pair that is not in the manifest is refused.
        let stranger = Core::builder(Arc::new(MemoryStorage::new()))
            .manifest(writer.manifest().unwrap())
            .key_pair(KeyPair::from_seed([99; 32]))
            .open()
            .await;
        assert!(matches!(stranger, Err(Error::KeyMismatch)));
    });
}

#[test]
fn proofs_stay_logarithmic() {
    block_on(async {
        let writer = Core::builder(Arc::new(MemoryStorage::new()))
            .open()
            .await
            .unwrap();
        let blocks: Vec<Vec<u8>> = (0..4096u32).map(|i| i.to_le_bytes().to_vec()).collect();
        writer.append_batch(&blocks).await.unwrap();
        let reader = reader_of(&writer).await;
        let up = writer
            .proof(&ProofRequest {
                upgrade: Some(UpgradeRequest { start: 0 }),
                manifest: true,
                ..Default::default()
            })
            .await
            .unwrap();
        reader.verify(&up).await.unwrap();
        let mut max_nodes = 0;
        for i in (0..4096).step_by(97) {
            let req = reader.block_request(i).await.unwrap();
            let p = writer
                .proof(&ProofRequest {
                    block: Some(req),
                    ..Default::default()
                })
                .await
                .unwrap();
            max_nodes = max_nodes.max(p.block.as_ref().unwrap().nodes.len());
            reader.verify(&p).await.unwrap();
        }
        assert!(
            max_nodes <= 12,
            "a block proof in a 4096-block log carried {max_nodes} nodes"
        );
        // Neighbours of fetched blocks need fewer nodes: the reader asks only for what it lacks.
        let req = reader.block_request(1).await.unwrap();
        assert_eq!(
            req.nodes, 1,
            "block 1's sibling (block 0) is already verified"
        );
    });
}

#[test]
fn a_sparse_reader_follows_a_fork() {
    block_on(async {
        let writer = writer_with(10_000, 6).await;
        let reader = reader_of(&writer).await;
        let up = writer
            .proof(&ProofRequest {
                upgrade: Some(UpgradeRequest { start: 0 }),
                manifest: true,
                ..Default::default()
            })
            .await
            .unwrap();
        reader.verify(&up).await.unwrap();
        for i in [5u64, 9_990, 9_999] {
            let p = writer
                .proof(&ProofRequest {
                    block: Some(reader.block_request(i).await.unwrap()),
                    ..Default::default()
                })
                .await
                .unwrap();
            reader.verify(&p).await.unwrap();
        }
        writer.truncate(9_997).await.unwrap();
        writer.append(b"fixed").await.unwrap();
        // At the exact fork point the sparse reader lacks its own nodes...
        let exact = ProofRequest {
            fork: reader.fork(),
            upgrade: Some(UpgradeRequest {
                start: reader.length(),
            }),
            ..Default::default()
        };
        let p = writer.proof(&exact).await.unwrap();
        assert!(matches!(
            reader.verify(&p).await,
            Err(Error::Proof(ProofError::MissingAnchor))
        ));
        // ...so it asks again from a boundary of its own roots.
        let p = writer
            .proof(&ProofRequest {
                round_fork_point: true,
                ..exact
            })
            .await
            .unwrap();
        let v = reader.verify(&p).await.unwrap();
        let kept = v.truncated.unwrap();
        assert!((9_984..=9_997).contains(&kept), "kept {kept}");
        assert_eq!((reader.length(), reader.fork()), (9_998, 1));
        assert_eq!(reader.tree_hash(), writer.tree_hash());
        // Data from before the fork point is kept; data after it is dropped.
        assert!(reader.get(5).await.unwrap().is_some());
        assert_eq!(reader.get(9_999 - 2).await.unwrap(), None);
        sync_all(&writer, &reader).await;
        assert_eq!(
            reader.get(9_997).await.unwrap().as_deref(),
            Some(&b"fixed"[..])
        );
    });
}

/// Builds the proofs a pipelining reader would receive: each block request
/// assumes the nodes of the requests before it (as the replication driver
/// does); some answers are corrupted, repeated or interleaved with hash
/// proofs (which take the unbatched path).
async fn pipelined_proofs(writer: &Core, reader: &Core, picks: &[(u64, u8)]) -> Vec<Proof> {
    let n = writer.length();
    let mut assumed = std::collections::HashSet::new();
    let mut out = Vec::new();
    for &(pick, kind) in picks {
        let index = pick % n;
        if kind % 7 == 6 {
            let req = ProofRequest {
                hash: Some(HashRequest {
                    index: 2 * index,
                    nodes: 0,
                }),
                ..Default::default()
            };
            out.push(writer.proof(&req).await.unwrap());
            continue;
        }
        let a = assumed.clone();
        let block = reader
            .block_request_assuming(index, &move |i| a.contains(&i))
            .await
            .unwrap();
        // The nodes this answer proves: the leaf and the path it walks.
        let mut cur = 2 * index;
        assumed.insert(cur);
        for _ in 0..block.nodes {
            assumed.insert(hypercore_rs::flat::sibling(cur));
            cur = hypercore_rs::flat::parent(cur);
            assumed.insert(cur);
        }
        let mut p = writer
            .proof(&ProofRequest {
                block: Some(block),
                ..Default::default()
            })
            .await
            .unwrap();
        if let Some(b) = p.block.as_mut() {
            match kind % 7 {
                0 if !b.value.is_empty() => b.value[0] ^= 1,
                1 if !b.nodes.is_empty() => b.nodes[0].hash[3] ^= 0x40,
                2 => p.fork += 1,
                _ => {}
            }
        }
        if kind % 7 == 3 {
            out.push(p.clone());
        }
        out.push(p);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// `verify_batch` is `verify` applied in order: same result per proof,
    /// same stored blocks and state, with honest, corrupted, repeated and
    /// mixed proofs.
    #[test]
    fn verify_batch_equals_verify_in_order(
        n in 1u64..70,
        picks in proptest::collection::vec((0u64..70, any::<u8>()), 0..40),
    ) {
        block_on(async {
            let writer = writer_with(n, 4).await;
            let seq = reader_of(&writer).await;
            let bat = reader_of(&writer).await;
            let up = ProofRequest {
                upgrade: Some(UpgradeRequest { start: 0 }),
                manifest: true,
                ..Default::default()
            };
            let p = writer.proof(&up).await.unwrap();
            seq.verify(&p).await.unwrap();
            bat.verify(&p).await.unwrap();
            let proofs = pipelined_proofs(&writer, &seq, &picks).await;
            let mut expected = Vec::new();
            for p in &proofs {
                expected.push(seq.verify(p).await);
            }
            let got = bat.verify_batch(proofs).await.unwrap();
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                match (g, e) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    _ => panic!("batch {g:?} != in order {e:?}"),
                }
            }
            assert_eq!(fingerprint(&bat), fingerprint(&seq));
            for i in 0..n {
                assert_eq!(bat.has(i, i + 1).await.unwrap(), seq.has(i, i + 1).await.unwrap());
                if bat.has(i, i + 1).await.unwrap() {
                    assert_eq!(bat.get(i).await.unwrap(), writer.get(i).await.unwrap());
                }
            }
        });
    }
}
