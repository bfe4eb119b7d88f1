//! The linearizer: a causal DAG of writer nodes turned into one total order,
//! with a final (indexed) prefix and an optimistic tail.
//!
//! Plain synchronous state, no I/O: the driver feeds nodes in, asks for the
//! order, and commits the final prefix. It must never depend on arrival order:
//! the same set of nodes always gives the same order, and a committed node's
//! position never moves.
//!
//! # The order
//!
//! Every node has a height: 1 + the largest height of its parents (its own
//! previous node and the heads it names). For an indexer `i`, the ack of a
//! node `n` is `i`'s first node whose causal past contains `n` (an indexer's
//! own node acks itself). The sort key of an uncommitted node is
//! `(estimate, height, writer key, seq)`, where `estimate` is the largest
//! height over the indexers' acks, using `height(latest node of i) + 1` for an
//! indexer that has not acked it yet (a lower bound: any later node of `i` is
//! higher than its latest). The key is causal (a parent never sorts after its
//! child), and once every indexer has acked a node its estimate is exact.
//!
//! A node is final when every indexer has acked it and its estimate is below
//! `F`, the smallest estimate any node could still get: the smallest lower
//! bound over nodes not yet acked by every indexer, and `1 + the largest
//! latest height` for nodes not known yet (their acks are all in the future).
//! Final nodes form a prefix of the sorted order, and new nodes can only sort
//! after them, so committing that prefix is safe on every peer.
//!
//! The rule needs an ack from every current indexer (for one or two indexers
//! that is a majority): a silent indexer stalls finality, never the tail.
//! See DESIGN.md.

use std::collections::{BTreeSet, HashMap};

/// A writer's number inside one linearizer (dense, in order of first sight).
pub type WriterId = u32;

/// One node: a writer and a position in its input core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// The writer.
    pub writer: WriterId,
    /// Position in the writer's input core.
    pub seq: u64,
}

/// Why a node could not be added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinearizeError {
    /// The writer id is not registered.
    #[error("unknown writer {0}")]
    UnknownWriter(WriterId),
    /// Nodes of a writer must be added in sequence.
    #[error("expected seq {expected} of writer {writer}, got {got}")]
    OutOfOrder {
        /// The writer.
        writer: WriterId,
        /// The next seq it accepts.
        expected: u64,
        /// The seq given.
        got: u64,
    },
    /// A head is not known yet (may arrive later).
    #[error("head {0:?} is not known yet")]
    Missing(NodeId),
    /// The node is invalid whatever arrives later (same answer on every peer).
    #[error("invalid node: {0}")]
    Invalid(&'static str),
}

/// A head as given to [`Linearizer::add_node`]: the referenced node, and its
/// height when it is below the writer's in-memory window (committed before a
/// restart); `None` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadRef {
    /// The referenced node.
    pub node: NodeId,
    /// Its height, needed only when [`Linearizer::presence`] says `Pruned`.
    pub height: Option<u64>,
}

/// Whether a node is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// In memory.
    Present,
    /// Committed before this linearizer was built: its height must be given.
    Pruned,
    /// Not known.
    Absent,
}

#[derive(Clone, Debug)]
struct LNode {
    clock: Vec<u64>,
    height: u64,
}

#[derive(Clone, Debug)]
struct Log {
    key: [u8; 32],
    /// First seq held in memory (everything below was committed earlier).
    offset: u64,
    nodes: Vec<LNode>,
    /// Nodes `[0, committed)` are committed.
    committed: u64,
    /// Height of node `committed - 1` (0 when none).
    committed_height: u64,
}

impl Log {
    fn len(&self) -> u64 {
        self.offset + self.nodes.len() as u64
    }
    fn get(&self, seq: u64) -> Option<&LNode> {
        seq.checked_sub(self.offset)
            .and_then(|i| self.nodes.get(usize::try_from(i).ok()?))
    }
    fn latest_height(&self) -> u64 {
        self.nodes
            .last()
            .map(|n| n.height)
            .unwrap_or(self.committed_height)
    }
}

