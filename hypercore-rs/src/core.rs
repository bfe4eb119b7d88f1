//! The core: a signed, verifiable append-only log over a [`Storage`].
//!
//! Mutations (append, truncate, clear, verify, user data) are serialised by
//! an async write lock; reads take a short synchronous lock on the in-memory
//! state and go straight to storage. Every mutation is one atomic storage
//! batch, computed before any in-memory state changes, so a failed write
//! leaves the core exactly as it was and usable. Signing is deferred: a burst
//! of appends costs one signature, made when a signature is first needed.

use crate::clock::{Clock, ThreadClock};
use crate::encryption::BlockEncryption;
use crate::entropy::{Entropy, OsEntropy};
use crate::error::{Error, ProofError, Result, MAX_BLOCK_SIZE};
use crate::fast_hash::{FastMap, FastSet};
use crate::flat;
use crate::hash::{tree_hash, Hash, Node};
use crate::manifest::{self, discovery_key, KeyPair, Manifest, MultiSignature};
use crate::proof::{
    upgrade_node_indices, upgrade_roots, walk_up, BlockProof, HashProof, Proof, ProofRequest,
    SeekProof, UpgradeProof, Verified,
};
use crate::replication::scheduler::{Scheduler, Wake};
use crate::storage::{Batch, CoreId, Op, Storage};
use ed25519_dalek::SigningKey;
use futures::channel::mpsc;
use futures::lock::Mutex as AsyncMutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

const INFO: &[u8] = b"info";
const STATE: &[u8] = b"state";
const USER_PREFIX: &[u8] = b"user/";
const RECORD_VERSION: u8 = 1;
const MAX_FORK_HISTORY: usize = 64;

/// When appends become durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Durable on [`Core::flush`] (or the storage's own checkpoints).
    #[default]
    OnFlush,
    /// Every append and truncate is flushed before it returns.
    EachWrite,
}

/// Something that happened to a core.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Blocks were appended locally.
    Append {
        /// New length.
        length: u64,
        /// New byte length.
        byte_length: u64,
    },
    /// A verified upgrade raised the length.
    Upgrade {
        /// New length.
        length: u64,
        /// Fork id.
        fork: u64,
    },
    /// The log was truncated (locally, or by a verified new fork).
    Truncate {
        /// New length.
        length: u64,
        /// New fork id.
        fork: u64,
    },
    /// A verified block was stored.
    Download {
        /// The block.
        index: u64,
    },
}

/// A summary of a core's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Info {
    /// The core key.
    pub key: Hash,
    /// The discovery key.
    pub discovery_key: Hash,
    /// Number of blocks.
    pub length: u64,
    /// Total bytes of all blocks (as stored).
    pub byte_length: u64,
    /// Blocks `[0, contiguous_length)` are all held locally.
    pub contiguous_length: u64,
    /// Fork id (bumped by each truncation).
    pub fork: u64,
    /// Whether this holder can sign.
    pub writable: bool,
    /// Whether blocks are encrypted with a key this handle holds.
    pub encrypted: bool,
}

#[derive(Serialize, Deserialize)]
struct InfoRecord {
    version: u8,
    key: Hash,
    manifest: Option<Manifest>,
    secrets: Vec<[u8; 32]>,
    encrypted: bool,
}

#[derive(Serialize, Deserialize, Clone, Default)]
struct StateRecord {
    version: u8,
    fork: u64,
    length: u64,
    byte_length: u64,
    contiguous_length: u64,
    signature: Option<MultiSignature>,
    /// (from fork, to fork, shared prefix length) for recent fork changes:
    /// lets a holder tell a reader on an old fork how much it can keep.
    forks: Vec<(u64, u64, u64)>,
}

#[derive(Clone)]
struct State {
    rec: StateRecord,
    roots: Vec<Node>,
    manifest: Option<Manifest>,
}

pub(crate) struct SnapshotShared {
    fork: u64,
    length: u64,
    valid_below: Mutex<u64>,
    preserved: Mutex<HashMap<u64, Vec<u8>>>,
}

struct Inner {
    storage: Arc<dyn Storage>,
    id: CoreId,
    key: Hash,
    signers: Vec<SigningKey>,
    encryption: Option<BlockEncryption>,
    encrypted_without_key: bool,
    durability: Durability,
    write_lock: AsyncMutex<()>,
    state: Mutex<State>,
    events: Mutex<Vec<mpsc::UnboundedSender<Event>>>,
    snapshots: Mutex<Vec<Weak<SnapshotShared>>>,
    scheduler: Mutex<Scheduler>,
    clock: Arc<dyn Clock>,
}

/// How [`Core::get_with`] behaves when the block is not held locally.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GetOptions {
    /// Fetch it from connected peers and wait for it.
    pub wait: bool,
    /// Give up after this long ([`Error::Timeout`]).
    pub timeout: Option<std::time::Duration>,
    /// With `wait`, fail at once with [`Error::Offline`] if no peer is connected.
    pub fail_fast: bool,
}

impl GetOptions {
    /// Wait for the block, at most `timeout`, failing at once when offline.
    pub fn wait_for(timeout: std::time::Duration) -> Self {
        GetOptions {
            wait: true,
            timeout: Some(timeout),
            fail_fast: true,
        }
    }
}

/// A wanted range being downloaded from peers; dropping it (or
/// [`Download::cancel`]) withdraws the want.
pub struct Download {
    core: Core,
    want: u64,
    start: u64,
    end: u64,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("start", &self.start)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// Completes when every block of the range is held locally. A live
    /// download (no end) never completes: it follows the writer.
    pub async fn done(&self) -> Result<()> {
        if self.end == u64::MAX {
            return futures::future::pending().await;
        }
        let rx = self.core.scheduler().add_range_waiter(self.start, self.end);
        rx.await.map_err(|_| Error::Closed)
    }

    /// Stops downloading the range.
    pub fn cancel(self) {}
}

impl Drop for Download {
    fn drop(&mut self) {
        self.core.scheduler().remove_want(self.want);
    }
}

/// A handle to a hypercore. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("Core")
            .field("discovery_key", &hex8(&self.inner.id))
            .field("length", &s.rec.length)
            .field("fork", &s.rec.fork)
            .finish_non_exhaustive()
    }
}

