//! The per-core runtime: one pinned monoio executor per core, the mesh of bounded
//! channels between them, and each core's inbox loop (`core`).
//!
//! This is the seam between kiln and its runtime: what a core owns is changed only by
//! `Msg`s handled one at a time, so a test can drive it without threads.
pub mod core;

pub use self::core::{Core, CoreStats, Msg};
use crate::ingester::{self, cut::BlockConfig, WalConfig};
use crate::ring::Ring;
use crate::store_gateway::StoreGateway;
use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;

/// How many messages may wait in one core's inbox before senders are made to wait.
pub const INBOX_CAPACITY: usize = 1024;

/// Every core's inbox, and the ring that says which core owns a series. Cloned onto every
/// core; senders are thread-safe, the receivers stay with their cores.
#[derive(Clone)]
pub struct Mesh {
    inboxes: Arc<[flume::Sender<Msg>]>,
    pub ring: Arc<Ring>,
    /// The block epoch: a query reads the blocks visible at the epoch it was sent with
    /// (`Msg::Query::epoch`), read once for all cores. Only a compaction's swap moves it, by
    /// one, after every core took its part (`store_gateway::Msg::Swap`), and swaps run one
    /// at a time (`swap_lock`), so a query sees every core before a swap or every core after.
    pub epoch: Arc<std::sync::atomic::AtomicU64>,
    pub swap_lock: Arc<std::sync::Mutex<()>>,
}

