//! OTLP profiles ingest (shared/api.md §2.3): the collector service's `Export` over gRPC
//! (`/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export`, served
//! through the edge's RPC machinery as Push is), and OTLP/HTTP (`POST /v1development/profiles`,
//! also accepted on the gRPC path) with a protobuf or JSON body.
//!
//! A request is decoded (refused first if its decoded form would pass the body limit),
//! converted (`convert.rs`) into kiln's profiles, validated as a push is, and distributed
//! all or nothing.
pub mod convert;

use super::{accept, metrics, wirecost, Accepted, Distributor};
use crate::service::body::{http_error, RespBody, Response};
use crate::service::{Code, Req, RpcError};
use crate::timeparse::now_ns;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use kiln_io::compress;
use kiln_proto::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use prost::Message;
use std::rc::Rc;

/// The gRPC service, served at `/<SERVICE>/Export`.
pub const SERVICE: &str = "opentelemetry.proto.collector.profiles.v1development.ProfilesService";
/// OTLP/HTTP's path for profiles.
pub const HTTP_PATH: &str = "/v1development/profiles";
/// The gRPC method's path, where OTLP/HTTP bodies are taken too.
pub const GRPC_PATH: &str = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export";

/// The codec of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

/// Shapes of the OTLP messages, for [`wirecost`]: what prost allocates decoding them.
pub mod shapes {
    use super::super::wirecost::{Field, Shape};
    use kiln_proto::opentelemetry::proto::collector::profiles::v1development as collector;
    use kiln_proto::opentelemetry::proto::common::v1 as common;
    use kiln_proto::opentelemetry::proto::profiles::v1development as p;
    use kiln_proto::opentelemetry::proto::resource::v1 as resource;
    use std::mem::size_of;

    // An attribute value nests arrays and key-value lists to any depth (prost stops at 100,
    // as `wirecost` does).
    pub static ANY_VALUE: Shape = Shape {
        size: size_of::<common::AnyValue>(),
        fields: &[
            (1, Field::Str),
            (5, Field::Message(&ARRAY_VALUE)),
            (6, Field::Message(&KEY_VALUE_LIST)),
            (7, Field::Str),
        ],
    };
    pub static ARRAY_VALUE: Shape =
        Shape { size: size_of::<common::ArrayValue>(), fields: &[(1, Field::Messages(&ANY_VALUE))] };
    pub static KEY_VALUE_LIST: Shape =
        Shape { size: size_of::<common::KeyValueList>(), fields: &[(1, Field::Messages(&KEY_VALUE))] };
    pub static KEY_VALUE: Shape =
        Shape { size: size_of::<common::KeyValue>(), fields: &[(1, Field::Str), (2, Field::Message(&ANY_VALUE))] };
    pub static SCOPE: Shape = Shape {
        size: size_of::<common::InstrumentationScope>(),
        fields: &[(1, Field::Str), (2, Field::Str), (3, Field::Messages(&KEY_VALUE))],
    };
    pub static RESOURCE: Shape =
        Shape { size: size_of::<resource::Resource>(), fields: &[(1, Field::Messages(&KEY_VALUE))] };
    pub static VALUE_TYPE: Shape = Shape { size: size_of::<p::ValueType>(), fields: &[] };
    pub static SAMPLE: Shape = Shape {
        size: size_of::<p::Sample>(),
        fields: &[(2, Field::Scalars), (4, Field::Scalars), (5, Field::Scalars)],
    };
    pub static PROFILE: Shape = Shape {
        size: size_of::<p::Profile>(),
        fields: &[
            (1, Field::Message(&VALUE_TYPE)),
            (2, Field::Messages(&SAMPLE)),
            (5, Field::Message(&VALUE_TYPE)),
            (7, Field::Str),
            (9, Field::Str),
            (10, Field::Str),
            (11, Field::Scalars),
        ],
    };
    pub static SCOPE_PROFILES: Shape = Shape {
        size: size_of::<p::ScopeProfiles>(),
        fields: &[(1, Field::Message(&SCOPE)), (2, Field::Messages(&PROFILE)), (3, Field::Str)],
    };
    pub static RESOURCE_PROFILES: Shape = Shape {
        size: size_of::<p::ResourceProfiles>(),
        fields: &[(1, Field::Message(&RESOURCE)), (2, Field::Messages(&SCOPE_PROFILES)), (3, Field::Str)],
    };
    pub static MAPPING: Shape = Shape { size: size_of::<p::Mapping>(), fields: &[(5, Field::Scalars)] };
    pub static LINE: Shape = Shape { size: size_of::<p::Line>(), fields: &[] };
    pub static LOCATION: Shape =
        Shape { size: size_of::<p::Location>(), fields: &[(3, Field::Messages(&LINE)), (4, Field::Scalars)] };
    pub static FUNCTION: Shape = Shape { size: size_of::<p::Function>(), fields: &[] };
    pub static LINK: Shape = Shape { size: size_of::<p::Link>(), fields: &[(1, Field::Str), (2, Field::Str)] };
    pub static ATTRIBUTE: Shape =
        Shape { size: size_of::<p::KeyValueAndUnit>(), fields: &[(2, Field::Message(&ANY_VALUE))] };
    pub static STACK: Shape = Shape { size: size_of::<p::Stack>(), fields: &[(1, Field::Scalars)] };
    pub static DICTIONARY: Shape = Shape {
        size: size_of::<p::ProfilesDictionary>(),
        fields: &[
            (1, Field::Messages(&MAPPING)),
            (2, Field::Messages(&LOCATION)),
            (3, Field::Messages(&FUNCTION)),
            (4, Field::Messages(&LINK)),
            (5, Field::Strings),
            (6, Field::Messages(&ATTRIBUTE)),
            (7, Field::Messages(&STACK)),
        ],
    };
    /// `ExportProfilesServiceRequest`.
    pub static EXPORT_REQUEST: Shape = Shape {
        size: size_of::<collector::ExportProfilesServiceRequest>(),
        fields: &[(1, Field::Messages(&RESOURCE_PROFILES)), (2, Field::Message(&DICTIONARY))],
    };
    /// The largest message struct, what one JSON object may cost.
    pub const LARGEST: usize = {
        let sizes = [size_of::<p::Profile>(), size_of::<p::ProfilesDictionary>(), size_of::<p::ResourceProfiles>()];
        let mut m = 0;
        let mut i = 0;
        while i < sizes.len() {
            if sizes[i] > m {
                m = sizes[i];
            }
            i += 1;
        }
        m
    };
}

