//! The immutable membership view the cores route with: built whole from the gossiped entries
//! at one `now_ms`, then shared (`Arc<Snapshot>`) and swapped whole, so a core never sees a
//! ring half-updated and never waits on gossip.
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::member::{Components, InstanceDesc, State};
use super::shuffle::{self, TenantShard};
use super::{InstanceTokens, ReplicaSet, Ring, RingError, Usable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    pub tokens_per_core: u32,
    /// A member whose heartbeat has not advanced for longer is UNHEALTHY (dskit: 1m).
    pub heartbeat_timeout_ms: u64,
    /// A member whose heartbeat is older than this is left out of the snapshot altogether, so
    /// a dead instance stops costing reads and writes without an operator's "Forget" (dskit's
    /// auto-forget, counted from the last heartbeat like dskit's: 10 × timeout by default).
    /// 0 never forgets. Set it above `heartbeat_timeout_ms`, or members are forgotten while
    /// still healthy. (`cluster::gossip`'s change detection uses the same rule.)
    pub forget_after_ms: u64,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig { tokens_per_core: 128, heartbeat_timeout_ms: 60_000, forget_after_ms: 600_000 }
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Sorted by id, unique ids, no LEFT, none forgotten. A ring member's `instance` indexes it.
    instances: Vec<InstanceDesc>,
    /// Per instance, `now − heartbeat ≤ heartbeat_timeout` at build time.
    healthy: Vec<bool>,
    /// The rings with what they were built from: a `rebuild` whose members are unchanged
    /// (the usual case: only heartbeats moved) shares them instead of sorting every token again.
    ingester_ring: SharedRing,
    store_gateway_ring: SharedRing,
    compactor_ring: SharedRing,
}

#[derive(Debug, Clone)]
struct SharedRing {
    from: (Vec<InstanceTokens>, u32),
    ring: Arc<Ring>,
}

impl SharedRing {
    fn new(from: (Vec<InstanceTokens>, u32), prev: Option<&SharedRing>) -> SharedRing {
        match prev {
            Some(p) if p.from == from => p.clone(),
            _ => SharedRing { ring: Arc::new(Ring::of_instances(&from.0, from.1)), from },
        }
    }
}

impl Snapshot {
    /// Sorts by id (so every node that knows the same entries numbers them alike: ring token
    /// collisions then resolve to the lower id, as dskit's do), keeps the newest heartbeat of a
    /// repeated id, drops LEFT tombstones and members whose heartbeat is older than
    /// `forget_after_ms` (when not 0), then builds the rings.
    pub fn build(descs: Vec<InstanceDesc>, now_ms: u64, cfg: &RingConfig) -> Snapshot {
        Snapshot::build_from(descs, now_ms, cfg, None)
    }

    /// `build`, sharing this snapshot's rings where their members (index, seed, cores) and
    /// tokens per core are unchanged: what the membership thread calls on every change, so a
    /// heartbeat costs a sort of the instances, not of every token (about 0.2 M entries at
    /// 100 instances × 16 cores × 128).
    pub fn rebuild(&self, descs: Vec<InstanceDesc>, now_ms: u64, cfg: &RingConfig) -> Snapshot {
        Snapshot::build_from(descs, now_ms, cfg, Some(self))
    }

