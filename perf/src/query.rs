//! Query mode: a fixed mix of read requests over `--range` ending now.
//!
//! 1. Discovery, once, before the load: `ProfileTypes` over the range gives the real profile
//!    type IDs, and `LabelValues(service_name)` the services to select.
//! 2. Request `k` picks its kind from `mix64(seed ^ k) % 100`: 78 SelectMergeProfile,
//!    15 `/pyroscope/render`, 3 SelectMergeStacktraces, 2 LabelNames, 2 Series. Profile types
//!    rotate with `k`, services with `k / types`.
//!
//! querier.v1 calls are Connect unary over HTTP/1.1, proto or JSON (`--encoding`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use kiln_proto::querier::v1::{
    ProfileTypesRequest, ProfileTypesResponse, SelectMergeProfileRequest, SelectMergeStacktracesRequest, SeriesRequest,
};
use kiln_proto::types::v1::{LabelNamesRequest, LabelValuesRequest, LabelValuesResponse};
use prost::Message;

use crate::client::{self, percent_encode, Prepared, Protocol, Target};
use crate::engine::Generator;
use crate::flags::Encoding;
use crate::synth::mix64;

const QUERIER: &str = "/querier.v1.QuerierService";
/// Services taken from discovery at most: selectors rotate over them.
const SERVICES_MAX: usize = 100;

/// The kinds of query in the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueryKind {
    SelectMergeProfile,
    Render,
    SelectMergeStacktraces,
    LabelNames,
    Series,
}

impl QueryKind {
    pub fn name(self) -> &'static str {
        match self {
            QueryKind::SelectMergeProfile => "SelectMergeProfile",
            QueryKind::Render => "render",
            QueryKind::SelectMergeStacktraces => "SelectMergeStacktraces",
            QueryKind::LabelNames => "LabelNames",
            QueryKind::Series => "Series",
        }
    }
}

/// The mix: a roll in `0..100` picks the kind.
pub fn pick(roll: u64) -> QueryKind {
    match roll % 100 {
        0..78 => QueryKind::SelectMergeProfile,
        78..93 => QueryKind::Render,
        93..96 => QueryKind::SelectMergeStacktraces,
        96..98 => QueryKind::LabelNames,
        _ => QueryKind::Series,
    }
}

/// What discovery found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryPlan {
    pub profile_types: Vec<String>,
    pub services: Vec<String>,
}

fn now_ms() -> i64 {
    crate::push::now_nanos() / 1_000_000
}

/// Asks the server for profile types and services (one connection, on this thread).
pub fn discover(
    target: &Target,
    range: Duration,
    tenant: Option<String>,
    timeout: Duration,
) -> Result<QueryPlan, String> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("cannot build the runtime: {e}"))?;
    rt.block_on(async move {
        let fut = discover_async(target, range, tenant);
        monoio::time::timeout(timeout * 2, fut).await.map_err(|_| "discovery timed out".to_string())?
    })
}

