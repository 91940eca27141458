//! Start-up: replay the last durable WAL generation into the cores' heads: in place when it
//! was written with the current ring (each record goes back to the core whose WAL holds it,
//! and is not written again), else routed by the current ring and written again into the
//! new generation, which `lib.rs` then commits.
//!
//! Runs on the main thread before the process is started: the port is open, but `/ready` is
//! unready (saying how far replay has got, from `ReplayProgress`) and every route but the
//! process's own pages answers 503, so no client sees a partial head.
use crate::service::readiness::ReplayProgress;
use kiln_io::error::ErrorKind;
use kiln_io::wal::{self, record};
use kiln_shards::ingester::head::AppendStats;
use kiln_shards::ingester::walcodec;
use kiln_shards::ingester::{Ingest, IngestError, IngestMode, Msg};
use kiln_shards::runtime::{CoreGone, Mesh};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Why a replay stopped. Nothing acknowledged is ever skipped: the start fails instead.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("listing {}: {source}", path.display())]
    List { path: PathBuf, source: std::io::Error },
    /// A segment could not be read, or is corrupt in the middle.
    #[error(transparent)]
    Read(#[from] wal::segment::ReadError),
    #[error("WAL segment {} is damaged at byte offset {offset} but is not its core's last segment; refusing to skip acknowledged data", path.display())]
    Damaged { path: PathBuf, offset: usize },
    #[error("WAL segment {}: a record with a valid checksum does not decode: {error}", path.display())]
    Undecodable { path: PathBuf, error: String },
    #[error("WAL segment {} holds a series that the current ring gives core {core}, not core {seg_core}: the ring recorded in {} does not match how this kiln routes series; move that file away to have the WAL rewritten instead", path.display(), ring_file.display())]
    RingMismatch { path: PathBuf, core: usize, seg_core: u32, ring_file: PathBuf },
    /// An owning core refused a replayed record: its WAL write failed (a rewrite on a full
    /// disk).
    #[error(transparent)]
    Refused(#[from] IngestError),
    #[error(transparent)]
    CoreGone(#[from] CoreGone),
    #[error("a core stopped during WAL replay")]
    CoreStopped,
    /// A replay thread failed or panicked.
    #[error("{0}")]
    Thread(&'static str),
}

impl ReplayError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReplayError::List { source, .. } => ErrorKind::of_io(source),
            ReplayError::Read(wal::segment::ReadError::Io { source, .. }) => ErrorKind::of_io(source),
            ReplayError::Read(wal::segment::ReadError::Corrupt { .. })
            | ReplayError::Damaged { .. }
            | ReplayError::Undecodable { .. }
            | ReplayError::RingMismatch { .. } => ErrorKind::Invalid,
            ReplayError::Refused(IngestError::Wal(_)) => ErrorKind::Retryable,
            ReplayError::Refused(_) | ReplayError::CoreGone(_) | ReplayError::CoreStopped | ReplayError::Thread(_) => {
                ErrorKind::Fatal
            }
        }
    }

    /// Whether an owning core's WAL write failed (a rewrite on a full disk).
    pub fn is_wal_write(&self) -> bool {
        matches!(self, ReplayError::Refused(IngestError::Wal(_)))
    }
}

#[derive(Debug, Default)]
pub struct ReplayStats {
    pub segments: usize,
    pub records: u64,
    /// Records skipped because a block in the bucket index holds them.
    pub in_blocks: u64,
    /// Records of pushes that were refused after the record was written.
    pub aborted: u64,
    pub bytes: u64,
    pub dropped_tails: usize,
}

/// At most this many replayed records await their owners' answers at once, and at most
/// `IN_FLIGHT_BYTES` of their record bytes: the replay thread holds each decoded profile
/// until its owners answered, so that it is freed on the thread that allocated it (a free
/// from the owning core was a cross-thread free in the allocator, a sixth of the core's
/// replay time), and those profiles are what these bound.
const IN_FLIGHT: usize = 4096;
const IN_FLIGHT_BYTES: usize = 16 << 20;

/// Blocks in the bucket indexes: (tenant, block id).
pub type Indexed = HashSet<(String, String)>;

/// Tenant → position (segment, record) of the tenant's last cut marker in one core's WAL
/// whose block is indexed: the tenant's records before it are in the block.
type Cuts = HashMap<String, (u64, usize)>;

/// Keys of pushes refused after their records were written (abort records): replay skips
/// their records wherever they are in the stream.
type Aborted = HashSet<u64>;

