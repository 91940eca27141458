//! The pushed workload: profiles (from files or the synthetic generator), the series they
//! are pushed as, and the cheap per-request re-timestamping.
//!
//! 1. Each profile is decoded once, its `time_nanos` cleared, and encoded again: the *base*.
//! 2. A request appends `time_nanos = now` to the base as one more field (field 9, varint).
//!    Protobuf allows fields in any order and the base has no field 9, so the result decodes
//!    exactly as the profile with `time_nanos = now`, without re-encoding it each time.
//! 3. Request `k` goes to stream `k % streams` (a series: service, extra labels, a pool of
//!    profiles of one type) and takes that pool's profiles round-robin.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use flate2::read::GzDecoder;
use kiln_proto::google::v1::Profile;
use prost::Message;

use crate::flags::Shape;
use crate::synth::Universe;

/// Pyroscope's default `-validation.max-profile-size-bytes`: larger profiles are rejected by
/// default servers, so a directory's larger files are skipped.
pub const PROFILE_BYTES_MAX: usize = 4 << 20;
/// Pyroscope's default `-validation.max-profile-stacktrace-samples`.
pub const SAMPLES_MAX: usize = 16_000;
/// Pyroscope's limit on labels per sample.
pub const SAMPLE_LABELS_MAX: usize = 100;
/// Files larger than this are not even read.
const FILE_BYTES_MAX: u64 = 64 << 20;
/// Variants drawn per synthetic profile type: payloads differ between requests.
const SYNTHETIC_VARIANTS: u64 = 8;

/// One profile ready to send.
#[derive(Clone, Debug)]
pub struct SourceProfile {
    /// File path, or `synthetic/<type>/<variant>`.
    pub origin: String,
    /// The `__name__` a series of this profile carries (`process_cpu`, `memory`, ...).
    pub metric_name: String,
    /// The encoded profile with `time_nanos` cleared.
    pub base: Bytes,
}

/// One series: what a request's labels say.
#[derive(Clone, Debug)]
pub struct Stream {
    pub service: String,
    /// Extra labels beyond `__name__` and `service_name`.
    pub labels: Vec<(String, String)>,
    /// Index into `Workload::pools`.
    pub pool: usize,
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub profiles: Vec<SourceProfile>,
    /// Profile indices by type: a stream only sends profiles of its pool.
    pub pools: Vec<Vec<usize>>,
    pub streams: Vec<Stream>,
}

/// What loading a directory skipped, for the user.
#[derive(Debug, Default)]
pub struct Skipped {
    pub files: Vec<(PathBuf, String)>,
}

impl Workload {
    /// Every file under `dir` that decodes as a usable pprof, gzip or raw.
    pub fn from_dir(dir: &Path, shape: &Shape) -> Result<(Workload, Skipped), String> {
        let mut paths = Vec::new();
        collect_files(dir, &mut paths).map_err(|e| format!("cannot read source directory {}: {e}", dir.display()))?;
        paths.sort();
        let mut profiles = Vec::new();
        let mut skipped = Skipped::default();
        for path in paths {
            match load_file(&path) {
                Ok(p) => profiles.push(p),
                Err(why) => skipped.files.push((path, why)),
            }
        }
        if profiles.is_empty() {
            return Err(format!("no usable pprof files under {}", dir.display()));
        }
        let pools = vec![(0..profiles.len()).collect()];
        let streams = streams(shape, 1);
        Ok((Workload { profiles, pools, streams }, skipped))
    }

    /// Profiles from the synthetic generator, `SYNTHETIC_VARIANTS` per profile type.
    pub fn synthetic(shape: &Shape, seed: u64) -> Workload {
        let universe = Universe::new(shape, seed);
        let mut profiles = Vec::new();
        let mut pools = Vec::new();
        for kind in &shape.profile_types {
            let mut pool = Vec::new();
            for v in 0..SYNTHETIC_VARIANTS {
                let variant_seed = seed.wrapping_mul(0x1000_0000_01B3).wrapping_add(v * 0x9E37 + *kind as u64);
                let mut p = universe.profile(*kind, shape.samples_per_profile, variant_seed);
                p.time_nanos = 0;
                pool.push(profiles.len());
                profiles.push(SourceProfile {
                    origin: format!("synthetic/{}/{v}", kind.metric_name()),
                    metric_name: kind.metric_name().to_string(),
                    base: Bytes::from(p.encode_to_vec()),
                });
            }
            pools.push(pool);
        }
        let streams = streams(shape, pools.len());
        Workload { profiles, pools, streams }
    }

    /// The stream and the profile index of request `k`.
    pub fn pick(&self, k: u64) -> (&Stream, usize) {
        let streams = self.streams.len() as u64;
        let index = k % streams;
        let round = k / streams;
        let stream = &self.streams[index as usize];
        let pool = &self.pools[stream.pool];
        let profile = pool[((round + index) % pool.len() as u64) as usize];
        (stream, profile)
    }
}

