//! Corestore: seed persistence, deterministic and collision-free key
//! derivation, one shared handle per core.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::block_on;
use hypercore_rs::{Corestore, DiskStorage, MemoryStorage, SeededEntropy, Storage};
use std::collections::HashSet;
use std::sync::Arc;

#[test]
fn same_seed_same_keys_and_names_never_collide() {
    block_on(async {
        let a = Corestore::with_seed(Arc::new(MemoryStorage::new()), [9; 32]);
        let b = Corestore::with_seed(Arc::new(MemoryStorage::new()), [9; 32]);
        let c = Corestore::with_seed(Arc::new(MemoryStorage::new()), [8; 32]);
        assert_eq!(
            a.get("log").await.unwrap().key(),
            b.get("log").await.unwrap().key()
        );
        assert_ne!(
            a.get("log").await.unwrap().key(),
            c.get("log").await.unwrap().key()
        );
        let mut keys = HashSet::new();
        for name in ["", "a", "b", "ab", "a\0", "log", "log2"] {
            assert!(
                keys.insert(a.key_pair(name).public_key()),
                "collision for {name:?}"
            );
            assert!(keys.insert(a.namespace("x").key_pair(name).public_key()));
            assert!(keys.insert(a.namespace("x").namespace("y").key_pair(name).public_key()));
        }
        // Namespacing is not concatenation.
        assert_ne!(
            a.namespace("ab").key_pair("c").public_key(),
            a.namespace("a").key_pair("bc").public_key()
        );
    });
}

#[test]
fn seed_is_stored_and_handles_are_shared() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let key;
        {
            let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(dir.path()).unwrap());
            let store = Corestore::open_with_entropy(storage, &SeededEntropy::new(1))
                .await
                .unwrap();
            let one = store.get("records").await.unwrap();
            let two = store.get("records").await.unwrap();
            one.append(b"first").await.unwrap();
            assert_eq!(two.length(), 1, "handles to the same core share state");
            key = one.key();
            let other = Corestore::with_seed(Arc::new(MemoryStorage::new()), [3; 32])
                .get("x")
                .await
                .unwrap();
            let reader = store.get_by_key(other.key()).await.unwrap();
            assert!(!reader.writable());
            assert_eq!(store.list().await.unwrap().len(), 2);
            let by_dkey = store
                .get_by_discovery_key(one.discovery_key())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(by_dkey.key(), key);
            assert!(store.get_by_discovery_key([0; 32]).await.unwrap().is_none());
            store.flush().await.unwrap();
        }
        // Reopened: the same seed, the same writable core, its data intact.
        let storage: Arc<dyn Storage> = Arc::new(DiskStorage::open(dir.path()).unwrap());
        let store = Corestore::open_with_entropy(storage, &SeededEntropy::new(999))
            .await
            .unwrap();
        let core = store.get("records").await.unwrap();
        assert_eq!(core.key(), key);
        assert!(core.writable());
        assert_eq!(core.get(0).await.unwrap().as_deref(), Some(&b"first"[..]));
        core.append(b"second").await.unwrap();
    });
}