/// The indexed cut markers and the aborted pushes of one core's segments. Only records that
/// are markers or aborts are decoded; damage is reported by the replay pass proper, here
/// only whole records count.
fn scan_markers(segs: &[wal::SegmentFile], indexed: &Indexed, buf: &mut Vec<u8>) -> (Cuts, Aborted) {
    let mut cuts = HashMap::new();
    let mut aborted = HashSet::new();
    for seg in segs {
        if seg.bytes_into(buf).is_err() {
            continue;
        }
        for (i, rec) in record::decode_all(buf).0.into_iter().enumerate() {
            if let Some(key) = walcodec::abort_key(rec) {
                aborted.insert(key);
                continue;
            }
            if indexed.is_empty() || !walcodec::is_cut(rec) {
                continue;
            }
            if let Ok(walcodec::Entry::Cut { tenant, block }) = walcodec::decode_entry(rec) {
                if indexed.contains(&(tenant.clone(), block)) {
                    cuts.insert(tenant, (seg.seq, i));
                }
            }
        }
    }
    (cuts, aborted)
}

/// Whether record `i` of `seg`, an ingest of `tenant`, is held by an indexed block.
fn in_block(cuts: &Cuts, seg: &wal::SegmentFile, i: usize, tenant: &str) -> bool {
    cuts.get(tenant).is_some_and(|&at| (seg.seq, i) < at)
}

/// Replays `source` through `mesh`, skipping what indexed blocks already hold. Damage other
/// than a torn tail of a core's last segment is an error: acknowledged data is never skipped
/// silently. Each source core's WAL is an independent stream (its cut markers speak only of
/// its own records), so the streams are read and decoded on parallel threads, as many as
/// there are CPUs; the owning cores append what they are sent as at any time. `in_place`:
/// the generation is adopted (see `kiln_io::wal`): records are only appended to the heads.
pub fn replay(
    source: &Path,
    mesh: &Mesh,
    indexed: &Indexed,
    in_place: bool,
    progress: &ReplayProgress,
) -> Result<ReplayStats, ReplayError> {
    let started = Instant::now();
    let segs = wal::segments(source).map_err(|e| ReplayError::List { path: source.to_path_buf(), source: e })?;
    progress.begin(segs.iter().map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len())).sum());
    let mut streams: Vec<&[wal::SegmentFile]> = segs.chunk_by(|a, b| a.core == b.core).collect();
    streams.reverse();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let queue = std::sync::Mutex::new(streams);
    let workers = cpus.min(queue.lock().map_or(0, |q| q.len())).max(1);
    let results: Vec<Result<ReplayStats, ReplayError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut total = ReplayStats::default();
                    loop {
                        let next = queue.lock().map_err(|_| ReplayError::Thread("a replay thread failed"))?.pop();
                        let Some(stream) = next else { return Ok(total) };
                        let st = replay_stream(stream, mesh, indexed, in_place, progress)?;
                        total.add(&st);
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(Err(ReplayError::Thread("a replay thread panicked")))).collect()
    });
    progress.finish();
    let mut st = ReplayStats::default();
    for r in results {
        st.add(&r?);
    }
    tracing::info!(
        segments = st.segments,
        records = st.records,
        in_blocks = st.in_blocks,
        aborted = st.aborted,
        bytes = st.bytes,
        seconds = started.elapsed().as_secs_f64(),
        threads = workers,
        in_place,
        "WAL replayed"
    );
    Ok(st)
}

impl ReplayStats {
    fn add(&mut self, o: &ReplayStats) {
        self.segments += o.segments;
        self.records += o.records;
        self.in_blocks += o.in_blocks;
        self.aborted += o.aborted;
        self.bytes += o.bytes;
        self.dropped_tails += o.dropped_tails;
    }
}

