//! Whole-process tests of `/ingest?format=jfr`: real recordings from testdata/jfr posted raw
//! and as multipart forms with their labels snapshots, read back through ProfileTypes,
//! LabelValues and SelectMergeStacktraces (totals from Pyroscope's goldens); hostile
//! recordings answered with a 4xx that names the problem.
mod common;

use common::jfr as w;
use common::*;
use kiln_proto::querier::v1 as q;
use kiln_proto::types::v1 as t;

fn recording(name: &str) -> Vec<u8> {
    std::fs::read(testdata(&format!("jfr/jfr-parser/{name}"))).unwrap()
}

fn total(port: u16, pt: &str, selector: &str) -> i64 {
    flamegraph(port, pt, selector).total
}

fn label_values(port: u16, name: &str, selector: &str) -> Vec<String> {
    let v: t::LabelValuesResponse = connect(
        port,
        "/querier.v1.QuerierService/LabelValues",
        &[],
        &t::LabelValuesRequest {
            name: name.into(),
            matchers: vec![selector.into()],
            start: 1000,
            end: now_ms() + 3_600_000,
        },
    )
    .unwrap();
    v.names
}

fn profile_types(port: u16) -> Vec<String> {
    let types: q::ProfileTypesResponse = connect(
        port,
        "/querier.v1.QuerierService/ProfileTypes",
        &[],
        &q::ProfileTypesRequest { start: 1000, end: now_ms() + 3_600_000 },
    )
    .unwrap();
    types.profile_types.into_iter().map(|t| t.id).collect()
}

#[test]
fn a_raw_recording_is_ingested_and_queried() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let raw = gunzip_maybe(&recording("dump1.jfr.gz"));
    let r = post(
        k.port,
        "/ingest?name=java.raw&format=jfr&spyName=javaspy&from=now-10s&until=now",
        &[("content-type", "application/octet-stream")],
        raw,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(profile_types(k.port), vec!["process_cpu:cpu:nanoseconds:cpu:nanoseconds"]);
    let sel = "{service_name=\"java.raw\"}";
    assert_eq!(total(k.port, "process_cpu:cpu:nanoseconds:cpu:nanoseconds", sel), 21_880_000_000);
    assert_eq!(label_values(k.port, "pyroscope_spy", sel), vec!["javaspy"]);
    // Without a labels part no context label exists.
    assert!(label_values(k.port, "thread_name", sel).is_empty());
}

#[test]
fn a_multipart_recording_with_labels_is_ingested_and_queried() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let (jfr, labels) = (recording("dump2.jfr.gz"), recording("dump2.labels.pb.gz"));
    let (ct, body) = multipart(&[("jfr", &jfr), ("labels", &labels)]);
    let r = post(k.port, "/ingest?name=java.app{env=test}&format=jfr&spyName=javaspy", &[("content-type", &ct)], body);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut types = profile_types(k.port);
    types.sort();
    assert_eq!(
        types,
        vec![
            "memory:alloc_in_new_tlab_bytes:bytes:space:bytes",
            "memory:alloc_in_new_tlab_objects:count:space:bytes",
            "memory:live:count:objects:count",
            "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
            "wall:wall:nanoseconds:wall:nanoseconds",
        ]
    );
    let sel = "{service_name=\"java.app\", env=\"test\"}";
    // Pyroscope's goldens' totals (testdata/README.md).
    for (pt, want) in [
        ("process_cpu:cpu:nanoseconds:cpu:nanoseconds", 33_580_000_000),
        ("wall:wall:nanoseconds:wall:nanoseconds", 147_230_000_000),
        ("memory:alloc_in_new_tlab_objects:count:space:bytes", 4),
        ("memory:alloc_in_new_tlab_bytes:bytes:space:bytes", 2_097_148),
        ("memory:live:count:objects:count", 4),
    ] {
        assert_eq!(total(k.port, pt, sel), want, "{pt}");
    }
    let threads = label_values(k.port, "thread_name", sel);
    assert_eq!(threads, (1..=8).map(|i| format!("pool-2-thread-{i}")).collect::<Vec<_>>());
    for (thread, want) in [("pool-2-thread-1", 4_350_000_000), ("pool-2-thread-6", 3_050_000_000)] {
        let sel = format!("{{service_name=\"java.app\", thread_name=\"{thread}\"}}");
        assert_eq!(total(k.port, "process_cpu:cpu:nanoseconds:cpu:nanoseconds", &sel), want, "{thread}");
        assert_eq!(total(k.port, "wall:wall:nanoseconds:wall:nanoseconds", &sel), want, "{thread}");
    }
    // The recording's event setting, as the converter reads it.
    let converted = kiln::distributor::jfr::convert(
        &gunzip_maybe(&jfr),
        &kiln::distributor::jfr::LabelsSnapshot::default(),
        kiln::distributor::jfr::Options {
            time_nanos: 1,
            duration_nanos: 0,
            sample_rate: 100,
            max_bytes: 0,
            max_samples: 0,
        },
    )
    .unwrap();
    assert!(!converted.event.is_empty());
    assert_eq!(label_values(k.port, "jfr_event", sel), vec![converted.event]);
    // The span ids and `profile_id` labels never become series labels.
    assert!(label_values(k.port, "profile_id", sel).is_empty());
    // They answer span profiles: the CPU time of span 89f7d804af12098f (jfr-parser's
    // `profile_id` of thread 3's samples) is what the recording's samples in it add up to.
    let snapshot = kiln::distributor::jfr::decode_labels(&gunzip_maybe(&labels)).unwrap();
    let opts = kiln::distributor::jfr::Options {
        time_nanos: 1,
        duration_nanos: 0,
        sample_rate: 100,
        max_bytes: 0,
        max_samples: 0,
    };
    let all = kiln::distributor::jfr::convert(&gunzip_maybe(&jfr), &snapshot, opts).unwrap();
    let span = kiln_shards::model::profile::parse_span_id("89f7d804af12098f").unwrap();
    let cpu = all.profiles.iter().find(|p| p.name == "process_cpu").unwrap();
    let want: i64 = cpu.decoded.profile.samples.iter().filter(|s| s.span_id == span).map(|s| s.values[0]).sum();
    assert!(want > 0);
    let r: q::SelectMergeSpanProfileResponse = connect(
        k.port,
        "/querier.v1.QuerierService/SelectMergeSpanProfile",
        &[],
        &q::SelectMergeSpanProfileRequest {
            profile_type_id: "process_cpu:cpu:nanoseconds:cpu:nanoseconds".into(),
            label_selector: sel.into(),
            span_selector: vec!["89f7d804af12098f".into()],
            start: 1000,
            end: now_ms() + 3_600_000,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.flamegraph.unwrap().total, want);
}

