//! LAN discovery over multicast DNS (feature `mdns`).
//!
//! Two layers, so the protocol is testable without sockets:
//!
//! - [`MdnsState`], sans-IO: it builds query, announcement and goodbye
//!   packets, parses whatever arrives (answering queries for what it
//!   announces, caching the answers it hears), and forgets cached peers when
//!   their TTL runs out. Time is passed in; it never touches the network.
//! - [`MdnsDiscovery`], the [`Discovery`] service: one UDP socket joined to
//!   the mDNS group (224.0.0.251:5353 by default) and one small thread that
//!   answers queries; lookups send a query and wait briefly (on the injected
//!   [`Clock`]) for answers.
//!
//! Only discovery keys (hashes of topics) go on the wire, never topics. A
//! key `k` is the DNS name `<hex k[0..16]>.<hex k[16..32]>._swarm-rs._udp.local`
//! and each peer announced under it is one TXT record of that name holding
//! `v=1`, `pk=<public key hex>` and `addr=<ip:port>`. Anyone on the LAN can
//! forge such a record; that costs a failed dial at most, because the dialer
//! insists on the announced public key in the Noise handshake. Parsing never
//! panics: malformed packets and other services' records are ignored.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use thiserror::Error;

use crate::clock::Clock;
use crate::discovery::{Discovery, DiscoveryError};
use crate::identity::PublicKey;
use crate::swarm::DiscoveryKey;

/// The mDNS IPv4 group.
pub const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
/// The mDNS port.
pub const MDNS_PORT: u16 = 5353;
/// Seconds an announcement stays valid in other peers' caches.
pub const DEFAULT_TTL: u32 = 120;

const SERVICE: [&[u8]; 3] = [b"_swarm-rs", b"_udp", b"local"];
const TYPE_TXT: u16 = 16;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
/// Top bit of a question's class: "unicast response wanted"; of a record's
/// class: "cache flush". Neither changes what we do.
const CLASS_MASK: u16 = 0x7fff;
const FLAG_RESPONSE: u16 = 0x8000;
const FLAG_AUTHORITATIVE: u16 = 0x0400;
/// Our packets stay below a common MTU; more records go in more packets.
const MAX_OUT_PACKET: usize = 1200;
/// Largest mDNS packet we read (RFC 6762 allows up to 9000 bytes).
const MAX_IN_PACKET: usize = 9000;
/// Compression pointers followed per name: more is a loop or an attack.
const MAX_JUMPS: usize = 16;
/// Cache bounds, so a LAN neighbour cannot make us grow without limit.
const MAX_PEERS_PER_KEY: usize = 1024;
const MAX_CACHED_KEYS: usize = 4096;

/// Why a packet could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MdnsError {
    /// The packet ends in the middle of a field.
    #[error("truncated packet")]
    Truncated,
    /// A name is malformed (bad label, pointer loop, too long).
    #[error("malformed name")]
    BadName,
}

/// One peer announced under one discovery key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnsRecord {
    /// The discovery key.
    pub key: DiscoveryKey,
    /// The announced peer.
    pub peer: PublicKey,
    /// Where it accepts connections.
    pub addr: SocketAddr,
    /// Seconds the record stays valid; 0 withdraws it ("goodbye").
    pub ttl: u32,
}

/// What a packet of ours says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MdnsMessage {
    /// Someone asks who is announced under these keys.
    Query(Vec<DiscoveryKey>),
    /// Announcements (or withdrawals, TTL 0).
    Response(Vec<MdnsRecord>),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

fn key_labels(key: &DiscoveryKey) -> [Vec<u8>; 2] {
    [
        hex(&key.0[..16]).into_bytes(),
        hex(&key.0[16..]).into_bytes(),
    ]
}

