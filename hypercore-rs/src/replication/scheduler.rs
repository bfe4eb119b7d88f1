//! The per-core download scheduler, shared by every connection replicating
//! that core. Pure synchronous logic: it decides which block to ask which peer
//! for, so that a block is in flight from at most one peer at a time, blocks
//! are spread across the peers that have them, and waiters learn when blocks
//! arrive. It never does I/O.

use super::ranges::RangeSet;
use futures::channel::{mpsc, oneshot};
use std::collections::HashMap;

/// Why a connection driver is woken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Wants or availability changed: try to schedule requests.
    Schedule,
    /// The local core changed: announce (sync, have/drop ranges).
    Announce {
        have: Vec<(u64, u64)>,
        drop: Vec<(u64, u64)>,
    },
    /// Send an extension message.
    Extension { name: String, message: Vec<u8> },
    /// Ask the peer for its latest signed length (an `update` round).
    Probe,
}

pub(crate) struct PeerView {
    pub(crate) fork: u64,
    pub(crate) length: u64,
    pub(crate) synced: bool,
    pub(crate) have: RangeSet,
    pub(crate) wake: mpsc::UnboundedSender<Wake>,
    /// The last `update` round this peer answered.
    pub(crate) answered: u64,
}

/// A registered interest in a range (`end == u64::MAX`: everything, live).
#[derive(Clone, Copy, Debug)]
struct WantRange {
    id: u64,
    start: u64,
    end: u64,
}

type RangeWaiter = (u64, u64, oneshot::Sender<()>);
type ExtensionSubscribers = Vec<mpsc::UnboundedSender<(u64, Vec<u8>)>>;

#[derive(Default)]
pub(crate) struct Scheduler {
    /// Blocks known to be held locally (a lower bound: blocks held but not
    /// known here are found by the driver's `has` check before requesting).
    pub(crate) local: RangeSet,
    pub(crate) peers: HashMap<u64, PeerView>,
    next_peer: u64,
    wants: Vec<WantRange>,
    next_want: u64,
    inflight: HashMap<u64, u64>,
    upgrading: Option<u64>,
    range_waiters: Vec<RangeWaiter>,
    update_waiters: Vec<(u64, oneshot::Sender<bool>)>,
    /// The current `update` round.
    pub(crate) round: u64,
    /// Sessions that are connecting and may bring peers for this core.
    connecting: usize,
    /// Ask upgrades after a fork to start at one of our root boundaries
    /// (set when we lacked the nodes at the exact fork point).
    pub(crate) round_fork_point: bool,
    extensions: HashMap<String, ExtensionSubscribers>,
}

/// The most blocks a peer may have in flight from this side.
pub(crate) const WINDOW: usize = 64;

impl Scheduler {
    pub(crate) fn add_peer(&mut self, wake: mpsc::UnboundedSender<Wake>) -> u64 {
        let id = self.next_peer;
        self.next_peer += 1;
        self.peers.insert(
            id,
            PeerView {
                fork: 0,
                length: 0,
                synced: false,
                have: RangeSet::new(),
                wake,
                answered: 0,
            },
        );
        id
    }

    pub(crate) fn remove_peer(&mut self, peer: u64) {
        self.forget_peer(peer);
        self.wake_all(Wake::Schedule);
        self.check_update();
    }

    /// Drops a peer and everything it had claimed (blocks in flight, the
    /// upgrade), so other peers can be asked instead.
    fn forget_peer(&mut self, peer: u64) {
        self.peers.remove(&peer);
        self.inflight.retain(|_, p| *p != peer);
        if self.upgrading == Some(peer) {
            self.upgrading = None;
        }
    }

