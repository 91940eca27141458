//! JFR chunks: a recording is one or more chunks back to back, each a 68-byte header, its
//! events, a metadata event and a chain of checkpoint (constant pool) events. Every chunk is
//! self-contained: its metadata and pools describe its events only.
use super::reader::Reader;
use super::JfrError;

pub const HEADER_SIZE: usize = 68;
const MAGIC: u32 = 0x464c_5200; // "FLR\0"

/// One chunk: its bytes (header included) and where in them its metadata and first
/// checkpoint are.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub bytes: &'a [u8],
    pub metadata_offset: u64,
    pub constant_pool_offset: u64,
}

impl<'a> Chunk<'a> {
    /// The reader over the chunk's events (everything after the header).
    pub fn events(&self) -> Reader<'a> {
        Reader::new(&self.bytes[HEADER_SIZE..])
    }
}

/// Reads the chunk header at the start of `rest`; returns the chunk and what follows it.
pub fn next(rest: &[u8], at: usize) -> Result<(Chunk<'_>, &[u8]), JfrError> {
    let mut r = Reader::new(rest);
    let what = "chunk header";
    let magic = r.be_u32(what)?;
    if magic != MAGIC {
        return Err(JfrError::new(format!("not a JFR chunk at offset {at}: magic {magic:#010x}, want \"FLR\\0\"")));
    }
    let version = r.be_u32(what)?;
    if version >> 16 != 2 {
        return Err(JfrError::new(format!(
            "JFR version {}.{} at offset {at}: kiln reads version 2 (JDK 11 and later, async-profiler)",
            version >> 16,
            version & 0xffff
        )));
    }
    let size = r.be_u64(what)?;
    let constant_pool_offset = r.be_u64(what)?;
    let metadata_offset = r.be_u64(what)?;
    r.skip(HEADER_SIZE - r.pos(), what)?;
    if size < HEADER_SIZE as u64 || size > rest.len() as u64 {
        return Err(JfrError::new(format!("chunk at offset {at} declares {size} bytes; {} are left", rest.len())));
    }
    for (name, offset) in [("metadata", metadata_offset), ("constant pool", constant_pool_offset)] {
        if offset < HEADER_SIZE as u64 || offset >= size {
            return Err(JfrError::new(format!(
                "chunk at offset {at}: its {name} offset {offset} lies outside its {size} bytes"
            )));
        }
    }
    let (bytes, rest) = rest.split_at(size as usize);
    Ok((Chunk { bytes, metadata_offset, constant_pool_offset }, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u64, cp: u64, meta: u64) -> Vec<u8> {
        let mut h = b"FLR\0".to_vec();
        h.extend_from_slice(&0x0002_0001u32.to_be_bytes());
        for v in [size, cp, meta, 0, 0, 0, 1_000_000_000] {
            h.extend_from_slice(&v.to_be_bytes());
        }
        h.extend_from_slice(&1u32.to_be_bytes());
        h
    }

    #[test]
    fn headers_are_checked() {
        let mut c = header(80, 70, 75);
        c.resize(80, 0);
        let (chunk, rest) = next(&c, 0).unwrap();
        assert_eq!((chunk.bytes.len(), rest.len(), chunk.metadata_offset), (80, 0, 75));
        assert!(next(&c[..60], 0).unwrap_err().to_string().contains("truncated chunk header"));
        assert!(next(&header(1 << 40, 70, 75), 0).unwrap_err().to_string().contains("declares"));
        let mut bad = header(80, 70, 90);
        bad.resize(80, 0);
        assert!(next(&bad, 0).unwrap_err().to_string().contains("metadata offset 90"));
        assert!(next(b"PK\x03\x04 not a recording at all, but long enough to hold a header......", 0)
            .unwrap_err()
            .to_string()
            .contains("not a JFR chunk"));
    }
}
