//! Blocks: heads cut into blocks in object storage answer every query exactly as the head
//! did, survive restarts (with another number of cores) without being counted twice, and a
//! `kill -9` in the middle of block cuts loses nothing that was acknowledged.
mod common;

use common::*;
use kiln_proto::push::v1::{PushRequest, PushResponse, RawProfileSeries, RawSample};
use kiln_proto::querier::v1 as q;
use kiln_proto::types::v1 as t;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

fn pprofs() -> Vec<std::path::PathBuf> {
    // Files the testdata README marks as invalid, or repairable only through /ingest.
    let skip = ["invalid_utf8.pb.gz", "dotnet-pprof-3.pb.gz", "dotnet-pprof-73.pb.gz"];
    let mut out = Vec::new();
    let mut dirs = vec![testdata("pprof")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                dirs.push(p);
            } else if !(name.ends_with(".txt") || name.ends_with(".json") || skip.contains(&name.as_str())) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn push(port: u16, service: &str, raw: Vec<u8>) {
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

const START: i64 = 1000;

fn end() -> i64 {
    now_ms() + 3_600_000
}

/// Everything the query APIs say about the data, in a comparable form.
fn snapshot(port: u16) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let types: q::ProfileTypesResponse = connect(
        port,
        "/querier.v1.QuerierService/ProfileTypes",
        &[],
        &q::ProfileTypesRequest { start: START, end: end() },
    )
    .unwrap();
    let ids: Vec<String> = types.profile_types.iter().map(|p| p.id.clone()).collect();
    assert!(ids.len() > 10, "too few profile types: {ids:?}");
    out.insert("types".into(), format!("{ids:?}"));
    let names: t::LabelNamesResponse = connect(
        port,
        "/querier.v1.QuerierService/LabelNames",
        &[],
        &t::LabelNamesRequest { start: START, end: end(), ..Default::default() },
    )
    .unwrap();
    out.insert("label names".into(), format!("{:?}", names.names));
    let values: t::LabelValuesResponse = connect(
        port,
        "/querier.v1.QuerierService/LabelValues",
        &[],
        &t::LabelValuesRequest { name: "service_name".into(), start: START, end: end(), ..Default::default() },
    )
    .unwrap();
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
        )
        .unwrap();
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
        )
        .unwrap();
        let pts: Vec<String> = series
            .series
            .iter()
            .map(|s| {
                format!("{:?} {:?}", s.labels, s.points.iter().map(|p| (p.timestamp, p.value)).collect::<Vec<_>>())
            })
            .collect();
        out.insert(format!("{pt} series"), format!("{pts:?}"));
    }
    out
}

