//! The store-gateway side of a core: the blocks this core owns, opened lazily, and queries
//! over them.
//!
//! Ownership: within an instance, a block belongs to the core that the instance's ring gives
//! its id (`Ring::block_owner`); only that core opens it, caches its index, symbols and
//! parquet footer, and answers queries from it. A core holds a block for one of two reasons,
//! each kept on the block: its ingester cut it (*pinned*: a core cutting its head picks an id
//! it owns itself, so the head it replaces and the block swap in one step on one core and no
//! query counts both or neither; such a block stays while the process runs), or, in a
//! cluster, the store-gateway ring gives it to this instance (*synced*: `Msg::Sync` says which,
//! and a block not pinned that two syncs in a row left out leaves the set and its cache). The `BlockSet`
//! lives on its core behind an `Rc<RefCell<…>>` shared with that core's tasks only; a borrow
//! is never held across an await.
use crate::block::{
    self,
    index::BlockIndex,
    object_path,
    profiles::{Columns, DecodedGroup, ProfilesFile},
};
use crate::eval::HeadView;
use crate::model::ids::{BlockId, TenantId};
use crate::model::selector::matches_all;
use crate::model::symbols::Symbols;
use crate::query::{QueryRequest, QueryResult, Selection};
use bytes::Bytes;
use kiln_io::bound::Slots;
use kiln_io::error::ErrorKind;
use kiln_io::store::bucket_index::BlockRef;
use kiln_io::store::{Store, StoreError};
use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

pub mod rows_cache;

/// Block queries a core runs at once (one task per query that reads blocks). Each holds
/// what it fetched of its blocks (row groups, columns) until it answers, so the bound is on
/// memory as much as on tasks; a query over blocks is broadcast to every core, so this is
/// also the number of such queries the process runs at once. Enough for many users' panels
/// at a time; past it a core answers `QueryError::Busy` (503: retry) at once rather than
/// queueing work that would only finish later.
pub const MAX_BLOCK_QUERIES: usize = 64;

/// Why reading a block file failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Through the store thread.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// From the local filesystem (the filesystem backend), with the core's own io_uring.
    #[error("reading {}: {source}", path.display())]
    Local { path: PathBuf, source: std::io::Error },
}

impl ReadError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReadError::Store(e) => e.kind(),
            ReadError::Local { source, .. } => ErrorKind::of_io(source),
        }
    }
}

/// Why a core could not answer its part of a query. `at` names the block (and the file,
/// when opening it) as `<tenant>/<block>: <file>` or `<block>`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The core runs `MAX_BLOCK_QUERIES` block queries already.
    #[error("this core runs {limit} block queries already, the most it runs at once; retry the query")]
    Busy { limit: usize },
    /// A query's later step asked for a block epoch whose retired blocks this core dropped
    /// already (`RETIRED_KEPT`), or one from before this process started.
    #[error("block epoch {asked} is gone on this core (it reads from epoch {oldest}): the reader's blocks moved since the query's first step; retry the query")]
    EpochGone { asked: u64, oldest: u64 },
    /// A block file could not be read.
    #[error("block {at}: {source}")]
    Read { at: String, source: ReadError },
    /// A block's bytes do not decode (corrupt, or a format this kiln does not read).
    #[error("block {at}: {source}")]
    Format { at: String, source: block::FormatError },
}

impl QueryError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Busy { .. } | QueryError::EpochGone { .. } => ErrorKind::Retryable,
            QueryError::Read { source, .. } => source.kind(),
            QueryError::Format { .. } => ErrorKind::Invalid,
        }
    }
}

/// The answer of a core to a query: its partial results, or why not.
pub type QueryReply = flume::Sender<Result<Vec<QueryResult>, QueryError>>;

/// A snapshot of the store-gateway's blocks on one core, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StoreGatewayStats {
    pub blocks: usize,
    /// Blocks the store-gateway ring gives this core (the last `Msg::Sync`).
    pub synced: usize,
    pub block_cache_bytes: usize,
    /// The decoded row groups cache (`rows_cache`): bytes held, and row group lookups that
    /// found their group, did not, and groups evicted for room.
    pub rows_cache_bytes: usize,
    pub rows_cache_hits: u64,
    pub rows_cache_misses: u64,
    pub rows_cache_evictions: u64,
    /// Block queries running (bounded by `MAX_BLOCK_QUERIES`).
    pub block_queries: usize,
    /// Block queries refused because `MAX_BLOCK_QUERIES` were running.
    pub block_queries_refused: u64,
}

/// What the store-gateway on a core is asked to do (through the core's inbox).
pub enum Msg {
    /// Blocks this instance cut (or, alone, every block), found in the bucket indexes at
    /// start, that the ring gives this core, each as its tenant's index lists it: pinned.
    AddBlocks { blocks: Vec<(TenantId, BlockRef)> },
    /// In a cluster, a sync with the bucket at block epoch `epoch`: every block the
    /// store-gateway ring gives this core now (none on an ingester alone) — the ones not held
    /// yet are added, read from `epoch`, and the ones no sync listed twice in a row are
    /// retired (unless pinned) — and `retire`, a compaction's inputs a while after their
    /// mark, unpinned and retired (see `BlockSet::sync`). `done` once applied: the syncing
    /// thread then moves the mesh's epoch to `epoch`.
    Sync { blocks: Vec<(TenantId, BlockRef)>, retire: Vec<(TenantId, String)>, epoch: u64, done: flume::Sender<()> },
    /// A compaction's swap, one step of it per core: `add` (a compaction's output, pinned)
    /// is read by queries of `epoch` and later, `retire` (its inputs, or blocks past
    /// retention) only by earlier ones. The compactor sends every core its part, waits for
    /// every `done`, then moves the mesh's epoch to `epoch`: each query, stamped with the
    /// epoch once for all cores, reads the inputs or the output on every core, never both
    /// and never neither (see `runtime::Mesh::epoch`).
    Swap { add: Vec<(TenantId, BlockRef)>, retire: Vec<(TenantId, String)>, epoch: u64, done: flume::Sender<()> },
    /// Blocks whose files were deleted (long after they were retired) leave the set.
    Forget { blocks: Vec<(TenantId, String)> },
    /// Whether this core holds every one of these blocks (in its set, not retired): a
    /// single node's compactor merges only blocks whose cut finished on their core, so the
    /// swap retires what the core really reads (a cut adds its block and drops its head in
    /// one step, I11).
    Holds { blocks: Vec<(TenantId, String)>, reply: flume::Sender<bool> },
}

