//! Splitting a query's time range into parts (`-querier.split-queries-by-interval`): the
//! parts are run in parallel and their partial results merged as one query's would be, so
//! the answer equals the unsplit query's.
//!
//! Only queries that add profiles up over time are split (flame graphs, pprof, time
//! series); a profile belongs to exactly one part, since parts are disjoint inclusive
//! millisecond ranges that cover the query's. Part boundaries lie on multiples of the
//! interval (so the same range of a later query is the same part, which the results cache
//! relies on), moved forward for a time series onto its step grid: a point's time is the
//! first step boundary at or after its profiles counted from the query's start, and a part
//! that starts on that grid puts every profile on the same point as the whole query does.
use kiln_shards::query::QueryRequest;

/// A query is split into at most this many parts; a longer range gets a longer interval
/// (a multiple of the configured one), so a 7-day query with a 1-minute interval is not
/// ten thousand jobs.
pub const MAX_PARTS: i64 = 256;

/// Whether `req` is split at all.
pub fn splits(req: &QueryRequest) -> bool {
    matches!(req, QueryRequest::MergeTree(_) | QueryRequest::MergeProfile(_) | QueryRequest::SelectSeries { .. })
}

/// The parts of `req` for `interval_ms` (0 or less: no split), in time order.
pub fn split(req: &QueryRequest, interval_ms: i64) -> Vec<QueryRequest> {
    let sel = req.selection();
    let (start, end) = (sel.start_ms, sel.end_ms);
    if interval_ms <= 0 || !splits(req) || end <= start {
        return vec![req.clone()];
    }
    let step = match req {
        QueryRequest::SelectSeries { step_ms, .. } => (*step_ms).max(1),
        _ => 1,
    };
    // The interval, at least one step, and long enough for `MAX_PARTS`.
    let span = (end - start).saturating_add(1);
    let mut interval = interval_ms.max(step);
    if span / interval >= MAX_PARTS {
        interval = interval.saturating_mul(span / interval / MAX_PARTS + 1);
    }
    // Part boundaries: the first time ≥ each multiple of the interval on the step grid that
    // starts at `start`, strictly inside (start, end].
    let on_grid = |t: i64| -> i64 {
        // t + ((start − t) mod step), in i128: any i64 range and step fit.
        let off = (i128::from(start) - i128::from(t)).rem_euclid(i128::from(step));
        i64::try_from(i128::from(t) + off).unwrap_or(i64::MAX)
    };
    let mut bounds = vec![start];
    let mut k = start.div_euclid(interval).saturating_add(1);
    while let Some(m) = k.checked_mul(interval) {
        let b = on_grid(m);
        if b > end {
            break;
        }
        if b > *bounds.last().expect("starts with start") {
            bounds.push(b);
        }
        k += 1;
    }
    let mut parts = Vec::with_capacity(bounds.len());
    for (i, &b) in bounds.iter().enumerate() {
        let last = bounds.get(i + 1).map_or(end, |next| next - 1);
        let mut part = req.clone();
        let s = part.selection_mut();
        s.start_ms = b;
        s.end_ms = last;
        parts.push(part);
    }
    parts
}

