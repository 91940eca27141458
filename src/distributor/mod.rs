//! The distributor: validates a push, normalises its labels, and hands it to the ingesters
//! (`ingester::client`), acknowledging once every owner applied it. Its routes: Push
//! (`push.rs`) and the legacy `/ingest` (`legacy.rs`).
pub mod discard;
pub mod folded;
pub mod gofix;
pub mod jfr;
pub mod legacy;
pub mod metrics;
pub mod multipart;
pub mod offload;
pub mod otlp;
pub mod pprof;
pub mod push;
pub mod ratelimit;
pub mod speedscope;
pub mod trie;
pub mod wirecost;

use crate::config::{Limits, TenantLimits};
use crate::ingester::client::IngesterClient;
use crate::service::call::{Call, Reply};
use crate::service::codec;
use crate::service::routes::{Class, HttpRoute, RpcService};
use crate::service::{tenant, Code, Req, Response, RpcError};
use http::{HeaderMap, Method};
use kiln_shards::ingester::walcodec::RecordBody;
use kiln_shards::model::ids::TenantId;
use kiln_shards::model::labels::{self, Labels};
use kiln_shards::model::profile::{Profile, SampleGroup};
use kiln_shards::ring::member::Components;
use metrics::DistributorMetrics;
use ratelimit::RateLimiter;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// The distributor's HTTP routes.
pub enum Endpoint {
    Ingest,
    /// OTLP/HTTP profiles, on its own path and on the gRPC method's (for non-gRPC bodies).
    Otlp,
}

pub static HTTP: &[HttpRoute<Endpoint>] = &[
    HttpRoute {
        methods: &[Method::POST],
        paths: &["/ingest", "/pyroscope/ingest"],
        class: Class::Ingest,
        endpoint: Endpoint::Ingest,
    },
    HttpRoute {
        methods: &[Method::POST],
        paths: &[otlp::HTTP_PATH, otlp::GRPC_PATH],
        class: Class::Push,
        endpoint: Endpoint::Otlp,
    },
];

pub static RPC: &[RpcService] = &[
    RpcService { name: "push.v1.PusherService", class: Class::Push },
    RpcService { name: otlp::SERVICE, class: Class::Push },
];

