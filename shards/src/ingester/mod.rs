//! The ingester on one core: every tenant head this core owns, the pushes appended here
//! and not settled yet, the WAL writer, and the cut of heads into blocks.
//!
//! Ownership: the `Ingester` is created on its core's thread and never leaves it; the core's
//! inbox loop (`runtime::core`) hands it its messages (`Msg`). Other cores reach it only
//! through those; replies go back on one-shot channels. Handling a message never awaits, so
//! no other task on the core can observe a half-applied append. A push with many frames has
//! its stacks interned in steps between the core's other messages (`step`): interning adds
//! symbols only, which no query reaches without rows; its rows are added in one step at the
//! end, so the same holds.
//!
//! `head` holds the columns, `wal` the writer task and what waits on it, `walcodec` the
//! payload of a WAL record, `cut` the freezing of heads into blocks.
pub mod cut;
pub mod head;
pub mod wal;
pub mod walcodec;

use crate::model::ids::BlockId;
use crate::model::profile::{Profile, SampleGroup};
use crate::query::{QueryRequest, QueryResult};
use crate::ring::Ring;
use crate::store_gateway::BlockSet;
use cut::{BlockConfig, CutError, CutState, Frozen};
use head::{AppendStats, Interning, RowRef, TenantHead};
use kiln_io::invariant::{check, Invariant};
use kiln_io::wal::record;
use kiln_io::wal::segment::SegmentWriter;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use wal::{AbortReply, CutBatch, Waiter, WalHandle, WalPending};

/// Why an ingest was not applied or not made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The core's head holds its limit; nothing was appended.
    #[error("the head of core {core} is full ({bytes} of {limit} bytes; see -ingester.max-head-bytes-per-core)")]
    HeadFull { core: u32, bytes: usize, limit: usize },
    /// The tenant holds its series limit on this core; nothing was appended.
    #[error("the series limit of tenant {tenant} is reached ({limit} series per core; see -ingester.max-local-series-per-tenant and -ingester.max-global-series-per-tenant)")]
    SeriesLimit { tenant: String, limit: usize },
    /// The WAL write failed: what the push appended was taken out again; not acknowledged.
    #[error("writing the WAL failed: {0}")]
    Wal(String),
    /// The core's WAL has its most bytes or pushes waiting for the disk
    /// (`wal::MAX_PENDING_BYTES`, `wal::MAX_PENDING_WAITERS`); nothing was appended. A retry
    /// a moment later may succeed.
    #[error("the WAL of core {core} is behind: {bytes} bytes and {waiters} writes wait for the disk (at most {max_bytes} bytes or {max_waiters} writes); retry later")]
    WalBusy { core: u32, bytes: usize, waiters: usize, max_bytes: usize, max_waiters: usize },
    /// The push's part on this core would make a WAL record larger than a record may be
    /// (`kiln_io::wal::record::MAX_RECORD`); it was taken out again.
    #[error(
        "the push's part on core {core} would make a WAL record of {bytes} bytes, above the limit of {limit} bytes"
    )]
    RecordTooLarge { core: u32, bytes: usize, limit: usize },
}

/// How an ingest is applied and when it counts as settled (see `Ingester::settle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestMode {
    /// A WAL record replayed at start: acknowledged before, never refused, never taken out.
    Replay,
    /// The whole of push `key`: settled when its WAL record is durable (kept) or its write
    /// fails (taken out).
    Whole(u64),
    /// One part of push `key`, whose other parts are on other cores or in other messages:
    /// kept or taken out when the distributor sends `Msg::Settle` with the push's outcome.
    Part(u64),
}

/// The answer to an ingest: what was appended, once durable, or why not.
pub type IngestReply = flume::Sender<Result<AppendStats, IngestError>>;

/// Where each core writes its WAL.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// The generation directory; core C writes `core-C/` inside it.
    pub dir: std::path::PathBuf,
    pub segment_bytes: u64,
    pub policy: kiln_io::wal::segment::SyncPolicy,
    /// Later segments are opened from a spare written full of zeros ahead of need
    /// (`kiln_io::wal::spare`).
    pub preallocate: bool,
    /// The generation is adopted: each core continues after its last segment instead of
    /// starting a new directory.
    pub resume: bool,
}

/// Starts the ingester of `core` on its thread: opens its WAL (a new segment, or after the
/// last one of an adopted generation) and spawns its WAL writer, and with `blocks` its cut
/// ticker. `inbox` is the core's own; `gate` closes once the process may serve. A WAL that
/// cannot be opened ends the process: nothing could be acknowledged.
pub async fn start<M: From<Msg> + 'static>(
    core: u32,
    wal: Option<&WalConfig>,
    max_head_bytes: usize,
    append_step_frames: usize,
    blocks: Option<(BlockConfig, Arc<Ring>, Rc<RefCell<BlockSet>>)>,
    inbox: flume::Sender<M>,
    gate: flume::Receiver<()>,
) -> Ingester {
    let ingester = match wal {
        None => Ingester::new(core),
        Some(w) => {
            let dir = w.dir.join(format!("core-{core}"));
            let writer = if w.resume {
                kiln_io::wal::segment::last_seq(&dir)
                    .and_then(|last| SegmentWriter::resume(dir.clone(), last, w.segment_bytes, w.policy))
            } else {
                SegmentWriter::create(dir.clone(), w.segment_bytes, w.policy).await
            };
            let writer = match writer {
                Ok(wr) if w.preallocate => wr.with_preallocation(),
                Ok(wr) => wr,
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot create the WAL");
                    std::process::exit(1);
                }
            };
            let (ingester, writer) = Ingester::with_wal(core, writer, inbox.clone());
            monoio::spawn(writer);
            ingester
        }
    };
    let mut ingester = ingester.with_head_limit(max_head_bytes).with_append_steps(append_step_frames);
    if let Some((cfg, ring, set)) = blocks {
        monoio::spawn(cut::ticker(inbox, cfg.max_block_duration, gate));
        ingester = ingester.with_blocks(cfg, ring, set);
    }
    ingester
}

/// The types of `IngesterStats::tenant_head_bytes`, as Pyroscope's `pyroscope_head_size_bytes`
/// labels them.
pub const HEAD_SIZE_TYPES: [&str; 6] = ["profiles", "stacktraces", "locations", "functions", "mappings", "strings"];

/// A snapshot of the ingester's size on one core, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct IngesterStats {
    pub tenants: usize,
    pub series: usize,
    /// Series in each tenant's head (tenants with none left out), for
    /// `kiln_ingester_head_series{tenant}`.
    pub tenant_series: Vec<(Arc<str>, usize)>,
    /// Head bytes of each tenant by Pyroscope's types (`HEAD_SIZE_TYPES`), live heads only.
    pub tenant_head_bytes: Vec<(Arc<str>, [usize; 6])>,
    pub profiles: u64,
    pub samples: u64,
    pub stacks: usize,
    pub head_bytes: usize,
    pub appends: u64,
    pub frozen_heads: usize,
    pub blocks_written: u64,
    pub bytes_uploaded: u64,
    /// Pushes appended here and not settled yet.
    pub pending_pushes: usize,
    /// Pushes taken out again after their append (refused by another core or the WAL).
    pub rolled_back: u64,
    /// The last cut failed and waits for its retry.
    pub cuts_suspended: bool,
    pub cut_retries: u64,
    /// What an unfinished cut last failed at, if anything.
    pub cut_error: Option<String>,
    /// Failed block uploads and index writes retried (without a deadline: see `cut::retry`).
    pub upload_retries: u64,
    /// Bytes and writes waiting for the WAL writer (bounded by `wal::MAX_PENDING_BYTES` and
    /// `wal::MAX_PENDING_WAITERS`).
    pub wal_pending_bytes: usize,
    pub wal_pending_waiters: usize,
    /// Live pushes refused because the WAL's pending buffer was full.
    pub wal_busy_refused: u64,
    /// WAL syncs in flight (bounded by `wal::MAX_SYNCS_IN_FLIGHT`).
    pub wal_syncs_in_flight: usize,
    /// Abort records whose write failed and was queued again (without a limit: a refused
    /// push's abort record must reach the WAL, or a restart would bring the push back).
    pub abort_retries: u64,
    /// Pushes whose stacks are being interned in steps now (`Ingester::step`).
    pub stepped_appends: usize,
    /// Pushes interned in steps since start.
    pub stepped_appends_total: u64,
}

