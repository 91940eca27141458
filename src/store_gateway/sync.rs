//! The store-gateway ring across instances: which blocks this instance owns, and the thread
//! that keeps its cores' blocks in step with the bucket.
//!
//! A block's owners are the first `-store-gateway.sharding-ring.replication-factor` distinct
//! store-gateways clockwise from its id on the store-gateway ring (`Ring::owners`), taking
//! those that are healthy and JOINING or ACTIVE, and this instance itself from its start
//! (Cortex's `BlocksOwnerSync`, without LEAVING: a store-gateway that leaves hands its blocks
//! over at once); within an owner, the core its own ring gives the id (the local-ring
//! invariant). A store-gateway syncs at start (before it turns ACTIVE, so it holds its blocks
//! once queriers ask it), every `-store-gateway.sync-interval`, and within a second of a
//! change of the owners' set: it re-reads every tenant's bucket index and sends each core the
//! blocks it owns now (`Msg::Sync`: new ones added, the ones no longer owned dropped with
//! their cache).
//!
//! With `-store-gateway.tenant-shard-size` a tenant's blocks go only to its tenant shard of
//! the store-gateways (`ring::shuffle::tenant_shard`, drawn from the tenant): a block's owners
//! are then the first ones clockwise within the shard.
use super::{sync_blocks, Bucket};
use crate::cluster::Cluster;
use crate::config::TenantLimits;
use kiln_io::store::bucket_index::BlockRef;
use kiln_io::store::Store;
use kiln_shards::ring::member::{Components, InstanceDesc, State};
use kiln_shards::ring::shuffle::{tenant_shard, TenantShard};
use kiln_shards::ring::snapshot::Snapshot;
use kiln_shards::ring::{block_key, InstanceTokens, Ring};
use kiln_shards::runtime::Mesh;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Syncs since start, failed syncs, and the blocks the last one gave this instance.
static SYNCS: AtomicU64 = AtomicU64::new(0);
static SYNC_FAILURES: AtomicU64 = AtomicU64::new(0);
static OWNED: AtomicU64 = AtomicU64::new(0);

/// How often the thread looks at the owners' set; a failed sync is retried after `RETRY`.
const TICK: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_secs(10);

/// Unix seconds now.
pub fn unix_now() -> i64 {
    crate::timeparse::now_ns() / 1_000_000_000
}

/// The store-gateways owning blocks, as one instance sees them.
pub struct Owners {
    ring: Ring,
    /// This instance's index in `ring`.
    me: u32,
    rf: usize,
    /// Each member's zone, by its index in `ring` (tenant shards draw per zone).
    zones: Vec<String>,
    /// Whether each member is ACTIVE, by its index in `ring`: one that is not yet (JOINING,
    /// or this instance before its start sync is done) owns blocks without counting towards
    /// the replication factor.
    active: Vec<bool>,
    /// What the owners' set is made of (ids, seeds, cores, zones), to notice a change.
    pub digest: u64,
}

/// The owners in `snap` as (id, token seed, cores, zone, ACTIVE), sorted, with `own` (this
/// instance) among them whatever its state; and a digest of them and `rf`, to notice a change.
type OwnerDesc<'a> = (&'a str, u64, u32, &'a str, bool);

fn members<'a>(snap: &'a Snapshot, own: &'a InstanceDesc, rf: usize) -> (Vec<OwnerDesc<'a>>, u64) {
    let mut members: Vec<OwnerDesc<'a>> = snap
        .instances()
        .iter()
        .enumerate()
        .filter(|(i, d)| {
            d.components.has(Components::STORE_GATEWAY)
                && matches!(d.state, State::Joining | State::Active)
                && snap.healthy(*i as u32)
                && d.id != own.id
        })
        .map(|(_, d)| (d.id.as_str(), d.token_seed, d.cores, d.zone.as_str(), d.state == State::Active))
        .collect();
    // This instance as the others see it: ACTIVE once its start sync is done.
    let own_active = snap.instances().iter().any(|d| d.id == own.id && d.state == State::Active);
    members.push((own.id.as_str(), own.token_seed, own.cores, own.zone.as_str(), own_active));
    members.sort_unstable();
    let mut bytes = Vec::new();
    for (id, seed, cores, zone, active) in &members {
        bytes.extend_from_slice(id.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&seed.to_le_bytes());
        bytes.extend_from_slice(&cores.to_le_bytes());
        bytes.extend_from_slice(zone.as_bytes());
        bytes.push(0);
        bytes.push(u8::from(*active));
    }
    bytes.extend_from_slice(&(rf as u64).to_le_bytes());
    (members, xxhash_rust::xxh3::xxh3_64(&bytes))
}

