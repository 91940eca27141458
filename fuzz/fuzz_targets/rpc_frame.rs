//! gRPC/Connect request framing: frames, compressed flags and gzip, bounded.
#![no_main]
use kiln::server::rpc::{request_bytes, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut h = http::HeaderMap::new();
    h.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
    let _ = request_bytes(Protocol::Grpc, &h, bytes::Bytes::copy_from_slice(data), 1 << 20);
    h.insert("content-encoding", http::HeaderValue::from_static("gzip"));
    let _ = request_bytes(Protocol::ConnectProto, &h, bytes::Bytes::copy_from_slice(data), 1 << 20);
});
