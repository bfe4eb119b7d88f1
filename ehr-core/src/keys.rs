//! Device identities and sealed boxes.
//!
//! Every device (a patient's phone, a provider's system, a mirror) has an
//! ed25519 [`Identity`]. Its X25519 key for encryption is derived from it
//! (the standard birational map: the clamped SHA-512 scalar of the secret,
//! the Montgomery form of the public point), so one published 32-byte
//! [`IdentityPublic`] is enough both to verify the device and to encrypt to
//! it.
//!
//! [`seal`] encrypts a short message (a scope key) to a recipient so that
//! only that recipient can open it and the sender stays anonymous, like
//! libsodium's sealed box: a fresh ephemeral X25519 key, a Diffie-Hellman
//! with the recipient's key, a key derived with BLAKE3 (bound to both public
//! keys), and XSalsa20-Poly1305. Each ephemeral key is used once, so its
//! derived key never sees a second message.

use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hypercore_rs::Entropy;

/// Domain for the sealed box's key derivation.
const SEAL_DOMAIN: &str = "ehr-core 2026 sealed box v1";

/// How much a sealed box adds to its message: the ephemeral public key
/// and the Poly1305 tag.
pub const SEAL_OVERHEAD: usize = 32 + 16;

/// What key handling can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Bytes that are not a valid ed25519 public key.
    #[error("invalid identity public key")]
    InvalidPublicKey,
    /// A sealed box that is too short, not for this key, or tampered with.
    #[error("the sealed box cannot be opened with this identity")]
    CannotOpen,
    /// A ciphertext that fails authentication (wrong key or tampered).
    #[error("decryption failed: wrong key or tampered ciphertext")]
    Decrypt,
    /// A signature that does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The entropy source failed.
    #[error("entropy: {0}")]
    Entropy(String),
}

pub(crate) fn random<const N: usize>(entropy: &dyn Entropy) -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    entropy
        .fill(&mut b)
        .map_err(|e| KeyError::Entropy(e.to_string()))?;
    Ok(b)
}

/// A device's secret identity (an ed25519 signing key).
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// A device's public identity: an ed25519 public key, also usable (through
/// its Montgomery form) to encrypt to the device.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct IdentityPublic(pub [u8; 32]);

impl std::fmt::Debug for IdentityPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityPublic({})", crate::view::hex(&self.0))
    }
}

impl Identity {
    /// The identity with this 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        Identity {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// A new random identity.
    pub fn generate(entropy: &dyn Entropy) -> Result<Identity, KeyError> {
        Ok(Identity::from_seed(random(entropy)?))
    }

    /// The secret seed (keep it secret).
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public identity.
    pub fn public(&self) -> IdentityPublic {
        IdentityPublic(self.signing.verifying_key().to_bytes())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    /// The X25519 Diffie-Hellman of this identity with `point`.
    fn dh(&self, point: &MontgomeryPoint) -> [u8; 32] {
        point.mul_clamped(self.signing.to_scalar_bytes()).to_bytes()
    }
}

impl IdentityPublic {
    fn verifying(&self) -> Result<VerifyingKey, KeyError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::InvalidPublicKey)
    }

    /// The X25519 public key this identity decrypts with.
    pub fn x25519(&self) -> Result<[u8; 32], KeyError> {
        let v = self.verifying()?;
        if v.is_weak() {
            return Err(KeyError::InvalidPublicKey);
        }
        Ok(v.to_montgomery().to_bytes())
    }

    /// Verifies a signature by this identity.
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> Result<(), KeyError> {
        self.verifying()?
            .verify(msg, &Signature::from_bytes(sig))
            .map_err(|_| KeyError::BadSignature)
    }

    /// A short, stable fingerprint (16 hex characters) for names and logs.
    pub fn fingerprint(&self) -> String {
        crate::view::hex(&blake3::hash(&self.0).as_bytes()[..8])
    }
}

