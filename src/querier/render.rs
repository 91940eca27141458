//! Pyroscope's legacy render API: `/pyroscope/render` (flamebearer JSON with a timeline),
//! `/pyroscope/render-diff` and `/pyroscope/label-values`.
use super::{fan_out, max_nodes, merge_strings, merged_series, merged_tree, selection, tree, Querier, SeriesCaps};
use crate::service::body::{http_error, RespBody, Response};
use crate::service::{Req, RpcError};
use crate::timeparse::{now_ns, parse_time_ns};
use http::StatusCode;
use kiln_proto::querier::v1::{FlameGraph, FlameGraphDiff};
use kiln_shards::model::labels::ProfileType;
use kiln_shards::query::QueryRequest;
use serde_json::{json, Value};
use std::rc::Rc;

fn fail(e: RpcError) -> Response {
    http_error(e.code.http_status(), &e.message)
}

fn json_response(r: &Req, v: &impl serde::Serialize) -> Response {
    let mut body = serde_json::to_vec(v).expect("json");
    let gzip = r.headers.get("accept-encoding").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("gzip"));
    let mut b = http::Response::builder().status(200).header("content-type", "application/json");
    if gzip && body.len() > 1024 {
        body = kiln_io::compress::gzip(&body);
        b = b.header("content-encoding", "gzip");
    }
    b.body(RespBody::full(body)).expect("valid response")
}

/// Splits `profile_type{selector}`; the profile type part is required.
pub(crate) fn split_query(q: &str) -> Result<(ProfileType, String, String), RpcError> {
    let q = q.trim();
    let (pt, sel) = match q.find('{') {
        Some(i) => (&q[..i], &q[i..]),
        None => (q, "{}"),
    };
    if pt.is_empty() {
        return Err(RpcError::invalid("\"query\" must contain a profile-type selection"));
    }
    let parsed =
        ProfileType::parse(pt).map_err(|_| RpcError::invalid("\"query\" must contain a profile-type selection"))?;
    Ok((parsed, pt.to_string(), sel.to_string()))
}

/// Pyroscope's point interval for a range: about 1500 points, snapped to round steps.
pub fn point_interval_ms(from_ms: i64, until_ms: i64) -> i64 {
    const S: i64 = 1000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;
    const D: i64 = 24 * H;
    let raw = (until_ms - from_ms) / 1500;
    if raw < 15 * S {
        return 15 * S;
    }
    let table: [(i64, i64); 19] = [
        (17_500, 15 * S),
        (25 * S, 20 * S),
        (45 * S, 30 * S),
        (90 * S, M),
        (210 * S, 2 * M),
        (450 * S, 5 * M),
        (750 * S, 10 * M),
        (1050 * S, 15 * M),
        (25 * M, 20 * M),
        (45 * M, 30 * M),
        (90 * M, H),
        (150 * M, 2 * H),
        (270 * M, 3 * H),
        (9 * H, 6 * H),
        (24 * H, 12 * H),
        (48 * H, 24 * H),
        (7 * D, 24 * H),
        (21 * D, 7 * D),
        (42 * D - 1, 30 * D),
    ];
    for (bound, step) in table {
        if raw <= bound {
            return step;
        }
    }
    365 * D
}

fn units(pt: &ProfileType) -> &str {
    match pt.sample_type.as_str() {
        "inuse_objects" | "alloc_objects" | "goroutine" | "samples" => "objects",
        "cpu" => "samples",
        _ => &pt.sample_unit,
    }
}

pub(crate) fn metadata(pt: &ProfileType, format: &str) -> Value {
    json!({
        "format": format,
        "spyName": "",
        "sampleRate": if pt.sample_type == "cpu" { 1_000_000_000u64 } else { 100 },
        "units": units(pt),
        "name": pt.sample_type,
    })
}

pub(crate) fn flamebearer(fg: &FlameGraph) -> Value {
    json!({
        "names": fg.names,
        "levels": fg.levels.iter().map(|l| l.values.clone()).collect::<Vec<_>>(),
        "numTicks": fg.total,
        "maxSelf": fg.max_self,
    })
}

struct Range {
    from_ms: i64,
    until_ms: i64,
}

fn range(r: &Req, from_key: &str, until_key: &str) -> Result<Range, RpcError> {
    let now = now_ns();
    let time = |k: &str| {
        r.param(k).map_or(Ok(now), |v| parse_time_ns(&v, now).map_err(|e| RpcError::invalid(format!("{k}: {e}"))))
    };
    Ok(Range { from_ms: time(from_key)? / 1_000_000, until_ms: time(until_key)? / 1_000_000 })
}

fn requested_max_nodes(r: &Req) -> Option<i64> {
    r.param("maxNodes").or_else(|| r.param("max-nodes")).and_then(|v| v.parse().ok())
}

