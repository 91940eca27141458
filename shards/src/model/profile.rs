//! The normalised profile: what a distributor hands to the cores that own its series.
//!
//! Built once on the accepting core from a pprof (or any other ingest format), then shared
//! read-only (`Arc`) with every owning core, which interns the symbols it needs into its own
//! tables. Indices are dense: `Location::mapping` is an index into `mappings` plus one (0 =
//! none), `Line::function` an index into `functions`, every string an index into `strings`.
use crate::model::labels::Labels;

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
}

impl Profile {
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
