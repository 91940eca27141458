//! One partial result for a run of split parts: what the results cache keeps for the run of
//! cached parts of a long query (`Frontend::fan_out`), so that a 24 h query split by the
//! hour decodes one tree from the cache, not twenty-two.
//!
//! Every kind a split part answers adds up (`split::splits`): flame trees node by node,
//! pprof parts sample by sample over their symbols, series point by point. The merged
//! result is what the querier's own merge would make of the parts' results, so the answer
//! is the same whether the parts come one by one or as one run (tested here against that
//! merge). Results of any other kind are not merged (`None`): the run is then not cached.
use crate::querier::tree::Tree;
use kiln_shards::model::profile::{Function, Line, Mapping};
use kiln_shards::model::symbols::LocationRec;
use kiln_shards::query::{Bucket, PprofPart, QueryResult};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

/// `parts`, every one of one kind, as one result; `None` for kinds that do not add up or
/// a mix of kinds.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a QueryResult>) -> Option<QueryResult> {
    let parts: Vec<&QueryResult> = parts.into_iter().collect();
    match parts.first()? {
        QueryResult::Tree(_) => {
            let mut t = Tree::default();
            for p in &parts {
                let QueryResult::Tree(part) = *p else { return None };
                t.merge(part);
            }
            Some(QueryResult::Tree(t.to_flame_tree()))
        }
        QueryResult::Pprof(_) => {
            let mut m = PartMerger::new();
            for p in &parts {
                let QueryResult::Pprof(part) = *p else { return None };
                m.add(part);
            }
            Some(QueryResult::Pprof(m.finish()))
        }
        QueryResult::Series(_) => {
            let mut out: BTreeMap<_, BTreeMap<i64, Bucket>> = BTreeMap::new();
            for p in parts {
                let QueryResult::Series(groups) = p else { return None };
                for (labels, points) in groups {
                    let g = out.entry(labels.clone()).or_default();
                    for (t, b) in points {
                        let e = g.entry(*t).or_default();
                        e.sum += b.sum;
                        e.count += b.count;
                    }
                }
            }
            Some(QueryResult::Series(out.into_iter().map(|(l, p)| (l, p.into_iter().collect())).collect()))
        }
        _ => None,
    }
}

/// Pprof parts into one, each string, function, mapping and location kept once and the
/// values of equal stacks summed.
struct PartMerger {
    out: PprofPart,
    strings: FxHashMap<String, u32>,
    functions: FxHashMap<Function, u32>,
    mappings: FxHashMap<Mapping, u32>,
    locations: FxHashMap<LocationRec, u32>,
    samples: FxHashMap<Vec<u32>, i64>,
}

impl PartMerger {
    fn new() -> Self {
        // Index 0 of strings and mappings is "none", as in every part.
        let out = PprofPart { strings: vec![String::new()], mappings: vec![Mapping::default()], ..Default::default() };
        let mut strings = FxHashMap::default();
        strings.insert(String::new(), 0);
        PartMerger {
            out,
            strings,
            functions: FxHashMap::default(),
            mappings: FxHashMap::default(),
            locations: FxHashMap::default(),
            samples: FxHashMap::default(),
        }
    }

