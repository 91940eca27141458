//! `querier.v1.QuerierService` over Connect and gRPC.
use super::pprof_merge::PprofMerger;
use super::Querier;
use super::{
    fan_out, heatmap, max_nodes, merge_label_sets, merge_strings, merged_series, merged_tree, selection, tree,
    SeriesCaps,
};
use crate::service::{self, Code, Reply, RpcError};
use http::HeaderMap;
use kiln_proto::google::v1::Profile;
use kiln_proto::querier::v1 as q;
use kiln_proto::types::v1 as t;
use kiln_shards::model::ids::TenantId;
use kiln_shards::model::labels::{Labels, ProfileType};
use kiln_shards::model::profile::parse_span_id;
use kiln_shards::query::{QueryRequest, QueryResult, Selection, SpanSet};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

/// What a QuerierService handler works with: the querier of its core and the request's
/// headers (tenants, `Accept`).
pub struct Call<'a> {
    pub querier: &'a Rc<Querier>,
    pub headers: &'a HeaderMap,
}

pub async fn dispatch(querier: &Rc<Querier>, rpc: &service::Call<'_>, method: &str) -> Reply {
    let call = Call { querier, headers: rpc.headers };
    let c = &call;
    match method {
        "ProfileTypes" => rpc.unary(|r| profile_types(c, r)).await,
        "LabelNames" => rpc.unary(|r| label_names(c, r)).await,
        "LabelValues" => rpc.unary(|r| label_values(c, r)).await,
        "Series" => rpc.unary(|r| series(c, r)).await,
        "SelectMergeStacktraces" => rpc.unary(|r| select_merge_stacktraces(c, r)).await,
        "SelectMergeProfile" => rpc.unary(|r| select_merge_profile(c, r)).await,
        "SelectMergeSpanProfile" => rpc.unary(|r| select_merge_span_profile(c, r)).await,
        "SelectSeries" => rpc.unary(|r| select_series(c, r)).await,
        "SelectHeatmap" => rpc.unary(|r| select_heatmap(c, r)).await,
        "Diff" => rpc.unary(|r| diff(c, r)).await,
        "GetProfileStats" => rpc.unary(|r| profile_stats(c, r)).await,
        "AnalyzeQuery" => rpc.unary(|r| analyze_query(c, r)).await,
        // What kiln does not serve says what is missing (`call::NOT_SERVED`).
        _ => rpc.unimplemented(),
    }
}

fn labels_pb(l: &Labels) -> Vec<t::LabelPair> {
    l.iter().map(|(k, v)| t::LabelPair { name: k.into(), value: v.into() }).collect()
}

pub fn profile_type_pb(id: &str) -> Option<t::ProfileType> {
    let p = ProfileType::parse(id).ok()?;
    Some(t::ProfileType {
        id: id.to_string(),
        name: p.name,
        sample_type: p.sample_type,
        sample_unit: p.sample_unit,
        period_type: p.period_type,
        period_unit: p.period_unit,
    })
}

/// A selection per `matchers` entry (their union is the answer), or one for all series.
fn selections(call: &Call<'_>, matchers: &[String], start: i64, end: i64) -> Result<Vec<Selection>, RpcError> {
    let tenants = call.querier.tenants(call.headers)?;
    let list: Vec<&str> = if matchers.is_empty() { vec!["{}"] } else { matchers.iter().map(String::as_str).collect() };
    let mut out = Vec::new();
    for m in list {
        if let Some(s) = selection(call.querier, tenants.clone(), None, m, start, end)? {
            out.push(s);
        }
    }
    Ok(out)
}

async fn collect(
    call: &Call<'_>,
    sels: Vec<Selection>,
    make: impl Fn(Selection) -> QueryRequest,
) -> Result<Vec<QueryResult>, RpcError> {
    let mut all = Vec::new();
    for s in sels {
        all.extend(fan_out(call.querier, make(s)).await?);
    }
    Ok(all)
}

