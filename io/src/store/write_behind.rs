//! Writing a large object to the filesystem backend without a burst of dirty pages: the
//! background store's `put` (the compactor's block files, hundreds of MiB each).
//!
//! `object_store`'s local `put` writes the whole object into the page cache and then fsyncs
//! it: the disk then takes the whole object at once, and every WAL sync of the cores waits
//! behind it (push p99 doubled while a job uploaded). Here the object is written in windows
//! of `WINDOW` bytes; each window's writeback starts as soon as it is written
//! (`sync_file_range`), and the one before it must be on disk before the next is written, so
//! at most two windows are dirty at any time and a WAL sync queues behind one window, not
//! the whole object (RocksDB's `bytes_per_sync`).
//!
//! The file is staged as `<path>#<digits>` (the name `object_store`'s local store gives its
//! own staged uploads, which its listings skip), fsynced, renamed into place, and the
//! directory fsynced: as durable and as atomic as `object_store`'s `put` with fsync.
//!
//! A file written locally first (the compactor's output, `Writer`) is written behind the
//! same way as it is made, and then *moved* into the bucket when both lie on one
//! filesystem (`put_moved`): each byte of it reaches the disk once, not twice. And a file
//! is deleted the same way, a window at a time (`delete`).
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bytes written between two writeback steps.
pub const WINDOW: usize = 4 << 20;

/// Writes `data` to `dest` (replacing any file there atomically), window by window.
pub fn put(dest: &Path, data: &[u8]) -> std::io::Result<()> {
    put_from(dest, &mut &data[..])
}

/// `put` of everything `src` reads (a local file copied into the bucket), read one window
/// at a time: at most one window of it is held.
pub fn put_from(dest: &Path, src: &mut dyn std::io::Read) -> std::io::Result<()> {
    let parent = dest.parent().ok_or_else(|| std::io::Error::other(format!("{} has no parent", dest.display())))?;
    create_dirs(parent)?;
    let (mut file, staged) = stage(dest)?;
    let written = write_windows(&mut file, src).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&staged, dest)) {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    sync_dir(parent)
}

