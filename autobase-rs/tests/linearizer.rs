//! Property tests of the sans-IO linearizer against a naive reference: the
//! same nodes give the same order whatever the delivery order, the order is
//! causal, and a committed node never moves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use autobase_rs::linearizer::{HeadRef, Linearizer, NodeId, Presence};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
struct GenNode {
    writer: u32,
    seq: u64,
    heads: Vec<(u32, u64)>, // (writer, length)
    height: u64,
    past: BTreeSet<(u32, u64)>, // inclusive causal past
}

#[derive(Clone, Debug)]
enum Step {
    Write(u32),
    Sync(u32, u32),
}

fn key(w: u32) -> [u8; 32] {
    // Keys not in id order, so tie-breaks by key differ from ids.
    let mut k = [0u8; 32];
    k[0] = (w as u8).wrapping_mul(37).wrapping_add(11);
    k
}

/// Runs a writing process: each writer knows a down-closed set of nodes,
/// writes nodes naming its latest known node of every other writer, and
/// learns from others by syncing.
fn generate(writers: u32, steps: &[Step]) -> Vec<GenNode> {
    let mut nodes: BTreeMap<(u32, u64), GenNode> = BTreeMap::new();
    let mut know: Vec<BTreeMap<u32, u64>> = vec![BTreeMap::new(); writers as usize];
    for s in steps {
        match *s {
            Step::Write(w) => {
                let w = w % writers;
                let seq = know[w as usize].get(&w).copied().unwrap_or(0);
                let mut heads = Vec::new();
                let mut past = BTreeSet::new();
                let mut height = 0;
                if seq > 0 {
                    let p = &nodes[&(w, seq - 1)];
                    past.extend(p.past.iter().copied());
                    height = p.height;
                }
                for (&v, &len) in &know[w as usize] {
                    if v == w || len == 0 || past.contains(&(v, len - 1)) {
                        continue;
                    }
                    let p = &nodes[&(v, len - 1)];
                    past.extend(p.past.iter().copied());
                    height = height.max(p.height);
                    heads.push((v, len));
                }
                past.insert((w, seq));
                let n = GenNode {
                    writer: w,
                    seq,
                    heads,
                    height: height + 1,
                    past,
                };
                // Knowledge stays down-closed.
                for &(v, s) in &n.past {
                    let e = know[w as usize].entry(v).or_insert(0);
                    *e = (*e).max(s + 1);
                }
                nodes.insert((w, seq), n);
            }
            Step::Sync(a, b) => {
                let (a, b) = (a % writers, b % writers);
                let kb = know[b as usize].clone();
                for (v, len) in kb {
                    let e = know[a as usize].entry(v).or_insert(0);
                    *e = (*e).max(len);
                }
            }
        }
    }
    nodes.into_values().collect()
}

/// The reference: with every node known, sort by (estimate, height, key, seq)
/// computed from explicit causal pasts.
fn reference(nodes: &[GenNode], indexers: &[u32]) -> Vec<(u32, u64)> {
    let by: BTreeMap<(u32, u64), &GenNode> = nodes.iter().map(|n| ((n.writer, n.seq), n)).collect();
    let latest = |i: u32| {
        by.range((i, 0)..(i + 1, 0))
            .next_back()
            .map(|(_, n)| n.height)
            .unwrap_or(0)
    };
    let mut keyed = Vec::new();
    for n in nodes {
        let mut est = 0;
        for &i in indexers {
            let ack = by
                .range((i, 0)..(i + 1, 0))
                .map(|(_, m)| *m)
                .find(|m| m.past.contains(&(n.writer, n.seq)))
                .map(|m| m.height)
                .unwrap_or(latest(i) + 1);
            est = est.max(ack);
        }
        keyed.push(((est, n.height, key(n.writer), n.seq), (n.writer, n.seq)));
    }
    keyed.sort();
    keyed.into_iter().map(|k| k.1).collect()
}

fn add(l: &mut Linearizer, n: &GenNode) -> bool {
    let id = l.writer(key(n.writer));
    if l.log_len(id) != n.seq {
        return false;
    }
    let mut heads = Vec::new();
    for &(v, len) in &n.heads {
        let vid = l.writer(key(v));
        let node = NodeId {
            writer: vid,
            seq: len - 1,
        };
        if l.presence(node) == Presence::Absent {
            return false;
        }
        heads.push(HeadRef { node, height: None });
    }
    l.add_node(id, n.seq, &heads, n.height).is_ok()
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0u32..8).prop_map(Step::Write),
            2 => (0u32..8, 0u32..8).prop_map(|(a, b)| Step::Sync(a, b)),
        ],
        1..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn converges_causal_and_final(
        writers in 1u32..6,
        n_indexers in 1u32..4,
        steps in steps(),
        orders in prop::collection::vec(any::<u64>(), 3),
    ) {
        let nodes = generate(writers, &steps);
        let indexers: Vec<u32> = (0..n_indexers.min(writers)).collect();
        let reference = reference(&nodes, &indexers);
        let mut results = Vec::new();
        for seed in orders {
            let mut l = Linearizer::new();
            // Register writers in a delivery-dependent order: ids must not matter.
            let mut pending: Vec<&GenNode> = nodes.iter().collect();
            let mut s = seed | 1;
            let mut rnd = move || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
            for i in (1..pending.len()).rev() {
                let j = (rnd() % (i as u64 + 1)) as usize;
                pending.swap(i, j);
            }
            for i in &indexers { l.writer(key(*i)); }
            let ids: Vec<_> = indexers.iter().map(|i| l.writer_id(&key(*i)).unwrap()).collect();
            l.set_indexers(&ids);
            let mut committed: Vec<(u32, u64)> = Vec::new();
            let mut misses = 0usize;
            while !pending.is_empty() {
                // Deliver one random node; one whose heads are missing waits.
                let i = (rnd() as usize) % pending.len();
                if add(&mut l, pending[i]) {
                    pending.swap_remove(i);
                    misses = 0;
                } else {
                    misses += 1;
                    prop_assert!(misses < 10_000, "delivery stalled");
                    continue;
                }
                // Commit whatever is final now, a random part of it.
                let o = l.order();
                let take = if o.final_len == 0 { 0 } else { (rnd() as usize) % (o.final_len + 1) };
                for id in &o.nodes[..take] {
                    let k = l.key(id.writer).unwrap();
                    committed.push(((0..writers).find(|w| key(*w) == k).unwrap(), id.seq));
                }
                l.commit(&o, take);
            }
            let o = l.order();
            let mut full = committed.clone();
            for id in &o.nodes {
                let k = l.key(id.writer).unwrap();
                full.push(((0..writers).find(|w| key(*w) == k).unwrap(), id.seq));
            }
            // Finality: what was committed is a prefix of the final order.
            prop_assert_eq!(&full[..committed.len()], &committed[..]);
            prop_assert_eq!(&full, &reference);
            // Causality.
            let pos: BTreeMap<_, _> = full.iter().enumerate().map(|(i, n)| (*n, i)).collect();
            for n in &nodes {
                for &(v, s) in &n.past {
                    prop_assert!(pos[&(v, s)] <= pos[&(n.writer, n.seq)]);
                }
            }
            results.push(full);
        }
        prop_assert!(results.windows(2).all(|w| w[0] == w[1]));
    }
}
