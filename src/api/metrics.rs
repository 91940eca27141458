//! Request counters and latency histograms, one slot per core.
//!
//! Each core writes only its own slot (relaxed atomics, cache-line aligned so cores never
//! contend); `/metrics` reads every slot. What the cores own is counted by the cores.
use crate::service::routes::Class;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    errors: AtomicU64,
}

#[repr(align(128))]
#[derive(Default)]
pub struct CoreMetrics {
    routes: [Histogram; Class::ALL.len()],
}

impl CoreMetrics {
    pub fn observe(&self, route: Class, seconds: f64, error: bool) {
        let h = &self.routes[route as usize];
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.buckets[i].fetch_add(1, Relaxed);
            }
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_micros.fetch_add((seconds * 1e6) as u64, Relaxed);
        if error {
            h.errors.fetch_add(1, Relaxed);
        }
    }
}

/// Renders the request metrics of every core in Prometheus text format.
pub fn render(cores: &[CoreMetrics], out: &mut String) {
    use std::fmt::Write;
    let name = "kiln_request_duration_seconds";
    let _ = writeln!(out, "# HELP {name} Time to answer HTTP and RPC requests.\n# TYPE {name} histogram");
    for (route, rname) in Class::ALL {
        let mut buckets = [0u64; BUCKETS.len()];
        let (mut count, mut sum) = (0u64, 0u64);
        for c in cores {
            let h = &c.routes[route as usize];
            for (i, b) in buckets.iter_mut().enumerate() {
                *b += h.buckets[i].load(Relaxed);
            }
            count += h.count.load(Relaxed);
            sum += h.sum_micros.load(Relaxed);
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{route=\"{rname}\",le=\"{b}\"}} {}", buckets[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{route=\"{rname}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{route=\"{rname}\"}} {}", sum as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{route=\"{rname}\"}} {count}");
    }
    let name = "kiln_request_errors_total";
    let _ = writeln!(out, "# HELP {name} Requests answered with an error.\n# TYPE {name} counter");
    for (route, rname) in Class::ALL {
        let n: u64 = cores.iter().map(|c| c.routes[route as usize].errors.load(Relaxed)).sum();
        let _ = writeln!(out, "{name}{{route=\"{rname}\"}} {n}");
    }
}
