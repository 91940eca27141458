//! The read path of a cluster: every query goes to every ACTIVE ingester (this instance's
//! cores through the mesh, the others over `kiln.querier.v1.ReplicaService/Query`), and
//! replicas are counted once.
//!
//! Label, series and profile-type queries are unions. A query that adds profiles up (flame
//! graphs, pprof, time series, analysis) runs in two steps: first each replica lists the
//! (series key, timestamp) of every profile it would count; the querier then picks, for each
//! (series, timestamp), the one replica that counts it — the one holding the most profiles
//! there, so a replica that missed a write never hides one — and sends each replica the
//! query with its share (`KeyFilter`: a whole series, some of its timestamps, or nothing).
//! A profile held by three replicas is counted once, and one that a replica missed is still
//! counted once. Pyroscope keeps the first (series, timestamp) seen in its replica streams;
//! this also keeps two profiles a client sent with the same timestamp, as a single node does.
//!
//! A query succeeds while a quorum of each replica set answers: of `n` ingesters holding
//! tokens, `n − RF/2` must be ACTIVE, healthy and answer the first step (dskit's read check),
//! and a store-gateway must answer if there are any; any failure in the second step fails
//! the query (its share is not counted elsewhere).
use super::{local_fan_out, Querier};
use crate::cluster::pool::Pool;
use crate::cluster::Cluster;
use crate::service::call::{self, Call, Reply};
use crate::service::routes::{Class, RpcService};
use crate::service::{Code, RpcError};
use bytes::Bytes;
use kiln_shards::query::wire::{decode_request, decode_results, encode_request, encode_results};
use kiln_shards::query::{Include, KeyFilter, QueryRequest, QueryResult};
use kiln_shards::ring::member::{Components, State};
use kiln_shards::ring::snapshot::Snapshot;
use rustc_hash::FxHashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub const SERVICE: &str = "kiln.querier.v1.ReplicaService";
const QUERY_PATH: &str = "/kiln.querier.v1.ReplicaService/Query";

pub static RPC: &[RpcService] = &[RpcService { name: SERVICE, class: Class::Internal }];

/// How long one replica may take to answer one step of a query.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(60);

/// One core's view of the cluster for reads.
pub struct ReplicaReader {
    pub cluster: Arc<Cluster>,
    pub pool: Rc<Pool>,
}

/// Serves `Query`: a replica's part of another instance's query, from this process's cores.
pub async fn serve(querier: &Querier, c: &Call<'_>, method: &str) -> Reply {
    if method != "Query" {
        return call::unimplemented();
    }
    let req = decode_request(c.msg).map_err(|e| RpcError::invalid(format!("a replica query: {e}")))?;
    let parts = local_fan_out(querier, req).await?;
    Ok(encode_results(&parts))
}

/// Whether a query adds profiles up (and so must count each replica's copy once).
fn adds_profiles(req: &QueryRequest) -> bool {
    matches!(
        req,
        QueryRequest::MergeTree(_)
            | QueryRequest::MergeProfile(_)
            | QueryRequest::SelectSeries { .. }
            | QueryRequest::Analyze(_)
    )
}

impl ReplicaReader {
    /// Every replica's partial results for `req`, each profile counted once.
    pub async fn fan_out(&self, querier: &Querier, req: QueryRequest) -> Result<Vec<QueryResult>, RpcError> {
        let snap = self.cluster.snapshot();
        let readers = Readers::of(&snap, self.cluster.replication_factor)?;
        let me = self.cluster.self_index(&snap);
        let addrs: Vec<(u32, String)> =
            readers.all.iter().map(|&m| (m, snap.instances()[m as usize].addr.clone())).collect();
        // One instance holding data (a lone member) has no replicas to tell apart: one step.
        if !adds_profiles(&req) || addrs.len() == 1 {
            let answers = self.ask(querier, me, &addrs, |_| Some(req.clone())).await;
            let (ok, failed) = split(answers);
            readers.check(&ok, &failed)?;
            return Ok(ok.into_iter().flat_map(|(_, p)| p).collect());
        }
        let keys = QueryRequest::Keys(req.selection().clone());
        let answers = self.ask(querier, me, &addrs, |_| Some(keys.clone())).await;
        let (held, failed) = split(answers);
        readers.check(&held, &failed)?;
        let shares = assign(&held);
        let answers = self
            .ask(querier, me, &addrs, |m| {
                let share = shares.get(&m)?;
                let mut part = req.clone();
                part.selection_mut().keys = Some(Arc::new(share.clone()));
                Some(part)
            })
            .await;
        let (parts, failed) = split(answers);
        if let Some((m, e)) = failed.first() {
            return Err(RpcError::new(
                Code::Unavailable,
                format!("instance {m} failed its share of the query: {}", e.message),
            ));
        }
        Ok(parts.into_iter().flat_map(|(_, p)| p).collect())
    }

