//! A record whose content is encrypted per scope: [`SecureRecord`].
//!
//! Key distribution lives in the record itself. The owner's devices write
//! one `Basic` resource per *key wrap*: a [`ScopeKey`] sealed to one
//! device's [`IdentityPublic`] (see [`crate::keys::seal`]). A device reads
//! the wraps addressed to it, trusts only those written by an unrevoked
//! owner device, opens them with its identity and keeps the keys in its
//! [`Keyring`]. Every peer, including a blind mirror, stores the wraps, but
//! only the addressed device can open one.
//!
//! Revocation ([`SecureRecord::revoke`]) revokes the writer and starts a new
//! epoch of every scope the revoked device held, wrapped to every remaining
//! holder of that scope. Nothing is re-encrypted: history stays under the
//! old epochs. **What the revoked device already received (old epochs, and
//! every resource written under them) cannot be recalled.**

use crate::consent::Role;
use crate::error::Error;
use crate::fhir::ResourceRef;
use crate::keys::{b64_decode, b64_encode, open, seal, Identity, IdentityPublic};
use crate::op::WriterKey;
use crate::record::{Query, Record, Written};
use crate::scope_crypto::{
    check_scope, open_packed_in_place, open_resource, open_resource_at, seal_resource, Keyring,
    ScopeKey, SealError,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The coding system of key-wrap `Basic` resources.
pub const KEYWRAP_SYSTEM: &str = "urn:ehr-core:keywrap";
/// The extension URL holding a key wrap.
pub const KEYWRAP_URL: &str = "urn:ehr-core:keywrap";

/// One scope key sealed to one device, as stored in the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyWrap {
    /// The device that can open it.
    pub recipient: IdentityPublic,
    /// The recipient's writer key, when it is a writer (used to find what
    /// to rotate when that writer is revoked).
    pub writer: Option<WriterKey>,
    /// The scope.
    pub scope: String,
    /// The epoch.
    pub epoch: u32,
    /// The [`ScopeKey::to_bytes`] sealed to `recipient`.
    #[serde(with = "serde_bytes")]
    pub sealed: Vec<u8>,
}

impl KeyWrap {
    fn resource_id(&self) -> String {
        format!(
            "k{}-{}-{}",
            self.recipient.fingerprint(),
            self.scope,
            self.epoch
        )
    }

    /// The `Basic` resource that carries this wrap in the record of
    /// patient `patient`.
    pub fn to_resource(&self, patient: &str) -> serde_json::Value {
        let payload = b64_encode(&postcard::to_stdvec(self).unwrap_or_default());
        serde_json::json!({
            "resourceType": "Basic",
            "id": self.resource_id(),
            "code": {"coding": [
                {"system": KEYWRAP_SYSTEM, "code": format!("to-{}", self.recipient.fingerprint())},
                {"system": KEYWRAP_SYSTEM, "code": format!("scope-{}", self.scope)},
            ]},
            "subject": {"reference": format!("Patient/{patient}")},
            "extension": [{"url": KEYWRAP_URL, "valueString": payload}],
        })
    }

    fn from_resource(bytes: &[u8]) -> Option<KeyWrap> {
        #[derive(Deserialize)]
        struct Ext {
            url: String,
            #[serde(rename = "valueString")]
            value: Option<String>,
        }
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            extension: Vec<Ext>,
        }
        let p: Probe = serde_json::from_slice(bytes).ok()?;
        let v = p
            .extension
            .into_iter()
            .find(|e| e.url == KEYWRAP_URL)?
            .value?;
        let w: KeyWrap = postcard::from_bytes(&b64_decode(&v)?).ok()?;
        check_scope(&w.scope).ok()?;
        Some(w)
    }
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Rotation {
    /// The scopes rotated, with their new epochs.
    pub scopes: Vec<(String, u32)>,
    /// How many key wraps were written.
    pub wraps: usize,
}

