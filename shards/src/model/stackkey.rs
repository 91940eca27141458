//! Content keys of a profile's stacks: each sample's stack as one 128-bit hash of what its
//! frames are (the strings, functions, mappings and addresses behind them), not of any
//! table's indices. Two samples of any two profiles with equal keys have the same stack in
//! every head (the chance of two different stacks sharing a key is ~n²/2¹²⁹, as for the
//! head's whole-stack index).
//!
//! Why: a head finds a stack it holds already by its key alone (`Symbols::intern_keyed`),
//! with none of the profile's locations mapped to the head's (each a lookup of its lines,
//! functions and strings, ~70% of a push's interning when most stacks repeat, as they do
//! from one push of a service to the next). The keys cost a hash of each string and of each
//! stack's frames, done where the profile is made (a decode or replay thread), once per
//! profile however many cores share it, and off the core that owns the head.
//!
//! A key covers exactly what a head's interning compares: a string's bytes (`Profile::string`,
//! "" past the table, as the head reads it), a function's three strings and start line, a
//! mapping's fields with its two strings, a location's mapping (none for 0), address and
//! lines (function, line), and a stack's locations in order.
use crate::model::profile::Profile;
use std::sync::OnceLock;
use xxhash_rust::xxh3::xxh3_128;

/// A profile's stack keys, computed once on first use (`Profile::stack_keys`).
///
/// Invariant: a profile's stacks and symbol tables are not changed once its keys were read.
/// Kiln's decoders finish a profile before anything reads them; a clone starts without keys
/// (it may be changed), and debug builds check the keys against the profile at every append.
#[derive(Default)]
pub struct StackKeys(OnceLock<Box<[u128]>>);

impl Clone for StackKeys {
    fn clone(&self) -> Self {
        StackKeys::default()
    }
}

/// Keys are derived from the profile: two profiles are equal by their contents alone.
impl PartialEq for StackKeys {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for StackKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(k) => write!(f, "StackKeys({} computed)", k.len()),
            None => f.write_str("StackKeys(not yet)"),
        }
    }
}

impl StackKeys {
    pub(crate) fn get_or_compute(&self, p: &Profile) -> &[u128] {
        self.0.get_or_init(|| compute(p))
    }
}

/// The key of "no mapping" (a location's mapping 0); a real mapping's key is a hash.
const NO_MAPPING: u128 = 0;

/// The key of an index past its table: never reached by a checked profile (`Profile::check`),
/// and kept apart from every real key all the same.
fn past_table(what: u8, i: u32) -> u128 {
    u128::MAX - ((what as u128) << 32 | i as u128)
}

/// One key per item of a table: the hash of what `write` puts in `buf` for it.
fn keys_of<T>(items: &[T], buf: &mut Vec<u8>, mut write: impl FnMut(&T, &mut Vec<u8>)) -> Vec<u128> {
    items
        .iter()
        .map(|item| {
            buf.clear();
            write(item, buf);
            xxh3_128(buf)
        })
        .collect()
}

