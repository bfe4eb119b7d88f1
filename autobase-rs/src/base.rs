//! The async driver: reads input cores, feeds the linearizer, runs `apply`
//! into hyperbee views, rolls views back on reorder, commits the indexed
//! prefix and persists the system state with it.
//!
//! It must never let a peer's bytes panic or stall other writers, and never
//! record a system state that points past what the views hold.

use crate::checkpoint::{
    tree_hash_of, Checkpoint, CheckpointError, CommittedTip, SignedCheckpoint, ViewCheckpoint,
};
use crate::equivocation::{Equivocation, SignedNode};
use crate::error::{ApplyError, Error};
use crate::forks::{ForkNode, OtherForks};
use crate::linearizer::{HeadRef, Linearizer, NodeId, Order, Presence, WriterCheckpoint, WriterId};
use crate::node::{verify_node, Block, Body, Node, Signed, WireHead, NODE_VERSION};
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures::lock::Mutex as AsyncMutex;
use futures::{Stream, StreamExt};
use hyperbee_rs::{Batch, Bee, Snapshot};
use hypercore_rs::replication::ReplicateOptions;
use hypercore_rs::storage::{Batch as StorageBatch, Op};
use hypercore_rs::{Core, Corestore, Download, KeyPair, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

const RECORD_VERSION: u8 = 2;
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
    /// Set when the writer was proven to equivocate: removed, and its input
    /// is read no further than this.
    pub cut: Option<Cut>,
}

/// Where a writer that forked its input was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Cut {
    /// How many of its nodes were ordered before the evidence: they stay,
    /// the rest of its input is never read.
    pub at: u64,
    /// Its ed25519 public key (from the proof).
    pub public_key: hypercore_rs::PublicKey,
}

/// A fork choice made about a forking indexer (the attested fork choice,
/// `DESIGN.md`): at `position`, its fork point (the lowest position this
/// peer had proven it to fork at, verified to be where the two forks part),
/// once every other indexer's attestation was in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForkChoice {
    /// The forking indexer's writer key.
    pub writer: [u8; 32],
    /// Its fork position the choice is about.
    pub position: u64,
    /// The chosen fork, as the hash of the forker's node at `position`
    /// on it; `None` when no fork was attested by enough indexers and the
    /// forker is silenced at `position` whichever fork it shows.
    pub chosen: Option<[u8; 32]>,
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
            if w.cut.is_some() {
                return Err(ApplyError::Rejected(
                    "the writer was cut for forking its input".into(),
                ));
            }
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
                cut: None,
            });
        }
        Ok(())
    }

    /// Where `key` was cut for equivocating, if it was.
    pub fn cut(&self, key: &[u8; 32]) -> Option<Cut> {
        self.writers
            .iter()
            .find(|w| &w.key == key)
            .and_then(|w| w.cut)
    }

    /// Cuts a writer proven to equivocate after its first `at` nodes
    /// (removes it); `false` when it is the last indexer (kept: a base needs
    /// one) or already cut.
    pub(crate) fn cut_writer(&mut self, key: [u8; 32], at: u64, public_key: [u8; 32]) -> bool {
        let last = self.active_indexers() == 1;
        let cut = Some(Cut { at, public_key });
        match self.writers.iter_mut().find(|w| w.key == key) {
            Some(w) if w.cut.is_some() => false,
            Some(w) if w.indexer && !w.removed && last => false,
            Some(w) => {
                w.removed = true;
                w.cut = cut;
                true
            }
            None => {
                self.writers.push(WriterInfo {
                    key,
                    indexer: false,
                    removed: true,
                    cut,
                });
                true
            }
        }
    }

    fn cuts(&self) -> Vec<([u8; 32], u64)> {
        self.writers
            .iter()
            .filter_map(|w| Some((w.key, w.cut?.at)))
            .collect()
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

    pub(crate) fn from_writers(writers: Vec<WriterInfo>) -> Self {
        Host { writers }
    }

    pub(crate) fn indexer_keys(&self) -> Vec<[u8; 32]> {
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
    /// This peer learned (read or heard) that a writer forked its input.
    Equivocation {
        /// The writer's key.
        writer: [u8; 32],
    },
    /// This peer started from a signed checkpoint
    /// ([`Autobase::fast_forward`] and the calls built on it): its views
    /// were replaced, not applied, up to this indexed length.
    FastForwarded {
        /// Indexed length of the checkpoint, in nodes.
        indexed_length: u64,
    },
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
    tips: Vec<CommittedTip>,
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
    /// Single blocks below the download range that a head names (their
    /// height is needed), by seq.
    wants: HashMap<u64, Download>,
    frozen: bool,
    /// The writer's signing key, from its core's manifest.
    vk: Option<VerifyingKey>,
    /// Blocks below this seq were scanned ahead for evidence.
    scanned: u64,
    /// Blocks below this seq were scanned ahead for heads pinning nodes of
    /// another fork of a proven forker (see `want_pins_ahead`).
    pins_scanned: u64,
}

impl Input {
    fn new(core: Core, download: Option<Download>) -> Self {
        Input {
            core,
            _download: download,
            wants: HashMap::new(),
            frozen: false,
            vk: None,
            scanned: 0,
            pins_scanned: 0,
        }
    }
}

struct State {
    lin: Linearizer,
    inputs: HashMap<WriterId, Input>,
    /// Exactly the uncommitted nodes, as read.
    blocks: HashMap<NodeId, Arc<Signed>>,
    /// Every writer's last committed node (seq, hash and signature).
    tips: HashMap<WriterId, (u64, SignedNode)>,
    /// Verified proofs that a writer forked its input, by writer key.
    proofs: HashMap<[u8; 32], Equivocation>,
    /// Writers this peer already wrote evidence against (this session),
    /// with the fork position of the proof it wrote.
    evidence_written: HashMap<[u8; 32], u64>,
    /// The indexers silenced in the current linearizer (proven forkers
    /// not cut yet) and the seq from which their input is not read.
    silenced: Vec<([u8; 32], u64)>,
    /// Whether the last pull left a block waiting on another fork of a
    /// writer that is not cut yet.
    fork_blocked: bool,
    /// Whether the last pull left a block waiting for fetched nodes that
    /// tell whether a node it pins leaves the chosen fork (this peer's):
    /// a wait for the network, not a reason to fast-forward.
    fork_fetching: bool,
    /// Nodes of other forks of proven forkers that heads pin: wanted and
    /// fetched (see `forks.rs`).
    forks: OtherForks,
    /// Attestations and choices for forking indexers.
    choice: ForkState,
    /// Proof positions `(forker, seq)` known to be the fork point: this
    /// peer holds both nodes of the proof and they chain onto one node
    /// (`fork_choice` waits for this, so every peer chooses at the same
    /// position).
    fork_points: HashSet<([u8; 32], u64)>,
    /// Per forker with a chosen fork: whether this peer's core holds it.
    on_chosen: HashMap<[u8; 32], bool>,
    /// The checkpoints at which the indexer set changed, with the
    /// signatures of the outgoing indexers gathered so far: the chain a
    /// joiner follows from the bootstrap writer to today's indexers.
    transitions: Vec<SignedCheckpoint>,
    /// Transition signatures heard before this peer reached that point.
    pending_transitions: Vec<SignedCheckpoint>,
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

/// (forker, fork position, author) of an attestation.
type Attestor = ([u8; 32], u64, [u8; 32]);

/// What a peer knows and decided about forking indexers (the attested
/// fork choice, `DESIGN.md`): per forker key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ForkState {
    /// This peer's own attestation: (fork position, hash of the forker's
    /// node there in the past of its own chain), taken when it learnt the
    /// proof, written with its next evidence node.
    mine: Vec<([u8; 32], u64, Option<[u8; 32]>)>,
    /// Attestations read: (forker, fork position, author) -> seen; the
    /// first of each author at each position.
    read: Vec<(Attestor, Option<[u8; 32]>)>,
    /// Choices made: (forker, fork position, chosen fork: the hash of its
    /// node at the position, or `None` for "silenced at the position").
    chosen: Vec<([u8; 32], u64, Option<[u8; 32]>)>,
}

impl ForkState {
    fn mine(&self, forker: &[u8; 32], f: u64) -> Option<Option<[u8; 32]>> {
        self.mine
            .iter()
            .find(|(k, s, _)| k == forker && *s == f)
            .map(|x| x.2)
    }
    fn set_mine(&mut self, forker: [u8; 32], f: u64, seen: Option<[u8; 32]>) {
        self.mine.retain(|(k, _, _)| *k != forker);
        self.mine.push((forker, f, seen));
    }
    fn record(&mut self, forker: [u8; 32], f: u64, author: [u8; 32], seen: Option<[u8; 32]>) {
        if !self.read.iter().any(|(k, _)| *k == (forker, f, author)) {
            self.read.push(((forker, f, author), seen));
        }
    }
    fn attested(&self, forker: &[u8; 32], f: u64, author: &[u8; 32]) -> Option<Option<[u8; 32]>> {
        self.read
            .iter()
            .find(|((k, s, a), _)| k == forker && *s == f && a == author)
            .map(|x| x.1)
    }
    fn chosen(&self, forker: &[u8; 32], f: u64) -> Option<Option<[u8; 32]>> {
        self.chosen
            .iter()
            .find(|(k, s, _)| k == forker && *s == f)
            .map(|x| x.2)
    }
}

/// What the fork choice says about a proven forking indexer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Choice {
    /// Not decided yet (attestations missing): nothing is committed.
    Open,
    /// Silenced at the position, whichever fork.
    Silence,
    /// The fork whose node at the position has this hash.
    Fork([u8; 32]),
}

