//! Per-tenant ingestion rate limits, as Pyroscope's distributor applies them
//! (`-distributor.ingestion-rate-limit-mb`, `-distributor.ingestion-burst-size-mb`).
//!
//! Ownership: each core keeps its own buckets for the pushes it accepts and refills them at
//! 1/N of the tenant's rate (Pyroscope's "global" strategy, with cores in place of
//! distributors); the burst is not divided, so a profile larger than the burst is always
//! rejected, as in Pyroscope. A rate of 0 disables the limit.
use std::collections::HashMap;

struct Bucket {
    tokens: f64,
    last_ns: i64,
}

pub struct RateLimiter {
    share: f64,
    buckets: HashMap<String, Bucket>,
}

impl RateLimiter {
    pub fn new(cores: usize) -> Self {
        RateLimiter { share: 1.0 / cores.max(1) as f64, buckets: HashMap::new() }
    }

    /// Takes `bytes` from the tenant's bucket; false when the push must be refused.
    pub fn allow(&mut self, tenant: &str, rate_mb: f64, burst_mb: f64, bytes: usize, now_ns: i64) -> bool {
        if rate_mb <= 0.0 {
            return true;
        }
        let rate = rate_mb * 1024.0 * 1024.0 * self.share;
        let burst = burst_mb * 1024.0 * 1024.0;
        let b = self.buckets.entry(tenant.to_string()).or_insert(Bucket { tokens: burst, last_ns: now_ns });
        let elapsed = (now_ns - b.last_ns).max(0) as f64 / 1e9;
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last_ns = now_ns;
        if (bytes as f64) <= b.tokens {
            b.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut r = RateLimiter::new(1);
        let mb = 1024 * 1024;
        assert!(r.allow("t", 4.0, 2.0, 2 * mb, 0));
        assert!(!r.allow("t", 4.0, 2.0, 1, 0));
        assert!(r.allow("t", 4.0, 2.0, mb, 250_000_000));
        assert!(!r.allow("t", 4.0, 2.0, 3 * mb, 10_000_000_000), "larger than the burst");
        assert!(r.allow("u", 4.0, 2.0, mb, 0), "tenants are independent");
        assert!(r.allow("t", 0.0, 0.0, 100 * mb, 0), "0 disables");
    }
}
