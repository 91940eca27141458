//! `push.v1.PusherService/Push`: every raw profile of every series is inflated, decoded and
//! validated first; only a request that is valid as a whole is distributed (Pyroscope's
//! distributor is all-or-nothing too).
use super::metrics;
use super::{accept, discard, normalize_series_labels, offload, pprof, wirecost, Accepted, Distributor};
use crate::config::Limits;
use crate::service::codec::{self, Protocol};
use crate::service::RpcError;
use crate::timeparse::now_ns;
use bytes::Bytes;
use http::HeaderMap;
use kiln_io::compress;
use kiln_proto::push::v1::{PushRequest, PushResponse};
use kiln_shards::ingester::walcodec::RecordBody;
use kiln_shards::model::ids::TenantId;
use kiln_shards::model::labels::{self, Labels};
use std::rc::Rc;

pub async fn push(dist: &Rc<Distributor>, headers: &HeaderMap, req: PushRequest) -> Result<PushResponse, RpcError> {
    let tenant = dist.write_tenant(headers)?;
    let profiles = req.series.iter().map(|s| s.samples.len()).sum::<usize>() as u64;
    let bytes: usize = req.series.iter().flat_map(|s| &s.samples).map(|s| s.raw_profile.len()).sum();
    match push_all(dist, &tenant, req).await {
        Ok(received) => {
            for r in received {
                dist.metrics().usage.received(&tenant, &r.0, r.1, r.2, r.3);
            }
            Ok(PushResponse {})
        }
        Err(e) => {
            dist.discard(&tenant, e.reason.unwrap_or(discard::reason::UNKNOWN), profiles, bytes, &e.message);
            Err(e)
        }
    }
}

/// What one accepted profile was: its type (`__name__`), its size as received and inflated,
/// its samples.
type Received = (String, usize, usize, usize);

async fn push_all(dist: &Rc<Distributor>, tenant: &TenantId, req: PushRequest) -> Result<Vec<Received>, RpcError> {
    let tenant = tenant.clone();
    // Shared with the decode threads (`offload`) a large profile's work may run on.
    let limits = std::sync::Arc::new(dist.limits_for(&tenant).clone());
    let now = now_ns();
    if req.series.iter().all(|s| s.samples.is_empty()) {
        return Err(RpcError::invalid("no profiles received"));
    }
    // Pyroscope's order: sizes, then the rate limit on uncompressed bytes, then validation.
    // The body limit is the request's uncompressed budget: each profile is inflated against
    // what is left of it (and its own size limit), so however many small gzip bombs a push
    // carries, it never holds more than the budget.
    let body_limit = limits.body_limit_bytes();
    let budget = if body_limit > 0 { body_limit } else { usize::MAX / 2 };
    let mut inflated = Vec::new();
    let mut total_bytes = 0usize;
    for series in req.series {
        let base = normalize_series_labels(Labels::from_pairs(series.labels.into_iter().map(|l| (l.name, l.value))));
        let label_bytes: usize = base.iter().map(|(k, v)| k.len() + v.len()).sum();
        for sample in series.samples {
            metrics::add(&dist.metrics().received_bytes, sample.raw_profile.len() as u64);
            let left = budget.saturating_sub(total_bytes.saturating_add(label_bytes));
            // A large gzip body is inflated off this core too (a pprof inflates to 2–5 times
            // its gzip size; twice is the estimate).
            let (raw, lim) = (sample.raw_profile.clone(), limits.clone());
            let bytes = offload::run(raw.len().saturating_mul(2), move || inflate(&raw, &lim, left))
                .await
                .unwrap_or_else(|offload::Panicked| {
                    Err(InflateRefusal::Request(RpcError::internal("inflating the profile failed unexpectedly")))
                });
            let bytes = bytes.map_err(|e| {
                metrics::add(&dist.metrics().rejected_profiles, 1);
                match e {
                    InflateRefusal::Request(e) => e,
                    InflateRefusal::Budget => RpcError::invalid(format!(
                        "uncompressed batch size exceeds the body limit of {body_limit} bytes \
                         (-distributor.ingestion-body-limit-mb): {total_bytes} bytes before profile {}",
                        inflated.len() + 1
                    ))
                    .because(discard::reason::BODY_SIZE_LIMIT_EXCEEDED),
                }
            })?;
            total_bytes += bytes.len() + label_bytes;
            inflated.push((base.clone(), sample.raw_profile.len(), bytes));
        }
    }
    metrics::add(&dist.metrics().decompressed_bytes, total_bytes as u64);
    if body_limit > 0 && total_bytes > body_limit {
        return Err(RpcError::invalid(format!(
            "uncompressed batch size {total_bytes} exceeds the body limit of {body_limit} bytes"
        ))
        .because(discard::reason::BODY_SIZE_LIMIT_EXCEEDED));
    }
    dist.rate_limit(&tenant, total_bytes, now)?;
    let mut batch: Vec<Accepted> = Vec::with_capacity(inflated.len());
    let mut received = Vec::with_capacity(inflated.len());
    for (base, compressed, bytes) in inflated {
        let name = base.get(labels::NAME).unwrap_or("").to_string();
        let size = bytes.len();
        // A large profile is decoded off this core, which serves other requests meanwhile,
        // and its WAL record's body written there when one core owns all of it.
        let lim = limits.clone();
        let one_core = (size >= offload::threshold()).then(|| dist.ingesters.whole_on_one_core(&tenant)).flatten();
        let record_tenant = tenant.to_arc();
        let result = offload::run(size, move || {
            decode(&bytes, &lim).and_then(|decoded| {
                let samples = decoded.profile.samples.len();
                accept(&base, decoded, &lim, now).map(|mut a| {
                    if one_core.is_some_and(|whole| whole(&a.groups)) {
                        a.body = Some(RecordBody::new(&record_tenant, &a.profile, &a.groups));
                    }
                    (a, samples)
                })
            })
        })
        .await
        .unwrap_or_else(|offload::Panicked| Err(RpcError::internal("decoding the profile failed unexpectedly")));
        let (accepted, samples) = result.inspect_err(|_| metrics::add(&dist.metrics().rejected_profiles, 1))?;
        received.push((name, compressed, size, samples));
        batch.push(accepted);
    }
    dist.distribute(&tenant, batch).await?;
    Ok(received)
}