struct Inner {
    store: Corestore,
    key: [u8; 32],
    local_key: [u8; 32],
    key_pair: KeyPair,
    signer: SigningKey,
    view_names: Vec<String>,
    record_key: Vec<u8>,
    chain_key: Vec<u8>,
    /// Store meta key of the equivocation proofs this peer holds.
    proofs_key: Vec<u8>,
    /// Store meta key of the fork choices made (see [`ForkState`]).
    forks_key: Vec<u8>,
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

/// The committed tips as a map by writer id (registering the writers).
fn tips_map(lin: &mut Linearizer, tips: &[CommittedTip]) -> HashMap<WriterId, (u64, SignedNode)> {
    tips.iter()
        .map(|t| (lin.writer(t.key), (t.seq, t.node)))
        .collect()
}

/// The signed node `id` as held in memory: uncommitted, or its writer's last
/// committed node.
fn held(st: &State, id: NodeId) -> Option<SignedNode> {
    if let Some(b) = st.blocks.get(&id) {
        return Some(b.node());
    }
    st.tips
        .get(&id.writer)
        .filter(|(seq, _)| *seq == id.seq)
        .map(|(_, n)| *n)
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
        let (key, local_core, key_pair) = match self.bootstrap {
            None => (
                boot_key,
                boot_ns.get(&self.name).await?,
                boot_ns.key_pair(&self.name),
            ),
            Some(k) if k == boot_key => (
                k,
                boot_ns.get(&self.name).await?,
                boot_ns.key_pair(&self.name),
            ),
            Some(k) => {
                let local_ns = ns.namespace(&hex(&k));
                (k, local_ns.get("local").await?, local_ns.key_pair("local"))
            }
        };
        let base_ns = ns.namespace(&hex(&key));
        let record_key = format!("autobase-rs/{}/system", hex(&key)).into_bytes();
        let chain_key = format!("autobase-rs/{}/chain", hex(&key)).into_bytes();
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
        let transitions: Vec<SignedCheckpoint> =
            get_meta(&*storage, &chain_key, "checkpoint chain")
                .await?
                .unwrap_or_default();
        let proofs_key = format!("autobase-rs/{}/proofs", hex(&key)).into_bytes();
        let mut proofs: HashMap<[u8; 32], Equivocation> = HashMap::new();
        let stored: Option<Vec<Equivocation>> =
            get_meta(&*storage, &proofs_key, "equivocation proofs").await?;
        if let Some(list) = stored {
            for p in list.into_iter().filter(|p| p.verify().is_ok()) {
                match proofs.get(&p.writer()) {
                    Some(have) if have.seq <= p.seq => {}
                    _ => {
                        proofs.insert(p.writer(), p);
                    }
                }
            }
        }
        let forks_key = format!("autobase-rs/{}/forks", hex(&key)).into_bytes();
        let fork_state: ForkState = get_meta(&*storage, &forks_key, "fork choices")
            .await?
            .unwrap_or_default();
        let mut cores = Vec::with_capacity(self.views.len());
        for name in &self.views {
            cores.push(base_ns.get(&format!("view/{name}")).await?);
        }
        let mut record = record;
        if let Some(r) = &record {
            // Views hold at least what the record describes (they are
            // written first); drop the applied-but-uncommitted rest. A view
            // whose bytes differ from the record (a fast-forward that crashed
            // before its record) cannot be trusted: rebuild from scratch.
            let mut consistent = true;
            for (core, mark) in cores.iter().zip(&r.views) {
                if core.length() > mark.length {
                    core.truncate(mark.length).await?;
                }
                consistent &= core.length() == mark.length && core.tree_hash() == mark.hash;
            }
            if !consistent {
                record = None;
            }
        }
        if record.is_none() {
            // Nothing committed: whatever the views hold is an uncommitted
            // tail (or a crashed fast-forward), re-applied from the inputs.
            for core in &cores {
                if core.length() > 0 {
                    core.truncate(0).await?;
                }
            }
        }
        let mut bees = Vec::new();
        let mut marks = Vec::new();
        for (name, core) in self.views.iter().zip(cores) {
            let bee = Bee::open(core.clone()).await?;
            marks.push(ViewMark {
                length: core.length(),
                hash: core.tree_hash(),
            });
            bees.push((name.clone(), bee));
        }
        let (mut lin, host, rejected, saved_tips) = match record {
            Some(r) => (
                Linearizer::from_checkpoint(&r.writers, r.committed_count),
                r.host,
                r.rejected,
                r.tips,
            ),
            None => {
                let mut h = Host::default();
                h.writers.push(WriterInfo {
                    key,
                    indexer: true,
                    removed: false,
                    cut: None,
                });
                (Linearizer::new(), h, 0, Vec::new())
            }
        };
        let local = lin.writer(local_core.key());
        let mut inputs = HashMap::new();
        inputs.insert(local, Input::new(local_core.clone(), None));
        let tips = tips_map(&mut lin, &saved_tips);
        let inner = Inner {
            store: self.store.clone(),
            key,
            local_key: local_core.key(),
            signer: SigningKey::from_bytes(&key_pair.seed()),
            key_pair,
            view_names: self.views.clone(),
            record_key,
            chain_key: chain_key.clone(),
            proofs_key,
            forks_key,
            clock: self.clock,
            apply: self.apply,
            state: AsyncMutex::new(State {
                lin,
                inputs,
                blocks: HashMap::new(),
                tips,
                proofs,
                evidence_written: HashMap::new(),
                silenced: Vec::new(),
                fork_blocked: false,
                fork_fetching: false,
                forks: OtherForks::default(),
                choice: fork_state,
                fork_points: HashSet::new(),
                on_chosen: HashMap::new(),
                transitions,
                pending_transitions: Vec::new(),
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
        let mut st = self.inner.state.lock().await;
        if self.materialize(&mut st).await.is_err() {
            return st.base_host.is_writer(&self.inner.local_key);
        }
        st.tip_host().is_writer(&self.inner.local_key)
    }

    /// Whether this peer may append: a writer at the indexed point, or else
    /// at the tip (which needs the tail applied).
    async fn may_write(&self, st: &mut State) -> Result<bool, Error> {
        if st.base_host.is_writer(&self.inner.local_key) {
            return Ok(true);
        }
        self.materialize(st).await?;
        Ok(st.tip_host().is_writer(&self.inner.local_key))
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
        if !self.may_write(&mut st).await? {
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
        if !self.may_write(&mut st).await? {
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
        self.settle(&mut st).await?;
        if st.fork_blocked || st.fork_fetching || self.any_open(&st) {
            // Blocked on another fork's nodes, or a fork choice waits (for
            // the nodes that show the fork point, or for attestations): ask
            // for them again (a want sent while no peer that holds them
            // listened is lost).
            let core = self.inner.store.get_by_key(self.inner.key).await?;
            for node in st.forks.wants().take(64) {
                core.send_extension(
                    CHECKPOINT_EXTENSION,
                    crate::forks::request_message(MSG_FORK_WANT, node),
                );
            }
        }
        Ok(())
    }

    /// Number of indexed (final) nodes.
    pub async fn indexed_length(&self) -> u64 {
        self.inner.state.lock().await.lin.committed_count()
    }

    /// Number of linearized nodes (indexed + optimistic tail).
    pub async fn length(&self) -> u64 {
        let st = self.inner.state.lock().await;
        st.lin.committed_count() + st.lin.uncommitted_count() as u64
    }

    /// Number of blocks rejected so far in linear order (by `apply`, or
    /// written by non-writers).
    pub async fn rejected(&self) -> u64 {
        let mut st = self.inner.state.lock().await;
        let _ = self.materialize(&mut st).await;
        st.tip_rejected()
    }

    /// A read-only snapshot of a view at the tip.
    pub async fn view(&self, name: &str) -> Result<Snapshot, Error> {
        let mut st = self.inner.state.lock().await;
        self.materialize(&mut st).await?;
        st.bees
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.snapshot())
            .ok_or_else(|| Error::UnknownView(name.to_string()))
    }

    /// A read-only snapshot of a view at a past `version` (view core length).
    pub async fn checkout(&self, name: &str, version: u64) -> Result<Snapshot, Error> {
        let bee = {
            let mut st = self.inner.state.lock().await;
            self.materialize(&mut st).await?;
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
        let mut st = self.inner.state.lock().await;
        self.materialize(&mut st).await?;
        let i = st
            .bees
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::UnknownView(name.to_string()))?;
        Ok(st.tip_views()[i].hash)
    }

    /// The indexed state as a checkpoint (unsigned): every peer that indexed
    /// the same nodes builds the same checkpoint.
    pub async fn checkpoint(&self) -> Checkpoint {
        let st = self.inner.state.lock().await;
        self.checkpoint_of(&st)
    }

    fn checkpoint_of(&self, st: &State) -> Checkpoint {
        let views = self
            .inner
            .view_names
            .iter()
            .zip(st.base_views.iter())
            .map(|(name, m)| ViewCheckpoint {
                name: name.clone(),
                length: m.length,
                hash: m.hash,
            })
            .collect();
        Checkpoint::new(
            self.inner.key,
            st.lin.committed_count(),
            st.lin.checkpoint(),
            &st.base_host,
            st.base_rejected,
            views,
            self.committed_tips(st),
        )
    }

    fn committed_tips(&self, st: &State) -> Vec<CommittedTip> {
        let mut tips: Vec<CommittedTip> = st
            .tips
            .iter()
            .filter_map(|(id, (seq, node))| {
                Some(CommittedTip {
                    key: st.lin.key(*id)?,
                    seq: *seq,
                    node: *node,
                })
            })
            .collect();
        tips.sort_by_key(|t| t.key);
        tips
    }

    /// This peer's signature over its indexed state; only an indexer at the
    /// indexed length signs. Merge signatures of several indexers with
    /// [`SignedCheckpoint::merge`].
    pub async fn sign_checkpoint(&self) -> Result<SignedCheckpoint, Error> {
        let st = self.inner.state.lock().await;
        if !st.base_host.is_indexer(&self.inner.local_key) {
            return Err(CheckpointError::NotIndexer.into());
        }
        let mut signed = SignedCheckpoint::unsigned(self.checkpoint_of(&st));
        signed.sign(&self.inner.key_pair);
        Ok(signed)
    }

    /// The blocks of view `name` up to its length at the indexed length, to
    /// hand to a peer that fast-forwards to this peer's checkpoint.
    pub async fn view_blocks(&self, name: &str) -> Result<Vec<Vec<u8>>, Error> {
        let (core, length) = {
            let st = self.inner.state.lock().await;
            let i = st
                .bees
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| Error::UnknownView(name.to_string()))?;
            (st.bees[i].1.core().clone(), st.base_views[i].length)
        };
        let mut out = Vec::new();
        for i in 0..length {
            out.push(
                core.get(i)
                    .await?
                    .ok_or(Error::Corrupt("view block missing"))?,
            );
        }
        Ok(out)
    }

    /// Starts from a checkpoint instead of replaying history: checks it is
    /// signed by a majority of its own indexers and of the indexers this peer
    /// knows (a fresh joiner knows the bootstrap writer), that it is ahead of
    /// this peer's indexed length, and that `views` (the blocks of every
    /// view, in view order) rebuild the signed tree hashes. Then installs the
    /// views and the system state and continues with the nodes after the
    /// checkpoint's frontier. Nothing changes when a check fails.
    pub async fn fast_forward(
        &self,
        signed: &SignedCheckpoint,
        views: &[Vec<Vec<u8>>],
    ) -> Result<(), Error> {
        self.fast_forward_via(&[], signed, views).await
    }

    /// [`Autobase::fast_forward`] for a peer whose trusted indexers are no
    /// longer the ones that sign today: `chain` holds the checkpoints at
    /// which the indexer set changed since (see
    /// [`Autobase::checkpoint_chain`]); each one signed by a majority of
    /// the set before it moves the trusted set on (links at or below this
    /// peer's indexed length are ignored), and `signed` must be signed by a
    /// majority of the set reached. The links are kept, so this peer can
    /// serve the chain in turn.
    pub async fn fast_forward_via(
        &self,
        chain: &[SignedCheckpoint],
        signed: &SignedCheckpoint,
        views: &[Vec<Vec<u8>>],
    ) -> Result<(), Error> {
        let mut st = self.inner.state.lock().await;
        let have = st.lin.committed_count();
        let links: Vec<SignedCheckpoint> = chain
            .iter()
            .filter(|l| {
                l.checkpoint.indexed_length > have
                    && l.checkpoint.indexed_length <= signed.checkpoint.indexed_length
            })
            .cloned()
            .collect();
        let trusted =
            crate::checkpoint::follow_chain(&self.inner.key, &st.base_host.indexer_keys(), &links);
        let proven: Vec<[u8; 32]> = st.proofs.keys().copied().collect();
        signed.verify_without(&self.inner.key, &trusted, &proven)?;
        let cp = &signed.checkpoint;
        let have = st.lin.committed_count();
        if cp.indexed_length <= have {
            return Err(CheckpointError::Stale {
                have,
                offered: cp.indexed_length,
            }
            .into());
        }
        if cp.views.len() != st.bees.len() || views.len() != st.bees.len() {
            return Err(CheckpointError::Malformed("views").into());
        }
        for ((vc, blocks), name) in cp.views.iter().zip(views).zip(&self.inner.view_names) {
            if &vc.name != name {
                return Err(CheckpointError::Malformed("view names").into());
            }
            if blocks.len() as u64 != vc.length || tree_hash_of(blocks) != vc.hash {
                return Err(CheckpointError::ViewMismatch(name.clone()).into());
            }
        }
        // Install the views.
        let mut marks = Vec::with_capacity(views.len());
        for ((_, bee), blocks) in st.bees.iter_mut().zip(views) {
            let core = bee.core().clone();
            if core.length() > 0 {
                core.truncate(0).await?;
            }
            if !blocks.is_empty() {
                // By reference (`&Vec<u8>` is `AsRef<[u8]>`), no closure:
                // one across the await would make this future not `Send`.
                core.append_batch(blocks.iter()).await?;
            }
            *bee = Bee::open(core.clone()).await?;
            marks.push(ViewMark {
                length: core.length(),
                hash: core.tree_hash(),
            });
        }
        for (m, vc) in marks.iter().zip(&cp.views) {
            if m.length != vc.length || m.hash != vc.hash {
                return Err(Error::Corrupt("installed view differs from checkpoint"));
            }
        }
        // Install the system state: a linearizer continuing after the
        // frontier, as after a restart.
        let mut lin =
            crate::linearizer::Linearizer::from_checkpoint(&cp.writers, cp.indexed_length);
        let old = std::mem::take(&mut st.inputs);
        for (id, input) in old {
            if let Some(k) = st.lin.key(id) {
                let nid = lin.writer(k);
                // Only what follows the new frontier is needed (and the
                // last committed block, which new nodes usually name).
                let from = lin.committed_len(nid).saturating_sub(1);
                let download =
                    (!input.core.writable()).then(|| input.core.download(from, u64::MAX));
                st.inputs.insert(nid, Input::new(input.core, download));
            }
        }
        st.local = lin.writer(self.inner.local_key);
        st.tips = tips_map(&mut lin, &cp.tips);
        st.lin = lin;
        st.blocks.clear();
        st.applied.clear();
        st.base_host = Arc::new(cp.host());
        st.base_views = Arc::new(marks);
        st.base_rejected = cp.rejected;
        let keys: Vec<[u8; 32]> = st
            .base_host
            .writers
            .iter()
            .map(|w| w.key)
            .chain(cp.writers.iter().map(|w| w.key))
            .collect();
        for k in keys {
            self.input(&mut st, k).await?;
        }
        self.set_indexers(&mut st);
        self.persist(&st).await?;
        for l in links {
            match st
                .transitions
                .iter_mut()
                .find(|o| o.checkpoint == l.checkpoint)
            {
                Some(o) => {
                    let _ = o.merge(&l);
                }
                None => st.transitions.push(l),
            }
        }
        self.persist_chain(&st).await?;
        self.emit(Event::FastForwarded {
            indexed_length: cp.indexed_length,
        });
        self.pull(&mut st).await?;
        self.settle(&mut st).await
    }

    /// Takes in a proof that a writer forked its input (gossiped by a peer,
    /// see [`Autobase::serve_checkpoints`], which also takes them in): a
    /// valid one is kept, passed on, and written into this peer's input as
    /// evidence if it is a writer, so the forked writer is cut at the same
    /// indexed point on every peer. Returns whether it was new and valid.
    pub async fn add_equivocation(&self, proof: Equivocation) -> Result<bool, Error> {
        if proof.verify().is_err() {
            return Ok(false);
        }
        let mut st = self.inner.state.lock().await;
        if st
            .proofs
            .get(&proof.writer())
            .is_some_and(|p| p.seq <= proof.seq)
        {
            return Ok(false);
        }
        self.found(&mut st, proof).await?;
        self.pull(&mut st).await?;
        self.settle(&mut st).await?;
        Ok(true)
    }

    /// Whether this peer holds nodes on a fork of a writer that is not cut
    /// yet, and blocks of others wait on another fork of it. The peers on
    /// the fork that gets indexed cut the writer on their own; a peer left
    /// on the other fork cannot read their nodes until it starts from a
    /// checkpoint past the cut: call [`Autobase::fast_forward_from_peers`]
    /// when this holds.
    pub async fn needs_fast_forward(&self) -> bool {
        let st = self.inner.state.lock().await;
        let off_chosen = st.proofs.keys().any(|w| {
            matches!(self.fork_choice(&st, w), Some((_, Choice::Fork(_))))
                && st.on_chosen.get(w) != Some(&true)
        });
        off_chosen || (st.fork_blocked && st.proofs.keys().any(|w| st.base_host.cut(w).is_none()))
    }

    /// The writers this peer holds a valid proof against.
    async fn proven(&self) -> Vec<[u8; 32]> {
        self.inner
            .state
            .lock()
            .await
            .proofs
            .keys()
            .copied()
            .collect()
    }

    /// The proofs of forked inputs this peer holds (read or heard), by
    /// writer key.
    pub async fn equivocations(&self) -> Vec<Equivocation> {
        let st = self.inner.state.lock().await;
        let mut v: Vec<Equivocation> = st.proofs.values().cloned().collect();
        v.sort_by_key(|p| p.writer());
        v
    }

    /// The fork choices this peer made about forking indexers, in the order
    /// it made them (stored, so they survive a restart). One per forker
    /// normally; a liar with three or more forks can have a lower fork
    /// point found after a choice, which opens a new choice there (both
    /// stay listed).
    pub async fn fork_choices(&self) -> Vec<ForkChoice> {
        let st = self.inner.state.lock().await;
        st.choice
            .chosen
            .iter()
            .map(|&(writer, position, chosen)| ForkChoice {
                writer,
                position,
                chosen,
            })
            .collect()
    }

    /// The writers at the tip.
    pub async fn writers(&self) -> Vec<WriterInfo> {
        let mut st = self.inner.state.lock().await;
        let _ = self.materialize(&mut st).await;
        st.tip_host().writers.clone()
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
        // A writer that forks its input makes honest peers hold conflicting
        // trees of that one core: drop that core's channel, not the session.
        options.isolate_invalid_proofs = true;
        if let Some(c) = &self.inner.clock {
            options.clock = c.clone();
        }
        // Blocks of other forks this peer wants are taken in here too, so a
        // peer that does not run `serve_checkpoints` gets them.
        let core = self.inner.store.get_by_key(self.inner.key).await?;
        let mut rx = core.extension(CHECKPOINT_EXTENSION);
        let this = self.clone();
        let listen = async move {
            while let Some((_, msg)) = rx.next().await {
                if let Some((&MSG_FORK_BLOCK, body)) = msg.split_first() {
                    if let Some((key, seq, bytes)) = crate::forks::decode_block(body) {
                        if this.add_fork_block(key, seq, bytes).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        let session = self.inner.store.replicate(io, options);
        futures::pin_mut!(listen, session);
        let result = match futures::future::select(session, listen).await {
            futures::future::Either::Left((r, _)) => r,
            futures::future::Either::Right(((), session)) => session.await,
        };
        result.map_err(|e| Error::Replication(e.to_string()))
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
            // Blocks before the committed frontier are never read again
            // (except a few named heads, fetched one by one in `pull`).
            let from = st.lin.committed_len(id).saturating_sub(1);
            let download = (!core.writable()).then(|| core.download(from, u64::MAX));
            e.insert(Input::new(core, download));
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
        if body.evidence().is_none() {
            // Evidence goes first: an indexer's attestation describes its
            // chain as it was when it learnt the proof.
            if let Some(proof) = self.evidence_to_write(st) {
                Box::pin(self.write_evidence(st, proof)).await?;
            }
        }
        let local = st.local;
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
            return Box::pin(self.write_local(st, body)).await;
        }
        let (heads, height) = if matches!(body, Body::Attested(_)) {
            // Its past is the writer's own chain: what it attests.
            (Vec::new(), st.lin.latest_height(local).saturating_add(1))
        } else {
            st.lin.next_heads(local)
        };
        let mut wire = Vec::with_capacity(heads.len());
        let mut refs = Vec::with_capacity(heads.len());
        for (w, len) in heads {
            let key = st.lin.key(w).ok_or(Error::Corrupt("unknown head writer"))?;
            let node = NodeId {
                writer: w,
                seq: len - 1,
            };
            let named = self
                .signed_node(st, node)
                .await?
                .ok_or(Error::Corrupt("named head not held"))?;
            wire.push(WireHead {
                key,
                length: len,
                hash: named.hash,
                sig: named.signature,
            });
            refs.push(HeadRef { node, height: None });
        }
        let prev = match seq.checked_sub(1) {
            None => [0; 32],
            Some(p) => {
                self.signed_node(
                    st,
                    NodeId {
                        writer: local,
                        seq: p,
                    },
                )
                .await?
                .ok_or(Error::Corrupt("own previous node not held"))?
                .hash
            }
        };
        let block = Block {
            version: NODE_VERSION,
            height,
            prev,
            heads: wire,
            body,
        };
        let (bytes, hash, sig) = block.sign(seq, &self.inner.signer);
        core.append(&bytes).await?;
        st.lin
            .add_node(local, seq, &refs, height)
            .map_err(|_| Error::Corrupt("own node rejected"))?;
        st.blocks.insert(
            NodeId { writer: local, seq },
            Arc::new(Signed { block, hash, sig }),
        );
        Ok(())
    }

    /// The hash and signature of node `id`: from memory, else from its core.
    async fn signed_node(&self, st: &State, id: NodeId) -> Result<Option<SignedNode>, Error> {
        if let Some(n) = held(st, id) {
            return Ok(Some(n));
        }
        Ok(self.read_signed(st, id).await?.map(|s| s.node()))
    }

    /// Reads node `id` from its writer's core, if the core holds it.
    async fn read_signed(&self, st: &State, id: NodeId) -> Result<Option<Signed>, Error> {
        let Some(core) = st.inputs.get(&id.writer).map(|i| i.core.clone()) else {
            return Ok(None);
        };
        if id.seq >= core.length() {
            return Ok(None);
        }
        Ok(core
            .get(id.seq)
            .await?
            .and_then(|b| Block::decode(&b, id.seq)))
    }

    /// The key writer `id` signs its nodes with: `Ok(None)` while its
    /// manifest is unknown, `Err(())` when it is not a single-signer input
    /// (no block of it can be checked: it is frozen).
    fn verifying_key(st: &mut State, id: WriterId) -> Result<Option<VerifyingKey>, ()> {
        let Some(input) = st.inputs.get_mut(&id) else {
            return Ok(None);
        };
        if input.vk.is_none() {
            let Some(m) = input.core.manifest() else {
                return Ok(None);
            };
            match m.signers.as_slice() {
                [pk] if m.quorum == 1 => {
                    input.vk = Some(VerifyingKey::from_bytes(pk).map_err(|_| ())?)
                }
                _ => return Err(()),
            }
        }
        Ok(input.vk)
    }

    /// Records a proof that a writer forked its input and gossips it.
    async fn found(&self, st: &mut State, proof: Equivocation) -> Result<(), Error> {
        let writer = proof.writer();
        let lower = st.proofs.get(&writer).map(|p| proof.seq < p.seq);
        if lower == Some(false) || proof.verify().is_err() {
            return Ok(());
        }
        let mut msg = vec![MSG_EQUIVOCATION];
        msg.extend_from_slice(&proof.encode());
        let seq = proof.seq;
        st.proofs.insert(writer, proof);
        if writer != self.inner.local_key {
            // What this peer's own chain has seen of the forker at the
            // fork position, now: its next node is the attested evidence
            // (nothing else is written before it), which names no heads.
            let seen = self.own_seen(st, writer, seq).await?;
            st.choice.set_mine(writer, seq, seen);
            self.persist_forks(st).await?;
        }
        // Kept across restarts: a peer that forgot a proof would read the
        // forker's nodes again and could decide apart from the others.
        let mut list: Vec<&Equivocation> = st.proofs.values().collect();
        list.sort_by_key(|p| p.writer());
        let bytes = postcard::to_allocvec(&list).map_err(|_| Error::Corrupt("encode proofs"))?;
        self.put_meta(&self.inner.proofs_key, bytes).await?;
        if lower.is_none() {
            self.emit(Event::Equivocation { writer });
        }
        let core = self.inner.store.get_by_key(self.inner.key).await?;
        core.send_extension(CHECKPOINT_EXTENSION, msg);
        Ok(())
    }

    /// The hash of `forker`'s node at `f` if it is in the past of this
    /// peer's own latest node (or committed here).
    async fn own_seen(
        &self,
        st: &State,
        forker: [u8; 32],
        f: u64,
    ) -> Result<Option<[u8; 32]>, Error> {
        let Some(l) = st.lin.writer_id(&forker) else {
            return Ok(None);
        };
        let target = NodeId { writer: l, seq: f };
        let own = st.lin.log_len(st.local).checked_sub(1);
        let in_past = st.lin.committed_len(l) > f
            || own.is_some_and(|s| {
                st.lin.sees(
                    NodeId {
                        writer: st.local,
                        seq: s,
                    },
                    target,
                )
            });
        if !in_past {
            return Ok(None);
        }
        Ok(self.our_node(st, forker, f).await?.map(|n| n.hash))
    }

    async fn persist_forks(&self, st: &State) -> Result<(), Error> {
        let bytes =
            postcard::to_allocvec(&st.choice).map_err(|_| Error::Corrupt("encode fork choices"))?;
        self.put_meta(&self.inner.forks_key, bytes).await
    }

    /// The fork choice for `forker` if it is a proven, current indexer
    /// (not cut, not the only indexer, not this peer): `(fork position,
    /// choice)`.
    fn fork_choice(&self, st: &State, forker: &[u8; 32]) -> Option<(u64, Choice)> {
        let p = st.proofs.get(forker)?;
        let indexers = st.base_host.indexer_keys();
        if indexers.len() < 2
            || !indexers.contains(forker)
            || st.base_host.cut(forker).is_some()
            || *forker == self.inner.local_key
        {
            return None;
        }
        let f = p.seq;
        if let Some(c) = st.choice.chosen(forker, f) {
            return Some((f, c.map_or(Choice::Silence, Choice::Fork)));
        }
        // Only at the fork point itself: a proof above it (a head pinned a
        // higher node) is lowered by fetching, and a choice made there first
        // could differ from the one made at the fork point.
        if !st.fork_points.contains(&(*forker, f)) {
            return Some((f, Choice::Open));
        }
        let mut counts: Vec<([u8; 32], usize)> = Vec::new();
        for o in indexers.iter().filter(|o| *o != forker) {
            match st.choice.attested(forker, f, o) {
                None => return Some((f, Choice::Open)),
                Some(None) => {}
                Some(Some(h)) => match counts.iter_mut().find(|(x, _)| *x == h) {
                    Some(c) => c.1 += 1,
                    None => counts.push((h, 1)),
                },
            }
        }
        let q = indexers.len() / 2 + 1;
        counts.sort_unstable();
        Some((
            f,
            counts
                .iter()
                .find(|(_, c)| *c + 1 >= q)
                .map_or(Choice::Silence, |(h, _)| Choice::Fork(*h)),
        ))
    }

    /// Checks whether each proof not chosen on yet sits at its fork point:
    /// its two nodes chain onto one node (or it is at seq 0). The nodes come
    /// from this peer's core or from fetched blocks; a missing one is
    /// wanted, and when both are held but chain onto different nodes, the
    /// nodes below are wanted, so the chain is fetched down to the fork
    /// point and the proof lowered there (`add_fork_block`). Every peer
    /// thus chooses at the same position: for a writer with two forks the
    /// fork point is unique.
    async fn check_fork_points(&self, st: &mut State) -> Result<(), Error> {
        let proofs: Vec<([u8; 32], u64, [[u8; 32]; 2])> = st
            .proofs
            .iter()
            .map(|(w, p)| (*w, p.seq, [p.a.hash, p.b.hash]))
            .collect();
        let indexers = st.base_host.indexer_keys();
        for (w, s, hashes) in proofs {
            // Only forking indexers get a fork choice.
            if !indexers.contains(&w)
                || st.base_host.cut(&w).is_some()
                || st.fork_points.contains(&(w, s))
                || st.choice.chosen(&w, s).is_some()
            {
                continue;
            }
            let Some(below) = s.checked_sub(1) else {
                st.fork_points.insert((w, s));
                continue;
            };
            let mut prevs = Vec::with_capacity(2);
            for h in hashes {
                match self.fork_node_prev(st, w, s, h).await? {
                    Some(prev) => prevs.push(prev),
                    None => self.want_fork(st, (w, s, h)).await?,
                }
            }
            if let [x, y] = prevs[..] {
                if x == y {
                    st.fork_points.insert((w, s));
                } else {
                    let ours = self.our_node(st, w, below).await?.map(|n| n.hash);
                    for prev in [x, y] {
                        if ours != Some(prev) {
                            self.want_fork(st, (w, below, prev)).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The `prev` of node `(key, seq, hash)` if this peer holds that node
    /// (fetched, or in the writer's core).
    async fn fork_node_prev(
        &self,
        st: &State,
        key: [u8; 32],
        seq: u64,
        hash: [u8; 32],
    ) -> Result<Option<[u8; 32]>, Error> {
        if let Some(b) = st.forks.get(&(key, seq, hash)) {
            return Ok(Block::decode(&b.bytes, seq).map(|s| s.block.prev));
        }
        let Some(writer) = st.lin.writer_id(&key) else {
            return Ok(None);
        };
        Ok(self
            .read_signed(st, NodeId { writer, seq })
            .await?
            .filter(|b| b.hash == hash)
            .map(|b| b.block.prev))
    }

    /// Fixes (and stores) every fork choice whose attestations are all in,
    /// and notes whether this peer's core holds each chosen fork.
    async fn choose(&self, st: &mut State) -> Result<(), Error> {
        self.check_fork_points(st).await?;
        let forkers: Vec<[u8; 32]> = st.proofs.keys().copied().collect();
        let mut changed = false;
        for w in forkers {
            match self.fork_choice(st, &w) {
                Some((f, c)) if c != Choice::Open => {
                    if st.choice.chosen(&w, f).is_none() {
                        let x = match c {
                            Choice::Fork(h) => Some(h),
                            _ => None,
                        };
                        st.choice.chosen.push((w, f, x));
                        changed = true;
                    }
                    if let Choice::Fork(h) = c {
                        let ours = self.our_core_node(st, w, f).await?;
                        st.on_chosen.insert(w, ours == Some(h));
                    }
                }
                _ => {}
            }
        }
        if changed {
            self.persist_forks(st).await?;
        }
        Ok(())
    }

    /// Whether this peer must not commit because of a forking indexer:
    /// its fork choice is still open, or another fork than the one this
    /// peer's core holds was chosen (its DAG lacks the chosen fork's
    /// nodes, so it could skip a leader the others decided: it waits for a
    /// checkpoint past the cut instead, `needs_fast_forward`).
    fn any_open(&self, st: &State) -> bool {
        st.proofs.keys().any(|w| match self.fork_choice(st, w) {
            Some((_, Choice::Open)) => true,
            Some((_, Choice::Fork(_))) => st.on_chosen.get(w) != Some(&true),
            _ => false,
        })
    }

    /// The hash of node `seq` of `key` in its core here.
    async fn our_core_node(
        &self,
        st: &State,
        key: [u8; 32],
        seq: u64,
    ) -> Result<Option<[u8; 32]>, Error> {
        let Some(writer) = st.lin.writer_id(&key) else {
            return Ok(None);
        };
        Ok(self
            .read_signed(st, NodeId { writer, seq })
            .await?
            .map(|b| b.hash))
    }

    /// Whether node `(key, seq, hash)` is on another fork than the one this
    /// peer's core holds: its fetched chain reaches a position where the
    /// core holds another node. `false` while that is not known.
    async fn on_other_fork(
        &self,
        st: &State,
        key: [u8; 32],
        seq: u64,
        hash: [u8; 32],
    ) -> Result<bool, Error> {
        let (mut s, mut h) = (seq, hash);
        loop {
            if let Some(o) = self.our_core_node(st, key, s).await? {
                return Ok(o != h);
            }
            let Some(b) = st.forks.get(&(key, s, h)) else {
                return Ok(false);
            };
            let Some(prev) = Block::decode(&b.bytes, s).map(|b| b.block.prev) else {
                return Ok(false);
            };
            let Some(below) = s.checked_sub(1) else {
                return Ok(false);
            };
            (s, h) = (below, prev);
        }
    }

    /// Wants node `node` of another fork of a proven forker and, when it is
    /// newly wanted, asks the connected peers for it.
    async fn want_fork(&self, st: &mut State, node: ForkNode) -> Result<(), Error> {
        if st.proofs.contains_key(&node.0) && st.forks.want(node) {
            let core = self.inner.store.get_by_key(self.inner.key).await?;
            core.send_extension(
                CHECKPOINT_EXTENSION,
                crate::forks::request_message(MSG_FORK_WANT, &node),
            );
        }
        Ok(())
    }

    /// Input `id` waits at a node pinning a node of `forker` past what
    /// this peer's core holds: its later blocks (from `from`, each scanned
    /// once, at most [`PINS_AHEAD`] per call) likely pin higher nodes of the
    /// same fork. The highest of them is wanted now, so one answer (that
    /// node and the chain below it) brings every node those blocks will
    /// wait on, instead of one round trip per block.
    async fn want_pins_ahead(
        &self,
        st: &mut State,
        id: WriterId,
        from: u64,
        forker: [u8; 32],
    ) -> Result<(), Error> {
        let Some((core, scanned)) = st.inputs.get(&id).map(|i| (i.core.clone(), i.pins_scanned))
        else {
            return Ok(());
        };
        let held = st
            .lin
            .writer_id(&forker)
            .and_then(|w| st.inputs.get(&w))
            .map_or(0, |i| i.core.length());
        let start = from.max(scanned);
        let end = core.length().min(start.saturating_add(PINS_AHEAD));
        let mut top: Option<(u64, [u8; 32])> = None;
        let mut seq = start;
        while seq < end {
            let Some(bytes) = core.get(seq).await? else {
                break;
            };
            if let Some(b) = Block::decode(&bytes, seq) {
                for h in b.block.heads.iter().filter(|h| h.key == forker) {
                    let at = h.length - 1;
                    if at >= held && top.is_none_or(|(s, _)| at > s) {
                        top = Some((at, h.hash));
                    }
                }
            }
            seq += 1;
        }
        if let Some(i) = st.inputs.get_mut(&id) {
            i.pins_scanned = seq;
        }
        if let Some((at, hash)) = top {
            self.want_fork(st, (forker, at, hash)).await?;
        }
        Ok(())
    }

    /// Asks the connected peers again for every wanted node of other forks.
    async fn resend_fork_wants(&self, core: &Core) {
        let st = self.inner.state.lock().await;
        for node in st.forks.wants().take(64) {
            core.send_extension(
                CHECKPOINT_EXTENSION,
                crate::forks::request_message(MSG_FORK_WANT, node),
            );
        }
    }

    /// Takes in a block of another fork a peer sent: kept when it is a
    /// wanted node, signed by its writer (see `forks.rs`); then the node
    /// below it on that fork is wanted, until the chain reaches a node this
    /// peer holds.
    async fn add_fork_block(&self, key: [u8; 32], seq: u64, bytes: &[u8]) -> Result<(), Error> {
        let mut st = self.inner.state.lock().await;
        let Some(vk) = st
            .proofs
            .get(&key)
            .and_then(|p| VerifyingKey::from_bytes(&p.public_key).ok())
        else {
            return Ok(());
        };
        let Some(signed) = st.forks.offer(key, seq, bytes, &vk) else {
            return Ok(());
        };
        // This peer's node at that seq, if it holds one, differs: a proof
        // at this (lower) position.
        if let Some(o) = self.our_node(&st, key, seq).await? {
            if o.hash != signed.hash {
                let proof = Equivocation::new(vk.to_bytes(), seq, o, signed.node());
                self.found(&mut st, proof).await?;
            }
        }
        let Some(below) = seq.checked_sub(1) else {
            return Ok(());
        };
        let prev = signed.block.prev;
        let ours = self.our_node(&st, key, below).await?.map(|n| n.hash);
        if ours != Some(prev) {
            self.want_fork(&mut st, (key, below, prev)).await?;
        }
        Ok(())
    }

    /// Node `seq` of writer `key` as this peer holds it (in memory, else in
    /// the writer's core).
    async fn our_node(
        &self,
        st: &State,
        key: [u8; 32],
        seq: u64,
    ) -> Result<Option<SignedNode>, Error> {
        let Some(writer) = st.lin.writer_id(&key) else {
            return Ok(None);
        };
        self.signed_node(st, NodeId { writer, seq }).await
    }

    /// Answers a peer's want of a node of another fork, if this peer holds
    /// that node (in the writer's core or among the fetched blocks), with
    /// that node and the chain below it as far as this peer holds it (at
    /// most [`crate::forks::ANSWER_CHAIN`] nodes, highest first). The
    /// requester keeps a block only when it is wanted, and wants a block's
    /// `prev` as soon as it keeps it, so the chain down to its fork point
    /// arrives in one round trip instead of one per node; blocks below its
    /// fork point are not wanted and are dropped.
    async fn answer_fork_want(&self, core: &Core, node: ForkNode) -> Result<(), Error> {
        let mut st = self.inner.state.lock().await;
        let (key, mut seq, mut hash) = node;
        let input = st
            .lin
            .writer_id(&key)
            .and_then(|id| st.inputs.get(&id))
            .map(|i| i.core.clone());
        // A 73-byte want must not buy 256 KiB of answers at will: the chain
        // goes only for a writer proven to fork here, once per wanted node
        // (a want asked again gets that node alone, and its requester wants
        // the nodes below one by one if it lost the chain).
        let chain = st.proofs.contains_key(&key) && st.forks.answer_chain_once(node);
        let limit = if chain { crate::forks::ANSWER_CHAIN } else { 1 };
        let mut sent_bytes = 0usize;
        for _ in 0..limit {
            let mut bytes = st.forks.get(&(key, seq, hash)).map(|b| b.bytes.to_vec());
            if bytes.is_none() {
                if let Some(c) = input.as_ref().filter(|c| seq < c.length()) {
                    if let Some(b) = c.get(seq).await? {
                        if Block::decode(&b, seq).is_some_and(|s| s.hash == hash) {
                            bytes = Some(b);
                        }
                    }
                }
            }
            let Some(b) = bytes else {
                break;
            };
            let prev = Block::decode(&b, seq).map(|s| s.block.prev);
            sent_bytes += b.len();
            core.send_extension(
                CHECKPOINT_EXTENSION,
                crate::forks::block_message(MSG_FORK_BLOCK, &key, seq, &b),
            );
            match (prev, seq.checked_sub(1)) {
                (Some(p), Some(below)) if sent_bytes < crate::forks::ANSWER_BYTES => {
                    (seq, hash) = (below, p);
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// The nodes of another fork of `writer` (a proven forker) that this
    /// peer fetched because heads it read pin them: `(seq, node hash)`, by
    /// seq. Each block is verified against the hash a signed node named
    /// (the pinned node by the pin, every node below it by the `prev` of
    /// the node above), down to the fork point. They are held, not yet
    /// placed in the DAG (see `DESIGN.md`, "A forking indexer").
    pub async fn other_fork(&self, writer: [u8; 32]) -> Vec<(u64, [u8; 32])> {
        self.inner.state.lock().await.forks.list(&writer)
    }

    /// Reads every input's new blocks into the linearizer, as far as their
    /// heads are known.
    async fn pull(&self, st: &mut State) -> Result<(), Error> {
        loop {
            // Set again by the blocks that still wait in this round (a block
            // that waited in an earlier round may have been placed since).
            st.fork_blocked = false;
            st.fork_fetching = false;
            self.choose(st).await?;
            if self.silences(st) != st.silenced {
                // A new (or earlier) proof against an indexer: start the
                // uncommitted part over without its nodes from the fork on.
                self.restart_uncommitted(st);
            }
            let mut progress = false;
            let ids: Vec<WriterId> = st.inputs.keys().copied().collect();
            for id in ids {
                while self.pull_one(st, id).await? {
                    progress = true;
                }
            }
            if !progress {
                self.scan_evidence(st).await?;
                self.choose(st).await?;
                if self.silences(st) == st.silenced {
                    return Ok(());
                }
            }
        }
    }

    /// The indexers this peer holds a proof against that are not cut yet
    /// (not the only indexer, and not this peer: a peer proven to fork
    /// keeps its own view of its input), each with the seq from which its input
    /// is ignored: the lowest proven fork position, or its committed
    /// length if more of it was committed already.
    fn silences(&self, st: &State) -> Vec<([u8; 32], u64)> {
        if st.proofs.is_empty() {
            return Vec::new();
        }
        let indexers = st.base_host.indexer_keys();
        if indexers.len() < 2 {
            return Vec::new();
        }
        let mut v: Vec<([u8; 32], u64)> = st
            .proofs
            .iter()
            .filter(|(w, _)| {
                indexers.contains(*w)
                    && st.base_host.cut(w).is_none()
                    && **w != self.inner.local_key
            })
            .filter_map(|(w, p)| {
                let committed = st.lin.writer_id(w).map_or(0, |id| st.lin.committed_len(id));
                match self.fork_choice(st, w) {
                    // On the chosen fork: read as any writer.
                    Some((_, Choice::Fork(_))) if st.on_chosen.get(w) == Some(&true) => None,
                    Some((f, Choice::Fork(_))) | Some((f, Choice::Silence)) => Some((*w, f)),
                    _ => Some((*w, p.seq.max(committed))),
                }
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Reads ahead, past the blocks that wait, every input block held here
    /// (once) and takes in the proofs of evidence nodes: a peer replaying
    /// a history learns the fork positions the writers of that history
    /// proved before it reaches them, and so ignores the same nodes of a
    /// forking indexer as they did.
    async fn scan_evidence(&self, st: &mut State) -> Result<(), Error> {
        let ids: Vec<WriterId> = st.inputs.keys().copied().collect();
        for id in ids {
            if id == st.local {
                continue;
            }
            let Some((core, frozen, from)) = st
                .inputs
                .get(&id)
                .map(|i| (i.core.clone(), i.frozen, i.scanned))
            else {
                continue;
            };
            let mut seq = from.max(st.lin.log_len(id));
            if frozen || seq >= core.length() {
                continue;
            }
            let Ok(Some(vk)) = Self::verifying_key(st, id) else {
                continue;
            };
            while seq < core.length() {
                let Some(bytes) = core.get(seq).await? else {
                    break;
                };
                // Only evidence blocks are verified here (the signature check
                // of the others waits for their turn in `pull_one`).
                if let Some(signed) = Block::decode(&bytes, seq) {
                    if let Some((proof, seen)) = signed.block.body.evidence() {
                        if verify_node(&vk, &signed.hash, &signed.sig) {
                            let author = st.lin.key(id).unwrap_or([0; 32]);
                            self.take_evidence(st, author, proof.clone(), seen).await?;
                        }
                    }
                }
                seq += 1;
            }
            if let Some(i) = st.inputs.get_mut(&id) {
                i.scanned = seq;
            }
        }
        Ok(())
    }

    /// Takes in an evidence node's proof and, for an attested one, its
    /// author's attestation (the first of that author at that position).
    async fn take_evidence(
        &self,
        st: &mut State,
        author: [u8; 32],
        proof: Equivocation,
        seen: Option<Option<[u8; 32]>>,
    ) -> Result<(), Error> {
        if proof.verify().is_err() {
            return Ok(());
        }
        let (forker, f) = (proof.writer(), proof.seq);
        self.found(st, proof).await?;
        if let Some(seen) = seen {
            if st.choice.attested(&forker, f, &author).is_none() {
                st.choice.record(forker, f, author, seen);
                self.persist_forks(st).await?;
            }
        }
        Ok(())
    }

    fn silenced_from(st: &State, key: &[u8; 32]) -> Option<u64> {
        st.silenced.iter().find(|(k, _)| k == key).map(|(_, s)| *s)
    }

    fn freeze(st: &mut State, id: WriterId) {
        if let Some(i) = st.inputs.get_mut(&id) {
            i.frozen = true;
        }
    }

    /// Reads the next block of input `id` into the linearizer; `true` when
    /// it was added. A block every peer rejects alike freezes the input; one
    /// that cannot be placed yet (missing heads, a head on another fork of
    /// a writer not cut yet) waits.
    async fn pull_one(&self, st: &mut State, id: WriterId) -> Result<bool, Error> {
        let Some((core, frozen)) = st.inputs.get(&id).map(|i| (i.core.clone(), i.frozen)) else {
            return Ok(false);
        };
        let key = st.lin.key(id).unwrap_or([0; 32]);
        let seq = st.lin.log_len(id);
        if frozen
            || seq >= core.length()
            || st.base_host.cut(&key).is_some_and(|c| seq >= c.at)
            || Self::silenced_from(st, &key).is_some_and(|s| seq >= s)
        {
            return Ok(false);
        }
        let Some(bytes) = core.get(seq).await? else {
            return Ok(false);
        };
        let vk = match Self::verifying_key(st, id) {
            Ok(Some(vk)) => vk,
            Ok(None) => return Ok(false),
            Err(()) => {
                Self::freeze(st, id);
                return Ok(false);
            }
        };
        let Some(signed) = Block::decode(&bytes, seq).filter(|s| verify_node(&vk, &s.hash, &s.sig))
        else {
            Self::freeze(st, id);
            return Ok(false);
        };
        // The block must chain onto the node this peer holds before it.
        if let Some(p) = seq.checked_sub(1) {
            let prev_id = NodeId { writer: id, seq: p };
            let Some(ours) = self.signed_node(st, prev_id).await? else {
                return Ok(false);
            };
            if ours.hash != signed.block.prev {
                let core_prev = self.read_signed(st, prev_id).await?;
                match core_prev {
                    Some(other) if other.hash == ours.hash => {
                        // Same log, bad link: every peer sees this block.
                        Self::freeze(st, id);
                    }
                    Some(other) if verify_node(&vk, &other.hash, &other.sig) => {
                        // The core moved to another fork under us.
                        let proof = Equivocation::new(vk.to_bytes(), p, ours, other.node());
                        self.found(st, proof).await?;
                        st.fork_blocked = true;
                    }
                    _ => {}
                }
                return Ok(false);
            }
        }
        let mut refs = Vec::with_capacity(signed.block.heads.len());
        let mut exact = true;
        for h in &signed.block.heads {
            let w = self.input(st, h.key).await?;
            let node = NodeId {
                writer: w,
                seq: h.length - 1,
            };
            let cut = st.base_host.cut(&h.key);
            let named = SignedNode {
                hash: h.hash,
                signature: h.sig,
            };
            if let Some(p) = Self::silenced_from(st, &h.key)
                .filter(|s| node.seq >= *s)
                .and_then(|_| st.proofs.get(&h.key))
            {
                // A silenced indexer's node from its fork on: dropped from
                // this node's parents on every peer that holds the proof,
                // whichever fork it names (the signature is still checked).
                let ok = VerifyingKey::from_bytes(&p.public_key)
                    .is_ok_and(|wk| verify_node(&wk, &named.hash, &named.signature));
                if !ok {
                    Self::freeze(st, id);
                    return Ok(false);
                }
                // A node of the fork this peer's core does not hold: fetch
                // it (and the chain below it) from the peers that do.
                let ours = self.read_signed(st, node).await?.map(|b| b.hash);
                if ours.is_some_and(|o| o != named.hash) {
                    self.want_fork(st, (h.key, node.seq, named.hash)).await?;
                }
                // With another fork chosen than the one this core holds,
                // this peer places the rest alike (so it can keep acking,
                // its acks are votes the others need) but commits nothing:
                // it waits for a checkpoint past the cut.
                exact = false;
                continue;
            }
            // The named node as this peer holds it, and its height when it
            // is below the linearizer's window.
            let (ours, height) = match st.lin.presence(node) {
                Presence::Present => (held(st, node), None),
                Presence::Pruned => match self.read_signed(st, node).await? {
                    Some(b) => {
                        if let Some(i) = st.inputs.get_mut(&w) {
                            i.wants.remove(&node.seq);
                        }
                        (Some(b.node()), Some(b.block.height))
                    }
                    None => {
                        if let Some(input) = st.inputs.get_mut(&w) {
                            // Below the download range (or not arrived
                            // after a fast-forward): fetch that block.
                            let core = input.core.clone();
                            input
                                .wants
                                .entry(node.seq)
                                .or_insert_with(|| core.download(node.seq, node.seq + 1));
                        }
                        (None, None)
                    }
                },
                Presence::Absent => (None, None),
            };
            match (ours, cut) {
                (Some(o), _) if o.hash == named.hash => {
                    // Same node: the signature must be the writer's too
                    // (checked in full only when the bytes differ).
                    if o.signature != named.signature {
                        let ok = match Self::verifying_key(st, w) {
                            Ok(Some(wk)) => verify_node(&wk, &named.hash, &named.signature),
                            Ok(None) => return Ok(false),
                            Err(()) => false,
                        };
                        if !ok {
                            Self::freeze(st, id);
                            return Ok(false);
                        }
                    }
                    refs.push(HeadRef { node, height });
                }
                (Some(o), None)
                    if self
                        .fork_choice(st, &h.key)
                        .is_some_and(|(f, c)| matches!(c, Choice::Fork(_)) && node.seq >= f) =>
                {
                    // The fork this peer holds was chosen: a node of
                    // another fork from the fork position on is dropped
                    // from this node's parents (its signature checked).
                    let ok = match Self::verifying_key(st, w) {
                        Ok(Some(wk)) => verify_node(&wk, &named.hash, &named.signature),
                        Ok(None) => return Ok(false),
                        Err(()) => false,
                    };
                    if !ok {
                        Self::freeze(st, id);
                        return Ok(false);
                    }
                    let _ = o;
                    exact = false;
                }
                (Some(o), None) => {
                    // Another fork of that writer: a proof if the writer
                    // signed it, and the block waits until the cut.
                    match Self::verifying_key(st, w) {
                        Ok(Some(wk)) if verify_node(&wk, &named.hash, &named.signature) => {
                            let proof = Equivocation::new(wk.to_bytes(), node.seq, o, named);
                            self.found(st, proof).await?;
                            self.want_fork(st, (h.key, node.seq, named.hash)).await?;
                            st.fork_blocked = true;
                            return Ok(false);
                        }
                        Ok(None) => return Ok(false),
                        _ => {
                            Self::freeze(st, id);
                            return Ok(false);
                        }
                    }
                }
                (None, None)
                    if self
                        .fork_choice(st, &h.key)
                        .is_some_and(|(f, c)| matches!(c, Choice::Fork(_)) && node.seq >= f) =>
                {
                    // The fork this peer holds was chosen, and the node is
                    // past what its core holds: dropped once its fetched
                    // chain shows it is on another fork; until then it
                    // waits (it may extend this fork).
                    self.want_fork(st, (h.key, node.seq, named.hash)).await?;
                    if !self.on_other_fork(st, h.key, node.seq, named.hash).await? {
                        st.fork_fetching = true;
                        self.want_pins_ahead(st, id, seq + 1, h.key).await?;
                        return Ok(false);
                    }
                    let ok = match Self::verifying_key(st, w) {
                        Ok(Some(wk)) => verify_node(&wk, &named.hash, &named.signature),
                        Ok(None) => return Ok(false),
                        Err(()) => false,
                    };
                    if !ok {
                        Self::freeze(st, id);
                        return Ok(false);
                    }
                    exact = false;
                }
                (None, None) => {
                    // Not read yet; if the writer is known to fork, its
                    // core may never hold this fork here.
                    st.fork_blocked |= st.proofs.contains_key(&h.key);
                    return Ok(false);
                }
                (None, Some(c)) if h.length <= c.at => return Ok(false),
                (_, Some(c)) => {
                    // A node of a cut writer past its cut, or on a fork that
                    // was not indexed: dropped from this node's parents (the
                    // signature is still checked, as on a peer that holds it).
                    let ok = VerifyingKey::from_bytes(&c.public_key)
                        .is_ok_and(|wk| verify_node(&wk, &named.hash, &named.signature));
                    if !ok {
                        Self::freeze(st, id);
                        return Ok(false);
                    }
                    exact = false;
                }
            }
        }
        match st
            .lin
            .add_node_with(id, seq, &refs, signed.block.height, exact)
        {
            Ok(()) => {
                if let Some((proof, seen)) = signed.block.body.evidence() {
                    let proof = proof.clone();
                    self.take_evidence(st, key, proof, seen).await?;
                }
                st.blocks
                    .insert(NodeId { writer: id, seq }, Arc::new(signed));
                Ok(true)
            }
            Err(crate::linearizer::LinearizeError::Missing(_)) => Ok(false),
            Err(_) => {
                Self::freeze(st, id);
                Ok(false)
            }
        }
    }

    /// Linearizes, applies, commits, acks; repeats until nothing changes.
    async fn settle(&self, st: &mut State) -> Result<(), Error> {
        loop {
            let before = (st.lin.committed_count(), st.lin.uncommitted_count());
            let mut committed_any = false;
            loop {
                let order = st.lin.order();
                self.apply_order(st, &order, order.final_len).await?;
                let (n, changed, cut) = {
                    let mut n = 0;
                    let (mut changed, mut cut) = (false, false);
                    let mut prev = st.base_host.indexer_keys();
                    let mut prev_cuts = st.base_host.cuts();
                    for a in st.applied.iter().take(order.final_len) {
                        n += 1;
                        let now = a.host.indexer_keys();
                        let now_cuts = a.host.cuts();
                        changed = now != prev;
                        cut = now_cuts != prev_cuts;
                        if changed || cut {
                            break;
                        }
                        (prev, prev_cuts) = (now, now_cuts);
                    }
                    (n, changed, cut)
                };
                // Nothing is committed while a forking indexer's fork
                // choice waits for attestations.
                if n == 0 || self.any_open(st) {
                    break;
                }
                st.lin.commit(&order, n);
                let last: Vec<Applied> = st.applied.drain(..n).collect();
                for a in &last {
                    if let Some(b) = st.blocks.remove(&a.node) {
                        st.tips.insert(a.node.writer, (a.node.seq, b.node()));
                    }
                }
                let outgoing = st.base_host.indexer_keys();
                if let Some(a) = last.last() {
                    st.base_host = a.host.clone();
                    st.base_views = a.views.clone();
                    st.base_rejected = a.rejected;
                }
                committed_any = true;
                if changed {
                    self.record_transition(st, &outgoing).await?;
                    self.set_indexers(st);
                    // New writers may need their inputs opened.
                    let keys: Vec<[u8; 32]> = st.base_host.writers.iter().map(|w| w.key).collect();
                    for k in keys {
                        self.input(st, k).await?;
                    }
                }
                if cut || self.silences(st) != st.silenced {
                    self.rebuild(st).await?;
                }
                // The next decision may already be made.
            }
            if committed_any {
                self.persist(st).await?;
            }
            // Open inputs of writers added in the tail, and read them.
            let keys: Vec<[u8; 32]> = st
                .tip_host()
                .writers
                .iter()
                .chain(st.base_host.writers.iter())
                .map(|w| w.key)
                .collect();
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
            if let Some(proof) = self.evidence_to_write(st) {
                self.write_evidence(st, proof).await?;
                continue;
            }
            if self.should_ack(st) {
                self.write_local(st, Body::Ack).await?;
                continue;
            }
            let after = (st.lin.committed_count(), st.lin.uncommitted_count());
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

    /// Writes evidence of `proof` into this peer's input: attested (no
    /// heads, with this peer's attestation) by an indexer against an
    /// indexer, plain otherwise.
    async fn write_evidence(&self, st: &mut State, proof: Equivocation) -> Result<(), Error> {
        let (forker, f) = (proof.writer(), proof.seq);
        st.evidence_written.insert(forker, f);
        let attest = st.base_host.is_indexer(&self.inner.local_key)
            && st.base_host.is_indexer(&forker)
            && forker != self.inner.local_key;
        let body = match st.choice.mine(&forker, f) {
            Some(seen) if attest => {
                st.choice.record(forker, f, self.inner.local_key, seen);
                self.persist_forks(st).await?;
                Body::Attested(Box::new(crate::node::Attested { proof, seen }))
            }
            _ => Body::Evidence(Box::new(proof)),
        };
        match self.write_local(st, body).await {
            // This peer's own input is ignored by everyone: the proof still
            // travels by gossip.
            Err(Error::InputRejected) => Ok(()),
            r => r,
        }
    }

    /// A proof this peer holds against a writer not cut yet, that this peer
    /// (a writer) has not written into its input yet (nor one with a fork
    /// position as low).
    fn evidence_to_write(&self, st: &State) -> Option<Equivocation> {
        if !st.base_host.is_writer(&self.inner.local_key) {
            return None;
        }
        let indexers = st.base_host.indexer_keys();
        st.proofs
            .iter()
            .filter(|(w, p)| {
                st.evidence_written.get(*w).is_none_or(|s| p.seq < *s)
                    && st.base_host.cut(w).is_none()
                    && indexers.as_slice() != [**w]
            })
            .min_by_key(|(w, _)| **w)
            .map(|(_, p)| p.clone())
    }

    /// Keeps the checkpoint at which the indexer set just changed, signed by
    /// this peer if it was one of the `outgoing` indexers, with what was
    /// heard of the others' signatures, and stores the chain.
    async fn record_transition(&self, st: &mut State, outgoing: &[[u8; 32]]) -> Result<(), Error> {
        let mut t = SignedCheckpoint::unsigned(self.checkpoint_of(st));
        if outgoing.contains(&self.inner.local_key) {
            t.sign(&self.inner.key_pair);
        }
        st.pending_transitions.retain(|p| t.merge(p).is_err());
        st.transitions.retain(|o| o.checkpoint != t.checkpoint);
        st.transitions.push(t);
        self.persist_chain(st).await
    }

    async fn persist_chain(&self, st: &State) -> Result<(), Error> {
        let bytes =
            postcard::to_allocvec(&st.transitions).map_err(|_| Error::Corrupt("encode chain"))?;
        self.put_meta(&self.inner.chain_key, bytes).await
    }

    /// Takes in signatures over a transition checkpoint heard from a peer.
    async fn add_transition(&self, mut t: SignedCheckpoint) -> Result<(), Error> {
        t.retain_valid();
        if t.checkpoint.base != self.inner.key || t.signatures.is_empty() {
            return Ok(());
        }
        let mut st = self.inner.state.lock().await;
        // Only signatures of writers this peer knows (so strangers cannot
        // fill the pending slots).
        let known = |k: &[u8; 32]| st.base_host.writers().iter().any(|w| &w.key == k);
        if !t
            .signatures
            .iter()
            .any(|s| known(&crate::checkpoint::writer_key(&s.public_key)))
        {
            return Ok(());
        }
        if let Some(o) = st
            .transitions
            .iter_mut()
            .find(|o| o.checkpoint == t.checkpoint)
        {
            let before = o.signatures.len();
            let _ = o.merge(&t);
            if o.signatures.len() != before {
                self.persist_chain(&st).await?;
            }
        } else if t.checkpoint.indexed_length > st.lin.committed_count() {
            if let Some(p) = st
                .pending_transitions
                .iter_mut()
                .find(|p| p.checkpoint == t.checkpoint)
            {
                let _ = p.merge(&t);
            } else if st.pending_transitions.len() < MAX_OFFERS {
                st.pending_transitions.push(t);
            }
        }
        Ok(())
    }

    /// The chain of transition checkpoints this peer holds, by indexed
    /// length: a joiner whose trusted indexers (the bootstrap writer) are
    /// no longer indexers follows it (see [`follow_chain`]).
    ///
    /// [`follow_chain`]: crate::checkpoint::follow_chain
    pub async fn checkpoint_chain(&self) -> Vec<SignedCheckpoint> {
        let st = self.inner.state.lock().await;
        let mut v = st.transitions.clone();
        v.sort_by_key(|t| t.checkpoint.indexed_length);
        v
    }

    /// Starts the uncommitted part over after a writer was cut: a
    /// linearizer from the committed frontier, and every input re-read
    /// (nodes of the cut writer past its cut are not, and heads naming them
    /// are dropped), as every peer does at this same indexed point.
    async fn rebuild(&self, st: &mut State) -> Result<(), Error> {
        self.restart_uncommitted(st);
        self.pull(st).await
    }

    /// The first half of [`Autobase::rebuild`]: an empty uncommitted part
    /// (the views are rolled back by the next `apply_order`, which finds
    /// nothing applied) and the current silences.
    fn restart_uncommitted(&self, st: &mut State) {
        st.lin = Linearizer::from_checkpoint(&st.lin.checkpoint(), st.lin.committed_count());
        st.blocks.clear();
        st.applied.clear();
        for i in st.inputs.values_mut() {
            i.frozen = false;
        }
        st.silenced = self.silences(st);
        self.set_indexers(st);
    }

    /// An indexer acks when some uncommitted node carries values and its own
    /// latest node does not cover everything it knows.
    fn should_ack(&self, st: &State) -> bool {
        if !st.base_host.is_indexer(&self.inner.local_key) {
            return false;
        }
        // `blocks` holds exactly the uncommitted nodes.
        let pending_values = st
            .blocks
            .values()
            .any(|b| !matches!(b.block.body, Body::Ack));
        if !pending_values {
            return false;
        }
        // Not while some of its own input waits (it can write again once
        // its own nodes are placed, e.g. after a fast-forward).
        let own_placed = st
            .inputs
            .get(&st.local)
            .is_some_and(|i| i.core.length() == st.lin.log_len(st.local));
        own_placed && !st.lin.next_heads(st.local).0.is_empty()
    }

    /// Brings the applied list in line with `order`: rolls views back to the
    /// first changed position, then applies the rest.
    async fn apply_order(&self, st: &mut State, order: &Order, upto: usize) -> Result<(), Error> {
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
        for &id in order.nodes.iter().take(upto).skip(p) {
            self.apply_node(st, id).await?;
        }
        Ok(())
    }

    /// Applies the optimistic tail too (it is applied lazily: only reads of
    /// the tip need it, and every commit could reorder it).
    async fn materialize(&self, st: &mut State) -> Result<(), Error> {
        let order = st.lin.order();
        self.apply_order(st, &order, order.nodes.len()).await
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
        let body = block.as_deref().map(|b| &b.block.body);
        if matches!(body, None | Some(Body::Ack)) {
            st.applied.push(entry);
            return Ok(());
        }
        if !host.is_writer(&key) {
            entry.rejected += 1;
            st.applied.push(entry);
            return Ok(());
        }
        let values = match body {
            Some(Body::Values(v)) => v,
            Some(Body::Evidence(_) | Body::Attested(_)) => {
                let Some((proof, _)) = body.and_then(|b| b.evidence()) else {
                    st.applied.push(entry);
                    return Ok(());
                };
                // Cut the writer after its nodes ordered so far: a function
                // of the order, so the same on every peer.
                let w = proof.writer();
                if proof.verify().is_ok() && host.cut(&w).is_none() {
                    let at = st.lin.writer_id(&w).map_or(0, |wid| {
                        st.lin.committed_len(wid)
                            + st.applied.iter().filter(|a| a.node.writer == wid).count() as u64
                    });
                    let mut new_host = (*host).clone();
                    if new_host.cut_writer(w, at, proof.public_key) {
                        entry.host = Arc::new(new_host);
                    }
                }
                st.applied.push(entry);
                return Ok(());
            }
            _ => {
                st.applied.push(entry);
                return Ok(());
            }
        };
        let heads: Vec<([u8; 32], u64)> = block
            .as_deref()
            .map(|b| b.block.heads.iter().map(|h| (h.key, h.length)).collect())
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
            tips: self.committed_tips(st),
        };
        let bytes = postcard::to_allocvec(&rec).map_err(|_| Error::Corrupt("encode record"))?;
        self.put_meta(&self.inner.record_key, bytes).await
    }

    /// Writes one meta value (the system record, the checkpoint chain, the
    /// equivocation proofs) to the store's storage.
    async fn put_meta(&self, key: &[u8], value: Vec<u8>) -> Result<(), Error> {
        let mut b = StorageBatch::new();
        b.push(Op::PutMeta {
            key: key.to_vec(),
            value,
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

/// Reads one meta value written by `Autobase::put_meta` and decodes it;
/// `what` names it in the error when it does not decode.
async fn get_meta<T: serde::de::DeserializeOwned>(
    storage: &dyn hypercore_rs::Storage,
    key: &[u8],
    what: &'static str,
) -> Result<Option<T>, Error> {
    match storage.meta(key).await.map_err(hypercore_rs::Error::from)? {
        Some(bytes) => postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|_| Error::Corrupt(what)),
        None => Ok(None),
    }
}

/// The extension message name on the bootstrap writer's input core that
/// carries checkpoint requests and answers.
pub const CHECKPOINT_EXTENSION: &str = "autobase/checkpoint";

const MSG_REQUEST: u8 = 0;
const MSG_OFFER: u8 = 1;
const MSG_BLOCKS: u8 = 2;
const MSG_EQUIVOCATION: u8 = 3;
const MSG_TRANSITION: u8 = 4;
const MSG_FORK_WANT: u8 = 5;
/// First and longest delay between fast-forward attempts of a peer that
/// needs one ([`Autobase::checkpoint_duty`]).
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// The most later blocks of an input scanned at once for pins of another
/// fork ([`Autobase::want_pins_ahead`]).
const PINS_AHEAD: u64 = 256;
const MSG_FORK_BLOCK: u8 = 6;
/// Block bytes per answer message (one larger block goes alone).
const CHUNK_BYTES: usize = 256 * 1024;
/// Distinct checkpoints a joiner keeps while waiting (forged ones included).
const MAX_OFFERS: usize = 16;
/// Transition checkpoints a joiner keeps while gathering a chain.
const MAX_CHAIN: usize = 256;

fn blocks_message(id: &[u8; 32], view: u32, start: u64, blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut m = vec![MSG_BLOCKS];
    m.extend_from_slice(id);
    m.extend_from_slice(&view.to_le_bytes());
    m.extend_from_slice(&start.to_le_bytes());
    m.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        m.extend_from_slice(&(b.len() as u32).to_le_bytes());
        m.extend_from_slice(b);
    }
    m
}

/// Every view's blocks, in view order.
type ViewBlocks = Vec<Vec<Vec<u8>>>;

/// A request for the checkpoint `id` by a peer that holds the first
/// `have[v]` blocks of each view `v` of it.
fn request_message(id: &[u8; 32], have: &[u64]) -> Vec<u8> {
    let mut m = vec![MSG_REQUEST];
    m.extend_from_slice(id);
    m.extend_from_slice(&(have.len() as u32).to_le_bytes());
    for h in have {
        m.extend_from_slice(&h.to_le_bytes());
    }
    m
}

/// Decodes a request body (after the type byte): `None` for a plain
/// request (or a malformed one), which gets everything.
fn decode_request(b: &[u8]) -> Option<([u8; 32], Vec<u64>)> {
    let id: [u8; 32] = b.get(..32)?.try_into().ok()?;
    let n = u32::from_le_bytes(b.get(32..36)?.try_into().ok()?) as usize;
    let rest = b.get(36..)?;
    if rest.len() != n.checked_mul(8)? {
        return None;
    }
    let have = rest
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Some((id, have))
}

/// Decodes a blocks message body (after the type byte); `None` when malformed.
/// A blocks message: checkpoint id, view index, first block index, blocks.
type BlocksMessage = ([u8; 32], u32, u64, Vec<Vec<u8>>);

fn decode_blocks(b: &[u8]) -> Option<BlocksMessage> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Some(h)
    }
    let mut b = b;
    let id: [u8; 32] = take(&mut b, 32)?.try_into().ok()?;
    let view = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
    let start = u64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
    let count = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
    let mut blocks = Vec::new();
    for _ in 0..count {
        let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
        blocks.push(take(&mut b, len)?.to_vec());
    }
    b.is_empty().then_some((id, view, start, blocks))
}

/// A checkpoint a joiner heard of, with the view blocks gathered so far.
struct Offer {
    signed: SignedCheckpoint,
    blocks: Vec<Vec<Option<Vec<u8>>>>,
}

impl Offer {
    /// Stores `blocks` of view `view` from index `start` (slots are made
    /// on the first call; blocks out of range are dropped).
    fn fill(&mut self, view: u32, start: u64, blocks: Vec<Vec<u8>>) {
        if self.blocks.is_empty() {
            self.blocks = self
                .signed
                .checkpoint
                .views
                .iter()
                .map(|v| vec![None; v.length as usize])
                .collect();
        }
        let Some(slots) = self.blocks.get_mut(view as usize) else {
            return;
        };
        for (i, b) in blocks.into_iter().enumerate() {
            if let Some(slot) = usize::try_from(start)
                .ok()
                .and_then(|s| s.checked_add(i))
                .and_then(|j| slots.get_mut(j))
            {
                *slot = Some(b);
            }
        }
    }

    /// How many leading blocks of each view are in.
    fn have(&self) -> Vec<u64> {
        self.blocks
            .iter()
            .map(|v| v.iter().take_while(|b| b.is_some()).count() as u64)
            .collect()
    }

    /// Every view's blocks, once all are in.
    fn complete(&self) -> Option<Vec<Vec<Vec<u8>>>> {
        if self.blocks.len() != self.signed.checkpoint.views.len() {
            return None;
        }
        self.blocks
            .iter()
            .map(|v| v.iter().cloned().collect::<Option<Vec<Vec<u8>>>>())
            .collect()
    }
}

impl Autobase {
    /// Answers checkpoint requests from peers on the replication session
    /// until the extension channel closes, with the signed checkpoint of
    /// this peer's indexed state, then the view blocks up to that state in
    /// bounded-size messages. The signatures are this peer's own (if it is
    /// an indexer) and the valid ones it heard in other peers' answers over
    /// the same checkpoint, so indexers gather each other's signatures and
    /// a non-indexer that heard a quorum relays it. A peer with no signature
    /// for its state stays silent. Run it as a background task next to
    /// [`Autobase::replicate`].
    pub async fn serve_checkpoints(&self) -> Result<(), Error> {
        let core = self.inner.store.get_by_key(self.inner.key).await?;
        let mut rx = core.extension(CHECKPOINT_EXTENSION);
        let mut events = Box::pin(self.events()).fuse();
        let mut heard: HashMap<[u8; 32], SignedCheckpoint> = HashMap::new();
        let mut pushed: Option<u64> = None;
        let mut pushed_chain: HashSet<([u8; 32], usize)> = HashSet::new();
        // The view blocks of the last checkpoint served, by checkpoint id.
        let mut cache: Option<([u8; 32], ViewBlocks)> = None;
        self.push_signature(&core, &mut pushed).await;
        loop {
            let msg = futures::select! {
                m = rx.next() => match m {
                    Some((_peer, msg)) => msg,
                    None => return Ok(()),
                },
                e = events.next() => {
                    if let Some(Event::Updated { .. }) = e {
                        self.push_signature(&core, &mut pushed).await;
                        self.resend_fork_wants(&core).await;
                        for t in self.checkpoint_chain().await {
                            let mark = (t.checkpoint.signable(), t.signatures.len());
                            if !t.signatures.is_empty() && pushed_chain.insert(mark) {
                                let mut m = vec![MSG_TRANSITION];
                                m.extend_from_slice(&t.encode());
                                core.send_extension(CHECKPOINT_EXTENSION, m);
                            }
                        }
                    }
                    continue;
                }
            };
            let have = match msg.split_first() {
                Some((&MSG_REQUEST, body)) => decode_request(body),
                Some((&MSG_EQUIVOCATION, body)) => {
                    if let Ok(p) = Equivocation::decode(body) {
                        self.add_equivocation(p).await?;
                    }
                    continue;
                }
                Some((&MSG_TRANSITION, body)) => {
                    if let Ok(t) = SignedCheckpoint::decode(body) {
                        self.add_transition(t).await?;
                    }
                    continue;
                }
                Some((&MSG_FORK_WANT, body)) => {
                    if let Some(node) = crate::forks::decode_request(body) {
                        self.answer_fork_want(&core, node).await?;
                    }
                    continue;
                }
                Some((&MSG_FORK_BLOCK, body)) => {
                    if let Some((key, seq, bytes)) = crate::forks::decode_block(body) {
                        self.add_fork_block(key, seq, bytes).await?;
                    }
                    continue;
                }
                Some((&MSG_OFFER, body)) => {
                    if let Ok(mut s) = SignedCheckpoint::decode(body) {
                        s.retain_valid();
                        if s.checkpoint.base != self.inner.key || s.signatures.is_empty() {
                            continue;
                        }
                        let id = s.checkpoint.signable();
                        if let Some(h) = heard.get_mut(&id) {
                            let _ = h.merge(&s);
                        } else {
                            if heard.len() >= MAX_OFFERS {
                                heard.clear();
                            }
                            heard.insert(id, s);
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let mut signed = match self.sign_checkpoint().await {
                Ok(s) => s,
                Err(_) => SignedCheckpoint::unsigned(self.checkpoint().await),
            };
            let id = signed.checkpoint.signable();
            if let Some(h) = heard.get(&id) {
                let _ = signed.merge(h);
            }
            if signed.signatures.is_empty() {
                continue;
            }
            let mut offer = vec![MSG_OFFER];
            offer.extend_from_slice(&signed.encode());
            core.send_extension(CHECKPOINT_EXTENSION, offer);
            for t in self.checkpoint_chain().await {
                if !t.signatures.is_empty() {
                    let mut m = vec![MSG_TRANSITION];
                    m.extend_from_slice(&t.encode());
                    core.send_extension(CHECKPOINT_EXTENSION, m);
                }
            }
            if cache.as_ref().is_none_or(|(cid, _)| *cid != id) {
                let mut views = Vec::with_capacity(signed.checkpoint.views.len());
                for vc in &signed.checkpoint.views {
                    let mut blocks = self.view_blocks(&vc.name).await?;
                    blocks.truncate(vc.length as usize);
                    views.push(blocks);
                }
                cache = Some((id, views));
            }
            let Some((_, views)) = &cache else {
                continue;
            };
            // Only what the requester lacks, when it gathers this same
            // checkpoint; everything otherwise.
            let have = have.filter(|(rid, _)| *rid == id).map(|(_, h)| h);
            for (v, blocks) in views.iter().enumerate() {
                let from = have
                    .as_ref()
                    .and_then(|h| h.get(v))
                    .map_or(0, |&n| usize::try_from(n).unwrap_or(usize::MAX));
                let mut start = from.min(blocks.len());
                while start < blocks.len() {
                    let mut end = start;
                    let mut size = 0usize;
                    while end < blocks.len()
                        && (end == start || size + blocks[end].len() <= CHUNK_BYTES)
                    {
                        size += blocks[end].len();
                        end += 1;
                    }
                    core.send_extension(
                        CHECKPOINT_EXTENSION,
                        blocks_message(&id, v as u32, start as u64, &blocks[start..end]),
                    );
                    start = end;
                }
            }
        }
    }

    /// Broadcasts this peer's signature over its indexed state (if it is an
    /// indexer and has not pushed one for this indexed length yet), so
    /// other indexers and joiners gather a quorum without asking.
    async fn push_signature(&self, core: &Core, pushed: &mut Option<u64>) {
        if let Ok(s) = self.sign_checkpoint().await {
            let length = s.checkpoint.indexed_length;
            if *pushed != Some(length) {
                *pushed = Some(length);
                let mut offer = vec![MSG_OFFER];
                offer.extend_from_slice(&s.encode());
                core.send_extension(CHECKPOINT_EXTENSION, offer);
            }
        }
    }

    /// Keeps this peer in step with its peers through checkpoints, for as
    /// long as the base's replication runs (call it next to
    /// [`Autobase::replicate`], once per base, not per session):
    /// - serves checkpoints ([`Autobase::serve_checkpoints`]);
    /// - a peer that has indexed nothing yet (a new joiner of a long-lived
    ///   base) first asks its peers for a checkpoint and starts from it
    ///   instead of replaying every input, if one signed by a quorum it
    ///   trusts arrives within `wait`;
    /// - when it starts and after every burst of [`Event`]s, a peer that
    ///   [`Autobase::needs_fast_forward`] (left on a fork of a writer that
    ///   the others cut, or on a fork that was not chosen) asks again, and
    ///   after a failed attempt again 100 ms later (doubling up to 5 s), so
    ///   it recovers on its own.
    ///
    /// A forged, stale or missing checkpoint is not an error: the peer keeps
    /// replaying. Each installed checkpoint is announced by
    /// [`Event::FastForwarded`]. Ends when the base's extension channel
    /// closes, or with the first storage error.
    pub async fn checkpoint_duty(&self, wait: std::time::Duration) -> Result<(), Error> {
        let serve = self.serve_checkpoints();
        let recover = async {
            use futures::FutureExt;
            let clock: Arc<dyn hypercore_rs::Clock> = self
                .inner
                .clock
                .clone()
                .unwrap_or_else(|| Arc::new(hypercore_rs::ThreadClock));
            let mut events = self.events().fuse();
            if self.indexed_length().await == 0 {
                self.try_fast_forward(wait).await?;
            }
            // Looks now (the peer may be stuck already), then after every
            // burst of events. After a failed attempt it tries again on the
            // next event or when the retry delay has passed, whichever
            // comes first (a peer stuck on the wrong fork may see no event
            // at all).
            let mut retry: Option<std::time::Duration> = (self.needs_fast_forward().await
                && !self.try_fast_forward(wait).await?)
                .then_some(RETRY_MIN);
            loop {
                let event = match retry {
                    None => events.next().await.map(|_| ()),
                    Some(d) => {
                        let mut tick = clock.sleep(d).fuse();
                        futures::select! {
                            e = events.next() => e.map(|_| ()),
                            _ = tick => Some(()),
                        }
                    }
                };
                if event.is_none() {
                    break;
                }
                // One look per burst of events.
                while let Some(Some(_)) = events.next().now_or_never() {}
                if !self.needs_fast_forward().await || self.try_fast_forward(wait).await? {
                    retry = None;
                } else {
                    retry = Some(retry.map_or(RETRY_MIN, |d| (d * 2).min(RETRY_MAX)));
                }
            }
            Ok::<(), Error>(())
        };
        futures::future::try_join(serve, recover).await.map(|_| ())
    }

    /// [`Autobase::fast_forward_from_peers`], then an update; a refused or
    /// missing checkpoint is `Ok(false)` (only storage errors are errors).
    async fn try_fast_forward(&self, wait: std::time::Duration) -> Result<bool, Error> {
        match self.fast_forward_from_peers(wait).await {
            Ok(true) => {
                self.update().await?;
                Ok(true)
            }
            Err(e @ Error::Core(_)) => Err(e),
            Ok(false) | Err(_) => Ok(false),
        }
    }

    /// Asks connected peers (over the replication session, see
    /// [`Autobase::serve_checkpoints`]) for a checkpoint ahead of this
    /// peer's indexed state, merges the signatures of the indexers that
    /// answer, and fast-forwards with [`Autobase::fast_forward`] once one
    /// checkpoint is signed by a quorum this peer trusts and its view blocks
    /// are complete. Forged or under-signed answers are ignored. Returns
    /// whether it fast-forwarded before `timeout` (on the base's clock);
    /// either way the base then continues normally (by replay otherwise).
    pub async fn fast_forward_from_peers(
        &self,
        timeout: std::time::Duration,
    ) -> Result<bool, Error> {
        use futures::FutureExt;
        let clock: Arc<dyn hypercore_rs::Clock> = self
            .inner
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(hypercore_rs::ThreadClock));
        let core = self.inner.store.get_by_key(self.inner.key).await?;
        let mut rx = core.extension(CHECKPOINT_EXTENSION);
        let deadline = clock.now() + timeout;
        let mut retry = std::time::Duration::from_millis(50);
        let mut offers: HashMap<[u8; 32], Offer> = HashMap::new();
        let mut chain: Vec<SignedCheckpoint> = Vec::new();
        loop {
            let now = clock.now();
            if now >= deadline {
                return Ok(false);
            }
            // Peers may connect later, and a peer may relay a genuine
            // checkpoint with bad blocks or none: ask again, less and less
            // often (every answer resends the views).
            let request = {
                let trusted = self.trusted_via(&chain).await;
                let proven = self.proven().await;
                let gathering = offers.iter().find(|(_, o)| {
                    o.signed
                        .verify_without(&self.inner.key, &trusted, &proven)
                        .is_ok()
                });
                match gathering {
                    Some((id, o)) => request_message(id, &o.have()),
                    None => vec![MSG_REQUEST],
                }
            };
            core.send_extension(CHECKPOINT_EXTENSION, request);
            let mut tick = clock.sleep(retry.min(deadline - now)).fuse();
            retry = (retry * 2).min(std::time::Duration::from_secs(2));
            loop {
                let msg = futures::select! {
                    m = rx.next() => m,
                    _ = tick => break,
                };
                let Some((_peer, msg)) = msg else {
                    return Ok(false);
                };
                if self.take_answer(&mut offers, &mut chain, &msg).await? {
                    return Ok(true);
                }
            }
        }
    }

    /// The indexers this peer trusts, moved along `chain` (links above its
    /// indexed length only).
    async fn trusted_via(&self, chain: &[SignedCheckpoint]) -> Vec<[u8; 32]> {
        let st = self.inner.state.lock().await;
        let have = st.lin.committed_count();
        let links: Vec<SignedCheckpoint> = chain
            .iter()
            .filter(|l| l.checkpoint.indexed_length > have)
            .cloned()
            .collect();
        crate::checkpoint::follow_chain(&self.inner.key, &st.base_host.indexer_keys(), &links)
    }

    /// Folds one answer into `offers`; fast-forwards and returns `true` once
    /// an offer is complete and verifies.
    async fn take_answer(
        &self,
        offers: &mut HashMap<[u8; 32], Offer>,
        chain: &mut Vec<SignedCheckpoint>,
        msg: &[u8],
    ) -> Result<bool, Error> {
        if let Some((&MSG_TRANSITION, body)) = msg.split_first() {
            if let Ok(mut t) = SignedCheckpoint::decode(body) {
                t.retain_valid();
                if t.checkpoint.base == self.inner.key && !t.signatures.is_empty() {
                    if chain.len() >= MAX_CHAIN {
                        // Full (a forger may be filling it): keep only the
                        // links the walk from the trusted set uses.
                        let trusted = self.inner.state.lock().await.base_host.indexer_keys();
                        chain.sort_by_key(|l| l.checkpoint.indexed_length);
                        let mut current = trusted;
                        chain.retain(|l| {
                            let ok = l.verify_link(&self.inner.key, &current).is_ok();
                            if ok {
                                current = l.checkpoint.indexers();
                            }
                            ok
                        });
                    }
                    let room = chain.len() < MAX_CHAIN;
                    match chain.iter_mut().find(|o| o.checkpoint == t.checkpoint) {
                        Some(o) => {
                            let _ = o.merge(&t);
                        }
                        None if room => chain.push(t),
                        None => {}
                    }
                }
            }
            return Ok(false);
        }
        let trusted = self.trusted_via(chain).await;
        let have = self.inner.state.lock().await.lin.committed_count();
        let id = match msg.split_first() {
            Some((&MSG_OFFER, body)) => {
                let Ok(mut signed) = SignedCheckpoint::decode(body) else {
                    return Ok(false);
                };
                signed.retain_valid();
                let cp = &signed.checkpoint;
                if cp.base != self.inner.key || cp.indexed_length <= have {
                    return Ok(false);
                }
                let id = cp.signable();
                if let Some(o) = offers.get_mut(&id) {
                    let _ = o.signed.merge(&signed);
                } else if offers.len() < MAX_OFFERS {
                    offers.insert(
                        id,
                        Offer {
                            signed,
                            blocks: Vec::new(),
                        },
                    );
                }
                id
            }
            Some((&MSG_BLOCKS, body)) => {
                let Some((id, view, start, blocks)) = decode_blocks(body) else {
                    return Ok(false);
                };
                let Some(o) = offers.get_mut(&id) else {
                    return Ok(false);
                };
                // Room for blocks only once the signatures are trusted, so
                // a forged length never allocates.
                if o.signed
                    .verify_without(&self.inner.key, &trusted, &self.proven().await)
                    .is_err()
                {
                    return Ok(false);
                }
                o.fill(view, start, blocks);
                id
            }
            _ => return Ok(false),
        };
        let Some(o) = offers.get_mut(&id) else {
            return Ok(false);
        };
        if o.signed
            .verify_without(&self.inner.key, &trusted, &self.proven().await)
            .is_err()
        {
            return Ok(false);
        }
        let Some(views) = o.complete() else {
            return Ok(false);
        };
        match self.fast_forward_via(chain, &o.signed, &views).await {
            Ok(()) => Ok(true),
            Err(Error::Checkpoint(_)) => {
                // Blocks that do not rebuild the signed views (a peer sent
                // bad ones): gather them again.
                o.blocks.clear();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}
