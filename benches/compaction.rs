//! The compactor's merge (`kiln_shards::block::merge`) on blocks built from the real
//! profiles of testdata/. Run: `cargo bench --bench compaction`; figures in perf/RESULTS.md.
//!
//! - `merge/vertical`: one hour of pushes written by three replicas (three sources, the same
//!   rows in each) merged into one copy.
//! - `merge/horizontal`: three consecutive hours from one source merged into one block.
//! - `open+merge/*`: the same with the inputs' index, symbols and parquet footer decoded
//!   inside the loop, as a compaction job opens them.
//! - `scaling/{1,4,16}x`: horizontal merges of the same services and stacks with 1×, 4× and
//!   16× the rows; besides their time, the bench prints what each held at its peak (the
//!   merge's row buffers, the real heap, the inputs' decoded symbol tables) on stdout, as
//!   for every case, with its rows and the bytes per sample before and after.
//!
//! Throughput is counted on the inputs' bytes (profiles.parquet + symbols + index); the rows
//! per second follow from the rows printed. A merge runs on one thread, so both are
//! per core.
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln::distributor::pprof;
use kiln_shards::block::merge::{merge, merge_into, Fetch, Input, MergeStats, Opened};
use kiln_shards::block::{encode, symdb, EncodeOptions, EncodedBlock};
use kiln_shards::ingester::head::TenantHead;
use kiln_shards::model::profile::{Profile, SampleGroup};
use kiln_shards::model::symbols::Symbols;
use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// The process's live heap bytes, their peak and the largest single block asked for since the
/// last [`reset_peak`]: a merge runs on the calling thread, so nothing else allocates
/// meanwhile.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// kiln's allocator (mimalloc), counting.
struct Counting;

