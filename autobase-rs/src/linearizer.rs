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
//! previous node and the heads it names). Uncommitted nodes are ordered by
//! `(height, writer key, seq)`, which is causal (a parent is always lower).
//!
//! # Finality: a majority of indexers decides
//!
//! Decisions are made one after another, each from the committed prefix. In
//! a decision, indexer nodes get rounds: round 0 is the committed prefix, and
//! a node moves one round past the highest round in its past once a majority
//! of indexers have a node of that round in its past. Odd rounds have a
//! leader (the indexers take turns, rotated by the committed count): the
//! leader indexer's first node of that round. A leader is decided when a
//! majority of indexers' first nodes of the next round see it; leaders of
//! earlier odd rounds that it sees are decided before it. Because any two
//! majorities share an indexer, a leader decided by any peer is in the past
//! of every later leader, so every peer decides the same first leader: the
//! anchor. Its causal past (not yet committed) is the final chunk, in
//! `(height, writer key, seq)` order; then the next decision starts.
//! With one indexer every node of it is an anchor. A silent minority of
//! indexers does not stall finality.

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
    /// Round of an indexer's node in the current decision (0 otherwise);
    /// recomputed whenever the committed prefix or the indexers change.
    round: u64,
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
        // By key: leaders take turns in an order every peer agrees on (ids
        // depend on the order writers were first seen).
        v.sort_unstable_by_key(|i| self.logs[*i as usize].key);
        v.dedup();
        self.indexers = v;
        self.recompute_rounds();
    }

    /// The indexers used for finality.
    pub fn indexers(&self) -> &[WriterId] {
        &self.indexers
    }

    /// Height of writer `id`'s latest known node (0 when none).
    pub fn latest_height(&self, id: WriterId) -> u64 {
        self.logs.get(id as usize).map_or(0, |l| l.latest_height())
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
        (heads, height.saturating_add(1))
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
        self.add_node_with(writer, seq, heads, height, true)
    }

    /// [`Linearizer::add_node`], where `exact_height: false` only requires
    /// `height` to be above every given parent's: for a node some of whose
    /// heads were dropped (they named nodes of a writer cut for
    /// equivocating), whose author counted parents this linearizer omits.
    pub fn add_node_with(
        &mut self,
        writer: WriterId,
        seq: u64,
        heads: &[HeadRef],
        height: u64,
        exact_height: bool,
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
        let height_ok = if exact_height {
            max_h.checked_add(1) == Some(height)
        } else {
            height > max_h
        };
        if !height_ok {
            return Err(LinearizeError::Invalid(
                "height is not 1 + the parents' largest",
            ));
        }
        clock[writer as usize] = seq;
        let round = self.round_of(writer, &clock);
        clock[writer as usize] = seq + 1;
        self.logs[writer as usize].nodes.push(LNode {
            clock,
            height,
            round,
        });
        self.uncommitted.insert(NodeId { writer, seq });
        Ok(())
    }

    /// The round of a node of `writer` whose parents' merged clock is
    /// `clock_without_self` (its own entry = its seq). Rounds count from the
    /// committed prefix: an indexer with nothing uncommitted in the past is
    /// at round 0. A node moves one round past the highest round in its past
    /// when a majority of indexers have a node of that round in its past.
    fn round_of(&self, writer: WriterId, clock_without_self: &[u64]) -> u64 {
        if !self.indexers.contains(&writer) {
            return 0;
        }
        let mut max = 0u64;
        let mut count = 0usize;
        for &j in &self.indexers {
            let log = &self.logs[j as usize];
            let c = clock_without_self.get(j as usize).copied().unwrap_or(0);
            let r = if c > log.committed {
                log.get(c - 1).map(|n| n.round).unwrap_or(0)
            } else {
                0
            };
            if r > max {
                max = r;
                count = 1;
            } else if r == max {
                count += 1;
            }
        }
        if count >= self.majority() {
            max + 1
        } else {
            max
        }
    }

    fn majority(&self) -> usize {
        self.indexers.len() / 2 + 1
    }

    /// Recomputes every uncommitted node's round (parents first).
    fn recompute_rounds(&mut self) {
        let mut ids: Vec<(u64, NodeId)> = self
            .uncommitted
            .iter()
            .map(|id| (self.height(*id).unwrap_or(0), *id))
            .collect();
        ids.sort_unstable();
        for (_, id) in ids {
            let Some(node) = self.logs[id.writer as usize].get(id.seq) else {
                continue;
            };
            let mut clock = node.clock.clone();
            if let Some(own) = clock.get_mut(id.writer as usize) {
                *own = id.seq;
            }
            let r = self.round_of(id.writer, &clock);
            let log = &mut self.logs[id.writer as usize];
            if let Some(i) = id.seq.checked_sub(log.offset) {
                if let Some(n) = usize::try_from(i).ok().and_then(|i| log.nodes.get_mut(i)) {
                    n.round = r;
                }
            }
        }
    }

    /// The next anchor: the indexer node whose causal past is the next
    /// committed chunk, if one is decided.
    fn anchor(&self) -> Option<NodeId> {
        let n = self.indexers.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            // A lone indexer decides alone: each of its nodes is an anchor.
            let j = self.indexers[0];
            let log = &self.logs[j as usize];
            let id = NodeId {
                writer: j,
                seq: log.committed,
            };
            return self.uncommitted.contains(&id).then_some(id);
        }
        // First node of each indexer (by position) in each round.
        let mut first: HashMap<(usize, u64), NodeId> = HashMap::new();
        let mut max_round = 0;
        for (k, &j) in self.indexers.iter().enumerate() {
            let log = &self.logs[j as usize];
            for seq in log.committed..log.len() {
                if let Some(node) = log.get(seq) {
                    max_round = max_round.max(node.round);
                    first
                        .entry((k, node.round))
                        .or_insert(NodeId { writer: j, seq });
                }
            }
        }
        // Leaders sit on odd rounds and rotate with every commit, so a
        // silent indexer costs at most one skipped wave per decision.
        let rot = usize::try_from(self.committed_count % n as u64).unwrap_or(0);
        let leader = |r: u64| -> Option<NodeId> {
            let wave = usize::try_from((r - 1) / 2 % n as u64).unwrap_or(0);
            first.get(&((wave + rot) % n, r)).copied()
        };
        let q = self.majority();
        let mut r = 1;
        while r < max_round {
            if let Some(l) = leader(r) {
                let votes = (0..n)
                    .filter(|k| first.get(&(*k, r + 1)).is_some_and(|v| self.sees(*v, l)))
                    .count();
                if votes >= q {
                    // Directly decided. Earlier leaders it can reach are
                    // decided before it (any leader decided by some peer is
                    // reachable from every later leader: quorums intersect).
                    let mut anchor = l;
                    let mut back = r;
                    while back >= 3 {
                        back -= 2;
                        if let Some(prev) = leader(back) {
                            if self.sees(anchor, prev) {
                                anchor = prev;
                            }
                        }
                    }
                    return Some(anchor);
                }
            }
            r += 2;
        }
        None
    }

    /// Orders every uncommitted node and says how many lead as final: the
    /// past of the next decided anchor (if any), then the rest; each part
    /// sorted by (height, writer key, seq), which is causal.
    pub fn order(&self) -> Order {
        let mut keyed: Vec<(u64, [u8; 32], u64, NodeId)> = self
            .uncommitted
            .iter()
            .map(|id| {
                let log = &self.logs[id.writer as usize];
                (self.height(*id).unwrap_or(0), log.key, id.seq, *id)
            })
            .collect();
        keyed.sort_unstable();
        let anchor = self.anchor();
        let (fin, rest): (Vec<_>, Vec<_>) = keyed
            .into_iter()
            .map(|k| k.3)
            .partition(|id| anchor.is_some_and(|a| self.sees(a, *id)));
        let final_len = fin.len();
        let mut nodes = fin;
        nodes.extend(rest);
        Order { nodes, final_len }
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
        // Committed nodes are no longer needed in memory (no uncommitted node
        // is in their past, so they ack nothing), except each writer's last
        // one, which new nodes usually name as a head.
        for log in &mut self.logs {
            let keep_from = log.committed.saturating_sub(1);
            if keep_from > log.offset {
                let n = usize::try_from(keep_from - log.offset).unwrap_or(usize::MAX);
                log.nodes.drain(..n.min(log.nodes.len()));
                log.offset = keep_from;
            }
        }
        // A new decision starts from the new committed prefix.
        self.recompute_rounds();
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
        write(&mut l, b); // b acks a0: round 1
        write(&mut l, a); // a sees both round-1 nodes: round 2 (a vote)
        assert_eq!(l.order().final_len, 0);
        write(&mut l, b); // b's first round-2 node: the second vote
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
    fn a_silent_indexer_does_not_stall_a_majority() {
        let mut l = Linearizer::new();
        let a = l.writer(key(1));
        let b = l.writer(key(2));
        let c = l.writer(key(3));
        l.set_indexers(&[a, b, c]);
        let first = write(&mut l, a);
        for _ in 0..8 {
            write(&mut l, b);
            write(&mut l, a);
        }
        let o = l.order();
        assert!(o.final_len >= 1, "a and b are a majority of three");
        assert_eq!(o.nodes[0], first);
        l.commit(&o, o.final_len);
        assert!(l.committed_count() >= 1);
        // c was never heard from, yet it can join later.
        write(&mut l, c);
    }

    #[test]
    fn the_leaders_own_vote_is_not_enough() {
        // Three indexers: a leads round 1 with A0. A1 (round 2) votes for it
        // by its own chain; b and c reach round 2 without seeing A0. One vote
        // of three is no majority: nothing is decided, or a later round-3
        // leader built on b and c alone could skip A0 on another peer.
        let mut l = Linearizer::new();
        let a = l.writer(key(1));
        let b = l.writer(key(2));
        let c = l.writer(key(3));
        l.set_indexers(&[a, b, c]);
        l.add_node(a, 0, &[], 1).unwrap();
        l.add_node(b, 0, &[], 1).unwrap();
        l.add_node(c, 0, &[], 1).unwrap();
        l.add_node(a, 1, &[head(b, 0)], 2).unwrap();
        l.add_node(b, 1, &[head(c, 0)], 2).unwrap();
        l.add_node(c, 1, &[head(b, 0)], 2).unwrap();
        assert_eq!(l.order().final_len, 0);
        // b's round-2 node learns A0 only later: still one vote (first
        // round-2 nodes count). When b and c see A0 in round 2, it is decided.
        l.add_node(b, 2, &[head(a, 1), head(c, 1)], 3).unwrap();
        l.add_node(c, 2, &[head(a, 1), head(b, 2)], 4).unwrap();
        let o = l.order();
        assert!(
            o.final_len == 0
                || o.nodes[0] == NodeId { writer: a, seq: 0 }
                || o.nodes[0] == NodeId { writer: b, seq: 0 }
        );
    }

    #[test]
    fn concurrent_tails_order_by_height_then_key() {
        let mut l = Linearizer::new();
        let a = l.writer(key(2));
        let b = l.writer(key(1));
        l.set_indexers(&[a, b]);
        l.add_node(a, 0, &[], 1).unwrap();
        l.add_node(b, 0, &[], 1).unwrap();
        l.add_node(a, 1, &[head(b, 0)], 2).unwrap();
        let o = l.order();
        // b's key sorts first at equal height.
        assert_eq!(o.nodes[0], NodeId { writer: b, seq: 0 });
        assert_eq!(o.nodes[1], NodeId { writer: a, seq: 0 });
        assert_eq!(o.nodes[2], NodeId { writer: a, seq: 1 });
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
