//! Criterion benches of autobase-rs: linearizer cost per node with 2, 5 and
//! 20 writers, and reorder cost against the depth of the reordered tail.
#![allow(missing_docs)]

use autobase_rs::linearizer::{HeadRef, Linearizer, NodeId};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn key(i: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&i.to_be_bytes());
    k
}

/// Adds one node for `w` that has seen everything known.
fn write(l: &mut Linearizer, w: u32) {
    let (heads, height) = l.next_heads(w);
    let refs: Vec<HeadRef> = heads
        .iter()
        .map(|&(hw, len)| HeadRef {
            node: NodeId {
                writer: hw,
                seq: len - 1,
            },
            height: None,
        })
        .collect();
    let seq = l.log_len(w);
    if l.add_node(w, seq, &refs, height).is_err() {
        panic!("bench node rejected");
    }
}

/// Round-robin writers, all indexers, each node seeing everything: add a
/// node, order, commit the final prefix (the driver's loop per node).
fn per_node(c: &mut Criterion) {
    let mut g = c.benchmark_group("autobase.linearizer.per_node");
    for writers in [2u32, 5, 20] {
        let nodes = 2000u64;
        g.throughput(Throughput::Elements(nodes));
        g.bench_with_input(
            BenchmarkId::from_parameter(writers),
            &writers,
            |bch, &writers| {
                bch.iter(|| {
                    let mut l = Linearizer::new();
                    let ids: Vec<u32> = (0..writers).map(|i| l.writer(key(i))).collect();
                    l.set_indexers(&ids);
                    for n in 0..nodes {
                        write(&mut l, (n % writers as u64) as u32);
                        let o = l.order();
                        l.commit(&o, o.final_len);
                    }
                    l.committed_count()
                })
            },
        );
    }
    g.finish();
}

/// Two indexers write `depth` nodes each without seeing each other; then
/// they merge: the cost of ordering the merged tail (what a reorder of that
/// depth costs the linearizer).
fn reorder(c: &mut Criterion) {
    let mut g = c.benchmark_group("autobase.linearizer.reorder");
    for depth in [10u64, 100, 1000] {
        g.throughput(Throughput::Elements(2 * depth));
        g.bench_with_input(BenchmarkId::from_parameter(depth), &depth, |bch, &depth| {
            bch.iter(|| {
                let mut l = Linearizer::new();
                let a = l.writer(key(0));
                let b = l.writer(key(1));
                l.set_indexers(&[a, b]);
                for seq in 0..depth {
                    if l.add_node(a, seq, &[], seq + 1).is_err()
                        || l.add_node(b, seq, &[], seq + 1).is_err()
                    {
                        panic!("bench node rejected");
                    }
                }
                write(&mut l, a);
                let o = l.order();
                o.nodes.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, per_node, reorder);
criterion_main!(benches);
