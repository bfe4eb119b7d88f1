//! An in-memory framed duplex for tests, examples and in-process replication.

use futures::channel::mpsc;
use futures::{Sink, Stream};
use std::pin::Pin;
use std::task::{Context, Poll};

/// One end of an in-memory duplex: a `Stream` of frames it receives and a
/// `Sink` of frames it sends.
#[derive(Debug)]
pub struct DuplexEnd {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// Two connected ends.
pub fn duplex() -> (DuplexEnd, DuplexEnd) {
    let (a_tx, b_rx) = mpsc::unbounded();
    let (b_tx, a_rx) = mpsc::unbounded();
    (
        DuplexEnd { tx: a_tx, rx: a_rx },
        DuplexEnd { tx: b_tx, rx: b_rx },
    )
}

impl Stream for DuplexEnd {
    type Item = Result<Vec<u8>, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx).map(|o| o.map(Ok))
    }
}

impl Sink<Vec<u8>> for DuplexEnd {
    type Error = std::io::Error;
    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Vec<u8>) -> Result<(), Self::Error> {
        self.tx
            .unbounded_send(item)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tx.close_channel();
        Poll::Ready(Ok(()))
    }
}
