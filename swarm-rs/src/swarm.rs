//! Swarm rules as a sans-IO state machine: which peers to dial, which
//! connections to keep, when to retry.
//!
//! [`Swarm`] never dials, reads a clock or talks to discovery itself. The
//! owner feeds it what happened (`handle_peer_found`, `handle_established`,
//! `handle_closed`, ...) with the current `now`, and carries out the
//! [`SwarmAction`]s it returns (dial, announce, look up, close, hand a
//! connection to the application). The rules:
//!
//! - topics are joined as server (announce) and/or client (look up and dial
//!   the peers found); only [`DiscoveryKey`]s (hashes of topics) are ever
//!   announced;
//! - a firewall callback sees the remote public key before a connection is
//!   handed out; banned peers are refused and disconnected;
//! - exactly one connection per peer: when both peers dial each other at
//!   once, both keep the connection initiated by the smaller public key;
//! - at most `max_peers` connections (handed out or being dialed);
//! - failed dials and dropped connections to peers still wanted are retried
//!   with exponential backoff, up to `max_attempts` tries in a row.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::identity::PublicKey;

/// A topic peers meet on. Never sent anywhere: only its [`DiscoveryKey`] is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(pub [u8; 32]);

impl Topic {
    /// Derives a topic from a human-readable name.
    pub fn from_name(name: &str) -> Self {
        Self(blake3::derive_key(
            "swarm-rs 2026 topic name v1",
            name.as_bytes(),
        ))
    }

    /// The hash of the topic that is announced and looked up.
    pub fn discovery_key(&self) -> DiscoveryKey {
        DiscoveryKey(blake3::derive_key(
            "swarm-rs 2026 discovery key v1",
            &self.0,
        ))
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A topic can be a secret (knowing it lets you join): do not print it.
        f.write_str("Topic(..)")
    }
}

/// The public hash of a [`Topic`], used with discovery services.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiscoveryKey(pub [u8; 32]);

impl fmt::Debug for DiscoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiscoveryKey(")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "..)")
    }
}

/// How to take part in a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinMode {
    /// Announce ourselves so others can connect to us.
    pub server: bool,
    /// Look up others and connect to them.
    pub client: bool,
}

impl JoinMode {
    /// Both server and client.
    pub const BOTH: Self = Self {
        server: true,
        client: true,
    };
}

/// Limits and retry policy of a [`Swarm`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SwarmConfig {
    /// Most connections at once (handed out, or being dialed).
    pub max_peers: usize,
    /// First retry delay; doubles with every failed attempt.
    pub backoff_base: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Give up on a peer after this many failed attempts in a row (until it
    /// is found again).
    pub max_attempts: u32,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            max_peers: 64,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_attempts: 8,
        }
    }
}

/// Identifies one connection attempt or connection for the swarm's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(u64);

/// Who initiated a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialed.
    Outbound,
    /// The peer dialed us.
    Inbound,
}

/// Why the swarm wants a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The firewall callback refused the peer.
    Firewalled,
    /// The peer is banned.
    Banned,
    /// Another connection to the same peer won.
    Duplicate,
    /// The connection limit is reached.
    MaxPeers,
    /// We reached ourselves.
    SelfConnection,
    /// A dialed connection reached a different peer than the one dialed.
    UnexpectedPeer,
}

/// Something the swarm's owner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwarmAction<A> {
    /// Announce ourselves under this key.
    Announce(DiscoveryKey),
    /// Stop announcing under this key.
    Unannounce(DiscoveryKey),
    /// Look up peers under this key and report them with
    /// [`Swarm::handle_peer_found`].
    Lookup(DiscoveryKey),
    /// Dial `peer` at `addr`, run the handshake expecting `peer`, then call
    /// [`Swarm::handle_established`] or [`Swarm::handle_dial_failed`].
    Dial {
        /// The attempt.
        conn: ConnectionId,
        /// Who we expect to reach.
        peer: PublicKey,
        /// Where.
        addr: A,
    },
    /// The connection passed every rule: give it to the application.
    Connection {
        /// The connection.
        conn: ConnectionId,
        /// The remote peer.
        peer: PublicKey,
        /// Who dialed.
        direction: Direction,
    },
    /// Close this connection (and report nothing more about it).
    Close {
        /// The connection.
        conn: ConnectionId,
        /// Why.
        reason: CloseReason,
    },
}

