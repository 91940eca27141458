//! Counters and latency histograms, the progress line and the final report.
//!
//! Each thread records into its own `Stats` (no sharing between cores); every second it hands
//! that interval to the main thread for the progress line and folds it into its total. At the
//! end the threads' totals are merged into the report.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Latencies are recorded in microseconds, from 1 µs to one hour, 3 significant digits.
const LATENCY_US_MAX: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Counts and latencies of one kind of request (query mode reports each method).
#[derive(Clone, Debug)]
pub struct KindStats {
    pub hist: Histogram<u64>,
    pub requests: u64,
    pub errors: u64,
}

impl KindStats {
    fn new() -> Self {
        KindStats { hist: histogram(), requests: 0, errors: 0 }
    }
}

/// What one request contributes.
pub struct Sample<'a> {
    pub kind: &'static str,
    /// None when no exchange happened (e.g. the connection could not be opened).
    pub latency: Option<Duration>,
    /// Ok(bytes received) or Err(error key: HTTP status, `grpc-N`, `connect`, `timeout`, ...).
    pub outcome: Result<u64, &'a str>,
    /// What the server (or the client) said about an error; the first per key is kept.
    pub message: Option<&'a str>,
    pub bytes_wire: u64,
    pub bytes_uncompressed: u64,
}