/// A [`Record`] plus this device's identity and scope keys: writes are
/// sealed under a scope key, reads are opened with the keys this device
/// holds.
///
/// ```
/// use std::sync::Arc;
/// use ehr_core::{Record, SecureRecord};
/// use hypercore_rs::MemoryStorage;
///
/// # futures::executor::block_on(async {
/// let record = Record::builder(Arc::new(MemoryStorage::new())).create("p1").await?;
/// let secure = SecureRecord::new(record);
/// let obs = br#"{"resourceType":"Observation","id":"bp","subject":{"reference":"Patient/p1"},"note":[{"text":"private"}]}"#;
/// secure.put("default", obs.to_vec()).await?;
/// // The view holds only the sealed shell...
/// let stored = secure.record().get("Observation", "bp").await?.and_then(|v| v.resource).unwrap_or_default();
/// assert!(!String::from_utf8_lossy(&stored).contains("private"));
/// // ...and key holders read the original bytes.
/// assert_eq!(secure.get("Observation", "bp").await?.as_deref(), Some(&obs[..]));
/// # Ok::<(), ehr_core::Error>(())
/// # }).unwrap();
/// ```
pub struct SecureRecord {
    record: Record,
    identity: Identity,
    keyring: std::sync::Mutex<Keyring>,
    /// Shells this device opened, with their plaintext (see [`Opened`]).
    opened: std::sync::Mutex<Opened>,
    /// The limits on strangers on the invite channel.
    gate: crate::invite_net::InviteGate,
    /// Lost redemptions this device answered whose keys it has rotated
    /// away (writer keys, hex), so each is rotated once.
    pub(crate) lost_rotated: std::sync::Mutex<BTreeSet<String>>,
}

/// A bounded cache of opened sealed shells: stored bytes to plaintext.
///
/// A hit requires the stored bytes to be identical to the ones that were
/// opened, and opening is a pure function of those bytes and the key, so a
/// hit returns exactly what decrypting again would. Only successful opens
/// are kept, so nothing is readable through the cache that this device
/// could not decrypt with the keys it holds; it is emptied whenever keys
/// are added from outside (a key could be replaced) and when it grows past
/// its bounds. What it saves per read: finding the ciphertext, AES-GCM and
/// the copy of the plaintext out of the shell (about a fifth of a read).
///
/// Admission: a resource is kept from its *second* open on (the first
/// only marks its slot as seen), so reads of resources looked at once (an
/// export, a scan, the first screen of a record) do not pay for copying
/// them into the cache; a newer version of a kept resource replaces it at
/// once.
#[derive(Default)]
struct Opened {
    /// Keyed by [`Opened::slot`], already a hash: not hashed again.
    map: std::collections::HashMap<u64, (Vec<u8>, Vec<u8>), SlotHash>,
    /// Slots opened once since the cache was last emptied.
    seen: std::collections::HashSet<u64, SlotHash>,
    bytes: usize,
}

type SlotHash = std::hash::BuildHasherDefault<SlotHasher>;

/// The identity hash of a `u64` slot (slots are already hashes).
#[derive(Default)]
struct SlotHasher(u64);

impl std::hash::Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Opened {
    /// At most this many shells...
    const MAX_ENTRIES: usize = 4096;
    /// ...and this many bytes of shells and plaintext together.
    const MAX_BYTES: usize = 16 << 20;

