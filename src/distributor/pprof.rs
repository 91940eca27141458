//! pprof decoding, validation and normalisation: from the bytes a client sent to the dense
//! `Profile` the owning cores intern, split into groups by string sample labels.
//!
//! Validation follows Pyroscope's distributor (messages and limits alike, see shared/api.md
//! §2.1): any failure here is the client's fault and becomes HTTP 400 / `invalid_argument`.
use kiln_proto::kiln::v1::ProfileInput;
use kiln_shards::model::labels::Labels;
use kiln_shards::model::profile::{parse_span_id, Function, Line, Location, Mapping, Profile, Sample, ValueType};
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
    let b = name.as_bytes();
    memchr::memchr(b'[', b)?;
    // Brackets are ASCII, so every cut falls on a char boundary: the kept runs between
    // them are copied whole.
    let mut out = String::with_capacity(name.len());
    let (mut depth, mut i) = (0usize, 0);
    for at in memchr::memchr2_iter(b'[', b']', b) {
        if depth == 0 {
            out.push_str(&name[i..at]);
        }
        match b[at] {
            b'[' => depth += 1,
            _ if depth > 0 => depth -= 1,
            _ => return None,
        }
        i = at + 1;
    }
    if depth > 0 {
        return None;
    }
    out.push_str(&name[i..]);
    (out.len() != name.len()).then_some(out)
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
/// The fast reader adds up the decoded-size cost as it reads and stops once it passes
/// [`MAX_DECODED_RATIO`] (an error the reference path then words); what it builds before
/// that is compact, a bounded multiple of the bytes read.
pub fn decode_and_normalize(bytes: &[u8], limits: PprofLimits) -> Result<Decoded, PprofError> {
    match fast::decode(bytes, limits) {
        Ok(decoded) => Ok(decoded),
        // prost decodes the whole message before `normalize` checks anything: a validation
        // error stands only if the rest of the message decodes too.
        Err(fast::Fallback::Invalid(msg)) => {
            decode(bytes)?;
            Err(invalid(msg))
        }
        // Bytes the fast reader does not take, and those past the size ratio (which
        // `decode` refuses, with the error's words).
        Err(fast::Fallback::Malformed | fast::Fallback::TooLarge) => normalize(decode(bytes)?, limits),
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

/// `normalize`'s first checks, on what both paths know before looking at any symbol:
/// sample types, string 0, the number of samples.
pub(crate) fn check_header(
    sample_types: usize,
    string0_empty: bool,
    samples: usize,
    limits: PprofLimits,
) -> Result<(), String> {
    if sample_types == 0 {
        return Err("empty profile".into());
    }
    if !string0_empty {
        return Err("string 0 should be empty string".into());
    }
    if limits.max_samples > 0 && samples > limits.max_samples {
        return Err(format!(
            "profile has {samples} samples, which is more than the limit of {} (-validation.max-profile-stacktrace-samples)",
            limits.max_samples
        ));
    }
    Ok(())
}

/// The sample types and the period type, given as (type, unit) string indices, checked
/// against the `nstr` strings. A period type of (0, 0) is no period type.
pub(crate) fn dense_value_types(
    sample_types: impl ExactSizeIterator<Item = (i64, i64)>,
    period_type: Option<(i64, i64)>,
    nstr: i64,
) -> Result<(Vec<ValueType>, Option<ValueType>), &'static str> {
    let dense = |(t, u): (i64, i64)| {
        let in_range = |i: i64| i >= 0 && i < nstr;
        (in_range(t) && in_range(u)).then_some(ValueType { r#type: t as u32, unit: u as u32 })
    };
    let mut types = Vec::with_capacity(sample_types.len());
    for st in sample_types {
        types.push(dense(st).ok_or("sample type type string index out of range")?);
    }
    let period = match period_type {
        Some(pt) if pt != (0, 0) => Some(dense(pt).ok_or("period type string index out of range")?),
        _ => None,
    };
    Ok((types, period))
}

/// One pprof location as kiln stores it, its mapping and the functions of its lines
/// (function id, line) looked up by id. Shared by the prost path and the fast reader.
pub(crate) fn dense_location(
    id: u64,
    mapping_id: u64,
    address: u64,
    lines: impl ExactSizeIterator<Item = (u64, i64)>,
    mapping_of: impl Fn(u64) -> Option<u32>,
    function_of: impl Fn(u64) -> Option<u32>,
) -> Result<Location, String> {
    if id == 0 {
        return Err("location id is 0".into());
    }
    let mapping = match mapping_id {
        0 => 0,
        m => mapping_of(m).ok_or_else(|| format!("location {id} references unknown mapping id {m}"))? + 1,
    };
    let mut dense = Vec::with_capacity(lines.len());
    for (function_id, line) in lines {
        let function = function_of(function_id)
            .ok_or_else(|| format!("location {id} references unknown function id {function_id}"))?;
        dense.push(Line { function, line });
    }
    // Symbolized frames need no address: clearing it lets equal frames dedup.
    let address = if dense.is_empty() { address } else { 0 };
    Ok(Location { mapping, address, lines: dense })
}

/// Checked after the symbols, as Pyroscope does: a broken .NET profile reports its zero
/// function ids first.
pub(crate) fn check_sample_type_names(sample_types: &[ValueType], strings: &[String]) -> Result<(), &'static str> {
    if sample_types.iter().any(|st| strings[st.r#type as usize].contains('-')) {
        return Err("sample type contains -");
    }
    Ok(())
}

/// A sample's shape: one value per sample type, at most [`MAX_SAMPLE_LABELS`] labels.
#[inline]
pub(crate) fn check_sample(values: usize, sample_types: usize, labels: usize) -> Result<(), String> {
    if values != sample_types {
        return Err("sample value length mismatch".into());
    }
    if labels > MAX_SAMPLE_LABELS {
        return Err(format!("sample has {labels} labels, which is more than the limit of {MAX_SAMPLE_LABELS}"));
    }
    Ok(())
}

/// The series labels of a sample into `key`, from its labels as (key, str, num_unit) string
/// indices: numeric labels (str 0) and those `non_series` names (called on a key in range)
/// are left out; sorted by key, and of a key given twice the smallest value is kept.
#[inline]
pub(crate) fn series_key(
    labels: impl Iterator<Item = (i64, i64, i64)>,
    nstr: i64,
    non_series: impl Fn(i64) -> bool,
    key: &mut Vec<(u32, u32)>,
) -> Result<(), &'static str> {
    let in_range = |i: i64| i >= 0 && i < nstr;
    key.clear();
    for (k, v, unit) in labels {
        if !in_range(k) || !in_range(v) || !in_range(unit) {
            return Err("sample label string index out of range");
        }
        if v == 0 || non_series(k) {
            continue;
        }
        key.push((k as u32, v as u32));
    }
    if !key.is_sorted() {
        key.sort_unstable();
    }
    key.dedup_by_key(|(k, _)| *k);
    Ok(())
}

/// The span a sample was taken in, from its `span_id` label or else its `profile_id` label
/// (what the Java agent and older SDKs send; Pyroscope renames it to `span_id`): 16 hex
/// digits, anything else is no span. `labels` are (key, str) string indices, already
/// checked to lie in `strings` (by [`series_key`]).
pub(crate) fn sample_span(labels: impl Iterator<Item = (i64, i64)>, strings: &[String]) -> u64 {
    let (mut span, mut profile) = (None, None);
    for (k, v) in labels {
        let text = |i: i64| strings.get(i as usize).map_or("", String::as_str);
        match text(k) {
            "span_id" => span = span.or(Some(v)),
            "profile_id" => profile = profile.or(Some(v)),
            _ => {}
        }
    }
    span.or(profile).and_then(|v| parse_span_id(strings.get(v as usize)?)).unwrap_or(0)
}

/// A sample's stack as location indices, the root-most [`MAX_STACK_DEPTH`] frames of it
/// (pprof lists the leaf first).
#[inline]
pub(crate) fn dense_stack(ids: &[u64], location_of: impl Fn(u64) -> Option<u32>) -> Result<Vec<u32>, String> {
    let kept = &ids[ids.len().saturating_sub(MAX_STACK_DEPTH)..];
    let mut locs = Vec::with_capacity(kept.len());
    for &id in kept {
        locs.push(location_of(id).ok_or_else(|| format!("sample references unknown location id {id}"))?);
    }
    Ok(locs)
}

/// Samples as kiln stores them, and their indices grouped by series labels (as in
/// [`Decoded::groups`]).
pub(crate) type DenseSamples = (Vec<Sample>, Vec<(Labels, Vec<u32>)>);

/// Samples grouped by their series labels, groups in the order they first appear.
#[derive(Default)]
pub(crate) struct SeriesGroups {
    groups: Vec<(Labels, Vec<u32>)>,
    index: FxHashMap<Vec<(u32, u32)>, usize>,
    /// Most samples have no series labels, or those of the sample before them: both groups
    /// are remembered so that they need no lookup.
    unlabelled: Option<usize>,
    last: Option<usize>,
    last_key: Vec<(u32, u32)>,
}

impl SeriesGroups {
    /// Adds sample `sample` to the group of `key` (from [`series_key`]); once per sample,
    /// inlined into the readers' loops.
    #[inline(always)]
    pub(crate) fn add(&mut self, key: &[(u32, u32)], strings: &[String], sample: u32) {
        let g = match (self.unlabelled, self.last) {
            (Some(g), _) if key.is_empty() => g,
            (_, Some(g)) if !key.is_empty() && key == self.last_key => g,
            _ => self.find(key, strings),
        };
        self.groups[g].1.push(sample);
    }

    /// The group of `key`, made if it is new, remembered as the last one.
    fn find(&mut self, key: &[(u32, u32)], strings: &[String]) -> usize {
        let g = match self.index.get(key) {
            Some(&g) => g,
            None => {
                let labels = Labels::from_pairs(
                    key.iter().map(|&(k, v)| (strings[k as usize].clone(), strings[v as usize].clone())),
                );
                self.groups.push((labels, Vec::new()));
                self.index.insert(key.to_vec(), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        if key.is_empty() {
            self.unlabelled = Some(g);
        } else {
            self.last = Some(g);
            self.last_key.clear();
            self.last_key.extend_from_slice(key);
        }
        g
    }

    pub(crate) fn into_groups(self) -> Vec<(Labels, Vec<u32>)> {
        self.groups
    }
}

/// How many times its size a pprof may take once decoded (plus [`DECODED_SLACK`]), as
/// [`wirecost`](super::wirecost) bounds it. Real profiles take a few times their size (the
/// fixtures at most 16, a .NET profile whose samples carry labels: see the test); one made
/// of empty records (a 2-byte sample is a 72-byte struct) takes 70 and more, and is refused:
/// by the fast reader as it counts (its top-level pass refuses empty samples, mappings and
/// locations before building anything for them; what it has built by then is compact, at most
/// 16 times the input), and by the reference path before prost decodes anything.
pub const MAX_DECODED_RATIO: usize = 40;
pub const DECODED_SLACK: usize = 64 * 1024;

/// Whether a pprof of `len` bytes whose decoded form costs `cost` passes [`MAX_DECODED_RATIO`].
pub(crate) fn decoded_size_exceeded(len: usize, cost: usize) -> bool {
    cost > len.saturating_mul(MAX_DECODED_RATIO) + DECODED_SLACK
}

/// Refuses a pprof whose decoded form would pass [`MAX_DECODED_RATIO`], from a walk of its
/// bytes ([`wirecost`](super::wirecost)).
fn check_decoded_size(bytes: &[u8]) -> Result<(), PprofError> {
    let cost = super::wirecost::cost(bytes, &super::wirecost::shapes::PROFILE);
    if decoded_size_exceeded(bytes.len(), cost) {
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
    // 1. What is known before the symbols: header, strings, value types.
    let string0_empty = p.string_table.first().is_some_and(|s| s.is_empty());
    check_header(p.sample_type.len(), string0_empty, p.sample.len(), limits).map_err(invalid)?;
    let nstr = p.string_table.len() as i64;
    let mut strings = owned_strings(std::mem::take(&mut p.string_table))?;
    let (sample_types, period_type) = dense_value_types(
        p.sample_type.iter().map(|st| (st.r#type, st.unit)),
        p.period_type.as_ref().map(|pt| (pt.r#type, pt.unit)),
        nstr,
    )
    .map_err(invalid)?;
    let go = detect_language(&strings) == Language::Go;
    // 2. The symbols, each indexed by its pprof id.
    let (mappings, mapping_index) = index_mappings(&p.mapping, nstr)?;
    let (functions, function_index) = index_functions(&p.function, nstr, go, &mut strings)?;
    let (locations, location_index) = index_locations(&p.location, &mapping_index, &function_index)?;
    check_sample_type_names(&sample_types, &strings).map_err(invalid)?;
    // 3. The samples, repaired first where Go truncated them.
    if go {
        // On the pprof as sent (its ids, sample order, all-zero samples): see gofix.
        super::gofix::repair_pprof(&mut p, &strings);
    }
    let raw_samples = std::mem::take(&mut p.sample);
    let (samples, groups) = dense_samples(raw_samples, sample_types.len(), nstr, &strings, &location_index)?;
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
            keys: Default::default(),
        },
        groups,
    })
}

/// The string table as kept (long strings cut to their suffix); not UTF-8 is invalid.
fn owned_strings(table: Vec<Vec<u8>>) -> Result<Vec<String>, PprofError> {
    let mut strings = Vec::with_capacity(table.len());
    for mut s in table {
        truncate_suffix(&mut s);
        match String::from_utf8(s) {
            Ok(s) => strings.push(s),
            Err(e) => return Err(invalid(format!("invalid utf8 string hex: {}", hex(e.as_bytes())))),
        }
    }
    Ok(strings)
}

/// Where pprof ids point in the dense tables kiln builds. An id given twice points at the
/// later entry, as a map insert does.
pub(crate) trait IdTable {
    fn for_entries(n: usize) -> Self;
    fn set(&mut self, id: u64, index: u32);
}

type IdMap = FxHashMap<u64, u32>;

impl IdTable for IdMap {
    fn for_entries(_: usize) -> Self {
        IdMap::default()
    }
    fn set(&mut self, id: u64, index: u32) {
        self.insert(id, index);
    }
}

/// Each raw symbol's dense form, in order, and the table of their pprof ids: `dense` gives
/// a symbol's id and dense form, or why it is refused.
pub(crate) fn dense_by_id<R, T, E, I: IdTable>(
    raw: &[R],
    mut dense: impl FnMut(&R) -> Result<(u64, T), E>,
) -> Result<(Vec<T>, I), E> {
    let mut index = I::for_entries(raw.len());
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let (id, t) = dense(r)?;
        index.set(id, out.len() as u32);
        out.push(t);
    }
    Ok((out, index))
}

fn index_mappings(raw: &[kiln_proto::google::v1::Mapping], nstr: i64) -> Result<(Vec<Mapping>, IdMap), PprofError> {
    dense_by_id(raw, |m| Ok((m.id, dense_mapping(m, nstr).map_err(invalid)?)))
}

fn index_functions(
    raw: &[kiln_proto::google::v1::Function],
    nstr: i64,
    go: bool,
    strings: &mut Vec<String>,
) -> Result<(Vec<Function>, IdMap), PprofError> {
    let mut cleaned = CleanedNames::default();
    dense_by_id(raw, |f| {
        let function =
            dense_function(f.id, f.name, f.system_name, f.filename, f.start_line, nstr, go, strings, &mut cleaned);
        Ok((f.id, function.map_err(invalid)?))
    })
}

fn index_locations(
    raw: &[kiln_proto::google::v1::Location],
    mapping_index: &IdMap,
    function_index: &IdMap,
) -> Result<(Vec<Location>, IdMap), PprofError> {
    dense_by_id(raw, |l| {
        let lines = l.line.iter().map(|ln| (ln.function_id, ln.line));
        let location = dense_location(
            l.id,
            l.mapping_id,
            l.address,
            lines,
            |m| mapping_index.get(&m).copied(),
            |f| function_index.get(&f).copied(),
        );
        Ok((l.id, location.map_err(invalid)?))
    })
}

/// The samples that have a value, as kiln stores them, grouped by series labels. `nstr`
/// is the size of the string table as sent: `strings` may have grown since (cleaned Go
/// names), and labels may not point there.
fn dense_samples(
    raw: Vec<kiln_proto::google::v1::Sample>,
    ntypes: usize,
    nstr: i64,
    strings: &[String],
    location_index: &IdMap,
) -> Result<DenseSamples, PprofError> {
    let non_series = |k: i64| NON_SERIES_SAMPLE_LABELS.contains(&strings[k as usize].as_str());
    let mut samples = Vec::with_capacity(raw.len());
    let mut groups = SeriesGroups::default();
    let mut key = Vec::new();
    for s in raw {
        check_sample(s.value.len(), ntypes, s.label.len()).map_err(invalid)?;
        if s.value.iter().all(|v| *v == 0) {
            continue;
        }
        series_key(s.label.iter().map(|l| (l.key, l.str, l.num_unit)), nstr, non_series, &mut key).map_err(invalid)?;
        let locations = dense_stack(&s.location_id, |id| location_index.get(&id).copied()).map_err(invalid)?;
        groups.add(&key, strings, samples.len() as u32);
        let span_id = sample_span(s.label.iter().map(|l| (l.key, l.str)), strings);
        samples.push(Sample { locations, values: s.value, span_id });
    }
    Ok((samples, groups.into_groups()))
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// Names made of the pieces that matter to the bracket walk, multi-byte chars among them.
    pub(crate) fn arb_go_name() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop::sample::select(vec!["[", "]", "[go.shape.", "go.shape.", "pkg.F", "é", " ", "int", "[]"]);
        prop::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    proptest::proptest! {
        #[test]
        fn type_parameters_drop_as_a_walk_over_chars_drops_them(name in arb_go_name()) {
            // The walk one char at a time this replaced.
            let by_chars = |name: &str| {
                if !name.contains('[') {
                    return None;
                }
                let mut out = String::new();
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
            };
            proptest::prop_assert_eq!(drop_go_type_parameters(&name), by_chars(&name));
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
