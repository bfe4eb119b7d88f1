//! Whatever a peer sends (random frames, or well-formed messages in random
//! order with random fields), a replication session ends with `Ok` or a typed
//! error: it never panics, never hangs once the peer hangs up, and never
//! changes what the local core holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::SinkExt;
use hypercore_rs::replication::{duplex, wire, wire::Message, ReplicateOptions};
use hypercore_rs::{
    BlockProof, BlockRequest, Core, KeyPair, MemoryStorage, Node, Proof, ProofRequest,
    SeededEntropy, UpgradeProof, UpgradeRequest,
};
use proptest::prelude::*;
use std::sync::Arc;

fn message() -> impl Strategy<Value = Message> {
    let ch = 0u32..3;
    let node = (0u64..64, 0u64..100, any::<[u8; 32]>()).prop_map(|(index, size, hash)| Node {
        index,
        size,
        hash,
    });
    let proof = (
        0u64..2,
        proptest::option::of((
            0u64..40,
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(node.clone(), 0..4),
        )),
        proptest::option::of((0u64..40, 0u64..80, proptest::collection::vec(node, 0..4))),
    )
        .prop_map(|(fork, block, upgrade)| Proof {
            fork,
            block: block.map(|(index, value, nodes)| BlockProof {
                index,
                value,
                nodes,
            }),
            upgrade: upgrade.map(|(start, length, nodes)| UpgradeProof {
                start,
                length,
                nodes,
                signature: Default::default(),
            }),
            ..Default::default()
        });
    prop_oneof![
        any::<[u8; 32]>().prop_map(|nonce| Message::Hello { nonce }),
        (ch.clone(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
            |(channel, discovery_key, capability)| Message::Open {
                channel,
                discovery_key,
                capability
            }
        ),
        ch.clone().prop_map(|channel| Message::Reject { channel }),
        ch.clone().prop_map(|channel| Message::Close { channel }),
        (ch.clone(), 0u64..3, 0u64..100).prop_map(|(channel, fork, length)| Message::Sync {
            channel,
            fork,
            length
        }),
        (ch.clone(), 0u64..5, 0u64..40, 0u64..5, any::<bool>()).prop_map(
            |(channel, id, index, nodes, up)| Message::Request {
                channel,
                id,
                request: Box::new(ProofRequest {
                    block: Some(BlockRequest { index, nodes }),
                    upgrade: up.then_some(UpgradeRequest { start: 0 }),
                    ..Default::default()
                })
            }
        ),
        (ch.clone(), 0u64..5, proof).prop_map(|(channel, id, proof)| Message::Data {
            channel,
            id,
            proof: Box::new(proof)
        }),
        (ch.clone(), 0u64..5).prop_map(|(channel, id)| Message::NoData { channel, id }),
        (ch.clone(), 0u64..50, 0u64..1_000_000).prop_map(|(channel, start, length)| {
            Message::Want {
                channel,
                start,
                length,
            }
        }),
        (
            ch.clone(),
            any::<bool>(),
            proptest::collection::vec((0u64..100, 0u64..100), 0..5)
        )
            .prop_map(|(channel, drop, ranges)| Message::Have {
                channel,
                drop,
                ranges
            }),
        (
            ch,
            "[a-z]{0,8}",
            proptest::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(channel, name, message)| Message::Extension {
                channel,
                name,
                message
            }),
    ]
}

fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        proptest::collection::vec(message().prop_map(|m| wire::encode(&m)), 0..12),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..6),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_peer_input_ends_cleanly(frames in frames(), hello_first: bool, writable: bool, insider: bool) {
        futures::executor::block_on(async {
            let writer = Core::builder(Arc::new(MemoryStorage::new()))
                .key_pair(KeyPair::from_seed([1; 32]))
                .open()
                .await
                .unwrap();
            writer.append_batch([b"a", b"b", b"c"]).await.unwrap();
            let core = if writable {
                writer.clone()
            } else {
                Core::builder(Arc::new(MemoryStorage::new())).key(writer.key()).open().await.unwrap()
            };
            let before = (core.length(), core.fork(), core.tree_hash(), core.contiguous_length());
            let (mut x, y) = duplex();
            if hello_first || insider {
                x.send(wire::encode(&Message::Hello { nonce: [7; 32] })).await.unwrap();
            }
            if insider {
                // A peer that knows the key: a valid open, then anything.
                use hypercore_rs::Entropy;
                let mut ours = [0u8; 32];
                SeededEntropy::new(3).fill(&mut ours).unwrap();
                let session = wire::session_secret(None, &[7; 32], &ours);
                let capability = wire::capability(&core.key(), &session, true);
                x.send(wire::encode(&Message::Open {
                    channel: 0,
                    discovery_key: core.discovery_key(),
                    capability,
                }))
                .await
                .unwrap();
            }
            for f in frames {
                x.send(f).await.unwrap();
            }
            // Close only our sending side: the session still gets to answer
            // (its frames pile up unread), so it processes everything we sent.
            x.close().await.unwrap();
            let mut o = ReplicateOptions::new(false);
            o.entropy = Arc::new(SeededEntropy::new(3));
            // Ends by itself: the peer has hung up.
            let _ = core.replicate(y, o).await;
            drop(x);
            let after = (core.length(), core.fork(), core.tree_hash(), core.contiguous_length());
            assert_eq!(before, after, "a hostile peer changed the core");
        });
    }
}

/// The insider path above really opens the channel: a request is answered.
#[test]
fn the_insider_open_is_accepted() {
    use futures::StreamExt;
    use hypercore_rs::Entropy;
    futures::executor::block_on(async {
        let core = Core::builder(Arc::new(MemoryStorage::new()))
            .key_pair(KeyPair::from_seed([1; 32]))
            .open()
            .await
            .unwrap();
        core.append_batch([b"a", b"b"]).await.unwrap();
        let (mut x, y) = duplex();
        let mut ours = [0u8; 32];
        SeededEntropy::new(3).fill(&mut ours).unwrap();
        let session = wire::session_secret(None, &[7; 32], &ours);
        for m in [
            Message::Hello { nonce: [7; 32] },
            Message::Open {
                channel: 0,
                discovery_key: core.discovery_key(),
                capability: wire::capability(&core.key(), &session, true),
            },
            Message::Request {
                channel: 0,
                id: 0,
                request: Box::new(ProofRequest {
                    block: Some(BlockRequest { index: 1, nodes: 1 }),
                    ..Default::default()
                }),
            },
        ] {
            x.send(wire::encode(&m)).await.unwrap();
        }
        x.close().await.unwrap();
        let mut o = ReplicateOptions::new(false);
        o.entropy = Arc::new(SeededEntropy::new(3));
        core.replicate(y, o).await.unwrap();
        let mut got_data = false;
        while let Some(Ok(f)) = x.next().await {
            if let Ok(Message::Data { proof, .. }) = wire::decode(&f) {
                got_data = proof.block.is_some_and(|b| b.value == b"b");
            }
        }
        assert!(
            got_data,
            "the request on the insider's channel was not answered"
        );
    });
}
