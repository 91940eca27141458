//! Pyroscope's operational conventions, checked on the real binary: `-version`, the build
//! stamp of `/api/v1/status/buildinfo`, `-config.expand-env`, and `/services`.
mod common;
use common::*;
use std::process::Command;

/// Runs kiln to its exit, which these flags should bring within seconds: past 30 s it is
/// killed and the test fails (a server that started instead of exiting).
fn kiln(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kiln");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kiln {args:?} did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The revision `build.rs` should have stamped: git's HEAD, or `unknown` without git.
fn expected_revision() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `2026-11-30T08:54:01Z`, not after now.
fn assert_build_date(date: &str) {
    let b = date.as_bytes();
    assert_eq!(b.len(), 20, "{date}");
    for (i, c) in b.iter().enumerate() {
        match i {
            4 | 7 => assert_eq!(*c, b'-', "{date}"),
            10 => assert_eq!(*c, b'T', "{date}"),
            13 | 16 => assert_eq!(*c, b':', "{date}"),
            19 => assert_eq!(*c, b'Z', "{date}"),
            _ => assert!(c.is_ascii_digit(), "{date}"),
        }
    }
    let year: i64 = date[..4].parse().unwrap();
    // This year in UTC, exactly (a mean year's length is a day off on New Year's Day).
    let now_year: i64 = kiln::timeparse::rfc3339(now_ms() * 1_000_000, 0)[..4].parse().unwrap();
    assert!((2024..=now_year).contains(&year), "{date}");
}

#[test]
fn test_version_flag_prints_the_build_and_exits_0() {
    let revision = expected_revision();
    for flag in ["-version", "--version", "-version=true"] {
        let out = kiln(&[flag], &[]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let text = String::from_utf8(out.stdout).unwrap();
        let first = text.lines().next().unwrap_or_default();
        assert!(first.starts_with(&format!("kiln, version {} (branch: ", env!("CARGO_PKG_VERSION"))), "{text}");
        assert!(first.ends_with(&format!(", revision: {revision})")), "{text}");
        let date = text.lines().find_map(|l| l.trim().strip_prefix("build date:")).expect("build date line");
        assert_build_date(date.trim());
    }
    // Another flag beside it does not start a server either (no port is bound).
    let out = kiln(&["-version", "-server.http-listen-address=127.0.0.1", "-server.http-listen-port=1"], &[]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn test_buildinfo_shows_the_revision_and_build_date() {
    let k = Kiln::start(&[]);
    let info = get(k.port, "/api/v1/status/buildinfo").json();
    assert_eq!(info["status"], "success");
    assert_eq!(info["data"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["data"]["revision"], expected_revision().as_str());
    let version = String::from_utf8(kiln(&["-version"], &[]).stdout).unwrap();
    let date = info["data"]["buildDate"].as_str().unwrap();
    assert_build_date(date);
    assert!(version.contains(&format!("build date:       {date}")), "{version} against {date}");
    let m = get(k.port, "/metrics").text();
    assert!(m.contains(&format!("revision=\"{}\"", expected_revision())), "{m}");
}

const EXPAND_YAML: &str = "limits:\n  ingestion_rate_mb: ${KILN_TEST_RATE_MB}\n  max_query_length: ${KILN_TEST_UNSET_LENGTH:36h}\n  reject_older_than: ${KILN_TEST_EMPTY:2h}\n";

#[test]
fn test_config_expand_env_replaces_variables_before_parsing() {
    let dir = std::env::temp_dir().join(format!("kiln-expand-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kiln.yaml");
    std::fs::write(&file, EXPAND_YAML).unwrap();
    let config = format!("-config.file={}", file.display());
    let spawn =
        Spawn { env: vec![("KILN_TEST_RATE_MB", "7".into()), ("KILN_TEST_EMPTY", String::new())], ..Spawn::default() };
    let k = Kiln::start_with(&[&config, "-config.expand-env=true"], &spawn);
    let c = get(k.port, "/config").text();
    assert!(c.contains("ingestion_rate_mb: 7"), "{c}");
    assert!(c.contains("max_query_length: 36h"), "{c}");
    assert!(c.contains("reject_older_than: 2h"), "{c}");
    drop(k);
    // Without the flag the text is parsed as it is, and `${KILN_TEST_RATE_MB}` is no number.
    let port = format!("-server.http-listen-port={}", free_port());
    let storage = format!("-storage.path={}", dir.join("data").display());
    let out = kiln(&[&config, "-server.http-listen-address=127.0.0.1", &port, &storage], &[("KILN_TEST_RATE_MB", "7")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("ingestion"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rows of the `/services` page, (service, state).
fn services(port: u16) -> Vec<(String, String)> {
    let page = get(port, "/services").text();
    page.lines()
        .filter_map(|l| l.strip_prefix("<tr><td>")?.strip_suffix("</td></tr>"))
        .map(|row| {
            let (name, state) = row.split_once("</td><td>").expect("two cells");
            (name.to_string(), state.to_string())
        })
        .collect()
}

#[test]
fn test_services_lists_each_component_of_the_target_running() {
    let k = Kiln::start(&[]);
    // The compactor starts after the port opens; give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut rows = services(k.port);
    while rows.iter().any(|(_, s)| s != "Running") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        rows = services(k.port);
    }
    let names: Vec<&str> = rows.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["server", "store-gateway", "ingester", "distributor", "querier", "compactor"], "{rows:?}");
    assert!(rows.iter().all(|(_, s)| s == "Running"), "{rows:?}");
    assert!(get(k.port, "/services").text().contains("<title>Services' status</title>"));
}

#[test]
fn test_services_of_a_cluster_member_show_gossip_and_its_target_only() {
    let _one = common::members::one_at_a_time();
    let blocks = common::members::blocks_dir("services");
    let members = common::members::start_members("services", &["query-scheduler"], &blocks, &[]);
    let rows = services(members[0].port);
    let want = [("memberlist-kv", "Running"), ("server", "Running"), ("query-scheduler", "Running")];
    let want: Vec<(String, String)> = want.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
    assert_eq!(rows, want);
    drop(members);
    let _ = std::fs::remove_dir_all(&blocks);
}

/// The value of `key:` under the top-level `section:` of a YAML page (`""` for the top level).
fn yaml_value(yaml: &str, section: &str, key: &str) -> Option<String> {
    let mut in_section = section.is_empty();
    for line in yaml.lines() {
        if !line.starts_with(' ') {
            in_section = section.is_empty() || line == format!("{section}:");
        }
        let indent = if section.is_empty() { "" } else { "  " };
        if in_section {
            if let Some(v) = line.strip_prefix(&format!("{indent}{key}: ")) {
                return Some(v.trim_matches('\'').to_string());
            }
        }
    }
    None
}

#[test]
fn test_config_shows_the_resolved_cores_and_directories() {
    // `-shards=0` (all cores) after the harness's `-shards=2`: the default, resolved at start.
    let k = Kiln::start(&["-shards=0"]);
    let yaml = get(k.port, "/config").text();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(yaml_value(&yaml, "", "shards"), Some(cores.to_string()), "{yaml}");
    // Pyroscope's tree: what /config shows can be pasted into a config file.
    assert_eq!(yaml_value(&yaml, "server", "http_listen_port"), Some(k.port.to_string()), "{yaml}");
    let data = k.data.display().to_string();
    assert_eq!(yaml_value(&yaml, "ingester", "wal_dir"), Some(format!("{data}/wal")), "{yaml}");
    assert_eq!(yaml_value(&yaml, "compactor", "data_dir"), Some(format!("{data}/compactor")), "{yaml}");
    let filesystem = yaml.lines().skip_while(|l| *l != "storage:").find_map(|l| l.strip_prefix("    dir: "));
    assert_eq!(filesystem, Some(format!("{data}/blocks").as_str()), "{yaml}");
    // A directory given explicitly is shown as given.
    let k = Kiln::start(&["-ingester.wal-dir=/tmp/kiln-explicit-wal-for-config-test"]);
    let yaml = get(k.port, "/config").text();
    assert_eq!(
        yaml_value(&yaml, "ingester", "wal_dir"),
        Some("/tmp/kiln-explicit-wal-for-config-test".into()),
        "{yaml}"
    );
    drop(k);
    let _ = std::fs::remove_dir_all("/tmp/kiln-explicit-wal-for-config-test");
}

/// The value of the `/metrics` line `series` (its full name and labels), 0 if absent.
fn scraped(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Every refused write is counted under Pyroscope's names, by reason and tenant, whatever
/// refused it: the rate limit and the body limit (which answer before anything is decoded)
/// as well as validation; accepted profiles land in the received histograms by type.
#[test]
fn test_discarded_and_received_profiles_are_counted_by_reason_and_tenant() {
    let k = Kiln::start(&[
        "-auth.multitenancy-enabled=true",
        "-distributor.ingestion-rate-limit-mb=0.01",
        "-distributor.ingestion-burst-size-mb=0.01",
        "-distributor.ingestion-body-limit-mb=0.05",
    ]);
    let ingest = |tenant: &str, name: &str, body: Vec<u8>| {
        post(k.port, &format!("/ingest?name={name}&format=folded"), &[("x-scope-orgid", tenant)], body).status
    };
    // Accepted: two profiles of tenant a.
    assert_eq!(ingest("a", "app.cpu", b"main;work 3\n".to_vec()), 200);
    assert_eq!(ingest("a", "app.cpu", b"main;idle 1\n".to_vec()), 200);
    // A label value past its limit, a body that is not folded text.
    // (Label values are limited to 2048 bytes, as Pyroscope's default.)
    let long = format!("app.cpu{{pod={}}}", "a".repeat(3000));
    assert_eq!(ingest("a", &long, b"main 1\n".to_vec()), 400);
    assert_eq!(ingest("a", "app.cpu", b"main;work x\n".to_vec()), 422);
    // Tenant b: past the body limit (refused before its body is read), then past its rate.
    assert_eq!(ingest("b", "app.cpu", vec![b'x'; 100 * 1024]), 413);
    let mut limited = 0;
    for _ in 0..20 {
        let line = format!("main;{} 1\n", "f;".repeat(2000));
        if ingest("b", "app.cpu", line.into_bytes()) == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "no push was rate limited");
    let m = get(k.port, "/metrics").text();
    let discarded = |reason: &str, tenant: &str| {
        scraped(&m, &format!("pyroscope_discarded_samples_total{{reason=\"{reason}\",tenant=\"{tenant}\"}}"))
    };
    assert_eq!(discarded("label_value_too_long", "a"), 1.0, "{m}");
    assert_eq!(discarded("malformed_profile", "a"), 1.0);
    assert_eq!(discarded("body_size_limit_exceeded", "b"), 1.0);
    assert_eq!(discarded("rate_limited", "b"), limited as f64);
    assert!(scraped(&m, "pyroscope_discarded_bytes_total{reason=\"rate_limited\",tenant=\"b\"}") > 0.0);
    assert_eq!(
        scraped(&m, "pyroscope_distributor_received_samples_count{tenant=\"a\",type=\"process_cpu\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(scraped(&m, "pyroscope_distributor_received_samples_sum{tenant=\"a\",type=\"process_cpu\"}"), 2.0);
    // The request histogram under Pyroscope's route names and statuses.
    assert_eq!(
        scraped(&m, "pyroscope_request_duration_seconds_count{method=\"POST\",route=\"ingest\",status_code=\"429\",ws=\"false\"}"),
        limited as f64
    );
    assert!(m.contains("process_resident_memory_bytes "), "no process metrics");
    assert!(m.contains("pyroscope_build_info{"));
}

/// `-server.grpc-listen-port` opens a second port serving the same APIs, as Pyroscope's gRPC
/// port: a gRPC push there is read back through either port.
#[test]
fn test_grpc_listen_port_serves_the_same_apis() {
    use kiln_proto::push::v1::{PushRequest, PushResponse, RawProfileSeries, RawSample};
    use kiln_proto::querier::v1 as q;
    let (grpc_port, hold) = hold_port();
    drop(hold);
    let flag = format!("-server.grpc-listen-port={grpc_port}");
    let k = Kiln::start(&[FIXTURE_FLAGS, &[flag.as_str()]].concat());
    let raw = std::fs::read(testdata("pprof/pyroscope/pkg-pprof/profile_rust")).unwrap();
    let req = PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                kiln_proto::types::v1::LabelPair { name: "__name__".into(), value: "process_cpu".into() },
                kiln_proto::types::v1::LabelPair { name: "service_name".into(), value: "via-grpc".into() },
            ],
            samples: vec![RawSample { raw_profile: raw.into(), id: String::new() }],
            annotations: vec![],
        }],
    };
    let _: PushResponse = grpc(grpc_port, "/push.v1.PusherService/Push", &[], &req).unwrap();
    let types = |port: u16| -> Vec<String> {
        let r: q::ProfileTypesResponse = grpc(
            port,
            "/querier.v1.QuerierService/ProfileTypes",
            &[],
            &q::ProfileTypesRequest { start: 0, end: now_ms() + 60_000 },
        )
        .unwrap();
        r.profile_types.into_iter().map(|t| t.id).collect()
    };
    assert_eq!(types(grpc_port), ["process_cpu:cpu:nanoseconds:cpu:nanoseconds"]);
    assert_eq!(types(k.port), types(grpc_port));
}
