//! Query evaluation over series columns: heads and blocks answer every query with the same
//! code. A `Series` is one series' profiles as columns; a `HeadView` is what a query reads (a
//! symbol table and series): a live head lends its own, a block loaded for a query builds one
//! over its cached symbols and the rows it read.
use crate::model::childindex::ChildIndex;
use crate::model::labels::Labels;
use crate::model::selector::matches_all;
use crate::model::symbols::{LocationRec, Symbols, ROOT};
use crate::query::{
    series_key, step_end, Bucket, FlameTree, HeatPoint, PprofPart, QueryRequest, QueryResult, Selection,
};
use kiln_io::invariant::{check, Invariant};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Series {
    pub labels: Labels,
    pub profile_type: String,
    pub timestamps: Vec<i64>,
    pub totals: Vec<i64>,
    pub offsets: Vec<u32>,
    pub stacks: Vec<u32>,
    pub values: Vec<i64>,
    /// The samples taken in a span, per profile, beside the profile's own samples (which
    /// count them too): what span queries read. `None` while no profile of the series had
    /// one, so a series without spans pays one pointer.
    pub spans: Option<Box<SpanSamples>>,
}

/// A series' span samples. Invariant: `offsets.len()` is the series' profile count plus
/// one; profile i's span samples are `[offsets[i]..offsets[i+1]]` of the three columns, in
/// (stack, span) order without repeats and without zero values.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SpanSamples {
    pub offsets: Vec<u32>,
    pub stacks: Vec<u32>,
    pub values: Vec<i64>,
    pub spans: Vec<u64>,
}

impl SpanSamples {
    pub fn samples(&self, i: usize) -> impl Iterator<Item = (u32, i64, u64)> + '_ {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        (a..b).map(move |k| (self.stacks[k], self.values[k], self.spans[k]))
    }
}

impl Series {
    pub(crate) fn new(labels: Labels, profile_type: String) -> Self {
        Series {
            labels,
            profile_type,
            timestamps: Vec::new(),
            totals: Vec::new(),
            offsets: vec![0],
            stacks: Vec::new(),
            values: Vec::new(),
            spans: None,
        }
    }

    /// Ends the span samples of the profile just appended (its row is the last): `samples`
    /// ((stack, span, value), sorted, merged, no zeros) become its span samples. A series'
    /// first span sample creates the columns with an empty entry for every earlier profile.
    pub(crate) fn push_span_samples(&mut self, samples: impl ExactSizeIterator<Item = (u32, u64, i64)>) {
        if samples.len() == 0 && self.spans.is_none() {
            return;
        }
        let rows = self.timestamps.len();
        let sp =
            self.spans.get_or_insert_with(|| Box::new(SpanSamples { offsets: vec![0; rows], ..Default::default() }));
        for (stack, span, value) in samples {
            sp.stacks.push(stack);
            sp.spans.push(span);
            sp.values.push(value);
        }
        sp.offsets.push(sp.stacks.len() as u32);
    }

    pub(crate) fn profiles(&self) -> usize {
        self.timestamps.len()
    }

    pub(crate) fn samples(&self, i: usize) -> impl Iterator<Item = (u32, i64)> + '_ {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        self.stacks[a..b].iter().copied().zip(self.values[a..b].iter().copied())
    }
}

/// What a query reads: a symbol table and series columns. A live head lends its own; a block
/// loaded for a query builds one over its cached symbols and the rows it read, so heads and
/// blocks answer every query with the same code.
pub struct HeadView<'a> {
    /// The tenant whose series these are (a series' key includes it).
    pub tenant: &'a str,
    /// What holds these profiles once (see `query::KeyFilter`): the ingester that cut the
    /// block, or this instance for its heads.
    pub source: &'a str,
    pub symbols: &'a Symbols,
    pub series: &'a [Series],
    /// Series by profile type; `None` when `series` holds only selected series already.
    pub by_profile_type: Option<&'a FxHashMap<String, Vec<u32>>>,
}

