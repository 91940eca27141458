//! `SelectHeatmap`: profile totals (or span totals) bucketed by time and value, as Pyroscope
//! answers it: one heatmap series per `group_by` label set, value buckets shared by every
//! series (evenly spaced between the smallest and the largest value), time slots ending at
//! `start + k·step`, and per filled cell the count of points and, when asked, an exemplar
//! (the cell's point with the largest value).
use kiln_proto::types::v1 as t;
use kiln_shards::model::labels::Labels;
use kiln_shards::model::profile::format_span_id;
use kiln_shards::query::{step_end, HeatPoint};
use std::collections::BTreeMap;

/// Value buckets per heatmap (Pyroscope's `DefaultYAxisBuckets`).
pub const VALUE_BUCKETS: usize = 20;

/// The points of one group: each with the labels of the series it came from (an index into
/// `Groups::series`), for its exemplar.
#[derive(Debug, Default)]
pub struct Group {
    pub points: Vec<(HeatPoint, u32)>,
    pub total: i128,
}

/// Points gathered from every reader: per group (its `group_by` labels), and the labels of
/// every series they came from.
#[derive(Debug, Default)]
pub struct Groups {
    pub groups: BTreeMap<Labels, Group>,
    pub series: Vec<Labels>,
    pub points: usize,
}

impl Groups {
    /// Adds one reader's points of series `labels`, grouped by `group_by`.
    pub fn add(&mut self, labels: Labels, points: Vec<HeatPoint>, group_by: &[String]) {
        let key = Labels::from_pairs(labels.iter().filter(|(k, _)| group_by.iter().any(|g| g == k)));
        let g = self.groups.entry(key).or_default();
        let series = self.series.len() as u32;
        self.series.push(labels);
        self.points += points.len();
        for p in points {
            g.total += i128::from(p.value);
            g.points.push((p, series));
        }
    }

    /// Keeps the `limit` groups with the largest totals (ties: the first in label order).
    pub fn keep_top(&mut self, limit: usize) {
        if self.groups.len() <= limit {
            return;
        }
        let mut totals: Vec<(i128, Labels)> = self.groups.iter().map(|(l, g)| (g.total, l.clone())).collect();
        totals.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, l) in totals.into_iter().skip(limit) {
            self.groups.remove(&l);
        }
    }
}

/// A value bucket: `[min, max)`, the last one closed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    min: i64,
    max: i64,
}

fn value_buckets(lo: i64, hi: i64) -> Vec<Bucket> {
    let hi = if hi == lo { lo.saturating_add(1) } else { hi };
    let size = (hi as f64 - lo as f64) / VALUE_BUCKETS as f64;
    let mut out: Vec<Bucket> = (0..VALUE_BUCKETS)
        .map(|i| Bucket {
            min: lo.saturating_add((i as f64 * size) as i64),
            max: lo.saturating_add(((i + 1) as f64 * size) as i64),
        })
        .collect();
    out[VALUE_BUCKETS - 1].max = hi;
    out
}

fn bucket_of(v: i64, buckets: &[Bucket]) -> Option<usize> {
    // Buckets ascend: the last whose min is at most v (values past the last max go there).
    let i = buckets.partition_point(|b| b.min <= v);
    (i > 0).then(|| i - 1)
}

/// The end of the time slot `ts` falls in: slots are `(start + (k-1)·step, start + k·step]`,
/// clamped to `[start, the slot of end]`.
fn slot_of(ts: i64, start: i64, end: i64, step: i64) -> i64 {
    step_end(ts, start, step).clamp(start, step_end(end, start, step).max(start))
}

