//! The router: finds the component whose route table holds a request's path, reads the body
//! within that route's limit, and hands the request over; RPCs are unframed here and their
//! answers framed in the caller's protocol (`rpc.rs`).
use super::{conn, inflight, metrics, ops, rpc, Edge};
use crate::config::{Component, Target};
use crate::service::body::{http_error, Response};
use crate::service::call::Call;
use crate::service::codec::Protocol;
use crate::service::routes::{self, Class, HttpRoute, RpcService, QUERY_BODY_LIMIT};
use crate::service::{Code, Req, RpcError};
use crate::{ad_hoc_profiles, distributor, ingester, querier, query_frontend, query_scheduler, tenant_settings};
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Incoming;
use std::rc::Rc;
use std::time::Instant;

/// The component an HTTP route belongs to, with the route.
enum HttpDest {
    Distributor(&'static HttpRoute<distributor::Endpoint>),
    Querier(&'static HttpRoute<querier::Endpoint>),
    Ingester(&'static HttpRoute<ingester::Endpoint>),
    Ops(&'static HttpRoute<ops::Endpoint>),
}

impl HttpDest {
    fn find(path: &str) -> Option<HttpDest> {
        routes::find(distributor::HTTP, path)
            .map(HttpDest::Distributor)
            .or_else(|| routes::find(querier::HTTP, path).map(HttpDest::Querier))
            .or_else(|| routes::find(ingester::HTTP, path).map(HttpDest::Ingester))
            .or_else(|| routes::find(ops::HTTP, path).map(HttpDest::Ops))
    }

    fn methods_and_class(&self) -> (&'static [Method], Class) {
        match self {
            HttpDest::Distributor(r) => (r.methods, r.class),
            HttpDest::Querier(r) => (r.methods, r.class),
            HttpDest::Ingester(r) => (r.methods, r.class),
            HttpDest::Ops(r) => (r.methods, r.class),
        }
    }
}

/// The component an RPC service belongs to.
#[derive(Clone, Copy)]
enum RpcOwner {
    Distributor,
    Querier,
    Replica,
    Ingester,
    Scheduler,
    Frontend,
    Settings,
    AdHoc,
    Ops,
}

/// The owner and service of an RPC path (`/<service>/<Method>`).
fn find_rpc(path: &str) -> Option<(RpcOwner, &'static RpcService)> {
    let tables: [(RpcOwner, &'static [RpcService]); 9] = [
        (RpcOwner::Distributor, distributor::RPC),
        (RpcOwner::Querier, querier::RPC),
        (RpcOwner::Replica, querier::replicas::RPC),
        (RpcOwner::Ingester, ingester::remote::RPC),
        (RpcOwner::Scheduler, query_scheduler::RPC),
        (RpcOwner::Frontend, query_frontend::RPC),
        (RpcOwner::Settings, tenant_settings::RPC),
        (RpcOwner::AdHoc, ad_hoc_profiles::RPC),
        (RpcOwner::Ops, ops::RPC),
    ];
    tables.into_iter().find_map(|(owner, table)| routes::find_rpc(table, path).map(|(s, _)| (owner, s)))
}

/// Where a path goes, found once per request: an RPC service, an HTTP route, or nowhere.
enum Dest {
    Rpc(RpcOwner, &'static RpcService),
    Http(HttpDest),
    Unknown,
}

impl Dest {
    /// A path both an RPC service and an HTTP route serve (OTLP's export method, which
    /// takes OTLP/HTTP bodies too) goes to the RPC service for gRPC only.
    fn resolve(path: &str, headers: &HeaderMap) -> Dest {
        if let Some((owner, s)) = find_rpc(path) {
            let grpc = matches!(rpc::detect(headers), Some(Protocol::Grpc | Protocol::GrpcWeb));
            if grpc || HttpDest::find(path).is_none() {
                return Dest::Rpc(owner, s);
            }
        }
        HttpDest::find(path).map_or(Dest::Unknown, Dest::Http)
    }

    /// Whether this process runs a component that serves it (the process's own pages and
    /// unknown paths: always, the latter to be answered 404).
    fn served_by(&self, target: Target) -> bool {
        let runs = |c| target.runs(c);
        match self {
            Dest::Rpc(RpcOwner::Distributor, _) | Dest::Http(HttpDest::Distributor(_)) => runs(Component::Distributor),
            // A query-frontend serves the querier's public API (evaluated through the schedulers);
            // tenant settings and ad hoc profiles are served with it, where Grafana asks.
            Dest::Rpc(RpcOwner::Querier | RpcOwner::Settings | RpcOwner::AdHoc, _)
            | Dest::Http(HttpDest::Querier(_)) => runs(Component::Querier) || runs(Component::QueryFrontend),
            Dest::Rpc(RpcOwner::Scheduler, _) => runs(Component::QueryScheduler),
            Dest::Rpc(RpcOwner::Frontend, _) => runs(Component::QueryFrontend),
            Dest::Rpc(RpcOwner::Ingester, _) | Dest::Http(HttpDest::Ingester(_)) => runs(Component::Ingester),
            // Another querier's question to a replica: answered from this process's cores.
            Dest::Rpc(RpcOwner::Replica, _) => runs(Component::Ingester) || runs(Component::StoreGateway),
            Dest::Rpc(RpcOwner::Ops, _) | Dest::Http(HttpDest::Ops(_)) | Dest::Unknown => true,
        }
    }

    /// Its RPC service's or HTTP route's class, `Other` for anything unknown.
    fn class(&self) -> Class {
        match self {
            Dest::Rpc(_, s) => s.class,
            Dest::Http(d) => d.methods_and_class().1,
            Dest::Unknown => Class::Other,
        }
    }
}

#[cfg(test)]
fn class_of(path: &str) -> Class {
    Dest::resolve(path, &HeaderMap::new()).class()
}

/// Whether a path has an RPC's shape, `/<package>.<Service>/<Method>`.
fn is_rpc_path(path: &str) -> bool {
    path.matches('/').count() == 2 && path[1..].contains('.') && path.split('/').nth(1).is_some_and(|s| s.contains('.'))
}

/// Pyroscope fails any request whose `Accept` header is not a list of media types.
fn accept_header_ok(h: &HeaderMap) -> Result<(), String> {
    for v in h.get_all(http::header::ACCEPT) {
        let s = v.to_str().map_err(|_| "Invalid header format: Accept is not ASCII".to_string())?;
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let mut parts = item.split(';');
            let mt = parts.next().unwrap_or("").trim();
            let valid_mt = mt == "*"
                || mt.split_once('/').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('/'));
            if !valid_mt {
                return Err(format!("Invalid header format: mime: expected slash after first token in {item:?}"));
            }
            for p in parts {
                if !p.trim().is_empty() && !p.contains('=') {
                    return Err(format!("Invalid header format: mime: invalid media parameter in {item:?}"));
                }
            }
        }
    }
    Ok(())
}

pub(super) async fn handle(req: http::Request<Incoming>, core: Rc<Edge>) -> Response {
    let started = Instant::now();
    let dest = Dest::resolve(req.uri().path(), req.headers());
    let class = dest.class();
    // Pyroscope's route label: the path as dskit names it, `notfound` where nothing serves it.
    let route = match dest {
        Dest::Unknown => "notfound".to_string(),
        _ => metrics::route_label(req.uri().path()),
    };
    let method = req.method().clone();
    let resp = dispatch(req, &core, dest, class).await;
    let err = resp.status().as_u16() >= 400 || resp.headers().get("grpc-status").is_some_and(|v| v != "0");
    let seconds = started.elapsed().as_secs_f64();
    core.metrics().observe(class, seconds, err);
    core.metrics().observe_request(&method, route, resp.status().as_u16(), seconds);
    resp
}

async fn dispatch(req: http::Request<Incoming>, core: &Rc<Edge>, dest: Dest, class: Class) -> Response {
    if let Err(msg) = accept_header_ok(req.headers()) {
        return http_error(StatusCode::BAD_REQUEST, &msg);
    }
    let target = core.cfg().target;
    if !dest.served_by(target) {
        let msg = format!("{} is not served here: this instance runs -target={target}", req.uri().path());
        return match (rpc::detect(req.headers()), &dest) {
            (Some(p), Dest::Rpc(..)) => rpc::respond_error(p, &RpcError::new(Code::Unimplemented, msg)),
            _ => http_error(StatusCode::NOT_FOUND, &msg),
        };
    }
    // The port opens before the start finishes (blocks opened, the WAL replayed): until
    // then only the process's own pages answer, everything else is a retryable 503.
    if !core.shared.readiness.is_started()
        && !matches!(dest, Dest::Rpc(RpcOwner::Ops, _) | Dest::Http(HttpDest::Ops(_)) | Dest::Unknown)
    {
        let msg = format!("not ready: {}", core.shared.readiness.why_not_ready());
        return match (rpc::detect(req.headers()), &dest) {
            (Some(p), Dest::Rpc(..)) => rpc::respond_error(p, &RpcError::new(Code::Unavailable, msg)),
            _ => http_error(StatusCode::SERVICE_UNAVAILABLE, &msg),
        };
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let proto = rpc::detect(&parts.headers);

    // Body limit: the ingestion body limit for writes, a small fixed one for everything else.
    let limit = if class.is_write() { core.cfg().limits.body_limit_bytes() } else { QUERY_BODY_LIMIT };
    // Held until the request is answered (or abandoned): the body's bytes stay counted in
    // the process's in-flight budget while the handler works on them.
    let mut reservation = core.shared.bodies.reservation();
    let read = inflight::read_body(body, limit.max(1), &mut reservation);
    let read = match parts.extensions.get::<conn::BodyDeadline>().and_then(|d| d.0) {
        Some(at) => monoio::time::timeout_at(monoio::time::Instant::from_std(at), read).await.ok(),
        None => Some(read.await),
    };
    let body = match read {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            // A push or ingest refused for its size is a discarded profile, as Pyroscope
            // counts it (its tenant as the write would have named it).
            if matches!(class, Class::Push | Class::Ingest) && matches!(e, inflight::BodyError::TooLarge { .. }) {
                if let Ok(t) = crate::service::tenant::write_tenant(core.cfg().multitenancy_enabled, &parts.headers) {
                    let bytes = parts
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(limit);
                    let why = crate::distributor::discard::reason::BODY_SIZE_LIMIT_EXCEEDED;
                    core.distributor.discard(&t, why, 1, bytes, "request body too large");
                }
            }
            return body_error(proto.filter(|_| path.contains(".v1.")), e);
        }
        None => {
            let msg = "reading the request body took longer than the read timeout (-server.http-server-read-timeout)";
            return match proto {
                Some(p) if path.contains(".v1.") => rpc::respond_error(p, &RpcError::new(Code::DeadlineExceeded, msg)),
                _ => http_error(StatusCode::REQUEST_TIMEOUT, msg),
            };
        }
    };
    let r = Req {
        method: parts.method,
        path,
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers,
        body,
    };

    if is_rpc_path(&r.path) && !matches!(dest, Dest::Http(_)) {
        if r.method == Method::GET {
            return connect_get(core, &r, limit, &dest).await;
        }
        let Some(proto) = proto else {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported content type: RPCs take application/proto, application/json or application/grpc",
            );
        };
        if r.method != Method::POST {
            return rpc::respond_error(proto, &RpcError::new(Code::Unimplemented, "RPCs are served on POST only"));
        }
        return rpc_call(core, proto, &r, limit, &dest).await;
    }
    let dest = match dest {
        Dest::Http(d) if d.methods_and_class().0.contains(&r.method) => d,
        _ => return http_error(StatusCode::NOT_FOUND, &format!("no route for {} {}", r.method, r.path)),
    };
    match dest {
        HttpDest::Distributor(route) => core.distributor.serve_http(&route.endpoint, &r).await,
        HttpDest::Querier(route) => core.querier.serve_http(&route.endpoint, &r).await,
        HttpDest::Ingester(route) => core.ingester.serve_http(&route.endpoint, &r).await,
        HttpDest::Ops(route) => ops::serve_http(core, &route.endpoint, &r).await,
    }
}

/// The answer to a body that was not read: in the RPC's protocol for RPC paths (`rpc`),
/// else a plain HTTP error. Nothing more of the body is read: hyper closes an HTTP/1
/// connection whose request body was left unread once the answer is written.
fn body_error(rpc: Option<Protocol>, e: inflight::BodyError) -> Response {
    use inflight::BodyError;
    let (status, code, msg) = match e {
        BodyError::TooLarge { limit } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            format!("request body too large: the limit is {limit} bytes"),
        ),
        BodyError::OverBudget { bytes, budget } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            format!(
                "request body too large: {bytes} bytes is more than the {budget} bytes of request bodies kiln reads at once (-server.max-inflight-body-bytes)"
            ),
        ),
        BodyError::Busy { in_flight, budget } => (
            StatusCode::TOO_MANY_REQUESTS,
            Code::ResourceExhausted,
            format!(
                "too many request body bytes in flight: {in_flight} of {budget} bytes (-server.max-inflight-body-bytes) are being read or handled; retry later"
            ),
        ),
        BodyError::Read(e) => {
            return http_error(StatusCode::REQUEST_TIMEOUT, &format!("reading request body: {e}"));
        }
    };
    match rpc {
        Some(p) => rpc::respond_error(p, &RpcError::new(code, msg)),
        None => http_error(status, &msg),
    }
}

/// Methods that change something: never served on a Connect GET, which the Connect
/// protocol keeps for side-effect-free calls (a GET may be repeated, cached or prefetched).
fn has_side_effects(path: &str, dest: &Dest) -> bool {
    const CHANGES: &[&str] = &[
        "/settings.v1.SettingsService/Set",
        "/settings.v1.SettingsService/Delete",
        "/adhocprofiles.v1.AdHocProfileService/Upload",
    ];
    matches!(dest.class(), Class::Push | Class::Internal)
        || matches!(dest, Dest::Rpc(RpcOwner::Scheduler | RpcOwner::Frontend | RpcOwner::Replica, _))
        || CHANGES.contains(&path)
}

/// A Connect GET (`?encoding=…&message=…`): the message from the query string, answered as
/// the same method's unary POST would be. Methods with side effects answer 405.
async fn connect_get(core: &Rc<Edge>, r: &Req, limit: usize, dest: &Dest) -> Response {
    if has_side_effects(&r.path, dest) {
        let msg = format!("{} changes state: it is served on POST only, never on a Connect GET", r.path);
        let mut resp = http_error(StatusCode::METHOD_NOT_ALLOWED, &msg);
        resp.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return resp;
    }
    match rpc::get_request(&r.query, limit.max(1)) {
        Ok((proto, msg)) => rpc_message(core, proto, r, msg, dest).await,
        Err(e) => rpc::respond_error(Protocol::ConnectJson, &e),
    }
}

/// Unframes an RPC's message (inflated within `limit`), hands it to the service's component
/// and frames the answer in the caller's protocol.
async fn rpc_call(core: &Rc<Edge>, proto: Protocol, r: &Req, limit: usize, dest: &Dest) -> Response {
    let msg = match rpc::request_bytes(proto, &r.headers, r.body.clone(), limit.max(1)) {
        Ok(m) => m,
        Err(e) => return rpc::respond_error(proto, &e),
    };
    rpc_message(core, proto, r, msg, dest).await
}

/// Hands an unframed RPC message to the service's component and frames the answer.
async fn rpc_message(core: &Rc<Edge>, proto: Protocol, r: &Req, msg: bytes::Bytes, dest: &Dest) -> Response {
    let call = Call { path: &r.path, proto, headers: &r.headers, msg: &msg };
    // An RPC path is `/<service>/<Method>`.
    let method = r.path.rsplit_once('/').map_or("", |(_, m)| m);
    let reply = match dest {
        Dest::Rpc(RpcOwner::Distributor, _) => core.distributor.serve_rpc(&call, method).await,
        Dest::Rpc(RpcOwner::Querier, _) => core.querier.serve_rpc(&call, method).await,
        Dest::Rpc(RpcOwner::Replica, _) => core.querier.serve_replica_rpc(&call, method).await,
        Dest::Rpc(RpcOwner::Ingester, _) => core.ingester.serve_rpc(&call, method).await,
        Dest::Rpc(RpcOwner::Scheduler, _) => match &core.shared.scheduler {
            Some(s) => s.serve_rpc(&call, method).await,
            None => call.unimplemented(),
        },
        Dest::Rpc(RpcOwner::Frontend, _) => match &core.shared.frontend {
            Some(f) => f.serve_rpc(&call, method),
            None => call.unimplemented(),
        },
        Dest::Rpc(RpcOwner::Settings, _) => core.settings.serve_rpc(&call, method).await,
        Dest::Rpc(RpcOwner::AdHoc, _) => core.ad_hoc.serve_rpc(&call, method).await,
        Dest::Rpc(RpcOwner::Ops, s) => ops::serve_rpc(core, &call, s.name, method).await,
        Dest::Http(_) | Dest::Unknown => call.unimplemented(),
    };
    match reply {
        Ok(payload) => rpc::respond(proto, &r.headers, payload),
        Err(e) => rpc::respond_error(proto, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        let mut h = HeaderMap::new();
        h.insert("accept", "application/json, text/plain; q=0.9, */*; allow-utf8-labelnames=true".parse().unwrap());
        assert!(accept_header_ok(&h).is_ok());
        h.insert("accept", "garbage".parse().unwrap());
        assert!(accept_header_ok(&h).is_err());
    }

    #[test]
    fn every_route_has_one_owner() {
        let mut paths: Vec<&str> = distributor::HTTP
            .iter()
            .chain([].iter())
            .flat_map(|r| r.paths.iter().copied())
            .chain(querier::HTTP.iter().flat_map(|r| r.paths.iter().copied()))
            .chain(ingester::HTTP.iter().flat_map(|r| r.paths.iter().copied()))
            .chain(ops::HTTP.iter().flat_map(|r| r.paths.iter().copied()))
            .collect();
        let n = paths.len();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), n, "a path is registered twice");
        assert_eq!(class_of("/push.v1.PusherService/Push"), Class::Push);
        assert_eq!(class_of("/ingest"), Class::Ingest);
        assert_eq!(class_of("/querier.v1.QuerierService/Diff"), Class::Query);
        assert_eq!(class_of("/pyroscope/render-diff"), Class::Render);
        assert_eq!(class_of("/nope"), Class::Other);
    }

    /// OTLP's export path is an RPC for gRPC and an HTTP route for OTLP/HTTP bodies.
    #[test]
    fn otlp_export_path_by_protocol() {
        let headers = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ct));
            h
        };
        let path = distributor::otlp::GRPC_PATH;
        for ct in ["application/grpc", "application/grpc+proto", "application/grpc-web"] {
            assert!(matches!(Dest::resolve(path, &headers(ct)), Dest::Rpc(RpcOwner::Distributor, _)), "{ct}");
        }
        for ct in ["application/x-protobuf", "application/protobuf", "application/json", "text/plain"] {
            assert!(matches!(Dest::resolve(path, &headers(ct)), Dest::Http(HttpDest::Distributor(_))), "{ct}");
        }
        assert_eq!(class_of(distributor::otlp::HTTP_PATH), Class::Push);
        assert_eq!(class_of(path), Class::Push);
        // Push stays an RPC whatever its content type.
        let push = "/push.v1.PusherService/Push";
        assert!(matches!(Dest::resolve(push, &headers("application/json")), Dest::Rpc(RpcOwner::Distributor, _)));
    }
}
