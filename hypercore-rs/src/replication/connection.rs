//! The replication connection as a sans-IO state machine: feed it decoded
//! messages, it returns events and queues messages to send. It knows nothing
//! of cores or storage; the driver resolves remote opens, serves requests and
//! verifies data, and reports back. Every protocol violation is a typed error,
//! after which the connection must be closed.

use super::wire::{capability, session_secret, Message};
use crate::hash::Hash;
use crate::proof::{Proof, ProofRequest};
use std::collections::{HashMap, VecDeque};

/// The most channels one connection may have open.
pub const MAX_CHANNELS: usize = 1024;
/// The most requests a remote may leave unanswered on one channel.
pub const MAX_REMOTE_INFLIGHT: usize = 1024;

/// A protocol violation by the remote peer (the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame could not be decoded.
    #[error("bad frame: {0}")]
    Frame(#[from] super::wire::FrameError),
    /// The first message was not a hello, or a second hello came.
    #[error("handshake violation")]
    Handshake,
    /// A message named a channel that is not open.
    #[error("message for a channel that is not open")]
    UnknownChannel,
    /// The remote opened the same channel twice.
    #[error("channel opened twice")]
    DuplicateChannel,
    /// More channels than allowed.
    #[error("too many channels")]
    TooManyChannels,
    /// An answer to a request that was never made, or of the wrong kind.
    #[error("unsolicited or mismatched answer")]
    Unsolicited,
    /// The remote sent data that failed verification.
    #[error("the remote sent an invalid proof: {0}")]
    InvalidProof(crate::error::ProofError),
    /// The remote asked for too much at once or announced too many ranges.
    #[error("the remote exceeded a limit")]
    Limit,
    /// The remote did not answer in time.
    #[error("the remote timed out")]
    Timeout,
}

/// What a request was for, so its answer can be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// A block.
    Block(u64),
    /// An upgrade.
    Upgrade,
    /// An `update` probe of this round (an upgrade request).
    Probe(u64),
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnEvent {
    /// The remote opened a core we have not opened here: look it up, check
    /// the capability with [`Connection::remote_capability_ok`], then
    /// [`Connection::accept`] or [`Connection::reject`].
    RemoteOpen {
        /// The remote's channel number.
        remote: u32,
        /// The discovery key.
        discovery_key: Hash,
        /// The capability it sent.
        capability: Hash,
    },
    /// Both sides opened the channel: attach the core.
    Opened {
        /// Our channel number.
        channel: u32,
    },
    /// The remote refused our open, or closed the channel.
    Closed {
        /// Our channel number.
        channel: u32,
    },
    /// The remote's view of the core.
    Sync {
        /// Channel.
        channel: u32,
        /// Fork.
        fork: u64,
        /// Length.
        length: u64,
    },
    /// The remote asks for a proof.
    Request {
        /// Channel.
        channel: u32,
        /// Id to answer with.
        id: u64,
        /// The request.
        request: Box<ProofRequest>,
    },
    /// An answer to one of our requests.
    Data {
        /// Channel.
        channel: u32,
        /// What it was for.
        pending: Pending,
        /// The proof (unverified).
        proof: Box<Proof>,
    },
    /// The remote cannot answer one of our requests.
    NoData {
        /// Channel.
        channel: u32,
        /// What it was for.
        pending: Pending,
    },
    /// The remote's availability changed.
    Have {
        /// Channel.
        channel: u32,
        /// Dropped rather than gained.
        drop: bool,
        /// (start, length) pairs.
        ranges: Vec<(u64, u64)>,
    },
    /// The remote would like to know what we hold in a range.
    Want {
        /// Channel.
        channel: u32,
        /// First block.
        start: u64,
        /// Number of blocks.
        length: u64,
    },
    /// An upper-layer message.
    Extension {
        /// Channel.
        channel: u32,
        /// Name.
        name: String,
        /// Payload.
        message: Vec<u8>,
    },
}

struct Channel {
    discovery_key: Hash,
    key: Hash,
    remote: Option<u32>,
    local_open_sent: bool,
    requests: HashMap<u64, Pending>,
    next_id: u64,
    remote_inflight: usize,
}

/// One replication connection's protocol state.
pub struct Connection {
    initiator: bool,
    handshake_hash: Option<Vec<u8>>,
    nonce: [u8; 32],
    session: Option<Hash>,
    channels: HashMap<u32, Channel>,
    by_remote: HashMap<u32, u32>,
    by_dkey: HashMap<Hash, u32>,
    next_channel: u32,
    outbox: VecDeque<Message>,
    /// Remote channel numbers of channels we closed: what the remote sent
    /// on them before it heard of the close is dropped, not an error.
    closed_remote: std::collections::HashSet<u32>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("initiator", &self.initiator)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection; `nonce` must be fresh random bytes. Queues the hello.
    pub fn new(initiator: bool, handshake_hash: Option<Vec<u8>>, nonce: [u8; 32]) -> Self {
        let mut c = Connection {
            initiator,
            handshake_hash,
            nonce,
            session: None,
            channels: HashMap::new(),
            by_remote: HashMap::new(),
            by_dkey: HashMap::new(),
            next_channel: 0,
            outbox: VecDeque::new(),
            closed_remote: std::collections::HashSet::new(),
        };
        c.outbox.push_back(Message::Hello { nonce });
        c
    }

