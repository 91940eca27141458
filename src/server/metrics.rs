//! Request counters and latency histograms, one slot per core.
//!
//! Each core writes only its own slot (relaxed atomics, cache-line aligned so cores never
//! contend); `/metrics` reads every slot. Shard sizes come from the shards themselves.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Push,
    Ingest,
    Query,
    Render,
    Other,
}

pub const ROUTES: [(Route, &str); 5] = [
    (Route::Push, "push"),
    (Route::Ingest, "ingest"),
    (Route::Query, "query"),
    (Route::Render, "render"),
    (Route::Other, "other"),
];

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
    routes: [Histogram; 5],
    pub pushed_profiles: AtomicU64,
    pub received_bytes: AtomicU64,
    pub decompressed_bytes: AtomicU64,
    pub rejected_profiles: AtomicU64,
}

impl CoreMetrics {
    pub fn observe(&self, route: Route, seconds: f64, error: bool) {
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

pub fn add(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Relaxed);
}

/// Renders the request metrics of every core in Prometheus text format.
pub fn render(cores: &[CoreMetrics], out: &mut String) {
    use std::fmt::Write;
    type Counter = (&'static str, &'static str, fn(&CoreMetrics) -> &AtomicU64);
    let counters: [Counter; 4] = [
        ("kiln_distributor_received_profiles_total", "Profiles accepted by push and ingest.", |c| &c.pushed_profiles),
        (
            "kiln_distributor_received_compressed_bytes_total",
            "Request body bytes of push and ingest, as received.",
            |c| &c.received_bytes,
        ),
        ("kiln_distributor_received_decompressed_bytes_total", "Profile bytes after decompression.", |c| {
            &c.decompressed_bytes
        }),
        ("kiln_distributor_rejected_profiles_total", "Profiles rejected by validation or limits.", |c| {
            &c.rejected_profiles
        }),
    ];
    for (name, help, f) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, c) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", f(c).load(Relaxed));
        }
    }
    let name = "kiln_request_duration_seconds";
    let _ = writeln!(out, "# HELP {name} Time to answer HTTP and RPC requests.\n# TYPE {name} histogram");
    for (route, rname) in ROUTES {
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
    for (route, rname) in ROUTES {
        let n: u64 = cores.iter().map(|c| c.routes[route as usize].errors.load(Relaxed)).sum();
        let _ = writeln!(out, "{name}{{route=\"{rname}\"}} {n}");
    }
}