/// The discovery key a name stands for, if it is one of ours.
fn key_of_name(labels: &[Vec<u8>]) -> Option<DiscoveryKey> {
    let [first, second, rest @ ..] = labels else {
        return None;
    };
    if rest.len() != SERVICE.len()
        || !rest
            .iter()
            .zip(SERVICE)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
    {
        return None;
    }
    let mut bytes = unhex(first)?;
    bytes.extend(unhex(second)?);
    Some(DiscoveryKey(bytes.try_into().ok()?))
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_name(out: &mut Vec<u8>, key: &DiscoveryKey) {
    let [a, b] = key_labels(key);
    for label in [&a[..], &b[..]].into_iter().chain(SERVICE) {
        // Labels are at most 32 bytes here: the cast cannot truncate.
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
}

fn header(out: &mut Vec<u8>, flags: u16, questions: u16, answers: u16) {
    put_u16(out, 0); // id: 0 in mDNS
    put_u16(out, flags);
    put_u16(out, questions);
    put_u16(out, answers);
    put_u16(out, 0);
    put_u16(out, 0);
}

fn txt_rdata(record: &MdnsRecord) -> Vec<u8> {
    let mut rdata = Vec::new();
    for entry in [
        "v=1".to_string(),
        format!("pk={}", record.peer),
        format!("addr={}", record.addr),
    ] {
        // Each string is well under 255 bytes (an address is at most ~50).
        rdata.push(entry.len() as u8);
        rdata.extend_from_slice(entry.as_bytes());
    }
    rdata
}

/// Query packets asking for `keys` (several keys share a packet).
pub fn encode_query(keys: &[DiscoveryKey]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    for chunk in keys.chunks(8) {
        let mut out = Vec::with_capacity(12 + chunk.len() * 90);
        header(&mut out, 0, chunk.len() as u16, 0);
        for key in chunk {
            put_name(&mut out, key);
            put_u16(&mut out, TYPE_TXT);
            put_u16(&mut out, CLASS_IN);
        }
        packets.push(out);
    }
    packets
}

/// Response packets carrying `records`, each packet below 1200 bytes.
pub fn encode_response(records: &[MdnsRecord]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut body = Vec::new();
    let mut count: u16 = 0;
    let flush = |packets: &mut Vec<Vec<u8>>, body: &mut Vec<u8>, count: &mut u16| {
        if *count > 0 {
            let mut out = Vec::with_capacity(12 + body.len());
            header(&mut out, FLAG_RESPONSE | FLAG_AUTHORITATIVE, 0, *count);
            out.append(body);
            packets.push(out);
            *count = 0;
        }
    };
    for record in records {
        let mut answer = Vec::new();
        put_name(&mut answer, &record.key);
        put_u16(&mut answer, TYPE_TXT);
        put_u16(&mut answer, CLASS_IN);
        answer.extend_from_slice(&record.ttl.to_be_bytes());
        let rdata = txt_rdata(record);
        put_u16(&mut answer, rdata.len() as u16);
        answer.extend_from_slice(&rdata);
        if 12 + body.len() + answer.len() > MAX_OUT_PACKET {
            flush(&mut packets, &mut body, &mut count);
        }
        body.extend_from_slice(&answer);
        count += 1;
    }
    flush(&mut packets, &mut body, &mut count);
    packets
}

struct Reader<'a> {
    packet: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], MdnsError> {
        let out = self
            .packet
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or(MdnsError::Truncated)?;
        self.pos += n;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, MdnsError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, MdnsError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a (possibly compressed) name as its labels.
    fn name(&mut self) -> Result<Vec<Vec<u8>>, MdnsError> {
        let mut labels = Vec::new();
        let mut total = 0usize;
        let mut pos = self.pos;
        let mut jumps = 0;
        let mut resume = None;
        loop {
            let len = *self.packet.get(pos).ok_or(MdnsError::Truncated)?;
            match len {
                0 => {
                    pos += 1;
                    break;
                }
                1..=63 => {
                    let len = usize::from(len);
                    let label = self
                        .packet
                        .get(pos + 1..pos + 1 + len)
                        .ok_or(MdnsError::Truncated)?;
                    total += len + 1;
                    if total > 255 {
                        return Err(MdnsError::BadName);
                    }
                    labels.push(label.to_vec());
                    pos += 1 + len;
                }
                0xc0..=0xff => {
                    let low = *self.packet.get(pos + 1).ok_or(MdnsError::Truncated)?;
                    let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                    // Pointers must go backwards: that alone rules out loops;
                    // the jump limit bounds the work.
                    jumps += 1;
                    if target >= pos || jumps > MAX_JUMPS {
                        return Err(MdnsError::BadName);
                    }
                    resume.get_or_insert(pos + 2);
                    pos = target;
                }
                _ => return Err(MdnsError::BadName),
            }
        }
        self.pos = resume.unwrap_or(pos);
        Ok(labels)
    }
}

fn parse_txt(key: DiscoveryKey, ttl: u32, rdata: &[u8]) -> Option<MdnsRecord> {
    let (mut version, mut peer, mut addr) = (None, None, None);
    let mut rest = rdata;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        let entry = tail.get(..len)?;
        rest = &tail[len..];
        let text = std::str::from_utf8(entry).ok()?;
        match text.split_once('=') {
            Some(("v", v)) => version = Some(v),
            Some(("pk", v)) => peer = v.parse::<PublicKey>().ok(),
            Some(("addr", v)) => addr = v.parse::<SocketAddr>().ok(),
            _ => {}
        }
    }
    (version == Some("1")).then_some(())?;
    Some(MdnsRecord {
        key,
        peer: peer?,
        addr: addr?,
        ttl,
    })
}

