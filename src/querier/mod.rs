//! The querier: turns API requests into per-core `QueryRequest`s, fans them out to every core,
//! and merges the partial answers (trees, pprofs, series, label sets).
pub mod coverage;
pub mod dot;
pub mod heatmap;
pub mod pprof_merge;
pub mod render;
pub mod replicas;
pub mod rpc;
pub mod tree;
pub mod worker;

use crate::config::{Limits, TenantLimits};
use crate::service::call::{Call, Reply};
use crate::service::routes::{Class, HttpRoute, RpcService};
use crate::service::{tenant, Code, Req, Response, RpcError};
use crate::timeparse::now_ns;
use http::{HeaderMap, Method};
use kiln_shards::model::ids::{ProfileTypeId, TenantId};
use kiln_shards::model::labels::Labels;
use kiln_shards::model::selector::parse_selector;
use kiln_shards::query::{Bucket, QueryRequest, QueryResult, Selection};
use kiln_shards::runtime::{Mesh, Msg};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

/// The querier's HTTP routes: Pyroscope's legacy render API.
pub enum Endpoint {
    Render,
    RenderDiff,
    LabelValues,
}

pub static HTTP: &[HttpRoute<Endpoint>] = &[
    HttpRoute {
        methods: &[Method::GET],
        paths: &["/pyroscope/render"],
        class: Class::Render,
        endpoint: Endpoint::Render,
    },
    HttpRoute {
        methods: &[Method::GET],
        paths: &["/pyroscope/render-diff"],
        class: Class::Render,
        endpoint: Endpoint::RenderDiff,
    },
    HttpRoute {
        methods: &[Method::GET],
        paths: &["/pyroscope/label-values"],
        class: Class::Render,
        endpoint: Endpoint::LabelValues,
    },
];

pub static RPC: &[RpcService] = &[RpcService { name: "querier.v1.QuerierService", class: Class::Query }];

/// The querier on one core. Lives on its core (`Rc`), never crosses threads.
pub struct Querier {
    /// The cores every query fans out to (each answers from its heads and blocks).
    mesh: Mesh,
    limits: Arc<TenantLimits>,
    multitenancy: bool,
    /// In a cluster: the replicas every query also goes to. `None`: this process alone.
    replicas: Option<replicas::ReplicaReader>,
    /// In a query-frontend: queries are evaluated by the queriers, through the schedulers.
    frontend: Option<Rc<crate::query_frontend::Frontend>>,
}

impl Querier {
    pub fn new(
        mesh: Mesh,
        limits: Arc<TenantLimits>,
        multitenancy: bool,
        replicas: Option<replicas::ReplicaReader>,
        frontend: Option<Rc<crate::query_frontend::Frontend>>,
    ) -> Self {
        Querier { mesh, limits, multitenancy, replicas, frontend }
    }

    /// `kiln.querier.v1.ReplicaService`: another instance's query, answered from this one's cores.
    pub async fn serve_replica_rpc(&self, call: &Call<'_>, method: &str) -> Reply {
        replicas::serve(self, call, method).await
    }

    fn limits_for(&self, tenant: &str) -> &Limits {
        self.limits.for_tenant(tenant)
    }

    /// The tenants a read is for (several as `a|b`).
    fn tenants(&self, headers: &HeaderMap) -> Result<Vec<TenantId>, RpcError> {
        tenant::tenants(self.multitenancy, headers)
    }

    /// How many cores answer each query.
    fn cores(&self) -> usize {
        self.mesh.cores()
    }

    pub async fn serve_http(self: &Rc<Self>, endpoint: &Endpoint, r: &Req) -> Response {
        match endpoint {
            Endpoint::Render => render::render(self, r).await,
            Endpoint::RenderDiff => render::render_diff(self, r).await,
            Endpoint::LabelValues => render::label_values(self, r).await,
        }
    }

    /// `querier.v1.QuerierService`.
    pub async fn serve_rpc(self: &Rc<Self>, call: &Call<'_>, method: &str) -> Reply {
        rpc::dispatch(self, call, method).await
    }
}

