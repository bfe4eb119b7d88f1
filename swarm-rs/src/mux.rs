//! Protomux-style channels over one secure connection, without I/O.
//!
//! A channel is named by a protocol string and an id (bytes). Each side opens
//! it on its own; it becomes usable once both have opened it ("paired open"),
//! and closing it from either side closes it for both. [`Mux`] only turns
//! calls and received frames into frames to send and [`MuxEvent`]s; the
//! frames travel as application frames of a secure connection. Input from the
//! peer never panics: it either works or returns a typed [`MuxError`], after
//! which the mux (and the connection carrying it) should be dropped.
//!
//! The wire format is described in `DESIGN.md` ("Mux").

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use thiserror::Error;

/// Version byte at the start of every mux frame.
pub const MUX_VERSION: u8 = 1;

const KIND_OPEN: u8 = 0;
const KIND_CLOSE: u8 = 1;
const KIND_MESSAGE: u8 = 2;

/// Errors of the mux. Errors caused by the peer ([`MuxError::Malformed`],
/// [`MuxError::UnsupportedVersion`], [`MuxError::UnknownChannel`],
/// [`MuxError::ChannelInUse`], [`MuxError::RemoteLimit`],
/// [`MuxError::UnpairedMessage`]) are fatal; the others report local misuse
/// and leave the mux usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MuxError {
    /// A frame does not follow the mux format.
    #[error("malformed mux frame: {0}")]
    Malformed(&'static str),
    /// The peer speaks a mux version we do not.
    #[error("unsupported mux version {0}")]
    UnsupportedVersion(u8),
    /// The peer referred to a channel number it never opened.
    #[error("peer used unknown channel {0}")]
    UnknownChannel(u32),
    /// The peer opened a name it already has open, or did not number its
    /// channels in increasing order.
    #[error("peer reused channel {0}")]
    ChannelInUse(u32),
    /// The peer sent a message to one of our channels that it never opened.
    #[error("peer sent on channel {0} without opening it")]
    UnpairedMessage(u32),
    /// The peer exceeded a limit (channel count, name or id length).
    #[error("peer exceeded the limit on {0}")]
    RemoteLimit(&'static str),
    /// Opening one more channel would exceed the channel limit.
    #[error("too many channels")]
    TooManyChannels,
    /// The protocol name or id is longer than allowed.
    #[error("channel {0} too long")]
    NameTooLong(&'static str),
    /// This side already opened a channel with that name and id.
    #[error("channel already open")]
    AlreadyOpen,
    /// No channel with that handle is open here.
    #[error("no such channel")]
    NoSuchChannel,
    /// The channel is open here but the peer has not opened it yet.
    #[error("channel not yet opened by the peer")]
    NotPaired,
    /// Channel numbers ran out (after 2^32 opens on one connection).
    #[error("channel numbers exhausted")]
    Exhausted,
}

/// Limits of a [`Mux`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MuxConfig {
    /// Most channels alive at once, counting ones opened by either side only
    /// and ones whose close is not yet acknowledged.
    pub max_channels: usize,
    /// Longest protocol name, in bytes.
    pub max_protocol_len: usize,
    /// Longest channel id, in bytes.
    pub max_id_len: usize,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            max_channels: 256,
            max_protocol_len: 255,
            max_id_len: 255,
        }
    }
}

/// A handle to a channel opened on this side. Channel numbers are never
/// reused within one mux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelId(u32);

impl ChannelId {
    /// This side's channel number (as sent on the wire).
    pub fn number(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "channel#{}", self.0)
    }
}

