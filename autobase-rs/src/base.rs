//! The async driver: reads input cores, feeds the linearizer, runs `apply`
//! into hyperbee views, rolls views back on reorder, commits the indexed
//! prefix and persists the system state with it.
//!
//! It must never let a peer's bytes panic or stall other writers, and never
//! record a system state that points past what the views hold.

use crate::error::{ApplyError, Error};
use crate::linearizer::{HeadRef, Linearizer, NodeId, Order, Presence, WriterCheckpoint, WriterId};
use crate::node::{Block, Body, Node, WireHead, NODE_VERSION};
use futures::lock::Mutex as AsyncMutex;
use futures::Stream;
use hyperbee_rs::{Batch, Bee, Snapshot};
use hypercore_rs::replication::ReplicateOptions;
use hypercore_rs::storage::{Batch as StorageBatch, Op};
use hypercore_rs::{Core, Corestore, Download, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const RECORD_VERSION: u8 = 1;
const NAMESPACE: &str = "autobase-rs";

/// The user's logic: turns ordered nodes into views.
#[async_trait::async_trait]
pub trait Apply: Send + Sync + 'static {
    /// Applies the values of one input block, in linear order (acks and
    /// system nodes are never passed). Writes go through `view`, membership
    /// through `host`. Must be deterministic. An error rejects the whole
    /// block on every peer alike: its view writes and membership changes are
    /// discarded and it is counted in [`Autobase::rejected`].
    async fn apply(
        &self,
        nodes: &[Node],
        view: &mut View,
        host: &mut Host,
    ) -> Result<(), ApplyError>;
}

/// The views as `apply` sees them: one pending hyperbee batch per view.
pub struct View {
    batches: Vec<(String, Batch)>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").finish_non_exhaustive()
    }
}

impl View {
    /// The pending batch of the named view: it sees its own writes.
    pub fn bee(&mut self, name: &str) -> Result<&mut Batch, ApplyError> {
        self.batches
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b)
            .ok_or_else(|| ApplyError::UnknownView(name.to_string()))
    }
}

/// A writer of the base as recorded in the system state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WriterInfo {
    /// The writer's input core key.
    pub key: [u8; 32],
    /// Whether its acks count for finality.
    pub indexer: bool,
    /// Whether it was removed (its later nodes are ignored).
    pub removed: bool,
}

/// Membership as `apply` changes it.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Host {
    writers: Vec<WriterInfo>,
}

impl Host {
    /// Adds (or re-adds, or changes the role of) a writer.
    pub fn add_writer(&mut self, key: [u8; 32], indexer: bool) -> Result<(), ApplyError> {
        let last = self.active_indexers() == 1;
        if let Some(w) = self.writers.iter_mut().find(|w| w.key == key) {
            if w.indexer && !indexer && !w.removed && last {
                return Err(ApplyError::LastIndexer);
            }
            w.indexer = indexer;
            w.removed = false;
        } else {
            self.writers.push(WriterInfo {
                key,
                indexer,
                removed: false,
            });
        }
        Ok(())
    }

    /// Removes a writer; the last indexer cannot be removed.
    pub fn remove_writer(&mut self, key: [u8; 32]) -> Result<(), ApplyError> {
        let last = self.active_indexers() == 1;
        if let Some(w) = self.writers.iter_mut().find(|w| w.key == key && !w.removed) {
            if w.indexer && last {
                return Err(ApplyError::LastIndexer);
            }
            w.removed = true;
        }
        Ok(())
    }

    /// Whether `key` is a current writer.
    pub fn is_writer(&self, key: &[u8; 32]) -> bool {
        self.writers.iter().any(|w| &w.key == key && !w.removed)
    }

    /// Whether `key` is a current indexer.
    pub fn is_indexer(&self, key: &[u8; 32]) -> bool {
        self.writers
            .iter()
            .any(|w| &w.key == key && !w.removed && w.indexer)
    }

    /// Every writer ever added, with its role.
    pub fn writers(&self) -> &[WriterInfo] {
        &self.writers
    }

    fn active_indexers(&self) -> usize {
        self.writers
            .iter()
            .filter(|w| w.indexer && !w.removed)
            .count()
    }

    fn indexer_keys(&self) -> Vec<[u8; 32]> {
        self.writers
            .iter()
            .filter(|w| w.indexer && !w.removed)
            .map(|w| w.key)
            .collect()
    }
}

