//! The fast pprof decoder: a hand-written protobuf reader for the pprof `Profile` message that
//! builds kiln's dense [`Profile`] and its sample groups directly, producing exactly what
//! `normalize(decode(bytes)?, limits)` produces (the reference path, kept in `pprof.rs`)
//! without prost's intermediate `ProfileInput` (a heap allocation per sample for each of
//! `location_id`, `value` and `label`, one per string, one per location's lines).
//!
//! Passes over the bytes:
//! 1. [`scan`] reads the top-level fields once: scalars, sample types, the period type,
//!    mappings and functions are decoded on the spot (fixed-size records), strings are cut
//!    to their kept suffix and checked for UTF-8 in place, and the byte ranges of the
//!    locations and samples are kept for later (they refer to ids and strings that may come
//!    after them).
//! 2. For a Go profile whose sample types `gofix` looks at (heap or CPU), a [`Repair`] is
//!    made; whether it repairs is decided from the samples' depths as step 4 reads them.
//! 3. The strings are copied into their `String`s; the symbols are validated and indexed in
//!    `normalize`'s order: sample types, period type, mappings, functions (Go type
//!    parameters dropped), locations.
//! 4. Each sample is parsed into reused scratch buffers, validated, and written straight
//!    into kiln's `Sample` and its group. With a [`Repair`], every sample's whole stack is
//!    kept in dense location indices; once all are read, if the depths call for it, the
//!    stacks are repaired (`gofix::repair_dense`, or `gofix::SelfMerge` for a profile with
//!    Go type parameters, whose repair Pyroscope runs on the profile merged with itself)
//!    and given to their samples.
//!
//! Id lookups use [`IdIndex`], a dense table for the usual small ids with a hash map for the
//! rest. This module never reports what it cannot reproduce exactly; it hands those cases
//! back as a [`Fallback`] and `pprof::decode_and_normalize` (the one place that decides)
//! takes the reference path for them:
//! * [`Fallback::Malformed`]: the bytes are not a protobuf `Profile` this reader accepts. The
//!   reader is never more lenient than prost (varints, keys, wire types of known fields,
//!   packed and unpacked repeated scalars, length bounds all checked the same way); it is
//!   stricter only for groups (wire types 3/4), which it leaves to prost.
//! * [`Fallback::Invalid`]: a validation error, found in `normalize`'s order with its
//!   message. It stands only if the whole message decodes, since prost decodes everything
//!   before `normalize` checks anything; the rare error path asks prost.
//!
//! A Go profile whose stacks may have been truncated by the Go runtime
//! (`gofix::may_be_truncated`, on the same sample types and depths `gofix::repair_pprof`
//! looks at) is repaired here too, on the dense stacks, with or without type parameters.
use crate::distributor::pprof::{
    check_header, check_sample, check_sample_type_names, decoded_size_exceeded, dense_by_id, dense_function,
    dense_location, dense_mapping, dense_stack, dense_value_types, detect_language, hex, kept_suffix, sample_span,
    series_key, CleanedNames, Decoded, DenseSamples, IdTable, Language, PprofLimits, SeriesGroups, MAX_STACK_DEPTH,
    NON_SERIES_SAMPLE_LABELS,
};
use crate::distributor::{gofix, wirecost};
use kiln_shards::model::profile::{Function, Location, Mapping, Profile, Sample};
use rustc_hash::FxHashMap;

/// Why the fast path gave a profile back to the reference path.
#[derive(Debug, PartialEq)]
pub enum Fallback {
    /// Not a protobuf `Profile` as this reader takes it (prost tells the exact error).
    Malformed,
    /// This validation error, unless the message does not decode at all.
    Invalid(String),
    /// Decoded, it would pass the size ratio (`pprof::MAX_DECODED_RATIO`; the reference
    /// path words the error).
    TooLarge,
}

type Res<T> = Result<T, Fallback>;

fn invalid<T>(msg: impl Into<String>) -> Res<T> {
    Err(Fallback::Invalid(msg.into()))
}

// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A protobuf reader over one message's bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn new(b: &'a [u8]) -> Self {
        Cursor { b, pos: 0 }
    }

    #[inline]
    fn more(&self) -> bool {
        self.pos < self.b.len()
    }

    #[inline(always)]
    fn varint(&mut self) -> Res<u64> {
        let (v, n) = varint_at(self.b, self.pos)?;
        self.pos += n;
        Ok(v)
    }

    /// A field key: (field number, wire type), checked as prost checks it.
    #[inline(always)]
    fn key(&mut self) -> Res<(u32, u8)> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) || (key & 7) > 5 || key >> 3 == 0 {
            return Err(Fallback::Malformed);
        }
        Ok(((key >> 3) as u32, (key & 7) as u8))
    }

    /// A length-delimited payload.
    #[inline(always)]
    fn bytes(&mut self) -> Res<&'a [u8]> {
        let len = self.varint()?;
        let rest = self.b.len() - self.pos;
        if len > rest as u64 {
            return Err(Fallback::Malformed);
        }
        let s = &self.b[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(s)
    }

    fn advance(&mut self, n: usize) -> Res<()> {
        if self.b.len() - self.pos < n {
            return Err(Fallback::Malformed);
        }
        self.pos += n;
        Ok(())
    }

    /// Skips an unknown field. Groups are left to prost.
    #[inline(always)]
    fn skip(&mut self, wire: u8) -> Res<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.advance(8),
            LEN => self.bytes().map(drop),
            FIXED32 => self.advance(4),
            _ => Err(Fallback::Malformed),
        }
    }

    /// A singular scalar field's value: prost requires the varint wire type.
    #[inline(always)]
    fn scalar(&mut self, wire: u8) -> Res<u64> {
        if wire != VARINT {
            return Err(Fallback::Malformed);
        }
        self.varint()
    }

    /// A message field's bytes: prost requires the length-delimited wire type.
    #[inline(always)]
    fn message(&mut self, wire: u8) -> Res<&'a [u8]> {
        if wire != LEN {
            return Err(Fallback::Malformed);
        }
        self.bytes()
    }

    /// A repeated varint field, packed or not, appended to `out`.
    #[inline(always)]
    fn repeated<T: FromVarint>(&mut self, wire: u8, out: &mut Vec<T>) -> Res<()> {
        match wire {
            VARINT => {
                out.push(T::from_varint(self.varint()?));
                Ok(())
            }
            LEN => {
                let packed = self.bytes()?;
                // Every value takes a byte at least.
                out.reserve(packed.len());
                let mut i = 0;
                while i < packed.len() {
                    let (v, n) = varint_at(packed, i)?;
                    i += n;
                    out.push(T::from_varint(v));
                }
                Ok(())
            }
            _ => Err(Fallback::Malformed),
        }
    }
}

/// A repeated scalar's value from its varint (`int64` and `uint64` fields).
trait FromVarint {
    fn from_varint(v: u64) -> Self;
}

impl FromVarint for u64 {
    #[inline(always)]
    fn from_varint(v: u64) -> Self {
        v
    }
}

impl FromVarint for i64 {
    #[inline(always)]
    fn from_varint(v: u64) -> Self {
        v as i64
    }
}

/// The varint at `b[i..]`: its value and length. One- and two-byte varints (most ids,
/// indices and small values) are read inline.
#[inline(always)]
fn varint_at(b: &[u8], i: usize) -> Res<(u64, usize)> {
    match b.get(i) {
        Some(&x) if x < 0x80 => Ok((u64::from(x), 1)),
        Some(&x) => match b.get(i + 1) {
            Some(&y) if y < 0x80 => Ok((u64::from(x & 0x7f) | u64::from(y) << 7, 2)),
            _ => varint_long(&b[i..]),
        },
        None => Err(Fallback::Malformed),
    }
}

