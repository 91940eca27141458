//! Turning a core's frozen heads into blocks in object storage.
//!
//! Order, and why it is safe to crash anywhere:
//! 1. The core freezes every tenant head at once (`Ingester::cut`) and queues one cut marker
//!    per tenant into its WAL, then the WAL starts a new segment. Until step 4 the frozen
//!    heads still answer queries.
//! 2. This task waits until the markers are durable. A block is never indexed before its
//!    marker is: replay skips a tenant's records before a marker only when the marker's
//!    block is in the bucket index, so data is never counted twice nor lost.
//! 3. Each block is encoded and its files uploaded (`meta.json` last), then added to the
//!    tenant's `bucket-index.json`, all of a tenant's blocks of the cut in one index write.
//!    Upload and index failures are retried until they succeed; nothing is dropped meanwhile.
//! 4. In one step on the core, the tenant's blocks join the core's `BlockSet` and their
//!    frozen heads are dropped. Once every block of the cut is indexed, the WAL segments
//!    before the cut are deleted.
//!
//! A cut that fails before its blocks are indexed (its markers could not be made durable, or
//! encoding failed) leaves its heads frozen and suspends cutting: an ordinary later cut's
//! indexed marker would make replay skip the failed heads' records too, which no block
//! holds. The core retries, with backoff (`CutState::retry_due`), with a cut that takes the
//! failed frozen heads along with the live ones: it writes a marker for every one of them
//! after everything they hold, and indexes each tenant's blocks (failed and new) in one
//! write, so whichever marker replay finds indexed, every record before it is in an indexed
//! block.
use super::head::TenantHead;
use crate::block::{self, object_path, EncodeOptions};
use crate::model::ids::{BlockId, TenantId};
use crate::store_gateway::BlockSet;
use kiln_io::error::ErrorKind;
use kiln_io::invariant::{check, Invariant};
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
    /// Bytes of decoded row groups a core keeps cached
    /// (`-store-gateway.rows-cache-bytes-per-core`; 0 = none).
    pub rows_cache_bytes: usize,
    pub encode: EncodeOptions,
    /// This instance's ID in a cluster (recorded in each block's index entry); empty alone.
    pub instance: String,
}

/// A tenant head cut from the live head: read-only, still answering queries until its block
/// is in the bucket index and this core's `BlockSet`.
pub struct Frozen {
    pub tenant: Arc<str>,
    pub id: BlockId,
    /// Written only to take out the rows of a push refused after the cut froze it, and only
    /// while `unsettled > 0`: encoding starts once it is 0, so no borrow held by the encoder
    /// across an await ever meets a `borrow_mut`.
    pub head: RefCell<TenantHead>,
    /// Pushes with rows in this head whose outcome is not known yet (see `Ingester::settle`).
    pub unsettled: Cell<usize>,
    /// Profiles the head held when it was cut: it may lose rows (refused pushes), never gain
    /// any (I5).
    profiles_at_cut: u64,
}

impl Frozen {
    pub fn new(tenant: Arc<str>, id: BlockId, head: TenantHead) -> Self {
        let profiles_at_cut = head.profiles;
        Frozen { tenant, id, head: RefCell::new(head), unsettled: Cell::new(0), profiles_at_cut }
    }
}

/// Why a block cut failed. The cut itself is retried with backoff; this is what the core
/// logs, shows on `/metrics` and answers `/ingester/flush` with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CutError {
    /// Writing or syncing the cut's markers in the WAL failed (a full disk, say): the I/O
    /// error.
    #[error("the WAL could not record the block cut: {0}")]
    Wal(String),
    /// The WAL writer is gone: nothing can be made durable any more.
    #[error("the WAL writer stopped")]
    WalStopped,
    /// Encoding a block failed. Encoding is deterministic: a bug, not a transient error.
    #[error("encoding block {block} of tenant {tenant}: {error}")]
    Encode { tenant: String, block: String, error: String },
    /// What `Msg::Cut` answers for a cut that failed (why, as `/metrics` shows it): its
    /// heads stay frozen and it is retried with backoff.
    #[error("the block cut failed ({0}); it is retried with backoff")]
    Failed(String),
    /// A core stopped serving its inbox before it answered.
    #[error("a core stopped serving its inbox")]
    CoreGone,
}

