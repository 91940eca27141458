//! `POST /ingest` (alias `/pyroscope/ingest`): Pyroscope's legacy ingest API, as the Go, Ruby,
//! Python, .NET and older Node SDKs and many scripts use it. See shared/api.md §2.2.
use super::folded::{build_profile, folded_type, parse_folded, parse_lines};
use super::{accept, discard, metrics, multipart, offload, pprof, speedscope, trie, Accepted, Distributor};
use crate::service::body::{http_error, RespBody, Response};
use crate::service::{Code, Req, RpcError};
use crate::timeparse::{now_ns, parse_time_ns};
use http::StatusCode;
use kiln_io::compress;
use kiln_proto::kiln::v1::ProfileInput;
use kiln_shards::model::ids::TenantId;
use kiln_shards::model::labels::{self, Labels};
use rustc_hash::FxHashMap;
use std::rc::Rc;

/// A parsed `name` parameter: `app.name{k=v,...}`.
#[derive(Debug, PartialEq)]
pub struct AppName {
    pub app: String,
    pub labels: Vec<(String, String)>,
}

pub fn parse_name(name: &str) -> Result<AppName, String> {
    let (app, rest) = match name.find('{') {
        Some(i) => (name[..i].trim(), Some(&name[i + 1..])),
        None => (name.trim(), None),
    };
    let mut app = app.to_string();
    let mut labels = Vec::new();
    if let Some(rest) = rest {
        let body = match rest.find('}') {
            Some(i) => &rest[..i],
            None => rest,
        };
        for pair in body.split(',') {
            if pair.trim().is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("name: label {pair:?} is not key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                return Err(format!("name: invalid label name {k:?}"));
            }
            if k == labels::NAME {
                app = v.to_string();
                continue;
            }
            labels.push((k.to_string(), v.to_string()));
        }
    }
    if app.is_empty() {
        return Err("name: service name is required".into());
    }
    if !app.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c)) {
        return Err(format!("name: invalid service name {app:?}"));
    }
    // Reserved labels cannot be set through a name, except the session id.
    labels.retain(|(k, _)| !k.starts_with("__") || k == "__session_id__");
    Ok(AppName { app, labels })
}

fn error(status: StatusCode, msg: impl AsRef<str>) -> Response {
    http_error(status, msg.as_ref())
}

pub(super) fn rpc_status(e: &RpcError, validation_status: StatusCode) -> StatusCode {
    match e.code {
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::InvalidArgument => validation_status,
        c => c.http_status(),
    }
}

pub async fn handle(dist: &Rc<Distributor>, r: &Req) -> Response {
    let tenant = match dist.write_tenant(&r.headers) {
        Ok(t) => t,
        Err(e) => return error(e.code.http_status(), e.message),
    };
    metrics::add(&dist.metrics().received_bytes, r.body.len() as u64);
    match ingest(dist, &tenant, r).await {
        Ok(()) => http::Response::builder().status(200).body(RespBody::empty()).expect("valid response"),
        Err(refused) => {
            metrics::add(&dist.metrics().rejected_profiles, 1);
            dist.discard(&tenant, refused.reason, 1, r.body.len(), &refused.message);
            error(refused.status, refused.message)
        }
    }
}

/// A refused `/ingest`: its status, message, and why, as Pyroscope's discard `reason`.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    pub reason: &'static str,
}

impl From<(StatusCode, String)> for Refusal {
    /// A refusal of the request itself: its reason by its status.
    fn from((status, message): (StatusCode, String)) -> Refusal {
        let reason = match status.as_u16() {
            413 => discard::reason::BODY_SIZE_LIMIT_EXCEEDED,
            422 => discard::reason::MALFORMED_PROFILE,
            429 => discard::reason::RATE_LIMITED,
            400 => discard::reason::INVALID_LABELS,
            _ => discard::reason::UNKNOWN,
        };
        Refusal { status, message, reason }
    }
}

impl Refusal {
    /// A refusal from the push path (`validation`: the status of its invalid_argument),
    /// with the reason it carries.
    pub fn rpc(e: RpcError, validation: StatusCode) -> Refusal {
        let status = rpc_status(&e, validation);
        let reason = e.reason.unwrap_or_else(|| Refusal::from((status, String::new())).reason);
        Refusal { status, message: e.message, reason }
    }
}

