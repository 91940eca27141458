//! `profiles.parquet`: one row per profile, rows sorted by series index then time, zstd pages,
//! row groups of at most `EncodeOptions::row_group_rows` rows, chunk statistics on.
//!
//! ```text
//! message profiles {
//!   required int32 series_index;   // the series' position in index.tsdb
//!   required int64 time_nanos;
//!   required int64 total_value;    // sum of `value` (saturating)
//!   repeated int32 stacktrace_id;  // stack node ids of symbols.symdb (u32 bits), ascending
//!   repeated int64 value;          // parallel to stacktrace_id, never 0
//!   optional binary spans;         // the samples taken in a span (`encode_spans`); absent: none
//! }
//! ```
//!
//! Files written before span profiles have the first five columns only; they read as
//! profiles without span samples.
//!
//! Reading is built for object storage: [`ProfilesFile::from_tail`] parses the footer from the
//! file's last bytes, [`ProfilesFile::plan`] says which byte ranges a set of rows needs (whole
//! column chunks of the overlapping row groups, only the wanted columns) and
//! [`ProfilesFile::read`] decodes those rows from just the fetched ranges.
use super::{EncodeOptions, FormatError, PROFILES};
use bytes::{Buf, Bytes};
use parquet::basic::{Compression, Encoding, Repetition, Type as PhysicalType, ZstdLevel};
use parquet::column::reader::ColumnReaderImpl;
use parquet::data_type::{ByteArray, ByteArrayType, DataType, Int32Type, Int64Type};
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader, RowGroupMetaData};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;
use parquet::file::statistics::Statistics;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{ColumnPath, Type};
use std::ops::Range;
use std::sync::Arc;

/// The columns, in file order: (name, physical type, repetition).
const COLUMNS: [(&str, PhysicalType, Repetition); 6] = [
    ("series_index", PhysicalType::INT32, Repetition::REQUIRED),
    ("time_nanos", PhysicalType::INT64, Repetition::REQUIRED),
    ("total_value", PhysicalType::INT64, Repetition::REQUIRED),
    ("stacktrace_id", PhysicalType::INT32, Repetition::REPEATED),
    ("value", PhysicalType::INT64, Repetition::REPEATED),
    ("spans", PhysicalType::BYTE_ARRAY, Repetition::OPTIONAL),
];
/// Columns read without samples: series_index, time_nanos, total_value.
const HEAD_COLUMNS: usize = 3;
/// Columns of a file written before span profiles (and what queries without spans read).
const SAMPLE_COLUMNS: usize = 5;
const MAX_COLUMNS: usize = COLUMNS.len();

/// Which columns a read decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// series_index, time_nanos, total_value.
    Head,
    /// And the samples.
    Samples,
    /// And the span samples, where the file has them.
    Spans,
}

impl From<bool> for Columns {
    /// `with_samples`.
    fn from(with_samples: bool) -> Columns {
        if with_samples {
            Columns::Samples
        } else {
            Columns::Head
        }
    }
}

/// One profile's span samples: (stack, value, span) as three parallel lists, in (stack,
/// span) order.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanRow<'a> {
    pub stacks: &'a [u32],
    pub values: &'a [i64],
    pub spans: &'a [u64],
}

impl SpanRow<'_> {
    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }
}

/// The `spans` cell of a row: a count, then per sample its stack id (delta from the
/// previous one, zig-zag), value (zig-zag) and span id (8 bytes, little-endian).
pub fn encode_spans(row: &SpanRow<'_>, out: &mut Vec<u8>) {
    let mut w = kiln_io::codec::Writer(std::mem::take(out));
    w.u(row.stacks.len() as u64);
    let mut prev = 0i64;
    for k in 0..row.stacks.len() {
        let id = i64::from(row.stacks[k]);
        w.i(id - prev);
        prev = id;
        w.i(row.values[k]);
        w.u64_le(row.spans[k]);
    }
    *out = w.0;
}

/// Decodes a `spans` cell into the three lists (appended). Each sample takes at least ten
/// bytes, so a count cannot ask for more than the cell could hold.
pub fn decode_spans(
    b: &[u8],
    stacks: &mut Vec<u32>,
    values: &mut Vec<i64>,
    spans: &mut Vec<u64>,
) -> Result<(), String> {
    let mut r = kiln_io::codec::Reader::new(b);
    let n = r.count(10).map_err(|e| format!("spans: {e}"))?;
    let mut prev = 0i64;
    for _ in 0..n {
        let id = prev.checked_add(r.i().map_err(|e| format!("spans: {e}"))?).ok_or("spans: stack id overflows")?;
        let id32 = u32::try_from(id).map_err(|_| format!("spans: stack id {id} out of range"))?;
        prev = id;
        stacks.push(id32);
        values.push(r.i().map_err(|e| format!("spans: {e}"))?);
        spans.push(r.u64_le().map_err(|e| format!("spans: {e}"))?);
    }
    if r.remaining() != 0 {
        return Err("spans: trailing bytes".into());
    }
    Ok(())
}
/// Rows decoded per step of `read`: bounds the scratch buffers, whatever the ranges.
const BATCH: u64 = 1024;
/// Footer key-value entry with the CRC-32C of every column chunk: per row group, five
/// checksums in column order, each 8 lower-case hex digits (40 characters a row group).
/// Parquet's own page checksums are optional and not written by the crate; these let a
/// reader detect damage in exactly the chunks it fetched before decoding them.
pub const CHUNK_CRC_KEY: &str = "kiln.chunk_crc32c";

/// One row to write: a profile of series `series`, its samples sorted by stack id.
#[derive(Debug, Clone, Copy)]
pub struct ProfileRow<'a> {
    pub series: u32,
    pub time_nanos: i64,
    pub total: i64,
    pub stacks: &'a [u32],
    pub values: &'a [i64],
    /// Its span samples (`SpanRow::default()`: none).
    pub spans: SpanRow<'a>,
}

/// The schema of a file with the first `ncols` columns (six; five in tests of files
/// written before span profiles).
fn schema(ncols: usize) -> Arc<Type> {
    let fields = COLUMNS[..ncols]
        .iter()
        .map(|&(name, ty, rep)| {
            Arc::new(Type::primitive_type_builder(name, ty).with_repetition(rep).build().expect("valid primitive type"))
        })
        .collect();
    Arc::new(Type::group_type_builder("profiles").with_fields(fields).build().expect("valid schema"))
}

fn encode_err(e: parquet::errors::ParquetError) -> FormatError {
    FormatError::Encode(format!("writing {PROFILES}: {e}"))
}

/// Writes `rows` as a parquet file. They must already be in file order (by series, then
/// time) with equally long `stacks` and `values`: the index relies on the order, so a
/// violation is refused rather than written.
/// Splits rows into row groups of at most `row_group_rows` rows and, unless one profile
/// alone is larger, `row_group_samples` samples: ranges of `rows`. A query decodes whole
/// column chunks of the groups it touches, so groups are bounded by what they cost to read
/// (samples), not only by rows: profiles vary from one sample to tens of thousands.
pub fn row_groups(rows: &[ProfileRow<'_>], opts: &EncodeOptions) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut samples) = (0, 0usize);
    for (i, r) in rows.iter().enumerate() {
        // A span query decodes a row's span samples too: they count toward the bound.
        let n = r.stacks.len() + r.spans.stacks.len();
        if i > start && (i - start >= opts.row_group_rows || samples + n > opts.row_group_samples) {
            out.push(start..i);
            (start, samples) = (i, 0);
        }
        samples += n;
    }
    if start < rows.len() {
        out.push(start..rows.len());
    }
    out
}

/// Refuses options and rows the file cannot hold: lists of unequal length, rows out of
/// (series, time) order.
pub fn check(rows: &[ProfileRow<'_>], opts: &EncodeOptions) -> Result<(), FormatError> {
    if opts.row_group_rows == 0 || opts.row_group_samples == 0 {
        return Err(FormatError::Encode("row_group_rows and row_group_samples must be at least 1".into()));
    }
    for (i, r) in rows.iter().enumerate() {
        if r.stacks.len() != r.values.len() {
            return Err(FormatError::Encode(format!(
                "row {i}: {} stacks but {} values",
                r.stacks.len(),
                r.values.len()
            )));
        }
        if r.spans.stacks.len() != r.spans.values.len() || r.spans.stacks.len() != r.spans.spans.len() {
            return Err(FormatError::Encode(format!("row {i}: span sample lists of unequal length")));
        }
        if i > 0 && (rows[i - 1].series, rows[i - 1].time_nanos) > (r.series, r.time_nanos) {
            return Err(FormatError::Encode(format!("row {i} is not in (series, time) order")));
        }
    }
    Ok(())
}

/// Where a `Writer` puts the file: memory (a head's block, a test) or a local file (a
/// compaction's output, which may be far larger than what a job should hold). The footer's
/// checksums are taken from what was written, read back one column chunk at a time.
pub trait Sink: std::io::Write + Send {
    /// `len` bytes written at `start`.
    fn written(&self, start: u64, len: u64) -> std::io::Result<std::borrow::Cow<'_, [u8]>>;
    /// The bytes written in all.
    fn written_len(&self) -> std::io::Result<u64>;
}

impl Sink for Vec<u8> {
    fn written_len(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn written(&self, start: u64, len: u64) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        let range = usize::try_from(start).ok().zip(usize::try_from(start + len).ok());
        range
            .and_then(|(a, b)| self.get(a..b))
            .map(std::borrow::Cow::Borrowed)
            .ok_or_else(|| std::io::Error::other(format!("{start}+{len} lies past the {} bytes written", self.len())))
    }
}

impl Sink for std::fs::File {
    fn written_len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn written(&self, start: u64, len: u64) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; usize::try_from(len).map_err(std::io::Error::other)?];
        self.read_exact_at(&mut buf, start)?;
        Ok(std::borrow::Cow::Owned(buf))
    }
}

