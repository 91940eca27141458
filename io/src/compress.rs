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
/// `limit` bytes.
pub fn gunzip_bounded(data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(3).min(limit));
    let mut decoder = MultiGzDecoder::new(data).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).map_err(|e| InflateError::Corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(InflateError::TooLarge { limit });
    }
    Ok(out)
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
