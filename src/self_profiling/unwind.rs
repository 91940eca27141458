//! Unwinding by the call frame information of `.eh_frame` (x86_64), which every function
//! of kiln, of the standard library and of the system's libraries carries (Rust emits
//! unwind tables for panics), so a build without frame pointers still gives whole stacks.
//!
//! At install (`load_objects`, an ordinary context) the loaded objects are listed once with
//! `dl_iterate_phdr`: each one's mapped segments and its `.eh_frame_hdr`. In the signal
//! handler (`walk`) each frame's FDE is found by binary search of that table, its CFA
//! program run up to the frame's address, and the caller's registers read from the stack:
//! no allocation, no lock, no system call. Every read of unwind data lies inside a segment
//! of its object, every read of the stack inside the thread's stack, and each frame's CFA
//! must be above the last; anything unexpected (a DWARF expression, an unknown opcode, an
//! address in no object, e.g. JIT code or a later `dlopen`) ends the walk.
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

const MAX_OBJECTS: usize = 64;
const MAX_SEGMENTS: usize = 8;
/// `DW_CFA_remember_state` nesting kept.
const MAX_STATES: usize = 8;
const PT_LOAD: u32 = 1;
const PT_GNU_EH_FRAME: u32 = 0x6474_e550;
/// DWARF register numbers on x86_64.
const RBP: u64 = 6;
const RSP: u64 = 7;
const RA: u64 = 16;

#[derive(Clone, Copy)]
struct Object {
    /// Mapped [start, end) of each PT_LOAD segment.
    segments: [(usize, usize); MAX_SEGMENTS],
    count: usize,
    /// `.eh_frame_hdr` in memory.
    hdr: usize,
}

impl Object {
    const EMPTY: Object = Object { segments: [(0, 0); MAX_SEGMENTS], count: 0, hdr: 0 };

    /// The end of the segment holding `addr`, if one does.
    fn segment_end(&self, addr: usize) -> Option<usize> {
        self.segments[..self.count].iter().find(|(s, e)| addr >= *s && addr < *e).map(|s| s.1)
    }
}

struct Objects {
    list: UnsafeCell<[Object; MAX_OBJECTS]>,
    len: AtomicUsize,
}

// SAFETY: `list` is written once, by `load_objects`, before `len` is published (Release);
// readers read only the first `len` (Acquire) entries, never written again.
unsafe impl Sync for Objects {}

static OBJECTS: Objects = Objects { list: UnsafeCell::new([Object::EMPTY; MAX_OBJECTS]), len: AtomicUsize::new(0) };

/// Lists the loaded objects and their unwind tables; once, before any thread is sampled.
pub fn load_objects() {
    if OBJECTS.len.load(Ordering::Acquire) > 0 {
        return;
    }
    let mut found: Vec<Object> = Vec::new();
    unsafe extern "C" fn each(info: *mut libc::dl_phdr_info, _size: libc::size_t, data: *mut libc::c_void) -> i32 {
        // SAFETY: dl_iterate_phdr hands a valid info whose phdr array has phnum entries;
        // `data` is the Vec passed below.
        let (info, found) = unsafe { (&*info, &mut *(data as *mut Vec<Object>)) };
        let mut o = Object::EMPTY;
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: as above.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
            if ph.p_type == PT_LOAD && o.count < MAX_SEGMENTS {
                o.segments[o.count] = (start, start + ph.p_memsz as usize);
                o.count += 1;
            } else if ph.p_type == PT_GNU_EH_FRAME {
                o.hdr = start;
            }
        }
        if o.count > 0 && o.hdr != 0 && found.len() < MAX_OBJECTS {
            found.push(o);
        }
        0
    }
    // SAFETY: the callback only reads what it is handed and pushes onto `found`.
    unsafe {
        libc::dl_iterate_phdr(Some(each), &mut found as *mut Vec<Object> as *mut libc::c_void);
    }
    // SAFETY: nothing reads `list` before `len` is published, and this runs once.
    unsafe {
        let list = &mut *OBJECTS.list.get();
        list[..found.len()].copy_from_slice(&found);
    }
    OBJECTS.len.store(found.len(), Ordering::Release);
}

