//! Writing segments on a core (monoio file ops: io_uring where the kernel allows) and reading
//! them back at start (plain std I/O, before the cores serve).
use super::record;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` before acknowledging (the default): survives power loss.
    Fsync,
    /// Acknowledge once written to the page cache: survives a killed process, not a
    /// crashed machine.
    Write,
}

/// A core's segment writer. Owned by the core's WAL writer task alone.
///
/// Failures leave it usable: a failed write is cut off the file again (`ftruncate` back to
/// the end of the last good record) before anything else is written, so no garbage ever
/// follows a good record; a failed rotation is retried at the next write.
pub struct SegmentWriter {
    dir: PathBuf,
    /// The open segment's number; while `file` is `None`, the last segment closed (0: none).
    seq: u64,
    /// `None`: closed (by a cut, a rotation whose next segment could not be opened yet, or
    /// a resume); the next write opens segment `seq + 1` first.
    file: Option<Rc<monoio::fs::File>>,
    /// End of the last good record in `file`.
    len: u64,
    max_bytes: u64,
    policy: SyncPolicy,
    /// A failed write left bytes past `len` that could not be truncated yet.
    dirty: bool,
    /// The next segment, written full of zeros ahead of need (`with_preallocation`).
    spare: Option<super::spare::Spare>,
    #[cfg(test)]
    faults: tests::Faults,
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:010}.seg"))
}

/// `<seq>.seg.end-<bytes>`: an empty file saying that segment `seq`'s good records end at
/// `bytes`; what follows is the remains of a write that failed (never acknowledged) and
/// could not be truncated. Written only then, before the next segment exists.
pub(super) fn end_marker_path(dir: &Path, seq: u64, end: u64) -> PathBuf {
    dir.join(format!("{seq:010}.seg.end-{end}"))
}

/// What a file name in a core's WAL directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Name {
    Segment(u64),
    End { seq: u64, end: u64 },
}

pub(super) fn parse_name(name: &str) -> Option<Name> {
    if let Some(seq) = name.strip_suffix(".seg") {
        return seq.parse().ok().map(Name::Segment);
    }
    let (seq, end) = name.split_once(".seg.end-")?;
    Some(Name::End { seq: seq.parse().ok()?, end: end.parse().ok()? })
}

impl SegmentWriter {
    /// A writer of a new WAL directory: segment 1 is created now.
    pub async fn create(dir: PathBuf, max_bytes: u64, policy: SyncPolicy) -> std::io::Result<Self> {
        let mut w = Self::resume(dir, 0, max_bytes, policy)?;
        w.rotate().await?;
        Ok(w)
    }

    /// A writer that continues a core's WAL whose last segment is `last_seq` (adopted in
    /// place at start): segment `last_seq + 1` is opened by the first write, so a start
    /// that writes nothing leaves the directory as it found it.
    pub fn resume(dir: PathBuf, last_seq: u64, max_bytes: u64, policy: SyncPolicy) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        super::sync_dir(dir.parent().unwrap_or(&dir))?;
        Ok(SegmentWriter {
            dir,
            seq: last_seq,
            file: None,
            len: 0,
            max_bytes: max_bytes.max(1),
            policy,
            dirty: false,
            spare: None,
            #[cfg(test)]
            faults: Default::default(),
        })
    }

    /// Opens every later segment from a spare prepared ahead of need (see `spare`), so that
    /// syncs of its writes commit no metadata. The segment open now, if any, stays plain.
    pub fn with_preallocation(mut self) -> Self {
        self.spare = Some(super::spare::Spare::start(&self.dir, self.max_bytes));
        self
    }

    /// Writes framed records at the end of the current segment (rotating first when it is
    /// full or closed). With the `Fsync` policy, returns the file to `sync_data` before the
    /// records count as durable: a sync issued after this call returns covers this write and
    /// every earlier one, so callers may sync several writes concurrently (pipelined group
    /// commit). The buffer is handed back for reuse. On an error nothing of `buf` stays in
    /// the segment that a later start would read.
    pub async fn write(&mut self, buf: Vec<u8>) -> (std::io::Result<Option<Rc<monoio::fs::File>>>, Vec<u8>) {
        let n = buf.len() as u64;
        if let Err(e) = self.prepare(n).await {
            return (Err(e), buf);
        }
        let Some(file) = self.file.clone() else {
            return (Err(std::io::Error::other("no WAL segment is open")), buf);
        };
        // I16: a failed write's tail is gone (`prepare` repaired it or failed) before anything
        // is written after it.
        crate::invariant::check(crate::invariant::Invariant::WalWrite, !self.dirty, || {
            format!("writing WAL segment {} before a failed write was cut off", self.seq)
        });
        let (res, buf) = self.write_at(&file, buf).await;
        if let Err(e) = res {
            self.discard_failed_write(&file);
            return (Err(e), buf);
        }
        self.len += n;
        let sync = (self.policy == SyncPolicy::Fsync).then_some(file);
        (Ok(sync), buf)
    }

    /// Makes the segment ready for `n` more bytes: repairs a tail left by a failed write,
    /// then opens the next segment if the current one is closed or too full.
    async fn prepare(&mut self, n: u64) -> std::io::Result<()> {
        if self.dirty {
            self.repair().await?;
        }
        if self.file.is_none() || (self.len > 0 && self.len + n > self.max_bytes) {
            self.rotate().await?;
        }
        Ok(())
    }

    /// After a failed write (a full disk writes part of a buffer, then fails): cuts the file
    /// back to its last good record. Otherwise a later, shorter write at the same offset
    /// would leave the failed write's tail after it, which replay reads as damage once a
    /// later segment exists.
    fn discard_failed_write(&mut self, file: &monoio::fs::File) {
        if let Err(e) = self.truncate(file, self.len) {
            tracing::warn!(dir = %self.dir.display(), seq = self.seq, error = %e, "truncating a failed WAL write failed; retried before the next write");
            self.dirty = true;
        }
    }

    /// A failed write's tail is truncated now, or, failing that, the segment is closed with
    /// an end marker saying where its good records end, so the next write starts a fresh
    /// segment and replay never reads the tail.
    async fn repair(&mut self) -> std::io::Result<()> {
        let Some(file) = self.file.clone() else {
            self.dirty = false;
            return Ok(());
        };
        if self.truncate(&file, self.len).is_ok() {
            self.dirty = false;
            return Ok(());
        }
        file.sync_all().await?;
        let marker = end_marker_path(&self.dir, self.seq, self.len);
        match open_new(&marker).await {
            Ok(f) => f.close().await?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        sync_dir_async(&self.dir).await?;
        tracing::warn!(file = %marker.display(), "a failed WAL write could not be truncated; its segment is closed with an end marker");
        self.file = None;
        self.dirty = false;
        Ok(())
    }

    fn truncate(&self, file: &monoio::fs::File, len: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if self.faults.truncate.get() > 0 {
            self.faults.truncate.set(self.faults.truncate.get() - 1);
            return Err(std::io::Error::other("injected truncate failure"));
        }
        // SAFETY: ftruncate on a descriptor `file` keeps open for the call's duration.
        if unsafe { libc::ftruncate(file.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    async fn write_at(&self, file: &monoio::fs::File, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        #[cfg(test)]
        if let Some(part) = self.faults.write.take() {
            // As a full disk does: part of the buffer lands, then the write fails.
            let part = part.min(buf.len());
            let (res, _) = file.write_all_at(buf[..part].to_vec(), self.len).await;
            return (res.and(Err(std::io::Error::from_raw_os_error(libc::ENOSPC))), buf);
        }
        file.write_all_at(buf, self.len).await
    }

    /// Closes the current segment (synced) so that the next write starts a new one, even if
    /// the current one has room: a block cut starts a fresh segment so that the segments
    /// before it can be deleted once the block is uploaded. Returns the number of the
    /// segment after the cut. Only a failed sync fails a cut: the next segment is opened
    /// here if it can be, else by the next write.
    pub async fn cut(&mut self) -> std::io::Result<u64> {
        self.close().await?;
        let after = self.seq + 1;
        if let Err(e) = self.rotate().await {
            tracing::warn!(dir = %self.dir.display(), seq = after, error = %e, "opening the next WAL segment failed; retried at the next write");
        }
        Ok(after)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the current segment whole (synced) and closes it for writing.
    async fn close(&mut self) -> std::io::Result<()> {
        if let Some(f) = &self.file {
            // The old segment is made whole before the next one exists, so only the last
            // segment of a core can ever have a torn tail. Syncs still in flight hold the
            // old file; it closes when the last one ends.
            f.sync_all().await?;
            self.file = None;
        }
        Ok(())
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        self.close().await?;
        let next = self.seq + 1;
        #[cfg(test)]
        if self.faults.open.get() > 0 {
            self.faults.open.set(self.faults.open.get() - 1);
            return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
        }
        let path = segment_path(&self.dir, next);
        let file = if self.spare.as_mut().is_some_and(|s| s.take_as(&path)) {
            let f = monoio::fs::OpenOptions::new().write(true).open(&path).await?;
            sync_dir_async(&self.dir).await?;
            f
        } else {
            open_segment(&self.dir, next).await?
        };
        self.seq = next;
        self.file = Some(Rc::new(file));
        self.len = 0;
        Ok(())
    }

    /// Waits until the spare is ready (tests: a rotation then takes it for certain).
    #[cfg(test)]
    fn wait_for_spare(&mut self) {
        let spare = self.spare.as_mut().expect("preallocation is on");
        for _ in 0..2000 {
            if spare.ready() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("the spare was not ready in 10 s");
    }

    pub async fn sync(&self) -> std::io::Result<()> {
        match &self.file {
            Some(f) => f.sync_all().await,
            None => Ok(()),
        }
    }
}

/// Opens a new, empty segment durably. A segment left empty (or all zeros: a spare moved
/// into place) by an earlier attempt whose directory sync failed is taken as it is; one
/// holding anything else is never overwritten.
async fn open_segment(dir: &Path, seq: u64) -> std::io::Result<monoio::fs::File> {
    let path = segment_path(dir, seq);
    let file = match open_new(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && holds_nothing(&path)? => {
            monoio::fs::OpenOptions::new().write(true).open(&path).await?
        }
        Err(e) => return Err(e),
    };
    sync_dir_async(dir).await?;
    Ok(file)
}

/// Whether a file is empty or all zeros. Read only after a failed rotation.
fn holds_nothing(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// The highest segment number in a core's WAL directory (0: none, or no directory).
pub fn last_seq(dir: &Path) -> std::io::Result<u64> {
    let mut last = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for e in entries {
        if let Some(Name::Segment(s)) = parse_name(&e?.file_name().to_string_lossy()) {
            last = last.max(s);
        }
    }
    Ok(last)
}

/// Deletes a core's segments numbered below `seq` (they are covered by uploaded blocks),
/// oldest first, each segment's end marker right after it: the last one holds the cut
/// markers that tell replay to skip the others, so it goes last and an interrupted deletion
/// never leaves records without their marker. Returns how many segments were removed.
pub fn delete_before(dir: &Path, seq: u64) -> std::io::Result<usize> {
    let mut old: Vec<(u64, bool, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        match parse_name(&e.file_name().to_string_lossy()) {
            Some(Name::Segment(s)) if s < seq => old.push((s, false, e.path())),
            Some(Name::End { seq: s, .. }) if s < seq => old.push((s, true, e.path())),
            _ => {}
        }
    }
    old.sort();
    for (_, _, path) in &old {
        std::fs::remove_file(path)?;
    }
    if !old.is_empty() {
        super::sync_dir(dir)?;
    }
    Ok(old.iter().filter(|o| !o.1).count())
}

/// fsync of a directory through the runtime (io_uring), not a blocking call on the core.
async fn sync_dir_async(dir: &Path) -> std::io::Result<()> {
    let d = monoio::fs::File::open(dir).await?;
    d.sync_all().await?;
    d.close().await
}

async fn open_new(path: &Path) -> std::io::Result<monoio::fs::File> {
    monoio::fs::OpenOptions::new().write(true).create_new(true).open(path).await
}

/// What reading a generation found wrong, if anything.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading WAL segment {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("WAL segment {path} is corrupt at byte offset {offset}, with valid records after it; refusing to skip acknowledged data (move the file away to start without it)")]
    Corrupt { path: PathBuf, offset: usize },
}

/// A torn tail dropped while reading.
#[derive(Debug, Clone)]
pub struct Dropped {
    pub path: PathBuf,
    pub offset: usize,
    pub bytes: usize,
}

/// A segment's bytes up to `end` (its end marker's offset, if it has one): what follows is
/// the tail of a failed write, never acknowledged.
pub fn read_bytes(path: &Path, end: Option<u64>) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    read_bytes_into(path, end, &mut data)?;
    Ok(data)
}

/// `read_bytes` into `buf` (cleared first). A replay reads every segment of a stream into
/// one buffer: a fresh one per segment cost the kernel zeroing each of its pages.
pub fn read_bytes_into(path: &Path, end: Option<u64>, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    buf.clear();
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let want = end.map_or(len, |e| e.min(len));
    buf.reserve(usize::try_from(want).unwrap_or(usize::MAX));
    (&mut f).take(want).read_to_end(buf)?;
    if want < len {
        tracing::info!(file = %path.display(), end = want, bytes = len - want, "skipping the tail of a failed WAL write (end marker)");
    }
    Ok(())
}

/// Reads every record of one segment; a torn tail is reported in `Dropped`.
pub fn read_segment(path: &Path) -> Result<(Vec<Vec<u8>>, Option<Dropped>), ReadError> {
    read_segment_to(path, None)
}

/// `read_segment` of a segment whose good records end at `end` (its end marker), if known.
pub fn read_segment_to(path: &Path, end: Option<u64>) -> Result<(Vec<Vec<u8>>, Option<Dropped>), ReadError> {
    let mut buf = Vec::new();
    let (records, dropped) = read_segment_into(path, end, &mut buf)?;
    Ok((records.into_iter().map(<[u8]>::to_vec).collect(), dropped))
}

/// `read_segment_to` into `buf` (see `read_bytes_into`), the records as slices of it.
pub fn read_segment_into<'a>(
    path: &Path,
    end: Option<u64>,
    buf: &'a mut Vec<u8>,
) -> Result<(Vec<&'a [u8]>, Option<Dropped>), ReadError> {
    read_bytes_into(path, end, buf).map_err(|source| ReadError::Io { path: path.to_path_buf(), source })?;
    let (records, tail) = record::decode_all(buf);
    match tail {
        record::Tail::Clean | record::Tail::Zeros { .. } => Ok((records, None)),
        record::Tail::Torn { offset, dropped } => {
            Ok((records, Some(Dropped { path: path.to_path_buf(), offset, bytes: dropped })))
        }
        record::Tail::Corrupt { offset } => Err(ReadError::Corrupt { path: path.to_path_buf(), offset }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Failures a test makes the writer see.
    #[derive(Default)]
    pub(super) struct Faults {
        /// The next write stores this many bytes of its buffer, then fails (ENOSPC).
        pub write: Cell<Option<usize>>,
        /// This many truncations fail.
        pub truncate: Cell<u32>,
        /// This many segment opens fail (EMFILE).
        pub open: Cell<u32>,
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-seg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("core-0")
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap().block_on(f)
    }

    fn rec(i: u8, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        record::encode(&vec![i; len], &mut out);
        out
    }

    /// Every segment of the directory, in order: (seq, records as their first byte, torn).
    fn read_all(dir: &Path) -> Vec<(u64, Vec<u8>, bool)> {
        let mut segs: Vec<(u64, Option<u64>)> = Vec::new();
        let mut ends = std::collections::HashMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            match parse_name(&e.unwrap().file_name().to_string_lossy()) {
                Some(Name::Segment(s)) => segs.push((s, None)),
                Some(Name::End { seq, end }) => {
                    ends.insert(seq, end);
                }
                None => {}
            }
        }
        segs.sort();
        segs.into_iter()
            .map(|(s, _)| {
                let (recs, dropped) = read_segment_to(&segment_path(dir, s), ends.get(&s).copied()).unwrap();
                (s, recs.iter().map(|r| r[0]).collect(), dropped.is_some())
            })
            .collect()
    }

    #[test]
    fn a_failed_write_leaves_no_garbage_behind_a_shorter_one() {
        let dir = tmp("partial");
        run(async {
            let mut w = SegmentWriter::create(dir.clone(), 1 << 20, SyncPolicy::Write).await.unwrap();
            assert!(w.write(rec(1, 100)).await.0.is_ok());
            // A full disk takes 300 bytes of a 1000-byte write, then fails.
            w.faults.write.set(Some(300));
            assert!(w.write(rec(2, 1000)).await.0.is_err());
            assert_eq!(
                std::fs::metadata(segment_path(&dir, 1)).unwrap().len(),
                108,
                "the failed write was not cut off"
            );
            // Space is back: a shorter write, then a cut makes this segment a middle one.
            assert!(w.write(rec(3, 50)).await.0.is_ok());
            assert_eq!(w.cut().await.unwrap(), 2);
            assert!(w.write(rec(4, 10)).await.0.is_ok());
        });
        assert_eq!(read_all(&dir), [(1, vec![1, 3], false), (2, vec![4], false)]);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn an_untruncatable_tail_is_closed_with_an_end_marker() {
        let dir = tmp("marker");
        run(async {
            let mut w = SegmentWriter::create(dir.clone(), 1 << 20, SyncPolicy::Fsync).await.unwrap();
            assert!(w.write(rec(1, 100)).await.0.is_ok());
            w.faults.write.set(Some(500));
            w.faults.truncate.set(2);
            assert!(w.write(rec(2, 1000)).await.0.is_err());
            // The retry of the truncation fails too: segment 1 is closed with its end, and the
            // write goes to segment 2.
            assert!(w.write(rec(3, 50)).await.0.is_ok());
            assert!(end_marker_path(&dir, 1, 108).exists());
            assert!(std::fs::metadata(segment_path(&dir, 1)).unwrap().len() > 108);
        });
        assert_eq!(read_all(&dir), [(1, vec![1], false), (2, vec![3], false)]);
        // Deleting the segment deletes its marker too.
        assert_eq!(delete_before(&dir, 2).unwrap(), 1);
        assert!(!end_marker_path(&dir, 1, 108).exists());
        assert_eq!(read_all(&dir), [(2, vec![3], false)]);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn a_failed_rotation_is_retried_by_the_next_write() {
        let dir = tmp("rotate");
        run(async {
            let mut w = SegmentWriter::create(dir.clone(), 150, SyncPolicy::Write).await.unwrap();
            assert!(w.write(rec(1, 100)).await.0.is_ok());
            // Out of file descriptors: the rotation before this write fails, twice.
            w.faults.open.set(2);
            assert!(w.write(rec(2, 100)).await.0.is_err());
            assert!(w.write(rec(3, 100)).await.0.is_err());
            assert!(w.write(rec(4, 100)).await.0.is_ok());
            // A cut whose next segment cannot be opened still succeeds: its segment is
            // closed, and the next write opens the one after it.
            w.faults.open.set(1);
            assert_eq!(w.cut().await.unwrap(), 3);
            assert!(w.write(rec(5, 10)).await.0.is_ok());
        });
        assert_eq!(read_all(&dir), [(1, vec![1], false), (2, vec![4], false), (3, vec![5], false)]);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn a_resumed_writer_continues_after_the_last_segment() {
        let dir = tmp("resume");
        run(async {
            let mut w = SegmentWriter::create(dir.clone(), 1 << 20, SyncPolicy::Write).await.unwrap();
            assert!(w.write(rec(1, 10)).await.0.is_ok());
            assert_eq!(w.cut().await.unwrap(), 2);
        });
        assert_eq!(last_seq(&dir).unwrap(), 2);
        run(async {
            let mut w =
                SegmentWriter::resume(dir.clone(), last_seq(&dir).unwrap(), 1 << 20, SyncPolicy::Write).unwrap();
            // Nothing is created until something is written.
            assert_eq!(last_seq(&dir).unwrap(), 2);
            assert!(w.write(rec(2, 10)).await.0.is_ok());
        });
        assert_eq!(read_all(&dir), [(1, vec![1], false), (2, vec![], false), (3, vec![2], false)]);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn an_empty_segment_left_by_a_failed_open_is_reused_but_data_is_never_overwritten() {
        let dir = tmp("reuse");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(segment_path(&dir, 1), b"").unwrap();
        run(async {
            let mut w = SegmentWriter::create(dir.clone(), 1 << 20, SyncPolicy::Write).await.unwrap();
            assert!(w.write(rec(1, 10)).await.0.is_ok());
        });
        assert_eq!(read_all(&dir), [(1, vec![1], false)]);
        run(async {
            assert!(SegmentWriter::create(dir.clone(), 1 << 20, SyncPolicy::Write).await.is_err());
        });
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn later_segments_come_preallocated_and_read_back_without_their_zeros() {
        let dir = tmp("spare");
        run(async {
            let mut w =
                SegmentWriter::create(dir.clone(), 1 << 20, SyncPolicy::Fsync).await.unwrap().with_preallocation();
            assert!(w.write(rec(1, 100)).await.0.is_ok());
            w.wait_for_spare();
            assert_eq!(w.cut().await.unwrap(), 2);
            // Segment 2 is the spare, moved into place full of zeros; another is prepared.
            assert_eq!(std::fs::metadata(segment_path(&dir, 2)).unwrap().len(), 1 << 20);
            assert!(w.write(rec(2, 100)).await.0.unwrap().is_some());
            assert!(w.write(rec(3, 5000)).await.0.is_ok());
            // A rotation for size takes the next spare too.
            w.wait_for_spare();
            assert!(w.write(rec(4, 1 << 20)).await.0.is_ok());
            w.wait_for_spare();
            assert!(w.write(rec(5, 10)).await.0.is_ok());
            w.wait_for_spare();
        });
        assert_eq!(
            read_all(&dir),
            [(1, vec![1], false), (2, vec![2, 3], false), (3, vec![4], false), (4, vec![5], false)]
        );
        assert_eq!(std::fs::metadata(segment_path(&dir, 4)).unwrap().len(), 1 << 20);
        // The next start finds the spare left ready and takes it for its first segment.
        let ready = dir.join(super::super::spare::READY_NAME);
        let half = dir.join(super::super::spare::SPARE_NAME);
        assert_eq!(std::fs::metadata(&ready).unwrap().len(), 1 << 20);
        std::fs::write(&half, b"half written").unwrap();
        run(async {
            let mut w = SegmentWriter::resume(dir.clone(), 4, 1 << 20, SyncPolicy::Write).unwrap().with_preallocation();
            assert!(!half.exists(), "a half-written spare is removed at start");
            assert!(w.write(rec(6, 10)).await.0.is_ok());
            assert_eq!(std::fs::metadata(segment_path(&dir, 5)).unwrap().len(), 1 << 20);
            w.wait_for_spare();
        });
        // One ready for another segment size is replaced.
        let mut w = SegmentWriter::resume(dir.clone(), 5, 1 << 19, SyncPolicy::Write).unwrap().with_preallocation();
        w.wait_for_spare();
        assert_eq!(std::fs::metadata(&ready).unwrap().len(), 1 << 19);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn a_spare_never_replaces_a_segment() {
        let dir = tmp("spare-exists");
        run(async {
            let mut w =
                SegmentWriter::create(dir.clone(), 1 << 16, SyncPolicy::Write).await.unwrap().with_preallocation();
            assert!(w.write(rec(1, 10)).await.0.is_ok());
            w.wait_for_spare();
            // Segment 2 is already there with records (written by hand here): the rotation
            // keeps it and fails, as a plain open does, and the spare stays for later.
            let mut theirs = Vec::new();
            record::encode(&[7; 10], &mut theirs);
            std::fs::write(segment_path(&dir, 2), &theirs).unwrap();
            assert!(w.cut().await.is_ok());
            assert!(w.write(rec(2, 10)).await.0.is_err());
            assert_eq!(std::fs::read(segment_path(&dir, 2)).unwrap(), theirs);
            assert!(dir.join(super::super::spare::READY_NAME).exists());
        });
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}
