//! The compactor (`-target=compactor`, and within `-target=all`): merges each tenant's
//! blocks as `plan` says, applies retention and deletes what is marked (`clean`).
//!
//! It runs on threads of its own at a lower CPU priority than the cores (nice 10): the
//! kernel gives a core's thread the CPU whenever it has work, so ingest and queries on the
//! same CPUs come first, and compaction takes what they leave. Its I/O goes through the store
//! thread; it holds at most one job's inputs per thread (`block::merge` streams them).
//!
//! A job: open the inputs (meta, index, symbols, the parquet footer), merge them into one
//! block (`kiln_shards::block::merge`: replica copies dropped, stack ids rewritten), upload
//! its files (meta.json last), then one bucket index write adds the output and marks the
//! inputs for deletion. Then the swap: every core takes the output and retires the inputs
//! at one block epoch (`store_gateway::Msg::Swap`), so each query reads the inputs or the
//! output, on every core, never both and never neither. A crash before the index write
//! leaves files no index lists (deleted by the cleaner after
//! `-compactor.partial-block-deletion-delay`) and the job is planned again; a crash after it
//! leaves the index right, and a start reads it (the marked inputs are not opened).
//!
//! In a cluster every compactor plans every tenant and runs the jobs (and the cleanups)
//! whose key the compactor ring gives it (`Snapshot::compactor_owner`, within the tenant's
//! `-compactor.compactor-tenant-shard-size`). A job there merges the blocks of every
//! ingester and core (vertically), keeping each replicated profile once; its output is a
//! source of its own (its id in `BlockRef::ingester`), pinned by no ingester and served by
//! the store-gateways. Readers follow the index instead of a swap: a store-gateway takes the
//! output at its next sync, and every reader lets go of the inputs two sync intervals after
//! their mark (`store_gateway::sync`), so there is no moment without one of them; until
//! then a query may read both, and the querier counts each (series, time) once across
//! sources (I18).
pub mod clean;
pub mod plan;

use crate::cluster::Cluster;
use crate::config::{CompactorSettings, TenantLimits};
use kiln_io::store::bucket_index::{BlockRef, BucketIndex};
use kiln_io::store::{block_on, Store, StoreError};
use kiln_shards::block::merge::{self, Fetch, Input, MergeStats, Opened};
use kiln_shards::block::{self, object_path, profiles::ProfilesFile};
use kiln_shards::model::ids::{BlockId, TenantId};
use kiln_shards::runtime::Mesh;
use kiln_shards::store_gateway::Msg;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the compactor needs.
pub struct Compactor {
    pub store: Store,
    pub settings: CompactorSettings,
    pub limits: Arc<TenantLimits>,
    /// This process's cores, to swap compacted blocks in: a single node's. `None` in a
    /// cluster, whose readers follow the bucket index (see `Cluster compaction` below).
    pub mesh: Option<Mesh>,
    /// In a cluster: the compactor ring, by which the compactors split the work.
    pub cluster: Option<Arc<Cluster>>,
    /// Unix seconds at which this process started (see `clean::cut_complete`).
    pub started_at_s: i64,
    /// Where a job writes its output's `profiles.parquet` before the upload
    /// (`-compactor.data-dir`): the largest file of a block is never held in memory.
    pub scratch: std::path::PathBuf,
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("block {block}: {source}")]
    Store { block: String, source: StoreError },
    #[error("block {block}: {source}")]
    Format { block: String, source: block::FormatError },
    #[error(transparent)]
    Merge(#[from] merge::MergeError),
    #[error("writing the output: {0}")]
    Upload(StoreError),
    #[error("indexing the output: {0}")]
    Index(StoreError),
    #[error("the output's local file {}: {source}", path.display())]
    Scratch { path: std::path::PathBuf, source: std::io::Error },
    /// Alone: an input's cut has not finished on its core yet (its head is still there).
    #[error("not every input is in its core's block set yet")]
    NotHeld,
}

