//! The async swarm driver: runs the sans-IO [`Swarm`] rules over a
//! [`Transport`] and a [`Discovery`], and hands established, authenticated
//! connections to the application.
//!
//! [`SwarmBuilder::bind`] listens and returns three parts:
//!
//! - a [`SwarmHandle`] (cheap to clone) to join and leave topics, ban peers
//!   and ask who is connected;
//! - [`Connections`], a `futures` [`Stream`] of [`PeerConnection`]s that
//!   passed every swarm rule (firewall, bans, one connection per peer);
//! - a [`SwarmDriver`], the future that does the work. Spawn it on any
//!   executor (or poll it alongside the application); it needs nothing but
//!   `futures`, the transport and the injected [`Clock`].
//!
//! The driver carries out every [`SwarmAction`]: it announces and looks up
//! discovery keys (one discovery call at a time, so an unannounce never
//! overtakes the announce before it), dials and accepts, runs the Noise
//! handshake ([`SecureStream`]), reports the proven identity to the rules,
//! and closes the connections the rules reject. It re-runs lookups and
//! re-announces every `refresh_interval`, which is also how peers that were
//! given up on (after `max_attempts` failed dials) are found again.
//!
//! A [`PeerConnection`] tells the driver when it ends (end of stream, error,
//! or drop), so the rules can reconnect with backoff; a connection the rules
//! later close (a duplicate that lost the tie-break, a ban) ends for the
//! application as if the peer had closed it. The application must keep
//! polling its connections (or drop them): keep-alives and the idle timeout
//! only run while a connection is polled.
//!
//! The driver never panics on anything a peer sends, and never reads the OS
//! clock or random source itself: both are injected.
//!
//! ```
//! use futures::executor::LocalPool;
//! use futures::task::LocalSpawnExt;
//! use futures::{SinkExt, StreamExt};
//! use swarm_rs::{JoinMode, KeyPair, MemoryAddr, MemoryDiscovery, MemoryNetwork, SwarmBuilder, Topic};
//!
//! let (net, discovery) = (MemoryNetwork::new(), MemoryDiscovery::new());
//! let mut pool = LocalPool::new();
//! let topic = Topic::from_name("patient-42");
//! let mut peers = Vec::new();
//! // One announces, the other looks up and dials.
//! let server = JoinMode { server: true, client: false };
//! let client = JoinMode { server: false, client: true };
//! for (seed, mode) in [(1u8, server), (2, client)] {
//!     let builder = SwarmBuilder::new(KeyPair::from_seed([seed; 32]));
//!     let bind = builder.bind(net.transport(), discovery.clone(), &MemoryAddr(0));
//!     let (handle, connections, driver) = pool.run_until(bind)?;
//!     pool.spawner().spawn_local(driver)?;
//!     handle.join(&topic, mode)?;
//!     peers.push((handle, connections));
//! }
//! let (mut a, mut b) = pool.run_until(async {
//!     let a = peers[0].1.next().await.expect("a connection");
//!     let b = peers[1].1.next().await.expect("a connection");
//!     (a, b)
//! });
//! // Proven identities, the same connection on both sides.
//! assert!(b.is_initiator());
//! assert_eq!(a.remote_public_key(), peers[1].0.public_key());
//! assert_eq!(a.handshake_hash(), b.handshake_hash());
//! pool.run_until(async {
//!     a.send(b"hello".to_vec()).await?;
//!     assert_eq!(b.next().await.transpose()?, Some(b"hello".to_vec()));
//!     Ok::<(), std::io::Error>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Sink, Stream, StreamExt};

use crate::clock::{Clock, Sleep, SystemClock};
use crate::discovery::{Discovery, DiscoveryError};
use crate::entropy::{EntropySource, OsEntropy, SeededEntropy};
use crate::identity::{KeyPair, PublicKey};
use crate::secure::{HandshakeHash, Role, SecureConfig, SecureError};
use crate::stream::{SecureStream, StreamError};
use crate::swarm::{
    CloseReason, ConnectionId, Direction, DiscoveryKey, Firewall, JoinMode, Swarm, SwarmAction,
    SwarmConfig, Topic,
};
use crate::transport::{Listener, Transport};

/// Settings of a swarm driver.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DriverConfig {
    /// The swarm rules' limits and retry policy.
    pub swarm: SwarmConfig,
    /// Settings of every secure connection (the expected remote key is set
    /// per dial by the driver).
    pub secure: SecureConfig,
    /// How often client topics are looked up again and server topics
    /// announced again.
    pub refresh_interval: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            swarm: SwarmConfig::default(),
            secure: SecureConfig::default(),
            refresh_interval: Duration::from_secs(10),
        }
    }
}

