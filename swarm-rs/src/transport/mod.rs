//! Transports: how byte streams between peers are made.
//!
//! Everything above a transport (handshake, framing, channels) works over
//! any `AsyncRead + AsyncWrite`; a [`Transport`] only dials and listens.
//! Implementations: [`MemoryTransport`] (deterministic, in-process) and
//! [`TcpTransport`] (runtime-neutral TCP via `async-net`). Failures are
//! `std::io::Error`s with the usual kinds (`ConnectionRefused`,
//! `AddrInUse`, ...), like the operating system's.

use std::fmt::Debug;
use std::io;

use async_trait::async_trait;
use futures::io::{AsyncRead, AsyncWrite};

mod memory;
mod pipe;
mod tcp;

pub use memory::{DialFaults, HostId, MemoryAddr, MemoryListener, MemoryNetwork, MemoryTransport};
pub use pipe::{duplex, PipeStream};
pub use tcp::{TcpListener, TcpTransport};

/// Dials and listens for byte streams.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Where a listener can be reached.
    type Address: Clone + Debug + Send + Sync + 'static;
    /// A connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts incoming streams.
    type Listener: Listener<Address = Self::Address, Stream = Self::Stream>;

    /// Starts listening on `addr`.
    async fn listen(&self, addr: &Self::Address) -> io::Result<Self::Listener>;

    /// Connects to a listener at `addr`.
    async fn connect(&self, addr: &Self::Address) -> io::Result<Self::Stream>;
}

/// The accepting side of a [`Transport`].
#[async_trait]
pub trait Listener: Send {
    /// Address type of the transport.
    type Address: Clone + Debug + Send + Sync + 'static;
    /// Stream type of the transport.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The address peers can connect to.
    fn local_addr(&self) -> io::Result<Self::Address>;

    /// Waits for the next incoming stream and the dialer's address.
    async fn accept(&mut self) -> io::Result<(Self::Stream, Self::Address)>;
}
