//! A cluster's querier never answers short without saying so: after a query's first step it
//! checks that every block the bucket index says holds data of the query's range was read
//! by some reader, and refuses the query (`Unavailable`, naming the blocks) otherwise.
//!
//! Readers are the ACTIVE, healthy ingesters and store-gateways this querier's ring shows. A
//! store-gateway that died with blocks no other one holds yet (factor 1), one this querier's
//! gossip has not brought yet, or one that failed to load a block would otherwise leave its
//! blocks out of the answer silently — and a query-frontend would cache that answer. Cortex
//! and Mimir make the same check (their blocks consistency check); Pyroscope's querier does
//! not and instead fails every query while any store-gateway of a block's set is unhealthy.
//!
//! What must have been read: the tenant's live blocks (not marked for deletion) overlapping
//! the range and uploaded `grace` ago or more — three store-gateway sync intervals and two
//! seconds, by when every store-gateway has synced them (a newer block is read by the
//! ingester that cut it, and a compaction's output by its inputs until the store-gateways
//! take it; neither is checked). A block counts as read when it or a block holding its
//! level-1 sources was (a compaction's inputs read for its output, or the output for its
//! inputs): coverage is by level-1 block, which is how compactions combine them.
use crate::service::{Code, RpcError};
use kiln_io::store::bucket_index::{BlockRef, BucketIndex};
use kiln_io::store::Store;
use kiln_shards::query::QueryResult;
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a tenant's bucket index is reused before it is read again.
const REFRESH: Duration = Duration::from_secs(30);
/// Tenants whose index is kept; past it the least recently read one is dropped.
pub const MAX_TENANTS: usize = 10_000;

/// The bucket indexes a querier checks its queries against, read through `store` and kept
/// `REFRESH` per tenant.
pub struct Catalog {
    store: Store,
    grace: Duration,
    indexes: Mutex<FxHashMap<String, (Instant, Arc<BucketIndex>)>>,
    checks: AtomicU64,
    refused: AtomicU64,
    unreadable: AtomicU64,
}

impl Catalog {
    pub fn new(store: Store, grace: Duration) -> Catalog {
        Catalog {
            store,
            grace,
            indexes: Mutex::default(),
            checks: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
        }
    }

    /// `tenant`'s index, from the cache unless it is older than `REFRESH` or `fresh` asks
    /// for a new read. `None` (counted, logged) when the bucket cannot be read: the query
    /// then goes unchecked rather than failing for the check's sake.
    async fn index(&self, tenant: &str, fresh: bool) -> Option<Arc<BucketIndex>> {
        if !fresh {
            let cached = self.indexes.lock().unwrap_or_else(|e| e.into_inner()).get(tenant).cloned();
            if let Some((_, idx)) = cached.filter(|(at, _)| at.elapsed() < REFRESH) {
                return Some(idx);
            }
        }
        match self.store.read_bucket_index(tenant.to_string()).await {
            Ok(idx) => {
                let idx = Arc::new(idx);
                let mut all = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
                if all.len() >= MAX_TENANTS && !all.contains_key(tenant) {
                    if let Some(oldest) = all.iter().min_by_key(|(_, (at, _))| *at).map(|(t, _)| t.clone()) {
                        all.remove(&oldest);
                    }
                }
                all.insert(tenant.to_string(), (Instant::now(), idx.clone()));
                Some(idx)
            }
            Err(e) => {
                self.unreadable.fetch_add(1, Relaxed);
                tracing::warn!(tenant, error = %e, "reading the bucket index to check a query's blocks failed; the query goes unchecked");
                None
            }
        }
    }

