//! Properties of the real on-disk storage: clear gives space back, open cost
//! is bounded, a second process is locked out, corrupted files give errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use async_trait::async_trait;
use common::{block_on, small_opts};
use hypercore_rs::storage::vfs::SimVfs;
use hypercore_rs::{Batch, Core, CoreId, DiskStorage, KeyPair, Node, Storage, StorageError};
use proptest::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[cfg(unix)]
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in walk(path) {
        total += std::fs::metadata(e).unwrap().blocks() * 512;
    }
    total
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[cfg(target_os = "linux")]
#[test]
fn clear_and_truncate_give_disk_space_back() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(DiskStorage::open(dir.path()).unwrap());
        let core = Core::builder(storage.clone()).open().await.unwrap();
        let block = vec![0xabu8; 64 * 1024];
        for _ in 0..8 {
            core.append_batch(vec![block.clone(); 32]).await.unwrap();
        }
        core.flush().await.unwrap();
        storage.checkpoint().unwrap();
        let full = allocated(dir.path());
        assert!(full > 16 << 20, "expected >16 MiB on disk, saw {full}");
        core.clear(0, 200).await.unwrap();
        let cleared = allocated(dir.path());
        assert!(
            cleared < full - (10 << 20),
            "clear gave back too little: {full} -> {cleared}"
        );
        // The tree still verifies: a proof for a cleared block's neighbour works,
        // and the cleared block reads as not held.
        assert_eq!(core.get(5).await.unwrap(), None);
        assert_eq!(core.get(220).await.unwrap().as_deref(), Some(&block[..]));
        core.truncate(210).await.unwrap();
        core.flush().await.unwrap();
        let truncated = allocated(dir.path());
        assert!(
            truncated < cleared - (2 << 20),
            "truncate gave back too little: {cleared} -> {truncated}"
        );
    });
}

#[test]
fn a_second_process_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let _first = DiskStorage::open(dir.path()).unwrap();
    match DiskStorage::open(dir.path()) {
        Err(StorageError::Locked(_)) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
}

/// Counts what the core reads from storage.
struct Counting {
    inner: Arc<DiskStorage>,
    nodes: AtomicU64,
    blocks: AtomicU64,
}

#[async_trait]
impl Storage for Counting {
    async fn write(&self, b: Batch) -> Result<(), StorageError> {
        self.inner.write(b).await
    }
    async fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush().await
    }
    async fn value(&self, c: &CoreId, k: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.value(c, k).await
    }
    async fn values(&self, c: &CoreId, p: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.inner.values(c, p).await
    }
    async fn node(&self, c: &CoreId, i: u64) -> Result<Option<Node>, StorageError> {
        self.nodes.fetch_add(1, Ordering::Relaxed);
        self.inner.node(c, i).await
    }
    async fn block(&self, c: &CoreId, i: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.blocks.fetch_add(1, Ordering::Relaxed);
        self.inner.block(c, i).await
    }
    async fn has_block(&self, c: &CoreId, i: u64) -> Result<bool, StorageError> {
        self.blocks.fetch_add(1, Ordering::Relaxed);
        self.inner.has_block(c, i).await
    }
    async fn meta(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.meta(k).await
    }
    async fn cores(&self) -> Result<Vec<CoreId>, StorageError> {
        self.inner.cores().await
    }
}

#[test]
fn opening_a_large_core_reads_only_its_roots() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let n = 1_000_003u64;
        {
            let storage = Arc::new(DiskStorage::open(dir.path()).unwrap());
            let core = Core::builder(storage.clone())
                .key_pair(KeyPair::from_seed([1; 32]))
                .open()
                .await
                .unwrap();
            let blocks: Vec<[u8; 1]> = (0..n).map(|i| [i as u8]).collect();
            for chunk in blocks.chunks(50_000) {
                core.append_batch(chunk).await.unwrap();
            }
            core.flush().await.unwrap();
        }
        let storage = Arc::new(Counting {
            inner: Arc::new(DiskStorage::open(dir.path()).unwrap()),
            nodes: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
        });
        let core = Core::builder(storage.clone())
            .key_pair(KeyPair::from_seed([1; 32]))
            .open()
            .await
            .unwrap();
        assert_eq!(core.length(), n);
        let nodes = storage.nodes.load(Ordering::Relaxed);
        assert_eq!(
            nodes,
            u64::from(n.count_ones()),
            "opening a {n}-block core read {nodes} nodes: only its roots are needed"
        );
        assert_eq!(storage.blocks.load(Ordering::Relaxed), 0);
        assert_eq!(core.get(n - 1).await.unwrap(), Some(vec![(n - 1) as u8]));
    });
}

fn expected(i: u64) -> Vec<u8> {
    vec![(i * 7) as u8; (i % 50) as usize + 1]
}

/// Writes a core, optionally checkpointed, and returns its simulated disk.
fn written(checkpoint: bool) -> (SimVfs, [u8; 32]) {
    block_on(async {
        let vfs = SimVfs::new();
        let storage = Arc::new(DiskStorage::open_vfs(Arc::new(vfs.clone()), small_opts()).unwrap());
        let core = Core::builder(storage.clone())
            .key_pair(KeyPair::from_seed([2; 32]))
            .open()
            .await
            .unwrap();
        for i in 0..40 {
            core.append(&expected(i)).await.unwrap();
        }
        core.flush().await.unwrap();
        if checkpoint {
            storage.checkpoint().unwrap();
        }
        let key = core.key();
        std::mem::forget(core);
        std::mem::forget(storage);
        (vfs, key)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// A flipped bit anywhere in any file is detected (an error) or harmless:
    /// never a panic, never wrong data.
    #[test]
    fn flipped_bits_never_yield_wrong_data(checkpoint: bool, file_pick: usize, pos: usize, bit in 0u8..8) {
        let (vfs, _) = written(checkpoint);
        let files = vfs.files();
        let name = &files[file_pick % files.len()];
        let len = vfs.file_len(name).unwrap() as usize;
        prop_assume!(len > 0);
        assert!(vfs.flip_bit(name, pos % len, bit));
        block_on(async {
            let Ok(storage) = DiskStorage::open_vfs(Arc::new(vfs.clone()), small_opts()) else { return };
            let Ok(core) = Core::builder(Arc::new(storage)).key_pair(KeyPair::from_seed([2; 32])).open().await else { return };
            for i in 0..core.length() {
                if let Ok(Some(d)) = core.get(i).await {
                    assert_eq!(d, expected(i), "wrong data for block {} after flipping {}", i, name);
                }
            }
        });
    }

    /// Truncated or garbage files are detected or harmless, never a panic.
    #[test]
    fn truncated_or_garbage_files_never_panic(checkpoint: bool, file_pick: usize, cut: usize, garbage: Vec<u8>) {
        let (vfs, _) = written(checkpoint);
        let files = vfs.files();
        let name = &files[file_pick % files.len()];
        let mut data = vfs.contents(name).unwrap();
        // Keep a prefix and append garbage.
        let len = data.len();
        data.truncate(cut % (len + 1));
        data.extend_from_slice(&garbage);
        assert!(vfs.set_contents(name, data));
        block_on(async {
            let Ok(storage) = DiskStorage::open_vfs(Arc::new(vfs.clone()), small_opts()) else { return };
            let Ok(core) = Core::builder(Arc::new(storage)).key_pair(KeyPair::from_seed([2; 32])).open().await else { return };
            for i in 0..core.length() {
                if let Ok(Some(d)) = core.get(i).await {
                    assert_eq!(d, expected(i));
                }
            }
        });
    }
}
