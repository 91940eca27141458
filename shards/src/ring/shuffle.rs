//! Shuffle sharding (dskit's `Ring.ShuffleShard`): a tenant's *shard* is a small, stable set of
//! a ring's instances, seeded by the tenant, and its series go only there
//! (`-distributor.ingestion-tenant-shard-size`), so one tenant's load or bad data reaches a
//! few instances, and two tenants rarely share all of theirs.
//!
//! The draw, per zone: `n` times, a random token from a generator seeded by the tenant (and the
//! zone), then clockwise to the first instance of that zone not yet chosen. kiln's ring is
//! core-aware (members are (instance, core)), but a shard is a set of *instances*: an instance
//! with more cores has more tokens, so it is drawn a little more often, as it would be in dskit
//! with more tokens. What this gives, as dskit's does:
//! - stable: the same ring, tenant and size give the same shard on every node;
//! - an instance added or removed changes at most one member of a shard (each draw either picks
//!   what it picked before, or the one instance that changed, or the one that one displaced);
//! - `size` 0, or at least the ring's instances: the whole ring;
//! - zones (when the ring's instances carry more than one zone, an instance without one being
//!   in zone ""): `ceil(size / zones)` from each zone, each zone its own walk and seed, a zone
//!   taken whole when that covers it.
//!
//! The generator is not Go's `math/rand`, nor the seed MD5: a kiln shard is not the instance set
//! a Pyroscope ring would give the same tenant (no kiln node shares a ring with a Pyroscope
//! one, so only the properties matter).
//!
//! Writes walk the whole ring and step over instances outside the shard (`Ring::replicas_in`),
//! which routes exactly as a sub-ring of the shard's tokens would, without copying them: a
//! cached shard costs a few bytes per instance, not 12 per token.
use std::sync::{Arc, Weak};

use rustc_hash::FxHashMap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::snapshot::Snapshot;
use super::Ring;

/// Mixed into every shard's seed, so a tenant's shard is not correlated with the ring's tokens
/// or keys hashed elsewhere.
const SEED: u64 = 0x7368_7566_666c_6521;

/// A tenant's shard of one ring: the instances (ring members' `instance` numbers) its series may
/// go to. A whole-ring shard holds every instance of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantShard {
    /// Ascending.
    instances: Vec<u32>,
    /// `member[i]`: instance `i` is in the shard (dense up to the highest instance number).
    member: Vec<bool>,
    whole: bool,
}

impl TenantShard {
    fn of(instances: Vec<u32>, whole: bool) -> TenantShard {
        let mut member = vec![false; instances.last().map_or(0, |&m| m as usize + 1)];
        for &i in &instances {
            member[i as usize] = true;
        }
        TenantShard { instances, member, whole }
    }

    /// Every instance of `ring`.
    pub fn whole(ring: &Ring) -> TenantShard {
        TenantShard::of(ring.instance_ids().to_vec(), true)
    }