/// One push's part for this core (or one replayed record).
pub struct Ingest {
    pub tenant: Arc<str>,
    pub profile: Arc<Profile>,
    pub groups: Vec<SampleGroup>,
    pub reply: IngestReply,
    pub mode: IngestMode,
    /// The tenant's series limit on this core (0: none).
    pub max_series: usize,
    /// Its WAL record's body, written where the profile was made (`walcodec::RecordBody`:
    /// the tenant, `profile` and `groups` as here); none: the core encodes the record.
    pub body: Option<walcodec::RecordBody>,
}

/// What the ingester on a core is asked to do (through the core's inbox).
pub enum Msg {
    /// Replayed ingests (WAL records at start) were acknowledged before: they bypass the
    /// head and series limits.
    Ingest(Ingest),
    /// The outcome of a push sent in parts (`IngestMode::Part`): `commit` keeps what its
    /// parts appended here, otherwise they are taken out and an abort record is written;
    /// `reply` is answered once that is done (the abort record's write goes on behind).
    Settle { key: u64, commit: bool, reply: Option<flume::Sender<()>> },
    /// From the core's own WAL writer: these whole pushes are durable (and answered).
    Durable { keys: Vec<u64> },
    /// From the core's own WAL writer: the write (or sync) of these waiters' records failed.
    /// `written`: the bytes may be in the file anyway (a failed sync or segment close); a
    /// failed write is cut off by the writer, so its records are gone.
    WalFailed { waiters: Vec<Waiter>, error: String, written: bool },
    /// A WAL record replayed in place at start (the WAL generation is adopted, not
    /// rewritten): appended to the head only, as it is durable where it is.
    Restore { tenant: Arc<str>, profile: Arc<Profile>, groups: Vec<SampleGroup>, reply: IngestReply },
    /// Cut the heads into blocks if they are old or large enough, or retry a failed cut once
    /// its backoff ran out (sent by the core's ticker).
    MaybeCut,
    /// Cut every non-empty head into blocks now (a core whose last cut failed retries it
    /// now); answered once they are uploaded: `Ok(true)`, or at once with `Ok(false)` when an
    /// earlier cut is still in flight (ask again), or an error when the cut failed (it is
    /// retried with backoff).
    Cut { reply: flume::Sender<Result<bool, CutError>> },
    /// Answered once everything appended before it is durable (used at shutdown).
    Sync { reply: IngestReply },
}

/// Where a push's rows are: the tenant's live head, or a head a cut froze meanwhile.
enum HeadAt {
    Live,
    Frozen(Rc<Frozen>),
}

/// What one message of an unsettled push appended on this core.
struct PendingPart {
    tenant: Arc<str>,
    at: HeadAt,
    rows: Vec<RowRef>,
}

/// The ingester's part of one core (see the module doc).
pub struct Ingester {
    pub core: u32,
    tenants: FxHashMap<Arc<str>, TenantHead>,
    /// Pushes appended here whose outcome is not known yet, by key. Bounded by the pushes in
    /// flight (each waits on its WAL write or on the distributor's `Settle`).
    pending: FxHashMap<u64, Vec<PendingPart>>,
    /// Pushes taken out again since start (refused after their append), for `/metrics`.
    rolled_back: u64,
    /// Live pushes refused because the WAL's pending buffer was full, for `/metrics`.
    wal_busy_refused: u64,
    /// Abort records queued again after a failed write, for `/metrics`.
    abort_retries: u64,
    appends: u64,
    wal: Option<WalHandle>,
    /// Bytes of head this core may hold (0 = no limit).
    max_head_bytes: usize,
    /// Where blocks go; `None`: heads are never cut (tests, and kiln without storage).
    blocks: Option<BlockConfig>,
    cut_state: Rc<CutState>,
    ring: Arc<Ring>,
    /// When the live head received its first profile since the last cut.
    head_since: Option<Instant>,
    /// Live pushes whose stacks are being interned in steps (`step`), oldest first; each was
    /// admitted and is admitted again before its rows are added. Bounded by the pushes in
    /// flight, as `pending` is.
    stepped: VecDeque<SteppedAppend>,
    /// Stack frames a push's part may have before its stacks are interned in steps
    /// (`-ingester.append-step-frames`; 0: never).
    step_frames: usize,
    /// Pushes interned in steps since start, for `/metrics`.
    stepped_total: u64,
    /// `Sync` requests that came while pushes were being interned in steps: answered after
    /// them, since they were received before.
    syncs_after_steps: Vec<IngestReply>,
    /// Heads frozen by cuts since start: a push interned in steps against an earlier live
    /// head starts again on the new one.
    cuts: u64,
}

/// A live push's part whose stacks are interned a step at a time between the core's other
/// messages, so that the small pushes queued behind a large one are not held up by it.
struct SteppedAppend {
    ingest: Ingest,
    interning: Interning,
    /// Its stacks are all interned (into the live head of `cuts`).
    interned: bool,
    /// `Ingester::cuts` when its interning began.
    cuts: u64,
    /// Its WAL record, written in steps too once the stacks are interned (with a WAL; the
    /// record does not depend on the head); `true` once whole.
    record: Option<(walcodec::KeyedEncoder, bool)>,
}

/// Stack frames interned in one step: about a millisecond of the core's time.
pub const STEP_FRAMES: usize = 64 * 1024;

impl Ingester {
    /// An ingester without a WAL: acknowledges as soon as the head holds the data.
    pub fn new(core: u32) -> Self {
        Ingester {
            core,
            tenants: FxHashMap::default(),
            pending: FxHashMap::default(),
            rolled_back: 0,
            wal_busy_refused: 0,
            abort_retries: 0,
            appends: 0,
            wal: None,
            max_head_bytes: 0,
            blocks: None,
            cut_state: Rc::new(CutState::new(Rc::new(RefCell::new(BlockSet::new(0))))),
            ring: Arc::new(Ring::single(core + 1, 1)),
            head_since: None,
            stepped: VecDeque::new(),
            step_frames: STEP_FRAMES,
            stepped_total: 0,
            syncs_after_steps: Vec::new(),
            cuts: 0,
        }
    }

    /// Interns a push's stacks in steps of `frames` frames when it has more (0: never).
    pub fn with_append_steps(mut self, frames: usize) -> Self {
        self.step_frames = frames;
        self
    }

    /// Cuts heads into blocks written to `cfg.store`; `ring` says which blocks this core
    /// owns. A cut hands its blocks to the core's store-gateway `blocks` in the same step as
    /// it drops their frozen heads, so a query counts each profile once.
    pub fn with_blocks(mut self, cfg: BlockConfig, ring: Arc<Ring>, blocks: Rc<RefCell<BlockSet>>) -> Self {
        self.cut_state = Rc::new(CutState::new(blocks));
        self.blocks = Some(cfg);
        self.ring = ring;
        self
    }

    pub fn with_head_limit(mut self, bytes: usize) -> Self {
        self.max_head_bytes = bytes;
        self
    }

    /// Live and frozen heads: a frozen head holds its memory until its block is written.
    pub fn approx_head_bytes(&self) -> usize {
        self.live_head_bytes()
            + self.cut_state.frozen.borrow().iter().map(|f| f.head.borrow().approx_bytes()).sum::<usize>()
    }

    fn live_head_bytes(&self) -> usize {
        self.tenants.values().map(TenantHead::approx_bytes).sum()
    }