async fn ingest(dist: &Rc<Distributor>, tenant: &TenantId, r: &Req) -> IngestResult {
    let params = r.params();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(name) = get("name") else {
        return Err((StatusCode::BAD_REQUEST, "name: service name is required".to_string()).into());
    };
    let name = parse_name(name).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    let now = now_ns();
    let time = |k: &str| get(k).map_or(Ok(now), |v| parse_time_ns(v, now).map_err(|e| format!("{k}: {e}")));
    let (from, until) = match (time("from"), time("until")) {
        (Ok(from), Ok(until)) => (from, until),
        (Err(e), _) | (_, Err(e)) => return Err((StatusCode::BAD_REQUEST, e).into()),
    };
    if from > until {
        return Err((StatusCode::BAD_REQUEST, format!("from ({from}) is after until ({until})")).into());
    }
    let sample_rate = get("sampleRate").and_then(|v| v.parse::<i64>().ok()).filter(|v| *v >= 0).unwrap_or(100);
    let spy = get("spyName").unwrap_or("");
    let content_type = r.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = get("format").unwrap_or("");

    // Honour Content-Encoding: gzip for the whole body; payloads inside are sniffed too.
    let body: bytes::Bytes = if r.gzip_encoded() && compress::is_gzip(&r.body) {
        match compress::gunzip_bounded(&r.body, inflated_body_limit(dist.limits_for(tenant))) {
            Ok(b) => b.into(),
            Err(compress::InflateError::TooLarge { limit }) => {
                let msg = format!("request body too large: inflated size exceeds {limit} bytes");
                return Err((StatusCode::PAYLOAD_TOO_LARGE, msg).into());
            }
            Err(e) => {
                let msg = format!("request body: {e}");
                return Err(Refusal {
                    status: StatusCode::BAD_REQUEST,
                    message: msg,
                    reason: discard::reason::MALFORMED_PROFILE,
                });
            }
        }
    } else {
        r.body.clone()
    };
    let text = TextRequest { tenant, name: &name, spy, from, sample_rate };
    match format {
        "trie" | "tree" | "" if binary_kind(format, content_type).is_some() => {
            let kind = binary_kind(format, content_type).expect("just matched");
            ingest_text(dist, &text, kind, &body).await
        }
        "pprof" => ingest_pprof(dist, tenant, &name, spy, from, body.clone(), None).await,
        "jfr" => {
            let req =
                super::jfr::ingest::Request { name: &name, spy, from, until, sample_rate, content_type, body: &body };
            super::jfr::ingest::ingest(dist, tenant, req).await
        }
        "speedscope" => ingest_speedscope(dist, &text, &body).await,
        "" if content_type.to_ascii_lowercase().contains("multipart/form-data") => {
            ingest_multipart(dist, tenant, &name, spy, from, content_type, &body).await
        }
        "" | "folded" | "collapsed" | "groups" | "lines" => {
            let kind = if format == "lines" { TextKind::Lines } else { TextKind::Folded };
            ingest_text(dist, &text, kind, &body).await
        }
        other => Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            message: format!("unknown format {other:?}: use pprof, jfr, folded, lines, speedscope, trie or tree"),
            reason: discard::reason::UNKNOWN,
        }),
    }
}

pub(super) type IngestResult = Result<(), Refusal>;

/// The largest `sample_type_config` part taken. SDKs send a few hundred bytes; a JSON value
/// costs up to some 30 times its text in memory, so this bounds what parsing it can cost.
pub const MAX_SAMPLE_TYPE_CONFIG_BYTES: usize = 64 * 1024;

/// Room for a multipart body's headers and boundaries beside its parts.
const MULTIPART_ENVELOPE_BYTES: usize = 64 * 1024;

