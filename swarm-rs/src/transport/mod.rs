//! Transports: how byte streams between peers are made.
//!
//! Everything above a transport (handshake, framing, channels) works over
//! any `AsyncRead + AsyncWrite`; this module holds the stream sources.

mod pipe;

pub use pipe::{duplex, PipeStream};
