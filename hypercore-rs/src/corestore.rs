//! Corestore: many cores under one primary seed.
//!
//! The seed is generated on first use (from the injected entropy source) and
//! kept in storage. A named core's key pair is a keyed BLAKE3 of the seed, the
//! namespace and the name, so two stores with the same seed derive the same
//! keys and different names (or namespaces) never collide. Named cores do not
//! store their secret keys: the store derives them again on open. Every core
//! is opened at most once per store, so handles share state.

use crate::core::{Core, Durability};
use crate::entropy::{Entropy, OsEntropy};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::manifest::{discovery_key, KeyPair};
use crate::storage::{Batch, Op, Storage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const SEED_KEY: &[u8] = b"corestore/primary-seed";
const KEYPAIR_DOMAIN: &str = "hypercore-rs 2026 corestore key pair v1";
const NAMESPACE_DOMAIN: &str = "hypercore-rs 2026 corestore namespace v1";

/// Options for opening a core through a store.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct CoreOptions {
    /// Block encryption key.
    pub encryption_key: Option<[u8; 32]>,
    /// When appends become durable.
    pub durability: Durability,
}

impl CoreOptions {
    /// Options with an encryption key.
    pub fn encrypted(key: [u8; 32]) -> Self {
        CoreOptions {
            encryption_key: Some(key),
            ..Default::default()
        }
    }
}

struct Shared {
    storage: Arc<dyn Storage>,
    seed: [u8; 32],
    open: Mutex<HashMap<Hash, Core>>,
    sessions: Mutex<Vec<futures::channel::mpsc::UnboundedSender<Core>>>,
}

/// Many cores over one storage, with deterministic key pairs for named cores.
#[derive(Clone)]
pub struct Corestore {
    shared: Arc<Shared>,
    namespace: Hash,
}

impl std::fmt::Debug for Corestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corestore").finish_non_exhaustive()
    }
}

impl Corestore {
    /// Opens the store, generating and saving a primary seed on first use.
    pub async fn open(storage: Arc<dyn Storage>) -> Result<Self> {
        Self::open_with_entropy(storage, &OsEntropy).await
    }

    /// [`Corestore::open`] with an injected entropy source.
    pub async fn open_with_entropy(
        storage: Arc<dyn Storage>,
        entropy: &dyn Entropy,
    ) -> Result<Self> {
        let seed = match storage.meta(SEED_KEY).await? {
            Some(s) => <[u8; 32]>::try_from(s.as_slice()).map_err(|_| {
                Error::Storage(crate::error::StorageError::Corrupt(
                    "primary seed has the wrong size".into(),
                ))
            })?,
            None => {
                let mut seed = [0u8; 32];
                entropy.fill(&mut seed)?;
                let mut b = Batch::new();
                b.push(Op::PutMeta {
                    key: SEED_KEY.to_vec(),
                    value: seed.to_vec(),
                });
                storage.write(b).await?;
                storage.flush().await?;
                seed
            }
        };
        Ok(Self::with_seed(storage, seed))
    }

    /// A store with a given primary seed (e.g. restored from a backup phrase).
    /// The seed is not written to storage.
    pub fn with_seed(storage: Arc<dyn Storage>, seed: [u8; 32]) -> Self {
        Corestore {
            shared: Arc::new(Shared {
                storage,
                seed,
                open: Mutex::new(HashMap::new()),
                sessions: Mutex::new(Vec::new()),
            }),
            namespace: [0u8; 32],
        }
    }

