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
