//! No request of a few hundred KiB raises kiln's peak memory by more than a small multiple
//! of its size plus the configured limits. Each case sends one hostile request (each once
//! took hundreds of MiB) to a fresh kiln with low limits, and compares the rise of the
//! process's peak RSS (`VmHWM`, reset before the request) with that bound.
mod common;

use common::hostile::*;
use common::*;
use kiln_proto::push::v1::{PushRequest, RawProfileSeries, RawSample};
use kiln_proto::types::v1::LabelPair;
use prost::Message;

const PROFILE_LIMIT: u64 = 1 << 20;
const BODY_LIMIT: u64 = 4 << 20;

fn start() -> Kiln {
    Kiln::start(&[
        "-validation.max-profile-size-bytes=1048576",
        "-distributor.ingestion-body-limit-mb=4",
        "-distributor.ingestion-rate-limit-mb=0",
        "-validation.reject-older-than=0",
    ])
}

/// The most one request may raise the peak RSS: a fixed allowance (thread-local allocator
/// caches, HTTP buffers, a response), a small multiple of the request, and the limits it may
/// legitimately fill (the body's uncompressed budget, a profile and its decoded form).
fn bound(request_bytes: usize) -> u64 {
    24 * (1 << 20) + 8 * request_bytes as u64 + 2 * (BODY_LIMIT + PROFILE_LIMIT)
}

/// Sends `f`'s request to a fresh kiln, checks the rise of its peak RSS and returns `f`'s
/// answer.
fn within_bound<R>(what: &str, k: &Kiln, request_bytes: usize, f: impl FnOnce() -> R) -> R {
    let (r, rise) = peak_rss_rise(k.pid(), f);
    eprintln!("{what}: a {request_bytes}-byte request raised the peak RSS by {} KiB", rise / 1024);
    assert!(rise <= bound(request_bytes), "{what}: peak RSS rose by {rise} bytes, over {}", bound(request_bytes));
    r
}

fn push_request(service: &str, raws: Vec<Vec<u8>>) -> PushRequest {
    let label = |n: &str, v: &str| LabelPair { name: n.into(), value: v.into() };
    PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![label("__name__", "process_cpu"), label("service_name", service)],
            samples: raws.into_iter().map(|r| RawSample { raw_profile: r.into(), id: String::new() }).collect(),
            annotations: vec![],
        }],
    }
}

fn connect_raw(port: u16, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    let mut h = vec![("content-type", "application/proto"), ("connect-protocol-version", "1")];
    h.extend_from_slice(headers);
    post(port, path, &h, body)
}

#[test]
fn many_small_gzip_bombs_in_one_push() {
    let k = start();
    // 300 profiles, each 1 MiB of zeros (the profile limit) in about 1 KiB of gzip: each is
    // within its own limit, together 75 times the body limit.
    let body = push_request("bombs", vec![gzip_best(&vec![0u8; PROFILE_LIMIT as usize]); 300]).encode_to_vec();
    let n = body.len();
    let r = within_bound("gzip bombs", &k, n, || connect_raw(k.port, "/push.v1.PusherService/Push", &[], body));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("body limit"), "{}", r.text());
}

#[test]
fn push_message_of_empty_series() {
    let k = start();
    // 2 million empty series: 4 MB inflated (within the body limit), hundreds of MB decoded.
    let body = gzip_best(&empty_records(1, 2_000_000));
    let n = body.len();
    let r = within_bound("empty series", &k, n, || {
        connect_raw(k.port, "/push.v1.PusherService/Push", &[("content-encoding", "gzip")], body)
    });
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("would take"), "{}", r.text());
}

