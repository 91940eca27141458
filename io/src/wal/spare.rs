//! Preallocated segments: a core's next segment is written full of zeros, and synced, by a
//! background thread before it is needed. The WAL's writes then overwrite blocks the
//! filesystem has already allocated and marked written, so the `fdatasync` behind every
//! acknowledged push commits no metadata: no journal commit, which on ext4's ordered mode
//! waits for every other file's dirty data too (a compaction's output, a deletion's discards).
//! `fallocate` is not enough: it leaves unwritten extents, and converting them at the first
//! write is metadata again.
//!
//! The cost is writing each segment's bytes twice (with direct I/O where the filesystem
//! has it, so the zeros cost the disk's time more than the CPU's) and one spare segment of
//! disk per core.
//! A rotation that finds no spare ready opens a plain segment as before
//! (`kiln_wal_segments_unprepared_total`): the spare only ever saves time, never holds up a
//! write.
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The spare's file name in a core's WAL directory while it is written. Replay and deletion
/// ignore it (it is not a segment's name), and a start removes one left behind, which may be
/// half written.
pub const SPARE_NAME: &str = "spare.tmp";

/// The spare's name once it is whole and synced: a start finds it ready, so the first
/// segment after a restart is preallocated too.
pub const READY_NAME: &str = "spare.ready";

/// Zeros written between syncs: a spare is flushed a few MiB at a time, never a whole
/// segment's worth of dirty pages at once in front of the WAL's own syncs.
const SYNC_EVERY: u64 = 8 << 20;

pub(super) static PREALLOCATED: AtomicU64 = AtomicU64::new(0);
pub(super) static UNPREPARED: AtomicU64 = AtomicU64::new(0);
pub(super) static FAILED: AtomicU64 = AtomicU64::new(0);

/// One core's spare segment: being prepared, or ready. A failed preparation is started
/// again at once (the next rotation takes it if it is ready by then).
pub struct Spare {
    /// `SPARE_NAME` in the core's directory.
    path: PathBuf,
    /// `READY_NAME` in the core's directory.
    ready_path: PathBuf,
    bytes: u64,
    state: State,
}

enum State {
    /// The preparing thread's outcome, once it has one.
    Preparing(flume::Receiver<io::Result<()>>),
    Ready,
}

impl Spare {
    /// Takes the spare an earlier run left ready in `dir` if it has `bytes`, else removes what
    /// is there and starts preparing one.
    pub fn start(dir: &Path, bytes: u64) -> Self {
        let (path, ready_path) = (dir.join(SPARE_NAME), dir.join(READY_NAME));
        remove_if_there(&path);
        let mut spare = Spare { path, ready_path, bytes, state: State::Ready };
        match std::fs::metadata(&spare.ready_path) {
            Ok(m) if m.len() == bytes => {}
            Ok(_) => {
                // Written for another segment size.
                remove_if_there(&spare.ready_path);
                spare.prepare();
            }
            Err(_) => spare.prepare(),
        }
        spare
    }

    /// Starts the thread that writes the spare, then renames it ready.
    fn prepare(&mut self) {
        let (tx, done) = flume::bounded(1);
        let (path, ready, bytes) = (self.path.clone(), self.ready_path.clone(), self.bytes);
        let spawned = std::thread::Builder::new().name("kiln-wal-spare".into()).spawn(move || {
            crate::store::lower_thread_priority();
            let res = zero_fill(&path, bytes).and_then(|()| {
                std::fs::rename(&path, &ready)?;
                super::sync_dir(ready.parent().unwrap_or(Path::new(".")))
            });
            if res.is_err() {
                // A full disk: what was written is given back.
                let _ = std::fs::remove_file(&path);
            }
            let _ = tx.send(res);
        });
        self.state = State::Preparing(done);
        if let Err(e) = spawned {
            // No thread: the next rotation finds the failure and tries again.
            let (tx, rx) = flume::bounded(1);
            let _ = tx.send(Err(e));
            self.state = State::Preparing(rx);
        }
    }

