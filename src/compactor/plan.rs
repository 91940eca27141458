//! Planning: which blocks of a tenant to merge, from its bucket index alone. Pure (the clock
//! is a parameter), so every rule is tested here.
//!
//! The ranges (`-compactor.block-ranges`, ascending, each a multiple of the one before) cut
//! time into aligned windows. A block *fits* a window of a range when its whole time span
//! lies inside it. For each range, smallest first, each window's fitting blocks that are not
//! marked for deletion become one job when
//! - there are at least two of them (one block alone is already compacted for its range), and
//! - the window has ended, and every level-1 block in it was uploaded at least
//!   `-compactor.first-level-compaction-wait-period` ago (so every core's and every replica's
//!   block of the window is there: a vertical merge that ran early would leave a late replica
//!   block to merge again), and
//! - none of its blocks belongs to a job of a smaller range already planned (a larger window
//!   waits for the smaller ones inside it to finish: their outputs are what it merges).
//!
//! A block whose span crosses a window's edge fits the next larger range's window instead (an
//! ingester's block covers its head's life, which the ranges do not align); one that fits no
//! window of any range is left as it is. Every job's output fits the window its inputs did,
//! so repeated planning converges: each window ends with one block per range.
use kiln_io::store::bucket_index::{BlockRef, BucketIndex};

/// One compaction: blocks of one tenant and one window, merged into one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The window, in unix ms: `[start, end)`.
    pub start_ms: i64,
    pub end_ms: i64,
    /// The range's position in `-compactor.block-ranges` (0: the smallest).
    pub stage: usize,
    /// Oldest first.
    pub blocks: Vec<BlockRef>,
}

impl Job {
    /// A name for logs and the compactor ring: the tenant, stage and window.
    pub fn key(&self, tenant: &str) -> String {
        format!("{tenant}-stage{}-{}-{}", self.stage, self.start_ms, self.end_ms)
    }
}

