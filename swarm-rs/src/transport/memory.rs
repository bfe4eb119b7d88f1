//! A deterministic in-process network: listeners are registered by number
//! in a shared [`MemoryNetwork`], and connections are [`PipeStream`] pairs.
//! No threads, no timers, no randomness: the same calls give the same result.
//! (Injectable latency, drops and partitions are not implemented yet.)

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::channel::mpsc;
use futures::StreamExt;

use super::pipe::{duplex, PipeStream};
use super::{Listener, Transport};

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

type Incoming = (PipeStream, MemoryAddr);

#[derive(Debug, Default)]
struct Registry {
    listeners: BTreeMap<MemoryAddr, mpsc::UnboundedSender<Incoming>>,
    next_ephemeral: u64,
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

    /// A transport attached to this network.
    pub fn transport(&self) -> MemoryTransport {
        MemoryTransport {
            network: self.clone(),
            pipe_capacity: DEFAULT_PIPE_CAPACITY,
        }
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

/// Dials and listens on a [`MemoryNetwork`].
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    pipe_capacity: usize,
}

impl MemoryTransport {
    /// Sets the bytes buffered per direction of new connections.
    pub fn with_pipe_capacity(mut self, capacity: usize) -> Self {
        self.pipe_capacity = capacity;
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
        registry.listeners.insert(addr, tx);
        Ok(MemoryListener {
            addr,
            incoming: rx,
            network: self.network.clone(),
        })
    }

    async fn connect(&self, addr: &MemoryAddr) -> io::Result<PipeStream> {
        let mut registry = self.network.lock();
        let from = MemoryNetwork::ephemeral(&mut registry);
        let listener = registry
            .listeners
            .get(addr)
            .ok_or(io::ErrorKind::ConnectionRefused)?;
        let (ours, theirs) = duplex(self.pipe_capacity);
        listener
            .unbounded_send((theirs, from))
            .map_err(|_| io::ErrorKind::ConnectionRefused)?;
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
