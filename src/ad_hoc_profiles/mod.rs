//! Ad hoc profiles: Pyroscope's `adhocprofiles.v1.AdHocProfileService` (`Upload`, `Get`,
//! `List`, `Diff`), what Grafana's Profiles Drilldown calls when a user drops a profile file
//! on its ad hoc view.
//!
//! 1. `Upload` takes a file name and the file, base64-encoded; the file is at most the
//!    tenant's `-validation.max-profile-size-bytes` (counted on the base64 text, as
//!    Pyroscope counts it) and a tenant keeps at most [`MAX_PROFILES`]. It is parsed first
//!    (a file kiln cannot read is refused, never stored), then stored as one object,
//!    `<tenant>/adhoc/<ULID>-<name>` (Pyroscope's path and id), and answered as `Get`.
//! 2. The formats, told apart as Pyroscope's converter does (by extension, then by the first
//!    bytes): pprof (gzip or not; decoded, validated and normalised by the distributor's own
//!    `pprof::decode_and_normalize`, one flame graph per sample type), folded/collapsed text
//!    (`folded::parse_folded`, one flame graph named after the file) and flamebearer JSON
//!    (Pyroscope's own export, read back through `Tree::from_flamegraph`), and JFR
//!    recordings (`.jfr`, or the `FLR\0` magic; gzip or not), converted as `/ingest` converts
//!    them (`distributor::jfr`), one flame graph per profile type. perf-script files are
//!    refused: kiln does not read them.
//! 3. `Get` answers the flame graph of the requested sample type (else the first) as a
//!    flamebearer JSON string, `/pyroscope/render`'s encoding (`render::flamebearer`,
//!    `render::metadata`), with every type the file holds. `List` lists the tenant's
//!    profiles, newest first, from one listing of its folder; `Diff` draws two of them as a
//!    diff flame graph (`tree::diff`, `render::diff_json`).
use crate::config::TenantLimits;
use crate::distributor::{folded, jfr, pprof};
use crate::querier::render::{diff_json, flamebearer, metadata};
use crate::querier::{max_nodes_within, tree::Tree};
use crate::service::call::{Call, Reply};
use crate::service::routes::{Class, RpcService};
use crate::service::{tenant, Code, RpcError};
use crate::timeparse::now_ns;
use http::HeaderMap;
use kiln_io::store::{Store, StoreError};
use kiln_proto::adhocprofiles::v1 as a;
use kiln_shards::model::labels::ProfileType;
use std::sync::Arc;

/// Its messages carry whole profile files: read up to the ingestion body limit, as a write's.
pub static RPC: &[RpcService] = &[RpcService { name: "adhocprofiles.v1.AdHocProfileService", class: Class::Ingest }];

/// Ad hoc profiles one tenant keeps.
pub const MAX_PROFILES: usize = 1000;
/// Bytes of an uploaded file's name (kept in its id and object path).
pub const MAX_NAME_BYTES: usize = 200;
/// The upload bound when the tenant's profile size limit is 0 (none): an ad hoc profile
/// is kept whole in the bucket and parsed whole on every `Get`.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

/// One stored ad hoc profile: the object at `<tenant>/adhoc/<id>`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub name: String,
    /// The file, base64 as uploaded.
    pub data: String,
    /// Milliseconds since the epoch.
    pub uploaded_at: i64,
}

/// A parsed profile file: one flame tree per sample type, each with what its flamebearer
/// metadata says.
pub struct Parsed {
    pub types: Vec<(ProfileType, Tree)>,
}

impl Parsed {
    fn names(&self) -> Vec<String> {
        self.types.iter().map(|(pt, _)| pt.sample_type.clone()).collect()
    }

    /// The requested type, else the first.
    fn pick(&self, wanted: Option<&str>) -> &(ProfileType, Tree) {
        wanted.and_then(|w| self.types.iter().find(|(pt, _)| pt.sample_type == w)).unwrap_or(&self.types[0])
    }
}

