//! The query-frontend (`-target=query-frontend`): serves the querier's public API (every
//! `querier.v1.QuerierService` method, `/pyroscope/render`, the label APIs) — the same
//! validation, limits, merging and encoding code as a querier (`crate::querier`), with the
//! evaluation step handed to the cluster: each query is split by time
//! (`-querier.split-queries-by-interval`, `split`), each part is enqueued at a
//! query-scheduler and run by whichever querier pulls it, which sends the part's partial
//! results straight back here (`kiln.frontend.v1.FrontendService/Result`). Parts run in
//! parallel up to `-querier.max-query-parallelism`; parts that lie wholly in the past are
//! answered from a bounded results cache (`cache`) when they were asked before.
//!
//! A part is tracked until its result arrives: if the scheduler that holds it leaves the
//! ring, the part is enqueued at another one; if the client goes away, its parts are taken
//! off the schedulers' queues (`Cancel`).
pub mod cache;
pub mod merge;
pub mod split;

use crate::cluster::pool::{CallError, Pool};
use crate::cluster::Cluster;
use crate::config::TenantLimits;
use crate::query_scheduler::{self as scheduler, wire};
use crate::service::call::{Call, Reply};
use crate::service::routes::{Class, RpcService};
use crate::service::{Code, RpcError};
use bytes::Bytes;
use kiln_shards::query::wire::{decode_results, encode_request, encode_results};
use kiln_shards::query::{QueryRequest, QueryResult};
use kiln_shards::ring::member::{Components, State};
use rustc_hash::FxHashMap;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

pub const SERVICE: &str = "kiln.frontend.v1.FrontendService";
pub const RESULT_PATH: &str = "/kiln.frontend.v1.FrontendService/Result";

pub static RPC: &[RpcService] = &[RpcService { name: SERVICE, class: Class::Internal }];

