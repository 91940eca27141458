//! The load loops, one monoio executor per thread.
//!
//! 1. The main thread picks a common start (a little ahead, so every runtime is up) and a
//!    deadline `start + duration`, then starts `threads` threads, each with its own
//!    `RuntimeBuilder::<FusionDriver>` runtime (io_uring, or epoll where it is blocked).
//! 2. Each thread builds its own request generator (nothing mutable is shared) and runs:
//!    * closed loop: its share of the connections (`c % threads == t`), each connecting and
//!      sending back to back until the deadline; latency is measured from the send;
//!    * open loop: its share of the global schedule (`schedule`), spawning one task per due
//!      request onto a per-thread connection pool, at most `max_in_flight / threads` at once;
//!      latency is measured from the *due* time, so queueing behind a slow server counts. The
//!      due requests come from a pacer thread (`schedule::pacer`), not the runtime's
//!      millisecond timer, so the client's own lateness stays in tens of microseconds.
//! 3. Every second each thread sends its interval `Stats` to the main thread, which prints a
//!    progress line; at the end the threads' totals are merged into the report.
//!
//! Every loop stops issuing at the deadline; requests in flight then finish or time out
//! (`--timeout`), so a run lasts at most `duration + timeout` plus start-up.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::client::{self, Conn, Outcome, Prepared, Target};
use crate::flags::Load;
use crate::schedule;
use crate::stats::{progress_line, Sample, Stats};

/// Builds requests. One per thread, so it may keep thread-local state.
pub trait Generator {
    /// Request number `k` (global over all threads and connections).
    fn prepare(&mut self, k: u64) -> Prepared;
}

/// Makes a thread's generator, on that thread.
pub type GeneratorFactory = Arc<dyn Fn(usize) -> Box<dyn Generator> + Send + Sync>;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub target: Target,
    pub h2: bool,
    pub load: Load,
    pub threads: usize,
    pub duration: Duration,
    pub timeout: Duration,
    pub max_in_flight: usize,
}

/// What the main thread hears from the executors.
enum Msg {
    Interval(Box<Stats>),
    Done,
}

/// How long the runtimes get to start before the common start time.
const STARTUP: Duration = Duration::from_millis(50);
const TIMEOUT_MESSAGE: &str = "no answer within --timeout";
/// Pause after a failed connect before the next try, so a dead server is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Runs the load and returns the merged stats and the measured wall time. `progress` gets one
/// line per second.
pub fn run(
    cfg: &EngineConfig,
    factory: GeneratorFactory,
    mut progress: impl FnMut(&str),
) -> Result<(Stats, Duration), String> {
    assert!(cfg.threads > 0);
    let start = Instant::now() + STARTUP;
    let deadline = start + cfg.duration;
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut handles = Vec::with_capacity(cfg.threads);
    for t in 0..cfg.threads {
        let ctx = ThreadCtx { cfg: cfg.clone(), thread: t, start, deadline };
        let tx = tx.clone();
        let factory = factory.clone();
        let handle = std::thread::Builder::new()
            .name(format!("kiln-load-{t}"))
            .spawn(move || thread_main(ctx, factory, tx))
            .map_err(|e| format!("cannot start thread: {e}"))?;
        handles.push(handle);
    }
    drop(tx);
    let mut done = 0;
    let mut second = 1u64;
    let mut interval = Stats::new();
    while done < cfg.threads {
        // Threads flush on whole seconds after start; print a little later to gather them.
        let tick = start + Duration::from_secs(second) + Duration::from_millis(100);
        let wait = tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Interval(s)) => interval.merge(&s),
            Ok(Msg::Done) => done += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The threads flushed exactly one second of work.
                progress(&progress_line(second, &interval, Duration::from_secs(1)));
                interval = Stats::new();
                second += 1;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let elapsed = Instant::now().saturating_duration_since(start);
    if interval.requests > 0 {
        let window = elapsed.saturating_sub(Duration::from_secs(second - 1));
        progress(&progress_line(second, &interval, window));
    }
    let mut total = Stats::new();
    for h in handles {
        let stats = h.join().map_err(|_| "a load thread panicked".to_string())??;
        total.merge(&stats);
    }
    Ok((total, elapsed))
}

struct ThreadCtx {
    cfg: EngineConfig,
    thread: usize,
    start: Instant,
    deadline: Instant,
}

/// Per-thread state shared by that thread's tasks (never across threads).
struct Local {
    ctx: ThreadCtx,
    generator: RefCell<Box<dyn Generator>>,
    interval: RefCell<Stats>,
    total: RefCell<Stats>,
    tx: mpsc::Sender<Msg>,
}

