//! Merging blocks into one: what a compaction writes.
//!
//! A streaming k-way merge. Every input's rows are sorted by series (profile type, labels)
//! then time (docs/FORMAT.md), so the output series are visited in that order and each input
//! is read front to back, one parquet row group at a time: at most one decoded row group per
//! input and one output row group are held, whatever the inputs' sizes. The inputs' symbol
//! tables are loaded whole (a block's stack ids mean nothing without them); each row's stack
//! ids are rewritten into the output's one table as the row is written, so only the stacks,
//! locations, functions and strings the output's rows use are kept.
//!
//! Copies: rows of one series with one timestamp from inputs of *different* sources are
//! replica copies of one profile (the same push written by several ingesters); rows of one
//! source are distinct profiles (a source holds each profile once, I18). For each (series,
//! timestamp) the merge keeps the rows of the source holding the most there (the first such
//! input's source on a tie) — the rule the querier counts by, so a query answers the same
//! before and after. Pyroscope keeps the first row of each (series, timestamp) instead, which
//! loses a profile a client pushed twice at one timestamp.
//!
//! Pure: no I/O. The caller fetches the row groups' bytes through [`Fetch`].
use super::index::{BlockIndex, IndexSeries};
use super::profiles::{Columns, ProfileRow, ProfilesFile, Sink, SpanRow, Writer};
use super::{index, meta, symdb, EncodeOptions, EncodedBlock, FormatError, PROFILES, SYMBOLS};
use crate::model::labels::Labels;
use crate::model::symbols::{Import, Symbols};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Range;

/// One block to merge, opened.
pub struct Input<'a> {
    /// The block id (the output's meta lists it among its parents).
    pub id: &'a str,
    pub meta: &'a meta::BlockMeta,
    pub index: &'a BlockIndex,
    pub symbols: &'a Symbols,
    pub profiles: &'a ProfilesFile,
    /// What holds each of its profiles once: rows of equal (series, time) from different
    /// sources are copies (see the module comment).
    pub source: &'a str,
}

/// A block opened for a merge (meta, index, decoded symbols, the parquet footer): what an
/// [`Input`] borrows.
pub struct Opened {
    pub meta: meta::BlockMeta,
    pub index: BlockIndex,
    pub symbols: Symbols,
    pub profiles: ProfilesFile,
}

impl Opened {
    /// Opens a block held whole in memory.
    pub fn from_encoded(b: &EncodedBlock) -> Result<Opened, FormatError> {
        Ok(Opened {
            meta: b.meta.clone(),
            index: index::decode(&b.index)?,
            symbols: symdb::decode(&b.symbols)?,
            profiles: ProfilesFile::from_tail(b.profiles.len() as u64, &b.profiles)?,
        })
    }

    /// The block as an input of `source`, named by its meta's id.
    pub fn input<'a>(&'a self, source: &'a str) -> Input<'a> {
        Input {
            id: &self.meta.ulid,
            meta: &self.meta,
            index: &self.index,
            symbols: &self.symbols,
            profiles: &self.profiles,
            source,
        }
    }
}

/// Reads byte ranges of an input's profiles.parquet (the input's position in the slice given
/// to [`merge`]); an error is the reader's message.
pub trait Fetch {
    fn fetch(&mut self, input: usize, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("block {block}: reading {PROFILES}: {error}")]
    Read { block: String, error: String },
    #[error("block {block}: {source}")]
    Format { block: String, source: FormatError },
    /// The output cannot be written (options, or a series past 2^32 rows).
    #[error("{0}")]
    Output(FormatError),
    #[error("nothing to merge: every input is empty")]
    Empty,
}

/// What a merge read and wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeStats {
    pub rows_in: u64,
    pub rows_out: u64,
    /// Rows dropped as copies of another source's.
    pub copies_dropped: u64,
    /// Bytes of the inputs' profiles.parquet row groups fetched.
    pub bytes_fetched: u64,
    /// The largest the merge's row buffers (inputs' decoded groups and the output group) and
    /// symbol remaps grew, in bytes: what the merge holds beyond the inputs' symbol tables
    /// and the output it returns.
    pub peak_buffer_bytes: usize,
}