impl Sink for kiln_io::store::write_behind::Writer<std::fs::File> {
    fn written_len(&self) -> std::io::Result<u64> {
        self.file().written_len()
    }

    fn written(&self, start: u64, len: u64) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        self.file().written(start, len)
    }
}

/// Writes `profiles.parquet` one row group at a time, so that a caller can pause between
/// groups (a core encoding a block keeps serving between them), into memory or a file.
pub struct Writer<W: Sink = Vec<u8>> {
    w: SerializedFileWriter<W>,
    cols: WriteColumns,
    ncols: usize,
}

impl Writer {
    pub fn new(opts: &EncodeOptions) -> Result<Writer, FormatError> {
        Writer::into_sink(opts, Vec::new())
    }
}

impl<W: Sink> Writer<W> {
    /// A writer that writes into `sink` (from its start: a new file).
    pub fn into_sink(opts: &EncodeOptions, sink: W) -> Result<Writer<W>, FormatError> {
        Writer::with_columns(opts, sink, MAX_COLUMNS)
    }

    /// A writer of the first `ncols` columns: tests write files as kiln wrote them before
    /// span profiles with it.
    fn with_columns(opts: &EncodeOptions, sink: W, ncols: usize) -> Result<Writer<W>, FormatError> {
        let level = ZstdLevel::try_new(opts.zstd_level)
            .map_err(|e| FormatError::Encode(format!("zstd level {}: {e}", opts.zstd_level)))?;
        let col = |name: &str| ColumnPath::from(name);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_statistics_enabled(EnabledStatistics::Chunk)
            // Nothing reads page indexes: keep them (and their bytes) out.
            .set_offset_index_disabled(true)
            .set_max_row_group_row_count(Some(opts.row_group_rows))
            .set_created_by(format!("kiln {}", env!("CARGO_PKG_VERSION")))
            // Times ascend within a series: deltas beat a dictionary of mostly unique values.
            .set_column_dictionary_enabled(col("time_nanos"), false)
            .set_column_encoding(col("time_nanos"), Encoding::DELTA_BINARY_PACKED)
            // A profile's stack ids ascend: deltas again. On the fixtures of
            // tests/block_roundtrip.rs the whole file shrinks from 367 kB to 211 kB with this.
            .set_column_dictionary_enabled(col("stacktrace_id"), false)
            .set_column_encoding(col("stacktrace_id"), Encoding::DELTA_BINARY_PACKED)
            // Values are mostly distinct: a dictionary only adds indirection before zstd (211 kB
            // → 172 kB without it). BYTE_STREAM_SPLIT would save ~6% more but is young in the
            // spec; PLAIN and the delta encoding are read by every parquet reader.
            .set_column_dictionary_enabled(col("value"), false)
            .build();
        let w = SerializedFileWriter::new(sink, schema(ncols), Arc::new(props)).map_err(encode_err)?;
        Ok(Writer { w, cols: WriteColumns::default(), ncols })
    }

