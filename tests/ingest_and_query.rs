//! Whole-process tests: real pprofs from testdata/ pushed through Push (Connect and
//! gRPC) and /ingest, then read back through every query API.
mod common;

use common::*;
use kiln_proto::google::v1::Profile;
use kiln_proto::push::v1::{PushRequest, PushResponse, RawProfileSeries, RawSample};
use kiln_proto::querier::v1 as q;
use kiln_proto::types::v1 as t;
use prost::Message;
use std::collections::BTreeMap;

struct Expect {
    /// (sample type, unit, sum of values)
    types: Vec<(String, String, i64)>,
    period: (String, String),
}

fn expect(raw: &[u8]) -> Expect {
    let p = Profile::decode(&*gunzip_maybe(raw)).unwrap();
    let s = |i: i64| p.string_table[i as usize].clone();
    let types = p
        .sample_type
        .iter()
        .enumerate()
        .map(|(i, st)| (s(st.r#type), s(st.unit), p.sample.iter().map(|x| x.value[i]).sum()))
        .collect();
    let period = p.period_type.map(|v| (s(v.r#type), s(v.unit))).unwrap_or_default();
    Expect { types, period }
}

fn push_req(name: &str, service: &str, raw: Vec<u8>) -> PushRequest {
    PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                t::LabelPair { name: "__name__".into(), value: name.into() },
                t::LabelPair { name: "service_name".into(), value: service.into() },
            ],
            samples: vec![RawSample { raw_profile: raw.into(), id: String::new() }],
            annotations: vec![],
        }],
    }
}

#[test]
fn every_fixture_pushed_has_its_totals_per_sample_type() {
    let k = Kiln::start(FIXTURE_FLAGS);
    for (i, path) in golden_pprofs().iter().enumerate() {
        let raw = std::fs::read(path).unwrap();
        let e = expect(&raw);
        let svc = format!("push-{i}");
        let _: PushResponse = connect(k.port, "/push.v1.PusherService/Push", &[], &push_req("fixture", &svc, raw))
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        for (st, unit, sum) in &e.types {
            if e.types.iter().filter(|(a, b, _)| a == st && b == unit).count() > 1 {
                continue; // two sample types with one name land in one series
            }
            let pt = format!("fixture:{st}:{unit}:{}:{}", e.period.0, e.period.1);
            let fg = flamegraph(k.port, &pt, &format!("{{service_name=\"{svc}\"}}"));
            assert_eq!(fg.total, *sum, "{} {pt}", path.display());
        }
    }
}

#[test]
fn every_fixture_ingested_has_its_totals_per_sample_type() {
    let k = Kiln::start(FIXTURE_FLAGS);
    for (i, path) in golden_pprofs().iter().enumerate() {
        let raw = std::fs::read(path).unwrap();
        let e = expect(&raw);
        let svc = format!("ingest-{i}");
        let (ct, body) = multipart(&[("profile", &raw)]);
        let r = post(k.port, &format!("/ingest?name={svc}&spyName=foo239"), &[("content-type", &ct)], body);
        if e.types.iter().all(|(st, _, _)| st.is_empty()) {
            // No sample type name to derive a profile name from: rejected, as in Pyroscope.
            assert_eq!(r.status, 422, "{} {}", path.display(), r.text());
            continue;
        }
        assert_eq!(r.status, 200, "{}: {}", path.display(), r.text());
        let series: q::SeriesResponse = connect(
            k.port,
            "/querier.v1.QuerierService/Series",
            &[],
            &q::SeriesRequest {
                matchers: vec![format!("{{service_name=\"{svc}\"}}")],
                label_names: vec!["__profile_type__".into(), "pyroscope_spy".into()],
                start: 1000,
                end: now_ms() + 3_600_000,
            },
        )
        .unwrap();
        assert!(!series.labels_set.is_empty(), "{}", path.display());
        for ls in &series.labels_set {
            assert!(ls.labels.iter().any(|l| l.name == "pyroscope_spy" && l.value == "foo239"));
            let pt = &ls.labels.iter().find(|l| l.name == "__profile_type__").unwrap().value;
            let parts: Vec<&str> = pt.split(':').collect();
            let (_, _, sum) = e.types.iter().find(|(st, u, _)| st == parts[1] && u == parts[2]).unwrap();
            if e.types.iter().filter(|(a, b, _)| a == parts[1] && b == parts[2]).count() > 1 {
                continue;
            }
            let fg = flamegraph(k.port, pt, &format!("{{service_name=\"{svc}\"}}"));
            assert_eq!(fg.total, *sum, "{} {pt}", path.display());
        }
    }
}

#[test]
fn ingest_derives_pyroscope_profile_types() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let cases: &[(&str, Option<&str>, &[&str])] = &[
        (
            "pprof/pyroscope/pkg-pprof/go.cpu.labels.pprof",
            None,
            &["process_cpu:cpu:nanoseconds:cpu:nanoseconds", "process_cpu:samples:count:cpu:nanoseconds"],
        ),
        (
            "pprof/pyroscope/pkg-pprof/heap",
            None,
            &[
                "memory:alloc_objects:count:space:bytes",
                "memory:alloc_space:bytes:space:bytes",
                "memory:inuse_objects:count:space:bytes",
                "memory:inuse_space:bytes:space:bytes",
            ],
        ),
        (
            "pprof/pyroscope/og-convert/cpu-js.pb.gz",
            None,
            &["wall:sample:count:wall:microseconds", "wall:wall:microseconds:wall:microseconds"],
        ),
        (
            "pprof/pyroscope/og-convert/req_2.pprof",
            Some("pprof/pyroscope/og-convert/req_2.st.json"),
            &["goroutines:goroutine:count:goroutine:count"],
        ),
        (
            "pprof/pyroscope/og-convert/req_3.pprof",
            Some("pprof/pyroscope/og-convert/req_3.st.json"),
            &["block:contentions:count:contentions:count", "block:delay:nanoseconds:contentions:count"],
        ),
        (
            "pprof/pyroscope/og-convert/req_4.pprof",
            Some("pprof/pyroscope/og-convert/req_4.st.json"),
            &["mutex:contentions:count:contentions:count", "mutex:delay:nanoseconds:contentions:count"],
        ),
        (
            "pprof/pyroscope/og-convert/nodejs-heap.pb.gz",
            None,
            &["memory:inuse_objects:count:inuse_space:bytes", "memory:inuse_space:bytes:inuse_space:bytes"],
        ),
        ("pprof/pyroscope/og-convert/pyspy-1.pb.gz", None, &["process_cpu:samples:count::milliseconds"]),
    ];
    for (i, (file, st, want)) in cases.iter().enumerate() {
        let raw = std::fs::read(testdata(file)).unwrap();
        let cfg = st.map(|s| std::fs::read(testdata(s)).unwrap());
        let mut parts: Vec<(&str, &[u8])> = vec![("profile", &raw)];
        if let Some(c) = &cfg {
            parts.push(("sample_type_config", c));
        }
        let (ct, body) = multipart(&parts);
        let svc = format!("types-{i}");
        let r = post(k.port, &format!("/ingest?name={svc}&spyName=scripting"), &[("content-type", &ct)], body);
        assert_eq!(r.status, 200, "{file}: {}", r.text());
        let v: t::LabelValuesResponse = connect(
            k.port,
            "/querier.v1.QuerierService/LabelValues",
            &[],
            &t::LabelValuesRequest {
                name: "__profile_type__".into(),
                matchers: vec![format!("{{service_name=\"{svc}\"}}")],
                start: 1000,
                end: now_ms() + 3_600_000,
            },
        )
        .unwrap();
        assert_eq!(v.names, want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{file}");
    }
}

#[test]
fn grpc_push_and_query_over_h2c() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let raw = std::fs::read(testdata("pprof/pyroscope/pkg-pprof/profile_rust")).unwrap();
    let _: PushResponse =
        grpc(k.port, "/push.v1.PusherService/Push", &[], &push_req("process_cpu", "rust-app", raw)).unwrap();
    let req = q::SelectMergeStacktracesRequest {
        profile_type_id: "process_cpu:cpu:nanoseconds:cpu:nanoseconds".into(),
        label_selector: "{service_name=\"rust-app\"}".into(),
        start: 1000,
        end: now_ms(),
        ..Default::default()
    };
    let r: q::SelectMergeStacktracesResponse =
        grpc(k.port, "/querier.v1.QuerierService/SelectMergeStacktraces", &[], &req).unwrap();
    assert_eq!(r.flamegraph.unwrap().total, 11_960_000_000);
    let types: q::ProfileTypesResponse = grpc(
        k.port,
        "/querier.v1.QuerierService/ProfileTypes",
        &[],
        &q::ProfileTypesRequest { start: 1000, end: now_ms() },
    )
    .unwrap();
    assert_eq!(types.profile_types.len(), 1);
    assert_eq!(types.profile_types[0].sample_type, "cpu");
    // Errors travel as grpc-status.
    let bad = grpc::<_, q::SelectMergeStacktracesResponse>(
        k.port,
        "/querier.v1.QuerierService/SelectMergeStacktraces",
        &[],
        &q::SelectMergeStacktracesRequest { profile_type_id: "nope".into(), ..Default::default() },
    );
    assert_eq!(bad.unwrap_err().0, 3);
    // Health, as Grafana's data source checks it.
    let h: kiln_proto::grpc::health::v1::HealthCheckResponse =
        grpc(k.port, "/grpc.health.v1.Health/Check", &[], &kiln_proto::grpc::health::v1::HealthCheckRequest::default())
            .unwrap();
    assert_eq!(h.status, 1);
}

fn folded_file(name: &str) -> (String, BTreeMap<String, i64>) {
    let text = std::fs::read_to_string(testdata(&format!("folded/flamegraph-pl/{name}"))).unwrap();
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if let Some((stack, n)) = line.rsplit_once(' ') {
            *m.entry(stack.to_string()).or_insert(0) += n.parse::<i64>().unwrap();
        }
    }
    (text, m)
}

