//! Blocks: one tenant's head frozen into four files under `<tenant>/<ulid>/`:
//!
//! - `meta.json` ([`meta`]): id, time range, counts, sizes of the other files;
//! - `index.tsdb` ([`index`]): the series (labels, profile type) and their rows;
//! - `profiles.parquet` ([`profiles`]): one row per profile, its samples as stack ids and values;
//! - `symbols.symdb` ([`symdb`]): strings, functions, mappings, locations and the stack tree.
//!
//! Stack ids in profiles.parquet are the head's own stack node ids, so the decoded symbols
//! resolve them without any remapping. Series are ordered by (profile type, labels), rows by
//! series then time; docs/FORMAT.md ("Blocks") has every byte.
//!
//! Encoding is pure (bytes in memory, no I/O): the caller decides where the files go.
//! Decoding checks everything it reads, so a damaged file is a [`FormatError`], never a panic
//! or an out-of-range index later.
mod codec;
pub mod index;
pub mod merge;
pub mod meta;
pub mod profiles;
pub mod symdb;

use crate::eval::Series;
use crate::ingester::head::TenantHead;
use bytes::Bytes;
use std::ops::Range;

pub const META: &str = "meta.json";
pub const INDEX: &str = "index.tsdb";
pub const PROFILES: &str = "profiles.parquet";

