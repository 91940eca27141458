//! The byte-level pieces every kiln encoding is made of: unsigned LEB128 varints (`u`),
//! zigzag-then-LEB128 signed ones (`i`), length-prefixed strings and little-endian fixed
//! integers, written by [`Writer`] and read back by the bounded [`Reader`]. The WAL payload,
//! the block files (`index.tsdb`, `symbols.symdb`) and Pyroscope's TREE bytes all use them;
//! docs/FORMAT.md names the fields with the same letters.
//!
//! The reader checks every read against the bytes that remain, so a damaged or hostile input
//! is an error naming its offset, never a panic, and a length or count read from it is
//! refused before anything is allocated for it.

/// The longest LEB128 encoding of a u64: 9 groups of 7 bits and a tenth byte with the top bit.
pub const MAX_VARINT_LEN: usize = 10;

/// An append-only encoder. The buffer is public so that framing (a version byte, a checksum)
/// can be added around what was written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn with_capacity(n: usize) -> Self {
        Writer(Vec::with_capacity(n))
    }

    /// Unsigned LEB128: 7 bits a byte, low groups first, high bit set on every byte but the
    /// last. Always the shortest encoding. Inlined where it is called, with the longer
    /// encodings out of line (as [`Reader::u`]): a call per varint was ~9% of a large
    /// push's CPU on its core, in the WAL record's encoding.
    #[inline]
    pub fn u(&mut self, v: u64) {
        if v < 0x80 {
            self.0.push(v as u8);
        } else if v < 0x4000 {
            // Two bytes: a location index in a table of thousands.
            self.0.extend_from_slice(&[v as u8 | 0x80, (v >> 7) as u8]);
        } else {
            self.u_long(v);
        }
    }

    #[inline(never)]
    fn u_long(&mut self, mut v: u64) {
        let mut bytes = [0u8; MAX_VARINT_LEN];
        let mut n = 0;
        while v >= 0x80 {
            bytes[n] = v as u8 | 0x80;
            v >>= 7;
            n += 1;
        }
        bytes[n] = v as u8;
        self.0.extend_from_slice(&bytes[..=n]);
    }

    /// `u` of each of `vs`, in order: the same bytes, with room for all of them made once
    /// (a WAL record's stacks are most of its varints, and a capacity check on each of them
    /// was most of their cost).
    pub fn u32s(&mut self, vs: &[u32]) {
        self.varints(vs, 5, u64::from);
    }

    /// `i` of each of `vs`, in order: the same bytes, with room for all of them made once (a
    /// sample's values, beside its stack: one call, not one a value).
    pub fn i64s(&mut self, vs: &[i64]) {
        self.varints(vs, MAX_VARINT_LEN, |v| ((v << 1) ^ (v >> 63)) as u64);
    }

    /// The varint of `as_u64` of each of `vs`, each at most `max_len` bytes long, after one
    /// capacity check for all of them.
    #[inline(always)]
    fn varints<T: Copy>(&mut self, vs: &[T], max_len: usize, as_u64: impl Fn(T) -> u64) {
        self.0.reserve(vs.len() * max_len);
        let spare = &mut self.0.spare_capacity_mut()[..vs.len() * max_len];
        let mut n = 0;
        for &v in vs {
            let mut u = as_u64(v);
            while u >= 0x80 {
                spare[n].write(u as u8 | 0x80);
                u >>= 7;
                n += 1;
            }
            spare[n].write(u as u8);
            n += 1;
        }
        let len = self.0.len() + n;
        // SAFETY: the `n` bytes after the buffer's length were written above, within the
        // capacity reserved for them (at most `max_len` bytes a value: the caller's bound on
        // its values' varints).
        unsafe { self.0.set_len(len) };
    }

    /// Signed: zigzag (0, -1, 1, -2, … → 0, 1, 2, 3, …), so that small negative numbers stay
    /// short, then `u`.
    #[inline]
    pub fn i(&mut self, v: i64) {
        self.u(((v << 1) ^ (v >> 63)) as u64);
    }

    /// A string as `u(byte length)` and its UTF-8 bytes.
    pub fn str(&mut self, s: &str) {
        self.u(s.len() as u64);
        self.bytes(s.as_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    pub fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    pub fn u32_le(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    pub fn u64_le(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

/// What a read found wrong, and where the item it was reading starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} (at byte {offset})")]
pub struct CodecError {
    /// Offset in the reader's buffer of the first byte of the item that failed.
    pub offset: usize,
    pub kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("varint runs past the end")]
    VarintTruncated,
    /// More than 64 bits: a tenth byte above 1 (which also covers an eleventh byte).
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    #[error("{wanted} bytes wanted, {left} left")]
    Short { wanted: usize, left: usize },
    #[error("{0} does not fit in 32 bits")]
    TooLarge(u64),
    #[error("count {count} exceeds what the remaining {left} bytes can hold")]
    Count { count: u64, left: usize },
    #[error("string is not UTF-8: {0}")]
    NotUtf8(std::str::Utf8Error),
    #[error("{0} unexpected trailing bytes")]
    Trailing(usize),
}

pub type Result<T> = std::result::Result<T, CodecError>;

/// A bounds-checked reader over one buffer. A failed read leaves the position where it was,
/// except that a failed varint may have consumed its bytes (the reader is then abandoned).
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes read so far: the offset of the next read in the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn fail<T>(&self, offset: usize, kind: ErrorKind) -> Result<T> {
        Err(CodecError { offset, kind })
    }

    /// The next `n` bytes.
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let left = self.remaining();
        if n > left {
            return self.fail(self.pos, ErrorKind::Short { wanted: n, left });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn byte(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u32_le(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub fn u64_le(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// An unsigned LEB128 varint (see [`Writer::u`]). Padded encodings (`80 00`) are read as
    /// Go's `binary.Uvarint` and protobuf read them; more than 64 bits is an error.
    #[inline]
    pub fn u(&mut self) -> Result<u64> {
        // Most varints of kiln's records (ids, counts, small values, indices into tables of
        // thousands) are one or two bytes: those are inlined where the reads are (a call per
        // varint was a fifth of WAL replay's decoding), the longer ones are not.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
            if let Some(&c) = self.buf.get(self.pos + 1) {
                if c < 0x80 {
                    self.pos += 2;
                    return Ok(u64::from(b & 0x7f) | u64::from(c) << 7);
                }
            }
        }
        self.u_long()
    }

    #[inline(never)]
    fn u_long(&mut self) -> Result<u64> {
        let start = self.pos;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return self.fail(start, ErrorKind::VarintTruncated);
            };
            self.pos += 1;
            // The tenth byte (shift 63) may carry only the top bit of a u64, and no
            // continuation: anything above 1 is an overlong or overflowing varint.
            if shift == 63 && b > 1 {
                return self.fail(start, ErrorKind::VarintOverflow);
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        // Not reached: the tenth byte either ends the varint or fails the check above.
        self.fail(start, ErrorKind::VarintOverflow)
    }

    /// A zigzag varint (see [`Writer::i`]).
    #[inline]
    pub fn i(&mut self) -> Result<i64> {
        let v = self.u()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A varint that must fit in 32 bits.
    #[inline]
    pub fn u32(&mut self) -> Result<u32> {
        let start = self.pos;
        let v = self.u()?;
        u32::try_from(v).or_else(|_| self.fail(start, ErrorKind::TooLarge(v)))
    }

    /// A count of items that each take at least `min_bytes` more bytes (at least 1): a count
    /// the rest of the buffer cannot hold is refused before anything is allocated for it.
    #[inline]
    pub fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let start = self.pos;
        let v = self.u()?;
        let left = self.remaining();
        if v > (left / min_bytes.max(1)) as u64 {
            return self.fail(start, ErrorKind::Count { count: v, left });
        }
        Ok(v as usize)
    }

    /// A length-prefixed UTF-8 string (see [`Writer::str`]).
    pub fn str(&mut self) -> Result<&'a str> {
        let start = self.pos;
        let n = self.count(1)?;
        let b = self.take(n)?;
        std::str::from_utf8(b).or_else(|e| self.fail(start, ErrorKind::NotUtf8(e)))
    }

    /// Every byte must have been read: trailing bytes mean the writer and reader disagree.
    pub fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            n => self.fail(self.pos, ErrorKind::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One write and the read that must give it back.
    #[derive(Debug, Clone)]
    enum Op {
        U(u64),
        I(i64),
        Str(String),
        Bytes(Vec<u8>),
        U32Le(u32),
        U64Le(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u64>().prop_map(Op::U),
            (0u64..300).prop_map(Op::U),
            any::<i64>().prop_map(Op::I),
            ".{0,12}".prop_map(Op::Str),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Op::Bytes),
            any::<u32>().prop_map(Op::U32Le),
            any::<u64>().prop_map(Op::U64Le),
        ]
    }

    fn write(w: &mut Writer, op: &Op) {
        match op {
            Op::U(v) => w.u(*v),
            Op::I(v) => w.i(*v),
            Op::Str(s) => w.str(s),
            Op::Bytes(b) => w.bytes(b),
            Op::U32Le(v) => w.u32_le(*v),
            Op::U64Le(v) => w.u64_le(*v),
        }
    }

    /// Reads what `op` wrote, and whether it equals it.
    fn read_back(r: &mut Reader<'_>, op: &Op) -> Result<bool> {
        Ok(match op {
            Op::U(v) => r.u()? == *v,
            Op::I(v) => r.i()? == *v,
            Op::Str(s) => r.str()? == s,
            Op::Bytes(b) => r.take(b.len())? == b.as_slice(),
            Op::U32Le(v) => r.u32_le()? == *v,
            Op::U64Le(v) => r.u64_le()? == *v,
        })
    }

    /// Every read of the reader, chosen by `pick`, on whatever bytes it has.
    fn any_read(r: &mut Reader<'_>, pick: u8) -> Result<()> {
        match pick % 10 {
            0 => r.u().map(drop),
            1 => r.i().map(drop),
            2 => r.u32().map(drop),
            3 => r.count(usize::from(pick / 10)).map(drop),
            4 => r.str().map(drop),
            5 => r.take(usize::from(pick)).map(drop),
            6 => r.byte().map(drop),
            7 => r.u32_le().map(drop),
            8 => r.u64_le().map(drop),
            _ => r.finish(),
        }
    }

    proptest! {
        #[test]
        fn writes_read_back(ops in proptest::collection::vec(op(), 0..24)) {
            let mut w = Writer::default();
            for op in &ops {
                write(&mut w, op);
            }
            let mut r = Reader::new(&w.0);
            for op in &ops {
                prop_assert!(read_back(&mut r, op).unwrap(), "{:?}", op);
            }
            r.finish().unwrap();
        }

        /// Cutting an encoding anywhere makes some read fail: nothing reads past the end.
        #[test]
        fn truncation_is_an_error(ops in proptest::collection::vec(op(), 1..12), cut in any::<prop::sample::Index>()) {
            let mut w = Writer::default();
            for op in &ops {
                write(&mut w, op);
            }
            prop_assume!(!w.0.is_empty());
            let cut = cut.index(w.0.len());
            let mut r = Reader::new(&w.0[..cut]);
            prop_assert!(!ops.iter().all(|op| read_back(&mut r, op).is_ok()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), picks in proptest::collection::vec(any::<u8>(), 0..32)) {
            let mut r = Reader::new(&bytes);
            for pick in picks {
                let before = r.position();
                if let Err(e) = any_read(&mut r, pick) {
                    prop_assert!(e.offset >= before && e.offset <= bytes.len());
                }
                prop_assert!(r.position() <= bytes.len());
            }
        }

        /// Every strict prefix of a varint is a truncation, reported at the varint's start.
        #[test]
        fn varint_prefixes_are_truncated(v in any::<u64>()) {
            let mut w = Writer::default();
            w.byte(7);
            w.u(v);
            for end in 1..w.0.len() {
                let mut r = Reader::new(&w.0[..end]);
                r.byte().unwrap();
                prop_assert_eq!(r.u(), Err(CodecError { offset: 1, kind: ErrorKind::VarintTruncated }));
            }
        }
    }

    proptest! {
        /// `u32s` writes exactly what `u` of each value writes, after whatever came before.
        #[test]
        fn u32s_is_u_of_each(before in proptest::collection::vec(any::<u8>(), 0..8), vs in proptest::collection::vec(any::<u32>(), 0..40)) {
            let (mut one, mut each) = (Writer(before.clone()), Writer(before));
            one.u32s(&vs);
            for &v in &vs {
                each.u(v as u64);
            }
            prop_assert_eq!(one, each);
        }

        /// `i64s` writes exactly what `i` of each value writes, after whatever came before.
        #[test]
        fn i64s_is_i_of_each(
            before in proptest::collection::vec(any::<u8>(), 0..8),
            vs in proptest::collection::vec(prop_oneof![-64i64..64, -10_000i64..10_000, any::<i64>()], 0..40),
        ) {
            let (mut one, mut each) = (Writer(before.clone()), Writer(before));
            one.i64s(&vs);
            for &v in &vs {
                each.i(v);
            }
            prop_assert_eq!(one, each);
        }
    }

    /// The encoding is LEB128 to the byte: the WAL and block files written before this
    /// module existed read back the same.
    #[test]
    fn known_encodings() {
        let cases: &[(u64, &[u8])] = &[
            (0, &[0]),
            (1, &[1]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (u64::MAX, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ];
        for (v, bytes) in cases {
            let mut w = Writer::default();
            w.u(*v);
            assert_eq!(&w.0, bytes, "{v}");
            assert_eq!(Reader::new(bytes).u().unwrap(), *v);
        }
        let mut w = Writer::default();
        for v in [0, -1, 1, -2, i64::MIN, i64::MAX] {
            w.i(v);
        }
        assert_eq!(w.0[..4], [0, 1, 2, 3]);
        assert_eq!(w.0.len(), 4 + 2 * MAX_VARINT_LEN);
    }

    #[test]
    fn overlong_varints_are_errors() {
        let overflow = |b: &[u8]| Reader::new(b).u().unwrap_err().kind;
        assert_eq!(overflow(&[0xff; 11]), ErrorKind::VarintOverflow);
        assert_eq!(overflow(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]), ErrorKind::VarintOverflow);
        assert_eq!(
            overflow(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            ErrorKind::VarintOverflow
        );
        // Padded but within 64 bits: read as Go and protobuf read it.
        assert_eq!(Reader::new(&[0x80, 0x00]).u().unwrap(), 0);
    }

    /// The inlined one- and two-byte paths against the general loop, on every encoding of up
    /// to two bytes (padded ones included) and on a second byte cut off.
    #[test]
    fn short_varints_read_as_the_loop_reads_them() {
        for b in 0..=255u8 {
            for c in 0..=255u8 {
                let bytes = [b, c];
                let (mut fast, mut slow) = (Reader::new(&bytes), Reader::new(&bytes));
                assert_eq!(fast.u(), slow.u_long(), "{bytes:02x?}");
                assert_eq!(fast.position(), slow.position(), "{bytes:02x?}");
            }
            let one = [b];
            let (mut fast, mut slow) = (Reader::new(&one), Reader::new(&one));
            assert_eq!(fast.u(), slow.u_long());
        }
        for v in (0..0x8000u64).chain([u64::MAX, 1 << 40]) {
            let (mut fast, mut slow) = (Writer::default(), Writer::default());
            fast.u(v);
            slow.u_long(v);
            assert_eq!(fast, slow, "{v}");
        }
    }

    #[test]
    fn bounds_are_checked_before_reading() {
        let mut r = Reader::new(&[3, b'a', b'b']);
        assert_eq!(r.clone().str().unwrap_err().kind, ErrorKind::Count { count: 3, left: 2 });
        assert_eq!(r.count(2).unwrap_err().kind, ErrorKind::Count { count: 3, left: 2 });
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32_le().unwrap_err(), CodecError { offset: 0, kind: ErrorKind::Short { wanted: 4, left: 3 } });
        assert_eq!(r.position(), 0);
        assert_eq!(r.take(2).unwrap(), [1, 2]);
        assert_eq!(r.finish().unwrap_err().kind, ErrorKind::Trailing(1));
        let mut r = Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x10]);
        assert_eq!(r.u32().unwrap_err().kind, ErrorKind::TooLarge(1 << 32));
        assert_eq!(Reader::new(&[2, 0xff, 0xfe]).str().unwrap_err().offset, 0);
    }
}