    /// Whether the readers' first-step answers `held` read every block of `tenants` that
    /// holds data of `[start_ms, end_ms]`; else `Unavailable` naming the ones none read.
    pub async fn check(
        &self,
        tenants: &[String],
        start_ms: i64,
        end_ms: i64,
        held: &[(u32, Vec<QueryResult>)],
    ) -> Result<(), RpcError> {
        self.checks.fetch_add(1, Relaxed);
        let read: FxHashSet<&str> = held
            .iter()
            .flat_map(|(_, parts)| parts)
            .filter_map(|p| match p {
                QueryResult::Read(ids) => Some(ids.iter().map(String::as_str)),
                _ => None,
            })
            .flatten()
            .collect();
        let now_s = crate::store_gateway::sync::unix_now();
        for tenant in tenants {
            let Some(idx) = self.index(tenant, false).await else { continue };
            if unread(&idx, start_ms, end_ms, &read, now_s, self.grace).is_empty() {
                continue;
            }
            // A block read that this index does not know yet (a new compaction's output)
            // may cover the rest: look again at a fresh index before refusing.
            let Some(idx) = self.index(tenant, true).await else { continue };
            let missing = unread(&idx, start_ms, end_ms, &read, now_s, self.grace);
            if !missing.is_empty() {
                self.refused.fetch_add(1, Relaxed);
                let shown: Vec<&str> = missing.iter().take(10).map(|b| b.block_id.as_str()).collect();
                return Err(RpcError::new(
                    Code::Unavailable,
                    format!(
                        "{} block(s) of tenant {tenant} in the query's range were read by no ingester or store-gateway \
                         (a store-gateway holding them is down, not yet seen by this querier, or still loading them): {}{}; retry the query",
                        missing.len(),
                        shown.join(", "),
                        if missing.len() > shown.len() { ", …" } else { "" }
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let cached = self.indexes.lock().unwrap_or_else(|e| e.into_inner()).len();
        let _ = write!(
            out,
            "# HELP kiln_querier_block_checks_total Queries whose first step was checked for blocks no reader read.\n\
             # TYPE kiln_querier_block_checks_total counter\nkiln_querier_block_checks_total {}\n\
             # HELP kiln_querier_block_checks_refused_total Queries refused because some block of their range was read by no reader.\n\
             # TYPE kiln_querier_block_checks_refused_total counter\nkiln_querier_block_checks_refused_total {}\n\
             # HELP kiln_querier_block_checks_unreadable_total Checks skipped because a tenant's bucket index could not be read.\n\
             # TYPE kiln_querier_block_checks_unreadable_total counter\nkiln_querier_block_checks_unreadable_total {}\n\
             # HELP kiln_querier_bucket_indexes_cached Tenants' bucket indexes the querier keeps for the check (at most {MAX_TENANTS}).\n\
             # TYPE kiln_querier_bucket_indexes_cached gauge\nkiln_querier_bucket_indexes_cached {cached}\n",
            self.checks.load(Relaxed),
            self.refused.load(Relaxed),
            self.unreadable.load(Relaxed),
        );
    }
}

/// The blocks of `idx` that must have been read for a query of `[start_ms, end_ms]` and
/// were not: live, overlapping the range, uploaded `grace` before `now_s` or earlier, with
/// a level-1 source that no block in `read` holds.
pub fn unread<'a>(
    idx: &'a BucketIndex,
    start_ms: i64,
    end_ms: i64,
    read: &FxHashSet<&str>,
    now_s: i64,
    grace: Duration,
) -> Vec<&'a BlockRef> {
    let by_id: FxHashMap<&str, &BlockRef> = idx.blocks.iter().map(|b| (b.block_id.as_str(), b)).collect();
    let covered: FxHashSet<&str> = read
        .iter()
        .flat_map(|id| match by_id.get(id) {
            Some(b) => level_one(b).collect::<Vec<_>>(),
            None => vec![*id],
        })
        .collect();
    let marked: FxHashSet<&str> = idx.block_deletion_marks.iter().map(|m| m.block_id.as_str()).collect();
    let settled = now_s.saturating_sub(grace.as_secs() as i64);
    idx.blocks
        .iter()
        .filter(|b| !marked.contains(b.block_id.as_str()))
        .filter(|b| b.max_time >= start_ms && b.min_time <= end_ms && b.uploaded_at <= settled)
        .filter(|b| level_one(b).any(|s| !covered.contains(s)))
        .collect()
}

/// The level-1 blocks `b` holds: its sources, or itself when it was cut from a head.
fn level_one(b: &BlockRef) -> impl Iterator<Item = &str> {
    let own = b.sources.is_empty().then_some(b.block_id.as_str());
    b.sources.iter().map(String::as_str).chain(own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_io::store::bucket_index::DeletionMark;

    const GRACE: Duration = Duration::from_secs(47);
    const NOW: i64 = 10_000;

    fn block(id: &str, min: i64, max: i64, uploaded_at: i64, sources: &[&str]) -> BlockRef {
        BlockRef {
            block_id: id.into(),
            min_time: min,
            max_time: max,
            uploaded_at,
            sources: sources.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn missing(idx: &BucketIndex, start: i64, end: i64, read: &[&str]) -> Vec<String> {
        let read: FxHashSet<&str> = read.iter().copied().collect();
        unread(idx, start, end, &read, NOW, GRACE).iter().map(|b| b.block_id.clone()).collect()
    }

    #[test]
    fn every_settled_live_block_of_the_range_must_be_read() {
        let idx = BucketIndex {
            blocks: vec![
                block("a", 0, 100, 1_000, &[]),
                block("b", 200, 300, 1_000, &[]),
                // Uploaded within the grace: the store-gateways may not have it yet.
                block("new", 0, 100, NOW - 10, &[]),
                // Marked: a compaction replaced it, or retention ends it.
                block("gone", 0, 100, 1_000, &[]),
            ],
            block_deletion_marks: vec![DeletionMark { block_id: "gone".into(), deletion_time: 5_000 }],
            ..Default::default()
        };
        assert_eq!(missing(&idx, 0, 300, &["a", "b"]), Vec::<String>::new());
        assert_eq!(missing(&idx, 0, 300, &["a"]), ["b"]);
        assert_eq!(missing(&idx, 0, 150, &["a"]), Vec::<String>::new(), "b lies outside the range");
        assert_eq!(missing(&idx, 0, 300, &[]), ["a", "b"]);
        // The edges of the range are inclusive, as a block's times are.
        assert_eq!(missing(&idx, 300, 400, &[]), ["b"]);
    }

    #[test]
    fn a_compaction_is_covered_by_its_output_or_by_all_its_inputs() {
        // out holds a and b (marked once compacted, still read a while by the readers).
        let idx = BucketIndex {
            blocks: vec![
                block("a", 0, 100, 1_000, &[]),
                block("b", 50, 150, 1_000, &[]),
                block("out", 0, 150, 2_000, &["a", "b"]),
            ],
            block_deletion_marks: vec![
                DeletionMark { block_id: "a".into(), deletion_time: 2_000 },
                DeletionMark { block_id: "b".into(), deletion_time: 2_000 },
            ],
            ..Default::default()
        };
        assert_eq!(missing(&idx, 0, 150, &["out"]), Vec::<String>::new());
        assert_eq!(missing(&idx, 0, 150, &["a", "b"]), Vec::<String>::new(), "the inputs, until the output is synced");
        assert_eq!(missing(&idx, 0, 150, &["a"]), ["out"], "half the inputs hold half the output");
        // A block read that the index does not know covers itself only.
        assert_eq!(missing(&idx, 0, 150, &["c"]), ["out"]);
    }
}