    /// Sends each member the request `req_for` makes for it (none: not asked), at once, and
    /// collects every answer.
    async fn ask(
        &self,
        querier: &Querier,
        me: Option<u32>,
        members: &[(u32, String)],
        req_for: impl Fn(u32) -> Option<QueryRequest>,
    ) -> Vec<(u32, Result<Vec<QueryResult>, RpcError>)> {
        let (tx, rx) = flume::unbounded();
        let mut local = None;
        let mut asked = 0;
        for (m, addr) in members {
            let Some(req) = req_for(*m) else { continue };
            asked += 1;
            if Some(*m) == me {
                local = Some((*m, req));
                continue;
            }
            let (pool, addr, tx, m) = (self.pool.clone(), addr.clone(), tx.clone(), *m);
            let cluster = self.cluster.clone();
            let body = Bytes::from(encode_request(&req));
            cluster.calls.query_bytes.fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
            monoio::spawn(async move {
                let res = match pool.call(&addr, QUERY_PATH, body, REPLICA_TIMEOUT).await {
                    Ok(b) => decode_results(&b).map_err(|e| RpcError::new(Code::Internal, format!("{addr}: {e}"))),
                    Err(e) => Err(RpcError::new(Code::Unavailable, e.to_string())),
                };
                let counter = if res.is_ok() { &cluster.calls.query_ok } else { &cluster.calls.query_failed };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = tx.send((m, res));
            });
        }
        drop(tx);
        let mut out = Vec::with_capacity(asked);
        if let Some((m, req)) = local {
            out.push((m, local_fan_out(querier, req).await));
        }
        while let Ok(a) = rx.recv_async().await {
            out.push(a);
        }
        out
    }
}

type Answers = Vec<(u32, Result<Vec<QueryResult>, RpcError>)>;
/// Each answering instance's partial results.
type Held = Vec<(u32, Vec<QueryResult>)>;

fn split(answers: Answers) -> (Held, Vec<(u32, RpcError)>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (m, r) in answers {
        match r {
            Ok(p) => ok.push((m, p)),
            Err(e) => failed.push((m, e)),
        }
    }
    (ok, failed)
}

/// Who a query asks, and how many of them must answer.
struct Readers {
    /// Every ACTIVE, healthy instance holding data: ingesters and store-gateways.
    all: Vec<u32>,
    /// The ingesters among them.
    ingesters: Vec<u32>,
    /// The store-gateways that are not ingesters (each serves every shared block).
    gateways: Vec<u32>,
    /// Ingesters that must answer: with `n` holding tokens and a factor `rf` (at most `n`),
    /// `n − rf/2` (dskit's read check), so no replica set loses its quorum.
    needed: usize,
}

impl Readers {
    fn of(snap: &Snapshot, rf: usize) -> Result<Readers, RpcError> {
        let (mut all, mut ingesters, mut gateways) = (Vec::new(), Vec::new(), Vec::new());
        for (i, d) in snap.instances().iter().enumerate() {
            let ingester = d.components.has(Components::INGESTER);
            let gateway = d.components.has(Components::STORE_GATEWAY);
            if !(ingester || gateway) || d.state != State::Active || !snap.healthy(i as u32) {
                continue;
            }
            all.push(i as u32);
            if ingester {
                ingesters.push(i as u32);
            } else {
                gateways.push(i as u32);
            }
        }
        let holders = snap.token_holding_ingesters();
        let rf = rf.min(holders).max(1);
        let needed = holders.saturating_sub(rf / 2);
        if all.is_empty() {
            return Err(RpcError::new(Code::Unavailable, "no ACTIVE ingester or store-gateway to query"));
        }
        if ingesters.len() < needed {
            return Err(RpcError::new(
                Code::Unavailable,
                format!(
                    "too many unhealthy ingesters: {needed} of {holders} must answer and {} are ACTIVE and healthy",
                    ingesters.len()
                ),
            ));
        }
        Ok(Readers { all, ingesters, gateways, needed })
    }

    /// Whether enough of them answered: every replica set kept its quorum, and a store-gateway
    /// answered if there are any.
    fn check(&self, ok: &Held, failed: &[(u32, RpcError)]) -> Result<(), RpcError> {
        let answered = |set: &[u32]| ok.iter().filter(|(m, _)| set.contains(m)).count();
        let first = failed.first().map_or(String::new(), |(m, e)| format!(" (instance {m}: {})", e.message));
        if answered(&self.ingesters) < self.needed {
            return Err(RpcError::new(
                Code::Unavailable,
                format!(
                    "{} ingesters answered, {} must: a replica set lost its quorum{first}",
                    answered(&self.ingesters),
                    self.needed
                ),
            ));
        }
        if !self.gateways.is_empty() && answered(&self.gateways) == 0 {
            return Err(RpcError::new(Code::Unavailable, format!("no store-gateway answered{first}")));
        }
        Ok(())
    }
}

