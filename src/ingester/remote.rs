//! The ingester's internal RPC, `kiln.ingester.v1.IngesterService/Push`, both sides of it.
//!
//! A distributor in a cluster sends each ingester the normalised profiles whose series that
//! ingester is a replica of, as WAL ingest records (`walcodec`): the ingester never decodes a
//! pprof again, and what it receives is what it writes. It checks every record as hostile
//! input (the port is the public one), applies them all or nothing through its local client,
//! and answers once they are durable in its WAL.
use super::client::{IngesterClient, WriteError};
use crate::config::TenantLimits;
use crate::service::call::{Call, Reply};
use crate::service::routes::{Class, RpcService};
use crate::service::{Code, RpcError};
use bytes::Bytes;
use kiln_shards::ingester::walcodec;
use kiln_shards::model::ids::TenantId;
use kiln_shards::model::profile::{Profile, SampleGroup};
use std::sync::Arc;

pub const SERVICE: &str = "kiln.ingester.v1.IngesterService";
pub const PUSH_PATH: &str = "/kiln.ingester.v1.IngesterService/Push";

pub static RPC: &[RpcService] = &[RpcService { name: SERVICE, class: Class::Internal }];

/// `PushRecords { repeated bytes records = 1; }`: WAL ingest records, one per profile, all of
/// one tenant.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRecords {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub records: Vec<Bytes>,
}

/// The request body of one replica's part of a push.
pub fn encode(tenant: &str, parts: &[(Arc<Profile>, Vec<SampleGroup>)]) -> Bytes {
    let records = parts.iter().map(|(p, g)| Bytes::from(walcodec::encode(tenant, p, g))).collect();
    Bytes::from(prost::Message::encode_to_vec(&PushRecords { records }))
}

/// Serves `Push`: decodes and checks every record, then writes them through `local` (this
/// process's cores, never onward to other instances).
/// `cluster`: this instance's, whose healthy ingesters share the tenant's global series limit.
pub async fn serve(
    local: &IngesterClient,
    limits: &TenantLimits,
    cluster: Option<&crate::cluster::Cluster>,
    ready: bool,
    c: &Call<'_>,
    method: &str,
) -> Reply {
    if method != "Push" {
        return c.unimplemented();
    }
    if !ready {
        return Err(RpcError::new(Code::Unavailable, "ingester not ready: replaying its WAL or shutting down"));
    }
    let Some((tenant, batch)) = decode_push(c.msg)? else { return Ok(Vec::new()) };
    let limits = limits.for_tenant(tenant.as_str());
    let limits = match cluster {
        Some(c) => std::borrow::Cow::Owned(super::client::in_cluster_of(c, limits)),
        None => std::borrow::Cow::Borrowed(limits),
    };
    local.push(&tenant, batch, Vec::new(), &limits).await.map_err(write_error)?;
    Ok(Vec::new())
}

/// The profiles of one push, with the sample groups of each.
pub type Batch = Vec<(Arc<Profile>, Vec<SampleGroup>)>;

/// A push's profiles, each decoded and checked as hostile input (`Profile::check`: every
/// index a core follows is in range), all of one valid tenant; `None` for a push of no
/// records. Pure, so that the fuzz target (`replica_push`) and the budget test run exactly
/// what the server runs before any core sees the profiles.
pub fn decode_push(body: &Bytes) -> Result<Option<(TenantId, Batch)>, RpcError> {
    let invalid = |m: String| RpcError::new(Code::InvalidArgument, m);
    let msg: PushRecords =
        prost::Message::decode(body.clone()).map_err(|e| invalid(format!("decoding PushRecords: {e}")))?;
    let mut tenant: Option<TenantId> = None;
    let mut batch = Vec::with_capacity(msg.records.len());
    for r in &msg.records {
        let (t, profile, groups) = walcodec::decode(r).map_err(|e| invalid(format!("a push record: {e}")))?;
        profile.check(&groups).map_err(|e| invalid(format!("a push record: {e}")))?;
        match &tenant {
            Some(prev) if prev.as_str() != t => {
                return Err(invalid("a push's records must all be of one tenant".into()))
            }
            Some(_) => {}
            // Parsed at the first record, so a push of an invalid tenant stops there.
            None => tenant = Some(TenantId::parse(&t).map_err(|e| invalid(e.to_string()))?),
        }
        batch.push((Arc::new(profile), groups));
    }
    Ok(tenant.map(|t| (t, batch)))
}

/// The RPC error of a refused write.
pub fn write_error(e: WriteError) -> RpcError {
    match e {
        WriteError::Full(m) => RpcError::new(Code::ResourceExhausted, m),
        WriteError::Unavailable(m) => RpcError::new(Code::Unavailable, m),
    }
}
