//! Whole-process tests of the ingest formats beside pprof and folded: speedscope, trie and
//! tree on `/ingest`, and OTLP profiles over OTLP/HTTP (protobuf and JSON) and gRPC (h2c),
//! each pushed to a real kiln on 127.0.0.1 and read back through the query API; and the
//! hostile inputs of each, refused with a 4xx that says why.
mod common;

use common::*;
use kiln_proto::google::v1::Profile;
use kiln_proto::opentelemetry::proto::collector::profiles::v1development as collector;
use kiln_proto::querier::v1 as q;
use prost::Message;
use std::collections::BTreeMap;

fn flamegraph_of(port: u16, pt: &str, selector: &str) -> BTreeMap<String, i64> {
    let fg = flamegraph(port, pt, selector);
    let levels: Vec<Vec<i64>> = fg.levels.into_iter().map(|l| l.values).collect();
    flamegraph_stacks(&fg.names, &levels)
}

/// Every `service_name` stored.
fn service_names(port: u16) -> Vec<String> {
    let v: kiln_proto::types::v1::LabelValuesResponse = connect(
        port,
        "/querier.v1.QuerierService/LabelValues",
        &[],
        &kiln_proto::types::v1::LabelValuesRequest {
            name: "service_name".into(),
            matchers: vec![],
            start: 1000,
            end: now_ms() + 3_600_000,
        },
    )
    .unwrap();
    v.names
}

fn stacks(v: &[(&str, i64)]) -> BTreeMap<String, i64> {
    v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

fn ingest(port: u16, query: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    post(port, &format!("/ingest?{query}"), headers, body)
}

#[test]
fn speedscope_files_become_profiles() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let file = |n: &str| std::fs::read(testdata(&format!("speedscope/{n}"))).unwrap();
    let json = [("content-type", "application/json")];
    // One evented profile in unit "none": sampled at 1e4 Hz, so 100 µs a unit (×100).
    let r = ingest(k.port, "name=ss1&format=speedscope", &json, file("simple.speedscope.json"));
    assert_eq!(r.status, 200, "{}", r.text());
    let pt = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
    let sel = "{service_name=\"ss1\",profile_name=\"simple.txt\"}";
    assert_eq!(
        flamegraph_of(k.port, pt, sel),
        stacks(&[("a;b", 50_000_000), ("a;b;c", 50_000_000), ("a;b;d", 40_000_000)])
    );
    // Two sampled profiles in seconds: the app name takes the unit as its type suffix.
    let r = ingest(k.port, "name=ss2%7Bx%3Dy%7D&format=speedscope", &json, file("two-sampled.speedscope.json"));
    assert_eq!(r.status, 200, "{}", r.text());
    for name in ["one", "two"] {
        let sel = format!("{{service_name=\"ss2\",x=\"y\",profile_name=\"{name}\"}}");
        let got = flamegraph_of(k.port, "wall:wall:nanoseconds:cpu:nanoseconds", &sel);
        assert_eq!(got, stacks(&[("a;b", 5_000_000_000), ("a;b;c", 5_000_000_000), ("a;b;d", 4_000_000_000)]));
    }
    let r = ingest(k.port, "name=ss3&format=speedscope", &json, file("two-sampled-bytes.speedscope.json"));
    assert_eq!(r.status, 200, "{}", r.text());
    let got = flamegraph_of(k.port, "memory:samples:bytes::", "{service_name=\"ss3\",profile_name=\"one\"}");
    assert_eq!(got, stacks(&[("a;b", 5), ("a;b;c", 5), ("a;b;d", 4)]));
    // Three profiles of one merge key: one profile, no suffix.
    let r = ingest(k.port, "name=ss4&format=speedscope", &json, file("duplicates.speedscope.json"));
    assert_eq!(r.status, 200, "{}", r.text());
    let got = flamegraph_of(k.port, pt, "{service_name=\"ss4\",profile_name=\"one\"}");
    assert_eq!(got, stacks(&[("a;b", 15_000_000_000), ("a;b;c", 15_000_000_000), ("a;b;d", 12_000_000_000)]));

    // Hostile: an unbalanced evented profile, a file that is not speedscope, deep stacks.
    let unbalanced = br#"{"$schema":"https://www.speedscope.app/file-format-schema.json","shared":{"frames":[{"name":"a"}]},
        "profiles":[{"type":"evented","name":"p","unit":"none","startValue":0,"endValue":1,"events":[{"type":"O","at":0,"frame":0}]}]}"#;
    let r = ingest(k.port, "name=bad&format=speedscope", &json, unbalanced.to_vec());
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("unbalanced"), "{}", r.text());
    let r = ingest(k.port, "name=bad&format=speedscope", &json, b"{\"profiles\":[]}".to_vec());
    assert_eq!(r.status, 422);
    assert!(r.text().contains("$schema"), "{}", r.text());
}

