//! The async driver: runs a [`Connection`] over any framed duplex (a futures
//! `Stream` of byte frames plus a `Sink` of them), resolving cores, serving
//! proofs, verifying data and scheduling requests through each core's shared
//! scheduler. Uses `futures` only: any executor can run it.

use super::connection::{ConnEvent, Connection, Pending, ProtocolError};
use super::ranges::RangeSet;
use super::scheduler::{Wake, WINDOW};
use super::wire::{self, Message};
use crate::clock::{Clock, ThreadClock};
use crate::core::{is_plain_block, Core};
use crate::entropy::{Entropy, OsEntropy};
use crate::error::{Error, ProofError};
use crate::hash::Hash;
use crate::proof::{Proof, ProofRequest, UpgradeRequest, Verified};
use async_trait::async_trait;
use futures::channel::mpsc;
use futures::stream::SelectAll;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Why a replication session ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The remote broke the protocol or sent invalid data.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The transport failed.
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
    /// A local core failed (storage).
    #[error("local error: {0}")]
    Local(#[from] Error),
}

/// Where a replication session finds the cores the remote asks for, and which
/// cores it opens itself.
#[async_trait]
pub trait CoreProvider: Send + Sync {
    /// The core with this discovery key, if held.
    async fn by_discovery_key(&self, discovery_key: &Hash) -> Option<Core>;
    /// The cores to open channels for right away.
    fn initial(&self) -> Vec<Core>;
    /// Cores opened later that the session should open too.
    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<Core>> {
        None
    }
}

#[async_trait]
impl CoreProvider for Core {
    async fn by_discovery_key(&self, discovery_key: &Hash) -> Option<Core> {
        (self.discovery_key() == *discovery_key).then(|| self.clone())
    }
    fn initial(&self) -> Vec<Core> {
        vec![self.clone()]
    }
}

/// Settings of one replication session.
#[derive(Clone)]
pub struct ReplicateOptions {
    /// Whether this side opened the connection.
    pub initiator: bool,
    /// The transport's handshake hash (e.g. Noise), binding capabilities to
    /// this connection; without it, capabilities bind to exchanged nonces.
    pub handshake_hash: Option<Vec<u8>>,
    /// Time source for timeouts.
    pub clock: Arc<dyn Clock>,
    /// Randomness for the session nonce.
    pub entropy: Arc<dyn Entropy>,
    /// How long a request may go unanswered before the peer is dropped.
    pub request_timeout: Duration,
    /// When `true`, an invalid proof closes only the channel of that core
    /// instead of ending the session (default `false`). For a layer whose
    /// writers may fork their own cores: an honest remote that holds the
    /// other fork sends proofs that cannot verify here, and that must not
    /// cut the replication of every other core with it. Nothing unverified
    /// is stored either way.
    pub isolate_invalid_proofs: bool,
}

impl std::fmt::Debug for ReplicateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicateOptions")
            .field("initiator", &self.initiator)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl ReplicateOptions {
    /// Defaults for the initiator (`true`) or responder side.
    pub fn new(initiator: bool) -> Self {
        ReplicateOptions {
            initiator,
            handshake_hash: None,
            clock: Arc::new(ThreadClock),
            entropy: Arc::new(OsEntropy),
            request_timeout: Duration::from_secs(30),
            isolate_invalid_proofs: false,
        }
    }
}

struct Attached {
    core: Core,
    peer: u64,
    inflight: usize,
    /// Nodes that in-flight block requests to this peer will prove (with
    /// counts): later requests anchor on them, which keeps proofs tiny
    /// because this peer answers in order and answers are verified in order.
    virtual_nodes: HashMap<u64, u32>,
    request_nodes: HashMap<u64, Vec<u64>>,
    /// Answers that did not reach an anchor (allowed, within reason).
    strikes: u32,
}

/// How many unanchored answers a peer may give before it is dropped.
const MAX_STRIKES: u32 = 10_000;
/// How many queued frames are handled before scheduling and announcing again.
const DRAIN: usize = 256;
/// Block answers are verified as soon as this many block bytes are queued
/// (bounds what a group of large answers holds in memory).
const MAX_QUEUED_BYTES: usize = 4 << 20;

/// Moves every queued message to the writer.
fn flush(conn: &mut Connection, out: &mpsc::UnboundedSender<Vec<u8>>) {
    while let Some(m) = conn.poll_send() {
        if out.unbounded_send(wire::encode(&m)).is_err() {
            return;
        }
    }
}