/// Replays one source core's segments, in order.
fn replay_stream(
    segs: &[wal::SegmentFile],
    mesh: &Mesh,
    indexed: &Indexed,
    in_place: bool,
    progress: &ReplayProgress,
) -> Result<ReplayStats, ReplayError> {
    // One buffer for every segment of the stream, both passes, sized once for the largest
    // (growing it would copy it, and fault in fresh pages, each time a larger one came).
    let largest = segs.iter().map(|s| std::fs::metadata(&s.path).map_or(0, |m| m.len())).max().unwrap_or(0);
    let mut buf = Vec::with_capacity(usize::try_from(largest).unwrap_or(0));
    let (cuts, aborted) = scan_markers(segs, indexed, &mut buf);
    let mut st = ReplayStats::default();
    let mut waits = InFlight::default();
    for (i, seg) in segs.iter().enumerate() {
        let last_of_core = i + 1 == segs.len();
        let (records, dropped) = seg.read_into(&mut buf)?;
        if let Some(d) = dropped {
            if !last_of_core {
                return Err(ReplayError::Damaged { path: d.path, offset: d.offset });
            }
            tracing::warn!(file = %d.path.display(), offset = d.offset, bytes = d.bytes, "dropping the torn tail of the WAL (an interrupted, unacknowledged write)");
            st.dropped_tails += 1;
        }
        st.segments += 1;
        let seg_bytes = std::fs::metadata(&seg.path).map_or(0, |m| m.len());
        let mut left = seg_bytes;
        for (i, rec) in records.into_iter().enumerate() {
            st.bytes += rec.len() as u64;
            let n = (rec.len() as u64).min(left);
            progress.advance(n);
            left -= n;
            let entry = walcodec::decode_entry(rec)
                .map_err(|e| ReplayError::Undecodable { path: seg.path.clone(), error: e.to_string() })?;
            let walcodec::Entry::Ingest { key, tenant, profile, groups } = entry else { continue };
            if key.is_some_and(|k| aborted.contains(&k)) {
                st.aborted += 1;
                continue;
            }
            if in_block(&cuts, seg, i, &tenant) {
                st.in_blocks += 1;
                continue;
            }
            let tenant: Arc<str> = Arc::from(tenant);
            // Its stack keys computed on this thread, not on the cores that intern it.
            profile.stack_keys();
            let profile = Arc::new(profile);
            let mut per_core: Vec<Vec<_>> = vec![Vec::new(); mesh.cores()];
            for g in groups {
                let owner = mesh.ring.owner(g.labels.fingerprint(&tenant)).core as usize;
                per_core[owner].push(g);
            }
            // The record's bytes count once, with its first message.
            let mut bytes = rec.len();
            for (c, groups) in per_core.into_iter().enumerate().filter(|(_, g)| !g.is_empty()) {
                let (tx, rx) = flume::bounded(1);
                let (tenant, sent) = (tenant.clone(), profile.clone());
                let msg = if in_place {
                    restore_msg(seg, c, tenant, sent, groups, tx)?
                } else {
                    Msg::Ingest(Ingest {
                        tenant,
                        profile: sent,
                        groups,
                        reply: tx,
                        mode: IngestMode::Replay,
                        max_series: 0,
                        body: None,
                    })
                };
                mesh.send_blocking(c, msg)?;
                waits.push(rx, profile.clone(), std::mem::take(&mut bytes));
            }
            st.records += 1;
            waits.bound()?;
        }
        // Record headers and a dropped tail: the segment's whole size counts as replayed.
        progress.advance(left);
        crate::service::pause_point("ingester:replay-segment");
    }
    waits.drain()?;
    Ok(st)
}

/// The replayed records awaiting their owners' answers, oldest first, each with the decoded
/// profile it was sent (see `IN_FLIGHT`).
#[derive(Default)]
struct InFlight {
    waits: std::collections::VecDeque<(IngestReplyRx, Arc<kiln_shards::model::profile::Profile>, usize)>,
    bytes: usize,
}

type IngestReplyRx = flume::Receiver<Result<AppendStats, IngestError>>;

impl InFlight {
    fn push(&mut self, rx: IngestReplyRx, profile: Arc<kiln_shards::model::profile::Profile>, bytes: usize) {
        self.bytes += bytes;
        self.waits.push_back((rx, profile, bytes));
    }

