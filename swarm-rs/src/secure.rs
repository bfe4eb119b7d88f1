//! A sans-IO Noise XX handshake and encrypted, length-framed transport.
//!
//! [`SecureConnection`] is a plain state machine: feed it the bytes that
//! arrived ([`SecureConnection::handle_input`]), take the bytes it wants sent
//! ([`SecureConnection::poll_transmit`]) and the events it produced
//! ([`SecureConnection::poll_event`]), and drive its deadlines with
//! [`SecureConnection::poll_timeout`] / [`SecureConnection::handle_timeout`].
//! It never reads a clock, never touches the network and never panics on
//! input from the peer: every problem is a typed [`SecureError`], after which
//! the connection is dead and every later call reports [`SecureError::Closed`].
//!
//! The wire format is described in `DESIGN.md` ("Secure stream").

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::HandshakeState;
use thiserror::Error;

use crate::entropy::{EntropyError, EntropySource, SeededEntropy};
use crate::identity::{KeyPair, PublicKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};

/// Version byte carried in the first handshake message.
pub const PROTOCOL_VERSION: u8 = 1;
/// Default largest application frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;
/// Length in bytes of the handshake hash (BLAKE2b).
pub const HANDSHAKE_HASH_LEN: usize = 64;

const NOISE_PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2b";
/// Binds the protocol name and version into every handshake hash.
const PROLOGUE: &[u8] = b"swarm-rs secure v1";
/// Domain separation for the identity proof signature.
const AUTH_CONTEXT: &[u8] = b"swarm-rs secure v1 identity proof";
/// Largest Noise message (the limit of the Noise specification).
const MAX_NOISE_MSG: usize = 65535;
const TAG_LEN: usize = 16;
/// Largest plaintext of one transport record.
const MAX_RECORD_PLAINTEXT: usize = MAX_NOISE_MSG - TAG_LEN;
/// Record kind (+ u32 length) header of the first chunk of a frame.
const FRAME_START_HEADER: usize = 1 + 4;
/// Size the input buffer grows to when it needs room: two full records, so
/// the unprocessed tail moved to the front is small next to what was read.
const INPUT_BUF_LEN: usize = 2 * (2 + MAX_NOISE_MSG);
/// Largest buffer reserved up front for a frame split over several records;
/// a bigger declared length grows as its records arrive.
const MAX_FRAME_PREALLOC: usize = 1024 * 1024;
/// Largest handshake message we write (XX: `s` + tag + `e` + payload + tag).
const MAX_HANDSHAKE_WRITE: usize = 256;

const KIND_AUTH: u8 = 0;
const KIND_FRAME_START: u8 = 1;
const KIND_FRAME_CONTINUE: u8 = 2;
const KIND_KEEPALIVE: u8 = 3;
/// Several whole frames in one record, each `u32 LE length` + bytes.
const KIND_FRAMES: u8 = 4;
/// Bytes of the `u32 LE` length before each frame of a [`KIND_FRAMES`] record.
const PACKED_LEN: usize = 4;

/// Errors of a secure connection. Any error except the local-misuse ones
/// ([`SecureError::NotEstablished`], [`SecureError::FrameTooLarge`] on send)
/// kills the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SecureError {
    /// A frame is larger than the configured maximum (detected before any
    /// buffer for it is allocated).
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Declared or requested length.
        len: u64,
        /// Configured maximum.
        max: u32,
    },
    /// The bytes do not follow the record format.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// The peer speaks a protocol version we do not.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The Noise handshake failed (bad or tampered handshake message).
    #[error("handshake failed")]
    Handshake,
    /// A transport record failed to decrypt: tampered, replayed, reordered or
    /// not a record of this session at all.
    #[error("decryption failed")]
    Decrypt,
    /// The peer's static key is not the key we expected to reach.
    #[error("remote key does not match the expected key {expected}")]
    UnexpectedRemoteKey {
        /// The key we expected.
        expected: PublicKey,
    },
    /// The peer's identity proof (ed25519 key and signature over the
    /// handshake hash) is invalid or does not match its Noise static key.
    #[error("invalid identity proof")]
    BadIdentityProof,
    /// The handshake did not complete before its deadline.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// Nothing was received for longer than the idle timeout.
    #[error("connection idle for too long")]
    IdleTimeout,
    /// Application frames can only be sent once the handshake completed.
    #[error("connection not established yet")]
    NotEstablished,
    /// The connection has failed or was closed; it cannot be used any more.
    #[error("connection closed")]
    Closed,
    /// The injected entropy source failed.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The cryptographic backend refused an operation (should not happen).
    #[error("internal cryptographic error")]
    Internal,
}

/// Which side of the handshake this is: the dialer is the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends the first handshake message.
    Initiator,
    /// Answers the first handshake message.
    Responder,
}

impl Role {
    fn tag(self) -> u8 {
        match self {
            Role::Initiator => 0,
            Role::Responder => 1,
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }
}

/// Settings of a [`SecureConnection`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SecureConfig {
    /// Largest application frame accepted or sent, in bytes.
    pub max_frame_len: u32,
    /// The handshake (including the identity proofs) must finish within this.
    pub handshake_timeout: Duration,
    /// Send a keep-alive record when nothing was sent for this long.
    pub keepalive_interval: Option<Duration>,
    /// Fail with [`SecureError::IdleTimeout`] when nothing arrived for this long.
    pub idle_timeout: Option<Duration>,
    /// If set, the handshake fails unless the peer proves this identity.
    pub expected_remote: Option<PublicKey>,
}

impl Default for SecureConfig {
    fn default() -> Self {
        Self {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Some(Duration::from_secs(5)),
            idle_timeout: Some(Duration::from_secs(20)),
            expected_remote: None,
        }
    }
}

impl SecureConfig {
    /// Requires the peer to be `key`.
    pub fn with_expected_remote(mut self, key: PublicKey) -> Self {
        self.expected_remote = Some(key);
        self
    }

    /// Sets the largest frame.
    pub fn with_max_frame_len(mut self, max: u32) -> Self {
        self.max_frame_len = max;
        self
    }
}