/// The heatmap series, in group label order. `exemplars`: attach each cell's largest point.
pub fn build(
    groups: &Groups,
    start: i64,
    end: i64,
    step: i64,
    group_by: &[String],
    exemplars: bool,
) -> Vec<t::HeatmapSeries> {
    let values = groups.groups.values().flat_map(|g| g.points.iter().map(|(p, _)| p.value));
    let (Some(lo), Some(hi)) = (values.clone().min(), values.max()) else {
        return Vec::new();
    };
    let buckets = value_buckets(lo, hi);
    let mut out = Vec::with_capacity(groups.groups.len());
    for (labels, g) in &groups.groups {
        // (slot, bucket) → (count, the point with the largest value)
        let mut cells: BTreeMap<(i64, usize), (i32, (HeatPoint, u32))> = BTreeMap::new();
        for &(p, series) in &g.points {
            let Some(b) = bucket_of(p.value, &buckets) else { continue };
            let cell = cells.entry((slot_of(p.ts_ms, start, end, step), b)).or_insert((0, (p, series)));
            cell.0 = cell.0.saturating_add(1);
            if p.value > cell.1 .0.value {
                cell.1 = (p, series);
            }
        }
        let mut slots: Vec<t::HeatmapSlot> = Vec::new();
        for ((ts, b), (count, (best, series))) in cells {
            if slots.last().is_none_or(|s| s.timestamp != ts) {
                slots.push(t::HeatmapSlot {
                    timestamp: ts,
                    y_min: buckets.iter().map(|b| b.min as f64).collect(),
                    counts: vec![0; buckets.len()],
                    exemplars: Vec::new(),
                });
            }
            let slot = slots.last_mut().expect("pushed above");
            slot.counts[b] = count;
            if exemplars {
                if let Some(e) = exemplar(&best, &groups.series[series as usize], group_by) {
                    slot.exemplars.push(e);
                }
            }
        }
        out.push(t::HeatmapSeries {
            labels: labels.iter().map(|(k, v)| t::LabelPair { name: k.into(), value: v.into() }).collect(),
            slots,
        });
    }
    out
}

/// `SelectSeries` exemplars: per group and step (the point's time, the first step boundary
/// at or after a profile, as `SelectSeries` buckets it), the largest point of that step.
pub fn step_exemplars(
    groups: &Groups,
    start: i64,
    step: i64,
    group_by: &[String],
) -> BTreeMap<(Labels, i64), t::Exemplar> {
    let mut best: BTreeMap<(Labels, i64), (HeatPoint, u32)> = BTreeMap::new();
    for (labels, g) in &groups.groups {
        for &(p, series) in &g.points {
            let e = best.entry((labels.clone(), step_end(p.ts_ms, start, step))).or_insert((p, series));
            if p.value > e.0.value {
                *e = (p, series);
            }
        }
    }
    best.into_iter()
        .filter_map(|(k, (p, series))| exemplar(&p, &groups.series[series as usize], group_by).map(|e| (k, e)))
        .collect()
}