/// Each replica's share: for every (series, timestamp), the replica holding the most profiles
/// there counts them (ties: a replica picked by the series key, spreading the work), and no
/// other does. Pure.
pub fn assign(held: &[(u32, Vec<QueryResult>)]) -> FxHashMap<u32, KeyFilter> {
    // series key → replica → sorted timestamps (one per profile).
    let mut by_series: FxHashMap<u64, Vec<(u32, Vec<i64>)>> = FxHashMap::default();
    for (m, parts) in held {
        for p in parts {
            let QueryResult::Keys(keys) = p else { continue };
            for (key, ts) in keys {
                let replicas = by_series.entry(*key).or_default();
                match replicas.iter_mut().find(|(r, _)| r == m) {
                    Some((_, v)) => v.extend_from_slice(ts),
                    None => replicas.push((*m, ts.clone())),
                }
            }
        }
    }
    let mut out: FxHashMap<u32, KeyFilter> = FxHashMap::default();
    for (key, mut replicas) in by_series {
        replicas.sort_unstable_by_key(|(m, _)| *m);
        for (_, ts) in &mut replicas {
            ts.sort_unstable();
        }
        let n = replicas.len();
        let first = (key % n as u64) as usize;
        // Per replica, the timestamps it counts.
        let mut mine: Vec<Vec<i64>> = vec![Vec::new(); n];
        let mut cursors = vec![0usize; n];
        // The next timestamp any replica holds, until none is left.
        while let Some(t) = (0..n).filter_map(|i| replicas[i].1.get(cursors[i]).copied()).min() {
            let mut best = (0usize, usize::MAX);
            for k in 0..n {
                let i = (first + k) % n;
                let ts = &replicas[i].1;
                let run = ts[cursors[i]..].iter().take_while(|x| **x == t).count();
                if run > best.0 {
                    best = (run, i);
                }
                cursors[i] += run;
            }
            mine[best.1].push(t);
        }
        for (i, ts) in mine.into_iter().enumerate() {
            if ts.is_empty() {
                continue;
            }
            let (m, all) = (&replicas[i].0, &replicas[i].1);
            let mut unique = all.clone();
            unique.dedup();
            let inc = if unique.len() == ts.len() { Include::All } else { Include::Only(ts) };
            out.entry(*m).or_default().series.insert(key, inc);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(m: u32, series: &[(u64, &[i64])]) -> (u32, Vec<QueryResult>) {
        (m, vec![QueryResult::Keys(series.iter().map(|(k, t)| (*k, t.to_vec())).collect())])
    }

    /// How many profiles the shares count per (series, timestamp), given what each holds.
    fn counted(held: &[(u32, Vec<QueryResult>)], shares: &FxHashMap<u32, KeyFilter>) -> FxHashMap<(u64, i64), usize> {
        let mut out = FxHashMap::default();
        for (m, parts) in held {
            let Some(f) = shares.get(m) else { continue };
            for p in parts {
                let QueryResult::Keys(keys) = p else { continue };
                for (k, ts) in keys {
                    for t in ts {
                        if f.includes(*k, *t) {
                            *out.entry((*k, *t)).or_default() += 1;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn three_full_replicas_count_each_profile_once_from_one_replica() {
        let held = vec![
            keys(0, &[(1, &[10, 20]), (2, &[5])]),
            keys(1, &[(1, &[10, 20]), (2, &[5])]),
            keys(2, &[(1, &[10, 20]), (2, &[5])]),
        ];
        let shares = assign(&held);
        let c = counted(&held, &shares);
        assert_eq!(c.len(), 3);
        assert!(c.values().all(|n| *n == 1), "{c:?}");
        // Whole series go to one replica each: the filters stay small.
        assert!(shares.values().flat_map(|f| f.series.values()).all(|i| *i == Include::All));
    }

    #[test]
    fn a_replica_that_missed_writes_neither_hides_nor_doubles_them() {
        // Replica 1 missed ts 20 of series 1; replica 2 missed series 2 entirely; series 3
        // holds two profiles at ts 7 (a client sent both) and replica 0 has only one of them.
        let held = vec![
            keys(0, &[(1, &[10, 20]), (2, &[5]), (3, &[7])]),
            keys(1, &[(1, &[10]), (2, &[5]), (3, &[7, 7])]),
            keys(2, &[(1, &[10, 20]), (3, &[7, 7])]),
        ];
        let shares = assign(&held);
        let c = counted(&held, &shares);
        assert_eq!(c.get(&(1, 10)), Some(&1));
        assert_eq!(c.get(&(1, 20)), Some(&1));
        assert_eq!(c.get(&(2, 5)), Some(&1));
        assert_eq!(c.get(&(3, 7)), Some(&2), "both profiles a client sent at one time count");
    }
}