fn hex8(h: &Hash) -> String {
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens or creates a [`Core`]; see [`Core::builder`].
pub struct CoreBuilder {
    storage: Arc<dyn Storage>,
    key: Option<Hash>,
    manifest: Option<Manifest>,
    signers: Vec<KeyPair>,
    store_secrets: bool,
    encryption_key: Option<[u8; 32]>,
    durability: Durability,
    entropy: Arc<dyn Entropy>,
    clock: Arc<dyn Clock>,
    create: bool,
}

impl CoreBuilder {
    /// Opens the core with this key (a reader, unless signers are also given).
    pub fn key(mut self, key: Hash) -> Self {
        self.key = Some(key);
        self
    }

    /// Uses this manifest (multi-signer cores, or readers that know it).
    pub fn manifest(mut self, manifest: Manifest) -> Self {
        self.manifest = Some(manifest);
        self
    }

    /// Signs with this key pair; without a manifest, the core is single-signer.
    pub fn key_pair(mut self, key_pair: KeyPair) -> Self {
        self.signers.push(key_pair);
        self
    }

    /// Whether secret keys are written to storage so that the core reopens
    /// writable on its own (default true; corestores derive keys instead).
    pub fn store_secrets(mut self, store: bool) -> Self {
        self.store_secrets = store;
        self
    }

    /// Encrypts blocks with this 32-byte key.
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.encryption_key = Some(key);
        self
    }

    /// Sets when appends become durable.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The randomness used to generate a key pair when none is given.
    pub fn entropy(mut self, entropy: Arc<dyn Entropy>) -> Self {
        self.entropy = entropy;
        self
    }

    /// The time source for timeouts (default: [`ThreadClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Fails instead of creating a core that is not in storage yet.
    pub fn must_exist(mut self) -> Self {
        self.create = false;
        self
    }

    /// Opens the core (loading it from storage or creating it).
    pub async fn open(self) -> Result<Core> {
        let mut signers: Vec<SigningKey> = self
            .signers
            .iter()
            .map(|k| k.signing_key().clone())
            .collect();
        let mut manifest = self.manifest.clone();
        if manifest.is_none() && self.key.is_none() {
            if signers.is_empty() {
                signers.push(
                    KeyPair::generate(self.entropy.as_ref())?
                        .signing_key()
                        .clone(),
                );
            }
            if signers.len() == 1 {
                manifest = Some(Manifest::single(signers[0].verifying_key().to_bytes()));
            } else {
                return Err(Error::InvalidArgument(
                    "several key pairs need an explicit manifest",
                ));
            }
        }
        if let Some(m) = &manifest {
            m.validate()?;
        }
        let key = match (&manifest, self.key) {
            (Some(m), Some(k)) if m.key() != k => return Err(Error::KeyMismatch),
            (Some(m), _) => m.key(),
            (None, Some(k)) => k,
            (None, None) => return Err(Error::InvalidArgument("a key or a manifest is needed")),
        };
        let id = discovery_key(&key);
        let storage = self.storage.clone();
        let stored_info = storage.value(&id, INFO).await?;
        let is_new = stored_info.is_none();
        let mut batch = Batch::new();
        let (info, rec) = match stored_info {
            Some(bytes) => {
                let info: InfoRecord = decode(&bytes, "core info")?;
                if info.key != key {
                    return Err(Error::KeyMismatch);
                }
                let rec: StateRecord = match storage.value(&id, STATE).await? {
                    Some(b) => decode(&b, "core state")?,
                    None => StateRecord::default(),
                };
                (info, rec)
            }
            None if !self.create => return Err(Error::InvalidArgument("no such core in storage")),
            None => {
                let info = InfoRecord {
                    version: RECORD_VERSION,
                    key,
                    manifest: manifest.clone(),
                    secrets: Vec::new(),
                    encrypted: self.encryption_key.is_some(),
                };
                let rec = StateRecord {
                    version: RECORD_VERSION,
                    ..Default::default()
                };
                batch.push(Op::PutValue {
                    core: id,
                    key: STATE.to_vec(),
                    value: encode(&rec),
                });
                (info, rec)
            }
        };
        let mut info = info;
        if info.version != RECORD_VERSION || rec.version != RECORD_VERSION {
            return Err(Error::Storage(
                crate::error::StorageError::UnsupportedVersion(info.version.max(rec.version) as u32),
            ));
        }
        let manifest = match (info.manifest.clone(), manifest) {
            (Some(m), _) => Some(m),
            (None, m) => m,
        };
        for s in &info.secrets {
            let sk = SigningKey::from_bytes(s);
            if !signers
                .iter()
                .any(|k| k.verifying_key() == sk.verifying_key())
            {
                signers.push(sk);
            }
        }
        if let Some(m) = &manifest {
            signers.retain(|k| m.signers.contains(&k.verifying_key().to_bytes()));
            if !self.signers.is_empty() && signers.is_empty() {
                return Err(Error::KeyMismatch);
            }
        }
        let mut info_changed = is_new || (info.manifest.is_none() && manifest.is_some());
        info.manifest = manifest.clone();
        if self.store_secrets {
            for k in &signers {
                let seed = k.to_bytes();
                if !info.secrets.contains(&seed) {
                    info.secrets.push(seed);
                    info_changed = true;
                }
            }
        }
        if self.encryption_key.is_some() && !info.encrypted {
            info.encrypted = true;
            info_changed = true;
        }
        if info_changed {
            batch.push(Op::PutValue {
                core: id,
                key: INFO.to_vec(),
                value: encode(&info),
            });
        }
        let mut roots = Vec::new();
        for r in flat::full_roots(rec.length) {
            let n = storage
                .node(&id, r)
                .await?
                .ok_or_else(|| corrupt("a root of the tree is missing"))?;
            roots.push(n);
        }
        if roots.iter().map(|r| r.size).sum::<u64>() != rec.byte_length {
            return Err(corrupt("byte length does not match the tree"));
        }
        if !batch.is_empty() {
            storage.write(batch).await?;
        }
        let encryption = self.encryption_key.map(|k| BlockEncryption::new(&k, &key));
        let mut scheduler = Scheduler::default();
        scheduler.local.insert(0, rec.contiguous_length);
        let core = Core {
            inner: Arc::new(Inner {
                storage,
                id,
                key,
                signers,
                encrypted_without_key: info.encrypted && encryption.is_none(),
                encryption,
                durability: self.durability,
                write_lock: AsyncMutex::new(()),
                state: Mutex::new(State {
                    rec,
                    roots,
                    manifest,
                }),
                events: Mutex::new(Vec::new()),
                snapshots: Mutex::new(Vec::new()),
                scheduler: Mutex::new(scheduler),
                clock: self.clock,
            }),
        };
        Ok(core)
    }
}

/// The core key recorded in storage for the core with this discovery key,
/// if the storage holds that core (its info record is the one place that
/// knows the layout).
pub(crate) async fn stored_key(
    storage: &dyn Storage,
    discovery_key: &Hash,
) -> Result<Option<Hash>> {
    match storage.value(discovery_key, INFO).await? {
        Some(bytes) => Ok(Some(decode::<InfoRecord>(&bytes, "core info")?.key)),
        None => Ok(None),
    }
}

fn corrupt(what: &str) -> Error {
    Error::Storage(crate::error::StorageError::Corrupt(what.to_string()))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str) -> Result<T> {
    postcard::from_bytes(b).map_err(|_| corrupt(&format!("{what} does not decode")))
}

