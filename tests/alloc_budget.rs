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
