//! Byte-level helpers shared by `index.tsdb` and `symbols.symdb`: the framing (magic,
//! version, body, CRC-32C) and the shared bounded reader (`kiln_io::codec`, which also writes
//! their varints) with errors that name the file and the byte offset.
//!
//! Every length or count read from a file is checked against the bytes that remain before
//! anything is allocated for it, so a damaged or hostile file costs at most its own size in
//! memory and never panics.
use super::FormatError;
use kiln_io::codec::{CodecError, ErrorKind, Reader};

/// The block files' encoder is the shared one: the same varints as the WAL payload.
pub(super) use kiln_io::codec::Writer as Enc;

/// Bytes of the frame around a body: magic (4), version (1) before it, CRC-32C (4) after.
pub(super) const FRAME_HEAD: usize = 5;
pub(super) const FRAME_TAIL: usize = 4;

/// Wraps `body` into `magic | version | body | crc32c(magic..body) LE`.
pub(super) fn seal(magic: &[u8; 4], version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEAD + body.len() + FRAME_TAIL);
    out.extend_from_slice(magic);
    out.push(version);
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the frame of `bytes` and returns its body. The checksum is verified before the
/// version is looked at, so any flipped byte (the version's included) reads as damage.
pub(super) fn open<'a>(
    file: &'static str,
    magic: &[u8; 4],
    version: u8,
    bytes: &'a [u8],
) -> Result<&'a [u8], FormatError> {
    let corrupt = |offset: usize, what: String| FormatError::Corrupt { file, offset: offset as u64, what };
    if bytes.len() < FRAME_HEAD + FRAME_TAIL {
        return Err(corrupt(0, format!("file of {} bytes is shorter than its frame (9 bytes)", bytes.len())));
    }
    if &bytes[..4] != magic {
        return Err(corrupt(
            0,
            format!("bad magic {:02x?}, expected {:?}", &bytes[..4], std::str::from_utf8(magic).unwrap_or("?")),
        ));
    }
    let end = bytes.len() - FRAME_TAIL;
    let stored = u32::from_le_bytes(bytes[end..].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&bytes[..end]);
    if stored != computed {
        return Err(FormatError::Checksum { file, stored, computed });
    }
    if bytes[4] != version {
        return Err(FormatError::Version { file, found: bytes[4] as u32, supported: version as u32 });
    }
    Ok(&bytes[FRAME_HEAD..end])
}

/// The shared bounded reader over one body or section, with errors that name the file and
/// the offset. `base` is the offset of the buffer's first byte in the file (or in the
/// decompressed section, which `ctx` then says).
pub(super) struct Dec<'a> {
    pub file: &'static str,
    pub ctx: &'static str,
    r: Reader<'a>,
    base: usize,
}

impl<'a> Dec<'a> {
    pub fn new(file: &'static str, ctx: &'static str, buf: &'a [u8], base: usize) -> Self {
        Dec { file, ctx, r: Reader::new(buf), base }
    }

    /// An error at the current position.
    pub fn err(&self, what: impl std::fmt::Display) -> FormatError {
        self.err_at(self.r.position(), what)
    }

    fn err_at(&self, pos: usize, what: impl std::fmt::Display) -> FormatError {
        let what = if self.ctx.is_empty() { what.to_string() } else { format!("{}: {what}", self.ctx) };
        FormatError::Corrupt { file: self.file, offset: (self.base + pos) as u64, what }
    }

    /// A failed read, at the start of the item it was reading.
    fn corrupt(&self, e: CodecError) -> FormatError {
        self.err_at(e.offset, e.kind)
    }

    /// A failed read of the field `what`.
    fn corrupt_field(&self, what: &str, e: CodecError) -> FormatError {
        self.err_at(e.offset, format!("{what} {}", e.kind))
    }

    pub fn remaining(&self) -> usize {
        self.r.remaining()
    }

    pub fn u(&mut self) -> Result<u64, FormatError> {
        self.r.u().map_err(|e| self.corrupt(e))
    }

    pub fn i(&mut self) -> Result<i64, FormatError> {
        self.r.i().map_err(|e| self.corrupt(e))
    }

    /// A varint that must fit in u32 (`what` names the field for the message).
    pub fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        self.r.u32().map_err(|e| match e.kind {
            ErrorKind::TooLarge(_) => self.corrupt_field(what, e),
            _ => self.corrupt(e),
        })
    }

    /// A count of items that each take at least `min_bytes` more bytes: a count the rest of
    /// the buffer cannot hold is damage, caught before anything is allocated for it.
    pub fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize, FormatError> {
        self.r.count(min_bytes).map_err(|e| match e.kind {
            ErrorKind::Count { .. } => self.corrupt_field(what, e),
            _ => self.corrupt(e),
        })
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        self.r.take(n).map_err(|e| self.corrupt(e))
    }

    pub fn byte(&mut self) -> Result<u8, FormatError> {
        self.r.byte().map_err(|e| self.corrupt(e))
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, FormatError> {
        self.r.str().map_err(|e| match e.kind {
            ErrorKind::Count { .. } => self.corrupt_field("string length", e),
            _ => self.corrupt(e),
        })
    }

    /// Every byte must have been read: trailing bytes mean the writer and reader disagree.
    pub fn finish(&self) -> Result<(), FormatError> {
        self.r.finish().map_err(|e| self.corrupt(e))
    }
}

/// Re-seals a damaged file with a valid trailing CRC-32C, so that tests reach the parser
/// behind the checksum.
#[cfg(test)]
pub fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    if b.len() >= 4 {
        let end = b.len() - 4;
        let crc = crc32c::crc32c(&b[..end]);
        b[end..].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(u in any::<u64>(), i in any::<i64>()) {
            let mut e = Enc::default();
            e.u(u);
            e.i(i);
            let mut d = Dec::new("t", "", &e.0, 0);
            prop_assert_eq!(d.u().unwrap(), u);
            prop_assert_eq!(d.i().unwrap(), i);
            d.finish().unwrap();
        }
    }

    #[test]
    fn overlong_varints_are_errors() {
        let mut d = Dec::new("t", "", &[0xff; 11], 0);
        assert!(d.u().is_err());
        let mut d = Dec::new("t", "", &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], 0);
        assert!(d.u().is_err());
        let mut d = Dec::new("t", "", &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], 0);
        assert_eq!(d.u().unwrap(), u64::MAX);
    }

    #[test]
    fn frame_detects_damage() {
        let f = seal(b"TEST", 1, b"hello");
        assert_eq!(open("t", b"TEST", 1, &f).unwrap(), b"hello");
        assert!(matches!(open("t", b"TEST", 2, &f), Err(FormatError::Version { found: 1, .. })));
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x10;
            assert!(open("t", b"TEST", 1, &g).is_err(), "flip at {i}");
        }
        for n in 0..f.len() {
            assert!(open("t", b"TEST", 1, &f[..n]).is_err());
        }
    }
}