#[derive(Debug)]
struct Peer<A> {
    addr: A,
    topics: BTreeSet<DiscoveryKey>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Wants a dial but the connection limit was reached.
    queued: bool,
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    direction: Direction,
    /// The dialed peer (outbound), or the proven peer once established.
    peer: Option<PublicKey>,
    handed_out: bool,
}

/// A firewall: returns `true` to allow a connection with this peer.
pub type Firewall = Box<dyn FnMut(&PublicKey) -> bool + Send>;

/// The swarm rules for one local identity. `A` is the transport address.
pub struct Swarm<A> {
    local: PublicKey,
    config: SwarmConfig,
    topics: BTreeMap<DiscoveryKey, JoinMode>,
    peers: BTreeMap<PublicKey, Peer<A>>,
    conns: BTreeMap<ConnectionId, Conn>,
    by_peer: BTreeMap<PublicKey, ConnectionId>,
    banned: BTreeSet<PublicKey>,
    firewall: Option<Firewall>,
    next_conn: u64,
    actions: VecDeque<SwarmAction<A>>,
}

impl<A: fmt::Debug> fmt::Debug for Swarm<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Swarm")
            .field("local", &self.local)
            .field("topics", &self.topics)
            .field("peers", &self.peers)
            .field("conns", &self.conns)
            .field("banned", &self.banned)
            .finish_non_exhaustive()
    }
}

impl<A: Clone> Swarm<A> {
    /// A swarm for the local identity `local`.
    pub fn new(local: PublicKey, config: SwarmConfig) -> Self {
        Self {
            local,
            config,
            topics: BTreeMap::new(),
            peers: BTreeMap::new(),
            conns: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            banned: BTreeSet::new(),
            firewall: None,
            next_conn: 0,
            actions: VecDeque::new(),
        }
    }

    /// Installs the firewall, consulted before every connection is handed
    /// out.
    pub fn set_firewall(&mut self, firewall: Firewall) {
        self.firewall = Some(firewall);
    }

    /// Joins (or changes how we take part in) a topic.
    pub fn join(&mut self, topic: &Topic, mode: JoinMode) {
        let key = topic.discovery_key();
        let old = self.topics.insert(key, mode);
        if mode.server && !old.is_some_and(|m| m.server) {
            self.actions.push_back(SwarmAction::Announce(key));
        }
        if !mode.server && old.is_some_and(|m| m.server) {
            self.actions.push_back(SwarmAction::Unannounce(key));
        }
        if mode.client {
            self.actions.push_back(SwarmAction::Lookup(key));
        } else {
            self.forget_topic(key);
        }
    }

    /// Leaves a topic: stops announcing it and dialing peers found through
    /// it. Existing connections stay.
    pub fn leave(&mut self, topic: &Topic) {
        let key = topic.discovery_key();
        if let Some(mode) = self.topics.remove(&key) {
            if mode.server {
                self.actions.push_back(SwarmAction::Unannounce(key));
            }
            self.forget_topic(key);
        }
    }

    fn forget_topic(&mut self, key: DiscoveryKey) {
        for peer in self.peers.values_mut() {
            peer.topics.remove(&key);
        }
        self.peers.retain(|_, p| !p.topics.is_empty());
    }

    /// Re-issues lookups for every client topic (call periodically).
    pub fn refresh(&mut self) {
        for (key, mode) in &self.topics {
            if mode.client {
                self.actions.push_back(SwarmAction::Lookup(*key));
            }
        }
    }

