//! An interval's samples, counted by stack, and the pprof they become: Go's CPU profile
//! shape (`samples`/`count` and `cpu`/`nanoseconds`, period `cpu`/`nanoseconds`), so the
//! profile types are `process_cpu:samples:count:cpu:nanoseconds` and
//! `process_cpu:cpu:nanoseconds:cpu:nanoseconds`, as Pyroscope's own.
use super::symbols::Symbols;
use kiln_proto::google::v1::{Function, Line, Location, Profile, Sample, ValueType};
use rustc_hash::FxHashMap;
use std::rc::Rc;

/// Distinct stacks an interval keeps; a sample of a new stack past it is dropped (counted).
/// Below Pyroscope's default `-validation.max-profile-stacktrace-samples` (16000), which the
/// push must pass.
pub const MAX_STACKS: usize = 8_192;

/// An interval's samples: how many times each stack (program counters, leaf first) was seen.
#[derive(Default)]
pub struct Stacks {
    counts: FxHashMap<Box<[usize]>, u64>,
}

impl Stacks {
    /// Counts one sample; false (not counted) when it is a new stack and the table is full.
    pub fn add(&mut self, pcs: &[usize]) -> bool {
        if let Some(n) = self.counts.get_mut(pcs) {
            *n += 1;
            return true;
        }
        if self.counts.len() >= MAX_STACKS {
            return false;
        }
        self.counts.insert(pcs.into(), 1);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// The pprof of these samples: taken over `duration_ns` from `start_ns`, one sample
    /// every `period_ns` of CPU. Each return address is named by the call instruction
    /// before it (`pc - 1`); the leaf by its own.
    pub fn to_pprof(&self, symbols: &mut Option<Symbols>, start_ns: i64, duration_ns: i64, period_ns: i64) -> Profile {
        let mut b = Builder::default();
        let samples_count = b.string("samples");
        let count = b.string("count");
        let cpu = b.string("cpu");
        let nanoseconds = b.string("nanoseconds");
        let mut sample = Vec::with_capacity(self.counts.len());
        for (pcs, &n) in &self.counts {
            let location_id = pcs
                .iter()
                .enumerate()
                .map(|(i, &pc)| b.location(if i == 0 { pc } else { pc.saturating_sub(1) }, symbols))
                .collect();
            sample.push(Sample { location_id, value: vec![n as i64, n as i64 * period_ns], label: vec![] });
        }
        Profile {
            sample_type: vec![
                ValueType { r#type: samples_count, unit: count },
                ValueType { r#type: cpu, unit: nanoseconds },
            ],
            sample,
            location: b.locations,
            function: b.functions,
            string_table: b.strings,
            time_nanos: start_ns,
            duration_nanos: duration_ns,
            period_type: Some(ValueType { r#type: cpu, unit: nanoseconds }),
            period: period_ns,
            ..Default::default()
        }
    }
}

/// The profile's tables, each entry made once.
struct Builder {
    strings: Vec<String>,
    string_ids: FxHashMap<Rc<str>, i64>,
    locations: Vec<Location>,
    location_ids: FxHashMap<usize, u64>,
    functions: Vec<Function>,
    function_ids: FxHashMap<i64, u64>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            strings: vec![String::new()],
            string_ids: FxHashMap::default(),
            locations: Vec::new(),
            location_ids: FxHashMap::default(),
            functions: Vec::new(),
            function_ids: FxHashMap::default(),
        }
    }
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.into(), id);
        id
    }

    /// The location of `addr`, with the function holding it.
    fn location(&mut self, addr: usize, symbols: &mut Option<Symbols>) -> u64 {
        if let Some(&id) = self.location_ids.get(&addr) {
            return id;
        }
        let name = match symbols {
            Some(s) => s.name(addr),
            None => Rc::from(format!("{addr:#x}")),
        };
        let name = self.string(&name);
        let next_function = self.functions.len() as u64 + 1;
        let function_id = *self.function_ids.entry(name).or_insert(next_function);
        if function_id == next_function {
            self.functions.push(Function { id: function_id, name, system_name: name, ..Default::default() });
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            address: addr as u64,
            line: vec![Line { function_id, line: 0 }],
            ..Default::default()
        });
        self.location_ids.insert(addr, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_sampled_function() -> usize {
        std::hint::black_box(3)
    }

    #[test]
    fn counts_stacks_and_names_their_frames() {
        let f = a_sampled_function as *const () as usize;
        assert_eq!(a_sampled_function(), 3);
        let mut s = Stacks::default();
        // The leaf at the function's entry; the caller's return address one past its start.
        assert!(s.add(&[f, f + 1]));
        assert!(s.add(&[f, f + 1]));
        assert!(s.add(&[f]));
        assert_eq!(s.len(), 2);
        let mut symbols = Some(Symbols::load().unwrap());
        let p = s.to_pprof(&mut symbols, 1_000, 2_000, 10_000_000);
        let str_of = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(
            p.sample_type.iter().map(|t| (str_of(t.r#type), str_of(t.unit))).collect::<Vec<_>>(),
            [("samples", "count"), ("cpu", "nanoseconds")]
        );
        assert_eq!((p.time_nanos, p.duration_nanos, p.period), (1_000, 2_000, 10_000_000));
        let mut values: Vec<_> = p.sample.iter().map(|s| (s.location_id.len(), s.value.clone())).collect();
        values.sort();
        assert_eq!(values, [(1, vec![1, 10_000_000]), (2, vec![2, 20_000_000])]);
        // `f` and `f + 1 - 1` are one location, one function.
        assert_eq!(p.location.len(), 1);
        assert_eq!(p.function.len(), 1);
        assert!(
            str_of(p.function[0].name).ends_with("profile::tests::a_sampled_function"),
            "{}",
            str_of(p.function[0].name)
        );
    }

    #[test]
    fn the_table_of_stacks_is_bounded() {
        let mut s = Stacks::default();
        for i in 0..MAX_STACKS {
            assert!(s.add(&[i]));
        }
        assert!(!s.add(&[usize::MAX]));
        // A stack already counted still counts.
        assert!(s.add(&[0]));
        assert_eq!(s.len(), MAX_STACKS);
    }
}
