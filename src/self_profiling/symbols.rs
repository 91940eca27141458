//! Program counters to function names: kiln's own functions from the ELF symbol table of
//! `/proc/self/exe` (read once: each function's address, size and where its name is; a name
//! is read from the file when a sample first needs it), shared libraries' through `dladdr`.
//! Rust's legacy mangling (`_ZN…17h<hash>E`) is demangled here.
use rustc_hash::FxHashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

const SHT_SYMTAB: u32 = 2;
const STT_FUNC: u8 = 2;
const PT_LOAD: u32 = 1;
const PT_PHDR: u32 = 6;
/// Names cached across pushes; past it the cache starts over.
const MAX_CACHED_NAMES: usize = 1 << 16;
/// The longest name read from the file.
const MAX_NAME: usize = 4096;

/// One function of the executable: its link-time address, size, and its name's offset in
/// the file.
#[derive(Clone, Copy)]
struct Func {
    addr: u64,
    size: u64,
    name_at: u64,
}

/// The executable's functions, sorted by address, and the load bias of this run.
pub struct Symbols {
    file: File,
    bias: u64,
    funcs: Vec<Func>,
    names: FxHashMap<u64, std::rc::Rc<str>>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("/proc/self/exe: {what}"))
}

fn read_at(file: &File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| bad("section too large"))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

impl Symbols {
    /// Reads the running executable's function symbols.
    pub fn load() -> std::io::Result<Symbols> {
        let file = File::open("/proc/self/exe")?;
        let header = read_at(&file, 0, 64)?;
        // ELF64, little-endian (x86_64, aarch64).
        if header.get(..4) != Some(b"\x7fELF") || header[4] != 2 || header[5] != 1 {
            return Err(bad("not a 64-bit little-endian ELF file"));
        }
        let field = |at, size| match size {
            2 => u16_at(&header, at).map(u64::from),
            _ => u64_at(&header, at),
        };
        let (Some(phoff), Some(shoff), Some(phnum), Some(shentsize), Some(shnum)) =
            (field(0x20, 8), field(0x28, 8), field(0x38, 2), field(0x3A, 2), field(0x3C, 2))
        else {
            return Err(bad("short header"));
        };
        if shentsize != 64 {
            return Err(bad("unexpected section header size"));
        }
        let phdrs = read_at(&file, phoff, phnum * 56)?;
        let bias = load_bias(&phdrs, phoff)?;
        let shdrs = read_at(&file, shoff, shnum * 64)?;
        let section = |i: usize| -> Option<(u32, u64, u64, u32)> {
            let s = i.checked_mul(64)?;
            Some((u32_at(&shdrs, s + 4)?, u64_at(&shdrs, s + 24)?, u64_at(&shdrs, s + 32)?, u32_at(&shdrs, s + 40)?))
        };
        let symtab = (0..shnum as usize).filter_map(section).find(|s| s.0 == SHT_SYMTAB);
        let Some((_, sym_off, sym_size, strtab_index)) = symtab else {
            return Err(bad("no symbol table (a stripped binary): frames are named by address"));
        };
        let Some((_, str_off, str_size, _)) = section(strtab_index as usize) else {
            return Err(bad("the symbol table's string table is missing"));
        };
        let syms = read_at(&file, sym_off, sym_size)?;
        let mut funcs: Vec<Func> = syms
            .chunks_exact(24)
            .filter_map(|s| {
                let (name, info, addr, size) = (u32_at(s, 0)?, s[4], u64_at(s, 8)?, u64_at(s, 16)?);
                let is_func = info & 0xf == STT_FUNC && addr != 0 && u64::from(name) < str_size;
                is_func.then_some(Func { addr, size, name_at: str_off + u64::from(name) })
            })
            .collect();
        funcs.sort_unstable_by_key(|f| f.addr);
        funcs.dedup_by_key(|f| f.addr);
        funcs.shrink_to_fit();
        Ok(Symbols { file, bias, funcs, names: FxHashMap::default() })
    }

