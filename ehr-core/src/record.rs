//! The public record API: create, open or join a record, write resources,
//! read them back, search, summarise, import and export FHIR Bundles, and
//! replicate with other peers.
//!
//! A record is an [`Autobase`]: every writer (the patient's devices and the
//! providers the patient granted) appends [`Op`]s to its own input core, the
//! linearizer orders them, and [`apply_node`] turns them into the view (a
//! hyperbee named `record`). Before appending, a write is checked by running
//! the same `apply` against the current view through a write overlay: if the
//! record's rules refuse it, the caller gets the typed refusal and nothing
//! is appended. A write can still be refused later, in linear order, when a
//! concurrent change by another writer (say, a revocation) is ordered before
//! it; it is then recorded as rejected on every peer.

use crate::apply::{apply_node_parsed, Kv, KvError, Membership, Node, Outcome};
use crate::audit::AuditAction;
use crate::consent::Grant;
use crate::error::Error;
use crate::fhir::{
    self, format_instant, plan_import, valid_id, FhirError, PlannedEntry, Resource, ResourceInfo,
    ResourceRef,
};
use crate::op::{Expect, ImportOp, Op, OpBody, WriterKey};
use crate::view::{self, decode, GenesisRec, HeadRec, Index, RejectedRec, VersionRec};
use autobase_rs::{Apply, ApplyError, Autobase, Host, View};
use futures::lock::Mutex as AsyncMutex;
use hyperbee_rs::{Range, Snapshot};
use hypercore_rs::{Corestore, Entropy, OsEntropy, Storage};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Wall-clock time for op timestamps, injected so tests control it.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock at `ms`.
    pub fn new(ms: u64) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicU64::new(ms))
    }

    /// Sets the time.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The name of the record's view inside its autobase.
pub const VIEW_NAME: &str = "record";

/// The record's `apply`, plugged into autobase: every node goes through
/// [`apply_node`](crate::apply::apply_node); refusals are recorded in the
/// view, never block errors.
struct RecordApply {
    prepared: PreparedSlot,
}

/// The op this device is about to append, with its resources as this
/// device already parsed them, so `apply` does not parse them again. It is
/// used only for a node whose value is byte-for-byte this op (parsing is a
/// pure function of the bytes, so the decision is the same either way).
struct Prepared {
    op: Vec<u8>,
    infos: Vec<Option<ResourceInfo>>,
}

impl RecordApply {
    /// The parsed resources of `value` if it is the prepared op.
    fn parsed_for(&self, value: &[u8]) -> Vec<Option<ResourceInfo>> {
        let mut p = self
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match p.take() {
            Some(prep) if prep.op == value => prep.infos,
            other => {
                *p = other;
                Vec::new()
            }
        }
    }
}

/// A [`Kv`] over autobase's pending batch that keeps the original storage
/// error, so a local I/O failure is reported to autobase as one (retried),
/// not as a deterministic refusal.
struct BatchKv<'a> {
    batch: &'a mut hyperbee_rs::Batch,
    failure: Option<hyperbee_rs::Error>,
}

impl BatchKv<'_> {
    fn fail(&mut self, e: hyperbee_rs::Error) -> KvError {
        let msg = e.to_string();
        self.failure = Some(e);
        KvError::Storage(msg)
    }
}

#[async_trait::async_trait]
impl Kv for BatchKv<'_> {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.batch.get(key).await {
            Ok(e) => Ok(e.map(|e| e.value)),
            Err(e) => Err(self.fail(e)),
        }
    }
    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        match self.batch.put(key, value).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }
    async fn del(&mut self, key: &[u8]) -> Result<(), KvError> {
        match self.batch.del(key).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// Membership changes go to autobase's host.
struct HostMembership<'a>(&'a mut Host);

impl Membership for HostMembership<'_> {
    fn add_writer(&mut self, key: WriterKey, indexer: bool) -> Result<(), String> {
        self.0.add_writer(key, indexer).map_err(|e| e.to_string())
    }
    fn remove_writer(&mut self, key: WriterKey) -> Result<(), String> {
        self.0.remove_writer(key).map_err(|e| e.to_string())
    }
}

/// The pre-append check's membership: it must not change anything.
struct DryMembership;

impl Membership for DryMembership {
    fn add_writer(&mut self, _: WriterKey, _: bool) -> Result<(), String> {
        Ok(())
    }
    fn remove_writer(&mut self, _: WriterKey) -> Result<(), String> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl Apply for RecordApply {
    async fn apply(
        &self,
        nodes: &[autobase_rs::Node],
        view: &mut View,
        host: &mut Host,
    ) -> Result<(), ApplyError> {
        let batch = view.bee(VIEW_NAME)?;
        let mut kv = BatchKv {
            batch,
            failure: None,
        };
        let mut members = HostMembership(host);
        for n in nodes {
            let node = Node {
                writer: n.writer,
                seq: n.seq,
                index: n.index,
                value: &n.value,
            };
            let parsed = self.parsed_for(&n.value);
            if let Err(e) = apply_node_parsed(&mut kv, &mut members, node, parsed).await {
                return Err(match kv.failure.take() {
                    Some(b) => ApplyError::Bee(b),
                    // A corrupt view entry: local, not the node's fault,
                    // but autobase has no other non-deterministic variant.
                    None => ApplyError::Rejected(e.to_string()),
                });
            }
        }
        Ok(())
    }
}

/// Reads from a snapshot, writes into memory: `apply` as a dry run.
struct Overlay<'a> {
    snap: &'a Snapshot,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

#[async_trait::async_trait]
impl Kv for Overlay<'_> {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        self.snap
            .get(key)
            .await
            .map(|e| e.map(|e| e.value))
            .map_err(|e| KvError::Storage(e.to_string()))
    }
    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }
    async fn del(&mut self, key: &[u8]) -> Result<(), KvError> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }
}

