//! One core's inbox loop: what the core owns, as ingester and as store-gateway, and the
//! messages that reach it from the other cores.
//!
//! Ownership: the `Core` is created on its core's thread and never leaves it; other cores
//! reach it only through `Msg`s on its bounded inbox (the `Mesh`), and replies go back on
//! one-shot channels. Handling a message never awaits; a large push's interning is done in
//! steps between messages (`Ingester::step`), its rows added in one.
use crate::ingester::{self, Ingester, IngesterStats};
use crate::query::{QueryRequest, QueryResult};
use crate::store_gateway::{self, QueryReply, StoreGateway, StoreGatewayStats};
use kiln_io::invariant::{check, Invariant};
use std::sync::Arc;

/// What the mesh carries to a core.
pub enum Msg {
    Ingester(ingester::Msg),
    StoreGateway(store_gateway::Msg),
    /// Answered from the live and frozen heads and the blocks this core owns; an error
    /// names a block that could not be read.
    Query {
        req: Arc<QueryRequest>,
        /// The mesh's block epoch when the query was sent (`Mesh::epoch`), the same for
        /// every core: which blocks a compaction's swap lets it read.
        epoch: u64,
        reply: QueryReply,
    },
    Stats {
        reply: flume::Sender<CoreStats>,
    },
}

impl From<ingester::Msg> for Msg {
    fn from(m: ingester::Msg) -> Self {
        Msg::Ingester(m)
    }
}

impl From<store_gateway::Msg> for Msg {
    fn from(m: store_gateway::Msg) -> Self {
        Msg::StoreGateway(m)
    }
}

/// A snapshot of a core's size, for `/metrics`: each part filled in by its owner.
#[derive(Debug, Clone, Default)]
pub struct CoreStats {
    pub core: u32,
    pub ingester: IngesterStats,
    pub store_gateway: StoreGatewayStats,
}

/// Everything one core owns.
pub struct Core {
    pub id: u32,
    pub ingester: Ingester,
    pub store_gateway: StoreGateway,
}

impl Core {
    pub fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Ingester(m) => self.ingester.handle(m),
            Msg::StoreGateway(m) => self.store_gateway.handle(m),
            Msg::Query { req, epoch, reply } => self.answer_query(req, epoch, reply),
            Msg::Stats { reply } => {
                // A dropped reply receiver means the requester gave up; nothing to do.
                let _ = reply.send(self.stats());
            }
        }
    }

    /// Answers a query: heads now, blocks (which may need reads) in a task on this core. The
    /// heads and the block list are taken in the same step, so a cut finishing meanwhile
    /// cannot make the query count a head and its block both, or neither.
    fn answer_query(&self, req: Arc<QueryRequest>, epoch: u64, reply: QueryReply) {
        if let Err(e) = self.store_gateway.blocks.borrow().check_epoch(epoch) {
            let _ = reply.send(Err(e));
            return;
        }
        let mut heads = self.ingester.query(&req);
        let blocks = self.store_gateway.matching(req.selection(), epoch);
        if req.selection().report_read {
            heads.push(QueryResult::Read(blocks.iter().map(|b| b.id.to_string()).collect()));
        }
        // I11: a frozen head and the block that replaces it never answer the same query.
        if !blocks.is_empty() {
            let frozen = self.ingester.frozen_ids();
            let both = blocks.iter().filter(|b| frozen.contains(&b.id)).count();
            check(Invariant::BlockSwap, both == 0, || {
                format!("core {}: {both} block(s) still frozen as heads answer the same query", self.id)
            });
        }
        self.store_gateway.answer(blocks, heads, req, reply);
    }

    pub fn stats(&self) -> CoreStats {
        CoreStats { core: self.id, ingester: self.ingester.stats(), store_gateway: self.store_gateway.stats() }
    }

    /// Serves the inbox until every sender is gone. While the ingester interns a large push
    /// in steps, the loop takes turns: the messages queued so far, one step, then one turn of
    /// the executor (whose connections may queue more), so that no push waits behind a large
    /// one for longer than a step.
    pub async fn run(mut self, inbox: flume::Receiver<Msg>) {
        loop {
            if !self.ingester.has_steps() {
                match inbox.recv_async().await {
                    Ok(msg) => self.handle(msg),
                    Err(_) => return,
                }
                continue;
            }
            // Only those queued now: a busy inbox cannot hold the steps off.
            for _ in 0..inbox.len() {
                match inbox.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(_) => break,
                }
            }
            self.ingester.step();
            ingester::yield_now().await;
        }
    }
}
