//! What decoding a protobuf message will cost in memory, found by walking its bytes without
//! decoding them, so that a message can be refused before it is decoded.
//!
//! prost turns every element of a repeated message field into a struct in a `Vec`: an empty
//! element is 2 bytes on the wire and 40 to 150 bytes decoded (its struct, up to doubled by
//! the `Vec`'s growth), so a message made of empty elements decodes to 20 to 75 times its
//! size. [`cost`] adds up those costs from a table of the message's [`Shape`], and so bounds
//! what prost (or kiln's own readers, which build records of the same kind) will allocate.
//!
//! The walk never allocates and reads each byte a bounded number of times (nesting is as
//! deep as the shape, three levels for pprof and push, never past `MAX_DEPTH`). It stops at
//! the first byte prost would reject: what it counted up to there bounds what prost
//! allocates before failing there.

/// A message type as prost lays it out: the size of its struct and, for each field that
/// allocates, what one occurrence costs.
pub struct Shape {
    pub size: usize,
    pub fields: &'static [(u32, Field)],
}

#[derive(Clone, Copy)]
pub enum Field {
    /// A repeated message: a struct in a `Vec`, and what it holds.
    Messages(&'static Shape),
    /// A singular message, held inline by its parent: what it holds.
    Message(&'static Shape),
    /// A repeated string or bytes: a header in a `Vec`, and its bytes.
    Strings,
    /// A singular string or bytes: its bytes.
    Str,
    /// A repeated scalar, packed or not: 8 bytes a value in a `Vec`.
    Scalars,
}

/// A `Vec` may hold up to twice what it has grown to.
const GROWTH: usize = 2;
/// The header of a `String`, `Vec<u8>` or `Bytes`.
const HEADER: usize = 32;

/// Heap bytes of a string of `len` bytes: allocators round up to 8 and more.
fn heap(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.div_ceil(8) * 8 + 8
    }
}

/// What one element of a repeated message field of `shape` costs by itself.
#[inline]
pub fn element(shape: &Shape) -> usize {
    shape.size * GROWTH
}

/// What one element of a repeated string or bytes field costs, `len` bytes long.
#[inline]
pub fn string_element(len: usize) -> usize {
    HEADER * GROWTH + heap(len)
}

/// What one value of a repeated scalar field costs.
pub const SCALAR: usize = 8 * GROWTH;

/// An upper bound of the bytes that decoding `bytes` as a `shape` allocates, as far as
/// prost would read it. The fast pprof reader adds up the same sum as it reads (tests
/// compare the two).
pub fn cost(bytes: &[u8], shape: &Shape) -> usize {
    let mut total = 0;
    walk(bytes, shape, &mut total, 0);
    total
}

/// How deep prost decodes nested messages before it fails (its default recursion limit):
/// the walk stops there too, so a recursive shape (OTLP's attribute values) never takes
/// more stack than that.
const MAX_DEPTH: u32 = 100;

/// An upper bound of what decoding the JSON text `bytes` into messages costs, when no
/// message struct is larger than `largest`: each message is an object (one `{`), each
/// string two quotes, and no string or number holds more bytes than the text.
pub fn json_cost(bytes: &[u8], largest: usize) -> usize {
    let objects = memchr::memchr_iter(b'{', bytes).count();
    let strings = memchr::memchr_iter(b'"', bytes).count() / 2;
    objects * largest * GROWTH + strings * (HEADER * GROWTH + 16) + bytes.len()
}

/// The varint at `b[*pos..]`, `pos` moved past it. Most are one byte (keys, lengths of
/// small records, ids), read inline.
#[inline(always)]
fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let x = *b.get(*pos)?;
    if x < 0x80 {
        *pos += 1;
        return Some(u64::from(x));
    }
    varint_long(b, pos)
}

