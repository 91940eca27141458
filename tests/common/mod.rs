//! Test harness: starts the real `kiln` binary on a free port and talks to it over HTTP/1.1
//! and h2c, as clients do.
#![allow(dead_code)]
pub mod hostile;
pub mod jfr;
pub mod members;
pub mod snapshot;
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use prost::Message;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Kiln {
    child: Child,
    pub port: u16,
    pub data: PathBuf,
    port_hold: Option<socket2::Socket>,
}

/// How to start kiln, besides its flags.
#[derive(Debug, Default, Clone)]
pub struct Spawn {
    /// Where kiln's log (stderr) goes; discarded when `None`.
    pub stderr: Option<PathBuf>,
    /// RLIMIT_NOFILE for the process, (soft, hard): kiln raises the soft one to the hard.
    pub nofile: Option<(u64, u64)>,
    /// Environment variables set for the process (e.g. `KILN_CRASH_AT`).
    pub env: Vec<(&'static str, String)>,
}

/// A free port, held: the socket is bound with SO_REUSEPORT but never listens, so kiln (which
/// binds with SO_REUSEPORT too) can share it while no other test is handed the same port.
/// SO_REUSEADDR lets kiln's start-up probe (SO_REUSEADDR alone) bind beside it, as it binds
/// beside anything that does not listen.
pub fn hold_port() -> (u16, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_port(true).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (port, s)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(rel)
}

/// Flags that let static fixtures (with old timestamps) be pushed and queried, as
/// Pyroscope's own integration tests configure it.
pub const FIXTURE_FLAGS: &[&str] = &[
    "-validation.reject-older-than=0",
    "-querier.max-query-length=0",
    "-querier.max-query-lookback=0",
    "-distributor.ingestion-rate-limit-mb=0",
    "-validation.max-profile-stacktrace-samples=0",
];

impl Kiln {
    pub fn start(args: &[&str]) -> Kiln {
        Kiln::start_with(args, &Spawn::default())
    }

    /// Starts kiln on a new data directory, as `spawn` says.
    pub fn start_with(args: &[&str], spawn: &Spawn) -> Kiln {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = std::env::temp_dir().join(format!("kiln-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        Kiln::start_at(data, hold_port(), args, spawn)
    }

    /// Starts kiln on an existing data directory (a restart); removed when dropped.
    pub fn start_in(data: PathBuf, args: &[&str]) -> Kiln {
        Kiln::start_at(data, hold_port(), args, &Spawn::default())
    }

    /// Starts kiln on a data directory and a held port, and waits until it is ready.
    pub fn start_at(data: PathBuf, held: (u16, socket2::Socket), args: &[&str], spawn: &Spawn) -> Kiln {
        let mut k = Kiln::launch_at(data, held, args, spawn);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Raw requests that fail softly: right after a kill the old process's listener may
        // still take (and then reset) connections.
        while raw_get(k.port, "/ready").map(|r| r.0) != Some(200) {
            if let Ok(Some(status)) = k.child.try_wait() {
                let log = spawn.stderr.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
                panic!("kiln exited during start: {status}\n{log}");
            }
            assert!(Instant::now() < deadline, "kiln did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        k
    }

    /// Starts kiln on a data directory and a held port without waiting for it.
    pub fn launch_at(data: PathBuf, (port, hold): (u16, socket2::Socket), args: &[&str], spawn: &Spawn) -> Kiln {
        let child = Kiln::spawn_with(&data, port, args, spawn);
        Kiln { child, port, data, port_hold: Some(hold) }
    }

    pub fn spawn(data: &std::path::Path, port: u16, args: &[&str]) -> Child {
        Kiln::spawn_with(data, port, args, &Spawn::default())
    }

    pub fn spawn_with(data: &std::path::Path, port: u16, args: &[&str], spawn: &Spawn) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg(format!("-server.http-listen-port={port}"))
            .arg("-server.http-listen-address=127.0.0.1")
            .arg(format!("-storage.path={}", data.display()))
            .arg("-shards=2")
            // Off unless a test turns it on (tests/self_profiling.rs): kiln's own profiles
            // would be series and services of the anonymous tenant that tests count.
            .arg("-self-profiling.disable-push=true")
            .args(args)
            .stdout(Stdio::null())
            .stderr(match &spawn.stderr {
                Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
                None => Stdio::null(),
            });
        cmd.envs(spawn.env.iter().map(|(k, v)| (*k, v.as_str())));
        if let Some((soft, hard)) = spawn.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn().expect("start kiln")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself; returns the data directory and exit code.
    pub fn wait_exit(mut self) -> (PathBuf, Option<i32>) {
        let status = self.child.wait().unwrap();
        let data = std::mem::take(&mut self.data);
        (data, status.code())
    }

    /// SIGKILL, as a crash would; returns the data directory for a restart.
    pub fn kill(mut self) -> PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.data)
    }

    /// SIGTERM, waiting for the process to exit; returns the data directory, the held port
    /// (for a restart on it) and the exit code.
    pub fn terminate_keeping_port(mut self) -> (PathBuf, (u16, socket2::Socket), Option<i32>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let code = self.child.wait().unwrap().code();
        let hold = self.port_hold.take().expect("port held");
        (std::mem::take(&mut self.data), (self.port, hold), code)
    }

    /// SIGKILL; returns the data directory and the held port, for a restart on that port.
    pub fn kill_keeping_port(mut self) -> (PathBuf, (u16, socket2::Socket)) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let hold = self.port_hold.take().expect("port held");
        (std::mem::take(&mut self.data), (self.port, hold))
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.data.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Writes `bytes` on a new connection to kiln and reads until the server closes it or
/// `wait` passes without a byte (then what was read so far). Err when the connection could
/// not be made or was reset before anything was read.
pub fn raw_exchange(port: u16, bytes: &[u8], wait: Duration) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(wait))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(out)
            }
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => return Ok(out),
        }
    }
}

