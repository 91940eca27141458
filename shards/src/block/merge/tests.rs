use super::*;
use crate::block::{encode, EncodeOptions, EncodedBlock};
use crate::ingester::head::tests::{folded, group};
use crate::ingester::head::TenantHead;
use crate::model::labels::Labels;
use proptest::prelude::*;
use std::collections::BTreeMap;

const IDS: [&str; 6] = [
    "01HD3X85G9BGAG4S3TKPNMFG40",
    "01HD3X85G9BGAG4S3TKPNMFG41",
    "01HD3X85G9BGAG4S3TKPNMFG42",
    "01HD3X85G9BGAG4S3TKPNMFG43",
    "01HD3X85G9BGAG4S3TKPNMFG44",
    "01HD3X85G9BGAG4S3TKPNMFG45",
];
const OUT: &str = "01HD3X85G9BGAG4S3TKPNMFG4Z";

/// A block's profiles as comparable values: per series, (time, total, stacks as text with
/// their values) in file order.
/// Span samples as (stack as text, span, value).
type Content = BTreeMap<(String, Labels), Vec<(i64, i64, Vec<(String, i64)>, Vec<(String, u64, i64)>)>>;

/// A block opened for a merge, with its profiles.parquet to fetch from.
struct Opened {
    block: super::Opened,
    bytes: Vec<u8>,
}

impl std::ops::Deref for Opened {
    type Target = super::Opened;
    fn deref(&self) -> &super::Opened {
        &self.block
    }
}

fn open(b: &EncodedBlock) -> Opened {
    Opened { block: super::Opened::from_encoded(b).unwrap(), bytes: b.profiles.clone() }
}

struct MemFetch<'a>(Vec<&'a [u8]>);

impl Fetch for MemFetch<'_> {
    fn fetch(&mut self, input: usize, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, String> {
        Ok(ranges.iter().map(|r| Bytes::copy_from_slice(&self.0[input][r.start as usize..r.end as usize])).collect())
    }
}

fn stack_text(s: &Symbols, mut node: u32) -> String {
    let mut frames = Vec::new();
    while node != 0 {
        let loc = &s.locations[s.location[node as usize] as usize];
        let name = loc.lines.first().map_or("?", |l| s.strings.get(s.functions[l.function as usize].name));
        frames.push(name.to_string());
        node = s.parent[node as usize];
    }
    frames.reverse();
    frames.join(";")
}

fn content(o: &Opened) -> Content {
    let mut out = Content::new();
    let all = 0..o.profiles.num_rows();
    let plan = o.profiles.plan(std::slice::from_ref(&all), Columns::Spans);
    let fetched: Vec<(Range<u64>, Bytes)> =
        plan.iter().map(|r| (r.clone(), Bytes::copy_from_slice(&o.bytes[r.start as usize..r.end as usize]))).collect();
    o.profiles
        .read_spans(&fetched, &[all], Columns::Spans, i64::MIN, i64::MAX, |_, si, t, total, st, v, sp| {
            let s = &o.index.series[si as usize];
            let mut samples: Vec<(String, i64)> =
                st.iter().zip(v).map(|(&id, &v)| (stack_text(&o.symbols, id), v)).collect();
            samples.sort();
            let mut spans: Vec<(String, u64, i64)> = (0..sp.stacks.len())
                .map(|k| (stack_text(&o.symbols, sp.stacks[k]), sp.spans[k], sp.values[k]))
                .collect();
            spans.sort();
            out.entry((s.profile_type.clone(), s.labels.clone())).or_default().push((t, total, samples, spans));
        })
        .unwrap();
    for rows in out.values_mut() {
        rows.sort();
    }
    out
}