/// Each sample's stack key, in sample order.
pub fn compute(p: &Profile) -> Box<[u128]> {
    let strings: Vec<u128> = p.strings.iter().map(|s| xxh3_128(s.as_bytes())).collect();
    let empty = xxh3_128(b"");
    let string = |i: u32| strings.get(i as usize).copied().unwrap_or(empty);
    let mut buf: Vec<u8> = Vec::with_capacity(128);
    let functions = keys_of(&p.functions, &mut buf, |f, buf| {
        for s in [f.name, f.system_name, f.filename] {
            buf.extend_from_slice(&string(s).to_le_bytes());
        }
        buf.extend_from_slice(&f.start_line.to_le_bytes());
    });
    let mappings = keys_of(&p.mappings, &mut buf, |m, buf| {
        for v in [m.memory_start, m.memory_limit, m.file_offset] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        buf.extend_from_slice(&string(m.filename).to_le_bytes());
        buf.extend_from_slice(&string(m.build_id).to_le_bytes());
        buf.push(m.flag_bits());
    });
    let locations = keys_of(&p.locations, &mut buf, |l, buf| {
        let mapping = match l.mapping {
            0 => NO_MAPPING,
            m => mappings.get(m as usize - 1).copied().unwrap_or_else(|| past_table(1, m)),
        };
        buf.extend_from_slice(&mapping.to_le_bytes());
        buf.extend_from_slice(&l.address.to_le_bytes());
        for line in &l.lines {
            let f = functions.get(line.function as usize).copied().unwrap_or_else(|| past_table(2, line.function));
            buf.extend_from_slice(&f.to_le_bytes());
            buf.extend_from_slice(&line.line.to_le_bytes());
        }
    });
    keys_of(&p.samples, &mut buf, |s, buf| {
        // The buffer sized once and filled a frame at a time: a stack's frames are most of
        // the keys' cost, and a capacity check on each of them was most of that.
        buf.resize(s.locations.len() * 16, 0);
        for (to, &l) in buf.chunks_exact_mut(16).zip(&s.locations) {
            let k = locations.get(l as usize).copied().unwrap_or_else(|| past_table(3, l));
            to.copy_from_slice(&k.to_le_bytes());
        }
    })
    .into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::{Function, Line, Location, Mapping, Sample};

    /// Two frames `a` and `b` (functions over strings 1 and 2), one stack `a <- b`.
    fn two_frames() -> Profile {
        Profile {
            strings: vec!["".into(), "a".into(), "b".into(), "lib.so".into()],
            mappings: vec![Mapping { filename: 3, memory_start: 0x1000, ..Default::default() }],
            functions: vec![Function { name: 1, ..Default::default() }, Function { name: 2, ..Default::default() }],
            locations: vec![
                Location { mapping: 1, address: 0x10, lines: vec![Line { function: 0, line: 3 }] },
                Location { mapping: 1, address: 0x20, lines: vec![Line { function: 1, line: 4 }] },
            ],
            samples: vec![Sample { locations: vec![0, 1], values: vec![1], span_id: 0 }],
            ..Default::default()
        }
    }

    #[test]
    fn keys_follow_content_not_indices() {
        let p = two_frames();
        let base = compute(&p)[0];
        // The same stack with the tables in another order: the same key.
        let mut q = two_frames();
        q.strings.swap(1, 2);
        q.locations.swap(0, 1);
        // Function 0 now names "b" and function 1 "a".
        q.locations[0].lines[0].function = 0;
        q.locations[1].lines[0].function = 1;
        q.samples[0].locations = vec![1, 0];
        assert_eq!(compute(&q)[0], base);
        // Any field a head compares changes the key.
        let changes: [fn(&mut Profile); 9] = [
            |p| p.strings[1] = "c".into(),
            |p| p.functions[0].start_line = 7,
            |p| p.functions[0].system_name = 2,
            |p| p.mappings[0].memory_limit = 5,
            |p| p.mappings[0].has_functions = true,
            |p| p.locations[0].mapping = 0,
            |p| p.locations[0].address = 0x11,
            |p| p.locations[0].lines[0].line = 9,
            |p| p.samples[0].locations.reverse(),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut r = two_frames();
            change(&mut r);
            assert_ne!(compute(&r)[0], base, "change {i}");
        }
        // A frame more or less, and the empty stack, are other stacks.
        let mut r = two_frames();
        r.samples[0].locations.push(0);
        assert_ne!(compute(&r)[0], base);
        r.samples[0].locations.clear();
        assert_ne!(compute(&r)[0], base);
    }

    #[test]
    fn a_clone_does_not_carry_the_keys() {
        let p = two_frames();
        let first = p.stack_keys()[0];
        let mut q = p.clone();
        q.locations[0].address = 0x99;
        assert_ne!(q.stack_keys()[0], first);
        assert_eq!(p.stack_keys()[0], first);
    }
}
