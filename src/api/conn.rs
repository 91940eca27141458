//! Connection hygiene: the read, write and idle deadlines of each connection, the
//! process-wide cap on open connections, and back-off when `accept` fails.
//!
//! Deadlines are kept by a supervisor around each hyper connection rather than by hyper's
//! own timer (hyper wants `Send + Sync` sleeps; monoio's timers belong to their thread).
//! `WatchedIo` (bytes read and written) and `RequestGuard` (requests begun, responses
//! handed over) record what the connection is doing in its `ConnWatch`; `Supervised` sleeps
//! until the earliest deadline that state implies and then closes the connection by dropping
//! it (an idle one gets a graceful shutdown first: GOAWAY on HTTP/2).
//!
//! What each deadline covers:
//! - read: an HTTP/1 request's head, from its first byte (on a new connection, from the
//!   accept), until the handler is called; the body, until it is read, is enforced by the
//!   handler with the deadline `RequestGuard::begin` returns (same start, HTTP/2 too: from
//!   the stream's arrival);
//! - write: a response from the moment it is ready until hyper has taken its whole body,
//!   and any stretch in which the socket takes no bytes while kiln has some to write;
//! - idle: an HTTP/1 keep-alive connection between requests, or an HTTP/2 connection with
//!   no stream open (pings do not count).
use http_body::{Body, Frame, SizeHint};
use monoio::io::poll_io::{AsyncRead, AsyncWrite, ReadBuf};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long an idle connection has, once told to shut down, to finish doing so.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// The three deadlines; `None` is no limit (a zero flag, as in Go's server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    pub idle: Option<Duration>,
}

impl Timeouts {
    pub fn new(read: Duration, write: Duration, idle: Duration) -> Self {
        let some = |d: Duration| (!d.is_zero()).then_some(d);
        Timeouts { read: some(read), write: some(write), idle: some(idle) }
    }
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Read,
    Write,
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// Nothing, or only a prefix of the HTTP/2 preface, read yet.
    Unknown,
    H1,
    H2,
}

/// What one connection is doing, as far as its deadlines go. Lives on its core.
pub struct ConnWatch {
    t: Timeouts,
    proto: Cell<Proto>,
    /// Bytes of the HTTP/2 preface matched so far.
    preface: Cell<usize>,
    /// Requests whose handler runs or whose response body hyper has not taken in full.
    active: Cell<u32>,
    /// When `active` last fell to zero (at first: the accept).
    idle_since: Cell<Instant>,
    /// HTTP/1: when the first byte of the next request's head arrived; `None` while no
    /// request is being read. A new connection starts with its accept time.
    head_started: Cell<Option<Instant>>,
    /// Responses ready and not yet taken by hyper, as (ready at, id), oldest first (pushed
    /// in time order): the front's write deadline comes first. A deque rather than a sorted
    /// set so that a request costs no allocation once the connection has had one.
    writes: RefCell<VecDeque<(Instant, u64)>>,
    next_write: Cell<u64>,
    /// Since when the socket has refused bytes (a write returned `Pending`) with no write
    /// taking any since.
    write_blocked: Cell<Option<Instant>>,
    /// The supervisor's task, woken when a change may bring a deadline forward.
    waker: RefCell<Option<Waker>>,
    /// True while the supervisor polls the connection: it recomputes the deadline right
    /// after, so changes made meanwhile need no wake.
    polling: Cell<bool>,
}

impl ConnWatch {
    pub fn new(t: Timeouts) -> Rc<Self> {
        let now = Instant::now();
        Rc::new(ConnWatch {
            t,
            proto: Cell::new(Proto::Unknown),
            preface: Cell::new(0),
            active: Cell::new(0),
            idle_since: Cell::new(now),
            head_started: Cell::new(Some(now)),
            writes: RefCell::new(VecDeque::new()),
            next_write: Cell::new(0),
            write_blocked: Cell::new(None),
            waker: RefCell::new(None),
            polling: Cell::new(false),
        })
    }

