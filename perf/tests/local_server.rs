//! Runs the load loops for about a second against a tiny local HTTP/1.1 server that answers
//! 200 to everything: requests must flow and none may fail. The server is a plain std
//! `TcpListener` on 127.0.0.1 with a thread per connection, bounded in time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kiln_load::flags::{Api, Config, Load, Source};

/// How long the test server accepts connections at most.
const SERVER_LIFETIME: Duration = Duration::from_secs(30);

/// Starts the server; returns its URL and the count of requests it answered.
fn start_server() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    thread::spawn(move || {
        let until = Instant::now() + SERVER_LIFETIME;
        while Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => {
                    let counter = counter.clone();
                    thread::spawn(move || serve(stream, &counter));
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    (format!("http://{addr}"), served)
}

/// Answers `200` with an empty body to each request on the connection until it closes.
fn serve(stream: TcpStream, served: &AtomicU64) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut content_length = 0usize;
        let mut line = String::new();
        // Request line and headers.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        served.fetch_add(1, Ordering::Relaxed);
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(response).is_err() {
            return;
        }
    }
}

fn config(url: String) -> Config {
    let mut c = Config {
        url,
        source: Source::Synthetic,
        threads: 1,
        duration: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        quiet: true,
        ..Config::default()
    };
    c.shape.services = 2;
    c.shape.series_per_service = 2;
    c.shape.unique_stacks = 200;
    c.shape.functions = 100;
    c.shape.samples_per_profile = 50;
    c
}

#[test]
fn test_closed_loop_push_against_local_server() {
    let (url, served) = start_server();
    let mut c = config(url);
    c.api = Api::Push;
    c.load = Load::Connections(2);
    let report = kiln_load::run(&c, |_| {}, |_| {}).unwrap();
    let s = &report.stats;
    assert!(s.requests > 0, "no requests");
    assert!(s.errors.is_empty(), "errors: {:?}", s.errors);
    assert_eq!(s.ok, s.requests);
    assert!(served.load(Ordering::Relaxed) >= s.ok);
    assert!(s.bytes_wire > 0 && s.bytes_uncompressed > s.bytes_wire);
    assert!(report.elapsed >= Duration::from_millis(900));
    let json = report.to_json();
    assert_eq!(json["requests"], s.requests);
    assert!(json["p99"].as_f64().unwrap() > 0.0);
}

#[test]
fn test_open_loop_ingest_against_local_server() {
    let (url, served) = start_server();
    let mut c = config(url);
    c.api = Api::Ingest;
    c.gzip = false;
    c.threads = 2;
    c.load = Load::Rate(200.0);
    let report = kiln_load::run(&c, |_| {}, |_| {}).unwrap();
    let s = &report.stats;
    assert!(s.errors.is_empty(), "errors: {:?}", s.errors);
    // The schedule holds exactly 200 requests in one second.
    assert_eq!(s.requests, 200);
    assert_eq!(served.load(Ordering::Relaxed), 200);
    assert_eq!(s.bytes_wire, s.bytes_uncompressed);
}
