//! The core-aware hash ring, replica sets and membership, as pure code.
//!
//! Members are (instance, core) pairs. Each member owns `tokens_per_core` tokens drawn
//! deterministically from its instance's token seed and its core, so every process that knows
//! the members computes the same ring without talking. A key is owned by the member of the first
//! token at or after the key's hash, clockwise. kiln gives each core its own tokens (Pyroscope's
//! `num_tokens` is per instance; here an instance has `num_tokens` per core), so a core's share
//! of series stays even as `-shards` changes.
//!
//! **The local-ring invariant.** A member's tokens depend only on (token seed, core,
//! tokens per core), and a cluster ring keeps every token of every instance (collisions between
//! instances are kept side by side, never dropped). So the first token of instance X clockwise
//! from a key is the same in the cluster ring and in X's own ring built from its seed alone:
//! the core a replica walk picks on X is the core X's local ring routes the key to
//! (`Ring::of_instances(&[InstanceTokens { instance: 0, seed: X.seed, cores: X.cores }], t)
//! .owner(key).core`). An ingester can therefore route a replicated series to its core with its
//! own ring, without knowing the cluster's.
//!
//! Submodules: `member` (states, components, one instance's entry), `snapshot` (the immutable
//! view a core routes with), `quorum` (a push's acks against its replica sets), `shuffle` (a
//! tenant's shuffle shard: the instances its series go to). Nothing here reads a clock or does
//! IO: callers pass `now_ms`.
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub mod member;
pub mod quorum;
pub mod shuffle;
pub mod snapshot;

pub use member::{Components, InstanceDesc, State};
pub use quorum::{Outcome, QuorumTracker};
pub use shuffle::{TenantShard, TenantShardCache};
pub use snapshot::{RingConfig, Snapshot};

/// Changes whenever the core a series is routed to could change for the same ring: how a
/// series is fingerprinted or looked up. A WAL generation records it (see `digest`).
pub const ROUTING_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// In a snapshot's rings: the index of the instance in `Snapshot::instances`.
    pub instance: u32,
    pub core: u32,
}

/// One instance as a ring builds it: `instance` is what its members carry (an index into a
/// snapshot's instances), `seed` and `cores` are all its tokens depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceTokens {
    pub instance: u32,
    pub seed: u64,
    pub cores: u32,
}

/// What a replica walk may do with an instance, given the operation (see `Ring::replicas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// Taken, and counts as a live replica.
    Yes,
    /// Its state is not allowed for the operation (JOINING, LEAVING, PENDING for a write):
    /// taken but not live, and the walk goes one instance further (dskit's
    /// `ShouldExtendReplicaSet`).
    Extend,
    /// Allowed by state but not healthy (stale heartbeat): taken, not live, no extension.
    Unhealthy,
}

/// The replicas of one key for one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSet {
    /// The live replicas, in ring order from the key, on distinct instances; each with the core
    /// that owns the key on its instance (see the local-ring invariant above).
    pub members: Vec<Member>,
    /// Acks needed: `max(rf, taken) / 2 + 1`, where `taken = members.len() + unhealthy`
    /// (dskit's `minSuccess`; an extension makes RF=3 need 3 of 3).
    pub quorum: usize,
    /// Instances the walk took that are not live: an unhealthy one, or one whose state
    /// extended the walk. They count in the quorum's base, never as an ack.
    pub unhealthy: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("empty ring")]
    Empty,
    /// dskit's message, so operators recognise it.
    #[error("at least {needed} live replicas required, could only find {found}")]
    TooFewLive { needed: usize, found: usize },
    /// A whole-ring read (dskit's `GetReplicationSetForOperation`) with too few healthy members.
    #[error("too many unhealthy instances in the ring: {healthy} healthy, {needed} required")]
    TooManyUnhealthy { needed: usize, healthy: usize },
}