impl Core {
    /// Starts opening a core on `storage`. With no key, manifest or key pair,
    /// a new writable core with a fresh key pair is created.
    pub fn builder(storage: Arc<dyn Storage>) -> CoreBuilder {
        CoreBuilder {
            storage,
            key: None,
            manifest: None,
            signers: Vec::new(),
            store_secrets: true,
            encryption_key: None,
            durability: Durability::default(),
            entropy: Arc::new(OsEntropy),
            clock: Arc::new(ThreadClock),
            create: true,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// The shared download scheduler (lock order: scheduler before state).
    pub(crate) fn scheduler(&self) -> MutexGuard<'_, Scheduler> {
        lock(&self.inner.scheduler)
    }

    /// Tells connected peers what changed locally (nothing is built when no
    /// peer is connected).
    fn announce(&self, have: &[(u64, u64)], drop: &[(u64, u64)]) {
        let mut s = self.scheduler();
        if s.peer_count() > 0 {
            s.wake_all(Wake::Announce {
                have: have.to_vec(),
                drop: drop.to_vec(),
            });
        }
    }

    /// The core key (share it with readers; it lets them verify everything).
    pub fn key(&self) -> Hash {
        self.inner.key
    }

    /// The discovery key (safe to announce).
    pub fn discovery_key(&self) -> Hash {
        self.inner.id
    }

    /// The manifest, once known.
    pub fn manifest(&self) -> Option<Manifest> {
        self.state().manifest.clone()
    }

    /// Number of blocks.
    pub fn length(&self) -> u64 {
        self.state().rec.length
    }

    /// Total stored bytes of all blocks.
    pub fn byte_length(&self) -> u64 {
        self.state().rec.byte_length
    }

    /// Blocks `[0, contiguous_length)` are all held locally.
    pub fn contiguous_length(&self) -> u64 {
        self.state().rec.contiguous_length
    }

    /// The fork id.
    pub fn fork(&self) -> u64 {
        self.state().rec.fork
    }

    /// Whether this handle can sign new blocks.
    pub fn writable(&self) -> bool {
        let s = self.state();
        s.manifest
            .as_ref()
            .is_some_and(|m| manifest::can_sign(m, &self.inner.signers))
    }

    /// A summary of the core's state.
    pub fn info(&self) -> Info {
        let writable = self.writable();
        let s = self.state();
        Info {
            key: self.inner.key,
            discovery_key: self.inner.id,
            length: s.rec.length,
            byte_length: s.rec.byte_length,
            contiguous_length: s.rec.contiguous_length,
            fork: s.rec.fork,
            writable,
            encrypted: self.inner.encryption.is_some(),
        }
    }

    /// The hash of the current tree.
    pub fn tree_hash(&self) -> Hash {
        tree_hash(&self.state().roots)
    }

    /// The current roots.
    pub fn roots(&self) -> Vec<Node> {
        self.state().roots.clone()
    }

    /// Subscribes to events (appends, upgrades, truncations, downloads).
    pub fn events(&self) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded();
        lock(&self.inner.events).push(tx);
        rx
    }

    fn emit(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut subs = lock(&self.inner.events);
        if subs.is_empty() {
            return;
        }
        subs.retain(|tx| events.iter().all(|e| tx.unbounded_send(e.clone()).is_ok()));
    }

    fn has_subscribers(&self) -> bool {
        !lock(&self.inner.events).is_empty()
    }

    fn state_op(&self, rec: &StateRecord) -> Op {
        Op::PutValue {
            core: self.inner.id,
            key: STATE.to_vec(),
            value: encode(rec),
        }
    }

    async fn maybe_flush(&self) -> Result<()> {
        if self.inner.durability == Durability::EachWrite {
            self.inner.storage.flush().await?;
        }
        Ok(())
    }

    /// Appends one block. Returns the new length.
    pub async fn append(&self, block: &[u8]) -> Result<u64> {
        self.append_batch([block]).await
    }