/// Parses a packet, keeping only the questions and records about swarm-rs
/// discovery keys. `Ok(None)` means nothing in it concerns us.
pub fn decode(packet: &[u8]) -> Result<Option<MdnsMessage>, MdnsError> {
    let mut r = Reader { packet, pos: 0 };
    let _id = r.u16()?;
    let flags = r.u16()?;
    let questions = r.u16()?;
    let answers = r.u16()?;
    let authority = r.u16()?;
    let additional = r.u16()?;
    if flags & FLAG_RESPONSE == 0 {
        let mut keys = Vec::new();
        for _ in 0..questions {
            let name = r.name()?;
            let qtype = r.u16()?;
            let class = r.u16()? & CLASS_MASK;
            if (qtype == TYPE_TXT || qtype == TYPE_ANY) && class == CLASS_IN {
                if let Some(key) = key_of_name(&name) {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
            }
        }
        return Ok((!keys.is_empty()).then_some(MdnsMessage::Query(keys)));
    }
    // Responses: skip any questions, then read every record section.
    for _ in 0..questions {
        r.name()?;
        r.bytes(4)?;
    }
    let mut records = Vec::new();
    let total = u32::from(answers) + u32::from(authority) + u32::from(additional);
    for _ in 0..total {
        let name = r.name()?;
        let rtype = r.u16()?;
        let class = r.u16()? & CLASS_MASK;
        let ttl = r.u32()?;
        let len = usize::from(r.u16()?);
        let rdata = r.bytes(len)?;
        if rtype != TYPE_TXT || class != CLASS_IN {
            continue;
        }
        if let Some(record) = key_of_name(&name).and_then(|key| parse_txt(key, ttl, rdata)) {
            records.push(record);
        }
    }
    Ok((!records.is_empty()).then_some(MdnsMessage::Response(records)))
}

/// The mDNS discovery logic without sockets: what we announce, what we
/// heard, and the packets to send.
#[derive(Debug, Default)]
pub struct MdnsState {
    announced: BTreeMap<DiscoveryKey, BTreeMap<PublicKey, SocketAddr>>,
    cache: BTreeMap<DiscoveryKey, BTreeMap<PublicKey, (SocketAddr, Instant)>>,
    ttl: u32,
}

impl MdnsState {
    /// Nothing announced, nothing heard; announcements valid for
    /// [`DEFAULT_TTL`] seconds.
    pub fn new() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            ..Self::default()
        }
    }

    /// Starts announcing `peer` at `addr` under `key`; returns the
    /// unsolicited announcement to multicast.
    pub fn announce(
        &mut self,
        key: DiscoveryKey,
        peer: PublicKey,
        addr: SocketAddr,
    ) -> Vec<Vec<u8>> {
        self.announced.entry(key).or_default().insert(peer, addr);
        encode_response(&[MdnsRecord {
            key,
            peer,
            addr,
            ttl: self.ttl,
        }])
    }

    /// Stops announcing; returns the goodbye (TTL 0) to multicast, if the
    /// announcement existed.
    pub fn unannounce(&mut self, key: DiscoveryKey, peer: PublicKey) -> Vec<Vec<u8>> {
        let Some(peers) = self.announced.get_mut(&key) else {
            return Vec::new();
        };
        let Some(addr) = peers.remove(&peer) else {
            return Vec::new();
        };
        if peers.is_empty() {
            self.announced.remove(&key);
        }
        encode_response(&[MdnsRecord {
            key,
            peer,
            addr,
            ttl: 0,
        }])
    }

    /// Goodbyes for everything announced (when shutting down).
    pub fn unannounce_all(&mut self) -> Vec<Vec<u8>> {
        let records: Vec<MdnsRecord> = std::mem::take(&mut self.announced)
            .into_iter()
            .flat_map(|(key, peers)| {
                peers.into_iter().map(move |(peer, addr)| MdnsRecord {
                    key,
                    peer,
                    addr,
                    ttl: 0,
                })
            })
            .collect();
        encode_response(&records)
    }

    /// The query packet for `key`.
    pub fn query(&self, key: DiscoveryKey) -> Vec<Vec<u8>> {
        encode_query(&[key])
    }

    /// Handles a packet that arrived from `from`: caches the announcements
    /// in it and returns the answers to multicast if it asks for keys we
    /// announce. Malformed packets and other services' traffic are ignored.
    pub fn handle_packet(&mut self, packet: &[u8], from: SocketAddr, now: Instant) -> Vec<Vec<u8>> {
        match decode(packet) {
            Ok(Some(MdnsMessage::Query(keys))) => {
                let records: Vec<MdnsRecord> = keys
                    .iter()
                    .filter_map(|key| self.announced.get(key).map(|peers| (key, peers)))
                    .flat_map(|(key, peers)| {
                        peers.iter().map(|(peer, addr)| MdnsRecord {
                            key: *key,
                            peer: *peer,
                            addr: *addr,
                            ttl: self.ttl,
                        })
                    })
                    .collect();
                encode_response(&records)
            }
            Ok(Some(MdnsMessage::Response(records))) => {
                for record in records {
                    self.remember(record, from.ip(), now);
                }
                Vec::new()
            }
            Ok(None) | Err(_) => Vec::new(),
        }
    }

    fn remember(&mut self, record: MdnsRecord, source: IpAddr, now: Instant) {
        // A peer listening on every interface announces 0.0.0.0: reach it
        // where its packet came from.
        let mut addr = record.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(source);
        }
        if record.ttl == 0 {
            if let Some(peers) = self.cache.get_mut(&record.key) {
                peers.remove(&record.peer);
                if peers.is_empty() {
                    self.cache.remove(&record.key);
                }
            }
            return;
        }
        if !self.cache.contains_key(&record.key) && self.cache.len() >= MAX_CACHED_KEYS {
            self.expire(now);
            if self.cache.len() >= MAX_CACHED_KEYS {
                return;
            }
        }
        let peers = self.cache.entry(record.key).or_default();
        if peers.len() >= MAX_PEERS_PER_KEY && !peers.contains_key(&record.peer) {
            return;
        }
        let expires = now + Duration::from_secs(u64::from(record.ttl));
        peers.insert(record.peer, (addr, expires));
    }

    fn expire(&mut self, now: Instant) {
        self.cache.retain(|_, peers| {
            peers.retain(|_, (_, expires)| *expires > now);
            !peers.is_empty()
        });
    }

    /// The peers heard of under `key` whose announcements are still valid,
    /// in public-key order.
    pub fn lookup(&mut self, key: DiscoveryKey, now: Instant) -> Vec<(PublicKey, SocketAddr)> {
        self.expire(now);
        self.cache
            .get(&key)
            .map(|peers| peers.iter().map(|(p, (a, _))| (*p, *a)).collect())
            .unwrap_or_default()
    }
}