/// Decodes an export request, refusing first one whose decoded form would pass `budget`
/// bytes (the body limit; 0: none).
pub fn decode_request(encoding: Encoding, msg: &[u8], budget: usize) -> Result<ExportProfilesServiceRequest, RpcError> {
    let cost = match encoding {
        Encoding::Json => wirecost::json_cost(msg, shapes::LARGEST),
        Encoding::Protobuf => wirecost::cost(msg, &shapes::EXPORT_REQUEST),
    };
    if budget > 0 && cost > budget {
        return Err(RpcError::invalid(format!(
            "the export request would take {cost} bytes of memory decoded, more than the body limit of {budget} bytes \
             (-distributor.ingestion-body-limit-mb): it holds too many records for its size"
        )));
    }
    match encoding {
        Encoding::Json => {
            serde_json::from_slice(msg).map_err(|e| RpcError::invalid(format!("invalid OTLP JSON export request: {e}")))
        }
        Encoding::Protobuf => ExportProfilesServiceRequest::decode(msg)
            .map_err(|e| RpcError::invalid(format!("invalid OTLP protobuf export request: {e}"))),
    }
}

/// Converts, validates and distributes an export request of `size` bytes (as decoded from).
pub async fn export(
    dist: &Rc<Distributor>,
    headers: &HeaderMap,
    req: ExportProfilesServiceRequest,
    size: usize,
) -> Result<(), RpcError> {
    let tenant = dist.write_tenant(headers)?;
    let limits = dist.limits_for(&tenant).clone();
    let now = now_ns();
    let pprof_limits = super::pprof::PprofLimits { max_samples: limits.max_profile_stacktrace_samples };
    // The pprofs built may cost what a folded body's may: the profile size limit, and past
    // it some times the request.
    let max_bytes = super::folded::built_limit(size, limits.max_profile_size_bytes);
    let reject = |e: RpcError| {
        metrics::add(&dist.metrics().rejected_profiles, 1);
        let reason = e.reason.unwrap_or(super::discard::reason::MALFORMED_PROFILE);
        dist.discard(&tenant, reason, 1, size, &e.message);
        e
    };
    let converted = convert::convert(&req, pprof_limits, max_bytes, now).map_err(|e| reject(RpcError::invalid(e)))?;
    drop(req);
    dist.rate_limit(&tenant, size, now).map_err(reject)?;
    let mut batch: Vec<Accepted> = Vec::with_capacity(converted.len());
    let mut received = Vec::with_capacity(converted.len());
    for c in converted {
        let ty = c.labels.get(kiln_shards::model::labels::NAME).unwrap_or("").to_string();
        received.push((ty, c.decoded.profile.samples.len()));
        batch.push(accept(&c.labels, c.decoded, &limits, now).map_err(reject)?);
    }
    if batch.is_empty() {
        return Ok(());
    }
    let n = batch.len() as u64;
    if let Err(e) = dist.distribute(&tenant, batch).await {
        dist.discard(&tenant, e.reason.unwrap_or(super::discard::reason::UNKNOWN), n, size, &e.message);
        return Err(e);
    }
    // One request holds them all: each profile is counted with its share of its size.
    let share = size / received.len().max(1);
    for (ty, samples) in received {
        dist.metrics().usage.received(&tenant, &ty, share, share, samples);
    }
    Ok(())
}