    /// Appends one row group (rows already `check`ed, in order).
    pub fn write_group(&mut self, group: &[ProfileRow<'_>]) -> Result<(), FormatError> {
        let cols = &mut self.cols;
        cols.fill(group);
        let mut rg = self.w.next_row_group().map_err(encode_err)?;
        write_column::<Int32Type, W>(&mut rg, &cols.series, None)?;
        write_column::<Int64Type, W>(&mut rg, &cols.time, None)?;
        write_column::<Int64Type, W>(&mut rg, &cols.total, None)?;
        write_column::<Int32Type, W>(&mut rg, &cols.stacks, Some((&cols.def, &cols.rep)))?;
        write_column::<Int64Type, W>(&mut rg, &cols.values, Some((&cols.def, &cols.rep)))?;
        if self.ncols > SAMPLE_COLUMNS {
            write_column::<ByteArrayType, W>(&mut rg, &cols.spans, Some((&cols.span_def, &[])))?;
        }
        rg.close().map_err(encode_err)?;
        Ok(())
    }

    /// The footer (with every chunk's checksum) and the whole file (its sink).
    pub fn finish(mut self) -> Result<W, FormatError> {
        let w = &mut self.w;
        let failed = |e: &dyn std::fmt::Display| FormatError::Encode(format!("writing {PROFILES}: {e}"));
        // Every chunk is in the sink once flushed; checksum them into the footer.
        w.flush().map_err(|e| failed(&e))?;
        let mut crcs = String::with_capacity(w.flushed_row_groups().len() * 40);
        for rg in w.flushed_row_groups() {
            for c in rg.columns() {
                let (start, len) = c.byte_range();
                let crc = crc32c::crc32c(&w.inner().written(start, len).map_err(|e| failed(&e))?);
                crcs.push_str(&format!("{crc:08x}"));
            }
        }
        w.append_key_value_metadata(KeyValue::new(CHUNK_CRC_KEY.to_string(), crcs));
        self.w.into_inner().map_err(encode_err)
    }
}

pub fn write(rows: &[ProfileRow<'_>], opts: &EncodeOptions) -> Result<Vec<u8>, FormatError> {
    check(rows, opts)?;
    let mut w = Writer::new(opts)?;
    for g in row_groups(rows, opts) {
        w.write_group(&rows[g])?;
    }
    w.finish()
}

/// One row group's columns, reused between groups.
#[derive(Default)]
struct WriteColumns {
    series: Vec<i32>,
    time: Vec<i64>,
    total: Vec<i64>,
    stacks: Vec<i32>,
    values: Vec<i64>,
    /// Levels shared by the two repeated columns (their lists have equal lengths): a row of k
    /// samples is rep 0,1,…,1 / def 1,…,1; a row without samples is one level, rep 0 / def 0.
    def: Vec<i16>,
    rep: Vec<i16>,
    /// The `spans` cells of the rows that have span samples; `span_def` is 1 for those rows
    /// and 0 (null) for the others.
    spans: Vec<ByteArray>,
    span_def: Vec<i16>,
}

impl WriteColumns {
    fn fill(&mut self, group: &[ProfileRow<'_>]) {
        self.series.clear();
        self.time.clear();
        self.total.clear();
        self.stacks.clear();
        self.values.clear();
        self.def.clear();
        self.rep.clear();
        self.spans.clear();
        self.span_def.clear();
        for r in group {
            self.span_def.push(i16::from(!r.spans.is_empty()));
            if !r.spans.is_empty() {
                let mut cell = Vec::with_capacity(r.spans.stacks.len() * 12 + 4);
                encode_spans(&r.spans, &mut cell);
                self.spans.push(ByteArray::from(cell));
            }
            // Series indices and stack ids are u32s stored as their i32 bits.
            self.series.push(r.series as i32);
            self.time.push(r.time_nanos);
            self.total.push(r.total);
            if r.stacks.is_empty() {
                self.def.push(0);
                self.rep.push(0);
                continue;
            }
            self.stacks.extend(r.stacks.iter().map(|&s| s as i32));
            self.values.extend_from_slice(r.values);
            self.def.extend(std::iter::repeat_n(1, r.stacks.len()));
            self.rep.push(0);
            self.rep.extend(std::iter::repeat_n(1, r.stacks.len() - 1));
        }
    }
}

fn write_column<T: DataType, W: Sink>(
    rg: &mut parquet::file::writer::SerializedRowGroupWriter<'_, W>,
    values: &[T::T],
    levels: Option<(&[i16], &[i16])>,
) -> Result<(), FormatError> {
    let mut c = rg.next_column().map_err(encode_err)?.expect("the schema has six columns");
    // An empty repetition list: the column is not repeated.
    let (def, rep) = levels.unzip();
    let rep = rep.filter(|r| !r.is_empty());
    c.typed::<T>().write_batch(values, def, rep).map_err(encode_err)?;
    c.close().map_err(encode_err)
}

/// A parsed profiles.parquet footer, checked against kiln's schema, with the byte range of
/// every column chunk (all within the file's data region).
#[derive(Debug, Clone)]
pub struct ProfilesFile {
    meta: Arc<ParquetMetaData>,
    /// First absolute row of each row group, then the total row count.
    group_start: Vec<u64>,
    /// Byte range of each column chunk, per row group.
    /// (`ncols` of them: five in a file written before span profiles, else six.)
    chunks: Vec<[Range<u64>; MAX_COLUMNS]>,
    /// CRC-32C of each column chunk, per row group (from [`CHUNK_CRC_KEY`]).
    crcs: Vec<[u32; MAX_COLUMNS]>,
    ncols: usize,
    /// Min and max `time_nanos` of each row group, from the chunk statistics (the whole
    /// i64 range where a writer left them out).
    times: Vec<(i64, i64)>,
    file_len: u64,
    footer_len: u64,
}

impl ProfilesFile {
    /// Bytes to fetch from the end of the file to parse the footer in one request in the common case.
    pub const TAIL_GUESS: u64 = 64 * 1024;

    /// Parses the footer from the last `tail.len()` bytes of a file of `file_len` bytes. A
    /// footer longer than `tail` gives [`FormatError::NeedTail`] with the exact number of
    /// tail bytes to fetch instead.
    pub fn from_tail(file_len: u64, tail: &[u8]) -> Result<ProfilesFile, FormatError> {
        let corrupt = |offset: u64, what: String| FormatError::Corrupt { file: PROFILES, offset, what };
        if tail.len() as u64 > file_len {
            return Err(corrupt(0, format!("tail of {} bytes is longer than the file ({file_len} bytes)", tail.len())));
        }
        // "PAR1" at both ends plus the 4-byte footer length.
        if file_len < 12 {
            return Err(corrupt(0, format!("file of {file_len} bytes is too short for parquet")));
        }
        if tail.len() < 8 {
            return Err(FormatError::NeedTail(8));
        }
        let end = &tail[tail.len() - 8..];
        if &end[4..] != b"PAR1" {
            return Err(corrupt(file_len - 4, "no PAR1 magic at the end of the file".into()));
        }
        let meta_len = u64::from(u32::from_le_bytes(end[..4].try_into().expect("4 bytes")));
        let footer_len = meta_len + 8;
        if footer_len + 4 > file_len {
            return Err(corrupt(file_len - 8, format!("footer of {meta_len} bytes does not fit in the file")));
        }
        if (tail.len() as u64) < footer_len {
            return Err(FormatError::NeedTail(footer_len));
        }
        let footer_at = file_len - footer_len;
        let footer = &tail[tail.len() - footer_len as usize..tail.len() - 8];
        let meta = ParquetMetaDataReader::decode_metadata(footer)
            .map_err(|e| corrupt(footer_at, format!("footer does not decode: {e}")))?;
        let ncols = check_schema(&meta).map_err(|what| corrupt(footer_at, what))?;
        let mut group_start = vec![0u64];
        let mut chunks = Vec::with_capacity(meta.num_row_groups());
        for (g, rg) in meta.row_groups().iter().enumerate() {
            let rows = u64::try_from(rg.num_rows())
                .map_err(|_| corrupt(footer_at, format!("row group {g} has {} rows", rg.num_rows())))?;
            let end = group_start[g]
                .checked_add(rows)
                .ok_or_else(|| corrupt(footer_at, format!("row group {g}: row count overflows")))?;
            group_start.push(end);
            chunks.push(
                chunk_ranges(rg, footer_at, ncols)
                    .map_err(|what| corrupt(footer_at, format!("row group {g}: {what}")))?,
            );
        }
        let crcs = chunk_crcs(&meta, ncols).map_err(|what| corrupt(footer_at, what))?;
        let times = meta
            .row_groups()
            .iter()
            .map(|rg| match rg.column(1).statistics() {
                Some(Statistics::Int64(st)) => {
                    (st.min_opt().copied().unwrap_or(i64::MIN), st.max_opt().copied().unwrap_or(i64::MAX))
                }
                _ => (i64::MIN, i64::MAX),
            })
            .collect();
        let total = *group_start.last().expect("starts with 0");
        if meta.file_metadata().num_rows() != total as i64 {
            return Err(corrupt(
                footer_at,
                format!("file says {} rows, its row groups hold {total}", meta.file_metadata().num_rows()),
            ));
        }
        Ok(ProfilesFile { meta: Arc::new(meta), group_start, chunks, crcs, ncols, times, file_len, footer_len })
    }

    pub fn metadata(&self) -> &ParquetMetaData {
        &self.meta
    }

    pub fn num_rows(&self) -> u64 {
        *self.group_start.last().expect("starts with 0")
    }

    pub fn num_row_groups(&self) -> usize {
        self.chunks.len()
    }

    /// The rows of row group `g` (absolute row numbers).
    pub fn group_rows(&self, g: usize) -> Range<u64> {
        self.group_start[g]..self.group_start[g + 1]
    }

    /// Footer bytes at the end of the file (metadata, its length and the magic).
    pub fn footer_len(&self) -> u64 {
        self.footer_len
    }

    /// Byte ranges (of the file) that must be fetched to read the given row ranges (absolute
    /// row numbers, as in `IndexSeries`): only the row groups that overlap them, and only the
    /// columns needed (`with_samples=false`: series_index, time_nanos, total_value; true: all
    /// five). Sorted, merged.
    /// `rows` without the row groups whose `time_nanos` statistics lie wholly outside
    /// [min_ns, max_ns]: their rows would all be skipped by `read`, so neither `plan` nor
    /// `read` needs them. Sorted and merged.
    pub fn restrict_to_time(&self, rows: &[Range<u64>], min_ns: i64, max_ns: i64) -> Vec<Range<u64>> {
        let rows = normalize(rows);
        let mut out = Vec::with_capacity(rows.len());
        for (g, local) in self.groups(&rows) {
            let (lo, hi) = self.times[g];
            if hi < min_ns || lo > max_ns {
                continue;
            }
            let a = self.group_start[g];
            out.extend(local.into_iter().map(|r| r.start + a..r.end + a));
        }
        normalize(&out)
    }

    pub fn plan(&self, rows: &[Range<u64>], columns: impl Into<Columns>) -> Vec<Range<u64>> {
        let rows = normalize(rows);
        let ncols = self.ncols_of(columns.into());
        let mut out: Vec<Range<u64>> = Vec::new();
        for (g, _) in self.groups(&rows) {
            out.extend(self.chunks[g][..ncols].iter().cloned());
        }
        normalize(&out)
    }

    /// How many leading columns a read of `columns` decodes in this file.
    fn ncols_of(&self, columns: Columns) -> usize {
        match columns {
            Columns::Head => HEAD_COLUMNS,
            Columns::Samples => SAMPLE_COLUMNS,
            Columns::Spans => self.ncols,
        }
    }

    /// Row groups overlapping `rows` (normalized) with their overlaps, in row-group-local row
    /// numbers.
    fn groups(&self, rows: &[Range<u64>]) -> Vec<(usize, Vec<Range<u64>>)> {
        let mut out = Vec::new();
        for g in 0..self.chunks.len() {
            let (a, b) = (self.group_start[g], self.group_start[g + 1]);
            // Ranges are sorted and disjoint: the first that ends after `a` is the first that
            // may overlap.
            let first = rows.partition_point(|r| r.end <= a);
            let local: Vec<Range<u64>> = rows[first..]
                .iter()
                .take_while(|r| r.start < b)
                .map(|r| r.start.max(a) - a..r.end.min(b) - a)
                .filter(|r| !r.is_empty())
                .collect();
            if !local.is_empty() {
                out.push((g, local));
            }
        }
        out
    }

    /// Reads those rows from the fetched ranges (each (file range, bytes) as returned by
    /// `plan` and then fetched). Rows outside `rows` in the same row groups are skipped. Calls
    /// `f(series_index, time_nanos, total_value, stack_ids, values)` for every row in `rows`
    /// in file order (stack_ids/values empty when !with_samples), skipping rows whose
    /// time_nanos is outside [min_ns, max_ns]. `rows` may be unsorted or overlap; each row is
    /// visited once.
    pub fn read(
        &self,
        fetched: &[(Range<u64>, Bytes)],
        rows: &[Range<u64>],
        columns: impl Into<Columns>,
        min_ns: i64,
        max_ns: i64,
        mut f: impl FnMut(u32, i64, i64, &[u32], &[i64]),
    ) -> Result<(), FormatError> {
        self.read_rows(fetched, rows, columns, min_ns, max_ns, |_, s, t, total, st, v| f(s, t, total, st, v))
    }

    /// [`Self::read`] that also passes each row's absolute row number first, so a caller can
    /// check rows against the index.
    pub fn read_rows(
        &self,
        fetched: &[(Range<u64>, Bytes)],
        rows: &[Range<u64>],
        columns: impl Into<Columns>,
        min_ns: i64,
        max_ns: i64,
        mut f: impl FnMut(u64, u32, i64, i64, &[u32], &[i64]),
    ) -> Result<(), FormatError> {
        self.read_spans(fetched, rows, columns, min_ns, max_ns, |row, s, t, total, st, v, _| f(row, s, t, total, st, v))
    }

    /// [`Self::read_rows`] that also passes each row's span samples (empty unless
    /// `columns` is [`Columns::Spans`] and the file has them).
    #[allow(clippy::type_complexity)]
    pub fn read_spans(
        &self,
        fetched: &[(Range<u64>, Bytes)],
        rows: &[Range<u64>],
        columns: impl Into<Columns>,
        min_ns: i64,
        max_ns: i64,
        mut f: impl FnMut(u64, u32, i64, i64, &[u32], &[i64], SpanRow<'_>),
    ) -> Result<(), FormatError> {
        let columns = columns.into();
        let rows = self.checked_rows(rows)?;
        let file = Arc::new(SparseFile::new(fetched, self.file_len)?);
        let ncols = self.ncols_of(columns);
        let groups = self.groups(&rows);
        for (g, _) in &groups {
            self.check_chunks(&file, *g, ncols)?;
        }
        catching(|| self.decode(&file, groups, ncols, min_ns, max_ns, &mut f))
    }

    /// Every chunk is checked whole before anything decodes: a damaged one is reported as
    /// such, not as whatever the decoder makes of it.
    fn check_chunks(&self, file: &SparseFile, g: usize, ncols: usize) -> Result<(), FormatError> {
        for (c, r) in self.chunks[g][..ncols].iter().enumerate() {
            let Some(bytes) = file.slice(r) else {
                return Err(FormatError::NotFetched(r.clone()));
            };
            let (stored, computed) = (self.crcs[g][c], crc32c::crc32c(&bytes));
            if stored != computed {
                return Err(FormatError::Corrupt {
                    file: PROFILES,
                    offset: r.start,
                    what: format!(
                        "row group {g}, column {}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})",
                        COLUMNS[c].0
                    ),
                });
            }
        }
        Ok(())
    }

    /// Row groups a read of `rows` (absolute row numbers) decodes.
    pub fn groups_of(&self, rows: &[Range<u64>]) -> Vec<usize> {
        self.groups(&normalize(rows)).into_iter().map(|(g, _)| g).collect()
    }

    /// Byte ranges of the chunks that a read of `columns` needs of row groups `groups`:
    /// what `decode_group` is given for each of them. Sorted, merged.
    pub fn plan_groups(&self, groups: &[usize], columns: Columns) -> Vec<Range<u64>> {
        let ncols = self.ncols_of(columns);
        let out: Vec<Range<u64>> = groups.iter().flat_map(|&g| self.chunks[g][..ncols].iter().cloned()).collect();
        normalize(&out)
    }

    /// Every row of row group `g`, decoded from the fetched ranges (as `plan_groups` gives
    /// them), checked as `read` checks them: what the store-gateway keeps between queries, so
    /// that a query of rows it holds decodes nothing.
    pub fn decode_group(
        &self,
        fetched: &[(Range<u64>, Bytes)],
        g: usize,
        columns: Columns,
    ) -> Result<DecodedGroup, FormatError> {
        if g >= self.chunks.len() {
            return Err(FormatError::Request(format!(
                "row group {g} asked of {PROFILES}, which has {}",
                self.chunks.len()
            )));
        }
        let file = Arc::new(SparseFile::new(fetched, self.file_len)?);
        let ncols = self.ncols_of(columns);
        self.check_chunks(&file, g, ncols)?;
        let rg = self.meta.row_group(g);
        let n = (self.group_start[g + 1] - self.group_start[g]) as usize;
        let ctx = |(c, e): ColErr| {
            let r = &self.chunks[g][c];
            FormatError::Profiles(format!("row group {g}, column {} (bytes {}..{}): {e}", COLUMNS[c].0, r.start, r.end))
        };
        let mut rows = catching(|| {
            let mut buf = ReadBuffers::default();
            ReadColumns::new(&file, rg, ncols).and_then(|mut cols| cols.read(n, &mut buf)).map_err(ctx)?;
            Ok(buf)
        })?;
        rows.drop_scratch();
        Ok(DecodedGroup { ncols, bytes: rows.heap_bytes(), rows })
    }

    /// [`Self::read_spans`] from decoded row groups instead of fetched bytes: `decoded(g)`
    /// is row group `g` decoded with at least `columns` (a group decoded with more gives only
    /// `columns`, as a read of the bytes would). Same rows, same order, same values.
    #[allow(clippy::type_complexity)]
    pub fn read_decoded<'d>(
        &self,
        decoded: impl Fn(usize) -> Option<&'d DecodedGroup>,
        rows: &[Range<u64>],
        columns: Columns,
        min_ns: i64,
        max_ns: i64,
        mut f: impl FnMut(u64, u32, i64, i64, &[u32], &[i64], SpanRow<'_>),
    ) -> Result<(), FormatError> {
        let rows = self.checked_rows(rows)?;
        let ncols = self.ncols_of(columns);
        for (g, local) in self.groups(&rows) {
            let d = decoded(g)
                .filter(|d| d.ncols >= ncols)
                .ok_or_else(|| FormatError::Request(format!("row group {g} of {PROFILES} is not decoded")))?;
            for r in local {
                emit(&d.rows, r.start as usize..r.end as usize, self.group_start[g], ncols, min_ns, max_ns, &mut f);
            }
        }
        Ok(())
    }

    /// `rows` sorted and merged, refused if they reach past the file's rows.
    fn checked_rows(&self, rows: &[Range<u64>]) -> Result<Vec<Range<u64>>, FormatError> {
        let rows = normalize(rows);
        if let Some(last) = rows.last() {
            if last.end > self.num_rows() {
                return Err(FormatError::Request(format!(
                    "rows {}..{} asked of {PROFILES}, which has {} rows",
                    last.start,
                    last.end,
                    self.num_rows()
                )));
            }
        }
        Ok(rows)
    }

    fn decode(
        &self,
        file: &Arc<SparseFile>,
        groups: Vec<(usize, Vec<Range<u64>>)>,
        ncols: usize,
        min_ns: i64,
        max_ns: i64,
        f: &mut impl FnMut(u64, u32, i64, i64, &[u32], &[i64], SpanRow<'_>),
    ) -> Result<(), FormatError> {
        let mut buf = ReadBuffers::default();
        for (g, local) in groups {
            let rg = self.meta.row_group(g);
            let ctx = |c: usize, e: parquet::errors::ParquetError| {
                let r = &self.chunks[g][c];
                FormatError::Profiles(format!(
                    "row group {g}, column {} (bytes {}..{}): {e}",
                    COLUMNS[c].0, r.start, r.end
                ))
            };
            // A group reaching past the range on either side is narrowed to the rows inside
            // it first, by its time column alone: the other columns then skip the rest instead
            // of decoding it (a 1 h query of an 8 h block decodes 1 h of samples).
            let (lo, hi) = self.times[g];
            let local = if lo < min_ns || hi > max_ns {
                narrow(file, rg, &local, min_ns, max_ns).map_err(|(c, e)| ctx(c, e))?
            } else {
                local
            };
            if local.is_empty() {
                continue;
            }
            let mut cols = ReadColumns::new(file, rg, ncols).map_err(|(c, e)| ctx(c, e))?;
            let mut pos = 0u64;
            for r in local {
                cols.skip(r.start - pos).map_err(|(c, e)| ctx(c, e))?;
                let mut at = r.start;
                while at < r.end {
                    let n = (r.end - at).min(BATCH) as usize;
                    cols.read(n, &mut buf).map_err(|(c, e)| ctx(c, e))?;
                    emit(&buf, 0..n, self.group_start[g] + at, ncols, min_ns, max_ns, f);
                    at += n as u64;
                }
                pos = r.end;
            }
        }
        Ok(())
    }
}

/// Calls `f` for rows `idx` of `buf` (the first of `buf` being absolute row `first_row`)
/// whose time lies in [min_ns, max_ns], with the first `ncols` columns (the others empty).
#[allow(clippy::type_complexity)]
fn emit(
    buf: &ReadBuffers,
    idx: Range<usize>,
    first_row: u64,
    ncols: usize,
    min_ns: i64,
    max_ns: i64,
    f: &mut impl FnMut(u64, u32, i64, i64, &[u32], &[i64], SpanRow<'_>),
) {
    let (samples, spans) = (ncols > HEAD_COLUMNS, ncols > SAMPLE_COLUMNS);
    for i in idx {
        let t = buf.time[i];
        if t < min_ns || t > max_ns {
            continue;
        }
        let s = buf.offsets.get(i..i + 2).filter(|_| samples).map_or(0..0, |o| o[0]..o[1]);
        let k = buf.span_offsets.get(i..i + 2).filter(|_| spans).map_or(0..0, |o| o[0]..o[1]);
        let span_row = SpanRow {
            stacks: &buf.span_stacks[k.clone()],
            values: &buf.span_values[k.clone()],
            spans: &buf.span_ids[k],
        };
        f(
            first_row + i as u64,
            buf.series[i] as u32,
            t,
            buf.total[i],
            &buf.stack_ids[s.clone()],
            &buf.values[s],
            span_row,
        );
    }
}

/// Runs a decode, turning a panic of the parquet decoder into an error. The checksums rule
/// out damage; a file crafted to pass them could still make the decoder panic (it does on
/// some malformed pages). That panic touches only the run's readers and buffers; a caller
/// may have seen some rows, which the error tells it to drop.
fn catching<T>(run: impl FnOnce() -> Result<T, FormatError>) -> Result<T, FormatError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(FormatError::Profiles(format!("column data does not decode (the decoder panicked: {msg})")))
    })
}

/// Every row of one row group, decoded (`ProfilesFile::decode_group`): the store-gateway's
/// per-core cache keeps these, so that repeated queries of a block decode nothing.
pub struct DecodedGroup {
    /// The leading columns decoded.
    ncols: usize,
    rows: ReadBuffers,
    bytes: usize,
}

impl DecodedGroup {
    /// Whether it serves a read of `columns` of `file` (its row group decoded with as many).
    pub fn covers(&self, file: &ProfilesFile, columns: Columns) -> bool {
        self.ncols >= file.ncols_of(columns)
    }

    /// Bytes its decoded columns take.
    pub fn heap_bytes(&self) -> usize {
        self.bytes
    }
}

/// A reader of column `c` of row group `rg`.
fn column_reader<T: DataType>(
    file: &Arc<SparseFile>,
    rg: &RowGroupMetaData,
    c: usize,
) -> Result<ColumnReaderImpl<T>, ColErr> {
    let meta = rg.column(c);
    let pages = SerializedPageReader::new(file.clone(), meta, rg.num_rows() as usize, None).map_err(|e| (c, e))?;
    Ok(ColumnReaderImpl::<T>::new(meta.column_descr_ptr(), Box::new(pages)))
}

/// A `skip_records(n)` of column `c` that skipped fewer than `n` rows is an error.
fn skipped(c: usize, n: usize, r: parquet::errors::Result<usize>) -> Result<(), ColErr> {
    match r {
        Ok(k) if k == n => Ok(()),
        Ok(k) => Err((c, general(format!("skipped {k} of {n} rows: the column ends early")))),
        Err(e) => Err((c, e)),
    }
}

/// The runs of rows of `local` (row-group-local, sorted, disjoint) whose time lies in
/// [min_ns, max_ns], read from the group's time column alone. Rows of a series are sorted
/// by time, so the runs are about one per series.
fn narrow(
    file: &Arc<SparseFile>,
    rg: &RowGroupMetaData,
    local: &[Range<u64>],
    min_ns: i64,
    max_ns: i64,
) -> Result<Vec<Range<u64>>, ColErr> {
    let mut time = column_reader::<Int64Type>(file, rg, 1)?;
    let mut out: Vec<Range<u64>> = Vec::with_capacity(local.len());
    let mut buf: Vec<i64> = Vec::with_capacity(BATCH as usize);
    let mut pos = 0u64;
    for r in local {
        if r.start > pos {
            let n = (r.start - pos) as usize;
            skipped(1, n, time.skip_records(n))?;
        }
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(BATCH) as usize;
            buf.clear();
            let got = time.read_records(n, None, None, &mut buf).map_err(|e| (1, e))?.0;
            if got != n || buf.len() != n {
                return Err((1, general(format!("read {got} of {n} rows: the column ends early"))));
            }
            for (i, &t) in buf.iter().enumerate() {
                if t < min_ns || t > max_ns {
                    continue;
                }
                let row = at + i as u64;
                match out.last_mut() {
                    Some(last) if last.end == row => last.end = row + 1,
                    _ => out.push(row..row + 1),
                }
            }
            at += n as u64;
        }
        pos = r.end;
    }
    Ok(out)
}

/// The schema must be exactly kiln's (with or without the `spans` column): any other file
/// is not a kiln block. Its number of columns.
fn check_schema(meta: &ParquetMetaData) -> Result<usize, String> {
    let s = meta.file_metadata().schema_descr();
    if s.num_columns() != COLUMNS.len() && s.num_columns() != SAMPLE_COLUMNS {
        return Err(format!("{} columns, expected {} (or {SAMPLE_COLUMNS})", s.num_columns(), COLUMNS.len()));
    }
    for (c, &(name, ty, rep)) in s.columns().iter().zip(COLUMNS.iter()) {
        let (def_level, rep_level) = match rep {
            Repetition::REQUIRED => (0, 0),
            Repetition::OPTIONAL => (1, 0),
            Repetition::REPEATED => (1, 1),
        };
        let repeated = rep == Repetition::REPEATED;
        if c.path().parts() != [name]
            || c.physical_type() != ty
            || c.max_def_level() != def_level
            || c.max_rep_level() != rep_level
        {
            return Err(format!(
                "column {} ({:?}, def {}, rep {}) is not {}{name} {ty:?}",
                c.path(),
                c.physical_type(),
                c.max_def_level(),
                c.max_rep_level(),
                if repeated { "repeated " } else { "" }
            ));
        }
    }
    Ok(s.num_columns())
}

/// The per-chunk checksums of the footer's [`CHUNK_CRC_KEY`] entry.
fn chunk_crcs(meta: &ParquetMetaData, ncols: usize) -> Result<Vec<[u32; MAX_COLUMNS]>, String> {
    let text = meta
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == CHUNK_CRC_KEY))
        .and_then(|e| e.value.as_deref())
        .ok_or_else(|| format!("no {CHUNK_CRC_KEY} entry in the footer"))?;
    if text.len() != meta.num_row_groups() * ncols * 8 || !text.is_ascii() {
        return Err(format!("{CHUNK_CRC_KEY} holds {} bytes for {} row groups", text.len(), meta.num_row_groups()));
    }
    text.as_bytes()
        .chunks(ncols * 8)
        .map(|g| {
            let mut out = [0u32; MAX_COLUMNS];
            for (c, hex) in out.iter_mut().zip(g.chunks(8)) {
                let hex = std::str::from_utf8(hex).expect("ASCII");
                *c = u32::from_str_radix(hex, 16).map_err(|_| format!("{CHUNK_CRC_KEY}: {hex:?} is not hex"))?;
            }
            Ok(out)
        })
        .collect()
}