/// Moves the local file `src` to `dest` (replacing any file there atomically) when both lie
/// on one filesystem: `src` is fsynced (cheap when it was made by a `Writer`: its windows
/// are on disk already), renamed, and the directory fsynced. `Ok(false)`: they do not
/// (`EXDEV`), nothing was done, and the caller copies instead.
pub fn put_moved(dest: &Path, src: &Path) -> std::io::Result<bool> {
    let parent = dest.parent().ok_or_else(|| std::io::Error::other(format!("{} has no parent", dest.display())))?;
    create_dirs(parent)?;
    std::fs::File::open(src)?.sync_all()?;
    match std::fs::rename(src, dest) {
        Ok(()) => sync_dir(parent).map(|()| true),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Pause between two steps of `delete`: long enough for the cores' WAL syncs in between to
/// commit the filesystem's journal (each commit then frees, and on a filesystem mounted
/// with `discard` discards, at most one window).
const DELETE_STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Deletes the file at `path` (gone already: done) a `WINDOW` at a time: truncated from
/// its end in steps with a pause between, then unlinked. Freeing a block file's extents in
/// one unlink makes the next journal commit free (and with `discard`, discard) all of them
/// at once, and every WAL sync of the cores waits for that commit: push p99 rose by a
/// third while a cleanup deleted a day of compacted inputs. Readers of the file see it
/// shrink; only marked blocks past the deletion delay, which nothing reads, are deleted.
pub fn delete(path: &Path) -> std::io::Result<()> {
    let file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut len = file.metadata()?.len();
    while len > WINDOW as u64 {
        len -= WINDOW as u64;
        file.set_len(len)?;
        std::thread::sleep(DELETE_STEP_PAUSE);
    }
    drop(file);
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // The folder goes with its last file, as `object_store`'s local store with automatic
    // cleanup does: a block's folder does not outlive the block. One still holding files
    // stays.
    if let Some(parent) = path.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

/// Writes what `src` reads into `file`, a window at a time (at most one window of it held).
fn write_windows(file: &mut std::fs::File, src: &mut dyn std::io::Read) -> std::io::Result<()> {
    let mut w = Writer::new(file);
    let mut buf = Vec::with_capacity(WINDOW);
    loop {
        buf.clear();
        (&mut *src).take(WINDOW as u64).read_to_end(&mut buf)?;
        if buf.is_empty() {
            return w.flush();
        }
        w.write_all(&buf)?;
    }
}

/// A file written from its start in which each `WINDOW`'s writeback starts once it is
/// written and the window before it is waited for: at most two windows are dirty at once,
/// whatever the pace and the sizes of the writes. `flush` starts the writeback of the
/// rest (it does not wait for it: the file's fsync does).
pub struct Writer<F> {
    file: F,
    /// Bytes written in all.
    len: usize,
    /// Bytes whose writeback has been started: a multiple of `WINDOW` but for a `flush`.
    started: usize,
}

impl<F: std::borrow::BorrowMut<std::fs::File>> Writer<F> {
    pub fn new(file: F) -> Writer<F> {
        Writer { file, len: 0, started: 0 }
    }

    pub fn file(&self) -> &std::fs::File {
        self.file.borrow()
    }

    /// Starts writeback of the whole windows written since the last, waiting each time for
    /// the window before.
    fn write_back(&mut self) -> std::io::Result<()> {
        let fd = self.file.borrow().as_raw_fd();
        while self.len - self.started >= WINDOW {
            range_sync(fd, self.started, WINDOW, libc::SYNC_FILE_RANGE_WRITE)?;
            if self.started >= WINDOW {
                let wait =
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                range_sync(fd, self.started - WINDOW, WINDOW, wait)?;
            }
            self.started += WINDOW;
        }
        Ok(())
    }
}

impl<F: std::borrow::BorrowMut<std::fs::File>> Write for Writer<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.borrow_mut().write(buf)?;
        self.len += n;
        self.write_back()?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.len > self.started {
            range_sync(
                self.file.borrow().as_raw_fd(),
                self.started,
                self.len - self.started,
                libc::SYNC_FILE_RANGE_WRITE,
            )?;
            self.started = self.len;
        }
        Ok(())
    }
}

fn range_sync(fd: i32, off: usize, len: usize, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: `fd` is an open file of the caller's for the whole call; sync_file_range reads
    // no memory of ours.
    let rc = unsafe { libc::sync_file_range(fd, off as libc::off64_t, len as libc::off64_t, flags) };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// A new staged file beside `dest`, `<dest>#<digits>`.
fn stage(dest: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    loop {
        let mut name = dest.as_os_str().to_owned();
        name.push(format!("#{}{}", std::process::id(), NEXT.fetch_add(1, Relaxed)));
        let path = PathBuf::from(name);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Creates `dir` and its missing parents, each new directory's entry fsynced in its parent.
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => dir.parent().map_or(Ok(()), sync_dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-write-behind-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn an_object_of_several_windows_is_written_whole_and_replaces_the_old_one() {
        let dir = scratch("whole");
        let dest = dir.join("tenant/01ABC/profiles.parquet");
        let data: Vec<u8> = (0..(2 * WINDOW + 12345)).map(|i| (i * 7 % 251) as u8).collect();
        put(&dest, &data).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        put(&dest, b"short").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"short");
        put(&dir.join("empty"), b"").unwrap();
        assert_eq!(std::fs::read(dir.join("empty")).unwrap(), b"");
        // No staged file is left beside it.
        let names: Vec<_> =
            std::fs::read_dir(dest.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["profiles.parquet"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_written_behind_in_odd_sizes_holds_every_byte_and_moves_into_place() {
        let dir = scratch("writer");
        std::fs::create_dir_all(&dir).unwrap();
        let local = dir.join("local");
        let data: Vec<u8> = (0..(2 * WINDOW + 777)).map(|i| (i * 13 % 253) as u8).collect();
        let mut w = Writer::new(std::fs::File::create(&local).unwrap());
        // Writes that straddle window boundaries, and a flush between them.
        for (i, chunk) in data.chunks(WINDOW / 3 + 5).enumerate() {
            w.write_all(chunk).unwrap();
            if i == 2 {
                w.flush().unwrap();
            }
        }
        w.flush().unwrap();
        assert_eq!(w.started, data.len());
        drop(w);
        let dest = dir.join("bucket/tenant/01ABC/profiles.parquet");
        put(&dest, b"old").unwrap();
        assert!(put_moved(&dest, &local).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert!(!local.exists(), "moved, not copied");
        // A source that is not there is an error, and the object stays.
        assert!(put_moved(&dest, &local).is_err());
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_deleted_in_steps_is_gone_and_a_missing_one_is_no_error() {
        let dir = scratch("delete");
        std::fs::create_dir_all(&dir).unwrap();
        let (big, small) = (dir.join("big"), dir.join("small"));
        std::fs::write(&big, vec![7u8; 2 * WINDOW + 1]).unwrap();
        std::fs::write(&small, b"x").unwrap();
        delete(&big).unwrap();
        assert!(!big.exists() && dir.is_dir(), "the folder stays while it holds a file");
        delete(&small).unwrap();
        assert!(!small.exists() && !dir.exists(), "the folder goes with its last file");
        delete(&big).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        // A directory is not a file to delete: an error, not a panic or a silent success.
        assert!(delete(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_write_leaves_the_old_object_and_no_staged_file() {
        let dir = scratch("failed");
        // The destination is a directory: the rename fails after the staged file is written.
        let dest = dir.join("taken");
        std::fs::create_dir_all(dest.join("inside")).unwrap();
        assert!(put(&dest, b"data").is_err());
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["taken"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