    /// Appends blocks atomically: all of them or none. Returns the new length.
    pub async fn append_batch<I, B>(&self, blocks: I) -> Result<u64>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        self.append_blocks(blocks.into_iter().map(Block::Borrowed))
            .await
    }

    /// Like [`Core::append_batch`], but takes the blocks by value: an
    /// unencrypted core stores them without copying them first.
    pub async fn append_owned<I>(&self, blocks: I) -> Result<u64>
    where
        I: IntoIterator<Item = Vec<u8>>,
    {
        self.append_blocks(blocks.into_iter().map(Block::<Vec<u8>>::Owned))
            .await
    }

    async fn append_blocks<I, B>(&self, blocks: I) -> Result<u64>
    where
        I: Iterator<Item = Block<B>>,
        B: AsRef<[u8]>,
    {
        let _w = self.inner.write_lock.lock().await;
        if !self.writable() {
            return Err(Error::NotWritable);
        }
        if self.inner.encrypted_without_key {
            return Err(Error::NoEncryptionKey);
        }
        let (mut rec, mut roots) = {
            let s = self.state();
            (s.rec.clone(), s.roots.clone())
        };
        let id = self.inner.id;
        let mut batch = Batch::new();
        let start_length = rec.length;
        for block in blocks {
            let len = block.as_slice().len();
            if len > MAX_BLOCK_SIZE {
                return Err(Error::BlockTooLarge(len));
            }
            let index = rec.length;
            let data = match &self.inner.encryption {
                Some(e) => e.encrypt(index, rec.fork, block.as_slice()),
                None => block.into_vec(),
            };
            let leaf = Node::leaf(index, &data);
            batch.push(Op::PutNode {
                core: id,
                node: leaf,
            });
            batch.push(Op::PutBlock {
                core: id,
                index,
                data,
            });
            roots.push(leaf);
            while roots.len() >= 2 {
                let r = roots[roots.len() - 1];
                let l = roots[roots.len() - 2];
                if flat::depth(l.index) != flat::depth(r.index) {
                    break;
                }
                let p = Node::parent(&l, &r);
                batch.push(Op::PutNode { core: id, node: p });
                roots.truncate(roots.len() - 2);
                roots.push(p);
            }
            rec.length += 1;
            rec.byte_length += leaf.size;
        }
        if rec.length == start_length {
            return Ok(rec.length);
        }
        if rec.contiguous_length == start_length {
            rec.contiguous_length = rec.length;
        }
        rec.signature = None;
        batch.push(self.state_op(&rec));
        self.inner.storage.write(batch).await?;
        let (length, byte_length) = (rec.length, rec.byte_length);
        {
            let mut s = self.state();
            s.rec = rec;
            s.roots = roots;
        }
        self.scheduler().on_local(start_length, length);
        self.announce(&[(start_length, length - start_length)], &[]);
        self.maybe_flush().await?;
        if self.has_subscribers() {
            self.emit(vec![Event::Append {
                length,
                byte_length,
            }]);
        }
        Ok(length)
    }

    /// Signs the current tree if it is not signed yet; returns the signature.
    /// Called for you whenever a signature is needed.
    pub async fn signature(&self) -> Result<MultiSignature> {
        let _w = self.inner.write_lock.lock().await;
        self.ensure_signed().await
    }

    async fn ensure_signed(&self) -> Result<MultiSignature> {
        let (mut rec, roots, manifest) = {
            let s = self.state();
            (s.rec.clone(), s.roots.clone(), s.manifest.clone())
        };
        if let Some(sig) = &rec.signature {
            return Ok(sig.clone());
        }
        let manifest = manifest.ok_or(Error::NotWritable)?;
        if !manifest::can_sign(&manifest, &self.inner.signers) {
            return Err(Error::NotWritable);
        }
        let sig = manifest::sign_all(
            &manifest,
            &self.inner.signers,
            &self.inner.key,
            &tree_hash(&roots),
            rec.length,
            rec.fork,
        );
        rec.signature = Some(sig.clone());
        self.inner
            .storage
            .write({
                let mut b = Batch::new();
                b.push(self.state_op(&rec));
                b
            })
            .await?;
        self.state().rec.signature = Some(sig.clone());
        Ok(sig)
    }

    /// Makes every earlier change durable (and signs the current tree).
    pub async fn flush(&self) -> Result<()> {
        let _w = self.inner.write_lock.lock().await;
        if self.writable() && self.state().rec.length > 0 {
            self.ensure_signed().await?;
        }
        self.inner.storage.flush().await?;
        Ok(())
    }

    /// Reads block `index`: `Ok(None)` if it is in the tree but not held here
    /// (sparse or cleared). Decrypts when the core has an encryption key.
    pub async fn get(&self, index: u64) -> Result<Option<Vec<u8>>> {
        let length = self.length();
        if index >= length {
            return Err(Error::OutOfRange { index, length });
        }
        if self.inner.encrypted_without_key {
            return Err(Error::NoEncryptionKey);
        }
        let Some(data) = self.inner.storage.block(&self.inner.id, index).await? else {
            return Ok(None);
        };
        self.open_block(index, data).map(Some)
    }

    fn open_block(&self, index: u64, data: Vec<u8>) -> Result<Vec<u8>> {
        match &self.inner.encryption {
            Some(e) => e.decrypt(index, &data).ok_or(Error::Decryption(index)),
            None => Ok(data),
        }
    }

    /// The block as stored (ciphertext for encrypted cores), if held.
    pub async fn get_raw(&self, index: u64) -> Result<Option<Vec<u8>>> {
        let length = self.length();
        if index >= length {
            return Err(Error::OutOfRange { index, length });
        }
        Ok(self.inner.storage.block(&self.inner.id, index).await?)
    }

    /// Whether every block in `[start, end)` is held locally.
    pub async fn has(&self, start: u64, end: u64) -> Result<bool> {
        if end > self.length() || start > end {
            return Ok(false);
        }
        let contiguous = self.contiguous_length();
        for i in start.max(contiguous.min(end))..end {
            if !self.inner.storage.has_block(&self.inner.id, i).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Finds the block holding byte `bytes` (of the stored form): returns
    /// (block index, offset inside the block).
    pub async fn seek(&self, bytes: u64) -> Result<(u64, u64)> {
        let (roots, byte_length) = {
            let s = self.state();
            (s.roots.clone(), s.rec.byte_length)
        };
        let (leaf, offset, _) = self.seek_in(&roots, byte_length, bytes).await?;
        Ok((leaf.index / 2, offset))
    }

    /// Walks down from the roots to the leaf holding `bytes`; returns the leaf,
    /// the offset in it, and the sibling path (bottom up).
    async fn seek_in(
        &self,
        roots: &[Node],
        byte_length: u64,
        bytes: u64,
    ) -> Result<(Node, u64, Vec<Node>)> {
        if bytes >= byte_length {
            return Err(Error::SeekOutOfRange { bytes, byte_length });
        }
        let mut rest = bytes;
        let mut cur = None;
        for r in roots {
            if rest < r.size {
                cur = Some(*r);
                break;
            }
            rest -= r.size;
        }
        let mut cur = cur.ok_or(Error::SeekOutOfRange { bytes, byte_length })?;
        let mut path = Vec::new();
        while let Some((l, r)) = flat::children(cur.index) {
            let left = self.node(l).await?;
            let right = self.node(r).await?;
            if rest < left.size {
                path.push(right);
                cur = left;
            } else {
                rest -= left.size;
                path.push(left);
                cur = right;
            }
        }
        path.reverse();
        Ok((cur, rest, path))
    }

    async fn node(&self, index: u64) -> Result<Node> {
        self.inner
            .storage
            .node(&self.inner.id, index)
            .await?
            .ok_or(Error::NodeNotAvailable(index))
    }

    /// Truncates the log to `length` blocks and starts a new fork. Only the
    /// writer can truncate; readers learn the new fork from its signature.
    pub async fn truncate(&self, length: u64) -> Result<()> {
        let _w = self.inner.write_lock.lock().await;
        if !self.writable() {
            return Err(Error::NotWritable);
        }
        let mut rec = self.state().rec.clone();
        if length > rec.length {
            return Err(Error::OutOfRange {
                index: length,
                length: rec.length,
            });
        }
        let mut roots = Vec::new();
        for r in flat::full_roots(length) {
            roots.push(self.node(r).await?);
        }
        self.preserve_for_snapshots(length, rec.length).await?;
        let fork = rec.fork + 1;
        rec.forks.push((rec.fork, fork, length));
        if rec.forks.len() > MAX_FORK_HISTORY {
            rec.forks.remove(0);
        }
        rec.fork = fork;
        rec.length = length;
        rec.byte_length = roots.iter().map(|r| r.size).sum();
        rec.contiguous_length = rec.contiguous_length.min(length);
        rec.signature = None;
        let mut batch = Batch::new();
        batch.push(Op::Truncate {
            core: self.inner.id,
            length,
        });
        batch.push(self.state_op(&rec));
        self.inner.storage.write(batch).await?;
        {
            let mut s = self.state();
            s.rec = rec;
            s.roots = roots;
        }
        self.scheduler().on_local_truncated(length);
        self.announce(&[], &[]);
        self.maybe_flush().await?;
        self.emit(vec![Event::Truncate { length, fork }]);
        Ok(())
    }

    /// Copies blocks `[length, old_length)` into live snapshots that can see them.
    async fn preserve_for_snapshots(&self, length: u64, old_length: u64) -> Result<()> {
        let snaps: Vec<Arc<SnapshotShared>> = {
            let mut v = lock(&self.inner.snapshots);
            v.retain(|w| w.strong_count() > 0);
            v.iter().filter_map(|w| w.upgrade()).collect()
        };
        for snap in snaps {
            let valid = *lock(&snap.valid_below);
            let end = snap.length.min(old_length).min(valid);
            for i in length..end {
                if let Some(b) = self.inner.storage.block(&self.inner.id, i).await? {
                    lock(&snap.preserved).insert(i, b);
                }
            }
            let mut v = lock(&snap.valid_below);
            *v = (*v).min(length);
        }
        Ok(())
    }

    /// Drops the local data of blocks `[start, end)` and gives the disk space
    /// back; the tree stays, so the core still verifies and can fetch them again.
    pub async fn clear(&self, start: u64, end: u64) -> Result<()> {
        let _w = self.inner.write_lock.lock().await;
        let mut rec = self.state().rec.clone();
        let end = end.min(rec.length);
        if start >= end {
            return Ok(());
        }
        rec.contiguous_length = rec.contiguous_length.min(start);
        let mut batch = Batch::new();
        batch.push(Op::Clear {
            core: self.inner.id,
            start,
            end,
        });
        batch.push(self.state_op(&rec));
        self.inner.storage.write(batch).await?;
        self.state().rec.contiguous_length = rec.contiguous_length;
        self.scheduler().on_local_dropped(start, end);
        self.announce(&[], &[(start, end - start)]);
        // Space is given back once the clear is durable.
        self.inner.storage.flush().await?;
        Ok(())
    }

    /// A local value stored beside the core (not replicated).
    pub async fn user_data(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .inner
            .storage
            .value(&self.inner.id, &user_key(key))
            .await?)
    }

    /// Sets or removes (`None`) a local value.
    pub async fn set_user_data(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        let _w = self.inner.write_lock.lock().await;
        let mut b = Batch::new();
        b.push(match value {
            Some(v) => Op::PutValue {
                core: self.inner.id,
                key: user_key(key),
                value: v.to_vec(),
            },
            None => Op::DelValue {
                core: self.inner.id,
                key: user_key(key),
            },
        });
        self.inner.storage.write(b).await?;
        Ok(())
    }

    /// Every local value, sorted by key.
    pub async fn all_user_data(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let v = self
            .inner
            .storage
            .values(&self.inner.id, USER_PREFIX)
            .await?;
        Ok(v.into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k[USER_PREFIX.len()..]).into_owned(),
                    v,
                )
            })
            .collect())
    }

    /// Reads block `index`, fetching it from connected peers if asked to.
    pub async fn get_with(&self, index: u64, options: GetOptions) -> Result<Option<Vec<u8>>> {
        if index < self.length() {
            if let Some(b) = self.get(index).await? {
                return Ok(Some(b));
            }
        }
        if !options.wait {
            return if index < self.length() {
                Ok(None)
            } else {
                Err(Error::OutOfRange {
                    index,
                    length: self.length(),
                })
            };
        }
        if options.fail_fast && self.scheduler().offline() {
            return Err(Error::Offline);
        }
        let (want, rx) = {
            let mut s = self.scheduler();
            let want = s.add_want(index, index + 1);
            (want, s.add_range_waiter(index, index + 1))
        };
        let arrived = match options.timeout {
            Some(t) => {
                let sleep = self.inner.clock.sleep(t);
                match futures::future::select(rx, sleep).await {
                    futures::future::Either::Left((r, _)) => r.is_ok(),
                    futures::future::Either::Right(_) => false,
                }
            }
            None => rx.await.is_ok(),
        };
        self.scheduler().remove_want(want);
        if !arrived {
            return Err(Error::Timeout);
        }
        self.get(index).await
    }

    /// Learns the latest signed length from connected peers: waits until every
    /// connected peer has said how long its core is and any newer length was
    /// verified. Returns whether any peer was connected.
    pub async fn update(&self) -> Result<bool> {
        let rx = self.scheduler().start_update();
        match rx {
            None => Ok(false),
            Some(rx) => rx.await.map_err(|_| Error::Closed),
        }
    }

    /// Downloads blocks `[start, end)` from peers; the returned handle
    /// completes when they are all held locally. Blocks beyond the current
    /// length are fetched once an upgrade from a peer covers them.
    pub fn download(&self, start: u64, end: u64) -> Download {
        let want = self.scheduler().add_want(start, end);
        Download {
            core: self.clone(),
            want,
            start,
            end,
        }
    }

    /// Downloads everything and keeps following the writer while the handle lives.
    pub fn download_live(&self) -> Download {
        self.download(0, u64::MAX)
    }

    /// Number of peers currently replicating this core.
    pub fn peer_count(&self) -> usize {
        self.scheduler().peer_count()
    }

    /// Whether this core is in step with its peers: every connected peer
    /// that has told its length reports this core's length and has said it
    /// holds every block below it. `None` when no peer has told its length
    /// yet. Says nothing about peers that are not connected.
    pub fn peers_in_step(&self) -> Option<bool> {
        let length = self.length();
        self.scheduler().peers_match(length)
    }

    /// Subscribes to an extension: messages that peers send under `name`,
    /// with an id of the peer that sent them.
    pub fn extension(&self, name: &str) -> mpsc::UnboundedReceiver<(u64, Vec<u8>)> {
        self.scheduler().subscribe_extension(name)
    }

    /// Sends an extension message to every connected peer.
    pub fn send_extension(&self, name: &str, message: Vec<u8>) {
        self.scheduler().wake_all(Wake::Extension {
            name: name.to_string(),
            message,
        });
    }

    /// Replicates this core with a remote over a framed duplex; see
    /// [`crate::replication::replicate`].
    pub async fn replicate<IO>(
        &self,
        io: IO,
        options: crate::replication::ReplicateOptions,
    ) -> std::result::Result<(), crate::replication::ReplicationError>
    where
        IO: futures::Stream<Item = std::result::Result<Vec<u8>, std::io::Error>>
            + futures::Sink<Vec<u8>, Error = std::io::Error>
            + Send
            + 'static,
    {
        crate::replication::replicate(Arc::new(self.clone()), io, options).await
    }

    /// A read-only view at the current length that later appends and
    /// truncations do not change.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.state();
        let shared = Arc::new(SnapshotShared {
            fork: s.rec.fork,
            length: s.rec.length,
            valid_below: Mutex::new(s.rec.length),
            preserved: Mutex::new(HashMap::new()),
        });
        lock(&self.inner.snapshots).push(Arc::downgrade(&shared));
        Snapshot {
            core: self.clone(),
            shared,
            byte_length: s.rec.byte_length,
            roots: s.roots.clone(),
        }
    }

    // ---- proofs ------------------------------------------------------------------------

    /// What a reader should ask for to get block `index` verified, given what
    /// it already holds: the number of missing sibling nodes is computed here.
    pub async fn block_request(&self, index: u64) -> Result<crate::proof::BlockRequest> {
        self.block_request_assuming(index, &|_| false).await
    }

    /// Like [`Core::block_request`], but treats the nodes for which `assume`
    /// holds as already verified: use it when earlier requests to the same
    /// peer, answered first, will prove them (their proofs then stay tiny).
    /// If such an answer never comes, verification fails with
    /// [`ProofError::Unanchored`] and the block can be asked for again.
    pub async fn block_request_assuming(
        &self,
        index: u64,
        assume: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<crate::proof::BlockRequest> {
        let length = self.length();
        let nodes = if index < length {
            self.missing_nodes(index * 2, length, assume).await?
        } else {
            0
        };
        Ok(crate::proof::BlockRequest { index, nodes })
    }

    async fn missing_nodes(
        &self,
        mut index: u64,
        length: u64,
        assume: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<u64> {
        let mut n = 0;
        loop {
            if flat::is_root(index, length) {
                return Ok(n);
            }
            if n > 0
                && (assume(index)
                    || self
                        .inner
                        .storage
                        .node(&self.inner.id, index)
                        .await?
                        .is_some())
            {
                return Ok(n);
            }
            index = flat::parent(index);
            n += 1;
            if n > 64 {
                return Ok(0);
            }
        }
    }

    /// Answers a reader's request with a proof built from local data.
    pub async fn proof(&self, req: &ProofRequest) -> Result<Proof> {
        let _w = self.inner.write_lock.lock().await;
        let needs_signature = {
            let s = self.state();
            req.upgrade
                .as_ref()
                .is_some_and(|u| u.start < s.rec.length || req.fork < s.rec.fork)
                && s.rec.signature.is_none()
        };
        if needs_signature {
            self.ensure_signed().await?;
        }
        let (rec, roots, manifest) = {
            let s = self.state();
            let roots = if req.seek.is_some() {
                s.roots.clone()
            } else {
                Vec::new()
            };
            let manifest = if req.manifest {
                s.manifest.clone()
            } else {
                None
            };
            (s.rec.clone(), roots, manifest)
        };
        let mut proof = Proof {
            fork: rec.fork,
            ..Default::default()
        };
        if req.manifest {
            proof.manifest = manifest;
        }
        let tree_length = rec.length;
        if req.fork > rec.fork {
            return Err(Error::Proof(ProofError::Stale(
                "requester is on a newer fork",
            )));
        }
        if let Some(up) = &req.upgrade {
            let mut start = up.start.min(rec.length);
            if req.fork != rec.fork {
                // The requester is on an older fork: start where both agree,
                // or, if asked, where its own roots end at or below that (it
                // always holds those, even when it is sparse).
                let common = start.min(common_prefix(&rec.forks, req.fork));
                start = if req.round_fork_point {
                    root_boundary_at_or_below(up.start, common)
                } else {
                    common
                };
            }
            if start < rec.length || req.fork != rec.fork {
                let sig = rec.signature.clone().ok_or(Error::NotWritable)?;
                let mut nodes = Vec::new();
                for i in upgrade_node_indices(start, rec.length) {
                    nodes.push(self.node(i).await?);
                }
                proof.upgrade = Some(UpgradeProof {
                    start,
                    length: rec.length,
                    nodes,
                    signature: sig,
                });
            }
        } else if req.fork != rec.fork
            && (req.block.is_some() || req.hash.is_some() || req.seek.is_some())
        {
            return Err(Error::Proof(ProofError::Stale(
                "requester is on another fork",
            )));
        }
        if let Some(b) = &req.block {
            if b.index >= tree_length {
                return Err(Error::OutOfRange {
                    index: b.index,
                    length: tree_length,
                });
            }
            let value = self
                .inner
                .storage
                .block(&self.inner.id, b.index)
                .await?
                .ok_or(Error::NotAvailable(b.index))?;
            // Without an upgrade the requester verifies against its own
            // (possibly shorter) tree: `nodes == 0` then means its leaf is one
            // of its roots, so no sibling is wanted. Walking up to a root of
            // our longer tree would pass its root ("path continues past a
            // root") whenever we appended since it last upgraded.
            let nodes = if b.nodes == 0 && req.upgrade.is_none() {
                Vec::new()
            } else {
                self.siblings(b.index * 2, b.nodes, tree_length).await?
            };
            proof.block = Some(BlockProof {
                index: b.index,
                value,
                nodes,
            });
        }
        if let Some(h) = &req.hash {
            if !flat::in_tree(h.index, tree_length) {
                return Err(Error::NodeNotAvailable(h.index));
            }
            let node = self.node(h.index).await?;
            let nodes = self.siblings(h.index, h.nodes, tree_length).await?;
            proof.hash = Some(HashProof { node, nodes });
        }
        if let Some(s) = &req.seek {
            let (t_roots, t_bytes) = if tree_length == rec.length {
                (roots.clone(), rec.byte_length)
            } else {
                let mut r = Vec::new();
                for i in flat::full_roots(tree_length) {
                    r.push(self.node(i).await?);
                }
                let b = r.iter().map(|n| n.size).sum();
                (r, b)
            };
            let (leaf, _, nodes) = self.seek_in(&t_roots, t_bytes, s.bytes).await?;
            proof.seek = Some(SeekProof {
                bytes: s.bytes,
                leaf,
                nodes,
            });
        }
        Ok(proof)
    }

    /// Sibling nodes from `index` upward: `count` of them, or (0) up to a root.
    async fn siblings(&self, mut index: u64, count: u64, tree_length: u64) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        while !flat::is_root(index, tree_length) {
            if count > 0 && out.len() as u64 >= count {
                break;
            }
            out.push(self.node(flat::sibling(index)).await?);
            index = flat::parent(index);
        }
        if count > 0 && (out.len() as u64) < count {
            return Err(Error::Proof(ProofError::Malformed(
                "more nodes asked than the tree has",
            )));
        }
        Ok(out)
    }

    /// Verifies a proof against the core key and stores what it proves. Nothing
    /// unverified is ever stored; any mismatch is a typed error and leaves the
    /// core unchanged.
    pub async fn verify(&self, proof: &Proof) -> Result<Verified> {
        let _w = self.inner.write_lock.lock().await;
        let (rec, roots, manifest) = {
            let s = self.state();
            (s.rec.clone(), s.roots.clone(), s.manifest.clone())
        };
        let id = self.inner.id;
        let mut out = Verified::default();
        let mut batch = Batch::new();
        let mut manifest = manifest;
        let mut info_update = None;
        if let Some(m) = &proof.manifest {
            if m.key() != self.inner.key || m.validate().is_err() {
                return Err(ProofError::Malformed("manifest does not match the key").into());
            }
            if manifest.is_none() {
                manifest = Some(m.clone());
                info_update = Some(m.clone());
            }
        }
        // Nodes proven by this proof, and the limit below which stored nodes are trusted.
        let mut proven: HashMap<u64, Node> = HashMap::new();
        let mut new_rec = rec.clone();
        let mut new_roots = roots.clone();
        let mut local_limit = rec.length;
        let mut truncate_to = None;
        if let Some(up) = &proof.upgrade {
            if self.writable() {
                return Err(Error::WriterUpgrade);
            }
            let m = manifest
                .as_ref()
                .ok_or(ProofError::Stale("the manifest is not known yet"))?;
            if proof.fork < rec.fork {
                return Err(ProofError::Stale("proof is from an older fork").into());
            }
            if up.start > rec.length || up.length > u64::MAX / 4 {
                return Err(
                    ProofError::Malformed("upgrade starts past the verifier's length").into(),
                );
            }
            if proof.fork == rec.fork {
                if up.start != rec.length {
                    return Err(ProofError::Stale("upgrade starts at another length").into());
                }
                if up.length <= rec.length {
                    return Err(ProofError::Stale("upgrade is not newer").into());
                }
            }
            let local_roots = if up.start == rec.length {
                roots.clone()
            } else {
                let mut v = Vec::new();
                for i in flat::full_roots(up.start) {
                    match self.inner.storage.node(&id, i).await? {
                        Some(n) => v.push(n),
                        None => return Err(ProofError::MissingAnchor.into()),
                    }
                }
                v
            };
            let (nr, nodes) = upgrade_roots(up.start, up.length, &local_roots, &up.nodes)?;
            m.verify(
                &self.inner.key,
                &tree_hash(&nr),
                up.length,
                proof.fork,
                &up.signature,
            )?;
            for n in nodes {
                proven.insert(n.index, n);
            }
            if proof.fork != rec.fork {
                local_limit = up.start;
                if up.start < rec.length {
                    truncate_to = Some(up.start);
                }
                new_rec.forks.push((rec.fork, proof.fork, up.start));
                if new_rec.forks.len() > MAX_FORK_HISTORY {
                    new_rec.forks.remove(0);
                }
            }
            new_rec.fork = proof.fork;
            new_rec.length = up.length;
            new_rec.byte_length = nr.iter().map(|r| r.size).sum();
            new_rec.signature = Some(up.signature.clone());
            if let Some(t) = truncate_to {
                new_rec.contiguous_length = new_rec.contiguous_length.min(t);
            }
            new_roots = nr;
            out.upgraded = Some(up.length);
            out.truncated = truncate_to;
        } else if proof.fork != rec.fork {
            return Err(ProofError::Stale("proof is for another fork").into());
        }
        for r in &new_roots {
            proven.entry(r.index).or_insert(*r);
        }
        let tree_length = new_rec.length;
        let mut stored_block = None;
        if let Some(b) = &proof.block {
            if b.index >= tree_length {
                return Err(ProofError::Malformed("block outside the tree").into());
            }
            if b.value.len() > MAX_BLOCK_SIZE {
                return Err(ProofError::Malformed("block too large").into());
            }
            let leaf = Node::leaf(b.index, &b.value);
            let (nodes, top) = walk_up(leaf, &b.nodes, tree_length)?;
            self.check_trusted(top, &proven, local_limit).await?;
            for n in nodes {
                proven.entry(n.index).or_insert(n);
            }
            stored_block = Some((b.index, b.value.clone()));
        }
        if let Some(h) = &proof.hash {
            let (nodes, top) = walk_up(h.node, &h.nodes, tree_length)?;
            self.check_trusted(top, &proven, local_limit).await?;
            for n in nodes {
                proven.entry(n.index).or_insert(n);
            }
            out.hash = Some(h.node);
        }
        if let Some(s) = &proof.seek {
            if flat::depth(s.leaf.index) != 0 {
                return Err(ProofError::Malformed("seek must end at a leaf").into());
            }
            let (nodes, top) = walk_up(s.leaf, &s.nodes, tree_length)?;
            if !flat::is_root(top.index, tree_length) {
                return Err(ProofError::Malformed("seek proof must reach a root").into());
            }
            self.check_trusted(top, &proven, local_limit).await?;
            let mut start = 0u64;
            for r in &new_roots {
                if r.index == top.index {
                    break;
                }
                start += r.size;
            }
            let mut cur = s.leaf.index;
            for sib in &s.nodes {
                // A sibling left of the path covers bytes before the leaf.
                if sib.index < cur {
                    start += sib.size;
                }
                cur = flat::parent(cur);
            }
            if s.bytes < start || s.bytes >= start + s.leaf.size {
                return Err(ProofError::Mismatch.into());
            }
            for n in nodes {
                proven.entry(n.index).or_insert(n);
            }
            out.seek = Some((s.leaf.index / 2, s.bytes - start));
        }
        // Build the batch: nothing above this line touched storage or state.
        if let Some(t) = truncate_to {
            self.preserve_for_snapshots(t, rec.length).await?;
            batch.push(Op::Truncate {
                core: id,
                length: t,
            });
        }
        let mut known: HashSet<u64> = HashSet::new();
        if truncate_to.is_none() && proof.fork == rec.fork {
            for r in &roots {
                known.insert(r.index);
            }
        }
        for (idx, n) in &proven {
            if !known.contains(idx) {
                batch.push(Op::PutNode { core: id, node: *n });
            }
        }
        if let Some((index, value)) = stored_block {
            if truncate_to.is_some() || !self.inner.storage.has_block(&id, index).await? {
                batch.push(Op::PutBlock {
                    core: id,
                    index,
                    data: value,
                });
                out.block = Some(index);
            }
        }
        if let Some(m) = info_update {
            if let Some(bytes) = self.inner.storage.value(&id, INFO).await? {
                let mut info: InfoRecord = decode(&bytes, "core info")?;
                info.manifest = Some(m.clone());
                batch.push(Op::PutValue {
                    core: id,
                    key: INFO.to_vec(),
                    value: encode(&info),
                });
            }
        }
        // Advance the contiguous length over blocks now held.
        if let Some(i) = out.block {
            if i == new_rec.contiguous_length {
                let mut c = i + 1;
                while c < new_rec.length && self.inner.storage.has_block(&id, c).await? {
                    c += 1;
                }
                new_rec.contiguous_length = c;
            }
        }
        batch.push(self.state_op(&new_rec));
        self.inner.storage.write(batch).await?;
        let mut events = Vec::new();
        if let Some(t) = truncate_to {
            events.push(Event::Truncate {
                length: t,
                fork: new_rec.fork,
            });
        }
        if let Some(l) = out.upgraded {
            events.push(Event::Upgrade {
                length: l,
                fork: new_rec.fork,
            });
        }
        if let Some(i) = out.block {
            events.push(Event::Download { index: i });
        }
        {
            let mut s = self.state();
            s.rec = new_rec;
            s.roots = new_roots;
            if manifest.is_some() {
                s.manifest = manifest;
            }
        }
        {
            let mut s = self.scheduler();
            if let Some(t) = truncate_to {
                s.on_local_truncated(t);
            }
            let mut have = Vec::new();
            if let Some(i) = out.block {
                s.on_local(i, i + 1);
                have.push((i, 1));
            }
            if out.upgraded.is_some() || !have.is_empty() {
                s.wake_all(Wake::Announce {
                    have,
                    drop: Vec::new(),
                });
            }
        }
        self.emit(events);
        Ok(out)
    }

    /// Verifies many proofs in order and stores what they prove, like calling
    /// [`Core::verify`] on each in turn, but every run of plain block proofs
    /// (a block and its nodes, on the current fork, without upgrade, hash,
    /// seek or manifest) is checked under one lock and stored with one
    /// storage write. A proof may anchor on nodes proven by an earlier proof
    /// of the same call. Each proof gets its own result: a bad one is
    /// rejected alone and stores nothing. The outer error is a storage
    /// failure; runs written before it stay stored.
    pub async fn verify_batch(&self, proofs: Vec<Proof>) -> Result<Vec<Result<Verified>>> {
        let mut out = Vec::with_capacity(proofs.len());
        let mut run = Vec::new();
        for p in proofs {
            if is_plain_block(&p) {
                run.push(p);
                continue;
            }
            if !run.is_empty() {
                out.extend(self.verify_blocks(std::mem::take(&mut run)).await?);
            }
            out.push(self.verify(&p).await);
        }
        if !run.is_empty() {
            out.extend(self.verify_blocks(run).await?);
        }
        Ok(out)
    }

    /// The batched path of [`Core::verify_batch`] for plain block proofs:
    /// the same checks as `verify`, one storage write for the whole run.
    async fn verify_blocks(&self, proofs: Vec<Proof>) -> Result<Vec<Result<Verified>>> {
        let _w = self.inner.write_lock.lock().await;
        let (rec, roots) = {
            let s = self.state();
            (s.rec.clone(), s.roots.clone())
        };
        let id = self.inner.id;
        let length = rec.length;
        // Nodes proven by earlier proofs of this run (not yet in storage).
        let mut pending: FastMap<u64, Node> = FastMap::default();
        let mut stored: Vec<u64> = Vec::new();
        let mut stored_set: FastSet<u64> = FastSet::default();
        let mut batch = Batch::new();
        let mut results = Vec::with_capacity(proofs.len());
        for proof in proofs {
            let Some(b) = proof.block else {
                results.push(Err(
                    ProofError::Malformed("no block in a block proof").into()
                ));
                continue;
            };
            if proof.fork != rec.fork {
                results.push(Err(ProofError::Stale("proof is for another fork").into()));
                continue;
            }
            if b.index >= length {
                results.push(Err(ProofError::Malformed("block outside the tree").into()));
                continue;
            }
            if b.value.len() > MAX_BLOCK_SIZE {
                results.push(Err(ProofError::Malformed("block too large").into()));
                continue;
            }
            let leaf = Node::leaf(b.index, &b.value);
            let (nodes, top) = match walk_up(leaf, &b.nodes, length) {
                Ok(x) => x,
                Err(e) => {
                    results.push(Err(e.into()));
                    continue;
                }
            };
            let trusted = match roots.iter().find(|r| r.index == top.index) {
                Some(r) => Some(*r),
                None => match pending.get(&top.index) {
                    Some(n) => Some(*n),
                    None if flat::in_tree(top.index, length) => {
                        self.inner.storage.node(&id, top.index).await?
                    }
                    None => None,
                },
            };
            match trusted {
                Some(t) if t == top => {}
                Some(_) => {
                    results.push(Err(ProofError::Mismatch.into()));
                    continue;
                }
                None => {
                    results.push(Err(ProofError::Unanchored.into()));
                    continue;
                }
            }
            for n in nodes {
                if roots.iter().any(|r| r.index == n.index) {
                    continue;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = pending.entry(n.index) {
                    e.insert(n);
                    batch.push(Op::PutNode { core: id, node: n });
                }
            }
            let mut out = Verified::default();
            if !stored_set.contains(&b.index) && !self.inner.storage.has_block(&id, b.index).await?
            {
                stored_set.insert(b.index);
                stored.push(b.index);
                batch.push(Op::PutBlock {
                    core: id,
                    index: b.index,
                    data: b.value,
                });
                out.block = Some(b.index);
            }
            results.push(Ok(out));
        }
        if batch.is_empty() {
            return Ok(results);
        }
        let mut new_rec = rec;
        if stored_set.contains(&new_rec.contiguous_length) {
            let mut c = new_rec.contiguous_length + 1;
            while c < new_rec.length
                && (stored_set.contains(&c) || self.inner.storage.has_block(&id, c).await?)
            {
                c += 1;
            }
            new_rec.contiguous_length = c;
            batch.push(self.state_op(&new_rec));
        }
        self.inner.storage.write(batch).await?;
        {
            let mut s = self.state();
            s.rec.contiguous_length = new_rec.contiguous_length;
        }
        stored.sort_unstable();
        let mut have: Vec<(u64, u64)> = Vec::new();
        for &i in &stored {
            match have.last_mut() {
                Some((start, len)) if *start + *len == i => *len += 1,
                _ => have.push((i, 1)),
            }
        }
        {
            let mut s = self.scheduler();
            for &(start, len) in &have {
                s.on_local(start, start + len);
            }
            if !have.is_empty() {
                s.wake_all(Wake::Announce {
                    have,
                    drop: Vec::new(),
                });
            }
        }
        if self.has_subscribers() {
            self.emit(
                stored
                    .iter()
                    .map(|&index| Event::Download { index })
                    .collect(),
            );
        }
        Ok(results)
    }

    /// Checks that `top` equals a node the verifier trusts.
    async fn check_trusted(
        &self,
        top: Node,
        proven: &HashMap<u64, Node>,
        local_limit: u64,
    ) -> Result<()> {
        let trusted = match proven.get(&top.index) {
            Some(n) => Some(*n),
            None if flat::in_tree(top.index, local_limit) => {
                self.inner.storage.node(&self.inner.id, top.index).await?
            }
            None => None,
        };
        match trusted {
            Some(t) if t == top => Ok(()),
            Some(_) => Err(ProofError::Mismatch.into()),
            None => Err(ProofError::Unanchored.into()),
        }
    }
}

/// A block handed to `append_blocks`: borrowed (copied once when stored)
/// or owned (moved into storage).
enum Block<B> {
    Borrowed(B),
    Owned(Vec<u8>),
}

impl<B: AsRef<[u8]>> Block<B> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Block::Borrowed(b) => b.as_ref(),
            Block::Owned(v) => v,
        }
    }

    fn into_vec(self) -> Vec<u8> {
        match self {
            Block::Borrowed(b) => b.as_ref().to_vec(),
            Block::Owned(v) => v,
        }
    }
}

