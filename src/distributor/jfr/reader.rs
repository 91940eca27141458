//! A cursor over JFR bytes: big-endian fixed ints, LEB128-compressed ints and JFR's string
//! encodings. Every read checks the bytes left first, so a short input is an error that says
//! where it ended, never a panic; no read allocates more than the bytes it consumes could
//! describe.
use super::JfrError;
use std::borrow::Cow;

#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// A JFR string as encoded: most are inline, some refer to the chunk's `java.lang.String`
/// pool, resolved once every pool is read.
#[derive(Debug, Clone, PartialEq)]
pub enum JfrStr<'a> {
    /// Encodings 0 (null) and 1 (empty): both read as "".
    Empty,
    /// Encoding 2: an id in the string constant pool.
    Pool(u64),
    /// Encodings 3 (UTF-8), 4 (char array) and 5 (Latin-1), as text.
    Text(Cow<'a, str>),
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// The reader over `len` bytes from here, this one moved past them.
    pub fn split(&mut self, len: usize, what: &str) -> Result<Reader<'a>, JfrError> {
        let bytes = self.bytes(len, what)?;
        Ok(Reader::new(bytes))
    }

    fn short(&self, what: &str, want: usize) -> JfrError {
        JfrError::new(format!(
            "truncated {what}: {want} bytes needed at offset {}, {} left",
            self.pos,
            self.remaining()
        ))
    }

    pub fn bytes(&mut self, len: usize, what: &str) -> Result<&'a [u8], JfrError> {
        if len > self.remaining() {
            return Err(self.short(what, len));
        }
        let b = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(b)
    }

    pub fn skip(&mut self, len: usize, what: &str) -> Result<(), JfrError> {
        self.bytes(len, what).map(|_| ())
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, JfrError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.short(what, 1))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn be_u32(&mut self, what: &str) -> Result<u32, JfrError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes(b.try_into().expect("4 bytes")))
    }

    pub fn be_u64(&mut self, what: &str) -> Result<u64, JfrError> {
        let b = self.bytes(8, what)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    /// JFR's compressed integer: LEB128 over at most 9 bytes, the ninth contributing all its
    /// 8 bits (so any 64-bit value fits and no encoding runs longer). Most are one byte.
    #[inline]
    pub fn varint(&mut self, what: &str) -> Result<u64, JfrError> {
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(u64::from(b))
            }
            _ => self.varint_long(what),
        }
    }

    /// A varint of more than one byte (or none left).
    fn varint_long(&mut self, what: &str) -> Result<u64, JfrError> {
        let rest = &self.buf[self.pos..];
        if rest.len() >= 9 {
            // Whole: no bound to check per byte.
            let mut v = 0u64;
            for (i, &b) in rest[..8].iter().enumerate() {
                v |= u64::from(b & 0x7f) << (7 * i);
                if b < 0x80 {
                    self.pos += i + 1;
                    return Ok(v);
                }
            }
            self.pos += 9;
            return Ok(v | u64::from(rest[8]) << 56);
        }
        let mut v = 0u64;
        for shift in (0..56).step_by(7) {
            let b = self.u8(what)?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Ok(v | u64::from(self.u8(what)?) << 56)
    }

    /// The body of the event starting here (its size field first, counting itself): a
    /// reader over the rest of the event, this one moved past it.
    pub fn event(&mut self, what: &str) -> Result<Reader<'a>, JfrError> {
        let at = self.pos;
        let size = self.varint(what)?;
        let header = (self.pos - at) as u64;
        if size <= header || size - header > self.remaining() as u64 {
            return Err(JfrError::new(format!(
                "{what} at offset {at} declares {size} bytes; {} are left",
                self.remaining() as u64 + header
            )));
        }
        self.split((size - header) as usize, what)
    }

    /// A count of things each at least one byte long still to be read: larger than the
    /// bytes left, it can only be a lie, and is refused before anything is sized from it.
    pub fn count(&mut self, what: &str) -> Result<usize, JfrError> {
        let n = self.varint(what)?;
        if n > self.remaining() as u64 {
            return Err(JfrError::new(format!(
                "{what} declares {n} entries at offset {} but only {} bytes are left",
                self.pos,
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    /// A JFR string in any of its encodings.
    pub fn string(&mut self, what: &str) -> Result<JfrStr<'a>, JfrError> {
        match self.u8(what)? {
            0 | 1 => Ok(JfrStr::Empty),
            2 => Ok(JfrStr::Pool(self.varint(what)?)),
            3 => {
                let n = self.count(what)?;
                let b = self.bytes(n, what)?;
                Ok(JfrStr::Text(String::from_utf8_lossy(b)))
            }
            4 => {
                // Each char is a compressed int of at least one byte: `count` bounds them.
                let n = self.count(what)?;
                let mut s = String::with_capacity(n);
                for _ in 0..n {
                    let c = self.varint(what)?;
                    s.push(u32::try_from(c).ok().and_then(char::from_u32).unwrap_or(char::REPLACEMENT_CHARACTER));
                }
                Ok(JfrStr::Text(Cow::Owned(s)))
            }
            5 => {
                let n = self.count(what)?;
                let b = self.bytes(n, what)?;
                Ok(JfrStr::Text(latin1(b)))
            }
            e => Err(JfrError::new(format!("{what}: unknown string encoding {e} at offset {}", self.pos - 1))),
        }
    }
}

/// Latin-1 bytes as text: each byte is the code point of its value.
fn latin1(b: &[u8]) -> Cow<'_, str> {
    if b.is_ascii() {
        return Cow::Borrowed(std::str::from_utf8(b).expect("ASCII is UTF-8"));
    }
    Cow::Owned(b.iter().map(|&c| char::from(c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_take_at_most_nine_bytes() {
        let mut r = Reader::new(&[0x96, 0x01, 0x7f]);
        assert_eq!(r.varint("x").unwrap(), 150);
        assert_eq!(r.varint("x").unwrap(), 127);
        assert!(r.varint("x").unwrap_err().to_string().contains("truncated x"));
        let max = [0xff; 9];
        assert_eq!(Reader::new(&max).varint("x").unwrap(), u64::MAX);
    }

    #[test]
    fn every_string_encoding() {
        let data = [0u8, 1, 2, 7, 3, 2, b'h', b'i', 4, 2, 0xe9, 0x01, 0x41, 5, 2, 0xe9, b'a', 9];
        let mut r = Reader::new(&data);
        assert_eq!(r.string("s").unwrap(), JfrStr::Empty);
        assert_eq!(r.string("s").unwrap(), JfrStr::Empty);
        assert_eq!(r.string("s").unwrap(), JfrStr::Pool(7));
        assert_eq!(r.string("s").unwrap(), JfrStr::Text("hi".into()));
        assert_eq!(r.string("s").unwrap(), JfrStr::Text("éA".into()));
        assert_eq!(r.string("s").unwrap(), JfrStr::Text("éa".into()));
        assert!(r.string("s").unwrap_err().to_string().contains("unknown string encoding 9"));
    }

    #[test]
    fn declared_lengths_past_the_input_are_refused() {
        let mut r = Reader::new(&[3, 0xff, 0xff, 0x03, b'a']);
        let e = r.string("name").unwrap_err().to_string();
        assert!(e.contains("declares 65535 entries"), "{e}");
        let mut r = Reader::new(&[4, 0x80, 0x80, 0x80, 0x80, 0x10]);
        assert!(r.string("name").is_err());
    }
}
