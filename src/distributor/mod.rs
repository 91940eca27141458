//! The distributor: validates a push, normalises its labels, and hands each series group to
//! the core that owns it (by the core-aware ring), acknowledging once every owner applied it.
pub mod folded;
pub mod gofix;
pub mod legacy;
pub mod multipart;
pub mod pprof;
pub mod push;
pub mod wirecost;

use crate::config::Limits;
use crate::server::metrics;
use crate::server::rpc::{Code, RpcError};
use crate::server::Core;
use kiln_shards::labels::{self, Labels};
use kiln_shards::profile::{Profile, SampleGroup};
use kiln_shards::shard::{IngestError, IngestMode, Msg};
use std::rc::Rc;
use std::sync::Arc;

/// Labels a client may not set: the server derives them per sample type, or they are
/// write-path hints that are never stored.
const SERVER_LABELS: &[&str] = &[
    labels::PROFILE_TYPE,
    labels::TYPE,
    labels::UNIT,
    labels::PERIOD_TYPE,
    labels::PERIOD_UNIT,
    labels::SERVICE_NAME_PRIVATE,
    labels::DELTA,
    "__otel__",
];

/// Normalised labels of a push series: reserved labels dropped, `service_name` defaulted,
/// Pyroscope's default relabelling (`godeltaprof_X` → `X`) applied.
pub fn normalize_series_labels(mut l: Labels) -> Labels {
    for name in SERVER_LABELS {
        l.remove(name);
    }
    if l.get(labels::SERVICE_NAME).is_none() {
        l.set(labels::SERVICE_NAME, "unknown_service");
    }
    if let Some(stripped) = l.get(labels::NAME).and_then(|n| n.strip_prefix("godeltaprof_")).map(str::to_string) {
        l.set(labels::NAME, stripped);
    }
    l
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Pyroscope's series label validation (counts, lengths, names, required labels).
pub fn validate_labels(l: &Labels, limits: &Limits) -> Result<(), RpcError> {
    let name = l.get(labels::NAME).unwrap_or("");
    if name.is_empty() || !is_metric_name(name) {
        return Err(RpcError::invalid(format!("invalid labels {l}: invalid metric name {name:?}")));
    }
    if l.get(labels::SERVICE_NAME) == Some("") {
        return Err(RpcError::invalid(format!("invalid labels {l}: service_name must not be empty")));
    }
    if limits.max_label_names_per_series > 0 && l.len() > limits.max_label_names_per_series {
        return Err(RpcError::invalid(format!(
            "profile series {l} has {} label names; limit {}",
            l.len(),
            limits.max_label_names_per_series
        )));
    }
    for (k, v) in l.iter() {
        if k.is_empty() || k.chars().any(char::is_control) {
            return Err(RpcError::invalid(format!("invalid label name {k:?} in series {l}")));
        }
        if limits.max_label_name_length > 0 && k.len() > limits.max_label_name_length {
            return Err(RpcError::invalid(format!("label name too long: {k:?} in series {l}")));
        }
        if limits.max_label_value_length > 0 && v.len() > limits.max_label_value_length {
            return Err(RpcError::invalid(format!("label value too long: {v:?} for label {k:?}")));
        }
    }
    Ok(())
}

/// A validated profile ready to be routed.
pub struct Accepted {
    pub profile: Profile,
    pub groups: Vec<SampleGroup>,
}

/// Builds the series groups of a decoded profile: the push's labels over its sample labels
/// (push labels win), validated; checks and fills the timestamp.
pub fn accept(base: &Labels, decoded: pprof::Decoded, limits: &Limits, now_ns: i64) -> Result<Accepted, RpcError> {
    let mut profile = decoded.profile;
    if profile.time_nanos == 0 {
        profile.time_nanos = now_ns;
    }
    let ts = profile.time_nanos;
    let older = limits.reject_older_than.as_nanos() as i64;
    let newer = limits.reject_newer_than.as_nanos() as i64;
    if (older > 0 && ts < now_ns - older) || (newer > 0 && ts > now_ns + newer) {
        return Err(RpcError::invalid(format!(
            "profile with labels {base} is outside of ingestion window (profile timestamp: {}, the ingestion window starts at {} and ends at {}; see -validation.reject-older-than and -validation.reject-newer-than)",
            fmt_ns(ts),
            if older > 0 { fmt_ns(now_ns - older) } else { "-inf".into() },
            if newer > 0 { fmt_ns(now_ns + newer) } else { "+inf".into() },
        )));
    }
    let mut groups = Vec::with_capacity(decoded.groups.len());
    for (sample_labels, samples) in decoded.groups {
        let mut l = sample_labels;
        for (k, v) in base.iter() {
            l.set(k, v);
        }
        for name in SERVER_LABELS {
            l.remove(name);
        }
        validate_labels(&l, limits)?;
        groups.push(SampleGroup { labels: l, samples });
    }
    Ok(Accepted { profile, groups })
}

fn fmt_ns(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // civil from days (inverse of days_from_civil)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Applies the ingestion rate limit to `bytes` of uncompressed payload.
pub fn rate_limit(core: &Core, tenant: &str, bytes: usize, now_ns: i64) -> Result<(), RpcError> {
    let l = core.cfg().limits_for(tenant);
    if !core.limiter.borrow_mut().allow(tenant, l.ingestion_rate_mb, l.ingestion_burst_size_mb, bytes, now_ns) {
        return Err(RpcError::new(
            Code::ResourceExhausted,
            format!(
                "push rate limit ({} MiB/s, burst {} MiB) exceeded while adding {bytes} bytes for tenant {tenant}",
                l.ingestion_rate_mb, l.ingestion_burst_size_mb
            ),
        ));
    }
    Ok(())
}

/// A fresh push key: never repeated within a process (a process-wide counter), and apart
/// from every other process's keys (a per-process start drawn from the clock and pid, mixed
/// by xxh3: two runs' ranges of keys overlap with odds of about keys² / 2⁶⁴).
fn push_key() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        xxhash_rust::xxh3::xxh3_64(&[now.to_le_bytes().as_slice(), &std::process::id().to_le_bytes()].concat())
    });
    start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A push sent in parts: unless committed, its parts are taken out again, also when the
