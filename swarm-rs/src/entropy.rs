//! Injected randomness.
//!
//! Logic in this crate never reads the operating system's random source by
//! itself: whoever builds a key pair or a connection hands in an
//! [`EntropySource`]. Production code passes [`OsEntropy`]; tests and
//! simulations pass [`SeededEntropy`] and get reproducible runs.

use thiserror::Error;

/// The entropy source could not deliver random bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
#[error("entropy source failed")]
pub struct EntropyError;

/// A source of random bytes, passed into everything that needs randomness.
pub trait EntropySource {
    /// Fills `dest` entirely with random bytes, or fails without a partial result
    /// being relied upon.
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), EntropyError>;
}

impl<E: EntropySource + ?Sized> EntropySource for &mut E {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        (**self).try_fill_bytes(dest)
    }
}

/// The operating system's random source.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsEntropy;

impl EntropySource for OsEntropy {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        getrandom::getrandom(dest).map_err(|_| EntropyError)
    }
}

/// A deterministic stream of bytes expanded from a 32-byte seed with the
/// BLAKE3 extendable output function. For tests and simulations only: the
/// same seed always yields the same keys.
#[derive(Clone)]
pub struct SeededEntropy {
    reader: blake3::OutputReader,
}

impl SeededEntropy {
    /// Domain separation for the expansion, so a seed used here never yields
    /// the same bytes as the same seed used elsewhere.
    const CONTEXT: &'static str = "swarm-rs 2026 seeded entropy v1";

    /// Creates the stream for `seed`.
    pub fn new(seed: [u8; 32]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(Self::CONTEXT);
        hasher.update(&seed);
        Self {
            reader: hasher.finalize_xof(),
        }
    }

    /// Convenience: a stream seeded from a small number (tests).
    pub fn from_u64(seed: u64) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        Self::new(bytes)
    }
}

impl core::fmt::Debug for SeededEntropy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SeededEntropy").finish_non_exhaustive()
    }
}

impl EntropySource for SeededEntropy {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        self.reader.fill(dest);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn seeded_entropy_is_deterministic_and_seed_dependent() {
        let mut a = SeededEntropy::from_u64(7);
        let mut b = SeededEntropy::from_u64(7);
        let mut c = SeededEntropy::from_u64(8);
        let (mut x, mut y, mut z) = ([0u8; 48], [0u8; 48], [0u8; 48]);
        a.try_fill_bytes(&mut x).unwrap();
        b.try_fill_bytes(&mut y).unwrap();
        c.try_fill_bytes(&mut z).unwrap();
        assert_eq!(x, y);
        assert_ne!(x, z);
        // The stream continues rather than repeating.
        a.try_fill_bytes(&mut y).unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn os_entropy_fills() {
        let mut buf = [0u8; 32];
        OsEntropy.try_fill_bytes(&mut buf).unwrap();
        let mut buf2 = [0u8; 32];
        OsEntropy.try_fill_bytes(&mut buf2).unwrap();
        assert_ne!(buf, buf2);
    }
}