/// The Noise handshake hash: a transcript digest both peers share once the
/// handshake completed. Other protocols derive capabilities from it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandshakeHash([u8; HANDSHAKE_HASH_LEN]);

impl HandshakeHash {
    /// The 64 hash bytes.
    pub fn as_bytes(&self) -> &[u8; HANDSHAKE_HASH_LEN] {
        &self.0
    }
}

impl fmt::Debug for HandshakeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HandshakeHash(")?;
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "..)")
    }
}

/// Something that happened on a [`SecureConnection`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecureEvent {
    /// The handshake completed and the peer proved its identity.
    Established {
        /// The peer's identity.
        remote: PublicKey,
        /// The shared handshake hash.
        handshake_hash: HandshakeHash,
    },
    /// A complete application frame arrived.
    Message(Vec<u8>),
}

enum State {
    Handshake(Box<HandshakeState>),
    /// Noise is done; waiting for the peer's identity proof.
    AwaitingProof {
        ciphers: Ciphers,
        remote_static: [u8; 32],
        hash: HandshakeHash,
    },
    Established {
        ciphers: Ciphers,
        remote: PublicKey,
        hash: HandshakeHash,
    },
    Closed,
}

/// The Noise transport cipher of one direction: ChaCha20-Poly1305 keyed by
/// the handshake's split, nonce = 4 zero bytes + a `u64 LE` message counter,
/// empty associated data (the Noise specification's `CipherState`). Run here
/// rather than through snow's `TransportState` so records are sealed in the
/// output buffer and opened in the input buffer without extra copies.
struct CipherState {
    aead: ChaCha20Poly1305,
    nonce: u64,
}

impl CipherState {
    fn new(key: &[u8; 32]) -> Self {
        Self {
            aead: ChaCha20Poly1305::new(key.into()),
            nonce: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<chacha20poly1305::Nonce, SecureError> {
        // The specification reserves the largest nonce; nobody sends 2^64
        // records, but running out must not wrap around.
        if self.nonce == u64::MAX {
            return Err(SecureError::Internal);
        }
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.nonce.to_le_bytes());
        self.nonce += 1;
        Ok(nonce.into())
    }

    /// Encrypts `buf` in place and returns the tag.
    fn seal(&mut self, buf: &mut [u8]) -> Result<[u8; TAG_LEN], SecureError> {
        let nonce = self.next_nonce()?;
        let tag = self
            .aead
            .encrypt_in_place_detached(&nonce, &[], buf)
            .map_err(|_| SecureError::Internal)?;
        Ok(tag.into())
    }

    /// Decrypts `record` (ciphertext + tag) in place; returns the plaintext.
    fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<&'a [u8], SecureError> {
        let Some(body_len) = record.len().checked_sub(TAG_LEN) else {
            return Err(SecureError::Malformed("record shorter than its tag"));
        };
        let (body, tag) = record.split_at_mut(body_len);
        let nonce = self.next_nonce()?;
        self.aead
            .decrypt_in_place_detached(&nonce, &[], body, (&*tag).into())
            .map_err(|_| SecureError::Decrypt)?;
        Ok(body)
    }
}

/// Both directions' ciphers.
struct Ciphers {
    send: CipherState,
    recv: CipherState,
}

/// A frame being reassembled from several records.
struct PartialFrame {
    len: usize,
    data: Vec<u8>,
}

/// One side of an encrypted, authenticated connection, without I/O.
pub struct SecureConnection {
    role: Role,
    keypair: KeyPair,
    config: SecureConfig,
    state: State,
    /// Received bytes; `inbuf[in_pos..in_end]` is not processed yet (less
    /// than one record), `inbuf[in_end..]` is room for the next read.
    inbuf: Vec<u8>,
    in_pos: usize,
    in_end: usize,
    /// Sealed records; `outbuf[out_pos..]` is not transmitted yet. If
    /// `open_record` is set, the output buffer ends with that record,
    /// still plaintext: small frames sent before the next transmit are
    /// appended to it, then it is sealed once.
    outbuf: Vec<u8>,
    out_pos: usize,
    /// Where the unsealed last record starts (its `u16` length header).
    open_record: Option<usize>,
    events: VecDeque<SecureEvent>,
    partial: Option<PartialFrame>,
    handshake_deadline: Instant,
    last_received: Instant,
    last_sent: Instant,
}