    /// The shard's instances, ascending.
    pub fn instances(&self) -> &[u32] {
        &self.instances
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    pub fn contains(&self, instance: u32) -> bool {
        self.member.get(instance as usize).copied().unwrap_or(false)
    }

    /// Whether the shard is the whole ring (shuffle sharding off for the tenant, or the size
    /// covers every instance): routing is then the ring's own.
    pub fn is_whole(&self) -> bool {
        self.whole
    }
}

/// splitmix64's next number from `state`: a small generator, seedable and the same on every
/// platform (the tenant shard draws; tests that need reproducible randomness use it too).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tenant's random tokens in one zone.
struct Draws(u64);

impl Draws {
    fn token(&mut self) -> u32 {
        (splitmix64(&mut self.0) >> 32) as u32
    }
}

/// The seed of `tenant`'s draws in `zone`: the tenant alone when the zone is "" (dskit's
/// `ShuffleShardSeed` shape: tenant, then 0 and the zone).
fn seed(tenant: &str, zone: &str) -> u64 {
    if zone.is_empty() {
        return xxh3_64_with_seed(tenant.as_bytes(), SEED);
    }
    let mut bytes = Vec::with_capacity(tenant.len() + 1 + zone.len());
    bytes.extend_from_slice(tenant.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(zone.as_bytes());
    xxh3_64_with_seed(&bytes, SEED)
}

/// `tenant`'s shard of `size` instances of `ring`, whose instance `i` is in zone `zone_of(i)`
/// (module docs). Pure: the same arguments give the same shard on every node. This is what a
/// component calls for its own ring: the distributor on the ingester ring
/// (`Snapshot::ingester_tenant_shard`), the store-gateway on its ring (`Snapshot::store_gateway_tenant_shard`).
pub fn tenant_shard<'z>(ring: &Ring, zone_of: impl Fn(u32) -> &'z str, tenant: &str, size: usize) -> TenantShard {
    let ids = ring.instance_ids();
    if size == 0 || size >= ids.len() {
        return TenantShard::whole(ring);
    }
    let mut zones: Vec<&str> = ids.iter().map(|&i| zone_of(i)).collect();
    zones.sort_unstable();
    zones.dedup();
    let per_zone = size.div_ceil(zones.len());
    let dense = ids.last().map_or(0, |&m| m as usize + 1);
    // Each ring instance's zone as its position in `zones`.
    let mut zone_at = vec![usize::MAX; dense];
    for &i in ids {
        zone_at[i as usize] = zones.binary_search(&zone_of(i)).unwrap_or(usize::MAX);
    }
    let mut chosen = vec![false; dense];
    for (z, zone) in zones.iter().enumerate() {
        let in_zone = ids.iter().filter(|&&i| zone_at[i as usize] == z).count();
        if per_zone >= in_zone {
            for &i in ids.iter().filter(|&&i| zone_at[i as usize] == z) {
                chosen[i as usize] = true;
            }
            continue;
        }
        let mut draws = Draws(seed(tenant, zone));
        for _ in 0..per_zone {
            let start = ring.start_token(draws.token());
            let n = ring.tokens.len();
            let pick = (0..n)
                .map(|j| ring.tokens[(start + j) % n].1.instance as usize)
                .find(|&i| zone_at[i] == z && !chosen[i]);
            match pick {
                Some(i) => chosen[i] = true,
                None => break,
            }
        }
    }
    let instances: Vec<u32> = ids.iter().copied().filter(|&i| chosen[i as usize]).collect();
    let whole = instances.len() == ids.len();
    TenantShard::of(instances, whole)
}

/// `size` of `ids` for `tenant`, where the candidates are not on a ring (the queriers a
/// scheduler lets take a tenant's queries, `-query-frontend.max-queriers-per-tenant`): the
/// indices into `ids`, ascending; all of them when `size` is 0 or covers them. Rendezvous
/// hashing: each id scores `hash(seed(tenant), id)` and the highest `size` are taken, so the
/// choice is stable, does not depend on the order of `ids`, and an id added or removed changes
/// at most one of the chosen.
pub fn pick<S: AsRef<str>>(tenant: &str, ids: &[S], size: usize) -> Vec<usize> {
    if size == 0 || size >= ids.len() {
        return (0..ids.len()).collect();
    }
    let seed = seed(tenant, "");
    let mut scored: Vec<(u64, &str, usize)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (xxh3_64_with_seed(id.as_ref().as_bytes(), seed), id.as_ref(), i))
        .collect();
    // Highest score first; equal scores by id, so the order of `ids` never matters.
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let mut out: Vec<usize> = scored[..size].iter().map(|s| s.2).collect();
    out.sort_unstable();
    out
}

/// Shards kept by one `TenantShardCache`, per core: past it the cache starts over (counted by its
/// owner), so a flood of tenants costs a recomputation, never unbounded memory.
pub const MAX_CACHED_TENANT_SHARDS: usize = 1024;

/// The shards of one ring, per (tenant, size), for one snapshot at a time: a push finds its
/// tenant's shard without drawing it again. A new snapshot (membership or health changed)
/// empties it. Each core keeps its own (no lock); `ring` says which ring of a snapshot it draws
/// from, e.g. `TenantShardCache::new(Snapshot::ingester_ring)`.
pub struct TenantShardCache {
    ring: fn(&Snapshot) -> &Ring,
    /// The snapshot the shards were drawn from. A `Weak` keeps its allocation, so a newer
    /// snapshot can never reuse the address and pass for it.
    of: Weak<Snapshot>,
    /// Tenant → (size, shard): a tenant has one size at a time (its limit).
    shards: FxHashMap<Box<str>, (usize, Arc<TenantShard>)>,
}

impl TenantShardCache {
    pub fn new(ring: fn(&Snapshot) -> &Ring) -> TenantShardCache {
        TenantShardCache { ring, of: Weak::new(), shards: FxHashMap::default() }
    }