    fn build_from(mut descs: Vec<InstanceDesc>, now_ms: u64, cfg: &RingConfig, prev: Option<&Snapshot>) -> Snapshot {
        descs.sort_by(|a, b| a.id.cmp(&b.id).then(b.heartbeat_ms.cmp(&a.heartbeat_ms)));
        descs.dedup_by(|later, earlier| later.id == earlier.id);
        let age = |d: &InstanceDesc| now_ms.saturating_sub(d.heartbeat_ms);
        let forgotten = |d: &InstanceDesc| cfg.forget_after_ms > 0 && age(d) > cfg.forget_after_ms;
        descs.retain(|d| d.state != State::Left && !forgotten(d));
        let healthy = descs.iter().map(|d| age(d) <= cfg.heartbeat_timeout_ms).collect();
        let members_of = |bit: u8| {
            let members: Vec<InstanceTokens> = descs
                .iter()
                .enumerate()
                .filter(|(_, d)| d.components.has(bit) && d.state.holds_tokens())
                .map(|(i, d)| InstanceTokens { instance: i as u32, seed: d.token_seed, cores: d.cores })
                .collect();
            (members, cfg.tokens_per_core)
        };
        let ingester_ring = SharedRing::new(members_of(Components::INGESTER), prev.map(|p| &p.ingester_ring));
        let store_gateway_ring =
            SharedRing::new(members_of(Components::STORE_GATEWAY), prev.map(|p| &p.store_gateway_ring));
        let compactor_ring = SharedRing::new(members_of(Components::COMPACTOR), prev.map(|p| &p.compactor_ring));
        Snapshot { instances: descs, healthy, ingester_ring, store_gateway_ring, compactor_ring }
    }

    pub fn instances(&self) -> &[InstanceDesc] {
        &self.instances
    }

