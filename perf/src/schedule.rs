//! Open-loop scheduling arithmetic.
//!
//! At `rate` requests per second, request `k` (0-based, counted over all threads) is due at
//! `start + k / rate`. Thread `t` of `T` owns the requests with `k % T == t`, so the threads
//! interleave on one global schedule and the total rate is exact whatever `T` is. The due
//! time is computed from `k`, never by adding intervals, so rounding never drifts. Latency is
//! measured from the due time: a server that falls behind shows as latency, and the schedule
//! never slows down to match it (no coordinated omission).

use std::time::{Duration, Instant};

/// When request `k` is due, relative to the start.
pub fn offset(k: u64, rate: f64) -> Duration {
    debug_assert!(rate > 0.0);
    Duration::from_secs_f64(k as f64 / rate)
}

/// How many requests fall due strictly before `duration`.
pub fn count_within(duration: Duration, rate: f64) -> u64 {
    (duration.as_secs_f64() * rate).ceil() as u64
}

/// The first request of thread `thread` and the step between its requests.
pub fn thread_share(thread: usize, threads: usize) -> (u64, u64) {
    debug_assert!(thread < threads);
    (thread as u64, threads as u64)
}

/// Due requests `(k, due)` of one thread's share (`first`, then every `step`-th), each sent
/// once its due time has come, from a thread of its own that sleeps to each with the OS's
/// timer (tens of microseconds late). The runtime's timer has one millisecond's resolution,
/// rounded up, and an open loop's latency counts from the due time: waking on it added up to
/// a millisecond of the client's own to every figure. The channel holds what the runtime has
/// not taken yet; the schedule does not wait for it (each due time comes from `k`).
pub fn pacer(start: Instant, deadline: Instant, first: u64, step: u64, rate: f64) -> flume::Receiver<(u64, Instant)> {
    let (tx, rx) = flume::unbounded();
    std::thread::Builder::new()
        .name("kiln-load-pacer".into())
        .spawn(move || {
            let mut k = first;
            loop {
                let due = start + offset(k, rate);
                if due >= deadline {
                    return;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.send((k, due)).is_err() {
                    return;
                }
                k += step;
            }
        })
        .expect("starting the pacer thread");
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pacer_hands_over_each_due_request_once_in_order_and_not_early() {
        let start = Instant::now();
        let (rate, duration) = (2000.0, Duration::from_millis(30));
        let (first, step) = thread_share(1, 3);
        // Each with the time the receiver got it.
        let got: Vec<(u64, Instant, Instant)> =
            pacer(start, start + duration, first, step, rate).iter().map(|(k, due)| (k, due, Instant::now())).collect();
        let want: Vec<u64> = (first..count_within(duration, rate)).step_by(step as usize).collect();
        assert_eq!(got.iter().map(|&(k, ..)| k).collect::<Vec<_>>(), want);
        for &(k, due, received) in &got {
            assert_eq!(due, start + offset(k, rate));
            // Sent once due, never ahead of it.
            assert!(received >= due, "request {k} handed over before it was due");
        }
    }

    #[test]
    fn test_schedule_offsets_are_exact() {
        assert_eq!(offset(0, 100.0), Duration::ZERO);
        assert_eq!(offset(100, 100.0), Duration::from_secs(1));
        assert_eq!(offset(1, 4.0), Duration::from_millis(250));
        // No drift after many intervals.
        let rate = 3.0;
        let d = offset(3_000_000, rate);
        assert_eq!(d, Duration::from_secs(1_000_000));
        let mut last = Duration::ZERO;
        for k in 1..1000 {
            let o = offset(k, 333.3);
            assert!(o > last);
            last = o;
        }
    }

    #[test]
    fn test_schedule_count_within_matches_offsets() {
        for (secs, rate) in [(1.0, 100.0), (5.0, 3.0), (0.5, 7.0), (2.0, 0.5), (1.0, 1000.0)] {
            let d = Duration::from_secs_f64(secs);
            let n = count_within(d, rate);
            assert!(offset(n.saturating_sub(1), rate) < d || n == 0);
            assert!(offset(n, rate) >= d);
        }
        assert_eq!(count_within(Duration::from_secs(10), 100.0), 1000);
    }

    #[test]
    fn test_schedule_threads_partition_requests() {
        let threads = 3;
        let rate = 90.0;
        let total = count_within(Duration::from_secs(1), rate);
        let mut seen = vec![0u32; total as usize];
        for t in 0..threads {
            let (first, step) = thread_share(t, threads);
            let mut k = first;
            let mut previous: Option<Duration> = None;
            while k < total {
                seen[k as usize] += 1;
                let o = offset(k, rate);
                if let Some(p) = previous {
                    // Each thread runs at rate / threads.
                    let gap = (o - p).as_secs_f64();
                    assert!((gap - threads as f64 / rate).abs() < 1e-9);
                }
                previous = Some(o);
                k += step;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
    }
}
