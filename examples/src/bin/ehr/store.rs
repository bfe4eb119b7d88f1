//! The data folder: `ehr.json` (who this device is, which record),
//! `store/` (the record's cores, locked while a process uses them) and,
//! when created with a passphrase, `keys.locked`.
//!
//! **Passphrase.** `ehr init` with a passphrase (`--passphrase`,
//! `--passphrase-file FILE` or `EHR_PASSPHRASE`) draws the store's primary
//! seed (every key of the device derives from it: writer, network and
//! device identities) and keeps it only in `keys.locked`, encrypted under
//! a key Argon2id derives from the passphrase (ehr-core's `keystore`); the
//! store itself then holds no secret. Every later command unlocks it
//! first, before touching the store: a wrong or missing passphrase is one
//! line of error and nothing changes.

use crate::CliError;
use ehr_core::keystore::{self, DeviceSecrets, KdfParams, KeystoreError};
use ehr_core::{Record, RecordBuilder};
use hypercore_rs::{DiskStorage, Storage};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// What a data folder holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// A patient's own record (this device created it).
    Patient { patient: String },
    /// A provider (doctor, lab, ...) that may have joined one record.
    Provider {
        name: String,
        record: Option<[u8; 32]>,
    },
}

/// The default data folder: `$XDG_DATA_HOME/ehr`, else
/// `$HOME/.local/share/ehr`, else `./ehr-data`.
pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("ehr");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/ehr");
    }
    PathBuf::from("ehr-data")
}

fn config_path(dir: &Path) -> PathBuf {
    dir.join("ehr.json")
}

/// Reads `ehr.json`.
pub(crate) fn load_identity(dir: &Path) -> Result<Identity, CliError> {
    let path = config_path(dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::NoData(dir.to_path_buf()))
        }
        Err(e) => return Err(CliError::io(&path, e)),
    };
    let v: Value = serde_json::from_slice(&text)
        .map_err(|_| CliError::Corrupt(path.clone(), "not JSON".into()))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    match s("kind").as_deref() {
        Some("patient") => Ok(Identity::Patient {
            patient: s("patient")
                .ok_or_else(|| CliError::Corrupt(path.clone(), "no patient".into()))?,
        }),
        Some("provider") => {
            let record = match s("record") {
                None => None,
                Some(h) => Some(
                    ehr_examples::parse_key(&h)
                        .ok_or_else(|| CliError::Corrupt(path.clone(), "bad record key".into()))?,
                ),
            };
            Ok(Identity::Provider {
                name: s("name").unwrap_or_default(),
                record,
            })
        }
        _ => Err(CliError::Corrupt(path, "unknown kind".into())),
    }
}

/// Writes `ehr.json` atomically (temp file, fsync, rename).
pub(crate) fn save_identity(dir: &Path, id: &Identity) -> Result<(), CliError> {
    let v = match id {
        Identity::Patient { patient } => json!({"kind": "patient", "patient": patient}),
        Identity::Provider { name, record } => json!({
            "kind": "provider",
            "name": name,
            "record": record.map(|k| ehr_examples::hex(&k)),
        }),
    };
    let path = config_path(dir);
    let tmp = dir.join("ehr.json.tmp");
    let text = serde_json::to_vec_pretty(&v).map_err(|e| CliError::Other(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| CliError::io(&path, e))
}

static PASSPHRASE: OnceLock<Option<Vec<u8>>> = OnceLock::new();
/// The seeds unlocked in this process, by data folder (Argon2id runs once).
static SEEDS: Mutex<Vec<(PathBuf, [u8; 32])>> = Mutex::new(Vec::new());

/// Sets the passphrase for this process (from the command line or env).
pub(crate) fn set_passphrase(p: Option<Vec<u8>>) {
    let _ = PASSPHRASE.set(p);
}

/// The passphrase from `--passphrase`, else `--passphrase-file` (its
/// first line), else `EHR_PASSPHRASE`.
pub(crate) fn passphrase_from(
    arg: Option<String>,
    file: Option<&Path>,
) -> Result<Option<Vec<u8>>, CliError> {
    if let Some(p) = arg {
        return Ok(Some(p.into_bytes()));
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| CliError::io(f, e))?;
        let line = text.lines().next().unwrap_or("");
        return Ok(Some(line.as_bytes().to_vec()));
    }
    Ok(std::env::var_os("EHR_PASSPHRASE").map(|v| v.to_string_lossy().as_bytes().to_vec()))
}

fn passphrase() -> Option<Vec<u8>> {
    PASSPHRASE.get().cloned().flatten()
}

fn key_file(dir: &Path) -> PathBuf {
    dir.join("keys.locked")
}

