//! OTLP profiles (opentelemetry-proto v1.10.0 `profiles/v1development`) to kiln's profiles,
//! as Pyroscope converts them (shared/api.md §2.3): each OTLP `Profile` becomes one pprof
//! per distinct sample `service.name`, which then goes through the pprof validation and
//! normalisation every push goes through (`pprof::normalize`).
//!
//! Every index of the request is checked against its dictionary table: a payload of
//! another layout (v1.8's renumbered fields decode to indices that point nowhere) or with
//! indices out of range is refused, never converted into a wrong profile. Index 0 of a
//! table is its zero value ("no mapping", the empty string), also where the table is empty.
//!
//! Work and memory: each pprof interns the dictionary entries its samples use, once per
//! pprof; the stacks it copies are charged against `max_bytes` (a million samples may all
//! point at one deep stack: the copies, not the request, would be large).
use crate::distributor::pprof::{self, MAX_STACK_DEPTH};
use kiln_proto::google::v1 as pb;
use kiln_proto::kiln::v1::ProfileInput;
use kiln_proto::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use kiln_proto::opentelemetry::proto::common::v1::{any_value::Value, AnyValue, KeyValue};
use kiln_proto::opentelemetry::proto::profiles::v1development as otlp;
use kiln_shards::model::labels::{self, Labels};
use rustc_hash::FxHashMap;

/// A profile with no duration gets Pyroscope's default.
pub const DEFAULT_DURATION_NS: i64 = 10_000_000_000;

/// The attribute that names a sample's (or a resource's) service.
const SERVICE_NAME_ATTR: &str = "service.name";
const EXECUTABLE_NAME_ATTR: &str = "process.executable.name";
/// Mapping attributes that carry a build id, the first found kept (GNU's first).
const BUILD_ID_ATTRS: &[&str] =
    &["process.executable.build_id.gnu", "process.executable.build_id.go", "process.executable.build_id.htlhash"];

/// One converted profile: the series labels it is pushed under and the profile.
pub struct Converted {
    pub labels: Labels,
    pub decoded: pprof::Decoded,
}

/// What a stack frame copied into a pprof costs (its id in the sample), and a sample
/// besides its frames and a new symbol (its struct and index entry), as in the folded path.
const FRAME_COST: usize = 8;
const SAMPLE_COST: usize = 128;
const SYMBOL_COST: usize = 192;
/// What a pprof built costs besides its samples and symbols (its tables, their indices,
/// the normalised profile and its labels): a sample of a service of its own makes one.
const PROFILE_COST: usize = 4096;

/// The dictionary, its lookups checked.
struct Dict<'a>(&'a otlp::ProfilesDictionary);

/// Entry `i` of `table`: `None` for the zero index (or an empty table's), an error naming
/// the table for a negative or out-of-range index.
fn entry<'t, T>(table: &'t [T], i: i32, what: &str) -> Result<Option<&'t T>, String> {
    if i == 0 && table.len() <= 1 {
        return Ok(table.first());
    }
    usize::try_from(i)
        .ok()
        .and_then(|u| table.get(u))
        .map(Some)
        .ok_or_else(|| format!("{what} index {i} is out of range: the dictionary's table has {} entries", table.len()))
}

impl Dict<'_> {
    fn string(&self, i: i32) -> Result<&str, String> {
        Ok(entry(&self.0.string_table, i, "string")?.map_or("", String::as_str))
    }
    /// An attribute: its key and value.
    fn attribute(&self, i: i32) -> Result<(&str, Option<&AnyValue>), String> {
        match entry(&self.0.attribute_table, i, "attribute")? {
            Some(a) => Ok((self.string(a.key_strindex)?, a.value.as_ref())),
            None => Ok(("", None)),
        }
    }
    fn value_type(&self, vt: Option<&otlp::ValueType>) -> Result<(String, String), String> {
        match vt {
            Some(v) => Ok((self.string(v.type_strindex)?.to_string(), self.string(v.unit_strindex)?.to_string())),
            None => Ok((String::new(), String::new())),
        }
    }
}

