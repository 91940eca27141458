//! The edge: the HTTP server each core runs (HTTP/1.1 and cleartext HTTP/2 on one
//! SO_REUSEPORT port, `conn.rs` for each connection's deadlines and the connection cap,
//! `inflight.rs` for the bounded body read), the router built from the components' route
//! tables (`router.rs`), RPC framing (`rpc.rs`), request metrics (`metrics.rs`) and the
//! operational pages (`ops.rs`). The edge imports the components; none imports the edge.
pub mod conn;
pub mod inflight;
pub mod metrics;
pub mod ops;
pub mod process_metrics;
pub mod router;
pub mod rpc;

use crate::config::{Component, Config, TenantLimits};
use crate::distributor::metrics::DistributorMetrics;
use crate::distributor::Distributor;
use crate::ingester::client::IngesterClient;
use crate::ingester::Ingester;
use crate::querier::Querier;
use crate::service::readiness::Readiness;
use crate::service::services::{ServiceState, Services};
use hyper::body::Incoming;
use kiln_shards::runtime::{CoreContext, Mesh};
use metrics::CoreMetrics;
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// What every core shares, read-only or atomic: config, per-core metric slots, readiness,
/// the connection count and the in-flight body budget.
pub struct Shared {
    pub cfg: Config,
    pub limits: Arc<TenantLimits>,
    pub metrics: Vec<CoreMetrics>,
    pub distributor_metrics: Arc<[DistributorMetrics]>,
    pub conns: Arc<conn::Conns>,
    pub bodies: inflight::BodyBudget,
    pub timeouts: conn::Timeouts,
    pub readiness: Arc<Readiness>,
    pub started: Instant,
    /// The cluster this process is a member of; `None` when it runs alone.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The query-scheduler's queue, when this process runs it.
    pub scheduler: Option<Arc<crate::query_scheduler::Scheduler>>,
    /// The query-frontend's waiting parts and results cache, when this process runs it.
    pub frontend: Option<Arc<crate::query_frontend::FrontendShared>>,
    /// A querier's workers, when this process runs a querier in a cluster.
    pub workers: Option<Arc<crate::querier::worker::Workers>>,
    /// The bucket indexes a cluster's querier checks each query's blocks against.
    pub catalog: Option<Arc<crate::querier::coverage::Catalog>>,
    /// The process's object storage (its store thread), where tenant settings and ad hoc
    /// profiles are kept.
    pub store: kiln_io::store::Store,
    /// Each service this process runs and its state, moved by `target::run` (`/services`).
    pub services: Arc<Services>,
}

impl Shared {
    /// `cfg.http_conn_limit` and `cfg.max_inflight_body_bytes` are resolved by then (see
    /// `target::run`); unset they mean no limit here. `store`: the process's object storage,
    /// whose bucket indexes a cluster's queries are checked against.
    pub fn new(cfg: Config, cluster: Option<Arc<crate::cluster::Cluster>>, store: kiln_io::store::Store) -> Arc<Self> {
        let n = cfg.effective_cores();
        let timeouts = conn::Timeouts::new(
            cfg.http_server_read_timeout,
            cfg.http_server_write_timeout,
            cfg.http_server_idle_timeout,
        );
        let limits = Arc::new(cfg.tenant_limits());
        let rp = &cfg.read_path;
        let runs = |c| cfg.target.runs(c) && cluster.is_some();
        let scheduler = runs(Component::QueryScheduler).then(|| {
            Arc::new(crate::query_scheduler::Scheduler::new(
                rp.max_outstanding_requests_per_tenant,
                limits.clone(),
                cluster.clone(),
            ))
        });
        let frontend = runs(Component::QueryFrontend).then(|| {
            Arc::new(crate::query_frontend::FrontendShared::new(crate::query_frontend::Settings {
                addr: cfg.advertised_http_addr(),
                scheduler_address: rp.frontend_scheduler_address.clone(),
                cache_bytes: rp.cache_results.then_some(rp.results_cache_max_bytes),
                max_cache_freshness: rp.max_cache_freshness,
            }))
        });
        let workers = runs(Component::Querier).then(|| {
            Arc::new(crate::querier::worker::Workers::new(
                rp.querier_max_concurrent,
                rp.querier_scheduler_address.clone(),
            ))
        });
        // Blocks uploaded three syncs ago are held by the store-gateways that own them.
        let catalog = cluster.as_ref().map(|_| {
            let grace = crate::config::retire_after(cfg.store_gateway_sync_interval);
            Arc::new(crate::querier::coverage::Catalog::new(store.clone(), grace))
        });
        let services = Arc::new(process_services(&cfg, cluster.is_some()));
        Arc::new(Shared {
            services,
            catalog,
            conns: conn::Conns::new(cfg.http_conn_limit.unwrap_or(0)),
            bodies: inflight::BodyBudget::new(cfg.max_inflight_body_bytes.unwrap_or(0)),
            timeouts,
            limits,
            scheduler,
            frontend,
            workers,
            cfg,
            metrics: (0..n).map(|_| CoreMetrics::default()).collect(),
            distributor_metrics: (0..n).map(|_| DistributorMetrics::default()).collect(),
            readiness: Arc::new(Readiness::new(n)),
            started: Instant::now(),
            cluster,
            store,
        })
    }

    pub fn ready(&self) -> bool {
        self.readiness.ready()
    }
}

/// The services of `/services` in start order: gossip (started before everything else, so
/// already Running), the edge's `server`, then the components `-target` runs.
fn process_services(cfg: &Config, clustered: bool) -> Services {
    let mut names = Vec::new();
    if clustered {
        names.push("memberlist-kv");
    }
    names.push("server");
    names.extend(cfg.target.components().into_iter().map(Component::as_str));
    let services = Services::new(&names);
    services.set("memberlist-kv", ServiceState::Running);
    services
}

