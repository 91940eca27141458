//! Whether the process serves: its start has finished (blocks opened, the WAL replayed),
//! every core listens and no shutdown has begun. Set by the edge and the process's start and
//! stop; read by `/ready`, health checks and the routes that must not run while the process
//! is starting or stopping.
//!
//! The port opens before the start finishes, so that `/ready`, `/metrics` and the other
//! pages of the process itself answer during a long WAL replay (`/ready` says how far it
//! has got); every other route answers 503 until [`Readiness::started`].
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

pub struct Readiness {
    cores: usize,
    listening: AtomicUsize,
    started: AtomicBool,
    shutting_down: AtomicBool,
    pub replay: ReplayProgress,
}

/// How far the WAL replay has got, in bytes of segment files: `total` is known once the
/// segments are listed, `done` grows as their records are handed to the cores.
#[derive(Default)]
pub struct ReplayProgress {
    total: AtomicU64,
    done: AtomicU64,
    running: AtomicBool,
}

impl ReplayProgress {
    pub fn begin(&self, total_bytes: u64) {
        self.total.store(total_bytes, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.running.store(true, Ordering::Release);
    }

    pub fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn finish(&self) {
        self.running.store(false, Ordering::Release);
    }

    /// (bytes replayed, bytes to replay, whether it runs now).
    pub fn get(&self) -> (u64, u64, bool) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed), self.running.load(Ordering::Acquire))
    }
}

impl Readiness {
    pub fn new(cores: usize) -> Self {
        Readiness {
            cores,
            listening: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            replay: ReplayProgress::default(),
        }
    }

    /// One more core listens on the port.
    pub fn core_listening(&self) {
        self.listening.fetch_add(1, Ordering::AcqRel);
    }

    /// The start finished: every component's state is in place (blocks opened, WAL replayed).
    pub fn started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// Whether the start has finished; until then only the process's own pages are served.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Shutdown began: new work is refused from now on.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn ready(&self) -> bool {
        self.is_started()
            && self.listening.load(Ordering::Acquire) == self.cores
            && !self.shutting_down.load(Ordering::Acquire)
    }

    /// Why the process is not ready, for `/ready` and the 503s of routes refused meanwhile.
    pub fn why_not_ready(&self) -> String {
        if self.shutting_down.load(Ordering::Acquire) {
            return "shutting down".into();
        }
        if self.is_started() {
            return "cores are still starting".into();
        }
        match self.replay.get() {
            (done, total, true) => {
                let pct = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
                format!(
                    "starting: replaying the WAL, {:.1} of {:.1} MB ({pct:.0}%)",
                    done as f64 / 1e6,
                    total as f64 / 1e6
                )
            }
            _ => "starting: opening blocks and the WAL".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_started_and_listening_until_shutdown() {
        let r = Readiness::new(2);
        r.core_listening();
        r.core_listening();
        assert!(!r.ready());
        assert_eq!(r.why_not_ready(), "starting: opening blocks and the WAL");
        r.replay.begin(4_000_000);
        r.replay.advance(1_000_000);
        assert_eq!(r.why_not_ready(), "starting: replaying the WAL, 1.0 of 4.0 MB (25%)");
        r.replay.finish();
        r.started();
        assert!(r.ready());
        r.shut_down();
        assert!(!r.ready());
        assert_eq!(r.why_not_ready(), "shutting down");
    }
}
