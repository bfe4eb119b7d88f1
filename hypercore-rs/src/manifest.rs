//! Keys and signatures: the manifest names the signers and the quorum; the
//! core key is the hash of the encoded manifest; the discovery key is a keyed
//! hash of the core key and is the only thing ever announced.
//!
//! What is signed: a fixed namespace, the core key, the tree hash, the length
//! and the fork id. A signature is a list of (signer position, ed25519
//! signature) pairs; it verifies when at least `quorum` distinct signers signed.

use crate::error::{Error, ProofError, Result};
use crate::hash::Hash;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The version of the manifest encoding this crate writes.
pub const MANIFEST_VERSION: u32 = 1;
/// The most signers a manifest may name.
pub const MAX_SIGNERS: usize = 32;

const KEY_DOMAIN: &[u8] = b"hypercore-rs/manifest/v1";
const DISCOVERY_DOMAIN: &[u8] = b"hypercore-rs/discovery/v1";
const SIGN_DOMAIN: &[u8; 32] = b"hypercore-rs/tree-signature/v1\0\0";

/// A 32-byte ed25519 public key of a signer.
pub type PublicKey = [u8; 32];

/// Who may sign a core: `quorum` of the `signers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Encoding version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// How many distinct signers must sign each tree.
    pub quorum: u32,
    /// The signers' ed25519 public keys.
    pub signers: Vec<PublicKey>,
}

impl Manifest {
    /// A manifest with one signer.
    pub fn single(public_key: PublicKey) -> Self {
        Manifest {
            version: MANIFEST_VERSION,
            quorum: 1,
            signers: vec![public_key],
        }
    }

    /// A `quorum`-of-`signers.len()` manifest.
    pub fn multi(quorum: u32, signers: Vec<PublicKey>) -> Result<Self> {
        let m = Manifest {
            version: MANIFEST_VERSION,
            quorum,
            signers,
        };
        m.validate()?;
        Ok(m)
    }

    /// Checks the manifest is usable.
    pub fn validate(&self) -> Result<()> {
        if self.version != MANIFEST_VERSION {
            return Err(Error::InvalidManifest("unknown version"));
        }
        if self.signers.is_empty() || self.signers.len() > MAX_SIGNERS {
            return Err(Error::InvalidManifest("needs 1 to 32 signers"));
        }
        if self.quorum == 0 || self.quorum as usize > self.signers.len() {
            return Err(Error::InvalidManifest("quorum out of range"));
        }
        let mut sorted = self.signers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.signers.len() {
            return Err(Error::InvalidManifest("duplicate signer"));
        }
        for s in &self.signers {
            VerifyingKey::from_bytes(s).map_err(|_| Error::InvalidManifest("bad public key"))?;
        }
        Ok(())
    }

    /// The canonical encoding (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// The core key: the BLAKE3 hash of the encoded manifest, domain-separated.
    pub fn key(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(KEY_DOMAIN);
        h.update(&self.encode());
        *h.finalize().as_bytes()
    }

    /// Checks `signature` over a tree of `key` at (`tree_hash`, `length`, `fork`).
    pub fn verify(
        &self,
        key: &Hash,
        tree_hash: &Hash,
        length: u64,
        fork: u64,
        signature: &MultiSignature,
    ) -> Result<(), ProofError> {
        let msg = signable(key, tree_hash, length, fork);
        let mut seen = 0u64;
        let mut valid = 0u32;
        if signature.0.len() > MAX_SIGNERS {
            return Err(ProofError::BadSignature);
        }
        for (pos, sig) in &signature.0 {
            let pos = *pos as usize;
            let Some(pk) = self.signers.get(pos).filter(|_| pos < 64) else {
                return Err(ProofError::BadSignature);
            };
            if seen & (1 << pos) != 0 {
                return Err(ProofError::BadSignature);
            }
            seen |= 1 << pos;
            let vk = VerifyingKey::from_bytes(pk).map_err(|_| ProofError::BadSignature)?;
            let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
            vk.verify(&msg, &sig)
                .map_err(|_| ProofError::BadSignature)?;
            valid += 1;
        }
        if valid >= self.quorum {
            Ok(())
        } else {
            Err(ProofError::BadSignature)
        }
    }
}

/// The discovery key of a core key: safe to announce, reveals nothing about the key.
pub fn discovery_key(key: &Hash) -> Hash {
    *blake3::keyed_hash(key, DISCOVERY_DOMAIN).as_bytes()
}

