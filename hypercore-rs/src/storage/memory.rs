//! In-memory storage: the reference implementation of the [`Storage`] contract.
//!
//! Used by tests and by short-lived peers; `flush` does nothing because
//! nothing is durable.

use super::{node_survives, Batch, CoreId, Op, Storage};
use crate::error::StorageError;
use crate::hash::Node;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct CoreData {
    values: BTreeMap<Vec<u8>, Vec<u8>>,
    nodes: HashMap<u64, Node>,
    blocks: HashMap<u64, Vec<u8>>,
}

#[derive(Default)]
struct State {
    cores: HashMap<CoreId, CoreData>,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Storage that lives in memory only.
#[derive(Default)]
pub struct MemoryStorage {
    state: Mutex<State>,
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage").finish_non_exhaustive()
    }
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch
        // (batches are applied without fallible steps), so the data is sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of block data held (for tests of `clear`).
    pub fn block_bytes(&self) -> u64 {
        let s = self.lock();
        s.cores
            .values()
            .flat_map(|c| c.blocks.values())
            .map(|b| b.len() as u64)
            .sum()
    }
}

fn apply(state: &mut State, op: Op) {
    match op {
        Op::PutValue { core, key, value } => {
            state
                .cores
                .entry(core)
                .or_default()
                .values
                .insert(key, value);
        }
        Op::DelValue { core, key } => {
            if let Some(c) = state.cores.get_mut(&core) {
                c.values.remove(&key);
            }
        }
        Op::PutNode { core, node } => {
            state
                .cores
                .entry(core)
                .or_default()
                .nodes
                .insert(node.index, node);
        }
        Op::PutBlock { core, index, data } => {
            state
                .cores
                .entry(core)
                .or_default()
                .blocks
                .insert(index, data);
        }
        Op::Truncate { core, length } => {
            if let Some(c) = state.cores.get_mut(&core) {
                c.blocks.retain(|&i, _| i < length);
                c.nodes.retain(|&i, _| node_survives(i, length));
            }
        }
        Op::Clear { core, start, end } => {
            if let Some(c) = state.cores.get_mut(&core) {
                if end.saturating_sub(start) < c.blocks.len() as u64 {
                    for i in start..end {
                        c.blocks.remove(&i);
                    }
                } else {
                    c.blocks.retain(|&i, _| i < start || i >= end);
                }
            }
        }
        Op::DeleteCore { core } => {
            state.cores.remove(&core);
        }
        Op::PutMeta { key, value } => {
            state.meta.insert(key, value);
        }
        Op::DelMeta { key } => {
            state.meta.remove(&key);
        }
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn write(&self, batch: Batch) -> Result<(), StorageError> {
        let mut s = self.lock();
        for op in batch.into_ops() {
            apply(&mut s, op);
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    async fn value(&self, core: &CoreId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .lock()
            .cores
            .get(core)
            .and_then(|c| c.values.get(key).cloned()))
    }

    async fn values(
        &self,
        core: &CoreId,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let s = self.lock();
        Ok(s.cores
            .get(core)
            .map(|c| super::prefix_values(&c.values, prefix))
            .unwrap_or_default())
    }

    async fn node(&self, core: &CoreId, index: u64) -> Result<Option<Node>, StorageError> {
        Ok(self
            .lock()
            .cores
            .get(core)
            .and_then(|c| c.nodes.get(&index).copied()))
    }

    async fn block(&self, core: &CoreId, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .lock()
            .cores
            .get(core)
            .and_then(|c| c.blocks.get(&index).cloned()))
    }

    async fn has_block(&self, core: &CoreId, index: u64) -> Result<bool, StorageError> {
        Ok(self
            .lock()
            .cores
            .get(core)
            .is_some_and(|c| c.blocks.contains_key(&index)))
    }

    async fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().meta.get(key).cloned())
    }

    async fn cores(&self) -> Result<Vec<CoreId>, StorageError> {
        let s = self.lock();
        let mut v: Vec<CoreId> = s
            .cores
            .iter()
            .filter(|(_, c)| !c.values.is_empty())
            .map(|(k, _)| *k)
            .collect();
        v.sort_unstable();
        Ok(v)
    }
}
