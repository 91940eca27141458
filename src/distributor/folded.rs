//! Text stack formats of `/ingest`: folded (`a;b;c 12`) and lines (one stack per line), and
//! the profile types their app-name suffix selects (Pyroscope's table, shared/api.md §2.2).
use kiln_shards::model::profile::{Function, Line, Location, Mapping, Profile, Sample, ValueType};
use rustc_hash::FxHashMap;

/// (`__name__`, sample type, unit) for an app-name suffix; `None` for an unknown suffix.
pub fn suffix_type(suffix: &str) -> Option<(&'static str, String, &'static str)> {
    let t = |n: &'static str, st: &str, u: &'static str| Some((n, st.to_string(), u));
    match suffix {
        "cpu" | "itimer" => t("process_cpu", "samples", "count"),
        "wall" | "seconds" | "nanoseconds" | "microseconds" | "milliseconds" => t("wall", "samples", "count"),
        "inuse_objects" | "alloc_objects" => t("memory", suffix, "count"),
        "inuse_space" | "alloc_space" => t("memory", suffix, "bytes"),
        "goroutines" => t("goroutine", "goroutines", "count"),
        "mutex_count" => t("mutex", "contentions", "count"),
        "mutex_duration" => t("mutex", "delay", "nanoseconds"),
        "block_count" | "lock_count" => t("block", "contentions", "count"),
        "block_duration" | "lock_duration" => t("block", "delay", "nanoseconds"),
        "alloc_in_new_tlab_objects" | "alloc_outside_tlab_objects" => t("memory", suffix, "count"),
        "alloc_in_new_tlab_bytes" | "alloc_outside_tlab_bytes" => t("memory", suffix, "bytes"),
        "live" => t("memory", "live", "count"),
        "exceptions" => t("exceptions", "samples", "count"),
        "bytes" => t("memory", "samples", "bytes"),
        _ => None,
    }
}

/// Parses folded lines, splitting at the last space; lines without one are skipped.
pub fn parse_folded(body: &str) -> Result<Vec<(&str, i64)>, String> {
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let n: i64 = count
            .trim()
            .parse()
            .map_err(|_| format!("line {}: the sample count {count:?} is not an integer", i + 1))?;
        out.push((stack, n));
    }
    Ok(out)
}

/// Parses the `lines` format: identical stacks are counted; empty lines are ignored. Each
/// distinct line costs one entry of the answer and one of the index into it.
pub fn parse_lines(body: &str) -> Vec<(&str, i64)> {
    let mut index: FxHashMap<&str, u32> = FxHashMap::default();
    let mut out: Vec<(&str, i64)> = Vec::new();
    for line in body.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let i = *index.entry(line).or_insert_with(|| {
            out.push((line, 0));
            out.len() as u32 - 1
        });
        out[i as usize].1 += 1;
    }
    out
}

/// The sample type, and period, that a suffix and sample rate give a folded profile.
pub struct FoldedType {
    pub name: &'static str,
    pub sample_type: String,
    pub unit: String,
    pub period_type: Option<(String, String)>,
    /// Each count is multiplied by this (1e9/sampleRate for CPU and wall at a rate).
    pub multiplier: i64,
}

pub fn folded_type(suffix: &str, sample_rate: i64) -> Option<FoldedType> {
    let (name, st, unit) = suffix_type(suffix)?;
    if sample_rate != 0 && (name == "process_cpu" || name == "wall") {
        let st = if name == "process_cpu" { "cpu" } else { "wall" };
        return Some(FoldedType {
            name,
            sample_type: st.into(),
            unit: "nanoseconds".into(),
            period_type: Some(("cpu".into(), "nanoseconds".into())),
            multiplier: 1_000_000_000 / sample_rate,
        });
    }
    Some(FoldedType { name, sample_type: st, unit: unit.into(), period_type: None, multiplier: 1 })
}

/// How many times its text a folded or lines profile may take once built (plus
/// [`crate::distributor::pprof::DECODED_SLACK`]): real ones take a few times, frames being
/// names of tens of bytes.
pub const MAX_BUILT_RATIO: usize = 16;

/// What a folded or lines body of `text_len` bytes may cost built: up to the profile size
/// limit whatever its shape (real profiles of short, unsymbolised frames such as `[unknown]`
/// or hex addresses take over a hundred times their text, and must not be refused), and past
/// it at most [`MAX_BUILT_RATIO`] times the text. 0 (no profile size limit): no bound.
pub fn built_limit(text_len: usize, max_profile_size: usize) -> usize {
    if max_profile_size == 0 {
        return 0;
    }
    text_len.saturating_mul(MAX_BUILT_RATIO).saturating_add(max_profile_size.max(super::pprof::DECODED_SLACK))
}