impl CutError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CutError::Wal(_) | CutError::Failed(_) => ErrorKind::Retryable,
            CutError::WalStopped | CutError::Encode { .. } | CutError::CoreGone => ErrorKind::Fatal,
        }
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
    pub blocks: Rc<RefCell<BlockSet>>,
    pub cutting: Cell<bool>,
    /// Set when a cut failed before its blocks were indexed (see the module doc): its heads
    /// stay in `frozen`, and the next cut is a retry that takes them along.
    pub suspended: Cell<bool>,
    /// When a suspended core retries next (`None`: at once).
    retry_at: Cell<Option<Instant>>,
    /// The wait before the last retry; doubled after each failure.
    retry_wait: Cell<Duration>,
    /// Retries of failed cuts since start, for `/metrics`.
    pub retries: Cell<u64>,
    /// What went wrong last in a cut still unfinished (a failure, or an upload being
    /// retried), for `/ingester/flush` and `/metrics`.
    pub last_error: RefCell<Option<String>>,
    /// Blocks written and bytes uploaded since start, for `/metrics`.
    pub blocks_written: Cell<u64>,
    pub bytes_uploaded: Cell<u64>,
    /// Failed uploads and index writes retried since start, for `/metrics` (see `retry`).
    pub upload_retries: Cell<u64>,
    /// Cuts between their start and their end (I14: at most one).
    in_flight: Cell<u32>,
    /// Set once the running cut's markers are durable: only then may its blocks be indexed
    /// (I13).
    markers_durable: Cell<bool>,
}

/// The first wait before retrying a failed cut, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

impl CutState {
    /// `blocks`: the core's store-gateway block set, which a cut's blocks join.
    pub fn new(blocks: Rc<RefCell<BlockSet>>) -> Self {
        CutState {
            frozen: RefCell::new(Vec::new()),
            blocks,
            cutting: Cell::new(false),
            suspended: Cell::new(false),
            retry_at: Cell::new(None),
            retry_wait: Cell::new(Duration::ZERO),
            retries: Cell::new(0),
            last_error: RefCell::new(None),
            blocks_written: Cell::new(0),
            bytes_uploaded: Cell::new(0),
            upload_retries: Cell::new(0),
            in_flight: Cell::new(0),
            markers_durable: Cell::new(false),
        }
    }

    /// Whether a suspended core's backoff has run out.
    pub fn retry_due(&self) -> bool {
        self.suspended.get() && self.retry_at.get().is_none_or(|t| Instant::now() >= t)
    }

    /// A cut failed: its unindexed heads stay frozen; the next retry waits twice as long as
    /// the last one did.
    fn fail(&self, why: CutError) {
        let why = why.to_string();
        let wait = (self.retry_wait.get() * 2).clamp(RETRY_FIRST, RETRY_MAX);
        tracing::error!(error = %why, retry_in_s = wait.as_secs_f64(), "a block cut failed; its heads stay in memory and the cut is retried");
        self.retry_wait.set(wait);
        self.retry_at.set(Some(Instant::now() + wait));
        self.suspended.set(true);
        self.end();
        *self.last_error.borrow_mut() = Some(why);
    }

    /// The running cut ends, failed or not.
    fn end(&self) {
        self.cutting.set(false);
        self.markers_durable.set(false);
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
    }

    fn succeed(&self) {
        if self.suspended.get() {
            tracing::info!("the retried block cut succeeded; cuts resume");
        }
        self.suspended.set(false);
        self.retry_wait.set(Duration::ZERO);
        self.retry_at.set(None);
        self.end();
        *self.last_error.borrow_mut() = None;
    }
}