#[inline(never)]
fn varint_long(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let x = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(x & 0x7f) << (7 * i);
        if x < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Adds the cost of the message in `b` to `total`; `None` where prost would stop.
fn walk(b: &[u8], shape: &Shape, total: &mut usize, depth: u32) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
        let kind = shape.fields.iter().find(|(n, _)| *n == field).map(|(_, k)| *k);
        match (wire, kind) {
            (0, Some(Field::Scalars)) => {
                varint(b, &mut pos)?;
                *total += SCALAR;
            }
            (2, Some(kind)) => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                let payload = b.get(pos..pos.checked_add(len)?)?;
                pos += len;
                match kind {
                    Field::Messages(s) => {
                        *total += element(s);
                        walk(payload, s, total, depth + 1)?;
                    }
                    Field::Message(s) => walk(payload, s, total, depth + 1)?,
                    Field::Strings => *total += string_element(len),
                    Field::Str => *total += heap(len),
                    // Packed: each value ends in one byte below 0x80.
                    Field::Scalars => *total += SCALAR * payload.iter().filter(|&&x| x < 0x80).count(),
                }
            }
            // A known field of another wire type is an error to prost; unknown fields are
            // skipped without allocating.
            (_, Some(_)) => return None,
            (0, None) => drop(varint(b, &mut pos)?),
            (1, None) => pos = pos.checked_add(8).filter(|&p| p <= b.len())?,
            (2, None) => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                pos = pos.checked_add(len).filter(|&p| p <= b.len())?;
            }
            (5, None) => pos = pos.checked_add(4).filter(|&p| p <= b.len())?,
            // Groups hold no allocation either, but skipping them needs prost's rules: stop
            // counting, which only matters if prost does not stop there too.
            _ => return None,
        }
    }
    Some(())
}

/// Shapes of the messages kiln decodes from clients.
pub mod shapes {
    use super::{Field, Shape};
    use kiln_proto::google::v1 as pb;
    use kiln_proto::push::v1 as push;
    use kiln_proto::types::v1 as types;
    use std::mem::size_of;

    const PAIR: &[(u32, Field)] = &[(1, Field::Str), (2, Field::Str)];

    pub static LABEL_PAIR: Shape = Shape { size: size_of::<types::LabelPair>(), fields: PAIR };
    pub static RAW_SAMPLE: Shape = Shape { size: size_of::<push::RawSample>(), fields: PAIR };
    pub static ANNOTATION: Shape = Shape { size: size_of::<types::ProfileAnnotation>(), fields: PAIR };
    pub static RAW_PROFILE_SERIES: Shape = Shape {
        size: size_of::<push::RawProfileSeries>(),
        fields: &[
            (1, Field::Messages(&LABEL_PAIR)),
            (2, Field::Messages(&RAW_SAMPLE)),
            (3, Field::Messages(&ANNOTATION)),
        ],
    };
    /// `push.v1.PushRequest`.
    pub static PUSH_REQUEST: Shape =
        Shape { size: size_of::<push::PushRequest>(), fields: &[(1, Field::Messages(&RAW_PROFILE_SERIES))] };

    pub static VALUE_TYPE: Shape = Shape { size: size_of::<pb::ValueType>(), fields: &[] };
    pub static LABEL: Shape = Shape { size: size_of::<pb::Label>(), fields: &[] };
    pub static SAMPLE: Shape = Shape {
        size: size_of::<pb::Sample>(),
        fields: &[(1, Field::Scalars), (2, Field::Scalars), (3, Field::Messages(&LABEL))],
    };
    pub static MAPPING: Shape = Shape { size: size_of::<pb::Mapping>(), fields: &[] };
    pub static LINE: Shape = Shape { size: size_of::<pb::Line>(), fields: &[] };
    pub static LOCATION: Shape = Shape { size: size_of::<pb::Location>(), fields: &[(4, Field::Messages(&LINE))] };
    pub static FUNCTION: Shape = Shape { size: size_of::<pb::Function>(), fields: &[] };
    /// A pprof `Profile` as kiln decodes it (`kiln.v1.ProfileInput`).
    pub static PROFILE: Shape = Shape {
        size: size_of::<kiln_proto::kiln::v1::ProfileInput>(),
        fields: &[
            (1, Field::Messages(&VALUE_TYPE)),
            (2, Field::Messages(&SAMPLE)),
            (3, Field::Messages(&MAPPING)),
            (4, Field::Messages(&LOCATION)),
            (5, Field::Messages(&FUNCTION)),
            (6, Field::Strings),
            (11, Field::Message(&VALUE_TYPE)),
            (13, Field::Scalars),
        ],
    };
}

