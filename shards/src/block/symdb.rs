//! `symbols.symdb`: a head's symbol tables (strings, functions, mappings, locations) and its
//! stack tree, as five sections of column-wise varints, each zstd-compressed when that makes
//! it smaller. Ids are kept as they were in the head, so the stack ids in profiles.parquet
//! point straight into the decoded tree. The byte layout is in docs/FORMAT.md
//! ("symbols.symdb").
use super::codec::{self, Dec, Enc};
use super::FormatError;
use crate::model::profile::{Function, Line, Mapping};
use crate::model::symbols::{LocationRec, Symbols, ROOT};
use std::io::Read;

const MAGIC: &[u8; 4] = b"KSYM";
pub const VERSION: u8 = 1;
const FILE: &str = super::SYMBOLS;

/// Section kinds, in the order they appear in the file.
const SECTIONS: [(u8, &str); 5] = [(1, "strings"), (2, "functions"), (3, "mappings"), (4, "locations"), (5, "stacks")];
const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// Smaller sections are stored raw: a zstd frame's own overhead would eat the gain.
const COMPRESS_FROM: usize = 64;
/// No section of a sane head comes near this; a larger declared size is damage.
const MAX_SECTION: u64 = 1 << 34;

/// Encodes with zstd level 3.
pub fn encode(s: &Symbols) -> Vec<u8> {
    encode_with(s, 3)
}

/// Encodes with the given zstd level (a level zstd refuses stores the sections raw).
pub fn encode_with(s: &Symbols, zstd_level: i32) -> Vec<u8> {
    let mut body = Enc::default();
    for (kind, _) in SECTIONS {
        let raw = match kind {
            1 => strings_section(s),
            2 => functions_section(s),
            3 => mappings_section(s),
            4 => locations_section(s),
            _ => stacks_section(s),
        };
        let packed = (raw.len() >= COMPRESS_FROM)
            .then(|| zstd::bulk::compress(&raw, zstd_level).ok())
            .flatten()
            .filter(|z| z.len() < raw.len());
        body.bytes(&[kind, if packed.is_some() { ZSTD } else { RAW }]);
        body.u(raw.len() as u64);
        let stored = packed.as_deref().unwrap_or(&raw);
        body.u(stored.len() as u64);
        body.bytes(stored);
    }
    codec::seal(MAGIC, VERSION, &body.0)
}

fn strings_section(s: &Symbols) -> Vec<u8> {
    // Lengths first, then all bytes: the lengths and the text compress better apart.
    let mut e = Enc::default();
    let n = s.strings.len() as u32;
    e.u(u64::from(n));
    for i in 0..n {
        e.u(s.strings.get(i).len() as u64);
    }
    for i in 0..n {
        e.bytes(s.strings.get(i).as_bytes());
    }
    e.0
}

fn functions_section(s: &Symbols) -> Vec<u8> {
    let mut e = Enc::default();
    e.u(s.functions.len() as u64);
    for f in &s.functions {
        e.u(u64::from(f.name));
    }
    for f in &s.functions {
        e.u(u64::from(f.system_name));
    }
    for f in &s.functions {
        e.u(u64::from(f.filename));
    }
    for f in &s.functions {
        e.i(f.start_line);
    }
    e.0
}

fn mappings_section(s: &Symbols) -> Vec<u8> {
    let mut e = Enc::default();
    e.u(s.mappings.len() as u64);
    for m in &s.mappings {
        e.u(m.memory_start);
        e.u(m.memory_limit);
        e.u(m.file_offset);
        e.u(u64::from(m.filename));
        e.u(u64::from(m.build_id));
        e.u(u64::from(m.flag_bits()));
    }
    e.0
}

fn locations_section(s: &Symbols) -> Vec<u8> {
    let mut e = Enc::default();
    e.u(s.locations.len() as u64);
    for l in &s.locations {
        e.u(u64::from(l.mapping));
    }
    // Addresses as the difference to the previous one (wrapping): neighbours usually lie in
    // the same binary, so the deltas are short.
    let mut prev = 0u64;
    for l in &s.locations {
        e.i(l.address.wrapping_sub(prev) as i64);
        prev = l.address;
    }
    for l in &s.locations {
        e.u(l.lines.len() as u64);
    }
    for l in &s.locations {
        for ln in l.lines.iter() {
            e.u(u64::from(ln.function));
        }
    }
    for l in &s.locations {
        for ln in l.lines.iter() {
            e.i(ln.line);
        }
    }
    e.0
}

