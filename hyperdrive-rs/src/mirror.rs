//! Mirroring between a drive and a local folder, or between two drives.
//!
//! The target is made to match the source: new files are added, different
//! ones replaced, and with `prune` files absent from the source removed.
//! Unchanged files are recognised by size and the BLAKE3 hash stored in the
//! entry, so a drive's content is never read to compare it (a local file is
//! hashed once). Writes into a drive happen in one atomic batch. Writing
//! into a local folder never leaves it: paths are validated drive paths
//! (no `..`, no empty segments), and no symlink or non-folder is ever
//! followed on the way to a file; such files are reported as skipped.
//! Local I/O uses `std::fs` (blocking, runtime-neutral).

use crate::drive::{Drive, DriveBatch, PutOptions, ReadRange};
use crate::entry::EntryKind;
use crate::error::{Error, Result};
use crate::path::segments;
use futures::io::AllowStdIo;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Decides which paths (canonical, `/a/b`) a mirror considers.
pub type Filter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Options for a mirror.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct MirrorOptions {
    /// Remove target files that the source does not have.
    pub prune: bool,
    /// Report what would change without changing anything.
    pub dry_run: bool,
    /// Only paths for which this returns true are added, changed or pruned.
    pub filter: Option<Filter>,
}

impl std::fmt::Debug for MirrorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorOptions")
            .field("prune", &self.prune)
            .field("dry_run", &self.dry_run)
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

impl MirrorOptions {
    /// Sets `prune`.
    pub fn prune(mut self, prune: bool) -> Self {
        self.prune = prune;
        self
    }

    /// Sets `dry_run`.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Sets the filter.
    pub fn filter(mut self, f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(f));
        self
    }

    fn wants(&self, path: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| f(path))
    }
}

/// What a mirror did (or would do) to one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MirrorOp {
    /// The file was new.
    Add,
    /// The file differed and was replaced.
    Change,
    /// The file was pruned.
    Remove,
}

/// One change made by a mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MirrorChange {
    /// Added, changed or removed.
    pub op: MirrorOp,
    /// Canonical path.
    pub path: String,
    /// Bytes written (add, change) or removed.
    pub bytes: u64,
}

/// The outcome of a mirror.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MirrorReport {
    /// Every change, in path order (removals last).
    pub changes: Vec<MirrorChange>,
    /// Files found identical (size and hash) and left alone.
    pub unchanged: u64,
    /// Paths left alone because they cannot be mirrored safely (symlinks into
    /// a local folder, names that are not valid drive paths, special files).
    pub skipped: Vec<String>,
    /// Bytes written by adds and changes.
    pub bytes_written: u64,
    /// Bytes of pruned files.
    pub bytes_removed: u64,
}

impl MirrorReport {
    fn record(&mut self, op: MirrorOp, path: &str, bytes: u64) {
        match op {
            MirrorOp::Remove => self.bytes_removed += bytes,
            _ => self.bytes_written += bytes,
        }
        self.changes.push(MirrorChange {
            op,
            path: path.to_string(),
            bytes,
        });
    }

    /// Number of adds.
    pub fn added(&self) -> usize {
        self.count(MirrorOp::Add)
    }

    /// Number of changes.
    pub fn changed(&self) -> usize {
        self.count(MirrorOp::Change)
    }

    /// Number of removals.
    pub fn removed(&self) -> usize {
        self.count(MirrorOp::Remove)
    }

    fn count(&self, op: MirrorOp) -> usize {
        self.changes.iter().filter(|c| c.op == op).count()
    }
}

struct LocalFile {
    path: PathBuf,
    size: u64,
    executable: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(Some(path), e)
}

#[cfg(unix)]
fn is_executable(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &fs::Metadata) -> bool {
    false
}

/// Every regular file under `root`, by canonical drive path; symlinks are
/// never followed. Returns the files and the paths skipped.
fn walk_local(root: &Path) -> Result<(BTreeMap<String, LocalFile>, Vec<String>)> {
    let mut files = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name();
            let shown = format!("{prefix}/{}", name.to_string_lossy());
            let Some(name) = name.to_str() else {
                skipped.push(shown);
                continue;
            };
            let path = format!("{prefix}/{name}");
            if segments(&path, false).map(|s| s.len()) != Ok(prefix.matches('/').count() + 1) {
                skipped.push(shown);
                continue;
            }
            let ft = e.file_type().map_err(io(&e.path()))?;
            if ft.is_dir() {
                stack.push((e.path(), path));
            } else if ft.is_file() {
                let m = e.metadata().map_err(io(&e.path()))?;
                files.insert(
                    path,
                    LocalFile {
                        path: e.path(),
                        size: m.len(),
                        executable: is_executable(&m),
                    },
                );
            } else {
                skipped.push(shown);
            }
        }
    }
    skipped.sort();
    Ok((files, skipped))
}

