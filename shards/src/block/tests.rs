//! Whole-block round trips: a head encoded, then read back the way a querier does (meta,
//! index, symbols, parquet footer from a tail, plan, fetch the planned ranges, load series).
use super::*;
use crate::ingester::head::tests::{folded, group};
use proptest::prelude::*;

const ULID: &str = "01HD3X85G9BGAG4S3TKPNMFG4Z";

/// One profile of a head series, in the head's append order.
type Prof = (i64, i64, Vec<(u32, i64)>);

/// The head's profiles of each series, keyed by labels, stable-sorted by time: what the block
/// must give back.
fn expected(head: &TenantHead) -> std::collections::BTreeMap<crate::model::labels::Labels, Vec<Prof>> {
    head.series
        .iter()
        .map(|s| {
            let mut v: Vec<Prof> = (0..s.timestamps.len())
                .map(|i| {
                    let (a, b) = (s.offsets[i] as usize, s.offsets[i + 1] as usize);
                    (
                        s.timestamps[i],
                        s.totals[i],
                        s.stacks[a..b].iter().copied().zip(s.values[a..b].iter().copied()).collect(),
                    )
                })
                .collect();
            v.sort_by_key(|p| p.0);
            (s.labels.clone(), v)
        })
        .collect()
}

/// Everything a reader needs, decoded from an encoded block.
struct Opened {
    index: index::BlockIndex,
    file: profiles::ProfilesFile,
    profiles: Vec<u8>,
}

