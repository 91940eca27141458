//! The head: a core's in-memory profiles for one tenant.
//!
//! Ownership: a `TenantHead` is owned by one core's `Ingester` and touched only by that core;
//! other cores reach it by sending messages. Profiles are kept as columns per series: for
//! profile i, its samples are `stacks[offsets[i]..offsets[i+1]]` with the matching `values`,
//! sorted by stack id with no duplicates and no zeros.
use crate::eval::{HeadView, Series};
use crate::model::labels::{self, Labels};
use crate::model::profile::{Profile, SampleGroup};
use crate::model::symbols::{Remap, StackBatch, Symbols};
use crate::query::{QueryRequest, QueryResult};
use rustc_hash::FxHashMap;

#[derive(Debug, Default)]
pub struct TenantHead {
    pub symbols: Symbols,
    pub series: Vec<Series>,
    by_fingerprint: FxHashMap<u64, Vec<u32>>,
    by_profile_type: FxHashMap<String, Vec<u32>>,
    pub min_ns: i64,
    pub max_ns: i64,
    pub profiles: u64,
    pub samples: u64,
    /// Span samples (kept beside `samples`, see `eval::SpanSamples`).
    pub span_samples: u64,
    /// What the series themselves cost (labels, type id, columns' fixed part), charged as
    /// each series is created: a series with long labels costs what it holds, not a guess.
    series_bytes: usize,
    /// Series that hold at least one profile (rolled-back series are kept, empty).
    pub live_series: usize,
}

/// One profile row a push appended: (series index, row index within the series).
pub type RowRef = (u32, u32);

/// Bytes a series costs before its first profile: its labels and type id, the `Series`
/// struct and its index entries.
fn series_cost(labels: &Labels, type_id: &str) -> usize {
    const FIXED: usize = std::mem::size_of::<Series>() + 64;
    FIXED + type_id.len() + labels.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>()
}

/// What one append added, for metrics and limits.
#[derive(Debug, Default, Clone, Copy)]
pub struct AppendStats {
    pub profiles: u64,
    pub samples: u64,
    pub new_series: u64,
}

/// A profile's stacks as interned so far (`TenantHead::intern_stacks`): the head's id of
/// each sample's stack, in group order, and the profile's symbols mapped to the head's.
pub struct Interning {
    remap: Remap,
    ids: Vec<u32>,
    batch: StackBatch,
    /// What the interning added to the head's `approx_bytes`: the push's own symbols, which
    /// a limit checked before its rows are added leaves out, as it would for a push
    /// appended in one piece.
    added_bytes: usize,
}

impl Interning {
    pub fn new(p: &Profile) -> Self {
        // The keys were read after the profile changed (see `StackKeys`): a stack would be
        // taken for another. Checked where tests run.
        debug_assert!(
            *p.stack_keys() == *crate::model::stackkey::compute(p),
            "a profile changed after its stack keys were read"
        );
        Interning { remap: Remap::new(p), ids: Vec::new(), batch: StackBatch::default(), added_bytes: 0 }
    }

    pub fn added_bytes(&self) -> usize {
        self.added_bytes
    }
}

/// Stacks looked up together (`Symbols::intern_keyed`): enough for their index lookups to
/// overlap, few enough that the lookups of a batch a step's budget cuts short are not many.
const STACK_BATCH: usize = 32;

/// Frames a profile's stacks have in `groups` (plus one per sample): the work of interning
/// them, which `intern_stacks` spends in steps.
pub fn stack_frames(p: &Profile, groups: &[SampleGroup]) -> usize {
    groups.iter().flat_map(|g| &g.samples).map(|&si| p.samples[si as usize].locations.len() + 1).sum()
}

