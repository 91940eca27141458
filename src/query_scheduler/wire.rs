//! The messages of the read path's internal RPCs, between query-frontends, query-schedulers
//! and queriers: a job (one part of one query) as the frontend enqueues it and a querier
//! takes it, a cancellation, and a part's result as the querier hands it to the frontend.
//! One varint codec (`kiln_io::codec`); every length is checked against its bound and the
//! bytes left, so a hostile message costs memory in proportion to its size. The job's query
//! itself is `kiln_shards::query::wire`'s encoding, decoded (and checked) by the querier.
use crate::service::{Code, RpcError};
use bytes::Bytes;
use kiln_io::codec::{Reader, Writer};

/// Changes whenever the encoding does; a message of another version is refused.
const VERSION: u8 = 1;

/// The longest address (`host:port`) and queue key (tenants, `|`-joined) a message may carry.
pub const MAX_ADDR_BYTES: usize = 256;
pub const MAX_TENANT_BYTES: usize = 4096;
/// The most query IDs one cancellation names.
pub const MAX_CANCEL_IDS: usize = 65_536;

pub type Res<T> = Result<T, String>;

fn e(err: kiln_io::codec::CodecError) -> String {
    err.to_string()
}

/// One part of one query: what the frontend enqueues and a querier runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Unique per frontend: the frontend matches the result to its waiting query by it.
    pub query_id: u64,
    /// Where the result goes (`host:port` of the frontend's HTTP server).
    pub frontend: String,
    /// The queue the job waits in: its tenants, `|`-joined as in `X-Scope-OrgID`.
    pub tenant: String,
    /// The part's `QueryRequest` (`kiln_shards::query::wire::encode_request`).
    pub request: Bytes,
}

fn bounded_str<'a>(r: &mut Reader<'a>, max: usize, what: &str) -> Res<&'a str> {
    let at = r.position();
    let s = r.str().map_err(e)?;
    if s.len() > max {
        return Err(format!("{what} at byte {at} is {} bytes long, more than {max}", s.len()));
    }
    Ok(s)
}

fn version(r: &mut Reader<'_>) -> Res<()> {
    match r.byte().map_err(e)? {
        VERSION => Ok(()),
        v => Err(format!("read-path message version {v}, this kiln speaks {VERSION}")),
    }
}

fn put_job(w: &mut Writer, j: &Job) {
    w.u(j.query_id);
    w.str(&j.frontend);
    w.str(&j.tenant);
    w.u(j.request.len() as u64);
    w.bytes(&j.request);
}

fn read_job(r: &mut Reader<'_>, b: &Bytes) -> Res<Job> {
    let query_id = r.u().map_err(e)?;
    let frontend = bounded_str(r, MAX_ADDR_BYTES, "the frontend's address")?.to_string();
    let tenant = bounded_str(r, MAX_TENANT_BYTES, "the tenant")?.to_string();
    let n = r.count(1).map_err(e)?;
    let start = r.position();
    r.take(n).map_err(e)?;
    // The query bytes are shared with the message, not copied.
    Ok(Job { query_id, frontend, tenant, request: b.slice(start..start + n) })
}

/// `Enqueue`'s body: the job.
pub fn encode_job(j: &Job) -> Vec<u8> {
    let mut w = Writer::with_capacity(32 + j.frontend.len() + j.tenant.len() + j.request.len());
    w.byte(VERSION);
    put_job(&mut w, j);
    w.0
}

pub fn decode_job(b: &Bytes) -> Res<Job> {
    let mut r = Reader::new(b);
    version(&mut r)?;
    let j = read_job(&mut r, b)?;
    r.finish().map_err(e)?;
    Ok(j)
}

/// `Next`'s answer: a job, or none (no work within the wait; ask again).
pub fn encode_next(j: Option<&Job>) -> Vec<u8> {
    match j {
        Some(j) => {
            let mut w = Writer::with_capacity(33 + j.frontend.len() + j.tenant.len() + j.request.len());
            w.byte(VERSION);
            w.byte(1);
            put_job(&mut w, j);
            w.0
        }
        None => vec![VERSION, 0],
    }
}

pub fn decode_next(b: &Bytes) -> Res<Option<Job>> {
    let mut r = Reader::new(b);
    version(&mut r)?;
    let j = match r.byte().map_err(e)? {
        0 => None,
        1 => Some(read_job(&mut r, b)?),
        t => return Err(format!("unknown answer tag {t}")),
    };
    r.finish().map_err(e)?;
    Ok(j)
}

