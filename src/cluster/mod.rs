//! Cluster mode: membership over gossip and what the cores read of it.
//!
//! One small thread (`gossip`) runs chitchat on a current-thread tokio runtime, as the
//! object-store thread does. It publishes this instance's own small entry (`entry`) and,
//! whenever what it knows of the members changes, builds a new immutable
//! [`Snapshot`](kiln_shards::ring::snapshot::Snapshot) of them and their rings and swaps it in
//! whole. The cores only ever load the current snapshot (one atomic pointer read): they never
//! wait on gossip, and no lock is on the data path.
//!
//! `-target=all` without any `-memberlist.*` flag runs no cluster at all: no gossip thread,
//! no snapshot, every write and query stays in the process (the single-node fast path).
pub mod entry;
pub mod gossip;
pub mod join;
pub mod pages;
pub mod pool;

use arc_swap::ArcSwap;
use kiln_shards::ring::member::State;
use kiln_shards::ring::snapshot::{RingConfig, Snapshot};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// What the rest of the process asks of the gossip thread.
#[derive(Debug)]
pub enum Command {
    /// This instance's ring state changes (after WAL replay: ACTIVE; on SIGTERM: LEAVING;
    /// once the WAL is synced: LEFT).
    SetState(State),
    /// An operator's Forget: every member drops `id` (its current generation) from its rings.
    Forget(String),
}

/// The cluster as this process sees it: shared by every core (`Arc`), read without locks.
pub struct Cluster {
    snapshot: ArcSwap<Snapshot>,
    commands: std::sync::mpsc::Sender<Command>,
    /// This instance's ID on the rings.
    pub self_id: String,
    pub replication_factor: usize,
    /// Store-gateways each block is served by (`-store-gateway.sharding-ring.replication-factor`).
    pub store_gateway_replication_factor: usize,
    pub push_timeout: std::time::Duration,
    /// Snapshots swapped in since start (`kiln_ring_snapshots_total`).
    pub swaps: AtomicU64,
    /// Calls to other members, by kind and outcome (`kiln_cluster_calls_total`).
    pub calls: CallCounters,
    /// Tenants' shuffle shards drawn and cached by the cores (`ring::TenantShardCache`).
    pub tenant_shards: TenantShardCounters,
    /// Members left out because gossip knew more than `gossip::MAX_MEMBERS`.
    pub members_dropped: AtomicU64,
    /// When each member's heartbeat was last seen to change (Unix ms, this clock), refreshed
    /// every gossip round: the pages show it live, while a snapshot is rebuilt only when the
    /// members' health changes.
    heartbeats: ArcSwap<rustc_hash::FxHashMap<String, u64>>,
}

impl Cluster {
    /// The current membership and rings.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps a newly built snapshot in (the gossip thread alone calls this).
    fn publish(&self, s: Snapshot) {
        self.snapshot.store(Arc::new(s));
        self.swaps.fetch_add(1, Relaxed);
    }

    /// When `id`'s heartbeat was last seen to change, as of the last gossip round.
    pub fn last_heartbeat(&self, id: &str) -> Option<u64> {
        self.heartbeats.load().get(id).copied()
    }

    /// Asks the gossip thread to change this instance's state; it is published with the next
    /// gossip round.
    pub fn set_state(&self, s: State) {
        let _ = self.commands.send(Command::SetState(s));
    }

    pub fn forget(&self, id: &str) {
        let _ = self.commands.send(Command::Forget(id.to_string()));
    }

    /// This instance's index in `snap`, if it is a member of it.
    pub fn self_index(&self, snap: &Snapshot) -> Option<u32> {
        snap.index_of(&self.self_id)
    }
}

/// Internal calls to other members, by what they were and how they ended.
#[derive(Default)]
pub struct CallCounters {
    pub push_ok: AtomicU64,
    pub push_failed: AtomicU64,
    pub query_ok: AtomicU64,
    pub query_failed: AtomicU64,
    /// Request body bytes sent to other members, by kind (`kiln_cluster_call_bytes_total`),
    /// counted as each call starts, whatever its outcome.
    pub push_bytes: AtomicU64,
    pub query_bytes: AtomicU64,
}

/// The cores' shuffle-shard caches, summed over the cores.
#[derive(Default)]
pub struct TenantShardCounters {
    /// Shards drawn because no core's cache held them (`kiln_ring_tenant_shards_drawn_total`):
    /// once per tenant, core and snapshot, more when a cache overflows.
    pub drawn: AtomicU64,
    /// Shards cached now, over every core (`kiln_ring_tenant_shards_cached`).
    pub cached: AtomicI64,
}

