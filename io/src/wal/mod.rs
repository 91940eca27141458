//! The write-ahead log: one per core, segment files of checksummed records.
//!
//! Layout: `<wal-dir>/gen-<G>/core-<C>/<seq>.seg`. A generation is written by the runs of
//! kiln with one ring (number of cores and tokens), recorded in its `ring` file. On start,
//! the newest generation with a `ready` marker is the source:
//! - written with the same ring, it is adopted in place: its records are replayed into the
//!   heads without being written again, and each core continues its own directory after its
//!   last segment (so a restart needs no free space beyond what new pushes take);
//! - written with another ring (or by a kiln that did not record it), its records are
//!   replayed (routed by the current ring, so a different `-shards` loses nothing) and
//!   written again into a fresh generation; once that one is durable it is marked `ready`
//!   and the source is deleted.
//!
//! A crash at any point leaves exactly one ready generation to replay, never two.
pub mod record;
pub mod segment;
pub mod spare;

use std::path::{Path, PathBuf};

pub const READY_MARKER: &str = "ready";
/// The ring a generation was written with, as `prepare` was given it.
pub const RING_FILE: &str = "ring";

/// One segment file of a generation to replay.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub path: PathBuf,
    pub core: u32,
    pub seq: u64,
    /// Where its good records end, when an end marker says so (a failed write's tail that
    /// could not be truncated follows).
    pub end: Option<u64>,
}

impl SegmentFile {
    /// Its bytes, without a failed write's tail (see `end`).
    pub fn bytes(&self) -> std::io::Result<Vec<u8>> {
        segment::read_bytes(&self.path, self.end)
    }

    /// `bytes`, into `buf` (cleared first; see `segment::read_bytes_into`).
    pub fn bytes_into(&self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        segment::read_bytes_into(&self.path, self.end, buf)
    }

    /// Its records; a torn tail is reported in `Dropped`.
    pub fn read(&self) -> Result<(Vec<Vec<u8>>, Option<segment::Dropped>), segment::ReadError> {
        segment::read_segment_to(&self.path, self.end)
    }

    /// `read`, into `buf` (cleared first), the records as slices of it.
    pub fn read_into<'a>(
        &self,
        buf: &'a mut Vec<u8>,
    ) -> Result<(Vec<&'a [u8]>, Option<segment::Dropped>), segment::ReadError> {
        segment::read_segment_into(&self.path, self.end, buf)
    }
}

#[derive(Debug)]
pub struct Generations {
    /// The generation to replay, if any.
    pub source: Option<(u64, PathBuf)>,
    /// The generation this run writes: the source itself when it is adopted.
    pub next: (u64, PathBuf),
    /// The source was written with this run's ring: it is replayed in place, not rewritten,
    /// and needs no commit.
    pub adopt: bool,
    /// The ring the source was written with (`None`: not recorded), when it is rewritten.
    pub source_ring: Option<String>,
}

fn gen_number(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?.parse().ok()
}

/// Takes the WAL directory for this process: an exclusive `flock` on `<wal-dir>/LOCK`, held
/// as long as the returned file lives. A second kiln on the same directory would delete the
/// first one's live generation at start; it is refused instead.
pub fn lock(wal_dir: &Path) -> std::io::Result<std::fs::File> {
    crate::lock_file::lock(&wal_dir.join("LOCK"), crate::lock_file::Wait::No).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            std::io::Error::other(format!(
                "{} is in use by another kiln process (its LOCK file is held); stop it or choose another -storage.path / -ingester.wal-dir",
                wal_dir.display()
            ))
        } else {
            e
        }
    })
}