/// The order computed by [`Linearizer::order`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Order {
    /// Every uncommitted node, in order (they follow the committed nodes).
    pub nodes: Vec<NodeId>,
    /// How many leading nodes of `nodes` are final.
    pub final_len: usize,
}

/// A persisted summary of one writer, enough to rebuild a linearizer that
/// continues after its committed prefix without replaying history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WriterCheckpoint {
    /// The writer's key.
    pub key: [u8; 32],
    /// Committed length.
    pub committed: u64,
    /// Height of its last committed node (0 when none).
    pub committed_height: u64,
}

/// The sans-IO linearizer.
#[derive(Clone, Debug, Default)]
pub struct Linearizer {
    logs: Vec<Log>,
    by_key: HashMap<[u8; 32], WriterId>,
    indexers: Vec<WriterId>,
    uncommitted: BTreeSet<NodeId>,
    committed_count: u64,
}

impl Linearizer {
    /// An empty linearizer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A linearizer that continues after a committed prefix.
    pub fn from_checkpoint(writers: &[WriterCheckpoint], committed_count: u64) -> Self {
        let mut l = Self::new();
        for w in writers {
            let id = l.writer(w.key);
            let log = &mut l.logs[id as usize];
            log.offset = w.committed;
            log.committed = w.committed;
            log.committed_height = w.committed_height;
        }
        l.committed_count = committed_count;
        l
    }

    /// The summary to persist with the committed prefix.
    pub fn checkpoint(&self) -> Vec<WriterCheckpoint> {
        self.logs
            .iter()
            .map(|l| WriterCheckpoint {
                key: l.key,
                committed: l.committed,
                committed_height: l.committed_height,
            })
            .collect()
    }

    /// The id of `key`, registering it on first sight.
    pub fn writer(&mut self, key: [u8; 32]) -> WriterId {
        if let Some(id) = self.by_key.get(&key) {
            return *id;
        }
        let id = self.logs.len() as WriterId;
        self.logs.push(Log {
            key,
            offset: 0,
            nodes: Vec::new(),
            committed: 0,
            committed_height: 0,
        });
        self.by_key.insert(key, id);
        id
    }

    /// The id of `key` if registered.
    pub fn writer_id(&self, key: &[u8; 32]) -> Option<WriterId> {
        self.by_key.get(key).copied()
    }

    /// The key of writer `id`.
    pub fn key(&self, id: WriterId) -> Option<[u8; 32]> {
        self.logs.get(id as usize).map(|l| l.key)
    }

    /// Number of registered writers.
    pub fn writer_count(&self) -> usize {
        self.logs.len()
    }

    /// Length of writer `id`'s known log (committed, pruned or in memory).
    pub fn log_len(&self, id: WriterId) -> u64 {
        self.logs.get(id as usize).map(|l| l.len()).unwrap_or(0)
    }

    /// Committed length of writer `id`.
    pub fn committed_len(&self, id: WriterId) -> u64 {
        self.logs.get(id as usize).map(|l| l.committed).unwrap_or(0)
    }

    /// Total number of committed nodes.
    pub fn committed_count(&self) -> u64 {
        self.committed_count
    }

    /// Number of known, uncommitted nodes.
    pub fn uncommitted_count(&self) -> usize {
        self.uncommitted.len()
    }

    /// Sets the indexers used for finality (ids; unknown ones are ignored).
    pub fn set_indexers(&mut self, indexers: &[WriterId]) {
        let mut v: Vec<WriterId> = indexers
            .iter()
            .copied()
            .filter(|i| (*i as usize) < self.logs.len())
            .collect();
        v.sort_unstable();
        v.dedup();
        self.indexers = v;
    }

    /// The indexers used for finality.
    pub fn indexers(&self) -> &[WriterId] {
        &self.indexers
    }

