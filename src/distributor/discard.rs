//! Writes refused and received, counted as Pyroscope counts them, so an operator's
//! dashboards read kiln: `pyroscope_discarded_samples_total` and `pyroscope_discarded_bytes_total`
//! by `reason` and `tenant` (profiles and uncompressed bytes refused, whatever refused them:
//! rate and body limits included), `pyroscope_distributor_received_{compressed_bytes,
//! decompressed_bytes,samples}` histograms by `type` and `tenant`. A refused write is also
//! logged, at most `LOG_PER_SECOND` lines a second per core, the rest counted in the next line.
use kiln_shards::model::ids::TenantId;
use rustc_hash::FxHashMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Pyroscope's discard reasons (`pkg/validation/validate.go`) that kiln's refusals map to.
pub mod reason {
    pub const UNKNOWN: &str = "unknown";
    pub const INVALID_LABELS: &str = "invalid_labels";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const NOT_IN_INGESTION_WINDOW: &str = "not_in_ingestion_window";
    pub const MAX_LABEL_NAMES_PER_SERIES: &str = "max_label_names_per_series";
    pub const LABEL_NAME_TOO_LONG: &str = "label_name_too_long";
    pub const LABEL_VALUE_TOO_LONG: &str = "label_value_too_long";
    pub const SERIES_LIMIT: &str = "series_limit";
    pub const SAMPLES_LIMIT: &str = "samples_limit";
    pub const PROFILE_SIZE_LIMIT: &str = "profile_size_limit";
    pub const MALFORMED_PROFILE: &str = "malformed_profile";
    pub const INGEST_LIMIT_REACHED: &str = "ingest_limit_reached";
    pub const BODY_SIZE_LIMIT_EXCEEDED: &str = "body_size_limit_exceeded";
}

/// Label sets (tenant × type, tenant × reason) one core keeps at most per metric: past it a
/// new tenant's figures go to `tenant="#others"` (counted in
/// `kiln_distributor_usage_label_sets_folded_total`).
pub const MAX_LABEL_SETS: usize = 4096;

/// Log lines of refused writes one core writes per second at most.
pub const LOG_PER_SECOND: u32 = 5;

const OTHERS: &str = "#others";

/// `ExponentialBucketsRange(min, max, n)`, as Prometheus' Go client computes it.
fn exponential_range(min: f64, max: f64, n: usize) -> Vec<f64> {
    let factor = (max / min).powf(1.0 / (n - 1) as f64);
    (0..n).map(|i| min * factor.powi(i as i32)).collect()
}

/// Bytes: 10 KiB to 15 MiB in 30 buckets; samples: 100 to 100,000 in 30 (Pyroscope's).
fn byte_buckets() -> &'static [f64] {
    static B: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    B.get_or_init(|| exponential_range(10.0 * 1024.0, 15.0 * 1024.0 * 1024.0, 30))
}

fn sample_buckets() -> &'static [f64] {
    static B: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    B.get_or_init(|| exponential_range(100.0, 100_000.0, 30))
}

#[derive(Clone, Default)]
struct Hist {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Hist {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; bounds.len()];
        }
        for (b, bound) in self.buckets.iter_mut().zip(bounds) {
            if v <= *bound {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }

    fn add(&mut self, o: &Hist) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; o.buckets.len()];
        }
        self.buckets.iter_mut().zip(&o.buckets).for_each(|(a, b)| *a += b);
        self.count += o.count;
        self.sum += o.sum;
    }
}

#[derive(Clone, Default)]
struct Received {
    compressed: Hist,
    decompressed: Hist,
    samples: Hist,
}

/// Figures by tenant, then by type or reason, and how many (tenant, key) sets they hold.
struct ByTenant<K, V> {
    tenants: FxHashMap<String, FxHashMap<K, V>>,
    sets: usize,
}

impl<K, V> Default for ByTenant<K, V> {
    fn default() -> Self {
        ByTenant { tenants: FxHashMap::default(), sets: 0 }
    }
}

impl<K: std::hash::Hash + Eq, V: Default> ByTenant<K, V> {
    /// The figures of (`tenant`, `key`), found without allocating: the tenant's own while it
    /// has figures already or fewer than `MAX_LABEL_SETS` sets exist, else `#others`'
    /// (counted in `folded`).
    fn get<Q>(&mut self, tenant: &str, key: &Q, make: impl FnOnce() -> K, folded: &mut u64) -> &mut V
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let tenant = if self.tenants.contains_key(tenant) || self.sets < MAX_LABEL_SETS {
            tenant
        } else {
            *folded += 1;
            OTHERS
        };
        if !self.tenants.contains_key(tenant) {
            self.tenants.insert(tenant.to_string(), FxHashMap::default());
        }
        let by_key = self.tenants.get_mut(tenant).expect("inserted above");
        if !by_key.contains_key(key) {
            by_key.insert(make(), V::default());
            self.sets += 1;
        }
        by_key.get_mut(key).expect("inserted above")
    }
}

/// One core's figures.
#[derive(Default)]
struct Figures {
    received: ByTenant<String, Received>,
    discarded: ByTenant<&'static str, (u64, u64)>,
    folded: u64,
    logged_second: i64,
    logged: u32,
    suppressed: u64,
}

/// The figures of one core, written by that core (its lock uncontended but for `/metrics`).
#[derive(Default)]
pub struct Usage(Mutex<Figures>);