/// A varint of two or more bytes at the start of `b`: its value and length. At most ten
/// bytes, the tenth at most 1 (prost's overflow check); overlong encodings are accepted.
#[inline(never)]
fn varint_long(b: &[u8]) -> Res<(u64, usize)> {
    let mut v = 0u64;
    for (i, &x) in b.iter().take(10).enumerate() {
        v |= u64::from(x & 0x7f) << (7 * i);
        if x < 0x80 {
            if i == 9 && x >= 2 {
                break;
            }
            return Ok((v, i + 1));
        }
    }
    Err(Fallback::Malformed)
}

/// Pprof ids → dense indices: a table for ids below a bound derived from the number of
/// entries (pprof writers number from 1), a hash map above it. Inserting an id again
/// replaces it, as `HashMap::insert` does in the reference path.
struct IdIndex {
    limit: u64,
    dense: Vec<u32>,
    sparse: FxHashMap<u64, u32>,
}

const ABSENT: u32 = u32::MAX;

impl IdTable for IdIndex {
    fn for_entries(entries: usize) -> Self {
        IdIndex { limit: 2 * entries as u64 + 64, dense: Vec::new(), sparse: FxHashMap::default() }
    }

    fn set(&mut self, id: u64, index: u32) {
        if id < self.limit {
            let i = id as usize;
            if i >= self.dense.len() {
                self.dense.resize(i + 1, ABSENT);
            }
            self.dense[i] = index;
        } else {
            self.sparse.insert(id, index);
        }
    }
}

impl IdIndex {
    #[inline(always)]
    fn get(&self, id: u64) -> Option<u32> {
        if id < self.limit {
            self.dense.get(id as usize).copied().filter(|&i| i != ABSENT)
        } else {
            self.sparse.get(&id).copied()
        }
    }
}

#[derive(Default, Clone, Copy)]
struct RawValueType {
    r#type: i64,
    unit: i64,
}

#[derive(Default)]
struct RawFunction {
    id: u64,
    name: i64,
    system_name: i64,
    filename: i64,
    start_line: i64,
}

#[derive(Default)]
struct RawLocation {
    id: u64,
    mapping_id: u64,
    address: u64,
}

#[derive(Default, Clone, Copy)]
struct RawLabel {
    key: i64,
    str: i64,
    num_unit: i64,
}

/// What the top-level pass found.
#[derive(Default)]
struct Top<'a> {
    sample_types: Vec<RawValueType>,
    period_type: Option<RawValueType>,
    samples: Vec<&'a [u8]>,
    mappings: Vec<&'a [u8]>,
    functions: Vec<RawFunction>,
    locations: Vec<&'a [u8]>,
    /// The strings as kept (suffixes of long ones), up to the first one that is not UTF-8
    /// (`utf8_error` then says which). Copied into `String`s only once nothing is left to
    /// the reference path but a validation error.
    strings: Vec<&'a str>,
    /// Entries in the string table.
    nstr: usize,
    first_string_empty: bool,
    utf8_error: Option<String>,
    /// Indices of strings that name sample labels which never become series labels.
    non_series: Vec<u32>,
    time_nanos: i64,
    duration_nanos: i64,
    period: i64,
    /// The decoded-size cost (`wirecost`) of what the top-level pass read: each element of
    /// a repeated field, and the strings and comments; the samples' and locations'
    /// contents are added as they are read.
    cost: usize,
}

/// Stops once the decoded-size cost counted so far passes the ratio for `bytes`.
fn check_cost(bytes: &[u8], cost: usize) -> Res<()> {
    if decoded_size_exceeded(bytes.len(), cost) {
        return Err(Fallback::TooLarge);
    }
    Ok(())
}

fn value_type(b: &[u8], vt: &mut RawValueType) -> Res<()> {
    let mut c = Cursor::new(b);
    while c.more() {
        match c.key()? {
            (1, w) => vt.r#type = c.scalar(w)? as i64,
            (2, w) => vt.unit = c.scalar(w)? as i64,
            (_, w) => c.skip(w)?,
        }
    }
    Ok(())
}

fn mapping(b: &[u8]) -> Res<kiln_proto::google::v1::Mapping> {
    let mut m = kiln_proto::google::v1::Mapping::default();
    let mut c = Cursor::new(b);
    while c.more() {
        match c.key()? {
            (1, w) => m.id = c.scalar(w)?,
            (2, w) => m.memory_start = c.scalar(w)?,
            (3, w) => m.memory_limit = c.scalar(w)?,
            (4, w) => m.file_offset = c.scalar(w)?,
            (5, w) => m.filename = c.scalar(w)? as i64,
            (6, w) => m.build_id = c.scalar(w)? as i64,
            (7, w) => m.has_functions = c.scalar(w)? != 0,
            (8, w) => m.has_filenames = c.scalar(w)? != 0,
            (9, w) => m.has_line_numbers = c.scalar(w)? != 0,
            (10, w) => m.has_inline_frames = c.scalar(w)? != 0,
            (_, w) => c.skip(w)?,
        }
    }
    Ok(m)
}

fn function(b: &[u8]) -> Res<RawFunction> {
    let mut f = RawFunction::default();
    let mut c = Cursor::new(b);
    while c.more() {
        match c.key()? {
            (1, w) => f.id = c.scalar(w)?,
            (2, w) => f.name = c.scalar(w)? as i64,
            (3, w) => f.system_name = c.scalar(w)? as i64,
            (4, w) => f.filename = c.scalar(w)? as i64,
            (5, w) => f.start_line = c.scalar(w)? as i64,
            (_, w) => c.skip(w)?,
        }
    }
    Ok(f)
}

/// A location, its lines (function id, line) into `lines`.
fn location(b: &[u8], lines: &mut Vec<(u64, i64)>) -> Res<RawLocation> {
    lines.clear();
    let mut l = RawLocation::default();
    let mut c = Cursor::new(b);
    while c.more() {
        match c.key()? {
            (1, w) => l.id = c.scalar(w)?,
            (2, w) => l.mapping_id = c.scalar(w)?,
            (3, w) => l.address = c.scalar(w)?,
            (4, w) => {
                let mut line = Cursor::new(c.message(w)?);
                let (mut function_id, mut number) = (0u64, 0i64);
                while line.more() {
                    match line.key()? {
                        (1, w) => function_id = line.scalar(w)?,
                        (2, w) => number = line.scalar(w)? as i64,
                        (_, w) => line.skip(w)?,
                    }
                }
                lines.push((function_id, number));
            }
            (5, w) => drop(c.scalar(w)?), // is_folded
            (_, w) => c.skip(w)?,
        }
    }
    Ok(l)
}

/// A sample into scratch buffers: location ids, values, labels.
#[inline]
fn sample(b: &[u8], ids: &mut Vec<u64>, values: &mut Vec<i64>, labels: &mut Vec<RawLabel>) -> Res<()> {
    ids.clear();
    values.clear();
    labels.clear();
    let mut c = Cursor::new(b);
    while c.more() {
        match c.key()? {
            (1, w) => c.repeated(w, ids)?,
            (2, w) => c.repeated(w, values)?,
            (3, w) => {
                let mut lc = Cursor::new(c.message(w)?);
                let mut l = RawLabel::default();
                while lc.more() {
                    match lc.key()? {
                        (1, w) => l.key = lc.scalar(w)? as i64,
                        (2, w) => l.str = lc.scalar(w)? as i64,
                        (3, w) => drop(lc.scalar(w)?), // num
                        (4, w) => l.num_unit = lc.scalar(w)? as i64,
                        (_, w) => lc.skip(w)?,
                    }
                }
                labels.push(l);
            }
            (_, w) => c.skip(w)?,
        }
    }
    Ok(())
}

/// A whole stack cut to its root-most [`MAX_STACK_DEPTH`] frames, as `dense_stack` cuts.
fn root_most(mut stack: Vec<u32>) -> Vec<u32> {
    if stack.len() > MAX_STACK_DEPTH {
        stack.drain(..stack.len() - MAX_STACK_DEPTH);
    }
    stack
}

