//! A bee opened on a remote core reads sparsely through replication: a get
//! fetches only the blocks on its path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::future::{select, Either};
use hyperbee_rs::{Bee, Range};
use hypercore_rs::replication::{duplex, ReplicateOptions};
use hypercore_rs::{Core, MemoryStorage};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn remote_gets_fetch_only_their_path() {
    futures::executor::block_on(async {
        let core = Core::builder(Arc::new(MemoryStorage::new()))
            .open()
            .await
            .unwrap();
        let bee = Bee::open(core.clone()).await.unwrap();
        let mut batch = bee.batch().await.unwrap();
        for i in 0..20_000u32 {
            batch
                .put(
                    format!("key{i:06}").as_bytes(),
                    format!("value {i}").as_bytes(),
                )
                .await
                .unwrap();
        }
        batch.flush().await.unwrap();
        for i in 0..50u32 {
            bee.put(format!("late{i:03}").as_bytes(), b"x")
                .await
                .unwrap();
        }
        let total = core.length();

        let reader = Core::builder(Arc::new(MemoryStorage::new()))
            .key(core.key())
            .open()
            .await
            .unwrap();
        let (x, y) = duplex();
        let (w, r) = (core.clone(), reader.clone());
        let sessions = futures::future::join(
            w.replicate(x, ReplicateOptions::new(true)),
            r.replicate(y, ReplicateOptions::new(false)),
        );
        let test = async {
            let remote = Bee::builder(reader.clone())
                .remote(Duration::from_secs(10))
                .open()
                .await
                .unwrap();
            assert_eq!(reader.length(), total, "open learned the latest length");
            let got = remote.get(b"key012345").await.unwrap().unwrap();
            assert_eq!(got.value, b"value 12345");
            assert!(remote.get(b"nope").await.unwrap().is_none());
            let mut held = 0;
            for i in 0..total {
                if reader.get(i).await.unwrap().is_some() {
                    held += 1;
                }
            }
            assert!(held <= 12, "two gets fetched {held} of {total} blocks");
            // A small range fetches a little more, still far from everything.
            let mut it = remote.range(Range::all().prefix(b"key0001"));
            let mut n = 0;
            while let Some(e) = it.next().await.unwrap() {
                assert!(e.key.starts_with(b"key0001"));
                n += 1;
            }
            assert_eq!(n, 100);
            // New writes reach the remote bee after an update.
            bee.put(b"newest", b"!").await.unwrap();
            assert!(remote.update().await.unwrap());
            assert_eq!(remote.get(b"newest").await.unwrap().unwrap().value, b"!");
        };
        futures::pin_mut!(sessions);
        futures::pin_mut!(test);
        match select(sessions, test).await {
            Either::Right(_) => {}
            Either::Left(_) => panic!("replication ended early"),
        }
    });
}