/// How long a block retired from a cluster reader's set (no longer given by the ring, or
/// replaced by a compaction) stays for queries of earlier epochs: longer than the steps of a
/// query (`querier::replicas`: two, and a third for a failed reader's share, each within
/// 60 s), so a query whose first step listed the block's profiles on this core still reads
/// them in its second. A query of an epoch whose retired blocks are gone already is refused
/// (`QueryError::EpochGone`), never answered short.
pub const RETIRED_KEPT: std::time::Duration = std::time::Duration::from_secs(300);

/// The store-gateway's part of one core: its blocks and where to read them.
pub struct StoreGateway {
    /// Shared with the core's ingester, whose cut adds its blocks here in the same step as
    /// it drops their frozen heads.
    pub blocks: Rc<RefCell<BlockSet>>,
    /// `None`: kiln without block storage (tests); no block is ever added.
    store: Option<Store>,
    /// One slot per running block query (`MAX_BLOCK_QUERIES`).
    queries: Slots,
    refused: Cell<u64>,
}

impl StoreGateway {
    /// A store-gateway caching up to `cache_bytes` of opened blocks and `rows_cache_bytes` of
    /// decoded row groups (0: none), reading from `store`.
    pub fn new(cache_bytes: usize, rows_cache_bytes: usize, store: Option<Store>) -> Self {
        let mut set = BlockSet::new(cache_bytes);
        set.rows = rows_cache::RowsCache::new(rows_cache_bytes);
        StoreGateway {
            blocks: Rc::new(RefCell::new(set)),
            store,
            queries: Slots::new(MAX_BLOCK_QUERIES),
            refused: Cell::new(0),
        }
    }