    /// An ingester whose every ingest is acknowledged only once its WAL record is durable,
    /// and the WAL writer task that makes it so (spawn it on the same core). `inbox` is this
    /// core's own inbox: the writer reports each write's outcome there (`Msg::Durable`,
    /// `Msg::WalFailed`).
    pub fn with_wal<M: From<Msg> + 'static>(
        core: u32,
        writer: SegmentWriter,
        inbox: flume::Sender<M>,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let pending = Rc::new(RefCell::new(WalPending::default()));
        let (wake, woken) = flume::bounded(1);
        let ingester = Ingester { wal: Some(WalHandle { pending: pending.clone(), wake }), ..Ingester::new(core) };
        (ingester, wal::write_loop(writer, pending, woken, inbox))
    }

    pub fn append(&mut self, tenant: &Arc<str>, p: &Profile, groups: &[SampleGroup]) -> AppendStats {
        self.appends += 1;
        self.head_since.get_or_insert_with(Instant::now);
        self.tenants.entry(tenant.clone()).or_default().append(tenant, p, groups)
    }

    /// Appends a push's part and remembers its rows under `key` until the push settles. Only
    /// live pushes come here, each after `admit`.
    fn append_pending(
        &mut self,
        key: u64,
        tenant: &Arc<str>,
        p: &Profile,
        groups: &[SampleGroup],
        interned: Option<&Interning>,
    ) -> AppendStats {
        // I3: a live push finds the head below its limit (its own symbols, interned in steps
        // already, left out).
        if self.max_head_bytes > 0 {
            let bytes = self.approx_head_bytes().saturating_sub(interned.map_or(0, Interning::added_bytes));
            check(Invariant::HeadLimit, bytes < self.max_head_bytes, || {
                format!("a live push appended to core {} with {bytes} of {} head bytes", self.core, self.max_head_bytes)
            });
        }
        self.appends += 1;
        self.head_since.get_or_insert_with(Instant::now);
        let mut rows = Vec::new();
        let head = self.tenants.entry(tenant.clone()).or_default();
        let st = match interned {
            Some(i) => head.append_interned(tenant, p, groups, i, &mut rows),
            None => head.append_tracked(tenant, p, groups, &mut rows),
        };
        self.pending.entry(key).or_default().push(PendingPart { tenant: tenant.clone(), at: HeadAt::Live, rows });
        st
    }

    /// A push's outcome: kept (`commit`), or taken out of whichever heads hold its rows.
    /// `abort`: whether its records may be in the WAL, so an abort record must follow them
    /// (`Some`, with who waits for that record), or are known gone (`None`). Whoever waits is
    /// answered at once when nothing of the push is here.
    fn settle(&mut self, key: u64, commit: bool, abort: Option<Option<AbortReply>>) {
        let Some(parts) = self.pending.remove(&key) else {
            if let Some(Some(r)) = abort {
                r.send();
            }
            return;
        };
        for part in &parts {
            if let HeadAt::Frozen(f) = &part.at {
                // I4: every part moved into a frozen head counted itself there once.
                check(Invariant::Settle, f.unsettled.get() > 0, || {
                    format!("push {key} settled in frozen head {} whose unsettled count is 0", f.id)
                });
                f.unsettled.set(f.unsettled.get().saturating_sub(1));
            }
        }
        if commit {
            return;
        }
        let mut parts = parts;

        for i in 0..parts.len() {
            let (done, rest) = parts.split_at_mut(i + 1);
            let part = &mut done[i];
            match &part.at {
                HeadAt::Live => {
                    if let Some(h) = self.tenants.get_mut(&part.tenant) {
                        h.remove_rows(&mut part.rows);
                    }
                }
                HeadAt::Frozen(f) => f.head.borrow_mut().remove_rows(&mut part.rows),
            }
            // Rows after a removed one moved up in its series: fix every other reference
            // into the same head (this push's later parts, and other unsettled pushes).
            let mut removed: FxHashMap<u32, Vec<u32>> = FxHashMap::default();
            for &(series, row) in &part.rows {
                removed.entry(series).or_default().push(row);
            }
            for rows in removed.values_mut() {
                rows.sort_unstable();
            }
            for other in rest.iter_mut().chain(self.pending.values_mut().flatten()) {
                let same = match (&part.at, &other.at) {
                    (HeadAt::Live, HeadAt::Live) => other.tenant == part.tenant,
                    (HeadAt::Frozen(a), HeadAt::Frozen(b)) => Rc::ptr_eq(a, b),
                    _ => false,
                };
                if !same {
                    continue;
                }
                for r in other.rows.iter_mut() {
                    if let Some(gone) = removed.get(&r.0) {
                        r.1 -= gone.partition_point(|&x| x < r.1) as u32;
                    }
                }
            }
        }
        self.rolled_back += 1;
        if let Some(reply) = abort {
            self.queue_abort(key, reply);
        }
    }

    /// The limits a live push must fit: the head's bytes, then the tenant's series, then the
    /// WAL's pending buffer.
    fn admit(
        &self,
        tenant: &Arc<str>,
        p: &Profile,
        groups: &[SampleGroup],
        max_series: usize,
        own_bytes: usize,
    ) -> Result<(), IngestError> {
        if self.max_head_bytes > 0 {
            let bytes = self.approx_head_bytes().saturating_sub(own_bytes);
            if bytes >= self.max_head_bytes {
                return Err(IngestError::HeadFull { core: self.core, bytes, limit: self.max_head_bytes });
            }
        }
        if max_series > 0 {
            let (live, head) = match self.tenants.get(tenant) {
                Some(h) => (h.live_series, Some(h)),
                None => (0, None),
            };
            let room = max_series.saturating_sub(live);
            let over = match head {
                Some(h) => h.new_series_exceed(tenant, p, groups, room),
                None => TenantHead::default().new_series_exceed(tenant, p, groups, room),
            };
            if over {
                return Err(IngestError::SeriesLimit { tenant: tenant.to_string(), limit: max_series });
            }
        }
        if let Some(wal) = &self.wal {
            let p = wal.pending.borrow();
            if p.full() {
                return Err(IngestError::WalBusy {
                    core: self.core,
                    bytes: p.buf.len(),
                    waiters: p.waiters.len(),
                    max_bytes: wal::MAX_PENDING_BYTES,
                    max_waiters: wal::MAX_PENDING_WAITERS,
                });
            }
        }
        Ok(())
    }

    /// The WAL writer's report on a failed write or sync: its pushes are taken out, then
    /// refused. Where their records may be in the file anyway (`written`), the refusal waits
    /// for their abort records; abort records that did not make it are queued again.
    fn wal_failed(&mut self, waiters: Vec<Waiter>, e: String, written: bool) {
        tracing::error!(core = self.core, error = %e, written, "WAL write failed; the pushes waiting on it are taken out and refused");
        for w in waiters {
            match w {
                Waiter::Push { reply, key, .. } => {
                    // Taken out before the refusal is sent: a client that retries at once is
                    // never counted twice.
                    let err = IngestError::Wal(e.clone());
                    if written {
                        self.settle(key, false, Some(Some(AbortReply::Refused(reply, err))));
                    } else {
                        self.settle(key, false, None);
                        let _ = reply.send(Err(err));
                    }
                }
                Waiter::Sync(reply) => {
                    let _ = reply.send(Err(IngestError::Wal(e.clone())));
                }
                Waiter::Abort { key, reply } => {
                    // Whoever waited is answered after one try: a full disk must not hang a
                    // request. The record is tried again with the next write.
                    if let Some(r) = reply {
                        r.send();
                    }
                    self.abort_retries += 1;
                    self.queue_abort(key, None);
                }
            }
        }
    }

    /// Queues the abort record of push `key` (see `walcodec::encode_abort`); without a WAL,
    /// whoever waits is answered at once.
    fn queue_abort(&self, key: u64, reply: Option<AbortReply>) {
        let Some(wal) = &self.wal else {
            if let Some(r) = reply {
                r.send();
            }
            return;
        };
        let mut p = wal.pending.borrow_mut();
        record::encode(&walcodec::encode_abort(key), &mut p.buf);
        p.waiters.push(Waiter::Abort { key, reply });
        let _ = wal.wake.try_send(());
    }

    /// The heads' part of a query: live heads, then heads frozen by a cut in progress.
    pub fn query(&self, req: &QueryRequest) -> Vec<QueryResult> {
        let sel = req.selection();
        let frozen = self.cut_state.frozen.borrow();
        let source = self.blocks.as_ref().map_or("", |c| c.instance.as_str());
        let live = sel
            .tenants
            .iter()
            .filter_map(|t| self.tenants.get(t.as_str()).map(|h| h.view(t.as_str(), source).query(req)));
        let cut = frozen
            .iter()
            .filter(|f| sel.tenants.iter().any(|t| **t == *f.tenant))
            .map(|f| f.head.borrow().view(&f.tenant, source).query(req));
        live.chain(cut).collect()
    }

    /// A new block id that the ring gives this core (see `Ring::block_owner`): ULIDs are
    /// drawn until one lands here, about `cores` draws.
    fn new_block_id(&self) -> BlockId {
        loop {
            let id = BlockId::new_random();
            if self.ring.block_owner(&id) == self.core {
                return id;
            }
        }
    }

    fn should_cut(&self, cfg: &BlockConfig) -> bool {
        let Some(since) = self.head_since else { return false };
        since.elapsed() >= cfg.max_block_duration
            || (cfg.max_block_bytes > 0 && self.live_head_bytes() >= cfg.max_block_bytes)
    }

    /// Freezes every non-empty tenant head and starts writing them as blocks (see `cut`).
    /// `done` is answered when the blocks are uploaded, or at once if nothing was cut. After
    /// a failed cut this is its retry (see `cut`): when asked (`done`), or once the
    /// backoff ran out.
    fn cut(&mut self, done: Option<flume::Sender<Result<bool, CutError>>>) {
        let reply = |v: Result<bool, CutError>| {
            if let Some(d) = &done {
                let _ = d.send(v);
            }
        };
        let Some(cfg) = self.blocks.clone() else {
            reply(Ok(true));
            return;
        };
        if self.cut_state.cutting.get() {
            // A cut in flight covers everything up to its markers; the next one cuts the rest.
            reply(Ok(false));
            return;
        }
        // The heads of a failed cut, frozen since: this cut writes their markers again.
        let mut frozen: Vec<Rc<Frozen>> = Vec::new();
        if self.cut_state.suspended.get() {
            if done.is_none() && !self.cut_state.retry_due() {
                return;
            }
            frozen = self.cut_state.frozen.borrow().clone();
            self.cut_state.retries.set(self.cut_state.retries.get() + 1);
            tracing::info!(core = self.core, heads = frozen.len(), "retrying a failed block cut");
        }
        let mut fresh = Vec::new();
        let mut heads: Vec<(Arc<str>, TenantHead)> = self.tenants.drain().collect();
        self.cuts += 1;
        heads.sort_by(|a, b| a.0.cmp(&b.0));
        for (tenant, head) in heads {
            if head.profiles == 0 {
                continue;
            }
            let id = self.new_block_id();
            let f = Rc::new(Frozen::new(tenant, id, head));
            // Unsettled pushes' rows now live in the frozen head: a refusal takes them out
            // there, and the block is encoded only once all of them are settled.
            for part in self.pending.values_mut().flatten() {
                if matches!(part.at, HeadAt::Live) && part.tenant == f.tenant {
                    part.at = HeadAt::Frozen(f.clone());
                    f.unsettled.set(f.unsettled.get() + 1);
                }
            }
            fresh.push(f);
        }
        self.head_since = None;
        frozen.extend(fresh.iter().cloned());
        // Stable: a tenant's failed heads, then its new one; `write_blocks` indexes them
        // together.
        frozen.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        if frozen.is_empty() {
            reply(Ok(true));
            return;
        }
        let (tx, rx) = flume::bounded(1);
        match &self.wal {
            None => {
                let _ = tx.send(Ok(None));
            }
            Some(wal) => {
                let mut p = wal.pending.borrow_mut();
                let mut buf = std::mem::take(&mut p.buf);
                for f in &frozen {
                    record::encode(&walcodec::encode_cut(&f.tenant, &f.id), &mut buf);
                }
                let waiters = std::mem::take(&mut p.waiters);
                p.cut = Some(CutBatch { buf, waiters, reply: tx });
                let _ = wal.wake.try_send(());
            }
        }
        tracing::info!(core = self.core, heads = frozen.len(), "cutting heads into blocks");
        self.cut_state.frozen.borrow_mut().extend(fresh);
        self.cut_state.cutting.set(true);
        let state = self.cut_state.clone();
        monoio::spawn(async move {
            cut::write_blocks(frozen, rx, cfg, state.clone()).await;
            if let Some(d) = done {
                let _ = d.send(if state.suspended.get() {
                    let why = state.last_error.borrow().clone().unwrap_or_default();
                    Err(CutError::Failed(why))
                } else {
                    Ok(true)
                });
            }
        });
    }

    /// The ingester's figures for `/metrics`.
    pub fn stats(&self) -> IngesterStats {
        let mut s = IngesterStats {
            tenants: self.tenants.len(),
            appends: self.appends,
            pending_pushes: self.pending.len(),
            rolled_back: self.rolled_back,
            ..Default::default()
        };
        for (t, h) in &self.tenants {
            if !h.series.is_empty() {
                s.tenant_series.push((t.clone(), h.series.len()));
                let [stacks, locations, functions, mappings, strings] = h.symbols.bytes_by_table();
                let profiles = h.heap_bytes().saturating_sub(h.symbols.heap_bytes());
                s.tenant_head_bytes.push((t.clone(), [profiles, stacks, locations, functions, mappings, strings]));
            }
            s.series += h.series.len();
            s.profiles += h.profiles;
            s.samples += h.samples;
            s.stacks += h.symbols.stack_count();
            s.head_bytes += h.heap_bytes();
        }
        for f in self.cut_state.frozen.borrow().iter() {
            s.frozen_heads += 1;
            s.head_bytes += f.head.borrow().heap_bytes();
        }
        s.blocks_written = self.cut_state.blocks_written.get();
        s.bytes_uploaded = self.cut_state.bytes_uploaded.get();
        s.cuts_suspended = self.cut_state.suspended.get();
        s.cut_retries = self.cut_state.retries.get();
        s.cut_error = self.cut_state.last_error.borrow().clone();
        s.upload_retries = self.cut_state.upload_retries.get();
        s.wal_busy_refused = self.wal_busy_refused;
        s.abort_retries = self.abort_retries;
        s.stepped_appends = self.stepped.len();
        s.stepped_appends_total = self.stepped_total;
        if let Some(wal) = &self.wal {
            let p = wal.pending.borrow();
            s.wal_pending_bytes = p.buf.len();
            s.wal_pending_waiters = p.waiters.len();
            s.wal_syncs_in_flight = p.syncs.in_use();
        }
        s
    }

    /// The ids of the heads frozen by a cut and not yet replaced by their blocks.
    pub fn frozen_ids(&self) -> Vec<BlockId> {
        self.cut_state.frozen.borrow().iter().map(|f| f.id.clone()).collect()
    }

    /// A push's part (or a replayed record): admitted against the limits, appended, and its
    /// WAL record queued; answered once durable (see `wal`), or refused with nothing kept.
    fn ingest(&mut self, m: Ingest) {
        let replay = m.mode == IngestMode::Replay;
        if !replay && !self.admitted(&m, 0) {
            return;
        }
        if !replay && self.step_frames > 0 && head::stack_frames(&m.profile, &m.groups) > self.step_frames {
            let interning = Interning::new(&m.profile);
            self.stepped.push_back(SteppedAppend {
                ingest: m,
                interning,
                interned: false,
                cuts: self.cuts,
                record: None,
            });
            self.stepped_total += 1;
            return;
        }
        self.apply(m, None, None);
    }

    /// Whether a live push fits the limits now (see `admit`; `own_bytes`: what its interning
    /// in steps added to the head already); if not, it is refused.
    fn admitted(&mut self, m: &Ingest, own_bytes: usize) -> bool {
        match self.admit(&m.tenant, &m.profile, &m.groups, m.max_series, own_bytes) {
            Ok(()) => true,
            Err(e) => {
                if matches!(e, IngestError::WalBusy { .. }) {
                    self.wal_busy_refused += 1;
                }
                let _ = m.reply.send(Err(e));
                false
            }
        }
    }

    /// Whether pushes are being interned in steps: the core's inbox loop then calls `step`
    /// between its messages until there are none.
    pub fn has_steps(&self) -> bool {
        !self.stepped.is_empty()
    }

    /// One step of the oldest push interned in steps: about `step_frames` frames of its
    /// stacks, then of its WAL record; once both are done, the push is admitted again (what
    /// was appended meanwhile may have filled the head, the series or the WAL buffer) and its
    /// rows added and its record queued in one piece, as any other push's.
    pub fn step(&mut self) {
        let frames = self.step_frames;
        let Some(job) = self.stepped.front_mut() else { return };
        let (p, groups) = (&job.ingest.profile, &job.ingest.groups);
        if job.cuts != self.cuts {
            // A cut froze the head the ids were interned into: start again on the live one.
            (job.interning, job.interned, job.cuts) = (Interning::new(p), false, self.cuts);
        }
        if !job.interned {
            let head = self.tenants.entry(job.ingest.tenant.clone()).or_default();
            job.interned = head.intern_stacks(p, groups, &mut job.interning, frames);
            return;
        }
        // A record whose body came with the push needs no steps.
        let encode = job.ingest.body.is_none();
        if let (Some(_), IngestMode::Whole(key) | IngestMode::Part(key), true) = (&self.wal, job.ingest.mode, encode) {
            let (record, done) = job
                .record
                .get_or_insert_with(|| (walcodec::KeyedEncoder::new(key, &job.ingest.tenant, p, groups), false));
            if !*done {
                *done = record.step(p, groups, frames);
                return;
            }
        }
        let job = self.stepped.pop_front().expect("the job stepped above");
        if self.admitted(&job.ingest, job.interning.added_bytes()) {
            let record = job.record.map(|(r, _)| r.finish(&job.ingest.profile, &job.ingest.groups));
            self.apply(job.ingest, Some(&job.interning), record);
        }
        self.after_steps();
    }

    /// Answers the `Sync`s that waited for the pushes interned in steps, once none is left.
    fn after_steps(&mut self) {
        if self.stepped.is_empty() {
            for reply in std::mem::take(&mut self.syncs_after_steps) {
                self.sync(reply);
            }
        }
    }

    /// Drops the parts of push `key` still being interned in steps: it was refused before
    /// they were appended. Only a push whose requester gave up is refused so early (its
    /// `Settle` is sent when the request is dropped, whatever its parts' state; otherwise
    /// only after every part answered); the part's reply is dropped unanswered with it.
    fn drop_stepped(&mut self, key: u64) {
        let before = self.stepped.len();
        self.stepped.retain(|j| !matches!(j.ingest.mode, IngestMode::Whole(k) | IngestMode::Part(k) if k == key));
        if self.stepped.len() != before {
            self.after_steps();
        }
    }

    /// Appends an admitted push (or a replayed record) and queues its WAL record: its stacks
    /// interned here, or already (`interned`, by `step`, on the live head), its record
    /// encoded here or already (`record`, by `step`: `walcodec::encode_keyed`'s bytes).
    fn apply(&mut self, m: Ingest, interned: Option<&Interning>, record: Option<Vec<u8>>) {
        let Ingest { tenant, profile, groups, reply, mode, max_series, body } = m;
        let replay = mode == IngestMode::Replay;
        let series_before = self.tenants.get(&tenant).map_or(0, |h| h.live_series);
        let (st, key) = match mode {
            IngestMode::Replay => (self.append(&tenant, &profile, &groups), None),
            IngestMode::Whole(k) | IngestMode::Part(k) => {
                (self.append_pending(k, &tenant, &profile, &groups, interned), Some(k))
            }
        };
        // I3: a live push never takes the tenant past its series cap on this core (replay
        // may have: then it adds none).
        if max_series > 0 && !replay {
            let live = self.tenants.get(&tenant).map_or(0, |h| h.live_series);
            check(Invariant::HeadLimit, live <= max_series.max(series_before), || {
                format!("tenant {tenant} holds {live} series on core {}, above its cap of {max_series}", self.core)
            });
        }
        match (&self.wal, key) {
            (None, _) => {
                if let IngestMode::Whole(k) = mode {
                    self.settle(k, true, None);
                }
                let _ = reply.send(Ok(st));
            }
            (Some(wal), None) => {
                let payload = walcodec::encode(&tenant, &profile, &groups);
                let mut p = wal.pending.borrow_mut();
                record::encode(&payload, &mut p.buf);
                p.waiters.push(Waiter::Push { reply, stats: st, key: 0, whole: false });
                let _ = wal.wake.try_send(());
            }
            (Some(wal), Some(k)) => {
                // The record: encoded by `step`, or its first byte and key before the body
                // that came with the push, or encoded here.
                let (head, body) = match (record, body) {
                    (Some(r), _) => (r, None),
                    (None, Some(b)) => (b.head(k), Some(b)),
                    (None, None) => (walcodec::encode_keyed(k, &tenant, &profile, &groups), None),
                };
                let tail = body.as_ref().map_or(&[][..], |b| b.bytes());
                debug_assert!(
                    body.is_none()
                        || [&head[..], tail].concat() == walcodec::encode_keyed(k, &tenant, &profile, &groups),
                    "a record body that is not this push's"
                );
                let bytes = head.len() + tail.len();
                if bytes > record::MAX_RECORD {
                    // Taken out again and refused, rather than a record the WAL
                    // cannot frame; an abort record follows any earlier part of the
                    // push queued here.
                    let e = IngestError::RecordTooLarge { core: self.core, bytes, limit: record::MAX_RECORD };
                    self.settle(k, false, Some(None));
                    let _ = reply.send(Err(e));
                    return;
                }
                let mut p = wal.pending.borrow_mut();
                record::encode_parts(&head, tail, &mut p.buf);
                let whole = matches!(mode, IngestMode::Whole(_));
                p.waiters.push(Waiter::Push { reply, stats: st, key: k, whole });
                // Full means a wake-up is already queued.
                let _ = wal.wake.try_send(());
            }
        }
        // After the record is queued: a cut now puts it before the markers, with the
        // head that holds it. Never during replay: see `cut::ticker`.
        if let (Some(cfg), false) = (&self.blocks, replay) {
            if cfg.max_block_bytes > 0 && self.live_head_bytes() >= cfg.max_block_bytes {
                self.cut(None);
            }
        }
    }

    /// Applies one message of the core's inbox (see `runtime::core`).
    pub fn handle(&mut self, msg: Msg) {
        // A dropped reply receiver means the requester gave up; nothing to do.
        match msg {
            Msg::Ingest(m) => self.ingest(m),
            Msg::Settle { key, commit, reply } => {
                let reply = reply.map(AbortReply::Settled);
                if commit {
                    self.settle(key, true, None);
                    if let Some(r) = reply {
                        r.send();
                    }
                } else {
                    // A part still interned in steps was never appended: dropped, not settled.
                    self.drop_stepped(key);
                    // Answered once the abort record is durable (or its write failed).
                    self.settle(key, false, Some(reply));
                }
            }
            Msg::Durable { keys } => {
                for k in keys {
                    self.settle(k, true, None);
                }
            }
            Msg::WalFailed { waiters, error, written } => self.wal_failed(waiters, error, written),
            Msg::Restore { tenant, profile, groups, reply } => {
                let st = self.append(&tenant, &profile, &groups);
                let _ = reply.send(Ok(st));
            }
            Msg::MaybeCut => {
                if self.blocks.as_ref().is_some_and(|c| self.cut_state.suspended.get() || self.should_cut(c)) {
                    self.cut(None);
                }
            }
            Msg::Cut { reply } => self.cut(Some(reply)),
            Msg::Sync { reply } if self.has_steps() => self.syncs_after_steps.push(reply),
            Msg::Sync { reply } => self.sync(reply),
        }
    }

    /// Answers `reply` once everything appended so far is durable.
    fn sync(&mut self, reply: IngestReply) {
        match &self.wal {
            None => {
                let _ = reply.send(Ok(AppendStats::default()));
            }
            Some(wal) => {
                wal.pending.borrow_mut().waiters.push(Waiter::Sync(reply));
                let _ = wal.wake.try_send(());
            }
        }
    }
}