/// Something that happened on the mux.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MuxEvent {
    /// The peer opened a channel that this side has not opened; call
    /// [`Mux::open`] with the same name to accept it.
    RemoteOpen {
        /// Protocol name.
        protocol: String,
        /// Channel id.
        id: Vec<u8>,
    },
    /// Both sides have opened the channel: messages can flow.
    Opened {
        /// The local handle.
        channel: ChannelId,
        /// Protocol name.
        protocol: String,
        /// Channel id.
        id: Vec<u8>,
    },
    /// A message arrived on a channel.
    Message {
        /// The local handle.
        channel: ChannelId,
        /// The message.
        data: Vec<u8>,
    },
    /// The peer closed the channel; the handle is no longer valid.
    Closed {
        /// The local handle.
        channel: ChannelId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ChannelKey {
    protocol: String,
    id: Vec<u8>,
}

#[derive(Debug)]
struct Channel {
    local: Option<u32>,
    remote: Option<u32>,
}

/// The channel multiplexer of one connection.
#[derive(Debug)]
pub struct Mux {
    config: MuxConfig,
    channels: BTreeMap<ChannelKey, Channel>,
    by_local: BTreeMap<u32, ChannelKey>,
    by_remote: BTreeMap<u32, ChannelKey>,
    /// Both sides number their channels in increasing order, so a number
    /// below these that is not open was closed, and late frames naming it are
    /// expected races rather than errors.
    next_local: u32,
    next_remote: u32,
    outgoing: VecDeque<Vec<u8>>,
    events: VecDeque<MuxEvent>,
}

impl Default for Mux {
    fn default() -> Self {
        Self::new(MuxConfig::default())
    }
}

impl Mux {
    /// An empty mux.
    pub fn new(config: MuxConfig) -> Self {
        Self {
            config,
            channels: BTreeMap::new(),
            by_local: BTreeMap::new(),
            by_remote: BTreeMap::new(),
            next_local: 0,
            next_remote: 0,
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Channels counted against [`MuxConfig::max_channels`]: open on this
    /// side, the peer's side, or both.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Opens (or accepts) the channel `(protocol, id)`. It is usable once the
    /// peer opens it too, signalled by [`MuxEvent::Opened`].
    pub fn open(&mut self, protocol: &str, id: &[u8]) -> Result<ChannelId, MuxError> {
        if protocol.len() > self.config.max_protocol_len.min(usize::from(u16::MAX)) {
            return Err(MuxError::NameTooLong("protocol"));
        }
        if id.len() > self.config.max_id_len {
            return Err(MuxError::NameTooLong("id"));
        }
        let key = ChannelKey {
            protocol: protocol.to_owned(),
            id: id.to_vec(),
        };
        let remote = match self.channels.get(&key) {
            Some(channel) if channel.local.is_some() => return Err(MuxError::AlreadyOpen),
            Some(channel) => channel.remote,
            None if self.channel_count() >= self.config.max_channels => {
                return Err(MuxError::TooManyChannels)
            }
            None => None,
        };
        let number = self.next_local;
        self.next_local = number.checked_add(1).ok_or(MuxError::Exhausted)?;
        self.channels.insert(
            key.clone(),
            Channel {
                local: Some(number),
                remote,
            },
        );
        self.by_local.insert(number, key.clone());
        self.outgoing.push_back(encode_open(number, protocol, id));
        let channel = ChannelId(number);
        if remote.is_some() {
            self.events.push_back(MuxEvent::Opened {
                channel,
                protocol: key.protocol,
                id: key.id,
            });
        }
        Ok(channel)
    }

    /// True if both sides have opened the channel.
    pub fn is_paired(&self, channel: ChannelId) -> bool {
        self.by_local
            .get(&channel.0)
            .and_then(|key| self.channels.get(key))
            .is_some_and(|c| c.remote.is_some())
    }

    /// Sends a message on a paired channel.
    pub fn send(&mut self, channel: ChannelId, data: &[u8]) -> Result<(), MuxError> {
        let key = self
            .by_local
            .get(&channel.0)
            .ok_or(MuxError::NoSuchChannel)?;
        let remote = self
            .channels
            .get(key)
            .and_then(|c| c.remote)
            .ok_or(MuxError::NotPaired)?;
        // Messages name the receiver's channel number.
        let mut frame = Vec::with_capacity(6 + data.len());
        frame.extend_from_slice(&[MUX_VERSION, KIND_MESSAGE]);
        frame.extend_from_slice(&remote.to_le_bytes());
        frame.extend_from_slice(data);
        self.outgoing.push_back(frame);
        Ok(())
    }

    /// Closes a channel for both sides. The handle is invalid afterwards.
    pub fn close(&mut self, channel: ChannelId) -> Result<(), MuxError> {
        let key = self
            .by_local
            .remove(&channel.0)
            .ok_or(MuxError::NoSuchChannel)?;
        if let Some(c) = self.channels.remove(&key) {
            if let Some(remote) = c.remote {
                self.by_remote.remove(&remote);
            }
        }
        self.outgoing.push_back(encode_close(channel.0));
        Ok(())
    }

    /// Takes the next frame to send to the peer, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outgoing.pop_front()
    }

    /// Takes the next event, if any.
    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.events.pop_front()
    }

    /// Handles one frame received from the peer.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<(), MuxError> {
        let (version, rest) = frame
            .split_first()
            .ok_or(MuxError::Malformed("empty frame"))?;
        if *version != MUX_VERSION {
            return Err(MuxError::UnsupportedVersion(*version));
        }
        let (kind, rest) = rest
            .split_first()
            .ok_or(MuxError::Malformed("missing kind"))?;
        let (number, body) = rest
            .split_first_chunk::<4>()
            .ok_or(MuxError::Malformed("missing channel number"))?;
        let number = u32::from_le_bytes(*number);
        match *kind {
            KIND_OPEN => self.handle_open(number, body),
            KIND_CLOSE if body.is_empty() => self.handle_close(number),
            KIND_CLOSE => Err(MuxError::Malformed("close with a body")),
            KIND_MESSAGE => self.handle_message(number, body),
            _ => Err(MuxError::Malformed("unknown kind")),
        }
    }

    fn handle_open(&mut self, number: u32, body: &[u8]) -> Result<(), MuxError> {
        let (len, rest) = body
            .split_first_chunk::<2>()
            .ok_or(MuxError::Malformed("missing protocol length"))?;
        let len = usize::from(u16::from_le_bytes(*len));
        if len > self.config.max_protocol_len {
            return Err(MuxError::RemoteLimit("protocol length"));
        }
        if rest.len() < len {
            return Err(MuxError::Malformed("truncated protocol"));
        }
        let (protocol, id) = rest.split_at(len);
        if id.len() > self.config.max_id_len {
            return Err(MuxError::RemoteLimit("id length"));
        }
        let protocol = std::str::from_utf8(protocol)
            .map_err(|_| MuxError::Malformed("protocol is not UTF-8"))?;
        if number < self.next_remote {
            return Err(MuxError::ChannelInUse(number));
        }
        let key = ChannelKey {
            protocol: protocol.to_owned(),
            id: id.to_vec(),
        };
        match self.channels.get_mut(&key) {
            Some(channel) if channel.remote.is_some() => {
                return Err(MuxError::ChannelInUse(number))
            }
            Some(channel) => {
                channel.remote = Some(number);
                if let Some(local) = channel.local {
                    self.events.push_back(MuxEvent::Opened {
                        channel: ChannelId(local),
                        protocol: key.protocol.clone(),
                        id: key.id.clone(),
                    });
                }
            }
            None => {
                if self.channel_count() >= self.config.max_channels {
                    return Err(MuxError::RemoteLimit("channel count"));
                }
                self.channels.insert(
                    key.clone(),
                    Channel {
                        local: None,
                        remote: Some(number),
                    },
                );
                self.events.push_back(MuxEvent::RemoteOpen {
                    protocol: key.protocol.clone(),
                    id: key.id.clone(),
                });
            }
        }
        self.by_remote.insert(number, key);
        self.next_remote = number.saturating_add(1);
        Ok(())
    }

    fn handle_close(&mut self, number: u32) -> Result<(), MuxError> {
        let Some(key) = self.by_remote.remove(&number) else {
            if number < self.next_remote {
                // We closed our side first; the peer's close crossed ours.
                return Ok(());
            }
            return Err(MuxError::UnknownChannel(number));
        };
        if let Some(channel) = self.channels.remove(&key) {
            if let Some(local) = channel.local {
                self.by_local.remove(&local);
                // Answer, so a peer that saw only its own half (it closed an
                // unpaired channel) forgets our open too.
                self.outgoing.push_back(encode_close(local));
                self.events.push_back(MuxEvent::Closed {
                    channel: ChannelId(local),
                });
            }
        }
        Ok(())
    }

    fn handle_message(&mut self, number: u32, data: &[u8]) -> Result<(), MuxError> {
        // `number` is our own channel number.
        let Some(key) = self.by_local.get(&number) else {
            if number < self.next_local {
                // Sent before the peer saw our close: drop it.
                return Ok(());
            }
            return Err(MuxError::UnknownChannel(number));
        };
        let paired = self.channels.get(key).is_some_and(|c| c.remote.is_some());
        if !paired {
            return Err(MuxError::UnpairedMessage(number));
        }
        self.events.push_back(MuxEvent::Message {
            channel: ChannelId(number),
            data: data.to_vec(),
        });
        Ok(())
    }
}

fn encode_open(number: u32, protocol: &str, id: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + protocol.len() + id.len());
    frame.extend_from_slice(&[MUX_VERSION, KIND_OPEN]);
    frame.extend_from_slice(&number.to_le_bytes());
    // `Mux::open` refuses names longer than u16::MAX.
    let len = u16::try_from(protocol.len()).unwrap_or(u16::MAX);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(protocol.as_bytes());
    frame.extend_from_slice(id);
    frame
}

fn encode_close(number: u32) -> Vec<u8> {
    let mut frame = Vec::with_capacity(6);
    frame.extend_from_slice(&[MUX_VERSION, KIND_CLOSE]);
    frame.extend_from_slice(&number.to_le_bytes());
    frame
}
