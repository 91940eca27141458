//! Cluster mode with real processes on 127.0.0.1: three `-target=all` instances joined by
//! gossip, writes replicated to RF=3 with a quorum of 2.
mod common;
use common::members::*;
use common::snapshot::{assert_same, flush, half_in_blocks_answers, push_fixture, snapshot, wait_for_answers, START};
use common::*;

/// Three members gossiping on loopback, sharing one blocks directory; `extra` flags for
/// every member.
fn start_cluster(blocks: &std::path::Path, extra: &[&str]) -> (Vec<Node>, u16) {
    let seed = free_udp_port();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let gossip = if i == 0 { seed } else { free_udp_port() };
        let data = std::env::temp_dir().join(format!("kiln-cluster-{}-{}-{i}", std::process::id(), seed));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        let mut flags = member_flags(gossip, seed, blocks);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let k = start_member(data, hold_port(), &flags);
        nodes.push(Node { port: k.port, kiln: Some(k), gossip });
    }
    for n in &nodes {
        wait_until("every member sees three ACTIVE ingesters", || ring_states(n.port) == ["ACTIVE"; 3]);
    }
    (nodes, seed)
}

struct Node {
    kiln: Option<Kiln>,
    gossip: u16,
    port: u16,
}

/// Pushes one profile of service `svc` through `port`: `main;work <n>` in folded form.
fn push(port: u16, svc: &str, n: u64) -> u16 {
    push_as(port, &[], svc, n)
}

/// `push` with request headers (a tenant's `X-Scope-OrgID`).
fn push_as(port: u16, headers: &[(&str, &str)], svc: &str, n: u64) -> u16 {
    let until = now_ms() / 1000;
    let path = format!("/ingest?name={svc}&from={}&until={until}&format=folded", until - 10);
    post(port, &path, headers, format!("main;work {n}").into_bytes()).status
}

/// The total of service `svc` through `port` (numTicks of its flame graph).
fn total(port: u16, svc: &str) -> u64 {
    total_as(port, &[], svc)
}

/// `total` with request headers (a tenant's `X-Scope-OrgID`).
fn total_as(port: u16, headers: &[(&str, &str)], svc: &str) -> u64 {
    let q = format!(
        "/pyroscope/render?query=process_cpu:cpu:nanoseconds:cpu:nanoseconds%7Bservice_name%3D%22{svc}%22%7D&from=now-1h&until=now%2B1h"
    );
    let r = request(port, "GET", &q, headers, Vec::new(), false);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["flamebearer"]["numTicks"].as_u64().unwrap_or(0)
}

#[test]
fn every_fixture_reads_the_same_through_any_member_as_on_one_node_and_replicas_count_once() {
    let _serial = one_at_a_time();
    let single = Kiln::start(&[FIXTURE_FLAGS, &["-shards=1"]].concat());
    let fixtures = golden_pprofs();
    for (i, path) in fixtures.iter().enumerate() {
        push_fixture(single.port, &format!("svc-{i}"), std::fs::read(path).unwrap());
    }
    let want = snapshot(single.port);
    drop(single);

    let blocks = blocks_dir("fixtures");
    let (mut nodes, _) = start_cluster(&blocks, FIXTURE_FLAGS);
    for (i, path) in fixtures.iter().enumerate() {
        push_fixture(nodes[i % 3].port, &format!("svc-{i}"), std::fs::read(path).unwrap());
    }
    // Every member holds every series (RF=3 on three members): each answer comes from all
    // three, each profile counted once. A replica not needed for the quorum may still be
    // writing when the push is answered: the answers settle within moments.
    for n in &nodes {
        wait_for_answers(n.port, &want, "the member answers as the single node");
    }
    // Heads cut into blocks in the shared bucket, three copies of each profile: still once.
    for n in &nodes {
        flush(n.port);
    }
    for n in &nodes {
        assert_same(&want, &snapshot(n.port), "from the replicas' blocks");
    }
    // A member killed: the two left are a quorum of every replica set, before and after it
    // shows UNHEALTHY; restarted, it serves its own blocks again.
    let (data, port) = nodes[1].kiln.take().unwrap().kill_keeping_port();
    assert_same(&want, &snapshot(nodes[0].port), "one member of three killed");
    wait_until("the killed member shows UNHEALTHY", || {
        ring_states(nodes[2].port).iter().filter(|s| s.contains("UNHEALTHY")).count() == 1
    });
    assert_same(&want, &snapshot(nodes[2].port), "one member of three UNHEALTHY");
    let mut flags = member_flags(nodes[1].gossip, nodes[0].gossip, &blocks);
    flags.extend(FIXTURE_FLAGS.iter().map(|s| s.to_string()));
    let k = start_member(data, port, &flags);
    nodes[1].port = k.port;
    nodes[1].kiln = Some(k);
    wait_until("the restarted member is ACTIVE", || ring_states(nodes[0].port) == ["ACTIVE"; 3]);
    assert_same(&want, &snapshot(nodes[1].port), "through the restarted member");
    let _ = std::fs::remove_dir_all(&blocks);
}