/// Builds a swarm driver for one identity.
pub struct SwarmBuilder {
    keypair: KeyPair,
    config: DriverConfig,
    clock: Arc<dyn Clock>,
    entropy: Box<dyn EntropySource + Send>,
    firewall: Option<Firewall>,
}

impl fmt::Debug for SwarmBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwarmBuilder")
            .field("keypair", &self.keypair)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SwarmBuilder {
    /// A builder with default settings, the system clock and OS entropy.
    pub fn new(keypair: KeyPair) -> Self {
        Self {
            keypair,
            config: DriverConfig::default(),
            clock: Arc::new(SystemClock),
            entropy: Box::new(OsEntropy),
            firewall: None,
        }
    }

    /// Sets the driver's settings.
    pub fn config(mut self, config: DriverConfig) -> Self {
        self.config = config;
        self
    }

    /// Injects the clock (timers for backoff, refresh and every connection).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Injects the randomness used for handshakes.
    pub fn entropy(mut self, entropy: Box<dyn EntropySource + Send>) -> Self {
        self.entropy = entropy;
        self
    }

    /// Installs a firewall: it sees every proven remote key before its
    /// connection is handed out, and refuses it by returning `false`.
    pub fn firewall(mut self, firewall: impl FnMut(&PublicKey) -> bool + Send + 'static) -> Self {
        self.firewall = Some(Box::new(firewall));
        self
    }

    /// Listens on `addr` with `transport` and builds the driver. The
    /// listener's actual address (e.g. the port picked for port 0) is what
    /// gets announced, so bind to an address peers can reach.
    pub async fn bind<T, D>(
        self,
        transport: T,
        discovery: D,
        addr: &T::Address,
    ) -> io::Result<(SwarmHandle, Connections<T::Stream>, SwarmDriver)>
    where
        T: Transport + 'static,
        T::Listener: 'static,
        D: Discovery<Address = T::Address> + 'static,
    {
        let listener = transport.listen(addr).await?;
        let local_addr = listener.local_addr()?;
        let local = self.keypair.public_key();
        let mut swarm = Swarm::new(local, self.config.swarm.clone());
        if let Some(firewall) = self.firewall {
            swarm.set_firewall(firewall);
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded();
        let (conn_tx, conn_rx) = mpsc::unbounded();
        let (ended_tx, ended_rx) = mpsc::unbounded();
        let (incoming_tx, incoming_rx) = mpsc::unbounded();
        let inner = Inner {
            keypair: Arc::new(self.keypair),
            local_addr: local_addr.clone(),
            transport: Arc::new(transport),
            discovery: Arc::new(discovery),
            config: self.config,
            clock: self.clock.clone(),
            entropy: self.entropy,
            swarm,
            commands: cmd_rx,
            incoming: incoming_rx,
            handshakes: FuturesUnordered::new(),
            established: HashMap::new(),
            handed_out: HashMap::new(),
            conn_tx,
            ended_tx,
            ended_rx,
            discovery_queue: VecDeque::new(),
            discovery_op: None,
            announced: BTreeSet::new(),
            client_keys: BTreeSet::new(),
            next_refresh: None,
            timer: None,
            shutting_down: false,
        };
        let acceptor = accept_loop(listener, incoming_tx, self.clock);
        let handle = SwarmHandle {
            commands: cmd_tx,
            local,
            local_addr: format!("{local_addr:?}"),
        };
        let driver = SwarmDriver {
            future: Box::pin(run(inner, acceptor)),
        };
        Ok((handle, Connections { inner: conn_rx }, driver))
    }
}

async fn accept_loop<L: Listener>(
    mut listener: L,
    incoming: mpsc::UnboundedSender<L::Stream>,
    clock: Arc<dyn Clock>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if incoming.unbounded_send(stream).is_err() {
                    return;
                }
            }
            // Out of file descriptors and the like: try again a bit later
            // rather than spin or stop listening for good.
            Err(_) => clock.sleep_until(clock.now() + ACCEPT_ERROR_PAUSE).await,
        }
    }
}

/// Pause after a failed `accept`.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