    /// The slot of a resource: its type and id (one shell per resource is
    /// kept; a hit still compares every byte of the shell).
    fn slot(resource_type: &str, id: &str) -> u64 {
        // FNV-1a: names are short and chosen by writers, but a collision
        // only costs a miss (a hit compares the whole shell).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in resource_type
            .as_bytes()
            .iter()
            .chain(&[0])
            .chain(id.as_bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    fn get(&self, slot: u64, stored: &[u8]) -> Option<Vec<u8>> {
        match self.map.get(&slot) {
            Some((s, plain)) if s.as_slice() == stored => Some(plain.clone()),
            _ => None,
        }
    }

    /// Whether a freshly opened shell at `slot` should be kept: on its
    /// second open, or at once if an older version is kept.
    fn admit(&mut self, slot: u64) -> bool {
        if self.map.contains_key(&slot) || self.seen.remove(&slot) {
            return true;
        }
        if self.seen.len() >= Opened::MAX_ENTRIES * 4 {
            self.seen.clear();
        }
        self.seen.insert(slot);
        false
    }

    fn insert(&mut self, slot: u64, stored: Vec<u8>, plain: Vec<u8>) {
        let size = stored.len() + plain.len();
        if size > Opened::MAX_BYTES / 64 {
            return;
        }
        if self.map.len() >= Opened::MAX_ENTRIES || self.bytes + size > Opened::MAX_BYTES {
            self.clear();
        }
        let old = self.map.insert(slot, (stored, plain));
        self.bytes += size;
        if let Some((s, p)) = old {
            self.bytes = self.bytes.saturating_sub(s.len() + p.len());
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.seen.clear();
        self.bytes = 0;
    }
}

impl std::fmt::Debug for SecureRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureRecord")
            .field("record", &self.record)
            .field("identity", &self.identity.public())
            .finish_non_exhaustive()
    }
}

impl Record {
    /// This device's identity, derived from its store's secret seed (so it
    /// survives restarts with the storage; an embedding app can keep
    /// it under a passphrase instead).
    pub fn device_identity(&self) -> Identity {
        let kp = self
            .inner
            .store
            .namespace("ehr-core/identity")
            .key_pair("device");
        Identity::from_seed(kp.seed())
    }
}

impl SecureRecord {
    /// Wraps `record` with the device identity derived from its store.
    pub fn new(record: Record) -> SecureRecord {
        let identity = record.device_identity();
        SecureRecord::with_identity(record, identity)
    }

    /// Wraps `record` with an identity the embedding app holds.
    pub fn with_identity(record: Record, identity: Identity) -> SecureRecord {
        SecureRecord {
            record,
            identity,
            keyring: std::sync::Mutex::new(Keyring::new()),
            opened: std::sync::Mutex::new(Opened::default()),
            gate: crate::invite_net::InviteGate::default(),
            lost_rotated: std::sync::Mutex::new(BTreeSet::new()),
        }
    }

    /// Uses `gate` for strangers on the invite channel (see
    /// [`SecureRecord::admit`]); share one gate among every connection the
    /// device serves.
    pub fn with_invite_gate(mut self, gate: crate::invite_net::InviteGate) -> SecureRecord {
        self.gate = gate;
        self
    }

    /// The limits on strangers on the invite channel.
    pub fn invite_gate(&self) -> &crate::invite_net::InviteGate {
        &self.gate
    }

    /// The underlying record (reads there return sealed shells).
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// This device's public identity: what the owner wraps keys to.
    pub fn identity(&self) -> IdentityPublic {
        self.identity.public()
    }

    /// A copy of the scope keys this device holds.
    pub fn keyring(&self) -> Keyring {
        self.ring().clone()
    }

    /// This device's secret identity.
    pub(crate) fn identity_secret(&self) -> &Identity {
        &self.identity
    }

    /// Adds keys (from a locked key file or a vault) to the keyring.
    pub fn add_keys(&self, keys: Keyring) {
        let mut ring = self.ring();
        for k in keys.iter() {
            ring.insert(k.clone());
        }
        // A key may have been replaced: forget what the old one opened.
        self.opened().clear();
    }