    /// The name of the function holding `pc`, demangled: the executable's, else a shared
    /// library's (`dladdr`), else the library's file name in brackets, else `[unknown]`.
    pub fn name(&mut self, pc: usize) -> std::rc::Rc<str> {
        if let Some(f) = self.func_at(pc) {
            if let Some(n) = self.names.get(&f.name_at) {
                return n.clone();
            }
            if self.names.len() >= MAX_CACHED_NAMES {
                self.names.clear();
            }
            let name: std::rc::Rc<str> = match self.read_name(f.name_at) {
                Some(raw) => demangle(&raw).into(),
                None => "[unknown]".into(),
            };
            self.names.insert(f.name_at, name.clone());
            return name;
        }
        dl_name(pc).into()
    }

    fn func_at(&self, pc: usize) -> Option<Func> {
        let addr = (pc as u64).checked_sub(self.bias)?;
        let i = self.funcs.partition_point(|f| f.addr <= addr).checked_sub(1)?;
        let f = self.funcs[i];
        // A symbol of size 0 (`_init`, `_fini`) covers up to the next one; the last, nothing
        // (what lies above the executable is a shared library's).
        let end = if f.size > 0 { f.addr + f.size } else { self.funcs.get(i + 1).map_or(0, |n| n.addr) };
        (addr < end).then_some(f)
    }

    fn read_name(&self, at: u64) -> Option<String> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        while out.len() < MAX_NAME {
            let n = self.file.read_at(&mut chunk, at + out.len() as u64).ok()?;
            if n == 0 {
                return None;
            }
            if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return String::from_utf8(out).ok();
            }
            out.extend_from_slice(&chunk[..n]);
        }
        None
    }
}

/// Run-time address minus link-time address: where the kernel put the program headers
/// (`AT_PHDR`) minus where the file says they are.
fn load_bias(phdrs: &[u8], phoff: u64) -> std::io::Result<u64> {
    let header = |i: usize| -> Option<(u32, u64, u64)> {
        let p = i * 56;
        Some((u32_at(phdrs, p)?, u64_at(phdrs, p + 8)?, u64_at(phdrs, p + 16)?))
    };
    let headers: Vec<_> = (0..phdrs.len() / 56).filter_map(header).collect();
    let linked = match headers.iter().find(|h| h.0 == PT_PHDR) {
        Some(&(_, _, vaddr)) => vaddr,
        None => {
            let first = headers.iter().find(|h| h.0 == PT_LOAD && h.1 == 0).ok_or_else(|| bad("no PT_LOAD at 0"))?;
            first.2 + phoff
        }
    };
    // SAFETY: getauxval has no preconditions.
    let at_phdr = unsafe { libc::getauxval(libc::AT_PHDR) };
    at_phdr.checked_sub(linked).ok_or_else(|| bad("program headers below their link address"))
}

/// A shared library's symbol for `pc`, or its file name in brackets.
fn dl_name(pc: usize) -> String {
    // SAFETY: dladdr fills `info` (zeroed) and returns 0 when it finds nothing; its strings
    // are NUL-terminated and live as long as the library stays loaded (libraries linked at
    // start are never unloaded).
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(pc as *const libc::c_void, &mut info) == 0 {
            return "[unknown]".into();
        }
        if !info.dli_sname.is_null() {
            return demangle(&std::ffi::CStr::from_ptr(info.dli_sname).to_string_lossy());
        }
        if !info.dli_fname.is_null() {
            let path = std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy();
            return format!("[{}]", path.rsplit('/').next().unwrap_or(&path));
        }
        "[unknown]".into()
    }
}

/// Rust's legacy mangling, `_ZN` then length-prefixed path segments then `E`: the segments
/// joined with `::`, the trailing `h<16 hex digits>` hash dropped, `$LT$`-style escapes and
/// `..` undone, an LLVM suffix (`.llvm.123`) dropped. Any other name is returned as is.
pub fn demangle(name: &str) -> String {
    let Some(mut rest) = name.strip_prefix("_ZN").or_else(|| name.strip_prefix("__ZN")) else {
        return name.to_string();
    };
    let mut segments = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix('E') {
            if after.is_empty() || after.starts_with('.') {
                break;
            }
            return name.to_string();
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(len) = rest[..digits].parse::<usize>() else {
            return name.to_string();
        };
        let Some(segment) = rest.get(digits..digits + len) else {
            return name.to_string();
        };
        segments.push(segment);
        rest = &rest[digits + len..];
    }
    let is_hash = |s: &str| s.len() == 17 && s.starts_with('h') && s[1..].bytes().all(|b| b.is_ascii_hexdigit());
    if segments.len() > 1 && segments.last().is_some_and(|s| is_hash(s)) {
        segments.pop();
    }
    segments.iter().map(|s| unescape(s)).collect::<Vec<_>>().join("::")
}