impl Owners {
    /// The owners in `snap`, with `own` (this instance) among them whatever its state.
    pub fn of(snap: &Snapshot, own: &InstanceDesc, tokens_per_core: u32, rf: usize) -> Owners {
        let (members, digest) = members(snap, own, rf);
        let me = members.iter().position(|m| m.0 == own.id).unwrap_or(0) as u32;
        let tokens: Vec<InstanceTokens> = members
            .iter()
            .enumerate()
            .map(|(i, (_, seed, cores, _, _))| InstanceTokens { instance: i as u32, seed: *seed, cores: *cores })
            .collect();
        let zones = members.iter().map(|m| m.3.to_string()).collect();
        let active = members.iter().map(|m| m.4).collect();
        Owners { ring: Ring::of_instances(&tokens, tokens_per_core), me, rf, zones, active, digest }
    }

    /// Whether this instance is one of block `id`'s owners (every store-gateway may own it).
    pub fn owns(&self, id: &str) -> bool {
        self.owns_within(id, None)
    }

    /// `tenant`'s shard of `size` store-gateways (0: all of them).
    pub fn shard(&self, tenant: &str, size: usize) -> TenantShard {
        tenant_shard(&self.ring, |i| self.zones.get(i as usize).map_or("", String::as_str), tenant, size)
    }

    /// Whether this instance is one of block `id`'s owners within `shard` (`None`: all).
    pub fn owns_within(&self, id: &str, shard: Option<&TenantShard>) -> bool {
        let within = |i: u32| shard.is_none_or(|s| s.contains(i));
        let counts = |i: u32| self.active.get(i as usize).copied().unwrap_or(false);
        self.ring.owners_counting(block_key(id), self.rf, within, counts).iter().any(|m| m.instance == self.me)
    }
}

/// What a sync needs, kept by its thread.
pub struct Syncer {
    pub store: Store,
    pub mesh: Mesh,
    pub cluster: Arc<Cluster>,
    pub own: InstanceDesc,
    pub tokens_per_core: u32,
    pub interval: Duration,
    /// For each tenant's `-store-gateway.tenant-shard-size`.
    pub limits: Arc<TenantLimits>,
    /// Whether this instance takes the store-gateway ring's share of the blocks (a
    /// store-gateway); an ingester alone only lets go of its compacted blocks.
    pub share: bool,
}

impl Syncer {
    fn owners(&self) -> Owners {
        Owners::of(
            &self.cluster.snapshot(),
            &self.own,
            self.tokens_per_core,
            self.cluster.store_gateway_replication_factor,
        )
    }

