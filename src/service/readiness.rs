//! Whether the process serves: every core listens and no shutdown has begun. Set by the
//! edge and the process's start and stop; read by `/ready`, health checks and the routes
//! that must not run while the process is starting or stopping.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct Readiness {
    cores: usize,
    listening: AtomicUsize,
    shutting_down: AtomicBool,
}

impl Readiness {
    pub fn new(cores: usize) -> Self {
        Readiness { cores, listening: AtomicUsize::new(0), shutting_down: AtomicBool::new(false) }
    }

    /// One more core listens on the port.
    pub fn core_listening(&self) {
        self.listening.fetch_add(1, Ordering::AcqRel);
    }

    /// Shutdown began: new work is refused from now on.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn ready(&self) -> bool {
        self.listening.load(Ordering::Acquire) == self.cores && !self.shutting_down.load(Ordering::Acquire)
    }
}
