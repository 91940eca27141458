//! Micro-benchmarks of kiln's hot paths. Run: `cargo bench --bench hot_paths`.
//! Figures and the machine they were taken on are in perf/RESULTS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use kiln::distributor::pprof;
use kiln::querier::tree::Tree;
use kiln_shards::ingester::head::TenantHead;
use kiln_shards::model::labels::Labels;
use kiln_shards::model::profile::{Function, Line, Location, Profile, Sample, SampleGroup, ValueType};
use kiln_shards::query::{QueryRequest, QueryResult, Selection};
use kiln_shards::ring::Ring;
use prost::Message;
use std::hint::black_box;
use std::time::Duration;

/// The profiles `append` measures.
const FIXTURES: &[&str] = &[
    "pprof/pyroscope/pkg-pprof/go.cpu.labels.pprof",
    "pprof/pyroscope/pkg-pprof/heap",
    "pprof/pyroscope/pkg-pprof/profile_java",
    "pprof/google-pprof/large.cpu",
];

/// One file per class of the test data for `decode`: Go CPU and heap (with and without
/// the truncated-stack repair: `heap`, `large.cpu` and the `*_go_truncated_*` files go
/// through it), Java, Python, Node, Rust, .NET.
const DECODE_FIXTURES: &[&str] = &[
    "pprof/pyroscope-og-v0.37.2/cpu-big.pprof",
    "pprof/pyroscope/pkg-pprof/go.cpu.labels.pprof",
    "pprof/pyroscope/pkg-pprof/cpu_go_truncated_1.pb.gz",
    "pprof/pyroscope/pkg-pprof/heap",
    "pprof/pyroscope/pkg-pprof/heap_go_truncated_4.pb.gz",
    "pprof/google-pprof/large.cpu",
    "pprof/pyroscope/pkg-pprof/profile_java",
    "pprof/pyroscope/pkg-pprof/profile_python",
    "pprof/pyroscope/pkg-pprof/profile_nodejs",
    "pprof/pyroscope/pkg-pprof/profile_rust",
    "pprof/pyroscope/pkg-pprof/dotnet.labels.pprof",
];

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn short(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap()
}

fn limits() -> pprof::PprofLimits {
    pprof::PprofLimits { max_samples: 0 }
}