/// Object path of one of a block's files.
pub fn object_path(tenant: &str, id: &str, file: &str) -> String {
    format!("{tenant}/{id}/{file}")
}
pub const SYMBOLS: &str = "symbols.symdb";

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Bytes that do not decode as the format says, at an offset of the file (or of a
    /// decompressed section, which `what` then names).
    #[error("{file}: {what} (at byte {offset})")]
    Corrupt { file: &'static str, offset: u64, what: String },
    #[error("{file}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is damaged")]
    Checksum { file: &'static str, stored: u32, computed: u32 },
    #[error("{file}: format version {found} is not supported (this build reads version {supported})")]
    Version { file: &'static str, found: u32, supported: u32 },
    /// meta.json is not valid JSON of the expected shape, or breaks a rule.
    #[error("meta.json: {0}")]
    Meta(String),
    /// The parquet footer is longer than the tail given: fetch this many bytes from the end
    /// of profiles.parquet and call `ProfilesFile::from_tail` again.
    #[error("profiles.parquet: the footer needs the last {0} bytes of the file")]
    NeedTail(u64),
    /// A range `ProfilesFile::plan` asked for was not among the fetched ones.
    #[error("profiles.parquet: bytes {}..{} are needed but were not fetched", .0.start, .0.end)]
    NotFetched(Range<u64>),
    /// Column data of profiles.parquet that does not decode, with its row group and column.
    #[error("profiles.parquet: {0}")]
    Profiles(String),
    /// index.tsdb and profiles.parquet disagree (e.g. a row of a series the index does not
    /// place there).
    #[error("{INDEX} and {PROFILES} disagree: {0}")]
    Mismatch(String),
    /// The caller asked for something the block cannot answer (rows or series out of range,
    /// fetched bytes that do not match their range).
    #[error("bad block request: {0}")]
    Request(String),
    /// The head or the options cannot be encoded (invalid block id, empty head, bad options).
    #[error("cannot encode block: {0}")]
    Encode(String),
}

#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// Rows (profiles) per parquet row group at most: the unit a query fetches.
    pub row_group_rows: usize,
    /// Samples per row group at most (a single larger profile gets a group of its own).
    pub row_group_samples: usize,
    /// zstd level of the parquet pages and the symdb sections.
    pub zstd_level: i32,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions { row_group_rows: 16384, row_group_samples: 65536, zstd_level: 3 }
    }
}

/// The four files of a block, in memory, and the meta they were described with.
#[derive(Debug, Clone)]
pub struct EncodedBlock {
    pub meta: meta::BlockMeta,
    pub meta_json: Vec<u8>,
    pub index: Vec<u8>,
    pub profiles: Vec<u8>,
    pub symbols: Vec<u8>,
}

impl EncodedBlock {
    /// The four files as (name in the block folder, bytes); meta.json last, so a writer that
    /// goes in this order publishes the meta only once the files it describes exist.
    pub fn files(&self) -> [(&'static str, &[u8]); 4] {
        [(INDEX, &self.index), (PROFILES, &self.profiles), (SYMBOLS, &self.symbols), (META, &self.meta_json)]
    }
}

/// Encodes a whole head. `ulid` is the block id string (26 chars Crockford base32, given by the caller).
///
/// A head without profiles is refused (`FormatError::Encode`): a block has a time range.
pub fn encode(head: &TenantHead, ulid: &str, opts: &EncodeOptions) -> Result<EncodedBlock, FormatError> {
    let mut e = Encoder::new(head, ulid, opts)?;
    while e.step()? {}
    e.finish()
}

/// `encode` in steps of one parquet row group each, so that the core encoding a block can
/// serve its inbox between steps instead of stalling for the whole block.
pub struct Encoder<'h> {
    head: &'h TenantHead,
    ulid: String,
    opts: EncodeOptions,
    rows: Vec<profiles::ProfileRow<'h>>,
    groups: Vec<Range<usize>>,
    next: usize,
    index: index::BlockIndex,
    samples: u64,
    min_ns: i64,
    max_ns: i64,
    writer: profiles::Writer,
}

impl<'h> Encoder<'h> {
    pub fn new(head: &'h TenantHead, ulid: &str, opts: &EncodeOptions) -> Result<Self, FormatError> {
        if !meta::valid_ulid(ulid) {
            return Err(FormatError::Encode(format!("block id {ulid:?} is not a ULID")));
        }
        // Series in (profile type, labels) order: one profile type's rows are adjacent.
        let mut order: Vec<usize> = (0..head.series.len()).filter(|&i| !head.series[i].timestamps.is_empty()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&head.series[a], &head.series[b]);
            (&a.profile_type, &a.labels).cmp(&(&b.profile_type, &b.labels))
        });
        if order.is_empty() {
            return Err(FormatError::Encode("the head holds no profiles".into()));
        }
        let mut rows: Vec<profiles::ProfileRow<'h>> = Vec::with_capacity(head.profiles as usize);
        let mut series = Vec::with_capacity(order.len());
        let mut samples = 0u64;
        let mut by_time: Vec<usize> = Vec::new();
        for (si, &h) in order.iter().enumerate() {
            let s = &head.series[h];
            // Profiles usually arrive in time order; a stable sort keeps equal times as appended.
            by_time.clear();
            by_time.extend(0..s.timestamps.len());
            by_time.sort_by_key(|&i| s.timestamps[i]);
            let first_row = rows.len() as u64;
            for &i in &by_time {
                let (a, b) = (s.offsets[i] as usize, s.offsets[i + 1] as usize);
                samples += (b - a) as u64;
                let spans = s.spans.as_deref().map_or_else(profiles::SpanRow::default, |sp| {
                    let (c, d) = (sp.offsets[i] as usize, sp.offsets[i + 1] as usize);
                    profiles::SpanRow { stacks: &sp.stacks[c..d], values: &sp.values[c..d], spans: &sp.spans[c..d] }
                });
                rows.push(profiles::ProfileRow {
                    series: si as u32,
                    time_nanos: s.timestamps[i],
                    total: s.totals[i],
                    stacks: &s.stacks[a..b],
                    values: &s.values[a..b],
                    spans,
                });
            }
            let n = u32::try_from(by_time.len())
                .map_err(|_| FormatError::Encode(format!("series {} has more than 2^32 profiles", s.labels)))?;
            series.push(index::IndexSeries {
                labels: s.labels.clone(),
                profile_type: s.profile_type.clone(),
                first_row,
                rows: n,
                min_ns: s.timestamps[by_time[0]],
                max_ns: s.timestamps[*by_time.last().expect("non-empty")],
            });
        }
        let (min_ns, max_ns) =
            series.iter().fold((i64::MAX, i64::MIN), |(lo, hi), s| (lo.min(s.min_ns), hi.max(s.max_ns)));
        let index = index::BlockIndex::new(series)?;
        profiles::check(&rows, opts)?;
        let groups = profiles::row_groups(&rows, opts);
        let writer = profiles::Writer::new(opts)?;
        Ok(Encoder {
            head,
            ulid: ulid.to_string(),
            opts: opts.clone(),
            rows,
            groups,
            next: 0,
            index,
            samples,
            min_ns,
            max_ns,
            writer,
        })
    }

    /// Writes the next row group; `false` once every group is written.
    pub fn step(&mut self) -> Result<bool, FormatError> {
        if let Some(g) = self.groups.get(self.next) {
            self.writer.write_group(&self.rows[g.clone()])?;
            self.next += 1;
        }
        Ok(self.next < self.groups.len())
    }

    /// The index, the symbols and the meta, once every row group is written.
    pub fn finish(mut self) -> Result<EncodedBlock, FormatError> {
        while self.step()? {}
        let profiles_bytes = self.writer.finish()?;
        let index_bytes = index::encode(&self.index);
        let symbols_bytes = symdb::encode_with(&self.head.symbols, self.opts.zstd_level);
        let stats = meta::BlockStats {
            num_series: self.index.series.len() as u64,
            num_profiles: self.rows.len() as u64,
            num_samples: self.samples,
            num_stacks: self.head.symbols.stack_count() as u64 - 1,
        };
        let compaction = meta::Compaction { level: 1, sources: vec![self.ulid.clone()], parents: Vec::new() };
        let files = Files {
            index: index_bytes,
            profiles_len: profiles_bytes.len() as u64,
            profiles: profiles_bytes,
            symbols: symbols_bytes,
        };
        Ok(assemble(&self.ulid, (self.min_ns, self.max_ns), stats, compaction, files))
    }
}