    /// Whether the spare is ready; a failed preparation is counted, logged and started again.
    pub fn ready(&mut self) -> bool {
        let res = match &self.state {
            State::Ready => return true,
            State::Preparing(done) => match done.try_recv() {
                Err(flume::TryRecvError::Empty) => return false,
                Err(flume::TryRecvError::Disconnected) => Err("the preparing thread ended".to_string()),
                Ok(res) => res.map_err(|e| e.to_string()),
            },
        };
        match res {
            Ok(()) => {
                self.state = State::Ready;
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&mut self, error: &str) {
        FAILED.fetch_add(1, Relaxed);
        tracing::warn!(file = %self.path.display(), error, "preparing a spare WAL segment failed; plain segments are used until one is ready");
        self.prepare();
    }

    /// Moves the spare into place as the segment at `to` if it is ready (the caller syncs the
    /// directory) and starts preparing the next one. `false`: none was ready, and `to` was
    /// left as it was. A path already there is never replaced.
    pub fn take_as(&mut self, to: &Path) -> bool {
        if !self.ready() {
            UNPREPARED.fetch_add(1, Relaxed);
            return false;
        }
        if let Err(e) = rename_no_replace(&self.ready_path, to) {
            tracing::warn!(file = %to.display(), error = %e, "moving the spare WAL segment into place failed; a plain segment is used");
            UNPREPARED.fetch_add(1, Relaxed);
            if e.kind() == io::ErrorKind::NotFound {
                // Removed behind kiln's back: written again.
                self.prepare();
            }
            // Otherwise it stays ready where it is, for the next rotation.
            return false;
        }
        PREALLOCATED.fetch_add(1, Relaxed);
        self.prepare();
        true
    }
}

fn remove_if_there(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(file = %path.display(), "removed a spare WAL segment left by an earlier run"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %path.display(), error = %e, "removing an old spare WAL segment failed"),
    }
}

/// A spare is written only while the filesystem has this many times its size free: it must
/// never take the last free space the WAL itself needs to acknowledge pushes.
const FREE_MARGIN: u64 = 4;

/// Writes `bytes` zeros to a new file at `path`, synced in steps and whole at the end.
fn zero_fill(path: &Path, bytes: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let free = super::free_bytes(path.parent().unwrap_or(Path::new(".")))?;
    if free / FREE_MARGIN < bytes {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{free} bytes free, fewer than {FREE_MARGIN} spare segments of {bytes} bytes"),
        ));
    }
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    // `ZEROS` zeros at an address aligned for direct I/O.
    let buf = vec![0u8; ZEROS + DIRECT_ALIGN];
    let skip = buf.as_ptr().align_offset(DIRECT_ALIGN);
    let zeros = &buf[skip..skip + ZEROS];
    // Direct I/O where the filesystem takes it: the zeros go to the disk from one buffer
    // without being copied into the page cache first (that copy was most of the cost of a
    // spare), and a segment's worth of zeros does not crowd other files' pages out of it.
    let direct = open_direct(path);
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(ZEROS as u64) as usize;
        match &direct {
            Some(d) if n.is_multiple_of(DIRECT_ALIGN) => match d.write_all_at(&zeros[..n], at) {
                Ok(()) => {}
                // Refused for its alignment after all: the same bytes through the page cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => f.write_all_at(&zeros[..n], at)?,
                Err(e) => return Err(e),
            },
            _ => f.write_all_at(&zeros[..n], at)?,
        }
        at += n as u64;
        if at.is_multiple_of(SYNC_EVERY) {
            f.sync_data()?;
        }
    }
    f.sync_all()
}

/// Bytes of zeros written at a time.
const ZEROS: usize = 1 << 20;

/// Direct I/O's alignment of buffer, offset and length: a page covers every logical block
/// size Linux filesystems use.
const DIRECT_ALIGN: usize = 4096;

/// `path` opened again for direct writes; `None` where the filesystem has no direct I/O
/// (tmpfs), and the page cache is used.
fn open_direct(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

/// `rename` that fails with `AlreadyExists` rather than replace `to`.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Prometheus text for `/metrics`: segments opened from a spare, rotations that found none
/// ready, spares whose preparation failed.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    let rows = [
        (
            "kiln_wal_segments_preallocated_total",
            "WAL segments opened from a spare written full of zeros beforehand.",
            &PREALLOCATED,
        ),
        (
            "kiln_wal_segments_unprepared_total",
            "WAL segment rotations that found no spare ready and opened a plain segment.",
            &UNPREPARED,
        ),
        ("kiln_wal_spare_failures_total", "Spare WAL segments whose preparation failed (a full disk).", &FAILED),
    ];
    for (name, help, v) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spare holds exactly its size in zeros, whether its length is a multiple of direct
    /// I/O's alignment or not (the tail goes through the page cache).
    #[test]
    fn a_spare_is_its_size_in_zeros() {
        let dir = std::env::temp_dir().join(format!("kiln-spare-zeros-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for bytes in [3 * ZEROS as u64, 2 * ZEROS as u64 + 4096 + 100] {
            let path = dir.join("zeros");
            // Something else there first: the spare replaces it whole.
            std::fs::write(&path, vec![7u8; ZEROS * 4]).unwrap();
            zero_fill(&path, bytes).unwrap();
            let got = std::fs::read(&path).unwrap();
            assert_eq!(got.len() as u64, bytes);
            assert!(got.iter().all(|&b| b == 0), "a spare of {bytes} bytes is not all zeros");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Without room for a few spares, none is written: the space is left to the WAL.
    #[test]
    fn no_spare_takes_the_last_free_space() {
        let dir = std::env::temp_dir().join(format!("kiln-spare-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let before = FAILED.load(Relaxed);
        let mut spare = Spare::start(&dir, u64::MAX / 8);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while FAILED.load(Relaxed) == before {
            assert!(!spare.ready(), "a spare larger than the disk was made ready");
            assert!(std::time::Instant::now() < deadline, "the preparation did not end");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!dir.join(SPARE_NAME).exists() && !dir.join(READY_NAME).exists());
        drop(spare);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