/// What a whole-body `Content-Encoding: gzip` may inflate to. An /ingest body carries one
/// profile (at most the profile size limit) and, in a multipart body, a small config: a body
/// that inflates past that could only be refused later, so it is refused before it is
/// inflated further. Without a profile size limit, the body limit bounds it.
fn inflated_body_limit(limits: &crate::config::Limits) -> usize {
    let body = if limits.body_limit_bytes() > 0 { limits.body_limit_bytes() } else { usize::MAX / 2 };
    if limits.max_profile_size_bytes == 0 {
        return body;
    }
    let one_profile = limits.max_profile_size_bytes + MAX_SAMPLE_TYPE_CONFIG_BYTES + MULTIPART_ENVELOPE_BYTES;
    one_profile.min(body).max(1)
}

async fn ingest_multipart(
    dist: &Rc<Distributor>,
    tenant: &TenantId,
    name: &AppName,
    spy: &str,
    from: i64,
    content_type: &str,
    body: &bytes::Bytes,
) -> IngestResult {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let boundary = multipart::boundary(content_type).ok_or_else(|| bad("multipart body without a boundary".into()))?;
    if boundary.len() > multipart::MAX_BOUNDARY_LEN {
        return Err(bad(format!(
            "the multipart boundary is {} characters long; RFC 2046 allows at most {}",
            boundary.len(),
            multipart::MAX_BOUNDARY_LEN
        ))
        .into());
    }
    let parts = multipart::parse(body, &boundary).map_err(|e| bad(format!("malformed multipart body: {e}")))?;
    if parts.iter().any(|p| p.name == "prev_profile") {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported client version: prev_profile (cumulative profiles) is not supported; upgrade the SDK"
                .to_string(),
        )
            .into());
    }
    let profile = parts
        .iter()
        .find(|p| p.name == "profile")
        .ok_or_else(|| bad("multipart body has no \"profile\" part".into()))?;
    let config =
        match parts.iter().find(|p| p.name == "sample_type_config") {
            Some(p) if p.data.len() > MAX_SAMPLE_TYPE_CONFIG_BYTES => {
                return Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "sample_type_config is {} bytes; kiln takes at most {MAX_SAMPLE_TYPE_CONFIG_BYTES}",
                        p.data.len()
                    ),
                )
                    .into())
            }
            Some(p) => Some(serde_json::from_slice::<serde_json::Value>(p.data).map_err(|e| {
                (StatusCode::UNPROCESSABLE_ENTITY, format!("sample_type_config is not valid JSON: {e}"))
            })?),
            None => None,
        };
    // The part as a view of the body (the parser hands out sub-slices of it): no copy.
    ingest_pprof(dist, tenant, name, spy, from, body.slice_ref(profile.data), config.as_ref()).await
}

/// Built-in display names Pyroscope applies when the SDK sends no `sample_type_config`.
fn default_display_name(sample_type: &str) -> Option<&'static str> {
    match sample_type {
        "samples" => Some("cpu"),
        "goroutine" => Some("goroutines"),
        "contentions" => Some("mutex_count"),
        "delay" => Some("mutex_duration"),
        _ => None,
    }
}