/// Takes the next item if one is ready, without waiting. Unlike
/// `now_or_never`, it polls with the task's own waker, so a `Pending` leaves
/// the task registered for wake-ups (a no-op waker would lose them).
async fn try_next<S: Stream + Unpin>(s: &mut S) -> Option<Option<S::Item>> {
    futures::future::poll_fn(|cx| match s.poll_next_unpin(cx) {
        std::task::Poll::Ready(item) => std::task::Poll::Ready(Some(item)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// The nodes a block proof with `nodes` siblings proves (leaf, siblings, parents).
fn path_nodes(block: u64, nodes: u64, length: u64) -> Vec<u64> {
    let mut cur = block.saturating_mul(2);
    let mut out = vec![cur];
    let mut k = 0;
    while !crate::flat::is_root(cur, length) && (nodes == 0 || k < nodes) && k < 64 {
        out.push(crate::flat::sibling(cur));
        cur = crate::flat::parent(cur);
        out.push(cur);
        k += 1;
    }
    out
}

struct Session {
    conn: Connection,
    /// Channels whose cores count this session as connecting.
    connecting: HashMap<u32, Core>,
    provider: Arc<dyn CoreProvider>,
    attached: HashMap<u32, Attached>,
    cores: HashMap<u32, Core>,
    wakes: SelectAll<futures::stream::BoxStream<'static, (u32, Wake)>>,
    request_times: Vec<(u32, Duration)>,
    /// Plain block answers of the current drain group, not yet verified.
    queued: Vec<(u32, Pending, Proof)>,
    /// Block bytes held in `queued`.
    queued_bytes: usize,
    /// See [`ReplicateOptions::isolate_invalid_proofs`].
    isolate_invalid_proofs: bool,
}

/// Replicates the provider's cores with the remote over `io` until either
/// side closes or the remote misbehaves. Invalid data from the remote ends the
/// session with an error; nothing unverified is ever stored.
pub async fn replicate<IO>(
    provider: Arc<dyn CoreProvider>,
    io: IO,
    options: ReplicateOptions,
) -> Result<(), ReplicationError>
where
    IO: Stream<Item = Result<Vec<u8>, std::io::Error>>
        + Sink<Vec<u8>, Error = std::io::Error>
        + Send
        + 'static,
{
    let mut nonce = [0u8; 32];
    options.entropy.fill(&mut nonce)?;
    let (mut sink, stream) = io.split();
    let mut stream = stream.fuse();
    let (out_tx, mut out_rx) = mpsc::unbounded::<Vec<u8>>();
    let writer = async move {
        // Feed every frame that is already queued, then flush once: one
        // flush per frame cost a system call per message on TCP.
        while let Some(frame) = out_rx.next().await {
            sink.feed(frame).await?;
            while let Some(Some(frame)) = try_next(&mut out_rx).await {
                sink.feed(frame).await?;
            }
            sink.flush().await?;
        }
        sink.close().await
    };
    let mut s = Session {
        conn: Connection::new(options.initiator, options.handshake_hash.clone(), nonce),
        provider: provider.clone(),
        attached: HashMap::new(),
        connecting: HashMap::new(),
        cores: HashMap::new(),
        wakes: SelectAll::new(),
        request_times: Vec::new(),
        queued: Vec::new(),
        queued_bytes: 0,
        isolate_invalid_proofs: options.isolate_invalid_proofs,
    };
    for core in provider.initial() {
        let ch = s.conn.open(core.discovery_key(), core.key())?;
        core.scheduler().connecting(1);
        s.connecting.insert(ch, core.clone());
        s.cores.insert(ch, core);
    }
    let mut new_cores = provider.subscribe();
    let clock = options.clock.clone();
    let logic = async move {
        // One timer for request timeouts, renewed when it fires.
        let mut tick = clock.sleep(Duration::from_secs(1)).fuse();
        let result: Result<(), ReplicationError> = async {
            loop {
                for ch in s.attached.keys().copied().collect::<Vec<_>>() {
                    s.schedule(ch, clock.now()).await?;
                }
                while let Some(m) = s.conn.poll_send() {
                    if out_tx.unbounded_send(wire::encode(&m)).is_err() {
                        return Ok(());
                    }
                }
                let next_core = async {
                    match new_cores.as_mut() {
                        Some(rx) => rx.next().await,
                        None => futures::future::pending().await,
                    }
                }
                .fuse();
                futures::pin_mut!(next_core);
                futures::select! {
                    frame = stream.next() => match frame {
                        None => {
                            // The remote stopped sending: hand over what we
                            // still owe it, then end.
                            flush(&mut s.conn, &out_tx);
                            return Ok(());
                        }
                        Some(Err(e)) => return Err(ReplicationError::Io(e)),
                        Some(Ok(f)) => {
                            s.on_frame(&f).await?;
                            // Handle what is already queued before scheduling and
                            // announcing again, so those coalesce.
                            for _ in 0..DRAIN {
                                match try_next(&mut stream).await {
                                    Some(Some(Ok(f))) => s.on_frame(&f).await?,
                                    Some(Some(Err(e))) => return Err(ReplicationError::Io(e)),
                                    // The remote closed: the session is over.
                                    Some(None) => {
                                        s.verify_queued().await?;
                                        flush(&mut s.conn, &out_tx);
                                        return Ok(());
                                    }
                                    None => break,
                                }
                            }
                            s.verify_queued().await?;
                        }
                    },
                    w = s.wakes.next() => {
                        if let Some((ch, w)) = w {
                            s.on_wake(ch, w).await?;
                        }
                    },
                    c = next_core => {
                        if let Some(core) = c {
                            let ch = s.conn.open(core.discovery_key(), core.key())?;
                            s.cores.insert(ch, core);
                        }
                    },
                    _ = tick => {
                        tick = clock.sleep(Duration::from_secs(1)).fuse();
                        let now = clock.now();
                        if s.request_times.iter().any(|(_, t)| now.saturating_sub(*t) > options.request_timeout) {
                            return Err(ProtocolError::Timeout.into());
                        }
                    },
                }
            }
        }
        .await;
        s.detach_all();
        result
    };
    futures::pin_mut!(writer);
    futures::pin_mut!(logic);
    let flush_clock = options.clock.clone();
    match futures::future::select(logic, writer).await {
        futures::future::Either::Left((r, writer)) => {
            // Let the writer send what was queued (the logic dropped its
            // sender, so it ends once drained), but never wait on a peer that
            // stopped reading for more than a few seconds.
            let limit = flush_clock.sleep(Duration::from_secs(5));
            let _ = futures::future::select(writer, limit).await;
            r
        }
        futures::future::Either::Right((w, logic)) => {
            w?;
            logic.await
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A session dropped mid-flight (an aborted or timed-out future) must
        // release its peers' claims in the shared schedulers.
        self.detach_all();
    }
}

impl Session {
    async fn on_frame(&mut self, frame: &[u8]) -> Result<(), ReplicationError> {
        let msg = wire::decode(frame).map_err(ProtocolError::from)?;
        for ev in self.conn.handle(msg)? {
            self.on_event(ev).await?;
        }
        Ok(())
    }

    fn sched(&self, ch: u32) -> Option<(&Core, u64)> {
        self.attached.get(&ch).map(|a| (&a.core, a.peer))
    }

    async fn attach(&mut self, ch: u32) -> Result<(), ReplicationError> {
        let Some(core) = self.cores.get(&ch).cloned() else {
            return Ok(());
        };
        let (tx, rx) = mpsc::unbounded();
        let peer = core.scheduler().add_peer(tx);
        self.wakes.push(rx.map(move |w| (ch, w)).boxed());
        self.attached.insert(
            ch,
            Attached {
                core: core.clone(),
                peer,
                inflight: 0,
                virtual_nodes: HashMap::new(),
                request_nodes: HashMap::new(),
                strikes: 0,
            },
        );
        self.stop_connecting(ch);
        if core.scheduler().probing() {
            self.probe(ch, Duration::ZERO);
        }
        let (fork, length, contiguous) = (core.fork(), core.length(), core.contiguous_length());
        self.conn.send(ch, |c| Message::Sync {
            channel: c,
            fork,
            length,
        });
        if contiguous > 0 {
            self.conn.send(ch, |c| Message::Have {
                channel: c,
                drop: false,
                ranges: vec![(0, contiguous)],
            });
        }
        // Ask what the remote holds in the ranges we want beyond its prefix.
        Ok(())
    }

    fn detach(&mut self, ch: u32) {
        if let Some(a) = self.attached.remove(&ch) {
            a.core.scheduler().remove_peer(a.peer);
        }
        self.stop_connecting(ch);
        self.cores.remove(&ch);
        self.request_times.retain(|(c, _)| *c != ch);
    }

    fn detach_all(&mut self) {
        for ch in self.attached.keys().copied().collect::<Vec<_>>() {
            self.detach(ch);
        }
        for ch in self.connecting.keys().copied().collect::<Vec<_>>() {
            self.stop_connecting(ch);
        }
    }

    fn stop_connecting(&mut self, ch: u32) {
        if let Some(core) = self.connecting.remove(&ch) {
            core.scheduler().connecting(-1);
        }
    }

    /// Asks the remote for its latest signed length, for an `update` round.
    fn probe(&mut self, ch: u32, now: Duration) {
        let Some((core, _)) = self.sched(ch) else {
            return;
        };
        let round = core.scheduler().round;
        let req = ProofRequest {
            fork: core.fork(),
            upgrade: Some(UpgradeRequest {
                start: core.length(),
            }),
            manifest: core.manifest().is_none(),
            round_fork_point: core.scheduler().round_fork_point,
            ..Default::default()
        };
        if self.conn.request(ch, req, Pending::Probe(round)).is_some() {
            self.request_times.push((ch, now));
        }
    }

    async fn schedule(&mut self, ch: u32, now: Duration) -> Result<(), ReplicationError> {
        let Some((core, peer)) = self.sched(ch).map(|(c, p)| (c.clone(), p)) else {
            return Ok(());
        };
        let (fork, length) = (core.fork(), core.length());
        if !core.writable() && core.scheduler().take_upgrade(peer, fork, length) {
            let req = ProofRequest {
                fork,
                upgrade: Some(UpgradeRequest { start: length }),
                manifest: core.manifest().is_none(),
                round_fork_point: core.scheduler().round_fork_point,
                ..Default::default()
            };
            if self.conn.request(ch, req, Pending::Upgrade).is_some() {
                self.request_times.push((ch, now));
            }
        }
        let mut checked = 0;
        while self.attached.get(&ch).is_some_and(|a| a.inflight < WINDOW) && checked < WINDOW * 4 {
            checked += 1;
            let Some(b) = core.scheduler().next_block(peer, fork, length) else {
                break;
            };
            if core.has(b, b + 1).await? {
                let mut s = core.scheduler();
                s.on_local(b, b + 1);
                s.release(b);
                continue;
            }
            let block = match self.attached.get(&ch) {
                Some(a) => {
                    let virt = &a.virtual_nodes;
                    core.block_request_assuming(b, &|i| virt.contains_key(&i))
                        .await?
                }
                None => break,
            };
            let nodes = block.nodes;
            let req = ProofRequest {
                fork,
                block: Some(block),
                ..Default::default()
            };
            if self.conn.request(ch, req, Pending::Block(b)).is_some() {
                self.request_times.push((ch, now));
                if let Some(a) = self.attached.get_mut(&ch) {
                    a.inflight += 1;
                    let path = path_nodes(b, nodes, length);
                    for &n in &path {
                        *a.virtual_nodes.entry(n).or_insert(0) += 1;
                    }
                    a.request_nodes.insert(b, path);
                }
            } else {
                core.scheduler().release(b);
                break;
            }
        }
        Ok(())
    }

    /// A block request to this channel's peer is over (answered or not).
    fn block_done(&mut self, ch: u32, block: u64) {
        if let Some(a) = self.attached.get_mut(&ch) {
            a.inflight = a.inflight.saturating_sub(1);
            for n in a.request_nodes.remove(&block).unwrap_or_default() {
                if let Some(c) = a.virtual_nodes.get_mut(&n) {
                    *c -= 1;
                    if *c == 0 {
                        a.virtual_nodes.remove(&n);
                    }
                }
            }
        }
    }

    fn answered(&mut self, ch: u32) {
        if let Some(pos) = self.request_times.iter().position(|(c, _)| *c == ch) {
            self.request_times.remove(pos);
        }
    }

    async fn on_event(&mut self, ev: ConnEvent) -> Result<(), ReplicationError> {
        if !matches!(ev, ConnEvent::Data { .. }) {
            // Keep the order of effects: queued answers first.
            self.verify_queued().await?;
        }
        match ev {
            ConnEvent::RemoteOpen {
                remote,
                discovery_key,
                capability,
            } => match self.provider.by_discovery_key(&discovery_key).await {
                Some(core) if self.conn.remote_capability_ok(&core.key(), &capability) => {
                    let ev = self.conn.accept(remote, discovery_key, core.key())?;
                    if let Some(ch) = self.conn.channel_of(&discovery_key) {
                        self.cores.insert(ch, core);
                    }
                    if let Some(ConnEvent::Opened { channel }) = ev {
                        self.attach(channel).await?;
                    }
                }
                _ => self.conn.reject(remote),
            },
            ConnEvent::Opened { channel } => self.attach(channel).await?,
            ConnEvent::Closed { channel } => self.detach(channel),
            ConnEvent::Sync {
                channel,
                fork,
                length,
            } => {
                if let Some((core, peer)) = self.sched(channel) {
                    core.scheduler().on_sync(peer, fork, length);
                }
            }
            ConnEvent::Have {
                channel,
                drop,
                ranges,
            } => {
                if let Some((core, peer)) = self.sched(channel) {
                    if !core.scheduler().on_have(peer, drop, &ranges) {
                        return Err(ProtocolError::Limit.into());
                    }
                }
            }
            ConnEvent::Want {
                channel,
                start,
                length,
            } => {
                if let Some((core, _)) = self.sched(channel) {
                    let core = core.clone();
                    let end = start.saturating_add(length.min(1 << 16)).min(core.length());
                    let mut have = RangeSet::new();
                    for i in start..end {
                        if core.has(i, i + 1).await? {
                            have.insert(i, i + 1);
                        }
                    }
                    let ranges: Vec<(u64, u64)> = have
                        .iter()
                        .map(|(s, e)| (s, e - s))
                        .take(wire::MAX_RANGES_PER_MESSAGE)
                        .collect();
                    if !ranges.is_empty() {
                        self.conn.send(channel, |c| Message::Have {
                            channel: c,
                            drop: false,
                            ranges,
                        });
                    }
                }
            }
            ConnEvent::Request {
                channel,
                id,
                request,
            } => {
                let proof = match self.sched(channel) {
                    Some((core, _)) => core.proof(&request).await.ok(),
                    None => None,
                };
                self.conn.answer(channel, id, proof);
            }
            ConnEvent::Data {
                channel,
                pending,
                proof,
            } => {
                self.answered(channel);
                if !self.attached.contains_key(&channel) {
                    return Ok(());
                }
                let proof = *proof;
                if matches!(pending, Pending::Block(_)) && is_plain_block(&proof) {
                    // Queued: verified with the rest of this drain group in
                    // one storage write (see `verify_queued`).
                    if self.queued.first().is_some_and(|(c, _, _)| *c != channel) {
                        self.verify_queued().await?;
                    }
                    self.queued_bytes += proof.block.as_ref().map_or(0, |b| b.value.len());
                    self.queued.push((channel, pending, proof));
                    if self.queued_bytes >= MAX_QUEUED_BYTES {
                        self.verify_queued().await?;
                    }
                    return Ok(());
                }
                self.verify_queued().await?;
                let Some(core) = self.attached.get(&channel).map(|a| a.core.clone()) else {
                    return Ok(());
                };
                let result = core.verify(&proof).await;
                self.verified(channel, pending, result)?;
            }
            ConnEvent::NoData { channel, pending } => {
                self.answered(channel);
                if let Some((core, peer)) = self.sched(channel).map(|(c, p)| (c.clone(), p)) {
                    let mut s = core.scheduler();
                    match pending {
                        Pending::Block(b) => {
                            s.release(b);
                            s.on_have(peer, true, &[(b, 1)]);
                            drop(s);
                            self.block_done(channel, b);
                        }
                        Pending::Upgrade => s.upgrade_done(peer),
                        Pending::Probe(round) => s.probe_done(peer, round),
                    }
                }
            }
            ConnEvent::Extension {
                channel,
                name,
                message,
            } => {
                if let Some((core, peer)) = self.sched(channel) {
                    core.scheduler().deliver_extension(peer, &name, message);
                }
            }
        }
        Ok(())
    }

    /// Verifies the queued block answers (all for one channel, in arrival
    /// order) with one storage write, then settles each as `verified` does.
    async fn verify_queued(&mut self) -> Result<(), ReplicationError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.queued);
        self.queued_bytes = 0;
        let channel = queued[0].0;
        let Some(core) = self.attached.get(&channel).map(|a| a.core.clone()) else {
            return Ok(());
        };
        let mut pendings = Vec::with_capacity(queued.len());
        let mut proofs = Vec::with_capacity(queued.len());
        for (_, pending, proof) in queued {
            pendings.push(pending);
            proofs.push(proof);
        }
        let results = core.verify_batch(proofs).await?;
        for (pending, result) in pendings.into_iter().zip(results) {
            self.verified(channel, pending, result)?;
        }
        Ok(())
    }

    /// Settles one answer after verification: frees its claim and request
    /// slot, and ends the session when the proof was invalid.
    fn verified(
        &mut self,
        channel: u32,
        pending: Pending,
        result: Result<Verified, Error>,
    ) -> Result<(), ReplicationError> {
        let Some((core, peer)) = self.sched(channel).map(|(c, p)| (c.clone(), p)) else {
            return Ok(());
        };
        {
            // One scheduler lock for the whole update: never re-lock while held.
            let mut s = core.scheduler();
            match (&result, pending) {
                (Ok(_), Pending::Upgrade | Pending::Probe(_)) => s.round_fork_point = false,
                // A sparse reader after a fork: ask again from a boundary it holds.
                (Err(Error::Proof(ProofError::MissingAnchor)), _) => s.round_fork_point = true,
                _ => {}
            }
            match pending {
                Pending::Block(b) => s.release(b),
                Pending::Upgrade => s.upgrade_done(peer),
                Pending::Probe(round) => s.probe_done(peer, round),
            }
        }
        if let Pending::Block(b) = pending {
            self.block_done(channel, b);
        }
        match result {
            Err(Error::Proof(ProofError::Unanchored)) => {
                // An earlier answer we anchored on did not come: ask again.
                if let Some(a) = self.attached.get_mut(&channel) {
                    a.strikes += 1;
                    if a.strikes > MAX_STRIKES {
                        return Err(ProtocolError::InvalidProof(ProofError::Unanchored).into());
                    }
                }
            }
            Ok(_)
            | Err(Error::Proof(ProofError::MissingAnchor | ProofError::Stale(_)))
            | Err(Error::WriterUpgrade) => {}
            Err(Error::Proof(_)) if self.isolate_invalid_proofs => {
                // Stop replicating this core with this peer; keep the rest.
                self.conn.close(channel);
                self.detach(channel);
            }
            Err(Error::Proof(e)) => return Err(ProtocolError::InvalidProof(e).into()),
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    async fn on_wake(&mut self, ch: u32, first: Wake) -> Result<(), ReplicationError> {
        // Coalesce every wake already queued for this channel.
        let mut have = RangeSet::new();
        let mut dropped = RangeSet::new();
        let mut announce = false;
        let mut probe = false;
        let mut handle = |w: Wake, conn: &mut Connection| match w {
            Wake::Schedule => {}
            Wake::Probe => probe = true,
            Wake::Announce { have: h, drop: d } => {
                announce = true;
                for (s, l) in h {
                    have.insert(s, s.saturating_add(l));
                }
                for (s, l) in d {
                    dropped.insert(s, s.saturating_add(l));
                    have.remove(s, s.saturating_add(l));
                }
            }
            Wake::Extension { name, message } => {
                conn.send(ch, |c| Message::Extension {
                    channel: c,
                    name,
                    message,
                });
            }
        };
        handle(first, &mut self.conn);
        while let Some(Some((c, w))) = try_next(&mut self.wakes).await {
            if c == ch {
                handle(w, &mut self.conn);
            } else {
                // Another channel's wake: handle it on its own.
                Box::pin(self.on_wake(c, w)).await?;
            }
        }
        if probe {
            self.probe(ch, Duration::ZERO);
        }
        if announce {
            if let Some((core, _)) = self.sched(ch) {
                let (fork, length) = (core.fork(), core.length());
                self.conn.send(ch, |c| Message::Sync {
                    channel: c,
                    fork,
                    length,
                });
                let h: Vec<(u64, u64)> = have.iter().map(|(s, e)| (s, e - s)).collect();
                let d: Vec<(u64, u64)> = dropped.iter().map(|(s, e)| (s, e - s)).collect();
                for chunk in h.chunks(wire::MAX_RANGES_PER_MESSAGE) {
                    let ranges = chunk.to_vec();
                    self.conn.send(ch, |c| Message::Have {
                        channel: c,
                        drop: false,
                        ranges,
                    });
                }
                for chunk in d.chunks(wire::MAX_RANGES_PER_MESSAGE) {
                    let ranges = chunk.to_vec();
                    self.conn.send(ch, |c| Message::Have {
                        channel: c,
                        drop: true,
                        ranges,
                    });
                }
            }
        }
        Ok(())
    }
}
