//! Self-profiling, as Pyroscope's `-target=all` does by default: kiln samples its own CPU
//! (`sampler.rs`: per-thread CPU timers, SIGPROF, stacks unwound by `.eh_frame` in
//! `unwind.rs`) and its allocations (`alloc.rs`: the global allocator wrapped, one sample
//! per 512 KiB allocated on average), each into a fixed ring (`ring.rs`), and every
//! `-self-profiling.push-interval` pushes the interval's two profiles, `process_cpu` and
//! `memory`, as the service `kiln`, to its own port or to `-self-profiling.url`
//! (`push.rs`). The drain thread (`kiln-self-prof`) empties the rings, counts the stacks
//! (`profile.rs`), names their frames (`symbols.rs`) and pushes.
//! `-self-profiling.disable-push=true`: no timer, no handler, no thread, and the allocator
//! never samples.
pub mod alloc;
pub mod profile;
pub mod push;
pub mod ring;
pub mod sampler;
pub mod symbols;
#[cfg(target_arch = "x86_64")]
pub mod unwind;

use crate::config::Config;
use prost::Message;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use sampler::register_current_thread;

/// Samples per second of a thread's CPU, Go's profiler's rate.
pub const HZ: u32 = 100;
/// How often the drain thread empties the ring: it holds `RING` samples, 10 s of CPU at
/// `HZ`, so at this pace it fills only past ~200 busy threads.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// The profile types' names: Pyroscope's for a CPU profile and for Go's heap profile.
const CPU_NAME: &str = "process_cpu";
const MEMORY_NAME: &str = "memory";

static PUSHES: AtomicU64 = AtomicU64::new(0);
static PUSH_FAILURES: AtomicU64 = AtomicU64::new(0);

/// The self-profiler (none running when off); `serving` lets it push.
pub struct SelfProfiler {
    serving: Option<Arc<AtomicBool>>,
}

impl SelfProfiler {
    /// Starts sampling (threads that register from now on) and the drain thread, unless
    /// `-self-profiling.disable-push`, or the target is not `all` and no
    /// `-self-profiling.url` says where to push (Pyroscope profiles itself only as `all`).
    /// Call before the threads to sample are started.
    pub fn start(cfg: &Config) -> SelfProfiler {
        SelfProfiler { serving: Self::start_running(cfg) }
    }

    fn start_running(cfg: &Config) -> Option<Arc<AtomicBool>> {
        let sp = &cfg.self_profiling;
        if sp.disable_push || (!cfg.target.is_all() && sp.url.is_empty()) {
            return None;
        }
        if cfg.multitenancy_enabled && sp.tenant_id.is_empty() {
            tracing::warn!("self-profiling: -auth.multitenancy-enabled without -self-profiling.tenant-id: the pushes carry no tenant and are refused (set it, or -self-profiling.disable-push=true)");
        }
        if let Err(e) = sampler::install(HZ) {
            tracing::warn!(error = %e, "self-profiling: cannot install the SIGPROF handler; not profiling");
            return None;
        }
        // After `install`, which lists the loaded objects the unwinder needs.
        alloc::enable(alloc::RATE_BYTES);
        let serving = Arc::new(AtomicBool::new(false));
        let drain = Drain {
            destination: push::Destination::from_config(cfg),
            interval: sp.push_interval,
            serving: serving.clone(),
        };
        tracing::info!(to = %drain.destination.describe(), interval = ?drain.interval, "self-profiling: pushing kiln's CPU and allocation profiles");
        if !sampler::whole_stacks() {
            tracing::info!("self-profiling: built without frame pointers, each sample names only the function running (build with RUSTFLAGS=\"-C force-frame-pointers=yes\" for whole stacks)");
        }
        let spawned = std::thread::Builder::new().name("kiln-self-prof".into()).spawn(move || drain.run());
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "self-profiling: cannot start its thread; not pushing");
        }
        Some(serving)
    }

    /// The port is open: pushes may begin (the samples taken before are in the first).
    pub fn serving(&self) {
        if let Some(s) = &self.serving {
            s.store(true, Relaxed);
        }
    }
}

struct Drain {
    destination: push::Destination,
    interval: Duration,
    serving: Arc<AtomicBool>,
}

/// An interval's samples, both kinds, since `started_ns`.
struct Interval {
    cpu: profile::Stacks<u64>,
    memory: profile::Stacks<profile::Allocated>,
    started_ns: i64,
}

