//! Self-profiling on the real binary: kiln samples its own CPU and allocations and pushes the
//! profiles as the service `kiln`, which its own query APIs then show, named by kiln's
//! functions; with `-self-profiling.disable-push=true` no handler is installed, no allocation
//! is sampled and nothing is pushed. (The harness starts kiln with it disabled; these tests
//! turn it on.)
mod common;
use common::*;
use std::time::{Duration, Instant};

const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const ALLOC_SPACE: &str = "memory:alloc_space:bytes:space:bytes";
const ALLOC_OBJECTS: &str = "memory:alloc_objects:count:space:bytes";
const DEADLINE: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Work for the cores: a folded profile of many distinct stacks, pushed and queried.
fn work(port: u16, tenant: &[(&str, &str)]) {
    let body: String = (0..2000).map(|i| format!("main;serve;handler{};leaf{} {}\n", i % 97, i, i + 1)).collect();
    let r = post(port, "/ingest?name=app.cpu&format=folded&from=now-10s&until=now", tenant, body.into_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let q = serde_json::json!({
        "profileTypeID": "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
        "labelSelector": "{service_name=\"app\"}", "start": now_ms() - 60_000, "end": now_ms() + 1000,
    });
    let r = connect_json(port, "/querier.v1.QuerierService/SelectMergeStacktraces", tenant, q);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The function names of kiln's own profile of `profile_type` over the past hour (empty:
/// none yet), and its total.
fn kiln_flamegraph(port: u16, tenant: &[(&str, &str)], profile_type: &str) -> (Vec<String>, i64) {
    let q = serde_json::json!({
        "profileTypeID": profile_type, "labelSelector": "{service_name=\"kiln\"}",
        "start": now_ms() - 3_600_000, "end": now_ms() + 60_000,
    });
    let r = connect_json(port, "/querier.v1.QuerierService/SelectMergeStacktraces", tenant, q);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let names = j["flamegraph"]["names"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(|n| n.as_str().unwrap().to_string()).collect());
    // proto3 JSON writes an int64 as a string.
    let total = &j["flamegraph"]["total"];
    let total = total.as_i64().or_else(|| total.as_str().and_then(|t| t.parse().ok())).unwrap_or(0);
    (names, total)
}

fn profile_types(port: u16, tenant: &[(&str, &str)]) -> Vec<String> {
    let q = serde_json::json!({"start": now_ms() - 3_600_000, "end": now_ms() + 60_000});
    let r = connect_json(port, "/querier.v1.QuerierService/ProfileTypes", tenant, q);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    j["profileTypes"]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(|t| t["ID"].as_str().unwrap().to_string()).collect())
}

fn service_names(port: u16, tenant: &[(&str, &str)]) -> Vec<String> {
    let q = serde_json::json!({"name": "service_name", "start": now_ms() - 3_600_000, "end": now_ms() + 60_000});
    let r = connect_json(port, "/querier.v1.QuerierService/LabelValues", tenant, q);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    j["names"].as_array().map_or(Vec::new(), |a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
}

/// Whether the process catches SIGPROF (its `SigCgt` mask in /proc).
fn catches_sigprof(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).unwrap().trim();
    u64::from_str_radix(mask, 16).unwrap() & (1 << (libc::SIGPROF - 1)) != 0
}

/// Works until kiln's own profile of `profile_type` shows a kiln function, and returns its
/// frames and total.
fn wait_for_kiln_profile_of(
    k: &Kiln,
    load: &[(&str, &str)],
    own: &[(&str, &str)],
    profile_type: &str,
) -> (Vec<String>, i64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        work(k.port, load);
        let (frames, total) = kiln_flamegraph(k.port, own, profile_type);
        if frames.iter().any(|f| f.starts_with("kiln::")) {
            return (frames, total);
        }
        assert!(
            Instant::now() < deadline,
            "no {profile_type} profile of kiln naming a kiln function within {DEADLINE:?}: {frames:?}"
        );
    }
}

fn wait_for_kiln_profile(k: &Kiln, load: &[(&str, &str)], own: &[(&str, &str)]) -> Vec<String> {
    wait_for_kiln_profile_of(k, load, own, CPU).0
}

