//! Queries and partial results on the wire, between the instances of a cluster: a querier
//! sends a `QueryRequest` to each replica and merges the `QueryResult`s it sends back, as it
//! merges its own cores'. One varint codec (`kiln_io::codec`); every count is checked against
//! the bytes left before anything is allocated for it, so a hostile message costs memory in
//! proportion to its size, and every error says where it is.
use super::{
    Bucket, FlameTree, HeatPoint, Include, KeyFilter, PprofPart, QueryRequest, QueryResult, Selection, SourceKeys,
    SpanSet,
};
use crate::model::ids::{ProfileTypeId, TenantId};
use crate::model::labels::Labels;
use crate::model::profile::{Function, Line, Mapping};
use crate::model::selector::{MatchOp, Matcher};
use crate::model::symbols::LocationRec;
use kiln_io::codec::{Reader, Writer};
use std::sync::Arc;

/// Changes whenever the encoding does; a message of another version is refused.
pub const VERSION: u8 = 4;

type Res<T> = Result<T, String>;

fn e(err: kiln_io::codec::CodecError) -> String {
    err.to_string()
}

pub fn encode_request(q: &QueryRequest) -> Vec<u8> {
    let mut w = Writer::with_capacity(256);
    w.byte(VERSION);
    let (tag, sel) = match q {
        QueryRequest::ProfileTypes(s) => (0, s),
        QueryRequest::LabelNames(s) => (1, s),
        QueryRequest::LabelValues(s, _) => (2, s),
        QueryRequest::Series(s, _) => (3, s),
        QueryRequest::MergeTree(s) => (4, s),
        QueryRequest::MergeProfile(s) => (5, s),
        QueryRequest::SelectSeries { sel, .. } => (6, sel),
        QueryRequest::Stats(s) => (7, s),
        QueryRequest::Analyze(s) => (8, s),
        QueryRequest::Keys(s) => (9, s),
        QueryRequest::Heatmap { sel, .. } => (10, sel),
    };
    w.byte(tag);
    selection(&mut w, sel);
    match q {
        QueryRequest::LabelValues(_, name) => w.str(name),
        QueryRequest::Series(_, names) => strings(&mut w, names),
        QueryRequest::SelectSeries { step_ms, group_by, .. } => {
            w.i(*step_ms);
            strings(&mut w, group_by);
        }
        QueryRequest::Heatmap { spans, .. } => w.byte(u8::from(*spans)),
        _ => {}
    }
    w.0
}

pub fn decode_request(b: &[u8]) -> Res<QueryRequest> {
    let mut r = Reader::new(b);
    version(&mut r)?;
    let tag = r.byte().map_err(e)?;
    let sel = read_selection(&mut r)?;
    let q = match tag {
        0 => QueryRequest::ProfileTypes(sel),
        1 => QueryRequest::LabelNames(sel),
        2 => QueryRequest::LabelValues(sel, r.str().map_err(e)?.to_string()),
        3 => QueryRequest::Series(sel, read_strings(&mut r)?),
        4 => QueryRequest::MergeTree(sel),
        5 => QueryRequest::MergeProfile(sel),
        6 => QueryRequest::SelectSeries { sel, step_ms: r.i().map_err(e)?, group_by: read_strings(&mut r)? },
        7 => QueryRequest::Stats(sel),
        8 => QueryRequest::Analyze(sel),
        9 => QueryRequest::Keys(sel),
        10 => QueryRequest::Heatmap {
            sel,
            spans: match r.byte().map_err(e)? {
                0 => false,
                1 => true,
                b => return Err(format!("heatmap points of kind {b}")),
            },
        },
        t => return Err(format!("unknown query kind {t}")),
    };
    r.finish().map_err(e)?;
    Ok(q)
}

fn version(r: &mut Reader<'_>) -> Res<()> {
    match r.byte().map_err(e)? {
        VERSION => Ok(()),
        v => Err(format!("query wire version {v}, this instance speaks {VERSION}")),
    }
}

fn strings(w: &mut Writer, v: &[String]) {
    w.u(v.len() as u64);
    for s in v {
        w.str(s);
    }
}

