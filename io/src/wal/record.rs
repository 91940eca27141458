//! WAL record framing: `[len: u32 LE][crc: u32 LE][payload]`, where crc is CRC-32C over the
//! length bytes and the payload, so a torn length is caught as surely as a torn payload.
//!
//! Reading distinguishes a torn tail (the last write of a crashed process: dropped and
//! reported) from corruption in the middle (a valid record follows the bad bytes: an error
//! naming the offset, never a silent skip of acknowledged data).
use crate::codec::Reader;

pub const HEADER: usize = 8;
/// No record is larger than this; a larger length field is damage.
pub const MAX_RECORD: usize = 1 << 30;

fn checksum(len: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload)
}

pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    assert!(payload.len() <= MAX_RECORD, "WAL record too large");
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A whole record at `at`, if one is there.
fn record_at(data: &[u8], at: usize) -> Option<&[u8]> {
    let mut r = Reader::new(data.get(at..)?);
    let len = r.u32_le().ok()?;
    let crc = r.u32_le().ok()?;
    if len as usize > MAX_RECORD {
        return None;
    }
    let payload = r.take(len as usize).ok()?;
    (checksum(len, payload) == crc).then_some(payload)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// Every byte belonged to a valid record.
    Clean,
    /// The bytes from `offset` to the end are an incomplete or damaged last record.
    Torn { offset: usize, dropped: usize },
    /// Damage at `offset` with a valid record after it.
    Corrupt { offset: usize },
}

/// Splits a segment into its records.
pub fn decode_all(data: &[u8]) -> (Vec<&[u8]>, Tail) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        match record_at(data, at) {
            Some(p) => {
                out.push(p);
                at += HEADER + p.len();
            }
            None => {
                // Torn tail or damage in the middle: look for any valid record further on.
                let later = (at + 1..data.len()).any(|i| record_at(data, i).is_some());
                if later {
                    return (out, Tail::Corrupt { offset: at });
                }
                return (out, Tail::Torn { offset: at, dropped: data.len() - at });
            }
        }
    }
    (out, Tail::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(payloads: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(p, &mut out);
        }
        out
    }

    proptest! {
        #[test]
        fn roundtrip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..20)) {
            let seg = segment(&payloads);
            let (got, tail) = decode_all(&seg);
            prop_assert_eq!(tail, Tail::Clean);
            prop_assert_eq!(got, payloads.iter().map(|p| p.as_slice()).collect::<Vec<_>>());
        }

        /// Cutting a segment anywhere keeps every complete record before the cut.
        #[test]
        fn torn_tail_keeps_the_prefix(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 1..10), cut in any::<prop::sample::Index>()) {
            let seg = segment(&payloads);
            let cut = cut.index(seg.len());
            let (got, tail) = decode_all(&seg[..cut]);
            let mut ends = Vec::new();
            let mut at = 0;
            for p in &payloads { at += HEADER + p.len(); ends.push(at); }
            let complete = ends.iter().filter(|e| **e <= cut).count();
            prop_assert_eq!(got.len(), complete);
            if cut == ends.get(complete.wrapping_sub(1)).copied().unwrap_or(0) {
                prop_assert_eq!(tail, Tail::Clean);
            } else {
                prop_assert!(matches!(tail, Tail::Torn { .. }), "{:?}", tail);
            }
        }

        /// A flipped byte is never accepted silently: either the records before it come
        /// back with a torn tail (damage in the last record) or decoding reports corruption.
        #[test]
        fn flipped_byte_is_detected(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..100), 2..8), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut seg = segment(&payloads);
            let i = pos.index(seg.len());
            seg[i] ^= 1 << bit;
            let (got, tail) = decode_all(&seg);
            let last_start = seg.len() - HEADER - payloads.last().unwrap().len();
            prop_assert_ne!(&tail, &Tail::Clean);
            if i >= last_start {
                prop_assert_eq!(got.len(), payloads.len() - 1);
            } else {
                prop_assert!(matches!(tail, Tail::Corrupt { .. }), "{:?} at {} of {}", tail, i, seg.len());
            }
        }
    }
}