async fn discover_async(target: &Target, range: Duration, tenant: Option<String>) -> Result<QueryPlan, String> {
    let mut conn = client::connect(target, false).await?;
    let end = now_ms();
    let start = end - range.as_millis() as i64;
    let body = ProfileTypesRequest { start, end }.encode_to_vec();
    let req = connect_request(target, "ProfileTypes", body, Encoding::Proto, &tenant);
    let bytes = call(&mut conn, target, &req).await?;
    let types = ProfileTypesResponse::decode(bytes.as_ref()).map_err(|e| format!("bad ProfileTypes response: {e}"))?;
    let profile_types: Vec<String> = types.profile_types.into_iter().map(|t| t.id).collect();
    if profile_types.is_empty() {
        return Err(format!("the server has no profile types in the last {:?}: push some profiles first", range));
    }
    let body = LabelValuesRequest { name: "service_name".into(), matchers: Vec::new(), start, end }.encode_to_vec();
    let req = connect_request(target, "LabelValues", body, Encoding::Proto, &tenant);
    // Services only sharpen the selectors: without them queries select everything.
    let services = match call(&mut conn, target, &req).await {
        Ok(bytes) => LabelValuesResponse::decode(bytes.as_ref()).map(|r| r.names).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    Ok(QueryPlan { profile_types, services: services.into_iter().take(SERVICES_MAX).collect() })
}

/// Sends one request and returns the response body, or an error naming the method.
async fn call(conn: &mut client::Conn, target: &Target, req: &Prepared) -> Result<Bytes, String> {
    // `client::exchange` only keeps the size; discovery needs the body itself.
    use http_body_util::{BodyExt, Full};
    let client::Conn::H1(send) = conn else {
        return Err("discovery needs an HTTP/1.1 connection".into());
    };
    let mut builder = http::Request::builder()
        .method(req.method.clone())
        .uri(req.path.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header("connect-protocol-version", "1");
    if let Some(ct) = req.content_type {
        builder = builder.header(http::header::CONTENT_TYPE, ct);
    }
    if let Some(t) = &req.tenant {
        builder = builder.header("x-scope-orgid", t.as_str());
    }
    let request = builder.body(Full::new(req.body.clone())).map_err(|e| e.to_string())?;
    send.ready().await.map_err(|e| e.to_string())?;
    let response = send.send_request(request).await.map_err(|e| format!("{}: {e}", req.kind))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| format!("{}: {e}", req.kind))?.to_bytes();
    if status != http::StatusCode::OK {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("{} answered {status}: {text}", req.kind));
    }
    Ok(body)
}

fn connect_request(
    target: &Target,
    method: &'static str,
    body: Vec<u8>,
    encoding: Encoding,
    tenant: &Option<String>,
) -> Prepared {
    let content_type = match encoding {
        Encoding::Proto => "application/proto",
        Encoding::Json => "application/json",
    };
    let body_len = body.len() as u64;
    Prepared {
        method: Method::POST,
        path: format!("{}{QUERIER}/{method}", target.base_path),
        content_type: Some(content_type),
        body: Bytes::from(body),
        protocol: Protocol::Connect,
        tenant: tenant.clone(),
        bytes_uncompressed: body_len,
        kind: method,
    }
}

/// Encodes a request message in the chosen Connect codec.
fn encode<M: Message + serde::Serialize>(msg: &M, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Proto => msg.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(msg).expect("proto messages serialise to JSON"),
    }
}

/// Builds the query mix; shares the plan read-only with the other threads.
pub struct QueryGenerator {
    plan: Arc<QueryPlan>,
    target: Target,
    range_ms: i64,
    encoding: Encoding,
    tenants: crate::flags::Tenants,
    seed: u64,
}

impl QueryGenerator {
    pub fn new(
        plan: Arc<QueryPlan>,
        target: Target,
        range: Duration,
        encoding: Encoding,
        tenants: crate::flags::Tenants,
        seed: u64,
    ) -> Self {
        assert!(!plan.profile_types.is_empty());
        QueryGenerator { plan, target, range_ms: range.as_millis() as i64, encoding, tenants, seed }
    }

    fn selector(&self, k: u64) -> String {
        let types = self.plan.profile_types.len() as u64;
        if self.plan.services.is_empty() {
            return "{}".into();
        }
        let i = (k / types) as usize % self.plan.services.len();
        format!("{{service_name=\"{}\"}}", self.plan.services[i])
    }
}