/// `parts` (in time order, each with whether it is kept apart) with every run of
/// consecutive parts not kept apart joined into one part spanning them (a time series'
/// joined part starts on its first part's start, so on the step grid).
pub fn coalesce(parts: Vec<(QueryRequest, bool)>) -> Vec<(QueryRequest, bool)> {
    let mut out: Vec<(QueryRequest, bool)> = Vec::with_capacity(parts.len());
    for (p, apart) in parts {
        match out.last_mut() {
            Some((prev, false)) if !apart => prev.selection_mut().end_ms = p.selection().end_ms,
            _ => out.push((p, apart)),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kiln_shards::query::Selection;

    pub(crate) fn sel(start: i64, end: i64) -> Selection {
        Selection {
            tenants: vec![],
            profile_type: None,
            matchers: vec![],
            start_ms: start,
            end_ms: end,
            keys: None,
            epoch: None,
            report_read: false,
            spans: None,
        }
    }

    fn ranges(parts: &[QueryRequest]) -> Vec<(i64, i64)> {
        parts.iter().map(|p| (p.selection().start_ms, p.selection().end_ms)).collect()
    }

    #[test]
    fn parts_are_aligned_to_the_interval_and_cover_the_range() {
        let parts = split(&QueryRequest::MergeTree(sel(150, 420)), 100);
        assert_eq!(ranges(&parts), [(150, 199), (200, 299), (300, 399), (400, 420)]);
        // Not split: label queries, no interval, a range within one interval.
        assert_eq!(split(&QueryRequest::LabelNames(sel(0, 1000)), 100).len(), 1);
        assert_eq!(split(&QueryRequest::MergeTree(sel(0, 1000)), 0).len(), 1);
        assert_eq!(ranges(&split(&QueryRequest::MergeTree(sel(210, 290)), 100)), [(210, 290)]);
    }

    #[test]
    fn series_parts_start_on_the_step_grid() {
        let q = QueryRequest::SelectSeries { sel: sel(5, 400), step_ms: 30, group_by: vec![] };
        let parts = split(&q, 100);
        for p in &parts {
            assert_eq!((p.selection().start_ms - 5) % 30, 0, "{:?}", ranges(&parts));
        }
        assert_eq!(ranges(&parts), [(5, 124), (125, 214), (215, 304), (305, 400)]);
    }

    #[test]
    fn runs_of_parts_not_kept_apart_are_joined() {
        let parts = split(&QueryRequest::MergeTree(sel(0, 599)), 100);
        let coalesce = |keep_apart: &dyn Fn(&QueryRequest) -> bool| -> Vec<QueryRequest> {
            let marked = parts.iter().map(|p| (p.clone(), keep_apart(p))).collect();
            super::coalesce(marked).into_iter().map(|(p, _)| p).collect()
        };
        // Parts ending before 300 are kept apart (cacheable); the rest join into one.
        let joined = coalesce(&|p| p.selection().end_ms < 300);
        assert_eq!(ranges(&joined), [(0, 99), (100, 199), (200, 299), (300, 599)]);
        assert_eq!(ranges(&coalesce(&|_| false)), [(0, 599)]);
        assert_eq!(
            ranges(&coalesce(&|p| p.selection().start_ms != 200)),
            [(0, 99), (100, 199), (200, 299), (300, 399), (400, 499), (500, 599)]
        );
    }

    #[test]
    fn long_ranges_get_at_most_max_parts() {
        let parts = split(&QueryRequest::MergeProfile(sel(0, 7 * 86_400_000)), 60_000);
        assert!(parts.len() as i64 <= MAX_PARTS, "{}", parts.len());
        let parts = split(&QueryRequest::MergeTree(sel(i64::MIN / 2, i64::MAX / 2)), 1);
        assert!(parts.len() as i64 <= MAX_PARTS + 1);
    }

    proptest::proptest! {
        /// Parts are disjoint, in order, and cover exactly the query's range; a series part
        /// starts on the query's step grid.
        #[test]
        fn parts_partition_the_range(start in -1_000_000i64..1_000_000, len in 0i64..5_000_000,
                                     interval in 1i64..200_000, step in 1i64..50_000, series: bool) {
            let s = sel(start, start + len);
            let q = if series {
                QueryRequest::SelectSeries { sel: s, step_ms: step, group_by: vec![] }
            } else {
                QueryRequest::MergeTree(s)
            };
            let parts = split(&q, interval);
            let r = ranges(&parts);
            proptest::prop_assert_eq!(r[0].0, start);
            proptest::prop_assert_eq!(r[r.len() - 1].1, start + len);
            for w in r.windows(2) {
                proptest::prop_assert_eq!(w[0].1 + 1, w[1].0);
            }
            for (a, b) in &r {
                proptest::prop_assert!(a <= b);
                if series {
                    proptest::prop_assert_eq!((a - start).rem_euclid(step), 0);
                }
            }
            proptest::prop_assert!(r.len() as i64 <= MAX_PARTS + 1);
        }
    }
}
