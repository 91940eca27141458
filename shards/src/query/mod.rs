//! What a core is asked to evaluate over its heads, and the partial results it sends back.
//! The accepting core merges the partials of every core (see `querier` in the kiln crate);
//! in a cluster, other instances' partials come over the wire (`wire`).
pub mod wire;

use crate::model::ids::{ProfileTypeId, TenantId};
use crate::model::labels::Labels;
use crate::model::selector::Matcher;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Which profiles a query may count, by source and series key (`series_key`): the querier's
/// choice, in a cluster, of which (reader, source) counts each (series, timestamp), so a
/// profile held by three replicas, or by several blocks on one store-gateway, is counted
/// once. A *source* is what holds each profile at most once: the ingester that cut a block
/// (`BlockRef::ingester`; empty for a single node's), or the instance itself for its heads.
/// A source or series absent from the filter counts none of its profiles.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyFilter {
    pub sources: FxHashMap<String, SourceKeys>,
}

/// The series of one source a query counts.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SourceKeys {
    pub series: FxHashMap<u64, Include>,
}

/// Which of one series' profiles count.
#[derive(Debug, Clone, PartialEq)]
pub enum Include {
    All,
    /// Only the profiles at these timestamps (ns), sorted and unique.
    Only(Vec<i64>),
}

impl SourceKeys {
    /// Whether the profile of series `key` at `ts_ns` counts.
    pub fn includes(&self, key: u64, ts_ns: i64) -> bool {
        match self.series.get(&key) {
            None => false,
            Some(Include::All) => true,
            Some(Include::Only(ts)) => ts.binary_search(&ts_ns).is_ok(),
        }
    }
}

impl KeyFilter {
    /// What the filter counts of `source`.
    pub fn source(&self, source: &str) -> Option<&SourceKeys> {
        self.sources.get(source)
    }

    /// Whether the profile of series `key` at `ts_ns` held by `source` counts.
    pub fn includes(&self, source: &str, key: u64, ts_ns: i64) -> bool {
        self.source(source).is_some_and(|s| s.includes(key, ts_ns))
    }
}

/// The key of a stored series, the same on every instance that holds a replica of it: its
/// tenant, labels and profile type.
pub fn series_key(tenant: &str, labels: &Labels, profile_type: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(profile_type.as_bytes(), labels.fingerprint(tenant))
}

/// Which profiles a query reads: one profile type (or any), label matchers, and an inclusive
/// time range in milliseconds.
#[derive(Debug, Clone)]
pub struct Selection {
    pub tenants: Vec<TenantId>,
    pub profile_type: Option<ProfileTypeId>,
    pub matchers: Vec<Matcher>,
    pub start_ms: i64,
    pub end_ms: i64,
    /// In a cluster: which (reader, source)'s profiles count (see `KeyFilter`); `None`: all.
    pub keys: Option<Arc<KeyFilter>>,
    /// The block epoch (`runtime::Mesh::epoch`) a reader answers at: in a cluster, the second
    /// step of a query reads the blocks its first step listed (`QueryResult::Keys::epoch`),
    /// whatever a sync changed since. `None`: the reader's current epoch.
    pub epoch: Option<u64>,
    /// In a cluster: each core also answers the blocks it read (`QueryResult::Read`), for
    /// the querier's check that no block went unread (`querier::coverage`).
    pub report_read: bool,
    /// Span profiles: only samples taken in one of these spans count (flame graphs and
    /// pprof; other queries select series and profiles as without it). `None`: every sample.
    pub spans: Option<Arc<SpanSet>>,
}

/// A set of span ids, sorted and unique (Pyroscope's `SpanSelector`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpanSet(Vec<u64>);

