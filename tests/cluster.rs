//! Cluster mode with real processes on 127.0.0.1: three `-target=all` instances joined by
//! gossip, writes replicated to RF=3 with a quorum of 2.
mod common;
use common::snapshot::{assert_same, flush, push_fixture, snapshot};
use common::*;
use std::time::{Duration, Instant};

/// A free UDP port on 127.0.0.1 for a member's gossip.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

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

/// The flags of a member: gossip on `gossip`, joining `seed`, fast heartbeats so a kill shows
/// within seconds.
fn member_flags(gossip: u16, seed: u16, blocks: &std::path::Path) -> Vec<String> {
    vec![
        "-shards=1".into(),
        "-memberlist.bind-addr=127.0.0.1".into(),
        format!("-memberlist.bind-port={gossip}"),
        format!("-memberlist.join=127.0.0.1:{seed}"),
        "-ingester.heartbeat-period=500ms".into(),
        "-ring.heartbeat-timeout=3s".into(),
        format!("-storage.filesystem.dir={}", blocks.display()),
    ]
}

fn start_member(data: std::path::PathBuf, port: (u16, socket2::Socket), flags: &[String]) -> Kiln {
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    Kiln::start_at(data, port, &args, &Spawn::default())
}

/// The states `/ring` on `port` shows, as "STATE" or "STATE (UNHEALTHY)", one per member.
fn ring_states(port: u16) -> Vec<String> {
    let page = get(port, "/ring").text();
    page.split("<tr><td>").skip(1).filter_map(|row| row.split("</td><td>").nth(2).map(str::to_string)).collect()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pushes one profile of service `svc` through `port`: `main;work <n>` in folded form.
fn push(port: u16, svc: &str, n: u64) -> u16 {
    let until = now_ms() / 1000;
    let path = format!("/ingest?name={svc}&from={}&until={until}&format=folded", until - 10);
    post(port, &path, &[], format!("main;work {n}").into_bytes()).status
}

/// The total of service `svc` through `port` (numTicks of its flame graph).
fn total(port: u16, svc: &str) -> u64 {
    let q = format!(
        "/pyroscope/render?query=process_cpu:cpu:nanoseconds:cpu:nanoseconds%7Bservice_name%3D%22{svc}%22%7D&from=now-1h&until=now%2B1h"
    );
    let r = get(port, &q);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["flamebearer"]["numTicks"].as_u64().unwrap_or(0)
}

/// A directory for a test's shared blocks, empty.
fn blocks_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cluster-blocks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn every_fixture_reads_the_same_through_any_member_as_on_one_node_and_replicas_count_once() {
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
        wait_until("the member answers as the single node", || snapshot(n.port) == want);
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
fn a_lone_member_with_replication_factor_three_takes_writes_alone() {
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
