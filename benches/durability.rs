//! Benchmarks of the durable paths: WAL appends with group commit against one fsync per
//! push, block encoding and block reads. Run: `cargo bench --bench durability`.
//! Figures and the machine they were taken on are in perf/RESULTS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::distributor::pprof;
use kiln_io::wal::record;
use kiln_io::wal::segment::{SegmentWriter, SyncPolicy};
use kiln_shards::block::{self, EncodeOptions};
use kiln_shards::ingester::head::TenantHead;
use kiln_shards::model::labels::Labels;
use kiln_shards::model::profile::SampleGroup;
use std::time::{Duration, Instant};

/// A WAL record of a typical size (a small Go CPU profile re-encoded is ~4 KiB).
const RECORD: usize = 4096;

/// Appends `pushes` records, `group` per write+fdatasync: `group = 1` is one fsync per push,
/// larger groups are what the core's WAL writer does when pushes queue behind a sync.
fn wal_appends(dir: &std::path::Path, pushes: usize, group: usize) -> Duration {
    let _ = std::fs::remove_dir_all(dir);
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().build().unwrap();
    rt.block_on(async {
        let mut w = SegmentWriter::create(dir.to_path_buf(), 1 << 30, SyncPolicy::Fsync).await.unwrap();
        let payload = vec![0x5au8; RECORD];
        let started = Instant::now();
        let mut done = 0;
        while done < pushes {
            let mut buf = Vec::with_capacity(group * (RECORD + 8));
            for _ in 0..group.min(pushes - done) {
                record::encode(&payload, &mut buf);
            }
            done += group.min(pushes - done);
            let (res, _) = w.write(buf).await;
            if let Some(f) = res.unwrap() {
                f.sync_data().await.unwrap();
            }
        }
        started.elapsed()
    })
}

fn wal(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("kiln-bench-wal-{}", std::process::id()));
    let mut g = c.benchmark_group("wal");
    g.sample_size(10);
    for group in [1usize, 16, 64] {
        let pushes = 256;
        g.throughput(Throughput::Elements(pushes as u64));
        g.bench_function(BenchmarkId::new("appends_fsync_group", group), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| wal_appends(&dir, pushes, group)).sum())
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A head holding `copies` pushes of each fixture, at distinct times and services.
fn head(copies: usize) -> TenantHead {
    let mut h = TenantHead::default();
    for rel in [
        "pprof/pyroscope/pkg-pprof/go.cpu.labels.pprof",
        "pprof/pyroscope/pkg-pprof/heap",
        "pprof/pyroscope/pkg-pprof/profile_java",
        "pprof/google-pprof/large.cpu",
    ] {
        let raw = kiln_io::compress::maybe_gunzip(&fixture(rel), 64 << 20).unwrap().into_owned();
        let mut p = pprof::decode_and_normalize(&raw, pprof::PprofLimits { max_samples: 0 }).unwrap().profile;
        for i in 0..copies {
            p.time_nanos = 1_700_000_000_000_000_000 + i as i64 * 10_000_000_000;
            let labels = Labels::from_pairs([("__name__", "bench"), ("service_name", &*format!("svc-{}", i % 8))]);
            let groups = vec![SampleGroup { labels, samples: (0..p.samples.len() as u32).collect() }];
            h.append("t", &p, &groups);
        }
    }
    h
}

fn blocks(c: &mut Criterion) {
    let h = head(50);
    let enc = block::encode(&h, "01JBENCH000000000000000000", &EncodeOptions::default()).unwrap();
    let on_disk = enc.index.len() + enc.symbols.len() + enc.profiles.len() + enc.meta_json.len();
    eprintln!(
        "block: {} profiles, {} samples, {} bytes on disk = {:.2} B/sample (index {}, symbols {}, profiles {})",
        h.profiles,
        h.samples,
        on_disk,
        on_disk as f64 / h.samples as f64,
        enc.index.len(),
        enc.symbols.len(),
        enc.profiles.len()
    );
    let mut g = c.benchmark_group("block");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(on_disk as u64));
    g.bench_function("encode", |b| {
        b.iter(|| block::encode(&h, "01JBENCH000000000000000000", &EncodeOptions::default()).unwrap().profiles.len())
    });
    let index = block::index::decode(&enc.index).unwrap();
    let profiles = bytes::Bytes::from(enc.profiles.clone());
    let file = block::profiles::ProfilesFile::from_tail(profiles.len() as u64, &profiles).unwrap();
    let all: Vec<u32> = (0..index.series.len() as u32).collect();
    g.bench_function("read_all_rows", |b| {
        b.iter(|| {
            let _ = block::symdb::decode(&enc.symbols).unwrap();
            let rows = block::rows_of(&index, &all);
            let fetched: Vec<_> = file
                .plan(&rows, true)
                .into_iter()
                .map(|r| (r.clone(), profiles.slice(r.start as usize..r.end as usize)))
                .collect();
            block::load_series(&index, &all, &file, &fetched, true, i64::MIN, i64::MAX).unwrap().len()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = wal, blocks
}
criterion_main!(benches);