fn run(blocks: &[(&EncodedBlock, &str)], opts: &EncodeOptions) -> (Opened, MergeStats) {
    let opened: Vec<Opened> = blocks.iter().map(|(b, _)| open(b)).collect();
    let inputs: Vec<Input<'_>> = opened.iter().zip(blocks).map(|(o, (_, source))| o.input(source)).collect();
    let mut fetch = MemFetch(opened.iter().map(|o| &o.bytes[..]).collect());
    let (b, stats) = merge(&inputs, &mut fetch, OUT, opts).unwrap();
    (open(&b), stats)
}

/// One profile pushed: (service, time in s, stacks).
type Push = (&'static str, i64, &'static [(&'static str, i64)]);

fn head(pushes: &[Push]) -> TenantHead {
    let mut h = TenantHead::default();
    for &(svc, t, stacks) in pushes {
        let mut p = folded(stacks, t * 1_000_000_000);
        // Every other sample in a span (of its time and place), so merges carry spans too.
        for (k, s) in p.samples.iter_mut().enumerate() {
            s.span_id = if k % 2 == 0 { (t as u64 + 1) << 8 | k as u64 } else { 0 };
        }
        h.append("t", &p, &group(&p, &[("__name__", "process_cpu"), ("service_name", svc)]));
    }
    h
}

fn block(pushes: &[Push], id: &str, opts: &EncodeOptions) -> EncodedBlock {
    encode(&head(pushes), id, opts).unwrap()
}

const A: &[(&str, i64)] = &[("main;a;b", 3), ("main;a;c", 1)];
const B: &[(&str, i64)] = &[("main;x", 5), ("main;a;b", 2), ("main;a;b;d", 1)];
const C: &[(&str, i64)] = &[("other;q", 1), ("other;q;r", 2)];

#[test]
fn merging_one_sources_blocks_equals_one_block_of_all_their_profiles() {
    let opts = EncodeOptions { row_group_rows: 3, ..Default::default() };
    let first: Vec<Push> =
        (0..10).map(|i| (if i % 2 == 0 { "api" } else { "db" }, i, if i % 3 == 0 { A } else { B })).collect();
    let second: Vec<Push> =
        (5..20).map(|i| (if i % 3 == 0 { "web" } else { "api" }, i, if i % 2 == 0 { C } else { A })).collect();
    // The same (series, time) twice within one source: two profiles, both kept.
    let third: Vec<Push> = vec![("api", 6, B), ("api", 6, C)];
    let all: Vec<Push> = first.iter().chain(&second).chain(&third).copied().collect();
    let (b1, b2, b3) = (block(&first, IDS[0], &opts), block(&second, IDS[1], &opts), block(&third, IDS[2], &opts));
    let (out, stats) = run(&[(&b1, ""), (&b2, ""), (&b3, "")], &opts);
    assert_eq!(content(&out), content(&open(&block(&all, IDS[3], &opts))));
    assert_eq!(stats.rows_in, all.len() as u64);
    assert_eq!(stats.rows_out, all.len() as u64);
    assert_eq!(stats.copies_dropped, 0);
    let m = &out.meta;
    assert_eq!(m.stats.num_profiles, all.len() as u64);
    assert_eq!(m.compaction.level, 2);
    assert_eq!(m.compaction.sources, IDS[..3].to_vec());
    assert_eq!(m.compaction.parents, IDS[..3].to_vec());
    assert_eq!((m.min_time, m.max_time), (0, 19_000));
    // Only the stacks the rows use, each once: the union of the inputs' distinct stacks.
    assert_eq!(
        m.stats.num_stacks, 9,
        "main, main;a, main;a;b, main;a;c, main;x, main;a;b;d, other, other;q, other;q;r"
    );
}

#[test]
fn replica_copies_are_kept_once_and_a_replica_that_missed_a_write_loses_nothing() {
    let opts = EncodeOptions::default();
    let pushes: Vec<Push> =
        (0..30).map(|i| (["api", "db", "web"][i as usize % 3], i, [A, B, C][i as usize % 3])).collect();
    // Replica "b" missed every fifth push; "c" missed the last ten.
    let b_has: Vec<Push> = pushes.iter().enumerate().filter(|(i, _)| i % 5 != 0).map(|(_, p)| *p).collect();
    let c_has: Vec<Push> = pushes[..20].to_vec();
    let (ra, rb, rc) = (block(&pushes, IDS[0], &opts), block(&b_has, IDS[1], &opts), block(&c_has, IDS[2], &opts));
    // Any input order gives the same content.
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let all = [(&ra, "ingester-a"), (&rb, "ingester-b"), (&rc, "ingester-c")];
        let inputs: Vec<(&EncodedBlock, &str)> = order.iter().map(|&i| all[i]).collect();
        let (out, stats) = run(&inputs, &opts);
        assert_eq!(content(&out), content(&open(&ra)), "order {order:?}");
        assert_eq!(stats.rows_out, 30);
        assert_eq!(stats.copies_dropped, (b_has.len() + c_has.len()) as u64);
    }
}

#[test]
fn the_source_holding_more_profiles_at_a_time_wins() {
    let opts = EncodeOptions::default();
    // Two distinct profiles of "api" at t=1 in source x; y holds only one of them.
    let x = block(&[("api", 1, A), ("api", 1, B)], IDS[0], &opts);
    let y = block(&[("api", 1, A)], IDS[1], &opts);
    for inputs in [[(&x, "x"), (&y, "y")], [(&y, "y"), (&x, "x")]] {
        let (out, stats) = run(&inputs, &opts);
        assert_eq!(content(&out), content(&open(&x)));
        assert_eq!(stats.copies_dropped, 1);
    }
}

#[test]
fn buffers_stay_flat_as_the_inputs_grow() {
    let opts = EncodeOptions { row_group_rows: 8, ..Default::default() };
    let peak = |n: i64| {
        let a: Vec<Push> = (0..n).map(|i| ("api", i, if i % 2 == 0 { A } else { B })).collect();
        let b: Vec<Push> = (0..n).map(|i| ("db", i, C)).collect();
        let (x, y) = (block(&a, IDS[0], &opts), block(&b, IDS[1], &opts));
        run(&[(&x, ""), (&y, "")], &opts).1.peak_buffer_bytes
    };
    let (small, large) = (peak(50), peak(2000));
    assert!(large <= small * 2, "peak buffer grew from {small} to {large} bytes with 40× the rows");
}

#[test]
fn damage_is_an_error_naming_the_block() {
    let opts = EncodeOptions::default();
    let x = block(&[("api", 1, A), ("api", 2, B)], IDS[0], &opts);
    let o = open(&x);
    let input =
        Input { id: IDS[0], meta: &o.meta, index: &o.index, symbols: &o.symbols, profiles: &o.profiles, source: "" };
    let mut bytes = o.bytes.clone();
    let all = 0..o.profiles.num_rows();
    let chunk = o.profiles.plan(std::slice::from_ref(&all), true)[0].clone();
    bytes[(chunk.start + chunk.end) as usize / 2] ^= 0xff;
    let err = merge(std::slice::from_ref(&input), &mut MemFetch(vec![&bytes]), OUT, &opts).unwrap_err();
    assert!(err.to_string().contains(IDS[0]), "{err}");
    struct Failing;
    impl Fetch for Failing {
        fn fetch(&mut self, _: usize, _: &[Range<u64>]) -> Result<Vec<Bytes>, String> {
            Err("the bucket is away".into())
        }
    }
    let err = merge(&[input], &mut Failing, OUT, &opts).unwrap_err();
    assert!(err.to_string().contains("the bucket is away"), "{err}");
}

#[test]
fn an_index_and_a_profiles_file_that_disagree_are_refused_not_merged_short() {
    let opts = EncodeOptions::default();
    let big = open(&block(&[("api", 1, A), ("api", 2, B), ("db", 3, C)], IDS[0], &opts));
    let small = open(&block(&[("api", 1, A)], IDS[1], &opts));
    // The big block's index over the small block's rows: rows missing.
    let input = Input {
        id: IDS[0],
        meta: &big.meta,
        index: &big.index,
        symbols: &big.symbols,
        profiles: &small.profiles,
        source: "",
    };
    let err = merge(&[input], &mut MemFetch(vec![&small.bytes]), OUT, &opts).unwrap_err();
    assert!(err.to_string().contains("rows"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random profiles, each written by a random non-empty set of replicas (sources), plus
    /// profiles only one source holds twice at one time: the merge keeps each profile once
    /// and every distinct profile of a source.
    #[test]
    fn merge_keeps_one_copy_of_each_profile(
        profiles in proptest::collection::vec((0usize..3, 0i64..12, 0usize..3, 1u8..8), 1..60),
        group_rows in 1usize..10,
    ) {
        let opts = EncodeOptions { row_group_rows: group_rows, ..Default::default() };
        let svcs = ["api", "db", "web"];
        let stacks = [A, B, C];
        // Per source, its pushes; one (series, time) per profile so copies are well defined.
        let mut seen = std::collections::BTreeSet::new();
        let mut per_source: Vec<Vec<Push>> = vec![Vec::new(); 3];
        let mut want: Vec<Push> = Vec::new();
        for (svc, t, st, replicas) in profiles {
            if !seen.insert((svc, t)) {
                continue;
            }
            let p = (svcs[svc], t, stacks[st]);
            want.push(p);
            for (r, pushes) in per_source.iter_mut().enumerate() {
                if replicas & (1 << r) != 0 {
                    pushes.push(p);
                }
            }
        }
        let blocks: Vec<(EncodedBlock, &str)> = per_source
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(r, p)| (block(p, IDS[r], &opts), ["r0", "r1", "r2"][r]))
            .collect();
        let inputs: Vec<(&EncodedBlock, &str)> = blocks.iter().map(|(b, s)| (b, *s)).collect();
        let (out, stats) = run(&inputs, &opts);
        prop_assert_eq!(content(&out), content(&open(&block(&want, IDS[4], &opts))));
        prop_assert_eq!(stats.rows_out, want.len() as u64);
        prop_assert_eq!(stats.rows_in - stats.rows_out, stats.copies_dropped);
    }
}

#[test]
fn a_merge_into_a_file_writes_the_same_bytes_as_one_in_memory() {
    let opts = EncodeOptions { row_group_rows: 2, ..Default::default() };
    let first: Vec<Push> = (0..9).map(|i| ("api", i, if i % 2 == 0 { A } else { B })).collect();
    let second: Vec<Push> = (4..13).map(|i| ("db", i, C)).collect();
    let (b1, b2) = (block(&first, IDS[0], &opts), block(&second, IDS[1], &opts));
    let opened = [open(&b1), open(&b2)];
    let inputs: Vec<Input<'_>> = opened.iter().map(|o| o.input("")).collect();
    let fetch = || MemFetch(opened.iter().map(|o| &o.bytes[..]).collect());
    let (mem, _) = merge(&inputs, &mut fetch(), OUT, &opts).unwrap();
    let path = std::env::temp_dir().join(format!("kiln-merge-into-{}", std::process::id()));
    let file = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let (block, file, stats) = merge_into(&inputs, &mut fetch(), OUT, &opts, file).unwrap();
    drop(file);
    let written = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(block.profiles.is_empty(), "the profiles are in the file only");
    assert!(written == mem.profiles, "{} bytes in the file, {} in memory", written.len(), mem.profiles.len());
    // The meta lists the file's size, and every other file is the same.
    assert_eq!(block.meta, mem.meta);
    assert_eq!((block.index, block.symbols, block.meta_json), (mem.index, mem.symbols, mem.meta_json));
    assert_eq!(stats.rows_out, (first.len() + second.len()) as u64);
}