async fn run<T, D, A>(inner: Inner<T, D>, acceptor: A)
where
    T: Transport + 'static,
    D: Discovery<Address = T::Address> + 'static,
    A: Future<Output = ()>,
{
    let mut inner = inner;
    let main = futures::future::poll_fn(move |cx| inner.poll(cx));
    futures::pin_mut!(acceptor);
    futures::pin_mut!(main);
    // The acceptor never ends on its own: the driver ends with `main`.
    futures::future::select(main, acceptor).await;
}

/// The future that runs a swarm. It finishes once every [`SwarmHandle`] is
/// dropped (after withdrawing its announcements).
pub struct SwarmDriver {
    future: BoxFuture<'static, ()>,
}

impl fmt::Debug for SwarmDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwarmDriver").finish_non_exhaustive()
    }
}

impl Future for SwarmDriver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

enum Command {
    Join(Topic, JoinMode),
    Leave(Topic),
    Ban(PublicKey),
    Unban(PublicKey),
    Refresh,
    Peers(oneshot::Sender<Vec<PublicKey>>),
}

/// Controls a running swarm driver. Clones control the same driver; the
/// driver stops once all of them are dropped.
#[derive(Clone)]
pub struct SwarmHandle {
    commands: mpsc::UnboundedSender<Command>,
    local: PublicKey,
    local_addr: String,
}

impl fmt::Debug for SwarmHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwarmHandle")
            .field("local", &self.local)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// The driver has stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the swarm driver has stopped")]
pub struct DriverStopped;

impl SwarmHandle {
    fn send(&self, command: Command) -> Result<(), DriverStopped> {
        self.commands
            .unbounded_send(command)
            .map_err(|_| DriverStopped)
    }

    /// Our public key.
    pub fn public_key(&self) -> PublicKey {
        self.local
    }

    /// The listening address, as its `Debug` form (for logs).
    pub fn local_addr(&self) -> &str {
        &self.local_addr
    }

    /// Joins a topic (or changes how we take part in it).
    pub fn join(&self, topic: &Topic, mode: JoinMode) -> Result<(), DriverStopped> {
        self.send(Command::Join(*topic, mode))
    }

    /// Leaves a topic: stops announcing it and dialing peers found through
    /// it. Existing connections stay.
    pub fn leave(&self, topic: &Topic) -> Result<(), DriverStopped> {
        self.send(Command::Leave(*topic))
    }

    /// Bans a peer and closes its connections.
    pub fn ban(&self, peer: PublicKey) -> Result<(), DriverStopped> {
        self.send(Command::Ban(peer))
    }

    /// Lifts a ban.
    pub fn unban(&self, peer: PublicKey) -> Result<(), DriverStopped> {
        self.send(Command::Unban(peer))
    }

    /// Looks up client topics and re-announces server topics now.
    pub fn refresh(&self) -> Result<(), DriverStopped> {
        self.send(Command::Refresh)
    }

    /// The peers with a connection handed out right now, in key order.
    pub async fn connected_peers(&self) -> Result<Vec<PublicKey>, DriverStopped> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Peers(tx))?;
        rx.await.map_err(|_| DriverStopped)
    }
}

/// The stream of connections handed out by the swarm rules. Ends when the
/// driver stops.
pub struct Connections<S> {
    inner: mpsc::UnboundedReceiver<PeerConnection<S>>,
}

impl<S> fmt::Debug for Connections<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

impl<S> Stream for Connections<S> {
    type Item = PeerConnection<S>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// An established connection to a proven peer: a `futures` [`Stream`] of
/// received frames and a [`Sink`] of frames to send, with `io::Error`s (the
/// shape replication protocols take).
///
/// It ends (the stream yields `None`, the sink fails) when the peer closes
/// it, when it fails, or when the swarm rules close it (a duplicate, a ban).
/// The driver learns that it ended, or that it was dropped, and reconnects
/// to the peer with backoff while the peer is still wanted.
pub struct PeerConnection<S> {
    stream: SecureStream<S>,
    id: ConnectionId,
    peer: PublicKey,
    direction: Direction,
    handshake_hash: HandshakeHash,
    close: oneshot::Receiver<CloseReason>,
    closed: Option<CloseReason>,
    ended: Option<mpsc::UnboundedSender<ConnectionId>>,
}

impl<S> fmt::Debug for PeerConnection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConnection")
            .field("peer", &self.peer)
            .field("direction", &self.direction)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl<S> PeerConnection<S> {
    /// The remote peer's proven public key.
    pub fn remote_public_key(&self) -> PublicKey {
        self.peer
    }

    /// The Noise handshake hash both sides share (bind capabilities to it).
    pub fn handshake_hash(&self) -> HandshakeHash {
        self.handshake_hash
    }

    /// Who dialed.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Whether we dialed (the replication "initiator").
    pub fn is_initiator(&self) -> bool {
        self.direction == Direction::Outbound
    }

    /// Why the swarm rules closed this connection, if they did.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    fn notify_ended(&mut self) {
        if let Some(tx) = self.ended.take() {
            // The driver may be gone already; nothing to tell then.
            let _ = tx.unbounded_send(self.id);
        }
    }