fn open(b: &EncodedBlock) -> Opened {
    let m = meta::decode(&b.meta_json).unwrap();
    assert_eq!(m, b.meta);
    for f in &m.files {
        let len = match f.rel_path.as_str() {
            INDEX => b.index.len(),
            PROFILES => b.profiles.len(),
            SYMBOLS => b.symbols.len(),
            other => panic!("unexpected file {other}"),
        };
        assert_eq!(f.size_bytes, len as u64);
    }
    let index = index::decode(&b.index).unwrap();
    let len = b.profiles.len() as u64;
    let tail_len = profiles::ProfilesFile::TAIL_GUESS.min(len) as usize;
    let file = match profiles::ProfilesFile::from_tail(len, &b.profiles[b.profiles.len() - tail_len..]) {
        Ok(f) => f,
        Err(FormatError::NeedTail(n)) => {
            profiles::ProfilesFile::from_tail(len, &b.profiles[b.profiles.len() - n as usize..]).unwrap()
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(file.num_rows(), index.total_rows());
    assert_eq!(m.stats.num_profiles, file.num_rows());
    Opened { index, file, profiles: b.profiles.clone() }
}

impl Opened {
    /// Plans, "fetches" exactly the planned ranges, loads. Returns the series and the bytes fetched.
    fn load(&self, selected: &[u32], with_samples: bool, min_ns: i64, max_ns: i64) -> (Vec<Series>, u64) {
        let plan = self.file.plan(&rows_to_read(&self.index, selected, &self.file, min_ns, max_ns), with_samples);
        let fetched: Vec<(Range<u64>, Bytes)> = plan
            .iter()
            .map(|r| (r.clone(), Bytes::copy_from_slice(&self.profiles[r.start as usize..r.end as usize])))
            .collect();
        let bytes = plan.iter().map(|r| r.end - r.start).sum();
        (load_series(&self.index, selected, &self.file, &fetched, with_samples, min_ns, max_ns).unwrap(), bytes)
    }
}

/// Checks loaded series against the head's.
fn check(
    head: &TenantHead,
    got: &[Series],
    selected: &[u32],
    idx: &index::BlockIndex,
    with_samples: bool,
    min: i64,
    max: i64,
) {
    let want = expected(head);
    assert_eq!(got.len(), selected.len());
    for (s, &i) in got.iter().zip(selected) {
        assert_eq!(s.labels, idx.series[i as usize].labels);
        assert_eq!(s.profile_type, idx.series[i as usize].profile_type);
        let w: Vec<&Prof> = want[&s.labels].iter().filter(|p| p.0 >= min && p.0 <= max).collect();
        assert_eq!(s.timestamps, w.iter().map(|p| p.0).collect::<Vec<_>>(), "{}", s.labels);
        assert_eq!(s.totals, w.iter().map(|p| p.1).collect::<Vec<_>>());
        assert_eq!(s.offsets.len(), s.timestamps.len() + 1);
        assert_eq!(s.offsets[0], 0);
        for (k, p) in w.iter().enumerate() {
            let (a, b) = (s.offsets[k] as usize, s.offsets[k + 1] as usize);
            let samples: Vec<(u32, i64)> = s.stacks[a..b].iter().copied().zip(s.values[a..b].iter().copied()).collect();
            if with_samples {
                assert_eq!(samples, p.2, "{} profile {k}", s.labels);
            } else {
                assert!(samples.is_empty());
            }
        }
    }
}

/// A head of several services, two profile types, profiles out of time order, a profile
/// whose values are all zero, and stacks shared between series.
fn sample_head(profiles_per_series: i64) -> TenantHead {
    let mut h = TenantHead::default();
    let stacks: [&[(&str, i64)]; 4] = [
        &[("main;a;b", 3), ("main;a;c", 1)],
        &[("main;x", 5), ("main;a;b", 2), ("main;a;b;d;e;f", 1)],
        &[("main;zero", 0)],
        &[("main;a", 7), ("other;q", 1), ("other;q;r", 2)],
    ];
    for i in 0..profiles_per_series {
        for (svc, name) in [("api", "process_cpu"), ("db", "process_cpu"), ("api", "memory"), ("web", "memory")] {
            // Times go backwards for "db" to check the per-series time sort.
            let t = if svc == "db" { (profiles_per_series - i) * 1_000_000_000 } else { i * 1_000_000_000 + 17 };
            let p = folded(stacks[(i as usize + svc.len()) % 4], t);
            h.append("t", &p, &group(&p, &[("__name__", name), ("service_name", svc)]));
        }
    }
    h
}

#[test]
fn whole_block_round_trip() {
    let head = sample_head(10);
    let b = encode(&head, ULID, &EncodeOptions::default()).unwrap();
    let o = open(&b);
    assert_eq!(o.index.series.len(), 4);
    assert_eq!(b.meta.stats.num_series, 4);
    assert_eq!(b.meta.stats.num_profiles, 40);
    assert_eq!(b.meta.stats.num_samples, head.samples);
    assert_eq!(b.meta.stats.num_stacks, head.symbols.stack_count() as u64 - 1);
    assert_eq!(b.meta.min_time, 0);
    assert_eq!(b.meta.max_time, 10_000);
    assert_eq!(b.meta.compaction, meta::Compaction { level: 1, sources: vec![ULID.into()], parents: Vec::new() });
    assert_eq!(b.files().map(|f| f.0), [INDEX, PROFILES, SYMBOLS, META]);
    symdb::tests::assert_same(&symdb::decode(&b.symbols).unwrap(), &head.symbols);
    // Sorted by (profile type, labels): memory before process_cpu.
    let types: Vec<&str> = o.index.profile_types().collect();
    assert_eq!(types, ["memory:samples:count::", "process_cpu:samples:count::"]);
    assert_eq!(o.index.by_profile_type("memory:samples:count::"), &[0, 1]);
    assert_eq!(o.index.by_profile_type("process_cpu:samples:count::"), &[2, 3]);

    let all: Vec<u32> = (0..4).collect();
    for with_samples in [true, false] {
        let (got, _) = o.load(&all, with_samples, i64::MIN, i64::MAX);
        check(&head, &got, &all, &o.index, with_samples, i64::MIN, i64::MAX);
    }
    // A time sub-range, and a subset of series in another order with a duplicate.
    let (lo, hi) = (3_000_000_000, 6_000_000_017);
    let (got, _) = o.load(&all, true, lo, hi);
    check(&head, &got, &all, &o.index, true, lo, hi);
    let subset = [3, 1, 3];
    let (got, _) = o.load(&subset, true, lo, hi);
    check(&head, &got, &subset, &o.index, true, lo, hi);
}

#[test]
fn plan_fetches_only_the_row_groups_needed() {
    let head = sample_head(200);
    let b = encode(&head, ULID, &EncodeOptions { row_group_rows: 16, zstd_level: 3, ..Default::default() }).unwrap();
    let o = open(&b);
    assert_eq!(o.file.num_row_groups(), 50);
    let (got, bytes) = o.load(&[2], true, i64::MIN, i64::MAX);
    check(&head, &got, &[2], &o.index, true, i64::MIN, i64::MAX);
    // One series of four: about a quarter of the row groups (plus at most two shared ones).
    assert!(bytes * 3 < b.profiles.len() as u64, "{bytes} of {}", b.profiles.len());
    let (_, head_only) = o.load(&[2], false, i64::MIN, i64::MAX);
    assert!(head_only < bytes, "{head_only} vs {bytes}");
    let (got, _) = o.load(&[0, 1, 2, 3], true, 50_000_000_000, 60_000_000_000);
    check(&head, &got, &[0, 1, 2, 3], &o.index, true, 50_000_000_000, 60_000_000_000);
}

#[test]
fn refuses_what_it_cannot_encode() {
    let head = sample_head(1);
    assert!(matches!(encode(&head, "nope", &EncodeOptions::default()), Err(FormatError::Encode(_))));
    assert!(encode(&head, ULID, &EncodeOptions { row_group_rows: 0, zstd_level: 3, ..Default::default() }).is_err());
    assert!(encode(&head, ULID, &EncodeOptions { row_group_rows: 10, zstd_level: 99, ..Default::default() }).is_err());
    assert!(encode(&TenantHead::default(), ULID, &EncodeOptions::default()).is_err());
}

#[test]
fn load_series_checks_rows_against_the_index() {
    let head = sample_head(5);
    let b = encode(&head, ULID, &EncodeOptions::default()).unwrap();
    let mut o = open(&b);
    assert!(matches!(
        load_series(&o.index, &[9], &o.file, &[], true, i64::MIN, i64::MAX),
        Err(FormatError::Request(_))
    ));
    // An index whose series claim each other's rows: detected, not silently mixed up.
    let mut series = o.index.series.clone();
    series[0].rows += 1;
    series[1].first_row += 1;
    series[1].rows -= 1;
    o.index = index::BlockIndex::new(series).unwrap();
    let plan = o.file.plan(&rows_of(&o.index, &[0]), true);
    let fetched: Vec<(Range<u64>, Bytes)> = plan
        .iter()
        .map(|r| (r.clone(), Bytes::copy_from_slice(&o.profiles[r.start as usize..r.end as usize])))
        .collect();
    let e = load_series(&o.index, &[0], &o.file, &fetched, true, i64::MIN, i64::MAX).unwrap_err();
    assert!(matches!(e, FormatError::Mismatch(_)), "{e}");
}

/// Random heads: a few services and types, random stacks over a small frame alphabet (so
/// stacks share prefixes), random timestamps (duplicates and negatives included).
fn arb_head() -> impl Strategy<Value = TenantHead> {
    let frame = prop::sample::select(vec!["a", "b", "c", "d", "e"]);
    let stack = (proptest::collection::vec(frame, 1..6), 0i64..5).prop_map(|(f, v)| (f.join(";"), v));
    let profile = (0usize..3, 0usize..2, -5i64..20, proptest::collection::vec(stack, 0..6));
    proptest::collection::vec(profile, 1..40).prop_map(|profiles| {
        let mut h = TenantHead::default();
        for (svc, name, t, stacks) in profiles {
            let stacks: Vec<(&str, i64)> = stacks.iter().map(|(s, v)| (s.as_str(), *v)).collect();
            let p = folded(&stacks, t * 1_000_000_007);
            let svc = ["s0", "s1", "s2"][svc];
            h.append("t", &p, &group(&p, &[("__name__", ["cpu", "mem"][name]), ("service_name", svc)]));
        }
        h
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_blocks_round_trip(
        head in arb_head(),
        rg in 1usize..8,
        pick in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        lo in -10i64..25,
        span in 0i64..30,
        with_samples in any::<bool>(),
    ) {
        let b = encode(&head, ULID, &EncodeOptions { row_group_rows: rg, zstd_level: 1, ..Default::default() }).unwrap();
        let o = open(&b);
        symdb::tests::assert_same(&symdb::decode(&b.symbols).unwrap(), &head.symbols);
        let all: Vec<u32> = (0..o.index.series.len() as u32).collect();
        let (got, _) = o.load(&all, true, i64::MIN, i64::MAX);
        check(&head, &got, &all, &o.index, true, i64::MIN, i64::MAX);
        let subset: Vec<u32> = pick.iter().map(|p| p.index(all.len()) as u32).collect();
        let (min, max) = (lo * 1_000_000_007, (lo + span) * 1_000_000_007);
        let (got, _) = o.load(&subset, with_samples, min, max);
        check(&head, &got, &subset, &o.index, with_samples, min, max);
    }
}

#[test]
fn a_narrow_time_range_reads_only_the_row_groups_it_needs() {
    // One series over 200 s, 8 profiles per row group: a 10 s range touches one or two groups.
    let head = sample_head(200);
    let opts = EncodeOptions { row_group_rows: 8, ..Default::default() };
    let b = encode(&head, ULID, &opts).unwrap();
    let o = open(&b);
    let api = (0..o.index.series.len() as u32)
        .find(|&i| {
            let s = &o.index.series[i as usize];
            s.labels.get("service_name") == Some("api") && s.profile_type.starts_with("process_cpu")
        })
        .unwrap();
    let (min, max) = (100_000_000_000, 110_000_000_000);
    let (_, all) = o.load(&[api], true, i64::MIN, i64::MAX);
    let (got, narrow) = o.load(&[api], true, min, max);
    check(&head, &got, &[api], &o.index, true, min, max);
    assert_eq!(got[0].timestamps.len(), 10);
    assert!(narrow * 5 < all, "a 10 s range fetched {narrow} of {all} bytes");
}

/// Span samples answer span queries from the head and, after the cut, from the block alike:
/// only the samples taken in the asked spans count, and queries without spans are as before.
#[test]
fn span_queries_read_the_same_from_the_head_and_the_block() {
    use crate::eval::HeadView;
    use crate::query::{QueryRequest, QueryResult, Selection, SpanSet};
    let mut head = TenantHead::default();
    for t in 0..6i64 {
        let mut p = folded(&[("main;a", 1), ("main;b", 2), ("main;a;c", 4)], t * 1_000_000_000);
        // Sample k of profile t in span 10t+k, but the last in no span; a repeated stack in
        // two spans stays two span samples.
        for (k, s) in p.samples.iter_mut().enumerate() {
            s.span_id = if k < 2 { (10 * t + k as i64) as u64 + 1 } else { 0 };
        }
        head.append("t", &p, &group(&p, &[("__name__", "x"), ("service_name", "s")]));
    }
    let sel = |spans: Option<Vec<u64>>| Selection {
        tenants: vec!["t".into()],
        profile_type: Some("x:samples:count::".into()),
        matchers: vec![],
        start_ms: 0,
        end_ms: 10_000,
        keys: None,
        epoch: None,
        report_read: false,
        spans: spans.map(|s| std::sync::Arc::new(SpanSet::new(s))),
    };
    let total = |r: QueryResult| match r {
        QueryResult::Tree(t) => t.nodes.iter().map(|n| n.2).sum::<i64>(),
        other => panic!("{other:?}"),
    };
    let b = encode(&head, ULID, &EncodeOptions { row_group_rows: 2, ..Default::default() }).unwrap();
    let o = open(&b);
    let symbols = symdb::decode(&b.symbols).unwrap();
    let all: Vec<u32> = (0..o.index.series.len() as u32).collect();
    for (spans, want) in [
        (None, 6 * 7),
        // Spans 1 (profile 0, "main;a") and 12 (profile 1, "main;b").
        (Some(vec![1, 12]), 1 + 2),
        (Some(vec![51]), 1),
        (Some(vec![]), 0),
        (Some(vec![999]), 0),
    ] {
        let s = sel(spans.clone());
        assert_eq!(total(head.query("t", &QueryRequest::MergeTree(s.clone()))), want, "head, spans {spans:?}");
        let columns = if spans.is_some() { profiles::Columns::Spans } else { profiles::Columns::Samples };
        let plan = o.file.plan(&rows_to_read(&o.index, &all, &o.file, 0, i64::MAX), columns);
        let fetched: Vec<(Range<u64>, Bytes)> = plan
            .iter()
            .map(|r| (r.clone(), Bytes::copy_from_slice(&o.profiles[r.start as usize..r.end as usize])))
            .collect();
        let series = load_series(&o.index, &all, &o.file, &fetched, columns, 0, i64::MAX).unwrap();
        let view = HeadView { tenant: "t", source: "", symbols: &symbols, series: &series, by_profile_type: None };
        assert_eq!(total(view.query(&QueryRequest::MergeTree(s))), want, "block, spans {spans:?}");
    }
    // A refused push's rows leave with their span samples.
    let mut rows = Vec::new();
    let p = {
        let mut p = folded(&[("main;z", 8)], 7_000_000_000);
        p.samples[0].span_id = 500;
        p
    };
    head.append_tracked("t", &p, &group(&p, &[("__name__", "x"), ("service_name", "s")]), &mut rows);
    assert_eq!(total(head.query("t", &QueryRequest::MergeTree(sel(Some(vec![500]))))), 8);
    head.remove_rows(&mut rows);
    assert_eq!(total(head.query("t", &QueryRequest::MergeTree(sel(Some(vec![500]))))), 0);
    assert_eq!(total(head.query("t", &QueryRequest::MergeTree(sel(Some(vec![1]))))), 1);
    assert_eq!(head.span_samples, 12);
}