impl Usage {
    /// A profile accepted: its type (`__name__`), sizes as received and inflated, samples.
    pub fn received(&self, tenant: &TenantId, ty: &str, compressed: usize, decompressed: usize, samples: usize) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let f = &mut *f;
        let r = f.received.get(tenant.as_str(), ty, || ty.to_string(), &mut f.folded);
        r.compressed.observe(byte_buckets(), compressed as f64);
        r.decompressed.observe(byte_buckets(), decompressed as f64);
        r.samples.observe(sample_buckets(), samples as f64);
    }

    /// `profiles` refused for `reason`, `bytes` of them (uncompressed where known); logged
    /// with `message` within the log's rate.
    pub fn discarded(&self, tenant: &str, reason: &'static str, profiles: u64, bytes: u64, message: &str, now_s: i64) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let f = &mut *f;
        let e = f.discarded.get(tenant, reason, || reason, &mut f.folded);
        e.0 += profiles;
        e.1 += bytes;
        if f.logged_second != now_s {
            (f.logged_second, f.logged) = (now_s, 0);
        }
        if f.logged < LOG_PER_SECOND {
            f.logged += 1;
            let suppressed = std::mem::take(&mut f.suppressed);
            tracing::warn!(tenant, reason, profiles, bytes, suppressed, "write refused: {message}");
        } else {
            f.suppressed += 1;
        }
    }
}

/// Renders every core's usage, summed.
pub fn render(cores: impl Iterator<Item = impl std::ops::Deref<Target = Usage>>, out: &mut String) {
    let mut received: std::collections::BTreeMap<(String, String), Received> = Default::default();
    let mut discarded: std::collections::BTreeMap<(String, &'static str), (u64, u64)> = Default::default();
    let mut folded = 0;
    for u in cores {
        let f = u.0.lock().unwrap_or_else(|e| e.into_inner());
        for (tenant, by_type) in &f.received.tenants {
            for (ty, r) in by_type {
                let e = received.entry((tenant.clone(), ty.clone())).or_default();
                e.compressed.add(&r.compressed);
                e.decompressed.add(&r.decompressed);
                e.samples.add(&r.samples);
            }
        }
        for (tenant, by_reason) in &f.discarded.tenants {
            for (reason, (p, b)) in by_reason {
                let e = discarded.entry((tenant.clone(), *reason)).or_default();
                e.0 += p;
                e.1 += b;
            }
        }
        folded += f.folded;
    }
    let hist = |out: &mut String, name: &str, help: &str, bounds: &[f64], pick: fn(&Received) -> &Hist| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for ((tenant, ty), r) in &received {
            let h = pick(r);
            let l = format!("tenant=\"{tenant}\",type=\"{ty}\"");
            for (b, n) in bounds.iter().zip(&h.buckets) {
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{b}\"}} {n}");
            }
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
        }
    };
    hist(
        out,
        "pyroscope_distributor_received_compressed_bytes",
        "The number of compressed bytes per profile received by the distributor.",
        byte_buckets(),
        |r| &r.compressed,
    );
    hist(
        out,
        "pyroscope_distributor_received_decompressed_bytes",
        "The number of decompressed bytes per profile received by the distributor.",
        byte_buckets(),
        |r| &r.decompressed,
    );
    hist(
        out,
        "pyroscope_distributor_received_samples",
        "The number of samples per profile name received by the distributor.",
        sample_buckets(),
        |r| &r.samples,
    );
    for (name, help, pick) in [
        (
            "pyroscope_discarded_samples_total",
            "The number of profiles discarded, by reason (Pyroscope counts profiles under this name).",
            (|v: &(u64, u64)| v.0) as fn(&(u64, u64)) -> u64,
        ),
        ("pyroscope_discarded_bytes_total", "The number of bytes discarded, by reason.", |v| v.1),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for ((tenant, reason), v) in &discarded {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\",tenant=\"{tenant}\"}} {}", pick(v));
        }
    }
    let name = "kiln_distributor_usage_label_sets_folded_total";
    let _ = writeln!(
        out,
        "# HELP {name} Figures counted under tenant=\"#others\" because a core kept {MAX_LABEL_SETS} label sets already.\n# TYPE {name} counter\n{name} {folded}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_pyroscopes() {
        let b = byte_buckets();
        assert_eq!(b.len(), 30);
        assert!((b[0] - 10240.0).abs() < 1e-6 && (b[29] - 15.0 * 1024.0 * 1024.0).abs() < 1e-3);
        assert!((sample_buckets()[29] - 100_000.0).abs() < 1e-6);
    }

    #[test]
    fn figures_sum_over_cores_and_tenants_fold_past_the_bound() {
        let (a, b) = (Usage::default(), Usage::default());
        let t: TenantId = "t1".into();
        a.received(&t, "process_cpu", 5000, 20000, 150);
        b.received(&t, "process_cpu", 5000, 20000, 150);
        a.discarded("t1", reason::RATE_LIMITED, 3, 300, "limit", 1);
        b.discarded("t1", reason::RATE_LIMITED, 1, 100, "limit", 1);
        for i in 0..MAX_LABEL_SETS + 2 {
            a.discarded(&format!("x{i}"), reason::MALFORMED_PROFILE, 1, 1, "bad", 2);
        }
        let mut out = String::new();
        render([&a, &b].into_iter(), &mut out);
        assert!(out.contains("pyroscope_discarded_samples_total{reason=\"rate_limited\",tenant=\"t1\"} 4"), "{out}");
        assert!(out.contains("pyroscope_discarded_bytes_total{reason=\"rate_limited\",tenant=\"t1\"} 400"));
        assert!(out.contains("pyroscope_distributor_received_samples_count{tenant=\"t1\",type=\"process_cpu\"} 2"));
        assert!(out.contains(
            "pyroscope_distributor_received_compressed_bytes_bucket{tenant=\"t1\",type=\"process_cpu\",le=\"10240\"} 2"
        ));
        assert!(out.contains("tenant=\"#others\"} 3"), "{out}");
        assert!(out.contains("kiln_distributor_usage_label_sets_folded_total 3"));
    }
}