fn read_strings(r: &mut Reader<'_>) -> Res<Vec<String>> {
    let n = r.count(1).map_err(e)?;
    // Sized once (the count is at most the bytes left): collecting from a fallible iterator
    // would grow by doubling and, for a moment, hold both blocks.
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.str().map_err(e)?.to_string());
    }
    Ok(out)
}

fn selection(w: &mut Writer, s: &Selection) {
    w.u(s.tenants.len() as u64);
    for t in &s.tenants {
        w.str(t.as_str());
    }
    w.str(s.profile_type.as_ref().map_or("", |p| p.as_str()));
    w.u(s.matchers.len() as u64);
    for m in &s.matchers {
        w.str(&m.name);
        w.byte(match m.op {
            MatchOp::Equal => 0,
            MatchOp::NotEqual => 1,
            MatchOp::Regex => 2,
            MatchOp::NotRegex => 3,
        });
        w.str(&m.value);
    }
    w.i(s.start_ms);
    w.i(s.end_ms);
    match &s.keys {
        None => w.byte(0),
        Some(k) => {
            w.byte(1);
            w.u(k.sources.len() as u64);
            for (source, keys) in &k.sources {
                w.str(source);
                w.u(keys.series.len() as u64);
                for (key, inc) in &keys.series {
                    w.u64_le(*key);
                    match inc {
                        Include::All => w.byte(0),
                        Include::Only(ts) => {
                            w.byte(1);
                            timestamps(w, ts);
                        }
                    }
                }
            }
        }
    }
    // Flags: 1, an epoch follows; 2, report the blocks read; 4, a span set follows. An
    // older reader refuses the span flag rather than answer without the filter.
    let flags = u8::from(s.epoch.is_some()) | if s.report_read { 2 } else { 0 } | if s.spans.is_some() { 4 } else { 0 };
    w.byte(flags);
    if let Some(epoch) = s.epoch {
        w.u(epoch);
    }
    if let Some(spans) = &s.spans {
        w.u(spans.ids().len() as u64);
        for &id in spans.ids() {
            w.u64_le(id);
        }
    }
}

fn read_selection(r: &mut Reader<'_>) -> Res<Selection> {
    // A tenant takes at least two bytes (its length and one character).
    let n = r.count(2).map_err(e)?;
    let mut tenants = Vec::with_capacity(n);
    for _ in 0..n {
        tenants.push(TenantId::parse(r.str().map_err(e)?).map_err(|x| x.to_string())?);
    }
    let pt = r.str().map_err(e)?;
    let profile_type = if pt.is_empty() { None } else { Some(ProfileTypeId::parse(pt).map_err(|x| x.to_string())?) };
    let n = r.count(3).map_err(e)?;
    let mut matchers = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str().map_err(e)?;
        let op = match r.byte().map_err(e)? {
            0 => MatchOp::Equal,
            1 => MatchOp::NotEqual,
            2 => MatchOp::Regex,
            3 => MatchOp::NotRegex,
            o => return Err(format!("unknown matcher operator {o}")),
        };
        matchers.push(Matcher::new(name, op, r.str().map_err(e)?)?);
        // Each regex is compiled as it is read: the selector's limit holds here too.
        crate::model::selector::check_regex_count(&matchers)?;
    }
    let (start_ms, end_ms) = (r.i().map_err(e)?, r.i().map_err(e)?);
    let keys = match r.byte().map_err(e)? {
        0 => None,
        1 => {
            // A source takes at least two bytes (its name's length and its count of series).
            let sources = r.count(2).map_err(e)?;
            // Not reserved: a filter holds a few sources, and a hostile count costs nothing.
            let mut k = KeyFilter::default();
            for _ in 0..sources {
                let source = r.str().map_err(e)?.to_string();
                let n = r.count(9).map_err(e)?;
                let mut keys = SourceKeys::default();
                keys.series.reserve(n);
                for _ in 0..n {
                    let key = r.u64_le().map_err(e)?;
                    let inc = match r.byte().map_err(e)? {
                        0 => Include::All,
                        1 => {
                            let ts = read_timestamps(r)?;
                            if ts.windows(2).any(|w| w[0] >= w[1]) {
                                return Err("a key filter's timestamps must be sorted and unique".into());
                            }
                            Include::Only(ts)
                        }
                        t => return Err(format!("unknown key filter kind {t}")),
                    };
                    keys.series.insert(key, inc);
                }
                if k.sources.insert(source, keys).is_some() {
                    return Err("a key filter names a source twice".into());
                }
            }
            Some(Arc::new(k))
        }
        t => return Err(format!("unknown key filter presence {t}")),
    };
    let flags = r.byte().map_err(e)?;
    if flags > 7 {
        return Err(format!("unknown selection flags {flags}"));
    }
    let epoch = if flags & 1 == 1 { Some(r.u().map_err(e)?) } else { None };
    let report_read = flags & 2 == 2;
    let spans = if flags & 4 == 4 {
        let n = r.count(8).map_err(e)?;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(r.u64_le().map_err(e)?);
        }
        Some(Arc::new(SpanSet::new(ids)))
    } else {
        None
    };
    Ok(Selection { tenants, profile_type, matchers, start_ms, end_ms, keys, epoch, report_read, spans })
}

