//! `-target` (parsed into `config::Target`): which components a process runs, and the
//! order they start in.
//!
//! Pyroscope's targets are `all` and one component each (`distributor`, `ingester`,
//! `querier`, `query-frontend`, `query-scheduler`, `store-gateway`, `compactor`). This
//! version runs the monolithic `all`: its components, in start order, are
//!
//! 1. the store-gateway: the bucket indexes are read, so replay knows which WAL records
//!    blocks already hold, and each block this instance serves is handed to the core that
//!    owns it; in a cluster, a store-gateway then keeps its blocks in step with the bucket
//!    (`store_gateway::sync`);
//! 2. the ingester: each core's WAL writer, then the replay of the WAL into the heads;
//! 3. the distributor and the querier, behind the edge: the process is started.
//!
//! Every core opens the port before step 1, but until step 3 it serves only the process's
//! own pages (`/ready` says what the start is doing and how far the WAL replay has got,
//! `/metrics`, `/config` …); every other route answers 503, so no client sees a partial
//! head.
//!
//! The query-frontend and the query-scheduler (cluster targets only) keep nothing on disk:
//! they start with the edge at step 3, as does a querier's pull loop over the schedulers.
//!
//! Stopping is the reverse: the edge refuses new work, then every core's WAL is synced.
use crate::api;
use crate::config::{Component, Config};
use crate::process::{block_termination_signals, fail, probe_port, raise_nofile_limit, wait_for_signal};
use crate::service::services::ServiceState;
use crate::{cluster, ingester, self_profiling, store_gateway};
use kiln_shards::ring::member::{Components, InstanceDesc, State};
use std::sync::Arc;