/// Settings of an [`MdnsDiscovery`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MdnsConfig {
    /// The multicast group (default 224.0.0.251).
    pub group: Ipv4Addr,
    /// The UDP port (default 5353; tests use another one so they stay off
    /// the real mDNS traffic).
    pub port: u16,
    /// The local interface to join the group on (default: the system's
    /// choice).
    pub interface: Ipv4Addr,
    /// How long a lookup waits for answers to its query.
    pub query_wait: Duration,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self {
            group: MDNS_GROUP,
            port: MDNS_PORT,
            interface: Ipv4Addr::UNSPECIFIED,
            query_wait: Duration::from_millis(300),
        }
    }
}

impl MdnsConfig {
    /// The same settings on another port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The same settings with another query wait.
    pub fn with_query_wait(mut self, wait: Duration) -> Self {
        self.query_wait = wait;
        self
    }
}

struct Shared {
    state: Mutex<MdnsState>,
    socket: UdpSocket,
    group: SocketAddr,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, MdnsState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, packets: Vec<Vec<u8>>) -> io::Result<()> {
        for packet in packets {
            self.socket.send_to(&packet, self.group)?;
        }
        Ok(())
    }
}

/// LAN discovery over multicast DNS: a [`Discovery`] for TCP addresses.
///
/// Owns one UDP socket and one thread that answers queries and caches
/// announcements; dropping it sends goodbyes and stops the thread.
pub struct MdnsDiscovery {
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    query_wait: Duration,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsDiscovery")
            .field("group", &self.shared.group)
            .finish_non_exhaustive()
    }
}

