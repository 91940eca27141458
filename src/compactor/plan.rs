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
//! A window whose blocks together would take more memory to merge than
//! `-compactor.max-memory-bytes` (`estimate`) is merged in several jobs of consecutive blocks,
//! oldest first, each within the bound (two blocks at least, whatever their size): their
//! outputs fit the same window and merge in a later round. Merging in stages keeps the
//! answer (copies are told apart by source at every stage).
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
    /// A name for logs and the compactor ring: the tenant, stage, window and first block.
    pub fn key(&self, tenant: &str) -> String {
        let first = self.blocks.first().map_or("", |b| b.block_id.as_str());
        format!("{tenant}-stage{}-{}-{}-{first}", self.stage, self.start_ms, self.end_ms)
    }
}

/// The most one input's row buffers hold: a merge's whole row buffers (every input's
/// decoded row group and the output's) peaked at 3.6–4.2 MiB in the compaction bench
/// (perf/RESULTS.md, "The compactor").
pub const ROW_BUFFERS: u64 = 4 << 20;

/// What planning takes from the flags.
#[derive(Debug, Clone)]
pub struct Planning {
    /// `-compactor.block-ranges` in ms, ascending, each > 0.
    pub ranges_ms: Vec<i64>,
    /// `-compactor.first-level-compaction-wait-period` in ms.
    pub wait_ms: i64,
    /// `-compactor.max-memory-bytes` (0: no bound).
    pub max_memory_bytes: u64,
}

/// What merging a block costs in memory, from its files' sizes in the index: its symbol
/// tables decoded (zstd sections expand; 8× the file is above what the fixtures of
/// testdata/ decode to) and their remap, its index decoded, and its row buffers — one row
/// group of it fetched and decoded at a time, twice its profiles at most and never more than
/// `ROW_BUFFERS`. The output's profiles are written to a local file as they are merged
/// (`Compactor::scratch`), so they cost nothing here. A block the index lists without sizes
/// counts its whole size.
pub fn estimate(b: &BlockRef) -> u64 {
    use kiln_shards::block::{INDEX, PROFILES, SYMBOLS};
    match (b.file_size(SYMBOLS), b.file_size(INDEX), b.file_size(PROFILES)) {
        (Some(s), Some(i), Some(p)) => s * 8 + i * 4 + (p * 2).min(ROW_BUFFERS),
        _ => b.size_bytes.saturating_mul(8),
    }
}

/// The jobs for one tenant's index now, smallest range first, oldest window first
/// (Pyroscope's `smallest-range-oldest-blocks-first`).
pub fn plan(idx: &BucketIndex, p: &Planning, now_ms: i64) -> Vec<Job> {
    let (ranges_ms, wait_ms) = (&p.ranges_ms, p.wait_ms);
    let live: Vec<&BlockRef> = idx.live().filter(|b| !b.no_compact).collect();
    let mut claimed: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut jobs = Vec::new();
    for (stage, &range) in ranges_ms.iter().enumerate() {
        // Window start → its fitting blocks.
        let mut windows: std::collections::BTreeMap<i64, Vec<&BlockRef>> = std::collections::BTreeMap::new();
        for b in &live {
            let start = b.min_time.div_euclid(range).saturating_mul(range);
            // `max_time` is inclusive.
            if b.max_time < start.saturating_add(range) {
                windows.entry(start).or_default().push(b);
            }
        }
        for (start, mut blocks) in windows {
            let end = start.saturating_add(range);
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
            for chunk in within_memory(&blocks, p.max_memory_bytes) {
                jobs.push(Job {
                    start_ms: start,
                    end_ms: end,
                    stage,
                    blocks: chunk.iter().map(|b| (*b).clone()).collect(),
                });
            }
        }
    }
    jobs
}