#[derive(Clone, Debug)]
pub struct Stats {
    pub hist: Histogram<u64>,
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// The first message seen per error key.
    pub error_messages: BTreeMap<String, String>,
    pub bytes_wire: u64,
    pub bytes_uncompressed: u64,
    pub bytes_received: u64,
    pub by_kind: BTreeMap<&'static str, KindStats>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            hist: histogram(),
            requests: 0,
            ok: 0,
            errors: BTreeMap::new(),
            error_messages: BTreeMap::new(),
            bytes_wire: 0,
            bytes_uncompressed: 0,
            bytes_received: 0,
            by_kind: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, s: Sample<'_>) {
        self.requests += 1;
        self.bytes_wire += s.bytes_wire;
        self.bytes_uncompressed += s.bytes_uncompressed;
        let kind = self.by_kind.entry(s.kind).or_insert_with(KindStats::new);
        kind.requests += 1;
        if let Some(latency) = s.latency {
            let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
            self.hist.saturating_record(us);
            kind.hist.saturating_record(us);
        }
        match s.outcome {
            Ok(received) => {
                self.ok += 1;
                self.bytes_received += received;
            }
            Err(key) => {
                kind.errors += 1;
                match self.errors.get_mut(key) {
                    Some(n) => *n += 1,
                    None => {
                        self.errors.insert(key.to_string(), 1);
                        if let Some(message) = s.message {
                            self.error_messages.insert(key.to_string(), message.to_string());
                        }
                    }
                }
            }
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.requests += other.requests;
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &other.error_messages {
            self.error_messages.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self.bytes_wire += other.bytes_wire;
        self.bytes_uncompressed += other.bytes_uncompressed;
        self.bytes_received += other.bytes_received;
        for (k, v) in &other.by_kind {
            let mine = self.by_kind.entry(k).or_insert_with(KindStats::new);
            mine.hist.add(&v.hist).expect("same histogram bounds");
            mine.requests += v.requests;
            mine.errors += v.errors;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A latency quantile in milliseconds (0 when nothing was recorded).
pub fn quantile_ms(hist: &Histogram<u64>, q: f64) -> f64 {
    if hist.is_empty() {
        return 0.0;
    }
    hist.value_at_quantile(q) as f64 / 1000.0
}

fn max_ms(hist: &Histogram<u64>) -> f64 {
    if hist.is_empty() {
        return 0.0;
    }
    hist.max() as f64 / 1000.0
}

/// One line per second on stderr.
pub fn progress_line(second: u64, interval: &Stats, window: Duration) -> String {
    let secs = window.as_secs_f64().max(1e-9);
    format!(
        "[{second:>4}s] {:>9.1} req/s  {:>8.2} MB/s wire  errors {:<6} p50 {:>8.2} ms  p99 {:>8.2} ms",
        interval.requests as f64 / secs,
        interval.bytes_wire as f64 / 1e6 / secs,
        interval.error_count(),
        quantile_ms(&interval.hist, 0.50),
        quantile_ms(&interval.hist, 0.99),
    )
}

/// The final report.
#[derive(Clone, Debug)]
pub struct Report {
    pub mode: String,
    pub api: String,
    pub url: String,
    /// `rate=N/s` or `connections=N`.
    pub load: String,
    pub threads: usize,
    pub elapsed: Duration,
    pub stats: Stats,
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Report {
    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Successfully accepted profiles (or answered queries) per second.
    pub fn throughput(&self) -> f64 {
        self.stats.ok as f64 / self.secs()
    }

    pub fn to_json(&self) -> Value {
        let s = &self.stats;
        let h = &s.hist;
        let errors: Map<String, Value> = s.errors.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let mut out = json!({
            "mode": self.mode,
            "api": self.api,
            "url": self.url,
            "load": self.load,
            "threads": self.threads,
            "duration_s": round3(self.secs()),
            "requests": s.requests,
            "ok": s.ok,
            "error_count": s.error_count(),
            "errors": errors,
            "error_messages": s.error_messages,
            "throughput": round3(self.throughput()),
            "requests_per_s": round3(s.requests as f64 / self.secs()),
            "mb_per_s": round3(s.bytes_wire as f64 / 1e6 / self.secs()),
            "mb_per_s_uncompressed": round3(s.bytes_uncompressed as f64 / 1e6 / self.secs()),
            "bytes_wire": s.bytes_wire,
            "bytes_uncompressed": s.bytes_uncompressed,
            "bytes_received": s.bytes_received,
            "p50": quantile_ms(h, 0.50),
            "p90": quantile_ms(h, 0.90),
            "p99": quantile_ms(h, 0.99),
            "p999": quantile_ms(h, 0.999),
            "max": max_ms(h),
            "mean": round3(if h.is_empty() { 0.0 } else { h.mean() / 1000.0 }),
        });
        if s.by_kind.len() > 1 || self.mode == "query" {
            let kinds: Map<String, Value> = s
                .by_kind
                .iter()
                .map(|(k, v)| {
                    let value = json!({
                        "requests": v.requests,
                        "errors": v.errors,
                        "p50": quantile_ms(&v.hist, 0.50),
                        "p99": quantile_ms(&v.hist, 0.99),
                        "max": max_ms(&v.hist),
                    });
                    (k.to_string(), value)
                })
                .collect();
            out["by_kind"] = Value::Object(kinds);
        }
        out
    }

    pub fn human(&self) -> String {
        let s = &self.stats;
        let h = &s.hist;
        let mut out = String::new();
        let mut line = |l: String| {
            out.push_str(&l);
            out.push('\n');
        };
        line(format!(
            "kiln-load {} via {} against {} ({}, {} threads) for {:.2}s",
            self.mode,
            self.api,
            self.url,
            self.load,
            self.threads,
            self.secs()
        ));
        line(format!("  requests   {} ({} ok, {} errors)", s.requests, s.ok, s.error_count()));
        let unit = if self.mode == "query" { "queries" } else { "profiles" };
        line(format!("  throughput {:.1} {unit}/s ok", self.throughput()));
        line(format!(
            "  sent       {:.2} MB wire ({:.2} MB/s), {:.2} MB uncompressed ({:.2} MB/s); received {:.2} MB",
            s.bytes_wire as f64 / 1e6,
            s.bytes_wire as f64 / 1e6 / self.secs(),
            s.bytes_uncompressed as f64 / 1e6,
            s.bytes_uncompressed as f64 / 1e6 / self.secs(),
            s.bytes_received as f64 / 1e6,
        ));
        line(format!(
            "  latency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            quantile_ms(h, 0.50),
            quantile_ms(h, 0.90),
            quantile_ms(h, 0.99),
            quantile_ms(h, 0.999),
            max_ms(h)
        ));
        if !s.errors.is_empty() {
            let list: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            line(format!("  errors     {}", list.join(", ")));
            for (k, message) in &s.error_messages {
                line(format!("    first {k}: {message}"));
            }
        }
        if s.by_kind.len() > 1 || self.mode == "query" {
            for (k, v) in &s.by_kind {
                line(format!(
                    "  {k:<24} {:>8} req {:>6} err  p50 {:.2}  p99 {:.2}  max {:.2} ms",
                    v.requests,
                    v.errors,
                    quantile_ms(&v.hist, 0.50),
                    quantile_ms(&v.hist, 0.99),
                    max_ms(&v.hist)
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(kind: &'static str, ms: u64, outcome: Result<u64, &'a str>) -> Sample<'a> {
        Sample {
            kind,
            latency: Some(Duration::from_millis(ms)),
            outcome,
            message: outcome.err(),
            bytes_wire: 100,
            bytes_uncompressed: 300,
        }
    }

    #[test]
    fn test_stats_record_and_merge() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for ms in 1..=100 {
            a.record(sample("push", ms, Ok(2)));
        }
        b.record(sample("push", 500, Err("500")));
        b.record(sample("push", 1, Err("500")));
        b.record(Sample { latency: None, ..sample("push", 0, Err("connect")) });
        a.merge(&b);
        assert_eq!(a.requests, 103);
        assert_eq!(a.ok, 100);
        assert_eq!(a.errors["500"], 2);
        assert_eq!(a.errors["connect"], 1);
        assert_eq!(a.error_messages["500"], "500");
        assert_eq!(a.error_count(), 3);
        assert_eq!(a.bytes_wire, 10_300);
        assert_eq!(a.bytes_uncompressed, 30_900);
        assert_eq!(a.bytes_received, 200);
        assert_eq!(a.hist.len(), 102);
        assert_eq!(a.by_kind["push"].requests, 103);
        let p50 = quantile_ms(&a.hist, 0.5);
        assert!((49.0..=52.0).contains(&p50), "p50 {p50}");
        assert!((quantile_ms(&a.hist, 1.0) - 500.0).abs() < 1.0);
    }

    #[test]
    fn test_report_json_shape() {
        let mut stats = Stats::new();
        for ms in 1..=10 {
            stats.record(sample("push", ms, Ok(0)));
        }
        stats.record(sample("push", 20, Err("429")));
        let report = Report {
            mode: "push".into(),
            api: "push".into(),
            url: "http://127.0.0.1:4040".into(),
            load: "connections=4".into(),
            threads: 2,
            elapsed: Duration::from_secs(2),
            stats,
        };
        let v = report.to_json();
        for key in [
            "throughput",
            "mb_per_s",
            "bytes_wire",
            "bytes_uncompressed",
            "requests",
            "errors",
            "p50",
            "p90",
            "p99",
            "p999",
            "max",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["requests"], 11);
        assert_eq!(v["errors"]["429"], 1);
        assert_eq!(v["throughput"], 5.0);
        assert_eq!(v["bytes_wire"], 1100);
        assert_eq!(v["bytes_uncompressed"], 3300);
        assert!(v["p50"].as_f64().unwrap() > 4.0);
        assert!((v["max"].as_f64().unwrap() - 20.0).abs() < 0.1);
        assert!(v["errors"].is_object());
        // One line of JSON.
        let text = v.to_string();
        assert!(!text.contains('\n'));
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
        assert!(report.human().contains("p99.9"));
    }

    #[test]
    fn test_progress_line_mentions_rates() {
        let mut s = Stats::new();
        s.record(sample("push", 3, Ok(0)));
        let line = progress_line(1, &s, Duration::from_secs(1));
        assert!(line.contains("req/s"));
        assert!(line.contains("MB/s"));
        assert!(line.contains("p99"));
    }
}