#[derive(Debug, Clone)]
pub struct Ring {
    /// Sorted by (token, member). Invariant: no two entries of one instance share a token (the
    /// lowest core keeps it, as today's single-instance ring did); entries of different
    /// instances may, and the lower instance index comes first, so every node orders them alike.
    tokens: Vec<(u32, Member)>,
    /// The distinct instances among the members, ascending: a replica walk stops once it has
    /// seen them all, and a shuffle shard is drawn from them.
    ids: Vec<u32>,
}

/// The tokens of the member whose token seed is `seed`: a pure function of (seed, count), which
/// is what the local-ring invariant rests on.
fn member_tokens(seed: u64, tokens_per_core: u32) -> impl Iterator<Item = u32> {
    (0..tokens_per_core).map(move |t| xxh3_64_with_seed(&t.to_le_bytes(), seed) as u32)
}

impl Ring {
    /// A ring of `members`, each seeded by `(instance << 32) | core` (the seeding of kiln's
    /// first ring; for instance 0 it equals `of_instances` with seed 0).
    pub fn new(members: &[Member], tokens_per_core: u32) -> Self {
        assert!(!members.is_empty(), "a ring needs at least one member");
        Ring::build(members.iter().map(|m| (*m, ((m.instance as u64) << 32) | m.core as u64)), tokens_per_core)
    }

    /// A ring of one instance with `cores` members: `of_instances` with seed 0.
    pub fn single(cores: u32, tokens_per_core: u32) -> Self {
        Ring::of_instances(&[InstanceTokens { instance: 0, seed: 0, cores }], tokens_per_core)
    }

    /// The ring of several instances: member (instance, core) is seeded by `seed ^ core`, so seed
    /// 0 reproduces `single`'s tokens (and digest) exactly. May be empty.
    pub fn of_instances(instances: &[InstanceTokens], tokens_per_core: u32) -> Self {
        let members = instances
            .iter()
            .flat_map(|i| (0..i.cores).map(move |core| (Member { instance: i.instance, core }, i.seed ^ core as u64)));
        Ring::build(members, tokens_per_core)
    }

    fn build(members: impl Iterator<Item = (Member, u64)>, tokens_per_core: u32) -> Self {
        let mut tokens = Vec::new();
        for (m, seed) in members {
            tokens.extend(member_tokens(seed, tokens_per_core).map(|t| (t, m)));
        }
        tokens.sort_unstable();
        // Within an instance a token is kept once (the lowest core wins, which is what the
        // instance's own ring does too); across instances both stay, or the walk for a key
        // just before a dropped token would reach that instance at a later token, on perhaps
        // another core, and break the local-ring invariant.
        tokens.dedup_by(|later, earlier| later.0 == earlier.0 && later.1.instance == earlier.1.instance);
        let mut ids: Vec<u32> = tokens.iter().map(|(_, m)| m.instance).collect();
        ids.sort_unstable();
        ids.dedup();
        Ring { tokens, ids }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The distinct instances of the members, ascending.
    pub fn instance_ids(&self) -> &[u32] {
        &self.ids
    }

    /// Entries in the ring (tokens of all members); memory is 12 bytes each.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// A digest of every token and its member: rings with equal digests own every key alike.
    /// The bytes hashed are kiln's first ring's, so a single-instance ring keeps its digest
    /// (WAL generations record it).
    pub fn digest(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.tokens.len() * 12);
        for (t, m) in &self.tokens {
            bytes.extend_from_slice(&t.to_le_bytes());
            bytes.extend_from_slice(&m.instance.to_le_bytes());
            bytes.extend_from_slice(&m.core.to_le_bytes());
        }
        xxh3_64_with_seed(&bytes, ROUTING_VERSION as u64)
    }

    /// The core that owns block `id` (its store-gateway serves it; an ingester cutting a
    /// head draws ids until one is its own).
    pub fn block_owner(&self, id: &str) -> u32 {
        self.owner(block_key(id)).core
    }

    /// The index of the first entry at or after the key's token, wrapping.
    fn start(&self, key: u64) -> usize {
        // Fold the 64-bit key into the 32-bit token space, as Pyroscope's rings use u32 tokens.
        self.start_token((key ^ (key >> 32)) as u32)
    }