impl MdnsDiscovery {
    /// Joins the multicast group and starts answering queries.
    pub fn bind(config: MdnsConfig, clock: Arc<dyn Clock>) -> io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // Several programs (and tests) on one host share the mDNS port.
        socket.set_reuse_address(true)?;
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        socket.set_reuse_port(true)?;
        socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.port).into())?;
        socket.join_multicast_v4(&config.group, &config.interface)?;
        socket.set_multicast_loop_v4(true)?;
        socket.set_multicast_ttl_v4(255)?;
        if !config.interface.is_unspecified() {
            socket.set_multicast_if_v4(&config.interface)?;
        }
        // The thread checks for shutdown this often.
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(MdnsState::new()),
            socket: socket.into(),
            group: SocketAddrV4::new(config.group, config.port).into(),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            let clock = Arc::clone(&clock);
            std::thread::Builder::new()
                .name("swarm-rs-mdns".into())
                .spawn(move || respond(&shared, clock.as_ref()))?
        };
        Ok(Self {
            shared,
            clock,
            query_wait: config.query_wait,
            thread: Some(thread),
        })
    }
}

/// The responder thread: reads packets until told to stop.
fn respond(shared: &Shared, clock: &dyn Clock) {
    let mut buf = vec![0u8; MAX_IN_PACKET];
    while !shared.stop.load(Ordering::Relaxed) {
        match shared.socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let packet = buf.get(..n).unwrap_or_default();
                let answers = shared.lock().handle_packet(packet, from, clock.now());
                // A lost answer is like a lost packet: the asker asks again.
                let _ = shared.send(answers);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            // Anything else (the socket broke): back off a little, keep going.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        let goodbyes = self.shared.lock().unannounce_all();
        let _ = self.shared.send(goodbyes);
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[async_trait]
impl Discovery for MdnsDiscovery {
    type Address = SocketAddr;

    async fn announce(
        &self,
        key: DiscoveryKey,
        peer: PublicKey,
        addr: SocketAddr,
    ) -> Result<(), DiscoveryError> {
        let packets = self.shared.lock().announce(key, peer, addr);
        self.shared
            .send(packets)
            .map_err(|_| DiscoveryError::Unavailable)
    }

    async fn unannounce(&self, key: DiscoveryKey, peer: PublicKey) -> Result<(), DiscoveryError> {
        let packets = self.shared.lock().unannounce(key, peer);
        self.shared
            .send(packets)
            .map_err(|_| DiscoveryError::Unavailable)
    }

    async fn lookup(
        &self,
        key: DiscoveryKey,
    ) -> Result<Vec<(PublicKey, SocketAddr)>, DiscoveryError> {
        let query = self.shared.lock().query(key);
        self.shared
            .send(query)
            .map_err(|_| DiscoveryError::Unavailable)?;
        let deadline = self.clock.now() + self.query_wait;
        self.clock.sleep_until(deadline).await;
        Ok(self.shared.lock().lookup(key, self.clock.now()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::identity::KeyPair;
    use crate::swarm::Topic;
    use proptest::prelude::*;

    fn key(name: &str) -> DiscoveryKey {
        Topic::from_name(name).discovery_key()
    }

    fn peer(n: u8) -> PublicKey {
        KeyPair::from_seed([n; 32]).public_key()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Delivers every packet to every state (as multicast with loop-back
    /// does), collecting the answers until the network is quiet.
    fn multicast(states: &mut [(&mut MdnsState, SocketAddr)], packets: Vec<Vec<u8>>, now: Instant) {
        let mut queue: Vec<(Vec<u8>, SocketAddr)> = packets
            .into_iter()
            .map(|p| (p, addr("192.0.2.200:5353")))
            .collect();
        while let Some((packet, from)) = queue.pop() {
            for (state, me) in states.iter_mut() {
                for answer in state.handle_packet(&packet, from, now) {
                    queue.push((answer, *me));
                }
            }
        }
    }

    #[test]
    fn a_query_is_answered_by_the_announcer_and_cached_by_everyone() {
        let now = Instant::now();
        let (mut a, mut b, mut c) = (MdnsState::new(), MdnsState::new(), MdnsState::new());
        let k = key("records");
        // Announced before b and c listened: they heard nothing.
        let _missed = a.announce(k, peer(1), addr("192.0.2.1:4000"));
        assert!(b.lookup(k, now).is_empty());
        let query = b.query(k);
        multicast(
            &mut [
                (&mut a, addr("192.0.2.1:5353")),
                (&mut b, addr("192.0.2.2:5353")),
                (&mut c, addr("192.0.2.3:5353")),
            ],
            query,
            now,
        );
        assert_eq!(b.lookup(k, now), vec![(peer(1), addr("192.0.2.1:4000"))]);
        assert_eq!(c.lookup(k, now), vec![(peer(1), addr("192.0.2.1:4000"))]);
        assert!(b.lookup(key("other"), now).is_empty());
    }

    #[test]
    fn goodbyes_and_ttl_expiry_forget_peers() {
        let now = Instant::now();
        let (mut a, mut b) = (MdnsState::new(), MdnsState::new());
        let k = key("t");
        let hello = a.announce(k, peer(1), addr("192.0.2.1:1"));
        let hello2 = a.announce(k, peer(2), addr("192.0.2.1:2"));
        for p in hello.iter().chain(&hello2) {
            b.handle_packet(p, addr("192.0.2.1:5353"), now);
        }
        assert_eq!(b.lookup(k, now).len(), 2);
        for p in a.unannounce(k, peer(1)) {
            b.handle_packet(&p, addr("192.0.2.1:5353"), now);
        }
        assert_eq!(b.lookup(k, now), vec![(peer(2), addr("192.0.2.1:2"))]);
        // Unannouncing twice sends nothing.
        assert!(a.unannounce(k, peer(1)).is_empty());
        let later = now + Duration::from_secs(u64::from(DEFAULT_TTL) + 1);
        assert!(b.lookup(k, later).is_empty());
        // A query for a withdrawn peer is not answered.
        assert!(a
            .handle_packet(&a.query(k)[0], addr("192.0.2.9:5353"), now)
            .iter()
            .all(|p| !matches!(decode(p), Ok(Some(MdnsMessage::Response(r))) if r.iter().any(|r| r.peer == peer(1)))));
    }

    #[test]
    fn an_unspecified_address_becomes_the_sender_address() {
        let now = Instant::now();
        let (mut a, mut b) = (MdnsState::new(), MdnsState::new());
        let k = key("any");
        for p in a.announce(k, peer(1), addr("0.0.0.0:7000")) {
            b.handle_packet(&p, addr("192.0.2.7:5353"), now);
        }
        assert_eq!(b.lookup(k, now), vec![(peer(1), addr("192.0.2.7:7000"))]);
    }

    #[test]
    fn only_the_hashed_topic_is_on_the_wire() {
        let topic = Topic::from_name("patient-1234-records");
        let k = topic.discovery_key();
        let mut a = MdnsState::new();
        let mut wire = a.announce(k, peer(1), addr("192.0.2.1:1"));
        wire.extend(a.query(k));
        for packet in &wire {
            let text = String::from_utf8_lossy(packet);
            assert!(!text.contains("patient"));
            assert!(!packet.windows(32).any(|w| w == topic.0));
            assert!(text.contains(&hex(&k.0[..16])));
        }
    }

    #[test]
    fn golden_query_packet() {
        let k = DiscoveryKey([0xab; 32]);
        let packet = &encode_query(&[k])[0];
        let mut expected = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["ab".repeat(16), "ab".repeat(16)] {
            expected.push(32);
            expected.extend_from_slice(label.as_bytes());
        }
        for label in ["_swarm-rs", "_udp", "local"] {
            expected.push(label.len() as u8);
            expected.extend_from_slice(label.as_bytes());
        }
        expected.extend_from_slice(&[0, 0, 16, 0, 1]);
        assert_eq!(packet, &expected);
    }

    #[test]
    fn many_records_are_split_over_packets_below_the_mtu() {
        let records: Vec<MdnsRecord> = (0..40u8)
            .map(|n| MdnsRecord {
                key: key(&format!("k{n}")),
                peer: peer(n),
                addr: addr("[2001:db8::1234:5678]:65535"),
                ttl: 120,
            })
            .collect();
        let packets = encode_response(&records);
        assert!(packets.len() > 1);
        let mut decoded = Vec::new();
        for p in &packets {
            assert!(p.len() <= MAX_OUT_PACKET);
            match decode(p).unwrap() {
                Some(MdnsMessage::Response(r)) => decoded.extend(r),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(decoded, records);
    }

    #[test]
    fn compressed_names_are_followed_and_loops_refused() {
        let k = DiscoveryKey([0x11; 32]);
        // A response whose second record names the first one's name by a
        // pointer (offset 12, just after the header).
        let record = MdnsRecord {
            key: k,
            peer: peer(3),
            addr: addr("192.0.2.3:3"),
            ttl: 60,
        };
        let mut packet = encode_response(std::slice::from_ref(&record)).remove(0);
        packet[7] = 2; // two answers
        let second = MdnsRecord {
            peer: peer(4),
            ..record.clone()
        };
        packet.extend_from_slice(&[0xc0, 12]);
        put_u16(&mut packet, TYPE_TXT);
        put_u16(&mut packet, CLASS_IN | 0x8000);
        packet.extend_from_slice(&60u32.to_be_bytes());
        let rdata = txt_rdata(&second);
        put_u16(&mut packet, rdata.len() as u16);
        packet.extend_from_slice(&rdata);
        assert_eq!(
            decode(&packet),
            Ok(Some(MdnsMessage::Response(vec![record, second])))
        );
        // A pointer to itself, or forwards, is refused.
        let mut looped = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xc0, 12];
        looped.extend_from_slice(&[0, 16, 0, 1, 0, 0, 0, 1, 0, 0]);
        assert_eq!(decode(&looped), Err(MdnsError::BadName));
        let forward = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 20, 0, 16, 0, 1];
        assert_eq!(decode(&forward), Err(MdnsError::BadName));
    }

    #[test]
    fn other_services_and_bad_records_are_ignored() {
        // A query for another service.
        let mut q = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["printer", "_ipp", "_tcp", "local"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 12, 0, 1]);
        assert_eq!(decode(&q), Ok(None));
        // Our name, but a TXT without a valid key or version.
        let k = DiscoveryKey([7; 32]);
        for rdata in [&b"\x03v=2"[..], b"\x03v=1\x05pk=00", b"\xffv=1"] {
            let mut p = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
            put_name(&mut p, &k);
            put_u16(&mut p, TYPE_TXT);
            put_u16(&mut p, CLASS_IN);
            p.extend_from_slice(&1u32.to_be_bytes());
            put_u16(&mut p, rdata.len() as u16);
            p.extend_from_slice(rdata);
            assert_eq!(decode(&p), Ok(None), "{rdata:?}");
        }
    }

    #[test]
    fn the_cache_is_bounded_per_key() {
        let now = Instant::now();
        let mut b = MdnsState::new();
        let k = key("crowded");
        let records: Vec<MdnsRecord> = (0..MAX_PEERS_PER_KEY as u32 + 50)
            .map(|n| {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&n.to_le_bytes());
                MdnsRecord {
                    key: k,
                    peer: KeyPair::from_seed(seed).public_key(),
                    addr: addr("192.0.2.1:1"),
                    ttl: 100,
                }
            })
            .collect();
        for p in encode_response(&records) {
            b.handle_packet(&p, addr("192.0.2.1:5353"), now);
        }
        assert_eq!(b.lookup(k, now).len(), MAX_PEERS_PER_KEY);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_packets_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut s = MdnsState::new();
            s.announce(key("x"), peer(1), addr("192.0.2.1:1"));
            let _ = s.handle_packet(&bytes, addr("192.0.2.2:5353"), Instant::now());
        }

        #[test]
        fn corrupted_packets_never_panic(flip in 0usize..4000, byte in any::<u8>()) {
            let mut packets = encode_response(&[MdnsRecord {
                key: key("y"),
                peer: peer(2),
                addr: addr("192.0.2.1:1"),
                ttl: 5,
            }]);
            packets.extend(encode_query(&[key("y"), key("z")]));
            for mut p in packets {
                let i = flip % p.len();
                p[i] = byte;
                let _ = decode(&p);
                p.truncate(i);
                let _ = decode(&p);
            }
        }

        #[test]
        fn responses_round_trip(
            seeds in proptest::collection::vec(any::<[u8; 32]>(), 1..30),
            port in any::<u16>(),
            ttl in any::<u32>(),
            v6 in any::<bool>(),
        ) {
            let records: Vec<MdnsRecord> = seeds.iter().map(|s| MdnsRecord {
                key: DiscoveryKey(*s),
                peer: KeyPair::from_seed(*s).public_key(),
                addr: if v6 {
                    SocketAddr::new(IpAddr::from(*s.first_chunk::<16>().unwrap()), port)
                } else {
                    SocketAddr::new(IpAddr::from(*s.first_chunk::<4>().unwrap()), port)
                },
                ttl,
            }).collect();
            let mut decoded = Vec::new();
            for p in encode_response(&records) {
                match decode(&p).unwrap() {
                    Some(MdnsMessage::Response(r)) => decoded.extend(r),
                    other => panic!("unexpected {other:?}"),
                }
            }
            prop_assert_eq!(decoded, records);
        }
    }
}
