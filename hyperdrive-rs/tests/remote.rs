//! A reader that knows only the drive key reads files sparsely from a
//! writer's store over an in-memory replication pipe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::executor::block_on;
use futures::future::{select, Either};
use futures::{FutureExt, StreamExt};
use hypercore_rs::replication::{duplex, ReplicateOptions};
use hypercore_rs::{Corestore, MemoryStorage, SeededEntropy};
use hyperdrive_rs::{Drive, ReadRange, CHUNK_SIZE};
use std::sync::Arc;
use std::time::Duration;

fn opts(initiator: bool) -> ReplicateOptions {
    let mut o = ReplicateOptions::new(initiator);
    o.entropy = Arc::new(SeededEntropy::new(u64::from(initiator)));
    o
}

#[test]
fn remote_reader_fetches_only_the_chunks_it_reads() {
    block_on(async {
        let a = Corestore::with_seed(Arc::new(MemoryStorage::new()), [1; 32]);
        let b = Corestore::with_seed(Arc::new(MemoryStorage::new()), [2; 32]);
        let w = Drive::open(&a, "records").await.unwrap();
        let big: Vec<u8> = (0..(40 * CHUNK_SIZE as usize))
            .map(|i| (i % 253) as u8)
            .collect();
        w.put("/imaging/ct.dcm", &big).await.unwrap();
        w.put("/letters/a.pdf", b"%PDF-a").await.unwrap();
        w.flush().await.unwrap();

        let (x, y) = duplex();
        let (a2, b2) = (a.clone(), b.clone());
        let sessions = futures::future::join(
            async move { a2.replicate(x, opts(true)).await }.boxed(),
            async move { b2.replicate(y, opts(false)).await }.boxed(),
        );
        let test = async {
            let wait = Duration::from_secs(10);
            let r = Drive::open_remote(&b, w.key(), wait).await.unwrap();
            assert_eq!(r.blobs_key(), w.blobs_key());
            assert!(!r.writable());
            assert_eq!(
                r.readdir("/").unwrap().collect().await.unwrap(),
                ["imaging", "letters"]
            );
            // A range in the middle of the big file.
            let start = 17 * CHUNK_SIZE + 5;
            let mut s = r
                .read("/imaging/ct.dcm", ReadRange::new(start, 1000))
                .await
                .unwrap();
            let mut got = Vec::new();
            while let Some(c) = s.next().await {
                got.extend_from_slice(&c.unwrap());
            }
            assert_eq!(got, big[start as usize..start as usize + 1000]);
            let blob = r
                .entry("/imaging/ct.dcm")
                .await
                .unwrap()
                .unwrap()
                .blob()
                .unwrap();
            let mut held = 0;
            for i in blob.block_offset..blob.block_end() {
                if r.blobs().get(i).await.unwrap().is_some() {
                    held += 1;
                }
            }
            assert_eq!(held, 1, "only the one chunk covering the range is fetched");
            // A whole small file, checked against its hash.
            assert_eq!(r.get("/letters/a.pdf").await.unwrap().unwrap(), b"%PDF-a");
            // Download a folder ahead of time, then read it offline-fast.
            r.download("/imaging").await.unwrap();
            assert!(r
                .blobs()
                .has(blob.block_offset, blob.block_end())
                .await
                .unwrap());
            // New writes reach the reader with update().
            w.put("/letters/b.pdf", b"%PDF-b").await.unwrap();
            w.flush().await.unwrap();
            assert!(r.update().await.unwrap());
            assert_eq!(r.get("/letters/b.pdf").await.unwrap().unwrap(), b"%PDF-b");
        };
        futures::pin_mut!(test);
        match select(sessions, test).await {
            Either::Right(((), _)) => {}
            Either::Left((r, _)) => panic!("replication ended early: {r:?}"),
        }
    });
}