fn stacks_section(s: &Symbols) -> Vec<u8> {
    // Node 0 (the root) is implied. A parent is always an earlier node, so n - parent[n] >= 1;
    // it is usually 1 (a child right after its parent) and small otherwise.
    let mut e = Enc::default();
    let n = s.stack_count();
    e.u(n as u64 - 1);
    for k in 1..n {
        e.u((k as u32 - s.parent[k]) as u64);
    }
    for k in 1..n {
        e.u(u64::from(s.location[k]));
    }
    e.0
}

/// Decodes and checks a symbols file: frame and checksum, then every section, then every
/// cross-reference (see [`Symbols::from_parts`]), so that no later lookup can go out of range.
pub fn decode(bytes: &[u8]) -> Result<Symbols, FormatError> {
    let body = codec::open(FILE, MAGIC, VERSION, bytes)?;
    let mut d = Dec::new(FILE, "", body, codec::FRAME_HEAD);
    let mut sections: Vec<(Vec<u8>, usize)> = Vec::with_capacity(SECTIONS.len());
    for (kind, name) in SECTIONS {
        let at = d.remaining();
        let k = d.byte()?;
        if k != kind {
            return Err(d.err(format!("section kind {k}, expected {kind} ({name})")));
        }
        let codec = d.byte()?;
        let raw_len = d.u()?;
        if raw_len > MAX_SECTION {
            return Err(d.err(format!("{name} section of {raw_len} bytes is implausibly large")));
        }
        let stored_len = d.count(&format!("{name} section byte"), 1)?;
        let stored = d.take(stored_len)?;
        let offset = codec::FRAME_HEAD + body.len() - at;
        let raw = match codec {
            RAW => stored.to_vec(),
            ZSTD => {
                let mut out = Vec::new();
                let r = zstd::stream::read::Decoder::new(stored)
                    .and_then(|z| z.take(raw_len + 1).read_to_end(&mut out))
                    .map(|_| ());
                r.map_err(|e| FormatError::Corrupt {
                    file: FILE,
                    offset: offset as u64,
                    what: format!("{name} section does not decompress: {e}"),
                })?;
                out
            }
            c => {
                return Err(FormatError::Corrupt {
                    file: FILE,
                    offset: offset as u64,
                    what: format!("{name} section has unknown codec {c}"),
                })
            }
        };
        if raw.len() as u64 != raw_len {
            return Err(FormatError::Corrupt {
                file: FILE,
                offset: offset as u64,
                what: format!("{name} section holds {} bytes, its header says {raw_len}", raw.len()),
            });
        }
        sections.push((raw, offset));
    }
    d.finish()?;
    // Offsets inside a section are relative to its raw (decompressed) bytes: the context says
    // which section, the error's offset is within it.
    let dec = |i: usize, ctx| Dec::new(FILE, ctx, &sections[i].0, 0);
    let strings = read_strings(&mut dec(0, "strings section (offsets within the raw section)"))?;
    let functions = read_functions(&mut dec(1, "functions section (offsets within the raw section)"), strings.len())?;
    let mappings = read_mappings(&mut dec(2, "mappings section (offsets within the raw section)"), strings.len())?;
    let locations = read_locations(
        &mut dec(3, "locations section (offsets within the raw section)"),
        functions.len(),
        mappings.len(),
    )?;
    let (parent, location) =
        read_stacks(&mut dec(4, "stacks section (offsets within the raw section)"), locations.len())?;
    Ok(Symbols::from_parts(strings, functions, mappings, locations, parent, location))
}

fn read_strings(d: &mut Dec<'_>) -> Result<Vec<String>, FormatError> {
    let n = d.count("string", 1)?;
    let mut lens = Vec::with_capacity(n);
    let mut total = 0usize;
    for _ in 0..n {
        let l = d.count("string length", 1)?;
        total = total.saturating_add(l);
        lens.push(l);
    }
    if total != d.remaining() {
        return Err(d.err(format!("string lengths add up to {total} bytes, {} follow", d.remaining())));
    }
    let mut out = Vec::with_capacity(n);
    for l in lens {
        let b = d.take(l)?;
        let s = std::str::from_utf8(b).map_err(|e| d.err(format!("string {} is not UTF-8: {e}", out.len())))?;
        out.push(s.to_string());
    }
    if out.first().map(String::as_str) != Some("") {
        return Err(d.err("string 0 must be the empty string"));
    }
    d.finish()?;
    Ok(out)
}

