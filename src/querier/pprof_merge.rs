//! Merges the per-core pprof parts of a SelectMergeProfile into one `google.v1.Profile`,
//! re-interning symbols by content (each core numbers its own).
use kiln_proto::google::v1 as pb;
use kiln_shards::model::labels::ProfileType;
use kiln_shards::model::profile::{Function, Mapping};
use kiln_shards::model::symbols::LocationRec;
use kiln_shards::query::PprofPart;
use rustc_hash::FxHashMap;

/// (mapping id, address, lines as (function id, line)).
type LocationKey = (u64, u64, Vec<(u64, i64)>);

#[derive(Default)]
pub struct PprofMerger {
    strings: Vec<String>,
    string_ids: FxHashMap<String, i64>,
    functions: FxHashMap<(i64, i64, i64, i64), u64>,
    mappings: FxHashMap<(u64, u64, u64, i64, i64), u64>,
    locations: FxHashMap<LocationKey, u64>,
    samples: FxHashMap<Vec<u64>, i64>,
    out: pb::Profile,
}

impl PprofMerger {
    pub fn new() -> Self {
        let mut m = PprofMerger::default();
        m.string("");
        m
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(i) = self.string_ids.get(s) {
            return *i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    fn function(&mut self, part: &PprofPart, f: &Function) -> u64 {
        let key = (
            self.string(&part.strings[f.name as usize]),
            self.string(&part.strings[f.system_name as usize]),
            self.string(&part.strings[f.filename as usize]),
            f.start_line,
        );
        let next = self.out.function.len() as u64 + 1;
        let id = *self.functions.entry(key).or_insert(next);
        if id == next {
            self.out.function.push(pb::Function {
                id,
                name: key.0,
                system_name: key.1,
                filename: key.2,
                start_line: key.3,
            });
        }
        id
    }

    fn mapping(&mut self, part: &PprofPart, m: &Mapping) -> u64 {
        let key = (
            m.memory_start,
            m.memory_limit,
            m.file_offset,
            self.string(&part.strings[m.filename as usize]),
            self.string(&part.strings[m.build_id as usize]),
        );
        let next = self.out.mapping.len() as u64 + 1;
        let id = *self.mappings.entry(key).or_insert(next);
        if id == next {
            self.out.mapping.push(pb::Mapping {
                id,
                memory_start: key.0,
                memory_limit: key.1,
                file_offset: key.2,
                filename: key.3,
                build_id: key.4,
                has_functions: m.has_functions,
                has_filenames: m.has_filenames,
                has_line_numbers: m.has_line_numbers,
                has_inline_frames: m.has_inline_frames,
            });
        }
        id
    }

    fn location(&mut self, part: &PprofPart, l: &LocationRec) -> u64 {
        let mapping = if l.mapping == 0 { 0 } else { self.mapping(part, &part.mappings[l.mapping as usize]) };
        let lines: Vec<(u64, i64)> =
            l.lines.iter().map(|ln| (self.function(part, &part.functions[ln.function as usize]), ln.line)).collect();
        let key = (mapping, l.address, lines);
        let next = self.out.location.len() as u64 + 1;
        if let Some(id) = self.locations.get(&key) {
            return *id;
        }
        self.out.location.push(pb::Location {
            id: next,
            mapping_id: mapping,
            address: l.address,
            line: key.2.iter().map(|(f, line)| pb::Line { function_id: *f, line: *line }).collect(),
            is_folded: false,
        });
        self.locations.insert(key, next);
        next
    }

    pub fn add(&mut self, part: &PprofPart) {
        let mut loc_ids: Vec<u64> = vec![0; part.locations.len()];
        for (stack, v) in &part.samples {
            let mut ids = Vec::with_capacity(stack.len());
            for &l in stack {
                if loc_ids[l as usize] == 0 {
                    loc_ids[l as usize] = self.location(part, &part.locations[l as usize]);
                }
                ids.push(loc_ids[l as usize]);
            }
            *self.samples.entry(ids).or_insert(0) += v;
        }
    }

    /// The merged profile with the profile type's sample type and period.
    /// `call_site`: keep only samples whose stack starts (root first) with these functions.
    pub fn finish(mut self, pt: &ProfileType, end_ms: i64, call_site: &[String]) -> pb::Profile {
        let st = pb::ValueType { r#type: self.string(&pt.sample_type), unit: self.string(&pt.sample_unit) };
        let period_type = pb::ValueType { r#type: self.string(&pt.period_type), unit: self.string(&pt.period_unit) };
        let mut samples: Vec<(Vec<u64>, i64)> = self.samples.drain().filter(|(_, v)| *v != 0).collect();
        if !call_site.is_empty() {
            let out = &self.out;
            let strings = &self.strings;
            samples.retain(|(locs, _)| {
                let mut frames =
                    locs.iter().rev().flat_map(|l| out.location[*l as usize - 1].line.iter().rev()).map(|ln| {
                        let f = &out.function[ln.function_id as usize - 1];
                        strings[f.name as usize].as_str()
                    });
                call_site.iter().all(|want| frames.next() == Some(want.as_str()))
            });
        }
        samples.sort();
        self.out.sample = samples
            .into_iter()
            .map(|(location_id, v)| pb::Sample { location_id, value: vec![v], label: vec![] })
            .collect();
        self.out.sample_type = vec![st];
        self.out.period_type = Some(period_type);
        self.out.period = match pt.name.as_str() {
            "process_cpu" => 1_000_000_000,
            "memory" => 512 * 1024,
            _ => 1,
        };
        self.out.default_sample_type = st.r#type;
        self.out.time_nanos = end_ms.saturating_mul(1_000_000);
        self.out.string_table = self.strings;
        self.out
    }
}
