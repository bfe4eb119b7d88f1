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
//! At most [`MAX_PENDING_REDEMPTIONS`] connections wait for a first message
//! at once; more strangers are dropped (the limit keeps a flood of idle
//! connections from costing memory; members are never limited).

use crate::apply::Rejection;
use crate::error::Error;
use crate::invite::{Invite, InviteError, Redemption};
use crate::op::WriterKey;
use crate::secure::SecureRecord;
use crate::sync::{drive, run_sessions, SyncHandle};
use futures::channel::oneshot;
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use swarm_rs::{Discovery, JoinMode, PeerConnection, SwarmBuilder, Transport};

/// The first bytes of every message on the invite channel: a peer that is
/// not a member must start with them.
pub const INVITE_CHANNEL: &[u8] = b"ehr-core invite channel v1\n";

/// How many connections from strangers may wait for their first message
/// at once.
pub const MAX_PENDING_REDEMPTIONS: usize = 8;

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
    pub async fn rotate_lost_redemptions(&self) -> Result<Option<crate::Rotation>, Error> {
        let losers: std::collections::BTreeSet<String> = self
            .record()
            .rejected()
            .await?
            .into_iter()
            .filter_map(|r| match r.rejection {
                Rejection::InviteTaken { writer, .. } => Some(writer),
                _ => None,
            })
            .collect();
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
        let first = match io.next().await {
            Some(Ok(m)) => m,
            _ => return Ok(InviteServing::NotAnInvite),
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
        let pending = Arc::new(AtomicUsize::new(0));
        let work = async move {
            let serve = async {
                run_sessions(connections, |conn| {
                    let remote = conn.remote_public_key().to_bytes();
                    let member = self.record().allows_peer(&remote);
                    if !member && pending.load(Ordering::SeqCst) >= MAX_PENDING_REDEMPTIONS {
                        return None;
                    }
                    let me = self.clone();
                    let pending = pending.clone();
                    Some(async move {
                        let hh = conn.handshake_hash();
                        let initiator = conn.is_initiator();
                        let mut conn = conn;
                        if !member {
                            pending.fetch_add(1, Ordering::SeqCst);
                        }
                        let admitted = me.admit(&mut conn, remote, hh.as_bytes()).await;
                        if !member {
                            pending.fetch_sub(1, Ordering::SeqCst);
                        }
                        if matches!(&admitted, Ok(a) if a.replicates()) {
                            let _ = me.record().replicate(conn, initiator).await;
                        }
                    })
                })
                .await;
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
                run_sessions(connections, |conn| {
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
                })
                .await;
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