/// Asks the core, a few times per block duration, whether its head is due for a cut. Starts
/// once the gate opens: a block cut during replay, before the new WAL generation is
/// committed, would be indexed while the old generation still holds its records.
pub async fn ticker<M: From<super::Msg>>(
    inbox: flume::Sender<M>,
    max_block_duration: Duration,
    gate: flume::Receiver<()>,
) {
    let _ = gate.recv_async().await;
    let every = (max_block_duration / 8).clamp(Duration::from_millis(100), Duration::from_secs(15));
    loop {
        monoio::time::sleep(every).await;
        if inbox.send_async(super::Msg::MaybeCut.into()).await.is_err() {
            return;
        }
    }
}

/// What the WAL says once the cut markers are durable: the first segment after the cut, or
/// `None` without a WAL.
pub type CutDurable = flume::Receiver<CutResult>;

/// The WAL directory of the cutting core and its first segment after the cut, or `None`
/// without a WAL; an error is `CutError::Wal`.
pub type CutResult = Result<Option<(PathBuf, u64)>, CutError>;

/// Step 2–4 of a cut (see the module doc), run as a task on the cutting core. `frozen` is
/// ordered by tenant.
pub async fn write_blocks(frozen: Vec<Rc<Frozen>>, durable: CutDurable, cfg: BlockConfig, state: Rc<CutState>) {
    state.in_flight.set(state.in_flight.get() + 1);
    check(Invariant::OneCut, state.in_flight.get() == 1, || {
        format!("{} block cuts in flight on one core", state.in_flight.get())
    });
    let wal_cut = match durable.recv_async().await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            // Without a durable marker the block must not be indexed; the frozen heads stay in
            // memory (and in the WAL), answering queries, until a retry writes their markers.
            // The head limit turns pushes away meanwhile instead of losing data.
            state.fail(e);
            return;
        }
        Err(_) => {
            state.fail(CutError::WalStopped);
            return;
        }
    };
    state.markers_durable.set(true);
    // The cut's block ids, for I13 below (ids, not `Rc`s, which would keep the heads alive).
    let cut: Vec<BlockId> = frozen.iter().map(|f| f.id.clone()).collect();
    // By value: each tenant's frozen heads are freed as soon as their blocks are registered.
    let mut frozen = frozen.into_iter().peekable();
    while let Some(first) = frozen.next() {
        let mut group = vec![first];
        while let Some(f) = frozen.next_if(|f| f.tenant == group[0].tenant) {
            group.push(f);
        }
        if let Err(e) = write_tenant(&group, &cfg, &state).await {
            state.fail(e);
            return;
        }
    }
    if let Some((dir, seq)) = wal_cut {
        // I13: every block of the cut is indexed (its frozen head left with it) before the
        // segments that hold their records go.
        let left = state.frozen.borrow().iter().filter(|f| cut.contains(&f.id)).count();
        check(Invariant::IndexAfterMarkers, left == 0, || {
            format!("deleting WAL segments before {seq} with {left} head(s) of their cut not indexed")
        });
        match kiln_io::wal::segment::delete_before(&dir, seq) {
            Ok(n) => tracing::debug!(dir = %dir.display(), segments = n, "WAL segments covered by blocks deleted"),
            // Replay still skips what the blocks hold: the segment with the markers is
            // deleted last. The next cut deletes the rest.
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "deleting WAL segments covered by blocks failed")
            }
        }
    }
    state.succeed();
}

