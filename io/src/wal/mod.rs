//! The write-ahead log: one per core, segment files of checksummed records.
//!
//! Layout: `<wal-dir>/gen-<G>/core-<C>/<seq>.seg`. A generation is what one run of kiln
//! writes. On start, the newest generation with a `ready` marker is the source: its records
//! are replayed into the heads (routed by the current ring, so a different `-shards` loses
//! nothing) and written again into a fresh generation; once that one is durable it is marked
//! `ready` and the source is deleted. A crash at any point leaves exactly one ready
//! generation to replay, never two.
pub mod record;
pub mod segment;

use std::path::{Path, PathBuf};

pub const READY_MARKER: &str = "ready";

/// One segment file of a generation to replay.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub path: PathBuf,
    pub core: u32,
    pub seq: u64,
}

#[derive(Debug)]
pub struct Generations {
    /// The generation to replay, if any.
    pub source: Option<(u64, PathBuf)>,
    /// The generation this run writes.
    pub next: (u64, PathBuf),
}

fn gen_number(name: &str) -> Option<u64> {
    name.strip_prefix("gen-")?.parse().ok()
}

/// Takes the WAL directory for this process: an exclusive `flock` on `<wal-dir>/LOCK`, held
/// as long as the returned file lives. A second kiln on the same directory would delete the
/// first one's live generation at start; it is refused instead.
pub fn lock(wal_dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(wal_dir)?;
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(wal_dir.join("LOCK"))?;
    // SAFETY: flock on a file descriptor this function owns for the call's duration.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(std::io::Error::other(format!(
                "{} is in use by another kiln process (its LOCK file is held); stop it or choose another -storage.path / -ingester.wal-dir",
                wal_dir.display()
            )));
        }
        return Err(e);
    }
    Ok(f)
}

/// Finds the generation to replay, deletes leftovers (unready newer generations from an
/// interrupted replay, older ones already replayed) and creates the directory of the next.
pub fn prepare(wal_dir: &Path) -> std::io::Result<Generations> {
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
    let n = gens.last().map_or(1, |g| g.0 + 1);
    let next = wal_dir.join(format!("gen-{n:010}"));
    std::fs::create_dir_all(&next)?;
    sync_dir(wal_dir)?;
    Ok(Generations { source, next: (n, next) })
}

/// Every segment of a generation, ordered by core then sequence.
pub fn segments(gen_dir: &Path) -> std::io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(gen_dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(core) = name.strip_prefix("core-").and_then(|c| c.parse::<u32>().ok()) else { continue };
        for f in std::fs::read_dir(e.path())? {
            let f = f?;
            let fname = f.file_name().to_string_lossy().into_owned();
            if let Some(seq) = fname.strip_suffix(".seg").and_then(|s| s.parse::<u64>().ok()) {
                out.push(SegmentFile { path: f.path(), core, seq });
            }
        }
    }
    out.sort_by_key(|s| (s.core, s.seq));
    Ok(out)
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
    Ok(())
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
        let g = prepare(&d).unwrap();
        assert!(g.source.is_none());
        // First run never committed: its generation is not replayed and is removed.
        let g2 = prepare(&d).unwrap();
        assert!(g2.source.is_none());
        assert!(!g.next.1.exists());
        commit(&g2.next.1, None).unwrap();
        // A start interrupted after creating its generation: the ready one stays the source.
        let g3 = prepare(&d).unwrap();
        assert_eq!(g3.source.as_ref().unwrap().0, g2.next.0);
        let g4 = prepare(&d).unwrap();
        assert_eq!(g4.source.as_ref().unwrap().0, g2.next.0);
        assert!(!g3.next.1.exists());
        commit(&g4.next.1, Some(&g4.source.as_ref().unwrap().1)).unwrap();
        let g5 = prepare(&d).unwrap();
        assert_eq!(g5.source.unwrap().0, g4.next.0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
