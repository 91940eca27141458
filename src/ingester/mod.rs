//! The ingester as the network sees it: its HTTP route (`/ingester/flush`), the client every
//! write and cut goes through (`client`), and the replay of its WAL at start (`replay`).
//! What it keeps on each core (heads, WAL writer, cuts) is `kiln_shards::ingester`.
pub mod client;
pub mod remote;
pub mod replay;
pub mod replicate;

use crate::service::body::text;
use crate::service::readiness::Readiness;
use crate::service::routes::{Class, HttpRoute};
use crate::service::{Req, Response};
use client::IngesterClient;
use http::Method;
use std::sync::Arc;

/// The ingester's HTTP routes.
pub enum Endpoint {
    Flush,
}

pub static HTTP: &[HttpRoute<Endpoint>] = &[HttpRoute {
    methods: &[Method::GET, Method::POST],
    paths: &["/ingester/flush"],
    class: Class::Other,
    endpoint: Endpoint::Flush,
}];

/// The ingester's routes on one core.
pub struct Ingester {
    /// This process's cores (never onward to other instances).
    cores: IngesterClient,
    ready: Arc<Readiness>,
    limits: Arc<crate::config::TenantLimits>,
    /// In a cluster: whose healthy ingesters share each tenant's global series limit.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Ingester {
    pub fn new(
        cores: IngesterClient,
        ready: Arc<Readiness>,
        limits: Arc<crate::config::TenantLimits>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Self {
        Ingester { cores: cores.this_process(), ready, limits, cluster }
    }

    /// The internal RPC (`remote`): a distributor's replicated writes.
    pub async fn serve_rpc(&self, call: &crate::service::call::Call<'_>, method: &str) -> crate::service::call::Reply {
        remote::serve(&self.cores, &self.limits, self.cluster.as_deref(), self.ready.ready(), call, method).await
    }

    pub async fn serve_http(&self, endpoint: &Endpoint, r: &Req) -> Response {
        match endpoint {
            Endpoint::Flush => self.flush(r).await,
        }
    }

    /// Pyroscope's `/ingester/flush`: cuts every core's head into blocks now and answers 204 once
    /// they are uploaded and in the bucket index. Within a deadline (`?timeout=`, a Go
    /// duration, 30 s by default): past it, or when a cut failed, 503 says what is still
    /// pending, and the uploads and cut retries go on in the background.
    async fn flush(&self, r: &Req) -> Response {
        if !self.ready.ready() {
            return text(503, "text/plain; charset=utf-8", format!("not ready: {}", self.ready.why_not_ready()));
        }
        let timeout = match r.param("timeout").map(|v| crate::config::parse_duration(&v)) {
            None => FLUSH_TIMEOUT,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => return text(400, "text/plain; charset=utf-8", "timeout must be positive"),
            Some(Err(e)) => return text(400, "text/plain; charset=utf-8", format!("invalid timeout: {e}")),
        };
        match monoio::time::timeout(timeout, self.cores.cut_all()).await {
            Ok(Ok(())) => text(204, "text/plain; charset=utf-8", ""),
            Ok(Err(e)) => text(503, "text/plain; charset=utf-8", e.to_string()),
            Err(_) => match self.cores.pending().await {
                Some(p) => text(
                    503,
                    "text/plain; charset=utf-8",
                    format!(
                        "flush not finished within {timeout:?}; still pending: {p}; uploads and retries go on in the background"
                    ),
                ),
                None => text(204, "text/plain; charset=utf-8", ""),
            },
        }
    }
}

/// How long `/ingester/flush` waits for the blocks unless `?timeout=` says otherwise.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
