//! Glue shared by the example programs, their tests and benches: running
//! hypercore-rs replication over a swarm-rs connection.
//!
//! `swarm-rs` and `hypercore-rs` do not know each other (neither depends on
//! the other); replication runs over any framed duplex, and a
//! [`swarm_rs::PeerConnection`] is one, whose Noise handshake hash binds the
//! replication capabilities to this very connection.

use futures::io::{AsyncRead, AsyncWrite};
use hypercore_rs::replication::{ReplicateOptions, ReplicationError};
use hypercore_rs::{Core, Corestore};
use swarm_rs::PeerConnection;

/// Replication settings for `conn`: the dialer is the initiator, and
/// capabilities are bound to the connection's handshake hash.
pub fn replicate_options<S>(conn: &PeerConnection<S>) -> ReplicateOptions {
    let mut options = ReplicateOptions::new(conn.is_initiator());
    options.handshake_hash = Some(conn.handshake_hash().as_bytes().to_vec());
    options
}

/// Replicates one core with the peer on `conn` until either side closes.
pub async fn replicate_core<S>(core: Core, conn: PeerConnection<S>) -> Result<(), ReplicationError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let options = replicate_options(&conn);
    core.replicate(conn, options).await
}

/// Replicates every core of a corestore that the peer on `conn` can prove
/// it knows, until either side closes.
pub async fn replicate_store<S>(
    store: Corestore,
    conn: PeerConnection<S>,
) -> Result<(), ReplicationError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let options = replicate_options(&conn);
    store.replicate(conn, options).await
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits into 32 bytes.
pub fn parse_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex() {
        let key = [0xab; 32];
        assert_eq!(parse_key(&hex(&key)), Some(key));
        assert_eq!(parse_key("abc"), None);
        assert_eq!(parse_key(&"zz".repeat(32)), None);
    }
}