/// A block's files as encoded: `profiles` may be empty where the file was written elsewhere
/// (`merge::merge_into`), `profiles_len` is its size either way.
struct Files {
    index: Vec<u8>,
    profiles: Vec<u8>,
    profiles_len: u64,
    symbols: Vec<u8>,
}

/// A block's files and the meta.json that describes them (times in ns, inclusive).
fn assemble(
    ulid: &str,
    (min_ns, max_ns): (i64, i64),
    stats: meta::BlockStats,
    compaction: meta::Compaction,
    Files { index, profiles, profiles_len, symbols }: Files,
) -> EncodedBlock {
    let file = |rel_path: &str, size_bytes: u64| meta::FileMeta { rel_path: rel_path.into(), size_bytes };
    let m = meta::BlockMeta {
        ulid: ulid.to_string(),
        min_time: min_ns.div_euclid(1_000_000),
        max_time: max_ns.div_euclid(1_000_000),
        stats,
        compaction,
        version: meta::VERSION,
        files: vec![file(INDEX, index.len() as u64), file(PROFILES, profiles_len), file(SYMBOLS, symbols.len() as u64)],
    };
    EncodedBlock { meta_json: meta::encode(&m), meta: m, index, profiles, symbols }
}

/// The row ranges of the selected series (indices into `index.series`), sorted and merged.
/// Indices out of range are left out (`load_series` refuses them).
pub fn rows_of(index: &index::BlockIndex, selected: &[u32]) -> Vec<Range<u64>> {
    let ranges: Vec<Range<u64>> =
        selected.iter().filter_map(|&i| index.series.get(i as usize)).map(index::IndexSeries::row_range).collect();
    profiles::normalize(&ranges)
}

/// The rows a query of the selected series over [min_ns, max_ns] reads: their row ranges
/// without the row groups whose times lie wholly outside the range. What `plan` is asked to
/// fetch, and what `load_series` reads.
pub fn rows_to_read(
    index: &index::BlockIndex,
    selected: &[u32],
    file: &profiles::ProfilesFile,
    min_ns: i64,
    max_ns: i64,
) -> Vec<Range<u64>> {
    file.restrict_to_time(&rows_of(index, selected), min_ns, max_ns)
}