/// Starts the components of `cfg.target` in their order (see the module doc), and blocks
/// until a termination signal; then syncs every core's WAL and exits.
pub fn run(cfg: Config) {
    tracing::info!(components = %cfg.target, "starting");
    let started_at_s = store_gateway::sync::unix_now();
    let nofile = raise_nofile_limit();
    let cores = cfg.effective_cores();
    let tokens = cfg.ring_tokens_per_core;
    let target = cfg.target;
    let runs = |c: Component| target.runs(c);
    // In a cluster, this instance's cores own its own tokens, drawn from its token seed: the
    // core a distributor picks for a series is the one this ring picks (see `kiln_shards::ring`).
    let own = cfg.cluster_mode().then(|| own_entry(&cfg, cores));
    let seed = own.as_ref().map_or(0, |o| o.token_seed);
    let local_ring = kiln_shards::ring::Ring::of_instances(
        &[kiln_shards::ring::InstanceTokens { instance: 0, seed, cores: cores as u32 }],
        tokens,
    );
    // Only an ingester keeps a WAL.
    let wal = runs(Component::Ingester).then(|| WalSetup::prepare(&cfg, cores, &local_ring));
    // Termination signals are taken by the main thread alone (sigwait below); every core
    // thread inherits the blocked mask.
    let signals = block_termination_signals();
    let mut cfg = cfg;
    // Resolved here, on the main thread: a pinned core thread would count one CPU.
    cfg.cores = cores;
    cfg.max_head_bytes_per_core = Some(cfg.effective_max_head_bytes());
    cfg.http_conn_limit = Some(cfg.effective_http_conn_limit(nofile));
    cfg.max_inflight_body_bytes = Some(cfg.effective_max_inflight_body_bytes());
    crate::distributor::offload::configure(cfg.decode_offload_bytes);
    let backend = cfg.store_backend().unwrap_or_else(|e| fail(e));
    let store = kiln_io::store::Store::start_with_prefix(backend, &cfg.storage.prefix)
        .unwrap_or_else(|e| fail(format!("opening block storage: {e}")));
    let blocks = kiln_shards::ingester::cut::BlockConfig {
        store: store.clone(),
        max_block_duration: cfg.max_block_duration,
        max_block_bytes: cfg.effective_max_block_bytes() as usize,
        cache_bytes: cfg.effective_block_cache_bytes() as usize,
        rows_cache_bytes: cfg.effective_rows_cache_bytes() as usize,
        encode: Default::default(),
        instance: own.as_ref().map_or(String::new(), |o| o.id.clone()),
    };
    let serves = BlocksServed { cut_here: runs(Component::Ingester), shared: runs(Component::StoreGateway) };
    let blocks_instance = blocks.instance.clone();
    let core_cfg = kiln_shards::runtime::CoreConfig {
        wal: wal.as_ref().map(|w| w.config.clone()),
        max_head_bytes: cfg.max_head_bytes_per_core.unwrap_or(0) as usize,
        append_step_frames: cfg.append_step_frames,
        blocks: Some(blocks),
    };
    probe_ports(&cfg);
    // Gossip starts before the WAL replay: the others see this instance PENDING until its
    // heads hold everything it acknowledged, then ACTIVE.
    let cluster = own.clone().map(|own| start_cluster(&cfg, own));
    let profiler = self_profiling::SelfProfiler::start(&cfg); // before the cores, which register
    let shared = api::Shared::new(cfg, cluster.clone(), store.clone());
    log_start(&shared, cores, wal.as_ref().map(|w| w.dir.as_path()), &store);
    let s = shared.clone();
    // Core N is pinned to CPU N, except for a cluster member that takes fewer cores than the
    // machine has CPUs: several members on one host would all pin to the first CPUs and leave
    // the others idle (measured: perf/RESULTS.md, cluster section). A single node keeps its
    // pinning, which is worth ≈18% of push throughput at `-shards=1` on two CPUs.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cores >= cpus || !shared.cfg.cluster_mode();
    if pin {
        kiln_io::store::cores_pinned_to_first(cores.min(cpus));
    }
    let started =
        kiln_shards::runtime::start(cores, local_ring, pin, core_cfg, move |ctx| api::serve(ctx, Arc::clone(&s)));
    // The port opens now: while the steps below run, `/ready` says how far they have got
    // and every route but the process's own pages answers 503 (`Readiness::started`).
    drop(started.gate);
    let services = shared.services.clone();
    // 1. store-gateway: every block this instance serves to the core that owns it.
    if serves.cut_here || serves.shared {
        services.set(Component::StoreGateway.as_str(), ServiceState::Starting);
        let instance = blocks_instance.as_str();
        let bucket = store_gateway::Bucket::read(&store).unwrap_or_else(|e| fail(e.to_string()));
        let pinned = |_: &str, b: &kiln_io::store::bucket_index::BlockRef| serves.pinned(b, instance);
        let n = store_gateway::open_blocks(&bucket, &started.mesh, marked_since(&shared.cfg), &pinned)
            .unwrap_or_else(|e| fail(e.to_string()));
        tracing::info!(blocks = n, storage = %store.describe(), "blocks opened");
        // In a cluster, the store-gateway ring's share of every block in the bucket, and
        // (store-gateway or ingester) letting go of the blocks a compaction replaced.
        if let (Some(c), Some(own)) = (&cluster, &own) {
            let syncer = store_gateway::sync::Syncer {
                store: store.clone(),
                mesh: started.mesh.clone(),
                cluster: c.clone(),
                own: own.clone(),
                tokens_per_core: tokens,
                interval: shared.cfg.store_gateway_sync_interval,
                limits: shared.limits.clone(),
                share: serves.shared,
            };
            syncer.start(&bucket).unwrap_or_else(|e| fail(e.to_string()));
        }
        services.set(Component::StoreGateway.as_str(), ServiceState::Running);
        // 2. ingester: the WAL records no indexed block holds, into the heads.
        if let Some(w) = &wal {
            services.set(Component::Ingester.as_str(), ServiceState::Starting);
            w.replay(&started.mesh, &bucket.indexed(), &shared.readiness.replay);
            services.set(Component::Ingester.as_str(), ServiceState::Running);
        }
    }
    // 3. distributor, querier and the edge: every route is served from now on.
    for c in [Component::Distributor, Component::Querier, Component::QueryFrontend, Component::QueryScheduler] {
        services.set(c.as_str(), ServiceState::Running);
    }
    services.set("server", ServiceState::Running);
    shared.readiness.started();
    profiler.serving();
    if let Some(c) = &cluster {
        c.set_state(State::Active);
    }
    // 4. the compactor, on threads of its own at a lower priority than the cores.
    if runs(Component::Compactor) {
        services.set(Component::Compactor.as_str(), ServiceState::Starting);
        start_compactor(&shared, &started.mesh, cluster.clone(), started_at_s);
        services.set(Component::Compactor.as_str(), ServiceState::Running);
    }
    let sig = wait_for_signal(&signals);
    shut_down(sig, &shared, wal.is_some(), &started.mesh, &cluster);
}

