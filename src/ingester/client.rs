//! The one seam through which every write reaches the ingesters, and through which the
//! ingesters' cuts are asked for. Today it reaches this process's cores over the mesh; the
//! cluster issue points it at remote ingesters too (a pooled client per instance).
use crate::config::Limits;
use kiln_shards::ingester::cut::CutError;
use kiln_shards::ingester::walcodec::RecordBody;
use kiln_shards::ingester::{Ingest, IngestError, IngestMode, Msg};
use kiln_shards::model::ids::TenantId;
use kiln_shards::model::profile::{Profile, SampleGroup};
use kiln_shards::runtime::{Mesh, Msg as CoreMsg};
use std::fmt::Write;
use std::rc::Rc;
use std::sync::Arc;

/// Why a write was not stored. Nothing of it is stored in either case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// An ingester is at a limit (its head bytes, the tenant's series): retrying the same
    /// write at once fails again.
    #[error("{0}")]
    Full(String),
    /// An ingester could not take the write now (its WAL failed, it stopped): a retry may
    /// succeed.
    #[error("{0}")]
    Unavailable(String),
}

impl WriteError {
    /// Whether the same write may succeed if retried.
    pub fn retryable(&self) -> bool {
        matches!(self, WriteError::Unavailable(_))
    }
}

/// One owning core's part of a push: the core, the profile, the groups it owns and the
/// record body written for them (see `push`).
type Message = (usize, Arc<Profile>, Vec<SampleGroup>, Option<RecordBody>);

/// The ingesters a distributor writes to, and the cores an operator's `/ingester/flush`
/// cuts.
#[derive(Clone)]
pub struct IngesterClient {
    mesh: Mesh,
    /// In a cluster: the members a write is replicated to, and this core's connections to
    /// them. `None`: this process's cores are every ingester there is.
    cluster: Option<Rc<super::replicate::Replicator>>,
}

impl IngesterClient {
    /// The ingesters of this process: one per core, reached over the mesh.
    pub fn local(mesh: Mesh) -> Self {
        IngesterClient { mesh, cluster: None }
    }

    /// The ingesters of a cluster: each write goes to its series' replicas, this process's
    /// own cores among them reached over the mesh.
    pub fn replicated(mesh: Mesh, cluster: Rc<super::replicate::Replicator>) -> Self {
        IngesterClient { mesh, cluster: Some(cluster) }
    }

    /// The same ingesters without the cluster: this process's cores alone.
    pub fn this_process(&self) -> Self {
        IngesterClient::local(self.mesh.clone())
    }

    /// Writes a push: to its replicas in a cluster, else to this process's cores (see
    /// `push_local`).
    /// `bodies`: the WAL record body of each profile of `batch` where one was written
    /// (`walcodec::RecordBody`, see `whole_on_one_core`); missing or `None`: the owning cores
    /// encode the records (as they do in a cluster, where each replica writes its own).
    pub async fn push(
        &self,
        tenant: &TenantId,
        batch: Vec<(Arc<Profile>, Vec<SampleGroup>)>,
        bodies: Vec<Option<RecordBody>>,
        limits: &Limits,
    ) -> Result<(), WriteError> {
        match &self.cluster {
            Some(r) => r.push(&self.this_process(), tenant, batch, limits).await,
            None => self.push_with_bodies(tenant, batch, bodies, limits).await,
        }
    }