    /// Whether `node` is held.
    pub fn presence(&self, node: NodeId) -> Presence {
        match self.logs.get(node.writer as usize) {
            None => Presence::Absent,
            Some(l) if node.seq < l.offset => Presence::Pruned,
            Some(l) if node.seq < l.len() => Presence::Present,
            Some(_) => Presence::Absent,
        }
    }

    /// Height of a node held in memory.
    pub fn height(&self, node: NodeId) -> Option<u64> {
        self.logs
            .get(node.writer as usize)?
            .get(node.seq)
            .map(|n| n.height)
    }

    /// Whether node `a` is in the causal past of node `b` (or is `b`).
    pub fn sees(&self, b: NodeId, a: NodeId) -> bool {
        let Some(nb) = self.logs.get(b.writer as usize).and_then(|l| l.get(b.seq)) else {
            return false;
        };
        nb.clock.get(a.writer as usize).copied().unwrap_or(0) > a.seq
    }

    /// Height the next node of `writer` would have with `heads`, and the heads
    /// that are worth naming: for every other writer its latest known node,
    /// unless the writer's own latest node or another named head already
    /// covers it. Returns `(heads as (writer, length), height)`.
    pub fn next_heads(&self, writer: WriterId) -> (Vec<(WriterId, u64)>, u64) {
        let own = self.logs.get(writer as usize);
        let own_clock = own.and_then(|l| l.nodes.last()).map(|n| n.clock.as_slice());
        let covered = |clock: Option<&[u64]>, w: usize, len: u64| {
            clock.and_then(|c| c.get(w)).copied().unwrap_or(0) >= len
        };
        let mut cands: Vec<(WriterId, u64)> = Vec::new();
        for (w, log) in self.logs.iter().enumerate() {
            if w as WriterId == writer || log.len() == 0 {
                continue;
            }
            // Only in-memory latest nodes: a pruned one is committed, and
            // naming it adds nothing (its past is committed too).
            if log.nodes.is_empty() {
                continue;
            }
            if !covered(own_clock, w, log.len()) {
                cands.push((w as WriterId, log.len()));
            }
        }
        let heads: Vec<(WriterId, u64)> = cands
            .iter()
            .copied()
            .filter(|&(w, len)| {
                !cands.iter().any(|&(o, olen)| {
                    o != w
                        && self
                            .logs
                            .get(o as usize)
                            .and_then(|l| l.get(olen - 1))
                            .map(|n| covered(Some(&n.clock), w as usize, len))
                            .unwrap_or(false)
                })
            })
            .collect();
        let mut height = own.map(|l| l.latest_height()).unwrap_or(0);
        for &(w, len) in &heads {
            if let Some(h) = self.logs.get(w as usize).and_then(|l| l.get(len - 1)) {
                height = height.max(h.height);
            }
        }
        (heads, height + 1)
    }

