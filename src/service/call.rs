//! One decoded RPC call as a component's handler sees it. The handler returns its answer
//! encoded in the call's codec (`Reply`); the edge frames it in the call's protocol.
use super::codec::{self, Protocol};
use super::status::{Code, RpcError};
use bytes::Bytes;
use http::HeaderMap;
use std::future::Future;

/// A response message in the call's codec, or the call's failure.
pub type Reply = Result<Vec<u8>, RpcError>;

/// One unary RPC call: the request message (unframed, inflated) and its headers.
pub struct Call<'a> {
    pub proto: Protocol,
    pub headers: &'a HeaderMap,
    pub msg: &'a Bytes,
}

impl Call<'_> {
    /// Decodes the request as `Req`, runs `f` on it and encodes its answer.
    pub async fn unary<Req, Resp, F, Fut>(&self, f: F) -> Reply
    where
        Req: prost::Message + Default + serde::de::DeserializeOwned,
        Resp: prost::Message + serde::Serialize,
        F: FnOnce(Req) -> Fut,
        Fut: Future<Output = Result<Resp, RpcError>>,
    {
        let req = codec::decode::<Req>(self.proto, self.msg)?;
        let resp = f(req).await?;
        Ok(codec::encode(self.proto, &resp))
    }
}

/// The answer to a method a service does not have.
pub fn unimplemented() -> Reply {
    Err(RpcError::new(Code::Unimplemented, "method not implemented by kiln"))
}