    /// Whether all of a profile's groups of `tenant` are owned by one of this process's
    /// cores, so that a record body written for them all is that core's record (none in a
    /// cluster). Answered anywhere: a decode thread asks it before writing a body.
    pub fn whole_on_one_core(&self, tenant: &TenantId) -> Option<impl Fn(&[SampleGroup]) -> bool + Send + 'static> {
        if self.cluster.is_some() {
            return None;
        }
        let (ring, tenant) = (self.mesh.ring.clone(), tenant.to_arc());
        Some(move |groups: &[SampleGroup]| {
            let mut owners = groups.iter().map(|g| ring.owner(g.labels.fingerprint(&tenant)).core);
            owners.next().is_some_and(|first| owners.all(|c| c == first))
        })
    }

    /// Sends every group to its owning core and waits until each has applied its part. All or
    /// nothing: a push refused by any owner (a full head, the series limit, a failed WAL write)
    /// is taken out of every other owner before the refusal is answered. `limits` are the
    /// tenant's (its series limits are spread over the cores).
    pub async fn push_local(
        &self,
        tenant: &TenantId,
        batch: Vec<(Arc<Profile>, Vec<SampleGroup>)>,
        limits: &Limits,
    ) -> Result<(), WriteError> {
        self.push_with_bodies(tenant, batch, Vec::new(), limits).await
    }

    /// `push_local`, with the record bodies written for some of the profiles (see `push`).
    async fn push_with_bodies(
        &self,
        tenant: &TenantId,
        batch: Vec<(Arc<Profile>, Vec<SampleGroup>)>,
        bodies: Vec<Option<RecordBody>>,
        limits: &Limits,
    ) -> Result<(), WriteError> {
        let mesh = &self.mesh;
        let tenant = tenant.to_arc();
        let max_series = series_limit_per_core(limits, mesh.cores());
        let mut messages: Vec<Message> = Vec::new();
        let mut bodies = bodies.into_iter();
        for (profile, groups) in batch {
            let mut body = bodies.next().flatten();
            let mut per_core: Vec<Vec<SampleGroup>> = vec![Vec::new(); mesh.cores()];
            for g in groups {
                // All sample types of a group share one owner, so its stacks are interned once.
                let owner = mesh.ring.owner(g.labels.fingerprint(&tenant)).core as usize;
                per_core[owner].push(g);
            }
            // A body holds all of the profile's groups, in order: it is a core's record only
            // where that core owns them all.
            if per_core.iter().filter(|g| !g.is_empty()).count() > 1 {
                body = None;
            }
            for (c, groups) in per_core.into_iter().enumerate() {
                if !groups.is_empty() {
                    messages.push((c, profile.clone(), groups, body.take()));
                }
            }
        }
        let key = push_key();
        let whole = messages.len() == 1;
        let mut cores: Vec<usize> = messages.iter().map(|m| m.0).collect();
        cores.sort_unstable();
        cores.dedup();
        let parted =
            PartedPush { mesh: mesh.clone(), key, cores: if whole { Vec::new() } else { cores }, commit: None };
        let mode = if whole { IngestMode::Whole(key) } else { IngestMode::Part(key) };
        let mut waits = Vec::with_capacity(messages.len());
        for (c, profile, groups, body) in messages {
            let (tx, rx) = flume::bounded(1);
            let msg =
                Msg::Ingest(Ingest { tenant: tenant.clone(), profile, groups, reply: tx, mode, max_series, body });
            if let Err(e) = mesh.send(c, msg).await {
                parted.settle(false).await;
                return Err(WriteError::Unavailable(e.to_string()));
            }
            waits.push(rx);
        }
        let mut first_err = None;
        for rx in waits {
            let res = match rx.recv_async().await {
                Err(_) => Err(WriteError::Unavailable("a core stopped while applying a push".into())),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(
                    e @ (IngestError::HeadFull { .. }
                    | IngestError::SeriesLimit { .. }
                    | IngestError::RecordTooLarge { .. }),
                )) => Err(WriteError::Full(e.to_string())),
                Ok(Err(e @ IngestError::Wal(_))) => {
                    Err(WriteError::Unavailable(format!("the push could not be made durable: {e}")))
                }
                Ok(Err(e @ IngestError::WalBusy { .. })) => Err(WriteError::Unavailable(e.to_string())),
            };
            if let (Err(e), None) = (res, &first_err) {
                first_err = Some(e);
            }
        }
        if let Some(e) = first_err {
            parted.settle(false).await;
            return Err(e);
        }
        parted.settle(true).await;
        Ok(())
    }

    /// Asks every core to cut until each answers that its blocks are in the bucket index.
    pub async fn cut_all(&self) -> Result<(), CutError> {
        loop {
            let done = self.mesh.broadcast(|reply| Msg::Cut { reply }).await.map_err(|_| CutError::CoreGone)?;
            if let Some(Err(e)) = done.iter().find(|d| d.is_err()) {
                return Err(e.clone());
            }
            if done.iter().all(|d| matches!(d, Ok(true))) {
                return Ok(());
            }
            // A core was finishing an earlier cut: ask again once it had time to.
            monoio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// What the cores have not written as blocks yet, or `None` when nothing is pending.
    pub async fn pending(&self) -> Option<String> {
        let stats = match self.mesh.broadcast(|reply| CoreMsg::Stats { reply }).await {
            Ok(s) => s,
            Err(e) => return Some(e.to_string()),
        };
        let parts: Vec<String> = stats
            .iter()
            .filter(|s| s.ingester.frozen_heads > 0 || s.ingester.cuts_suspended)
            .map(|s| {
                let mut p =
                    format!("core {}: {} head(s) waiting to be written as blocks", s.core, s.ingester.frozen_heads);
                if s.ingester.cuts_suspended {
                    p.push_str(", its cut failed and waits for a retry");
                }
                if let Some(e) = &s.ingester.cut_error {
                    let _ = write!(p, " (last error: {e})");
                }
                p
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A fresh push key: never repeated within a process (a process-wide counter), and apart
/// from every other process's keys (a per-process start drawn from the clock and pid, mixed
/// by xxh3: two runs' ranges of keys overlap with odds of about keys² / 2⁶⁴).
fn push_key() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        xxhash_rust::xxh3::xxh3_64(&[now.to_le_bytes().as_slice(), &std::process::id().to_le_bytes()].concat())
    });
    start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A push sent in parts: unless committed, its parts are taken out again, also when the
/// request is dropped midway (the client went away): what a client was not told is stored
/// is never kept half. Once decided, the outcome reaches every core even if the request is
/// dropped while it is being sent.
struct PartedPush {
    mesh: Mesh,
    key: u64,
    /// Cores holding a part that have not been told the outcome yet.
    cores: Vec<usize>,
    /// The outcome, once decided.
    commit: Option<bool>,
}

impl PartedPush {
    /// Sends the outcome to every core that holds a part; an abort waits until each has
    /// taken its part out, so a refusal is never followed by a query that sees it.
    async fn settle(mut self, commit: bool) {
        self.commit = Some(commit);
        let mut waits = Vec::new();
        while let Some(&c) = self.cores.last() {
            let (tx, rx) = flume::bounded(1);
            let reply = (!commit).then_some(tx);
            let sent = self.mesh.send(c, Msg::Settle { key: self.key, commit, reply }).await.is_ok();
            self.cores.pop();
            if sent && !commit {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.recv_async().await;
        }
    }
}

impl Drop for PartedPush {
    fn drop(&mut self) {
        if self.cores.is_empty() {
            return;
        }
        let (mesh, key, cores) = (self.mesh.clone(), self.key, std::mem::take(&mut self.cores));
        let commit = self.commit.unwrap_or(false);
        monoio::spawn(async move {
            for c in cores {
                let _ = mesh.send(c, Msg::Settle { key, commit, reply: None }).await;
            }
        });
    }
}

/// A tenant's limits as one ingester of a cluster applies them: the global series limit
/// turned into this ingester's share, as Pyroscope's ingesters do — the tenant's series
/// spread evenly over `min(healthy ingesters, its shard size)` ingesters, each holding `rf`
/// copies: `global / n × rf`, rounded up and at least 1 (Pyroscope truncates, and a share
/// under one series would turn the limit off). While no ingester is healthy in this
/// instance's view the global limit is left out, as Pyroscope does.
pub fn in_cluster(limits: &Limits, healthy_ingesters: usize, rf: usize) -> Limits {
    let global = limits.max_global_series_per_tenant;
    let n = match limits.ingestion_tenant_shard_size {
        0 => healthy_ingesters,
        s => s.min(healthy_ingesters),
    };
    let share = match (global, n) {
        (0, _) | (_, 0) => 0,
        (g, n) => (g.saturating_mul(rf.max(1))).div_ceil(n).max(1),
    };
    Limits { max_global_series_per_tenant: share, ..limits.clone() }
}

/// `in_cluster` with the healthy ingesters of `cluster`'s current view and its factor.
pub fn in_cluster_of(cluster: &crate::cluster::Cluster, limits: &Limits) -> Limits {
    let healthy = cluster.snapshot().healthy_count(kiln_shards::ring::member::Components::INGESTER);
    in_cluster(limits, healthy, cluster.replication_factor)
}

/// A tenant's series limit on one core: Pyroscope's local limit per ingester and global
/// limit across the cluster (in a cluster, this ingester's share of it: `in_cluster`), the
/// smaller of the two, spread over the cores the way the ring spreads the tenant's series
/// (evenly, by hash). 0: no limit.
pub fn series_limit_per_core(limits: &Limits, cores: usize) -> usize {
    let limit = match (limits.max_local_series_per_tenant, limits.max_global_series_per_tenant) {
        (0, g) => g,
        (l, 0) => l,
        (l, g) => l.min(g),
    };
    if limit == 0 {
        0
    } else {
        limit.div_ceil(cores.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(local: usize, global: usize, shard: usize) -> Limits {
        Limits {
            max_local_series_per_tenant: local,
            max_global_series_per_tenant: global,
            ingestion_tenant_shard_size: shard,
            ..Limits::default()
        }
    }

    #[test]
    fn a_global_series_limit_is_shared_by_the_ingesters_holding_the_tenant() {
        let share = |l: &Limits, healthy, rf| in_cluster(l, healthy, rf).max_global_series_per_tenant;
        // Three ingesters, RF 3: each holds every series, so each takes the whole limit.
        assert_eq!(share(&limits(0, 5000, 0), 3, 3), 5000);
        // Ten ingesters, RF 3: each holds three tenths of the series.
        assert_eq!(share(&limits(0, 5000, 0), 10, 3), 1500);
        // A shard of four of the ten: the series are spread over four only.
        assert_eq!(share(&limits(0, 5000, 4), 10, 3), 3750);
        // A shard larger than the healthy ingesters: those there are.
        assert_eq!(share(&limits(0, 5000, 20), 10, 3), 1500);
        // Rounded up, never to 0 (which would mean no limit).
        assert_eq!(share(&limits(0, 1, 0), 10, 3), 1);
        assert_eq!(share(&limits(0, 10, 0), 3, 1), 4);
        // No global limit, or no healthy ingester in view: the global limit is left out.
        assert_eq!(share(&limits(0, 0, 0), 10, 3), 0);
        assert_eq!(share(&limits(0, 5000, 0), 0, 3), 0);
        // The local limit is kept, and the smaller of the two applies per core.
        let l = in_cluster(&limits(1000, 5000, 0), 10, 3);
        assert_eq!(l.max_local_series_per_tenant, 1000);
        assert_eq!(series_limit_per_core(&l, 2), 500);
        assert_eq!(series_limit_per_core(&in_cluster(&limits(0, 5000, 0), 10, 3), 2), 750);
    }
}
