//! A core's shard: every tenant head this core owns, and the loop that serves its inbox.
//!
//! Ownership: the `Shard` is created on its core's thread and never leaves it. Other cores
//! reach it only through `Msg`s on its inbox; replies go back on one-shot channels. Handling a
//! message never awaits, so no other task on the core can observe a half-applied append.
use crate::head::{AppendStats, TenantHead};
use crate::profile::{Profile, SampleGroup};
use crate::query::{QueryRequest, QueryResult};
use rustc_hash::FxHashMap;
use std::sync::Arc;

pub enum Msg {
    Ingest {
        tenant: Arc<str>,
        profile: Arc<Profile>,
        groups: Vec<SampleGroup>,
        reply: flume::Sender<AppendStats>,
    },
    Query {
        req: Arc<QueryRequest>,
        reply: flume::Sender<Vec<QueryResult>>,
    },
    Stats {
        reply: flume::Sender<ShardStats>,
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

pub struct Shard {
    pub core: u32,
    tenants: FxHashMap<Arc<str>, TenantHead>,
    appends: u64,
}

impl Shard {
    pub fn new(core: u32) -> Self {
        Shard {
            core,
            tenants: FxHashMap::default(),
            appends: 0,
        }
    }

    pub fn append(
        &mut self,
        tenant: &Arc<str>,
        p: &Profile,
        groups: &[SampleGroup],
    ) -> AppendStats {
        self.appends += 1;
        self.tenants
            .entry(tenant.clone())
            .or_default()
            .append(tenant, p, groups)
    }

    pub fn query(&self, req: &QueryRequest) -> Vec<QueryResult> {
        let sel = match req {
            QueryRequest::ProfileTypes(s)
            | QueryRequest::LabelNames(s)
            | QueryRequest::LabelValues(s, _)
            | QueryRequest::Series(s, _)
            | QueryRequest::MergeTree(s)
            | QueryRequest::MergeProfile(s)
            | QueryRequest::Stats(s) => s,
            QueryRequest::SelectSeries { sel, .. } => sel,
        };
        sel.tenants
            .iter()
            .filter_map(|t| self.tenants.get(t.as_str()))
            .map(|h| h.query(req))
            .collect()
    }

    pub fn stats(&self) -> ShardStats {
        let mut s = ShardStats {
            core: self.core,
            tenants: self.tenants.len(),
            appends: self.appends,
            ..Default::default()
        };
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
            Msg::Ingest {
                tenant,
                profile,
                groups,
                reply,
            } => {
                let st = self.append(&tenant, &profile, &groups);
                let _ = reply.send(st);
            }
            Msg::Query { req, reply } => {
                let _ = reply.send(self.query(&req));
            }
            Msg::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
        }
    }

    /// Serves the inbox until every sender is gone.
    pub async fn run(mut self, inbox: flume::Receiver<Msg>) {
        while let Ok(msg) = inbox.recv_async().await {
            self.handle(msg);
        }
    }
}
