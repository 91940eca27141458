//! What every query API says about the data a test pushed, in one comparable map: for
//! checking that blocks, restarts and clusters answer exactly as a single node's head does.
use super::*;
use kiln_proto::push::v1::{PushRequest, PushResponse, RawProfileSeries, RawSample};
use kiln_proto::querier::v1 as q;
use kiln_proto::types::v1 as t;
use std::collections::BTreeMap;

/// Pushes one fixture as service `service` (PusherService/Push, Connect). A fixture without
/// a time of its own is given `pinned_now_ns`, so that the answers of two systems it was
/// pushed to minutes apart do not differ by which hour's step that push fell in.
pub fn push_fixture(port: u16, service: &str, raw: Vec<u8>) {
    let raw = with_pinned_time(raw);
    let req = PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                t::LabelPair { name: "__name__".into(), value: "fixture".into() },
                t::LabelPair { name: "service_name".into(), value: service.into() },
            ],
            samples: vec![RawSample { raw_profile: raw.into(), id: String::new() }],
            annotations: vec![],
        }],
    };
    let _: PushResponse = connect(port, "/push.v1.PusherService/Push", &[], &req).unwrap();
}

pub const START: i64 = 1000;

/// One time for this test process, in nanoseconds: the start of the current hour step of
/// the snapshot's series (steps of an hour from `START`), so it is never in the future and
/// lies in the same step however long the test runs.
pub fn pinned_now_ns() -> i64 {
    static PINNED: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *PINNED.get_or_init(|| {
        let hour = 3_600_000;
        (START + (now_ms() - START) / hour * hour) * 1_000_000
    })
}

/// `raw` (pprof, gzipped or not) with `time_nanos` set to `pinned_now_ns` when it has none:
/// the field is appended to the message (protobuf's last value wins), leaving every other
/// byte as the fixture has it. A fixture that does not decode is left as it is.
fn with_pinned_time(raw: Vec<u8>) -> Vec<u8> {
    use std::io::{Read, Write};
    let gzipped = raw.starts_with(&[0x1f, 0x8b]);
    let mut plain = Vec::new();
    if gzipped && flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut plain).is_err() {
        return raw;
    }
    let plain = if gzipped { plain } else { raw.clone() };
    match kiln_proto::google::v1::Profile::decode(&plain[..]) {
        Ok(p) if p.time_nanos == 0 => {}
        _ => return raw,
    }
    let mut out = plain;
    prost::encoding::int64::encode(9, &pinned_now_ns(), &mut out);
    if !gzipped {
        return out;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&out).unwrap();
    gz.finish().unwrap()
}

/// The end of every snapshot query (ms): fixed for the test process, an hour or more ahead
/// of now while it runs under an hour, so that each round asks the same ranges. A range
/// that moved with the clock would split differently at times (a frontend widens its parts
/// as the range grows), and a second round's parts would miss the first round's cache.
pub fn end() -> i64 {
    pinned_now_ns() / 1_000_000 + 2 * 3_600_000
}

/// The IDs of the profile types the data holds (ProfileTypes over the whole range).
pub fn profile_type_ids(port: u16) -> Vec<String> {
    let types: q::ProfileTypesResponse = connect(
        port,
        "/querier.v1.QuerierService/ProfileTypes",
        &[],
        &q::ProfileTypesRequest { start: START, end: end() },
    )
    .unwrap();
    types.profile_types.iter().map(|p| p.id.clone()).collect()
}

/// Everything the query APIs say about the data, in a comparable form.
pub fn snapshot(port: u16) -> BTreeMap<String, String> {
    try_snapshot(port).unwrap()
}

/// A Connect error: HTTP status, code, message.
pub type Failed = (u16, String, String);