fn object_of(pc: usize) -> Option<&'static Object> {
    let n = OBJECTS.len.load(Ordering::Acquire);
    // SAFETY: the first `n` entries are written and never change (see `Objects`).
    let list = unsafe { &*OBJECTS.list.get() };
    list[..n].iter().find(|o| o.segment_end(pc).is_some())
}

/// Bounded reads of unwind data: [pos, end) inside one segment of its object.
struct Cursor {
    pos: usize,
    end: usize,
}

impl Cursor {
    fn at(o: &Object, pos: usize) -> Option<Cursor> {
        Some(Cursor { pos, end: o.segment_end(pos)? })
    }
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.pos.checked_add(N)? > self.end {
            return None;
        }
        // SAFETY: [pos, pos + N) lies inside a mapped segment of the object.
        let b = unsafe { std::ptr::read_unaligned(self.pos as *const [u8; N]) };
        self.pos += N;
        Some(b)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes::<1>()?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes()?))
    }
    /// A LEB128 number: its low 64 bits, how many bits it had, and its last byte.
    fn leb(&mut self) -> Option<(u64, u32, u8)> {
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Some((v, shift, b));
            }
        }
    }
    fn uleb(&mut self) -> Option<u64> {
        Some(self.leb()?.0)
    }
    fn sleb(&mut self) -> Option<i64> {
        let (v, shift, last) = self.leb()?;
        let sign = if shift < 64 && last & 0x40 != 0 { -1i64 << shift } else { 0 };
        Some(v as i64 | sign)
    }
    /// A pointer in `DW_EH_PE` encoding `enc`; `datarel` is the base of data-relative ones.
    fn pointer(&mut self, enc: u8, datarel: usize) -> Option<usize> {
        let field = self.pos;
        let v = match enc & 0x0f {
            0x00 => self.u64()?,
            0x01 => self.uleb()?,
            0x02 => u64::from(self.u16()?),
            0x03 => u64::from(self.u32()?),
            0x04 => self.u64()?,
            0x09 => self.sleb()? as u64,
            0x0a => self.u16()? as i16 as i64 as u64,
            0x0b => self.u32()? as i32 as i64 as u64,
            0x0c => self.u64()?,
            _ => return None,
        } as usize;
        match enc & 0x70 {
            0x00 => Some(v),
            0x10 => Some(field.wrapping_add(v)),
            0x30 => Some(datarel.wrapping_add(v)),
            _ => None,
        }
    }
    fn skip(&mut self, n: u64) -> Option<()> {
        self.pos = self.pos.checked_add(usize::try_from(n).ok()?)?;
        (self.pos <= self.end).then_some(())
    }
}

/// Where a register's caller value is: unchanged, or saved at CFA + offset.
#[derive(Clone, Copy, PartialEq)]
enum Rule {
    Same,
    At(i64),
    Unknown,
}

#[derive(Clone, Copy)]
struct Rules {
    cfa_reg: u64,
    cfa_off: i64,
    rbp: Rule,
    ra: Rule,
}

impl Rules {
    fn set(&mut self, reg: u64, rule: Rule) {
        match reg {
            RBP => self.rbp = rule,
            RA => self.ra = rule,
            _ => {}
        }
    }
}

struct Cie {
    code_align: u64,
    data_align: i64,
    fde_enc: u8,
    /// The initial instructions: [start, end).
    program: (usize, usize),
    augmented: bool,
}