fn hash_local(path: &Path) -> Result<[u8; 32]> {
    let mut f = fs::File::open(path).map_err(io(path))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(*h.finalize().as_bytes());
        }
        h.update(&buf[..n]);
    }
}

async fn open_batch(drive: &Drive, dry_run: bool) -> Result<Option<DriveBatch>> {
    Ok(if dry_run {
        None
    } else {
        Some(drive.batch().await?)
    })
}

async fn finish(batch: Option<DriveBatch>) -> Result<()> {
    if let Some(b) = batch {
        b.flush().await?;
    }
    Ok(())
}

/// Makes `dst` match the local folder `src`.
pub async fn local_to_drive(src: &Path, dst: &Drive, opts: &MirrorOptions) -> Result<MirrorReport> {
    let (files, skipped) = walk_local(src)?;
    let mut report = MirrorReport {
        skipped,
        ..Default::default()
    };
    let mut batch = open_batch(dst, opts.dry_run).await?;
    for (path, f) in &files {
        if !opts.wants(path) {
            continue;
        }
        let op = match dst.entry(path).await? {
            None => MirrorOp::Add,
            Some(e)
                if e.is_file()
                    && e.size() == f.size
                    && e.executable() == f.executable
                    && e.hash() == Some(hash_local(&f.path)?) =>
            {
                report.unchanged += 1;
                continue;
            }
            Some(_) => MirrorOp::Change,
        };
        if let Some(b) = &mut batch {
            let file = fs::File::open(&f.path).map_err(io(&f.path))?;
            let options = PutOptions::default().executable(f.executable);
            b.put_stream(path, AllowStdIo::new(file), options).await?;
        }
        report.record(op, path, f.size);
    }
    if opts.prune {
        let mut list = dst.list("/", true)?;
        while let Some(e) = list.next().await? {
            if opts.wants(&e.path) && !files.contains_key(&e.path) {
                if let Some(b) = &mut batch {
                    b.del(&e.path).await?;
                }
                report.record(MirrorOp::Remove, &e.path, e.size());
            }
        }
    }
    finish(batch).await?;
    Ok(report)
}

/// Makes `dst` match `src` (files, symlinks, executable flags, metadata),
/// comparing entries by size and hash only.
pub async fn drive_to_drive(
    src: &Drive,
    dst: &Drive,
    opts: &MirrorOptions,
) -> Result<MirrorReport> {
    let mut report = MirrorReport::default();
    let mut seen = BTreeSet::new();
    let mut batch = open_batch(dst, opts.dry_run).await?;
    let mut list = src.list("/", true)?;
    while let Some(e) = list.next().await? {
        if !opts.wants(&e.path) {
            continue;
        }
        seen.insert(e.path.clone());
        let existing = dst.entry(&e.path).await?;
        if let Some(old) = &existing {
            if old.kind == e.kind && old.metadata == e.metadata {
                report.unchanged += 1;
                continue;
            }
            // Same content under a new blob location is still unchanged.
            if let (
                EntryKind::File {
                    blob: a,
                    hash: ha,
                    executable: xa,
                },
                EntryKind::File {
                    blob: b,
                    hash: hb,
                    executable: xb,
                },
            ) = (&old.kind, &e.kind)
            {
                if a.byte_length == b.byte_length
                    && ha == hb
                    && xa == xb
                    && old.metadata == e.metadata
                {
                    report.unchanged += 1;
                    continue;
                }
            }
        }
        let op = if existing.is_some() {
            MirrorOp::Change
        } else {
            MirrorOp::Add
        };
        if let Some(b) = &mut batch {
            match &e.kind {
                EntryKind::File { executable, .. } => {
                    let options = PutOptions::default()
                        .executable(*executable)
                        .metadata(e.metadata.clone());
                    b.put_chunks(&e.path, src.read_entry(&e, ReadRange::all())?, options)
                        .await?;
                }
                EntryKind::Symlink { target } => b.symlink(&e.path, target).await?,
            }
        }
        report.record(op, &e.path, e.size());
    }
    if opts.prune {
        let mut list = dst.list("/", true)?;
        while let Some(e) = list.next().await? {
            if opts.wants(&e.path) && !seen.contains(&e.path) {
                if let Some(b) = &mut batch {
                    b.del(&e.path).await?;
                }
                report.record(MirrorOp::Remove, &e.path, e.size());
            }
        }
    }
    finish(batch).await?;
    Ok(report)
}

