//! A core's shard: every tenant head this core owns, and the loop that serves its inbox.
//!
//! Ownership: the `Shard` is created on its core's thread and never leaves it. Other cores
//! reach it only through `Msg`s on its inbox; replies go back on one-shot channels. Handling a
//! message never awaits, so no other task on the core can observe a half-applied append.
use crate::flush::{self, BlockConfig, CutState, Frozen};
use crate::head::{AppendStats, TenantHead};
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
    /// Appended to the head, but the WAL write failed: not acknowledged.
    #[error("writing the WAL failed: {0}")]
    Wal(String),
}

/// The answer to an ingest: what was appended, once durable, or why not.
pub type IngestReply = flume::Sender<Result<AppendStats, IngestError>>;

pub enum Msg {
    /// `replay` ingests (WAL records at start) were acknowledged before: they bypass the head
    /// limit.
    Ingest {
        tenant: Arc<str>,
        profile: Arc<Profile>,
        groups: Vec<SampleGroup>,
        reply: IngestReply,
        replay: bool,
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
    /// Cut the heads into blocks if they are old or large enough (sent by the core's ticker).
    MaybeCut,
    /// Cut every non-empty head into blocks now; answered once they are uploaded: `Ok(true)`,
    /// or at once with `Ok(false)` when an earlier cut is still in flight (ask again), or an
    /// error when cuts are suspended after a failure.
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
}

/// Appends framed and waiting for the core's WAL flusher, with the pushes waiting on them.
#[derive(Default)]
pub struct WalPending {
    buf: Vec<u8>,
    waiters: Vec<(IngestReply, AppendStats)>,
    /// A block cut: everything appended before it, then its markers, to be written and
    /// closed in the current segment before anything appended after it.
    cut: Option<CutBatch>,
}

/// The WAL's side of a cut. Records appended after the cut go to `WalPending::buf` and so
/// into the next segment: the segments deleted once the cut's blocks are indexed hold only
/// what those blocks hold.
struct CutBatch {
    buf: Vec<u8>,
    waiters: Vec<(IngestReply, AppendStats)>,
    reply: flume::Sender<flush::CutResult>,
}

/// The shard's side of its WAL: where records go and how the flusher is woken.
pub struct WalHandle {
    pending: Rc<RefCell<WalPending>>,
    wake: flume::Sender<()>,
}

pub struct Shard {
    pub core: u32,
    tenants: FxHashMap<Arc<str>, TenantHead>,
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
        self.live_head_bytes() + self.cut_state.frozen.borrow().iter().map(|f| f.head.approx_bytes()).sum::<usize>()
    }

    fn live_head_bytes(&self) -> usize {
        self.tenants.values().map(TenantHead::approx_bytes).sum()
    }

    /// A shard whose every ingest is acknowledged only once its WAL record is durable, and
    /// the flusher task that makes it so (spawn it on the same core).
    pub fn with_wal(core: u32, writer: SegmentWriter) -> (Self, impl std::future::Future<Output = ()>) {
        let pending = Rc::new(RefCell::new(WalPending::default()));
        let (wake, woken) = flume::bounded(1);
        let shard = Shard { wal: Some(WalHandle { pending: pending.clone(), wake }), ..Shard::new(core) };
        (shard, flush_loop(writer, pending, woken))
    }

    pub fn append(&mut self, tenant: &Arc<str>, p: &Profile, groups: &[SampleGroup]) -> AppendStats {
        self.appends += 1;
        self.head_since.get_or_insert_with(Instant::now);
        self.tenants.entry(tenant.clone()).or_default().append(tenant, p, groups)
    }

    /// The heads' part of a query: live heads, then heads frozen by a cut in progress.
    pub fn query(&self, req: &QueryRequest) -> Vec<QueryResult> {
        let sel = req.selection();
        let frozen = self.cut_state.frozen.borrow();
        let live = sel.tenants.iter().filter_map(|t| self.tenants.get(t.as_str())).map(|h| h.query(req));
        let cut = frozen.iter().filter(|f| sel.tenants.iter().any(|t| **t == *f.tenant)).map(|f| f.head.query(req));
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
    /// `done` is answered when the blocks are uploaded, or at once if nothing was cut.
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
        if self.cut_state.suspended.get() {
            reply(Err(format!("block cuts on core {} are suspended after an error (see the log)", self.core)));
            return;
        }
        if self.cut_state.cutting.get() {
            // A cut in flight covers everything up to its markers; the next one cuts the rest.
            reply(Ok(false));
            return;
        }
        let mut frozen = Vec::new();
        let mut heads: Vec<(Arc<str>, TenantHead)> = self.tenants.drain().collect();
        heads.sort_by(|a, b| a.0.cmp(&b.0));
        for (tenant, head) in heads {
            if head.profiles == 0 {
                continue;
            }
            let id = self.new_block_id();
            frozen.push(Rc::new(Frozen { tenant, id, head }));
        }
        self.head_since = None;
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
        self.cut_state.frozen.borrow_mut().extend(frozen.iter().cloned());
        self.cut_state.cutting.set(true);
        let state = self.cut_state.clone();
        monoio::spawn(async move {
            flush::write_blocks(frozen, rx, cfg, state.clone()).await;
            if let Some(d) = done {
                let _ = d.send(if state.suspended.get() {
                    Err("the cut failed; block cuts are suspended (see the log)".to_string())
                } else {
                    Ok(true)
                });
            }
        });
    }

