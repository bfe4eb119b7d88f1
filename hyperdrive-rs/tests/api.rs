//! Behaviour of the public API: files, symlinks, paths, listings, streams,
//! batches, versions, local storage and hostile metadata.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::executor::block_on;
use futures::StreamExt;
use hypercore_rs::{Corestore, DiskStorage, MemoryStorage};
use hyperdrive_rs::{
    hazmat, CorruptError, DiffKind, Drive, EntryKind, Error, PathError, PutOptions, ReadRange,
    CHUNK_SIZE,
};
use std::sync::Arc;

fn store() -> Corestore {
    Corestore::with_seed(Arc::new(MemoryStorage::new()), [3; 32])
}

async fn drive() -> Drive {
    Drive::open(&store(), "d").await.unwrap()
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn read_all(d: &Drive, path: &str, range: ReadRange) -> Result<Vec<u8>, Error> {
    let mut s = d.read(path, range).await?;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

#[test]
fn put_get_entry_exists_del() {
    block_on(async {
        let d = drive().await;
        let body = data(200_000, 1);
        d.put_with(
            "/a/b.bin",
            &body,
            PutOptions::default()
                .executable(true)
                .metadata(b"mime=x".to_vec()),
        )
        .await
        .unwrap();
        assert_eq!(d.get("a/b.bin").await.unwrap().unwrap(), body);
        let e = d.entry("/a/./b.bin").await.unwrap().unwrap();
        assert_eq!(e.path, "/a/b.bin");
        assert_eq!(e.size(), 200_000);
        assert!(e.executable());
        assert_eq!(e.metadata, b"mime=x");
        assert_eq!(e.hash(), Some(*blake3::hash(&body).as_bytes()));
        let blob = e.blob().unwrap();
        assert_eq!(blob.block_length, 200_000u64.div_ceil(CHUNK_SIZE));
        assert!(d.exists("/a/b.bin").await.unwrap());
        assert!(!d.exists("/a").await.unwrap());
        d.put("/empty", b"").await.unwrap();
        assert_eq!(d.get("/empty").await.unwrap().unwrap(), b"");
        assert!(d.del("/a/b.bin").await.unwrap());
        assert!(!d.del("/a/b.bin").await.unwrap());
        assert_eq!(d.get("/a/b.bin").await.unwrap(), None);
        // Overwrite keeps only the new content.
        d.put("/empty", b"now full").await.unwrap();
        assert_eq!(d.get("/empty").await.unwrap().unwrap(), b"now full");
    });
}

#[test]
fn bad_paths_are_typed_errors() {
    block_on(async {
        let d = drive().await;
        let cases = [
            ("", PathError::Empty),
            ("/", PathError::Empty),
            ("a/../b", PathError::DotDot),
            ("../etc/passwd", PathError::DotDot),
            ("a//b", PathError::EmptySegment),
            ("//etc/passwd", PathError::EmptySegment),
            ("a\0b", PathError::Nul),
            ("a\\..\\b", PathError::Backslash),
        ];
        for (p, want) in cases {
            match d.put(p, b"x").await {
                Err(Error::Path { reason, .. }) => assert_eq!(reason, want, "{p:?}"),
                other => panic!("{p:?}: {other:?}"),
            }
            assert!(matches!(d.get(p).await, Err(Error::Path { .. })));
        }
        let long = format!("/{}", "x".repeat(300));
        assert!(matches!(
            d.put(&long, b"x").await,
            Err(Error::Path {
                reason: PathError::SegmentTooLong(300),
                ..
            })
        ));
        // Nothing was written by the rejected calls.
        assert!(d
            .list("/", true)
            .unwrap()
            .collect()
            .await
            .unwrap()
            .is_empty());
        assert_eq!(d.blobs().length(), 0);
        assert!(matches!(
            d.put_with("/m", b"", PutOptions::default().metadata(vec![0; 70_000]))
                .await,
            Err(Error::MetadataTooLarge(70_000))
        ));
    });
}

#[test]
fn symlinks_follow_and_loops_stop() {
    block_on(async {
        let d = drive().await;
        d.put("/docs/report.pdf", b"pdf").await.unwrap();
        d.symlink("/latest", "docs/report.pdf").await.unwrap();
        d.symlink("/docs/up", "../latest").await.unwrap();
        assert_eq!(d.get("/docs/up").await.unwrap().unwrap(), b"pdf");
        let l = d.entry("/latest").await.unwrap().unwrap();
        assert_eq!(l.link_target(), Some("docs/report.pdf"));
        d.symlink("/loop/a", "b").await.unwrap();
        d.symlink("/loop/b", "a").await.unwrap();
        assert!(matches!(d.get("/loop/a").await, Err(Error::SymlinkLoop(_))));
        d.symlink("/dangling", "nowhere").await.unwrap();
        assert_eq!(d.get("/dangling").await.unwrap(), None);
        assert!(matches!(
            d.symlink("/esc", "../../outside").await,
            Err(Error::Path {
                reason: PathError::Escapes,
                ..
            })
        ));
    });
}

#[test]
fn list_and_readdir_one_level_and_recursive() {
    block_on(async {
        let d = drive().await;
        let mut b = d.batch().await.unwrap();
        for p in [
            "/a", "/a-b", "/b/x", "/b/y/z", "/b/y/w", "/b/yy", "/b/y", "/c/d/e/f",
        ] {
            b.put(p, p.as_bytes()).await.unwrap();
        }
        b.flush().await.unwrap();
        let names =
            |v: Vec<hyperdrive_rs::Entry>| v.into_iter().map(|e| e.path).collect::<Vec<_>>();
        assert_eq!(
            names(d.list("/", false).unwrap().collect().await.unwrap()),
            ["/a", "/a-b"]
        );
        assert_eq!(
            names(d.list("/b", false).unwrap().collect().await.unwrap()),
            ["/b/x", "/b/y", "/b/yy"]
        );
        assert_eq!(
            names(d.list("/b/", true).unwrap().collect().await.unwrap()),
            ["/b/x", "/b/y", "/b/y/w", "/b/y/z", "/b/yy"]
        );
        assert_eq!(d.list("/", true).unwrap().collect().await.unwrap().len(), 8);
        assert_eq!(
            d.readdir("/").unwrap().collect().await.unwrap(),
            ["a", "a-b", "b", "c"]
        );
        assert_eq!(
            d.readdir("/b").unwrap().collect().await.unwrap(),
            ["x", "y", "yy"]
        );
        assert!(d
            .readdir("/nope")
            .unwrap()
            .collect()
            .await
            .unwrap()
            .is_empty());
        assert!(d.list("/../", false).is_err());
    });
}

#[test]
fn streaming_write_and_ranged_reads() {
    block_on(async {
        let d = drive().await;
        let body = data(3 * CHUNK_SIZE as usize + 1234, 9);
        // A reader that returns odd-sized pieces.
        let reader = futures::io::Cursor::new(body.clone());
        d.put_stream("/big", reader, PutOptions::default())
            .await
            .unwrap();
        assert_eq!(read_all(&d, "/big", ReadRange::all()).await.unwrap(), body);
        let c = CHUNK_SIZE;
        for (start, len) in [
            (0, 1),
            (c - 1, 2),
            (c, c),
            (5, 3 * c),
            (3 * c + 1000, 10_000),
            (body.len() as u64, 5),
        ] {
            let got = read_all(&d, "/big", ReadRange::new(start, len))
                .await
                .unwrap();
            let end = (start + len).min(body.len() as u64) as usize;
            assert_eq!(got, body[start as usize..end], "{start} {len}");
        }
        assert!(matches!(
            read_all(&d, "/big", ReadRange::from(body.len() as u64 + 1)).await,
            Err(Error::RangeOutOfBounds { .. })
        ));
        assert!(matches!(
            d.read("/missing", ReadRange::all()).await,
            Err(Error::NotFound(_))
        ));
        // A range read touches only the chunks it covers: clear the others.
        let blob = d.entry("/big").await.unwrap().unwrap().blob().unwrap();
        d.blobs()
            .clear(blob.block_offset, blob.block_offset + 2)
            .await
            .unwrap();
        let got = read_all(&d, "/big", ReadRange::new(2 * c + 7, 100))
            .await
            .unwrap();
        assert_eq!(got, body[2 * c as usize + 7..2 * c as usize + 107]);
        assert!(matches!(
            read_all(&d, "/big", ReadRange::new(0, 10)).await,
            Err(Error::NotAvailable { .. })
        ));
    });
}

#[test]
fn batches_are_atomic_and_read_their_own_writes() {
    block_on(async {
        let d = drive().await;
        d.put("/keep", b"1").await.unwrap();
        let v = d.version();
        let mut b = d.batch().await.unwrap();
        b.put("/x", b"x").await.unwrap();
        b.del("/keep").await.unwrap();
        assert!(b.entry("/keep").await.unwrap().is_none());
        assert!(b.entry("/x").await.unwrap().is_some());
        drop(b);
        // Dropped: nothing committed.
        assert_eq!(d.version(), v);
        assert!(d.exists("/keep").await.unwrap());
        assert!(!d.exists("/x").await.unwrap());
        let mut b = d.batch().await.unwrap();
        b.put("/x", b"x").await.unwrap();
        b.put("/y", b"y").await.unwrap();
        b.del("/keep").await.unwrap();
        let v2 = b.flush().await.unwrap();
        assert_eq!(v2, d.version());
        // One version step holds the whole batch.
        let diff = d.diff(v, v2, "/").await.unwrap().collect().await.unwrap();
        assert_eq!(diff.len(), 3);
    });
}

#[test]
fn checkout_diff_and_watch() {
    block_on(async {
        let d = drive().await;
        d.put("/f/a", b"1").await.unwrap();
        d.put("/f/b", b"2").await.unwrap();
        d.put("/g/c", b"3").await.unwrap();
        let v1 = d.version();
        let mut watch = d.watch("/f").unwrap();
        d.put("/f/a", b"changed").await.unwrap();
        d.del("/f/b").await.unwrap();
        d.put("/f/new", b"4").await.unwrap();
        d.put("/g/c", b"outside").await.unwrap();
        let v2 = d.version();
        let old = d.checkout(v1).await.unwrap();
        assert!(!old.writable());
        assert_eq!(old.get("/f/a").await.unwrap().unwrap(), b"1");
        assert_eq!(old.get("/f/b").await.unwrap().unwrap(), b"2");
        assert!(matches!(old.put("/z", b"").await, Err(Error::ReadOnly)));
        let diff = d.diff(v1, v2, "/f").await.unwrap().collect().await.unwrap();
        let got: Vec<_> = diff.iter().map(|x| (x.path.as_str(), x.kind())).collect();
        assert_eq!(
            got,
            [
                ("/f/a", DiffKind::Changed),
                ("/f/b", DiffKind::Removed),
                ("/f/new", DiffKind::Added)
            ]
        );
        let all = d.diff(v1, v2, "/").await.unwrap().collect().await.unwrap();
        assert_eq!(all.len(), 4);
        let c = watch.next().await.unwrap().unwrap();
        assert!(c.from >= v1 && c.to > c.from);
    });
}

#[cfg(unix)]
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                total += std::fs::metadata(&p).unwrap().blocks() * 512;
            }
        }
    }
    total
}