/// An eBPF-style profile, as Grafana Alloy's `pyroscope.ebpf` and other whole-host profilers
/// send them (the test data hold none as pprof): native frames only, each location an
/// address in one of a few dozen mappings with one symbolised line and no line number;
/// stacks 32–128 frames deep, walked down a call tree from a handful of roots so that they
/// share prefixes and part in many places; one CPU value per sample, no labels. Seeded, so
/// every run decodes the same bytes; gzipped as the agents send it.
fn ebpf_deep_stacks() -> Vec<u8> {
    use kiln_proto::google::v1 as pb;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut strings: Vec<String> = ["", "cpu", "nanoseconds", "samples", "count"].map(String::from).to_vec();
    let mut string = |s: String| {
        strings.push(s);
        strings.len() as i64 - 1
    };
    let mappings: Vec<pb::Mapping> = (0..40u64)
        .map(|m| pb::Mapping {
            id: m + 1,
            memory_start: 0x5555_0000_0000 + (m << 28),
            memory_limit: 0x5555_0000_0000 + (m << 28) + (1 << 24),
            filename: string(format!("/usr/lib/x86_64-linux-gnu/lib{m}.so.{}", m % 7)),
            build_id: string(format!("{:040x}", m.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
            has_functions: true,
            ..Default::default()
        })
        .collect();
    let (nfunc, nloc) = (6000u64, 9000u64);
    let functions: Vec<pb::Function> = (0..nfunc)
        .map(|f| {
            let name = match f % 5 {
                0 => format!("_ZN4core3ptr{f}drop_in_place17h{:016x}E", f * 31),
                1 => format!("[k] __x64_sys_call_{f}"),
                _ => format!("lib_internal_routine_{f}"),
            };
            pb::Function { id: f + 1, name: string(name), ..Default::default() }
        })
        .collect();
    let locations: Vec<pb::Location> = (0..nloc)
        .map(|l| {
            let m = &mappings[(l % 40) as usize];
            pb::Location {
                id: l + 1,
                mapping_id: m.id,
                address: m.memory_start + 0x1000 + l * 0x37,
                line: vec![pb::Line { function_id: l % nfunc + 1, ..Default::default() }],
                ..Default::default()
            }
        })
        .collect();
    // A location's k-th callee, the same in every stack: a call tree over the locations.
    let callee =
        |l: u64, k: u64| (l.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k.wrapping_mul(0xbf58_476d_1ce4_e5b9)) % nloc;
    let samples: Vec<pb::Sample> = (0..3000)
        .map(|_| {
            let depth = 32 + next() % 97;
            let mut at = next() % 6;
            let mut stack = Vec::with_capacity(depth as usize);
            for _ in 0..depth {
                stack.push(at + 1);
                // Mostly the first callee: hot paths shared by many stacks.
                let r = next() % 16;
                at = callee(at, if r < 11 { 0 } else { r % 4 });
            }
            stack.reverse();
            pb::Sample { location_id: stack, value: vec![10_101_010 * (1 + next() as i64 % 4)], ..Default::default() }
        })
        .collect();
    let cpu = pb::ValueType { r#type: 1, unit: 2 };
    let p = pb::Profile {
        sample_type: vec![cpu],
        sample: samples,
        mapping: mappings,
        location: locations,
        function: functions,
        string_table: strings,
        time_nanos: 1_700_000_000_000_000_000,
        duration_nanos: 15_000_000_000,
        period_type: Some(cpu),
        period: 10_101_010,
        ..Default::default()
    };
    kiln_io::compress::gzip(&p.encode_to_vec())
}

/// The accepting core's work per profile (inflate, decode, validate, normalise) next to the
/// bound: inflate alone, and inflate plus a plain protobuf decode.
fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let files = DECODE_FIXTURES.iter().map(|rel| (short(rel), fixture(rel)));
    for (name, gz) in files.chain([("ebpf_deep_stacks_synthetic", ebpf_deep_stacks())]) {
        g.throughput(Throughput::Bytes(gz.len() as u64));
        g.bench_with_input(BenchmarkId::new("inflate", name), &gz, |b, gz| {
            b.iter(|| kiln_io::compress::maybe_gunzip(gz, 64 << 20).unwrap().len())
        });
        g.bench_with_input(BenchmarkId::new("inflate+prost", name), &gz, |b, gz| {
            b.iter(|| {
                let raw = kiln_io::compress::maybe_gunzip(gz, 64 << 20).unwrap();
                kiln_proto::google::v1::Profile::decode(&*raw).unwrap().sample.len()
            })
        });
        g.bench_with_input(BenchmarkId::new("kiln", name), &gz, |b, gz| {
            b.iter(|| {
                let raw = kiln_io::compress::maybe_gunzip(gz, 64 << 20).unwrap();
                let p = pprof::decode_and_normalize(&raw, limits()).unwrap();
                p.profile.samples.len()
            })
        });
    }
    g.finish();
}

/// JFR recordings of each source (JDK, async-profiler, the Datadog tracer) and size.
const JFR_FIXTURES: &[&str] = &[
    "jfr/jfr-parser/cortex-dev-01__kafka-0__cpu__0.jfr.gz",
    "jfr/jfr-parser/cortex-dev-01__kafka-0__cpu_lock0_alloc0__0.jfr.gz",
    "jfr/jfr-parser/dump2.jfr.gz",
    "jfr/jfr-parser/async-profiler.jfr.gz",
    "jfr/jfr-parser/dd-trace-java.jfr.gz",
    "jfr/jfr-parser/object-allocation-sample.jfr.gz",
    "jfr/jfr-parser/FastSlow_2024_01_16_180855.jfr.gz",
];

/// `/ingest?format=jfr`'s work per recording next to `decode`'s per pprof: inflate and
/// convert to every profile (`kiln`, per gzip byte as sent, comparable with `decode/kiln`),
/// and conversion alone (`convert`, per uncompressed byte).
fn jfr(c: &mut Criterion) {
    use kiln::distributor::jfr;
    let opts = jfr::Options { time_nanos: 1, duration_nanos: 0, sample_rate: 100, max_bytes: 0, max_samples: 0 };
    let snapshot = jfr::LabelsSnapshot::default();
    let mut g = c.benchmark_group("jfr");
    for rel in JFR_FIXTURES {
        let gz = fixture(rel);
        g.throughput(Throughput::Bytes(gz.len() as u64));
        g.bench_with_input(BenchmarkId::new("kiln", short(rel)), &gz, |b, gz| {
            b.iter(|| {
                let raw = kiln_io::compress::maybe_gunzip(gz, 64 << 20).unwrap();
                jfr::convert(&raw, &snapshot, opts).unwrap().profiles.len()
            })
        });
        let raw = kiln_io::compress::maybe_gunzip(&gz, 64 << 20).unwrap().into_owned();
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_with_input(BenchmarkId::new("convert", short(rel)), &raw, |b, raw| {
            b.iter(|| jfr::convert(raw, &snapshot, opts).unwrap().profiles.len())
        });
    }
    g.finish();
}

fn decoded(rel: &str) -> (Profile, Vec<SampleGroup>) {
    let raw = kiln_io::compress::maybe_gunzip(&fixture(rel), 64 << 20).unwrap().into_owned();
    let d = pprof::normalize(pprof::decode(&raw).unwrap(), limits()).unwrap();
    let groups = d
        .groups
        .into_iter()
        .map(|(mut l, samples)| {
            l.set("__name__", "process_cpu");
            l.set("service_name", "bench");
            SampleGroup { labels: l, samples }
        })
        .collect();
    (d.profile, groups)
}

/// What a decode thread does to a large profile after its decode (issue 16 goal 1: the
/// whole push path's share beyond the inflate+protobuf bound): each sample's stack key and
/// the WAL record's body.
fn after_decode(c: &mut Criterion) {
    use kiln_shards::ingester::walcodec::RecordBody;
    use kiln_shards::model::stackkey;
    let mut g = c.benchmark_group("after_decode");
    for rel in FIXTURES {
        let (p, groups) = decoded(rel);
        g.throughput(Throughput::Elements(p.samples.len() as u64));
        g.bench_function(BenchmarkId::new("stack_keys", short(rel)), |b| b.iter(|| stackkey::compute(&p).len()));
        g.bench_function(BenchmarkId::new("record_body", short(rel)), |b| {
            b.iter(|| RecordBody::new("t", &p, &groups).bytes().len())
        });
    }
    g.finish();
}

/// The owning core's append: symbol interning, stack tree, columns. Measured on a warm head
/// (the steady state: symbols already known) and on an empty one.
fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    for rel in FIXTURES {
        let (p, groups) = decoded(rel);
        g.throughput(Throughput::Elements(p.samples.len() as u64));
        g.bench_function(BenchmarkId::new("warm", short(rel)), |b| {
            let mut h = TenantHead::default();
            h.append("t", &p, &groups);
            b.iter(|| h.append("t", &p, &groups).samples)
        });
        g.bench_function(BenchmarkId::new("cold", short(rel)), |b| {
            b.iter_batched(TenantHead::default, |mut h| h.append("t", &p, &groups).samples, BatchSize::LargeInput)
        });
    }
    g.finish();
}

/// The longest the owning core is held by one push (issue 16 goal 2): its whole append in
/// one piece (`-ingester.append-step-frames=0`), against the longest single turn when its
/// stacks are interned in steps (the default) and its rows added in the last one. Each
/// iteration's time is that push's longest turn; the head is warm (no WAL: the record's
/// encoding, in steps too, is not in either figure).
fn core_turn(c: &mut Criterion) {
    use kiln_shards::ingester::{Ingest, IngestMode, Ingester, Msg, STEP_FRAMES};
    use std::time::Instant;
    let mut g = c.benchmark_group("core_turn");
    for rel in ["pprof/google-pprof/large.cpu", "pprof/pyroscope/pkg-pprof/heap"] {
        let (p, groups) = decoded(rel);
        let p = std::sync::Arc::new(p);
        for (name, frames) in [("one_piece", 0), ("longest_step", STEP_FRAMES)] {
            g.bench_function(BenchmarkId::new(name, short(rel)), |b| {
                let mut ing = Ingester::new(0).with_append_steps(frames);
                let mut key = 0u64;
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        key += 1;
                        let (reply, answer) = flume::bounded(1);
                        let tenant = std::sync::Arc::from("t");
                        let msg = Ingest {
                            tenant,
                            profile: p.clone(),
                            groups: groups.clone(),
                            reply,
                            mode: IngestMode::Whole(key),
                            max_series: 0,
                            body: None,
                        };
                        let t = Instant::now();
                        ing.handle(Msg::Ingest(msg));
                        let mut longest = t.elapsed();
                        while ing.has_steps() {
                            let t = Instant::now();
                            ing.step();
                            longest = longest.max(t.elapsed());
                        }
                        answer.try_recv().unwrap().unwrap();
                        total += longest;
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

fn normalisation(c: &mut Criterion) {
    let labels: Vec<Labels> = (0..1000)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", "process_cpu".to_string()),
                ("service_name", format!("svc-{}", i % 10)),
                ("pod", format!("pod-{i}")),
                ("region", "eu-west-1".to_string()),
            ])
        })
        .collect();
    let ring = Ring::single(16, 128);
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(labels.len() as u64));
    g.bench_function("normalize+fingerprint+owner", |b| {
        b.iter(|| {
            labels
                .iter()
                .map(|l| {
                    let n = kiln::distributor::normalize_series_labels(l.clone());
                    ring.owner(n.fingerprint("anonymous")).core as u64
                })
                .sum::<u64>()
        })
    });
    g.finish();
}

/// A profile with `n` unique stacks: a 10-deep tree over `fanout` functions per level.
fn wide_profile(n: usize) -> Profile {
    let depth = 8;
    let mut p = Profile {
        strings: vec!["".into(), "cpu".into(), "nanoseconds".into()],
        sample_types: vec![ValueType { r#type: 1, unit: 2 }],
        time_nanos: 1,
        ..Default::default()
    };
    let per_level = 64usize;
    for d in 0..depth {
        for f in 0..per_level {
            p.strings.push(format!("pkg{d}.function_{f}"));
            p.functions.push(Function { name: p.strings.len() as u32 - 1, ..Default::default() });
            p.locations.push(Location {
                lines: vec![Line { function: p.functions.len() as u32 - 1, line: 1 }],
                ..Default::default()
            });
        }
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        // Distinct stacks: the sample index in base 64 picks the frames.
        let mut locs = Vec::with_capacity(depth);
        let mut v = i;
        for d in 0..depth {
            locs.push((d * per_level + v % per_level) as u32);
            v /= per_level;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        locs.reverse();
        p.samples.push(Sample { locations: locs, values: vec![(x % 1000) as i64 + 1], span_id: 0 });
    }
    p
}

/// Flame graph over 3M unique stacks: the core's evaluation (sum per stack, resolve names)
/// plus the merge and the truncated encoding.
fn flamegraph(c: &mut Criterion) {
    let mut g = c.benchmark_group("flamegraph");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for n in [100_000usize, 3_000_000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("select_merge_stacktraces", n), |b| {
            // Built inside the closure, so a filtered run does not pay for it.
            let p = wide_profile(n);
            let groups = vec![SampleGroup {
                labels: Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "wide")]),
                samples: (0..n as u32).collect(),
            }];
            let mut h = TenantHead::default();
            h.append("t", &p, &groups);
            drop(p);
            let sel = Selection {
                tenants: vec!["t".into()],
                profile_type: Some("process_cpu:cpu:nanoseconds::".into()),
                matchers: vec![],
                start_ms: 0,
                end_ms: 10,
                keys: None,
                epoch: None,
                report_read: false,
                spans: None,
            };
            b.iter(|| {
                let QueryResult::Tree(part) = h.query("t", &QueryRequest::MergeTree(sel.clone())) else {
                    unreachable!()
                };
                let mut t = Tree::default();
                t.merge(&part);
                t.finish();
                black_box(t.flamegraph(8192)).names.len()
            })
        });
    }
    g.finish();
}