/// The top-level pass. It stops once the decoded-size cost of what it read passes the
/// ratio, so a profile of empty records costs little before it is refused.
fn scan(bytes: &[u8]) -> Res<Top<'_>> {
    use wirecost::{element, shapes};
    let mut t = Top::default();
    let mut comments: Vec<u64> = Vec::new();
    let mut c = Cursor::new(bytes);
    while c.more() {
        check_cost(bytes, t.cost)?;
        match c.key()? {
            (1, w) => {
                let mut vt = RawValueType::default();
                value_type(c.message(w)?, &mut vt)?;
                t.sample_types.push(vt);
                t.cost += element(&shapes::VALUE_TYPE);
            }
            (2, w) => {
                t.samples.push(c.message(w)?);
                t.cost += element(&shapes::SAMPLE);
            }
            (3, w) => {
                t.mappings.push(c.message(w)?);
                t.cost += element(&shapes::MAPPING);
            }
            (4, w) => {
                t.locations.push(c.message(w)?);
                t.cost += element(&shapes::LOCATION);
            }
            (5, w) => {
                t.functions.push(function(c.message(w)?)?);
                t.cost += element(&shapes::FUNCTION);
            }
            (6, w) => {
                let raw = c.message(w)?; // `bytes` takes the same wire type as a message
                t.cost += wirecost::string_element(raw.len());
                let i = t.nstr;
                t.nstr += 1;
                if i == 0 {
                    t.first_string_empty = raw.is_empty();
                }
                if t.utf8_error.is_some() {
                    continue; // the profile is rejected; only the wire format still matters
                }
                let kept = kept_suffix(raw);
                match std::str::from_utf8(kept) {
                    Ok(s) => {
                        if NON_SERIES_SAMPLE_LABELS.contains(&s) {
                            t.non_series.push(i as u32);
                        }
                        t.strings.push(s);
                    }
                    Err(_) => t.utf8_error = Some(format!("invalid utf8 string hex: {}", hex(kept))),
                }
            }
            (9, w) => t.time_nanos = c.scalar(w)? as i64,
            (10, w) => t.duration_nanos = c.scalar(w)? as i64,
            (11, w) => {
                // A singular message field seen again merges into the first.
                let vt = t.period_type.get_or_insert_with(RawValueType::default);
                value_type(c.message(w)?, vt)?;
            }
            (12, w) => t.period = c.scalar(w)? as i64,
            (7 | 8 | 14, w) => drop(c.scalar(w)?), // drop_frames, keep_frames, default_sample_type
            (13, w) => {
                comments.clear();
                c.repeated(w, &mut comments)?; // comment
                t.cost += wirecost::SCALAR * comments.len();
            }
            (_, w) => c.skip(w)?,
        }
    }
    Ok(t)
}

/// Decodes, validates and normalises raw pprof bytes as `normalize(decode(bytes)?, limits)`
/// does, or says why it leaves them to that path. The steps are the module's passes.
pub fn decode(bytes: &[u8], limits: PprofLimits) -> Res<Decoded> {
    decode_counted(bytes, limits).map(|(decoded, _)| decoded)
}

