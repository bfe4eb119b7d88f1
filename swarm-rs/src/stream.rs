//! An async adapter running a [`SecureConnection`] over any
//! `AsyncRead + AsyncWrite` byte stream.
//!
//! [`SecureStream::handshake`] performs the handshake (bounded by the
//! handshake timeout); afterwards the stream is a `futures` [`Stream`] of
//! received frames and a [`Sink`] of frames to send. Keep-alives and the idle
//! timeout run while the stream is polled. Only `futures` traits and an
//! injected [`Clock`] are used: no executor is assumed.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures::io::{AsyncRead, AsyncWrite};
use futures::{Sink, Stream};
use thiserror::Error;

use crate::clock::{Clock, Sleep};
use crate::entropy::EntropySource;
use crate::identity::{KeyPair, PublicKey};
use crate::secure::{
    HandshakeHash, Role, SecureConfig, SecureConnection, SecureError, SecureEvent,
};

/// Least room offered to one read from the underlying stream (reads go
/// straight into the connection's input buffer, which is usually larger).
const READ_MIN: usize = 16 * 1024;
/// `poll_ready` flushes first when this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 128 * 1024;

/// Errors of a [`SecureStream`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The underlying byte stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The secure protocol failed (bad peer, timeout, ...).
    #[error(transparent)]
    Secure(#[from] SecureError),
    /// The peer closed the stream before the handshake completed.
    #[error("stream ended during the handshake")]
    EndOfStreamInHandshake,
}

/// An authenticated, encrypted, framed connection over `S`.
pub struct SecureStream<S> {
    io: S,
    conn: SecureConnection,
    clock: Arc<dyn Clock>,
    sleep: Option<(Instant, Sleep)>,
    inbox: VecDeque<Vec<u8>>,
    remote: Option<(PublicKey, HandshakeHash)>,
    read_closed: bool,
    write_closed: bool,
    failed: bool,
}

