//! A cheap hasher for keys that are small integers or already uniform bytes
//! (block and node indices, core ids that are BLAKE3 outputs, positions in a
//! log), for maps on the append, verify and replication hot paths of this
//! crate and the crates above it. Not collision resistant: it must never key
//! a map whose keys a remote peer chooses freely and whose size that peer
//! controls; every map using it is bounded by a window, a batch, a cache
//! budget or the local store.
//!
//! ```
//! use hypercore_rs::fast_hash::FastMap;
//!
//! let mut m: FastMap<u64, &str> = FastMap::default();
//! m.insert(7, "seven");
//! assert_eq!(m.get(&7), Some(&"seven"));
//! ```

use std::collections::{HashMap, HashSet};

/// Multiply-rotate mixing of 64-bit words (the FxHash idea).
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut a = [0u8; 8];
            a[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(a));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;
/// A `HashSet` with [`FastHasher`].
pub type FastSet<K> = HashSet<K, std::hash::BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keep_distinct_keys_apart() {
        let mut m: FastMap<u64, u64> = FastMap::default();
        for i in 0..10_000u64 {
            m.insert(i * 2, i);
        }
        assert_eq!(m.len(), 10_000);
        for i in 0..10_000u64 {
            assert_eq!(m.get(&(i * 2)), Some(&i));
            assert_eq!(m.get(&(i * 2 + 1)), None);
        }
        let s: FastSet<[u8; 32]> = (0..100u8).map(|i| [i; 32]).collect();
        assert_eq!(s.len(), 100);
    }
}