impl Local {
    fn record(&self, req: &Prepared, latency: Duration, outcome: Result<u64, &str>, message: Option<&str>) {
        self.interval.borrow_mut().record(Sample {
            kind: req.kind,
            latency: Some(latency),
            outcome,
            message,
            bytes_wire: req.body.len() as u64,
            bytes_uncompressed: req.bytes_uncompressed,
        });
    }

    /// A request that never reached the server: counted, but no bytes and no latency.
    fn record_unsent(&self, req: &Prepared, key: &str, message: &str) {
        self.interval.borrow_mut().record(Sample {
            kind: req.kind,
            latency: None,
            outcome: Err(key),
            message: Some(message),
            bytes_wire: 0,
            bytes_uncompressed: 0,
        });
    }

    fn flush(&self) {
        let interval = std::mem::take(&mut *self.interval.borrow_mut());
        self.total.borrow_mut().merge(&interval);
        let _ = self.tx.send(Msg::Interval(Box::new(interval)));
    }
}

fn thread_main(ctx: ThreadCtx, factory: GeneratorFactory, tx: mpsc::Sender<Msg>) -> Result<Stats, String> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("cannot build the runtime: {e}"))?;
    let generator = factory(ctx.thread);
    let local = Rc::new(Local {
        ctx,
        generator: RefCell::new(generator),
        interval: RefCell::new(Stats::new()),
        total: RefCell::new(Stats::new()),
        tx,
    });
    let result = rt.block_on(thread_run(local.clone()));
    local.flush();
    let _ = local.tx.send(Msg::Done);
    result?;
    let total = std::mem::take(&mut *local.total.borrow_mut());
    Ok(total)
}

async fn thread_run(local: Rc<Local>) -> Result<(), String> {
    let running = Rc::new(Cell::new(true));
    let reporter = monoio::spawn(report_every_second(local.clone(), running.clone()));
    sleep_until(local.ctx.start).await;
    match local.ctx.cfg.load {
        Load::Connections(connections) => {
            let threads = local.ctx.cfg.threads;
            let mut tasks = Vec::new();
            for c in (local.ctx.thread..connections).step_by(threads) {
                let local = local.clone();
                tasks.push(monoio::spawn(closed_loop(local, c as u64, connections as u64)));
            }
            for t in tasks {
                t.await;
            }
        }
        Load::Rate(rate) => open_loop(local.clone(), rate).await,
    }
    running.set(false);
    reporter.await;
    Ok(())
}

async fn report_every_second(local: Rc<Local>, running: Rc<Cell<bool>>) {
    let mut second = 1u32;
    loop {
        // Sleep in short steps so the run's end is not delayed by up to a second.
        let tick = local.ctx.start + Duration::from_secs(u64::from(second));
        while Instant::now() < tick {
            if !running.get() {
                return;
            }
            let step = tick.saturating_duration_since(Instant::now());
            monoio::time::sleep(step.min(Duration::from_millis(50))).await;
        }
        local.flush();
        second += 1;
    }
}

async fn sleep_until(when: Instant) {
    if when > Instant::now() {
        monoio::time::sleep_until(monoio::time::Instant::from_std(when)).await;
    }
}

/// Runs `fut` with the per-request timeout.
async fn with_timeout<T>(local: &Local, fut: impl std::future::Future<Output = T>) -> Option<T> {
    monoio::time::timeout(local.ctx.cfg.timeout, fut).await.ok()
}

/// One closed-loop connection: connect, then send back to back until the deadline.
async fn closed_loop(local: Rc<Local>, first: u64, step: u64) {
    let cfg = &local.ctx.cfg;
    let mut conn: Option<Conn> = None;
    let mut k = first;
    while Instant::now() < local.ctx.deadline {
        if conn.as_ref().is_none_or(Conn::is_closed) {
            match with_timeout(&local, client::connect(&cfg.target, cfg.h2)).await {
                Some(Ok(c)) => conn = Some(c),
                Some(Err(message)) => {
                    let req = local.generator.borrow_mut().prepare(k);
                    k += step;
                    local.record_unsent(&req, "connect", &message);
                    let left = local.ctx.deadline.saturating_duration_since(Instant::now());
                    monoio::time::sleep(RECONNECT_PAUSE.min(left)).await;
                    continue;
                }
                None => {
                    let req = local.generator.borrow_mut().prepare(k);
                    k += step;
                    local.record_unsent(&req, "timeout", TIMEOUT_MESSAGE);
                    let left = local.ctx.deadline.saturating_duration_since(Instant::now());
                    monoio::time::sleep(RECONNECT_PAUSE.min(left)).await;
                    continue;
                }
            }
        }
        let req = local.generator.borrow_mut().prepare(k);
        k += step;
        let sent = Instant::now();
        let c = conn.as_mut().expect("connected above");
        let outcome = with_timeout(&local, client::exchange(c, &cfg.target, &req)).await;
        let latency = sent.elapsed();
        if !record_outcome(&local, &req, latency, outcome) {
            conn = None;
        }
    }
}