    pub fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::AddBlocks { blocks } => {
                let mut set = self.blocks.borrow_mut();
                for (tenant, b) in blocks {
                    set.add(tenant, &b);
                }
            }
            Msg::Sync { blocks, retire, epoch, done } => {
                self.blocks.borrow_mut().sync(blocks, &retire, epoch, std::time::Instant::now());
                let _ = done.send(());
            }
            Msg::Swap { add, retire, epoch, done } => {
                self.blocks.borrow_mut().swap(add, &retire, epoch);
                let _ = done.send(());
            }
            Msg::Forget { blocks } => self.blocks.borrow_mut().forget(&blocks),
            Msg::Holds { blocks, reply } => {
                let set = self.blocks.borrow();
                let _ = reply.send(blocks.iter().all(|(t, id)| set.find(t, id).is_some()));
            }
        }
    }

    /// The blocks a query of `epoch` must read, taken now (see `runtime::core` for why the
    /// heads and this list are taken in one step).
    pub fn matching(&self, sel: &Selection, epoch: u64) -> Vec<Rc<OwnedBlock>> {
        self.blocks.borrow_mut().matching(sel, epoch)
    }

    /// Adds the answers of `blocks` to `out` in a task on this core, then replies; an error
    /// names a block that could not be read. With `MAX_BLOCK_QUERIES` such tasks running,
    /// refuses at once (`QueryError::Busy`).
    pub fn answer(
        &self,
        blocks: Vec<Rc<OwnedBlock>>,
        mut out: Vec<QueryResult>,
        req: Arc<QueryRequest>,
        reply: QueryReply,
    ) {
        let (Some(store), false) = (self.store.clone(), blocks.is_empty()) else {
            let _ = reply.send(Ok(out));
            return;
        };
        let Some(slot) = self.queries.try_take() else {
            self.refused.set(self.refused.get() + 1);
            tracing::warn!(limit = MAX_BLOCK_QUERIES, "a block query was refused: the core runs its most already");
            let _ = reply.send(Err(QueryError::Busy { limit: MAX_BLOCK_QUERIES }));
            return;
        };
        let set = self.blocks.clone();
        monoio::spawn(async move {
            let _slot = slot;
            for b in blocks {
                match query(&set, &store, &b, &req).await {
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

    /// The store-gateway's figures for `/metrics`.
    pub fn stats(&self) -> StoreGatewayStats {
        let blocks = self.blocks.borrow();
        StoreGatewayStats {
            blocks: blocks.len(),
            synced: blocks.blocks.iter().filter(|b| b.synced.get()).count(),
            block_cache_bytes: blocks.cached_bytes(),
            rows_cache_bytes: blocks.rows.bytes(),
            rows_cache_hits: blocks.rows.hits,
            rows_cache_misses: blocks.rows.misses,
            rows_cache_evictions: blocks.rows.evictions,
            block_queries: self.queries.in_use(),
            block_queries_refused: self.refused.get(),
        }
    }
}

/// What a core knows of a block before opening it: enough to skip it for a time range.
pub struct OwnedBlock {
    /// Unique among the entries this core's set ever held: the rows cache's key.
    serial: u64,
    pub tenant: TenantId,
    pub id: BlockId,
    /// The ingester that cut it (`BlockRef::ingester`): what holds its profiles once.
    pub source: String,
    /// Cut by this instance (or found at start as such): kept while the process runs.
    pinned: Cell<bool>,
    /// Given to this instance by the store-gateway ring at the last sync.
    synced: Cell<bool>,
    /// Syncs since one last gave it to this instance.
    unlisted: Cell<u8>,
    /// Queries of epochs in `[visible_from, visible_until)` read it (see `Msg::Swap`).
    visible_from: Cell<u64>,
    visible_until: Cell<u64>,
    /// In a cluster: when it was retired (`BlockSet::sync`): it leaves the set
    /// `RETIRED_KEPT` later.
    retired_at: Cell<Option<std::time::Instant>>,
    pub min_ms: i64,
    pub max_ms: i64,
    profiles_bytes: u64,
    opened: RefCell<Option<Rc<Opened>>>,
    last_used: Cell<u64>,
}

/// A block's parts kept in memory between queries: its index, its symbols and its parquet
/// footer. Profile rows are read per query, only the row groups and columns it needs.
impl OwnedBlock {
    /// Whether a query of block epoch `epoch` reads it.
    fn visible(&self, epoch: u64) -> bool {
        (self.visible_from.get()..self.visible_until.get()).contains(&epoch)
    }
}

pub struct Opened {
    pub index: BlockIndex,
    pub symbols: Symbols,
    pub profiles: ProfilesFile,
    pub bytes: usize,
}

#[derive(Default)]
pub struct BlockSet {
    blocks: Vec<Rc<OwnedBlock>>,
    /// Bytes of opened parts this core may keep cached (0 = no limit).
    pub cache_limit: usize,
    clock: u64,
    /// The oldest block epoch this core still answers exactly: a query of an earlier one
    /// could miss a retired block already dropped (`sweep`), or predates this process.
    oldest_epoch: u64,
    /// The serial the next entry gets.
    next_serial: u64,
    /// Decoded row groups of the held blocks.
    pub rows: rows_cache::RowsCache,
}

impl BlockSet {
    pub fn new(cache_limit: usize) -> Self {
        BlockSet { cache_limit, ..Default::default() }
    }

    /// Adds a block of `tenant` as its bucket index lists it (once), pinned: one this
    /// instance cut. An entry whose id is not a block ID is skipped with a warning: it could
    /// name a path outside the tenant.
    pub fn add(&mut self, tenant: TenantId, r: &BlockRef) {
        if let Some(b) = self.insert(tenant, r) {
            b.pinned.set(true);
        }
    }

    /// The block of `tenant` with id `id` held and not retired.
    fn find(&self, tenant: &TenantId, id: &str) -> Option<&Rc<OwnedBlock>> {
        self.blocks.iter().find(|b| b.tenant == *tenant && *b.id == *id && b.retired_at.get().is_none())
    }

    /// Whether a query of `epoch` can be answered exactly here; else why not.
    pub fn check_epoch(&self, epoch: u64) -> Result<(), QueryError> {
        match epoch < self.oldest_epoch {
            true => Err(QueryError::EpochGone { asked: epoch, oldest: self.oldest_epoch }),
            false => Ok(()),
        }
    }

    /// Answers only from `epoch` on: the epoch this process started at (see
    /// `runtime::Mesh::epoch`), which no earlier process reached.
    pub fn start_at_epoch(&mut self, epoch: u64) {
        self.oldest_epoch = self.oldest_epoch.max(epoch);
    }

    /// The block of `tenant` with `r`'s id, added if it is not held yet, or only retired
    /// (then as a new entry beside the retired one, which earlier epochs still read)
    /// (`None`: not a block ID).
    fn insert(&mut self, tenant: TenantId, r: &BlockRef) -> Option<&Rc<OwnedBlock>> {
        let id = match BlockId::parse(&r.block_id) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "skipping a bucket index entry");
                return None;
            }
        };
        if let Some(i) =
            self.blocks.iter().position(|b| b.id == id && b.tenant == tenant && b.retired_at.get().is_none())
        {
            return Some(&self.blocks[i]);
        }
        self.next_serial += 1;
        self.blocks.push(Rc::new(OwnedBlock {
            serial: self.next_serial,
            tenant,
            id,
            source: r.ingester.clone(),
            pinned: Cell::new(false),
            synced: Cell::new(false),
            unlisted: Cell::new(0),
            visible_from: Cell::new(0),
            visible_until: Cell::new(u64::MAX),
            retired_at: Cell::new(None),
            min_ms: r.min_time,
            max_ms: r.max_time,
            // 0: unknown, asked of the bucket when the block is opened.
            profiles_bytes: r.file_size(block::PROFILES).unwrap_or(0),
            opened: RefCell::new(None),
            last_used: Cell::new(0),
        }));
        self.blocks.last()
    }

    /// Makes `blocks` the ones the store-gateway ring gives this core, at block epoch
    /// `epoch`: each is added (read from `epoch`) or kept, marked synced; a block that two
    /// syncs in a row did not list is retired (unless this instance cut it), as is each of
    /// `retire` (unpinned first): queries of `epoch` and later no longer read it, earlier ones
    /// still do — the second step of a query whose first listed its profiles on this core
    /// before (a source counts a profile once however many readers hold it, so holding a
    /// block a while longer costs memory, never an exact answer) — and it leaves the set,
    /// with what the cache holds of it, `RETIRED_KEPT` later. A block listed again before it
    /// left is read again from `epoch`.
    pub fn sync(
        &mut self,
        blocks: Vec<(TenantId, BlockRef)>,
        retire: &[(TenantId, String)],
        epoch: u64,
        now: std::time::Instant,
    ) {
        // The held blocks by (tenant, id), not retired: a sync looks each one up once.
        let mut held: rustc_hash::FxHashMap<(TenantId, String), usize> = rustc_hash::FxHashMap::default();
        for (i, b) in self.blocks.iter().enumerate() {
            b.synced.set(false);
            b.unlisted.set(b.unlisted.get().saturating_add(1));
            if b.retired_at.get().is_none() {
                held.insert((b.tenant.clone(), b.id.to_string()), i);
            }
        }
        for (tenant, r) in blocks {
            let b = match held.get(&(tenant.clone(), r.block_id.clone())) {
                Some(&i) => &self.blocks[i],
                None => match self.insert(tenant, &r) {
                    // New here (or only retired): read from this epoch on.
                    Some(b) => {
                        b.visible_from.set(epoch);
                        b
                    }
                    None => continue,
                },
            };
            b.synced.set(true);
            b.unlisted.set(0);
        }
        let retire: rustc_hash::FxHashSet<(&TenantId, &str)> = retire.iter().map(|(t, id)| (t, id.as_str())).collect();
        for b in &self.blocks {
            if b.retired_at.get().is_some() {
                continue;
            }
            let listed_out = retire.contains(&(&b.tenant, &*b.id));
            if listed_out {
                b.pinned.set(false);
            }
            if listed_out || (!b.pinned.get() && b.unlisted.get() >= 2) {
                b.retired_at.set(Some(now));
                b.visible_until.set(b.visible_until.get().min(epoch));
            }
        }
        self.sweep(now);
    }

    /// Drops the blocks retired `RETIRED_KEPT` ago; queries of the epochs that read them are
    /// refused from then on (`check_epoch`).
    fn sweep(&mut self, now: std::time::Instant) {
        let mut oldest = self.oldest_epoch;
        self.retain(|b| {
            let keep = b.retired_at.get().is_none_or(|at| now.duration_since(at) < RETIRED_KEPT);
            if !keep {
                oldest = oldest.max(b.visible_until.get());
            }
            keep
        });
        self.oldest_epoch = oldest;
    }

    /// Keeps the blocks `keep` says; the others leave with their decoded row groups.
    fn retain(&mut self, mut keep: impl FnMut(&OwnedBlock) -> bool) {
        let mut gone = rustc_hash::FxHashSet::default();
        self.blocks.retain(|b| {
            let k = keep(b);
            if !k {
                gone.insert(b.serial);
            }
            k
        });
        if !gone.is_empty() {
            self.rows.drop_blocks(|s| gone.contains(&s));
        }
    }

    /// Keeps row group `g` of `b` decoded, if `b` is still held: a query that read a block
    /// forgotten while it ran does not leave its rows behind.
    fn keep_rows(&mut self, b: &OwnedBlock, g: usize, group: Rc<DecodedGroup>) {
        if self.blocks.iter().any(|x| x.serial == b.serial) {
            self.rows.insert(b.serial, g, group);
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn cached_bytes(&self) -> usize {
        self.blocks.iter().filter_map(|b| b.opened.borrow().as_ref().map(|o| o.bytes)).sum()
    }

    /// Blocks of the selection's tenants whose time range overlaps the selection's.
    /// A compaction's swap on this core (`Msg::Swap`). An added block already held (a swap
    /// sent again) keeps its first visibility.
    pub fn swap(&mut self, add: Vec<(TenantId, BlockRef)>, retire: &[(TenantId, String)], epoch: u64) {
        for (tenant, r) in add {
            let fresh = !self.blocks.iter().any(|b| b.tenant == tenant && *b.id == *r.block_id);
            if let Some(b) = self.insert(tenant, &r) {
                b.pinned.set(true);
                if fresh {
                    b.visible_from.set(epoch);
                }
            }
        }
        for (tenant, id) in retire {
            if let Some(b) = self.blocks.iter().find(|b| b.tenant == *tenant && *b.id == **id) {
                b.visible_until.set(b.visible_until.get().min(epoch));
            }
        }
    }

    /// Drops blocks whose files are gone; their cache (opened parts, decoded row groups)
    /// goes with them.
    pub fn forget(&mut self, blocks: &[(TenantId, String)]) {
        self.retain(|b| !blocks.iter().any(|(t, id)| b.tenant == *t && *b.id == **id));
    }

    pub fn matching(&mut self, sel: &Selection, epoch: u64) -> Vec<Rc<OwnedBlock>> {
        self.clock += 1;
        let now = self.clock;
        self.blocks
            .iter()
            .filter(|b| {
                sel.tenants.iter().any(|t| *t == b.tenant)
                    && b.max_ms >= sel.start_ms
                    && b.min_ms <= sel.end_ms
                    && b.visible(epoch)
            })
            .inspect(|b| b.last_used.set(now))
            .cloned()
            .collect()
    }

    /// Drops the least recently used opened parts until the cache fits its limit.
    fn evict(&self) {
        if self.cache_limit == 0 {
            return;
        }
        let mut total = self.cached_bytes();
        if total <= self.cache_limit {
            return;
        }
        let mut open: Vec<&Rc<OwnedBlock>> = self.blocks.iter().filter(|b| b.opened.borrow().is_some()).collect();
        open.sort_by_key(|b| b.last_used.get());
        for b in open {
            if total <= self.cache_limit {
                break;
            }
            if let Some(o) = b.opened.borrow_mut().take() {
                total -= o.bytes;
            }
        }
    }
}

/// Reads byte ranges of one block file: with the core's own io_uring when the file is local
/// (filesystem backend), else through the store thread. `None` reads the whole file.
async fn read_ranges(store: &Store, path: String, ranges: Option<Vec<Range<u64>>>) -> Result<Vec<Bytes>, ReadError> {
    let Some(local) = store.local_path(&path) else {
        return Ok(match ranges {
            None => store.get(path).await.map(|b| vec![b]),
            Some(r) => store.get_ranges(path, r).await,
        }?);
    };
    let io = |e: std::io::Error| ReadError::Local { path: local.clone(), source: e };
    let file = monoio::fs::File::open(&local).await.map_err(io)?;
    let ranges = match ranges {
        Some(r) => r,
        // A stat is cheap enough to make on the core; only opening a block reads whole files.
        None => std::iter::once(0..std::fs::metadata(&local).map_err(io)?.len()).collect(),
    };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (res, buf) = file.read_exact_at(vec![0u8; (r.end - r.start) as usize], r.start).await;
        res.map_err(io)?;
        out.push(Bytes::from(buf));
    }
    let _ = file.close().await;
    Ok(out)
}

async fn read_file(store: &Store, path: String) -> Result<Bytes, ReadError> {
    Ok(read_ranges(store, path, None).await?.pop().unwrap_or_default())
}

/// Opens a block (index, symbols, parquet footer), from the cache when it is there.
async fn open(set: &RefCell<BlockSet>, store: &Store, b: &OwnedBlock) -> Result<Rc<Opened>, QueryError> {
    if let Some(o) = b.opened.borrow().as_ref() {
        return Ok(o.clone());
    }
    let path = |f: &str| object_path(&b.tenant, &b.id, f);
    let at = |f: &str| format!("{}/{}: {f}", b.tenant, b.id);
    let read = |f: &'static str| move |e: ReadError| QueryError::Read { at: at(f), source: e };
    let format = |f: &'static str| move |e: block::FormatError| QueryError::Format { at: at(f), source: e };
    let index_bytes = read_file(store, path(block::INDEX)).await.map_err(read(block::INDEX))?;
    let index = block::index::decode(&index_bytes).map_err(format(block::INDEX))?;
    let sym_bytes = read_file(store, path(block::SYMBOLS)).await.map_err(read(block::SYMBOLS))?;
    let symbols = block::symdb::decode(&sym_bytes).map_err(format(block::SYMBOLS))?;
    let ppath = path(block::PROFILES);
    let len = match b.profiles_bytes {
        0 => store.size(ppath.clone()).await.map_err(|e| read(block::PROFILES)(e.into()))?,
        n => n,
    };
    let mut want = ProfilesFile::TAIL_GUESS.min(len);
    let profiles = loop {
        let tail = read_ranges(store, ppath.clone(), Some(std::iter::once(len - want..len).collect()))
            .await
            .map_err(read(block::PROFILES))?
            .pop()
            .unwrap_or_default();
        match ProfilesFile::from_tail(len, &tail) {
            Ok(f) => break f,
            Err(block::FormatError::NeedTail(n)) if n > want && n <= len => want = n,
            Err(e) => return Err(format(block::PROFILES)(e)),
        }
    };
    // The cache's accounting: what was read, plus the decoded symbol tables' own estimate.
    let bytes = index_bytes.len() * 3 + symbols.heap_bytes() + want as usize;
    let o = Rc::new(Opened { index, symbols, profiles, bytes });
    *b.opened.borrow_mut() = Some(o.clone());
    set.borrow().evict();
    Ok(o)
}

/// Answers one query from one block: the series the index selects, then only the row
/// groups and columns of those series' rows, read into columns and queried exactly as a
/// head is.
pub async fn query(
    set: &RefCell<BlockSet>,
    store: &Store,
    b: &OwnedBlock,
    req: &QueryRequest,
) -> Result<QueryResult, QueryError> {
    let o = open(set, store, b).await?;
    let sel = req.selection();
    let (min_ns, max_ns) =
        (sel.start_ms.saturating_mul(1_000_000), sel.end_ms.saturating_mul(1_000_000).saturating_add(999_999));
    let candidates: Vec<u32> = match &sel.profile_type {
        Some(pt) => o.index.by_profile_type(pt).to_vec(),
        None => (0..o.index.series.len() as u32).collect(),
    };
    let selected: Vec<u32> = candidates
        .into_iter()
        .filter(|&i| {
            let s = &o.index.series[i as usize];
            s.max_ns >= min_ns && s.min_ns <= max_ns && matches_all(&sel.matchers, &s.labels)
        })
        .collect();
    let merges = matches!(req, QueryRequest::MergeTree(_) | QueryRequest::MergeProfile(_));
    let columns = match req {
        _ if merges && sel.spans.is_some() => Columns::Spans,
        QueryRequest::Heatmap { spans: true, .. } => Columns::Spans,
        QueryRequest::Analyze(_) => Columns::Samples,
        _ => Columns::from(merges),
    };
    let rows = block::rows_to_read(&o.index, &selected, &o.profiles, min_ns, max_ns);
    let series = if set.borrow().rows.enabled() {
        let groups = decoded_groups(set, store, b, &o.profiles, &rows, columns).await?;
        let decoded = |g: usize| groups.binary_search_by_key(&g, |d| d.0).ok().map(|i| &*groups[i].1);
        block::load_series_decoded(&o.index, &selected, &o.profiles, decoded, columns, min_ns, max_ns)
    } else {
        let fetched = fetch(store, b, o.profiles.plan(&rows, columns)).await?;
        block::load_series(&o.index, &selected, &o.profiles, &fetched, columns, min_ns, max_ns)
    }
    .map_err(|e| format_error(b, e))?;
    let view = HeadView {
        tenant: b.tenant.as_str(),
        source: &b.source,
        symbols: &o.symbols,
        series: &series,
        by_profile_type: None,
    };
    Ok(view.query(req))
}

/// A damaged profiles file of `b`, whichever path read it.
fn format_error(b: &OwnedBlock, e: block::FormatError) -> QueryError {
    QueryError::Format { at: format!("{}/{}", b.tenant, b.id), source: e }
}

/// The byte ranges `ranges` of `b`'s profiles file, each with its bytes.
async fn fetch(store: &Store, b: &OwnedBlock, ranges: Vec<Range<u64>>) -> Result<Vec<(Range<u64>, Bytes)>, QueryError> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let ppath = object_path(&b.tenant, &b.id, block::PROFILES);
    let parts = read_ranges(store, ppath, Some(ranges.clone()))
        .await
        .map_err(|e| QueryError::Read { at: b.id.to_string(), source: e })?;
    Ok(ranges.into_iter().zip(parts).collect())
}

/// The row groups of `b` that a read of `rows` needs, decoded with at least `columns`,
/// sorted by group: from the core's rows cache, and those it lacks fetched (in one read),
/// decoded and kept there.
async fn decoded_groups(
    set: &RefCell<BlockSet>,
    store: &Store,
    b: &OwnedBlock,
    file: &ProfilesFile,
    rows: &[Range<u64>],
    columns: Columns,
) -> Result<Vec<(usize, Rc<DecodedGroup>)>, QueryError> {
    let mut have = Vec::new();
    let mut missing = Vec::new();
    {
        let mut set = set.borrow_mut();
        for g in file.groups_of(rows) {
            match set.rows.get(b.serial, g, file, columns) {
                Some(d) => have.push((g, d)),
                None => missing.push(g),
            }
        }
    }
    if !missing.is_empty() {
        let fetched = fetch(store, b, file.plan_groups(&missing, columns)).await?;
        for g in missing {
            let d = file.decode_group(&fetched, g, columns).map_err(|e| format_error(b, e))?;
            let d = Rc::new(d);
            set.borrow_mut().keep_rows(b, g, d.clone());
            have.push((g, d));
        }
        have.sort_unstable_by_key(|d| d.0);
    }
    Ok(have)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingester::head::tests::{folded, group};
    use crate::ingester::head::TenantHead;

    fn opened(profiles: usize) -> Rc<Opened> {
        let mut h = TenantHead::default();
        for i in 0..profiles {
            let p = folded(&[("main;a", 1), ("main;b", 2)], i as i64 * 1_000_000_000);
            h.append("t", &p, &group(&p, &[("__name__", "x"), ("service_name", "s")]));
        }
        let b = block::encode(&h, "01JCACHE000000000000000000", &Default::default()).unwrap();
        let profiles = ProfilesFile::from_tail(b.profiles.len() as u64, &b.profiles).unwrap();
        Rc::new(Opened {
            index: block::index::decode(&b.index).unwrap(),
            symbols: block::symdb::decode(&b.symbols).unwrap(),
            profiles,
            bytes: 100,
        })
    }

    /// A bucket index entry of tenant `t` whose ULID starts with `id`.
    fn entry(id: &str) -> (TenantId, BlockRef) {
        let r = BlockRef {
            block_id: format!("{:0<26}", id.to_uppercase()),
            min_time: 0,
            max_time: 10_000,
            uploaded_at: 0,
            compaction_level: 1,
            size_bytes: 0,
            files: Vec::new(),
            ..Default::default()
        };
        ("t".into(), r)
    }

    fn add(set: &mut BlockSet, (tenant, r): (TenantId, BlockRef)) {
        set.add(tenant, &r);
    }

    fn sel(start_ms: i64, end_ms: i64) -> Selection {
        Selection {
            tenants: vec!["t".into()],
            profile_type: None,
            matchers: vec![],
            start_ms,
            end_ms,
            keys: None,
            epoch: None,
            report_read: false,
            spans: None,
        }
    }

    #[test]
    fn cache_keeps_the_most_recently_used_blocks_within_its_limit() {
        let mut set = BlockSet::new(250);
        for id in ["a", "b", "c"] {
            add(&mut set, entry(id));
        }
        add(&mut set, entry("a")); // a duplicate is ignored
        assert_eq!(set.len(), 3);
        let blocks = set.matching(&sel(0, 10_000), 0);
        assert_eq!(blocks.len(), 3);
        let o = opened(3);
        // a, then b, then c opened and used in that order: together 300 bytes, over the limit.
        for b in &blocks {
            set.clock += 1;
            b.last_used.set(set.clock);
            *b.opened.borrow_mut() = Some(o.clone());
        }
        set.evict();
        assert_eq!(set.cached_bytes(), 200);
        assert!(blocks[0].opened.borrow().is_none(), "the least recently used block is evicted");
        assert!(blocks[2].opened.borrow().is_some());
    }

    #[test]
    fn a_sync_adds_new_blocks_retires_the_ones_no_longer_owned_and_keeps_pinned_ones() {
        let mut set = BlockSet::new(0);
        let t0 = std::time::Instant::now();
        let ids = |v: Vec<Rc<OwnedBlock>>| {
            let mut v: Vec<String> = v.iter().map(|x| x.id.to_string()[..1].to_string()).collect();
            v.sort();
            v
        };
        // Cut here: pinned.
        add(&mut set, entry("a"));
        let (t, mut b) = entry("b");
        b.ingester = "ingester-2".into();
        set.sync(vec![(t.clone(), b.clone()), entry("c"), entry("a")], &[], 1, t0);
        assert_eq!(set.len(), 3);
        let sources: Vec<(String, String)> = set.blocks.iter().map(|x| (x.id.to_string(), x.source.clone())).collect();
        assert!(sources.iter().any(|(id, s)| id.starts_with('B') && s == "ingester-2"), "{sources:?}");
        assert_eq!(ids(set.matching(&sel(0, 10_000), 0)), ["A"], "synced blocks are read from the sync's epoch");
        let held = set.matching(&sel(0, 10_000), 1);
        assert_eq!(ids(held.clone()), ["A", "B", "C"]);
        *held[2].opened.borrow_mut() = Some(opened(1));
        assert!(set.cached_bytes() > 0);
        // c is no longer owned: read as before through one sync, then retired at the epoch of
        // the second: queries of that epoch skip it, earlier ones (a second step) still read
        // it, until it leaves with its cache RETIRED_KEPT later; a, pinned, stays.
        set.sync(vec![(t.clone(), b.clone())], &[], 2, t0);
        assert_eq!(ids(set.matching(&sel(0, 10_000), 2)), ["A", "B", "C"]);
        assert_eq!(set.blocks.iter().filter(|x| x.synced.get()).count(), 1);
        set.sync(vec![(t.clone(), b.clone())], &[], 3, t0);
        assert_eq!(ids(set.matching(&sel(0, 10_000), 3)), ["A", "B"]);
        assert_eq!(
            ids(set.matching(&sel(0, 10_000), 2)),
            ["A", "B", "C"],
            "a query of the epoch before still reads it"
        );
        set.sync(vec![(t.clone(), b.clone())], &[], 4, t0 + RETIRED_KEPT);
        assert_eq!(set.len(), 2);
        assert_eq!(set.cached_bytes(), 0);
        assert_eq!(ids(set.matching(&sel(0, 10_000), 2)), ["A", "B"]);
        assert!(set.check_epoch(2).is_err(), "an epoch that read the dropped block is refused, not answered short");
        assert!(set.check_epoch(3).is_ok());
        // Listed again before it left: read again from that sync's epoch.
        set.sync(vec![entry("d")], &[], 5, t0);
        set.sync(vec![entry("d")], &[], 6, t0);
        assert_eq!(ids(set.matching(&sel(0, 10_000), 6)), ["A", "D"]);
        set.sync(vec![entry("d"), (t.clone(), b.clone())], &[], 7, t0);
        assert_eq!(ids(set.matching(&sel(0, 10_000), 7)), ["A", "B", "D"]);
        assert_eq!(ids(set.matching(&sel(0, 10_000), 6)), ["A", "D"]);
        // A compaction's inputs: unpinned and retired.
        set.sync(vec![entry("d"), (t.clone(), b.clone())], &[("t".into(), format!("{:0<26}", "A"))], 8, t0);
        assert_eq!(ids(set.matching(&sel(0, 10_000), 8)), ["B", "D"]);
        set.sync(Vec::new(), &[], 9, t0 + RETIRED_KEPT);
        set.sync(Vec::new(), &[], 10, t0 + RETIRED_KEPT);
        set.sync(Vec::new(), &[], 11, t0 + RETIRED_KEPT * 3);
        assert_eq!(set.len(), 0);
        add(&mut set, entry("a"));
        set.sync(Vec::new(), &[], 12, t0);
        set.sync(Vec::new(), &[], 13, t0 + RETIRED_KEPT * 3);
        assert_eq!(set.len(), 1, "the pinned block stays");
    }

    #[test]
    fn matching_filters_by_tenant_and_time() {
        let mut set = BlockSet::new(0);
        add(&mut set, entry("a"));
        add(&mut set, ("other".into(), entry("b").1));
        // Not a block ID: it could name a path outside the tenant's folder.
        add(&mut set, ("t".into(), BlockRef { block_id: "../x".into(), ..entry("c").1 }));
        assert_eq!(set.len(), 2);
        assert_eq!(set.matching(&sel(5_000, 20_000), 0).len(), 1);
        assert!(set.matching(&sel(10_001, 20_000), 0).is_empty());
        assert!(set.matching(&sel(-5, -1), 0).is_empty());
    }

    /// Runs `f` on a runtime of its own with a filesystem store in a fresh folder, removed
    /// afterwards.
    fn with_store<F: std::future::Future<Output = ()>>(name: &str, f: impl FnOnce(Store) -> F) {
        let dir = std::env::temp_dir().join(format!("kiln-sg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::start(kiln_io::store::Backend::Filesystem { dir: dir.clone() }).unwrap();
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        rt.block_on(f(store));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn block_queries_past_the_bound_are_refused_at_once_and_slots_come_back() {
        with_store("bound", |store| async move {
            let mut sg = StoreGateway::new(0, 0, Some(store));
            // A block the index lists but the bucket does not hold.
            sg.handle(Msg::AddBlocks { blocks: vec![entry("01JBOUND000000000000000000")] });
            let req = Arc::new(QueryRequest::MergeTree(sel(0, 10_000)));
            let ask = |sg: &StoreGateway| {
                let (tx, rx) = flume::bounded(1);
                sg.answer(sg.matching(req.selection(), 0), Vec::new(), req.clone(), tx);
                rx
            };
            // Every slot is taken by queries still running.
            let running: Vec<_> = (0..MAX_BLOCK_QUERIES).map(|_| sg.queries.try_take().unwrap()).collect();
            assert_eq!(sg.stats().block_queries, MAX_BLOCK_QUERIES);
            let refused = ask(&sg).try_recv().expect("refused at once, without a task").unwrap_err();
            assert!(matches!(refused, QueryError::Busy { limit: MAX_BLOCK_QUERIES }), "{refused}");
            assert!(refused.kind().retryable());
            assert_eq!(sg.stats().block_queries_refused, 1);
            // A query without blocks to read needs no slot.
            let (tx, rx) = flume::bounded(1);
            sg.answer(Vec::new(), Vec::new(), req.clone(), tx);
            assert!(rx.try_recv().unwrap().is_ok());
            // Once one ends, the next query runs: here it finds the block missing.
            drop(running);
            let e = ask(&sg).recv_async().await.unwrap().unwrap_err();
            assert!(matches!(e, QueryError::Read { .. }) && e.kind() == ErrorKind::NotFound, "{e:?}");
            assert!(e.to_string().starts_with("block t/01JBOUND000000000000000000: index.tsdb: "), "{e}");
            assert_eq!(sg.stats().block_queries, 0, "the slot is given back when the task ends");
        });
    }

    #[test]
    fn the_rows_cache_answers_as_a_read_of_the_bytes_and_leaves_with_its_block() {
        with_store("rows", |store| async move {
            let mut h = TenantHead::default();
            for i in 0..20 {
                let p = folded(&[("main;a", 1 + i), ("main;b", 2)], i * 1_000_000_000);
                let svc = if i % 3 == 0 { "s" } else { "u" };
                h.append("t", &p, &group(&p, &[("__name__", "x"), ("service_name", svc)]));
            }
            let id = "01JCACHEQ00000000000000000";
            let opts = block::EncodeOptions { row_group_rows: 4, ..Default::default() };
            let enc = block::encode(&h, id, &opts).unwrap();
            for (name, bytes) in enc.files() {
                store.put(object_path("t", id, name), Bytes::copy_from_slice(bytes)).await.unwrap();
            }
            let (t, r) = entry(id);
            let mut cached = StoreGateway::new(0, 1 << 20, Some(store.clone()));
            let plain = StoreGateway::new(0, 0, Some(store.clone()));
            for sg in [&cached, &plain] {
                sg.blocks.borrow_mut().add(t.clone(), &r);
            }
            let ask = |sg: &StoreGateway, req: &Arc<QueryRequest>, epoch: u64| {
                let (tx, rx) = flume::bounded(1);
                sg.answer(sg.matching(req.selection(), epoch), Vec::new(), req.clone(), tx);
                rx
            };
            let m = crate::model::selector::parse_selector(r#"{service_name="s"}"#).unwrap();
            let narrow = Selection { matchers: m, ..sel(0, 20_000) };
            let reqs = [
                QueryRequest::MergeTree(sel(0, 20_000)),
                QueryRequest::MergeTree(sel(3_000, 8_500)),
                QueryRequest::MergeProfile(narrow.clone()),
                QueryRequest::Stats(sel(2_000, 30_000)),
                QueryRequest::Analyze(sel(0, 20_000)),
                QueryRequest::Heatmap { sel: narrow, spans: true },
            ];
            for req in reqs.clone().map(Arc::new) {
                let want = format!("{:?}", ask(&plain, &req, 0).recv_async().await.unwrap().unwrap());
                for pass in ["miss", "hit"] {
                    let got = format!("{:?}", ask(&cached, &req, 0).recv_async().await.unwrap().unwrap());
                    assert_eq!(got, want, "{pass}: {req:?}");
                }
            }
            let st = cached.stats();
            assert!(st.rows_cache_hits > 0 && st.rows_cache_misses > 0 && st.rows_cache_bytes > 0, "{st:?}");
            assert_eq!(plain.stats().rows_cache_bytes, 0);
            // A compaction's swap retires it: queries of earlier epochs still read it, from
            // the cache.
            let (done, _) = flume::bounded(1);
            cached.handle(Msg::Swap { add: Vec::new(), retire: vec![(t.clone(), id.into())], epoch: 1, done });
            assert_eq!(cached.stats().rows_cache_bytes, st.rows_cache_bytes);
            assert!(cached.matching(&sel(0, 20_000), 1).is_empty());
            let req = Arc::new(reqs[0].clone());
            let want = format!("{:?}", ask(&plain, &req, 0).recv_async().await.unwrap().unwrap());
            assert_eq!(format!("{:?}", ask(&cached, &req, 0).recv_async().await.unwrap().unwrap()), want);
            // Its files deleted: it leaves with its decoded rows.
            cached.handle(Msg::Forget { blocks: vec![(t.clone(), id.into())] });
            assert_eq!(cached.stats().rows_cache_bytes, 0);
            assert!(cached.blocks.borrow().rows.is_empty());
        });
    }

    #[test]
    fn block_ids_map_to_cores_through_the_ring() {
        let ring = crate::ring::Ring::single(4, 128);
        let mut seen = [false; 4];
        for i in 0..200 {
            let id = format!("01JRING{i:019}");
            let c = ring.block_owner(&id);
            assert_eq!(c, ring.block_owner(&id));
            seen[c as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "every core owns some blocks: {seen:?}");
    }
}
