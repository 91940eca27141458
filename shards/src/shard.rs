//! A core's shard: every tenant head this core owns, and the loop that serves its inbox.
//!
//! Ownership: the `Shard` is created on its core's thread and never leaves it. Other cores
//! reach it only through `Msg`s on its inbox; replies go back on one-shot channels. Handling a
//! message never awaits, so no other task on the core can observe a half-applied append.
use crate::flush::{self, BlockConfig, CutState, Frozen};
use crate::head::{AppendStats, RowRef, TenantHead};
use crate::profile::{Profile, SampleGroup};
use crate::query::{QueryRequest, QueryResult};
use crate::ring::Ring;
use crate::storegateway;
use crate::walcodec;
use kiln_io::wal::record;
use kiln_io::wal::segment::SegmentWriter;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

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
}

/// How an ingest is applied and when it counts as settled (see `Shard::settle`).
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

pub enum Msg {
    /// Replayed ingests (WAL records at start) were acknowledged before: they bypass the
    /// head and series limits.
    Ingest {
        tenant: Arc<str>,
        profile: Arc<Profile>,
        groups: Vec<SampleGroup>,
        reply: IngestReply,
        mode: IngestMode,
        /// The tenant's series limit on this core (0: none).
        max_series: usize,
    },
    /// The outcome of a push sent in parts (`IngestMode::Part`): `commit` keeps what its
    /// parts appended here, otherwise they are taken out and an abort record is written;
    /// `reply` is answered once that is done (the abort record's write goes on behind).
    Settle {
        key: u64,
        commit: bool,
        reply: Option<flume::Sender<()>>,
    },
    /// From the core's own WAL writer: these whole pushes are durable (and answered).
    Durable {
        keys: Vec<u64>,
    },
    /// From the core's own WAL writer: the write (or sync) of these waiters' records failed.
    /// `written`: the bytes may be in the file anyway (a failed sync or segment close); a
    /// failed write is cut off by the writer, so its records are gone.
    WalFailed {
        waiters: Vec<Waiter>,
        error: String,
        written: bool,
    },
    /// A WAL record replayed in place at start (the WAL generation is adopted, not
    /// rewritten): appended to the head only, as it is durable where it is.
    Restore {
        tenant: Arc<str>,
        profile: Arc<Profile>,
        groups: Vec<SampleGroup>,
        reply: IngestReply,
    },
    /// Answered from the live and frozen heads and the blocks this core owns; an error
    /// names a block that could not be read.
    Query {
        req: Arc<QueryRequest>,
        reply: flume::Sender<Result<Vec<QueryResult>, String>>,
    },
    /// Blocks found in the bucket indexes at start that the ring gives this core.
    AddBlocks {
        blocks: Vec<BlockEntry>,
    },
    /// Cut the heads into blocks if they are old or large enough, or retry a failed cut once
    /// its backoff ran out (sent by the core's ticker).
    MaybeCut,
    /// Cut every non-empty head into blocks now (a core whose last cut failed retries it
    /// now); answered once they are uploaded: `Ok(true)`, or at once with `Ok(false)` when an
    /// earlier cut is still in flight (ask again), or an error when the cut failed (it is
    /// retried with backoff).
    Cut {
        reply: flume::Sender<Result<bool, String>>,
    },
    Stats {
        reply: flume::Sender<ShardStats>,
    },
    /// Answered once everything appended before it is durable (used at shutdown).
    Flush {
        reply: IngestReply,
    },
}

/// A block a core owns, as the bucket index describes it.
#[derive(Debug, Clone)]
pub struct BlockEntry {
    pub tenant: String,
    pub id: String,
    /// Time range of its profiles (ms, inclusive).
    pub min_ms: i64,
    pub max_ms: i64,
    /// Size of its `profiles.parquet` (0: unknown, asked of the bucket when opened).
    pub profiles_bytes: u64,
}

/// A snapshot of a shard's size, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ShardStats {
    pub core: u32,
    pub tenants: usize,
    pub series: usize,
    pub profiles: u64,
    pub samples: u64,
    pub stacks: usize,
    pub head_bytes: usize,
    pub appends: u64,
    pub frozen_heads: usize,
    pub blocks: usize,
    pub block_cache_bytes: usize,
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
}