fn uvarint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// A trie or tree node.
fn node(out: &mut Vec<u8>, name: &str, value: u64, children: u64) {
    uvarint(out, name.len() as u64);
    out.extend_from_slice(name.as_bytes());
    uvarint(out, value);
    uvarint(out, children);
}

#[test]
fn trie_and_tree_bodies() {
    let k = Kiln::start(FIXTURE_FLAGS);
    // Keys "main;work" (3), "main;work;io" (2), "main;idle" (1), the trie splitting "main;".
    let mut trie = Vec::new();
    node(&mut trie, "", 0, 1);
    node(&mut trie, "main;", 0, 2);
    node(&mut trie, "work", 3, 1);
    node(&mut trie, ";io", 2, 0);
    node(&mut trie, "idle", 1, 0);
    let want = stacks(&[("main;work", 3), ("main;work;io", 2), ("main;idle", 1)]);
    let r = ingest(k.port, "name=trie1.cpu&format=trie&sampleRate=0", &[], trie.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(flamegraph_of(k.port, "process_cpu:samples:count::", "{service_name=\"trie1\"}"), want);
    // The content type alone selects it.
    let r = ingest(k.port, "name=trie2.cpu&sampleRate=0", &[("content-type", "binary/octet-stream+trie")], trie);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(flamegraph_of(k.port, "process_cpu:samples:count::", "{service_name=\"trie2\"}"), want);

    // A tree: what a query answers in PROFILE_FORMAT_TREE, ingested again.
    let r = ingest(k.port, "name=src.cpu&format=folded", &[], b"main;work 3\nmain;work;io 2\nmain;idle 1\n".to_vec());
    assert_eq!(r.status, 200, "{}", r.text());
    let pt = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
    let req = q::SelectMergeStacktracesRequest {
        profile_type_id: pt.into(),
        label_selector: "{service_name=\"src\"}".into(),
        start: 1000,
        end: now_ms() + 3_600_000,
        format: q::ProfileFormat::Tree as i32,
        ..Default::default()
    };
    let r: q::SelectMergeStacktracesResponse =
        connect(k.port, "/querier.v1.QuerierService/SelectMergeStacktraces", &[], &req).unwrap();
    assert!(!r.tree.is_empty());
    let r2 = ingest(k.port, "name=tree1.cpu&format=tree&sampleRate=0", &[], r.tree.to_vec());
    assert_eq!(r2.status, 200, "{}", r2.text());
    let r3 =
        ingest(k.port, "name=tree2.cpu&sampleRate=0", &[("content-type", "binary/octet-stream+tree")], r.tree.to_vec());
    assert_eq!(r3.status, 200, "{}", r3.text());
    let ns: BTreeMap<String, i64> = want.iter().map(|(s, v)| (s.clone(), v * 10_000_000)).collect();
    assert_eq!(flamegraph_of(k.port, pt, "{service_name=\"src\"}"), ns);
    for svc in ["tree1", "tree2"] {
        assert_eq!(flamegraph_of(k.port, "process_cpu:samples:count::", &format!("{{service_name=\"{svc}\"}}")), ns);
    }

    // Hostile: truncated, trailing bytes, counts past the body, a deep trie whose keys are
    // quadratic in its size.
    for (what, body) in [
        ("truncated", trie_prefix()),
        ("trailing", [trie_prefix(), vec![1, b'x', 1, 0, 9]].concat()),
        ("children", vec![0, 0, 0x80, 0x80, 0x04]),
    ] {
        let r = ingest(k.port, "name=bad.cpu&format=trie", &[], body);
        assert_eq!(r.status, 422, "{what}: {}", r.text());
        assert!(r.text().contains("malformed trie body"), "{what}: {}", r.text());
    }
    let mut deep = Vec::new();
    let n = 100_000u64;
    for i in 0..n {
        node(&mut deep, "a", 1, u64::from(i + 1 < n));
    }
    let r = ingest(k.port, "name=bad.cpu&format=trie", &[], deep);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("max_profile_size_bytes"), "{}", r.text());
}

