//! The WAL payload of one ingest: tenant, normalised profile and the sample groups a core
//! owns, in a compact varint encoding (version byte first). Samples are written inside
//! their groups, so a record holds only what its core owns; the symbol tables are whole.
use crate::model::labels::Labels;
use crate::model::profile::{Function, Line, Location, Mapping, Profile, Sample, SampleGroup, ValueType};
use kiln_io::codec::{Reader, Writer};

const VERSION: u8 = 1;
/// First byte of a cut marker record (see `encode_cut`).
const CUT: u8 = 2;
/// First byte of an ingest record that carries its push's key (see `encode_keyed`).
const KEYED: u8 = 3;
/// First byte of an abort record: the push with this key was refused (see `encode_abort`).
const ABORT: u8 = 4;
/// Added to an ingest record's first byte when a span section ends it (`encode_spans`):
/// records without span ids are written exactly as before span profiles, and a record cut
/// short before its span section is an error, not a record without spans.
const WITH_SPANS: u8 = 0x10;

/// The shared bounded reader, with the WAL's errors (strings, for now) and owned strings.
struct R<'a>(Reader<'a>);

type Res<T> = Result<T, String>;

/// A read's error as the WAL's string (every read's, one place); out of line, so the
/// inlined reads stay small.
#[cold]
fn message(e: kiln_io::codec::CodecError) -> String {
    e.to_string()
}

impl R<'_> {
    /// A reader of the record `b` past its first (kind) byte, which the caller has looked
    /// at; offsets in errors count from the record's start.
    fn after_kind(b: &[u8]) -> R<'_> {
        let mut r = Reader::new(b);
        // An empty record has no kind byte: every later read then fails.
        r.byte().ok();
        R(r)
    }
    #[inline]
    fn u(&mut self) -> Res<u64> {
        self.0.u().map_err(message)
    }
    #[inline]
    fn u32(&mut self) -> Res<u32> {
        self.0.u32().map_err(message)
    }
    #[inline]
    fn i(&mut self) -> Res<i64> {
        self.0.i().map_err(message)
    }
    /// A count of items: each takes at least one byte of the record.
    #[inline]
    fn len(&mut self) -> Res<usize> {
        self.0.count(1).map_err(message)
    }
    fn s(&mut self) -> Res<String> {
        self.0.str().map(str::to_string).map_err(message)
    }
    fn at_end(&self) -> bool {
        self.0.remaining() == 0
    }
}

/// An ingest record without a push key (what kiln wrote before keys; still read).
pub fn encode(tenant: &str, p: &Profile, groups: &[SampleGroup]) -> Vec<u8> {
    let mut e = KeyedEncoder::start(Some((VERSION, None)), tenant, p, groups);
    e.step(p, groups, usize::MAX);
    e.finish(p, groups)
}

/// The samples of the groups with a span id (one pass, for the flag and the section).
fn span_count(p: &Profile, groups: &[SampleGroup]) -> usize {
    groups.iter().flat_map(|g| g.samples.iter()).filter(|&&si| p.samples[si as usize].span_id != 0).count()
}

/// [`WITH_SPANS`] if `spans` samples have a span id.
fn spans_flag(spans: usize) -> u8 {
    if spans > 0 {
        WITH_SPANS
    } else {
        0
    }
}

/// An ingest record of the push `key`: an abort record with the same key, later in the same
/// core's WAL, takes it back (the push was refused after this record was written).
pub fn encode_keyed(key: u64, tenant: &str, p: &Profile, groups: &[SampleGroup]) -> Vec<u8> {
    let mut e = KeyedEncoder::new(key, tenant, p, groups);
    e.step(p, groups, usize::MAX);
    e.finish(p, groups)
}

/// `encode_keyed`'s record written a part at a time: the symbol tables first (`new`), then
/// the groups' samples about `frames` stack frames a `step`, then the span section
/// (`finish`), the same bytes in the end. So a core can write a large push's record
/// between its other messages. `encode`'s unkeyed record is written by it too, in one step.
pub struct KeyedEncoder {
    w: Writer,
    spans: usize,
    /// The next sample to write: its group, and its place in the group; whether that
    /// group's labels and count are written.
    group: usize,
    sample: usize,
    started: bool,
}

