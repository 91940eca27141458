//! The cleaner: retention, deletion of marked blocks, and of uploads that never finished.
//! What to do is decided here from a tenant's index and a listing of its folder (pure, the
//! clock a parameter); `Compactor::cleanup_round` does it.
//!
//! Order, so that a crash between any two steps leaves nothing half-read: a block past
//! retention is first marked (one index write; queries stop reading it at once, through the
//! swap), and deleted only after `-compactor.deletion-delay`, like a compacted input; a
//! marked block's `meta.json` is deleted first (a folder without it is a partial block to
//! every reader), then its other files, then its entry leaves the index. A crash midway
//! leaves it marked, and the next round deletes it again (deleting what is gone succeeds).
use super::{ms, now_ms, stats, Compactor};
use kiln_io::store::block_on;
use kiln_io::store::bucket_index::BucketIndex;
use kiln_shards::block::meta::valid_ulid;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// What to do for one tenant.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Live blocks whose newest profile is past the retention period: to mark.
    pub expired: Vec<String>,
    /// Marked blocks whose mark is older than the deletion delay: to delete.
    pub due: Vec<String>,
}

/// Retention marks and due deletions. `retention` 0 keeps every block.
pub fn plan(idx: &BucketIndex, now_ms: i64, retention: Duration, deletion_delay: Duration) -> Cleanup {
    let expired = if retention.is_zero() {
        Vec::new()
    } else {
        let cutoff = now_ms.saturating_sub(ms(retention));
        idx.live().filter(|b| b.max_time < cutoff).map(|b| b.block_id.clone()).collect()
    };
    let due = idx
        .block_deletion_marks
        .iter()
        .filter(|m| m.deletion_time.saturating_mul(1000).saturating_add(ms(deletion_delay)) <= now_ms)
        .map(|m| m.block_id.clone())
        .collect();
    Cleanup { expired, due }
}

/// A tenant folder's listing (paths relative to it, size, unix seconds modified) by block:
/// each block folder's files. Objects not in a block folder (the bucket index) are left out.
pub fn by_block(listing: &[(String, u64, i64)]) -> BTreeMap<&str, Vec<(&str, i64)>> {
    let mut out: BTreeMap<&str, Vec<(&str, i64)>> = BTreeMap::new();
    for (path, _, modified) in listing {
        if let Some((id, _)) = path.split_once('/') {
            if valid_ulid(id) {
                out.entry(id).or_default().push((path.as_str(), *modified));
            }
        }
    }
    out
}

/// Block folders no index entry (live or marked) names, whose newest file is older than
/// `delay`: uploads that never finished (an ingester's cut or a compaction stopped before
/// its index write). Their ids.
pub fn partial<'a>(
    idx: &BucketIndex,
    blocks: &BTreeMap<&'a str, Vec<(&str, i64)>>,
    now_ms: i64,
    delay: Duration,
) -> Vec<&'a str> {
    blocks
        .iter()
        .filter(|(id, _)| idx.block(id).is_none())
        .filter(|(_, files)| {
            let newest = files.iter().map(|f| f.1).max().unwrap_or(0);
            newest.saturating_mul(1000).saturating_add(ms(delay)) <= now_ms
        })
        .map(|(id, _)| *id)
        .collect()
}