    /// Adds node `seq` of `writer` naming `heads` (other writers' nodes it
    /// had seen), with its claimed `height`. The node's own previous node is
    /// an implicit parent.
    pub fn add_node(
        &mut self,
        writer: WriterId,
        seq: u64,
        heads: &[HeadRef],
        height: u64,
    ) -> Result<(), LinearizeError> {
        let log = self
            .logs
            .get(writer as usize)
            .ok_or(LinearizeError::UnknownWriter(writer))?;
        if seq != log.len() {
            return Err(LinearizeError::OutOfOrder {
                writer,
                expected: log.len(),
                got: seq,
            });
        }
        let n = self.logs.len();
        let mut clock = vec![0u64; n];
        let mut max_h = 0u64;
        let frontier: Vec<u64> = self.logs.iter().map(|l| l.committed).collect();
        let merge = |clock: &mut Vec<u64>, c: &[u64]| {
            for (i, v) in c.iter().enumerate() {
                if clock[i] < *v {
                    clock[i] = *v;
                }
            }
        };
        if seq > 0 {
            match log.get(seq - 1) {
                Some(p) => {
                    merge(&mut clock, &p.clock);
                    max_h = p.height;
                }
                None => {
                    // Pruned own previous node: committed, so the committed
                    // frontier over-approximates its past harmlessly (it only
                    // covers committed nodes).
                    merge(&mut clock, &frontier);
                    max_h = log.committed_height;
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for h in heads {
            if h.node.writer == writer {
                return Err(LinearizeError::Invalid("a head names its own writer"));
            }
            if !seen.insert(h.node.writer) {
                return Err(LinearizeError::Invalid("two heads name one writer"));
            }
            match self.presence(h.node) {
                Presence::Absent => return Err(LinearizeError::Missing(h.node)),
                Presence::Present => {
                    let p = self.logs[h.node.writer as usize]
                        .get(h.node.seq)
                        .ok_or(LinearizeError::Missing(h.node))?;
                    merge(&mut clock, &p.clock);
                    max_h = max_h.max(p.height);
                }
                Presence::Pruned => {
                    let ph = h.height.ok_or(LinearizeError::Missing(h.node))?;
                    merge(&mut clock, &frontier);
                    max_h = max_h.max(ph);
                }
            }
        }
        if height != max_h + 1 {
            return Err(LinearizeError::Invalid(
                "height is not 1 + the parents' largest",
            ));
        }
        clock[writer as usize] = seq + 1;
        self.logs[writer as usize]
            .nodes
            .push(LNode { clock, height });
        self.uncommitted.insert(NodeId { writer, seq });
        Ok(())
    }

    /// The acking height of `node` by indexer `i`, if `i` has acked it.
    fn ack(&self, i: WriterId, node: NodeId, node_height: u64) -> Option<u64> {
        if i == node.writer {
            return Some(node_height);
        }
        let log = self.logs.get(i as usize)?;
        let w = node.writer as usize;
        let pos = log
            .nodes
            .partition_point(|n| n.clock.get(w).copied().unwrap_or(0) <= node.seq);
        log.nodes.get(pos).map(|n| n.height)
    }

    /// Orders every uncommitted node and says how many lead as final.
    pub fn order(&self) -> Order {
        let latest: Vec<u64> = self
            .indexers
            .iter()
            .map(|&i| self.logs[i as usize].latest_height())
            .collect();
        let unknown_bound = latest.iter().max().map(|m| m + 1).unwrap_or(0);
        let mut bound = unknown_bound;
        let mut keyed: Vec<(u64, u64, [u8; 32], u64, bool, NodeId)> =
            Vec::with_capacity(self.uncommitted.len());
        for &id in &self.uncommitted {
            let log = &self.logs[id.writer as usize];
            let h = log.get(id.seq).map(|n| n.height).unwrap_or(0);
            let mut est = 0u64;
            let mut complete = true;
            for (k, &i) in self.indexers.iter().enumerate() {
                let v = match self.ack(i, id, h) {
                    Some(v) => v,
                    None => {
                        complete = false;
                        latest[k] + 1
                    }
                };
                est = est.max(v);
            }
            if self.indexers.is_empty() {
                complete = false;
            }
            if !complete {
                bound = bound.min(est);
            }
            keyed.push((est, h, log.key, id.seq, complete, id));
        }
        keyed.sort_unstable_by_key(|a| (a.0, a.1, a.2, a.3));
        let final_len = if self.indexers.is_empty() {
            0
        } else {
            keyed.iter().take_while(|k| k.4 && k.0 < bound).count()
        };
        Order {
            nodes: keyed.into_iter().map(|k| k.5).collect(),
            final_len,
        }
    }

    /// Commits the first `n` nodes of `order` (which must be the latest
    /// [`Linearizer::order`] with `n <= final_len`).
    pub fn commit(&mut self, order: &Order, n: usize) {
        for id in order.nodes.iter().take(n.min(order.final_len)) {
            if !self.uncommitted.remove(id) {
                continue;
            }
            let log = &mut self.logs[id.writer as usize];
            let h = log.get(id.seq).map(|n| n.height).unwrap_or(0);
            log.committed = log.committed.max(id.seq + 1);
            log.committed_height = h;
            self.committed_count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key(i: u8) -> [u8; 32] {
        [i; 32]
    }

    /// Appends a node for `w` that has seen everything known.
    fn write(l: &mut Linearizer, w: WriterId) -> NodeId {
        let (heads, height) = l.next_heads(w);
        let seq = l.log_len(w);
        let hr: Vec<HeadRef> = heads
            .iter()
            .map(|&(w, len)| HeadRef {
                node: NodeId {
                    writer: w,
                    seq: len - 1,
                },
                height: None,
            })
            .collect();
        l.add_node(w, seq, &hr, height).unwrap();
        NodeId { writer: w, seq }
    }

    #[test]
    fn single_indexer_commits_its_own_nodes() {
        let mut l = Linearizer::new();
        let a = l.writer(key(1));
        l.set_indexers(&[a]);
        let n0 = write(&mut l, a);
        let o = l.order();
        // The node is acked by its writer, and nothing unknown can go below.
        assert_eq!(o.nodes, vec![n0]);
        assert_eq!(o.final_len, 1);
    }

    #[test]
    fn two_indexers_need_two_rounds() {
        let mut l = Linearizer::new();
        let a = l.writer(key(1));
        let b = l.writer(key(2));
        l.set_indexers(&[a, b]);
        let a0 = write(&mut l, a);
        assert_eq!(l.order().final_len, 0);
        write(&mut l, b); // b acks a0
        assert_eq!(l.order().final_len, 0);
        write(&mut l, a); // a acks b's ack
        let o = l.order();
        assert!(o.final_len >= 1);
        assert_eq!(o.nodes[0], a0);
    }

    fn head(writer: WriterId, seq: u64) -> HeadRef {
        HeadRef {
            node: NodeId { writer, seq },
            height: None,
        }
    }

    #[test]
    fn a_node_at_the_bound_is_not_final() {
        // A0 and B0 concurrent; A1 sees B0; B1 (not yet known) sees only A0.
        let mut l = Linearizer::new();
        let a = l.writer(key(1));
        let b = l.writer(key(2));
        l.set_indexers(&[a, b]);
        l.add_node(a, 0, &[], 1).unwrap();
        l.add_node(b, 0, &[], 1).unwrap();
        l.add_node(a, 1, &[head(b, 0)], 2).unwrap();
        // B0 is acked by both, but A0 may still get the same estimate and
        // sort first (its key is smaller): B0 must not be final yet.
        assert_eq!(l.order().final_len, 0);
        l.add_node(b, 1, &[head(a, 0)], 2).unwrap();
        let o = l.order();
        assert_eq!(o.nodes[0], NodeId { writer: a, seq: 0 });
        assert_eq!(o.nodes[1], NodeId { writer: b, seq: 0 });
    }

    #[test]
    fn missing_and_invalid_heads() {
        let mut l = Linearizer::new();
        let a = l.writer(key(1));
        let b = l.writer(key(2));
        let e = l.add_node(
            a,
            0,
            &[HeadRef {
                node: NodeId { writer: b, seq: 0 },
                height: None,
            }],
            2,
        );
        assert!(matches!(e, Err(LinearizeError::Missing(_))));
        assert!(matches!(
            l.add_node(a, 0, &[], 5),
            Err(LinearizeError::Invalid(_))
        ));
        assert!(matches!(
            l.add_node(a, 3, &[], 1),
            Err(LinearizeError::OutOfOrder { .. })
        ));
        l.add_node(a, 0, &[], 1).unwrap();
        let self_head = HeadRef {
            node: NodeId { writer: a, seq: 0 },
            height: None,
        };
        assert!(matches!(
            l.add_node(a, 1, &[self_head], 2),
            Err(LinearizeError::Invalid(_))
        ));
    }
}
