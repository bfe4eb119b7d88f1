//! Invites over the network: the invite channel.
//!
//! A provider holding an invite is not yet named by the record, so a
//! patient device's firewall would refuse it. A device that serves invites
//! ([`SecureRecord::sync_with_invites`], or [`SecureRecord::admit`] on any
//! secured channel) therefore lets any peer connect, and decides per
//! connection before anything else is sent:
//!
//! - a peer the record names (owner devices, live grants' `peer`)
//!   replicates at once;
//! - any other peer gets the *invite channel* only: its first message must
//!   be a redemption ([`INVITE_CHANNEL`] then an
//!   [`InviteMsg`](crate::invite::InviteMsg)); the device answers it and
//!   sends nothing else. Anything else as a first message (a replication
//!   handshake, junk) closes the connection, and a refused redemption does
//!   too: no replication, no data.
//! - after a redemption succeeds the grant names the redeemer's network
//!   identity ([`Grant::peer`](crate::Grant::peer)) and the two replicate on
//!   the same connection; later connections by that peer are admitted by
//!   the firewall as for any grantee.
//!
//! The redeemer ([`SecureRecord::redeem`], or
//! [`SecureRecord::join_with_invite`] on a swarm) sends its redemption as
//! the first message of every connection to a peer it does not yet know,
//! and trusts a peer only once it answers with a valid acceptance proof,
//! which only a holder of the invite can make.
//!
//! Strangers are limited by an [`InviteGate`] shared by every connection a
//! device serves: at most [`MAX_PENDING_REDEMPTIONS`] wait for their first
//! message at once (more are refused at once, [`InviteError::Busy`]), and
//! each gets [`DEFAULT_REDEMPTION_TIMEOUT`] to send it (then it is closed,
//! [`InviteError::TimedOut`]). The limits keep a flood of idle connections
//! from costing memory or locking out real redeemers; members are never
//! limited. Time comes from an injected [`hypercore_rs::Clock`].

use crate::apply::Rejection;
use crate::error::Error;
use crate::invite::{Invite, InviteError, Redemption};
use crate::op::WriterKey;
use crate::secure::SecureRecord;
use crate::sync::{beside_duty, drive, run_sessions, SyncHandle};
use futures::channel::oneshot;
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use swarm_rs::{Discovery, JoinMode, PeerConnection, SwarmBuilder, Transport};

/// The first bytes of every message on the invite channel: a peer that is
/// not a member must start with them.
pub const INVITE_CHANNEL: &[u8] = b"ehr-core invite channel v1\n";

/// How many connections from strangers may wait for their first message
/// at once (the default of [`InviteGate`]).
pub const MAX_PENDING_REDEMPTIONS: usize = 8;

/// How long a stranger may take to send its redemption (the default of
/// [`InviteGate`]).
pub const DEFAULT_REDEMPTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits on strangers waiting on the invite channel: how many may
/// wait for their first message at once, and for how long. Clones share
/// one count, so give every connection a device serves the same gate
/// ([`SecureRecord::with_invite_gate`]; [`SecureRecord::sync_with_invites`]
/// uses the record's own).
#[derive(Clone)]
pub struct InviteGate {
    max_pending: usize,
    timeout: Duration,
    clock: Arc<dyn hypercore_rs::Clock>,
    pending: Arc<AtomicUsize>,
}

impl std::fmt::Debug for InviteGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteGate")
            .field("max_pending", &self.max_pending)
            .field("timeout", &self.timeout)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Default for InviteGate {
    fn default() -> InviteGate {
        InviteGate::new(Arc::new(hypercore_rs::ThreadClock))
    }
}

impl InviteGate {
    /// A gate with the default limits ([`MAX_PENDING_REDEMPTIONS`],
    /// [`DEFAULT_REDEMPTION_TIMEOUT`]) and timers from `clock`.
    pub fn new(clock: Arc<dyn hypercore_rs::Clock>) -> InviteGate {
        InviteGate {
            max_pending: MAX_PENDING_REDEMPTIONS,
            timeout: DEFAULT_REDEMPTION_TIMEOUT,
            clock,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Sets how long a stranger may take to send its redemption.
    pub fn timeout(mut self, timeout: Duration) -> InviteGate {
        self.timeout = timeout;
        self
    }

    /// Sets how many strangers may wait at once (at least one).
    pub fn max_pending(mut self, max: usize) -> InviteGate {
        self.max_pending = max.max(1);
        self
    }

    /// How many strangers are waiting for their first message now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Whether a stranger arriving now would be refused.
    pub fn is_full(&self) -> bool {
        self.pending() >= self.max_pending
    }

    /// Takes a waiting slot, if one is free; it is given back when the
    /// slot is dropped.
    fn enter(&self) -> Option<Slot> {
        self.pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.pending.clone()))
    }