async fn profile_types(call: &Call<'_>, r: q::ProfileTypesRequest) -> Result<q::ProfileTypesResponse, RpcError> {
    let sels = selections(call, &[], r.start, r.end)?;
    let ids = merge_strings(collect(call, sels, QueryRequest::ProfileTypes).await?);
    Ok(q::ProfileTypesResponse { profile_types: ids.iter().filter_map(|i| profile_type_pb(i)).collect() })
}

fn utf8_label_names_allowed(call: &Call<'_>) -> bool {
    call.headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.replace(' ', "").contains("allow-utf8-labelnames=true"))
}

fn is_legacy_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(x) if x.is_ascii_alphabetic() || x == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

async fn label_names(call: &Call<'_>, r: t::LabelNamesRequest) -> Result<t::LabelNamesResponse, RpcError> {
    let sels = selections(call, &r.matchers, r.start, r.end)?;
    let mut names = merge_strings(collect(call, sels, QueryRequest::LabelNames).await?);
    if !utf8_label_names_allowed(call) {
        names.retain(|n| is_legacy_label_name(n));
    }
    Ok(t::LabelNamesResponse { names })
}

async fn label_values(call: &Call<'_>, r: t::LabelValuesRequest) -> Result<t::LabelValuesResponse, RpcError> {
    if r.name.is_empty() {
        return Err(RpcError::invalid("name is required"));
    }
    let sels = selections(call, &r.matchers, r.start, r.end)?;
    let name = r.name.clone();
    let names = merge_strings(collect(call, sels, move |s| QueryRequest::LabelValues(s, name.clone())).await?);
    Ok(t::LabelValuesResponse { names })
}

async fn series(call: &Call<'_>, r: q::SeriesRequest) -> Result<q::SeriesResponse, RpcError> {
    let sels = selections(call, &r.matchers, r.start, r.end)?;
    let names = r.label_names.clone();
    let sets = merge_label_sets(collect(call, sels, move |s| QueryRequest::Series(s, names.clone())).await?);
    Ok(q::SeriesResponse { labels_set: sets.iter().map(|l| t::Labels { labels: labels_pb(l) }).collect() })
}

fn stacktraces_selection(
    call: &Call<'_>,
    r: &q::SelectMergeStacktracesRequest,
) -> Result<(Option<Selection>, TenantId), RpcError> {
    if !r.span_selector.is_empty() && !r.trace_id_selector.is_empty() {
        return Err(RpcError::invalid("span_selector and trace_id_selector cannot be used together"));
    }
    let tenants = call.querier.tenants(call.headers)?;
    let first = tenants[0].clone();
    Ok((selection(call.querier, tenants, Some(&r.profile_type_id), &r.label_selector, r.start, r.end)?, first))
}

async fn merge_profile(
    call: &Call<'_>,
    sel: Option<Selection>,
    pt: &str,
    end: i64,
    call_site: &[String],
) -> Result<Profile, RpcError> {
    let pt = ProfileType::parse(pt).map_err(RpcError::invalid)?;
    let mut m = PprofMerger::new();
    if let Some(sel) = sel {
        for p in fan_out(call.querier, QueryRequest::MergeProfile(sel)).await? {
            if let QueryResult::Pprof(part) = p {
                m.add(&part);
            }
        }
    }
    Ok(m.finish(&pt, end, call_site))
}

/// The call site a stack trace selector asks for; selectors kiln cannot honour are refused
/// rather than ignored.
fn call_site(sts: Option<&t::StackTraceSelector>) -> Result<Vec<String>, RpcError> {
    let Some(s) = sts else { return Ok(Vec::new()) };
    if s.go_pgo.is_some() {
        return Err(RpcError::new(Code::Unimplemented, "the GoPGO stack trace selector is not supported by kiln yet"));
    }
    Ok(s.call_site.iter().map(|l| l.name.clone()).collect())
}

fn no_profile_selectors(profile_ids: &[String], trace_ids: &[String]) -> Result<(), RpcError> {
    if profile_ids.is_empty() && trace_ids.is_empty() {
        return Ok(());
    }
    Err(RpcError::new(
        Code::Unimplemented,
        "profile and trace id selectors need profile and trace ids, which kiln does not store (span_selector works)",
    ))
}

