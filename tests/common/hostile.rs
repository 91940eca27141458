//! Hostile inputs: small requests built to make a decoder allocate far more than their size
//! (each stood for a bug once). Shared by `alloc_budget` (in process, per decoder) and
//! `memory_peak` (the real binary's peak RSS).
#![allow(dead_code)]
use kiln_proto::google::v1 as pb;
use kiln_proto::kiln::v1::ProfileInput;
use prost::Message;

/// A CPU pprof with the given string table (after `""`, `cpu`, `nanoseconds`), `functions`
/// functions all named by string `name` in file `file`, one location and one sample.
pub fn profile_sharing_names(extra: &[Vec<u8>], functions: u64, name: i64, file: i64) -> Vec<u8> {
    let mut strings = vec![b"".to_vec(), b"cpu".to_vec(), b"nanoseconds".to_vec()];
    strings.extend_from_slice(extra);
    ProfileInput {
        sample_type: vec![pb::ValueType { r#type: 1, unit: 2 }],
        sample: vec![pb::Sample { location_id: vec![1], value: vec![1], label: vec![] }],
        location: vec![pb::Location { id: 1, line: vec![pb::Line { function_id: 1, line: 1 }], ..Default::default() }],
        function: (1..=functions)
            .map(|id| pb::Function { id, name, system_name: name, filename: file, start_line: 0 })
            .collect(),
        string_table: strings,
        time_nanos: now_ns(),
        period_type: Some(pb::ValueType { r#type: 1, unit: 2 }),
        period: 10_000_000,
        ..Default::default()
    }
    .encode_to_vec()
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// (b): a pyspy profile whose functions all share one long file and one long function name.
pub fn spy_profile(functions: u64, name_len: usize) -> Vec<u8> {
    let file = [vec![b'f'; name_len], b".py".to_vec()].concat();
    let func = vec![b'g'; name_len];
    profile_sharing_names(&[file, func], functions, 4, 3)
}

/// (c): a Go profile whose functions all share one long generic name.
pub fn go_generic_profile(functions: u64, name_len: usize) -> Vec<u8> {
    let name = [vec![b'a'; name_len], b"[go.shape.int]".to_vec()].concat();
    profile_sharing_names(&[b"main.go".to_vec(), name], functions, 4, 3)
}

/// Gzip at the best ratio (about 1000:1 for zeros), as an attacker would compress.
pub fn gzip_best(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A CPU pprof of `n` samples, each labelled `k=<i>`: `n` series once ingested.
pub fn labelled_series_profile(n: usize) -> Vec<u8> {
    let mut strings: Vec<Vec<u8>> =
        vec![b"".to_vec(), b"cpu".to_vec(), b"nanoseconds".to_vec(), b"k".to_vec(), b"main".to_vec()];
    strings.extend((0..n).map(|i| i.to_string().into_bytes()));
    ProfileInput {
        sample_type: vec![pb::ValueType { r#type: 1, unit: 2 }],
        sample: (0..n)
            .map(|i| pb::Sample {
                location_id: vec![1],
                value: vec![1],
                label: vec![pb::Label { key: 3, str: 5 + i as i64, ..Default::default() }],
            })
            .collect(),
        location: vec![pb::Location { id: 1, line: vec![pb::Line { function_id: 1, line: 1 }], ..Default::default() }],
        function: vec![pb::Function { id: 1, name: 4, system_name: 4, filename: 0, start_line: 0 }],
        string_table: strings,
        period_type: Some(pb::ValueType { r#type: 1, unit: 2 }),
        period: 10_000_000,
        time_nanos: now_ns(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `n` empty length-delimited records of protobuf field `field`: 2 bytes each on the wire, a
/// whole struct each once decoded.
pub fn empty_records(field: u8, n: usize) -> Vec<u8> {
    [field << 3 | 2, 0].repeat(n)
}

/// A pprof whose header is valid, followed by `n` empty records of `field`.
pub fn profile_of_empty_records(field: u8, n: usize) -> Vec<u8> {
    [profile_sharing_names(&[], 1, 0, 0), empty_records(field, n)].concat()
}

/// A Go CPU profile whose truncated-stack repair (gofix, as Pyroscope's) appends the most
/// frames: 55 groups of 24-frame stacks, each lacking 8 frames of the one before it, down to
/// a 480-frame stack; then `n` samples of the last group, each of which gets 440 frames.
pub fn go_repair_chain_profile(n: usize) -> Vec<u8> {
    let mut next_id = 0u64;
    let mut fresh = || {
        next_id += 1;
        // Low byte 0xff is kept for the stack that must sort last.
        if next_id & 0xff == 0xff {
            next_id += 1;
        }
        next_id
    };
    let root: Vec<u64> = (0..480).map(|_| fresh()).collect();
    let mut stacks = vec![root.clone()];
    let mut prev: Vec<u64> = root[root.len() - 24..].to_vec();
    for _ in 0..55 {
        let s: Vec<u64> = (0..8).map(|_| fresh()).chain(prev[..16].iter().copied()).collect();
        stacks.push(s.clone());
        prev = s;
    }
    // Pyroscope's quirk leaves the last group in sort order unrepaired: a stack to sort last.
    let last: Vec<u64> = std::iter::once(0x7ff).chain((0..23).map(|_| fresh())).collect();
    stacks.push(last);
    stacks.extend(std::iter::repeat_n(prev, n));
    let max_id = stacks.iter().flatten().copied().max().unwrap();
    ProfileInput {
        sample_type: vec![pb::ValueType { r#type: 1, unit: 2 }],
        sample: stacks
            .into_iter()
            .map(|location_id| pb::Sample { location_id, value: vec![1], label: vec![] })
            .collect(),
        location: (1..=max_id)
            .map(|id| pb::Location { id, line: vec![pb::Line { function_id: 1, line: 1 }], ..Default::default() })
            .collect(),
        function: vec![pb::Function { id: 1, name: 3, system_name: 3, filename: 4, start_line: 0 }],
        string_table: vec![
            b"".to_vec(),
            b"cpu".to_vec(),
            b"nanoseconds".to_vec(),
            b"main.f".to_vec(),
            b"main.go".to_vec(),
        ],
        time_nanos: now_ns(),
        period_type: Some(pb::ValueType { r#type: 1, unit: 2 }),
        period: 10_000_000,
        ..Default::default()
    }
    .encode_to_vec()
}
