//! The immutable membership view the cores route with: built whole from the gossiped entries
//! at one `now_ms`, then shared (`Arc<Snapshot>`) and swapped whole, so a core never sees a
//! ring half-updated and never waits on gossip.
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::member::{Components, InstanceDesc, State};
use super::{InstanceTokens, ReplicaSet, Ring, RingError, Usable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    pub tokens_per_core: u32,
    /// A member whose heartbeat has not advanced for longer is UNHEALTHY (dskit: 1m).
    pub heartbeat_timeout_ms: u64,
    /// A member unhealthy for longer (counted from when it became unhealthy) is left out of
    /// the snapshot altogether, so a dead instance stops costing reads and writes without an
    /// operator's "Forget". dskit's auto-forget counts 10 × timeout from the last heartbeat,
    /// which is 9 × timeout here (the default).
    pub forget_after_ms: u64,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig { tokens_per_core: 128, heartbeat_timeout_ms: 60_000, forget_after_ms: 540_000 }
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Sorted by id, unique ids, no LEFT, none forgotten. A ring member's `instance` indexes it.
    instances: Vec<InstanceDesc>,
    /// Per instance, `now − heartbeat ≤ heartbeat_timeout` at build time.
    healthy: Vec<bool>,
    ingester_ring: Ring,
    store_gateway_ring: Ring,
}

impl Snapshot {
    /// Sorts by id (so every node that knows the same entries numbers them alike: ring token
    /// collisions then resolve to the lower id, as dskit's do), keeps the newest heartbeat of a
    /// repeated id, drops LEFT tombstones and members unhealthy for longer than
    /// `forget_after_ms`, then builds the rings.
    pub fn build(mut descs: Vec<InstanceDesc>, now_ms: u64, cfg: &RingConfig) -> Snapshot {
        descs.sort_by(|a, b| a.id.cmp(&b.id).then(b.heartbeat_ms.cmp(&a.heartbeat_ms)));
        descs.dedup_by(|later, earlier| later.id == earlier.id);
        let age = |d: &InstanceDesc| now_ms.saturating_sub(d.heartbeat_ms);
        descs.retain(|d| {
            d.state != State::Left && age(d) <= cfg.heartbeat_timeout_ms.saturating_add(cfg.forget_after_ms)
        });
        let healthy = descs.iter().map(|d| age(d) <= cfg.heartbeat_timeout_ms).collect();
        let ring_of = |bit: u8| {
            let members: Vec<InstanceTokens> = descs
                .iter()
                .enumerate()
                .filter(|(_, d)| d.components.has(bit) && d.state.holds_tokens())
                .map(|(i, d)| InstanceTokens { instance: i as u32, seed: d.token_seed, cores: d.cores })
                .collect();
            Ring::of_instances(&members, cfg.tokens_per_core)
        };
        let ingester_ring = ring_of(Components::INGESTER);
        let store_gateway_ring = ring_of(Components::STORE_GATEWAY);
        Snapshot { instances: descs, healthy, ingester_ring, store_gateway_ring }
    }

    pub fn instances(&self) -> &[InstanceDesc] {
        &self.instances
    }

    /// The index of the instance with this id.
    pub fn index_of(&self, id: &str) -> Option<u32> {
        self.instances.binary_search_by(|d| d.id.as_str().cmp(id)).ok().map(|i| i as u32)
    }

    /// Heartbeat fresh at build time; false for an index out of range.
    pub fn healthy(&self, instance: u32) -> bool {
        self.healthy.get(instance as usize).copied().unwrap_or(false)
    }

    /// Instances with the ingester component that hold tokens (JOINING, ACTIVE, LEAVING).
    pub fn ingester_ring(&self) -> &Ring {
        &self.ingester_ring
    }

    /// The same for the store-gateway component.
    pub fn store_gateway_ring(&self) -> &Ring {
        &self.store_gateway_ring
    }

    /// dskit's `Write` op on the ingester ring: ACTIVE and healthy is a replica; any other
    /// state extends the walk (checked first, as dskit does, so a stale JOINING member still
    /// extends); ACTIVE with a stale heartbeat is taken and counts as a failure.
    pub fn write_replicas(&self, key: u64, rf: usize) -> Result<ReplicaSet, RingError> {
        self.ingester_ring.replicas(key, rf, |i| {
            if self.instances[i as usize].state != State::Active {
                Usable::Extend
            } else if !self.healthy(i) {
                Usable::Unhealthy
            } else {
                Usable::Yes
            }
        })
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

    /// dskit's whole-ring read check (`GetReplicationSetForOperation`, no zones): with `n`
    /// ingesters holding tokens, a read needs `max(n, rf) − rf/2` of them ACTIVE and healthy,
    /// else a replica's data may be missing from the answer. Returns `read_ingesters` when met.
    pub fn read_set(&self, rf: usize) -> Result<Vec<u32>, RingError> {
        let n =
            self.instances.iter().filter(|d| d.components.has(Components::INGESTER) && d.state.holds_tokens()).count();
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
