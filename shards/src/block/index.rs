//! `index.tsdb`: a block's series (label sets) and where their rows lie in profiles.parquet.
//!
//! Series are ordered by (profile type, labels), which is also the order of their rows in
//! profiles.parquet: the series of one profile type are adjacent, so a query for one type
//! reads one contiguous run of rows. A series' rows are `first_row .. first_row + rows`,
//! sorted by time, and `first_row` of series i+1 is the end of series i (rows start at 0).
//! The byte layout is in docs/FORMAT.md ("index.tsdb").
use super::codec::{self, Dec, Enc};
use super::FormatError;
use crate::model::labels::Labels;
use std::collections::BTreeMap;
use std::ops::Range;

const MAGIC: &[u8; 4] = b"KIDX";
pub const VERSION: u8 = 1;
const FILE: &str = super::INDEX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSeries {
    pub labels: Labels,
    pub profile_type: String,
    /// The series' first row in profiles.parquet.
    pub first_row: u64,
    pub rows: u32,
    /// Time of its oldest and newest profile, inclusive.
    pub min_ns: i64,
    pub max_ns: i64,
}

impl IndexSeries {
    pub fn row_range(&self) -> Range<u64> {
        self.first_row..self.first_row + u64::from(self.rows)
    }
}

/// A decoded (or freshly built) index. Invariants, checked by [`BlockIndex::new`]: series
/// strictly ascending by (profile type, labels); rows contiguous from row 0;
/// `min_ns <= max_ns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIndex {
    pub series: Vec<IndexSeries>,
    /// Profile type → its run of series (adjacent, by the sort order).
    by_type: BTreeMap<String, Range<u32>>,
    /// 0..series.len(): `by_profile_type` hands out sub-slices of it.
    ids: Vec<u32>,
}

impl BlockIndex {
    /// Checks the invariants and builds the by-profile-type lookup.
    pub fn new(series: Vec<IndexSeries>) -> Result<BlockIndex, FormatError> {
        let bad = |i: usize, what: String| FormatError::Corrupt {
            file: FILE,
            offset: 0,
            what: format!("series {i}: {what}"),
        };
        if series.len() > u32::MAX as usize {
            return Err(bad(series.len(), "more than 2^32 series".into()));
        }
        let mut next_row = 0u64;
        let mut by_type: BTreeMap<String, Range<u32>> = BTreeMap::new();
        for (i, s) in series.iter().enumerate() {
            if s.first_row != next_row {
                return Err(bad(i, format!("first row {} but the previous series end at row {next_row}", s.first_row)));
            }
            next_row += u64::from(s.rows);
            if s.min_ns > s.max_ns {
                return Err(bad(i, format!("min time {} after max time {}", s.min_ns, s.max_ns)));
            }
            if i > 0 {
                let p = &series[i - 1];
                if (&p.profile_type, &p.labels) >= (&s.profile_type, &s.labels) {
                    return Err(bad(i, "not after the previous series in (profile type, labels) order".into()));
                }
            }
            let i = i as u32;
            match by_type.get_mut(&s.profile_type) {
                Some(r) => r.end = i + 1,
                None => {
                    by_type.insert(s.profile_type.clone(), i..i + 1);
                }
            }
        }
        let ids = (0..series.len() as u32).collect();
        Ok(BlockIndex { series, by_type, ids })
    }

    /// Indices of the series of profile type `pt` (ascending; empty if none).
    pub fn by_profile_type(&self, pt: &str) -> &[u32] {
        match self.by_type.get(pt) {
            Some(r) => &self.ids[r.start as usize..r.end as usize],
            None => &[],
        }
    }

    /// The profile types present, ascending.
    pub fn profile_types(&self) -> impl Iterator<Item = &str> {
        self.by_type.keys().map(String::as_str)
    }

    /// Rows of profiles.parquet the index covers.
    pub fn total_rows(&self) -> u64 {
        self.series.last().map_or(0, |s| s.first_row + u64::from(s.rows))
    }
}

/// Encodes an index. Label names, values and profile types are stored once each in a sorted
/// symbol table; series refer to them by number.
pub fn encode(index: &BlockIndex) -> Vec<u8> {
    let mut symbols: Vec<&str> = Vec::new();
    for s in &index.series {
        symbols.push(&s.profile_type);
        for (k, v) in s.labels.iter() {
            symbols.push(k);
            symbols.push(v);
        }
    }
    symbols.sort_unstable();
    symbols.dedup();
    let sym = |s: &str| symbols.binary_search(&s).expect("every string was collected") as u64;
    let mut e = Enc::default();
    e.u(symbols.len() as u64);
    for s in &symbols {
        e.str(s);
    }
    e.u(index.series.len() as u64);
    for s in &index.series {
        e.u(s.labels.len() as u64);
        for (k, v) in s.labels.iter() {
            e.u(sym(k));
            e.u(sym(v));
        }
        e.u(sym(&s.profile_type));
        e.u(u64::from(s.rows));
        e.i(s.min_ns);
        // Never negative (min <= max); as u64 it is exact for any i64 pair.
        e.u(s.max_ns.wrapping_sub(s.min_ns) as u64);
    }
    codec::seal(MAGIC, VERSION, &e.0)
}