impl KeyedEncoder {
    pub fn new(key: u64, tenant: &str, p: &Profile, groups: &[SampleGroup]) -> Self {
        Self::start(Some((KEYED, Some(key))), tenant, p, groups)
    }

    /// A record whose first byte is `first` (and the span flag), then `key` if any, then
    /// the body: the tenant, the tables, the groups' samples, the span section; the body
    /// alone where `header` is none (see `RecordBody`).
    fn start(header: Option<(u8, Option<u64>)>, tenant: &str, p: &Profile, groups: &[SampleGroup]) -> Self {
        // Two bytes a frame and a value are most of a record: one allocation, not a dozen.
        let frames = super::head::stack_frames(p, groups);
        let mut w = Writer::with_capacity(1024 + 2 * frames + p.strings.iter().map(String::len).sum::<usize>());
        let spans = span_count(p, groups);
        if let Some((first, key)) = header {
            w.byte(first | spans_flag(spans));
            if let Some(key) = key {
                w.u(key);
            }
        }
        encode_symbols(&mut w, tenant, p);
        w.u(groups.len() as u64);
        KeyedEncoder { w, spans, group: 0, sample: 0, started: false }
    }

    /// Writes samples until about `frames` frames were written or all were (then `true`).
    pub fn step(&mut self, p: &Profile, groups: &[SampleGroup], frames: usize) -> bool {
        let mut written = 0usize;
        while let Some(g) = groups.get(self.group) {
            if !self.started {
                encode_group_start(&mut self.w, g);
                self.started = true;
            }
            while let Some(&si) = g.samples.get(self.sample) {
                if written >= frames.max(1) {
                    return false;
                }
                written += encode_sample(&mut self.w, &p.samples[si as usize]) + 1;
                self.sample += 1;
            }
            (self.group, self.sample, self.started) = (self.group + 1, 0, false);
        }
        true
    }

    /// The record, once `step` returned `true`.
    pub fn finish(mut self, p: &Profile, groups: &[SampleGroup]) -> Vec<u8> {
        encode_spans(&mut self.w, p, groups, self.spans);
        self.w.0
    }
}

/// A keyed record's body: all of `encode_keyed`'s bytes after its first byte and key (the
/// tenant, the tables, the groups' samples, the span section), written before the push has
/// a key: on the decode thread that made a large profile, so that the core that owns all of
/// its groups adds the first byte and the key alone (the encoding was ~1 ms of the core's
/// ~4 ms for a 12k-sample Go heap profile).
#[derive(Debug)]
pub struct RecordBody {
    spans: bool,
    bytes: Vec<u8>,
}

impl RecordBody {
    pub fn new(tenant: &str, p: &Profile, groups: &[SampleGroup]) -> Self {
        let mut e = KeyedEncoder::start(None, tenant, p, groups);
        e.step(p, groups, usize::MAX);
        let spans = e.spans > 0;
        RecordBody { spans, bytes: e.finish(p, groups) }
    }

