//! HTTP client connections on a monoio executor: hyper 1.x over monoio's poll-io TCP stream.
//!
//! HTTP/1.1 for Connect, `/ingest` and the query API; cleartext HTTP/2 with prior knowledge
//! for gRPC. A request is prepared in full (`Prepared`) before it is timed, so only the
//! exchange itself is measured; the response body is always read to the end.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;

/// Where requests go. Only this address is ever contacted.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port`, for the Host header and HTTP/2 `:authority`.
    pub authority: String,
    /// A path prefix from the URL (no trailing slash), prepended to every path.
    pub base_path: String,
}

/// Parses `http://host[:port][/prefix]` and resolves it once.
pub fn parse_target(url: &str) -> Result<Target, String> {
    let rest =
        url.strip_prefix("http://").ok_or_else(|| format!("--url must start with http:// (no TLS), got {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("--url has no host: {url:?}"));
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let with_port = if has_port { authority.to_string() } else { format!("{authority}:80") };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {with_port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{with_port} resolves to no address"))?;
    Ok(Target { addr, authority: authority.to_string(), base_path: path.trim_end_matches('/').to_string() })
}

/// How the response decides success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Connect unary: HTTP 200 is success. Sends `Connect-Protocol-Version: 1`.
    Connect,
    /// gRPC: HTTP 200 and `grpc-status: 0` (trailers, or headers for trailers-only).
    Grpc,
    /// Plain HTTP (`/ingest`, `/pyroscope/render`): any 2xx is success.
    Plain,
}

/// A request ready to go: nothing is built while the clock runs.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub method: Method,
    /// Path and query, including the target's base path.
    pub path: String,
    pub content_type: Option<&'static str>,
    pub body: Bytes,
    pub protocol: Protocol,
    pub tenant: Option<String>,
    /// Bytes the server will have to parse (the uncompressed pprof for pushes).
    pub bytes_uncompressed: u64,
    /// Label for per-kind statistics.
    pub kind: &'static str,
}

/// Spawns hyper's background tasks (HTTP/2 connection driving) on the current core.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        monoio::spawn(fut);
    }
}

/// An open client connection.
pub enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    pub fn is_h2(&self) -> bool {
        matches!(self, Conn::H2(_))
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }
}

/// Connects and hands the connection's driver to the executor.
pub async fn connect(target: &Target, h2: bool) -> Result<Conn, String> {
    let stream =
        monoio::net::TcpStream::connect(target.addr).await.map_err(|e| format!("connect {}: {e}", target.addr))?;
    let _ = stream.set_nodelay(true);
    let io = stream.try_into_poll_io().map_err(|(e, _)| format!("poll io: {e}"))?;
    let io = TokioIo::new(io);
    if h2 {
        let (send, conn) = http2::Builder::new(LocalExec)
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        monoio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn::H2(send))
    } else {
        let (send, conn) = http1::handshake(io).await.map_err(|e| format!("http/1.1 handshake: {e}"))?;
        monoio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn::H1(send))
    }
}

/// The result of one exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok {
        received: u64,
    },
    /// The server answered with an error; the connection is fine. `key` is the HTTP status or
    /// `grpc-N`, `message` the start of the error body (or `grpc-message`).
    Status {
        key: String,
        message: String,
    },
    /// The connection failed mid-exchange and must be dropped.
    Broken(String),
}

impl Outcome {
    /// The error key used in reports (`500`, `grpc-8`, `io`, ...).
    pub fn error_key(&self) -> Option<&str> {
        match self {
            Outcome::Ok { .. } => None,
            Outcome::Status { key, .. } => Some(key),
            Outcome::Broken(_) => Some("io"),
        }
    }
}

