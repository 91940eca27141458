//! Operational endpoints: readiness, metrics, config, build info, version, health, the ring,
//! the services' states and a small web page. They are the process's, not a component's: served by the edge.
use super::{metrics, Edge};
use crate::cluster::now_ms;
use crate::cluster::pages::{self, Which};
use crate::service::body::{text, RespBody, Response};
use crate::service::call::{Call, Reply};
use crate::service::routes::{Class, HttpRoute, RpcService};
use crate::service::Req;
use http::Method;
use kiln_proto::grpc::health::v1::{health_check_response::ServingStatus, HealthCheckResponse};
use kiln_proto::version::v1::VersionResponse;
use kiln_shards::ring::member::{Components, InstanceDesc, State};
use kiln_shards::ring::snapshot::Snapshot;
use kiln_shards::runtime::{CoreStats, Msg};
use std::fmt::Write;
use std::rc::Rc;

/// The operational routes.
pub enum Endpoint {
    Ready,
    Metrics,
    Config,
    BuildInfo,
    UiRedirect,
    Ui,
    UiAsset(&'static str),
    Ring(Which),
    Memberlist,
    Services,
}

const GET: &[Method] = &[Method::GET];
const GET_POST: &[Method] = &[Method::GET, Method::POST];

pub static HTTP: &[HttpRoute<Endpoint>] = &[
    HttpRoute { methods: GET, paths: &["/ready"], class: Class::Other, endpoint: Endpoint::Ready },
    HttpRoute { methods: GET, paths: &["/metrics"], class: Class::Other, endpoint: Endpoint::Metrics },
    HttpRoute {
        methods: GET,
        paths: &["/config", "/api/v1/status/config"],
        class: Class::Other,
        endpoint: Endpoint::Config,
    },
    HttpRoute {
        methods: GET,
        paths: &["/api/v1/status/buildinfo"],
        class: Class::Other,
        endpoint: Endpoint::BuildInfo,
    },
    HttpRoute { methods: GET, paths: &["/ui"], class: Class::Other, endpoint: Endpoint::UiRedirect },
    HttpRoute {
        methods: GET,
        paths: &["/", "/explore", "/comparison", "/comparison-diff"],
        class: Class::Other,
        endpoint: Endpoint::Ui,
    },
    HttpRoute { methods: GET, paths: &["/assets/app.js"], class: Class::Other, endpoint: Endpoint::UiAsset("app.js") },
    HttpRoute {
        methods: GET,
        paths: &["/assets/app.css"],
        class: Class::Other,
        endpoint: Endpoint::UiAsset("app.css"),
    },
    HttpRoute { methods: GET_POST, paths: &["/ring"], class: Class::Other, endpoint: Endpoint::Ring(Which::Ingester) },
    HttpRoute {
        methods: GET_POST,
        paths: &["/distributor/ring"],
        class: Class::Other,
        endpoint: Endpoint::Ring(Which::Distributor),
    },
    HttpRoute {
        methods: GET_POST,
        paths: &["/store-gateway/ring"],
        class: Class::Other,
        endpoint: Endpoint::Ring(Which::StoreGateway),
    },
    HttpRoute {
        methods: GET_POST,
        paths: &["/compactor/ring"],
        class: Class::Other,
        endpoint: Endpoint::Ring(Which::Compactor),
    },
    HttpRoute { methods: GET, paths: &["/memberlist"], class: Class::Other, endpoint: Endpoint::Memberlist },
    HttpRoute { methods: GET, paths: &["/services"], class: Class::Other, endpoint: Endpoint::Services },
];

pub static RPC: &[RpcService] = &[
    RpcService { name: "version.v1.Version", class: Class::Other },
    RpcService { name: "grpc.health.v1.Health", class: Class::Other },
];

pub async fn serve_http(core: &Rc<Edge>, endpoint: &Endpoint, r: &Req) -> Response {
    match endpoint {
        Endpoint::Ready => ready(core),
        Endpoint::Metrics => metrics(core).await,
        Endpoint::Config => config(core),
        Endpoint::BuildInfo => buildinfo(),
        Endpoint::UiRedirect => {
            http::Response::builder().status(302).header("location", "/").body(RespBody::empty()).unwrap()
        }
        Endpoint::Ui => ui(),
        Endpoint::UiAsset(name) => ui_asset(name, r),
        Endpoint::Ring(which) => ring(core, *which, r),
        Endpoint::Memberlist => {
            let (snap, self_id) = membership(core);
            let page = pages::memberlist_page(&snap, now_ms(), &|d| heartbeat(core, d), &self_id);
            text(200, "text/html; charset=utf-8", page)
        }
        Endpoint::Services => services(core),
    }
}

/// `/services`: each service this process runs and its state, as Pyroscope's page shows them.
pub fn services(core: &Edge) -> Response {
    let mut page = String::from(
        "<!DOCTYPE html>\n<html>\n<head><meta charset=\"UTF-8\"><title>Services' status</title></head>\n<body>\n<h1>Services' status</h1>\n<table border=\"1\">\n<thead><tr><th>Service</th><th>Status</th></tr></thead>\n<tbody>\n",
    );
    for (name, state) in core.shared.services.states() {
        let _ = writeln!(page, "<tr><td>{name}</td><td>{}</td></tr>", state.as_str());
    }
    page.push_str("</tbody>\n</table>\n</body>\n</html>\n");
    text(200, "text/html; charset=utf-8", page)
}

pub async fn serve_rpc(core: &Rc<Edge>, rpc: &Call<'_>, service: &str, method: &str) -> Reply {
    match (service, method) {
        ("version.v1.Version", "Version") => {
            rpc.unary(|_: kiln_proto::version::v1::VersionRequest| async move { Ok(version()) }).await
        }
        ("grpc.health.v1.Health", "Check") => {
            rpc.unary(|_: kiln_proto::grpc::health::v1::HealthCheckRequest| async move { Ok(health(core)) }).await
        }
        _ => rpc.unimplemented(),
    }
}

pub fn ready(core: &Edge) -> Response {
    if !core.shared.ready() {
        return text(503, "text/plain; charset=utf-8", format!("not ready: {}", core.shared.readiness.why_not_ready()));
    }
    // A query-frontend can answer nothing until it has a scheduler to enqueue at.
    if let (Some(_), Some(c)) = (&core.shared.frontend, &core.shared.cluster) {
        if crate::query_frontend::schedulers(c, &core.cfg().read_path.frontend_scheduler_address).is_empty() {
            return text(503, "text/plain; charset=utf-8", "not ready: no query-scheduler in the ring yet");
        }
    }
    text(200, "text/plain; charset=utf-8", "ready")
}

pub async fn metrics(core: &Rc<Edge>) -> Response {
    let mut out = String::new();
    crate::distributor::metrics::render(&core.shared.distributor_metrics, &mut out);
    metrics::render(&core.shared.metrics, &mut out);
    core.shared.conns.render(&mut out);
    core.shared.bodies.render(&mut out);
    match core.mesh.broadcast(|reply| Msg::Stats { reply }).await {
        Ok(stats) => {
            render_core_stats(&stats, &mut out);
            render_tenant_series(&stats, &mut out);
        }
        Err(e) => {
            return text(503, "text/plain", e.to_string());
        }
    }
    render_bounds(&mut out);
    render_start(&core.shared.readiness, &mut out);
    if let Some(c) = &core.shared.cluster {
        c.render_metrics(&mut out);
    }
    if let Some(c) = &core.shared.catalog {
        c.render_metrics(&mut out);
    }
    if let Some(s) = &core.shared.scheduler {
        s.render_metrics(&mut out);
    }
    if let Some(f) = &core.shared.frontend {
        f.render_metrics(&mut out);
    }
    if let Some(w) = &core.shared.workers {
        w.render_metrics(&mut out);
    }
    kiln_io::store::render_metrics(&mut out);
    kiln_io::wal::spare::render_metrics(&mut out);
    if core.shared.cfg.target.runs(crate::config::Component::Compactor) {
        crate::compactor::render_metrics(&mut out);
    }
    if core.shared.cluster.is_some() {
        crate::store_gateway::sync::render_metrics(&mut out);
    }
    crate::self_profiling::render_metrics(&mut out);
    kiln_io::invariant::render(&mut out);
    let _ = writeln!(out, "# HELP kiln_build_info Build information.\n# TYPE kiln_build_info gauge");
    let _ = writeln!(out, "kiln_build_info{{version=\"{}\",revision=\"{REVISION}\"}} 1", env!("CARGO_PKG_VERSION"));
    // The same under Pyroscope's name and labels (its dashboards show the running version).
    let _ = writeln!(
        out,
        "# HELP pyroscope_build_info A metric with a constant '1' value labeled by version, revision, branch, and goversion from which pyroscope was built.\n# TYPE pyroscope_build_info gauge"
    );
    let _ = writeln!(
        out,
        "pyroscope_build_info{{version=\"{}\",revision=\"{REVISION}\",branch=\"{BRANCH}\",goversion=\"\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    super::process_metrics::render(&mut out);
    text(200, "text/plain; version=0.0.4; charset=utf-8", out)
}

/// The rows cache's figures (`store_gateway::rows_cache`): bytes, hits, misses, evictions.
fn rows_cache(s: &CoreStats) -> (usize, u64, u64, u64) {
    let g = &s.store_gateway;
    (g.rows_cache_bytes, g.rows_cache_hits, g.rows_cache_misses, g.rows_cache_evictions)
}

/// A per-core figure: its name, type, help and how it is read from a core's `CoreStats`.
type Gauge = (&'static str, &'static str, &'static str, fn(&CoreStats) -> f64);

/// The figures every core reports, one Prometheus series per core (`render_core_stats`).
const CORE_GAUGES: [Gauge; 29] = [
    ("kiln_head_series", "gauge", "Series in the head.", |s| s.ingester.series as f64),
    ("kiln_head_profiles", "gauge", "Profiles in the head.", |s| s.ingester.profiles as f64),
    ("kiln_head_samples", "gauge", "Samples in the head.", |s| s.ingester.samples as f64),
    ("kiln_head_stacktraces", "gauge", "Distinct stack trace nodes in the head.", |s| s.ingester.stacks as f64),
    ("kiln_head_bytes", "gauge", "Approximate heap bytes held by the head.", |s| s.ingester.head_bytes as f64),
    ("kiln_head_frozen", "gauge", "Heads cut and waiting for their block upload.", |s| s.ingester.frozen_heads as f64),
    ("kiln_blocks_owned", "gauge", "Blocks this core serves queries from.", |s| s.store_gateway.blocks as f64),
    (
        "kiln_store_gateway_blocks_owned",
        "gauge",
        "Blocks the store-gateway ring gives this core (the last sync).",
        |s| s.store_gateway.synced as f64,
    ),
    ("kiln_block_cache_bytes", "gauge", "Bytes of opened block parts cached.", |s| {
        s.store_gateway.block_cache_bytes as f64
    }),
    ("kiln_block_rows_cache_bytes", "gauge", "Decoded row groups cached.", |s| rows_cache(s).0 as f64),
    ("kiln_block_rows_cache_hits_total", "counter", "Row groups found decoded.", |s| rows_cache(s).1 as f64),
    ("kiln_block_rows_cache_misses_total", "counter", "Row groups decoded.", |s| rows_cache(s).2 as f64),
    ("kiln_block_rows_cache_evictions_total", "counter", "Row groups evicted.", |s| rows_cache(s).3 as f64),
    ("kiln_blocks_written_total", "counter", "Blocks written by this core.", |s| s.ingester.blocks_written as f64),
    ("kiln_block_bytes_uploaded_total", "counter", "Block bytes uploaded by this core.", |s| {
        s.ingester.bytes_uploaded as f64
    }),
    ("kiln_pushes_pending", "gauge", "Pushes appended on this core whose outcome is not known yet.", |s| {
        s.ingester.pending_pushes as f64
    }),
    (
        "kiln_pushes_rolled_back_total",
        "counter",
        "Pushes taken out of this core's head again because they were refused (another core, the WAL).",
        |s| s.ingester.rolled_back as f64,
    ),
    ("kiln_block_cuts_suspended", "gauge", "1 while this core's last block cut failed and waits for its retry.", |s| {
        u8::from(s.ingester.cuts_suspended) as f64
    }),
    ("kiln_block_cut_retries_total", "counter", "Retries of failed block cuts by this core.", |s| {
        s.ingester.cut_retries as f64
    }),
    (
        "kiln_block_upload_retries_total",
        "counter",
        "Failed block uploads and bucket index writes retried by this core (retried until they succeed).",
        |s| s.ingester.upload_retries as f64,
    ),
    ("kiln_wal_pending_bytes", "gauge", "Bytes of WAL records waiting for this core's WAL writer.", |s| {
        s.ingester.wal_pending_bytes as f64
    }),
    ("kiln_wal_pending_writes", "gauge", "Pushes, syncs and aborts waiting for this core's WAL writer.", |s| {
        s.ingester.wal_pending_waiters as f64
    }),
    (
        "kiln_wal_busy_refusals_total",
        "counter",
        "Pushes refused (503) because this core's WAL had its most bytes or writes waiting.",
        |s| s.ingester.wal_busy_refused as f64,
    ),
    ("kiln_wal_syncs_in_flight", "gauge", "WAL syncs this core has in flight.", |s| {
        s.ingester.wal_syncs_in_flight as f64
    }),
    (
        "kiln_wal_abort_retries_total",
        "counter",
        "Abort records queued again after their WAL write failed (retried until written).",
        |s| s.ingester.abort_retries as f64,
    ),
    (
        "kiln_ingester_stepped_appends",
        "gauge",
        "Large pushes whose stacks this core is interning in steps between its other messages.",
        |s| s.ingester.stepped_appends as f64,
    ),
    (
        "kiln_ingester_stepped_appends_total",
        "counter",
        "Pushes whose stacks this core interned in steps (more than -ingester.append-step-frames frames).",
        |s| s.ingester.stepped_appends_total as f64,
    ),
    ("kiln_block_queries_in_flight", "gauge", "Block queries this core is running.", |s| {
        s.store_gateway.block_queries as f64
    }),
    (
        "kiln_block_queries_refused_total",
        "counter",
        "Block queries refused (503) because this core ran its most at once.",
        |s| s.store_gateway.block_queries_refused as f64,
    ),
];

/// Every core's figures (`CoreStats`), one Prometheus series per core.
fn render_core_stats(stats: &[CoreStats], out: &mut String) {
    for (name, kind, help, f) in CORE_GAUGES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in stats {
            let _ = writeln!(out, "{name}{{core=\"{}\"}} {}", s.core, f(s));
        }
    }
}

/// Tenants `kiln_ingester_head_series` names: those with the most series (ties by name); the
/// others' series are summed under `tenant="#others"` (no tenant ID holds a `#`), so the label
/// set stays bounded however many tenants write.
pub const HEAD_SERIES_TENANTS: usize = 256;

/// The head series of each tenant on this process, summed over its cores.
fn render_tenant_series(stats: &[CoreStats], out: &mut String) {
    let mut per: rustc_hash::FxHashMap<&str, usize> = Default::default();
    for s in stats {
        for (t, n) in &s.ingester.tenant_series {
            *per.entry(t.as_ref()).or_default() += n;
        }
    }
    let mut tenants: Vec<(&str, usize)> = per.into_iter().collect();
    tenants.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let name = "kiln_ingester_head_series";
    let _ = writeln!(
        out,
        "# HELP {name} Series in this ingester's heads per tenant, over its cores (the {HEAD_SERIES_TENANTS} largest tenants; the rest as tenant=\"#others\").\n# TYPE {name} gauge"
    );
    for (t, n) in tenants.iter().take(HEAD_SERIES_TENANTS) {
        let _ = writeln!(out, "{name}{{tenant=\"{t}\"}} {n}");
    }
    if tenants.len() > HEAD_SERIES_TENANTS {
        let others: usize = tenants[HEAD_SERIES_TENANTS..].iter().map(|(_, n)| n).sum();
        let _ = writeln!(out, "{name}{{tenant=\"#others\"}} {others}");
    }
    // Pyroscope's head size by type and tenant, the same tenants shown (the rest summed).
    let mut sizes: rustc_hash::FxHashMap<&str, [usize; 6]> = Default::default();
    for s in stats {
        for (t, b) in &s.ingester.tenant_head_bytes {
            let e = sizes.entry(t.as_ref()).or_default();
            e.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
    }
    let shown: rustc_hash::FxHashSet<&str> = tenants.iter().take(HEAD_SERIES_TENANTS).map(|(t, _)| *t).collect();
    let mut others = [0usize; 6];
    let name = "pyroscope_head_size_bytes";
    let _ = writeln!(out, "# HELP {name} Size of a section of the in-memory head, in bytes.\n# TYPE {name} gauge");
    let mut rows: Vec<(&str, [usize; 6])> = sizes.into_iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (t, b) in rows {
        if !shown.contains(t) {
            others.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            continue;
        }
        for (ty, v) in kiln_shards::ingester::HEAD_SIZE_TYPES.iter().zip(b) {
            let _ = writeln!(out, "{name}{{component=\"ingester\",tenant=\"{t}\",type=\"{ty}\"}} {v}");
        }
    }
    if tenants.len() > HEAD_SERIES_TENANTS {
        for (ty, v) in kiln_shards::ingester::HEAD_SIZE_TYPES.iter().zip(others) {
            let _ = writeln!(out, "{name}{{component=\"ingester\",tenant=\"#others\",type=\"{ty}\"}} {v}");
        }
    }
}

/// Whether the process is ready, and how far its WAL replay has got (the port opens before
/// the replay, so these answer during it).
fn render_start(r: &crate::service::readiness::Readiness, out: &mut String) {
    let (done, total, _) = r.replay.get();
    let rows = [
        (
            "kiln_ready",
            "1 once the start finished and every core serves, 0 while starting or stopping.",
            u64::from(r.ready()),
        ),
        ("kiln_wal_replay_bytes", "Bytes of WAL segments replayed into the heads at this start.", done),
        ("kiln_wal_replay_size_bytes", "Bytes of WAL segments this start replays.", total),
    ];
    for (name, help, v) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
}

/// The bounds of the per-core queues and task sets, the same on every core.
fn render_bounds(out: &mut String) {
    use kiln_shards::ingester::wal;
    let rows: [(&str, &str, usize); 4] = [
        (
            "kiln_wal_pending_bytes_limit",
            "Bytes of WAL records a core queues before refusing pushes.",
            wal::MAX_PENDING_BYTES,
        ),
        (
            "kiln_wal_pending_writes_limit",
            "Writes a core's WAL queues before refusing pushes.",
            wal::MAX_PENDING_WAITERS,
        ),
        ("kiln_wal_syncs_in_flight_limit", "WAL syncs a core runs at once.", wal::MAX_SYNCS_IN_FLIGHT),
        (
            "kiln_block_queries_in_flight_limit",
            "Block queries a core runs at once.",
            kiln_shards::store_gateway::MAX_BLOCK_QUERIES,
        ),
    ];
    for (name, help, v) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
}

pub fn config(core: &Edge) -> Response {
    text(200, "text/plain; charset=utf-8", core.cfg().resolved().to_yaml())
}

pub fn buildinfo() -> Response {
    let body = serde_json::json!({
        "status": "success",
        "data": {
            "version": env!("CARGO_PKG_VERSION"),
            "revision": REVISION,
            "branch": BRANCH,
            "buildUser": "",
            "buildDate": BUILD_DATE,
            "goVersion": "",
        }
    });
    text(200, "application/json", serde_json::to_vec(&body).expect("json"))
}

/// The git revision the binary was built from (`build.rs`), `unknown` when built without git.
pub const REVISION: &str = env!("KILN_REVISION");
/// The git branch the binary was built from, `unknown` without git (`HEAD` when detached).
pub const BRANCH: &str = env!("KILN_BRANCH");
/// When `build.rs` stamped the binary, RFC 3339 UTC (`SOURCE_DATE_EPOCH` when set).
pub const BUILD_DATE: &str = env!("KILN_BUILD_DATE");

/// What `-version` prints, in the shape of Pyroscope's (Prometheus' `version.Print`).
pub fn version_text() -> String {
    format!(
        "kiln, version {} (branch: {BRANCH}, revision: {REVISION})\n  build date:       {BUILD_DATE}\n  rust version:     {}\n  platform:         {}/{}\n",
        env!("CARGO_PKG_VERSION"),
        env!("KILN_RUSTC_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
    )
}

pub fn version() -> VersionResponse {
    VersionResponse { querier_api: 1 }
}

pub fn health(core: &Edge) -> HealthCheckResponse {
    let status = if core.shared.ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
    HealthCheckResponse { status: status as i32 }
}

/// A ring page; a POST with `forget=<id>` first asks every member to forget that one.
pub fn ring(core: &Edge, which: Which, r: &Req) -> Response {
    let mut note = String::new();
    if r.method == Method::POST {
        let Some(id) = pages::forget_id(&r.body) else {
            return text(400, "text/plain; charset=utf-8", "a POST to a ring page takes forget=<instance id>");
        };
        match &core.shared.cluster {
            Some(c) if id != c.self_id => {
                c.forget(&id);
                note =
                    format!("<p>Forgetting {}: every member drops it within a few gossip rounds.</p>", pages::esc(&id));
            }
            Some(_) => {
                return text(400, "text/plain; charset=utf-8", "an instance cannot forget itself: stop it instead")
            }
            None => {
                return text(400, "text/plain; charset=utf-8", "this instance runs alone: there is no one to forget")
            }
        }
    }
    let (snap, _) = membership(core);
    let tokens = core.cfg().ring_tokens_per_core;
    let rf = if which == Which::StoreGateway { core.cfg().store_gateway_replication_factor } else { 1 };
    let page = pages::ring_page(which, &snap, now_ms(), &|d| heartbeat(core, d), tokens, rf, &note);
    text(200, "text/html; charset=utf-8", page)
}

/// When `d`'s heartbeat was last seen, as of the last gossip round (this process alone: now).
fn heartbeat(core: &Edge, d: &InstanceDesc) -> u64 {
    match &core.shared.cluster {
        Some(c) => c.last_heartbeat(&d.id).unwrap_or(d.heartbeat_ms),
        None => now_ms(),
    }
}

/// The membership this instance sees, and its own ID: the cluster's snapshot, or a snapshot of
/// this process alone.
fn membership(core: &Edge) -> (std::sync::Arc<Snapshot>, String) {
    if let Some(c) = &core.shared.cluster {
        return (c.snapshot(), c.self_id.clone());
    }
    let cfg = core.cfg();
    let id = cfg.instance_id();
    let me = InstanceDesc {
        id: id.clone(),
        addr: cfg.advertised_http_addr(),
        zone: cfg.ring.availability_zone.clone(),
        components: Components(
            Components::DISTRIBUTOR | Components::INGESTER | Components::QUERIER | Components::STORE_GATEWAY,
        ),
        state: if core.shared.ready() { State::Active } else { State::Pending },
        cores: core.mesh.cores() as u32,
        token_seed: 0,
        heartbeat_ms: now_ms(),
    };
    (std::sync::Arc::new(Snapshot::build(vec![me], now_ms(), &crate::cluster::ring_config(cfg))), id)
}

/// The web UI (`ui/`, built into `ui/dist/`, committed): its page, for every view's path.
/// The page is revalidated on each load; it names its assets with their content hash
/// (`?v=`), so those may be cached for good.
pub fn ui() -> Response {
    static_file("text/html; charset=utf-8", "no-cache", UI_PAGE.as_bytes())
}

const UI_PAGE: &str = include_str!("../../ui/dist/index.html");

/// The assets' version: the content hash the page names them by (`app.js?v=<hash>`).
fn ui_version() -> &'static str {
    let at = UI_PAGE.find("app.js?v=").map_or(UI_PAGE.len(), |i| i + "app.js?v=".len());
    let rest = &UI_PAGE[at..];
    &rest[..rest.find('"').unwrap_or(0)]
}

/// `/assets/app.js` and `/assets/app.css`: immutable when asked for by the page's versioned
/// name, revalidated otherwise.
pub fn ui_asset(name: &str, r: &Req) -> Response {
    let current = r.param("v").is_some_and(|v| !v.is_empty() && v == ui_version());
    let cache = if current { "public, max-age=31536000, immutable" } else { "no-cache" };
    match name {
        "app.js" => static_file("text/javascript; charset=utf-8", cache, include_bytes!("../../ui/dist/app.js")),
        _ => static_file("text/css; charset=utf-8", cache, include_bytes!("../../ui/dist/app.css")),
    }
}

fn static_file(content_type: &str, cache: &str, body: &'static [u8]) -> Response {
    http::Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("cache-control", cache)
        .header("x-content-type-options", "nosniff")
        .body(RespBody::full(bytes::Bytes::from_static(body)))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_shards::ingester::IngesterStats;
    use kiln_shards::store_gateway::StoreGatewayStats;

    fn core(core: u32, tenants: &[(&str, usize)]) -> CoreStats {
        let tenant_series = tenants.iter().map(|(t, n)| (std::sync::Arc::from(*t), *n)).collect();
        CoreStats {
            core,
            ingester: IngesterStats { tenant_series, ..Default::default() },
            store_gateway: StoreGatewayStats::default(),
        }
    }

    fn lines(out: &str) -> Vec<&str> {
        out.lines().filter(|l| l.starts_with("kiln_ingester_head_series{")).collect()
    }

    #[test]
    fn head_series_per_tenant_sum_over_cores_and_stay_bounded() {
        let mut out = String::new();
        render_tenant_series(&[core(0, &[("a", 3), ("b", 1)]), core(1, &[("a", 2)])], &mut out);
        assert_eq!(
            lines(&out),
            ["kiln_ingester_head_series{tenant=\"a\"} 5", "kiln_ingester_head_series{tenant=\"b\"} 1"]
        );

        let many: Vec<(String, usize)> = (0..HEAD_SERIES_TENANTS + 10).map(|i| (format!("t{i:04}"), 1 + i)).collect();
        let refs: Vec<(&str, usize)> = many.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        let mut out = String::new();
        render_tenant_series(&[core(0, &refs)], &mut out);
        let got = lines(&out);
        assert_eq!(got.len(), HEAD_SERIES_TENANTS + 1);
        // The largest are named; the ten smallest (1..=10 series) are summed.
        assert_eq!(
            got[0],
            format!(
                "kiln_ingester_head_series{{tenant=\"t{:04}\"}} {}",
                HEAD_SERIES_TENANTS + 9,
                HEAD_SERIES_TENANTS + 10
            )
        );
        assert_eq!(*got.last().unwrap(), "kiln_ingester_head_series{tenant=\"#others\"} 55");
    }
}