    /// The index of the instance with this id.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.instances.binary_search_by(|d| d.id.as_str().cmp(id)).ok().map(|i| i as u32)
    }

    /// The availability zone of instance `instance` ("" when it has none, or out of range).
    pub fn zone(&self, instance: u32) -> &str {
        self.instances.get(instance as usize).map_or("", |d| d.zone.as_str())
    }

    /// `tenant`'s shuffle shard of `size` ingesters (`-distributor.ingestion-tenant-shard-size`;
    /// 0: all of them), drawn from the ingester ring with the instances' zones.
    pub fn ingester_tenant_shard(&self, tenant: &str, size: usize) -> TenantShard {
        shuffle::tenant_shard(self.ingester_ring(), |i| self.zone(i), tenant, size)
    }

    /// `tenant`'s shuffle shard of `size` store-gateways (`-store-gateway.tenant-shard-size`;
    /// 0: all of them), drawn from the store-gateway ring with the instances' zones.
    pub fn store_gateway_tenant_shard(&self, tenant: &str, size: usize) -> TenantShard {
        shuffle::tenant_shard(self.store_gateway_ring(), |i| self.zone(i), tenant, size)
    }

    /// Heartbeat fresh at build time; false for an index out of range.
    pub fn healthy(&self, instance: u32) -> bool {
        self.healthy.get(instance as usize).copied().unwrap_or(false)
    }

    /// Instances with the ingester component that hold tokens (JOINING, ACTIVE, LEAVING).
    pub fn ingester_ring(&self) -> &Ring {
        &self.ingester_ring.ring
    }

    /// The same for the store-gateway component.
    pub fn store_gateway_ring(&self) -> &Ring {
        &self.store_gateway_ring.ring
    }

    /// The same for the compactor component.
    pub fn compactor_ring(&self) -> &Ring {
        &self.compactor_ring.ring
    }

    /// `tenant`'s shuffle shard of `size` compactors (`-compactor.compactor-tenant-shard-size`;
    /// 0: all of them).
    pub fn compactor_tenant_shard(&self, tenant: &str, size: usize) -> TenantShard {
        shuffle::tenant_shard(self.compactor_ring(), |i| self.zone(i), tenant, size)
    }

    /// The compactor that runs the work keyed `key` (a compaction job, or a tenant's cleanup):
    /// the first healthy ACTIVE compactor clockwise from the key's hash on the compactor ring,
    /// within `shard` (a tenant's shard; `None`: all). `None` when there is none.
    pub fn compactor_owner(&self, key: &str, shard: Option<&TenantShard>) -> Option<u32> {
        let usable = |i: u32| {
            self.healthy(i)
                && self.instances.get(i as usize).is_some_and(|d| d.state == State::Active)
                && shard.is_none_or(|s| s.contains(i))
        };
        self.compactor_ring().owners(super::block_key(key), 1, usable).first().map(|m| m.instance)
    }

    /// Whether `other` uses the very same ring allocations (a `rebuild` that changed no
    /// member).
    pub fn shares_rings_with(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.ingester_ring.ring, &other.ingester_ring.ring)
            && Arc::ptr_eq(&self.store_gateway_ring.ring, &other.store_gateway_ring.ring)
            && Arc::ptr_eq(&self.compactor_ring.ring, &other.compactor_ring.ring)
    }

    /// dskit's `Write` op on the ingester ring: ACTIVE and healthy is a replica; any other
    /// state extends the walk (checked first, as dskit does, so a stale JOINING member still
    /// extends); ACTIVE with a stale heartbeat is taken and counts as a failure.
    pub fn write_replicas(&self, key: u64, rf: usize) -> Result<ReplicaSet, RingError> {
        self.ingester_ring().replicas(key, rf, |i| self.write_usable(i))
    }

    /// `write_replicas` within a tenant's shard of the ingester ring (`ingester_tenant_shard`): the
    /// same walk, stepping over the ingesters outside it.
    pub fn write_replicas_in(&self, shard: &TenantShard, key: u64, rf: usize) -> Result<ReplicaSet, RingError> {
        self.ingester_ring().replicas_in(shard, key, rf, |i| self.write_usable(i))
    }

    fn write_usable(&self, i: u32) -> Usable {
        if self.instances[i as usize].state != State::Active {
            Usable::Extend
        } else if !self.healthy(i) {
            Usable::Unhealthy
        } else {
            Usable::Yes
        }
    }

    /// The ingesters a querier asks: every ACTIVE, healthy ingester (Pyroscope's queriers read
    /// all of them with `readNoExtend`). A LEAVING ingester is not asked: what it held is
    /// flushed to blocks before it goes.
    pub fn read_ingesters(&self) -> Vec<u32> {
        (0..self.instances.len() as u32)
            .filter(|&i| {
                let d = &self.instances[i as usize];
                d.components.has(Components::INGESTER) && d.state == State::Active && self.healthy(i)
            })
            .collect()
    }

    /// Ingesters holding tokens (JOINING, ACTIVE, LEAVING; healthy or not): the `n` a write's
    /// and a read's replica counts are taken against.
    pub fn token_holding_ingesters(&self) -> usize {
        self.instances.iter().filter(|d| d.components.has(Components::INGESTER) && d.state.holds_tokens()).count()
    }

    /// dskit's whole-ring read check (`GetReplicationSetForOperation`, no zones): with `n`
    /// ingesters holding tokens, a read needs `max(n, rf) − rf/2` of them ACTIVE and healthy,
    /// else a replica's data may be missing from the answer. Returns `read_ingesters` when met.
    pub fn read_set(&self, rf: usize) -> Result<Vec<u32>, RingError> {
        let n = self.token_holding_ingesters();
        let live = self.read_ingesters();
        let needed = n.max(rf) - rf / 2;
        if live.len() < needed {
            return Err(RingError::TooManyUnhealthy { needed, healthy: live.len() });
        }
        Ok(live)
    }

    /// ACTIVE, healthy instances running `component_bit` (the distributor ring: per-instance
    /// rate limits are the tenant's divided by it).
    pub fn healthy_count(&self, component_bit: u8) -> usize {
        (0..self.instances.len())
            .filter(|&i| {
                let d = &self.instances[i];
                d.components.has(component_bit) && d.state == State::Active && self.healthy[i]
            })
            .count()
    }

    /// A digest of what routes: each instance's identity, state, components, tokens' seed and
    /// cores, and health. Heartbeat times are left out (they differ between nodes by design);
    /// two nodes with equal digests route every key alike.
    pub fn digest(&self) -> u64 {
        let mut bytes = Vec::new();
        for (d, healthy) in self.instances.iter().zip(&self.healthy) {
            for s in [&d.id, &d.addr, &d.zone] {
                bytes.extend_from_slice(&(s.len() as u32).to_le_bytes());
                bytes.extend_from_slice(s.as_bytes());
            }
            bytes.extend_from_slice(&[d.components.0, d.state as u8, *healthy as u8]);
            bytes.extend_from_slice(&d.cores.to_le_bytes());
            bytes.extend_from_slice(&d.token_seed.to_le_bytes());
        }
        xxh3_64_with_seed(&bytes, super::ROUTING_VERSION as u64)
    }
}
