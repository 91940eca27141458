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
    let nofile = raise_nofile_limit();
    let cores = cfg.effective_shards();
    let tokens = cfg.ring_tokens_per_core;
    let wal_dir = cfg.wal_dir();
    let _wal_lock = kiln_io::wal::lock(&wal_dir).unwrap_or_else(|e| fail(format!("locking the WAL: {e}")));
    let ring = ring_id(cores, tokens);
    let gens = match kiln_io::wal::prepare(&wal_dir, &ring) {
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
        resume: gens.adopt,
    };
    // Termination signals are taken by the main thread alone (sigwait below); every core
    // thread inherits the blocked mask.
    let signals = block_termination_signals();
    let mut cfg = cfg;
    cfg.max_head_bytes_per_core = Some(cfg.effective_max_head_bytes());
    cfg.http_conn_limit = Some(cfg.effective_http_conn_limit(nofile));
    cfg.max_inflight_body_bytes = Some(cfg.effective_max_inflight_body_bytes());
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
    if let Err(e) = probe_port(&cfg.http_listen_address, cfg.http_listen_port) {
        fail(e);
    }
    let shared = server::Shared::new(cfg);
    tracing::info!(
        cores,
        port = shared.cfg.http_listen_port,
        wal = %wal_dir.display(),
        conn_limit = shared.conns.limit(),
        inflight_body_bytes = shared.bodies.limit(),
        "kiln starting"
    );
    let s = shared.clone();
    let started =
        kiln_shards::runtime::start(cores, tokens, true, shard_cfg, move |ctx| server::serve(ctx, Arc::clone(&s)));
    let indexed = open_blocks(&store, &started.mesh).unwrap_or_else(|e| fail(e));
    if let Some((_, source)) = &gens.source {
        if let Err(e) = replay::replay(source, &started.mesh, &indexed, gens.adopt) {
            fail(if gens.adopt { e } else { rewrite_failed(&gens, &wal_dir, &ring, e) });
        }
    }
    // An adopted generation is the ready one already.
    if !gens.adopt {
        if let Err(e) = kiln_io::wal::commit(&gens.next.1, gens.source.as_ref().map(|s| s.1.as_path())) {
            fail(format!("committing the WAL generation {}: {e}", gens.next.1.display()));
        }
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

/// What a WAL generation records of the ring it was written with: a generation of the same
/// ring is adopted in place at start, another one is rewritten (see `kiln_io::wal`).
fn ring_id(cores: usize, tokens: u32) -> String {
    let ring = kiln_shards::ring::Ring::single(cores as u32, tokens);
    format!(
        "cores={cores} tokens-per-core={tokens} routing={} digest={:016x}\n",
        kiln_shards::ring::ROUTING_VERSION,
        ring.digest()
    )
}

/// The error of a failed rewrite of the WAL into a new generation (the ring changed), with
/// the space it takes. The partial new generation is removed; the source is left whole.
fn rewrite_failed(gens: &kiln_io::wal::Generations, wal_dir: &std::path::Path, ring: &str, err: String) -> String {
    let Some((_, source)) = &gens.source else { return err };
    if let Err(e) = std::fs::remove_dir_all(&gens.next.1) {
        tracing::warn!(dir = %gens.next.1.display(), error = %e, "removing the unfinished WAL generation failed; the next start removes it");
    }
    // Only a failed write is about space; damage is reported as it is.
    let wal_write = kiln_shards::shard::IngestError::Wal(String::new()).to_string();
    if !err.starts_with(wal_write.as_str()) {
        return err;
    }
    let note = kiln_io::wal::rewrite_note(source, gens.source_ring.as_deref(), ring, wal_dir);
    format!("rewriting the WAL failed: {err}. {note}")
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

/// Fails when something already listens on the address kiln is to serve.
///
/// The cores bind with SO_REUSEPORT, which the kernel lets a second kiln (of the same user)
/// share without an error: pushes would then be split between two servers. So the address
/// is first bound by a socket with SO_REUSEADDR alone, which any listening socket on it
/// refuses (EADDRINUSE) while connections in TIME_WAIT do not. A kiln killed a moment ago
/// keeps its listening sockets for a few milliseconds after it is reaped (io_uring releases
/// them asynchronously), so EADDRINUSE is retried for up to `PORT_PROBE_WAIT`.
fn probe_port(address: &str, port: u16) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    const PORT_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
    let host = address.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = (if host.is_empty() { "0.0.0.0" } else { host }, port)
        .to_socket_addrs()
        .map_err(|e| format!("-server.http-listen-address={address}: {e}"))?
        .collect();
    let deadline = std::time::Instant::now() + PORT_PROBE_WAIT;
    for addr in addrs {
        loop {
            match bind_probe(addr) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(format!(
                        "{addr} is already served by another process; every core binds it with SO_REUSEPORT, which would silently share it"
                    ));
                }
                Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
            }
        }
    }
    Ok(())
}

fn bind_probe(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // As the cores bind: `::` covers IPv4 too unless the system says otherwise.
        let _ = s.set_only_v6(false);
    }
    s.bind(&addr.into())
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime does for
/// Pyroscope: every connection is a descriptor. Logged once; returns the limit in force.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a valid, initialised `rlimit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
            return 1024;
        }
        let soft = lim.rlim_cur;
        // An unlimited hard limit is still capped by the kernel's fs.nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
        let target = nr_open.map_or(lim.rlim_max, |n: u64| lim.rlim_max.min(n));
        if soft < target {
            let raised = libc::rlimit { rlim_cur: target, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::info!(from = soft, to = target, "raised the open-file limit to the hard limit");
                return target;
            }
            tracing::warn!(soft, hard = lim.rlim_max, error = %std::io::Error::last_os_error(), "cannot raise the open-file limit");
            return soft;
        }
        tracing::info!(limit = soft, "open-file limit (already the hard limit)");
        soft
    }
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
