//! Injected randomness: logic never reads the OS random source directly, so
//! tests and simulations can be deterministic.

use crate::error::{Error, Result};
use std::sync::Mutex;

/// A source of random bytes.
pub trait Entropy: Send + Sync {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]) -> Result<()>;
}

/// The operating system's random source.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<()> {
        getrandom::getrandom(buf).map_err(|_| Error::InvalidArgument("the OS random source failed"))
    }
}

/// A deterministic source for tests and simulations (BLAKE3 in counter mode).
/// Never use it for real keys.
#[derive(Debug)]
pub struct SeededEntropy {
    state: Mutex<([u8; 32], u64)>,
}

impl SeededEntropy {
    /// A source that yields the same bytes for the same seed.
    pub fn new(seed: u64) -> Self {
        SeededEntropy {
            state: Mutex::new((*blake3::hash(&seed.to_le_bytes()).as_bytes(), 0)),
        }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) -> Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut h = blake3::Hasher::new_keyed(&s.0);
        h.update(&s.1.to_le_bytes());
        s.1 += 1;
        h.finalize_xof().fill(buf);
        Ok(())
    }
}
