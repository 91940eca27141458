//! How a component registers what it serves: its HTTP routes and RPC services, each with the
//! class that decides the body limit the edge reads it with and the request metrics that
//! count it. The edge builds its router from these tables.
use http::Method;

/// A route's class: which request metrics count it, and whether its body is a write (read
/// up to the ingestion body limit) or anything else (up to `QUERY_BODY_LIMIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Push,
    Ingest,
    Query,
    Render,
    /// Calls between the instances of a cluster (replicated writes, replica queries): read up
    /// to the ingestion body limit, as a write's.
    Internal,
    Other,
}

impl Class {
    pub const ALL: [(Class, &'static str); 6] = [
        (Class::Push, "push"),
        (Class::Ingest, "ingest"),
        (Class::Query, "query"),
        (Class::Render, "render"),
        (Class::Internal, "internal"),
        (Class::Other, "other"),
    ];

    /// Whether the body is read up to the ingestion body limit (a write's, or an internal
    /// call's) rather than `QUERY_BODY_LIMIT`.
    pub fn is_write(self) -> bool {
        matches!(self, Class::Push | Class::Ingest | Class::Internal)
    }
}

/// The body of any request but a write, and the inflated message of any RPC but a push.
/// Queries are a few KiB (selectors, names); prost decodes a message of empty repeated
/// strings to up to 50 times its size, so this bounds what decoding a query can take.
pub const QUERY_BODY_LIMIT: usize = 1 << 20;

/// One HTTP route of a component: the paths and methods it answers, and the component's
/// own name for it (`E`), handed back to the component with each request.
pub struct HttpRoute<E: 'static> {
    pub methods: &'static [Method],
    pub paths: &'static [&'static str],
    pub class: Class,
    pub endpoint: E,
}

/// One RPC service of a component: served at `/<name>/<Method>`.
pub struct RpcService {
    pub name: &'static str,
    pub class: Class,
}

/// The route of `table` that serves `path`, if any (whatever the method).
pub fn find<E>(table: &'static [HttpRoute<E>], path: &str) -> Option<&'static HttpRoute<E>> {
    table.iter().find(|r| r.paths.contains(&path))
}

/// The service of `table` that `path` (`/<service>/<Method>`) names, with the method.
pub fn find_rpc<'p>(table: &'static [RpcService], path: &'p str) -> Option<(&'static RpcService, &'p str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    table.iter().find(|s| s.name == service).map(|s| (s, method))
}
