//! A real S3-compatible server for tests: moto's (`pip install 'moto[server]'`), started on a
//! free port and killed when dropped, panic or not. Shared by io/tests and the whole-process
//! tests (`#[path]`-included).
#![allow(dead_code)]
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The moto server process; killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
    log: std::path::PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Moto {
    pub fn start() -> Moto {
        // Not installed is a failure, not a skip: CI installs it (.ci/run), and a skipped
        // S3 test would let the S3 path rot unnoticed.
        let check = Command::new("python3").args(["-c", "import moto.server"]).output();
        match check {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "moto's S3 server is not installed: run `python3 -m pip install 'moto[server]'` (python3 said: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("python3 not found ({e}); install python3, then `python3 -m pip install 'moto[server]'`"),
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::env::temp_dir().join(format!("kiln-moto-{}-{port}.log", std::process::id()));
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting python3 -m moto.server");
        let mut moto = Moto { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!(
                    "moto server exited at start ({status}): {}",
                    std::fs::read_to_string(&moto.log).unwrap_or_default()
                );
            }
            if moto.request("GET", "/").is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "moto server did not answer on port {port} within 60s");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// One HTTP/1.1 request without a body; the status code.
    pub fn request(&self, method: &str, path: &str) -> std::io::Result<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        resp.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {resp:?}")))
    }

    /// Starts moto with one bucket created.
    pub fn with_bucket(bucket: &str) -> Moto {
        let moto = Moto::start();
        // object_store cannot create buckets: a path-style PUT /<bucket> does.
        assert_eq!(moto.request("PUT", &format!("/{bucket}")).unwrap(), 200, "creating the bucket");
        moto
    }
}
