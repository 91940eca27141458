//! The per-core runtime: one pinned monoio executor per core, and the mesh of bounded
//! channels between them.
//!
//! This is the seam between kiln and its runtime: shard logic never calls monoio directly,
//! it receives `Msg`s and returns values, so a test can drive it without threads.
use crate::ring::Ring;
use crate::shard::{Msg, Shard};
use kiln_io::wal::segment::SegmentWriter;
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
}

impl Mesh {
    pub fn cores(&self) -> usize {
        self.inboxes.len()
    }

    /// Sends to a core, waiting while its inbox is full (backpressure).
    pub async fn send(&self, core: usize, msg: Msg) -> Result<(), ShardGone> {
        self.inboxes[core].send_async(msg).await.map_err(|_| ShardGone)
    }

    /// The inbox of `core`, for a task on that core that reports back to its own shard.
    pub fn inbox(&self, core: usize) -> flume::Sender<Msg> {
        self.inboxes[core].clone()
    }

    /// Sends from a thread outside the cores (start-up replay), blocking while the inbox is full.
    pub fn send_blocking(&self, core: usize, msg: Msg) -> Result<(), ShardGone> {
        self.inboxes[core].send(msg).map_err(|_| ShardGone)
    }

    /// Sends a request built by `make` to every core and collects the replies in core order.
    pub async fn broadcast<T, F>(&self, make: F) -> Result<Vec<T>, ShardGone>
    where
        F: Fn(flume::Sender<T>) -> Msg,
    {
        let mut waits = Vec::with_capacity(self.cores());
        for core in 0..self.cores() {
            let (tx, rx) = flume::bounded(1);
            self.send(core, make(tx)).await?;
            waits.push(rx);
        }
        let mut out = Vec::with_capacity(waits.len());
        for rx in waits {
            out.push(rx.recv_async().await.map_err(|_| ShardGone)?);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a core stopped serving its shard")]
pub struct ShardGone;

pub struct CoreContext {
    pub core: u32,
    pub mesh: Mesh,
    /// Closes (every receive fails) when the process may start serving: after WAL replay.
    pub gate: flume::Receiver<()>,
}

/// Where each core writes its WAL.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// The generation directory; core C writes `core-C/` inside it.
    pub dir: std::path::PathBuf,
    pub segment_bytes: u64,
    pub policy: kiln_io::wal::segment::SyncPolicy,
    /// The generation is adopted: each core continues after its last segment instead of
    /// starting a new directory.
    pub resume: bool,
}

/// What each core's shard is started with.
#[derive(Clone, Default)]
pub struct ShardConfig {
    pub wal: Option<WalConfig>,
    /// Head bytes per core before pushes are refused (0 = no limit).
    pub max_head_bytes: usize,
    /// Block cutting and the store-gateway's reads; `None`: heads only.
    pub blocks: Option<crate::flush::BlockConfig>,
}

/// Asks the core, a few times per block duration, whether its head is due for a cut. Starts
/// once the gate opens: a block cut during replay, before the new WAL generation is
/// committed, would be indexed while the old generation still holds its records.
async fn cut_ticker(mesh: Mesh, core: usize, max_block_duration: std::time::Duration, gate: flume::Receiver<()>) {
    let _ = gate.recv_async().await;
    let every =
        (max_block_duration / 8).clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(15));
    loop {
        monoio::time::sleep(every).await;
        if mesh.send(core, Msg::MaybeCut).await.is_err() {
            return;
        }
    }
}

pub struct Started {
    pub threads: Vec<JoinHandle<()>>,
    pub mesh: Mesh,
    /// Drop it to let the cores serve.
    pub gate: flume::Sender<()>,
}

/// Starts `cores` threads, each with its own monoio executor (io_uring, or epoll where the
/// container forbids io_uring), pinned to one CPU when `pin`. Each runs its shard's inbox
/// loop and the future `serve` builds for it.
pub fn start<F, Fut>(cores: usize, tokens_per_core: u32, pin: bool, shard_cfg: ShardConfig, serve: F) -> Started
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
    let mesh = Mesh { inboxes: senders.into(), ring: Arc::new(Ring::single(cores as u32, tokens_per_core)) };
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
            let wal = shard_cfg.wal.clone();
            let max_head = shard_cfg.max_head_bytes;
            let blocks = shard_cfg.blocks.clone();
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
                        let shard = match wal {
                            None => Shard::new(core as u32),
                            Some(w) => {
                                let dir = w.dir.join(format!("core-{core}"));
                                let writer = if w.resume {
                                    kiln_io::wal::segment::last_seq(&dir).and_then(|last| {
                                        SegmentWriter::resume(dir.clone(), last, w.segment_bytes, w.policy)
                                    })
                                } else {
                                    SegmentWriter::create(dir.clone(), w.segment_bytes, w.policy).await
                                };
                                let writer = match writer {
                                    Ok(wr) => wr,
                                    Err(e) => {
                                        tracing::error!(dir = %dir.display(), error = %e, "cannot create the WAL");
                                        std::process::exit(1);
                                    }
                                };
                                let (shard, flusher) = Shard::with_wal(core as u32, writer, mesh.inbox(core));
                                monoio::spawn(flusher);
                                shard
                            }
                        };
                        let mut shard = shard.with_head_limit(max_head);
                        if let Some(b) = blocks {
                            monoio::spawn(cut_ticker(mesh.clone(), core, b.max_block_duration, gate.clone()));
                            shard = shard.with_blocks(b, mesh.ring.clone());
                        }
                        monoio::spawn(shard.run(inbox));
                        serve(CoreContext { core: core as u32, mesh, gate }).await;
                    });
                })
                .expect("spawning a core thread")
        })
        .collect();
    Started { threads, mesh, gate: gate_tx }
}
