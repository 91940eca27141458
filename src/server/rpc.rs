//! Unary RPC framing over plain HTTP, shared by every service: Connect (proto and JSON),
//! gRPC and gRPC-Web. A handler sees decoded messages and returns a message or an `RpcError`;
//! this module owns content types, compression, frames, trailers and status mapping.
use super::body::{RespBody, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use kiln_io::compress;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    ConnectProto,
    ConnectJson,
    Grpc,
    GrpcWeb,
}

/// Connect/gRPC status codes, with their gRPC numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status Connect (and Pyroscope's legacy routes) use for a code.
    pub fn http_status(self) -> StatusCode {
        let s = match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound | Code::Unimplemented => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::FailedPrecondition => 412,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        };
        StatusCode::from_u16(s).expect("valid status")
    }

    /// The reverse mapping Pyroscope uses to put a code in legacy error bodies.
    pub fn from_http_status(s: StatusCode) -> Code {
        match s.as_u16() {
            400 | 413 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            412 => Code::FailedPrecondition,
            429 | 431 => Code::ResourceExhausted,
            499 => Code::Canceled,
            502 | 503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// Which RPC protocol a request speaks, from its content type; `None` for anything else.
pub fn detect(headers: &HeaderMap) -> Option<Protocol> {
    let ct = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match ct.as_str() {
        "application/proto" | "application/protobuf" | "application/x-protobuf" => Some(Protocol::ConnectProto),
        "application/json" => Some(Protocol::ConnectJson),
        "application/grpc" | "application/grpc+proto" => Some(Protocol::Grpc),
        "application/grpc-web" | "application/grpc-web+proto" => Some(Protocol::GrpcWeb),
        _ => None,
    }
}

fn header_is(headers: &HeaderMap, name: &str, value: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(value)))
}

/// Extracts the request message bytes: unwraps a gRPC frame and inflates gzip as the
/// headers say (`limit` bounds the inflated size).
pub fn request_bytes(proto: Protocol, headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, RpcError> {
    match proto {
        Protocol::ConnectProto | Protocol::ConnectJson => {
            if header_is(headers, "content-encoding", "gzip") {
                return compress::gunzip_bounded(&body, limit)
                    .map(Bytes::from)
                    .map_err(|e| RpcError::invalid(format!("request body: {e}")));
            }
            Ok(body)
        }
        Protocol::Grpc | Protocol::GrpcWeb => {
            if body.len() < 5 {
                return Err(RpcError::invalid("gRPC request has no complete message frame"));
            }
            let flag = body[0];
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            if body.len() < 5 + len {
                return Err(RpcError::invalid(format!("gRPC frame says {len} bytes but {} arrived", body.len() - 5)));
            }
            let msg = body.slice(5..5 + len);
            if flag & 1 == 1 {
                if !header_is(headers, "grpc-encoding", "gzip") {
                    return Err(RpcError::new(
                        Code::Unimplemented,
                        "compressed gRPC frame with an unsupported grpc-encoding",
                    ));
                }
                return compress::gunzip_bounded(&msg, limit)
                    .map(Bytes::from)
                    .map_err(|e| RpcError::invalid(format!("request message: {e}")));
            }
            Ok(msg)
        }
    }
}

/// Decodes a request message in the protocol's codec. Taking `Bytes` lets prost slice `bytes`
/// fields (a push's raw profiles) out of the message instead of copying them.
pub fn decode<M>(proto: Protocol, bytes: &Bytes) -> Result<M, RpcError>
where
    M: prost::Message + Default + serde::de::DeserializeOwned,
{
    match proto {
        Protocol::ConnectJson => {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(M::default());
            }
            serde_json::from_slice(bytes).map_err(|e| RpcError::invalid(format!("invalid JSON request: {e}")))
        }
        _ => M::decode(bytes.clone()).map_err(|e| RpcError::invalid(format!("invalid protobuf request: {e}"))),
    }
}

