//! A bounded cache of decoded nodes, shared by every snapshot of a bee.
//!
//! Two generations: new and recently used nodes go into the young map; when
//! it holds half the budget it becomes the old map (the previous old map is
//! dropped). A hit in the old map promotes the node. O(1) per operation, no
//! linked lists, and never more than the budget plus two nodes in memory.
//! Nodes are immutable (a pointer names the same bytes forever), so a cache
//! can never serve stale data.

use crate::node::{Node, Ptr};
use hypercore_rs::fast_hash::FastMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Default)]
struct Generations {
    young: FastMap<Ptr, Arc<Node>>,
    old: FastMap<Ptr, Arc<Node>>,
    young_bytes: usize,
}

pub(crate) struct NodeCache {
    budget: usize,
    inner: Mutex<Generations>,
}

impl NodeCache {
    pub(crate) fn new(budget: usize) -> Self {
        NodeCache {
            budget,
            inner: Mutex::new(Generations::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Generations> {
        // The maps are consistent at every point a panic could occur.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, ptr: &Ptr) -> Option<Arc<Node>> {
        let mut g = self.lock();
        if let Some(n) = g.young.get(ptr) {
            return Some(n.clone());
        }
        let n = g.old.remove(ptr)?;
        Self::put(&mut g, self.budget, *ptr, n.clone());
        Some(n)
    }

    pub(crate) fn insert(&self, ptr: Ptr, node: Arc<Node>) {
        let mut g = self.lock();
        Self::put(&mut g, self.budget, ptr, node);
    }

    /// Forgets nodes that the head no longer references (a flush rewrote
    /// them): they stay readable from storage for old checkouts, and the
    /// budget goes to nodes the next writes and reads will use.
    pub(crate) fn remove_superseded(&self, ptrs: &[Ptr]) {
        let mut g = self.lock();
        for p in ptrs {
            if let Some(n) = g.young.remove(p) {
                g.young_bytes = g.young_bytes.saturating_sub(n.weight());
            } else {
                g.old.remove(p);
            }
        }
    }

    fn put(g: &mut Generations, budget: usize, ptr: Ptr, node: Arc<Node>) {
        let w = node.weight();
        if w > budget / 2 {
            return;
        }
        if g.young.insert(ptr, node).is_none() {
            g.young_bytes += w;
        }
        if g.young_bytes > budget / 2 {
            g.old = std::mem::take(&mut g.young);
            g.young_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_hot_nodes() {
        let c = NodeCache::new(64 * 1024);
        let hot = Ptr { seq: 0, slot: 0 };
        c.insert(hot, Arc::new(Node::leaf()));
        for i in 1..10_000u64 {
            c.insert(Ptr { seq: i, slot: 0 }, Arc::new(Node::leaf()));
            assert!(c.get(&hot).is_some());
            let g = c.lock();
            let total: usize = g
                .young
                .values()
                .chain(g.old.values())
                .map(|n| n.weight())
                .sum();
            assert!(total <= 64 * 1024 + 2 * Node::leaf().weight());
        }
        assert!(c.get(&Ptr { seq: 1, slot: 0 }).is_none());
    }

    #[test]
    fn superseded_nodes_are_forgotten_and_their_budget_returned() {
        let c = NodeCache::new(64 * 1024);
        let a = Ptr { seq: 1, slot: 0 };
        let b = Ptr { seq: 2, slot: 3 };
        c.insert(a, Arc::new(Node::leaf()));
        c.insert(b, Arc::new(Node::leaf()));
        c.remove_superseded(&[a, Ptr { seq: 9, slot: 9 }]);
        assert!(c.get(&a).is_none());
        assert!(c.get(&b).is_some());
        assert_eq!(c.lock().young_bytes, Node::leaf().weight());
    }
}
