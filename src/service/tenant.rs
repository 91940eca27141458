//! Which tenant a request is for: `anonymous` in single-tenant mode, else the
//! `X-Scope-OrgID` header, validated as Pyroscope does.
use super::status::{Code, RpcError};
use http::HeaderMap;

/// The tenant(s) of a request: `anonymous` unless multitenancy is on, then `X-Scope-OrgID`
/// (several as `a|b` for reads).
pub fn tenants(multitenancy: bool, headers: &HeaderMap) -> Result<Vec<String>, RpcError> {
    if !multitenancy {
        return Ok(vec!["anonymous".to_string()]);
    }
    let raw = headers
        .get("x-scope-orgid")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| RpcError::new(Code::Unauthenticated, "no org id"))?;
    let mut out: Vec<String> = Vec::new();
    for t in raw.split('|') {
        validate_tenant(t)?;
        out.push(t.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The tenant of a write, which must name exactly one.
pub fn write_tenant(multitenancy: bool, headers: &HeaderMap) -> Result<String, RpcError> {
    let mut t = tenants(multitenancy, headers)?;
    if t.len() != 1 {
        return Err(RpcError::invalid("multiple org ids are not allowed on writes"));
    }
    Ok(t.remove(0))
}

fn validate_tenant(t: &str) -> Result<(), RpcError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c);
    if t.is_empty() || t.len() > 150 || t == "." || t == ".." || !t.chars().all(ok_char) {
        return Err(RpcError::new(Code::Unauthenticated, format!("tenant ID {t:?} is not valid")));
    }
    Ok(())
}