/// Writes one tenant's frozen heads of a cut as blocks and indexes them in one write.
async fn write_tenant(group: &[Rc<Frozen>], cfg: &BlockConfig, state: &CutState) -> Result<(), CutError> {
    let tenant = group[0].tenant.clone();
    let mut refs = Vec::with_capacity(group.len());
    let mut entries = Vec::with_capacity(group.len());
    for f in group {
        settled(f).await;
        // I5: encoded only once settled, and never grown since the cut.
        let profiles = f.head.borrow().profiles;
        check(Invariant::FrozenHead, f.unsettled.get() == 0 && profiles <= f.profiles_at_cut, || {
            format!(
                "encoding block {} of tenant {} with {} unsettled push(es) and {profiles} profiles ({} at the cut)",
                f.id,
                f.tenant,
                f.unsettled.get(),
                f.profiles_at_cut
            )
        });
        if profiles == 0 {
            // Every push it held was refused after the cut froze it: no block (its marker,
            // never indexed, is ignored by replay); the head leaves with the group below.
            continue;
        }
        let started = Instant::now();
        // Encoding is deterministic: a failure is a bug, not a transient error; the retry
        // will most likely fail the same way, but the head's records stay replayable.
        let enc = encode(f, &cfg.encode).await.map_err(|e| CutError::Encode {
            tenant: f.tenant.to_string(),
            block: f.id.to_string(),
            error: e.to_string(),
        })?;
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
            retry(state, &format!("uploading {path}"), || cfg.store.put(path.clone(), data.clone())).await;
        }
        let meta = &enc.meta;
        let r = BlockRef {
            block_id: f.id.to_string(),
            min_time: meta.min_time,
            max_time: meta.max_time,
            uploaded_at: now_s(),
            compaction_level: meta.compaction.level,
            size_bytes: size,
            files: files.iter().map(|(n, b)| (n.to_string(), b.len() as u64)).collect(),
            ingester: cfg.instance.clone(),
            ..Default::default()
        };
        tracing::info!(tenant = %f.tenant, block = %f.id, profiles = meta.stats.num_profiles, samples = meta.stats.num_samples, bytes = size, encode_s, total_s = started.elapsed().as_secs_f64(), "block uploaded");
        entries.push((TenantId::known(f.tenant.clone()), r.clone()));
        refs.push(r);
    }
    let size: u64 = refs.iter().map(|r| r.size_bytes).sum();
    check(Invariant::IndexAfterMarkers, refs.is_empty() || state.markers_durable.get(), || {
        format!("indexing {} block(s) of tenant {tenant} before their cut markers are durable", refs.len())
    });
    if !refs.is_empty() {
        retry(state, &format!("adding {} block(s) to the bucket index of {tenant}", refs.len()), || {
            cfg.store.add_blocks(tenant.to_string(), refs.clone())
        })
        .await;
    }
    // One step: the blocks join the set and their heads leave it.
    {
        let mut set = state.blocks.borrow_mut();
        for (tenant, r) in entries {
            set.add(tenant, &r);
        }
    }
    state.frozen.borrow_mut().retain(|x| !group.iter().any(|g| Rc::ptr_eq(x, g)));
    state.blocks_written.set(state.blocks_written.get() + refs.len() as u64);
    state.bytes_uploaded.set(state.bytes_uploaded.get() + size);
    Ok(())
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
        super::yield_now().await;
    }
    e.finish()
}

/// Runs `f` until it succeeds, with backoff; the last error is shown in `state.last_error`,
/// and every retry is counted (`kiln_block_upload_retries_total`).
///
/// Without a deadline, on purpose: what is uploaded is acknowledged data whose only other
/// copy is the WAL, which is deleted once the blocks are indexed; giving up would mean
/// dropping it. Meanwhile the frozen heads keep answering queries and count against the
/// head limit, so a bucket that stays away turns pushes away (429) instead of filling
/// memory; `/ingester/flush` answers within its own deadline and says what is pending.
async fn retry<F, Fut, T, E>(state: &CutState, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => {
                state.last_error.borrow_mut().take();
                return v;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = wait.as_secs_f64(), "{what} failed");
                *state.last_error.borrow_mut() = Some(format!("{what}: {e}"));
                state.upload_retries.set(state.upload_retries.get() + 1);
                monoio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