/// How to create, open or join a record.
pub struct RecordBuilder {
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    seed: Option<[u8; 32]>,
}

impl std::fmt::Debug for RecordBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBuilder").finish_non_exhaustive()
    }
}

impl RecordBuilder {
    /// The clock stamped on writes (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The randomness for the store's seed and for new resource ids
    /// (default: the operating system's).
    pub fn entropy(mut self, entropy: Arc<dyn Entropy>) -> Self {
        self.entropy = entropy;
        self
    }

    /// The store's primary seed, from which every key of this device is
    /// derived (writer, network and device identities), held by the
    /// application (e.g. in a [`crate::keystore`] file locked by a
    /// passphrase) instead of in the storage in clear. Every later open
    /// must pass the same seed.
    pub fn seed(mut self, seed: [u8; 32]) -> Self {
        self.seed = Some(seed);
        self
    }

    async fn base(
        &self,
        key: Option<[u8; 32]>,
    ) -> Result<(Corestore, Autobase, PreparedSlot), Error> {
        let store = match self.seed {
            Some(seed) => Corestore::with_seed(self.storage.clone(), seed),
            None => Corestore::open_with_entropy(self.storage.clone(), &*self.entropy).await?,
        };
        let prepared = PreparedSlot::default();
        let apply = RecordApply {
            prepared: prepared.clone(),
        };
        let base = Autobase::builder(store.clone(), apply)
            .bootstrap(key)
            .views(&[VIEW_NAME])
            .name("ehr-record")
            .open()
            .await
            .map_err(base_err)?;
        Ok((store, base, prepared))
    }

    /// Creates a record for patient `patient_id` on storage that holds
    /// none; this device is its owner.
    pub async fn create(self, patient_id: &str) -> Result<Record, Error> {
        if !valid_id(patient_id) {
            return Err(FhirError::InvalidId(patient_id.to_owned()).into());
        }
        let (store, base, prepared) = self.base(None).await?;
        let record = Record::assemble(self, store, base, prepared);
        if record.load_genesis().await?.is_some() {
            return Err(Error::Exists);
        }
        let genesis = OpBody::Genesis {
            patient: patient_id.to_owned(),
            peer: Some(record.identity().public_key().to_bytes()),
        };
        record.submit(genesis).await?;
        record
            .load_genesis()
            .await?
            .ok_or_else(|| Error::Storage("genesis not applied".into()))?;
        Ok(record)
    }

    /// Opens the record this device created on this storage.
    pub async fn open(self) -> Result<Record, Error> {
        let (store, base, prepared) = self.base(None).await?;
        let record = Record::assemble(self, store, base, prepared);
        record.load_genesis().await?.ok_or(Error::NoRecord)?;
        Ok(record)
    }

    /// Joins (or reopens) someone else's record by its key: a provider's
    /// or another device's copy. It can read what replication brings, and
    /// write once the owner grants its [`Record::writer_key`].
    pub async fn join(self, record_key: [u8; 32]) -> Result<Record, Error> {
        let (store, base, prepared) = self.base(Some(record_key)).await?;
        let record = Record::assemble(self, store, base, prepared);
        record.load_genesis().await?;
        Ok(record)
    }
}

fn base_err(e: autobase_rs::Error) -> Error {
    match e {
        autobase_rs::Error::NotWritable => Error::Rejected(crate::apply::Rejection::Denied {
            denied: crate::consent::Denied::NoGrant,
            entry: None,
        }),
        other => Error::Storage(other.to_string()),
    }
}

/// The slot [`Record::submit_parsed`] fills and [`RecordApply`] reads.
type PreparedSlot = Arc<std::sync::Mutex<Option<Prepared>>>;

pub(crate) struct Inner {
    pub(crate) store: Corestore,
    /// Network identities the firewall lets in (see `sync`).
    pub(crate) allowed: Arc<std::sync::RwLock<crate::sync::Allowed>>,
    /// This device's attachments drive, opened on first use.
    pub(crate) drive: AsyncMutex<Option<hyperdrive_rs::Drive>>,
    base: Autobase,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) entropy: Arc<dyn Entropy>,
    write: AsyncMutex<()>,
    genesis: std::sync::Mutex<Option<GenesisRec>>,
    /// Shared with this record's [`RecordApply`].
    prepared: PreparedSlot,
}

/// A patient's health record.
///
/// Cheap to clone; clones share everything. Writes are serialised.
#[derive(Clone)]
pub struct Record {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("writer", &view::hex(&self.writer_key()))
            .finish_non_exhaustive()
    }
}

/// Where a write landed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Written {
    /// The resource.
    pub target: ResourceRef,
    /// Its new version (1 for a create).
    pub version: u64,
}

/// One version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Version {
    /// The resource.
    pub target: ResourceRef,
    /// The version number (from 1).
    pub version: u64,
    /// The writer that wrote it.
    pub author: WriterKey,
    /// The time the writer claimed (ms since the epoch).
    pub time: u64,
    /// The JSON bytes exactly as written; `None` for a delete.
    pub resource: Option<Vec<u8>>,
}

/// The latest state of a resource, including conflict markers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Head {
    /// The latest version.
    pub version: u64,
    /// Whether the latest version is a delete.
    pub deleted: bool,
    /// Versions overwritten by a writer that had not seen them: a conflict
    /// to look at, until someone writes a version based on the latest one.
    pub conflicts: Vec<u64>,
    /// Who wrote the latest version.
    pub author: WriterKey,
    /// When (claimed, ms since the epoch).
    pub time: u64,
}