/// A render timeline: one value per step of the range, zeros included.
#[derive(serde::Serialize)]
struct Timeline {
    #[serde(rename = "startTime")]
    start_time: i64,
    samples: Vec<u64>,
    #[serde(rename = "durationDelta")]
    duration_delta: i64,
    watermarks: Option<()>,
}

/// The first step of a range's timeline and how many steps it has.
fn timeline_steps(rg: &Range, step: i64) -> (i64, usize) {
    let start = rg.from_ms.div_euclid(step) * step;
    let end = rg.until_ms.div_euclid(step) * step;
    (start, ((end - start) / step).max(0) as usize)
}

fn timeline(
    points: &std::collections::BTreeMap<i64, kiln_shards::query::Bucket>,
    rg: &Range,
    step: i64,
    avg: bool,
) -> Timeline {
    let (start, n) = timeline_steps(rg, step);
    let mut samples = vec![0u64; n];
    for (t, b) in points {
        let i = (t - start).div_euclid(step);
        if i >= 0 && (i as usize) < n {
            let v = if avg && b.count > 0 { b.sum / b.count as f64 } else { b.sum };
            samples[i as usize] += v.max(0.0) as u64;
        }
    }
    Timeline { start_time: start / 1000, samples, duration_delta: step / 1000, watermarks: None }
}

/// `/pyroscope/render`'s answer. Typed rather than a `serde_json::Value`: a timeline is a
/// plain `Vec<u64>` (8 bytes a point) instead of a `Value` per point (32 and more).
#[derive(serde::Serialize)]
struct RenderAnswer {
    version: u32,
    flamebearer: Value,
    metadata: Value,
    timeline: Timeline,
    groups: Option<std::collections::BTreeMap<String, Timeline>>,
    heatmap: Option<()>,
}

pub async fn render(querier: &Rc<Querier>, r: &Req) -> Response {
    if r.param("format").as_deref() == Some("dot") {
        return match render_dot(querier, r).await {
            Ok(text) => http::Response::builder()
                .status(200)
                .header("content-type", "text/plain")
                .body(RespBody::full(text))
                .expect("valid response"),
            Err(e) => fail(e),
        };
    }
    match render_inner(querier, r).await {
        Ok(v) => json_response(r, &v),
        Err(e) => fail(e),
    }
}

/// `format=dot`: the merged profile as a Graphviz call graph of at most `max-nodes` nodes
/// (`dot::DEFAULT_MAX_NODES` when unset or 0, as Pyroscope's render); an empty body when
/// nothing matched.
async fn render_dot(querier: &Rc<Querier>, r: &Req) -> Result<String, RpcError> {
    let query = r.param("query").ok_or_else(|| RpcError::invalid("\"query\" is required"))?;
    let (pt, pt_id, sel_str) = split_query(&query)?;
    let tenants = querier.tenants(&r.headers)?;
    let rg = range(r, "from", "until")?;
    let nodes = match requested_max_nodes(r).filter(|n| *n > 0) {
        Some(n) => max_nodes(querier, &tenants[0], Some(n))?,
        None => super::dot::DEFAULT_MAX_NODES,
    };
    let sel = selection(querier, tenants, Some(&pt_id), &sel_str, rg.from_ms, rg.until_ms)?;
    let t = merged_tree(querier, sel, &[]).await?;
    Ok(super::dot::dot(&t, &pt.sample_type, &pt.sample_unit, nodes))
}

async fn render_inner(querier: &Rc<Querier>, r: &Req) -> Result<RenderAnswer, RpcError> {
    let query = r.param("query").ok_or_else(|| RpcError::invalid("\"query\" is required"))?;
    let (pt, pt_id, sel_str) = split_query(&query)?;
    let tenants = querier.tenants(&r.headers)?;
    let rg = range(r, "from", "until")?;
    let max = max_nodes(querier, &tenants[0], requested_max_nodes(r))?;
    let caps = SeriesCaps::for_tenant(querier, &tenants[0]);
    let sel = selection(querier, tenants, Some(&pt_id), &sel_str, rg.from_ms, rg.until_ms)?;
    let step = point_interval_ms(rg.from_ms, rg.until_ms);
    let avg = r.param("aggregation").as_deref() == Some("avg");
    let group_by: Vec<String> =
        r.params().into_iter().filter(|(k, _)| k == "groupBy").map(|(_, v)| v).take(1).collect();
    // The series first: a query that passes a cap is refused before its tree is merged.
    let series = merged_series(querier, sel.clone(), step, group_by.clone(), caps, NARROW_RENDER).await?;
    // Each group becomes a dense timeline, zeros included: that is what the answer holds.
    let (_, steps) = timeline_steps(&rg, step);
    let timelines = if group_by.is_empty() { 1 } else { series.len() + 1 };
    caps.check(series.len(), timelines.saturating_mul(steps), NARROW_RENDER)?;
    let t = merged_tree(querier, sel, &[]).await?;
    let fg = t.flamegraph(max);
    let main = if series.len() == 1 { series.values().next().cloned().unwrap_or_default() } else { Default::default() };
    let groups = group_by.first().map(|g| {
        series
            .iter()
            .map(|(labels, points)| (labels.get(g).unwrap_or("*").to_string(), timeline(points, &rg, step, avg)))
            .collect()
    });
    Ok(RenderAnswer {
        version: 1,
        flamebearer: flamebearer(&fg),
        metadata: metadata(&pt, "single"),
        timeline: timeline(&main, &rg, step, avg),
        groups,
        heatmap: None,
    })
}

