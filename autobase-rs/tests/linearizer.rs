//! Property tests of the sans-IO linearizer: the same nodes give the same
//! order and the same committed prefix whatever the delivery order, the order
//! is causal, a committed node never moves, and a majority of indexers that
//! keep exchanging nodes always commits.
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

fn add(l: &mut Linearizer, n: &GenNode, heights: &BTreeMap<(u32, u64), u64>) -> bool {
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
        let height = match l.presence(node) {
            Presence::Absent => return false,
            Presence::Present => None,
            // Committed and dropped from memory: the driver reads its height
            // from the block; here the generator knows it.
            Presence::Pruned => Some(heights[&(v, len - 1)]),
        };
        heads.push(HeadRef { node, height });
    }
    l.add_node(id, n.seq, &heads, n.height).is_ok()
}

fn cases(default: u32) -> u32 {
    std::env::var("AB_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0u32..8).prop_map(Step::Write),
            2 => (0u32..8, 0u32..8).prop_map(|(a, b)| Step::Sync(a, b)),
        ],
        1..160,
    )
}

proptest! {
    // AB_CASES=5000 for a longer run.
    #![proptest_config(ProptestConfig { cases: cases(200), ..ProptestConfig::default() })]

    #[test]
    fn converges_causal_and_final(
        writers in 1u32..7,
        n_indexers in 1u32..6,
        steps in steps(),
        orders in prop::collection::vec(any::<u64>(), 3),
    ) {
        let nodes = generate(writers, &steps);
        let indexers: Vec<u32> = (0..n_indexers.min(writers)).collect();
        let heights: BTreeMap<(u32, u64), u64> = nodes.iter().map(|n| ((n.writer, n.seq), n.height)).collect();
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
            // Writer ids follow first sight, which differs per delivery.
            let mut first_seen: Vec<u32> = (0..writers).collect();
            for i in (1..first_seen.len()).rev() {
                let j = (rnd() % (i as u64 + 1)) as usize;
                first_seen.swap(i, j);
            }
            for w in &first_seen { l.writer(key(*w)); }
            let ids: Vec<_> = indexers.iter().map(|i| l.writer_id(&key(*i)).unwrap()).collect();
            l.set_indexers(&ids);
            let mut committed: Vec<(u32, u64)> = Vec::new();
            let mut misses = 0usize;
            while !pending.is_empty() {
                // Deliver one random node; one whose heads are missing waits.
                let i = (rnd() as usize) % pending.len();
                if add(&mut l, pending[i], &heights) {
                    pending.swap_remove(i);
                    misses = 0;
                } else {
                    misses += 1;
                    prop_assert!(misses < 10_000, "delivery stalled");
                    continue;
                }
                // Commit whatever is final now (the driver does the same;
                // it stops early only at indexer changes, the same on every peer).
                loop {
                    let o = l.order();
                    let take = o.final_len;
                    if take == 0 {
                        break;
                    }
                    for id in &o.nodes[..take] {
                        let k = l.key(id.writer).unwrap();
                        committed.push(((0..writers).find(|w| key(*w) == k).unwrap(), id.seq));
                    }
                    l.commit(&o, take);
                }
            }
            let o = l.order();
            let mut full = committed.clone();
            for id in &o.nodes {
                let k = l.key(id.writer).unwrap();
                full.push(((0..writers).find(|w| key(*w) == k).unwrap(), id.seq));
            }
            // Finality: what was committed is a prefix of the final order.
            prop_assert_eq!(&full[..committed.len()], &committed[..]);
            // Causality.
            let pos: BTreeMap<_, _> = full.iter().enumerate().map(|(i, n)| (*n, i)).collect();
            for n in &nodes {
                for &(v, s) in &n.past {
                    prop_assert!(pos[&(v, s)] <= pos[&(n.writer, n.seq)]);
                }
            }
            results.push((full, committed.len()));
        }
        // Every delivery order gives the same order; the committed prefixes
        // differ in length only.
        prop_assert!(results.windows(2).all(|w| w[0].0 == w[1].0));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A majority of indexers that keep writing and syncing commits every
    /// node written before, while the rest stay silent.
    #[test]
    fn a_majority_commits(n_indexers in 1u32..6, silent in 0u32..3, writes in 1usize..6) {
        let silent = silent.min(n_indexers - (n_indexers / 2 + 1));
        let active: Vec<u32> = (silent..n_indexers).collect();
        let mut steps = Vec::new();
        // Everyone writes a few values, then the active ones keep acking with
        // full syncs (as the driver's acks do).
        for w in &active {
            for _ in 0..writes {
                steps.push(Step::Write(*w));
            }
        }
        for _ in 0..8 {
            for a in &active {
                for b in &active {
                    steps.push(Step::Sync(*a, *b));
                }
            }
            for w in &active {
                steps.push(Step::Write(*w));
            }
        }
        let nodes = generate(n_indexers, &steps);
        let heights: BTreeMap<(u32, u64), u64> = nodes.iter().map(|n| ((n.writer, n.seq), n.height)).collect();
        let mut l = Linearizer::new();
        let ids: Vec<_> = (0..n_indexers).map(|i| l.writer(key(i))).collect();
        l.set_indexers(&ids);
        let mut pending: Vec<&GenNode> = nodes.iter().collect();
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|n| !add(&mut l, n, &heights));
            prop_assert!(pending.len() < before);
        }
        loop {
            let o = l.order();
            if o.final_len == 0 { break; }
            l.commit(&o, o.final_len);
        }
        // The values were written first: all of them are committed.
        let committed_values = active.len() * writes;
        prop_assert!(l.committed_count() as usize >= committed_values,
            "committed {} of {} values", l.committed_count(), committed_values);
    }
}

