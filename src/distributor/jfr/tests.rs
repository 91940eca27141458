//! Conversion against the goldens: Pyroscope's converted pprofs (per profile type and query
//! label set) and jfr-parser's collapsed stacks (per profile, every value), for every JFR
//! file in testdata/jfr.
use super::*;
use crate::distributor::pprof::Decoded;
use kiln_io::compress::maybe_gunzip;
use std::collections::{BTreeMap, BTreeSet};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/jfr/");

fn read(path: &str) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    maybe_gunzip(&raw, 1 << 30).unwrap().into_owned()
}

fn inputs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("{ROOT}jfr-parser"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".jfr.gz"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 14, "{names:?}");
    names
}

/// The labels snapshot sent with `input`, if the testdata has one.
fn snapshot_of(input: &str) -> LabelsSnapshot {
    let stem = input.trim_end_matches(".jfr.gz");
    for candidate in [format!("{stem}.labels.pb.gz"), format!("{stem}.labels.gz")] {
        let path = format!("{ROOT}jfr-parser/{candidate}");
        if std::path::Path::new(&path).exists() {
            return decode_labels(&read(&path)).unwrap();
        }
    }
    LabelsSnapshot::default()
}

fn opts() -> Options {
    Options {
        time_nanos: 1_706_241_880_000_000_000,
        duration_nanos: 10_000_000_000,
        sample_rate: 100,
        max_bytes: 0,
        max_samples: 0,
    }
}

fn converted(input: &str) -> Converted {
    convert(&read(&format!("{ROOT}jfr-parser/{input}")), &snapshot_of(input), opts())
        .unwrap_or_else(|e| panic!("{input}: {e}"))
}

