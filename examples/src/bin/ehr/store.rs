//! The data folder: `ehr.json` (who this device is, which record) and
//! `store/` (the record's cores, locked while a process uses them).

use crate::CliError;
use ehr_core::Record;
use hypercore_rs::{DiskStorage, Storage};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Opens (and locks) the data folder's store, creating it if asked.
pub(crate) fn open_storage(dir: &Path, create: bool) -> Result<Arc<dyn Storage>, CliError> {
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
        Identity::Patient { .. } => Some(Record::builder(storage).open().await?),
        Identity::Provider {
            record: Some(key), ..
        } => Some(Record::builder(storage).join(*key).await?),
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
