//! The contract between the edge (`api`) and the components: what a request and its answer
//! are, the status of a failure, the codec of an RPC message, the tenant of a request, and
//! the route tables by which each component registers what it serves. The edge and every
//! component import this module; it imports neither.
pub mod body;
pub mod call;
pub mod codec;
pub mod readiness;
pub mod request;
pub mod routes;
pub mod status;
pub mod tenant;

pub use body::{RespBody, Response};
pub use call::{Call, Reply};
pub use request::Req;
pub use status::{Code, RpcError};
