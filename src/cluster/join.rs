//! `-memberlist.join` addresses: `host:port` and `dns+host:port` (every address the name
//! resolves to; chitchat resolves these itself and again as they change), and
//! `dnssrv+_service._proto.name` (the SRV records' targets and ports, e.g. a Kubernetes
//! headless service's pods), resolved here with a small DNS client of its own and
//! resolved again every minute.
use std::net::SocketAddr;
use std::time::Duration;

/// Memberlist's default port, for a join address that names none.
pub const DEFAULT_PORT: u16 = 7946;

/// The seeds chitchat resolves itself: every join address but the `dnssrv+` ones.
pub fn seeds(joins: &[String]) -> Vec<String> {
    joins
        .iter()
        .filter(|j| !j.starts_with("dnssrv+"))
        .map(|j| {
            let j = j.strip_prefix("dns+").unwrap_or(j);
            if has_port(j) {
                j.to_string()
            } else {
                format!("{j}:{DEFAULT_PORT}")
            }
        })
        .collect()
}

fn has_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']')),
        None => false,
    }
}

/// Every address behind the `dnssrv+` joins; failures are logged and skipped.
pub async fn resolve_srv_all(joins: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for j in joins {
        let name = j.trim_start_matches("dnssrv+");
        match resolve_srv(name).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => tracing::warn!(join = %j, error = %e, "resolving a dnssrv+ join failed"),
        }
    }
    out
}

async fn resolve_srv(name: &str) -> Result<Vec<SocketAddr>, String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").map_err(|e| format!("/etc/resolv.conf: {e}"))?;
    let server = nameserver(&conf).ok_or("no nameserver in /etc/resolv.conf")?;
    let sock = tokio::net::UdpSocket::bind(if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
        .await
        .map_err(|e| e.to_string())?;
    let id = (super::now_ms() & 0xffff) as u16;
    sock.send_to(&srv_query(id, name)?, server).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .map_err(|_| format!("no answer from {server} within 5s"))?
        .map_err(|e| e.to_string())?;
    let targets = parse_srv_answer(&buf[..n], id)?;
    let mut out = Vec::new();
    for (host, port) in targets {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => tracing::warn!(%host, error = %e, "resolving an SRV target failed"),
        }
    }
    Ok(out)
}

/// The first `nameserver` of a resolv.conf.
fn nameserver(conf: &str) -> Option<SocketAddr> {
    conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next())
            .flatten()?
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// A DNS query for the SRV records of `name` (RFC 1035 §4, type 33 from RFC 2782).
fn srv_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // recursion desired; one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("{name:?} is not a DNS name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 33, 0, 1]); // SRV, IN
    Ok(q)
}

/// The (target, port) of every SRV record in a DNS answer to query `id`. Public for the
/// `cluster_inputs` fuzz target: the answer is untrusted bytes off the network.
pub fn parse_srv_answer(b: &[u8], id: u16) -> Result<Vec<(String, u16)>, String> {
    let short = || "a DNS answer cut short".to_string();
    let u16_at = |i: usize| b.get(i..i + 2).map(|s| u16::from_be_bytes([s[0], s[1]])).ok_or_else(short);
    if u16_at(0)? != id {
        return Err("a DNS answer to another query".into());
    }
    let rcode = b.get(3).ok_or_else(short)? & 0x0f;
    if rcode != 0 {
        return Err(format!("DNS error code {rcode}"));
    }
    let (qd, an) = (u16_at(4)?, u16_at(6)?);
    let mut i = 12;
    for _ in 0..qd {
        i = read_name(b, i)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let (_, next) = read_name(b, i)?;
        let (ty, len) = (u16_at(next)?, u16_at(next + 8)? as usize);
        let data = next + 10;
        if b.len() < data + len {
            return Err(short());
        }
        if ty == 33 && len >= 7 {
            let port = u16_at(data + 4)?;
            out.push((read_name(b, data + 6)?.0, port));
        }
        i = data + len;
    }
    Ok(out)
}

/// A (possibly compressed) name at `i`: the name and where the record goes on after it.
/// Pointers may only point backwards, so a hostile answer cannot loop.
fn read_name(b: &[u8], mut i: usize) -> Result<(String, usize), String> {
    let mut name = String::new();
    let mut end = None;
    let mut limit = i;
    loop {
        let len = *b.get(i).ok_or("a DNS name cut short")? as usize;
        if len == 0 {
            return Ok((name, end.unwrap_or(i + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *b.get(i + 1).ok_or("a DNS name cut short")? as usize;
            if ptr >= limit {
                return Err("a DNS name pointer that does not point backwards".into());
            }
            end.get_or_insert(i + 2);
            limit = ptr;
            i = ptr;
            continue;
        }
        let label = b.get(i + 1..i + 1 + len).ok_or("a DNS name cut short")?;
        // RFC 1035 §2.3.4: a name is at most 255 bytes. Without the limit, many records
        // whose names point back at one long name would each copy it: quadratic.
        if name.len() + 1 + len > 255 {
            return Err("a DNS name over 255 bytes".into());
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label));
        i += 1 + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_strip_dns_and_add_the_default_port() {
        let j: Vec<String> =
            ["127.0.0.1:7001", "dns+kiln-gossip:7946", "kiln-1", "dnssrv+_gossip._tcp.kiln", "[::1]:8"]
                .into_iter()
                .map(String::from)
                .collect();
        assert_eq!(seeds(&j), ["127.0.0.1:7001", "kiln-gossip:7946", "kiln-1:7946", "[::1]:8"]);
    }

    #[test]
    fn srv_answers_parse_with_compression_and_hostile_ones_fail() {
        let q = srv_query(7, "_gossip._tcp.kiln").unwrap();
        // The answer: the question again, then one SRV record whose name points at it.
        let mut a = q.clone();
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 1; // one answer
        a.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 30]);
        let target = b"\x05kiln0\x04kiln\x00";
        a.extend_from_slice(&((6 + target.len()) as u16).to_be_bytes());
        a.extend_from_slice(&[0, 0, 0, 0, 0x1f, 0x0a]);
        a.extend_from_slice(target);
        assert_eq!(parse_srv_answer(&a, 7).unwrap(), [("kiln0.kiln".to_string(), 7946)]);
        assert!(parse_srv_answer(&a, 8).is_err());
        assert!(parse_srv_answer(&a[..a.len() - 3], 7).is_err());
        // A pointer to itself must not loop.
        let mut looped = a.clone();
        let at = q.len();
        looped[at] = 0xc0;
        looped[at + 1] = at as u8;
        assert!(parse_srv_answer(&looped, 7).is_err());
        // A target name over 255 bytes (five labels of 63) is refused, not copied.
        let long = [[&[63u8][..], &[b'a'; 63][..]].concat().repeat(5), vec![0]].concat();
        let mut a_long = a[..a.len() - target.len()].to_vec();
        let rdlen = a_long.len() - 8;
        a_long[rdlen..rdlen + 2].copy_from_slice(&((6 + long.len()) as u16).to_be_bytes());
        a_long.extend_from_slice(&long);
        assert!(parse_srv_answer(&a_long, 7).unwrap_err().contains("255"));
        assert_eq!(nameserver("# x\nnameserver 10.0.0.2\n"), Some("10.0.0.2:53".parse().unwrap()));
    }
}
