//! The read path of a cluster: every query goes to every ACTIVE ingester and store-gateway
//! (this instance's cores through the mesh, the others over
//! `kiln.querier.v1.ReplicaService/Query`), and each profile is counted once.
//!
//! Label, series and profile-type queries are unions. A query that adds profiles up (flame
//! graphs, pprof, time series, analysis) runs in two steps: first each reader lists, per
//! *source*, the (series key, timestamp) of every profile it would count — a source holds
//! each profile at most once: the ingester that cut a block, or an instance for its heads
//! (`query::KeyFilter`). Replicas of a series hold a copy each, and a store-gateway may hold
//! blocks of several cutters with the same profiles. The querier then picks, for each
//! (series, timestamp), the one (reader, source) that counts it — the one holding the most
//! profiles there, so a replica that missed a write never hides one — and sends each reader
//! the query with its share (a whole series, some of its timestamps, or nothing, per source).
//! Pyroscope keeps the first (series, timestamp) seen in its replica streams; this also keeps
//! two profiles a client sent with the same timestamp, as a single node does.
//!
//! A query succeeds while a quorum of each replica set answers, not every member: of `n`
//! ingesters holding tokens, `n − RF/2` must be ACTIVE, healthy and answer the first step
//! (dskit's read check), and fewer than `-store-gateway.sharding-ring.replication-factor`
//! store-gateways may fail it (each block has that many). A reader that fails its share in
//! the second step has it given to the other (reader, source)s holding it, asked once more;
//! only a profile nobody else holds fails the query. Every such error names the instances
//! that were missing.
use super::coverage::Catalog;
use super::{local_fan_out, Querier};
use crate::cluster::pool::Pool;
use crate::cluster::Cluster;
use crate::service::call::{Call, Reply};
use crate::service::routes::{Class, RpcService};
use crate::service::{Code, RpcError};
use bytes::Bytes;
use kiln_shards::query::wire::{decode_request, decode_results, encode_request, encode_results};
use kiln_shards::query::{Include, KeyFilter, QueryRequest, QueryResult};
use kiln_shards::ring::member::{Components, State};
use kiln_shards::ring::snapshot::Snapshot;
use rustc_hash::{FxHashMap, FxHashSet};
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
    /// The bucket indexes a query's first step is checked against (`coverage`).
    pub catalog: Option<Arc<Catalog>>,
}

/// Serves `Query`: a replica's part of another instance's query, from this process's cores.
pub async fn serve(querier: &Querier, c: &Call<'_>, method: &str) -> Reply {
    if method != "Query" {
        return c.unimplemented();
    }
    let req = decode_request(c.msg).map_err(|e| RpcError::invalid(format!("a replica query: {e}")))?;
    let parts = local_fan_out(querier, req).await?;
    Ok(encode_results(&parts))
}

/// Whether a query adds profiles up (and so must count each copy once).
fn adds_profiles(req: &QueryRequest) -> bool {
    matches!(
        req,
        QueryRequest::MergeTree(_)
            | QueryRequest::MergeProfile(_)
            | QueryRequest::SelectSeries { .. }
            | QueryRequest::Analyze(_)
            | QueryRequest::Heatmap { .. }
    )
}

impl ReplicaReader {
    /// Whether the readers' answers `held` read every block of the query's range that the
    /// bucket index says they must (`coverage`); no catalog, no check.
    async fn check_blocks(&self, req: &QueryRequest, held: &Held) -> Result<(), RpcError> {
        let Some(catalog) = &self.catalog else { return Ok(()) };
        let sel = req.selection();
        let tenants: Vec<String> = sel.tenants.iter().map(|t| t.as_str().to_string()).collect();
        catalog.check(&tenants, sel.start_ms, sel.end_ms, held).await
    }