/// Timestamps as a count and zig-zag deltas (sorted ones take a byte or two each).
fn timestamps(w: &mut Writer, ts: &[i64]) {
    w.u(ts.len() as u64);
    let mut prev = 0i64;
    for &t in ts {
        w.i(t.wrapping_sub(prev));
        prev = t;
    }
}

fn read_timestamps(r: &mut Reader<'_>) -> Res<Vec<i64>> {
    let n = r.count(1).map_err(e)?;
    let mut out = Vec::with_capacity(n);
    let mut prev = 0i64;
    for _ in 0..n {
        prev = prev.wrapping_add(r.i().map_err(e)?);
        out.push(prev);
    }
    Ok(out)
}

fn labels(w: &mut Writer, l: &Labels) {
    w.u(l.len() as u64);
    for (k, v) in l.iter() {
        w.str(k);
        w.str(v);
    }
}

fn read_labels(r: &mut Reader<'_>) -> Res<Labels> {
    let n = r.count(2).map_err(e)?;
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        pairs.push((r.str().map_err(e)?.to_string(), r.str().map_err(e)?.to_string()));
    }
    Ok(Labels::from_pairs(pairs))
}

pub fn encode_results(parts: &[QueryResult]) -> Vec<u8> {
    let mut w = Writer::with_capacity(1024);
    w.byte(VERSION);
    w.u(parts.len() as u64);
    for p in parts {
        result(&mut w, p);
    }
    w.0
}

pub fn decode_results(b: &[u8]) -> Res<Vec<QueryResult>> {
    let mut r = Reader::new(b);
    version(&mut r)?;
    // Every kind of result takes at least two bytes (its tag and a count or value).
    let n = r.count(2).map_err(e)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(read_result(&mut r)?);
    }
    r.finish().map_err(e)?;
    Ok(out)
}

