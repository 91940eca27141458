//! A core's shard: every tenant head this core owns, and the loop that serves its inbox.
//!
//! Ownership: the `Shard` is created on its core's thread and never leaves it. Other cores
//! reach it only through `Msg`s on its inbox; replies go back on one-shot channels. Handling a
//! message never awaits, so no other task on the core can observe a half-applied append.
use crate::head::{AppendStats, TenantHead};
use crate::profile::{Profile, SampleGroup};
use crate::query::{QueryRequest, QueryResult};
use crate::walcodec;
use kiln_io::wal::record;
use kiln_io::wal::segment::SegmentWriter;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

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
    Query {
        req: Arc<QueryRequest>,
        reply: flume::Sender<Vec<QueryResult>>,
    },
    Stats {
        reply: flume::Sender<ShardStats>,
    },
    /// Answered once everything appended before it is durable (used at shutdown).
    Flush {
        reply: IngestReply,
    },
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
}

/// Appends framed and waiting for the core's WAL flusher, with the pushes waiting on them.
#[derive(Default)]
pub struct WalPending {
    buf: Vec<u8>,
    waiters: Vec<(IngestReply, AppendStats)>,
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
}

impl Shard {
    /// A shard without a WAL: acknowledges as soon as the head holds the data.
    pub fn new(core: u32) -> Self {
        Shard { core, tenants: FxHashMap::default(), appends: 0, wal: None, max_head_bytes: 0 }
    }

    pub fn with_head_limit(mut self, bytes: usize) -> Self {
        self.max_head_bytes = bytes;
        self
    }

    pub fn approx_head_bytes(&self) -> usize {
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
        self.tenants.entry(tenant.clone()).or_default().append(tenant, p, groups)
    }

    pub fn query(&self, req: &QueryRequest) -> Vec<QueryResult> {
        let sel = match req {
            QueryRequest::ProfileTypes(s)
            | QueryRequest::LabelNames(s)
            | QueryRequest::LabelValues(s, _)
            | QueryRequest::Series(s, _)
            | QueryRequest::MergeTree(s)
            | QueryRequest::MergeProfile(s)
            | QueryRequest::Stats(s)
            | QueryRequest::Analyze(s) => s,
            QueryRequest::SelectSeries { sel, .. } => sel,
        };
        sel.tenants.iter().filter_map(|t| self.tenants.get(t.as_str())).map(|h| h.query(req)).collect()
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
            }
            Msg::Query { req, reply } => {
                let _ = reply.send(self.query(&req));
            }
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