/// One segment's escapes: `$LT$` `<`, `$GT$` `>`, `$RF$` `&`, `$BP$` `*`, `$C$` `,`,
/// `$SP$` `@`, `$uXX$` the character of that code point, `..` `::`, a leading `_$` `$`.
fn unescape(segment: &str) -> String {
    let mut s = if segment.starts_with("_$") { &segment[1..] } else { segment };
    let mut out = String::with_capacity(s.len());
    while !s.is_empty() {
        if let Some(r) = s.strip_prefix("..") {
            out.push_str("::");
            s = r;
            continue;
        }
        if let Some(body) = s.strip_prefix('$') {
            if let Some(end) = body.find('$') {
                let code = &body[..end];
                let ch = match code {
                    "LT" => Some('<'),
                    "GT" => Some('>'),
                    "RF" => Some('&'),
                    "BP" => Some('*'),
                    "C" => Some(','),
                    "SP" => Some('@'),
                    _ => code.strip_prefix('u').and_then(|h| u32::from_str_radix(h, 16).ok()).and_then(char::from_u32),
                };
                if let Some(ch) = ch {
                    out.push(ch);
                    s = &body[end + 1..];
                    continue;
                }
            }
        }
        let ch = s.chars().next().expect("non-empty");
        out.push(ch);
        s = &s[ch.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_rust_legacy_names() {
        assert_eq!(
            demangle("_ZN4kiln14self_profiling7sampler4walk17h0123456789abcdefE"),
            "kiln::self_profiling::sampler::walk"
        );
        assert_eq!(
            demangle(
                "_ZN70_$LT$alloc..vec..Vec$LT$T$C$A$GT$$u20$as$u20$core..ops..drop..Drop$GT$4drop17hd1f2c3b4a5e6f708E"
            ),
            "<alloc::vec::Vec<T,A> as core::ops::drop::Drop>::drop"
        );
        assert_eq!(demangle("_ZN4core3ptr13drop_in_place17h1111111111111111E.llvm.42"), "core::ptr::drop_in_place");
        assert_eq!(demangle("_ZN3foo28_$u7b$$u7b$closure$u7d$$u7d$17h0123456789abcdefE"), "foo::{{closure}}");
        assert_eq!(demangle("_ZN3std2rt10lang_start17h0000000000000000E"), "std::rt::lang_start");
        assert_eq!(demangle("_ZN3foo3RefE"), "foo::Ref");
    }

    #[test]
    fn leaves_other_names_alone() {
        for n in ["memcpy", "_ZN3foo", "_ZN99tooshortE", "_ZN3fooXE", "main", "_ZNK3Foo3barEv", ""] {
            assert_eq!(demangle(n), n);
        }
    }

    #[inline(never)]
    fn a_function_to_find() -> usize {
        std::hint::black_box(7)
    }

    #[test]
    fn finds_a_function_of_this_binary_by_its_address() {
        let mut s = Symbols::load().expect("the test binary has a symbol table");
        let f = a_function_to_find as *const () as usize;
        assert_eq!(a_function_to_find(), 7);
        for pc in [f, f + 1] {
            let name = s.name(pc);
            assert!(name.ends_with("symbols::tests::a_function_to_find"), "{pc:#x}: {name}");
        }
        // A second lookup is the cached name.
        assert!(std::rc::Rc::ptr_eq(&s.name(f), &s.name(f)));
    }

    #[test]
    fn a_shared_library_function_is_named_by_dladdr() {
        let mut s = Symbols::load().unwrap();
        let name = s.name(libc::getpid as *const () as usize);
        assert!(name.contains("getpid"), "{name}");
        assert_eq!(&*s.name(8), "[unknown]");
    }
}
