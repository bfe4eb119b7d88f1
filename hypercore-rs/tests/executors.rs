//! The async API runs under any executor: futures' and tokio's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::StreamExt;
use hypercore_rs::{Core, DiskStorage, Event, MemoryStorage, Storage};
use std::sync::Arc;

async fn workload(storage: Arc<dyn Storage>) {
    let core = Core::builder(storage).open().await.unwrap();
    let mut events = core.events();
    core.append_batch([b"a", b"b"]).await.unwrap();
    core.truncate(1).await.unwrap();
    core.append(b"c").await.unwrap();
    core.flush().await.unwrap();
    assert_eq!(core.get(1).await.unwrap().as_deref(), Some(&b"c"[..]));
    assert_eq!(
        events.next().await,
        Some(Event::Append {
            length: 2,
            byte_length: 2
        })
    );
    assert_eq!(
        events.next().await,
        Some(Event::Truncate { length: 1, fork: 1 })
    );
    assert_eq!(
        events.next().await,
        Some(Event::Append {
            length: 2,
            byte_length: 2
        })
    );
}

#[test]
fn futures_executor() {
    futures::executor::block_on(workload(Arc::new(MemoryStorage::new())));
    let dir = tempfile::tempdir().unwrap();
    futures::executor::block_on(workload(Arc::new(DiskStorage::open(dir.path()).unwrap())));
}

#[test]
fn tokio_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(workload(Arc::new(MemoryStorage::new())));
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(workload(Arc::new(DiskStorage::open(dir.path()).unwrap())));
}