fn build_request(target: &Target, req: &Prepared, h2: bool) -> Result<Request<Full<Bytes>>, String> {
    let uri = if h2 { format!("http://{}{}", target.authority, req.path) } else { req.path.clone() };
    let mut builder =
        Request::builder().method(req.method.clone()).uri(uri).header(http::header::USER_AGENT, "kiln-load/0.1");
    if !h2 {
        builder = builder.header(http::header::HOST, target.authority.as_str());
    }
    if let Some(ct) = req.content_type {
        builder = builder.header(http::header::CONTENT_TYPE, ct);
    }
    match req.protocol {
        Protocol::Connect => builder = builder.header("connect-protocol-version", "1"),
        Protocol::Grpc => builder = builder.header(http::header::TE, "trailers"),
        Protocol::Plain => {}
    }
    if let Some(tenant) = &req.tenant {
        let value = HeaderValue::from_str(tenant).map_err(|e| e.to_string())?;
        builder = builder.header("x-scope-orgid", value);
    }
    builder.body(Full::new(req.body.clone())).map_err(|e| format!("bad request: {e}"))
}

/// Sends `req` on `conn` and reads the whole response.
pub async fn exchange(conn: &mut Conn, target: &Target, req: &Prepared) -> Outcome {
    let request = match build_request(target, req, conn.is_h2()) {
        Ok(r) => r,
        Err(e) => return Outcome::Status { key: "client".into(), message: e },
    };
    let response = match conn {
        Conn::H1(send) => {
            if let Err(e) = send.ready().await {
                return Outcome::Broken(e.to_string());
            }
            send.send_request(request).await
        }
        Conn::H2(send) => {
            if let Err(e) = send.ready().await {
                return Outcome::Broken(e.to_string());
            }
            send.send_request(request).await
        }
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => return Outcome::Broken(e.to_string()),
    };
    let (parts, body) = response.into_parts();
    let collected = match body.collect().await {
        Ok(c) => c,
        Err(e) => return Outcome::Broken(e.to_string()),
    };
    let trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    let received = body.len() as u64;
    let status = parts.status.as_u16();
    match req.protocol {
        Protocol::Connect if status == 200 => Outcome::Ok { received },
        Protocol::Plain if parts.status.is_success() => Outcome::Ok { received },
        Protocol::Grpc if status == 200 => {
            let code = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| parts.headers.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let message = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-message"))
                .or_else(|| parts.headers.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            match code.as_deref() {
                Some("0") => Outcome::Ok { received },
                Some(code) => Outcome::Status { key: format!("grpc-{code}"), message },
                None => Outcome::Status { key: "grpc-no-status".into(), message },
            }
        }
        _ => Outcome::Status { key: status.to_string(), message: snippet(&body) },
    }
}

/// The start of an error body, for the report.
fn snippet(body: &[u8]) -> String {
    const SNIPPET_BYTES_MAX: usize = 300;
    String::from_utf8_lossy(&body[..body.len().min(SNIPPET_BYTES_MAX)]).trim().to_string()
}

/// The 5-byte gRPC frame: uncompressed flag, big-endian length, message.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_target_forms() {
        let t = parse_target("http://127.0.0.1:4040").unwrap();
        assert_eq!(t.addr, "127.0.0.1:4040".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:4040");
        assert_eq!(t.base_path, "");
        let t = parse_target("http://127.0.0.1:9/prefix/").unwrap();
        assert_eq!(t.base_path, "/prefix");
        let t = parse_target("http://127.0.0.1").unwrap();
        assert_eq!(t.addr.port(), 80);
        let t = parse_target("http://[::1]:4040").unwrap();
        assert_eq!(t.addr, "[::1]:4040".parse().unwrap());
        assert!(parse_target("https://x:1").is_err());
        assert!(parse_target("http://").is_err());
    }

    #[test]
    fn test_grpc_frame_and_percent_encoding() {
        assert_eq!(grpc_frame(b"abc"), vec![0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(percent_encode("svc{a=b,c=d}"), "svc%7Ba%3Db%2Cc%3Dd%7D");
    }
}
