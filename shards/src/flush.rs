//! Turning a core's frozen heads into blocks in object storage.
//!
//! Order, and why it is safe to crash anywhere:
//! 1. The core freezes every tenant head at once (`Shard::cut`) and queues one cut marker
//!    per tenant into its WAL, then the WAL starts a new segment. Until step 4 the frozen
//!    heads still answer queries.
//! 2. This task waits until the markers are durable. A block is never indexed before its
//!    marker is: replay skips a tenant's records before a marker only when the marker's
//!    block is in the bucket index, so data is never counted twice nor lost.
//! 3. Each block is encoded and its files uploaded (`meta.json` last), then added to the
//!    tenant's `bucket-index.json`. Failures are retried until they succeed; nothing is
//!    dropped meanwhile.
//! 4. In one step on the core, the block joins the core's `BlockSet` and its frozen head is
//!    dropped. Once every block of the cut is indexed, the WAL segments before the cut are
//!    deleted.
use crate::block::{self, EncodeOptions};
use crate::head::TenantHead;
use crate::shard::BlockEntry;
use crate::storegateway::{object_path, BlockSet};
use kiln_io::store::{bucket_index::BlockRef, Store};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When and where a core writes blocks.
#[derive(Clone)]
pub struct BlockConfig {
    pub store: Store,
    /// Cut a head this long after its first profile (`-ingester.max-block-duration`).
    pub max_block_duration: Duration,
    /// Cut once a core's head holds this many bytes (`-ingester.max-block-bytes`; 0 = never).
    pub max_block_bytes: usize,
    /// Bytes of opened blocks a core keeps cached (`-store-gateway.cache-bytes-per-core`).
    pub cache_bytes: usize,
    pub encode: EncodeOptions,
}

/// A tenant head cut from the live head: read-only, still answering queries until its block
/// is in the bucket index and this core's `BlockSet`.
pub struct Frozen {
    pub tenant: Arc<str>,
    pub id: String,
    /// Written only to take out the rows of a push refused after the cut froze it, and only
    /// while `unsettled > 0`: encoding starts once it is 0, so no borrow held by the encoder
    /// across an await ever meets a `borrow_mut`.
    pub head: RefCell<TenantHead>,
    /// Pushes with rows in this head whose outcome is not known yet (see `Shard::settle`).
    pub unsettled: Cell<usize>,
}

impl Frozen {
    pub fn new(tenant: Arc<str>, id: String, head: TenantHead) -> Self {
        Frozen { tenant, id, head: RefCell::new(head), unsettled: Cell::new(0) }
    }
}