    /// One sync with `bucket` read already: each core gets the blocks `owners` gives it
    /// (a store-gateway), then lets go of the blocks a compaction marked for deletion more
    /// than `retire_after` ago (those this instance's ingester cut stay pinned until then).
    pub fn apply(&self, bucket: &Bucket, owners: &Owners) -> Result<usize, kiln_shards::runtime::CoreGone> {
        let since = unix_now() - crate::config::retire_after(self.interval).as_secs() as i64;
        let retire = bucket.marked_before(since - 1);
        // Each tenant's shard drawn once per sync.
        let shards: std::cell::RefCell<rustc_hash::FxHashMap<String, TenantShard>> = Default::default();
        let owns = |tenant: &str, b: &BlockRef| {
            let size = self.limits.for_tenant(tenant).store_gateway_tenant_shard_size;
            if size == 0 {
                return owners.owns(&b.block_id);
            }
            let mut shards = shards.borrow_mut();
            if !shards.contains_key(tenant) {
                shards.insert(tenant.to_string(), owners.shard(tenant, size));
            }
            owners.owns_within(&b.block_id, shards.get(tenant))
        };
        let owns: Option<super::Take<'_>> = if self.share { Some(&owns) } else { None };
        let n = sync_blocks(bucket, &self.mesh, since, owns, &retire)?;
        if self.share {
            SYNCS.fetch_add(1, Relaxed);
            OWNED.store(n as u64, Relaxed);
            tracing::info!(blocks = n, "store-gateway synced its blocks with the bucket");
        }
        Ok(n)
    }

    /// Syncs at start with `bucket` (read already for the start), then starts the thread
    /// that syncs every interval and whenever the owners change.
    pub fn start(self, bucket: &Bucket) -> Result<(), kiln_shards::runtime::CoreGone> {
        let owners = self.owners();
        self.apply(bucket, &owners)?;
        let last = owners.digest;
        std::thread::Builder::new()
            .name("kiln-sg-sync".into())
            .spawn(move || self.run(last))
            .map_err(|_| kiln_shards::runtime::CoreGone)?;
        Ok(())
    }

    fn run(self, mut last: u64) {
        let mut due = Instant::now() + self.interval;
        loop {
            std::thread::sleep(TICK);
            // The ring is built only for a sync; a tick compares the members' digest.
            let snap = self.cluster.snapshot();
            let rf = self.cluster.store_gateway_replication_factor;
            if members(&snap, &self.own, rf).1 == last && Instant::now() < due {
                continue;
            }
            let owners = self.owners();
            let res = Bucket::read(&self.store)
                .map_err(|e| e.to_string())
                .and_then(|bucket| self.apply(&bucket, &owners).map_err(|e| e.to_string()));
            match res {
                Ok(_) => {
                    last = owners.digest;
                    due = Instant::now() + self.interval;
                }
                Err(e) => {
                    SYNC_FAILURES.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "a store-gateway sync failed; retrying");
                    due = Instant::now() + RETRY.min(self.interval);
                }
            }
        }
    }
}

