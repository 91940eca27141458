//! Bad input gets a clear 4xx (or the matching Connect/gRPC code) and leaves the server and
//! the data already accepted untouched.
mod common;

use common::*;
use kiln_proto::push::v1::{PushRequest, PushResponse, RawProfileSeries, RawSample};
use kiln_proto::querier::v1 as q;
use kiln_proto::types::v1 as t;

fn series(labels: &[(&str, &str)], raw: Vec<u8>) -> PushRequest {
    PushRequest {
        series: vec![RawProfileSeries {
            labels: labels.iter().map(|(n, v)| t::LabelPair { name: n.to_string(), value: v.to_string() }).collect(),
            samples: vec![RawSample { raw_profile: raw.into(), id: String::new() }],
            annotations: vec![],
        }],
    }
}

fn push(port: u16, req: &PushRequest) -> Result<PushResponse, (u16, String, String)> {
    connect(port, "/push.v1.PusherService/Push", &[], req)
}

fn rust_profile() -> Vec<u8> {
    std::fs::read(testdata("pprof/pyroscope/pkg-pprof/profile_rust")).unwrap()
}

#[test]
fn bad_pushes_are_rejected_and_the_server_carries_on() {
    let k = Kiln::start(&[
        "-validation.reject-older-than=0",
        "-querier.max-query-length=0",
        "-querier.max-query-lookback=0",
    ]);
    let ok = |labels: &[(&str, &str)]| series(labels, rust_profile());
    push(k.port, &ok(&[("__name__", "process_cpu"), ("service_name", "good")])).unwrap();

    let cases: Vec<(&str, PushRequest, &str)> = vec![
        (
            "broken protobuf",
            series(&[("__name__", "process_cpu")], b"\x0a\xff\xff\xff\xff\x0f garbage".to_vec()),
            "decode",
        ),
        ("bad gzip", series(&[("__name__", "process_cpu")], b"\x1f\x8b\x08\x00garbage".to_vec()), "decompress"),
        ("truncated gzip", series(&[("__name__", "process_cpu")], rust_profile()[..2000].to_vec()), "decompress"),
        ("no __name__", ok(&[("service_name", "x")]), "metric name"),
        ("bad metric name", ok(&[("__name__", "1bad")]), "metric name"),
        ("empty label name", ok(&[("__name__", "process_cpu"), ("", "v")]), "label name"),
        ("empty service_name", ok(&[("__name__", "process_cpu"), ("service_name", "")]), "service_name"),
        ("empty request", PushRequest::default(), "no profiles received"),
    ];
    for (what, req, needle) in cases {
        let e = push(k.port, &req).expect_err(what);
        assert_eq!((e.0, e.1.as_str()), (400, "invalid_argument"), "{what}: {e:?}");
        assert!(e.2.contains(needle), "{what}: message {:?} lacks {needle:?}", e.2);
    }

    let invalid_utf8 = std::fs::read(testdata("pprof/pyroscope/og-convert/invalid_utf8.pb.gz")).unwrap();
    let e = push(k.port, &series(&[("__name__", "process_cpu")], invalid_utf8.clone())).unwrap_err();
    assert_eq!(e.0, 400);
    assert!(e.2.contains("invalid utf8"), "{e:?}");
    let (ct, body) = multipart(&[("profile", &invalid_utf8)]);
    assert_eq!(post(k.port, "/ingest?name=utf8", &[("content-type", &ct)], body).status, 422);

    let dotnet = std::fs::read(testdata("pprof/pyroscope/og-convert/dotnet-pprof-3.pb.gz")).unwrap();
    let e = push(k.port, &series(&[("__name__", "process_cpu")], dotnet.clone())).unwrap_err();
    assert!(e.2.contains("function id is 0"), "{e:?}");
    // The same file through /ingest as the .NET spy sends it is repaired.
    let st = std::fs::read(testdata("pprof/pyroscope/og-convert/dotnet-pprof-3.st.json")).unwrap();
    let (ct, body) = multipart(&[("profile", &dotnet), ("sample_type_config", &st)]);
    let r = post(k.port, "/ingest?name=dotnet-app&spyName=dotnetspy", &[("content-type", &ct)], body);
    assert_eq!(r.status, 200, "{}", r.text());

    // A bare Connect body that is not a PushRequest.
    let r =
        post(k.port, "/push.v1.PusherService/Push", &[("content-type", "application/proto")], b"\xff\xff\xff".to_vec());
    assert_eq!(r.status, 400);
    // A truncated gRPC frame.
    let r = request(
        k.port,
        "POST",
        "/push.v1.PusherService/Push",
        &[("content-type", "application/grpc")],
        vec![0, 0, 0, 1, 0, 1],
        true,
    );
    assert_eq!(r.headers.get("grpc-status").unwrap(), "3");
    // Unknown content type on an RPC path.
    assert_eq!(post(k.port, "/push.v1.PusherService/Push", &[("content-type", "text/plain")], vec![]).status, 415);

    // Everything accepted before is intact, and the server is ready.
    assert_eq!(get(k.port, "/ready").status, 200);
    let r: q::SelectMergeStacktracesResponse = connect(
        k.port,
        "/querier.v1.QuerierService/SelectMergeStacktraces",
        &[],
        &q::SelectMergeStacktracesRequest {
            profile_type_id: "process_cpu:cpu:nanoseconds:cpu:nanoseconds".into(),
            label_selector: "{service_name=\"good\"}".into(),
            start: 1000,
            end: now_ms(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.flamegraph.unwrap().total, 11_960_000_000);
}

#[test]
fn limits_apply() {
    let k = Kiln::start(&["-validation.max-profile-size-bytes=10000", "-validation.reject-older-than=0"]);
    let e = push(k.port, &series(&[("__name__", "process_cpu")], rust_profile())).unwrap_err();
    assert_eq!(e.0, 400);
    assert!(e.2.contains("exceeds limit"), "{e:?}");

    // Pyroscope's default 2 MiB burst rejects a 2.4 MB profile with 429.
    let k = Kiln::start(&["-validation.reject-older-than=0"]);
    let large = std::fs::read(testdata("pprof/google-pprof/large.cpu")).unwrap();
    let e = push(k.port, &series(&[("__name__", "process_cpu")], large)).unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (429, "resource_exhausted"), "{e:?}");

    // A full head refuses pushes with 429 and keeps what it holds; the WAL replay at start is
    // not refused (it was acknowledged).
    let k = Kiln::start(&["-validation.reject-older-than=0", "-ingester.max-head-bytes-per-core=1", "-shards=1"]);
    push(k.port, &series(&[("__name__", "process_cpu"), ("service_name", "a")], rust_profile())).unwrap();
    let e = push(k.port, &series(&[("__name__", "process_cpu"), ("service_name", "b")], rust_profile())).unwrap_err();
    assert_eq!((e.0, e.1.as_str()), (429, "resource_exhausted"), "{e:?}");
    assert!(e.2.contains("head"), "{e:?}");
    let data = k.kill();
    let k = Kiln::start_in(
        data,
        &[
            "-ingester.max-head-bytes-per-core=1",
            "-shards=1",
            "-querier.max-query-length=0",
            "-querier.max-query-lookback=0",
        ],
    );
    let r = connect_json(
        k.port,
        "/querier.v1.QuerierService/LabelValues",
        &[],
        serde_json::json!({"name": "service_name", "start": "1000", "end": (now_ms() + 1000).to_string()}),
    );
    assert_eq!(r.json()["names"], serde_json::json!(["a"]));
    drop(k);

    // The ingestion window (default 1h back) rejects old fixtures.
    let k = Kiln::start(&[]);
    let e = push(k.port, &series(&[("__name__", "process_cpu")], rust_profile())).unwrap_err();
    assert!(e.2.contains("outside of ingestion window"), "{e:?}");
}

#[test]
fn bad_ingest_requests() {
    let k = Kiln::start(&[]);
    let cases: &[(&str, &[u8], u16)] = &[
        ("/ingest?format=folded", b"a 1", 400),
        ("/ingest?name=bad%20app&format=folded", b"a 1", 400),
        ("/ingest?name=app.cpu&format=nonsense", b"a 1", 400),
        ("/ingest?name=app.unknowntype&format=folded", b"a 1", 400),
        ("/ingest?name=app.cpu&format=folded", b"a;b notanumber", 422),
        ("/ingest?name=app.cpu&format=pprof", b"not a profile", 422),
        ("/ingest?name=app.cpu&format=folded&from=2000&until=1000", b"a 1", 400),
        ("/ingest?name=app%7Bk-y%3Dv%7D&format=folded", b"a 1", 400),
    ];
    for (path, body, status) in cases {
        let r = post(k.port, path, &[], body.to_vec());
        assert_eq!(r.status, *status, "{path}: {}", r.text());
        assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()), "{path}");
    }
    let cpu = std::fs::read(testdata("pprof/pyroscope/og-convert/cpu.pb.gz")).unwrap();
    let (ct, body) = multipart(&[("profile", &cpu), ("prev_profile", &cpu)]);
    assert_eq!(post(k.port, "/ingest?name=app", &[("content-type", &ct)], body).status, 422);
    let r = post(k.port, "/ingest?name=app", &[("content-type", "multipart/form-data; boundary=x")], b"junk".to_vec());
    assert_eq!(r.status, 400);
    // RFC 2046: a boundary has at most 70 characters.
    let ct = format!("multipart/form-data; boundary={}", "b".repeat(71));
    let r = post(k.port, "/ingest?name=app", &[("content-type", ct.as_str())], b"--".to_vec());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("RFC 2046"), "{}", r.text());
    let config = vec![b' '; 65 * 1024];
    let (ct, body) = multipart(&[("profile", &cpu), ("sample_type_config", &config)]);
    let r = post(k.port, "/ingest?name=app", &[("content-type", &ct)], body);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("sample_type_config"), "{}", r.text());
    // A folded body of short distinct frames would build to a hundred times its size.
    let frames: String = (0..50_000).map(|i| format!("{i:x};")).collect::<String>() + " 1\n";
    let r = post(k.port, "/ingest?name=app.cpu&format=folded", &[], frames.into_bytes());
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("too many distinct frames"), "{}", r.text());
    assert_eq!(get(k.port, "/ready").status, 200);
}