impl JobError {
    /// The block whose bytes do not decode, if that is why: it is marked not to be
    /// compacted again (it stays read by queries), so its window's merge goes on without it.
    fn damaged(&self) -> Option<&str> {
        match self {
            JobError::Format { block, .. } => Some(block),
            JobError::Merge(merge::MergeError::Format { block, .. }) => Some(block),
            _ => None,
        }
    }
}

impl Compactor {
    /// Starts the compactor's thread: a cleanup and a compaction round at once, then each on
    /// its interval. The thread runs for the life of the process.
    pub fn start(self) -> std::io::Result<()> {
        // What a job killed mid-way left here is of no use: its block was never indexed.
        let _ = std::fs::remove_dir_all(&self.scratch);
        std::fs::create_dir_all(&self.scratch)?;
        std::thread::Builder::new().name("kiln-compactor".into()).spawn(move || {
            kiln_io::store::lower_thread_priority();
            crate::self_profiling::register_current_thread();
            self.run();
        })?;
        Ok(())
    }

    fn run(self) {
        let (mut next_compaction, mut next_cleanup) = (Instant::now(), Instant::now());
        loop {
            let now = Instant::now();
            if now >= next_cleanup {
                self.cleanup_round();
                next_cleanup = Instant::now() + self.settings.cleanup_interval;
            }
            if now >= next_compaction {
                self.compaction_round();
                next_compaction = Instant::now() + self.settings.compaction_interval;
            }
            std::thread::sleep(next_compaction.min(next_cleanup).saturating_duration_since(Instant::now()));
        }
    }