fn string_ref(d: &mut Dec<'_>, what: &str, i: usize, strings: usize) -> Result<u32, FormatError> {
    let v = d.u32(what)?;
    if v as usize >= strings {
        return Err(d.err(format!("{what} of entry {i}: string {v} out of range ({strings} strings)")));
    }
    Ok(v)
}

fn read_functions(d: &mut Dec<'_>, strings: usize) -> Result<Vec<Function>, FormatError> {
    let n = d.count("function", 4)?;
    let mut f = vec![Function::default(); n];
    for (i, f) in f.iter_mut().enumerate() {
        f.name = string_ref(d, "function name", i, strings)?;
    }
    for (i, f) in f.iter_mut().enumerate() {
        f.system_name = string_ref(d, "function system name", i, strings)?;
    }
    for (i, f) in f.iter_mut().enumerate() {
        f.filename = string_ref(d, "function file name", i, strings)?;
    }
    for f in f.iter_mut() {
        f.start_line = d.i()?;
    }
    d.finish()?;
    Ok(f)
}

fn read_mappings(d: &mut Dec<'_>, strings: usize) -> Result<Vec<Mapping>, FormatError> {
    let n = d.count("mapping", 6)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (memory_start, memory_limit, file_offset) = (d.u()?, d.u()?, d.u()?);
        let filename = string_ref(d, "mapping file name", i, strings)?;
        let build_id = string_ref(d, "mapping build id", i, strings)?;
        let flags = d.u()?;
        if flags > 15 {
            return Err(d.err(format!("mapping {i}: unknown flags {flags:#x}")));
        }
        let mut m = Mapping { memory_start, memory_limit, file_offset, filename, build_id, ..Default::default() };
        m.set_flag_bits(flags);
        out.push(m);
    }
    d.finish()?;
    Ok(out)
}

fn read_locations(d: &mut Dec<'_>, functions: usize, mappings: usize) -> Result<Vec<LocationRec>, FormatError> {
    let n = d.count("location", 3)?;
    let mut mapping = Vec::with_capacity(n);
    for i in 0..n {
        let m = d.u32("location mapping")?;
        if m as usize >= mappings {
            return Err(d.err(format!("location {i}: mapping {m} out of range ({mappings} mappings)")));
        }
        mapping.push(m);
    }
    let mut address = Vec::with_capacity(n);
    let mut prev = 0u64;
    for _ in 0..n {
        prev = prev.wrapping_add(d.i()? as u64);
        address.push(prev);
    }
    let mut nlines = Vec::with_capacity(n);
    let mut total = 0usize;
    for _ in 0..n {
        // Each line takes two more bytes at least (function, line).
        let l = d.count("line", 2)?;
        total = total.saturating_add(l);
        nlines.push(l);
    }
    if total > d.remaining() / 2 {
        return Err(d.err(format!("{total} lines cannot fit in the remaining {} bytes", d.remaining())));
    }
    let mut lines = Vec::with_capacity(total);
    for i in 0..total {
        let f = d.u32("line function")?;
        if f as usize >= functions {
            return Err(d.err(format!("line {i}: function {f} out of range ({functions} functions)")));
        }
        lines.push(Line { function: f, line: 0 });
    }
    for l in lines.iter_mut() {
        l.line = d.i()?;
    }
    d.finish()?;
    let mut at = 0;
    let out = (0..n)
        .map(|i| {
            let ls: Box<[Line]> = lines[at..at + nlines[i]].into();
            at += nlines[i];
            LocationRec { mapping: mapping[i], address: address[i], lines: ls }
        })
        .collect();
    Ok(out)
}

