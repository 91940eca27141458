//! Every decoder of untrusted bytes holds to its memory and allocation budget
//! (`kiln::budget::DECODERS`) on hostile inputs built to break it, and on every fixture.
//! The fuzz targets check the same budgets on what the fuzzer finds; this runs in CI.
mod common;

use common::hostile::*;
use common::*;
use kiln::budget::{self, CountingAlloc};
use kiln_proto::push::v1::{PushRequest, RawProfileSeries, RawSample};
use kiln_proto::types::v1::LabelPair;
use prost::Message;

#[global_allocator]
static ALLOC: CountingAlloc<std::alloc::System> = CountingAlloc(std::alloc::System);

/// Checks `decoder` on each input; returns the largest ratio of peak bytes to input bytes,
/// for the report.
fn holds(decoder: &str, inputs: &[(&str, Vec<u8>)]) {
    assert!(budget::counting(), "the counting allocator is not installed");
    let d = budget::decoder(decoder);
    for (what, input) in inputs {
        match budget::check(d, input) {
            Ok(u) => eprintln!(
                "{decoder} {what}: {} bytes in, {} peak, {} allocations",
                input.len(),
                u.peak_bytes,
                u.allocations
            ),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    files_under("pprof")
        .into_iter()
        .map(|p| {
            let raw = std::fs::read(&p).unwrap();
            let bytes = kiln_io::compress::maybe_gunzip(&raw, 1 << 30).map_or(raw.clone(), |b| b.into_owned());
            (p.display().to_string(), bytes)
        })
        .collect()
}

#[test]
fn gzip_bombs() {
    let zeros = |n: usize| gzip(&vec![0u8; n]);
    holds(
        "gzip",
        &[
            ("64 MiB of zeros", zeros(64 << 20)),
            ("just under the limit", zeros(budget::limits::INFLATE)),
            ("many members", zeros(budget::limits::INFLATE / 4).repeat(40)),
            ("truncated", zeros(4 << 20)[..1000].to_vec()),
        ],
    );
}

#[test]
fn pprofs() {
    let mut inputs: Vec<(&str, Vec<u8>)> = vec![
        ("empty samples", profile_of_empty_records(2, 200_000)),
        ("empty mappings", profile_of_empty_records(3, 200_000)),
        ("empty locations", profile_of_empty_records(4, 200_000)),
        ("empty functions", profile_of_empty_records(5, 200_000)),
        ("empty strings", profile_of_empty_records(6, 200_000)),
        ("empty records then garbage", [profile_of_empty_records(3, 200_000), vec![0x0b, 0x0c]].concat()),
        ("one Go generic name shared by 40000 functions", go_generic_profile(40_000, 60_000)),
        ("a pyspy profile without its spy", spy_profile(40_000, 60_000)),
    ];
    // The Go stack repair appends 440 frames to each of these samples (as Pyroscope does).
    let chain = go_repair_chain_profile(15_900);
    let limits = kiln::distributor::pprof::PprofLimits { max_samples: budget::limits::SAMPLES };
    let repaired = kiln::distributor::pprof::decode_and_normalize(&chain, limits).unwrap();
    let deepest = repaired.profile.samples.iter().map(|s| s.locations.len()).max().unwrap();
    assert!(deepest >= 464, "the repair appended nothing: deepest stack {deepest}");
    inputs.push(("Go stacks the repair extends", chain));
    let fixtures = fixtures();
    inputs.extend(fixtures.iter().map(|(n, b)| (n.as_str(), b.clone())));
    holds("pprof", &inputs);
}

#[test]
fn spy_name_rewrite() {
    let mut distinct = spy_profile(1, 60_000);
    // 20000 functions, each a distinct (file, name) pair: the derived names hit the budget.
    let mut p = kiln_proto::kiln::v1::ProfileInput::decode(&distinct[..]).unwrap();
    p.string_table.extend((0..20_000).map(|i| format!("f{i}").into_bytes()));
    p.function = (0..20_000)
        .map(|i| kiln_proto::google::v1::Function { id: i + 1, name: 5 + i as i64, filename: 3, ..Default::default() })
        .collect();
    distinct = p.encode_to_vec();
    let mut inputs: Vec<(&str, Vec<u8>)> = vec![
        ("40000 functions sharing a long file and name", spy_profile(40_000, 60_000)),
        ("20000 distinct pairs with a long file name", distinct),
    ];
    let fixtures = fixtures();
    inputs.extend(fixtures.iter().map(|(n, b)| (n.as_str(), b.clone())));
    holds("pprof_spy", &inputs);
}

#[test]
fn multipart_bodies() {
    let with_boundary = |b: &[u8], body: Vec<u8>| [vec![b.len() as u8], b.to_vec(), body].concat();
    let part = b"--b\r\nContent-Disposition: form-data; name=\"p\"\r\n\r\nx\r\n".to_vec();
    holds(
        "multipart",
        &[
            ("100000 tiny parts", with_boundary(b"b", [part.repeat(100_000), b"--b--\r\n".to_vec()].concat())),
            ("a boundary that never ends", with_boundary(&[b'-'; 70], vec![b'-'; 1 << 20])),
            ("headers without end", with_boundary(b"b", [b"--b\r\n".to_vec(), b"h: v\r\n".repeat(100_000)].concat())),
            ("boundary over 70", with_boundary(&[b'x'; 200], vec![b'x'; 100_000])),
        ],
    );
}

#[test]
fn folded_and_lines() {
    let distinct: String = (0..100_000).map(|i| format!("{i:x};")).collect::<String>() + " 1\n";
    let lines: String = (0..100_000).map(|i| format!("a;{i:x}\n")).collect();
    holds(
        "folded",
        &[
            ("100000 distinct frames in one stack", distinct.into_bytes()),
            ("100000 short lines", lines.into_bytes()),
            ("deep stack of one frame", ("a;".repeat(200_000) + " 5\n").into_bytes()),
            ("empty lines", "\n".repeat(300_000).into_bytes()),
        ],
    );
}

#[test]
fn rpc_messages() {
    let frame = |gz: bool, msg: Vec<u8>| {
        let payload = if gz { gzip(&msg) } else { msg };
        [vec![u8::from(gz)], (payload.len() as u32).to_be_bytes().to_vec(), payload].concat()
    };
    let empty_series = empty_records(1, 500_000);
    let labels = PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![LabelPair::default(); 100_000],
            samples: vec![RawSample::default()],
            annotations: vec![],
        }],
    }
    .encode_to_vec();
    holds(
        "rpc",
        &[
            ("gzip bomb", frame(true, vec![0; 64 << 20])),
            ("empty series, gzipped", frame(true, empty_series.clone())),
            ("empty series", frame(false, empty_series[..400_000].to_vec())),
            ("empty labels", frame(false, labels)),
        ],
    );
}