impl<S> fmt::Debug for SecureStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureStream")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SecureStream<S> {
    /// Runs the handshake over `io` and returns the established stream.
    ///
    /// The key pair and the entropy are used right away, before the returned
    /// future is first polled; the future borrows neither (so it is `Send`
    /// and `'static` whenever `S` is).
    pub fn handshake(
        io: S,
        role: Role,
        keypair: &KeyPair,
        config: SecureConfig,
        entropy: &mut dyn EntropySource,
        clock: Arc<dyn Clock>,
    ) -> impl Future<Output = Result<Self, StreamError>> {
        let conn = SecureConnection::new(role, keypair, config, entropy, clock.now());
        async move { Self::finish_handshake(io, conn?, clock).await }
    }

    async fn finish_handshake(
        io: S,
        conn: SecureConnection,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StreamError> {
        let mut stream = Self {
            io,
            conn,
            clock,
            sleep: None,
            inbox: VecDeque::new(),
            remote: None,
            read_closed: false,
            write_closed: false,
            failed: false,
        };
        futures::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The peer's proven identity.
    pub fn remote_public_key(&self) -> Option<PublicKey> {
        self.remote.map(|(key, _)| key)
    }

    /// The handshake hash shared with the peer.
    pub fn handshake_hash(&self) -> Option<HandshakeHash> {
        self.remote.map(|(_, hash)| hash)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamError>> {
        loop {
            self.poll_timer(cx)?;
            let written = self.poll_write_out(cx)?;
            self.drain_events();
            if self.remote.is_some() {
                // Our own identity proof must be on its way before we return.
                return written.map(Ok);
            }
            match ready!(self.poll_read_in(cx))? {
                true => continue,
                false => return Poll::Ready(Err(StreamError::EndOfStreamInHandshake)),
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                SecureEvent::Established {
                    remote,
                    handshake_hash,
                } => self.remote = Some((remote, handshake_hash)),
                SecureEvent::Message(frame) => self.inbox.push_back(frame),
            }
        }
    }

    /// Acts on expired deadlines and arms the timer for the next one.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Result<(), SecureError> {
        loop {
            let Some(deadline) = self.conn.poll_timeout() else {
                self.sleep = None;
                return Ok(());
            };
            let now = self.clock.now();
            if now >= deadline {
                self.sleep = None;
                self.conn.handle_timeout(now)?;
                continue;
            }
            // Every send moves the keep-alive deadline later. A timer armed
            // for an earlier instant is kept (it wakes us early, and we
            // re-arm then) rather than replaced by a new timer on every
            // poll (cheap with async-io, but churn for any clock).
            let (at, sleep) = match &mut self.sleep {
                Some((at, sleep)) if *at <= deadline => (*at, sleep),
                slot => {
                    let armed = slot.insert((deadline, self.clock.sleep_until(deadline)));
                    (deadline, &mut armed.1)
                }
            };
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(()) => {
                    self.sleep = None;
                    if at == deadline {
                        // The timer fired: treat the deadline as reached even
                        // if the clock disagrees slightly, so this cannot spin.
                        self.conn.handle_timeout(now.max(deadline))?;
                    }
                    // Otherwise it was armed for a deadline that has since
                    // moved later: loop to arm the new one.
                }
            }
        }
    }

    /// Writes queued bytes; ready once everything queued is written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let pending = self.conn.transmit_buf();
            if pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.conn.advance_transmit(n);
        }
    }

    /// Reads once, straight into the connection's input buffer, and feeds
    /// the connection. `Ok(false)` means end of stream.
    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, StreamError>> {
        if self.conn.is_closed() {
            return Poll::Ready(Err(SecureError::Closed.into()));
        }
        let n = ready!(Pin::new(&mut self.io).poll_read(cx, self.conn.input_buf(READ_MIN)))?;
        if n == 0 {
            return Poll::Ready(Ok(false));
        }
        self.conn.input_filled(n, self.clock.now())?;
        self.drain_events();
        Poll::Ready(Ok(true))
    }

    fn fail<T>(&mut self, error: impl Into<StreamError>) -> Poll<Option<Result<T, StreamError>>> {
        self.failed = true;
        self.conn.close();
        Poll::Ready(Some(Err(error.into())))
    }

    /// Encrypts a frame into the write buffer without waiting for room;
    /// polling the stream or the sink writes it out.
    fn queue(&mut self, frame: &[u8]) -> Result<(), StreamError> {
        if self.failed || self.write_closed {
            return Err(SecureError::Closed.into());
        }
        self.conn.send(frame, self.clock.now())?;
        Ok(())
    }

    fn pending_write(&self) -> usize {
        self.conn.pending_transmit_len()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for SecureStream<S> {
    type Item = Result<Vec<u8>, StreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(frame) = this.inbox.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.failed || this.read_closed {
                return Poll::Ready(None);
            }
            if let Err(e) = this.poll_timer(cx) {
                return this.fail(e);
            }
            // Keep-alives go out while we wait for input (unless we
            // half-closed our side).
            if !this.write_closed {
                if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                    return this.fail(e);
                }
            }
            match ready!(this.poll_read_in(cx)) {
                Ok(true) => {}
                Ok(false) => this.read_closed = true,
                Err(e) => return this.fail(e),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Vec<u8>> for SecureStream<S> {
    type Error = StreamError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.failed || this.write_closed {
            return Poll::Ready(Err(SecureError::Closed.into()));
        }
        if this.pending_write() >= WRITE_HIGH_WATER {
            ready!(this.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Vec<u8>) -> Result<(), Self::Error> {
        self.get_mut().queue(&frame)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        ready!(Pin::new(&mut this.io).poll_close(cx))?;
        // Half-close: frames from the peer can still be read.
        this.write_closed = true;
        Poll::Ready(Ok(()))
    }
}

/// Errors of a [`MuxedStream`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MuxedStreamError {
    /// The secure stream underneath failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The peer broke the channel protocol.
    #[error(transparent)]
    Mux(#[from] crate::mux::MuxError),
}

/// Channels ([`crate::mux`]) over a [`SecureStream`], driven by one task.
///
/// `open`, `send` and `close` only queue frames; [`MuxedStream::flush`]
/// writes them, and [`MuxedStream::next_event`] writes them while it waits
/// for the next channel event from the peer.
#[derive(Debug)]
pub struct MuxedStream<S> {
    stream: SecureStream<S>,
    mux: crate::mux::Mux,
    failed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MuxedStream<S> {
    /// Puts a mux on an established stream.
    pub fn new(stream: SecureStream<S>, config: crate::mux::MuxConfig) -> Self {
        Self {
            stream,
            mux: crate::mux::Mux::new(config),
            failed: false,
        }
    }

    /// The peer's proven identity.
    pub fn remote_public_key(&self) -> Option<PublicKey> {
        self.stream.remote_public_key()
    }

    /// The handshake hash shared with the peer.
    pub fn handshake_hash(&self) -> Option<HandshakeHash> {
        self.stream.handshake_hash()
    }

    /// Opens (or accepts) a channel; see [`crate::mux::Mux::open`].
    pub fn open(
        &mut self,
        protocol: &str,
        id: &[u8],
    ) -> Result<crate::mux::ChannelId, crate::mux::MuxError> {
        self.mux.open(protocol, id)
    }

    /// Queues a message on a paired channel.
    pub fn send(
        &mut self,
        channel: crate::mux::ChannelId,
        data: &[u8],
    ) -> Result<(), crate::mux::MuxError> {
        self.mux.send(channel, data)
    }

    /// Closes a channel for both sides.
    pub fn close(&mut self, channel: crate::mux::ChannelId) -> Result<(), crate::mux::MuxError> {
        self.mux.close(channel)
    }

    /// Writes every queued frame to the peer.
    pub async fn flush(&mut self) -> Result<(), MuxedStreamError> {
        use futures::SinkExt;
        while let Some(frame) = self.mux.poll_transmit() {
            self.stream.feed(frame).await?;
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Flushes, then waits for the next channel event. `None` once the peer
    /// closed the connection or after an error was returned.
    pub async fn next_event(&mut self) -> Option<Result<crate::mux::MuxEvent, MuxedStreamError>> {
        use futures::StreamExt;
        loop {
            if let Some(event) = self.mux.poll_event() {
                return Some(Ok(event));
            }
            if self.failed {
                return None;
            }
            // Queue rather than flush: waiting for our writes before reading
            // would deadlock two peers that both write more than the
            // transport buffers. Polling the stream writes while it reads.
            while let Some(frame) = self.mux.poll_transmit() {
                if let Err(e) = self.stream.queue(&frame) {
                    self.failed = true;
                    return Some(Err(e.into()));
                }
            }
            let frame = match self.stream.next().await? {
                Ok(frame) => frame,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e.into()));
                }
            };
            if let Err(e) = self.mux.handle_frame(&frame) {
                self.failed = true;
                return Some(Err(e.into()));
            }
        }
    }

    /// Flushes and closes the underlying stream.
    pub async fn shutdown(&mut self) -> Result<(), MuxedStreamError> {
        use futures::SinkExt;
        self.flush().await?;
        self.stream.close().await?;
        Ok(())
    }
}
