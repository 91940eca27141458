//! Request bodies in flight: a per-process budget of body bytes being read or handled, and
//! the read of one body against its size limit and that budget.
//!
//! A body's bytes are reserved before they are read — all of them at once when the request
//! declares its length (`Content-Length`), frame by frame otherwise — and given back when
//! the request is done, however it ends (the `Reservation` is dropped with the handler's
//! future, a disconnect included). A body that does not fit waits briefly for room and is
//! then refused (429 / `resource_exhausted`), so a burst of large pushes cannot take the
//! process out of memory; one larger than the whole budget is refused at once (413).
use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// How long a body waits for room in the budget before it is refused: 75 ms in all.
const WAITS: [Duration; 4] =
    [Duration::from_millis(5), Duration::from_millis(10), Duration::from_millis(20), Duration::from_millis(40)];

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// Over the route's body limit (declared or read so far).
    TooLarge { limit: usize },
    /// Larger than the whole in-flight budget: it could never fit.
    OverBudget { bytes: u64, budget: u64 },
    /// No room in the budget after the brief wait.
    Busy { in_flight: u64, budget: u64 },
    /// Reading failed: the peer reset the stream or closed the connection.
    Read(String),
}

/// The process-wide budget. Every core reserves from it (relaxed atomics: the budget is a
/// bound on memory, not an ordering between threads).
pub struct BodyBudget {
    /// 0: no limit.
    limit: u64,
    in_flight: AtomicU64,
    refused: AtomicU64,
}

impl BodyBudget {
    pub fn new(limit: u64) -> Self {
        BodyBudget { limit, in_flight: AtomicU64::new(0), refused: AtomicU64::new(0) }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    pub fn reservation(&self) -> Reservation<'_> {
        Reservation { budget: self, bytes: 0 }
    }

    fn try_take(&self, n: u64) -> bool {
        self.in_flight
            .fetch_update(Relaxed, Relaxed, |cur| (self.limit == 0 || cur + n <= self.limit).then_some(cur + n))
            .is_ok()
    }

    /// Prometheus text for /metrics.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let rows: [(&str, &str, &str, u64); 3] = [
            (
                "kiln_http_request_body_bytes_in_flight",
                "gauge",
                "Request body bytes being read or handled.",
                self.in_flight(),
            ),
            (
                "kiln_http_request_body_bytes_limit",
                "gauge",
                "Budget of request body bytes in flight (-server.max-inflight-body-bytes); 0 = none.",
                self.limit,
            ),
            (
                "kiln_http_request_body_refused_total",
                "counter",
                "Requests refused because their body did not fit in the in-flight budget.",
                self.refused.load(Relaxed),
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    }
}

/// Bytes one request holds in the budget; given back on drop.
pub struct Reservation<'a> {
    budget: &'a BodyBudget,
    bytes: u64,
}

impl Reservation<'_> {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows the reservation to `total` bytes, waiting briefly for room.
    pub async fn grow_to(&mut self, total: u64) -> Result<(), BodyError> {
        if total <= self.bytes {
            return Ok(());
        }
        let b = self.budget;
        if b.limit > 0 && total > b.limit {
            b.refused.fetch_add(1, Relaxed);
            return Err(BodyError::OverBudget { bytes: total, budget: b.limit });
        }
        let need = total - self.bytes;
        let mut waits = WAITS.iter();
        loop {
            if b.try_take(need) {
                self.bytes = total;
                return Ok(());
            }
            match waits.next() {
                Some(d) => monoio::time::sleep(*d).await,
                None => {
                    b.refused.fetch_add(1, Relaxed);
                    return Err(BodyError::Busy { in_flight: b.in_flight(), budget: b.limit });
                }
            }
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.in_flight.fetch_sub(self.bytes, Relaxed);
        }
    }
}