#[test]
fn wal_payloads() {
    let mut inputs = Vec::new();
    for (name, bytes) in fixtures() {
        let Ok(d) = kiln::distributor::pprof::decode_and_normalize(
            &bytes,
            kiln::distributor::pprof::PprofLimits { max_samples: 0 },
        ) else {
            continue;
        };
        let groups: Vec<kiln_shards::model::profile::SampleGroup> = d
            .groups
            .into_iter()
            .map(|(labels, samples)| kiln_shards::model::profile::SampleGroup { labels, samples })
            .collect();
        let entry = kiln_shards::ingester::walcodec::encode("t", &d.profile, &groups);
        inputs.push((format!("{name} truncated"), entry[..entry.len() / 2].to_vec()));
        inputs.push((name, entry));
    }
    let inputs: Vec<(&str, Vec<u8>)> = inputs.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    holds("wal_payload", &inputs);
}

/// 300000 empty strings, counted.
fn empty_strings(w: &mut kiln_io::codec::Writer) {
    w.u(300_000);
    (0..300_000).for_each(|_| w.str(""));
}

/// The query wire's version byte: the messages below are built by hand, each behind it.
const QUERY_WIRE_VERSION: u8 = kiln_shards::query::wire::VERSION;

/// Key filters of a request's selection that cost most per byte: many series keys, many
/// sources, many timestamps of one key.
fn key_filters() -> Vec<(&'static str, Vec<u8>)> {
    use kiln_io::codec::Writer;
    // A key filter of one source, the empty name, and `count` series that `series` writes.
    let one_source = |count: u64, series: &dyn Fn(&mut Writer)| {
        let mut w = Writer::with_capacity(1 << 20);
        w.0.extend_from_slice(&[1, 1, 0]);
        w.u(count);
        series(&mut w);
        w.0
    };
    let mut sources = Writer::with_capacity(1 << 20);
    sources.byte(1);
    sources.u(60_000);
    for i in 0..60_000u32 {
        sources.str(&format!("{i:04x}"));
        sources.u(0);
    }
    vec![
        (
            "40000 series keys",
            one_source(40_000, &|w| {
                (0..40_000u64).for_each(|k| {
                    w.u64_le(k);
                    w.byte(0);
                })
            }),
        ),
        ("60000 sources, each a distinct short name without series", sources.0),
        (
            "300000 timestamps of one key",
            one_source(1, &|w| {
                w.u64_le(7);
                w.byte(1);
                w.u(300_000);
                (0..300_000).for_each(|_| w.i(1));
            }),
        ),
    ]
}

