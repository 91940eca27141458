//! Byte-level helpers shared by `index.tsdb` and `symbols.symdb`: LEB128 varints, the framing
//! (magic, version, body, CRC-32C) and a bounds-checked reader whose errors name the file and
//! the byte offset.
//!
//! Every length or count read from a file is checked against the bytes that remain before
//! anything is allocated for it, so a damaged or hostile file costs at most its own size in
//! memory and never panics.
use super::FormatError;

/// Bytes of the frame around a body: magic (4), version (1) before it, CRC-32C (4) after.
pub(super) const FRAME_HEAD: usize = 5;
pub(super) const FRAME_TAIL: usize = 4;

/// An append-only encoder.
#[derive(Default)]
pub(super) struct Enc(pub Vec<u8>);

impl Enc {
    /// Unsigned LEB128: 7 bits a byte, low groups first, high bit = more bytes follow.
    pub fn u(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    /// Signed: zigzag (0, -1, 1, -2, … → 0, 1, 2, 3, …), then `u`.
    pub fn i(&mut self, v: i64) {
        self.u(((v << 1) ^ (v >> 63)) as u64);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub fn str(&mut self, s: &str) {
        self.u(s.len() as u64);
        self.bytes(s.as_bytes());
    }
}

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

/// A bounds-checked reader over one body or section. `base` is the offset of `buf[0]` in the
/// file (or in the decompressed section, which `ctx` then says), for error messages.
pub(super) struct Dec<'a> {
    pub file: &'static str,
    pub ctx: &'static str,
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Dec<'a> {
    pub fn new(file: &'static str, ctx: &'static str, buf: &'a [u8], base: usize) -> Self {
        Dec { file, ctx, buf, pos: 0, base }
    }

    /// An error at the current position.
    pub fn err(&self, what: impl std::fmt::Display) -> FormatError {
        self.err_at(self.pos, what)
    }

    fn err_at(&self, pos: usize, what: impl std::fmt::Display) -> FormatError {
        let what = if self.ctx.is_empty() { what.to_string() } else { format!("{}: {what}", self.ctx) };
        FormatError::Corrupt { file: self.file, offset: (self.base + pos) as u64, what }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn u(&mut self) -> Result<u64, FormatError> {
        let start = self.pos;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err_at(start, "varint runs past the end"));
            };
            self.pos += 1;
            // The tenth byte may carry only the top bit of a u64.
            if shift == 63 && b > 1 {
                return Err(self.err_at(start, "varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err_at(start, "varint longer than 10 bytes"))
    }

    pub fn i(&mut self) -> Result<i64, FormatError> {
        let v = self.u()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A varint that must fit in u32 (`what` names the field for the message).
    pub fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        let start = self.pos;
        let v = self.u()?;
        u32::try_from(v).map_err(|_| self.err_at(start, format!("{what} {v} does not fit in 32 bits")))
    }

    /// A count of items that each take at least `min_bytes` more bytes: a count the rest of
    /// the buffer cannot hold is damage, caught before anything is allocated for it.
    pub fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize, FormatError> {
        let start = self.pos;
        let v = self.u()?;
        let max = self.remaining() / min_bytes.max(1);
        if v > max as u64 {
            return Err(self.err_at(
                start,
                format!("{what} count {v} exceeds what the remaining {} bytes can hold", self.remaining()),
            ));
        }
        Ok(v as usize)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(self.err(format!("{n} bytes wanted, {} left", self.remaining())));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn byte(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, FormatError> {
        let start = self.pos;
        let n = self.count("string length", 1)?;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|e| self.err_at(start, format!("string is not UTF-8: {e}")))
    }

    /// Every byte must have been read: trailing bytes mean the writer and reader disagree.
    pub fn finish(&self) -> Result<(), FormatError> {
        if self.remaining() != 0 {
            return Err(self.err(format!("{} unexpected trailing bytes", self.remaining())));
        }
        Ok(())
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