/// How long an `Enqueue` or `Cancel` call to a scheduler may take.
const SCHEDULER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a waiting part checks that its scheduler is still in the ring.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Parts waiting for their result, over the process (each holds a query's memory).
pub const MAX_PENDING_PARTS: usize = 65_536;

/// What the frontend settings are (from the config).
pub struct Settings {
    /// This frontend's address, where queriers send results.
    pub addr: String,
    /// `-query-frontend.scheduler-address`; empty: the schedulers of the ring.
    pub scheduler_address: String,
    /// `-query-frontend.cache-results` with `-query-frontend.results-cache-max-bytes`.
    pub cache_bytes: Option<usize>,
    /// `-query-frontend.max-cache-freshness`.
    pub max_cache_freshness: Duration,
}

#[derive(Default)]
struct Counters {
    queries: AtomicU64,
    parts: AtomicU64,
    late_results: AtomicU64,
    reenqueued: AtomicU64,
    refused: AtomicU64,
    cancelled: AtomicU64,
    /// Runs of cached parts merged into one cache entry (`cached_run`).
    runs_merged: AtomicU64,
}

/// The frontend of this process, shared by every core: the parts waiting for results and
/// the results cache.
pub struct FrontendShared {
    settings: Settings,
    pending: Mutex<FxHashMap<u64, flume::Sender<Result<Bytes, RpcError>>>>,
    seed: u64,
    next: AtomicU64,
    cache: Option<Mutex<cache::ResultsCache>>,
    counters: Counters,
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

impl FrontendShared {
    pub fn new(settings: Settings) -> Self {
        FrontendShared {
            cache: settings.cache_bytes.map(|b| Mutex::new(cache::ResultsCache::new(b))),
            settings,
            pending: Mutex::default(),
            seed: random_seed(),
            next: AtomicU64::new(1),
            counters: Counters::default(),
        }
    }

    /// A query ID no other part of this process has (a bijection of a counter), and that
    /// another frontend's are unlikely to equal (a random seed).
    fn next_id(&self) -> u64 {
        self.seed ^ self.next.fetch_add(1, Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, FxHashMap<u64, flume::Sender<Result<Bytes, RpcError>>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> Option<std::sync::MutexGuard<'_, cache::ResultsCache>> {
        self.cache.as_ref().map(|c| c.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `kiln.frontend.v1.FrontendService`: a querier's result for one of this frontend's parts.
    pub fn serve_rpc(&self, c: &Call<'_>, method: &str) -> Reply {
        if method != "Result" {
            return c.unimplemented();
        }
        let (id, result) = wire::decode_result(c.msg).map_err(|e| RpcError::invalid(format!("a result: {e}")))?;
        match self.pending().remove(&id) {
            Some(tx) => {
                let _ = tx.send(result);
            }
            // Its client went away, or another querier answered first (a part put back
            // after its querier was thought lost).
            None => {
                self.counters.late_results.fetch_add(1, Relaxed);
            }
        }
        Ok(Vec::new())
    }

    pub fn render_metrics(&self, out: &mut String) {
        let c = &self.counters;
        let counters = [
            ("kiln_query_frontend_queries_total", "Queries the frontend evaluated through the schedulers.", &c.queries),
            ("kiln_query_frontend_split_parts_total", "Parts those queries were split into.", &c.parts),
            (
                "kiln_query_frontend_late_results_total",
                "Results that arrived for parts no longer waited for.",
                &c.late_results,
            ),
            (
                "kiln_query_frontend_reenqueued_parts_total",
                "Parts enqueued again because their scheduler left the ring.",
                &c.reenqueued,
            ),
            (
                "kiln_query_frontend_refused_parts_total",
                "Parts a scheduler refused (too many outstanding requests).",
                &c.refused,
            ),
            (
                "kiln_query_frontend_cancelled_parts_total",
                "Parts cancelled because their client went away.",
                &c.cancelled,
            ),
            (
                "kiln_query_frontend_results_cache_runs_merged_total",
                "Runs of cached parts whose merged answer was put in the results cache as one entry.",
                &c.runs_merged,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
        }
        let pending = self.pending().len();
        let name = "kiln_query_frontend_pending_parts";
        let _ = writeln!(out, "# HELP {name} Parts waiting for their result.\n# TYPE {name} gauge\n{name} {pending}");
        if let Some(cache) = self.cache() {
            let s = cache.stats();
            let rows: [(&str, &str, &str, u64); 5] = [
                (
                    "kiln_query_frontend_results_cache_hits_total",
                    "Parts answered from the results cache.",
                    "counter",
                    s.hits,
                ),
                (
                    "kiln_query_frontend_results_cache_misses_total",
                    "Cacheable parts not in the results cache.",
                    "counter",
                    s.misses,
                ),
                (
                    "kiln_query_frontend_results_cache_evictions_total",
                    "Entries evicted to stay within the bound.",
                    "counter",
                    s.evicted,
                ),
                (
                    "kiln_query_frontend_results_cache_entries",
                    "Entries in the results cache.",
                    "gauge",
                    s.entries as u64,
                ),
                (
                    "kiln_query_frontend_results_cache_bytes",
                    "Bytes held by the results cache.",
                    "gauge",
                    s.bytes as u64,
                ),
            ];
            for (name, help, kind, v) in rows {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
            }
        }
    }
}

/// A part's encoded results, as a querier sent them or the cache kept them.
fn decode_part(bytes: &[u8]) -> Result<Vec<QueryResult>, RpcError> {
    decode_results(bytes).map_err(|e| RpcError::internal(format!("a querier's results: {e}")))
}

/// The parts (in time order, each with whether it is cacheable) that one cache entry of
/// their merged answer stands for: the cacheable ones after the first, when there are two
/// or more. The first part is left out: it starts where the query does, mid-interval, so
/// it moves with every query of a sliding range and a run holding it would never be asked
/// again; the runs after it start and end on interval boundaries, and the cacheable parts
/// are the oldest, so they are consecutive.
pub fn cached_run(parts: &[(QueryRequest, bool)]) -> Option<std::ops::Range<usize>> {
    let n = parts.iter().skip(1).take_while(|(_, c)| *c).count();
    (n >= 2).then_some(1..1 + n)
}

/// The frontend on one core: evaluates queries through the schedulers.
pub struct Frontend {
    pub shared: Arc<FrontendShared>,
    cluster: Arc<Cluster>,
    pool: Rc<Pool>,
    limits: Arc<TenantLimits>,
}

impl Frontend {
    pub fn new(shared: Arc<FrontendShared>, cluster: Arc<Cluster>, pool: Rc<Pool>, limits: Arc<TenantLimits>) -> Self {
        Frontend { shared, cluster, pool, limits }
    }

    /// Every part's partial results for `req` (see the module doc): what a querier's cores
    /// would give, for the querier's merge.
    pub async fn fan_out(&self, req: QueryRequest) -> Result<Vec<QueryResult>, RpcError> {
        let sel = req.selection();
        let tenant: Vec<&str> = sel.tenants.iter().map(|t| t.as_str()).collect();
        let tenant = tenant.join("|");
        let limits = self.limits.for_tenant(sel.tenants.first().map_or("", |t| t.as_str()));
        let now_ms = crate::timeparse::now_ns() / 1_000_000;
        let mut parts: Vec<(QueryRequest, bool)> =
            split::split(&req, limits.split_queries_by_interval.as_millis() as i64)
                .into_iter()
                .map(|p| {
                    let cacheable = self.cacheable(&p, now_ms);
                    (p, cacheable)
                })
                .collect();
        if self.shared.cache.is_some() {
            // Parts that cannot be cached (the recent ones) run as one job: a query already
            // runs on every core of every ingester and store-gateway, so separate recent
            // parts would only read the same blocks and heads once each.
            parts = split::coalesce(parts);
        }
        let parallel = match limits.max_query_parallelism {
            0 => parts.len(),
            n => n,
        };
        self.shared.counters.queries.fetch_add(1, Relaxed);
        self.shared.counters.parts.fetch_add(parts.len() as u64, Relaxed);
        // The run of cached parts, as one cache entry of its merged answer: from the cache,
        // one answer stands for all of them; else the parts run (each from the cache or a
        // querier) and their merge is kept for the next query.
        let run = cached_run(&parts);
        let run_key = run.clone().map(|r| {
            let mut joined = parts[r.start].0.clone();
            joined.selection_mut().end_ms = parts[r.end - 1].0.selection().end_ms;
            encode_request(&joined)
        });
        let run_hit = match &run_key {
            Some(k) => self.shared.cache().and_then(|mut c| c.get(k)),
            None => None,
        };
        let mut futs: Vec<Fallible<'_, Vec<QueryResult>, RpcError>> = Vec::with_capacity(parts.len());
        for (i, (p, c)) in parts.into_iter().enumerate() {
            match (&run_hit, &run) {
                (Some(bytes), Some(r)) if r.contains(&i) => {
                    if i == r.start {
                        let bytes = bytes.clone();
                        futs.push(Box::pin(async move { decode_part(&bytes) }));
                    }
                }
                _ => futs.push(Box::pin(self.part(&tenant, p, c))),
            }
        }
        let answers = try_join_bounded(futs, parallel).await?;
        // On a miss nothing was left out, so the run's answers are at its parts' places.
        if let (None, Some(r), Some(key)) = (run_hit, run, run_key) {
            if let (Some(one), Some(mut c)) = (merge::merge(answers[r].iter().flatten()), self.shared.cache()) {
                c.put(key, Bytes::from(encode_results(std::slice::from_ref(&one))));
                self.shared.counters.runs_merged.fetch_add(1, Relaxed);
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Whether a part's answer may be kept: a split kind, wholly before the freshness
    /// window and before every one of its tenants' `-validation.reject-older-than` at `now_ms`.
    fn cacheable(&self, part: &QueryRequest, now_ms: i64) -> bool {
        self.shared.cache.is_some() && split::splits(part) && {
            let sel = part.selection();
            let reject =
                sel.tenants.iter().map(|t| self.limits.for_tenant(t.as_str()).reject_older_than.as_millis() as i64);
            cache::cacheable(sel.end_ms, now_ms, self.shared.settings.max_cache_freshness.as_millis() as i64, reject)
        }
    }

    /// One part: from the cache when `cacheable` and asked before, else run by a querier.
    async fn part(&self, tenant: &str, part: QueryRequest, cacheable: bool) -> Result<Vec<QueryResult>, RpcError> {
        let request = encode_request(&part);
        let cached = if cacheable { self.shared.cache().and_then(|mut c| c.get(&request)) } else { None };
        let bytes = match cached {
            Some(b) => b,
            None => {
                let b = self.run_job(tenant, Bytes::from(request.clone())).await?;
                if cacheable {
                    if let Some(mut c) = self.shared.cache() {
                        c.put(request, b.clone());
                    }
                }
                b
            }
        };
        decode_part(&bytes)
    }

    /// Enqueues one job and waits for its result.
    async fn run_job(&self, tenant: &str, request: Bytes) -> Result<Bytes, RpcError> {
        let id = self.shared.next_id();
        let (tx, rx) = flume::bounded(1);
        {
            let mut pending = self.shared.pending();
            if pending.len() >= MAX_PENDING_PARTS {
                return Err(RpcError::new(
                    Code::ResourceExhausted,
                    format!("the query-frontend has {MAX_PENDING_PARTS} query parts in flight, its limit; retry later"),
                ));
            }
            pending.insert(id, tx);
        }
        let waiting = Outstanding { frontend: self, id, state: Rc::default() };
        let job =
            wire::Job { query_id: id, frontend: self.shared.settings.addr.clone(), tenant: tenant.into(), request };
        let body = Bytes::from(wire::encode_job(&job));
        self.enqueue(id, &body, None, &waiting.state).await?;
        loop {
            match monoio::time::timeout(CHECK_EVERY, rx.recv_async()).await {
                Ok(Ok(r)) => {
                    waiting.state.answered.set(true);
                    return r;
                }
                Ok(Err(_)) => return Err(RpcError::internal("the part's result channel closed")),
                Err(_) => {
                    let held_by = waiting.state.scheduler.borrow().clone().unwrap_or_default();
                    if !self.scheduler_alive(&held_by) {
                        tracing::warn!(scheduler = %held_by, "the query-scheduler holding a query part left; enqueuing it again");
                        self.shared.counters.reenqueued.fetch_add(1, Relaxed);
                        self.enqueue(id, &body, Some(&held_by), &waiting.state).await?;
                    }
                }
            }
        }
    }

    /// The schedulers to enqueue at: `-query-frontend.scheduler-address`, or every ACTIVE,
    /// healthy query-scheduler of the ring.
    fn schedulers(&self) -> Vec<String> {
        schedulers(&self.cluster, &self.shared.settings.scheduler_address)
    }

    fn scheduler_alive(&self, addr: &str) -> bool {
        self.schedulers().iter().any(|a| a == addr)
    }

    /// Enqueues at one scheduler (spread by query ID; the next one when a scheduler cannot
    /// be reached, `avoid` last), and records in `part` the scheduler that took it.
    async fn enqueue(&self, id: u64, body: &Bytes, avoid: Option<&str>, part: &Rc<PartState>) -> Result<(), RpcError> {
        let mut all = self.schedulers();
        if all.is_empty() {
            return Err(RpcError::new(
                Code::Unavailable,
                "no query-scheduler is in the ring (run -target=query-scheduler, or set -query-frontend.scheduler-address)",
            ));
        }
        let n = all.len();
        all.rotate_left((id % n as u64) as usize);
        if let Some(a) = avoid {
            if let Some(i) = all.iter().position(|s| s == a) {
                let s = all.remove(i);
                all.push(s);
            }
        }
        let mut errors = Vec::new();
        for addr in all {
            // A connection that broke is dialled again once (the job may then be queued
            // twice: the second result is dropped as late).
            for attempt in 0..2 {
                match self.enqueue_at(&addr, id, body.clone(), part).await {
                    Ok(()) => return Ok(()),
                    Err(CallError::Answer { code, msg, .. }) if code == Code::ResourceExhausted.as_str() => {
                        self.shared.counters.refused.fetch_add(1, Relaxed);
                        return Err(RpcError::new(Code::ResourceExhausted, msg));
                    }
                    Err(e @ CallError::Transport { .. }) if attempt == 0 => {
                        tracing::debug!(error = %e, "enqueuing a query part; trying again");
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        break;
                    }
                }
            }
        }
        Err(RpcError::new(Code::Unavailable, format!("no query-scheduler took the query: {}", errors.join("; "))))
    }

    /// One `Enqueue` call, run as a task of its own: a part dropped while its call is in
    /// flight (the query failed, or its client went away) lets the call finish instead of
    /// resetting its stream — a burst of resets is what HTTP/2 servers close a connection
    /// over, failing every other call on it — and the task then takes the job off again.
    async fn enqueue_at(&self, addr: &str, id: u64, body: Bytes, part: &Rc<PartState>) -> Result<(), CallError> {
        let (tx, rx) = flume::bounded(1);
        let (pool, addr, part, shared) = (self.pool.clone(), addr.to_string(), part.clone(), self.shared.clone());
        monoio::spawn(async move {
            let r = pool.call(&addr, scheduler::ENQUEUE_PATH, body, SCHEDULER_CALL_TIMEOUT).await.map(|_| ());
            if r.is_ok() {
                *part.scheduler.borrow_mut() = Some(addr.clone());
                if part.dropped.get() {
                    cancel(&shared, &pool, addr, id).await;
                }
            }
            let _ = tx.send(r);
        });
        rx.recv_async().await.unwrap_or_else(|_| {
            Err(CallError::Transport { addr: String::new(), msg: "the enqueue task ended without an answer".into() })
        })
    }
}

/// Takes part `id` off the queue of the scheduler at `addr`.
async fn cancel(shared: &FrontendShared, pool: &Pool, addr: String, id: u64) {
    shared.counters.cancelled.fetch_add(1, Relaxed);
    let body = Bytes::from(wire::encode_who(&shared.settings.addr, &[id]));
    if let Err(e) = pool.call(&addr, scheduler::CANCEL_PATH, body, SCHEDULER_CALL_TIMEOUT).await {
        tracing::debug!(error = %e, "cancelling a query part");
    }
}

/// The schedulers a frontend or querier talks to: the configured address, or every ACTIVE,
/// healthy query-scheduler of the ring (by instance ID).
pub fn schedulers(cluster: &Cluster, configured: &str) -> Vec<String> {
    if !configured.is_empty() {
        return vec![configured.to_string()];
    }
    let snap = cluster.snapshot();
    snap.instances()
        .iter()
        .enumerate()
        .filter(|(i, d)| {
            d.components.has(Components::QUERY_SCHEDULER) && d.state == State::Active && snap.healthy(*i as u32)
        })
        .map(|(_, d)| d.addr.clone())
        .collect()
}

/// What a part's waiting future and its enqueue task both know (one core, no lock).
#[derive(Default)]
struct PartState {
    /// The scheduler that took the part, once one did.
    scheduler: std::cell::RefCell<Option<String>>,
    answered: std::cell::Cell<bool>,
    /// The waiting future is gone: an enqueue that succeeds now takes the job off again.
    dropped: std::cell::Cell<bool>,
}

/// A part waiting for its result. Dropped without its answer (the client went away, or
/// another part failed the query): it stops waiting and is taken off its scheduler's queue
/// (by its enqueue task, when that is still in flight).
struct Outstanding<'a> {
    frontend: &'a Frontend,
    id: u64,
    state: Rc<PartState>,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.frontend.shared.pending().remove(&self.id);
        self.state.dropped.set(true);
        if self.state.answered.get() {
            return;
        }
        let Some(addr) = self.state.scheduler.borrow_mut().take() else { return };
        let (shared, pool, id) = (self.frontend.shared.clone(), self.frontend.pool.clone(), self.id);
        monoio::spawn(async move { cancel(&shared, &pool, addr, id).await });
    }
}

/// A fallible future run by `try_join_bounded`.
type Fallible<'a, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + 'a>>;

/// Runs `futs` with at most `limit` of them in progress at once, in this task (dropping the
/// returned future drops every one of them); their outputs in order, or the first error —
/// the others are dropped then.
async fn try_join_bounded<'a, T, E>(futs: Vec<Fallible<'a, T, E>>, limit: usize) -> Result<Vec<T>, E> {
    let n = futs.len();
    let limit = limit.max(1);
    let mut waiting = futs.into_iter().enumerate();
    let mut active: Vec<(usize, Fallible<'a, T, E>)> = Vec::new();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut done = 0;
    std::future::poll_fn(move |cx| loop {
        while active.len() < limit {
            match waiting.next() {
                Some(f) => active.push(f),
                None => break,
            }
        }
        let mut progressed = false;
        let mut i = 0;
        while i < active.len() {
            match active[i].1.as_mut().poll(cx) {
                Poll::Ready(Ok(v)) => {
                    out[active[i].0] = Some(v);
                    drop(active.swap_remove(i));
                    done += 1;
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => i += 1,
            }
        }
        if done == n {
            return Poll::Ready(Ok(out.iter_mut().map(|o| o.take().expect("every part answered")).collect()));
        }
        // A finished part made room: start the next ones now (they must be polled to wake us).
        if !progressed {
            return Poll::Pending;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_join_keeps_order_and_stops_at_the_first_error() {
        let rt = |f: Pin<Box<dyn Future<Output = ()>>>| {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap().block_on(f)
        };
        rt(Box::pin(async {
            let running = Rc::new(std::cell::Cell::new(0usize));
            let most = Rc::new(std::cell::Cell::new(0usize));
            let futs: Vec<Fallible<'_, u32, ()>> = (0..10u32)
                .map(|i| {
                    let (running, most) = (running.clone(), most.clone());
                    Box::pin(async move {
                        running.set(running.get() + 1);
                        most.set(most.get().max(running.get()));
                        monoio::time::sleep(Duration::from_millis(u64::from(10 - i))).await;
                        running.set(running.get() - 1);
                        Ok(i)
                    }) as Pin<Box<dyn Future<Output = _>>>
                })
                .collect();
            assert_eq!(try_join_bounded(futs, 3).await.unwrap(), (0..10).collect::<Vec<_>>());
            assert_eq!(most.get(), 3);
            let futs: Vec<Fallible<'_, u32, u32>> =
                vec![Box::pin(async { Ok(1) }), Box::pin(async { Err(2) }), Box::pin(std::future::pending())];
            assert_eq!(try_join_bounded(futs, 0).await, Err(2));
        }));
    }

    #[test]
    fn the_cached_run_is_the_cacheable_parts_after_the_first() {
        let part = |c: bool| (QueryRequest::MergeTree(split::tests::sel(0, 1)), c);
        let run = |flags: &[bool]| cached_run(&flags.iter().map(|&c| part(c)).collect::<Vec<_>>());
        assert_eq!(run(&[true, true, true, true, false]), Some(1..4));
        assert_eq!(run(&[false, true, true, false]), Some(1..3));
        // One cacheable part after the first is no run; nor are parts that are not cacheable.
        assert_eq!(run(&[true, true, false]), None);
        assert_eq!(run(&[true, false, true, true]), None);
        assert_eq!(run(&[true]), None);
        assert_eq!(run(&[]), None);
    }
}
