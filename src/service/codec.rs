//! A message in the codec of the request's protocol: protobuf, or proto3 JSON for Connect's
//! JSON codec. The envelope (frames, compression, trailers) is the edge's (`api::rpc`).
use super::status::RpcError;
use bytes::Bytes;

/// The RPC protocol a request speaks, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    ConnectProto,
    ConnectJson,
    Grpc,
    GrpcWeb,
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

/// Encodes a response message in the protocol's codec (JSON for Connect's JSON codec,
/// protobuf otherwise).
pub fn encode<M>(proto: Protocol, msg: &M) -> Vec<u8>
where
    M: prost::Message + serde::Serialize,
{
    match proto {
        Protocol::ConnectJson => serde_json::to_vec(msg).expect("messages serialize"),
        _ => msg.encode_to_vec(),
    }
}
