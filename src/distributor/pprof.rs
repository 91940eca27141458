//! pprof decoding, validation and normalisation: from the bytes a client sent to the dense
//! `Profile` the owning cores intern, split into groups by string sample labels.
//!
//! Validation follows Pyroscope's distributor (messages and limits alike, see shared/api.md
//! §2.1): any failure here is the client's fault and becomes HTTP 400 / `invalid_argument`.
use kiln_proto::kiln::v1::ProfileInput;
use kiln_shards::model::labels::Labels;
use kiln_shards::model::profile::{Function, Line, Location, Mapping, Profile, Sample, ValueType};
use prost::Message;
use rustc_hash::FxHashMap;

/// The fast reader behind [`decode_and_normalize`].
#[path = "pprof_fast.rs"]
pub mod fast;

/// Pyroscope keeps at most this many frames of a stack, the root-most ones.
pub const MAX_STACK_DEPTH: usize = 1000;
/// Longer strings keep their last this-many bytes.
pub const MAX_STRING_LEN: usize = 65535;
pub const MAX_SAMPLE_LABELS: usize = 100;

/// Sample labels that never become series labels (kept per sample in Pyroscope; kiln drops
/// them until span-level queries exist).
pub(crate) const NON_SERIES_SAMPLE_LABELS: &[&str] = &["span_id", "trace_id", "profile_id", "pprof::span_id"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PprofError {
    /// The bytes are not a protobuf Profile at all.
    #[error("failed to decode pprof: {0}")]
    Decode(String),
    /// A decodable profile that breaks a validation rule.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy)]
pub struct PprofLimits {
    /// 0 = no limit.
    pub max_samples: usize,
}

/// A decoded, validated profile and its samples grouped by string sample labels.
#[derive(Debug)]
pub struct Decoded {
    pub profile: Profile,
    pub groups: Vec<(Labels, Vec<u32>)>,
}

fn invalid(msg: impl Into<String>) -> PprofError {
    PprofError::Invalid(msg.into())
}

/// Language of the profile's code, sniffed from its strings as Pyroscope does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Go,
    Java,
    Ruby,
    NodeJs,
    DotNet,
    Python,
    Rust,
    Unknown,
}

pub fn detect_language<S: AsRef<str>>(strings: &[S]) -> Language {
    for s in strings {
        let s = s.as_ref();
        let has = |p: &str| s.starts_with(p) || s.ends_with(p);
        if has(".go") || s.starts_with("/usr/local/go/") {
            return Language::Go;
        }
        if s.starts_with("java/") || s.starts_with("sun/") {
            return Language::Java;
        }
        if s.ends_with(".rb") || s.starts_with("gems/") {
            return Language::Ruby;
        }
        if s.starts_with("./node_modules/") || s.ends_with(".js") {
            return Language::NodeJs;
        }
        if s.starts_with("System.") || s.starts_with("Microsoft.") {
            return Language::DotNet;
        }
        if s.ends_with(".py") {
            return Language::Python;
        }
        if s.ends_with("main.rs") || s.ends_with("core.rs") {
            return Language::Rust;
        }
    }
    Language::Unknown
}

/// Drops Go generic type-parameter lists: `pkg.(*Client[go.shape.int]).Call` →
/// `pkg.(*Client).Call`. Brackets nest; an unbalanced name is left as it is.
pub fn drop_go_type_parameters(name: &str) -> Option<String> {
    if !name.contains('[') {
        return None;
    }
    let mut out = String::with_capacity(name.len());
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            ']' => return None,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    (depth == 0 && out.len() != name.len()).then_some(out)
}

/// The part of a string table entry that is kept: all of it, or the last `MAX_STRING_LEN`
/// bytes of a longer one.
pub(crate) fn kept_suffix(s: &[u8]) -> &[u8] {
    if s.len() <= MAX_STRING_LEN {
        return s;
    }
    let mut cut = s.len() - MAX_STRING_LEN;
    // Never split a UTF-8 sequence: move forward to a char boundary.
    while cut < s.len() && (s[cut] & 0xC0) == 0x80 {
        cut += 1;
    }
    &s[cut..]
}

/// `kept_suffix` of the concatenation of `parts`, built without the part that would be cut:
/// a string derived from others (the spy fixes' `file function`) costs at most
/// `MAX_STRING_LEN` bytes however long its sources.
pub(crate) fn concat_kept(parts: &[&[u8]]) -> Vec<u8> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let at = |mut i: usize| {
        for p in parts {
            if i < p.len() {
                return p[i];
            }
            i -= p.len();
        }
        unreachable!("index within the total length")
    };
    let mut cut = total.saturating_sub(MAX_STRING_LEN);
    // As `kept_suffix`: never split a UTF-8 sequence.
    while cut > 0 && cut < total && (at(cut) & 0xC0) == 0x80 {
        cut += 1;
    }
    let mut out = Vec::with_capacity(total - cut);
    let mut skip = cut;
    for p in parts {
        let from = skip.min(p.len());
        out.extend_from_slice(&p[from..]);
        skip -= from;
    }
    out
}