#[cfg(target_os = "linux")]
#[test]
fn clear_gives_disk_space_back_and_download_is_local_noop() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(DiskStorage::open(dir.path()).unwrap());
        let store = Corestore::with_seed(storage.clone(), [4; 32]);
        let d = Drive::open(&store, "scans").await.unwrap();
        let body = data(24 << 20, 2);
        d.put("/mri/series-1.dcm", &body).await.unwrap();
        d.put("/mri/small.txt", b"keep").await.unwrap();
        d.flush().await.unwrap();
        storage.checkpoint().unwrap();
        let full = allocated(dir.path());
        assert!(full > 20 << 20, "expected >20 MiB on disk, saw {full}");
        d.download("/mri").await.unwrap();
        let cleared = d.clear("/mri/series-1.dcm").await.unwrap();
        assert_eq!(cleared, (24u64 << 20).div_ceil(CHUNK_SIZE));
        storage.checkpoint().unwrap();
        let after = allocated(dir.path());
        assert!(
            after < full - (16 << 20),
            "clear gave back too little: {full} -> {after}"
        );
        // The entry stays, the content is gone locally, the rest is intact.
        assert!(d.exists("/mri/series-1.dcm").await.unwrap());
        assert!(matches!(
            d.get("/mri/series-1.dcm").await,
            Err(Error::NotAvailable { .. })
        ));
        assert_eq!(d.get("/mri/small.txt").await.unwrap().unwrap(), b"keep");
    });
}