impl fmt::Debug for SecureConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Handshake(_) => "handshake",
            State::AwaitingProof { .. } => "awaiting-proof",
            State::Established { .. } => "established",
            State::Closed => "closed",
        };
        f.debug_struct("SecureConnection")
            .field("role", &self.role)
            .field("local", &self.keypair.public_key())
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl SecureConnection {
    /// Starts a handshake. An initiator immediately has its first message
    /// ready in [`SecureConnection::poll_transmit`].
    pub fn new(
        role: Role,
        keypair: &KeyPair,
        config: SecureConfig,
        entropy: &mut dyn EntropySource,
        now: Instant,
    ) -> Result<Self, SecureError> {
        let mut seed = [0u8; 32];
        entropy.try_fill_bytes(&mut seed)?;
        let params: NoiseParams = NOISE_PATTERN.parse().map_err(|_| SecureError::Internal)?;
        let private = keypair.x25519_private();
        let builder = snow::Builder::with_resolver(params, Box::new(InjectedResolver { seed }))
            .local_private_key(&private)
            .and_then(|b| b.prologue(PROLOGUE))
            .map_err(|_| SecureError::Internal)?;
        let handshake = match role {
            Role::Initiator => builder.build_initiator(),
            Role::Responder => builder.build_responder(),
        }
        .map_err(|_| SecureError::Internal)?;
        let mut conn = Self {
            role,
            keypair: keypair.clone(),
            handshake_deadline: now + config.handshake_timeout,
            config,
            state: State::Handshake(Box::new(handshake)),
            inbuf: Vec::new(),
            in_pos: 0,
            in_end: 0,
            outbuf: Vec::new(),
            out_pos: 0,
            open_record: None,
            events: VecDeque::new(),
            partial: None,
            last_received: now,
            last_sent: now,
        };
        if role == Role::Initiator {
            conn.write_handshake(&[PROTOCOL_VERSION], now)?;
        }
        Ok(conn)
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// True once the peer's identity is proven and frames can flow.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// True after a failure or [`SecureConnection::close`].
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The proven identity of the peer, once established.
    pub fn remote_public_key(&self) -> Option<PublicKey> {
        match &self.state {
            State::Established { remote, .. } => Some(*remote),
            _ => None,
        }
    }

    /// The handshake hash, once established.
    pub fn handshake_hash(&self) -> Option<HandshakeHash> {
        match &self.state {
            State::Established { hash, .. } => Some(*hash),
            _ => None,
        }
    }

    /// Feeds bytes received from the peer. They may split or join records
    /// arbitrarily. On error the connection is dead.
    ///
    /// Adapters that read from a socket can avoid this copy: read into
    /// [`SecureConnection::input_buf`], then call
    /// [`SecureConnection::input_filled`].
    pub fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<(), SecureError> {
        if self.is_closed() {
            return Err(SecureError::Closed);
        }
        let room = self.input_buf(data.len());
        let Some(room) = room.get_mut(..data.len()) else {
            return Err(SecureError::Internal);
        };
        room.copy_from_slice(data);
        self.input_filled(data.len(), now)
    }

    /// Room for the next read from the peer: at least `min` bytes. Write
    /// received bytes to its start, then report how many with
    /// [`SecureConnection::input_filled`]. Records are decrypted in place in
    /// this buffer.
    pub fn input_buf(&mut self, min: usize) -> &mut [u8] {
        if self.inbuf.len() - self.in_end < min {
            if self.in_pos > 0 {
                // Only the unfinished record (less than one) moves.
                self.inbuf.copy_within(self.in_pos..self.in_end, 0);
                self.in_end -= self.in_pos;
                self.in_pos = 0;
            }
            let needed = self.in_end + min;
            if self.inbuf.len() < needed {
                self.inbuf.resize(needed.max(INPUT_BUF_LEN), 0);
            }
        }
        &mut self.inbuf[self.in_end..]
    }

    /// Processes the first `n` bytes of the last [`SecureConnection::input_buf`]
    /// (same contract as [`SecureConnection::handle_input`]).
    pub fn input_filled(&mut self, n: usize, now: Instant) -> Result<(), SecureError> {
        if self.is_closed() {
            return Err(SecureError::Closed);
        }
        self.in_end = self.in_end.saturating_add(n).min(self.inbuf.len());
        let mut buf = std::mem::take(&mut self.inbuf);
        let end = self.in_end;
        let mut pos = self.in_pos;
        let mut result = Ok(());
        while let Some(header) = buf.get(pos..pos + 2).filter(|_| pos + 2 <= end) {
            let len = usize::from(u16::from_le_bytes([header[0], header[1]]));
            if end - pos - 2 < len {
                break;
            }
            let Some(record) = buf.get_mut(pos + 2..pos + 2 + len) else {
                break;
            };
            pos += 2 + len;
            self.last_received = now;
            if let Err(e) = self.handle_record(record, now) {
                result = Err(e);
                break;
            }
        }
        match result {
            Ok(()) => {
                self.inbuf = buf;
                if pos == end {
                    self.in_pos = 0;
                    self.in_end = 0;
                } else {
                    self.in_pos = pos;
                }
                Ok(())
            }
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    /// Encrypts and queues one application frame. Frames bigger than one
    /// Noise message are split over several records.
    pub fn send(&mut self, frame: &[u8], now: Instant) -> Result<(), SecureError> {
        match self.state {
            State::Established { .. } => {}
            State::Closed => return Err(SecureError::Closed),
            _ => return Err(SecureError::NotEstablished),
        }
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|len| *len <= self.config.max_frame_len)
            .ok_or(SecureError::FrameTooLarge {
                len: frame.len() as u64,
                max: self.config.max_frame_len,
            })?;
        if frame.len() <= MAX_RECORD_PLAINTEXT - FRAME_START_HEADER {
            return self.send_small(frame, len, now);
        }
        let first_len = frame.len().min(MAX_RECORD_PLAINTEXT - FRAME_START_HEADER);
        let (first, mut rest) = frame.split_at(first_len);
        if let Err(e) = self.seal_open_record() {
            self.fail();
            return Err(e);
        }
        self.compact_output();
        let records = 1 + rest.len().div_ceil(MAX_RECORD_PLAINTEXT - 1);
        self.outbuf
            .reserve(frame.len() + FRAME_START_HEADER + records * (2 + 1 + TAG_LEN));
        let result = self
            .seal_with(now, |out| {
                out.push(KIND_FRAME_START);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(first);
            })
            .and_then(|()| {
                while !rest.is_empty() {
                    let take = rest.len().min(MAX_RECORD_PLAINTEXT - 1);
                    let (chunk, tail) = rest.split_at(take);
                    self.seal_with(now, |out| {
                        out.push(KIND_FRAME_CONTINUE);
                        out.extend_from_slice(chunk);
                    })?;
                    rest = tail;
                }
                Ok(())
            });
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// Queues a frame that fits in one record: appended to the open record
    /// when it has room (packing small frames: one seal and one tag per
    /// record instead of per frame), else the start of a new open record.
    fn send_small(&mut self, frame: &[u8], len: u32, now: Instant) -> Result<(), SecureError> {
        if let Some(start) = self.open_record {
            let plain_len = self.outbuf.len() - (start + 2);
            if plain_len + PACKED_LEN + frame.len() <= MAX_RECORD_PLAINTEXT {
                // A one-frame record (kind 1, whole frame) has the same
                // layout as a packed one: only the kind byte changes.
                self.outbuf[start + 2] = KIND_FRAMES;
                self.outbuf.extend_from_slice(&len.to_le_bytes());
                self.outbuf.extend_from_slice(frame);
                self.last_sent = now;
                return Ok(());
            }
        }
        if let Err(e) = self.seal_open_record() {
            self.fail();
            return Err(e);
        }
        if !matches!(self.state, State::Established { .. }) {
            return Err(SecureError::Internal);
        }
        self.compact_output();
        let start = self.outbuf.len();
        self.outbuf
            .reserve(2 + FRAME_START_HEADER + frame.len() + TAG_LEN);
        self.outbuf.extend_from_slice(&[0, 0, KIND_FRAME_START]);
        self.outbuf.extend_from_slice(&len.to_le_bytes());
        self.outbuf.extend_from_slice(frame);
        self.open_record = Some(start);
        self.last_sent = now;
        Ok(())
    }

    /// Seals the open record, if any, where it lies.
    fn seal_open_record(&mut self) -> Result<(), SecureError> {
        match self.open_record.take() {
            Some(start) => self.seal_from(start),
            None => Ok(()),
        }
    }

    /// Seals the record starting at `start` (its `u16` header, then
    /// plaintext up to the end of the output buffer) in place.
    fn seal_from(&mut self, start: usize) -> Result<(), SecureError> {
        let cipher = match &mut self.state {
            State::AwaitingProof { ciphers, .. } | State::Established { ciphers, .. } => {
                &mut ciphers.send
            }
            _ => return Err(SecureError::Internal),
        };
        let body = start + 2;
        let sealed = u16::try_from(self.outbuf.len() - body + TAG_LEN)
            .map_err(|_| SecureError::Internal)
            .and_then(|len| Ok((len, cipher.seal(&mut self.outbuf[body..])?)));
        match sealed {
            Ok((len, tag)) => {
                self.outbuf.extend_from_slice(&tag);
                self.outbuf[start..body].copy_from_slice(&len.to_le_bytes());
                Ok(())
            }
            Err(e) => {
                self.outbuf.truncate(start);
                Err(e)
            }
        }
    }

    /// Seals the open record so the whole output buffer can be written; a
    /// failure (the nonce counter ran out) kills the connection.
    fn seal_for_transmit(&mut self) {
        if self.seal_open_record().is_err() {
            self.fail();
        }
    }

    /// Bytes queued for the peer (sealed or not), without sealing anything:
    /// for back-pressure decisions.
    pub(crate) fn pending_transmit_len(&self) -> usize {
        self.outbuf.len() - self.out_pos
    }

    /// Takes the bytes that should be written to the peer, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.seal_for_transmit();
        let bytes = if self.out_pos == 0 {
            std::mem::take(&mut self.outbuf)
        } else {
            self.outbuf.get(self.out_pos..).unwrap_or_default().to_vec()
        };
        self.outbuf.clear();
        self.out_pos = 0;
        (!bytes.is_empty()).then_some(bytes)
    }

    /// The bytes waiting to be written to the peer, without taking them:
    /// write some, then report how many with
    /// [`SecureConnection::advance_transmit`]. Saves the copy (and the
    /// buffer) [`SecureConnection::poll_transmit`] hands over.
    ///
    /// Small frames sent since the last call are sealed here, packed into
    /// as few records as possible: call it when about to write, not after
    /// every [`SecureConnection::send`].
    pub fn transmit_buf(&mut self) -> &[u8] {
        self.seal_for_transmit();
        self.outbuf.get(self.out_pos..).unwrap_or_default()
    }

    /// Marks the first `n` bytes of [`SecureConnection::transmit_buf`] as
    /// written.
    pub fn advance_transmit(&mut self, n: usize) {
        self.out_pos = self.out_pos.saturating_add(n).min(self.outbuf.len());
        if self.out_pos == self.outbuf.len() {
            self.outbuf.clear();
            self.out_pos = 0;
        }
    }

    /// Drops written bytes from the front of the output buffer once they
    /// outweigh what is left, so the move stays cheap.
    fn compact_output(&mut self) {
        if self.out_pos > 0 && self.out_pos >= self.outbuf.len() - self.out_pos {
            self.outbuf.drain(..self.out_pos);
            if let Some(start) = &mut self.open_record {
                // Written bytes are all sealed, so they precede the open record.
                *start = start.saturating_sub(self.out_pos);
            }
            self.out_pos = 0;
        }
    }

    /// Takes the next event, if any.
    pub fn poll_event(&mut self) -> Option<SecureEvent> {
        self.events.pop_front()
    }

    /// The next instant at which [`SecureConnection::handle_timeout`] must be
    /// called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Established { .. } => {
                let keepalive = self.config.keepalive_interval.map(|d| self.last_sent + d);
                let idle = self.config.idle_timeout.map(|d| self.last_received + d);
                match (keepalive, idle) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            _ => Some(self.handshake_deadline),
        }
    }

    /// Handles expired deadlines: fails a late handshake or an idle
    /// connection, and queues keep-alives.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SecureError> {
        let result = match self.state {
            State::Closed => Err(SecureError::Closed),
            State::Established { .. } => {
                if self
                    .config
                    .idle_timeout
                    .is_some_and(|d| now >= self.last_received + d)
                {
                    Err(SecureError::IdleTimeout)
                } else if self
                    .config
                    .keepalive_interval
                    .is_some_and(|d| now >= self.last_sent + d)
                {
                    self.seal_with(now, |out| out.push(KIND_KEEPALIVE))
                } else {
                    Ok(())
                }
            }
            _ if now >= self.handshake_deadline => Err(SecureError::HandshakeTimeout),
            _ => Ok(()),
        };
        if matches!(
            result,
            Err(SecureError::IdleTimeout | SecureError::HandshakeTimeout | SecureError::Internal)
        ) {
            self.fail();
        }
        result
    }

    /// Closes the connection locally. Buffered outgoing bytes stay available
    /// to [`SecureConnection::poll_transmit`]; nothing more is accepted.
    pub fn close(&mut self) {
        if self.seal_open_record().is_err() {
            self.outbuf = Vec::new();
            self.out_pos = 0;
        }
        self.state = State::Closed;
        self.partial = None;
        self.inbuf = Vec::new();
        self.in_pos = 0;
        self.in_end = 0;
    }

    /// Kills the connection after an error: nothing more is sent either.
    fn fail(&mut self) {
        self.open_record = None;
        self.close();
        self.outbuf = Vec::new();
        self.out_pos = 0;
    }

    fn handle_record(&mut self, record: &mut [u8], now: Instant) -> Result<(), SecureError> {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Handshake(handshake) => self.handle_handshake_record(handshake, record, now),
            State::AwaitingProof {
                mut ciphers,
                remote_static,
                hash,
            } => {
                let plain = ciphers.recv.open(record)?;
                let remote = check_proof(
                    plain,
                    self.role.other(),
                    &remote_static,
                    &hash,
                    self.config.expected_remote,
                )?;
                self.state = State::Established {
                    ciphers,
                    remote,
                    hash,
                };
                self.last_sent = now;
                self.events.push_back(SecureEvent::Established {
                    remote,
                    handshake_hash: hash,
                });
                Ok(())
            }
            State::Established {
                mut ciphers,
                remote,
                hash,
            } => {
                let result = ciphers
                    .recv
                    .open(record)
                    .and_then(|plain| self.handle_transport_plaintext(plain));
                self.state = State::Established {
                    ciphers,
                    remote,
                    hash,
                };
                result
            }
            State::Closed => Err(SecureError::Closed),
        }
    }

    fn handle_handshake_record(
        &mut self,
        mut handshake: Box<HandshakeState>,
        record: &[u8],
        now: Instant,
    ) -> Result<(), SecureError> {
        if handshake.is_my_turn() {
            return Err(SecureError::Malformed("record arrived out of turn"));
        }
        // Handshake records are few and small: a buffer each is fine.
        let mut payload = vec![0u8; record.len()];
        let payload_len = handshake
            .read_message(record, &mut payload)
            .map_err(|_| SecureError::Handshake)?;
        let payload = payload.get(..payload_len).ok_or(SecureError::Internal)?;
        let first_message = self.role == Role::Responder && handshake.get_remote_static().is_none();
        if first_message {
            match payload {
                [PROTOCOL_VERSION] => {}
                [] => return Err(SecureError::Malformed("missing version byte")),
                [version, ..] => return Err(SecureError::UnsupportedVersion(*version)),
            }
        } else if !payload.is_empty() {
            return Err(SecureError::Malformed("unexpected handshake payload"));
        }
        if let (Some(expected), Some(remote_static)) =
            (self.config.expected_remote, handshake.get_remote_static())
        {
            let expected_static = expected.to_x25519().map_err(|_| SecureError::Internal)?;
            if expected_static.as_slice() != remote_static {
                return Err(SecureError::UnexpectedRemoteKey { expected });
            }
        }
        self.state = State::Handshake(handshake);
        if self.handshake_is_my_turn() {
            self.write_handshake(&[], now)
        } else {
            self.maybe_finish_noise(now)
        }
    }

    fn handshake_is_my_turn(&self) -> bool {
        match &self.state {
            State::Handshake(h) => !h.is_handshake_finished() && h.is_my_turn(),
            _ => false,
        }
    }

    /// Writes the next handshake message; when that finishes Noise, switches
    /// to transport mode and sends the identity proof.
    fn write_handshake(&mut self, payload: &[u8], now: Instant) -> Result<(), SecureError> {
        let State::Handshake(handshake) = &mut self.state else {
            return Err(SecureError::Internal);
        };
        let mut message = [0u8; MAX_HANDSHAKE_WRITE];
        let len = handshake
            .write_message(payload, &mut message)
            .map_err(|_| SecureError::Internal)?;
        push_record(
            &mut self.outbuf,
            message.get(..len).ok_or(SecureError::Internal)?,
        )?;
        self.last_sent = now;
        self.maybe_finish_noise(now)
    }

    fn maybe_finish_noise(&mut self, now: Instant) -> Result<(), SecureError> {
        let finished = matches!(&self.state, State::Handshake(h) if h.is_handshake_finished());
        if !finished {
            return Ok(());
        }
        let State::Handshake(mut handshake) = std::mem::replace(&mut self.state, State::Closed)
        else {
            return Err(SecureError::Internal);
        };
        let hash = HandshakeHash(
            handshake
                .get_handshake_hash()
                .try_into()
                .map_err(|_| SecureError::Internal)?,
        );
        let remote_static: [u8; 32] = handshake
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(SecureError::Handshake)?;
        // Noise's split: the initiator sends with the first key.
        let (k1, k2) = handshake.dangerously_get_raw_split();
        let (send, recv) = match self.role {
            Role::Initiator => (k1, k2),
            Role::Responder => (k2, k1),
        };
        let ciphers = Ciphers {
            send: CipherState::new(&send),
            recv: CipherState::new(&recv),
        };
        self.state = State::AwaitingProof {
            ciphers,
            remote_static,
            hash,
        };
        let mut proof = Vec::with_capacity(1 + PUBLIC_KEY_LEN + SIGNATURE_LEN);
        proof.push(KIND_AUTH);
        proof.extend_from_slice(self.keypair.public_key().as_bytes());
        proof.extend_from_slice(&self.keypair.sign(&proof_message(self.role, &hash)));
        self.seal_with(now, |out| out.extend_from_slice(&proof))
    }

    fn handle_transport_plaintext(&mut self, plain: &[u8]) -> Result<(), SecureError> {
        let Some((&kind, body)) = plain.split_first() else {
            return Err(SecureError::Malformed("empty record"));
        };
        match kind {
            KIND_KEEPALIVE if body.is_empty() => Ok(()),
            KIND_KEEPALIVE => Err(SecureError::Malformed("keep-alive with a body")),
            KIND_FRAME_START => {
                if self.partial.is_some() {
                    return Err(SecureError::Malformed("frame started inside a frame"));
                }
                let Some((len, data)) = body.split_first_chunk::<4>() else {
                    return Err(SecureError::Malformed("truncated frame header"));
                };
                let len = u32::from_le_bytes(*len);
                if len > self.config.max_frame_len {
                    return Err(SecureError::FrameTooLarge {
                        len: u64::from(len),
                        max: self.config.max_frame_len,
                    });
                }
                let len = usize::try_from(len).map_err(|_| SecureError::Internal)?;
                let data_vec = if data.len() == len {
                    // The common case, a frame in one record: one copy.
                    Vec::with_capacity(len)
                } else {
                    Vec::with_capacity(len.min(MAX_FRAME_PREALLOC))
                };
                self.append_chunk(
                    PartialFrame {
                        len,
                        data: data_vec,
                    },
                    data,
                )
            }
            KIND_FRAMES => {
                if self.partial.is_some() {
                    return Err(SecureError::Malformed("frame started inside a frame"));
                }
                if body.is_empty() {
                    return Err(SecureError::Malformed("empty packed record"));
                }
                // A bad record delivers none of its frames.
                let delivered = self.events.len();
                let result = self.unpack(body);
                if result.is_err() {
                    self.events.truncate(delivered);
                }
                result
            }
            KIND_FRAME_CONTINUE => match self.partial.take() {
                Some(partial) => self.append_chunk(partial, body),
                None => Err(SecureError::Malformed("continuation without a frame")),
            },
            KIND_AUTH => Err(SecureError::Malformed("repeated identity proof")),
            _ => Err(SecureError::Malformed("unknown record kind")),
        }
    }

    /// Queues the frames of a packed record's body as messages.
    fn unpack(&mut self, body: &[u8]) -> Result<(), SecureError> {
        let mut rest = body;
        while let Some((len, tail)) = rest.split_first_chunk::<PACKED_LEN>() {
            let len = u32::from_le_bytes(*len);
            if len > self.config.max_frame_len {
                return Err(SecureError::FrameTooLarge {
                    len: u64::from(len),
                    max: self.config.max_frame_len,
                });
            }
            let len = usize::try_from(len).map_err(|_| SecureError::Internal)?;
            let Some((frame, tail)) = tail.split_at_checked(len) else {
                return Err(SecureError::Malformed("packed frame overruns its record"));
            };
            self.events.push_back(SecureEvent::Message(frame.to_vec()));
            rest = tail;
        }
        if rest.is_empty() {
            Ok(())
        } else {
            Err(SecureError::Malformed("truncated packed frame header"))
        }
    }

    fn append_chunk(&mut self, mut partial: PartialFrame, chunk: &[u8]) -> Result<(), SecureError> {
        if chunk.len() > partial.len - partial.data.len() {
            return Err(SecureError::Malformed("frame longer than declared"));
        }
        partial.data.extend_from_slice(chunk);
        if partial.data.len() == partial.len {
            self.events.push_back(SecureEvent::Message(partial.data));
        } else {
            self.partial = Some(partial);
        }
        Ok(())
    }

    /// Appends one record to the output buffer: `fill` appends its
    /// plaintext (at most [`MAX_RECORD_PLAINTEXT`] bytes), which is then
    /// encrypted where it lies.
    fn seal_with(
        &mut self,
        now: Instant,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SecureError> {
        // Records are sealed in buffer order (the nonce is a counter).
        self.seal_open_record()?;
        if !matches!(
            self.state,
            State::AwaitingProof { .. } | State::Established { .. }
        ) {
            return Err(SecureError::Internal);
        }
        let start = self.outbuf.len();
        self.outbuf.extend_from_slice(&[0, 0]);
        fill(&mut self.outbuf);
        self.seal_from(start)?;
        self.last_sent = now;
        Ok(())
    }
}