#[test]
fn pyspy_names_shared_by_every_function() {
    let k = start();
    let body = gzip_best(&spy_profile(2000, 60_000));
    let n = body.len();
    let r = within_bound("pyspy names", &k, n, || {
        post(k.port, "/ingest?name=spy.app&spyName=pyspy&format=pprof", &[], body)
    });
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn go_generic_name_shared_by_every_function() {
    let k = start();
    let body = push_request("generic", vec![gzip_best(&go_generic_profile(4000, 60_000))]).encode_to_vec();
    let n = body.len();
    let r = within_bound("go generic names", &k, n, || connect_raw(k.port, "/push.v1.PusherService/Push", &[], body));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn pprof_of_empty_samples() {
    let k = start();
    let body = gzip_best(&profile_of_empty_records(2, 500_000));
    let n = body.len();
    let r = within_bound("empty samples", &k, n, || post(k.port, "/ingest?name=empty.app&format=pprof", &[], body));
    assert_eq!(r.status, 422, "{}", r.text());
}

#[test]
fn render_grouped_by_a_label_of_many_values() {
    let k = start();
    let push = push_request("many", vec![gzip_best(&labelled_series_profile(4000))]).encode_to_vec();
    let r = connect_raw(k.port, "/push.v1.PusherService/Push", &[], push);
    assert_eq!(r.status, 200, "{}", r.text());
    let q = "process_cpu:cpu:nanoseconds:cpu:nanoseconds%7Bservice_name%3D%22many%22%7D";
    let path = format!("/pyroscope/render?query={q}&from=now-6h&until=now&groupBy=k");
    let r = within_bound("render groupBy", &k, path.len(), || get(k.port, &path));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("-querier.max-query-points"), "{}", r.text());
}

#[test]
fn query_message_of_empty_strings() {
    let k = start();
    // LabelNames with 4 million empty matchers: 8 MB inflated.
    let body = gzip_best(&empty_records(1, 4_000_000));
    let n = body.len();
    let r = within_bound("empty matchers", &k, n, || {
        connect_raw(k.port, "/querier.v1.QuerierService/LabelNames", &[("content-encoding", "gzip")], body)
    });
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn multipart_with_a_long_boundary() {
    let k = start();
    // A naive search for `--` + 100000 dashes compares up to 100000 bytes at every dash of a
    // body of 100001-dash runs: some 5e10 comparisons for 1 MB.
    let boundary = "-".repeat(100_000);
    let body = format!("{}x", "-".repeat(100_001)).repeat(10).into_bytes();
    let n = body.len();
    let ct = format!("multipart/form-data; boundary={boundary}");
    let started = std::time::Instant::now();
    let r = within_bound("long boundary", &k, n, || {
        post(k.port, "/ingest?name=mp.app", &[("content-type", ct.as_str())], body)
    });
    eprintln!("long boundary: answered in {:?}", started.elapsed());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("RFC 2046"), "{}", r.text());
}

/// A chain of `n` trie nodes of one-byte labels, each with a value: its keys total n²/2.
fn deep_trie(n: u64) -> Vec<u8> {
    let mut w = kiln_io::codec::Writer::default();
    for i in 0..n {
        w.str("a");
        w.u(1);
        w.u(u64::from(i + 1 < n));
    }
    w.0
}

#[test]
fn trie_of_quadratic_keys() {
    let k = start();
    let body = deep_trie(100_000);
    let r =
        within_bound("deep trie", &k, body.len(), || post(k.port, "/ingest?name=t.cpu&format=trie", &[], body.clone()));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("max_profile_size_bytes"), "{}", r.text());
}

#[test]
fn speedscope_of_deep_events() {
    let k = start();
    // Within the profile size limit (1 MiB), its paths some 400 MiB.
    let n = 12_000;
    let opens: Vec<String> = (0..n).map(|i| format!(r#"{{"type":"O","at":{i},"frame":0}}"#)).collect();
    let closes: Vec<String> = (0..n).map(|_| r#"{"type":"C","at":1e9,"frame":0}"#.to_string()).collect();
    let body = format!(
        r#"{{"$schema":"https://www.speedscope.app/file-format-schema.json","shared":{{"frames":[{{"name":"frame"}}]}},
        "profiles":[{{"type":"evented","name":"p","unit":"none","startValue":0,"events":[{}]}}]}}"#,
        [opens, closes].concat().join(",")
    )
    .into_bytes();
    let r = within_bound("deep speedscope", &k, body.len(), || {
        post(k.port, "/ingest?name=s&format=speedscope", &[], body.clone())
    });
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("max_profile_size_bytes"), "{}", r.text());
}

#[test]
fn otlp_samples_of_one_deep_stack() {
    use kiln_proto::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
    use kiln_proto::opentelemetry::proto::profiles::v1development as p;
    let k = start();
    let sample = p::Sample { stack_index: 1, values: vec![1], ..Default::default() };
    let body = ExportProfilesServiceRequest {
        resource_profiles: vec![p::ResourceProfiles {
            scope_profiles: vec![p::ScopeProfiles {
                profiles: vec![p::Profile {
                    sample_type: Some(p::ValueType { type_strindex: 1, unit_strindex: 2 }),
                    samples: vec![sample; 10_000],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        dictionary: Some(p::ProfilesDictionary {
            string_table: vec!["".into(), "samples".into(), "count".into()],
            location_table: vec![Default::default(), Default::default()],
            stack_table: vec![Default::default(), p::Stack { location_indices: vec![1; 1000] }],
            ..Default::default()
        }),
    }
    .encode_to_vec();
    let r = within_bound("OTLP samples of one deep stack", &k, body.len(), || {
        post(k.port, "/v1development/profiles", &[("content-type", "application/x-protobuf")], body.clone())
    });
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("max_profile_size_bytes"), "{}", r.text());
}