    /// True once the swarm rules asked to close this connection.
    fn poll_closed(&mut self, cx: &mut Context<'_>) -> bool {
        if self.closed.is_none() {
            if let Poll::Ready(Ok(reason)) = self.close.poll_unpin(cx) {
                self.closed = Some(reason);
            }
        }
        self.closed.is_some()
    }
}

impl<S> Drop for PeerConnection<S> {
    fn drop(&mut self) {
        self.notify_ended();
    }
}

fn to_io(error: StreamError) -> io::Error {
    match error {
        StreamError::Io(e) => e,
        StreamError::Secure(SecureError::Closed) => io::ErrorKind::NotConnected.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

fn closed_error(reason: CloseReason) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("closed by the swarm rules: {reason:?}"),
    )
}

impl<S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin> Stream for PeerConnection<S> {
    type Item = io::Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.poll_closed(cx) {
            this.notify_ended();
            return Poll::Ready(None);
        }
        match this.stream.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(e))) => {
                this.notify_ended();
                Poll::Ready(Some(Err(to_io(e))))
            }
            Poll::Ready(None) => {
                this.notify_ended();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: futures::io::AsyncRead + futures::io::AsyncWrite + Unpin> Sink<Vec<u8>>
    for PeerConnection<S>
{
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_closed(cx) {
            this.notify_ended();
            return Poll::Ready(Err(closed_error(
                this.closed.unwrap_or(CloseReason::Duplicate),
            )));
        }
        Pin::new(&mut this.stream).poll_ready(cx).map_err(to_io)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Vec<u8>) -> io::Result<()> {
        if let Some(reason) = self.closed {
            return Err(closed_error(reason));
        }
        Pin::new(&mut self.stream).start_send(frame).map_err(to_io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx).map_err(to_io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx).map_err(to_io)
    }
}

enum DiscoveryOp<A> {
    Announce(DiscoveryKey, A),
    Unannounce(DiscoveryKey),
    Lookup(DiscoveryKey),
}

type LookupResult<A> = Option<(DiscoveryKey, Result<Vec<(PublicKey, A)>, DiscoveryError>)>;

type Handshake<S> = BoxFuture<
    'static,
    (
        ConnectionId,
        Direction,
        Result<SecureStream<S>, StreamError>,
    ),
>;

struct Inner<T: Transport, D: Discovery> {
    keypair: Arc<KeyPair>,
    local_addr: T::Address,
    transport: Arc<T>,
    discovery: Arc<D>,
    config: DriverConfig,
    clock: Arc<dyn Clock>,
    entropy: Box<dyn EntropySource + Send>,
    swarm: Swarm<T::Address>,
    commands: mpsc::UnboundedReceiver<Command>,
    incoming: mpsc::UnboundedReceiver<T::Stream>,
    handshakes: FuturesUnordered<Handshake<T::Stream>>,
    /// Handshake done, waiting for the rules' verdict.
    established: HashMap<ConnectionId, (SecureStream<T::Stream>, Direction)>,
    /// Handed to the application; the sender closes it on the rules' order.
    handed_out: HashMap<ConnectionId, (PublicKey, oneshot::Sender<CloseReason>)>,
    conn_tx: mpsc::UnboundedSender<PeerConnection<T::Stream>>,
    ended_tx: mpsc::UnboundedSender<ConnectionId>,
    ended_rx: mpsc::UnboundedReceiver<ConnectionId>,
    discovery_queue: VecDeque<DiscoveryOp<T::Address>>,
    discovery_op: Option<BoxFuture<'static, LookupResult<T::Address>>>,
    announced: BTreeSet<DiscoveryKey>,
    client_keys: BTreeSet<DiscoveryKey>,
    next_refresh: Option<Instant>,
    timer: Option<(Instant, Sleep)>,
    shutting_down: bool,
}