#[test]
fn hostile_entries_yield_errors_not_bytes() {
    block_on(async {
        let d = drive().await;
        d.put("/good", &data(100_000, 5)).await.unwrap();
        let good = d.entry("/good").await.unwrap().unwrap();
        let EntryKind::File { blob, hash, .. } = good.kind.clone() else {
            unreachable!()
        };
        let raw = |kind: &EntryKind| hazmat::encode_entry(kind, b"");
        let key = |p: &str| hazmat::key_of_path(p).unwrap();
        let file = |blob, hash| EntryKind::File {
            blob,
            hash,
            executable: false,
        };
        let bee = d.db();
        // Points beyond the blobs core.
        bee.put(
            key("/beyond"),
            raw(&file(hazmat::blob(1000, 2, 100_000), hash)),
        )
        .await
        .unwrap();
        // Right blocks, wrong hash.
        bee.put(key("/wrong-hash"), raw(&file(blob, [0; 32])))
            .await
            .unwrap();
        // Claims fewer bytes than its chunks hold.
        bee.put(
            key("/short"),
            raw(&file(hazmat::blob(blob.block_offset, 1, 10), hash)),
        )
        .await
        .unwrap();
        // Inconsistent block count.
        bee.put(key("/count"), raw(&file(hazmat::blob(0, 5, 10), hash)))
            .await
            .unwrap();
        // Garbage and an unknown version.
        bee.put(key("/garbage"), [1u8, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        bee.put(key("/v9"), [9u8, 0]).await.unwrap();
        // A key that is not a path.
        bee.put(b"a\0\0b", raw(&good.kind)).await.unwrap();
        assert!(matches!(
            d.get("/beyond").await,
            Err(Error::Corrupt(CorruptError::BlobOutOfRange { .. }))
        ));
        assert!(matches!(
            d.get("/wrong-hash").await,
            Err(Error::Corrupt(CorruptError::HashMismatch { .. }))
        ));
        // A streaming read of the whole file fails before its last chunk.
        let mut s = d.read("/wrong-hash", ReadRange::all()).await.unwrap();
        let mut last = None;
        while let Some(c) = s.next().await {
            last = Some(c);
        }
        assert!(matches!(last, Some(Err(Error::Corrupt(_)))));
        assert!(matches!(
            d.get("/short").await,
            Err(Error::Corrupt(CorruptError::ChunkSize { .. }))
        ));
        assert!(matches!(
            d.entry("/count").await,
            Err(Error::Corrupt(CorruptError::Entry { .. }))
        ));
        assert!(matches!(
            d.entry("/garbage").await,
            Err(Error::Corrupt(CorruptError::Entry { .. }))
        ));
        assert!(matches!(
            d.entry("/v9").await,
            Err(Error::UnsupportedVersion(9))
        ));
        // Listing the root reaches the bad key and reports it.
        let mut l = d.list("/", true).unwrap();
        let mut saw_err = false;
        loop {
            match l.next().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    saw_err = true;
                    break;
                }
            }
        }
        assert!(saw_err);
        assert_eq!(d.get("/good").await.unwrap().unwrap(), data(100_000, 5));
    });
}

