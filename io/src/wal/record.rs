//! WAL record framing: `[len: u32 LE][crc: u32 LE][payload]`, where crc is CRC-32C over the
//! length bytes and the payload, so a torn length is caught as surely as a torn payload.
//!
//! Reading distinguishes a torn tail (the last write of a crashed process: dropped and
//! reported) from corruption in the middle (a valid record follows the bad bytes: an error
//! naming the offset, never a silent skip of acknowledged data). A segment may end in zeros
//! never written over (it was preallocated, see `segment`): no record's header is all zeros
//! (`checksum(0, []) != 0`), so the records end where the zeros begin.
use crate::codec::Reader;

pub const HEADER: usize = 8;
/// No record is larger than this; a larger length field is damage.
pub const MAX_RECORD: usize = 1 << 30;

fn checksum(len: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload)
}

pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    encode_parts(payload, &[], out);
}

/// The record whose payload is `head` then `tail`, without joining them first.
pub fn encode_parts(head: &[u8], tail: &[u8], out: &mut Vec<u8>) {
    let n = head.len() + tail.len();
    assert!(n <= MAX_RECORD, "WAL record too large");
    let len = n as u32;
    let crc = crc32c::crc32c_append(checksum(len, head), tail);
    out.reserve(HEADER + n);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(tail);
}

/// A whole record at `at`, if one is there.
fn record_at(data: &[u8], at: usize) -> Option<&[u8]> {
    let (len, crc) = header_at(data, at)?;
    let payload = data.get(at + HEADER..)?.get(..len as usize)?;
    (checksum(len, payload) == crc).then_some(payload)
}

/// The length and checksum fields at `at`, if a length that fits `MAX_RECORD` is there.
fn header_at(data: &[u8], at: usize) -> Option<(u32, u32)> {
    let mut r = Reader::new(data.get(at..)?);
    let len = r.u32_le().ok()?;
    let crc = r.u32_le().ok()?;
    (len as usize <= MAX_RECORD).then_some((len, crc))
}

/// Whether a whole record starts at `at`, where every byte from `zeros` on is zero: the part
/// of its payload in the zeros is checksummed in O(log n) (`crc32c_combine`), so that the
/// search for a record after damage costs what the bytes before the zeros cost, however
/// long the zeros are (a preallocated segment's tail).
fn record_starts_at(data: &[u8], at: usize, zeros: usize) -> bool {
    let Some((len, crc)) = header_at(data, at) else { return false };
    let end = at + HEADER + len as usize;
    if end > data.len() {
        return false;
    }
    let body = &data[at + HEADER..end.min(zeros.max(at + HEADER))];
    let sum = checksum(len, body);
    let zero_len = end - (at + HEADER) - body.len();
    let sum = if zero_len == 0 { sum } else { crc32c::crc32c_combine(sum, zeros_checksum(zero_len), zero_len) };
    sum == crc
}

/// CRC-32C of `n` zero bytes, by doubling: O(log n) combines.
fn zeros_checksum(n: usize) -> u32 {
    const CHUNK: [u8; 64] = [0; 64];
    let (mut acc, mut have) = (crc32c::crc32c(&[]), 0usize);
    let (mut pow, mut pow_len) = (crc32c::crc32c(&CHUNK), CHUNK.len());
    let mut rest = n / CHUNK.len();
    while rest > 0 {
        if rest & 1 == 1 {
            acc = crc32c::crc32c_combine(acc, pow, pow_len);
            have += pow_len;
        }
        rest >>= 1;
        if rest > 0 {
            pow = crc32c::crc32c_combine(pow, pow, pow_len);
            pow_len *= 2;
        }
    }
    let tail = n - have;
    crc32c::crc32c_append(acc, &CHUNK[..tail])
}