/// A span selector's ids: each 16 hex digits, as Pyroscope's `NewSpanSelector` reads them.
fn span_set(spans: &[String]) -> Result<Arc<SpanSet>, RpcError> {
    let mut ids = Vec::with_capacity(spans.len());
    for s in spans {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RpcError::invalid(format!("invalid span id {s:?}: a span id is 16 hex digits")));
        }
        // The all-zero id is no span: it matches nothing.
        ids.push(parse_span_id(s).unwrap_or(0));
    }
    Ok(Arc::new(SpanSet::new(ids)))
}

/// Restricts a selection to the samples taken in `spans`.
fn with_spans(sel: Option<Selection>, spans: Arc<SpanSet>) -> Option<Selection> {
    sel.map(|mut s| {
        s.spans = Some(spans);
        s
    })
}

async fn select_merge_stacktraces(
    call: &Call<'_>,
    r: q::SelectMergeStacktracesRequest,
) -> Result<q::SelectMergeStacktracesResponse, RpcError> {
    no_profile_selectors(&r.profile_id_selector, &r.trace_id_selector)?;
    let site = call_site(r.stack_trace_selector.as_ref())?;
    let (mut sel, tenant) = stacktraces_selection(call, &r)?;
    if !r.span_selector.is_empty() {
        sel = with_spans(sel, span_set(&r.span_selector)?);
    }
    let max = max_nodes(call.querier, &tenant, r.max_nodes)?;
    let format = q::ProfileFormat::try_from(r.format).unwrap_or(q::ProfileFormat::Unspecified);
    match format {
        q::ProfileFormat::Pprof => {
            let profile = merge_profile(call, sel, &r.profile_type_id, r.end, &site).await?;
            Ok(q::SelectMergeStacktracesResponse {
                pprof: Some(q::PprofProfile { profile: Some(profile) }),
                ..Default::default()
            })
        }
        q::ProfileFormat::Dot => {
            // Pyroscope draws `max_nodes` nodes here, 100 when unset.
            let nodes = r.max_nodes.filter(|n| *n > 0).map_or(super::dot::DEFAULT_MAX_NODES, |_| max);
            let pt = ProfileType::parse(&r.profile_type_id).map_err(RpcError::invalid)?;
            let t = merged_tree(call.querier, sel, &site).await?;
            Ok(q::SelectMergeStacktracesResponse {
                dot: super::dot::dot(&t, &pt.sample_type, &pt.sample_unit, nodes),
                ..Default::default()
            })
        }
        q::ProfileFormat::Tree => {
            let t = merged_tree(call.querier, sel, &site).await?;
            Ok(q::SelectMergeStacktracesResponse { tree: t.tree_bytes(max), ..Default::default() })
        }
        q::ProfileFormat::Unspecified | q::ProfileFormat::Flamegraph => {
            let t = merged_tree(call.querier, sel, &site).await?;
            Ok(q::SelectMergeStacktracesResponse { flamegraph: Some(t.flamegraph(max)), ..Default::default() })
        }
    }
}

/// `SelectMergeSpanProfile` (Grafana's traces to profiles): the flame graph of the samples
/// taken in the given spans.
async fn select_merge_span_profile(
    call: &Call<'_>,
    r: q::SelectMergeSpanProfileRequest,
) -> Result<q::SelectMergeSpanProfileResponse, RpcError> {
    let spans = span_set(&r.span_selector)?;
    let tenants = call.querier.tenants(call.headers)?;
    let tenant = tenants[0].clone();
    let sel = selection(call.querier, tenants, Some(&r.profile_type_id), &r.label_selector, r.start, r.end)?;
    let sel = with_spans(sel, spans);
    let max = max_nodes(call.querier, &tenant, r.max_nodes)?;
    let t = merged_tree(call.querier, sel, &[]).await?;
    match q::ProfileFormat::try_from(r.format).unwrap_or(q::ProfileFormat::Unspecified) {
        q::ProfileFormat::Tree => {
            Ok(q::SelectMergeSpanProfileResponse { tree: t.tree_bytes(max), ..Default::default() })
        }
        q::ProfileFormat::Unspecified | q::ProfileFormat::Flamegraph => {
            Ok(q::SelectMergeSpanProfileResponse { flamegraph: Some(t.flamegraph(max)), ..Default::default() })
        }
        other => {
            Err(RpcError::invalid(format!("SelectMergeSpanProfile answers a flame graph or a tree, not {other:?}")))
        }
    }
}

