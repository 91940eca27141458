//! Writing segments on a core (monoio file ops: io_uring where the kernel allows) and reading
//! them back at start (plain std I/O, before the cores serve).
use super::record;
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

/// A core's segment writer. Owned by the core's WAL flusher task alone.
pub struct SegmentWriter {
    dir: PathBuf,
    seq: u64,
    file: Rc<monoio::fs::File>,
    len: u64,
    max_bytes: u64,
    policy: SyncPolicy,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:010}.seg"))
}

impl SegmentWriter {
    pub async fn create(dir: PathBuf, max_bytes: u64, policy: SyncPolicy) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        super::sync_dir(dir.parent().unwrap_or(&dir))?;
        let file = open_new(&segment_path(&dir, 1)).await?;
        super::sync_dir(&dir)?;
        Ok(SegmentWriter { dir, seq: 1, file: Rc::new(file), len: 0, max_bytes: max_bytes.max(1), policy })
    }

    /// Writes framed records at the end of the current segment (rotating first when it is
    /// full). With the `Fsync` policy, returns the file to `sync_data` before the records
    /// count as durable: a sync issued after this call returns covers this write and every
    /// earlier one, so callers may sync several writes concurrently (pipelined group
    /// commit). The buffer is handed back for reuse.
    pub async fn write(&mut self, buf: Vec<u8>) -> (std::io::Result<Option<Rc<monoio::fs::File>>>, Vec<u8>) {
        if self.len > 0 && self.len + buf.len() as u64 > self.max_bytes {
            if let Err(e) = self.rotate().await {
                return (Err(e), buf);
            }
        }
        let n = buf.len() as u64;
        let (res, buf) = self.file.write_all_at(buf, self.len).await;
        if let Err(e) = res {
            return (Err(e), buf);
        }
        self.len += n;
        let sync = (self.policy == SyncPolicy::Fsync).then(|| self.file.clone());
        (Ok(sync), buf)
    }

    /// Closes the current segment (synced) and opens the next, even if the current one has
    /// room: a block cut starts a fresh segment so that the segments before it can be
    /// deleted once the block is uploaded. Returns the new segment's sequence number.
    pub async fn cut(&mut self) -> std::io::Result<u64> {
        self.rotate().await?;
        Ok(self.seq)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn rotate(&mut self) -> std::io::Result<()> {
        // The old segment is made whole before the next one exists, so only the last
        // segment of a core can ever have a torn tail.
        self.file.sync_all().await?;
        self.seq += 1;
        let file = open_new(&segment_path(&self.dir, self.seq)).await?;
        sync_dir_async(&self.dir).await?;
        // Syncs still in flight hold the old file; it closes when the last one ends.
        self.file = Rc::new(file);
        self.len = 0;
        Ok(())
    }

    pub async fn sync(&self) -> std::io::Result<()> {
        self.file.sync_all().await
    }
}

/// Deletes a core's segments numbered below `seq` (they are covered by uploaded blocks),
/// oldest first: the last one holds the cut markers that tell replay to skip the others, so
/// it goes last and an interrupted deletion never leaves records without their marker.
/// Returns how many were removed.
pub fn delete_before(dir: &Path, seq: u64) -> std::io::Result<usize> {
    let mut old: Vec<(u64, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(s) = name.to_str().and_then(|f| f.strip_suffix(".seg")).and_then(|f| f.parse::<u64>().ok()) else {
            continue;
        };
        if s < seq {
            old.push((s, e.path()));
        }
    }
    old.sort();
    for (_, path) in &old {
        std::fs::remove_file(path)?;
    }
    if !old.is_empty() {
        super::sync_dir(dir)?;
    }
    Ok(old.len())
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

/// Reads every record of one segment; a torn tail is reported in `Dropped`.
pub fn read_segment(path: &Path) -> Result<(Vec<Vec<u8>>, Option<Dropped>), ReadError> {
    let data = std::fs::read(path).map_err(|source| ReadError::Io { path: path.to_path_buf(), source })?;
    let (records, tail) = record::decode_all(&data);
    let records = records.into_iter().map(<[u8]>::to_vec).collect();
    match tail {
        record::Tail::Clean => Ok((records, None)),
        record::Tail::Torn { offset, dropped } => {
            Ok((records, Some(Dropped { path: path.to_path_buf(), offset, bytes: dropped })))
        }
        record::Tail::Corrupt { offset } => Err(ReadError::Corrupt { path: path.to_path_buf(), offset }),
    }
}
