//! The S3 backend against a real S3-compatible server: moto's (`pip install 'moto[server]'`),
//! started on a free port for this test and killed at the end, panic or not.
mod common;

use kiln_io::store::{Backend, Store};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "kiln-test";

/// The moto server process; killed when dropped.
struct Moto {
    child: Child,
    port: u16,
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
    fn start() -> Moto {
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
    fn request(&self, method: &str, path: &str) -> std::io::Result<u16> {
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
}

#[test]
fn s3_backend_against_moto() {
    let moto = Moto::start();
    // object_store cannot create buckets: a path-style PUT /<bucket> does.
    assert_eq!(moto.request("PUT", &format!("/{BUCKET}")).unwrap(), 200, "creating the bucket");

    let store = Store::start(Backend::S3 {
        // Host only, as Pyroscope configs give it: `insecure` picks http.
        endpoint: format!("127.0.0.1:{}", moto.port),
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        insecure: true,
        force_path_style: true,
    })
    .unwrap();
    assert_eq!(store.describe(), format!("s3 bucket {BUCKET} at http://127.0.0.1:{}", moto.port));
    assert!(store.blocking_tenants().unwrap().is_empty());
    common::objects(&store);
    common::concurrent_index_updates(&store, "busy", 4, 10);
    common::index_and_tenants(&store);
    assert_eq!(store.blocking_tenants().unwrap(), ["busy", "tenant-a", "tenant-c"]);
    // The index is where a Pyroscope-style reader looks for it.
    let raw = common::block_on(store.get("busy/bucket-index.json".into())).unwrap();
    assert_eq!(kiln_io::store::bucket_index::BucketIndex::from_json(&raw).unwrap().blocks.len(), 40);
}
