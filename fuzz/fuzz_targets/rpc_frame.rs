//! gRPC/Connect request framing: frames, compressed flags and gzip, bounded.
//! The push message is decoded too, and all of it holds to its budget.
#![no_main]
use kiln::api::rpc::request_bytes;
use kiln::service::codec::Protocol;
use libfuzzer_sys::fuzz_target;

// Counts allocations so that each input is checked against its decoder's memory and
// allocation budget (kiln::budget).
#[global_allocator]
static ALLOC: kiln::budget::CountingAlloc<std::alloc::System> = kiln::budget::CountingAlloc(std::alloc::System);

fuzz_target!(|data: &[u8]| {
    // Framing, inflating and decoding a push message, within budget.
    kiln::budget::assert_within("rpc", data);
    let mut h = http::HeaderMap::new();
    h.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
    let _ = request_bytes(Protocol::Grpc, &h, bytes::Bytes::copy_from_slice(data), 1 << 20);
    h.insert("content-encoding", http::HeaderValue::from_static("gzip"));
    let _ = request_bytes(Protocol::ConnectProto, &h, bytes::Bytes::copy_from_slice(data), 1 << 20);
});