fn parse_cie(o: &Object, at: usize, datarel: usize) -> Option<Cie> {
    let mut c = Cursor::at(o, at)?;
    let len = c.u32()?;
    if len == 0 || len == u32::MAX {
        return None;
    }
    let end = c.pos.checked_add(len as usize)?;
    if end > c.end || c.u32()? != 0 {
        return None;
    }
    let version = c.u8()?;
    let mut aug = [0u8; 8];
    let mut n = 0;
    loop {
        let b = c.u8()?;
        if b == 0 {
            break;
        }
        *aug.get_mut(n)? = b;
        n += 1;
    }
    let code_align = c.uleb()?;
    let data_align = c.sleb()?;
    let _ra = if version == 1 { u64::from(c.u8()?) } else { c.uleb()? };
    let mut cie = Cie { code_align, data_align, fde_enc: 0, program: (0, end), augmented: false };
    if aug[..n].first() == Some(&b'z') {
        cie.augmented = true;
        let len = c.uleb()?;
        let data_end = c.pos.checked_add(usize::try_from(len).ok()?)?;
        for &a in &aug[1..n] {
            match a {
                b'R' => cie.fde_enc = c.u8()?,
                b'L' => {
                    c.u8()?;
                }
                b'P' => {
                    let enc = c.u8()?;
                    c.pointer(enc & 0x7f, datarel)?;
                }
                b'S' => {}
                _ => break,
            }
        }
        c.pos = data_end;
    } else if n > 0 {
        return None;
    }
    cie.program.0 = c.pos;
    (cie.program.0 <= end).then_some(cie)
}

/// The rules in force at `pc` of the function whose FDE is at `fde`.
fn rules_at(o: &Object, fde: usize, pc: usize) -> Option<Rules> {
    let datarel = o.hdr;
    let mut c = Cursor::at(o, fde)?;
    let len = c.u32()?;
    if len == 0 || len == u32::MAX {
        return None;
    }
    let end = c.pos.checked_add(len as usize)?;
    let field = c.pos;
    let cie = parse_cie(o, field.checked_sub(c.u32()? as usize)?, datarel)?;
    let begin = c.pointer(cie.fde_enc, datarel)?;
    let range = c.pointer(cie.fde_enc & 0x0f, datarel)?;
    if pc < begin || pc >= begin.checked_add(range)? {
        return None;
    }
    if cie.augmented {
        let n = c.uleb()?;
        c.skip(n)?;
    }
    let init = Rules { cfa_reg: RSP, cfa_off: 8, rbp: Rule::Same, ra: Rule::At(-8) };
    let mut state = Program { cie: &cie, init, rules: init, saved: [init; MAX_STATES], depth: 0, loc: begin, pc };
    state.run(Cursor { pos: cie.program.0, end: cie.program.1 }, datarel)?;
    state.init = state.rules;
    if end > c.end {
        return None;
    }
    state.run(Cursor { pos: c.pos, end }, datarel)?;
    Some(state.rules)
}

/// A CFA program being run up to `pc`.
struct Program<'a> {
    cie: &'a Cie,
    /// The rules after the CIE's instructions (`DW_CFA_restore`).
    init: Rules,
    rules: Rules,
    saved: [Rules; MAX_STATES],
    depth: usize,
    loc: usize,
    pc: usize,
}

