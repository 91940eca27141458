//! Bounded gzip inflate and gzip encode.
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::{Read, Write};

/// The two magic bytes every gzip member starts with.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InflateError {
    #[error("decompressed size exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("invalid gzip data: {0}")]
    Corrupt(String),
}

pub fn is_gzip(data: &[u8]) -> bool {
    data.len() >= 2 && data[..2] == GZIP_MAGIC
}

/// Inflates a gzip stream (one or more members), failing as soon as the output would pass
/// `limit` bytes. The output buffer grows geometrically but never past `limit` (a byte read
/// beyond it on the stack proves the limit passed), so a bomb costs at most its limit however
/// far it would inflate: `read_to_end` would double past it.
pub fn gunzip_bounded(data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut out: Vec<u8> = Vec::new();
    out.reserve_exact(initial_room(data, limit));
    let mut decoder = MultiGzDecoder::new(data);
    let mut filled = 0;
    let corrupt = |e: std::io::Error| InflateError::Corrupt(e.to_string());
    loop {
        if filled == out.len() {
            if filled == limit {
                // Full: one more byte means too large.
                let mut probe = [0u8; 1];
                loop {
                    match decoder.read(&mut probe) {
                        Ok(0) => break,
                        Ok(_) => return Err(InflateError::TooLarge { limit }),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(corrupt(e)),
                    }
                }
                break;
            }
            // What is reserved is used before the buffer grows (by doubling).
            let grow = match out.capacity() - filled {
                0 => filled.max(8192),
                spare => spare,
            }
            .min(limit - filled);
            out.reserve_exact(grow);
            out.resize(filled + grow, 0);
        }
        match decoder.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(corrupt(e)),
        }
    }
    out.truncate(filled);
    Ok(out)
}

/// Deflate's best ratio is about 1032:1: a gzip trailer that claims more is not believed.
const MAX_DEFLATE_RATIO: usize = 1032;

/// The room to reserve for `data` inflated: what its trailer says (ISIZE, the size of the
/// last member, mod 2^32) and one byte more (to read the end without growing), where that is
/// at least the compressed size and within deflate's ratio; else three times the compressed
/// size. Never past `limit`: a trailer that lies costs at most that (or 1032 bytes a byte
/// sent), and one that undercounts (several members) leaves the buffer to grow.
fn initial_room(data: &[u8], limit: usize) -> usize {
    let claimed = data.last_chunk::<4>().map(|isize| u32::from_le_bytes(*isize) as usize);
    let room = match claimed {
        Some(n) if n >= data.len() && n <= data.len().saturating_mul(MAX_DEFLATE_RATIO) => n + 1,
        _ => data.len().saturating_mul(3),
    };
    room.max(64).min(limit)
}

/// Returns the payload inflated when it starts with the gzip magic, else as it is; either way
/// no larger than `limit`. SDKs send gzip with and without `Content-Encoding`, so every
/// payload is sniffed.
pub fn maybe_gunzip(data: &[u8], limit: usize) -> Result<std::borrow::Cow<'_, [u8]>, InflateError> {
    if is_gzip(data) {
        return gunzip_bounded(data, limit).map(std::borrow::Cow::Owned);
    }
    if data.len() > limit {
        return Err(InflateError::TooLarge { limit });
    }
    Ok(std::borrow::Cow::Borrowed(data))
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::fast());
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_past_limit() {
        let big = vec![0u8; 10_000];
        let z = gzip(&big);
        assert_eq!(gunzip_bounded(&z, 9_999), Err(InflateError::TooLarge { limit: 9_999 }));
        assert_eq!(gunzip_bounded(&z, 10_000).unwrap().len(), 10_000);
    }

    #[test]
    fn corrupt_is_an_error() {
        let mut z = gzip(b"hello world hello world");
        let n = z.len();
        z.truncate(n - 6);
        assert!(matches!(gunzip_bounded(&z, 1000), Err(InflateError::Corrupt(_))));
    }

    #[test]
    fn never_holds_more_than_the_limit() {
        // A 64 MiB bomb against a 100 KiB limit: refused, and the buffer never grew past it.
        let z = gzip(&vec![0u8; 64 << 20]);
        assert_eq!(gunzip_bounded(&z, 100_000), Err(InflateError::TooLarge { limit: 100_000 }));
        let out = gunzip_bounded(&gzip(&vec![7u8; 100_000]), 100_000).unwrap();
        assert_eq!(out.len(), 100_000);
        assert!(out.capacity() <= 100_000, "capacity {}", out.capacity());
        assert_eq!(gunzip_bounded(&gzip(b""), 0).unwrap(), b"");
        assert_eq!(gunzip_bounded(&gzip(b"x"), 0), Err(InflateError::TooLarge { limit: 0 }));
    }

    #[test]
    fn the_trailer_sizes_the_buffer_once() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 ^ (i / 997) as u8).collect();
        let z = gzip(&data);
        let out = gunzip_bounded(&z, 1 << 20).unwrap();
        assert_eq!(out, data);
        assert_eq!(initial_room(&z, 1 << 20), data.len() + 1);
        assert!(out.capacity() <= data.len() + 1, "capacity {}", out.capacity());
        // A trailer that lies is not believed past deflate's ratio, nor past the limit.
        let mut lying = gzip(b"tiny");
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(initial_room(&lying, 1 << 30), 3 * n);
        lying[n - 4..].copy_from_slice(&(1000 * n as u32).to_le_bytes());
        assert_eq!(initial_room(&lying, 1 << 30), 1000 * n + 1);
        assert_eq!(initial_room(&lying, 500), 500);
        assert!(matches!(gunzip_bounded(&lying, 1 << 30), Err(InflateError::Corrupt(_))));
        // Two members: the trailer tells the last one's size alone; the buffer grows.
        let mut two = gzip(&data);
        two.extend(gzip(b"end"));
        let mut both = data.clone();
        both.extend(b"end");
        assert_eq!(gunzip_bounded(&two, 1 << 20).unwrap(), both);
    }

    #[test]
    fn plain_passes_through() {
        assert_eq!(&*maybe_gunzip(b"abc", 3).unwrap(), b"abc");
        assert!(maybe_gunzip(b"abcd", 3).is_err());
    }

    proptest! {
        #[test]
        fn roundtrip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let z = gzip(&data);
            prop_assert!(is_gzip(&z));
            prop_assert_eq!(gunzip_bounded(&z, data.len()).unwrap(), data);
        }
    }
}