impl SpanSet {
    pub fn new(mut ids: Vec<u64>) -> SpanSet {
        ids.sort_unstable();
        ids.dedup();
        SpanSet(ids)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    pub fn ids(&self) -> &[u64] {
        &self.0
    }
}

/// The end of the step `ts_ms` falls in: the first boundary `start_ms + k·step_ms` at or
/// after it (SelectSeries' points, heatmap slots). In i128: no start and step a query may
/// bring can overflow it; a boundary past i64 is i64::MAX.
pub fn step_end(ts_ms: i64, start_ms: i64, step_ms: i64) -> i64 {
    let (ts, start, step) = (i128::from(ts_ms), i128::from(start_ms), i128::from(step_ms));
    let k = (ts - start + step - 1).div_euclid(step);
    i64::try_from(start + k * step).unwrap_or(i64::MAX)
}

impl Selection {
    pub fn contains_ns(&self, ts_ns: i64) -> bool {
        let ms = ts_ns.div_euclid(1_000_000);
        ms >= self.start_ms && ms <= self.end_ms
    }
}

#[derive(Debug, Clone)]
pub enum QueryRequest {
    ProfileTypes(Selection),
    LabelNames(Selection),
    LabelValues(Selection, String),
    Series(Selection, Vec<String>),
    MergeTree(Selection),
    MergeProfile(Selection),
    SelectSeries {
        sel: Selection,
        step_ms: i64,
        group_by: Vec<String>,
    },
    Stats(Selection),
    /// How much data a query would read: series, profiles, samples, bytes.
    Analyze(Selection),
    /// Every selected profile's (series key, timestamp): what a querier dedups replicas by.
    Keys(Selection),
    /// Every selected profile's total (`spans`: each of its spans' totals) with its time:
    /// the points a heatmap buckets (`SelectHeatmap`).
    Heatmap {
        sel: Selection,
        spans: bool,
    },
}

impl QueryRequest {
    pub fn selection_mut(&mut self) -> &mut Selection {
        match self {
            QueryRequest::ProfileTypes(s)
            | QueryRequest::LabelNames(s)
            | QueryRequest::LabelValues(s, _)
            | QueryRequest::Series(s, _)
            | QueryRequest::MergeTree(s)
            | QueryRequest::MergeProfile(s)
            | QueryRequest::Stats(s)
            | QueryRequest::Analyze(s)
            | QueryRequest::Keys(s) => s,
            QueryRequest::SelectSeries { sel, .. } | QueryRequest::Heatmap { sel, .. } => sel,
        }
    }

    pub fn selection(&self) -> &Selection {
        match self {
            QueryRequest::ProfileTypes(s)
            | QueryRequest::LabelNames(s)
            | QueryRequest::LabelValues(s, _)
            | QueryRequest::Series(s, _)
            | QueryRequest::MergeTree(s)
            | QueryRequest::MergeProfile(s)
            | QueryRequest::Stats(s)
            | QueryRequest::Analyze(s)
            | QueryRequest::Keys(s) => s,
            QueryRequest::SelectSeries { sel, .. } | QueryRequest::Heatmap { sel, .. } => sel,
        }
    }
}

/// One heatmap point: a profile's total (or one span's share of it) at its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeatPoint {
    pub ts_ms: i64,
    pub value: i64,
    /// The span (0: the whole profile).
    pub span: u64,
}

/// A flame tree over function names: node 0 is the root, every parent index is smaller than
/// its children's, `names[0]` is unused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlameTree {
    pub names: Vec<String>,
    /// (parent, name, self value)
    pub nodes: Vec<(u32, u32, i64)>,
}

/// One series point bucket: sum of profile totals and how many profiles fell in.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    pub sum: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Default)]
pub struct PprofPart {
    pub strings: Vec<String>,
    pub functions: Vec<crate::model::profile::Function>,
    pub mappings: Vec<crate::model::profile::Mapping>,
    pub locations: Vec<crate::model::symbols::LocationRec>,
    /// Stacks as location indices, leaf first, with their summed value.
    pub samples: Vec<(Vec<u32>, i64)>,
}

#[derive(Debug, Clone)]
pub enum QueryResult {
    Strings(Vec<String>),
    LabelSets(Vec<Labels>),
    Tree(FlameTree),
    Pprof(PprofPart),
    /// (group labels, time in ms → bucket)
    Series(Vec<(Labels, Vec<(i64, Bucket)>)>),
    Stats {
        oldest_ms: i64,
        newest_ms: i64,
        ingested: bool,
    },
    Analyze {
        series: u64,
        profiles: u64,
        samples: u64,
        bytes: u64,
    },
    /// What one source (see `KeyFilter`) holds of the selection: (series key, the timestamps
    /// in ns of its selected profiles, one per profile).
    Keys {
        source: String,
        keys: Vec<(u64, Vec<i64>)>,
        /// The reader's block epoch the answer was taken at (set by the reader for its
        /// cores; 0 from a single head or block).
        epoch: u64,
    },
    /// The ids of the blocks a core read for a query that asked (`Selection::report_read`),
    /// whether or not they held a selected series: what the querier checks against the
    /// bucket index, so that no block goes unread without the query failing
    /// (`querier::coverage`).
    Read(Vec<String>),
    /// Heatmap points per series (its labels), for `QueryRequest::Heatmap`.
    Points(Vec<(Labels, Vec<HeatPoint>)>),
}
