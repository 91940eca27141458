//! The querier's workers (Pyroscope's pull model): when the cluster has query-schedulers
//! (found in the ring, or `-querier.scheduler-address`), each querier keeps
//! `-querier.max-concurrent` slots open over them — per scheduler ⌈max-concurrent /
//! schedulers⌉, spread over the cores — and each slot asks its scheduler for one job
//! (`Next`), runs it as it would run its own query's evaluation (`direct_fan_out`: this
//! process's cores, or the cluster's replicas), and sends the partial results straight to
//! the frontend that asked (`kiln.frontend.v1.FrontendService/Result`). The next `Next`
//! tells the scheduler the job is done.
use super::{direct_fan_out, Querier};
use crate::cluster::pool::Pool;
use crate::cluster::Cluster;
use crate::query_frontend::{schedulers, RESULT_PATH};
use crate::query_scheduler::{wire, NEXT_PATH, NEXT_WAIT};
use crate::service::RpcError;
use bytes::Bytes;
use kiln_shards::query::wire::{decode_request, encode_results};
use rustc_hash::FxHashSet;
use std::cell::RefCell;
use std::fmt::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// How often the slots are matched to the schedulers in the ring.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long handing a result to its frontend may take.
const RESULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause after a scheduler could not be reached or answered nonsense.
const BACKOFF: Duration = Duration::from_secs(1);

/// The workers' settings and counters, shared by every core.
pub struct Workers {
    /// `-querier.max-concurrent`.
    pub max_concurrent: usize,
    /// `-querier.scheduler-address`; empty: the ring's schedulers.
    pub scheduler_address: String,
    jobs: AtomicU64,
    failed: AtomicU64,
    undelivered: AtomicU64,
    busy: AtomicU64,
}

impl Workers {
    pub fn new(max_concurrent: usize, scheduler_address: String) -> Self {
        Workers {
            max_concurrent,
            scheduler_address,
            jobs: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            undelivered: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    pub fn render_metrics(&self, out: &mut String) {
        let name = "kiln_querier_worker_jobs_total";
        let _ =
            writeln!(out, "# HELP {name} Jobs this querier pulled from schedulers, by outcome.\n# TYPE {name} counter");
        let failed = self.failed.load(Relaxed);
        let _ = writeln!(out, "{name}{{outcome=\"ok\"}} {}", self.jobs.load(Relaxed).saturating_sub(failed));
        let _ = writeln!(out, "{name}{{outcome=\"error\"}} {failed}");
        let name = "kiln_querier_worker_undelivered_results_total";
        let _ = writeln!(
            out,
            "# HELP {name} Results that could not be handed to their frontend.\n# TYPE {name} counter\n{name} {}",
            self.undelivered.load(Relaxed)
        );
        let name = "kiln_querier_worker_busy_slots";
        let _ = writeln!(
            out,
            "# HELP {name} Slots running a job now.\n# TYPE {name} gauge\n{name} {}",
            self.busy.load(Relaxed)
        );
    }
}

/// A slot: which scheduler, and which of its slots.
type Slot = (String, usize);

/// One core's share of the slots.
struct CoreSlots {
    wanted: RefCell<FxHashSet<Slot>>,
    running: RefCell<FxHashSet<Slot>>,
}

/// Starts this core's part of the workers.
pub fn start(core: u32, cores: u32, querier: Rc<Querier>, cluster: Arc<Cluster>, pool: Rc<Pool>, w: Arc<Workers>) {
    let slots = Rc::new(CoreSlots { wanted: RefCell::default(), running: RefCell::default() });
    monoio::spawn(async move {
        loop {
            let addrs = schedulers(&cluster, &w.scheduler_address);
            let per = w.max_concurrent.div_ceil(addrs.len().max(1)).max(1);
            let mut wanted = FxHashSet::default();
            for (s, addr) in addrs.iter().enumerate() {
                for j in 0..per {
                    if (s * per + j) % cores as usize == core as usize {
                        wanted.insert((addr.clone(), j));
                    }
                }
            }
            let start: Vec<Slot> = wanted.difference(&slots.running.borrow()).cloned().collect();
            *slots.wanted.borrow_mut() = wanted;
            for slot in start {
                slots.running.borrow_mut().insert(slot.clone());
                let ctx = (querier.clone(), cluster.clone(), pool.clone(), w.clone(), slots.clone());
                monoio::spawn(work(slot, ctx));
            }
            monoio::time::sleep(REFRESH_EVERY).await;
        }
    });
}

type Ctx = (Rc<Querier>, Arc<Cluster>, Rc<Pool>, Arc<Workers>, Rc<CoreSlots>);

/// One slot: asks its scheduler for a job, runs it, sends the result, until the slot is no
/// longer wanted (its scheduler left the ring).
async fn work(slot: Slot, (querier, cluster, pool, w, slots): Ctx) {
    let addr = slot.0.clone();
    let mut done: Vec<u64> = Vec::new();
    while slots.wanted.borrow().contains(&slot) {
        let body = Bytes::from(wire::encode_who(&cluster.self_id, &done));
        let answer = pool.call(&addr, NEXT_PATH, body, NEXT_WAIT + Duration::from_secs(10)).await;
        let job = match answer.map_err(|e| e.to_string()).and_then(|b| wire::decode_next(&b)) {
            Ok(j) => {
                done.clear();
                j
            }
            Err(e) => {
                tracing::debug!(scheduler = %addr, error = %e, "asking a query-scheduler for work");
                monoio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let Some(job) = job else { continue };
        w.jobs.fetch_add(1, Relaxed);
        w.busy.fetch_add(1, Relaxed);
        let result: Result<Vec<u8>, RpcError> = match decode_request(&job.request) {
            Ok(req) => direct_fan_out(&querier, req).await.map(|parts| encode_results(&parts)),
            Err(e) => Err(RpcError::invalid(format!("a query part: {e}"))),
        };
        w.busy.fetch_sub(1, Relaxed);
        if result.is_err() {
            w.failed.fetch_add(1, Relaxed);
        }
        let body = Bytes::from(wire::encode_result(job.query_id, &result));
        if let Err(e) = pool.call(&job.frontend, RESULT_PATH, body, RESULT_TIMEOUT).await {
            w.undelivered.fetch_add(1, Relaxed);
            tracing::warn!(frontend = %job.frontend, error = %e, "handing a query part's result to its frontend failed");
        }
        done.push(job.query_id);
    }
    slots.running.borrow_mut().remove(&slot);
}