#[test]
fn microservices_answer_as_one_node_distributor_ingesters_querier_and_store_gateway_apart() {
    let _serial = one_at_a_time();
    // One node writes half the fixtures into blocks of a shared bucket and keeps the other
    // half in its head: its answers are what the microservices must give.
    let (blocks, want, new) = half_in_blocks_answers("micro");

    let targets = ["ingester", "ingester", "ingester", "store-gateway", "distributor", "querier"];
    let procs = start_members("micro", &targets, &blocks, FIXTURE_FLAGS);
    let (distributor, querier) = (procs[4].port, procs[5].port);
    wait_until("three ACTIVE ingesters", || ring_states(querier) == ["ACTIVE"; 3]);
    wait_until("an ACTIVE store-gateway", || {
        get(querier, "/store-gateway/ring").text().matches("<td>ACTIVE</td>").count() == 1
    });
    wait_until("the distributor sees three ingesters", || ring_states(distributor) == ["ACTIVE"; 3]);
    for (i, path) in new.iter().enumerate() {
        push_fixture(distributor, &format!("new-{i}"), std::fs::read(path).unwrap());
    }
    wait_for_answers(querier, &want, "the querier answers as the single node");
    // Each component serves its own routes only.
    let r = get(distributor, "/pyroscope/label-values?label=service_name");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("-target=distributor"), "{}", r.text());
    assert_eq!(post(querier, "/ingest?name=x&format=folded", &[], b"a 1".to_vec()).status, 404);
    // The ingesters' heads cut into blocks: still the same answers.
    for k in &procs[..3] {
        flush(k.port);
    }
    assert_same(&want, &snapshot(querier), "after the ingesters cut their heads");
    drop(procs);
    let _ = std::fs::remove_dir_all(&blocks);
}

#[test]
fn a_lone_member_with_replication_factor_three_takes_writes_alone() {
    let _serial = one_at_a_time();
    let blocks = blocks_dir("lone");
    let gossip = free_udp_port();
    let k = start_member(
        std::env::temp_dir().join(format!("kiln-lone-{}", std::process::id())),
        hold_port(),
        &member_flags(gossip, gossip, &blocks),
    );
    wait_until("the member is ACTIVE", || ring_states(k.port) == ["ACTIVE"]);
    assert_eq!(push(k.port, "lone", 3), 200);
    assert_eq!(total(k.port, "lone"), 30_000_000);
    let metrics = get(k.port, "/metrics").text();
    assert!(metrics.contains("kiln_ring_members{state=\"ACTIVE\",healthy=\"true\"} 1"));
    // Alone, it calls no one: no internal bytes.
    assert!(metrics.contains("kiln_cluster_call_bytes_total{kind=\"push\"} 0"), "{metrics}");
    let _ = std::fs::remove_dir_all(&blocks);
}