/// Exits with an error when something already listens on the HTTP or the gRPC port.
fn probe_ports(cfg: &Config) {
    if let Err(e) = probe_port(&cfg.http_listen_address, cfg.http_listen_port) {
        fail(e);
    }
    if cfg.grpc_listen_port != 0 {
        if let Err(e) = probe_port(&cfg.http_listen_address, cfg.grpc_listen_port) {
            fail(format!("-server.grpc-listen-port: {e}"));
        }
    }
}

/// Stops in the reverse order of the start: the edge refuses new work, then every core's
/// WAL is synced (`has_wal`: the process runs an ingester), then the process leaves the
/// cluster and exits (0 when every WAL synced).
fn shut_down(
    sig: i32,
    shared: &api::Shared,
    has_wal: bool,
    mesh: &kiln_shards::runtime::Mesh,
    cluster: &Option<Arc<cluster::Cluster>>,
) -> ! {
    tracing::info!(signal = sig, "shutting down: refusing new work and syncing the WAL");
    if let Some(c) = cluster {
        c.set_state(State::Leaving);
    }
    shared.readiness.shut_down();
    shared.services.move_all(ServiceState::Running, ServiceState::Stopping);
    let clean = !has_wal || sync_wals(mesh);
    shared.services.move_all(ServiceState::Stopping, ServiceState::Terminated);
    if let Some(c) = cluster {
        cluster::gossip::leave(c);
    }
    tracing::info!(clean, "shutdown complete; every acknowledged push is in the WAL");
    std::process::exit(if clean { 0 } else { 1 });
}

/// The blocks marked for deletion since when a start still opens: in a cluster, those a
/// compaction marked a moment ago (until every store-gateway serves its output); alone, none
/// (the compactor swaps them out itself).
fn marked_since(cfg: &Config) -> i64 {
    if !cfg.cluster_mode() {
        return i64::MAX;
    }
    let grace = crate::config::retire_after(cfg.store_gateway_sync_interval);
    store_gateway::sync::unix_now() - grace.as_secs() as i64
}

/// Starts the compactor. Alone, it swaps what it compacts into this process's cores; in a
/// cluster, readers follow the bucket index (`store_gateway::sync`) and the compactor ring
/// splits the work.
fn start_compactor(
    shared: &api::Shared,
    mesh: &kiln_shards::runtime::Mesh,
    cluster: Option<Arc<cluster::Cluster>>,
    started_at_s: i64,
) {
    // Its own store thread, at a lower CPU and I/O priority than the one the cores use.
    let backend = shared.cfg.store_backend().unwrap_or_else(|e| fail(e));
    let store = kiln_io::store::Store::start_background(backend, &shared.cfg.storage.prefix)
        .unwrap_or_else(|e| fail(format!("opening block storage for the compactor: {e}")));
    let compactor = crate::compactor::Compactor {
        store,
        settings: shared.cfg.compactor.clone(),
        limits: shared.limits.clone(),
        mesh: cluster.is_none().then(|| mesh.clone()),
        cluster,
        started_at_s,
        scratch: shared.cfg.compactor_dir(),
    };
    compactor.start().unwrap_or_else(|e| fail(format!("starting the compactor: {e}")));
}