/// Where a drive path lands under `root`, if it can be written without
/// following a symlink or crossing a non-folder: `None` means unsafe.
fn safe_target(root: &Path, path: &str) -> Result<Option<PathBuf>> {
    let Ok(segs) = segments(path, false) else {
        return Ok(None);
    };
    let mut p = root.to_path_buf();
    for (i, s) in segs.iter().enumerate() {
        p.push(s);
        let last = i + 1 == segs.len();
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(Some(&p), e)),
            Ok(m) if m.file_type().is_symlink() => {
                if !last {
                    return Ok(None);
                }
            }
            Ok(m) if last && m.is_dir() => return Ok(None),
            Ok(m) if !last && !m.is_dir() => return Ok(None),
            Ok(_) => {}
        }
    }
    Ok(Some(p))
}

/// Creates the folders leading to `target` under `root`, refusing symlinks.
fn make_parents(root: &Path, target: &Path) -> Result<bool> {
    let Some(parent) = target.parent() else {
        return Ok(false);
    };
    let Ok(rel) = parent.strip_prefix(root) else {
        return Ok(false);
    };
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&p).map_err(io(&p))?;
            }
            Err(e) => return Err(Error::io(Some(&p), e)),
        }
    }
    Ok(true)
}

/// Makes the local folder `dst` match `src`. Drive symlinks are not
/// written (reported as skipped).
pub async fn drive_to_local(src: &Drive, dst: &Path, opts: &MirrorOptions) -> Result<MirrorReport> {
    let mut report = MirrorReport::default();
    if !opts.dry_run {
        fs::create_dir_all(dst).map_err(io(dst))?;
    }
    let mut seen = BTreeSet::new();
    let mut list = src.list("/", true)?;
    while let Some(e) = list.next().await? {
        if !opts.wants(&e.path) {
            continue;
        }
        seen.insert(e.path.clone());
        let EntryKind::File {
            hash, executable, ..
        } = &e.kind
        else {
            report.skipped.push(e.path.clone());
            continue;
        };
        let Some(target) = safe_target(dst, &e.path)? else {
            report.skipped.push(e.path.clone());
            continue;
        };
        let op = match fs::symlink_metadata(&target) {
            Ok(m) if m.is_file() && m.len() == e.size() && hash_local(&target)? == *hash => {
                report.unchanged += 1;
                continue;
            }
            Ok(_) => MirrorOp::Change,
            Err(_) => MirrorOp::Add,
        };
        if !opts.dry_run {
            if !make_parents(dst, &target)? {
                report.skipped.push(e.path.clone());
                continue;
            }
            write_local(src, &e, &target, *executable).await?;
        }
        report.record(op, &e.path, e.size());
    }
    if opts.prune && fs::symlink_metadata(dst).is_ok() {
        let (files, _) = walk_local(dst)?;
        for (path, f) in files {
            if opts.wants(&path) && !seen.contains(&path) {
                if !opts.dry_run {
                    fs::remove_file(&f.path).map_err(io(&f.path))?;
                }
                report.record(MirrorOp::Remove, &path, f.size);
            }
        }
    }
    Ok(report)
}

/// Streams a file into a temporary sibling, then renames it over `target`
/// (which replaces a symlink there rather than following it).
async fn write_local(
    src: &Drive,
    e: &crate::entry::Entry,
    target: &Path,
    executable: bool,
) -> Result<()> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.hyperdrive-rs-tmp"));
    let result = async {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let mut s = src.read_entry(e, ReadRange::all())?;
        while let Some(chunk) = s.next().await {
            f.write_all(&chunk?).map_err(io(&tmp))?;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = if executable { 0o755 } else { 0o644 };
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io(&tmp))?;
        }
        #[cfg(not(unix))]
        let _ = executable;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, target).map_err(io(target))
    }
    .await;
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