/// Waits until every push with rows in `f` is settled (committed or taken out): a block
/// holds only pushes that were acknowledged. Pushes settle within a request's lifetime.
async fn settled(f: &Frozen) {
    while f.unsettled.get() > 0 {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What the cut task shares with its core (same thread; borrows never cross an await).
pub struct CutState {
    pub frozen: RefCell<Vec<Rc<Frozen>>>,
    pub blocks: RefCell<BlockSet>,
    pub cutting: Cell<bool>,
    /// Set when a cut failed in a way that must not be retried blindly (see `write_blocks`):
    /// no further cut starts.
    pub suspended: Cell<bool>,
    /// Blocks written and bytes uploaded since start, for `/metrics`.
    pub blocks_written: Cell<u64>,
    pub bytes_uploaded: Cell<u64>,
}

impl CutState {
    pub fn new(cache_bytes: usize) -> Self {
        CutState {
            frozen: RefCell::new(Vec::new()),
            blocks: RefCell::new(BlockSet::new(cache_bytes)),
            cutting: Cell::new(false),
            suspended: Cell::new(false),
            blocks_written: Cell::new(0),
            bytes_uploaded: Cell::new(0),
        }
    }
}

/// What the WAL says once the cut markers are durable: the first segment after the cut, or
/// `None` without a WAL.
pub type CutDurable = flume::Receiver<CutResult>;

/// The WAL directory of the cutting core and its first segment after the cut, or `None`
/// without a WAL.
pub type CutResult = Result<Option<(PathBuf, u64)>, String>;

/// Step 2–4 of a cut (see the module doc), run as a task on the cutting core.
pub async fn write_blocks(frozen: Vec<Rc<Frozen>>, durable: CutDurable, cfg: BlockConfig, state: Rc<CutState>) {
    let wal_cut = match durable.recv_async().await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            // Without a durable marker the block must not be indexed; the frozen heads stay in
            // memory (and in the WAL), answering queries. Cutting stays suspended: a later
            // cut's indexed marker would make replay skip these heads' records too, which no
            // block holds. The head limit then turns pushes away instead of losing data.
            tracing::error!(error = %e, "the WAL could not record a block cut; keeping the heads in memory and suspending cuts");
            state.suspended.set(true);
            return;
        }
        Err(_) => {
            // The WAL flusher is gone: nothing can be made durable any more.
            state.suspended.set(true);
            return;
        }
    };
    // By value: each frozen head is freed as soon as its block is registered.
    for f in frozen {
        settled(&f).await;
        let started = Instant::now();
        let enc = match encode(&f, &cfg.encode).await {
            Ok(e) => e,
            Err(e) => {
                // Encoding is deterministic: a failure is a bug, not a transient error. Cuts
                // stay suspended, for the reason above: the head's records must stay replayable.
                tracing::error!(tenant = %f.tenant, block = %f.id, error = %e, "encoding a block failed; keeping the head in memory and suspending cuts");
                state.suspended.set(true);
                return;
            }
        };
        let encode_s = started.elapsed().as_secs_f64();
        let files = [
            (block::INDEX, bytes::Bytes::from(enc.index)),
            (block::SYMBOLS, bytes::Bytes::from(enc.symbols)),
            (block::PROFILES, bytes::Bytes::from(enc.profiles)),
            (block::META, bytes::Bytes::from(enc.meta_json)),
        ];
        let size: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
        for (name, data) in &files {
            let path = object_path(&f.tenant, &f.id, name);
            retry(&format!("uploading {path}"), || cfg.store.put(path.clone(), data.clone())).await;
        }
        let meta = &enc.meta;
        let r = BlockRef {
            block_id: f.id.clone(),
            min_time: meta.min_time,
            max_time: meta.max_time,
            uploaded_at: now_s(),
            compaction_level: meta.compaction.level,
            size_bytes: size,
            files: files.iter().map(|(n, b)| (n.to_string(), b.len() as u64)).collect(),
        };
        retry(&format!("adding block {} to the bucket index of {}", f.id, f.tenant), || {
            cfg.store.add_block(f.tenant.to_string(), r.clone())
        })
        .await;
        tracing::info!(tenant = %f.tenant, block = %f.id, profiles = meta.stats.num_profiles, samples = meta.stats.num_samples, bytes = size, encode_s, total_s = started.elapsed().as_secs_f64(), "block written");
        let profiles_bytes = r.file_size(block::PROFILES).unwrap_or(0);
        state.blocks.borrow_mut().add(BlockEntry {
            tenant: f.tenant.to_string(),
            id: f.id.clone(),
            min_ms: meta.min_time,
            max_ms: meta.max_time,
            profiles_bytes,
        });
        state.frozen.borrow_mut().retain(|x| !Rc::ptr_eq(x, &f));
        state.blocks_written.set(state.blocks_written.get() + 1);
        state.bytes_uploaded.set(state.bytes_uploaded.get() + size);
    }
    if let Some((dir, seq)) = wal_cut {
        match kiln_io::wal::segment::delete_before(&dir, seq) {
            Ok(n) => tracing::debug!(dir = %dir.display(), segments = n, "WAL segments covered by blocks deleted"),
            // Replay still skips what the blocks hold: the segment with the markers is
            // deleted last. The next cut deletes the rest.
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "deleting WAL segments covered by blocks failed")
            }
        }
    }
    state.cutting.set(false);
}

/// Encodes a frozen head one row group at a time, letting the core serve its inbox (pushes,
/// queries) between groups.
// The head is borrowed across the yields on purpose: it is only ever borrowed mutably to
// take out an unsettled push, and encoding starts after the last one settled (`settled`);
// no push gains rows in a frozen head after its cut.
#[allow(clippy::await_holding_refcell_ref)]
async fn encode(f: &Frozen, opts: &EncodeOptions) -> Result<block::EncodedBlock, block::FormatError> {
    let head = f.head.borrow();
    let mut e = block::Encoder::new(&head, &f.id, opts)?;
    while e.step()? {
        YieldNow(false).await;
    }
    e.finish()
}

/// Gives the executor one turn: ready on the second poll, after re-queueing itself.
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

async fn retry<F, Fut, T, E>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = wait.as_secs_f64(), "{what} failed");
                monoio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
