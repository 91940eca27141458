//! The scheduler's queue: one FIFO of jobs per tenant, served round-robin across tenants so
//! one tenant's flood cannot starve another; queriers waiting for work; the jobs queriers
//! hold, so that a querier's death puts its jobs back. No I/O and no clock of its own (the
//! caller passes `now`); a waiting querier is a channel the job is handed through.
//!
//! Bounds (each refused with the flag or constant that sets it): jobs per tenant
//! (`-query-scheduler.max-outstanding-requests-per-tenant`), jobs in all
//! (`MAX_QUEUED_JOBS`), jobs held by queriers (`MAX_IN_FLIGHT`: past it the oldest is
//! forgotten, and its frontend, which watches its own parts, asks again), queriers known
//! (`MAX_QUERIERS`).
use super::wire::Job;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Jobs queued over every tenant.
pub const MAX_QUEUED_JOBS: usize = 100_000;
/// Jobs handed to queriers and not reported done.
pub const MAX_IN_FLIGHT: usize = 100_000;
/// Queriers the scheduler keeps track of.
pub const MAX_QUERIERS: usize = 4096;
/// A querier that has not asked for work for this long is no longer connected.
pub const QUERIER_GONE_AFTER: Duration = Duration::from_secs(60);

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The tenant has `max` jobs queued already.
    TenantFull { max: usize },
    /// The scheduler holds `MAX_QUEUED_JOBS`.
    SchedulerFull,
}

/// A job waiting in its tenant's queue.
struct Queued {
    job: Job,
    since: Instant,
}

/// A querier waiting for a job (its `Next` call is open).
struct Waiter {
    id: u64,
    querier: String,
    tx: flume::Sender<Job>,
}

/// A job a querier took and has not reported done.
struct Held {
    querier: String,
    job: Job,
}

/// What `take`/`hand` tell the caller about a job handed out: how long it waited.
pub struct Handed {
    pub job: Job,
    pub waited: Duration,
}

pub struct Queue {
    max_per_tenant: usize,
    tenants: FxHashMap<Arc<str>, VecDeque<Queued>>,
    /// Tenants with queued jobs, in the order they are served.
    rotation: VecDeque<Arc<str>>,
    queued: usize,
    waiting: VecDeque<Waiter>,
    /// By query ID: IDs are random 64-bit numbers drawn by each frontend, unique in practice
    /// (a frontend's cancellation also names itself, and only its own jobs are removed).
    held: FxHashMap<u64, Held>,
    /// Insertion order of `held`, to forget the oldest past `MAX_IN_FLIGHT`.
    held_order: VecDeque<u64>,
    /// Queriers by instance ID, with when each last asked for work.
    queriers: FxHashMap<String, Instant>,
}

impl Queue {
    pub fn new(max_per_tenant: usize) -> Self {
        Queue {
            max_per_tenant,
            tenants: FxHashMap::default(),
            rotation: VecDeque::new(),
            queued: 0,
            waiting: VecDeque::new(),
            held: FxHashMap::default(),
            held_order: VecDeque::new(),
            queriers: FxHashMap::default(),
        }
    }

    /// Jobs queued per tenant (tenants with none are not listed).
    pub fn lengths(&self) -> impl Iterator<Item = (&str, usize)> {
        self.tenants.iter().map(|(t, q)| (t.as_ref(), q.len()))
    }