/// Decodes a push message, refusing first one whose decoded form would pass `budget` bytes
/// (the body limit; 0: none). prost makes a struct of every series, label and sample: a
/// message of empty ones decodes to tens of times its size.
pub fn decode_request(proto: Protocol, msg: &Bytes, budget: usize) -> Result<PushRequest, RpcError> {
    let cost = match proto {
        Protocol::ConnectJson => wirecost::json_cost(msg, wirecost::shapes::RAW_PROFILE_SERIES.size),
        _ => wirecost::cost(msg, &wirecost::shapes::PUSH_REQUEST),
    };
    if budget > 0 && cost > budget {
        return Err(RpcError::invalid(format!(
            "the push request would take {cost} bytes of memory decoded, more than the body limit of {budget} bytes \
             (-distributor.ingestion-body-limit-mb): it holds too many series, labels or samples for its size"
        )));
    }
    codec::decode(proto, msg)
}

/// Why a raw profile was not inflated.
pub enum InflateRefusal {
    /// The profile itself is refused (too large on its own, or corrupt).
    Request(RpcError),
    /// It would pass what is left of the request's uncompressed budget.
    Budget,
}

/// Inflates a raw profile when it is gzipped, bounded by the profile size limit and by
/// `left`, what remains of the request's uncompressed budget.
pub fn inflate(raw: &Bytes, limits: &Limits, left: usize) -> Result<Bytes, InflateRefusal> {
    let own = if limits.max_profile_size_bytes > 0 { limits.max_profile_size_bytes } else { usize::MAX / 2 };
    match compress::maybe_gunzip(raw, own.min(left)) {
        Ok(std::borrow::Cow::Borrowed(_)) => Ok(raw.clone()),
        Ok(std::borrow::Cow::Owned(v)) => Ok(Bytes::from(v)),
        Err(compress::InflateError::TooLarge { .. }) if left < own => Err(InflateRefusal::Budget),
        Err(compress::InflateError::TooLarge { limit }) => Err(InflateRefusal::Request(
            RpcError::invalid(format!("uncompressed profile payload size exceeds limit of {limit} bytes"))
                .because(discard::reason::PROFILE_SIZE_LIMIT),
        )),
        Err(compress::InflateError::Corrupt(m)) => Err(InflateRefusal::Request(
            RpcError::invalid(format!("failed to decompress profile: {m}")).because(discard::reason::MALFORMED_PROFILE),
        )),
    }
}

/// Decodes and validates an inflated profile.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<pprof::Decoded, RpcError> {
    pprof::decode_and_normalize(bytes, pprof::PprofLimits { max_samples: limits.max_profile_stacktrace_samples })
        .map_err(|e| RpcError::invalid(e.to_string()).because(discard::reason::MALFORMED_PROFILE))
}