/// `blocks` cut into runs whose `estimate`s add up to at most `max` (0: one run), each of
/// two blocks at least; a last block left alone joins the run before it.
fn within_memory<'a, 'b>(blocks: &'a [&'b BlockRef], max: u64) -> Vec<&'a [&'b BlockRef]> {
    if max == 0 {
        return vec![blocks];
    }
    let mut runs = Vec::new();
    let (mut start, mut sum) = (0, 0u64);
    for (i, b) in blocks.iter().enumerate() {
        let cost = estimate(b);
        if i - start >= 2 && sum + cost > max {
            runs.push(start..i);
            (start, sum) = (i, 0);
        }
        sum += cost;
    }
    match runs.last_mut() {
        Some(last) if blocks.len() - start < 2 => last.end = blocks.len(),
        _ => runs.push(start..blocks.len()),
    }
    runs.into_iter().map(|r| &blocks[r]).collect()
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

    fn planning(wait_ms: i64) -> Planning {
        Planning { ranges_ms: vec![H, 2 * H, 8 * H], wait_ms, max_memory_bytes: 0 }
    }

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
        assert!(plan(&idx, &planning(wait), up + wait - 1).is_empty(), "the wait is not over");
        let jobs = plan(&idx, &planning(wait), up + wait);
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!((jobs[0].start_ms, jobs[0].end_ms, jobs[0].stage), (9 * H, 10 * H, 0));
        assert_eq!(ids(&jobs[0]), ["a", "c", "b"], "oldest first");
        assert_eq!(jobs[0].key("t"), format!("t-stage0-{}-{}-a", 9 * H, 10 * H));
    }

    #[test]
    fn a_window_that_has_not_ended_waits() {
        let idx = index(vec![block("a", 0, 10, 1, 0), block("b", 20, 30, 1, 0)]);
        assert!(plan(&idx, &planning(0), H - 1).is_empty());
        assert_eq!(plan(&idx, &planning(0), H).len(), 1);
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
        let jobs = plan(&idx, &planning(0), now);
        assert_eq!(
            jobs.iter().map(|j| (j.stage, ids(j))).collect::<Vec<_>>(),
            [(0, vec!["a", "b"]), (0, vec!["c", "d"])]
        );
        let mut idx = index(vec![block("ab", 0, 30, 2, 0), block("cd", H, H + 30, 2, 0)]);
        let jobs = plan(&idx, &planning(0), now);
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].stage, ids(&jobs[0])), (1, vec!["ab", "cd"]));
        // Marked blocks are gone for the planner.
        idx.mark("cd", 1);
        assert!(plan(&idx, &planning(0), now).is_empty());
    }

    #[test]
    fn a_block_across_a_window_edge_goes_to_the_next_range() {
        let idx = index(vec![
            block("across", H - 100, H + 100, 1, 0),
            block("before", 10, 20, 1, 0),
            block("after", H + 200, H + 300, 1, 0),
        ]);
        let jobs = plan(&idx, &planning(0), 10 * H);
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!((jobs[0].stage, ids(&jobs[0])), (1, vec!["before", "across", "after"]));
        // Nothing fits a block longer than the largest range: it is left alone.
        let idx = index(vec![block("huge", 0, 9 * H, 1, 0), block("x", 10, 20, 1, 0)]);
        assert!(plan(&idx, &planning(0), 100 * H).is_empty());
    }

    #[test]
    fn planning_converges_to_one_block_per_window() {
        // Simulate: run every planned job (its output spans its inputs), plan again.
        let mut idx =
            index((0..40).map(|i| block(&format!("b{i:02}"), i * 1_000_000, i * 1_000_000 + 500, 1, 0)).collect());
        let mut rounds = 0;
        loop {
            let jobs = plan(&idx, &planning(0), 100 * H);
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
        let live: Vec<&BlockRef> = idx.live().filter(|b| !b.no_compact).collect();
        assert!(
            live.len() <= 3,
            "{:?}",
            live.iter().map(|b| (&b.block_id, b.min_time, b.max_time)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_window_too_large_for_the_memory_bound_merges_in_runs_of_two_blocks_at_least() {
        let sized = |id: &str, min: i64, symbols: u64| {
            let mut b = block(id, min, min + 1, 1, 0);
            b.files =
                vec![("symbols.symdb".into(), symbols), ("index.tsdb".into(), 10), ("profiles.parquet".into(), 100)];
            b
        };
        // Estimates: 8·s + 40 + 200.
        let idx = index(vec![
            sized("a", 0, 100),
            sized("b", 10, 100),
            sized("c", 20, 100),
            sized("d", 30, 1000),
            sized("e", 40, 10),
        ]);
        let mut p = planning(0);
        let runs = |p: &Planning| plan(&idx, p, 10 * H).iter().map(|j| ids(j).join("")).collect::<Vec<_>>();
        assert_eq!(runs(&p), ["abcde"], "no bound");
        p.max_memory_bytes = 2000;
        // a+b+c = 3120 > 2000: a, b; then c, d (two at least, 9280), and e alone joins them.
        assert_eq!(runs(&p), ["ab", "cde"]);
        p.max_memory_bytes = 100_000;
        assert_eq!(runs(&p), ["abcde"]);
        let mut no_sizes = block("u", 0, 1, 1, 0);
        no_sizes.size_bytes = 7;
        assert_eq!(estimate(&no_sizes), 56);
    }
}