    /// `tenant`'s shard of `size` on `snap`, and whether it had to be drawn (not cached).
    pub fn get(&mut self, snap: &Arc<Snapshot>, tenant: &str, size: usize) -> (Arc<TenantShard>, bool) {
        if !std::ptr::eq(self.of.as_ptr(), Arc::as_ptr(snap)) {
            self.shards.clear();
            self.of = Arc::downgrade(snap);
        }
        if let Some((s, shard)) = self.shards.get(tenant) {
            if *s == size {
                return (shard.clone(), false);
            }
        }
        let ring = (self.ring)(snap);
        let drawn = Arc::new(tenant_shard(ring, |i| snap.zone(i), tenant, size));
        if self.shards.len() >= MAX_CACHED_TENANT_SHARDS && !self.shards.contains_key(tenant) {
            self.shards.clear();
        }
        self.shards.insert(tenant.into(), (size, drawn.clone()));
        (drawn, true)
    }

    /// Shards cached now.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{InstanceTokens, Usable};
    use proptest::prelude::*;

    /// A ring of instances numbered by position, each with its (seed, cores).
    fn ring(insts: &[(u32, u64, u32)], t: u32) -> Ring {
        let its: Vec<InstanceTokens> =
            insts.iter().map(|&(instance, seed, cores)| InstanceTokens { instance, seed, cores }).collect();
        Ring::of_instances(&its, t)
    }