#[test]
fn a_service_name_label_keeps_the_app_name_aside() {
    let k = Kiln::start(FIXTURE_FLAGS);
    let (ct, body) = multipart(&[("jfr", &recording("cortex-dev-01__kafka-0__cpu__0.jfr.gz"))]);
    let r = post(k.port, "/ingest?name=kafka{service_name=cortex}&format=jfr", &[("content-type", &ct)], body);
    assert_eq!(r.status, 200, "{}", r.text());
    let sel = "{service_name=\"cortex\"}";
    assert_eq!(label_values(k.port, "app_name", sel), vec!["kafka"]);
    assert_eq!(total(k.port, "process_cpu:cpu:nanoseconds:cpu:nanoseconds", sel), 4_780_000_000);
}

#[test]
fn hostile_recordings_are_refused_with_a_reason() {
    let k = Kiln::start(&["-validation.max-profile-size-bytes=4000000", "-validation.reject-older-than=0"]);
    let url = "/ingest?name=hostile&format=jfr";
    let send = |body: Vec<u8>| post(k.port, url, &[("content-type", "application/octet-stream")], body);
    let raw = gunzip_maybe(&recording("wall.jfr.gz"));
    for (what, body, status, says) in [
        ("empty", vec![], 422, "empty"),
        ("truncated", raw[..raw.len() / 2].to_vec(), 422, "declares"),
        (
            "not JFR",
            b"PK\x03\x04 a zip file, long enough to hold a chunk header .............".to_vec(),
            422,
            "not a JFR chunk",
        ),
        (
            "a long class name shared by many methods",
            w::recording(&"C".repeat(60_000), 20_000, 20_000, 1, false),
            422,
            "would take more than",
        ),
        ("a deep stack in many contexts", w::recording("C", 10, 100_000, 50_000, true), 422, "would take more than"),
        ("a looping constant pool chain", w::looping_chain(), 422, "loops"),
        ("a huge declared count", w::huge_count(), 422, "declares"),
        ("deeply nested metadata", w::deep_metadata(), 422, "nest deeper"),
        ("past the size limit", vec![0u8; 4_000_001], 413, "profile size limit"),
    ] {
        let r = send(body);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert!(r.text().contains(says), "{what}: {}", r.text());
    }
    // Requests of the wrong shape.
    let (ct, body) = multipart(&[("profile", b"x")]);
    let r = post(k.port, url, &[("content-type", &ct)], body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("has no") && r.text().contains("jfr"), "{}", r.text());
    let big = gzip(&vec![0u8; 5_000_000]);
    let (ct, body) = multipart(&[("jfr", &big)]);
    let r = post(k.port, url, &[("content-type", &ct)], body);
    assert_eq!(r.status, 413, "{}", r.text());
    let (ct, body) = multipart(&[("jfr", &recording("wall.jfr.gz")), ("labels", b"\xff\xff\xff")]);
    let r = post(k.port, url, &[("content-type", &ct)], body);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("labels"), "{}", r.text());
    // Still serving; every refusal counted.
    assert_eq!(send(raw).status, 200);
    assert_eq!(metric_sum(k.port, "kiln_distributor_jfr_rejected_recordings_total"), 12.0);
    assert_eq!(metric_sum(k.port, "kiln_distributor_jfr_recordings_total"), 1.0);
    assert_eq!(metric_sum(k.port, "kiln_distributor_jfr_bytes_total"), 170_117.0);
}
