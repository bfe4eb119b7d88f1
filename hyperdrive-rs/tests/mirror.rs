//! Mirroring between local folders and drives, and between drives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::executor::block_on;
use hypercore_rs::{Corestore, MemoryStorage};
use hyperdrive_rs::mirror::{drive_to_drive, drive_to_local, local_to_drive};
use hyperdrive_rs::{Drive, MirrorOp, MirrorOptions};
use std::fs;
use std::path::Path;
use std::sync::Arc;

async fn drive(name: &str) -> Drive {
    let s = Corestore::with_seed(Arc::new(MemoryStorage::new()), [5; 32]);
    Drive::open(&s, name).await.unwrap()
}

fn write(root: &Path, rel: &str, body: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, body).unwrap();
}

#[test]
fn local_to_drive_adds_changes_prunes_and_skips_unchanged() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "a.txt", b"alpha");
        write(root, "sub/b.bin", &vec![1u8; 150_000]);
        write(root, "sub/deep/c", b"c");
        let d = drive("m").await;
        d.put("/stale", b"old").await.unwrap();
        let all = MirrorOptions::default().prune(true);

        // Dry run: reports, changes nothing.
        let dry = local_to_drive(root, &d, &all.clone().dry_run(true))
            .await
            .unwrap();
        assert_eq!((dry.added(), dry.removed()), (3, 1));
        assert!(d.exists("/stale").await.unwrap());
        assert!(!d.exists("/a.txt").await.unwrap());

        let r = local_to_drive(root, &d, &all).await.unwrap();
        assert_eq!((r.added(), r.changed(), r.removed()), (3, 0, 1));
        assert_eq!(r.bytes_written, 5 + 150_000 + 1);
        assert_eq!(r.bytes_removed, 3);
        assert_eq!(
            d.get("/sub/b.bin").await.unwrap().unwrap(),
            vec![1u8; 150_000]
        );
        assert!(!d.exists("/stale").await.unwrap());

        // Again: everything is unchanged, no new version.
        let v = d.version();
        let again = local_to_drive(root, &d, &all).await.unwrap();
        assert!(again.changes.is_empty());
        assert_eq!(again.unchanged, 3);
        assert_eq!(d.version(), v);

        // Same size, different bytes: a change.
        write(root, "a.txt", b"ALPHA");
        let r = local_to_drive(root, &d, &all).await.unwrap();
        assert_eq!(r.changes.len(), 1);
        assert_eq!(r.changes[0].op, MirrorOp::Change);
        assert_eq!(d.get("/a.txt").await.unwrap().unwrap(), b"ALPHA");

        // The filter limits adds and prunes.
        fs::remove_file(root.join("sub/deep/c")).unwrap();
        write(root, "new.txt", b"n");
        let only_sub = all.clone().filter(|p| p.starts_with("/sub/"));
        let r = local_to_drive(root, &d, &only_sub).await.unwrap();
        assert_eq!((r.added(), r.removed()), (0, 1));
        assert!(!d.exists("/new.txt").await.unwrap());
    });
}

#[test]
fn drive_to_local_round_trip_and_prune() {
    block_on(async {
        let d = drive("src").await;
        d.put("/x/y.txt", b"why").await.unwrap();
        d.put("/big", &vec![9u8; 300_000]).await.unwrap();
        d.symlink("/link", "big").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let opts = MirrorOptions::default().prune(true);
        let r = drive_to_local(&d, &out, &opts).await.unwrap();
        assert_eq!(r.added(), 2);
        assert_eq!(r.skipped, ["/link"]);
        assert_eq!(fs::read(out.join("x/y.txt")).unwrap(), b"why");
        assert_eq!(fs::read(out.join("big")).unwrap(), vec![9u8; 300_000]);
        write(&out, "extra", b"e");
        let r = drive_to_local(&d, &out, &opts).await.unwrap();
        assert_eq!((r.added(), r.removed(), r.unchanged), (0, 1, 2));
        assert!(!out.join("extra").exists());
        // And back into another drive: identical listing.
        let d2 = drive("copy").await;
        local_to_drive(&out, &d2, &opts).await.unwrap();
        assert_eq!(d2.get("/x/y.txt").await.unwrap().unwrap(), b"why");
        assert_eq!(
            d2.entry("/big").await.unwrap().unwrap().hash(),
            d.entry("/big").await.unwrap().unwrap().hash()
        );
    });
}

#[cfg(unix)]
#[test]
fn drive_to_local_never_writes_through_symlinks() {
    block_on(async {
        let d = drive("evil").await;
        d.put("/escape/pwned", b"x").await.unwrap();
        d.put("/victim", b"y").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        let out = dir.path().join("out");
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(&out).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.join("target"), out.join("victim")).unwrap();
        fs::write(outside.join("target"), b"precious").unwrap();
        let r = drive_to_local(&d, &out, &MirrorOptions::default())
            .await
            .unwrap();
        assert_eq!(r.skipped, ["/escape/pwned"]);
        // The file symlink was replaced by a regular file, its target untouched.
        assert_eq!(fs::read(outside.join("target")).unwrap(), b"precious");
        assert!(!fs::symlink_metadata(out.join("victim"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(out.join("victim")).unwrap(), b"y");
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    });
}

#[test]
fn drive_to_drive_compares_hashes_without_reading_content() {
    block_on(async {
        let a = drive("a").await;
        let b = drive("b").await;
        a.put("/one", &vec![1u8; 100_000]).await.unwrap();
        a.put("/two", b"2").await.unwrap();
        a.symlink("/l", "one").await.unwrap();
        b.put("/one", &vec![1u8; 100_000]).await.unwrap();
        b.put("/gone", b"g").await.unwrap();
        // Clearing b's copy proves it is never read: compare by hash.
        b.clear("/one").await.unwrap();
        let opts = MirrorOptions::default().prune(true);
        let r = drive_to_drive(&a, &b, &opts).await.unwrap();
        assert_eq!(
            (r.added(), r.changed(), r.removed(), r.unchanged),
            (2, 0, 1, 1)
        );
        assert_eq!(b.get("/two").await.unwrap().unwrap(), b"2");
        assert_eq!(
            b.entry("/l").await.unwrap().unwrap().link_target(),
            Some("one")
        );
        assert!(!b.exists("/gone").await.unwrap());
        let r = drive_to_drive(&a, &b, &opts).await.unwrap();
        assert!(r.changes.is_empty());
    });
}

#[cfg(unix)]
#[test]
fn executable_flag_round_trips_through_a_local_folder() {
    use std::os::unix::fs::PermissionsExt;
    block_on(async {
        let d = drive("x").await;
        d.put_with(
            "/bin/run.sh",
            b"#!/bin/sh\n",
            hyperdrive_rs::PutOptions::default().executable(true),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        drive_to_local(&d, dir.path(), &MirrorOptions::default())
            .await
            .unwrap();
        let mode = fs::metadata(dir.path().join("bin/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        let back = drive("y").await;
        local_to_drive(dir.path(), &back, &MirrorOptions::default())
            .await
            .unwrap();
        assert!(back
            .entry("/bin/run.sh")
            .await
            .unwrap()
            .unwrap()
            .executable());
    });
}