    pub fn stats(&self) -> ShardStats {
        let mut s =
            ShardStats { core: self.core, tenants: self.tenants.len(), appends: self.appends, ..Default::default() };
        for h in self.tenants.values() {
            s.series += h.series.len();
            s.profiles += h.profiles;
            s.samples += h.samples;
            s.stacks += h.symbols.stack_count();
            s.head_bytes += h.heap_bytes();
        }
        for f in self.cut_state.frozen.borrow().iter() {
            s.frozen_heads += 1;
            s.head_bytes += f.head.heap_bytes();
        }
        let blocks = self.cut_state.blocks.borrow();
        s.blocks = blocks.len();
        s.block_cache_bytes = blocks.cached_bytes();
        s.blocks_written = self.cut_state.blocks_written.get();
        s.bytes_uploaded = self.cut_state.bytes_uploaded.get();
        s
    }

    pub fn handle(&mut self, msg: Msg) {
        // A dropped reply receiver means the requester gave up; nothing to do.
        match msg {
            Msg::Ingest { tenant, profile, groups, reply, replay } => {
                if !replay && self.max_head_bytes > 0 {
                    let bytes = self.approx_head_bytes();
                    if bytes >= self.max_head_bytes {
                        let _ = reply.send(Err(IngestError::HeadFull {
                            core: self.core,
                            bytes,
                            limit: self.max_head_bytes,
                        }));
                        return;
                    }
                }
                let st = self.append(&tenant, &profile, &groups);
                match &self.wal {
                    None => {
                        let _ = reply.send(Ok(st));
                    }
                    Some(wal) => {
                        let payload = walcodec::encode(&tenant, &profile, &groups);
                        let mut p = wal.pending.borrow_mut();
                        record::encode(&payload, &mut p.buf);
                        p.waiters.push((reply, st));
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
            Msg::Query { req, reply } => self.answer_query(req, reply),
            Msg::AddBlocks { blocks } => {
                let mut set = self.cut_state.blocks.borrow_mut();
                for b in blocks {
                    set.add(b);
                }
            }
            Msg::MaybeCut => {
                if self.blocks.as_ref().is_some_and(|c| self.should_cut(c)) {
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
                    wal.pending.borrow_mut().waiters.push((reply, AppendStats::default()));
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
/// ones queued behind it.
async fn flush_loop(mut writer: SegmentWriter, pending: Rc<RefCell<WalPending>>, woken: flume::Receiver<()>) {
    let mut spare = Vec::new();
    while woken.recv_async().await.is_ok() {
        loop {
            let cut = pending.borrow_mut().cut.take();
            if let Some(cut) = cut {
                // A block cut first: what was appended before it and its markers go to the
                // current segment, which closing syncs (with every earlier write); appends
                // made since wait in `buf` for the next segment.
                let (res, _) = writer.write(cut.buf).await;
                let res = match res {
                    Ok(_) => writer.cut().await.map(|seq| (writer.dir().to_path_buf(), seq)),
                    Err(e) => Err(e),
                };
                let res = res.map_err(|e| e.to_string());
                answer(cut.waiters, res.as_ref().map(|_| ()).map_err(|e| IngestError::Wal(e.clone())));
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
                Err(e) => answer(waiters, Err(IngestError::Wal(e.to_string()))),
                Ok(None) => answer(waiters, Ok(())),
                Ok(Some(file)) => {
                    monoio::spawn(async move {
                        let res = file.sync_data().await.map_err(|e| IngestError::Wal(e.to_string()));
                        answer(waiters, res);
                    });
                }
            }
        }
    }
}

fn answer(waiters: Vec<(IngestReply, AppendStats)>, res: Result<(), IngestError>) {
    if let Err(e) = &res {
        tracing::error!(error = %e, "WAL write failed; the pushes waiting on it are refused");
    }
    for (tx, st) in waiters {
        let _ = tx.send(res.clone().map(|_| st));
    }
}
