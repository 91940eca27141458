//! An interval's samples, counted by stack, and the pprofs they become.
//!
//! - CPU: Go's CPU profile shape (`samples`/`count` and `cpu`/`nanoseconds`, period
//!   `cpu`/`nanoseconds`), so the profile types are `process_cpu:samples:count:cpu:nanoseconds`
//!   and `process_cpu:cpu:nanoseconds:cpu:nanoseconds`, as Pyroscope's own.
//! - Allocations: the allocation half of Go's heap profile (`alloc_objects`/`count` and
//!   `alloc_space`/`bytes`, period `space`/`bytes` = the sampling rate), pushed as `memory`:
//!   `memory:alloc_objects:count:space:bytes` and `memory:alloc_space:bytes:space:bytes`, as
//!   the Go SDK's. Each sample already carries its estimate of what was allocated
//!   (`alloc.rs`: `unsampled`); the allocator's own frames are cut from each stack's leaf end.
use super::symbols::Symbols;
use kiln_proto::google::v1::{Function, Line, Location, Profile, Sample, ValueType};
use rustc_hash::FxHashMap;
use std::ops::AddAssign;
use std::rc::Rc;

/// Distinct stacks an interval keeps; a sample of a new stack past it is dropped (counted).
/// Below Pyroscope's default `-validation.max-profile-stacktrace-samples` (16000), which the
/// push must pass.
pub const MAX_STACKS: usize = 8_192;
/// The leaf frames looked at for the profiler's own (`own_frames`): the sampler's few, the
/// allocator's and Rust's shim.
const OWN_FRAMES_MAX: usize = 12;

/// An interval's samples: what each stack (program counters, leaf first) weighs in total.
/// `W` is a count of CPU samples (`u64`) or an estimate of allocations (`Allocated`).
pub struct Stacks<W> {
    weights: FxHashMap<Box<[usize]>, W>,
}

impl<W> Default for Stacks<W> {
    fn default() -> Self {
        Stacks { weights: FxHashMap::default() }
    }
}

/// What the sampled allocations of a stack stand for: objects and bytes, estimated (see
/// `alloc::unsampled`), summed as floats and rounded once, in the pprof.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct Allocated {
    pub objects: f64,
    pub bytes: f64,
}

impl AddAssign for Allocated {
    fn add_assign(&mut self, other: Allocated) {
        self.objects += other.objects;
        self.bytes += other.bytes;
    }
}

/// A pprof's sample types, its period, and the frames cut from each stack's leaf end.
struct Shape {
    sample_types: [(&'static str, &'static str); 2],
    period_type: (&'static str, &'static str),
    period: i64,
    /// Whether a frame (by name) is the profiler's own, not the program's.
    own_frame: fn(&str) -> bool,
}

