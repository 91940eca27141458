//! Decoding a large profile off the core that accepted it, so that the small requests queued
//! behind it on that core are not held up (issue 16, "no head-of-line blocking").
//!
//! A core serves every connection the kernel hands it, one request's synchronous work at a
//! time: a 4 MB pprof takes it some 30 ms to decode and normalise, and every push that lands
//! on the same core meanwhile waits that long. Work estimated above [`OFFLOAD_BYTES`] is
//! therefore handed to a small pool of decode threads and awaited; the core goes on serving.
//! The threads are not pinned, so the kernel shares the CPUs between them and the cores in
//! slices of a few milliseconds: a small push waits for a slice, not for the whole decode.
//!
//! Bounded: [`threads`] threads and at most [`QUEUE_PER_THREAD`] jobs waiting per thread.
//! When the queue is full the core decodes the profile itself, as without the pool (the
//! pool is a latency tool, never a queue that grows). The bytes a job holds are the
//! request's own, still counted in the in-flight body budget while the request waits.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

/// Work (inflated profile bytes) from which decoding leaves the core by default: about 4 ms
/// of decode at the measured 100–130 MiB/s (`-distributor.decode-offload-bytes`).
pub const OFFLOAD_BYTES: usize = 512 * 1024;

/// The threshold in force; 0: no work leaves its core.
static THRESHOLD: AtomicUsize = AtomicUsize::new(OFFLOAD_BYTES);

/// Sets the threshold (`-distributor.decode-offload-bytes`), once at start.
pub fn configure(bytes: usize) {
    THRESHOLD.store(bytes, Relaxed);
}

/// The threshold in force (0: no work leaves its core, `usize::MAX` then).
pub fn threshold() -> usize {
    match THRESHOLD.load(Relaxed) {
        0 => usize::MAX,
        t => t,
    }
}

/// Jobs that may wait per decode thread before a core decodes its profile itself.
pub const QUEUE_PER_THREAD: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    tx: flume::Sender<Job>,
}

#[derive(Default)]
pub struct Counters {
    pub offloaded: AtomicU64,
    pub inline_queue_full: AtomicU64,
    pub panicked: AtomicU64,
    pub freed: AtomicU64,
}

pub static COUNTERS: Counters = Counters {
    offloaded: AtomicU64::new(0),
    inline_queue_full: AtomicU64::new(0),
    panicked: AtomicU64::new(0),
    freed: AtomicU64::new(0),
};

/// Half the CPUs, at least one: the cores keep the other half.
pub fn threads() -> usize {
    (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1)
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = threads();
        let (tx, rx) = flume::bounded::<Job>(threads * QUEUE_PER_THREAD);
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("kiln-decode-{i}"))
                .spawn(move || {
                    // Decoding is CPU work the self-profile should show.
                    crate::self_profiling::register_current_thread();
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
                .expect("starting a decode thread");
        }
        Pool { tx }
    })
}

/// The decode of a job that panicked on a decode thread: the request fails, the thread
/// and the process go on (a core would have been lost to the same panic).
#[derive(Debug)]
pub struct Panicked;

/// Runs `work` (estimated at `cost_bytes`) on a decode thread when it is large and the pool
/// has room, else here; either way returns its result.
pub async fn run<T: Send + 'static>(
    cost_bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Panicked> {
    if cost_bytes < threshold() {
        return Ok(work());
    }
    let (tx, rx) = flume::bounded::<T>(1);
    let job: Job = Box::new(move || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(v) => {
            let _ = tx.send(v);
        }
        Err(_) => {
            COUNTERS.panicked.fetch_add(1, Relaxed);
        }
    });
    match pool().tx.try_send(job) {
        Ok(()) => {
            COUNTERS.offloaded.fetch_add(1, Relaxed);
            rx.recv_async().await.map_err(|_| Panicked)
        }
        Err(flume::TrySendError::Full(job) | flume::TrySendError::Disconnected(job)) => {
            COUNTERS.inline_queue_full.fetch_add(1, Relaxed);
            job();
            rx.try_recv().map_err(|_| Panicked)
        }
    }
}