/// Checks the peer's identity proof: its ed25519 key must match its Noise
/// static key, and it must have signed the handshake hash.
fn check_proof(
    plain: &[u8],
    signer: Role,
    remote_static: &[u8; 32],
    hash: &HandshakeHash,
    expected: Option<PublicKey>,
) -> Result<PublicKey, SecureError> {
    let Some((&KIND_AUTH, body)) = plain.split_first() else {
        return Err(SecureError::Malformed("expected identity proof"));
    };
    if body.len() != PUBLIC_KEY_LEN + SIGNATURE_LEN {
        return Err(SecureError::BadIdentityProof);
    }
    let (key, signature) = body.split_at(PUBLIC_KEY_LEN);
    let remote = PublicKey::from_slice(key).map_err(|_| SecureError::BadIdentityProof)?;
    if remote.to_x25519().ok().as_ref() != Some(remote_static) {
        return Err(SecureError::BadIdentityProof);
    }
    remote
        .verify(&proof_message(signer, hash), signature)
        .map_err(|_| SecureError::BadIdentityProof)?;
    if let Some(expected) = expected {
        if expected != remote {
            return Err(SecureError::UnexpectedRemoteKey { expected });
        }
    }
    Ok(remote)
}

fn push_record(out: &mut Vec<u8>, message: &[u8]) -> Result<(), SecureError> {
    let len = u16::try_from(message.len()).map_err(|_| SecureError::Internal)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(message);
    Ok(())
}

