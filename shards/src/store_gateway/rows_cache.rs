//! The per-core cache of decoded row groups (`-store-gateway.rows-cache-bytes-per-core`).
//!
//! A query of a block used to fetch the column chunks of its row groups, decompress and
//! decode them, and drop them when it answered; the next query of the same block did it all
//! again, and that decoding was most of what a block query cost over a head query. This
//! cache keeps each row group decoded whole (`ProfilesFile::decode_group`), keyed by
//! (block, row group), so that a query whose row groups are all here fetches and decodes
//! nothing: it reads rows out of the decoded columns as a head query reads its series.
//!
//! It lives on its core in the `BlockSet` (only that core touches it), is bounded by bytes
//! of decoded columns with least-recently-used eviction, and a block that leaves the set
//! (`BlockSet::forget`, or swept `RETIRED_KEPT` after its retirement) takes its entries
//! with it. Block files never change once written, so an entry stays exact as long as its
//! block is held; a block added again after its retirement is a new entry of the set, with
//! a new serial, and does not share the old one's entries.
use crate::block::profiles::{Columns, DecodedGroup, ProfilesFile};
use rustc_hash::FxHashMap;
use std::rc::Rc;

/// (block serial, row group).
type Key = (u64, usize);

struct Entry {
    group: Rc<DecodedGroup>,
    last_used: u64,
}