/// Whether `verify_batch` may take `p` on its batched path.
pub(crate) fn is_plain_block(p: &Proof) -> bool {
    p.block.is_some()
        && p.upgrade.is_none()
        && p.hash.is_none()
        && p.seek.is_none()
        && p.manifest.is_none()
}

/// The longest prefix a reader on `fork` shares with the holder, from the
/// holder's record of truncations (0 when the history is unknown).
fn common_prefix(forks: &[(u64, u64, u64)], reader_fork: u64) -> u64 {
    // Every fork change after the reader's fork bounds the shared prefix; the
    // history must reach back to a change that started at or before it.
    let later: Vec<&(u64, u64, u64)> = forks
        .iter()
        .filter(|(_, to, _)| *to > reader_fork)
        .collect();
    match later.first() {
        Some((from, _, _)) if *from <= reader_fork => {
            later.iter().map(|(_, _, p)| *p).min().unwrap_or(0)
        }
        _ => 0,
    }
}

/// The largest end of a prefix of the roots of a `length`-block tree that is
/// at most `limit`.
fn root_boundary_at_or_below(length: u64, limit: u64) -> u64 {
    let mut end = 0;
    for r in flat::full_roots(length) {
        let (_, b) = flat::span(r);
        if b > limit {
            break;
        }
        end = b;
    }
    end
}

