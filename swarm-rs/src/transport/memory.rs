//! A deterministic in-process network: listeners are registered by number
//! in a shared [`MemoryNetwork`], and connections are [`PipeStream`] pairs.
//! No threads, no timers, no randomness: the same calls give the same result.
//!
//! Faults: every [`MemoryTransport`] is a host ([`HostId`]); partitioning two
//! hosts cuts their open connections (reads and writes fail with
//! `ConnectionReset`) and makes new dials between them fail with
//! `HostUnreachable` until healed. [`DialFaults`] add latency to a
//! transport's dials and lose some of them (seeded, so runs repeat); bytes
//! on an open connection flow without delay (no per-write latency yet).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::channel::mpsc;
use futures::StreamExt;

use super::pipe::{duplex_with_severer, PipeStream, Severer};
use super::{Listener, Transport};
use crate::clock::Clock;
use crate::entropy::{EntropySource, SeededEntropy};

/// Default bytes buffered per direction of a memory connection.
const DEFAULT_PIPE_CAPACITY: usize = 64 * 1024;
/// Addresses handed to dialers and to `listen(0)` start here.
const FIRST_EPHEMERAL: u64 = 1 << 32;

/// The address of a listener on a [`MemoryNetwork`]. `0` in
/// [`Transport::listen`] means "pick a free one".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryAddr(pub u64);

impl fmt::Display for MemoryAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mem:{}", self.0)
    }
}

/// A simulated host on a [`MemoryNetwork`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(u64);

type Incoming = (PipeStream, MemoryAddr);

#[derive(Debug, Default)]
struct Registry {
    listeners: BTreeMap<MemoryAddr, (HostId, mpsc::UnboundedSender<Incoming>)>,
    next_ephemeral: u64,
    next_host: u64,
    /// Partitioned host pairs, smaller id first.
    blocked: BTreeSet<(HostId, HostId)>,
    links: Vec<(HostId, HostId, Severer)>,
}

fn pair(a: HostId, b: HostId) -> (HostId, HostId) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// A shared in-process network. Clones refer to the same network.
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    registry: Arc<Mutex<Registry>>,
}

impl MemoryNetwork {
    /// A new, empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport attached to this network, as a new host.
    pub fn transport(&self) -> MemoryTransport {
        let host = {
            let mut registry = self.lock();
            let host = HostId(registry.next_host);
            registry.next_host += 1;
            host
        };
        MemoryTransport {
            network: self.clone(),
            host,
            pipe_capacity: DEFAULT_PIPE_CAPACITY,
            faults: None,
        }
    }

    /// Cuts every connection between hosts `a` and `b` and refuses new ones
    /// until [`MemoryNetwork::heal`].
    pub fn partition(&self, a: HostId, b: HostId) {
        let key = pair(a, b);
        let mut registry = self.lock();
        registry.blocked.insert(key);
        registry.links.retain(|(x, y, severer)| {
            let hit = pair(*x, *y) == key;
            if hit {
                severer.sever();
            }
            !hit && severer.is_alive()
        });
    }

    /// Lets hosts `a` and `b` connect again.
    pub fn heal(&self, a: HostId, b: HostId) {
        self.lock().blocked.remove(&pair(a, b));
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ephemeral(registry: &mut Registry) -> MemoryAddr {
        let addr = MemoryAddr(FIRST_EPHEMERAL + registry.next_ephemeral);
        registry.next_ephemeral += 1;
        addr
    }
}

/// Faults injected into the dials of a [`MemoryTransport`].
#[derive(Clone)]
pub struct DialFaults {
    latency: Duration,
    drop_per_million: u32,
    clock: Arc<dyn Clock>,
    entropy: Arc<Mutex<SeededEntropy>>,
}

impl fmt::Debug for DialFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialFaults")
            .field("latency", &self.latency)
            .field("drop_per_million", &self.drop_per_million)
            .finish_non_exhaustive()
    }
}