fn result(w: &mut Writer, p: &QueryResult) {
    match p {
        QueryResult::Strings(v) => {
            w.byte(0);
            strings(w, v);
        }
        QueryResult::LabelSets(v) => {
            w.byte(1);
            w.u(v.len() as u64);
            v.iter().for_each(|l| labels(w, l));
        }
        QueryResult::Tree(t) => {
            w.byte(2);
            strings(w, &t.names);
            w.u(t.nodes.len() as u64);
            for (parent, name, value) in &t.nodes {
                w.u(u64::from(*parent));
                w.u(u64::from(*name));
                w.i(*value);
            }
        }
        QueryResult::Pprof(p) => {
            w.byte(3);
            pprof(w, p);
        }
        QueryResult::Series(groups) => {
            w.byte(4);
            w.u(groups.len() as u64);
            for (l, points) in groups {
                labels(w, l);
                w.u(points.len() as u64);
                for (t, b) in points {
                    w.i(*t);
                    w.u64_le(b.sum.to_bits());
                    w.u(b.count);
                }
            }
        }
        QueryResult::Stats { oldest_ms, newest_ms, ingested } => {
            w.byte(5);
            w.i(*oldest_ms);
            w.i(*newest_ms);
            w.byte(u8::from(*ingested));
        }
        QueryResult::Analyze { series, profiles, samples, bytes } => {
            w.byte(6);
            for v in [series, profiles, samples, bytes] {
                w.u(*v);
            }
        }
        QueryResult::Keys { source, keys, epoch } => {
            w.byte(7);
            w.u(*epoch);
            w.str(source);
            w.u(keys.len() as u64);
            for (k, ts) in keys {
                w.u64_le(*k);
                timestamps(w, ts);
            }
        }
        QueryResult::Read(ids) => {
            w.byte(8);
            strings(w, ids);
        }
        QueryResult::Points(series) => {
            w.byte(9);
            w.u(series.len() as u64);
            for (l, points) in series {
                labels(w, l);
                w.u(points.len() as u64);
                for p in points {
                    w.i(p.ts_ms);
                    w.i(p.value);
                    w.u64_le(p.span);
                }
            }
        }
    }
}

fn read_result(r: &mut Reader<'_>) -> Res<QueryResult> {
    Ok(match r.byte().map_err(e)? {
        0 => QueryResult::Strings(read_strings(r)?),
        1 => {
            let n = r.count(1).map_err(e)?;
            let mut sets = Vec::with_capacity(n);
            for _ in 0..n {
                sets.push(read_labels(r)?);
            }
            QueryResult::LabelSets(sets)
        }
        2 => {
            let names = read_strings(r)?;
            let n = r.count(3).map_err(e)?;
            let mut nodes = Vec::with_capacity(n);
            for i in 0..n {
                let (parent, name, value) = (r.u32().map_err(e)?, r.u32().map_err(e)?, r.i().map_err(e)?);
                // A tree's parents come before their children and its names exist: what the
                // merger relies on.
                if (i > 0 && parent as usize >= i) || name as usize >= names.len().max(1) {
                    return Err(format!("flame tree node {i}: parent {parent} or name {name} out of order"));
                }
                nodes.push((parent, name, value));
            }
            QueryResult::Tree(FlameTree { names, nodes })
        }
        3 => QueryResult::Pprof(read_pprof(r)?),
        4 => {
            let n = r.count(2).map_err(e)?;
            let mut groups = Vec::with_capacity(n);
            for _ in 0..n {
                let l = read_labels(r)?;
                let m = r.count(10).map_err(e)?;
                let mut points = Vec::with_capacity(m);
                for _ in 0..m {
                    let t = r.i().map_err(e)?;
                    let sum = f64::from_bits(r.u64_le().map_err(e)?);
                    points.push((t, Bucket { sum, count: r.u().map_err(e)? }));
                }
                groups.push((l, points));
            }
            QueryResult::Series(groups)
        }
        5 => QueryResult::Stats {
            oldest_ms: r.i().map_err(e)?,
            newest_ms: r.i().map_err(e)?,
            ingested: r.byte().map_err(e)? != 0,
        },
        6 => QueryResult::Analyze {
            series: r.u().map_err(e)?,
            profiles: r.u().map_err(e)?,
            samples: r.u().map_err(e)?,
            bytes: r.u().map_err(e)?,
        },
        7 => {
            let epoch = r.u().map_err(e)?;
            let source = r.str().map_err(e)?.to_string();
            let n = r.count(9).map_err(e)?;
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                keys.push((r.u64_le().map_err(e)?, read_timestamps(r)?));
            }
            QueryResult::Keys { source, keys, epoch }
        }
        8 => QueryResult::Read(read_strings(r)?),
        9 => {
            let n = r.count(2).map_err(e)?;
            let mut series = Vec::with_capacity(n);
            for _ in 0..n {
                let l = read_labels(r)?;
                // A point takes at least ten bytes: two varints and its span.
                let m = r.count(10).map_err(e)?;
                let mut points = Vec::with_capacity(m);
                for _ in 0..m {
                    let (ts_ms, value) = (r.i().map_err(e)?, r.i().map_err(e)?);
                    points.push(HeatPoint { ts_ms, value, span: r.u64_le().map_err(e)? });
                }
                series.push((l, points));
            }
            QueryResult::Points(series)
        }
        t => return Err(format!("unknown query result kind {t}")),
    })
}