/// [`decode`], and the decoded-size cost it counted (`wirecost::cost` of the bytes).
fn decode_counted(bytes: &[u8], limits: PprofLimits) -> Res<(Decoded, usize)> {
    // 1. The top-level fields; from here on, `normalize`'s checks in its order, and the
    //    decoded-size cost checked after each step that adds to it.
    let top = scan(bytes)?;
    let mut cost = top.cost;
    check_cost(bytes, cost)?;
    check_header(top.sample_types.len(), top.nstr > 0 && top.first_string_empty, top.samples.len(), limits)
        .or_else(invalid)?;
    if let Some(e) = &top.utf8_error {
        return invalid(e.as_str());
    }
    let nstr = top.nstr as i64;
    let (sample_types, period_type) = dense_value_types(
        top.sample_types.iter().map(|st| (st.r#type, st.unit)),
        top.period_type.map(|pt| (pt.r#type, pt.unit)),
        nstr,
    )
    .or_else(invalid)?;
    // 2. Whether `gofix` may repair this profile: by its sample types here, by its stacks'
    //    depths once its samples are read.
    let go = detect_language(&top.strings) == Language::Go;
    let truncation = match go {
        true => gofix::Truncation::of(sample_types.iter().map(|st| top.strings[st.r#type as usize])),
        false => None,
    };
    // 3. The strings and the symbols, each symbol indexed by its pprof id.
    // Cleaned Go names are appended as they are made (one per distinct name): reserving one
    // per function would cost 24 bytes for each 2-byte function of a hostile profile.
    let mut strings: Vec<String> = Vec::with_capacity(top.strings.len());
    strings.extend(top.strings.iter().map(|&s| s.to_owned()));
    let (mappings, mapping_index) = index_mappings(&top.mappings, nstr)?;
    let (functions, function_index) = index_functions(&top.functions, nstr, go, &mut strings)?;
    let symbols = Symbols { mappings: &mapping_index, functions: &function_index };
    let (locations, location_index, location_ids) = index_locations(&top.locations, symbols, &mut cost)?;
    check_cost(bytes, cost)?;
    check_sample_type_names(&sample_types, &strings).or_else(invalid)?;
    // 4. The samples, repaired where Go truncated them.
    let repair = truncation.map(|t| Repair::new(&top, t, &location_ids, symbols));
    let (samples, groups) = dense_samples(&top, sample_types.len(), &strings, &location_index, repair, &mut cost)?;
    check_cost(bytes, cost)?;
    let decoded = Decoded {
        profile: Profile {
            strings,
            sample_types,
            period_type,
            period: top.period,
            time_nanos: top.time_nanos,
            duration_nanos: top.duration_nanos,
            mappings,
            functions,
            locations,
            samples,
            keys: Default::default(),
        },
        groups,
    };
    Ok((decoded, cost))
}

/// The mappings, decoded here (the top-level pass only kept their bytes).
fn index_mappings(raw: &[&[u8]], nstr: i64) -> Res<(Vec<Mapping>, IdIndex)> {
    dense_by_id(raw, |b| {
        let m = mapping(b)?;
        Ok((m.id, dense_mapping(&m, nstr).or_else(invalid)?))
    })
}

fn index_functions(
    raw: &[RawFunction],
    nstr: i64,
    go: bool,
    strings: &mut Vec<String>,
) -> Res<(Vec<Function>, IdIndex)> {
    let mut cleaned = CleanedNames::default();
    dense_by_id(raw, |f| {
        let function =
            dense_function(f.id, f.name, f.system_name, f.filename, f.start_line, nstr, go, strings, &mut cleaned);
        Ok((f.id, function.or_else(invalid)?))
    })
}

/// The id indices a location refers through.
#[derive(Clone, Copy)]
struct Symbols<'a> {
    mappings: &'a IdIndex,
    functions: &'a IdIndex,
}

/// The locations, decoded here (the top-level pass only kept their bytes), and the pprof id
/// of each.
fn index_locations(raw: &[&[u8]], symbols: Symbols<'_>, cost: &mut usize) -> Res<(Vec<Location>, IdIndex, Vec<u64>)> {
    let mut lines = Vec::new();
    let mut ids = Vec::with_capacity(raw.len());
    let (locations, index) = dense_by_id(raw, |b| {
        let l = location(b, &mut lines)?;
        *cost += wirecost::element(&wirecost::shapes::LINE) * lines.len();
        let location = dense_location(
            l.id,
            l.mapping_id,
            l.address,
            lines.iter().copied(),
            |m| symbols.mappings.get(m),
            |f| symbols.functions.get(f),
        );
        ids.push(l.id);
        Ok((l.id, location.or_else(invalid)?))
    })?;
    Ok((locations, index, ids))
}

/// The truncated-stack repair of a Go profile whose sample types `gofix` looks at, done as
/// its samples are read: every sample's stack (all-zero samples included, in the pprof's
/// order), whole, as dense location indices, and its labels; once all are read, whether
/// their depths call for the repair (`gofix::Truncation`, told each as it comes: no pass of
/// its own over the samples), and the repair, as `gofix::repair_pprof` repairs the pprof.
/// Pyroscope repairs only a valid profile: if a sample refers to an unknown location, the
/// samples fail or pass validation as they are, unrepaired.
struct Repair<'a> {
    truncation: gofix::Truncation,
    /// The pprof id of each location.
    location_ids: &'a [u64],
    symbols: Symbols<'a>,
    /// Every sample's whole stack (empty for one with an unknown location).
    stacks: Vec<Vec<u32>>,
    /// Every sample's labels as (key, string), one run after another, and where each
    /// sample's run ends: what the self-merge compares samples by.
    labels: Vec<(i64, i64)>,
    label_ends: Vec<u32>,
    all_known: bool,
}

impl<'a> Repair<'a> {
    fn new(top: &Top<'_>, truncation: gofix::Truncation, location_ids: &'a [u64], symbols: Symbols<'a>) -> Self {
        let samples = top.samples.len();
        Repair {
            truncation,
            location_ids,
            symbols,
            stacks: Vec::with_capacity(samples),
            labels: Vec::new(),
            label_ends: Vec::with_capacity(samples),
            all_known: true,
        }
    }

    /// The next sample; whether its locations are all known (its stack is then kept).
    /// Kept out of the samples' loop: inlined there, it made `cpu-big.pprof` read ~10%
    /// slower (perf/decode_bound.sh, 631 → 571 µs once out of line).
    #[inline(never)]
    fn add(&mut self, ids: &[u64], labels: &[RawLabel], location_index: &IdIndex) -> bool {
        self.truncation.see(ids.len());
        let mut stack = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(l) = location_index.get(id) else {
                // No repair: the sample is merged no more.
                self.all_known = false;
                self.stacks.push(Vec::new());
                return false;
            };
            stack.push(l);
        }
        self.stacks.push(stack);
        if self.all_known {
            self.labels.extend(labels.iter().map(|l| (l.key, l.str)));
            self.label_ends.push(self.labels.len() as u32);
        }
        true
    }

    /// Every sample's stack (in the pprof's order), repaired if the depths call for it and
    /// all were known.
    fn finish(self, top: &Top<'_>, strings: &[String], location_index: &IdIndex) -> Res<Vec<Vec<u32>>> {
        let mut stacks = self.stacks;
        if !self.all_known || !self.truncation.may_be() {
            return Ok(stacks);
        }
        let Some(mut merge) = self_merge(top, strings)? else {
            gofix::repair_dense(&mut stacks, self.location_ids);
            return Ok(stacks);
        };
        // With Go type parameters, Pyroscope repairs the profile merged with itself.
        let new_id = merged_locations(&mut merge, top, self.symbols, location_index)?;
        let of_id = |id| location_index.get(id).map(|l| new_id[l as usize]).filter(|&n| n != NONE);
        let words = stacks.iter().map(Vec::len).sum::<usize>() + self.labels.len();
        let mut merged = merge.samples(stacks.len(), words, of_id);
        let mut start = 0;
        for (stack, &end) in stacks.iter().zip(&self.label_ends) {
            let new = stack.iter().map(|&l| Some(new_id[l as usize]).filter(|&n| n != NONE));
            merged.sample(new, self.labels[start..end as usize].iter().copied());
            start = end as usize;
        }
        let mut repaired = merged.into_stacks();
        repaired.repair();
        for (i, stack) in stacks.iter_mut().enumerate() {
            // Every appended id is that of a location (the first of those merged into
            // one), so none is dropped here.
            let tail = repaired.tail(i);
            stack.reserve_exact(tail.len());
            stack.extend(tail.filter_map(|id| location_index.get(id)));
        }
        Ok(stacks)
    }
}

/// A location the self-merge dropped.
const NONE: u64 = u64::MAX;

/// Pyroscope's self-merge of a Go profile whose strings are renamed (`strings`: the table
/// and the cleaned names after it, as `repair_pprof` is given them), fed its functions and
/// mappings (decoded again from the bytes the top-level pass kept; their validation is
/// behind us); `None` if no string is renamed.
fn self_merge(top: &Top<'_>, strings: &[String]) -> Res<Option<gofix::SelfMerge>> {
    let symbols = (top.functions.len(), top.mappings.len(), top.locations.len());
    let Some(mut merge) = gofix::SelfMerge::new(strings, symbols) else {
        return Ok(None);
    };
    for f in &top.functions {
        merge.function(f.start_line, f.name, f.system_name, f.filename);
    }
    for b in &top.mappings {
        merge.mapping(&mapping(b)?);
    }
    Ok(Some(merge))
}

/// `merge` fed the locations (decoded again), and the new id each location's pprof id has
/// in it ([`NONE`]: none), indexed as the samples are, by the location an id names (its
/// later one, if given twice): the new id of the later location of that id the merge kept.
fn merged_locations(
    merge: &mut gofix::SelfMerge,
    top: &Top<'_>,
    symbols: Symbols<'_>,
    location_index: &IdIndex,
) -> Res<Vec<u64>> {
    let mut new_id = vec![NONE; top.locations.len()];
    let mut lines = Vec::new();
    for b in &top.locations {
        let l = location(b, &mut lines)?;
        let lines = lines.iter().map(|&(f, line)| (symbols.functions.get(f), line));
        if let Some(new) = merge.location(l.id, l.address, l.mapping_id, symbols.mappings.get(l.mapping_id), lines) {
            // Every location's id is indexed (validated before).
            if let Some(named) = location_index.get(l.id) {
                new_id[named as usize] = new;
            }
        }
    }
    Ok(new_id)
}

/// The samples that have a value, parsed into reused scratch buffers and written straight
/// into kiln's `Sample`s and their groups; with `repair`, each sample is read once for both.
fn dense_samples(
    top: &Top<'_>,
    ntypes: usize,
    strings: &[String],
    location_index: &IdIndex,
    mut repair: Option<Repair<'_>>,
    cost: &mut usize,
) -> Res<DenseSamples> {
    let label_cost = wirecost::element(&wirecost::shapes::LABEL);
    // `top.nstr`, not `strings.len()`: labels may not point at cleaned Go names.
    let nstr = top.nstr as i64;
    let non_series = |k: i64| top.non_series.iter().any(|&n| i64::from(n) == k);
    let mut samples = Vec::with_capacity(top.samples.len());
    let mut groups = SeriesGroups::default();
    let mut key = Vec::new();
    let (mut ids, mut values, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    // With `repair`: (sample, index in the pprof) of those whose stacks come once repaired.
    let mut pending: Vec<(u32, u32)> = Vec::new();
    for (i, b) in top.samples.iter().enumerate() {
        sample(b, &mut ids, &mut values, &mut labels)?;
        *cost += wirecost::SCALAR * (ids.len() + values.len()) + label_cost * labels.len();
        let known = repair.as_mut().is_some_and(|r| r.add(&ids, &labels, location_index));
        check_sample(values.len(), ntypes, labels.len()).or_else(invalid)?;
        if values.iter().all(|v| *v == 0) {
            continue;
        }
        series_key(labels.iter().map(|l| (l.key, l.str, l.num_unit)), nstr, non_series, &mut key).or_else(invalid)?;
        let locations = if known {
            pending.push((samples.len() as u32, i as u32));
            Vec::new()
        } else {
            dense_stack(&ids, |id| location_index.get(id)).or_else(invalid)?
        };
        groups.add(&key, strings, samples.len() as u32);
        let span_id = sample_span(labels.iter().map(|l| (l.key, l.str)), strings);
        samples.push(Sample { locations, values: values.clone(), span_id });
    }
    if let Some(repair) = repair {
        let mut stacks = repair.finish(top, strings, location_index)?;
        for (s, i) in pending {
            samples[s as usize].locations = root_most(std::mem::take(&mut stacks[i as usize]));
        }
    }
    Ok((samples, groups.into_groups()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributor::pprof::{self, PprofError};
    use kiln_proto::google::v1 as pb;
    use kiln_proto::kiln::v1::ProfileInput;
    use proptest::prelude::*;
    use prost::encoding::{encode_key, encode_varint, WireType};
    use prost::Message;

    type Outcome = Result<Decoded, PprofError>;

    fn reference(bytes: &[u8], limits: PprofLimits) -> Outcome {
        pprof::normalize(pprof::decode(bytes)?, limits)
    }

    fn differ(a: &Outcome, b: &Outcome) -> Option<String> {
        match (a, b) {
            (Ok(a), Ok(b)) => {
                if a.profile != b.profile {
                    return Some("profiles differ".into());
                }
                (a.groups != b.groups).then(|| format!("groups differ: {:?} vs {:?}", a.groups, b.groups))
            }
            (Err(a), Err(b)) => (a != b).then(|| format!("errors differ: {a:?} vs {b:?}")),
            (Ok(_), Err(e)) => Some(format!("ok vs error {e:?}")),
            (Err(e), Ok(_)) => Some(format!("error {e:?} vs ok")),
        }
    }

    /// Which way the fast reader went.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Way {
        Fast,
        Invalid,
        Malformed,
        TooLarge,
    }

    /// Checks the entry point, and the fast reader on its own, against the reference path.
    fn check(bytes: &[u8], limits: PprofLimits) -> Result<Way, String> {
        let want = reference(bytes, limits);
        if let Some(d) = differ(&pprof::decode_and_normalize(bytes, limits), &want) {
            return Err(format!("entry point: {d}"));
        }
        match decode_counted(bytes, limits) {
            Ok((got, cost)) => {
                // The size it counted is the one the reference path walks.
                let walked = crate::distributor::wirecost::cost(bytes, &crate::distributor::wirecost::shapes::PROFILE);
                if cost != walked {
                    return Err(format!("fast reader: decoded-size cost {cost}, walked {walked}"));
                }
                differ(&Ok(got), &want).map_or(Ok(Way::Fast), |d| Err(format!("fast reader: {d}")))
            }
            Err(Fallback::TooLarge) => match &want {
                Err(PprofError::Invalid(m)) if m.starts_with("the profile would take") => Ok(Way::TooLarge),
                _ => Err(format!("fast reader: too large, reference {:?}", want.as_ref().err())),
            },
            Err(Fallback::Invalid(msg)) => match (&want, pprof::decode(bytes)) {
                (Err(PprofError::Decode(_)), Err(_)) => Ok(Way::Invalid),
                (Err(PprofError::Invalid(m)), Ok(_)) if *m == msg => Ok(Way::Invalid),
                _ => Err(format!("fast reader: invalid {msg:?}, reference {:?}", want.err())),
            },
            Err(Fallback::Malformed) => Ok(Way::Malformed),
        }
    }

    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }

    /// Every file of the shared pprof fixtures (and whatever else lies there) decodes the
    /// same both ways, with and without a sample limit.
    #[test]
    fn fixtures_match_the_reference_path() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/pprof");
        let mut paths = Vec::new();
        files(std::path::Path::new(root), &mut paths);
        paths.sort();
        let mut fast = 0;
        for path in &paths {
            let raw = std::fs::read(path).unwrap();
            let bytes = kiln_io::compress::maybe_gunzip(&raw, 1 << 30).map_or(raw.clone(), |b| b.into_owned());
            let name = path.strip_prefix(root).unwrap().display();
            for max_samples in [0, 10] {
                match check(&bytes, PprofLimits { max_samples }) {
                    Ok(way) => {
                        eprintln!("{name} (max {max_samples}): {way:?}");
                        fast += usize::from(way == Way::Fast);
                    }
                    Err(e) => panic!("{name} (max {max_samples}): {e}"),
                }
            }
            if pprof::decode(&bytes).is_ok() {
                assert!(!matches!(decode(&bytes, PprofLimits { max_samples: 0 }), Err(Fallback::Malformed)), "{name}");
            }
        }
        assert!(fast >= 20, "only {fast} fixtures took the fast path");
    }

    #[test]
    fn fixtures_decode_well_within_the_size_ratio() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/pprof");
        let mut paths = Vec::new();
        files(std::path::Path::new(root), &mut paths);
        let mut worst = (0.0f64, String::new());
        for path in &paths {
            let raw = std::fs::read(path).unwrap();
            let bytes = kiln_io::compress::maybe_gunzip(&raw, 1 << 30).map_or(raw.clone(), |b| b.into_owned());
            if bytes.len() < 1000 || pprof::decode(&bytes).is_err() {
                continue;
            }
            let c = crate::distributor::wirecost::cost(&bytes, &crate::distributor::wirecost::shapes::PROFILE);
            let ratio = c as f64 / bytes.len() as f64;
            if ratio > worst.0 {
                worst = (ratio, path.display().to_string());
            }
        }
        eprintln!("largest decoded/encoded ratio: {:.2} ({})", worst.0, worst.1);
        // Real profiles stay far from the ratio that refuses a profile.
        assert!(worst.0 < pprof::MAX_DECODED_RATIO as f64 / 2.0, "{worst:?}");
    }

    /// Profiles made of empty records (each 2 bytes, tens of bytes decoded) are refused as
    /// the reference path refuses them, by the top-level pass before it has read them all;
    /// a sample of empty labels is decoded the same both ways.
    #[test]
    fn empty_records_are_refused_as_the_reference_path_refuses_them() {
        let no = PprofLimits { max_samples: 0 };
        for field in [2u8, 3, 4, 5, 6] {
            let bytes = [field << 3 | 2, 0].repeat(100_000);
            let way = check(&bytes, no);
            // Samples, mappings, locations take over 80 bytes each decoded; an empty
            // function or string 80 or 64, at or below the ratio.
            if field <= 4 {
                assert_eq!(way, Ok(Way::TooLarge), "field {field}");
                assert!(matches!(scan(&bytes), Err(Fallback::TooLarge)), "field {field}");
            } else {
                assert!(way.is_ok(), "field {field}: {way:?}");
            }
        }
        let mut p = small();
        let labels = vec![pb::Label::default(); 50_000];
        p.sample[0].label = labels;
        // 32 times their size decoded: within the ratio, whichever way it goes.
        check(&p.encode_to_vec(), no).unwrap();
    }

    #[test]
    fn go_profiles_gofix_may_repair_are_repaired_here_with_or_without_type_parameters() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/pprof/pyroscope/pkg-pprof/");
        // The two `_truncated_` fixtures have Go type parameters.
        for name in
            ["cpu_go_truncated_1.pb.gz", "heap", "heap_delta", "heap_go_truncated_4.pb.gz", "go.cpu.labels.pprof"]
        {
            let raw = std::fs::read(format!("{dir}{name}")).unwrap();
            let bytes = kiln_io::compress::maybe_gunzip(&raw, 1 << 30).unwrap();
            assert_eq!(check(&bytes, PprofLimits { max_samples: 0 }), Ok(Way::Fast), "{name}");
        }
    }

    fn key(field: u32, wire: WireType, out: &mut Vec<u8>) {
        encode_key(field, wire, out);
    }

    fn len_field(field: u32, payload: &[u8], out: &mut Vec<u8>) {
        key(field, WireType::LengthDelimited, out);
        encode_varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn varint_field(field: u32, v: u64, out: &mut Vec<u8>) {
        key(field, WireType::Varint, out);
        encode_varint(v, out);
    }

    /// A small valid profile: one sample of one frame.
    fn small() -> ProfileInput {
        ProfileInput {
            sample_type: vec![pb::ValueType { r#type: 1, unit: 2 }],
            sample: vec![pb::Sample {
                location_id: vec![1],
                value: vec![5],
                label: vec![pb::Label { key: 3, str: 4, ..Default::default() }],
            }],
            location: vec![pb::Location {
                id: 1,
                line: vec![pb::Line { function_id: 1, line: 7 }],
                ..Default::default()
            }],
            function: vec![pb::Function { id: 1, name: 4, ..Default::default() }],
            string_table: ["", "cpu", "nanoseconds", "thread", "main"].iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn wire_edge_cases() {
        let base = small().encode_to_vec();
        let no = PprofLimits { max_samples: 0 };
        let with = |extra: &[u8]| [&base[..], extra].concat();
        // Varints: ten bytes with a last byte of 1 at most; overlong encodings are fine.
        let ten = |last: u8| {
            let mut v = vec![9 << 3];
            v.extend_from_slice(&[0xff; 9]);
            v.push(last);
            v
        };
        assert_eq!(check(&with(&ten(1)), no), Ok(Way::Fast));
        assert_eq!(check(&with(&ten(2)), no), Ok(Way::Malformed));
        assert_eq!(check(&with(&[9 << 3, 0x85, 0x80, 0x80, 0x00]), no), Ok(Way::Fast));
        assert_eq!(
            check(&with(&[9 << 3, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0]), no),
            Ok(Way::Malformed)
        );
        assert_eq!(check(&with(&[9 << 3, 0x80]), no), Ok(Way::Malformed));
        // Keys: field 0, wire types 6 and 7, keys beyond u32.
        for k in [&[0x00, 0x01][..], &[0x0e, 0x00], &[0x0f, 0x00], &[0x80, 0x80, 0x80, 0x80, 0x10, 0x00]] {
            assert_eq!(check(&with(k), no), Ok(Way::Malformed), "{k:?}");
        }
        // Wrong wire types for known fields.
        let mut b = Vec::new();
        varint_field(1, 3, &mut b); // sample_type as a varint
        assert_eq!(check(&with(&b), no), Ok(Way::Malformed));
        let mut b = Vec::new();
        len_field(9, &[1], &mut b); // time_nanos length-delimited
        assert_eq!(check(&with(&b), no), Ok(Way::Malformed));
        let mut b = Vec::new();
        key(13, WireType::SixtyFourBit, &mut b); // comment as fixed64
        b.extend_from_slice(&[0; 8]);
        assert_eq!(check(&with(&b), no), Ok(Way::Malformed));
        // Unknown fields of every wire type are skipped; groups are left to prost.
        let mut b = Vec::new();
        varint_field(15, 300, &mut b);
        key(16, WireType::ThirtyTwoBit, &mut b);
        b.extend_from_slice(&[1, 2, 3, 4]);
        key(17, WireType::SixtyFourBit, &mut b);
        b.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        len_field(18, b"anything", &mut b);
        assert_eq!(check(&with(&b), no), Ok(Way::Fast));
        let mut b = Vec::new();
        key(19, WireType::StartGroup, &mut b);
        varint_field(1, 1, &mut b);
        key(19, WireType::EndGroup, &mut b);
        assert_eq!(check(&with(&b), no), Ok(Way::Malformed));
        let mut b = Vec::new();
        key(19, WireType::EndGroup, &mut b);
        assert_eq!(check(&with(&b), no), Ok(Way::Malformed));
        // Truncated payloads.
        for cut in 1..base.len() {
            check(&base[..cut], no).unwrap();
        }
        // The period type merges field by field; scalars: the last one wins.
        let mut b = Vec::new();
        len_field(11, &[0x08, 0x01], &mut b);
        len_field(11, &[0x10, 0x02], &mut b);
        varint_field(9, 1, &mut b);
        varint_field(9, 2, &mut b);
        let got = decode(&with(&b), no).unwrap().profile;
        assert_eq!(
            (got.period_type, got.time_nanos),
            (Some(kiln_shards::model::profile::ValueType { r#type: 1, unit: 2 }), 2)
        );
        assert_eq!(check(&with(&b), no), Ok(Way::Fast));
        // A validation error before a malformed field: prost's error.
        let mut p = small();
        p.sample[0].location_id = vec![9];
        let mut bad = p.encode_to_vec();
        len_field(2, &[0x0a, 0x01, 0x80], &mut bad); // a later sample: a packed varint cut short
        assert_eq!(check(&bad, no), Ok(Way::Invalid));
        assert!(matches!(pprof::decode_and_normalize(&bad, no), Err(PprofError::Decode(_))));
    }

    #[test]
    fn long_and_invalid_strings() {
        let no = PprofLimits { max_samples: 0 };
        let mut p = small();
        // Cut inside a two-byte character; an invalid byte in the cut part does not count.
        let mut long = vec![0xff];
        long.extend("é".repeat(40_000).bytes());
        p.string_table.push(long);
        assert_eq!(check(&p.encode_to_vec(), no), Ok(Way::Fast));
        let mut bad = "é".repeat(10).into_bytes();
        bad.push(0xc3);
        p.string_table.push(bad);
        assert_eq!(check(&p.encode_to_vec(), no), Ok(Way::Invalid));
    }

    /// How a generated profile is laid out on the wire.
    #[derive(Debug, Clone)]
    struct Layout {
        /// prost's own encoding (everything else below is ignored).
        prost: bool,
        unpacked_ids: bool,
        unpacked_values: bool,
        /// Packed runs split in two fields.
        split: bool,
        labels_first: bool,
        unknown: bool,
        /// Top-level sections reversed (strings and symbols before the samples).
        reversed: bool,
    }

    fn arb_layout() -> impl Strategy<Value = Layout> {
        (any::<bool>(), any::<[bool; 6]>()).prop_map(|(prost, f)| Layout {
            prost,
            unpacked_ids: f[0],
            unpacked_values: f[1],
            split: f[2],
            labels_first: f[3],
            unknown: f[4],
            reversed: f[5],
        })
    }

    fn repeated(field: u32, values: &[u64], unpacked: bool, split: bool, out: &mut Vec<u8>) {
        if unpacked {
            values.iter().for_each(|&v| varint_field(field, v, out));
            return;
        }
        let halves = if split { values.split_at(values.len() / 2) } else { (values, &[][..]) };
        for part in [halves.0, halves.1] {
            if part.is_empty() && split {
                continue;
            }
            let mut packed = Vec::new();
            part.iter().for_each(|&v| encode_varint(v, &mut packed));
            len_field(field, &packed, out);
        }
    }

    fn encode_with(p: &ProfileInput, l: &Layout) -> Vec<u8> {
        if l.prost {
            return p.encode_to_vec();
        }
        let mut sections: Vec<Vec<u8>> = Vec::new();
        let mut out = Vec::new();
        p.sample_type.iter().for_each(|st| len_field(1, &st.encode_to_vec(), &mut out));
        sections.push(std::mem::take(&mut out));
        for s in &p.sample {
            let mut b = Vec::new();
            let labels = |b: &mut Vec<u8>| s.label.iter().for_each(|x| len_field(3, &x.encode_to_vec(), b));
            if l.labels_first {
                labels(&mut b);
            }
            repeated(1, &s.location_id, l.unpacked_ids, l.split, &mut b);
            if l.unknown {
                len_field(9, b"?", &mut b);
            }
            let values: Vec<u64> = s.value.iter().map(|&v| v as u64).collect();
            repeated(2, &values, l.unpacked_values, l.split, &mut b);
            if !l.labels_first {
                labels(&mut b);
            }
            len_field(2, &b, &mut out);
        }
        sections.push(std::mem::take(&mut out));
        p.mapping.iter().for_each(|m| len_field(3, &m.encode_to_vec(), &mut out));
        for loc in &p.location {
            let mut b = pb::Location { line: vec![], ..*loc }.encode_to_vec();
            for ln in &loc.line {
                let mut lb = ln.encode_to_vec();
                if l.unknown {
                    varint_field(3, 12, &mut lb); // column, as upstream pprof has it
                }
                len_field(4, &lb, &mut b);
            }
            len_field(4, &b, &mut out);
        }
        p.function.iter().for_each(|f| len_field(5, &f.encode_to_vec(), &mut out));
        sections.push(std::mem::take(&mut out));
        p.string_table.iter().for_each(|s| len_field(6, s, &mut out));
        sections.push(std::mem::take(&mut out));
        let rest = ProfileInput {
            time_nanos: p.time_nanos,
            duration_nanos: p.duration_nanos,
            period_type: p.period_type,
            period: p.period,
            drop_frames: p.drop_frames,
            default_sample_type: p.default_sample_type,
            ..Default::default()
        };
        out = rest.encode_to_vec();
        let comments: Vec<u64> = p.comment.iter().map(|&c| c as u64).collect();
        repeated(13, &comments, l.unpacked_ids, l.split, &mut out);
        if l.unknown {
            varint_field(15, 7, &mut out); // doc_url, as upstream pprof has it
        }
        sections.push(out);
        if l.reversed {
            sections.reverse();
        }
        sections.concat()
    }

    const VOCABULARY: &[&str] = &[
        "",
        "cpu",
        "nanoseconds",
        "samples",
        "count",
        "main.go",
        "pkg.F[go.shape.int]",
        "pkg.(*T[go.shape.string]).M",
        "span_id",
        "trace_id",
        "profile_id",
        "thread",
        "worker",
        "a-b",
        "java/lang/Thread",
        "Main.java",
    ];

    /// A string index: rarely out of range.
    fn index() -> impl Strategy<Value = i64> {
        prop_oneof![300 => 0i64..8, 1 => Just(-1i64), 1 => 8i64..40, 1 => Just(i64::MAX)]
    }

    /// Mostly `fallback`; rarely a random, zero or huge id.
    fn id(fallback: u64, chaos: u8, random: u64) -> u64 {
        match chaos {
            0 => 0,
            1 => 1 << 40 | random,
            2..=4 => random % 12,
            _ => fallback,
        }
    }

    fn values(n: usize) -> impl Strategy<Value = Vec<i64>> {
        proptest::collection::vec(prop_oneof![3 => Just(0i64), 3 => 1i64..100, 1 => Just(-3i64)], n)
    }

    prop_compose! {
        fn arb_input()(
            first in prop_oneof![60 => Just(""), 1 => Just("x")],
            strings in proptest::collection::vec(proptest::sample::select(VOCABULARY), 7..14),
            invalid in prop_oneof![30 => Just(None), 1 => Just(Some(b"caf\xc3".to_vec())), 1 => Just(Some(vec![0xff]))],
            types in prop_oneof![1 => Just(vec![]), 20 => proptest::collection::vec((index(), index()), 1..3)],
            period_type in proptest::option::of((index(), index())),
            mappings in proptest::collection::vec((any::<(u8, u64)>(), index(), index(), any::<u64>(), any::<[bool; 4]>()), 0..3),
            functions in proptest::collection::vec((any::<(u8, u64)>(), index(), index(), index(), any::<i64>()), 0..7),
            locations in proptest::collection::vec(
                (any::<(u8, u64)>(), prop_oneof![3 => Just(None), 1 => any::<(u8, u64)>().prop_map(Some)], any::<u64>(),
                 proptest::collection::vec((any::<(u8, u64)>(), any::<i64>()), 0..3)),
                0..9,
            ),
            samples in proptest::collection::vec((
                prop_oneof![30 => proptest::collection::vec(any::<(u8, u64)>(), 0..6),
                            1 => proptest::collection::vec(any::<(u8, u64)>(), 995..1010)],
                prop_oneof![20 => Just(None), 1 => (0usize..4).prop_flat_map(values).prop_map(Some)],
                values(3),
                proptest::collection::vec((index(), prop_oneof![Just(0i64), index()], any::<i64>(), index()), 0..4),
            ), 0..12),
            ints in any::<[i64; 4]>(),
            comment in proptest::collection::vec(index(), 0..2),
        ) -> ProfileInput {
            let mut string_table: Vec<Vec<u8>> = vec![first.as_bytes().to_vec()];
            string_table.extend(strings.iter().map(|s| s.as_bytes().to_vec()));
            if let Some(bad) = invalid {
                string_table.push(bad);
            }
            let (nmap, nfun, nloc) = (mappings.len() as u64, functions.len() as u64, locations.len() as u64);
            // Ids 1, 2, …, and references to them, mostly.
            let pick = |(chaos, r): (u8, u64), n: u64| id(if n == 0 { r % 3 } else { r % n + 1 }, chaos, r);
            ProfileInput {
                sample_type: types.iter().map(|&(t, u)| pb::ValueType { r#type: t, unit: u }).collect(),
                sample: samples
                    .into_iter()
                    .map(|(ids, odd_values, values, labels)| pb::Sample {
                        location_id: ids.into_iter().map(|x| pick(x, nloc)).collect(),
                        // Mostly as many values as sample types.
                        value: odd_values.unwrap_or_else(|| values[..types.len()].to_vec()),
                        label: labels.into_iter().map(|(key, str, num, num_unit)| pb::Label { key, str, num, num_unit }).collect(),
                    })
                    .collect(),
                mapping: mappings
                    .into_iter()
                    .enumerate()
                    .map(|(i, ((chaos, r), filename, build_id, start, b))| pb::Mapping {
                        id: id(i as u64 + 1, chaos, r),
                        memory_start: start,
                        memory_limit: start / 2,
                        file_offset: 4096,
                        filename,
                        build_id,
                        has_functions: b[0],
                        has_filenames: b[1],
                        has_line_numbers: b[2],
                        has_inline_frames: b[3],
                    })
                    .collect(),
                location: locations
                    .into_iter()
                    .enumerate()
                    .map(|(i, ((chaos, r), mapping, address, lines))| pb::Location {
                        id: id(i as u64 + 1, chaos, r),
                        mapping_id: mapping.map_or(0, |m| pick(m, nmap)),
                        address,
                        line: lines.into_iter().map(|(f, line)| pb::Line { function_id: pick(f, nfun), line }).collect(),
                        is_folded: address % 2 == 0,
                    })
                    .collect(),
                function: functions
                    .into_iter()
                    .enumerate()
                    .map(|(i, ((chaos, r), name, system_name, filename, start_line))| pb::Function {
                        id: id(i as u64 + 1, chaos, r),
                        name,
                        system_name,
                        filename,
                        start_line,
                    })
                    .collect(),
                string_table,
                period_type: period_type.map(|(t, u)| pb::ValueType { r#type: t, unit: u }),
                time_nanos: ints[0],
                duration_nanos: ints[1],
                period: ints[2],
                drop_frames: ints[3] % 4,
                comment,
                ..Default::default()
            }
        }
    }

    /// A Go CPU profile with one stack of `depth` frames.
    fn go_cpu(depth: usize) -> ProfileInput {
        ProfileInput {
            sample_type: vec![pb::ValueType { r#type: 1, unit: 2 }],
            sample: vec![pb::Sample { location_id: vec![1; depth], value: vec![1], label: vec![] }],
            location: vec![pb::Location {
                id: 1,
                line: vec![pb::Line { function_id: 1, line: 1 }],
                ..Default::default()
            }],
            function: vec![pb::Function { id: 1, name: 3, filename: 4, ..Default::default() }],
            string_table: ["", "cpu", "nanoseconds", "main.f[go.shape.int]", "main.go"]
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn go_profiles_on_either_side_of_the_repair_depth_match_the_reference_path() {
        let no = PprofLimits { max_samples: 0 };
        assert_eq!(check(&go_cpu(59).encode_to_vec(), no), Ok(Way::Fast));
        assert_eq!(check(&go_cpu(60).encode_to_vec(), no), Ok(Way::Fast));
        let unpacked = Layout {
            prost: false,
            unpacked_ids: true,
            unpacked_values: true,
            split: false,
            labels_first: false,
            unknown: true,
            reversed: true,
        };
        assert_eq!(check(&encode_with(&go_cpu(60), &unpacked), no), Ok(Way::Fast));
        assert_eq!(check(&encode_with(&go_cpu(59), &unpacked), no), Ok(Way::Fast));
    }

    prop_compose! {
        /// A Go CPU or heap profile whose stacks are windows of a few deep call paths (all
        /// sharing their root-most frames), cut leaf-most as the Go runtime cuts them: what
        /// the truncated-stack repair works on. Location ids are spread out (sometimes past
        /// the dense id table), one may be given twice, some samples are all zero or labelled.
        /// With `shape`, names carry Go type parameters (Pyroscope then repairs the profile
        /// merged with itself): some frames have two functions whose names differ only there
        /// and two locations, either used by a sample; label values differ only there too;
        /// and one sample may start at a location without address and lines (which the
        /// merge drops), or such a location may take the id of another.
        fn arb_truncated_go()(
            heap in any::<bool>(),
            paths in proptest::collection::vec(prop_oneof![10 => 20usize..150, 1 => 1000usize..1200], 1..4),
            cuts in proptest::collection::vec(
                (any::<prop::sample::Index>(), any::<prop::sample::Index>(),
                 prop_oneof![10 => 1usize..70, 1 => 900usize..1100], 0u8..6),
                1..40,
            ),
            id_base in prop_oneof![3 => Just(1u64), 1 => Just(1u64 << 40)],
            stride in 1u64..4,
            duplicate in any::<bool>(),
            shape in prop_oneof![10 => Just(false), 3 => Just(true)],
            twins in any::<u64>(),
            picks in any::<u64>(),
            bare in 0u8..3,
        ) -> (ProfileInput, bool) {
            const SHARED: usize = 10;
            // Frame `j` of path `k`: the shared root part, then frames of its own.
            let frame = |k: usize, j: usize| if j < SHARED { j } else { SHARED + k * 1200 + j };
            let mut stacks: Vec<(Vec<usize>, u8)> = Vec::new();
            for (path, leaf, depth, kind) in cuts {
                let k = path.index(paths.len());
                let leaf = leaf.index(paths[k]);
                let depth = if heap { depth.min(32) } else { depth };
                let lo = (leaf + 1).saturating_sub(depth);
                stacks.push(((lo..=leaf).rev().map(|j| frame(k, j)).collect(), kind));
            }
            let mut used: Vec<usize> = stacks.iter().flat_map(|(s, _)| s.iter().copied()).collect();
            used.sort_unstable();
            used.dedup();
            let id = |n: usize| id_base + n as u64 * stride;
            let mut strings = vec![String::new(), if heap { "inuse_space" } else { "cpu" }.into(), "bytes".into(), "main.go".into(), "thread".into(), "worker".into()];
            if shape {
                strings.extend(["x[go.shape.int]".into(), "x[go.shape.string]".into()]);
            }
            let name0 = strings.len() as i64;
            let suffix = if shape { "[go.shape.int]" } else { "" };
            strings.extend(used.iter().map(|n| format!("f{n}{suffix}")));
            let mut function: Vec<pb::Function> = (0..used.len())
                .map(|i| pb::Function { id: i as u64 + 1, name: name0 + i as i64, filename: 3, ..Default::default() })
                .collect();
            let mut location: Vec<pb::Location> = used
                .iter()
                .enumerate()
                .map(|(i, &n)| pb::Location {
                    id: id(n),
                    line: vec![pb::Line { function_id: i as u64 + 1, line: 1 }],
                    ..Default::default()
                })
                .collect();
            // Frame `n`'s twin (if it has one): a location with an id of its own, whose
            // function's name differs from the first's only by its type parameters.
            let twin_id = |n: usize| (shape && (twins >> (n % 64)) & 1 == 1).then_some(1u64 << 50 | n as u64);
            for &n in &used {
                if let Some(tid) = twin_id(n) {
                    strings.push(format!("f{n}[go.shape.string]"));
                    let fid = function.len() as u64 + 1;
                    function.push(pb::Function { id: fid, name: strings.len() as i64 - 1, filename: 3, ..Default::default() });
                    location.push(pb::Location { id: tid, line: vec![pb::Line { function_id: fid, line: 1 }], ..Default::default() });
                }
            }
            if duplicate {
                // An earlier location with the id of the first: the later one wins.
                location.insert(0, pb::Location { id: id(used[0]), address: 0x1000, ..Default::default() });
            }
            // Which of a frame's two locations a sample uses.
            let pick = |sample: usize, n: usize| match twin_id(n) {
                Some(tid) if (picks.rotate_left((sample * 7 + n) as u32 % 64)) & 1 == 1 => tid,
                _ => id(n),
            };
            let label = |kind: u8| match kind {
                1 => vec![pb::Label { key: 4, str: 5, ..Default::default() }],
                2 | 3 if shape => vec![pb::Label { key: 4, str: 4 + i64::from(kind), ..Default::default() }],
                _ => vec![],
            };
            let mut sample: Vec<pb::Sample> = stacks
                .iter()
                .enumerate()
                .map(|(k, (s, kind))| pb::Sample {
                    location_id: s.iter().map(|&n| pick(k, n)).collect(),
                    value: vec![i64::from(*kind != 0)],
                    label: label(*kind),
                })
                .collect();
            if shape && bare == 1 {
                // A location without address and lines, at the leaf of the first sample.
                location.push(pb::Location { id: 1 << 51, ..Default::default() });
                sample[0].location_id.insert(0, 1 << 51);
            }
            if shape && bare == 2 {
                // The id of a frame given again, later, to a location without address and
                // lines: the merge keeps the earlier one for that id, kiln the later.
                location.push(pb::Location { id: id(used[used.len() - 1]), ..Default::default() });
            }
            let p = ProfileInput {
                sample_type: vec![pb::ValueType { r#type: 1, unit: 2 }],
                sample,
                function,
                location,
                string_table: strings.into_iter().map(String::into_bytes).collect(),
                ..Default::default()
            };
            (p, shape)
        }
    }

    /// Synthetic deep stacks cut as Go cuts them: the repair on the dense form (the fast
    /// path) gives what the repair of the prost path gives.
    #[test]
    fn the_dense_repair_repairs_synthetic_stacks() {
        // One call path f0 (root) … f73, seen whole near the root and cut 5 and 10 frames
        // short of it (see gofix's `grafts_the_missing_root_part`).
        let path = |hi: u32, lo: u32| (lo..=hi).rev().map(|n| u64::from(n) * 7 + 3).collect::<Vec<_>>();
        let mut p = go_cpu(1);
        p.string_table[3] = b"main.f".to_vec();
        p.location = (0..74u64)
            .map(|n| pb::Location {
                id: n * 7 + 3,
                line: vec![pb::Line { function_id: 1, line: n as i64 }],
                ..Default::default()
            })
            .collect();
        p.sample = [path(39, 0), path(68, 5), path(73, 10), path(3, 0)]
            .into_iter()
            .map(|location_id| pb::Sample { location_id, value: vec![1], label: vec![] })
            .collect();
        let bytes = p.encode_to_vec();
        assert_eq!(check(&bytes, PprofLimits { max_samples: 0 }), Ok(Way::Fast));
        let got = decode(&bytes, PprofLimits { max_samples: 0 }).unwrap().profile;
        let depths: Vec<usize> = got.samples.iter().map(|s| s.locations.len()).collect();
        assert_eq!(depths, [40, 69, 74, 4]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn truncated_go_profiles_match_the_reference_path(
            (p, shape) in arb_truncated_go(),
            layout in arb_layout(),
        ) {
            let way = check(&encode_with(&p, &layout), PprofLimits { max_samples: 0 }).map_err(TestCaseError::fail)?;
            prop_assert_eq!(way, Way::Fast, "shape: {}", shape);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn generated_profiles_match_the_reference_path(
            p in arb_input(),
            layout in arb_layout(),
            max_samples in prop_oneof![10 => Just(0usize), 1 => 1usize..8],
        ) {
            let bytes = encode_with(&p, &layout);
            let way = check(&bytes, PprofLimits { max_samples }).map_err(TestCaseError::fail)?;
            // Well-formed bytes without groups are never left to prost.
            prop_assert_ne!(way, Way::Malformed);
        }

        #[test]
        fn damaged_profiles_match_the_reference_path(
            p in arb_input(),
            layout in arb_layout(),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut bytes = encode_with(&p, &layout);
            if bytes.is_empty() {
                return Ok(());
            }
            for (at, b) in damage {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            check(&bytes, PprofLimits { max_samples: 0 }).map_err(TestCaseError::fail)?;
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            check(&bytes, PprofLimits { max_samples: 0 }).map_err(TestCaseError::fail)?;
        }
    }
}