    fn wake(&self) {
        if !self.polling.get() {
            if let Some(w) = self.waker.borrow().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    fn set_waker(&self, w: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|old| old.will_wake(w)) {
            *slot = Some(w.clone());
        }
    }

    fn on_read(&self, bytes: &[u8], now: Instant) {
        if self.proto.get() == Proto::Unknown {
            let seen = self.preface.get();
            let n = bytes.len().min(H2_PREFACE.len() - seen);
            if bytes[..n] == H2_PREFACE[seen..seen + n] {
                self.preface.set(seen + n);
                if seen + n == H2_PREFACE.len() {
                    // HTTP/2 requests are streams: no head deadline, the idle one applies.
                    self.proto.set(Proto::H2);
                    self.head_started.set(None);
                }
            } else {
                self.proto.set(Proto::H1);
            }
        }
        if self.proto.get() != Proto::H2 && self.active.get() == 0 && self.head_started.get().is_none() {
            self.head_started.set(Some(now));
            self.wake();
        }
    }

    fn on_write(&self, progress: bool, now: Instant) {
        if progress {
            self.write_blocked.set(None);
        } else if self.write_blocked.get().is_none() {
            self.write_blocked.set(Some(now));
            self.wake();
        }
    }

    /// The earliest deadline the connection's state implies, with what it is for.
    fn deadline(&self) -> Option<(Instant, Reason)> {
        let mut best: Option<(Instant, Reason)> = None;
        let mut consider = |at: Option<Instant>, r: Reason| {
            if let Some(at) = at {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, r));
                }
            }
        };
        if let Some(w) = self.t.write {
            consider(self.write_blocked.get().map(|t| t + w), Reason::Write);
            consider(self.writes.borrow().front().map(|(t, _)| *t + w), Reason::Write);
        }
        if self.active.get() == 0 && self.write_blocked.get().is_none() {
            match (self.proto.get(), self.head_started.get()) {
                (Proto::H1 | Proto::Unknown, Some(t)) => consider(self.t.read.map(|r| t + r), Reason::Read),
                _ => consider(self.t.idle.map(|i| self.idle_since.get() + i), Reason::Idle),
            }
        }
        best
    }
}

/// When the handler must have the request body by (`None`: no read timeout); put in the
/// request's extensions by the connection's service.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Option<Instant>);

/// One request on a connection, from the handler's call until hyper has taken the whole
/// response body (or the request is abandoned).
pub struct RequestGuard {
    watch: Rc<ConnWatch>,
    write: Option<(Instant, u64)>,
}

impl RequestGuard {
    /// A request whose head has been read; returns the deadline for its body.
    pub fn begin(watch: &Rc<ConnWatch>) -> (RequestGuard, BodyDeadline) {
        let now = Instant::now();
        let started = match watch.proto.get() {
            Proto::H2 => now,
            _ => watch.head_started.take().unwrap_or(now),
        };
        watch.active.set(watch.active.get() + 1);
        let deadline = watch.t.read.map(|r| started + r);
        (RequestGuard { watch: watch.clone(), write: None }, BodyDeadline(deadline))
    }

    /// The response is ready: from now on the write deadline runs.
    pub fn responding(mut self) -> RequestGuard {
        let id = self.watch.next_write.get();
        self.watch.next_write.set(id + 1);
        let key = (Instant::now(), id);
        self.watch.writes.borrow_mut().push_back(key);
        self.write = Some(key);
        self.watch.wake();
        self
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let w = &self.watch;
        if let Some(key) = self.write {
            let mut writes = w.writes.borrow_mut();
            if let Some(i) = writes.iter().position(|k| *k == key) {
                writes.remove(i);
            }
        }
        let n = w.active.get().saturating_sub(1);
        w.active.set(n);
        if n == 0 {
            w.idle_since.set(Instant::now());
            w.wake();
        }
    }
}