impl Program<'_> {
    /// Runs the instructions until the location passes `pc` or they end; None: one that is
    /// not understood.
    fn run(&mut self, mut c: Cursor, datarel: usize) -> Option<()> {
        while c.pos < c.end {
            let op = c.u8()?;
            let low = u64::from(op & 0x3f);
            let advance = match op >> 6 {
                1 => Some(low),
                2 => {
                    let off = self.offset(c.uleb()?)?;
                    self.rules.set(low, Rule::At(off));
                    None
                }
                3 => {
                    self.restore(low);
                    None
                }
                _ => self.extended(op, &mut c, datarel)?,
            };
            if let Some(delta) = advance {
                self.loc = self.loc.checked_add(usize::try_from(delta.checked_mul(self.cie.code_align)?).ok()?)?;
                if self.loc > self.pc {
                    return Some(());
                }
            }
        }
        Some(())
    }

    fn offset(&self, factored: u64) -> Option<i64> {
        i64::try_from(factored).ok()?.checked_mul(self.cie.data_align)
    }

    fn restore(&mut self, reg: u64) {
        let rule = match reg {
            RBP => self.init.rbp,
            RA => self.init.ra,
            _ => return,
        };
        self.rules.set(reg, rule);
    }

    /// The opcodes with a zero high part; Some(Some(delta)): an advance.
    fn extended(&mut self, op: u8, c: &mut Cursor, datarel: usize) -> Option<Option<u64>> {
        match op {
            0x00 => {}
            0x2e => {
                c.uleb()?;
            }
            0x01 => {
                self.loc = c.pointer(self.cie.fde_enc, datarel)?;
                if self.loc > self.pc {
                    c.pos = c.end;
                }
            }
            0x02 => return Some(Some(u64::from(c.u8()?))),
            0x03 => return Some(Some(u64::from(c.u16()?))),
            0x04 => return Some(Some(u64::from(c.u32()?))),
            0x05 => {
                let (reg, off) = (c.uleb()?, c.uleb()?);
                self.rules.set(reg, Rule::At(self.offset(off)?));
            }
            0x06 => self.restore(c.uleb()?),
            0x07 | 0x08 => {
                let reg = c.uleb()?;
                self.rules.set(reg, if op == 0x07 { Rule::Unknown } else { Rule::Same });
            }
            0x09 => {
                let (reg, _) = (c.uleb()?, c.uleb()?);
                self.rules.set(reg, Rule::Unknown);
            }
            0x0a => {
                *self.saved.get_mut(self.depth)? = self.rules;
                self.depth += 1;
            }
            0x0b => {
                // The whole row, CFA included, as GCC's and LLVM's unwinders restore it
                // (epilogues in mid-function rely on it).
                self.depth = self.depth.checked_sub(1)?;
                self.rules = self.saved[self.depth];
            }
            0x0c => {
                self.rules.cfa_reg = c.uleb()?;
                self.rules.cfa_off = i64::try_from(c.uleb()?).ok()?;
            }
            0x0d => self.rules.cfa_reg = c.uleb()?,
            0x0e => self.rules.cfa_off = i64::try_from(c.uleb()?).ok()?,
            0x11 => {
                let (reg, off) = (c.uleb()?, c.sleb()?);
                self.rules.set(reg, Rule::At(off.checked_mul(self.cie.data_align)?));
            }
            0x12 => {
                self.rules.cfa_reg = c.uleb()?;
                self.rules.cfa_off = c.sleb()?.checked_mul(self.cie.data_align)?;
            }
            0x13 => self.rules.cfa_off = c.sleb()?.checked_mul(self.cie.data_align)?,
            0x14 | 0x15 | 0x10 | 0x16 => {
                let reg = c.uleb()?;
                if op == 0x10 || op == 0x16 {
                    let n = c.uleb()?;
                    c.skip(n)?;
                } else if op == 0x14 {
                    c.uleb()?;
                } else {
                    c.sleb()?;
                }
                self.rules.set(reg, Rule::Unknown);
            }
            // DW_CFA_def_cfa_expression: the CFA is computed; not followed.
            0x0f => {
                let n = c.uleb()?;
                c.skip(n)?;
                self.rules.cfa_reg = u64::MAX;
            }
            0x2f => {
                let (reg, off) = (c.uleb()?, c.uleb()?);
                self.rules.set(reg, Rule::At(self.offset(off)?.checked_neg()?));
            }
            _ => return None,
        }
        Some(None)
    }
}