/// `services × series_per_service × pools` series. `label_0` tells a service's series apart;
/// further labels have small cardinalities like real deployment labels.
fn streams(shape: &Shape, pools: usize) -> Vec<Stream> {
    let mut out = Vec::new();
    for s in 0..shape.services {
        for i in 0..shape.series_per_service {
            let labels: Vec<(String, String)> = (0..shape.labels_per_series)
                .map(|j| {
                    let value = if j == 0 { format!("series-{i}") } else { format!("v{}", i % (j + 2)) };
                    (format!("label_{j}"), value)
                })
                .collect();
            for pool in 0..pools {
                out.push(Stream { service: format!("kiln-load-{s}"), labels: labels.clone(), pool });
            }
        }
    }
    out
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

fn load_file(path: &Path) -> Result<SourceProfile, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > FILE_BYTES_MAX {
        return Err(format!("file larger than {FILE_BYTES_MAX} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut profile = decode_pprof(&bytes)?;
    check_usable(&profile)?;
    profile.time_nanos = 0;
    let base = profile.encode_to_vec();
    if base.len() > PROFILE_BYTES_MAX {
        return Err(format!("{} bytes uncompressed, over the default server limit of {PROFILE_BYTES_MAX}", base.len()));
    }
    Ok(SourceProfile {
        origin: path.display().to_string(),
        metric_name: metric_name(&profile),
        base: Bytes::from(base),
    })
}

/// Decodes a pprof, gunzipping first when the bytes start with the gzip magic `1f 8b`.
pub fn decode_pprof(bytes: &[u8]) -> Result<Profile, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        GzDecoder::new(bytes)
            .take(PROFILE_BYTES_MAX as u64 * 4)
            .read_to_end(&mut raw)
            .map_err(|e| format!("bad gzip: {e}"))?;
        Profile::decode(raw.as_slice()).map_err(|e| format!("not a pprof: {e}"))
    } else {
        Profile::decode(bytes).map_err(|e| format!("not a pprof: {e}"))
    }
}

/// The checks a Pyroscope-compatible server applies that would reject the profile as invalid
/// (so loading never picks a file that errors on every push). Any byte string "decodes" as
/// some protobuf; these checks also tell real profiles from text files.
pub fn check_usable(p: &Profile) -> Result<(), String> {
    let strings = p.string_table.len() as i64;
    let in_range = |i: i64| (0..strings).contains(&i);
    if p.string_table.first().map(String::as_str) != Some("") {
        return Err("string table must start with an empty string".into());
    }
    if p.sample_type.is_empty() {
        return Err("no sample types".into());
    }
    if p.sample.is_empty() {
        return Err("no samples".into());
    }
    if p.sample.len() > SAMPLES_MAX {
        return Err(format!("{} samples, over the default server limit of {SAMPLES_MAX}", p.sample.len()));
    }
    for t in &p.sample_type {
        if !in_range(t.r#type) || !in_range(t.unit) {
            return Err("sample type string index out of range".into());
        }
        if p.string_table[t.r#type as usize].is_empty() {
            // `/ingest` would derive an empty `__name__` from it and reject the profile.
            return Err("empty sample type name".into());
        }
        if p.string_table[t.r#type as usize].contains('-') {
            return Err("sample type contains -".into());
        }
    }
    for s in &p.sample {
        if s.value.len() != p.sample_type.len() {
            return Err("sample value length mismatch".into());
        }
        if s.label.len() > SAMPLE_LABELS_MAX {
            return Err("too many sample labels".into());
        }
        if s.label.iter().any(|l| !in_range(l.key) || !in_range(l.str)) {
            return Err("sample label string index out of range".into());
        }
    }
    if p.location.iter().any(|l| l.id == 0) {
        return Err("location id is 0".into());
    }
    for f in &p.function {
        if f.id == 0 {
            return Err("function id is 0".into());
        }
        if !in_range(f.name) || !in_range(f.system_name) || !in_range(f.filename) {
            return Err("function string index out of range".into());
        }
    }
    if p.mapping.iter().any(|m| !in_range(m.filename) || !in_range(m.build_id)) {
        return Err("mapping string index out of range".into());
    }
    Ok(())
}

/// The `__name__` Pyroscope's `/ingest` would derive from the sample types (api.md §2.2),
/// used for Push series too.
pub fn metric_name(p: &Profile) -> String {
    let name_of = |i: i64| p.string_table.get(i as usize).map(String::as_str).unwrap_or("");
    if p.sample_type.iter().any(|t| name_of(t.r#type) == "wall") {
        return "wall".to_string();
    }
    let mut last = String::new();
    for t in &p.sample_type {
        let name = match name_of(t.r#type) {
            "samples" => "cpu",
            "goroutine" => "goroutines",
            "contentions" => "mutex_count",
            "delay" => "mutex_duration",
            other => other,
        };
        if name.contains("cpu") {
            return "process_cpu".to_string();
        }
        if name.contains("alloc_") || name.contains("inuse_") || name == "space" || name == "objects" {
            return "memory".to_string();
        }
        for (needle, metric) in [("mutex_", "mutex"), ("block_", "block"), ("goroutines", "goroutines")] {
            if name.contains(needle) {
                return metric.to_string();
            }
        }
        last = name.to_string();
    }
    let clean: String = last.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    match clean.chars().next() {
        Some(c) if !c.is_ascii_digit() => clean,
        _ => format!("profile_{clean}"),
    }
}

/// The base profile with `time_nanos` appended as field 9 (see the module doc).
pub fn with_time(base: &[u8], time_nanos: i64) -> Vec<u8> {
    let tail = time_field(time_nanos);
    let mut out = Vec::with_capacity(base.len() + tail.len());
    out.extend_from_slice(base);
    out.extend_from_slice(&tail);
    out
}

/// The encoding of pprof field 9 (`time_nanos`, int64 varint): at most 11 bytes.
pub fn time_field(time_nanos: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(11);
    out.push(9 << 3); // field 9, wire type 0 (varint)
    let mut v = time_nanos as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::ProfileKind;

    fn small_shape() -> Shape {
        Shape {
            services: 2,
            series_per_service: 3,
            labels_per_series: 2,
            stack_depth: 6,
            unique_stacks: 40,
            functions: 30,
            samples_per_profile: 20,
            profile_types: vec![ProfileKind::Cpu, ProfileKind::Memory],
        }
    }

    #[test]
    fn test_with_time_decodes_as_retimed_profile() {
        let shape = small_shape();
        let w = Workload::synthetic(&shape, 3);
        let now = 1_760_000_000_123_456_789i64;
        for p in &w.profiles {
            let bytes = with_time(&p.base, now);
            let decoded = decode_pprof(&bytes).unwrap();
            assert_eq!(decoded.time_nanos, now);
            let mut expect = Profile::decode(p.base.as_ref()).unwrap();
            expect.time_nanos = now;
            assert_eq!(decoded, expect);
            let gz = crate::gz::GzTemplate::new(&p.base, flate2::Compression::fast());
            let decoded = decode_pprof(&gz.build(&time_field(now))).unwrap();
            assert_eq!(decoded.time_nanos, now);
        }
    }

    #[test]
    fn test_synthetic_workload_streams_and_pick() {
        let shape = small_shape();
        let w = Workload::synthetic(&shape, 3);
        assert_eq!(w.streams.len(), 2 * 3 * 2);
        assert_eq!(w.pools.len(), 2);
        assert_eq!(w.profiles.len(), 2 * SYNTHETIC_VARIANTS as usize);
        for k in 0..100 {
            let (stream, profile) = w.pick(k);
            let profile = &w.profiles[profile];
            let want = shape.profile_types[stream.pool].metric_name();
            assert_eq!(profile.metric_name, want);
            assert_eq!(stream.labels.len(), 2);
        }
        // Every series is distinct.
        let mut ids: Vec<_> = w.streams.iter().map(|s| (s.service.clone(), s.labels.clone(), s.pool)).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), w.streams.len());
    }

    #[test]
    fn test_usable_and_metric_name() {
        let shape = small_shape();
        let u = Universe::new(&shape, 1);
        let cpu = u.profile(ProfileKind::Cpu, 5, 1);
        let mem = u.profile(ProfileKind::Memory, 5, 1);
        assert!(check_usable(&cpu).is_ok());
        assert_eq!(metric_name(&cpu), "process_cpu");
        assert_eq!(metric_name(&mem), "memory");
        let mut bad = cpu.clone();
        bad.string_table[0] = "x".into();
        assert!(check_usable(&bad).is_err());
        let mut bad = cpu.clone();
        bad.sample[0].value.pop();
        assert!(check_usable(&bad).is_err());
        assert!(
            decode_pprof(b"{\"not\": \"a profile\"}").is_err()
                || check_usable(&decode_pprof(b"{\"not\": \"a profile\"}").unwrap()).is_err()
        );
    }

    #[test]
    fn test_load_testdata_dir_if_present() {
        let dir = crate::flags::default_source_dir();
        if !dir.is_dir() {
            eprintln!("skipping: {} not found", dir.display());
            return;
        }
        let (w, skipped) = Workload::from_dir(&dir, &small_shape()).unwrap();
        assert!(w.profiles.len() >= 10, "loaded {}", w.profiles.len());
        assert!(w.profiles.iter().all(|p| p.base.len() <= PROFILE_BYTES_MAX));
        // Text fixtures are not pprofs.
        assert!(skipped.files.iter().any(|(p, _)| p.extension().is_some_and(|e| e == "json" || e == "txt")));
        assert!(w.profiles.iter().all(|p| !p.origin.ends_with(".json") && !p.origin.ends_with(".txt")));
    }
}