/// Finds the generation to replay and deletes leftovers (unready newer generations from an
/// interrupted start, older ones already replayed). When the source was written with `ring`
/// (any string that changes whenever records would be routed to other cores), it is
/// adopted: the torn tail a crash may have left in each core's last segment is truncated
/// (it was never acknowledged, and that segment is about to be followed by new ones).
/// Otherwise the directory of a new generation is created, with `ring` recorded in it.
pub fn prepare(wal_dir: &Path, ring: &str) -> std::io::Result<Generations> {
    std::fs::create_dir_all(wal_dir)?;
    let mut gens: Vec<(u64, PathBuf, bool)> = Vec::new();
    for e in std::fs::read_dir(wal_dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(g) = gen_number(&name) {
            let ready = e.path().join(READY_MARKER).exists();
            gens.push((g, e.path(), ready));
        }
    }
    gens.sort_by_key(|g| g.0);
    let source = gens.iter().rev().find(|g| g.2).map(|g| (g.0, g.1.clone()));
    for (g, path, _) in &gens {
        if Some(*g) != source.as_ref().map(|s| s.0) {
            tracing::info!(path = %path.display(), "removing WAL generation left by an interrupted start");
            std::fs::remove_dir_all(path)?;
        }
    }
    let source_ring = match &source {
        Some((_, dir)) => match std::fs::read_to_string(dir.join(RING_FILE)) {
            Ok(r) => Some(r),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    if let (Some(src), Some(r)) = (&source, &source_ring) {
        if r == ring {
            truncate_torn_tails(&src.1)?;
            return Ok(Generations { source: source.clone(), next: src.clone(), adopt: true, source_ring: None });
        }
    }
    let n = gens.last().map_or(1, |g| g.0 + 1);
    let next = wal_dir.join(format!("gen-{n:010}"));
    if let Err(e) = create_generation(&next, ring) {
        // Not even its directory fits (a full disk): give back what it took.
        let _ = std::fs::remove_dir_all(&next);
        return Err(match &source {
            Some((_, src)) => std::io::Error::new(
                e.kind(),
                format!(
                    "creating the WAL generation {}: {e}. {}",
                    next.display(),
                    rewrite_note(src, source_ring.as_deref(), ring, wal_dir)
                ),
            ),
            None => e,
        });
    }
    sync_dir(wal_dir)?;
    Ok(Generations { source, next: (n, next), adopt: false, source_ring })
}

fn create_generation(dir: &Path, ring: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let f = std::fs::File::create(dir.join(RING_FILE))?;
    std::io::Write::write_all(&mut &f, ring.as_bytes())?;
    f.sync_all()?;
    sync_dir(dir)
}

/// Why rewriting `source` into a new generation takes space, how much, and what else to do:
/// for the error of a rewrite that failed.
pub fn rewrite_note(source: &Path, source_ring: Option<&str>, ring: &str, wal_dir: &Path) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    let needed = size(source).map_or_else(|e| format!("? ({e})"), mib);
    let free = free_bytes(wal_dir).map_or_else(|e| format!("? ({e})"), mib);
    let field = |r: &str, k: &str| r.split_whitespace().find_map(|f| f.strip_prefix(k).map(str::to_string));
    let (was, hint) = match source_ring {
        Some(r) => (
            format!("it was written with {}", r.trim()),
            match field(r, "cores=") {
                Some(c) if field(r, "tokens-per-core=") == field(ring, "tokens-per-core=") => {
                    format!(", or start with -shards={c} to replay the WAL in place")
                }
                _ => String::new(),
            },
        ),
        None => ("it was written by a kiln that did not record its ring".to_string(), String::new()),
    };
    format!(
        "The ring changed ({was}; now {}), so each record of {} is written again into a new generation, which needs up to {needed} free under {}; {free} are free. Free that much space{hint}. Nothing of the WAL was deleted.",
        ring.trim(),
        source.display(),
        wal_dir.display()
    )
}

/// Truncates the torn tail of each core's last segment of an adopted generation. A segment
/// damaged in the middle is left alone: replay stops the start naming it.
fn truncate_torn_tails(gen_dir: &Path) -> std::io::Result<()> {
    let segs = segments(gen_dir)?;
    for last in segs.chunk_by(|a, b| a.core == b.core).filter_map(|c| c.last()) {
        let data = last.bytes()?;
        let (_, tail) = record::decode_all(&data);
        let good = match tail {
            // A preallocated segment's unused zeros go too: it is followed by new segments.
            record::Tail::Torn { offset, .. } | record::Tail::Zeros { offset } => offset as u64,
            record::Tail::Clean => data.len() as u64,
            record::Tail::Corrupt { .. } => continue,
        };
        let f = std::fs::OpenOptions::new().write(true).open(&last.path)?;
        if f.metadata()?.len() > good {
            tracing::warn!(file = %last.path.display(), offset = good, "truncating the torn tail of the WAL (an interrupted, unacknowledged write)");
            f.set_len(good)?;
            f.sync_all()?;
        }
    }
    Ok(())
}

/// Every segment of a generation, ordered by core then sequence.
pub fn segments(gen_dir: &Path) -> std::io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(gen_dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(core) = name.strip_prefix("core-").and_then(|c| c.parse::<u32>().ok()) else { continue };
        let mut ends = std::collections::HashMap::new();
        let first = out.len();
        for f in std::fs::read_dir(e.path())? {
            let f = f?;
            match segment::parse_name(&f.file_name().to_string_lossy()) {
                Some(segment::Name::Segment(seq)) => out.push(SegmentFile { path: f.path(), core, seq, end: None }),
                Some(segment::Name::End { seq, end }) => {
                    let e = ends.entry(seq).or_insert(end);
                    *e = (*e).min(end);
                }
                None => {}
            }
        }
        for s in &mut out[first..] {
            s.end = ends.get(&s.seq).copied();
        }
    }
    out.sort_by_key(|s| (s.core, s.seq));
    Ok(out)
}

