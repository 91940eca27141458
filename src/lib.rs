//! kiln: a thread-per-core continuous profiling database that speaks Grafana Pyroscope's APIs.
//!
//! `server` runs HTTP/1.1 and h2c on every core and frames RPCs; `distributor` validates and
//! routes pushes to the cores that own their series; `querier` fans queries out to every core
//! and merges the answers. The per-core data lives in the `kiln-shards` crate.
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
    let shared = server::Shared::new(cfg);
    tracing::info!(cores, port = shared.cfg.http_listen_port, wal = %wal_dir.display(), "kiln starting");
    let s = shared.clone();
    let started =
        kiln_shards::runtime::start(cores, tokens, true, Some(wal), move |ctx| server::serve(ctx, Arc::clone(&s)));
    if let Some((_, source)) = &gens.source {
        if let Err(e) = replay::replay(source, &started.mesh) {
            fail(e);
        }
    }
    if let Err(e) = kiln_io::wal::commit(&gens.next.1, gens.source.as_ref().map(|s| s.1.as_path())) {
        fail(format!("committing the WAL generation {}: {e}", gens.next.1.display()));
    }
    drop(started.gate);
    for h in started.threads {
        let _ = h.join();
    }
}

fn fail(msg: String) -> ! {
    tracing::error!("{msg}");
    eprintln!("kiln: {msg}");
    std::process::exit(1);
}
