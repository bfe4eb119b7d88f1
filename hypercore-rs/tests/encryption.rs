//! Block encryption: ciphertext on disk, plaintext only through the key, blind
//! mirrors that verify and serve without reading, nonces never reused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{block_on, sync_all};
use hypercore_rs::{Core, DiskStorage, Error, KeyPair, MemoryStorage, Storage};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

const KEY: [u8; 32] = [5; 32];
const MARKER: &[u8] = b"PATIENT-SECRET-DIAGNOSIS";

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
        }
    }
    false
}

#[test]
fn plaintext_never_reaches_storage_and_blind_mirrors_serve() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(DiskStorage::open(dir.path()).unwrap());
        let writer = Core::builder(storage.clone())
            .key_pair(KeyPair::from_seed([1; 32]))
            .encryption_key(KEY)
            .open()
            .await
            .unwrap();
        for i in 0..50u8 {
            let mut b = MARKER.to_vec();
            b.push(i);
            writer.append(&b).await.unwrap();
        }
        writer.flush().await.unwrap();
        storage.checkpoint().unwrap();
        assert!(
            !files_contain(dir.path(), MARKER),
            "plaintext found on disk"
        );
        let got = writer.get(7).await.unwrap().unwrap();
        assert!(got.starts_with(MARKER));
        assert!(!writer
            .get_raw(7)
            .await
            .unwrap()
            .unwrap()
            .windows(MARKER.len())
            .any(|w| w == MARKER));

        // A blind mirror without the key verifies and stores everything...
        let mirror = Core::builder(Arc::new(MemoryStorage::new()))
            .key(writer.key())
            .open()
            .await
            .unwrap();
        sync_all(&writer, &mirror).await;
        assert_eq!(mirror.length(), 50);
        assert_eq!(
            mirror.get(7).await.unwrap(),
            writer.get_raw(7).await.unwrap()
        );
        // ...and serves a reader who has the key, which reads plaintext.
        let reader = Core::builder(Arc::new(MemoryStorage::new()))
            .key(writer.key())
            .encryption_key(KEY)
            .open()
            .await
            .unwrap();
        sync_all(&mirror, &reader).await;
        assert_eq!(reader.get(7).await.unwrap(), Some(got));
        // The wrong key cannot read.
        let wrong = Core::builder(Arc::new(MemoryStorage::new()))
            .key(writer.key())
            .encryption_key([6; 32])
            .open()
            .await
            .unwrap();
        sync_all(&mirror, &wrong).await;
        assert!(matches!(wrong.get(7).await, Err(Error::Decryption(7))));

        // Reopened without its key, the writer refuses to read or write.
        drop(writer);
        let again = Core::builder(storage as Arc<dyn Storage>)
            .key_pair(KeyPair::from_seed([1; 32]))
            .open()
            .await
            .unwrap();
        assert!(matches!(again.get(0).await, Err(Error::NoEncryptionKey)));
        assert!(matches!(
            again.append(b"x").await,
            Err(Error::NoEncryptionKey)
        ));
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Across appends, truncations and re-appends, a nonce appears twice only
    /// for the very same (index, fork, plaintext), i.e. for identical ciphertext.
    #[test]
    fn nonces_never_repeat_under_one_key(ops in proptest::collection::vec((0u8..3, 0u8..4, 0u64..6), 1..30)) {
        block_on(async {
            let core = Core::builder(Arc::new(MemoryStorage::new())).encryption_key(KEY).open().await.unwrap();
            let mut seen: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for (kind, content, n) in ops {
                match kind {
                    0 | 1 => {
                        core.append(&[content; 3]).await.unwrap();
                    }
                    _ => {
                        let l = core.length().saturating_sub(n);
                        core.truncate(l).await.unwrap();
                    }
                }
                for i in 0..core.length() {
                    let raw = core.get_raw(i).await.unwrap().unwrap();
                    let nonce = raw[9..33].to_vec();
                    if let Some(prev) = seen.insert(nonce, raw.clone()) {
                        assert_eq!(prev, raw, "nonce reused for different ciphertext");
                    }
                }
            }
        });
    }
}
