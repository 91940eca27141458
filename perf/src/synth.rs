//! Synthetic pprof profiles with a chosen shape.
//!
//! 1. A *universe* of `unique_stacks` stacks, each `stack_depth` frames deep, over
//!    `functions` functions. Stacks share prefixes like a real call tree: the frame at depth
//!    `d` of stack `i` is picked from `i >> shift(d)`, where the shift falls from
//!    `log2(unique_stacks)` at the root to 0 at the leaf, so neighbouring stacks share their
//!    root-most frames. Duplicate stacks are re-rolled at the leaf while the function count
//!    allows it.
//! 2. A *variant* is one profile drawn from the universe: `samples_per_profile` samples on
//!    consecutive stacks from a seeded start, with seeded values. Only the functions,
//!    locations and strings the samples reference are written, as a real profiler would.
//!
//! Everything is deterministic in the seeds, so runs are comparable.

use std::collections::{HashMap, HashSet};

use kiln_proto::google::v1::{Function, Line, Location, Mapping, Profile, Sample, ValueType};

use crate::flags::{ProfileKind, Shape};

/// SplitMix64: small, seedable, good enough to spread stacks and values.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        self.next_u64() % n
    }
}

/// The SplitMix64 finaliser: a fast bijective 64-bit hash.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stacks every synthetic profile samples from.
#[derive(Clone, Debug)]
pub struct Universe {
    /// Function indices, root first; every stack has the same depth.
    stacks: Vec<Vec<u32>>,
    functions: usize,
}

impl Universe {
    pub fn new(shape: &Shape, seed: u64) -> Self {
        let depth = shape.stack_depth.max(1);
        let count = shape.unique_stacks.max(1);
        let functions = shape.functions.max(1);
        let bits = usize::BITS - (count - 1).leading_zeros();
        let shift = |d: usize| -> u32 {
            if depth == 1 {
                0
            } else {
                (bits as usize * (depth - 1 - d) / (depth - 1)) as u32
            }
        };
        let pick = |d: usize, key: u64, salt: u64| -> u32 {
            let h = mix64(seed ^ ((d as u64) << 48) ^ key.wrapping_mul(0x100_0000_01B3) ^ salt);
            (h % functions as u64) as u32
        };
        let mut seen: HashSet<Vec<u32>> = HashSet::with_capacity(count);
        let mut stacks = Vec::with_capacity(count);
        for i in 0..count as u64 {
            let mut stack: Vec<u32> = (0..depth).map(|d| pick(d, i >> shift(d), 0)).collect();
            // Re-roll the leaf until the stack is new; give up (keep a duplicate) when the
            // function count cannot make it unique.
            let mut salt = 1;
            while seen.contains(&stack) && salt <= 64 {
                stack[depth - 1] = pick(depth - 1, i, salt);
                salt += 1;
            }
            seen.insert(stack.clone());
            stacks.push(stack);
        }
        Universe { stacks, functions }
    }

    pub fn stacks(&self) -> &[Vec<u32>] {
        &self.stacks
    }

