//! Providers' self-reported read logs.
//!
//! A read leaves no trace in the record: a provider's device decrypts from
//! its own replica. So each device's client logs its reads itself
//! ([`SecureRecord::log_read`], or [`SecureRecord::get_logged`] which logs
//! and then reads) to its own *read-log core*: a hypercore signed by the
//! device's identity key, so its key follows from the identity
//! ([`read_log_key`]) and the patient needs nothing but the identities it
//! shared keys with. Each block is one [`ReadLogEntry`] (record key,
//! resource type and id, time, purpose), signed into the core like any
//! hypercore block; it replicates with the record over the same
//! connections.
//!
//! The patient's device follows the logs of every identity it wrapped keys
//! to, and of its emergency contacts ([`SecureRecord::follow_read_logs`],
//! keep the handle while syncing), and lists them
//! ([`SecureRecord::read_logs`]).
//!
//! **Self-reported.** These logs are exactly as honest as the provider's
//! software: a modified client can read without logging, and nothing
//! cryptographic stops that. What the log does guarantee is that an entry,
//! once replicated, cannot be altered or removed without the change being
//! detected (it is signed and part of a Merkle tree), and that only that
//! device could have written it. Entries are marked
//! [`ReadLogEntry::self_reported`].

use crate::error::Error;
use crate::keys::IdentityPublic;
use crate::secure::SecureRecord;
use hypercore_rs::{Core, CoreOptions, Download, KeyPair, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

const FORMAT: u8 = 1;

/// One logged read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadLogEntry {
    /// The device that logged it.
    pub reader: IdentityPublic,
    /// Its position in that device's log.
    pub seq: u64,
    /// The resource type read.
    pub resource_type: String,
    /// The resource id read.
    pub id: String,
    /// When (the reader's clock, ms since the epoch).
    pub time: u64,
    /// Why, as the reader states it.
    pub purpose: String,
    /// Always `true`: the reader's own account, not proof of anything
    /// beyond what it chose to log.
    pub self_reported: bool,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    format: u8,
    record: [u8; 32],
    resource_type: String,
    id: String,
    time: u64,
    purpose: String,
}

/// The key of the read-log core of the device with this identity.
pub fn read_log_key(identity: &IdentityPublic) -> [u8; 32] {
    Manifest::single(identity.0).key()
}

/// Keeps the followed read logs downloading while it lives.
#[derive(Debug)]
pub struct ReadLogFollow {
    _downloads: Vec<Download>,
    /// The identities followed.
    pub readers: Vec<IdentityPublic>,
}

impl SecureRecord {
    async fn own_read_log(&self) -> Result<Core, Error> {
        let kp = KeyPair::from_seed(self.identity_secret().seed());
        Ok(self
            .record()
            .base()
            .store()
            .get_with_key_pair(kp, CoreOptions::default())
            .await?)
    }

    /// Appends a read of `resource_type/id` for `purpose` to this device's
    /// read log (durably, before returning).
    pub async fn log_read(
        &self,
        resource_type: &str,
        id: &str,
        purpose: &str,
    ) -> Result<(), Error> {
        let w = Wire {
            format: FORMAT,
            record: self.record().key(),
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            time: self.record().inner.clock.now_ms(),
            purpose: purpose.to_owned(),
        };
        let bytes = postcard::to_stdvec(&w).map_err(|e| Error::Storage(e.to_string()))?;
        let core = self.own_read_log().await?;
        core.append(&bytes).await?;
        core.flush().await?;
        Ok(())
    }

    /// Logs the read (first), then reads like [`SecureRecord::get`].
    pub async fn get_logged(
        &self,
        resource_type: &str,
        id: &str,
        purpose: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        self.log_read(resource_type, id, purpose).await?;
        self.get(resource_type, id).await
    }

    /// The identities whose read logs the patient follows: every device
    /// some scope key was wrapped to, and the emergency contacts.
    async fn readers(&self) -> Result<Vec<IdentityPublic>, Error> {
        let me = self.identity();
        let mut set: BTreeSet<IdentityPublic> = self
            .all_wraps()
            .await?
            .into_iter()
            .map(|w| w.recipient)
            .collect();
        for s in self.emergency_setups().await? {
            set.extend(s.contacts.iter().map(|c| c.contact));
        }
        set.remove(&me);
        Ok(set.into_iter().collect())
    }

    /// Starts downloading the read logs of every reader (see the module
    /// docs) over this record's replication; keep the handle while syncing.
    pub async fn follow_read_logs(&self) -> Result<ReadLogFollow, Error> {
        let readers = self.readers().await?;
        let store = self.record().base().store().clone();
        let mut downloads = Vec::with_capacity(readers.len());
        for r in &readers {
            let core = store.get_by_key(read_log_key(r)).await?;
            downloads.push(core.download_live());
        }
        Ok(ReadLogFollow {
            _downloads: downloads,
            readers,
        })
    }

    /// Every logged read held locally, from this device's own log and the
    /// readers' logs, oldest first. Entries for other records and blocks
    /// that do not decode are skipped.
    pub async fn read_logs(&self) -> Result<Vec<ReadLogEntry>, Error> {
        let store = self.record().base().store().clone();
        let mut readers = self.readers().await?;
        readers.push(self.identity());
        let record = self.record().key();
        let mut out = Vec::new();
        for r in readers {
            let core = if r == self.identity() {
                self.own_read_log().await?
            } else {
                store.get_by_key(read_log_key(&r)).await?
            };
            for seq in 0..core.length() {
                let Some(bytes) = core.get(seq).await? else {
                    continue;
                };
                let Ok(w) = postcard::from_bytes::<Wire>(&bytes) else {
                    continue;
                };
                if w.format != FORMAT || w.record != record {
                    continue;
                }
                out.push(ReadLogEntry {
                    reader: r,
                    seq,
                    resource_type: w.resource_type,
                    id: w.id,
                    time: w.time,
                    purpose: w.purpose,
                    self_reported: true,
                });
            }
        }
        out.sort_by_key(|e| (e.time, e.reader, e.seq));
        Ok(out)
    }
}