/// Decoded row groups of one core's blocks, within `limit` bytes (0: off, every query
/// decodes what it reads, as before the cache).
#[derive(Default)]
pub struct RowsCache {
    limit: usize,
    entries: FxHashMap<Key, Entry>,
    bytes: usize,
    clock: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

impl RowsCache {
    pub fn new(limit: usize) -> Self {
        RowsCache { limit, ..Default::default() }
    }

    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// Bytes of decoded columns held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Row group `g` of block `block` decoded with at least `columns`, if held (a hit also
    /// makes it the most recently used).
    pub fn get(&mut self, block: u64, g: usize, file: &ProfilesFile, columns: Columns) -> Option<Rc<DecodedGroup>> {
        self.clock += 1;
        match self.entries.get_mut(&(block, g)) {
            Some(e) if e.group.covers(file, columns) => {
                e.last_used = self.clock;
                self.hits += 1;
                Some(e.group.clone())
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Keeps `group` as row group `g` of block `block` (replacing one decoded with fewer
    /// columns), then evicts the least recently used entries until the cache fits its limit.
    /// A group larger than the whole limit is not kept.
    pub fn insert(&mut self, block: u64, g: usize, group: Rc<DecodedGroup>) {
        if !self.enabled() || group.heap_bytes() > self.limit {
            return;
        }
        self.clock += 1;
        self.bytes += group.heap_bytes();
        if let Some(old) = self.entries.insert((block, g), Entry { group, last_used: self.clock }) {
            self.bytes -= old.group.heap_bytes();
        }
        if self.bytes <= self.limit {
            return;
        }
        let mut order: Vec<(u64, Key)> = self.entries.iter().map(|(k, e)| (e.last_used, *k)).collect();
        order.sort_unstable();
        for (_, k) in order {
            if self.bytes <= self.limit {
                break;
            }
            if let Some(e) = self.entries.remove(&k) {
                self.bytes -= e.group.heap_bytes();
                self.evictions += 1;
            }
        }
    }

    /// Drops every entry of the blocks `gone` says have left the set.
    pub fn drop_blocks(&mut self, gone: impl Fn(u64) -> bool) {
        let mut freed = 0;
        self.entries.retain(|&(b, _), e| {
            let keep = !gone(b);
            if !keep {
                freed += e.group.heap_bytes();
            }
            keep
        });
        self.bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block;
    use crate::ingester::head::tests::{folded, group};
    use crate::ingester::head::TenantHead;
    use bytes::Bytes;
    use std::ops::Range;

    /// A block's profiles file of `profiles` profiles in row groups of 4 rows, and its
    /// index.
    fn file(profiles: usize) -> (ProfilesFile, Bytes, block::index::BlockIndex) {
        let mut h = TenantHead::default();
        for i in 0..profiles {
            let p = folded(&[("main;a", 1 + i as i64), ("main;b", 2)], i as i64 * 1_000_000_000);
            let svc = if i % 2 == 0 { "s" } else { "t" };
            h.append("t", &p, &group(&p, &[("__name__", "x"), ("service_name", svc)]));
        }
        let opts = block::EncodeOptions { row_group_rows: 4, ..Default::default() };
        let b = block::encode(&h, "01JCACHED00000000000000000", &opts).unwrap();
        let f = ProfilesFile::from_tail(b.profiles.len() as u64, &b.profiles).unwrap();
        (f, Bytes::from(b.profiles), block::index::decode(&b.index).unwrap())
    }

    fn whole(bytes: &Bytes) -> Vec<(Range<u64>, Bytes)> {
        vec![(0..bytes.len() as u64, bytes.clone())]
    }

    fn decoded(f: &ProfilesFile, bytes: &Bytes, g: usize, columns: Columns) -> Rc<DecodedGroup> {
        Rc::new(f.decode_group(&whole(bytes), g, columns).unwrap())
    }

    #[test]
    fn rows_read_from_cached_groups_are_the_rows_read_from_the_bytes() {
        let (f, bytes, index) = file(13);
        assert!(f.num_row_groups() > 2);
        let all: Vec<u32> = (0..index.series.len() as u32).collect();
        for columns in [Columns::Head, Columns::Samples, Columns::Spans] {
            for (min, max) in [(i64::MIN, i64::MAX), (3_000_000_000, 8_500_000_000)] {
                for sel in [all.clone(), vec![1], vec![0, 0]] {
                    let read = block::load_series(&index, &sel, &f, &whole(&bytes), columns, min, max).unwrap();
                    let mut cache = RowsCache::new(1 << 20);
                    let groups: Vec<Rc<DecodedGroup>> =
                        (0..f.num_row_groups()).map(|g| decoded(&f, &bytes, g, columns)).collect();
                    for (g, d) in groups.iter().enumerate() {
                        cache.insert(7, g, d.clone());
                    }
                    let hits: Vec<Rc<DecodedGroup>> =
                        (0..f.num_row_groups()).map(|g| cache.get(7, g, &f, columns).unwrap()).collect();
                    let got =
                        block::load_series_decoded(&index, &sel, &f, |g| hits.get(g).map(|d| &**d), columns, min, max)
                            .unwrap();
                    assert_eq!(format!("{got:?}"), format!("{read:?}"), "{columns:?} {min}..{max} {sel:?}");
                }
            }
        }
    }

    #[test]
    fn a_group_decoded_with_fewer_columns_is_a_miss_and_one_with_more_serves_fewer() {
        let (f, bytes, index) = file(9);
        let mut cache = RowsCache::new(1 << 20);
        cache.insert(1, 0, decoded(&f, &bytes, 0, Columns::Head));
        assert!(cache.get(1, 0, &f, Columns::Head).is_some());
        assert!(cache.get(1, 0, &f, Columns::Samples).is_none());
        assert_eq!((cache.hits, cache.misses), (1, 1));
        let spans = decoded(&f, &bytes, 0, Columns::Spans);
        cache.insert(1, 0, spans.clone());
        assert_eq!(cache.len(), 1, "the wider decode replaces the narrower");
        assert_eq!(cache.bytes(), spans.heap_bytes());
        // Served as a read of the head columns only: no samples.
        for g in 1..f.num_row_groups() {
            cache.insert(1, g, decoded(&f, &bytes, g, Columns::Spans));
        }
        let held: Vec<Rc<DecodedGroup>> =
            (0..f.num_row_groups()).map(|g| cache.get(1, g, &f, Columns::Head).unwrap()).collect();
        let sel = [0u32];
        let (min, max) = (0, 5_999_999_999);
        let got = block::load_series_decoded(&index, &sel, &f, |g| held.get(g).map(|d| &**d), Columns::Head, min, max)
            .unwrap();
        let want = block::load_series(&index, &sel, &f, &whole(&bytes), Columns::Head, min, max).unwrap();
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        assert!(got[0].stacks.is_empty() && !got[0].timestamps.is_empty());
        // A row group not held is an error, never a short answer.
        let e = block::load_series_decoded(&index, &[0, 1], &f, |_| None, Columns::Head, i64::MIN, i64::MAX);
        assert!(e.is_err());
    }

    #[test]
    fn eviction_keeps_the_most_recently_used_groups_within_the_budget() {
        let (f, bytes, _) = file(16);
        let groups: Vec<Rc<DecodedGroup>> = (0..4).map(|g| decoded(&f, &bytes, g, Columns::Samples)).collect();
        let one = groups.iter().map(|d| d.heap_bytes()).max().unwrap();
        // Room for two groups, not three.
        let mut cache = RowsCache::new(one * 2 + one / 2);
        cache.insert(1, 0, groups[0].clone());
        cache.insert(1, 1, groups[1].clone());
        assert!(cache.get(1, 0, &f, Columns::Samples).is_some(), "0 is now the most recently used");
        cache.insert(1, 2, groups[2].clone());
        assert!(cache.bytes() <= one * 2 + one / 2);
        assert!(cache.get(1, 1, &f, Columns::Samples).is_none(), "1 was the least recently used");
        assert!(cache.get(1, 0, &f, Columns::Samples).is_some());
        assert!(cache.get(1, 2, &f, Columns::Samples).is_some());
        assert_eq!(cache.evictions, 1);
        let held: usize = [0, 2].iter().map(|&g| groups[g].heap_bytes()).sum();
        assert_eq!(cache.bytes(), held);
        // Larger than the whole budget: not kept. Off: nothing kept.
        let mut small = RowsCache::new(one / 2);
        small.insert(1, 0, groups[0].clone());
        assert!(small.is_empty());
        let mut off = RowsCache::new(0);
        off.insert(1, 0, groups[0].clone());
        assert!(off.is_empty() && !off.enabled());
    }

    #[test]
    fn dropping_a_blocks_entries_frees_their_bytes_and_keeps_the_others() {
        let (f, bytes, _) = file(8);
        let mut cache = RowsCache::new(1 << 20);
        let d = decoded(&f, &bytes, 0, Columns::Samples);
        cache.insert(1, 0, d.clone());
        cache.insert(1, 1, decoded(&f, &bytes, 1, Columns::Samples));
        cache.insert(2, 0, d.clone());
        cache.drop_blocks(|b| b == 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), d.heap_bytes());
        assert!(cache.get(1, 0, &f, Columns::Samples).is_none());
        assert!(cache.get(2, 0, &f, Columns::Samples).is_some());
    }
}
