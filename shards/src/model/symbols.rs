//! A core's symbol tables for one tenant: strings, functions, mappings and locations interned
//! once, and stack traces as a parent-pointer tree of location ids.
//!
//! Ownership: a `Symbols` lives inside a `TenantHead`, which belongs to exactly one core; it is
//! never shared or locked. Ids are stable for the life of the head, so profiles refer to a
//! whole stack by one `u32` and shared prefixes are stored once.
use crate::model::profile::{Function, Line, Mapping, Profile};
use rustc_hash::FxHashMap;
use std::rc::Rc;

/// Stack node 0 is the virtual root; a real stack id is never 0.
pub const ROOT: u32 = 0;

#[derive(Debug, Default)]
pub struct Strings {
    ids: FxHashMap<Rc<str>, u32>,
    list: Vec<Rc<str>>,
    bytes: usize,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.intern("");
        s
    }
    /// A table that answers `get`/`len` for `list` as it is (decoded blocks). The lookup map
    /// stays empty: interning into it is memory-safe but does not find the listed strings.
    fn from_list(list: Vec<String>) -> Self {
        let bytes = list.iter().map(String::len).sum();
        Strings { ids: FxHashMap::default(), list: list.into_iter().map(Rc::from).collect(), bytes }
    }

    pub fn intern(&mut self, v: &str) -> u32 {
        if let Some(id) = self.ids.get(v) {
            return *id;
        }
        let id = self.list.len() as u32;
        self.bytes += v.len();
        let rc: Rc<str> = Rc::from(v);
        self.list.push(rc.clone());
        self.ids.insert(rc, id);
        id
    }
    pub fn get(&self, id: u32) -> &str {
        &self.list[id as usize]
    }
    pub fn len(&self) -> usize {
        self.list.len()
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocationRec {
    pub mapping: u32,
    pub address: u64,
    pub lines: Box<[Line]>,
}

#[derive(Debug)]
pub struct Symbols {
    pub strings: Strings,
    pub functions: Vec<Function>,
    function_ids: FxHashMap<Function, u32>,
    /// Index 0 is the "no mapping" placeholder, so a location's `mapping` is a direct index.
    pub mappings: Vec<Mapping>,
    mapping_ids: FxHashMap<Mapping, u32>,
    pub locations: Vec<LocationRec>,
    /// Location content hash → first location with that hash; `location_next` chains the
    /// rest. Looking a location up needs no allocation, and each location is stored once.
    location_ids: FxHashMap<u64, u32>,
    location_next: Vec<u32>,
    line_scratch: Vec<Line>,
    /// Stack tree: `parent[n]` and `location[n]` of node n; node 0 is the root.
    pub parent: Vec<u32>,
    pub location: Vec<u32>,
    children: FxHashMap<(u32, u32), u32>,
    /// A whole stack's content key (`stackkey`) → its node. The chance of two different
    /// stacks sharing a key is ~n²/2¹²⁹: nil for any head. A cache of the tree: a stack
    /// interned another way (`intern_stack`, `import_stack`) is not in it, and is found by
    /// its walk when a keyed intern misses.
    stack_index: FxHashMap<u128, u32>,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

/// Maps one profile's dense indices to this table's ids, filled lazily (u32::MAX = not yet).
pub struct Remap {
    strings: Vec<u32>,
    functions: Vec<u32>,
    mappings: Vec<u32>,
    locations: Vec<u32>,
    /// Locations mapped so far: each cost a lookup of its lines, functions and strings.
    mapped: usize,
}

const UNSET: u32 = u32::MAX;

/// What mapping one of a profile's locations to a head's costs, in frames walked
/// (`intern_keyed`): its lines, functions and strings are looked up, where a frame already
/// mapped is an array read.
pub const LOCATION_FRAMES: usize = 64;

/// `Symbols::intern_keyed`'s scratch, reused from batch to batch: what the index had for
/// each of the batch's keys.
#[derive(Default)]
pub struct StackBatch {
    found: Vec<Option<u32>>,
}

/// Maps another table's ids (a block's decoded symbols) to this table's, filled lazily
/// (`UNSET` = not yet): what `Symbols::import_stack` keeps per source table.
pub struct Import {
    strings: Vec<u32>,
    functions: Vec<u32>,
    mappings: Vec<u32>,
    locations: Vec<u32>,
    stacks: Vec<u32>,
    path: Vec<u32>,
}

impl Import {
    pub fn new(src: &Symbols) -> Self {
        Import {
            strings: vec![UNSET; src.strings.len()],
            functions: vec![UNSET; src.functions.len()],
            mappings: vec![UNSET; src.mappings.len()],
            locations: vec![UNSET; src.locations.len()],
            stacks: vec![UNSET; src.parent.len()],
            path: Vec::new(),
        }
    }

    /// Heap bytes held: four bytes per entry of the source table.
    pub fn heap_bytes(&self) -> usize {
        4 * (self.strings.len() + self.functions.len() + self.mappings.len() + self.locations.len() + self.stacks.len())
    }
}

impl Remap {
    pub fn new(p: &Profile) -> Self {
        Remap {
            strings: vec![UNSET; p.strings.len()],
            functions: vec![UNSET; p.functions.len()],
            mappings: vec![UNSET; p.mappings.len()],
            locations: vec![UNSET; p.locations.len()],
            mapped: 0,
        }
    }

    /// How many of the profile's locations are mapped so far.
    pub fn mapped(&self) -> usize {
        self.mapped
    }
}

impl Symbols {
    pub fn new() -> Self {
        Symbols {
            strings: Strings::new(),
            functions: Vec::new(),
            function_ids: FxHashMap::default(),
            mappings: vec![Mapping::default()],
            mapping_ids: FxHashMap::default(),
            locations: Vec::new(),
            location_ids: FxHashMap::default(),
            location_next: Vec::new(),
            line_scratch: Vec::new(),
            parent: vec![ROOT],
            location: vec![u32::MAX],
            children: FxHashMap::default(),
            stack_index: FxHashMap::default(),
        }
    }

    /// A read-only table built from decoded parts (a block's symbols.symdb), for queries: they
    /// read `strings.get`, `functions`, `mappings`, `locations`, `parent`, `location` and
    /// `stack_count()`, all answered as given.
    ///
    /// The interning maps (strings, functions, mappings, locations, children, whole stacks)
    /// are left empty: building them would cost a hash of every entry for tables that are only
    /// read. Interning into such a table is memory-safe but does not deduplicate against the
    /// loaded entries.
    ///
    /// The caller guarantees the cross-references are in range (`block::symdb::decode` checks
    /// them all): function strings → `strings`, line functions → `functions`, location
    /// mappings → `mappings`, `parent[n] < n` for n > 0, `parent[0] == 0` and
    /// `location[n] < locations.len()` for n > 0, `parent.len() == location.len() >= 1`.
    pub fn from_parts(
        strings: Vec<String>,
        functions: Vec<Function>,
        mappings: Vec<Mapping>,
        locations: Vec<LocationRec>,
        parent: Vec<u32>,
        location: Vec<u32>,
    ) -> Symbols {
        debug_assert_eq!(parent.len(), location.len());
        Symbols {
            strings: Strings::from_list(strings),
            functions,
            function_ids: FxHashMap::default(),
            mappings,
            mapping_ids: FxHashMap::default(),
            // No chains: every loaded location ends its own (empty) chain, so a later intern
            // that walks `location_next` stays in bounds.
            location_next: vec![UNSET; locations.len()],
            locations,
            location_ids: FxHashMap::default(),
            line_scratch: Vec::new(),
            parent,
            location,
            children: FxHashMap::default(),
            stack_index: FxHashMap::default(),
        }
    }

    fn string(&mut self, p: &Profile, r: &mut Remap, i: u32) -> u32 {
        let slot = &mut r.strings[i as usize];
        if *slot == UNSET {
            *slot = self.strings.intern(p.string(i));
        }
        *slot
    }

    fn function(&mut self, p: &Profile, r: &mut Remap, i: u32) -> u32 {
        if r.functions[i as usize] != UNSET {
            return r.functions[i as usize];
        }
        let f = p.functions[i as usize];
        let rec = Function {
            name: self.string(p, r, f.name),
            system_name: self.string(p, r, f.system_name),
            filename: self.string(p, r, f.filename),
            start_line: f.start_line,
        };
        let id = self.intern_function(rec);
        r.functions[i as usize] = id;
        id
    }

    /// A function whose strings are this table's already.
    fn intern_function(&mut self, rec: Function) -> u32 {
        let next = self.functions.len() as u32;
        let id = *self.function_ids.entry(rec).or_insert(next);
        if id == next {
            self.functions.push(rec);
        }
        id
    }

    fn mapping(&mut self, p: &Profile, r: &mut Remap, i: u32) -> u32 {
        if r.mappings[i as usize] != UNSET {
            return r.mappings[i as usize];
        }
        let m = &p.mappings[i as usize];
        let rec =
            Mapping { filename: self.string(p, r, m.filename), build_id: self.string(p, r, m.build_id), ..m.clone() };
        let id = self.intern_mapping(rec);
        r.mappings[i as usize] = id;
        id
    }

    /// A mapping whose strings are this table's already.
    fn intern_mapping(&mut self, rec: Mapping) -> u32 {
        let next = self.mappings.len() as u32;
        let id = *self.mapping_ids.entry(rec.clone()).or_insert(next);
        if id == next {
            self.mappings.push(rec);
        }
        id
    }

    /// The location's id here. The check for one mapped already is inlined into the stack
    /// loops (a stack's frames are mostly such), the first mapping of each is not: its
    /// register-saving frame cost every frame ~10% of a replay's core time when it was one.
    #[inline(always)]
    fn location(&mut self, p: &Profile, r: &mut Remap, i: u32) -> u32 {
        match r.locations[i as usize] {
            UNSET => self.map_location(p, r, i),
            id => id,
        }
    }

    #[inline(never)]
    fn map_location(&mut self, p: &Profile, r: &mut Remap, i: u32) -> u32 {
        let l = &p.locations[i as usize];
        let mapping = if l.mapping == 0 { 0 } else { self.mapping(p, r, l.mapping - 1) };
        let mut lines = std::mem::take(&mut self.line_scratch);
        lines.clear();
        for ln in &l.lines {
            lines.push(Line { function: self.function(p, r, ln.function), line: ln.line });
        }
        let id = self.intern_location(mapping, l.address, &lines);
        self.line_scratch = lines;
        r.locations[i as usize] = id;
        r.mapped += 1;
        id
    }

    /// A location whose mapping and functions are this table's already; stored once.
    fn intern_location(&mut self, mapping: u32, address: u64, lines: &[Line]) -> u32 {
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = rustc_hash::FxHasher::default();
            (mapping, address, lines).hash(&mut h);
            h.finish()
        };
        let mut id = self.location_ids.get(&key).copied().unwrap_or(UNSET);
        while id != UNSET {
            let rec = &self.locations[id as usize];
            if rec.mapping == mapping && rec.address == address && *rec.lines == *lines {
                break;
            }
            id = self.location_next[id as usize];
        }
        if id == UNSET {
            id = self.locations.len() as u32;
            let first = self.location_ids.insert(key, id).unwrap_or(UNSET);
            self.location_next.push(first);
            self.locations.push(LocationRec { mapping, address, lines: lines.into() });
        }
        id
    }

    /// The node of `src`'s stack node `node` in this table, interning the stack (and its
    /// locations, functions, mappings and strings) on first use; `imp` remembers what is
    /// mapped already, so each source entry is looked at once. How a compaction rewrites
    /// every input block's stack ids into its output's one table.
    pub fn import_stack(&mut self, src: &Symbols, imp: &mut Import, node: u32) -> u32 {
        // The unmapped ancestors, leaf first: ids ascend from the root (I7), and a mapped
        // ancestor ends the walk, so a stack shared with earlier ones costs one lookup.
        let mut path = std::mem::take(&mut imp.path);
        path.clear();
        let mut n = node;
        while n != ROOT && imp.stacks[n as usize] == UNSET {
            path.push(n);
            n = src.parent[n as usize];
        }
        let mut out = if n == ROOT { ROOT } else { imp.stacks[n as usize] };
        for &n in path.iter().rev() {
            let loc = self.import_location(src, imp, src.location[n as usize]);
            out = self.child(out, loc);
            imp.stacks[n as usize] = out;
        }
        imp.path = path;
        out
    }

    fn import_string(&mut self, src: &Symbols, imp: &mut Import, i: u32) -> u32 {
        let slot = &mut imp.strings[i as usize];
        if *slot == UNSET {
            *slot = self.strings.intern(src.strings.get(i));
        }
        *slot
    }

    fn import_function(&mut self, src: &Symbols, imp: &mut Import, i: u32) -> u32 {
        if imp.functions[i as usize] == UNSET {
            let f = src.functions[i as usize];
            let rec = Function {
                name: self.import_string(src, imp, f.name),
                system_name: self.import_string(src, imp, f.system_name),
                filename: self.import_string(src, imp, f.filename),
                start_line: f.start_line,
            };
            imp.functions[i as usize] = self.intern_function(rec);
        }
        imp.functions[i as usize]
    }

    fn import_location(&mut self, src: &Symbols, imp: &mut Import, i: u32) -> u32 {
        if imp.locations[i as usize] != UNSET {
            return imp.locations[i as usize];
        }
        let l = &src.locations[i as usize];
        // Mapping 0 is "no mapping" in both tables.
        let mapping = match l.mapping {
            0 => 0,
            m if imp.mappings[m as usize] != UNSET => imp.mappings[m as usize],
            m => {
                let rec = &src.mappings[m as usize];
                let rec = Mapping {
                    filename: self.import_string(src, imp, rec.filename),
                    build_id: self.import_string(src, imp, rec.build_id),
                    ..rec.clone()
                };
                let id = self.intern_mapping(rec);
                imp.mappings[m as usize] = id;
                id
            }
        };
        let mut lines = std::mem::take(&mut self.line_scratch);
        lines.clear();
        for ln in l.lines.iter() {
            lines.push(Line { function: self.import_function(src, imp, ln.function), line: ln.line });
        }
        let id = self.intern_location(mapping, l.address, &lines);
        self.line_scratch = lines;
        imp.locations[i as usize] = id;
        id
    }

    /// Interns one sample's stack (pprof order: leaf first) and returns its node id.
    pub fn intern_stack(&mut self, p: &Profile, r: &mut Remap, leaf_first: &[u32]) -> u32 {
        let mut node = ROOT;
        for &loc in leaf_first.iter().rev() {
            let loc = self.location(p, r, loc);
            node = self.child(node, loc);
        }
        node
    }

    /// Interns the stacks of one profile's `samples`, from the first, by their content keys
    /// (`Profile::stack_keys`), appending their node ids to `out` in order, until
    /// about `budget` frames were walked; returns how many samples it took and the frames
    /// walked. A stack the index holds costs one lookup (a frame) and none of its locations
    /// mapped; only one never seen before maps its locations (`LOCATION_FRAMES` each, the
    /// first time) and walks the tree frame by frame. The keys' lookups are made first, all
    /// of them, one after another: lookups that do not wait on each other let the CPU
    /// overlap their cache misses in a head's large index (pass a batch, not a profile).
    pub fn intern_keyed(
        &mut self,
        p: &Profile,
        r: &mut Remap,
        samples: &[u32],
        budget: usize,
        b: &mut StackBatch,
        out: &mut Vec<u32>,
    ) -> (usize, usize) {
        let keys = p.stack_keys();
        b.found.clear();
        b.found.extend(samples.iter().map(|&si| self.stack_index.get(&keys[si as usize]).copied()));
        let (mut taken, mut walked) = (0, 0);
        for (&si, &found) in samples.iter().zip(&b.found) {
            if walked >= budget {
                break;
            }
            let key = keys[si as usize];
            // A stack twice in one batch: the second finds what the first inserted.
            let node = match found.or_else(|| self.stack_index.get(&key).copied()) {
                Some(node) => {
                    walked += 1;
                    node
                }
                None => {
                    let (stack, mapped) = (&p.samples[si as usize].locations, r.mapped);
                    let node = self.intern_stack(p, r, stack);
                    self.stack_index.insert(key, node);
                    walked += 1 + stack.len() + LOCATION_FRAMES * (r.mapped - mapped);
                    node
                }
            };
            out.push(node);
            taken += 1;
        }
        (taken, walked)
    }

    fn child(&mut self, parent: u32, loc: u32) -> u32 {
        let next = self.parent.len() as u32;
        let id = *self.children.entry((parent, loc)).or_insert(next);
        if id == next {
            // I7: a node's parent exists before it, so its id is smaller.
            kiln_io::invariant::check(kiln_io::invariant::Invariant::StackOrder, parent < next, || {
                format!("stack node {next} would get parent {parent}")
            });
            self.parent.push(parent);
            self.location.push(loc);
        }
        id
    }

    pub fn stack_count(&self) -> usize {
        self.parent.len()
    }

    /// Approximate heap bytes held, for `/metrics` and the head size limit.
    /// An O(1) estimate of the heap bytes held (for the head size limit on every push).
    pub fn approx_bytes(&self) -> usize {
        self.strings.bytes
            + self.strings.len() * 48
            + self.functions.len() * 44
            + self.mappings.len() * 100
            + self.locations.len() * 80
            + self.parent.len() * 21
            + self.stack_index.len() * 21
    }

    pub fn heap_bytes(&self) -> usize {
        self.bytes_by_table().iter().sum()
    }

    /// `heap_bytes` per table: stack traces (the stack tree and its index), locations,
    /// functions, mappings, strings (Pyroscope's `pyroscope_head_size_bytes` types).
    pub fn bytes_by_table(&self) -> [usize; 5] {
        [
            self.parent.len() * (4 + 4 + 13) + self.stack_index.len() * 21,
            self.locations.iter().map(|l| 32 + l.lines.len() * 16 + 16).sum::<usize>(),
            self.functions.len() * (std::mem::size_of::<Function>() * 2 + 12),
            self.mappings.len() * (std::mem::size_of::<Mapping>() * 2 + 12),
            self.strings.list.iter().map(|s| s.len() + 16 + 8 + 24).sum(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::Location;

    fn profile() -> Profile {
        Profile {
            strings: vec!["".into(), "main".into(), "f".into(), "g".into()],
            functions: vec![
                Function { name: 1, ..Default::default() },
                Function { name: 2, ..Default::default() },
                Function { name: 3, ..Default::default() },
                // A duplicate of `main` under another id: must dedup.
                Function { name: 1, ..Default::default() },
            ],
            locations: (0..4u32)
                .map(|f| Location { lines: vec![Line { function: f, line: 0 }], ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn dedups_symbols_and_shares_prefixes() {
        let p = profile();
        let mut s = Symbols::new();
        let mut r = Remap::new(&p);
        let a = s.intern_stack(&p, &mut r, &[1, 0]); // main;f
        let b = s.intern_stack(&p, &mut r, &[2, 0]); // main;g
        let c = s.intern_stack(&p, &mut r, &[1, 3]); // main;f with the duplicate main
        assert_eq!(a, c);
        assert_ne!(a, b);
        assert_eq!(s.parent[a as usize], s.parent[b as usize]);
        assert_eq!(s.functions.len(), 3);
        assert_eq!(s.locations.len(), 3);
        // root + main + f + g
        assert_eq!(s.stack_count(), 4);

        // A second profile with the same symbols in another order maps to the same ids.
        let mut p2 = p.clone();
        p2.strings = vec!["".into(), "g".into(), "f".into(), "main".into()];
        let mut r2 = Remap::new(&p2);
        // function 2 is now named "main"(3)... build main;f = functions named 3 then 2.
        p2.functions = vec![Function { name: 3, ..Default::default() }, Function { name: 2, ..Default::default() }];
        p2.locations.truncate(2);
        let d = s.intern_stack(&p2, &mut r2, &[1, 0]);
        assert_eq!(d, a);
    }
}
