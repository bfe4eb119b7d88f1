//! Behaviour across modules: nested subs, watch, concurrent writers,
//! compare-and-swap without lock leaks, pinned iterators, typed layer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::executor::block_on;
use futures::{FutureExt, StreamExt};
use hyperbee_rs::{Bee, Error, OrderedKey, Range};
use hypercore_rs::{Core, MemoryStorage};
use serde::{Deserialize, Serialize};
use std::ops::Bound;
use std::sync::Arc;

async fn bee() -> Bee {
    let core = Core::builder(Arc::new(MemoryStorage::new()))
        .open()
        .await
        .unwrap();
    Bee::open(core).await.unwrap()
}

fn keys(v: Vec<hyperbee_rs::Entry>) -> Vec<Vec<u8>> {
    v.into_iter().map(|e| e.key).collect()
}

#[test]
fn nested_subs_never_leak_into_each_other() {
    block_on(async {
        let bee = bee().await;
        let a = bee.sub("a");
        let ab = a.sub("b");
        let a_b = bee.sub("ab"); // a name that extends another
        let odd = a.sub([0u8, 1, 0]); // names with the tag bytes
        a.put(b"k1", b"a").await.unwrap();
        a.put(b"", b"a-empty").await.unwrap();
        a.put(b"\xff\xff", b"a-high").await.unwrap();
        ab.put(b"k1", b"ab").await.unwrap();
        ab.put(b"k2", b"ab").await.unwrap();
        a_b.put(b"k1", b"a_b").await.unwrap();
        odd.put(b"k", b"odd").await.unwrap();
        let v0 = bee.version();

        assert_eq!(
            keys(a.range(Range::all()).collect().await.unwrap()),
            vec![b"".to_vec(), b"k1".to_vec(), b"\xff\xff".to_vec()]
        );
        assert_eq!(
            keys(a.range(Range::all().reverse()).collect().await.unwrap()),
            vec![b"\xff\xff".to_vec(), b"k1".to_vec(), b"".to_vec()]
        );
        assert_eq!(
            keys(ab.range(Range::all()).collect().await.unwrap()),
            vec![b"k1".to_vec(), b"k2".to_vec()]
        );
        assert_eq!(
            keys(a_b.range(Range::all()).collect().await.unwrap()),
            vec![b"k1".to_vec()]
        );
        assert_eq!(
            keys(odd.range(Range::all()).collect().await.unwrap()),
            vec![b"k".to_vec()]
        );
        assert_eq!(a.get(b"k1").await.unwrap().unwrap().value, b"a");
        assert_eq!(ab.get(b"k1").await.unwrap().unwrap().value, b"ab");
        assert_eq!(
            a.peek(Range::all().gt(b"k1")).await.unwrap().unwrap().key,
            b"\xff\xff"
        );

        // Diffs of a sub see only its own keys (with the prefix stripped).
        ab.put(b"k3", b"ab").await.unwrap();
        a.del(b"k1").await.unwrap();
        let d = a
            .diff(v0, bee.version(), Range::all())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].key, b"k1");
        assert_eq!(d[0].old.as_ref().unwrap().key, b"k1");
        let d = ab
            .diff(v0, bee.version(), Range::all())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(
            d.iter().map(|d| d.key.clone()).collect::<Vec<_>>(),
            vec![b"k3".to_vec()]
        );

        // A checked-out sub is read-only and shows the old version.
        let old = a.checkout(v0).await.unwrap();
        assert!(old.get(b"k1").await.unwrap().is_some());
        assert!(matches!(old.put(b"x", b"y").await, Err(Error::ReadOnly)));
    });
}

#[test]
fn watch_yields_only_for_changes_in_range() {
    block_on(async {
        let bee = bee().await;
        let users = bee.sub("users");
        let mut w = Box::pin(users.watch(Range::all()));
        bee.put(b"outside", b"1").await.unwrap();
        bee.sub("other").put(b"x", b"1").await.unwrap();
        users.sub("nested").put(b"x", b"1").await.unwrap();
        assert!(w.next().now_or_never().is_none(), "no change in range yet");
        let before = bee.version();
        users.put(b"ada", b"1").await.unwrap();
        let c = w.next().now_or_never().flatten().unwrap().unwrap();
        assert_eq!((c.from, c.to), (before, bee.version()));
        // Several changes before the watcher runs are coalesced.
        users.put(b"bob", b"1").await.unwrap();
        users.put(b"cyd", b"1").await.unwrap();
        let c = w.next().now_or_never().flatten().unwrap().unwrap();
        assert_eq!(c.to, bee.version());
        assert!(w.next().now_or_never().is_none());
    });
}

#[test]
fn failed_cas_releases_the_lock() {
    block_on(async {
        let bee = bee().await;
        bee.put(b"k", b"1").await.unwrap();
        assert!(!bee
            .put_cas(b"k", b"2", |e| e.map(|e| e.value.as_slice()) == Some(b"0"))
            .await
            .unwrap());
        assert!(!bee.del_cas(b"k", |_| false).await.unwrap());
        assert!(!bee.del_cas(b"missing", |_| true).await.unwrap());
        // The write lock is free: a new batch starts at once.
        let b = bee.batch().now_or_never().expect("lock leaked").unwrap();
        drop(b);
        assert!(bee
            .put_cas(b"k", b"2", |e| e.map(|e| e.value.as_slice()) == Some(b"1"))
            .await
            .unwrap());
        assert_eq!(bee.get(b"k").await.unwrap().unwrap().value, b"2");
        // A dropped batch leaves nothing behind.
        let v = bee.version();
        let mut b = bee.batch().await.unwrap();
        b.put(b"gone", b"x").await.unwrap();
        drop(b);
        assert_eq!(bee.version(), v);
        assert!(bee.get(b"gone").await.unwrap().is_none());
    });
}