/// Each column chunk's byte range, checked to lie in the data region (after the leading
/// magic, before the footer) so that no later offset arithmetic can fail.
fn chunk_ranges(rg: &RowGroupMetaData, data_end: u64, ncols: usize) -> Result<[Range<u64>; MAX_COLUMNS], String> {
    if rg.num_columns() != ncols {
        return Err(format!("{} column chunks, expected {ncols}", rg.num_columns()));
    }
    let mut out: [Range<u64>; MAX_COLUMNS] = Default::default();
    for (c, slot) in rg.columns().iter().zip(out.iter_mut()) {
        let start = c.dictionary_page_offset().unwrap_or(c.data_page_offset());
        let (Ok(start), Ok(len)) = (u64::try_from(start), u64::try_from(c.compressed_size())) else {
            return Err(format!("column {} has offset {start}, size {}", c.column_path(), c.compressed_size()));
        };
        let data_page = c.data_page_offset() as u64;
        if start < 4
            || len == 0
            || start.checked_add(len).is_none_or(|e| e > data_end)
            || data_page < start
            || data_page >= start + len
        {
            return Err(format!(
                "column {} chunk at {start}+{len} (data page at {data_page}) lies outside the data (4..{data_end})",
                c.column_path()
            ));
        }
        *slot = start..start + len;
    }
    Ok(out)
}