/// `snapshot`, or the first query's error.
pub fn try_snapshot(port: u16) -> Result<BTreeMap<String, String>, Failed> {
    let mut out = BTreeMap::new();
    let ids = profile_type_ids(port);
    assert!(!ids.is_empty(), "no profile types");
    out.insert("types".into(), format!("{ids:?}"));
    let names: t::LabelNamesResponse = connect(
        port,
        "/querier.v1.QuerierService/LabelNames",
        &[],
        &t::LabelNamesRequest { start: START, end: end(), ..Default::default() },
    )?;
    out.insert("label names".into(), format!("{:?}", names.names));
    let values: t::LabelValuesResponse = connect(
        port,
        "/querier.v1.QuerierService/LabelValues",
        &[],
        &t::LabelValuesRequest { name: "service_name".into(), start: START, end: end(), ..Default::default() },
    )?;
    out.insert("services".into(), format!("{:?}", values.names));
    for pt in &ids {
        let fg: q::SelectMergeStacktracesResponse = connect(
            port,
            "/querier.v1.QuerierService/SelectMergeStacktraces",
            &[],
            &q::SelectMergeStacktracesRequest {
                profile_type_id: pt.clone(),
                label_selector: "{}".into(),
                start: START,
                end: end(),
                max_nodes: Some(1 << 20),
                ..Default::default()
            },
        )?;
        let fg = fg.flamegraph.unwrap();
        let levels: Vec<Vec<i64>> = fg.levels.iter().map(|l| l.values.clone()).collect();
        out.insert(format!("{pt} total"), fg.total.to_string());
        out.insert(format!("{pt} stacks"), format!("{:?}", flamegraph_stacks(&fg.names, &levels)));
        let series: q::SelectSeriesResponse = connect(
            port,
            "/querier.v1.QuerierService/SelectSeries",
            &[],
            &q::SelectSeriesRequest {
                profile_type_id: pt.clone(),
                label_selector: "{}".into(),
                start: START,
                end: end(),
                group_by: vec!["service_name".into()],
                step: 3600.0,
                ..Default::default()
            },
        )?;
        let pts: Vec<String> = series
            .series
            .iter()
            .map(|s| {
                format!("{:?} {:?}", s.labels, s.points.iter().map(|p| (p.timestamp, p.value)).collect::<Vec<_>>())
            })
            .collect();
        out.insert(format!("{pt} series"), format!("{pts:?}"));
        let pprof: kiln_proto::google::v1::Profile = connect(
            port,
            "/querier.v1.QuerierService/SelectMergeProfile",
            &[],
            &q::SelectMergeProfileRequest {
                profile_type_id: pt.clone(),
                label_selector: "{}".into(),
                start: START,
                end: end(),
                ..Default::default()
            },
        )?;
        out.insert(format!("{pt} pprof"), format!("{:?}", pprof_stacks(&pprof, 0)));
    }
    Ok(out)
}

pub fn flush(port: u16) {
    let r = post(port, "/ingester/flush", &[], Vec::new());
    assert_eq!(r.status, 204, "{}", r.text());
}

/// Waits up to a minute until `port` answers `want`; a query refused as unavailable (503:
/// the cluster is still settling, retry) is asked again. On timeout fails naming what still
/// differs, or the last refusal.
pub fn wait_for_answers(port: u16, want: &BTreeMap<String, String>, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = try_snapshot(port);
        match &got {
            Ok(got) if got == want => return,
            Err(e) if e.0 != 503 => panic!("{what}: {e:?}"),
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            match got {
                Ok(got) => assert_same(want, &got, &format!("timed out waiting until {what}")),
                Err(e) => panic!("timed out waiting until {what}: {e:?}"),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

pub fn assert_same(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, when: &str) {
    assert_eq!(a.len(), b.len(), "{when}: different keys");
    for (k, v) in a {
        assert_eq!(Some(v), b.get(k), "{when}: {k} differs");
    }
}

/// A single node (`-shards=1`) holding half the golden fixtures in blocks of the bucket at
/// `blocks` (services `old-N`) and the other half in its head (`new-N`): the answers a
/// cluster given the same data must give. Returns the node and the `new` fixtures, which a
/// test pushes to its cluster (the `old` ones are in the shared bucket already).
pub fn single_node_half_in_blocks(blocks: &std::path::Path) -> (Kiln, Vec<PathBuf>) {
    let fixtures = golden_pprofs();
    let (old, new) = fixtures.split_at(fixtures.len() / 2);
    let single = Kiln::start(
        &[FIXTURE_FLAGS, &["-shards=1", &format!("-storage.filesystem.dir={}", blocks.display())]].concat(),
    );
    for (i, path) in old.iter().enumerate() {
        push_fixture(single.port, &format!("old-{i}"), std::fs::read(path).unwrap());
    }
    flush(single.port);
    for (i, path) in new.iter().enumerate() {
        push_fixture(single.port, &format!("new-{i}"), std::fs::read(path).unwrap());
    }
    (single, new.to_vec())
}

/// `single_node_half_in_blocks` in a new blocks directory for test `name`, the node's
/// answers taken and the node stopped: (the blocks directory, the answers, the fixtures a
/// test pushes to its cluster).
pub fn half_in_blocks_answers(name: &str) -> (PathBuf, BTreeMap<String, String>, Vec<PathBuf>) {
    let blocks = super::members::blocks_dir(name);
    let (single, new) = single_node_half_in_blocks(&blocks);
    let want = snapshot(single.port);
    drop(single);
    (blocks, want, new)
}