    /// Every reader's partial results for `req`, each profile counted once.
    pub async fn fan_out(&self, querier: &Querier, req: QueryRequest) -> Result<Vec<QueryResult>, RpcError> {
        let snap = self.cluster.snapshot();
        let readers =
            Readers::of(&snap, self.cluster.replication_factor, self.cluster.store_gateway_replication_factor)?;
        let me = self.cluster.self_index(&snap);
        let addrs: Vec<(u32, String)> =
            readers.all.iter().map(|&m| (m, snap.instances()[m as usize].addr.clone())).collect();
        // Each reader's cores report the blocks they read, for the block check.
        let reporting = |mut r: QueryRequest| {
            r.selection_mut().report_read = self.catalog.is_some();
            r
        };
        if !adds_profiles(&req) {
            let asked = reporting(req.clone());
            let answers = self.ask(querier, me, &addrs, |_| Some(asked.clone())).await;
            let (ok, failed) = split(answers);
            readers.check(&snap, &ok, &failed)?;
            self.check_blocks(&req, &ok).await?;
            let parts = ok.into_iter().flat_map(|(_, p)| p);
            return Ok(parts.filter(|p| !matches!(p, QueryResult::Read(_))).collect());
        }
        let keys = reporting(QueryRequest::Keys(req.selection().clone()));
        let answers = self.ask(querier, me, &addrs, |_| Some(keys.clone())).await;
        let (held, failed) = split(answers);
        readers.check(&snap, &held, &failed)?;
        self.check_blocks(&req, &held).await?;
        // Each reader answers its share at the block epoch of its first answer: from the
        // blocks it listed, whatever its syncs changed in between.
        let epochs = epochs(&held);
        let with_share = |shares: &FxHashMap<u32, KeyFilter>| {
            let (req, epochs) = (&req, &epochs);
            let shares = shares.clone();
            move |m: u32| {
                let share = shares.get(&m)?;
                let mut part = req.clone();
                part.selection_mut().keys = Some(Arc::new(share.clone()));
                part.selection_mut().epoch = epochs.get(&m).copied();
                Some(part)
            }
        };
        let shares = assign(&held, &|_, _| true);
        let (mut parts, failed) = split(self.ask(querier, me, &addrs, with_share(&shares)).await);
        if failed.is_empty() {
            return Ok(parts.into_iter().flat_map(|(_, p)| p).collect());
        }
        // Their shares go to the others holding the same profiles, asked once more.
        let gone: Vec<u32> = failed.iter().map(|(m, _)| *m).collect();
        let (lost, rest) = lost_shares(&held, &gone, &shares);
        let covered: FxHashSet<(u64, i64)> =
            rest.iter().flat_map(|(_, p)| keys_of(p)).map(|(_, k, t)| (k, t)).filter(|x| lost.contains(x)).collect();
        if covered.len() < lost.len() {
            return Err(RpcError::new(
                Code::Unavailable,
                format!("{} failed its share of the query and no other instance holds it", named(&snap, &failed)),
            ));
        }
        let again = assign(&rest, &|k, t| lost.contains(&(k, t)));
        tracing::warn!(failed = %named(&snap, &failed), "readers failed their share of a query; asking the others holding it");
        let (more, failed) = split(self.ask(querier, me, &addrs, with_share(&again)).await);
        if !failed.is_empty() {
            return Err(RpcError::new(
                Code::Unavailable,
                format!(
                    "{} failed a share of the query given to it after another reader failed",
                    named(&snap, &failed)
                ),
            ));
        }
        parts.extend(more);
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

/// Each reader's block epoch, from its first-step answer.
fn epochs(held: &Held) -> FxHashMap<u32, u64> {
    let mut out = FxHashMap::default();
    for (m, parts) in held {
        for p in parts {
            if let QueryResult::Keys { epoch, .. } = p {
                out.insert(*m, *epoch);
            }
        }
    }
    out
}

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

/// The instances of `failed` by ID, each with its error.
fn named(snap: &Snapshot, failed: &[(u32, RpcError)]) -> String {
    let mut out: Vec<String> =
        failed.iter().map(|(m, e)| format!("instance {} ({})", id(snap, *m), e.message)).collect();
    out.sort();
    out.join(", ")
}

fn id(snap: &Snapshot, m: u32) -> &str {
    snap.instances().get(m as usize).map_or("?", |d| d.id.as_str())
}

/// Every (source, series key, timestamp) of a reader's first-step answer, one per profile.
fn keys_of(parts: &[QueryResult]) -> impl Iterator<Item = (&str, u64, i64)> {
    parts.iter().flat_map(|p| match p {
        QueryResult::Keys { source, keys, .. } => {
            keys.iter().flat_map(move |(k, ts)| ts.iter().map(move |t| (source.as_str(), *k, *t))).collect::<Vec<_>>()
        }
        _ => Vec::new(),
    })
}

/// The (series key, timestamp)s the readers `gone` were to count with `shares`, and what the
/// others hold.
fn lost_shares(held: &Held, gone: &[u32], shares: &FxHashMap<u32, KeyFilter>) -> (FxHashSet<(u64, i64)>, Held) {
    let lost = held
        .iter()
        .filter(|(m, _)| gone.contains(m))
        .flat_map(|(m, p)| {
            let share = shares.get(m);
            keys_of(p).filter(move |(s, k, t)| share.is_some_and(|f| f.includes(s, *k, *t))).map(|(_, k, t)| (k, t))
        })
        .collect();
    (lost, held.iter().filter(|(m, _)| !gone.contains(m)).cloned().collect())
}

/// Who a query asks, and how many of them must answer.
struct Readers {
    /// Every ACTIVE, healthy instance holding data: ingesters and store-gateways.
    all: Vec<u32>,
    /// The ingesters among them.
    ingesters: Vec<u32>,
    /// The store-gateways that are not ingesters (an instance running both is judged as an
    /// ingester: what it cut, its replicas hold too).
    gateways: Vec<u32>,
    /// Ingesters that must answer: with `n` holding tokens and a factor `rf` (at most `n`),
    /// `n − rf/2` (dskit's read check), so no replica set loses its quorum.
    needed: usize,
    /// Store-gateways that may fail: one fewer than each block has.
    gateways_may_fail: usize,
}

impl Readers {
    fn of(snap: &Snapshot, rf: usize, rf_sg: usize) -> Result<Readers, RpcError> {
        let (mut all, mut ingesters, mut gateways) = (Vec::new(), Vec::new(), Vec::new());
        let mut missing = Vec::new();
        for (i, d) in snap.instances().iter().enumerate() {
            let ingester = d.components.has(Components::INGESTER);
            let gateway = d.components.has(Components::STORE_GATEWAY);
            if !(ingester || gateway) {
                continue;
            }
            if d.state != State::Active || !snap.healthy(i as u32) {
                if ingester && d.state.holds_tokens() {
                    missing.push(if snap.healthy(i as u32) {
                        format!("{} ({})", d.id, d.state.as_str())
                    } else {
                        format!("{} (UNHEALTHY)", d.id)
                    });
                }
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
        let gateways_may_fail = rf_sg.min(gateways.len()).saturating_sub(1);
        if all.is_empty() {
            return Err(RpcError::new(Code::Unavailable, "no ACTIVE ingester or store-gateway to query"));
        }
        if ingesters.len() < needed {
            return Err(RpcError::new(
                Code::Unavailable,
                format!(
                    "too many unhealthy ingesters: {needed} of {holders} must answer and {} are ACTIVE and healthy; missing: {}",
                    ingesters.len(),
                    missing.join(", ")
                ),
            ));
        }
        Ok(Readers { all, ingesters, gateways, needed, gateways_may_fail })
    }

    /// Whether enough of them answered: every replica set kept its quorum, and every block
    /// kept a store-gateway.
    fn check(&self, snap: &Snapshot, ok: &Held, failed: &[(u32, RpcError)]) -> Result<(), RpcError> {
        let answered = |set: &[u32]| ok.iter().filter(|(m, _)| set.contains(m)).count();
        if answered(&self.ingesters) < self.needed {
            return Err(RpcError::new(
                Code::Unavailable,
                format!(
                    "{} ingesters answered, {} must: a replica set lost its quorum; missing: {}",
                    answered(&self.ingesters),
                    self.needed,
                    named(snap, failed)
                ),
            ));
        }
        let gateways_failed: Vec<(u32, RpcError)> =
            failed.iter().filter(|(m, _)| self.gateways.contains(m)).cloned().collect();
        if !self.gateways.is_empty() && gateways_failed.len() > self.gateways_may_fail {
            return Err(RpcError::new(
                Code::Unavailable,
                format!(
                    "{} store-gateways failed, at most {} may (one fewer than each block has): missing: {}",
                    gateways_failed.len(),
                    self.gateways_may_fail,
                    named(snap, &gateways_failed)
                ),
            ));
        }
        Ok(())
    }
}

/// Each reader's share: for every (series key, timestamp) that `wanted` takes, the (reader,
/// source) holding the most profiles there counts them (ties: one picked by the series key,
/// spreading the work), and no other does. Pure.
pub fn assign(held: &[(u32, Vec<QueryResult>)], wanted: &dyn Fn(u64, i64) -> bool) -> FxHashMap<u32, KeyFilter> {
    // series key → (reader, source) → (sorted wanted timestamps, one per profile; how many
    // profiles of the series it holds in all).
    type Holding<'a> = ((u32, &'a str), Vec<i64>, usize);
    let mut by_series: FxHashMap<u64, Vec<Holding<'_>>> = FxHashMap::default();
    for (m, parts) in held {
        for p in parts {
            let QueryResult::Keys { source, keys, .. } = p else { continue };
            for (key, ts) in keys {
                let holder = (*m, source.as_str());
                let holders = by_series.entry(*key).or_default();
                let i = match holders.iter().position(|(h, _, _)| *h == holder) {
                    Some(i) => i,
                    None => {
                        holders.push((holder, Vec::new(), 0));
                        holders.len() - 1
                    }
                };
                holders[i].1.extend(ts.iter().copied().filter(|t| wanted(*key, *t)));
                holders[i].2 += ts.len();
            }
        }
    }
    let mut out: FxHashMap<u32, KeyFilter> = FxHashMap::default();
    for (key, mut holders) in by_series {
        holders.retain(|(_, ts, _)| !ts.is_empty());
        holders.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (_, ts, _) in &mut holders {
            ts.sort_unstable();
        }
        let n = holders.len();
        if n == 0 {
            continue;
        }
        let first = (key % n as u64) as usize;
        // Per holder, the timestamps it counts.
        let mut mine: Vec<Vec<i64>> = vec![Vec::new(); n];
        let mut cursors = vec![0usize; n];
        // The next timestamp any holder holds, until none is left.
        while let Some(t) = (0..n).filter_map(|i| holders[i].1.get(cursors[i]).copied()).min() {
            let mut best = (0usize, usize::MAX);
            for k in 0..n {
                let i = (first + k) % n;
                let ts = &holders[i].1;
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
            let ((m, source), all, total) = (holders[i].0, &holders[i].1, holders[i].2);
            let mut unique = all.clone();
            unique.dedup();
            // Every profile it holds of the series is wanted and counted here: the whole series.
            let inc = if unique.len() == ts.len() && all.len() == total { Include::All } else { Include::Only(ts) };
            out.entry(m).or_default().sources.entry(source.to_string()).or_default().series.insert(key, inc);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reader `m`'s first-step answer: per source, its series with their timestamps.
    /// One source's series, each with its timestamps.
    type Series<'a> = &'a [(u64, &'a [i64])];

    fn keys(m: u32, sources: &[(&str, Series<'_>)]) -> (u32, Vec<QueryResult>) {
        let parts = sources
            .iter()
            .map(|(s, series)| QueryResult::Keys {
                source: s.to_string(),
                keys: series.iter().map(|(k, t)| (*k, t.to_vec())).collect(),
                epoch: 0,
            })
            .collect();
        (m, parts)
    }

    /// How many profiles the shares count per (series, timestamp), given what each holds.
    fn counted(held: &[(u32, Vec<QueryResult>)], shares: &FxHashMap<u32, KeyFilter>) -> FxHashMap<(u64, i64), usize> {
        let mut out = FxHashMap::default();
        for (m, parts) in held {
            let Some(f) = shares.get(m) else { continue };
            for (s, k, t) in keys_of(parts) {
                if f.includes(s, k, t) {
                    *out.entry((k, t)).or_default() += 1;
                }
            }
        }
        out
    }

    #[test]
    fn three_full_replicas_count_each_profile_once_from_one_replica() {
        let held = vec![
            keys(0, &[("i0", &[(1, &[10, 20]), (2, &[5])])]),
            keys(1, &[("i1", &[(1, &[10, 20]), (2, &[5])])]),
            keys(2, &[("i2", &[(1, &[10, 20]), (2, &[5])])]),
        ];
        let shares = assign(&held, &|_, _| true);
        let c = counted(&held, &shares);
        assert_eq!(c.len(), 3);
        assert!(c.values().all(|n| *n == 1), "{c:?}");
        // Whole series go to one replica each: the filters stay small.
        assert!(shares
            .values()
            .flat_map(|f| f.sources.values())
            .flat_map(|s| s.series.values())
            .all(|i| *i == Include::All));
    }

    #[test]
    fn a_replica_that_missed_writes_neither_hides_nor_doubles_them() {
        // Replica 1 missed ts 20 of series 1; replica 2 missed series 2 entirely; series 3
        // holds two profiles at ts 7 (a client sent both) and replica 0 has only one of them.
        let held = vec![
            keys(0, &[("i0", &[(1, &[10, 20]), (2, &[5]), (3, &[7])])]),
            keys(1, &[("i1", &[(1, &[10]), (2, &[5]), (3, &[7, 7])])]),
            keys(2, &[("i2", &[(1, &[10, 20]), (3, &[7, 7])])]),
        ];
        let shares = assign(&held, &|_, _| true);
        let c = counted(&held, &shares);
        assert_eq!(c.get(&(1, 10)), Some(&1));
        assert_eq!(c.get(&(1, 20)), Some(&1));
        assert_eq!(c.get(&(2, 5)), Some(&1));
        assert_eq!(c.get(&(3, 7)), Some(&2), "both profiles a client sent at one time count");
    }

    #[test]
    fn a_store_gateway_holding_every_cutters_blocks_counts_each_profile_once() {
        // Two store-gateways each hold the blocks of three ingesters (one copy per replica),
        // and ingester 0 still answers for its own: three sources, five (reader, source)s.
        let blocks: &[(u64, &[i64])] = &[(1, &[10, 20]), (2, &[5, 5])];
        let held = vec![
            keys(0, &[("i0", blocks)]),
            keys(3, &[("i0", blocks), ("i1", blocks), ("i2", blocks)]),
            keys(4, &[("i0", blocks), ("i1", blocks), ("i2", blocks)]),
        ];
        let shares = assign(&held, &|_, _| true);
        let c = counted(&held, &shares);
        assert_eq!(c, [((1, 10), 1), ((1, 20), 1), ((2, 5), 2)].into_iter().collect());
        // Store-gateway 3 fails: what it counted goes to the others, still once.
        let (lost, rest) = lost_shares(&held, &[3], &shares);
        let again = assign(&rest, &|k, t| lost.contains(&(k, t)));
        let mut after = counted(&rest, &shares);
        for (kt, n) in counted(&rest, &again) {
            *after.entry(kt).or_default() += n;
        }
        assert_eq!(after, c, "the retry counts what the failed reader would have, nothing twice");
    }

    fn member(id: &str, components: &str, state: State, heartbeat_ms: u64) -> kiln_shards::ring::member::InstanceDesc {
        kiln_shards::ring::member::InstanceDesc {
            id: id.into(),
            addr: format!("{id}:1"),
            zone: String::new(),
            components: components.parse().unwrap(),
            state,
            cores: 1,
            token_seed: id.len() as u64 * 7919 + id.bytes().map(u64::from).sum::<u64>(),
            heartbeat_ms,
        }
    }

    #[test]
    fn a_read_needs_a_quorum_per_replica_set_and_a_store_gateway_per_block_and_names_who_was_missing() {
        let cfg = kiln_shards::ring::snapshot::RingConfig {
            tokens_per_core: 4,
            heartbeat_timeout_ms: 1_000,
            forget_after_ms: 0,
        };
        // Three ingesters (RF 3), one of them stale; two store-gateways (RF 2).
        let snap = Snapshot::build(
            vec![
                member("ing-a", "ingester", State::Active, 10_000),
                member("ing-b", "ingester", State::Active, 10_000),
                member("ing-c", "ingester", State::Active, 1),
                member("sg-a", "store-gateway", State::Active, 10_000),
                member("sg-b", "store-gateway", State::Active, 10_000),
            ],
            10_000,
            &cfg,
        );
        let idx = |id: &str| snap.index_of(id).unwrap();
        let r = Readers::of(&snap, 3, 2).unwrap();
        assert_eq!(r.all.len(), 4, "the stale ingester is not asked");
        let ok = |ids: &[&str]| -> Held { ids.iter().map(|id| (idx(id), Vec::new())).collect() };
        let failed = |ids: &[&str]| -> Vec<(u32, RpcError)> {
            ids.iter().map(|id| (idx(id), RpcError::new(Code::Unavailable, "refused"))).collect()
        };
        // One stale ingester and one failed store-gateway: within both factors.
        r.check(&snap, &ok(&["ing-a", "ing-b", "sg-a"]), &failed(&["sg-b"])).unwrap();
        // A second ingester fails: a replica set lost its quorum, and the error says who.
        let e = r.check(&snap, &ok(&["ing-a", "sg-a", "sg-b"]), &failed(&["ing-b"])).unwrap_err();
        assert!(e.message.contains("instance ing-b (refused)"), "{}", e.message);
        // Both store-gateways fail: some block has none left.
        let e = r.check(&snap, &ok(&["ing-a", "ing-b"]), &failed(&["sg-a", "sg-b"])).unwrap_err();
        assert!(e.message.contains("instance sg-a (refused), instance sg-b (refused)"), "{}", e.message);
        // Two stale ingesters of three: the read is refused before asking, naming them.
        let snap = Snapshot::build(
            vec![
                member("ing-a", "ingester", State::Active, 10_000),
                member("ing-b", "ingester", State::Active, 1),
                member("ing-c", "ingester", State::Leaving, 10_000),
            ],
            10_000,
            &cfg,
        );
        let e = Readers::of(&snap, 3, 1).err().unwrap();
        assert!(e.message.contains("ing-b (UNHEALTHY), ing-c (LEAVING)"), "{}", e.message);
    }

    /// What each (reader, source) holds: for one series key, a multiset of timestamps.
    fn arb_holdings() -> impl Strategy<Value = Vec<(u32, u8, u64, Vec<i64>)>> {
        prop::collection::vec((0u32..4, 0u8..3, 0u64..4, prop::collection::vec(0i64..6, 0..5)), 0..24)
    }

    proptest! {
        /// For arbitrary holdings, every (series, timestamp) held anywhere is counted from one
        /// (reader, source) only, as many times as the largest holding of it; and a retry
        /// after one reader failed its share counts what the others hold of it, never more.
        #[test]
        fn each_profile_is_counted_once_from_one_holder(h in arb_holdings()) {
            let mut held: Held = Vec::new();
            for (m, s, k, ts) in &h {
                let part = QueryResult::Keys { source: format!("i{s}"), keys: vec![(*k, ts.clone())], epoch: 0 };
                match held.iter_mut().find(|(r, _)| r == m) {
                    Some((_, p)) => p.push(part),
                    None => held.push((*m, vec![part])),
                }
            }
            // The most profiles one (reader, source) holds at each (series, timestamp).
            let mut per_holder: FxHashMap<(u32, String, u64, i64), usize> = FxHashMap::default();
            for (m, p) in &held {
                for (s, k, t) in keys_of(p) {
                    *per_holder.entry((*m, s.to_string(), k, t)).or_default() += 1;
                }
            }
            let mut most: FxHashMap<(u64, i64), usize> = FxHashMap::default();
            for ((_, _, k, t), n) in &per_holder {
                let e = most.entry((*k, *t)).or_default();
                *e = (*e).max(*n);
            }
            let shares = assign(&held, &|_, _| true);
            prop_assert_eq!(&counted(&held, &shares), &most);
            // From one (reader, source) each.
            let mut from: FxHashMap<(u64, i64), FxHashSet<(u32, String)>> = FxHashMap::default();
            for (m, p) in &held {
                for (s, k, t) in keys_of(p) {
                    if shares.get(m).is_some_and(|f| f.includes(s, k, t)) {
                        from.entry((k, t)).or_default().insert((*m, s.to_string()));
                    }
                }
            }
            prop_assert!(from.values().all(|h| h.len() == 1), "{:?}", from);
            // Reader 0 fails its share: the retry counts each lost profile that another
            // (reader, source) holds, and nothing past the largest holding.
            let (lost, rest) = lost_shares(&held, &[0], &shares);
            let again = assign(&rest, &|k, t| lost.contains(&(k, t)));
            let mut after = counted(&rest, &shares);
            for (kt, n) in counted(&rest, &again) {
                *after.entry(kt).or_default() += n;
            }
            for (kt, n) in &after {
                prop_assert!(*n <= most[kt], "{:?} counted {} times, held at most {}", kt, n, most[kt]);
            }
            for kt in &lost {
                let elsewhere = rest.iter().any(|(_, p)| keys_of(p).any(|(_, k, t)| (k, t) == *kt));
                prop_assert_eq!(after.contains_key(kt), elsewhere, "{:?}", kt);
            }
        }
    }
}