/// Sorts ranges and merges the overlapping or touching ones; empty ones are dropped.
pub(super) fn normalize(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut v: Vec<Range<u64>> = ranges.iter().filter(|r| !r.is_empty()).cloned().collect();
    v.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The fetched parts of the file, as a parquet `ChunkReader`: reads inside a fetched range
/// are served from it, anything else is an error (never a panic or a silent zero fill).
struct SparseFile {
    /// (start, bytes), sorted by start.
    parts: Vec<(u64, Bytes)>,
    len: u64,
}

impl SparseFile {
    fn new(fetched: &[(Range<u64>, Bytes)], len: u64) -> Result<SparseFile, FormatError> {
        let mut parts = Vec::with_capacity(fetched.len());
        for (r, b) in fetched {
            if r.end < r.start || r.end - r.start != b.len() as u64 || r.end > len {
                return Err(FormatError::Request(format!(
                    "fetched range {}..{} of {PROFILES} came with {} bytes (file of {len} bytes)",
                    r.start,
                    r.end,
                    b.len()
                )));
            }
            parts.push((r.start, b.clone()));
        }
        parts.sort_unstable_by_key(|p| p.0);
        Ok(SparseFile { parts, len })
    }

    /// The fetched part holding all of `r`, as (its start, its bytes).
    fn find(&self, r: &Range<u64>) -> Option<&(u64, Bytes)> {
        let upto = self.parts.partition_point(|p| p.0 <= r.start);
        // Overlapping fetches are allowed: any part that starts early enough may hold it.
        self.parts[..upto].iter().rev().find(|(s, b)| s + b.len() as u64 >= r.end)
    }

    /// The bytes of `r`, if fetched.
    fn slice(&self, r: &Range<u64>) -> Option<Bytes> {
        let (s, b) = self.find(r)?;
        Some(b.slice((r.start - s) as usize..(r.end - s) as usize))
    }
}

impl Length for SparseFile {
    fn len(&self) -> u64 {
        self.len
    }
}

fn not_fetched(start: u64, end: u64) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::General(format!("bytes {start}..{end} were not fetched"))
}