/// request is dropped midway (the client went away): what a client was not told is stored
/// is never kept half. Once decided, the outcome reaches every core even if the request is
/// dropped while it is being sent.
struct PartedPush {
    mesh: kiln_shards::runtime::Mesh,
    key: u64,
    /// Cores holding a part that have not been told the outcome yet.
    cores: Vec<usize>,
    /// The outcome, once decided.
    commit: Option<bool>,
}

impl PartedPush {
    /// Sends the outcome to every core that holds a part; an abort waits until each has
    /// taken its part out, so a refusal is never followed by a query that sees it.
    async fn settle(mut self, commit: bool) {
        self.commit = Some(commit);
        let mut waits = Vec::new();
        while let Some(&c) = self.cores.last() {
            let (tx, rx) = flume::bounded(1);
            let reply = (!commit).then_some(tx);
            let sent = self.mesh.send(c, Msg::Settle { key: self.key, commit, reply }).await.is_ok();
            self.cores.pop();
            if sent && !commit {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.recv_async().await;
        }
    }
}

impl Drop for PartedPush {
    fn drop(&mut self) {
        if self.cores.is_empty() {
            return;
        }
        let (mesh, key, cores) = (self.mesh.clone(), self.key, std::mem::take(&mut self.cores));
        let commit = self.commit.unwrap_or(false);
        monoio::spawn(async move {
            for c in cores {
                let _ = mesh.send(c, Msg::Settle { key, commit, reply: None }).await;
            }
        });
    }
}

/// Sends every group to its owning core and waits until each has applied its part. All or
/// nothing: a push refused by any owner (a full head, the series limit, a failed WAL write)
/// is taken out of every other owner before the refusal is answered.
pub async fn distribute(core: &Rc<Core>, tenant: &str, batch: Vec<Accepted>) -> Result<(), RpcError> {
    let mesh = &core.mesh;
    let tenant: Arc<str> = Arc::from(tenant);
    let limits = core.cfg().limits_for(&tenant);
    let max_series = series_limit_per_core(limits, mesh.cores());
    let mut messages: Vec<(usize, Arc<Profile>, Vec<SampleGroup>)> = Vec::new();
    let mut profiles = 0u64;
    for acc in batch {
        let profile = Arc::new(acc.profile);
        let mut per_core: Vec<Vec<SampleGroup>> = vec![Vec::new(); mesh.cores()];
        for g in acc.groups {
            // All sample types of a group share one owner, so its stacks are interned once.
            let owner = mesh.ring.owner(g.labels.fingerprint(&tenant)).core as usize;
            per_core[owner].push(g);
        }
        for (c, groups) in per_core.into_iter().enumerate() {
            if !groups.is_empty() {
                messages.push((c, profile.clone(), groups));
            }
        }
        profiles += 1;
    }
    let key = push_key();
    let whole = messages.len() == 1;
    let mut cores: Vec<usize> = messages.iter().map(|m| m.0).collect();
    cores.sort_unstable();
    cores.dedup();
    let parted = PartedPush { mesh: mesh.clone(), key, cores: if whole { Vec::new() } else { cores }, commit: None };
    let mode = if whole { IngestMode::Whole(key) } else { IngestMode::Part(key) };
    let mut waits = Vec::with_capacity(messages.len());
    for (c, profile, groups) in messages {
        let (tx, rx) = flume::bounded(1);
        let msg = Msg::Ingest { tenant: tenant.clone(), profile, groups, reply: tx, mode, max_series };
        if let Err(e) = mesh.send(c, msg).await {
            parted.settle(false).await;
            return Err(RpcError::new(Code::Unavailable, e.to_string()));
        }
        waits.push(rx);
    }
    let mut first_err = None;
    for rx in waits {
        let res = match rx.recv_async().await {
            Err(_) => Err(RpcError::new(Code::Unavailable, "a core stopped while applying a push")),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e @ (IngestError::HeadFull { .. } | IngestError::SeriesLimit { .. }))) => {
                Err(RpcError::new(Code::ResourceExhausted, e.to_string()))
            }
            Ok(Err(e @ IngestError::Wal(_))) => {
                Err(RpcError::new(Code::Unavailable, format!("the push could not be made durable: {e}")))
            }
        };
        if let (Err(e), None) = (res, &first_err) {
            first_err = Some(e);
        }
    }
    if let Some(e) = first_err {
        parted.settle(false).await;
        metrics::add(&core.metrics().rejected_profiles, profiles);
        return Err(e);
    }
    parted.settle(true).await;
    metrics::add(&core.metrics().pushed_profiles, profiles);
    Ok(())
}