impl<'a> HeadView<'a> {
    /// Series that match the selection's profile type and matchers and have a profile in range.
    fn selected(&self, sel: &'a Selection) -> impl Iterator<Item = &'a Series> + 'a {
        let series = self.series;
        let refs: Box<dyn Iterator<Item = u32> + 'a> = match (&sel.profile_type, self.by_profile_type) {
            (Some(pt), Some(by)) => Box::new(by.get(pt.as_str()).into_iter().flatten().copied()),
            _ => Box::new(0..series.len() as u32),
        };
        let pt = sel.profile_type.as_deref();
        refs.map(move |r| &series[r as usize])
            .filter(move |s| pt.is_none_or(|pt| s.profile_type == pt))
            .filter(|s| matches_all(&sel.matchers, &s.labels))
            .filter(|s| s.timestamps.iter().any(|t| sel.contains_ns(*t)))
    }

    /// The profiles of `s` the selection counts: in its range and, in a cluster, those the
    /// querier chose this replica for.
    fn in_range<'b>(&self, s: &'b Series, sel: &'b Selection) -> impl Iterator<Item = usize> + 'b {
        let keys =
            sel.keys.as_deref().map(|k| (k.source(self.source), series_key(self.tenant, &s.labels, &s.profile_type)));
        (0..s.profiles()).filter(move |i| {
            let ts = s.timestamps[*i];
            sel.contains_ns(ts) && keys.is_none_or(|(k, key)| k.is_some_and(|k| k.includes(key, ts)))
        })
    }

    pub fn query(&self, q: &QueryRequest) -> QueryResult {
        match q {
            QueryRequest::ProfileTypes(sel) => {
                let mut v: Vec<String> = self.selected(sel).map(|s| s.profile_type.clone()).collect();
                v.sort();
                v.dedup();
                QueryResult::Strings(v)
            }
            QueryRequest::LabelNames(sel) => {
                let mut v: Vec<String> =
                    self.selected(sel).flat_map(|s| s.labels.iter().map(|(k, _)| k.to_string())).collect();
                v.sort();
                v.dedup();
                QueryResult::Strings(v)
            }
            QueryRequest::LabelValues(sel, name) => {
                let mut v: Vec<String> =
                    self.selected(sel).filter_map(|s| s.labels.get(name).map(str::to_string)).collect();
                v.sort();
                v.dedup();
                QueryResult::Strings(v)
            }
            QueryRequest::Series(sel, names) => {
                let mut v: Vec<Labels> = self
                    .selected(sel)
                    .map(|s| {
                        if names.is_empty() {
                            s.labels.clone()
                        } else {
                            Labels::from_pairs(s.labels.iter().filter(|(k, _)| names.iter().any(|n| n == k)))
                        }
                    })
                    .collect();
                v.sort();
                v.dedup();
                QueryResult::LabelSets(v)
            }
            QueryRequest::MergeTree(sel) => QueryResult::Tree(self.flame_tree(sel)),
            QueryRequest::MergeProfile(sel) => QueryResult::Pprof(self.pprof_part(&self.stack_values(sel))),
            QueryRequest::SelectSeries { sel, step_ms, group_by } => {
                let mut groups: BTreeMap<Labels, BTreeMap<i64, Bucket>> = BTreeMap::new();
                let step = (*step_ms).max(1);
                for s in self.selected(sel) {
                    let key = Labels::from_pairs(s.labels.iter().filter(|(k, _)| group_by.iter().any(|g| g == k)));
                    let g = groups.entry(key).or_default();
                    for i in self.in_range(s, sel) {
                        // The querier refuses steps whose boundaries (at most end + step) pass i64.
                        let t = step_end(s.timestamps[i].div_euclid(1_000_000), sel.start_ms, step);
                        let b = g.entry(t).or_default();
                        b.sum += s.totals[i] as f64;
                        b.count += 1;
                    }
                }
                QueryResult::Series(groups.into_iter().map(|(l, b)| (l, b.into_iter().collect())).collect())
            }
            QueryRequest::Stats(sel) => {
                let mut any = false;
                let (mut lo, mut hi) = (i64::MAX, i64::MIN);
                for s in self.selected(sel) {
                    for i in self.in_range(s, sel) {
                        any = true;
                        lo = lo.min(s.timestamps[i]);
                        hi = hi.max(s.timestamps[i]);
                    }
                }
                if !any {
                    return QueryResult::Stats { oldest_ms: 0, newest_ms: 0, ingested: false };
                }
                QueryResult::Stats { oldest_ms: lo / 1_000_000, newest_ms: hi / 1_000_000, ingested: true }
            }
            QueryRequest::Analyze(sel) => {
                let (mut series, mut profiles, mut samples) = (0u64, 0u64, 0u64);
                for s in self.selected(sel) {
                    series += 1;
                    for i in self.in_range(s, sel) {
                        profiles += 1;
                        samples += (s.offsets[i + 1] - s.offsets[i]) as u64;
                    }
                }
                // Column bytes read: (stack id, value) per sample, (time, total, offset) per profile.
                QueryResult::Analyze { series, profiles, samples, bytes: samples * 12 + profiles * 20 }
            }
            QueryRequest::Heatmap { sel, spans } => QueryResult::Points(self.heat_points(sel, *spans)),
            QueryRequest::Keys(sel) => QueryResult::Keys {
                source: self.source.to_string(),
                keys: self
                    .selected(sel)
                    .map(|s| {
                        let ts = self.in_range(s, sel).map(|i| s.timestamps[i]).collect();
                        (series_key(self.tenant, &s.labels, &s.profile_type), ts)
                    })
                    .collect(),
                epoch: 0,
            },
        }
    }

    /// Each selected profile's total at its time, per series; with `spans`, the total of
    /// each span in it (of the selection's spans, if it names some).
    fn heat_points(&self, sel: &Selection, spans: bool) -> Vec<(Labels, Vec<HeatPoint>)> {
        let mut out = Vec::new();
        let mut per_span: Vec<(u64, i64)> = Vec::new();
        for s in self.selected(sel) {
            let mut points = Vec::new();
            for i in self.in_range(s, sel) {
                let ts_ms = s.timestamps[i].div_euclid(1_000_000);
                if !spans {
                    points.push(HeatPoint { ts_ms, value: s.totals[i], span: 0 });
                    continue;
                }
                let Some(sp) = &s.spans else { continue };
                per_span.clear();
                per_span.extend(
                    sp.samples(i)
                        .filter(|(_, _, span)| sel.spans.as_ref().is_none_or(|w| w.contains(*span)))
                        .map(|(_, v, span)| (span, v)),
                );
                per_span.sort_unstable_by_key(|p| p.0);
                for (k, &(span, v)) in per_span.iter().enumerate() {
                    match points.last_mut() {
                        Some(HeatPoint { span: last, value, .. }) if k > 0 && *last == span => {
                            *value = value.saturating_add(v)
                        }
                        _ => points.push(HeatPoint { ts_ms, value: v, span }),
                    }
                }
            }
            if !points.is_empty() {
                out.push((s.labels.clone(), points));
            }
        }
        out
    }

    /// Summed value per stack node over the selected profiles; with a span filter, over
    /// their samples taken in one of those spans.
    fn stack_values(&self, sel: &Selection) -> FxHashMap<u32, i64> {
        let mut acc: FxHashMap<u32, i64> = FxHashMap::default();
        self.each_sample(sel, |id, v| {
            let e = acc.entry(id).or_insert(0);
            *e = e.saturating_add(v);
        });
        acc
    }

    /// Hands each (stack node, value) the selection counts to `f`, in column order: the
    /// samples of the selected profiles or, with a span filter, those taken in one of its
    /// spans. A stack node may come more than once.
    fn each_sample(&self, sel: &Selection, mut f: impl FnMut(u32, i64)) {
        for s in self.selected(sel) {
            match (&sel.spans, &s.spans) {
                (None, _) => {
                    for i in self.in_range(s, sel) {
                        s.samples(i).for_each(|(id, v)| f(id, v));
                    }
                }
                (Some(wanted), Some(sp)) => {
                    for i in self.in_range(s, sel) {
                        for (id, v, span) in sp.samples(i) {
                            if wanted.contains(span) {
                                f(id, v);
                            }
                        }
                    }
                }
                (Some(_), None) => {}
            }
        }
    }

    /// The function name of a location frame, or its address when it has no symbols.
    fn frame_names(&self, loc: u32, out: &mut Vec<u32>, tree_names: &mut NameMap) {
        let l = &self.symbols.locations[loc as usize];
        if l.lines.is_empty() {
            out.push(tree_names.literal(format!("0x{:x}", l.address)));
            return;
        }
        // Root-first: the outermost caller (last line) comes first.
        for line in l.lines.iter().rev() {
            let f = &self.symbols.functions[line.function as usize];
            out.push(tree_names.symbol(f.name, self.symbols));
        }
    }

    /// The flame tree of the selected samples. The samples are read twice (to mark the
    /// stack nodes they need, then to add their values up) rather than summed per stack
    /// node first: a map of millions of stack nodes costs more than a second sequential
    /// read of the columns.
    fn flame_tree(&self, sel: &Selection) -> FlameTree {
        let sym = &self.symbols;
        // Tree node of each stack node this query needs.
        let mut tnode = vec![UNSET; sym.stack_count()];
        tnode[ROOT as usize] = 0;
        let (mut lo, mut hi, mut needed) = (usize::MAX, 0usize, 0usize);
        self.each_sample(sel, |id, _| {
            let mut n = id as usize;
            while tnode[n] == UNSET {
                tnode[n] = NEEDED;
                (lo, hi, needed) = (lo.min(n), hi.max(n), needed + 1);
                n = sym.parent[n] as usize;
            }
        });
        let (names, mut nodes) = self.resolve_needed(&mut tnode, lo..hi.saturating_add(1), needed);
        self.each_sample(sel, |id, v| {
            if let Some(node) = nodes.get_mut(tnode[id as usize] as usize) {
                node.2 = node.2.saturating_add(v);
            }
        });
        FlameTree { names: names.names, nodes }
    }

    /// Gives each stack node marked `NEEDED` in `range` its tree node (in `tnode`), creating
    /// the tree's nodes (values 0) as it goes. A parent's id is smaller than its children's,
    /// so one ascending pass resolves every needed node after its parent. `needed` (how many
    /// are marked) sizes the tree up front: most locations make one frame, so it is rarely
    /// outgrown, and growing buffers of millions of nodes would copy them.
    fn resolve_needed(
        &self,
        tnode: &mut [u32],
        range: std::ops::Range<usize>,
        needed: usize,
    ) -> (NameMap, Vec<(u32, u32, i64)>) {
        let sym = &self.symbols;
        let mut names = NameMap::new(sym.strings.len());
        let mut nodes: Vec<(u32, u32, i64)> = Vec::with_capacity(needed + 1);
        nodes.push((0, 0, 0));
        let mut children = ChildIndex::with_capacity(needed + 1);
        let mut frames: Vec<u32> = Vec::new();
        for n in range.start..range.end.min(tnode.len()) {
            if tnode[n] != NEEDED {
                continue;
            }
            let mut t = tnode[sym.parent[n] as usize];
            // I7: parents before children, so the parent's tree node is known by now. A
            // violation drops the stack (its value below) rather than the query.
            if !check(Invariant::StackOrder, t < NEEDED, || format!("stack node {n} resolved before its parent")) {
                continue;
            }
            frames.clear();
            self.frame_names(sym.location[n], &mut frames, &mut names);
            for &name in &frames {
                let (c, created) = children.child(t, name);
                if created {
                    nodes.push((t, name, 0));
                }
                t = c;
            }
            tnode[n] = t;
        }
        (names, nodes)
    }

    /// The selected stacks with only the symbols they use, renumbered densely: a query over
    /// one service of a large head or block copies that service's symbols, not the table.
    /// The merger re-interns by content.
    fn pprof_part(&self, values: &FxHashMap<u32, i64>) -> PprofPart {
        let sym = self.symbols;
        let mut p = PprofPart {
            strings: vec![String::new()],
            mappings: vec![Default::default()],
            samples: Vec::with_capacity(values.len()),
            ..Default::default()
        };
        let mut strings = vec![UNSET; sym.strings.len()];
        strings[0] = 0;
        let mut functions = vec![UNSET; sym.functions.len()];
        let mut mappings = vec![UNSET; sym.mappings.len()];
        mappings[0] = 0;
        let mut locations = vec![UNSET; sym.locations.len()];
        let mut string = |id: u32, out: &mut Vec<String>| {
            if strings[id as usize] == UNSET {
                strings[id as usize] = out.len() as u32;
                out.push(sym.strings.get(id).to_string());
            }
            strings[id as usize]
        };
        for (&id, &v) in values {
            let mut locs = Vec::new();
            let mut n = id;
            while n != ROOT {
                let l = sym.location[n as usize] as usize;
                if locations[l] == UNSET {
                    let rec = &sym.locations[l];
                    let m = rec.mapping as usize;
                    if mappings[m] == UNSET {
                        let mut mapping = sym.mappings[m].clone();
                        mapping.filename = string(mapping.filename, &mut p.strings);
                        mapping.build_id = string(mapping.build_id, &mut p.strings);
                        mappings[m] = p.mappings.len() as u32;
                        p.mappings.push(mapping);
                    }
                    let mut lines = rec.lines.to_vec();
                    for line in &mut lines {
                        let f = line.function as usize;
                        if functions[f] == UNSET {
                            let mut func = sym.functions[f];
                            func.name = string(func.name, &mut p.strings);
                            func.system_name = string(func.system_name, &mut p.strings);
                            func.filename = string(func.filename, &mut p.strings);
                            functions[f] = p.functions.len() as u32;
                            p.functions.push(func);
                        }
                        line.function = functions[f];
                    }
                    locations[l] = p.locations.len() as u32;
                    p.locations.push(LocationRec { mapping: mappings[m], address: rec.address, lines: lines.into() });
                }
                locs.push(locations[l]);
                n = sym.parent[n as usize];
            }
            p.samples.push((locs, v));
        }
        p
    }
}