/// A write the record refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RejectedWrite {
    /// The writer.
    pub writer: WriterKey,
    /// The op's position in the writer's log.
    pub seq: u64,
    /// The op's claimed time.
    pub time: u64,
    /// Why.
    pub rejection: crate::apply::Rejection,
}

/// A search: one resource type plus any of date range, code, category,
/// author and encounter. Results come newest (clinical date) first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Query {
    /// The resource type.
    pub resource_type: String,
    /// Clinical date at or after this (ms since the epoch).
    pub from: Option<i64>,
    /// Clinical date before this (ms since the epoch).
    pub to: Option<i64>,
    /// A `system|code` token (`|code` for no system); a bare `code`
    /// matches any system but cannot use the code index (a scan).
    pub code: Option<String>,
    /// A category token, read like `code`.
    pub category: Option<String>,
    /// The writer that wrote the latest version.
    pub author: Option<WriterKey>,
    /// An Encounter id.
    pub encounter: Option<String>,
    /// Page size (default 20, at most 1000).
    pub limit: usize,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

/// An opaque position between search pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(Vec<u8>);

/// One page of search results.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page {
    /// The matches, newest first.
    pub entries: Vec<Version>,
    /// The cursor for the next page, if there may be more.
    pub next: Option<Cursor>,
}

impl Query {
    /// A query for every resource of a type.
    pub fn new(resource_type: &str) -> Query {
        Query {
            resource_type: resource_type.to_owned(),
            from: None,
            to: None,
            code: None,
            category: None,
            author: None,
            encounter: None,
            limit: 20,
            cursor: None,
        }
    }
    /// Clinical dates in `[from, to)` (ms since the epoch).
    pub fn dates(mut self, from: Option<i64>, to: Option<i64>) -> Query {
        self.from = from;
        self.to = to;
        self
    }
    /// With this `system|code`.
    pub fn code(mut self, token: &str) -> Query {
        self.code = Some(token.to_owned());
        self
    }
    /// With this category `system|code`.
    pub fn category(mut self, token: &str) -> Query {
        self.category = Some(token.to_owned());
        self
    }
    /// Written by this writer.
    pub fn author(mut self, writer: WriterKey) -> Query {
        self.author = Some(writer);
        self
    }
    /// In this encounter.
    pub fn encounter(mut self, id: &str) -> Query {
        self.encounter = Some(id.to_owned());
        self
    }
    /// The page size.
    pub fn limit(mut self, n: usize) -> Query {
        self.limit = n;
        self
    }
    /// Continues after a previous page.
    pub fn after(mut self, cursor: Cursor) -> Query {
        self.cursor = Some(cursor);
        self
    }
}

/// The patient summary: live allergies, medications, conditions and
/// immunizations, as stored JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Summary {
    /// AllergyIntolerance resources.
    pub allergies: Vec<Vec<u8>>,
    /// MedicationStatement and MedicationRequest resources.
    pub medications: Vec<Vec<u8>>,
    /// Condition resources.
    pub conditions: Vec<Vec<u8>>,
    /// Immunization resources.
    pub immunizations: Vec<Vec<u8>>,
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Imported {
    /// The Bundle's type.
    pub bundle_type: fhir::BundleType,
    /// The resources written (puts), in entry order.
    pub written: Vec<ResourceRef>,
    /// The resources deleted, in entry order.
    pub deleted: Vec<ResourceRef>,
}

fn corrupt(what: &[u8]) -> Error {
    Error::Storage(format!(
        "corrupt view entry {}",
        String::from_utf8_lossy(what)
    ))
}

impl Record {
    /// A builder on fresh in-memory storage (tests, simulations).
    pub fn in_memory() -> RecordBuilder {
        Record::builder(Arc::new(hypercore_rs::MemoryStorage::new()))
    }

    /// A builder on on-disk storage in `dir` (created if missing; one
    /// process at a time).
    pub fn on_disk(dir: impl AsRef<std::path::Path>) -> Result<RecordBuilder, Error> {
        let storage = hypercore_rs::DiskStorage::open(dir.as_ref())
            .map_err(|e| Error::Storage(e.to_string()))?;
        Ok(Record::builder(Arc::new(storage)))
    }

    /// How to create or open a record on any [`Storage`] (hypercore-rs's
    /// storage trait: in-memory, on-disk, or the application's own).
    pub fn builder(storage: Arc<dyn Storage>) -> RecordBuilder {
        RecordBuilder {
            storage,
            clock: Arc::new(SystemClock),
            entropy: Arc::new(OsEntropy),
            seed: None,
        }
    }

    fn assemble(
        b: RecordBuilder,
        store: Corestore,
        base: Autobase,
        prepared: PreparedSlot,
    ) -> Record {
        Record {
            inner: Arc::new(Inner {
                store,
                allowed: Arc::default(),
                drive: AsyncMutex::new(None),
                base,
                clock: b.clock,
                entropy: b.entropy,
                write: AsyncMutex::new(()),
                genesis: std::sync::Mutex::new(None),
                prepared,
            }),
        }
    }

    /// Reads the genesis from the view into the cache (once it is there).
    async fn load_genesis(&self) -> Result<Option<GenesisRec>, Error> {
        if let Some(g) = self.genesis() {
            return Ok(Some(g));
        }
        let g = self
            .read_rec::<GenesisRec>(&self.snapshot().await?, view::GENESIS)
            .await?;
        if let Some(g) = &g {
            *self
                .inner
                .genesis
                .lock()
                .map_err(|_| Error::Storage("poisoned".into()))? = Some(g.clone());
        }
        Ok(g)
    }