/// Validates a query's range and selector into a `Selection`; `Ok(None)` when the range lies
/// wholly beyond the lookback limit (the answer is empty, as in Pyroscope).
pub fn selection(
    querier: &Querier,
    tenants: Vec<TenantId>,
    profile_type: Option<&str>,
    selector: &str,
    start_ms: i64,
    end_ms: i64,
) -> Result<Option<Selection>, RpcError> {
    let profile_type =
        profile_type.map(ProfileTypeId::parse).transpose().map_err(|e| RpcError::invalid(e.to_string()))?;
    let matchers =
        parse_selector(selector).map_err(|e| RpcError::invalid(format!("invalid label selector {selector:?}: {e}")))?;
    let now_ms = now_ns() / 1_000_000;
    let (mut start, end) = if start_ms == 0 && end_ms == 0 { (now_ms - 3_600_000, now_ms) } else { (start_ms, end_ms) };
    if start > end {
        return Err(RpcError::invalid(format!("invalid time range: start ({start}) is after end ({end})")));
    }
    let limits = querier.limits_for(tenants.first().map(TenantId::as_str).unwrap_or(""));
    let lookback = limits.max_query_lookback.as_millis() as i64;
    if lookback > 0 {
        let oldest = now_ms - lookback;
        if end < oldest {
            return Ok(None);
        }
        start = start.max(oldest);
    }
    let max_len = limits.max_query_length.as_millis() as i64;
    // Any two i64 times: the length saturates instead of wrapping to a negative one.
    if max_len > 0 && end.saturating_sub(start) > max_len {
        return Err(RpcError::invalid(format!(
            "the query time range exceeds the limit (query length: {}, limit: {}; see -querier.max-query-length)",
            fmt_ms(end.saturating_sub(start)),
            fmt_ms(max_len)
        )));
    }
    Ok(Some(Selection {
        tenants,
        profile_type,
        matchers,
        start_ms: start,
        end_ms: end,
        keys: None,
        epoch: None,
        report_read: false,
        spans: None,
    }))
}

fn fmt_ms(ms: i64) -> String {
    let s = ms / 1000;
    format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60)
}

/// Sends a request to every core (in a cluster: to every replica, each profile counted once;
/// see `replicas`; in a query-frontend: to the queriers, split, through the schedulers) and
/// returns all partial results.
pub async fn fan_out(querier: &Rc<Querier>, req: QueryRequest) -> Result<Vec<QueryResult>, RpcError> {
    match &querier.frontend {
        Some(f) => f.fan_out(req).await,
        None => direct_fan_out(querier, req).await,
    }
}

/// `fan_out` without the frontend: what a querier runs for a part it pulled from a scheduler.
pub async fn direct_fan_out(querier: &Querier, req: QueryRequest) -> Result<Vec<QueryResult>, RpcError> {
    match &querier.replicas {
        Some(r) => r.fan_out(querier, req).await,
        None => local_fan_out(querier, req).await,
    }
}

/// Sends a request to every core of this process and returns their partial results.
pub async fn local_fan_out(querier: &Querier, req: QueryRequest) -> Result<Vec<QueryResult>, RpcError> {
    // The epoch a first step listed at, for its second step; else the current one.
    let epoch = req.selection().epoch.unwrap_or_else(|| querier.mesh.epoch.load(std::sync::atomic::Ordering::Acquire));
    let keys = matches!(req, QueryRequest::Keys(_));
    let req = Arc::new(req);
    let parts = querier
        .mesh
        .broadcast(|reply| Msg::Query { req: req.clone(), epoch, reply })
        .await
        .map_err(|e| RpcError::new(Code::Unavailable, e.to_string()))?;
    let mut out = Vec::new();
    for p in parts {
        // A core too busy, or a block read that may succeed later: the client retries.
        out.extend(p.map_err(|e| {
            let code = if e.kind().retryable() { Code::Unavailable } else { Code::Internal };
            RpcError::new(code, e.to_string())
        })?);
    }
    if keys {
        for p in &mut out {
            if let QueryResult::Keys { epoch: e, .. } = p {
                *e = epoch;
            }
        }
    }
    Ok(out)
}

pub fn merge_strings(parts: Vec<QueryResult>) -> Vec<String> {
    let mut out: Vec<String> =
        parts.into_iter().flat_map(|p| if let QueryResult::Strings(v) = p { v } else { Vec::new() }).collect();
    out.sort();
    out.dedup();
    out
}