impl Generator for QueryGenerator {
    fn prepare(&mut self, k: u64) -> Prepared {
        let kind = pick(mix64(self.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let types = &self.plan.profile_types;
        let profile_type = types[(k % types.len() as u64) as usize].clone();
        let selector = self.selector(k);
        let end = now_ms();
        let start = end - self.range_ms;
        let tenant = self.tenants.nth(k);
        let body = match kind {
            QueryKind::SelectMergeProfile => encode(
                &SelectMergeProfileRequest {
                    profile_type_id: profile_type,
                    label_selector: selector,
                    start,
                    end,
                    ..Default::default()
                },
                self.encoding,
            ),
            QueryKind::SelectMergeStacktraces => encode(
                &SelectMergeStacktracesRequest {
                    profile_type_id: profile_type,
                    label_selector: selector,
                    start,
                    end,
                    max_nodes: Some(8192),
                    ..Default::default()
                },
                self.encoding,
            ),
            QueryKind::LabelNames => encode(&LabelNamesRequest { matchers: vec![selector], start, end }, self.encoding),
            QueryKind::Series => encode(
                &SeriesRequest {
                    matchers: vec![selector],
                    label_names: vec!["__profile_type__".into(), "service_name".into()],
                    start,
                    end,
                },
                self.encoding,
            ),
            QueryKind::Render => {
                let query = format!("{profile_type}{selector}");
                return Prepared {
                    method: Method::GET,
                    path: format!(
                        "{}/pyroscope/render?query={}&from={start}&until={end}",
                        self.target.base_path,
                        percent_encode(&query)
                    ),
                    content_type: None,
                    body: Bytes::new(),
                    protocol: Protocol::Plain,
                    tenant,
                    bytes_uncompressed: 0,
                    kind: kind.name(),
                };
            }
        };
        connect_request(&self.target, kind.name(), body, self.encoding, &tenant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn test_query_mix_proportions() {
        let mut counts: HashMap<QueryKind, u64> = HashMap::new();
        for roll in 0..100 {
            *counts.entry(pick(roll)).or_default() += 1;
        }
        assert_eq!(counts[&QueryKind::SelectMergeProfile], 78);
        assert_eq!(counts[&QueryKind::Render], 15);
        assert_eq!(counts[&QueryKind::SelectMergeStacktraces], 3);
        assert_eq!(counts[&QueryKind::LabelNames], 2);
        assert_eq!(counts[&QueryKind::Series], 2);
    }

    fn generator(encoding: Encoding) -> QueryGenerator {
        let plan = Arc::new(QueryPlan {
            profile_types: vec![
                "process_cpu:cpu:nanoseconds:cpu:nanoseconds".into(),
                "memory:inuse_space:bytes:space:bytes".into(),
            ],
            services: vec!["a".into(), "b".into()],
        });
        let target = client::parse_target("http://127.0.0.1:4040").unwrap();
        QueryGenerator::new(plan, target, Duration::from_secs(3600), encoding, Default::default(), 1)
    }

    #[test]
    fn test_query_generator_mix_over_many_requests() {
        let mut g = generator(Encoding::Proto);
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for k in 0..20_000 {
            let req = g.prepare(k);
            *counts.entry(req.kind).or_default() += 1;
            if req.kind == "SelectMergeProfile" {
                let m = SelectMergeProfileRequest::decode(req.body.as_ref()).unwrap();
                assert_eq!(m.end - m.start, 3_600_000);
                assert!(m.label_selector.starts_with("{service_name="));
                assert!(req.path.ends_with("/querier.v1.QuerierService/SelectMergeProfile"));
            }
            if req.kind == "render" {
                assert_eq!(req.method, Method::GET);
                assert!(req.path.starts_with("/pyroscope/render?query="));
            }
        }
        let share = |k: &str| counts.get(k).copied().unwrap_or(0) as f64 / 20_000.0;
        assert!((share("SelectMergeProfile") - 0.78).abs() < 0.02);
        assert!((share("render") - 0.15).abs() < 0.02);
        assert!(share("SelectMergeStacktraces") > 0.01);
        assert!(share("LabelNames") > 0.005);
        assert!(share("Series") > 0.005);
    }

    #[test]
    fn test_query_generator_json_encoding() {
        let mut g = generator(Encoding::Json);
        let req = (0..100).map(|k| g.prepare(k)).find(|r| r.kind == "SelectMergeProfile").unwrap();
        assert_eq!(req.content_type, Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert!(v["profileTypeID"].as_str().unwrap().contains(':'));
        assert!(v["start"].is_string(), "int64 as JSON string: {v}");
    }
}