/// Reads a whole body of at most `limit` bytes into `res`'s budget. A declared length over
/// the limit, or over the budget, is refused before any byte is read.
pub async fn read_body<B>(mut body: B, limit: usize, res: &mut Reservation<'_>) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let declared = body.size_hint().exact();
    if let Some(n) = declared {
        if n > limit as u64 {
            return Err(BodyError::TooLarge { limit });
        }
        res.grow_to(n).await?;
    }
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| BodyError::Read(e.to_string()))?.into_data() else {
            continue; // trailers: nothing kiln reads
        };
        if data.is_empty() {
            continue;
        }
        total += data.len();
        if total > limit {
            return Err(BodyError::TooLarge { limit });
        }
        res.grow_to(total as u64).await?;
        // One frame (the usual case for small bodies) is kept as is; more are joined once.
        if let Some(buf) = rest.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(f) = first.take() {
            let mut buf = BytesMut::with_capacity(declared.map_or(total * 2, |n| n as usize).clamp(total, limit));
            buf.extend_from_slice(&f);
            buf.extend_from_slice(&data);
            rest = Some(buf);
        } else {
            first = Some(data);
        }
    }
    Ok(match rest {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap().block_on(f)
    }

    #[test]
    fn reservations_share_the_budget_and_give_it_back() {
        let b = BodyBudget::new(100);
        block_on(async {
            let mut a = b.reservation();
            a.grow_to(60).await.unwrap();
            a.grow_to(70).await.unwrap();
            assert_eq!(b.in_flight(), 70);
            let mut c = b.reservation();
            // No room: refused after the brief wait, holding nothing.
            assert!(matches!(c.grow_to(40).await, Err(BodyError::Busy { in_flight: 70, budget: 100 })));
            assert_eq!(c.bytes(), 0);
            c.grow_to(30).await.unwrap();
            assert_eq!(b.in_flight(), 100);
            // Larger than the whole budget: refused without waiting.
            let mut d = b.reservation();
            assert!(matches!(d.grow_to(101).await, Err(BodyError::OverBudget { bytes: 101, budget: 100 })));
            drop(a);
            assert_eq!(b.in_flight(), 30);
            drop(c);
            assert_eq!(b.in_flight(), 0);
            assert_eq!(b.refused.load(Relaxed), 2);
        });
    }

    #[test]
    fn a_reservation_waits_for_room() {
        let b: &'static BodyBudget = Box::leak(Box::new(BodyBudget::new(100)));
        block_on(async move {
            let mut a = b.reservation();
            a.grow_to(100).await.unwrap();
            monoio::spawn(async move {
                monoio::time::sleep(Duration::from_millis(1)).await;
                drop(a);
            });
            let mut c = b.reservation();
            c.grow_to(50).await.unwrap();
            assert_eq!(b.in_flight(), 50);
        });
    }

    /// A body of the given frames, declaring `len` when given.
    struct Frames(std::collections::VecDeque<Bytes>, Option<u64>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            self.1.map(http_body::SizeHint::with_exact).unwrap_or_default()
        }
    }

    fn frames(parts: &[&'static [u8]], declared: Option<u64>) -> Frames {
        Frames(parts.iter().map(|p| Bytes::from_static(p)).collect(), declared)
    }

    #[test]
    fn bodies_are_read_whole_within_limit_and_budget() {
        let b = BodyBudget::new(10);
        block_on(async {
            let mut r = b.reservation();
            let got = read_body(frames(&[b"abc", b"", b"de"], None), 8, &mut r).await.unwrap();
            assert_eq!((&got[..], r.bytes(), b.in_flight()), (&b"abcde"[..], 5, 5));
            drop(r);
            // A declared length over the limit, or over the budget, is refused before any
            // byte is read (no frames are given: a read would answer an empty body, not the error).
            let mut r = b.reservation();
            assert!(matches!(read_body(frames(&[], Some(9)), 8, &mut r).await, Err(BodyError::TooLarge { limit: 8 })));
            assert!(matches!(
                read_body(frames(&[], Some(11)), 100, &mut r).await,
                Err(BodyError::OverBudget { bytes: 11, budget: 10 })
            ));
            // Undeclared: refused as soon as what arrived passes the limit.
            assert!(matches!(
                read_body(frames(&[b"12345", b"6789"], None), 8, &mut r).await,
                Err(BodyError::TooLarge { limit: 8 })
            ));
            drop(r);
            // A declared body reserves all of it up front.
            let mut r = b.reservation();
            let got = read_body(frames(&[b"1234", b"5678"], Some(8)), 8, &mut r).await.unwrap();
            assert_eq!((&got[..], r.bytes()), (&b"12345678"[..], 8));
            let mut other = b.reservation();
            assert!(matches!(
                read_body(frames(&[b"abc"], Some(3)), 8, &mut other).await,
                Err(BodyError::Busy { in_flight: 8, budget: 10 })
            ));
            drop(r);
            assert_eq!(b.in_flight(), 0);
        });
    }

    #[test]
    fn no_limit_takes_anything() {
        let b = BodyBudget::new(0);
        block_on(async {
            let mut a = b.reservation();
            a.grow_to(u64::MAX / 2).await.unwrap();
            assert_eq!(b.in_flight(), u64::MAX / 2);
        });
    }
}
