//! Replicated writes: each series of a push goes to `-distributor.replication-factor`
//! distinct ACTIVE ingesters of the ring, this process's own cores through the mesh and the
//! others over the internal RPC; the push succeeds once every series has a quorum
//! (replicas/2 + 1) of acks, each ack meaning durable in that ingester's WAL.
//!
//! As in Pyroscope, replicas still being written when the push is decided are not cancelled
//! (they carry on, bounded by `-distributor.push.timeout`): a slow replica still gets its
//! copy. A failed push may have reached some replicas; a client retries it and readers
//! count each (series, timestamp) once.
//!
//! A tenant with `-distributor.ingestion-tenant-shard-size` writes only within its shuffle
//! shard of the ingester ring (`ring::shuffle`): each series to RF of the shard's ingesters
//! (the factor capped at the shard's size), the shard cached per core for each snapshot.
use super::client::{IngesterClient, WriteError};
use super::remote;
use crate::cluster::pool::Pool;
use crate::cluster::Cluster;
use crate::config::Limits;
use kiln_shards::model::ids::TenantId;
use kiln_shards::model::profile::{Profile, SampleGroup};
use kiln_shards::ring::quorum::{Outcome, QuorumTracker};
use kiln_shards::ring::snapshot::Snapshot;
use kiln_shards::ring::{TenantShard, TenantShardCache};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::fmt::Write;
use std::rc::Rc;
use std::sync::Arc;

/// One core's view of the cluster for writes: the membership and its connections.
pub struct Replicator {
    pub cluster: Arc<Cluster>,
    pub pool: Rc<Pool>,
    /// Tenants' ingester shards for the current snapshot (bounded: `shuffle::MAX_CACHED_TENANT_SHARDS`).
    tenant_shards: RefCell<TenantShardCache>,
}

/// One replica's part of a push: the profiles with the groups of theirs it holds a copy of.
type Parts = Vec<(Arc<Profile>, Vec<SampleGroup>)>;

impl Replicator {
    pub fn new(cluster: Arc<Cluster>, pool: Rc<Pool>) -> Replicator {
        Replicator { cluster, pool, tenant_shards: RefCell::new(TenantShardCache::new(Snapshot::ingester_ring)) }
    }

    /// The ingesters `tenant`'s series may go to on `snap`: its shuffle shard of `size`, or the
    /// whole ring (size 0).
    fn tenant_shard(&self, snap: &Arc<Snapshot>, tenant: &str, size: usize) -> Arc<TenantShard> {
        let mut cache = self.tenant_shards.borrow_mut();
        let before = cache.len() as i64;
        let (shard, drawn) = cache.get(snap, tenant, size);
        let counters = &self.cluster.tenant_shards;
        counters.cached.fetch_add(cache.len() as i64 - before, std::sync::atomic::Ordering::Relaxed);
        if drawn {
            counters.drawn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        shard
    }

    pub async fn push(
        &self,
        local: &IngesterClient,
        tenant: &TenantId,
        batch: Vec<(Arc<Profile>, Vec<SampleGroup>)>,
        limits: &Limits,
    ) -> Result<(), WriteError> {
        let snap = self.cluster.snapshot();
        let me = self.cluster.self_index(&snap);
        let shard = self.tenant_shard(&snap, tenant.as_str(), limits.ingestion_tenant_shard_size);
        // With fewer ingesters than the factor (in the ring, or in the tenant's shard), every
        // one there is takes each series (a lone member is its own quorum).
        let rf = self.cluster.replication_factor.min(shard.len().max(1));
        let mut per_instance: FxHashMap<u32, Parts> = FxHashMap::default();
        let mut sets = Vec::new();
        for (profile, groups) in batch {
            let mut mine: FxHashMap<u32, Vec<SampleGroup>> = FxHashMap::default();
            for g in groups {
                let set = snap
                    .write_replicas_in(&shard, g.labels.fingerprint(tenant.as_str()), rf)
                    .map_err(|e| WriteError::Unavailable(format!("no replicas for a series: {e}")))?;
                for m in &set.members {
                    mine.entry(m.instance).or_default().push(g.clone());
                }
                sets.push(set);
            }
            for (inst, groups) in mine {
                per_instance.entry(inst).or_default().push((profile.clone(), groups));
            }
        }
        if sets.is_empty() {
            return Ok(());
        }
        let mut tracker = QuorumTracker::new(&sets);
        let (tx, rx) = flume::unbounded();
        for (inst, parts) in per_instance {
            let tx = tx.clone();
            if Some(inst) == me {
                let (local, tenant) = (local.clone(), tenant.clone());
                let healthy = snap.healthy_count(kiln_shards::ring::member::Components::INGESTER);
                let limits = super::client::in_cluster(limits, healthy, self.cluster.replication_factor);
                monoio::spawn(async move {
                    let res = local.push_local(&tenant, parts, &limits).await;
                    let _ = tx.send((inst, res));
                });
            } else {
                let addr = snap.instances()[inst as usize].addr.clone();
                let body = remote::encode(tenant.as_str(), &parts);
                self.cluster.calls.push_bytes.fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let (pool, timeout, cluster) = (self.pool.clone(), self.cluster.push_timeout, self.cluster.clone());
                monoio::spawn(async move {
                    let res =
                        pool.call(&addr, remote::PUSH_PATH, body, timeout).await.map(|_| ()).map_err(|e| match e {
                            crate::cluster::pool::CallError::Answer { ref code, .. }
                                if code == "resource_exhausted" =>
                            {
                                WriteError::Full(e.to_string())
                            }
                            e => WriteError::Unavailable(e.to_string()),
                        });
                    let c = &cluster.calls;
                    let counter = if res.is_ok() { &c.push_ok } else { &c.push_failed };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = tx.send((inst, res));
                });
            }
        }
        drop(tx);
        let mut errors: Vec<WriteError> = Vec::new();
        let deadline = monoio::time::Instant::now() + self.cluster.push_timeout;
        loop {
            let (inst, res) = match monoio::time::timeout_at(deadline, rx.recv_async()).await {
                Ok(Ok(r)) => r,
                // Every replica answered (or its task ended) without a decision, or time ran out.
                Ok(Err(_)) | Err(_) => return Err(failed(&errors, "not every series reached its quorum in time")),
            };
            let ok = res.is_ok();
            if let Err(e) = res {
                tracing::debug!(instance = inst, error = %e, "a replica refused a write");
                errors.push(e);
            }
            match tracker.record(inst, ok) {
                Outcome::Succeeded => return Ok(()),
                Outcome::Failed => return Err(failed(&errors, "a series can no longer reach its quorum")),
                Outcome::Pending => {}
            }
        }
    }
}

/// The error of a push that missed its quorum: full when a replica was at a limit (the client
/// should slow down), else unavailable; the message lists what the replicas said.
fn failed(errors: &[WriteError], why: &str) -> WriteError {
    let mut msg = format!("push failed: {why}");
    for e in errors.iter().take(3) {
        let _ = write!(msg, "; {e}");
    }
    if errors.iter().any(|e| !e.retryable()) {
        WriteError::Full(msg)
    } else {
        WriteError::Unavailable(msg)
    }
}
