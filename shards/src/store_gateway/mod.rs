//! The store-gateway side of a core: the blocks this core owns, opened lazily, and queries
//! over them.
//!
//! Ownership: a block belongs to the (instance, core) that the ring gives its id
//! (`Ring::block_owner`); only that core opens it, caches its index, symbols and parquet footer, and
//! answers queries from it. A core cutting its head picks an id it owns itself, so a new
//! block never changes hands while the process runs, and the head it replaces and the block
//! swap in one step on one core (no query counts both or neither). The `BlockSet` lives on
//! its core behind an `Rc<RefCell<…>>` shared with that core's tasks only; a borrow is never
//! held across an await.
use crate::block::{self, index::BlockIndex, object_path, profiles::ProfilesFile};
use crate::eval::HeadView;
use crate::model::selector::matches_all;
use crate::model::symbols::Symbols;
use crate::query::{QueryRequest, QueryResult, Selection};
use bytes::Bytes;
use kiln_io::store::Store;
use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

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

/// A snapshot of the store-gateway's blocks on one core, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StoreGatewayStats {
    pub blocks: usize,
    pub block_cache_bytes: usize,
}

/// What the store-gateway on a core is asked to do (through the core's inbox).
pub enum Msg {
    /// Blocks found in the bucket indexes at start that the ring gives this core.
    AddBlocks { blocks: Vec<BlockEntry> },
}

/// The store-gateway's part of one core: its blocks and where to read them.
pub struct StoreGateway {
    /// Shared with the core's ingester, whose cut adds its blocks here in the same step as
    /// it drops their frozen heads.
    pub blocks: Rc<RefCell<BlockSet>>,
    /// `None`: kiln without block storage (tests); no block is ever added.
    store: Option<Store>,
}

impl StoreGateway {
    /// A store-gateway caching up to `cache_bytes` of opened blocks, reading from `store`.
    pub fn new(cache_bytes: usize, store: Option<Store>) -> Self {
        StoreGateway { blocks: Rc::new(RefCell::new(BlockSet::new(cache_bytes))), store }
    }

    pub fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::AddBlocks { blocks } => {
                let mut set = self.blocks.borrow_mut();
                for b in blocks {
                    set.add(b);
                }
            }
        }
    }

    /// The blocks a query must read, taken now (see `runtime::core` for why the heads and
    /// this list are taken in one step).
    pub fn matching(&self, sel: &Selection) -> Vec<Rc<OwnedBlock>> {
        self.blocks.borrow_mut().matching(sel)
    }

    /// Adds the answers of `blocks` to `out` in a task on this core, then replies; an error
    /// names a block that could not be read.
    pub fn answer(
        &self,
        blocks: Vec<Rc<OwnedBlock>>,
        mut out: Vec<QueryResult>,
        req: Arc<QueryRequest>,
        reply: flume::Sender<Result<Vec<QueryResult>, String>>,
    ) {
        let (Some(store), false) = (self.store.clone(), blocks.is_empty()) else {
            let _ = reply.send(Ok(out));
            return;
        };
        let set = self.blocks.clone();
        monoio::spawn(async move {
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
        StoreGatewayStats { blocks: blocks.len(), block_cache_bytes: blocks.cached_bytes() }
    }
}

/// What a core knows of a block before opening it: enough to skip it for a time range.
pub struct OwnedBlock {
    pub tenant: String,
    pub id: String,
    pub min_ms: i64,
    pub max_ms: i64,
    profiles_bytes: u64,
    opened: RefCell<Option<Rc<Opened>>>,
    last_used: Cell<u64>,
}

/// A block's parts kept in memory between queries: its index, its symbols and its parquet
/// footer. Profile rows are read per query, only the row groups and columns it needs.
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
}

impl BlockSet {
    pub fn new(cache_limit: usize) -> Self {
        BlockSet { cache_limit, ..Default::default() }
    }

