//! The HTTP server each core runs: HTTP/1.1 and cleartext HTTP/2 on one SO_REUSEPORT port,
//! and the router that sends each request to its handler.
pub mod body;
pub mod conn;
pub mod inflight;
pub mod metrics;
pub mod ratelimit;
pub mod rpc;

use crate::config::Config;
use crate::{distributor, ops, querier};
use body::{RespBody, Response};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use hyper::body::Incoming;
use kiln_shards::runtime::{CoreContext, Mesh};
use metrics::{CoreMetrics, Route};
use ratelimit::RateLimiter;
use rpc::{Code, Protocol, RpcError};
use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What every core shares, read-only or atomic: config, per-core metric slots, readiness,
/// the connection count and the in-flight body budget.
pub struct Shared {
    pub cfg: Config,
    pub metrics: Vec<CoreMetrics>,
    pub conns: Arc<conn::Conns>,
    pub bodies: inflight::BodyBudget,
    pub timeouts: conn::Timeouts,
    pub cores_listening: AtomicUsize,
    pub shutting_down: AtomicBool,
    pub started: Instant,
}

impl Shared {
    /// `cfg.http_conn_limit` and `cfg.max_inflight_body_bytes` are resolved by then (see
    /// `run`); unset they mean no limit here.
    pub fn new(cfg: Config) -> Arc<Self> {
        let n = cfg.effective_shards();
        let timeouts = conn::Timeouts::new(
            cfg.http_server_read_timeout,
            cfg.http_server_write_timeout,
            cfg.http_server_idle_timeout,
        );
        Arc::new(Shared {
            conns: conn::Conns::new(cfg.http_conn_limit.unwrap_or(0)),
            bodies: inflight::BodyBudget::new(cfg.max_inflight_body_bytes.unwrap_or(0)),
            timeouts,
            cfg,
            metrics: (0..n).map(|_| CoreMetrics::default()).collect(),
            cores_listening: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            started: Instant::now(),
        })
    }

    pub fn ready(&self) -> bool {
        self.cores_listening.load(Ordering::Acquire) == self.metrics.len()
            && !self.shutting_down.load(Ordering::Acquire)
    }
}

/// One core's request-serving state. Lives on its core (`Rc`), never crosses threads.
pub struct Core {
    pub id: u32,
    pub mesh: Mesh,
    pub shared: Arc<Shared>,
    pub limiter: RefCell<RateLimiter>,
}

impl Core {
    pub fn cfg(&self) -> &Config {
        &self.shared.cfg
    }
    pub fn metrics(&self) -> &CoreMetrics {
        &self.shared.metrics[self.id as usize]
    }
}

#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        monoio::spawn(fut);
    }
}

