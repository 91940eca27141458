//! Refused means not stored: a push is applied all-or-nothing across the cores that own its
//! series. When one owner refuses (its head is full), what the others appended is taken out
//! again before the refusal is answered, and an abort record keeps it out after a restart.
mod common;

use common::*;
use kiln_proto::google::v1 as pp;
use kiln_proto::push::v1::{PushRequest, RawProfileSeries, RawSample};
use kiln_proto::types::v1 as t;
use prost::Message;
use std::collections::BTreeMap;

const PARTS: u64 = 8;

/// A one-stack CPU profile with value `v`, taken now.
fn pprof(v: i64, pad: usize) -> Vec<u8> {
    let strings: Vec<String> =
        ["", "samples", "count", "main", "work"].iter().map(|s| s.to_string()).chain([format!("pad{pad}")]).collect();
    let p = pp::Profile {
        sample_type: vec![pp::ValueType { r#type: 1, unit: 2 }],
        sample: vec![pp::Sample { location_id: vec![2, 1], value: vec![v], label: vec![] }],
        location: vec![
            pp::Location { id: 1, line: vec![pp::Line { function_id: 1, line: 0 }], ..Default::default() },
            pp::Location { id: 2, line: vec![pp::Line { function_id: 2, line: 0 }], ..Default::default() },
        ],
        function: vec![
            pp::Function { id: 1, name: 3, ..Default::default() },
            pp::Function { id: 2, name: 4, filename: 5, ..Default::default() },
        ],
        string_table: strings,
        time_nanos: now_ms() * 1_000_000,
        ..Default::default()
    };
    p.encode_to_vec()
}

/// Push `i`: `PARTS` series (label `part`) of value `i + 1` each, in one request, so that its
/// series land on both cores. Returns the HTTP status.
fn push_parts(port: u16, i: u64) -> u16 {
    let series = (0..PARTS)
        .map(|part| RawProfileSeries {
            labels: [("__name__", "process_cpu"), ("service_name", "aon")]
                .iter()
                .map(|(n, v)| t::LabelPair { name: n.to_string(), value: v.to_string() })
                .chain([
                    t::LabelPair { name: "seq".into(), value: i.to_string() },
                    t::LabelPair { name: "part".into(), value: part.to_string() },
                ])
                .collect(),
            samples: vec![RawSample { raw_profile: pprof(i as i64 + 1, i as usize).into(), id: String::new() }],
            annotations: vec![],
        })
        .collect();
    let req = PushRequest { series };
    let h = [("content-type", "application/proto"), ("connect-protocol-version", "1")];
    post(port, "/push.v1.PusherService/Push", &h, req.encode_to_vec()).status
}

/// Parts found per `seq`, and the flame graph total of the service.
fn stored(port: u16) -> (BTreeMap<u64, u64>, i64) {
    let range =
        serde_json::json!({"start": (now_ms() - 3_600_000).to_string(), "end": (now_ms() + 60_000).to_string()});
    let mut body = range.clone();
    body["matchers"] = serde_json::json!(["{service_name=\"aon\"}"]);
    body["labelNames"] = serde_json::json!(["seq", "part"]);
    let r = connect_json(port, "/querier.v1.QuerierService/Series", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut parts: BTreeMap<u64, u64> = BTreeMap::new();
    for set in r.json()["labelsSet"].as_array().cloned().unwrap_or_default() {
        let seq = set["labels"].as_array().unwrap().iter().find(|l| l["name"] == "seq").unwrap()["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        *parts.entry(seq).or_default() += 1;
    }
    let mut body = range;
    body["profileTypeID"] = "process_cpu:samples:count::".into();
    body["labelSelector"] = "{service_name=\"aon\"}".into();
    let r = connect_json(port, "/querier.v1.QuerierService/SelectMergeStacktraces", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    (parts, r.json()["flamegraph"]["total"].as_str().map(|s| s.parse().unwrap()).unwrap_or(0))
}

fn check(port: u16, acked: &[u64]) {
    let (parts, total) = stored(port);
    let found: Vec<u64> = parts.keys().copied().collect();
    assert_eq!(found, acked, "stored pushes differ from the acknowledged ones");
    assert!(parts.values().all(|&n| n == PARTS), "a push is stored in part: {parts:?}");
    let want: i64 = acked.iter().map(|&i| (i as i64 + 1) * PARTS as i64).sum();
    assert_eq!(total, want, "the flame graph counts refused pushes");
}

#[test]
fn a_push_refused_by_one_core_is_stored_by_none() {
    // A small head per core: the two cores fill up at different pushes, so for a while one
    // refuses what the other would take.
    let flags = [
        "-ingester.max-head-bytes-per-core=60000",
        "-ingester.max-block-bytes=0",
        "-distributor.ingestion-rate-limit-mb=0",
    ];
    let k = Kiln::start(&flags);
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..400 {
        match push_parts(k.port, i) {
            200 => acked.push(i),
            429 => refused += 1,
            s => panic!("push {i}: unexpected status {s}"),
        }
        if refused >= 20 {
            break;
        }
    }
    assert!(!acked.is_empty() && refused >= 20, "acked {} refused {refused}", acked.len());
    // The case under test happened: some refused pushes had parts applied and taken out.
    assert!(metric_sum(k.port, "kiln_pushes_rolled_back_total") >= 1.0, "no push was taken out again");
    assert_eq!(metric_sum(k.port, "kiln_pushes_pending"), 0.0);
    check(k.port, &acked);
    // And after a crash: the WAL's abort records keep the refused parts out.
    let data = k.kill();
    let k = Kiln::start_in(data, &flags);
    check(k.port, &acked);
}

/// One push of one series with the given labels (one small profile); (status, body).
fn push_series(port: u16, tenant: &str, labels: &[(&str, String)]) -> (u16, String) {
    let req = PushRequest {
        series: vec![RawProfileSeries {
            labels: labels.iter().map(|(n, v)| t::LabelPair { name: n.to_string(), value: v.clone() }).collect(),
            samples: vec![RawSample { raw_profile: pprof(1, 0).into(), id: String::new() }],
            annotations: vec![],
        }],
    };
    let h = [("content-type", "application/proto"), ("connect-protocol-version", "1"), ("x-scope-orgid", tenant)];
    let r = post(port, "/push.v1.PusherService/Push", &h, req.encode_to_vec());
    (r.status, r.text())
}

fn series_count(port: u16, tenant: &str) -> usize {
    let body = serde_json::json!({
        "start": (now_ms() - 3_600_000).to_string(), "end": (now_ms() + 60_000).to_string(),
        "matchers": ["{service_name=\"card\"}"],
    });
    let r = connect_json(port, "/querier.v1.QuerierService/Series", &[("x-scope-orgid", tenant)], body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["labelsSet"].as_array().map_or(0, |a| a.len())
}

#[test]
fn a_tenants_cardinality_flood_is_refused_at_its_series_limit() {
    let dir = std::env::temp_dir().join(format!("kiln-series-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("kiln.yaml");
    std::fs::write(&cfg, "overrides:\n  big:\n    max_global_series_per_tenant: 200\n").unwrap();
    let cfg_flag = format!("-config.file={}", cfg.display());
    let k = Kiln::start(&[
        "-auth.multitenancy-enabled=true",
        "-ingester.max-global-series-per-tenant=40",
        "-distributor.ingestion-rate-limit-mb=0",
        &cfg_flag,
    ]);
    for (tenant, limit) in [("small", 40usize), ("big", 200)] {
        let (mut ok, mut refused) = (0usize, 0usize);
        for i in 0..400 {
            let labels =
                [("__name__", "process_cpu".to_string()), ("service_name", "card".into()), ("id", i.to_string())];
            match push_series(k.port, tenant, &labels) {
                (200, _) => ok += 1,
                (429, body) => {
                    assert!(body.contains("series limit"), "{body}");
                    refused += 1;
                }
                (s, body) => panic!("{tenant} push {i}: {s} {body}"),
            }
        }
        // Enforced per core as limit ÷ cores (2 here): never more than the limit, and
        // refusals start close to it.
        assert!(ok <= limit && ok >= limit * 3 / 4, "{tenant}: {ok} series taken, limit {limit}");
        assert_eq!(ok + refused, 400);
        // Refused series are not stored.
        assert_eq!(series_count(k.port, tenant), ok, "{tenant}");
        // Known series still take profiles.
        let labels = [("__name__", "process_cpu".to_string()), ("service_name", "card".into()), ("id", "0".into())];
        assert_eq!(push_series(k.port, tenant, &labels).0, 200);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn series_with_long_labels_are_charged_what_they_cost() {
    // 2 cores × 8 MiB of head: series with 2 KiB labels must be refused long before they
    // take many times that.
    let limit: u64 = 8 << 20;
    let k = Kiln::start(&[
        &format!("-ingester.max-head-bytes-per-core={limit}"),
        "-ingester.max-block-bytes=0",
        "-ingester.max-global-series-per-tenant=0",
        "-distributor.ingestion-rate-limit-mb=0",
    ]);
    let before = rss_kib(k.pid());
    let long = "x".repeat(2000);
    let mut refused = false;
    for i in 0..20_000 {
        let labels = [
            ("__name__", "process_cpu".to_string()),
            ("service_name", "long".into()),
            ("a", format!("{i}{long}")),
            ("b", format!("{long}{i}")),
        ];
        match push_series(k.port, "anonymous", &labels) {
            (200, _) => {}
            (429, _) => {
                refused = true;
                break;
            }
            (s, body) => panic!("push {i}: {s} {body}"),
        }
    }
    assert!(refused, "20000 series of 4 KiB labels fit in 16 MiB of head");
    let grown = (rss_kib(k.pid()) - before) * 1024;
    eprintln!("RSS grew {grown} bytes for a head limit of 2 x {limit} bytes");
    assert!(grown < 3 * 2 * limit, "the head grew {grown} bytes for a limit of 2 × {limit}");
}
