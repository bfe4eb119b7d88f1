//! Secure streams and hypercore replication over swarm-rs TCP loopback +
//! Noise, for the criterion benches and the `compare` binary.
//!
//! For the `replication.download.tcp` figure: open a writable `source` core
//! holding the data and an empty `dest` core with `source.key()`, then
//! `block_on(ehr_benches::tcp::replicate_download(&source, &dest))` and time
//! it; it returns once `dest` holds every block of `source`, each verified.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::{Sink, SinkExt, Stream, StreamExt};
use hypercore_rs::replication::ReplicateOptions;
use hypercore_rs::Core;
use swarm_rs::{
    KeyPair, Listener, Role, SecureConfig, SecureStream, SeededEntropy, StreamError, SystemClock,
    TcpTransport, Transport,
};

/// The byte stream of [`TcpTransport`].
pub type TcpStream = <TcpTransport as Transport>::Stream;

/// A TCP listener on `127.0.0.1` with a port picked by the system.
pub async fn loopback_listener() -> io::Result<swarm_rs::transport::TcpListener> {
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    TcpTransport.listen(&addr).await
}

/// Dials `listener`, accepts, and runs both Noise handshakes concurrently:
/// returns (initiator, responder).
pub async fn secure_pair_on(
    listener: &mut swarm_rs::transport::TcpListener,
) -> Result<(SecureStream<TcpStream>, SecureStream<TcpStream>), StreamError> {
    let addr = listener.local_addr()?;
    let (alice, bob) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
    let dial = async {
        let io = TcpTransport.connect(&addr).await?;
        let config = SecureConfig::default().with_expected_remote(bob.public_key());
        let mut entropy = SeededEntropy::from_u64(1);
        SecureStream::handshake(
            io,
            Role::Initiator,
            &alice,
            config,
            &mut entropy,
            Arc::new(SystemClock),
        )
        .await
    };
    let accept = async {
        let (io, _) = listener.accept().await?;
        let mut entropy = SeededEntropy::from_u64(2);
        SecureStream::handshake(
            io,
            Role::Responder,
            &bob,
            SecureConfig::default(),
            &mut entropy,
            Arc::new(SystemClock),
        )
        .await
    };
    let (a, b) = futures::future::join(dial, accept).await;
    Ok((a?, b?))
}

/// A connected, established pair over a fresh loopback listener.
pub async fn secure_pair() -> Result<(SecureStream<TcpStream>, SecureStream<TcpStream>), StreamError>
{
    let mut listener = loopback_listener().await?;
    secure_pair_on(&mut listener).await
}

fn to_io(error: StreamError) -> io::Error {
    match error {
        StreamError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// A secure stream as the framed duplex replication takes (`io::Error`s).
pub fn frames(
    stream: SecureStream<TcpStream>,
) -> impl Stream<Item = io::Result<Vec<u8>>> + Sink<Vec<u8>, Error = io::Error> + Send + 'static {
    stream
        .sink_map_err(to_io as fn(StreamError) -> io::Error)
        .map(|item| item.map_err(to_io))
}

/// Replicates every block of `source` into `dest` (opened with
/// `source.key()`) over TCP loopback + Noise; returns once `dest` holds
/// them all.
pub async fn replicate_download(
    source: &Core,
    dest: &Core,
) -> Result<(), Box<dyn std::error::Error>> {
    let (a, b) = secure_pair().await?;
    let hash = a.handshake_hash().map(|h| h.as_bytes().to_vec());
    let mut serve = ReplicateOptions::new(true);
    serve.handshake_hash = hash.clone();
    let mut fetch = ReplicateOptions::new(false);
    fetch.handshake_hash = hash;
    let download = dest.download(0, source.length());
    let sessions = futures::future::join(
        source.replicate(frames(a), serve),
        dest.replicate(frames(b), fetch),
    );
    futures::pin_mut!(sessions);
    let done = download.done();
    futures::pin_mut!(done);
    match futures::future::select(done, sessions).await {
        futures::future::Either::Left((done, _)) => Ok(done?),
        futures::future::Either::Right(((a, b), _)) => {
            a?;
            b?;
            Err("replication ended before the download completed".into())
        }
    }
}