/// The jobs for one tenant's index now, smallest range first, oldest window first
/// (Pyroscope's `smallest-range-oldest-blocks-first`). `ranges_ms` ascending, each > 0.
pub fn plan(idx: &BucketIndex, ranges_ms: &[i64], wait_ms: i64, now_ms: i64) -> Vec<Job> {
    let live: Vec<&BlockRef> = idx.live().collect();
    let mut claimed: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut jobs = Vec::new();
    for (stage, &range) in ranges_ms.iter().enumerate() {
        // Window start → its fitting blocks.
        let mut windows: std::collections::BTreeMap<i64, Vec<&BlockRef>> = std::collections::BTreeMap::new();
        for b in &live {
            let start = b.min_time.div_euclid(range) * range;
            // `max_time` is inclusive.
            if b.max_time < start + range {
                windows.entry(start).or_default().push(b);
            }
        }
        for (start, mut blocks) in windows {
            let end = start + range;
            if blocks.len() < 2 || end > now_ms {
                continue;
            }
            let settled = blocks.iter().all(|b| {
                b.compaction_level > 1 || b.uploaded_at.saturating_mul(1000).saturating_add(wait_ms) <= now_ms
            });
            if !settled || blocks.iter().any(|b| claimed.contains(b.block_id.as_str())) {
                continue;
            }
            blocks.sort_by(|a, b| (a.min_time, &a.block_id).cmp(&(b.min_time, &b.block_id)));
            claimed.extend(blocks.iter().map(|b| b.block_id.as_str()));
            jobs.push(Job { start_ms: start, end_ms: end, stage, blocks: blocks.into_iter().cloned().collect() });
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn block(id: &str, min: i64, max: i64, level: u32, uploaded_ms: i64) -> BlockRef {
        BlockRef {
            block_id: id.into(),
            min_time: min,
            max_time: max,
            uploaded_at: uploaded_ms / 1000,
            compaction_level: level,
            ..Default::default()
        }
    }

    fn index(blocks: Vec<BlockRef>) -> BucketIndex {
        BucketIndex { blocks, ..Default::default() }
    }

    fn ids(j: &Job) -> Vec<&str> {
        j.blocks.iter().map(|b| b.block_id.as_str()).collect()
    }

    const RANGES: [i64; 3] = [H, 2 * H, 8 * H];

    #[test]
    fn the_blocks_of_an_hour_from_every_core_and_replica_merge_once_the_wait_is_over() {
        let up = 10 * H + 60_000;
        let idx = index(vec![
            block("a", 9 * H, 9 * H + 1_800_000, 1, up),
            block("b", 9 * H + 100, 10 * H - 1, 1, up),
            block("c", 9 * H + 5, 9 * H + 7, 1, up),
            // The next hour: one block alone.
            block("d", 10 * H, 10 * H + 10, 1, up),
        ]);
        let wait = 25 * 60_000;
        assert!(plan(&idx, &RANGES, wait, up + wait - 1).is_empty(), "the wait is not over");
        let jobs = plan(&idx, &RANGES, wait, up + wait);
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!((jobs[0].start_ms, jobs[0].end_ms, jobs[0].stage), (9 * H, 10 * H, 0));
        assert_eq!(ids(&jobs[0]), ["a", "c", "b"], "oldest first");
        assert_eq!(jobs[0].key("t"), format!("t-stage0-{}-{}", 9 * H, 10 * H));
    }

    #[test]
    fn a_window_that_has_not_ended_waits() {
        let idx = index(vec![block("a", 0, 10, 1, 0), block("b", 20, 30, 1, 0)]);
        assert!(plan(&idx, &RANGES, 0, H - 1).is_empty());
        assert_eq!(plan(&idx, &RANGES, 0, H).len(), 1);
    }

    #[test]
    fn larger_windows_wait_for_the_smaller_ones_inside_them_then_take_their_outputs() {
        let now = 100 * H;
        // Hours 0 and 1: two blocks each (level 1); then their outputs (level 2).
        let idx = index(vec![
            block("a", 0, 10, 1, 0),
            block("b", 20, 30, 1, 0),
            block("c", H, H + 10, 1, 0),
            block("d", H + 20, H + 30, 1, 0),
        ]);
        let jobs = plan(&idx, &RANGES, 0, now);
        assert_eq!(
            jobs.iter().map(|j| (j.stage, ids(j))).collect::<Vec<_>>(),
            [(0, vec!["a", "b"]), (0, vec!["c", "d"])]
        );
        let mut idx = index(vec![block("ab", 0, 30, 2, 0), block("cd", H, H + 30, 2, 0)]);
        let jobs = plan(&idx, &RANGES, 0, now);
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].stage, ids(&jobs[0])), (1, vec!["ab", "cd"]));
        // Marked blocks are gone for the planner.
        idx.mark("cd", 1);
        assert!(plan(&idx, &RANGES, 0, now).is_empty());
    }

    #[test]
    fn a_block_across_a_window_edge_goes_to_the_next_range() {
        let idx = index(vec![
            block("across", H - 100, H + 100, 1, 0),
            block("before", 10, 20, 1, 0),
            block("after", H + 200, H + 300, 1, 0),
        ]);
        let jobs = plan(&idx, &RANGES, 0, 10 * H);
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!((jobs[0].stage, ids(&jobs[0])), (1, vec!["before", "across", "after"]));
        // Nothing fits a block longer than the largest range: it is left alone.
        let idx = index(vec![block("huge", 0, 9 * H, 1, 0), block("x", 10, 20, 1, 0)]);
        assert!(plan(&idx, &RANGES, 0, 100 * H).is_empty());
    }

    #[test]
    fn planning_converges_to_one_block_per_window() {
        // Simulate: run every planned job (its output spans its inputs), plan again.
        let mut idx =
            index((0..40).map(|i| block(&format!("b{i:02}"), i * 1_000_000, i * 1_000_000 + 500, 1, 0)).collect());
        let mut rounds = 0;
        loop {
            let jobs = plan(&idx, &RANGES, 0, 100 * H);
            if jobs.is_empty() {
                break;
            }
            for j in jobs {
                let min = j.blocks.iter().map(|b| b.min_time).min().unwrap();
                let max = j.blocks.iter().map(|b| b.max_time).max().unwrap();
                let level = j.blocks.iter().map(|b| b.compaction_level).max().unwrap() + 1;
                for b in &j.blocks {
                    idx.mark(&b.block_id, 0);
                }
                idx.add(block(&format!("out-{}-{}", j.stage, j.start_ms), min, max, level, 0));
            }
            rounds += 1;
            assert!(rounds < 10, "planning does not converge");
        }
        // 40 blocks over 40e6 ms (about 11.1 h): windows of 8 h hold what fits them.
        let live: Vec<&BlockRef> = idx.live().collect();
        assert!(
            live.len() <= 3,
            "{:?}",
            live.iter().map(|b| (&b.block_id, b.min_time, b.max_time)).collect::<Vec<_>>()
        );
    }
}
