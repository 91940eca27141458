//! `push.v1.PusherService/Push`: every raw profile of every series is inflated, decoded and
//! validated first; only a request that is valid as a whole is distributed (Pyroscope's
//! distributor is all-or-nothing too).
use super::{accept, distribute, normalize_series_labels, pprof, rate_limit, Accepted};
use crate::config::Limits;
use crate::server::rpc::RpcError;
use crate::server::{metrics, write_tenant, Core};
use crate::timeparse::now_ns;
use bytes::Bytes;
use http::HeaderMap;
use kiln_io::compress;
use kiln_proto::push::v1::{PushRequest, PushResponse};
use kiln_shards::labels::Labels;
use std::rc::Rc;

pub async fn push(core: &Rc<Core>, headers: &HeaderMap, req: PushRequest) -> Result<PushResponse, RpcError> {
    let tenant = write_tenant(core, headers)?;
    let limits = core.cfg().limits_for(&tenant).clone();
    let now = now_ns();
    if req.series.iter().all(|s| s.samples.is_empty()) {
        return Err(RpcError::invalid("no profiles received"));
    }
    // Pyroscope's order: sizes, then the rate limit on uncompressed bytes, then validation.
    let mut inflated = Vec::new();
    let mut total_bytes = 0usize;
    for series in req.series {
        let base = normalize_series_labels(Labels::from_pairs(series.labels.into_iter().map(|l| (l.name, l.value))));
        let label_bytes: usize = base.iter().map(|(k, v)| k.len() + v.len()).sum();
        for sample in series.samples {
            metrics::add(&core.metrics().received_bytes, sample.raw_profile.len() as u64);
            let bytes = inflate(&sample.raw_profile, &limits)
                .inspect_err(|_| metrics::add(&core.metrics().rejected_profiles, 1))?;
            total_bytes += bytes.len() + label_bytes;
            inflated.push((base.clone(), bytes));
        }
    }
    metrics::add(&core.metrics().decompressed_bytes, total_bytes as u64);
    let body_limit = (limits.ingestion_body_limit_mb * 1024.0 * 1024.0) as usize;
    if body_limit > 0 && total_bytes > body_limit {
        return Err(RpcError::invalid(format!(
            "uncompressed batch size {total_bytes} exceeds the body limit of {body_limit} bytes"
        )));
    }
    rate_limit(core, &tenant, total_bytes, now)?;
    let mut batch: Vec<Accepted> = Vec::with_capacity(inflated.len());
    for (base, bytes) in inflated {
        let result = decode(&bytes, &limits).and_then(|decoded| accept(&base, decoded, &limits, now));
        batch.push(result.inspect_err(|_| metrics::add(&core.metrics().rejected_profiles, 1))?);
    }
    distribute(core, &tenant, batch).await?;
    Ok(PushResponse {})
}

/// Inflates a raw profile when it is gzipped, bounded by the profile size limit.
pub fn inflate(raw: &Bytes, limits: &Limits) -> Result<Bytes, RpcError> {
    let max = if limits.max_profile_size_bytes > 0 { limits.max_profile_size_bytes } else { usize::MAX / 2 };
    match compress::maybe_gunzip(raw, max) {
        Ok(std::borrow::Cow::Borrowed(_)) => Ok(raw.clone()),
        Ok(std::borrow::Cow::Owned(v)) => Ok(Bytes::from(v)),
        Err(compress::InflateError::TooLarge { limit }) => {
            Err(RpcError::invalid(format!("uncompressed profile payload size exceeds limit of {limit} bytes")))
        }
        Err(compress::InflateError::Corrupt(m)) => Err(RpcError::invalid(format!("failed to decompress profile: {m}"))),
    }
}

/// Decodes and validates an inflated profile.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<pprof::Decoded, RpcError> {
    pprof::decode_and_normalize(bytes, pprof::PprofLimits { max_samples: limits.max_profile_stacktrace_samples })
        .map_err(|e| RpcError::invalid(e.to_string()))
}
