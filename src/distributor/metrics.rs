//! The distributor's counters, one slot per core: each core writes only its own (relaxed
//! atomics, cache-line aligned so cores never contend); `/metrics` reads every slot.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[repr(align(128))]
#[derive(Default)]
pub struct DistributorMetrics {
    /// Received and discarded, per tenant, under Pyroscope's names (`discard`).
    pub usage: super::discard::Usage,
    pub pushed_profiles: AtomicU64,
    pub received_bytes: AtomicU64,
    pub decompressed_bytes: AtomicU64,
    pub rejected_profiles: AtomicU64,
    /// JFR recordings converted and stored, refused (at any step), and the bytes of those
    /// stored, inflated.
    pub jfr_recordings: AtomicU64,
    pub jfr_rejected_recordings: AtomicU64,
    pub jfr_bytes: AtomicU64,
    /// OTLP export requests (gRPC and OTLP/HTTP), whatever became of them.
    pub otlp_requests: AtomicU64,
}

pub fn add(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Relaxed);
}

/// Renders every core's counters in Prometheus text format.
pub fn render(cores: &[DistributorMetrics], out: &mut String) {
    use std::fmt::Write;
    type Counter = (&'static str, &'static str, fn(&DistributorMetrics) -> &AtomicU64);
    let counters: [Counter; 8] = [
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
        ("kiln_distributor_jfr_recordings_total", "JFR recordings /ingest converted and stored.", |c| {
            &c.jfr_recordings
        }),
        ("kiln_distributor_jfr_rejected_recordings_total", "JFR recordings /ingest refused.", |c| {
            &c.jfr_rejected_recordings
        }),
        ("kiln_distributor_jfr_bytes_total", "Bytes of the JFR recordings stored, inflated.", |c| &c.jfr_bytes),
        ("kiln_distributor_otlp_requests_total", "OTLP profile export requests, gRPC and HTTP.", |c| &c.otlp_requests),
    ];
    for (name, help, f) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, c) in cores.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{i}\"}} {}", f(c).load(Relaxed));
        }
    }
    super::discard::render(cores.iter().map(|c| &c.usage), out);
    super::offload::render(out);
}