/// Something that happened to the base.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The linearized view changed.
    Updated {
        /// Full length (indexed + tail), in nodes.
        length: u64,
        /// Indexed length, in nodes.
        indexed_length: u64,
    },
    /// The optimistic tail was reordered from this position on.
    Reordered {
        /// First changed position.
        from: u64,
    },
    /// This peer became a writer.
    Writable,
}

/// What is persisted with every commit of the indexed prefix.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    version: u8,
    committed_count: u64,
    writers: Vec<WriterCheckpoint>,
    host: Host,
    views: Vec<ViewMark>,
    rejected: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ViewMark {
    length: u64,
    hash: [u8; 32],
}

struct Applied {
    node: NodeId,
    views: Arc<Vec<ViewMark>>,
    host: Arc<Host>,
    rejected: u64,
}

struct Input {
    core: Core,
    _download: Option<Download>,
    frozen: bool,
}

struct State {
    lin: Linearizer,
    inputs: HashMap<WriterId, Input>,
    blocks: HashMap<NodeId, Arc<Block>>,
    applied: Vec<Applied>,
    base_host: Arc<Host>,
    base_views: Arc<Vec<ViewMark>>,
    base_rejected: u64,
    bees: Vec<(String, Bee)>,
    local: WriterId,
    was_writable: bool,
}

impl State {
    fn tip_host(&self) -> Arc<Host> {
        self.applied
            .last()
            .map(|a| a.host.clone())
            .unwrap_or_else(|| self.base_host.clone())
    }
    fn tip_views(&self) -> Arc<Vec<ViewMark>> {
        self.applied
            .last()
            .map(|a| a.views.clone())
            .unwrap_or_else(|| self.base_views.clone())
    }
    fn tip_rejected(&self) -> u64 {
        self.applied
            .last()
            .map(|a| a.rejected)
            .unwrap_or(self.base_rejected)
    }
}

struct Inner {
    store: Corestore,
    key: [u8; 32],
    local_key: [u8; 32],
    record_key: Vec<u8>,
    clock: Option<Arc<dyn hypercore_rs::Clock>>,
    apply: Box<dyn Apply>,
    state: AsyncMutex<State>,
    events: Mutex<Vec<futures::channel::mpsc::UnboundedSender<Event>>>,
}

/// Many writers, one deterministic view. Cheap to clone.
#[derive(Clone)]
pub struct Autobase {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Autobase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autobase")
            .field("key", &hex(&self.inner.key))
            .finish_non_exhaustive()
    }
}

/// Options for opening an [`Autobase`].
pub struct AutobaseBuilder {
    store: Corestore,
    apply: Box<dyn Apply>,
    bootstrap: Option<[u8; 32]>,
    views: Vec<String>,
    name: String,
    clock: Option<Arc<dyn hypercore_rs::Clock>>,
}