    pub(crate) fn genesis(&self) -> Option<GenesisRec> {
        self.inner.genesis.lock().ok().and_then(|g| g.clone())
    }

    /// The record's patient id (empty until a joined record has synced).
    pub fn patient_id(&self) -> String {
        self.genesis().map(|g| g.patient).unwrap_or_default()
    }

    /// The record's key: what the patient shares with the devices and
    /// providers that join it.
    pub fn key(&self) -> [u8; 32] {
        self.inner.base.key()
    }

    /// The record's discovery key: the only thing announced to find peers.
    pub fn discovery_key(&self) -> [u8; 32] {
        self.inner.base.discovery_key()
    }

    /// This device's writer key (what the owner grants).
    pub fn writer_key(&self) -> WriterKey {
        self.inner.base.local_writer_key()
    }

    /// The record's owner (the device that created it).
    pub fn owner(&self) -> Option<WriterKey> {
        self.genesis().map(|g| g.owner)
    }

    /// The underlying autobase. Appending to it directly skips this
    /// device's pre-append check; `apply` still enforces every rule.
    pub fn base(&self) -> &Autobase {
        &self.inner.base
    }

    /// A new resource id: 32 hex characters, the clock's milliseconds
    /// first, then 80 random bits. Ids made together sort together, so the
    /// resources of one import land in few B-tree leaves.
    fn new_id(&self) -> Result<String, Error> {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&self.inner.clock.now_ms().to_be_bytes()[2..]);
        self.inner.entropy.fill(&mut b[6..])?;
        Ok(view::hex(&b))
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, Option<Prepared>> {
        self.inner
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) async fn snapshot(&self) -> Result<Snapshot, Error> {
        self.inner.base.view(VIEW_NAME).await.map_err(base_err)
    }

    /// Pulls in what replication brought and applies it.
    pub async fn update(&self) -> Result<(), Error> {
        self.inner.base.update().await.map_err(base_err)?;
        self.load_genesis().await?;
        self.refresh_firewall().await
    }

    /// Replicates the record over a framed duplex (a swarm channel, or an
    /// in-memory pipe in tests) until it closes.
    pub async fn replicate<IO>(&self, io: IO, initiator: bool) -> Result<(), Error>
    where
        IO: futures::Stream<Item = std::result::Result<Vec<u8>, std::io::Error>>
            + futures::Sink<Vec<u8>, Error = std::io::Error>
            + Send
            + 'static,
    {
        self.inner
            .base
            .replicate(io, initiator)
            .await
            .map_err(base_err)
    }

    /// Whether this device may write (it holds an unrevoked grant).
    pub async fn writable(&self) -> bool {
        self.inner.base.writable().await
    }

    /// Applies `body` as this device's next op: refused ops append nothing.
    pub(crate) async fn submit(&self, body: OpBody) -> Result<(), Error> {
        self.submit_parsed(body, Vec::new()).await
    }

    /// [`Record::submit`] with the op's resources already parsed (`infos[i]`
    /// for the i-th resource, from `Resource::parse` of exactly its bytes).
    async fn submit_parsed(
        &self,
        body: OpBody,
        infos: Vec<Option<ResourceInfo>>,
    ) -> Result<(), Error> {
        let op = Op::new(self.inner.clock.now_ms(), body);
        let bytes = op.encode();
        if bytes.len() > hypercore_rs::MAX_BLOCK_SIZE - 1024 {
            return Err(FhirError::TooLarge {
                size: bytes.len(),
                max: hypercore_rs::MAX_BLOCK_SIZE - 1024,
            }
            .into());
        }
        let _w = self.inner.write.lock().await;
        let me = self.writer_key();
        // The position this block will take in our input core.
        let seq = self
            .inner
            .base
            .heads()
            .await
            .iter()
            .find(|(k, _)| *k == me)
            .map_or(0, |(_, l)| *l);
        let snap = self.snapshot().await?;
        if !self.trusted_write(&snap, &op.body, op.time).await? {
            let mut dry = Overlay {
                snap: &snap,
                writes: BTreeMap::new(),
            };
            let node = Node {
                writer: me,
                seq,
                index: 0,
                value: &bytes,
            };
            let parsed = infos.clone();
            if let Outcome::Rejected(r) =
                apply_node_parsed(&mut dry, &mut DryMembership, node, parsed).await?
            {
                return Err(r.into());
            }
        }
        if !infos.is_empty() {
            *self.prepared() = Some(Prepared {
                op: bytes.clone(),
                infos,
            });
        }
        let appended = self.inner.base.append(bytes).await.map_err(base_err);
        // Applied by now, or it never will be with these infos.
        *self.prepared() = None;
        appended?;
        self.inner.base.flush().await.map_err(base_err)?;
        if matches!(
            op.body,
            OpBody::Grant { .. }
                | OpBody::ChangeGrant { .. }
                | OpBody::Revoke { .. }
                | OpBody::InviteGrant { .. }
        ) {
            self.refresh_firewall().await?;
        }
        // Refused in linear order after all (a concurrent change won)?
        let snap = self.snapshot().await?;
        if let Some(rec) = self
            .read_rec::<RejectedRec>(&snap, &view::rejected_key(&me, seq, 0))
            .await?
        {
            return Err(rec.rejection.into());
        }
        Ok(())
    }

