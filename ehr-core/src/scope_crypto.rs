//! Per-scope content keys and sealed resources.
//!
//! A *scope* names a slice of the record that is shared as a unit: the
//! [`DEFAULT_SCOPE`], the [`EMERGENCY_SCOPE`], or any category or
//! sensitivity label the patient chooses (`mental-health`, `hiv`, ...).
//! Each scope has a 32-byte [`ScopeKey`] per *epoch*; revoking a grantee
//! starts a new epoch for every scope it held.
//!
//! A resource written under a scope is stored as a *sealed shell*: a small
//! FHIR resource of the same type and id that keeps in clear only what the
//! record must read to enforce consent and to index it, plus the whole
//! original JSON encrypted (XSalsa20-Poly1305) in an extension:
//!
//! | field | in the shell |
//! |---|---|
//! | `resourceType`, `id` | clear (keys of the view) |
//! | patient reference | clear, as `subject` (the record checks it) |
//! | `category`, `meta.security` | clear (grants may be limited by category) |
//! | the clinical date field | clear (date-range search) |
//! | `code` / `vaccineCode` / `medicationCodeableConcept` | *blinded*: a keyed BLAKE3 of `system|code` under the scope key, so only key holders can search by code, and tokens differ between scopes and epochs |
//! | everything else (values, notes, names, references, status) | encrypted only |
//!
//! The sealed extension's `valueString` is `v2.<scope>.<epoch>.<base64>`,
//! the base64 holding a 12-byte nonce, the ciphertext and a 16-byte tag of
//! AES-256-GCM under a key derived from the scope key, with the
//! resource's type and id as associated data: a ciphertext copied into
//! another resource fails authentication, so opening needs no parse of the
//! plaintext, and decrypts in place. Shells written before (`v1.`:
//! XSalsa20-Poly1305 under the scope key itself, bound by comparing the
//! plaintext's `resourceType` and `id` with the shell's) still open.
//!
//! Nonces are synthetic: BLAKE3, keyed with a key derived from the scope
//! key, over 16 fresh random bytes, the associated data and the plaintext.
//! They are unique under one key as long as either the randomness or the
//! message differs, so a broken random source repeats a nonce only for
//! identical messages (which then encrypt identically: equality is all that
//! leaks). A v2 nonce is 96 bits of that hash: with good randomness, the
//! chance that two of `q` resources sealed under one scope key and epoch
//! share a nonce is about q^2 / 2^97 (2^-33 after four billion writes, far
//! beyond what one scope epoch of a health record holds; rotation starts a
//! new key).

use crate::fhir::{FhirError, Resource};
use crate::keys::{b64_decode, b64_decode_into, b64_encode, b64_encode_into, random, KeyError};
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use hypercore_rs::Entropy;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// The scope of resources written without a more specific one.
pub const DEFAULT_SCOPE: &str = "default";
/// The scope pre-authorised for emergency access (allergies, medications,
/// conditions, immunizations).
pub const EMERGENCY_SCOPE: &str = "emergency";
/// The extension URL holding a sealed resource's ciphertext.
pub const SEALED_URL: &str = "urn:ehr-core:sealed";
/// The coding system of blinded codes in sealed shells.
pub const BLIND_SYSTEM: &str = "urn:ehr-core:blind";
/// The resource types that belong in the emergency scope by default.
pub const EMERGENCY_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "MedicationStatement",
    "MedicationRequest",
    "Condition",
    "Immunization",
];

const NONCE_DOMAIN: &str = "ehr-core 2026 scope nonce v1";
const NONCE_V2_DOMAIN: &str = "ehr-core 2026 scope nonce v2";
const SEAL_V2_DOMAIN: &str = "ehr-core 2026 sealed resource v2";
const BLIND_DOMAIN: &str = "ehr-core 2026 blind index v1";

/// What sealing or opening a resource can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The plaintext resource is not acceptable.
    #[error("{0}")]
    Resource(#[from] FhirError),
    /// A key operation failed (wrong key, tampered ciphertext).
    #[error("{0}")]
    Key(#[from] KeyError),
    /// This device holds no key for the scope and epoch.
    #[error("no key for scope {scope} epoch {epoch}")]
    NoKey {
        /// The scope.
        scope: String,
        /// The epoch.
        epoch: u32,
    },
    /// A scope name that is not 1 to 32 of `a-z 0-9 -`.
    #[error("invalid scope name {0:?}")]
    InvalidScope(String),
    /// The stored resource is not a sealed shell.
    #[error("not a sealed resource")]
    NotSealed,
    /// The sealed extension does not parse.
    #[error("malformed sealed resource")]
    Malformed,
    /// The decrypted resource is not the one the shell names (a ciphertext
    /// copied from another resource).
    #[error("the ciphertext belongs to another resource")]
    Mismatch,
}

/// Checks a scope name: 1 to 32 characters of `a-z`, `0-9`, `-`.
pub fn check_scope(name: &str) -> Result<(), SealError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SealError::InvalidScope(name.to_owned()))
    }
}

/// One epoch of one scope's content key.
#[derive(Clone, Serialize, Deserialize)]
pub struct ScopeKey {
    scope: String,
    epoch: u32,
    key: [u8; 32],
    /// The cipher of sealed resources (v2), keyed with a key derived from
    /// `key` on first use (never stored: it follows from `key`); kept so
    /// the AES key schedule runs once per key, not per resource.
    #[serde(skip)]
    sealing: std::sync::OnceLock<Option<ring::aead::LessSafeKey>>,
}

impl PartialEq for ScopeKey {
    fn eq(&self, other: &ScopeKey) -> bool {
        self.scope == other.scope && self.epoch == other.epoch && self.key == other.key
    }
}

impl Eq for ScopeKey {}

/// The associated data of a sealed resource: its type, a zero byte and
/// its id; on the stack for the usual short names (every read builds one).
enum Binding {
    Stack([u8; 96], usize),
    Heap(Vec<u8>),
}

