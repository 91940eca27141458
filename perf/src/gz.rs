//! Gzip bodies whose last few bytes change per request, without compressing per request.
//!
//! A pushed profile is a fixed base plus a fresh `time_nanos` field (see `source`). Gzip per
//! request would cost more CPU than the server's own work at high rates, so each base is
//! compressed once and every request only appends:
//!
//! ```text
//! +-------------+---------------------------------+------------------------+-------+-------+
//! | gzip header | deflate(base), non-final blocks | final *stored* block:  | CRC32 | ISIZE |
//! | 10 bytes    | ended by a sync flush (aligned) | 01 LEN NLEN tail bytes | LE    | LE    |
//! +-------------+---------------------------------+------------------------+-------+-------+
//! ```
//!
//! The result is one ordinary gzip member (any gunzip reads it). CRC32 continues from the
//! base's CRC over the tail bytes only, so a request costs one copy of the compressed prefix.

use flate2::{Compress, Compression, FlushCompress};

/// CRC-32 (IEEE, reflected), the gzip trailer checksum, as a continuation from `crc`.
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = crc_table();
    let mut c = !crc;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// A compressed base to which a short tail can be appended per request.
#[derive(Clone, Debug)]
pub struct GzTemplate {
    prefix: Vec<u8>,
    crc_base: u32,
    len_base: u64,
}

/// A stored block holds at most 65535 bytes; tails are a handful of bytes.
const TAIL_BYTES_MAX: usize = 1024;

impl GzTemplate {
    pub fn new(base: &[u8], level: Compression) -> GzTemplate {
        let mut prefix = Vec::with_capacity(base.len() / 3 + 1024);
        // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
        prefix.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        let mut c = Compress::new(level, false);
        loop {
            prefix.reserve(64 * 1024);
            let consumed = c.total_in() as usize;
            c.compress_vec(&base[consumed..], &mut prefix, FlushCompress::Sync)
                .expect("deflate of an in-memory buffer cannot fail");
            // Done when all input is in and the flush did not run out of room.
            if c.total_in() as usize == base.len() && prefix.len() < prefix.capacity() {
                break;
            }
        }
        GzTemplate { prefix, crc_base: crc32_update(0, base), len_base: base.len() as u64 }
    }

    /// The size of a body with a tail of `tail_len` bytes.
    pub fn body_len(&self, tail_len: usize) -> usize {
        self.prefix.len() + 5 + tail_len + 8
    }

    /// The gzip of `base ++ tail`.
    pub fn build(&self, tail: &[u8]) -> Vec<u8> {
        assert!(tail.len() <= TAIL_BYTES_MAX, "gzip tail too long");
        let mut out = Vec::with_capacity(self.body_len(tail.len()));
        out.extend_from_slice(&self.prefix);
        let len = tail.len() as u16;
        out.push(0x01); // BFINAL = 1, BTYPE = 00 (stored); the stream is byte aligned here
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(tail);
        let crc = crc32_update(self.crc_base, tail);
        out.extend_from_slice(&crc.to_le_bytes());
        let size = (self.len_base + tail.len() as u64) as u32;
        out.extend_from_slice(&size.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn test_crc32_matches_flate2() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut reference = flate2::Crc::new();
        reference.update(&data);
        assert_eq!(crc32_update(0, &data), reference.sum());
        // Continuation equals one pass.
        let split = crc32_update(crc32_update(0, &data[..3333]), &data[3333..]);
        assert_eq!(split, reference.sum());
        assert_eq!(crc32_update(0, b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn test_gz_template_round_trips() {
        for base_len in [0usize, 1, 100, 70_000, 300_000] {
            let base: Vec<u8> = (0..base_len).map(|i| (i % 251) as u8 ^ (i / 97) as u8).collect();
            let t = GzTemplate::new(&base, Compression::fast());
            for tail in [&b""[..], b"\x48\x01", b"0123456789a"] {
                let body = t.build(tail);
                assert_eq!(body.len(), t.body_len(tail.len()));
                let mut want = base.clone();
                want.extend_from_slice(tail);
                assert_eq!(gunzip(&body), want, "base {base_len}");
            }
        }
    }
}
