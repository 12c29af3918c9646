//! Hasher for maps keyed by u64 values that are already well mixed (block hashes) or sequential
//! (ticket ids): one multiply spreads both over hashbrown's top and bottom bits, where SipHash
//! would cost ~20 ns per lookup on the hot path for no benefit (keys are not attacker-chosen
//! in a way that matters: block hashes are seeded xxh3 of content, tickets are ours).
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u64 keys; fold bytes so the hasher is still correct.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(26);
    }
}

pub type U64Map<V> = HashMap<u64, V, BuildHasherDefault<U64Hasher>>;
