//! Cluster members as real processes on 127.0.0.1: gossip ports, the flags every member
//! takes, waiting for the ring to settle.
use super::*;

/// One cluster at a time within a test binary: several clusters of debug builds at once on a
/// 2-core machine could starve a member's gossip past its heartbeat timeout, and these tests
/// are about the cluster, not about a starved machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A free UDP port on 127.0.0.1 for a member's gossip.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The flags of a member: gossip on `gossip`, joining `seed`, fast heartbeats so a kill shows
/// within seconds.
pub fn member_flags(gossip: u16, seed: u16, blocks: &std::path::Path) -> Vec<String> {
    vec![
        "-shards=1".into(),
        "-memberlist.bind-addr=127.0.0.1".into(),
        format!("-memberlist.bind-port={gossip}"),
        format!("-memberlist.join=127.0.0.1:{seed}"),
        "-ingester.heartbeat-period=500ms".into(),
        "-ring.heartbeat-timeout=3s".into(),
        format!("-storage.filesystem.dir={}", blocks.display()),
        // The load tests write a new series per push: more than the default 5000 per tenant.
        "-ingester.max-local-series-per-tenant=0".into(),
        "-ingester.max-global-series-per-tenant=0".into(),
    ]
}

pub fn start_member(data: std::path::PathBuf, port: (u16, socket2::Socket), flags: &[String]) -> Kiln {
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    // Each member's log, kept beside its data for a failed run to be read.
    let log = std::env::temp_dir().join(format!("kiln-member-{}-{}.log", std::process::id(), port.0));
    Kiln::start_at(data, port, &args, &Spawn { stderr: Some(log), ..Default::default() })
}

/// Starts one member per target (`-target=<t>`), all joining the first, each with `extra`
/// flags and its own empty data directory; `name` tells this test's directories apart.
pub fn start_members(name: &str, targets: &[&str], blocks: &std::path::Path, extra: &[&str]) -> Vec<Kiln> {
    let seed = free_udp_port();
    let mut out = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let gossip = if i == 0 { seed } else { free_udp_port() };
        let data = std::env::temp_dir().join(format!("kiln-{name}-{}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        let mut flags = member_flags(gossip, seed, blocks);
        flags.push(format!("-target={target}"));
        flags.extend(extra.iter().map(|s| s.to_string()));
        out.push(start_member(data, hold_port(), &flags));
    }
    out
}

/// The states `/ring` on `port` shows, as "STATE" or "STATE (UNHEALTHY)", one per member.
pub fn ring_states(port: u16) -> Vec<String> {
    let page = get(port, "/ring").text();
    page.split("<tr><td>").skip(1).filter_map(|row| row.split("</td><td>").nth(2).map(str::to_string)).collect()
}

pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A directory for a test's shared blocks, empty.
pub fn blocks_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cluster-blocks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The gossip port a member was started with (its `-memberlist.bind-port`).
pub fn gossip_port_of(k: &Kiln) -> u16 {
    let cfg = get(k.port, "/config").text();
    cfg.lines()
        .skip_while(|l| !l.starts_with("memberlist:"))
        .find_map(|l| l.trim().strip_prefix("bind_port: "))
        .and_then(|p| p.parse().ok())
        .expect("bind_port in /config")
}