fn truncate_suffix(s: &mut Vec<u8>) {
    let cut = s.len() - kept_suffix(s).len();
    s.drain(..cut);
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decodes, validates and normalises raw (already inflated) pprof bytes: the ingest entry
/// point. Exactly `normalize(decode(bytes)?, limits)`, through the fast reader
/// ([`fast::decode`]); the cases it leaves to that reference path are all decided here.
pub fn decode_and_normalize(bytes: &[u8], limits: PprofLimits) -> Result<Decoded, PprofError> {
    check_decoded_size(bytes)?;
    match fast::decode(bytes, limits) {
        Ok(decoded) => Ok(decoded),
        // prost decodes the whole message before `normalize` checks anything: a validation
        // error stands only if the rest of the message decodes too.
        Err(fast::Fallback::Invalid(msg)) => {
            decode(bytes)?;
            Err(invalid(msg))
        }
        // Bytes the fast reader does not take, and Go profiles `gofix` may repair.
        Err(fast::Fallback::Malformed | fast::Fallback::GoFix) => normalize(decode(bytes)?, limits),
    }
}

/// One pprof mapping checked in Pyroscope's order (`nstr`: entries in the string table) and
/// as kiln stores it. Shared by the prost path and the fast reader.
pub(crate) fn dense_mapping(m: &kiln_proto::google::v1::Mapping, nstr: i64) -> Result<Mapping, &'static str> {
    let in_range = |i: i64| i >= 0 && i < nstr;
    if !in_range(m.filename) {
        return Err("mapping file name string index out of range");
    }
    if !in_range(m.build_id) {
        return Err("mapping build id string index out of range");
    }
    Ok(Mapping {
        memory_start: m.memory_start,
        memory_limit: m.memory_limit,
        file_offset: m.file_offset,
        filename: m.filename as u32,
        build_id: m.build_id as u32,
        has_functions: m.has_functions,
        has_filenames: m.has_filenames,
        has_line_numbers: m.has_line_numbers,
        has_inline_frames: m.has_inline_frames,
    })
}

/// Go names cleaned of their type parameters, one per distinct name: string index → index
/// of the cleaned copy appended to the string table. Many functions share one name (every
/// instantiation of a generic function, or a hostile profile pointing all of them at one
/// long name), so without it each would append a copy: with it, the cleaned strings, each
/// shorter than its source, add less than the string table itself.
pub(crate) type CleanedNames = FxHashMap<u32, u32>;

/// One pprof function checked in Pyroscope's order (`nstr`: entries in the original string
/// table) and as kiln stores it; a Go name loses its type parameters, the cleaned name being
/// appended to `strings` once (`cleaned` remembers it). Shared by the prost path and the
/// fast reader.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dense_function(
    id: u64,
    name: i64,
    system_name: i64,
    filename: i64,
    start_line: i64,
    nstr: i64,
    go: bool,
    strings: &mut Vec<String>,
    cleaned: &mut CleanedNames,
) -> Result<Function, &'static str> {
    let in_range = |i: i64| i >= 0 && i < nstr;
    if id == 0 {
        return Err("function id is 0");
    }
    if !in_range(name) {
        return Err("function name string index out of range");
    }
    if !in_range(system_name) {
        return Err("function system name index string out of range");
    }
    if !in_range(filename) {
        return Err("function file name string index out of range");
    }
    let mut n = name as u32;
    if go {
        if let Some(&c) = cleaned.get(&n) {
            n = c;
        } else if let Some(clean) = drop_go_type_parameters(&strings[name as usize]) {
            strings.push(clean);
            let c = strings.len() as u32 - 1;
            cleaned.insert(n, c);
            n = c;
        }
    }
    Ok(Function { name: n, system_name: system_name as u32, filename: filename as u32, start_line })
}

/// How many times its size a pprof may take once decoded (plus [`DECODED_SLACK`]), as
/// [`wirecost`](super::wirecost) bounds it. Real profiles take a few times their size (the
/// fixtures at most 16, a .NET profile whose samples carry labels: see the test); one made
/// of empty records (a 2-byte sample is a 72-byte struct) takes 70 and more, and is refused
/// before it is decoded, by either path.
pub const MAX_DECODED_RATIO: usize = 40;
pub const DECODED_SLACK: usize = 64 * 1024;

