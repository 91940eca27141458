//! `/ingest?format=jfr`: the body, raw or as a multipart form, converted and pushed as one
//! batch (all of its profiles or none) through the path every `/ingest` format takes.
//!
//! Statuses: a request of the wrong shape (no `jfr` part, a broken form) is 400; a part or
//! body past the tenant's profile size limit, inflated, is 413; a recording or labels
//! snapshot that cannot be read or converted is 422, as Pyroscope answers.
use super::{convert, decode_labels, LabelsSnapshot, Options};
use crate::distributor::legacy::{push_all, AppName, Refusal};
use crate::distributor::{accept, folded, metrics, multipart, offload, Distributor};
use crate::timeparse::now_ns;
use http::StatusCode;
use kiln_io::compress::{self, InflateError};
use kiln_shards::model::ids::TenantId;
use kiln_shards::model::labels::{self, Labels};
use std::borrow::Cow;
use std::rc::Rc;

type IngestResult = Result<(), Refusal>;
/// A refusal before anything was converted: its status and message (its reason by status).
type Refused = (StatusCode, String);

/// The request as the handler parsed it, for the JFR arm.
pub struct Request<'a> {
    pub name: &'a AppName,
    pub spy: &'a str,
    pub from: i64,
    pub until: i64,
    pub sample_rate: i64,
    pub content_type: &'a str,
    pub body: &'a [u8],
}

/// Converts and pushes the recording; counts it on `/metrics` as stored or refused.
pub async fn ingest(dist: &Rc<Distributor>, tenant: &TenantId, req: Request<'_>) -> IngestResult {
    let m = dist.metrics();
    match convert_and_push(dist, tenant, req).await {
        Ok(bytes) => {
            metrics::add(&m.jfr_recordings, 1);
            metrics::add(&m.jfr_bytes, bytes as u64);
            Ok(())
        }
        Err(e) => {
            metrics::add(&m.jfr_rejected_recordings, 1);
            Err(e)
        }
    }
}

/// The recording's inflated size once stored.
async fn convert_and_push(dist: &Rc<Distributor>, tenant: &TenantId, req: Request<'_>) -> Result<usize, Refusal> {
    let limits = dist.limits_for(tenant).clone();
    let max = if limits.max_profile_size_bytes > 0 { limits.max_profile_size_bytes } else { usize::MAX / 2 };
    let (jfr, snapshot) = read_body(req.content_type, req.body, max)?;
    metrics::add(&dist.metrics().decompressed_bytes, jfr.len() as u64);
    let opts = Options {
        time_nanos: req.from,
        duration_nanos: req.until.saturating_sub(req.from),
        sample_rate: req.sample_rate,
        max_bytes: folded::built_limit(jfr.len(), limits.max_profile_size_bytes),
        max_samples: limits.max_profile_stacktrace_samples,
    };
    let unprocessable = |m: String| (StatusCode::UNPROCESSABLE_ENTITY, m);
    // A large recording is converted off this core, which serves other requests meanwhile.
    let size = jfr.len();
    let jfr = jfr.into_owned();
    let converted = offload::run(size, move || convert(&jfr, &snapshot, opts).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|offload::Panicked| Err("converting the recording failed unexpectedly".into()))
        .map_err(unprocessable)?;
    let base = series_labels(req.name, req.spy, &converted.event);
    let now = now_ns();
    let mut batch = Vec::with_capacity(converted.profiles.len());
    for p in converted.profiles {
        let mut l = base.clone();
        l.set(labels::NAME, p.name);
        let acc = accept(&l, p.decoded, &limits, now).map_err(|e| Refusal::rpc(e, StatusCode::UNPROCESSABLE_ENTITY))?;
        batch.push(acc);
    }
    if batch.is_empty() {
        // A recording without samples of a kind kiln reads: nothing to store, as Pyroscope.
        return Ok(size);
    }
    push_all(dist, tenant, size, batch, StatusCode::UNPROCESSABLE_ENTITY).await?;
    Ok(size)
}

/// The series labels every profile of the recording shares (its `__name__` aside): the
/// name's labels, `pyroscope_spy`, `jfr_event`, and `service_name` (or `app_name` when the
/// name already sets `service_name`) = the full app name. Empty values are left out.
pub fn series_labels(name: &AppName, spy: &str, event: &str) -> Labels {
    let mut l = Labels::from_pairs(name.labels.iter().cloned());
    for (k, v) in [("pyroscope_spy", spy), ("jfr_event", event)] {
        if !v.is_empty() {
            l.set(k, v);
        }
    }
    if l.get(labels::SERVICE_NAME).is_some() {
        l.set("app_name", name.app.clone());
    } else {
        l.set(labels::SERVICE_NAME, name.app.clone());
    }
    l
}

/// The recording and its labels snapshot from the body: a multipart form's `jfr` and
/// `labels` parts (either gzipped or not), or else the whole body as it is.
fn read_body<'a>(content_type: &str, body: &'a [u8], max: usize) -> Result<(Cow<'a, [u8]>, LabelsSnapshot), Refused> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    if !content_type.to_ascii_lowercase().contains("multipart/form-data") {
        if body.len() > max {
            return Err(too_large("the JFR body", max));
        }
        return Ok((Cow::Borrowed(body), LabelsSnapshot::default()));
    }
    let boundary = multipart::boundary(content_type).ok_or_else(|| bad("multipart body without a boundary".into()))?;
    let parts = multipart::parse(body, &boundary).map_err(|e| bad(format!("malformed multipart body: {e}")))?;
    let jfr = parts.iter().find(|p| p.name == "jfr").ok_or_else(|| bad("multipart body has no \"jfr\" part".into()))?;
    let jfr = inflate(jfr.data, max, "jfr")?;
    let snapshot = match parts.iter().find(|p| p.name == "labels") {
        Some(p) if !p.data.is_empty() => {
            let raw = inflate(p.data, max, "labels")?;
            decode_labels(&raw).map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?
        }
        _ => LabelsSnapshot::default(),
    };
    Ok((jfr, snapshot))
}

fn inflate<'a>(data: &'a [u8], max: usize, part: &str) -> Result<Cow<'a, [u8]>, Refused> {
    compress::maybe_gunzip(data, max).map_err(|e| match e {
        InflateError::TooLarge { .. } => too_large(&format!("the {part:?} part"), max),
        InflateError::Corrupt(m) => {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("the {part:?} part: invalid gzip data: {m}"))
        }
    })
}

fn too_large(what: &str, max: usize) -> Refused {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{what} exceeds the profile size limit of {max} bytes (max_profile_size_bytes) once inflated"),
    )
}
