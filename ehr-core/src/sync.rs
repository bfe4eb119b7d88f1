//! Meeting peers: the record's topic, its network identity, the firewall,
//! and replication over swarm connections.
//!
//! The topic is the record's discovery key (the swarm announces only a hash
//! of it; the record key is never sent). A device's network identity is an
//! ed25519 key pair derived from its own storage's primary seed. The
//! firewall lets in only identities named by the record itself (the owner's
//! genesis, and every live grant: devices, providers, mirrors) plus any the
//! application allowed explicitly (e.g. the patient's identity, learnt from
//! an invite, before a joining provider has synced anything). Everyone else
//! is refused before a connection is handed out, and every connection is
//! checked again before it replicates.

use crate::error::Error;
use crate::record::Record;
use crate::view::{self, decode, WriterRec};
use futures::stream::FuturesUnordered;
use futures::{Sink, Stream, StreamExt};
use hyperbee_rs::Range;
use std::collections::BTreeSet;
use swarm_rs::{KeyPair, PeerConnection, PublicKey, Topic};

/// The identities the firewall lets in.
#[derive(Debug, Default)]
pub(crate) struct Allowed {
    from_record: BTreeSet<[u8; 32]>,
    extra: BTreeSet<[u8; 32]>,
}

impl Allowed {
    fn allows(&self, id: &[u8; 32]) -> bool {
        self.from_record.contains(id) || self.extra.contains(id)
    }
}

impl Record {
    /// This device's network identity (stable for its storage).
    pub fn identity(&self) -> KeyPair {
        let seed = self
            .inner
            .store
            .namespace("ehr-core")
            .key_pair("network-identity")
            .seed();
        KeyPair::from_seed(seed)
    }

    /// The swarm topic of this record: its discovery key.
    pub fn topic(&self) -> Topic {
        Topic(self.discovery_key())
    }

    /// Lets an identity in that the record does not (yet) name, such as
    /// the patient's device when a provider joins from an invite.
    pub fn allow_peer(&self, identity: [u8; 32]) {
        if let Ok(mut a) = self.inner.allowed.write() {
            a.extra.insert(identity);
        }
    }

    /// Whether the firewall lets `identity` in now.
    pub fn allows_peer(&self, identity: &[u8; 32]) -> bool {
        self.inner
            .allowed
            .read()
            .map(|a| a.allows(identity))
            .unwrap_or(false)
    }

    /// The firewall callback for [`swarm_rs::SwarmBuilder::firewall`]: it
    /// follows the record's grants as they change.
    pub fn firewall(&self) -> impl FnMut(&PublicKey) -> bool + Send + 'static {
        let allowed = self.inner.allowed.clone();
        move |peer: &PublicKey| {
            allowed
                .read()
                .map(|a| a.allows(&peer.to_bytes()))
                .unwrap_or(false)
        }
    }

    /// Recomputes the identities the record names (owner, live grants).
    pub(crate) async fn refresh_firewall(&self) -> Result<(), Error> {
        let snap = self.snapshot().await?;
        let mut ids = BTreeSet::new();
        if let Some(p) = self.genesis().and_then(|g| g.peer) {
            ids.insert(p);
        }
        let writers = snap
            .range(Range::all().prefix(view::WRITERS))
            .collect()
            .await?;
        for e in writers {
            let w: WriterRec =
                decode(&e.value).ok_or_else(|| Error::Storage("corrupt writer record".into()))?;
            if let (false, Some(p)) = (w.revoked, w.grant.peer) {
                ids.insert(p);
            }
        }
        if let Ok(mut a) = self.inner.allowed.write() {
            a.from_record = ids;
        }
        Ok(())
    }

    /// Replicates the record with every connection `connections` yields
    /// that the firewall allows, all at once, until the stream ends.
    /// Refused or failed connections are dropped; the others keep going.
    pub async fn serve<C, S>(&self, connections: C) -> Result<(), Error>
    where
        C: Stream<Item = PeerConnection<S>> + Unpin,
        PeerConnection<S>: Stream<Item = std::io::Result<Vec<u8>>>
            + Sink<Vec<u8>, Error = std::io::Error>
            + Send
            + 'static,
    {
        self.refresh_firewall().await?;
        let mut connections = connections.fuse();
        let mut sessions = FuturesUnordered::new();
        loop {
            futures::select! {
                c = connections.next() => match c {
                    Some(conn) => {
                        if !self.allows_peer(&conn.remote_public_key().to_bytes()) {
                            continue;
                        }
                        let initiator = conn.is_initiator();
                        let rec = self.clone();
                        sessions.push(async move { rec.replicate(conn, initiator).await });
                    }
                    None => break,
                },
                _ = sessions.select_next_some() => {},
            }
        }
        while sessions.next().await.is_some() {}
        Ok(())
    }
}