    /// The next message to send.
    pub fn poll_send(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    /// Whether the hello exchange is complete.
    pub fn ready(&self) -> bool {
        self.session.is_some()
    }

    /// Our channel for a discovery key, if open or opening.
    pub fn channel_of(&self, discovery_key: &Hash) -> Option<u32> {
        self.by_dkey.get(discovery_key).copied()
    }

    fn my_cap(&self, key: &Hash) -> Option<Hash> {
        self.session.map(|s| capability(key, &s, self.initiator))
    }

    /// Whether `cap` proves the remote knows `key`.
    pub fn remote_capability_ok(&self, key: &Hash, cap: &Hash) -> bool {
        self.session
            .map(|s| capability(key, &s, !self.initiator) == *cap)
            .unwrap_or(false)
    }

    /// Opens a channel for a core we hold (sent once the session is ready).
    pub fn open(&mut self, discovery_key: Hash, key: Hash) -> Result<u32, ProtocolError> {
        if let Some(c) = self.by_dkey.get(&discovery_key) {
            return Ok(*c);
        }
        if self.channels.len() >= MAX_CHANNELS {
            return Err(ProtocolError::TooManyChannels);
        }
        let id = self.next_channel;
        self.next_channel += 1;
        self.channels.insert(
            id,
            Channel {
                discovery_key,
                key,
                remote: None,
                local_open_sent: false,
                requests: HashMap::new(),
                next_id: 0,
                remote_inflight: 0,
            },
        );
        self.by_dkey.insert(discovery_key, id);
        self.send_opens();
        Ok(id)
    }

    fn send_opens(&mut self) {
        if self.session.is_none() {
            return;
        }
        let mut ids: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, c)| !c.local_open_sent)
            .map(|(i, _)| *i)
            .collect();
        ids.sort_unstable();
        for id in ids {
            let Some(key) = self.channels.get(&id).map(|c| c.key) else {
                continue;
            };
            let Some(cap) = self.my_cap(&key) else {
                continue;
            };
            if let Some(c) = self.channels.get_mut(&id) {
                c.local_open_sent = true;
                let discovery_key = c.discovery_key;
                self.outbox.push_back(Message::Open {
                    channel: id,
                    discovery_key,
                    capability: cap,
                });
            }
        }
    }

    /// Accepts a remote open whose capability the driver checked.
    pub fn accept(
        &mut self,
        remote: u32,
        discovery_key: Hash,
        key: Hash,
    ) -> Result<Option<ConnEvent>, ProtocolError> {
        let id = self.open(discovery_key, key)?;
        self.attach_remote(id, remote)
    }

    /// Refuses a remote open (unknown core or bad capability).
    pub fn reject(&mut self, remote: u32) {
        self.outbox.push_back(Message::Reject { channel: remote });
    }

    fn attach_remote(&mut self, id: u32, remote: u32) -> Result<Option<ConnEvent>, ProtocolError> {
        if self.by_remote.contains_key(&remote) {
            return Err(ProtocolError::DuplicateChannel);
        }
        let Some(c) = self.channels.get_mut(&id) else {
            return Err(ProtocolError::UnknownChannel);
        };
        if c.remote.is_some() {
            return Err(ProtocolError::DuplicateChannel);
        }
        c.remote = Some(remote);
        self.by_remote.insert(remote, id);
        Ok(Some(ConnEvent::Opened { channel: id }))
    }

    /// Closes one of our channels.
    pub fn close(&mut self, channel: u32) {
        if let Some(r) = self.channels.get(&channel).and_then(|c| c.remote) {
            self.closed_remote.insert(r);
        }
        if self.forget(channel) {
            self.outbox.push_back(Message::Close { channel });
        }
    }

    /// Drops a channel and its lookups; false if it was not known.
    fn forget(&mut self, channel: u32) -> bool {
        let Some(c) = self.channels.remove(&channel) else {
            return false;
        };
        self.by_dkey.remove(&c.discovery_key);
        if let Some(r) = c.remote {
            self.by_remote.remove(&r);
        }
        true
    }

    fn open_channel(&self, remote: u32) -> Result<u32, ProtocolError> {
        let id = *self
            .by_remote
            .get(&remote)
            .ok_or(ProtocolError::UnknownChannel)?;
        match self.channels.get(&id) {
            Some(c) if c.local_open_sent => Ok(id),
            _ => Err(ProtocolError::UnknownChannel),
        }
    }

    /// Sends a channel message (the channel number is filled in).
    pub fn send(&mut self, channel: u32, msg: impl FnOnce(u32) -> Message) {
        if self
            .channels
            .get(&channel)
            .is_some_and(|c| c.remote.is_some())
        {
            self.outbox.push_back(msg(channel));
        }
    }

    /// Sends a request; returns its id.
    pub fn request(
        &mut self,
        channel: u32,
        request: ProofRequest,
        pending: Pending,
    ) -> Option<u64> {
        let c = self.channels.get_mut(&channel)?;
        c.remote?;
        let id = c.next_id;
        c.next_id += 1;
        c.requests.insert(id, pending);
        self.outbox.push_back(Message::Request {
            channel,
            id,
            request: Box::new(request),
        });
        Some(id)
    }

    /// Answers a remote request.
    pub fn answer(&mut self, channel: u32, id: u64, proof: Option<Proof>) {
        if let Some(c) = self.channels.get_mut(&channel) {
            c.remote_inflight = c.remote_inflight.saturating_sub(1);
        }
        self.send(channel, |ch| match proof {
            Some(proof) => Message::Data {
                channel: ch,
                id,
                proof: Box::new(proof),
            },
            None => Message::NoData { channel: ch, id },
        });
    }

    /// Handles one message from the remote.
    pub fn handle(&mut self, msg: Message) -> Result<Vec<ConnEvent>, ProtocolError> {
        let msg = match msg {
            Message::Hello { nonce } => {
                if self.session.is_some() {
                    return Err(ProtocolError::Handshake);
                }
                let (i, r) = if self.initiator {
                    (self.nonce, nonce)
                } else {
                    (nonce, self.nonce)
                };
                self.session = Some(session_secret(self.handshake_hash.as_deref(), &i, &r));
                self.send_opens();
                return Ok(Vec::new());
            }
            _ if self.session.is_none() => return Err(ProtocolError::Handshake),
            m => m,
        };
        if !self.closed_remote.is_empty() {
            let remote = match &msg {
                Message::Hello { .. } | Message::Reject { .. } => None,
                Message::Open { channel, .. }
                | Message::Close { channel }
                | Message::Sync { channel, .. }
                | Message::Request { channel, .. }
                | Message::Cancel { channel, .. }
                | Message::Data { channel, .. }
                | Message::NoData { channel, .. }
                | Message::Want { channel, .. }
                | Message::Unwant { channel, .. }
                | Message::Have { channel, .. }
                | Message::Extension { channel, .. } => Some(*channel),
            };
            if let Some(r) = remote.filter(|r| self.closed_remote.contains(r)) {
                match msg {
                    // The remote reuses the number: a new channel.
                    Message::Open { .. } => {
                        self.closed_remote.remove(&r);
                    }
                    Message::Close { .. } => {
                        self.closed_remote.remove(&r);
                        return Ok(Vec::new());
                    }
                    _ => return Ok(Vec::new()),
                }
            }
        }
        let ev = match msg {
            Message::Hello { .. } => return Err(ProtocolError::Handshake),
            Message::Open {
                channel,
                discovery_key,
                capability: cap,
            } => {
                if self.by_remote.contains_key(&channel) {
                    return Err(ProtocolError::DuplicateChannel);
                }
                match self.by_dkey.get(&discovery_key).copied() {
                    Some(id) => {
                        let key = self
                            .channels
                            .get(&id)
                            .map(|c| c.key)
                            .ok_or(ProtocolError::UnknownChannel)?;
                        if self.remote_capability_ok(&key, &cap) {
                            self.attach_remote(id, channel)?
                        } else {
                            self.reject(channel);
                            None
                        }
                    }
                    None => {
                        if self.channels.len() >= MAX_CHANNELS {
                            return Err(ProtocolError::TooManyChannels);
                        }
                        Some(ConnEvent::RemoteOpen {
                            remote: channel,
                            discovery_key,
                            capability: cap,
                        })
                    }
                }
            }
            Message::Reject { channel } => {
                if !self.channels.contains_key(&channel) {
                    return Err(ProtocolError::UnknownChannel);
                }
                self.forget(channel);
                Some(ConnEvent::Closed { channel })
            }
            Message::Close { channel } => {
                let id = self.open_channel(channel)?;
                self.forget(id);
                Some(ConnEvent::Closed { channel: id })
            }
            Message::Sync {
                channel,
                fork,
                length,
            } => Some(ConnEvent::Sync {
                channel: self.open_channel(channel)?,
                fork,
                length,
            }),
            Message::Request {
                channel,
                id,
                request,
            } => {
                let ch = self.open_channel(channel)?;
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.remote_inflight += 1;
                    if c.remote_inflight > MAX_REMOTE_INFLIGHT {
                        return Err(ProtocolError::Limit);
                    }
                }
                Some(ConnEvent::Request {
                    channel: ch,
                    id,
                    request,
                })
            }
            Message::Cancel { channel, .. } => {
                self.open_channel(channel)?;
                None
            }
            Message::Data { channel, id, proof } => {
                let ch = self.open_channel(channel)?;
                let pending = self
                    .channels
                    .get_mut(&ch)
                    .and_then(|c| c.requests.remove(&id))
                    .ok_or(ProtocolError::Unsolicited)?;
                let fits = match pending {
                    Pending::Block(b) => proof.block.as_ref().is_some_and(|p| p.index == b),
                    Pending::Upgrade | Pending::Probe(_) => proof.block.is_none(),
                };
                if !fits {
                    return Err(ProtocolError::Unsolicited);
                }
                Some(ConnEvent::Data {
                    channel: ch,
                    pending,
                    proof,
                })
            }
            Message::NoData { channel, id } => {
                let ch = self.open_channel(channel)?;
                let pending = self
                    .channels
                    .get_mut(&ch)
                    .and_then(|c| c.requests.remove(&id))
                    .ok_or(ProtocolError::Unsolicited)?;
                Some(ConnEvent::NoData {
                    channel: ch,
                    pending,
                })
            }
            Message::Want {
                channel,
                start,
                length,
            } => Some(ConnEvent::Want {
                channel: self.open_channel(channel)?,
                start,
                length,
            }),
            Message::Unwant { channel, .. } => {
                self.open_channel(channel)?;
                None
            }
            Message::Have {
                channel,
                drop,
                ranges,
            } => Some(ConnEvent::Have {
                channel: self.open_channel(channel)?,
                drop,
                ranges,
            }),
            Message::Extension {
                channel,
                name,
                message,
            } => Some(ConnEvent::Extension {
                channel: self.open_channel(channel)?,
                name,
                message,
            }),
        };
        Ok(ev.into_iter().collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pump(a: &mut Connection, b: &mut Connection) -> Vec<ConnEvent> {
        let mut evs = Vec::new();
        loop {
            let mut moved = false;
            while let Some(m) = a.poll_send() {
                moved = true;
                evs.extend(b.handle(m).unwrap());
            }
            while let Some(m) = b.poll_send() {
                moved = true;
                evs.extend(a.handle(m).unwrap());
            }
            if !moved {
                return evs;
            }
        }
    }

    #[test]
    fn channels_open_only_with_the_right_key() {
        let mut a = Connection::new(true, None, [1; 32]);
        let mut b = Connection::new(false, None, [2; 32]);
        let (dk, key) = ([9; 32], [8; 32]);
        a.open(dk, key).unwrap();
        let evs = pump(&mut a, &mut b);
        let Some(ConnEvent::RemoteOpen {
            remote, capability, ..
        }) = evs.first().cloned()
        else {
            panic!("{evs:?}")
        };
        assert!(b.remote_capability_ok(&key, &capability));
        assert!(!b.remote_capability_ok(&[7; 32], &capability));
        let ev = b.accept(remote, dk, key).unwrap();
        assert_eq!(ev, Some(ConnEvent::Opened { channel: 0 }));
        let evs = pump(&mut a, &mut b);
        assert_eq!(evs, vec![ConnEvent::Opened { channel: 0 }]);
        // A reflected capability (the remote's own) does not open anything.
        let mut c = Connection::new(true, None, [3; 32]);
        let mut d = Connection::new(false, None, [4; 32]);
        pump(&mut c, &mut d);
        d.open(dk, key).unwrap();
        let open = d.poll_send().unwrap();
        let Message::Open {
            capability: dcap, ..
        } = open.clone()
        else {
            panic!()
        };
        assert!(!d.remote_capability_ok(&key, &dcap));
        c.handle(open).unwrap();
    }

    #[test]
    fn violations_are_errors() {
        let mut a = Connection::new(true, None, [1; 32]);
        assert_eq!(
            a.handle(Message::Sync {
                channel: 0,
                fork: 0,
                length: 1
            }),
            Err(ProtocolError::Handshake)
        );
        a.handle(Message::Hello { nonce: [5; 32] }).unwrap();
        assert_eq!(
            a.handle(Message::Hello { nonce: [5; 32] }),
            Err(ProtocolError::Handshake)
        );
        assert_eq!(
            a.handle(Message::Sync {
                channel: 0,
                fork: 0,
                length: 1
            }),
            Err(ProtocolError::UnknownChannel)
        );
        assert_eq!(
            a.handle(Message::NoData { channel: 0, id: 0 }),
            Err(ProtocolError::UnknownChannel)
        );
    }
}
