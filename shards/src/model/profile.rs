//! The normalised profile: what a distributor hands to the cores that own its series.
//!
//! Built once on the accepting core from a pprof (or any other ingest format), then shared
//! read-only (`Arc`) with every owning core, which interns the symbols it needs into its own
//! tables. Indices are dense: `Location::mapping` is an index into `mappings` plus one (0 =
//! none), `Line::function` an index into `functions`, every string an index into `strings`.
use crate::model::labels::Labels;
use crate::model::stackkey::StackKeys;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// `strings[0]` is always "".
    pub strings: Vec<String>,
    pub sample_types: Vec<ValueType>,
    pub period_type: Option<ValueType>,
    pub period: i64,
    pub time_nanos: i64,
    pub duration_nanos: i64,
    pub mappings: Vec<Mapping>,
    pub functions: Vec<Function>,
    pub locations: Vec<Location>,
    pub samples: Vec<Sample>,
    /// Each sample's stack as a content key, computed on first use (`stack_keys`).
    pub keys: StackKeys,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ValueType {
    pub r#type: u32,
    pub unit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub memory_start: u64,
    pub memory_limit: u64,
    pub file_offset: u64,
    pub filename: u32,
    pub build_id: u32,
    pub has_functions: bool,
    pub has_filenames: bool,
    pub has_line_numbers: bool,
    pub has_inline_frames: bool,
}

impl Mapping {
    /// The four `has_*` flags as bits 0–3 (functions, filenames, line numbers, inline
    /// frames): how the WAL, block symbols and the query wire all store them.
    pub fn flag_bits(&self) -> u8 {
        u8::from(self.has_functions)
            | u8::from(self.has_filenames) << 1
            | u8::from(self.has_line_numbers) << 2
            | u8::from(self.has_inline_frames) << 3
    }

    /// Sets the `has_*` flags from `flag_bits`' bits (higher bits are the caller's to refuse).
    pub fn set_flag_bits(&mut self, bits: u64) {
        self.has_functions = bits & 1 != 0;
        self.has_filenames = bits & 2 != 0;
        self.has_line_numbers = bits & 4 != 0;
        self.has_inline_frames = bits & 8 != 0;
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Function {
    pub name: u32,
    pub system_name: u32,
    pub filename: u32,
    pub start_line: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Line {
    pub function: u32,
    pub line: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Location {
    pub mapping: u32,
    pub address: u64,
    /// `lines[0]` is the innermost frame; the last is the outermost caller (pprof's rule).
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Leaf first, as in pprof.
    pub locations: Vec<u32>,
    pub values: Vec<i64>,
    /// The span (trace span id) the sample was taken in; 0 = none. Kept per sample, never
    /// a series label (span ids would make every span a series).
    pub span_id: u64,
}

/// A span id as Pyroscope reads it from a `span_id` (or `profile_id`) label and a span
/// selector: 16 hex digits, their 8 bytes read little-endian. `None` for anything else and
/// for the all-zero id (0 means no span).
pub fn parse_span_id(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 {
        return None;
    }
    let mut out = [0u8; 8];
    for (i, pair) in b.chunks(2).enumerate() {
        let hex = |c: u8| (c as char).to_digit(16);
        out[i] = (hex(pair[0])? * 16 + hex(pair[1])?) as u8;
    }
    Some(u64::from_le_bytes(out)).filter(|&id| id != 0)
}

/// The 16 lower-case hex digits `parse_span_id` reads as `id`.
pub fn format_span_id(id: u64) -> String {
    id.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

impl Profile {
    /// Each sample's stack key (`stackkey`), in sample order: computed on first use and kept,
    /// so where the profile is made (a decode or replay thread) is where it is paid for.
    /// The profile must not change after (see `StackKeys`).
    pub fn stack_keys(&self) -> &[u128] {
        self.keys.get_or_compute(self)
    }

    pub fn string(&self, i: u32) -> &str {
        self.strings.get(i as usize).map(String::as_str).unwrap_or("")
    }
}

/// Samples of one profile that share one series label set (the labels without the
/// per-sample-type ones, which the owning core adds).
#[derive(Debug, Clone)]
pub struct SampleGroup {
    pub labels: Labels,
    /// Indices into `Profile::samples`.
    pub samples: Vec<u32>,
}

impl Profile {
    /// Whether every index in the profile and in `groups` points inside its table, and every
    /// sample has one value per sample type: what a core relies on when it interns a profile.
    /// A profile built by kiln's own decoders always passes; one that arrives over the
    /// internal RPC is checked before any core sees it (a hostile caller must not panic a core).
    pub fn check(&self, groups: &[SampleGroup]) -> Result<(), String> {
        let s = self.strings.len() as u32;
        let str_ok = |i: u32, what: &str| if i < s { Ok(()) } else { Err(format!("{what}: string {i} of {s}")) };
        if self.strings.first().is_some_and(|x| !x.is_empty()) {
            return Err("strings[0] is not empty".into());
        }
        for vt in self.sample_types.iter().chain(self.period_type.iter()) {
            str_ok(vt.r#type, "a value type")?;
            str_ok(vt.unit, "a value type")?;
        }
        for m in &self.mappings {
            str_ok(m.filename, "a mapping")?;
            str_ok(m.build_id, "a mapping")?;
        }
        for f in &self.functions {
            str_ok(f.name, "a function")?;
            str_ok(f.system_name, "a function")?;
            str_ok(f.filename, "a function")?;
        }
        let (nm, nf, nl) = (self.mappings.len(), self.functions.len(), self.locations.len());
        for l in &self.locations {
            if l.mapping as usize > nm {
                return Err(format!("a location's mapping {} of {nm}", l.mapping));
            }
            if let Some(line) = l.lines.iter().find(|line| line.function as usize >= nf) {
                return Err(format!("a line's function {} of {nf}", line.function));
            }
        }
        let nt = self.sample_types.len();
        for x in &self.samples {
            if x.values.len() != nt {
                return Err(format!("a sample with {} values for {nt} sample types", x.values.len()));
            }
            if let Some(l) = x.locations.iter().find(|l| **l as usize >= nl) {
                return Err(format!("a sample's location {l} of {nl}"));
            }
        }
        let ns = self.samples.len();
        for g in groups {
            if let Some(i) = g.samples.iter().find(|i| **i as usize >= ns) {
                return Err(format!("a series' sample {i} of {ns}"));
            }
        }
        Ok(())
    }
}
