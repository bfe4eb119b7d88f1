//! Optional block encryption with XSalsa20-Poly1305 (`crypto_secretbox`).
//!
//! A stored block is `[version 1][fork u64 LE][nonce 24][ciphertext + tag]`.
//! The nonce is derived deterministically from the block index, the fork and
//! a hash of the plaintext (a synthetic IV), so it never repeats across forks,
//! and a writer that crashes and re-appends different data at the same index
//! still gets a fresh nonce. The Merkle tree hashes this stored form, so peers
//! without the key can verify and serve blocks they cannot read. Plaintext
//! never reaches storage.

use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + 24;
/// Bytes an encrypted block adds to its plaintext.
pub const OVERHEAD: usize = HEADER + 16;

/// Encrypts and decrypts the blocks of one core.
#[derive(Clone)]
pub struct BlockEncryption {
    cipher: XSalsa20Poly1305,
    nonce_key: [u8; 32],
}

impl std::fmt::Debug for BlockEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockEncryption(..)")
    }
}

impl BlockEncryption {
    /// Block encryption for the core `core_key` under the 32-byte `key`.
    /// Subkeys are bound to the core, so one key may serve several cores.
    pub fn new(key: &[u8; 32], core_key: &[u8; 32]) -> Self {
        let mut material = [0u8; 64];
        material[..32].copy_from_slice(key);
        material[32..].copy_from_slice(core_key);
        let cipher_key = blake3::derive_key("hypercore-rs 2026 block cipher key v1", &material);
        let nonce_key = blake3::derive_key("hypercore-rs 2026 block nonce key v1", &material);
        BlockEncryption {
            cipher: XSalsa20Poly1305::new(&cipher_key.into()),
            nonce_key,
        }
    }

    fn nonce(&self, index: u64, fork: u64, plaintext: &[u8]) -> [u8; 24] {
        let mut h = blake3::Hasher::new_keyed(&self.nonce_key);
        h.update(&index.to_le_bytes());
        h.update(&fork.to_le_bytes());
        h.update(blake3::hash(plaintext).as_bytes());
        let mut n = [0u8; 24];
        n.copy_from_slice(&h.finalize().as_bytes()[..24]);
        n
    }

    /// Encrypts block `index` written during `fork`.
    pub fn encrypt(&self, index: u64, fork: u64, plaintext: &[u8]) -> Vec<u8> {
        let nonce = self.nonce(index, fork, plaintext);
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&fork.to_le_bytes());
        out.extend_from_slice(&nonce);
        // Encryption with a valid key cannot fail for in-memory buffers.
        let ct = self
            .cipher
            .encrypt(&nonce.into(), plaintext)
            .unwrap_or_default();
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts block `index`; `None` if the block was not encrypted by this
    /// key for this index (wrong key, tampering, or a block moved elsewhere).
    pub fn decrypt(&self, index: u64, block: &[u8]) -> Option<Vec<u8>> {
        if block.len() < OVERHEAD || block[0] != VERSION {
            return None;
        }
        let mut fork = [0u8; 8];
        fork.copy_from_slice(&block[1..9]);
        let fork = u64::from_le_bytes(fork);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&block[9..HEADER]);
        let pt = self.cipher.decrypt(&nonce.into(), &block[HEADER..]).ok()?;
        // The nonce binds the block to its index and fork.
        (self.nonce(index, fork, &pt) == nonce).then_some(pt)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let e = BlockEncryption::new(&[1; 32], &[2; 32]);
        let c = e.encrypt(5, 0, b"secret");
        assert_eq!(c.len(), 6 + OVERHEAD);
        assert_eq!(e.decrypt(5, &c).as_deref(), Some(&b"secret"[..]));
        assert_eq!(e.decrypt(6, &c), None);
        let other = BlockEncryption::new(&[9; 32], &[2; 32]);
        assert_eq!(other.decrypt(5, &c), None);
        for i in 0..c.len() {
            let mut t = c.clone();
            t[i] ^= 1;
            assert_eq!(e.decrypt(5, &t), None, "byte {i}");
        }
        // Same index, different fork or different content: different nonce.
        assert_ne!(e.encrypt(5, 1, b"secret")[9..33], c[9..33]);
        assert_ne!(e.encrypt(5, 0, b"secreT")[9..33], c[9..33]);
        assert!(!c.windows(6).any(|w| w == b"secret"));
    }
}
