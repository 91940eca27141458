//! A minimal JFR writer for hostile recordings: one chunk of a header, the events given, a
//! metadata event describing the classes given, and the checkpoints given (each pointing at
//! the next by its delta, or wherever a test says).
#![allow(dead_code)]

pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    for _ in 0..8 {
        if v < 0x80 {
            out.push(v as u8);
            return;
        }
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn utf8(out: &mut Vec<u8>, s: &str) {
    out.push(3);
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A field: (name, type id, constant pool, array).
pub type Field = (&'static str, u64, bool, bool);

pub struct Class {
    pub id: u64,
    pub name: &'static str,
    pub fields: Vec<Field>,
}

/// Type ids of the standard classes [`standard_classes`] describes.
pub const LONG: u64 = 20;
pub const INT: u64 = 21;
pub const BOOLEAN: u64 = 22;
pub const STRING: u64 = 23;
pub const SYMBOL: u64 = 30;
pub const CLASS: u64 = 31;
pub const METHOD: u64 = 32;
pub const FRAME: u64 = 33;
pub const STACK: u64 = 34;
pub const STATE: u64 = 35;
pub const EXECUTION_SAMPLE: u64 = 100;

/// The classes an execution sample needs, its `contextId` included.
pub fn standard_classes() -> Vec<Class> {
    let c = |id, name, fields: Vec<Field>| Class { id, name, fields };
    vec![
        c(LONG, "long", vec![]),
        c(INT, "int", vec![]),
        c(BOOLEAN, "boolean", vec![]),
        c(STRING, "java.lang.String", vec![]),
        c(SYMBOL, "jdk.types.Symbol", vec![("string", STRING, false, false)]),
        c(CLASS, "java.lang.Class", vec![("name", SYMBOL, true, false)]),
        c(METHOD, "jdk.types.Method", vec![("type", CLASS, true, false), ("name", SYMBOL, true, false)]),
        c(FRAME, "jdk.types.StackFrame", vec![("method", METHOD, true, false), ("lineNumber", INT, false, false)]),
        c(STACK, "jdk.types.StackTrace", vec![("truncated", BOOLEAN, false, false), ("frames", FRAME, false, true)]),
        c(STATE, "jdk.types.ThreadState", vec![("name", STRING, false, false)]),
        c(
            EXECUTION_SAMPLE,
            "jdk.ExecutionSample",
            vec![
                ("startTime", LONG, false, false),
                ("stackTrace", STACK, true, false),
                ("state", STATE, true, false),
                ("contextId", LONG, false, false),
            ],
        ),
    ]
}

/// The metadata event body of `classes` (after its size): type 0, times, id, strings,
/// root → metadata → classes → fields.
pub fn metadata(classes: &[Class]) -> Vec<u8> {
    let mut strings: Vec<String> = Vec::new();
    let mut idx = |s: &str| -> u64 {
        if let Some(i) = strings.iter().position(|x| x == s) {
            return i as u64;
        }
        strings.push(s.to_string());
        strings.len() as u64 - 1
    };
    let mut tree = Vec::new();
    let (root, meta) = (idx("root"), idx("metadata"));
    varint(&mut tree, root);
    varint(&mut tree, 0);
    varint(&mut tree, 1);
    varint(&mut tree, meta);
    varint(&mut tree, 0);
    varint(&mut tree, classes.len() as u64);
    for c in classes {
        let attrs = [(idx("id"), idx(&c.id.to_string())), (idx("name"), idx(c.name))];
        varint(&mut tree, idx("class"));
        varint(&mut tree, attrs.len() as u64);
        for (k, v) in attrs {
            varint(&mut tree, k);
            varint(&mut tree, v);
        }
        varint(&mut tree, c.fields.len() as u64);
        for &(name, ty, cp, array) in &c.fields {
            let mut attrs = vec![(idx("name"), idx(name)), (idx("class"), idx(&ty.to_string()))];
            if cp {
                attrs.push((idx("constantPool"), idx("true")));
            }
            if array {
                attrs.push((idx("dimension"), idx("1")));
            }
            varint(&mut tree, idx("field"));
            varint(&mut tree, attrs.len() as u64);
            for (k, v) in attrs {
                varint(&mut tree, k);
                varint(&mut tree, v);
            }
            varint(&mut tree, 0);
        }
    }
    let mut body = Vec::new();
    for v in [0, 0, 0, 1] {
        varint(&mut body, v);
    }
    varint(&mut body, strings.len() as u64);
    for s in &strings {
        utf8(&mut body, s);
    }
    body.extend_from_slice(&tree);
    body
}

/// One constant pool: its type id and its entries, each an id and its encoded value.
pub struct Pool {
    pub type_id: u64,
    pub entries: Vec<(u64, Vec<u8>)>,
}

/// A checkpoint event body (after its size) holding `pools`, with `delta` to the next.
pub fn checkpoint(pools: &[Pool], delta: i64) -> Vec<u8> {
    let mut body = Vec::new();
    for v in [1, 0, 0, delta as u64, 0, pools.len() as u64] {
        varint(&mut body, v);
    }
    for p in pools {
        varint(&mut body, p.type_id);
        varint(&mut body, p.entries.len() as u64);
        for (id, value) in &p.entries {
            varint(&mut body, *id);
            body.extend_from_slice(value);
        }
    }
    body
}

/// An event with its size field in front. The size is written in 5 bytes (a padded
/// varint), so that it can be computed before it is written.
pub fn sized(body: &[u8]) -> Vec<u8> {
    let size = body.len() as u64 + 5;
    let mut out = Vec::with_capacity(body.len() + 5);
    for i in 0..4 {
        out.push(((size >> (7 * i)) as u8 & 0x7f) | 0x80);
    }
    out.push((size >> 28) as u8 & 0x7f);
    out.extend_from_slice(body);
    out
}

/// A whole chunk: header, `events` (bodies), metadata of `classes`, then `checkpoints`
/// (bodies, already given their deltas); the header points at the first checkpoint.
pub fn chunk(classes: &[Class], checkpoints: &[Vec<u8>], events: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in events {
        body.extend_from_slice(&sized(e));
    }
    let metadata_offset = 68 + body.len() as u64;
    body.extend_from_slice(&sized(&metadata(classes)));
    let cp_offset = 68 + body.len() as u64;
    for c in checkpoints {
        body.extend_from_slice(&sized(c));
    }
    let mut out = b"FLR\0".to_vec();
    out.extend_from_slice(&0x0002_0000u32.to_be_bytes());
    for v in [68 + body.len() as u64, cp_offset, metadata_offset, 0, 0, 0, 1_000_000_000] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// An execution sample event body: stack trace `stack`, thread state 1, context `context`.
pub fn sample(stack: u64, context: u64) -> Vec<u8> {
    let mut e = Vec::new();
    for v in [EXECUTION_SAMPLE, 0, stack, 1, context] {
        varint(&mut e, v);
    }
    e
}

/// The pools of `methods` methods, each named `m<i>` in class `class_name`, one stack trace
/// (id 1) of `depth` frames cycling through them, and thread state 1 (`STATE_RUNNABLE`).
pub fn pools(class_name: &str, methods: u64, depth: u64) -> Vec<Pool> {
    let string = |s: &str| {
        let mut v = Vec::new();
        utf8(&mut v, s);
        v
    };
    let mut symbols = vec![(1, string(class_name))];
    let mut method_entries = Vec::new();
    for m in 0..methods {
        symbols.push((m + 2, string(&format!("m{m}"))));
        let mut v = Vec::new();
        varint(&mut v, 1);
        varint(&mut v, m + 2);
        method_entries.push((m, v));
    }
    let mut frames = vec![0u8];
    varint(&mut frames, depth);
    for d in 0..depth {
        varint(&mut frames, d % methods.max(1));
        varint(&mut frames, d);
    }
    let mut class = Vec::new();
    varint(&mut class, 1);
    vec![
        Pool { type_id: SYMBOL, entries: symbols },
        Pool { type_id: CLASS, entries: vec![(1, class)] },
        Pool { type_id: METHOD, entries: method_entries },
        Pool { type_id: STACK, entries: vec![(1, frames)] },
        Pool { type_id: STATE, entries: vec![(1, string("STATE_RUNNABLE"))] },
    ]
}

/// A one-chunk recording of those pools and `samples` execution samples of stack 1, the
/// i-th with context `i` (0: all the same context).
pub fn recording(class_name: &str, methods: u64, depth: u64, samples: u64, distinct_contexts: bool) -> Vec<u8> {
    let events: Vec<Vec<u8>> = (0..samples).map(|i| sample(1, if distinct_contexts { i } else { 0 })).collect();
    chunk(&standard_classes(), &[checkpoint(&pools(class_name, methods, depth), 0)], &events)
}

/// Two checkpoints, each pointing at the other.
pub fn looping_chain() -> Vec<u8> {
    let pools = pools("C", 1, 1);
    // The first one's delta is its own size, which its delta's encoding changes.
    let mut len = 0;
    let a = loop {
        let a = checkpoint(&pools, len);
        if sized(&a).len() as i64 == len {
            break a;
        }
        len = sized(&a).len() as i64;
    };
    let b = checkpoint(&[], -len);
    chunk(&standard_classes(), &[a, b], &[sample(1, 0)])
}

/// A stack trace pool declaring 2^40 entries.
pub fn huge_count() -> Vec<u8> {
    let mut cp = Vec::new();
    for v in [1u64, 0, 0, 0, 0, 1, STACK, 1 << 40] {
        varint(&mut cp, v);
    }
    chunk(&standard_classes(), &[cp], &[])
}

/// Metadata whose root holds an element 100,000 deep.
pub fn deep_metadata() -> Vec<u8> {
    let mut body = Vec::new();
    for v in [0u64, 0, 0, 1, 1] {
        varint(&mut body, v);
    }
    utf8(&mut body, "root");
    for _ in 0..100_000 {
        body.extend_from_slice(&[0, 0, 1]);
    }
    // A valid empty chunk, then one whose metadata is the deep one.
    let mut out = chunk(&standard_classes(), &[checkpoint(&[], 0)], &[]);
    let meta = sized(&body);
    let cp = sized(&checkpoint(&[], 0));
    let mut chunk = b"FLR\0".to_vec();
    chunk.extend_from_slice(&0x0002_0000u32.to_be_bytes());
    let size = 68 + meta.len() + cp.len();
    for v in [size as u64, 68 + meta.len() as u64, 68, 0, 0, 0, 1_000_000_000] {
        chunk.extend_from_slice(&v.to_be_bytes());
    }
    chunk.extend_from_slice(&1u32.to_be_bytes());
    chunk.extend_from_slice(&meta);
    chunk.extend_from_slice(&cp);
    out.extend_from_slice(&chunk);
    out
}