    /// Jobs held by queriers.
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }

    /// Queriers that asked for work within `QUERIER_GONE_AFTER`.
    pub fn connected(&self, now: Instant) -> usize {
        self.queriers.values().filter(|t| now.duration_since(**t) < QUERIER_GONE_AFTER).count()
    }

    /// Queriers waiting for a job right now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A querier asked for work: it is connected, and the jobs it names are done.
    pub fn querier_seen(&mut self, querier: &str, done: &[u64], now: Instant) {
        if let Some(t) = self.queriers.get_mut(querier) {
            *t = now;
        } else {
            if self.queriers.len() >= MAX_QUERIERS {
                self.queriers.retain(|_, t| now.duration_since(*t) < QUERIER_GONE_AFTER);
            }
            if self.queriers.len() < MAX_QUERIERS {
                self.queriers.insert(querier.to_string(), now);
            }
        }
        for id in done {
            if self.held.get(id).is_some_and(|h| h.querier == querier) {
                self.held.remove(id);
            }
        }
    }

    /// Whether `querier` is one of the `max` connected queriers that serve `tenant` (0: every
    /// querier): `-query-frontend.max-queriers-per-tenant`, by rendezvous hashing
    /// (`ring::shuffle::pick`: stable per tenant; a querier joining or leaving changes at most
    /// one member of any tenant's set).
    fn serves(&self, tenant: &str, querier: &str, max: usize, now: Instant) -> bool {
        if max == 0 {
            return true;
        }
        let connected: Vec<&str> = self
            .queriers
            .iter()
            .filter(|(q, t)| now.duration_since(**t) < QUERIER_GONE_AFTER || q.as_str() == querier)
            .map(|(q, _)| q.as_str())
            .collect();
        let Some(me) = connected.iter().position(|q| *q == querier) else { return false };
        kiln_shards::ring::shuffle::pick(tenant, &connected, max).contains(&me)
    }

    /// Queues `job`, or hands it at once to a waiting querier that serves its tenant.
    /// `max_queriers(tenant)`: `-query-frontend.max-queriers-per-tenant` of the tenant.
    pub fn enqueue(&mut self, job: Job, max_queriers: impl Fn(&str) -> usize, now: Instant) -> Result<(), Refused> {
        let len = self.tenants.get(job.tenant.as_str()).map_or(0, VecDeque::len);
        if self.max_per_tenant > 0 && len >= self.max_per_tenant {
            return Err(Refused::TenantFull { max: self.max_per_tenant });
        }
        if self.queued >= MAX_QUEUED_JOBS {
            return Err(Refused::SchedulerFull);
        }
        let max = max_queriers(&job.tenant);
        let mut job = job;
        let mut i = 0;
        while i < self.waiting.len() {
            if !self.serves(&job.tenant, &self.waiting[i].querier, max, now) {
                i += 1;
                continue;
            }
            let w = self.waiting.remove(i).expect("index in range");
            let copy = job.clone();
            match w.tx.try_send(job) {
                Ok(()) => {
                    self.hold(&w.querier, copy);
                    return Ok(());
                }
                // The waiter is gone (its call ended): try the next one.
                Err(flume::TrySendError::Disconnected(j)) | Err(flume::TrySendError::Full(j)) => job = j,
            }
        }
        self.push(job, now, false);
        Ok(())
    }

    /// Records that `querier` holds `job` (handed through a waiter's channel or by `take`).
    pub fn hold(&mut self, querier: &str, job: Job) {
        let key = job.query_id;
        if self.held.len() >= MAX_IN_FLIGHT {
            while let Some(old) = self.held_order.pop_front() {
                if self.held.remove(&old).is_some() {
                    break;
                }
            }
        }
        self.held_order.push_back(key);
        // Keep the order list from growing past the map by stale keys.
        if self.held_order.len() > 2 * MAX_IN_FLIGHT {
            let held = &self.held;
            self.held_order.retain(|k| held.contains_key(k));
        }
        self.held.insert(key, Held { querier: querier.to_string(), job });
    }

    fn push(&mut self, job: Job, since: Instant, front: bool) {
        let tenant: Arc<str> = Arc::from(job.tenant.as_str());
        let q = match self.tenants.get_mut(&tenant) {
            Some(q) => q,
            None => {
                self.rotation.push_back(tenant.clone());
                self.tenants.entry(tenant).or_default()
            }
        };
        if front {
            q.push_front(Queued { job, since });
        } else {
            q.push_back(Queued { job, since });
        }
        self.queued += 1;
    }

    /// The next job for `querier`: the first tenant in the rotation it serves gives its
    /// oldest job and goes to the back of the rotation. The job is recorded as held.
    pub fn take(&mut self, querier: &str, max_queriers: impl Fn(&str) -> usize, now: Instant) -> Option<Handed> {
        let pos = (0..self.rotation.len())
            .find(|&i| self.serves(&self.rotation[i], querier, max_queriers(&self.rotation[i]), now))?;
        let tenant = self.rotation.remove(pos).expect("index in range");
        let q = self.tenants.get_mut(&tenant).expect("a rotated tenant has a queue");
        let Queued { job, since } = q.pop_front().expect("a rotated tenant has a job");
        if q.is_empty() {
            self.tenants.remove(&tenant);
        } else {
            self.rotation.push_back(tenant);
        }
        self.queued -= 1;
        self.hold(querier, job.clone());
        Some(Handed { job, waited: now.saturating_duration_since(since) })
    }

    /// A querier waits for a job (nothing was queued for it).
    pub fn wait(&mut self, id: u64, querier: &str, tx: flume::Sender<Job>) {
        self.waiting.push_back(Waiter { id, querier: querier.to_string(), tx });
    }

    /// The waiter `id` stops waiting (its call timed out or went away).
    pub fn stop_waiting(&mut self, id: u64) {
        self.waiting.retain(|w| w.id != id);
    }

    /// A job handed to a querier that could not deliver it goes back to the front of its
    /// tenant's queue.
    pub fn put_back(&mut self, job: Job, now: Instant) {
        self.held.remove(&job.query_id);
        self.push(job, now, true);
    }

    /// Removes the queued and held jobs of `frontend` with these IDs (the client went away,
    /// or the query failed); how many were queued.
    pub fn cancel(&mut self, frontend: &str, ids: &[u64]) -> usize {
        let ids: rustc_hash::FxHashSet<u64> = ids.iter().copied().collect();
        let mut removed = 0;
        self.tenants.retain(|_, q| {
            let before = q.len();
            q.retain(|j| !(j.job.frontend == frontend && ids.contains(&j.job.query_id)));
            removed += before - q.len();
            !q.is_empty()
        });
        let tenants = &self.tenants;
        self.rotation.retain(|t| tenants.contains_key(t));
        self.queued -= removed;
        self.held.retain(|id, h| !(ids.contains(id) && h.job.frontend == frontend));
        removed
    }

    /// Puts back every job held by a querier that `alive` says is gone (killed, or left the
    /// ring): another querier runs it. How many went back.
    pub fn requeue_lost(&mut self, alive: impl Fn(&str) -> bool, now: Instant) -> usize {
        let lost: Vec<u64> = self.held.iter().filter(|(_, h)| !alive(&h.querier)).map(|(k, _)| *k).collect();
        for k in &lost {
            if let Some(h) = self.held.remove(k) {
                self.push(h.job, now, true);
            }
        }
        lost.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn job(tenant: &str, id: u64) -> Job {
        Job { query_id: id, frontend: "f:1".into(), tenant: tenant.into(), request: Bytes::new() }
    }

    fn none(_: &str) -> usize {
        0
    }

    impl Queue {
        /// Jobs queued, over every tenant.
        fn len(&self) -> usize {
            self.queued
        }
    }

    #[test]
    fn tenants_are_served_round_robin() {
        let now = Instant::now();
        let mut q = Queue::new(100);
        for i in 0..50 {
            q.enqueue(job("heavy", i), none, now).unwrap();
        }
        q.enqueue(job("light", 100), none, now).unwrap();
        q.enqueue(job("light", 101), none, now).unwrap();
        let order: Vec<u64> = (0..6).map(|_| q.take("q1", none, now).unwrap().job.query_id).collect();
        // The light tenant's jobs come every other turn despite the heavy tenant's 50.
        assert_eq!(order, [0, 100, 1, 101, 2, 3]);
        assert_eq!(q.len(), 46);
    }

    #[test]
    fn a_full_tenant_is_refused_and_others_are_not() {
        let now = Instant::now();
        let mut q = Queue::new(2);
        q.enqueue(job("a", 1), none, now).unwrap();
        q.enqueue(job("a", 2), none, now).unwrap();
        assert_eq!(q.enqueue(job("a", 3), none, now), Err(Refused::TenantFull { max: 2 }));
        q.enqueue(job("b", 4), none, now).unwrap();
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn cancel_removes_queued_and_held_jobs() {
        let now = Instant::now();
        let mut q = Queue::new(10);
        for i in 0..4 {
            q.enqueue(job("a", i), none, now).unwrap();
        }
        let taken = q.take("q1", none, now).unwrap().job.query_id;
        assert_eq!(q.cancel("f:1", &[taken, 1, 2]), 2);
        assert_eq!((q.len(), q.in_flight()), (1, 0));
        assert_eq!(q.take("q1", none, now).unwrap().job.query_id, 3);
        assert!(q.take("q1", none, now).is_none());
        assert!(q.rotation.is_empty() && q.tenants.is_empty());
    }

    #[test]
    fn a_waiting_querier_gets_the_job_at_once() {
        let now = Instant::now();
        let mut q = Queue::new(10);
        let (tx, rx) = flume::bounded(1);
        q.wait(1, "q1", tx);
        q.enqueue(job("a", 9), none, now).unwrap();
        assert_eq!(rx.try_recv().unwrap().query_id, 9);
        assert_eq!((q.len(), q.waiting()), (0, 0));
        // A waiter whose call went away is skipped; the job is queued.
        let (tx, rx) = flume::bounded(1);
        q.wait(2, "q1", tx);
        drop(rx);
        q.enqueue(job("a", 10), none, now).unwrap();
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn jobs_of_a_lost_querier_go_back_first() {
        let now = Instant::now();
        let mut q = Queue::new(10);
        q.enqueue(job("a", 1), none, now).unwrap();
        q.enqueue(job("a", 2), none, now).unwrap();
        assert_eq!(q.take("dead", none, now).unwrap().job.query_id, 1);
        assert_eq!(q.requeue_lost(|querier| querier != "dead", now), 1);
        assert_eq!(q.take("q2", none, now).unwrap().job.query_id, 1);
        // A job reported done is no longer held.
        q.querier_seen("q2", &[1], now);
        assert_eq!(q.requeue_lost(|_| false, now), 0);
    }

    #[test]
    fn max_queriers_per_tenant_limits_who_serves_a_tenant() {
        let now = Instant::now();
        let mut q = Queue::new(10);
        let queriers: Vec<String> = (0..6).map(|i| format!("querier-{i}")).collect();
        for name in &queriers {
            q.querier_seen(name, &[], now);
        }
        let two = |_: &str| 2;
        let serving: Vec<&String> = queriers.iter().filter(|name| q.serves("t", name, 2, now)).collect();
        assert_eq!(serving.len(), 2);
        q.enqueue(job("t", 1), two, now).unwrap();
        let outsider = queriers.iter().find(|n| !serving.contains(n)).unwrap();
        assert!(q.take(outsider, two, now).is_none());
        assert_eq!(q.take(serving[0], two, now).unwrap().job.query_id, 1);
    }
}
