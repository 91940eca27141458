//! A chunk's constant pools: the checkpoint events chained from the chunk header, and of
//! their pools the entries conversion needs (stack traces, methods, classes, symbols, thread
//! states, strings). Entries of other types are read past by their metadata.
//!
//! Bounds: the chain visits each offset at most once (a loop is an error), entry counts are
//! bounded by the bytes left, and what is kept per entry is a few words, so the pools cost a
//! small multiple of the chunk. Ids are resolved lazily and never recursively (frame →
//! method → class → symbol is a fixed path), so cyclic references cannot loop.
use super::metadata::Types;
use super::plan::{Expect, Plan, Values};
use super::reader::{JfrStr, Reader};
use super::JfrError;
use rustc_hash::{FxHashMap, FxHashSet};

/// One frame of a stack trace: its method's id and its line as jfr-parser keeps it (the
/// int's low 32 bits, unsigned).
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub method: u64,
    pub line: u32,
}

#[derive(Debug, Default)]
pub struct Pools<'a> {
    pub strings: FxHashMap<u64, JfrStr<'a>>,
    pub symbols: FxHashMap<u64, JfrStr<'a>>,
    /// Class id → the symbol id of its name.
    pub classes: FxHashMap<u64, u64>,
    /// Method id → (class id, symbol id of its name).
    pub methods: FxHashMap<u64, (u64, u64)>,
    pub thread_states: FxHashMap<u64, JfrStr<'a>>,
    /// Stack trace id → its frames in `frames` (start, length), leaf first.
    pub stacks: FxHashMap<u64, (u32, u32)>,
    pub frames: Vec<Frame>,
}