    /// The storage under this store.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.shared.storage.clone()
    }

    /// A view of the store whose names live in a separate namespace.
    pub fn namespace(&self, name: &str) -> Corestore {
        let mut h = blake3::Hasher::new_derive_key(NAMESPACE_DOMAIN);
        h.update(&self.namespace);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        Corestore {
            shared: self.shared.clone(),
            namespace: *h.finalize().as_bytes(),
        }
    }

    /// The key pair of the named core in this namespace.
    pub fn key_pair(&self, name: &str) -> KeyPair {
        let mut h = blake3::Hasher::new_derive_key(KEYPAIR_DOMAIN);
        h.update(&self.shared.seed);
        h.update(&self.namespace);
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        KeyPair::from_seed(*h.finalize().as_bytes())
    }

    /// Opens (or creates) the writable core called `name`.
    pub async fn get(&self, name: &str) -> Result<Core> {
        self.get_with(name, CoreOptions::default()).await
    }

    /// [`Corestore::get`] with options.
    pub async fn get_with(&self, name: &str, options: CoreOptions) -> Result<Core> {
        let kp = self.key_pair(name);
        let key = crate::manifest::Manifest::single(kp.public_key()).key();
        if let Some(c) = self.cached(&key) {
            return Ok(c);
        }
        let mut b = Core::builder(self.shared.storage.clone())
            .key_pair(kp)
            .store_secrets(false)
            .durability(options.durability);
        if let Some(k) = options.encryption_key {
            b = b.encryption_key(k);
        }
        let core = b.open().await?;
        Ok(self.remember(core))
    }

    /// Opens (or creates) the writable core signed by `key_pair`, a key the
    /// application holds rather than one derived from this store's seed
    /// (its secret is not stored). If the same core is already open here
    /// as a reader, that reader is returned.
    pub async fn get_with_key_pair(&self, key_pair: KeyPair, options: CoreOptions) -> Result<Core> {
        let key = crate::manifest::Manifest::single(key_pair.public_key()).key();
        if let Some(c) = self.cached(&key) {
            return Ok(c);
        }
        let mut b = Core::builder(self.shared.storage.clone())
            .key_pair(key_pair)
            .store_secrets(false)
            .durability(options.durability);
        if let Some(k) = options.encryption_key {
            b = b.encryption_key(k);
        }
        let core = b.open().await?;
        Ok(self.remember(core))
    }

    /// Opens the core with `key`: one of ours, or a reader for someone else's.
    pub async fn get_by_key(&self, key: Hash) -> Result<Core> {
        self.get_by_key_with(key, CoreOptions::default()).await
    }

    /// [`Corestore::get_by_key`] with options.
    pub async fn get_by_key_with(&self, key: Hash, options: CoreOptions) -> Result<Core> {
        if let Some(c) = self.cached(&key) {
            return Ok(c);
        }
        let mut b = Core::builder(self.shared.storage.clone())
            .key(key)
            .durability(options.durability);
        if let Some(k) = options.encryption_key {
            b = b.encryption_key(k);
        }
        let core = b.open().await?;
        Ok(self.remember(core))
    }

    /// Opens a core this store holds, by discovery key (what a remote peer asks
    /// for); `None` if it is not in storage.
    pub async fn get_by_discovery_key(&self, dkey: Hash) -> Result<Option<Core>> {
        {
            let open = self.shared.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = open.values().find(|c| c.discovery_key() == dkey) {
                return Ok(Some(c.clone()));
            }
        }
        let Some(key) = crate::core::stored_key(self.shared.storage.as_ref(), &dkey).await? else {
            return Ok(None);
        };
        if discovery_key(&key) != dkey {
            return Ok(None);
        }
        let core = Core::builder(self.shared.storage.clone())
            .key(key)
            .must_exist()
            .open()
            .await?;
        Ok(Some(self.remember(core)))
    }

    /// The keys of every core in storage, sorted by discovery key.
    pub async fn list(&self) -> Result<Vec<Hash>> {
        let mut out = Vec::new();
        for id in self.shared.storage.cores().await? {
            if let Some(key) = crate::core::stored_key(self.shared.storage.as_ref(), &id).await? {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// Makes every core's changes durable, signing writable cores first.
    pub async fn flush(&self) -> Result<()> {
        let cores: Vec<Core> = self
            .shared
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for c in cores {
            c.flush().await?;
        }
        self.shared.storage.flush().await?;
        Ok(())
    }

    fn cached(&self, key: &Hash) -> Option<Core> {
        self.shared
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn remember(&self, core: Core) -> Core {
        let mut open = self.shared.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = open.get(&core.key()) {
            return c.clone();
        }
        open.insert(core.key(), core.clone());
        drop(open);
        // Live replication sessions open a channel for it too.
        let mut sessions = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        sessions.retain(|tx| tx.unbounded_send(core.clone()).is_ok());
        core
    }

    /// Replicates every core this store holds that the remote asks for (and
    /// proves it knows), and opens channels for every core open here, now or
    /// later, over one framed duplex.
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
}

#[async_trait::async_trait]
impl crate::replication::CoreProvider for Corestore {
    async fn by_discovery_key(&self, discovery_key: &Hash) -> Option<Core> {
        self.get_by_discovery_key(*discovery_key)
            .await
            .ok()
            .flatten()
    }

    fn initial(&self) -> Vec<Core> {
        self.shared
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn subscribe(&self) -> Option<futures::channel::mpsc::UnboundedReceiver<Core>> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        Some(rx)
    }
}
