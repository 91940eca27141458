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

/// Writes what `src` reads in `WINDOW`s, each window's writeback started once written and
/// the one before it waited for: at most two windows dirty at once.
fn write_windows(file: &mut std::fs::File, src: &mut dyn std::io::Read) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    let mut off = 0usize;
    let mut buf = Vec::with_capacity(WINDOW);
    loop {
        buf.clear();
        (&mut *src).take(WINDOW as u64).read_to_end(&mut buf)?;
        if buf.is_empty() {
            return Ok(());
        }
        let chunk = &buf[..];
        file.write_all(chunk)?;
        range_sync(fd, off, chunk.len(), libc::SYNC_FILE_RANGE_WRITE)?;
        if off >= WINDOW {
            let wait =
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            range_sync(fd, off - WINDOW, WINDOW, wait)?;
        }
        off += chunk.len();
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