    /// Plans every tenant's jobs and runs them, `-compactor.compaction-concurrency` at a time.
    pub fn compaction_round(&self) {
        stats::ROUNDS.fetch_add(1, Relaxed);
        let tenants = match block_on(self.store.tenants()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "compactor: listing tenants failed; retrying next round");
                return;
            }
        };
        let planning = plan::Planning {
            ranges_ms: self.settings.block_ranges.iter().map(|d| ms(*d)).collect(),
            wait_ms: ms(self.settings.first_level_compaction_wait_period),
            max_memory_bytes: self.settings.max_memory_bytes,
        };
        let mut jobs: Vec<(String, plan::Job)> = Vec::new();
        let mut oldest = Vec::new();
        for tenant in tenants {
            let idx = match block_on(self.store.read_bucket_index(tenant.clone())) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "compactor: reading the bucket index failed");
                    continue;
                }
            };
            oldest.push((tenant.clone(), oldest_uncompacted(&idx)));
            jobs.extend(plan::plan(&idx, &planning, now_ms()).into_iter().map(|j| (tenant.clone(), j)));
        }
        stats::set_oldest(oldest);
        jobs.retain(|(tenant, job)| self.runs_here(&job.key(tenant), tenant));
        if !jobs.is_empty() && !self.readers_follow() {
            tracing::warn!(
                jobs = jobs.len(),
                "compactor: no healthy ACTIVE store-gateway in the ring to serve compacted blocks; not compacting"
            );
            return;
        }
        let queue = std::sync::Mutex::new(jobs.into_iter());
        std::thread::scope(|s| {
            for _ in 0..self.settings.compaction_concurrency.max(1) {
                s.spawn(|| {
                    kiln_io::store::lower_thread_priority();
                    while let Some((tenant, job)) = queue.lock().map(|mut q| q.next()).unwrap_or(None) {
                        self.run_logged(&tenant, &job);
                    }
                });
            }
        });
    }

    fn run_logged(&self, tenant: &str, job: &plan::Job) {
        let started = Instant::now();
        match self.run_job(tenant, job) {
            Ok((out, st, bytes_in)) => {
                let secs = started.elapsed().as_secs_f64();
                stats::job_done(true, secs, bytes_in, &out, &st);
                tracing::info!(
                    tenant,
                    job = %job.key(tenant),
                    inputs = job.blocks.len(),
                    output = %out.block_id,
                    level = out.compaction_level,
                    rows_in = st.rows_in,
                    rows_out = st.rows_out,
                    copies_dropped = st.copies_dropped,
                    bytes_in,
                    bytes_out = out.size_bytes,
                    seconds = secs,
                    "compaction done"
                );
            }
            Err(JobError::NotHeld) => {
                tracing::info!(tenant, job = %job.key(tenant), "compaction waits for a cut to finish; planned again next round");
            }
            Err(e) => {
                stats::job_done(
                    false,
                    started.elapsed().as_secs_f64(),
                    0,
                    &BlockRef::default(),
                    &MergeStats::default(),
                );
                tracing::warn!(tenant, job = %job.key(tenant), error = %e, "compaction failed; planned again next round");
                if let Some(block) = e.damaged() {
                    match block_on(self.store.mark_no_compact(tenant.to_string(), vec![block.to_string()])) {
                        Ok(()) => {
                            stats::NO_COMPACT.fetch_add(1, Relaxed);
                            tracing::error!(
                                tenant,
                                block,
                                "a damaged block is marked no-compact: queries still read it, compactions leave it out"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(tenant, block, error = %e, "marking a damaged block no-compact failed")
                        }
                    }
                }
            }
        }
    }

    /// Whether the work keyed `key` of `tenant` runs on this instance: always alone; in a
    /// cluster, on its owner on the compactor ring within the tenant's shard
    /// (`-compactor.compactor-tenant-shard-size`). Two compactors that both believe they own
    /// a job (a ring still settling) each write an output of their own, each its own source:
    /// readers count every profile once across them, and the next round merges them.
    fn runs_here(&self, key: &str, tenant: &str) -> bool {
        let Some(c) = &self.cluster else { return true };
        let snap = c.snapshot();
        let size = self.limits.for_tenant(tenant).compactor_tenant_shard_size;
        let shard = (size > 0).then(|| snap.compactor_tenant_shard(tenant, size));
        snap.compactor_owner(key, shard.as_ref()).is_some_and(|o| Some(o) == snap.index_of(&c.self_id))
    }

    /// Whether a compacted block will be read: alone, by this process's cores; in a
    /// cluster, a compacted block is no ingester's (it is not pinned) and only
    /// store-gateways serve it, so one must be there.
    fn readers_follow(&self) -> bool {
        let Some(c) = &self.cluster else { return true };
        let snap = c.snapshot();
        snap.instances().iter().enumerate().any(|(i, d)| {
            d.components.has(kiln_shards::ring::member::Components::STORE_GATEWAY)
                && d.state == kiln_shards::ring::member::State::Active
                && snap.healthy(i as u32)
        })
    }

    /// Runs one job: returns the output's index entry, the merge's figures and the bytes read.
    fn run_job(&self, tenant: &str, job: &plan::Job) -> Result<(BlockRef, MergeStats, u64), JobError> {
        if !self.held(tenant, &job.blocks) {
            return Err(JobError::NotHeld);
        }
        let mut opened = Vec::with_capacity(job.blocks.len());
        let mut bytes_in = 0;
        for b in &job.blocks {
            let (o, n) = self.open(tenant, b)?;
            opened.push(o);
            bytes_in += n;
        }
        // Alone, every block is one source (""), and so is the output. In a cluster the
        // output is a source of its own (its id), holding each profile once, even when its
        // inputs share one: readers hold inputs and output side by side for a while, and a
        // source must hold each profile once (I18).
        let id = BlockId::new_random();
        let source = if self.cluster.is_some() { id.to_string() } else { String::new() };
        let inputs: Vec<Input<'_>> =
            opened.iter().zip(&job.blocks).map(|(o, b)| Input { id: &b.block_id, ..o.input(&b.ingester) }).collect();
        let mut fetch = StoreFetch {
            store: &self.store,
            paths: job.blocks.iter().map(|b| object_path(tenant, &b.block_id, block::PROFILES)).collect(),
        };
        // profiles.parquet goes to a local file as it is merged, and from there to the bucket
        // a part at a time; the index and the symbols are held (the index is written last of
        // all, the symbols are the output's one table).
        let scratch = Scratch(self.scratch.join(format!("{id}.{}", block::PROFILES)));
        let scratch_err = |source| JobError::Scratch { path: scratch.0.clone(), source };
        let sink = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&scratch.0)
            .map_err(scratch_err)?;
        // Written behind as it is made: a job's output never lands on the disk in one burst
        // that the cores' WAL syncs would queue behind, and on a filesystem bucket the file is
        // then moved into place, not copied.
        let sink = kiln_io::store::write_behind::Writer::new(sink);
        let (out, mut file, st) = merge::merge_into(&inputs, &mut fetch, &id, &Default::default(), sink)?;
        std::io::Write::flush(&mut file).map_err(scratch_err)?;
        drop(file);
        bytes_in += st.bytes_fetched;
        let files: Vec<(String, u64)> = out.meta.files.iter().map(|f| (f.rel_path.clone(), f.size_bytes)).collect();
        let (meta, sources) = (out.meta.clone(), out.meta.compaction.sources.clone());
        let upload = |name: &str, bytes: Vec<u8>| {
            block_on(self.store.put(object_path(tenant, &id, name), bytes::Bytes::from(bytes)))
                .map_err(JobError::Upload)
        };
        // meta.json last: a block folder without it is an upload that never finished.
        upload(block::INDEX, out.index)?;
        crate::service::crash_point("compactor:uploading");
        block_on(self.store.put_file(object_path(tenant, &id, block::PROFILES), scratch.0.clone()))
            .map_err(JobError::Upload)?;
        drop(scratch);
        upload(block::SYMBOLS, out.symbols)?;
        upload(block::META, out.meta_json)?;
        let r = BlockRef {
            block_id: id.to_string(),
            min_time: meta.min_time,
            max_time: meta.max_time,
            uploaded_at: 0,
            compaction_level: meta.compaction.level,
            size_bytes: files.iter().map(|f| f.1).sum(),
            files,
            ingester: source,
            sources,
            ..Default::default()
        };
        let inputs: Vec<String> = job.blocks.iter().map(|b| b.block_id.clone()).collect();
        crate::service::crash_point("compactor:uploaded");
        block_on(self.store.add_compacted(tenant.to_string(), r.clone(), inputs.clone())).map_err(JobError::Index)?;
        crate::service::crash_point("compactor:indexed");
        self.swap(tenant, std::slice::from_ref(&r), &inputs);
        Ok((r, st, bytes_in))
    }

    /// Reads what a merge needs of a block; also the bytes read.
    fn open(&self, tenant: &str, b: &BlockRef) -> Result<(Opened, u64), JobError> {
        let id = &b.block_id;
        let store_err = |source| JobError::Store { block: id.clone(), source };
        let format = |source| JobError::Format { block: id.clone(), source };
        let get = |file: &str| block_on(self.store.get(object_path(tenant, id, file))).map_err(store_err);
        let meta = get(block::META)?;
        let index = get(block::INDEX)?;
        let symbols = get(block::SYMBOLS)?;
        let ppath = object_path(tenant, id, block::PROFILES);
        let len = match b.file_size(block::PROFILES) {
            Some(n) => n,
            None => block_on(self.store.size(ppath.clone())).map_err(store_err)?,
        };
        let mut want = ProfilesFile::TAIL_GUESS.min(len);
        let profiles = loop {
            let tail = block_on(self.store.get_range(ppath.clone(), len - want..len)).map_err(store_err)?;
            match ProfilesFile::from_tail(len, &tail) {
                Ok(f) => break f,
                Err(block::FormatError::NeedTail(n)) if n > want && n <= len => want = n,
                Err(e) => return Err(format(e)),
            }
        };
        let read = (meta.len() + index.len() + symbols.len()) as u64 + want;
        let o = Opened {
            meta: block::meta::decode(&meta).map_err(format)?,
            index: block::index::decode(&index).map_err(format)?,
            symbols: block::symdb::decode(&symbols).map_err(format)?,
            profiles,
        };
        Ok((o, read))
    }

    /// Moves this process's cores from `retire` to `add` at one block epoch (see the module
    /// comment); without cores, nothing to do. Swaps run one at a time.
    pub fn swap(&self, tenant: &str, add: &[BlockRef], retire: &[String]) {
        let Some(mesh) = &self.mesh else { return };
        let t = TenantId::known(tenant);
        let mut adds = mesh.by_block_owner(add.iter().map(|b| (t.clone(), b.clone())), |b| &b.1.block_id);
        let mut retires = mesh.by_block_owner(retire.iter().map(|id| (t.clone(), id.clone())), |r| &r.1);
        // A core that is gone cannot answer queries either: nothing to wait for there.
        let _ = mesh.at_next_epoch(|core, epoch, done| Msg::Swap {
            add: std::mem::take(&mut adds[core]),
            retire: std::mem::take(&mut retires[core]),
            epoch,
            done,
        });
    }

    /// Whether every input is in its core's block set: on a single node, a block's cut may
    /// still be between its index write and the step that adds it to its core (dropping its
    /// head); merging it then would leave the head read beside the output. In a cluster
    /// readers follow the index: always.
    fn held(&self, tenant: &str, blocks: &[BlockRef]) -> bool {
        let Some(mesh) = &self.mesh else { return true };
        let t = TenantId::known(tenant);
        let mut asks = Vec::new();
        let per_core = mesh.by_block_owner(blocks.iter().map(|b| (t.clone(), b.block_id.clone())), |b| &b.1);
        for (core, mine) in per_core.into_iter().enumerate().filter(|(_, m)| !m.is_empty()) {
            let (reply, rx) = flume::bounded(1);
            if mesh.send_blocking(core, Msg::Holds { blocks: mine, reply }).is_err() {
                return false;
            }
            asks.push(rx);
        }
        asks.into_iter().all(|rx| rx.recv().unwrap_or(false))
    }

    /// Tells the cores that these blocks' files are gone.
    fn forget(&self, tenant: &str, ids: &[String]) {
        let Some(mesh) = &self.mesh else { return };
        let t = TenantId::known(tenant);
        let per_core = mesh.by_block_owner(ids.iter().map(|id| (t.clone(), id.clone())), |b| &b.1);
        for (core, blocks) in per_core.into_iter().enumerate().filter(|(_, b)| !b.is_empty()) {
            let _ = mesh.send_blocking(core, Msg::Forget { blocks });
        }
    }
}

