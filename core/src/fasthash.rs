//! A fast hash for the maps the snapshot builds once and every request looks names up in.
//!
//! The standard library's SipHash resists collision flooding by keys an attacker inserts;
//! these maps only ever hold the operator's names (tools, prompts, servers), and a request
//! only looks one up, so a client cannot lengthen a probe sequence beyond what the
//! operator's own names collide. FNV-1a hashes a short name in a few instructions per
//! byte, where SipHash costs a few hundred per lookup, several lookups per request.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a, 64 bits.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// A map from the snapshot's names, hashed with [`Fnv`].
pub type NameMap<V> = HashMap<String, V, BuildHasherDefault<Fnv>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors_and_maps_work() {
        let hash = |s: &[u8]| {
            let mut h = Fnv::default();
            h.write(s);
            h.finish()
        };
        // Test vectors of FNV-1a 64 (draft-eastlake-fnv).
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
        let mut m: NameMap<u32> = NameMap::default();
        m.insert("bench__echo".into(), 1);
        assert_eq!(m.get("bench__echo"), Some(&1));
        assert_eq!(m.get("bench__echO"), None);
    }
}
