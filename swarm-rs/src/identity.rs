//! Peer identities: ed25519 key pairs, and the public keys that address peers.
//!
//! A peer is known by its [`PublicKey`], never by a network address. The same
//! key pair also yields the static X25519 key of the Noise handshake (see
//! `secure`); that conversion is crate-private so it cannot be misused.
//! This module never holds secret material in `Debug` output.

use core::fmt;
use core::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::entropy::{EntropyError, EntropySource};

/// Length in bytes of a public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length in bytes of a key pair seed (the ed25519 secret key).
pub const SEED_LEN: usize = 32;
/// Length in bytes of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// Errors about keys and signatures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a valid ed25519 public key.
    #[error("invalid public key")]
    InvalidPublicKey,
    /// A hex string did not have the right length or alphabet.
    #[error("invalid hex encoding of a public key")]
    InvalidHex,
    /// A signature did not verify. Deliberately carries no detail.
    #[error("signature verification failed")]
    BadSignature,
    /// The entropy source failed while generating a key pair.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

/// An ed25519 public key: the address of a peer.
///
/// Always a valid curve point (checked on construction). Ordered by its bytes,
/// which gives deterministic tie-breaks between two peers.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "[u8; 32]", into = "[u8; 32]")]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Parses and validates a public key.
    pub fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| IdentityError::InvalidPublicKey)?;
        Ok(Self(bytes))
    }

    /// Parses and validates a public key from a slice of any length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdentityError> {
        let array: [u8; PUBLIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| IdentityError::InvalidPublicKey)?;
        Self::from_bytes(array)
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// The 32 key bytes, by value.
    pub fn to_bytes(self) -> [u8; PUBLIC_KEY_LEN] {
        self.0
    }

    /// Verifies `signature` over `message` (strict verification: rejects
    /// small-order keys and non-canonical signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        let signature: [u8; SIGNATURE_LEN] = signature
            .try_into()
            .map_err(|_| IdentityError::BadSignature)?;
        let key = self.verifying_key()?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature);
        key.verify_strict(message, &signature)
            .map_err(|_| IdentityError::BadSignature)
    }

    fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::InvalidPublicKey)
    }

    /// The X25519 (Montgomery) form of this key, as used as the Noise static key.
    pub(crate) fn to_x25519(self) -> Result<[u8; 32], IdentityError> {
        Ok(self.verifying_key()?.to_montgomery().to_bytes())
    }
}

impl TryFrom<[u8; PUBLIC_KEY_LEN]> for PublicKey {
    type Error = IdentityError;
    fn try_from(bytes: [u8; PUBLIC_KEY_LEN]) -> Result<Self, Self::Error> {
        Self::from_bytes(bytes)
    }
}

impl From<PublicKey> for [u8; PUBLIC_KEY_LEN] {
    fn from(key: PublicKey) -> Self {
        key.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = IdentityError;

    /// Parses 64 hex digits (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.as_bytes();
        if s.len() != PUBLIC_KEY_LEN * 2 {
            return Err(IdentityError::InvalidHex);
        }
        let mut out = [0u8; PUBLIC_KEY_LEN];
        for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            let hi = hex_value(pair[0]).ok_or(IdentityError::InvalidHex)?;
            let lo = hex_value(pair[1]).ok_or(IdentityError::InvalidHex)?;
            *byte = (hi << 4) | lo;
        }
        Self::from_bytes(out)
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// An ed25519 key pair: the identity of this peer.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    public: PublicKey,
}

impl KeyPair {
    /// Derives the key pair from its 32-byte seed (the ed25519 secret key).
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let public = PublicKey(signing.verifying_key().to_bytes());
        Self { signing, public }
    }

    /// Generates a fresh key pair from the injected entropy source.
    pub fn generate(entropy: &mut dyn EntropySource) -> Result<Self, IdentityError> {
        let mut seed = [0u8; SEED_LEN];
        entropy.try_fill_bytes(&mut seed)?;
        Ok(Self::from_seed(seed))
    }

    /// The public key that addresses this peer.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The secret seed. Keep it secret; it is enough to impersonate this peer.
    pub fn seed(&self) -> [u8; SEED_LEN] {
        self.signing.to_bytes()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }

    /// The X25519 private scalar matching [`PublicKey::to_x25519`].
    pub(crate) fn x25519_private(&self) -> [u8; 32] {
        self.signing.to_scalar_bytes()
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;
    use proptest::prelude::*;

    #[test]
    fn from_seed_is_deterministic() {
        let a = KeyPair::from_seed([1; 32]);
        let b = KeyPair::from_seed([1; 32]);
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.seed(), [1; 32]);
        assert_ne!(a.public_key(), KeyPair::from_seed([2; 32]).public_key());
    }

    #[test]
    fn generate_uses_injected_entropy() {
        let a = KeyPair::generate(&mut SeededEntropy::from_u64(1)).unwrap();
        let b = KeyPair::generate(&mut SeededEntropy::from_u64(1)).unwrap();
        let c = KeyPair::generate(&mut SeededEntropy::from_u64(2)).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_ne!(a.public_key(), c.public_key());
    }

    #[test]
    fn sign_and_verify() {
        let kp = KeyPair::from_seed([3; 32]);
        let sig = kp.sign(b"hello");
        kp.public_key().verify(b"hello", &sig).unwrap();
        assert_eq!(
            kp.public_key().verify(b"hellO", &sig),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            kp.public_key().verify(b"hello", &sig[..63]),
            Err(IdentityError::BadSignature)
        );
        let other = KeyPair::from_seed([4; 32]).public_key();
        assert_eq!(
            other.verify(b"hello", &sig),
            Err(IdentityError::BadSignature)
        );
    }

    #[test]
    fn display_and_parse_round_trip() {
        let key = KeyPair::from_seed([5; 32]).public_key();
        let hex = key.to_string();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(hex.parse::<PublicKey>().unwrap(), key);
        assert_eq!(hex.to_uppercase().parse::<PublicKey>().unwrap(), key);
        assert_eq!(
            hex[..62].parse::<PublicKey>(),
            Err(IdentityError::InvalidHex)
        );
        assert_eq!(
            format!("{}zz", &hex[..62]).parse::<PublicKey>(),
            Err(IdentityError::InvalidHex)
        );
    }

    #[test]
    fn x25519_forms_agree() {
        // The X25519 public key of the converted private scalar must be the
        // Montgomery form of the ed25519 public key; the handshake relies on it.
        let kp = KeyPair::from_seed([9; 32]);
        let scalar = kp.x25519_private();
        let public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(scalar);
        assert_eq!(public.to_bytes(), kp.public_key().to_x25519().unwrap());
    }

    #[test]
    fn ordering_is_by_bytes() {
        let a = KeyPair::from_seed([1; 32]).public_key();
        let b = KeyPair::from_seed([2; 32]).public_key();
        assert_eq!(a.cmp(&b), a.as_bytes().cmp(b.as_bytes()));
    }

    #[test]
    fn serde_round_trip_validates() {
        let key = KeyPair::from_seed([6; 32]).public_key();
        let bytes = postcard::to_allocvec(&key).unwrap();
        let back: PublicKey = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, key);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(key) = PublicKey::from_slice(&bytes) {
                prop_assert_eq!(key.as_bytes().as_slice(), bytes.as_slice());
                let _ = key.verify(&bytes, &[0u8; 64]);
            }
            let _ = core::str::from_utf8(&bytes).ok().map(str::parse::<PublicKey>);
        }
    }
}