impl Mesh {
    pub fn cores(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends to a core, waiting while its inbox is full (backpressure).
    pub async fn send(&self, core: usize, msg: impl Into<Msg>) -> Result<(), CoreGone> {
        self.inboxes[core].send_async(msg.into()).await.map_err(|_| CoreGone)
    }

    /// The inbox of `core`, for a task on that core that reports back to its own core.
    pub fn inbox(&self, core: usize) -> flume::Sender<Msg> {
        self.inboxes[core].clone()
    }

    /// Sends from a thread outside the cores (start-up replay), blocking while the inbox is full.
    pub fn send_blocking(&self, core: usize, msg: impl Into<Msg>) -> Result<(), CoreGone> {
        self.inboxes[core].send(msg.into()).map_err(|_| CoreGone)
    }

    /// Sends a request built by `make` to every core and collects the replies in core order.
    pub async fn broadcast<T, M, F>(&self, make: F) -> Result<Vec<T>, CoreGone>
    where
        M: Into<Msg>,
        F: Fn(flume::Sender<T>) -> M,
    {
        let mut waits = Vec::with_capacity(self.cores());
        for core in 0..self.cores() {
            let (tx, rx) = flume::bounded(1);
            self.send(core, make(tx)).await?;
            waits.push(rx);
        }
        let mut out = Vec::with_capacity(waits.len());
        for rx in waits {
            out.push(rx.recv_async().await.map_err(|_| CoreGone)?);
        }
        Ok(out)
    }

    /// `items` split by the core the ring gives each one's block id (`id`), in core order.
    pub fn by_block_owner<T>(&self, items: impl IntoIterator<Item = T>, id: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
        let mut out: Vec<Vec<T>> = (0..self.cores()).map(|_| Vec::new()).collect();
        for item in items {
            let core = self.ring.block_owner(id(&item)) as usize;
            out[core].push(item);
        }
        out
    }

    /// A change of the blocks every core reads, applied at the next block epoch (I19): under
    /// `swap_lock`, each core is sent `msg(core, epoch, done)`; once every core answered
    /// `done`, the epoch moves on. From a thread outside the cores. A core that is gone is
    /// skipped (it answers no query either) and reported as `CoreGone` after the move.
    pub fn at_next_epoch<M: Into<Msg>>(
        &self,
        mut msg: impl FnMut(usize, u64, flume::Sender<()>) -> M,
    ) -> Result<(), CoreGone> {
        let _one = self.swap_lock.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.epoch.load(std::sync::atomic::Ordering::Acquire) + 1;
        let mut waits = Vec::with_capacity(self.cores());
        let mut gone = false;
        for core in 0..self.cores() {
            let (done, wait) = flume::bounded(1);
            match self.send_blocking(core, msg(core, epoch, done)) {
                Ok(()) => waits.push(wait),
                Err(_) => gone = true,
            }
        }
        for w in waits {
            gone |= w.recv().is_err();
        }
        self.epoch.store(epoch, std::sync::atomic::Ordering::Release);
        if gone {
            return Err(CoreGone);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a core stopped serving its inbox")]
pub struct CoreGone;

pub struct CoreContext {
    pub core: u32,
    pub mesh: Mesh,
    /// Closes (every receive fails) when the process may start serving: after WAL replay.
    pub gate: flume::Receiver<()>,
}

/// What each core is started with.
#[derive(Clone, Default)]
pub struct CoreConfig {
    pub wal: Option<WalConfig>,
    /// Head bytes per core before pushes are refused (0 = no limit).
    pub max_head_bytes: usize,
    /// Stack frames a push's part may have before its stacks are interned in steps between
    /// the core's other messages (`Ingester::step`; 0: never).
    pub append_step_frames: usize,
    /// Block cutting and the store-gateway's reads; `None`: heads only.
    pub blocks: Option<BlockConfig>,
}

pub struct Started {
    pub threads: Vec<JoinHandle<()>>,
    pub mesh: Mesh,
    /// Drop it to let the cores serve.
    pub gate: flume::Sender<()>,
}

/// Starts `cores` threads, each with its own monoio executor (io_uring, or epoll where the
/// container forbids io_uring), pinned to one CPU when `pin`. Each runs its core's inbox
/// loop and the future `serve` builds for it. `ring` routes each series to its core: this
/// instance's own ring (`Ring::single`, or the instance's tokens in a cluster, so the core a
/// distributor picks for a series is the one its local ring picks too).
pub fn start<F, Fut>(cores: usize, ring: Ring, pin: bool, cfg: CoreConfig, serve: F) -> Started
where
    F: Fn(CoreContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let mut senders = Vec::with_capacity(cores);
    let mut receivers = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (tx, rx) = flume::bounded(INBOX_CAPACITY);
        senders.push(tx);
        receivers.push(rx);
    }
    // A process starts at an epoch no earlier process reached (its microseconds since the
    // epoch: a process moves its epoch by one per swap or sync, far slower), so a query's
    // later step carrying an epoch of a process gone since is refused, not misread.
    let start_epoch =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let mesh = Mesh {
        inboxes: senders.into(),
        ring: Arc::new(ring),
        epoch: Arc::new(std::sync::atomic::AtomicU64::new(start_epoch)),
        swap_lock: Default::default(),
    };
    let serve = Arc::new(serve);
    let (gate_tx, gate_rx) = flume::bounded::<()>(0);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = receivers
        .into_iter()
        .enumerate()
        .map(|(core, inbox)| {
            let mesh = mesh.clone();
            let serve = serve.clone();
            let gate = gate_rx.clone();
            let wal = cfg.wal.clone();
            let max_head = cfg.max_head_bytes;
            let step_frames = cfg.append_step_frames;
            let blocks = cfg.blocks.clone();
            std::thread::Builder::new()
                .name(format!("kiln-core-{core}"))
                .spawn(move || {
                    if pin {
                        let _ = monoio::utils::bind_to_cpu_set([core % cpus]);
                    }
                    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                        .enable_timer()
                        .build()
                        .expect("building the core's runtime");
                    rt.block_on(async move {
                        let id = core as u32;
                        let store = blocks.as_ref().map(|b| b.store.clone());
                        let cache = blocks.as_ref().map_or(0, |b| b.cache_bytes);
                        let rows_cache = blocks.as_ref().map_or(0, |b| b.rows_cache_bytes);
                        let store_gateway = StoreGateway::new(cache, rows_cache, store);
                        store_gateway.blocks.borrow_mut().start_at_epoch(start_epoch);
                        let ingester = ingester::start(
                            id,
                            wal.as_ref(),
                            max_head,
                            step_frames,
                            blocks.map(|b| (b, mesh.ring.clone(), store_gateway.blocks.clone())),
                            mesh.inbox(core),
                            gate.clone(),
                        )
                        .await;
                        monoio::spawn(Core { id, ingester, store_gateway }.run(inbox));
                        serve(CoreContext { core: core as u32, mesh, gate }).await;
                    });
                })
                .expect("spawning a core thread")
        })
        .collect();
    Started { threads, mesh, gate: gate_tx }
}