/// Query requests and partial results between instances (`kiln_shards::query::wire`): the
/// shapes that cost most per byte, each as large as a message may reasonably be.
#[test]
fn query_wire_requests() {
    use kiln_io::codec::Writer;
    // A request of `kind`, its selection written by `sel`, then `rest`.
    let request = |kind: u8, sel: &dyn Fn(&mut Writer), rest: &dyn Fn(&mut Writer)| {
        let mut w = Writer::with_capacity(1 << 20);
        w.byte(QUERY_WIRE_VERSION);
        w.byte(kind);
        sel(&mut w);
        rest(&mut w);
        w.0
    };
    // A selection: tenants, profile type, matchers, range, then the key filter's bytes.
    let selection = |tenants: usize, matchers: &[(u8, &str)], keys: &dyn Fn(&mut Writer)| {
        let mut w = Writer::with_capacity(1 << 20);
        w.u(tenants as u64);
        (0..tenants).for_each(|_| w.str("a"));
        w.str("");
        w.u(matchers.len() as u64);
        for (op, value) in matchers {
            w.str("");
            w.byte(*op);
            w.str(value);
        }
        w.i(0);
        w.i(1);
        keys(&mut w);
        w.0
    };
    let no_keys = |w: &mut Writer| w.byte(0);
    let with = |bytes: Vec<u8>| move |w: &mut Writer| w.0.extend_from_slice(&bytes);
    let nothing = |_: &mut Writer| {};
    let equal = vec![(0u8, ""); 100_000];
    let regexes = vec![(2u8, ""); 200];
    // The longest `\w{k}` that still compiles within the size limit, as many times as a
    // selector may hold regexes: the most a selection's patterns can cost.
    let compiles = |k: usize| {
        use kiln_shards::model::selector::{MatchOp, Matcher};
        Matcher::new("", MatchOp::Regex, format!("\\w{{{k}}}")).is_ok()
    };
    // Bisected (a compile takes a while unoptimised): `lo` compiles, `hi` does not.
    let (mut lo, mut hi) = (1, 1000);
    assert!(compiles(lo) && !compiles(hi));
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        *(if compiles(mid) { &mut lo } else { &mut hi }) = mid;
    }
    let k = lo;
    let largest = format!("\\w{{{k}}}");
    let largest = vec![(2u8, largest.as_str()); kiln_shards::model::selector::MAX_REGEX_MATCHERS];
    let mut inputs = vec![
        ("100000 tenants", request(0, &|w| w.0.extend(selection(100_000, &[], &no_keys)), &nothing)),
        ("100000 empty equality matchers", request(0, &|w| w.0.extend(selection(0, &equal, &no_keys)), &nothing)),
        ("200 empty regex matchers", request(4, &|w| w.0.extend(selection(0, &regexes, &no_keys)), &nothing)),
        (
            "as many regexes as may be, each as large as may be",
            request(4, &|w| w.0.extend(selection(0, &largest, &no_keys)), &nothing),
        ),
        (
            "a regex over the compiled size limit",
            request(4, &|w| w.0.extend(selection(0, &[(2, r"(\w{100}){100}")], &no_keys)), &nothing),
        ),
        ("300000 label names", request(3, &|w| w.0.extend(selection(0, &[], &no_keys)), &empty_strings)),
        (
            "a count of 2^40 group-by names",
            request(
                6,
                &|w| w.0.extend(selection(0, &[], &no_keys)),
                &with([0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20].to_vec()),
            ),
        ),
    ];
    for (what, keys) in key_filters() {
        inputs.push((what, request(4, &|w| w.0.extend(selection(0, &[], &with(keys.clone()))), &nothing)));
    }
    holds("query_wire", &inputs);
}