/// How to narrow a render query that passes a cap.
const NARROW_RENDER: &str =
    "narrow the query's label selector, group by a label with fewer values, or render a shorter range (fewer points per timeline)";

pub async fn render_diff(querier: &Rc<Querier>, r: &Req) -> Response {
    match render_diff_inner(querier, r).await {
        Ok(v) => json_response(r, &v),
        Err(e) => fail(e),
    }
}

pub(crate) fn diff_json(fg: &FlameGraphDiff, pt: &ProfileType) -> Value {
    json!({
        "version": 1,
        "flamebearer": {
            "names": fg.names,
            "levels": fg.levels.iter().map(|l| l.values.clone()).collect::<Vec<_>>(),
            "numTicks": fg.total,
            "maxSelf": fg.max_self,
        },
        "metadata": metadata(pt, "double"),
        "leftTicks": fg.left_ticks,
        "rightTicks": fg.right_ticks,
        "timeline": null,
        "groups": null,
        "heatmap": null,
    })
}

async fn render_diff_inner(querier: &Rc<Querier>, r: &Req) -> Result<Value, RpcError> {
    let lq = r.param("leftQuery").ok_or_else(|| RpcError::invalid("\"leftQuery\" is required"))?;
    let rq = r.param("rightQuery").ok_or_else(|| RpcError::invalid("\"rightQuery\" is required"))?;
    let (lpt, lid, lsel) = split_query(&lq)?;
    let (_, rid, rsel) = split_query(&rq)?;
    if lid != rid {
        return Err(RpcError::invalid("profile types must match"));
    }
    let tenants = querier.tenants(&r.headers)?;
    let max = max_nodes(querier, &tenants[0], requested_max_nodes(r))?;
    let lr = range(r, "leftFrom", "leftUntil")?;
    let rr = range(r, "rightFrom", "rightUntil")?;
    let ls = selection(querier, tenants.clone(), Some(&lid), &lsel, lr.from_ms, lr.until_ms)?;
    let rs = selection(querier, tenants, Some(&rid), &rsel, rr.from_ms, rr.until_ms)?;
    let lt = merged_tree(querier, ls, &[]).await?;
    let rt = merged_tree(querier, rs, &[]).await?;
    let fg = tree::diff(&lt, &rt, max).map_err(RpcError::invalid)?;
    Ok(diff_json(&fg, &lpt))
}

/// `label=__name__` lists profile type IDs, as Pyroscope does. For any other label Pyroscope
/// drops the name and answers nothing useful; kiln answers that label's values.
pub async fn label_values(querier: &Rc<Querier>, r: &Req) -> Response {
    let Some(label) = r.param("label").filter(|l| !l.is_empty()) else {
        return http_error(StatusCode::BAD_REQUEST, "\"label\" is required");
    };
    let result = async {
        let tenants = querier.tenants(&r.headers)?;
        let rg = range(r, "from", "until")?;
        let (start, end) =
            if r.param("from").is_none() && r.param("until").is_none() { (0, 0) } else { (rg.from_ms, rg.until_ms) };
        let sel = selection(querier, tenants, None, &r.param("query").unwrap_or_default(), start, end)?;
        let Some(sel) = sel else {
            return Ok(Vec::new());
        };
        let req = if label == "__name__" {
            QueryRequest::ProfileTypes(sel)
        } else {
            QueryRequest::LabelValues(sel, label.clone())
        };
        Ok::<_, RpcError>(merge_strings(fan_out(querier, req).await?))
    }
    .await;
    match result {
        Ok(v) => json_response(r, &json!(v)),
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_intervals() {
        let h = 3_600_000;
        assert_eq!(point_interval_ms(0, h), 15_000);
        assert_eq!(point_interval_ms(0, 24 * h), 60_000);
        assert_eq!(point_interval_ms(0, 7 * 24 * h), 5 * 60_000);
        assert_eq!(point_interval_ms(0, 30 * 24 * h), h / 2);
    }

    #[test]
    fn queries_need_a_profile_type() {
        assert!(split_query("{service_name=\"a\"}").is_err());
        let (pt, id, sel) = split_query("process_cpu:cpu:nanoseconds:cpu:nanoseconds{service_name=\"a\"}").unwrap();
        assert_eq!(pt.sample_type, "cpu");
        assert_eq!(id, "process_cpu:cpu:nanoseconds:cpu:nanoseconds");
        assert_eq!(sel, "{service_name=\"a\"}");
    }
}
