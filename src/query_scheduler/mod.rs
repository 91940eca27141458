//! The query-scheduler (`-target=query-scheduler`): holds the per-tenant queues of query
//! parts (`queue`) that query-frontends enqueue, and hands them to queriers, which pull one
//! whenever they have a free slot (Pyroscope's pull model). A querier sends the part's
//! result straight to the frontend that asked; the scheduler only learns that it is done.
//!
//! `kiln.scheduler.v1.SchedulerService` (internal, Connect unary over the pooled h2c
//! connections, messages in `wire`):
//! - `Enqueue` (a frontend): queue a job; `resource_exhausted` (429 to the client) past
//!   `-query-scheduler.max-outstanding-requests-per-tenant`.
//! - `Cancel` (a frontend): its client went away; its queued jobs are dropped.
//! - `Next` (a querier): the next job it may run, waiting up to `NEXT_WAIT` for one; the
//!   request names the jobs it finished since its last `Next`. A querier that dies (gone
//!   from the ring, or unhealthy) has its jobs put back at the front of their queues.
//!
//! The queue is process-wide (one `Mutex`, held for a few map operations per call): the
//! scheduler is a small component and its calls are few next to the queries they carry.
pub mod queue;
pub mod wire;

use crate::cluster::Cluster;
use crate::config::TenantLimits;
use crate::service::call::{Call, Reply};
use crate::service::routes::{Class, RpcService};
use crate::service::{Code, RpcError};
use queue::{Queue, Refused};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SERVICE: &str = "kiln.scheduler.v1.SchedulerService";
pub const ENQUEUE_PATH: &str = "/kiln.scheduler.v1.SchedulerService/Enqueue";
pub const CANCEL_PATH: &str = "/kiln.scheduler.v1.SchedulerService/Cancel";
pub const NEXT_PATH: &str = "/kiln.scheduler.v1.SchedulerService/Next";

pub static RPC: &[RpcService] = &[RpcService { name: SERVICE, class: Class::Internal }];