/// A point as an exemplar: its span id (if any) and its series' labels without the
/// `group_by` ones. None when it would name nothing (kiln keeps no profile ids).
fn exemplar(p: &HeatPoint, labels: &Labels, group_by: &[String]) -> Option<t::Exemplar> {
    let labels: Vec<t::LabelPair> = labels
        .iter()
        .filter(|(k, _)| !group_by.iter().any(|g| g == k) && !k.starts_with("__"))
        .map(|(k, v)| t::LabelPair { name: k.into(), value: v.into() })
        .collect();
    let span_id = if p.span != 0 { format_span_id(p.span) } else { String::new() };
    if span_id.is_empty() && labels.is_empty() {
        return None;
    }
    Some(t::Exemplar { timestamp: p.ts_ms, span_id, value: p.value, labels, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(ts_ms: i64, value: i64, span: u64) -> HeatPoint {
        HeatPoint { ts_ms, value, span }
    }

    #[test]
    fn slots_end_on_the_step_grid_from_start() {
        // Slots (start-step, start], (start, start+step], ...
        assert_eq!(slot_of(1000, 1000, 5000, 1000), 1000);
        assert_eq!(slot_of(1001, 1000, 5000, 1000), 2000);
        assert_eq!(slot_of(2000, 1000, 5000, 1000), 2000);
        assert_eq!(slot_of(10, 1000, 5000, 1000), 1000);
        assert_eq!(slot_of(9000, 1000, 5000, 1000), 5000);
        assert_eq!(slot_of(4600, 1500, 4700, 1000), 5500);
    }

    #[test]
    fn values_fall_in_twenty_even_buckets_the_largest_in_the_last() {
        let b = value_buckets(0, 100);
        assert_eq!(b.len(), VALUE_BUCKETS);
        assert_eq!((b[0].min, b[1].min, b[19].min, b[19].max), (0, 5, 95, 100));
        assert_eq!(bucket_of(0, &b), Some(0));
        assert_eq!(bucket_of(4, &b), Some(0));
        assert_eq!(bucket_of(5, &b), Some(1));
        assert_eq!(bucket_of(100, &b), Some(19));
        assert_eq!(bucket_of(-1, &b), None);
        // One value only: the range is one wide, every bucket but the last empty (as
        // Pyroscope's, whose integer bounds repeat), so it lands in the last.
        let one = value_buckets(7, 7);
        assert_eq!(bucket_of(7, &one), Some(VALUE_BUCKETS - 1));
        // Narrow ranges repeat bounds; a value goes to the bucket whose [min, max) holds it.
        let narrow = value_buckets(0, 10);
        assert_eq!((bucket_of(0, &narrow), bucket_of(1, &narrow), bucket_of(9, &narrow)), (Some(1), Some(3), Some(19)));
    }

    #[test]
    fn cells_count_points_and_keep_the_largest_as_exemplar() {
        let mut g = Groups::default();
        let by = vec!["pod".to_string()];
        let a = Labels::from_pairs([("pod", "a"), ("service_name", "s")]);
        let b = Labels::from_pairs([("pod", "b"), ("service_name", "s")]);
        g.add(a.clone(), vec![pt(1500, 10, 0), pt(1600, 30, 0), pt(2500, 100, 0)], &by);
        g.add(b, vec![pt(1200, 30, 0)], &by);
        // The same group from another reader adds its points to the group's cells.
        g.add(a, vec![pt(1700, 31, 0)], &by);
        let out = build(&g, 1000, 3000, 1000, &by, true);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].labels, vec![t::LabelPair { name: "pod".into(), value: "a".into() }]);
        let s = &out[0].slots;
        assert_eq!(s.iter().map(|s| s.timestamp).collect::<Vec<_>>(), [2000, 3000]);
        // Values 10..=100 in buckets of 4.5: 10 → 0, 30 and 31 → 4, 100 → 19.
        assert_eq!(s[0].counts.iter().enumerate().filter(|c| *c.1 > 0).collect::<Vec<_>>(), [(0, &1), (4, &2)]);
        assert_eq!(s[0].exemplars.iter().map(|e| e.value).collect::<Vec<_>>(), [10, 31]);
        assert_eq!(s[0].exemplars[1].labels, vec![t::LabelPair { name: "service_name".into(), value: "s".into() }]);
        assert_eq!(s[1].counts[19], 1);
        assert_eq!(s[0].y_min.len(), VALUE_BUCKETS);
        assert!(build(&g, 1000, 3000, 1000, &by, false)[0].slots[0].exemplars.is_empty());
        // The largest group alone.
        g.keep_top(1);
        assert_eq!(g.groups.len(), 1);
        assert_eq!(g.groups.keys().next().unwrap().get("pod"), Some("a"));
    }

    #[test]
    fn span_points_name_their_span() {
        let mut g = Groups::default();
        g.add(Labels::from_pairs([("service_name", "s")]), vec![pt(10, 5, 0x0807060504030201)], &[]);
        let out = build(&g, 0, 100, 50, &[], true);
        assert_eq!(out[0].slots[0].exemplars[0].span_id, "0102030405060708");
    }
}