impl Cluster {
    /// The cluster's gauges and counters in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let snap = self.snapshot();
        let _ = writeln!(out, "# HELP kiln_ring_members Members this instance knows, by state and health.");
        let _ = writeln!(out, "# TYPE kiln_ring_members gauge");
        let mut counts: std::collections::BTreeMap<(&str, bool), u64> = Default::default();
        for (i, d) in snap.instances().iter().enumerate() {
            *counts.entry((d.state.as_str(), snap.healthy(i as u32))).or_default() += 1;
        }
        for ((state, healthy), n) in counts {
            let _ = writeln!(out, "kiln_ring_members{{state=\"{state}\",healthy=\"{healthy}\"}} {n}");
        }
        // dskit's gauge, per ring (kiln's rings are the components of its one member list):
        // healthy members by state, the unhealthy ones as `Unhealthy`.
        let _ = writeln!(
            out,
            "# HELP pyroscope_ring_members Number of members in the ring\n# TYPE pyroscope_ring_members gauge"
        );
        for (bit, ring) in kiln_shards::ring::member::Components::NAMES {
            let mut by_state: std::collections::BTreeMap<&str, u64> =
                ["ACTIVE", "JOINING", "LEAVING", "PENDING", "Unhealthy"].into_iter().map(|s| (s, 0)).collect();
            for (i, d) in snap.instances().iter().enumerate() {
                if !d.components.has(bit) || d.state == kiln_shards::ring::member::State::Left {
                    continue;
                }
                let state = if snap.healthy(i as u32) { d.state.as_str() } else { "Unhealthy" };
                *by_state.entry(state).or_default() += 1;
            }
            for (state, n) in by_state {
                let _ = writeln!(out, "pyroscope_ring_members{{name=\"{ring}\",state=\"{state}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# HELP kiln_ring_members_limit Members a snapshot holds at most.");
        let _ = writeln!(out, "# TYPE kiln_ring_members_limit gauge\nkiln_ring_members_limit {}", gossip::MAX_MEMBERS);
        let _ = writeln!(out, "# HELP kiln_ring_members_dropped_total Members left out of a snapshot past the limit.");
        let _ = writeln!(
            out,
            "# TYPE kiln_ring_members_dropped_total counter\nkiln_ring_members_dropped_total {}",
            self.members_dropped.load(Relaxed)
        );
        let _ = writeln!(out, "# HELP kiln_ring_snapshots_total Ring snapshots swapped in since start.");
        let _ = writeln!(
            out,
            "# TYPE kiln_ring_snapshots_total counter\nkiln_ring_snapshots_total {}",
            self.swaps.load(Relaxed)
        );
        let _ = writeln!(out, "# HELP kiln_cluster_calls_total Calls to other members, by kind and outcome.");
        let _ = writeln!(out, "# TYPE kiln_cluster_calls_total counter");
        let c = &self.calls;
        for (kind, outcome, v) in [
            ("push", "ok", &c.push_ok),
            ("push", "failed", &c.push_failed),
            ("query", "ok", &c.query_ok),
            ("query", "failed", &c.query_failed),
        ] {
            let _ =
                writeln!(out, "kiln_cluster_calls_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {}", v.load(Relaxed));
        }
        let s = &self.tenant_shards;
        let _ = writeln!(
            out,
            "# HELP kiln_ring_tenant_shards_drawn_total Tenants' shuffle shards drawn (not found in a core's cache).\n# TYPE kiln_ring_tenant_shards_drawn_total counter\nkiln_ring_tenant_shards_drawn_total {}",
            s.drawn.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kiln_ring_tenant_shards_cached Tenants' shuffle shards cached, over every core.\n# TYPE kiln_ring_tenant_shards_cached gauge\nkiln_ring_tenant_shards_cached {}",
            s.cached.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kiln_ring_tenant_shards_cached_limit Shards a core caches before its cache starts over.\n# TYPE kiln_ring_tenant_shards_cached_limit gauge\nkiln_ring_tenant_shards_cached_limit {}",
            kiln_shards::ring::shuffle::MAX_CACHED_TENANT_SHARDS
        );
        let _ =
            writeln!(out, "# HELP kiln_cluster_call_bytes_total Request body bytes sent to other members, by kind.");
        let _ = writeln!(out, "# TYPE kiln_cluster_call_bytes_total counter");
        for (kind, v) in [("push", &c.push_bytes), ("query", &c.query_bytes)] {
            let _ = writeln!(out, "kiln_cluster_call_bytes_total{{kind=\"{kind}\"}} {}", v.load(Relaxed));
        }
    }
}

/// The ring settings of `cfg`, as the pure ring code takes them.
pub fn ring_config(cfg: &crate::config::Config) -> RingConfig {
    RingConfig {
        tokens_per_core: cfg.ring_tokens_per_core,
        heartbeat_timeout_ms: cfg.ring.heartbeat_timeout.as_millis() as u64,
        forget_after_ms: cfg.ring.auto_forget_after.as_millis() as u64,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    (crate::timeparse::now_ns() / 1_000_000).max(0) as u64
}