/// Accepts and serves connections on this core until the process exits.
pub async fn serve(ctx: CoreContext, shared: Arc<Shared>) {
    // The port opens only once the WAL has been replayed into the heads.
    let _ = ctx.gate.recv_async().await;
    let cores = ctx.mesh.cores();
    let core = Rc::new(Core {
        id: ctx.core,
        mesh: ctx.mesh,
        shared: shared.clone(),
        limiter: RefCell::new(RateLimiter::new(cores)),
    });
    let addr = format!("{}:{}", shared.cfg.http_listen_address, shared.cfg.http_listen_port);
    let opts = monoio::net::ListenerOpts::new().reuse_port(true).reuse_addr(true);
    let listener = match monoio::net::TcpListener::bind_with_config(addr.as_str(), &opts) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(core = ctx.core, %addr, error = %e, "cannot listen");
            std::process::exit(1);
        }
    };
    shared.cores_listening.fetch_add(1, Ordering::AcqRel);
    tracing::debug!(core = ctx.core, %addr, "listening");
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    builder.http2().max_concurrent_streams(1024);
    let builder = Rc::new(builder);
    let mut backoff = conn::AcceptBackoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _peer)) => {
                backoff.reset();
                s
            }
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or memory the error repeats until
                // something is closed: wait instead of spinning, and log once a second.
                if let Some(suppressed) = shared.conns.accept_failed(Instant::now()) {
                    tracing::warn!(error = %e, suppressed, "accept failed; backing off");
                }
                let wait = backoff.next(&e);
                if !wait.is_zero() {
                    monoio::time::sleep(wait).await;
                }
                continue;
            }
        };
        // Over the cap the connection is accepted and reset at once: the client learns
        // now rather than after a timeout, the backlog does not fill with connections
        // nobody will serve, and no descriptor is held.
        let Some(slot) = shared.conns.try_open() else {
            conn::refuse(std::os::fd::AsRawFd::as_raw_fd(&stream));
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = match stream.try_into_poll_io() {
            Ok(io) => io,
            Err((e, _)) => {
                tracing::warn!(error = %e, "cannot serve connection");
                continue;
            }
        };
        let core = core.clone();
        let builder = builder.clone();
        monoio::spawn(async move {
            // Declared first, dropped last: the slot is given back once the socket is closed.
            let _slot = slot;
            let watch = conn::ConnWatch::new(core.shared.timeouts);
            let this_core = core.clone();
            let io = hyper_util::rt::TokioIo::new(conn::WatchedIo::new(io, watch.clone()));
            let w = watch.clone();
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let core = core.clone();
                let (guard, deadline) = conn::RequestGuard::begin(&w);
                req.extensions_mut().insert(deadline);
                async move {
                    let resp = handle(req, core).await;
                    Ok::<_, Infallible>(resp.map(|b| conn::GuardedBody::new(b, guard.responding())))
                }
            });
            let conn = builder.serve_connection(io, svc);
            match conn::supervise(conn, watch, |c| c.graceful_shutdown()).await {
                conn::Ended::Finished(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
                conn::Ended::Finished(Ok(())) => {}
                conn::Ended::TimedOut(reason) => {
                    tracing::debug!(?reason, "connection closed: timeout");
                    this_core.shared.conns.timed_out(reason);
                }
            }
        });
    }
}

/// The body of any request but a write, and the inflated message of any RPC but a push.
/// Queries are a few KiB (selectors, names); prost decodes a message of empty repeated
/// strings to up to 50 times its size, so this bounds what decoding a query can take.
pub const QUERY_BODY_LIMIT: usize = 1 << 20;

