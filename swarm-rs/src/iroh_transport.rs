//! Connections by ed25519 public key through [iroh](https://docs.rs/iroh)
//! (QUIC, hole punching, relays), behind the non-default feature `iroh`,
//! exposed through the same [`Transport`] trait as TCP and memory.
//!
//! The iroh endpoint's secret key is this peer's ed25519 identity seed, so
//! the iroh endpoint id *is* the swarm-rs [`PublicKey`]: dialing an
//! [`EndpointAddr`] whose id is not the listener's key fails in the QUIC
//! (TLS raw public key) handshake. iroh needs a tokio runtime, so an
//! [`IrohTransport`] owns one (one worker thread); connects and accepts run
//! on it and are awaited through join handles and channels, and the streams
//! are polled from any executor. This is the only place tokio is used
//! outside tests.
//!
//! One [`Transport::connect`] is one QUIC connection with one bidirectional
//! stream. QUIC opens a stream lazily: the listener sees the stream once the
//! dialer has written its first bytes (the Noise initiator always writes
//! first).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ::iroh::endpoint::{presets, Connection, RecvStream, SendStream};
use ::iroh::{Endpoint, SecretKey};
use async_trait::async_trait;
use futures::channel::mpsc;
use futures::io::{AsyncRead, AsyncWrite};
use futures::StreamExt;

pub use ::iroh::{EndpointAddr, EndpointId, RelayMode, RelayUrl, TransportAddr};

use crate::discovery::DirAddress;
use crate::identity::{KeyPair, PublicKey};
use crate::transport::{Listener, Transport};

/// ALPN of swarm-rs connections over iroh.
pub const ALPN: &[u8] = b"swarm-rs/iroh/1";

/// Accepted streams a listener buffers before it stops taking new ones.
const ACCEPT_BACKLOG: usize = 64;

/// How an [`IrohTransport`] binds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IrohConfig {
    /// Relay servers (`RelayMode::Disabled` for direct addresses only).
    pub relay_mode: RelayMode,
    /// Local UDP addresses to bind (empty: iroh's defaults).
    pub bind_addrs: Vec<SocketAddr>,
}

impl IrohConfig {
    /// Direct connections only (no relay, no address lookup), bound to
    /// `addr`; e.g. `127.0.0.1:0` for tests on loopback.
    pub fn direct(addr: SocketAddr) -> Self {
        Self {
            relay_mode: RelayMode::Disabled,
            bind_addrs: vec![addr],
        }
    }