fn metric(port: u16, name: &str) -> f64 {
    get(port, "/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn flush(port: u16) {
    let r = post(port, "/ingester/flush", &[], Vec::new());
    assert_eq!(r.status, 204, "{}", r.text());
}

fn assert_same(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, when: &str) {
    assert_eq!(a.len(), b.len(), "{when}: different keys");
    for (k, v) in a {
        assert_eq!(Some(v), b.get(k), "{when}: {k} differs");
    }
}

fn wal_segments(data: &Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![data.join("wal")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "seg") {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn every_fixture_reads_back_the_same_from_blocks_and_after_restarts() {
    let mut flags = FIXTURE_FLAGS.to_vec();
    flags.push("-shards=2");
    let k = Kiln::start(&flags);
    for (i, path) in pprofs().iter().enumerate() {
        push(k.port, &format!("svc-{i}"), std::fs::read(path).unwrap());
    }
    let head = snapshot(k.port);
    assert_eq!(metric(k.port, "kiln_blocks_owned"), 0.0);

    flush(k.port);
    assert_eq!(metric(k.port, "kiln_head_profiles"), 0.0, "the head still holds profiles after a flush");
    assert!(metric(k.port, "kiln_blocks_owned") >= 1.0);
    assert_same(&head, &snapshot(k.port), "read from blocks");
    let index = k.data.join("blocks/anonymous/bucket-index.json");
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    let ids: Vec<String> =
        idx["blocks"].as_array().unwrap().iter().map(|b| b["block_id"].as_str().unwrap().to_string()).collect();
    assert!(!ids.is_empty());
    for id in &ids {
        for f in ["meta.json", "index.tsdb", "profiles.parquet", "symbols.symdb"] {
            assert!(k.data.join("blocks/anonymous").join(id).join(f).exists(), "{id}/{f} missing");
        }
    }

    // Crash, restart with another number of cores: the blocks are re-owned through the
    // ring and the WAL replay skips what they hold.
    let data = k.kill();
    let k = Kiln::start_in(data, &[&flags[..flags.len() - 1], &["-shards=3"]].concat());
    assert_same(&head, &snapshot(k.port), "after kill -9 and a restart with 3 cores");
    assert_eq!(metric(k.port, "kiln_head_profiles"), 0.0, "replay put block data back into the head");

    // New data lands in the head next to the blocks; both count.
    push(k.port, "svc-new", std::fs::read(testdata("pprof/google-pprof/sample.cpu")).unwrap());
    let mixed = snapshot(k.port);
    assert_ne!(mixed.get("services"), head.get("services"));
    flush(k.port);
    assert_same(&mixed, &snapshot(k.port), "head and blocks, then blocks only");
    let data = k.kill();
    assert!(wal_segments(&data) <= 3 * 2, "WAL segments covered by blocks were not deleted");
}

fn push_seq(port: u16, i: u64) -> bool {
    let r = std::panic::catch_unwind(|| {
        post(
            port,
            &format!("/ingest?name=cut.cpu%7Bseq%3D{i}%7D&format=folded&sampleRate=0"),
            &[],
            format!("main;f{} {}\n", i % 7, i + 1).into_bytes(),
        )
    });
    matches!(r, Ok(r) if r.status == 200)
}

fn found(port: u16) -> (BTreeSet<u64>, i64) {
    let range =
        serde_json::json!({"start": (now_ms() - 3_600_000).to_string(), "end": (now_ms() + 60_000).to_string()});
    let mut body = range.clone();
    body["name"] = "seq".into();
    let r = connect_json(port, "/querier.v1.QuerierService/LabelValues", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    let seqs = r.json()["names"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().parse().unwrap()).collect())
        .unwrap_or_default();
    let mut body = range;
    body["profileTypeID"] = "process_cpu:samples:count::".into();
    body["labelSelector"] = "{service_name=\"cut\"}".into();
    let r = connect_json(port, "/querier.v1.QuerierService/SelectMergeStacktraces", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    (seqs, r.json()["flamegraph"]["total"].as_str().map(|s| s.parse().unwrap()).unwrap_or(0))
}

#[test]
fn kill_9_during_block_cuts_loses_nothing_and_counts_nothing_twice() {
    // Heads are cut every ~100 ms, so the kill lands among cuts, uploads and WAL deletions.
    let k = Kiln::start(&["-ingester.max-block-duration=100ms", "-shards=2"]);
    let port = k.port;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let pushers: Vec<_> = (0..4u64)
        .map(|t| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) && i < 100_000 {
                    if push_seq(port, i) {
                        acked.lock().unwrap().push(i);
                    }
                    i += 4;
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 600 || metric(port, "kiln_blocks_written_total") < 3.0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let data = k.kill();
    stop.store(true, Ordering::Relaxed);
    for p in pushers {
        p.join().unwrap();
    }
    let acked: BTreeSet<u64> = acked.lock().unwrap().iter().copied().collect();
    assert!(data.join("blocks/anonymous/bucket-index.json").exists());

    for cores in ["-shards=3", "-shards=2"] {
        let k = Kiln::start_in(data.clone(), &["-ingester.max-block-duration=1h", cores]);
        let (seqs, total) = found(k.port);
        assert!(acked.is_subset(&seqs), "lost {} acknowledged pushes", acked.difference(&seqs).count());
        // Each push that made it is counted once: in a block or in the head, not both.
        let want: i64 = seqs.iter().map(|i| *i as i64 + 1).sum();
        assert_eq!(total, want, "profiles counted twice or partly lost");
        let _ = k.kill();
    }
}