/// A tenant's series limit on one core: Pyroscope's local limit per ingester and global
/// limit across the cluster, the smaller of the two, spread over the cores the way the ring
/// spreads the tenant's series (evenly, by hash). 0: no limit.
pub fn series_limit_per_core(limits: &Limits, cores: usize) -> usize {
    let limit = match (limits.max_local_series_per_tenant, limits.max_global_series_per_tenant) {
        (0, g) => g,
        (l, 0) => l,
        (l, g) => l.min(g),
    };
    if limit == 0 {
        0
    } else {
        limit.div_ceil(cores.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules() {
        let l =
            normalize_series_labels(Labels::from_pairs([("__name__", "godeltaprof_memory"), ("__delta__", "false")]));
        assert_eq!(l.get("__name__"), Some("memory"));
        assert_eq!(l.get("service_name"), Some("unknown_service"));
        assert_eq!(l.get("__delta__"), None);
        let lim = Limits::default();
        assert!(validate_labels(&l, &lim).is_ok());
        assert!(validate_labels(&Labels::from_pairs([("__name__", "1bad")]), &lim).is_err());
        assert!(validate_labels(&Labels::from_pairs([("__name__", "ok"), ("", "x")]), &lim).is_err());
        assert!(validate_labels(&Labels::from_pairs([("__name__", "ok"), ("k8s.pod.name", "x")]), &lim).is_ok());
        let many: Vec<(String, String)> =
            (0..31).map(|i| (format!("l{i}"), "v".to_string())).chain([("__name__".into(), "x".into())]).collect();
        assert!(validate_labels(&Labels::from_pairs(many), &lim).is_err());
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(fmt_ns(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z");
    }
}