    /// A token seed per instance number, far apart (member seeds are `seed ^ core`: seeds 1 apart
    /// would share tokens).
    fn spread(i: u32) -> u64 {
        (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn no_zone(_: u32) -> &'static str {
        ""
    }

    #[test]
    fn off_or_covering_sizes_give_the_whole_ring() {
        let r = ring(&[(0, 1, 2), (1, 2, 2), (2, 3, 1), (5, 4, 1)], 16);
        for size in [0, 4, 5, 100] {
            let s = tenant_shard(&r, no_zone, "t", size);
            assert!(s.is_whole(), "size {size}");
            assert_eq!(s.instances(), &[0, 1, 2, 5]);
        }
        let s = tenant_shard(&r, no_zone, "t", 2);
        assert!(!s.is_whole());
        assert_eq!(s.len(), 2);
        assert!(s.instances().iter().all(|&i| s.contains(i)));
        assert!(!s.contains(3) && !s.contains(99));
    }

    #[test]
    fn tenants_get_different_shards() {
        let insts: Vec<(u32, u64, u32)> = (0..20).map(|i| (i, spread(i), 2)).collect();
        let r = ring(&insts, 32);
        let shards: std::collections::BTreeSet<Vec<u32>> =
            (0..50).map(|t| tenant_shard(&r, no_zone, &format!("tenant-{t}"), 3).instances().to_vec()).collect();
        // 1140 possible 3-sets of 20: 50 tenants nearly never collide.
        assert!(shards.len() >= 45, "{} distinct shards of 50 tenants", shards.len());
    }

    #[test]
    fn writes_within_a_shard_stay_in_it_and_cap_at_its_size() {
        let insts: Vec<(u32, u64, u32)> = (0..8).map(|i| (i, spread(i), 3)).collect();
        let r = ring(&insts, 16);
        let s = tenant_shard(&r, no_zone, "acme", 3);
        let mut hit = std::collections::BTreeSet::new();
        for k in 0..2000u64 {
            let key = xxh3_64_with_seed(&k.to_le_bytes(), 5);
            let set = r.replicas_in(&s, key, 3, |_| Usable::Yes).unwrap();
            assert_eq!(set.members.len(), 3);
            for m in &set.members {
                assert!(s.contains(m.instance));
                // The core is the one the whole ring's walk would give that instance.
                let first = r.tokens.iter().cycle().skip(r.start(key)).find(|(_, x)| x.instance == m.instance).unwrap();
                assert_eq!(first.1.core, m.core);
                hit.insert(m.instance);
            }
            // More replicas than the shard holds: every shard instance, once.
            let set = r.replicas_in(&s, key, 5, |_| Usable::Yes).unwrap();
            assert_eq!(set.members.len(), 3);
        }
        assert_eq!(hit.into_iter().collect::<Vec<_>>(), s.instances());
        // A whole shard routes as the ring does.
        let w = TenantShard::whole(&r);
        for k in 0..200u64 {
            assert_eq!(r.replicas_in(&w, k, 3, |_| Usable::Yes), r.replicas(k, 3, |_| Usable::Yes));
        }
    }

    #[test]
    fn zones_get_their_share_each() {
        let insts: Vec<(u32, u64, u32)> = (0..12).map(|i| (i, spread(i), 1)).collect();
        let r = ring(&insts, 16);
        let zone = |i: u32| ["a", "b", "c"][i as usize % 3];
        for size in 1..12 {
            let s = tenant_shard(&r, zone, "t", size);
            let per = size.div_ceil(3).min(4);
            for z in ["a", "b", "c"] {
                assert_eq!(s.instances().iter().filter(|&&i| zone(i) == z).count(), per, "size {size} zone {z}");
            }
        }
    }

    #[test]
    fn pick_is_stable_and_moves_one_at_most() {
        let ids: Vec<String> = (0..10).map(|i| format!("querier-{i}")).collect();
        assert_eq!(pick("t", &ids, 0), (0..10).collect::<Vec<_>>());
        assert_eq!(pick("t", &ids, 10), (0..10).collect::<Vec<_>>());
        let a = pick("t", &ids, 3);
        assert_eq!(a.len(), 3);
        assert_eq!(a, pick("t", &ids, 3));
        let names = |ix: &[usize], ids: &[String]| -> std::collections::BTreeSet<String> {
            ix.iter().map(|&i| ids[i].clone()).collect()
        };
        let mut rev = ids.clone();
        rev.reverse();
        assert_eq!(names(&a, &ids), names(&pick("t", &rev, 3), &rev), "order of ids does not matter");
        let mut more = ids.clone();
        more.push("querier-new".into());
        let b = pick("t", &more, 3);
        assert!(names(&a, &ids).difference(&names(&b, &more)).count() <= 1);
    }

    #[test]
    fn the_cache_draws_once_per_snapshot_and_tenant() {
        use crate::ring::{Components, InstanceDesc, RingConfig, State};
        let desc = |i: u32| InstanceDesc {
            id: format!("ing-{i}"),
            addr: String::new(),
            zone: String::new(),
            components: Components(Components::INGESTER),
            state: State::Active,
            cores: 2,
            token_seed: i as u64 * 7919,
            heartbeat_ms: 1_000,
        };
        let cfg = RingConfig { tokens_per_core: 8, ..RingConfig::default() };
        let snap = Arc::new(Snapshot::build((0..6).map(desc).collect(), 1_000, &cfg));
        let mut cache = TenantShardCache::new(Snapshot::ingester_ring);
        let (a, drawn) = cache.get(&snap, "t", 2);
        assert!(drawn);
        assert_eq!(*a, snap.ingester_tenant_shard("t", 2));
        assert!(!cache.get(&snap, "t", 2).1);
        assert!(cache.get(&snap, "t", 3).1, "another size is drawn");
        let next = Arc::new(Snapshot::build((0..7).map(desc).collect(), 1_000, &cfg));
        assert!(cache.get(&next, "t", 3).1, "another snapshot is drawn");
        assert_eq!(cache.len(), 1);
        for t in 0..MAX_CACHED_TENANT_SHARDS + 5 {
            cache.get(&next, &format!("t{t}"), 2);
        }
        assert!(cache.len() <= MAX_CACHED_TENANT_SHARDS);
    }

    /// Instances as (number, seed, cores) with distinct numbers, from proptest's draws.
    fn instances(seeds: &[u64], cores: &[u32]) -> Vec<(u32, u64, u32)> {
        seeds.iter().enumerate().map(|(i, &s)| (i as u32 * 2, s, cores[i % cores.len()])).collect()
    }

    /// `insts` without its `gone`th.
    fn without(insts: &[(u32, u64, u32)], gone: usize) -> Vec<(u32, u64, u32)> {
        insts.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, x)| *x).collect()
    }

    /// How many instances of `before` are not in `after`, and of `after` not in `before`.
    fn moved(before: &TenantShard, after: &TenantShard) -> (usize, usize) {
        let left = before.instances().iter().filter(|i| !after.contains(**i)).count();
        (left, after.instances().iter().filter(|i| !before.contains(**i)).count())
    }

    /// At least `min` and fewer than 16 instances of 1 to 4 cores, with random seeds.
    fn some_instances(min: usize) -> impl Strategy<Value = Vec<(u32, u64, u32)>> {
        (proptest::collection::vec(any::<u64>(), min..16), proptest::collection::vec(1u32..5, 1..4))
            .prop_map(|(seeds, cores)| instances(&seeds, &cores))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Same inputs, same shard; the shard has `min(size, n)` distinct instances of the
        /// ring (`size` 0: all), and is whole exactly when that is every instance.
        #[test]
        fn stable_and_sized(
            insts in some_instances(1),
            t in 1u32..24,
            size in 0usize..20,
            tenant in "[a-z0-9-]{1,12}",
        ) {
            let r = ring(&insts, t);
            let s = tenant_shard(&r, no_zone, &tenant, size);
            prop_assert_eq!(&s, &tenant_shard(&ring(&insts, t), no_zone, &tenant, size));
            let n = r.instance_ids().len();
            let want = if size == 0 { n } else { size.min(n) };
            prop_assert_eq!(s.len(), want);
            prop_assert_eq!(s.is_whole(), want == n);
            prop_assert!(s.instances().iter().all(|i| r.instance_ids().contains(i)));
            prop_assert!(s.instances().windows(2).all(|w| w[0] < w[1]));
        }

        /// An instance added to, or removed from, the ring changes at most one member of a
        /// shard: at most one leaves and at most one joins.
        #[test]
        fn one_instance_more_or_less_moves_one_member_at_most(
            insts in some_instances(2),
            t in 1u32..24,
            size in 1usize..16,
            tenant in "[a-z0-9-]{1,12}",
            which in any::<prop::sample::Index>(),
        ) {
            let before = tenant_shard(&ring(&without(&insts, which.index(insts.len())), t), no_zone, &tenant, size);
            let after = tenant_shard(&ring(&insts, t), no_zone, &tenant, size);
            let (left, joined) = moved(&before, &after);
            prop_assert!(left <= 1 && joined <= 1, "left {} joined {}: {:?} -> {:?}", left, joined, before, after);
        }

        /// With zones, each zone gives `ceil(size / zones)` of its instances (all, when it has
        /// no more), and one instance more in a zone moves at most one member.
        #[test]
        fn zones_are_balanced_and_stable(
            seeds in proptest::collection::vec(any::<u64>(), 3..18),
            zones in 1usize..4,
            size in 1usize..12,
            tenant in "[a-z0-9-]{1,12}",
            which in any::<prop::sample::Index>(),
        ) {
            let insts = instances(&seeds, &[1, 2]);
            let names = ["zone-a", "zone-b", "zone-c"];
            let zone_of = |i: u32| names[(i as usize / 2) % zones];
            let r = ring(&insts, 8);
            let n = insts.len();
            let s = tenant_shard(&r, zone_of, &tenant, size);
            if size >= n {
                prop_assert!(s.is_whole());
            } else {
                let per = size.div_ceil(zones);
                for z in &names[..zones] {
                    let have = insts.iter().filter(|x| zone_of(x.0) == *z).count();
                    let got = s.instances().iter().filter(|&&i| zone_of(i) == *z).count();
                    prop_assert_eq!(got, per.min(have), "zone {}", z);
                }
            }
            let fewer = without(&insts, which.index(n));
            // The zones themselves must stay, or every zone's share changes.
            let zones_left: std::collections::BTreeSet<_> = fewer.iter().map(|x| zone_of(x.0)).collect();
            if zones_left.len() == zones && size < n - 1 {
                let before = tenant_shard(&ring(&fewer, 8), zone_of, &tenant, size);
                let (left, joined) = moved(&before, &s);
                prop_assert!(left <= 1 && joined <= 1, "left {} joined {}", left, joined);
            }
        }

        /// A replica walk within a shard takes `rf` (at most the shard's size) distinct shard
        /// instances.
        #[test]
        fn replicas_stay_within_the_shard(
            seeds in proptest::collection::vec(any::<u64>(), 1..12),
            size in 1usize..12,
            rf in 1usize..5,
            keys in proptest::collection::vec(any::<u64>(), 1..32),
        ) {
            let insts = instances(&seeds, &[1, 3]);
            let r = ring(&insts, 8);
            let s = tenant_shard(&r, no_zone, "tenant", size);
            // The caller caps the factor at the shard's size, as at too few ingesters.
            let rf = rf.min(s.len());
            for k in keys {
                let set = r.replicas_in(&s, k, rf, |_| Usable::Yes).unwrap();
                prop_assert_eq!(set.members.len(), rf);
                prop_assert!(set.members.iter().all(|m| s.contains(m.instance)));
            }
        }

        /// `pick`: `min(size, n)` distinct indices; one id more or less moves one at most.
        #[test]
        fn pick_moves_one_at_most(
            n in 1usize..20,
            size in 0usize..20,
            tenant in "[a-z0-9-]{1,12}",
            which in any::<prop::sample::Index>(),
        ) {
            let ids: Vec<String> = (0..n).map(|i| format!("q{i}")).collect();
            let got = pick(&tenant, &ids, size);
            prop_assert_eq!(got.len(), if size == 0 { n } else { size.min(n) });
            let gone = which.index(n);
            let fewer: Vec<String> = ids.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, x)| x.clone()).collect();
            let a: std::collections::BTreeSet<&String> = got.iter().map(|&i| &ids[i]).collect();
            let b: std::collections::BTreeSet<&String> = pick(&tenant, &fewer, size).iter().map(|&i| &fewer[i]).collect();
            prop_assert!(a.difference(&b).count() <= 1 && b.difference(&a).count() <= 1);
        }
    }
}