    pub fn add(&mut self, e: BlockEntry) {
        if self.blocks.iter().any(|b| b.id == e.id && b.tenant == e.tenant) {
            return;
        }
        self.blocks.push(Rc::new(OwnedBlock {
            tenant: e.tenant,
            id: e.id,
            min_ms: e.min_ms,
            max_ms: e.max_ms,
            profiles_bytes: e.profiles_bytes,
            opened: RefCell::new(None),
            last_used: Cell::new(0),
        }));
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
    pub fn matching(&mut self, sel: &Selection) -> Vec<Rc<OwnedBlock>> {
        self.clock += 1;
        let now = self.clock;
        self.blocks
            .iter()
            .filter(|b| {
                sel.tenants.iter().any(|t| *t == b.tenant) && b.max_ms >= sel.start_ms && b.min_ms <= sel.end_ms
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
async fn read_ranges(store: &Store, path: String, ranges: Option<Vec<Range<u64>>>) -> Result<Vec<Bytes>, String> {
    let Some(local) = store.local_path(&path) else {
        return match ranges {
            None => store.get(path).await.map(|b| vec![b]),
            Some(r) => store.get_ranges(path, r).await,
        }
        .map_err(|e| e.to_string());
    };
    let io = |e: std::io::Error| format!("reading {}: {e}", local.display());
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

async fn read_file(store: &Store, path: String) -> Result<Bytes, String> {
    Ok(read_ranges(store, path, None).await?.pop().unwrap_or_default())
}

/// Opens a block (index, symbols, parquet footer), from the cache when it is there.
async fn open(set: &RefCell<BlockSet>, store: &Store, b: &OwnedBlock) -> Result<Rc<Opened>, String> {
    if let Some(o) = b.opened.borrow().as_ref() {
        return Ok(o.clone());
    }
    let path = |f: &str| object_path(&b.tenant, &b.id, f);
    let what = |f: &str, e: &dyn std::fmt::Display| format!("block {}/{}: {f}: {e}", b.tenant, b.id);
    let index_bytes = read_file(store, path(block::INDEX)).await.map_err(|e| what(block::INDEX, &e))?;
    let index = block::index::decode(&index_bytes).map_err(|e| what(block::INDEX, &e))?;
    let sym_bytes = read_file(store, path(block::SYMBOLS)).await.map_err(|e| what(block::SYMBOLS, &e))?;
    let symbols = block::symdb::decode(&sym_bytes).map_err(|e| what(block::SYMBOLS, &e))?;
    let ppath = path(block::PROFILES);
    let len = match b.profiles_bytes {
        0 => store.size(ppath.clone()).await.map_err(|e| what(block::PROFILES, &e))?,
        n => n,
    };
    let mut want = ProfilesFile::TAIL_GUESS.min(len);
    let profiles = loop {
        let tail = read_ranges(store, ppath.clone(), Some(std::iter::once(len - want..len).collect()))
            .await
            .map_err(|e| what(block::PROFILES, &e))?
            .pop()
            .unwrap_or_default();
        match ProfilesFile::from_tail(len, &tail) {
            Ok(f) => break f,
            Err(block::FormatError::NeedTail(n)) if n > want && n <= len => want = n,
            Err(e) => return Err(what(block::PROFILES, &e)),
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
) -> Result<QueryResult, String> {
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
    let with_samples =
        matches!(req, QueryRequest::MergeTree(_) | QueryRequest::MergeProfile(_) | QueryRequest::Analyze(_));
    let rows = block::rows_to_read(&o.index, &selected, &o.profiles, min_ns, max_ns);
    let ranges = o.profiles.plan(&rows, with_samples);
    let ppath = object_path(&b.tenant, &b.id, block::PROFILES);
    let fetched = if ranges.is_empty() {
        Vec::new()
    } else {
        let parts =
            read_ranges(store, ppath, Some(ranges.clone())).await.map_err(|e| format!("block {}: {e}", b.id))?;
        ranges.into_iter().zip(parts).collect()
    };
    let series = block::load_series(&o.index, &selected, &o.profiles, &fetched, with_samples, min_ns, max_ns)
        .map_err(|e| format!("block {}/{}: {e}", b.tenant, b.id))?;
    let view = HeadView { symbols: &o.symbols, series: &series, by_profile_type: None };
    Ok(view.query(req))
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

    fn entry(id: &str) -> BlockEntry {
        BlockEntry { tenant: "t".into(), id: id.into(), min_ms: 0, max_ms: 10_000, profiles_bytes: 0 }
    }

    fn sel(start_ms: i64, end_ms: i64) -> Selection {
        Selection { tenants: vec!["t".into()], profile_type: None, matchers: vec![], start_ms, end_ms }
    }

    #[test]
    fn cache_keeps_the_most_recently_used_blocks_within_its_limit() {
        let mut set = BlockSet::new(250);
        for id in ["a", "b", "c"] {
            set.add(entry(id));
        }
        set.add(entry("a")); // a duplicate is ignored
        assert_eq!(set.len(), 3);
        let blocks = set.matching(&sel(0, 10_000));
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
    fn matching_filters_by_tenant_and_time() {
        let mut set = BlockSet::new(0);
        set.add(entry("a"));
        set.add(BlockEntry { tenant: "other".into(), ..entry("b") });
        assert_eq!(set.matching(&sel(5_000, 20_000)).len(), 1);
        assert!(set.matching(&sel(10_001, 20_000)).is_empty());
        assert!(set.matching(&sel(-5, -1)).is_empty());
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