pub fn merge_label_sets(parts: Vec<QueryResult>) -> Vec<Labels> {
    let mut out: Vec<Labels> =
        parts.into_iter().flat_map(|p| if let QueryResult::LabelSets(v) = p { v } else { Vec::new() }).collect();
    out.sort();
    out.dedup();
    out
}

pub async fn merged_tree(
    querier: &Rc<Querier>,
    sel: Option<Selection>,
    call_site: &[String],
) -> Result<tree::Tree, RpcError> {
    let mut t = tree::Tree::default();
    if let Some(sel) = sel {
        for p in fan_out(querier, QueryRequest::MergeTree(sel)).await? {
            if let QueryResult::Tree(part) = p {
                t.merge(&part);
            }
        }
    }
    t.restrict_to_call_site(call_site);
    t.finish();
    Ok(t)
}

/// How many series and points one time-series answer may hold
/// (`-querier.max-query-series`, `-querier.max-query-points`; 0: no limit).
#[derive(Debug, Clone, Copy)]
pub struct SeriesCaps {
    pub series: usize,
    pub points: usize,
}

impl SeriesCaps {
    pub fn for_tenant(querier: &Querier, tenant: &str) -> Self {
        let l = querier.limits_for(tenant);
        SeriesCaps { series: l.max_query_series, points: l.max_query_points }
    }

    /// Refuses an answer of `series` series holding `points` points in all, saying which
    /// limit it passes and how to narrow the query.
    pub fn check(&self, series: usize, points: usize, narrow: &str) -> Result<(), RpcError> {
        if self.series > 0 && series > self.series {
            return Err(RpcError::invalid(format!(
                "the query selects more than {} series, the limit (-querier.max-query-series); {narrow}",
                self.series
            )));
        }
        if self.points > 0 && points > self.points {
            return Err(RpcError::invalid(format!(
                "the query's answer would hold {points} points, more than the limit of {} (-querier.max-query-points); {narrow}",
                self.points
            )));
        }
        Ok(())
    }
}

/// Per group: time (ms) → bucket, merged over cores and tenants. Refused as soon as the
/// merge passes `caps`, before anything else is built from it (`narrow`: how to narrow the
/// query, for the message).
pub async fn merged_series(
    querier: &Rc<Querier>,
    sel: Option<Selection>,
    step_ms: i64,
    group_by: Vec<String>,
    caps: SeriesCaps,
    narrow: &str,
) -> Result<BTreeMap<Labels, BTreeMap<i64, Bucket>>, RpcError> {
    let mut out: BTreeMap<Labels, BTreeMap<i64, Bucket>> = BTreeMap::new();
    let Some(sel) = sel else { return Ok(out) };
    let mut points = 0usize;
    for p in fan_out(querier, QueryRequest::SelectSeries { sel, step_ms, group_by }).await? {
        if let QueryResult::Series(groups) = p {
            for (labels, part) in groups {
                let g = out.entry(labels).or_default();
                for (t, b) in part {
                    let e = g.entry(t).or_insert_with(|| {
                        points += 1;
                        Bucket::default()
                    });
                    e.sum += b.sum;
                    e.count += b.count;
                }
            }
            caps.check(out.len(), points, narrow)?;
        }
    }
    Ok(out)
}

/// The effective `max_nodes` of a flame graph request.
pub fn max_nodes(querier: &Querier, tenant: &str, requested: Option<i64>) -> Result<i64, RpcError> {
    max_nodes_within(querier.limits_for(tenant), requested)
}

/// The effective `max_nodes` of a flame graph request under a tenant's limits.
pub fn max_nodes_within(l: &Limits, requested: Option<i64>) -> Result<i64, RpcError> {
    let n = match requested {
        None | Some(0) => l.max_flamegraph_nodes_default,
        Some(n) => n,
    };
    // Pyroscope's `ValidateMaxNodes`: a negative value asks for no limit, which only an
    // unlimited maximum grants.
    if l.max_flamegraph_nodes_max > 0 && n > l.max_flamegraph_nodes_max {
        return Err(RpcError::invalid(format!(
            "max flamegraph nodes limit {n} is greater than allowed {}",
            l.max_flamegraph_nodes_max
        )));
    }
    if l.max_flamegraph_nodes_max > 0 && n < 0 {
        return Err(RpcError::invalid(format!(
            "max flamegraph nodes limit must be set (max allowed {})",
            l.max_flamegraph_nodes_max
        )));
    }
    Ok(n)
}