#[test]
fn bad_queries() {
    let k = Kiln::start(&[]);
    let now = now_ms();
    bad_selections_are_invalid_arguments(k.port, now);
    bad_steps_are_refused(k.port, now);
    max_nodes_beyond_the_limit_are_refused(k.port, now);
    times_beyond_64_bit_nanoseconds_are_refused(k.port);
    bad_paths_methods_and_headers(k.port);
}

const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";

fn select_merge_stacktraces(
    port: u16,
    req: &q::SelectMergeStacktracesRequest,
) -> Result<q::SelectMergeStacktracesResponse, (u16, String, String)> {
    connect(port, "/querier.v1.QuerierService/SelectMergeStacktraces", &[], req)
}

fn sms(
    port: u16,
    pt: &str,
    sel: &str,
    start: i64,
    end: i64,
) -> Result<q::SelectMergeStacktracesResponse, (u16, String, String)> {
    select_merge_stacktraces(
        port,
        &q::SelectMergeStacktracesRequest {
            profile_type_id: pt.into(),
            label_selector: sel.into(),
            start,
            end,
            ..Default::default()
        },
    )
}

fn bad_selections_are_invalid_arguments(port: u16, now: i64) {
    let pt = CPU;
    for (what, r) in [
        ("malformed selector", sms(port, pt, "{a=b}", now - 1000, now)),
        ("unterminated selector", sms(port, pt, "{a=\"b\"", now - 1000, now)),
        ("bad regex", sms(port, pt, "{a=~\"(\"}", now - 1000, now)),
        ("bad profile type", sms(port, "cpu", "{}", now - 1000, now)),
        ("start after end", sms(port, pt, "{}", now, now - 1000)),
        ("longer than max-query-length", sms(port, pt, "{}", now - 3 * 86_400_000, now)),
    ] {
        let e = r.expect_err(what);
        assert_eq!((e.0, e.1.as_str()), (400, "invalid_argument"), "{what}: {e:?}");
    }
    let e = connect::<_, t::LabelValuesResponse>(
        port,
        "/querier.v1.QuerierService/LabelValues",
        &[],
        &t::LabelValuesRequest::default(),
    )
    .unwrap_err();
    assert!(e.2.contains("name is required"));
}