    fn string(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.out.strings.len() as u32;
        self.out.strings.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    /// A part's string id as this merger's; an id past the part's table reads as "".
    fn part_string(&mut self, part: &PprofPart, id: u32) -> u32 {
        let s = part.strings.get(id as usize).map_or("", String::as_str);
        self.string(s)
    }

    fn function(&mut self, part: &PprofPart, id: u32) -> u32 {
        let Some(f) = part.functions.get(id as usize) else { return 0 };
        let f = Function {
            name: self.part_string(part, f.name),
            system_name: self.part_string(part, f.system_name),
            filename: self.part_string(part, f.filename),
            start_line: f.start_line,
        };
        let next = self.out.functions.len() as u32;
        let id = *self.functions.entry(f).or_insert(next);
        if id == next {
            self.out.functions.push(f);
        }
        id
    }

    fn mapping(&mut self, part: &PprofPart, id: u32) -> u32 {
        let Some(m) = part.mappings.get(id as usize).filter(|_| id != 0) else { return 0 };
        let m = Mapping {
            filename: self.part_string(part, m.filename),
            build_id: self.part_string(part, m.build_id),
            ..*m
        };
        let next = self.out.mappings.len() as u32;
        let id = *self.mappings.entry(m.clone()).or_insert(next);
        if id == next {
            self.out.mappings.push(m);
        }
        id
    }

    fn location(&mut self, part: &PprofPart, l: &LocationRec) -> u32 {
        let lines: Box<[Line]> =
            l.lines.iter().map(|ln| Line { function: self.function(part, ln.function), line: ln.line }).collect();
        let rec = LocationRec { mapping: self.mapping(part, l.mapping), address: l.address, lines };
        let next = self.out.locations.len() as u32;
        let id = *self.locations.entry(rec.clone()).or_insert(next);
        if id == next {
            self.out.locations.push(rec);
        }
        id
    }

    fn add(&mut self, part: &PprofPart) {
        // Each of the part's locations is merged once, on first use.
        let mut ids: Vec<Option<u32>> = vec![None; part.locations.len()];
        for (stack, v) in &part.samples {
            let mut merged = Vec::with_capacity(stack.len());
            for &l in stack {
                let Some(rec) = part.locations.get(l as usize) else { continue };
                let id = match ids[l as usize] {
                    Some(id) => id,
                    None => {
                        let id = self.location(part, rec);
                        ids[l as usize] = Some(id);
                        id
                    }
                };
                merged.push(id);
            }
            *self.samples.entry(merged).or_insert(0) += v;
        }
    }

    fn finish(mut self) -> PprofPart {
        self.out.samples = self.samples.into_iter().collect();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::querier::pprof_merge::PprofMerger;
    use kiln_shards::model::labels::Labels;
    use kiln_shards::query::FlameTree;

    fn tree(names: &[&str], nodes: &[(u32, u32, i64)]) -> QueryResult {
        QueryResult::Tree(FlameTree { names: names.iter().map(|s| s.to_string()).collect(), nodes: nodes.to_vec() })
    }

    fn finished(parts: &[QueryResult]) -> Tree {
        let mut t = Tree::default();
        for p in parts {
            if let QueryResult::Tree(f) = p {
                t.merge(f);
            }
        }
        t.finish();
        t
    }

    #[test]
    fn trees_merge_into_one_the_querier_reads_as_it_reads_the_parts() {
        let parts = vec![
            tree(&["", "main", "work"], &[(0, 0, 1), (0, 1, 2), (1, 2, 5)]),
            tree(&["", "work", "main", "idle"], &[(0, 0, 0), (0, 2, 1), (1, 1, 3), (1, 3, 7)]),
            tree(&["", "other"], &[(0, 0, 0), (0, 1, 4)]),
        ];
        let Some(QueryResult::Tree(one)) = merge(&parts) else { panic!("not a tree") };
        let (a, b) = (finished(&parts), finished(&[QueryResult::Tree(one)]));
        assert_eq!(a.tree_bytes(-1), b.tree_bytes(-1));
        assert_eq!(a.total(), 23);
    }

    #[test]
    fn series_points_add_up_per_group_and_time() {
        let g = |v: &str| Labels::from_pairs([("service_name", v)]);
        let b = |sum: f64, count: u64| Bucket { sum, count };
        let parts = vec![
            QueryResult::Series(vec![(g("a"), vec![(10, b(1.0, 1)), (20, b(2.0, 1))])]),
            QueryResult::Series(vec![(g("a"), vec![(20, b(3.0, 2))]), (g("b"), vec![(30, b(4.0, 1))])]),
        ];
        let Some(QueryResult::Series(one)) = merge(&parts) else { panic!("not series") };
        assert_eq!(one, vec![(g("a"), vec![(10, b(1.0, 1)), (20, b(5.0, 3))]), (g("b"), vec![(30, b(4.0, 1))])]);
    }

    fn pprof_part(func_names: &[&str], samples: &[(&[u32], i64)]) -> PprofPart {
        let mut strings = vec![String::new()];
        let mut functions = Vec::new();
        let mut locations = Vec::new();
        for (i, n) in func_names.iter().enumerate() {
            strings.push(n.to_string());
            functions.push(Function { name: i as u32 + 1, system_name: i as u32 + 1, filename: 0, start_line: 0 });
            let lines: Box<[Line]> = Box::new([Line { function: i as u32, line: n.len() as i64 }]);
            locations.push(LocationRec { mapping: 0, address: 0, lines });
        }
        PprofPart {
            strings,
            functions,
            mappings: vec![Mapping::default()],
            locations,
            samples: samples.iter().map(|(s, v)| (s.to_vec(), *v)).collect(),
        }
    }

    #[test]
    fn pprof_parts_merge_into_the_profile_the_parts_make() {
        let parts = vec![
            QueryResult::Pprof(pprof_part(&["leaf", "main"], &[(&[0, 1], 5), (&[1], 2)])),
            // The same functions in another order, and one more.
            QueryResult::Pprof(pprof_part(&["main", "leaf", "gc"], &[(&[1, 0], 3), (&[2], 4)])),
        ];
        let Some(QueryResult::Pprof(one)) = merge(&parts) else { panic!("not pprof") };
        assert_eq!(one.samples.len(), 3, "leaf;main once, main, gc");
        assert_eq!(one.locations.len(), 3);
        let pt = kiln_shards::model::labels::ProfileType::parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds").unwrap();
        let profile = |ps: &[QueryResult]| {
            let mut m = PprofMerger::new();
            for p in ps {
                if let QueryResult::Pprof(p) = p {
                    m.add(p);
                }
            }
            // Ids differ with the order things were met: compare stacks by their frames.
            let p = m.finish(&pt, 0, &[]);
            let frame = |id: u64| {
                let l = &p.location[id as usize - 1];
                let f = &p.function[l.line[0].function_id as usize - 1];
                (p.string_table[f.name as usize].clone(), l.line[0].line)
            };
            p.sample
                .iter()
                .map(|s| (s.location_id.iter().map(|&l| frame(l)).collect::<Vec<_>>(), s.value.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(profile(&parts), profile(&[QueryResult::Pprof(one)]));
    }

    #[test]
    fn other_kinds_and_mixes_are_not_merged() {
        assert!(merge(&[]).is_none());
        assert!(merge(&[QueryResult::Strings(vec!["a".into()])]).is_none());
        let t = tree(&[""], &[(0, 0, 1)]);
        assert!(merge(&[t, QueryResult::Series(vec![])]).is_none());
    }
}
