//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use hyperbee_rs::{Bee, Entry, Range};
use hypercore_rs::{Core, DiskStorage, MemoryStorage, Storage};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

pub(crate) type Model = BTreeMap<Vec<u8>, Vec<u8>>;

pub(crate) enum Backing {
    Memory,
    Disk(tempfile::TempDir),
}

pub(crate) async fn open(backing: &Backing) -> Bee {
    let storage: Arc<dyn Storage> = match backing {
        Backing::Memory => Arc::new(MemoryStorage::new()),
        Backing::Disk(dir) => Arc::new(DiskStorage::open(dir.path()).unwrap()),
    };
    let core = Core::builder(storage).open().await.unwrap();
    Bee::open(core).await.unwrap()
}

pub(crate) fn model_range(
    m: &Model,
    lower: &Bound<Vec<u8>>,
    upper: &Bound<Vec<u8>>,
    reverse: bool,
    limit: Option<usize>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let ok_lower = |k: &[u8]| match lower {
        Bound::Unbounded => true,
        Bound::Included(b) => k >= b.as_slice(),
        Bound::Excluded(b) => k > b.as_slice(),
    };
    let ok_upper = |k: &[u8]| match upper {
        Bound::Unbounded => true,
        Bound::Included(b) => k <= b.as_slice(),
        Bound::Excluded(b) => k < b.as_slice(),
    };
    let mut v: Vec<_> = m
        .iter()
        .filter(|(k, _)| ok_lower(k) && ok_upper(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if reverse {
        v.reverse();
    }
    if let Some(l) = limit {
        v.truncate(l);
    }
    v
}

pub(crate) fn make_range(
    lower: &Bound<Vec<u8>>,
    upper: &Bound<Vec<u8>>,
    reverse: bool,
    limit: Option<usize>,
) -> Range {
    let mut r = Range::all();
    r = match lower {
        Bound::Unbounded => r,
        Bound::Included(k) => r.gte(k),
        Bound::Excluded(k) => r.gt(k),
    };
    r = match upper {
        Bound::Unbounded => r,
        Bound::Included(k) => r.lte(k),
        Bound::Excluded(k) => r.lt(k),
    };
    if reverse {
        r = r.reverse();
    }
    if let Some(l) = limit {
        r = r.limit(l);
    }
    r
}

pub(crate) fn pairs(v: Vec<Entry>) -> Vec<(Vec<u8>, Vec<u8>)> {
    v.into_iter().map(|e| (e.key, e.value)).collect()
}