#[test]
fn reader_by_key_sees_the_writer_and_cannot_write() {
    block_on(async {
        let s = store();
        let d = Drive::open(&s, "d").await.unwrap();
        d.put("/x", b"hello").await.unwrap();
        // Reopening by name gives the same drive and the same blobs core.
        let again = Drive::open(&s, "d").await.unwrap();
        assert_eq!(again.key(), d.key());
        assert_eq!(again.blobs_key(), d.blobs_key());
        assert_ne!(d.key(), d.blobs_key());
        let other = Drive::open(&s, "other").await.unwrap();
        assert_ne!(other.blobs_key(), d.blobs_key());
        let r = Drive::open_key(&s, d.key()).await.unwrap();
        assert_eq!(r.get("/x").await.unwrap().unwrap(), b"hello");
        // A core that is not a drive has no header.
        let plain = s.get("plain").await.unwrap();
        hyperbee_rs::Bee::open(plain.clone()).await.unwrap();
        assert!(matches!(
            Drive::open_key(&s, plain.key()).await,
            Err(Error::NoHeader)
        ));
    });
}

/// A reader that fails after handing out some bytes.
struct Failing(usize);

impl futures::io::AsyncRead for Failing {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk unplugged")));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(1);
        self.0 -= n;
        std::task::Poll::Ready(Ok(n))
    }
}