    fn opened(&self) -> std::sync::MutexGuard<'_, Opened> {
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Keyring> {
        self.keyring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn is_owner(&self, writer: &WriterKey) -> Result<bool, Error> {
        Ok(matches!(
            self.record.grant_of(writer).await?,
            Some((g, false)) if g.role == Role::Owner
        ))
    }

    /// Every key wrap with code `code`, written by an unrevoked owner device.
    async fn wraps(&self, code: &str) -> Result<Vec<KeyWrap>, Error> {
        let mut out = Vec::new();
        let mut q = Query::new("Basic")
            .code(&format!("{KEYWRAP_SYSTEM}|{code}"))
            .limit(1000);
        let mut owners: BTreeMap<WriterKey, bool> = BTreeMap::new();
        loop {
            let page = self.record.search(&q).await?;
            for v in &page.entries {
                let trusted = match owners.get(&v.author) {
                    Some(t) => *t,
                    None => {
                        let t = self.is_owner(&v.author).await?;
                        owners.insert(v.author, t);
                        t
                    }
                };
                if let (true, Some(w)) = (
                    trusted,
                    v.resource.as_deref().and_then(KeyWrap::from_resource),
                ) {
                    out.push(w);
                }
            }
            match page.next {
                Some(c) => q = q.after(c),
                None => return Ok(out),
            }
        }
    }

    /// Loads the key wraps addressed to this device into its keyring;
    /// returns how many keys it holds.
    pub async fn refresh_keys(&self) -> Result<usize, Error> {
        let me = self.identity.public();
        let wraps = self.wraps(&format!("to-{}", me.fingerprint())).await?;
        let mut ring = self.ring();
        for w in wraps.into_iter().filter(|w| w.recipient == me) {
            if ring.get(&w.scope, w.epoch).is_some() {
                continue;
            }
            let Ok(bytes) = open(&self.identity, &w.sealed) else {
                continue;
            };
            match ScopeKey::from_bytes(&bytes) {
                Ok(k) if k.scope() == w.scope && k.epoch() == w.epoch => ring.insert(k),
                _ => continue,
            }
        }
        Ok(ring.len())
    }

    pub(crate) fn wrap(
        &self,
        key: &ScopeKey,
        recipient: IdentityPublic,
        writer: Option<WriterKey>,
    ) -> Result<KeyWrap, Error> {
        let sealed = seal(&recipient, &key.to_bytes(), &*self.record.inner.entropy)
            .map_err(SealError::from)?;
        Ok(KeyWrap {
            recipient,
            writer,
            scope: key.scope().to_owned(),
            epoch: key.epoch(),
            sealed,
        })
    }

    /// Writes key wraps atomically (one import).
    pub(crate) async fn write_wraps(&self, wraps: &[KeyWrap]) -> Result<(), Error> {
        if wraps.is_empty() {
            return Ok(());
        }
        let patient = self.record.patient_id();
        let entries: Vec<_> = wraps
            .iter()
            .map(|w| serde_json::json!({"resource": w.to_resource(&patient)}))
            .collect();
        let bundle = serde_json::json!({
            "resourceType": "Bundle", "type": "collection", "entry": entries,
        });
        self.record
            .import_bundle(bundle.to_string().as_bytes())
            .await?;
        Ok(())
    }

    /// Starts a new epoch of `scope` (epoch 0 if new) held by this owner
    /// device alone; [`SecureRecord::share`] hands it out.
    pub async fn create_scope(&self, scope: &str) -> Result<ScopeKey, Error> {
        self.refresh_keys().await?;
        let epoch = self.ring().current(scope).map_or(0, |k| k.epoch() + 1);
        let key = ScopeKey::generate(scope, epoch, &*self.record.inner.entropy)?;
        let me = self.identity.public();
        let wrap = self.wrap(&key, me, Some(self.record.writer_key()))?;
        self.write_wraps(&[wrap]).await?;
        self.ring().insert(key.clone());
        Ok(key)
    }

    async fn current_or_create(&self, scope: &str) -> Result<ScopeKey, Error> {
        check_scope(scope)?;
        if let Some(k) = self.ring().current(scope) {
            return Ok(k.clone());
        }
        self.refresh_keys().await?;
        if let Some(k) = self.ring().current(scope) {
            return Ok(k.clone());
        }
        if self.is_owner(&self.record.writer_key()).await? {
            return self.create_scope(scope).await;
        }
        Err(SealError::NoKey {
            scope: scope.to_owned(),
            epoch: 0,
        }
        .into())
    }

    /// Gives `grantee` (a device, with its writer key if it writes) the
    /// current key of each of `scopes` (owners only; creates scopes that do
    /// not exist yet). Written atomically.
    pub async fn share(
        &self,
        grantee: IdentityPublic,
        writer: Option<WriterKey>,
        scopes: &[&str],
    ) -> Result<(), Error> {
        grantee.x25519().map_err(SealError::from)?;
        let mut wraps = Vec::with_capacity(scopes.len());
        for s in scopes {
            let key = self.current_or_create(s).await?;
            wraps.push(self.wrap(&key, grantee, writer)?);
        }
        self.write_wraps(&wraps).await?;
        self.audit(
            crate::audit::AuditAction::Share,
            true,
            &grantee.fingerprint(),
            &scopes.join(","),
        )
        .await
    }

    /// Writes a resource sealed under the current key of `scope`. An owner
    /// device creates the scope on first use; other devices need its key.
    pub async fn put(&self, scope: &str, json: impl Into<Vec<u8>>) -> Result<Written, Error> {
        let key = self.current_or_create(scope).await?;
        let mut json = json.into();
        let r = crate::fhir::Resource::parse(json.clone())?;
        if r.id().is_none() {
            let id: [u8; 16] =
                crate::keys::random(&*self.record.inner.entropy).map_err(SealError::from)?;
            json = r.with_id(&crate::view::hex(&id))?.into_bytes();
        }
        let shell = seal_resource(&key, &json, &*self.record.inner.entropy)?;
        self.record.put(shell).await
    }

    /// Opens stored bytes: sealed shells are decrypted (refreshing the
    /// keyring once if the key is missing), clear resources pass through.
    pub async fn open_stored(&self, stored: &[u8]) -> Result<Vec<u8>, Error> {
        let first = open_resource(&self.ring(), stored);
        match first {
            Err(SealError::NotSealed) => Ok(stored.to_vec()),
            Err(SealError::NoKey { .. }) => {
                self.refresh_keys().await?;
                Ok(open_resource(&self.ring(), stored)?)
            }
            other => Ok(other?),
        }
    }

    /// [`SecureRecord::open_stored`] for the stored bytes of `target`,
    /// through the cache of opened shells (which keeps `stored` itself on a
    /// miss: no copy of the shell).
    async fn open_version(
        &self,
        target: &ResourceRef,
        mut stored: Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        let (ty, id) = (&target.resource_type, &target.id);
        let slot = Opened::slot(ty, id);
        let keep = {
            let mut cache = self.opened();
            if let Some(plain) = cache.get(slot, &stored) {
                return Ok(plain);
            }
            cache.admit(slot)
        };
        if !keep {
            // Not kept: a packed shell is decrypted inside its own buffer.
            let mut opened = open_packed_in_place(&self.ring(), ty, id, &mut stored);
            if matches!(opened, Err(SealError::NoKey { .. })) {
                self.refresh_keys().await?;
                opened = open_packed_in_place(&self.ring(), ty, id, &mut stored);
            }
            if opened? {
                return Ok(stored);
            }
        }
        let at = |ring: &Keyring| open_resource_at(ring, ty, id, &stored);
        let first = at(&self.ring());
        let plain = match first {
            Err(SealError::NotSealed) => return Ok(stored),
            Err(SealError::NoKey { .. }) => {
                self.refresh_keys().await?;
                let again = at(&self.ring());
                again?
            }
            other => other?,
        };
        if keep && plain != stored {
            self.opened().insert(slot, stored, plain.clone());
        }
        Ok(plain)
    }

    /// The latest version of a resource, decrypted: the original bytes.
    pub async fn get(&self, resource_type: &str, id: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.record.get_stored(resource_type, id).await? {
            Some((target, stored)) => Ok(Some(self.open_version(&target, stored).await?)),
            None => Ok(None),
        }
    }

    /// Sealed resources of `resource_type` with code `token` (`system|code`)
    /// that this device can find: one blinded lookup per key it holds.
    /// Returns decrypted bytes (first page of each lookup, up to `limit`).
    pub async fn search_code(
        &self,
        resource_type: &str,
        token: &str,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let keys: Vec<ScopeKey> = self.ring().iter().cloned().collect();
        let mut out = Vec::new();
        for k in keys {
            let q = Query::new(resource_type)
                .code(&k.blind_query(token))
                .limit(limit);
            for v in self.record.search(&q).await?.entries {
                if let Some(r) = v.resource {
                    out.push(self.open_version(&v.target, r).await?);
                }
            }
        }
        Ok(out)
    }

    /// Revokes `writer` and rotates every scope key it held (owners only).
    /// History is not re-encrypted; what it already had cannot be
    /// recalled.
    pub async fn revoke(&self, writer: WriterKey) -> Result<Rotation, Error> {
        let mut all = Vec::new();
        for w in self.all_wraps().await? {
            all.push(w);
        }
        let revoked: BTreeSet<IdentityPublic> = all
            .iter()
            .filter(|w| w.writer == Some(writer))
            .map(|w| w.recipient)
            .collect();
        self.record.revoke_unaudited(writer).await?;
        let rotation = self.rotate_wraps(&all, &revoked).await?;
        let rotated: Vec<String> = rotation
            .scopes
            .iter()
            .map(|(s, e)| format!("{s}@{e}"))
            .collect();
        self.audit(
            crate::audit::AuditAction::Revoke,
            true,
            &crate::view::hex(&writer),
            &format!("rotated {}", rotated.join(",")),
        )
        .await?;
        Ok(rotation)
    }

    /// Rotates every scope any of `devices` holds, so they cannot read what
    /// is written next (owners only). For devices that are not writers,
    /// e.g. a lost emergency card.
    pub async fn rotate_away(&self, devices: &[IdentityPublic]) -> Result<Rotation, Error> {
        let all = self.all_wraps().await?;
        self.rotate_wraps(&all, &devices.iter().copied().collect())
            .await
    }

    pub(crate) async fn all_wraps(&self) -> Result<Vec<KeyWrap>, Error> {
        self.refresh_keys().await?;
        let scopes: BTreeSet<String> = self.ring().iter().map(|k| k.scope().to_owned()).collect();
        let mut all = Vec::new();
        for s in scopes {
            all.extend(self.wraps(&format!("scope-{s}")).await?);
        }
        Ok(all)
    }

    pub(crate) async fn rotate_wraps(
        &self,
        all: &[KeyWrap],
        revoked: &BTreeSet<IdentityPublic>,
    ) -> Result<Rotation, Error> {
        // Current epoch and holders of each scope.
        let mut current: BTreeMap<&str, u32> = BTreeMap::new();
        for w in all {
            let e = current.entry(&w.scope).or_insert(w.epoch);
            *e = (*e).max(w.epoch);
        }
        let mut rotation = Rotation::default();
        let mut wraps = Vec::new();
        let mut new_keys = Vec::new();
        let me = self.identity.public();
        for (scope, epoch) in current {
            let holders: BTreeMap<IdentityPublic, Option<WriterKey>> = all
                .iter()
                .filter(|w| w.scope == scope && w.epoch == epoch)
                .map(|w| (w.recipient, w.writer))
                .collect();
            if !holders.keys().any(|h| revoked.contains(h)) {
                continue;
            }
            let key = ScopeKey::generate(scope, epoch + 1, &*self.record.inner.entropy)?;
            let mut to: Vec<_> = holders
                .into_iter()
                .filter(|(h, _)| !revoked.contains(h))
                .collect();
            if !to.iter().any(|(h, _)| *h == me) {
                to.push((me, Some(self.record.writer_key())));
            }
            for (h, w) in to {
                wraps.push(self.wrap(&key, h, w)?);
            }
            rotation.scopes.push((scope.to_owned(), epoch + 1));
            new_keys.push(key);
        }
        rotation.wraps = wraps.len();
        self.write_wraps(&wraps).await?;
        let mut ring = self.ring();
        for k in new_keys {
            ring.insert(k);
        }
        Ok(rotation)
    }
}

#[cfg(test)]
mod tests {
    use super::Opened;