/// A response body that holds its request's guard until hyper drops it.
pub struct GuardedBody<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        GuardedBody { inner, _guard: guard }
    }
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, reporting reads and writes to its `ConnWatch`.
pub struct WatchedIo<T> {
    inner: T,
    watch: Rc<ConnWatch>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, watch: Rc<ConnWatch>) -> Self {
        WatchedIo { inner, watch }
    }

    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.watch.on_write(true, Instant::now()),
            Poll::Pending => self.watch.on_write(false, Instant::now()),
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.on_read(&buf.filled()[before..], Instant::now());
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_pending() {
            self.watch.on_write(false, Instant::now());
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a supervised connection ended.
pub enum Ended<T> {
    /// The connection future finished by itself (the peer closed, an error, or a graceful
    /// shutdown completed).
    Finished(T),
    /// A deadline passed; the connection has been dropped, which closes its socket (or, for
    /// the idle one, it shut down gracefully).
    TimedOut(Reason),
}

/// Runs `conn` until it ends or one of its deadlines passes. `shutdown` starts a graceful
/// shutdown, used once the idle deadline passes; the connection then has `IDLE_GRACE`.
pub fn supervise<F, G>(conn: F, watch: Rc<ConnWatch>, shutdown: G) -> Supervised<F, G>
where
    F: Future,
    G: FnOnce(Pin<&mut F>) + Unpin,
{
    Supervised { conn: Box::pin(conn), shutdown: Some(shutdown), watch, sleep: None, fired: None, closing: None }
}

pub struct Supervised<F, G> {
    conn: Pin<Box<F>>,
    shutdown: Option<G>,
    watch: Rc<ConnWatch>,
    sleep: Option<Pin<Box<monoio::time::Sleep>>>,
    /// The deadline the sleep last fired for: reached, even if the clock reads a hair less.
    fired: Option<Instant>,
    /// Set once an idle connection was told to shut down: when it is dropped regardless.
    closing: Option<Instant>,
}

impl<F, G> Future for Supervised<F, G>
where
    F: Future,
    G: FnOnce(Pin<&mut F>) + Unpin,
{
    type Output = Ended<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            this.watch.polling.set(true);
            let r = this.conn.as_mut().poll(cx);
            this.watch.polling.set(false);
            if let Poll::Ready(out) = r {
                // A graceful shutdown on the idle deadline that completed is still an idle close.
                return Poll::Ready(match this.closing {
                    Some(_) => Ended::TimedOut(Reason::Idle),
                    None => Ended::Finished(out),
                });
            }
            let next = match this.closing {
                Some(at) => Some((at, Reason::Idle)),
                None => this.watch.deadline(),
            };
            this.watch.set_waker(cx.waker());
            let Some((at, reason)) = next else {
                return Poll::Pending;
            };
            let now = Instant::now();
            if at <= now || this.fired == Some(at) {
                if reason == Reason::Idle && this.closing.is_none() {
                    if let Some(shutdown) = this.shutdown.take() {
                        shutdown(this.conn.as_mut());
                    }
                    this.closing = Some(now + IDLE_GRACE);
                    continue;
                }
                return Poll::Ready(Ended::TimedOut(reason));
            }
            let at_m = monoio::time::Instant::from_std(at);
            let sleep = this.sleep.get_or_insert_with(|| Box::pin(monoio::time::sleep_until(at_m)));
            if sleep.deadline() != at_m {
                sleep.as_mut().reset(at_m);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.fired = Some(at);
        }
    }
}

/// The process-wide count and cap of open connections, and what happened to connections.
/// Written by every core (relaxed atomics: these are counts, not synchronisation).
pub struct Conns {
    /// 0: no limit.
    limit: usize,
    open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    accept_errors: AtomicU64,
    timed_out: [AtomicU64; 3],
    /// Milliseconds since `epoch` (+1 s, so the first error logs) of the last logged accept
    /// error, and the errors not logged since.
    logged_at_ms: AtomicU64,
    suppressed: AtomicU64,
    epoch: Instant,
}

impl Conns {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Conns {
            limit,
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            timed_out: Default::default(),
            logged_at_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// A slot for a connection just accepted, or `None` when the cap is reached (counted:
    /// the caller closes the connection at once).
    pub fn try_open(self: &Arc<Self>) -> Option<ConnSlot> {
        let n = self.open.fetch_add(1, Relaxed) + 1;
        if self.limit > 0 && n > self.limit {
            self.open.fetch_sub(1, Relaxed);
            self.refused.fetch_add(1, Relaxed);
            return None;
        }
        self.accepted.fetch_add(1, Relaxed);
        Some(ConnSlot(self.clone()))
    }

    pub fn timed_out(&self, r: Reason) {
        self.timed_out[r as usize].fetch_add(1, Relaxed);
    }