#[test]
fn three_members_form_a_ring_replicate_writes_and_keep_taking_them_after_a_kill() {
    let _serial = one_at_a_time();
    let blocks = blocks_dir("kill");
    let (mut nodes, seed) = start_cluster(&blocks, &[]);

    // Every push through any member is acknowledged once two of its three replicas have it in
    // their WAL; each is counted once through any member.
    let mut pushed = 0;
    for i in 0..30u64 {
        let via = nodes[(i % 3) as usize].port;
        assert_eq!(push(via, "svc-a", 1 + i % 5), 200);
        pushed += 1 + i % 5;
    }
    // These pushes share timestamps (one per second), so a (series, timestamp) holds several
    // profiles, and a replica not needed for a push's quorum may still be writing it: the
    // count settles once every replica has all of them.
    let ticks = pushed * 10_000_000;
    for n in &nodes {
        wait_until("each push is counted once", || total(n.port, "svc-a") == ticks);
    }
    // Each member sent its pushes' copies to the other two: internal bytes on /metrics.
    for n in &nodes {
        let sent = metric(n.port, "kiln_cluster_call_bytes_total{kind=\"push\"}");
        assert!(sent > 0.0, "member {} sent no push bytes", n.port);
    }

    // kill -9 one member: writes go on with a quorum of the two left, at once and after the
    // dead one turns UNHEALTHY.
    let dead = nodes[2].kiln.take().unwrap();
    let (data, port) = dead.kill_keeping_port();
    let mut after = 0;
    for i in 0..10u64 {
        assert_eq!(push(nodes[(i % 2) as usize].port, "svc-b", 2), 200, "push {i} after the kill");
        after += 2;
    }
    wait_until("the killed member shows UNHEALTHY", || {
        ring_states(nodes[0].port).iter().filter(|s| s.contains("UNHEALTHY")).count() == 1
    });
    for i in 0..10u64 {
        assert_eq!(push(nodes[(i % 2) as usize].port, "svc-b", 2), 200, "push {i} with the dead member UNHEALTHY");
        after += 2;
    }
    for n in &nodes[..2] {
        wait_until("each push is counted once by the two live members", || {
            total(n.port, "svc-b") == after * 10_000_000
        });
    }

    // Restarted on its data, it replays what it acknowledged before the kill and turns ACTIVE.
    let k = start_member(data, port, &member_flags(nodes[2].gossip, seed, &blocks));
    let restarted = k.port;
    nodes[2].kiln = Some(k);
    wait_until("the restarted member is ACTIVE again", || ring_states(nodes[0].port) == ["ACTIVE"; 3]);
    assert_eq!(total(restarted, "svc-a"), ticks, "what the member acknowledged before its kill is back");

    // With two of three members gone, a series cannot reach its quorum: refused, not lost.
    for n in &mut nodes[1..] {
        let _ = n.kiln.take().unwrap().kill();
    }
    let status = push(nodes[0].port, "svc-c", 1);
    assert_eq!(status, 503, "a push without a quorum fails");
    let _ = std::fs::remove_dir_all(&blocks);
}

/// Every acknowledged push of `acked` is read back through `port`, each push that made it
/// counted once (each `seq` adds `seq + 1`).
fn assert_each_acked_push_counted_once(port: u16, service: &str, acked: &std::collections::BTreeSet<u64>, when: &str) {
    let (seqs, total) = seqs_and_total(port, service);
    let lost: Vec<_> = acked.difference(&seqs).take(5).collect();
    assert!(lost.is_empty(), "{when}: acknowledged pushes lost, e.g. {lost:?}");
    let want: i64 = seqs.iter().map(|i| *i as i64 + 1).sum();
    assert_eq!(total, want, "{when}: pushes counted twice or partly");
}

/// Waits until `pushers` has had `more` pushes acknowledged beyond what it had.
fn wait_for_acks(pushers: &Pushers, more: usize, what: &str) {
    let target = pushers.acked() + more;
    wait_until(what, || pushers.acked() >= target);
}

#[test]
fn kill_9_of_an_ingester_under_load_loses_no_acknowledged_push_and_counts_each_once() {
    let _serial = one_at_a_time();
    let blocks = blocks_dir("load-kill");
    let (mut nodes, _) = start_cluster(&blocks, &[]);
    let pushers = Pushers::start(nodes[0].port, "load");
    wait_for_acks(&pushers, 200, "pushes are acknowledged");
    let (data, port) = nodes[2].kiln.take().unwrap().kill_keeping_port();
    wait_for_acks(&pushers, 200, "pushes go on with two of three replicas");
    wait_until("the killed member shows UNHEALTHY", || {
        ring_states(nodes[0].port).iter().filter(|s| s.contains("UNHEALTHY")).count() == 1
    });
    wait_for_acks(&pushers, 200, "pushes go on with the dead member UNHEALTHY");
    let k = start_member(data, port, &member_flags(nodes[2].gossip, nodes[0].gossip, &blocks));
    nodes[2].port = k.port;
    nodes[2].kiln = Some(k);
    wait_until("the restarted member is ACTIVE", || ring_states(nodes[0].port) == ["ACTIVE"; 3]);
    wait_for_acks(&pushers, 200, "pushes go on with the member back");
    let acked = pushers.stop();
    for n in &nodes {
        assert_each_acked_push_counted_once(n.port, "load", &acked, "after kill -9 and restart");
    }
    let _ = std::fs::remove_dir_all(&blocks);
}