/// The profile type of value `i` as the golden file names spell it (`:` → `_`).
fn type_name(p: &JfrProfile, i: usize) -> String {
    let prof = &p.decoded.profile;
    let st = prof.sample_types[i];
    let (pt, pu) = prof.period_type.map_or(("", ""), |v| (prof.string(v.r#type), prof.string(v.unit)));
    format!("{}_{}_{}_{pt}_{pu}", p.name, prof.string(st.r#type), prof.string(st.unit))
}

/// Root-first `;`-joined frame names (with `:line` if `lines`) → summed values, of the
/// samples of the groups whose labels include `query`, all-zero rows dropped.
fn collapse(d: &Decoded, query: &[(String, String)], lines: bool) -> BTreeMap<String, Vec<i64>> {
    let p = &d.profile;
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (labels, samples) in &d.groups {
        if !query.iter().all(|(k, v)| labels.get(k) == Some(v.as_str())) {
            continue;
        }
        for &s in samples {
            let s = &p.samples[s as usize];
            let frames: Vec<String> = s
                .locations
                .iter()
                .rev()
                .map(|&l| {
                    let line = p.locations[l as usize].lines[0];
                    let name = p.string(p.functions[line.function as usize].name);
                    if lines {
                        format!("{name}:{}", line.line)
                    } else {
                        name.to_string()
                    }
                })
                .collect();
            let e = out.entry(frames.join(";")).or_insert_with(|| vec![0; s.values.len()]);
            for (a, b) in e.iter_mut().zip(&s.values) {
                *a += b;
            }
        }
    }
    out.retain(|_, v| v.iter().any(|x| *x != 0));
    out
}

/// A golden pprof's collapsed stacks at value 0 (function names only).
fn golden_pprof(path: &str) -> BTreeMap<String, Vec<i64>> {
    let p = crate::distributor::pprof::decode(&read(path)).unwrap();
    let string = |i: i64| String::from_utf8_lossy(&p.string_table[i as usize]).into_owned();
    let functions: BTreeMap<u64, String> = p.function.iter().map(|f| (f.id, string(f.name))).collect();
    let locations: BTreeMap<u64, String> =
        p.location.iter().map(|l| (l.id, functions[&l.line[0].function_id].clone())).collect();
    assert_eq!(p.sample_type.len(), 1, "{path}");
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for s in &p.sample {
        let stack: Vec<&str> = s.location_id.iter().rev().map(|l| locations[l].as_str()).collect();
        out.entry(stack.join(";")).or_insert_with(|| vec![0])[0] += s.value[0];
    }
    out.retain(|_, v| v[0] != 0);
    out
}

/// The query label hash of a golden's name: xxhash64 of `name 0xff value 0xff ...`.
fn query_hash(query: &[(String, String)]) -> u64 {
    let mut b = Vec::new();
    for (k, v) in query {
        b.extend_from_slice(k.as_bytes());
        b.push(0xff);
        b.extend_from_slice(v.as_bytes());
        b.push(0xff);
    }
    xxhash_rust::xxh64::xxh64(&b, 0)
}

#[test]
fn every_pyroscope_golden_matches() {
    let mut goldens: BTreeSet<String> = std::fs::read_dir(format!("{ROOT}expected-pyroscope-pprof"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pb.gz"))
        .collect();
    assert_eq!(goldens.len(), 39);
    for input in inputs() {
        let c = converted(&input);
        let mine: Vec<_> = goldens.iter().filter(|g| g.starts_with(&format!("{input}."))).cloned().collect();
        if mine.is_empty() {
            continue;
        }
        for p in &c.profiles {
            // Every label set a query can name: none, and each single label of a group.
            let mut queries: BTreeSet<Vec<(String, String)>> = BTreeSet::from([vec![]]);
            for (labels, _) in &p.decoded.groups {
                for (k, v) in labels.iter() {
                    queries.insert(vec![(k.to_string(), v.to_string())]);
                }
            }
            for i in 0..p.decoded.profile.sample_types.len() {
                let t = type_name(p, i);
                let mut found_unlabelled = false;
                for q in &queries {
                    let golden = format!("{input}.{t}.{}.pb.gz", query_hash(q));
                    if !goldens.remove(&golden) {
                        assert!(!q.is_empty(), "{input}: no golden for {t}");
                        continue;
                    }
                    found_unlabelled |= q.is_empty();
                    let want = golden_pprof(&format!("{ROOT}expected-pyroscope-pprof/{golden}"));
                    let got: BTreeMap<String, Vec<i64>> = collapse(&p.decoded, q, false)
                        .into_iter()
                        .map(|(k, v)| (k, vec![v[i]]))
                        .filter(|(_, v)| v[0] != 0)
                        .collect();
                    assert_eq!(got.len(), want.len(), "{golden}: stacks");
                    assert!(got == want, "{golden}: collapsed stacks differ");
                }
                assert!(found_unlabelled, "{input} {t}");
            }
        }
    }
    assert!(goldens.is_empty(), "goldens no output matched: {goldens:?}");
}

/// jfr-parser's collapsed goldens: `frame:line;... [v1 v2]` per line.
fn golden_collapsed(path: &str) -> BTreeMap<String, Vec<i64>> {
    let text = String::from_utf8(read(path)).unwrap();
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for line in text.lines() {
        let (stack, values) = line.rsplit_once(" [").unwrap();
        let values: Vec<i64> = values.trim_end_matches(']').split(' ').map(|v| v.parse().unwrap()).collect();
        let e = out.entry(stack.to_string()).or_insert_with(|| vec![0; values.len()]);
        for (a, b) in e.iter_mut().zip(&values) {
            *a += b;
        }
    }
    out
}

#[test]
fn every_jfr_parser_golden_matches() {
    let goldens: Vec<String> = std::fs::read_dir(format!("{ROOT}expected-jfr-parser"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with("_expected_collapsed.txt.gz"))
        .collect();
    let counts = [
        ("example", 4),
        ("async-profiler", 3),
        ("FastSlow_2024_01_16_180855", 3),
        ("cortex-dev-01__kafka-0__cpu__0", 1),
        ("cortex-dev-01__kafka-0__cpu_lock0_alloc0__0", 5),
        ("cortex-dev-01__kafka-0__cpu_lock_alloc__0", 2),
        ("dump1", 1),
        ("dump2", 4),
        ("dd-trace-java", 4),
        ("object-allocation-sample", 3),
        ("wall_tick_sample", 2),
        ("nativemem", 1),
        ("new_spancontext", 1),
        ("wall", 2),
    ];
    let mut matched = 0;
    for input in inputs() {
        let stem = input.trim_end_matches(".jfr.gz");
        let c = converted(&input);
        let want = counts.iter().find(|(n, _)| *n == stem).unwrap().1;
        assert_eq!(c.profiles.len(), want, "{input}: profiles");
        for p in &c.profiles {
            let prof = &p.decoded.profile;
            let types: Vec<String> = prof
                .sample_types
                .iter()
                .map(|st| format!("{}__{}", prof.string(st.r#type), prof.string(st.unit)))
                .collect();
            let suffix = format!("_{}_{}_expected_collapsed.txt.gz", p.name, types.join("+"));
            let golden = goldens
                .iter()
                .find(|g| {
                    g.ends_with(&suffix)
                        && g.strip_suffix(&suffix).and_then(|h| h.rsplit_once('_')).is_some_and(|(s, _)| s == stem)
                })
                .unwrap_or_else(|| panic!("{input}: no golden ends with {suffix}"));
            let want = golden_collapsed(&format!("{ROOT}expected-jfr-parser/{golden}"));
            let got = collapse(&p.decoded, &[], true);
            assert_eq!(got.len(), want.len(), "{golden}: stacks");
            assert!(got == want, "{golden}: collapsed stacks differ");
            matched += 1;
        }
    }
    assert_eq!(matched, goldens.len());
}

/// Any byte of a recording changed, or the recording cut anywhere with its header made to
/// agree, is read to an answer: a conversion or an error, never a panic (a cheap stand-in
/// for the fuzz target, run on every build).
#[test]
fn damaged_recordings_never_panic() {
    let raw = read(&format!("{ROOT}jfr-parser/new_spancontext.jfr.gz"));
    let snapshot = snapshot_of("new_spancontext.jfr.gz");
    let o = Options { max_bytes: 16 << 20, ..opts() };
    let mut errors = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..1500 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut damaged = raw.clone();
        let at = (seed as usize) % damaged.len();
        damaged[at] = damaged[at].wrapping_add(1 + (i % 255) as u8);
        errors += usize::from(convert(&damaged, &snapshot, o).is_err());
    }
    for cut in (chunk::HEADER_SIZE..raw.len()).step_by(61) {
        let mut short = raw[..cut].to_vec();
        short[8..16].copy_from_slice(&(cut as u64).to_be_bytes());
        let e = convert(&short, &snapshot, o).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!e.is_empty(), "a recording cut at {cut} converted");
        errors += 1;
    }
    assert!(errors > 400, "{errors} damaged recordings refused");
}

/// Span ids come out as Pyroscope stores them: the `profile_id` values jfr-parser writes on
/// each sample (`%016x` of the event's span id, or the context's label) are exactly the span
/// ids of kiln's samples, read back as span selectors read them.
#[test]
fn span_ids_are_the_profile_ids_jfr_parser_writes() {
    for input in ["dump2", "new_spancontext"] {
        let mut want = BTreeSet::new();
        for e in std::fs::read_dir(format!("{ROOT}expected-jfr-parser")).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if !name.starts_with(&format!("{input}_")) || name.contains("collapsed") {
                continue;
            }
            let text = String::from_utf8(read(&format!("{ROOT}expected-jfr-parser/{name}"))).unwrap();
            for part in text.split("profile_id:[").skip(1) {
                // The jfr-parser that wrote these goldens left out leading zeros now and then
                // (`aef7de5a2951ef3`); the id is the same number.
                let hex = &part[..part.find(']').unwrap()];
                want.insert(format!("{hex:0>16}"));
            }
        }
        assert!(!want.is_empty(), "{input}: no profile ids in the goldens");
        let got: BTreeSet<String> = converted(&format!("{input}.jfr.gz"))
            .profiles
            .iter()
            .flat_map(|p| p.decoded.profile.samples.iter().map(|s| s.span_id))
            .filter(|&id| id != 0)
            .map(kiln_shards::model::profile::format_span_id)
            .collect();
        assert_eq!(got, want, "{input}");
    }
}
