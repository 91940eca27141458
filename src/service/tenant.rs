//! Which tenant a request is for: `anonymous` in single-tenant mode, else the
//! `X-Scope-OrgID` header, each ID checked as Pyroscope does (`TenantId::parse`).
use super::status::{Code, RpcError};
use http::HeaderMap;
use kiln_shards::model::ids::TenantId;

/// The tenant(s) of a request: `anonymous` unless multitenancy is on, then `X-Scope-OrgID`
/// (several as `a|b` for reads), sorted, without repeats.
pub fn tenants(multitenancy: bool, headers: &HeaderMap) -> Result<Vec<TenantId>, RpcError> {
    if !multitenancy {
        return Ok(vec![TenantId::anonymous()]);
    }
    let raw = headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RpcError::new(Code::Unauthenticated, "no org id"))?;
    let mut out = Vec::new();
    for t in raw.split('|') {
        out.push(TenantId::parse(t).map_err(|e| RpcError::new(Code::Unauthenticated, e.to_string()))?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The tenant of a write, which must name exactly one.
pub fn write_tenant(multitenancy: bool, headers: &HeaderMap) -> Result<TenantId, RpcError> {
    let mut t = tenants(multitenancy, headers)?;
    if t.len() != 1 {
        return Err(RpcError::invalid("multiple org ids are not allowed on writes"));
    }
    Ok(t.remove(0))
}
