use super::*;
use proptest::prelude::*;

fn key(i: u64, seed: u64) -> u64 {
    xxh3_64_with_seed(&i.to_le_bytes(), seed)
}

#[test]
fn single_instance_digests_and_owners_are_pinned() {
    // Computed with the one-file ring before the ring became a folder (2f4eb0a): WAL
    // generations record these digests, so a change here strands every WAL written before it.
    let pins: [(u32, u32, u64, [u32; 8], u32); 4] = [
        (4, 128, 0x19b1_e7f8_df63_f73b, [2, 3, 0, 3, 2, 2, 1, 1], 0),
        (1, 16, 0x1a9a_ac1f_114e_a1d2, [0; 8], 0),
        (16, 128, 0xc9a9_d956_11b1_0ec2, [14, 11, 14, 6, 5, 5, 8, 7], 0),
        (2, 4, 0xe64f_9956_d80e_97f1, [0, 0, 1, 1, 1, 1, 0, 1], 1),
    ];
    for (cores, t, digest, owners, block) in pins {
        let r = Ring::single(cores, t);
        assert_eq!(r.digest(), digest, "single({cores}, {t})");
        let got: Vec<u32> = (0..8u64).map(|i| r.owner(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).core).collect();
        assert_eq!(got, owners, "single({cores}, {t})");
        assert_eq!(r.block_owner("01HXYZ"), block);
        // `new` over instance 0 is the same ring.
        let members: Vec<Member> = (0..cores).map(|core| Member { instance: 0, core }).collect();
        assert_eq!(Ring::new(&members, t).digest(), digest);
    }
}

#[test]
fn deterministic_and_balanced() {
    let r1 = Ring::single(4, 128);
    let r2 = Ring::single(4, 128);
    let mut counts = [0usize; 4];
    for i in 0..100_000u64 {
        let key = key(i, 7);
        let o = r1.owner(key);
        assert_eq!(o, r2.owner(key));
        counts[o.core as usize] += 1;
    }
    for c in counts {
        assert!((15_000..35_000).contains(&c), "unbalanced: {counts:?}");
    }
}

#[test]
fn adding_a_core_moves_a_minority_of_keys() {
    let r4 = Ring::single(4, 128);
    let r5 = Ring::single(5, 128);
    let moved = (0..10_000u64).map(|i| key(i, 1)).filter(|k| r4.owner(*k) != r5.owner(*k)).count();
    assert!(moved < 3_500, "moved {moved}");
}

#[test]
fn single_core_owns_everything() {
    let r = Ring::single(1, 16);
    assert_eq!(r.owner(0).core, 0);
    assert_eq!(r.owner(u64::MAX).core, 0);
    assert_eq!(r.ownership(), vec![(Member { instance: 0, core: 0 }, 1.0)]);
}

#[test]
fn an_empty_ring_has_no_replicas() {
    let r = Ring::of_instances(&[], 128);
    assert!(r.is_empty());
    assert_eq!(r.replicas(1, 3, |_| Usable::Yes), Err(RingError::Empty));
    assert!(r.ownership().is_empty());
}

#[test]
fn ownership_matches_sampled_keys() {
    let r = Ring::of_instances(
        &[InstanceTokens { instance: 0, seed: 11, cores: 3 }, InstanceTokens { instance: 1, seed: 99, cores: 2 }],
        16,
    );
    let own = r.ownership();
    assert_eq!(own.len(), 5);
    let total: f64 = own.iter().map(|(_, s)| s).sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    let n = 200_000u64;
    for (m, share) in own {
        // Keys folded to 32 bits are uniform, so the sampled share is within a few standard
        // deviations (sqrt(p/n) < 0.0012) of the arc's.
        let got = (0..n).filter(|i| r.owner(key(*i, 3)) == m).count() as f64 / n as f64;
        assert!((got - share).abs() < 0.006, "{m:?}: arcs {share}, sampled {got}");
    }
}

