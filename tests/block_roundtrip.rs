//! Every pprof fixture of testdata/ through the real ingest decoder into a head, the
//! head encoded as a block, and the block read back the way a querier reads it: each
//! series' totals and samples must come back exactly, and every stack must resolve to the
//! same frames through the decoded symbols.
use bytes::Bytes;
use kiln::distributor::pprof::{decode_and_normalize, PprofLimits};
use kiln_shards::block::{self, profiles::ProfilesFile, EncodeOptions};
use kiln_shards::eval::Series;
use kiln_shards::ingester::head::TenantHead;
use kiln_shards::model::labels::Labels;
use kiln_shards::model::profile::SampleGroup;
use kiln_shards::model::symbols::{Symbols, ROOT};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/pprof")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// A stack as function names (or addresses), root first.
fn frames(s: &Symbols, mut id: u32) -> Vec<String> {
    let mut out = Vec::new();
    while id != ROOT {
        let l = &s.locations[s.location[id as usize] as usize];
        if l.lines.is_empty() {
            out.push(format!("0x{:x}", l.address));
        }
        for line in l.lines.iter() {
            out.push(s.strings.get(s.functions[line.function as usize].name).to_string());
        }
        id = s.parent[id as usize];
    }
    out.reverse();
    out
}

/// (time, total, samples) of one profile.
type Prof = (i64, i64, Vec<(u32, i64)>);

/// Every profile of a series, stably sorted by time.
fn profiles(s: &Series) -> Vec<Prof> {
    let mut v: Vec<_> = (0..s.timestamps.len())
        .map(|i| {
            let (a, b) = (s.offsets[i] as usize, s.offsets[i + 1] as usize);
            (s.timestamps[i], s.totals[i], s.stacks[a..b].iter().copied().zip(s.values[a..b].iter().copied()).collect())
        })
        .collect();
    v.sort_by_key(|p| p.0);
    v
}

#[test]
fn every_fixture_round_trips_through_a_block() {
    let mut paths = Vec::new();
    files(&testdata(), &mut paths);
    paths.sort();
    let mut head = TenantHead::default();
    let (mut used, mut pprof_bytes) = (0, 0u64);
    for (i, path) in paths.iter().enumerate() {
        let raw = std::fs::read(path).unwrap();
        let Ok(bytes) = kiln_io::compress::maybe_gunzip(&raw, 1 << 30) else { continue };
        // Text fixtures and profiles the ingest path refuses are not this test's business.
        let Ok(decoded) = decode_and_normalize(&bytes, PprofLimits { max_samples: 0 }) else { continue };
        used += 1;
        pprof_bytes += raw.len() as u64;
        let name = path.file_name().unwrap().to_str().unwrap();
        let groups: Vec<SampleGroup> = decoded
            .groups
            .iter()
            .map(|(l, samples)| {
                let mut labels = l.clone();
                labels.set("__name__", "fixture");
                labels.set("service_name", name);
                SampleGroup { labels, samples: samples.clone() }
            })
            .collect();
        // Each fixture twice, the second time earlier: rows must come back sorted by time.
        let mut p = decoded.profile;
        for t in [2_000_000_000_000 + i as i64 * 1_000_000_000, 1_000_000_000_000 + i as i64 * 7] {
            p.time_nanos = t;
            head.append("tenant", &p, &groups);
        }
    }
    assert!(used >= 25, "only {used} fixtures decoded");

    let opts = EncodeOptions::default();
    let b = block::encode(&head, "01HD3X85G9BGAG4S3TKPNMFG4Z", &opts).unwrap();
    let meta = block::meta::decode(&b.meta_json).unwrap();
    let index = block::index::decode(&b.index).unwrap();
    let symbols = block::symdb::decode(&b.symbols).unwrap();
    let len = b.profiles.len() as u64;
    let tail = &b.profiles[b.profiles.len() - (ProfilesFile::TAIL_GUESS.min(len) as usize)..];
    let file = ProfilesFile::from_tail(len, tail).unwrap();

    let all: Vec<u32> = (0..index.series.len() as u32).collect();
    let plan = file.plan(&block::rows_of(&index, &all), true);
    let fetched: Vec<(std::ops::Range<u64>, Bytes)> = plan
        .iter()
        .map(|r| (r.clone(), Bytes::copy_from_slice(&b.profiles[r.start as usize..r.end as usize])))
        .collect();
    let loaded = block::load_series(&index, &all, &file, &fetched, true, i64::MIN, i64::MAX).unwrap();

    let by_labels: BTreeMap<&Labels, &Series> = head.series.iter().map(|s| (&s.labels, s)).collect();
    assert_eq!(loaded.len(), head.series.len());
    let mut samples = 0u64;
    for got in &loaded {
        let want = by_labels[&got.labels];
        assert_eq!(got.profile_type, want.profile_type);
        let (g, w) = (profiles(got), profiles(want));
        assert_eq!(g, w, "{}", got.labels);
        for (_, _, ss) in &g {
            samples += ss.len() as u64;
            for &(id, _) in ss {
                assert_eq!(frames(&symbols, id), frames(&head.symbols, id));
            }
        }
    }
    assert_eq!(samples, head.samples);
    assert_eq!(meta.stats.num_samples, head.samples);

    let total = b.index.len() + b.profiles.len() + b.symbols.len() + b.meta_json.len();
    eprintln!(
        "{used} fixtures ({pprof_bytes} bytes of pprof, appended twice): {} series, {} profiles, {} samples, {} stack nodes",
        meta.stats.num_series, meta.stats.num_profiles, meta.stats.num_samples, meta.stats.num_stacks
    );
    eprintln!(
        "meta.json {} B, index.tsdb {} B, profiles.parquet {} B ({:.2} B/sample), symbols.symdb {} B; \
         whole block {total} B = {:.2} B/sample",
        b.meta_json.len(),
        b.index.len(),
        b.profiles.len(),
        b.profiles.len() as f64 / samples as f64,
        b.symbols.len(),
        total as f64 / samples as f64
    );
}
