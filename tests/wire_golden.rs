//! Golden files of the formats instances of a cluster send each other: query requests and
//! partial results (`kiln_shards::query::wire`), the read path's jobs, cancellations and
//! results (`kiln::query_scheduler::wire`), a replica's push (`PushRecords` of WAL
//! records, `kiln::ingester::remote`) and the gossiped entry keys (`kiln::cluster::entry`).
//! Members of different builds meet during a rolling upgrade, so a change of these bytes
//! is a change of the protocol: it must be deliberate (and, for the query wire, come with a
//! new version byte). Each fixed value must encode to its file byte for byte, and each file
//! must decode and encode back to itself.
//!
//! `KILN_BLESS=1 cargo test --test wire_golden` rewrites the files from the encoders.
use kiln_shards::model::ids::{ProfileTypeId, TenantId};
use kiln_shards::model::labels::Labels;
use kiln_shards::model::profile::{Function, Line, Location, Mapping, Profile, Sample, SampleGroup, ValueType};
use kiln_shards::model::selector::parse_selector;
use kiln_shards::model::symbols::LocationRec;
use kiln_shards::query::wire;
use kiln_shards::query::{Bucket, FlameTree, Include, KeyFilter, PprofPart, QueryRequest, QueryResult, Selection};
use kiln_shards::ring::member::{InstanceDesc, State};
use std::path::PathBuf;
use std::sync::Arc;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden/wire")
}

fn bless() -> bool {
    std::env::var_os("KILN_BLESS").is_some_and(|v| v == "1")
}

/// Bytes as hex, 32 to a line: diffs of a golden file stay readable.
fn to_hex(b: &[u8]) -> String {
    b.chunks(32).map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<String>() + "\n").collect()
}

fn from_hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "an odd number of hex digits");
    digits.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).expect("hex digits")).collect()
}

/// Compares `encoded` with the golden file `name` (or rewrites it when blessing) and returns
/// the file's bytes.
fn golden(name: &str, encoded: &[u8]) -> Vec<u8> {
    let path = dir().join(name);
    if bless() {
        std::fs::create_dir_all(dir()).unwrap();
        std::fs::write(&path, to_hex(encoded)).unwrap();
    }
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (KILN_BLESS=1 writes it)", path.display()));
    let want = from_hex(&text);
    assert!(
        encoded == want,
        "{name}: the encoding changed (a protocol change: bless with KILN_BLESS=1 only if deliberate)\nnow:\n{}was:\n{}",
        to_hex(encoded),
        to_hex(&want)
    );
    want
}