/// Decodes and checks an index: frame and checksum, every symbol reference, the label order
/// within each series and every [`BlockIndex`] invariant.
pub fn decode(bytes: &[u8]) -> Result<BlockIndex, FormatError> {
    let body = codec::open(FILE, MAGIC, VERSION, bytes)?;
    let mut d = Dec::new(FILE, "", body, codec::FRAME_HEAD);
    let n = d.count("symbol", 1)?;
    let mut symbols: Vec<&str> = Vec::with_capacity(n);
    for _ in 0..n {
        symbols.push(d.str()?);
    }
    // A series takes at least 5 bytes: #labels, type, rows, min, span.
    let n = d.count("series", 5)?;
    let mut series = Vec::with_capacity(n);
    let mut first_row = 0u64;
    for i in 0..n {
        let nl = d.count("label", 2)?;
        let mut pairs: Vec<(String, String)> = Vec::with_capacity(nl);
        for _ in 0..nl {
            let k = symbol(&mut d, &symbols)?;
            let v = symbol(&mut d, &symbols)?;
            if pairs.last().is_some_and(|(p, _)| p.as_str() >= k) {
                return Err(d.err(format!("series {i}: label name {k:?} not after the previous one")));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        let profile_type = symbol(&mut d, &symbols)?.to_string();
        let rows = d.u32("row count")?;
        let min_ns = d.i()?;
        let span = d.u()?;
        let max_ns = i64::try_from(span)
            .ok()
            .and_then(|s| min_ns.checked_add(s))
            .ok_or_else(|| d.err(format!("series {i}: time span {span} from {min_ns} overflows")))?;
        series.push(IndexSeries {
            // Already sorted and unique: from_pairs keeps them as they are.
            labels: Labels::from_pairs(pairs),
            profile_type,
            first_row,
            rows,
            min_ns,
            max_ns,
        });
        first_row += u64::from(rows);
    }
    d.finish()?;
    BlockIndex::new(series)
}

fn symbol<'a>(d: &mut Dec<'_>, symbols: &[&'a str]) -> Result<&'a str, FormatError> {
    let i = d.u()?;
    match usize::try_from(i).ok().and_then(|i| symbols.get(i)) {
        Some(s) => Ok(s),
        None => Err(d.err(format!("symbol {i} out of range ({} symbols)", symbols.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Random valid indexes: label sets over a small alphabet so that types and names repeat.
    pub(crate) fn arb_index() -> impl Strategy<Value = BlockIndex> {
        let labels = proptest::collection::btree_map("[a-c_]{1,3}", "[a-c0-9é]{0,4}", 0..4);
        let series = (labels, "[xy]:[a-c]{0,2}", 0u32..5, any::<i64>(), any::<u32>());
        proptest::collection::vec(series, 0..20).prop_map(|v| {
            let mut v: Vec<_> = v
                .into_iter()
                .map(|(l, pt, rows, min, span)| {
                    (pt, Labels::from_pairs(l), rows, min, min.saturating_add(i64::from(span)))
                })
                .collect();
            v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            v.dedup_by(|a, b| (&a.0, &a.1) == (&b.0, &b.1));
            let mut first_row = 0;
            let series = v
                .into_iter()
                .map(|(profile_type, labels, rows, min_ns, max_ns)| {
                    let s = IndexSeries { labels, profile_type, first_row, rows, min_ns, max_ns };
                    first_row += u64::from(rows);
                    s
                })
                .collect();
            BlockIndex::new(series).unwrap()
        })
    }

    #[test]
    fn lookup_by_profile_type() {
        let s = |pt: &str, svc: &str, first_row, rows| IndexSeries {
            labels: Labels::from_pairs([("service_name", svc)]),
            profile_type: pt.into(),
            first_row,
            rows,
            min_ns: 5,
            max_ns: 9,
        };
        let idx = BlockIndex::new(vec![s("a", "x", 0, 2), s("a", "y", 2, 1), s("b", "x", 3, 4)]).unwrap();
        assert_eq!(idx.by_profile_type("a"), &[0, 1]);
        assert_eq!(idx.by_profile_type("b"), &[2]);
        assert!(idx.by_profile_type("c").is_empty());
        assert_eq!(idx.total_rows(), 7);
        assert_eq!(decode(&encode(&idx)).unwrap(), idx);
        // Out of order, overlapping rows, or inverted times are refused.
        assert!(BlockIndex::new(vec![s("b", "x", 0, 2), s("a", "y", 2, 1)]).is_err());
        assert!(BlockIndex::new(vec![s("a", "x", 0, 2), s("a", "y", 1, 1)]).is_err());
        let mut inverted = s("a", "x", 0, 1);
        inverted.min_ns = 10;
        assert!(BlockIndex::new(vec![inverted]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(idx in arb_index()) {
            prop_assert_eq!(decode(&encode(&idx)).unwrap(), idx);
        }

        #[test]
        fn damage_is_an_error(idx in arb_index(), at in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
            let bytes = encode(&idx);
            let mut flipped = bytes.clone();
            flipped[at.index(bytes.len())] ^= 1 << bit;
            prop_assert!(decode(&flipped).is_err());
            prop_assert!(decode(&bytes[..cut.index(bytes.len())]).is_err());
            // Past the checksum, the parser itself must stay panic-free.
            let _ = decode(&crate::block::codec::reseal(flipped));
            let _ = decode(&crate::block::codec::reseal(bytes[..cut.index(bytes.len())].to_vec()));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let mut framed = b"KIDX\x01".to_vec();
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(&[0; 4]);
            let _ = decode(&crate::block::codec::reseal(framed));
        }
    }
}