/// `flame_tree`'s marks per stack node: not needed by the query, and needed but not resolved
/// to a tree node yet.
const UNSET: u32 = u32::MAX;
const NEEDED: u32 = u32::MAX - 1;

/// Names of one query's flame tree, keyed by symbol string id (or literal for addresses).
#[derive(Default)]
struct NameMap {
    names: Vec<String>,
    /// Name index per symbol string id (u32::MAX: not named yet).
    by_symbol: Vec<u32>,
    by_literal: FxHashMap<String, u32>,
}

impl NameMap {
    fn new(strings: usize) -> Self {
        NameMap { names: vec![String::new()], by_symbol: vec![u32::MAX; strings], by_literal: FxHashMap::default() }
    }
    fn symbol(&mut self, s: u32, symbols: &Symbols) -> u32 {
        let i = self.by_symbol[s as usize];
        if i != u32::MAX {
            return i;
        }
        let i = self.literal(symbols.strings.get(s).to_string());
        self.by_symbol[s as usize] = i;
        i
    }
    fn literal(&mut self, v: String) -> u32 {
        if let Some(i) = self.by_literal.get(&v) {
            return *i;
        }
        let i = self.names.len() as u32;
        self.by_literal.insert(v.clone(), i);
        self.names.push(v);
        i
    }
}
