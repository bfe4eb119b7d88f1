//! Keys at rest: a device's identity and scope keys, locked with a
//! passphrase (Argon2id) or held by the embedding app.
//!
//! [`lock`] turns [`DeviceSecrets`] into bytes safe to write to disk:
//! a format byte, the Argon2id parameters, a random salt and nonce, and the
//! secrets encrypted with XSalsa20-Poly1305 under the key Argon2id derives
//! from the passphrase. Changing any header byte changes the derived key,
//! so tampering fails like a wrong passphrase. [`unlock`] refuses
//! parameters beyond [`MAX_MEMORY_KIB`] / [`MAX_PASSES`] so a planted file
//! cannot make it allocate without bound.
//!
//! An app that keeps keys in a platform keychain implements [`KeyVault`]
//! instead and builds its record with [`SecureRecord::with_secrets`].
//! Note: [`SecureRecord::new`] derives the identity from the corestore
//! seed, which hypercore-rs keeps in its storage in clear; to protect the
//! identity at rest use a locked or vaulted identity instead.

use crate::keys::{random, Identity, KeyError};
use crate::record::Record;
use crate::scope_crypto::Keyring;
use crate::secure::SecureRecord;
use argon2::{Algorithm, Argon2, Params, Version};
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use hypercore_rs::Entropy;
use serde::{Deserialize, Serialize};

const FORMAT: u8 = 1;
/// The most memory [`unlock`] accepts (KiB): 2 GiB.
pub const MAX_MEMORY_KIB: u32 = 2 * 1024 * 1024;
/// The most passes [`unlock`] accepts.
pub const MAX_PASSES: u32 = 64;

/// What locking or unlocking can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// Wrong passphrase, or the locked bytes were changed.
    #[error("wrong passphrase or tampered key file")]
    WrongPassphrase,
    /// The bytes are not a locked key file.
    #[error("malformed key file")]
    Malformed,
    /// Argon2 parameters out of range.
    #[error("unacceptable KDF parameters")]
    Params,
    /// Randomness failed.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// The app's vault failed.
    #[error("key vault: {0}")]
    Vault(String),
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub passes: u32,
    /// Lanes.
    pub lanes: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            passes: 3,
            lanes: 1,
        }
    }
}

impl KdfParams {
    /// Custom parameters (tests use small ones).
    pub fn new(memory_kib: u32, passes: u32, lanes: u32) -> KdfParams {
        KdfParams {
            memory_kib,
            passes,
            lanes,
        }
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8; 16]) -> Result<[u8; 32], KeystoreError> {
        if self.memory_kib > MAX_MEMORY_KIB || self.passes > MAX_PASSES || self.lanes > 16 {
            return Err(KeystoreError::Params);
        }
        let params = Params::new(self.memory_kib, self.passes, self.lanes, Some(32))
            .map_err(|_| KeystoreError::Params)?;
        let mut key = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, salt, &mut key)
            .map_err(|_| KeystoreError::Params)?;
        Ok(key)
    }
}

/// Everything secret a device holds for a record.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSecrets {
    /// The identity's seed.
    pub identity_seed: [u8; 32],
    /// The scope keys.
    pub keyring: Keyring,
}

impl std::fmt::Debug for DeviceSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSecrets")
            .field("keys", &self.keyring.len())
            .finish_non_exhaustive()
    }
}