    /// The first message on `io`, or [`InviteError::TimedOut`].
    async fn first_message<IO>(&self, io: &mut IO) -> Result<Option<Vec<u8>>, InviteError>
    where
        IO: Stream<Item = std::io::Result<Vec<u8>>> + Unpin,
    {
        let sleep = self.clock.sleep(self.timeout);
        match futures::future::select(io.next(), sleep).await {
            futures::future::Either::Left((Some(Ok(m)), _)) => Ok(Some(m)),
            futures::future::Either::Left(_) => Ok(None),
            futures::future::Either::Right(_) => Err(InviteError::TimedOut),
        }
    }
}

/// A stranger's place in an [`InviteGate`].
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The view key recording which writer redeemed an invite first.
pub(crate) fn redemption_key(id: &[u8; 16]) -> Vec<u8> {
    let mut k = b"n/".to_vec();
    k.extend_from_slice(id);
    k
}

/// The rejection of a second redemption of `id` (`first` redeemed it)
/// for `writer`.
pub(crate) fn taken(id: &[u8; 16], first: &[u8], writer: &WriterKey) -> Rejection {
    Rejection::InviteTaken {
        invite: crate::view::hex(id),
        first: crate::view::hex(first),
        writer: crate::view::hex(writer),
    }
}

/// The writers (hex) whose invite grants lost to an earlier redemption.
fn lost_redemptions(rejected: Vec<crate::record::RejectedWrite>) -> BTreeSet<String> {
    rejected
        .into_iter()
        .filter_map(|r| match r.rejection {
            Rejection::InviteTaken { writer, .. } => Some(writer),
            _ => None,
        })
        .collect()
}

/// 32 hex digits to 16 bytes.
pub(crate) fn unhex16(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks(2).enumerate() {
        let t = std::str::from_utf8(pair).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(t, 16).ok()?;
    }
    Some(out)
}

fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INVITE_CHANNEL.len() + msg.len());
    out.extend_from_slice(INVITE_CHANNEL);
    out.extend_from_slice(msg);
    out
}

/// How a connection was admitted by a device serving invites
/// ([`SecureRecord::admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InviteServing {
    /// The record names this peer: replicate.
    Member,
    /// The peer redeemed an invite; this writer was granted: replicate.
    Redeemed(WriterKey),
    /// The peer's redemption was refused (and answered so); close.
    Refused(InviteError),
    /// The peer's first message was not a redemption (it tried to
    /// replicate, or sent junk), or it closed first: close, nothing sent.
    NotAnInvite,
}

impl InviteServing {
    /// Whether the connection may replicate.
    pub fn replicates(&self) -> bool {
        matches!(self, InviteServing::Member | InviteServing::Redeemed(_))
    }
}

fn io_err(e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("connection: {e}"))
}

impl SecureRecord {
    /// Every invite an owner device issued, with its state (owner devices
    /// only: the states are sealed under the owner scope).
    pub async fn invites(&self) -> Result<Vec<crate::invite::InviteState>, Error> {
        self.refresh_keys().await?;
        let mut out = Vec::new();
        let mut q = crate::Query::new("Basic").limit(500);
        loop {
            let page = self.record().search(&q).await?;
            for v in &page.entries {
                let id = v.target.id.strip_prefix("inv-").and_then(unhex16);
                if let Some(id) = id {
                    if let Some(state) = self.invite_state(&id).await? {
                        out.push(state);
                    }
                }
            }
            match page.next {
                Some(c) => q = q.after(c),
                None => break,
            }
        }
        out.sort_by_key(|s| s.expires);
        Ok(out)
    }

    /// After partitioned patient devices both accepted one invite, the
    /// losing redeemer (its grant rejected as
    /// [`Rejection::InviteTaken`]) was already sent the invite's scope
    /// keys. This rotates every scope such a device holds, so it cannot
    /// read what is written next (what it already had cannot be
    /// recalled). Owner devices only; idempotent (a device that no longer
    /// holds a current key causes no rotation). Returns the rotation, if
    /// any.
    ///
    /// A device serving invites with [`SecureRecord::sync_with_invites`]
    /// does this by itself for the redemptions it answered (see
    /// [`SecureRecord::rotate_lost_redemptions_on_update`]).
    pub async fn rotate_lost_redemptions(&self) -> Result<Option<crate::Rotation>, Error> {
        let losers = lost_redemptions(self.record().rejected().await?);
        self.rotate_losers(&losers).await
    }