/// The mesh's channel (flume, bounded, async-capable) against a plain crossbeam channel:
/// one producer thread, one consumer thread, 100k messages.
fn channels(c: &mut Criterion) {
    const N: u64 = 100_000;
    let mut g = c.benchmark_group("cross_core_channel");
    g.throughput(Throughput::Elements(N));
    g.bench_function("flume_bounded_1024", |b| {
        b.iter(|| {
            let (tx, rx) = flume::bounded::<u64>(1024);
            let t = std::thread::spawn(move || rx.iter().sum::<u64>());
            for i in 0..N {
                tx.send(i).unwrap();
            }
            drop(tx);
            t.join().unwrap()
        })
    });
    g.bench_function("crossbeam_bounded_1024", |b| {
        b.iter(|| {
            let (tx, rx) = crossbeam_channel::bounded::<u64>(1024);
            let t = std::thread::spawn(move || rx.iter().sum::<u64>());
            for i in 0..N {
                tx.send(i).unwrap();
            }
            drop(tx);
            t.join().unwrap()
        })
    });
    g.finish();
}

/// The ingest formats beside pprof, to their profiles: an OTLP request (the eBPF fixture,
/// protobuf and JSON) decoded and converted, a speedscope file and a trie parsed.
fn ingest_formats(c: &mut Criterion) {
    use kiln::distributor::otlp::{convert, decode_request, Encoding};
    let mut g = c.benchmark_group("ingest_formats");
    let pprof_limits = pprof::PprofLimits { max_samples: 16_000 };
    for (name, enc) in [("otel-ebpf-profile.pb.bin", Encoding::Protobuf), ("otel-ebpf-profile.pb.json", Encoding::Json)]
    {
        let body = fixture(&format!("otlp/{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("otlp", name), &body, |b, body| {
            b.iter(|| {
                let req = decode_request(enc, body, 0).unwrap();
                convert::convert(&req, pprof_limits, 0, 1).unwrap().len()
            })
        });
    }
    // 10000 sampled stacks of up to 32 frames over 1000 shared frames.
    let frames: Vec<String> = (0..1000).map(|i| format!(r#"{{"name":"frame_{i}"}}"#)).collect();
    let samples: Vec<String> = (0..10_000u32)
        .map(|i| {
            format!(
                "[{}]",
                (0..1 + i % 32).map(|d| ((i * 7 + d * 13) % 1000).to_string()).collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    let speedscope = format!(
        r#"{{"$schema":"{}","shared":{{"frames":[{}]}},"profiles":[{{"type":"sampled","name":"p","unit":"milliseconds","samples":[{}],"weights":[{}]}}]}}"#,
        kiln::distributor::speedscope::SCHEMA,
        frames.join(","),
        samples.join(","),
        vec!["1"; 10_000].join(",")
    )
    .into_bytes();
    g.throughput(Throughput::Bytes(speedscope.len() as u64));
    g.bench_with_input(BenchmarkId::new("speedscope", "10000 samples"), &speedscope, |b, body| {
        b.iter(|| kiln::distributor::speedscope::parse(body, 0).unwrap().len())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(20);
    targets = decode, jfr, after_decode, append, core_turn, normalisation, flamegraph, channels, ingest_formats
}
criterion_main!(benches);