/// `Next`'s request and `Cancel`'s: who asks (a querier's instance ID, or a frontend's
/// address) and, for `Cancel`, which of its queries.
pub fn encode_who(who: &str, ids: &[u64]) -> Vec<u8> {
    let mut w = Writer::with_capacity(8 + who.len() + ids.len() * 4);
    w.byte(VERSION);
    w.str(who);
    w.u(ids.len() as u64);
    for id in ids {
        w.u(*id);
    }
    w.0
}

pub fn decode_who(b: &[u8]) -> Res<(String, Vec<u64>)> {
    let mut r = Reader::new(b);
    version(&mut r)?;
    let who = bounded_str(&mut r, MAX_ADDR_BYTES, "the caller's name")?.to_string();
    let n = r.count(1).map_err(e)?;
    if n > MAX_CANCEL_IDS {
        return Err(format!("{n} query IDs, more than {MAX_CANCEL_IDS}"));
    }
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(r.u().map_err(e)?);
    }
    r.finish().map_err(e)?;
    Ok((who, ids))
}

/// A part's outcome as the querier sends it to the frontend: its partial results
/// (`kiln_shards::query::wire::encode_results`) or the error the querier answered with.
pub fn encode_result(query_id: u64, r: &Result<Vec<u8>, RpcError>) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + r.as_ref().map_or(64, Vec::len));
    w.byte(VERSION);
    w.u(query_id);
    match r {
        Ok(b) => {
            w.byte(0);
            w.u(b.len() as u64);
            w.bytes(b);
        }
        Err(err) => {
            w.byte(err.code as u8);
            w.str(&err.message);
        }
    }
    w.0
}

/// `(query_id, results bytes or the error)`.
pub fn decode_result(b: &Bytes) -> Res<(u64, Result<Bytes, RpcError>)> {
    let mut r = Reader::new(b);
    version(&mut r)?;
    let id = r.u().map_err(e)?;
    let out = match r.byte().map_err(e)? {
        0 => {
            let n = r.count(1).map_err(e)?;
            let start = r.position();
            r.take(n).map_err(e)?;
            Ok(b.slice(start..start + n))
        }
        c => {
            let code = Code::from_number(c).ok_or_else(|| format!("unknown status code {c}"))?;
            Err(RpcError::new(code, r.str().map_err(e)?.to_string()))
        }
    };
    r.finish().map_err(e)?;
    Ok((id, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job { query_id: 7, frontend: "127.0.0.1:4040".into(), tenant: "a|b".into(), request: Bytes::from_static(b"q") }
    }

    #[test]
    fn messages_round_trip() {
        let j = job();
        assert_eq!(decode_job(&Bytes::from(encode_job(&j))).unwrap(), j);
        assert_eq!(decode_next(&Bytes::from(encode_next(Some(&j)))).unwrap(), Some(j));
        assert_eq!(decode_next(&Bytes::from(encode_next(None))).unwrap(), None);
        assert_eq!(decode_who(&encode_who("q1", &[1, 2, u64::MAX])).unwrap(), ("q1".into(), vec![1, 2, u64::MAX]));
        let ok = decode_result(&Bytes::from(encode_result(3, &Ok(vec![1, 2])))).unwrap();
        assert_eq!((ok.0, ok.1.unwrap().as_ref()), (3, &[1u8, 2][..]));
        let err = RpcError::new(Code::ResourceExhausted, "full");
        let (id, back) = decode_result(&Bytes::from(encode_result(4, &Err(err)))).unwrap();
        let back = back.unwrap_err();
        assert_eq!((id, back.code, back.message.as_str()), (4, Code::ResourceExhausted, "full"));
    }

    #[test]
    fn hostile_messages_are_refused_not_trusted() {
        let b = Bytes::from(encode_job(&job()));
        for cut in 0..b.len() {
            assert!(decode_job(&b.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut long = job();
        long.frontend = "x".repeat(MAX_ADDR_BYTES + 1);
        assert!(decode_job(&Bytes::from(encode_job(&long))).unwrap_err().contains("more than"));
        // A count larger than the bytes left is refused before anything is allocated.
        let mut w = Writer::with_capacity(16);
        w.byte(VERSION);
        w.str("q");
        w.u(1 << 40);
        assert!(decode_who(&w.0).is_err());
        assert!(decode_result(&Bytes::from_static(&[VERSION, 1, 99])).unwrap_err().contains("status code"));
        assert!(decode_next(&Bytes::from_static(&[2, 0])).unwrap_err().contains("version"));
    }
}