    /// Discovery found `peer` at `addr` under `key`.
    pub fn handle_peer_found(&mut self, key: DiscoveryKey, peer: PublicKey, addr: A) {
        if peer == self.local || self.banned.contains(&peer) {
            return;
        }
        if !self.topics.get(&key).is_some_and(|m| m.client) {
            return;
        }
        let entry = self.peers.entry(peer).or_insert_with(|| Peer {
            addr: addr.clone(),
            topics: BTreeSet::new(),
            failures: 0,
            retry_at: None,
            queued: false,
        });
        entry.addr = addr;
        entry.topics.insert(key);
        // Being found again is a fresh chance.
        if entry.retry_at.is_none() {
            entry.failures = 0;
        }
        self.maybe_dial(peer);
    }

    /// A new inbound stream arrived; returns its id for the later
    /// [`Swarm::handle_established`] / [`Swarm::handle_closed`].
    pub fn handle_incoming(&mut self) -> ConnectionId {
        let conn = self.allocate();
        self.conns.insert(
            conn,
            Conn {
                direction: Direction::Inbound,
                peer: None,
                handed_out: false,
            },
        );
        conn
    }

    /// The handshake on `conn` completed and proved `remote`.
    pub fn handle_established(&mut self, conn: ConnectionId, remote: PublicKey) {
        let Some(state) = self.conns.get(&conn).copied() else {
            return;
        };
        if state.direction == Direction::Outbound {
            if let Some(peer) = self.peers.get_mut(&remote) {
                peer.failures = 0;
            }
        }
        let verdict = if remote == self.local {
            Err(CloseReason::SelfConnection)
        } else if state.peer.is_some_and(|expected| expected != remote) {
            Err(CloseReason::UnexpectedPeer)
        } else if self.banned.contains(&remote) {
            Err(CloseReason::Banned)
        } else if !self.firewall.as_mut().is_none_or(|allow| allow(&remote)) {
            Err(CloseReason::Firewalled)
        } else {
            Ok(())
        };
        if let Err(reason) = verdict {
            self.close(conn, reason);
            self.after_slot_freed();
            return;
        }
        if let Some(&existing) = self.by_peer.get(&remote) {
            let old_direction = self.conns.get(&existing).map(|c| c.direction);
            let keep_new = match old_direction {
                // Same direction: the older one is most likely stale.
                Some(d) if d == state.direction => true,
                Some(_) => {
                    self.initiator(state.direction, &remote)
                        < self.initiator_other(state.direction, &remote)
                }
                None => true,
            };
            if keep_new {
                self.close(existing, CloseReason::Duplicate);
            } else {
                self.close(conn, CloseReason::Duplicate);
                return;
            }
        } else if self.handed_out() >= self.config.max_peers {
            self.close(conn, CloseReason::MaxPeers);
            return;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer = Some(remote);
            c.handed_out = true;
        }
        self.by_peer.insert(remote, conn);
        self.actions.push_back(SwarmAction::Connection {
            conn,
            peer: remote,
            direction: state.direction,
        });
    }

    /// The key of whoever initiated a connection in `direction` with `remote`.
    fn initiator(&self, direction: Direction, remote: &PublicKey) -> PublicKey {
        match direction {
            Direction::Outbound => self.local,
            Direction::Inbound => *remote,
        }
    }

    fn initiator_other(&self, direction: Direction, remote: &PublicKey) -> PublicKey {
        match direction {
            Direction::Outbound => *remote,
            Direction::Inbound => self.local,
        }
    }