#[test]
fn a_rolling_restart_of_every_member_under_load_loses_no_acknowledged_push() {
    let _serial = one_at_a_time();
    let blocks = blocks_dir("rolling");
    let (mut nodes, _) = start_cluster(&blocks, &[]);
    // Two streams, through two members: while either is restarting, the other's go on.
    let pushers = [Pushers::start(nodes[0].port, "roll-a"), Pushers::start(nodes[1].port, "roll-b")];
    wait_for_acks(&pushers[0], 100, "pushes are acknowledged");
    for i in [2, 0, 1] {
        let (data, port, code) = nodes[i].kiln.take().unwrap().terminate_keeping_port();
        assert_eq!(code, Some(0), "member {i} stopped cleanly");
        let other = &pushers[if i == 0 { 1 } else { 0 }];
        wait_for_acks(other, 50, "pushes go on while a member is down");
        let k = start_member(data, port, &member_flags(nodes[i].gossip, nodes[(i + 1) % 3].gossip, &blocks));
        nodes[i].port = k.port;
        nodes[i].kiln = Some(k);
        wait_until("the restarted member is ACTIVE", || ring_states(nodes[(i + 1) % 3].port) == ["ACTIVE"; 3]);
        wait_for_acks(other, 50, "pushes go on with the member back");
    }
    let [a, b] = pushers;
    let (acked_a, acked_b) = (a.stop(), b.stop());
    for n in &nodes {
        assert_each_acked_push_counted_once(n.port, "roll-a", &acked_a, "after a rolling restart");
        assert_each_acked_push_counted_once(n.port, "roll-b", &acked_b, "after a rolling restart");
    }
    let _ = std::fs::remove_dir_all(&blocks);
}

#[test]
fn a_dead_member_is_forgotten_by_the_forget_button_or_on_its_own() {
    let _serial = one_at_a_time();
    let blocks = blocks_dir("forget");
    let (mut nodes, _) = start_cluster(&blocks, &["-ring.auto-forget-after=6s"]);
    let _ = nodes[2].kiln.take().unwrap().kill();
    let id = format!("{}-{}", std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(), nodes[2].port);
    let r = post(
        nodes[0].port,
        "/ring",
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("forget={id}").into_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("Forgetting"), "{}", r.text());
    // Every member drops it, well before it would be forgotten on its own.
    for n in &nodes[..2] {
        wait_until("the forgotten member is gone", || ring_states(n.port).len() == 2);
    }
    let self_forget =
        format!("forget={}-{}", std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(), nodes[0].port);
    assert_eq!(post(nodes[0].port, "/ring", &[], self_forget.into_bytes()).status, 400);
    // Nobody forgets this one: UNHEALTHY after 3 s, gone after 6 s of silence.
    let _ = nodes[1].kiln.take().unwrap().kill();
    wait_until("the dead member shows UNHEALTHY", || {
        ring_states(nodes[0].port).iter().any(|s| s.contains("UNHEALTHY"))
    });
    wait_until("the dead member is forgotten on its own", || ring_states(nodes[0].port) == ["ACTIVE"]);
    let _ = std::fs::remove_dir_all(&blocks);
}

/// `tenant`'s head series on the ingester at `port` (`kiln_ingester_head_series`), `None`
/// when it reports none for the tenant.
fn head_series(port: u16, tenant: &str) -> Option<u64> {
    let line = format!("kiln_ingester_head_series{{tenant=\"{tenant}\"}} ");
    get(port, "/metrics").text().lines().find_map(|l| l.strip_prefix(&line).map(|v| v.trim().parse().unwrap()))
}

