//! Unary RPC framing over plain HTTP, shared by every service: Connect (proto and JSON),
//! gRPC and gRPC-Web. A component's handler sees decoded messages and returns an encoded
//! message or an `RpcError` (`service::call`); this module owns content types,
//! compression, frames, trailers and status mapping.
use crate::service::body::{json_error, RespBody, Response};
use crate::service::codec::Protocol;
use crate::service::status::{Code, RpcError};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use kiln_io::compress;

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

/// A Connect GET request's protocol and message, from its query string
/// (`?encoding=json|proto&message=…[&base64=1][&compression=gzip|identity][&connect=v1]`,
/// the form connect-web sends for side-effect-free methods). The message is inflated within
/// `limit`, and a message longer than `limit` is refused before it is decoded.
pub fn get_request(query: &str, limit: usize) -> Result<(Protocol, Bytes), RpcError> {
    let (mut encoding, mut message, mut base64, mut compression) = (None, None, false, None);
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "encoding" => encoding = Some(v),
            "message" => message = Some(v),
            "base64" => base64 = v == "1",
            "compression" => compression = Some(v),
            _ => {}
        }
    }
    let proto = match encoding {
        Some("json") => Protocol::ConnectJson,
        Some("proto") => Protocol::ConnectProto,
        Some(other) => {
            return Err(RpcError::invalid(format!("Connect GET: unknown encoding {other:?} (use json or proto)")))
        }
        None => return Err(RpcError::invalid("Connect GET: the encoding parameter is required (json or proto)")),
    };
    let raw = message.ok_or_else(|| RpcError::invalid("Connect GET: the message parameter is required"))?;
    // Percent-decoding never lengthens; base64 shortens. So `limit` bounds every step.
    if raw.len() > limit.saturating_mul(3) {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("Connect GET: the message is {} bytes, more than the {limit} bytes a request may carry", raw.len()),
        ));
    }
    let mut bytes = crate::service::request::percent_decode_bytes(raw);
    if base64 {
        use base64::Engine;
        let text: Vec<u8> = bytes.iter().copied().filter(|b| *b != b'=').collect();
        bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&text)
            .map_err(|e| RpcError::invalid(format!("Connect GET: the message is not URL-safe base64: {e}")))?;
    }
    let bytes = match compression {
        None | Some("identity") => bytes,
        Some("gzip") => compress::gunzip_bounded(&bytes, limit)
            .map_err(|e| RpcError::invalid(format!("Connect GET: message: {e}")))?,
        Some(other) => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("Connect GET: unsupported compression {other:?} (use gzip or identity)"),
            ))
        }
    };
    if bytes.len() > limit {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!("Connect GET: the message is {} bytes, more than the limit of {limit}", bytes.len()),
        ));
    }
    Ok((proto, Bytes::from(bytes)))
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

/// Frames a successful response, `payload` being the message in the protocol's codec
/// (`service::codec::encode`).
pub fn respond(proto: Protocol, req_headers: &HeaderMap, mut payload: Vec<u8>) -> Response {
    let gzip_ok = header_is(req_headers, "accept-encoding", "gzip");
    match proto {
        Protocol::ConnectProto | Protocol::ConnectJson => {
            let ct = if proto == Protocol::ConnectJson { "application/json" } else { "application/proto" };
            let mut b = http::Response::builder().status(200).header("content-type", ct);
            if gzip_ok && payload.len() > 1024 {
                payload = compress::gzip(&payload);
                b = b.header("content-encoding", "gzip");
            }
            b.body(RespBody::full(payload)).expect("valid response")
        }
        Protocol::Grpc => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(RespBody::with_trailers(grpc_frame(0, &payload), trailers))
                .expect("valid response")
        }
        Protocol::GrpcWeb => {
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
    fn connect_get_messages() {
        let (p, m) = get_request("connect=v1&encoding=json&message=%7B%22name%22%3A%22a%22%7D", 100).unwrap();
        assert_eq!((p, &m[..]), (Protocol::ConnectJson, &br#"{"name":"a"}"#[..]));
        // base64 URL-safe, padded or not, of the protobuf bytes 0a 01 61
        for q in ["encoding=proto&base64=1&message=CgFh", "encoding=proto&base64=1&message=CgFh%3D"] {
            let (p, m) = get_request(q, 100).unwrap();
            assert_eq!((p, &m[..]), (Protocol::ConnectProto, &[0x0a, 0x01, b'a'][..]));
        }
        let gz = compress::gzip(b"{}");
        let b64 = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&gz)
        };
        let (_, m) = get_request(&format!("encoding=json&base64=1&compression=gzip&message={b64}"), 100).unwrap();
        assert_eq!(&m[..], b"{}");
        for bad in ["message=%7B%7D", "encoding=xml&message=1", "encoding=json", "encoding=proto&base64=1&message=***"]
        {
            assert_eq!(get_request(bad, 100).unwrap_err().code, Code::InvalidArgument, "{bad}");
        }
        assert_eq!(get_request("encoding=json&compression=br&message=1", 100).unwrap_err().code, Code::Unimplemented);
        let long = format!("encoding=json&message={}", "a".repeat(301));
        assert_eq!(get_request(&long, 100).unwrap_err().code, Code::ResourceExhausted);
        let long = format!("encoding=json&message={}", "a".repeat(101));
        assert_eq!(get_request(&long, 100).unwrap_err().code, Code::ResourceExhausted);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_message("a b%\n").to_str().unwrap(), "a b%25%0A");
    }
}