/// Gives the executor one turn: the core's other tasks (connections, the WAL writer, block
/// encoding) run before the caller goes on.
pub(crate) async fn yield_now() {
    YieldNow(false).await
}

/// Ready on the second poll, after re-queueing itself.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ingester::head::tests::{folded, group};
    use crate::query::Selection;

    fn ingest(ing: &mut Ingester, p: Profile, mode: IngestMode, max_series: usize) -> Result<AppendStats, IngestError> {
        send_ingest(ing, p, mode, max_series).try_recv().unwrap()
    }

    /// Hands `p` to the ingester as one push of tenant `t`; the answer comes on the receiver.
    pub(super) fn send_ingest(
        ing: &mut Ingester,
        p: Profile,
        mode: IngestMode,
        max_series: usize,
    ) -> flume::Receiver<Result<AppendStats, IngestError>> {
        send_ingest_to(ing, p, "svc", mode, max_series)
    }

    /// As `send_ingest`, into the series of service `service`.
    pub(super) fn send_ingest_to(
        ing: &mut Ingester,
        p: Profile,
        service: &str,
        mode: IngestMode,
        max_series: usize,
    ) -> flume::Receiver<Result<AppendStats, IngestError>> {
        let groups = group(&p, &[("__name__", "x"), ("service_name", service)]);
        let (tx, rx) = flume::bounded(1);
        ing.handle(Msg::Ingest(Ingest {
            tenant: Arc::from("t"),
            profile: Arc::new(p),
            groups,
            reply: tx,
            mode,
            max_series,
            body: None,
        }));
        rx
    }

    /// A one-core ingester whose WAL writer the test plays: it sees what the ingester queues
    /// (`pending`) and answers for the WAL.
    pub(super) fn with_test_wal() -> (Ingester, Rc<RefCell<WalPending>>) {
        let pending = Rc::new(RefCell::new(WalPending::default()));
        let (wake, _woken) = flume::bounded(1);
        (Ingester { wal: Some(WalHandle { pending: pending.clone(), wake }), ..Ingester::new(0) }, pending)
    }

    /// The core's figures as `/metrics` shows them, with the blocks the cuts handed over.
    pub(super) fn stats(ing: &Ingester) -> (IngesterStats, usize) {
        (ing.stats(), ing.cut_state.blocks.borrow().len())
    }

    pub(super) fn total(ing: &Ingester) -> i64 {
        let sel = Selection {
            tenants: vec!["t".into()],
            profile_type: Some("x:samples:count::".into()),
            matchers: vec![],
            start_ms: 0,
            end_ms: i64::MAX / 2_000_000,
            keys: None,
            epoch: None,
            report_read: false,
            spans: None,
        };
        let mut sum = 0;
        for r in ing.query(&QueryRequest::MergeTree(sel)) {
            if let QueryResult::Tree(t) = r {
                sum += t.nodes.iter().map(|n| n.2).sum::<i64>();
            }
        }
        sum
    }

    /// A profile of `n` distinct four-frame stacks.
    pub(super) fn wide(n: i64, ts: i64) -> Profile {
        let stacks: Vec<(String, i64)> = (0..n).map(|i| (format!("main;f{};g{i};h", i % 7), i + 1)).collect();
        let refs: Vec<(&str, i64)> = stacks.iter().map(|(s, v)| (s.as_str(), *v)).collect();
        folded(&refs, ts)
    }

    /// Steps until no push is interned in steps; how many it took.
    pub(super) fn step_all(ing: &mut Ingester) -> usize {
        let mut steps = 0;
        while ing.has_steps() {
            ing.step();
            steps += 1;
        }
        steps
    }

    #[test]
    fn a_large_push_is_interned_in_steps_with_the_small_ones_behind_it_applied_between() {
        // The reference: both pushes in one piece each.
        let mut one = Ingester::new(0).with_append_steps(0);
        ingest(&mut one, wide(50, 1_000_000_000), IngestMode::Whole(1), 0).unwrap();
        ingest(&mut one, folded(&[("main;x", 5)], 2_000_000_000), IngestMode::Whole(2), 0).unwrap();

        // 50 stacks of 4 frames (5 with the sample) in steps of 20 frames.
        let mut ing = Ingester::new(0).with_append_steps(20);
        let large = send_ingest(&mut ing, wide(50, 1_000_000_000), IngestMode::Whole(1), 0);
        assert!(ing.has_steps());
        assert!(large.try_recv().is_err(), "answered before its rows were added");
        ing.step();
        // The small push behind it is applied at once, and the large one is not visible yet.
        ingest(&mut ing, folded(&[("main;x", 5)], 2_000_000_000), IngestMode::Whole(2), 0).unwrap();
        assert_eq!(total(&ing), 5);
        assert!(large.try_recv().is_err());
        // A step takes stacks while its 20 frames last; each stack is new and maps a location
        // of its own (`g<i>`), which alone costs more than a step: a stack a step, one taken
        // above, and the step that adds the rows.
        assert_eq!(step_all(&mut ing), 50 - 1 + 1);
        large.try_recv().unwrap().unwrap();
        assert_eq!(total(&ing), total(&one));
        assert_eq!(total(&ing), 5 + (1..=50).sum::<i64>());
        let (a, b) = (&ing.tenants["t"], &one.tenants["t"]);
        assert_eq!((a.profiles, a.samples, a.symbols.stack_count()), (b.profiles, b.samples, b.symbols.stack_count()));
        let st = stats(&ing).0;
        assert_eq!((st.stepped_appends, st.stepped_appends_total, st.pending_pushes), (0, 1, 0));
        // The same stacks again are found by their keys, a frame each: 20 a step, and the
        // step that adds the rows.
        let again = send_ingest(&mut ing, wide(50, 3_000_000_000), IngestMode::Whole(3), 0);
        assert_eq!(step_all(&mut ing), 50_usize.div_ceil(20) + 1);
        again.try_recv().unwrap().unwrap();
        assert_eq!(ing.tenants["t"].symbols.stack_count(), b.symbols.stack_count());
        // A push at the threshold is appended in one piece.
        let mut at = Ingester::new(0).with_append_steps(250);
        ingest(&mut at, wide(50, 1_000_000_000), IngestMode::Whole(1), 0).unwrap();
        assert_eq!(stats(&at).0.stepped_appends_total, 0);
    }

    #[test]
    fn a_push_interned_in_steps_is_admitted_again_before_its_rows_leaving_its_own_symbols_out() {
        // Its own symbols alone take the head past the limit: still taken, as in one piece.
        let mut own = Ingester::new(0).with_append_steps(20).with_head_limit(2_000);
        let rx = send_ingest(&mut own, wide(50, 1_000_000_000), IngestMode::Whole(1), 0);
        step_all(&mut own);
        rx.try_recv().unwrap().unwrap();
        assert!(own.approx_head_bytes() > 2_000);

        // Another push fills the head meanwhile: refused, with nothing of it in the head.
        let mut ing = Ingester::new(0).with_append_steps(20);
        let rx = send_ingest(&mut ing, wide(50, 1_000_000_000), IngestMode::Whole(1), 0);
        ing.step();
        // The other push (in one piece: 4 frames) is admitted, and takes the head past it.
        ing.max_head_bytes = ing.approx_head_bytes() + 1;
        let filler = (0..4).map(|i| format!("main;{i}{}", "x".repeat(ing.max_head_bytes))).collect::<Vec<_>>();
        let filler: Vec<(&str, i64)> = filler.iter().map(|s| (s.as_str(), 1)).collect();
        send_ingest_to(&mut ing, folded(&filler, 2_000_000_000), "other", IngestMode::Whole(2), 0)
            .try_recv()
            .unwrap()
            .unwrap();
        step_all(&mut ing);
        assert!(matches!(rx.try_recv().unwrap(), Err(IngestError::HeadFull { .. })));
        assert_eq!(total(&ing), 4, "the other push's alone");
        assert_eq!(ing.tenants["t"].profiles, 1);
        assert!(ing.pending.is_empty());
    }

    #[test]
    fn a_push_refused_while_its_part_is_interned_in_steps_leaves_nothing_behind() {
        let mut ing = Ingester::new(0).with_append_steps(20);
        let part = send_ingest(&mut ing, wide(50, 1_000_000_000), IngestMode::Part(9), 0);
        let other = send_ingest(&mut ing, wide(50, 2_000_000_000), IngestMode::Part(10), 0);
        ing.step();
        // Its requester gave up (`PartedPush`'s drop): the refusal overtakes the part.
        let (tx, settled) = flume::bounded(1);
        ing.handle(Msg::Settle { key: 9, commit: false, reply: Some(tx) });
        settled.try_recv().expect("answered at once: nothing of the push is here");
        assert!(matches!(part.try_recv(), Err(flume::TryRecvError::Disconnected)));
        // The other push goes on, alone.
        step_all(&mut ing);
        other.try_recv().unwrap().unwrap();
        ing.handle(Msg::Settle { key: 10, commit: true, reply: None });
        assert!(ing.pending.is_empty());
        assert_eq!(total(&ing), (1..=50).sum::<i64>());
        assert_eq!(ing.tenants["t"].profiles, 1);
    }

    #[test]
    fn a_sync_that_comes_during_steps_waits_for_the_push_before_it() {
        let (ing, pending) = with_test_wal();
        let mut ing = ing.with_append_steps(20);
        let _large = send_ingest(&mut ing, wide(50, 1_000_000_000), IngestMode::Whole(1), 0);
        let groups = group(&wide(50, 1_000_000_000), &[("__name__", "x"), ("service_name", "svc")]);
        let want = walcodec::encode_keyed(1, "t", &wide(50, 1_000_000_000), &groups);
        let (tx, _sync) = flume::bounded(1);
        ing.handle(Msg::Sync { reply: tx });
        assert!(pending.borrow().waiters.is_empty());
        step_all(&mut ing);
        let kinds: Vec<bool> = pending.borrow().waiters.iter().map(|w| matches!(w, Waiter::Sync(_))).collect();
        assert_eq!(kinds, [false, true], "the push's record, then the sync");
        // Its record, written in steps too, is the one-piece record.
        let queued = pending.borrow();
        let (records, _) = record::decode_all(&queued.buf);
        assert_eq!(records, [want.as_slice()]);
    }

    #[test]
    fn a_push_that_brings_its_record_body_queues_the_record_the_core_would_write() {
        for steps in [0, 20] {
            let (ing, pending) = with_test_wal();
            let mut ing = ing.with_append_steps(steps);
            let p = wide(50, 1_000_000_000);
            let groups = group(&p, &[("__name__", "x"), ("service_name", "svc")]);
            let want = walcodec::encode_keyed(7, "t", &p, &groups);
            let body = Some(walcodec::RecordBody::new("t", &p, &groups));
            let (tx, rx) = flume::bounded(1);
            let (profile, mode) = (Arc::new(p), IngestMode::Whole(7));
            ing.handle(Msg::Ingest(Ingest {
                tenant: Arc::from("t"),
                profile,
                groups,
                reply: tx,
                mode,
                max_series: 0,
                body,
            }));
            // In steps: the interning's alone (no record steps), then the rows'.
            let taken = step_all(&mut ing);
            if steps > 0 {
                assert_eq!(taken, 50 + 1, "steps {steps}");
            }
            let queued = pending.borrow();
            let (records, _) = record::decode_all(&queued.buf);
            assert_eq!(records, [want.as_slice()], "steps {steps}");
            assert_eq!(total(&ing), (1..=50).sum::<i64>());
            assert!(rx.try_recv().is_err(), "answered before its record was written");
        }
    }

    #[test]
    fn a_refused_part_is_taken_out_and_later_rows_keep_their_place() {
        let mut ing = Ingester::new(0);
        // Three parts into the same series, interleaved: the middle one is refused.
        for (key, v) in [(1, 1), (2, 10), (3, 100)] {
            ingest(&mut ing, folded(&[("a;b", v)], key * 1_000_000_000), IngestMode::Part(key as u64), 0).unwrap();
        }
        assert_eq!(total(&ing), 111);
        ing.handle(Msg::Settle { key: 2, commit: false, reply: None });
        assert_eq!(total(&ing), 101);
        // Key 3's row moved up; taking it out must remove the 100, not the 1.
        ing.handle(Msg::Settle { key: 3, commit: false, reply: None });
        assert_eq!(total(&ing), 1);
        ing.handle(Msg::Settle { key: 1, commit: true, reply: None });
        assert_eq!(total(&ing), 1);
        assert!(ing.pending.is_empty());
        assert_eq!(stats(&ing).0.rolled_back, 2);
        let h = &ing.tenants["t"];
        assert_eq!((h.profiles, h.samples), (1, 1));
    }

    #[test]
    fn a_push_with_several_parts_on_one_core_is_taken_out_whole() {
        let mut ing = Ingester::new(0);
        for (key, v) in [(7, 1), (8, 10), (7, 100), (8, 1000), (7, 10000)] {
            ingest(&mut ing, folded(&[("a;b", v)], v * 1_000_000), IngestMode::Part(key), 0).unwrap();
        }
        ing.handle(Msg::Settle { key: 7, commit: false, reply: None });
        assert_eq!(total(&ing), 1010);
        ing.handle(Msg::Settle { key: 8, commit: true, reply: None });
        assert_eq!(total(&ing), 1010);
        assert_eq!(ing.tenants["t"].series[0].totals, vec![10, 1000]);
    }

    #[test]
    fn a_whole_push_settles_at_once_without_a_wal() {
        let mut ing = Ingester::new(0);
        ingest(&mut ing, folded(&[("a", 5)], 1), IngestMode::Whole(9), 0).unwrap();
        assert!(ing.pending.is_empty());
        // A late abort of a settled push changes nothing.
        ing.handle(Msg::Settle { key: 9, commit: false, reply: None });
        assert_eq!(total(&ing), 5);
    }

    #[test]
    fn series_limit_refuses_before_appending() {
        let mut ing = Ingester::new(0);
        for (i, svc) in ["s1", "s2", "s1", "s3"].iter().enumerate() {
            let rx = send_ingest_to(&mut ing, folded(&[("a", 1)], 1), svc, IngestMode::Whole(i as u64), 2);
            let res = rx.try_recv().unwrap();
            if *svc == "s3" {
                assert!(matches!(res, Err(IngestError::SeriesLimit { limit: 2, .. })), "{res:?}");
            } else {
                assert!(res.is_ok(), "{svc}: {res:?}");
            }
        }
        assert_eq!(ing.tenants["t"].live_series, 2);
        assert_eq!(ing.tenants["t"].series.len(), 2);
    }
}