/// No step, NaN, infinities and steps whose points' times would overflow: refused, not
/// wrapped.
fn bad_steps_are_refused(port: u16, now: i64) {
    for (step, needle) in [
        (0.0, "step"),
        (f64::NAN, "finite"),
        (f64::INFINITY, "finite"),
        (-1.0, "0.001"),
        (1e300, "too large"),
        (9.3e15, "too large"),
    ] {
        let e = connect::<_, q::SelectSeriesResponse>(
            port,
            "/querier.v1.QuerierService/SelectSeries",
            &[],
            &q::SelectSeriesRequest {
                profile_type_id: CPU.into(),
                start: now - 1000,
                end: now,
                step,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!((e.0, e.1.as_str()), (400, "invalid_argument"), "step {step}: {e:?}");
        assert!(e.2.contains(needle), "step {step}: {e:?}");
    }
}

fn max_nodes_beyond_the_limit_are_refused(port: u16, now: i64) {
    let e = sms(port, CPU, "{}", now - 1000, now);
    assert!(e.is_ok());
    let mut req = q::SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        start: now - 1000,
        end: now,
        ..Default::default()
    };
    let mut merge_error = |max_nodes: i64| {
        req.max_nodes = Some(max_nodes);
        select_merge_stacktraces(port, &req).unwrap_err()
    };
    let e = merge_error(10_000_000);
    assert!(e.2.contains("max flamegraph nodes"), "{e:?}");
    // Negative: no limit, which only an unlimited maximum grants (Pyroscope's message).
    let e = merge_error(-1);
    assert_eq!(e.2, "max flamegraph nodes limit must be set (max allowed 1048576)", "{e:?}");
}

/// Times that do not fit in 64-bit nanoseconds are a 400, not a silent `now`.
fn times_beyond_64_bit_nanoseconds_are_refused(port: u16) {
    let q = "process_cpu:cpu:nanoseconds:cpu:nanoseconds%7B%7D";
    for path in [
        format!("/pyroscope/render?query={q}&from=now-10000000y&until=now"),
        format!("/pyroscope/render?query={q}&from=now-1h&until=99999999999"),
        format!("/pyroscope/render-diff?leftQuery={q}&rightQuery={q}&leftFrom=now-10000000y&rightFrom=now-1h"),
        "/pyroscope/label-values?label=__name__&from=11111111".to_string(),
    ] {
        let r = get(port, &path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains("out of range"), "{path}: {}", r.text());
    }
    let r = post(port, "/ingest?name=a.cpu&from=now-10000000y", &[], b"main 1\n".to_vec());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("out of range"), "{}", r.text());
}

fn bad_paths_methods_and_headers(port: u16) {
    let r = get(port, "/pyroscope/render?query=%7Bservice_name%3D%22a%22%7D");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("profile-type selection"));
    assert_eq!(get(port, "/pyroscope/label-values").status, 400);
    let r = request(port, "GET", "/ready", &[("accept", "garbage")], vec![], false);
    assert_eq!(r.status, 400);
    assert_eq!(get(port, "/no/such/path").status, 404);
    let r =
        post(port, "/querier.v1.QuerierService/NoSuchMethod", &[("content-type", "application/json")], b"{}".to_vec());
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "unimplemented");
}