impl ChunkReader for SparseFile {
    type T = bytes::buf::Reader<Bytes>;

    /// A reader from `start` to the end of the fetched part holding it: page headers are
    /// read through it, and a header that runs past the part is an EOF error.
    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let (s, b) = self.find(&(start..start)).ok_or_else(|| not_fetched(start, start + 1))?;
        Ok(b.slice((start - s) as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let end = start.saturating_add(length as u64);
        let (s, b) = self.find(&(start..end)).ok_or_else(|| not_fetched(start, end))?;
        let at = (start - s) as usize;
        Ok(b.slice(at..at + length))
    }
}

/// Decoded columns of one batch of rows.
#[derive(Default)]
struct ReadBuffers {
    series: Vec<i32>,
    time: Vec<i64>,
    total: Vec<i64>,
    /// Row i's samples are `stack_ids[offsets[i]..offsets[i+1]]` (empty without samples).
    offsets: Vec<usize>,
    stack_ids: Vec<u32>,
    values: Vec<i64>,
    raw_ids: Vec<i32>,
    def: Vec<i16>,
    rep: Vec<i16>,
    def2: Vec<i16>,
    rep2: Vec<i16>,
    /// Row i's span samples are `span_*[span_offsets[i]..span_offsets[i+1]]` (empty
    /// unless the spans column is read).
    span_offsets: Vec<usize>,
    span_stacks: Vec<u32>,
    span_values: Vec<i64>,
    span_ids: Vec<u64>,
    span_cells: Vec<ByteArray>,
    span_def: Vec<i16>,
}

impl ReadBuffers {
    /// Frees the decoder's scratch space, keeping the decoded columns.
    fn drop_scratch(&mut self) {
        for v in [&mut self.def, &mut self.rep, &mut self.def2, &mut self.rep2, &mut self.span_def] {
            *v = Vec::new();
        }
        self.raw_ids = Vec::new();
        self.span_cells = Vec::new();
        self.series.shrink_to_fit();
        self.time.shrink_to_fit();
        self.total.shrink_to_fit();
        self.offsets.shrink_to_fit();
        self.stack_ids.shrink_to_fit();
        self.values.shrink_to_fit();
        self.span_offsets.shrink_to_fit();
        self.span_stacks.shrink_to_fit();
        self.span_values.shrink_to_fit();
        self.span_ids.shrink_to_fit();
    }

    /// Bytes its decoded columns take (after `drop_scratch`).
    fn heap_bytes(&self) -> usize {
        fn b<T>(v: &Vec<T>) -> usize {
            v.capacity() * std::mem::size_of::<T>()
        }
        b(&self.series)
            + b(&self.time)
            + b(&self.total)
            + b(&self.offsets)
            + b(&self.stack_ids)
            + b(&self.values)
            + b(&self.span_offsets)
            + b(&self.span_stacks)
            + b(&self.span_values)
            + b(&self.span_ids)
    }
}

type ColErr = (usize, parquet::errors::ParquetError);

/// The column readers of one row group, advanced in lock step.
struct ReadColumns {
    series: ColumnReaderImpl<Int32Type>,
    time: ColumnReaderImpl<Int64Type>,
    total: ColumnReaderImpl<Int64Type>,
    samples: Option<(ColumnReaderImpl<Int32Type>, ColumnReaderImpl<Int64Type>)>,
    spans: Option<ColumnReaderImpl<ByteArrayType>>,
}

fn general(msg: String) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::General(msg)
}

impl ReadColumns {
    /// Readers of the first `ncols` columns.
    fn new(file: &Arc<SparseFile>, rg: &RowGroupMetaData, ncols: usize) -> Result<Self, ColErr> {
        let samples = (ncols > HEAD_COLUMNS).then(|| Ok((column_reader(file, rg, 3)?, column_reader(file, rg, 4)?)));
        Ok(ReadColumns {
            series: column_reader(file, rg, 0)?,
            time: column_reader(file, rg, 1)?,
            total: column_reader(file, rg, 2)?,
            samples: samples.transpose()?,
            spans: if ncols > SAMPLE_COLUMNS { Some(column_reader(file, rg, 5)?) } else { None },
        })
    }

    fn skip(&mut self, n: u64) -> Result<(), ColErr> {
        if n == 0 {
            return Ok(());
        }
        let n = n as usize;
        let check = |c: usize, r: parquet::errors::Result<usize>| skipped(c, n, r);
        check(0, self.series.skip_records(n))?;
        check(1, self.time.skip_records(n))?;
        check(2, self.total.skip_records(n))?;
        if let Some((s, v)) = &mut self.samples {
            check(3, s.skip_records(n))?;
            check(4, v.skip_records(n))?;
        }
        if let Some(c) = &mut self.spans {
            check(5, c.skip_records(n))?;
        }
        Ok(())
    }

    /// Decodes the next `n` rows into `b`.
    fn read(&mut self, n: usize, b: &mut ReadBuffers) -> Result<(), ColErr> {
        let count = |c: usize, got: usize| {
            if got == n {
                Ok(())
            } else {
                Err((c, general(format!("read {got} of {n} rows: the column ends early"))))
            }
        };
        b.series.clear();
        b.time.clear();
        b.total.clear();
        count(0, self.series.read_records(n, None, None, &mut b.series).map_err(|e| (0, e))?.0)?;
        count(1, self.time.read_records(n, None, None, &mut b.time).map_err(|e| (1, e))?.0)?;
        count(2, self.total.read_records(n, None, None, &mut b.total).map_err(|e| (2, e))?.0)?;
        b.offsets.clear();
        b.stack_ids.clear();
        b.values.clear();
        self.read_spans(n, b)?;
        let Some((sc, vc)) = &mut self.samples else {
            return Ok(());
        };
        b.raw_ids.clear();
        b.def.clear();
        b.rep.clear();
        b.def2.clear();
        b.rep2.clear();
        let (rows, _, _) =
            sc.read_records(n, Some(&mut b.def), Some(&mut b.rep), &mut b.raw_ids).map_err(|e| (3, e))?;
        count(3, rows)?;
        let (rows, _, _) =
            vc.read_records(n, Some(&mut b.def2), Some(&mut b.rep2), &mut b.values).map_err(|e| (4, e))?;
        count(4, rows)?;
        // The two lists of a row have one length: their levels must be identical.
        if b.def != b.def2 || b.rep != b.rep2 || b.raw_ids.len() != b.values.len() {
            return Err((4, general("stacktrace_id and value lists differ in length".into())));
        }
        let mut k = 0usize;
        for (&d, &r) in b.def.iter().zip(&b.rep) {
            if r == 0 {
                b.offsets.push(k);
            }
            k += usize::from(d == 1);
        }
        b.offsets.push(k);
        if b.offsets.len() != n + 1 || k != b.raw_ids.len() {
            return Err((3, general(format!("levels describe {} rows and {k} values", b.offsets.len() - 1))));
        }
        b.stack_ids.extend(b.raw_ids.iter().map(|&s| s as u32));
        Ok(())
    }