/// Row groups of the inputs, through the store thread.
struct StoreFetch<'a> {
    store: &'a Store,
    paths: Vec<String>,
}

impl Fetch for StoreFetch<'_> {
    fn fetch(&mut self, input: usize, ranges: &[Range<u64>]) -> Result<Vec<bytes::Bytes>, String> {
        block_on(self.store.get_ranges(self.paths[input].clone(), ranges.to_vec())).map_err(|e| e.to_string())
    }
}

/// The age of the tenant's oldest level-1 block not marked for deletion, in seconds (0:
/// none): how far compaction lags.
fn oldest_uncompacted(idx: &BucketIndex) -> u64 {
    let now = now_ms();
    idx.live()
        .filter(|b| b.compaction_level <= 1)
        .map(|b| now.saturating_sub(b.max_time).max(0) as u64 / 1000)
        .max()
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> i64 {
    crate::timeparse::now_ns() / 1_000_000
}

/// The compactor's counters for `/metrics`: process-wide (one compactor per process).
mod stats {
    use super::*;
    pub static ROUNDS: AtomicU64 = AtomicU64::new(0);
    pub static JOBS_OK: AtomicU64 = AtomicU64::new(0);
    pub static JOBS_FAILED: AtomicU64 = AtomicU64::new(0);
    pub static JOB_MICROS: AtomicU64 = AtomicU64::new(0);
    pub static BYTES_IN: AtomicU64 = AtomicU64::new(0);
    pub static BYTES_OUT: AtomicU64 = AtomicU64::new(0);
    pub static ROWS_IN: AtomicU64 = AtomicU64::new(0);
    pub static ROWS_OUT: AtomicU64 = AtomicU64::new(0);
    pub static COPIES_DROPPED: AtomicU64 = AtomicU64::new(0);
    pub static MARKED: AtomicU64 = AtomicU64::new(0);
    pub static DELETED: AtomicU64 = AtomicU64::new(0);
    pub static PARTIAL_DELETED: AtomicU64 = AtomicU64::new(0);
    pub static CLEANUP_FAILURES: AtomicU64 = AtomicU64::new(0);
    pub static NO_COMPACT: AtomicU64 = AtomicU64::new(0);
    /// (tenant, seconds) from the last round, at most `OLDEST_TENANTS` named.
    pub static OLDEST: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

    pub fn job_done(ok: bool, secs: f64, bytes_in: u64, out: &BlockRef, st: &MergeStats) {
        (if ok { &JOBS_OK } else { &JOBS_FAILED }).fetch_add(1, Relaxed);
        JOB_MICROS.fetch_add((secs * 1e6) as u64, Relaxed);
        BYTES_IN.fetch_add(bytes_in, Relaxed);
        BYTES_OUT.fetch_add(out.size_bytes, Relaxed);
        ROWS_IN.fetch_add(st.rows_in, Relaxed);
        ROWS_OUT.fetch_add(st.rows_out, Relaxed);
        COPIES_DROPPED.fetch_add(st.copies_dropped, Relaxed);
    }

    pub fn set_oldest(mut v: Vec<(String, u64)>) {
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(OLDEST_TENANTS);
        *OLDEST.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

/// Tenants named by `kiln_compactor_oldest_uncompacted_block_age_seconds` (the laggiest).
pub const OLDEST_TENANTS: usize = 256;

/// Prometheus text for `/metrics`.
pub fn render_metrics(out: &mut String) {
    use stats::*;
    use std::fmt::Write;
    let counters: [(&str, &str, &AtomicU64); 11] = [
        ("kiln_compactor_runs_total", "Compaction rounds started.", &ROUNDS),
        ("kiln_compactor_bytes_read_total", "Bytes of input blocks read by compaction jobs.", &BYTES_IN),
        ("kiln_compactor_bytes_written_total", "Bytes of output blocks written by compaction jobs.", &BYTES_OUT),
        ("kiln_compactor_rows_read_total", "Profiles read by compaction jobs.", &ROWS_IN),
        ("kiln_compactor_rows_written_total", "Profiles written by compaction jobs.", &ROWS_OUT),
        (
            "kiln_compactor_replica_copies_dropped_total",
            "Profiles dropped by compaction as another replica's copy.",
            &COPIES_DROPPED,
        ),
        (
            "kiln_compactor_blocks_marked_for_deletion_total",
            "Blocks marked for deletion (compacted or past retention).",
            &MARKED,
        ),
        ("kiln_compactor_blocks_deleted_total", "Marked blocks deleted after the deletion delay.", &DELETED),
        ("kiln_compactor_partial_blocks_deleted_total", "Block folders no index listed, deleted.", &PARTIAL_DELETED),
        ("kiln_compactor_cleanup_failures_total", "Cleanup steps that failed (retried next round).", &CLEANUP_FAILURES),
        (
            "kiln_compactor_blocks_marked_no_compact_total",
            "Damaged blocks marked not to be compacted again (still read by queries).",
            &NO_COMPACT,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
    }
    let name = "kiln_compactor_job_duration_seconds_total";
    let secs = JOB_MICROS.load(Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "# HELP {name} Seconds spent in compaction jobs.\n# TYPE {name} counter\n{name} {secs}");
    let name = "kiln_compactor_jobs_total";
    let (ok, failed) = (JOBS_OK.load(Relaxed), JOBS_FAILED.load(Relaxed));
    let _ = writeln!(out, "# HELP {name} Compaction jobs run, by result.\n# TYPE {name} counter");
    let _ = writeln!(out, "{name}{{result=\"success\"}} {ok}\n{name}{{result=\"failure\"}} {failed}");
    let name = "kiln_compactor_oldest_uncompacted_block_age_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Age of the tenant's newest profile in its oldest level-1 block, at the last round (the laggiest {OLDEST_TENANTS} tenants).\n# TYPE {name} gauge"
    );
    for (tenant, secs) in OLDEST.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {secs}", crate::service::label_value(tenant));
    }
}

/// A duration as whole milliseconds, for the planner and the cleaner.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A job's local output file, removed once uploaded or when the job fails.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