async fn select_merge_profile(call: &Call<'_>, r: q::SelectMergeProfileRequest) -> Result<Profile, RpcError> {
    no_profile_selectors(&r.profile_id_selector, &r.trace_id_selector)?;
    let site = call_site(r.stack_trace_selector.as_ref())?;
    let tenants = call.querier.tenants(call.headers)?;
    let sel = selection(call.querier, tenants, Some(&r.profile_type_id), &r.label_selector, r.start, r.end)?;
    merge_profile(call, sel, &r.profile_type_id, r.end, &site).await
}

async fn select_series(call: &Call<'_>, r: q::SelectSeriesRequest) -> Result<q::SelectSeriesResponse, RpcError> {
    if r.stack_trace_selector.is_some() {
        return Err(RpcError::new(
            Code::Unimplemented,
            "stack trace selectors on SelectSeries are not supported by kiln yet",
        ));
    }
    // NaN compares false with everything: it passed a plain `step < 0.001`.
    if !r.step.is_finite() || r.step < 0.001 {
        return Err(RpcError::invalid(format!(
            "step must be a finite number of seconds >= 0.001 (1ms), got {}",
            r.step
        )));
    }
    let tenants = call.querier.tenants(call.headers)?;
    let caps = SeriesCaps::for_tenant(call.querier, &tenants[0]);
    let sel = selection(call.querier, tenants, Some(&r.profile_type_id), &r.label_selector, r.start, r.end)?;
    let step_ms = step_ms(r.step, sel.as_ref().map_or(r.end, |s| s.end_ms))?;
    let avg = r.aggregation == Some(t::TimeSeriesAggregationType::Average as i32);
    // Exemplars, when asked: each point's largest profile (or span), from the heatmap points.
    let exemplar_spans = match t::ExemplarType::try_from(r.exemplar_type) {
        Ok(t::ExemplarType::Individual) => Some(false),
        Ok(t::ExemplarType::Span) => Some(true),
        _ => None,
    };
    let exemplar_sel = exemplar_spans.and(sel.clone());
    let groups = merged_series(call.querier, sel, step_ms, r.group_by.clone(), caps, NARROW_SELECT_SERIES).await?;
    let mut exemplars = BTreeMap::new();
    if let (Some(spans), Some(sel)) = (exemplar_spans, exemplar_sel) {
        let start = sel.start_ms;
        let points = heat_points(call, sel, spans, &r.group_by, caps, NARROW_SELECT_SERIES).await?;
        exemplars = heatmap::step_exemplars(&points, start, step_ms, &r.group_by);
    }
    let mut series: Vec<(f64, t::Series)> = groups
        .into_iter()
        .map(|(labels, points)| {
            let total: f64 = points.values().map(|b| b.sum).sum();
            let points = points
                .into_iter()
                .map(|(ts, b)| t::Point {
                    value: if avg && b.count > 0 { b.sum / b.count as f64 } else { b.sum },
                    timestamp: ts,
                    exemplars: exemplars.remove(&(labels.clone(), ts)).into_iter().collect(),
                    ..Default::default()
                })
                .collect();
            (total, t::Series { labels: labels_pb(&labels), points })
        })
        .collect();
    if let Some(limit) = r.limit.filter(|l| *l > 0) {
        series.sort_by(|a, b| b.0.total_cmp(&a.0));
        series.truncate(limit as usize);
        series.sort_by(|a, b| {
            a.1.labels.iter().map(|l| (&l.name, &l.value)).cmp(b.1.labels.iter().map(|l| (&l.name, &l.value)))
        });
    }
    Ok(q::SelectSeriesResponse { series: series.into_iter().map(|(_, s)| s).collect() })
}