    /// The index of the first entry at or after token `k`, wrapping (dskit's `searchToken`).
    fn start_token(&self, k: u32) -> usize {
        let i = self.tokens.partition_point(|(t, _)| *t < k);
        if i == self.tokens.len() {
            0
        } else {
            i
        }
    }

    /// Every token with its member, ascending (the /ring page's `?tokens=true`). A member's
    /// keys are those after the previous token up to and including its own.
    pub fn tokens(&self) -> impl ExactSizeIterator<Item = (u32, Member)> + '_ {
        self.tokens.iter().copied()
    }

    /// The member owning `key`. Panics on an empty ring (check `is_empty`).
    pub fn owner(&self, key: u64) -> Member {
        assert!(!self.is_empty(), "owner() on an empty ring");
        self.tokens[self.start(key)].1
    }

    /// Share of the key space owned per member (sorted by member), for the /ring page's
    /// "ownership %": a member owns the arc from the previous token (exclusive) to each of its
    /// tokens. Shares sum to 1 on a non-empty ring.
    pub fn ownership(&self) -> Vec<(Member, f64)> {
        let mut arcs: Vec<(Member, u64)> = Vec::with_capacity(self.tokens.len());
        for (i, (t, m)) in self.tokens.iter().enumerate() {
            let arc = if i == 0 {
                // Wraps from the last token; a ring of one distinct token gives it all 2^32.
                *t as u64 + (1u64 << 32) - self.tokens[self.tokens.len() - 1].0 as u64
            } else {
                (*t - self.tokens[i - 1].0) as u64
            };
            arcs.push((*m, arc));
        }
        arcs.sort_unstable_by_key(|(m, _)| *m);
        let mut out: Vec<(Member, f64)> = Vec::new();
        for (m, arc) in arcs {
            let share = arc as f64 / (1u64 << 32) as f64;
            match out.last_mut() {
                Some((last, s)) if *last == m => *s += share,
                _ => out.push((m, share)),
            }
        }
        out
    }

    /// dskit's `Get`: walk clockwise from the key's token collecting distinct instances until
    /// `rf` are taken. An instance whose `usable` is `Extend` is taken but not live and lets the
    /// walk take one more; an `Unhealthy` one is taken but not live. With `taken` instances
    /// (fewer than `rf` only when the ring has fewer instances), quorum is
    /// `max(rf, taken) / 2 + 1`; `Err(TooFewLive)` when fewer live replicas than that remain.
    ///
    /// Each member's core is the core of its instance's first token from the key, i.e. the
    /// core its local ring routes the key to (module docs).
    pub fn replicas(&self, key: u64, rf: usize, usable: impl Fn(u32) -> Usable) -> Result<ReplicaSet, RingError> {
        self.walk(key, rf, |_| true, usable)
    }

    /// `replicas` within a tenant's shuffle shard: the walk steps over every instance outside
    /// `shard` as if the ring held only the shard's instances (dskit's replica walk on the
    /// sub-ring `ShuffleShard` returns). A whole-ring shard is `replicas` exactly.
    pub fn replicas_in(
        &self,
        shard: &TenantShard,
        key: u64,
        rf: usize,
        usable: impl Fn(u32) -> Usable,
    ) -> Result<ReplicaSet, RingError> {
        if shard.is_whole() {
            return self.replicas(key, rf, usable);
        }
        if shard.is_empty() {
            return Err(RingError::Empty);
        }
        self.walk(key, rf, |i| shard.contains(i), usable)
    }

    /// The replica walk over the instances `within` accepts.
    fn walk(
        &self,
        key: u64,
        rf: usize,
        within: impl Fn(u32) -> bool,
        usable: impl Fn(u32) -> Usable,
    ) -> Result<ReplicaSet, RingError> {
        if self.is_empty() {
            return Err(RingError::Empty);
        }
        let mut walk = self.distinct_from(self.start(key)).filter(|m| within(m.instance));
        let mut taken = 0;
        let mut members = Vec::with_capacity(rf);
        let mut unhealthy = 0;
        let mut wanted = rf;
        while taken < wanted {
            let Some(m) = walk.next() else { break };
            taken += 1;
            match usable(m.instance) {
                Usable::Yes => members.push(m),
                Usable::Extend => {
                    unhealthy += 1;
                    wanted += 1;
                }
                Usable::Unhealthy => unhealthy += 1,
            }
        }
        let quorum = taken.max(rf) / 2 + 1;
        if members.len() < quorum {
            return Err(RingError::TooFewLive { needed: quorum, found: members.len() });
        }
        Ok(ReplicaSet { members, quorum, unhealthy })
    }
}