/// `__name__` of a pprof sent to /ingest, from its sample types (Pyroscope's rules).
pub fn derive_profile_name(sample_types: &[String], config: Option<&serde_json::Value>) -> String {
    if sample_types.iter().any(|t| t == "wall") {
        return "wall".into();
    }
    let mut last = String::new();
    for t in sample_types {
        let display = config
            .and_then(|c| c.get(t))
            .and_then(|c| c.get("display-name"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .or_else(|| default_display_name(t).map(str::to_string))
            .unwrap_or_else(|| t.clone());
        if display.contains("cpu") {
            return "process_cpu".into();
        }
        if display.contains("alloc_") || display.contains("inuse_") || display == "space" || display == "objects" {
            return "memory".into();
        }
        if display.contains("mutex_") {
            return "mutex".into();
        }
        if display.contains("block_") {
            return "block".into();
        }
        if display.contains("goroutines") {
            return "goroutines".into();
        }
        last = display;
    }
    last
}

/// Whether the pprof comes from a .NET profiler (by its spy name or its sample type config).
fn is_dotnet(spy: &str, config: Option<&serde_json::Value>) -> bool {
    spy == "dotnetspy" || (spy.is_empty() || spy == "unknown") && config.is_some_and(|c| c.get("inuse-space").is_some())
}

/// Whether [`apply_spy_fixes`] may change a pprof from this spy.
fn spy_fixes_apply(spy: &str, config: Option<&serde_json::Value>) -> bool {
    matches!(spy, "pyspy" | "rbspy" | "scripting") || is_dotnet(spy, config)
}

/// Spy-specific repairs Pyroscope applies to /ingest pprofs before validation.
///
/// The pyspy/rbspy rewrite names each function `file function`. Those derived strings are
/// made once per distinct (file, function) pair and only as far as normalisation keeps them
/// (its last `MAX_STRING_LEN` bytes), and what they add is charged against
/// `derived_budget` (what the profile size limit leaves): many functions sharing one long
/// file and function name used to cost a copy each, far more than the request.
fn apply_spy_fixes(
    p: &mut ProfileInput,
    spy: &str,
    config: Option<&serde_json::Value>,
    derived_budget: usize,
) -> Result<(), String> {
    match spy {
        "pyspy" | "rbspy" | "scripting" => {
            let mut made: FxHashMap<(i64, i64), i64> = FxHashMap::default();
            let mut derived = 0usize;
            for f in &mut p.function {
                if let Some(&name) = made.get(&(f.filename, f.name)) {
                    f.name = name;
                    continue;
                }
                let text = |i: i64| usize::try_from(i).ok().and_then(|i| p.string_table.get(i)).map_or(&[][..], |s| s);
                let (file, func) = (text(f.filename), text(f.name));
                if file.is_empty() || (spy == "pyspy" && file.starts_with(b"/")) {
                    continue;
                }
                let n = pprof::concat_kept(&[file, b" ", func]);
                derived += n.len();
                if derived > derived_budget {
                    return Err(format!(
                        "the profile exceeds the size limit with the function names derived for {spy} \
                         (max_profile_size_bytes: {derived} more bytes than the {derived_budget} left by the limit)"
                    ));
                }
                p.string_table.push(n);
                let name = p.string_table.len() as i64 - 1;
                made.insert((f.filename, f.name), name);
                f.name = name;
            }
        }
        _ => {}
    }
    if is_dotnet(spy, config) {
        if !p.function.is_empty() && p.function.iter().all(|f| f.id == 0) && p.function.len() == p.location.len() {
            for (f, l) in p.function.iter_mut().zip(p.location.iter()) {
                f.id = l.id;
            }
        }
        for st in &p.sample_type {
            if let Some(s) = p.string_table.get_mut(st.r#type as usize) {
                for b in s.iter_mut() {
                    if *b == b'-' {
                        *b = b'_';
                    }
                }
            }
        }
    }
    Ok(())
}

/// The pprof's sample type names as sent (lossily decoded).
fn sample_type_names(p: &ProfileInput) -> Vec<String> {
    p.sample_type
        .iter()
        .map(|st| String::from_utf8_lossy(p.string_table.get(st.r#type as usize).map_or(&[][..], |v| v)).into_owned())
        .collect()
}

/// Decodes, fixes and normalises an /ingest pprof: the profile and its `__name__`.
/// `derived_budget`: how many bytes the spy fixes may add (see [`apply_spy_fixes`]).
pub fn decode_ingest_pprof(
    bytes: &[u8],
    spy: &str,
    config: Option<&serde_json::Value>,
    from: i64,
    limits: pprof::PprofLimits,
    derived_budget: usize,
) -> Result<(pprof::Decoded, String), String> {
    // A zero or 1970 profile time becomes the request's `from`.
    let time_is_bogus = |t: i64| t == 0 || t < 365 * 86400 * 1_000_000_000;
    if spy_fixes_apply(spy, config) {
        // The spy fixes edit the pprof as decoded: the prost path.
        let mut input = pprof::decode(bytes).map_err(|e| e.to_string())?;
        apply_spy_fixes(&mut input, spy, config, derived_budget)?;
        let profile_name = derive_profile_name(&sample_type_names(&input), config);
        if time_is_bogus(input.time_nanos) {
            input.time_nanos = from;
        }
        return Ok((pprof::normalize(input, limits).map_err(|e| e.to_string())?, profile_name));
    }
    let mut decoded = pprof::decode_and_normalize(bytes, limits).map_err(|e| e.to_string())?;
    // The time is not validated: setting it after normalisation is the same.
    if time_is_bogus(decoded.profile.time_nanos) {
        decoded.profile.time_nanos = from;
    }
    let p = &decoded.profile;
    let mut type_names: Vec<String> = p.sample_types.iter().map(|st| p.string(st.r#type).to_string()).collect();
    if type_names.iter().any(|n| n.len() + 4 > pprof::MAX_STRING_LEN) {
        // Maybe cut to its suffix by normalisation: name the profile after the string as sent.
        type_names = sample_type_names(&pprof::decode(bytes).map_err(|e| e.to_string())?);
    }
    let profile_name = derive_profile_name(&type_names, config);
    Ok((decoded, profile_name))
}

async fn ingest_pprof(
    dist: &Rc<Distributor>,
    tenant: &TenantId,
    name: &AppName,
    spy: &str,
    from: i64,
    raw: bytes::Bytes,
    config: Option<&serde_json::Value>,
) -> IngestResult {
    let limits = dist.limits_for(tenant).clone();
    let unproc = |m: String| (StatusCode::UNPROCESSABLE_ENTITY, m);
    let max = if limits.max_profile_size_bytes > 0 { limits.max_profile_size_bytes } else { usize::MAX / 2 };
    let pprof_limits = pprof::PprofLimits { max_samples: limits.max_profile_stacktrace_samples };
    // Strings the spy fixes derive count against the profile size limit (or, with that limit
    // off, the body limit) as if they had been sent.
    let size_limit =
        if limits.max_profile_size_bytes > 0 { limits.max_profile_size_bytes } else { limits.body_limit_bytes() };
    // A large profile is inflated and decoded off this core, which serves other requests
    // meanwhile (a gzip pprof inflates to 2–5 times its size; twice is the estimate).
    let cost = if compress::is_gzip(&raw) { raw.len().saturating_mul(2) } else { raw.len() };
    let (spy_owned, config_owned) = (spy.to_string(), config.cloned());
    let (size, (decoded, profile_name)) = offload::run(cost, move || {
        let bytes = compress::maybe_gunzip(&raw, max).map_err(|e| format!("profile: {e}"))?;
        let derived_budget = if size_limit > 0 { size_limit.saturating_sub(bytes.len()) } else { usize::MAX };
        let d = decode_ingest_pprof(&bytes, &spy_owned, config_owned.as_ref(), from, pprof_limits, derived_budget)?;
        Ok::<_, String>((bytes.len(), d))
    })
    .await
    .unwrap_or_else(|offload::Panicked| Err("decoding the profile failed unexpectedly".into()))
    .map_err(unproc)?;
    metrics::add(&dist.metrics().decompressed_bytes, size as u64);
    let mut base = Labels::from_pairs(name.labels.iter().cloned());
    base.set(labels::NAME, profile_name);
    base.set("pyroscope_spy", if spy.is_empty() { "unknown" } else { spy });
    if base.get(labels::SERVICE_NAME).is_none() {
        base.set(labels::SERVICE_NAME, name.app.clone());
    }
    let acc =
        accept(&base, decoded, &limits, now_ns()).map_err(|e| Refusal::rpc(e, StatusCode::UNPROCESSABLE_ENTITY))?;
    push_all(dist, tenant, size, vec![acc], StatusCode::UNPROCESSABLE_ENTITY).await
}

/// What a folded-family body holds (shared/api.md §2.2): all become (stack, value) pairs
/// built into one profile as folded text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Folded,
    Lines,
    Trie,
    Tree,
}

/// `format=trie|tree`, or with no format a `binary/octet-stream+trie|+tree` content type.
fn binary_kind(format: &str, content_type: &str) -> Option<TextKind> {
    let ct = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match (format, ct.as_str()) {
        ("trie", _) | ("", "binary/octet-stream+trie") => Some(TextKind::Trie),
        ("tree", _) | ("", "binary/octet-stream+tree") => Some(TextKind::Tree),
        _ => None,
    }
}

/// What every folded-family format of one request shares: who and what it is.
struct TextRequest<'a> {
    tenant: &'a TenantId,
    name: &'a AppName,
    spy: &'a str,
    from: i64,
    sample_rate: i64,
}

/// What a folded-family body may expand to (stacks built from a trie's or speedscope's
/// paths): the profile size limit, or without one the body limit (0: no bound).
fn max_stack_bytes(limits: &crate::config::Limits) -> usize {
    if limits.max_profile_size_bytes > 0 {
        limits.max_profile_size_bytes
    } else {
        limits.body_limit_bytes()
    }
}

/// A folded-family profile accepted: built from its stacks under the type that `app` (the
/// app name, its last `.` component the type suffix) and the sample rate give, labelled as
/// Pyroscope labels it, with `extra` labels. `text_len`: the body's size, what the built
/// profile may cost a multiple of.
fn accept_stacks(
    req: &TextRequest<'_>,
    limits: &crate::config::Limits,
    app: &str,
    stacks: &[(&str, i64)],
    extra: &[(&str, &str)],
    text_len: usize,
) -> Result<Accepted, Refusal> {
    let (app, suffix) = match app.rsplit_once('.') {
        Some((a, s)) => (a.to_string(), s.to_string()),
        None => (app.to_string(), "cpu".to_string()),
    };
    let mut t = folded_type(&suffix, req.sample_rate).ok_or_else(|| {
        (StatusCode::BAD_REQUEST, format!("unknown profile type: {suffix:?} (the app name's last .suffix)"))
    })?;
    // At a rate past 1 GHz (speedscope's nanoseconds) the period is under a nanosecond:
    // each value is converted exactly instead of through a period of 0.
    let exact = t.period_type.is_some() && req.sample_rate > 1_000_000_000;
    let converted: Vec<(&str, i64)>;
    let stacks = if exact {
        t.multiplier = 1;
        let ns = |v: i64| (i128::from(v) * 1_000_000_000 / i128::from(req.sample_rate)).min(i64::MAX.into()) as i64;
        converted = stacks.iter().map(|&(s, v)| (s, ns(v))).collect();
        &converted[..]
    } else {
        stacks
    };
    // As a pprof's: the built profile may take some times the text, no more.
    let max_bytes = super::folded::built_limit(text_len, limits.max_profile_size_bytes);
    let profile = build_profile(stacks, &t, req.from, max_bytes).map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let mut base = Labels::from_pairs(req.name.labels.iter().cloned());
    for (k, v) in extra {
        base.set(k, *v);
    }
    base.set(labels::NAME, t.name);
    if !req.spy.is_empty() {
        base.set("pyroscope_spy", req.spy);
    }
    if base.get(labels::SERVICE_NAME).is_some() {
        base.set("app_name", app);
    } else {
        base.set(labels::SERVICE_NAME, app);
    }
    let n = profile.samples.len() as u32;
    let decoded = pprof::Decoded { profile, groups: vec![(Labels::default(), (0..n).collect())] };
    accept(&base, decoded, limits, now_ns()).map_err(|e| Refusal::rpc(e, StatusCode::BAD_REQUEST))
}

/// Inflates a folded-family body (gzip is sniffed) within the profile size limit.
fn inflate_text<'b>(
    limits: &crate::config::Limits,
    body: &'b [u8],
) -> Result<std::borrow::Cow<'b, [u8]>, (StatusCode, String)> {
    let max = if limits.max_profile_size_bytes > 0 { limits.max_profile_size_bytes } else { usize::MAX / 2 };
    compress::maybe_gunzip(body, max).map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, format!("body: {e}")))
}

/// Pyroscope silently drops span-profile uploads of the folded-family formats.
fn is_span_profile(name: &AppName) -> bool {
    name.labels.iter().any(|(k, v)| k == "profile_id" && !v.is_empty())
}

async fn ingest_text(dist: &Rc<Distributor>, req: &TextRequest<'_>, kind: TextKind, body: &[u8]) -> IngestResult {
    let limits = dist.limits_for(req.tenant).clone();
    if is_span_profile(req.name) {
        return Ok(());
    }
    let bytes = inflate_text(&limits, body)?;
    let unproc = |e: String| (StatusCode::UNPROCESSABLE_ENTITY, e);
    let owned: Vec<(String, i64)>;
    let stacks: Vec<(&str, i64)> = match kind {
        TextKind::Folded | TextKind::Lines => {
            let text = std::str::from_utf8(&bytes).map_err(|_| unproc("body is not valid UTF-8".to_string()))?;
            if kind == TextKind::Lines {
                parse_lines(text)
            } else {
                parse_folded(text).map_err(unproc)?
            }
        }
        TextKind::Trie | TextKind::Tree => {
            let layout = if kind == TextKind::Trie { trie::Layout::Trie } else { trie::Layout::Tree };
            owned = trie::parse(layout, &bytes, max_stack_bytes(&limits)).map_err(unproc)?;
            owned.iter().map(|(s, v)| (s.as_str(), *v)).collect()
        }
    };
    let acc = accept_stacks(req, &limits, &req.name.app, &stacks, &[], bytes.len())?;
    push_all(dist, req.tenant, bytes.len(), vec![acc], StatusCode::BAD_REQUEST).await
}

/// A speedscope file: one profile per merged speedscope profile, labelled `profile_name`;
/// with more than one, each app name gets its unit as the type suffix. All are pushed
/// together, all or nothing.
async fn ingest_speedscope(dist: &Rc<Distributor>, req: &TextRequest<'_>, body: &[u8]) -> IngestResult {
    let limits = dist.limits_for(req.tenant).clone();
    if is_span_profile(req.name) {
        return Ok(());
    }
    let bytes = inflate_text(&limits, body)?;
    let profiles =
        speedscope::parse(&bytes, max_stack_bytes(&limits)).map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let mut batch = Vec::with_capacity(profiles.len());
    for p in &profiles {
        let app = if profiles.len() > 1 { format!("{}.{}", req.name.app, p.unit) } else { req.name.app.clone() };
        let sample_rate = if req.sample_rate == 100 { speedscope::unit_sample_rate(&p.unit) } else { req.sample_rate };
        let r = TextRequest { sample_rate, ..*req };
        let stacks: Vec<(&str, i64)> = p.stacks.iter().map(|(s, v)| (s.as_str(), *v)).collect();
        // Each profile's share of the body bounds what it may cost built.
        let share = bytes.len() / profiles.len().max(1);
        batch.push(accept_stacks(&r, &limits, &app, &stacks, &[("profile_name", &p.name)], share)?);
    }
    if batch.is_empty() {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, "the speedscope file has no profiles".to_string()).into());
    }
    push_all(dist, req.tenant, bytes.len(), batch, StatusCode::BAD_REQUEST).await
}