fn proof_message(signer: Role, hash: &HandshakeHash) -> Vec<u8> {
    let mut message = Vec::with_capacity(AUTH_CONTEXT.len() + 1 + HANDSHAKE_HASH_LEN);
    message.extend_from_slice(AUTH_CONTEXT);
    message.push(signer.tag());
    message.extend_from_slice(hash.as_bytes());
    message
}

/// Hands snow the default pure-Rust primitives, but randomness expanded from
/// a seed drawn from the injected entropy source.
struct InjectedResolver {
    seed: [u8; 32],
}

struct SeededRandom(SeededEntropy);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.try_fill_bytes(dest).map_err(|_| snow::Error::Rng)
    }
}

impl CryptoResolver for InjectedResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(SeededEntropy::new(self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn proof(signer: &KeyPair, claimed: &PublicKey, role: Role, hash: &HandshakeHash) -> Vec<u8> {
        let mut p = vec![KIND_AUTH];
        p.extend_from_slice(claimed.as_bytes());
        p.extend_from_slice(&signer.sign(&proof_message(role, hash)));
        p
    }

    #[test]
    fn identity_proofs_are_checked() {
        let alice = KeyPair::from_seed([1; 32]);
        let mallory = KeyPair::from_seed([2; 32]);
        let hash = HandshakeHash([7; HANDSHAKE_HASH_LEN]);
        let other_hash = HandshakeHash([8; HANDSHAKE_HASH_LEN]);
        let alice_static = alice.public_key().to_x25519().unwrap();
        let role = Role::Initiator;

        let good = proof(&alice, &alice.public_key(), role, &hash);
        assert_eq!(
            check_proof(&good, role, &alice_static, &hash, None),
            Ok(alice.public_key())
        );
        // Signed over another session's hash.
        assert_eq!(
            check_proof(&good, role, &alice_static, &other_hash, None),
            Err(SecureError::BadIdentityProof)
        );
        // Reflected: signed in the other role.
        assert_eq!(
            check_proof(&good, Role::Responder, &alice_static, &hash, None),
            Err(SecureError::BadIdentityProof)
        );
        // Claims alice's key, signed by mallory.
        let forged = proof(&mallory, &alice.public_key(), role, &hash);
        assert_eq!(
            check_proof(&forged, role, &alice_static, &hash, None),
            Err(SecureError::BadIdentityProof)
        );
        // Mallory's own valid proof, but alice's Noise static key.
        let swapped = proof(&mallory, &mallory.public_key(), role, &hash);
        assert_eq!(
            check_proof(&swapped, role, &alice_static, &hash, None),
            Err(SecureError::BadIdentityProof)
        );
        // Truncated, or a different record kind.
        assert_eq!(
            check_proof(&good[..good.len() - 1], role, &alice_static, &hash, None),
            Err(SecureError::BadIdentityProof)
        );
        assert!(matches!(
            check_proof(&[KIND_FRAME_START], role, &alice_static, &hash, None),
            Err(SecureError::Malformed(_))
        ));
        // Valid but not who we expected.
        let expected = mallory.public_key();
        assert_eq!(
            check_proof(&good, role, &alice_static, &hash, Some(expected)),
            Err(SecureError::UnexpectedRemoteKey { expected })
        );
    }

    /// Our in-place transport cipher must produce exactly what snow's own
    /// `TransportState` produces, and open what it seals, in both
    /// directions and for any sequence of message sizes.
    #[test]
    fn transport_cipher_matches_snow() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        let handshake = |seed: [u8; 32], key: &KeyPair, initiator: bool| {
            let private = key.x25519_private();
            let builder = snow::Builder::with_resolver(
                NOISE_PATTERN.parse().unwrap(),
                Box::new(InjectedResolver { seed }),
            )
            .local_private_key(&private)
            .unwrap();
            if initiator {
                builder.build_initiator().unwrap()
            } else {
                builder.build_responder().unwrap()
            }
        };
        let (alice, bob) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
        let mut runner = TestRunner::new(Config::with_cases(24));
        let sizes = proptest::collection::vec(0usize..3000, 1..12);
        runner
            .run(&(any::<[u8; 32]>(), sizes), |(seed, sizes)| {
                let mut i = handshake(seed, &alice, true);
                let mut r = handshake([seed[0] ^ 1; 32], &bob, false);
                let mut buf = vec![0u8; MAX_NOISE_MSG];
                let mut payload = vec![0u8; MAX_NOISE_MSG];
                while !(i.is_handshake_finished() && r.is_handshake_finished()) {
                    let (from, to) = if i.is_my_turn() {
                        (&mut i, &mut r)
                    } else {
                        (&mut r, &mut i)
                    };
                    let n = from.write_message(&[], &mut buf).unwrap();
                    to.read_message(&buf[..n], &mut payload).unwrap();
                }
                let (k1, k2) = i.dangerously_get_raw_split();
                let mut snow_i = i.into_transport_mode().unwrap();
                let mut snow_r = r.into_transport_mode().unwrap();
                let mut ours_i = Ciphers {
                    send: CipherState::new(&k1),
                    recv: CipherState::new(&k2),
                };
                // Seals in step with `snow_i`, whose records nobody reads.
                let mut twin = CipherState::new(&k1);
                for (n, size) in sizes.into_iter().enumerate() {
                    let plain: Vec<u8> = (0..size).map(|b| (b * 7 + n) as u8).collect();
                    // Initiator -> responder: ours seals, snow opens.
                    let mut record = plain.clone();
                    let tag = ours_i.send.seal(&mut record).unwrap();
                    record.extend_from_slice(&tag);
                    let len = snow_r.read_message(&record, &mut payload).unwrap();
                    prop_assert_eq!(&payload[..len], &plain[..]);
                    // Responder -> initiator: snow seals, ours opens.
                    let len = snow_r.write_message(&plain, &mut buf).unwrap();
                    let mut record = buf[..len].to_vec();
                    prop_assert_eq!(ours_i.recv.open(&mut record).unwrap(), &plain[..]);
                    // And the ciphertexts agree byte for byte.
                    let len = snow_i.write_message(&plain, &mut buf).unwrap();
                    let mut mine = plain.clone();
                    let tag = twin.seal(&mut mine).unwrap();
                    mine.extend_from_slice(&tag);
                    prop_assert_eq!(&buf[..len], &mine[..]);
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn tampered_or_short_records_fail_to_open() {
        let mut seal = CipherState::new(&[9; 32]);
        let mut open = CipherState::new(&[9; 32]);
        let mut record = b"hello".to_vec();
        let tag = seal.seal(&mut record).unwrap();
        record.extend_from_slice(&tag);
        let mut tampered = record.clone();
        tampered[0] ^= 1;
        assert_eq!(open.open(&mut tampered), Err(SecureError::Decrypt));
        let mut short = vec![0u8; TAG_LEN - 1];
        assert!(matches!(
            open.open(&mut short),
            Err(SecureError::Malformed(_))
        ));
        // The nonce moved on after the failure: the genuine record, now
        // out of order, fails too.
        assert_eq!(open.open(&mut record), Err(SecureError::Decrypt));
        let mut exhausted = CipherState::new(&[9; 32]);
        exhausted.nonce = u64::MAX;
        assert_eq!(exhausted.seal(&mut []), Err(SecureError::Internal));
    }

    /// An established pair (default configs, `b` with `b_config`).
    fn pair(now: Instant, b_config: SecureConfig) -> (SecureConnection, SecureConnection) {
        let mut entropy = SeededEntropy::from_u64(1);
        let (alice, bob) = (KeyPair::from_seed([1; 32]), KeyPair::from_seed([2; 32]));
        let mut a = SecureConnection::new(
            Role::Initiator,
            &alice,
            SecureConfig::default(),
            &mut entropy,
            now,
        )
        .unwrap();
        let mut b =
            SecureConnection::new(Role::Responder, &bob, b_config, &mut entropy, now).unwrap();
        for _ in 0..4 {
            if let Some(bytes) = a.poll_transmit() {
                b.handle_input(&bytes, now).unwrap();
            }
            if let Some(bytes) = b.poll_transmit() {
                a.handle_input(&bytes, now).unwrap();
            }
        }
        assert!(a.is_established() && b.is_established());
        while a.poll_event().is_some() || b.poll_event().is_some() {}
        (a, b)
    }

    /// Packed records (kind 4) that lie about their frames close the
    /// receiver with a typed error and deliver nothing.
    #[test]
    fn malformed_packed_records_are_refused() {
        let now = Instant::now();
        let packed = |frames: &[(u32, &[u8])]| {
            let mut p = vec![KIND_FRAMES];
            for (len, bytes) in frames {
                p.extend_from_slice(&len.to_le_bytes());
                p.extend_from_slice(bytes);
            }
            p
        };
        let cases: Vec<(Vec<u8>, SecureError)> = vec![
            (
                vec![KIND_FRAMES],
                SecureError::Malformed("empty packed record"),
            ),
            (
                [packed(&[(2, b"ok")]), vec![1, 0]].concat(),
                SecureError::Malformed("truncated packed frame header"),
            ),
            (
                packed(&[(2, b"ok"), (9, b"short")]),
                SecureError::Malformed("packed frame overruns its record"),
            ),
            (
                packed(&[(60_000, b"")]),
                SecureError::Malformed("packed frame overruns its record"),
            ),
            (
                packed(&[(1001, &[0; 1001])]),
                SecureError::FrameTooLarge {
                    len: 1001,
                    max: 1000,
                },
            ),
        ];
        for (plain, expected) in cases {
            let config = SecureConfig::default().with_max_frame_len(
                if matches!(expected, SecureError::FrameTooLarge { .. }) {
                    1000
                } else {
                    DEFAULT_MAX_FRAME_LEN
                },
            );
            let (mut a, mut b) = pair(now, config);
            a.seal_with(now, |out| out.extend_from_slice(&plain))
                .unwrap();
            let wire = a.poll_transmit().unwrap();
            assert_eq!(b.handle_input(&wire, now), Err(expected));
            assert!(b.is_closed());
            assert!(b.poll_event().is_none());
        }
        // A packed record inside a frame split over several records.
        let (mut a, mut b) = pair(now, SecureConfig::default());
        a.seal_with(now, |out| {
            out.push(KIND_FRAME_START);
            out.extend_from_slice(&100u32.to_le_bytes());
            out.extend_from_slice(&[1; 10]);
        })
        .unwrap();
        a.seal_with(now, |out| out.extend_from_slice(&packed(&[(1, b"x")])))
            .unwrap();
        let wire = a.poll_transmit().unwrap();
        assert_eq!(
            b.handle_input(&wire, now),
            Err(SecureError::Malformed("frame started inside a frame"))
        );
    }

    /// Small frames queued between two transmits share one record, sealed
    /// when the bytes are taken; a keep-alive or a big frame seals the open
    /// record first, so records stay in nonce order.
    #[test]
    fn small_frames_are_packed_and_sealed_in_order() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now, SecureConfig::default());
        a.send(b"one", now).unwrap();
        a.send(b"", now).unwrap();
        a.send(b"three", now).unwrap();
        // Still plaintext: nothing sealed before it is asked for.
        assert!(a.open_record.is_some());
        let later = now + Duration::from_secs(6);
        a.handle_timeout(later).unwrap(); // keep-alive after the open record
        a.send(&vec![5; 70_000], later).unwrap(); // two records of its own
        a.send(b"tail", later).unwrap();
        let wire = a.transmit_buf().to_vec();
        let n = wire.len();
        a.advance_transmit(n);
        let mut records = 0;
        let mut pos = 0;
        while pos < wire.len() {
            pos += 2 + usize::from(u16::from_le_bytes([wire[pos], wire[pos + 1]]));
            records += 1;
        }
        // packed (3 frames), keep-alive, big frame (2), "tail".
        assert_eq!(records, 5);
        b.handle_input(&wire, later).unwrap();
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| b.poll_event())
            .map(|e| match e {
                SecureEvent::Message(m) => m,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                b"one".to_vec(),
                Vec::new(),
                b"three".to_vec(),
                vec![5; 70_000],
                b"tail".to_vec()
            ]
        );
        // Closing seals what is still open.
        a.send(b"last", later).unwrap();
        a.close();
        let wire = a.poll_transmit().unwrap();
        b.handle_input(&wire, later).unwrap();
        assert!(matches!(b.poll_event(), Some(SecureEvent::Message(m)) if m == b"last"));
    }

    #[test]
    fn version_mismatch_is_reported() {
        let now = Instant::now();
        let mut entropy = SeededEntropy::from_u64(1);
        let alice = KeyPair::from_seed([1; 32]);
        let bob = KeyPair::from_seed([2; 32]);
        let mut a = SecureConnection::new(
            Role::Initiator,
            &alice,
            SecureConfig::default(),
            &mut entropy,
            now,
        )
        .unwrap();
        let mut b = SecureConnection::new(
            Role::Responder,
            &bob,
            SecureConfig::default(),
            &mut entropy,
            now,
        )
        .unwrap();
        let mut m1 = a.poll_transmit().unwrap();
        // The first message is `e` (32 bytes) then the clear version payload.
        assert_eq!(m1.len(), 2 + 32 + 1);
        assert_eq!(m1.last(), Some(&PROTOCOL_VERSION));
        if let Some(v) = m1.last_mut() {
            *v = 2;
        }
        assert_eq!(
            b.handle_input(&m1, now),
            Err(SecureError::UnsupportedVersion(2))
        );
    }
}