/// Refuses a pprof whose decoded form would pass [`MAX_DECODED_RATIO`], from a walk of its
/// bytes ([`wirecost`](super::wirecost)).
fn check_decoded_size(bytes: &[u8]) -> Result<(), PprofError> {
    let cost = super::wirecost::cost(bytes, &super::wirecost::shapes::PROFILE);
    if cost > bytes.len().saturating_mul(MAX_DECODED_RATIO) + DECODED_SLACK {
        return Err(invalid(format!(
            "the profile would take {cost} bytes of memory decoded, more than {MAX_DECODED_RATIO} times its {} bytes: it holds too many empty records",
            bytes.len()
        )));
    }
    Ok(())
}

/// Decodes raw (already inflated) pprof bytes.
pub fn decode(bytes: &[u8]) -> Result<ProfileInput, PprofError> {
    check_decoded_size(bytes)?;
    ProfileInput::decode(bytes).map_err(|e| PprofError::Decode(e.to_string()))
}

/// Validates and normalises a decoded pprof. `now_ns` replaces a zero `time_nanos`.
pub fn normalize(mut p: ProfileInput, limits: PprofLimits) -> Result<Decoded, PprofError> {
    if p.sample_type.is_empty() {
        return Err(invalid("empty profile"));
    }
    if p.string_table.first().is_none_or(|s| !s.is_empty()) {
        return Err(invalid("string 0 should be empty string"));
    }
    if limits.max_samples > 0 && p.sample.len() > limits.max_samples {
        return Err(invalid(format!(
            "profile has {} samples, which is more than the limit of {} (-validation.max-profile-stacktrace-samples)",
            p.sample.len(),
            limits.max_samples
        )));
    }
    let nstr = p.string_table.len() as i64;
    let in_range = |i: i64| i >= 0 && i < nstr;
    let mut strings = Vec::with_capacity(p.string_table.len());
    for mut s in std::mem::take(&mut p.string_table) {
        truncate_suffix(&mut s);
        match String::from_utf8(s) {
            Ok(s) => strings.push(s),
            Err(e) => return Err(invalid(format!("invalid utf8 string hex: {}", hex(e.as_bytes())))),
        }
    }
    let mut sample_types = Vec::with_capacity(p.sample_type.len());
    for st in &p.sample_type {
        if !in_range(st.r#type) || !in_range(st.unit) {
            return Err(invalid("sample type type string index out of range"));
        }
        sample_types.push(ValueType { r#type: st.r#type as u32, unit: st.unit as u32 });
    }
    let period_type = match &p.period_type {
        Some(pt) if pt.r#type != 0 || pt.unit != 0 => {
            if !in_range(pt.r#type) || !in_range(pt.unit) {
                return Err(invalid("period type string index out of range"));
            }
            Some(ValueType { r#type: pt.r#type as u32, unit: pt.unit as u32 })
        }
        _ => None,
    };

    let go = detect_language(&strings) == Language::Go;

    let mut mapping_index: FxHashMap<u64, u32> = FxHashMap::default();
    let mut mappings = Vec::with_capacity(p.mapping.len());
    for m in &p.mapping {
        let mapping = dense_mapping(m, nstr).map_err(invalid)?;
        mapping_index.insert(m.id, mappings.len() as u32);
        mappings.push(mapping);
    }

    let mut function_index: FxHashMap<u64, u32> = FxHashMap::default();
    let mut functions = Vec::with_capacity(p.function.len());
    let mut cleaned = CleanedNames::default();
    for f in &p.function {
        let function =
            dense_function(f.id, f.name, f.system_name, f.filename, f.start_line, nstr, go, &mut strings, &mut cleaned)
                .map_err(invalid)?;
        function_index.insert(f.id, functions.len() as u32);
        functions.push(function);
    }

    let mut location_index: FxHashMap<u64, u32> = FxHashMap::default();
    let mut locations = Vec::with_capacity(p.location.len());
    for l in &p.location {
        if l.id == 0 {
            return Err(invalid("location id is 0"));
        }
        let mapping = if l.mapping_id == 0 {
            0
        } else {
            match mapping_index.get(&l.mapping_id) {
                Some(i) => i + 1,
                None => {
                    return Err(invalid(format!("location {} references unknown mapping id {}", l.id, l.mapping_id)))
                }
            }
        };
        let mut lines = Vec::with_capacity(l.line.len());
        for ln in &l.line {
            let Some(&function) = function_index.get(&ln.function_id) else {
                return Err(invalid(format!("location {} references unknown function id {}", l.id, ln.function_id)));
            };
            lines.push(Line { function, line: ln.line });
        }
        // Symbolized frames need no address: clearing it lets equal frames dedup.
        let address = if lines.is_empty() { l.address } else { 0 };
        location_index.insert(l.id, locations.len() as u32);
        locations.push(Location { mapping, address, lines });
    }

    // Checked after the symbols, as Pyroscope does: a broken .NET profile reports its zero
    // function ids first.
    if sample_types.iter().any(|st| strings[st.r#type as usize].contains('-')) {
        return Err(invalid("sample type contains -"));
    }
    if go {
        // On the pprof as sent (its ids, sample order, all-zero samples): see gofix.
        super::gofix::repair_pprof(&mut p, &strings);
    }

    let ntypes = sample_types.len();
    let mut samples = Vec::with_capacity(p.sample.len());
    let mut group_of: FxHashMap<Vec<(u32, u32)>, usize> = FxHashMap::default();
    let mut groups: Vec<(Labels, Vec<u32>)> = Vec::new();
    let mut key: Vec<(u32, u32)> = Vec::new();
    for s in std::mem::take(&mut p.sample) {
        if s.value.len() != ntypes {
            return Err(invalid("sample value length mismatch"));
        }
        if s.label.len() > MAX_SAMPLE_LABELS {
            return Err(invalid(format!(
                "sample has {} labels, which is more than the limit of {MAX_SAMPLE_LABELS}",
                s.label.len()
            )));
        }
        if s.value.iter().all(|v| *v == 0) {
            continue;
        }
        key.clear();
        for l in &s.label {
            if !in_range(l.key) || !in_range(l.str) || !in_range(l.num_unit) {
                return Err(invalid("sample label string index out of range"));
            }
            if l.str == 0 {
                continue; // numeric label: not part of series identity
            }
            if NON_SERIES_SAMPLE_LABELS.contains(&strings[l.key as usize].as_str()) {
                continue;
            }
            key.push((l.key as u32, l.str as u32));
        }
        key.sort_unstable();
        key.dedup_by_key(|(k, _)| *k);
        let mut locs = Vec::with_capacity(s.location_id.len().min(MAX_STACK_DEPTH));
        // Keep the root-most frames: pprof lists the leaf first.
        let skip = s.location_id.len().saturating_sub(MAX_STACK_DEPTH);
        for id in &s.location_id[skip..] {
            match location_index.get(id) {
                Some(i) => locs.push(*i),
                None => return Err(invalid(format!("sample references unknown location id {id}"))),
            }
        }
        let idx = samples.len() as u32;
        samples.push(Sample { locations: locs, values: s.value });
        let g = match group_of.get(&key) {
            Some(g) => *g,
            None => {
                let labels = Labels::from_pairs(
                    key.iter().map(|(k, v)| (strings[*k as usize].clone(), strings[*v as usize].clone())),
                );
                groups.push((labels, Vec::new()));
                group_of.insert(key.clone(), groups.len() - 1);
                groups.len() - 1
            }
        };
        groups[g].1.push(idx);
    }

    Ok(Decoded {
        profile: Profile {
            strings,
            sample_types,
            period_type,
            period: p.period,
            time_nanos: p.time_nanos,
            duration_nanos: p.duration_nanos,
            mappings,
            functions,
            locations,
            samples,
        },
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_type_parameters_fixture() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/pprof/pyroscope/pkg-pprof/");
        let input = std::fs::read_to_string(format!("{dir}go_type_parameters.txt")).unwrap();
        let expected = std::fs::read_to_string(format!("{dir}go_type_parameters.expected.txt")).unwrap();
        for (i, (a, b)) in input.lines().zip(expected.lines()).enumerate() {
            let got = drop_go_type_parameters(a).unwrap_or_else(|| a.to_string());
            assert_eq!(got, b, "line {}", i + 1);
        }
    }

    #[test]
    fn derived_strings_keep_the_suffix_of_their_concatenation() {
        let long = "é".repeat(MAX_STRING_LEN);
        for parts in [
            vec![&b"file.py"[..], b" ", b"main"],
            vec![long.as_bytes(), b" ", b"main"],
            vec![b"f", b" ", long.as_bytes()],
            vec![&long.as_bytes()[1..], b"", b"x"],
            vec![],
        ] {
            let full = parts.concat();
            assert_eq!(
                concat_kept(&parts),
                kept_suffix(&full),
                "{:?}",
                parts.iter().map(|p| p.len()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn long_strings_keep_their_suffix() {
        let mut s = vec![b'a'; MAX_STRING_LEN + 10];
        s.extend_from_slice(b"end");
        truncate_suffix(&mut s);
        assert_eq!(s.len(), MAX_STRING_LEN);
        assert!(s.ends_with(b"end"));
    }
}