impl Interval {
    fn new() -> Interval {
        Interval { cpu: Default::default(), memory: Default::default(), started_ns: crate::timeparse::now_ns() }
    }

    /// Empties both rings into the tables of stacks.
    fn drain_rings(&mut self) {
        sampler::RING.drain(|pcs, _| {
            if !self.cpu.add(pcs, 1) {
                sampler::DROPPED.fetch_add(1, Relaxed);
            }
        });
        let rate = alloc::rate();
        alloc::RING.drain(|pcs, size| {
            if !self.memory.add(pcs, alloc::unsampled(size, rate)) {
                alloc::DROPPED.fetch_add(1, Relaxed);
            }
        });
    }

    /// The interval's profiles, encoded, with their names (none for a kind without samples).
    fn pprofs(&self, symbols: &mut Option<symbols::Symbols>, now_ns: i64) -> Vec<(&'static str, Vec<u8>)> {
        let (start_ns, duration_ns) = (self.started_ns, now_ns - self.started_ns);
        let mut out = Vec::new();
        if !self.cpu.is_empty() {
            let period_ns = 1_000_000_000 / i64::from(sampler::hz());
            out.push((CPU_NAME, self.cpu.cpu_pprof(symbols, start_ns, duration_ns, period_ns).encode_to_vec()));
        }
        if !self.memory.is_empty() {
            let pprof = self.memory.memory_pprof(symbols, start_ns, duration_ns, alloc::rate());
            out.push((MEMORY_NAME, pprof.encode_to_vec()));
        }
        out
    }
}

impl Drain {
    fn run(self) {
        let mut interval = Interval::new();
        let mut symbols = None;
        let mut symbols_tried = false;
        let mut failing = false;
        let mut next_push = Instant::now() + self.interval;
        loop {
            std::thread::sleep(DRAIN_EVERY);
            interval.drain_rings();
            if Instant::now() < next_push || !self.serving.load(Relaxed) {
                continue;
            }
            next_push = Instant::now() + self.interval;
            if interval.cpu.is_empty() && interval.memory.is_empty() {
                continue;
            }
            if !symbols_tried {
                symbols_tried = true;
                symbols = symbols::Symbols::load()
                    .inspect_err(|e| tracing::warn!(error = %e, "self-profiling: frames are named by address"))
                    .ok();
            }
            let pprofs = interval.pprofs(&mut symbols, crate::timeparse::now_ns());
            interval = Interval::new();
            for (name, pprof) in pprofs {
                self.push(name, &pprof, &mut failing);
            }
        }
    }

    /// Pushes one profile; a failure is logged once until a push succeeds.
    fn push(&self, name: &str, pprof: &[u8], failing: &mut bool) {
        match self.destination.push(name, pprof) {
            Ok(()) => {
                PUSHES.fetch_add(1, Relaxed);
                if std::mem::take(failing) {
                    tracing::info!("self-profiling: pushing again");
                }
            }
            Err(e) => {
                PUSH_FAILURES.fetch_add(1, Relaxed);
                if !std::mem::replace(failing, true) {
                    tracing::warn!(error = %e, "self-profiling: a push failed (logged once until one succeeds)");
                }
            }
        }
    }
}

/// `kiln_self_profiling_*`: samples taken and dropped (CPU and allocations), pushes made
/// and failed.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    let counters: [(&str, &str, &AtomicU64); 6] = [
        ("kiln_self_profiling_samples_total", "CPU samples of kiln's own threads taken.", &sampler::SAMPLES),
        (
            "kiln_self_profiling_dropped_samples_total",
            "CPU samples lost: the ring or the interval's table of stacks was full, or the thread was not registered.",
            &sampler::DROPPED,
        ),
        ("kiln_self_profiling_alloc_samples_total", "Allocations of kiln sampled.", &alloc::SAMPLES),
        (
            "kiln_self_profiling_alloc_dropped_samples_total",
            "Sampled allocations lost: the ring or the interval's table of stacks was full, or the stack was unreadable.",
            &alloc::DROPPED,
        ),
        ("kiln_self_profiling_pushes_total", "Profiles of kiln pushed.", &PUSHES),
        ("kiln_self_profiling_push_failures_total", "Pushes of kiln's profiles that failed.", &PUSH_FAILURES),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
    }
}