#[test]
fn block_owners_are_the_replica_walk_and_their_shares_match_sampled_keys() {
    let insts: Vec<InstanceTokens> =
        (0..4).map(|i| InstanceTokens { instance: i, seed: 500 + i as u64, cores: 2 }).collect();
    let r = Ring::of_instances(&insts, 8);
    for k in 0..500u64 {
        let k = key(k, 9);
        // Every instance eligible: the same instances and cores as a write's replicas.
        let owners = r.owners(k, 2, |_| true);
        assert_eq!(owners, r.replicas(k, 2, |_| Usable::Yes).unwrap().members);
        // One not eligible: the walk goes on past it, keeping the others' order and cores.
        let skip = owners[0].instance;
        let rest = r.owners(k, 2, |i| i != skip);
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0], owners[1]);
        assert!(rest.iter().all(|m| m.instance != skip
            && m.core == r.owners(k, 4, |_| true).iter().find(|o| o.instance == m.instance).unwrap().core));
    }
    assert!(r.owners(1, 3, |_| false).is_empty());
    // An owner that does not count lets the walk take one more: the counted ones are the
    // walk of the others, and the one that does not count is kept where it stood.
    for k in 0..500u64 {
        let k = key(k, 11);
        let first = r.owners(k, 1, |_| true)[0].instance;
        let extended = r.owners_counting(k, 2, |_| true, |i| i != first);
        assert_eq!(extended, r.owners(k, 3, |_| true), "{k}");
        let counted: Vec<_> = extended.into_iter().filter(|m| m.instance != first).collect();
        assert_eq!(counted, r.owners(k, 2, |i| i != first), "{k}");
        // None counts: every eligible instance, the walk never ends early.
        assert_eq!(r.owners_counting(k, 2, |_| true, |_| false).len(), 4);
    }
    // RF 1: the per-instance sum of `ownership`; RF 2: each key counted for two instances.
    let one = r.ownership_rf(1);
    for (i, share) in &one {
        let want: f64 = r.ownership().iter().filter(|(m, _)| m.instance == *i).map(|(_, s)| s).sum();
        assert!((share - want).abs() < 1e-9);
    }
    let two = r.ownership_rf(2);
    assert!((two.iter().map(|(_, s)| s).sum::<f64>() - 2.0).abs() < 1e-9);
    let n = 100_000u64;
    for (i, share) in two {
        let got = (0..n).filter(|k| r.owners(key(*k, 5), 2, |_| true).iter().any(|m| m.instance == i)).count() as f64
            / n as f64;
        assert!((got - share).abs() < 0.01, "instance {i}: arcs {share}, sampled {got}");
    }
}

#[test]
fn dskit_quorum_cases() {
    // Tokens are hashed, so the cases are built from a walk's own answer with all usable.
    let insts: Vec<InstanceTokens> =
        (0..6).map(|i| InstanceTokens { instance: i, seed: 1000 + i as u64, cores: 2 }).collect();
    let r = Ring::of_instances(&insts, 8);
    let all = r.replicas(42, 3, |_| Usable::Yes).unwrap();
    assert_eq!((all.members.len(), all.quorum, all.unhealthy), (3, 2, 0));
    // The second replica extends: 4 taken, 3 live, quorum 4/2+1 = 3 (a JOINING member makes
    // RF=3 need 3 of 3).
    let second = all.members[1].instance;
    let ext = r.replicas(42, 3, |i| if i == second { Usable::Extend } else { Usable::Yes }).unwrap();
    assert_eq!((ext.members.len(), ext.quorum, ext.unhealthy), (3, 3, 1));
    assert_eq!(&ext.members[..1], &all.members[..1]);
    assert_eq!(ext.members[1], all.members[2]);
    // Unhealthy is taken without extension: 2 live of 3, quorum 2.
    let unh = r.replicas(42, 3, |i| if i == second { Usable::Unhealthy } else { Usable::Yes }).unwrap();
    assert_eq!((unh.members.len(), unh.quorum, unh.unhealthy), (2, 2, 1));
    // Two unhealthy: dskit's error.
    let first = all.members[0].instance;
    let err =
        r.replicas(42, 3, |i| if i == second || i == first { Usable::Unhealthy } else { Usable::Yes }).unwrap_err();
    assert_eq!(err, RingError::TooFewLive { needed: 2, found: 1 });
    assert_eq!(err.to_string(), "at least 2 live replicas required, could only find 1");
    // Fewer instances than RF: max(rf, taken) keeps the quorum at 2 of 2.
    let two = Ring::of_instances(&insts[..2], 8).replicas(42, 3, |_| Usable::Yes).unwrap();
    assert_eq!((two.members.len(), two.quorum), (2, 2));
}

#[test]
fn state_names_and_transitions() {
    for s in State::ALL {
        assert_eq!(s.as_str().parse::<State>(), Ok(s));
        assert!(s.can_become(s));
    }
    assert!("UNHEALTHY".parse::<State>().is_err());
    use State::*;
    // dskit's changeState table, and the paths around it.
    for (a, b) in [
        (Pending, Joining),
        (Joining, Pending),
        (Joining, Active),
        (Pending, Active),
        (Active, Leaving),
        (Leaving, Left),
    ] {
        assert!(a.can_become(b), "{a} -> {b}");
    }
    for (a, b) in
        [(Active, Pending), (Active, Joining), (Active, Left), (Left, Active), (Leaving, Joining), (Left, Leaving)]
    {
        assert!(!a.can_become(b), "{a} -> {b}");
    }
}

