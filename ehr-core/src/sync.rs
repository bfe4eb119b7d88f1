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
use std::future::Future;
use std::time::Duration;
use swarm_rs::{
    Discovery, JoinMode, KeyPair, PeerConnection, PublicKey, SwarmBuilder, SwarmHandle, Topic,
    Transport,
};

/// How long a device waits for a checkpoint from its peers when it tries to
/// fast-forward (see [`Record::checkpoint_duty`]).
pub(crate) const CHECKPOINT_WAIT: Duration = Duration::from_secs(5);

/// A running [`Record::sync`]: while it is held, the device announces and
/// looks up the record's topic. Dropping it (or [`SyncHandle::leave`]) stops
/// announcing; connections already made end when the sync future is dropped.
#[derive(Debug)]
pub struct SyncHandle {
    pub(crate) swarm: SwarmHandle,
    pub(crate) topic: Topic,
}

impl SyncHandle {
    /// The swarm handle (the local address, joining other topics, ...).
    pub fn swarm(&self) -> &SwarmHandle {
        &self.swarm
    }

    /// Stops announcing and looking up the record's topic.
    pub fn leave(&self) -> Result<(), Error> {
        self.swarm
            .leave(&self.topic)
            .map_err(|e| Error::Storage(format!("swarm stopped: {e}")))
    }
}

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

    /// Joins the record's topic on `transport` and `discovery` (any swarm-rs
    /// [`Transport`] and [`Discovery`]: in-memory for tests, TCP with
    /// mDNS, a folder or the DHT on real networks), as both server and client,
    /// with this device's network identity and the record's firewall, and
    /// replicates with every peer the firewall lets in.
    ///
    /// Only the topic (the record's discovery key, hashed again by the
    /// swarm) is announced, never the record key. Returns the handle and the
    /// future that does the work: spawn it on any executor (it ends when the
    /// swarm stops). Offline writes reach the other side once peers meet;
    /// call [`Record::update`] (or read) to apply what arrived.
    pub async fn sync<T, D>(
        &self,
        transport: T,
        discovery: D,
        addr: &T::Address,
    ) -> Result<
        (
            SyncHandle,
            impl Future<Output = Result<(), Error>> + 'static,
        ),
        Error,
    >
    where
        T: Transport + 'static,
        T::Listener: 'static,
        D: Discovery<Address = T::Address> + 'static,
        PeerConnection<T::Stream>: Stream<Item = std::io::Result<Vec<u8>>>
            + Sink<Vec<u8>, Error = std::io::Error>
            + Send
            + 'static,
    {
        self.refresh_firewall().await?;
        let (swarm, connections, driver) = SwarmBuilder::new(self.identity())
            .firewall(self.firewall())
            .bind(transport, discovery, addr)
            .await
            .map_err(|e| Error::Storage(format!("cannot listen: {e}")))?;
        let topic = self.topic();
        swarm
            .join(&topic, JoinMode::BOTH)
            .map_err(|e| Error::Storage(format!("swarm stopped: {e}")))?;
        let record = self.clone();
        let work = async move { drive(driver, record.serve(connections)).await };
        Ok((SyncHandle { swarm, topic }, work))
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
        let sessions = run_sessions(connections, |conn| {
            if !self.allows_peer(&conn.remote_public_key().to_bytes()) {
                return None;
            }
            let initiator = conn.is_initiator();
            let rec = self.clone();
            Some(async move {
                let _ = rec.replicate(conn, initiator).await;
            })
        });
        beside_duty(self, sessions).await;
        Ok(())
    }

    /// This device's part in the record's checkpoints while it syncs
    /// ([`Record::serve`], and so [`Record::sync`], run it next to the
    /// sessions; run it yourself next to [`Record::replicate`]):
    ///
    /// - serves checkpoints ([`autobase_rs::Autobase::serve_checkpoints`]):
    ///   an indexer pushes its signature over each indexed state, answers
    ///   requests with the signed state and the view blocks the asker
    ///   lacks, and passes on proofs of forked inputs;
    /// - a device that has indexed nothing yet (a new joiner of a long
    ///   record) first asks its peers for a checkpoint and starts from it
    ///   instead of replaying every input, if one signed by the record's
    ///   indexers arrives within `wait`;
    /// - after every update, a device left on a fork of a writer that the
    ///   others cut ([`autobase_rs::Autobase::needs_fast_forward`]) starts
    ///   from their checkpoint past the cut, and so recovers.
    ///
    /// That is [`autobase_rs::Autobase::checkpoint_duty`], plus reading the
    /// record's genesis and firewall again after each installed checkpoint.
    /// Runs until the record's extension channel closes. A refused or
    /// missing checkpoint is not an error: the device keeps replaying; a
    /// storage error ends the duty.
    pub async fn checkpoint_duty(&self, wait: Duration) -> Result<(), Error> {
        let base = self.base().clone();
        // Subscribed before the duty runs, so no installed checkpoint is
        // missed: after one, what the record derives from its view
        // (genesis, firewall) is read again.
        let mut events = base.events();
        let duty = async {
            base.checkpoint_duty(wait)
                .await
                .map_err(|e| Error::Storage(e.to_string()))
        };
        let refresh = async {
            while let Some(e) = events.next().await {
                if matches!(e, autobase_rs::Event::FastForwarded { .. }) {
                    self.update().await?;
                }
            }
            Ok::<(), Error>(())
        };
        futures::pin_mut!(duty);
        futures::pin_mut!(refresh);
        // Ends with the duty (its channel closed) or with a failed refresh.
        match futures::future::select(duty, refresh).await {
            futures::future::Either::Left((r, _)) | futures::future::Either::Right((r, _)) => r,
        }
    }
}