/// Who waits on a WAL write.
pub enum Waiter {
    /// A push's part: answered with what it appended once durable; a whole push settles.
    Push { reply: IngestReply, stats: AppendStats, key: u64, whole: bool },
    /// Answered once everything queued before it is durable (`Msg::Flush`).
    Sync(IngestReply),
    /// The abort record of `key`: `reply` is answered once it is written (or its write
    /// failed); it is written again, without the reply, if its write fails.
    Abort { key: u64, reply: Option<AbortReply> },
}

/// Who waits for an abort record: the answer they are owed once it is durable, so that a
/// refusal is never followed by a restart that brings the refused push back.
pub enum AbortReply {
    /// The distributor's `Settle { commit: false }`.
    Settled(flume::Sender<()>),
    /// A push part whose own record may be in the file (its sync failed).
    Refused(IngestReply, IngestError),
}

impl AbortReply {
    fn send(self) {
        match self {
            AbortReply::Settled(tx) => {
                let _ = tx.send(());
            }
            AbortReply::Refused(tx, e) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

/// Appends framed and waiting for the core's WAL flusher, with the pushes waiting on them.
#[derive(Default)]
pub struct WalPending {
    buf: Vec<u8>,
    waiters: Vec<Waiter>,
    /// A block cut: everything appended before it, then its markers, to be written and
    /// closed in the current segment before anything appended after it.
    cut: Option<CutBatch>,
}

/// The WAL's side of a cut. Records appended after the cut go to `WalPending::buf` and so
/// into the next segment: the segments deleted once the cut's blocks are indexed hold only
/// what those blocks hold.
struct CutBatch {
    buf: Vec<u8>,
    waiters: Vec<Waiter>,
    reply: flume::Sender<flush::CutResult>,
}

/// The shard's side of its WAL: where records go and how the flusher is woken.
pub struct WalHandle {
    pending: Rc<RefCell<WalPending>>,
    wake: flume::Sender<()>,
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

pub struct Shard {
    pub core: u32,
    tenants: FxHashMap<Arc<str>, TenantHead>,
    /// Pushes appended here whose outcome is not known yet, by key. Bounded by the pushes in
    /// flight (each waits on its WAL write or on the distributor's `Settle`).
    pending: FxHashMap<u64, Vec<PendingPart>>,
    /// Pushes taken out again since start (refused after their append), for `/metrics`.
    rolled_back: u64,
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
}

impl Shard {
    /// A shard without a WAL: acknowledges as soon as the head holds the data.
    pub fn new(core: u32) -> Self {
        Shard {
            core,
            tenants: FxHashMap::default(),
            pending: FxHashMap::default(),
            rolled_back: 0,
            appends: 0,
            wal: None,
            max_head_bytes: 0,
            blocks: None,
            cut_state: Rc::new(CutState::new(0)),
            ring: Arc::new(Ring::single(core + 1, 1)),
            head_since: None,
        }
    }

    /// Cuts heads into blocks written to `cfg.store`; `ring` says which blocks this core owns.
    pub fn with_blocks(mut self, cfg: BlockConfig, ring: Arc<Ring>) -> Self {
        self.cut_state = Rc::new(CutState::new(cfg.cache_bytes));
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

    /// A shard whose every ingest is acknowledged only once its WAL record is durable, and
    /// the flusher task that makes it so (spawn it on the same core). `inbox` is this core's
    /// own inbox: the flusher reports each write's outcome there (`Msg::WalDone`).
    pub fn with_wal(
        core: u32,
        writer: SegmentWriter,
        inbox: flume::Sender<Msg>,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let pending = Rc::new(RefCell::new(WalPending::default()));
        let (wake, woken) = flume::bounded(1);
        let shard = Shard { wal: Some(WalHandle { pending: pending.clone(), wake }), ..Shard::new(core) };
        (shard, flush_loop(writer, pending, woken, inbox))
    }

    pub fn append(&mut self, tenant: &Arc<str>, p: &Profile, groups: &[SampleGroup]) -> AppendStats {
        self.appends += 1;
        self.head_since.get_or_insert_with(Instant::now);
        self.tenants.entry(tenant.clone()).or_default().append(tenant, p, groups)
    }

    /// Appends a push's part and remembers its rows under `key` until the push settles.
    fn append_pending(&mut self, key: u64, tenant: &Arc<str>, p: &Profile, groups: &[SampleGroup]) -> AppendStats {
        self.appends += 1;
        self.head_since.get_or_insert_with(Instant::now);
        let mut rows = Vec::new();
        let st = self.tenants.entry(tenant.clone()).or_default().append_tracked(tenant, p, groups, &mut rows);
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
                f.unsettled.set(f.unsettled.get() - 1);
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

    /// The limits a live push must fit: the head's bytes, then the tenant's series.
    fn admit(
        &self,
        tenant: &Arc<str>,
        p: &Profile,
        groups: &[SampleGroup],
        max_series: usize,
    ) -> Result<(), IngestError> {
        if self.max_head_bytes > 0 {
            let bytes = self.approx_head_bytes();
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
        let live = sel.tenants.iter().filter_map(|t| self.tenants.get(t.as_str())).map(|h| h.query(req));
        let cut =
            frozen.iter().filter(|f| sel.tenants.iter().any(|t| **t == *f.tenant)).map(|f| f.head.borrow().query(req));
        live.chain(cut).collect()
    }

    /// Answers a query: heads now, blocks (which may need reads) in a task on this core. The
    /// heads and the block list are taken in the same step, so a cut finishing meanwhile
    /// cannot make the query count a head and its block both, or neither.
    fn answer_query(&self, req: Arc<QueryRequest>, reply: flume::Sender<Result<Vec<QueryResult>, String>>) {
        let mut out = self.query(&req);
        let blocks = self.cut_state.blocks.borrow_mut().matching(req.selection());
        let (Some(cfg), false) = (&self.blocks, blocks.is_empty()) else {
            let _ = reply.send(Ok(out));
            return;
        };
        let store = cfg.store.clone();
        let state = self.cut_state.clone();
        monoio::spawn(async move {
            for b in blocks {
                match storegateway::query(&state.blocks, &store, &b, &req).await {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        tracing::error!(error = %e, "reading a block for a query failed");
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
            }
            let _ = reply.send(Ok(out));
        });
    }

    /// A new block id that the ring gives this core (see `storegateway`): ULIDs are drawn
    /// until one lands here, about `cores` draws.
    fn new_block_id(&self) -> String {
        loop {
            let id = ulid::Ulid::new().to_string();
            if storegateway::owner(&self.ring, &id) == self.core {
                return id;
            }
        }
    }

    fn should_cut(&self, cfg: &BlockConfig) -> bool {
        let Some(since) = self.head_since else { return false };
        since.elapsed() >= cfg.max_block_duration
            || (cfg.max_block_bytes > 0 && self.live_head_bytes() >= cfg.max_block_bytes)
    }

    /// Freezes every non-empty tenant head and starts writing them as blocks (see `flush`).
    /// `done` is answered when the blocks are uploaded, or at once if nothing was cut. After
    /// a failed cut this is its retry (see `flush`): when asked (`done`), or once the
    /// backoff ran out.
    fn cut(&mut self, done: Option<flume::Sender<Result<bool, String>>>) {
        let reply = |v: Result<bool, String>| {
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
            flush::write_blocks(frozen, rx, cfg, state.clone()).await;
            if let Some(d) = done {
                let _ = d.send(if state.suspended.get() {
                    let why = state.last_error.borrow().clone().unwrap_or_default();
                    Err(format!("the block cut failed ({why}); it is retried with backoff"))
                } else {
                    Ok(true)
                });
            }
        });
    }

    pub fn stats(&self) -> ShardStats {
        let mut s = ShardStats {
            core: self.core,
            tenants: self.tenants.len(),
            appends: self.appends,
            pending_pushes: self.pending.len(),
            rolled_back: self.rolled_back,
            ..Default::default()
        };
        for h in self.tenants.values() {
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
        let blocks = self.cut_state.blocks.borrow();
        s.blocks = blocks.len();
        s.block_cache_bytes = blocks.cached_bytes();
        s.blocks_written = self.cut_state.blocks_written.get();
        s.bytes_uploaded = self.cut_state.bytes_uploaded.get();
        s.cuts_suspended = self.cut_state.suspended.get();
        s.cut_retries = self.cut_state.retries.get();
        s.cut_error = self.cut_state.last_error.borrow().clone();
        s
    }

    pub fn handle(&mut self, msg: Msg) {
        // A dropped reply receiver means the requester gave up; nothing to do.
        match msg {
            Msg::Ingest { tenant, profile, groups, reply, mode, max_series } => {
                let replay = mode == IngestMode::Replay;
                if !replay {
                    if let Err(e) = self.admit(&tenant, &profile, &groups, max_series) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
                let (st, key) = match mode {
                    IngestMode::Replay => (self.append(&tenant, &profile, &groups), None),
                    IngestMode::Whole(k) | IngestMode::Part(k) => {
                        (self.append_pending(k, &tenant, &profile, &groups), Some(k))
                    }
                };
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
                        let payload = walcodec::encode_keyed(k, &tenant, &profile, &groups);
                        let mut p = wal.pending.borrow_mut();
                        record::encode(&payload, &mut p.buf);
                        let whole = matches!(mode, IngestMode::Whole(_));
                        p.waiters.push(Waiter::Push { reply, stats: st, key: k, whole });
                        // Full means a wake-up is already queued.
                        let _ = wal.wake.try_send(());
                    }
                }
                // After the record is queued: a cut now puts it before the markers, with the
                // head that holds it. Never during replay: see `runtime::cut_ticker`.
                if let (Some(cfg), false) = (&self.blocks, replay) {
                    if cfg.max_block_bytes > 0 && self.live_head_bytes() >= cfg.max_block_bytes {
                        self.cut(None);
                    }
                }
            }
            Msg::Settle { key, commit, reply } => {
                let reply = reply.map(AbortReply::Settled);
                if commit {
                    self.settle(key, true, None);
                    if let Some(r) = reply {
                        r.send();
                    }
                } else {
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
            Msg::Query { req, reply } => self.answer_query(req, reply),
            Msg::AddBlocks { blocks } => {
                let mut set = self.cut_state.blocks.borrow_mut();
                for b in blocks {
                    set.add(b);
                }
            }
            Msg::MaybeCut => {
                if self.blocks.as_ref().is_some_and(|c| self.cut_state.suspended.get() || self.should_cut(c)) {
                    self.cut(None);
                }
            }
            Msg::Cut { reply } => self.cut(Some(reply)),
            Msg::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Msg::Flush { reply } => match &self.wal {
                None => {
                    let _ = reply.send(Ok(AppendStats::default()));
                }
                Some(wal) => {
                    wal.pending.borrow_mut().waiters.push(Waiter::Sync(reply));
                    let _ = wal.wake.try_send(());
                }
            },
        }
    }

    /// Serves the inbox until every sender is gone.
    pub async fn run(mut self, inbox: flume::Receiver<Msg>) {
        while let Ok(msg) = inbox.recv_async().await {
            self.handle(msg);
        }
    }
}

/// Group commit, pipelined: every append queued while a write is in flight goes out in the
/// next write; each write's sync is started as soon as the write (and so every earlier one)
/// has completed, without waiting for the previous sync, and its pushes are answered when
/// that sync completes. A slow fdatasync therefore delays the pushes it covers, not the
/// ones queued behind it. A failed write or sync is handed to the shard (`Msg::WalFailed`),
/// which takes the pushes out before refusing them; the next write waits a little longer
/// after each failure in a row (a full disk is not hammered).
async fn flush_loop(
    mut writer: SegmentWriter,
    pending: Rc<RefCell<WalPending>>,
    woken: flume::Receiver<()>,
    inbox: flume::Sender<Msg>,
) {
    let mut spare = Vec::new();
    let failures = Rc::new(std::cell::Cell::new(0u32));
    while woken.recv_async().await.is_ok() {
        loop {
            if failures.get() > 0 {
                let ms = (25u64 << failures.get().min(7)).min(2000);
                monoio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let cut = pending.borrow_mut().cut.take();
            if let Some(cut) = cut {
                // A block cut first: what was appended before it and its markers go to the
                // current segment, which closing syncs (with every earlier write); appends
                // made since wait in `buf` for the next segment.
                let (res, _) = writer.write(cut.buf).await;
                // A failed write is cut off by the writer; a failed close may leave it whole.
                let res = match res {
                    Ok(_) => writer.cut().await.map(|seq| (writer.dir().to_path_buf(), seq)).map_err(|e| (e, true)),
                    Err(e) => Err((e, false)),
                };
                let res = res.map_err(|(e, written)| (e.to_string(), written));
                report(&inbox, &failures, cut.waiters, res.as_ref().err().cloned()).await;
                let res = res.map_err(|(e, _)| e);
                let _ = cut.reply.send(res.map(Some));
                continue;
            }
            let (buf, waiters) = {
                let mut p = pending.borrow_mut();
                if p.buf.is_empty() && p.waiters.is_empty() {
                    break;
                }
                let buf = std::mem::replace(&mut p.buf, std::mem::take(&mut spare));
                (buf, std::mem::take(&mut p.waiters))
            };
            let (res, mut buf) = writer.write(buf).await;
            buf.clear();
            spare = buf;
            match res {
                Err(e) => report(&inbox, &failures, waiters, Some((e.to_string(), false))).await,
                Ok(None) => report(&inbox, &failures, waiters, None).await,
                Ok(Some(file)) => {
                    let (inbox, failures) = (inbox.clone(), failures.clone());
                    monoio::spawn(async move {
                        let res = file.sync_data().await.err().map(|e| (e.to_string(), true));
                        report(&inbox, &failures, waiters, res).await;
                    });
                }
            }
        }
    }
}

/// Answers the waiters of a durable write (a whole push settles on the shard afterwards), or
/// hands those of a failed one to the shard.
async fn report(
    inbox: &flume::Sender<Msg>,
    failures: &std::cell::Cell<u32>,
    waiters: Vec<Waiter>,
    error: Option<(String, bool)>,
) {
    let Some(error) = error else {
        failures.set(0);
        let mut keys = Vec::new();
        for w in waiters {
            match w {
                Waiter::Push { reply, stats, key, whole } => {
                    if whole {
                        keys.push(key);
                    }
                    let _ = reply.send(Ok(stats));
                }
                Waiter::Sync(reply) => {
                    let _ = reply.send(Ok(AppendStats::default()));
                }
                Waiter::Abort { reply, .. } => {
                    if let Some(r) = reply {
                        r.send();
                    }
                }
            }
        }
        if !keys.is_empty() {
            let _ = inbox.send_async(Msg::Durable { keys }).await;
        }
        return;
    };
    failures.set(failures.get().saturating_add(1));
    let _ = inbox.send_async(Msg::WalFailed { waiters, error: error.0, written: error.1 }).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::tests::{folded, group};
    use crate::query::Selection;

    fn ingest(shard: &mut Shard, p: Profile, mode: IngestMode, max_series: usize) -> Result<AppendStats, IngestError> {
        let groups = group(&p, &[("__name__", "x"), ("service_name", "svc")]);
        let (tx, rx) = flume::bounded(1);
        shard.handle(Msg::Ingest { tenant: Arc::from("t"), profile: Arc::new(p), groups, reply: tx, mode, max_series });
        rx.try_recv().unwrap()
    }

    fn total(shard: &Shard) -> i64 {
        let sel = Selection {
            tenants: vec!["t".into()],
            profile_type: Some("x:samples:count::".into()),
            matchers: vec![],
            start_ms: 0,
            end_ms: i64::MAX / 2_000_000,
        };
        let mut sum = 0;
        for r in shard.query(&QueryRequest::MergeTree(sel)) {
            if let QueryResult::Tree(t) = r {
                sum += t.nodes.iter().map(|n| n.2).sum::<i64>();
            }
        }
        sum
    }

    #[test]
    fn a_refused_part_is_taken_out_and_later_rows_keep_their_place() {
        let mut shard = Shard::new(0);
        // Three parts into the same series, interleaved: the middle one is refused.
        for (key, v) in [(1, 1), (2, 10), (3, 100)] {
            ingest(&mut shard, folded(&[("a;b", v)], key * 1_000_000_000), IngestMode::Part(key as u64), 0).unwrap();
        }
        assert_eq!(total(&shard), 111);
        shard.handle(Msg::Settle { key: 2, commit: false, reply: None });
        assert_eq!(total(&shard), 101);
        // Key 3's row moved up; taking it out must remove the 100, not the 1.
        shard.handle(Msg::Settle { key: 3, commit: false, reply: None });
        assert_eq!(total(&shard), 1);
        shard.handle(Msg::Settle { key: 1, commit: true, reply: None });
        assert_eq!(total(&shard), 1);
        assert!(shard.pending.is_empty());
        assert_eq!(shard.stats().rolled_back, 2);
        let h = &shard.tenants["t"];
        assert_eq!((h.profiles, h.samples), (1, 1));
    }

    #[test]
    fn a_push_with_several_parts_on_one_core_is_taken_out_whole() {
        let mut shard = Shard::new(0);
        for (key, v) in [(7, 1), (8, 10), (7, 100), (8, 1000), (7, 10000)] {
            ingest(&mut shard, folded(&[("a;b", v)], v * 1_000_000), IngestMode::Part(key), 0).unwrap();
        }
        shard.handle(Msg::Settle { key: 7, commit: false, reply: None });
        assert_eq!(total(&shard), 1010);
        shard.handle(Msg::Settle { key: 8, commit: true, reply: None });
        assert_eq!(total(&shard), 1010);
        assert_eq!(shard.tenants["t"].series[0].totals, vec![10, 1000]);
    }

    #[test]
    fn a_whole_push_settles_at_once_without_a_wal() {
        let mut shard = Shard::new(0);
        ingest(&mut shard, folded(&[("a", 5)], 1), IngestMode::Whole(9), 0).unwrap();
        assert!(shard.pending.is_empty());
        // A late abort of a settled push changes nothing.
        shard.handle(Msg::Settle { key: 9, commit: false, reply: None });
        assert_eq!(total(&shard), 5);
    }

    #[test]
    fn series_limit_refuses_before_appending() {
        let mut shard = Shard::new(0);
        let p = |svc: &str| {
            let p = folded(&[("a", 1)], 1);
            let groups = group(&p, &[("__name__", "x"), ("service_name", svc)]);
            (p, groups)
        };
        for (i, svc) in ["s1", "s2", "s1", "s3"].iter().enumerate() {
            let (p, groups) = p(svc);
            let (tx, rx) = flume::bounded(1);
            shard.handle(Msg::Ingest {
                tenant: Arc::from("t"),
                profile: Arc::new(p),
                groups,
                reply: tx,
                mode: IngestMode::Whole(i as u64),
                max_series: 2,
            });
            let res = rx.try_recv().unwrap();
            if *svc == "s3" {
                assert!(matches!(res, Err(IngestError::SeriesLimit { limit: 2, .. })), "{res:?}");
            } else {
                assert!(res.is_ok(), "{svc}: {res:?}");
            }
        }
        assert_eq!(shard.tenants["t"].live_series, 2);
        assert_eq!(shard.tenants["t"].series.len(), 2);
    }
}

#[cfg(test)]
mod cut_retry_tests {
    use super::*;
    use crate::head::tests::{folded, group};
    use kiln_io::store::{Backend, Store};

    /// Answers every write queued so far as the WAL flusher would after a good write, and
    /// settles the whole pushes among them (`Msg::Durable`).
    fn ack(shard: &mut Shard, pending: &RefCell<WalPending>) {
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
        shard.handle(Msg::Durable { keys });
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
            encode: Default::default(),
        };
        (dir, store, cfg)
    }

    /// A one-core shard cutting into `cfg` whose WAL flusher the test plays: it sees what the
    /// shard queues (`pending`) and answers for the WAL.
    fn shard_with_test_wal(cfg: BlockConfig) -> (Shard, Rc<RefCell<WalPending>>) {
        let pending = Rc::new(RefCell::new(WalPending::default()));
        let (wake, _woken) = flume::bounded(1);
        let shard = Shard { wal: Some(WalHandle { pending: pending.clone(), wake }), ..Shard::new(0) }
            .with_blocks(cfg, Arc::new(Ring::single(1, 4)));
        (shard, pending)
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
    fn a_failed_cut_is_retried_with_its_heads_and_the_live_ones_indexed_together() {
        let (dir, store, cfg) = test_store("retry");
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        rt.block_on(async move {
            let (mut shard, pending) = shard_with_test_wal(cfg);
            let tenant: Arc<str> = Arc::from("t");
            let ingest = |shard: &mut Shard, v: i64| {
                let p = folded(&[("main;f", v)], v * 1_000_000_000);
                let groups = group(&p, &[("__name__", "x"), ("service_name", "s")]);
                let (tx, rx) = flume::bounded(1);
                shard.handle(Msg::Ingest {
                    tenant: tenant.clone(),
                    profile: Arc::new(p),
                    groups,
                    reply: tx,
                    mode: IngestMode::Whole(v as u64),
                    max_series: 0,
                });
                rx
            };
            assert!(ingest(&mut shard, 1).is_empty());
            ack(&mut shard, &pending);

            // A cut whose markers the WAL cannot write (a full disk).
            let (tx, done) = flume::bounded(1);
            shard.handle(Msg::Cut { reply: tx });
            let cut = pending.borrow_mut().cut.take().expect("the cut reached the WAL");
            let first = markers(&cut.buf);
            assert_eq!(first.len(), 1);
            let _ = cut.reply.send(Err("No space left on device".into()));
            let err = done.recv_async().await.unwrap().unwrap_err();
            assert!(err.contains("No space left on device"), "{err}");
            let st = shard.stats();
            assert!(st.cuts_suspended);
            assert_eq!((st.frozen_heads, st.blocks, st.cut_retries), (1, 0, 0));

            // Pushes go on into a live head.
            assert!(ingest(&mut shard, 2).is_empty());
            ack(&mut shard, &pending);
            // The ticker's retry waits for the backoff; a flush asks for it now.
            shard.handle(Msg::MaybeCut);
            assert!(pending.borrow().cut.is_none(), "retried before the backoff ran out");
            let (tx, done) = flume::bounded(1);
            shard.handle(Msg::Cut { reply: tx });
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
            let st = shard.stats();
            assert!(!st.cuts_suspended && st.cut_error.is_none());
            assert_eq!((st.frozen_heads, st.blocks, st.cut_retries, st.blocks_written), (0, 2, 1, 2));
            let idx = store.read_bucket_index("t".into()).await.unwrap();
            let mut ids: Vec<&str> = idx.blocks.iter().map(|b| b.block_id.as_str()).collect();
            ids.sort();
            let mut want = vec![retry[0].1.as_str(), retry[1].1.as_str()];
            want.sort();
            assert_eq!(ids, want);
            // Cuts work as before.
            assert!(ingest(&mut shard, 3).is_empty());
            ack(&mut shard, &pending);
            let (tx, done) = flume::bounded(1);
            shard.handle(Msg::Cut { reply: tx });
            let cut = pending.borrow_mut().cut.take().unwrap();
            assert_eq!(markers(&cut.buf).len(), 1);
            let _ = cut.reply.send(Ok(None));
            assert_eq!(done.recv_async().await.unwrap(), Ok(true));
            assert_eq!(shard.stats().blocks, 3);
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_frozen_head_emptied_by_refusals_writes_no_block_and_cuts_go_on() {
        let (dir, _store, cfg) = test_store("empty");
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        rt.block_on(async move {
            let (mut shard, pending) = shard_with_test_wal(cfg);
            // One part of a push whose other owner has not answered yet.
            let p = folded(&[("main;f", 1)], 1_000_000_000);
            let groups = group(&p, &[("__name__", "x"), ("service_name", "s")]);
            let (tx, _rx) = flume::bounded(1);
            shard.handle(Msg::Ingest {
                tenant: Arc::from("t"),
                profile: Arc::new(p),
                groups,
                reply: tx,
                mode: IngestMode::Part(7),
                max_series: 0,
            });
            // A cut freezes the head that holds it; its markers are durable.
            let (tx, done) = flume::bounded(1);
            shard.handle(Msg::Cut { reply: tx });
            let cut = pending.borrow_mut().cut.take().expect("the cut reached the WAL");
            let _ = cut.reply.send(Ok(None));
            // The push is refused after all: its rows leave the frozen head, which is empty.
            let (tx, settled) = flume::bounded(1);
            shard.handle(Msg::Settle { key: 7, commit: false, reply: Some(tx) });
            assert!(settled.is_empty(), "answered before the abort record was written");
            ack(&mut shard, &pending);
            assert_eq!(settled.recv_async().await, Ok(()));
            assert_eq!(done.recv_async().await.unwrap(), Ok(true));
            let st = shard.stats();
            assert!(!st.cuts_suspended, "{:?}", st.cut_error);
            assert_eq!((st.frozen_heads, st.blocks, st.blocks_written), (0, 0, 0));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
