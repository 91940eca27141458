//! The internal RPC client: one pooled HTTP/2 (h2c) connection per remote instance on each
//! core, over which that core's calls to the instance are multiplexed. A connection that
//! fails is dropped and dialled again on the next call. Calls are Connect unary
//! (`application/proto`) on the instance's HTTP port, the framing the edge already serves.
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

/// Runs hyper's connection tasks on the calling core's executor.
#[derive(Clone, Copy)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        monoio::spawn(fut);
    }
}

/// The largest answer an internal call reads: answers to pushes are empty and query answers
/// are bounded by the query limits well below this.
pub const MAX_ANSWER_BYTES: usize = 256 << 20;

/// Why an internal call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The instance could not be reached or the connection broke: nothing is known of what it did.
    #[error("{addr}: {msg}")]
    Transport { addr: String, msg: String },
    /// The instance answered with an error (its Connect code and message).
    #[error("{addr}: {code}: {msg}")]
    Answer { addr: String, code: String, msg: String },
    #[error("{addr}: no answer within {after:?}")]
    Timeout { addr: String, after: Duration },
}

/// One core's connections, by instance address. Bounded by the number of members.
#[derive(Default)]
pub struct Pool {
    conns: RefCell<FxHashMap<String, SendRequest<Full<Bytes>>>>,
}

impl Pool {
    /// Calls `path` (`/<service>/<Method>`) on `addr` with a protobuf request body and
    /// returns the answer's body; `timeout` bounds the whole call, dialling included.
    pub async fn call(&self, addr: &str, path: &str, body: Bytes, timeout: Duration) -> Result<Bytes, CallError> {
        match monoio::time::timeout(timeout, self.call_once(addr, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout { addr: addr.into(), after: timeout }),
        }
    }

    async fn call_once(&self, addr: &str, path: &str, body: Bytes) -> Result<Bytes, CallError> {
        let transport = |msg: String| CallError::Transport { addr: addr.into(), msg };
        let mut sender = self.sender(addr).await.map_err(transport)?;
        let req = http::Request::post(format!("http://{addr}{path}"))
            .header(http::header::CONTENT_TYPE, "application/proto")
            .header("connect-protocol-version", "1")
            .body(Full::new(body))
            .map_err(|e| transport(e.to_string()))?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.conns.borrow_mut().remove(addr);
                return Err(transport(e.to_string()));
            }
        };
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the answer: {e}")))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        // A Connect error: {"code": "...", "message": "..."}.
        let (code, msg) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => (
                v.get("code").and_then(|c| c.as_str()).unwrap_or("unknown").to_string(),
                v.get("message").and_then(|c| c.as_str()).unwrap_or("").to_string(),
            ),
            Err(_) => (status.as_u16().to_string(), String::from_utf8_lossy(&bytes).into_owned()),
        };
        Err(CallError::Answer { addr: addr.into(), code, msg })
    }

    /// The pooled connection to `addr`, dialled if there is none or it closed.
    async fn sender(&self, addr: &str) -> Result<SendRequest<Full<Bytes>>, String> {
        if let Some(s) = self.conns.borrow().get(addr) {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let stream = monoio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting: {e}"))?;
        let _ = stream.set_nodelay(true);
        let io = stream.try_into_poll_io().map_err(|(e, _)| format!("connecting: {e}"))?;
        let (sender, conn) = hyper::client::conn::http2::handshake(LocalExec, hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let a = addr.to_string();
        monoio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(addr = %a, error = %e, "internal connection ended");
            }
        });
        self.conns.borrow_mut().insert(addr.to_string(), sender.clone());
        Ok(sender)
    }

    /// Drops connections to instances no longer in `keep`.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.conns.borrow_mut().retain(|a, _| keep(a));
    }
}