impl Compactor {
    /// One cleanup of every tenant; a failed step is counted, logged and retried next round.
    pub fn cleanup_round(&self) {
        let tenants = match block_on(self.store.tenants()) {
            Ok(t) => t,
            Err(e) => {
                stats::CLEANUP_FAILURES.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "compactor cleanup: listing tenants failed");
                return;
            }
        };
        for tenant in tenants {
            if !self.runs_here(&tenant, &tenant) {
                continue;
            }
            if let Err(e) = self.clean_tenant(&tenant) {
                stats::CLEANUP_FAILURES.fetch_add(1, Relaxed);
                tracing::warn!(tenant, error = %e, "compactor cleanup failed; retried next round");
            }
        }
    }

    fn clean_tenant(&self, tenant: &str) -> Result<(), kiln_io::store::StoreError> {
        let s = &self.settings;
        // The listing before the index: a block indexed between the two is then in the index
        // read, never taken for a partial one.
        let listing = block_on(self.store.list(tenant.to_string()))?;
        let idx = block_on(self.store.read_bucket_index(tenant.to_string()))?;
        let retention = self.limits.for_tenant(tenant).compactor_blocks_retention_period;
        let todo = plan(&idx, now_ms(), retention, s.deletion_delay);
        if !todo.expired.is_empty() {
            // The cores let go first, so a mark anyone can see means the block is no longer
            // read here. Should the mark's write fail, the blocks are only unread (they are
            // past retention) until the next round marks them; a restart before then reads
            // them again, never wrongly.
            self.swap(tenant, &[], &todo.expired);
            block_on(self.store.mark_for_deletion(tenant.to_string(), todo.expired.clone()))?;
            crate::service::crash_point("compactor:marked");
            stats::MARKED.fetch_add(todo.expired.len() as u64, Relaxed);
            tracing::info!(tenant, blocks = todo.expired.len(), retention = ?retention, "blocks past retention marked for deletion");
        }
        let blocks = by_block(&listing);
        let delete = |id: &str| -> Result<(), kiln_io::store::StoreError> {
            let mut files: Vec<&str> = blocks.get(id).map(|f| f.iter().map(|f| f.0).collect()).unwrap_or_default();
            // meta.json first: a folder without it is never read as a block.
            files.sort_by_key(|f| !f.ends_with(kiln_shards::block::META));
            for f in files {
                block_on(self.store.delete(format!("{tenant}/{f}")))?;
                crate::service::crash_point("compactor:deleting");
            }
            Ok(())
        };
        if !todo.due.is_empty() {
            for id in &todo.due {
                delete(id)?;
            }
            crate::service::crash_point("compactor:deleted");
            block_on(self.store.remove_blocks(tenant.to_string(), todo.due.clone()))?;
            self.forget(tenant, &todo.due);
            stats::DELETED.fetch_add(todo.due.len() as u64, Relaxed);
            tracing::info!(tenant, blocks = todo.due.len(), "marked blocks deleted");
        }
        if !s.partial_block_deletion_delay.is_zero() {
            for id in partial(&idx, &blocks, now_ms(), s.partial_block_deletion_delay) {
                if self.cut_complete(tenant, id, &blocks) {
                    continue;
                }
                delete(id)?;
                stats::PARTIAL_DELETED.fetch_add(1, Relaxed);
                tracing::info!(tenant, block = id, "partial block deleted (no index lists it)");
            }
        }
        Ok(())
    }

    /// Whether an unindexed folder is a whole block cut from a head (meta.json, level 1)
    /// whose ingester may still be retrying its index write, whatever the delay: the cleaner
    /// leaves it (logged). On a single node that is only while the process that cut it runs
    /// (a later start replays the block's WAL records instead, and never indexes it): a cut
    /// block written before this process started is a partial block. So is a compaction's
    /// output (level 2 and up, written by a job that indexes it at once or died) and a folder
    /// without meta.json.
    fn cut_complete(&self, tenant: &str, id: &str, blocks: &BTreeMap<&str, Vec<(&str, i64)>>) -> bool {
        let files = blocks.get(id).map_or(&[][..], Vec::as_slice);
        if !files.iter().any(|f| f.0.ends_with(kiln_shards::block::META)) {
            return false;
        }
        let newest = files.iter().map(|f| f.1).max().unwrap_or(0);
        if self.mesh.is_some() && newest < self.started_at_s {
            return false;
        }
        let path = kiln_shards::block::object_path(tenant, id, kiln_shards::block::META);
        let level = block_on(self.store.get(path))
            .ok()
            .and_then(|b| kiln_shards::block::meta::decode(&b).ok())
            .map(|m| m.compaction.level);
        if level == Some(1) {
            tracing::warn!(tenant, block = id, "a whole cut block no index lists: left for its ingester to index");
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_io::store::bucket_index::BlockRef;

    const A: &str = "01HD3X85G9BGAG4S3TKPNMFG40";
    const B: &str = "01HD3X85G9BGAG4S3TKPNMFG41";
    const C: &str = "01HD3X85G9BGAG4S3TKPNMFG42";

    fn index() -> BucketIndex {
        let b = |id: &str, max: i64| BlockRef { block_id: id.into(), min_time: 0, max_time: max, ..Default::default() };
        let mut idx = BucketIndex { blocks: vec![b(A, 1_000), b(B, 50_000), b(C, 90_000)], ..Default::default() };
        idx.mark(C, 80);
        idx
    }

    #[test]
    fn retention_marks_exactly_the_blocks_past_it_and_deletion_waits_for_the_delay() {
        let idx = index();
        let s = Duration::from_secs;
        assert_eq!(plan(&idx, 100_000, Duration::ZERO, s(30)), Cleanup { expired: vec![], due: vec![] });
        // Cutoff 100 s − 50 s = 50 000 ms: A (max 1 000) is past it, B (max 50 000) is not.
        assert_eq!(plan(&idx, 100_000, s(50), s(30)).expired, [A]);
        assert_eq!(plan(&idx, 100_000, s(49), s(30)).expired, [A, B]);
        // C was marked at 80 s: due at 110 s with a 30 s delay, not before.
        assert!(plan(&idx, 109_999, Duration::ZERO, s(30)).due.is_empty());
        assert_eq!(plan(&idx, 110_000, Duration::ZERO, s(30)).due, [C]);
        assert_eq!(plan(&idx, 80_000, Duration::ZERO, Duration::ZERO).due, [C], "a delay of 0 deletes at once");
    }

    #[test]
    fn partial_blocks_are_the_unindexed_folders_past_the_delay() {
        let idx = index();
        const D: &str = "01HD3X85G9BGAG4S3TKPNMFG43";
        const E: &str = "01HD3X85G9BGAG4S3TKPNMFG44";
        let listing: Vec<(String, u64, i64)> = vec![
            ("bucket-index.json".into(), 10, 0),
            ("bucket-index.json.lock".into(), 0, 0),
            (format!("{A}/meta.json"), 1, 10),
            (format!("{C}/index.tsdb"), 1, 10),
            // D: an upload that stopped at 50 s; E: one still going at 99 s.
            (format!("{D}/index.tsdb"), 1, 40),
            (format!("{D}/profiles.parquet"), 1, 50),
            (format!("{E}/index.tsdb"), 1, 99),
            ("not-a-block/x".into(), 1, 0),
        ];
        let blocks = by_block(&listing);
        assert_eq!(blocks.keys().copied().collect::<Vec<_>>(), [A, C, D, E]);
        assert_eq!(partial(&idx, &blocks, 100_000, Duration::from_secs(50)), [D]);
        assert_eq!(partial(&idx, &blocks, 100_000, Duration::from_secs(51)), Vec::<&str>::new());
        assert_eq!(partial(&idx, &blocks, 200_000, Duration::from_secs(50)), [D, E]);
    }
}