    /// Whether `apply` cannot refuse this op, so the dry run can be
    /// skipped: resource writes (no deletes) by an owner device whose grant
    /// is live. The bytes were already checked the way `apply` checks them
    /// (parse, id, patient, duplicates); the check after appending still
    /// reports a refusal if one happens.
    async fn trusted_write(&self, snap: &Snapshot, body: &OpBody, now: u64) -> Result<bool, Error> {
        let simple = match body {
            OpBody::Put { .. } => true,
            OpBody::Import { entries } => entries.iter().all(|e| matches!(e, ImportOp::Put { .. })),
            _ => false,
        };
        if !simple {
            return Ok(false);
        }
        let me: Option<view::WriterRec> = self
            .read_rec(snap, &view::writer_key(&self.writer_key()))
            .await?;
        Ok(me.is_some_and(|w| {
            w.grant.role == crate::consent::Role::Owner
                && !w.revoked
                && w.grant.expires.is_none_or(|e| now < e)
        }))
    }

    pub(crate) async fn read_rec<T: for<'de> serde::Deserialize<'de>>(
        &self,
        snap: &Snapshot,
        key: &[u8],
    ) -> Result<Option<T>, Error> {
        match snap.get(key).await? {
            None => Ok(None),
            Some(e) => decode(&e.value).map(Some).ok_or_else(|| corrupt(key)),
        }
    }

    async fn read_head(
        &self,
        snap: &Snapshot,
        ty: &str,
        id: &str,
    ) -> Result<Option<HeadRec>, Error> {
        self.read_rec(snap, &view::head_key(ty, id)).await
    }