/// For each selected series index (in the same order), a `head::Series` with its labels and
/// profile type from the index and its profiles in [min_ns, max_ns] from the rows fetched for
/// `file.plan(&rows_to_read(index, selected, file, min_ns, max_ns), columns)`. Without samples, `stacks`/`values`
/// are empty and every `offsets` entry is 0; span samples are read only with
/// `Columns::Spans`. A series selected twice comes back twice.
pub fn load_series(
    index: &index::BlockIndex,
    selected: &[u32],
    file: &profiles::ProfilesFile,
    fetched: &[(Range<u64>, Bytes)],
    columns: impl Into<profiles::Columns>,
    min_ns: i64,
    max_ns: i64,
) -> Result<Vec<Series>, FormatError> {
    let columns = columns.into();
    let rows = rows_to_read(index, selected, file, min_ns, max_ns);
    series_of_rows(index, selected, |f| file.read_spans(fetched, &rows, columns, min_ns, max_ns, f))
}

/// [`load_series`] from row groups already decoded (`decoded(g)`, each with at least
/// `columns`) instead of fetched bytes: the store-gateway's cached path, same answer.
pub fn load_series_decoded<'d>(
    index: &index::BlockIndex,
    selected: &[u32],
    file: &profiles::ProfilesFile,
    decoded: impl Fn(usize) -> Option<&'d profiles::DecodedGroup>,
    columns: profiles::Columns,
    min_ns: i64,
    max_ns: i64,
) -> Result<Vec<Series>, FormatError> {
    let rows = rows_to_read(index, selected, file, min_ns, max_ns);
    series_of_rows(index, selected, |f| file.read_decoded(decoded, &rows, columns, min_ns, max_ns, f))
}

/// A reader's callback for each row: (row, series, time, total, stacks, values, spans).
type RowSink<'a> = dyn FnMut(u64, u32, i64, i64, &[u32], &[i64], profiles::SpanRow<'_>) + 'a;

/// The selected series built from the rows `read` passes its callback (see `load_series`).
fn series_of_rows(
    index: &index::BlockIndex,
    selected: &[u32],
    read: impl FnOnce(&mut RowSink<'_>) -> Result<(), FormatError>,
) -> Result<Vec<Series>, FormatError> {
    // Output slot of each series index (u32::MAX: not selected); a duplicate is copied later.
    let mut slot = vec![u32::MAX; index.series.len()];
    let mut out: Vec<Series> = Vec::with_capacity(selected.len());
    for (k, &i) in selected.iter().enumerate() {
        let Some(s) = index.series.get(i as usize) else {
            return Err(FormatError::Request(format!("series {i} selected, the index has {}", index.series.len())));
        };
        if slot[i as usize] == u32::MAX {
            slot[i as usize] = k as u32;
        }
        out.push(Series {
            labels: s.labels.clone(),
            profile_type: s.profile_type.clone(),
            timestamps: Vec::new(),
            totals: Vec::new(),
            offsets: vec![0],
            stacks: Vec::new(),
            values: Vec::new(),
            spans: None,
        });
    }
    let mut err: Option<FormatError> = None;
    read(&mut |row, si, t, total, stacks, values, spans| {
        if err.is_some() {
            return;
        }
        // The row must lie where the index puts series `si`: anything else is damage.
        let k = match (slot.get(si as usize), index.series.get(si as usize)) {
            (Some(&k), Some(s)) if k != u32::MAX && s.row_range().contains(&row) => k,
            _ => {
                err = Some(FormatError::Mismatch(format!(
                    "row {row} says series {si}, the index does not place it there"
                )));
                return;
            }
        };
        let s = &mut out[k as usize];
        s.timestamps.push(t);
        s.totals.push(total);
        s.stacks.extend_from_slice(stacks);
        s.values.extend_from_slice(values);
        match u32::try_from(s.stacks.len()) {
            Ok(n) => s.offsets.push(n),
            Err(_) => err = Some(FormatError::Mismatch(format!("series {si} has more than 2^32 samples"))),
        }
        s.push_span_samples((0..spans.stacks.len()).map(|j| (spans.stacks[j], spans.spans[j], spans.values[j])));
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    for (k, &i) in selected.iter().enumerate() {
        let first = slot[i as usize] as usize;
        if first != k {
            let (a, b) = out.split_at_mut(k);
            let src = &a[first];
            let dst = &mut b[0];
            dst.timestamps.clone_from(&src.timestamps);
            dst.totals.clone_from(&src.totals);
            dst.offsets.clone_from(&src.offsets);
            dst.stacks.clone_from(&src.stacks);
            dst.values.clone_from(&src.values);
            dst.spans.clone_from(&src.spans);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