/// The encoding an OTLP/HTTP content type names; `None`: not one OTLP/HTTP takes.
pub fn http_encoding(headers: &HeaderMap) -> Option<Encoding> {
    let ct = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    match ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
        "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
        "application/json" => Some(Encoding::Json),
        _ => None,
    }
}

/// OTLP/HTTP status of a failure: validation 400, over a limit 429, anything else 500.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `POST /v1development/profiles` (and OTLP/HTTP on the gRPC path).
pub async fn handle_http(dist: &Rc<Distributor>, r: &Req) -> Response {
    metrics::add(&dist.metrics().received_bytes, r.body.len() as u64);
    metrics::add(&dist.metrics().otlp_requests, 1);
    let Some(encoding) = http_encoding(&r.headers) else {
        return http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "OTLP/HTTP takes Content-Type application/x-protobuf, application/protobuf or application/json",
        );
    };
    match handle_body(dist, r, encoding).await {
        Ok(()) => http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(RespBody::empty())
            .expect("valid response"),
        Err(e) => http_error(http_status(e.code), &e.message),
    }
}

async fn handle_body(dist: &Rc<Distributor>, r: &Req, encoding: Encoding) -> Result<(), RpcError> {
    let body_limit = dist.limits.default().body_limit_bytes();
    let body: Bytes = if r.gzip_encoded() {
        let limit = if body_limit > 0 { body_limit } else { usize::MAX / 2 };
        compress::gunzip_bounded(&r.body, limit)
            .map_err(|e| match e {
                compress::InflateError::TooLarge { limit } => {
                    RpcError::invalid(format!("request body too large: inflated size exceeds {limit} bytes"))
                }
                e => RpcError::invalid(format!("request body: {e}")),
            })?
            .into()
    } else {
        r.body.clone()
    };
    metrics::add(&dist.metrics().decompressed_bytes, body.len() as u64);
    let req = decode_request(encoding, &body, body_limit)?;
    export(dist, &r.headers, req, body.len()).await
}

/// The gRPC service: only Export.
pub async fn serve_rpc(
    dist: &Rc<Distributor>,
    call: &crate::service::call::Call<'_>,
    method: &str,
) -> crate::service::call::Reply {
    if method != "Export" {
        return call.unimplemented();
    }
    metrics::add(&dist.metrics().received_bytes, call.msg.len() as u64);
    metrics::add(&dist.metrics().otlp_requests, 1);
    let encoding = match call.proto {
        crate::service::codec::Protocol::ConnectJson => Encoding::Json,
        _ => Encoding::Protobuf,
    };
    let req = decode_request(encoding, call.msg, dist.limits.default().body_limit_bytes())?;
    export(dist, call.headers, req, call.msg.len()).await?;
    let resp =
        kiln_proto::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceResponse::default();
    Ok(crate::service::codec::encode(call.proto, &resp))
}