/// The distributor on one core. Lives on its core (`Rc`), never crosses threads.
pub struct Distributor {
    core: u32,
    /// Where every write goes.
    ingesters: IngesterClient,
    limits: Arc<TenantLimits>,
    multitenancy: bool,
    limiter: RefCell<RateLimiter>,
    /// Every core's counters; this core writes `metrics[core]` only.
    metrics: Arc<[DistributorMetrics]>,
    /// In a cluster: the distributor ring, whose healthy members share each tenant's rate.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Distributor {
    /// `cores`: how many cores share the tenants' ingestion rate limits.
    pub fn new(
        core: u32,
        cores: usize,
        ingesters: IngesterClient,
        limits: Arc<TenantLimits>,
        multitenancy: bool,
        metrics: Arc<[DistributorMetrics]>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Self {
        let limiter = RefCell::new(RateLimiter::new(cores));
        Distributor { core, ingesters, limits, multitenancy, limiter, metrics, cluster }
    }

    /// How many distributors share a tenant's rate limit: the healthy ACTIVE members of the
    /// distributor ring, as Pyroscope's global rate strategy divides it (1 alone).
    fn distributors(&self) -> usize {
        self.cluster.as_ref().map_or(1, |c| c.snapshot().healthy_count(Components::DISTRIBUTOR).max(1))
    }

    fn metrics(&self) -> &DistributorMetrics {
        &self.metrics[self.core as usize]
    }

    /// Counts `profiles` refused for `reason` (`bytes` of them) and logs it, within the
    /// log's rate (`discard`).
    pub(crate) fn discard(&self, tenant: &str, reason: &'static str, profiles: u64, bytes: usize, message: &str) {
        let now_s = crate::timeparse::now_ns().div_euclid(1_000_000_000);
        self.metrics().usage.discarded(tenant, reason, profiles, bytes as u64, message, now_s);
    }

    fn limits_for(&self, tenant: &str) -> &Limits {
        self.limits.for_tenant(tenant)
    }

    fn write_tenant(&self, headers: &HeaderMap) -> Result<TenantId, RpcError> {
        tenant::write_tenant(self.multitenancy, headers)
    }

    pub async fn serve_http(self: &Rc<Self>, endpoint: &Endpoint, r: &Req) -> Response {
        match endpoint {
            Endpoint::Ingest => legacy::handle(self, r).await,
            Endpoint::Otlp => otlp::handle_http(self, r).await,
        }
    }

    /// `push.v1.PusherService` (only Push) and OTLP's `ProfilesService` (only Export).
    pub async fn serve_rpc(self: &Rc<Self>, call: &Call<'_>, method: &str) -> Reply {
        if call.path.strip_prefix('/').is_some_and(|p| p.starts_with(otlp::SERVICE)) {
            return otlp::serve_rpc(self, call, method).await;
        }
        if method != "Push" {
            return call.unimplemented();
        }
        let req = push::decode_request(call.proto, call.msg, self.limits.default().body_limit_bytes())?;
        let resp = push::push(self, call.headers, req).await?;
        Ok(codec::encode(call.proto, &resp))
    }

    /// Applies the ingestion rate limit to `bytes` of uncompressed payload.
    fn rate_limit(&self, tenant: &str, bytes: usize, now_ns: i64) -> Result<(), RpcError> {
        let l = self.limits_for(tenant);
        // The rate is the tenant's across the cluster; the burst is each distributor's.
        let rate = l.ingestion_rate_mb / self.distributors() as f64;
        if !self.limiter.borrow_mut().allow(tenant, rate, l.ingestion_burst_size_mb, bytes, now_ns) {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!(
                    "push rate limit ({} MiB/s, burst {} MiB) exceeded while adding {bytes} bytes for tenant {tenant}",
                    l.ingestion_rate_mb, l.ingestion_burst_size_mb
                ),
            )
            .because(discard::reason::RATE_LIMITED));
        }
        Ok(())
    }

    /// Hands accepted profiles to the ingesters: all or nothing (see `IngesterClient::push`).
    async fn distribute(&self, tenant: &TenantId, batch: Vec<Accepted>) -> Result<(), RpcError> {
        let profiles = batch.len() as u64;
        let (batch, bodies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|a| ((Arc::new(a.profile), a.groups), a.body)).unzip();
        // Large profiles are freed on a decode thread once the push is answered (the cores
        // only let go of their references), not on this core.
        let large: Vec<Arc<Profile>> =
            batch.iter().filter(|(p, _)| p.samples.len() >= FREE_OFF_CORE_SAMPLES).map(|(p, _)| p.clone()).collect();
        let pushed = self.ingesters.push(tenant, batch, bodies, self.limits_for(tenant)).await;
        if !large.is_empty() {
            offload::free(large);
        }
        match pushed {
            Ok(()) => {
                metrics::add(&self.metrics().pushed_profiles, profiles);
                Ok(())
            }
            Err(e) => {
                metrics::add(&self.metrics().rejected_profiles, profiles);
                let e = crate::ingester::remote::write_error(e);
                let reason = match e.code {
                    Code::ResourceExhausted if e.message.contains("series") => discard::reason::SERIES_LIMIT,
                    Code::ResourceExhausted => discard::reason::INGEST_LIMIT_REACHED,
                    _ => discard::reason::UNKNOWN,
                };
                Err(e.because(reason))
            }
        }
    }
}

/// Samples from which a pushed profile is freed on a decode thread (`offload::free`): one
/// this large was most likely made there, and its free costs a core more than the hand-off.
const FREE_OFF_CORE_SAMPLES: usize = 1024;

/// Labels a client may not set: the server derives them per sample type, or they are
/// write-path hints that are never stored.
const SERVER_LABELS: &[&str] = &[
    labels::PROFILE_TYPE,
    labels::TYPE,
    labels::UNIT,
    labels::PERIOD_TYPE,
    labels::PERIOD_UNIT,
    labels::SERVICE_NAME_PRIVATE,
    labels::DELTA,
    "__otel__",
];