#[test]
fn shuffle_sharding_puts_a_tenants_series_on_exactly_its_shard_size_of_ingesters() {
    let _serial = one_at_a_time();
    let blocks = blocks_dir("shuffle");
    // Tenant "A" has a shard of 3 of the 5 ingesters (a per-tenant override); "B" has none.
    let yaml = std::env::temp_dir().join(format!("kiln-shuffle-{}.yaml", std::process::id()));
    std::fs::write(&yaml, "overrides:\n  A:\n    ingestion_tenant_shard_size: 3\n").unwrap();
    let config = format!("-config.file={}", yaml.display());
    let extra = [config.as_str(), "-auth.multitenancy-enabled", "-distributor.replication-factor=3"];
    let targets = ["ingester", "ingester", "ingester", "ingester", "ingester", "distributor", "querier"];
    let procs = start_members("shuffle", &targets, &blocks, &extra);
    let (ingesters, distributor, querier) = (&procs[..5], procs[5].port, procs[6].port);
    for port in [distributor, querier] {
        wait_until("five ACTIVE ingesters", || ring_states(port) == ["ACTIVE"; 5]);
    }
    let (a, b) = ([("X-Scope-OrgID", "A")], [("X-Scope-OrgID", "B")]);
    let series = 40u64;
    for i in 0..series {
        assert_eq!(push_as(distributor, &a, &format!("a-{i}"), 1 + i), 200);
        assert_eq!(push_as(distributor, &b, &format!("b-{i}"), 1 + i), 200);
    }
    // RF=3 within a shard of 3: every series of A on each of its three ingesters, none
    // elsewhere. A replica not needed for the quorum may still be writing: counts settle.
    wait_until("A's series are on three ingesters, all of them on each", || {
        let counts: Vec<Option<u64>> = ingesters.iter().map(|k| head_series(k.port, "A")).collect();
        counts.iter().filter(|c| **c == Some(series)).count() == 3
    });
    let holders: Vec<u16> = ingesters.iter().filter(|k| head_series(k.port, "A").is_some()).map(|k| k.port).collect();
    assert_eq!(holders.len(), 3, "A's series reached more than its shard: {holders:?}");
    // B is not sharded: its series spread over all five, three copies each.
    wait_until("B's series are on all five ingesters, three copies each", || {
        let counts: Vec<u64> = ingesters.iter().map(|k| head_series(k.port, "B").unwrap_or(0)).collect();
        counts.iter().sum::<u64>() == 3 * series
    });
    for k in ingesters {
        assert!(head_series(k.port, "B").is_some_and(|n| n > 0), "ingester {} holds none of B", k.port);
    }
    // The distributor (one core) drew each tenant's shard once per snapshot, not per push.
    let drawn = metric(distributor, "kiln_ring_tenant_shards_drawn_total");
    let snapshots = metric(distributor, "kiln_ring_snapshots_total");
    assert!(drawn >= 2.0 && drawn <= 2.0 * snapshots && drawn < (2 * series) as f64, "drawn {drawn}");
    // Reads still ask every ingester: each tenant's answers through the querier are whole,
    // each replica counted once, and one tenant never sees the other's.
    for i in [0, 17, 39] {
        assert_eq!(total_as(querier, &a, &format!("a-{i}")), (1 + i) * 10_000_000);
        assert_eq!(total_as(querier, &b, &format!("b-{i}")), (1 + i) * 10_000_000);
        assert_eq!(total_as(querier, &a, &format!("b-{i}")), 0);
    }
    drop(procs);
    let _ = std::fs::remove_file(&yaml);
    let _ = std::fs::remove_dir_all(&blocks);
}

/// Blocks listed live in every tenant's bucket index under `blocks` (none is marked for
/// deletion in these tests).
fn indexed_blocks(blocks: &std::path::Path) -> usize {
    let mut n = 0;
    for tenant in std::fs::read_dir(blocks).into_iter().flatten().flatten() {
        if let Ok(idx) = std::fs::read(tenant.path().join("bucket-index.json")) {
            let v: serde_json::Value = serde_json::from_slice(&idx).unwrap();
            n += v["blocks"].as_array().map_or(0, |b| b.len());
        }
    }
    n
}

