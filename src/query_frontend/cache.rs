//! The results cache: the encoded partial results of split parts that lie wholly in the
//! past, keyed by the part's encoded query (tenants, selector, profile type, range, step,
//! grouping: everything that decides its answer), bounded in bytes and evicted least
//! recently used first. Pyroscope's v1 frontend has none.
//!
//! Why a past part's answer does not change: a profile older than the tenant's
//! `-validation.reject-older-than` is refused at ingest, and a part ends before that and
//! before `-query-frontend.max-cache-freshness` (see `cacheable`); cut blocks are never
//! rewritten but by compaction, which keeps their profiles. A tenant that accepts profiles
//! of any age (`reject-older-than=0`) is never cached.
use bytes::Bytes;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

struct Entry {
    key: Vec<u8>,
    value: Bytes,
    tick: u64,
}

/// Counted for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub bytes: usize,
    pub evicted: u64,
}

pub struct ResultsCache {
    max_bytes: usize,
    /// By the key's hash; the key itself is compared on lookup.
    entries: FxHashMap<u64, Entry>,
    /// Least recently used first: tick → key hash.
    order: BTreeMap<u64, u64>,
    tick: u64,
    stats: CacheStats,
}

fn hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

fn cost(key: &[u8], value: &Bytes) -> usize {
    key.len() + value.len() + 64
}

impl ResultsCache {
    pub fn new(max_bytes: usize) -> Self {
        ResultsCache {
            max_bytes,
            entries: FxHashMap::default(),
            order: BTreeMap::new(),
            tick: 0,
            stats: CacheStats::default(),
        }
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    pub fn get(&mut self, key: &[u8]) -> Option<Bytes> {
        let h = hash(key);
        match self.entries.get_mut(&h) {
            Some(e) if e.key == key => {
                self.order.remove(&e.tick);
                self.tick += 1;
                e.tick = self.tick;
                self.order.insert(self.tick, h);
                self.stats.hits += 1;
                Some(e.value.clone())
            }
            _ => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Keeps `value` for `key`, evicting the least recently used entries to stay within the
    /// byte bound; a value larger than the whole bound is not kept.
    pub fn put(&mut self, key: Vec<u8>, value: Bytes) {
        let size = cost(&key, &value);
        if size > self.max_bytes {
            return;
        }
        let h = hash(&key);
        self.remove(h);
        while self.stats.bytes + size > self.max_bytes {
            let Some((_, old)) = self.order.pop_first() else { break };
            if let Some(e) = self.entries.remove(&old) {
                self.stats.bytes -= cost(&e.key, &e.value);
                self.stats.entries -= 1;
                self.stats.evicted += 1;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, h);
        self.entries.insert(h, Entry { key, value, tick: self.tick });
        self.stats.bytes += size;
        self.stats.entries += 1;
    }

    fn remove(&mut self, h: u64) {
        if let Some(e) = self.entries.remove(&h) {
            self.order.remove(&e.tick);
            self.stats.bytes -= cost(&e.key, &e.value);
            self.stats.entries -= 1;
        }
    }
}

/// Whether a part ending at `end_ms` may be cached at `now_ms`: it ends before both the
/// freshness window and the oldest profile the tenants still accept (`reject_older_ms` of
/// each; 0 means any age is accepted, so never).
pub fn cacheable(end_ms: i64, now_ms: i64, freshness_ms: i64, reject_older_ms: impl Iterator<Item = i64>) -> bool {
    let mut window = freshness_ms;
    for r in reject_older_ms {
        if r <= 0 {
            return false;
        }
        window = window.max(r);
    }
    end_ms < now_ms.saturating_sub(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_entries_go_first_within_the_bound() {
        let v = |n: usize| Bytes::from(vec![0u8; n]);
        // Room for two entries of 100 bytes (each costs key + value + 64).
        let mut c = ResultsCache::new(2 * (1 + 100 + 64));
        c.put(b"a".to_vec(), v(100));
        c.put(b"b".to_vec(), v(100));
        assert!(c.get(b"a").is_some());
        c.put(b"c".to_vec(), v(100));
        assert!(c.get(b"b").is_none(), "b was the least recently used");
        assert!(c.get(b"a").is_some() && c.get(b"c").is_some());
        let s = c.stats();
        assert_eq!((s.entries, s.evicted, s.hits, s.misses), (2, 1, 3, 1));
        assert!(s.bytes <= 2 * 165);
        // Too large for the whole cache: not kept, nothing evicted.
        c.put(b"d".to_vec(), v(1000));
        assert_eq!(c.stats().entries, 2);
        // Replacing a key keeps one entry.
        c.put(b"a".to_vec(), v(10));
        assert_eq!(c.get(b"a").unwrap().len(), 10);
        assert_eq!(c.stats().entries, 2);
    }

    #[test]
    fn only_parts_older_than_every_window_are_cacheable() {
        let hour = 3_600_000;
        let now = 100 * hour;
        assert!(cacheable(now - 2 * hour, now, 600_000, [hour].into_iter()));
        assert!(!cacheable(now - hour / 2, now, 600_000, [hour].into_iter()));
        assert!(!cacheable(now - 2 * hour, now, 3 * hour, [hour].into_iter()));
        assert!(!cacheable(now - 50 * hour, now, 600_000, [hour, 0].into_iter()));
    }

    proptest::proptest! {
        /// Whatever is put and read, the cache stays within its bound and its books balance.
        #[test]
        fn stays_within_its_bound(ops in proptest::collection::vec((0u8..16, 0usize..300, proptest::bool::ANY), 1..200)) {
            let mut c = ResultsCache::new(1000);
            for (k, n, put) in ops {
                if put {
                    c.put(vec![k], Bytes::from(vec![k; n]));
                } else if let Some(v) = c.get(&[k]) {
                    proptest::prop_assert!(v.iter().all(|b| *b == k));
                }
                let s = c.stats();
                proptest::prop_assert!(s.bytes <= 1000);
                proptest::prop_assert_eq!(s.entries, c.entries.len());
                proptest::prop_assert_eq!(c.order.len(), c.entries.len());
                let sum: usize = c.entries.values().map(|e| cost(&e.key, &e.value)).sum();
                proptest::prop_assert_eq!(sum, s.bytes);
            }
        }
    }
}