/// Partials: `n` results, each written by `one`.
fn results(n: usize, one: &dyn Fn(&mut kiln_io::codec::Writer)) -> Vec<u8> {
    let mut w = kiln_io::codec::Writer::with_capacity(1 << 20);
    w.byte(QUERY_WIRE_VERSION);
    w.u(n as u64);
    (0..n).for_each(|_| one(&mut w));
    w.0
}

/// Partial results between instances (`kiln_shards::query::wire::decode_results`), under the
/// same budget as requests (one decoder runs both).
#[test]
fn query_wire_results() {
    use kiln_io::codec::Writer;
    // One result: its tag and what comes before its count (`head`), then `count` items.
    let big = |head: &[u8], count: usize, item: &dyn Fn(&mut Writer)| {
        results(1, &|w| {
            w.0.extend_from_slice(head);
            w.u(count as u64);
            (0..count).for_each(|_| item(w));
        })
    };
    holds(
        "query_wire",
        &[
            (
                "300000 empty string partials",
                results(300_000, &|w| {
                    w.byte(0);
                    w.u(0);
                }),
            ),
            (
                "300000 empty strings",
                results(1, &|w| {
                    w.byte(0);
                    empty_strings(w);
                }),
            ),
            ("300000 empty label sets", big(&[1], 300_000, &|w| w.u(0))),
            (
                "200000 flame tree nodes",
                results(1, &|w| {
                    w.byte(2);
                    w.u(1);
                    w.str("");
                    w.u(200_000);
                    (0..200_000).for_each(|_| {
                        w.u(0);
                        w.u(0);
                        w.i(0);
                    });
                }),
            ),
            (
                "200000 empty series",
                big(&[4], 200_000, &|w| {
                    w.u(0);
                    w.u(0);
                }),
            ),
            (
                // Keys of one source whose name is empty (its length, 0).
                "100000 keys without timestamps",
                big(&[7, 0], 100_000, &|w| {
                    w.u64_le(1);
                    w.u(0);
                }),
            ),
            (
                "a pprof of 150000 empty samples",
                results(1, &|w| {
                    w.byte(3);
                    (0..3).for_each(|_| w.u(0));
                    w.u(1);
                    w.u(0);
                    w.u(0);
                    w.u(0);
                    w.u(150_000);
                    (0..150_000).for_each(|_| {
                        w.u(0);
                        w.i(0);
                    });
                }),
            ),
            (
                "a pprof of 100000 empty locations",
                results(1, &|w| {
                    w.byte(3);
                    (0..2).for_each(|_| w.u(0));
                    w.u(1);
                    (0..5).for_each(|_| w.u(0));
                    w.byte(0);
                    w.u(100_000);
                    (0..100_000).for_each(|_| {
                        w.u(0);
                        w.u(0);
                        w.u(0);
                    });
                    w.u(0);
                }),
            ),
            (
                "100000 empty pprof partials",
                results(100_000, &|w| {
                    w.byte(3);
                    (0..5).for_each(|_| w.u(0));
                }),
            ),
        ],
    );
}