fn binding(resource_type: &str, id: &str) -> Binding {
    let n = resource_type.len() + 1 + id.len();
    let mut small = [0u8; 96];
    match small.get_mut(..n) {
        Some(a) => {
            let (t, rest) = a.split_at_mut(resource_type.len());
            t.copy_from_slice(resource_type.as_bytes());
            if let Some((zero, i)) = rest.split_first_mut() {
                *zero = 0;
                i.copy_from_slice(id.as_bytes());
            }
            Binding::Stack(small, n)
        }
        None => {
            let mut aad = Vec::with_capacity(n);
            aad.extend_from_slice(resource_type.as_bytes());
            aad.push(0);
            aad.extend_from_slice(id.as_bytes());
            Binding::Heap(aad)
        }
    }
}

impl AsRef<[u8]> for Binding {
    fn as_ref(&self) -> &[u8] {
        match self {
            Binding::Stack(b, n) => b.get(..*n).unwrap_or_default(),
            Binding::Heap(v) => v,
        }
    }
}

impl std::fmt::Debug for ScopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeKey")
            .field("scope", &self.scope)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl ScopeKey {
    /// A fresh random key for `scope` at `epoch`.
    pub fn generate(scope: &str, epoch: u32, entropy: &dyn Entropy) -> Result<ScopeKey, SealError> {
        check_scope(scope)?;
        Ok(ScopeKey {
            scope: scope.to_owned(),
            epoch,
            key: random(entropy)?,
            sealing: std::sync::OnceLock::new(),
        })
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The encoding that gets wrapped to grantees (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes [`ScopeKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<ScopeKey, SealError> {
        let k: ScopeKey = postcard::from_bytes(bytes).map_err(|_| SealError::Malformed)?;
        check_scope(&k.scope)?;
        Ok(k)
    }

    fn nonce(&self, salt: &[u8; 16], plaintext: &[u8]) -> [u8; 24] {
        let nk = blake3::derive_key(NONCE_DOMAIN, &self.key);
        let mut h = blake3::Hasher::new_keyed(&nk);
        h.update(salt);
        h.update(plaintext);
        let mut n = [0u8; 24];
        h.finalize_xof().fill(&mut n);
        n
    }

    /// Encrypts: the 24-byte synthetic nonce, then the ciphertext and tag.
    pub fn encrypt(&self, plaintext: &[u8], entropy: &dyn Entropy) -> Result<Vec<u8>, SealError> {
        let salt: [u8; 16] = random(entropy)?;
        let nonce = self.nonce(&salt, plaintext);
        let ct = XSalsa20Poly1305::new(&self.key.into())
            .encrypt(&nonce.into(), plaintext)
            .map_err(|_| KeyError::Decrypt)?;
        let mut out = Vec::with_capacity(24 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts [`ScopeKey::encrypt`]'s output.
    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, SealError> {
        if data.len() < 24 + 16 {
            return Err(KeyError::Decrypt.into());
        }
        let (nonce, ct) = data.split_at(24);
        let mut n = [0u8; 24];
        n.copy_from_slice(nonce);
        Ok(XSalsa20Poly1305::new(&self.key.into())
            .decrypt(&n.into(), ct)
            .map_err(|_| KeyError::Decrypt)?)
    }

    /// `None` only if ring refused a 32-byte AES-256 key (it does not).
    fn sealing_cipher(&self) -> Result<&ring::aead::LessSafeKey, SealError> {
        self.sealing
            .get_or_init(|| {
                let key = blake3::derive_key(SEAL_V2_DOMAIN, &self.key);
                ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key)
                    .ok()
                    .map(ring::aead::LessSafeKey::new)
            })
            .as_ref()
            .ok_or(SealError::Key(KeyError::Decrypt))
    }

    /// Encrypts a resource's bytes for a v2 sealed shell: the 24-byte
    /// synthetic nonce, the ciphertext and the tag, with `resource_type`
    /// and `id` as associated data.
    fn seal_v2(
        &self,
        resource_type: &str,
        id: &str,
        plaintext: &[u8],
        entropy: &dyn Entropy,
    ) -> Result<Vec<u8>, SealError> {
        let salt: [u8; 16] = random(entropy)?;
        let aad = binding(resource_type, id);
        let aad = aad.as_ref();
        let nk = blake3::derive_key(NONCE_V2_DOMAIN, &self.key);
        let mut h = blake3::Hasher::new_keyed(&nk);
        h.update(&salt);
        h.update(&(aad.len() as u64).to_le_bytes());
        h.update(aad);
        h.update(plaintext);
        let mut nonce = [0u8; 12];
        h.finalize_xof().fill(&mut nonce);
        let mut out = Vec::with_capacity(12 + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .sealing_cipher()?
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad),
                out.get_mut(12..).unwrap_or_default(),
            )
            .map_err(|_| KeyError::Decrypt)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a v2 sealed resource from the base64 text of its envelope,
    /// decrypting in place: one buffer, no copy of the plaintext.
    fn open_v2(&self, resource_type: &str, id: &str, text: &[u8]) -> Result<Vec<u8>, SealError> {
        // 12 bytes are exactly 16 base64 characters without padding, so
        // the nonce and the rest decode separately.
        let (n, rest) = text.split_at_checked(16).ok_or(SealError::Malformed)?;
        let mut nonce = Vec::with_capacity(12);
        b64_decode_into(n, &mut nonce).ok_or(SealError::Malformed)?;
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| SealError::Malformed)?;
        let mut buf = Vec::new();
        b64_decode_into(rest, &mut buf).ok_or(SealError::Malformed)?;
        let at = buf.len().checked_sub(16).ok_or(KeyError::Decrypt)?;
        let mut tag = [0u8; 16];
        tag.copy_from_slice(buf.get(at..).unwrap_or_default());
        buf.truncate(at);
        self.decrypt_v2_in_place(resource_type, id, &nonce, (&mut buf, 0), &tag)?;
        Ok(buf)
    }

    /// Opens a v2 ciphertext given as binary parts (a packed shell).
    fn open_v2_parts(
        &self,
        resource_type: &str,
        id: &str,
        nonce: &[u8; 12],
        ct: &[u8],
        tag: &[u8; 16],
    ) -> Result<Vec<u8>, SealError> {
        let mut buf = ct.to_vec();
        self.decrypt_v2_in_place(resource_type, id, nonce, (&mut buf, 0), tag)?;
        Ok(buf)
    }

    /// Decrypts `buf[from..]` and moves the plaintext to the front of
    /// `buf` in the same pass.
    fn decrypt_v2_in_place(
        &self,
        resource_type: &str,
        id: &str,
        nonce: &[u8; 12],
        (buf, from): (&mut [u8], usize),
        tag: &[u8; 16],
    ) -> Result<(), SealError> {
        let aad = binding(resource_type, id);
        let tag = ring::aead::Tag::from(*tag);
        self.sealing_cipher()?
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad.as_ref()),
                tag,
                buf,
                from..,
            )
            .map(|_| ())
            .map_err(|_| KeyError::Decrypt.into())
    }

    /// The blinded form of a `system|code` token under this key (32 hex
    /// characters): what a sealed shell indexes instead of the code.
    pub fn blind(&self, token: &str) -> String {
        let bk = blake3::derive_key(BLIND_DOMAIN, &self.key);
        let mut h = blake3::Hasher::new_keyed(&bk);
        h.update(self.scope.as_bytes());
        h.update(&[0]);
        h.update(token.as_bytes());
        crate::view::hex(&h.finalize().as_bytes()[..16])
    }

    /// The search token to pass to [`crate::Query::code`] to find sealed
    /// resources with code `token` written under this key.
    pub fn blind_query(&self, token: &str) -> String {
        format!("{BLIND_SYSTEM}|{}", self.blind(token))
    }
}

/// The scope keys a device holds, every epoch of every scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "KeyringWire", into = "KeyringWire")]
pub struct Keyring {
    /// Scope, then epoch: a lookup by `&str` allocates nothing (every read
    /// of a sealed resource makes one).
    keys: BTreeMap<String, BTreeMap<u32, ScopeKey>>,
}

/// [`Keyring`]'s serialized form (unchanged: one map keyed by scope and
/// epoch).
#[derive(Serialize, Deserialize)]
struct KeyringWire {
    keys: BTreeMap<(String, u32), ScopeKey>,
}

impl From<KeyringWire> for Keyring {
    fn from(w: KeyringWire) -> Keyring {
        let mut ring = Keyring::new();
        for k in w.keys.into_values() {
            ring.insert(k);
        }
        ring
    }
}

impl From<Keyring> for KeyringWire {
    fn from(ring: Keyring) -> KeyringWire {
        KeyringWire {
            keys: ring
                .keys
                .into_values()
                .flat_map(BTreeMap::into_values)
                .map(|k| ((k.scope.clone(), k.epoch), k))
                .collect(),
        }
    }
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Adds a key (replacing one with the same scope and epoch).
    pub fn insert(&mut self, key: ScopeKey) {
        self.keys
            .entry(key.scope.clone())
            .or_default()
            .insert(key.epoch, key);
    }

    /// The key of `scope` at `epoch`.
    pub fn get(&self, scope: &str, epoch: u32) -> Option<&ScopeKey> {
        self.keys.get(scope)?.get(&epoch)
    }

    /// The newest epoch held of `scope`.
    pub fn current(&self, scope: &str) -> Option<&ScopeKey> {
        self.keys.get(scope)?.values().next_back()
    }

    /// Every key held, by scope, then epoch.
    pub fn iter(&self) -> impl Iterator<Item = &ScopeKey> {
        self.keys.values().flat_map(BTreeMap::values)
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.keys.values().map(BTreeMap::len).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.values().all(BTreeMap::is_empty)
    }
}

#[derive(Serialize)]
struct ShellCoding<'a> {
    system: &'a str,
    code: &'a str,
}

/// Where a sealed shell's ciphertext says it belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SealedInfo {
    /// The scope.
    pub scope: String,
    /// The key epoch.
    pub epoch: u32,
}

/// Encrypts `json` (a resource with an id) under `key` into a sealed
/// shell; see the module docs for what stays in clear.
pub fn seal_resource(
    key: &ScopeKey,
    json: &[u8],
    entropy: &dyn Entropy,
) -> Result<Vec<u8>, SealError> {
    let r = Resource::parse(json.to_vec())?;
    let info = r.info();
    let id = info.id.clone().ok_or(FhirError::InvalidId(String::new()))?;
    let top: BTreeMap<&str, &RawValue> =
        serde_json::from_slice(json).map_err(|e| FhirError::InvalidJson(e.to_string()))?;
    let mut shell = serde_json::Map::new();
    let s = |v: &str| serde_json::Value::String(v.to_owned());
    shell.insert("resourceType".into(), s(&info.resource_type));
    shell.insert("id".into(), s(&id));
    if !info.security.is_empty() {
        let sec: Vec<_> = info
            .security
            .iter()
            .map(|c| serde_json::json!({"system": c.system, "code": c.code}))
            .collect();
        shell.insert("meta".into(), serde_json::json!({ "security": sec }));
    }
    if info.resource_type != "Patient" {
        if let Some(p) = &info.patient {
            shell.insert(
                "subject".into(),
                serde_json::json!({ "reference": format!("Patient/{p}") }),
            );
        }
    }
    if !info.categories.is_empty() {
        let cats: Vec<_> = info
            .categories
            .iter()
            .map(|c| serde_json::json!({"coding": [{"system": c.system, "code": c.code}]}))
            .collect();
        shell.insert("category".into(), serde_json::Value::Array(cats));
    }
    if let Some((name, raw)) = crate::fhir::DATE_FIELDS
        .iter()
        .find_map(|f| top.get(f).map(|raw| (*f, *raw)))
    {
        let v: serde_json::Value =
            serde_json::from_str(raw.get()).map_err(|e| FhirError::InvalidJson(e.to_string()))?;
        shell.insert(name.into(), v);
    }
    if !info.codes.is_empty() {
        let blinded: Vec<String> = info.codes.iter().map(|c| key.blind(&c.token())).collect();
        let codings: Vec<_> = blinded
            .iter()
            .map(|b| ShellCoding {
                system: BLIND_SYSTEM,
                code: b,
            })
            .collect();
        shell.insert("code".into(), serde_json::json!({ "coding": codings }));
    }
    let ct = key.seal_v2(&info.resource_type, &id, json, entropy)?;
    let sealed = format!("v2.{}.{}.{}", key.scope, key.epoch, b64_encode(&ct));
    shell.insert(
        "extension".into(),
        serde_json::json!([{ "url": SEALED_URL, "valueString": sealed }]),
    );
    serde_json::to_vec(&serde_json::Value::Object(shell))
        .map_err(|e| FhirError::InvalidJson(e.to_string()).into())
}

#[derive(Deserialize)]
struct ShellProbe<'a> {
    #[serde(rename = "resourceType")]
    resource_type: String,
    id: String,
    #[serde(borrow, default)]
    extension: Vec<ExtProbe<'a>>,
}

#[derive(Deserialize)]
struct ExtProbe<'a> {
    url: &'a str,
    /// Borrowed from the shell unless it has escapes (base64 has none).
    #[serde(rename = "valueString", borrow)]
    value: Option<std::borrow::Cow<'a, str>>,
}

/// A sealed extension's value, `v<n>.<scope>.<epoch>.<base64>`, split.
struct Envelope<'a> {
    v2: bool,
    scope: &'a str,
    epoch: u32,
    data: &'a str,
}

fn envelope(value: &str) -> Result<Envelope<'_>, SealError> {
    let mut parts = value.splitn(4, '.');
    let (Some(version), Some(scope), Some(epoch), Some(data)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SealError::Malformed);
    };
    let v2 = match version {
        "v1" => false,
        "v2" => true,
        _ => return Err(SealError::Malformed),
    };
    check_scope(scope).map_err(|_| SealError::Malformed)?;
    let epoch: u32 = epoch.parse().map_err(|_| SealError::Malformed)?;
    Ok(Envelope {
        v2,
        scope,
        epoch,
        data,
    })
}

/// A stored shell's names, key and envelope (owned).
struct Parsed {
    resource_type: String,
    id: String,
    info: SealedInfo,
    v2: bool,
    data: String,
}

fn parse_sealed(stored: &[u8]) -> Result<Parsed, SealError> {
    let p: ShellProbe<'_> = serde_json::from_slice(stored).map_err(|_| SealError::NotSealed)?;
    let ext = p
        .extension
        .iter()
        .find(|e| e.url == SEALED_URL)
        .ok_or(SealError::NotSealed)?;
    let v = ext.value.as_deref().ok_or(SealError::Malformed)?;
    let e = envelope(v)?;
    Ok(Parsed {
        info: SealedInfo {
            scope: e.scope.to_owned(),
            epoch: e.epoch,
        },
        v2: e.v2,
        data: e.data.to_owned(),
        resource_type: p.resource_type,
        id: p.id,
    })
}

/// The scope and epoch of a stored sealed shell, or `None` if it is not
/// one (a resource written in clear).
pub fn sealed_info(stored: &[u8]) -> Option<SealedInfo> {
    let p = parse_sealed(stored).ok()?;
    b64_decode(&p.data)?;
    Some(p.info)
}

fn key_for<'k>(keyring: &'k Keyring, scope: &str, epoch: u32) -> Result<&'k ScopeKey, SealError> {
    keyring.get(scope, epoch).ok_or_else(|| SealError::NoKey {
        scope: scope.to_owned(),
        epoch,
    })
}

/// Decrypts a sealed shell with the matching key from `keyring`, checking
/// that the ciphertext belongs to the resource the shell names. Returns
/// the original JSON bytes exactly as written.
pub fn open_resource(keyring: &Keyring, stored: &[u8]) -> Result<Vec<u8>, SealError> {
    let p = parse_sealed(stored)?;
    let key = key_for(keyring, &p.info.scope, p.info.epoch)?;
    if p.v2 {
        return key.open_v2(&p.resource_type, &p.id, p.data.as_bytes());
    }
    let ct = b64_decode(&p.data).ok_or(SealError::Malformed)?;
    let plain = key.decrypt(&ct)?;
    // v1 has no associated data: the plaintext must name the shell's
    // resource. Only those two fields are read.
    #[derive(Deserialize)]
    struct Names {
        #[serde(rename = "resourceType")]
        resource_type: String,
        id: Option<String>,
    }
    match serde_json::from_slice::<Names>(&plain) {
        Ok(n) if n.resource_type == p.resource_type && n.id.as_deref() == Some(p.id.as_str()) => {
            Ok(plain)
        }
        _ => Err(SealError::Mismatch),
    }
}

/// The value of the sealed extension in `stored` as written by
/// [`seal_resource`] (`"url":"urn:ehr-core:sealed","valueString":"...`),
/// found by a substring search instead of a parse. The search is not a
/// JSON parser (a crafted shell could make it pick another string); that
/// is harmless because a v2 ciphertext only opens under the resource's own
/// type and id, so whatever string it picks either is this resource's
/// ciphertext or fails to authenticate.
fn find_envelope(stored: &[u8]) -> Option<&str> {
    let (start, end) = envelope_span(stored)?;
    std::str::from_utf8(stored.get(start..end)?).ok()
}

/// Where [`find_envelope`]'s value starts and ends in `stored`.
fn envelope_span(stored: &[u8]) -> Option<(usize, usize)> {
    const OPEN: &[u8] = b"\"url\":\"urn:ehr-core:sealed\",\"valueString\":\"";
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    let finder = FINDER.get_or_init(|| memchr::memmem::Finder::new(OPEN));
    let start = finder.find(stored)? + OPEN.len();
    let rest = stored.get(start..)?;
    let len = memchr::memchr2(b'"', b'\\', rest)?;
    if rest.get(len) != Some(&b'"') {
        return None;
    }
    Some((start, start + len))
}

/// [`open_resource`] for a shell read from the record at `resource_type`
/// / `id` (the view's key, which `apply` guarantees the shell names): the
/// read path. A packed shell (the view's form of a v2 shell, see
/// `pack_shell`) is opened from its binary ciphertext; a v2 shell in
/// JSON has its envelope found by a byte scan. Either is decrypted with
/// `resource_type` and `id` as associated data, so a ciphertext from
/// anywhere else fails authentication. Anything else (v1 shells, other
/// layouts, clear resources) goes through [`open_resource`].
pub fn open_resource_at(
    keyring: &Keyring,
    resource_type: &str,
    id: &str,
    stored: &[u8],
) -> Result<Vec<u8>, SealError> {
    if stored.first() == Some(&PACKED) {
        let p = Packed::parse(stored).ok_or(SealError::Malformed)?;
        return p.open(keyring, resource_type, id);
    }
    if let Some(Ok(e)) = find_envelope(stored).map(envelope) {
        if e.v2 {
            let key = key_for(keyring, e.scope, e.epoch)?;
            return key.open_v2(resource_type, id, e.data.as_bytes());
        }
    }
    open_resource(keyring, stored)
}

/// [`open_resource_at`] for a packed shell held by value: decrypted inside
/// its own buffer, which then holds the plaintext (`Ok(true)`). `Ok(false)`
/// and `body` untouched if it is not a packed shell; on `NoKey` and
/// `Malformed` it is untouched too, on a failed decryption it holds
/// garbage.
pub(crate) fn open_packed_in_place(
    keyring: &Keyring,
    resource_type: &str,
    id: &str,
    body: &mut Vec<u8>,
) -> Result<bool, SealError> {
    if body.first() != Some(&PACKED) {
        return Ok(false);
    }
    let (key, nonce, tag, ct) = {
        let p = Packed::parse(body).ok_or(SealError::Malformed)?;
        let (key, nonce, ct_len, tag) = p.parts(keyring)?;
        // The ciphertext follows the header, the prefix and the nonce.
        let at = 9 + p.prefix.len() + 12;
        (key, nonce, tag, at..at + ct_len)
    };
    // Decrypted where it lies, then moved to the front (ring's own shift,
    // `from..` with an offset, copied the rest of the buffer per chunk:
    // most of the read's time for a 2 KB resource).
    let buf = body.get_mut(ct.clone()).ok_or(SealError::Malformed)?;
    key.decrypt_v2_in_place(resource_type, id, &nonce, (buf, 0), &tag)?;
    body.truncate(ct.end);
    body.drain(..ct.start);
    Ok(true)
}

/// The first byte of a packed shell; JSON never starts with it.
const PACKED: u8 = 0;

/// The form in which the record's view keeps a v2 sealed shell: the
/// shell's bytes with the envelope's base64 replaced by the binary it
/// encodes (`0`, prefix length and binary length as u32 LE, the JSON
/// before the base64, the nonce, ciphertext and tag, the JSON after it).
/// About a quarter smaller than the shell, and opened without a scan or a
/// base64 decode. [`unpack_shell`] gives back the exact shell bytes (the
/// base64 is canonical: decoding refuses anything [`b64_encode`] would not
/// write). `None` for anything that is not a v2 shell.
pub(crate) fn pack_shell(shell: &[u8]) -> Option<Vec<u8>> {
    let (start, end) = envelope_span(shell)?;
    let e = envelope(std::str::from_utf8(shell.get(start..end)?).ok()?).ok()?;
    if !e.v2 {
        return None;
    }
    let data_at = end.checked_sub(e.data.len())?;
    let mut bin = Vec::with_capacity(e.data.len() / 4 * 3);
    b64_decode_into(e.data.as_bytes(), &mut bin)?;
    if bin.len() < 12 + 16 {
        return None;
    }
    let (prefix, suffix) = (shell.get(..data_at)?, shell.get(end..)?);
    let mut out = Vec::with_capacity(9 + prefix.len() + bin.len() + suffix.len());
    out.push(PACKED);
    out.extend_from_slice(&u32::try_from(prefix.len()).ok()?.to_le_bytes());
    out.extend_from_slice(&u32::try_from(bin.len()).ok()?.to_le_bytes());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&bin);
    out.extend_from_slice(suffix);
    Some(out)
}

/// The shell bytes of a view body: a packed shell turned back into its
/// JSON, anything else as it is.
pub(crate) fn unpack_shell(body: Vec<u8>) -> Vec<u8> {
    if body.first() != Some(&PACKED) {
        return body;
    }
    match Packed::parse(&body) {
        Some(p) => {
            let mut out =
                Vec::with_capacity(p.prefix.len() + p.bin.len().div_ceil(3) * 4 + p.suffix.len());
            out.extend_from_slice(p.prefix);
            b64_encode_into(p.bin, &mut out);
            out.extend_from_slice(p.suffix);
            out
        }
        // Not written by `pack_shell`: handed on as stored.
        None => body,
    }
}

/// What opening a packed shell needs: the key, nonce, ciphertext length
/// and tag.
type Parts<'k> = (&'k ScopeKey, [u8; 12], usize, [u8; 16]);

/// A packed shell's parts (see [`pack_shell`]).
struct Packed<'a> {
    prefix: &'a [u8],
    bin: &'a [u8],
    suffix: &'a [u8],
}

impl<'a> Packed<'a> {
    fn parse(body: &'a [u8]) -> Option<Packed<'a>> {
        let (&PACKED, rest) = body.split_first()? else {
            return None;
        };
        let (p, rest) = rest.split_at_checked(4)?;
        let (b, rest) = rest.split_at_checked(4)?;
        let p = usize::try_from(u32::from_le_bytes(p.try_into().ok()?)).ok()?;
        let b = usize::try_from(u32::from_le_bytes(b.try_into().ok()?)).ok()?;
        let (prefix, rest) = rest.split_at_checked(p)?;
        let (bin, suffix) = rest.split_at_checked(b)?;
        Some(Packed {
            prefix,
            bin,
            suffix,
        })
    }

    /// The key, nonce, ciphertext length and tag: the scope and epoch are
    /// read from the envelope text that ends the prefix
    /// (`v2.<scope>.<epoch>.`).
    fn parts<'k>(&self, keyring: &'k Keyring) -> Result<Parts<'k>, SealError> {
        let malformed = || SealError::Malformed;
        let (scope, epoch) = self.scope_epoch().ok_or_else(malformed)?;
        let key = key_for(keyring, scope, epoch)?;
        let (nonce, rest) = self.bin.split_at_checked(12).ok_or_else(malformed)?;
        let at = rest.len().checked_sub(16).ok_or_else(malformed)?;
        let tag = rest.get(at..).ok_or_else(malformed)?;
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| malformed())?;
        let tag: [u8; 16] = tag.try_into().map_err(|_| malformed())?;
        Ok((key, nonce, at, tag))
    }

    /// The scope and epoch of the envelope text that ends the prefix,
    /// `v2.<scope>.<epoch>.` (a scope that is not a valid name has no key,
    /// so it is not checked here).
    fn scope_epoch(&self) -> Option<(&'a str, u32)> {
        let quote = memchr::memrchr(b'"', self.prefix)?;
        let text = self
            .prefix
            .get(quote + 1..)?
            .strip_prefix(b"v2.")?
            .strip_suffix(b".")?;
        let dot = memchr::memrchr(b'.', text)?;
        let epoch = std::str::from_utf8(text.get(dot + 1..)?).ok()?;
        if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((
            std::str::from_utf8(text.get(..dot)?).ok()?,
            epoch.parse().ok()?,
        ))
    }

    /// Decrypts the ciphertext into a new buffer.
    fn open(&self, keyring: &Keyring, resource_type: &str, id: &str) -> Result<Vec<u8>, SealError> {
        let (key, nonce, len, tag) = self.parts(keyring)?;
        let ct = self.bin.get(12..12 + len).ok_or(SealError::Malformed)?;
        key.open_v2_parts(resource_type, id, &nonce, ct, &tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// A broken random source: always the same bytes.
    struct Stuck;
    impl Entropy for Stuck {
        fn fill(&self, buf: &mut [u8]) -> hypercore_rs::Result<()> {
            buf.fill(7);
            Ok(())
        }
    }

    const OBS: &[u8] = br#"{"resourceType":"Observation","id":"bp","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2024-05-01T08:00:00+02:00","valueQuantity":{"value":112.41600000000001},"note":[{"text":"SECRET-NOTE"}]}"#;

    #[test]
    fn shell_keeps_only_what_is_documented() {
        let k = ScopeKey::generate("default", 0, &hypercore_rs::OsEntropy).unwrap();
        let shell = seal_resource(&k, OBS, &hypercore_rs::OsEntropy).unwrap();
        let text = String::from_utf8(shell.clone()).unwrap();
        assert!(!text.contains("SECRET-NOTE"));
        assert!(!text.contains("8480-6"));
        assert!(!text.contains("112.416"));
        assert!(!text.contains("final"));
        let r = Resource::parse(shell.clone()).unwrap();
        assert_eq!(r.resource_type(), "Observation");
        assert_eq!(r.id(), Some("bp"));
        assert_eq!(r.info().patient.as_deref(), Some("p1"));
        assert!(r.info().date.is_some());
        assert_eq!(
            r.info().codes[0].token(),
            format!("{}", k.blind_query("http://loinc.org|8480-6"))
        );
        let mut ring = Keyring::new();
        assert_eq!(
            open_resource(&ring, &shell),
            Err(SealError::NoKey {
                scope: "default".into(),
                epoch: 0
            })
        );
        ring.insert(k.clone());
        assert_eq!(open_resource(&ring, &shell).unwrap(), OBS);
        assert_eq!(
            open_resource_at(&ring, "Observation", "bp", &shell).unwrap(),
            OBS
        );
        assert!(text.contains("\"valueString\":\"v2.default.0."));
        assert_eq!(
            sealed_info(&shell),
            Some(SealedInfo {
                scope: "default".into(),
                epoch: 0
            })
        );
        assert_eq!(sealed_info(OBS), None);
        // A wrong key of the same name fails authentication.
        let mut other = Keyring::new();
        other.insert(ScopeKey::generate("default", 0, &hypercore_rs::OsEntropy).unwrap());
        assert!(matches!(
            open_resource(&other, &shell),
            Err(SealError::Key(KeyError::Decrypt))
        ));
    }

    /// A shell as written before v2 (XSalsa20-Poly1305, no associated
    /// data), made from a v2 shell by swapping the envelope.
    fn v1_shell(k: &ScopeKey, json: &[u8]) -> Vec<u8> {
        let e = hypercore_rs::OsEntropy;
        let v2 = String::from_utf8(seal_resource(k, json, &e).unwrap()).unwrap();
        let env = find_envelope(v2.as_bytes()).unwrap().to_owned();
        let ct = k.encrypt(json, &e).unwrap();
        let v1 = format!("v1.{}.{}.{}", k.scope(), k.epoch(), b64_encode(&ct));
        v2.replace(&env, &v1).into_bytes()
    }

    #[test]
    fn ciphertext_moved_to_another_resource_is_refused() {
        let k = ScopeKey::generate("default", 0, &hypercore_rs::OsEntropy).unwrap();
        let mut ring = Keyring::new();
        ring.insert(k.clone());
        // v2: the type and id are associated data, so authentication fails.
        let shell = seal_resource(&k, OBS, &hypercore_rs::OsEntropy).unwrap();
        let moved = String::from_utf8(shell.clone())
            .unwrap()
            .replace("\"id\":\"bp\"", "\"id\":\"other\"");
        assert_eq!(
            open_resource(&ring, moved.as_bytes()),
            Err(SealError::Key(KeyError::Decrypt))
        );
        for (ty, id) in [("Observation", "other"), ("Condition", "bp")] {
            assert_eq!(
                open_resource_at(&ring, ty, id, &shell),
                Err(SealError::Key(KeyError::Decrypt))
            );
        }
        // v1: the plaintext's names are compared.
        let old = v1_shell(&k, OBS);
        let moved = String::from_utf8(old)
            .unwrap()
            .replace("\"id\":\"bp\"", "\"id\":\"other\"");
        assert_eq!(
            open_resource(&ring, moved.as_bytes()),
            Err(SealError::Mismatch)
        );
        assert_eq!(
            open_resource_at(&ring, "Observation", "other", moved.as_bytes()),
            Err(SealError::Mismatch)
        );
    }

    /// Records written before v2 hold v1 shells: they still open, through
    /// both paths, and are still recognised as sealed.
    /// Short names build the associated data on the stack, long ones on
    /// the heap: the same bytes; a resource with the longest FHIR id (64
    /// characters) seals and opens.
    #[test]
    fn the_binding_is_the_same_on_the_stack_and_the_heap() {
        // FHIR ids are at most 64 characters, so valid names always fit
        // on the stack; the heap is for anything longer.
        let long = "x".repeat(64);
        let longer = "y".repeat(100);
        for (t, i) in [
            ("Observation", "o1"),
            ("Observation", &long),
            ("Observation", &longer),
        ] {
            let want = [t.as_bytes(), &[0], i.as_bytes()].concat();
            assert_eq!(binding(t, i).as_ref(), &want[..]);
        }
        assert!(matches!(binding("Observation", &long), Binding::Stack(..)));
        assert!(matches!(binding("Observation", &longer), Binding::Heap(_)));
        let k = ScopeKey::generate("default", 0, &hypercore_rs::OsEntropy).unwrap();
        let json = String::from_utf8(OBS.to_vec())
            .unwrap()
            .replace("\"bp\"", &format!("\"{long}\""));
        let shell = seal_resource(&k, json.as_bytes(), &hypercore_rs::OsEntropy).unwrap();
        let mut ring = Keyring::new();
        ring.insert(k);
        let packed = pack_shell(&shell).unwrap();
        assert_eq!(
            open_resource_at(&ring, "Observation", &long, &packed).unwrap(),
            json.as_bytes()
        );
        assert_eq!(open_resource(&ring, &shell).unwrap(), json.as_bytes());
    }

    #[test]
    fn only_v2_shells_are_packed() {
        let k = ScopeKey::generate("default", 0, &hypercore_rs::OsEntropy).unwrap();
        assert!(pack_shell(&v1_shell(&k, OBS)).is_none());
        assert!(pack_shell(OBS).is_none());
        assert_eq!(unpack_shell(OBS.to_vec()), OBS);
    }

    #[test]
    fn v1_shells_still_open() {
        let k = ScopeKey::generate("mental-health", 3, &hypercore_rs::OsEntropy).unwrap();
        let old = v1_shell(&k, OBS);
        assert!(String::from_utf8_lossy(&old).contains("\"v1.mental-health.3."));
        let mut ring = Keyring::new();
        ring.insert(k.clone());
        assert_eq!(open_resource(&ring, &old).unwrap(), OBS);
        assert_eq!(
            open_resource_at(&ring, "Observation", "bp", &old).unwrap(),
            OBS
        );
        assert_eq!(
            sealed_info(&old),
            Some(SealedInfo {
                scope: "mental-health".into(),
                epoch: 3
            })
        );
        let mut flipped = old.clone();
        let at = memchr::memmem::find(&old, b"v1.mental-health.3.").unwrap() + 40;
        flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
        assert!(open_resource_at(&ring, "Observation", "bp", &flipped).is_err());
    }

    /// The byte scan and the parse find the same envelope in every shell
    /// `seal_resource` writes (the HL7 examples), and both open it.
    #[test]
    fn the_scan_finds_what_the_parse_finds() {
        let dir = std::path::Path::new("/work/shared/fhir/r4-examples");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let k = ScopeKey::generate("default", 0, &hypercore_rs::OsEntropy).unwrap();
        let mut ring = Keyring::new();
        ring.insert(k.clone());
        let mut n = 0;
        for entry in entries.take(200) {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let Ok(shell) = seal_resource(&k, &bytes, &hypercore_rs::OsEntropy) else {
                continue;
            };
            let p = parse_sealed(&shell).unwrap();
            let e = envelope(find_envelope(&shell).unwrap()).unwrap();
            assert_eq!(e.data, p.data);
            assert_eq!(
                open_resource_at(&ring, &p.resource_type, &p.id, &shell).unwrap(),
                bytes
            );
            // The view's packed form: smaller, back to the same bytes, and
            // opens to the same resource (only under its own type and id).
            let packed = pack_shell(&shell).unwrap();
            assert!(packed.len() < shell.len());
            assert_eq!(unpack_shell(packed.clone()), shell);
            assert_eq!(
                open_resource_at(&ring, &p.resource_type, &p.id, &packed).unwrap(),
                bytes
            );
            assert!(open_resource_at(&ring, &p.resource_type, "other", &packed).is_err());
            n += 1;
        }
        assert!(n > 50, "only {n} examples sealed");
    }

    #[test]
    fn blinding_differs_by_scope_and_epoch() {
        let e = hypercore_rs::OsEntropy;
        let a = ScopeKey::generate("default", 0, &e).unwrap();
        let b = ScopeKey::generate("default", 1, &e).unwrap();
        let c = ScopeKey::generate("hiv", 0, &e).unwrap();
        let t = "http://loinc.org|8480-6";
        assert_eq!(a.blind(t), a.blind(t));
        assert_ne!(a.blind(t), b.blind(t));
        assert_ne!(a.blind(t), c.blind(t));
        assert!(check_scope("Bad_Name").is_err());
        assert!(check_scope("").is_err());
        assert!(check_scope("mental-health").is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Nonces never repeat under one key, across rotations, even with a
        /// random source stuck on one value (distinct messages), and with a
        /// good one (any messages).
        #[test]
        fn nonces_never_repeat_across_rotations(
            msgs in proptest::collection::hash_set(proptest::collection::vec(any::<u8>(), 0..40), 1..40),
            epochs in 1u32..5,
        ) {
            let mut seen: HashSet<(u32, [u8; 24])> = HashSet::new();
            let mut seen_v2: HashSet<(u32, [u8; 12])> = HashSet::new();
            for epoch in 0..epochs {
                let k = ScopeKey::generate("default", epoch, &hypercore_rs::OsEntropy).unwrap();
                for m in &msgs {
                    for entropy in [&Stuck as &dyn Entropy, &hypercore_rs::OsEntropy, &hypercore_rs::OsEntropy] {
                        let ct = k.encrypt(m, entropy).unwrap();
                        let mut n = [0u8; 24];
                        n.copy_from_slice(&ct[..24]);
                        let fresh = seen.insert((epoch, n));
                        // The stuck source repeats only for the same message,
                        // and then the whole ciphertext is identical.
                        prop_assert!(fresh, "nonce reused under epoch {}", epoch);
                        prop_assert_eq!(k.decrypt(&ct).unwrap(), m.clone());
                        // The same for sealed resources (v2), under their
                        // own key.
                        let ct = k.seal_v2("Observation", "o1", m, entropy).unwrap();
                        let mut n2 = [0u8; 12];
                        n2.copy_from_slice(&ct[..12]);
                        prop_assert!(seen_v2.insert((epoch, n2)), "v2 nonce reused under epoch {}", epoch);
                        let text = b64_encode(&ct);
                        prop_assert_eq!(k.open_v2("Observation", "o1", text.as_bytes()).unwrap(), m.clone());
                    }
                }
            }
        }

        #[test]
        fn tampered_ciphertext_never_opens(msg in proptest::collection::vec(any::<u8>(), 0..64), pos in any::<usize>(), bit in 0u8..8) {
            let k = ScopeKey::generate("default", 0, &hypercore_rs::OsEntropy).unwrap();
            let mut ct = k.encrypt(&msg, &hypercore_rs::OsEntropy).unwrap();
            let p = pos % ct.len();
            ct[p] ^= 1 << bit;
            prop_assert!(k.decrypt(&ct).is_err());
            let mut ct = k.seal_v2("Observation", "o1", &msg, &hypercore_rs::OsEntropy).unwrap();
            let p = pos % ct.len();
            ct[p] ^= 1 << bit;
            let text = b64_encode(&ct);
            prop_assert!(k.open_v2("Observation", "o1", text.as_bytes()).is_err());
        }

        /// Any change to a packed shell either fails to open or opens to
        /// the original resource (a flip in the clear JSON around the
        /// envelope changes nothing the AEAD covers; the op's signature
        /// covers those bytes): never another plaintext, never a panic.
        #[test]
        fn tampered_packed_shells_open_to_the_original_or_not_at_all(
            note in "[a-zA-Z0-9 ]{0,80}",
            pos in any::<usize>(),
            bit in 0u8..8,
        ) {
            let k = ScopeKey::generate("default", 3, &hypercore_rs::OsEntropy).unwrap();
            let json = String::from_utf8(OBS.to_vec()).unwrap().replace("SECRET-NOTE", &note);
            let shell = seal_resource(&k, json.as_bytes(), &hypercore_rs::OsEntropy).unwrap();
            let mut ring = Keyring::new();
            ring.insert(k);
            let packed = pack_shell(&shell).unwrap();
            prop_assert_eq!(unpack_shell(packed.clone()), shell.clone());
            prop_assert_eq!(open_resource_at(&ring, "Observation", "bp", &packed).unwrap(), json.as_bytes().to_vec());
            // In place: the same plaintext; nothing touched without the key
            // or for a shell in JSON.
            let mut own = packed.clone();
            prop_assert!(open_packed_in_place(&ring, "Observation", "bp", &mut own).unwrap());
            prop_assert_eq!(&own, &json.as_bytes().to_vec());
            let mut own = packed.clone();
            let no_key = matches!(
                open_packed_in_place(&Keyring::new(), "Observation", "bp", &mut own),
                Err(SealError::NoKey { .. })
            );
            prop_assert!(no_key);
            prop_assert_eq!(&own, &packed);
            let mut own = shell.clone();
            prop_assert!(!open_packed_in_place(&ring, "Observation", "bp", &mut own).unwrap());
            prop_assert_eq!(&own, &shell);
            let mut bad = packed.clone();
            let p = pos % bad.len();
            bad[p] ^= 1 << bit;
            if let Ok(plain) = open_resource_at(&ring, "Observation", "bp", &bad) {
                prop_assert_eq!(plain, json.as_bytes().to_vec());
            }
            let mut own = bad.clone();
            if let Ok(true) = open_packed_in_place(&ring, "Observation", "bp", &mut own) {
                prop_assert_eq!(own, json.as_bytes().to_vec());
            }
            let _ = unpack_shell(bad);
            // Cut short anywhere: never a panic, never another plaintext
            // (a cut in the clear JSON after the envelope still opens).
            let cut = &packed[..pos % packed.len()];
            if let Ok(plain) = open_resource_at(&ring, "Observation", "bp", cut) {
                prop_assert_eq!(plain, json.as_bytes().to_vec());
            }
            let _ = unpack_shell(cut.to_vec());
        }

        #[test]
        fn packed_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = body;
            b.insert(0, PACKED);
            let _ = open_resource_at(&Keyring::new(), "Observation", "o1", &b);
            let _ = open_packed_in_place(&Keyring::new(), "Observation", "o1", &mut b.clone());
            let _ = unpack_shell(b);
        }

        #[test]
        fn parse_sealed_never_panics(s in ".{0,200}") {
            let _ = sealed_info(s.as_bytes());
            let _ = open_resource(&Keyring::new(), s.as_bytes());
            let _ = open_resource_at(&Keyring::new(), "Observation", "o1", s.as_bytes());
            let _ = find_envelope(s.as_bytes());
        }
    }
}