/// About what a distinct frame costs once built: its string, function, location and line,
/// and its entry in the frame index (each with room for growth).
const FRAME_COST: usize = 256;
/// About what a sample costs besides its frames (4 bytes each): the struct, its values.
const SAMPLE_COST: usize = 128;

/// Builds a one-sample-type profile from root-first `;`-joined stacks: one mapping, each
/// distinct frame one function and one location. `max_bytes` (0: no limit) bounds what the
/// profile may cost, estimated as it is built: a frame name of a byte or two is a whole
/// function and location, so a body of short distinct frames would take a hundred times its
/// size; it is refused instead.
pub fn build_profile(
    stacks: &[(&str, i64)],
    t: &FoldedType,
    time_nanos: i64,
    max_bytes: usize,
) -> Result<Profile, String> {
    let mut p = Profile {
        strings: vec![String::new(), t.sample_type.clone(), t.unit.clone()],
        sample_types: vec![ValueType { r#type: 1, unit: 2 }],
        time_nanos,
        mappings: vec![Mapping { has_functions: true, ..Default::default() }],
        ..Default::default()
    };
    if let Some((pt, pu)) = &t.period_type {
        p.strings.push(pt.clone());
        p.strings.push(pu.clone());
        p.period_type = Some(ValueType { r#type: 3, unit: 4 });
        p.period = t.multiplier;
    }
    let mut frames: FxHashMap<&str, u32> = FxHashMap::default();
    let mut cost = 0usize;
    for (stack, v) in stacks {
        let value = v.saturating_mul(t.multiplier);
        if value == 0 || stack.is_empty() {
            continue;
        }
        let mut locs: Vec<u32> = stack
            .split(';')
            .map(|f| {
                cost += 4;
                *frames.entry(f).or_insert_with(|| {
                    cost += FRAME_COST + f.len();
                    p.strings.push(f.to_string());
                    let s = p.strings.len() as u32 - 1;
                    p.functions.push(Function { name: s, system_name: s, ..Default::default() });
                    p.locations.push(Location {
                        mapping: 1,
                        address: 0,
                        lines: vec![Line { function: p.functions.len() as u32 - 1, line: 0 }],
                    });
                    p.locations.len() as u32 - 1
                })
            })
            .collect();
        locs.reverse();
        p.samples.push(Sample { locations: locs, values: vec![value], span_id: 0 });
        cost += SAMPLE_COST;
        if max_bytes > 0 && cost > max_bytes {
            return Err(format!(
                "the profile would take more than {max_bytes} bytes of memory built: too many distinct frames or stacks for its size"
            ));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_last_space() {
        let v = parse_folded("a;b c;d 3\nnospace\nx 2\n").unwrap();
        assert_eq!(v, vec![("a;b c;d", 3), ("x", 2)]);
        assert!(parse_folded("a;b x").is_err());
    }

    #[test]
    fn lines_count_duplicates() {
        assert_eq!(parse_lines("a;b\n\na;b\nc\n"), vec![("a;b", 2), ("c", 1)]);
    }

    #[test]
    fn short_distinct_frames_are_refused_past_the_budget() {
        let t = folded_type("cpu", 0).unwrap();
        let text: String = (0..10_000).map(|i| format!("{i:x};")).collect::<String>() + " 1";
        let stacks = parse_folded(&text).unwrap();
        let e = build_profile(&stacks, &t, 5, 16 * text.len()).unwrap_err();
        assert!(e.contains("too many distinct frames"), "{e}");
        assert_eq!(build_profile(&stacks, &t, 5, 0).unwrap().functions.len(), 10_001);
    }

    #[test]
    fn cpu_at_a_rate_becomes_nanoseconds() {
        let t = folded_type("cpu", 100).unwrap();
        assert_eq!((t.sample_type.as_str(), t.unit.as_str(), t.multiplier), ("cpu", "nanoseconds", 10_000_000));
        let t = folded_type("cpu", 0).unwrap();
        assert_eq!((t.sample_type.as_str(), t.unit.as_str()), ("samples", "count"));
        let t = folded_type("alloc_objects", 100).unwrap();
        assert_eq!((t.name, t.sample_type.as_str(), t.period_type.is_none()), ("memory", "alloc_objects", true));
        assert!(folded_type("nope", 100).is_none());
    }

    #[test]
    fn builds_root_first_stacks() {
        let t = folded_type("cpu", 0).unwrap();
        let p = build_profile(&[("main;f", 2), ("main;g", 0)], &t, 5, 0).unwrap();
        assert_eq!(p.samples.len(), 1);
        let leaf = p.samples[0].locations[0] as usize;
        let f = p.locations[leaf].lines[0].function as usize;
        assert_eq!(p.strings[p.functions[f].name as usize], "f");
    }
}