impl<W: Copy + AddAssign> Stacks<W> {
    /// Adds one sample; false (not counted) when it is a new stack and the table is full.
    pub fn add(&mut self, pcs: &[usize], weight: W) -> bool {
        if let Some(w) = self.weights.get_mut(pcs) {
            *w += weight;
            return true;
        }
        if self.weights.len() >= MAX_STACKS {
            return false;
        }
        self.weights.insert(pcs.into(), weight);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// The pprof of these samples, taken over `duration_ns` from `start_ns`, each stack's
    /// two values by `values`. Each return address is named by the call instruction before
    /// it (`pc - 1`); the leaf by its own. Leading frames that `shape.own_frame` names are
    /// cut (one is always kept).
    fn pprof(
        &self,
        shape: &Shape,
        symbols: &mut Option<Symbols>,
        (start_ns, duration_ns): (i64, i64),
        values: impl Fn(W) -> [i64; 2],
    ) -> Profile {
        let mut b = Builder::default();
        let mut value_type = |(t, u): (&str, &str)| ValueType { r#type: b.string(t), unit: b.string(u) };
        let sample_type = shape.sample_types.map(&mut value_type).to_vec();
        let period_type = Some(value_type(shape.period_type));
        let mut sample = Vec::with_capacity(self.weights.len());
        for (pcs, &w) in &self.weights {
            let addrs = pcs.iter().enumerate().map(|(i, &pc)| if i == 0 { pc } else { pc.saturating_sub(1) });
            let addrs: Vec<usize> = addrs.collect();
            let kept = &addrs[own_frames(&addrs, shape.own_frame, symbols).min(addrs.len().saturating_sub(1))..];
            let location_id = kept.iter().map(|&a| b.location(a, symbols)).collect();
            sample.push(Sample { location_id, value: values(w).to_vec(), label: vec![] });
        }
        Profile {
            sample_type,
            sample,
            location: b.locations,
            function: b.functions,
            string_table: b.strings,
            time_nanos: start_ns,
            duration_nanos: duration_ns,
            period_type,
            period: shape.period,
            ..Default::default()
        }
    }
}

impl Stacks<u64> {
    /// The CPU profile: each stack's count of samples, one every `period_ns` of CPU.
    pub fn cpu_pprof(&self, symbols: &mut Option<Symbols>, start_ns: i64, duration_ns: i64, period_ns: i64) -> Profile {
        let shape = Shape {
            sample_types: [("samples", "count"), ("cpu", "nanoseconds")],
            period_type: ("cpu", "nanoseconds"),
            period: period_ns,
            own_frame: |_| false,
        };
        self.pprof(&shape, symbols, (start_ns, duration_ns), |n| [n as i64, n as i64 * period_ns])
    }
}

impl Stacks<Allocated> {
    /// The allocation profile: each stack's estimated objects and bytes allocated, sampled
    /// once every `rate_bytes` on average.
    pub fn memory_pprof(
        &self,
        symbols: &mut Option<Symbols>,
        start_ns: i64,
        duration_ns: i64,
        rate_bytes: u64,
    ) -> Profile {
        let shape = Shape {
            sample_types: [("alloc_objects", "count"), ("alloc_space", "bytes")],
            period_type: ("space", "bytes"),
            period: rate_bytes as i64,
            own_frame: allocator_frame,
        };
        let round = |a: Allocated| [a.objects.round() as i64, a.bytes.round() as i64];
        self.pprof(&shape, symbols, (start_ns, duration_ns), round)
    }
}

/// How many of a stack's first frames are the profiler's: through the outermost of
/// `OWN_FRAMES_MAX` leaf frames that `own_frame` names (those between, such as a
/// `LocalKey::try_with` that was not inlined, are the profiler's too). None without symbols.
fn own_frames(addrs: &[usize], own_frame: fn(&str) -> bool, symbols: &mut Option<Symbols>) -> usize {
    let Some(symbols) = symbols else { return 0 };
    let leaf_end = addrs.iter().take(OWN_FRAMES_MAX);
    leaf_end.enumerate().filter(|&(_, &a)| own_frame(&symbols.name(a))).last().map_or(0, |(i, _)| i + 1)
}

/// The frames every sampled allocation starts with: the sampler's (`alloc.rs`, which the
/// walk starts in), the global allocator it wraps, and Rust's allocator shims
/// (`__rust_alloc`, `__rust_realloc`, `__rust_alloc_zeroed`; v0-mangled, as
/// `_RNv…___rustc12___rust_alloc`, or plain).
fn allocator_frame(name: &str) -> bool {
    name.contains("self_profiling::alloc::") || name.contains("__rust_alloc") || name.contains("__rust_realloc")
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
        assert!(s.add(&[f, f + 1], 1));
        assert!(s.add(&[f, f + 1], 1));
        assert!(s.add(&[f], 1));
        assert_eq!(s.len(), 2);
        let mut symbols = Some(Symbols::load().unwrap());
        let p = s.cpu_pprof(&mut symbols, 1_000, 2_000, 10_000_000);
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
    fn allocations_are_summed_rounded_once_and_cut_below_the_allocator() {
        let f = a_sampled_function as *const () as usize;
        // A function of the sampler, named `kiln::self_profiling::alloc::…`: the leaf of
        // every sampled allocation's stack.
        let sampler = super::super::alloc::unsampled as *const () as usize;
        let mut s = Stacks::default();
        let w = Allocated { objects: 1.4, bytes: 100.6 };
        assert!(s.add(&[sampler, f + 1], w));
        assert!(s.add(&[sampler, f + 1], w));
        // A stack of the sampler alone keeps its one frame.
        assert!(s.add(&[sampler], w));
        let mut symbols = Some(Symbols::load().unwrap());
        let p = s.memory_pprof(&mut symbols, 5, 6, 512 << 10);
        let str_of = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(
            p.sample_type.iter().map(|t| (str_of(t.r#type), str_of(t.unit))).collect::<Vec<_>>(),
            [("alloc_objects", "count"), ("alloc_space", "bytes")]
        );
        let period_type = p.period_type.as_ref().unwrap();
        assert_eq!((str_of(period_type.r#type), str_of(period_type.unit), p.period), ("space", "bytes", 512 << 10));
        let name_of = |location_id: u64| {
            let line = &p.location[location_id as usize - 1].line[0];
            str_of(p.function[line.function_id as usize - 1].name).to_string()
        };
        let mut samples: Vec<_> = p
            .sample
            .iter()
            .map(|s| (s.location_id.iter().map(|&l| name_of(l)).collect::<Vec<_>>(), s.value.clone()))
            .collect();
        samples.sort();
        assert_eq!(samples.len(), 2);
        assert!(samples[0].0[0].ends_with("alloc::unsampled") && samples[0].1 == [1, 101], "{samples:?}");
        assert!(samples[1].0.len() == 1 && samples[1].0[0].ends_with("tests::a_sampled_function"), "{samples:?}");
        assert_eq!(samples[1].1, [3, 201]);
    }

    #[test]
    fn the_table_of_stacks_is_bounded() {
        let mut s = Stacks::default();
        for i in 0..MAX_STACKS {
            assert!(s.add(&[i], 1u64));
        }
        assert!(!s.add(&[usize::MAX], 1));
        // A stack already counted still counts.
        assert!(s.add(&[0], 1));
        assert_eq!(s.len(), MAX_STACKS);
    }
}