#[test]
fn folded_round_trips_through_render() {
    let k = Kiln::start(FIXTURE_FLAGS);
    for (i, f) in [
        "perf-vertx-stacks-01-collapsed-all.txt",
        "perf-java-stacks-01-collapsed-pid.txt",
        "perf-js-stacks-01-collapsed-all.txt",
    ]
    .iter()
    .enumerate()
    {
        let (text, stacks) = folded_file(f);
        let r = post(
            k.port,
            &format!("/ingest?name=folded{i}.cpu&format=folded&sampleRate=100&from=now-1m&until=now"),
            &[],
            text.into_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let r = get(
            k.port,
            &format!("/pyroscope/render?query=process_cpu:cpu:nanoseconds:cpu:nanoseconds%7Bservice_name%3D%22folded{i}%22%7D&from=now-1h&until=now&maxNodes=100000"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        let names: Vec<String> = serde_json::from_value(j["flamebearer"]["names"].clone()).unwrap();
        let levels: Vec<Vec<i64>> = serde_json::from_value(j["flamebearer"]["levels"].clone()).unwrap();
        let got = flamegraph_stacks(&names, &levels);
        let want: BTreeMap<String, i64> = stacks.into_iter().map(|(s, v)| (s, v * 10_000_000)).collect();
        assert_eq!(got, want, "{f}");
        assert_eq!(j["metadata"]["units"], "samples");
        assert_eq!(j["metadata"]["sampleRate"], 1_000_000_000u64);
        let total: i64 = want.values().sum();
        assert_eq!(j["flamebearer"]["numTicks"].as_i64().unwrap(), total);
        let samples: Vec<u64> = serde_json::from_value(j["timeline"]["samples"].clone()).unwrap();
        assert_eq!(samples.iter().sum::<u64>() as i64, total, "the timeline holds the profile");
        assert_eq!(j["timeline"]["durationDelta"], 15);
    }
}

#[test]
fn lines_format_counts_stacks() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let r = post(k.port, "/ingest?name=lines.app.cpu&format=lines&sampleRate=0", &[], b"a;b\na;b\na;c\n\n".to_vec());
    assert_eq!(r.status, 200, "{}", r.text());
    let fg = flamegraph(k.port, "process_cpu:samples:count::", "{service_name=\"lines.app\"}");
    assert_eq!(fg.total, 3);
    assert_eq!(fg.names, vec!["total", "a", "c", "b"]);
}

#[test]
fn connect_json_shapes() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let r = post(k.port, "/ingest?name=json.app.cpu&format=folded", &[], b"main;work 3\nmain;idle 1\n".to_vec());
    assert_eq!(r.status, 200);
    let now = now_ms();
    let r = connect_json(
        k.port,
        "/querier.v1.QuerierService/SelectMergeStacktraces",
        &[],
        serde_json::json!({"profileTypeID": "process_cpu:cpu:nanoseconds:cpu:nanoseconds", "labelSelector": "{service_name=\"json.app\"}", "start": (now - 60_000).to_string(), "end": now.to_string()}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    // int64s are strings in proto3 JSON, as in testdata/connect-json/flamegraph.json.
    assert_eq!(j["flamegraph"]["total"], "40000000");
    assert_eq!(j["flamegraph"]["names"][0], "total");
    assert!(j["flamegraph"]["levels"][0]["values"][1].is_string());
    assert_eq!(j["flamegraph"]["maxSelf"], "30000000");

    let r = connect_json(
        k.port,
        "/querier.v1.QuerierService/SelectSeries",
        &[],
        serde_json::json!({"profileTypeID": "process_cpu:cpu:nanoseconds:cpu:nanoseconds", "labelSelector": "{}", "start": (now - 60_000).to_string(), "end": (now + 60_000).to_string(), "step": 15.0, "groupBy": ["service_name"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let s = &j["series"][0];
    assert_eq!(s["labels"][0]["name"], "service_name");
    assert!(s["points"][0]["timestamp"].is_string());
    assert_eq!(s["points"][0]["value"].as_f64().unwrap(), 40_000_000.0);

    let r = connect_json(
        k.port,
        "/querier.v1.QuerierService/Series",
        &[],
        serde_json::json!({"labelNames": ["__profile_type__", "service_name"]}),
    );
    let j = r.json();
    assert_eq!(j["labelsSet"][0]["labels"].as_array().unwrap().len(), 2);
    let r = connect_json(k.port, "/querier.v1.QuerierService/LabelNames", &[], serde_json::json!({}));
    let names: Vec<String> = serde_json::from_value(r.json()["names"].clone()).unwrap();
    assert!(names.contains(&"service_name".to_string()) && names.contains(&"__profile_type__".to_string()));
}

#[test]
fn select_merge_profile_returns_the_pushed_stacks() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let raw = std::fs::read(testdata("pprof/google-pprof/sample.cpu")).unwrap();
    let input = Profile::decode(&*gunzip_maybe(&raw)).unwrap();
    let _: PushResponse =
        connect(k.port, "/push.v1.PusherService/Push", &[], &push_req("process_cpu", "merge-app", raw)).unwrap();
    let p: Profile = connect(
        k.port,
        "/querier.v1.QuerierService/SelectMergeProfile",
        &[],
        &q::SelectMergeProfileRequest {
            profile_type_id: "process_cpu:cpu:nanoseconds:cpu:nanoseconds".into(),
            label_selector: "{service_name=\"merge-app\"}".into(),
            start: 1000,
            end: now_ms(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.sample_type.len(), 1);
    let collapse = |p: &Profile, idx: usize| -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for s in &p.sample {
            let mut frames = Vec::new();
            for id in s.location_id.iter().rev() {
                let loc = p.location.iter().find(|l| l.id == *id).unwrap();
                for line in loc.line.iter().rev() {
                    let f = p.function.iter().find(|f| f.id == line.function_id).unwrap();
                    frames.push(p.string_table[f.name as usize].clone());
                }
            }
            *m.entry(frames.join(";")).or_insert(0) += s.value[idx];
        }
        m.retain(|_, v| *v != 0);
        m
    };
    assert_eq!(collapse(&p, 0), collapse(&input, 1));
}

#[test]
fn diff_and_render_diff() {
    let k = Kiln::start(FIXTURE_FLAGS);
    post(k.port, "/ingest?name=left.cpu&format=folded&sampleRate=0", &[], b"a;b 1\na;c 2\n".to_vec());
    post(k.port, "/ingest?name=right.cpu&format=folded&sampleRate=0", &[], b"a;b 4\na;c 8\n".to_vec());
    let now = now_ms();
    let side = |svc: &str| q::SelectMergeStacktracesRequest {
        profile_type_id: "process_cpu:samples:count::".into(),
        label_selector: format!("{{service_name=\"{svc}\"}}"),
        start: now - 60_000,
        end: now + 1000,
        max_nodes: Some(1024),
        ..Default::default()
    };
    let d: q::DiffResponse = connect(
        k.port,
        "/querier.v1.QuerierService/Diff",
        &[],
        &q::DiffRequest { left: Some(side("left")), right: Some(side("right")) },
    )
    .unwrap();
    let fg = d.flamegraph.unwrap();
    assert_eq!((fg.left_ticks, fg.right_ticks, fg.total), (3, 12, 15));
    assert_eq!(fg.levels[2].values, vec![0, 1, 1, 0, 4, 4, 3, 0, 2, 2, 0, 8, 8, 2]);
    let r = get(
        k.port,
        "/pyroscope/render-diff?leftQuery=process_cpu:samples:count::%7Bservice_name%3D%22left%22%7D&rightQuery=process_cpu:samples:count::%7Bservice_name%3D%22right%22%7D&leftFrom=now-1h&leftUntil=now&rightFrom=now-1h&rightUntil=now",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["metadata"]["format"], "double");
    assert_eq!(j["leftTicks"], 3);
    assert_eq!(j["rightTicks"], 12);
}

#[test]
fn operations_endpoints() {
    let k = Kiln::start(&[]);
    assert_eq!(get(k.port, "/ready").text(), "ready");
    let m = get(k.port, "/metrics").text();
    assert!(m.contains("kiln_head_series{core=\"1\"}"), "{m}");
    assert!(m.contains("kiln_request_duration_seconds_bucket"));
    let c = get(k.port, "/config").text();
    assert!(c.contains("reject_older_than: 1h"), "{c}");
    assert_eq!(get(k.port, "/api/v1/status/buildinfo").json()["status"], "success");
    let v: kiln_proto::version::v1::VersionResponse =
        connect(k.port, "/version.v1.Version/Version", &[], &kiln_proto::version::v1::VersionRequest {}).unwrap();
    assert_eq!(v.querier_api, 1);
    assert_eq!(get(k.port, "/").status, 200);
    assert!(get(k.port, "/ring").text().contains("ACTIVE"));
    let lv = get(k.port, "/pyroscope/label-values?label=__name__");
    assert_eq!(lv.json(), serde_json::json!([]));
}

#[test]
fn every_body_encoding_sdks_use() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let raw = gunzip_maybe(&std::fs::read(testdata("pprof/pyroscope/pkg-pprof/profile_rust")).unwrap());
    let total = |svc: &str| {
        flamegraph(k.port, "process_cpu:cpu:nanoseconds:cpu:nanoseconds", &format!("{{service_name=\"{svc}\"}}")).total
    };
    // Raw pprof, and gzipped pprof without any header (sniffed).
    for (svc, body) in [("raw", raw.clone()), ("sniffed", gzip(&raw))] {
        let r = post(k.port, &format!("/ingest?name={svc}&format=pprof"), &[], body);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(total(svc), 11_960_000_000, "{svc}");
    }
    // A multipart body gzipped as a whole with Content-Encoding: gzip.
    let (ct, body) = multipart(&[("profile", &raw)]);
    let r = post(k.port, "/ingest?name=wholegz", &[("content-type", &ct), ("content-encoding", "gzip")], gzip(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(total("wholegz"), 11_960_000_000);
    // Connect with a gzipped request body.
    let req = push_req("process_cpu", "connectgz", raw.clone());
    let r = post(
        k.port,
        "/push.v1.PusherService/Push",
        &[("content-type", "application/proto"), ("content-encoding", "gzip")],
        gzip(&req.encode_to_vec()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(total("connectgz"), 11_960_000_000);
    // Connect JSON push (raw_profile as base64).
    let json = serde_json::json!({"series": [{"labels": [{"name": "__name__", "value": "process_cpu"}, {"name": "service_name", "value": "jsonpush"}], "samples": [{"rawProfile": base64(&raw)}]}]});
    let r = connect_json(k.port, "/push.v1.PusherService/Push", &[], json);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(total("jsonpush"), 11_960_000_000);
    // gRPC-Web.
    let payload = push_req("process_cpu", "grpcweb", raw).encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let r = post(k.port, "/push.v1.PusherService/Push", &[("content-type", "application/grpc-web+proto")], frame);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("grpc-status: 0"), "{:?}", r.body);
    assert_eq!(total("grpcweb"), 11_960_000_000);
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn analyze_query_counts_what_a_query_reads() {
    let k = Kiln::start(FIXTURE_FLAGS);
    post(k.port, "/ingest?name=an.cpu&format=folded&sampleRate=0", &[], b"a;b 1\na;c 2\n".to_vec());
    post(k.port, "/ingest?name=an.cpu&format=folded&sampleRate=0", &[], b"a;b 5\n".to_vec());
    let r: q::AnalyzeQueryResponse = connect(
        k.port,
        "/querier.v1.QuerierService/AnalyzeQuery",
        &[],
        &q::AnalyzeQueryRequest {
            start: now_ms() - 60_000,
            end: now_ms() + 1000,
            query: "process_cpu:samples:count::{service_name=\"an\"}".into(),
        },
    )
    .unwrap();
    let s = &r.query_scopes[0];
    assert_eq!((s.series_count, s.profile_count, s.sample_count), (1, 2, 3));
    assert_eq!(r.query_impact.unwrap().total_queried_series, 1);
}

#[test]
fn stack_trace_selector_keeps_the_call_site() {
    let k = Kiln::start(FIXTURE_FLAGS);
    post(k.port, "/ingest?name=cs.cpu&format=folded&sampleRate=0", &[], b"main;a;x 1\nmain;a 2\nmain;b;x 4\n".to_vec());
    let site = |names: &[&str]| t::StackTraceSelector {
        call_site: names.iter().map(|n| t::Location { name: n.to_string() }).collect(),
        go_pgo: None,
    };
    let req = |s: t::StackTraceSelector| q::SelectMergeStacktracesRequest {
        profile_type_id: "process_cpu:samples:count::".into(),
        label_selector: "{service_name=\"cs\"}".into(),
        start: now_ms() - 60_000,
        end: now_ms() + 1000,
        stack_trace_selector: Some(s),
        ..Default::default()
    };
    let r: q::SelectMergeStacktracesResponse =
        connect(k.port, "/querier.v1.QuerierService/SelectMergeStacktraces", &[], &req(site(&["main", "a"]))).unwrap();
    assert_eq!(r.flamegraph.unwrap().total, 3);
    let r: q::SelectMergeStacktracesResponse =
        connect(k.port, "/querier.v1.QuerierService/SelectMergeStacktraces", &[], &req(site(&["nope"]))).unwrap();
    assert_eq!(r.flamegraph.unwrap().total, 0);
    let p: Profile = connect(
        k.port,
        "/querier.v1.QuerierService/SelectMergeProfile",
        &[],
        &q::SelectMergeProfileRequest {
            profile_type_id: "process_cpu:samples:count::".into(),
            label_selector: "{service_name=\"cs\"}".into(),
            start: now_ms() - 60_000,
            end: now_ms() + 1000,
            stack_trace_selector: Some(site(&["main", "b"])),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.sample.iter().map(|s| s.value[0]).sum::<i64>(), 4);
    // Selectors that need profile or trace ids are refused, not ignored.
    let mut spans = req(site(&[]));
    spans.profile_id_selector = vec!["0123456789abcdef".into()];
    let e = connect::<_, q::SelectMergeStacktracesResponse>(
        k.port,
        "/querier.v1.QuerierService/SelectMergeStacktraces",
        &[],
        &spans,
    )
    .unwrap_err();
    assert_eq!(e.1, "unimplemented");
}

/// A large profile, pushed by Push and by `/ingest`, is decoded on a decode thread (counted
/// on /metrics) and answers exactly as when its core decodes it (`-distributor.decode-offload-bytes=0`).
#[test]
fn large_profiles_decoded_off_their_core_answer_the_same() {
    let raw = std::fs::read(testdata("pprof/google-pprof/large.cpu")).unwrap();
    let mut answers = Vec::new();
    for (offload, flag) in
        [(true, "-distributor.decode-offload-bytes=524288"), (false, "-distributor.decode-offload-bytes=0")]
    {
        let mut flags = FIXTURE_FLAGS.to_vec();
        flags.push(flag);
        let k = Kiln::start(&flags);
        let _: PushResponse =
            connect(k.port, "/push.v1.PusherService/Push", &[], &push_req("process_cpu", "big-push", raw.clone()))
                .unwrap();
        let r = post(k.port, "/ingest?name=big-ingest&format=pprof", &[], raw.clone());
        assert_eq!(r.status, 200, "{}", r.text());
        let decoded_off_core = metric(k.port, "kiln_distributor_decode_offloaded_total");
        assert_eq!(decoded_off_core > 0.0, offload, "{decoded_off_core}");
        let graphs: Vec<_> = ["big-push", "big-ingest"]
            .iter()
            .map(|s| {
                let g = flamegraph(
                    k.port,
                    "process_cpu:samples:count:cpu:nanoseconds",
                    &format!("{{service_name=\"{s}\"}}"),
                );
                (g.total, flamegraph_stacks(&g.names, &g.levels.iter().map(|l| l.values.clone()).collect::<Vec<_>>()))
            })
            .collect();
        assert!(graphs.iter().all(|(total, _)| *total > 0), "nothing stored");
        answers.push(graphs);
    }
    assert_eq!(answers[0], answers[1]);
}