/// The syncs' counters in Prometheus text format.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    for (name, kind, help, v) in [
        ("kiln_store_gateway_syncs_total", "counter", "Store-gateway syncs with the bucket indexes.", &SYNCS),
        ("kiln_store_gateway_sync_failures_total", "counter", "Store-gateway syncs that failed.", &SYNC_FAILURES),
        (
            "kiln_store_gateway_blocks_synced",
            "gauge",
            "Blocks the store-gateway ring gave this instance at the last sync.",
            &OWNED,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(id: &str, state: State) -> InstanceDesc {
        InstanceDesc {
            id: id.into(),
            addr: format!("{id}:1"),
            zone: String::new(),
            components: "store-gateway".parse().unwrap(),
            state,
            cores: 2,
            token_seed: crate::cluster::entry::token_seed(id),
            heartbeat_ms: 1_000,
        }
    }

    fn snap(descs: Vec<InstanceDesc>) -> Snapshot {
        Snapshot::build(
            descs,
            1_000,
            &kiln_shards::ring::snapshot::RingConfig {
                tokens_per_core: 16,
                heartbeat_timeout_ms: 60_000,
                forget_after_ms: 0,
            },
        )
    }

    #[test]
    fn a_tenant_shard_keeps_a_tenants_blocks_on_its_store_gateways() {
        let all = ["sg-a", "sg-b", "sg-c", "sg-d", "sg-e"];
        let s = snap(all.iter().map(|id| desc(id, State::Active)).collect());
        let views: Vec<Owners> = all.iter().map(|id| Owners::of(&s, &desc(id, State::Active), 16, 1)).collect();
        // Every instance draws the same shard of 2 for the tenant.
        let shards: Vec<TenantShard> = views.iter().map(|v| v.shard("tenant-a", 2)).collect();
        let mut holders = std::collections::BTreeSet::new();
        for i in 0..200 {
            let id = format!("01JSHARD{i:018}");
            let owners: Vec<usize> = (0..5).filter(|&k| views[k].owns_within(&id, Some(&shards[k]))).collect();
            assert_eq!(owners.len(), 1, "{id}: one owner at factor 1");
            holders.extend(owners);
        }
        assert_eq!(holders.len(), 2, "the tenant's blocks are on its shard of 2: {holders:?}");
    }

    #[test]
    fn each_block_has_rf_owners_and_every_instance_agrees() {
        let all = ["sg-a", "sg-b", "sg-c"];
        let s = snap(all.iter().map(|id| desc(id, State::Active)).collect());
        let views: Vec<Owners> = all.iter().map(|id| Owners::of(&s, &desc(id, State::Active), 16, 2)).collect();
        assert!(views.windows(2).all(|w| w[0].digest == w[1].digest));
        let mut per_instance = [0; 3];
        for i in 0..300 {
            let id = format!("01JSYNC{i:019}");
            let owners: Vec<usize> = (0..3).filter(|&k| views[k].owns(&id)).collect();
            assert_eq!(owners.len(), 2, "{id}");
            for o in owners {
                per_instance[o] += 1;
            }
        }
        assert!(per_instance.iter().all(|n| *n > 100), "{per_instance:?}");
    }

    #[test]
    fn a_joining_instance_takes_its_blocks_while_the_active_ones_keep_them_and_a_leaving_one_owns_nothing() {
        // sg-c starts (JOINING as the others see it, PENDING as its own desc says): it takes
        // its share, and each block it takes is still held by one of the ACTIVE ones, which
        // are all queriers read.
        let joining =
            snap(vec![desc("sg-a", State::Active), desc("sg-b", State::Active), desc("sg-c", State::Joining)]);
        let c = Owners::of(&joining, &desc("sg-c", State::Pending), 16, 1);
        let (a, b) = (
            Owners::of(&joining, &desc("sg-a", State::Active), 16, 1),
            Owners::of(&joining, &desc("sg-b", State::Active), 16, 1),
        );
        assert!(c.digest == a.digest && a.digest == b.digest, "every view agrees");
        let active = snap(["sg-a", "sg-b", "sg-c"].iter().map(|id| desc(id, State::Active)).collect());
        let later: Vec<Owners> =
            ["sg-a", "sg-b", "sg-c"].iter().map(|id| Owners::of(&active, &desc(id, State::Active), 16, 1)).collect();
        assert_ne!(later[0].digest, a.digest, "turning ACTIVE is a change of the owners");
        let mut taken_by_c = 0;
        for i in 0..300 {
            let id = format!("01JJOIN{i:019}");
            assert!(a.owns(&id) ^ b.owns(&id), "{id}: one ACTIVE owner while sg-c joins");
            taken_by_c += usize::from(c.owns(&id));
            assert_eq!(later.iter().filter(|v| v.owns(&id)).count(), 1, "{id}: one owner once all are ACTIVE");
            assert_eq!(c.owns(&id), later[2].owns(&id), "{id}: sg-c takes while joining what it owns once ACTIVE");
        }
        assert!(taken_by_c > 50, "sg-c took {taken_by_c} of 300 blocks while joining");
        // sg-b LEAVING: sg-a's view leaves it out, so sg-a and sg-c own every block between them.
        let leaving =
            snap(vec![desc("sg-a", State::Active), desc("sg-b", State::Leaving), desc("sg-c", State::Active)]);
        let a = Owners::of(&leaving, &desc("sg-a", State::Active), 16, 1);
        let c = Owners::of(&leaving, &desc("sg-c", State::Active), 16, 1);
        for i in 0..200 {
            let id = format!("01JLEAVE{i:018}");
            assert!(a.owns(&id) ^ c.owns(&id), "{id}");
        }
    }
}