/// A selection using every part of one: two tenants, a profile type, every matcher operator,
/// a range and, if given, a key filter of one source and one series (a filter's maps have no
/// fixed order, so the goldens hold one of each).
fn selection(keys: Option<(u64, Include)>) -> Selection {
    Selection {
        tenants: vec![TenantId::parse("tenant-a").unwrap(), TenantId::parse("b").unwrap()],
        profile_type: Some(ProfileTypeId::parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds").unwrap()),
        matchers: parse_selector(r#"{service_name="app", env!="dev", pod=~"app-.*", zone!~"z[0-9]"}"#).unwrap(),
        start_ms: 1_700_000_000_000,
        end_ms: 1_700_000_060_000,
        keys: keys.map(|(k, inc)| {
            let mut f = KeyFilter::default();
            f.sources.entry("ingester-1".into()).or_default().series.insert(k, inc);
            Arc::new(f)
        }),
        epoch: Some(42),
        report_read: true,
        spans: None,
    }
}

#[test]
fn query_requests() {
    let all = || selection(Some((0x0123_4567_89ab_cdef, Include::All)));
    let only = || selection(Some((u64::MAX, Include::Only(vec![-5, 0, 1_700_000_000_000_000_000]))));
    let requests = [
        ("profile_types", QueryRequest::ProfileTypes(selection(None))),
        ("label_names", QueryRequest::LabelNames(selection(None))),
        ("label_values", QueryRequest::LabelValues(selection(None), "service_name".into())),
        ("series", QueryRequest::Series(selection(None), vec!["service_name".into(), "pod".into()])),
        ("merge_tree", QueryRequest::MergeTree(all())),
        ("merge_profile", QueryRequest::MergeProfile(only())),
        ("select_series", QueryRequest::SelectSeries { sel: only(), step_ms: 15_000, group_by: vec!["pod".into()] }),
        ("stats", QueryRequest::Stats(selection(None))),
        ("analyze", QueryRequest::Analyze(selection(None))),
        ("keys", QueryRequest::Keys(all())),
    ];
    for (name, q) in &requests {
        let file = golden(&format!("query_request_{name}.hex"), &wire::encode_request(q));
        let back = wire::decode_request(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(wire::encode_request(&back), file, "{name} does not decode to what it encodes");
    }
}

#[test]
fn query_results() {
    let labels = || Labels::from_pairs([("service_name", "app"), ("pod", "app-1")]);
    let results = [
        ("strings", QueryResult::Strings(vec!["".into(), "service_name".into()])),
        ("label_sets", QueryResult::LabelSets(vec![labels(), Labels::default()])),
        (
            "tree",
            QueryResult::Tree(FlameTree {
                names: vec!["total".into(), "main".into(), "work".into()],
                nodes: vec![(0, 0, 0), (0, 1, 10), (1, 2, -3)],
            }),
        ),
        (
            "pprof",
            QueryResult::Pprof(PprofPart {
                strings: vec!["".into(), "main".into(), "main.go".into(), "/bin/app".into()],
                functions: vec![Function { name: 1, system_name: 1, filename: 2, start_line: 7 }],
                mappings: vec![
                    Mapping::default(),
                    Mapping {
                        memory_start: 0x40_0000,
                        memory_limit: 0x80_0000,
                        file_offset: 0x1000,
                        filename: 3,
                        build_id: 0,
                        has_functions: true,
                        has_filenames: true,
                        has_line_numbers: false,
                        has_inline_frames: true,
                    },
                ],
                locations: vec![LocationRec {
                    mapping: 1,
                    address: 0x40_1234,
                    lines: vec![Line { function: 0, line: 12 }, Line { function: 0, line: 9 }].into(),
                }],
                samples: vec![(vec![0, 0], 1_000_000), (vec![], -1)],
            }),
        ),
        (
            "series",
            QueryResult::Series(vec![(
                labels(),
                vec![
                    (1_700_000_000_000, Bucket { sum: 2.5, count: 2 }),
                    (1_700_000_015_000, Bucket { sum: -0.0, count: 1 }),
                ],
            )]),
        ),
        ("stats", QueryResult::Stats { oldest_ms: -1, newest_ms: 1_700_000_000_000, ingested: true }),
        ("analyze", QueryResult::Analyze { series: 3, profiles: 300, samples: 1 << 40, bytes: u64::MAX }),
        (
            "keys",
            QueryResult::Keys {
                source: "ingester-1".into(),
                keys: vec![(7, vec![1_000, 2_000, 2_001]), (u64::MAX, vec![])],
                epoch: 9,
            },
        ),
        ("read", QueryResult::Read(vec!["01JREAD0000000000000000000".into(), String::new()])),
    ];
    for (name, r) in results {
        let parts = [r];
        let file = golden(&format!("query_result_{name}.hex"), &wire::encode_results(&parts));
        let back = wire::decode_results(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(wire::encode_results(&back), file, "{name} does not decode to what it encodes");
    }
}

#[test]
fn push_records() {
    // Every field of a profile set, one keyed group of two samples.
    let p = Profile {
        strings: ["", "cpu", "nanoseconds", "main", "main.go", "/bin/app", "abc123"].map(String::from).to_vec(),
        sample_types: vec![ValueType { r#type: 1, unit: 2 }],
        period_type: Some(ValueType { r#type: 1, unit: 2 }),
        period: 10_000_000,
        time_nanos: 1_700_000_000_123_456_789,
        duration_nanos: 10_000_000_000,
        mappings: vec![Mapping {
            memory_start: 0x40_0000,
            memory_limit: 0x80_0000,
            file_offset: 0,
            filename: 5,
            build_id: 6,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: false,
        }],
        functions: vec![Function { name: 3, system_name: 3, filename: 4, start_line: 1 }],
        locations: vec![Location { mapping: 1, address: 0x40_1000, lines: vec![Line { function: 0, line: 5 }] }],
        samples: vec![
            Sample { locations: vec![0], values: vec![20_000_000], span_id: 0 },
            Sample { locations: vec![0, 0], values: vec![-1], span_id: 0 },
        ],
        keys: Default::default(),
    };
    let groups = vec![SampleGroup {
        labels: Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "app")]),
        samples: vec![0, 1],
    }];
    let body = kiln::ingester::remote::encode("tenant-a", &[(Arc::new(p), groups)]);
    let file = golden("push_records.hex", &body);
    let (tenant, batch) = kiln::ingester::remote::decode_push(&bytes::Bytes::from(file.clone()))
        .unwrap_or_else(|e| panic!("{e:?}"))
        .expect("one record");
    let again = kiln::ingester::remote::encode(tenant.as_str(), &batch);
    assert_eq!(again, file, "the push does not decode to what it encodes");
}

#[test]
fn gossip_keys() {
    let d = InstanceDesc {
        id: "kiln-0-4040".into(),
        addr: "10.0.0.7:4040".into(),
        zone: "zone-a".into(),
        components: "distributor,ingester,querier".parse().unwrap(),
        state: State::Active,
        cores: 8,
        token_seed: kiln::cluster::entry::token_seed("kiln-0-4040"),
        heartbeat_ms: 0,
    };
    let keys = kiln::cluster::entry::own_keys(&d);
    let text: String = keys.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    // The keys are text: kept as text, one `key=value` a line.
    let path = dir().join("gossip_keys.txt");
    if bless() {
        std::fs::write(&path, &text).unwrap();
    }
    let want =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (KILN_BLESS=1 writes it)", path.display()));
    assert_eq!(text, want, "the gossiped keys changed (a protocol change: bless with KILN_BLESS=1 only if deliberate)");
    let parsed: std::collections::HashMap<&str, &str> = want.lines().filter_map(|l| l.split_once('=')).collect();
    let back = kiln::cluster::entry::decode(&d.id, |k| parsed.get(k).copied()).unwrap();
    assert_eq!(back, d);
}

#[test]
fn read_path_messages() {
    use kiln::query_scheduler::wire;
    use kiln::service::{Code, RpcError};
    let request = wire::encode_job(&wire::Job {
        query_id: 0x0123_4567_89ab_cdef,
        frontend: "127.0.0.1:4040".into(),
        tenant: "team-a|team-b".into(),
        request: bytes::Bytes::from(wire::encode_who("x", &[])),
    });
    let job = golden("read_path_job.hex", &request);
    let back = wire::decode_job(&bytes::Bytes::from(job.clone())).unwrap();
    assert_eq!(wire::encode_job(&back), job);
    let next = golden("read_path_next.hex", &wire::encode_next(Some(&back)));
    assert_eq!(wire::decode_next(&bytes::Bytes::from(next)).unwrap(), Some(back));
    let who = golden("read_path_cancel.hex", &wire::encode_who("127.0.0.1:4040", &[1, 300, u64::MAX]));
    assert_eq!(wire::decode_who(&who).unwrap(), ("127.0.0.1:4040".to_string(), vec![1, 300, u64::MAX]));
    let ok = golden("read_path_result_ok.hex", &wire::encode_result(7, &Ok(vec![1, 2, 3])));
    let (id, r) = wire::decode_result(&bytes::Bytes::from(ok)).unwrap();
    assert_eq!((id, r.unwrap().to_vec()), (7, vec![1, 2, 3]));
    let err = RpcError::new(Code::ResourceExhausted, "too many outstanding requests");
    let failed = golden("read_path_result_error.hex", &wire::encode_result(8, &Err(err)));
    let (id, r) = wire::decode_result(&bytes::Bytes::from(failed)).unwrap();
    let e = r.unwrap_err();
    assert_eq!((id, e.code, e.message.as_str()), (8, Code::ResourceExhausted, "too many outstanding requests"));
}
