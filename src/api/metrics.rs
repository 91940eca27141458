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
    /// `pyroscope_request_duration_seconds` by (method, route, status): locked by this core
    /// per request (uncontended) and by `/metrics` to read.
    requests: std::sync::Mutex<RouteHistograms>,
}

/// dskit's `DefBuckets`, which Pyroscope's request histogram uses.
pub const PYROSCOPE_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0];

/// At most this many distinct routes per core: RPC paths name methods a client chooses, and
/// a label must not grow with them. Past it, a route is counted as `other`.
pub const MAX_ROUTES: usize = 256;

/// One (method, route, status code) series: counts per bucket, count, sum.
#[derive(Default, Clone)]
struct RouteHistogram {
    buckets: [u64; PYROSCOPE_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct RouteHistograms {
    series: rustc_hash::FxHashMap<(&'static str, String, u16), RouteHistogram>,
    routes: rustc_hash::FxHashSet<String>,
}

/// A route label as dskit makes it from a path: runs of characters other than ASCII letters
/// and digits become one `_`, trimmed, lower-cased (`/push.v1.PusherService/Push` →
/// `push_v1_pusherservice_push`).
pub fn route_label(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

impl CoreMetrics {
    /// One request of `route` (`route_label` of its path; `notfound` for a path nothing
    /// serves) answered with HTTP `status` after `seconds`.
    pub fn observe_request(&self, method: &http::Method, route: String, status: u16, seconds: f64) {
        let method: &'static str = match *method {
            http::Method::GET => "GET",
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::DELETE => "DELETE",
            http::Method::HEAD => "HEAD",
            http::Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let route = if r.routes.contains(&route) {
            route
        } else if r.routes.len() < MAX_ROUTES {
            r.routes.insert(route.clone());
            route
        } else {
            "other".to_string()
        };
        let h = r.series.entry((method, route, status)).or_default();
        for (i, b) in PYROSCOPE_BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

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
    render_pyroscope(cores, out);
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

/// `pyroscope_request_duration_seconds{method, route, status_code, ws}`, summed over cores,
/// as Pyroscope's (dskit's) middleware names it, so its dashboards read kiln's.
fn render_pyroscope(cores: &[CoreMetrics], out: &mut String) {
    use std::fmt::Write;
    let mut all: std::collections::BTreeMap<(&'static str, String, u16), RouteHistogram> = Default::default();
    for c in cores {
        let r = c.requests.lock().unwrap_or_else(|e| e.into_inner());
        for (k, h) in &r.series {
            let e = all.entry(k.clone()).or_default();
            for (a, b) in e.buckets.iter_mut().zip(h.buckets) {
                *a += b;
            }
            e.count += h.count;
            e.sum += h.sum;
        }
    }
    let name = "pyroscope_request_duration_seconds";
    let _ = writeln!(out, "# HELP {name} Time (in seconds) spent serving HTTP requests.\n# TYPE {name} histogram");
    for ((method, route, status), h) in all {
        let l = format!("method=\"{method}\",route=\"{route}\",status_code=\"{status}\",ws=\"false\"");
        for (i, b) in PYROSCOPE_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{b}\"}} {}", h.buckets[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_named_as_dskit_names_them() {
        assert_eq!(route_label("/push.v1.PusherService/Push"), "push_v1_pusherservice_push");
        assert_eq!(route_label("/pyroscope/label-values"), "pyroscope_label_values");
        assert_eq!(route_label("/ingest"), "ingest");
        assert_eq!(
            route_label("/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"),
            "opentelemetry_proto_collector_profiles_v1development_profilesservice_export"
        );
    }

    #[test]
    fn routes_past_the_bound_count_as_other() {
        let m = CoreMetrics::default();
        for i in 0..MAX_ROUTES + 10 {
            m.observe_request(&http::Method::POST, format!("r{i}"), 200, 0.001);
        }
        m.observe_request(&http::Method::POST, "r0".into(), 404, 0.001);
        let mut out = String::new();
        render_pyroscope(std::slice::from_ref(&m), &mut out);
        assert!(out.contains("route=\"other\",status_code=\"200\",ws=\"false\"} 10"), "{out}");
        assert!(out.contains(
            "pyroscope_request_duration_seconds_count{method=\"POST\",route=\"r0\",status_code=\"404\",ws=\"false\"} 1"
        ));
        assert!(out.contains("le=\"0.005\"} 1"));
    }
}
