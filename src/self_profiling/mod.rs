//! Self-profiling, as Pyroscope's `-target=all` does by default: kiln samples its own CPU
//! (`sampler.rs`: per-thread CPU timers, SIGPROF, stacks unwound by `.eh_frame` in
//! `unwind.rs` into a fixed ring)
//! and every `-self-profiling.push-interval` pushes the interval's profile, as the service
//! `kiln`, to its own port or to `-self-profiling.url` (`push.rs`). The drain thread
//! (`kiln-self-prof`) empties the ring, counts the stacks (`profile.rs`), names their
//! frames (`symbols.rs`) and pushes. `-self-profiling.disable-push=true`: no timer, no
//! handler, no thread.
pub mod profile;
pub mod push;
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
/// The profile type's name: Pyroscope's for a CPU profile.
const NAME: &str = "process_cpu";

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
        let serving = Arc::new(AtomicBool::new(false));
        let drain = Drain {
            destination: push::Destination::from_config(cfg),
            interval: sp.push_interval,
            serving: serving.clone(),
        };
        tracing::info!(to = %drain.destination.describe(), interval = ?drain.interval, "self-profiling: pushing kiln's CPU profile");
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

impl Drain {
    fn run(self) {
        let mut stacks = profile::Stacks::default();
        let mut symbols = None;
        let mut symbols_tried = false;
        let mut failing = false;
        let mut started_ns = crate::timeparse::now_ns();
        let mut next_push = Instant::now() + self.interval;
        loop {
            std::thread::sleep(DRAIN_EVERY);
            sampler::drain(|pcs| {
                if !stacks.add(pcs) {
                    sampler::DROPPED.fetch_add(1, Relaxed);
                }
            });
            if Instant::now() < next_push || !self.serving.load(Relaxed) {
                continue;
            }
            next_push = Instant::now() + self.interval;
            if stacks.is_empty() {
                continue;
            }
            if !symbols_tried {
                symbols_tried = true;
                symbols = symbols::Symbols::load()
                    .inspect_err(|e| tracing::warn!(error = %e, "self-profiling: frames are named by address"))
                    .ok();
            }
            let now_ns = crate::timeparse::now_ns();
            let period_ns = 1_000_000_000 / i64::from(sampler::hz());
            let pprof = stacks.to_pprof(&mut symbols, started_ns, now_ns - started_ns, period_ns).encode_to_vec();
            stacks = profile::Stacks::default();
            started_ns = now_ns;
            match self.destination.push(NAME, &pprof) {
                Ok(()) => {
                    PUSHES.fetch_add(1, Relaxed);
                    if std::mem::take(&mut failing) {
                        tracing::info!("self-profiling: pushing again");
                    }
                }
                Err(e) => {
                    PUSH_FAILURES.fetch_add(1, Relaxed);
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "self-profiling: a push failed (logged once until one succeeds)");
                    }
                }
            }
        }
    }
}

/// `kiln_self_profiling_*`: samples taken and dropped, pushes made and failed.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    let counters: [(&str, &str, &AtomicU64); 4] = [
        ("kiln_self_profiling_samples_total", "CPU samples of kiln's own threads taken.", &sampler::SAMPLES),
        (
            "kiln_self_profiling_dropped_samples_total",
            "CPU samples lost: the ring or the interval's table of stacks was full, or the thread was not registered.",
            &sampler::DROPPED,
        ),
        ("kiln_self_profiling_pushes_total", "Profiles of kiln pushed.", &PUSHES),
        ("kiln_self_profiling_push_failures_total", "Pushes of kiln's profiles that failed.", &PUSH_FAILURES),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
    }
}
