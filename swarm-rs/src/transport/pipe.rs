//! An in-memory, bounded, bidirectional byte pipe implementing
//! `AsyncRead + AsyncWrite`, for tests and the in-memory transport.
//!
//! Each direction is a bounded buffer: writers wait (are woken later) when it
//! is full, readers when it is empty. Closing or dropping one end is seen by
//! the other as end-of-stream (reads) or a broken pipe (writes).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use futures::io::{AsyncRead, AsyncWrite};

#[derive(Debug, Default)]
struct Direction {
    buf: VecDeque<u8>,
    capacity: usize,
    writer_closed: bool,
    reader_closed: bool,
    /// Cut by a simulated network fault: both ends see a reset.
    severed: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

#[derive(Debug, Clone)]
struct Shared(Arc<Mutex<Direction>>);

impl Shared {
    fn new(capacity: usize) -> Self {
        Self(Arc::new(Mutex::new(Direction {
            capacity: capacity.max(1),
            ..Direction::default()
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Direction> {
        lock(&self.0)
    }
}

fn lock(direction: &Mutex<Direction>) -> MutexGuard<'_, Direction> {
    // A panic elsewhere cannot leave a byte buffer inconsistent.
    direction
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A handle that can cut a pipe without keeping it alive.
#[derive(Debug, Clone)]
pub(crate) struct Severer {
    directions: [Weak<Mutex<Direction>>; 2],
}

impl Severer {
    /// Cuts both directions: pending and future reads and writes fail with
    /// `ConnectionReset`.
    pub(crate) fn sever(&self) {
        for direction in self.directions.iter().filter_map(Weak::upgrade) {
            let mut dir = lock(&direction);
            dir.severed = true;
            dir.buf.clear();
            if let Some(waker) = dir.read_waker.take() {
                waker.wake();
            }
            if let Some(waker) = dir.write_waker.take() {
                waker.wake();
            }
        }
    }

    /// True while either end of the pipe exists.
    pub(crate) fn is_alive(&self) -> bool {
        self.directions.iter().any(|d| d.strong_count() > 0)
    }
}

/// One end of an in-memory duplex pipe. See [`duplex`].
#[derive(Debug)]
pub struct PipeStream {
    incoming: Shared,
    outgoing: Shared,
}

/// Creates a connected pair of pipe ends; each direction buffers at most
/// `capacity` bytes.
pub fn duplex(capacity: usize) -> (PipeStream, PipeStream) {
    let (a, b, _) = duplex_with_severer(capacity);
    (a, b)
}

pub(crate) fn duplex_with_severer(capacity: usize) -> (PipeStream, PipeStream, Severer) {
    let a_to_b = Shared::new(capacity);
    let b_to_a = Shared::new(capacity);
    let severer = Severer {
        directions: [Arc::downgrade(&a_to_b.0), Arc::downgrade(&b_to_a.0)],
    };
    (
        PipeStream {
            incoming: b_to_a.clone(),
            outgoing: a_to_b.clone(),
        },
        PipeStream {
            incoming: a_to_b,
            outgoing: b_to_a,
        },
        severer,
    )
}

impl AsyncRead for PipeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut dir = self.incoming.lock();
        if dir.severed {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if dir.buf.is_empty() {
            if dir.writer_closed {
                return Poll::Ready(Ok(0));
            }
            dir.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = out.len().min(dir.buf.len());
        for (slot, byte) in out.iter_mut().zip(dir.buf.drain(..n)) {
            *slot = byte;
        }
        if let Some(waker) = dir.write_waker.take() {
            waker.wake();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for PipeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut dir = self.outgoing.lock();
        if dir.severed {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        if dir.reader_closed || dir.writer_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let space = dir.capacity.saturating_sub(dir.buf.len());
        if space == 0 {
            dir.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = space.min(data.len());
        dir.buf.extend(&data[..n]);
        if let Some(waker) = dir.read_waker.take() {
            waker.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut dir = self.outgoing.lock();
        dir.writer_closed = true;
        if let Some(waker) = dir.read_waker.take() {
            waker.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for PipeStream {
    fn drop(&mut self) {
        {
            let mut out = self.outgoing.lock();
            out.writer_closed = true;
            if let Some(waker) = out.read_waker.take() {
                waker.wake();
            }
        }
        let mut inc = self.incoming.lock();
        inc.reader_closed = true;
        if let Some(waker) = inc.write_waker.take() {
            waker.wake();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bytes_flow_both_ways_through_a_small_buffer() {
        let (mut a, mut b) = duplex(7);
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let expected = data.clone();
        let writer = async move {
            a.write_all(&data).await.unwrap();
            a.close().await.unwrap();
            let mut back = Vec::new();
            a.read_to_end(&mut back).await.unwrap();
            back
        };
        let reader = async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            b.write_all(b"done").await.unwrap();
            drop(b);
            got
        };
        let (back, got) = block_on(futures::future::join(writer, reader));
        assert_eq!(got, expected);
        assert_eq!(back, b"done");
    }

    #[test]
    fn writing_to_a_dropped_end_is_a_broken_pipe() {
        let (mut a, b) = duplex(16);
        drop(b);
        let err = block_on(a.write_all(b"x")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