    /// Waits for the oldest until both bounds hold again.
    fn bound(&mut self) -> Result<(), ReplayError> {
        while self.waits.len() > IN_FLIGHT || self.bytes > IN_FLIGHT_BYTES {
            self.pop()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), ReplayError> {
        while !self.waits.is_empty() {
            self.pop()?;
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<(), ReplayError> {
        let Some((rx, profile, bytes)) = self.waits.pop_front() else { return Ok(()) };
        self.bytes -= bytes;
        rx.recv().map_err(|_| ReplayError::CoreStopped)??;
        // The owner has let go of it once it answered (or shortly after): the last drop is
        // then this thread's.
        drop(profile);
        Ok(())
    }
}

/// The message that puts a record of an adopted generation back into the head of `core`,
/// which must be the core whose WAL holds it: the same ring routes it there.
fn restore_msg(
    seg: &wal::SegmentFile,
    core: usize,
    tenant: Arc<str>,
    profile: Arc<kiln_shards::model::profile::Profile>,
    groups: Vec<kiln_shards::model::profile::SampleGroup>,
    reply: kiln_shards::ingester::IngestReply,
) -> Result<Msg, ReplayError> {
    if core != seg.core as usize {
        let gen = seg.path.parent().and_then(Path::parent).unwrap_or(&seg.path);
        return Err(ReplayError::RingMismatch {
            path: seg.path.clone(),
            core,
            seg_core: seg.core,
            ring_file: gen.join(wal::RING_FILE),
        });
    }
    Ok(Msg::Restore { tenant, profile, groups, reply })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_shards::model::profile::Profile;

    fn ingest(tenant: &str) -> Vec<u8> {
        walcodec::encode(tenant, &Profile { strings: vec![String::new()], ..Default::default() }, &[])
    }

    #[test]
    fn in_flight_waits_for_the_oldest_past_its_bounds_and_frees_profiles_here() {
        let mut w = InFlight::default();
        let profile = Arc::new(Profile::default());
        let answered = || {
            let (tx, rx) = flume::bounded(1);
            tx.send(Ok(AppendStats::default())).unwrap();
            rx
        };
        w.push(answered(), profile.clone(), IN_FLIGHT_BYTES / 2);
        w.push(answered(), profile.clone(), IN_FLIGHT_BYTES / 2);
        w.bound().unwrap();
        assert_eq!((w.waits.len(), Arc::strong_count(&profile)), (2, 3), "at the bound: nothing waited for");
        w.push(answered(), profile.clone(), 1);
        w.bound().unwrap();
        assert_eq!((w.waits.len(), w.bytes), (2, IN_FLIGHT_BYTES / 2 + 1), "the oldest was waited for");
        assert_eq!(Arc::strong_count(&profile), 3, "and its profile let go of");
        // A core that stopped without answering is an error, not a hang.
        let (tx, rx) = flume::bounded::<Result<AppendStats, IngestError>>(1);
        drop(tx);
        w.push(rx, profile.clone(), 0);
        assert!(matches!(w.drain(), Err(ReplayError::CoreStopped)));
    }

    #[test]
    fn only_records_before_an_indexed_cut_are_skipped() {
        let dir = std::env::temp_dir().join(format!("kiln-replay-cuts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let core = dir.join("core-0");
        std::fs::create_dir_all(&core).unwrap();
        // Segment 1: a1 b1 cut(a→X) a2 | segment 2: cut(b→Y) b2 a3.
        let segs = [
            vec![ingest("a"), ingest("b"), walcodec::encode_cut("a", "X"), ingest("a")],
            vec![walcodec::encode_cut("b", "Y"), ingest("b"), ingest("a")],
        ];
        write_segments(&core, &segs);
        let files = wal::segments(&dir).unwrap();
        let skipped = |indexed: &[(&str, &str)]| {
            let indexed: Indexed = indexed.iter().map(|(t, b)| (t.to_string(), b.to_string())).collect();
            let (cuts, _) = scan_markers(&files, &indexed, &mut Vec::new());
            let mut out = Vec::new();
            for seg in &files {
                let (records, _) = seg.read().unwrap();
                for (i, r) in records.iter().enumerate() {
                    if let walcodec::Entry::Ingest { tenant, .. } = walcodec::decode_entry(r).unwrap() {
                        if in_block(&cuts, seg, i, &tenant) {
                            out.push(format!("{tenant}@{}.{i}", seg.seq));
                        }
                    }
                }
            }
            out
        };
        // A marker whose block never reached the index skips nothing.
        assert!(skipped(&[]).is_empty());
        assert!(skipped(&[("a", "Z")]).is_empty());
        assert_eq!(skipped(&[("a", "X")]), ["a@1.0"]);
        assert_eq!(skipped(&[("b", "Y")]), ["b@1.1"]);
        assert_eq!(skipped(&[("a", "X"), ("b", "Y")]), ["a@1.0", "b@1.1"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Writes each list of records as the next segment of a core's directory.
    fn write_segments(core: &Path, segs: &[Vec<Vec<u8>>]) {
        for (n, recs) in segs.iter().enumerate() {
            let mut buf = Vec::new();
            for r in recs {
                record::encode(r, &mut buf);
            }
            std::fs::write(core.join(format!("{:010}.seg", n + 1)), buf).unwrap();
        }
    }

    #[test]
    fn aborted_pushes_are_found_wherever_their_abort_is() {
        let dir = std::env::temp_dir().join(format!("kiln-replay-aborts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let core = dir.join("core-0");
        std::fs::create_dir_all(&core).unwrap();
        let keyed =
            |k| walcodec::encode_keyed(k, "a", &Profile { strings: vec![String::new()], ..Default::default() }, &[]);
        let segs = [vec![keyed(1), keyed(2), walcodec::encode_abort(2)], vec![keyed(3), walcodec::encode_abort(1)]];
        write_segments(&core, &segs);
        let files = wal::segments(&dir).unwrap();
        let (_, aborted) = scan_markers(&files, &Indexed::new(), &mut Vec::new());
        assert_eq!(aborted, HashSet::from([1, 2]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
