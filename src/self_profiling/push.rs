//! Pushing a profile of kiln: `push.v1.PusherService/Push` (Connect, protobuf, the pprof
//! gzipped), over HTTP/1.1 to this process's own port or `-self-profiling.url`, as any
//! client pushes: the tenant header, the limits and the distributor's metrics apply.
use crate::config::Config;
use kiln_proto::push::v1::{PushRequest, RawProfileSeries, RawSample};
use kiln_proto::types::v1::LabelPair;
use prost::Message;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a response that is read (a refusal's message).
const MAX_RESPONSE: u64 = 64 << 10;
const PUSH_PATH: &str = "/push.v1.PusherService/Push";

/// Where and as whom the profiles are pushed, and the labels of their series.
pub struct Destination {
    /// `host:port`, also the `Host` header.
    authority: String,
    /// The URL's path, before `PUSH_PATH` (empty or starting with `/`).
    prefix: String,
    tenant: String,
    labels: Vec<LabelPair>,
}

impl Destination {
    /// From the config: `-self-profiling.url`, else the HTTP listen address (loopback when
    /// it is a wildcard) and port.
    pub fn from_config(cfg: &Config) -> Destination {
        let sp = &cfg.self_profiling;
        let (authority, prefix) = match sp.url.strip_prefix("http://") {
            Some(rest) => match rest.find('/') {
                Some(i) => (rest[..i].to_string(), rest[i..].trim_end_matches('/').to_string()),
                None => (rest.to_string(), String::new()),
            },
            None => (own_authority(&cfg.http_listen_address, cfg.http_listen_port), String::new()),
        };
        Destination { authority, prefix, tenant: sp.tenant_id.clone(), labels: labels(cfg) }
    }

    pub fn describe(&self) -> String {
        format!("http://{}{}", self.authority, self.prefix)
    }

    /// Pushes one pprof (already encoded) as the series `__name__` with the labels.
    pub fn push(&self, name: &str, pprof: &[u8]) -> Result<(), String> {
        let mut labels = vec![LabelPair { name: "__name__".into(), value: name.into() }];
        labels.extend(self.labels.iter().cloned());
        let raw_profile = kiln_io::compress::gzip(pprof).into();
        let req = PushRequest {
            series: vec![RawProfileSeries {
                labels,
                samples: vec![RawSample { raw_profile, id: String::new() }],
                annotations: vec![],
            }],
        };
        self.post(&req.encode_to_vec())
    }

    fn post(&self, body: &[u8]) -> Result<(), String> {
        let addrs = self.authority.to_socket_addrs().map_err(|e| format!("resolving {}: {e}", self.authority))?;
        let mut last = format!("{} resolves to no address", self.authority);
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => return self.exchange(stream, body),
                Err(e) => last = format!("connecting to {addr}: {e}"),
            }
        }
        Err(last)
    }

    fn exchange(&self, mut stream: TcpStream, body: &[u8]) -> Result<(), String> {
        let io = |e: std::io::Error| format!("pushing to {}: {e}", self.describe());
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let mut head = format!(
            "POST {}{PUSH_PATH} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/proto\r\nConnect-Protocol-Version: 1\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.prefix,
            self.authority,
            body.len()
        );
        if !self.tenant.is_empty() {
            head.push_str(&format!("X-Scope-OrgID: {}\r\n", self.tenant));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).map_err(io)?;
        let mut response = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut response).map_err(io)?;
        let text = String::from_utf8_lossy(&response);
        let status = text.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
        match status {
            Some(200) => Ok(()),
            Some(s) => {
                let message = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                Err(format!("{} answered {s}: {}", self.describe(), message.chars().take(300).collect::<String>()))
            }
            None => Err(format!("{} answered no HTTP status", self.describe())),
        }
    }
}

/// This process's own HTTP port: its listen address, or loopback for a wildcard.
fn own_authority(address: &str, port: u16) -> String {
    let host = address.trim_start_matches('[').trim_end_matches(']');
    match host {
        "" | "0.0.0.0" => format!("127.0.0.1:{port}"),
        "::" => format!("[::1]:{port}"),
        h if h.contains(':') => format!("[{h}]:{port}"),
        h => format!("{h}:{port}"),
    }
}

/// The series' labels, Pyroscope's for its own profiles with kiln's name: `service_name`,
/// `target`, `hostname` (`$HOSTNAME`, else the kernel's) and `service_git_ref` (the
/// revision built, when known).
fn labels(cfg: &Config) -> Vec<LabelPair> {
    let pair = |name: &str, value: String| LabelPair { name: name.into(), value };
    let target = if cfg.target.is_all() { "all".to_string() } else { cfg.target.to_string() };
    let mut out = vec![pair("service_name", "kiln".into()), pair("target", target)];
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).or_else(crate::config::hostname);
    if let Some(h) = host {
        out.push(pair("hostname", h));
    }
    let revision = env!("KILN_REVISION");
    if revision != "unknown" {
        out.push(pair("service_git_ref", revision.into()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_port_is_reached_on_loopback_for_a_wildcard() {
        assert_eq!(own_authority("0.0.0.0", 4040), "127.0.0.1:4040");
        assert_eq!(own_authority("", 4040), "127.0.0.1:4040");
        assert_eq!(own_authority("::", 4040), "[::1]:4040");
        assert_eq!(own_authority("[::]", 4040), "[::1]:4040");
        assert_eq!(own_authority("10.1.2.3", 4040), "10.1.2.3:4040");
        assert_eq!(own_authority("fd00::1", 4040), "[fd00::1]:4040");
    }

    #[test]
    fn a_url_names_the_authority_and_the_path() {
        let mut cfg = Config::default();
        cfg.self_profiling.url = "http://pyroscope.example:4040/prefix/".into();
        cfg.self_profiling.tenant_id = "ops".into();
        let d = Destination::from_config(&cfg);
        assert_eq!(
            (d.authority.as_str(), d.prefix.as_str(), d.tenant.as_str()),
            ("pyroscope.example:4040", "/prefix", "ops")
        );
        let own = Destination::from_config(&Config::default());
        assert_eq!(own.describe(), "http://127.0.0.1:4040");
        assert_eq!(own.labels[0].value, "kiln");
        assert_eq!(own.labels[1], LabelPair { name: "target".into(), value: "all".into() });
    }

    #[test]
    fn a_refusal_is_an_error_naming_the_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 9\r\n\r\nno tenant").unwrap();
            head
        });
        let mut cfg = Config::default();
        cfg.self_profiling.url = format!("http://127.0.0.1:{port}");
        cfg.self_profiling.tenant_id = "t1".into();
        let err = Destination::from_config(&cfg).push("process_cpu", b"").unwrap_err();
        assert!(err.contains("401") && err.contains("no tenant"), "{err}");
        let head = server.join().unwrap();
        assert!(head.starts_with("POST /push.v1.PusherService/Push HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("X-Scope-OrgID: t1\r\n"), "{head}");
    }
}