#[cfg(test)]
mod tests {
    use super::shapes::{PROFILE, PUSH_REQUEST};
    use super::*;
    use kiln_proto::push::v1 as push;
    use prost::Message;

    /// Live heap bytes of a decoded value, counted the way `cost` counts them.
    fn push_request(series: usize, labels: usize) -> push::PushRequest {
        push::PushRequest {
            series: (0..series)
                .map(|_| push::RawProfileSeries {
                    labels: (0..labels).map(|_| Default::default()).collect(),
                    samples: vec![Default::default()],
                    annotations: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn empty_elements_cost_their_structs() {
        let bytes = push_request(1000, 3).encode_to_vec();
        let c = cost(&bytes, &PUSH_REQUEST);
        let structs = 1000 * (RAW_PROFILE_SERIES_SIZE + 3 * LABEL_SIZE + RAW_SAMPLE_SIZE);
        assert!(c >= structs, "{c} < {structs}");
        assert!(c <= GROWTH * structs + 64, "{c}");
        // Some 10 bytes a series on the wire, well over 100 decoded.
        assert!(c > 10 * bytes.len(), "{c} vs {}", bytes.len());
    }

    const RAW_PROFILE_SERIES_SIZE: usize = std::mem::size_of::<push::RawProfileSeries>();
    const LABEL_SIZE: usize = std::mem::size_of::<kiln_proto::types::v1::LabelPair>();
    const RAW_SAMPLE_SIZE: usize = std::mem::size_of::<push::RawSample>();

    #[test]
    fn strings_cost_their_bytes() {
        let mut req = push_request(1, 1);
        req.series[0].labels[0].value = "v".repeat(10_000);
        req.series[0].samples[0].raw_profile = vec![1u8; 50_000].into();
        let c = cost(&req.encode_to_vec(), &PUSH_REQUEST);
        assert!((60_000..61_000).contains(&c), "{c}");
    }

    #[test]
    fn stops_where_prost_stops() {
        let bytes = push_request(100, 0).encode_to_vec();
        let full = cost(&bytes, &PUSH_REQUEST);
        // Cut in the middle of a series: prost fails there, having decoded what came before.
        let cut = cost(&bytes[..bytes.len() / 2 + 1], &PUSH_REQUEST);
        assert!(cut < full && cut > full / 3, "{cut} vs {full}");
        assert!(push::PushRequest::decode(&bytes[..bytes.len() / 2 + 1]).is_err());
        // A known message field sent as a varint: prost refuses it, nothing is counted past it.
        assert_eq!(cost(&[0x08, 0x01], &PUSH_REQUEST), 0);
        // Unknown fields of every wire type cost nothing.
        assert_eq!(
            cost(&[0x10, 0x01, 0x19, 0, 0, 0, 0, 0, 0, 0, 0, 0x22, 0x01, 0x00, 0x2d, 0, 0, 0, 0], &PUSH_REQUEST),
            0
        );
    }

    #[test]
    fn json_costs_bound_what_serde_makes() {
        let empty = format!("{{\"series\":[{}{{}}]}}", "{},".repeat(10_000));
        let c = json_cost(empty.as_bytes(), RAW_PROFILE_SERIES_SIZE);
        assert!(c >= 10_001 * RAW_PROFILE_SERIES_SIZE, "{c}");
        let req: push::PushRequest = serde_json::from_str(&empty).unwrap();
        assert_eq!(req.series.len(), 10_001);
        assert!(json_cost(b"{}", 72) < 200);
    }

    #[test]
    fn packed_and_unpacked_scalars() {
        let s = kiln_proto::google::v1::Sample { location_id: vec![1, 2, 300], value: vec![5], label: vec![] };
        let p = kiln_proto::kiln::v1::ProfileInput { sample: vec![s], ..Default::default() };
        let c = cost(&p.encode_to_vec(), &PROFILE);
        assert_eq!(c, GROWTH * std::mem::size_of::<kiln_proto::google::v1::Sample>() + 4 * 8 * GROWTH);
    }
}