/// `SelectHeatmap`: every selected profile's total (`HEATMAP_QUERY_TYPE_SPAN`: each span's
/// total in it) bucketed by time and value per `group_by` label set (`querier::heatmap`).
async fn select_heatmap(call: &Call<'_>, r: q::SelectHeatmapRequest) -> Result<q::SelectHeatmapResponse, RpcError> {
    if !r.step.is_finite() || r.step < 0.001 {
        return Err(RpcError::invalid(format!(
            "step must be a finite number of seconds >= 0.001 (1ms), got {}",
            r.step
        )));
    }
    let spans = match q::HeatmapQueryType::try_from(r.query_type) {
        Ok(q::HeatmapQueryType::Span) => true,
        Ok(q::HeatmapQueryType::Individual | q::HeatmapQueryType::Unspecified) => false,
        Err(_) => return Err(RpcError::invalid(format!("unknown heatmap query type {}", r.query_type))),
    };
    let exemplars =
        matches!(t::ExemplarType::try_from(r.exemplar_type), Ok(t::ExemplarType::Individual | t::ExemplarType::Span));
    let tenants = call.querier.tenants(call.headers)?;
    let caps = SeriesCaps::for_tenant(call.querier, &tenants[0]);
    let sel = selection(call.querier, tenants, Some(&r.profile_type_id), &r.label_selector, r.start, r.end)?;
    let Some(sel) = sel else { return Ok(q::SelectHeatmapResponse::default()) };
    let (start, end) = (sel.start_ms, sel.end_ms);
    let step_ms = step_ms(r.step, end)?;
    let mut groups = heat_points(call, sel, spans, &r.group_by, caps, NARROW_HEATMAP).await?;
    if let Some(limit) = r.limit.filter(|l| *l > 0) {
        groups.keep_top(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    Ok(q::SelectHeatmapResponse { series: heatmap::build(&groups, start, end, step_ms, &r.group_by, exemplars) })
}

/// Every reader's heatmap points of `sel` (`spans`: per span), grouped by `group_by`;
/// refused as soon as they pass `caps` (`narrow`: how to narrow the query).
async fn heat_points(
    call: &Call<'_>,
    sel: Selection,
    spans: bool,
    group_by: &[String],
    caps: SeriesCaps,
    narrow: &str,
) -> Result<heatmap::Groups, RpcError> {
    let mut groups = heatmap::Groups::default();
    for p in fan_out(call.querier, QueryRequest::Heatmap { sel, spans }).await? {
        if let QueryResult::Points(series) = p {
            for (labels, points) in series {
                groups.add(labels, points, group_by);
            }
            caps.check(groups.groups.len(), groups.points, narrow)?;
        }
    }
    Ok(groups)
}

/// How to narrow a SelectHeatmap query that passes a cap.
const NARROW_HEATMAP: &str = "narrow the label selector, group by fewer labels, or use a shorter range";

/// How to narrow a SelectSeries query that passes a cap.
const NARROW_SELECT_SERIES: &str =
    "narrow the label selector, group by fewer labels or by one with fewer values, or use a larger step or a shorter range";

/// A valid step (seconds) in milliseconds. A point's time is the first step boundary at or
/// after its profiles, at most `end_ms + step`: that must be a time, not an overflow.
fn step_ms(step: f64, end_ms: i64) -> Result<i64, RpcError> {
    let ms = (step * 1000.0).round();
    // `as` saturates: anything at or past i64::MAX is out of range below.
    match (ms as i64).checked_add(end_ms) {
        Some(_) if ms < i64::MAX as f64 => Ok(ms as i64),
        _ => Err(RpcError::invalid(format!(
            "step {step}s is too large: the points' times would not fit in 64-bit milliseconds after end {end_ms}"
        ))),
    }
}

async fn diff(call: &Call<'_>, r: q::DiffRequest) -> Result<q::DiffResponse, RpcError> {
    let (Some(left), Some(right)) = (r.left, r.right) else {
        return Err(RpcError::invalid("both left and right are required"));
    };
    ProfileType::parse(&left.profile_type_id).map_err(RpcError::invalid)?;
    ProfileType::parse(&right.profile_type_id).map_err(RpcError::invalid)?;
    let requested = match (left.max_nodes, right.max_nodes) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let (ls, tenant) = stacktraces_selection(call, &left)?;
    let (rs, _) = stacktraces_selection(call, &right)?;
    let max = max_nodes(call.querier, &tenant, requested)?;
    let lt = merged_tree(call.querier, ls, &call_site(left.stack_trace_selector.as_ref())?).await?;
    let rt = merged_tree(call.querier, rs, &call_site(right.stack_trace_selector.as_ref())?).await?;
    let fg = tree::diff(&lt, &rt, max).map_err(RpcError::invalid)?;
    Ok(q::DiffResponse { flamegraph: Some(fg) })
}

async fn profile_stats(call: &Call<'_>, _r: t::GetProfileStatsRequest) -> Result<t::GetProfileStatsResponse, RpcError> {
    let tenants = call.querier.tenants(call.headers)?;
    let sel = Selection {
        tenants,
        profile_type: None,
        matchers: Vec::new(),
        start_ms: i64::MIN / 2,
        end_ms: i64::MAX / 2,
        keys: None,
        epoch: None,
        report_read: false,
        spans: None,
    };
    let mut out = t::GetProfileStatsResponse::default();
    for p in fan_out(call.querier, QueryRequest::Stats(sel)).await? {
        if let QueryResult::Stats { oldest_ms, newest_ms, ingested: true } = p {
            out.oldest_profile_time =
                if out.data_ingested { out.oldest_profile_time.min(oldest_ms) } else { oldest_ms };
            out.newest_profile_time = out.newest_profile_time.max(newest_ms);
            out.data_ingested = true;
        }
    }
    Ok(out)
}

/// What a query would read, so Grafana can show its cost before running it.
async fn analyze_query(call: &Call<'_>, r: q::AnalyzeQueryRequest) -> Result<q::AnalyzeQueryResponse, RpcError> {
    let (_, pt, selector) = super::render::split_query(&r.query)?;
    let tenants = call.querier.tenants(call.headers)?;
    let sel = selection(call.querier, tenants, Some(&pt), &selector, r.start, r.end)?;
    let mut scope = q::QueryScope {
        component_type: "Head".into(),
        component_count: call.querier.cores() as u64,
        ..Default::default()
    };
    if let Some(sel) = sel {
        for p in fan_out(call.querier, QueryRequest::Analyze(sel)).await? {
            if let QueryResult::Analyze { series, profiles, samples, bytes } = p {
                scope.series_count += series;
                scope.profile_count += profiles;
                scope.sample_count += samples;
                scope.profile_bytes += bytes;
            }
        }
    }
    let impact = q::QueryImpact {
        total_bytes_in_time_range: scope.profile_bytes,
        total_queried_series: scope.series_count,
        deduplication_needed: false,
    };
    Ok(q::AnalyzeQueryResponse { query_scopes: vec![scope], query_impact: Some(impact) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_whose_points_would_overflow_are_refused() {
        let now = 1_700_000_000_000;
        assert_eq!(step_ms(15.0, now).unwrap(), 15_000);
        assert_eq!(step_ms(0.0015, now).unwrap(), 2);
        for step in [1e300, f64::MAX, 9.3e15] {
            let e = step_ms(step, now).unwrap_err();
            assert!(e.message.contains("too large"), "{step}: {e}");
        }
        assert!(step_ms(9.2e15, now).is_ok());
        assert!(step_ms(1e9, i64::MAX).is_err());
    }
}