#[cfg(test)]
mod wal_bound_tests {
    use super::tests::{send_ingest, stats, with_test_wal};
    use super::*;
    use crate::ingester::head::tests::folded;

    fn push(ing: &mut Ingester, mode: IngestMode) -> flume::Receiver<Result<AppendStats, IngestError>> {
        send_ingest(ing, folded(&[("main;f", 1)], 1_000_000_000), mode, 0)
    }

    #[test]
    fn a_full_wal_queue_refuses_live_pushes_before_appending_and_takes_them_again_once_drained() {
        let (mut ing, pending) = with_test_wal();
        // The writer is far behind: its queue holds its most bytes.
        pending.borrow_mut().buf.resize(wal::MAX_PENDING_BYTES, 0);
        for mode in [IngestMode::Whole(1), IngestMode::Part(2)] {
            let res = push(&mut ing, mode).try_recv().unwrap();
            assert!(matches!(res, Err(IngestError::WalBusy { core: 0, .. })), "{res:?}");
        }
        // Refused before anything was appended: nothing to take out, nothing queued.
        let (st, _) = stats(&ing);
        assert_eq!((st.profiles, st.pending_pushes, st.rolled_back, st.wal_busy_refused), (0, 0, 0, 2));
        assert_eq!((st.wal_pending_bytes, st.wal_pending_waiters), (wal::MAX_PENDING_BYTES, 0));
        // Replayed records are never refused: they were acknowledged before.
        assert!(push(&mut ing, IngestMode::Replay).is_empty());
        assert_eq!(stats(&ing).0.profiles, 1);

        // Too many writes waiting is refused the same way, whatever their bytes.
        pending.borrow_mut().buf.clear();
        let waiters = wal::MAX_PENDING_WAITERS - pending.borrow().waiters.len();
        for _ in 0..waiters {
            let (tx, _rx) = flume::bounded(1);
            pending.borrow_mut().waiters.push(Waiter::Sync(tx));
        }
        let res = push(&mut ing, IngestMode::Whole(3)).try_recv().unwrap();
        assert!(matches!(res, Err(IngestError::WalBusy { .. })), "{res:?}");

        // Once the writer caught up, the same push is queued (and answered once durable).
        pending.borrow_mut().waiters.clear();
        let rx = push(&mut ing, IngestMode::Whole(3));
        assert!(rx.is_empty());
        assert_eq!(pending.borrow().waiters.len(), 1);
        assert_eq!(stats(&ing).0.wal_busy_refused, 3);
    }
}