/// Pyroscope's id characters: `[a-zA-Z0-9._-]`.
fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Whether `id` can name a stored profile (and a path segment: never `.` or `..`).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 27 + MAX_NAME_BYTES && id.chars().all(id_char) && id != "." && id != ".."
}

/// The file's name as kept: other characters replaced by `_`, as Pyroscope does.
pub fn clean_name(name: &str) -> String {
    name.chars().map(|c| if id_char(c) { c } else { '_' }).collect()
}

fn object_path(tenant: &str, id: &str) -> String {
    format!("{tenant}/adhoc/{id}")
}

/// The formats an uploaded file may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pprof,
    Folded,
    Json,
    Jfr,
}

/// Pyroscope's converter's choice: the extension, then `{` for JSON, gzip's magic or any
/// unprintable byte in the first 100 for pprof, else folded text.
fn format_of(name: &str, data: &[u8]) -> Result<Format, RpcError> {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "pprof" | "pb" => return Ok(Format::Pprof),
        "json" => return Ok(Format::Json),
        "txt" | "collapsed" | "folded" => return Ok(Format::Folded),
        "jfr" => return Ok(Format::Jfr),
        _ => {}
    }
    if data.len() < 2 {
        return Err(RpcError::invalid("profile is too short"));
    }
    if data.starts_with(b"FLR\0") {
        return Ok(Format::Jfr);
    }
    if data[0] == b'{' {
        return Ok(Format::Json);
    }
    if data[..2] == [0x1f, 0x8b] {
        return Ok(Format::Pprof);
    }
    let unprintable = |b: &u8| !(b.is_ascii_graphic() || b.is_ascii_whitespace() || *b >= 0x80);
    if data.iter().take(100).any(unprintable) {
        return Ok(Format::Pprof);
    }
    Ok(Format::Folded)
}

/// Flamebearer JSON as Pyroscope exports it (only what a flame graph needs).
#[derive(serde::Deserialize)]
struct FlamebearerFile {
    flamebearer: FlamebearerBody,
    #[serde(default)]
    metadata: FlamebearerMeta,
}

#[derive(serde::Deserialize)]
struct FlamebearerBody {
    names: Vec<String>,
    levels: Vec<Vec<i64>>,
}

#[derive(serde::Deserialize, Default)]
struct FlamebearerMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    units: String,
    #[serde(default)]
    format: String,
}

/// A profile type of which only the sample type and unit are known (what flamebearer
/// metadata shows).
fn sample_type(name: &str, unit: &str) -> ProfileType {
    ProfileType {
        name: name.into(),
        sample_type: name.into(),
        sample_unit: unit.into(),
        period_type: String::new(),
        period_unit: String::new(),
    }
}