#[test]
fn kiln_profiles_itself_into_its_own_ui() {
    let k = Kiln::start(&["-self-profiling.disable-push=false", "-self-profiling.push-interval=1s"]);
    assert!(catches_sigprof(k.pid()));
    let frames = wait_for_kiln_profile(&k, &[], &[]);
    // Named by symbol, demangled: the cores' runtime and the distributor's code.
    assert!(frames.iter().all(|f| !f.starts_with("_ZN")), "{frames:?}");
    let types = profile_types(k.port, &[]);
    for t in [CPU, "process_cpu:samples:count:cpu:nanoseconds"] {
        assert!(types.iter().any(|x| x == t), "{t} not in {types:?}");
    }
    assert!(service_names(k.port, &[]).contains(&"kiln".to_string()));
    assert!(metric(k.port, "kiln_self_profiling_samples_total") > 0.0);
    assert!(metric(k.port, "kiln_self_profiling_pushes_total") > 0.0);
    assert_eq!(metric(k.port, "kiln_self_profiling_push_failures_total"), 0.0);
}

#[test]
fn kiln_profiles_its_allocations_into_its_own_ui() {
    let k = Kiln::start(&["-self-profiling.disable-push=false", "-self-profiling.push-interval=1s"]);
    let (frames, total) = wait_for_kiln_profile_of(&k, &[], &[], ALLOC_SPACE);
    assert!(total > 0, "{total}");
    // The sampler and the allocator are cut from every stack: no frame names them.
    assert!(frames.iter().all(|f| !f.contains("self_profiling::alloc::")), "{frames:?}");
    assert!(frames.iter().all(|f| !f.contains("__rust_alloc")), "{frames:?}");
    let (objects, objects_total) = kiln_flamegraph(k.port, &[], ALLOC_OBJECTS);
    assert!(objects.iter().any(|f| f.starts_with("kiln::")), "{objects:?}");
    assert!(objects_total > 0, "{objects_total}");
    let types = profile_types(k.port, &[]);
    assert!(!types.iter().any(|t| t.starts_with("memory:inuse")), "{types:?}");
    assert!(metric(k.port, "kiln_self_profiling_alloc_samples_total") > 0.0);
}

#[test]
fn with_multitenancy_the_profiles_go_to_the_self_profiling_tenant() {
    let k = Kiln::start(&[
        "-self-profiling.disable-push=false",
        "-self-profiling.push-interval=1s",
        "-auth.multitenancy-enabled",
        "-self-profiling.tenant-id=kiln-self",
    ]);
    let app = [("x-scope-orgid", "app")];
    wait_for_kiln_profile(&k, &app, &[("x-scope-orgid", "kiln-self")]);
    // The tenant whose pushes kept kiln busy sees only its own service.
    assert_eq!(service_names(k.port, &app), ["app"]);
}

#[test]
fn disabled_there_is_no_handler_and_nothing_is_pushed() {
    // The harness passes -self-profiling.disable-push=true.
    let k = Kiln::start(&["-self-profiling.push-interval=1s"]);
    assert!(!catches_sigprof(k.pid()));
    let tasks = std::fs::read_dir(format!("/proc/{}/task", k.pid())).unwrap();
    for t in tasks {
        let comm = std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap_or_default();
        assert_ne!(comm.trim(), "kiln-self-prof");
    }
    for _ in 0..20 {
        work(k.port, &[]);
    }
    // Three push intervals: had it been on, a push would have come.
    std::thread::sleep(Duration::from_secs(3));
    let frames = kiln_flamegraph(k.port, &[], CPU).0;
    assert!(frames.iter().all(|f| f == "total"), "{frames:?}");
    assert_eq!(service_names(k.port, &[]), ["app"]);
    let types = profile_types(k.port, &[]);
    assert!(!types.iter().any(|t| t.starts_with("process_cpu:samples") || t.starts_with("memory:")), "{types:?}");
    assert_eq!(kiln_flamegraph(k.port, &[], ALLOC_SPACE).1, 0);
    assert_eq!(metric(k.port, "kiln_self_profiling_samples_total"), 0.0);
    assert_eq!(metric(k.port, "kiln_self_profiling_alloc_samples_total"), 0.0);
    assert_eq!(metric(k.port, "kiln_self_profiling_pushes_total"), 0.0);
}
