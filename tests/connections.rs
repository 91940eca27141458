//! Connections: read, write and idle timeouts, the connection cap, running out of
//! descriptors, body limits checked before the body is read, the in-flight body budget, and
//! restarting on the same port right after `kill -9`.
mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Generous: only there so a broken server fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    s
}

/// Reads what the server sends until it closes the connection (EOF or reset), writing
/// `drip` every read timeout meanwhile (nothing when empty). Panics if it stays open.
fn read_until_closed(s: &mut TcpStream, drip: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "the server kept the connection open; read so far: {out:?}");
        if !drip.is_empty() {
            // Fails once the server has closed; the read below then sees it.
            let _ = s.write_all(drip);
        }
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return out, // reset
        }
    }
}

/// Sends `bytes` on a new connection and returns what the server sends before closing it.
fn exchange_until_closed(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    // May fail when the server has already reset the connection; the read then sees it.
    let _ = s.write_all(bytes);
    read_until_closed(&mut s, b"")
}

/// One keep-alive request on an open connection; returns the raw response.
fn keep_alive_get(s: &mut TcpStream, path: &str) -> String {
    try_keep_alive_get(s, path).expect("the connection was closed before the response")
}

/// `keep_alive_get`, with `None` when the server closes the connection instead.
fn try_keep_alive_get(s: &mut TcpStream, path: &str) -> Option<String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if body.len() >= len {
                return Some(text);
            }
        }
        assert!(Instant::now() < deadline, "no response");
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    // Only the idle timeout is short: nothing else can close the connections.
    let k = Kiln::start(&["-server.http-server-idle-timeout=1s", "-server.http-server-read-timeout=1h"]);

    // HTTP/1.1 keep-alive: served, then closed once idle.
    let mut s = connect(k.port);
    assert!(keep_alive_get(&mut s, "/ready").starts_with("HTTP/1.1 200"));
    assert!(read_until_closed(&mut s, b"").is_empty());

    // HTTP/2 (h2c): a request, then no stream open: GOAWAY and close.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ended = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", k.port)).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://127.0.0.1:{}/ready", k.port))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        assert_eq!(send.send_request(req).await.unwrap().status(), 200);
        // The client keeps the connection (and would ping it) forever; only the server
        // ends it.
        tokio::time::timeout(PATIENCE, conn).await
    });
    assert!(ended.is_ok(), "the idle HTTP/2 connection was not closed");
    // Counted by the server once it has closed the connection: the client may see the close
    // a moment before the count.
    let deadline = std::time::Instant::now() + PATIENCE;
    while metric(k.port, "kiln_http_connections_timed_out_total{reason=\"idle\"}") < 2.0 {
        assert!(std::time::Instant::now() < deadline, "the two idle closes were not counted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(metric(k.port, "kiln_http_connections_timed_out_total{reason=\"read\"}"), 0.0);
}

#[test]
fn slow_heads_and_bodies_are_closed_after_the_read_timeout() {
    // Only the read timeout is short.
    let k = Kiln::start(&["-server.http-server-read-timeout=1s", "-server.http-server-idle-timeout=1h"]);
    let port = k.port;
    // A head that never ends, a header line at a time.
    let head = std::thread::spawn(move || {
        let mut s = connect(port);
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
        read_until_closed(&mut s, b"X-Slow: 1\r\n")
    });
    // A body that never ends, a byte at a time.
    let body = std::thread::spawn(move || {
        let mut s = connect(port);
        s.write_all(b"POST /ingest?name=slow.cpu HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nabc")
            .unwrap();
        read_until_closed(&mut s, b"x")
    });
    // Meanwhile everyone else is served.
    while !(head.is_finished() && body.is_finished()) {
        assert_eq!(raw_get(port, "/ready").map(|r| r.0), Some(200));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The head: dropped without an answer.
    assert!(head.join().unwrap().is_empty());
    // The body: answered 408 (the handler gave up on it), then closed.
    let (status, msg) = parse_response(&body.join().unwrap()).expect("an HTTP answer");
    assert_eq!(status, 408, "{msg}");
    assert!(msg.contains("read timeout"), "{msg}");
    assert_eq!(metric(port, "kiln_http_connections_timed_out_total{reason=\"read\"}"), 1.0);
    assert_eq!(metric(port, "kiln_http_request_body_bytes_in_flight"), 0.0);
    assert_eq!(raw_get(port, "/ready").map(|r| r.0), Some(200));
}

#[test]
fn a_client_that_stops_reading_is_closed_after_the_write_timeout() {
    // Only the write timeout is short.
    let k = Kiln::start(&[
        "-server.http-server-write-timeout=1s",
        "-server.http-server-read-timeout=1h",
        "-server.http-server-idle-timeout=1h",
    ]);
    // Pipelined requests for ~36 MB of answers, none of them read: the socket buffers fill
    // and the server's writes stall.
    let mut s = connect(k.port);
    let port = k.port;
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let req = format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").repeat(4000);
            // Fails once the server has closed the connection.
            let _ = s.write_all(req.as_bytes());
        })
    };
    let deadline = Instant::now() + PATIENCE;
    while metric(port, "kiln_http_connections_timed_out_total{reason=\"write\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the stalled connection was not closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    writer.join().unwrap();
    // What was sent before the stall can still be read; then the connection is gone.
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    assert_eq!(metric(port, "kiln_http_connections_timed_out_total{reason=\"read\"}"), 0.0);
}