/// The exact bytes a signer signs.
pub fn signable(key: &Hash, tree_hash: &Hash, length: u64, fork: u64) -> [u8; 112] {
    let mut out = [0u8; 112];
    out[..32].copy_from_slice(SIGN_DOMAIN);
    out[32..64].copy_from_slice(key);
    out[64..96].copy_from_slice(tree_hash);
    out[96..104].copy_from_slice(&length.to_le_bytes());
    out[104..112].copy_from_slice(&fork.to_le_bytes());
    out
}

/// Signatures by signer position in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MultiSignature(pub Vec<(u8, Sig)>);

/// A 64-byte ed25519 signature that serde can carry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub [u8; 64]);

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

impl Serialize for Sig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Sig, E> {
                <[u8; 64]>::try_from(v)
                    .map(Sig)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Signs with every key the holder has for this manifest.
pub(crate) fn sign_all(
    manifest: &Manifest,
    keys: &[SigningKey],
    key: &Hash,
    tree_hash: &Hash,
    length: u64,
    fork: u64,
) -> MultiSignature {
    let msg = signable(key, tree_hash, length, fork);
    let mut sigs = Vec::new();
    for sk in keys {
        let pk = sk.verifying_key().to_bytes();
        if let Some(pos) = manifest.signers.iter().position(|s| *s == pk) {
            sigs.push((pos as u8, Sig(sk.sign(&msg).to_bytes())));
        }
    }
    sigs.sort_by_key(|(p, _)| *p);
    MultiSignature(sigs)
}

/// Whether `keys` hold enough of the manifest's signers to sign alone.
pub(crate) fn can_sign(manifest: &Manifest, keys: &[SigningKey]) -> bool {
    let n = manifest
        .signers
        .iter()
        .filter(|s| keys.iter().any(|k| k.verifying_key().to_bytes() == **s))
        .count();
    n as u32 >= manifest.quorum
}

/// An ed25519 key pair for signing a core.
#[derive(Clone)]
pub struct KeyPair {
    secret: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A key pair from a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        KeyPair {
            secret: SigningKey::from_bytes(&seed),
        }
    }

    /// A fresh key pair from the given entropy source.
    pub fn generate(entropy: &dyn crate::Entropy) -> Result<Self> {
        let mut seed = [0u8; 32];
        entropy.fill(&mut seed)?;
        Ok(Self::from_seed(seed))
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.secret.verifying_key().to_bytes()
    }

    /// The secret seed (keep it secret).
    pub fn seed(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.secret
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn kp(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn quorum_counts_distinct_valid_signers() {
        let keys: Vec<_> = (1..=3).map(kp).collect();
        let m = Manifest::multi(
            2,
            keys.iter().map(|k| k.verifying_key().to_bytes()).collect(),
        )
        .unwrap();
        let key = m.key();
        let th = [7u8; 32];
        let two = sign_all(&m, &keys[..2], &key, &th, 5, 0);
        assert!(m.verify(&key, &th, 5, 0, &two).is_ok());
        let one = sign_all(&m, &keys[..1], &key, &th, 5, 0);
        assert_eq!(
            m.verify(&key, &th, 5, 0, &one),
            Err(ProofError::BadSignature)
        );
        let dup = MultiSignature(vec![one.0[0], one.0[0]]);
        assert!(m.verify(&key, &th, 5, 0, &dup).is_err());
        assert!(m.verify(&key, &th, 6, 0, &two).is_err());
        assert!(m.verify(&key, &th, 5, 1, &two).is_err());
        assert!(can_sign(&m, &keys[1..]));
        assert!(!can_sign(&m, &keys[2..]));
    }

    #[test]
    fn invalid_manifests() {
        assert!(Manifest::multi(0, vec![[1; 32]]).is_err());
        let pk = kp(1).verifying_key().to_bytes();
        assert!(Manifest::multi(2, vec![pk]).is_err());
        assert!(Manifest::multi(1, vec![pk, pk]).is_err());
        assert!(Manifest::multi(1, vec![]).is_err());
    }

    #[test]
    fn golden_vectors() {
        let hex = |h: &[u8]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let m = Manifest::single(KeyPair::from_seed([1; 32]).public_key());
        assert_eq!(
            hex(&m.encode()),
            "0101018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        );
        assert_eq!(
            hex(&m.key()),
            "426d59426ac5a975ce05f77992fe051715eda84a483377a736bbf688d84c74bb"
        );
        assert_eq!(
            hex(&discovery_key(&m.key())),
            "ceb4c48ed67101ef54739aa3c62cf1689ddc8742b7c102c838038506d7ba3fb6"
        );
    }

    #[test]
    fn keys_are_distinct() {
        let a = Manifest::single(kp(1).verifying_key().to_bytes());
        let b = Manifest::single(kp(2).verifying_key().to_bytes());
        assert_ne!(a.key(), b.key());
        assert_ne!(discovery_key(&a.key()), a.key());
    }
}