impl<'a> Pools<'a> {
    /// Text of a string as read: an inline one, or one from the string pool ("" if absent).
    pub fn text<'s>(&'s self, s: &'s JfrStr<'a>) -> &'s str {
        match s {
            JfrStr::Empty => "",
            JfrStr::Text(t) => t,
            JfrStr::Pool(id) => match self.strings.get(id) {
                Some(JfrStr::Text(t)) => t,
                _ => "",
            },
        }
    }

    pub fn symbol(&self, id: u64) -> &str {
        self.symbols.get(&id).map_or("", |s| self.text(s))
    }

    /// Reads every checkpoint of the chunk `chunk`, starting at offset `first` in it.
    pub fn read(types: &Types, chunk: &'a [u8], first: u64) -> Result<Pools<'a>, JfrError> {
        let mut pools = Pools::default();
        let readers = PoolReaders::new(types);
        let mut seen = FxHashSet::default();
        let mut offset = first;
        loop {
            if offset < super::chunk::HEADER_SIZE as u64 || offset >= chunk.len() as u64 {
                return Err(JfrError::new(format!(
                    "a constant pool offset {offset} lies outside its chunk of {} bytes",
                    chunk.len()
                )));
            }
            if !seen.insert(offset) {
                return Err(JfrError::new(format!("the constant pool chain loops back to offset {offset}")));
            }
            let mut r = Reader::new(&chunk[offset as usize..]);
            let delta = pools.read_checkpoint(types, &readers, &mut r)?;
            if delta == 0 {
                return Ok(pools);
            }
            offset = offset.wrapping_add(delta as u64);
        }
    }

    /// Reads one checkpoint event; returns its delta to the next one (0: the last).
    fn read_checkpoint(&mut self, types: &Types, readers: &PoolReaders, r: &mut Reader<'a>) -> Result<i64, JfrError> {
        let r = &mut r.event("checkpoint event")?;
        let event_type = r.varint("checkpoint type")?;
        if event_type != 1 {
            return Err(JfrError::new(format!(
                "a constant pool offset points at an event of type {event_type}, not 1"
            )));
        }
        r.varint("checkpoint start time")?;
        r.varint("checkpoint duration")?;
        let delta = r.varint("checkpoint delta")? as i64;
        r.varint("checkpoint flush flag")?;
        let n = r.count("checkpoint pools")?;
        for _ in 0..n {
            let type_id = r.varint("pool type")?;
            let class = types
                .index_of(type_id)
                .ok_or_else(|| JfrError::new(format!("a constant pool of type id {type_id}, which no class has")))?;
            self.read_pool(types, readers, class, r)?;
        }
        Ok(delta)
    }

    fn read_pool(
        &mut self,
        types: &Types,
        readers: &PoolReaders,
        class: u32,
        r: &mut Reader<'a>,
    ) -> Result<(), JfrError> {
        let name = types.classes[class as usize].name.as_str();
        if name == "jdk.types.ChunkHeader" {
            // As jfr-parser reads it: a chunk header's bytes, no count.
            return r.skip(super::chunk::HEADER_SIZE, "chunk header pool");
        }
        let n = r.count(name)?;
        let mut v = Values::default();
        for _ in 0..n {
            let id = r.varint("constant id")?;
            match name {
                "jdk.types.StackTrace" => self.read_stack(types, readers, id, r, &mut v)?,
                "jdk.types.Method" => {
                    readers.method.read(types, r, &mut v, no_array)?;
                    self.methods.insert(id, (v.ints[0], v.ints[1]));
                }
                "java.lang.Class" => {
                    readers.class.read(types, r, &mut v, no_array)?;
                    self.classes.insert(id, v.ints[0]);
                }
                "jdk.types.Symbol" | "jdk.types.ThreadState" => {
                    let plan = if name == "jdk.types.Symbol" { &readers.symbol } else { &readers.thread_state };
                    plan.read(types, r, &mut v, no_array)?;
                    let s = v.strs[0].take().unwrap_or(JfrStr::Empty);
                    let map = if name == "jdk.types.Symbol" { &mut self.symbols } else { &mut self.thread_states };
                    map.insert(id, s);
                }
                "java.lang.String" => {
                    let s = r.string("string constant")?;
                    self.strings.insert(id, s);
                }
                _ => types.skip_value(r, super::metadata::Kind::Struct(class))?,
            }
        }
        Ok(())
    }

    fn read_stack(
        &mut self,
        types: &Types,
        readers: &PoolReaders,
        id: u64,
        r: &mut Reader<'a>,
        v: &mut Values<'a>,
    ) -> Result<(), JfrError> {
        let start = self.frames.len();
        let frames = &mut self.frames;
        let mut fv = Values::default();
        readers.stack.read(types, r, v, |r, _, n| {
            for _ in 0..n {
                readers.frame.read(types, r, &mut fv, no_array)?;
                frames.push(Frame { method: fv.ints[0], line: fv.ints[1] as u32 });
            }
            Ok(())
        })?;
        let (start, len) = (u32::try_from(start), u32::try_from(self.frames.len() - start));
        let (Ok(start), Ok(len)) = (start, len) else {
            return Err(JfrError::new("more than 2^32 stack frames"));
        };
        self.stacks.insert(id, (start, len));
        Ok(())
    }

    /// The frames of stack trace `id`, leaf first.
    pub fn stack(&self, id: u64) -> Option<&[Frame]> {
        let &(start, len) = self.stacks.get(&id)?;
        Some(&self.frames[start as usize..(start + len) as usize])
    }
}

fn no_array(_: &mut Reader<'_>, _: u8, _: usize) -> Result<(), JfrError> {
    unreachable!("plans without Expect::Array bind no array")
}

/// The plans of the pool types conversion reads (an absent type gets an empty plan that
/// is never run: a pool of a type is only read if the type exists).
struct PoolReaders {
    stack: Plan,
    frame: Plan,
    method: Plan,
    class: Plan,
    symbol: Plan,
    thread_state: Plan,
}

impl PoolReaders {
    fn new(types: &Types) -> Self {
        let plan = |name: &str, wants: &[(&str, Expect)]| {
            let class = types.classes.iter().position(|c| c.name == name).map_or(u32::MAX, |i| i as u32);
            Plan::new(types, class, wants)
        };
        PoolReaders {
            stack: plan("jdk.types.StackTrace", &[("frames", Expect::Array("jdk.types.StackFrame"))]),
            frame: plan(
                "jdk.types.StackFrame",
                &[("method", Expect::Ref("jdk.types.Method")), ("lineNumber", Expect::Int)],
            ),
            method: plan(
                "jdk.types.Method",
                &[("type", Expect::Ref("java.lang.Class")), ("name", Expect::Ref("jdk.types.Symbol"))],
            ),
            class: plan("java.lang.Class", &[("name", Expect::Ref("jdk.types.Symbol"))]),
            symbol: plan("jdk.types.Symbol", &[("string", Expect::Str)]),
            thread_state: plan("jdk.types.ThreadState", &[("name", Expect::Str)]),
        }
    }
}