    /// Dialing or the handshake of an outbound attempt failed.
    pub fn handle_dial_failed(&mut self, conn: ConnectionId, now: Instant) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(peer) = state.peer {
            self.schedule_retry(peer, now);
        }
        self.after_slot_freed();
    }

    /// A connection ended (for any reason other than a [`SwarmAction::Close`]
    /// the swarm asked for, which needs no report).
    pub fn handle_closed(&mut self, conn: ConnectionId, now: Instant) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(peer) = state.peer {
            if self.by_peer.get(&peer) == Some(&conn) {
                self.by_peer.remove(&peer);
            }
            if state.handed_out {
                // A drop after a working connection: reconnect soon.
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.failures = 0;
                }
            }
            self.schedule_retry(peer, now);
        }
        self.after_slot_freed();
    }

    /// Bans a peer: refuses it from now on and closes its connections.
    pub fn ban(&mut self, peer: PublicKey) {
        self.banned.insert(peer);
        self.peers.remove(&peer);
        let doomed: Vec<ConnectionId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.peer == Some(peer))
            .map(|(id, _)| *id)
            .collect();
        for conn in doomed {
            self.close(conn, CloseReason::Banned);
        }
        self.after_slot_freed();
    }

    /// Lifts a ban.
    pub fn unban(&mut self, peer: &PublicKey) {
        self.banned.remove(peer);
    }

    /// The connection handed out for `peer`, if any.
    pub fn connection(&self, peer: &PublicKey) -> Option<ConnectionId> {
        self.by_peer.get(peer).copied()
    }

    /// Number of connections handed out.
    pub fn handed_out(&self) -> usize {
        self.by_peer.len()
    }

    /// True when no outbound attempt is in flight (the sans-IO `flush`).
    pub fn is_flushed(&self) -> bool {
        !self
            .conns
            .values()
            .any(|c| !c.handed_out && c.direction == Direction::Outbound)
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<SwarmAction<A>> {
        self.actions.pop_front()
    }

    /// When [`Swarm::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.retry_at).min()
    }

    /// Retries the dials that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<PublicKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.retry_at.is_some_and(|at| at <= now))
            .map(|(k, _)| *k)
            .collect();
        for peer in due {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.retry_at = None;
            }
            self.maybe_dial(peer);
        }
    }

    fn allocate(&mut self) -> ConnectionId {
        let id = ConnectionId(self.next_conn);
        self.next_conn += 1;
        id
    }

    fn busy(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.handed_out || c.direction == Direction::Outbound)
            .count()
    }

    fn maybe_dial(&mut self, peer: PublicKey) {
        if self.by_peer.contains_key(&peer)
            || self.conns.values().any(|c| c.peer == Some(peer))
            || self.banned.contains(&peer)
        {
            return;
        }
        let at_limit = self.busy() >= self.config.max_peers;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.retry_at.is_some() {
            return;
        }
        if at_limit {
            p.queued = true;
            return;
        }
        p.queued = false;
        let addr = p.addr.clone();
        let conn = self.allocate();
        self.conns.insert(
            conn,
            Conn {
                direction: Direction::Outbound,
                peer: Some(peer),
                handed_out: false,
            },
        );
        self.actions
            .push_back(SwarmAction::Dial { conn, peer, addr });
    }

    fn schedule_retry(&mut self, peer: PublicKey, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.failures >= self.config.max_attempts {
            self.peers.remove(&peer);
            return;
        }
        let factor = 1u32.checked_shl(p.failures).unwrap_or(u32::MAX);
        let delay = self
            .config
            .backoff_base
            .saturating_mul(factor)
            .min(self.config.backoff_max);
        p.failures += 1;
        p.retry_at = Some(now + delay);
    }

    fn after_slot_freed(&mut self) {
        let queued: Vec<PublicKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.queued)
            .map(|(k, _)| *k)
            .collect();
        for peer in queued {
            self.maybe_dial(peer);
        }
    }

    fn close(&mut self, conn: ConnectionId, reason: CloseReason) {
        if let Some(state) = self.conns.remove(&conn) {
            if let Some(peer) = state.peer {
                if self.by_peer.get(&peer) == Some(&conn) {
                    self.by_peer.remove(&peer);
                }
            }
            self.actions.push_back(SwarmAction::Close { conn, reason });
        }
    }
}