fn trie_prefix() -> Vec<u8> {
    let mut v = Vec::new();
    node(&mut v, "", 0, 1);
    node(&mut v, "a", 1, 1);
    v
}

fn otlp_fixture(name: &str) -> Vec<u8> {
    std::fs::read(testdata(&format!("otlp/{name}"))).unwrap()
}

/// Pyroscope's expected SelectMergeProfile output: root-first function-name stacks.
fn expected(file: &str) -> BTreeMap<String, i64> {
    let v: serde_json::Value = serde_json::from_slice(&otlp_fixture(file)).unwrap();
    let mut out = BTreeMap::new();
    for s in v["samples"].as_array().unwrap() {
        let mut frames = Vec::new();
        for l in s["locations"].as_array().unwrap().iter().rev() {
            for line in l["lines"].as_array().unwrap().iter().rev() {
                let line = line.as_str().unwrap();
                let head = &line[..line.rfind('@').unwrap()];
                frames.push(head[..head.rfind('[').unwrap()].to_string());
            }
        }
        *out.entry(frames.join(";")).or_insert(0) += s["values"].as_str().unwrap().parse::<i64>().unwrap();
    }
    out
}

fn merged_profile(port: u16, pt: &str) -> BTreeMap<String, i64> {
    let p: Profile = connect(
        port,
        "/querier.v1.QuerierService/SelectMergeProfile",
        &[],
        &q::SelectMergeProfileRequest {
            profile_type_id: pt.into(),
            label_selector: "{service_name=\"unknown_service\"}".into(),
            start: 1000,
            end: now_ms() + 3_600_000,
            ..Default::default()
        },
    )
    .unwrap();
    // Function names only, as the expected output carries them.
    pprof_stacks(&p, 0).into_iter().fold(BTreeMap::new(), |mut m, (k, v)| {
        let names: Vec<&str> = k.split(';').map(|f| f.split(" (").next().unwrap()).collect();
        *m.entry(names.join(";")).or_insert(0) += v;
        m
    })
}