// SAFETY: every call is forwarded to `MiMalloc` unchanged; the counting only touches atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` are passed on.
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `MiMalloc` with this layout.
        unsafe { MiMalloc.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller's guarantees for `new_size` are passed on.
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                // Both blocks are live for a moment when a growing reallocation moves.
                grew(new_size);
                LIVE.fetch_sub(layout.size(), Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

fn grew(n: usize) {
    LARGEST.fetch_max(n, Relaxed);
    let live = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(live, Relaxed);
}

fn reset_peak() -> usize {
    let live = LIVE.load(Relaxed);
    PEAK.store(live, Relaxed);
    LARGEST.store(0, Relaxed);
    live
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The services: one real profile each, pushed under `service_name` = its file name. Go CPU
/// with pprof labels (several series), Go heap (four sample types), Java, Python, Node,
/// Rust, .NET with labels.
const FIXTURES: &[(&str, &str)] = &[
    ("pprof/pyroscope/pkg-pprof/go.cpu.labels.pprof", "process_cpu"),
    ("pprof/pyroscope/pkg-pprof/heap", "memory"),
    ("pprof/pyroscope/pkg-pprof/profile_java", "process_cpu"),
    ("pprof/pyroscope/pkg-pprof/profile_python", "process_cpu"),
    ("pprof/pyroscope/pkg-pprof/profile_nodejs", "process_cpu"),
    ("pprof/pyroscope/pkg-pprof/profile_rust", "process_cpu"),
    ("pprof/pyroscope/pkg-pprof/dotnet.labels.pprof", "process_cpu"),
];

/// Seconds between two pushes of a service (Pyroscope's agents push every 10 s).
const STEP_S: i64 = 10;
/// Pushes per service in an hour.
const PER_HOUR: i64 = 3600 / STEP_S;
/// Pushes per service per input in `scaling`'s 1× case.
const SCALING_BASE: i64 = 30;

const IDS: [&str; 4] = [
    "01HD3X85G9BGAG4S3TKPNMFG40",
    "01HD3X85G9BGAG4S3TKPNMFG41",
    "01HD3X85G9BGAG4S3TKPNMFG42",
    "01HD3X85G9BGAG4S3TKPNMFG4Z",
];

/// A service's profile, decoded once as the distributor does, with its series' labels.
struct Service {
    profile: Profile,
    /// Each sample's values as decoded.
    values: Vec<Vec<i64>>,
    groups: Vec<SampleGroup>,
}

impl Service {
    /// The push at `t`: as agents' successive profiles differ, each sample is left out one
    /// time in four and its values scaled by 1 to 4, both drawn from (t, sample); the stacks
    /// stay the service's own. Sets the profile's time and values; returns its groups.
    fn at(&mut self, t: i64) -> Vec<SampleGroup> {
        self.profile.time_nanos = t * 1_000_000_000;
        let roll = |i: u32| splitmix(((t as u64) << 32) ^ u64::from(i));
        for (i, (sample, values)) in self.profile.samples.iter_mut().zip(&self.values).enumerate() {
            let scale = 1 + (roll(i as u32) >> 8) as i64 % 4;
            sample.values.iter_mut().zip(values).for_each(|(v, &base)| *v = base * scale);
        }
        self.groups
            .iter()
            .map(|g| {
                let mut samples: Vec<u32> = g.samples.iter().copied().filter(|&i| roll(i) % 4 != 0).collect();
                if samples.is_empty() {
                    samples.extend(g.samples.first());
                }
                SampleGroup { labels: g.labels.clone(), samples }
            })
            .collect()
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn services() -> Vec<Service> {
    FIXTURES
        .iter()
        .map(|&(rel, name)| {
            let gz = std::fs::read(format!("{}/testdata/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap();
            let raw = kiln_io::compress::maybe_gunzip(&gz, 64 << 20).unwrap().into_owned();
            let d = pprof::normalize(pprof::decode(&raw).unwrap(), pprof::PprofLimits { max_samples: 0 }).unwrap();
            let service = rel.rsplit('/').next().unwrap();
            let groups = d
                .groups
                .into_iter()
                .map(|(mut l, samples)| {
                    l.set("__name__", name);
                    l.set("service_name", service);
                    SampleGroup { labels: l, samples }
                })
                .collect();
            let values = d.profile.samples.iter().map(|s| s.values.clone()).collect();
            Service { profile: d.profile, values, groups }
        })
        .collect()
}

/// A block of every service's pushes every `STEP_S` from `start_s` for `pushes` pushes each.
fn block(services: &mut [Service], start_s: i64, pushes: i64, id: &str) -> EncodedBlock {
    let mut h = TenantHead::default();
    for k in 0..pushes {
        for s in services.iter_mut() {
            let groups = s.at(start_s + k * STEP_S);
            h.append("t", &s.profile, &groups);
        }
    }
    encode(&h, id, &EncodeOptions::default()).unwrap()
}

fn open(b: &EncodedBlock) -> Opened {
    Opened::from_encoded(b).unwrap()
}

/// The inputs' profiles.parquet in memory; a fetch copies the ranges out, as a read from
/// the store allocates what it reads.
struct MemFetch<'a>(&'a [EncodedBlock]);

impl Fetch for MemFetch<'_> {
    fn fetch(&mut self, input: usize, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, String> {
        let file = &self.0[input].profiles;
        Ok(ranges.iter().map(|r| Bytes::copy_from_slice(&file[r.start as usize..r.end as usize])).collect())
    }
}

/// A merge case: its input blocks and each one's source.
struct Case {
    name: String,
    blocks: Vec<EncodedBlock>,
    sources: Vec<&'static str>,
}

impl Case {
    /// Bytes a compaction reads: profiles.parquet, symbols and index of every input.
    fn input_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| (b.profiles.len() + b.symbols.len() + b.index.len()) as u64).sum()
    }

    fn run(&self, opened: &[Opened]) -> (EncodedBlock, MergeStats) {
        let inputs: Vec<Input<'_>> = opened.iter().zip(&self.sources).map(|(o, source)| o.input(source)).collect();
        merge(&inputs, &mut MemFetch(&self.blocks), IDS[3], &EncodeOptions::default()).unwrap()
    }

    /// `run` as the compactor runs it: the output's profiles.parquet into a local file.
    fn run_into_file(&self, opened: &[Opened], path: &std::path::Path) -> (EncodedBlock, MergeStats) {
        let inputs: Vec<Input<'_>> = opened.iter().zip(&self.sources).map(|(o, source)| o.input(source)).collect();
        let file = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(path).unwrap();
        let (b, file, st) =
            merge_into(&inputs, &mut MemFetch(&self.blocks), IDS[3], &EncodeOptions::default(), file).unwrap();
        drop(file);
        (b, st)
    }

    fn open_and_run(&self) -> (EncodedBlock, MergeStats) {
        let opened: Vec<Opened> = self.blocks.iter().map(open).collect();
        self.run(&opened)
    }
}

/// Three replicas of one hour: the same pushes, three sources.
fn vertical(services: &mut [Service]) -> Case {
    let blocks = IDS[..3].iter().map(|id| block(services, 0, PER_HOUR, id)).collect();
    Case { name: "vertical".into(), blocks, sources: vec!["ingester-0", "ingester-1", "ingester-2"] }
}

/// Three consecutive stretches of `pushes` pushes each from one source.
fn horizontal(services: &mut [Service], pushes: i64, name: String) -> Case {
    let blocks = IDS[..3].iter().zip(0..).map(|(id, i)| block(services, i * pushes * STEP_S, pushes, id)).collect();
    Case { name, blocks, sources: vec!["ingester-0"; 3] }
}

fn block_bytes(b: &EncodedBlock) -> usize {
    b.files().iter().map(|(_, f)| f.len()).sum()
}

/// Prints one case's figures: sizes, bytes per sample before and after, and memory.
fn report(case: &Case) {
    // The inputs as a job holds them (meta, index, decoded symbols, parquet footer), and
    // their decoded symbol tables alone: held whole for the merge's length.
    let before = LIVE.load(Relaxed);
    let opened: Vec<Opened> = case.blocks.iter().map(open).collect();
    let opened_bytes = LIVE.load(Relaxed) - before;
    let symbols_bytes = {
        let before = LIVE.load(Relaxed);
        let s: Vec<Symbols> = case.blocks.iter().map(|b| symdb::decode(&b.symbols).unwrap()).collect();
        let n = LIVE.load(Relaxed) - before;
        drop(s);
        n
    };
    let base = reset_peak();
    let (out, st) = case.run(&opened);
    let (heap_peak, largest) = (PEAK.load(Relaxed) - base, LARGEST.load(Relaxed));
    let in_samples: u64 = case.blocks.iter().map(|b| b.meta.stats.num_samples).sum();
    let in_bytes: usize = case.blocks.iter().map(block_bytes).sum();
    let (out_samples, out_bytes) = (out.meta.stats.num_samples, block_bytes(&out));
    let mib = |n: usize| n as f64 / (1 << 20) as f64;
    let name = &case.name;
    println!(
        "{name}: {n} inputs, {in_mib:.2} MiB read (parquet+symbols+index); rows {rows_in} -> {rows_out}, \
         samples {in_samples} -> {out_samples}, stacks {stacks_in} -> {stacks_out}",
        n = case.blocks.len(),
        in_mib = mib(case.input_bytes() as usize),
        rows_in = st.rows_in,
        rows_out = st.rows_out,
        stacks_in = case.blocks.iter().map(|b| b.meta.stats.num_stacks).sum::<u64>(),
        stacks_out = out.meta.stats.num_stacks,
    );
    println!(
        "{name}: block bytes (all four files) {in_bytes} -> {out_bytes}; per stored sample {b:.3} -> {a:.3}; \
         per distinct sample {bd:.3} -> {a:.3}",
        b = in_bytes as f64 / in_samples as f64,
        bd = in_bytes as f64 / out_samples as f64,
        a = out_bytes as f64 / out_samples as f64,
    );
    println!(
        "{name}: memory MiB: row buffers (peak_buffer_bytes) {buf:.2}; heap peak during the merge {heap:.2}, \
         less the output block it returns ({out:.2}) {rest:.2}; largest single allocation {big:.2}; inputs \
         opened before it {opened:.2}, of which decoded symbol tables {sym:.2}",
        buf = mib(st.peak_buffer_bytes),
        heap = mib(heap_peak),
        out = mib(out_bytes),
        rest = mib(heap_peak.saturating_sub(out_bytes)),
        big = mib(largest),
        opened = mib(opened_bytes),
        sym = mib(symbols_bytes),
    );
    drop(out);
    // The same merge as the compactor runs it, its profiles written to a file.
    let path = std::env::temp_dir().join(format!("kiln-bench-merge-{}", std::process::id()));
    let base = reset_peak();
    let (held, _) = case.run_into_file(&opened, &path);
    let (heap_peak, largest) = (PEAK.load(Relaxed) - base, LARGEST.load(Relaxed));
    let file_bytes = std::fs::metadata(&path).map_or(0, |m| m.len() as usize);
    let _ = std::fs::remove_file(&path);
    println!(
        "{name}: memory MiB, profiles written to a file as the compactor does: heap peak during the merge \
         {heap:.2} (the index, symbols and meta it returns: {held:.2}; the file: {file:.2}); largest single \
         allocation {big:.2}",
        heap = mib(heap_peak),
        held = mib(block_bytes(&held)),
        file = mib(file_bytes),
        big = mib(largest),
    );
}

fn bench(c: &mut Criterion, group: &str, cases: &[Case], open_in_loop: bool) {
    let mut g = c.benchmark_group(group);
    for case in cases {
        g.throughput(Throughput::Bytes(case.input_bytes()));
        let opened: Vec<Opened> = case.blocks.iter().map(open).collect();
        g.bench_function(BenchmarkId::from_parameter(&case.name), |b| {
            if open_in_loop {
                b.iter(|| case.open_and_run().1.rows_out)
            } else {
                b.iter(|| case.run(&opened).1.rows_out)
            }
        });
    }
    g.finish();
}

fn compaction(c: &mut Criterion) {
    let mut services = services();
    let cases = [vertical(&mut services), horizontal(&mut services, PER_HOUR, "horizontal".into())];
    for case in &cases {
        report(case);
    }
    bench(c, "merge", &cases, false);
    bench(c, "open+merge", &cases, true);
    let scaling: Vec<Case> =
        [1, 4, 16].iter().map(|&x| horizontal(&mut services, SCALING_BASE * x, format!("{x}x"))).collect();
    for case in &scaling {
        report(case);
    }
    bench(c, "scaling", &scaling, false);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5)).sample_size(10);
    targets = compaction
}
criterion_main!(benches);