/// The FDE covering `pc` in `o`, from `.eh_frame_hdr`'s sorted table.
fn find_fde(o: &Object, pc: usize) -> Option<usize> {
    let hdr = o.hdr;
    let mut c = Cursor::at(o, hdr)?;
    let (version, ptr_enc, count_enc, table_enc) = (c.u8()?, c.u8()?, c.u8()?, c.u8()?);
    // The table as linkers write it: pairs of 4-byte signed offsets from the header.
    if version != 1 || table_enc != 0x3b {
        return None;
    }
    c.pointer(ptr_enc, hdr)?;
    let count = c.pointer(count_enc, hdr)?;
    let table = c.pos;
    let entry = |i: usize| -> Option<(usize, usize)> {
        let mut e = Cursor { pos: table.checked_add(i.checked_mul(8)?)?, end: c.end };
        let loc = hdr.wrapping_add(e.u32()? as i32 as isize as usize);
        let fde = hdr.wrapping_add(e.u32()? as i32 as isize as usize);
        Some((loc, fde))
    };
    let (mut lo, mut hi) = (0usize, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if entry(mid)?.0 <= pc {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Some(entry(lo.checked_sub(1)?)?.1)
}

/// Reads one aligned word of the stack, [lo, hi).
fn stack_word(addr: usize, lo: usize, hi: usize) -> Option<usize> {
    let ok = addr >= lo && addr % 8 == 0 && addr.checked_add(8).is_some_and(|e| e <= hi);
    // SAFETY: [lo, hi) is the thread's stack (the caller's contract).
    ok.then(|| unsafe { std::ptr::read_volatile(addr as *const usize) })
}

/// Walks the stack from the interrupted registers: `pc` first, then each caller's return
/// address, into `out`; returns how many were written.
///
/// # Safety
/// [lo, hi) is the current thread's stack, readable, and `sp` the interrupted code's.
pub unsafe fn walk(pc: usize, sp: usize, fp: usize, lo: usize, hi: usize, out: &mut [usize]) -> usize {
    if out.is_empty() {
        return 0;
    }
    out[0] = pc;
    let (mut pc, mut sp, mut fp, mut n) = (pc, sp, fp, 1);
    while n < out.len() {
        // A return address points after its call: its frame is the call's (pc - 1).
        let at = if n == 1 { pc } else { pc.wrapping_sub(1) };
        let Some(step) = step(at, sp, fp, lo, hi) else { break };
        if step.ra == 0 || step.cfa <= sp {
            break;
        }
        out[n] = step.ra;
        n += 1;
        (pc, sp, fp) = (step.ra, step.cfa, step.fp);
    }
    n
}

struct Step {
    cfa: usize,
    ra: usize,
    fp: usize,
}

fn step(at: usize, sp: usize, fp: usize, lo: usize, hi: usize) -> Option<Step> {
    let o = object_of(at)?;
    let rules = rules_at(o, find_fde(o, at)?, at)?;
    let base = match rules.cfa_reg {
        RSP => sp,
        RBP => fp,
        _ => return None,
    };
    let cfa = base.checked_add_signed(rules.cfa_off as isize)?;
    let Rule::At(ra_off) = rules.ra else { return None };
    let ra = stack_word(cfa.checked_add_signed(ra_off as isize)?, lo, hi)?;
    let fp = match rules.rbp {
        Rule::At(off) => stack_word(cfa.checked_add_signed(off as isize)?, lo, hi)?,
        Rule::Same => fp,
        Rule::Unknown => 0,
    };
    Some(Step { cfa, ra, fp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_and_libc_are_listed_with_their_tables() {
        load_objects();
        let here = the_executable_and_libc_are_listed_with_their_tables as *const () as usize;
        let o = object_of(here).expect("this test's code is in a listed object");
        let fde = find_fde(o, here).expect("an FDE covers this function");
        let rules = rules_at(o, fde, here).expect("its rules at entry");
        // At a function's first instruction the CFA is the stack pointer plus the return
        // address, which is just below it.
        assert!(rules.cfa_reg == RSP && rules.cfa_off == 8 && rules.ra == Rule::At(-8));
        assert!(object_of(libc::getpid as *const () as usize).is_some());
        assert!(object_of(8).is_none());
    }

    #[test]
    fn leb128_and_pointer_encodings() {
        let data: Vec<u8> = vec![0xe5, 0x8e, 0x26, 0x7f, 0x80, 0x7f, 0xfc, 0xff, 0xff, 0xff];
        let start = data.as_ptr() as usize;
        let mut c = Cursor { pos: start, end: start + data.len() };
        assert_eq!(c.uleb(), Some(624_485));
        assert_eq!(c.sleb(), Some(-1));
        assert_eq!(c.sleb(), Some(-128));
        // sdata4, pc-relative: the field's address plus -4.
        let field = c.pos;
        assert_eq!(c.pointer(0x1b, 0), Some(field - 4));
        assert_eq!(c.u8(), None, "reads stop at the end");
    }
}