#[test]
fn components_round_trip_by_target_name() {
    for bits in 0..128u8 {
        let c = Components(bits);
        assert_eq!(c.to_string().parse::<Components>(), Ok(c));
    }
    let c: Components = "store-gateway,distributor,ingester".parse().unwrap();
    assert_eq!(c.to_string(), "distributor,ingester,store-gateway");
    assert!(c.has(Components::STORE_GATEWAY) && !c.has(Components::QUERIER));
    assert!("store_gateway".parse::<Components>().is_err());
}

fn desc(id: &str, state: State, heartbeat_ms: u64, seed: u64) -> InstanceDesc {
    InstanceDesc {
        id: id.into(),
        addr: format!("{id}:4040"),
        zone: String::new(),
        components: Components(Components::INGESTER | Components::DISTRIBUTOR),
        state,
        cores: 2,
        token_seed: seed,
        heartbeat_ms,
    }
}

#[test]
fn snapshot_sorts_drops_left_and_forgets() {
    let cfg = RingConfig { tokens_per_core: 16, heartbeat_timeout_ms: 1_000, forget_after_ms: 5_000 };
    let now = 100_000;
    let s = Snapshot::build(
        vec![
            desc("c", State::Active, now, 3),
            desc("a", State::Active, now - 1_000, 1), // healthy: exactly at the timeout
            desc("e", State::Left, now, 5),
            desc("b", State::Active, now - 1_001, 2), // unhealthy, not forgotten
            desc("d", State::Active, now - 5_001, 4), // forgotten: no heartbeat for over 5s
            desc("g", State::Active, now - 5_000, 7), // not yet
            desc("f", State::Pending, now, 6),
            desc("c", State::Active, now - 50_000, 3), // an older copy of c
        ],
        now,
        &cfg,
    );
    let ids: Vec<&str> = s.instances().iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "f", "g"]);
    assert_eq!((0..5).map(|i| s.healthy(i)).collect::<Vec<_>>(), [true, false, true, true, false]);
    // forget_after_ms 0 never forgets.
    let keep = Snapshot::build(vec![desc("d", State::Active, 0, 4)], now, &RingConfig { forget_after_ms: 0, ..cfg });
    assert_eq!(keep.instances().len(), 1);
    assert_eq!(s.index_of("c"), Some(2));
    // PENDING holds no tokens; b is ACTIVE though unhealthy, so it still does.
    let mut in_ring: Vec<u32> = s.ingester_ring().ownership().iter().map(|(m, _)| m.instance).collect();
    in_ring.dedup();
    assert_eq!(in_ring, [0, 1, 2, 4]);
    assert!(s.store_gateway_ring().is_empty());
    assert_eq!(s.read_ingesters(), [0, 2]);
    assert_eq!(s.healthy_count(Components::DISTRIBUTOR), 2);
    // n = 4 holding tokens, RF 3: a read needs 4 − 1 = 3 healthy, and has 2.
    assert_eq!(s.read_set(3), Err(RingError::TooManyUnhealthy { needed: 3, healthy: 2 }));
    // Unhealthy ACTIVE members are failures in a write's quorum: 3 taken, 2 needed.
    for k in 0..64 {
        match s.write_replicas(k, 3) {
            Ok(w) => assert_eq!((w.members.len() + w.unhealthy, w.quorum), (3, 2)),
            Err(e) => assert_eq!(e, RingError::TooFewLive { needed: 2, found: 1 }),
        }
    }
    let s = Snapshot::build(s.instances()[..4].to_vec(), now, &cfg);
    assert_eq!(s.read_set(3), Ok(vec![0, 2]));
    let w = s.write_replicas(7, 3).unwrap();
    assert_eq!((w.members.len(), w.quorum, w.unhealthy), (2, 2, 1));
}

