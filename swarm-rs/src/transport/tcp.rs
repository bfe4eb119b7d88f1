//! TCP through `async-net`, whose reactor runs on its own thread, so this
//! works under any executor (or `futures::executor::block_on`).

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;

use super::{Listener, Transport};

/// Dials and listens over TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

/// A bound TCP listener.
#[derive(Debug)]
pub struct TcpListener {
    inner: async_net::TcpListener,
}

#[async_trait]
impl Transport for TcpTransport {
    type Address = SocketAddr;
    type Stream = async_net::TcpStream;
    type Listener = TcpListener;

    async fn listen(&self, addr: &SocketAddr) -> io::Result<TcpListener> {
        Ok(TcpListener {
            inner: async_net::TcpListener::bind(*addr).await?,
        })
    }

    async fn connect(&self, addr: &SocketAddr) -> io::Result<async_net::TcpStream> {
        let stream = async_net::TcpStream::connect(*addr).await?;
        // Frames are written whole; do not wait to coalesce them.
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

#[async_trait]
impl Listener for TcpListener {
    type Address = SocketAddr;
    type Stream = async_net::TcpStream;

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(async_net::TcpStream, SocketAddr)> {
        let (stream, addr) = self.inner.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, addr))
    }
}