#[test]
fn store_gateways_own_every_block_through_their_ring_and_one_killed_mid_query_loses_no_answer() {
    let _serial = one_at_a_time();
    let fixtures = golden_pprofs();
    let single = Kiln::start(&[FIXTURE_FLAGS, &["-shards=1"]].concat());
    for (i, path) in fixtures.iter().enumerate() {
        push_fixture(single.port, &format!("svc-{i}"), std::fs::read(path).unwrap());
    }
    let want = snapshot(single.port);
    drop(single);

    // Three ingesters (RF 3) and two store-gateways, each block on both (RF 2), syncing every
    // second; two cores each, so blocks land on either core of a store-gateway.
    let blocks = blocks_dir("sgring");
    let targets = ["ingester", "ingester", "ingester", "store-gateway", "store-gateway", "distributor", "querier"];
    let flags = [
        FIXTURE_FLAGS,
        &["-shards=2", "-store-gateway.sharding-ring.replication-factor=2", "-store-gateway.sync-interval=1s"],
    ]
    .concat();
    let mut procs: Vec<Option<Kiln>> =
        start_members("sgring", &targets, &blocks, &flags).into_iter().map(Some).collect();
    let port = |i: usize| procs[i].as_ref().unwrap().port;
    let (distributor, querier) = (port(5), port(6));
    wait_until("three ACTIVE ingesters", || ring_states(querier) == ["ACTIVE"; 3]);
    wait_until("two ACTIVE store-gateways", || {
        get(querier, "/store-gateway/ring").text().matches("<td>ACTIVE</td>").count() == 2
    });
    wait_until("the distributor sees three ingesters", || ring_states(distributor) == ["ACTIVE"; 3]);
    // With RF 2 on two store-gateways, each owns every block: the page says 100% for both.
    let page = get(querier, "/store-gateway/ring").text();
    assert_eq!(page.matches("<td>100.0%</td>").count(), 2, "{page}");
    for (i, path) in fixtures.iter().enumerate() {
        push_fixture(distributor, &format!("svc-{i}"), std::fs::read(path).unwrap());
    }
    wait_for_answers(querier, &want, "the querier answers as the single node");
    // Every ingester cuts its heads: three copies of each profile in blocks, served by their
    // ingesters and, once synced, by both store-gateways (every cutter's blocks on each).
    for i in 0..3 {
        flush(port(i));
    }
    let n = indexed_blocks(&blocks);
    assert!(n >= 3, "each ingester cut blocks: {n}");
    for sg in [3, 4] {
        wait_until("the store-gateway synced every block", || {
            metric(port(sg), "kiln_store_gateway_blocks_synced") == n as f64
                && metric_sum(port(sg), "kiln_store_gateway_blocks_owned") == n as f64
        });
    }
    assert_same(&want, &snapshot(querier), "ingesters and store-gateways holding each profile five times");
    // The ingesters leave (their heads are empty, everything is in blocks): only the
    // store-gateways hold the data now, each every cutter's copy of it.
    for p in &mut procs[..3] {
        let (_, _, code) = p.take().unwrap().terminate_keeping_port();
        assert_eq!(code, Some(0));
    }
    wait_until("no ingester left on the ring", || ring_states(querier).is_empty());
    assert_same(&want, &snapshot(querier), "from the store-gateways alone");
    // One store-gateway killed while queries run: each answer is still whole, whether it
    // died before a query's first step, between its steps or after.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asker = {
        let (stop, want) = (stop.clone(), want.clone());
        std::thread::spawn(move || {
            let mut asked = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || asked < 3 {
                assert_same(&want, &snapshot(querier), "while a store-gateway is killed");
                asked += 1;
            }
            asked
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = procs[3].take().unwrap().kill();
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(asker.join().expect("every answer whole") >= 3);
    wait_until("the killed store-gateway shows UNHEALTHY", || {
        get(querier, "/store-gateway/ring").text().contains("(UNHEALTHY)")
    });
    assert_same(&want, &snapshot(querier), "one store-gateway of two UNHEALTHY");
    // The other one killed too: no store-gateway holds the blocks, and the error says so.
    let _ = procs[4].take().unwrap().kill();
    let r = cpu_flame_graph(querier, 0);
    assert_ne!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("store-gateways failed") && r.text().contains("missing: instance "), "{}", r.text());
    drop(procs);
    let _ = std::fs::remove_dir_all(&blocks);
}

#[test]
fn a_querier_refuses_to_answer_short_while_no_store_gateway_holds_some_blocks() {
    let _serial = one_at_a_time();
    // A single node writes half the fixtures into blocks of the bucket (blocks no ingester
    // of the cluster cut, so only a store-gateway serves them) and keeps the other half in
    // its head: its answers are the cluster's once it holds the same data.
    let (blocks, want, new) = half_in_blocks_answers("coverage");
    // One store-gateway, syncing every second: the querier checks blocks uploaded 5 s ago
    // (three syncs and two seconds) or earlier.
    let targets = ["ingester", "store-gateway", "distributor", "querier"];
    let flags = [FIXTURE_FLAGS, &["-distributor.replication-factor=1", "-store-gateway.sync-interval=1s"]].concat();
    let mut procs = start_members("coverage", &targets, &blocks, &flags);
    let (distributor, querier) = (procs[2].port, procs[3].port);
    let store_gateways_active =
        |n: usize| move || get(querier, "/store-gateway/ring").text().matches("<td>ACTIVE</td>").count() == n;
    wait_until("an ACTIVE ingester", || ring_states(querier) == ["ACTIVE"]);
    wait_until("an ACTIVE store-gateway", store_gateways_active(1));
    wait_until("the distributor sees the ingester", || ring_states(distributor) == ["ACTIVE"]);
    for (i, path) in new.iter().enumerate() {
        push_fixture(distributor, &format!("new-{i}"), std::fs::read(path).unwrap());
    }
    wait_for_answers(querier, &want, "the querier answers as the single node");

    // The store-gateway dies: the ingester alone answers, and it holds none of the blocks.
    // Every block is settled by now (uploaded more than 5 s ago): the querier refuses, naming
    // them, instead of answering with the head's half.
    let index = blocks.join("anonymous/bucket-index.json");
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    let ids: Vec<String> =
        idx["blocks"].as_array().unwrap().iter().map(|b| b["block_id"].as_str().unwrap().into()).collect();
    let newest = idx["blocks"].as_array().unwrap().iter().map(|b| b["uploaded_at"].as_i64().unwrap()).max().unwrap();
    while now_ms() / 1000 <= newest + 5 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let seed = gossip_port_of(&procs[0]);
    let _ = procs.remove(1).kill();
    wait_until("the store-gateway shows UNHEALTHY", || {
        get(querier, "/store-gateway/ring").text().contains("(UNHEALTHY)")
    });
    let refused = metric(querier, "kiln_querier_block_checks_refused_total");
    let r = cpu_flame_graph(querier, START);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("read by no ingester or store-gateway"), "{}", r.text());
    assert!(ids.iter().any(|id| r.text().contains(id.as_str())), "names a block of {ids:?}: {}", r.text());
    // Label queries too: the blocks' services are not left out of the list silently.
    let r = connect_json(
        querier,
        "/querier.v1.QuerierService/LabelValues",
        &[],
        serde_json::json!({ "name": "service_name", "start": START, "end": now_ms() + 3_600_000 }),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("read by no ingester or store-gateway"), "{}", r.text());
    assert_eq!(metric(querier, "kiln_querier_block_checks_refused_total"), refused + 2.0);

    // A new store-gateway joins and takes every block: the answers are whole again.
    let data = std::env::temp_dir().join(format!("kiln-coverage-{}-sg2", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let mut sg = member_flags(free_udp_port(), seed, &blocks);
    sg.push("-target=store-gateway".into());
    sg.extend(flags.iter().map(|s| s.to_string()));
    let _sg = start_member(data, hold_port(), &sg);
    wait_until("the new store-gateway is ACTIVE", store_gateways_active(1));
    wait_for_answers(querier, &want, "the querier answers as the single node with the new store-gateway");
    drop(procs);
    let _ = std::fs::remove_dir_all(&blocks);
}

/// SelectMergeStacktraces of the CPU profiles from `start` (ms) to an hour from now, as JSON.
fn cpu_flame_graph(port: u16, start: i64) -> Resp {
    connect_json(
        port,
        "/querier.v1.QuerierService/SelectMergeStacktraces",
        &[],
        serde_json::json!({
            "profileTypeID": "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
            "labelSelector": "{}",
            "start": start,
            "end": now_ms() + 3_600_000,
        }),
    )
}