/// Which blocks of the bucket an instance serves (invariant I18): an ingester those it cut
/// itself, for as long as it runs (*pinned*); in a cluster, a store-gateway those the
/// store-gateway ring gives it, whoever cut them (`store_gateway::sync`); `all` both. Alone,
/// every block is this instance's, pinned.
#[derive(Clone, Copy)]
struct BlocksServed {
    cut_here: bool,
    shared: bool,
}

impl BlocksServed {
    /// Whether block `b` is pinned on this instance, whose cluster ID is `instance`.
    fn pinned(self, b: &kiln_io::store::bucket_index::BlockRef, instance: &str) -> bool {
        instance.is_empty() || (self.cut_here && b.ingester == instance)
    }
}

/// An ingester's WAL at start: locked, its generations prepared (see `kiln_io::wal`).
struct WalSetup {
    /// Held while the process runs: a second kiln on the same WAL exits at start.
    _lock: std::fs::File,
    dir: std::path::PathBuf,
    ring: String,
    gens: kiln_io::wal::Generations,
    config: kiln_shards::ingester::WalConfig,
}

impl WalSetup {
    fn prepare(cfg: &Config, cores: usize, local_ring: &kiln_shards::ring::Ring) -> WalSetup {
        let dir = cfg.wal_dir();
        let lock = kiln_io::wal::lock(&dir).unwrap_or_else(|e| fail(format!("locking the WAL: {e}")));
        let ring = ring_id(cores, cfg.ring_tokens_per_core, local_ring);
        let gens = match kiln_io::wal::prepare(&dir, &ring) {
            Ok(g) => g,
            Err(e) => fail(format!("preparing the WAL under {}: {e}", dir.display())),
        };
        let config = kiln_shards::ingester::WalConfig {
            dir: gens.next.1.clone(),
            segment_bytes: cfg.wal_segment_size_bytes,
            policy: cfg.wal_sync_policy.into(),
            preallocate: cfg.wal_preallocate,
            resume: gens.adopt,
        };
        WalSetup { _lock: lock, dir, ring, gens, config }
    }

    /// Replays the last generation into the heads (skipping what `indexed` blocks hold) and
    /// commits the new one.
    fn replay(
        &self,
        mesh: &kiln_shards::runtime::Mesh,
        indexed: &store_gateway::Indexed,
        progress: &crate::service::readiness::ReplayProgress,
    ) {
        let gens = &self.gens;
        if let Some((_, source)) = &gens.source {
            if let Err(e) = ingester::replay::replay(source, mesh, indexed, gens.adopt, progress) {
                fail(if gens.adopt { e.to_string() } else { rewrite_failed(gens, &self.dir, &self.ring, e) });
            }
        }
        // An adopted generation is the ready one already.
        if !gens.adopt {
            if let Err(e) = kiln_io::wal::commit(&gens.next.1, gens.source.as_ref().map(|s| s.1.as_path())) {
                fail(format!("committing the WAL generation {}: {e}", gens.next.1.display()));
            }
        }
    }
}

/// Syncs every core's WAL; whether every core did.
fn sync_wals(mesh: &kiln_shards::runtime::Mesh) -> bool {
    let mut waits = Vec::new();
    for c in 0..mesh.cores() {
        let (tx, rx) = flume::bounded(1);
        if mesh.send_blocking(c, kiln_shards::ingester::Msg::Sync { reply: tx }).is_ok() {
            waits.push(rx);
        }
    }
    // Every core is waited for, even after one failed.
    let synced: Vec<bool> = waits.into_iter().map(|rx| matches!(rx.recv(), Ok(Ok(_)))).collect();
    synced.iter().all(|s| *s)
}