fn user_key(key: &str) -> Vec<u8> {
    let mut k = USER_PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

/// A read-only view of a core at a fixed length.
///
/// Later appends are invisible. If the core is truncated below the snapshot's
/// length, the blocks the snapshot could see are copied into it first (memory
/// grows with the truncated range while the snapshot lives).
#[derive(Clone)]
pub struct Snapshot {
    core: Core,
    shared: Arc<SnapshotShared>,
    byte_length: u64,
    roots: Vec<Node>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("length", &self.shared.length)
            .field("fork", &self.shared.fork)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Number of blocks in the snapshot.
    pub fn length(&self) -> u64 {
        self.shared.length
    }

    /// Byte length at the snapshot.
    pub fn byte_length(&self) -> u64 {
        self.byte_length
    }

    /// Fork id at the snapshot.
    pub fn fork(&self) -> u64 {
        self.shared.fork
    }

    /// Tree hash at the snapshot.
    pub fn tree_hash(&self) -> Hash {
        tree_hash(&self.roots)
    }

    /// Reads a block as it was when the snapshot was taken.
    pub async fn get(&self, index: u64) -> Result<Option<Vec<u8>>> {
        if index >= self.shared.length {
            return Err(Error::OutOfRange {
                index,
                length: self.shared.length,
            });
        }
        if let Some(b) = lock(&self.shared.preserved).get(&index).cloned() {
            return self.core.open_block(index, b).map(Some);
        }
        if index >= *lock(&self.shared.valid_below) {
            return Ok(None);
        }
        let Some(data) = self
            .core
            .inner
            .storage
            .block(&self.core.inner.id, index)
            .await?
        else {
            return Ok(None);
        };
        // Re-check: a truncation may have raced the read.
        if index >= *lock(&self.shared.valid_below) {
            return lock(&self.shared.preserved)
                .get(&index)
                .cloned()
                .map(|b| self.core.open_block(index, b))
                .transpose();
        }
        self.core.open_block(index, data).map(Some)
    }
}