/// A replica's push (`kiln::ingester::remote::decode_push`): the message, each WAL record and
/// `Profile::check`, on pushes of many small things.
#[test]
fn replica_pushes() {
    use kiln_io::codec::Writer;
    use kiln_shards::ingester::walcodec;
    use kiln_shards::model::profile::{Profile, Sample, SampleGroup};
    let push = |records: Vec<Vec<u8>>| {
        kiln::ingester::remote::PushRecords { records: records.into_iter().map(bytes::Bytes::from).collect() }
            .encode_to_vec()
    };
    // A record's fixed part: tenant "t", no strings, `types` sample types of string 0, no
    // period type, times, no mappings; then `rest` writes functions, locations and groups.
    let record = |types: usize, rest: &dyn Fn(&mut Writer)| {
        let mut w = Writer::with_capacity(1 << 20);
        w.byte(1);
        w.str("t");
        w.u(1);
        w.str("");
        w.u(types as u64);
        (0..types).for_each(|_| {
            w.u(0);
            w.u(0);
        });
        (0..4).for_each(|_| w.u(0));
        w.u(0);
        rest(&mut w);
        w.0
    };
    let empty_profile = |w: &mut Writer| (0..3).for_each(|_| w.u(0));
    // A count, then `n` items.
    fn many(w: &mut Writer, n: usize, each: &dyn Fn(&mut Writer)) {
        w.u(n as u64);
        (0..n).for_each(|_| each(w));
    }
    let empty_groups = |w: &mut Writer| {
        w.u(0);
        w.u(0);
        many(w, 300_000, &|w| {
            w.u(0);
            w.u(0);
        });
    };
    let empty_samples = |w: &mut Writer| {
        w.u(0);
        w.u(0);
        w.u(1);
        w.u(0);
        many(w, 300_000, &|w| w.u(0));
    };
    // One location, one group, one sample whose stack is that location 600000 times.
    let deep_stack = |w: &mut Writer| {
        w.u(0);
        w.u(1);
        (0..3).for_each(|_| w.u(0));
        w.u(1);
        w.u(0);
        w.u(1);
        many(w, 600_000, &|w| w.u(0));
        w.i(5);
    };
    let empty_locations = |w: &mut Writer| {
        w.u(0);
        many(w, 200_000, &|w| (0..3).for_each(|_| w.u(0)));
        w.u(0);
    };
    // A record kiln itself would send, for scale.
    let real = {
        let p = Profile {
            strings: vec!["".into(), "cpu".into()],
            sample_types: vec![Default::default()],
            samples: vec![Sample { locations: vec![], values: vec![5], span_id: 0 }],
            ..Default::default()
        };
        let groups = vec![SampleGroup { labels: Default::default(), samples: vec![0] }];
        walcodec::encode("t", &p, &groups)
    };
    holds(
        "replica_push",
        &[
            ("300000 empty records", push(vec![Vec::new(); 300_000])),
            ("50000 empty profiles", push(vec![record(0, &empty_profile); 50_000])),
            ("30000 one-sample profiles", push(vec![real; 30_000])),
            ("300000 empty groups", push(vec![record(0, &empty_groups)])),
            ("300000 samples without locations or values", push(vec![record(0, &empty_samples)])),
            (
                "100000 samples with 8 values each",
                push(vec![record(8, &|w| {
                    w.u(0);
                    w.u(0);
                    w.u(1);
                    w.u(0);
                    many(w, 100_000, &|w| {
                        w.u(0);
                        (0..8).for_each(|_| w.i(0));
                    });
                })]),
            ),
            ("a stack of 600000 frames", push(vec![record(1, &deep_stack)])),
            ("200000 empty locations", push(vec![record(0, &empty_locations)])),
            ("a record count of 2^40", push(vec![vec![1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20]])),
        ],
    );
}

/// The read path's internal messages (`kiln::query_scheduler::wire`): a cancellation of many
/// IDs, a job or a result carrying a large query, strings at and past their bounds.
#[test]
fn read_path_messages() {
    use kiln::query_scheduler::wire;
    use kiln_io::codec::Writer;
    let ids = |n: u64| {
        let mut w = Writer::with_capacity(1 << 20);
        w.byte(1);
        w.str("querier-1");
        w.u(n);
        (0..n).for_each(|i| w.u(i));
        w.0
    };
    let job = |request: usize, tenant: usize| {
        wire::encode_job(&wire::Job {
            query_id: 1,
            frontend: "127.0.0.1:4040".into(),
            tenant: "t".repeat(tenant),
            request: bytes::Bytes::from(vec![0u8; request]),
        })
    };
    holds(
        "read_path_wire",
        &[
            ("65536 query IDs", ids(65_536)),
            ("a count of 2^40 IDs", ids(0).into_iter().take(11).chain([0x80, 0x80, 0x80, 0x80, 0x80, 0x20]).collect()),
            ("a job of a 1 MiB query", job(1 << 20, 1)),
            ("a tenant past its bound", job(0, wire::MAX_TENANT_BYTES + 1)),
            ("a result of 1 MiB", wire::encode_result(1, &Ok(vec![0u8; 1 << 20]))),
        ],
    );
}

