//! kiln: a thread-per-core continuous profiling database that speaks Grafana Pyroscope's APIs.
//!
//! `server` runs HTTP/1.1 and h2c on every core and frames RPCs; `distributor` validates and
//! routes pushes to the cores that own their series; `querier` fans queries out to every core
//! and merges the answers. The per-core data lives in the `kiln-shards` crate.
pub mod budget;
pub mod config;
pub mod distributor;
pub mod ops;
pub mod querier;
pub mod replay;
pub mod server;
pub mod timeparse;

use std::sync::Arc;

/// Starts every core, replays the WAL, opens the port, and blocks until the cores exit.
pub fn run(cfg: config::Config) {
    let cores = cfg.effective_shards();
    let tokens = cfg.ring_tokens_per_core;
    let wal_dir = cfg.wal_dir();
    let _wal_lock = kiln_io::wal::lock(&wal_dir).unwrap_or_else(|e| fail(format!("locking the WAL: {e}")));
    let gens = match kiln_io::wal::prepare(&wal_dir) {
        Ok(g) => g,
        Err(e) => fail(format!("preparing the WAL under {}: {e}", wal_dir.display())),
    };
    let wal = kiln_shards::runtime::WalConfig {
        dir: gens.next.1.clone(),
        segment_bytes: cfg.wal_segment_size_bytes,
        policy: if cfg.wal_sync_policy == "write" {
            kiln_io::wal::segment::SyncPolicy::Write
        } else {
            kiln_io::wal::segment::SyncPolicy::Fsync
        },
    };
    // Termination signals are taken by the main thread alone (sigwait below); every core
    // thread inherits the blocked mask.
    let signals = block_termination_signals();
    let mut cfg = cfg;
    cfg.max_head_bytes_per_core = Some(cfg.effective_max_head_bytes());
    let backend = cfg.store_backend().unwrap_or_else(|e| fail(e));
    let store = kiln_io::store::Store::start_with_prefix(backend, &cfg.storage.prefix)
        .unwrap_or_else(|e| fail(format!("opening block storage: {e}")));
    let blocks = kiln_shards::flush::BlockConfig {
        store: store.clone(),
        max_block_duration: cfg.max_block_duration,
        max_block_bytes: cfg.effective_max_block_bytes() as usize,
        cache_bytes: cfg.effective_block_cache_bytes() as usize,
        encode: Default::default(),
    };
    let shard_cfg = kiln_shards::runtime::ShardConfig {
        wal: Some(wal),
        max_head_bytes: cfg.max_head_bytes_per_core.unwrap_or(0) as usize,
        blocks: Some(blocks),
    };
    if let Some(addr) = port_in_use(&cfg.http_listen_address, cfg.http_listen_port) {
        fail(format!(
            "{addr} is already served by another process; every core binds it with SO_REUSEPORT, which would silently share it"
        ));
    }
    let shared = server::Shared::new(cfg);
    tracing::info!(cores, port = shared.cfg.http_listen_port, wal = %wal_dir.display(), "kiln starting");
    let s = shared.clone();
    let started =
        kiln_shards::runtime::start(cores, tokens, true, shard_cfg, move |ctx| server::serve(ctx, Arc::clone(&s)));
    let indexed = open_blocks(&store, &started.mesh).unwrap_or_else(|e| fail(e));
    if let Some((_, source)) = &gens.source {
        if let Err(e) = replay::replay(source, &started.mesh, &indexed) {
            fail(e);
        }
    }
    if let Err(e) = kiln_io::wal::commit(&gens.next.1, gens.source.as_ref().map(|s| s.1.as_path())) {
        fail(format!("committing the WAL generation {}: {e}", gens.next.1.display()));
    }
    drop(started.gate);
    let sig = wait_for_signal(&signals);
    tracing::info!(signal = sig, "shutting down: refusing new work and syncing the WAL");
    shared.shutting_down.store(true, std::sync::atomic::Ordering::Release);
    let mut waits = Vec::new();
    for c in 0..started.mesh.cores() {
        let (tx, rx) = flume::bounded(1);
        if started.mesh.send_blocking(c, kiln_shards::shard::Msg::Flush { reply: tx }).is_ok() {
            waits.push(rx);
        }
    }
    let mut clean = true;
    for rx in waits {
        if !matches!(rx.recv(), Ok(Ok(_))) {
            clean = false;
        }
    }
    tracing::info!(clean, "shutdown complete; every acknowledged push is in the WAL");
    std::process::exit(if clean { 0 } else { 1 });
}

/// Reads every tenant's bucket index and hands each block to the core the ring gives it.
/// Returns every indexed (tenant, block id), for replay to skip what blocks hold.
fn open_blocks(store: &kiln_io::store::Store, mesh: &kiln_shards::runtime::Mesh) -> Result<replay::Indexed, String> {
    use kiln_shards::shard::{BlockEntry, Msg};
    let mut indexed = replay::Indexed::new();
    let mut per_core: Vec<Vec<BlockEntry>> = vec![Vec::new(); mesh.cores()];
    let tenants = store.blocking_tenants().map_err(|e| format!("listing tenants in {}: {e}", store.describe()))?;
    for tenant in tenants {
        let idx = store
            .blocking_read_bucket_index(&tenant)
            .map_err(|e| format!("reading the bucket index of tenant {tenant}: {e}"))?;
        let deleted: std::collections::HashSet<&str> =
            idx.block_deletion_marks.iter().map(|m| m.block_id.as_str()).collect();
        for b in &idx.blocks {
            // A block marked for deletion still holds what its WAL records held.
            indexed.insert((tenant.clone(), b.block_id.clone()));
            if deleted.contains(b.block_id.as_str()) {
                continue;
            }
            let core = kiln_shards::storegateway::owner(&mesh.ring, &b.block_id) as usize;
            per_core[core].push(BlockEntry {
                tenant: tenant.clone(),
                id: b.block_id.clone(),
                min_ms: b.min_time,
                max_ms: b.max_time,
                profiles_bytes: b.file_size(kiln_shards::block::PROFILES).unwrap_or(0),
            });
        }
    }
    tracing::info!(blocks = indexed.len(), storage = %store.describe(), "blocks opened");
    for (core, blocks) in per_core.into_iter().enumerate() {
        mesh.send_blocking(core, Msg::AddBlocks { blocks }).map_err(|e| e.to_string())?;
    }
    Ok(indexed)
}

/// The address when something already accepts connections on the port kiln is to serve.
/// The cores bind with SO_REUSEPORT, which the kernel lets a second kiln (of the same user)
/// share without an error: pushes would then be split between two servers.
fn port_in_use(address: &str, port: u16) -> Option<std::net::SocketAddr> {
    let host = match address {
        "" | "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "::1",
        a => a.trim_start_matches('[').trim_end_matches(']'),
    };
    let ip: std::net::IpAddr = host.parse().ok()?;
    let addr = std::net::SocketAddr::new(ip, port);
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).ok().map(|_| addr)
}

fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is an initialised signal set blocked in every thread.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}

fn fail(msg: String) -> ! {
    tracing::error!("{msg}");
    eprintln!("kiln: {msg}");
    std::process::exit(1);
}