    /// Counts a failed accept; returns how many were not logged since the last one logged
    /// when this one should be (at most one a second for the whole process).
    pub fn accept_failed(&self, now: Instant) -> Option<u64> {
        self.accept_errors.fetch_add(1, Relaxed);
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1000;
        let last = self.logged_at_ms.load(Relaxed);
        if ms >= last + 1000 && self.logged_at_ms.compare_exchange(last, ms, Relaxed, Relaxed).is_ok() {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }

    /// Prometheus text for /metrics.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let mut row = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        row("kiln_http_connections_open", "gauge", "Client connections open.", self.open.load(Relaxed) as u64);
        row(
            "kiln_http_connection_limit",
            "gauge",
            "Cap on open client connections (-server.http-conn-limit); 0 = none.",
            self.limit as u64,
        );
        row(
            "kiln_http_connections_accepted_total",
            "counter",
            "Client connections served.",
            self.accepted.load(Relaxed),
        );
        row(
            "kiln_http_connections_refused_total",
            "counter",
            "Connections closed at once because the connection cap was reached.",
            self.refused.load(Relaxed),
        );
        row(
            "kiln_http_accept_errors_total",
            "counter",
            "Failed accepts (out of descriptors or memory, or the peer gone).",
            self.accept_errors.load(Relaxed),
        );
        let name = "kiln_http_connections_timed_out_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections the server closed when a read, write or idle timeout passed.\n# TYPE {name} counter"
        );
        for (r, label) in [(Reason::Read, "read"), (Reason::Write, "write"), (Reason::Idle, "idle")] {
            let _ = writeln!(out, "{name}{{reason=\"{label}\"}} {}", self.timed_out[r as usize].load(Relaxed));
        }
    }
}

/// An open connection's place under the cap, given back when dropped.
pub struct ConnSlot(Arc<Conns>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// The wait before the next `accept` after one failed: none for errors about one connection
/// (the peer reset it before it was accepted; a signal), else 5 ms doubling to 1 s, so a
/// process out of descriptors or memory neither spins nor stops accepting for long once
/// they are back. Reset by a successful accept.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    delay: Duration,
}

impl AcceptBackoff {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    pub fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    pub fn next(&mut self, e: &io::Error) -> Duration {
        if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO)) {
            return Duration::ZERO;
        }
        self.delay = if self.delay.is_zero() { Self::MIN } else { (self.delay * 2).min(Self::MAX) };
        self.delay
    }
}