#[test]
fn concurrent_writers_are_serialised_and_readers_never_see_half_a_batch() {
    let bee = block_on(bee());
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let bee = bee.clone();
            std::thread::spawn(move || {
                block_on(async {
                    for _ in 0..50 {
                        loop {
                            let cur = bee.get(b"counter").await.unwrap();
                            let n: u64 = cur
                                .as_ref()
                                .map(|e| u64::from_be_bytes(e.value.clone().try_into().unwrap()))
                                .unwrap_or(0);
                            let expected = cur.map(|e| e.value);
                            let ok = bee
                                .put_cas(b"counter", (n + 1).to_be_bytes(), |e| {
                                    e.map(|e| e.value.clone()) == expected
                                })
                                .await
                                .unwrap();
                            if ok {
                                break;
                            }
                        }
                        // Two keys always written together.
                        let mut b = bee.batch().await.unwrap();
                        let tag = bee.version().to_be_bytes();
                        b.put(b"pair/a", tag).await.unwrap();
                        b.put(b"pair/b", tag).await.unwrap();
                        b.flush().await.unwrap();
                    }
                })
            })
        })
        .collect();
    let reader = {
        let bee = bee.clone();
        std::thread::spawn(move || {
            block_on(async {
                for _ in 0..300 {
                    let snap = bee.snapshot();
                    let a = snap.get(b"pair/a").await.unwrap().map(|e| e.value);
                    let b = snap.get(b"pair/b").await.unwrap().map(|e| e.value);
                    assert_eq!(a, b, "half a batch seen");
                }
            })
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    reader.join().unwrap();
    let n = block_on(bee.get(b"counter")).unwrap().unwrap().value;
    assert_eq!(u64::from_be_bytes(n.try_into().unwrap()), 200);
}

#[test]
fn iterators_are_pinned_to_their_version() {
    block_on(async {
        let bee = bee().await;
        for i in 0..500u32 {
            bee.put(format!("{i:04}"), b"v").await.unwrap();
        }
        let mut it = bee.range(Range::all());
        let mut seen = 0;
        while let Some(e) = it.next().await.unwrap() {
            seen += 1;
            if seen % 50 == 0 {
                // Appends and deletes while iterating change nothing for it.
                bee.put(format!("{}x", String::from_utf8_lossy(&e.key)), b"new")
                    .await
                    .unwrap();
                bee.del(b"0499").await.unwrap();
            }
        }
        assert_eq!(seen, 500);
        let s: Vec<_> = bee
            .range(Range::all().limit(3))
            .into_stream()
            .collect()
            .await;
        assert_eq!(s.len(), 3);
    });
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Obs {
    code: String,
    value: f64,
}

#[test]
fn typed_keys_keep_their_order() {
    block_on(async {
        let bee = bee().await;
        let t = bee.sub("obs").typed::<(String, i64), Obs>();
        for (p, d) in [
            ("bob", 5i64),
            ("ada", -3),
            ("ada", 10),
            ("ada", -100),
            ("cyd", 0),
        ] {
            t.put(
                &(p.to_string(), d),
                &Obs {
                    code: format!("{p}{d}"),
                    value: d as f64,
                },
            )
            .await
            .unwrap();
        }
        let all = t
            .range(Bound::Unbounded, Bound::Unbounded, false)
            .collect()
            .await
            .unwrap();
        let ks: Vec<_> = all.iter().map(|(k, _)| (k.0.as_str(), k.1)).collect();
        assert_eq!(
            ks,
            vec![
                ("ada", -100),
                ("ada", -3),
                ("ada", 10),
                ("bob", 5),
                ("cyd", 0)
            ]
        );
        // Every entry of one patient: a prefix range on the encoded head.
        let ada = t
            .range_raw(Range::all().prefix("ada".to_string().to_key_bytes()))
            .collect()
            .await
            .unwrap();
        assert_eq!(ada.len(), 3);
        let lo = ("ada".to_string(), 0i64);
        let hi = ("bob".to_string(), 5i64);
        let mid = t
            .range(Bound::Included(&lo), Bound::Excluded(&hi), true)
            .collect()
            .await
            .unwrap();
        assert_eq!(mid.len(), 1);
        assert_eq!(mid[0].1.code, "ada10");
        assert_eq!(
            t.get(&("cyd".into(), 0)).await.unwrap().unwrap().code,
            "cyd0"
        );
        t.del(&("cyd".into(), 0)).await.unwrap();
        assert!(t.get(&("cyd".into(), 0)).await.unwrap().is_none());
    });
}

#[test]
fn large_values_and_limits() {
    block_on(async {
        let bee = bee().await;
        let big = vec![7u8; 3 << 20];
        bee.put(b"big", &big).await.unwrap();
        bee.put(b"small", b"s").await.unwrap();
        assert_eq!(bee.get(b"big").await.unwrap().unwrap().value, big);
        assert!(matches!(
            bee.put(vec![0u8; 2000], b"x").await,
            Err(Error::KeyTooLarge(2000))
        ));
        assert!(matches!(
            bee.put(b"k", vec![0u8; hyperbee_rs::MAX_VALUE_LEN + 1])
                .await,
            Err(Error::ValueTooLarge(_))
        ));
        let v = bee.version();
        bee.del(b"big").await.unwrap();
        assert_eq!(
            bee.checkout(v)
                .await
                .unwrap()
                .get(b"big")
                .await
                .unwrap()
                .unwrap()
                .value,
            big
        );
        assert!(matches!(
            bee.checkout(v + 100).await,
            Err(Error::NotAVersion(_))
        ));
    });
}