fn grpc_frame(flag: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(flag);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// Percent-encodes a grpc-message value as the gRPC spec asks.
fn grpc_message(msg: &str) -> HeaderValue {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

/// Encodes a successful response in the request's protocol.
pub fn respond<M>(proto: Protocol, req_headers: &HeaderMap, msg: &M) -> Response
where
    M: prost::Message + serde::Serialize,
{
    let gzip_ok = header_is(req_headers, "accept-encoding", "gzip");
    match proto {
        Protocol::ConnectProto | Protocol::ConnectJson => {
            let (ct, mut payload) = if proto == Protocol::ConnectJson {
                ("application/json", serde_json::to_vec(msg).expect("messages serialize"))
            } else {
                ("application/proto", msg.encode_to_vec())
            };
            let mut b = http::Response::builder().status(200).header("content-type", ct);
            if gzip_ok && payload.len() > 1024 {
                payload = compress::gzip(&payload);
                b = b.header("content-encoding", "gzip");
            }
            b.body(RespBody::full(payload)).expect("valid response")
        }
        Protocol::Grpc => {
            let payload = msg.encode_to_vec();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(RespBody::with_trailers(grpc_frame(0, &payload), trailers))
                .expect("valid response")
        }
        Protocol::GrpcWeb => {
            let payload = msg.encode_to_vec();
            let mut body = BytesMut::new();
            body.extend_from_slice(&grpc_frame(0, &payload));
            body.extend_from_slice(&grpc_frame(0x80, b"grpc-status: 0\r\n"));
            http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc-web+proto")
                .body(RespBody::full(body.freeze()))
                .expect("valid response")
        }
    }
}

/// Encodes an error in the request's protocol.
pub fn respond_error(proto: Protocol, err: &RpcError) -> Response {
    match proto {
        Protocol::ConnectProto | Protocol::ConnectJson => json_error(err.code.http_status(), err.code, &err.message),
        Protocol::Grpc => {
            // Trailers-only: the status rides in the headers of an empty response.
            http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .header("grpc-status", (err.code as u8).to_string())
                .header("grpc-message", grpc_message(&err.message))
                .body(RespBody::empty())
                .expect("valid response")
        }
        Protocol::GrpcWeb => {
            let t = format!(
                "grpc-status: {}\r\ngrpc-message: {}\r\n",
                err.code as u8,
                grpc_message(&err.message).to_str().unwrap_or("")
            );
            http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc-web+proto")
                .body(RespBody::full(grpc_frame(0x80, t.as_bytes())))
                .expect("valid response")
        }
    }
}

/// `{"code": "...", "message": "..."}` with the given status: Connect's error body, and the
/// one Pyroscope's legacy routes use too.
pub fn json_error(status: StatusCode, code: Code, message: &str) -> Response {
    let body = serde_json::json!({ "code": code.as_str(), "message": message });
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-content-type-options", "nosniff")
        .body(RespBody::full(serde_json::to_vec(&body).expect("json")))
        .expect("valid response")
}

/// A legacy-route error: the code is derived from the status, as Pyroscope does.
pub fn http_error(status: StatusCode, message: &str) -> Response {
    json_error(status, Code::from_http_status(status), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_frames_roundtrip() {
        let f = grpc_frame(0, b"hello");
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        assert_eq!(request_bytes(Protocol::Grpc, &h, f, 100).unwrap(), Bytes::from_static(b"hello"));
        let gz = compress::gzip(b"hello");
        let f = grpc_frame(1, &gz);
        h.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(request_bytes(Protocol::Grpc, &h, f, 100).unwrap(), Bytes::from_static(b"hello"));
    }

    #[test]
    fn truncated_frame_is_invalid() {
        let h = HeaderMap::new();
        let e = request_bytes(Protocol::Grpc, &h, Bytes::from_static(&[0, 0, 0, 0, 9, 1]), 100).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
    }

    #[test]
    fn status_tables() {
        assert_eq!(Code::ResourceExhausted.http_status(), 429);
        assert_eq!(Code::from_http_status(StatusCode::from_u16(422).unwrap()), Code::Unknown);
        assert_eq!(Code::from_http_status(StatusCode::PAYLOAD_TOO_LARGE), Code::InvalidArgument);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message("a b%\n").to_str().unwrap(), "a b%25%0A");
    }
}