/// A label value of an attribute: a string or an integer, or an array of one of those.
fn label_value(v: Option<&AnyValue>) -> Option<String> {
    match v?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::ArrayValue(a) if a.values.len() == 1 => match a.values[0].value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn string_value(v: Option<&AnyValue>) -> Option<&str> {
    match v?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// `__name__`, sample type, period type and the multiplier of each value, from the OTLP
/// profile's sample and period types (Pyroscope's rules).
struct ProfileKind {
    name: String,
    sample_type: (String, String),
    period_type: Option<(String, String)>,
    period: i64,
    multiplier: i64,
}

fn profile_kind(st: (String, String), pt: (String, String), period: i64) -> ProfileKind {
    let has_period = !(pt.0.is_empty() && pt.1.is_empty());
    if st.0 == "samples" && st.1 == "count" && pt.0 == "cpu" && pt.1 == "nanoseconds" {
        // Counts of samples taken every `period` ns: CPU time.
        return ProfileKind {
            name: "process_cpu".into(),
            sample_type: ("cpu".into(), "nanoseconds".into()),
            period_type: Some(pt),
            period,
            multiplier: period,
        };
    }
    if st.0 == "off_cpu" && st.1 == "nanoseconds" && !has_period {
        return ProfileKind { name: "off_cpu".into(), sample_type: st, period_type: None, period: 1, multiplier: 1 };
    }
    let name = if pt.0.is_empty() { "process_cpu".to_string() } else { pt.0.clone() };
    ProfileKind { name, sample_type: st, period_type: has_period.then_some(pt), period, multiplier: 1 }
}

/// Labels of a resource and a scope: each attribute with a label value under its own key,
/// resource first, the first occurrence of a key kept.
fn resource_labels(rp: &otlp::ResourceProfiles, sp: &otlp::ScopeProfiles) -> Vec<(String, String)> {
    let resource = rp.resource.iter().flat_map(|r| &r.attributes);
    let scope = sp.scope.iter().flat_map(|s| &s.attributes);
    let mut out: Vec<(String, String)> = Vec::new();
    for KeyValue { key, value } in resource.chain(scope) {
        if out.iter().any(|(k, _)| k == key) {
            continue;
        }
        if let Some(v) = label_value(value.as_ref()) {
            out.push((key.clone(), v));
        }
    }
    out
}

/// The service of samples without their own `service.name`.
fn resource_service(rp: &otlp::ResourceProfiles) -> String {
    let attrs = rp.resource.iter().flat_map(|r| &r.attributes);
    let find = |k: &str| attrs.clone().find(|a| a.key == k).and_then(|a| string_value(a.value.as_ref()));
    match (find(SERVICE_NAME_ATTR), find(EXECUTABLE_NAME_ATTR)) {
        (Some(s), _) if !s.is_empty() => s.to_string(),
        (_, Some(exe)) if !exe.is_empty() => format!("unknown_service:{exe}"),
        _ => "unknown_service".to_string(),
    }
}

/// Converts a whole request. `max_bytes` (0: none) bounds what the pprofs built cost;
/// `now_ns` replaces a zero time.
pub fn convert(
    req: &ExportProfilesServiceRequest,
    limits: pprof::PprofLimits,
    max_bytes: usize,
    now_ns: i64,
) -> Result<Vec<Converted>, String> {
    let dict = Dict(req.dictionary.as_ref().ok_or("missing profile metadata dictionary")?);
    let mut out = Vec::new();
    let mut cost = 0usize;
    for rp in &req.resource_profiles {
        let service = resource_service(rp);
        for sp in &rp.scope_profiles {
            let base = resource_labels(rp, sp);
            for p in &sp.profiles {
                for (service, samples) in split_by_service(&dict, p, &service)? {
                    let mut b = Builder::new(&dict, &mut cost, max_bytes);
                    b.charge(PROFILE_COST)?;
                    let (input, spans, kind) = b.build(p, &samples, now_ns)?;
                    let mut decoded = pprof::normalize(input, limits).map_err(|e| e.to_string())?;
                    // Normalisation keeps every sample that has a value, in order, and the
                    // builder left out the others: the span ids line up.
                    if decoded.profile.samples.len() != spans.len() {
                        return Err(format!(
                            "internal: {} samples normalised from {} converted",
                            decoded.profile.samples.len(),
                            spans.len()
                        ));
                    }
                    for (s, span) in decoded.profile.samples.iter_mut().zip(spans) {
                        s.span_id = span;
                    }
                    let mut l = Labels::from_pairs(base.iter().cloned());
                    l.set(labels::NAME, kind.name);
                    l.set(labels::DELTA, "false");
                    l.set("__otel__", "true");
                    l.set(labels::SERVICE_NAME, service);
                    out.push(Converted { labels: l, decoded });
                }
            }
        }
    }
    Ok(out)
}

/// The profile's samples grouped by service (sample `service.name`, else the resource's),
/// in the order each service first appears.
fn split_by_service<'p>(
    dict: &Dict<'_>,
    p: &'p otlp::Profile,
    resource_service: &str,
) -> Result<Vec<(String, Vec<&'p otlp::Sample>)>, String> {
    let mut groups: Vec<(String, Vec<&otlp::Sample>)> = Vec::new();
    for s in &p.samples {
        let mut service = None;
        for &a in &s.attribute_indices {
            let (k, v) = dict.attribute(a)?;
            if k == SERVICE_NAME_ATTR {
                service = string_value(v).filter(|s| !s.is_empty());
            }
        }
        let service = service.unwrap_or(resource_service);
        match groups.iter_mut().find(|(name, _)| name == service) {
            Some((_, v)) => v.push(s),
            None => groups.push((service.to_string(), vec![s])),
        }
    }
    Ok(groups)
}

/// Builds one pprof from some samples of an OTLP profile, interning the dictionary
/// entries they use (pprof ids are 1-based positions).
struct Builder<'d, 'c> {
    dict: &'d Dict<'d>,
    p: ProfileInput,
    strings: FxHashMap<String, i64>,
    mappings: FxHashMap<i32, u64>,
    locations: FxHashMap<i32, u64>,
    functions: FxHashMap<i32, u64>,
    cost: &'c mut usize,
    max_bytes: usize,
}

impl<'d, 'c> Builder<'d, 'c> {
    fn new(dict: &'d Dict<'d>, cost: &'c mut usize, max_bytes: usize) -> Self {
        let mut b = Builder {
            dict,
            p: ProfileInput::default(),
            strings: FxHashMap::default(),
            mappings: FxHashMap::default(),
            locations: FxHashMap::default(),
            functions: FxHashMap::default(),
            cost,
            max_bytes,
        };
        b.intern("");
        b
    }

    fn charge(&mut self, n: usize) -> Result<(), String> {
        *self.cost = self.cost.saturating_add(n);
        if self.max_bytes > 0 && *self.cost > self.max_bytes {
            return Err(format!(
                "the request would take more than {} bytes of memory converted \
                 (max_profile_size_bytes): its samples repeat too many frames for its size",
                self.max_bytes
            ));
        }
        Ok(())
    }

    fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.p.string_table.len() as i64;
        self.p.string_table.push(s.as_bytes().to_vec());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn intern_str(&mut self, strindex: i32) -> Result<i64, String> {
        let s = self.dict.string(strindex)?;
        Ok(self.intern(s))
    }

    fn mapping(&mut self, i: i32) -> Result<u64, String> {
        if let Some(&id) = self.mappings.get(&i) {
            return Ok(id);
        }
        // Mapping 0 is "no mapping" (an interpreted frame's), pprof's mapping id 0.
        let m = match entry(&self.dict.0.mapping_table, i, "mapping")? {
            Some(m) if i != 0 => m,
            _ => return Ok(0),
        };
        self.charge(SYMBOL_COST)?;
        // The build id of the highest ranked attribute that has one.
        let mut build_id: Option<(usize, &str)> = None;
        for &a in &m.attribute_indices {
            let (k, v) = self.dict.attribute(a)?;
            let rank = BUILD_ID_ATTRS.iter().position(|b| *b == k);
            if let (Some(r), Some(v)) = (rank, string_value(v)) {
                if build_id.is_none_or(|(best, _)| r < best) {
                    build_id = Some((r, v));
                }
            }
        }
        let build_id = build_id.map_or("", |(_, v)| v);
        let id = self.p.mapping.len() as u64 + 1;
        let mapping = pb::Mapping {
            id,
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            filename: self.intern_str(m.filename_strindex)?,
            build_id: self.intern(build_id),
            ..Default::default()
        };
        self.p.mapping.push(mapping);
        self.mappings.insert(i, id);
        Ok(id)
    }

    fn function(&mut self, i: i32) -> Result<u64, String> {
        if let Some(&id) = self.functions.get(&i) {
            return Ok(id);
        }
        let f = entry(&self.dict.0.function_table, i, "function")?.cloned().unwrap_or_default();
        self.charge(SYMBOL_COST)?;
        let id = self.p.function.len() as u64 + 1;
        let function = pb::Function {
            id,
            name: self.intern_str(f.name_strindex)?,
            system_name: self.intern_str(f.system_name_strindex)?,
            filename: self.intern_str(f.filename_strindex)?,
            start_line: f.start_line,
        };
        self.p.function.push(function);
        self.functions.insert(i, id);
        Ok(id)
    }

    fn location(&mut self, i: i32) -> Result<u64, String> {
        if let Some(&id) = self.locations.get(&i) {
            return Ok(id);
        }
        let l = entry(&self.dict.0.location_table, i, "location")?
            .ok_or_else(|| format!("a stack refers to location {i}, the zero location"))?;
        self.charge(SYMBOL_COST)?;
        let mapping_id = self.mapping(l.mapping_index)?;
        let mut lines = Vec::with_capacity(l.lines.len());
        for line in &l.lines {
            lines.push(pb::Line { function_id: self.function(line.function_index)?, line: line.line });
        }
        if mapping_id > 0 && !lines.is_empty() {
            self.p.mapping[mapping_id as usize - 1].has_functions = true;
        }
        let id = self.p.location.len() as u64 + 1;
        self.p.location.push(pb::Location { id, mapping_id, address: l.address, line: lines, is_folded: false });
        self.locations.insert(i, id);
        Ok(id)
    }

    /// The pprof of `samples` of `p`, the span id of each sample it kept (0: none), and
    /// the profile's kind.
    fn build(
        &mut self,
        p: &otlp::Profile,
        samples: &[&otlp::Sample],
        now_ns: i64,
    ) -> Result<(ProfileInput, Vec<u64>, ProfileKind), String> {
        let st = p.sample_type.as_ref().ok_or("a profile has no sample type")?;
        let kind =
            profile_kind(self.dict.value_type(Some(st))?, self.dict.value_type(p.period_type.as_ref())?, p.period);
        let (t, u) = kind.sample_type.clone();
        let (t, u) = (self.intern(&t), self.intern(&u));
        self.p.sample_type = vec![pb::ValueType { r#type: t, unit: u }];
        if let Some((pt, pu)) = &kind.period_type {
            let (pt, pu) = (self.intern(pt), self.intern(pu));
            self.p.period_type = Some(pb::ValueType { r#type: pt, unit: pu });
        }
        self.p.period = kind.period;
        self.p.time_nanos = match i64::try_from(p.time_unix_nano) {
            Ok(0) => now_ns,
            Ok(t) => t,
            Err(_) => return Err(format!("profile time {} is past the year 2262", p.time_unix_nano)),
        };
        self.p.duration_nanos = match i64::try_from(p.duration_nano) {
            Ok(0) => DEFAULT_DURATION_NS,
            Ok(d) => d,
            Err(_) => return Err(format!("profile duration {} ns is too long", p.duration_nano)),
        };
        let mut spans = Vec::with_capacity(samples.len());
        for s in samples {
            // A sample without values counts one occurrence per timestamp.
            let value = if s.values.is_empty() {
                s.timestamps_unix_nano.len() as i64
            } else {
                s.values.iter().fold(0i64, |a, v| a.saturating_add(*v))
            };
            let value = value.saturating_mul(kind.multiplier);
            if value == 0 {
                continue;
            }
            self.charge(SAMPLE_COST)?;
            let stack = entry(&self.dict.0.stack_table, s.stack_index, "stack")?;
            let all = stack.map_or(&[][..], |st| &st.location_indices[..]);
            // Leaf first: the root-most frames are kept, as normalisation would keep them.
            let kept = &all[all.len().saturating_sub(MAX_STACK_DEPTH)..];
            self.charge(FRAME_COST * kept.len())?;
            let mut location_id = Vec::with_capacity(kept.len());
            for &l in kept {
                location_id.push(self.location(l)?);
            }
            let mut label = Vec::new();
            for &a in &s.attribute_indices {
                let (k, v) = self.dict.attribute(a)?;
                if k == SERVICE_NAME_ATTR || k.is_empty() {
                    continue;
                }
                // Only string attributes become labels: numbers (thread ids, CPU numbers)
                // would make a series of every sample.
                if let Some(v) = string_value(v).filter(|v| !v.is_empty()) {
                    let (k, v) = (self.intern(k), self.intern(v));
                    label.push(pb::Label { key: k, str: v, ..Default::default() });
                }
            }
            spans.push(self.span_id(s.link_index)?);
            self.p.sample.push(pb::Sample { location_id, value: vec![value], label });
        }
        Ok((std::mem::take(&mut self.p), spans, kind))
    }

    /// The span id of a sample's link: its 8 bytes as kiln keeps span ids, 0 for none.
    fn span_id(&self, link: i32) -> Result<u64, String> {
        let Some(l) = entry(&self.dict.0.link_table, link, "link")? else {
            return Ok(0);
        };
        match l.span_id.len() {
            0 => Ok(0),
            // The id's bytes as its hex reads (`model::profile::parse_span_id`): a span
            // selector naming it in hex then finds it.
            8 => Ok(u64::from_le_bytes(l.span_id[..].try_into().expect("8 bytes"))),
            n => Err(format!("link {link} has a span id of {n} bytes; span ids are 8")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::collections::BTreeMap;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/otlp/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn request() -> ExportProfilesServiceRequest {
        ExportProfilesServiceRequest::decode(&fixture("otel-ebpf-profile.pb.bin")[..]).unwrap()
    }

    const LIMITS: pprof::PprofLimits = pprof::PprofLimits { max_samples: 16_000 };

    /// Collapsed stacks (root first, `;`-joined function names, or the address of a frame
    /// without lines) and their summed values, and the mappings their frames name.
    type Collapsed = (BTreeMap<String, i64>, std::collections::BTreeSet<String>);

    fn collapse_converted(c: &[Converted], service: &str, name: &str) -> Collapsed {
        let mut stacks = BTreeMap::new();
        let mut mappings = std::collections::BTreeSet::new();
        for c in
            c.iter().filter(|c| c.labels.get("service_name") == Some(service) && c.labels.get("__name__") == Some(name))
        {
            let p = &c.decoded.profile;
            for s in &p.samples {
                let mut frames = Vec::new();
                for &l in s.locations.iter().rev() {
                    let loc = &p.locations[l as usize];
                    if loc.mapping > 0 {
                        let m = &p.mappings[loc.mapping as usize - 1];
                        mappings.insert(format!("{}({})", p.string(m.filename), p.string(m.build_id)));
                    }
                    if loc.lines.is_empty() {
                        frames.push(format!("{:#x}", loc.address));
                    }
                    for line in loc.lines.iter().rev() {
                        frames.push(p.string(p.functions[line.function as usize].name).to_string());
                    }
                }
                *stacks.entry(frames.join(";")).or_default() += s.values[0];
            }
        }
        (stacks, mappings)
    }

    /// The same from Pyroscope's expected output: locations leaf first, each line
    /// `name[system name]@file:line`, mappings `start-limit@offset file(build id)`.
    fn collapse_expected(file: &str) -> (Collapsed, (String, String)) {
        let v: serde_json::Value = serde_json::from_slice(&fixture(file)).unwrap();
        let mut stacks = BTreeMap::new();
        let mut mappings = std::collections::BTreeSet::new();
        for s in v["samples"].as_array().unwrap() {
            let mut frames = Vec::new();
            for l in s["locations"].as_array().unwrap().iter().rev() {
                let m = l["mapping"].as_str().unwrap();
                mappings.insert(m.split_once(' ').unwrap().1.to_string());
                let lines = l["lines"].as_array().unwrap();
                if lines.is_empty() {
                    frames.push(l["address"].as_str().unwrap().to_string());
                }
                for line in lines.iter().rev() {
                    let line = line.as_str().unwrap();
                    let head = &line[..line.rfind('@').unwrap()];
                    frames.push(head[..head.rfind('[').unwrap()].to_string());
                }
            }
            let value: i64 = s["values"].as_str().unwrap().parse().unwrap();
            *stacks.entry(frames.join(";")).or_default() += value;
        }
        let st = &v["sample_types"][0];
        let st = (st["type"].as_str().unwrap().to_string(), st["unit"].as_str().unwrap().to_string());
        ((stacks, mappings), st)
    }

    #[test]
    fn ebpf_fixture_matches_pyroscope() {
        let converted = convert(&request(), LIMITS, 0, 1).unwrap();
        for (file, name) in
            [("otel-ebpf-profile-cpu.out.json", "process_cpu"), ("otel-ebpf-profile-offcpu.out.json", "off_cpu")]
        {
            let (want, (t, u)) = collapse_expected(file);
            let got = collapse_converted(&converted, "unknown_service", name);
            assert!(!want.0.is_empty());
            assert_eq!(got, want, "{file}");
            for c in converted.iter().filter(|c| c.labels.get("__name__") == Some(name)) {
                let p = &c.decoded.profile;
                assert_eq!(
                    (p.string(p.sample_types[0].r#type), p.string(p.sample_types[0].unit)),
                    (t.as_str(), u.as_str())
                );
            }
        }
    }

    #[test]
    fn ebpf_fixture_labels() {
        let converted = convert(&request(), LIMITS, 0, 1).unwrap();
        // 82 profiles, each of one service's samples.
        assert_eq!(converted.len(), 82);
        let services: std::collections::BTreeSet<&str> =
            converted.iter().filter_map(|c| c.labels.get("service_name")).collect();
        assert_eq!(
            services.into_iter().collect::<Vec<_>>(),
            [
                "unknown_service",
                "unknown_service:containerd",
                "unknown_service:kwin_wayland",
                "unknown_service:xdg-desktop-portal"
            ]
        );
        for c in &converted {
            assert_eq!(c.labels.get("__delta__"), Some("false"));
            assert_eq!(c.labels.get("__otel__"), Some("true"));
            assert!(c.labels.get("process.pid").is_some_and(|p| p.parse::<u64>().is_ok()), "{}", c.labels);
            assert!(c.decoded.profile.duration_nanos > 0);
            // Thread names are string sample attributes: series labels. Thread ids and CPU
            // numbers are not.
            for (l, _) in &c.decoded.groups {
                assert!(l.get("thread.name").is_some(), "{l}");
                assert!(l.get("thread.id").is_none() && l.get("cpu.logical_number").is_none(), "{l}");
            }
        }
        let containerd =
            converted.iter().find(|c| c.labels.get("service_name") == Some("unknown_service:containerd")).unwrap();
        assert_eq!(containerd.labels.get("process.executable.path"), Some("/usr/bin/containerd"));
        // Unsymbolized native frames keep their address and mapping.
        let xdg = converted
            .iter()
            .find(|c| c.labels.get("service_name") == Some("unknown_service:xdg-desktop-portal"))
            .unwrap();
        let p = &xdg.decoded.profile;
        let bare = p.locations.iter().find(|l| l.lines.is_empty()).expect("an unsymbolized frame");
        assert!(bare.address > 0 && bare.mapping > 0);
    }

    #[test]
    fn json_and_protobuf_agree() {
        let json: ExportProfilesServiceRequest = serde_json::from_slice(&fixture("otel-ebpf-profile.pb.json")).unwrap();
        assert_eq!(json, request());
    }

    #[test]
    fn otlp_json_ids_are_hex_and_unknown_fields_ignored() {
        let json = br#"{"resourceProfiles":[{"resource":{"attributes":[],"entityRefs":[{"type":"host"}]}}],
            "dictionary":{"linkTable":[{},{"traceId":"000102030405060708090a0b0c0d0e0f","spanId":"00000000000001Ff"}]}}"#;
        let req: ExportProfilesServiceRequest = serde_json::from_slice(json).unwrap();
        let link = &req.dictionary.as_ref().unwrap().link_table[1];
        assert_eq!(link.trace_id, (0u8..16).collect::<Vec<_>>());
        assert_eq!(link.span_id, vec![0, 0, 0, 0, 0, 0, 1, 0xff]);
        let back = serde_json::to_string(link).unwrap();
        assert_eq!(back, r#"{"traceId":"000102030405060708090a0b0c0d0e0f","spanId":"00000000000001ff"}"#);
        for bad in [r#"{"spanId":"abc"}"#, r#"{"spanId":"zz"}"#] {
            assert!(serde_json::from_str::<otlp::Link>(bad).is_err(), "{bad}");
        }
    }

    fn small() -> ExportProfilesServiceRequest {
        let s = |v: &str| v.to_string();
        let dict = otlp::ProfilesDictionary {
            string_table: vec![
                s(""),
                s("samples"),
                s("count"),
                s("cpu"),
                s("nanoseconds"),
                s("main"),
                s("service.name"),
                s("svc"),
            ],
            function_table: vec![Default::default(), otlp::Function { name_strindex: 5, ..Default::default() }],
            location_table: vec![
                Default::default(),
                otlp::Location {
                    lines: vec![otlp::Line { function_index: 1, ..Default::default() }],
                    ..Default::default()
                },
            ],
            stack_table: vec![Default::default(), otlp::Stack { location_indices: vec![1] }],
            link_table: vec![
                Default::default(),
                otlp::Link { trace_id: vec![1; 16], span_id: vec![0, 0, 0, 0, 0, 0, 1, 2] },
            ],
            attribute_table: vec![
                Default::default(),
                otlp::KeyValueAndUnit {
                    key_strindex: 6,
                    value: Some(AnyValue { value: Some(Value::StringValue(s("svc"))) }),
                    unit_strindex: 0,
                },
            ],
            ..Default::default()
        };
        let sample = |attrs: Vec<i32>, link| otlp::Sample {
            stack_index: 1,
            attribute_indices: attrs,
            link_index: link,
            values: vec![2],
            ..Default::default()
        };
        let profile = otlp::Profile {
            sample_type: Some(otlp::ValueType { type_strindex: 1, unit_strindex: 2 }),
            period_type: Some(otlp::ValueType { type_strindex: 3, unit_strindex: 4 }),
            period: 1000,
            samples: vec![sample(vec![1], 1), sample(vec![], 0)],
            ..Default::default()
        };
        ExportProfilesServiceRequest {
            resource_profiles: vec![otlp::ResourceProfiles {
                scope_profiles: vec![otlp::ScopeProfiles { profiles: vec![profile], ..Default::default() }],
                ..Default::default()
            }],
            dictionary: Some(dict),
        }
    }

    #[test]
    fn services_split_and_span_ids() {
        let c = convert(&small(), LIMITS, 0, 77).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].labels.get("service_name"), Some("svc"));
        assert_eq!(c[1].labels.get("service_name"), Some("unknown_service"));
        let p = &c[0].decoded.profile;
        // samples/count at a cpu period: CPU nanoseconds.
        assert_eq!(p.samples[0].values, vec![2000]);
        assert_eq!(kiln_shards::model::profile::format_span_id(p.samples[0].span_id), "0000000000000102");
        assert_eq!(c[1].decoded.profile.samples[0].span_id, 0);
        assert_eq!(p.time_nanos, 77);
        assert_eq!(p.duration_nanos, DEFAULT_DURATION_NS);
        // The span id is never a label.
        assert!(c[0].decoded.groups.iter().all(|(l, _)| l.is_empty()));
    }

    #[test]
    fn invalid_requests_are_refused() {
        let mut r = small();
        r.dictionary = None;
        assert_eq!(convert(&r, LIMITS, 0, 1).err().unwrap(), "missing profile metadata dictionary");
        let mut r = small();
        r.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].stack_index = 9;
        assert!(convert(&r, LIMITS, 0, 1).err().unwrap().contains("stack index 9 is out of range"));
        let mut r = small();
        r.dictionary.as_mut().unwrap().location_table[1].lines[0].function_index = -1;
        assert!(convert(&r, LIMITS, 0, 1).err().unwrap().contains("function index -1"));
        let mut r = small();
        r.resource_profiles[0].scope_profiles[0].profiles[0].sample_type = None;
        assert!(convert(&r, LIMITS, 0, 1).err().unwrap().contains("no sample type"));
        let mut r = small();
        r.dictionary.as_mut().unwrap().link_table[1].span_id = vec![1, 2, 3];
        assert!(convert(&r, LIMITS, 0, 1).err().unwrap().contains("span id of 3 bytes"));
        // v1.8's layout numbered Sample.values 2 and attribute_indices 3: its sample's values
        // decode as attribute indices here (and a v1.8 link index as a type error).
        let v18_sample = [0x08, 0x01, 0x12, 0x04, 0x80, 0xe1, 0xeb, 0x17];
        let v18 = otlp::Sample::decode(&v18_sample[..]).unwrap();
        assert_eq!((v18.attribute_indices.as_slice(), v18.values.len()), (&[50_000_000][..], 0));
        let mut r = small();
        r.resource_profiles[0].scope_profiles[0].profiles[0].samples = vec![v18];
        let e = convert(&r, LIMITS, 0, 1).err().unwrap();
        assert!(e.contains("attribute index 50000000 is out of range"), "{e}");
        assert!(otlp::Sample::decode(&[0x1a, 0x01, 0x01][..]).is_err(), "v1.8 attribute indices as a link index");
        // An index into a table it does not fit.
        let mut r = small();
        r.resource_profiles[0].scope_profiles[0].profiles[0].sample_type =
            Some(otlp::ValueType { type_strindex: 40, unit_strindex: 2 });
        assert!(convert(&r, LIMITS, 0, 1).err().unwrap().contains("string index 40"));
    }

    #[test]
    fn repeated_deep_stacks_are_bounded() {
        let mut r = small();
        let dict = r.dictionary.as_mut().unwrap();
        dict.stack_table[1].location_indices = vec![1; 900];
        let p = &mut r.resource_profiles[0].scope_profiles[0].profiles[0];
        p.samples = (0..10_000).map(|_| p.samples[1].clone()).collect();
        let e = convert(&r, LIMITS, 1 << 20, 1).err().unwrap();
        assert!(e.contains("max_profile_size_bytes"), "{e}");
    }
}