/// Locks `secrets` under `passphrase`.
pub fn lock(
    secrets: &DeviceSecrets,
    passphrase: &[u8],
    params: KdfParams,
    entropy: &dyn Entropy,
) -> Result<Vec<u8>, KeystoreError> {
    let salt: [u8; 16] = random(entropy)?;
    let nonce: [u8; 24] = random(entropy)?;
    let mut header = vec![FORMAT];
    for v in [params.memory_kib, params.passes, params.lanes] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    header.extend_from_slice(&salt);
    // The header goes into the KDF input too, so any change to it fails.
    let mut input = passphrase.to_vec();
    input.extend_from_slice(&header);
    let key = params.derive(&input, &salt)?;
    let plain = postcard::to_stdvec(secrets).map_err(|_| KeystoreError::Malformed)?;
    let ct = XSalsa20Poly1305::new(&key.into())
        .encrypt(&nonce.into(), plain.as_slice())
        .map_err(|_| KeystoreError::Malformed)?;
    let mut out = header;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Unlocks [`lock`]'s output.
pub fn unlock(bytes: &[u8], passphrase: &[u8]) -> Result<DeviceSecrets, KeystoreError> {
    const HEADER: usize = 1 + 12 + 16;
    if bytes.len() < HEADER + 24 + 16 || bytes[0] != FORMAT {
        return Err(KeystoreError::Malformed);
    }
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[i..i + 4]);
        u32::from_le_bytes(b)
    };
    let params = KdfParams::new(u32_at(1), u32_at(5), u32_at(9));
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&bytes[13..29]);
    let mut nonce = [0u8; 24];
    nonce.copy_from_slice(&bytes[HEADER..HEADER + 24]);
    let mut input = passphrase.to_vec();
    input.extend_from_slice(&bytes[..HEADER]);
    let key = params.derive(&input, &salt)?;
    let plain = XSalsa20Poly1305::new(&key.into())
        .decrypt(&nonce.into(), &bytes[HEADER + 24..])
        .map_err(|_| KeystoreError::WrongPassphrase)?;
    postcard::from_bytes(&plain).map_err(|_| KeystoreError::Malformed)
}

/// Where an embedding app keeps a device's secrets (a platform keychain,
/// a hardware token...): the alternative to a passphrase.
pub trait KeyVault: Send + Sync {
    /// The stored secrets, if any.
    fn load(&self) -> Result<Option<DeviceSecrets>, KeystoreError>;
    /// Replaces the stored secrets.
    fn store(&self, secrets: &DeviceSecrets) -> Result<(), KeystoreError>;
}

impl SecureRecord {
    /// This device's secrets (identity and keyring), to lock or vault.
    pub fn secrets(&self) -> DeviceSecrets {
        DeviceSecrets {
            identity_seed: self.identity_secret().seed(),
            keyring: self.keyring(),
        }
    }

    /// A secure record using secrets from [`unlock`] or a [`KeyVault`].
    pub fn with_secrets(record: Record, secrets: DeviceSecrets) -> SecureRecord {
        let s = SecureRecord::with_identity(record, Identity::from_seed(secrets.identity_seed));
        s.add_keys(secrets.keyring);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope_crypto::ScopeKey;
    use hypercore_rs::OsEntropy;

    fn secrets() -> DeviceSecrets {
        let mut keyring = Keyring::new();
        keyring.insert(ScopeKey::generate("default", 0, &OsEntropy).unwrap());
        DeviceSecrets {
            identity_seed: [7; 32],
            keyring,
        }
    }

    #[test]
    fn lock_unlock_wrong_passphrase_and_every_flipped_byte() {
        let p = KdfParams::new(64, 1, 1);
        let s = secrets();
        let locked = lock(&s, b"correct horse", p, &OsEntropy).unwrap();
        assert_eq!(unlock(&locked, b"correct horse").unwrap(), s);
        assert_eq!(
            unlock(&locked, b"wrong"),
            Err(KeystoreError::WrongPassphrase)
        );
        for i in 0..locked.len() {
            let mut t = locked.clone();
            t[i] ^= 1;
            assert!(unlock(&t, b"correct horse").is_err(), "byte {i}");
        }
        assert_eq!(unlock(&[], b"x"), Err(KeystoreError::Malformed));
        // A planted file asking for absurd memory is refused before any work.
        let mut huge = locked.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(unlock(&huge, b"correct horse"), Err(KeystoreError::Params));
    }
}