#[test]
fn a_failed_streaming_write_keeps_the_old_file_and_frees_its_chunks() {
    block_on(async {
        let d = drive().await;
        d.put("/f", b"old").await.unwrap();
        let v = d.version();
        let before = d.blobs().length();
        let r = d
            .put_stream("/f", Failing(3 << 20), PutOptions::default())
            .await;
        assert!(matches!(r, Err(Error::Io { .. })));
        assert_eq!(d.version(), v);
        assert_eq!(d.get("/f").await.unwrap().unwrap(), b"old");
        // The chunks appended before the failure were cleared.
        let after = d.blobs().length();
        assert!(after > before);
        for i in before..after {
            assert!(d.blobs().get(i).await.unwrap().is_none());
        }
        // The drive keeps working.
        d.put("/g", b"new").await.unwrap();
        assert_eq!(d.get("/g").await.unwrap().unwrap(), b"new");
    });
}

/// Hands out a body in pieces of varying size (1 byte to ~7 KB), like a
/// socket would.
struct Trickle {
    body: Vec<u8>,
    pos: usize,
    step: usize,
}

impl futures::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.step = (self.step * 31 + 7) % 7001;
        let n = (self.step + 1)
            .min(buf.len())
            .min(self.body.len() - self.pos);
        let pos = self.pos;
        buf[..n].copy_from_slice(&self.body[pos..pos + n]);
        self.pos += n;
        std::task::Poll::Ready(Ok(n))
    }
}

#[test]
fn a_trickling_stream_stores_what_a_whole_put_stores() {
    block_on(async {
        let d = drive().await;
        for len in [
            0usize,
            1,
            CHUNK_SIZE as usize,
            17 * CHUNK_SIZE as usize + 4321,
        ] {
            let body = data(len, 3);
            let reader = Trickle {
                body: body.clone(),
                pos: 0,
                step: 1,
            };
            d.put_stream("/s", reader, PutOptions::default())
                .await
                .unwrap();
            d.put("/w", &body).await.unwrap();
            let s = d.entry("/s").await.unwrap().unwrap();
            let w = d.entry("/w").await.unwrap().unwrap();
            assert_eq!(s.size(), len as u64);
            assert_eq!(s.hash(), w.hash());
            assert_eq!(s.hash(), Some(*blake3::hash(&body).as_bytes()));
            let blob = s.blob().unwrap();
            assert_eq!(blob.block_length, (len as u64).div_ceil(CHUNK_SIZE));
            assert_eq!(read_all(&d, "/s", ReadRange::all()).await.unwrap(), body);
        }
    });
}