impl<T, D> Inner<T, D>
where
    T: Transport + 'static,
    D: Discovery<Address = T::Address> + 'static,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut progress = false;
            if !self.shutting_down {
                while let Poll::Ready(command) = self.commands.poll_next_unpin(cx) {
                    progress = true;
                    match command {
                        Some(command) => self.on_command(command),
                        None => {
                            self.begin_shutdown();
                            break;
                        }
                    }
                }
            }
            while let Poll::Ready(Some(io)) = self.incoming.poll_next_unpin(cx) {
                progress = true;
                if self.shutting_down {
                    continue;
                }
                let conn = self.swarm.handle_incoming();
                self.start_handshake(conn, Direction::Inbound, None, async move { Ok(io) });
            }
            while let Poll::Ready(Some((conn, direction, result))) =
                self.handshakes.poll_next_unpin(cx)
            {
                progress = true;
                self.on_handshake(conn, direction, result);
            }
            while let Poll::Ready(Some(conn)) = self.ended_rx.poll_next_unpin(cx) {
                progress = true;
                if self.handed_out.remove(&conn).is_some() {
                    self.swarm.handle_closed(conn, self.clock.now());
                }
            }
            progress |= self.poll_discovery(cx);
            progress |= self.poll_timer(cx);
            progress |= self.perform_actions();
            if self.shutting_down && self.discovery_op.is_none() && self.discovery_queue.is_empty()
            {
                return Poll::Ready(());
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Join(topic, mode) => {
                if mode.client {
                    self.client_keys.insert(topic.discovery_key());
                } else {
                    self.client_keys.remove(&topic.discovery_key());
                }
                self.swarm.join(&topic, mode);
                self.ensure_refresh();
            }
            Command::Leave(topic) => {
                self.client_keys.remove(&topic.discovery_key());
                self.swarm.leave(&topic);
            }
            Command::Ban(peer) => self.swarm.ban(peer),
            Command::Unban(peer) => self.swarm.unban(&peer),
            Command::Refresh => self.refresh(),
            Command::Peers(reply) => {
                let mut peers: Vec<PublicKey> = self.handed_out.values().map(|(p, _)| *p).collect();
                peers.sort();
                let _ = reply.send(peers);
            }
        }
    }

    fn ensure_refresh(&mut self) {
        if self.next_refresh.is_none() {
            self.next_refresh = Some(self.clock.now() + self.config.refresh_interval);
        }
    }

    fn refresh(&mut self) {
        self.swarm.refresh();
        for key in self.announced.clone() {
            self.discovery_queue
                .push_back(DiscoveryOp::Announce(key, self.local_addr.clone()));
        }
        self.next_refresh = Some(self.clock.now() + self.config.refresh_interval);
    }

    fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for key in std::mem::take(&mut self.announced) {
            self.discovery_queue.push_back(DiscoveryOp::Unannounce(key));
        }
    }

    fn start_handshake<F>(
        &mut self,
        conn: ConnectionId,
        direction: Direction,
        expected: Option<PublicKey>,
        io: F,
    ) where
        F: Future<Output = io::Result<T::Stream>> + Send + 'static,
    {
        let mut seed = [0u8; 32];
        let entropy_ok = self.entropy.try_fill_bytes(&mut seed).is_ok();
        let keypair = Arc::clone(&self.keypair);
        let clock = Arc::clone(&self.clock);
        let mut config = self.config.secure.clone();
        config.expected_remote = expected;
        let role = match direction {
            Direction::Outbound => Role::Initiator,
            Direction::Inbound => Role::Responder,
        };
        self.handshakes.push(Box::pin(async move {
            if !entropy_ok {
                return (
                    conn,
                    direction,
                    Err(SecureError::Entropy(crate::entropy::EntropyError).into()),
                );
            }
            let result = match io.await {
                Ok(io) => {
                    let mut entropy = SeededEntropy::new(seed);
                    SecureStream::handshake(io, role, &keypair, config, &mut entropy, clock).await
                }
                Err(e) => Err(e.into()),
            };
            (conn, direction, result)
        }));
    }

    fn on_handshake(
        &mut self,
        conn: ConnectionId,
        direction: Direction,
        result: Result<SecureStream<T::Stream>, StreamError>,
    ) {
        let now = self.clock.now();
        match result.map(|s| (s.remote_public_key(), s)) {
            Ok((Some(remote), stream)) if !self.shutting_down => {
                self.established.insert(conn, (stream, direction));
                self.swarm.handle_established(conn, remote);
            }
            _ => match direction {
                Direction::Outbound => self.swarm.handle_dial_failed(conn, now),
                Direction::Inbound => self.swarm.handle_closed(conn, now),
            },
        }
    }

    /// Carries out the rules' actions; true if there were any.
    fn perform_actions(&mut self) -> bool {
        let mut any = false;
        while let Some(action) = self.swarm.poll_action() {
            any = true;
            match action {
                SwarmAction::Announce(key) => {
                    self.announced.insert(key);
                    self.discovery_queue
                        .push_back(DiscoveryOp::Announce(key, self.local_addr.clone()));
                }
                SwarmAction::Unannounce(key) => {
                    self.announced.remove(&key);
                    self.discovery_queue.push_back(DiscoveryOp::Unannounce(key));
                }
                SwarmAction::Lookup(key) => {
                    self.discovery_queue.push_back(DiscoveryOp::Lookup(key));
                }
                SwarmAction::Dial { conn, peer, addr } => {
                    let transport = Arc::clone(&self.transport);
                    let dial = async move { transport.connect(&addr).await };
                    self.start_handshake(conn, Direction::Outbound, Some(peer), dial);
                }
                SwarmAction::Connection {
                    conn,
                    peer,
                    direction,
                } => self.hand_out(conn, peer, direction),
                SwarmAction::Close { conn, reason } => {
                    // Not yet handed out: dropping the stream closes it.
                    self.established.remove(&conn);
                    if let Some((_, close)) = self.handed_out.remove(&conn) {
                        let _ = close.send(reason);
                    }
                }
            }
        }
        any
    }

    fn hand_out(&mut self, conn: ConnectionId, peer: PublicKey, direction: Direction) {
        let Some((stream, _)) = self.established.remove(&conn) else {
            return;
        };
        let Some(handshake_hash) = stream.handshake_hash() else {
            return;
        };
        let (close_tx, close_rx) = oneshot::channel();
        let connection = PeerConnection {
            stream,
            id: conn,
            peer,
            direction,
            handshake_hash,
            close: close_rx,
            closed: None,
            ended: Some(self.ended_tx.clone()),
        };
        self.handed_out.insert(conn, (peer, close_tx));
        // If the application stopped listening, the connection is dropped
        // here and reports itself ended.
        let _ = self.conn_tx.unbounded_send(connection);
    }

    fn poll_discovery(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            if self.discovery_op.is_none() {
                let Some(op) = self.discovery_queue.pop_front() else {
                    return progress;
                };
                progress = true;
                let discovery = Arc::clone(&self.discovery);
                let local = self.keypair.public_key();
                self.discovery_op = Some(match op {
                    DiscoveryOp::Announce(key, addr) => Box::pin(async move {
                        // Failures are retried at the next refresh.
                        let _ = discovery.announce(key, local, addr).await;
                        None
                    }),
                    DiscoveryOp::Unannounce(key) => Box::pin(async move {
                        let _ = discovery.unannounce(key, local).await;
                        None
                    }),
                    DiscoveryOp::Lookup(key) => {
                        Box::pin(async move { Some((key, discovery.lookup(key).await)) })
                    }
                });
            }
            let Some(op) = self.discovery_op.as_mut() else {
                return progress;
            };
            match op.poll_unpin(cx) {
                Poll::Pending => return progress,
                Poll::Ready(result) => {
                    progress = true;
                    self.discovery_op = None;
                    if let Some((key, Ok(peers))) = result {
                        if !self.shutting_down {
                            for (peer, addr) in peers {
                                self.swarm.handle_peer_found(key, peer, addr);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Fires the backoff and refresh deadlines; true if one fired.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let mut fired = false;
        loop {
            let deadline = match (self.swarm.poll_timeout(), self.next_refresh) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(d) => d,
                    None => {
                        self.timer = None;
                        return fired;
                    }
                },
            };
            let now = self.clock.now();
            let due = if now >= deadline {
                true
            } else {
                let sleep = match &mut self.timer {
                    Some((at, sleep)) if *at == deadline => sleep,
                    slot => &mut slot.insert((deadline, self.clock.sleep_until(deadline))).1,
                };
                sleep.as_mut().poll(cx).is_ready()
            };
            if !due {
                return fired;
            }
            fired = true;
            self.timer = None;
            let now = now.max(deadline);
            self.swarm.handle_timeout(now);
            if self.next_refresh.is_some_and(|at| at <= now) {
                self.refresh();
            }
        }
    }
}
