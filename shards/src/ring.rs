//! The core-aware hash ring.
//!
//! Members are (instance, core) pairs. Each member owns `tokens_per_core` tokens drawn
//! deterministically from its identity, so every process that knows the members computes the
//! same ring without talking. A key is owned by the member of the first token at or after the
//! key's hash, clockwise. kiln gives each core its own tokens (Pyroscope's `num_tokens` is per
//! instance; here an instance has `num_tokens` per core), so a core's share of series stays
//! even as `-shards` changes.
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Changes whenever the core a series is routed to could change for the same ring: how a
/// series is fingerprinted or looked up. A WAL generation records it (see `digest`).
pub const ROUTING_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub instance: u32,
    pub core: u32,
}

#[derive(Debug, Clone)]
pub struct Ring {
    /// Sorted by token.
    tokens: Vec<(u32, Member)>,
}

impl Ring {
    pub fn new(members: &[Member], tokens_per_core: u32) -> Self {
        assert!(!members.is_empty(), "a ring needs at least one member");
        let mut tokens = Vec::with_capacity(members.len() * tokens_per_core as usize);
        for m in members {
            let seed = ((m.instance as u64) << 32) | m.core as u64;
            for t in 0..tokens_per_core {
                let tok = xxh3_64_with_seed(&t.to_le_bytes(), seed) as u32;
                tokens.push((tok, *m));
            }
        }
        tokens.sort_unstable();
        tokens.dedup_by_key(|(t, _)| *t);
        Ring { tokens }
    }

    /// A ring of one instance with `cores` members.
    pub fn single(cores: u32, tokens_per_core: u32) -> Self {
        let members: Vec<Member> = (0..cores).map(|core| Member { instance: 0, core }).collect();
        Ring::new(&members, tokens_per_core)
    }

    /// A digest of every token and its member: rings with equal digests own every key alike.
    pub fn digest(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.tokens.len() * 12);
        for (t, m) in &self.tokens {
            bytes.extend_from_slice(&t.to_le_bytes());
            bytes.extend_from_slice(&m.instance.to_le_bytes());
            bytes.extend_from_slice(&m.core.to_le_bytes());
        }
        xxh3_64_with_seed(&bytes, ROUTING_VERSION as u64)
    }

    /// The core that owns block `id` (its store-gateway serves it; an ingester cutting a
    /// head draws ids until one is its own).
    pub fn block_owner(&self, id: &str) -> u32 {
        self.owner(block_key(id)).core
    }

    pub fn owner(&self, key: u64) -> Member {
        // Fold the 64-bit key into the 32-bit token space, as Pyroscope's rings use u32 tokens.
        let k = (key ^ (key >> 32)) as u32;
        let i = self.tokens.partition_point(|(t, _)| *t < k);
        self.tokens[if i == self.tokens.len() { 0 } else { i }].1
    }
}

/// The ring key of a block id.
pub fn block_key(id: &str) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), 0x6b69_6c6e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_balanced() {
        let r1 = Ring::single(4, 128);
        let r2 = Ring::single(4, 128);
        let mut counts = [0usize; 4];
        for i in 0..100_000u64 {
            let key = xxh3_64_with_seed(&i.to_le_bytes(), 7);
            let o = r1.owner(key);
            assert_eq!(o, r2.owner(key));
            counts[o.core as usize] += 1;
        }
        for c in counts {
            assert!((15_000..35_000).contains(&c), "unbalanced: {counts:?}");
        }
    }

    #[test]
    fn adding_a_core_moves_a_minority_of_keys() {
        let r4 = Ring::single(4, 128);
        let r5 = Ring::single(5, 128);
        let moved = (0..10_000u64)
            .map(|i| xxh3_64_with_seed(&i.to_le_bytes(), 1))
            .filter(|k| r4.owner(*k) != r5.owner(*k))
            .count();
        assert!(moved < 3_500, "moved {moved}");
    }

    #[test]
    fn single_core_owns_everything() {
        let r = Ring::single(1, 16);
        assert_eq!(r.owner(0).core, 0);
        assert_eq!(r.owner(u64::MAX).core, 0);
    }
}
