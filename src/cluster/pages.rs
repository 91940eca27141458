//! The ring and membership pages, as Pyroscope shows them: `/ring` (ingesters),
//! `/distributor/ring`, `/store-gateway/ring`, `/compactor/ring` list each member's ID, zone, state, address,
//! last heartbeat, tokens and share of the ring, with a Forget button; `/memberlist` lists
//! what gossip knows. Plain HTML from one snapshot; every member-supplied string is escaped.
use kiln_shards::ring::member::{Components, InstanceDesc};
use kiln_shards::ring::snapshot::Snapshot;
use kiln_shards::ring::Ring;
use std::fmt::Write;

/// Which ring a page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Ingester,
    Distributor,
    StoreGateway,
    Compactor,
}

impl Which {
    fn title(self) -> &'static str {
        match self {
            Which::Ingester => "Ingester ring",
            Which::Distributor => "Distributor ring",
            Which::StoreGateway => "Store-gateway ring",
            Which::Compactor => "Compactor ring",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Which::Ingester => Components::INGESTER,
            Which::Distributor => Components::DISTRIBUTOR,
            Which::StoreGateway => Components::STORE_GATEWAY,
            Which::Compactor => Components::COMPACTOR,
        }
    }

    /// The ring whose tokens the page shows (the distributor ring has none: it only counts
    /// healthy distributors).
    fn ring(self, snap: &Snapshot) -> Option<&Ring> {
        match self {
            Which::Ingester => Some(snap.ingester_ring()),
            Which::StoreGateway => Some(snap.store_gateway_ring()),
            Which::Compactor => Some(snap.compactor_ring()),
            Which::Distributor => None,
        }
    }
}

/// HTML-escapes `s`.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A ring page of `snap` at `now_ms`, with `tokens_per_core`; each member's ownership is the
/// share of keys it is one of `rf` owners of (1 for the ingester ring, whose replica sets
/// the page leaves out, as Pyroscope's does; the store-gateway ring's replication factor
/// for its blocks); `note` (already HTML) is shown above the table (e.g. "forgetting X").
pub fn ring_page(
    which: Which,
    snap: &Snapshot,
    now_ms: u64,
    heartbeat: &dyn Fn(&InstanceDesc) -> u64,
    tokens_per_core: u32,
    rf: usize,
    note: &str,
) -> String {
    let mut share = vec![0f64; snap.instances().len()];
    let ring = which.ring(snap);
    if let Some(r) = ring {
        for (m, s) in r.ownership_rf(rf) {
            if let Some(x) = share.get_mut(m as usize) {
                *x += s;
            }
        }
    }
    let title = which.title();
    let mut out = format!(
        "<!doctype html><meta charset=utf-8><title>kiln: {title}</title><h1>{title}</h1>{note}\
         <table border=1 cellpadding=4><tr><th>Instance ID</th><th>Availability zone</th><th>State</th>\
         <th>Address</th><th>Last heartbeat</th><th>Tokens</th><th>Ownership</th><th>Actions</th></tr>"
    );
    for (i, d) in snap.instances().iter().enumerate() {
        if !d.components.has(which.bit()) {
            continue;
        }
        let health = if snap.healthy(i as u32) {
            d.state.as_str().to_string()
        } else {
            format!("{} (UNHEALTHY)", d.state.as_str())
        };
        let tokens = if ring.is_some() && d.state.holds_tokens() { d.cores * tokens_per_core } else { 0 };
        let _ = write!(
            out,
            "<tr><td>{id}</td><td>{zone}</td><td>{health}</td><td>{addr}</td><td>{age}</td><td>{tokens}</td>\
             <td>{pct:.1}%</td><td><form method=post><input type=hidden name=forget value=\"{id}\">\
             <button type=submit>Forget</button></form></td></tr>",
            id = esc(&d.id),
            zone = esc(&d.zone),
            addr = esc(&d.addr),
            age = age(now_ms, heartbeat(d)),
            pct = share[i] * 100.0,
        );
    }
    out.push_str("</table>");
    out
}

/// The members gossip knows, each with its components.
pub fn memberlist_page(
    snap: &Snapshot,
    now_ms: u64,
    heartbeat: &dyn Fn(&InstanceDesc) -> u64,
    self_id: &str,
) -> String {
    let mut out = String::from(
        "<!doctype html><meta charset=utf-8><title>kiln: memberlist</title><h1>Memberlist</h1>\
         <table border=1 cellpadding=4><tr><th>Name</th><th>Address</th><th>Components</th><th>State</th>\
         <th>Cores</th><th>Last heartbeat</th></tr>",
    );
    for (i, d) in snap.instances().iter().enumerate() {
        let me = if d.id == self_id { " (this instance)" } else { "" };
        let health = if snap.healthy(i as u32) { "" } else { " (UNHEALTHY)" };
        let _ = write!(
            out,
            "<tr><td>{}{me}</td><td>{}</td><td>{}</td><td>{}{health}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.id),
            esc(&d.addr),
            d.components,
            d.state.as_str(),
            d.cores,
            age(now_ms, heartbeat(d))
        );
    }
    out.push_str("</table>");
    out
}

fn age(now_ms: u64, heartbeat_ms: u64) -> String {
    format!("{:.1}s ago", now_ms.saturating_sub(heartbeat_ms) as f64 / 1000.0)
}

/// The ID a Forget form posts (`forget=<id>`, form-encoded).
pub fn forget_id(body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    crate::service::request::form_urlencoded(body)
        .into_iter()
        .find(|(k, v)| k == "forget" && !v.is_empty())
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forget_forms_decode_and_html_is_escaped() {
        assert_eq!(forget_id(b"forget=host-4041").as_deref(), Some("host-4041"));
        assert_eq!(forget_id(b"x=1&forget=a%2Db+c").as_deref(), Some("a-b c"));
        assert_eq!(forget_id(b"forget=%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(forget_id(b"forget="), None);
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