/// How long a querier's `Next` waits for a job before it is answered "none" (it asks again).
pub const NEXT_WAIT: Duration = Duration::from_secs(5);
/// How often, at most, held jobs are checked against the ring for dead queriers.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Upper bounds (seconds) of the queue wait histogram.
const WAIT_BUCKETS: [f64; 8] = [0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

#[derive(Default)]
struct Counters {
    enqueued: AtomicU64,
    refused: AtomicU64,
    cancelled: AtomicU64,
    dispatched: AtomicU64,
    requeued: AtomicU64,
    wait_buckets: [AtomicU64; WAIT_BUCKETS.len()],
    wait_count: AtomicU64,
    wait_micros: AtomicU64,
}

/// The scheduler of this process, shared by every core.
pub struct Scheduler {
    queue: Mutex<Queue>,
    limits: Arc<TenantLimits>,
    cluster: Option<Arc<Cluster>>,
    waiters: AtomicU64,
    last_reap: Mutex<Instant>,
    counters: Counters,
}

impl Scheduler {
    pub fn new(max_outstanding_per_tenant: usize, limits: Arc<TenantLimits>, cluster: Option<Arc<Cluster>>) -> Self {
        Scheduler {
            queue: Mutex::new(Queue::new(max_outstanding_per_tenant)),
            limits,
            cluster,
            waiters: AtomicU64::new(0),
            last_reap: Mutex::new(Instant::now()),
            counters: Counters::default(),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding the lock cannot leave the queue half-changed in a way that
        // matters more than losing it: keep serving.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `-query-frontend.max-queriers-per-tenant` of a queue (tenants `|`-joined: the first's).
    fn max_queriers(&self, tenant: &str) -> usize {
        let first = tenant.split('|').next().unwrap_or("");
        self.limits.for_tenant(first).max_queriers_per_tenant
    }

    pub async fn serve_rpc(&self, c: &Call<'_>, method: &str) -> Reply {
        match method {
            "Enqueue" => self.enqueue(c.msg),
            "Cancel" => self.cancel(c.msg),
            "Next" => self.next(c.msg).await,
            _ => c.unimplemented(),
        }
    }

    fn enqueue(&self, msg: &bytes::Bytes) -> Reply {
        let job = wire::decode_job(msg).map_err(|e| RpcError::invalid(format!("a job: {e}")))?;
        let tenant = job.tenant.clone();
        let r = self.queue().enqueue(job, |t| self.max_queriers(t), Instant::now());
        match r {
            Ok(()) => {
                self.counters.enqueued.fetch_add(1, Relaxed);
                Ok(Vec::new())
            }
            Err(refused) => {
                self.counters.refused.fetch_add(1, Relaxed);
                let msg = match refused {
                    Refused::TenantFull { max } => format!(
                        "too many outstanding requests for tenant {tenant:?}: {max} are queued (-query-scheduler.max-outstanding-requests-per-tenant)"
                    ),
                    Refused::SchedulerFull => format!(
                        "too many outstanding requests: the query-scheduler holds {} jobs, its limit",
                        queue::MAX_QUEUED_JOBS
                    ),
                };
                Err(RpcError::new(Code::ResourceExhausted, msg))
            }
        }
    }

    fn cancel(&self, msg: &bytes::Bytes) -> Reply {
        let (frontend, ids) = wire::decode_who(msg).map_err(|e| RpcError::invalid(format!("a cancellation: {e}")))?;
        let n = self.queue().cancel(&frontend, &ids);
        self.counters.cancelled.fetch_add(n as u64, Relaxed);
        Ok(Vec::new())
    }

    async fn next(&self, msg: &bytes::Bytes) -> Reply {
        let (querier, done) = wire::decode_who(msg).map_err(|e| RpcError::invalid(format!("a querier's call: {e}")))?;
        let now = Instant::now();
        self.reap(now);
        let (tx, rx) = flume::bounded(1);
        let id = self.waiters.fetch_add(1, Relaxed);
        {
            let mut q = self.queue();
            q.querier_seen(&querier, &done, now);
            if let Some(h) = q.take(&querier, |t| self.max_queriers(t), now) {
                drop(q);
                self.dispatched(h.waited);
                return Ok(wire::encode_next(Some(&h.job)));
            }
            q.wait(id, &querier, tx);
        }
        // Taken off the waiters however the call ends; a job handed over a moment before a
        // call that went away goes back to the front of its queue.
        let waiting = Waiting { scheduler: self, id, rx: rx.clone() };
        let job = match monoio::time::timeout(NEXT_WAIT, rx.recv_async()).await {
            Ok(Ok(job)) => Some(job),
            _ => waiting.stop(),
        };
        drop(waiting);
        if job.is_some() {
            // Handed straight from `Enqueue`: it did not wait in the queue.
            self.dispatched(Duration::ZERO);
        }
        Ok(wire::encode_next(job.as_ref()))
    }

    fn dispatched(&self, waited: Duration) {
        let c = &self.counters;
        c.dispatched.fetch_add(1, Relaxed);
        let s = waited.as_secs_f64();
        for (i, b) in WAIT_BUCKETS.iter().enumerate() {
            if s <= *b {
                c.wait_buckets[i].fetch_add(1, Relaxed);
            }
        }
        c.wait_count.fetch_add(1, Relaxed);
        c.wait_micros.fetch_add(waited.as_micros() as u64, Relaxed);
    }

    /// Puts back the jobs of queriers the ring no longer counts as alive (at most once a
    /// second; called as queriers ask for work, which is when a put-back job can run).
    fn reap(&self, now: Instant) {
        let Some(cluster) = &self.cluster else { return };
        {
            let mut last = self.last_reap.lock().unwrap_or_else(|p| p.into_inner());
            if now.duration_since(*last) < REAP_EVERY {
                return;
            }
            *last = now;
        }
        let snap = cluster.snapshot();
        let alive = |q: &str| snap.index_of(q).is_some_and(|i| snap.healthy(i));
        let n = self.queue().requeue_lost(alive, now);
        if n > 0 {
            tracing::warn!(jobs = n, "queriers holding jobs left the ring; their jobs are queued again");
            self.counters.requeued.fetch_add(n as u64, Relaxed);
        }
    }

    pub fn render_metrics(&self, out: &mut String) {
        let now = Instant::now();
        let (lengths, in_flight, connected, waiting) = {
            let q = self.queue();
            let mut l: Vec<(String, usize)> = q.lengths().map(|(t, n)| (t.to_string(), n)).collect();
            l.sort();
            (l, q.in_flight(), q.connected(now), q.waiting())
        };
        let name = "kiln_query_scheduler_queue_length";
        let _ = writeln!(out, "# HELP {name} Jobs queued per tenant (the first {MAX_TENANTS_SHOWN} tenants by name; the rest summed as tenant=\"#others\").\n# TYPE {name} gauge");
        let mut other = 0;
        for (i, (t, n)) in lengths.iter().enumerate() {
            if i < MAX_TENANTS_SHOWN {
                let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {n}", crate::service::label_value(t));
            } else {
                other += n;
            }
        }
        if other > 0 {
            let _ = writeln!(out, "{name}{{tenant=\"#others\"}} {other}");
        }
        let c = &self.counters;
        let gauges = [
            ("kiln_query_scheduler_in_flight", "Jobs held by queriers, not reported done.", in_flight),
            (
                "kiln_query_scheduler_connected_queriers",
                "Queriers that asked for work within the last minute.",
                connected,
            ),
            ("kiln_query_scheduler_waiting_queriers", "Queriers waiting for a job now.", waiting),
            ("kiln_query_scheduler_max_queued_jobs", "Jobs the scheduler queues at most.", queue::MAX_QUEUED_JOBS),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let name = "kiln_query_scheduler_jobs_total";
        let _ = writeln!(out, "# HELP {name} Jobs by what happened to them.\n# TYPE {name} counter");
        for (outcome, v) in [
            ("enqueued", &c.enqueued),
            ("refused", &c.refused),
            ("cancelled", &c.cancelled),
            ("dispatched", &c.dispatched),
            ("requeued", &c.requeued),
        ] {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", v.load(Relaxed));
        }
        let name = "kiln_query_scheduler_queue_wait_seconds";
        let _ = writeln!(out, "# HELP {name} Time a job waited in its queue.\n# TYPE {name} histogram");
        for (i, b) in WAIT_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.wait_buckets[i].load(Relaxed));
        }
        let count = c.wait_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", c.wait_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Tenants listed one by one on `/metrics`.
const MAX_TENANTS_SHOWN: usize = 1000;

/// A querier's open `Next` call, waiting for a job.
struct Waiting<'a> {
    scheduler: &'a Scheduler,
    id: u64,
    rx: flume::Receiver<wire::Job>,
}

impl Waiting<'_> {
    /// Stops waiting; a job handed over in the meantime is returned.
    fn stop(&self) -> Option<wire::Job> {
        let mut q = self.scheduler.queue();
        q.stop_waiting(self.id);
        self.rx.try_recv().ok()
    }
}

impl Drop for Waiting<'_> {
    /// The call went away while waiting: a job handed over goes back to its queue's front.
    fn drop(&mut self) {
        if let Some(job) = self.stop() {
            self.scheduler.queue().put_back(job, Instant::now());
        }
    }
}