    /// The record's first byte and push `key`: `encode_keyed(key, …)` of the same tenant,
    /// profile and groups is these bytes, then `bytes`.
    pub fn head(&self, key: u64) -> Vec<u8> {
        let mut w = Writer::with_capacity(1 + kiln_io::codec::MAX_VARINT_LEN);
        w.byte(KEYED | if self.spans { WITH_SPANS } else { 0 });
        w.u(key);
        w.0
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The push `key` was refused: replay skips its ingest records in this core's WAL.
pub fn encode_abort(key: u64) -> Vec<u8> {
    let mut w = Writer::with_capacity(11);
    w.byte(ABORT);
    w.u(key);
    w.0
}

/// The key of an abort record, from the raw record (no other record is decoded).
pub fn abort_key(b: &[u8]) -> Option<u64> {
    if b.first() != Some(&ABORT) {
        return None;
    }
    let mut r = R::after_kind(b);
    r.u().ok().filter(|_| r.at_end())
}

/// The tenant and the profile's tables: everything of a record before its groups.
fn encode_symbols(w: &mut Writer, tenant: &str, p: &Profile) {
    w.str(tenant);
    w.u(p.strings.len() as u64);
    for s in &p.strings {
        w.str(s);
    }
    w.u(p.sample_types.len() as u64);
    for st in &p.sample_types {
        w.u(st.r#type as u64);
        w.u(st.unit as u64);
    }
    match p.period_type {
        Some(pt) => {
            w.u(1);
            w.u(pt.r#type as u64);
            w.u(pt.unit as u64);
        }
        None => w.u(0),
    }
    w.i(p.period);
    w.i(p.time_nanos);
    w.i(p.duration_nanos);
    w.u(p.mappings.len() as u64);
    for m in &p.mappings {
        w.u(m.memory_start);
        w.u(m.memory_limit);
        w.u(m.file_offset);
        w.u(m.filename as u64);
        w.u(m.build_id as u64);
        w.u(u64::from(m.flag_bits()));
    }
    w.u(p.functions.len() as u64);
    for f in &p.functions {
        w.u(f.name as u64);
        w.u(f.system_name as u64);
        w.u(f.filename as u64);
        w.i(f.start_line);
    }
    w.u(p.locations.len() as u64);
    for l in &p.locations {
        w.u(l.mapping as u64);
        w.u(l.address);
        w.u(l.lines.len() as u64);
        for ln in &l.lines {
            w.u(ln.function as u64);
            w.i(ln.line);
        }
    }
}

/// A group's labels and sample count, before its samples.
fn encode_group_start(w: &mut Writer, g: &SampleGroup) {
    w.u(g.labels.len() as u64);
    for (k, v) in g.labels.iter() {
        w.str(k);
        w.str(v);
    }
    w.u(g.samples.len() as u64);
}

/// One sample: its stack and values; returns its frames.
fn encode_sample(w: &mut Writer, s: &Sample) -> usize {
    w.u(s.locations.len() as u64);
    w.u32s(&s.locations);
    w.i64s(&s.values);
    s.locations.len()
}

/// The span section, when `spans` samples have a span id.
fn encode_spans(w: &mut Writer, p: &Profile, groups: &[SampleGroup], spans: usize) {
    // The span ids, only where a sample has one (a record without them ends here, as
    // records written before span profiles do, and its first byte says so): their count, then each as the sample's
    // position in the record (its order across groups, as a delta from the previous one)
    // and the id.
    if spans > 0 {
        w.u(spans as u64);
        let mut prev = 0u64;
        let all = groups.iter().flat_map(|g| g.samples.iter());
        for (pos, &si) in all.enumerate() {
            let id = p.samples[si as usize].span_id;
            if id != 0 {
                w.u(pos as u64 - prev);
                prev = pos as u64;
                w.u64_le(id);
            }
        }
    }
}

/// Decodes a record; every index is checked so a decoded record is safe to append.
/// A cut marker: the core froze `tenant`'s head here to become block `block`. Once that
/// block is in the tenant's bucket index, every earlier record of the tenant in this core's
/// WAL is in the block, and replay skips them.
pub fn encode_cut(tenant: &str, block: &str) -> Vec<u8> {
    let mut w = Writer::with_capacity(tenant.len() + block.len() + 4);
    w.byte(CUT);
    w.str(tenant);
    w.str(block);
    w.0
}

/// Whether a record is a cut marker, from its first byte alone.
pub fn is_cut(b: &[u8]) -> bool {
    b.first() == Some(&CUT)
}

/// One WAL record. Nearly every record is an ingest: the other kinds' smaller size would
/// save nothing, and boxing the profile would cost an allocation a record.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Entry {
    /// `key`: the push's key (records written before keys have none).
    Ingest {
        key: Option<u64>,
        tenant: String,
        profile: Profile,
        groups: Vec<SampleGroup>,
    },
    Cut {
        tenant: String,
        block: String,
    },
    Abort {
        key: u64,
    },
}

pub fn decode_entry(b: &[u8]) -> Res<Entry> {
    if is_cut(b) {
        let mut r = R::after_kind(b);
        let tenant = r.s()?;
        let block = r.s()?;
        if !r.at_end() {
            return Err("trailing bytes after a cut record".into());
        }
        return Ok(Entry::Cut { tenant, block });
    }
    if b.first() == Some(&ABORT) {
        return abort_key(b).map(|key| Entry::Abort { key }).ok_or_else(|| "malformed abort record".into());
    }
    let (key, tenant, profile, groups) = decode_keyed(b)?;
    Ok(Entry::Ingest { key, tenant, profile, groups })
}

/// Decodes an ingest record (a cut marker is an error here).
pub fn decode(b: &[u8]) -> Res<(String, Profile, Vec<SampleGroup>)> {
    decode_keyed(b).map(|(_, t, p, g)| (t, p, g))
}

/// Decodes an ingest record with its push key, if it has one.
pub fn decode_keyed(b: &[u8]) -> Res<(Option<u64>, String, Profile, Vec<SampleGroup>)> {
    let mut r = R::after_kind(b);
    let kind = b.first().copied();
    let key = match kind.map(|k| k & !WITH_SPANS) {
        Some(VERSION) => None,
        Some(KEYED) => Some(r.u()?),
        _ => return Err(format!("unknown WAL record version {kind:?}")),
    };
    let spans = kind.is_some_and(|k| k & WITH_SPANS != 0);
    let (tenant, p, groups) = decode_body(r, spans)?;
    Ok((key, tenant, p, groups))
}

fn decode_body(mut r: R<'_>, spans: bool) -> Res<(String, Profile, Vec<SampleGroup>)> {
    let tenant = r.s()?;
    // Every table is sized once from its count (at most the bytes left, each item taking at
    // least one): growing by doubling would cost up to three times as much at the moment a
    // table moves, and a record arrives from other instances too (`ingester::remote`).
    let mut p = Profile::default();
    let n = r.len()?;
    p.strings.reserve_exact(n);
    for _ in 0..n {
        p.strings.push(r.s()?);
    }
    let ns = p.strings.len() as u32;
    let str_idx = |v: u32| if v < ns { Ok(v) } else { Err(format!("string index {v} out of range")) };
    let n = r.len()?;
    p.sample_types.reserve_exact(n);
    for _ in 0..n {
        p.sample_types.push(ValueType { r#type: str_idx(r.u32()?)?, unit: str_idx(r.u32()?)? });
    }
    if r.u()? == 1 {
        p.period_type = Some(ValueType { r#type: str_idx(r.u32()?)?, unit: str_idx(r.u32()?)? });
    }
    p.period = r.i()?;
    p.time_nanos = r.i()?;
    p.duration_nanos = r.i()?;
    let n = r.len()?;
    p.mappings.reserve_exact(n);
    for _ in 0..n {
        let (memory_start, memory_limit, file_offset) = (r.u()?, r.u()?, r.u()?);
        let (filename, build_id) = (str_idx(r.u32()?)?, str_idx(r.u32()?)?);
        let flags = r.u()?;
        let mut m = Mapping { memory_start, memory_limit, file_offset, filename, build_id, ..Default::default() };
        m.set_flag_bits(flags);
        p.mappings.push(m);
    }
    let n = r.len()?;
    p.functions.reserve_exact(n);
    for _ in 0..n {
        p.functions.push(Function {
            name: str_idx(r.u32()?)?,
            system_name: str_idx(r.u32()?)?,
            filename: str_idx(r.u32()?)?,
            start_line: r.i()?,
        });
    }
    let nf = p.functions.len() as u32;
    let nm = p.mappings.len() as u32;
    let n = r.len()?;
    p.locations.reserve_exact(n);
    for _ in 0..n {
        let mapping = r.u32()?;
        if mapping > nm {
            return Err(format!("mapping {mapping} out of range"));
        }
        let address = r.u()?;
        let n = r.len()?;
        let mut lines = Vec::with_capacity(n);
        for _ in 0..n {
            let function = r.u32()?;
            if function >= nf {
                return Err(format!("function {function} out of range"));
            }
            lines.push(Line { function, line: r.i()? });
        }
        p.locations.push(Location { mapping, address, lines });
    }
    let groups = decode_groups(&mut r, &mut p)?;
    if spans {
        decode_spans(&mut r, &mut p)?;
    }
    if !r.at_end() {
        return Err("trailing bytes after the record".into());
    }
    Ok((tenant, p, groups))
}

/// The span ids of a record's samples (see `encode_spans`). `decode_groups` appended the
/// samples to `p.samples` in record order, so a position is an index there.
fn decode_spans(r: &mut R<'_>, p: &mut Profile) -> Res<()> {
    let n = r.0.count(9).map_err(message)?;
    if n == 0 {
        return Err("a span section without spans".into());
    }
    let mut pos = 0u64;
    for k in 0..n {
        let delta = r.u()?;
        if k > 0 && delta == 0 {
            return Err("span positions must ascend".into());
        }
        pos = pos.checked_add(delta).ok_or("span position overflows")?;
        let id = r.0.u64_le().map_err(message)?;
        let n = p.samples.len();
        let sample = usize::try_from(pos)
            .ok()
            .and_then(|i| p.samples.get_mut(i))
            .ok_or_else(|| format!("span of sample {pos}, the record has {n}"))?;
        sample.span_id = id;
    }
    Ok(())
}

/// The sample groups, each sample appended to `p.samples` (its locations checked against
/// `p.locations`) and named in its group by index.
fn decode_groups(r: &mut R<'_>, p: &mut Profile) -> Res<Vec<SampleGroup>> {
    let nl = p.locations.len() as u32;
    let nt = p.sample_types.len();
    let n = r.len()?;
    let mut groups = Vec::with_capacity(n);
    for _ in 0..n {
        let n = r.len()?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            pairs.push((r.s()?, r.s()?));
        }
        let n = r.len()?;
        let mut samples = Vec::with_capacity(n);
        // `reserve`, not exact: the samples of many groups share this table.
        p.samples.reserve(n);
        for _ in 0..n {
            let n = r.len()?;
            let mut locations = Vec::with_capacity(n);
            for _ in 0..n {
                let l = r.u32()?;
                if l >= nl {
                    return Err(format!("location {l} out of range"));
                }
                locations.push(l);
            }
            let mut values = Vec::with_capacity(nt);
            for _ in 0..nt {
                values.push(r.i()?);
            }
            samples.push(p.samples.len() as u32);
            p.samples.push(Sample { locations, values, span_id: 0 });
        }
        groups.push(SampleGroup { labels: Labels::from_pairs(pairs), samples });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_profile() -> impl Strategy<Value = (Profile, Vec<SampleGroup>)> {
        (1usize..4, 1usize..6, 1usize..8, 0usize..12, any::<i64>(), proptest::collection::vec("[a-z.]{0,8}", 1..10))
            .prop_map(|(nt, nf, nl, ns, ts, mut strings)| {
                strings.insert(0, String::new());
                let n = strings.len() as u32;
                let mut p = Profile {
                    strings,
                    sample_types: (0..nt)
                        .map(|i| ValueType { r#type: i as u32 % n, unit: (i as u32 + 1) % n })
                        .collect(),
                    period_type: Some(ValueType { r#type: 1 % n, unit: 0 }),
                    period: 10,
                    time_nanos: ts,
                    mappings: vec![Mapping { filename: 1 % n, has_functions: true, ..Default::default() }],
                    functions: (0..nf)
                        .map(|i| Function { name: i as u32 % n, start_line: -(i as i64), ..Default::default() })
                        .collect(),
                    ..Default::default()
                };
                p.locations = (0..nl)
                    .map(|i| Location {
                        mapping: (i % 2) as u32,
                        address: i as u64 * 4096,
                        lines: vec![Line { function: (i % nf) as u32, line: i as i64 }],
                    })
                    .collect();
                p.samples = (0..ns)
                    .map(|i| Sample {
                        locations: (0..(i % nl) + 1).map(|j| j as u32).collect(),
                        values: (0..nt).map(|t| (i * t) as i64 - 3).collect(),
                        // Some samples in a span, some not (then no span section at all).
                        span_id: if i % 3 == 1 { (i as u64 + 1) << 40 | 7 } else { 0 },
                    })
                    .collect();
                let groups = vec![
                    SampleGroup {
                        labels: Labels::from_pairs([("a", "1")]),
                        samples: (0..ns as u32).filter(|i| i % 2 == 0).collect(),
                    },
                    SampleGroup {
                        labels: Labels::from_pairs([("b", "2"), ("c", "")]),
                        samples: (0..ns as u32).filter(|i| i % 2 == 1).collect(),
                    },
                ];
                (p, groups)
            })
    }

    proptest! {
        #[test]
        fn roundtrip((p, groups) in arb_profile()) {
            let b = encode("tenant-1", &p, &groups);
            let (t, q, g) = decode(&b).unwrap();
            prop_assert_eq!(t, "tenant-1");
            prop_assert_eq!(&q.strings, &p.strings);
            prop_assert_eq!(&q.functions, &p.functions);
            prop_assert_eq!(&q.locations, &p.locations);
            prop_assert_eq!(q.time_nanos, p.time_nanos);
            prop_assert_eq!(g.len(), groups.len());
            for (a, b) in g.iter().zip(&groups) {
                prop_assert_eq!(&a.labels, &b.labels);
                let sa: Vec<&Sample> = a.samples.iter().map(|i| &q.samples[*i as usize]).collect();
                let sb: Vec<&Sample> = b.samples.iter().map(|i| &p.samples[*i as usize]).collect();
                prop_assert_eq!(sa, sb);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = decode_entry(&bytes);
        }

        #[test]
        fn cut_roundtrip(tenant in "[a-z0-9-]{0,20}", block in "[0-9A-Z]{26}", (p, groups) in arb_profile()) {
            let b = encode_cut(&tenant, &block);
            match decode_entry(&b).unwrap() {
                Entry::Cut { tenant: t, block: u } => { prop_assert_eq!(&t, &tenant); prop_assert_eq!(&u, &block); }
                other => prop_assert!(false, "decoded {other:?}"),
            }
            prop_assert!(decode(&b).is_err());
            for cut in 0..b.len() {
                prop_assert!(decode_entry(&b[..cut]).is_err());
            }
            let ingest = encode(&tenant, &p, &groups);
            let is_ingest = matches!(decode_entry(&ingest).unwrap(), Entry::Ingest { .. });
            prop_assert!(is_ingest);
        }

        /// A keyed record written in steps of any size is the one-piece record, whose body is
        /// the unkeyed record's.
        #[test]
        fn a_keyed_record_in_steps_is_the_same_bytes(key in any::<u64>(), frames in 1usize..40, (p, groups) in arb_profile()) {
            let mut e = KeyedEncoder::new(key, "t", &p, &groups);
            let mut steps = 1;
            while !e.step(&p, &groups, frames) {
                steps += 1;
            }
            let stepped = e.finish(&p, &groups);
            let whole = encode_keyed(key, "t", &p, &groups);
            prop_assert_eq!(&stepped, &whole);
            let mut key_bytes = Writer::with_capacity(10);
            key_bytes.u(key);
            prop_assert_eq!(&whole[1 + key_bytes.0.len()..], &encode("t", &p, &groups)[1..]);
            let frames_total: usize = groups.iter().flat_map(|g| &g.samples).map(|&si| p.samples[si as usize].locations.len() + 1).sum();
            prop_assert!(steps <= 1 + frames_total, "{} steps for {} frames", steps, frames_total);
        }

        /// A body written before the key, behind its head, is the keyed record.
        #[test]
        fn a_record_body_behind_its_head_is_the_keyed_record(key in any::<u64>(), (p, groups) in arb_profile()) {
            let body = RecordBody::new("t", &p, &groups);
            prop_assert_eq!([body.head(key).as_slice(), body.bytes()].concat(), encode_keyed(key, "t", &p, &groups));
        }

        #[test]
        fn keyed_and_abort_roundtrip(key in any::<u64>(), (p, groups) in arb_profile()) {
            let b = encode_keyed(key, "t", &p, &groups);
            let (k, t, q, g) = decode_keyed(&b).unwrap();
            prop_assert_eq!(k, Some(key));
            prop_assert_eq!(t, "t");
            prop_assert_eq!(&q.strings, &p.strings);
            prop_assert_eq!(q.samples.len(), groups.iter().map(|g| g.samples.len()).sum::<usize>());
            prop_assert_eq!(g.len(), groups.len());
            prop_assert_eq!(abort_key(&b), None);
            for cut in 0..b.len() {
                prop_assert!(decode_entry(&b[..cut]).is_err());
            }
            let a = encode_abort(key);
            prop_assert_eq!(abort_key(&a), Some(key));
            let is_abort = matches!(decode_entry(&a).unwrap(), Entry::Abort { key: k } if k == key);
            prop_assert!(is_abort);
            prop_assert!(decode(&a).is_err());
            for cut in 0..a.len() {
                prop_assert!(decode_entry(&a[..cut]).is_err());
            }
            let unkeyed = matches!(decode_entry(&encode("t", &p, &groups)).unwrap(), Entry::Ingest { key: None, .. });
            prop_assert!(unkeyed);
        }

        #[test]
        fn truncation_is_an_error((p, groups) in arb_profile(), cut in any::<prop::sample::Index>()) {
            let b = encode("t", &p, &groups);
            let cut = cut.index(b.len());
            prop_assert!(decode(&b[..cut]).is_err());
        }
    }
}