#[cfg(test)]
mod cut_retry_tests {
    use super::tests::{send_ingest_to, stats};
    use super::*;
    use crate::ingester::head::tests::folded;
    use kiln_io::store::{Backend, Store};

    /// Answers every write queued so far as the WAL writer would after a good write, and
    /// settles the whole pushes among them (`Msg::Durable`).
    fn ack(ing: &mut Ingester, pending: &RefCell<WalPending>) {
        let mut keys = Vec::new();
        {
            let mut p = pending.borrow_mut();
            p.buf.clear();
            for w in p.waiters.drain(..) {
                match w {
                    Waiter::Push { reply, stats, key, whole } => {
                        let _ = reply.send(Ok(stats));
                        if whole {
                            keys.push(key);
                        }
                    }
                    Waiter::Abort { reply: Some(r), .. } => r.send(),
                    _ => {}
                }
            }
        }
        ing.handle(Msg::Durable { keys });
    }

    /// A filesystem store in a fresh temporary directory, and blocks cut only when asked.
    fn test_store(name: &str) -> (std::path::PathBuf, Store, BlockConfig) {
        let dir = std::env::temp_dir().join(format!("kiln-cut-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::start(Backend::Filesystem { dir: dir.clone() }).unwrap();
        let cfg = BlockConfig {
            store: store.clone(),
            max_block_duration: std::time::Duration::from_secs(3600),
            max_block_bytes: 0,
            cache_bytes: 1 << 20,
            rows_cache_bytes: 1 << 20,
            encode: Default::default(),
            instance: String::new(),
        };
        (dir, store, cfg)
    }

    /// A one-core ingester cutting into `cfg` whose WAL writer the test plays: it sees what the
    /// ingester queues (`pending`) and answers for the WAL.
    fn ingester_with_test_wal(cfg: BlockConfig) -> (Ingester, Rc<RefCell<WalPending>>) {
        let set = Rc::new(RefCell::new(BlockSet::new(cfg.cache_bytes)));
        let (ing, pending) = super::tests::with_test_wal();
        (ing.with_blocks(cfg, Arc::new(Ring::single(1, 4)), set), pending)
    }

    /// The (tenant, block) of each cut marker in a cut's WAL batch.
    fn markers(buf: &[u8]) -> Vec<(String, String)> {
        record::decode_all(buf)
            .0
            .into_iter()
            .filter(|r| walcodec::is_cut(r))
            .map(|r| match walcodec::decode_entry(r).unwrap() {
                walcodec::Entry::Cut { tenant, block } => (tenant, block),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_cut_between_steps_starts_the_interning_again_on_the_live_head() {
        let (dir, _store, cfg) = test_store("steps");
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        rt.block_on(async move {
            let (ing, pending) = ingester_with_test_wal(cfg);
            let mut ing = ing.with_append_steps(20);
            let first = send_ingest_to(&mut ing, folded(&[("main;f", 7)], 1_000_000_000), "s", IngestMode::Whole(1), 0);
            ack(&mut ing, &pending);
            first.recv_async().await.unwrap().unwrap();
            let large =
                super::tests::send_ingest(&mut ing, super::tests::wide(50, 2_000_000_000), IngestMode::Whole(2), 0);
            ing.step();
            ing.step();
            // The head its first steps interned into is frozen and written as a block.
            let (tx, done) = flume::bounded(1);
            ing.handle(Msg::Cut { reply: tx });
            let cut = pending.borrow_mut().cut.take().expect("the cut reached the WAL");
            assert_eq!(markers(&cut.buf).len(), 1);
            let _ = cut.reply.send(Ok(None));
            super::tests::step_all(&mut ing);
            ack(&mut ing, &pending);
            large.recv_async().await.unwrap().unwrap();
            assert_eq!(done.recv_async().await.unwrap(), Ok(true));
            // The push is whole in the live head, its stacks that head's.
            let h = &ing.tenants["t"];
            assert_eq!((h.profiles, h.samples), (1, 50));
            assert_eq!(h.symbols.stack_count(), 1 + 1 + 7 + 50 + 50);
            assert_eq!(super::tests::total(&ing), (1..=50).sum::<i64>());
        });
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_cut_is_retried_with_its_heads_and_the_live_ones_indexed_together() {
        let (dir, store, cfg) = test_store("retry");
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        rt.block_on(async move {
            let (mut ing, pending) = ingester_with_test_wal(cfg);
            let ingest = |ing: &mut Ingester, v: i64| {
                let p = folded(&[("main;f", v)], v * 1_000_000_000);
                send_ingest_to(ing, p, "s", IngestMode::Whole(v as u64), 0)
            };
            assert!(ingest(&mut ing, 1).is_empty());
            ack(&mut ing, &pending);

            // A cut whose markers the WAL cannot write (a full disk).
            let (tx, done) = flume::bounded(1);
            ing.handle(Msg::Cut { reply: tx });
            let cut = pending.borrow_mut().cut.take().expect("the cut reached the WAL");
            let first = markers(&cut.buf);
            assert_eq!(first.len(), 1);
            let _ = cut.reply.send(Err(CutError::Wal("No space left on device".into())));
            let err = done.recv_async().await.unwrap().unwrap_err().to_string();
            assert!(err.contains("No space left on device"), "{err}");
            let (st, blocks) = stats(&ing);
            assert!(st.cuts_suspended);
            assert_eq!((st.frozen_heads, blocks, st.cut_retries), (1, 0, 0));

            // Pushes go on into a live head.
            assert!(ingest(&mut ing, 2).is_empty());
            ack(&mut ing, &pending);
            // The ticker's retry waits for the backoff; a cut asked for (`/ingester/flush`) is retried now.
            ing.handle(Msg::MaybeCut);
            assert!(pending.borrow().cut.is_none(), "retried before the backoff ran out");
            let (tx, done) = flume::bounded(1);
            ing.handle(Msg::Cut { reply: tx });
            let cut = pending.borrow_mut().cut.take().expect("the retry reached the WAL");
            // The failed head's marker again (same block), then the live head's: both after
            // every record either holds.
            let retry = markers(&cut.buf);
            assert_eq!(retry.len(), 2);
            assert_eq!(retry[0], first[0]);
            assert_eq!(retry[1].0, "t");
            assert_ne!(retry[1].1, first[0].1);
            let _ = cut.reply.send(Ok(None));
            assert_eq!(done.recv_async().await.unwrap(), Ok(true));
            let (st, blocks) = stats(&ing);
            assert!(!st.cuts_suspended && st.cut_error.is_none());
            assert_eq!((st.frozen_heads, blocks, st.cut_retries, st.blocks_written), (0, 2, 1, 2));
            let idx = store.read_bucket_index("t".into()).await.unwrap();
            let mut ids: Vec<&str> = idx.blocks.iter().map(|b| b.block_id.as_str()).collect();
            ids.sort();
            let mut want = vec![retry[0].1.as_str(), retry[1].1.as_str()];
            want.sort();
            assert_eq!(ids, want);
            // Cuts work as before.
            assert!(ingest(&mut ing, 3).is_empty());
            ack(&mut ing, &pending);
            let (tx, done) = flume::bounded(1);
            ing.handle(Msg::Cut { reply: tx });
            let cut = pending.borrow_mut().cut.take().unwrap();
            assert_eq!(markers(&cut.buf).len(), 1);
            let _ = cut.reply.send(Ok(None));
            assert_eq!(done.recv_async().await.unwrap(), Ok(true));
            assert_eq!(stats(&ing).1, 3);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_frozen_head_emptied_by_refusals_writes_no_block_and_cuts_go_on() {
        let (dir, _store, cfg) = test_store("empty");
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        rt.block_on(async move {
            let (mut ing, pending) = ingester_with_test_wal(cfg);
            // One part of a push whose other owner has not answered yet.
            let _rx = send_ingest_to(&mut ing, folded(&[("main;f", 1)], 1_000_000_000), "s", IngestMode::Part(7), 0);
            // A cut freezes the head that holds it; its markers are durable.
            let (tx, done) = flume::bounded(1);
            ing.handle(Msg::Cut { reply: tx });
            let cut = pending.borrow_mut().cut.take().expect("the cut reached the WAL");
            let _ = cut.reply.send(Ok(None));
            // The push is refused after all: its rows leave the frozen head, which is empty.
            let (tx, settled) = flume::bounded(1);
            ing.handle(Msg::Settle { key: 7, commit: false, reply: Some(tx) });
            assert!(settled.is_empty(), "answered before the abort record was written");
            ack(&mut ing, &pending);
            assert_eq!(settled.recv_async().await, Ok(()));
            assert_eq!(done.recv_async().await.unwrap(), Ok(true));
            let (st, blocks) = stats(&ing);
            assert!(!st.cuts_suspended, "{:?}", st.cut_error);
            assert_eq!((st.frozen_heads, blocks, st.blocks_written), (0, 0, 0));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