/// One line with every address kiln serves and the settings that shape it (what an operator
/// checks first).
fn log_start(shared: &api::Shared, cores: usize, wal: Option<&std::path::Path>, store: &kiln_io::store::Store) {
    let c = &shared.cfg;
    tracing::info!(
        http = %format!("{}:{}", c.http_listen_address, c.http_listen_port),
        grpc = %if c.grpc_listen_port != 0 { format!("{}:{}", c.http_listen_address, c.grpc_listen_port) } else { "the http port".into() },
        gossip = %if c.cluster_mode() { format!("{}:{}", c.memberlist.bind_addr, c.memberlist.bind_port) } else { "off".into() },
        target = %c.target,
        cores,
        storage = %store.describe(),
        wal = %wal.map_or(String::from("none"), |w| w.display().to_string()),
        wal_sync = %c.wal_sync_policy,
        head_bytes_per_core = c.max_head_bytes_per_core.unwrap_or(0),
        max_block_duration = ?c.max_block_duration,
        replication_factor = c.replication_factor,
        multitenancy = c.multitenancy_enabled,
        conn_limit = shared.conns.limit(),
        inflight_body_bytes = shared.bodies.limit(),
        "kiln starting"
    );
}

/// Starts gossip for this instance's entry.
fn start_cluster(cfg: &Config, own: InstanceDesc) -> Arc<cluster::Cluster> {
    let c = cluster::gossip::start(cfg, own).unwrap_or_else(|e| fail(e));
    tracing::info!(
        id = %c.self_id,
        rf = cfg.replication_factor,
        "cluster mode: every series goes to up to rf ingesters; with fewer members, to all there are"
    );
    c
}

/// This instance's ring entry as it starts: PENDING until its WAL is replayed.
fn own_entry(cfg: &Config, cores: usize) -> InstanceDesc {
    let id = cfg.instance_id();
    let components: Vec<&str> = cfg.target.components().iter().map(|c| c.as_str()).collect();
    InstanceDesc {
        token_seed: cluster::entry::token_seed(&id),
        id,
        addr: cfg.advertised_http_addr(),
        zone: cfg.ring.availability_zone.clone(),
        components: components.join(",").parse::<Components>().unwrap_or_else(|e| fail(e.to_string())),
        state: State::Pending,
        cores: cores as u32,
        heartbeat_ms: 0,
    }
}

/// What a WAL generation records of the ring it was written with: a generation of the same
/// ring is adopted in place at start, another one is rewritten (see `kiln_io::wal`).
fn ring_id(cores: usize, tokens: u32, ring: &kiln_shards::ring::Ring) -> String {
    format!(
        "cores={cores} tokens-per-core={tokens} routing={} digest={:016x}\n",
        kiln_shards::ring::ROUTING_VERSION,
        ring.digest()
    )
}

/// The error of a failed rewrite of the WAL into a new generation (the ring changed), with
/// the space it takes. The partial new generation is removed; the source is left whole.
fn rewrite_failed(
    gens: &kiln_io::wal::Generations,
    wal_dir: &std::path::Path,
    ring: &str,
    err: ingester::replay::ReplayError,
) -> String {
    let Some((_, source)) = &gens.source else { return err.to_string() };
    if let Err(e) = std::fs::remove_dir_all(&gens.next.1) {
        tracing::warn!(dir = %gens.next.1.display(), error = %e, "removing the unfinished WAL generation failed; the next start removes it");
    }
    // Only a failed write is about space; damage is reported as it is.
    if !err.is_wal_write() {
        return err.to_string();
    }
    let note = kiln_io::wal::rewrite_note(source, gens.source_ring.as_deref(), ring, wal_dir);
    format!("rewriting the WAL failed: {err}. {note}")
}