/// Where the zeros that end `data` begin (`data.len()` if its last byte is not zero).
fn trailing_zeros_start(data: &[u8]) -> usize {
    // Whole 4 KiB blocks first (the compiler vectorises the fold), then bytes.
    let mut end = data.len();
    while end >= 4096 && data[end - 4096..end].iter().fold(0u8, |a, b| a | b) == 0 {
        end -= 4096;
    }
    data[..end].iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// Every byte belonged to a valid record.
    Clean,
    /// The bytes from `offset` to the end are an incomplete or damaged last record.
    Torn { offset: usize, dropped: usize },
    /// Damage at `offset` with a valid record after it.
    Corrupt { offset: usize },
    /// Every byte before `offset` belonged to a valid record, and every byte from it on is
    /// zero: the unused part of a preallocated segment.
    Zeros { offset: usize },
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
                let zeros = trailing_zeros_start(data);
                if zeros <= at {
                    return (out, Tail::Zeros { offset: at });
                }
                // Torn tail or damage in the middle: look for any valid record further on.
                // None starts in the zeros (an all-zero header is never valid).
                let later = (at + 1..zeros).any(|i| record_starts_at(data, i, zeros));
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
        /// A record in two parts is the record of the two joined.
        #[test]
        fn parts_frame_as_their_join(head in proptest::collection::vec(any::<u8>(), 0..40), tail in proptest::collection::vec(any::<u8>(), 0..40)) {
            let (mut parts, mut joined) = (Vec::new(), Vec::new());
            encode_parts(&head, &tail, &mut parts);
            encode(&[head.as_slice(), tail.as_slice()].concat(), &mut joined);
            prop_assert_eq!(parts, joined);
        }

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

        /// A preallocated segment's zeros after the records end them cleanly; cut anywhere
        /// and followed by zeros, every complete record before the cut comes back and the
        /// rest is never called damage in the middle.
        #[test]
        fn zeros_after_the_records_end_them(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 1..10), cut in any::<prop::sample::Index>(), zeros in 1usize..10_000) {
            let seg = segment(&payloads);
            let mut padded = seg.clone();
            padded.resize(seg.len() + zeros, 0);
            let (got, tail) = decode_all(&padded);
            prop_assert_eq!(tail, Tail::Zeros { offset: seg.len() });
            prop_assert_eq!(got.len(), payloads.len());
            let cut = cut.index(seg.len());
            let mut torn = seg[..cut].to_vec();
            torn.resize(seg.len() + zeros, 0);
            let (got, tail) = decode_all(&torn);
            let mut at = 0;
            let complete = payloads.iter().take_while(|p| { at += HEADER + p.len(); at <= cut }).count();
            prop_assert_eq!(got.len(), complete);
            prop_assert!(matches!(tail, Tail::Torn { .. } | Tail::Zeros { .. }), "{:?}", tail);
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

    #[test]
    fn no_record_header_is_all_zeros() {
        assert_ne!(checksum(0, &[]), 0);
        assert!(record_at(&[0; 64], 0).is_none());
    }

    #[test]
    fn the_checksum_of_zeros_by_doubling_is_the_checksum_of_zeros() {
        for n in [0, 1, 63, 64, 65, 127, 128, 1000, 4096, 100_003, 1 << 20] {
            assert_eq!(zeros_checksum(n), crc32c::crc32c(&vec![0; n]), "{n} zeros");
        }
    }

    #[test]
    fn trailing_zeros_are_found_across_blocks() {
        for (nonzero_at, len) in [
            (None, 0),
            (None, 10_000),
            (Some(0), 1),
            (Some(4095), 8192),
            (Some(4096), 8192),
            (Some(9999), 10_000),
            (Some(5), 20_000),
        ] {
            let mut d = vec![0u8; len];
            if let Some(i) = nonzero_at {
                d[i] = 7;
            }
            assert_eq!(trailing_zeros_start(&d), nonzero_at.map_or(0, |i| i + 1), "{nonzero_at:?} of {len}");
        }
    }

    /// Damage before a record whose payload runs on into the zeros is still damage in the
    /// middle: the record after it is found, its zero bytes checksummed without being read.
    #[test]
    fn damage_before_a_record_ending_in_zeros_is_found() {
        let mut long = vec![1, 2, 3];
        long.resize(100_000, 0);
        let mut seg = segment(&[vec![9; 50], long]);
        seg.resize(seg.len() + (1 << 20), 0);
        assert_eq!(decode_all(&seg).1, Tail::Zeros { offset: 58 + HEADER + 100_000 });
        seg[20] ^= 0x10;
        assert_eq!(decode_all(&seg).1, Tail::Corrupt { offset: 0 });
    }
}