/// Rate-limits `bytes` and pushes `batch` (the profiles of one request) all or nothing.
pub(super) async fn push_all(
    dist: &Rc<Distributor>,
    tenant: &TenantId,
    bytes: usize,
    batch: Vec<Accepted>,
    validation: StatusCode,
) -> IngestResult {
    dist.rate_limit(tenant, bytes, now_ns()).map_err(|e| Refusal::rpc(e, validation))?;
    let received: Vec<(String, usize)> = batch
        .iter()
        .map(|a| {
            let ty = a.groups.first().and_then(|g| g.labels.get(labels::NAME)).unwrap_or("");
            (ty.to_string(), a.profile.samples.len())
        })
        .collect();
    dist.distribute(tenant, batch).await.map_err(|e| Refusal::rpc(e, validation))?;
    // One body holds them all: each profile is counted with its share of the body's size.
    let share = bytes / received.len().max(1);
    for (ty, samples) in received {
        dist.metrics().usage.received(tenant, &ty, share, share, samples);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn names() {
        let n = parse_name("my.app.cpu{env=prod, region = eu ,__x=1,__session_id__=s}").unwrap();
        assert_eq!(n.app, "my.app.cpu");
        assert_eq!(
            n.labels,
            vec![("env".into(), "prod".into()), ("region".into(), "eu".into()), ("__session_id__".into(), "s".into())]
        );
        assert_eq!(parse_name("x{__name__=other}").unwrap().app, "other");
        assert!(parse_name("").is_err());
        assert!(parse_name("{a=b}").is_err());
        assert!(parse_name("bad app").is_err());
        assert!(parse_name("a{k-y=v}").is_err());
    }

    /// `decode_pprof` as it was written before the fast path: always through prost.
    fn decode_pprof_reference(
        bytes: &[u8],
        spy: &str,
        config: Option<&serde_json::Value>,
        from: i64,
        limits: pprof::PprofLimits,
    ) -> Result<(pprof::Decoded, String), String> {
        let mut input = pprof::decode(bytes).map_err(|e| e.to_string())?;
        apply_spy_fixes(&mut input, spy, config, usize::MAX)?;
        let profile_name = derive_profile_name(&sample_type_names(&input), config);
        if input.time_nanos == 0 || input.time_nanos < 365 * 86400 * 1_000_000_000 {
            input.time_nanos = from;
        }
        Ok((pprof::normalize(input, limits).map_err(|e| e.to_string())?, profile_name))
    }

    #[test]
    fn pprof_decoding_matches_the_prost_path() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/pprof/");
        let dotnet: serde_json::Value = serde_json::json!({"inuse-space": {"units": "bytes"}});
        // Its head, which names the profile, is cut by normalisation.
        let mut long_type = b"cpu".to_vec();
        long_type.extend_from_slice(&[b'a'; pprof::MAX_STRING_LEN]);
        let mut extra = vec![(
            "long sample type".to_string(),
            ProfileInput {
                sample_type: vec![kiln_proto::google::v1::ValueType { r#type: 1, unit: 0 }],
                string_table: vec![vec![], long_type],
                ..Default::default()
            }
            .encode_to_vec(),
        )];
        for name in [
            "pyroscope/og-convert/pyspy-1.pb.gz",
            "pyroscope/og-convert/dotnet-pprof-3.pb.gz",
            "pyroscope/og-convert/dotnet-pprof-211.pb.gz",
            "pyroscope/og-convert/cpu.pb.gz",
            "pyroscope/og-convert/invalid_utf8.pb.gz",
            "pyroscope/pkg-pprof/profile_ruby",
            "pyroscope/pkg-pprof/profile_python",
            "pyroscope/pkg-pprof/go.cpu.labels.pprof",
            "pyroscope/pkg-pprof/heap",
            "pyroscope/pkg-pprof/dotnet.labels.pprof",
            "pyroscope/og-convert/req_2.st.json",
        ] {
            let raw = std::fs::read(format!("{root}{name}")).unwrap();
            let bytes = compress::maybe_gunzip(&raw, 1 << 30).unwrap().into_owned();
            extra.push((name.to_string(), bytes));
        }
        let limits = pprof::PprofLimits { max_samples: 0 };
        assert_eq!(decode_ingest_pprof(&extra[0].1, "", None, 7, limits, usize::MAX).unwrap().1, "process_cpu");
        for (name, bytes) in &extra {
            for spy in ["", "unknown", "gospy", "pyspy", "rbspy", "scripting", "dotnetspy"] {
                for config in [None, Some(&dotnet)] {
                    let got = decode_ingest_pprof(bytes, spy, config, 7, limits, usize::MAX);
                    let want = decode_pprof_reference(bytes, spy, config, 7, limits);
                    match (got, want) {
                        (Ok((a, an)), Ok((b, bn))) => {
                            assert!(a.profile == b.profile && a.groups == b.groups, "{name} {spy} {config:?}");
                            assert_eq!(an, bn, "{name} {spy} {config:?}");
                        }
                        (a, b) => assert_eq!(a.err(), b.err(), "{name} {spy} {config:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn profile_names() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(derive_profile_name(&s(&["samples", "cpu"]), None), "process_cpu");
        assert_eq!(derive_profile_name(&s(&["alloc_objects", "alloc_space"]), None), "memory");
        assert_eq!(derive_profile_name(&s(&["goroutine"]), None), "goroutines");
        assert_eq!(derive_profile_name(&s(&["sample", "wall"]), None), "wall");
        let cfg: serde_json::Value = serde_json::json!({"contentions": {"display-name": "block_count"}});
        assert_eq!(derive_profile_name(&s(&["contentions", "delay"]), Some(&cfg)), "block");
        assert_eq!(derive_profile_name(&s(&["contentions", "delay"]), None), "mutex");
    }
}