/// Appends a node of `w` naming everything its linearizer holds.
fn write_all(l: &mut Linearizer, w: u32) {
    let (heads, height) = l.next_heads(w);
    let seq = l.log_len(w);
    let refs: Vec<HeadRef> = heads
        .iter()
        .map(|&(v, len)| HeadRef {
            node: NodeId {
                writer: v,
                seq: len - 1,
            },
            height: None,
        })
        .collect();
    l.add_node(w, seq, &refs, height).unwrap();
}

/// The bound of the forking-indexer rule (DESIGN.md, "A forking indexer"):
/// with majority quorums, one indexer that shows one fork to some honest
/// indexers and another fork to the rest makes both sides commit its forked
/// nodes, before the two sides ever exchange a node, exactly when the
/// number of indexers is odd (3, 5): then the honest indexers split into two
/// groups that each make a majority with the liar. With an even number (4,
/// 6) the smaller side never commits: two majorities share an honest
/// indexer, who holds one fork only. No rule applied when the sides meet can
/// undo a commit, so the bound is on the quorum, not on the rule.
#[test]
fn one_forking_indexer_splits_majorities_only_with_an_odd_count() {
    for n in 3u32..=6 {
        let q = n / 2 + 1;
        let liar = n - 1;
        let honest: Vec<u32> = (0..liar).collect();
        // The side that can commit with the liar, and the rest.
        let (a, b) = honest.split_at((q - 1) as usize);
        let run = |group: &[u32]| {
            let mut l = Linearizer::new();
            for w in 0..n {
                l.writer(key(w));
            }
            l.set_indexers(&(0..n).collect::<Vec<_>>());
            for _ in 0..12 {
                for &w in group.iter().chain(std::iter::once(&liar)) {
                    write_all(&mut l, w);
                }
                let o = l.order();
                l.commit(&o, o.final_len);
            }
            l.committed_len(liar)
        };
        let (ca, cb) = (run(a), run(b));
        assert!(ca > 0, "n = {n}: the side of {a:?} commits with the liar");
        if n % 2 == 1 {
            assert!(
                cb > 0,
                "n = {n}: the side of {b:?} commits the liar's other fork too"
            );
        } else {
            assert_eq!(cb, 0, "n = {n}: {b:?} and the liar are no majority");
        }
    }
}
