//! Cluster mode with real processes on 127.0.0.1: three `-target=all` instances joined by
//! gossip, writes replicated to RF=3 with a quorum of 2.
mod common;
use common::*;
use std::time::{Duration, Instant};

/// A free UDP port on 127.0.0.1 for a member's gossip.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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

/// The total of service `svc` on `port`'s own cores (numTicks of its flame graph).
fn total(port: u16, svc: &str) -> u64 {
    let q = format!(
        "/pyroscope/render?query=process_cpu:cpu:nanoseconds:cpu:nanoseconds%7Bservice_name%3D%22{svc}%22%7D&from=now-1h&until=now%2B1h"
    );
    let r = get(port, &q);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["flamebearer"]["numTicks"].as_u64().unwrap_or(0)
}

#[test]
fn three_members_form_a_ring_replicate_writes_and_keep_taking_them_after_a_kill() {
    let blocks = std::env::temp_dir().join(format!("kiln-cluster-blocks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&blocks);
    let seed = free_udp_port();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let gossip = if i == 0 { seed } else { free_udp_port() };
        let data = std::env::temp_dir().join(format!("kiln-cluster-{}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        let k = start_member(data, hold_port(), &member_flags(gossip, seed, &blocks));
        nodes.push(Node { port: k.port, kiln: Some(k), gossip });
    }
    for n in &nodes {
        wait_until("every member sees three ACTIVE ingesters", || ring_states(n.port) == ["ACTIVE"; 3]);
    }

    // Every push through any member is acknowledged once two of its three replicas have it in
    // their WAL; with RF=3 on three members, each member ends up holding every series.
    let mut pushed = 0;
    for i in 0..30u64 {
        let via = nodes[(i % 3) as usize].port;
        assert_eq!(push(via, "svc-a", 1 + i % 5), 200);
        pushed += 1 + i % 5;
    }
    // A replica that was not needed for the quorum may still be writing: wait for it.
    let ticks = pushed * 10_000_000;
    for n in &nodes {
        wait_until("every replica holds every push", || total(n.port, "svc-a") == ticks);
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
        wait_until("both live replicas hold the pushes", || total(n.port, "svc-b") == after * 10_000_000);
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