/// Runs `sessions` with `record`'s [`Record::checkpoint_duty`] beside them,
/// for as long as the sessions run; if the duty stops first (its extension
/// channel closed), replication goes on without it.
pub(crate) async fn beside_duty<F: Future<Output = ()>>(record: &Record, sessions: F) {
    // Boxed: the duty's state is large, and nested in the sessions' future
    // it would be moved through the stack on every level (debug builds
    // came close to a 2 MiB thread stack).
    let duty = Box::pin(record.checkpoint_duty(CHECKPOINT_WAIT));
    futures::pin_mut!(sessions);
    futures::pin_mut!(duty);
    if let futures::future::Either::Right((_, sessions)) =
        futures::future::select(sessions, duty).await
    {
        sessions.await;
    }
}

/// Runs one session for each connection `start` accepts (it returns
/// `None` to drop one), all at once, until `connections` ends and every
/// session has finished. A failed session ends alone.
pub(crate) async fn run_sessions<C, F, Fut>(connections: C, mut start: F)
where
    C: Stream + Unpin,
    F: FnMut(C::Item) -> Option<Fut>,
    Fut: Future<Output = ()>,
{
    let mut connections = connections.fuse();
    let mut sessions = FuturesUnordered::new();
    loop {
        futures::select! {
            c = connections.next() => match c {
                Some(conn) => {
                    if let Some(session) = start(conn) {
                        sessions.push(session);
                    }
                }
                None => break,
            },
            _ = sessions.select_next_some() => {},
        }
    }
    while sessions.next().await.is_some() {}
}

/// Runs a swarm's `driver` beside `serve`; ends when either does (a
/// stopped swarm is a normal end).
pub(crate) async fn drive<D, S>(driver: D, serve: S) -> Result<(), Error>
where
    D: Future<Output = ()>,
    S: Future<Output = Result<(), Error>>,
{
    futures::pin_mut!(driver);
    futures::pin_mut!(serve);
    match futures::future::select(driver, serve).await {
        futures::future::Either::Left(((), _)) => Ok(()),
        futures::future::Either::Right((r, _)) => r,
    }
}