    /// The view keeps a sealed shell packed; every reader of the plain
    /// record API gets the shell's JSON back, and the secure read opens
    /// either form, through each path of the cache (first open, kept on the
    /// second, hit on the third, a new version).
    #[test]
    fn sealed_shells_are_packed_in_the_view_and_read_back_exactly() {
        futures::executor::block_on(async {
            let storage = std::sync::Arc::new(hypercore_rs::MemoryStorage::new());
            let r = crate::Record::builder(storage).create("p").await.unwrap();
            let s = super::SecureRecord::new(r);
            let obs = |n: &str| {
                format!(
                    r#"{{"resourceType":"Observation","id":"o1","status":"final","subject":{{"reference":"Patient/p"}},"code":{{"coding":[{{"system":"http://loinc.org","code":"8480-6"}}]}},"note":[{{"text":"{n}"}}]}}"#
                )
                .into_bytes()
            };
            s.put("default", obs("first")).await.unwrap();
            let (_, stored) = s
                .record()
                .get_stored("Observation", "o1")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stored.first(), Some(&0), "packed in the view");
            let shell = s.record().get("Observation", "o1").await.unwrap().unwrap();
            let shell = shell.resource.unwrap();
            assert_eq!(shell.first(), Some(&b'{'));
            assert!(stored.len() < shell.len());
            assert_eq!(crate::scope_crypto::unpack_shell(stored), shell);
            for _ in 0..3 {
                assert_eq!(
                    s.get("Observation", "o1").await.unwrap().unwrap(),
                    obs("first")
                );
            }
            s.put("default", obs("second")).await.unwrap();
            for _ in 0..3 {
                assert_eq!(
                    s.get("Observation", "o1").await.unwrap().unwrap(),
                    obs("second")
                );
            }
            let history = s.record().history("Observation", "o1").await.unwrap();
            assert_eq!(history.len(), 2);
            for v in history {
                let shell = v.resource.unwrap();
                assert_eq!(shell.first(), Some(&b'{'));
                assert!(s.open_stored(&shell).await.is_ok());
            }
        });
    }