/// Ad hoc profile files (`kiln::ad_hoc_profiles::parse`, which sniffs the format): deep and
/// wide folded text, a flamebearer JSON of many nodes, every pprof fixture; and Connect GET
/// query strings, which the same decoder reads.
#[test]
fn ad_hoc_files() {
    let distinct: String = (0..100_000).map(|i| format!("{i:x};")).collect::<String>() + " 1\n";
    let wide: String = (0..100_000).map(|i| format!("a;{i:x} 1\n")).collect();
    let levels: Vec<String> = (0..20_000).map(|i| format!("[0,1,1,{}]", i % 2)).collect();
    let json = format!(r#"{{"flamebearer":{{"names":["total","a"],"levels":[{}]}}}}"#, levels.join(","));
    let get = format!("encoding=json&message={}", "%41".repeat(300_000));
    let mut inputs: Vec<(&str, Vec<u8>)> = vec![
        ("100000 distinct frames in one folded stack", distinct.into_bytes()),
        ("100000 folded stacks", wide.into_bytes()),
        ("a flamebearer 20000 levels deep", json.into_bytes()),
        ("a Connect GET of 300000 escapes", get.into_bytes()),
        ("Go stacks the repair extends", go_repair_chain_profile(15_900)),
    ];
    let fixtures = fixtures();
    inputs.extend(fixtures.iter().map(|(n, b)| (n.as_str(), b.clone())));
    holds("ad_hoc", &inputs);
}

/// JFR recordings, gzipped or not (as `/ingest` parts), built to multiply what conversion
/// builds, to loop, or to lie about their sizes; every fixture, whole and cut short. The
/// same recordings uncompressed as ad hoc uploads (told apart by their magic).
#[test]
fn jfr_recordings() {
    use common::jfr as w;
    let mut inputs: Vec<(String, Vec<u8>)> = vec![
        (
            "a long class name shared by 20000 methods".into(),
            w::recording(&"C".repeat(60_000), 20_000, 20_000, 1, false),
        ),
        ("a 100000-frame stack in 50000 contexts".into(), w::recording("C", 10, 100_000, 50_000, true)),
        ("80000 samples of one stack".into(), w::recording("C", 10, 64, 80_000, true)),
        ("a looping constant pool chain".into(), w::looping_chain()),
        ("a pool declaring 2^40 stack traces".into(), w::huge_count()),
        ("metadata 100000 elements deep".into(), w::deep_metadata()),
    ];
    for path in files_under("jfr/jfr-parser") {
        let gz = std::fs::read(&path).unwrap();
        let raw = gunzip_maybe(&gz);
        let name = path.display().to_string();
        for cut in [raw.len() / 3, raw.len() / 2, raw.len().saturating_sub(1)] {
            inputs.push((format!("{name} cut at {cut}"), raw[..cut].to_vec()));
        }
        inputs.push((format!("{name} uncompressed"), raw));
        inputs.push((name, gz));
    }
    let inputs: Vec<(&str, Vec<u8>)> = inputs.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    holds("jfr", &inputs);
    let raw: Vec<(&str, Vec<u8>)> =
        inputs.into_iter().filter(|(_, b)| b.starts_with(b"FLR\0") && b.len() <= budget::limits::INFLATE).collect();
    assert!(raw.len() > 10, "{} raw recordings", raw.len());
    holds("ad_hoc", &raw);
}

/// A trie or tree node: uvarint name length, name, uvarint value, uvarint children.
fn trie_node(w: &mut kiln_io::codec::Writer, name: &str, value: u64, children: u64) {
    w.str(name);
    w.u(value);
    w.u(children);
}

#[test]
fn tries_and_trees() {
    use kiln_io::codec::Writer;
    let chain = |n: u64, name: &str| {
        let mut w = Writer::default();
        for i in 0..n {
            trie_node(&mut w, name, 1, u64::from(i + 1 < n));
        }
        w.0
    };
    let wide = {
        let mut w = Writer::default();
        trie_node(&mut w, "", 0, 100_000);
        for i in 0..100_000 {
            trie_node(&mut w, &format!("{i:x}"), 1, 0);
        }
        w.0
    };
    let mut bomb = Writer::default();
    trie_node(&mut bomb, "", 0, u64::MAX >> 1);
    holds(
        "trie",
        &[
            ("a chain of 100000 weighed nodes (quadratic keys)", chain(100_000, "a")),
            ("a chain of 100000 empty names", chain(100_000, "")),
            ("100000 short distinct leaves", wide),
            ("a child count past the body", bomb.0),
        ],
    );
}

#[test]
fn speedscope_files() {
    let head = r#"{"$schema":"https://www.speedscope.app/file-format-schema.json","shared":{"frames":[{"name":"a"},{"name":"b"}]},"profiles":["#;
    let sampled = |samples: &str, weights: &str| {
        format!(r#"{head}{{"type":"sampled","name":"p","unit":"none","startValue":0,"samples":[{samples}],"weights":[{weights}]}}]}}"#)
            .into_bytes()
    };
    let n = 200_000;
    let deep_events = {
        let opens: Vec<String> = (0..n / 2).map(|i| format!(r#"{{"type":"O","at":{i},"frame":0}}"#)).collect();
        let closes: Vec<String> = (0..n / 2).map(|_| r#"{"type":"C","at":1e9,"frame":0}"#.to_string()).collect();
        format!(
            r#"{head}{{"type":"evented","name":"p","unit":"none","startValue":0,"events":[{}]}}]}}"#,
            [opens, closes].concat().join(",")
        )
        .into_bytes()
    };
    let frames: Vec<String> = (0..n).map(|i| format!(r#"{{"name":"{i:x}"}}"#)).collect();
    let many_frames = format!(
        r#"{{"$schema":"https://www.speedscope.app/file-format-schema.json","shared":{{"frames":[{}]}},"profiles":[{{"type":"sampled","name":"p","unit":"none","samples":[[{}]],"weights":[1]}}]}}"#,
        frames.join(","),
        (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    )
    .into_bytes();
    let profiles: Vec<String> = (0..1024)
        .map(|i| format!(r#"{{"type":"sampled","name":"{i}","unit":"none","samples":[[0]],"weights":[1]}}"#))
        .collect();
    holds(
        "speedscope",
        &[
            ("200000 empty samples", sampled(&vec!["[]"; n].join(","), &vec!["1"; n].join(","))),
            ("200000 one-frame samples", sampled(&vec!["[0]"; n].join(","), &vec!["1"; n].join(","))),
            ("one sample 200000 frames deep", sampled(&format!("[{}]", vec!["0"; n].join(",")), "1")),
            ("events 100000 frames deep (quadratic paths)", deep_events),
            ("200000 distinct frames", many_frames),
            ("1024 profiles", format!("{head}{}]}}", profiles.join(",")).into_bytes()),
        ],
    );
}

#[test]
fn otlp_requests() {
    use kiln_proto::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
    use kiln_proto::opentelemetry::proto::common::v1::{any_value::Value, AnyValue};
    use kiln_proto::opentelemetry::proto::profiles::v1development as p;
    let fixture = |n: &str| std::fs::read(testdata(&format!("otlp/{n}"))).unwrap();
    let dict = |n: usize| p::ProfilesDictionary {
        string_table: vec!["".into(), "samples".into(), "count".into(), "service.name".into()],
        location_table: vec![Default::default(), Default::default()],
        stack_table: vec![Default::default(), p::Stack { location_indices: vec![1; n] }],
        attribute_table: (0..10_000)
            .map(|i| p::KeyValueAndUnit {
                key_strindex: 3,
                value: Some(AnyValue { value: Some(Value::StringValue(format!("{i:x}"))) }),
                unit_strindex: 0,
            })
            .collect(),
        ..Default::default()
    };
    let request = |dictionary: p::ProfilesDictionary, samples: Vec<p::Sample>| {
        ExportProfilesServiceRequest {
            resource_profiles: vec![p::ResourceProfiles {
                scope_profiles: vec![p::ScopeProfiles {
                    profiles: vec![p::Profile {
                        sample_type: Some(p::ValueType { type_strindex: 1, unit_strindex: 2 }),
                        samples,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            dictionary: Some(dictionary),
        }
        .encode_to_vec()
    };
    let sample =
        |attr: i32| p::Sample { stack_index: 1, attribute_indices: vec![attr], values: vec![1], ..Default::default() };
    holds(
        "otlp",
        &[
            ("the eBPF fixture", fixture("otel-ebpf-profile.pb.bin")),
            ("the eBPF fixture as JSON", fixture("otel-ebpf-profile.pb.json")),
            ("10000 samples of a 1000-frame stack", request(dict(1000), (0..10_000).map(|_| sample(0)).collect())),
            ("10000 services of one sample each", request(dict(1), (0..10_000).map(sample).collect())),
            (
                "500000 empty locations",
                request(
                    p::ProfilesDictionary { location_table: vec![Default::default(); 500_000], ..Default::default() },
                    vec![],
                ),
            ),
            ("empty JSON objects", format!(r#"{{"resourceProfiles":[{}{{}}]}}"#, "{},".repeat(200_000)).into_bytes()),
        ],
    );
}