    /// Uses `relay_mode` (e.g. `RelayMode::Default`, iroh's public relays).
    pub fn with_relay_mode(mut self, relay_mode: RelayMode) -> Self {
        self.relay_mode = relay_mode;
        self
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The swarm-rs identity an iroh endpoint id stands for.
pub fn public_key_of(id: &EndpointId) -> io::Result<PublicKey> {
    PublicKey::from_bytes(*id.as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The iroh endpoint id of a swarm-rs identity.
pub fn endpoint_id_of(key: &PublicKey) -> io::Result<EndpointId> {
    EndpointId::from_bytes(key.as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Most transport addresses read back from a [`DirDiscovery`](crate::DirDiscovery)
/// file for one endpoint.
const MAX_DIR_ADDRS: usize = 16;

/// In a [`DirDiscovery`](crate::DirDiscovery) file: the endpoint id in hex,
/// then its direct addresses (`ip:HOST:PORT`) and relays (`relay:URL`),
/// separated by spaces. Custom transport addresses are left out.
impl DirAddress for EndpointAddr {
    fn to_text(&self) -> String {
        let mut text: String = self
            .id
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        for addr in &self.addrs {
            match addr {
                TransportAddr::Ip(ip) => text.push_str(&format!(" ip:{ip}")),
                TransportAddr::Relay(url) => text.push_str(&format!(" relay:{url}")),
                _ => {}
            }
        }
        text
    }

    fn from_text(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let id: PublicKey = words.next()?.parse().ok()?;
        let id = endpoint_id_of(&id).ok()?;
        let mut addrs = Vec::new();
        for word in words.take(MAX_DIR_ADDRS) {
            if let Some(ip) = word.strip_prefix("ip:") {
                addrs.push(TransportAddr::Ip(ip.parse().ok()?));
            } else if let Some(url) = word.strip_prefix("relay:") {
                addrs.push(TransportAddr::Relay(url.parse().ok()?));
            } else {
                return None;
            }
        }
        Some(EndpointAddr::from_parts(id, addrs))
    }
}

/// Builds and binds the endpoint on `runtime` (blocks until bound).
fn bind_endpoint(
    runtime: &tokio::runtime::Runtime,
    secret: SecretKey,
    config: IrohConfig,
) -> io::Result<Endpoint> {
    runtime.block_on(async move {
        let mut builder = Endpoint::builder(presets::Minimal)
            .secret_key(secret)
            .alpns(vec![ALPN.to_vec()])
            .relay_mode(config.relay_mode);
        if !config.bind_addrs.is_empty() {
            builder = builder.clear_ip_transports();
            for addr in config.bind_addrs {
                builder = builder.bind_addr(addr).map_err(other)?;
            }
        }
        builder.bind().await.map_err(other)
    })
}

/// An iroh endpoint keyed by this peer's identity.
#[derive(Debug)]
pub struct IrohTransport {
    /// Always `Some` until dropped (taken to shut down without blocking).
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    endpoint: Endpoint,
}

impl IrohTransport {
    /// Binds an endpoint whose id is `keypair`'s public key. Blocks the
    /// calling thread while binding (briefly: no network round trip with
    /// direct addresses only), so prefer calling it outside async code. It
    /// also works from inside a tokio runtime: there it binds from a helper
    /// thread, since tokio refuses to block a runtime's thread.
    pub fn bind(keypair: &KeyPair, config: IrohConfig) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("swarm-rs-iroh")
            .enable_all()
            .build()?;
        let secret = SecretKey::from_bytes(&keypair.seed());
        let bound = if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|scope| {
                let helper = std::thread::Builder::new()
                    .name("swarm-rs-iroh-bind".into())
                    .spawn_scoped(scope, || bind_endpoint(&runtime, secret, config))?;
                helper
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the iroh bind thread panicked")))
            })
        } else {
            bind_endpoint(&runtime, secret, config)
        };
        let endpoint = match bound {
            Ok(endpoint) => endpoint,
            Err(e) => {
                // Dropping a runtime blocks (and panics inside async code).
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
            endpoint,
        })
    }

    /// This endpoint's address (id, direct addresses, relay).
    pub fn local_addr(&self) -> EndpointAddr {
        self.endpoint.addr()
    }

    /// The identity this endpoint is reachable by.
    pub fn public_key(&self) -> io::Result<PublicKey> {
        public_key_of(&self.endpoint.id())
    }
}

/// How long dropping an [`IrohTransport`] waits for its peers to
/// acknowledge that its connections are closed.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Dropping the transport closes every connection it made or accepted
/// (streams already handed out end with an error). Outside a tokio runtime
/// it first tells the peers, waiting at most 1 s for them to acknowledge,
/// so they see the connections end at once instead of after their idle
/// timeout; on a tokio runtime's thread, where blocking is not allowed, it
/// does not wait and the peers time out.
impl Drop for IrohTransport {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_err() {
                let endpoint = self.endpoint.clone();
                runtime.block_on(async move {
                    let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.close()).await;
                });
            }
            // Dropping a runtime blocks; this does not (and works inside async code).
            runtime.shutdown_background();
        }
    }
}

/// How long a dropped stream keeps its connection open for the peer to
/// acknowledge the data still in flight (dropping a QUIC connection at once
/// would discard it, unlike closing a TCP socket).
const LINGER: Duration = Duration::from_secs(10);

/// A bidirectional iroh stream (and its connection, kept open).
///
/// Closing it finishes the send side; dropping it also finishes it and
/// keeps the connection open in the background until the peer has
/// acknowledged the data sent (at most 10 s).
#[derive(Debug)]
pub struct IrohStream {
    /// Always `Some` until dropped.
    send: Option<SendStream>,
    recv: RecvStream,
    conn: Connection,
    handle: tokio::runtime::Handle,
}

impl Drop for IrohStream {
    fn drop(&mut self) {
        if let Some(mut send) = self.send.take() {
            let conn = self.conn.clone();
            // An error only says it was finished or reset before.
            let _ = send.finish();
            self.handle.spawn(async move {
                let _ = tokio::time::timeout(LINGER, send.stopped()).await;
                drop(conn);
            });
        }
    }
}