/// Closes a connection refused over the cap with a reset, so neither side keeps it in
/// TIME_WAIT and the client learns at once.
pub fn refuse(fd: std::os::fd::RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` is an open socket owned by the caller, which closes it right after;
    // `linger` is a valid `struct linger` of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(read: u64, write: u64, idle: u64) -> Timeouts {
        Timeouts::new(Duration::from_secs(read), Duration::from_secs(write), Duration::from_secs(idle))
    }

    #[test]
    fn zero_is_no_limit() {
        assert_eq!(t(0, 5, 0), Timeouts { read: None, write: Some(Duration::from_secs(5)), idle: None });
    }

    #[test]
    fn http1_request_cycle() {
        let w = ConnWatch::new(t(10, 20, 30));
        let accepted = w.idle_since.get();
        // A new connection must send its first request within the read timeout of the accept.
        assert_eq!(w.deadline(), Some((accepted + Duration::from_secs(10), Reason::Read)));
        let t1 = accepted + Duration::from_millis(5);
        w.on_read(b"POST /ingest HTTP/1.1\r\n", t1);
        assert_eq!(w.proto.get(), Proto::H1);
        let (guard, body) = RequestGuard::begin(&w);
        // The body is due within the read timeout of the request's start (the accept here).
        assert_eq!(body.0, Some(accepted + Duration::from_secs(10)));
        // While the handler runs, no connection deadline.
        assert_eq!(w.deadline(), None);
        let guard = guard.responding();
        let (at, r) = w.deadline().unwrap();
        assert_eq!(r, Reason::Write);
        assert!(at >= accepted + Duration::from_secs(20));
        drop(guard);
        // Between requests: idle.
        let (at, r) = w.deadline().unwrap();
        assert_eq!(r, Reason::Idle);
        assert_eq!(at, w.idle_since.get() + Duration::from_secs(30));
        // The next request's first byte starts its read deadline.
        let t2 = Instant::now();
        w.on_read(b"G", t2);
        assert_eq!(w.deadline(), Some((t2 + Duration::from_secs(10), Reason::Read)));
        let (g, body) = RequestGuard::begin(&w);
        assert_eq!(body.0, Some(t2 + Duration::from_secs(10)));
        drop(g);
    }

    #[test]
    fn blocked_writes_count_against_the_write_timeout() {
        let w = ConnWatch::new(t(10, 20, 30));
        w.on_read(b"GET / HTTP/1.1\r\n\r\n", Instant::now());
        let g = RequestGuard::begin(&w).0;
        drop(g);
        let stalled = Instant::now();
        w.on_write(false, stalled);
        // A stalled write is not idle: the write deadline, from the stall.
        assert_eq!(w.deadline(), Some((stalled + Duration::from_secs(20), Reason::Write)));
        // A later Pending does not move it; progress clears it.
        w.on_write(false, stalled + Duration::from_secs(1));
        assert_eq!(w.deadline(), Some((stalled + Duration::from_secs(20), Reason::Write)));
        w.on_write(true, stalled + Duration::from_secs(2));
        assert_eq!(w.deadline().unwrap().1, Reason::Idle);
    }

    #[test]
    fn http2_is_idle_without_streams() {
        let w = ConnWatch::new(t(10, 20, 30));
        let accepted = w.idle_since.get();
        // The preface may come in pieces.
        w.on_read(&H2_PREFACE[..3], accepted);
        assert_eq!(w.proto.get(), Proto::Unknown);
        w.on_read(&H2_PREFACE[3..], accepted);
        assert_eq!(w.proto.get(), Proto::H2);
        // Frames (settings, pings) do not start a read deadline: only idle applies.
        w.on_read(b"\x00\x00\x08\x06", accepted);
        assert_eq!(w.deadline(), Some((accepted + Duration::from_secs(30), Reason::Idle)));
        let (a, body) = RequestGuard::begin(&w);
        assert!(body.0.unwrap() > accepted);
        let b = RequestGuard::begin(&w).0;
        assert_eq!(w.deadline(), None);
        drop(a);
        assert_eq!(w.deadline(), None, "a stream is still open");
        drop(b);
        assert_eq!(w.deadline().unwrap().1, Reason::Idle);
    }

    #[test]
    fn cap_counts_and_releases() {
        let c = Conns::new(2);
        let a = c.try_open().unwrap();
        let _b = c.try_open().unwrap();
        assert!(c.try_open().is_none());
        assert_eq!((c.open(), c.refused.load(Relaxed)), (2, 1));
        drop(a);
        assert!(c.try_open().is_some());
        let unlimited = Conns::new(0);
        let slots: Vec<_> = (0..100).map(|_| unlimited.try_open().unwrap()).collect();
        assert_eq!(unlimited.open(), 100);
        drop(slots);
        assert_eq!(unlimited.open(), 0);
    }

    #[test]
    fn accept_errors_log_once_a_second_with_the_count() {
        let c = Conns::new(0);
        let t0 = c.epoch;
        assert_eq!(c.accept_failed(t0), Some(0));
        for i in 1..100 {
            assert_eq!(c.accept_failed(t0 + Duration::from_millis(i * 5)), None);
        }
        assert_eq!(c.accept_failed(t0 + Duration::from_millis(1000)), Some(99));
        assert_eq!(c.accept_failed(t0 + Duration::from_millis(1500)), None);
        assert_eq!(c.accept_errors.load(Relaxed), 102);
    }

    #[test]
    fn accept_backoff_doubles_to_a_second() {
        let mut b = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let waits: Vec<u64> = (0..10).map(|_| b.next(&emfile).as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(b.next(&io::Error::from_raw_os_error(libc::ECONNABORTED)), Duration::ZERO);
        b.reset();
        assert_eq!(b.next(&io::Error::from_raw_os_error(libc::ENFILE)), Duration::from_millis(5));
    }
}