    /// One profile of `kind`: `samples` samples on consecutive stacks from a seeded start.
    pub fn profile(&self, kind: ProfileKind, samples: usize, variant_seed: u64) -> Profile {
        let mut rng = Rng::new(variant_seed);
        let mut b = Builder::new(self.functions);
        let (types, period_type, period): (&[(&str, &str)], (&str, &str), i64) = match kind {
            ProfileKind::Cpu => (&[("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), 10_000_000),
            ProfileKind::Memory => (
                &[
                    ("alloc_objects", "count"),
                    ("alloc_space", "bytes"),
                    ("inuse_objects", "count"),
                    ("inuse_space", "bytes"),
                ],
                ("space", "bytes"),
                512 * 1024,
            ),
        };
        let sample_type = types.iter().map(|(t, u)| ValueType { r#type: b.string(t), unit: b.string(u) }).collect();
        let period_type = Some(ValueType { r#type: b.string(period_type.0), unit: b.string(period_type.1) });
        let start = rng.below(self.stacks.len() as u64) as usize;
        let mut out = Vec::with_capacity(samples);
        for j in 0..samples {
            let stack = &self.stacks[(start + j) % self.stacks.len()];
            let location_id = stack.iter().rev().map(|&f| b.location(f)).collect();
            out.push(Sample { location_id, value: sample_values(kind, &mut rng), label: Vec::new() });
        }
        Profile {
            sample_type,
            sample: out,
            mapping: vec![b.mapping()],
            location: b.locations,
            function: b.functions_out,
            string_table: b.strings,
            time_nanos: 0,
            duration_nanos: 10_000_000_000,
            period_type,
            period,
            ..Default::default()
        }
    }
}

fn sample_values(kind: ProfileKind, rng: &mut Rng) -> Vec<i64> {
    match kind {
        ProfileKind::Cpu => {
            let count = 1 + rng.below(20) as i64;
            vec![count, count * 10_000_000]
        }
        ProfileKind::Memory => {
            let objects = 1 + rng.below(100) as i64;
            let space = objects * (16i64 << rng.below(8));
            vec![objects, space, (objects + 1) / 2, (space / 2).max(1)]
        }
    }
}

/// Interns the strings, functions and locations one profile references.
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions_out: Vec<Function>,
    locations: Vec<Location>,
    /// Function index → location id (== function id), 0 when not yet used.
    location_of: Vec<u64>,
    function_count: usize,
}

const MAPPING_START: u64 = 0x40_0000;

impl Builder {
    fn new(function_count: usize) -> Self {
        Builder {
            strings: vec![String::new()],
            string_ids: HashMap::from([(String::new(), 0)]),
            functions_out: Vec::new(),
            locations: Vec::new(),
            location_of: vec![0; function_count],
            function_count,
        }
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn location(&mut self, f: u32) -> u64 {
        let existing = self.location_of[f as usize];
        if existing != 0 {
            return existing;
        }
        let id = self.locations.len() as u64 + 1;
        let module = f % 31;
        let name = self.string(&format!("kiln_load::synthetic::mod{module}::func{f}"));
        let filename = self.string(&format!("src/synthetic/mod{module}.rs"));
        let start_line = 1 + i64::from(f % 400);
        self.functions_out.push(Function { id, name, system_name: name, filename, start_line });
        self.locations.push(Location {
            id,
            mapping_id: 1,
            address: MAPPING_START + u64::from(f) * 16,
            line: vec![Line { function_id: id, line: start_line + 3 }],
            is_folded: false,
        });
        self.location_of[f as usize] = id;
        id
    }

    fn mapping(&mut self) -> Mapping {
        Mapping {
            id: 1,
            memory_start: MAPPING_START,
            memory_limit: MAPPING_START + self.function_count as u64 * 16 + 16,
            file_offset: 0,
            filename: self.string("/usr/bin/kiln-load-synthetic"),
            build_id: self.string("0123456789abcdef"),
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn shape() -> Shape {
        Shape { stack_depth: 12, unique_stacks: 300, functions: 200, samples_per_profile: 150, ..Shape::default() }
    }

    #[test]
    fn test_synth_universe_has_unique_stacks_of_depth() {
        let s = shape();
        let u = Universe::new(&s, 7);
        assert_eq!(u.stacks().len(), 300);
        assert!(u.stacks().iter().all(|st| st.len() == 12));
        let distinct: HashSet<_> = u.stacks().iter().collect();
        assert_eq!(distinct.len(), 300);
        assert!(u.stacks().iter().flatten().all(|&f| (f as usize) < 200));
        // Prefix sharing: fewer distinct root frames than leaves.
        let roots: HashSet<_> = u.stacks().iter().map(|st| st[0]).collect();
        assert!(roots.len() < 50, "roots {}", roots.len());
    }

    #[test]
    fn test_synth_profile_decodes_with_requested_shape() {
        let s = shape();
        let u = Universe::new(&s, 7);
        for kind in [ProfileKind::Cpu, ProfileKind::Memory] {
            let p = u.profile(kind, s.samples_per_profile, 99);
            let bytes = p.encode_to_vec();
            let back = Profile::decode(bytes.as_slice()).unwrap();
            assert_eq!(back, p);
            let types = match kind {
                ProfileKind::Cpu => 2,
                ProfileKind::Memory => 4,
            };
            assert_eq!(back.sample_type.len(), types);
            assert_eq!(back.sample.len(), 150);
            assert_eq!(back.string_table[0], "");
            let locations: HashSet<u64> = back.location.iter().map(|l| l.id).collect();
            let mut stacks = HashSet::new();
            for sample in &back.sample {
                assert_eq!(sample.location_id.len(), 12);
                assert_eq!(sample.value.len(), types);
                assert!(sample.value.iter().all(|&v| v > 0));
                assert!(sample.location_id.iter().all(|id| locations.contains(id)));
                stacks.insert(sample.location_id.clone());
            }
            assert_eq!(stacks.len(), 150);
            assert!(back.function.len() <= 200);
            assert!(back.function.iter().all(|f| f.id != 0));
            for f in &back.function {
                assert!((f.name as usize) < back.string_table.len());
                assert!((f.filename as usize) < back.string_table.len());
            }
        }
    }

    #[test]
    fn test_synth_more_samples_than_stacks_repeats_stacks() {
        let s = Shape { unique_stacks: 10, samples_per_profile: 25, ..shape() };
        let u = Universe::new(&s, 1);
        let p = u.profile(ProfileKind::Cpu, 25, 3);
        assert_eq!(p.sample.len(), 25);
        let stacks: HashSet<_> = p.sample.iter().map(|s| s.location_id.clone()).collect();
        assert_eq!(stacks.len(), 10);
    }

    #[test]
    fn test_synth_is_deterministic_and_variants_differ() {
        let s = shape();
        let a = Universe::new(&s, 5).profile(ProfileKind::Cpu, 50, 1);
        let b = Universe::new(&s, 5).profile(ProfileKind::Cpu, 50, 1);
        let c = Universe::new(&s, 5).profile(ProfileKind::Cpu, 50, 2);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