#[test]
fn rebuild_shares_rings_until_a_member_changes() {
    let cfg = RingConfig { tokens_per_core: 16, heartbeat_timeout_ms: 1_000, forget_after_ms: 5_000 };
    let descs = |hb: u64, b_state: State| vec![desc("a", State::Active, hb, 1), desc("b", b_state, hb, 2)];
    let s1 = Snapshot::build(descs(10, State::Active), 10, &cfg);
    // Heartbeats moved, and b went unhealthy: same token holders, same rings.
    let s2 = s1.rebuild(descs(2_000, State::Active), 2_500, &cfg);
    assert!(s2.shares_rings_with(&s1));
    assert_eq!(
        s2.ingester_ring().digest(),
        Snapshot::build(descs(2_000, State::Active), 2_500, &cfg).ingester_ring().digest()
    );
    // b LEAVING still holds tokens; PENDING does not.
    assert!(s1.rebuild(descs(10, State::Leaving), 10, &cfg).shares_rings_with(&s1));
    let s3 = s1.rebuild(descs(10, State::Pending), 10, &cfg);
    assert!(!s3.shares_rings_with(&s1));
    assert_eq!(
        s3.ingester_ring().digest(),
        Snapshot::build(descs(10, State::Pending), 10, &cfg).ingester_ring().digest()
    );
    // Other tokens per core: not shared.
    let cfg2 = RingConfig { tokens_per_core: 8, ..cfg };
    assert!(!s1.rebuild(descs(10, State::Active), 10, &cfg2).shares_rings_with(&s1));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The local-ring invariant (module docs): each replica's core is what its instance's own
    /// ring, built from its seed alone, routes the key to; replicas are distinct instances in
    /// ring order; the quorum is dskit's.
    #[test]
    fn replicas_follow_local_rings(
        seeds in proptest::collection::vec(any::<u64>(), 1..9),
        cores in proptest::collection::vec(1u32..6, 9),
        states in proptest::collection::vec(0u8..3, 9),
        t in 1u32..12,
        rf in 1usize..5,
        keys in proptest::collection::vec(any::<u64>(), 1..16),
    ) {
        let insts: Vec<InstanceTokens> = seeds
            .iter()
            .enumerate()
            .map(|(i, s)| InstanceTokens { instance: i as u32, seed: *s, cores: cores[i] })
            .collect();
        let ring = Ring::of_instances(&insts, t);
        let usable = |i: u32| match states[i as usize] { 0 => Usable::Yes, 1 => Usable::Extend, _ => Usable::Unhealthy };
        for &k in &keys {
            match ring.replicas(k, rf, usable) {
                Ok(set) => {
                    let mut ids: Vec<u32> = set.members.iter().map(|m| m.instance).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    prop_assert_eq!(ids.len(), set.members.len(), "distinct instances");
                    let taken = set.members.len() + set.unhealthy;
                    prop_assert!(taken <= insts.len());
                    prop_assert_eq!(set.quorum, taken.max(rf) / 2 + 1);
                    prop_assert!(set.members.len() >= set.quorum);
                    for m in &set.members {
                        prop_assert_eq!(usable(m.instance), Usable::Yes);
                        let x = insts[m.instance as usize];
                        let local = Ring::of_instances(&[InstanceTokens { instance: 0, seed: x.seed, cores: x.cores }], t);
                        prop_assert_eq!(local.owner(k).core, m.core);
                    }
                    // The first live replica is the key's owner whenever the owner is usable.
                    if usable(ring.owner(k).instance) == Usable::Yes {
                        prop_assert_eq!(set.members[0], ring.owner(k));
                    }
                    // Counting: extensions add one taken instance each, up to what the ring has.
                    let extended = (0..insts.len() as u32).filter(|i| usable(*i) == Usable::Extend).count();
                    prop_assert!(taken <= rf + extended);
                    prop_assert!(taken == insts.len() || taken >= rf);
                }
                Err(RingError::TooFewLive { needed, found }) => prop_assert!(found < needed),
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }

    /// With every instance usable, a key has `min(rf, n)` live replicas, the first being its
    /// owner; as in dskit, fewer instances than RF's quorum (RF=3 on one instance) is an error.
    #[test]
    fn all_usable_takes_min_rf_n(seeds in proptest::collection::vec(any::<u64>(), 1..7), rf in 1usize..5, k in any::<u64>()) {
        let insts: Vec<InstanceTokens> = seeds.iter().enumerate().map(|(i, s)| InstanceTokens { instance: i as u32, seed: *s, cores: 2 }).collect();
        let ring = Ring::of_instances(&insts, 4);
        let got = ring.replicas(k, rf, |_| Usable::Yes);
        if insts.len() < rf / 2 + 1 {
            prop_assert_eq!(got, Err(RingError::TooFewLive { needed: rf / 2 + 1, found: insts.len() }));
            return Ok(());
        }
        let set = got.unwrap();
        prop_assert_eq!(set.members.len(), rf.min(insts.len()));
        prop_assert_eq!(set.members[0], ring.owner(k));
        prop_assert_eq!(set.unhealthy, 0);
    }

    /// The tracker against a direct count: a push succeeds exactly when every series has its
    /// quorum of acks, fails exactly when one cannot get there any more, and the first final
    /// outcome sticks.
    #[test]
    fn quorum_tracker_matches_counting(
        sets in proptest::collection::vec((proptest::collection::btree_set(0u32..6, 1..5), 1usize..4), 0..5),
        answers in proptest::collection::vec((0u32..7, any::<bool>()), 0..12),
    ) {
        let sets: Vec<ReplicaSet> = sets
            .into_iter()
            .map(|(ids, q)| ReplicaSet { members: ids.into_iter().map(|instance| Member { instance, core: 0 }).collect(), quorum: q, unhealthy: 0 })
            .collect();
        let mut tr = QuorumTracker::new(&sets);
        let mut answered: Vec<(u32, bool)> = Vec::new();
        let mut first_final: Option<Outcome> = None;
        let final_of = |answered: &[(u32, bool)]| {
            let count = |set: &ReplicaSet, ok: bool| set.members.iter().filter(|m| answered.contains(&(m.instance, ok))).count();
            if sets.iter().any(|s| s.members.len() - count(s, false) < s.quorum) {
                Some(Outcome::Failed)
            } else if sets.iter().all(|s| count(s, true) >= s.quorum) {
                Some(Outcome::Succeeded)
            } else {
                None
            }
        };
        first_final = first_final.or(final_of(&answered));
        prop_assert_eq!(tr.outcome(), first_final.unwrap_or(Outcome::Pending));
        for (i, ok) in answers {
            if !answered.iter().any(|(j, _)| *j == i) {
                answered.push((i, ok));
            }
            let got = tr.record(i, ok);
            first_final = first_final.or(final_of(&answered));
            prop_assert_eq!(got, first_final.unwrap_or(Outcome::Pending));
        }
        let failed: Vec<u32> = answered.iter().filter(|(i, ok)| !ok && tr.instances().any(|j| j == *i)).map(|(i, _)| *i).collect();
        prop_assert_eq!(tr.failed(), &failed[..]);
    }

    /// A write's replicas, from any membership: live ones are ACTIVE, healthy ingesters; the
    /// quorum is dskit's over what the walk took; `read_ingesters` is exactly the ACTIVE,
    /// healthy ingesters; a rebuild from another snapshot routes like a fresh build.
    #[test]
    fn snapshot_write_replicas_respect_states(
        members in proptest::collection::vec((0u8..5, 0u64..4_000, any::<u64>(), 1u32..4, any::<bool>()), 0..8),
        keys in proptest::collection::vec(any::<u64>(), 1..8),
        rf in 1usize..4,
    ) {
        let cfg = RingConfig { tokens_per_core: 4, heartbeat_timeout_ms: 1_000, forget_after_ms: 2_500 };
        let now = 4_000;
        let descs: Vec<InstanceDesc> = members
            .iter()
            .enumerate()
            .map(|(i, (st, hb, seed, cores, ingester))| InstanceDesc {
                state: State::ALL[*st as usize],
                cores: *cores,
                components: Components(if *ingester { Components::INGESTER } else { Components::QUERIER }),
                ..desc(&format!("i{i}"), State::Active, *hb, *seed)
            })
            .collect();
        let s = Snapshot::build(descs.clone(), now, &cfg);
        let other = Snapshot::build(descs[..descs.len() / 2].to_vec(), now, &cfg);
        let rebuilt = other.rebuild(descs, now, &cfg);
        prop_assert_eq!(rebuilt.ingester_ring().digest(), s.ingester_ring().digest());
        prop_assert_eq!(rebuilt.digest(), s.digest());
        let readable = |i: u32| {
            let d = &s.instances()[i as usize];
            d.state == State::Active && s.healthy(i) && d.components.has(Components::INGESTER)
        };
        prop_assert_eq!(s.read_ingesters(), (0..s.instances().len() as u32).filter(|i| readable(*i)).collect::<Vec<_>>());
        for &k in &keys {
            match s.write_replicas(k, rf) {
                Ok(set) => {
                    for m in &set.members {
                        prop_assert!(readable(m.instance));
                    }
                    prop_assert_eq!(set.quorum, (set.members.len() + set.unhealthy).max(rf) / 2 + 1);
                }
                Err(RingError::Empty) => prop_assert!(s.ingester_ring().is_empty()),
                Err(RingError::TooFewLive { needed, found }) => prop_assert!(found < needed),
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }
}