    /// Decodes the next `n` rows' span cells into `b` (nothing without the column).
    fn read_spans(&mut self, n: usize, b: &mut ReadBuffers) -> Result<(), ColErr> {
        b.span_offsets.clear();
        b.span_stacks.clear();
        b.span_values.clear();
        b.span_ids.clear();
        let Some(c) = &mut self.spans else {
            return Ok(());
        };
        b.span_cells.clear();
        b.span_def.clear();
        let (rows, _, _) = c.read_records(n, Some(&mut b.span_def), None, &mut b.span_cells).map_err(|e| (5, e))?;
        if rows != n || b.span_def.len() != n {
            return Err((5, general(format!("read {rows} of {n} rows: the column ends early"))));
        }
        let mut cells = b.span_cells.iter();
        for &d in &b.span_def {
            b.span_offsets.push(b.span_stacks.len());
            if d == 1 {
                let cell = cells.next().ok_or_else(|| (5, general("fewer span cells than rows say".into())))?;
                decode_spans(cell.data(), &mut b.span_stacks, &mut b.span_values, &mut b.span_ids)
                    .map_err(|m| (5, general(m)))?;
            }
        }
        b.span_offsets.push(b.span_stacks.len());
        if cells.next().is_some() {
            return Err((5, general("more span cells than rows say".into())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row = (u32, i64, i64, Vec<u32>, Vec<i64>);

    fn rows(n: usize, samples: usize) -> (Vec<Row>, Vec<u8>) {
        let data: Vec<Row> = (0..n)
            .map(|i| {
                let k = (i * 7) % (samples + 1);
                let stacks: Vec<u32> = (0..k as u32).map(|s| s * 3 + i as u32 % 5 + 1).collect();
                let values: Vec<i64> = (0..k as i64).map(|v| v + 1).collect();
                ((i / 10) as u32, i as i64 * 1000, values.iter().sum(), stacks, values)
            })
            .collect();
        let bytes = write_rows(&data);
        (data, bytes)
    }

    /// `data` written as a file of row groups of 64 rows.
    fn write_rows(data: &[Row]) -> Vec<u8> {
        let rows: Vec<ProfileRow<'_>> = data
            .iter()
            .map(|(s, t, tot, st, v)| ProfileRow {
                series: *s,
                time_nanos: *t,
                total: *tot,
                stacks: st,
                values: v,
                spans: SpanRow::default(),
            })
            .collect();
        write(&rows, &EncodeOptions { row_group_rows: 64, zstd_level: 3, ..Default::default() }).unwrap()
    }

    #[test]
    fn row_groups_are_bounded_by_rows_and_samples() {
        let sizes = [3usize, 3, 3, 10, 1, 1, 0, 2];
        let data: Vec<(Vec<u32>, Vec<i64>)> = sizes.iter().map(|&n| (vec![1; n], vec![1; n])).collect();
        let rows: Vec<ProfileRow<'_>> = data
            .iter()
            .enumerate()
            .map(|(i, (st, v))| ProfileRow {
                series: 0,
                time_nanos: i as i64,
                total: 0,
                stacks: st,
                values: v,
                spans: SpanRow::default(),
            })
            .collect();
        let opts = EncodeOptions { row_group_rows: 3, row_group_samples: 6, ..Default::default() };
        let lens: Vec<usize> = row_groups(&rows, &opts).iter().map(|g| g.len()).collect();
        // [3,3] hits 6 samples; [3] then the 10-sample profile alone; [1,1,0] hits 3 rows; [2].
        assert_eq!(lens, [2, 1, 1, 3, 1]);
        assert_eq!(lens.iter().sum::<usize>(), rows.len());
    }

    #[test]
    fn span_samples_count_toward_a_row_groups_samples() {
        let (st, v, sp) = (vec![1u32; 4], vec![1i64; 4], vec![7u64; 4]);
        let spans = SpanRow { stacks: &st, values: &v, spans: &sp };
        let rows: Vec<ProfileRow<'_>> = (0..4)
            .map(|i| ProfileRow { series: 0, time_nanos: i, total: 0, stacks: &st[..1], values: &v[..1], spans })
            .collect();
        let opts = EncodeOptions { row_group_rows: 100, row_group_samples: 10, ..Default::default() };
        // Five samples a row (one, and four in spans): two rows a group.
        let lens: Vec<usize> = row_groups(&rows, &opts).iter().map(|g| g.len()).collect();
        assert_eq!(lens, [2, 2]);
    }

    fn fetch(bytes: &[u8], plan: &[Range<u64>]) -> Vec<(Range<u64>, Bytes)> {
        plan.iter().map(|r| (r.clone(), Bytes::copy_from_slice(&bytes[r.start as usize..r.end as usize]))).collect()
    }

    #[test]
    fn reads_selected_rows_from_fetched_ranges() {
        let (data, bytes) = rows(500, 9);
        let file = ProfilesFile::from_tail(bytes.len() as u64, &bytes).unwrap();
        assert_eq!(file.num_rows(), 500);
        assert_eq!(file.num_row_groups(), 8);
        for with_samples in [false, true] {
            let want = [3..5, 60..70, 130..131, 499..500];
            let plan = file.plan(&want, with_samples);
            let mut got = Vec::new();
            file.read(&fetch(&bytes, &plan), &want, with_samples, i64::MIN, i64::MAX, |s, t, tot, st, v| {
                got.push((s, t, tot, st.to_vec(), v.to_vec()))
            })
            .unwrap();
            let expect: Vec<_> = want
                .iter()
                .flat_map(|r| r.clone())
                .map(|i| {
                    let d = data[i as usize].clone();
                    if with_samples {
                        d
                    } else {
                        (d.0, d.1, d.2, vec![], vec![])
                    }
                })
                .collect();
            assert_eq!(got, expect);
            // A missing range is an error naming the range.
            let mut short = fetch(&bytes, &plan);
            short.pop();
            let e = file.read(&short, &want, with_samples, i64::MIN, i64::MAX, |_, _, _, _, _| {});
            assert!(matches!(e, Err(FormatError::NotFetched(_))), "{e:?}");
        }
    }

    #[test]
    fn a_time_window_reads_exactly_the_rows_inside_it_whatever_the_groups() {
        // 12 series of 40 rows each, each series' times ascending from its own start (as a
        // block's rows are: by series, then time); row groups of 64 rows straddle series.
        let data: Vec<Row> = (0..480usize)
            .map(|i| {
                let (series, j) = (i / 40, i % 40);
                let stacks = vec![j as u32 + 1, j as u32 + 2];
                (series as u32, (series as i64 * 7 + j as i64) * 1000, 3, stacks, vec![1, 2])
            })
            .collect();
        let bytes = write_rows(&data);
        let file = ProfilesFile::from_tail(bytes.len() as u64, &bytes).unwrap();
        let (all, last) = (0..480, 479..480);
        let selections: [&[Range<u64>]; 3] =
            [std::slice::from_ref(&all), &[10..75, 80..81, 200..320], std::slice::from_ref(&last)];
        let windows =
            [(0, 5_000), (38_000, 41_000), (15_500, 60_000), (-5, -1), (i64::MIN, i64::MAX), (77_000, 77_000)];
        for want in selections {
            for (min, max) in windows {
                let plan = file.plan(want, true);
                let mut got = Vec::new();
                file.read(&fetch(&bytes, &plan), want, true, min, max, |s, t, tot, st, v| {
                    got.push((s, t, tot, st.to_vec(), v.to_vec()))
                })
                .unwrap();
                let expect: Vec<Row> = want
                    .iter()
                    .flat_map(|r| r.clone())
                    .map(|i| data[i as usize].clone())
                    .filter(|r| r.1 >= min && r.1 <= max)
                    .collect();
                assert_eq!(got, expect, "rows {want:?}, window {min}..={max}");
            }
        }
        // The narrowing itself: in the second row group (rows 64..128: series 1's last 16
        // rows, then series 2 and 3), the runs inside 40 s..=50 s are one per series.
        let plan = file.plan(std::slice::from_ref(&(64..128)), true);
        let sparse = Arc::new(SparseFile::new(&fetch(&bytes, &plan), file.file_len).unwrap());
        let runs = narrow(&sparse, file.meta.row_group(1), std::slice::from_ref(&(0..64)), 40_000, 50_000).unwrap();
        // Series 1 starts at 7 s: rows 33..=40 of it are 40 s..=47 s (local 9..16); series 2
        // (14 s) rows 26..=36 (local 42..53); series 3 (21 s) starts at local 56, rows 19..
        // are past 40 s, so none of its first 8 rows in the group.
        assert_eq!(runs, [9..16, 42..53]);
    }

    /// One row's span samples as three lists.
    type SpanLists = (Vec<u32>, Vec<i64>, Vec<u64>);

    /// Rows with span samples on every third row.
    fn span_rows(n: usize) -> Vec<SpanLists> {
        (0..n)
            .map(|i| {
                let k = if i % 3 == 0 { i % 4 + 1 } else { 0 };
                let stacks = (0..k as u32).map(|s| s * 5 + 2).collect();
                let values = (0..k as i64).map(|v| -v - 1).collect();
                let spans = (0..k as u64).map(|s| u64::MAX - s * 977 - i as u64).collect();
                (stacks, values, spans)
            })
            .collect()
    }

    fn write_with_spans(n: usize, ncols: usize) -> (Vec<SpanLists>, Vec<u8>) {
        let spans = span_rows(n);
        let samples: Vec<(Vec<u32>, Vec<i64>)> = (0..n).map(|i| (vec![i as u32 + 1], vec![i as i64 + 1])).collect();
        let rows: Vec<ProfileRow<'_>> = (0..n)
            .map(|i| ProfileRow {
                series: (i / 7) as u32,
                time_nanos: i as i64,
                total: i as i64 + 1,
                stacks: &samples[i].0,
                values: &samples[i].1,
                spans: SpanRow { stacks: &spans[i].0, values: &spans[i].1, spans: &spans[i].2 },
            })
            .collect();
        let opts = EncodeOptions { row_group_rows: 16, ..Default::default() };
        check(&rows, &opts).unwrap();
        let mut w = Writer::with_columns(&opts, Vec::new(), ncols).unwrap();
        for g in row_groups(&rows, &opts) {
            w.write_group(&rows[g]).unwrap();
        }
        (spans, w.finish().unwrap())
    }

    #[test]
    fn span_samples_are_read_only_when_asked_and_old_files_have_none() {
        for ncols in [MAX_COLUMNS, SAMPLE_COLUMNS] {
            let (spans, bytes) = write_with_spans(100, ncols);
            let file = ProfilesFile::from_tail(bytes.len() as u64, &bytes).unwrap();
            let want = [5..40, 77..100];
            for columns in [Columns::Head, Columns::Samples, Columns::Spans] {
                let plan = file.plan(&want, columns);
                let mut got = Vec::new();
                file.read_spans(
                    &fetch(&bytes, &plan),
                    &want,
                    columns,
                    i64::MIN,
                    i64::MAX,
                    |row, _, _, _, st, _, sp| {
                        assert_eq!(st.len(), usize::from(columns != Columns::Head), "row {row}");
                        got.push((row, sp.stacks.to_vec(), sp.values.to_vec(), sp.spans.to_vec()));
                    },
                )
                .unwrap();
                let expect: Vec<_> = want
                    .iter()
                    .flat_map(|r| r.clone())
                    .map(|row| {
                        let (st, v, sp) = spans[row as usize].clone();
                        if columns == Columns::Spans && ncols == MAX_COLUMNS {
                            (row, st, v, sp)
                        } else {
                            (row, vec![], vec![], vec![])
                        }
                    })
                    .collect();
                assert_eq!(got, expect, "{ncols} columns, {columns:?}");
            }
        }
    }

    proptest::proptest! {
        /// A span cell decodes to what was encoded; a damaged one is an error or other
        /// samples, never a panic.
        #[test]
        fn span_cells_roundtrip(
            samples in proptest::collection::vec((proptest::prelude::any::<u32>(), proptest::prelude::any::<i64>(), proptest::prelude::any::<u64>()), 0..20),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let mut samples = samples;
            samples.sort_unstable_by_key(|s| s.0);
            let (st, v, sp): (Vec<u32>, Vec<i64>, Vec<u64>) =
                (samples.iter().map(|s| s.0).collect(), samples.iter().map(|s| s.1).collect(), samples.iter().map(|s| s.2).collect());
            let mut cell = Vec::new();
            encode_spans(&SpanRow { stacks: &st, values: &v, spans: &sp }, &mut cell);
            let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
            decode_spans(&cell, &mut a, &mut b, &mut c).unwrap();
            proptest::prop_assert_eq!((&a, &b, &c), (&st, &v, &sp));
            let at = flip.index(cell.len());
            cell[at] ^= 0x81;
            let _ = decode_spans(&cell, &mut a, &mut b, &mut c);
            let _ = decode_spans(&cell[..at], &mut a, &mut b, &mut c);
        }
    }

    #[test]
    fn footer_needs_more_tail() {
        let (_, bytes) = rows(100, 3);
        let len = bytes.len() as u64;
        let Err(FormatError::NeedTail(n)) = ProfilesFile::from_tail(len, &bytes[bytes.len() - 20..]) else {
            panic!("a 20-byte tail cannot hold the footer");
        };
        let f = ProfilesFile::from_tail(len, &bytes[bytes.len() - n as usize..]).unwrap();
        assert_eq!(f.footer_len(), n);
        assert!(matches!(ProfilesFile::from_tail(len, &bytes[bytes.len() - 3..]), Err(FormatError::NeedTail(8))));
        assert!(ProfilesFile::from_tail(len, &bytes[..bytes.len() - 1]).is_err());
        assert!(ProfilesFile::from_tail(5, b"PAR1\0").is_err());
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let (_, bytes) = rows(300, 5);
        let whole = 0..300u64;
        let all = std::slice::from_ref(&whole);
        let clean = ProfilesFile::from_tail(bytes.len() as u64, &bytes).unwrap();
        let data_end = bytes.len() as u64 - clean.footer_len();
        let mut seed = 0x9e3779b97f4a7c15u64;
        let (mut caught, mut decoded) = (0, 0);
        for _ in 0..400 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut b = bytes.clone();
            let at = (seed >> 33) as usize % b.len();
            b[at] ^= 1 << ((seed >> 20) % 8);
            let Ok(mut file) = ProfilesFile::from_tail(b.len() as u64, &b) else { continue };
            let plan = file.plan(all, Columns::Spans);
            let r = file.read(&fetch(&b, &plan), all, Columns::Spans, i64::MIN, i64::MAX, |_, _, _, _, _| {});
            // Damage in the column data is caught by the chunk checksums.
            if (at as u64) < data_end && at >= 4 {
                assert!(matches!(r, Err(FormatError::Corrupt { .. })), "flip at {at}: {r:?}");
                caught += 1;
            }
            // Past the checksums (as a crafted file would be), the decoder must still give an
            // error or rows, never a panic out of `read`.
            for (g, chunks) in file.chunks.iter().enumerate() {
                for (c, r) in chunks.iter().enumerate() {
                    file.crcs[g][c] = crc32c::crc32c(&b[r.start as usize..r.end as usize]);
                }
            }
            let r = file.read(&fetch(&b, &plan), all, Columns::Spans, i64::MIN, i64::MAX, |_, _, _, _, _| {});
            decoded += usize::from(r.is_ok());
        }
        assert!(caught > 150, "{caught}");
        assert!(decoded < 400, "{decoded}");
    }

    proptest::proptest! {
        /// Garbage footers (and damaged real ones) are errors, not panics.
        #[test]
        fn footers_never_panic(
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut f = b"PAR1".to_vec();
            f.extend_from_slice(&garbage);
            f.extend_from_slice(&(garbage.len() as u32).to_le_bytes());
            f.extend_from_slice(b"PAR1");
            let _ = ProfilesFile::from_tail(f.len() as u64, &f);

            let (_, mut bytes) = rows(50, 3);
            let footer = ProfilesFile::from_tail(bytes.len() as u64, &bytes).unwrap().footer_len() as usize;
            let n = bytes.len();
            bytes[n - footer + at.index(footer - 8)] ^= 1 << bit;
            let _ = ProfilesFile::from_tail(n as u64, &bytes);
        }
    }
}