/// Frees `v` on a decode thread when the pool has room, else here. For a large profile
/// (decoded on a decode thread): a core that freed it would pay a free from a thread not its
/// own for each of its samples' vectors (~3% of a large push's CPU, all of it on the core),
/// and the decode thread would then collect them anyway.
pub fn free<T: Send + 'static>(v: T) {
    let job: Job = Box::new(move || drop(v));
    match pool().tx.try_send(job) {
        Ok(()) => {
            COUNTERS.freed.fetch_add(1, Relaxed);
        }
        Err(flume::TrySendError::Full(job) | flume::TrySendError::Disconnected(job)) => drop(job),
    }
}

/// The pool's counters and bounds on `/metrics` (the threads start with the first job).
pub fn render(out: &mut String) {
    use std::fmt::Write;
    let threads = threads();
    let rows: [(&str, &str, &str, u64); 6] = [
        (
            "kiln_distributor_decode_offloaded_total",
            "counter",
            "Large profiles decoded on a decode thread instead of the core that accepted them.",
            COUNTERS.offloaded.load(Relaxed),
        ),
        (
            "kiln_distributor_decode_inline_queue_full_total",
            "counter",
            "Large profiles a core decoded itself because the decode threads' queue was full.",
            COUNTERS.inline_queue_full.load(Relaxed),
        ),
        (
            "kiln_distributor_decode_panics_total",
            "counter",
            "Decodes that panicked (the request failed, the process went on).",
            COUNTERS.panicked.load(Relaxed),
        ),
        (
            "kiln_distributor_decode_freed_total",
            "counter",
            "Large profiles freed on a decode thread once their push was answered.",
            COUNTERS.freed.load(Relaxed),
        ),
        ("kiln_distributor_decode_threads", "gauge", "Decode threads.", threads as u64),
        (
            "kiln_distributor_decode_queue_limit",
            "gauge",
            "Decode jobs that may wait before cores decode large profiles themselves.",
            (threads * QUEUE_PER_THREAD) as u64,
        ),
    ];
    for (name, ty, help, v) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal executor for one future whose wakeups come from another thread.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Wake, Waker};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    #[test]
    fn small_work_runs_here_and_large_work_on_a_decode_thread() {
        let here = std::thread::current().id();
        let small = block_on(run(10, move || std::thread::current().id() == here)).unwrap();
        assert!(small, "small work ran elsewhere");
        let large = block_on(run(OFFLOAD_BYTES, move || std::thread::current().name().map(str::to_string))).unwrap();
        // On a decode thread, unless the queue was full (other tests' jobs): then here.
        let name = large.unwrap_or_default();
        assert!(name.starts_with("kiln-decode-") || COUNTERS.inline_queue_full.load(Relaxed) > 0, "{name}");
    }

    #[test]
    fn what_is_freed_off_the_core_is_freed_on_a_decode_thread() {
        struct Tell(flume::Sender<Option<String>>);
        impl Drop for Tell {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().name().map(str::to_string));
            }
        }
        let (tx, rx) = flume::bounded(1);
        let before = COUNTERS.freed.load(Relaxed);
        free(Tell(tx));
        let name = rx.recv().unwrap().unwrap_or_default();
        // On a decode thread, unless the queue was full (other tests' jobs): then here.
        assert!(name.starts_with("kiln-decode-") || COUNTERS.freed.load(Relaxed) == before, "{name}");
    }

    #[test]
    fn a_panicking_decode_fails_its_request_and_the_pool_goes_on() {
        let r = block_on(run(OFFLOAD_BYTES, || -> u32 { panic!("bad profile") }));
        assert!(r.is_err());
        assert_eq!(block_on(run(OFFLOAD_BYTES, || 7)).unwrap(), 7);
    }
}