fn seal_key(shared: &[u8; 32], eph: &[u8; 32], recipient: &[u8; 32]) -> ([u8; 32], [u8; 24]) {
    let mut h = blake3::Hasher::new_derive_key(SEAL_DOMAIN);
    h.update(shared);
    h.update(eph);
    h.update(recipient);
    let mut out = [0u8; 56];
    h.finalize_xof().fill(&mut out);
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 24];
    key.copy_from_slice(&out[..32]);
    nonce.copy_from_slice(&out[32..]);
    (key, nonce)
}

/// Encrypts `msg` so that only `recipient` can open it (anonymous sender).
pub fn seal(
    recipient: &IdentityPublic,
    msg: &[u8],
    entropy: &dyn Entropy,
) -> Result<Vec<u8>, KeyError> {
    let to = recipient.x25519()?;
    let eph_secret: [u8; 32] = random(entropy)?;
    let eph = MontgomeryPoint::mul_base_clamped(eph_secret).to_bytes();
    let shared = MontgomeryPoint(to).mul_clamped(eph_secret).to_bytes();
    let (key, nonce) = seal_key(&shared, &eph, &to);
    let ct = XSalsa20Poly1305::new(&key.into())
        .encrypt(&nonce.into(), msg)
        .map_err(|_| KeyError::Decrypt)?;
    let mut out = Vec::with_capacity(32 + ct.len());
    out.extend_from_slice(&eph);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a box [`seal`]ed to `identity`.
pub fn open(identity: &Identity, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(KeyError::CannotOpen);
    }
    let (eph, ct) = sealed.split_at(32);
    let mut e = [0u8; 32];
    e.copy_from_slice(eph);
    let shared = identity.dh(&MontgomeryPoint(e));
    if shared == [0u8; 32] {
        // A low-order ephemeral point: nothing secret went into the key.
        return Err(KeyError::CannotOpen);
    }
    let me = identity.public().x25519()?;
    let (key, nonce) = seal_key(&shared, &e, &me);
    XSalsa20Poly1305::new(&key.into())
        .decrypt(&nonce.into(), ct)
        .map_err(|_| KeyError::CannotOpen)
}

/// Standard base64 (with padding), for ciphertexts inside JSON.
pub(crate) fn b64_encode(data: &[u8]) -> String {
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    b64_encode_into(data, &mut out);
    // Only characters of the base64 alphabet were written.
    String::from_utf8(out).unwrap_or_default()
}

/// [`b64_encode`], appending the characters to `out`.
pub(crate) fn b64_encode_into(data: &[u8], out: &mut Vec<u8>) {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.reserve(data.len().div_ceil(3) * 4);
    let idx = |n: u32, s: u32| T[((n >> s) & 63) as usize];
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        out.extend_from_slice(&[idx(n, 18), idx(n, 12), idx(n, 6), idx(n, 0)]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[idx(n, 18), idx(n, 12), b'=', b'=']);
        }
        [a, b] => {
            let n = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.extend_from_slice(&[idx(n, 18), idx(n, 12), idx(n, 6), b'=']);
        }
        _ => {}
    }
}

/// The value of each base64 character, 0xFF for anything else.
const B64_VALUES: [u8; 256] = {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut v = [0xFFu8; 256];
    let mut i = 0;
    while i < 64 {
        v[T[i] as usize] = i as u8;
        i += 1;
    }
    v
};

/// Decodes [`b64_encode`]'s output; `None` for anything else (strict:
/// padding required, no whitespace, no non-canonical trailing bits).
pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    b64_decode_into(text.as_bytes(), &mut out)?;
    Some(out)
}