fn read_stacks(d: &mut Dec<'_>, locations: usize) -> Result<(Vec<u32>, Vec<u32>), FormatError> {
    let n = d.count("stack node", 2)?;
    if n >= u32::MAX as usize {
        return Err(d.err(format!("{n} stack nodes do not fit 32-bit ids")));
    }
    let mut parent = Vec::with_capacity(n + 1);
    parent.push(ROOT);
    for k in 1..=n as u32 {
        let delta = d.u()?;
        if delta == 0 || delta > u64::from(k) {
            return Err(d.err(format!("stack node {k}: parent distance {delta} is not in 1..={k}")));
        }
        parent.push(k - delta as u32);
    }
    let mut location = Vec::with_capacity(n + 1);
    // The root has no location; `u32::MAX` as in a live head.
    location.push(u32::MAX);
    for k in 1..=n {
        let l = d.u32("stack location")?;
        if l as usize >= locations {
            return Err(d.err(format!("stack node {k}: location {l} out of range ({locations} locations)")));
        }
        location.push(l);
    }
    d.finish()?;
    Ok((parent, location))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::profile::{Location, Profile};
    use crate::model::symbols::Remap;
    use proptest::prelude::*;

    /// Every observable part of two tables is equal.
    pub(crate) fn assert_same(a: &Symbols, b: &Symbols) {
        assert_eq!(a.strings.len(), b.strings.len());
        for i in 0..a.strings.len() as u32 {
            assert_eq!(a.strings.get(i), b.strings.get(i));
        }
        assert_eq!(a.functions, b.functions);
        assert_eq!(a.mappings, b.mappings);
        assert_eq!(a.locations, b.locations);
        assert_eq!(a.parent, b.parent);
        assert_eq!(a.location, b.location);
        assert_eq!(a.stack_count(), b.stack_count());
    }

    /// A random profile's symbols interned into a fresh table.
    fn arb_symbols() -> impl Strategy<Value = Symbols> {
        let strings = proptest::collection::vec("[a-z/.é]{0,12}", 1..12);
        let stacks = proptest::collection::vec(proptest::collection::vec(0u32..40, 1..12), 0..30);
        (strings, stacks, any::<u64>(), any::<i64>()).prop_map(|(strs, stacks, addr, line)| {
            let mut p = Profile { strings: vec!["".into()], ..Default::default() };
            p.strings.extend(strs);
            let ns = p.strings.len() as u32;
            p.mappings.push(Mapping {
                memory_start: addr,
                memory_limit: addr.wrapping_mul(3),
                filename: 1 % ns,
                build_id: 2 % ns,
                has_functions: true,
                has_inline_frames: addr % 2 == 0,
                ..Default::default()
            });
            for f in 0..20u32 {
                p.functions.push(Function {
                    name: f % ns,
                    system_name: (f * 7) % ns,
                    filename: (f * 3) % ns,
                    start_line: line.wrapping_add(i64::from(f)),
                });
            }
            for l in 0..40u32 {
                let lines = (0..l % 4).map(|k| Line { function: (l + k) % 20, line: i64::from(l) - 10 }).collect();
                p.locations.push(Location { mapping: l % 2, address: addr.wrapping_add(u64::from(l) * 16), lines });
            }
            let mut s = Symbols::new();
            let mut r = Remap::new(&p);
            for st in &stacks {
                s.intern_stack(&p, &mut r, st);
            }
            s
        })
    }

    #[test]
    fn empty_table_round_trips() {
        let s = Symbols::new();
        assert_same(&decode(&encode(&s)).unwrap(), &s);
    }

    #[test]
    fn checks_every_reference() {
        // A table whose stack points at a location that the file then lacks.
        let mut s = Symbols::from_parts(
            vec!["".into()],
            vec![],
            vec![Mapping::default()],
            vec![],
            vec![0, 0],
            vec![u32::MAX, 0],
        );
        let e = decode(&encode(&s)).unwrap_err().to_string();
        assert!(e.contains("location 0 out of range"), "{e}");
        s.parent = vec![0, 1];
        s.location = vec![u32::MAX, 0];
        s.locations.push(LocationRec { mapping: 0, address: 1, lines: vec![Line { function: 3, line: 1 }].into() });
        let e = decode(&encode(&s)).unwrap_err().to_string();
        assert!(e.contains("function 3 out of range"), "{e}");
    }

    proptest! {
        #[test]
        fn round_trip(s in arb_symbols(), level in -3i32..6) {
            let d = decode(&encode_with(&s, level)).unwrap();
            assert_same(&d, &s);
        }

        #[test]
        fn damage_is_an_error(s in arb_symbols(), at in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
            let bytes = encode(&s);
            let mut flipped = bytes.clone();
            flipped[at.index(bytes.len())] ^= 1 << bit;
            prop_assert!(decode(&flipped).is_err());
            prop_assert!(decode(&bytes[..cut.index(bytes.len())]).is_err());
            // Behind a valid checksum, the parser and the reference checks must hold up.
            if let Ok(d) = decode(&crate::block::codec::reseal(flipped)) {
                for n in 1..d.stack_count() {
                    prop_assert!(d.parent[n] < n as u32);
                    prop_assert!((d.location[n] as usize) < d.locations.len());
                }
            }
            let _ = decode(&crate::block::codec::reseal(bytes[..cut.index(bytes.len())].to_vec()));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
            let mut framed = b"KSYM\x01".to_vec();
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(&[0; 4]);
            let _ = decode(&crate::block::codec::reseal(framed));
        }
    }
}