impl DialFaults {
    /// Every dial waits `latency` (on `clock`) before it connects; a share
    /// of `drop_per_million` / 1,000,000 of the dials is lost and fails with
    /// `TimedOut` after the wait. Which ones is decided by `seed`.
    pub fn new(latency: Duration, drop_per_million: u32, clock: Arc<dyn Clock>, seed: u64) -> Self {
        Self {
            latency,
            drop_per_million,
            clock,
            entropy: Arc::new(Mutex::new(SeededEntropy::from_u64(seed))),
        }
    }

    fn lose_next(&self) -> bool {
        let mut draw = [0u8; 4];
        let mut entropy = self
            .entropy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A seeded source cannot fail; if it did, keep the dial.
        if entropy.try_fill_bytes(&mut draw).is_err() {
            return false;
        }
        u32::from_le_bytes(draw) % 1_000_000 < self.drop_per_million
    }
}

/// Dials and listens on a [`MemoryNetwork`].
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    host: HostId,
    pipe_capacity: usize,
    faults: Option<DialFaults>,
}

impl MemoryTransport {
    /// The simulated host this transport belongs to.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// Sets the bytes buffered per direction of new connections.
    pub fn with_pipe_capacity(mut self, capacity: usize) -> Self {
        self.pipe_capacity = capacity;
        self
    }

    /// Adds latency to this transport's dials and loses some of them.
    pub fn with_dial_faults(mut self, faults: DialFaults) -> Self {
        self.faults = Some(faults);
        self
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    type Address = MemoryAddr;
    type Stream = PipeStream;
    type Listener = MemoryListener;

    async fn listen(&self, addr: &MemoryAddr) -> io::Result<MemoryListener> {
        let mut registry = self.network.lock();
        let addr = if addr.0 == 0 {
            MemoryNetwork::ephemeral(&mut registry)
        } else {
            *addr
        };
        if registry.listeners.contains_key(&addr) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        let (tx, rx) = mpsc::unbounded();
        registry.listeners.insert(addr, (self.host, tx));
        Ok(MemoryListener {
            addr,
            incoming: rx,
            network: self.network.clone(),
        })
    }

    async fn connect(&self, addr: &MemoryAddr) -> io::Result<PipeStream> {
        if let Some(faults) = &self.faults {
            let lost = faults.lose_next();
            let clock = &faults.clock;
            clock.sleep_until(clock.now() + faults.latency).await;
            if lost {
                return Err(io::ErrorKind::TimedOut.into());
            }
        }
        let mut registry = self.network.lock();
        let from = MemoryNetwork::ephemeral(&mut registry);
        let (host, listener) = registry
            .listeners
            .get(addr)
            .ok_or(io::ErrorKind::ConnectionRefused)?;
        let host = *host;
        if registry.blocked.contains(&pair(self.host, host)) {
            return Err(io::ErrorKind::HostUnreachable.into());
        }
        let (ours, theirs, severer) = duplex_with_severer(self.pipe_capacity);
        listener
            .unbounded_send((theirs, from))
            .map_err(|_| io::ErrorKind::ConnectionRefused)?;
        registry.links.retain(|(_, _, s)| s.is_alive());
        registry.links.push((self.host, host, severer));
        Ok(ours)
    }
}

/// Accepts connections made to one [`MemoryAddr`]. Dropping it frees the
/// address.
#[derive(Debug)]
pub struct MemoryListener {
    addr: MemoryAddr,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    network: MemoryNetwork,
}

#[async_trait]
impl Listener for MemoryListener {
    type Address = MemoryAddr;
    type Stream = PipeStream;

    fn local_addr(&self) -> io::Result<MemoryAddr> {
        Ok(self.addr)
    }

    async fn accept(&mut self) -> io::Result<(PipeStream, MemoryAddr)> {
        self.incoming
            .next()
            .await
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        self.network.lock().listeners.remove(&self.addr);
    }
}