    async fn read_version(
        &self,
        snap: &Snapshot,
        ty: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<Version>, Error> {
        match self.read_head(snap, ty, id).await? {
            None => Ok(None),
            Some(h) if h.version == version => Ok(Some(version_of(ty, id, version, h.current))),
            Some(h) if version > h.version => Ok(None),
            Some(_) => {
                let key = view::version_key(ty, id, version);
                let rec = self.read_rec::<VersionRec>(snap, &key).await?;
                Ok(rec.map(|rec| version_of(ty, id, version, rec)))
            }
        }
    }

    /// Creates or replaces a resource. Without an `id` it gets a new one.
    /// The write is based on the version this device sees now; a version
    /// written meanwhile by another writer makes it a conflict.
    pub async fn put(&self, json: impl Into<Vec<u8>>) -> Result<Written, Error> {
        let mut res = Resource::parse(json)?;
        if res.id().is_none() {
            let id = if res.resource_type() == "Patient" {
                self.patient_id()
            } else {
                self.new_id()?
            };
            res = res.with_id(&id)?;
        }
        match self.load_genesis().await? {
            Some(g) => res.check_patient(&g.patient)?,
            None => return Err(crate::apply::Rejection::NoGenesis.into()),
        }
        let id = res.id().unwrap_or_default().to_owned();
        let ty = res.resource_type().to_owned();
        let head = self.read_head(&self.snapshot().await?, &ty, &id).await?;
        let expect = match head {
            Some(h) if !h.deleted() => Expect::Version(h.version),
            _ => Expect::Absent,
        };
        self.put_expecting(res, expect).await
    }

    /// Writes a resource stating which version the writer based it on.
    pub async fn put_expecting(
        &self,
        resource: Resource,
        expect: Expect,
    ) -> Result<Written, Error> {
        let target = ResourceRef {
            resource_type: resource.resource_type().to_owned(),
            id: resource.id().ok_or(FhirError::MissingId)?.to_owned(),
        };
        // The same check `apply` makes, so an owner's write (appended
        // without a dry run) can never be refused after it is logged.
        match self.load_genesis().await? {
            Some(g) => resource.check_patient(&g.patient)?,
            None => return Err(crate::apply::Rejection::NoGenesis.into()),
        }
        let (resource, info) = resource.into_parts();
        self.submit_parsed(OpBody::Put { resource, expect }, vec![Some(info)])
            .await?;
        self.written(target).await
    }

    async fn written(&self, target: ResourceRef) -> Result<Written, Error> {
        let head = self
            .read_head(&self.snapshot().await?, &target.resource_type, &target.id)
            .await?
            .ok_or_else(|| Error::NotFound(target.to_string()))?;
        Ok(Written {
            target,
            version: head.version,
        })
    }

    /// Deletes a resource (a tombstone version; history is kept).
    pub async fn delete(&self, resource_type: &str, id: &str) -> Result<Written, Error> {
        let target = ResourceRef {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
        };
        let head = self
            .read_head(&self.snapshot().await?, resource_type, id)
            .await?;
        let expect = match head {
            Some(h) if !h.deleted() => Expect::Version(h.version),
            _ => return Err(Error::NotFound(target.to_string())),
        };
        self.submit(OpBody::Delete {
            target: target.clone(),
            expect,
        })
        .await?;
        self.written(target).await
    }

    /// The latest live version of a resource (`None` if absent or deleted).
    pub async fn get(&self, resource_type: &str, id: &str) -> Result<Option<Version>, Error> {
        Ok(self.read_latest(resource_type, id).await?.map(|l| Version {
            target: ResourceRef {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            },
            version: l.version,
            author: l.author,
            time: l.time,
            resource: Some(crate::scope_crypto::unpack_shell(l.body)),
        }))
    }

    /// The latest live version's number, author, time and stored body,
    /// decoding only those: the body is cut out of the stored value's own
    /// buffer (it is the encoding's last field), not copied.
    async fn read_latest(&self, ty: &str, id: &str) -> Result<Option<Latest>, Error> {
        let key = view::head_key(ty, id);
        let Some(entry) = self.snapshot().await?.get(&key).await? else {
            return Ok(None);
        };
        let mut value = entry.value;
        let (version, author, time, start) = {
            let h: view::HeadRecRef<'_> = decode(&value).ok_or_else(|| corrupt(&key))?;
            if h.current.deleted {
                return Ok(None);
            }
            let start = value
                .len()
                .checked_sub(h.current.body.len())
                .ok_or_else(|| corrupt(&key))?;
            (h.version, h.current.author, h.current.time, start)
        };
        value.drain(..start);
        Ok(Some(Latest {
            version,
            author,
            time,
            body: value,
        }))
    }

    /// [`Record::get`]'s reference and body as the view keeps it: a sealed
    /// shell stays packed (see `scope_crypto::pack_shell`), for the
    /// secure read path, which opens that form without a base64 round trip.
    pub(crate) async fn get_stored(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<(ResourceRef, Vec<u8>)>, Error> {
        Ok(self.read_latest(resource_type, id).await?.map(|l| {
            let target = ResourceRef {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            };
            (target, l.body)
        }))
    }

    /// The latest state of a resource, with conflict markers.
    pub async fn head(&self, resource_type: &str, id: &str) -> Result<Option<Head>, Error> {
        let h = self
            .read_head(&self.snapshot().await?, resource_type, id)
            .await?;
        Ok(h.map(|h| Head {
            version: h.version,
            deleted: h.current.deleted,
            conflicts: h.conflicts,
            author: h.current.author,
            time: h.current.time,
        }))
    }

    /// One version of a resource.
    pub async fn version(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<Version>, Error> {
        self.read_version(&self.snapshot().await?, resource_type, id, version)
            .await
    }

    /// Every version of a resource, newest first (deletes included).
    pub async fn history(&self, resource_type: &str, id: &str) -> Result<Vec<Version>, Error> {
        let snap = self.snapshot().await?;
        let Some(head) = self.read_head(&snap, resource_type, id).await? else {
            return Ok(Vec::new());
        };
        let prefix = view::version_prefix(resource_type, id);
        let entries = snap
            .range(Range::all().prefix(&prefix).reverse())
            .collect()
            .await?;
        let mut out = Vec::with_capacity(entries.len() + 1);
        out.push(version_of(resource_type, id, head.version, head.current));
        for e in entries {
            let v = e
                .key
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(&e.key))?;
            let rec: VersionRec = decode(&e.value).ok_or_else(|| corrupt(&e.key))?;
            out.push(version_of(resource_type, id, v, rec));
        }
        Ok(out)
    }

    /// Searches one resource type; see [`Query`].
    pub async fn search(&self, q: &Query) -> Result<Page, Error> {
        if !fhir::is_resource_type(&q.resource_type) {
            return Err(Error::Query(format!(
                "unknown resource type {:?}",
                q.resource_type
            )));
        }
        let limit = match q.limit {
            0 => 20,
            n => n.min(1000),
        };
        let ty = q.resource_type.as_str();
        let author = q.author.map(|a| view::hex(&a));
        // The most selective index drives the scan; the others filter. A
        // bare code (no `|`) matches any system, so it can only filter.
        let code = q.code.as_deref().filter(|t| t.contains('|'));
        let category = q.category.as_deref().filter(|t| t.contains('|'));
        let (index, value) = if let Some(c) = code {
            (Index::Code, Some(c))
        } else if let Some(c) = category {
            (Index::Category, Some(c))
        } else if let Some(e) = &q.encounter {
            (Index::Encounter, Some(e.as_str()))
        } else if let Some(a) = &author {
            (Index::Author, Some(a.as_str()))
        } else {
            (Index::Date, None)
        };
        let prefix = view::index_prefix(index, ty, value);
        let mut range = Range::all().prefix(&prefix).reverse();
        if let Some(from) = q.from {
            let mut k = prefix.clone();
            k.extend_from_slice(&fhir::date_key(Some(from)));
            range = range.gte(k);
        }
        if let Some(to) = q.to {
            let mut k = prefix.clone();
            k.extend_from_slice(&fhir::date_key(Some(to)));
            range = range.lt(k);
        }
        if let Some(Cursor(c)) = &q.cursor {
            if !c.starts_with(&prefix) {
                return Err(Error::Query("cursor from another query".into()));
            }
            range = range.lt(c.clone());
        }
        let needs_filter = [
            q.code.is_some() && index != Index::Code,
            q.category.is_some() && index != Index::Category,
            q.encounter.is_some() && index != Index::Encounter,
            author.is_some() && index != Index::Author,
        ]
        .contains(&true);
        let snap = self.snapshot().await?;
        let mut it = snap.range(range);
        let mut entries = Vec::new();
        let mut last = None;
        while let Some(e) = it.next().await? {
            let id = view::index_id(prefix.len(), &e.key)
                .ok_or_else(|| corrupt(&e.key))?
                .to_owned();
            last = Some(e.key);
            let h = self
                .read_head(&snap, ty, &id)
                .await?
                .ok_or_else(|| corrupt(b"index entry without a head"))?;
            if needs_filter {
                let f = &h.fields;
                if q.code.as_ref().is_some_and(|c| !token_in(c, &f.codes))
                    || q.category
                        .as_ref()
                        .is_some_and(|c| !token_in(c, &f.categories))
                    || q.encounter
                        .as_ref()
                        .is_some_and(|e| f.encounter.as_ref() != Some(e))
                    || q.author.is_some_and(|a| h.current.author != a)
                {
                    continue;
                }
            }
            let v = version_of(ty, &id, h.version, h.current);
            entries.push(v);
            if entries.len() == limit {
                break;
            }
        }
        let next = if entries.len() == limit {
            last.map(Cursor)
        } else {
            None
        };
        Ok(Page { entries, next })
    }

    async fn live_of_type(&self, snap: &Snapshot, ty: &str) -> Result<Vec<Version>, Error> {
        let prefix = format!("r/{ty}/").into_bytes();
        let heads = snap.range(Range::all().prefix(&prefix)).collect().await?;
        let mut out = Vec::new();
        for e in heads {
            let h: HeadRec = decode(&e.value).ok_or_else(|| corrupt(&e.key))?;
            if h.deleted() {
                continue;
            }
            let id = std::str::from_utf8(&e.key[prefix.len()..]).map_err(|_| corrupt(&e.key))?;
            out.push(version_of(ty, id, h.version, h.current));
        }
        Ok(out)
    }

    /// The patient summary.
    pub async fn summary(&self) -> Result<Summary, Error> {
        let snap = self.snapshot().await?;
        let bodies = |v: Vec<Version>| v.into_iter().filter_map(|v| v.resource).collect::<Vec<_>>();
        let mut s = Summary {
            allergies: bodies(self.live_of_type(&snap, "AllergyIntolerance").await?),
            medications: bodies(self.live_of_type(&snap, "MedicationStatement").await?),
            conditions: bodies(self.live_of_type(&snap, "Condition").await?),
            immunizations: bodies(self.live_of_type(&snap, "Immunization").await?),
        };
        s.medications
            .extend(bodies(self.live_of_type(&snap, "MedicationRequest").await?));
        Ok(s)
    }

    /// Every live resource, the Patient first, then by type and id.
    pub async fn everything(&self) -> Result<Vec<Version>, Error> {
        let snap = self.snapshot().await?;
        let heads = snap
            .range(Range::all().prefix(view::HEADS))
            .collect()
            .await?;
        let mut out = Vec::with_capacity(heads.len());
        for e in heads {
            let h: HeadRec = decode(&e.value).ok_or_else(|| corrupt(&e.key))?;
            if h.deleted() {
                continue;
            }
            let path =
                std::str::from_utf8(&e.key[view::HEADS.len()..]).map_err(|_| corrupt(&e.key))?;
            let (ty, id) = path.split_once('/').ok_or_else(|| corrupt(&e.key))?;
            out.push(version_of(ty, id, h.version, h.current));
        }
        let patient = self.patient_id();
        out.sort_by_key(|v| !(v.target.resource_type == "Patient" && v.target.id == patient));
        Ok(out)
    }

    /// Everything about the patient as one `searchset` Bundle (the FHIR
    /// `$everything` idea). Resources are embedded as their stored bytes.
    pub async fn export_everything(&self) -> Result<Vec<u8>, Error> {
        let all = self.everything().await?;
        let mut out = format!(
            "{{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"total\":{},\"entry\":[",
            all.len()
        )
        .into_bytes();
        for (i, v) in all.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"fullUrl\":");
            out.extend(crate::json::quote(&v.target.to_string()));
            out.extend_from_slice(b",\"resource\":");
            out.extend_from_slice(v.resource.as_deref().unwrap_or(b"null"));
            out.extend_from_slice(b",\"search\":{\"mode\":\"match\"}}");
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }

    /// A resource's versions as a FHIR `history` Bundle, newest first.
    pub async fn history_bundle(&self, resource_type: &str, id: &str) -> Result<Vec<u8>, Error> {
        let versions = self.history(resource_type, id).await?;
        if versions.is_empty() {
            return Err(Error::NotFound(format!("{resource_type}/{id}")));
        }
        let mut out = format!(
            "{{\"resourceType\":\"Bundle\",\"type\":\"history\",\"total\":{},\"entry\":[",
            versions.len()
        )
        .into_bytes();
        for (i, v) in versions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let url = v.target.to_string();
            out.extend_from_slice(b"{\"fullUrl\":");
            out.extend(crate::json::quote(&url));
            if let Some(r) = &v.resource {
                out.extend_from_slice(b",\"resource\":");
                out.extend_from_slice(r);
            }
            let (method, status) = match (&v.resource, v.version) {
                (None, _) => ("DELETE", "204"),
                (Some(_), 1) => ("POST", "201"),
                (Some(_), _) => ("PUT", "200"),
            };
            let tail = serde_json::json!({
                "request": {"method": method, "url": url},
                "response": {
                    "status": status,
                    "etag": format!("W/\"{}\"", v.version),
                    "lastUpdated": format_instant(v.time),
                },
            })
            .to_string();
            out.push(b',');
            // `tail` is an object: splice its members into this entry.
            out.extend_from_slice(tail.as_bytes().get(1..).unwrap_or(b"}"));
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }

    /// Imports a Bundle (transaction, batch, collection, document, or a
    /// searchset such as [`Record::export_everything`] makes) atomically:
    /// every entry is written, or none and a typed error names the entry.
    pub async fn import_bundle(&self, json: &[u8]) -> Result<Imported, Error> {
        let patient = match self.load_genesis().await? {
            Some(g) => g.patient,
            None => return Err(crate::apply::Rejection::NoGenesis.into()),
        };
        let mut id_err = None;
        let mut next_id = || match self.new_id() {
            Ok(id) => id,
            Err(e) => {
                id_err = Some(e);
                "0".to_owned()
            }
        };
        let (bundle_type, plan) = plan_import(json, &patient, &mut next_id)?;
        if let Some(e) = id_err {
            return Err(e);
        }
        let mut written = Vec::new();
        let mut deleted = Vec::new();
        let mut infos = Vec::with_capacity(plan.len());
        let entries = plan
            .into_iter()
            .map(|p| match p {
                PlannedEntry::Put(r) => {
                    written.push(ResourceRef {
                        resource_type: r.resource_type().to_owned(),
                        id: r.id().unwrap_or_default().to_owned(),
                    });
                    let (resource, info) = r.into_parts();
                    infos.push(Some(info));
                    ImportOp::Put { resource }
                }
                PlannedEntry::Delete(target) => {
                    deleted.push(target.clone());
                    infos.push(None);
                    ImportOp::Delete { target }
                }
            })
            .collect();
        self.submit_parsed(OpBody::Import { entries }, infos)
            .await?;
        Ok(Imported {
            bundle_type,
            written,
            deleted,
        })
    }

    /// Grants `writer` (owners only), and writes an AuditEvent for it.
    pub async fn grant(&self, writer: WriterKey, grant: Grant) -> Result<(), Error> {
        let detail = crate::audit::describe_grant(&grant);
        self.submit(OpBody::Grant { writer, grant }).await?;
        let what = view::hex(&writer);
        crate::audit::write_audit(self, AuditAction::Grant, true, &what, &detail).await
    }

    /// Replaces `writer`'s grant (owners only), and writes an AuditEvent.
    pub async fn change_grant(&self, writer: WriterKey, grant: Grant) -> Result<(), Error> {
        let detail = crate::audit::describe_grant(&grant);
        self.submit(OpBody::ChangeGrant { writer, grant }).await?;
        let what = view::hex(&writer);
        crate::audit::write_audit(self, AuditAction::ChangeGrant, true, &what, &detail).await
    }

    /// Revokes `writer` (owners only), and writes an AuditEvent.
    /// [`crate::SecureRecord::revoke`] also rotates keys (and audits that).
    pub async fn revoke(&self, writer: WriterKey) -> Result<(), Error> {
        self.revoke_unaudited(writer).await?;
        let what = view::hex(&writer);
        crate::audit::write_audit(self, AuditAction::Revoke, true, &what, "writer revoked").await
    }

    /// [`Record::revoke`] without its AuditEvent (the caller writes one).
    pub(crate) async fn revoke_unaudited(&self, writer: WriterKey) -> Result<(), Error> {
        self.submit(OpBody::Revoke { writer }).await
    }

    /// A writer's current grant and whether it was revoked.
    pub async fn grant_of(&self, writer: &WriterKey) -> Result<Option<(Grant, bool)>, Error> {
        let w: Option<view::WriterRec> = self
            .read_rec(&self.snapshot().await?, &view::writer_key(writer))
            .await?;
        Ok(w.map(|w| (w.grant, w.revoked)))
    }

    /// Every write the record refused, by writer and position.
    pub async fn rejected(&self) -> Result<Vec<RejectedWrite>, Error> {
        self.rejected_under(view::REJECTED.to_vec()).await
    }

    /// The rejected writes of one writer (a prefix scan of its own) in the
    /// indexed (final) part of the view only: the optimistic tail can still
    /// be reordered, and a rejection there undone.
    pub(crate) async fn final_rejected_of(
        &self,
        writer: &WriterKey,
    ) -> Result<Vec<RejectedWrite>, Error> {
        let base = &self.inner.base;
        let version = base
            .view_indexed_version(VIEW_NAME)
            .await
            .map_err(base_err)?;
        let snap = base.checkout(VIEW_NAME, version).await.map_err(base_err)?;
        let mut prefix = view::REJECTED.to_vec();
        prefix.extend_from_slice(writer);
        rejected_in(&snap, &prefix).await
    }

    async fn rejected_under(&self, prefix: Vec<u8>) -> Result<Vec<RejectedWrite>, Error> {
        rejected_in(&self.snapshot().await?, &prefix).await
    }
}

/// The rejected writes under `prefix` (a prefix of `j/`) in `snap`.
async fn rejected_in(snap: &Snapshot, prefix: &[u8]) -> Result<Vec<RejectedWrite>, Error> {
    let entries = snap.range(Range::all().prefix(prefix)).collect().await?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let k = &e.key[view::REJECTED.len()..];
        let writer = k.get(..32).and_then(|w| <[u8; 32]>::try_from(w).ok());
        let seq = k
            .get(32..40)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_be_bytes);
        let rec: Option<RejectedRec> = decode(&e.value);
        match (writer, seq, rec) {
            (Some(writer), Some(seq), Some(rec)) => out.push(RejectedWrite {
                writer,
                seq,
                time: rec.time,
                rejection: rec.rejection,
            }),
            _ => return Err(corrupt(&e.key)),
        }
    }
    Ok(out)
}

impl Record {
    /// The view's version (grows with every applied op).
    pub async fn view_version(&self) -> Result<u64, Error> {
        Ok(self.snapshot().await?.version())
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), Error> {
        self.inner.base.flush().await.map_err(base_err)
    }
}

/// Whether a search token matches one of the stored `system|code` tokens:
/// exactly, or by code alone when the query has no `|`.
fn token_in(query: &str, stored: &[String]) -> bool {
    if query.contains('|') {
        return stored.iter().any(|t| t == query);
    }
    stored
        .iter()
        .any(|t| t.rsplit_once('|').is_some_and(|(_, code)| code == query))
}

/// What [`Record::read_latest`] reads of a resource's head record.
struct Latest {
    version: u64,
    author: WriterKey,
    time: u64,
    /// As stored (a sealed shell packed).
    body: Vec<u8>,
}

fn version_of(ty: &str, id: &str, version: u64, rec: VersionRec) -> Version {
    Version {
        target: ResourceRef {
            resource_type: ty.to_owned(),
            id: id.to_owned(),
        },
        version,
        author: rec.author,
        time: rec.time,
        resource: (!rec.deleted).then(|| crate::scope_crypto::unpack_shell(rec.body)),
    }
}