/// [`b64_decode`], appending to `out` (a table per character, one
/// allocation at most). On `None`, `out` may hold partial output.
pub(crate) fn b64_decode_into(s: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let Some(last) = s.len().checked_sub(4) else {
        return Some(());
    };
    let at = out.len();
    out.resize(at + s.len() / 4 * 3, 0);
    let dst = out.get_mut(at..)?;
    let quad = |q: &[u8]| -> Option<u32> {
        let mut n = 0u32;
        let mut bad = 0u8;
        for &c in q {
            let v = B64_VALUES[usize::from(c)];
            bad |= v;
            n = (n << 6) | u32::from(v & 63);
        }
        // Every valid value is below 64: a 0xFF anywhere sets bit 7.
        (bad & 0x80 == 0).then_some(n)
    };
    for (q, d) in s[..last].chunks_exact(4).zip(dst.chunks_exact_mut(3)) {
        let n = quad(q)?;
        d.copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    // The last quad may end in one or two `=`.
    let q = &s[last..];
    let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut full = [b'A'; 4];
    full[..4 - pad].copy_from_slice(&q[..4 - pad]);
    let n = quad(&full)?;
    let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
    let keep = 3 - pad;
    // Canonical: the bits dropped by padding must be zero.
    if bytes[keep..].iter().any(|&b| b != 0) {
        return None;
    }
    let d = dst.get_mut(last / 4 * 3..)?;
    d.copy_from_slice(&bytes);
    out.truncate(at + last / 4 * 3 + keep);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Counter(std::sync::atomic::AtomicU64);
    impl Entropy for Counter {
        fn fill(&self, buf: &mut [u8]) -> hypercore_rs::Result<()> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let x = blake3::hash(&n.to_le_bytes());
            let mut r = x.as_bytes().iter().cycle();
            for b in buf.iter_mut() {
                *b = *r.next().unwrap_or(&0);
            }
            Ok(())
        }
    }

    #[test]
    fn seal_open_round_trip_and_wrong_key() {
        let e = Counter(0.into());
        let a = Identity::generate(&e).unwrap();
        let b = Identity::generate(&e).unwrap();
        let sealed = seal(&a.public(), b"scope key", &e).unwrap();
        assert_eq!(sealed.len(), 9 + SEAL_OVERHEAD);
        assert_eq!(open(&a, &sealed).unwrap(), b"scope key");
        assert_eq!(open(&b, &sealed), Err(KeyError::CannotOpen));
        assert_eq!(open(&a, &sealed[..10]), Err(KeyError::CannotOpen));
        // Two seals of one message differ (fresh ephemeral keys).
        assert_ne!(seal(&a.public(), b"scope key", &e).unwrap(), sealed);
        // A low-order ephemeral point is refused.
        let mut low = sealed.clone();
        low[..32].copy_from_slice(&[0u8; 32]);
        assert_eq!(open(&a, &low), Err(KeyError::CannotOpen));
    }

    #[test]
    fn signatures_and_bad_keys() {
        let a = Identity::from_seed([3; 32]);
        let sig = a.sign(b"m");
        assert_eq!(a.public().verify(b"m", &sig), Ok(()));
        assert_eq!(a.public().verify(b"n", &sig), Err(KeyError::BadSignature));
        // The identity point (a weak key) cannot be encrypted to.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert_eq!(
            IdentityPublic(weak).x25519(),
            Err(KeyError::InvalidPublicKey)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_flipped_byte_fails_to_open(msg in proptest::collection::vec(any::<u8>(), 0..64), pos in any::<usize>(), bit in 0u8..8) {
            let e = Counter(0.into());
            let a = Identity::from_seed([9; 32]);
            let mut sealed = seal(&a.public(), &msg, &e).unwrap();
            let p = pos % sealed.len();
            sealed[p] ^= 1 << bit;
            prop_assert!(open(&a, &sealed).is_err());
        }

        #[test]
        fn base64_round_trips(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let t = b64_encode(&data);
            prop_assert_eq!(b64_decode(&t), Some(data));
        }

        #[test]
        fn base64_decode_never_panics(s in "[A-Za-z0-9+/=]{0,40}") {
            if let Some(d) = b64_decode(&s) {
                prop_assert_eq!(b64_encode(&d), s);
            }
        }
    }
}