    /// [`SecureRecord::rotate_lost_redemptions`] for the redemptions this
    /// device answered (its own invite grants rejected as
    /// [`Rejection::InviteTaken`]: a scan of its own rejections only),
    /// each loser once per process: a loser already handled costs nothing.
    /// After a restart the first call finds nothing left to rotate. Only
    /// rejections in the indexed (final) part of the view count: in the
    /// optimistic tail the order of the two grants can still flip, and
    /// rotating then could cut off the redeemer that ends up winning.
    pub async fn rotate_own_lost_redemptions(&self) -> Result<Option<crate::Rotation>, Error> {
        let mine = self.record().writer_key();
        let losers = lost_redemptions(self.record().final_rejected_of(&mine).await?);
        let new: BTreeSet<String> = {
            let done = self
                .lost_rotated
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            losers.difference(&done).cloned().collect()
        };
        if new.is_empty() {
            return Ok(None);
        }
        let rotation = self.rotate_losers(&new).await?;
        self.lost_rotated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(new);
        Ok(rotation)
    }

    /// Runs [`SecureRecord::rotate_own_lost_redemptions`] after every
    /// change of the record's view (a burst of changes is one check) until
    /// the record goes away: a patient device that learns, after syncing
    /// with its other devices, that an invite redemption it answered lost
    /// the race rotates the keys it had sent to the loser without the app
    /// doing anything. [`SecureRecord::sync_with_invites`] runs it; spawn
    /// it when serving invites with [`SecureRecord::admit`] directly.
    /// Failures are retried at the next change.
    pub fn rotate_lost_redemptions_on_update(
        self: Arc<Self>,
    ) -> impl Future<Output = ()> + 'static {
        // Subscribed now, so no change after this call is missed.
        let mut events = self.record().base().events();
        async move {
            let _ = self.rotate_own_lost_redemptions().await;
            while events.next().await.is_some() {
                while let Some(Some(_)) = events.next().now_or_never() {}
                let _ = self.rotate_own_lost_redemptions().await;
            }
        }
    }

    /// Rotates every scope the devices of the writers `losers` (hex) hold.
    async fn rotate_losers(
        &self,
        losers: &BTreeSet<String>,
    ) -> Result<Option<crate::Rotation>, Error> {
        if losers.is_empty() {
            return Ok(None);
        }
        let all = self.all_wraps().await?;
        let devices = all
            .iter()
            .filter(|w| {
                w.writer
                    .is_some_and(|k| losers.contains(&crate::view::hex(&k)))
            })
            .map(|w| w.recipient)
            .collect();
        let rotation = self.rotate_wraps(&all, &devices).await?;
        Ok((!rotation.scopes.is_empty()).then_some(rotation))
    }

    /// Decides what a connection from the network identity `remote`, on a
    /// secured channel with `handshake_hash`, may do (see the module docs):
    /// a member replicates; a stranger must open with a redemption, which
    /// is answered here. Reads at most one message and writes at most one.
    /// Replicate over `io` afterwards only if
    /// [`InviteServing::replicates`].
    ///
    /// A stranger takes a slot of this record's [`InviteGate`] while it is
    /// answered: when all are taken it is refused at once
    /// ([`InviteError::Busy`]), and if it sends nothing within the gate's
    /// timeout, [`InviteError::TimedOut`]. Either way nothing was sent:
    /// close the connection.
    pub async fn admit<IO>(
        &self,
        io: &mut IO,
        remote: [u8; 32],
        handshake_hash: &[u8],
    ) -> Result<InviteServing, Error>
    where
        IO: Stream<Item = std::io::Result<Vec<u8>>> + Sink<Vec<u8>, Error = std::io::Error> + Unpin,
    {
        self.record().refresh_firewall().await?;
        if self.record().allows_peer(&remote) {
            return Ok(InviteServing::Member);
        }
        let gate = self.invite_gate();
        let _slot = gate.enter().ok_or(InviteError::Busy)?;
        let Some(first) = gate.first_message(io).await? else {
            return Ok(InviteServing::NotAnInvite);
        };
        let Some(request) = first.strip_prefix(INVITE_CHANNEL) else {
            return Ok(InviteServing::NotAnInvite);
        };
        // The owner scope's key may have arrived since (another device
        // created the invite, or this is a fresh process).
        self.refresh_keys().await?;
        let answer = self
            .answer_invite_from(handshake_hash, request, Some(remote))
            .await;
        io.send(framed(&answer.reply)).await.map_err(io_err)?;
        Ok(match answer.result {
            // The grant names `remote`: the firewall (which follows the
            // record) admits it from now on, as long as the grant stands.
            Ok(w) => InviteServing::Redeemed(w),
            Err(e) => InviteServing::Refused(e),
        })
    }

    /// [`SecureRecord::admit`], then replicates over `io` until it closes
    /// if the peer may. Returns how the peer was admitted.
    pub async fn serve_peer<IO>(
        &self,
        mut io: IO,
        remote: [u8; 32],
        handshake_hash: &[u8],
        initiator: bool,
    ) -> Result<InviteServing, Error>
    where
        IO: Stream<Item = std::io::Result<Vec<u8>>>
            + Sink<Vec<u8>, Error = std::io::Error>
            + Unpin
            + Send
            + 'static,
    {
        let admitted = self.admit(&mut io, remote, handshake_hash).await?;
        if admitted.replicates() {
            self.record().replicate(io, initiator).await?;
        }
        Ok(admitted)
    }

    /// The provider's side: redeems `invite` with this device's writer key
    /// and identity over `io`, a secured channel to the network identity
    /// `remote` with `handshake_hash`. Sends one message and reads one. On
    /// success the remote (a holder of the invite: its answer proves it) is
    /// let through this record's firewall, and the caller replicates over
    /// `io`.
    pub async fn redeem<IO>(
        &self,
        invite: &Invite,
        io: &mut IO,
        remote: [u8; 32],
        handshake_hash: &[u8],
    ) -> Result<(), InviteError>
    where
        IO: Stream<Item = std::io::Result<Vec<u8>>> + Sink<Vec<u8>, Error = std::io::Error> + Unpin,
    {
        if invite.record_key != self.record().key() {
            return Err(InviteError::WrongRecord);
        }
        let r = Redemption::new(invite.clone(), self.record().writer_key(), self.identity());
        io.send(framed(&r.request(handshake_hash)))
            .await
            .map_err(|_| InviteError::NoAnswer)?;
        let reply = match io.next().await {
            Some(Ok(m)) => m,
            _ => return Err(InviteError::NoAnswer),
        };
        let reply = reply
            .strip_prefix(INVITE_CHANNEL)
            .ok_or(InviteError::NoAnswer)?;
        r.on_reply(handshake_hash, reply)?;
        self.record().allow_peer(remote);
        Ok(())
    }

    /// [`Record::sync`](crate::Record::sync) for a device that answers
    /// invites (an owner device): joins the record's topic on `transport`
    /// and `discovery`, lets any peer connect at the swarm level, and
    /// serves each connection with [`SecureRecord::serve_peer`] (members
    /// replicate; strangers get the invite channel only). Returns the
    /// handle and the future doing the work (spawn it on any executor).
    pub async fn sync_with_invites<T, D>(
        self: Arc<Self>,
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
            + Unpin
            + Send
            + 'static,
    {
        self.record().refresh_firewall().await?;
        // Everyone reaches the per-connection gate; it decides.
        let (swarm, connections, driver) = SwarmBuilder::new(self.record().identity())
            .firewall(|_| true)
            .bind(transport, discovery, addr)
            .await
            .map_err(|e| Error::Storage(format!("cannot listen: {e}")))?;
        let topic = self.record().topic();
        swarm
            .join(&topic, JoinMode::BOTH)
            .map_err(|e| Error::Storage(format!("swarm stopped: {e}")))?;
        // Boxed: the watch rotates keys (puts, wraps) and its future is
        // large; by value it made this session's future ~58 KB (debug).
        let watch = Box::pin(self.clone().rotate_lost_redemptions_on_update());
        let work = async move {
            let serve = async {
                let sessions = run_sessions(connections, |conn| {
                    let remote = conn.remote_public_key().to_bytes();
                    let member = self.record().allows_peer(&remote);
                    // A stranger beyond the gate's limit is dropped here
                    // (admit would refuse it too).
                    if !member && self.invite_gate().is_full() {
                        return None;
                    }
                    let me = self.clone();
                    Some(async move {
                        let hh = conn.handshake_hash();
                        let initiator = conn.is_initiator();
                        let mut conn = conn;
                        let admitted = me.admit(&mut conn, remote, hh.as_bytes()).await;
                        if matches!(&admitted, Ok(a) if a.replicates()) {
                            let _ = me.record().replicate(conn, initiator).await;
                        }
                    })
                });
                // Beside the sessions: rotate keys away from lost
                // redemptions as soon as the view shows them (if the watch
                // ends first, the base's events closed: the sessions go
                // on without it).
                let sessions = async {
                    futures::pin_mut!(sessions);
                    futures::pin_mut!(watch);
                    if let futures::future::Either::Right((_, sessions)) =
                        futures::future::select(sessions, watch).await
                    {
                        sessions.await;
                    }
                };
                // And the checkpoint duty, as `Record::serve` runs it.
                beside_duty(self.record(), sessions).await;
                Ok(())
            };
            drive(driver, serve).await
        };
        Ok((SyncHandle { swarm, topic }, work))
    }

    /// The provider's side on a swarm: joins the topic `invite` names (the
    /// record's discovery key; this record must have been joined with
    /// `invite.record_key`) on `transport` and `discovery`, redeems the
    /// invite with the first patient device that answers (see
    /// [`SecureRecord::redeem`]), then replicates with it and with every
    /// peer the record's firewall admits.
    ///
    /// Returns the handle, the future doing the work (spawn it), and a
    /// [`Redeemed`] future that resolves once the redemption is decided:
    /// `Ok` when granted, or the patient device's typed refusal (expired,
    /// used, cancelled, wrong secret, ...). A peer that does not answer
    /// with a valid proof is dropped and the next one tried.
    pub async fn join_with_invite<T, D>(
        self: Arc<Self>,
        invite: &Invite,
        transport: T,
        discovery: D,
        addr: &T::Address,
    ) -> Result<
        (
            SyncHandle,
            impl Future<Output = Result<(), Error>> + 'static,
            Redeemed,
        ),
        Error,
    >
    where
        T: Transport + 'static,
        T::Listener: 'static,
        D: Discovery<Address = T::Address> + 'static,
        PeerConnection<T::Stream>: Stream<Item = std::io::Result<Vec<u8>>>
            + Sink<Vec<u8>, Error = std::io::Error>
            + Unpin
            + Send
            + 'static,
    {
        if invite.record_key != self.record().key() {
            return Err(InviteError::WrongRecord.into());
        }
        self.record().refresh_firewall().await?;
        let decided = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let mut firewall = self.record().firewall();
        let open = decided.clone();
        // Until the redemption is decided, any peer of the topic may
        // connect: it is trusted only if it proves it holds the invite.
        let (swarm, connections, driver) = SwarmBuilder::new(self.record().identity())
            .firewall(move |pk| !open.load(Ordering::SeqCst) || firewall(pk))
            .bind(transport, discovery, addr)
            .await
            .map_err(|e| Error::Storage(format!("cannot listen: {e}")))?;
        let topic = self.record().topic();
        swarm
            .join(&topic, JoinMode::BOTH)
            .map_err(|e| Error::Storage(format!("swarm stopped: {e}")))?;
        let invite = invite.clone();
        let work = async move {
            let serve = async {
                let sessions = run_sessions(connections, |conn| {
                    let remote = conn.remote_public_key().to_bytes();
                    let member = self.record().allows_peer(&remote);
                    // One redemption at a time; strangers after the
                    // decision are not let in.
                    if !member
                        && (decided.load(Ordering::SeqCst) || busy.swap(true, Ordering::SeqCst))
                    {
                        return None;
                    }
                    let (me, invite) = (self.clone(), invite.clone());
                    let (decided, busy, tx) = (decided.clone(), busy.clone(), tx.clone());
                    Some(async move {
                        let hh = conn.handshake_hash();
                        let initiator = conn.is_initiator();
                        let mut conn = conn;
                        if !member {
                            let r = me.redeem(&invite, &mut conn, remote, hh.as_bytes()).await;
                            let retry =
                                matches!(r, Err(InviteError::NoAnswer | InviteError::BadReply));
                            if !retry {
                                decided.store(true, Ordering::SeqCst);
                                if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                                    let _ = tx.send(r);
                                }
                            }
                            busy.store(false, Ordering::SeqCst);
                            if r.is_err() {
                                return;
                            }
                        }
                        let _ = me.record().replicate(conn, initiator).await;
                    })
                });
                beside_duty(self.record(), sessions).await;
                Ok(())
            };
            drive(driver, serve).await
        };
        Ok((SyncHandle { swarm, topic }, work, Redeemed(rx)))
    }
}

/// Resolves when a [`SecureRecord::join_with_invite`] redemption is
/// decided: `Ok(())` once granted, or why not. If the work future ends
/// first, [`InviteError::NoAnswer`].
#[derive(Debug)]
pub struct Redeemed(oneshot::Receiver<Result<(), InviteError>>);

impl Future for Redeemed {
    type Output = Result<(), InviteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(_)) => Poll::Ready(Err(InviteError::NoAnswer)),
            Poll::Pending => Poll::Pending,
        }
    }
}