fn dropped() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl IrohStream {
    fn new(
        send: SendStream,
        recv: RecvStream,
        conn: Connection,
        handle: tokio::runtime::Handle,
    ) -> Self {
        Self {
            send: Some(send),
            recv,
            conn,
            handle,
        }
    }

    /// The identity of the peer at the other end (checked by QUIC's TLS).
    pub fn remote_public_key(&self) -> io::Result<PublicKey> {
        public_key_of(&self.conn.remote_id())
    }
}

impl AsyncRead for IrohStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut read = tokio::io::ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.recv), cx, &mut read) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for IrohStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.send.as_mut() {
            Some(send) => tokio::io::AsyncWrite::poll_write(Pin::new(send), cx, buf),
            None => Poll::Ready(Err(dropped())),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.send.as_mut() {
            Some(send) => tokio::io::AsyncWrite::poll_flush(Pin::new(send), cx),
            None => Poll::Ready(Err(dropped())),
        }
    }
    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.send.as_mut() {
            // Idempotent: an error only says it was finished or reset before.
            Some(send) => {
                let _ = send.finish();
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Err(dropped())),
        }
    }
}

/// Accepts connections on an [`IrohTransport`]'s endpoint. A background
/// task on the transport's runtime takes incoming connections, each
/// handshake in its own task (a slow or failing peer costs only itself);
/// dropping the listener stops it.
#[derive(Debug)]
pub struct IrohListener {
    addr: EndpointAddr,
    incoming: mpsc::Receiver<(IrohStream, EndpointAddr)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IrohListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    tx: mpsc::Sender<(IrohStream, EndpointAddr)>,
    handle: tokio::runtime::Handle,
) {
    let mut handshakes = tokio::task::JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        // Reap finished handshake tasks so the set stays small.
        while handshakes.try_join_next().is_some() {}
        let mut sender = tx.clone();
        let handle = handle.clone();
        handshakes.spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok((send, recv)) = conn.accept_bi().await else {
                return;
            };
            let remote = EndpointAddr::new(conn.remote_id());
            let stream = IrohStream::new(send, recv, conn, handle);
            // A full backlog or a dropped listener refuses this peer.
            let _ = sender.try_send((stream, remote));
        });
        if tx.is_closed() {
            break;
        }
    }
}

#[async_trait]
impl Transport for IrohTransport {
    type Address = EndpointAddr;
    type Stream = IrohStream;
    type Listener = IrohListener;

    /// Starts accepting on this endpoint; `addr.id` must be this endpoint's
    /// id (its direct addresses are ignored: the endpoint is already bound).
    async fn listen(&self, addr: &EndpointAddr) -> io::Result<IrohListener> {
        if addr.id != self.endpoint.id() {
            return Err(io::ErrorKind::AddrNotAvailable.into());
        }
        let (tx, incoming) = mpsc::channel(ACCEPT_BACKLOG);
        let task = self
            .handle
            .spawn(accept_loop(self.endpoint.clone(), tx, self.handle.clone()));
        Ok(IrohListener {
            addr: self.endpoint.addr(),
            incoming,
            task,
        })
    }

    /// Connects to the endpoint `addr.id` (at `addr`'s direct addresses or
    /// relay); fails unless the peer proves it holds that key.
    async fn connect(&self, addr: &EndpointAddr) -> io::Result<IrohStream> {
        let endpoint = self.endpoint.clone();
        let addr = addr.clone();
        let handle = self.handle.clone();
        self.handle
            .spawn(async move {
                let conn = endpoint
                    .connect(addr, ALPN)
                    .await
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?;
                let (send, recv) = conn.open_bi().await.map_err(other)?;
                Ok(IrohStream::new(send, recv, conn, handle))
            })
            .await
            .map_err(other)?
    }
}

#[async_trait]
impl Listener for IrohListener {
    type Address = EndpointAddr;
    type Stream = IrohStream;

    fn local_addr(&self) -> io::Result<EndpointAddr> {
        Ok(self.addr.clone())
    }

    async fn accept(&mut self) -> io::Result<(IrohStream, EndpointAddr)> {
        self.incoming
            .next()
            .await
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}