/// A request with its body read in full (bounded).
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    pub fn params(&self) -> Vec<(String, String)> {
        form_urlencoded(&self.query)
    }
    pub fn param(&self, name: &str) -> Option<String> {
        self.params().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// Decodes an `application/x-www-form-urlencoded` string.
pub fn form_urlencoded(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tenant(s) of a request: `anonymous` unless multitenancy is on, then `X-Scope-OrgID`
/// (several as `a|b` for reads).
pub fn tenants(core: &Core, headers: &HeaderMap) -> Result<Vec<String>, RpcError> {
    if !core.cfg().multitenancy_enabled {
        return Ok(vec!["anonymous".to_string()]);
    }
    let raw = headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RpcError::new(Code::Unauthenticated, "no org id"))?;
    let mut out: Vec<String> = Vec::new();
    for t in raw.split('|') {
        validate_tenant(t)?;
        out.push(t.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The tenant of a write, which must name exactly one.
pub fn write_tenant(core: &Core, headers: &HeaderMap) -> Result<String, RpcError> {
    let mut t = tenants(core, headers)?;
    if t.len() != 1 {
        return Err(RpcError::invalid("multiple org ids are not allowed on writes"));
    }
    Ok(t.remove(0))
}

fn validate_tenant(t: &str) -> Result<(), RpcError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c);
    if t.is_empty() || t.len() > 150 || t == "." || t == ".." || !t.chars().all(ok_char) {
        return Err(RpcError::new(Code::Unauthenticated, format!("tenant ID {t:?} is not valid")));
    }
    Ok(())
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

fn route_of(path: &str) -> Route {
    if path.starts_with("/push.v1.") {
        Route::Push
    } else if path == "/ingest" || path == "/pyroscope/ingest" {
        Route::Ingest
    } else if path.starts_with("/querier.v1.") {
        Route::Query
    } else if path.starts_with("/pyroscope/render") || path.starts_with("/pyroscope/label-values") {
        Route::Render
    } else {
        Route::Other
    }
}

async fn handle(req: http::Request<Incoming>, core: Rc<Core>) -> Response {
    let started = Instant::now();
    let route = route_of(req.uri().path());
    let resp = dispatch(req, &core).await;
    let err = resp.status().as_u16() >= 400 || resp.headers().get("grpc-status").is_some_and(|v| v != "0");
    core.metrics().observe(route, started.elapsed().as_secs_f64(), err);
    resp
}

async fn dispatch(req: http::Request<Incoming>, core: &Rc<Core>) -> Response {
    if let Err(msg) = accept_header_ok(req.headers()) {
        return rpc::http_error(StatusCode::BAD_REQUEST, &msg);
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let proto = rpc::detect(&parts.headers);

    // Body limit: the ingestion body limit for writes, a small fixed one for everything else.
    let limit = if route_of(&path) == Route::Push || route_of(&path) == Route::Ingest {
        core.cfg().limits.body_limit_bytes()
    } else {
        QUERY_BODY_LIMIT
    };
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
        Some(Err(e)) => return body_error(proto.filter(|_| path.contains(".v1.")), e),
        None => {
            let msg = "reading the request body took longer than the read timeout (-server.http-server-read-timeout)";
            return match proto {
                Some(p) if path.contains(".v1.") => rpc::respond_error(p, &RpcError::new(Code::DeadlineExceeded, msg)),
                _ => rpc::http_error(StatusCode::REQUEST_TIMEOUT, msg),
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

    // Every RPC service path is /<package>.<Service>/<Method>.
    if r.path.matches('/').count() == 2
        && r.path[1..].contains('.')
        && r.path.split('/').nth(1).is_some_and(|s| s.contains('.'))
    {
        let Some(proto) = proto else {
            return rpc::http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported content type: RPCs take application/proto, application/json or application/grpc",
            );
        };
        if r.method != Method::POST {
            return rpc::respond_error(proto, &RpcError::new(Code::Unimplemented, "RPCs are served on POST only"));
        }
        return rpc_call(core, proto, &r).await;
    }
    match (r.method.clone(), r.path.as_str()) {
        (Method::POST, "/ingest" | "/pyroscope/ingest") => distributor::legacy::handle(core, &r).await,
        (Method::GET, "/pyroscope/render") => querier::render::render(core, &r).await,
        (Method::GET, "/pyroscope/render-diff") => querier::render::render_diff(core, &r).await,
        (Method::GET, "/pyroscope/label-values") => querier::render::label_values(core, &r).await,
        (Method::GET, "/ready") => ops::ready(core),
        (Method::GET, "/metrics") => ops::metrics(core).await,
        (Method::GET, "/config" | "/api/v1/status/config") => ops::config(core),
        (Method::GET, "/api/v1/status/buildinfo") => ops::buildinfo(),
        (Method::GET, "/ui") => {
            http::Response::builder().status(302).header("location", "/").body(RespBody::empty()).unwrap()
        }
        (Method::GET, "/" | "/explore" | "/comparison" | "/comparison-diff") => ops::ui(),
        (Method::GET, "/ring") => ops::ring(core),
        (Method::GET | Method::POST, "/ingester/flush") => ops::flush(core, &r).await,
        _ => rpc::http_error(StatusCode::NOT_FOUND, &format!("no route for {} {}", r.method, r.path)),
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
            return rpc::http_error(StatusCode::REQUEST_TIMEOUT, &format!("reading request body: {e}"));
        }
    };
    match rpc {
        Some(p) => rpc::respond_error(p, &RpcError::new(code, msg)),
        None => rpc::http_error(status, &msg),
    }
}

async fn rpc_call(core: &Rc<Core>, proto: Protocol, r: &Req) -> Response {
    let limit = if r.path.starts_with("/push.v1.") { core.cfg().limits.body_limit_bytes() } else { QUERY_BODY_LIMIT };
    let msg = match rpc::request_bytes(proto, &r.headers, r.body.clone(), limit.max(1)) {
        Ok(m) => m,
        Err(e) => return rpc::respond_error(proto, &e),
    };
    let call = Call { core, proto, headers: &r.headers, msg: &msg };
    let method = r.path.as_str();
    if let Some(m) = method.strip_prefix("/push.v1.PusherService/") {
        if m != "Push" {
            return call.unimplemented();
        }
        let result = match distributor::push::decode_request(proto, &msg, limit) {
            Ok(req) => distributor::push::push(core, &r.headers, req).await,
            Err(e) => Err(e),
        };
        return match result {
            Ok(resp) => rpc::respond(proto, &r.headers, &resp),
            Err(e) => rpc::respond_error(proto, &e),
        };
    }
    if let Some(m) = method.strip_prefix("/querier.v1.QuerierService/") {
        return querier::rpc::dispatch(&call, m).await;
    }
    match method {
        "/version.v1.Version/Version" => {
            call.unary(|_, _req: kiln_proto::version::v1::VersionRequest| async move { Ok(ops::version()) }).await
        }
        "/grpc.health.v1.Health/Check" => {
            call.unary(
                |c, _req: kiln_proto::grpc::health::v1::HealthCheckRequest| async move { Ok(ops::health(c.core)) },
            )
            .await
        }
        _ => call.unimplemented(),
    }
}

/// One decoded RPC call: runs a handler and encodes its answer in the caller's protocol.
pub struct Call<'a> {
    pub core: &'a Rc<Core>,
    pub proto: Protocol,
    pub headers: &'a HeaderMap,
    pub msg: &'a Bytes,
}

impl Call<'_> {
    pub async fn unary<'c, Req, Resp, F, Fut>(&'c self, f: F) -> Response
    where
        Req: prost::Message + Default + serde::de::DeserializeOwned,
        Resp: prost::Message + serde::Serialize,
        F: FnOnce(&'c Self, Req) -> Fut,
        Fut: Future<Output = Result<Resp, RpcError>>,
    {
        let req = match rpc::decode::<Req>(self.proto, self.msg) {
            Ok(r) => r,
            Err(e) => return rpc::respond_error(self.proto, &e),
        };
        match f(self, req).await {
            Ok(resp) => rpc::respond(self.proto, self.headers, &resp),
            Err(e) => rpc::respond_error(self.proto, &e),
        }
    }

    pub fn unimplemented(&self) -> Response {
        rpc::respond_error(self.proto, &RpcError::new(Code::Unimplemented, "method not implemented by kiln"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded() {
        let p = form_urlencoded("name=app.cpu%7Bk%3Dv%7D&from=1&x=a+b&bad=%zz&end=%4");
        assert_eq!(p[0], ("name".into(), "app.cpu{k=v}".into()));
        assert_eq!(p[2].1, "a b");
        assert_eq!(p[3].1, "%zz");
        assert_eq!(p[4].1, "%4");
    }

    #[test]
    fn accept_headers() {
        let mut h = HeaderMap::new();
        h.insert("accept", "application/json, text/plain; q=0.9, */*; allow-utf8-labelnames=true".parse().unwrap());
        assert!(accept_header_ok(&h).is_ok());
        h.insert("accept", "garbage".parse().unwrap());
        assert!(accept_header_ok(&h).is_err());
    }
}