/// Total bytes of a generation's segments.
pub fn size(gen_dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for s in segments(gen_dir)? {
        total += std::fs::metadata(&s.path)?.len();
    }
    Ok(total)
}

/// Bytes free to an unprivileged writer in the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: statvfs fills the zeroed struct from a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Marks a generation complete (durably), then removes the one it replaced.
pub fn commit(next: &Path, replaced: Option<&Path>) -> std::io::Result<()> {
    let marker = next.join(READY_MARKER);
    let f = std::fs::File::create(&marker)?;
    f.sync_all()?;
    sync_dir(next)?;
    if let Some(old) = replaced {
        std::fs::remove_dir_all(old)?;
        if let Some(parent) = old.parent() {
            sync_dir(parent)?;
        }
    }
    // I9: the committed generation is now the only ready one. (A listing that fails
    // checks nothing: the commit itself succeeded.)
    let wal_dir = next.parent().unwrap_or(next);
    if let Ok(ready) = ready_generations(wal_dir) {
        crate::invariant::check(crate::invariant::Invariant::ReadyGeneration, ready == 1, || {
            format!("{ready} ready WAL generations under {} after a commit", wal_dir.display())
        });
    }
    Ok(())
}

/// How many generations under `wal_dir` carry a ready marker.
fn ready_generations(wal_dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(wal_dir)? {
        let e = e?;
        if gen_number(&e.file_name().to_string_lossy()).is_some() && e.path().join(READY_MARKER).exists() {
            n += 1;
        }
    }
    Ok(n)
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_process_cannot_take_the_wal() {
        let d = tmp("lock");
        let held = lock(&d).unwrap();
        // flock locks belong to the open file description: a second open conflicts, as a
        // second process would.
        let e = lock(&d).unwrap_err();
        assert!(e.to_string().contains("in use by another kiln"), "{e}");
        drop(held);
        assert!(lock(&d).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn generations_survive_interrupted_starts() {
        let d = tmp("gens");
        // Another ring each time: every start rewrites into a new generation.
        let g = prepare(&d, "r1").unwrap();
        assert!(g.source.is_none() && !g.adopt);
        // First run never committed: its generation is not replayed and is removed.
        let g2 = prepare(&d, "r2").unwrap();
        assert!(g2.source.is_none());
        assert!(!g.next.1.exists());
        commit(&g2.next.1, None).unwrap();
        // A start interrupted after creating its generation: the ready one stays the source.
        let g3 = prepare(&d, "r3").unwrap();
        assert_eq!(g3.source.as_ref().unwrap().0, g2.next.0);
        assert_eq!(g3.source_ring.as_deref(), Some("r2"));
        let g4 = prepare(&d, "r4").unwrap();
        assert_eq!(g4.source.as_ref().unwrap().0, g2.next.0);
        assert!(!g3.next.1.exists());
        commit(&g4.next.1, Some(&g4.source.as_ref().unwrap().1)).unwrap();
        let g5 = prepare(&d, "r5").unwrap();
        assert_eq!(g5.source.unwrap().0, g4.next.0);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A committed generation of `ring` under `d`, and its core 0's (created) directory.
    fn committed(d: &Path, ring: &str) -> (Generations, PathBuf) {
        let g = prepare(d, ring).unwrap();
        commit(&g.next.1, None).unwrap();
        let core = g.next.1.join("core-0");
        std::fs::create_dir_all(&core).unwrap();
        (g, core)
    }

    #[test]
    fn a_generation_of_the_same_ring_is_adopted_in_place() {
        let d = tmp("adopt");
        let (g, core) = committed(&d, "cores=2");
        let mut seg = Vec::new();
        record::encode(b"one", &mut seg);
        record::encode(b"two", &mut seg);
        let whole = seg.len() as u64;
        seg.extend_from_slice(&[7, 0, 0, 0, 1]); // a torn tail
        std::fs::write(core.join("0000000001.seg"), &seg).unwrap();
        std::fs::write(core.join("0000000002.seg"), &seg).unwrap();

        let a = prepare(&d, "cores=2").unwrap();
        assert!(a.adopt);
        assert_eq!(a.next, g.next);
        assert_eq!(a.source.as_ref().unwrap().0, g.next.0);
        // Only the last segment's torn tail is truncated; damage in a middle one is left
        // for replay to report.
        assert_eq!(std::fs::metadata(core.join("0000000002.seg")).unwrap().len(), whole);
        assert_eq!(std::fs::metadata(core.join("0000000001.seg")).unwrap().len(), seg.len() as u64);
        let names: Vec<String> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.iter().filter(|n| n.starts_with("gen-")).count(), 1, "{names:?}");

        // Another ring: rewritten into a new generation; the source is kept until commit.
        let r = prepare(&d, "cores=3").unwrap();
        assert!(!r.adopt);
        assert_eq!(r.source_ring.as_deref(), Some("cores=2"));
        assert_ne!(r.next, g.next);
        assert!(g.next.1.join("core-0/0000000001.seg").exists());
        assert_eq!(std::fs::read_to_string(r.next.1.join(RING_FILE)).unwrap(), "cores=3");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_adopted_preallocated_segment_loses_its_zeros_and_keeps_its_records() {
        let d = tmp("adopt-zeros");
        let (g, core) = committed(&d, "cores=1");
        let mut seg = Vec::new();
        record::encode(b"one", &mut seg);
        let whole = seg.len();
        seg.resize(1 << 16, 0); // a spare's zeros after the records
        std::fs::write(core.join("0000000001.seg"), &seg).unwrap();
        std::fs::write(core.join(spare::SPARE_NAME), vec![0; 100]).unwrap();
        assert!(prepare(&d, "cores=1").unwrap().adopt);
        let segs = segments(&g.next.1).unwrap();
        assert_eq!(segs.len(), 1, "the spare is not a segment");
        assert_eq!(std::fs::metadata(&segs[0].path).unwrap().len(), whole as u64);
        let (recs, dropped) = segs[0].read().unwrap();
        assert_eq!(recs, vec![b"one".to_vec()]);
        assert!(dropped.is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_generation_without_its_ring_is_rewritten() {
        let d = tmp("noring");
        let g = prepare(&d, "cores=2").unwrap();
        commit(&g.next.1, None).unwrap();
        std::fs::remove_file(g.next.1.join(RING_FILE)).unwrap();
        let r = prepare(&d, "cores=2").unwrap();
        assert!(!r.adopt && r.source_ring.is_none());
        assert_eq!(r.source.unwrap().0, g.next.0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn end_markers_bound_what_is_read() {
        let d = tmp("ends");
        let core = d.join("core-1");
        std::fs::create_dir_all(&core).unwrap();
        let mut seg = Vec::new();
        record::encode(b"good", &mut seg);
        let end = seg.len();
        record::encode(b"failed write, never acknowledged", &mut seg);
        seg.extend_from_slice(b"garbage");
        std::fs::write(core.join("0000000003.seg"), &seg).unwrap();
        std::fs::write(core.join(format!("0000000003.seg.end-{end}")), b"").unwrap();
        let segs = segments(&d).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!((segs[0].core, segs[0].seq, segs[0].end), (1, 3, Some(end as u64)));
        let (records, dropped) = segs[0].read().unwrap();
        assert_eq!(records, vec![b"good".to_vec()]);
        assert!(dropped.is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