impl Ring {
    /// The first `rf` distinct instances clockwise from `key` that `eligible` takes, each with
    /// the core of its first token from the key (the core its local ring routes the key to):
    /// a block's store-gateways. Fewer when fewer are eligible.
    pub fn owners(&self, key: u64, rf: usize, eligible: impl Fn(u32) -> bool) -> Vec<Member> {
        self.owners_counting(key, rf, eligible, |_| true)
    }

    /// `owners`, where an eligible instance that `counts` does not count is an owner but
    /// lets the walk take one more: the walk ends once `rf` counted owners are taken (dskit's
    /// extension of a replica set past an instance that is not ACTIVE: a JOINING
    /// store-gateway takes its blocks while the ACTIVE one after it keeps them, so queriers,
    /// which read ACTIVE ones only, never find a block held by none).
    pub fn owners_counting(
        &self,
        key: u64,
        rf: usize,
        eligible: impl Fn(u32) -> bool,
        counts: impl Fn(u32) -> bool,
    ) -> Vec<Member> {
        if self.is_empty() || rf == 0 {
            return Vec::new();
        }
        let mut counted = 0;
        let mut out = Vec::new();
        for m in self.distinct_from(self.start(key)).filter(|m| eligible(m.instance)) {
            counted += usize::from(counts(m.instance));
            out.push(m);
            if counted == rf {
                break;
            }
        }
        out
    }

    /// The distinct instances clockwise from entry `start`, each with the core of its first
    /// token from there: the walk every replica set and owner set takes.
    fn distinct_from(&self, start: usize) -> impl Iterator<Item = Member> + '_ {
        let mut seen: Vec<u32> = Vec::new();
        let n = self.tokens.len();
        (0..n)
            .map(move |j| self.tokens[(start + j) % n].1)
            .filter(move |m| {
                let new = !seen.contains(&m.instance);
                if new {
                    seen.push(m.instance);
                }
                new
            })
            .take(self.ids.len())
    }

    /// Share of the key space each instance is one of `rf` owners of (`owners` with every
    /// instance eligible), by instance index: the store-gateway ring page's ownership. With
    /// `rf` 1 this is `ownership` summed per instance; shares sum to `min(rf, instances)`.
    pub fn ownership_rf(&self, rf: usize) -> Vec<(u32, f64)> {
        let mut out: Vec<(u32, f64)> = Vec::new();
        let n = self.tokens.len();
        for i in 0..n {
            let (t, _) = self.tokens[i];
            let arc = if i == 0 {
                t as u64 + (1u64 << 32) - self.tokens[n - 1].0 as u64
            } else {
                (t - self.tokens[i - 1].0) as u64
            };
            if arc == 0 {
                continue;
            }
            // The keys of this arc start their walk at token i.
            for m in self.distinct_from(i).take(rf).map(|m| m.instance) {
                let share = arc as f64 / (1u64 << 32) as f64;
                match out.iter_mut().find(|(x, _)| *x == m) {
                    Some((_, s)) => *s += share,
                    None => out.push((m, share)),
                }
            }
        }
        out.sort_unstable_by_key(|(m, _)| *m);
        out
    }
}

/// The ring key of a block id.
pub fn block_key(id: &str) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), 0x6b69_6c6e)
}

#[cfg(test)]
mod tests;