    pub(crate) fn wake_all(&mut self, w: Wake) {
        // A peer whose session is gone (its receiver dropped) is forgotten,
        // with its claims.
        let gone: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| p.wake.unbounded_send(w.clone()).is_err())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.forget_peer(id);
        }
    }

    pub(crate) fn add_want(&mut self, start: u64, end: u64) -> u64 {
        let id = self.next_want;
        self.next_want += 1;
        self.wants.push(WantRange { id, start, end });
        self.wake_all(Wake::Schedule);
        id
    }

    pub(crate) fn remove_want(&mut self, id: u64) {
        self.wants.retain(|w| w.id != id);
    }

    /// The next block to ask `peer` for, marked in flight; `None` if nothing
    /// this peer can give is wanted. `length` bounds what our tree covers.
    pub(crate) fn next_block(&mut self, peer: u64, fork: u64, length: u64) -> Option<u64> {
        let p = self.peers.get(&peer)?;
        if p.fork != fork {
            return None;
        }
        let mut best = None;
        for w in &self.wants {
            let end = w.end.min(length).min(p.length);
            let mut pos = w.start;
            for _ in 0..(WINDOW * 8) {
                let c = self.local.next_missing(pos);
                if c >= end {
                    break;
                }
                if self.inflight.contains_key(&c) {
                    pos = c + 1;
                    continue;
                }
                if !p.have.contains(c) {
                    match p.have.next_present(c) {
                        Some(n) if n < end => {
                            pos = n;
                            continue;
                        }
                        _ => break,
                    }
                }
                best = Some(c);
                break;
            }
            if best.is_some() {
                break;
            }
        }
        let b = best?;
        self.inflight.insert(b, peer);
        Some(b)
    }

    /// Whether `peer` is ahead of us and no upgrade is in flight (then the
    /// upgrade is marked in flight for it).
    pub(crate) fn take_upgrade(&mut self, peer: u64, fork: u64, length: u64) -> bool {
        if self.upgrading.is_some() {
            return false;
        }
        let Some(p) = self.peers.get(&peer) else {
            return false;
        };
        let ahead = p.synced && (p.fork > fork || (p.fork == fork && p.length > length));
        if ahead {
            self.upgrading = Some(peer);
        }
        ahead
    }

    pub(crate) fn upgrade_done(&mut self, peer: u64) {
        if self.upgrading == Some(peer) {
            self.upgrading = None;
        }
        self.wake_all(Wake::Schedule);
        self.check_update();
    }

    /// A block request finished (stored, refused or failed): it may be asked
    /// of someone else now.
    pub(crate) fn release(&mut self, block: u64) {
        self.inflight.remove(&block);
    }

    pub(crate) fn on_sync(&mut self, peer: u64, fork: u64, length: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if fork != p.fork {
                p.have = RangeSet::new();
            }
            p.fork = fork;
            p.length = length;
            p.have.truncate(length);
            p.synced = true;
        }
        self.check_update();
    }

    pub(crate) fn on_have(&mut self, peer: u64, drop: bool, ranges: &[(u64, u64)]) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return true;
        };
        for &(s, l) in ranges {
            let e = s.saturating_add(l);
            if drop {
                p.have.remove(s, e);
            } else {
                p.have.insert(s, e);
            }
        }
        // A hostile peer must not make us hold unbounded state.
        p.have.len() <= 1 << 16
    }

    /// Blocks became local.
    pub(crate) fn on_local(&mut self, start: u64, end: u64) {
        self.local.insert(start, end);
        self.inflight.retain(|b, _| *b < start || *b >= end);
        self.fire_waiters();
    }

    pub(crate) fn on_local_dropped(&mut self, start: u64, end: u64) {
        self.local.remove(start, end);
    }

    pub(crate) fn on_local_truncated(&mut self, length: u64) {
        self.local.truncate(length);
        self.inflight.clear();
        self.upgrading = None;
        self.wake_all(Wake::Schedule);
    }

    pub(crate) fn add_range_waiter(&mut self, start: u64, end: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if self.local.covers(start, end) {
            let _ = tx.send(());
        } else {
            self.range_waiters.push((start, end, tx));
        }
        rx
    }

    /// Fires the waiters whose ranges are now local.
    pub(crate) fn fire_waiters(&mut self) {
        let mut i = 0;
        while i < self.range_waiters.len() {
            let (s, e, _) = &self.range_waiters[i];
            if self.local.covers(*s, *e) {
                let (_, _, tx) = self.range_waiters.swap_remove(i);
                let _ = tx.send(());
            } else if self.range_waiters[i].2.is_canceled() {
                self.range_waiters.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Starts an `update` round: every peer is asked for its latest length.
    /// `None` when offline (no peer and no connecting session).
    pub(crate) fn start_update(&mut self) -> Option<oneshot::Receiver<bool>> {
        if self.peers.is_empty() && self.connecting == 0 {
            return None;
        }
        self.round += 1;
        let (tx, rx) = oneshot::channel();
        self.update_waiters.push((self.round, tx));
        self.wake_all(Wake::Probe);
        Some(rx)
    }

    /// Whether an `update` round is waiting for answers.
    pub(crate) fn probing(&self) -> bool {
        !self.update_waiters.is_empty()
    }

    /// A peer answered the probe of `round`.
    pub(crate) fn probe_done(&mut self, peer: u64, round: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.answered = p.answered.max(round);
        }
        self.check_update();
    }

    pub(crate) fn connecting(&mut self, delta: isize) {
        self.connecting = self.connecting.saturating_add_signed(delta);
        self.check_update();
    }

    /// Resolves the `update` rounds that every peer has answered (true if
    /// some peer was connected).
    pub(crate) fn check_update(&mut self) {
        if self.update_waiters.is_empty() || self.connecting > 0 {
            return;
        }
        let min_answered = self
            .peers
            .values()
            .map(|p| p.answered)
            .min()
            .unwrap_or(u64::MAX);
        let any = !self.peers.is_empty();
        let mut i = 0;
        while i < self.update_waiters.len() {
            if self.update_waiters[i].0 <= min_answered {
                let (_, tx) = self.update_waiters.swap_remove(i);
                let _ = tx.send(any);
            } else {
                i += 1;
            }
        }
    }

    /// No peer is attached and no session is connecting.
    pub(crate) fn offline(&self) -> bool {
        self.peers.is_empty() && self.connecting == 0
    }

    pub(crate) fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether every peer that has said how long this core is reports
    /// `length` and holds every block below it; `None` if none has said.
    pub(crate) fn peers_match(&self, length: u64) -> Option<bool> {
        let mut synced = self.peers.values().filter(|p| p.synced).peekable();
        synced.peek()?;
        Some(synced.all(|p| p.length == length && p.have.covers(0, length)))
    }

    pub(crate) fn subscribe_extension(
        &mut self,
        name: &str,
    ) -> mpsc::UnboundedReceiver<(u64, Vec<u8>)> {
        let (tx, rx) = mpsc::unbounded();
        self.extensions
            .entry(name.to_string())
            .or_default()
            .push(tx);
        rx
    }

    pub(crate) fn deliver_extension(&mut self, peer: u64, name: &str, message: Vec<u8>) {
        if let Some(subs) = self.extensions.get_mut(name) {
            subs.retain(|tx| tx.unbounded_send((peer, message.clone())).is_ok());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn peer(s: &mut Scheduler, length: u64) -> (u64, mpsc::UnboundedReceiver<Wake>) {
        let (tx, rx) = mpsc::unbounded();
        let id = s.add_peer(tx);
        s.on_sync(id, 0, length);
        s.on_have(id, false, &[(0, length)]);
        (id, rx)
    }

    #[test]
    fn blocks_are_spread_and_never_doubled() {
        let mut s = Scheduler::default();
        let (a, _ra) = peer(&mut s, 100);
        let (b, _rb) = peer(&mut s, 100);
        s.add_want(0, 10);
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(s.next_block(a, 0, 100).unwrap());
            got.push(s.next_block(b, 0, 100).unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(s.next_block(a, 0, 100), None);
        // A released block can be asked of the other peer.
        s.release(3);
        assert_eq!(s.next_block(b, 0, 100), Some(3));
        // A peer that lacks a block is not asked for it.
        let (c, _rc) = {
            let (tx, rx) = mpsc::unbounded();
            let id = s.add_peer(tx);
            s.on_sync(id, 0, 100);
            s.on_have(id, false, &[(50, 10)]);
            (id, rx)
        };
        s.add_want(40, 60);
        assert_eq!(s.next_block(c, 0, 100), Some(50));
    }

    #[test]
    fn waiters_fire_when_ranges_become_local() {
        let mut s = Scheduler::default();
        let mut rx = s.add_range_waiter(2, 5);
        s.on_local(2, 4);
        s.fire_waiters();
        assert_eq!(rx.try_recv().unwrap(), None);
        s.on_local(4, 5);
        s.fire_waiters();
        assert_eq!(rx.try_recv().unwrap(), Some(()));
    }
}
