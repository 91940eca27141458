//! The response body every handler returns: a whole buffer, optionally followed by HTTP/2
//! trailers (what gRPC needs for `grpc-status`); and the JSON error body of plain HTTP routes.
use super::status::Code;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

#[derive(Debug, Default)]
pub struct RespBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl RespBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        RespBody { data: (!data.is_empty()).then_some(data), trailers: None }
    }
    pub fn empty() -> Self {
        RespBody::default()
    }
    pub fn with_trailers(data: Bytes, trailers: HeaderMap) -> Self {
        RespBody { data: (!data.is_empty()).then_some(data), trailers: Some(trailers) }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.trailers) {
            (d, None) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            _ => SizeHint::default(),
        }
    }
}

pub type Response = http::Response<RespBody>;

/// A response of `status` with a body of content type `ct`.
pub fn text(status: u16, ct: &str, body: impl Into<Bytes>) -> Response {
    http::Response::builder()
        .status(status)
        .header("content-type", ct)
        .body(RespBody::full(body))
        .expect("valid response")
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
