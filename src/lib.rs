//! kiln: a thread-per-core continuous profiling database that speaks Grafana Pyroscope's APIs.
//!
//! `server` runs HTTP/1.1 and h2c on every core and frames RPCs; `distributor` validates and
//! routes pushes to the cores that own their series; `querier` fans queries out to every core
//! and merges the answers. The per-core data lives in the `kiln-shards` crate.
pub mod config;
pub mod distributor;
pub mod ops;
pub mod querier;
pub mod server;
pub mod timeparse;

use std::sync::Arc;

/// Starts every core and blocks until they exit.
pub fn run(cfg: config::Config) {
    let cores = cfg.effective_shards();
    let tokens = cfg.ring_tokens_per_core;
    let shared = server::Shared::new(cfg);
    tracing::info!(cores, port = shared.cfg.http_listen_port, "kiln starting");
    let s = shared.clone();
    let handles = kiln_shards::runtime::start(cores, tokens, true, move |ctx| {
        server::serve(ctx, Arc::clone(&s))
    });
    for h in handles {
        let _ = h.join();
    }
}