    #[test]
    fn opened_cache_hits_only_identical_bytes_and_stays_bounded() {
        let mut c = Opened::default();
        let slot = Opened::slot("Observation", "o1");
        assert_ne!(slot, Opened::slot("Observation", "o2"));
        let shell = vec![7u8; 300];
        // Kept from the second open on.
        assert!(!c.admit(slot));
        assert!(c.admit(slot));
        c.insert(slot, shell.clone(), b"plain".to_vec());
        // A newer version of a kept resource is kept at once.
        assert!(c.admit(slot));
        assert_eq!(c.get(slot, &shell).as_deref(), Some(&b"plain"[..]));
        // Any changed byte of the shell misses (a new version, tampering).
        for i in 0..shell.len() {
            let mut other = shell.clone();
            other[i] ^= 1;
            assert_eq!(c.get(slot, &other), None, "byte {i}");
        }
        assert_eq!(c.get(slot, &shell[1..]), None);
        assert_eq!(c.get(Opened::slot("Observation", "o2"), &shell), None);
        // Too large to keep.
        let big = vec![1u8; Opened::MAX_BYTES / 32];
        c.insert(7, big.clone(), b"x".to_vec());
        assert_eq!(c.get(7, &big), None);
        // Bounded in entries (and bytes).
        for i in 0..(Opened::MAX_ENTRIES as u64 + 10) {
            c.insert(i, i.to_le_bytes().to_vec(), b"p".to_vec());
        }
        assert!(c.map.len() <= Opened::MAX_ENTRIES);
        assert!(c.bytes <= Opened::MAX_BYTES);
        c.clear();
        assert_eq!(c.get(slot, &shell), None);
    }
}