impl std::fmt::Debug for AutobaseBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutobaseBuilder")
            .field("views", &self.views)
            .finish_non_exhaustive()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl AutobaseBuilder {
    /// `None` (the default) creates a base whose first indexer is this peer
    /// (reopening it when it exists); `Some(key)` opens or joins that base.
    pub fn bootstrap(mut self, key: Option<[u8; 32]>) -> Self {
        self.bootstrap = key;
        self
    }

    /// Named hyperbee views (default `["view"]`).
    pub fn views(mut self, names: &[&str]) -> Self {
        self.views = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The time source for replication timeouts (the linearizer itself
    /// needs no time). Default: hypercore-rs's `ThreadClock`.
    pub fn clock(mut self, clock: Arc<dyn hypercore_rs::Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The name of the base created by `bootstrap(None)` in this store
    /// (default `"default"`): one store can create several bases.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Opens the base: reloads the persisted system state (no history is
    /// replayed), truncates views written after it, and re-applies the
    /// uncommitted tail.
    pub async fn open(self) -> Result<Autobase, Error> {
        let ns = self.store.namespace(NAMESPACE);
        let boot_ns = ns.namespace("bootstrap");
        let boot_key = Manifest::single(boot_ns.key_pair(&self.name).public_key()).key();
        let (key, local_core) = match self.bootstrap {
            None => (boot_key, boot_ns.get(&self.name).await?),
            Some(k) if k == boot_key => (k, boot_ns.get(&self.name).await?),
            Some(k) => (k, ns.namespace(&hex(&k)).get("local").await?),
        };
        let base_ns = ns.namespace(&hex(&key));
        let record_key = format!("autobase-rs/{}/system", hex(&key)).into_bytes();
        let storage = self.store.storage();
        let record: Option<Record> = match storage
            .meta(&record_key)
            .await
            .map_err(hypercore_rs::Error::from)?
        {
            Some(bytes) => {
                let r: Record =
                    postcard::from_bytes(&bytes).map_err(|_| Error::Corrupt("system record"))?;
                if r.version != RECORD_VERSION || r.views.len() != self.views.len() {
                    return Err(Error::Corrupt("system record version or views"));
                }
                Some(r)
            }
            None => None,
        };
        let mut bees = Vec::new();
        let mut marks = Vec::new();
        for (i, name) in self.views.iter().enumerate() {
            let core = base_ns.get(&format!("view/{name}")).await?;
            if let Some(r) = &record {
                let want = r.views[i].length;
                if core.length() > want {
                    core.truncate(want).await?;
                }
            }
            let bee = Bee::open(core.clone()).await?;
            marks.push(ViewMark {
                length: core.length(),
                hash: core.tree_hash(),
            });
            bees.push((name.clone(), bee));
        }
        let (mut lin, host, rejected) = match record {
            Some(r) => (
                Linearizer::from_checkpoint(&r.writers, r.committed_count),
                r.host,
                r.rejected,
            ),
            None => {
                let mut h = Host::default();
                h.writers.push(WriterInfo {
                    key,
                    indexer: true,
                    removed: false,
                });
                (Linearizer::new(), h, 0)
            }
        };
        let local = lin.writer(local_core.key());
        let mut inputs = HashMap::new();
        inputs.insert(
            local,
            Input {
                core: local_core.clone(),
                _download: None,
                frozen: false,
            },
        );
        let inner = Inner {
            store: self.store.clone(),
            key,
            local_key: local_core.key(),
            record_key,
            clock: self.clock,
            apply: self.apply,
            state: AsyncMutex::new(State {
                lin,
                inputs,
                blocks: HashMap::new(),
                applied: Vec::new(),
                base_host: Arc::new(host),
                base_views: Arc::new(marks),
                base_rejected: rejected,
                bees,
                local,
                was_writable: false,
            }),
            events: Mutex::new(Vec::new()),
        };
        let base = Autobase {
            inner: Arc::new(inner),
        };
        {
            let mut st = base.inner.state.lock().await;
            let keys: Vec<[u8; 32]> = st
                .base_host
                .writers
                .iter()
                .map(|w| w.key)
                .chain(std::iter::once(key))
                .chain((0..st.lin.writer_count() as WriterId).filter_map(|i| st.lin.key(i)))
                .collect();
            for k in keys {
                base.input(&mut st, k).await?;
            }
            base.set_indexers(&mut st);
            st.was_writable = st.tip_host().is_writer(&base.inner.local_key);
        }
        base.update().await?;
        Ok(base)
    }
}

impl Autobase {
    /// Options for a base over `store` with the user's `apply`.
    pub fn builder(store: Corestore, apply: impl Apply) -> AutobaseBuilder {
        AutobaseBuilder {
            store,
            apply: Box::new(apply),
            bootstrap: None,
            views: vec!["view".to_string()],
            name: "default".to_string(),
            clock: None,
        }
    }

    /// The base key (the bootstrap writer's input core key).
    pub fn key(&self) -> [u8; 32] {
        self.inner.key
    }

    /// The discovery key of the base.
    pub fn discovery_key(&self) -> [u8; 32] {
        hypercore_rs::discovery_key(&self.inner.key)
    }

    /// The corestore the base keeps its cores in.
    pub fn store(&self) -> &Corestore {
        &self.inner.store
    }

    /// This peer's input core key.
    pub fn local_writer_key(&self) -> [u8; 32] {
        self.inner.local_key
    }

    /// Whether this peer is a writer at the tip of the linearized view.
    pub async fn writable(&self) -> bool {
        let st = self.inner.state.lock().await;
        st.tip_host().is_writer(&self.inner.local_key)
    }

    /// Appends one value.
    pub async fn append(&self, value: Vec<u8>) -> Result<(), Error> {
        self.append_batch(vec![value]).await
    }

    /// Appends values as one block: applied together, atomically.
    pub async fn append_batch(&self, values: Vec<Vec<u8>>) -> Result<(), Error> {
        if values.is_empty() {
            return Err(Error::Empty);
        }
        let mut st = self.inner.state.lock().await;
        if !st.tip_host().is_writer(&self.inner.local_key) {
            return Err(Error::NotWritable);
        }
        // Take in what arrived first: the new node then names fresh heads
        // (acking others' nodes) and the tail stays short.
        self.pull(&mut st).await?;
        let body = Body::Values(values.into_iter().map(serde_bytes::ByteBuf::from).collect());
        self.write_local(&mut st, body).await?;
        self.settle(&mut st).await
    }

    /// Appends an ack (if this peer is a writer): confirms what it has seen.
    pub async fn ack(&self) -> Result<(), Error> {
        let mut st = self.inner.state.lock().await;
        if !st.tip_host().is_writer(&self.inner.local_key) {
            return Err(Error::NotWritable);
        }
        self.write_local(&mut st, Body::Ack).await?;
        self.settle(&mut st).await
    }

    /// Pulls in what the input cores hold, linearizes, applies, commits, and
    /// acks when that helps confirm others' nodes.
    pub async fn update(&self) -> Result<(), Error> {
        let mut st = self.inner.state.lock().await;
        self.pull(&mut st).await?;
        self.settle(&mut st).await
    }

    /// Number of indexed (final) nodes.
    pub async fn indexed_length(&self) -> u64 {
        self.inner.state.lock().await.lin.committed_count()
    }

    /// Number of linearized nodes (indexed + optimistic tail).
    pub async fn length(&self) -> u64 {
        let st = self.inner.state.lock().await;
        st.lin.committed_count() + st.applied.len() as u64
    }

    /// Number of blocks rejected so far in linear order (by `apply`, or
    /// written by non-writers).
    pub async fn rejected(&self) -> u64 {
        self.inner.state.lock().await.tip_rejected()
    }

    /// A read-only snapshot of a view at the tip.
    pub async fn view(&self, name: &str) -> Result<Snapshot, Error> {
        let st = self.inner.state.lock().await;
        st.bees
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.snapshot())
            .ok_or_else(|| Error::UnknownView(name.to_string()))
    }

    /// A read-only snapshot of a view at a past `version` (view core length).
    pub async fn checkout(&self, name: &str, version: u64) -> Result<Snapshot, Error> {
        let bee = {
            let st = self.inner.state.lock().await;
            st.bees
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b.clone())
                .ok_or_else(|| Error::UnknownView(name.to_string()))?
        };
        Ok(bee.checkout(version).await?)
    }

    /// The view's core length at the indexed length.
    pub async fn view_indexed_version(&self, name: &str) -> Result<u64, Error> {
        let st = self.inner.state.lock().await;
        let i = st
            .bees
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::UnknownView(name.to_string()))?;
        Ok(st.base_views[i].length)
    }

    /// The Merkle tree hash of a view at the indexed length: equal on every
    /// peer that indexed the same nodes.
    pub async fn view_hash(&self, name: &str) -> Result<[u8; 32], Error> {
        let st = self.inner.state.lock().await;
        let i = st
            .bees
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::UnknownView(name.to_string()))?;
        Ok(st.base_views[i].hash)
    }

    /// The view's tree hash at the tip (indexed + tail).
    pub async fn view_tip_hash(&self, name: &str) -> Result<[u8; 32], Error> {
        let st = self.inner.state.lock().await;
        let i = st
            .bees
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::UnknownView(name.to_string()))?;
        Ok(st.tip_views()[i].hash)
    }

    /// The writers at the tip.
    pub async fn writers(&self) -> Vec<WriterInfo> {
        self.inner.state.lock().await.tip_host().writers.clone()
    }

    /// The heads: every known writer's key and known log length, by key.
    pub async fn heads(&self) -> Vec<([u8; 32], u64)> {
        let st = self.inner.state.lock().await;
        let mut v: Vec<([u8; 32], u64)> = (0..st.lin.writer_count() as WriterId)
            .filter_map(|i| Some((st.lin.key(i)?, st.lin.log_len(i))))
            .filter(|(_, l)| *l > 0)
            .collect();
        v.sort();
        v
    }

    /// A stream of events.
    pub fn events(&self) -> impl Stream<Item = Event> + Send + 'static {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.inner
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// Replicates every input core (and whatever else the store holds that
    /// the remote asks for) over a framed duplex.
    pub async fn replicate<IO>(&self, io: IO, initiator: bool) -> Result<(), Error>
    where
        IO: futures::Stream<Item = std::result::Result<Vec<u8>, std::io::Error>>
            + futures::Sink<Vec<u8>, Error = std::io::Error>
            + Send
            + 'static,
    {
        let mut options = ReplicateOptions::new(initiator);
        if let Some(c) = &self.inner.clock {
            options.clock = c.clone();
        }
        self.inner
            .store
            .replicate(io, options)
            .await
            .map_err(|e| Error::Replication(e.to_string()))
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), Error> {
        let st = self.inner.state.lock().await;
        self.persist(&st).await?;
        self.inner.store.flush().await?;
        Ok(())
    }

    fn emit(&self, e: Event) {
        let mut subs = self.inner.events.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|tx| tx.unbounded_send(e.clone()).is_ok());
    }

    /// Registers and opens the input core of `key`.
    async fn input(&self, st: &mut State, key: [u8; 32]) -> Result<WriterId, Error> {
        let id = st.lin.writer(key);
        if let std::collections::hash_map::Entry::Vacant(e) = st.inputs.entry(id) {
            let core = self.inner.store.get_by_key(key).await?;
            let download = (!core.writable()).then(|| core.download_live());
            e.insert(Input {
                core,
                _download: download,
                frozen: false,
            });
        }
        Ok(id)
    }

    fn set_indexers(&self, st: &mut State) {
        let ids: Vec<WriterId> = st
            .base_host
            .indexer_keys()
            .into_iter()
            .map(|k| st.lin.writer(k))
            .collect();
        st.lin.set_indexers(&ids);
    }

    async fn write_local(&self, st: &mut State, body: Body) -> Result<(), Error> {
        let local = st.local;
        let (heads, height) = st.lin.next_heads(local);
        let mut wire = Vec::with_capacity(heads.len());
        let mut refs = Vec::with_capacity(heads.len());
        for (w, len) in heads {
            let key = st.lin.key(w).ok_or(Error::Corrupt("unknown head writer"))?;
            wire.push(WireHead { key, length: len });
            refs.push(HeadRef {
                node: NodeId {
                    writer: w,
                    seq: len - 1,
                },
                height: None,
            });
        }
        let block = Block {
            version: NODE_VERSION,
            height,
            heads: wire,
            body,
        };
        let core = st
            .inputs
            .get(&local)
            .map(|i| i.core.clone())
            .ok_or(Error::NotWritable)?;
        let seq = st.lin.log_len(local);
        if core.length() != seq {
            // Our own input holds blocks the linearizer has not read yet.
            self.pull(st).await?;
            if core.length() != st.lin.log_len(local) {
                // Something else wrote into our input and it was rejected:
                // every peer ignores the rest of it, so writing is pointless.
                return Err(Error::InputRejected);
            }
            return Box::pin(self.write_local(st, block.body)).await;
        }
        core.append(&block.encode()).await?;
        st.lin
            .add_node(local, seq, &refs, height)
            .map_err(|_| Error::Corrupt("own node rejected"))?;
        st.blocks
            .insert(NodeId { writer: local, seq }, Arc::new(block));
        Ok(())
    }

    /// Reads every input's new blocks into the linearizer, as far as their
    /// heads are known.
    async fn pull(&self, st: &mut State) -> Result<(), Error> {
        loop {
            let mut progress = false;
            let ids: Vec<WriterId> = st.inputs.keys().copied().collect();
            for id in ids {
                while let Some((core, frozen)) =
                    st.inputs.get(&id).map(|i| (i.core.clone(), i.frozen))
                {
                    if frozen {
                        break;
                    }
                    let seq = st.lin.log_len(id);
                    if core.fork() != 0 {
                        // A writer that rewrote its input: keep what was read, ignore the rest.
                        if let Some(i) = st.inputs.get_mut(&id) {
                            i.frozen = true;
                        }
                        break;
                    }
                    if seq >= core.contiguous_length() {
                        break;
                    }
                    let Some(bytes) = core.get(seq).await? else {
                        break;
                    };
                    let Some(block) = Block::decode(&bytes) else {
                        if let Some(i) = st.inputs.get_mut(&id) {
                            i.frozen = true;
                        }
                        break;
                    };
                    let mut refs = Vec::with_capacity(block.heads.len());
                    let mut ready = true;
                    for h in &block.heads {
                        let w = self.input(st, h.key).await?;
                        let node = NodeId {
                            writer: w,
                            seq: h.length - 1,
                        };
                        let height = match st.lin.presence(node) {
                            Presence::Present => None,
                            Presence::Absent => {
                                ready = false;
                                None
                            }
                            Presence::Pruned => {
                                let c = st.inputs.get(&w).map(|i| i.core.clone());
                                let b = match c {
                                    Some(c) => c.get(node.seq).await?,
                                    None => None,
                                };
                                match b.as_deref().and_then(Block::decode) {
                                    Some(b) => Some(b.height),
                                    None => {
                                        ready = false;
                                        None
                                    }
                                }
                            }
                        };
                        refs.push(HeadRef { node, height });
                    }
                    if !ready {
                        break;
                    }
                    match st.lin.add_node(id, seq, &refs, block.height) {
                        Ok(()) => {
                            st.blocks
                                .insert(NodeId { writer: id, seq }, Arc::new(block));
                            progress = true;
                        }
                        Err(crate::linearizer::LinearizeError::Missing(_)) => break,
                        Err(_) => {
                            if let Some(i) = st.inputs.get_mut(&id) {
                                i.frozen = true;
                            }
                            break;
                        }
                    }
                }
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// Linearizes, applies, commits, acks; repeats until nothing changes.
    async fn settle(&self, st: &mut State) -> Result<(), Error> {
        loop {
            let before = (st.lin.committed_count(), st.applied.len());
            let mut committed_any = false;
            loop {
                let order = st.lin.order();
                self.apply_order(st, &order).await?;
                let (n, changed) = {
                    let mut n = 0;
                    let mut changed = false;
                    let mut prev = st.base_host.indexer_keys();
                    for a in st.applied.iter().take(order.final_len) {
                        n += 1;
                        let now = a.host.indexer_keys();
                        if now != prev {
                            changed = true;
                            break;
                        }
                        prev = now;
                    }
                    (n, changed)
                };
                if n == 0 {
                    break;
                }
                st.lin.commit(&order, n);
                let last: Vec<Applied> = st.applied.drain(..n).collect();
                for a in &last {
                    st.blocks.remove(&a.node);
                }
                if let Some(a) = last.last() {
                    st.base_host = a.host.clone();
                    st.base_views = a.views.clone();
                    st.base_rejected = a.rejected;
                }
                committed_any = true;
                if changed {
                    self.set_indexers(st);
                    // New writers may need their inputs opened.
                    let keys: Vec<[u8; 32]> = st.base_host.writers.iter().map(|w| w.key).collect();
                    for k in keys {
                        self.input(st, k).await?;
                    }
                }
                // The next decision may already be made.
            }
            if committed_any {
                self.persist(st).await?;
            }
            // Open inputs of writers added in the tail, and read them.
            let keys: Vec<[u8; 32]> = st.tip_host().writers.iter().map(|w| w.key).collect();
            let mut opened = false;
            for k in keys {
                if st
                    .lin
                    .writer_id(&k)
                    .is_none_or(|id| !st.inputs.contains_key(&id))
                {
                    self.input(st, k).await?;
                    opened = true;
                }
            }
            if opened {
                self.pull(st).await?;
            }
            let writable = st.tip_host().is_writer(&self.inner.local_key);
            if writable && !st.was_writable {
                self.emit(Event::Writable);
            }
            st.was_writable = writable;
            if self.should_ack(st) {
                self.write_local(st, Body::Ack).await?;
                continue;
            }
            let after = (st.lin.committed_count(), st.applied.len());
            if after != before || opened {
                self.emit(Event::Updated {
                    length: after.0 + after.1 as u64,
                    indexed_length: after.0,
                });
                if opened {
                    continue;
                }
            }
            return Ok(());
        }
    }

    /// An indexer acks when some uncommitted node carries values and its own
    /// latest node does not cover everything it knows.
    fn should_ack(&self, st: &State) -> bool {
        if !st.base_host.is_indexer(&self.inner.local_key) {
            return false;
        }
        let pending_values = st.applied.iter().any(|a| {
            matches!(
                st.blocks.get(&a.node).map(|b| &b.body),
                Some(Body::Values(_))
            )
        });
        if !pending_values {
            return false;
        }
        !st.lin.next_heads(st.local).0.is_empty()
    }

    /// Brings the applied list in line with `order`: rolls views back to the
    /// first changed position, then applies the rest.
    async fn apply_order(&self, st: &mut State, order: &Order) -> Result<(), Error> {
        let p = st
            .applied
            .iter()
            .zip(order.nodes.iter())
            .take_while(|(a, n)| a.node == **n)
            .count();
        if p < st.applied.len() {
            st.applied.truncate(p);
            self.emit(Event::Reordered {
                from: st.lin.committed_count() + p as u64,
            });
        }
        self.sync_views(st).await?;
        for &id in &order.nodes[p..] {
            self.apply_node(st, id).await?;
        }
        Ok(())
    }

    /// Truncates views that hold more than the applied list says (after a
    /// rollback or a failed apply).
    async fn sync_views(&self, st: &mut State) -> Result<(), Error> {
        let marks = st.tip_views();
        for (i, (_, bee)) in st.bees.iter_mut().enumerate() {
            let want = marks[i].length;
            if bee.core().length() != want || bee.version() != want {
                let core = bee.core().clone();
                if core.length() > want {
                    core.truncate(want).await?;
                }
                // A fresh bee: cached nodes of truncated blocks must go.
                *bee = Bee::open(core).await?;
            }
        }
        Ok(())
    }

    async fn apply_node(&self, st: &mut State, id: NodeId) -> Result<(), Error> {
        let host = st.tip_host();
        let views = st.tip_views();
        let mut rejected = st.tip_rejected();
        let block = st.blocks.get(&id).cloned();
        let key = st.lin.key(id.writer).unwrap_or([0; 32]);
        let mut entry = Applied {
            node: id,
            views: views.clone(),
            host: host.clone(),
            rejected,
        };
        let values = match block.as_deref().map(|b| &b.body) {
            Some(Body::Values(v)) => v,
            _ => {
                st.applied.push(entry);
                return Ok(());
            }
        };
        if !host.is_writer(&key) {
            entry.rejected += 1;
            st.applied.push(entry);
            return Ok(());
        }
        let heads: Vec<([u8; 32], u64)> = block
            .as_deref()
            .map(|b| b.heads.iter().map(|h| (h.key, h.length)).collect())
            .unwrap_or_default();
        let nodes: Vec<Node> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Node {
                writer: key,
                seq: id.seq,
                index: i as u32,
                value: v.to_vec(),
                heads: heads.clone(),
            })
            .collect();
        let mut view = View {
            batches: Vec::with_capacity(st.bees.len()),
        };
        for (name, bee) in &st.bees {
            view.batches.push((name.clone(), bee.batch().await?));
        }
        let mut new_host = (*host).clone();
        match self
            .inner
            .apply
            .apply(&nodes, &mut view, &mut new_host)
            .await
        {
            Ok(()) => {
                let mut marks = Vec::with_capacity(view.batches.len());
                for (_, batch) in view.batches {
                    batch.flush().await?;
                }
                for (_, bee) in &st.bees {
                    marks.push(ViewMark {
                        length: bee.core().length(),
                        hash: bee.core().tree_hash(),
                    });
                }
                entry.views = Arc::new(marks);
                if new_host != *host {
                    entry.host = Arc::new(new_host);
                }
            }
            Err(e) if e.is_deterministic() => {
                drop(view);
                rejected += 1;
                entry.rejected = rejected;
            }
            Err(e) => {
                drop(view);
                return Err(match e {
                    ApplyError::Bee(b) => Error::Bee(b),
                    _ => Error::Corrupt("apply failed"),
                });
            }
        }
        st.applied.push(entry);
        Ok(())
    }

    async fn persist(&self, st: &State) -> Result<(), Error> {
        let rec = Record {
            version: RECORD_VERSION,
            committed_count: st.lin.committed_count(),
            writers: st.lin.checkpoint(),
            host: (*st.base_host).clone(),
            views: (*st.base_views).clone(),
            rejected: st.base_rejected,
        };
        let bytes = postcard::to_allocvec(&rec).map_err(|_| Error::Corrupt("encode record"))?;
        let mut b = StorageBatch::new();
        b.push(Op::PutMeta {
            key: self.inner.record_key.clone(),
            value: bytes,
        });
        self.inner
            .store
            .storage()
            .write(b)
            .await
            .map_err(hypercore_rs::Error::from)?;
        Ok(())
    }
}
