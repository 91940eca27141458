//! Exclusive advisory locks on files (`flock`), for what several kiln processes on one
//! machine must not do at once: share a WAL directory, rewrite a tenant's bucket index on
//! the filesystem backend.
//!
//! A `flock` belongs to the open file, not to the process: two opens of one file in one
//! process exclude each other just as two processes do, and the lock goes when the file is
//! closed, also when its process dies.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Whether [`lock`] waits for another holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Block until the lock is free: run it off any executor thread.
    Yes,
    /// Fail at once with `ErrorKind::WouldBlock` when it is held.
    No,
}

/// Opens the file at `path`, creating it and its directory if missing (never truncating
/// it), and takes an exclusive lock on it, held until the returned file is dropped.
pub fn lock(path: &Path, wait: Wait) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    let op = match wait {
        Wait::Yes => libc::LOCK_EX,
        Wait::No => libc::LOCK_EX | libc::LOCK_NB,
    };
    loop {
        // SAFETY: flock on a file descriptor this function owns for the call's duration.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(f);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