/// Merges `inputs` into one block `ulid`, held in memory. The output's level is one above
/// the highest input's, its sources the union of theirs, its parents the inputs.
pub fn merge(
    inputs: &[Input<'_>],
    fetch: &mut dyn Fetch,
    ulid: &str,
    opts: &EncodeOptions,
) -> Result<(EncodedBlock, MergeStats), MergeError> {
    let (mut block, profiles, stats) = merge_into(inputs, fetch, ulid, opts, Vec::new())?;
    block.profiles = profiles;
    Ok((block, stats))
}

/// `merge`, with `profiles.parquet` written into `sink` (a file: a compaction's output may
/// be far larger than what a job should hold) and returned beside the block, whose
/// `profiles` is empty (its meta lists the file's size).
pub fn merge_into<W: Sink>(
    inputs: &[Input<'_>],
    fetch: &mut dyn Fetch,
    ulid: &str,
    opts: &EncodeOptions,
    sink: W,
) -> Result<(EncodedBlock, W, MergeStats), MergeError> {
    if !meta::valid_ulid(ulid) {
        return Err(MergeError::Output(FormatError::Encode(format!("block id {ulid:?} is not a ULID"))));
    }
    if opts.row_group_rows == 0 || opts.row_group_samples == 0 {
        return Err(MergeError::Output(FormatError::Encode(
            "row_group_rows and row_group_samples must be at least 1".into(),
        )));
    }
    // Sources as small numbers: copies are told apart by comparing them.
    let mut sources: Vec<&str> = Vec::new();
    let source_of: Vec<usize> = inputs
        .iter()
        .map(|i| match sources.iter().position(|s| *s == i.source) {
            Some(p) => p,
            None => {
                sources.push(i.source);
                sources.len() - 1
            }
        })
        .collect();
    // Every output series with the inputs holding it: (input, series index there).
    let mut keys: BTreeMap<(&str, &Labels), Vec<(usize, u32)>> = BTreeMap::new();
    for (i, input) in inputs.iter().enumerate() {
        for (si, s) in input.index.series.iter().enumerate() {
            if s.rows > 0 {
                keys.entry((s.profile_type.as_str(), &s.labels)).or_default().push((i, si as u32));
            }
        }
    }
    if keys.is_empty() {
        return Err(MergeError::Empty);
    }
    // Every row the index places must be there: a shorter file would make a shorter output.
    for input in inputs {
        if input.profiles.num_rows() != input.index.total_rows() {
            return Err(MergeError::Format {
                block: input.id.to_string(),
                source: FormatError::Mismatch(format!(
                    "{PROFILES} holds {} rows, the index places {}",
                    input.profiles.num_rows(),
                    input.index.total_rows()
                )),
            });
        }
    }
    let mut m = Merger {
        inputs,
        fetch,
        source_of,
        out: Output::new(opts, sink)?,
        cursors: inputs.iter().map(|_| Cursor::default()).collect(),
        imports: inputs.iter().map(|i| Import::new(i.symbols)).collect(),
        stats: MergeStats::default(),
        at_time: Vec::new(),
        counts: vec![0u32; sources.len()],
    };
    for ((pt, labels), holders) in keys {
        m.series(pt, labels, &holders)?;
    }
    let Merger { out, mut stats, cursors, .. } = m;
    // Every input read to its end: rows left over were out of (series, time) order.
    for (c, input) in cursors.iter().zip(inputs) {
        if c.pos < c.rows.len() || c.next_group < input.profiles.num_row_groups() {
            let what = format!("rows of {PROFILES} out of (series, time) order: some were never reached");
            return Err(MergeError::Format { block: input.id.to_string(), source: FormatError::Mismatch(what) });
        }
    }
    if out.rows_written + out.rows.len() as u64 == 0 {
        return Err(MergeError::Empty);
    }
    stats.rows_out = out.rows_written + out.rows.len() as u64;
    let level = inputs.iter().map(|i| i.meta.compaction.level).max().unwrap_or(1) + 1;
    let mut all_sources: Vec<String> = inputs.iter().flat_map(|i| i.meta.compaction.sources.iter().cloned()).collect();
    all_sources.sort();
    all_sources.dedup();
    let mut parents: Vec<String> = inputs.iter().map(|i| i.id.to_string()).collect();
    parents.sort();
    let (block, profiles) = out.finish(ulid, opts, meta::Compaction { level, sources: all_sources, parents })?;
    Ok((block, profiles, stats))
}

/// A merge in progress: the inputs, where each is read, and the output.
struct Merger<'a, 'f, W: Sink> {
    inputs: &'a [Input<'a>],
    fetch: &'f mut dyn Fetch,
    /// Each input's source, as a small number.
    source_of: Vec<usize>,
    out: Output<W>,
    cursors: Vec<Cursor>,
    imports: Vec<Import>,
    stats: MergeStats,
    /// The rows of the current (series, time), reused.
    at_time: Vec<Candidate>,
    /// Rows per source at the current (series, time), reused.
    counts: Vec<u32>,
}

impl<W: Sink> Merger<'_, '_, W> {
    /// Writes output series (pt, labels) from its `holders` (input, series index there):
    /// their rows merged by time, one source's rows kept at each time.
    fn series(&mut self, pt: &str, labels: &Labels, holders: &[(usize, u32)]) -> Result<(), MergeError> {
        let first_row = self.out.rows_written + self.out.rows.len() as u64;
        let (mut min_ns, mut max_ns) = (i64::MAX, i64::MIN);
        while let Some(t) = self.earliest(holders)? {
            self.take_at(holders, t)?;
            self.keep_one_source(t)?;
            min_ns = min_ns.min(t);
            max_ns = max_ns.max(t);
            let held = self.cursors.iter().map(Cursor::heap_bytes).sum::<usize>()
                + self.out.heap_bytes()
                + self.imports.iter().map(Import::heap_bytes).sum::<usize>();
            self.stats.peak_buffer_bytes = self.stats.peak_buffer_bytes.max(held);
        }
        let rows = self.out.rows_written + self.out.rows.len() as u64 - first_row;
        let rows = u32::try_from(rows).map_err(|_| {
            MergeError::Output(FormatError::Encode(format!("series {labels} has more than 2^32 profiles")))
        })?;
        if rows > 0 {
            let series =
                IndexSeries { labels: labels.clone(), profile_type: pt.to_string(), first_row, rows, min_ns, max_ns };
            self.out.series.push(series);
        }
        Ok(())
    }

    /// The earliest time among the holders' next rows of the series; `None` once all are past it.
    fn earliest(&mut self, holders: &[(usize, u32)]) -> Result<Option<i64>, MergeError> {
        let mut t_min: Option<i64> = None;
        for &(i, si) in holders {
            if let Some(r) = self.cursors[i].peek(i, si, &self.inputs[i], self.fetch, &mut self.stats)? {
                t_min = Some(t_min.map_or(r.time, |t: i64| t.min(r.time)));
            }
        }
        Ok(t_min)
    }

    /// Moves every holder's rows at time `t` into `at_time`, their stacks rewritten into the
    /// output's table.
    fn take_at(&mut self, holders: &[(usize, u32)], t: i64) -> Result<(), MergeError> {
        self.at_time.clear();
        for &(i, si) in holders {
            let input = &self.inputs[i];
            while let Some(r) = self.cursors[i].peek(i, si, input, self.fetch, &mut self.stats)? {
                if r.time != t {
                    break;
                }
                let c = &self.cursors[i];
                let (stacks, values) = (&c.stacks[r.samples.clone()], &c.values[r.samples.clone()]);
                let stack_count = input.symbols.stack_count();
                let known = |s: u32| {
                    if s as usize >= stack_count || s == 0 {
                        let what = format!("stack id {s} in {PROFILES}, {SYMBOLS} has {stack_count} stacks");
                        return Err(MergeError::Format {
                            block: input.id.to_string(),
                            source: FormatError::Mismatch(what),
                        });
                    }
                    Ok(s)
                };
                let mut samples: Vec<(u32, i64)> = Vec::with_capacity(stacks.len());
                for (&s, &v) in stacks.iter().zip(values) {
                    samples.push((self.out.symbols.import_stack(input.symbols, &mut self.imports[i], known(s)?), v));
                }
                samples.sort_unstable_by_key(|&(s, _)| s);
                let mut spans: Vec<(u32, u64, i64)> = Vec::with_capacity(r.spans.len());
                for k in r.spans.clone() {
                    let s = known(c.span_stacks[k])?;
                    let s = self.out.symbols.import_stack(input.symbols, &mut self.imports[i], s);
                    spans.push((s, c.span_ids[k], c.span_values[k]));
                }
                spans.sort_unstable_by_key(|&(s, span, _)| (s, span));
                self.at_time.push(Candidate { source: self.source_of[i], total: r.total, samples, spans });
                self.stats.rows_in += 1;
                self.cursors[i].pos += 1;
            }
        }
        Ok(())
    }

    /// Writes the rows at `t` of the source holding the most there; the others are copies.
    fn keep_one_source(&mut self, t: i64) -> Result<(), MergeError> {
        self.counts.iter_mut().for_each(|c| *c = 0);
        for c in &self.at_time {
            self.counts[c.source] += 1;
        }
        let counts = &self.counts;
        let keep =
            self.at_time.iter().map(|c| c.source).max_by_key(|&s| (counts[s], std::cmp::Reverse(s))).unwrap_or(0);
        for c in self.at_time.drain(..) {
            if c.source == keep {
                self.out.push(t, c.total, &c.samples, &c.spans)?;
            } else {
                self.stats.copies_dropped += 1;
            }
        }
        Ok(())
    }
}

/// One row at a (series, time) from one input, its stacks already the output's.
struct Candidate {
    source: usize,
    total: i64,
    samples: Vec<(u32, i64)>,
    /// (stack, span, value), in (stack, span) order.
    spans: Vec<(u32, u64, i64)>,
}

/// A decoded row of an input: its samples are `samples` of the cursor's buffers.
#[derive(Clone)]
struct Row {
    series: u32,
    time: i64,
    total: i64,
    samples: Range<usize>,
    /// Its span samples: `span_*` of the cursor's buffers.
    spans: Range<usize>,
}

/// Where an input is read: its current row group, decoded, and the next row in it.
#[derive(Default)]
struct Cursor {
    /// The next row group to load.
    next_group: usize,
    rows: Vec<Row>,
    pos: usize,
    stacks: Vec<u32>,
    values: Vec<i64>,
    span_stacks: Vec<u32>,
    span_values: Vec<i64>,
    span_ids: Vec<u64>,
    /// The (series, time) of the last row read, across row groups: each must follow it.
    last: Option<(u32, i64)>,
}

impl Cursor {
    /// The input's next row if it belongs to series `si`; loads row groups as needed.
    fn peek(
        &mut self,
        i: usize,
        si: u32,
        input: &Input<'_>,
        fetch: &mut dyn Fetch,
        stats: &mut MergeStats,
    ) -> Result<Option<Row>, MergeError> {
        while self.pos >= self.rows.len() {
            if self.next_group >= input.profiles.num_row_groups() {
                return Ok(None);
            }
            self.load(i, input, fetch, stats)?;
        }
        let r = &self.rows[self.pos];
        Ok((r.series == si).then(|| r.clone()))
    }

    fn load(
        &mut self,
        i: usize,
        input: &Input<'_>,
        fetch: &mut dyn Fetch,
        stats: &mut MergeStats,
    ) -> Result<(), MergeError> {
        let format = |e: FormatError| MergeError::Format { block: input.id.to_string(), source: e };
        let g = self.next_group;
        self.next_group += 1;
        let rows = input.profiles.group_rows(g);
        let ranges = input.profiles.plan(std::slice::from_ref(&rows), Columns::Spans);
        let bytes = fetch.fetch(i, &ranges).map_err(|error| MergeError::Read { block: input.id.to_string(), error })?;
        if bytes.len() != ranges.len() {
            return Err(MergeError::Read {
                block: input.id.to_string(),
                error: format!("{} ranges asked, {} answered", ranges.len(), bytes.len()),
            });
        }
        stats.bytes_fetched += bytes.iter().map(|b| b.len() as u64).sum::<u64>();
        let fetched: Vec<(Range<u64>, Bytes)> = ranges.into_iter().zip(bytes).collect();
        self.rows.clear();
        self.stacks.clear();
        self.values.clear();
        self.span_stacks.clear();
        self.span_values.clear();
        self.span_ids.clear();
        self.pos = 0;
        let mut err = None;
        let index = input.index;
        let (stacks, values, out, last) = (&mut self.stacks, &mut self.values, &mut self.rows, &mut self.last);
        let (span_stacks, span_values, span_ids) = (&mut self.span_stacks, &mut self.span_values, &mut self.span_ids);
        let all = std::slice::from_ref(&rows);
        input
            .profiles
            .read_spans(&fetched, all, Columns::Spans, i64::MIN, i64::MAX, |row, si, t, total, st, v, sp| {
                // Rows must lie where the index puts their series and ascend in time there.
                let placed = index.series.get(si as usize).is_some_and(|s| s.row_range().contains(&row));
                let ordered = last.is_none_or(|p| p <= (si, t));
                *last = Some((si, t));
                if err.is_none() && !(placed && ordered) {
                    err = Some(FormatError::Mismatch(format!(
                        "row {row} says series {si} at {t}: not where the index places it, or out of order"
                    )));
                }
                let a = stacks.len();
                stacks.extend_from_slice(st);
                values.extend_from_slice(v);
                let b = span_stacks.len();
                span_stacks.extend_from_slice(sp.stacks);
                span_values.extend_from_slice(sp.values);
                span_ids.extend_from_slice(sp.spans);
                out.push(Row { series: si, time: t, total, samples: a..stacks.len(), spans: b..span_stacks.len() });
            })
            .map_err(format)?;
        match err {
            Some(e) => Err(format(e)),
            None => Ok(()),
        }
    }

    fn heap_bytes(&self) -> usize {
        self.rows.capacity() * std::mem::size_of::<Row>()
            + self.stacks.capacity() * 4
            + self.values.capacity() * 8
            + self.span_stacks.capacity() * 4
            + self.span_values.capacity() * 8
            + self.span_ids.capacity() * 8
    }
}

/// A row of the output's current row group: (series, time, total, samples of
/// `stacks`/`values`, span samples of `span_*`).
type OutRow = (u32, i64, i64, Range<usize>, Range<usize>);

/// The output being written: full row groups go to the parquet writer at once.
struct Output<W: Sink> {
    writer: Writer<W>,
    symbols: Symbols,
    series: Vec<IndexSeries>,
    /// The current row group: (series, time, total, samples of `stacks`/`values`, span
    /// samples of `span_*`).
    rows: Vec<OutRow>,
    stacks: Vec<u32>,
    values: Vec<i64>,
    span_stacks: Vec<u32>,
    span_values: Vec<i64>,
    span_ids: Vec<u64>,
    rows_written: u64,
    samples: u64,
    row_group_rows: usize,
    row_group_samples: usize,
}

impl<W: Sink> Output<W> {
    fn new(opts: &EncodeOptions, sink: W) -> Result<Output<W>, MergeError> {
        Ok(Output {
            writer: Writer::into_sink(opts, sink).map_err(MergeError::Output)?,
            symbols: Symbols::new(),
            series: Vec::new(),
            rows: Vec::new(),
            stacks: Vec::new(),
            values: Vec::new(),
            span_stacks: Vec::new(),
            span_values: Vec::new(),
            span_ids: Vec::new(),
            rows_written: 0,
            samples: 0,
            row_group_rows: opts.row_group_rows,
            row_group_samples: opts.row_group_samples,
        })
    }

    /// Appends a row of the series being written (its index is the next in `series`),
    /// writing the row group first when this row would not fit (as `profiles::row_groups`
    /// splits an encoded head).
    fn push(
        &mut self,
        t: i64,
        total: i64,
        samples: &[(u32, i64)],
        spans: &[(u32, u64, i64)],
    ) -> Result<(), MergeError> {
        if !self.rows.is_empty()
            && (self.rows.len() >= self.row_group_rows
                || self.stacks.len() + self.span_stacks.len() + samples.len() + spans.len() > self.row_group_samples)
        {
            self.flush()?;
        }
        let a = self.stacks.len();
        self.stacks.extend(samples.iter().map(|s| s.0));
        self.values.extend(samples.iter().map(|s| s.1));
        self.samples += samples.len() as u64;
        let b = self.span_stacks.len();
        self.span_stacks.extend(spans.iter().map(|s| s.0));
        self.span_ids.extend(spans.iter().map(|s| s.1));
        self.span_values.extend(spans.iter().map(|s| s.2));
        self.rows.push((self.series.len() as u32, t, total, a..self.stacks.len(), b..self.span_stacks.len()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MergeError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let group: Vec<ProfileRow<'_>> = self
            .rows
            .iter()
            .map(|(series, t, total, s, k)| ProfileRow {
                series: *series,
                time_nanos: *t,
                total: *total,
                stacks: &self.stacks[s.clone()],
                values: &self.values[s.clone()],
                spans: SpanRow {
                    stacks: &self.span_stacks[k.clone()],
                    values: &self.span_values[k.clone()],
                    spans: &self.span_ids[k.clone()],
                },
            })
            .collect();
        self.writer.write_group(&group).map_err(MergeError::Output)?;
        self.rows_written += self.rows.len() as u64;
        self.rows.clear();
        self.stacks.clear();
        self.values.clear();
        self.span_stacks.clear();
        self.span_values.clear();
        self.span_ids.clear();
        Ok(())
    }

    fn heap_bytes(&self) -> usize {
        self.rows.capacity() * 56
            + self.stacks.capacity() * 4
            + self.values.capacity() * 8
            + self.span_stacks.capacity() * 4
            + self.span_values.capacity() * 8
            + self.span_ids.capacity() * 8
    }

    fn finish(
        mut self,
        ulid: &str,
        opts: &EncodeOptions,
        compaction: meta::Compaction,
    ) -> Result<(EncodedBlock, W), MergeError> {
        self.flush()?;
        let profiles = self.writer.finish().map_err(MergeError::Output)?;
        let written =
            profiles.written_len().map_err(|e| MergeError::Output(FormatError::Encode(format!("{PROFILES}: {e}"))))?;
        let (min_ns, max_ns) =
            self.series.iter().fold((i64::MAX, i64::MIN), |(lo, hi), s| (lo.min(s.min_ns), hi.max(s.max_ns)));
        let stats = meta::BlockStats {
            num_series: self.series.len() as u64,
            num_profiles: self.rows_written,
            num_samples: self.samples,
            num_stacks: self.symbols.stack_count() as u64 - 1,
        };
        let idx = BlockIndex::new(self.series).map_err(MergeError::Output)?;
        let symbols = symdb::encode_with(&self.symbols, opts.zstd_level);
        let files = super::Files { index: index::encode(&idx), profiles: Vec::new(), profiles_len: written, symbols };
        Ok((super::assemble(ulid, (min_ns, max_ns), stats, compaction, files), profiles))
    }
}

#[cfg(test)]
mod tests;