#[test]
fn otlp_over_http_json_and_grpc() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let cpu = expected("otel-ebpf-profile-cpu.out.json");
    let offcpu = expected("otel-ebpf-profile-offcpu.out.json");
    let times =
        |m: &BTreeMap<String, i64>, n: i64| m.iter().map(|(s, v)| (s.clone(), v * n)).collect::<BTreeMap<_, _>>();
    let check = |n: i64| {
        assert_eq!(
            merged_profile(k.port, "process_cpu:cpu:nanoseconds:cpu:nanoseconds"),
            times(&cpu, n),
            "cpu after {n}"
        );
        assert_eq!(merged_profile(k.port, "off_cpu:off_cpu:nanoseconds::"), times(&offcpu, n), "off-cpu after {n}");
    };
    let pb = otlp_fixture("otel-ebpf-profile.pb.bin");
    // OTLP/HTTP protobuf.
    let r = post(k.port, "/v1development/profiles", &[("content-type", "application/x-protobuf")], pb.clone());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers.get("content-type").unwrap(), "application/x-protobuf");
    check(1);
    // OTLP/HTTP JSON, gzipped.
    let r = post(
        k.port,
        "/v1development/profiles",
        &[("content-type", "application/json"), ("content-encoding", "gzip")],
        gzip(&otlp_fixture("otel-ebpf-profile.pb.json")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    check(2);
    // gRPC over h2c.
    let req = collector::ExportProfilesServiceRequest::decode(&pb[..]).unwrap();
    let _: collector::ExportProfilesServiceResponse = grpc(k.port, GRPC_EXPORT, &[], &req).unwrap();
    check(3);
    // OTLP/HTTP on the gRPC method's path.
    let r = post(k.port, GRPC_EXPORT, &[("content-type", "application/protobuf")], pb);
    assert_eq!(r.status, 200, "{}", r.text());
    check(4);
    // Every other service's series is there too.
    let names = service_names(k.port);
    assert!(names.contains(&"unknown_service:containerd".to_string()), "{names:?}");
    assert!(metric_sum(k.port, "kiln_distributor_otlp_requests_total") >= 4.0);
}

const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export";

#[test]
fn otlp_refuses_what_does_not_fit() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let r = post(k.port, "/v1development/profiles", &[("content-type", "text/plain")], b"x".to_vec());
    assert_eq!(r.status, 415, "{}", r.text());
    let r = post(k.port, "/v1development/profiles", &[("content-type", "application/x-protobuf")], vec![0xff; 16]);
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post(
        k.port,
        "/v1development/profiles",
        &[("content-type", "application/json")],
        b"{\"resourceProfiles\":".to_vec(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // No dictionary: InvalidArgument over gRPC, 400 over HTTP.
    let mut req =
        collector::ExportProfilesServiceRequest::decode(&otlp_fixture("otel-ebpf-profile.pb.bin")[..]).unwrap();
    req.dictionary = None;
    let e = grpc::<_, collector::ExportProfilesServiceResponse>(k.port, GRPC_EXPORT, &[], &req).unwrap_err();
    assert_eq!(e.0, 3, "{e:?}");
    assert!(e.1.contains("missing profile metadata dictionary"), "{e:?}");
    let r = post(k.port, "/v1development/profiles", &[("content-type", "application/x-protobuf")], req.encode_to_vec());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("missing profile metadata dictionary"), "{}", r.text());
    // An index past its table.
    let mut req =
        collector::ExportProfilesServiceRequest::decode(&otlp_fixture("otel-ebpf-profile.pb.bin")[..]).unwrap();
    req.resource_profiles[0].scope_profiles[0].profiles[0].samples[0].stack_index = 100_000;
    let r = post(k.port, "/v1development/profiles", &[("content-type", "application/x-protobuf")], req.encode_to_vec());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("stack index 100000 is out of range"), "{}", r.text());
    // Attribute values nested past prost's depth.
    use kiln_proto::opentelemetry::proto::common::v1::{any_value::Value, AnyValue, ArrayValue, KeyValue};
    let mut value = AnyValue { value: Some(Value::StringValue("x".into())) };
    for _ in 0..200 {
        value = AnyValue { value: Some(Value::ArrayValue(ArrayValue { values: vec![value] })) };
    }
    let mut req =
        collector::ExportProfilesServiceRequest::decode(&otlp_fixture("otel-ebpf-profile.pb.bin")[..]).unwrap();
    req.resource_profiles[0]
        .resource
        .as_mut()
        .unwrap()
        .attributes
        .push(KeyValue { key: "deep".into(), value: Some(value) });
    let r = post(k.port, "/v1development/profiles", &[("content-type", "application/x-protobuf")], req.encode_to_vec());
    assert_eq!(r.status, 400, "{}", r.text());
    // Nothing was stored.
    let names = service_names(k.port);
    assert!(names.is_empty(), "{names:?}");
}