fn pprof(w: &mut Writer, p: &PprofPart) {
    strings(w, &p.strings);
    w.u(p.functions.len() as u64);
    for f in &p.functions {
        w.u(u64::from(f.name));
        w.u(u64::from(f.system_name));
        w.u(u64::from(f.filename));
        w.i(f.start_line);
    }
    w.u(p.mappings.len() as u64);
    for m in &p.mappings {
        w.u(m.memory_start);
        w.u(m.memory_limit);
        w.u(m.file_offset);
        w.u(u64::from(m.filename));
        w.u(u64::from(m.build_id));
        w.byte(m.flag_bits());
    }
    w.u(p.locations.len() as u64);
    for l in &p.locations {
        w.u(u64::from(l.mapping));
        w.u(l.address);
        w.u(l.lines.len() as u64);
        for line in l.lines.iter() {
            w.u(u64::from(line.function));
            w.i(line.line);
        }
    }
    w.u(p.samples.len() as u64);
    for (locs, v) in &p.samples {
        w.u(locs.len() as u64);
        for l in locs {
            w.u(u64::from(*l));
        }
        w.i(*v);
    }
}

/// A pprof part, with every index checked against its table (the merger indexes by them).
fn read_pprof(r: &mut Reader<'_>) -> Res<PprofPart> {
    let strings = read_strings(r)?;
    let ns = strings.len() as u32;
    let s = |i: u32| if i < ns.max(1) { Ok(i) } else { Err(format!("string {i} of {ns}")) };
    let n = r.count(4).map_err(e)?;
    let mut functions = Vec::with_capacity(n);
    for _ in 0..n {
        functions.push(Function {
            name: s(r.u32().map_err(e)?)?,
            system_name: s(r.u32().map_err(e)?)?,
            filename: s(r.u32().map_err(e)?)?,
            start_line: r.i().map_err(e)?,
        });
    }
    let n = r.count(6).map_err(e)?;
    let mut mappings = Vec::with_capacity(n);
    for _ in 0..n {
        let (memory_start, memory_limit, file_offset) = (r.u().map_err(e)?, r.u().map_err(e)?, r.u().map_err(e)?);
        let (filename, build_id) = (s(r.u32().map_err(e)?)?, s(r.u32().map_err(e)?)?);
        let mut m = Mapping { memory_start, memory_limit, file_offset, filename, build_id, ..Default::default() };
        m.set_flag_bits(u64::from(r.byte().map_err(e)?));
        mappings.push(m);
    }
    let n = r.count(3).map_err(e)?;
    let mut locations = Vec::with_capacity(n);
    for _ in 0..n {
        let mapping = r.u32().map_err(e)?;
        if mapping as usize >= mappings.len().max(1) {
            return Err(format!("mapping {mapping} of {}", mappings.len()));
        }
        let address = r.u().map_err(e)?;
        let m = r.count(2).map_err(e)?;
        let mut lines = Vec::with_capacity(m);
        for _ in 0..m {
            let function = r.u32().map_err(e)?;
            if function as usize >= functions.len() {
                return Err(format!("function {function} of {}", functions.len()));
            }
            lines.push(Line { function, line: r.i().map_err(e)? });
        }
        locations.push(LocationRec { mapping, address, lines: lines.into() });
    }
    let n = r.count(2).map_err(e)?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let m = r.count(1).map_err(e)?;
        let mut locs = Vec::with_capacity(m);
        for _ in 0..m {
            let l = r.u32().map_err(e)?;
            if l as usize >= locations.len() {
                return Err(format!("location {l} of {}", locations.len()));
            }
            locs.push(l);
        }
        samples.push((locs, r.i().map_err(e)?));
    }
    Ok(PprofPart { strings, functions, mappings, locations, samples })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::selector::parse_selector;
    use proptest::prelude::*;

    fn sel(keys: Option<KeyFilter>) -> Selection {
        Selection {
            tenants: vec![TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap()],
            profile_type: Some(ProfileTypeId::parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds").unwrap()),
            matchers: parse_selector(r#"{service_name=~"app.*", env!="dev"}"#).unwrap(),
            start_ms: -5,
            end_ms: 1_700_000_000_000,
            keys: keys.map(Arc::new),
            epoch: Some(3),
            report_read: true,
            spans: None,
        }
    }

    fn same_request(a: &QueryRequest, b: &QueryRequest) -> bool {
        // Matchers hold compiled regexes: compare what they say.
        let (sa, sb) = (a.selection(), b.selection());
        let m = |s: &Selection| s.matchers.iter().map(|m| (m.name.clone(), m.op, m.value.clone())).collect::<Vec<_>>();
        std::mem::discriminant(a) == std::mem::discriminant(b)
            && sa.tenants == sb.tenants
            && sa.profile_type == sb.profile_type
            && m(sa) == m(sb)
            && (sa.start_ms, sa.end_ms) == (sb.start_ms, sb.end_ms)
            && sa.keys == sb.keys
            && format!("{a:?}").len() == format!("{b:?}").len()
    }

    #[test]
    fn every_request_kind_roundtrips() {
        let mut k = KeyFilter::default();
        let a = k.sources.entry("ingester-a".into()).or_default();
        a.series.insert(7, Include::All);
        a.series.insert(u64::MAX, Include::Only(vec![-3, 0, 1_700_000_000_000_000_000]));
        k.sources.entry(String::new()).or_default().series.insert(7, Include::Only(vec![5]));
        let reqs = [
            QueryRequest::ProfileTypes(sel(None)),
            QueryRequest::LabelNames(sel(None)),
            QueryRequest::LabelValues(sel(None), "service_name".into()),
            QueryRequest::Series(sel(None), vec!["a".into(), "".into()]),
            QueryRequest::MergeTree(sel(Some(k.clone()))),
            QueryRequest::MergeProfile(sel(Some(k.clone()))),
            QueryRequest::SelectSeries { sel: sel(Some(k)), step_ms: 15_000, group_by: vec!["pod".into()] },
            QueryRequest::Stats(sel(None)),
            QueryRequest::Analyze(sel(None)),
            QueryRequest::Keys(sel(None)),
            QueryRequest::Heatmap { sel: sel(None), spans: true },
            QueryRequest::Heatmap { sel: sel(None), spans: false },
        ];
        for q in &reqs {
            let back = decode_request(&encode_request(q)).unwrap();
            assert!(same_request(q, &back), "{q:?}\n{back:?}");
        }
        // A span filter travels with the selection; a heatmap's kind of points too.
        let mut s = sel(None);
        s.spans = Some(Arc::new(SpanSet::new(vec![u64::MAX, 1, 7, 1])));
        let back = decode_request(&encode_request(&QueryRequest::Heatmap { sel: s.clone(), spans: true })).unwrap();
        assert_eq!(back.selection().spans.as_deref().map(SpanSet::ids), Some(&[1, 7, u64::MAX][..]));
        assert!(matches!(back, QueryRequest::Heatmap { spans: true, .. }));
        let points = QueryResult::Points(vec![(
            Labels::from_pairs([("pod", "a")]),
            vec![HeatPoint { ts_ms: -1, value: i64::MIN, span: 0 }, HeatPoint { ts_ms: 5, value: 9, span: u64::MAX }],
        )]);
        let back = decode_results(&encode_results(std::slice::from_ref(&points))).unwrap();
        assert_eq!(format!("{back:?}"), format!("{:?}", [points]));
    }

    #[test]
    fn hostile_requests_are_refused_with_where() {
        let good = encode_request(&QueryRequest::Keys(sel(None)));
        for cut in 0..good.len() {
            assert!(decode_request(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = good.clone();
        bad[0] = 9;
        assert!(decode_request(&bad).unwrap_err().contains("version"));
        // A count of a billion matchers in a short message fails before allocating.
        let mut w = Writer::with_capacity(16);
        w.byte(VERSION);
        w.byte(4);
        w.u(0);
        w.str("");
        w.u(1 << 30);
        assert!(decode_request(&w.0).unwrap_err().contains("count"));
        // A selection of more regexes than a selector may hold (a peer's own encoder would
        // never send one): refused as the one too many is read.
        let mut many = sel(None);
        many.matchers = (0..=crate::model::selector::MAX_REGEX_MATCHERS)
            .map(|i| Matcher::new(format!("l{i}"), MatchOp::Regex, "a.*").unwrap())
            .collect();
        let e = decode_request(&encode_request(&QueryRequest::MergeTree(many))).unwrap_err();
        assert!(e.contains("regex matchers"), "{e}");
    }

    fn arb_results() -> impl Strategy<Value = Vec<QueryResult>> {
        let strings = prop::collection::vec("[a-z]{0,4}", 0..4);
        let keys =
            ("[a-z]{0,4}", prop::collection::vec((any::<u64>(), prop::collection::vec(any::<i64>(), 0..5)), 0..4))
                .prop_map(|(source, keys)| QueryResult::Keys { source, keys, epoch: 7 });
        let series = prop::collection::vec(
            (
                prop::collection::vec(("[a-z]{1,3}", "[a-z]{0,3}"), 0..3),
                prop::collection::vec((any::<i64>(), -1e9f64..1e9, any::<u64>()), 0..3),
            ),
            0..3,
        )
        .prop_map(|g| {
            QueryResult::Series(
                g.into_iter()
                    .map(|(l, p)| {
                        (
                            Labels::from_pairs(l),
                            p.into_iter().map(|(t, sum, count)| (t, Bucket { sum, count })).collect(),
                        )
                    })
                    .collect(),
            )
        });
        let tree = (1usize..6, any::<i64>()).prop_map(|(n, v)| {
            QueryResult::Tree(FlameTree {
                names: (0..n).map(|i| format!("f{i}")).collect(),
                nodes: (0..n as u32).map(|i| (i.saturating_sub(1), i, v)).collect(),
            })
        });
        let read = prop::collection::vec("[0-9A-Z]{0,26}", 0..4).prop_map(QueryResult::Read);
        let one = prop_oneof![
            strings.prop_map(QueryResult::Strings),
            keys,
            read,
            series,
            tree,
            (any::<i64>(), any::<i64>(), any::<bool>())
                .prop_map(|(oldest_ms, newest_ms, ingested)| QueryResult::Stats { oldest_ms, newest_ms, ingested }),
        ];
        prop::collection::vec(one, 0..4)
    }

    proptest! {
        #[test]
        fn results_roundtrip(parts in arb_results()) {
            let back = decode_results(&encode_results(&parts)).unwrap();
            prop_assert_eq!(format!("{parts:?}"), format!("{back:?}"));
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(b in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_results(&b);
            let _ = decode_request(&b);
        }
    }

    #[test]
    fn pprof_parts_roundtrip_and_bad_indices_are_refused() {
        let p = PprofPart {
            strings: vec!["".into(), "main".into(), "a.go".into()],
            functions: vec![Function { name: 1, system_name: 1, filename: 2, start_line: 3 }],
            mappings: vec![
                Mapping::default(),
                Mapping { memory_start: 4, has_inline_frames: true, ..Default::default() },
            ],
            locations: vec![LocationRec {
                mapping: 1,
                address: 0x10,
                lines: vec![Line { function: 0, line: 9 }].into(),
            }],
            samples: vec![(vec![0, 0], -5)],
        };
        let b = encode_results(&[QueryResult::Pprof(p.clone())]);
        let back = decode_results(&b).unwrap();
        assert_eq!(format!("{:?}", [QueryResult::Pprof(p.clone())]), format!("{back:?}"));
        let mut bad = p;
        bad.samples[0].0[0] = 1;
        assert!(decode_results(&encode_results(&[QueryResult::Pprof(bad)])).unwrap_err().contains("location 1"));
    }
}