/// At `init`: with a passphrase, draws a fresh seed and writes it locked
/// to `keys.locked`; returns it (`None`: no passphrase, the store keeps
/// its seed itself as before).
pub(crate) fn create_key_file(dir: &Path) -> Result<Option<[u8; 32]>, CliError> {
    let Some(pass) = passphrase() else {
        return Ok(None);
    };
    if pass.is_empty() {
        return Err(CliError::Usage(
            "the passphrase is empty: choose a real one".into(),
        ));
    }
    let mut seed = [0u8; 32];
    hypercore_rs::Entropy::fill(&hypercore_rs::OsEntropy, &mut seed)
        .map_err(|e| CliError::Other(format!("no randomness: {e}")))?;
    let secrets = DeviceSecrets {
        identity_seed: seed,
        keyring: ehr_core::scope_crypto::Keyring::new(),
    };
    let locked = keystore::lock(
        &secrets,
        &pass,
        KdfParams::default(),
        &hypercore_rs::OsEntropy,
    )
    .map_err(|e| CliError::Other(format!("cannot lock the keys: {e}")))?;
    let path = key_file(dir);
    let tmp = dir.join("keys.locked.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&locked)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| CliError::io(&path, e))?;
    if let Ok(mut s) = SEEDS.lock() {
        s.push((dir.to_path_buf(), seed));
    }
    Ok(Some(seed))
}

/// The data folder's seed if it is locked by a passphrase (unlocking it,
/// once per process), `None` if the folder has no `keys.locked`.
pub(crate) fn unlock_seed(dir: &Path) -> Result<Option<[u8; 32]>, CliError> {
    if let Ok(s) = SEEDS.lock() {
        if let Some((_, seed)) = s.iter().find(|(d, _)| d == dir) {
            return Ok(Some(*seed));
        }
    }
    let path = key_file(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::io(&path, e)),
    };
    let pass = passphrase().ok_or_else(|| CliError::NeedPassphrase(dir.to_path_buf()))?;
    let secrets = keystore::unlock(&bytes, &pass).map_err(|e| match e {
        KeystoreError::WrongPassphrase => CliError::WrongPassphrase(dir.to_path_buf()),
        other => CliError::Corrupt(path.clone(), other.to_string()),
    })?;
    if let Ok(mut s) = SEEDS.lock() {
        s.push((dir.to_path_buf(), secrets.identity_seed));
    }
    Ok(Some(secrets.identity_seed))
}

/// A record builder on `storage` with the folder's unlocked seed, if any.
pub(crate) fn builder(dir: &Path, storage: Arc<dyn Storage>) -> Result<RecordBuilder, CliError> {
    let b = Record::builder(storage);
    Ok(match unlock_seed(dir)? {
        Some(seed) => b.seed(seed),
        None => b,
    })
}

/// Opens (and locks) the data folder's store, creating it if asked. An
/// existing folder locked by a passphrase is unlocked first, before the
/// store is touched.
pub(crate) fn open_storage(dir: &Path, create: bool) -> Result<Arc<dyn Storage>, CliError> {
    if !create {
        unlock_seed(dir)?;
    }
    let store = dir.join("store");
    if !create && !store.exists() {
        return Err(CliError::NoData(dir.to_path_buf()));
    }
    if create {
        std::fs::create_dir_all(&store).map_err(|e| CliError::io(&store, e))?;
    }
    match DiskStorage::open(&store) {
        Ok(s) => Ok(Arc::new(s)),
        Err(e) => {
            let text = e.to_string();
            if matches!(e, hypercore_rs::StorageError::Locked(_)) {
                Err(CliError::Locked(dir.to_path_buf()))
            } else {
                Err(CliError::Other(format!(
                    "cannot open {}: {text}",
                    store.display()
                )))
            }
        }
    }
}

/// An open data folder: who we are and the record (if any yet).
pub(crate) struct Opened {
    pub(crate) identity: Identity,
    pub(crate) record: Option<Record>,
}

/// Opens the data folder and its record.
pub(crate) async fn open(dir: &Path) -> Result<Opened, CliError> {
    let identity = load_identity(dir)?;
    let storage = open_storage(dir, false)?;
    let record = match &identity {
        Identity::Patient { .. } => Some(builder(dir, storage)?.open().await?),
        Identity::Provider {
            record: Some(key), ..
        } => Some(builder(dir, storage)?.join(*key).await?),
        Identity::Provider { record: None, .. } => None,
    };
    Ok(Opened { identity, record })
}

/// Opens the data folder's record, or says that this provider joined none.
pub(crate) async fn open_record(dir: &Path) -> Result<(Identity, Record), CliError> {
    let o = open(dir).await?;
    match o.record {
        Some(r) => Ok((o.identity, r)),
        None => Err(CliError::NotJoined),
    }
}