/// The labels every sample type adds to a group's labels.
pub fn series_labels(base: &Labels, p: &Profile, type_index: usize) -> (Labels, String) {
    let st = p.sample_types[type_index];
    let mut l = base.clone();
    let name = base.get(labels::NAME).unwrap_or("").to_string();
    let (pt, pu) = match p.period_type {
        Some(v) => (p.string(v.r#type).to_string(), p.string(v.unit).to_string()),
        None => (String::new(), String::new()),
    };
    let id = format!("{}:{}:{}:{}:{}", name, p.string(st.r#type), p.string(st.unit), pt, pu);
    l.set(labels::TYPE, p.string(st.r#type));
    l.set(labels::UNIT, p.string(st.unit));
    if p.period_type.is_some() {
        l.set(labels::PERIOD_TYPE, pt);
        l.set(labels::PERIOD_UNIT, pu);
    }
    if let Some(s) = base.get(labels::SERVICE_NAME) {
        let s = s.to_string();
        l.set(labels::SERVICE_NAME_PRIVATE, s);
    }
    l.set(labels::PROFILE_TYPE, id.clone());
    (l, id)
}

impl TenantHead {
    /// The one append path: every accepted profile enters the head here (and, once the WAL
    /// exists, is replayed through here).
    pub fn append(&mut self, tenant: &str, p: &Profile, groups: &[SampleGroup]) -> AppendStats {
        self.append_tracked(tenant, p, groups, &mut Vec::new())
    }

    /// `append`, noting in `rows` every profile row it adds, so that a push refused after
    /// its append (another owner failed, the WAL write failed) can be taken out again
    /// (`remove_rows`).
    pub fn append_tracked(
        &mut self,
        tenant: &str,
        p: &Profile,
        groups: &[SampleGroup],
        rows: &mut Vec<RowRef>,
    ) -> AppendStats {
        let mut interning = Interning::new(p);
        self.intern_stacks(p, groups, &mut interning, usize::MAX);
        self.append_interned(tenant, p, groups, &interning, rows)
    }

    /// Interns the stacks of `groups`' samples (in group order) from where `interning` left
    /// off, until about `frames` frames were walked (a stack found by its key counting as
    /// one, a location mapped for the first time as `LOCATION_FRAMES`) or every stack is
    /// interned (then `true`).
    /// Interning adds symbols only, which no query reaches without a row: a large profile's
    /// stacks can be interned in steps with other pushes appended in between, and its rows
    /// added at once after (`append_interned`). The ids stay valid while this head is live.
    pub fn intern_stacks(
        &mut self,
        p: &Profile,
        groups: &[SampleGroup],
        interning: &mut Interning,
        frames: usize,
    ) -> bool {
        let before = self.approx_bytes();
        let done = self.intern_some(p, groups, interning, frames);
        interning.added_bytes += self.approx_bytes().saturating_sub(before);
        done
    }

    fn intern_some(&mut self, p: &Profile, groups: &[SampleGroup], interning: &mut Interning, frames: usize) -> bool {
        let budget = frames.max(1);
        let mut skip = interning.ids.len();
        let mut walked = 0usize;
        for g in groups {
            if skip >= g.samples.len() {
                skip -= g.samples.len();
                continue;
            }
            let mut rest = &g.samples[skip..];
            while !rest.is_empty() {
                if walked >= budget {
                    return false;
                }
                // A batch of stacks, looked up together, taken while the budget lasts.
                let batch = &rest[..rest.len().min(STACK_BATCH)];
                let (taken, frames) = self.symbols.intern_keyed(
                    p,
                    &mut interning.remap,
                    batch,
                    budget - walked,
                    &mut interning.batch,
                    &mut interning.ids,
                );
                walked += frames;
                rest = &rest[taken..];
            }
            skip = 0;
        }
        true
    }

    /// Adds the profile rows of `groups` whose stacks `interning` holds, all of them
    /// (`intern_stacks` returned `true` on this head): the one step that makes the push
    /// visible, never split.
    pub fn append_interned(
        &mut self,
        tenant: &str,
        p: &Profile,
        groups: &[SampleGroup],
        interning: &Interning,
        rows: &mut Vec<RowRef>,
    ) -> AppendStats {
        let mut stats = AppendStats::default();
        let mut pairs: Vec<(u32, usize)> = Vec::new();
        // The samples taken in a span: (stack, span, sample index), then per sample type the
        // (stack, span, value) a profile row keeps beside its samples.
        let mut spanned: Vec<(u32, u64, usize)> = Vec::new();
        let mut span_row: Vec<(u32, u64, i64)> = Vec::new();
        let mut ids = interning.ids.iter().copied();
        for g in groups {
            // Each stack was interned once for all sample types.
            pairs.clear();
            spanned.clear();
            for &si in &g.samples {
                let s = &p.samples[si as usize];
                let id = ids.next().expect("every sample's stack is interned before its rows are added");
                pairs.push((id, si as usize));
                if s.span_id != 0 {
                    spanned.push((id, s.span_id, si as usize));
                }
            }
            pairs.sort_unstable_by_key(|(id, _)| *id);
            spanned.sort_unstable_by_key(|&(id, span, _)| (id, span));
            for t in 0..p.sample_types.len() {
                let (labels, type_id) = series_labels(&g.labels, p, t);
                let fp = labels.fingerprint(tenant);
                let sref = match self.find(fp, &labels) {
                    Some(r) => r,
                    None => {
                        stats.new_series += 1;
                        self.insert_series(fp, labels, type_id)
                    }
                };
                let series = &mut self.series[sref as usize];
                let mut total = 0i64;
                let start = series.stacks.len();
                for &(id, si) in &pairs {
                    let v = p.samples[si].values[t];
                    if v == 0 {
                        continue;
                    }
                    total = total.saturating_add(v);
                    if series.stacks.len() > start && *series.stacks.last().unwrap() == id {
                        let last = series.values.last_mut().unwrap();
                        *last = last.saturating_add(v);
                    } else {
                        series.stacks.push(id);
                        series.values.push(v);
                    }
                }
                // A fully-zero profile still records its timestamp: Pyroscope keeps the row.
                let n = (series.stacks.len() - start) as u64;
                if series.timestamps.is_empty() {
                    self.live_series += 1;
                }
                span_row.clear();
                for &(id, span, si) in &spanned {
                    let v = p.samples[si].values[t];
                    match span_row.last_mut() {
                        _ if v == 0 => {}
                        Some(last) if (last.0, last.1) == (id, span) => last.2 = last.2.saturating_add(v),
                        _ => span_row.push((id, span, v)),
                    }
                }
                rows.push((sref, series.timestamps.len() as u32));
                series.timestamps.push(p.time_nanos);
                series.totals.push(total);
                series.offsets.push(series.stacks.len() as u32);
                series.push_span_samples(span_row.iter().copied());
                self.span_samples += span_row.len() as u64;
                stats.profiles += 1;
                stats.samples += n;
            }
        }
        if self.profiles == 0 {
            (self.min_ns, self.max_ns) = (p.time_nanos, p.time_nanos);
        }
        self.min_ns = self.min_ns.min(p.time_nanos);
        self.max_ns = self.max_ns.max(p.time_nanos);
        self.profiles += stats.profiles;
        self.samples += stats.samples;
        stats
    }

    /// Takes profile rows out again (a refused push's). `rows` may come in any order; the
    /// caller fixes up its other row references with `shift_after_removal`. Interned
    /// symbols stay (no query reaches them without a row); a series left empty stays too,
    /// invisible to queries (they select series with a profile in range) and to blocks.
    pub fn remove_rows(&mut self, rows: &mut [RowRef]) {
        rows.sort_unstable_by(|a, b| b.cmp(a));
        for &(sref, row) in rows.iter() {
            let Some(s) = self.series.get_mut(sref as usize) else { continue };
            let i = row as usize;
            if i >= s.timestamps.len() {
                continue;
            }
            let (a, b) = (s.offsets[i] as usize, s.offsets[i + 1] as usize);
            s.stacks.drain(a..b);
            s.values.drain(a..b);
            s.timestamps.remove(i);
            s.totals.remove(i);
            s.offsets.remove(i + 1);
            for o in &mut s.offsets[i + 1..] {
                *o -= (b - a) as u32;
            }
            if let Some(sp) = &mut s.spans {
                let (c, d) = (sp.offsets[i] as usize, sp.offsets[i + 1] as usize);
                sp.stacks.drain(c..d);
                sp.values.drain(c..d);
                sp.spans.drain(c..d);
                sp.offsets.remove(i + 1);
                for o in &mut sp.offsets[i + 1..] {
                    *o -= (d - c) as u32;
                }
                self.span_samples = self.span_samples.saturating_sub((d - c) as u64);
            }
            self.profiles = self.profiles.saturating_sub(1);
            self.samples = self.samples.saturating_sub((b - a) as u64);
            if s.timestamps.is_empty() {
                self.live_series = self.live_series.saturating_sub(1);
            }
        }
    }

    /// Whether appending `groups` would create more than `room` new series: the series
    /// limit is checked before anything is appended.
    pub fn new_series_exceed(&self, tenant: &str, p: &Profile, groups: &[SampleGroup], room: usize) -> bool {
        if groups.len() * p.sample_types.len() <= room {
            return false;
        }
        let mut new = rustc_hash::FxHashSet::default();
        for g in groups {
            for t in 0..p.sample_types.len() {
                let (labels, _) = series_labels(&g.labels, p, t);
                let fp = labels.fingerprint(tenant);
                let empty = self.find(fp, &labels).is_none_or(|r| self.series[r as usize].timestamps.is_empty());
                if empty && new.insert(fp) && new.len() > room {
                    return true;
                }
            }
        }
        false
    }

    fn find(&self, fp: u64, labels: &Labels) -> Option<u32> {
        self.by_fingerprint.get(&fp)?.iter().copied().find(|r| self.series[*r as usize].labels == *labels)
    }

    fn insert_series(&mut self, fp: u64, labels: Labels, type_id: String) -> u32 {
        let r = self.series.len() as u32;
        self.series_bytes += series_cost(&labels, &type_id);
        self.by_fingerprint.entry(fp).or_default().push(r);
        self.by_profile_type.entry(type_id.clone()).or_default().push(r);
        self.series.push(Series::new(labels, type_id));
        r
    }

    /// The head as a query reads it; `tenant` is whose head it is, `source` the instance
    /// holding it (see `query::KeyFilter`; empty alone).
    pub fn view<'a>(&'a self, tenant: &'a str, source: &'a str) -> HeadView<'a> {
        HeadView {
            tenant,
            source,
            symbols: &self.symbols,
            series: &self.series,
            by_profile_type: Some(&self.by_profile_type),
        }
    }

    pub fn query(&self, tenant: &str, q: &QueryRequest) -> QueryResult {
        self.view(tenant, "").query(q)
    }

    /// An O(1) estimate of `heap_bytes`, checked on every push against the head limit.
    pub fn approx_bytes(&self) -> usize {
        self.symbols.approx_bytes()
            + self.samples as usize * 12
            + self.span_samples as usize * 20
            + self.profiles as usize * 24
            + self.series_bytes
    }

    pub fn heap_bytes(&self) -> usize {
        self.symbols.heap_bytes()
            + self
                .series
                .iter()
                .map(|s| {
                    s.timestamps.len() * 20
                        + s.stacks.len() * 12
                        + s.spans.as_ref().map_or(0, |sp| sp.offsets.len() * 4 + sp.stacks.len() * 20)
                })
                .sum::<usize>()
            + self.series_bytes
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::profile::{Function, Line, Location, Mapping, Sample, ValueType};
    use crate::model::selector::parse_selector;
    use crate::query::{FlameTree, PprofPart, Selection};
    use std::collections::BTreeMap;

    pub(crate) fn folded(stacks: &[(&str, i64)], ts: i64) -> Profile {
        let mut p = Profile {
            strings: vec!["".into(), "samples".into(), "count".into()],
            sample_types: vec![ValueType { r#type: 1, unit: 2 }],
            time_nanos: ts,
            ..Default::default()
        };
        let mut fn_ids: FxHashMap<String, u32> = FxHashMap::default();
        for (stack, v) in stacks {
            let mut locs = Vec::new();
            for frame in stack.split(';') {
                let id = *fn_ids.entry(frame.to_string()).or_insert_with(|| {
                    p.strings.push(frame.to_string());
                    p.functions.push(Function { name: p.strings.len() as u32 - 1, ..Default::default() });
                    p.locations.push(Location {
                        lines: vec![Line { function: p.functions.len() as u32 - 1, line: 0 }],
                        ..Default::default()
                    });
                    p.locations.len() as u32 - 1
                });
                locs.push(id);
            }
            locs.reverse();
            p.samples.push(Sample { locations: locs, values: vec![*v], span_id: 0 });
        }
        p
    }

    pub(crate) fn group(p: &Profile, labels: &[(&str, &str)]) -> Vec<SampleGroup> {
        vec![SampleGroup {
            labels: Labels::from_pairs(labels.iter().copied()),
            samples: (0..p.samples.len() as u32).collect(),
        }]
    }

    fn sel(pt: &str, selector: &str) -> Selection {
        Selection {
            tenants: vec!["t".into()],
            profile_type: Some(pt.into()),
            matchers: parse_selector(selector).unwrap(),
            start_ms: 0,
            end_ms: i64::MAX / 2_000_000,
            keys: None,
            epoch: None,
            report_read: false,
            spans: None,
        }
    }

    #[test]
    fn merges_duplicate_stacks_and_drops_zeros() {
        let p = folded(&[("a;b", 1), ("a;b", 2), ("a;c", 0)], 1_000_000_000);
        let mut h = TenantHead::default();
        let st = h.append("t", &p, &group(&p, &[("__name__", "x"), ("service_name", "svc")]));
        assert_eq!(st.samples, 1);
        assert_eq!(h.series.len(), 1);
        assert_eq!(h.series[0].totals, vec![3]);
        assert_eq!(h.series[0].labels.get("__profile_type__"), Some("x:samples:count::"));
        assert_eq!(h.series[0].labels.get("__service_name__"), Some("svc"));
    }

    #[test]
    fn flame_tree_sums_values() {
        let p = folded(&[("a;b;e", 1), ("a;c", 2), ("a;c;d", 1)], 5_000_000);
        let mut h = TenantHead::default();
        h.append("t", &p, &group(&p, &[("__name__", "x"), ("service_name", "svc")]));
        let QueryResult::Tree(t) =
            h.query("t", &QueryRequest::MergeTree(sel("x:samples:count::", "{service_name=\"svc\"}")))
        else {
            panic!()
        };
        let total: i64 = t.nodes.iter().map(|n| n.2).sum();
        assert_eq!(total, 4);
        for (i, n) in t.nodes.iter().enumerate().skip(1) {
            assert!((n.0 as usize) < i);
        }
        let QueryResult::Tree(empty) =
            h.query("t", &QueryRequest::MergeTree(sel("x:samples:count::", "{service_name=\"other\"}")))
        else {
            panic!()
        };
        assert_eq!(empty.nodes.len(), 1);
    }

    /// A profile over 7 locations whose names collide as flame graph frames: locations 0–2
    /// and 3 are functions f0–f2 and f0 again, 4 inlines f1 into f2 (two frames), 5 is f1
    /// again and 6 has no symbols (an address).
    fn colliding(stacks: &[(Vec<u32>, i64)], ts: i64) -> Profile {
        let mut p = Profile {
            strings: vec!["".into(), "samples".into(), "count".into(), "f0".into(), "f1".into(), "f2".into()],
            sample_types: vec![ValueType { r#type: 1, unit: 2 }],
            time_nanos: ts,
            ..Default::default()
        };
        p.functions = (3..6).map(|name| Function { name, ..Default::default() }).collect();
        let line = |function| Line { function, line: 0 };
        let lines = [vec![line(0)], vec![line(1)], vec![line(2)], vec![line(0)], vec![line(1), line(2)], vec![line(1)]];
        p.locations = lines.into_iter().map(|lines| Location { lines, ..Default::default() }).collect();
        p.locations.push(Location { address: 0x1f, ..Default::default() });
        p.samples =
            stacks.iter().map(|(locs, v)| Sample { locations: locs.clone(), values: vec![*v], span_id: 0 }).collect();
        p
    }

    /// Value per root-first path of names: of a flame tree, and of a pprof part (each
    /// location's frames outermost first, an address as `0x…`).
    fn tree_paths(t: &FlameTree) -> BTreeMap<Vec<String>, i64> {
        let mut path_of: Vec<Vec<String>> = vec![Vec::new()];
        let mut out = BTreeMap::new();
        for &(parent, name, v) in &t.nodes[1..] {
            let mut path = path_of[parent as usize].clone();
            path.push(t.names[name as usize].clone());
            // A path is one node: siblings never share a name.
            assert!(out.insert(path.clone(), v).is_none(), "{path:?} twice");
            path_of.push(path);
        }
        out.retain(|_, v| *v != 0);
        out
    }

    fn pprof_paths(p: &PprofPart) -> BTreeMap<Vec<String>, i64> {
        let mut out = BTreeMap::new();
        for (locs, v) in &p.samples {
            let mut path = Vec::new();
            for &l in locs.iter().rev() {
                let rec = &p.locations[l as usize];
                if rec.lines.is_empty() {
                    path.push(format!("0x{:x}", rec.address));
                }
                for line in rec.lines.iter().rev() {
                    path.push(p.strings[p.functions[line.function as usize].name as usize].clone());
                }
            }
            *out.entry(path).or_insert(0) += v;
        }
        out.retain(|_, v| *v != 0);
        out
    }

    proptest::proptest! {
        /// The flame tree (stack nodes marked from the samples, resolved in one pass, values
        /// added up per sample) holds what the per-stack sums of the pprof path make, with
        /// names colliding across locations, inlined frames, addresses, repeated stacks and
        /// profiles out of the queried range.
        #[test]
        fn flame_tree_agrees_with_the_stack_sums(
            profiles in proptest::collection::vec(
                proptest::collection::vec((proptest::collection::vec(0u32..7, 1..5), 1i64..50), 1..12),
                1..4,
            ),
            end_s in 1i64..4,
        ) {
            let mut h = TenantHead::default();
            for (i, stacks) in profiles.iter().enumerate() {
                let p = colliding(stacks, (i as i64 + 1) * 1_000_000_000 - 1);
                h.append("t", &p, &group(&p, &[("__name__", "x"), ("service_name", "svc")]));
            }
            let mut s = sel("x:samples:count::", "{}");
            s.end_ms = end_s * 1000;
            let QueryResult::Tree(t) = h.query("t", &QueryRequest::MergeTree(s.clone())) else { panic!() };
            let QueryResult::Pprof(p) = h.query("t", &QueryRequest::MergeProfile(s)) else { panic!() };
            for (i, n) in t.nodes.iter().enumerate().skip(1) {
                proptest::prop_assert!((n.0 as usize) < i);
            }
            proptest::prop_assert_eq!(tree_paths(&t), pprof_paths(&p));
        }
    }

    /// Value per root-first path of names, read from a pushed profile itself.
    fn profile_paths(p: &Profile) -> BTreeMap<Vec<String>, i64> {
        let mut out = BTreeMap::new();
        for s in &p.samples {
            let mut path = Vec::new();
            for &l in s.locations.iter().rev() {
                let loc = &p.locations[l as usize];
                if loc.lines.is_empty() {
                    path.push(format!("0x{:x}", loc.address));
                }
                for line in loc.lines.iter().rev() {
                    path.push(p.string(p.functions[line.function as usize].name).to_string());
                }
            }
            *out.entry(path).or_insert(0) += s.values[0];
        }
        // An empty stack's value is the root's alone.
        out.retain(|path, v| *v != 0 && !path.is_empty());
        out
    }

    /// `p` with its location table in the order `perm` (new index i holds old `perm[i]`),
    /// the samples pointing at the same locations.
    fn permuted(p: &Profile, perm: &[usize]) -> Profile {
        let mut q = p.clone();
        q.locations = perm.iter().map(|&old| p.locations[old].clone()).collect();
        let mut new_of = vec![0u32; perm.len()];
        for (new, &old) in perm.iter().enumerate() {
            new_of[old] = new as u32;
        }
        for s in &mut q.samples {
            for l in &mut s.locations {
                *l = new_of[*l as usize];
            }
        }
        q
    }

    proptest::proptest! {
        /// The same stacks pushed again, with the profile's tables in another order, are
        /// found by their content keys: no stack is added, and each sample lands on the stack
        /// it landed on the first time (the flame graph doubles).
        #[test]
        fn a_push_of_known_stacks_in_another_table_order_adds_none(
            stacks in proptest::collection::vec((proptest::collection::vec(0u32..7, 0..5), 1i64..50), 1..12),
            seed in 0u64..1000,
        ) {
            let p = colliding(&stacks, 1_000_000_000);
            let mut perm: Vec<usize> = (0..p.locations.len()).collect();
            let mut d = Dice(seed);
            for i in (1..perm.len()).rev() {
                perm.swap(i, d.below(i as u64 + 1) as usize);
            }
            let q = permuted(&p, &perm);
            let labels = [("__name__", "x"), ("service_name", "svc")];
            let mut h = TenantHead::default();
            h.append("t", &p, &group(&p, &labels));
            let (nodes, locations) = (h.symbols.stack_count(), h.symbols.locations.len());
            let QueryResult::Tree(once) = h.query("t", &QueryRequest::MergeTree(sel("x:samples:count::", "{}"))) else { panic!() };
            proptest::prop_assert_eq!(tree_paths(&once), profile_paths(&p));
            h.append("t", &q, &group(&q, &labels));
            proptest::prop_assert_eq!((h.symbols.stack_count(), h.symbols.locations.len()), (nodes, locations));
            let QueryResult::Tree(twice) = h.query("t", &QueryRequest::MergeTree(sel("x:samples:count::", "{}"))) else { panic!() };
            let doubled: BTreeMap<_, _> = tree_paths(&once).into_iter().map(|(k, v)| (k, 2 * v)).collect();
            proptest::prop_assert_eq!(tree_paths(&twice), doubled);
        }
    }

    #[test]
    fn select_series_buckets() {
        let mut h = TenantHead::default();
        for (ts_s, v) in [(1, 1), (10, 2), (11, 4), (30, 8)] {
            let p = folded(&[("a", v)], ts_s * 1_000_000_000);
            h.append("t", &p, &group(&p, &[("__name__", "x"), ("service_name", "s")]));
        }
        let mut s = sel("x:samples:count::", "{}");
        s.start_ms = 0;
        s.end_ms = 40_000;
        let QueryResult::Series(v) =
            h.query("t", &QueryRequest::SelectSeries { sel: s, step_ms: 10_000, group_by: vec![] })
        else {
            panic!()
        };
        let pts: Vec<(i64, f64)> = v[0].1.iter().map(|(t, b)| (*t, b.sum)).collect();
        assert_eq!(pts, vec![(10_000, 3.0), (20_000, 4.0), (30_000, 8.0)]);
    }

    /// A deterministic source of small numbers (splitmix64), for profiles built at random.
    struct Dice(u64);

    impl Dice {
        fn next(&mut self) -> u64 {
            crate::ring::shuffle::splitmix64(&mut self.0)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        /// An index into a table of `n`: one time in fifty just past its end (or far past
        /// it), so that some profiles break `check` in every way it looks at.
        fn index(&mut self, n: usize) -> u32 {
            match self.below(100) {
                0 => n as u32,
                1 => u32::MAX,
                _ => self.below(n as u64) as u32,
            }
        }
        fn value(&mut self) -> i64 {
            match self.below(6) {
                0 => i64::MAX,
                1 => i64::MIN,
                2 => 0,
                _ => self.below(100) as i64 - 20,
            }
        }
    }

    /// A profile and groups with every table and index drawn at random, most of them in range.
    fn random_profile(d: &mut Dice) -> (Profile, Vec<SampleGroup>) {
        let word = |d: &mut Dice| ["", "a", "cpu", "nanoseconds", "__name__", "service_name", "x"][d.below(7) as usize];
        let ns = 1 + d.below(5) as usize;
        let mut strings: Vec<String> = (0..ns).map(|_| word(d).to_string()).collect();
        if d.below(8) != 0 {
            strings[0].clear();
        }
        let nt = d.below(4) as usize;
        let vt = |d: &mut Dice| ValueType { r#type: d.index(ns), unit: d.index(ns) };
        let sample_types = (0..nt).map(|_| vt(d)).collect();
        let period_type = (d.below(2) == 0).then(|| vt(d));
        let nm = d.below(3) as usize;
        let mappings = (0..nm)
            .map(|_| Mapping {
                filename: d.index(ns),
                build_id: d.index(ns),
                has_functions: true,
                ..Default::default()
            })
            .collect();
        let nf = d.below(4) as usize;
        let functions = (0..nf)
            .map(|_| Function {
                name: d.index(ns),
                system_name: d.index(ns),
                filename: d.index(ns),
                start_line: d.value(),
            })
            .collect();
        // A location's mapping counts from one (0 is none): `nm` is the last valid one.
        let nl = d.below(6) as usize;
        let locations = (0..nl)
            .map(|_| Location {
                mapping: d.index(nm + 1),
                address: d.next(),
                lines: (0..d.below(3)).map(|_| Line { function: d.index(nf), line: d.value() }).collect(),
            })
            .collect();
        let nsamples = d.below(8) as usize;
        let samples = (0..nsamples)
            .map(|_| {
                // One value per sample type, but now and then one more or one fewer.
                let nv = match d.below(64) {
                    0 => nt + 1,
                    1 => nt.saturating_sub(1),
                    _ => nt,
                };
                Sample {
                    locations: (0..d.below(5)).map(|_| d.index(nl)).collect(),
                    values: (0..nv).map(|_| d.value()).collect(),
                    span_id: 0,
                }
            })
            .collect();
        let groups = (0..d.below(3))
            .map(|_| SampleGroup {
                labels: Labels::from_pairs((0..d.below(3)).map(|_| (word(d), word(d)))),
                // Repeats allowed: the head must take a sample listed twice.
                samples: (0..d.below(6)).map(|_| d.index(nsamples)).collect(),
            })
            .collect();
        let p = Profile {
            strings,
            sample_types,
            period_type,
            period: d.value(),
            time_nanos: d.value(),
            duration_nanos: d.value(),
            mappings,
            functions,
            locations,
            samples,
            keys: Default::default(),
        };
        (p, groups)
    }

    /// What a replica's push relies on (`kiln::ingester::remote`): a profile that passes
    /// `Profile::check`, sent as a WAL record and decoded again, appends to a head, can be
    /// taken out again and queried, without panicking. If `check` missed an index the head
    /// follows, a hostile peer could stop a core; this is where it would show.
    #[test]
    fn checked_random_profiles_append_without_panicking() {
        use crate::ingester::walcodec;
        let mut d = Dice(0x6b69_6c6e);
        let (mut passed, mut refused) = (0, 0);
        let mut h = TenantHead::default();
        for round in 0..10_000 {
            let (p, groups) = random_profile(&mut d);
            if p.check(&groups).is_err() {
                refused += 1;
                continue;
            }
            passed += 1;
            // As the profile is, and as the WAL record a replica sends decodes.
            TenantHead::default().append("t", &p, &groups);
            let (t, q, g) = walcodec::decode(&walcodec::encode("t", &p, &groups)).expect("a checked profile's record");
            q.check(&g).expect("a checked profile's record decodes to a checked profile");
            let mut rows = Vec::new();
            h.new_series_exceed(&t, &q, &g, 1);
            h.append_tracked(&t, &q, &g, &mut rows);
            // A refused push is taken out again; every other profile stays.
            if round % 3 == 0 {
                h.remove_rows(&mut rows);
            }
        }
        // Neither all refused (the test would append nothing) nor all passed (`check` would
        // be seen refusing nothing).
        assert!(passed > 1000 && refused > 1000, "{passed} passed, {refused} refused");
        assert!(h.profiles > 0);
        let types: Vec<String> = h.by_profile_type.keys().cloned().collect();
        for pt in types {
            let mut s = sel(&pt, "{}");
            s.start_ms = i64::MIN / 2_000_000;
            for q in [
                QueryRequest::MergeTree(s.clone()),
                QueryRequest::MergeProfile(s.clone()),
                QueryRequest::Series(s.clone(), vec![]),
                QueryRequest::SelectSeries { sel: s.clone(), step_ms: 1000, group_by: vec!["a".into()] },
            ] {
                h.query("t", &q);
            }
        }
    }
}