/// Normalised labels of a push series: reserved labels dropped, `service_name` defaulted,
/// Pyroscope's default relabelling (`godeltaprof_X` → `X`) applied.
pub fn normalize_series_labels(mut l: Labels) -> Labels {
    for name in SERVER_LABELS {
        l.remove(name);
    }
    if l.get(labels::SERVICE_NAME).is_none() {
        l.set(labels::SERVICE_NAME, "unknown_service");
    }
    if let Some(stripped) = l.get(labels::NAME).and_then(|n| n.strip_prefix("godeltaprof_")).map(str::to_string) {
        l.set(labels::NAME, stripped);
    }
    l
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Pyroscope's series label validation (counts, lengths, names, required labels).
pub fn validate_labels(l: &Labels, limits: &Limits) -> Result<(), RpcError> {
    let name = l.get(labels::NAME).unwrap_or("");
    use discard::reason;
    let refuse = |why: &'static str, msg: String| Err(RpcError::invalid(msg).because(why));
    if name.is_empty() || !is_metric_name(name) {
        return refuse(reason::INVALID_LABELS, format!("invalid labels {l}: invalid metric name {name:?}"));
    }
    if l.get(labels::SERVICE_NAME) == Some("") {
        return refuse(reason::INVALID_LABELS, format!("invalid labels {l}: service_name must not be empty"));
    }
    if limits.max_label_names_per_series > 0 && l.len() > limits.max_label_names_per_series {
        let msg =
            format!("profile series {l} has {} label names; limit {}", l.len(), limits.max_label_names_per_series);
        return refuse(reason::MAX_LABEL_NAMES_PER_SERIES, msg);
    }
    for (k, v) in l.iter() {
        if k.is_empty() || k.chars().any(char::is_control) {
            return refuse(reason::INVALID_LABELS, format!("invalid label name {k:?} in series {l}"));
        }
        if limits.max_label_name_length > 0 && k.len() > limits.max_label_name_length {
            return refuse(reason::LABEL_NAME_TOO_LONG, format!("label name too long: {k:?} in series {l}"));
        }
        if limits.max_label_value_length > 0 && v.len() > limits.max_label_value_length {
            return refuse(reason::LABEL_VALUE_TOO_LONG, format!("label value too long: {v:?} for label {k:?}"));
        }
    }
    Ok(())
}

/// A validated profile ready to be routed.
pub struct Accepted {
    pub profile: Profile,
    pub groups: Vec<SampleGroup>,
    /// Its WAL record's body, where the decode wrote one (see `IngesterClient::push`).
    pub body: Option<RecordBody>,
}

/// Builds the series groups of a decoded profile: the push's labels over its sample labels
/// (push labels win), validated; checks and fills the timestamp.
pub fn accept(base: &Labels, decoded: pprof::Decoded, limits: &Limits, now_ns: i64) -> Result<Accepted, RpcError> {
    let mut profile = decoded.profile;
    if profile.time_nanos == 0 {
        profile.time_nanos = now_ns;
    }
    let ts = profile.time_nanos;
    let older = limits.reject_older_than.as_nanos() as i64;
    let newer = limits.reject_newer_than.as_nanos() as i64;
    if (older > 0 && ts < now_ns - older) || (newer > 0 && ts > now_ns + newer) {
        return Err(RpcError::invalid(format!(
            "profile with labels {base} is outside of ingestion window (profile timestamp: {}, the ingestion window starts at {} and ends at {}; see -validation.reject-older-than and -validation.reject-newer-than)",
            fmt_ns(ts),
            if older > 0 { fmt_ns(now_ns - older) } else { "-inf".into() },
            if newer > 0 { fmt_ns(now_ns + newer) } else { "+inf".into() },
        ))
        .because(discard::reason::NOT_IN_INGESTION_WINDOW));
    }
    let mut groups = Vec::with_capacity(decoded.groups.len());
    for (sample_labels, samples) in decoded.groups {
        let mut l = sample_labels;
        for (k, v) in base.iter() {
            l.set(k, v);
        }
        for name in SERVER_LABELS {
            l.remove(name);
        }
        validate_labels(&l, limits)?;
        groups.push(SampleGroup { labels: l, samples });
    }
    // The profile is final: its stack keys are paid for here (a decode thread, for a large
    // one), not on the cores that intern it.
    profile.stack_keys();
    Ok(Accepted { profile, groups, body: None })
}

fn fmt_ns(ns: i64) -> String {
    crate::timeparse::rfc3339(ns, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules() {
        let l =
            normalize_series_labels(Labels::from_pairs([("__name__", "godeltaprof_memory"), ("__delta__", "false")]));
        assert_eq!(l.get("__name__"), Some("memory"));
        assert_eq!(l.get("service_name"), Some("unknown_service"));
        assert_eq!(l.get("__delta__"), None);
        let lim = Limits::default();
        assert!(validate_labels(&l, &lim).is_ok());
        assert!(validate_labels(&Labels::from_pairs([("__name__", "1bad")]), &lim).is_err());
        assert!(validate_labels(&Labels::from_pairs([("__name__", "ok"), ("", "x")]), &lim).is_err());
        assert!(validate_labels(&Labels::from_pairs([("__name__", "ok"), ("k8s.pod.name", "x")]), &lim).is_ok());
        let many: Vec<(String, String)> =
            (0..31).map(|i| (format!("l{i}"), "v".to_string())).chain([("__name__".into(), "x".into())]).collect();
        assert!(validate_labels(&Labels::from_pairs(many), &lim).is_err());
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(fmt_ns(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z");
    }
}