/// One core's edge: the components it routes to, each built with what it needs. Lives on
/// its core (`Rc`), never crosses threads.
pub struct Edge {
    pub id: u32,
    pub shared: Arc<Shared>,
    /// The cores, for the operational pages (`/metrics`, `/ring`).
    pub mesh: Mesh,
    pub distributor: Rc<Distributor>,
    pub querier: Rc<Querier>,
    pub ingester: Ingester,
    pub settings: crate::tenant_settings::TenantSettings,
    pub ad_hoc: crate::ad_hoc_profiles::AdHocProfiles,
}

impl Edge {
    fn new(id: u32, mesh: Mesh, shared: Arc<Shared>) -> Self {
        let cfg = &shared.cfg;
        // In a cluster, one pool of connections to the other instances serves this core's
        // replicated writes and replica queries alike.
        let pool: Rc<crate::cluster::pool::Pool> = Rc::default();
        let ingesters = match &shared.cluster {
            Some(c) => IngesterClient::replicated(
                mesh.clone(),
                Rc::new(crate::ingester::replicate::Replicator::new(c.clone(), pool.clone())),
            ),
            None => IngesterClient::local(mesh.clone()),
        };
        let replicas = || {
            shared.cluster.as_ref().map(|c| crate::querier::replicas::ReplicaReader {
                cluster: c.clone(),
                pool: pool.clone(),
                catalog: shared.catalog.clone(),
            })
        };
        let distributor = Rc::new(Distributor::new(
            id,
            mesh.cores(),
            ingesters.clone(),
            shared.limits.clone(),
            cfg.multitenancy_enabled,
            shared.distributor_metrics.clone(),
            shared.cluster.clone(),
        ));
        // The querier that evaluates: over this process's cores, or the cluster's replicas.
        let direct =
            Rc::new(Querier::new(mesh.clone(), shared.limits.clone(), cfg.multitenancy_enabled, replicas(), None));
        if let (Some(w), Some(c)) = (&shared.workers, &shared.cluster) {
            crate::querier::worker::start(id, mesh.cores() as u32, direct.clone(), c.clone(), pool.clone(), w.clone());
        }
        // A query-frontend answers the public API with the same querier code, evaluating
        // through the schedulers.
        let querier = match (&shared.frontend, &shared.cluster) {
            (Some(f), Some(c)) => {
                let f = crate::query_frontend::Frontend::new(f.clone(), c.clone(), pool.clone(), shared.limits.clone());
                Rc::new(Querier::new(
                    mesh.clone(),
                    shared.limits.clone(),
                    cfg.multitenancy_enabled,
                    None,
                    Some(Rc::new(f)),
                ))
            }
            _ => direct,
        };
        let ingester =
            Ingester::new(ingesters, shared.readiness.clone(), shared.limits.clone(), shared.cluster.clone());
        let settings = crate::tenant_settings::TenantSettings::new(shared.store.clone(), cfg.multitenancy_enabled);
        let ad_hoc = crate::ad_hoc_profiles::AdHocProfiles::new(
            shared.store.clone(),
            shared.limits.clone(),
            cfg.multitenancy_enabled,
        );
        Edge { id, mesh, distributor, querier, ingester, settings, ad_hoc, shared }
    }

    pub fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    pub fn metrics(&self) -> &CoreMetrics {
        &self.shared.metrics[self.id as usize]
    }
}

/// Accepts and serves connections on this core until the process exits: on the HTTP port,
/// and on `-server.grpc-listen-port` when set (the same APIs, as Pyroscope's gRPC port).
/// Runs on the core's thread, which the self-profiler samples from here on.
pub async fn serve(ctx: CoreContext, shared: Arc<Shared>) {
    crate::self_profiling::register_current_thread();
    // The port opens once the process has started its cores; until its start finishes
    // (the WAL replayed into the heads) the router serves only the process's own pages.
    let _ = ctx.gate.recv_async().await;
    let core = Rc::new(Edge::new(ctx.core, ctx.mesh, shared.clone()));
    let listen = |port: u16| {
        let addr = format!("{}:{}", shared.cfg.http_listen_address, port);
        let opts = monoio::net::ListenerOpts::new().reuse_port(true).reuse_addr(true);
        match monoio::net::TcpListener::bind_with_config(addr.as_str(), &opts) {
            Ok(l) => {
                tracing::debug!(core = ctx.core, %addr, "listening");
                l
            }
            Err(e) => {
                tracing::error!(core = ctx.core, %addr, error = %e, "cannot listen");
                std::process::exit(1);
            }
        }
    };
    let listener = listen(shared.cfg.http_listen_port);
    let grpc = (shared.cfg.grpc_listen_port != 0).then(|| listen(shared.cfg.grpc_listen_port));
    shared.readiness.core_listening();
    let mut builder = hyper_util::server::conn::auto::Builder::new(crate::cluster::pool::LocalExec);
    builder.http2().max_concurrent_streams(1024);
    let builder = Rc::new(builder);
    if let Some(grpc) = grpc {
        monoio::spawn(accept_loop(grpc, core.clone(), builder.clone()));
    }
    accept_loop(listener, core, builder).await;
}

type ConnBuilder = hyper_util::server::conn::auto::Builder<crate::cluster::pool::LocalExec>;

/// Accepts connections on `listener` and serves each on this core.
async fn accept_loop(listener: monoio::net::TcpListener, core: Rc<Edge>, builder: Rc<ConnBuilder>) {
    let shared = core.shared.clone();
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
                    let resp = router::handle(req, core).await;
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
