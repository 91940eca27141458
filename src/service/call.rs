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
    /// `/<service>/<Method>`: what an `unimplemented` answer names.
    pub path: &'a str,
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

    /// The answer to a method kiln does not serve: Connect `unimplemented`, naming the
    /// method and, for Pyroscope's methods kiln knows it lacks, what is missing.
    pub fn unimplemented(&self) -> Reply {
        Err(unimplemented(self.path))
    }
}

/// Pyroscope's services and methods kiln does not serve, with what is missing for each
/// (the README lists the same). A path is matched by its longest entry.
pub const NOT_SERVED: &[(&str, &str)] = &[
    (
        "/settings.v1.RecordingRulesService/",
        "recording rules (metrics recorded from profiles) are not implemented by kiln",
    ),
    ("/debuginfo.v1alpha1.DebuginfoService/", "debug info uploads and symbolization are not implemented by kiln"),
    ("/vcs.v1.VCSService/", "the source code (GitHub) integration is not implemented by kiln"),
];

/// `unimplemented` for `path` (`/<service>/<Method>`), naming what is missing where known.
pub fn unimplemented(path: &str) -> RpcError {
    let reason = NOT_SERVED
        .iter()
        .filter(|(prefix, _)| path.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or("kiln does not implement this method", |(_, why)| why);
    RpcError::new(Code::Unimplemented, format!("{path}: {reason}"))
}