/// The status and body of a raw HTTP/1.1 answer; `None` when it is not one.
pub fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Some((status, body))
}

/// `GET path` on a new HTTP/1.1 connection, failing softly: `None` when the connection is
/// refused, reset or not answered.
pub fn raw_get(port: u16, path: &str) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    parse_response(&raw_exchange(port, req.as_bytes(), Duration::from_secs(10)).ok()?)
}

/// The value of one series (`name` or `name{labels}`) on /metrics.
pub fn metric(port: u16, series: &str) -> f64 {
    let (status, body) = raw_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} not on /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// One HTTP request; `h2` selects prior-knowledge HTTP/2 (h2c).
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>, h2: bool) -> Resp {
    rt().block_on(async move {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let io = hyper_util::rt::TokioIo::new(stream);
        let mut req = Request::builder().method(method).uri(format!("http://127.0.0.1:{port}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = if h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.expect("h2 request")
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.expect("http1 request")
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let collected = resp.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        Resp { status, headers, body: collected.to_bytes(), trailers }
    })
}

pub fn get(port: u16, path: &str) -> Resp {
    request(port, "GET", path, &[], Vec::new(), false)
}

pub fn post(port: u16, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    request(port, "POST", path, headers, body, false)
}

/// A Connect unary call with the proto codec; Err((http status, connect code, message)).
pub fn connect<Req: Message, Resp2: Message + Default>(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    req: &Req,
) -> Result<Resp2, (u16, String, String)> {
    let mut h = vec![("content-type", "application/proto"), ("connect-protocol-version", "1")];
    h.extend_from_slice(headers);
    let r = post(port, path, &h, req.encode_to_vec());
    if r.status == 200 {
        return Ok(Resp2::decode(r.body).expect("decode response"));
    }
    let j = r.json();
    Err((r.status, j["code"].as_str().unwrap_or("").into(), j["message"].as_str().unwrap_or("").into()))
}

pub fn connect_json(port: u16, path: &str, headers: &[(&str, &str)], body: serde_json::Value) -> Resp {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    post(port, path, &h, serde_json::to_vec(&body).unwrap())
}

/// A gRPC unary call over h2c; Err((grpc-status, grpc-message)).
pub fn grpc<Req: Message, Resp2: Message + Default>(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    req: &Req,
) -> Result<Resp2, (u32, String)> {
    let payload = req.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let mut h = vec![("content-type", "application/grpc"), ("te", "trailers")];
    h.extend_from_slice(headers);
    let r = request(port, "POST", path, &h, frame, true);
    assert_eq!(r.status, 200, "gRPC answers HTTP 200");
    let status_of = |m: &HeaderMap| m.get("grpc-status").map(|v| v.to_str().unwrap().parse::<u32>().unwrap());
    let msg_of = |m: &HeaderMap| m.get("grpc-message").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let status = r.trailers.as_ref().and_then(status_of).or_else(|| status_of(&r.headers)).expect("grpc-status");
    if status != 0 {
        let msg = r.trailers.as_ref().map(msg_of).filter(|m| !m.is_empty()).unwrap_or_else(|| msg_of(&r.headers));
        return Err((status, msg));
    }
    let len = u32::from_be_bytes(r.body[1..5].try_into().unwrap()) as usize;
    Ok(Resp2::decode(&r.body[5..5 + len]).expect("decode gRPC response"))
}

/// The sum over every core of a per-core metric (`name{core="…"}`) on `/metrics`.
pub fn metric_sum(port: u16, name: &str) -> f64 {
    get(port, "/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Encodes a multipart/form-data body; returns (content type, body).
pub fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "kiln-test-boundary-0123456789";
    let mut body = Vec::new();
    for (name, data) in parts {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    kiln_io::compress::gzip(data)
}

pub fn gunzip_maybe(data: &[u8]) -> Vec<u8> {
    kiln_io::compress::maybe_gunzip(data, 64 << 20).unwrap().into_owned()
}

/// SelectMergeStacktraces of profile type `pt` and `selector`, from 1 s to an hour ahead.
pub fn flamegraph(port: u16, pt: &str, selector: &str) -> kiln_proto::querier::v1::FlameGraph {
    flamegraph_in(port, pt, selector, 1000, now_ms() + 3_600_000)
}

/// SelectMergeStacktraces of profile type `pt` and `selector` over [start, end] (ms).
pub fn flamegraph_in(port: u16, pt: &str, selector: &str, start: i64, end: i64) -> kiln_proto::querier::v1::FlameGraph {
    let req = kiln_proto::querier::v1::SelectMergeStacktracesRequest {
        profile_type_id: pt.into(),
        label_selector: selector.into(),
        start,
        end,
        max_nodes: Some(1_000_000),
        ..Default::default()
    };
    let r: kiln_proto::querier::v1::SelectMergeStacktracesResponse =
        connect(port, "/querier.v1.QuerierService/SelectMergeStacktraces", &[], &req).unwrap();
    r.flamegraph.unwrap()
}

/// Flame graph levels decoded back into root-first `;`-joined stacks with their self values.
pub fn flamegraph_stacks(names: &[String], levels: &[Vec<i64>]) -> std::collections::BTreeMap<String, i64> {
    // Absolute x of each node per level, then each node's parent is the node one level up
    // whose [x, x+total) span contains it.
    let mut abs: Vec<Vec<(i64, i64, i64, usize)>> = Vec::new();
    for l in levels {
        let mut row = Vec::new();
        let mut prev_end = 0;
        for c in l.chunks(4) {
            let x = prev_end + c[0];
            row.push((x, c[1], c[2], c[3] as usize));
            prev_end = x + c[1];
        }
        abs.push(row);
    }
    let mut out = std::collections::BTreeMap::new();
    for d in 1..abs.len() {
        for &(x, _total, self_, name) in &abs[d] {
            if self_ == 0 {
                continue;
            }
            let mut frames = vec![names[name].clone()];
            let mut px = x;
            for up in (1..d).rev() {
                // Spans in a level are disjoint and sorted by x: binary search.
                let row = &abs[up];
                let i = row.partition_point(|(xx, t, _, _)| xx + t.max(&1) <= px);
                let p = row.get(i).filter(|(xx, _, _, _)| *xx <= px).expect("parent");
                frames.push(names[p.3].clone());
                px = p.0;
            }
            frames.reverse();
            *out.entry(frames.join(";")).or_insert(0) += self_;
        }
    }
    out
}

/// Well-formed pprofs of the fixtures, with files the testdata README marks as invalid or
/// repairable only through /ingest left out, and the folders' LICENSE and NOTICE files.
pub fn golden_pprofs() -> Vec<PathBuf> {
    let skip = ["invalid_utf8.pb.gz", "dotnet-pprof-3.pb.gz", "dotnet-pprof-73.pb.gz", "LICENSE", "NOTICE"];
    let out: Vec<PathBuf> = files_under("pprof")
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            !(name.ends_with(".txt") || name.ends_with(".json") || skip.contains(&name))
        })
        .collect();
    assert!(out.len() >= 25, "found only {} fixtures", out.len());
    out
}

/// Every file below `testdata/<rel>`, sorted.
pub fn files_under(rel: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![testdata(rel)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Pushes profile number `i` of a numbered stream: service `service`, label `seq=i`, one
/// stack with value `i + 1`. True when kiln acknowledged it.
pub fn push_seq(port: u16, service: &str, i: u64) -> bool {
    let r = std::panic::catch_unwind(|| {
        post(
            port,
            &format!("/ingest?name={service}.cpu%7Bseq%3D{i}%7D&format=folded&sampleRate=0"),
            &[],
            format!("main;f{} {}\n", i % 7, i + 1).into_bytes(),
        )
    });
    matches!(r, Ok(r) if r.status == 200)
}

/// The `seq` values of a numbered stream kiln returns, and the flame graph total of the
/// stream (each push counted once adds `seq + 1`).
pub fn seqs_and_total(port: u16, service: &str) -> (std::collections::BTreeSet<u64>, i64) {
    let range =
        serde_json::json!({"start": (now_ms() - 3_600_000).to_string(), "end": (now_ms() + 60_000).to_string()});
    let mut body = range.clone();
    body["name"] = "seq".into();
    body["matchers"] = serde_json::json!([format!("{{service_name=\"{service}\"}}")]);
    let r = connect_json(port, "/querier.v1.QuerierService/LabelValues", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    let seqs = r.json()["names"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().parse().unwrap()).collect())
        .unwrap_or_default();
    let mut body = range;
    body["profileTypeID"] = "process_cpu:samples:count::".into();
    body["labelSelector"] = format!("{{service_name=\"{service}\"}}").into();
    let r = connect_json(port, "/querier.v1.QuerierService/SelectMergeStacktraces", &[], body);
    assert_eq!(r.status, 200, "{}", r.text());
    (seqs, r.json()["flamegraph"]["total"].as_str().map(|s| s.parse().unwrap()).unwrap_or(0))
}

/// Four threads pushing a numbered stream back to back until stopped, recording what kiln
/// acknowledged.
pub struct Pushers {
    acked: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pushers {
    pub fn start(port: u16, service: &'static str) -> Pushers {
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..4u64)
            .map(|t| {
                let (acked, stop) = (acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = t;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 100_000 {
                        if push_seq(port, service, i) {
                            acked.lock().unwrap().push(i);
                        }
                        i += 4;
                    }
                })
            })
            .collect();
        Pushers { acked, stop, threads }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the threads (call after killing kiln) and returns every acknowledged `seq`.
    pub fn stop(self) -> std::collections::BTreeSet<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let acked = self.acked.lock().unwrap();
        acked.iter().copied().collect()
    }
}

/// Every WAL segment file under a data directory, in path order.
pub fn segment_files(data: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![data.join("wal")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "seg") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A pprof's samples as root-first `;`-joined stacks (frames `function (file:line)`, or the
/// mapping's file and the address when unsymbolised) with the summed value of sample type
/// `idx`; zero sums dropped. Two pprofs with the same stacks compare equal whatever their ids.
pub fn pprof_stacks(p: &kiln_proto::google::v1::Profile, idx: usize) -> std::collections::BTreeMap<String, i64> {
    let locs: std::collections::HashMap<u64, &kiln_proto::google::v1::Location> =
        p.location.iter().map(|l| (l.id, l)).collect();
    let funcs: std::collections::HashMap<u64, &kiln_proto::google::v1::Function> =
        p.function.iter().map(|f| (f.id, f)).collect();
    let maps: std::collections::HashMap<u64, &kiln_proto::google::v1::Mapping> =
        p.mapping.iter().map(|m| (m.id, m)).collect();
    let s = |i: i64| p.string_table[i as usize].as_str();
    let mut out = std::collections::BTreeMap::new();
    for sample in &p.sample {
        let mut frames = Vec::new();
        for id in sample.location_id.iter().rev() {
            let loc = locs[id];
            if loc.line.is_empty() {
                let file = maps.get(&loc.mapping_id).map_or("", |m| s(m.filename));
                frames.push(format!("{file}+0x{:x}", loc.address));
            }
            for line in loc.line.iter().rev() {
                let f = funcs[&line.function_id];
                frames.push(format!("{} ({}:{})", s(f.name), s(f.filename), line.line));
            }
        }
        *out.entry(frames.join(";")).or_insert(0) += sample.value[idx];
    }
    out.retain(|_, v| *v != 0);
    out
}

/// A `Vm*` field of `/proc/<pid>/status`, in KiB.
pub fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Runs `f` against the process `pid` and returns by how many bytes its peak RSS rose above
/// the RSS it had before: the peak (VmHWM) is reset first (`/proc/<pid>/clear_refs`, 5).
pub fn peak_rss_rise<R>(pid: u32, f: impl FnOnce() -> R) -> (R, u64) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting the peak RSS");
    let before = vm_kib(pid, "VmRSS");
    let r = f();
    let peak = vm_kib(pid, "VmHWM");
    (r, peak.saturating_sub(before) * 1024)
}