/// Records an exchange; false when the connection must be dropped.
fn record_outcome(local: &Local, req: &Prepared, latency: Duration, outcome: Option<Outcome>) -> bool {
    match outcome {
        Some(Outcome::Ok { received }) => {
            local.record(req, latency, Ok(received), None);
            true
        }
        Some(Outcome::Status { key, message }) => {
            local.record(req, latency, Err(&key), Some(&message));
            true
        }
        Some(Outcome::Broken(message)) => {
            local.record(req, latency, Err("io"), Some(&message));
            false
        }
        None => {
            local.record(req, latency, Err("timeout"), Some(TIMEOUT_MESSAGE));
            false
        }
    }
}

/// Open loop: requests on the fixed global schedule, each in its own task.
async fn open_loop(local: Rc<Local>, rate: f64) {
    let cfg = &local.ctx.cfg;
    let in_flight_max = cfg.max_in_flight.div_ceil(cfg.threads).max(1);
    let gate = Rc::new(Gate::new(in_flight_max));
    let pool = Rc::new(Pool::default());
    let (first, step) = schedule::thread_share(local.ctx.thread, cfg.threads);
    let due_requests = schedule::pacer(local.ctx.start, local.ctx.deadline, first, step, rate);
    while let Ok((k, due)) = due_requests.recv_async().await {
        // Waiting here delays the send, not the clock: latency still counts from `due`.
        gate.acquire().await;
        let req = local.generator.borrow_mut().prepare(k);
        let local = local.clone();
        let gate = gate.clone();
        let pool = pool.clone();
        monoio::spawn(async move {
            open_loop_request(&local, &pool, req, due).await;
            gate.release();
        });
    }
    gate.idle().await;
}

async fn open_loop_request(local: &Local, pool: &Pool, req: Prepared, due: Instant) {
    let cfg = &local.ctx.cfg;
    let mut conn = match pool.take(cfg.h2) {
        Some(c) => c,
        None => match with_timeout(local, client::connect(&cfg.target, cfg.h2)).await {
            Some(Ok(c)) => c,
            Some(Err(message)) => {
                local.record_unsent(&req, "connect", &message);
                return;
            }
            None => {
                local.record_unsent(&req, "timeout", TIMEOUT_MESSAGE);
                return;
            }
        },
    };
    let outcome = with_timeout(local, client::exchange(&mut conn, &cfg.target, &req)).await;
    if record_outcome(local, &req, due.elapsed(), outcome) {
        pool.put(conn);
    }
}

/// Idle connections of one thread. HTTP/1.1 connections carry one request at a time and are
/// taken out while in use; one HTTP/2 connection is shared by all requests.
#[derive(Default)]
struct Pool {
    idle_h1: RefCell<Vec<Conn>>,
    shared_h2: RefCell<Option<hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>>>,
}

impl Pool {
    fn take(&self, h2: bool) -> Option<Conn> {
        if h2 {
            let shared = self.shared_h2.borrow();
            return shared.as_ref().filter(|s| !s.is_closed()).map(|s| Conn::H2(s.clone()));
        }
        let mut idle = self.idle_h1.borrow_mut();
        while let Some(c) = idle.pop() {
            if !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        match conn {
            Conn::H1(_) => self.idle_h1.borrow_mut().push(conn),
            Conn::H2(send) => {
                let mut shared = self.shared_h2.borrow_mut();
                if shared.as_ref().is_none_or(|s| s.is_closed()) {
                    *shared = Some(send);
                }
            }
        }
    }
}

/// A count of requests in flight with one waiter (the scheduler).
struct Gate {
    count: Cell<usize>,
    max: usize,
    waiter: RefCell<Option<Waker>>,
}

impl Gate {
    fn new(max: usize) -> Self {
        Gate { count: Cell::new(0), max, waiter: RefCell::new(None) }
    }

    async fn acquire(&self) {
        poll_fn(|cx| {
            if self.count.get() < self.max {
                self.count.set(self.count.get() + 1);
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn release(&self) {
        debug_assert!(self.count.get() > 0);
        self.count.set(self.count.get() - 1);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    async fn idle(&self) {
        poll_fn(|cx| {
            if self.count.get() == 0 {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