#[test]
fn connections_past_the_cap_are_refused_until_one_closes() {
    let k = Kiln::start(&["-server.http-conn-limit=3"]);
    // Three connections, each served once so they are surely accepted and counted. (One
    // may be refused while the start-up check's connection is still being closed.)
    let mut held: Vec<TcpStream> = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while held.len() < 3 {
        assert!(Instant::now() < deadline, "three connections were not served");
        let mut s = connect(k.port);
        if try_keep_alive_get(&mut s, "/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            held.push(s);
        }
    }
    // The fourth is closed without an answer.
    let refused = exchange_until_closed(k.port, b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(refused.is_empty(), "{}", String::from_utf8_lossy(&refused));
    // The held ones are still served.
    assert!(keep_alive_get(&mut held[0], "/ready").starts_with("HTTP/1.1 200"));
    // Once one closes, new connections are served again.
    held.pop();
    let deadline = Instant::now() + PATIENCE;
    while raw_get(k.port, "/ready").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "not served after a connection closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    let refused = loop {
        // /metrics itself takes a slot: retry until the held ones are gone.
        if let Some((200, body)) = raw_get(k.port, "/metrics") {
            break body;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(refused.contains("kiln_http_connection_limit 3"), "{refused}");
    let n: f64 =
        refused.lines().find_map(|l| l.strip_prefix("kiln_http_connections_refused_total ")).unwrap().parse().unwrap();
    assert!(n >= 1.0, "{refused}");
}

/// kiln with 64 descriptors in all (soft and hard), and many more connections than that.
fn exhaust_descriptors(args: &[&str]) -> (Kiln, std::path::PathBuf, Vec<TcpStream>) {
    let log = std::env::temp_dir().join(format!("kiln-test-nofile-{}-{}.log", std::process::id(), args.len()));
    let k = Kiln::start_with(args, &Spawn { stderr: Some(log.clone()), nofile: Some((64, 64)), ..Default::default() });
    let conns: Vec<TcpStream> = (0..200).filter_map(|_| TcpStream::connect(("127.0.0.1", k.port)).ok()).collect();
    assert!(conns.len() > 64, "the kernel's backlog took only {} connections", conns.len());
    (k, log, conns)
}

fn log_lines(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().count()
}

#[test]
fn running_out_of_descriptors_neither_spins_nor_floods_the_log() {
    // No connection cap: accept itself runs out of descriptors (EMFILE).
    let (k, log, conns) = exhaust_descriptors(&["-server.http-conn-limit=0"]);
    let deadline = Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&log).unwrap().contains("accept failed") {
        assert!(Instant::now() < deadline, "no accept error logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stay out of descriptors a while: without back-off this is ~10^5 failed accepts and
    // log lines a second.
    std::thread::sleep(Duration::from_secs(3));
    let lines = log_lines(&log);
    assert!(lines < 30, "{lines} log lines:\n{}", std::fs::read_to_string(&log).unwrap());
    assert!(std::fs::read_to_string(&log).unwrap().contains("suppressed="));
    drop(conns);
    let deadline = Instant::now() + PATIENCE;
    while raw_get(k.port, "/ready").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "not served once descriptors were free");
        std::thread::sleep(Duration::from_millis(50));
    }
    let errors = metric(k.port, "kiln_http_accept_errors_total");
    assert!((1.0..1000.0).contains(&errors), "{errors} failed accepts: spinning");
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_default_connection_cap_keeps_descriptors_for_the_rest() {
    // The default cap leaves a reserve of descriptors: connections past it are refused
    // instead of accept failing, and the process stays healthy.
    let (k, log, mut conns) = exhaust_descriptors(&[]);
    // The connections past the cap are reset by the server (the others stay open, idle).
    let deadline = Instant::now() + PATIENCE;
    while !conns.iter_mut().any(closed_by_server) {
        assert!(Instant::now() < deadline, "no connection was refused");
    }
    drop(conns);
    let deadline = Instant::now() + PATIENCE;
    while raw_get(k.port, "/ready").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "not served once connections closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(k.port, "kiln_http_connection_limit"), 32.0, "64 descriptors, half kept in reserve");
    assert!(metric(k.port, "kiln_http_connections_refused_total") >= 1.0);
    // About 20 descriptors are kiln's own: with the cap, accept never ran out.
    assert_eq!(metric(k.port, "kiln_http_accept_errors_total"), 0.0);
    assert!(log_lines(&log) < 30, "{}", std::fs::read_to_string(&log).unwrap());
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let log = std::env::temp_dir().join(format!("kiln-test-nofile-raise-{}.log", std::process::id()));
    let k = Kiln::start_with(&[], &Spawn { stderr: Some(log.clone()), nofile: Some((64, 1024)), ..Default::default() });
    // The default cap is computed from the raised limit: 1024 less 256 + 64 per core.
    assert_eq!(metric(k.port, "kiln_http_connection_limit"), 1024.0 - 384.0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(r#"msg="raised the open-file limit to the hard limit" from=64 to=1024"#), "{text}");
    let _ = std::fs::remove_file(&log);
}

/// Whether the server has closed or reset the connection (waits a millisecond).
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    match s.read(&mut [0u8; 1]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let k = Kiln::start(&["-distributor.ingestion-body-limit-mb=1"]);
    // Only the head is sent; the answer comes anyway, and the connection is closed (the
    // body is never read).
    let raw = exchange_until_closed(
        k.port,
        b"POST /ingest?name=big.cpu HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000\r\n\r\n",
    );
    let (status, body) = parse_response(&raw).unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("request body too large: the limit is 1048576 bytes"), "{body}");
    // Connect: resource_exhausted; `Expect: 100-continue` gets no 100, only the answer.
    let raw = exchange_until_closed(
        k.port,
        b"POST /push.v1.PusherService/Push HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/proto\r\n\
          Connect-Protocol-Version: 1\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n",
    );
    let (status, body) = parse_response(&raw).unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("\"code\":\"resource_exhausted\""), "{body}");
    assert!(!String::from_utf8_lossy(&raw).contains("100 Continue"));
    assert_eq!(metric(k.port, "kiln_http_request_body_bytes_in_flight"), 0.0);
}

#[test]
fn the_in_flight_body_budget_refuses_and_gives_back() {
    let k = Kiln::start(&["-server.max-inflight-body-bytes=100000", "-validation.reject-older-than=0"]);
    // A slow client holds 80000 bytes of the budget (its declared length).
    let mut slow = connect(k.port);
    slow.write_all(b"POST /ingest?name=a.cpu HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 80000\r\n\r\nmain")
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while metric(k.port, "kiln_http_request_body_bytes_in_flight") != 80000.0 {
        assert!(Instant::now() < deadline, "the slow body was not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let head = |len: usize| {
        format!("POST /ingest?name=b.cpu&format=folded HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: {len}\r\n\r\n")
    };
    // No room for 50000 more: 429, without the body being read.
    let (status, body) = parse_response(&exchange_until_closed(k.port, head(50000).as_bytes())).unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too many request body bytes in flight"), "{body}");
    // More than the whole budget: 413.
    let (status, body) = parse_response(&exchange_until_closed(k.port, head(200000).as_bytes())).unwrap();
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("-server.max-inflight-body-bytes"), "{body}");
    // The slow client goes away: its bytes are given back, and the same request is served.
    drop(slow);
    let deadline = Instant::now() + PATIENCE;
    while metric(k.port, "kiln_http_request_body_bytes_in_flight") != 0.0 {
        assert!(Instant::now() < deadline, "the budget was not given back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let folded = "main;work 1\n".repeat(50000 / 12);
    let mut req = head(folded.len()).replace("Expect: 100-continue", "Connection: close").into_bytes();
    req.extend_from_slice(folded.as_bytes());
    let (status, body) = parse_response(&exchange_until_closed(k.port, &req)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(metric(k.port, "kiln_http_request_body_refused_total"), 2.0);
    assert_eq!(metric(k.port, "kiln_http_request_body_bytes_in_flight"), 0.0);
}

#[test]
fn a_restart_right_after_kill_9_on_the_same_port_succeeds_every_time() {
    let mut k = Kiln::start(&[]);
    for i in 0..10 {
        // Something in flight when it dies: an idle keep-alive connection.
        let mut s = connect(k.port);
        assert!(keep_alive_get(&mut s, "/ready").starts_with("HTTP/1.1 200"));
        let (data, port) = k.kill_keeping_port();
        let log = std::env::temp_dir().join(format!("kiln-test-restart-{}-{i}.log", std::process::id()));
        // Panics (with kiln's log) if kiln exits instead of serving: e.g. "already served
        // by another process" because the dead one's listener was still there.
        k = Kiln::start_at(data, port, &[], &Spawn { stderr: Some(log.clone()), nofile: None, ..Default::default() });
        let _ = std::fs::remove_file(&log);
    }
    assert_eq!(raw_get(k.port, "/ready").map(|r| r.0), Some(200));
}