/// Parses an uploaded file (`data`, base64-decoded already) named `name`. `max_bytes`
/// bounds the file inflated (pprof) and `max_samples` its samples, as for a push.
pub fn parse(name: &str, data: &[u8], max_bytes: usize, max_samples: usize) -> Result<Parsed, RpcError> {
    let types = match format_of(name, data)? {
        Format::Pprof => {
            let raw = if data.starts_with(&[0x1f, 0x8b]) {
                kiln_io::compress::gunzip_bounded(data, max_bytes)
                    .map_err(|e| RpcError::invalid(format!("profile: {e}")))?
            } else {
                data.to_vec()
            };
            let decoded = pprof::decode_and_normalize(&raw, pprof::PprofLimits { max_samples })
                .map_err(|e| RpcError::invalid(format!("parsing pprof: {e}")))?;
            let p = &decoded.profile;
            (0..p.sample_types.len())
                .map(|i| {
                    let st = p.sample_types[i];
                    let mut t = Tree::default();
                    t.add_profile(p, i);
                    t.finish();
                    (sample_type(p.string(st.r#type), p.string(st.unit)), t)
                })
                .collect()
        }
        Format::Folded => {
            let text = std::str::from_utf8(data).map_err(|e| RpcError::invalid(format!("folded profile: {e}")))?;
            let stacks = folded::parse_folded(text).map_err(|e| RpcError::invalid(format!("folded profile: {e}")))?;
            let mut t = Tree::default();
            for (stack, value) in stacks {
                if value < 0 {
                    return Err(RpcError::invalid(format!("folded profile: negative sample value {value}")));
                }
                t.insert_stack(&stack.split(';').collect::<Vec<_>>(), value);
            }
            t.finish();
            vec![(sample_type(name, ""), t)]
        }
        Format::Jfr => jfr_types(data, max_bytes, max_samples)?,
        Format::Json => {
            let f: FlamebearerFile =
                serde_json::from_slice(data).map_err(|e| RpcError::invalid(format!("unable to read JSON: {e}")))?;
            if !matches!(f.metadata.format.as_str(), "" | "single") {
                return Err(RpcError::invalid(format!(
                    "flamebearer format {:?}: only \"single\" is read",
                    f.metadata.format
                )));
            }
            let t = Tree::from_flamegraph(&f.flamebearer.names, &f.flamebearer.levels)
                .map_err(|e| RpcError::invalid(format!("invalid flamebearer profile: {e}")))?;
            vec![(sample_type(&f.metadata.name, &f.metadata.units), t)]
        }
    };
    if types.is_empty() {
        return Err(RpcError::invalid("no profiles found after parsing"));
    }
    Ok(Parsed { types })
}

/// A JFR recording's flame graphs: one per profile type of each profile converted, as
/// `/ingest` converts it (at the default 100 Hz). A sample type two profiles share (a mutex
/// and a block profile both count `contentions`) is told apart by its profile's name.
fn jfr_types(data: &[u8], max_bytes: usize, max_samples: usize) -> Result<Vec<(ProfileType, Tree)>, RpcError> {
    let raw =
        kiln_io::compress::maybe_gunzip(data, max_bytes).map_err(|e| RpcError::invalid(format!("profile: {e}")))?;
    let opts = jfr::Options {
        time_nanos: 0,
        duration_nanos: 0,
        sample_rate: 100,
        max_bytes: folded::built_limit(raw.len(), max_bytes),
        max_samples,
    };
    let converted = jfr::convert(&raw, &jfr::LabelsSnapshot::default(), opts)
        .map_err(|e| RpcError::invalid(format!("parsing JFR: {e}")))?;
    let mut types: Vec<(ProfileType, Tree)> = Vec::new();
    for jp in &converted.profiles {
        let p = &jp.decoded.profile;
        let (period_type, period_unit) = p.period_type.map_or((String::new(), String::new()), |pt| {
            (p.string(pt.r#type).to_string(), p.string(pt.unit).to_string())
        });
        for (i, st) in p.sample_types.iter().enumerate() {
            let mut sample_type = p.string(st.r#type).to_string();
            if types.iter().any(|(t, _)| t.sample_type == sample_type) {
                sample_type = format!("{}:{sample_type}", jp.name);
            }
            let mut t = Tree::default();
            t.add_profile(p, i);
            t.finish();
            let pt = ProfileType {
                name: jp.name.to_string(),
                sample_type,
                sample_unit: p.string(st.unit).to_string(),
                period_type: period_type.clone(),
                period_unit: period_unit.clone(),
            };
            types.push((pt, t));
        }
    }
    Ok(types)
}

/// The flamebearer JSON of one type: what `/pyroscope/render` answers, without a timeline.
fn flamebearer_json(pt: &ProfileType, t: &Tree, max_nodes: i64) -> String {
    let fg = t.flamegraph(max_nodes);
    let v = serde_json::json!({
        "version": 1,
        "flamebearer": flamebearer(&fg),
        "metadata": metadata(pt, "single"),
        "timeline": null,
        "groups": null,
        "heatmap": null,
    });
    v.to_string()
}

/// The ad hoc profile service on one core.
pub struct AdHocProfiles {
    store: Store,
    limits: Arc<TenantLimits>,
    multitenancy: bool,
}

impl AdHocProfiles {
    pub fn new(store: Store, limits: Arc<TenantLimits>, multitenancy: bool) -> Self {
        AdHocProfiles { store, limits, multitenancy }
    }

    pub async fn serve_rpc(&self, call: &Call<'_>, method: &str) -> Reply {
        let h = call.headers;
        match method {
            "Upload" => call.unary(|r: a::AdHocProfilesUploadRequest| self.upload(h, r)).await,
            "Get" => call.unary(|r: a::AdHocProfilesGetRequest| self.get(h, r)).await,
            "List" => call.unary(|_: a::AdHocProfilesListRequest| self.list(h)).await,
            "Diff" => call.unary(|r: a::AdHocProfilesDiffRequest| self.diff(h, r)).await,
            _ => call.unimplemented(),
        }
    }

    /// The tenant, its upload bound, its samples bound.
    fn tenant(&self, headers: &HeaderMap) -> Result<(String, usize, usize), RpcError> {
        let tenant = tenant::write_tenant(self.multitenancy, headers)?;
        let l = self.limits.for_tenant(&tenant);
        let max = if l.max_profile_size_bytes == 0 { MAX_UPLOAD_BYTES } else { l.max_profile_size_bytes };
        Ok((tenant.to_string(), max, l.max_profile_stacktrace_samples))
    }

    fn max_nodes(&self, tenant: &str, requested: Option<i64>) -> Result<i64, RpcError> {
        max_nodes_within(self.limits.for_tenant(tenant), requested)
    }

    /// A stored profile's file, parsed.
    async fn load(&self, tenant: &str, id: &str, max: usize, samples: usize) -> Result<(Stored, Parsed), RpcError> {
        if !valid_id(id) {
            return Err(RpcError::invalid(format!("id {id:?} is invalid: can only contain [a-zA-Z0-9_-.]")));
        }
        let bytes = match self.store.get(object_path(tenant, id)).await {
            Ok(b) => b,
            Err(StoreError::NotFound(_)) => {
                return Err(RpcError::new(Code::NotFound, format!("profile {id} not found")));
            }
            Err(e) => return Err(RpcError::store("ad hoc profiles", &e)),
        };
        let stored: Stored = serde_json::from_slice(&bytes)
            .map_err(|e| RpcError::internal(format!("ad hoc profile {id} is damaged: {e}")))?;
        let data = decode_base64(&stored.data, max)?;
        let parsed = parse(&stored.name, &data, max, samples)?;
        Ok((stored, parsed))
    }

    async fn upload(
        &self,
        headers: &HeaderMap,
        r: a::AdHocProfilesUploadRequest,
    ) -> Result<a::AdHocProfilesGetResponse, RpcError> {
        let (tenant, max, samples) = self.tenant(headers)?;
        let name = clean_name(&r.name);
        if name.len() > MAX_NAME_BYTES {
            return Err(RpcError::invalid(format!("the file name is longer than {MAX_NAME_BYTES} bytes")));
        }
        let data = decode_base64(&r.profile, max)?;
        let max_nodes = self.max_nodes(&tenant, r.max_nodes)?;
        let parsed = parse(&name, &data, max, samples)?;
        let kept =
            self.store.list(format!("{tenant}/adhoc")).await.map_err(|e| RpcError::store("ad hoc profiles", &e))?;
        if kept.len() >= MAX_PROFILES {
            return Err(RpcError::invalid(format!(
                "a tenant keeps at most {MAX_PROFILES} ad hoc profiles; this one is refused"
            )));
        }
        let uploaded_at = now_ns() / 1_000_000;
        let ulid = ulid::Ulid::from_parts(uploaded_at as u64, ulid::Ulid::new().random());
        let id = format!("{ulid}-{name}");
        let stored = Stored { name: name.clone(), data: r.profile, uploaded_at };
        let body = serde_json::to_vec(&stored).expect("serializes");
        self.store
            .put(object_path(&tenant, &id), body.into())
            .await
            .map_err(|e| RpcError::store("ad hoc profiles", &e))?;
        Ok(answer(id, &stored, &parsed, None, max_nodes))
    }

    async fn get(
        &self,
        headers: &HeaderMap,
        r: a::AdHocProfilesGetRequest,
    ) -> Result<a::AdHocProfilesGetResponse, RpcError> {
        let (tenant, max, samples) = self.tenant(headers)?;
        let max_nodes = self.max_nodes(&tenant, r.max_nodes)?;
        let (stored, parsed) = self.load(&tenant, &r.id, max, samples).await?;
        Ok(answer(r.id, &stored, &parsed, r.profile_type.as_deref(), max_nodes))
    }

    async fn list(&self, headers: &HeaderMap) -> Result<a::AdHocProfilesListResponse, RpcError> {
        let (tenant, _, _) = self.tenant(headers)?;
        let listing =
            self.store.list(format!("{tenant}/adhoc")).await.map_err(|e| RpcError::store("ad hoc profiles", &e))?;
        let mut profiles: Vec<a::AdHocProfilesProfileMetadata> = listing
            .into_iter()
            .filter(|(id, _, _)| valid_id(id))
            .filter_map(|(id, _, _)| {
                let (ulid, name) = id.split_once('-')?;
                let at = ulid::Ulid::from_string(ulid).ok()?.timestamp_ms() as i64;
                Some(a::AdHocProfilesProfileMetadata { name: name.to_string(), uploaded_at: at, id })
            })
            .collect();
        profiles.sort_by(|x, y| y.uploaded_at.cmp(&x.uploaded_at).then_with(|| x.id.cmp(&y.id)));
        Ok(a::AdHocProfilesListResponse { profiles })
    }

    async fn diff(
        &self,
        headers: &HeaderMap,
        r: a::AdHocProfilesDiffRequest,
    ) -> Result<a::AdHocProfilesDiffResponse, RpcError> {
        let (tenant, max, samples) = self.tenant(headers)?;
        let max_nodes = self.max_nodes(&tenant, r.max_nodes)?;
        let (_, left) = self.load(&tenant, &r.left_id, max, samples).await?;
        let (_, right) = self.load(&tenant, &r.right_id, max, samples).await?;
        let right_names = right.names();
        let common: Vec<String> = left.names().into_iter().filter(|n| right_names.contains(n)).collect();
        if common.is_empty() {
            return Err(RpcError::invalid(format!(
                "no common profile types between left ({:?}) and right ({right_names:?})",
                left.names()
            )));
        }
        let (lpt, lt) = left.pick(r.profile_type.as_deref());
        let (rpt, rt) = right.pick(r.profile_type.as_deref());
        if lpt.sample_type != rpt.sample_type {
            return Err(RpcError::invalid(format!(
                "profile type mismatch: left profile uses {:?}, right profile uses {:?}; please specify a profile type from the common types: {common:?}",
                lpt.sample_type, rpt.sample_type
            )));
        }
        let d = crate::querier::tree::diff(lt, rt, max_nodes).map_err(RpcError::invalid)?;
        Ok(a::AdHocProfilesDiffResponse { profile_types: common, flamebearer_profile: diff_json(&d, lpt).to_string() })
    }
}

/// Decodes an upload's base64 (standard alphabet, as the browser's `readAsDataURL` gives),
/// refusing one longer than `max` bytes of text first, as Pyroscope does.
pub fn decode_base64(text: &str, max: usize) -> Result<Vec<u8>, RpcError> {
    if text.len() > max {
        return Err(RpcError::invalid(format!("profile payload size exceeds limit of {max} bytes")));
    }
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| RpcError::invalid(format!("the profile is not base64: {e}")))
}

fn answer(
    id: String,
    stored: &Stored,
    parsed: &Parsed,
    wanted: Option<&str>,
    max_nodes: i64,
) -> a::AdHocProfilesGetResponse {
    let (pt, t) = parsed.pick(wanted);
    a::AdHocProfilesGetResponse {
        id,
        name: stored.name.clone(),
        uploaded_at: stored.uploaded_at,
        profile_type: pt.sample_type.clone(),
        profile_types: parsed.names(),
        flamebearer_profile: flamebearer_json(pt, t, max_nodes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_as_pyroscope_does() {
        assert_eq!(format_of("x.pprof", b"a;b 1").unwrap(), Format::Pprof);
        assert_eq!(format_of("x.txt", b"\x1f\x8b").unwrap(), Format::Folded);
        assert_eq!(format_of("x", b"{\"a\":1}").unwrap(), Format::Json);
        assert_eq!(format_of("x", &[0x1f, 0x8b, 0]).unwrap(), Format::Pprof);
        assert_eq!(format_of("x", &[0x0a, 0x04, 0x08]).unwrap(), Format::Pprof);
        assert_eq!(format_of("x", b"main;f 1\n").unwrap(), Format::Folded);
        assert_eq!(format_of("x.jfr", &[0x1f, 0x8b]).unwrap(), Format::Jfr);
        assert_eq!(format_of("upload", b"FLR\0\0\x02").unwrap(), Format::Jfr);
        assert!(format_of("x", b"a").is_err());
    }

    #[test]
    fn folded_and_json_files_parse_into_one_flame_graph() {
        let p = parse("stacks.txt", b"main;a 3\nmain;b 1\n", 1 << 20, 0).unwrap();
        assert_eq!(p.names(), vec!["stacks.txt"]);
        assert_eq!(p.types[0].1.total(), 4);
        let fb = flamebearer_json(&p.types[0].0, &p.types[0].1, 100);
        // Exported, then uploaded back: the same flame graph.
        let back = parse("export.json", fb.as_bytes(), 1 << 20, 0).unwrap();
        assert_eq!(back.types[0].1.flamegraph(0), p.types[0].1.flamegraph(0));
        assert!(parse("bad.txt", b"main;a x\n", 1 << 20, 0).is_err());
        assert!(parse("neg.txt", b"main;a -1\n", 1 << 20, 0).is_err());
        assert!(parse("x.json", br#"{"flamebearer":{"names":["total"],"levels":[[0,1,0,9]]}}"#, 1 << 20, 0).is_ok());
        assert!(
            parse("x.json", br#"{"flamebearer":{"names":["total"],"levels":[[0],[0,1,0,9]]}}"#, 1 << 20, 0).is_err()
        );
    }

    #[test]
    fn jfr_recordings_parse_into_one_flame_graph_per_type() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/jfr/jfr-parser/cortex-dev-01__kafka-0__cpu_lock0_alloc0__0.jfr.gz"
        );
        let gz = std::fs::read(path).unwrap();
        let p = parse("recording.jfr", &gz, 16 << 20, 0).unwrap();
        // block, in-TLAB, outside-TLAB, mutex (2 types each) and CPU, as jfr-parser converts it.
        assert_eq!(p.types.len(), 9, "{:?}", p.names());
        let cpu = p.types.iter().find(|(t, _)| t.sample_type == "cpu").unwrap();
        assert_eq!((cpu.0.name.as_str(), cpu.1.total()), ("process_cpu", 5_820_000_000));
        let names = p.names();
        assert!(names.contains(&"contentions".to_string()) && names.iter().any(|n| n.ends_with(":contentions")));
        // The same bytes uncompressed, told apart by their magic.
        let raw = kiln_io::compress::maybe_gunzip(&gz, 16 << 20).unwrap();
        assert_eq!(parse("upload", &raw, 16 << 20, 0).unwrap().types.len(), 9);
        let Err(e) = parse("x.jfr", &raw[..raw.len() / 2], 16 << 20, 0) else { panic!("half a recording parsed") };
        assert!(e.message.contains("parsing JFR"), "{}", e.message);
    }

    #[test]
    fn ids_and_names() {
        assert_eq!(clean_name("my profile (1).pb.gz"), "my_profile__1_.pb.gz");
        assert!(valid_id("01J0000000000000000000000-cpu.pprof"));
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(!valid_id(bad), "{bad}");
        }
        assert!(decode_base64("aGk=", 4).is_ok());
        assert!(decode_base64("aGk=", 3).unwrap_err().message.contains("exceeds limit of 3"));
        assert!(decode_base64("***", 100).is_err());
    }
}
